"""Divergence: a loss that becomes inf stops the run with exit code 3 and keeps the last
good checkpoint; learning rates that are not finite float32 numbers are user errors."""

import math

import pytest

from .cases import CASES
from .helpers import config, load_checkpoint, read_metrics, run_cli, temporary_files, write

pytestmark = pytest.mark.faults

LEAST_SQUARES_LR_1E6 = 'name = "dpsgd"\nlr = 1e6\ntopology = "ring"'


def _diverge(tmp_path, checkpoint_every):
    """lr = 1e6 on least squares: the parameters grow ~1e6-fold a step, the loss is inf at step 4."""
    cfg = write(
        tmp_path / "cfg.toml",
        config(
            dataset="least_squares", steps=30, eval_every=3, checkpoint_every=checkpoint_every,
            algorithm=LEAST_SQUARES_LR_1E6,
        ),
    )  # fmt: skip
    code, err = run_cli("run", str(cfg), "--out", str(tmp_path / "out"), "--quiet")
    return code, err, tmp_path / "out" / "tiny"


def _check_diverged(case, code, err, run_dir, checkpoint_every):
    line = case.check(code, err)
    step = int(line.split("step ", 1)[1].split(":", 1)[0])
    rows = read_metrics(run_dir / "metrics.jsonl")  # every line strict JSON (null, not NaN)
    assert rows[-1]["step"] == step and rows[-1]["diverged"] is True
    assert rows[-1]["batch_loss"] is None  # the inf loss, written as null
    assert all(r["step"] < step and not r.get("diverged") for r in rows[:-1])
    kept = load_checkpoint(run_dir / "checkpoint.pt")
    assert kept["step"] == (step - 1) // checkpoint_every * checkpoint_every  # the last one before
    assert kept["step"] < step  # none at or after the diverging step
    assert math.isfinite(float(kept["state"]["x"].sum()))
    assert not temporary_files(run_dir)
    return step, kept["step"], line


def test_a_loss_that_becomes_inf_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    case = CASES["diverged"]
    code, err, run_dir = _diverge(tmp_path, checkpoint_every=3)
    step, kept, line = _check_diverged(case, code, err, run_dir, 3)
    assert (step, kept) == (4, 3), line


@CASES["diverged_at_checkpoint_step"].xfail_if_bug
def test_the_message_names_the_checkpoint_on_disk_when_divergence_hits_a_checkpoint_step(tmp_path):
    case = CASES["diverged_at_checkpoint_step"]
    code, err, run_dir = _diverge(tmp_path, checkpoint_every=2)  # diverges at step 4: step 2's is kept
    step, kept, line = _check_diverged(case, code, err, run_dir, 2)
    assert (step, kept) == (4, 2)
    assert f"the checkpoint of step {kept} is kept" in line, line


@pytest.mark.parametrize("lr", ["1e300", "inf", "-inf"])
def test_a_learning_rate_that_is_not_a_finite_float32_is_a_user_error(tmp_path, lr):
    case = CASES["lr_not_float32"]
    algorithm = f'name = "dpsgd"\nlr = {lr}\ntopology = "ring"'
    cfg = write(tmp_path / "cfg.toml", config(algorithm=algorithm))
    code, err = run_cli("run", str(cfg), "--out", str(tmp_path / "out"), "--quiet")
    if lr == "-inf":  # caught earlier, by lr > 0
        assert code == 2 and err.count("\n") == 1 and "algorithm.lr: Input should be greater than 0" in err, (
            err
        )
    else:
        case.check(code, err)
    assert not (tmp_path / "out").exists()
