"""The benchmark harness's rules: tuning widens past edges and ranks diverged values last,
figures carry their spread and diverged seeds, wins need separated intervals, timings
interleave, and no benchmark counts bytes in a float64 default."""

import math
import re
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402


def test_stats_leave_diverged_runs_out_and_count_them():
    s = harness.stats([0.5, None, 0.7, float("nan")])
    assert s["n"] == 2 and s["diverged"] == 2 and s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    half = 12.706204736 * s["std"] / math.sqrt(2)  # Student t, 1 degree of freedom, 95%
    assert s["ci"] == pytest.approx([0.6 - half, 0.6 + half])
    assert harness.show(harness.stats([None, None])) == "diverged"
    assert "1 of 3 diverged" in harness.show(harness.stats([0.5, 0.6, None]))


def test_a_win_needs_intervals_that_do_not_overlap():
    a, b = harness.stats([0.90, 0.91, 0.92]), harness.stats([0.80, 0.81, 0.82])
    assert harness.verdict(a, b) == "better" and harness.verdict(b, a) == "worse"
    assert harness.verdict(a, b, higher_is_better=False) == "worse"
    close = harness.stats([0.905, 0.93, 0.88])
    assert harness.verdict(a, close) == "tie"
    assert harness.verdict(a, harness.stats([None, None, None])) == "better"


def test_tuning_widens_past_an_edge_and_ranks_diverged_values_last(tmp_path):
    calls = []

    def measure(lr, seed):  # a bowl with its minimum at lr = 1.6; lr >= 10 diverges
        calls.append((lr, seed))
        return None if lr >= 10 else (math.log2(lr / 1.6)) ** 2 + 0.01 * seed

    rec = harness.tune("bowl", measure, [0.1, 0.2, 0.4], widen=6, say=lambda _: None)
    assert rec["best"] == pytest.approx(1.6) and rec["edge"] is None and rec["stopped"] is None
    assert rec["added"] == pytest.approx([0.8, 1.6, 3.2])
    assert {s for _, s in calls} == {0, 1}  # every value over both tuning seeds
    rec = harness.tune("bowl", measure, [0.1, 0.2], widen=2, say=lambda _: None)
    assert rec["edge"] == "largest" and "after 2 added" in rec["stopped"]
    assert harness.edges({"x": {"tuning": rec}}) and not harness.edges({"best": 1, "edge": None, "scores": {}})
    rec = harness.tune("wall", measure, [5.0, 10.0, 20.0], say=lambda _: None)
    assert rec["scores"]["10"]["diverged"] == 2 and rec["best"] < 10


