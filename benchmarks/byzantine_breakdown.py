"""Breakdown table (issue 5): final test accuracy of robust SGD for every aggregator × attack
× f ∈ {0, 2, 4, 8} of 20 workers, on MNIST-1D with IID and Dirichlet(0.5) shards.

Setting: 1D-CNN, batch 32 per worker, worker momentum β = 0.9 (Karimireddy et al. 2021),
lr 0.5 (on the momentum average), STEPS steps, one seed; the Byzantine workers are drawn
with `pick_byzantine(20, f, seed=0)`. Every rule runs without its (n, f) check so that the
mean's collapse is visible. `bgmd_nomem` is BGMD without its memory of the left-out
coordinates, `bgmd_worker` BGMD with a memory per worker (our variant). Two processes run
the cells in parallel.

Writes benchmarks/results/byzantine_breakdown.json and .md (the README's table).
Run: python benchmarks/byzantine_breakdown.py [--steps 500] [--only RULE ...] [--table-only]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

N, FS = 20, (2, 4, 8)
AGGREGATORS = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "geomed",
    "cclip",
    "bgmd",
    "bgmd_nomem",
    "bgmd_worker",
)
ATTACKS = ("sign_flip", "scaled_flip", "gaussian", "alie", "ipm", "label_flip", "adaptive")
PARTITIONS = {"iid": {}, "dirichlet0.5": {"partition": "dirichlet", "alpha": 0.5}}
AGG_OPTIONS = {"cclip": {"tau": 1.0}, "bgmd_nomem": {"memory": "none"}, "bgmd_worker": {"memory": "worker"}}
RULE = {"bgmd_nomem": "bgmd", "bgmd_worker": "bgmd"}  # table rows that are a rule with options


def _init():
    import torch

    torch.set_num_threads(1)


@functools.cache
def _task(partition: str, seed: int = 0):
    from distsgd import make_task

    return make_task("mnist1d", n_workers=N, model="cnn1d", batch_size=32, seed=seed, **PARTITIONS[partition])


def cell(partition: str, agg: str, attack: str, f: int, steps: int, seed: int = 0) -> tuple:
    """One run: (partition, agg, attack, f, final test accuracy or None if it diverged).
    `seed` draws the data split, the model's initialisation and the Byzantine ids."""
    from distsgd import train
    from distsgd.algorithms import RobustSGD
    from distsgd.robust import Attack, make_aggregator, pick_byzantine

    algo = RobustSGD(
        lr=0.5,
        aggregator=make_aggregator(RULE.get(agg, agg), f, **AGG_OPTIONS.get(agg, {})),
        attack=Attack(attack),
        byzantine=pick_byzantine(N, f, seed=seed),
        worker_momentum=0.9,
        check=False,
    )
    r = train(_task(partition, seed), algo, steps=steps, eval_every=steps)
    acc = r.final.get("test_acc")
    return partition, agg, attack, f, acc if acc == acc else None  # NaN (diverged) -> None


def table(results: dict) -> str:
    """Markdown: per partition, rows = aggregators, columns = attacks, cells f=2 / 4 / 8."""
    out = []
    for part, rows in results.items():
        out.append(
            f"\n**{part}** (test accuracy; clean = f 0; cells: f = {' / '.join(map(str, FS))} of {N})\n"
        )
        out.append("| aggregator | clean | " + " | ".join(ATTACKS) + " |")
        out.append("|---" * (len(ATTACKS) + 2) + "|")
        for agg, r in rows.items():
            cells = [
                " / ".join("–" if r[a][str(f)] is None else f"{r[a][str(f)]:.2f}" for f in FS)
                for a in ATTACKS
            ]
            out.append(f"| {agg} | {r['clean']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--only", nargs="*", help="run these aggregators and merge them into the JSON")
    args = ap.parse_args()
    if args.table_only:
        import json

        print(table(json.loads((RESULTS / "byzantine_breakdown.json").read_text())["accuracy"]))
        return
    aggs = args.only or AGGREGATORS
    jobs = [(p, a, "none", 0, args.steps) for p in PARTITIONS for a in aggs]
    jobs += [(p, a, k, f, args.steps) for p in PARTITIONS for a in aggs for k in ATTACKS for f in FS]
    results = {p: {a: {"clean": None, **{k: {} for k in ATTACKS}} for a in AGGREGATORS} for p in PARTITIONS}
    if args.only:  # merge into the last full run
        import json

        old = json.loads((RESULTS / "byzantine_breakdown.json").read_text())["accuracy"]
        for p in PARTITIONS:
            results[p].update({a: v for a, v in old[p].items() if a not in args.only})
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), initializer=_init) as pool:
        for done, (p, a, k, f, acc) in enumerate(pool.map(cell, *zip(*jobs, strict=True)), 1):
            if k == "none":
                results[p][a]["clean"] = acc
            else:
                results[p][a][k][str(f)] = acc
            print(f"[{done}/{len(jobs)}] {p} {a} {k} f={f}: {acc}", flush=True)
    results = {
        p: {a: results[p][a] for a in AGGREGATORS if results[p][a]["clean"] is not None} for p in results
    }
    md = table(results)
    print(md)
    setting = {"n": N, "steps": args.steps, "model": "cnn1d", "batch": 32, "lr": 0.5, "worker_momentum": 0.9}
    print(write_result("byzantine_breakdown", {"setting": setting, "accuracy": results}))
    write_text(RESULTS / "byzantine_breakdown.md", md)


if __name__ == "__main__":
    main()
