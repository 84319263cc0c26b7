"""Aggregation speed (issue 5).

1. BGMD against the full geometric median on n = 32, d = 1e6, β = 0.1, with the same
   Weiszfeld stopping rule for both (relative objective decrease ≤ ftol, at most 100
   iterations), for ftol 1e-6, 1e-10 and 1e-20 (the geom-median package's default, which in
   practice runs all 100 iterations): seconds per aggregation, interleaved in the same run.
   Target: BGMD at least 5× faster. (Equal accuracy in training: the breakdown table.)
2. Our smoothed Weiszfeld against the `geom-median` package (Pillutla et al.'s reference
   implementation) on the same inputs, ν, ftol and iteration cap: relative difference of
   the medians (target ≤ 1e-4) and the time ratio (target: no slower).

Inputs: n gradient-like rows (a common mean, per-row noise of varying scale) of which
f = 8 are Byzantine (scaled flip −10·g), float32.

Writes benchmarks/results/robust_aggregation_speed.json. Run: python benchmarks/robust_aggregation_speed.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from distsgd._alloc import tune_allocator  # noqa: E402
from distsgd.robust import BGMD, GeometricMedian, geometric_median  # noqa: E402

N, F = 32, 8
FTOL, NU, MAX_ITER = 1e-6, 1e-6, 100


def inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=gen)
    g = mean + torch.randn(n, d, generator=gen) * (0.5 + torch.rand(n, 1, generator=gen))
    g[:F] *= -10
    return g


def interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds per call of each function, the contenders alternating round by round."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bgmd_vs_gm(ftol: float, d: int = 1_000_000, beta: float = 0.1) -> dict:
    g = inputs(N, d)
    gm = GeometricMedian(f=F, nu=NU, ftol=ftol, max_iter=MAX_ITER)
    bgmd = BGMD(f=F, beta=beta, nu=NU, ftol=ftol, max_iter=MAX_ITER)
    state = bgmd.init(d)
    t = interleaved({"geomed": lambda: gm.aggregate(g), "bgmd": lambda: bgmd(g, state)}, rounds=9)
    _, it_full = geometric_median(g, nu=NU, ftol=ftol, max_iter=MAX_ITER)
    return {
        "n": N,
        "d": d,
        "beta": beta,
        "ftol": ftol,
        "seconds_geomed": t["geomed"],
        "seconds_bgmd": t["bgmd"],
        "speedup": t["geomed"] / t["bgmd"],
        "weiszfeld_iterations_full": it_full,
    }


def ours_vs_package(d: int) -> dict:
    from geom_median.torch import compute_geometric_median

    g = inputs(N, d, seed=1)
    rows = list(g)
    ref = compute_geometric_median(rows, eps=NU, maxiter=MAX_ITER, ftol=FTOL)
    ours, it = geometric_median(g, nu=NU, ftol=FTOL, max_iter=MAX_ITER)
    t = interleaved(
        {
            "package": lambda: compute_geometric_median(rows, eps=NU, maxiter=MAX_ITER, ftol=FTOL),
            "ours": lambda: geometric_median(g, nu=NU, ftol=FTOL, max_iter=MAX_ITER),
        },
        rounds=5,
    )
    return {
        "n": N,
        "d": d,
        "iterations_ours": it,
        "iterations_package": len(ref.logs) - 1,
        "relative_difference": float(
            torch.linalg.vector_norm(ours - ref.median) / torch.linalg.vector_norm(ref.median)
        ),
        "seconds_package": t["package"],
        "seconds_ours": t["ours"],
        "speedup": t["package"] / t["ours"],
    }


def main():
    tune_allocator()  # as training does (Workers): large temporaries are reused, not page-faulted
    bs = []
    for ftol in (1e-6, 1e-10, 1e-20):
        b = bgmd_vs_gm(ftol)
        bs.append(b)
        print(
            f"BGMD vs geometric median, n={b['n']}, d={b['d']:.0e}, beta={b['beta']}, ftol={ftol:.0e}: "
            f"{b['seconds_bgmd'] * 1e3:.0f} ms vs {b['seconds_geomed'] * 1e3:.0f} ms "
            f"({b['weiszfeld_iterations_full']} Weiszfeld iterations): {b['speedup']:.1f}x faster"
        )
    pkg = []
    for d in (10_000, 100_000, 1_000_000):
        p = ours_vs_package(d)
        pkg.append(p)
        print(
            f"geometric median vs geom-median package, d={d:.0e}: rel. diff {p['relative_difference']:.1e}, "
            f"{p['seconds_ours'] * 1e3:.1f} ms vs {p['seconds_package'] * 1e3:.1f} ms: {p['speedup']:.2f}x"
        )
    setting = {"ftol_vs_package": FTOL, "nu": NU, "max_iter": MAX_ITER, "byzantine_rows": F}
    print(
        write_result(
            "robust_aggregation_speed", {"setting": setting, "bgmd_vs_geomed": bs, "vs_package": pkg}
        )
    )


if __name__ == "__main__":
    main()
