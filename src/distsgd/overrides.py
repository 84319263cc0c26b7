"""Dotted overrides of a TOML config (`-s algorithm.lr=0.1`), Hydra-style, and the effective
config a run directory keeps.

An override is `KEY.PATH=VALUE`; the value is read as a TOML value (`0.1`, `32`, `true`,
`[64, 64]`, `"topk:0.01"`, `{name = "ring"}`), and anything that is not valid TOML is a
string, as Hydra does (`-s task.dataset=digits`). `+KEY=VALUE` and `++KEY=VALUE` mean the
same as `KEY=VALUE` (a key the file leaves out takes its default, so any key may be set);
`~KEY` removes the key, restoring its default. Overrides are applied to the loaded TOML
before validation, so a bad value reads like the same mistake in the file, naming the
override that made it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .config import read_toml
from .errors import Fault, UserError

_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
DELETE = object()


@dataclass(frozen=True)
class Override:
    key: str  # dotted path
    value: object  # a TOML value, or DELETE
    text: str  # as the user wrote it, for error lines
    flag: str = "-s"

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    def describe(self) -> str:
        return f"{self.flag} {self.text}"


def parse_value(text: str):
    """A TOML value (`0.1`, `[64, 64]`, `"a"`, `{k = 1}`); a bare word that is not TOML is a
    string; `.5` and `5.` (not TOML) are floats."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        if re.fullmatch(r"[+-]?(\d+\.|\.\d+)([eE][+-]?\d+)?", text):
            return float(text)
    except ValueError:
        pass
    return text


def parse_override(text: str, flag: str = "-s") -> Override:
    raw = text.strip()
    if raw.startswith("~"):
        key = raw[1:].split("=", 1)[0].strip()
        if not _KEY.match(key):
            raise UserError(f"bad override '{text}': expected ~KEY.PATH")
        return Override(key, DELETE, raw, flag)
    key, eq, value = raw.lstrip("+").partition("=")
    key = key.strip()
    if not eq or not _KEY.match(key):
        raise UserError(f"bad override '{text}': expected KEY.PATH=VALUE (e.g. algorithm.lr=0.1)")
    return Override(key, parse_value(value), raw, flag)


def split_values(text: str) -> list[str]:
    """`0.01,0.03` -> ['0.01', '0.03']; commas inside [...], {...} or quotes do not split."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def apply_overrides(data: dict, overrides: list[Override]) -> dict:
    """A copy of `data` with each override set (or removed) in order."""
    import copy

    out = copy.deepcopy(data)
    for o in overrides:
        table = out
        for i, part in enumerate(o.path[:-1]):
            nxt = table.get(part)
            if nxt is None:
                if o.value is DELETE:
                    raise UserError(f"{o.describe()}: {o.key} is not in the config")
                nxt = table[part] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(o.path[: i + 1])
                raise UserError(f"{o.describe()}: {where} is {nxt!r}, not a table")
            table = nxt
        last = o.path[-1]
        if o.value is DELETE:
            if last not in table:
                raise UserError(f"{o.describe()}: {o.key} is not in the config")
            del table[last]
        else:
            table[last] = o.value
    return out



def validate(data: dict, source: str, source_dir: str | None, blame: list[Override] = ()):
    """A RunConfig from a TOML dict; an error is one line naming the field and, when an
    override set that field, the override."""
    from .config import RunConfig, _format_error

    if "source_dir" in data:
        raise UserError(f"{source}: source_dir: unknown key")
    try:
        return RunConfig.model_validate({**data, "source_dir": source_dir})
    except ValidationError as err:
        line = _format_error(err)
        where = line.split(": ", 1)[0]
        for o in reversed(blame):
            if _related(where, o.key):
                raise UserError(f"{source} with {o.describe()}: {line}") from None
        raise UserError(f"{source}: {line}") from None


def _related(where: str, key: str) -> bool:
    """Whether an error at `where` may come from setting `key` (a table's `name` chooses
    which options the rest of the table may have)."""
    if key.endswith(".name") and where.startswith(key.removesuffix("name")):
        return True
    return where == key or where.startswith(key + ".") or key.startswith(where + ".")


def load(path: str | Path, overrides: list[Override] = ()):
    """(RunConfig, the `[sweep]` table or None) of a config file with overrides applied."""
    data = read_toml(path)
    sweep = data.pop("sweep", None)
    data = apply_overrides(data, list(overrides))
    return validate(data, str(path), str(Path(path).resolve().parent), list(overrides)), sweep


def effective_toml(cfg) -> str:
    """The whole validated config (defaults included) as TOML; loading it gives `cfg` back."""
    head = "# The effective config of this run: every key, defaults included (distsgd run -s ... applied).\n"
    return head + to_toml(_drop_none(cfg.model_dump(mode="json")))


def to_toml(data: dict) -> str:
    """TOML for the plain values a config holds (tables, lists, strings, numbers, booleans)."""
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(d: dict, path: tuple, lines: list[str]) -> None:
    plain = {k: v for k, v in d.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    if path and (plain or not tables):
        lines += ["", "[" + ".".join(map(_key, path)) + "]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in plain.items()]
    for k, v in tables.items():
        _table(v, (*path, k), lines)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_\-]+", k) else _string(k)


def _string(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")  # JSON's escapes are TOML's


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__} {v!r}")


def _drop_none(v):
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def write_atomic(path: Path, text: str) -> Path:
    """Write to a temporary name, then rename (the folder is created): `path` is the old file
    or the whole new one. A failure leaves no temporary file and is one line."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, FileExistsError | NotADirectoryError):
            raise UserError(f"cannot write {path}: a file is in the way of its folder") from None
        if isinstance(e, PermissionError):
            raise UserError(f"cannot write {path}: permission denied") from None
        if isinstance(e, IsADirectoryError):
            raise UserError(f"cannot write {path}: it is a directory") from None
        raise Fault(f"cannot write {path}: {e.strerror or e}") from None
    return path


def write_effective(cfg, run_dir: str | Path) -> Path:
    """`config.toml` in the run directory: the config this run trained with."""
    return write_atomic(Path(run_dir) / "config.toml", effective_toml(cfg))
