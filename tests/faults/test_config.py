"""Configs: run names that would leave out_dir, strict types, and hypothesis-made TOML
(random text, or a valid config mangled) that must never end in a traceback."""

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cases import CASES
from .helpers import config, run_cli, snapshot, write

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("name", ["..", "a/b", "../x", ".", "/tmp/x"])
def test_a_run_name_cannot_leave_out_dir(tmp_path, name):
    case = CASES["bad_name"]
    base = tmp_path / "base"
    cfg = write(base / "cfg.toml", config().replace('name = "tiny"', f"name = {name!r}".replace("'", '"')))
    before = snapshot(tmp_path)
    case.check(*run_cli("run", str(cfg), "--out", str(base / "out"), "--quiet"))
    assert snapshot(tmp_path) == before and not (base / "out").exists()


@pytest.mark.parametrize(
    "edit,field",
    [
        (("lr = 0.1", 'lr = "0.1"'), "algorithm.lr"),
        (("lr = 0.1", "lr = true"), "algorithm.lr"),
        (("n_workers = 4", "n_workers = 4.0"), "n_workers"),
    ],
    ids=["lr_string", "lr_bool", "n_workers_float"],
)
def test_strict_types(tmp_path, edit, field):
    case = CASES["strict_types"]
    text = config()
    assert edit[0] in text
    cfg = write(tmp_path / "cfg.toml", text.replace(*edit))
    line = case.check(*run_cli("run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"))
    assert f": {field}: " in line, line
    assert not (tmp_path / "out").exists()


# -- hypothesis ----------------------------------------------------------------------------------

# Every value small: a mangled config that still validates trains a few steps, not 500.
VALID = config(steps=2, eval_every=1, checkpoint_every=1)
WRONG = [
    '"x"', '""', "true", "false", "0", "1", "3", "-1", "0.0", "0.5", "-0.5", "1.5", "1e300", "inf",
    "-inf", "nan", "[1, 2]", "[]", "{ a = 1 }", "2024-01-01", '"digits"', '"ring"', '"mlp"',
]  # fmt: skip
_ASSIGN = re.compile(r"^(\w+ = )(.+)$", re.M)


def _delete(text, positions):
    drop = {p % len(text) for p in positions}
    return "".join(c for i, c in enumerate(text) if i not in drop)


def _swap(text, i, j):
    found = list(_ASSIGN.finditer(text))
    a, b = found[i % len(found)], found[j % len(found)]
    if a.start() > b.start():
        a, b = b, a
    if a.start() == b.start():
        return text
    return text[: a.start(2)] + b.group(2) + text[a.end(2) : b.start(2)] + a.group(2) + text[b.end(2) :]


def _retype(text, i, value):
    found = list(_ASSIGN.finditer(text))
    m = found[i % len(found)]
    return text[: m.start(2)] + value + text[m.end(2) :]


_index = st.integers(0, 10_000)
mangled = st.one_of(
    st.lists(_index, min_size=1, max_size=6).map(lambda ps: _delete(VALID, ps)),
    st.tuples(_index, _index).map(lambda ij: _swap(VALID, *ij)),
    st.tuples(_index, st.sampled_from(WRONG)).map(lambda iv: _retype(VALID, *iv)),
)


def _run_anything(text: str) -> int:
    case = CASES["fuzz_toml"]
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "cfg.toml"
        cfg.write_text(text)
        code, err = run_cli("run", str(cfg), "--out", str(Path(d) / "out"), "--quiet")
        line = case.check(code, err)
        if code == 2:
            assert line.startswith("distsgd: error: "), line
        if code == 3:
            assert line.startswith("distsgd: diverged: "), line
    return code


FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_as_a_config(text):
    _run_anything(text)


@FUZZ
@given(text=mangled)
def test_a_mangled_valid_config(text):
    _run_anything(text)


def test_the_unmangled_config_runs():
    assert _run_anything(VALID) == 0
