import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import TINY, one_error_line, write_config

from distsgd.cli import main
from distsgd.errors import UserError
from distsgd.sweep import parse_grid, pick, points, run_metrics, run_sweep, select

_write, _err = write_config, one_error_line


def test_parse_grid_reads_toml_values_and_keeps_brackets_whole():
    grid = parse_grid(["algorithm.lr=0.01,0.1", "task.hidden=[8,8],[16]", 'algorithm.compressor="topk:0.1",sign'])
    assert grid == {
        "algorithm.lr": [0.01, 0.1],
        "task.hidden": [[8, 8], [16]],
        "algorithm.compressor": ["topk:0.1", "sign"],
    }
    ps = points(grid, [0, 1])
    assert len(ps) == 2 * 2 * 2 * 2
    assert len({p.label for p in ps}) == len(ps)
    assert ps[0].label == "lr0.01-hidden8_8-compressortopk_0.1-seed0" and ps[0].group == ps[1].group


def test_pick_flags_the_edges_and_ranks_failures_last():
    assert pick({0.01: 0.5, 0.1: 0.3, 1.0: 0.4}, higher_is_better=False) == (0.1, None)
    assert pick({0.01: 0.5, 0.1: 0.3, 1.0: None}, higher_is_better=False) == (0.1, None)
    assert pick({0.01: 0.9, 0.1: 0.8}, higher_is_better=True) == (0.01, "smallest")
    assert pick({0.01: 0.5, 0.1: 0.3, 1.0: 0.2}, higher_is_better=False) == (1.0, "largest")
    assert pick({0.1: 0.3}, higher_is_better=False) == (0.1, "only value")


