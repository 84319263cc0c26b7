"""Print the README's "What happens when…" table from tests/faults/cases.py.

    python -m tests.faults.table            # print the Markdown table
    python -m tests.faults.table --write    # replace the block in README.md

Each row is what a test in tests/faults asserts: the exit code, the stderr line(s) (`…` is
any text, `<n>` a number) and what is on disk afterwards. Rows of known bugs (tests marked
xfail) say so, with what happens today.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cases import CASES_LIST, Case

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(c) -> str:
    if not isinstance(c, tuple):
        return f"`{c}`"
    codes = [f"`{x}`" for x in c]
    return ", ".join(codes[:-1]) + " or " + codes[-1]


def _exit(case: Case) -> str:
    if isinstance(case.exit, dict):
        return ", ".join(f"rank {r}: {_code(c)}" for r, c in case.exit.items())
    return _code(case.exit)


def _says(case: Case) -> str:
    lines = list(case.says.values()) if isinstance(case.says, dict) else list(case.says)
    if not lines:
        return "nothing"
    joiner = "<br>" if isinstance(case.says, dict) else "<br>or "
    return joiner.join(f"`{line}`" for line in lines)


def _after(case: Case) -> str:
    if case.now is None:
        return case.after
    return f"{case.after}<br>**Known bug** (its test is xfail): today {case.now}"


def render() -> str:
    rows = [
        "| When… | Exit code | stderr (one line per process) | Afterwards |",
        "|---|---|---|---|",
    ]
    for case in CASES_LIST:
        cells = [case.when, _exit(case), _says(case), _after(case)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def readme_block(text: str) -> str:
    """The text between the markers (without them)."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.table", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"replace the block between the markers in {README}")
    args = p.parse_args(argv)
    table = render()
    if not args.write:
        sys.stdout.write(table)
        return 0
    text = README.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    README.write_text(text[:start] + "\n" + table + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
