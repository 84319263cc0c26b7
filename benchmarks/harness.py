"""The claim benchmarks' harness: every method and baseline tuned alike, figures with spread.

Tuning. A method is tuned on one key (the learning rate, or a method's own knob) by the
mean of a validation score over >= 2 seeds; a value with a diverged seed ranks last, and
while the best sits on an edge of the values tried the next value past that edge is tried
(×/÷ the edge's ratio, `distsgd.sweep.next_value`) up to `widen` times; where it stops on
an edge the record says why. Two ways in, the same rules:

- `tune_config(label, config, values)`: a run config (dict) of a built-in task with a
  `task.validation` fraction, run by `distsgd.sweep.run_sweep` (parallel processes,
  resumable: finished runs under `benchmarks/.runs/` are not rerun), selected by the
  sweep's validation accuracy (else validation loss);
- `tune(label, measure, values)`: any benchmark's own `measure(value, seed)` returning a
  lower-is-better score on validation data, None when the run diverged; measured points are
  kept in a JSON cache so a stopped benchmark resumes.

Final figures. `final_config` / `final` run the chosen setting on >= 3 fresh seeds (100,
101, ...) and `stats` gives mean, sample std, n, a 95% Student-t interval and how many
seeds diverged (a diverged seed is never averaged in as a number). `verdict(a, b)` calls a
difference a win only when the two intervals do not overlap.

Figures and rechecks. Every harnessed benchmark puts its headline figures in its results
JSON under "figures" ({name: `stats`}), and takes `--recheck PATH`: no tuning (the
committed JSON's settings), one fresh seed (`RECHECK_SEED`) of each figure's final runs,
written by `write_recheck(PATH, {name: value})`. `benchmarks/reproduce.py --check` runs
those and reports every figure outside its 95% prediction interval (`predict`).

Timing. `interleave(fns, baseline)` runs every contender and the baseline round by round
(the order rotating), so drifts of a shared machine hit them alike, and reports the median
and quartiles of the per-round ratio to the baseline.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _common import RESULTS

from distsgd.sweep import next_value, pick, run_sweep

RUNS = Path(os.environ.get("DISTSGD_BENCH_RUNS", Path(__file__).resolve().parent / ".runs"))
TUNING_SEEDS = (0, 1)
FINAL_SEEDS = (100, 101, 102)
RECHECK_SEED = 200


# -- statistics ----------------------------------------------------------------------------


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy import stats as st

    return float(st.t.ppf(0.5 + level / 2, df))


def stats(values: list, level: float = 0.95) -> dict:
    """mean, sample std, n, a Student-t interval of the mean and the number of diverged
    (None or non-finite) values, which are left out of the rest."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    out = {"mean": None, "std": None, "n": len(xs), "ci": None, "diverged": len(values) - len(xs),
           "values": [None if v is None or not math.isfinite(v) else float(v) for v in values]}
    if not xs:
        return out
    out["mean"] = statistics.fmean(xs)
    if len(xs) > 1:
        out["std"] = statistics.stdev(xs)
        half = t_quantile(len(xs) - 1, level) * out["std"] / math.sqrt(len(xs))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def predict(s: dict, level: float = 0.95) -> list[float] | None:
    """The interval where one more draw should fall (Student t prediction interval:
    mean ± t·std·√(1 + 1/n)); None without a spread."""
    if s.get("std") is None or s.get("n", 0) < 2:
        return None
    half = t_quantile(s["n"] - 1, level) * s["std"] * math.sqrt(1 + 1 / s["n"])
    return [s["mean"] - half, s["mean"] + half]


