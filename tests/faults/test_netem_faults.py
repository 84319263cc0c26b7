"""Faults of `distsgd netem` (see cases.py): a failing node, missing tools, bad links."""

import sys

import pytest

from distsgd import netem

from .cases import CASES
from .helpers import run_cli

UNAVAILABLE = netem.available()

pytestmark = pytest.mark.faults


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network namespaces here: {UNAVAILABLE}")
def test_a_failing_node_stops_the_others_and_is_named():
    code = (
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    time.sleep(0.5); sys.exit(7)\n"
        "time.sleep(60)\n"  # the others would run on: the launcher stops them 10 s later
    )
    rc, err = run_cli("netem", "--nodes", "3", "--bandwidth", "1Gbit/s", "--", sys.executable, "-c", code)
    CASES["netem_node_fails"].check(rc, err)


def test_missing_tools_one_line(monkeypatch):
    real = netem.shutil.which
    monkeypatch.setattr(netem.shutil, "which", lambda t: None if t == "tc" else real(t))
    rc, err = run_cli("netem", "--nodes", "2", "--", "true")
    CASES["netem_no_tools"].check(rc, err)


@pytest.mark.parametrize("bandwidth", ["0", "-5Mbit/s", "inf", "1Gb/s", "nan"])
def test_bad_bandwidth_one_line(bandwidth):
    rc, err = run_cli("netem", "--nodes", "2", "--bandwidth", bandwidth, "--", "true")
    CASES["netem_bad_link"].check(rc, err)
