"""D-SGD on a ring against AllReduce-SGD (C-SGD) as the total batch grows: flatness and accuracy.

Zhu et al., "Decentralized SGD and Average-direction SAM are Asymptotically Equivalent"
(ICML 2023) prove that D-SGD's averaged model follows average-direction SAM, i.e. it also
minimizes E_{ε∼N(0,Ξ)} L(x̄+ε) − L(x̄) ≈ ½ tr(∇²L Ξ) with Ξ the workers' consensus
covariance, and claim (abstract, §4) that D-SGD therefore ends flatter than C-SGD and that
this regularization does not fade as the total batch grows. This measures it on a small
problem: MNIST-1D, the MLP 40-100-100-10 (15,210 parameters), n = 16 workers with IID
shards, plain SGD (no momentum, no weight decay, constant lr), D-SGD = `DPSGD` (Lian et al.
Alg. 1) on the ring with weights 1/3, C-SGD = `AllReduceSGD`, the same number of steps for
every total batch (as the paper: 6000 iterations for total batch 1024 and 8192).

Protocol
- Data: the canonical 4000/1000 MNIST-1D split; 800 of the 4000 training samples are held
  out (a fixed permutation) as validation data, the other 3200 are the 16 shards.
- lr: tuned per method and per total batch (not the linear-scaling rule) by mean validation
  accuracy of the averaged model after all steps over 2 seeds, on a ×2 grid that is widened
  while the winner sits on its edge. A diverged run counts as accuracy 0.
- Final: 3 other seeds (model initialization, shards, batch order) at the tuned lr; the
  averaged model's test accuracy and, on 2048 fixed training samples, its Hessian top
  eigenvalue (power iteration, PyHessian's tol 1e-3 / 100 iterations), Hessian trace
  (Hutchinson, PyHessian's rule), SAM sharpness at ρ = 0.05 (first-order ascent step) and,
  for D-SGD, the average-direction sharpness under its own Ξ (64 antithetic Monte Carlo
  pairs, and the second-order ½ tr(HΞ)), all from `distsgd.diagnostics`; mean ± std.

Writes benchmarks/results/dsgd_sam.json and .md (with --quick: prints only).
Run: nice -n 19 python benchmarks/dsgd_sam.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

N = 16
VALIDATION = 800
RHO = 0.05
DIAG_SAMPLES = 2048
TUNE_SEEDS = (100, 101)
FINAL_SEEDS = (0, 1, 2)
METHODS = ("dsgd_ring", "csgd")
LABELS = {"dsgd_ring": "D-SGD (ring)", "csgd": "C-SGD (AllReduce)"}
# the final rows: (row, method, whose tuned lr); "csgd_same_lr" is the paper's protocol, C-SGD
# at D-SGD's lr (Zhu et al. train both with the same lr), the control for C-SGD's larger lr
ROWS = (("dsgd_ring", "dsgd_ring", "dsgd_ring"), ("csgd", "csgd", "csgd"), ("csgd_same_lr", "csgd", "dsgd_ring"))
ROW_LABELS = {"dsgd_ring": "D-SGD (ring)", "csgd": "C-SGD (AllReduce)", "csgd_same_lr": "C-SGD at D-SGD's lr"}


def _init():
    import torch

    torch.set_num_threads(1)


@functools.cache
def _data():
    from distsgd.tasks import datasets

    d = datasets.mnist1d()
    import torch

    order = torch.randperm(len(d.y), generator=torch.Generator().manual_seed(0))
    val, tr = order[:VALIDATION], order[VALIDATION:]
    return d, (d.x[tr], d.y[tr]), (d.x[val], d.y[val]), (d.x_test, d.y_test)


def _task(batch: int, seed: int, evaluate_on: str):
    """The training shards (3200 samples) with validation or test data as the task's test split;
    the model's initialization, the shards and the batch order follow `seed`."""
    import torch

    from distsgd.tasks import make_task
    from distsgd.tasks.partition import iid
    from distsgd.tasks.task import Samples

    _, train, val, test = _data()
    base = make_task("mnist1d", n_workers=N, model="mlp", hidden=(100, 100), batch_size=batch, seed=seed)
    shards = iid(len(train[1]), N, torch.Generator().manual_seed(seed))
    desc = {**base.description, "train_samples": len(train[1]), "evaluated_on": evaluate_on}
    return dataclasses.replace(
        base,
        train=Samples(train),
        test=Samples(val if evaluate_on == "validation" else test),
        shards=shards,
        description=desc,
    )


