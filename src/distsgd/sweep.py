"""`distsgd sweep`: every combination of a grid of config values × seeds, in parallel
processes, resumable, summarized over seeds; optionally the best value of one key (the
learning rate) per algorithm, so comparisons are tuned alike.

A sweep of `CONFIG` lives in `OUT/<name>/`: one run directory per grid point and seed
(`lr0.01-seed0`, ...), `sweep.json` and `sweep.md` (the summary table). Rerunning the same
sweep skips every run whose summary.json says finished with the same config (and every
run recorded as diverged with it), so a killed sweep completes only what is missing.

From Python (e.g. a benchmark): `run_sweep(config, {"algorithm.lr": [...]}, seeds=3,
select="lr")` returns a `SweepResult` (groups with mean ± std over seeds, the selection);
`pick(scores, higher_is_better)` is the selection rule on its own, for any measured grid.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import read_toml
from .errors import Diverged, UserError
from .overrides import Override, apply_overrides, parse_value, split_values, validate, write_atomic

METRICS = {  # name -> (label, higher is better)
    "test_acc": ("test accuracy", True),
    "test_loss": ("test loss", False),
    "val_acc": ("validation accuracy", True),
    "val_loss": ("validation loss", False),
    "train_loss": ("training loss", False),
    "steps_to_target": ("steps to target", False),
    "sim_seconds_to_target": ("simulated s to target", False),
    "bytes_per_worker": ("bytes sent per worker", False),
    "sim_seconds": ("simulated s", False),
    "wall_seconds": ("wall s", False),
}
SELECT_METRICS = ("auto", *METRICS)
RESERVED = ("name", "out_dir", "source_dir")


class SweepTable(BaseModel):
    """The `[sweep]` table of a config file (the command line's options win)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    grid: dict = Field(default_factory=dict, description="KEY = [values]; keys dotted or nested tables")
    seeds: int = Field(1, ge=1, description="seeds per grid point: seed, seed + 1, ...")
    target: float | None = Field(None, description="test accuracy whose first reaching is timed")
    select: str | None = Field(None, description="grid key whose best value is picked per algorithm, e.g. lr")
    metric: Literal[SELECT_METRICS] = Field("auto", description="what --select maximizes or minimizes")
    widen: int = Field(0, ge=0, description="values added past an edge while the selected best sits on it")


@dataclass(frozen=True)
class Point:
    values: tuple  # ((key, value), ...) of the grid but the seed, in grid order
    seed: int
    label: str  # the run directory's name
    group: str  # the label less the seed: runs of one group differ only in their seed


@dataclass
class SweepResult:
    root: Path
    grid: dict
    seeds: list[int]
    runs: list[dict]  # per run: label, seed, values, status, metrics
    groups: list[dict]  # per grid point: values, n, metrics {name: {mean, std, n}}
    selection: list[dict] = field(default_factory=list)
    widening: list[dict] = field(default_factory=list)  # per family: values added past an edge, why it stopped
    target: float | None = None
    ran: int = 0
    skipped: int = 0


# -- the grid ------------------------------------------------------------------------------


def parse_grid(texts: list[str]) -> dict[str, list]:
    """`--grid KEY=V1,V2,...` options -> {KEY: [values]} (values read as TOML, like `-s`)."""
    grid: dict[str, list] = {}
    for text in texts:
        key, eq, values = text.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", key):
            raise UserError(f"bad --grid '{text}': expected KEY.PATH=V1,V2,... (e.g. algorithm.lr=0.01,0.1)")
        parts = split_values(values)
        if not parts:
            raise UserError(f"--grid {text}: empty grid (give KEY=V1,V2,...)")
        if key in grid:
            raise UserError(f"--grid {key} is given twice")
        grid[key] = [parse_value(p) for p in parts]
    return grid


def flatten_grid(table: dict, prefix: str = "") -> dict[str, list]:
    """A `[sweep.grid]` table ({"algorithm": {"lr": [..]}} or {"algorithm.lr": [..]}) -> dotted keys."""
    out: dict[str, list] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_grid(v, key + "."))
        elif not isinstance(v, list):
            raise UserError(f"sweep.grid.{key}: expected a list of values, got {v!r}")
        elif not v:
            raise UserError(f"sweep.grid.{key}: empty grid")
        else:
            out[key] = v
    return out


