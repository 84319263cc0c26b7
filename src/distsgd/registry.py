"""Registries: one place per algorithm, compressor, aggregator, attack and topology.

An entry maps a name to the thing's *options class*: a (pydantic) dataclass whose fields
are its options, with their types, defaults, ranges and meanings. Everything else reads
the entry: the TOML loader and the Python API build from it, `distsgd algorithms` lists
it and the README's configuration reference is generated from it, so each default lives
in one place. Adding an algorithm is one module and one `@ALGORITHMS.register()`.

A spec names an entry in one of three forms, in Python and in TOML alike:

- an instance (Python only): used as it is;
- a string ``"name"`` or ``"name:value"``, where value sets the entry's shorthand option
  (``"topk:0.01"`` is Top-K with ratio 0.01, ``"qsgd:7"`` QSGD with 7 levels);
- a table ``{name = "topk", ratio = 0.01}``.

Unknown names list the known ones; unknown options list the entry's options.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .errors import UserError


class SpecError(UserError, ValueError):
    """A spec that names no entry, an unknown option or a bad value (one line)."""


@dataclass(frozen=True)
class Option:
    name: str
    type: str
    default: Any
    doc: str
    required: bool = False


def _type_name(t) -> str:
    if t is inspect.Parameter.empty or t is None:
        return "any"
    if isinstance(t, str):
        return t
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(t)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(t))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if t is type(None):
        return "None"
    return getattr(t, "__name__", str(t))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ").strip()


@dataclass(frozen=True)
class Entry:
    """One registered name: its options class (or factory), a one-line summary and the paper."""

    name: str
    factory: Callable
    paper: str = ""
    preset: dict = field(default_factory=dict)  # options fixed by this name (e.g. scaled_sign)
    shorthand: str | None = None  # the option "name:value" sets
    hidden: tuple[str, ...] = ()  # options set by the engine, not by the user (e.g. shapes)

    @property
    def summary(self) -> str:
        return _first_line(self.factory.__doc__)

    def options(self) -> list[Option]:
        """The user's options, from the dataclass fields (pydantic descriptions as docs) or
        from the factory's signature."""
        out = []
        skip = {"name", *self.preset, *self.hidden}
        if dataclasses.is_dataclass(self.factory):
            pyd = getattr(self.factory, "__pydantic_fields__", {})
            hints = typing.get_type_hints(self.factory, include_extras=True)
            for f in dataclasses.fields(self.factory):
                if f.name in skip or f.name.startswith("_") or not f.init:
                    continue
                info = pyd.get(f.name)
                required = info.is_required() if info is not None else (
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                )
                if info is not None and not required:
                    default = info.get_default(call_default_factory=True)
                elif f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                else:
                    default = None
                doc = (info.description if info is not None else None) or f.metadata.get("doc", "")
                out.append(Option(f.name, _type_name(hints.get(f.name, f.type)), default, doc, required))
        else:
            sig = inspect.signature(self.factory)
            hints = typing.get_type_hints(self.factory.__init__) if inspect.isclass(self.factory) else {}
            docs = getattr(self.factory, "option_docs", {})
            for p in sig.parameters.values():
                if p.name in skip or p.name in ("self", "generator") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                required = p.default is inspect.Parameter.empty
                out.append(
                    Option(
                        p.name,
                        _type_name(hints.get(p.name, p.annotation)),
                        None if required else p.default,
                        docs.get(p.name, ""),
                        required,
                    )
                )
        return out

    def option_names(self) -> list[str]:
        return [o.name for o in self.options()]


def parse_scalar(text: str):
    """'0.01' -> 0.01, '7' -> 7, 'true' -> True, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def one_line(err: ValidationError | Exception) -> str:
    """The first error of a pydantic ValidationError (or any exception) as 'field: message'."""
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            msg = "unknown option"
        elif e["type"] in ("missing_argument", "missing"):
            msg = "required option is missing"
        elif not isinstance(e.get("input"), dict | list | tuple) and e["type"] != "value_error":
            msg = f"{msg} (got {e.get('input')!r})"
        return f"{loc}: {msg}" if loc else msg
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class Registry:
    """Names -> entries of one kind ("algorithm", "compressor", ...)."""

    def __init__(self, kind: str, base: type | tuple[type, ...] | None = None):
        self.kind = kind
        self.base = base  # instances of these pass through create() unchanged
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str | None = None,
        factory: Callable | None = None,
        *,
        paper: str = "",
        preset: dict | None = None,
        shorthand: str | None = None,
        hidden: tuple[str, ...] = (),
    ):
        """Register `factory` under `name` (its `name` attribute by default); without a
        factory, a class decorator."""

        def add(f):
            key = name or getattr(f, "name", None)
            if not isinstance(key, str):
                # a dataclass keeps its default `name` as a field default
                fl = {x.name: x for x in dataclasses.fields(f)} if dataclasses.is_dataclass(f) else {}
                key = fl["name"].default if "name" in fl else f.__name__.lower()
            if key in self._entries and self._entries[key].factory is not f:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = Entry(key, f, paper, dict(preset or {}), shorthand, tuple(hidden))
            return f

        return add(factory) if factory is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise SpecError(f"unknown {self.kind} {name!r} (choose from {', '.join(self._entries)})") from None

    def split(self, spec) -> tuple[Entry, dict]:
        """(entry, options) of a string or table spec."""
        if isinstance(spec, str):
            name, _, value = spec.partition(":")
            e = self.entry(name.strip())
            kw = {}
            if value:
                if e.shorthand is None:
                    raise SpecError(f"{self.kind} {e.name!r} takes no 'name:value' shorthand; use a table")
                kw[e.shorthand] = parse_scalar(value)
            return e, kw
        if isinstance(spec, dict):
            kw = dict(spec)
            if "name" not in kw:
                raise SpecError(f"{self.kind}: missing 'name' (choose from {', '.join(self._entries)})")
            return self.entry(str(kw.pop("name"))), kw
        raise SpecError(f"{self.kind}: expected a name or a table, got {type(spec).__name__}")

    def create(self, spec, **context):
        """Build from an instance, a "name[:value]" string or a {name = ...} table.
        `context` supplies engine-known options (e.g. f, seed) the spec did not set."""
        if self.base is not None and isinstance(spec, self.base):
            return spec
        e, kw = self.split(spec)
        known = set(e.option_names()) | set(e.hidden)
        unknown = [k for k in kw if k not in known]
        if unknown:
            raise SpecError(
                f"{self.kind} {e.name!r}: unknown option {unknown[0]!r} "
                f"(options: {', '.join(e.option_names()) or 'none'})"
            )
        accepted = set(inspect.signature(e.factory).parameters) if not dataclasses.is_dataclass(e.factory) else {
            f.name for f in dataclasses.fields(e.factory)
        }
        extra = {k: v for k, v in context.items() if k in accepted and k not in kw}
        try:
            return e.factory(**e.preset, **extra, **kw)
        except ValidationError as err:
            raise SpecError(f"{self.kind} {e.name!r}: {one_line(err)}") from None
        except (ValueError, TypeError) as err:
            raise SpecError(f"{self.kind} {e.name!r}: {one_line(err)}") from None