def write_recheck(path: str | Path, values: dict) -> None:
    """A recheck's fresh figures ({name: value, None: diverged}), for reproduce.py."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"figures": values}, indent=2))
    os.replace(tmp, path)


def verdict(a: dict, b: dict, higher_is_better: bool = True) -> str:
    """'better', 'worse' or 'tie' for `a` against `b` (two `stats`): better or worse only when
    the 95% intervals do not overlap; a side whose every seed diverged loses."""
    if a["mean"] is None or b["mean"] is None:
        return "tie" if a["mean"] is None and b["mean"] is None else ("worse" if a["mean"] is None else "better")
    if a["ci"] is None or b["ci"] is None:
        return "tie"
    lo_a, hi_a = a["ci"]
    lo_b, hi_b = b["ci"]
    if lo_a > hi_b:
        return "better" if higher_is_better else "worse"
    if hi_a < lo_b:
        return "worse" if higher_is_better else "better"
    return "tie"


def show(s: dict, digits: int = 3, scale: float = 1.0) -> str:
    """'0.873 ± 0.004 (n 3)', with 'k diverged' when some were; 'diverged' when all were."""
    if s["mean"] is None:
        return "diverged" if s["diverged"] else "–"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["std"] is not None:
        text += f" ± {s['std'] * scale:.{digits}f}"
    if s["diverged"]:
        text += f" ({s['diverged']} of {s['n'] + s['diverged']} diverged)"
    return text


# -- tuning through distsgd sweep ----------------------------------------------------------


def _quiet(_line: str) -> None:
    pass


def tune_config(label: str, config: dict, values: list, *, key: str = "algorithm.lr", bench: str = "bench",
                seeds: int = len(TUNING_SEEDS), widen: int = 6, jobs: int = 2, say=_quiet) -> dict:
    """Tune `key` of a run config on its validation split over `seeds` seeds (seed 0, 1, ...),
    widening past edges; the record: best, its score, whether it sits on an edge and why
    widening stopped, and every value's score with the number of diverged seeds."""
    if not config.get("task", {}).get("validation"):
        raise ValueError(f"{label}: tuning needs task.validation (never select on the test split)")
    from distsgd.overrides import Override, apply_overrides

    cfg = apply_overrides({**config, "name": label, "seed": TUNING_SEEDS[0]},
                          [Override(key, values[0], f"{key}={values[0]}", "tune")])  # the grid sets it per run
    res = run_sweep(cfg, {key: list(values)}, seeds=seeds, out=RUNS / bench / "tune", jobs=jobs, select=key,
                    widen=widen, say=say)
    (sel,) = res.selection
    widening = res.widening[0] if res.widening else {"added": [], "stopped": None}
    scores = {}
    for g in res.groups:
        value = dict(g["values"])[key]
        m = g["metrics"].get(sel["metric"], {})
        scores[f"{value:g}"] = {"mean": m.get("mean"), "std": m.get("std"), "seeds": g["finished"] + g["diverged"],
                                "diverged": g["diverged"]}
    return {"key": key, "best": sel["best"], "metric": sel["metric"], "edge": sel["edge"],
            "added": widening["added"], "stopped": widening["stopped"], "scores": scores, "seeds": seeds}


def final_config(label: str, config: dict, setting: dict, *, bench: str = "bench", seeds: tuple = FINAL_SEEDS,
                 jobs: int = 2, target: float | None = None, say=_quiet) -> dict:
    """The config with `setting` ({dotted key: value}) on fresh seeds: every run's final
    metrics (None for a diverged run) as lists, and their `stats`."""
    from distsgd.overrides import Override, apply_overrides

    cfg = apply_overrides({**config, "name": label, "seed": seeds[0]},
                          [Override(k, v, f"{k}={v}", "setting") for k, v in setting.items()])
    res = run_sweep(cfg, {"seed": list(seeds)}, seeds=1, out=RUNS / bench / "final", jobs=jobs, target=target, say=say)
    per_seed: dict[str, list] = {}
    for r in sorted(res.runs, key=lambda r: r["seed"]):
        for m in ("test_acc", "test_loss", "val_acc", "train_loss", "bytes_per_worker", "sim_seconds",
                  "steps_to_target", "sim_seconds_to_target"):
            per_seed.setdefault(m, []).append(r["metrics"].get(m) if r["status"] == "finished" else None)
    return {"setting": setting, "seeds": list(seeds),
            "runs": [str(res.root / r["label"]) for r in sorted(res.runs, key=lambda r: r["seed"])],
            **{m: stats(v) for m, v in per_seed.items() if any(x is not None for x in v) or m == "test_acc"}}


# -- tuning any measured function ----------------------------------------------------------