def check_grid(grid: dict[str, list], seeds: int) -> None:
    for key, values in grid.items():
        shown = [_hashable(v) for v in values]
        twice = next((v for i, v in enumerate(values) if shown[i] in shown[:i]), None)
        if twice is not None:
            raise UserError(f"grid {key} lists {_show(twice)} twice")
        if key in RESERVED:
            raise UserError(f"cannot sweep over {key}: the sweep names its runs and folders")
        if key == "seed" and seeds > 1:
            raise UserError("give either --grid seed=... or --seeds N, not both")
    if not grid and seeds < 2:
        raise UserError("nothing to sweep: give --grid KEY=V1,V2,... (or a [sweep.grid] table) or --seeds N > 1")


def points(grid: dict[str, list], seeds: list[int]) -> list[Point]:
    """The product of the grid's values × seeds (or the grid's `seed` values), each with a
    folder name from its values."""
    keys = [k for k in grid if k != "seed"]
    shorts = _short_keys(keys)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    groups = [
        "-".join(f"{'' if k.endswith('.name') else shorts[k]}{_slug(v)}" for k, v in zip(keys, c, strict=True))
        for c in combos
    ]
    if len(set(groups)) < len(groups):  # values that read the same in a folder name: number them
        groups = [f"{i:03d}-{g}" for i, g in enumerate(groups)]
    out = []
    for combo, group in zip(combos, groups, strict=True):
        for seed in grid.get("seed", seeds):
            label = f"{group}-seed{_slug(seed)}" if group else f"seed{_slug(seed)}"
            out.append(Point(tuple(zip(keys, combo, strict=True)), seed, label, group or "base"))
    return out


def _short_keys(keys: list[str]) -> dict[str, str]:
    """algorithm.lr -> lr, algorithm.name -> algorithm; the whole key where two would read alike."""
    last = [".".join(k.split(".")[-2:-1]) if k.endswith(".name") else k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _slug(v) -> str:
    if isinstance(v, bool):
        text = str(v).lower()
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, list | dict):
        text = json.dumps(v, separators=(",", ":"))
    else:
        text = str(v)
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_") or "_"


# -- planning and running ------------------------------------------------------------------


@dataclass
class Plan:
    root: Path
    grid: dict
    seeds: list[int]
    jobs: list[tuple[Point, dict, object]]  # point, TOML data, validated RunConfig
    source: str
    source_dir: str | None


def plan(
    base: dict,
    grid: dict[str, list],
    seeds: int,
    out: str | Path | None,
    *,
    source: str = "config",
    source_dir: str | None = None,
    overrides: list[Override] = (),
    grid_flag: str = "--grid",
    keep=None,
) -> Plan:
    """Validate every run of the sweep before any starts; a bad value is one line naming the
    grid value (or override) that made it."""
    check_grid(grid, seeds)
    first = validate(apply_overrides(base, list(overrides)), source, source_dir, list(overrides))
    seed_list = [first.seed + i for i in range(seeds)]
    root = Path(out if out is not None else first.out_dir) / first.name
    jobs = []
    for p in points(grid, seed_list):
        chosen = [*p.values, *((("seed", p.seed),) if "seed" in grid else ())]
        blame = [*overrides, *(Override(k, v, f"{k}={_show(v)}", grid_flag) for k, v in chosen)]
        extra = [Override(k, v, "", grid_flag) for k, v in p.values]
        extra += [Override("seed", p.seed, "", "--seeds"), Override("name", f"{first.name}-{p.label}", "", "sweep")]
        data = apply_overrides(base, [*overrides, *extra])
        cfg = validate(data, source, source_dir, blame)
        if keep is None or keep(p, cfg):
            jobs.append((p, data, cfg))
    seed_list = sorted({p.seed for p, _, _ in jobs}, key=str)
    return Plan(root, grid, seed_list, jobs, source, source_dir)


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def _cell(v) -> str:
    return v if isinstance(v, str) else _show(v)


