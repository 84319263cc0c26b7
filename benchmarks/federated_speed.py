"""Cost of a federated round: K = 100 clients drawn from N = 1000, against 100 always-on workers.

One FedAvg round (100 of 1000 clients, τ local steps each, then the weighted average)
against what a user would run instead for the same local work: Local SGD with 100
simulated workers, τ local steps and one average (one runner step of each is timed per
local step, so a Local SGD "round" is τ runner steps). Same model, batch and data; the
ratio is federated seconds per round / Local SGD seconds per τ steps. Goal: ≤ 1.5.

    python benchmarks/federated_speed.py [--quick]

Writes benchmarks/results/federated_speed.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd.algorithms import FedAvg, LocalSGD  # noqa: E402
from distsgd.runner import train  # noqa: E402
from distsgd.tasks.task import make_task  # noqa: E402


def seconds_per_round(task, algorithm, steps_per_round: int, rounds: int) -> float:
    """Wall seconds of `rounds` rounds (after one warm-up round), from one run's clock."""
    res = train(task, algorithm, steps=(rounds + 1) * steps_per_round, eval_every=10**9)
    del res
    t0 = time.perf_counter()
    train(task, algorithm, steps=(rounds + 1) * steps_per_round, eval_every=10**9)
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    train(task, algorithm, steps=steps_per_round, eval_every=10**9)
    one = time.perf_counter() - t1  # setup + one round: subtracted, so setup does not count
    return (total - one) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    tau, rounds, repeats = (5, 3, 1) if args.quick else (10, 10, 3)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same one thread for both sides (the machine's cores are shared)
    rows = []
    for model, hidden in (("mlp", (100, 100)), ("cnn1d", ())):
        fed_task = make_task("mnist1d", n_workers=1000, model=model, hidden=hidden, batch_size=8, num_samples=10000, seed=0)
        ref_task = make_task("mnist1d", n_workers=100, model=model, hidden=hidden, batch_size=8, num_samples=10000, seed=0)
        fed = FedAvg(lr=0.05, clients_per_round=100, local_steps=tau)
        local = LocalSGD(lr=0.05, local_steps=tau)
        f, l_ = [], []
        for _ in range(repeats):  # interleaved, so load on the machine weighs on both alike
            f.append(seconds_per_round(fed_task, fed, 1, rounds))
            l_.append(seconds_per_round(ref_task, local, tau, rounds))
        row = {
            "model": model,
            "parameters": fed_task.description["parameters"],
            "local_steps": tau,
            "fedavg_round_s": statistics.median(f),
            "local_sgd_round_s": statistics.median(l_),
            "fedavg_samples": f,
            "local_sgd_samples": l_,
        }
        row["ratio"] = row["fedavg_round_s"] / row["local_sgd_round_s"]
        rows.append(row)
        print(f"{model}: fedavg {row['fedavg_round_s'] * 1e3:.1f} ms/round, local_sgd {row['local_sgd_round_s'] * 1e3:.1f} ms/round, ratio {row['ratio']:.2f}", flush=True)
    name = "federated_speed_quick" if args.quick else "federated_speed"
    write_result(name, {"goal": "ratio <= 1.5", "clients": 1000, "clients_per_round": 100, "rounds": rounds, "repeats": repeats, "rows": rows})
    lines = [
        "| model | parameters | τ | FedAvg 100 of 1000 (ms/round) | Local SGD 100 workers (ms per τ steps) | ratio (goal ≤ 1.5) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']} | {r['local_steps']} | {r['fedavg_round_s'] * 1e3:.1f} | "
            f"{r['local_sgd_round_s'] * 1e3:.1f} | {r['ratio']:.2f} |"
        )
    write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
