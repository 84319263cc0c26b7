"""The configuration reference, rendered from the registries and the config models alone.

    distsgd algorithms              every algorithm, then compressors, aggregators, attacks
                                    and topologies, with their options
    distsgd algorithms choco_sgd    one entry (any registered name)
    python -m distsgd.reference --write README.md    regenerate the README's reference
    python -m distsgd.reference --check README.md    exit 1 when the README's block is stale

Nothing here restates an option: names, types, ranges, defaults and meanings come from
the registries' options classes (`Entry.options()`, pydantic `Field`s) and from the TOML
models of `distsgd.config`. Where an options class has no description for a field, its
trailing source comment is used (`tau: float = 1.0  # clipping radius`); where a class has
no docstring, the bullet that names it in its module's docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import shutil
import sys
import textwrap
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from .errors import UserError
from .registry import Entry, Registry, _type_name

START = "<!-- reference:start -->"
END = "<!-- reference:end -->"
WIDTH = 100  # the terminal listing never gets wider than this


# -- what the registries hold ------------------------------------------------------------------
def _registries() -> list[tuple[str, Registry]]:
    from .algorithms import ALGORITHMS
    from .compress import COMPRESSORS
    from .robust import AGGREGATORS, ATTACK_REGISTRY

    return [
        ("algorithms", ALGORITHMS),
        ("compressors", COMPRESSORS),
        ("aggregators", AGGREGATORS),
        ("attacks", ATTACK_REGISTRY),
    ]


def _topology_entry() -> Entry:
    from .topology import TopologySpec

    return Entry("topology", TopologySpec)


def _collapse(text: str) -> str:
    return " ".join(text.split())


_ABBREV = re.compile(r"(\bal|\bAlg|\beq|\be\.g|\bi\.e|\bcf|\bFig|\bvs|\bapprox|\b[A-Z])$")


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not 'et al.', 'Alg.', 'e.g.', initials)."""
    for m in re.finditer(r"\.(\s|$)", text):
        if not _ABBREV.search(text[: m.start()]):
            return text[: m.start() + 1]
    return text


def _own_doc(obj) -> str | None:
    """The object's own docstring; None for the signature a dataclass makes up without one."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc or doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return None
    return inspect.cleandoc(doc)


def _module_bullet(obj, names: tuple[str, ...]) -> str:
    """The text of the bullet that names one of `names` in code (`- \\`name\\`: ...`) in the
    docstring of the module that defines `obj`."""
    doc = sys.modules[obj.__module__].__doc__ or ""
    for name in names:
        m = re.search(
            rf"^- ((?:`\w+`, )*`{re.escape(name)}`(?:, `\w+`)*):?(.*?)(?=^\S|^- |\Z)",
            doc,
            flags=re.MULTILINE | re.DOTALL,
        )
        if m:
            text = _collapse(m.group(2)).lstrip(": ")
            # "- `Krum`, `MultiKrum` (Blanchard et al.): ..." keeps the names before the citation
            cited = re.match(r"\([^()]*\d{4}", text)
            return f"{m.group(1).replace('`', '')} {text}" if cited else text
    return ""


def _words(text: str) -> int:
    """Words outside parentheses (citations do not describe a method)."""
    while True:
        text, k = re.subn(r"\([^()]*\)", "", text)
        if not k:
            return len(text.split())


def summary(entry: Entry) -> str:
    """One sentence on what the entry is: its class's docstring, else its module's bullet
    for it, else its module's first line when that names it."""
    f = entry.factory
    doc = _own_doc(f)
    if doc:
        text = _collapse(doc.split("\n\n")[0])
    else:
        text = _module_bullet(f, (entry.name, f.__name__))
        if not text:
            first = _collapse((sys.modules[f.__module__].__doc__ or "").split("\n\n")[0])
            text = first if first.startswith((f"{entry.name}:", f"{f.__name__}:")) else ""
    text = _first_sentence(text)
    if len(text) > 160 and ": " in text and _words(text[: text.index(": ")]) >= 4:
        text = text[: text.index(": ")]  # what the method is, not its formula
    if doc and text.endswith(":") and entry.preset:  # e.g. sign / scaled_sign: the preset's bullet
        for key, value in entry.preset.items():
            vals = {repr(value), f'"{value}"'} if isinstance(value, str) else {repr(value)}
            for v in vals:
                m = re.search(rf"^- {re.escape(key)}\s*=\s*{re.escape(v)}:(.*?)(?=^- |\Z)", doc, re.M | re.S)
                if m:
                    text = f"{text} {_first_sentence(_collapse(m.group(1)))}".rstrip(";,")
    return text.rstrip(":")


