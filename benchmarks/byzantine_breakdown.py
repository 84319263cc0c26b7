"""Breakdown table: final test accuracy of robust SGD for every aggregator × attack ×
f ∈ {2, 4, 8} of 20 workers (and clean, f = 0), on MNIST-1D with IID and Dirichlet(0.5)
shards, every rule tuned alike (benchmarks/harness.py's rules).

Setting: 1D-CNN, batch 32 per worker, worker momentum β = 0.9 (Karimireddy et al. 2021),
STEPS steps; the Byzantine workers are drawn with `pick_byzantine(20, f, seed)`. Every rule
runs without its (n, f) check so that the mean's collapse is visible. `bgmd_nomem` is BGMD
without its memory of the left-out coordinates, `bgmd_worker` BGMD with a memory per worker
(our variant): ablations, so they keep BGMD's tuned block fraction β.

Tuning, per data split and rule, on validation accuracy (task.validation = 0.1 of the
training samples, never the test split), mean over seeds 0 and 1:

1. the learning rate on clean data (f = 0): a user tunes before any attack is known; grid
   0.125…1 (×2), widened while the winner sits on an edge (a value with a diverged seed
   ranks last);
2. then, at that learning rate, the rule's own knob under attack: centered clipping's
   radius τ (grid 0.1, 1, 10) and BGMD's block fraction β (grid 0.05, 0.1, 0.2, at most 1),
   by the mean validation accuracy over the seven attacks at f = 4 (a diverged run counts
   as accuracy 0), widened the same way.

Final figures: every cell over the fresh seeds 100, 101, 102 (data split, initialisation,
batch order and the Byzantine ids follow the seed): mean ± std, 95% interval, and how many
runs diverged (NaN loss: never averaged as an accuracy).

Every run's result is kept in benchmarks/results/byzantine_breakdown.runs.json (committed),
so the benchmark resumes where a previous invocation stopped, on any machine; `--hours H`
stops starting new runs after H hours. Writes benchmarks/results/byzantine_breakdown.json
and .md (the README's table) once every cell has run; until then
byzantine_breakdown.partial.json and .md, where cells not yet run show "…".
Run: python benchmarks/byzantine_breakdown.py [--hours H] [--jobs 2]
     python benchmarks/byzantine_breakdown.py --table-only
     python benchmarks/byzantine_breakdown.py --recheck PATH   (one fresh seed of a few cells)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd.sweep import next_value, pick  # noqa: E402

N, FS, F_KNOB = 20, (2, 4, 8), 4
STEPS = 500
VALIDATION = 0.1
ROWS = {  # table row -> (rule, fixed options)
    "mean": ("mean", {}),
    "median": ("median", {}),
    "trimmed_mean": ("trimmed_mean", {}),
    "krum": ("krum", {}),
    "geomed": ("geomed", {}),
    "cclip": ("cclip", {}),
    "bgmd": ("bgmd", {}),
    "bgmd_nomem": ("bgmd", {"memory": "none"}),
    "bgmd_worker": ("bgmd", {"memory": "worker"}),
}
KNOBS = {"cclip": ("tau", (0.1, 1.0, 10.0), (0.0, math.inf)), "bgmd": ("beta", (0.05, 0.1, 0.2), (0.0, 1.0))}
KNOB_OF = {"bgmd_nomem": "bgmd", "bgmd_worker": "bgmd"}  # ablations keep BGMD's tuned β
ATTACKS = ("sign_flip", "scaled_flip", "gaussian", "alie", "ipm", "label_flip", "adaptive")
PARTITIONS = {"iid": {}, "dirichlet0.5": {"partition": "dirichlet", "alpha": 0.5}}
LR_GRID = (0.125, 0.25, 0.5, 1.0)
WIDEN = 4
RUNS_FILE = RESULTS / "byzantine_breakdown.runs.json"
RECHECK_CELLS = [("iid", "geomed", "sign_flip", 4), ("iid", "cclip", "alie", 4), ("iid", "mean", "none", 0),
                 ("dirichlet0.5", "trimmed_mean", "label_flip", 4)]


def say(line: str) -> None:
    print(line, flush=True)


def _init():
    import torch

    torch.set_num_threads(1)


@functools.cache
def _task(partition: str, seed: int):
    from distsgd import make_task

    return make_task("mnist1d", n_workers=N, model="cnn1d", batch_size=32, validation=VALIDATION, seed=seed,
                     **PARTITIONS[partition])


def run(job: tuple) -> dict | None:
    """One run: job = (partition, row, attack, f, lr, knob, seed, steps). Final validation and
    test accuracy, or None when it diverged."""
    from distsgd import train
    from distsgd.algorithms import RobustSGD
    from distsgd.errors import Diverged
    from distsgd.robust import Attack, make_aggregator, pick_byzantine

    partition, row, attack, f, lr, knob, seed, steps = job
    rule, options = ROWS[row]
    options = dict(options)
    if knob is not None:
        options[KNOBS[KNOB_OF.get(row, row)][0]] = knob
    algo = RobustSGD(
        lr=lr,
        aggregator=make_aggregator(rule, f, **options),
        attack=Attack(attack if f else "none"),
        byzantine=pick_byzantine(N, f, seed=seed),
        worker_momentum=0.9,
        check=False,
    )
    try:
        r = train(_task(partition, seed), algo, steps=steps, eval_every=steps, seed=seed)
    except Diverged:
        return None
    out = {k: r.final.get(k) for k in ("val_acc", "test_acc", "train_loss")}
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in out.values()):
        return None
    return out


def key(job: tuple) -> str:
    return json.dumps(list(job))


class Runs:
    """Every finished run by its job, in a committed JSON: the benchmark resumes anywhere."""

    def __init__(self, path: Path, jobs: int, deadline: float):
        self.path, self.jobs, self.deadline = path, jobs, deadline
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init) if jobs > 1 else None
        self.out_of_time = False

    def get(self, job: tuple):
        return self.data.get(key(job), "missing")

    def ensure(self, jobs: list[tuple]) -> bool:
        """Run the jobs not yet recorded (in parallel); False if time ran out first."""
        todo = [j for j in dict.fromkeys(jobs) if key(j) not in self.data]
        if not todo:
            return True
        done = 0
        for start in range(0, len(todo), 2 * self.jobs):  # the deadline checked between chunks
            if time.time() > self.deadline:
                self.out_of_time = True
                return False
            chunk = todo[start:start + 2 * self.jobs]
            for job, r in zip(chunk, self.pool.map(run, chunk) if self.pool else map(run, chunk), strict=True):
                self.data[key(job)] = r
                done += 1
                say(f"[{done}/{len(todo)}] {job}: {r}")
            self.save()
        return True

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True))
        os.replace(tmp, self.path)


# -- tuning (harness.tune's rules; the runs of a round go to the pool together) ------------


def _tune_rounds(runs: Runs, tunings: dict[str, dict]) -> dict[str, dict]:
    """Tune several values at once. tunings[label] = {"values": [...], "jobs": value -> [jobs],
    "score": [results] -> lower-is-better score or None, "bounds": (lo, hi)}. Every label's
    record as harness.tune's: best, edge, added, stopped, seeds, scores."""
    state = {label: {"values": list(t["values"]), "added": [], "stopped": None, "done": False} for label, t in
             tunings.items()}
    while True:
        pending = [j for label, t in tunings.items() if not state[label]["done"]
                   for v in state[label]["values"] for j in t["jobs"](v)]
        if not runs.ensure(pending):
            return {}
        progressed = False
        for label, t in tunings.items():
            s = state[label]
            if s["done"]:
                continue
            scores = {v: t["score"]([runs.get(j) for j in t["jobs"](v)]) for v in s["values"]}
            best, edge = pick({v: scores[v] for v in sorted(scores)}, higher_is_better=False)
            s.update(best=best, edge=edge, scores=scores)
            if scores[best] is None:
                s.update(done=True, stopped="every value diverged")
                continue
            if edge not in ("smallest", "largest"):
                s["done"] = True
                continue
            if len(s["added"]) >= WIDEN:
                s.update(done=True, stopped=f"still at the {edge} value {best:g} after {WIDEN} added")
                continue
            v, why = next_value(sorted(s["values"]), edge)
            lo, hi = t["bounds"]
            if v is not None and not lo < v <= hi:
                v, why = None, f"the next value {v:g} is outside ({lo:g}, {hi:g}]"
            if v is None:
                s.update(done=True, stopped=why)
                continue
            s["added"].append(v)
            s["values"].append(v)
            progressed = True
        if not progressed and all(s["done"] for s in state.values()):
            break
    return {label: {"best": s["best"], "edge": s["edge"], "added": s["added"], "stopped": s["stopped"],
                    "seeds": list(harness.TUNING_SEEDS),
                    "scores": {f"{v:g}": tunings[label]["detail"]([runs.get(j) for j in tunings[label]["jobs"](v)])
                               for v in sorted(s["scores"])}}
            for label, s in state.items()}


