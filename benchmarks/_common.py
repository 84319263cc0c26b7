"""Helpers shared by the benchmark scripts: timing and atomic result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def time_per_call(fn, calls: int, repeats: int = 3, warmup: int = 2) -> float:
    """Median over `repeats` of the mean seconds per call of `fn` over `calls` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t) / calls)
    return statistics.median(samples)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a result was measured on: CPU model, cores, threads, torch and its build."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_build": {"cuda": torch.version.cuda, "debug": torch.version.debug,
                        "libraries": [ln.strip() for ln in torch.__config__.parallel_info().splitlines()
                                      if ln and not ln.startswith(("\t", " ", "ATen")) and not ln.endswith(":")]},
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def widen(grid: dict, lrs, measure, field: str, quick: bool, label: str, on_point=None) -> str:
    """Measure every lr of `lrs` not yet in `grid` (`measure(lr)` -> a dict whose `field` is
    lower-is-better, None where the target was not reached), then, while the winner sits on
    an edge, the next value past it by `distsgd.sweep`'s rules (`pick`, `next_value`: ×/÷ the
    edge's ratio), the rules `distsgd sweep --select --widen` and `harness.tune` follow; each
    point is kept as it comes (`on_point`), so a stopped tuning resumes where it was.
    Returns the best key."""
    from distsgd.sweep import next_value, pick

    while True:
        for lr in lrs:
            key = f"{lr:g}"
            if key not in grid:
                grid[key] = measure(lr)
                print(f"tune {label} lr={key}: {grid[key][field]}", flush=True)
                if on_point:
                    on_point()
        values = sorted(float(k) for k in grid)
        best, edge = pick({v: grid[f"{v:g}"][field] for v in values}, higher_is_better=False)
        if grid[f"{best:g}"][field] is None or quick or edge not in ("smallest", "largest"):
            return f"{best:g}"
        nxt, _ = next_value(values, edge)
        if nxt is None:
            return f"{best:g}"
        lrs = [nxt]
