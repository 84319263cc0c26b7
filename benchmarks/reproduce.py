"""Do the committed figures hold on a rerun? A shortened rerun of every harnessed benchmark.

For each benchmark whose results JSON carries "figures" (see harness.py), runs
`python benchmarks/NAME.py --recheck TMP`: no tuning (the committed settings), one fresh
seed of each figure's final runs (or, for timings, a shorter interleaved measurement).
Each fresh value is compared with its committed figure's 95% prediction interval
(mean ± t·std·√(1 + 1/n) over the committed seeds or rounds); a figure outside it has
moved beyond its spread. A figure measured once (no spread) must come back equal to 1e-6.

    python benchmarks/reproduce.py --check [--only NAME ...] [--list]

Prints a table per benchmark and writes benchmarks/results/reproduce.json (the rechecks of
the scripts not rerun stay there, each with its date and machine). With --check
the exit code is 1 when a figure moved (a recheck that fails is reported and counts too).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, machine, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent
# results JSON -> the script that writes it (most are NAME.json from NAME.py)
SCRIPTS = {"d2_claims": "decentralized_claims", "adpsgd_claims": "decentralized_claims",
           "choco_claims": "decentralized_claims"}


def harnessed() -> dict[str, list[str]]:
    """script -> the results files with figures it wrote."""
    out: dict[str, list[str]] = {}
    for p in sorted(RESULTS.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("figures"), dict) and p.stem != "reproduce":
            script = SCRIPTS.get(p.stem, p.stem)
            if (HERE / f"{script}.py").exists():
                out.setdefault(script, []).append(p.stem)
    return out


def compare(committed: dict, fresh: dict) -> list[dict]:
    rows = []
    for name, s in committed.items():
        value = fresh.get(name, "missing")
        row = {"figure": name, "mean": s.get("mean"), "std": s.get("std"), "n": s.get("n"), "fresh": value}
        if value == "missing":
            row["verdict"] = "not rechecked"
        elif s.get("mean") is None or value is None:
            same = (s.get("mean") is None) == (value is None)
            row["verdict"] = "holds" if same else "moved (diverged)" if value is None else "moved (was diverged)"
        else:
            interval = harness.predict(s)
            if interval is None:  # measured once or without spread: must repeat
                tol = 1e-6 * max(1.0, abs(s["mean"]))
                interval = [s["mean"] - tol, s["mean"] + tol]
            else:
                tol = 1e-9 * max(1.0, abs(s["mean"]))
                interval = [interval[0] - tol, interval[1] + tol]
            row["interval"] = interval
            row["verdict"] = "holds" if interval[0] <= value <= interval[1] else "moved"
        rows.append(row)
    return rows


def recheck(script: str, names: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recheck.json"
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(HERE / f"{script}.py"), "--recheck", str(path)],
                              capture_output=True, text=True, timeout=timeout)
        seconds = time.time() - t0
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"script": script, "error": f"exit {proc.returncode}: {tail[0]}", "seconds": seconds,
                    "date": time.strftime("%Y-%m-%d"), "machine": machine()}
        fresh = json.loads(path.read_text())["figures"]
    out = {"script": script, "seconds": seconds, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
           "benchmarks": {}}
    for name in names:
        committed = json.loads((RESULTS / f"{name}.json").read_text())["figures"]
        out["benchmarks"][name] = compare(committed, fresh.get(name, fresh) if len(names) > 1 else fresh)
    return out


def show(v) -> str:
    if v is None:
        return "diverged"
    if isinstance(v, str):
        return v
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a figure moved beyond its spread")
    ap.add_argument("--only", nargs="+", metavar="SCRIPT", help="recheck these scripts only")
    ap.add_argument("--list", action="store_true", help="list the harnessed benchmarks and stop")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per script")
    a = ap.parse_args(argv)
    todo = harnessed()
    if a.list:
        for script, names in todo.items():
            print(f"{script}: {', '.join(names)}")
        return 0
    if a.only:
        unknown = [s for s in a.only if s not in todo]
        if unknown:
            print(f"reproduce: error: not harnessed: {', '.join(unknown)} (choose from {', '.join(todo)})",
                  file=sys.stderr)
            return 2
        todo = {s: todo[s] for s in a.only}
    results, moved = [], 0
    for script, names in todo.items():
        print(f"== {script} ({', '.join(names)})", flush=True)
        r = recheck(script, names, a.timeout)
        results.append(r)
        if "error" in r:
            moved += 1
            print(f"   recheck failed: {r['error']}")
            continue
        for name, rows in r["benchmarks"].items():
            for row in rows:
                iv = row.get("interval")
                span = f"[{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""
                spread = "" if row["std"] is None else f" ± {row['std']:.2g}"
                print(f"   {name}.{row['figure']}: committed {show(row['mean'])}{spread} {span} "
                      f"fresh {show(row['fresh'])}: {row['verdict']}")
                moved += row["verdict"].startswith("moved")
        print(f"   ({r['seconds']:.0f} s)")
    # the rechecks of scripts not rerun this time stay in the results, each with its date and machine
    done = {r["script"] for r in results}
    kept = [r for r in previous_rechecks() if r["script"] not in done]
    write_result("reproduce", {"rechecks": kept + results, "moved": moved + sum(map(moved_in, kept))})
    print(f"{moved} figure(s) moved beyond their spread" if moved else "every figure holds within its spread")
    return 1 if (a.check and moved) else 0


def previous_rechecks() -> list[dict]:
    """The rechecks in the committed reproduce.json (none when it is missing or unreadable)."""
    try:
        return list(json.loads((RESULTS / "reproduce.json").read_text()).get("rechecks", []))
    except (OSError, ValueError, AttributeError):
        return []


def moved_in(r: dict) -> int:
    """Figures of one recheck that moved beyond their spread (a failed recheck counts one)."""
    if "error" in r:
        return 1
    return sum(row["verdict"].startswith("moved") for rows in r["benchmarks"].values() for row in rows)


if __name__ == "__main__":
    sys.exit(main())
