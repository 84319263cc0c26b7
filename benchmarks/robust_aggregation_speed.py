"""Aggregation speed (issue 5).

1. Our two Weiszfeld forms (`geometric_median(method=...)`): "direct" (two passes over G
   per iteration) and "gram" (one G·Gᵀ, then O(n²) per iteration) at d = 1e6 for n = 32,
   64 and 128, ftol 1e-6: where "auto" should switch.
2. BGMD against the full geometric median on n = 32, d = 1e6, β = 0.1, the same smoothed
   Weiszfeld and stopping rule inside both (equal accuracy of the median), for ftol 1e-6 and
   1e-10: seconds per aggregation, interleaved in the same run, against our default
   (gram) median and against the direct one (the O(d)-per-iteration solver that the paper's
   complexity O(kε⁻² + nd) vs O(dε⁻² + nd) assumes). Target: BGMD at least 5× faster.
   Also the floor of any BGMD: the column sums (one pass over G, to sample by column
   norm) plus gathering the chosen columns, and the speedup that floor would allow.
3. Every rule (and NNM / bucketing around the geometric median) on the same n = 32,
   d = 1e6 stack: seconds per aggregation and the ratio to the mean, measured in the same run.
4. Our geometric median (auto) against the `geom-median` package (Pillutla et al.'s
   reference implementation) on the same inputs, ν, ftol and iteration cap: relative
   difference of the medians (target ≤ 1e-4) and the time ratio (target: no slower).

Inputs: n gradient-like rows (a common mean, per-row noise of varying scale) of which
f = n/4 are Byzantine (scaled flip −10·g), float32.

Writes benchmarks/results/robust_aggregation_speed.json and .md.
Run: python benchmarks/robust_aggregation_speed.py
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd._alloc import tune_allocator  # noqa: E402
from distsgd.robust import BGMD, RULES, GeometricMedian, geometric_median, make_aggregator  # noqa: E402
from distsgd.robust.bgmd import column_sums  # noqa: E402

N, F = 32, 8
FTOL, NU, MAX_ITER = 1e-6, 1e-6, 100
D = 1_000_000


def inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=gen)
    g = mean + torch.randn(n, d, generator=gen) * (0.5 + torch.rand(n, 1, generator=gen))
    g[: n // 4] *= -10
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


def gm_methods(n: int, d: int = D) -> dict:
    g = inputs(n, d)
    kw = {"nu": NU, "ftol": FTOL, "max_iter": MAX_ITER}
    t = interleaved(
        {m: (lambda m=m: geometric_median(g, method=m, **kw)) for m in ("gram", "direct")}, rounds=5
    )
    its = {m: geometric_median(g, method=m, **kw)[1] for m in ("gram", "direct")}
    return {
        "n": n,
        "d": d,
        "seconds_gram": t["gram"],
        "seconds_direct": t["direct"],
        "gram_speedup": t["direct"] / t["gram"],
        "iterations_gram": its["gram"],
        "iterations_direct": its["direct"],
    }


def bgmd_vs_gm(ftol: float, d: int = D, beta: float = 0.1) -> dict:
    g = inputs(N, d)
    kw = {"nu": NU, "ftol": ftol, "max_iter": MAX_ITER}
    gm = GeometricMedian(f=F, **kw)
    sample, topk = BGMD(f=F, beta=beta, **kw), BGMD(f=F, beta=beta, selection="topk", **kw)
    s_state, t_state = sample.init(d), topk.init(d)
    idx = torch.randperm(d)[: math.ceil(beta * d)].sort().values
    t = interleaved(
        {
            "geomed_gram": lambda: gm.aggregate(g),
            "geomed_direct": lambda: geometric_median(g, method="direct", **kw),
            "bgmd_sample": lambda: sample(g, s_state),
            "bgmd_topk": lambda: topk(g, t_state),
            "floor": lambda: (column_sums(g), g.index_select(1, idx)),
        },
        rounds=9,
    )
    return {
        "n": N,
        "d": d,
        "beta": beta,
        "ftol": ftol,
        **{f"seconds_{k}": v for k, v in t.items()},
        "speedup_vs_gram": t["geomed_gram"] / t["bgmd_sample"],
        "speedup_vs_direct": t["geomed_direct"] / t["bgmd_sample"],
        "speedup_topk_vs_gram": t["geomed_gram"] / t["bgmd_topk"],
        "speedup_topk_vs_direct": t["geomed_direct"] / t["bgmd_topk"],
        "floor_speedup_vs_gram": t["geomed_gram"] / t["floor"],
        "weiszfeld_iterations_full": geometric_median(g, method="direct", **kw)[1],
    }


def all_rules(d: int = D) -> list[dict]:
    g = inputs(N, d)
    rules = {name: make_aggregator(name, F if name != "mean" else 0) for name in RULES}
    rules["nnm+geomed"] = make_aggregator("geomed", F, nnm=True)
    rules["bucket2+geomed"] = make_aggregator("geomed", F // 2, bucket=2)
    rules["bgmd(worker memory)"] = make_aggregator("bgmd", F, memory="worker")
    states = {k: r(g, r.init(d))[1] for k, r in rules.items()}  # a step in: the steady state
    t = interleaved({k: (lambda k=k: rules[k](g, states[k])) for k in rules}, rounds=3)
    return [{"rule": k, "seconds": v, "vs_mean": v / t["mean"]} for k, v in t.items()]


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


def table(methods, bs, rules, pkg) -> str:
    ms = lambda s: f"{s * 1e3:.0f} ms"  # noqa: E731
    lines = ["| n | gram | direct | gram speedup | iterations |", "|---|---|---|---|---|"]
    for m in methods:
        lines.append(
            f"| {m['n']} | {ms(m['seconds_gram'])} | {ms(m['seconds_direct'])} | "
            f"{m['gram_speedup']:.1f}× | {m['iterations_gram']} / {m['iterations_direct']} |"
        )
    lines += [
        "",
        "| ftol | BGMD sample | BGMD top-k | geomed (gram) | geomed (direct) | BGMD vs gram | BGMD vs direct | floor | floor vs gram |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in bs:
        lines.append(
            f"| {b['ftol']:.0e} | {ms(b['seconds_bgmd_sample'])} | {ms(b['seconds_bgmd_topk'])} | "
            f"{ms(b['seconds_geomed_gram'])} | {ms(b['seconds_geomed_direct'])} | "
            f"{b['speedup_vs_gram']:.2f}× | {b['speedup_vs_direct']:.1f}× | {ms(b['seconds_floor'])} | "
            f"{b['floor_speedup_vs_gram']:.1f}× |"
        )
    lines += ["", "| rule | time | × mean |", "|---|---|---|"]
    lines += [f"| {r['rule']} | {ms(r['seconds'])} | {r['vs_mean']:.1f} |" for r in rules]
    lines += ["", "| d | ours | geom-median | speedup | rel. difference |", "|---|---|---|---|---|"]
    for p in pkg:
        lines.append(
            f"| {p['d']:.0e} | {p['seconds_ours'] * 1e3:.1f} ms | {p['seconds_package'] * 1e3:.1f} ms | "
            f"{p['speedup']:.1f}× | {p['relative_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main():
    tune_allocator()  # as training does (Workers): large temporaries are reused, not page-faulted
    methods = [gm_methods(n) for n in (32, 64, 128)]
    bs = [bgmd_vs_gm(ftol) for ftol in (1e-6, 1e-10)]
    rules = all_rules()
    pkg = [ours_vs_package(d) for d in (10_000, 100_000, 1_000_000)]
    md = table(methods, bs, rules, pkg)
    print(md)
    setting = {"ftol_vs_package": FTOL, "nu": NU, "max_iter": MAX_ITER, "byzantine_rows": "n/4"}
    payload = {
        "setting": setting,
        "gm_methods": methods,
        "bgmd_vs_geomed": bs,
        "rules": rules,
        "vs_package": pkg,
    }
    print(write_result("robust_aggregation_speed", payload))
    write_text(RESULTS / "robust_aggregation_speed.md", md)


if __name__ == "__main__":
    main()
