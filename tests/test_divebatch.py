"""DiveBatch (and AdaBatch, fixed batch): the diversity, the rule, the runs, resuming, bad input."""

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distsgd
import distsgd.algorithms.divebatch  # noqa: F401  (registers "divebatch")
from distsgd.algorithms import ALGORITHMS, AllReduceSGD
from distsgd.algorithms.divebatch import (
    DiveBatch,
    adabatch_batch_size,
    divebatch_batch_size,
    diversity_of_sums,
    gradient_diversity,
)
from distsgd.cli import main
from distsgd.comm.simulated import SimulatedCommunicator
from distsgd.errors import UserError
from distsgd.registry import SpecError
from distsgd.tasks import make_task
from distsgd.workers import Workers

# -- the gradient diversity ------------------------------------------------------------------


def _rows(seed: int, k: int, d: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(1, 20), st.floats(1e-3, 1e3))
def test_diversity_is_scale_invariant_and_at_least_one_over_k(seed, k, d, c):
    g = _rows(seed, k, d)
    div = gradient_diversity(g)
    assert math.isclose(gradient_diversity(c * g), div, rel_tol=1e-9)
    assert div >= 1 / k * (1 - 1e-12)  # Cauchy–Schwarz: ‖Σ g_i‖² ≤ k Σ‖g_i‖²


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 50), st.integers(1, 20), st.floats(1e-3, 1e3))
def test_identical_gradients_have_the_minimum_diversity_one_over_k(seed, k, d, c):
    g = c * _rows(seed, 1, d).repeat(k, 1)
    assert math.isclose(gradient_diversity(g), 1 / k, rel_tol=1e-9)
    assert math.isclose(gradient_diversity(g.float()), 1 / k, rel_tol=1e-5)  # float32 rows too


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(0, 8), st.floats(1e-3, 1e3))
def test_orthogonal_gradients_of_equal_norm_have_diversity_one(seed, k, extra, c):
    q, _ = torch.linalg.qr(_rows(seed, k + extra, k + extra))
    assert math.isclose(gradient_diversity(c * q[:k]), 1.0, rel_tol=1e-9)


def test_gradients_that_cancel_have_unbounded_diversity():
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert gradient_diversity(g) == math.inf
    assert math.isnan(diversity_of_sums(0.0, torch.zeros(3)))


# -- the rules on hand-made diversities ------------------------------------------------------


@pytest.mark.parametrize(
    ("diversity", "batch", "cap", "multiple", "want"),
    [
        (0.001, 128, 2048, 1, 128),  # δΔN = 5 < B: never shrinks
        (0.05, 128, 2048, 1, 250),  # δΔN = 0.1 · 0.05 · 50000
        (0.0501, 128, 2048, 1, 250),  # int() rounds down
        (1.0, 128, 2048, 1, 2048),  # capped
        (math.nan, 128, 2048, 1, 2048),
        (math.inf, 128, 2048, 1, 2048),
        (0.05, 128, 2048, 16, 240),  # rounded down to a multiple of the workers
        (0.0261, 128, 2048, 16, 128),  # 130.5 → 130 → 128: never below B
        (0.05, 2048, 2048, 1, 2048),
    ],
)
def test_divebatch_rule(diversity, batch, cap, multiple, want):
    assert divebatch_batch_size(diversity, 0.1, 50_000, batch, cap, multiple) == want


def test_adabatch_rule_doubles_up_to_the_cap():
    assert [adabatch_batch_size(b, 600) for b in (128, 256, 512, 600)] == [256, 512, 600, 600]


class FakeOracle:
    """Per-sample gradients made to order: "identical" (all the same), "cancel" (pairs ±e),
    "orthogonal" (sample s of the run: the basis vector e_(s mod d))."""

    def __init__(self, kind: str, d: int):
        self.kind, self.d, self.calls, self.seen = kind, d, [], 0

    def __call__(self, x, rows=None, *, batch_size=None, per_sample=False):
        m = x.shape[0]
        self.calls.append((batch_size, per_sample))
        if self.kind == "identical":
            gs = torch.ones(m, batch_size, self.d)
        elif self.kind == "cancel":
            gs = torch.ones(m, batch_size, self.d)
            gs[:, 1::2] = -1
        else:
            ids = self.seen + torch.arange(m * batch_size).reshape(m, batch_size)
            gs = torch.nn.functional.one_hot(ids % self.d, self.d).float()
        self.seen += m * batch_size
        return gs if per_sample else gs.mean(1)