def test_the_cache_resumes_without_measuring_again(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RUNS", tmp_path)
    cache = harness.Cache("t")
    n = []
    assert cache.get("k", lambda: n.append(1) or 3.0) == 3.0
    assert harness.Cache("t").get("k", lambda: n.append(1) or 4.0) == 3.0 and len(n) == 1


def test_interleaved_timing_reports_the_ratio_per_round():
    import time

    out = harness.interleave({"base": lambda: time.sleep(0.002), "slow": lambda: time.sleep(0.004)}, "base",
                             rounds=5, warmup=0)
    assert out["base"]["ratio_median"] == 1.0 and out["slow"]["ratio_median"] > 1.0
    assert out["slow"]["ratio_q25"] <= out["slow"]["ratio_median"] <= out["slow"]["ratio_q75"]


def test_tune_config_selects_on_validation_and_final_runs_fresh_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RUNS", tmp_path)
    config = {"n_workers": 4, "steps": 20, "eval_every": 10,
              "task": {"dataset": "logistic", "model": "linear", "samples_per_worker": 50, "dim": 5,
                       "batch_size": 8, "validation": 0.2},
              "algorithm": {"name": "allreduce_sgd", "lr": 0.1}}
    rec = harness.tune_config("tiny", config, [0.003, 0.03, 0.3], jobs=1)
    assert rec["metric"] == "val_acc" and rec["seeds"] == 2 and set(rec["scores"]) >= {"0.003", "0.03", "0.3"}
    fin = harness.final_config("tiny", config, {"algorithm.lr": rec["best"]}, jobs=1)
    assert fin["seeds"] == [100, 101, 102] and fin["test_acc"]["n"] == 3 and len(fin["runs"]) == 3
    with pytest.raises(ValueError, match="validation"):
        harness.tune_config("tiny", {**config, "task": {**config["task"], "validation": 0.0}}, [0.1])


def test_no_benchmark_sets_a_float64_default_behind_the_byte_counters():
    offenders = [p.name for p in BENCH.glob("*.py")
                 if re.search(r"set_default_dtype\(\s*torch\.float64", p.read_text())]
    assert offenders == []


def test_reproduce_flags_figures_outside_their_prediction_interval():
    import reproduce

    committed = {
        "acc": harness.stats([0.80, 0.82, 0.81]),
        "once": harness.stats([32.0]),
        "gone": harness.stats([None, None, None]),
        "later": harness.stats([0.5, 0.6, 0.55]),
    }
    rows = {r["figure"]: r["verdict"] for r in reproduce.compare(committed, {"acc": 0.83, "once": 32.0, "gone": None,
                                                                             "later": None})}
    assert rows == {"acc": "holds", "once": "holds", "gone": "holds", "later": "moved (diverged)"}
    rows = {r["figure"]: r["verdict"] for r in reproduce.compare(committed, {"acc": 0.70, "once": 31.0})}
    assert rows["acc"] == "moved" and rows["once"] == "moved" and rows["gone"] == "not rechecked"
    lo, hi = harness.predict(committed["acc"])
    assert lo < 0.80 and hi > 0.82 and harness.predict(committed["once"]) is None


class _FakeRuns:
    """Stands in for byzantine_breakdown.Runs: a job's result is a function of its value."""

    def __init__(self, result):
        self.result, self.data, self.ran = result, {}, []

    def ensure(self, jobs):
        for j in jobs:
            if j not in self.data:
                self.ran.append(j)
                self.data[j] = self.result(j)
        return True

    def get(self, job):
        return self.data[job]


def test_byzantine_tuning_widens_in_rounds_and_stops_at_a_bound():
    import byzantine_breakdown as bb

    def result(job):  # job = (value, seed); validation accuracy peaks at lr 0.03
        v, _seed = job
        return {"val_acc": 1.0 - abs(math.log(v / 0.03)) / 10} if v < 50 else None

    runs = _FakeRuns(result)
    jobs = lambda v: [(v, s) for s in (0, 1)]  # noqa: E731
    tunings = {
        "a": {"values": (0.125, 0.25, 0.5), "bounds": (0.0, math.inf), "jobs": jobs, "score": bb._lr_score,
              "detail": bb._detail},
        # "b" scores every value alike, so the smallest wins and would widen downward
        "b": {"values": (0.2, 0.4), "bounds": (0.15, 1.0), "jobs": jobs, "score": lambda rs: 0.0,
              "detail": bb._detail},
    }
    rec = bb._tune_rounds(runs, tunings)
    a = rec["a"]
    assert a["edge"] is None and a["best"] == pytest.approx(0.03125) and a["stopped"] is None
    assert a["added"] == [0.0625, 0.03125, 0.015625]
    assert set(a["scores"]) == {"0.015625", "0.03125", "0.0625", "0.125", "0.25", "0.5"}
    assert a["scores"]["0.125"]["runs"] == 2 and a["scores"]["0.125"]["diverged"] == 0
    b = rec["b"]  # the next value down, 0.1, lies outside the bounds: stopped, and the record says so
    assert b["best"] == 0.2 and b["edge"] == "smallest" and b["added"] == []
    assert "outside" in b["stopped"]
    assert "b: best 0.2 on the smallest edge" in "; ".join(harness.edges(rec))
    assert len(runs.ran) == len(set(runs.ran))  # no run twice
