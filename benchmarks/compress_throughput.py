"""Compress + decompress throughput of every compressor on a 10-million-element float32
vector, in GB/s of input, against a plain tensor copy of the same vector measured in the
same run (this machine's memory-bandwidth floor).

Targets (issue 4): sign packing and Rand-K at least 0.25× the copy, Top-K at least 0.05×.
Writes benchmarks/results/compress_throughput.json. Run: python benchmarks/compress_throughput.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import time_per_call, write_result  # noqa: E402

from distsgd.compress import QSGD, Cast, Identity, Natural, RandK, Sign, TopK  # noqa: E402

D = 10_000_000
TARGETS = {"sign": 0.25, "scaled_sign": 0.25, "randk_1%": 0.25, "topk_1%": 0.05}


def main() -> None:
    x = torch.randn(1, D)
    g = torch.Generator().manual_seed(0)
    contenders = {
        "identity": Identity(),
        "float16": Cast("float16"),
        "bfloat16": Cast("bfloat16"),
        "sign": Sign(),
        "scaled_sign": Sign("l1"),
        "topk_1%": TopK(ratio=0.01),
        "randk_1%": RandK(ratio=0.01),
        "qsgd_s15": QSGD(15, 512),
        "natural": Natural(),
    }
    rows = []
    for _ in range(3):  # interleave with the copy baseline; median of per-round ratios
        for name, c in contenders.items():
            t_copy = time_per_call(lambda: x.clone(), 5, repeats=1)
            t = time_per_call(lambda c=c: c.decompress(c.compress(x, g)), 3, repeats=1, warmup=1)
            rows.append((name, t, t_copy))
    out = []
    for name, c in contenders.items():
        mine = [r for r in rows if r[0] == name]
        ratio = statistics.median(r[2] / r[1] for r in mine)
        t = statistics.median(r[1] for r in mine)
        nbytes = c.compress(x, g).nbytes_per_worker
        row = {
            "compressor": name,
            "seconds": t,
            "GBps_of_input": 4 * D / t / 1e9,
            "ratio_to_copy": ratio,
            "wire_bytes": nbytes,
            "compression": 4 * D / nbytes,
        }
        if name in TARGETS:
            row["target"] = TARGETS[name]
            row["met"] = ratio >= TARGETS[name]
        out.append(row)
    copy_gbps = statistics.median(4 * D / r[2] / 1e9 for r in rows)
    print(f"copy: {copy_gbps:.2f} GB/s")
    print(f"{'compressor':>12} {'GB/s':>7} {'x copy':>7} {'ratio':>7}  target")
    for r in out:
        tgt = f"{r['target']} {'met' if r['met'] else 'NOT met'}" if "target" in r else ""
        print(
            f"{r['compressor']:>12} {r['GBps_of_input']:>7.2f} {r['ratio_to_copy']:>7.3f} {r['compression']:>6.1f}x  {tgt}"
        )
    print(write_result("compress_throughput", {"d": D, "copy_GBps": copy_gbps, "rows": out}))


if __name__ == "__main__":
    main()
