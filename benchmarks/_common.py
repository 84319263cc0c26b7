"""Helpers shared by the benchmark scripts: timing and atomic result files."""

from __future__ import annotations

import json
import math
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


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
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
    lower-is-better, None where the target was not reached), widening the grid by ×2 or ÷2
    while the winner sits on its edge; each point is kept as it comes (`on_point`), so a
    stopped tuning resumes where it was. Returns the best key."""
    while True:
        for lr in lrs:
            key = f"{lr:g}"
            if key not in grid:
                grid[key] = measure(lr)
                print(f"tune {label} lr={key}: {grid[key][field]}", flush=True)
                if on_point:
                    on_point()
        keys = sorted(grid, key=float)
        best = min(keys, key=lambda k: (math.inf if grid[k][field] is None else grid[k][field], float(k)))
        if grid[best][field] is None or quick:
            return best
        if best == keys[0]:
            lrs = [float(keys[0]) / 2]
        elif best == keys[-1]:
            lrs = [float(keys[-1]) * 2]
        else:
            return best
