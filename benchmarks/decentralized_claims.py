"""Decentralized training beyond D-PSGD (issue 6): three claims, MNIST-1D, 1D-CNN, 16 workers.

1. `d2`: D² against D-PSGD on a ring when every worker holds 1 or 2 labels, and on IID
   shards: training loss and test accuracy of the averaged model at the same step. Plain
   SGD for all (the paper's setting). The even ring's Metropolis W has λ_min = −1/3, so D²
   runs on the lazy (W + I)/2; `dpsgd_lazy` is D-PSGD on that same lazy W, the control
   that separates D²'s correction from its slower mixing. (The lazy W is not a run-config
   option, so this claim runs through the Python API with `harness.tune`/`Cache`.)
2. `adpsgd`: AD-PSGD against AllReduce-SGD and D-PSGD (ring), plain SGD, with one worker
   4× slower, and with every worker's gradient time varying randomly (log-normal jitter
   σ = 0.5 plus 10% transient 4× stragglers). Simulated time to a target test accuracy
   (90% of the tuned AllReduce-SGD's mean final accuracy), seconds per epoch, and the
   accuracy at equal steps (run configs through `harness.tune_config`/`final_config`).
3. `choco`: CHOCO-SGD with Top-1% and with scaled-sign compression on a ring against
   D-PSGD (adapt-then-combine, momentum 0.9): test accuracy at equal steps, bytes sent per
   worker, and the bytes each CHOCO needs (run 3× as long) to reach D-PSGD's mean final
   accuracy less one point. D-PSGD's lr is tuned; each CHOCO's lr and consensus step γ are
   tuned jointly, a sweep over γ × lr (run configs through the harness).

All three follow benchmarks/harness.py: every method's lr is tuned alike by the mean
validation accuracy (task.validation = 0.1, never the test split) over 2 seeds, the grid
widened while the winner sits on an edge; final figures over 3 fresh seeds with std and a
95% interval; a diverged run is counted, never averaged; a difference is a win only when
the intervals do not overlap. Bytes are the float32 wire size the simulator counts.

Writes benchmarks/results/{d2,adpsgd,choco}_claims.{json,png} and {d2,adpsgd}_claims.md.
Run: python benchmarks/decentralized_claims.py [d2|adpsgd|choco ...] [--steps 1500] [--jobs 2]
     python benchmarks/decentralized_claims.py d2 adpsgd --recheck PATH  (one fresh seed, no tuning)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd import DPSGD, make_task, make_topology, train  # noqa: E402
from distsgd.algorithms import D2  # noqa: E402
from distsgd.errors import Diverged  # noqa: E402

N = 16
KEYS = ("step", "epoch", "train_loss", "val_acc", "test_acc", "worker0_test_acc", "consensus_distance",
        "sim_seconds", "bytes_sent_per_worker")
VALIDATION = 0.1  # fraction of the training samples held out for tuning
LR_GRID = (0.1, 0.2, 0.4)  # every method's starting grid (×2 apart), widened past an edge
BENCH = "decentralized"

SPLITS = {
    "1 label per worker": {"partition": "labels", "labels_per_worker": 1},
    "2 labels per worker": {"partition": "labels", "labels_per_worker": 2},
    "iid": {},
}
D2_METHODS = {"dpsgd": "D-PSGD (Metropolis W)", "d2": "D² (lazy W)", "dpsgd_lazy": "D-PSGD on D²'s lazy W"}

SETTINGS = {  # name -> (slug, [network] table)
    "one worker 4x slower": ("slow-worker", {"speeds": [1.0] * (N - 1) + [0.25]}),
    "random speeds": ("random-speeds", {"speed_jitter": 0.5, "straggler_prob": 0.1, "straggler_slowdown": 4.0}),
}
AD_METHODS = {"allreduce_sgd": "AllReduce-SGD", "dpsgd": "D-PSGD", "adpsgd": "AD-PSGD"}
TARGET_FRACTION = 0.9  # of the tuned AllReduce-SGD's mean final test accuracy


def say(line: str) -> None:
    print(line, flush=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def _curve(rows) -> list[dict]:
    return [{k: row.get(k) for k in KEYS + ("staleness_mean",) if k in row} for row in rows]


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


# -- claim 1: D² (Python API: the lazy W of the control is no run-config option) -----------


def _d2_algorithm(method: str, lr: float):
    ring = make_topology("ring", N)
    if method == "dpsgd":
        return DPSGD(lr=lr, topology=ring)
    if method == "d2":
        return D2(lr=lr, topology=ring)
    return DPSGD(lr=lr, topology=ring.lazy())  # D²'s own W, as a control


def d2_run(split: str, method: str, lr: float, seed: int, steps: int) -> dict | None:
    """One run (data split, init, sampling all from `seed`): final row and curve, None if it diverged."""
    task = make_task("mnist1d", n_workers=N, model="cnn1d", batch_size=32, validation=VALIDATION, seed=seed,
                     **SPLITS[split])
    try:
        r = train(task, _d2_algorithm(method, lr), steps=steps, eval_every=max(steps // 30, 1), seed=seed)
    except Diverged:
        return None
    if not all(_finite(r.final.get(k)) for k in ("train_loss", "val_acc", "test_acc")):
        return None
    return {"final": {k: r.final.get(k) for k in KEYS}, "curve": _curve(r.metrics)}


def _d2_cell(job: tuple) -> tuple:
    """Tune one (split, method) cell's lr on validation accuracy, then its final seeds (cached on disk)."""
    split, method, steps = job
    torch.set_num_threads(1)
    cache = harness.Cache(f"{BENCH}_d2_{steps}_{_slug(split)}_{method}")

    def val_error(lr, seed):
        out = d2_run(split, method, lr, seed, steps)
        return None if out is None else 1.0 - out["final"]["val_acc"]

    rec = harness.tune(f"d2 {split} {method}", val_error, list(LR_GRID), cache=cache, say=say)
    rec["score"] = "1 - validation accuracy (lower is better)"
    runs = [cache.get(json.dumps(["final", rec["best"], s]), lambda s=s: d2_run(split, method, rec["best"], s, steps))
            for s in harness.FINAL_SEEDS]
    say(f"d2 {split} {method}: lr {rec['best']:g} ({rec['edge'] or 'inside'}); "
        f"test acc {[None if r is None else round(r['final']['test_acc'], 3) for r in runs]}")
    return split, method, rec, runs


