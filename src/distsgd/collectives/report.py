"""Compare collective algorithms on one interconnect over a range of sizes: a table and a plot."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .flow import simulate_flows
from .interconnect import Interconnect
from .schedules import lower_bound_seconds
from .simulator import simulate

# Units are case-sensitive so that they stay unambiguous: B is a byte and bit a bit (a bare
# lowercase b, as in Gb/s or mb, is refused); k or K, M, G, T are powers of 1000 and Ki, Mi,
# Gi, Ti powers of 1024. A number without a unit is bytes, bytes/s or seconds.
_PREFIXES = {
    "": 1,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_SIZE_UNITS = {f"{p}B": f for p, f in _PREFIXES.items()}
_BANDWIDTH_UNITS = {f"{p}B/s": f for p, f in _PREFIXES.items()} | {
    f"{p}bit/s": f / 8 for p, f in _PREFIXES.items()
}
_LATENCY_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = re.compile(
    r"\s*([+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))\s*(.*?)\s*", re.IGNORECASE
)


def _quantity(text: str, what: str, units: dict[str, float], examples: str) -> tuple[float, str]:
    """A number and its unit's factor; the unit must be one of `units` ('' = none given)."""
    m = _NUMBER.fullmatch(text)
    if not m:
        raise UserError(f"bad {what} '{text}' (use e.g. {examples})")
    number, unit = m.groups()
    if unit not in units:
        raise UserError(f"bad {what} '{text}': unknown unit '{unit}' (use e.g. {examples})")
    value = float(number) * units[unit]
    if not math.isfinite(value):
        raise UserError(f"bad {what} '{text}': must be a finite number")
    return value, unit


def parse_size(text: str, what: str = "size") -> int:
    """A whole number of bytes: `64MiB`, `32KiB`, `1GB`, `512B` or a plain byte count."""
    value, _ = _quantity(text, what, _SIZE_UNITS | {"": 1}, "32KiB, 4MiB, 1GB, 512B or a byte count")
    if value < 1:
        raise UserError(f"bad {what} '{text}': must be at least 1 byte")
    if value != int(value):
        raise UserError(f"bad {what} '{text}': not a whole number of bytes")
    if value > 2**50:
        raise UserError(f"bad {what} '{text}': more than 1 PiB")
    return int(value)


def parse_bandwidth(text: str) -> float:
    """Bytes per second: `16GB/s`, `16GiB/s`, `100Gbit/s`, or a plain number of bytes/s."""
    value, _ = _quantity(
        text,
        "bandwidth",
        _BANDWIDTH_UNITS | {"": 1},
        "16GB/s, 16GiB/s, 100Gbit/s or a plain number of bytes/s",
    )
    if not 1 <= value <= 1e18:
        raise UserError(f"bad bandwidth '{text}': must be between 1 B/s and 1e18 B/s")
    return value


def parse_latency(text: str) -> float:
    """Seconds: `150ns`, `1.5us`, `1ms`, `0.001s` or a plain number of seconds."""
    value, _ = _quantity(
        text, "latency", _LATENCY_UNITS | {"": 1}, "150ns, 1.5us, 1ms or a plain number of seconds"
    )
    if value < 0:
        raise UserError(f"bad latency '{text}': must be >= 0")
    if value > 1e6:
        raise UserError(f"bad latency '{text}': more than 10^6 seconds per link")
    return value


def check_output(path: str | Path, what: str) -> Path:
    """An output file that can be written: its directory exists, and it is not a directory."""
    out = Path(path)
    parent = out.parent
    if out.name in ("", ".", ".."):
        raise UserError(f"{what} '{path}' is not a file name")
    if not parent.is_dir():
        raise UserError(f"{what} '{path}': directory '{parent}' does not exist")
    if out.is_dir():
        raise UserError(f"{what} '{path}' is a directory")
    return out


def write_json_atomic(path: str | Path, obj) -> Path:
    """Write JSON to a temporary name in the same directory, then rename it over `path`."""
    import json
    import os

    out = check_output(path, "--json")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError as e:
        raise UserError(f"cannot write --json '{path}': {e}") from None
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write --json '{path}': {e.strerror or e}") from None
    return out