def _run(algo, oracle, n, steps):
    comm = SimulatedCommunicator(n)
    state = algo.init(torch.zeros(n, oracle.d), comm)
    history = []
    for _ in range(steps):
        state = algo.step(state, oracle, comm)
        history.append(state["batch_size"])
    return state, history


def test_identical_gradients_over_the_estimation_epoch_give_one_over_its_samples():
    algo = DiveBatch(lr=0.1, batch_size=10, max_batch_size=80, delta=0.5, resize_freq=2, train_samples=100)
    oracle = FakeOracle("identical", 6)
    state, history = _run(algo, oracle, 1, 25)
    # estimated on the last epoch before the resize only (steps 10–19), then Δ = 1/100
    assert [p for _, p in oracle.calls] == [False] * 10 + [True] * 10 + [False] * 5
    assert math.isclose(state["diversity"], 1 / 100, rel_tol=1e-6)
    assert history == [10] * 25  # δΔN = 0.5 < B: the batch never shrinks
    assert state["grad_sum"] is None and state["sq_norms"] == 0.0  # the window is reset


def test_orthogonal_gradients_give_delta_n_and_the_lr_follows():
    algo = DiveBatch(lr=0.1, batch_size=10, max_batch_size=80, delta=0.505, resize_freq=1, train_samples=100, adaptive_lr=True)
    state, history = _run(algo, FakeOracle("orthogonal", 200), 1, 11)
    assert math.isclose(state["diversity"], 1.0, rel_tol=1e-6)
    assert history[8:] == [10, 50, 50] and state["lr_scale"] == 5.0  # B ← ⌊δΔN⌋ = 50, lr ← lr · 50/10
    assert algo.metrics(state)["lr"] == pytest.approx(0.5)


def test_an_lr_schedule_still_scales_the_batch_coupled_step_size():
    """The runner's schedule replaces `lr`; the batch coupling s lives in the state."""
    algo = DiveBatch(lr=0.1, batch_size=10, max_batch_size=80, delta=0.505, resize_freq=1, train_samples=100, adaptive_lr=True)
    oracle = FakeOracle("orthogonal", 200)
    state, _ = _run(algo, oracle, 1, 11)
    g = copy.deepcopy(oracle)(state["x"], batch_size=50)  # the gradient the next step will draw
    x = state["x"].clone()
    new = dataclasses.replace(algo, lr=0.01).step(state, oracle, SimulatedCommunicator(1))
    torch.testing.assert_close(new["x"], x - 0.01 * 5.0 * g)


def test_cancelling_gradients_jump_to_the_cap_and_stop_estimating():
    algo = DiveBatch(lr=0.1, batch_size=8, max_batch_size=51, resize_freq=1, train_samples=40, adaptive_lr=True)
    oracle = FakeOracle("cancel", 3)
    state, history = _run(algo, oracle, 2, 12)
    assert state["diversity"] == math.inf
    assert history[:6] == [8, 8, 8, 8, 50, 50] and history[-1] == 50  # the cap 51, rounded to a multiple of 2 workers
    assert state["lr_scale"] == 50 / 8
    assert [p for _, p in oracle.calls] == [True] * 5 + [False] * 7  # at the cap: no more estimating
    assert [b for b, _ in oracle.calls] == [4] * 5 + [25] * 7  # each worker's share


def test_adabatch_doubles_every_resize_freq_epochs_without_per_sample_gradients():
    algo = DiveBatch(lr=0.1, batch_size=10, max_batch_size=45, rule="adabatch", resize_freq=2, train_samples=100)
    oracle = FakeOracle("identical", 4)
    _, history = _run(algo, oracle, 1, 40)
    # 20 steps of 10 (2 epochs), 10 of 20, 5 of 40, then the cap 45
    assert history[19] == 20 and history[29] == 40 and history[34] == 45 and history[-1] == 45
    assert history[18] == 10 and history[28] == 20 and history[33] == 40
    assert not any(p for _, p in oracle.calls)