def _lr_score(results: list) -> float | None:
    if any(r is None for r in results):
        return None  # a diverged seed ranks last
    return 1.0 - statistics.fmean(r["val_acc"] for r in results)


def _knob_score(results: list) -> float | None:
    return 1.0 - statistics.fmean(0.0 if r is None else r["val_acc"] for r in results)


def _detail(results: list) -> dict:
    ok = [r["val_acc"] for r in results if r is not None]
    return {"val_acc": statistics.fmean(ok) if ok else None, "runs": len(results),
            "diverged": sum(r is None for r in results)}


def tune_all(runs: Runs, steps: int) -> dict | None:
    """{partition: {row: {"lr": record, "knob": record or None}}} or None if time ran out."""
    lr_tunings = {}
    for p in PARTITIONS:
        for row in ROWS:
            if row in KNOB_OF:
                continue  # ablations: BGMD's settings
            lr_tunings[f"{p}/{row}"] = {
                "values": LR_GRID, "bounds": (0.0, math.inf), "score": _lr_score, "detail": _detail,
                "jobs": lambda v, p=p, row=row: [(p, row, "none", 0, v, None, s, steps) for s in harness.TUNING_SEEDS]}
    lr = _tune_rounds(runs, lr_tunings)
    if not lr:
        return None
    knob_tunings = {}
    for p in PARTITIONS:
        for row, (_name, grid, bounds) in KNOBS.items():
            best_lr = lr[f"{p}/{row}"]["best"]
            knob_tunings[f"{p}/{row}"] = {
                "values": grid, "bounds": bounds, "score": _knob_score, "detail": _detail,
                "jobs": lambda v, p=p, row=row, best_lr=best_lr: [
                    (p, row, a, F_KNOB, best_lr, v, s, steps) for a in ATTACKS for s in harness.TUNING_SEEDS]}
    knob = _tune_rounds(runs, knob_tunings)
    if not knob:
        return None
    out = {}
    for p in PARTITIONS:
        out[p] = {}
        for row in ROWS:
            base = KNOB_OF.get(row, row)
            out[p][row] = {"lr": lr[f"{p}/{base}"], "knob": knob.get(f"{p}/{base}"),
                           "knob_name": KNOBS[base][0] if base in KNOBS else None, "tuned_as": base}
    return out