def check_plot_path(path: str | Path, what: str = "--plot") -> Path:
    """A plot file in an existing directory, in a format matplotlib writes (none given: PNG)."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = check_output(path, what)
    fmt = out.suffix.lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt and fmt not in formats:
        raise UserError(
            f"{what} '{path}': unknown image format '.{fmt}' (use one of {', '.join(sorted(formats))})"
        )
    return out


def parse_stragglers(text: str, n: int) -> dict[int, float]:
    """`NODE:DELAY[,NODE:DELAY...]`, e.g. `3:20us,7:1ms`: nodes that start that much late."""
    out: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        node, sep, delay = part.partition(":")
        if not sep or not node.strip().isdigit():
            raise UserError(f"bad --straggler '{part}' (use NODE:DELAY, e.g. 3:20us)")
        i = int(node)
        if i >= n:
            raise UserError(f"bad --straggler '{part}': node {i} is not one of 0..{n - 1}")
        if i in out:
            raise UserError(f"bad --straggler '{text}': node {i} twice")
        out[i] = parse_latency(delay.strip())
    return out


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


RING_FAMILY = ("ring", "biring", "multiring", "ring2d")


def ring_family(net: Interconnect, collective: str = "allreduce") -> dict:
    """The ring schedules (one ring, two counter-rotating, edge-disjoint rings, 2D ring)
    that exist on `net` for `collective`: what MultiTree falls back to."""
    from . import COLLECTIVE_ALGORITHMS, build_schedule

    out = {}
    for name in RING_FAMILY:
        if name not in COLLECTIVE_ALGORITHMS[collective]:
            continue
        try:
            out[name] = build_schedule(name, net, collective)
        except UserError:  # not on this network (e.g. multiring off a torus)
            pass
    return out


def fastest_ring(seconds: dict[str, float]) -> str | None:
    """MultiTree's fallback rule: the ring schedule among `seconds` ({name: simulated time},
    multitree's included) that beats the trees, the fastest of them, or None."""
    rings = [k for k in RING_FAMILY if k in seconds]
    best = min(rings, key=seconds.__getitem__) if rings else None
    return best if best is not None and seconds[best] < seconds["multitree"] else None


def compare(
    net: Interconnect,
    schedules: dict,
    sizes: list[int],
    packet: int | None = None,
    cut_through: bool = True,
    lockstep: bool = True,
    collective: str = "allreduce",
    links: bool = False,
    timeline: int = 0,
    delays=None,
    model: str = "packet",
    fallback: bool = True,
) -> list[dict]:
    """One row per size and algorithm. Every row has the busiest link's utilization; with
    `links` also every link's bytes, busy seconds and utilization (lists in the order of
    `link_table(net)`), with `timeline=K` each link's utilization in K equal intervals.
    `model`: "packet" (every packet through every link) or "flow" (max-min fair flows,
    `collectives.flow`: for large sizes and node counts; no packets).

    `fallback`: MultiTree never does worse than the best ring schedule on `net` (ring,
    biring, multiring, ring2d, simulated too where not asked for): at a size where one is
    faster, the multitree row is that ring's run and says so (`fallback`: its name;
    `multitree_seconds`: the trees' own time, kept either way)."""
    if model not in ("packet", "flow"):
        raise UserError(f"bad model '{model}' (choose from packet, flow)")
    run = dict(schedules)  # what is simulated: the asked-for schedules and MultiTree's fallbacks
    if fallback and "multitree" in schedules:
        run |= {k: v for k, v in ring_family(net, collective).items() if k not in schedules}
    rows = []
    for size in sizes:
        bound = lower_bound_seconds(net, size, collective)
        ring_time = None
        per = {}
        for name, sched in run.items():
            if model == "flow":
                res = simulate_flows(sched, net, size, lockstep=lockstep, delays=delays, timeline=timeline)
            else:
                res = simulate(
                    sched,
                    net,
                    size,
                    packet_bytes=packet_for(size, packet),
                    cut_through=cut_through,
                    lockstep=lockstep,
                    delays=delays,
                    timeline=timeline,
                )
            per[name] = res
            if name == "ring":
                ring_time = res.seconds
        used = {name: name for name in schedules}
        own = per["multitree"].seconds if "multitree" in per else None
        if fallback and "multitree" in per:
            used["multitree"] = fastest_ring({k: r.seconds for k, r in per.items()}) or "multitree"
        for name in schedules:
            res = per[used[name]]
            util = res.link_utilization
            row = {
                    "collective": collective,
                    "size": size,
                    "algorithm": name,
                    "seconds": res.seconds,
                    "algbw_GBps": size / res.seconds / 1e9 if res.seconds else float("inf"),
                    "lower_bound_seconds": bound,
                    "ratio_to_bound": res.seconds / bound,
                    "speedup_over_ring": (ring_time / res.seconds) if ring_time else None,
                    "model": model,
                    "packet_bytes": packet_for(size, packet) if model == "packet" else None,
                    "steps": run[used[name]].steps,
                    "events": res.events,
                    "sim_wall_seconds": res.wall_seconds,
                    "busiest_link": int(util.argmax()),
                    "busiest_link_utilization": float(util.max()),
                }
            if name == "multitree":
                row["fallback"] = used[name] if used[name] != name else None
                row["multitree_seconds"] = own
            if links:
                row["link_bytes"] = res.link_bytes.tolist()
                row["link_busy_seconds"] = res.link_busy.tolist()
                row["link_utilization"] = util.tolist()
            if timeline:
                row["link_timeline"] = res.link_timeline.tolist()
            rows.append(row)
    return rows


def vertex_name(net: Interconnect, v: int) -> str:
    """node<i> for compute nodes, router<i> (direct networks) or switch<k> after them."""
    if v < net.n:
        return f"node{v}"
    return f"router{v - net.n}" if net.direct else f"switch{v - net.n}"