# -- runs on a real task ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def task4():
    return make_task("mnist1d", n_workers=4, batch_size=4, num_samples=1000, seed=0)


def test_fixed_rule_is_allreduce_sgd_bit_for_bit(task4):
    hyper = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True}
    ref = distsgd.train(task4, AllReduceSGD(**hyper), steps=30, eval_every=10, seed=3)
    fixed = distsgd.train(task4, DiveBatch(batch_size=16, rule="fixed", **hyper), steps=30, eval_every=10, seed=3)
    assert torch.equal(ref.state["x"], fixed.state["x"])
    assert [r["test_acc"] for r in ref.metrics] == [r["test_acc"] for r in fixed.metrics]
    assert ref.summary["traffic"] == fixed.summary["traffic"]


def test_n_workers_estimate_the_diversity_over_every_workers_samples(task4):
    """One estimating step of 4 workers accumulates Σ‖g_i‖² and Σ g_i over all 16 samples."""
    algo = DiveBatch(lr=0.1, batch_size=16, max_batch_size=64, resize_freq=1, train_samples=800)
    comm = SimulatedCommunicator(4)
    ref = Workers(task4, seed=0)
    x = ref.x0()
    pooled = ref.gradients(x, batch_size=4, per_sample=True)[0].reshape(16, -1).double()
    w = Workers(task4, seed=0)
    state = algo.step(algo.init(x, comm), lambda x, **kw: w.gradients(x, **kw)[0], comm)
    assert math.isclose(state["sq_norms"], float(pooled.pow(2).sum()), rel_tol=1e-5)
    torch.testing.assert_close(state["grad_sum"][0], pooled.sum(0), rtol=1e-4, atol=1e-5)
    assert state["samples"] == 16 and int(w.samples_drawn.sum()) == 16


@pytest.mark.parametrize("n", [1, 4])
def test_divebatch_trains_and_grows_its_batch(n):
    task = make_task("mnist1d", n_workers=n, batch_size=16 // n, num_samples=1000, seed=0)
    algo = DiveBatch(lr=0.1, batch_size=16, max_batch_size=256, delta=0.05, resize_freq=1, train_samples=800, momentum=0.9)
    res = distsgd.train(task, algo, steps=200, eval_every=50, seed=0)
    sizes = [r["batch_size"] for r in res.metrics]
    assert sizes == sorted(sizes) and 16 < sizes[-1] <= 256 and all(b % n == 0 for b in sizes)
    assert 0 < res.metrics[-1]["gradient_diversity"] < math.inf
    assert res.metrics[-1]["test_acc"] > 0.3  # 10 classes: chance is 0.1
    assert res.state["samples"] == int(res.workers.samples_drawn.sum())
    assert res.metrics[-1]["epochs_drawn"] == res.state["samples"] / 800


@pytest.mark.parametrize("rule", ["divebatch", "adabatch"])
def test_resume_is_bit_exact(tmp_path, task4, rule):
    # 50 steps of 16 per epoch: the checkpoint at step 40 falls in an estimation epoch, the
    # batch grows at step 50 and again later
    algo = DiveBatch(lr=0.05, batch_size=16, max_batch_size=128, rule=rule, delta=0.04, resize_freq=1,
                     train_samples=800, adaptive_lr=True, momentum=0.9)
    kw = {"steps": 90, "eval_every": 30, "seed": 1}
    full = distsgd.train(task4, algo, **kw)
    d = tmp_path / "run"
    distsgd.train(task4, algo, **kw, run_dir=d, checkpoint_every=40, stop_after=40)
    resumed = distsgd.train(task4, algo, **kw, run_dir=d, checkpoint_every=40, resume=True)
    assert full.metrics[-1]["batch_size"] > 16
    assert torch.equal(full.state["x"], resumed.state["x"])
    for a, b in zip(full.metrics, resumed.metrics, strict=True):  # every row, those read back from the file too
        assert {k: v for k, v in a.items() if k != "wall_seconds"} == {k: v for k, v in b.items() if k != "wall_seconds"}
    assert torch.equal(full.workers.samples_drawn, resumed.workers.samples_drawn)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 256, "max_batch_size": 128}, "max_batch_size = 128 is below batch_size = 256 (the caps are inverted)"),
        ({"delta": 0.0}, "delta: Input should be greater than 0"),
        ({"delta": -1.0}, "delta: Input should be greater than 0"),
        ({"resize_freq": 0}, "resize_freq: Input should be greater than or equal to 1"),
        ({"rule": "doubling"}, "rule: Input should be 'divebatch', 'adabatch' or 'fixed'"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError):
        DiveBatch(lr=0.1, **options)
    with pytest.raises(SpecError) as e:
        ALGORITHMS.create({"name": "divebatch", "lr": 0.1, **options})
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 30, "train_samples": 800}, "batch_size = 30 is not a multiple of the 4 workers"),
    ],
)
def test_setups_that_do_not_fit_are_user_errors(task4, options, message):
    with pytest.raises(UserError) as e:
        distsgd.train(task4, DiveBatch(lr=0.1, resize_freq=1, **options), steps=200, eval_every=200)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_batch_never_outgrows_the_smallest_shard(task4):
    algo = DiveBatch(lr=0.1, batch_size=16, max_batch_size=4096, rule="adabatch", resize_freq=1, train_samples=100)
    res = distsgd.train(task4, algo, steps=60, eval_every=60)
    smallest = min(len(s) for s in task4.shards)
    assert res.metrics[-1]["batch_size"] == 4 * smallest


