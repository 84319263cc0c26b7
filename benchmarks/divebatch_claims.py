"""DiveBatch's claim: 1.06–5× faster to a target accuracy than SGD, with a slight accuracy cost (issue 15, part 4).

Chen, Wang, Sundaram (arXiv 2509.16173) grow the batch with the gradient diversity and
report convergence 1.06–5.0× faster than SGD and AdaBatch, with a slight loss in accuracy.
This compares, on the mnist1d MLP (100-100), with 1 worker and with 4 workers:

- DiveBatch: B₀ → min(max(δΔN, B), B_max) every `resize_freq` epochs, lr scaled with B, at
  δ = 0.1 (the paper's CIFAR value) and δ = 0.01 (its ImageNet value);
- AdaBatch: B doubles at the same cadence up to B_max, lr scaled with B;
- SGD small batch (B₀) and SGD large batch (B_max): AllReduce-SGD at a fixed batch
  (DiveBatch's rule "fixed", which is AllReduce-SGD bit for bit, tested).

All: momentum 0.9, weight decay 5e-4, cosine annealing of lr over the epoch budget (the
paper's optimizer and schedule), B_max/B₀ = 16 (as 2048/128),
resize every 10% of the budget (as 20 of 200 epochs). The training set is 3000 of mnist1d's
4000 training samples; the other 1000 are the validation set each method's lr is chosen on
(final validation accuracy, mean over 2 seeds, on a ×2 grid widened while the winner sits
on its edge). The final runs (3 seeds: model init, data split and batch order) report the
test accuracy; a run whose loss turns non-finite is labelled diverged.

Time: epochs (samples drawn / N) and simulated seconds, where a step of a worker drawing b
samples costs a + c·b (a plain gradient) or a' + c'·b (per-sample gradients, DiveBatch's
estimation epochs), fitted by least squares to timed real steps of this model on this
machine at the start of the run, plus the all-reduce of the ring α–β model (50 µs,
10 Gbit/s) for 4 workers. The target accuracy is 95% of the small-batch SGD's mean final
test accuracy in the same run; time to target is the first evaluation (every half epoch)
at or above it.

Writes benchmarks/results/divebatch_claims.json and .md.
Run: nice -n 19 python benchmarks/divebatch_claims.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_text  # noqa: E402

from distsgd.algorithms.divebatch import DiveBatch  # noqa: E402
from distsgd.comm.network import NetworkModel  # noqa: E402
from distsgd.comm.simulated import SimulatedCommunicator  # noqa: E402
from distsgd.tasks import make_task  # noqa: E402
from distsgd.tasks import partition as part  # noqa: E402
from distsgd.tasks.task import Samples  # noqa: E402
from distsgd.workers import Workers  # noqa: E402

METHODS = ("divebatch", "divebatch_delta0.01", "adabatch", "sgd_small", "sgd_large")
GRIDS = {  # lr at B₀ for the growing methods (scaled with B), at the fixed batch otherwise
    "divebatch": (0.0125, 0.025, 0.05, 0.1),
    "divebatch_delta0.01": (0.0125, 0.025, 0.05, 0.1),
    "adabatch": (0.0125, 0.025, 0.05, 0.1),
    "sgd_small": (0.025, 0.05, 0.1, 0.2),
    "sgd_large": (0.1, 0.2, 0.4, 0.8),
}
FULL = {"train": 3000, "epochs": 20, "b0": 32, "b_max": 512, "delta": 0.1, "resize_freq": 2,
        "tune_seeds": (0, 1), "final_seeds": (0, 1, 2), "workers": (1, 4), "widen": True}
QUICK = {"train": 600, "epochs": 2, "b0": 16, "b_max": 64, "delta": 0.1, "resize_freq": 1,
         "tune_seeds": (0,), "final_seeds": (0, 1), "workers": (1, 2), "widen": False}
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
TARGET_FRACTION = 0.95
NETWORK = NetworkModel(compute_seconds=0.0)  # α = 50 µs, 10 Gbit/s; compute from the fitted model


@functools.cache
def _base_task(seed: int):
    return make_task("mnist1d", n_workers=1, batch_size=1, seed=seed)  # the model's init follows the seed


def build_task(n: int, seed: int, split: str, cfg: dict):
    """mnist1d MLP: `cfg["train"]` training samples split iid over n workers; the test split is
    the 1000 held-out training samples ("validation") or mnist1d's test set ("test")."""
    base = _base_task(seed)
    x, y = base.train.x, base.train.y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # the same holdout every seed
    train, val = order[1000 : 1000 + cfg["train"]], order[:1000]
    test = Samples((x[val], y[val])) if split == "validation" else base.test
    shards = part.iid(len(train), n, torch.Generator().manual_seed(seed))
    return dataclasses.replace(base, train=Samples((x[train], y[train])), test=test, shards=shards,
                               batch_size=cfg["b0"] // n, dataset=None)


def algorithm(method: str, lr: float, cfg: dict) -> DiveBatch:
    common = {"lr": lr, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "train_samples": cfg["train"]}
    if method.startswith(("divebatch", "adabatch")):
        rule, _, delta = method.partition("_delta")
        return DiveBatch(batch_size=cfg["b0"], max_batch_size=cfg["b_max"], rule=rule,
                         delta=float(delta) if delta else cfg["delta"], resize_freq=cfg["resize_freq"],
                         adaptive_lr=True, **common)
    batch = cfg["b0"] if method == "sgd_small" else cfg["b_max"]
    return DiveBatch(batch_size=batch, max_batch_size=batch, rule="fixed", **common)


# -- the compute model ---------------------------------------------------------------------------


def fit_line(points: list[tuple[int, float]]) -> dict:
    """Least squares t = a + c·b over (b, t) points, with R²."""
    bs = torch.tensor([p[0] for p in points], dtype=torch.float64)
    ts = torch.tensor([p[1] for p in points], dtype=torch.float64)
    design = torch.stack([torch.ones_like(bs), bs], dim=1)
    sol = torch.linalg.lstsq(design, ts.unsqueeze(1)).solution.flatten()
    resid = ts - design @ sol
    r2 = 1 - float(resid.pow(2).sum()) / max(float((ts - ts.mean()).pow(2).sum()), 1e-30)
    return {"a": float(sol[0]), "c": float(sol[1]), "r2": r2}


def measure_compute(sizes, calls: int, repeats: int) -> dict:
    """Seconds per gradient step of one worker of this model at each per-worker batch b, for
    plain and per-sample gradients, and the fitted lines. Each point is the minimum over
    `repeats` rounds of the mean over `calls` steps (the least disturbed by other load); a
    round times every b in turn, so a burst of load spreads over the sizes instead of
    tilting the line."""
    task = build_task(1, 0, "validation", {**FULL, "b0": 1})
    w = Workers(task, seed=0)
    x = w.x0()
    out = {}
    for kind, per_sample in (("plain", False), ("per_sample", True)):
        best = dict.fromkeys(sizes, math.inf)
        for b in sizes:
            for _ in range(2):
                w.gradients(x, batch_size=b, per_sample=per_sample)
        for _ in range(repeats):
            for b in sizes:
                t = time.perf_counter()
                for _ in range(calls):
                    w.gradients(x, batch_size=b, per_sample=per_sample)
                best[b] = min(best[b], (time.perf_counter() - t) / calls)
        points = [(b, best[b]) for b in sizes]
        out[kind] = {"points": points, **fit_line(points)}
    return out


def step_seconds(model: dict, b: int, per_sample: bool) -> float:
    line = model["per_sample" if per_sample else "plain"]
    return line["a"] + line["c"] * b


# -- one run ---------------------------------------------------------------------------------------


def run(method: str, lr: float, seed: int, n: int, split: str, cfg: dict, model: dict) -> dict:
    """Train for cfg["epochs"] epochs (samples drawn / N), cosine-annealed lr, evaluating every
    half epoch: the curve (epoch, simulated seconds, accuracy), the batch sizes, diverged or not."""
    task = build_task(n, seed, split, cfg)
    base = algorithm(method, lr, cfg)
    workers, comm = Workers(task, seed=seed), SimulatedCommunicator(n, NETWORK)
    state = base.init(workers.x0(), comm)
    last = {}

    def oracle(x, rows=None, **kw):
        g, loss = workers.gradients(x, rows, **kw)
        last.update(kw, loss=loss)
        return g

    n_train, total = cfg["train"], cfg["epochs"] * cfg["train"]
    every = n_train // 2
    next_eval, compute, curve, diverged = every, 0.0, [], False
    algo, samples = base, 0
    while samples < total:
        state = algo.step(state, oracle, comm)
        compute += step_seconds(model, last["batch_size"], last.get("per_sample", False))
        samples = int(workers.samples_drawn.sum())
        if not bool(torch.isfinite(last["loss"]).all()) or not math.isfinite(float(state["x"].sum())):
            diverged = True
            break
        if samples >= next_eval or samples >= total:
            next_eval += every
            seconds = compute + comm.traffic.summary()["sim_seconds"]
            acc = task.evaluate(workers.outputs(state["x"][0]), "test")["test_acc"]
            curve.append((samples / n_train, seconds, acc, state["batch_size"]))
            if samples < total:  # cosine annealing, piecewise constant over each half epoch
                algo = dataclasses.replace(base, lr=base.lr * 0.5 * (1 + math.cos(math.pi * samples / total)))
    return {
        "method": method, "lr": lr, "seed": seed, "workers": n, "diverged": diverged,
        "final_acc": curve[-1][2] if curve and not diverged else None,
        "curve": curve, "final_batch": state["batch_size"],
        "diversity": state["diversity"] if math.isfinite(state["diversity"]) else None,
    }


def to_target(r: dict, target: float):
    """(epochs, seconds) of the first evaluation at or above the target, or None."""
    if r["diverged"]:
        return None
    for epoch, seconds, acc, _ in r["curve"]:
        if acc >= target:
            return epoch, seconds
    return None


# -- tuning ----------------------------------------------------------------------------------------


def tune(method: str, n: int, cfg: dict, model: dict) -> dict:
    """lr by mean final validation accuracy over the tuning seeds (a diverged seed counts as
    0), on the grid widened ×2 or ÷2 while the winner sits on its edge."""
    grid: dict[str, dict] = {}
    lrs = list(GRIDS[method] if cfg["widen"] else GRIDS[method][1:3])
    while True:
        for lr in lrs:
            key = f"{lr:g}"
            if key in grid:
                continue
            runs = [run(method, lr, s, n, "validation", cfg, model) for s in cfg["tune_seeds"]]
            accs = [0.0 if r["diverged"] else r["final_acc"] for r in runs]
            grid[key] = {"val_acc": statistics.fmean(accs), "diverged": sum(r["diverged"] for r in runs)}
            print(f"  tune n={n} {method} lr={key}: val acc {grid[key]['val_acc']:.3f}"
                  + (f" ({grid[key]['diverged']} diverged)" if grid[key]["diverged"] else ""), flush=True)
        keys = sorted(grid, key=float)
        best = max(keys, key=lambda k: (grid[k]["val_acc"], -float(k)))
        if not cfg["widen"] or best not in (keys[0], keys[-1]):
            return {"grid": grid, "best_lr": float(best)}
        lrs = [float(keys[0]) / 2] if best == keys[0] else [float(keys[-1]) * 2]


# -- report ----------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict], target: float) -> dict:
    hits = [to_target(r, target) for r in runs]
    reached = [h for h in hits if h is not None]
    return {
        "final_acc": _stats([r["final_acc"] for r in runs if not r["diverged"]]),
        "diverged": sum(r["diverged"] for r in runs),
        "reached": len(reached),
        "epochs_to_target": _stats([h[0] for h in reached]),
        "seconds_to_target": _stats([h[1] for h in reached]),
        "final_batch": [r["final_batch"] for r in runs],
        "diversity": [r["diversity"] for r in runs],
    }


def _pm(s: dict | None, fmt: str) -> str:
    return "not reached" if s is None else f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"


def _ratio(base: dict, other: dict, what: str, seeds: int) -> float | None:
    """Mean time to target of `base` / that of `other`, only when every seed of both reached it."""
    if base["reached"] < seeds or other["reached"] < seeds:
        return None
    return base[f"{what}_to_target"]["mean"] / other[f"{what}_to_target"]["mean"]


def table(res: dict) -> str:
    seeds = len(res["config"]["final_seeds"])
    out = []
    cm = res["compute_model"]
    out.append(
        f"Compute model (fitted here): plain step {cm['plain']['a'] * 1e3:.3f} ms + {cm['plain']['c'] * 1e6:.2f} µs·b "
        f"(R² {cm['plain']['r2']:.3f}); per-sample step {cm['per_sample']['a'] * 1e3:.3f} ms + "
        f"{cm['per_sample']['c'] * 1e6:.2f} µs·b (R² {cm['per_sample']['r2']:.3f}); b = samples per worker per step"
        + (f"; load average {res['load_average_at_start'][0]:.1f} on {res['cpu_count']} cores when timed"
           if res.get("load_average_at_start") else "") + ".\n"
    )
    for n, block in res["results"].items():
        out.append(f"\n**{n} worker{'s' if n != '1' else ''}**: target test accuracy {block['target']:.3f} "
                   f"({TARGET_FRACTION:.0%} of SGD small batch's mean final accuracy); mean ± std over {seeds} seeds; "
                   "speed-up = baseline's mean time to target / the method's (– unless every seed of both reached the target); "
                   "time to target averages the seeds that reached it.\n")
        out.append("| method | lr | final test acc | diverged | reached | epochs to target | sim s to target | "
                   "speed-up vs SGD small (epochs / s) | speed-up vs SGD large (epochs / s) | final batch |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for m in METHODS:
            s = block["methods"][m]
            r = s["ratios"]

            def fmt(x):
                return "–" if x is None else f"{x:.2f}×"

            out.append(
                f"| {m} | {s['lr']:g} | {_pm(s['final_acc'], '.3f')} | {s['diverged']}/{seeds} | {s['reached']}/{seeds} | "
                f"{_pm(s['epochs_to_target'], '.1f')} | {_pm(s['seconds_to_target'], '.2f')} | "
                f"{fmt(r['epochs_vs_sgd_small'])} / {fmt(r['seconds_vs_sgd_small'])} | "
                f"{fmt(r['epochs_vs_sgd_large'])} / {fmt(r['seconds_vs_sgd_large'])} | "
                f"{', '.join(str(b) for b in s['final_batch'])} |"
            )
        out.append("")
        out.append(claim_check(block, seeds))
    return "\n".join(out) + "\n"


def claim_check(block: dict, seeds: int) -> str:
    """The paper's claim (1.06–5.0× faster than SGD, slight accuracy loss) against this block."""
    small = block["methods"]["sgd_small"]["final_acc"]
    lines = ["Against the claim (1.06–5.0× faster than SGD, slightly less accurate):"]
    for m in METHODS[:-2]:
        s = block["methods"][m]
        acc = "diverged" if s["final_acc"] is None else f"final accuracy {s['final_acc']['mean'] - small['mean']:+.3f}"
        r = s["ratios"]
        if r["seconds_vs_sgd_small"] is None:
            speed = f"the target reached on {s['reached']}/{seeds} seeds, so no speed-up to report"
        else:
            speed = (f"{r['seconds_vs_sgd_small']:.2f}× SGD small's speed in simulated seconds "
                     f"({r['epochs_vs_sgd_small']:.2f}× in epochs)")
        lines.append(f"- {m}: {acc} vs SGD small; {speed}.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny budget, no widening)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write divebatch_claims.json and .md (default: benchmarks/results; with --quick: "
                    "a temporary folder)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "divebatch_claims_quick" if args.quick else RESULTS
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    sizes = (4, 16, 64) if args.quick else (4, 8, 16, 32, 64, 128, 256, 512)
    model = measure_compute(sizes, calls=3 if args.quick else 10, repeats=2 if args.quick else 15)
    print(f"compute model: {model['plain']['a'] * 1e3:.3f} ms + {model['plain']['c'] * 1e6:.2f} µs·b; per-sample "
          f"{model['per_sample']['a'] * 1e3:.3f} ms + {model['per_sample']['c'] * 1e6:.2f} µs·b", flush=True)
    results = {}
    for n in cfg["workers"]:
        tuned = {m: tune(m, n, cfg, model) for m in METHODS}
        finals = {m: [run(m, tuned[m]["best_lr"], s, n, "test", cfg, model) for s in cfg["final_seeds"]] for m in METHODS}
        small = [r["final_acc"] for r in finals["sgd_small"] if not r["diverged"]]
        target = TARGET_FRACTION * statistics.fmean(small) if small else math.nan
        block = {"target": target, "methods": {}}
        for m in METHODS:
            s = summarize(finals[m], target)
            block["methods"][m] = {"lr": tuned[m]["best_lr"], "tuning": tuned[m]["grid"], **s, "runs": finals[m]}
        for m in METHODS:
            s = block["methods"][m]
            s["ratios"] = {
                f"{what}_vs_{base}": _ratio(block["methods"][base], s, what, len(cfg["final_seeds"]))
                for what in ("epochs", "seconds") for base in ("sgd_small", "sgd_large")
            }
        results[str(n)] = block
        print(table({"config": cfg, "compute_model": model, "results": {str(n): block}}), flush=True)
    res = {
        "benchmark": "divebatch_claims",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,  # other jobs on the machine inflate the timed steps
        "quick": args.quick,
        "config": {**cfg, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "target_fraction": TARGET_FRACTION,
                   "grids": GRIDS, "network": dataclasses.asdict(NETWORK), "dataset": "mnist1d", "model": "mlp 100-100"},
        "compute_model": model,
        "results": results,
        "wall_seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "divebatch_claims.json", json.dumps({"machine": machine(), **res}, indent=2))
    write_text(args.out / "divebatch_claims.md", f"# DiveBatch vs AdaBatch vs SGD (small and large batch)\n\n{table(res)}")
    print(f"done in {res['wall_seconds']:.0f} s", flush=True)
    return res


if __name__ == "__main__":
    main()