def _pool_map(fn, jobs: list, processes: int) -> list:
    if processes <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs)), maxtasksperchild=1) as pool:
        return list(pool.imap_unordered(fn, jobs))


def claim_d2(steps: int, jobs: int) -> dict:
    cells = _pool_map(_d2_cell, [(s, m, steps) for s in SPLITS for m in D2_METHODS], jobs)
    found = {(s, m): (rec, runs) for s, m, rec, runs in cells}
    results, figures, verdicts = {}, {}, {}
    for split in SPLITS:
        row = {}
        for method in D2_METHODS:
            rec, runs = found[(split, method)]
            final = {k: harness.stats([None if r is None else r["final"][k] for r in runs])
                     for k in ("train_loss", "test_acc", "val_acc", "consensus_distance", "bytes_sent_per_worker")}
            row[method] = {"lr": rec["best"], "tuning": rec, "seeds": list(harness.FINAL_SEEDS), "final": final,
                           "curves": [None if r is None else r["curve"] for r in runs]}
            for k in ("train_loss", "test_acc"):
                figures[f"d2/{split}/{method}/{k}"] = final[k]
        results[split] = row
        verdicts[split] = {
            f"d2 vs {base}": {
                "train_loss": harness.verdict(row["d2"]["final"]["train_loss"], row[base]["final"]["train_loss"],
                                              higher_is_better=False),
                "test_acc": harness.verdict(row["d2"]["final"]["test_acc"], row[base]["final"]["test_acc"]),
            }
            for base in ("dpsgd", "dpsgd_lazy")
        }
    ring = make_topology("ring", N)
    out = {
        "steps": steps,
        "topology": ring.summary(),
        "d2_mixing": D2(lr=0.1, topology=ring).topology.mixing_kind,
        "protocol": {
            "validation": VALIDATION,
            "lr_grid": list(LR_GRID),
            "tuning_seeds": list(harness.TUNING_SEEDS),
            "tuning_score": "mean over tuning seeds of 1 - final validation accuracy; widened while on an edge",
            "final_seeds": list(harness.FINAL_SEEDS),
            "verdict": "better/worse only when the 95% Student-t intervals of the means do not overlap",
            "bytes": "float32 wire size, counted by the simulator for every method alike",
        },
        "results": results,
        "verdicts": verdicts,
        "figures": figures,
    }
    out["edges"] = harness.edges(out["results"])
    return out


def recheck_d2(committed: dict, jobs: int) -> dict:
    steps = committed["steps"]
    cells = [(s, m, committed["results"][s][m]["lr"], steps) for s in SPLITS for m in D2_METHODS]
    done = _pool_map(_d2_recheck_cell, cells, jobs)
    values = {}
    for split, method, r in done:
        for k in ("train_loss", "test_acc"):
            values[f"d2/{split}/{method}/{k}"] = None if r is None else r["final"][k]
    return values


def _d2_recheck_cell(job: tuple) -> tuple:
    split, method, lr, steps = job
    torch.set_num_threads(1)
    r = d2_run(split, method, lr, harness.RECHECK_SEED, steps)
    say(f"recheck d2 {split} {method} (lr {lr:g}): {None if r is None else r['final']}")
    return split, method, r


# -- claim 2: AD-PSGD (run configs through distsgd.sweep) ------------------------------------