def test_n_defaults_to_the_workers_shards_under_train_and_is_needed_without(task4):
    algo = DiveBatch(lr=0.05, batch_size=16, resize_freq=1)
    with pytest.raises(ValueError, match="rule 'divebatch' counts epochs: set train_samples"):
        algo.init(torch.zeros(4, 3), SimulatedCommunicator(4))
    res = distsgd.train(task4, algo, steps=60, eval_every=60)
    assert sum(len(s) for s in task4.shards) == 800
    # the first epoch of N = 800 samples ends after 50 steps of 16: Δ estimated, the batch grown
    assert res.metrics[-1]["epochs_drawn"] == res.state["samples"] / 800 == (50 * 16 + 10 * res.state["batch_size"]) / 800
    assert res.state["batch_size"] > 16 and "gradient_diversity" in res.metrics[-1]
    assert "client_sizes" not in res.summary["algorithm"]  # a fact of the task, not an option


def test_inverted_caps_in_a_config_are_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        'name = "dive"\nn_workers = 2\nsteps = 5\n[task]\ndataset = "digits"\nmodel = "linear"\nbatch_size = 8\n'
        '[algorithm]\nname = "divebatch"\nlr = 0.1\nbatch_size = 64\nmax_batch_size = 32\ntrain_samples = 1000\n'
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distsgd: error: ") and "caps are inverted" in err[0], err


# -- the benchmark's smoke mode ---------------------------------------------------------------------


def test_benchmark_quick_mode_writes_its_results(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import divebatch_claims

    res = divebatch_claims.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "divebatch_claims.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__ and saved["cpu_count"] >= 1 and saved["platform"]
    for kind in ("plain", "per_sample"):
        line = saved["compute_model"][kind]
        assert len(line["points"]) >= 3 and math.isfinite(line["a"]) and math.isfinite(line["c"])
    assert set(saved["results"]) == {"1", "2"}
    md = (tmp_path / "divebatch_claims.md").read_text()
    for n, block in res["results"].items():
        assert set(block["methods"]) == set(divebatch_claims.METHODS)
        small = block["methods"]["sgd_small"]
        assert 0 < block["target"] < 1 and small["final_acc"]["mean"] > block["target"]
        assert small["reached"] == 2 and small["ratios"]["seconds_vs_sgd_small"] == 1.0
        growing = block["methods"]["adabatch"]["runs"][0]["curve"]
        assert growing[-1][3] > growing[0][3]  # AdaBatch's batch grew
        assert f"**{n} worker" in md
    assert md.count("| divebatch |") == 2 and md.count("| sgd_large |") == 2