@cache
def _source_comments(cls) -> dict[str, str]:
    """field -> its comment in the class body: trailing (`x: int = 1  # ...`), or the
    comment lines right above the field."""
    out: dict[str, str] = {}
    for klass in reversed(getattr(cls, "__mro__", (cls,))):
        if klass is object:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            s = line.strip()
            if s.startswith("#"):
                above.append(s.lstrip("# ").strip())
                continue
            m = re.match(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
            if m and not s.startswith(("def ", "return", "@")) and "(" not in m.group(1):
                text = m.group(2) or " ".join(above)
                if text:
                    out[m.group(1)] = text.strip()
            above = []
    return out


def _bounds(metadata) -> str:
    """' > 0', ' in [0, 1)', ... from pydantic's Gt/Ge/Lt/Le metadata."""
    lo = hi = None
    for m in metadata:
        for attr, side in (("gt", "lo"), ("ge", "lo"), ("lt", "hi"), ("le", "hi")):
            v = getattr(m, attr, None)
            if v is not None:
                if side == "lo":
                    lo = (attr, v)
                else:
                    hi = (attr, v)
    if lo and hi:
        return f" in {'(' if lo[0] == 'gt' else '['}{lo[1]}, {hi[1]}{')' if hi[0] == 'lt' else ']'}"
    sym = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    if lo:
        return f" {sym[lo[0]]} {lo[1]}"
    if hi:
        return f" {sym[hi[0]]} {hi[1]}"
    return ""


_SPEC_TYPES = {
    "Topology": "topology",
    "TopologySpec": "topology",
    "Compressor": "compressor",
    "Aggregator": "aggregator",
    "Attack": "attack",
}


def _with_bounds(t: str, bounds: str) -> str:
    """'int ≥ 0 | None' rather than 'int | None ≥ 0'."""
    if bounds and t.endswith(" | None"):
        return f"{t.removesuffix(' | None')}{bounds} | None"
    return t + bounds


def _show_type(t: str) -> str:
    """User-facing type names: a spec option's type is the kind of spec it takes, tuples
    are lists (TOML arrays), literals in double quotes."""
    while "Ellipsis" in t:  # tuple[X, ...], innermost first
        t, k = re.subn(r"tuple\[((?:[^\[\]]|\[[^\[\]]*\])+), Ellipsis\]", r"list[\1]", t)
        if not k:
            break
    t = re.sub(r"'([^']*)'", r'"\1"', t)
    parts = t.split(" | ")
    if any(p in _SPEC_TYPES for p in parts):
        parts = [_SPEC_TYPES.get(p, p) for p in parts if p not in ("str", "dict")]
    return " | ".join(dict.fromkeys(parts))


def fmt_value(v) -> str:
    """A default as one writes it in TOML (None stays None: leave the key out)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        s = f"{v:g}"
        return s if float(s) == v else repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if v is None:
        return "None"
    return str(getattr(v, "name", v))


@dataclasses.dataclass(frozen=True)
class Row:
    """An option as the reference shows it."""

    name: str
    type: str
    default: str
    doc: str


def entry_rows(entry: Entry) -> list[Row]:
    """The entry's options: type (with range), default and meaning."""
    pyd = getattr(entry.factory, "__pydantic_fields__", {})
    comments = _source_comments(entry.factory) if isinstance(entry.factory, type) else {}
    rows = []
    for o in entry.options():
        info = pyd.get(o.name)
        bounds = _bounds(info.metadata) if info is not None else ""
        doc = o.doc or comments.get(o.name, "")
        default = "required" if o.required else fmt_value(o.default)
        rows.append(Row(o.name, _with_bounds(_show_type(o.type), bounds), default, doc))
    return rows


def topology_rows() -> list[Row]:
    from .topology import MIXINGS, TOPOLOGIES, TopologySpec

    choices = {"name": TOPOLOGIES, "mixing": MIXINGS}
    name = next(f for f in dataclasses.fields(TopologySpec) if f.name == "name")
    rows = [Row("name", _show_type(_type_name(name.type)), fmt_value(name.default), "")]
    out = []
    for r in [*rows, *entry_rows(_topology_entry())]:
        doc = r.doc
        if r.name in choices:
            doc = "one of " + ", ".join(choices[r.name])
        elif doc in TOPOLOGIES:
            doc = f"used by {doc}"
        out.append(dataclasses.replace(r, doc=doc))
    return out


def _built_from(model: type[BaseModel]) -> type | None:
    """The class a config table is turned into, field for field (its comments document the
    fields the table leaves undocumented)."""
    from .comm.network import NetworkModel
    from .config import LRScheduleConfig, NetworkConfig
    from .lr_schedule import LRSchedule

    return {NetworkConfig: NetworkModel, LRScheduleConfig: LRSchedule}.get(model)


def _is_table(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def model_rows(model: type[BaseModel]) -> list[Row]:
    """A TOML table's keys from the pydantic model: type, range, default, meaning."""
    comments = dict(_source_comments(_built_from(model))) if _built_from(model) else {}
    comments.update(_source_comments(model))
    rows = []
    for name, f in model.model_fields.items():
        if f.exclude or _is_table(f.annotation) or f.annotation is dict:
            continue
        t = _with_bounds(_show_type(_type_name(f.annotation)), _bounds(f.metadata))
        default = "required" if f.is_required() else fmt_value(f.get_default(call_default_factory=True))
        rows.append(Row(name, t, default, f.description or comments.get(name, "")))
    return rows


def _tables(model: type[BaseModel]) -> list[tuple[str, type[BaseModel] | None]]:
    return [
        (name, f.annotation if _is_table(f.annotation) else None)
        for name, f in model.model_fields.items()
        if _is_table(f.annotation) or f.annotation is dict
    ]


def _wrapper_options() -> list[Row]:
    """The aggregator table's extra keys (make_aggregator's keyword-only pre-steps)."""
    from .robust import NNM, Bucketing, make_aggregator

    classes = {"nnm": NNM, "bucket": Bucketing}
    rows = []
    for p in inspect.signature(make_aggregator).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name in classes:
            doc = _first_sentence(_collapse(_own_doc(classes[p.name]) or ""))
            rows.append(Row(p.name, _show_type(_type_name(p.annotation)), fmt_value(p.default), doc))
    return rows


def _topology_shorthands() -> dict[str, str]:
    from .topology import GRAPHS

    return {e.name: e.shorthand for e in GRAPHS.entries() if e.shorthand}


def _shorthands() -> list[tuple[str, list[tuple[str, str]]]]:
    """(kind, [(entry names, option)]) for every entry with a 'name:value' shorthand."""
    from .topology import GRAPHS

    out = []
    for title, reg in _registries():
        by_option: dict[str, list[str]] = {}
        for e in reg.entries():
            if e.shorthand:
                by_option.setdefault(e.shorthand, []).append(e.name)
        every = len(by_option) == 1 and len(next(iter(by_option.values()))) == len(reg.entries()) > 1
        if every:
            out.append((title, [(f"every {reg.kind}", next(iter(by_option)))]))
        elif by_option:
            out.append((title, [(", ".join(names), opt) for opt, names in by_option.items()]))
    out.append(("topologies", [(e.name, e.shorthand) for e in GRAPHS.entries() if e.shorthand]))
    return out


def _python_name(entry: Entry) -> str:
    import distsgd

    name = getattr(entry.factory, "__name__", "")
    return f"distsgd.{name}" if getattr(distsgd, name, None) is entry.factory else ""


def _graphs_doc() -> str:
    """Every registered graph builder with its one-line summary."""
    from .topology import GRAPHS

    parts = [f"{e.name} ({_collapse(e.summary).rstrip('.')})" for e in GRAPHS.entries()]
    return "; ".join(parts) + ". A graph that is not connected, or that does not fit n, is a UserError."


def _shared(reg: Registry) -> bool:
    """Whether every entry is the same class with the same options (the attacks)."""
    es = reg.entries()
    return len(es) > 1 and all(e.factory is es[0].factory and e.options() == es[0].options() for e in es)


# -- the terminal listing ----------------------------------------------------------------------
def _table(rows: list[tuple[str, ...]], width: int, indent: int = 2, caps=(18, 24, 16)) -> list[str]:
    """Columns wrapped to `width`: the last column takes what the others leave."""
    if not rows:
        return []
    n = len(rows[0])
    widths = [min(caps[i] if i < len(caps) else 20, max(len(r[i]) for r in rows)) for i in range(n - 1)]
    for k in range(1, n - 1):  # a narrow terminal: narrow the middle columns, never the names
        while width - indent - sum(w + 2 for w in widths) < 24 and widths[k] > 12:
            widths[k] -= 1
    last = max(20, width - indent - sum(w + 2 for w in widths))
    widths.append(last)
    out = []
    for r in rows:
        cells = [textwrap.wrap(c, w, break_on_hyphens=False) or [""] for c, w in zip(r, widths, strict=True)]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)]
            out.append((" " * indent + "  ".join(parts)).rstrip())
    return out