def test_a_2x2_sweep_has_4_runs_and_a_table_equal_to_their_summaries(tmp_path, capsys):
    cfg = _write(tmp_path)
    out = tmp_path / "runs"
    args = ["sweep", cfg, "--out", str(out), "--grid", "algorithm.lr=0.05,0.2", "--seeds", "2", "--jobs", "1"]
    assert main([*args, "--target", "0.8", "--select", "lr"]) == 0
    root = out / "tiny"
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    assert dirs == ["lr0.05-seed0", "lr0.05-seed1", "lr0.2-seed0", "lr0.2-seed1"]
    doc = json.loads((root / "sweep.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["grid"] == {"algorithm.lr": [0.05, 0.2]}
    for g in doc["groups"]:
        lr = dict(g["values"])["algorithm.lr"]
        summaries = [json.loads((root / f"lr{lr:g}-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        assert [s["seed"] for s in summaries] == [0, 1] and all(s["finished"] for s in summaries)
        assert {s["config"]["algorithm"]["lr"] for s in summaries} == {lr}
        for metric, key in (("test_acc", "test_acc"), ("test_loss", "test_loss"),
                            ("bytes_per_worker", "bytes_sent_per_worker"), ("sim_seconds", "sim_seconds")):
            xs = [s["final"][key] for s in summaries]
            assert g["metrics"][metric]["mean"] == pytest.approx(statistics.fmean(xs))
            assert g["metrics"][metric]["std"] == pytest.approx(statistics.stdev(xs))
            assert g["metrics"][metric]["n"] == 2
        reached = [run_metrics(root / f"lr{lr:g}-seed{s}", 0.8)["steps_to_target"] for s in (0, 1)]
        assert g["metrics"].get("steps_to_target", {"n": 0})["n"] == sum(r is not None for r in reached)
    best = doc["selection"][0]
    losses = {dict(g["values"])["algorithm.lr"]: g["metrics"]["test_loss"]["mean"] for g in doc["groups"]}
    assert best["best"] == min(losses, key=losses.get) and best["metric"] == "test_loss"
    assert best["edge"] in ("smallest", "largest")  # two values: the winner is always on an edge
    text = capsys.readouterr().out
    assert "ran 4, skipped 0" in text and "widen the grid" in text
    md = (root / "sweep.md").read_text()
    assert "| lr | n | test acc |" in md and "±" in md

    # a rerun after losing one run's result completes only that run, leaving the others alone
    (root / "lr0.2-seed1" / "summary.json").unlink()
    before = {d: (root / d / "summary.json").stat().st_mtime_ns for d in dirs if d != "lr0.2-seed1"}
    assert main([*args, "--quiet"]) == 0
    assert "ran 1, skipped 3" in capsys.readouterr().out
    assert before == {d: (root / d / "summary.json").stat().st_mtime_ns for d in before}

    # a run whose config changed since is not taken for done
    assert main([*args, "-s", "steps=10", "--quiet"]) == 0
    assert "ran 4, skipped 0" in capsys.readouterr().out


def test_killing_a_sweep_and_rerunning_it_completes_only_the_missing_runs(tmp_path, capsys):
    cfg = _write(tmp_path, TINY.replace("steps = 20", "steps = 300").replace("eval_every = 5", "eval_every = 100"))
    out = tmp_path / "runs"
    args = ["sweep", cfg, "--out", str(out), "--grid", "algorithm.lr=0.05,0.2", "--seeds", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distsgd.cli", *args, "--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its pool's processes share its group: one kill ends them all
    )
    root = out / "tiny"
    deadline = time.monotonic() + 240
    try:
        while not list(root.glob("*/summary.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/summary.json")}
    assert done, "the sweep finished no run before it was killed"
    assert main([*args, "--jobs", "1", "--quiet"]) == 0
    assert f"ran {4 - len(done)}, skipped {len(done)}" in capsys.readouterr().out
    assert done == {d: (root / d / "summary.json").stat().st_mtime_ns for d in done}
    assert len(list(root.glob("*/summary.json"))) == 4


def test_a_sweep_table_in_the_config(tmp_path, capsys):
    text = TINY + '\n[sweep]\nseeds = 2\nselect = "lr"\n[sweep.grid]\nalgorithm.lr = [0.05, 0.2]\n'
    cfg = _write(tmp_path, text)
    res = run_sweep(cfg, out=tmp_path / "runs", jobs=1, say=lambda _: None)
    assert len(res.runs) == 4 and res.seeds == [0, 1] and res.selection[0]["key"] == "algorithm.lr"
    # `distsgd run` of the same file trains the base config
    assert main(["run", cfg, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    assert (tmp_path / "single" / "tiny" / "summary.json").is_file()
    cfg = _write(tmp_path, TINY + "\n[sweep]\nseed = 3\n", "bad.toml")
    assert main(["sweep", cfg, "--out", str(tmp_path / "runs")]) == 2
    assert "sweep.seed: unknown key" in _err(capsys)


def test_a_diverged_run_is_recorded_ranked_last_and_not_rerun(tmp_path, capsys):
    cfg = _write(tmp_path, TINY.replace('"logistic"', '"least_squares"'))
    args = ["sweep", cfg, "--out", str(tmp_path / "runs"), "--grid", "algorithm.lr=0.01,1000", "--jobs", "1"]
    assert main([*args, "--select", "lr"]) == 0
    root = tmp_path / "runs" / "tiny"
    assert (root / "lr1000-seed0" / "diverged.json").is_file()
    doc = json.loads((root / "sweep.json").read_text())
    assert doc["selection"][0]["best"] == 0.01
    assert [g["diverged"] for g in doc["groups"]] == [0, 1]
    capsys.readouterr()
    assert main([*args, "--quiet"]) == 0
    assert "ran 0, skipped 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--grid", "algorithm.lr="], "empty grid"),
        (["--grid", "algorithm.lr"], "bad --grid"),
        (["--grid", "task.dataset=1,2"], "--grid task.dataset=1: task.dataset: Input should be"),
        (["--grid", "n_workers=4,four"], "--grid n_workers=\"four\": n_workers: Input should be a valid integer"),
        (["--grid", "algorithm.lrr=0.1,0.2"], "algorithm.lrr: unknown option"),
        (["--grid", "bogus=1,2"], "bogus: unknown key"),
        (  # the other algorithm has no topology option: the grid value is named
            ["--grid", "algorithm.name=allreduce_sgd,local_sgd"],
            'tiny.toml with --grid algorithm.name="allreduce_sgd": algorithm.topology: unknown option',
        ),
        (["--grid", "algorithm.lr=0.1,0.1"], "lists 0.1 twice"),
        (["--grid", "name=a,b"], "cannot sweep over name"),
        ([], "nothing to sweep"),
        (["--grid", "algorithm.lr=0.1,0.2", "--select", "momentum"], "--select momentum: not a key of the grid"),
        (["--grid", "algorithm.lr=0.1,0.2", "--jobs", "0"], "--jobs must be >= 1"),
        (["--grid", "algorithm.lr=0.1,0.2", "--seeds", "0"], "--seeds must be >= 1"),
        (["--grid", "algorithm.lr=0.1,0.2", "-s", "steps=many"], "with -s steps=many: steps: Input should be"),
    ],
)
def test_bad_sweeps_give_one_line_exit_2_and_run_nothing(tmp_path, capsys, extra, expected):
    out = tmp_path / "runs"
    assert main(["sweep", _write(tmp_path), "--out", str(out), "--jobs", "1", *extra]) == 2
    line = _err(capsys)
    assert line.startswith("distsgd: error: ") and expected in line, line
    assert not list(out.glob("*/*/metrics.jsonl"))


def test_parse_grid_errors():
    with pytest.raises(UserError, match="given twice"):
        parse_grid(["a.b=1,2", "a.b=3"])
    with pytest.raises(UserError, match="empty grid"):
        parse_grid(["a.b= , "])


def test_folder_names_stay_distinct_when_values_read_alike():
    ps = points({"algorithm.compressor": ["topk:0.1", "topk_0.1"]}, [0])
    assert len({p.label for p in ps}) == 2 and all(Path(p.label).name == p.label for p in ps)


def test_select_picks_per_algorithm_and_per_other_grid_value():
    def group(name, lr, n, loss, diverged=0):
        values = [["algorithm.name", name], ["algorithm.lr", lr], ["n_workers", n]]
        return {"group": f"{name}-{lr}-{n}", "values": values, "algorithm": name, "diverged": diverged,
                "missing": 0, "metrics": {"test_loss": {"mean": loss, "std": None, "n": 1}}}

    groups = [
        group("a", 0.1, 4, 0.5), group("a", 0.3, 4, 0.2), group("a", 1.0, 4, 0.1, diverged=1),
        group("a", 0.1, 8, 0.1), group("a", 0.3, 8, 0.4), group("a", 1.0, 8, 0.6),
        group("b", 0.1, 4, 0.9), group("b", 0.3, 4, 0.8), group("b", 1.0, 4, 0.7),
    ]
    chosen = {(s["algorithm"], s["fixed"].get("n_workers")): (s["best"], s["edge"]) for s in select(groups, "algorithm.lr")}
    assert chosen == {("a", 4): (0.3, None), ("a", 8): (0.1, "smallest"), ("b", 4): (1.0, "largest")}


def test_next_value_steps_past_an_edge_by_its_ratio_or_difference():
    from distsgd.sweep import next_value

    assert next_value([0.01, 0.03, 0.1], "largest") == (0.333333, None)
    assert next_value([0.1, 0.2, 0.4], "largest") == (0.8, None)
    assert next_value([0.1, 0.2, 0.4], "smallest") == (0.05, None)
    assert next_value([0.0, 0.5, 1.0], "smallest") == (-0.5, None)
    assert next_value([2, 4, 8], "largest") == (16, None)
    assert next_value([1, 2], "smallest") == (0, None)  # no ratio below 1 for integers: a step of 1
    assert next_value([0.1], "largest")[0] is None
    assert next_value(["a", "b"], "largest")[0] is None


def _least_squares(tmp_path):
    text = TINY.replace('"logistic"', '"least_squares"').replace("batch_size = 8", "batch_size = 8\nvalidation = 0.2")
    return _write(tmp_path, text)


def test_widening_runs_past_an_edge_until_the_best_is_inside(tmp_path, capsys):
    cfg = _least_squares(tmp_path)
    out = tmp_path / "runs"
    args = ["sweep", cfg, "--out", str(out), "--grid", "algorithm.lr=0.01,0.02", "--select", "lr", "--jobs", "1"]
    assert main([*args, "--widen", "12"]) == 0
    root = out / "tiny"
    doc = json.loads((root / "sweep.json").read_text())
    (sel,) = doc["selection"]
    (w,) = doc["widening"]
    assert sel["metric"] == "val_loss"  # least squares has no accuracy; never the test split
    assert sel["edge"] is None and w["stopped"] is None and len(w["added"]) >= 2
    assert w["added"] == pytest.approx([0.02 * 2 ** (i + 1) for i in range(len(w["added"]))])
    assert sel["best"] == w["added"][-2]  # the last value added is the first past the best
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    assert len(dirs) == 2 + len(w["added"])
    capsys.readouterr()
    assert main([*args, "--widen", "12", "--quiet"]) == 0
    assert "ran 0" in capsys.readouterr().out  # a rerun widens through finished runs


def test_widening_says_why_it_stopped(tmp_path, capsys):
    cfg = _least_squares(tmp_path)
    res = run_sweep(cfg, {"algorithm.lr": [1e-5, 2e-5]}, out=tmp_path / "runs", jobs=1, select="lr", widen=1,
                    say=lambda _: None)
    (w,) = res.widening
    assert w["added"] == [4e-5] and "still at the largest value" in w["stopped"]
    assert res.selection[0]["edge"] == "largest"
    assert "widening stopped" in (res.root / "sweep.md").read_text()
    with pytest.raises(UserError, match="give --select"):
        run_sweep(cfg, {"algorithm.lr": [1e-5, 2e-5]}, out=tmp_path / "runs", jobs=1, widen=1)


def test_widening_stops_where_the_config_refuses_the_next_value(tmp_path):
    from distsgd.overrides import parse_override

    # a tiny lr: the most momentum wins, and the next value past 0.9 (1.35) is no momentum
    cfg = _least_squares(tmp_path)
    res = run_sweep(cfg, {"algorithm.momentum": [0.0, 0.45, 0.9]}, out=tmp_path / "runs", jobs=1,
                    select="momentum", widen=3, overrides=[parse_override("algorithm.lr=1e-5")], say=lambda _: None)
    (w,) = res.widening
    assert res.selection[0]["best"] == 0.9 and res.selection[0]["edge"] == "largest"
    assert w["added"] == [] and "the next value 1.35 is refused" in w["stopped"]
    assert len(res.runs) == 3  # the refused value never ran


def test_auto_selection_uses_the_validation_split_when_there_is_one(tmp_path):
    res = run_sweep(_least_squares(tmp_path), {"algorithm.lr": [0.01, 0.05]}, out=tmp_path / "runs", jobs=1,
                    select="lr", say=lambda _: None)
    assert res.selection[0]["metric"] == "val_loss"