def ad_config(method: str, setting: str, steps: int) -> dict:
    algorithm = {"name": method, "lr": LR_GRID[0]}
    if method != "allreduce_sgd":
        algorithm["topology"] = "ring"
    return {
        "n_workers": N,
        "steps": steps,
        "eval_every": max(steps // 30, 1),
        "task": {"dataset": "mnist1d", "model": "cnn1d", "batch_size": 32, "validation": VALIDATION},
        "algorithm": algorithm,
        "network": dict(SETTINGS[setting][1]),  # 5 ms per gradient at speed 1, 10 Gbit/s links (defaults)
    }


def _label(kind: str, setting: str, method: str, steps: int) -> str:
    return f"{kind}-{SETTINGS[setting][0]}-{method}-{steps}"


def _rows(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _to_target(fin: dict) -> tuple[dict, list]:
    """Seconds to target over the final seeds: `stats` of the seeds that reached it, with
    how many diverged and how many never reached it (neither is averaged in)."""
    accs = fin["test_acc"]["values"]
    secs = fin.get("sim_seconds_to_target", {}).get("values", [None] * len(accs))
    per_seed = [None if a is None else s for a, s in zip(accs, secs, strict=True)]
    s = harness.stats([x for x in per_seed if x is not None])
    s["values"] = per_seed
    s["diverged"] = sum(a is None for a in accs)
    s["not_reached"] = sum(a is not None and x is None for a, x in zip(accs, per_seed, strict=True))
    return s, per_seed


def _ratio_stats(base: list, other: list) -> dict:
    """Per-seed speed-up base / other (same seed: same data, init and network draws), over
    the seeds where both reached the target; the rest counted as not reached."""
    ratios = [b / o for b, o in zip(base, other, strict=True) if b is not None and o is not None and o > 0]
    s = harness.stats(ratios)
    s["values"] = [b / o if b is not None and o is not None and o > 0 else None for b, o in zip(base, other, strict=True)]
    s["not_reached"] = len(base) - len(ratios)
    return s


def claim_adpsgd(steps: int, jobs: int) -> dict:
    # Tuning. AllReduce-SGD and D-PSGD are synchronous: their iterates (hence validation
    # accuracy) do not depend on worker speeds, so one tuning serves both settings; AD-PSGD's
    # do (who averages with whom, and staleness), so it is tuned per setting.
    first = next(iter(SETTINGS))
    tuning = {}
    for method in ("allreduce_sgd", "dpsgd"):
        tuning[method] = harness.tune_config(_label("tune", first, method, steps), ad_config(method, first, steps),
                                             list(LR_GRID), bench=BENCH, jobs=jobs, say=say)
        tuning[method]["tuned_under"] = f"{first} (the same iterates under every speed setting)"
        say(f"adpsgd claim: {method} lr {tuning[method]['best']:g} ({tuning[method]['edge'] or 'inside'})")
    results, figures, verdicts = {}, {}, {}
    for setting in SETTINGS:
        tune = dict(tuning)
        tune["adpsgd"] = harness.tune_config(_label("tune", setting, "adpsgd", steps), ad_config("adpsgd", setting, steps),
                                             list(LR_GRID), bench=BENCH, jobs=jobs, say=say)
        say(f"adpsgd claim, {setting}: adpsgd lr {tune['adpsgd']['best']:g} ({tune['adpsgd']['edge'] or 'inside'})")

        def fin(method, target=None, setting=setting, tune=tune):
            return harness.final_config(_label("final", setting, method, steps), ad_config(method, setting, steps),
                                        {"algorithm.lr": tune[method]["best"]}, bench=BENCH, jobs=jobs, target=target,
                                        say=say)

        base = fin("allreduce_sgd")
        if base["test_acc"]["mean"] is None:
            raise SystemExit(f"adpsgd claim, {setting}: every tuned AllReduce-SGD seed diverged; no target")
        target = TARGET_FRACTION * base["test_acc"]["mean"]
        row = {"target_test_acc": target,
               "target_rule": f"{TARGET_FRACTION:g} × the tuned AllReduce-SGD's mean final test accuracy"}
        times = {}
        for method in AD_METHODS:
            f = fin(method, target)
            rows = [_rows(r) for r in f["runs"]]
            lasts = [r[-1] if r else {} for r in rows]
            spe = [(x["sim_seconds"] / x["epoch"]) if a is not None and _finite(x.get("sim_seconds")) and x.get("epoch")
                   else None for x, a in zip(lasts, f["test_acc"]["values"], strict=True)]
            to_target, times[method] = _to_target(f)
            row[method] = {
                "lr": tune[method]["best"],
                "tuning": tune[method],
                "seeds": f["seeds"],
                "final": {k: f[k] for k in ("test_acc", "val_acc", "train_loss", "sim_seconds", "bytes_per_worker")
                          if k in f},
                "staleness_mean": harness.stats([x.get("staleness_mean") for x in lasts]) if method == "adpsgd" else None,
                "staleness_max": harness.stats([x.get("staleness_max") for x in lasts]) if method == "adpsgd" else None,
                "sim_seconds_to_target": to_target,
                "steps_to_target": f.get("steps_to_target"),
                "seconds_per_epoch": harness.stats(spe),
                "runs": f["runs"],
                "curves": [_curve(r) for r in rows],
            }
            figures[f"adpsgd/{setting}/{method}/test_acc"] = row[method]["final"]["test_acc"]
            figures[f"adpsgd/{setting}/{method}/sim_seconds_to_target"] = to_target
        for method in ("dpsgd", "adpsgd"):
            a = row[method]
            a["time_to_target_speedup_vs_allreduce"] = _ratio_stats(times["allreduce_sgd"], times[method])
            a["epoch_speedup_vs_allreduce"] = _ratio_stats(row["allreduce_sgd"]["seconds_per_epoch"]["values"],
                                                           a["seconds_per_epoch"]["values"])
            figures[f"adpsgd/{setting}/{method}/time_to_target_speedup_vs_allreduce"] = \
                a["time_to_target_speedup_vs_allreduce"]
        verdicts[setting] = {}
        for method, other in (("adpsgd", "allreduce_sgd"), ("adpsgd", "dpsgd"), ("dpsgd", "allreduce_sgd")):
            a, b = row[method], row[other]
            sp = a.get("time_to_target_speedup_vs_allreduce") if other == "allreduce_sgd" else None
            verdicts[setting][f"{method} vs {other}"] = {
                "sim_seconds_to_target": harness.verdict(a["sim_seconds_to_target"], b["sim_seconds_to_target"],
                                                         higher_is_better=False),
                "test_acc_at_equal_steps": harness.verdict(a["final"]["test_acc"], b["final"]["test_acc"]),
                **({"speedup_above_1": sp["ci"] is not None and sp["ci"][0] > 1.0} if sp else {}),
            }
        results[setting] = row
        say(f"adpsgd claim, {setting}: target {target:.3f}; " + "; ".join(
            f"{m}: {harness.show(row[m]['sim_seconds_to_target'], 2)} s to target "
            f"({row[m]['sim_seconds_to_target']['not_reached']} not reached), acc {harness.show(row[m]['final']['test_acc'])}"
            for m in AD_METHODS))
    out = {
        "steps": steps,
        "protocol": {
            "validation": VALIDATION,
            "lr_grid": list(LR_GRID),
            "tuning_seeds": list(harness.TUNING_SEEDS),
            "tuning_score": "mean over tuning seeds of the final validation accuracy; widened while on an edge",
            "final_seeds": list(harness.FINAL_SEEDS),
            "target": f"{TARGET_FRACTION:g} × the tuned AllReduce-SGD's mean final test accuracy, per setting",
            "speedup": "per seed (same data, init and network draws): AllReduce-SGD's seconds / the method's; "
                       "a seed where either never reached the target is counted in not_reached, not averaged",
            "verdict": "better/worse only when the 95% Student-t intervals of the means do not overlap",
            "network": "5 ms per gradient at speed 1, 10 Gbit/s links, 50 µs latency; float32 wire bytes",
        },
        "results": results,
        "verdicts": verdicts,
        "figures": figures,
    }
    out["edges"] = harness.edges(out["results"])
    return out


def _one_run(label: str, config: dict, setting: dict, seed: int, jobs: int, target: float | None = None) -> dict:
    """One run of `config` with `setting` ({dotted key: value}) for `seed` (harness.final_config
    refuses a single seed: an empty grid with one seed is 'nothing to sweep', so the seed goes
    in as the grid): {"dir": its run directory, "metrics": its summary}, both empty when it did
    not finish."""
    from distsgd.overrides import Override, apply_overrides
    from distsgd.sweep import run_sweep

    cfg = apply_overrides({**config, "name": label}, [Override(k, v, f"{k}={v}", "setting") for k, v in setting.items()])
    res = run_sweep(cfg, {"seed": [seed]}, seeds=1, out=harness.RUNS / BENCH / "recheck", jobs=jobs, target=target,
                    say=say)
    (run,) = res.runs
    if run["status"] != "finished":
        return {"dir": None, "metrics": {}}
    return {"dir": str(res.root / run["label"]), "metrics": run["metrics"]}


def recheck_adpsgd(committed: dict, jobs: int) -> dict:
    steps = committed["steps"]
    values = {}
    for setting, row in committed["results"].items():
        target = row["target_test_acc"]
        got = {m: _one_run(_label("recheck", setting, m, steps), ad_config(m, setting, steps),
                          {"algorithm.lr": row[m]["lr"]}, harness.RECHECK_SEED, jobs, target)["metrics"]
               for m in AD_METHODS}
        for m, g in got.items():
            values[f"adpsgd/{setting}/{m}/test_acc"] = g.get("test_acc")
            values[f"adpsgd/{setting}/{m}/sim_seconds_to_target"] = g.get("sim_seconds_to_target")
        base = got["allreduce_sgd"].get("sim_seconds_to_target")
        for m in ("dpsgd", "adpsgd"):
            t = got[m].get("sim_seconds_to_target")
            values[f"adpsgd/{setting}/{m}/time_to_target_speedup_vs_allreduce"] = base / t if base and t else None
        say(f"recheck adpsgd {setting}: {got}")
    return values


# -- claim 3: CHOCO-SGD against D-PSGD (run configs through the harness) ------------------

CHOCO_LR_GRID = (0.025, 0.05, 0.1)  # with momentum 0.9
GAMMA_GRID = (0.0625, 0.125, 0.25)  # widened like the lr, up to γ's bound, 1
CHOCO_METHODS = {"dpsgd": ("D-PSGD (ATC, momentum 0.9)", None), "top1%": ("CHOCO Top-1%", "topk:0.01"),
                 "scaled_sign": ("CHOCO scaled sign", "scaled_sign")}
LONGER = 3  # CHOCO's final runs go on to this many times the steps


def choco_config(method: str, steps: int, *, lr: float = CHOCO_LR_GRID[0], gamma: float | None = None) -> dict:
    compressor = CHOCO_METHODS[method][1]
    algorithm = {"name": "dpsgd", "lr": lr, "momentum": 0.9, "topology": "ring", "variant": "atc"}
    if compressor:
        algorithm = {"name": "choco_sgd", "lr": lr, "momentum": 0.9, "topology": "ring", "compressor": compressor,
                     "gamma": GAMMA_GRID[0] if gamma is None else gamma}
    return {
        "n_workers": N,
        "steps": steps if method == "dpsgd" else LONGER * steps,
        "eval_every": max(steps // 30, 1),  # the same evaluation points for every method
        "task": {"dataset": "mnist1d", "model": "cnn1d", "batch_size": 32, "validation": VALIDATION},
        "algorithm": algorithm,
    }


def _at_step(rows: list[dict], step: int) -> dict:
    return next((r for r in rows if r.get("step") == step), {})


def _bytes_to(rows: list[dict], target: float, last_step: int) -> float | None:
    hit = next((r for r in rows if r.get("step", 0) <= last_step and _finite(r.get("test_acc"))
                and r["test_acc"] >= target), None)
    return hit["bytes_sent_per_worker"] if hit else None


def tune_lr_gamma(label: str, config: dict, jobs: int) -> dict:
    """CHOCO's lr and γ tuned jointly: `distsgd sweep` over γ × lr on 2 seeds selects the best
    lr for every γ (widening each γ's lr grid past its edges), then the γ whose best lr scores
    highest; while that γ sits on an edge of the γ grid the next γ is added (up to γ's bound,
    1). Records as harness.tune_config's: {"gamma": ..., "lr": ...}."""
    from distsgd.sweep import next_value, pick, run_sweep

    gammas, added, stopped = list(GAMMA_GRID), [], None
    cfg = {**config, "name": label, "seed": harness.TUNING_SEEDS[0]}
    while True:
        res = run_sweep(cfg, {"algorithm.gamma": gammas, "algorithm.lr": list(CHOCO_LR_GRID)},
                        seeds=len(harness.TUNING_SEEDS), out=harness.RUNS / BENCH / "tune", jobs=jobs,
                        select="algorithm.lr", widen=6, say=say)
        per_gamma = {s["fixed"]["algorithm.gamma"]: s for s in res.selection}
        scores = {g: (s["score"] or {}).get("mean") for g, s in sorted(per_gamma.items())}
        best, edge = pick(scores, higher_is_better=res.selection[0]["metric"] == "val_acc")
        if edge not in ("smallest", "largest") or scores[best] is None:
            break
        if len(added) >= 6:
            stopped = f"still at the {edge} value {best:g} after 6 added"
            break
        v, why = next_value(sorted(gammas), edge)
        if v is None or v > 1:
            stopped = why or f"the next value {v:g} is past γ's bound, 1"
            break
        gammas.append(v)
        added.append(v)
    sel = per_gamma[best]
    widened = next((w for w in res.widening if w["fixed"] == sel["fixed"]), {"added": [], "stopped": None})
    lr_scores = {}
    for grp in res.groups:
        values = dict(grp["values"])
        if values["algorithm.gamma"] == best:
            m = grp["metrics"].get(sel["metric"], {})
            lr_scores[f"{values['algorithm.lr']:g}"] = {"mean": m.get("mean"), "std": m.get("std"),
                                                        "diverged": grp["diverged"]}
    return {
        "gamma": {"key": "algorithm.gamma", "best": best, "edge": edge, "added": added, "stopped": stopped,
                  "metric": sel["metric"], "seeds": len(harness.TUNING_SEEDS),
                  "scores": {f"{g:g}": {"mean": scores[g], "best_lr": per_gamma[g]["best"]} for g in scores}},
        "lr": {"key": "algorithm.lr", "best": sel["best"], "edge": sel["edge"], "added": widened["added"],
               "stopped": widened["stopped"], "metric": sel["metric"], "seeds": len(harness.TUNING_SEEDS),
               "scores": lr_scores},
    }


def _reached(values: list) -> dict:
    """`stats` of the seeds that reached the target; the others counted as not reached."""
    s = harness.stats([v for v in values if v is not None])
    s.update(values=values, not_reached=sum(v is None for v in values))
    return s


def claim_choco(steps: int, jobs: int = 2) -> dict:
    """D-PSGD's lr tuned on validation; each CHOCO's lr and γ jointly (CHOCO gets the larger
    budget); finals on fresh seeds, CHOCO run LONGER× as long and read at `steps` too; bytes
    each needs to reach D-PSGD's mean final accuracy − 1 point."""
    tuning = {}
    short = {**choco_config("dpsgd", steps), "steps": steps}
    tuning["dpsgd"] = {"lr": harness.tune_config(f"choco-tune-dpsgd-{steps}", short, list(CHOCO_LR_GRID), bench=BENCH,
                                                 jobs=jobs, say=say)}
    for m in ("top1%", "scaled_sign"):
        cfg = {**choco_config(m, steps), "steps": steps}  # tuned at `steps`, like D-PSGD
        tuning[m] = tune_lr_gamma(f"choco-tune-{m.replace('%', 'pct')}-{steps}", cfg, jobs)
        g, lr = tuning[m]["gamma"], tuning[m]["lr"]
        say(f"choco claim: {m} gamma {g['best']:g} ({g['edge'] or 'inside'}), lr {lr['best']:g} "
            f"({lr['edge'] or 'inside'})")

    def fin(m, target=None):
        setting = {"algorithm.lr": tuning[m]["lr"]["best"]}
        if m != "dpsgd":
            setting["algorithm.gamma"] = tuning[m]["gamma"]["best"]
        return harness.final_config(f"choco-final-{m.replace('%', 'pct')}-{steps}",
                                    choco_config(m, steps, lr=setting["algorithm.lr"]), setting, bench=BENCH,
                                    jobs=jobs, target=target, say=say)

    base = fin("dpsgd")
    if base["test_acc"]["mean"] is None:
        raise SystemExit("choco claim: every tuned D-PSGD seed diverged; no target")
    target = base["test_acc"]["mean"] - 0.01
    base_rows = [_rows(r) for r in base["runs"]]
    base_bytes = [_bytes_to(rows, target, steps) for rows in base_rows]
    results = {"dpsgd": {"tuning": tuning["dpsgd"], "seeds": base["seeds"], "runs": base["runs"],
                         "test_acc": base["test_acc"],
                         "bytes_per_worker": harness.stats([r[-1].get("bytes_sent_per_worker") if r else None
                                                            for r in base_rows]),
                         "bytes_to_target": _reached(base_bytes), "curves": [_curve(r) for r in base_rows]}}
    figures = {"choco/dpsgd/test_acc": base["test_acc"]}
    verdicts = {}
    for m in ("top1%", "scaled_sign"):
        f = fin(m, target)
        rows = [_rows(r) for r in f["runs"]]
        at = [_at_step(r, steps) for r in rows]
        acc_at = harness.stats([a.get("test_acc") if _finite(a.get("test_acc")) else None for a in at])
        bytes_at = [a.get("bytes_sent_per_worker") for a in at]
        own = [_bytes_to(r, target, LONGER * steps) for r in rows]
        reduction = [b / o if b and o else None for b, o in zip(base_bytes, own, strict=True)]
        red = _reached(reduction)
        per_step = statistics.fmean(results["dpsgd"]["bytes_per_worker"]["values"]) / statistics.fmean(
            [b for b in bytes_at if b]) if any(bytes_at) else None
        results[m] = {"tuning": tuning[m], "seeds": f["seeds"], "runs": f["runs"], "test_acc_at_steps": acc_at,
                      f"test_acc_at_{LONGER}x": f["test_acc"], "bytes_at_steps": harness.stats(bytes_at),
                      "bytes_per_step_reduction": per_step, "bytes_to_target": _reached(own),
                      "bytes_to_target_reduction": red, "curves": [_curve(r) for r in rows]}
        figures[f"choco/{m}/test_acc_at_steps"] = acc_at
        figures[f"choco/{m}/test_acc_at_{LONGER}x"] = f["test_acc"]
        figures[f"choco/{m}/bytes_to_target_reduction"] = red
        verdicts[m] = {"test_acc at equal steps vs D-PSGD": harness.verdict(acc_at, base["test_acc"]),
                       f"test_acc at {LONGER}x steps vs D-PSGD at 1x": harness.verdict(f["test_acc"], base["test_acc"])}
        say(f"choco claim: {m}: acc {harness.show(acc_at)} at {steps} steps, {harness.show(f['test_acc'])} at "
            f"{LONGER * steps}; {per_step and round(per_step)}x fewer bytes a step; to {target:.3f}: "
            f"{harness.show(red, 1)}x fewer bytes ({red['not_reached']} seed(s) not reached)")
    out = {"steps": steps, "longer": LONGER, "target_test_acc": target,
           "protocol": {"validation": VALIDATION, "lr_grid": list(CHOCO_LR_GRID), "gamma_grid": list(GAMMA_GRID),
                        "tuning": "D-PSGD: lr; CHOCO: lr × γ jointly (the best lr per γ, then the best γ); mean "
                                  "validation accuracy over seeds 0, 1 at `steps`; both widened while on an edge "
                                  "(γ up to its bound, 1)",
                        "final_seeds": list(harness.FINAL_SEEDS),
                        "target": "D-PSGD's mean final test accuracy − 0.01",
                        "bytes": "float32 wire bytes the simulator counts, sent per worker"},
           "results": results, "verdicts": verdicts, "figures": figures}
    out["edges"] = harness.edges(out["results"])
    return out


def recheck_choco(committed: dict, jobs: int) -> dict:
    steps, res, target = committed["steps"], committed["results"], committed["target_test_acc"]
    got = {}
    for m in CHOCO_METHODS:
        setting = {"algorithm.lr": res[m]["tuning"]["lr"]["best"]}
        if m != "dpsgd":
            setting["algorithm.gamma"] = res[m]["tuning"]["gamma"]["best"]
        run = _one_run(f"choco-recheck-{m.replace('%', 'pct')}-{steps}", choco_config(m, steps), setting,
                       harness.RECHECK_SEED, jobs)
        got[m] = _rows(run["dir"]) if run["dir"] else []
    values = {"choco/dpsgd/test_acc": (got["dpsgd"][-1].get("test_acc") if got["dpsgd"] else None)}
    base = _bytes_to(got["dpsgd"], target, steps)
    for m in ("top1%", "scaled_sign"):
        rows = got[m]
        values[f"choco/{m}/test_acc_at_steps"] = _at_step(rows, steps).get("test_acc")
        values[f"choco/{m}/test_acc_at_{committed['longer']}x"] = rows[-1].get("test_acc") if rows else None
        own = _bytes_to(rows, target, committed["longer"] * steps)
        values[f"choco/{m}/bytes_to_target_reduction"] = base / own if base and own else None
    say(f"recheck choco: {values}")
    return values


# -- tables --------------------------------------------------------------------------------


def _cell(s: dict, digits: int = 3) -> str:
    text = harness.show(s, digits)
    if s.get("ci"):
        text += f" [{s['ci'][0]:.{digits}f}, {s['ci'][1]:.{digits}f}]"
    return text


def _lr(rec: dict) -> str:
    text = f"lr {rec['best']:g}"
    if rec["edge"] in ("smallest", "largest"):
        text += f", on the {rec['edge']} edge: {rec.get('stopped') or 'not widened'}"
    return text


def markdown_d2(r: dict) -> str:
    res = r["results"]
    head = "| workers' data | " + " | ".join(D2_METHODS.values()) + " |\n|---|---|---|---|\n"
    out = [f"# D² vs D-PSGD: MNIST-1D, 1D-CNN, {N} workers, ring, {r['steps']} steps, plain SGD", "",
           f"lr per cell tuned on validation accuracy (task.validation {VALIDATION}) over seeds "
           f"{', '.join(map(str, harness.TUNING_SEEDS))}, widened while on an edge; figures: mean ± std over "
           f"seeds {', '.join(map(str, harness.FINAL_SEEDS))} [95% interval of the mean]; "
           f"D² runs on the {r['d2_mixing']} matrix.", ""]
    for key, title in (("train_loss", "Training loss of the averaged model (lower is better)"),
                       ("test_acc", "Test accuracy of the averaged model")):
        out += [f"## {title}", "", head.rstrip("\n")]
        for split, row in res.items():
            out.append(f"| {split} | " + " | ".join(
                f"{_cell(row[m]['final'][key])} ({_lr(row[m]['tuning'])}; {row[m]['final'][key]['diverged']} diverged)"
                for m in D2_METHODS) + " |")
        out.append("")
    out += ["## Verdicts (D² against each baseline; a win only when the 95% intervals do not overlap)", "",
            "| workers' data | vs D-PSGD: loss / acc | vs D-PSGD on lazy W: loss / acc |", "|---|---|---|"]
    for split, v in r["verdicts"].items():
        out.append(f"| {split} | {v['d2 vs dpsgd']['train_loss']} / {v['d2 vs dpsgd']['test_acc']} | "
                   f"{v['d2 vs dpsgd_lazy']['train_loss']} / {v['d2 vs dpsgd_lazy']['test_acc']} |")
    out += ["", "Tuning records on an edge: " + ("; ".join(r["edges"]) if r["edges"] else "none."), ""]
    return "\n".join(out)


def markdown_adpsgd(r: dict) -> str:
    out = [f"# AD-PSGD vs AllReduce-SGD and D-PSGD: MNIST-1D, 1D-CNN, {N} workers, ring, {r['steps']} steps, "
           "plain SGD", "",
           f"lr per method tuned on validation accuracy (task.validation {VALIDATION}) over seeds "
           f"{', '.join(map(str, harness.TUNING_SEEDS))}, widened while on an edge; figures: mean ± std over seeds "
           f"{', '.join(map(str, harness.FINAL_SEEDS))} [95% interval of the mean]. Target: "
           f"{TARGET_FRACTION:g} × the tuned AllReduce-SGD's mean final test accuracy. Speed-up: per seed, "
           "AllReduce-SGD's simulated seconds to target / the method's; a seed that never reached the target is "
           "counted, not averaged.", ""]
    for setting, row in r["results"].items():
        out += [f"## {setting} (target test accuracy {row['target_test_acc']:.3f})", "",
                "| method | lr | final test acc (equal steps) | diverged | reached target | simulated s to target "
                "| speed-up vs AllReduce | s per epoch | staleness mean / max |",
                "|---|---|---|---|---|---|---|---|---|"]
        for m, name in AD_METHODS.items():
            a = row[m]
            t = a["sim_seconds_to_target"]
            n = len(t["values"])
            sp = a.get("time_to_target_speedup_vs_allreduce")
            stale = (f"{harness.show(a['staleness_mean'], 1)} / {harness.show(a['staleness_max'], 0)}"
                     if a.get("staleness_mean") else "–")
            out.append(f"| {name} | {_lr(a['tuning'])} | {_cell(a['final']['test_acc'])} | "
                       f"{a['final']['test_acc']['diverged']}/{n} | {t['n']}/{n} | {_cell(t, 2)} | "
                       f"{_cell(sp, 2) + (' (' + str(sp['not_reached']) + ' seed(s) not reached)' if sp['not_reached'] else '') if sp else '1'} | "
                       f"{_cell(a['seconds_per_epoch'], 3)} | {stale} |")
        out += ["", "| comparison | s to target | test acc at equal steps | speed-up interval above 1 |",
                "|---|---|---|---|"]
        for k, v in r["verdicts"][setting].items():
            out.append(f"| {k} | {v['sim_seconds_to_target']} | {v['test_acc_at_equal_steps']} | "
                       f"{v.get('speedup_above_1', '–')} |")
        out.append("")
    out += ["Tuning records on an edge: " + ("; ".join(r["edges"]) if r["edges"] else "none."), ""]
    return "\n".join(out)


def markdown_choco(r: dict) -> str:
    res, longer = r["results"], r["longer"]
    b = res["dpsgd"]
    out = [f"# CHOCO-SGD vs D-PSGD: MNIST-1D, 1D-CNN, {N} workers, ring, momentum 0.9, {r['steps']} steps", "",
           f"D-PSGD's lr tuned on validation accuracy (task.validation {VALIDATION}) over seeds "
           f"{', '.join(map(str, harness.TUNING_SEEDS))}; each CHOCO's lr and γ tuned jointly (best lr per γ); "
           f"figures: mean ± std over seeds {', '.join(map(str, harness.FINAL_SEEDS))} [95% interval]. CHOCO's "
           f"final runs go on to {longer}× the steps. Target: D-PSGD's mean final test accuracy − 0.01 = "
           f"{r['target_test_acc']:.3f}; bytes: float32 wire bytes sent per worker.", "",
           "| method | γ | lr | test acc at equal steps | test acc at " + f"{longer}× steps | MB per worker at equal "
           "steps | MB to target | fewer bytes to target than D-PSGD (per seed) |",
           "|---|---|---|---|---|---|---|---|",
           f"| {CHOCO_METHODS['dpsgd'][0]} | – | {_lr(b['tuning']['lr'])} | {_cell(b['test_acc'])} | – | "
           f"{harness.show(b['bytes_per_worker'], 1, 1e-6)} | {harness.show(b['bytes_to_target'], 2, 1e-6)} | 1 |"]
    for m in ("top1%", "scaled_sign"):
        a = res[m]
        red = a["bytes_to_target_reduction"]
        nr = f" ({red['not_reached']} seed(s) not reached)" if red["not_reached"] else ""
        out.append(f"| {CHOCO_METHODS[m][0]} | {a['tuning']['gamma']['best']:g} | {_lr(a['tuning']['lr'])} | "
                   f"{_cell(a['test_acc_at_steps'])} | {_cell(a[f'test_acc_at_{longer}x'])} | "
                   f"{harness.show(a['bytes_at_steps'], 2, 1e-6)} | {harness.show(a['bytes_to_target'], 2, 1e-6)} | "
                   f"{_cell(red, 1)}{nr} |")
    out += ["", "| CHOCO | verdict against D-PSGD |", "|---|---|"]
    for m, v in r["verdicts"].items():
        out += [f"| {CHOCO_METHODS[m][0]} | " + "; ".join(f"{k}: {x}" for k, x in v.items()) + " |"]
    out += ["", "Tuning records on an edge: " + ("; ".join(r["edges"]) if r["edges"] else "none."), ""]
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------


def _evaluated(curve: list[dict] | None) -> list[dict]:
    """The rows of a curve with a finite test accuracy (a diverged run's last rows have none)."""
    return [m for m in curve or [] if _finite(m.get("test_acc"))]


def plot(name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distsgd.plots import save_figure

    doc = json.loads((RESULTS / f"{name}_claims.json").read_text())
    r = doc["results"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if name == "d2":
        fig, axes = plt.subplots(2, len(r), figsize=(5 * len(r), 7))
        for col, (split, row) in enumerate(r.items()):
            for i, (algo, v) in enumerate(row.items()):
                for j, c in enumerate(_evaluated(x) for x in v["curves"] if _evaluated(x)):
                    steps = [m["step"] for m in c]
                    lab = f"{algo} (lr {v['lr']:g})" if j == 0 else None
                    axes[0, col].semilogy(steps, [m["train_loss"] for m in c], c=colors[i], lw=1, label=lab)
                    axes[1, col].plot(steps, [m["test_acc"] for m in c], c=colors[i], lw=1, label=lab)
            axes[0, col].set_title(f"{split} (one line per seed)")
            axes[0, col].set_ylabel("training loss (averaged model)")
            axes[1, col].set_ylabel("test accuracy")
            axes[1, col].set_xlabel("step")
            axes[0, col].legend()
    elif name == "adpsgd":
        fig, axes = plt.subplots(2, len(r), figsize=(6 * len(r), 7))
        for col, (setting, row) in enumerate(r.items()):
            for i, algo in enumerate(AD_METHODS):
                for j, c in enumerate(_evaluated(x) for x in row[algo]["curves"] if _evaluated(x)):
                    lab = f"{algo} (lr {row[algo]['lr']:g})" if j == 0 else None
                    axes[0, col].plot([m["sim_seconds"] for m in c], [m["test_acc"] for m in c], c=colors[i], lw=1,
                                      label=lab)
                    axes[1, col].plot([m["epoch"] for m in c], [m["test_acc"] for m in c], c=colors[i], lw=1,
                                      label=lab)
            axes[0, col].axhline(row["target_test_acc"], ls=":", c="gray")
            axes[0, col].set_title(f"{setting} (one line per seed)")
            axes[0, col].set_xlabel("simulated seconds")
            axes[1, col].set_xlabel("epoch")
            for ax in axes[:, col]:
                ax.set_ylabel("test accuracy")
                ax.legend()
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, (algo, v) in enumerate(r.items()):
            for j, c in enumerate(_evaluated(x) for x in v["curves"] if _evaluated(x)):
                label = CHOCO_METHODS[algo][0] if j == 0 else None
                axes[0].plot([m["step"] for m in c], [m["test_acc"] for m in c], c=colors[i], lw=1, label=label)
                axes[1].plot([m["bytes_sent_per_worker"] / 1e6 for m in c], [m["test_acc"] for m in c], c=colors[i],
                             lw=1, label=label)
        for ax in axes:
            ax.axhline(doc["target_test_acc"], ls=":", c="gray")
        axes[0].set_xlabel("step")
        axes[1].set_xlabel("MB sent per worker")
        axes[1].set_xscale("log")
        for ax in axes:
            ax.set_ylabel("test accuracy")
            ax.legend()
    fig.tight_layout()
    save_figure(fig, RESULTS / f"{name}_claims.png", dpi=90)
    print(RESULTS / f"{name}_claims.png")


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("claims", nargs="*", default=["d2", "adpsgd", "choco"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--recheck", metavar="PATH",
                    help="no tuning: the committed settings, one fresh seed of every figure's runs, written to PATH")
    args = ap.parse_args()
    if args.recheck:
        values = {}
        for c in args.claims:
            committed = harness.load(f"{c}_claims")
            values.update({"d2": recheck_d2, "adpsgd": recheck_adpsgd, "choco": recheck_choco}[c](committed, args.jobs))
        harness.write_recheck(args.recheck, values)
        print(args.recheck)
        return
    fns = {"d2": claim_d2, "adpsgd": claim_adpsgd, "choco": claim_choco}
    tables = {"d2": markdown_d2, "adpsgd": markdown_adpsgd, "choco": markdown_choco}
    for c in args.claims:
        if not args.plot_only:
            print(write_result(f"{c}_claims", fns[c](args.steps, args.jobs)))
        if c in tables:
            r = json.loads((RESULTS / f"{c}_claims.json").read_text())
            print(write_text(RESULTS / f"{c}_claims.md", tables[c](r)))
        plot(c)


if __name__ == "__main__":
    main()