def _option_table(rows: list[Row], width: int, indent: int = 4) -> list[str]:
    if not rows:
        return [" " * indent + "(no options)"]
    head = ("option", "type", "default", "meaning")
    return _table([head, *[(r.name, r.type, r.default, r.doc) for r in rows]], width, indent)


def _wrap(text: str, width: int, indent: int) -> list[str]:
    return (
        textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * indent)
        if text
        else []
    )


def _entry_text(entry: Entry, width: int, options: bool = True) -> list[str]:
    py = _python_name(entry)
    lines = [entry.name + (f"  ({py})" if py else "")]
    lines += _wrap(summary(entry), width, 2)
    if entry.paper:
        lines += _wrap(f"Paper: {entry.paper}", width, 2)
    if entry.shorthand:
        lines += _wrap(f'"{entry.name}:value" sets {entry.shorthand}', width, 2)
    if options:
        lines += _option_table(entry_rows(entry), width)
    return lines


def _registry_text(title: str, reg: Registry, width: int, only: str | None = None) -> list[str]:
    shared = _shared(reg)
    es = [e for e in reg.entries() if only is None or e.name == only]
    lines = [title.upper(), ""]
    if shared and only is None:
        lines += _table([(e.name, summary(e)) for e in es], width, 2, caps=(14,))
        if es[0].shorthand:
            lines += ["", *_wrap(f'"name:value" sets {es[0].shorthand}', width, 2)]
        lines += ["", f"  options of every {reg.kind}:", *_option_table(entry_rows(es[0]), width)]
    else:
        for e in es:
            lines += [*_entry_text(e, width), ""]
        lines = lines[:-1]
    if title == "aggregators":
        lines += [
            "",
            f"  every {reg.kind} table also takes (pre-steps):",
            *_option_table(_wrapper_options(), width),
        ]
    return [*lines, ""]