def setting(tuning: dict, p: str, row: str) -> tuple[float, float | None]:
    t = tuning[p][row]
    return t["lr"]["best"], (t["knob"]["best"] if t["knob"] else None)


def cells() -> list[tuple[str, int]]:
    return [("none", 0)] + [(a, f) for a in ATTACKS for f in FS]


def final_jobs(tuning: dict, p: str, steps: int, seeds=harness.FINAL_SEEDS) -> list[tuple]:
    jobs = []
    for row in ROWS:
        lr, knob = setting(tuning, p, row)
        jobs += [(p, row, a, f, lr, knob, s, steps) for a, f in cells() for s in seeds]
    return jobs


def finals(runs: Runs, tuning: dict, steps: int) -> dict:
    """{partition: {row: {"attack/f": stats of test_acc or None where not all run}}}."""
    for p in PARTITIONS:  # one split at a time, so a stopped run leaves whole tables
        runs.ensure(final_jobs(tuning, p, steps))
    out = {}
    for p in PARTITIONS:
        out[p] = {}
        for row in ROWS:
            lr, knob = setting(tuning, p, row)
            out[p][row] = {}
            for a, f in cells():
                res = [runs.get((p, row, a, f, lr, knob, s, steps)) for s in harness.FINAL_SEEDS]
                done = [r for r in res if r != "missing"]
                out[p][row][f"{a}/{f}"] = (
                    {**harness.stats([None if r is None else r["test_acc"] for r in done]),
                     "seeds": list(harness.FINAL_SEEDS)} if len(done) == len(res) else None)
    return out


# -- output ------------------------------------------------------------------------------


def _cell(s: dict | None) -> str:
    if s is None:
        return "…"
    if s["mean"] is None:
        return f"diverged {s['diverged']}/{s['n'] + s['diverged']}"
    text = f"{s['mean']:.2f}±{s['std']:.2f}" if s.get("std") is not None else f"{s['mean']:.2f}"
    return text + (f" ({s['diverged']} div.)" if s["diverged"] else "")


