"""The README's "What happens when…" table is the one tests/faults/cases.py generates."""

import pytest

from .cases import CASES_LIST
from .table import README, readme_block, render

pytestmark = pytest.mark.faults


def test_readme_table_is_current():
    assert readme_block(README.read_text()) == render(), (
        "README.md's 'What happens when…' table is stale: run `python -m tests.faults.table --write`"
    )


def test_every_case_has_a_row_and_every_bug_says_what_happens_today():
    table = render()
    assert table.count("\n") == len(CASES_LIST) + 2
    for case in CASES_LIST:
        assert (case.bug is None) == (case.now is None), case.id


def test_every_case_is_checked_by_a_test():
    here = README.parent / "tests" / "faults"
    sources = "".join(p.read_text() for p in here.glob("test_*.py"))
    unused = [c.id for c in CASES_LIST if f'"{c.id}"' not in sources]
    assert not unused, f"cases no test uses: {unused}"
