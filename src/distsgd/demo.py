"""`distsgd demo`: AllReduce-SGD, Local SGD and D-PSGD on MNIST-1D with 16 simulated workers."""

from __future__ import annotations

import time
from pathlib import Path

from .api import run_config
from .config import RunConfig, parse_config
from .plots import plot_runs

DEMO_RUNS = {
    "allreduce_sgd": {"name": "allreduce_sgd", "lr": 0.05, "momentum": 0.9},
    "local_sgd_H8": {"name": "local_sgd", "lr": 0.05, "momentum": 0.9, "local_steps": 8},
    "dpsgd_ring": {"name": "dpsgd", "lr": 0.05, "momentum": 0.9},
}


def demo_configs(steps: int = 1500, n_workers: int = 16, out_dir: str = "runs/demo") -> list[RunConfig]:
    base = {
        "seed": 0,
        "n_workers": n_workers,
        "steps": steps,
        "eval_every": max(1, steps // 30),
        "out_dir": out_dir,
        "task": {"dataset": "mnist1d", "model": "cnn1d", "batch_size": 32, "partition": "iid"},
        # 1 Gbit/s links, 100 µs latency, 5 ms per gradient: a commodity cluster
        "network": {"bandwidth": 1.25e8, "latency": 1e-4, "compute_seconds": 5e-3},
    }
    return [
        parse_config({**base, "name": name, "algorithm": algo}, "demo") for name, algo in DEMO_RUNS.items()
    ]


def run_demo(steps: int = 1500, n_workers: int = 16, out_dir: str = "runs/demo", progress: bool = True):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = []
    for cfg in demo_configs(steps, n_workers, out_dir):
        results.append(run_config(cfg, Path(out_dir) / cfg.name, progress=progress))
    table = Table(
        title=f"MNIST-1D 1D-CNN, {n_workers} simulated workers, {steps} steps (batch 32 per worker)"
    )
    table.add_column("algorithm", no_wrap=True, min_width=13)
    for col in ("test acc", "test loss", "train loss", "MB sent / worker", "sim s", "wall s"):
        table.add_column(col, justify="right")
    for r in results:
        f = r.final
        table.add_row(
            r.summary["name"],
            f"{f['test_acc']:.3f}",
            f"{f['test_loss']:.3f}",
            f"{f['train_loss']:.3f}",
            f"{f['bytes_sent_per_worker'] / 1e6:.1f}",
            f"{f['sim_seconds']:.1f}",
            f"{r.summary['wall_seconds']:.1f}",
        )
    console.print(table)
    plot = plot_runs(
        [(r.summary["name"], r.metrics) for r in results],
        Path(out_dir) / "comparison.png",
        title="distsgd demo: MNIST-1D, 16 workers",
    )
    console.print(f"plot: {plot}   runs: {', '.join(str(r.run_dir) for r in results)}")
    return results


if __name__ == "__main__":  # pragma: no cover
    t = time.time()
    run_demo()
    print(f"{time.time() - t:.1f}s")