def table(result: dict) -> str:
    out = [f"# Byzantine breakdown: MNIST-1D, 1D-CNN, {N} workers, {result['setting']['steps']} steps",
           "",
           "Test accuracy (chance 0.10), mean ± std over seeds "
           f"{', '.join(map(str, harness.FINAL_SEEDS))}; each rule's lr tuned on clean validation data, "
           "centered clipping's τ and BGMD's β under the seven attacks at f = 4 (validation, seeds 0 and 1); "
           "'div.': runs with a NaN loss, not averaged; '…': not yet run."
           + ("" if result.get("complete") else " **Incomplete: the benchmark stopped before every cell ran.**")]
    for p, rows in result["accuracy"].items():
        for f in FS:
            out += ["", f"**{p}, f = {f} of {N}**", "",
                    "| aggregator | lr | knob | clean | " + " | ".join(ATTACKS) + " |",
                    "|---" * (len(ATTACKS) + 4) + "|"]
            for row, c in rows.items():
                t = result["tuning"][p][row] if result.get("tuning") else None
                lr = f"{t['lr']['best']:g}" if t else "…"
                knob = f"{t['knob_name']} {t['knob']['best']:g}" if t and t["knob"] else "–"
                out.append(f"| {row} | {lr} | {knob} | {_cell(c['none/0'])} | "
                           + " | ".join(_cell(c[f"{a}/{f}"]) for a in ATTACKS) + " |")
    found = harness.edges(result.get("tuning") or {})
    out += ["", "Tuning records on an edge: " + ("; ".join(found) if found else "none") + "."]
    return "\n".join(out) + "\n"


def figures(accuracy: dict) -> dict:
    return {f"{p}/{row}/{c}": s for p, rows in accuracy.items() for row, cs in rows.items()
            for c, s in cs.items() if s is not None}


def recheck(path: str, jobs: int) -> None:
    committed = harness.load("byzantine_breakdown")
    steps, tuning = committed["setting"]["steps"], committed["tuning"]
    todo = [(p, row, a, f, *setting(tuning, p, row), harness.RECHECK_SEED, steps) for p, row, a, f in RECHECK_CELLS]
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init) as pool:
        res = list(pool.map(run, todo))
    harness.write_recheck(path, {f"{p}/{row}/{a}/{f}": None if r is None else r["test_acc"]
                                 for (p, row, a, f), r in zip(RECHECK_CELLS, res, strict=True)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--hours", type=float, default=math.inf, help="start no new run after this long")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--recheck", metavar="PATH")
    args = ap.parse_args(argv)
    if args.recheck:
        recheck(args.recheck, args.jobs)
        return 0
    if args.table_only:
        partial = RESULTS / "byzantine_breakdown.partial.json"
        doc = json.loads(partial.read_text()) if partial.exists() else harness.load("byzantine_breakdown")
        if "complete" not in doc:
            print((RESULTS / "byzantine_breakdown.md").read_text())  # the earlier, untuned benchmark's table
            return 0
        print(table(doc))
        return 0
    started = time.time()
    runs = Runs(RUNS_FILE if args.steps == STEPS else RUNS_FILE.with_suffix(f".{args.steps}.json"), args.jobs,
                started + args.hours * 3600)
    tuning = tune_all(runs, args.steps)
    accuracy = (finals(runs, tuning, args.steps) if tuning else
                {p: {row: {f"{a}/{f}": None for a, f in cells()} for row in ROWS} for p in PARTITIONS})
    complete = tuning is not None and all(s is not None for rows in accuracy.values() for cs in rows.values()
                                          for s in cs.values())
    result = {
        "setting": {"n": N, "steps": args.steps, "model": "cnn1d", "batch": 32, "worker_momentum": 0.9,
                    "validation": VALIDATION, "lr_grid": list(LR_GRID),
                    "knobs": {k: {"name": v[0], "grid": list(v[1]), "bounds": list(v[2])} for k, v in KNOBS.items()},
                    "knob_tuned_at": {"f": F_KNOB, "attacks": list(ATTACKS)},
                    "tuning_seeds": list(harness.TUNING_SEEDS), "final_seeds": list(harness.FINAL_SEEDS)},
        "complete": complete,
        "runs_recorded": len(runs.data),
        "tuning": tuning,
        "accuracy": accuracy,
        "figures": figures(accuracy) if complete else {},
        "edges": harness.edges(tuning or {}),
    }
    md = table(result)
    print(md)
    if args.steps == STEPS:  # an unfinished table goes to .partial files, the last complete one stays
        name = "byzantine_breakdown" if complete else "byzantine_breakdown.partial"
        say(str(write_result(name, result)))
        write_text(RESULTS / f"{name}.md", md)
        if complete:
            for ext in ("json", "md"):
                (RESULTS / f"byzantine_breakdown.partial.{ext}").unlink(missing_ok=True)
    if runs.pool:
        runs.pool.shutdown()
    say(f"{'complete' if complete else 'incomplete'}; {len(runs.data)} runs recorded; "
        f"{time.time() - started:.0f} s this invocation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
