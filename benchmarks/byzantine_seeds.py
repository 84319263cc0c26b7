"""Seed spread of the breakdown table's knife-edge cells (issue 5).

ALIE and IPM cells of `byzantine_breakdown.py` flip between training and collapse: ALIE's
f identical rows form a point mass that can capture a median. One seed cannot say which
rule resists them better, so this reruns those cells over three seeds (the data split, the
model's initialisation, the batch order and the Byzantine ids all follow the seed; seed 0
is the table's run) and reports each cell's accuracies, mean and how many seeds collapsed
(accuracy below 0.2, where 0.1 is chance).

The earlier, untuned table's setting: 20 workers, 1D-CNN, batch 32, worker momentum 0.9, lr 0.5,
500 steps. Writes benchmarks/results/byzantine_seeds.json and .md.
Run: python benchmarks/byzantine_seeds.py
"""

from __future__ import annotations

import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402
from byzantine_breakdown import PARTITIONS, _init  # noqa: E402

SEEDS = (0, 1, 2)
STEPS = 500
CELLS = {  # attack: rules
    "alie": ("median", "trimmed_mean", "geomed", "cclip"),
    "ipm": ("median", "geomed", "cclip"),
}
FS = (2, 4)
COLLAPSED = 0.2


def cell(partition: str, agg: str, attack: str, f: int, steps: int, seed: int = 0) -> tuple:
    """One run of the earlier, untuned table's setting (lr 0.5, τ = 1, β = 0.1, no validation
    split): (partition, agg, attack, f, final test accuracy or None if it diverged)."""
    from distsgd import make_task, train
    from distsgd.algorithms import RobustSGD
    from distsgd.robust import Attack, make_aggregator, pick_byzantine

    algo = RobustSGD(lr=0.5, aggregator=make_aggregator(agg, f, **({"tau": 1.0} if agg == "cclip" else {})),
                     attack=Attack(attack), byzantine=pick_byzantine(20, f, seed=seed), worker_momentum=0.9,
                     check=False)
    task = make_task("mnist1d", n_workers=20, model="cnn1d", batch_size=32, seed=seed, **PARTITIONS[partition])
    acc = train(task, algo, steps=steps, eval_every=steps).final.get("test_acc")
    return partition, agg, attack, f, acc if acc == acc else None  # NaN (diverged) -> None


def table(rows: list[dict]) -> str:
    out = [
        "| partition | attack | rule | f | accuracy per seed | mean | collapsed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accs = " / ".join("–" if a is None else f"{a:.2f}" for a in r["accuracy"])
        out.append(
            f"| {r['partition']} | {r['attack']} | {r['rule']} | {r['f']} | {accs} | "
            f"{r['mean']:.2f} | {r['collapsed']}/{len(SEEDS)} |"
        )
    return "\n".join(out) + "\n"


def main():
    keys = [(p, k, a, f) for p in PARTITIONS for k, rules in CELLS.items() for a in rules for f in FS]
    jobs = [(p, a, k, f, STEPS, s) for p, k, a, f in keys for s in SEEDS]
    acc = {}
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), initializer=_init) as pool:
        results = pool.map(cell, *zip(*jobs, strict=True))
        for done, ((p, a, k, f, _, s), r) in enumerate(zip(jobs, results, strict=True), 1):
            acc[(p, k, a, f, s)] = r[-1]
            print(f"[{done}/{len(jobs)}] {p} {k} {a} f={f} seed={s}: {r[-1]}", flush=True)
    rows = []
    for p, k, a, f in keys:
        accs = [acc[(p, k, a, f, s)] for s in SEEDS]
        vals = [0.0 if x is None else x for x in accs]  # diverged counts as collapsed
        rows.append(
            {
                "partition": p,
                "attack": k,
                "rule": a,
                "f": f,
                "accuracy": accs,
                "mean": statistics.mean(vals),
                "collapsed": sum(v < COLLAPSED for v in vals),
            }
        )
    md = table(rows)
    print(md)
    setting = {"n": 20, "steps": STEPS, "seeds": list(SEEDS), "collapsed_below": COLLAPSED}
    print(write_result("byzantine_seeds", {"setting": setting, "cells": rows}))
    write_text(RESULTS / "byzantine_seeds.md", md)


if __name__ == "__main__":
    main()