class Cache:
    """Measured points kept on disk by key, so a stopped benchmark resumes where it was."""

    def __init__(self, name: str):
        self.path = RUNS / f"{name}.cache.json"

    def get(self, key: str, compute: Callable[[], object]):
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        if key not in data:
            value = compute()
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        return data[key]


def tune(label: str, measure: Callable[[float, int], float | None], values: list, *, seeds: tuple = TUNING_SEEDS,
         widen: int = 6, cache: Cache | None = None, say=print) -> dict:
    """Tune one value by the mean over `seeds` of `measure(value, seed)` (lower is better,
    None: diverged; a value with a diverged seed ranks last), widening past edges."""
    values = list(values)
    scores: dict = {}
    added: list = []
    stopped = None

    def score(v):
        runs = []
        for s in seeds:
            key = json.dumps([label, v, s])
            runs.append(cache.get(key, lambda v=v, s=s: measure(v, s)) if cache else measure(v, s))
        ok = [r for r in runs if r is not None and math.isfinite(r)]
        return {"mean": statistics.fmean(ok) if len(ok) == len(runs) else None,
                "std": statistics.stdev(ok) if len(ok) > 1 else None,
                "seeds": len(runs), "diverged": len(runs) - len(ok), "runs": runs}

    while True:
        for v in values:
            if v not in scores:
                scores[v] = score(v)
                say(f"tune {label} {v:g}: {scores[v]['mean']}")
        best, edge = pick({v: scores[v]["mean"] for v in sorted(scores)}, higher_is_better=False)
        if edge not in ("smallest", "largest") or scores[best]["mean"] is None:
            if scores[best]["mean"] is None:
                stopped = "every value diverged"
            break
        if len(added) >= widen:
            stopped = f"still at the {edge} value {best:g} after {widen} added"
            break
        v, why = next_value(sorted(scores), edge)
        if v is None:
            stopped = why
            break
        added.append(v)
        values = [v]
    return {"best": best, "edge": edge, "added": added, "stopped": stopped, "seeds": list(seeds),
            "scores": {f"{v:g}": scores[v] for v in sorted(scores)}}


def final(measure: Callable[[int], float | None], seeds: tuple = FINAL_SEEDS, *, label: str = "",
          cache: Cache | None = None) -> dict:
    """`stats` of `measure(seed)` over fresh seeds (None: diverged)."""
    runs = [cache.get(json.dumps(["final", label, s]), lambda s=s: measure(s)) if cache else measure(s) for s in seeds]
    return {**stats(runs), "seeds": list(seeds)}


# -- timing --------------------------------------------------------------------------------


def interleave(fns: dict[str, Callable[[], None]], baseline: str, *, rounds: int = 15, calls: int = 1,
               warmup: int = 2) -> dict:
    """Seconds per call of each function, measured round by round with the order rotating,
    and per contender the median and quartiles of its per-round ratio to the baseline (the
    per-round seconds and ratios too)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            for _ in range(calls):
                fns[n]()
            times[n].append((time.perf_counter() - t) / calls)
    out = {}
    for n in names:
        s = spread([a / b for a, b in zip(times[n], times[baseline], strict=True)])
        out[n] = {"seconds_median": statistics.median(times[n]), "ratio_median": s["median"],
                  "ratio_q25": s["q25"], "ratio_q75": s["q75"], "rounds": rounds, "seconds": times[n],
                  "ratios": [a / b for a, b in zip(times[n], times[baseline], strict=True)]}
    return out


def spread(ratios: list[float]) -> dict:
    """Median, quartiles and range of per-round ratios."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q25": q[0], "q75": q[2], "min": min(ratios), "max": max(ratios)}


def edges(result: dict) -> list[str]:
    """Every tuning record in a results JSON whose winner sits on an edge: 'path: why'."""
    found = []

    def walk(x, path):
        if isinstance(x, dict):
            if "best" in x and "edge" in x and "scores" in x and x["edge"] in ("smallest", "largest"):
                found.append(f"{path}: best {x['best']} on the {x['edge']} edge ({x.get('stopped') or 'not widened'})")
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")

    walk(result, "")
    return found


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())