def _algorithm(method: str, lr: float):
    from distsgd.algorithms import DPSGD, AllReduceSGD

    return DPSGD(lr=lr, topology="ring") if method == "dsgd_ring" else AllReduceSGD(lr=lr)


def run(method: str, batch: int, lr: float, seed: int, steps: int, final: bool, diag_samples: int) -> dict:
    """One training run; with `final`, on the test split and with the diagnostics."""
    from distsgd.diagnostics import (
        average_direction_sharpness,
        empirical_loss,
        hessian_top_eigenvalue,
        hessian_trace,
        sharpness,
    )
    from distsgd.errors import Diverged
    from distsgd.runner import train

    task = _task(batch, seed, "test" if final else "validation")
    t0 = time.perf_counter()
    out = {"method": method, "batch": batch, "total_batch": batch * N, "lr": lr, "seed": seed}
    try:
        r = train(task, _algorithm(method, lr), steps=steps, eval_every=steps, seed=seed)
    except Diverged as e:
        return {**out, "diverged": True, "why": str(e), "acc": 0.0, "loss": math.inf}
    row = r.final
    out.update(
        diverged=False,
        acc=row["test_acc"],
        loss=row["test_loss"],
        train_loss=row["train_loss"],
        train_acc=row["train_acc"],
        consensus_distance=row["consensus_distance"],
        train_seconds=time.perf_counter() - t0,
    )
    if not final:
        return out
    t1 = time.perf_counter()
    w, x = r.workers, r.state["x"]
    f = empirical_loss(w.model, task, flat=w.flat, buffers=w.mean_buffers(r.comm), max_samples=diag_samples)
    top = hessian_top_eigenvalue(f, x)
    trace = hessian_trace(f, x)
    out.update(
        hessian_top=float(top.eigenvalues[0]),
        hessian_top_iterations=int(top.iterations[0]),
        hessian_trace=float(trace.mean),
        hessian_trace_se=float(trace.stderr),
        hessian_trace_probes=int(trace.samples),
        sharpness=float(sharpness(f, x, RHO)),
    )
    if method == "dsgd_ring":
        mc = average_direction_sharpness(f, x, samples=64)
        out.update(
            avg_sharpness=float(mc.mean),
            avg_sharpness_se=float(mc.stderr),
            avg_sharpness_second_order=float(average_direction_sharpness(f, x, method="second_order").mean),
        )
    out["diagnostics_seconds"] = time.perf_counter() - t1
    return out


def _score(runs: list[dict]) -> tuple[float, float]:
    """Mean validation accuracy (higher is better), then minus mean loss as the tie-break."""
    return statistics.mean(r["acc"] for r in runs), -statistics.mean(r["loss"] for r in runs)


