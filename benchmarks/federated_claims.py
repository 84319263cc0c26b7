"""Federated claims under hybrid heterogeneity: FedAvg, FedAvgM, FedNova, FedAWARE; local vs mini-batch SGD.

Setting (FedAWARE's MNIST scripts, scaled to MNIST-1D on two cores): N = 100 clients
holding a Dirichlet(α) label split of 14,000 MNIST-1D training samples (the split drawn
once, data seed 0), K = 10 clients a round uniformly without replacement, τ = 10 local
steps of batch 8, an MLP (40-100-100-10). Statistical heterogeneity α ∈ {0.1, 1.0} ×
system heterogeneity off (τ_k = 10) or on (τ_k drawn uniformly in {1..10} every round).
FedAvgM: server momentum 0.7 (FedAWARE's baseline); FedAWARE: α_m = 0.3 ((F)MNIST), η_g = 1,
without and with its optional projection onto the mean stored update.

Tuning: the client lr of every method for each α (without system heterogeneity; the same
lr is used with it) on validation data (2,000 training samples held out of the clients'
data) over 2 seeds, on a ×2 grid widened while the winner sits on an edge; the score is the validation accuracy averaged over the last
three evaluations of a 60-round run. Final: 150 rounds, 3 fresh seeds, test accuracy
(mean ± std), and rounds to a target accuracy: 90% of the best method's mean final test
accuracy in that condition (None when a seed never reaches it). Diverged runs are labelled.

Haddadpour & Mahdavi's claim (local SGD needs fewer communication rounds than mini-batch
SGD for the same accuracy): IID split over 50 clients, K = 10, local SGD τ = 10 with batch
8 against mini-batch SGD τ = 1 with batch 80 (the same samples per round), both tuned.

    python benchmarks/federated_claims.py [--quick]

Writes benchmarks/results/federated_claims.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, widen, write_result, write_text  # noqa: E402

from distsgd.algorithms import ALGORITHMS  # noqa: E402
from distsgd.errors import Diverged, UserError  # noqa: E402
from distsgd.runner import train  # noqa: E402
from distsgd.tasks import datasets as ds  # noqa: E402
from distsgd.tasks import partition as part  # noqa: E402
from distsgd.tasks.models import build_model  # noqa: E402
from distsgd.tasks.task import Samples, Task, loss_for  # noqa: E402

METHODS = {
    "FedAvg": {"name": "fedavg"},
    "FedAvgM": {"name": "fedavg", "server_momentum": 0.7},
    "FedNova": {"name": "fednova"},
    "FedAWARE": {"name": "fedaware", "alpha": 0.3},
    "FedAWARE (projection)": {"name": "fedaware", "alpha": 0.3, "projection": True},
}
GRID = (0.1, 0.2, 0.4)
CACHE = Path("/tmp/distsgd-federated-claims-cache.json")  # finished runs, so a stopped benchmark resumes
VALIDATION = 2000


def data():
    return ds.mnist1d(num_samples=20000)


def build(d, alpha: float | None, clients: int, batch: int, split: str, seed: int) -> Task:
    """Clients' shards of the training samples left after holding out the validation set
    (α None: IID); evaluation on the validation set (split "val") or the test set; the
    model initialized from `seed`."""
    g = torch.Generator().manual_seed(0)  # the data split is fixed; seeds vary the runs
    order = torch.randperm(len(d.y), generator=g)
    val, pool = order[:VALIDATION], order[VALIDATION:]
    if alpha is None:
        shards = [pool[s] for s in part.iid(len(pool), clients, g)]
    else:  # the first data seed whose split leaves every client a batch (α = 0.1 is that skewed)
        for data_seed in range(100):
            try:
                split_g = torch.Generator().manual_seed(data_seed)
                shards = [pool[s] for s in part.dirichlet(d.y[pool], clients, alpha, split_g, min_size=batch)]
                break
            except UserError:
                continue
    test = Samples((d.x[val], d.y[val])) if split == "val" else Samples((d.x_test, d.y_test))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("mlp", d.features, d.num_classes, [100, 100])
    desc = {"dataset": "mnist1d", "alpha": alpha, "clients": clients, "batch_size": batch, "split": split}
    task = Task(Samples((d.x, d.y)), test, shards, net, batch, desc, loss_for("multiclass"), "multiclass", d.num_classes)
    task.eval_samples = 1000  # train metrics on a fixed subset (only the test split is scored)
    return task


def run(d, spec: dict, lr: float, alpha, clients: int, batch: int, rounds: int, seed: int, split: str) -> dict:
    key = json.dumps([spec, lr, alpha, clients, batch, rounds, seed, split], sort_keys=True)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    if key not in cache:
        cache[key] = _run(d, spec, lr, alpha, clients, batch, rounds, seed, split)
        done = json.loads(CACHE.read_text()) if CACHE.exists() else {}
        CACHE.write_text(json.dumps({**done, key: cache[key]}))
    return cache[key]


def _run(d, spec: dict, lr: float, alpha, clients: int, batch: int, rounds: int, seed: int, split: str) -> dict:
    task = build(d, alpha, clients, batch, split, seed)
    alg = ALGORITHMS.create({**spec, "lr": lr})
    t0 = time.perf_counter()
    try:
        res = train(task, alg, steps=rounds, eval_every=max(1, rounds // 15), seed=seed)
    except Diverged as e:
        return {"diverged": True, "why": str(e), "curve": []}
    curve = [(r["step"], r["test_acc"]) for r in res.metrics]
    tail = statistics.fmean(a for _, a in curve[-3:])
    return {
        "diverged": False,
        "final": curve[-1][1],
        "tail": tail,
        "curve": curve,
        "sim_seconds": res.summary["traffic"]["sim_seconds"],
        "wall_seconds": time.perf_counter() - t0,
    }


def tune(d, spec, alpha, clients, batch, rounds, seeds, quick, label) -> tuple[float, dict]:
    grid: dict = {}

    def measure(lr):
        runs = [run(d, spec, lr, alpha, clients, batch, rounds, s, "val") for s in seeds]
        if any(r["diverged"] for r in runs):
            return {"loss": None, "diverged": True}
        return {"loss": -statistics.fmean(r["tail"] for r in runs), "val_acc": [r["tail"] for r in runs]}

    best = widen(grid, GRID if not quick else GRID[1:2], measure, "loss", quick, label)
    return float(best), grid


def rounds_to(curve, target):
    for step, acc in curve:
        if acc >= target:
            return step
    return None


def summarize(runs: list[dict], target: float) -> dict:
    ok = [r for r in runs if not r["diverged"]]
    finals = [r["final"] for r in ok]
    reach = [rounds_to(r["curve"], target) for r in ok]
    hit = [x for x in reach if x is not None]
    return {
        "final_mean": statistics.fmean(finals) if finals else None,
        "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "diverged": len(runs) - len(ok),
        "rounds_to_target": reach,
        "rounds_to_target_mean": statistics.fmean(hit) if len(hit) == len(ok) and hit else None,
        "reached": f"{len(hit)}/{len(runs)}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    args = ap.parse_args()
    quick = args.quick
    torch.set_num_threads(1)  # small models: one thread each is faster on a shared 2-core machine
    tune_rounds, rounds = (10, 20) if quick else (60, 150)
    tune_seeds, final_seeds = ((0,), (10,)) if quick else ((0, 1), (10, 11, 12))
    name = "federated_claims_quick" if quick else "federated_claims"
    d = data()
    out: dict = {"settings": {"clients": 100, "clients_per_round": 10, "local_steps": 10, "batch": 8,
                              "tune_rounds": tune_rounds, "rounds": rounds, "tune_seeds": tune_seeds,
                              "final_seeds": final_seeds, "grid": GRID}, "conditions": [], "local_vs_minibatch": {}}
    for alpha in (0.1, 1.0):
        for het in (False, True):
            cond = {"alpha": alpha, "system_heterogeneity": het, "methods": {}}
            for label, base in METHODS.items():
                spec = {**base, "clients_per_round": 10, "local_steps": 10, "local_work": "uniform" if het else "fixed"}
                tuned = {**spec, "local_work": "fixed"}  # tuned without system heterogeneity, reused with it
                lr, grid = tune(d, tuned, alpha, 100, 8, tune_rounds, tune_seeds, quick, f"{label} α={alpha}")
                runs = [run(d, spec, lr, alpha, 100, 8, rounds, s, "test") for s in final_seeds]
                cond["methods"][label] = {"lr": lr, "grid": grid, "runs": runs}
                print(f"α={alpha} het={het} {label}: lr={lr:g} final={[r.get('final') for r in runs]}", flush=True)
            best = max(
                statistics.fmean(r["final"] for r in m["runs"] if not r["diverged"]) for m in cond["methods"].values()
                if any(not r["diverged"] for r in m["runs"])
            )
            cond["target"] = 0.9 * best
            for m in cond["methods"].values():
                m["summary"] = summarize(m["runs"], cond["target"])
            out["conditions"].append(cond)
            write_result(name, out)
    # Haddadpour & Mahdavi: local SGD against mini-batch SGD at equal rounds and samples
    lvm = {}
    for label, spec, batch in (
        ("local SGD (τ=10, B=8)", {"name": "fedavg", "clients_per_round": 10, "local_steps": 10}, 8),
        ("mini-batch SGD (τ=1, B=80)", {"name": "fedavg", "clients_per_round": 10, "local_steps": 1}, 80),
    ):
        lr, grid = tune(d, spec, None, 50, batch, tune_rounds, tune_seeds, quick, label)
        runs = [run(d, spec, lr, None, 50, batch, rounds, s, "test") for s in final_seeds]
        lvm[label] = {"lr": lr, "grid": grid, "runs": runs}
        print(f"{label}: lr={lr:g} final={[r.get('final') for r in runs]}", flush=True)
    best = max(statistics.fmean(r["final"] for r in m["runs"] if not r["diverged"]) for m in lvm.values())
    for m in lvm.values():
        m["summary"] = summarize(m["runs"], 0.9 * best)
    out["local_vs_minibatch"] = {"target": 0.9 * best, "methods": lvm}
    write_result(name, out)
    write_text(RESULTS / f"{name}.md", table(out))
    print(table(out))


def _fmt(s: dict) -> str:
    if s["final_mean"] is None:
        return "diverged"
    acc = f"{s['final_mean']:.3f} ± {s['final_std']:.3f}"
    r = s["rounds_to_target_mean"]
    reach = f"{r:.0f}" if r is not None else f"not all ({s['reached']})"
    div = f", {s['diverged']} diverged" if s["diverged"] else ""
    return f"{acc} | {reach}{div}"


def table(out: dict) -> str:
    lines = [
        "| α | system het. | method | lr | test acc (mean ± std, 3 seeds) | rounds to target | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in out["conditions"]:
        for label, m in c["methods"].items():
            lines.append(
                f"| {c['alpha']} | {'on' if c['system_heterogeneity'] else 'off'} | {label} | {m['lr']:g} | "
                f"{_fmt(m['summary'])} | {c['target']:.3f} |"
            )
    lvm = out.get("local_vs_minibatch") or {}
    if lvm:
        lines += ["", "| IID, 50 clients, K = 10 | lr | test acc | rounds to target | target |", "|---|---|---|---|---|"]
        for label, m in lvm["methods"].items():
            lines.append(f"| {label} | {m['lr']:g} | {_fmt(m['summary'])} | {lvm['target']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