def _config_json(cfg) -> dict:
    return json.loads(json.dumps(cfg.model_dump(), default=str))


def run_status(run_dir: Path, cfg) -> str:
    """'finished' or 'diverged' (with this config), else 'todo'."""
    want = _config_json(cfg)
    for name, key in (("summary.json", "finished"), ("diverged.json", "diverged")):
        try:
            doc = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get(key) and doc.get("config") == want:
            return "finished" if name == "summary.json" else "diverged"
    return "todo"


def _execute(job: dict) -> dict:
    """One run (in this process or a pool's); a divergence is recorded as the run's outcome, any other error ends the sweep."""
    from .api import run_config

    cfg = validate(job["data"], job["source"], job["source_dir"])
    run_dir = Path(job["run_dir"])
    (run_dir / "diverged.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = "finished"
    try:
        resume = (run_dir / "checkpoint.pt").exists()
        try:
            run_config(cfg, run_dir, resume=resume, progress=False, sinks=_sinks(job, run_dir))
        except UserError:
            if not resume:
                raise
            run_config(cfg, run_dir, progress=False, sinks=_sinks(job, run_dir))  # a foreign checkpoint: anew
    except Diverged as e:
        status = "diverged"
        doc = {"diverged": True, "message": str(e), "config": _config_json(cfg)}
        write_atomic(run_dir / "diverged.json", json.dumps(doc, indent=2))
    return {"label": run_dir.name, "status": status, "seconds": time.perf_counter() - t0}


def _sinks(job: dict, run_dir: Path) -> list:
    if not job.get("tensorboard"):
        return []
    from .sinks import TensorBoardSink

    return [TensorBoardSink(run_dir / "tensorboard")]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def default_jobs() -> int:
    from .environment import cores

    return max(1, cores() // 2)


def execute(p: Plan, *, jobs: int | None = None, tensorboard: bool = False, say=print) -> tuple[int, int]:
    """Run every run of the plan not yet done; (ran, skipped). One process per job, one
    thread per run; `jobs=1` runs them here, one after another."""
    jobs = jobs or default_jobs()
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if tensorboard:
        from .sinks import TensorBoardSink

        TensorBoardSink(p.root)  # says what to install before anything runs
    todo = []
    for point, data, cfg in p.jobs:
        run_dir = p.root / point.label
        status = run_status(run_dir, cfg)
        if status == "todo":
            todo.append({"data": data, "source": p.source, "source_dir": p.source_dir, "run_dir": str(run_dir),
                         "tensorboard": tensorboard})
    skipped = len(p.jobs) - len(todo)
    if skipped:
        say(f"{skipped} of {len(p.jobs)} runs already done in {p.root}: skipped")
    done = 0

    def report(r: dict) -> None:
        nonlocal done
        done += 1
        say(f"[{done}/{len(todo)}] {r['label']}: {r['status']} ({r['seconds']:.1f} s)")

    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            report(_execute(job))
        return len(todo), skipped
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_one_thread)
    try:
        futures = [pool.submit(_execute, job) for job in todo]
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                report(f.result())  # a UserError of a run ends the sweep with its line
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return len(todo), skipped


# -- summarizing ---------------------------------------------------------------------------


def run_metrics(run_dir: str | Path, target: float | None = None) -> dict:
    """Final metrics of a run directory (None where it has none): test/val accuracy and loss,
    bytes sent per worker, simulated and wall seconds, and steps and simulated seconds to the
    first evaluation with test accuracy >= `target`."""
    d = Path(run_dir)
    summary = _read_json(d / "summary.json") or {}
    rows = _read_rows(d / "metrics.jsonl")
    final = summary.get("final") or (rows[-1] if rows else {})
    out = {k: _number(final.get(k)) for k in ("test_acc", "test_loss", "val_acc", "val_loss", "train_loss")}
    out["bytes_per_worker"] = _number(final.get("bytes_sent_per_worker"))
    out["sim_seconds"] = _number(final.get("sim_seconds"))
    out["wall_seconds"] = _number(summary.get("wall_seconds", final.get("wall_seconds")))
    if target is not None:
        hit = next((r for r in rows if _number(r.get("test_acc")) is not None and r["test_acc"] >= target), None)
        out["steps_to_target"] = _number(hit["step"]) if hit else None
        out["sim_seconds_to_target"] = _number(hit.get("sim_seconds")) if hit else None
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_rows(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            break
        if isinstance(r, dict):
            rows.append(r)
    return rows


def _number(v):
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def spread(values: list) -> dict:
    """mean, sample standard deviation (None for one value) and n of the values that exist."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def aggregate(runs: list[dict]) -> list[dict]:
    """Group runs by their grid values (over seeds); each metric as mean ± std over the
    finished seeds."""
    groups: dict[str, dict] = {}
    for r in runs:
        g = groups.setdefault(
            r["group"],
            {"group": r["group"], "values": r["values"], "algorithm": r.get("algorithm"), "runs": [],
             "finished": 0, "diverged": 0, "missing": 0},
        )
        g["runs"].append(r["label"])
        g[{"finished": "finished", "diverged": "diverged"}.get(r["status"], "missing")] += 1
    for g in groups.values():
        members = [r for r in runs if r["group"] == g["group"] and r["status"] == "finished"]
        names = {k for r in members for k, v in r["metrics"].items() if v is not None}
        g["metrics"] = {m: spread([r["metrics"].get(m) for r in members]) for m in METRICS if m in names}
    return list(groups.values())


def resolve_key(select: str, keys: list[str]) -> str:
    if select in keys:
        return select
    hits = [k for k in keys if k.rsplit(".", 1)[-1] == select]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UserError(f"--select {select}: not a key of the grid ({', '.join(keys) or 'the grid is empty'})")
    raise UserError(f"--select {select}: ambiguous ({', '.join(hits)}): give the whole key")


def pick(scores: dict, higher_is_better: bool) -> tuple[object, str | None]:
    """The best key of {value: score or None} (None: diverged or never reached; worst), and
    whether it sits on an edge of the numeric grid ('smallest', 'largest', 'only value')."""
    if not scores:
        raise UserError("nothing to select from")
    order = list(scores)

    def rank(v):
        s = scores[v]
        return (s is None, -s if (s is not None and higher_is_better) else (s or 0.0), order.index(v))

    best = min(order, key=rank)
    numeric = [v for v in order if isinstance(v, int | float) and not isinstance(v, bool)]
    edge = None
    if len(order) == 1:
        edge = "only value"
    elif len(numeric) == len(order):
        edge = "smallest" if best == min(numeric) else "largest" if best == max(numeric) else None
    return best, edge


def select(groups: list[dict], key: str, metric: str = "auto") -> list[dict]:
    """Per algorithm (and per value of every other grid key): the best value of `key` by
    `metric` ('auto': final validation accuracy where the runs have one, else validation
    loss, else final test loss). A grid point with a diverged or missing seed ranks last."""
    if metric == "auto":
        have = {m for g in groups for m in g["metrics"]}
        metric = next((m for m in ("val_acc", "val_loss") if m in have), "test_loss")
    higher = METRICS[metric][1]
    families: dict[tuple, list[dict]] = {}
    for g in groups:
        families.setdefault(family(g.get("algorithm"), g["values"], key), []).append(g)
    out = []
    for (algorithm, fixed), members in families.items():
        scores, by_value = {}, {}
        for g in members:
            value = dict(g["values"])[key]
            v = _hashable(value)
            s = g["metrics"].get(metric, {}).get("mean")
            scores[v] = None if (g["diverged"] or g["missing"]) else s
            by_value[v] = g
        best, edge = pick(scores, higher)
        winner = by_value[best]
        out.append({
            "algorithm": algorithm,
            "fixed": {k: json.loads(v) for k, v in fixed},
            "key": key,
            "best": dict(winner["values"])[key],
            "metric": metric,
            "score": winner["metrics"].get(metric),
            "edge": edge,
            "group": winner["group"],
        })
    return out


def family(algorithm, values, key: str) -> tuple:
    """Runs that compete for the best value of `key`: the same algorithm and the same values
    of every other grid key."""
    return algorithm, tuple((k, json.dumps(v)) for k, v in values if k not in (key, "algorithm.name"))


def next_value(values: list, edge: str):
    """The value one step past the `edge` of a numeric grid: ×/÷ the ratio of the two values
    at that edge when all are positive, else ± their difference; integers stay integers.
    (value, None), or (None, why not)."""
    if len(values) < 2:
        return None, "one value gives no step to widen by"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None, "the values are not numbers"
    xs = sorted(values)
    a, b = (xs[1], xs[0]) if edge == "smallest" else (xs[-2], xs[-1])
    if all(v > 0 for v in xs):
        v = b * (b / a)
    else:
        v = b + (b - a)
    if all(isinstance(x, int) for x in xs):
        v = int(round(v))
        if v in xs:
            v = b + (1 if edge == "largest" else -1)
    elif isinstance(v, float):
        v = float(f"{v:.6g}")
    if v in xs:
        return None, f"no value past {b} to try"
    return v, None


def _hashable(v):
    return json.dumps(v) if isinstance(v, list | dict) else v


def collect(p: Plan, target: float | None) -> list[dict]:
    runs = []
    for point, _, cfg in p.jobs:
        run_dir = p.root / point.label
        status = run_status(run_dir, cfg)
        runs.append({
            "label": point.label,
            "group": point.group,
            "seed": point.seed,
            "values": [[k, v] for k, v in point.values],
            "algorithm": cfg.algorithm.get("name"),
            "status": {"todo": "missing"}.get(status, status),
            "metrics": run_metrics(run_dir, target) if status == "finished" else {},
        })
    return runs


def summarize(p: Plan, *, target=None, select_key=None, metric="auto", ran=0, skipped=0) -> SweepResult:
    runs = collect(p, target)
    groups = aggregate(runs)
    chosen = select(groups, resolve_key(select_key, list(p.grid)), metric) if select_key else []
    return SweepResult(p.root, p.grid, p.seeds, runs, groups, chosen, target=target, ran=ran, skipped=skipped)


def write_summary(res: SweepResult) -> tuple[Path, Path]:
    target = res.target
    doc = {
        "grid": res.grid,
        "seeds": res.seeds,
        "target": target,
        "groups": res.groups,
        "selection": res.selection,
        "widening": res.widening,
        "runs": res.runs,
    }
    js = write_atomic(res.root / "sweep.json", json.dumps(doc, indent=2, default=str))
    md = write_atomic(res.root / "sweep.md", markdown(res, target))
    return js, md


# -- tables --------------------------------------------------------------------------------


def columns(groups: list[dict], target: float | None) -> list[tuple[str, str, float]]:
    """(metric, header, scale) of the summary table: the metrics some group has."""
    cols = [("test_acc", "test acc", 1.0), ("test_loss", "test loss", 1.0), ("val_acc", "val acc", 1.0)]
    if target is not None:
        cols += [("steps_to_target", f"steps to {target:g}", 1.0), ("sim_seconds_to_target", f"sim s to {target:g}", 1.0)]
    cols += [("bytes_per_worker", "MB/worker", 1e-6), ("sim_seconds", "sim s", 1.0), ("wall_seconds", "wall s", 1.0)]
    present = {m for g in groups for m in g["metrics"]}
    return [c for c in cols if c[0] in present]


def fmt(stat: dict | None, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    mean = stat["mean"] * scale
    text = f"{mean:.4g}"
    if stat.get("std") is not None:
        text += f" ± {stat['std'] * scale:.2g}"
    return text


def table_rows(res: SweepResult, target: float | None) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in res.grid if k != "seed"]
    shorts = _short_keys(keys)
    cols = columns(res.groups, target)
    header = [*(shorts[k] for k in keys), "n", *(h for _, h, _ in cols)]
    rows = []
    for g in res.groups:
        values = dict((k, v) for k, v in g["values"])
        n = f"{g['finished']}" + (f" ({g['diverged']} diverged)" if g["diverged"] else "")
        n += f" ({g['missing']} missing)" if g["missing"] else ""
        reached = ""
        cells = []
        for m, _, scale in cols:
            stat = g["metrics"].get(m)
            if m.endswith("_to_target") and stat is not None and stat["n"] < g["finished"]:
                reached = f" [{stat['n']}/{g['finished']} reached]"
            cells.append(fmt(stat, scale) + (reached if m.endswith("_to_target") else ""))
            reached = ""
        rows.append([*(_cell(values[k]) for k in keys), n, *cells])
    return header, rows


def selection_lines(res: SweepResult) -> list[str]:
    lines = []
    for s in res.selection:
        who = s["algorithm"] or "run"
        if s["fixed"]:
            who += " (" + ", ".join(f"{k}={_show(v)}" for k, v in s["fixed"].items()) + ")"
        label, _ = METRICS[s["metric"]]
        line = f"best {s['key']} for {who}: {_show(s['best'])} by {label} {fmt(s['score'])}"
        if s["edge"] in ("smallest", "largest"):
            line += f" (on the grid's edge: the {s['edge']} value; widen the grid)"
        w = next((w for w in res.widening if w["algorithm"] == s["algorithm"] and w["fixed"] == s["fixed"]), None)
        if w and w["added"]:
            line += f"; widened by {', '.join(map(_show, w['added']))}"
        if w and w["stopped"]:
            line += f"; widening stopped: {w['stopped']}"
        if s["metric"].startswith("test_"):
            line += " [selected on the test split: set task.validation to hold out a validation split]"
        elif s["edge"]:
            line += " (the only value in the grid)"
        lines.append(line)
    return lines


def markdown(res: SweepResult, target: float | None) -> str:
    header, rows = table_rows(res, target)
    out = [f"# Sweep {res.root.name}", "", f"seeds: {', '.join(map(str, res.seeds))}; mean ± std over seeds", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if res.selection:
        out += ["", *(f"- {line}" for line in selection_lines(res))]
    return "\n".join(out) + "\n"


def print_summary(res: SweepResult, target: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(res, target)
    table = Table(title=f"{res.root} (mean ± std over seeds)")
    for h in header:
        table.add_column(h, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for line in selection_lines(res):
        console.print(line, markup=False)


# -- the whole sweep -----------------------------------------------------------------------


def run_sweep(
    config: str | Path | dict,
    grid: dict[str, list] | None = None,
    *,
    seeds: int | None = None,
    out: str | Path | None = None,
    jobs: int | None = None,
    target: float | None = None,
    select: str | None = None,
    metric: str | None = None,
    tensorboard: bool = False,
    overrides: list[Override] = (),
    widen: int | None = None,
    say=print,
) -> SweepResult:
    """Plan, run what is missing, summarize and write sweep.json and sweep.md. `config` is a
    TOML file or its dict; its `[sweep]` table fills the arguments left at None (the grid
    is the table's plus `grid`)."""
    if isinstance(config, dict):
        base, source, source_dir = dict(config), "config", None
    else:
        base, source, source_dir = read_toml(config), str(config), str(Path(config).resolve().parent)
    table = sweep_table(base.pop("sweep", None), source)
    grid = {**flatten_grid(table.grid), **(grid or {})}
    seeds = seeds if seeds is not None else table.seeds
    target = target if target is not None else table.target
    select = select or table.select
    metric = metric or table.metric
    widen = widen if widen is not None else table.widen
    if widen < 0:
        raise UserError(f"--widen must be >= 0, got {widen}")
    if widen and not select:
        raise UserError("--widen extends the grid past the best value of --select KEY: give --select")
    if metric not in SELECT_METRICS:
        raise UserError(f"unknown metric '{metric}' (choose from {', '.join(SELECT_METRICS)})")
    p = plan(base, grid, seeds, out, source=source, source_dir=source_dir, overrides=list(overrides))
    if select:
        resolve_key(select, list(p.grid))
    ran, skipped = execute(p, jobs=jobs, tensorboard=tensorboard, say=say)
    res = summarize(p, target=target, select_key=select, metric=metric, ran=ran, skipped=skipped)
    if widen:
        res = _widen(res, base, grid, seeds, out, source, source_dir, list(overrides), widen,
                     dict(jobs=jobs, tensorboard=tensorboard, say=say), dict(target=target, select_key=select, metric=metric))
    write_summary(res)
    return res


def _widened_plan(base, grid, key, added, new, seeds, out, source, source_dir, overrides):
    """(the plan of the grid with every family's added values, {}), or (None, {family: why})
    for the families in `new` whose newest value the config refuses."""

    def plan_with(extra: dict):
        wide = {**grid, key: [*grid[key], *sorted({v for vs in extra.values() for v in vs} - set(grid[key]))]}

        def keep(point, cfg):
            value = dict(point.values)[key]
            return value in grid[key] or value in extra.get(family(cfg.algorithm.get("name"), point.values, key), [])

        return plan(base, wide, seeds, out, source=source, source_dir=source_dir, overrides=overrides, keep=keep)

    try:
        return plan_with(added), {}
    except UserError:
        refused = {}
        for fam in new:
            try:
                plan_with({fam: added[fam][-1:]})
            except UserError as e:
                refused[fam] = str(e)
        if not refused:
            raise
        return None, refused


def _widen(res: SweepResult, base, grid, seeds, out, source, source_dir, overrides, widen: int, run_kw, sum_kw) -> SweepResult:
    """While a family's selected best sits on an edge of its values of the selected key, add
    the next value past that edge for that family alone (at most `widen` per family), run
    it over the seeds and select again; record what was added and why widening stopped."""
    key = resolve_key(sum_kw["select_key"], list(grid))
    added: dict[tuple, list] = {}
    stopped: dict[tuple, str] = {}
    info: dict[tuple, dict] = {}
    ran, skipped = res.ran, res.skipped
    refused_once: set = set()  # families whose next value the config refused: widening ends there
    while True:
        new = []
        for s in res.selection:
            fam = (s["algorithm"], tuple((k, json.dumps(v)) for k, v in s["fixed"].items()))
            info[fam] = {"algorithm": s["algorithm"], "fixed": s["fixed"]}
            if s["edge"] not in ("smallest", "largest") or fam in refused_once:
                continue
            if len(added.get(fam, [])) >= widen:
                stopped[fam] = f"still at the {s['edge']} value {_show(s['best'])} after {widen} added (raise --widen)"
                continue
            v, why = next_value([*grid[key], *added.get(fam, [])], s["edge"])
            if v is None:
                stopped[fam] = why
                continue
            added.setdefault(fam, []).append(v)
            new.append(fam)
        if not new:
            break
        p = None
        while new:
            p, refused = _widened_plan(base, grid, key, added, new, seeds, out, source, source_dir, overrides)
            if p is not None:
                break
            for fam, why in refused.items():  # a value past the edge the config refuses: never run
                stopped[fam] = f"the next value {_show(added[fam].pop())} is refused: {why}"
                if not added[fam]:
                    del added[fam]
                new.remove(fam)
                refused_once.add(fam)
        if p is None:
            break
        r, k = execute(p, **run_kw)
        ran, skipped = ran + r, skipped + k - len(res.runs)  # the runs of the last plan were all done here or before
        res = summarize(p, **sum_kw, ran=ran, skipped=skipped)
    res.widening = [
        {**info[fam], "key": key, "added": added.get(fam, []), "stopped": stopped.get(fam)}
        for fam in info if fam in added or fam in stopped
    ]
    res.grid = {**grid, key: sorted({*grid[key], *(v for vs in added.values() for v in vs)})}
    return res


def sweep_table(table, source: str) -> SweepTable:
    if table is None:
        return SweepTable()
    if not isinstance(table, dict):
        raise UserError(f"{source}: sweep: expected a table")
    try:
        return SweepTable.model_validate(table)
    except ValidationError as err:
        from .registry import one_line

        raise UserError(f"{source}: sweep.{one_line(err)}".replace("unknown option", "unknown key")) from None