def tune(pool, batches, grid0, steps, seeds, widen: int) -> tuple[dict, list[dict]]:
    """The best lr per (method, batch) on a ×2 grid, widened while the winner is on an edge."""
    done: dict[tuple, list[dict]] = {}
    grids = {(m, b): sorted(grid0) for m in METHODS for b in batches}
    best = {}
    for _ in range(widen + 1):
        jobs = [
            (m, b, lr, s)
            for (m, b), grid in grids.items()
            if (m, b) not in best
            for lr in grid
            for s in seeds
            if (m, b, lr, s) not in done
        ]
        results = pool.map(run, *zip(*[(m, b, lr, s, steps, False, 0) for m, b, lr, s in jobs], strict=True)) if jobs else []
        for (m, b, lr, s), r in zip(jobs, results, strict=True):
            done[(m, b, lr, s)] = r
            tag = "diverged" if r["diverged"] else f"val acc {r['acc']:.3f}"
            print(f"  tune {m} B={b * N} lr={lr:g} seed={s}: {tag}", flush=True)
        for (m, b), grid in grids.items():
            if (m, b) in best:
                continue
            scores = {lr: _score([done[(m, b, lr, s)] for s in seeds]) for lr in grid}
            win = max(grid, key=lambda lr: scores[lr])
            if win == grid[0] and widen:
                grid.insert(0, grid[0] / 2)
            elif win == grid[-1] and widen:
                grid.append(grid[-1] * 2)
            else:
                best[(m, b)] = win
    for (m, b), grid in grids.items():  # out of widenings: take the winner, flagged
        if (m, b) not in best:
            scores = {lr: _score([done[(m, b, lr, s)] for s in seeds]) for lr in grid if (m, b, lr, seeds[0]) in done}
            best[(m, b)] = max(scores, key=lambda lr: scores[lr])
    table = []
    for (m, b), grid in grids.items():
        for lr in grid:
            runs = [done[(m, b, lr, s)] for s in seeds if (m, b, lr, s) in done]
            if runs:
                table.append(
                    {
                        "method": m,
                        "total_batch": b * N,
                        "lr": lr,
                        "val_acc": [r["acc"] for r in runs],
                        "diverged": sum(r["diverged"] for r in runs),
                        "chosen": best[(m, b)] == lr,
                        "on_edge": lr in (grid[0], grid[-1]) and best[(m, b)] == lr,
                    }
                )
    return best, table


def _ms(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


KEYS = ("acc", "hessian_top", "hessian_trace", "sharpness", "avg_sharpness", "avg_sharpness_second_order",
        "consensus_distance", "train_loss")


def summarize(final: list[dict], best: dict, batches) -> list[dict]:
    rows = []
    for b in batches:
        for name, m, lr_of in ROWS:
            runs = [r for r in final if r["row"] == name and r["batch"] == b]
            ok = [r for r in runs if not r["diverged"]]
            row = {"row": name, "method": m, "total_batch": b * N, "per_worker_batch": b, "lr": best[(lr_of, b)],
                   "seeds": len(runs), "diverged": len(runs) - len(ok)}
            for k in KEYS:
                vals = [r[k] for r in ok if k in r]
                row[k] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                          "values": vals} if vals else None
            rows.append(row)
    return rows


def markdown(rows: list[dict], setting: dict) -> str:
    def cell(row, k, fmt):
        v = row[k]
        return "–" if v is None else _ms(v["values"], fmt)

    out = [
        f"D-SGD (ring) vs C-SGD (AllReduce), MNIST-1D MLP, n = {N}, {setting['steps']} steps, plain SGD; "
        f"mean ± std over {len(setting['final_seeds'])} seeds. Flatness of the averaged model on "
        f"{setting['diagnostic_samples']} training samples; SAM ρ = {RHO}.",
        "",
        "| total batch | method | lr | test acc | λ_max(H) | tr(H) | SAM sharpness | avg-dir sharpness (MC) | ½tr(HΞ) | consensus dist. | train loss | diverged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['total_batch']} | {ROW_LABELS[r['row']]} | {r['lr']:g} | {cell(r, 'acc', '.3f')} | "
            f"{cell(r, 'hessian_top', '.2f')} | {cell(r, 'hessian_trace', '.1f')} | {cell(r, 'sharpness', '.4f')} | "
            f"{cell(r, 'avg_sharpness', '.4f')} | {cell(r, 'avg_sharpness_second_order', '.4f')} | "
            f"{cell(r, 'consensus_distance', '.3f')} | {cell(r, 'train_loss', '.3f')} | {r['diverged']}/{r['seeds']} |"
        )
    return "\n".join(out) + "\n"