def link_table(net: Interconnect) -> list[dict]:
    """Every directed link: id, ends, kind (injection, ejection or network), bandwidth, latency."""
    out = []
    for k, (u, v, bw, lat) in enumerate(net.links):
        kind = "injection" if u < net.n else "ejection" if v < net.n else "network"
        out.append(
            {
                "id": k,
                "from": vertex_name(net, u),
                "to": vertex_name(net, v),
                "kind": kind,
                "bandwidth": bw,
                "latency": lat,
            }
        )
    return out


def print_table(net: Interconnect, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    what = rows[0]["collective"].replace("_", "-") if rows else "all-reduce"
    what = {"allreduce": "all-reduce", "allgather": "all-gather"}.get(what, what)
    t = Table(
        title=f"{what} on {net.name}: {net.bandwidth / 1e9:g} GB/s links, "
        f"{net.latency * 1e9:g} ns, {net.nis} NI(s) per node"
        + (", flow model" if rows and rows[0].get("model") == "flow" else "")
    )
    for col in ("size", "algorithm", "time", "algbw GB/s", "x bound", "speedup vs ring", "steps"):
        t.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in rows:
        sp = r["speedup_over_ring"]
        t.add_row(
            human(r["size"]),
            r["algorithm"] + (f" (-> {r['fallback']})" if r.get("fallback") else ""),
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
    ax.set_xlabel(f"{rows[0]['collective'] if rows else 'allreduce'} size (bytes)")
    ax.set_ylabel("time (us)")
    ax.set_title(f"{net.name}, {net.nis} NI(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..plots import save_figure

    return save_figure(fig, path)


def heatmap(net: Interconnect, rows: list[dict], path: str | Path) -> Path:
    """Link utilization at the largest size, one panel per algorithm. A mesh, torus or ring
    is drawn as its grid: each directed router link a coloured segment beside its reverse
    (wrap-around links as stubs at the border), each router's dot coloured by its node's
    busiest interface. Switched networks: a from × to matrix of every directed link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    size = max(r["size"] for r in rows)
    last = [r for r in rows if r["size"] == size]
    k = len(last)
    cols = min(k, 3)
    nrows = -(-k // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.6 * nrows), squeeze=False)
    cmap = plt.get_cmap("inferno")
    norm = matplotlib.colors.Normalize(0.0, 1.0)
    for ax, r in zip(axes.flat, last, strict=False):
        util = r["link_utilization"]
        ax.set_title(f"{r['algorithm']}: {r['seconds'] * 1e6:.1f} us", fontsize=10)
        if net.direct:
            _grid_heat(ax, net, util, cmap, norm, LineCollection)
        else:
            mat = np.full((net.vertices, net.vertices), np.nan)
            for lk, (u, v, *_rest) in enumerate(net.links):
                mat[u, v] = max(util[lk], 0 if np.isnan(mat[u, v]) else mat[u, v])
            ax.imshow(mat, cmap=cmap, norm=norm, interpolation="nearest")
            ax.axvline(net.n - 0.5, color="grey", lw=0.5)
            ax.axhline(net.n - 0.5, color="grey", lw=0.5)
            ax.set_xlabel(f"to (nodes 0..{net.n - 1}, then switches)")
            ax.set_ylabel("from")
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(f"link utilization, {human(size)} on {net.name}, {net.nis} NI(s)")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8)
    from ..plots import save_figure

    return save_figure(fig, path)


def _grid_heat(ax, net: Interconnect, util, cmap, norm, LineCollection) -> None:
    rows, cols = net.shape
    n = net.n

    def pos(router: int) -> tuple[float, float]:
        r, c = divmod(router - n, cols)
        return float(c), float(-r)

    segs, colors = [], []
    for lk, (u, v, *_rest) in enumerate(net.links):
        if u < n or v < n:
            continue
        (x0, y0), (x1, y1) = pos(u), pos(v)
        dx, dy = x1 - x0, y1 - y0
        if abs(dx) + abs(dy) > 1:  # a wrap-around link: a stub leaving the border
            dx, dy = -np.sign(dx) * 0.45, -np.sign(dy) * 0.45
        else:
            dx, dy = dx * 0.9, dy * 0.9
        # offset to the right of the direction of travel so both directions show
        ox, oy = dy * 0.08 / max(abs(dx) + abs(dy), 1e-9), -dx * 0.08 / max(abs(dx) + abs(dy), 1e-9)
        start = (x0 + 0.05 * np.sign(dx) + ox, y0 + 0.05 * np.sign(dy) + oy)
        segs.append([start, (x0 + dx + ox, y0 + dy + oy)])
        colors.append(cmap(norm(util[lk])))
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=2.5))
    inj = np.zeros(n)
    for lk, (u, _v, *_rest) in enumerate(net.links):
        if u < n:
            inj[u] = max(inj[u], util[lk])
    xs, ys = zip(*(pos(n + i) for i in range(n)), strict=True)
    ax.scatter(xs, ys, c=[cmap(norm(x)) for x in inj], s=25, edgecolors="grey", linewidths=0.5, zorder=3)
    ax.set_xlim(-0.7, cols - 0.3)
    ax.set_ylim(-rows + 0.3, 0.7)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