def _topology_text(width: int) -> list[str]:
    _SHORTHAND = _topology_shorthands()

    lines = ["TOPOLOGIES", ""]
    lines += _wrap(_graphs_doc(), width, 2)
    short = ", ".join(f'"{name}:value" sets {opt}' for name, opt in _SHORTHAND.items())
    lines += _wrap(f"A name, a table or a shorthand: {short}.", width, 2)
    lines += ["", *_option_table(topology_rows(), width), ""]
    return lines


def known_names() -> dict[str, list[str]]:
    from .topology import TOPOLOGIES

    out = {title: reg.names() for title, reg in _registries()}
    out["topologies"] = list(TOPOLOGIES)
    return out


def render_text(name: str | None = None, width: int | None = None) -> str:
    """`distsgd algorithms [NAME]`: everything, or the entries called NAME (UserError when
    no registry knows it)."""
    if width is None:
        width = shutil.get_terminal_size((WIDTH, 24)).columns
    width = max(60, min(WIDTH, width))
    lines: list[str] = []
    if name is None:
        lines += _wrap(
            "Options of every algorithm and of the compressors, aggregators, attacks and topologies "
            'they take. In TOML an algorithm is the [algorithm] table (name = "..." and its options); '
            'in Python the class below or distsgd.simulate(algorithm="name" or a dict). '
            "`distsgd algorithms NAME` shows one entry.",
            width,
            0,
        )
        lines.append("")
        for title, reg in _registries():
            lines += _registry_text(title, reg, width)
        lines += _topology_text(width)
        return "\n".join(lines).rstrip() + "\n"
    found = False
    for title, reg in _registries():
        if name in reg:
            lines += _registry_text(title, reg, width, only=name)
            found = True
    if name in known_names()["topologies"]:
        lines += _topology_text(width)
        found = True
    if not found:
        known = "; ".join(f"{title}: {', '.join(names)}" for title, names in known_names().items())
        raise UserError(f"unknown name {name!r} ({known})")
    return "\n".join(lines).rstrip() + "\n"