def ratios(rows: list[dict]) -> list[dict]:
    """D-SGD / C-SGD of the mean flatness numbers, per total batch (below 1: D-SGD flatter),
    against C-SGD at its own tuned lr and at D-SGD's lr."""
    out = []
    by = {(r["row"], r["total_batch"]): r for r in rows}
    for tb, against in ((tb, a) for tb in sorted({r["total_batch"] for r in rows}) for a in ("csgd", "csgd_same_lr")):
        d, c = by[("dsgd_ring", tb)], by[(against, tb)]
        item = {"total_batch": tb, "against": against}
        for k in ("hessian_top", "hessian_trace", "sharpness"):
            item[k] = d[k]["mean"] / c[k]["mean"] if d[k] and c[k] and c[k]["mean"] else None
        item["acc_gap"] = d["acc"]["mean"] - c["acc"]["mean"] if d["acc"] and c["acc"] else None
        out.append(item)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run; writes nothing")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    if args.quick:
        batches, grid, steps, tune_seeds, final_seeds, widen, diag = (8, 32), (0.1, 0.4), 20, (100,), (0,), 0, 256
    else:
        batches, grid, steps, tune_seeds, final_seeds, widen, diag = (8, 32, 128), (0.1, 0.2, 0.4, 0.8), args.steps, \
            TUNE_SEEDS, FINAL_SEEDS, 4, DIAG_SAMPLES
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_init) as pool:
        best, tuning = tune(pool, batches, grid, steps, tune_seeds, widen)
        t_tune = time.perf_counter() - t0
        jobs = [(name, m, b, best[(lr_of, b)], s) for b in batches for name, m, lr_of in ROWS for s in final_seeds]
        final = []
        results = pool.map(run, *zip(*[(m, b, lr, s, steps, True, diag) for _, m, b, lr, s in jobs], strict=True))
        for (name, *_), r in zip(jobs, results, strict=True):
            r = {"row": name, **r}
            final.append(r)
            tag = "diverged" if r["diverged"] else f"test acc {r['acc']:.3f} λmax {r['hessian_top']:.2f}"
            print(f"  final {r['method']} B={r['total_batch']} lr={r['lr']:g} seed={r['seed']}: {tag}", flush=True)
    setting = {
        "dataset": "mnist1d (4000 train = 3200 shards + 800 validation, 1000 test)",
        "model": "mlp 40-100-100-10 (15210 parameters)",
        "workers": N,
        "partition": "iid",
        "steps": steps,
        "optimizer": "plain SGD, constant lr, no momentum, no weight decay",
        "dsgd": "DPSGD (Lian et al. Alg. 1), ring, weights 1/3",
        "csgd": "AllReduceSGD",
        "per_worker_batches": list(batches),
        "lr_rule": "tuned per method and total batch by mean validation accuracy (×2 grid, widened off the edge)",
        "tune_seeds": list(tune_seeds),
        "final_seeds": list(final_seeds),
        "rho": RHO,
        "diagnostic_samples": diag,
        "diagnostics": "distsgd.diagnostics: power iteration (tol 1e-3, 100 it.), Hutchinson (PyHessian rule), "
        "first-order SAM sharpness, average-direction sharpness (64 antithetic pairs) and ½tr(HΞ)",
    }
    rows = summarize(final, best, batches)
    md = markdown(rows, setting)
    rat = ratios(rows)
    md += "\nD-SGD / C-SGD (below 1: D-SGD flatter); accuracy gap D-SGD − C-SGD:\n\n"
    md += "| total batch | against | λ_max ratio | trace ratio | SAM sharpness ratio | test acc gap |\n"
    md += "|---|---|---|---|---|---|\n"
    for r in rat:
        def fmt(v, spec=".2f"):
            return "–" if v is None else format(v, spec)

        md += (f"| {r['total_batch']} | {ROW_LABELS[r['against']]} | {fmt(r['hessian_top'])} | {fmt(r['hessian_trace'])} | {fmt(r['sharpness'])} | "
               f"{fmt(r['acc_gap'], '+.3f')} |\n")
    edge = [t for t in tuning if t["on_edge"]]
    if edge:
        md += "\nlr winners still on the grid edge after widening: " + ", ".join(
            f"{LABELS[t['method']]} B={t['total_batch']} lr={t['lr']:g}" for t in edge) + "\n"
    print(md)
    wall = time.perf_counter() - t0
    print(f"tuning {t_tune:.0f} s, total {wall:.0f} s")
    if args.quick:
        return
    write_result("dsgd_sam", {"setting": setting, "summary": rows, "ratios": rat, "lr_tuning": tuning,
                              "runs": final, "wall_seconds": {"tuning": t_tune, "total": wall}})
    write_text(RESULTS / "dsgd_sam.md", md)
    print(RESULTS / "dsgd_sam.json")


if __name__ == "__main__":
    main()
