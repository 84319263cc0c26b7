"""Compare all-reduce algorithms on one interconnect over a range of sizes: a table and a plot."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import UserError
from .interconnect import Interconnect
from .schedules import lower_bound_seconds
from .simulator import simulate

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 1e3, "mb": 1e6, "gb": 1e9}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise UserError(f"bad size '{text}' (use e.g. 32KiB, 4MiB, 1GB or a byte count)")
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if value < 1:
        raise UserError(f"bad size '{text}': must be at least 1 byte")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """`32KiB..64MiB` (doubling) or a comma list `1MiB,8MiB`."""
    if ".." in text:
        lo, _, hi = text.partition("..")
        a, b = parse_size(lo), parse_size(hi)
        if a > b:
            raise UserError(f"bad size range '{text}': the first size is larger")
        out = []
        while a <= b:
            out.append(a)
            a *= 2
        return out
    return [parse_size(s) for s in text.split(",") if s.strip()]


def human(size: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= f:
            return f"{size / f:g}{unit}"
    return f"{size:g}B"


def packet_for(size: int, packet: int | None) -> float:
    """The packet size simulated: the one asked for, or by default size/2048 rounded to a
    power of two and at least 256 B (the paper's flit payload), so that the number of
    packet events stays bounded at large sizes. Every result records the size used."""
    if packet:
        return float(packet)
    return float(max(256, 2 ** round(math.log2(max(1.0, size / 2048)))))


def compare(
    net: Interconnect,
    schedules: dict,
    sizes: list[int],
    packet: int | None = None,
    cut_through: bool = False,
    lockstep: bool = True,
) -> list[dict]:
    rows = []
    for size in sizes:
        bound = lower_bound_seconds(net, size)
        ring_time = None
        per = {}
        for name, sched in schedules.items():
            pk = packet_for(size, packet)
            res = simulate(sched, net, size, packet_bytes=pk, cut_through=cut_through, lockstep=lockstep)
            per[name] = res
            if name == "ring":
                ring_time = res.seconds
        for name, res in per.items():
            rows.append(
                {
                    "size": size,
                    "algorithm": name,
                    "seconds": res.seconds,
                    "algbw_GBps": size / res.seconds / 1e9 if res.seconds else float("inf"),
                    "lower_bound_seconds": bound,
                    "ratio_to_bound": res.seconds / bound,
                    "speedup_over_ring": (ring_time / res.seconds) if ring_time else None,
                    "packet_bytes": packet_for(size, packet),
                    "steps": schedules[name].steps,
                    "events": res.events,
                    "sim_wall_seconds": res.wall_seconds,
                }
            )
    return rows


def print_table(net: Interconnect, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"all-reduce on {net.name}: {net.bandwidth / 1e9:g} GB/s links, "
        f"{net.latency * 1e9:g} ns, {net.nis} NI(s) per node"
    )
    for col in ("size", "algorithm", "time", "algbw GB/s", "x bound", "speedup vs ring", "steps"):
        t.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in rows:
        sp = r["speedup_over_ring"]
        t.add_row(
            human(r["size"]),
            r["algorithm"],
            f"{r['seconds'] * 1e6:.1f} us",
            f"{r['algbw_GBps']:.2f}",
            f"{r['ratio_to_bound']:.2f}",
            f"{sp:.2f}" if sp else "-",
            str(r["steps"]),
        )
    Console().print(t)


def plot(net: Interconnect, rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(r["algorithm"] for r in rows))
    for name in names:
        pts = [(r["size"], r["seconds"]) for r in rows if r["algorithm"] == name]
        ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], marker="o", ms=3, label=name)
    bound = sorted({(r["size"], r["lower_bound_seconds"]) for r in rows})
    ax.plot([b[0] for b in bound], [b[1] * 1e6 for b in bound], "k--", label="lower bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("all-reduce size (bytes)")
    ax.set_ylabel("time (us)")
    ax.set_title(f"{net.name}, {net.nis} NI(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..plots import save_figure

    return save_figure(fig, path)