# -- the README's reference --------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text and text != "required" else text


def _md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _md_options(rows: list[Row], what: str = "option") -> list[str]:
    if not rows:
        return ["No options."]
    return _md_table(
        (what, "type", "default", "meaning"),
        [(f"`{r.name}`", _code(r.type), _code(r.default), r.doc) for r in rows],
    )


def render_markdown() -> str:
    """The README's configuration reference (between the reference markers)."""
    from .config import RunConfig

    regs = dict(_registries())
    md: list[str] = [
        "## Configuration reference",
        "",
        "Generated from the registries and the config models by "
        "`python -m distsgd.reference --write README.md`; `distsgd algorithms` prints the same in "
        "the terminal and `distsgd algorithms NAME` one entry.",
        "",
        "### Specs",
        "",
        "An algorithm, compressor, aggregator, attack or topology is named by a spec, the same in "
        "Python and in TOML:",
        "",
        '- a name: `"scaled_sign"`;',
        '- `"name:value"`, where value sets the entry\'s shorthand option:',
    ]
    for title, groups in _shorthands():
        md.append(f"  - {title}: " + ", ".join(f"{names} (`{opt}`)" for names, opt in groups) + ";")
    md += [
        '- a table: `{name = "topk", ratio = 0.01}`, or in a config file a sub-table such as '
        "`[algorithm.compressor]` holding `name` and the options;",
        '- in Python also an instance (`distsgd.TopK(ratio=0.01)`, `distsgd.make_topology("ring", 16)`).',
        "",
        "An unknown name lists the known ones, and an unknown option of a compressor, aggregator, "
        "attack or topology lists its options. An option left out takes its default; a `None` default "
        "is written `None` here (in TOML, leave the key out).",
        "",
        "### Algorithms",
        "",
        "The `[algorithm]` table holds `name` and the algorithm's options; in Python the class takes "
        "the same options (`distsgd.ChocoSGD(lr=0.05)`), or `algorithm=` takes the name or a dict.",
        "",
    ]
    md += _md_table(
        ("name", "Python", "what it does", "paper"),
        [(f"`{e.name}`", _code(_python_name(e)), summary(e), e.paper) for e in regs["algorithms"].entries()],
    )
    for e in regs["algorithms"].entries():
        md += ["", f"#### `{e.name}`", "", *_md_options(entry_rows(e))]
    for title in ("compressors", "aggregators", "attacks"):
        reg = regs[title]
        md += ["", f"### {title.capitalize()}", ""]
        if _shared(reg):
            md += _md_table((reg.kind, "what it does"), [(f"`{e.name}`", summary(e)) for e in reg.entries()])
            md += ["", f"Options of every {reg.kind}:", "", *_md_options(entry_rows(reg.entries()[0]))]
            continue
        rows = []
        for e in reg.entries():
            opts = entry_rows(e)
            what = summary(e)
            if not opts:
                rows.append((f"`{e.name}`", what, "", "", "", ""))
            for k, r in enumerate(opts):
                rows.append(
                    (
                        f"`{e.name}`" if k == 0 else "",
                        what if k == 0 else "",
                        f"`{r.name}`",
                        _code(r.type),
                        _code(r.default),
                        r.doc,
                    )
                )
        md += _md_table((reg.kind, "what it does", "option", "type", "default", "meaning"), rows)
        if title == "aggregators":
            md += [
                "",
                "Every aggregator table also takes these pre-steps:",
                "",
                *_md_options(_wrapper_options()),
            ]
    _SHORTHAND = _topology_shorthands()

    md += [
        "",
        "### Topologies",
        "",
        f"An algorithm's `topology` option: {_graphs_doc()}",
        "",
        "Shorthands: " + ", ".join(f'`"{n}:value"` sets `{o}`' for n, o in _SHORTHAND.items()) + ".",
        "",
        *_md_options(topology_rows()),
    ]
    md += [
        "",
        "### Config file",
        "",
        "A run's TOML file: top-level keys, then the tables "
        + ", ".join(f"`[{name}]`" for name, _ in _tables(RunConfig))
        + " (`[algorithm]` is the algorithm's name and options, above). Every table rejects "
        "unknown keys; "
        + ", ".join(f"`[{n}]`" for n, f in RunConfig.model_fields.items() if f.is_required())
        + " is required, and a table left out takes its defaults.",
        "",
        *_md_options(model_rows(RunConfig), "key"),
    ]
    for name, model in _tables(RunConfig):
        if model is None:
            continue
        md += ["", f"#### `[{name}]`", "", *_md_options(model_rows(model), "key")]
    return "\n".join(md) + "\n"


def splice(readme: str, block: str) -> str:
    """The README with `block` between the reference markers."""
    if START not in readme or END not in readme:
        raise UserError(f"the README has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def readme_block(readme: str) -> str:
    """What stands between the reference markers (without the newline after the start)."""
    if START not in readme or END not in readme:
        raise UserError(f"the README has no {START} ... {END} markers")
    return readme.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distsgd.reference", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="README", help="replace the reference block of this file")
    g.add_argument("--check", metavar="README", help="exit 1 when this file's reference block is stale")
    args = p.parse_args(argv)
    block = render_markdown()
    try:
        if args.write:
            path = Path(args.write)
            path.write_text(splice(path.read_text(), block))
        elif args.check:
            if readme_block(Path(args.check).read_text()) != block:
                print(
                    f"{args.check}: the reference is stale (python -m distsgd.reference --write {args.check})",
                    file=sys.stderr,
                )
                return 1
        else:
            sys.stdout.write(block)
    except (UserError, OSError) as e:
        print(f"distsgd.reference: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["Row", "entry_rows", "main", "model_rows", "render_markdown", "render_text", "splice", "summary"]
