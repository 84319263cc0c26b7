"""`distsgd report RUN_DIR... -o report.html`: one self-contained HTML page comparing runs.

The page holds the configs side by side (the keys that differ first), the comparison plots
(accuracy or loss and training loss against steps, bytes, simulated and wall seconds) as
embedded PNG images, the summary table (mean ± std over the seeds of one config), and the
environment the runs recorded. A directory given is a run directory (it has metrics.jsonl)
or a folder of them (a sweep)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
import tomllib
from pathlib import Path

from .errors import UserError
from .overrides import write_atomic
from .plots import comparison_figure, figure_png, read_run, unique_labels
from .sweep import columns, fmt, run_metrics, spread

IGNORED_KEYS = ("name", "seed", "out_dir")  # differ between the seeds of one config


def find_runs(dirs: list[str | Path]) -> list[Path]:
    """The run directories in `dirs`: each one itself, or the run directories directly in it."""
    out: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d}: no such directory")
        if (d / "metrics.jsonl").is_file():
            found = [d]
        else:
            found = sorted(p for p in d.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file())
        if not found:
            raise UserError(f"{d}: no runs in it (no metrics.jsonl here or in its folders)")
        out += [p for p in found if p.resolve() not in {q.resolve() for q in out}]
    return out


def load_run(d: Path, target: float | None = None) -> dict:
    name, rows = read_run(d)
    summary = _json(d / "summary.json") or {}
    config = None
    if (d / "config.toml").is_file():
        try:
            config = tomllib.loads((d / "config.toml").read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            config = None
    if config is None and isinstance(summary.get("config"), dict):
        config = summary["config"]
    return {
        "dir": d,
        "name": name,
        "rows": rows,
        "config": _flatten(config) if config else None,
        "environment": _json(d / "environment.json"),
        "metrics": run_metrics(d, target),
        "finished": bool(summary.get("finished")),
        "diverged": (d / "diverged.json").is_file(),
    }


def _json(path: Path):
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_runs(runs: list[dict]) -> list[dict]:
    """Runs whose configs differ only in seed and name are one group (the seeds of a config)."""
    groups: dict[str, dict] = {}
    for r in runs:
        if r["config"] is None:
            key = f"dir:{r['dir']}"
        else:
            key = json.dumps({k: v for k, v in r["config"].items() if k not in IGNORED_KEYS}, sort_keys=True, default=str)
        groups.setdefault(key, {"runs": []})["runs"].append(r)
    out = list(groups.values())
    names = []
    for g in out:
        stems = {re.sub(r"-seed\d+$", "", r["name"]) for r in g["runs"]}
        names.append(stems.pop() if len(stems) == 1 else g["runs"][0]["name"])
    dirs = [g["runs"][0]["dir"] for g in out]
    for g, label in zip(out, unique_labels(names, dirs), strict=True):
        g["label"] = label
    return out


def summary_rows(groups: list[dict], target: float | None) -> tuple[list[str], list[list[str]]]:
    stats = []
    for g in groups:
        ms = [r["metrics"] for r in g["runs"]]
        names = {k for m in ms for k, v in m.items() if v is not None}
        stats.append({k: spread([m.get(k) for m in ms]) for k in names})
    cols = columns([{"metrics": s} for s in stats], target)
    header = ["run", "seeds", "steps", *(h for _, h, _ in cols)]
    rows = []
    for g, s in zip(groups, stats, strict=True):
        seeds = sorted({r["config"].get("seed") for r in g["runs"] if r["config"]}, key=str)
        steps = sorted({r["rows"][-1].get("step") for r in g["runs"]}, key=str)
        rows.append([
            g["label"],
            f"{len(g['runs'])}" + (f" ({', '.join(map(str, seeds))})" if seeds else ""),
            ", ".join(map(str, steps)),
            *(fmt(s.get(m), scale) for m, _, scale in cols),
        ])
    return header, rows


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def config_table(groups: list[dict]) -> str:
    """Keys × groups: the keys that differ first (highlighted), then the rest."""
    configs = [_merged(g) for g in groups]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if len({c.get(k, "–") for c in configs}) > 1]
    same = [k for k in keys if k not in differ]
    head = "<tr><th>key</th>" + "".join(f"<th>{html.escape(g['label'])}</th>" for g in groups) + "</tr>"

    def rows(ks, cls):
        return "".join(
            f"<tr class='{cls}'><td><code>{html.escape(k)}</code></td>"
            + "".join(f"<td>{html.escape(c.get(k, '–'))}</td>" for c in configs)
            + "</tr>"
            for k in ks
        )

    if not keys:
        return "<p>The runs recorded no config (runs from before distsgd wrote summary.json's config).</p>"
    return (
        f"<table class='cfg'>{head}{rows(differ, 'differ')}</table>"
        f"<details><summary>the {len(same)} keys every run shares</summary>"
        f"<table class='cfg'>{head}{rows(same, 'same')}</table></details>"
    )


def _merged(g: dict) -> dict[str, str]:
    """One column of a group: each key's value, or its values joined where seeds differ."""
    out: dict[str, list[str]] = {}
    for r in g["runs"]:
        for k, v in (r["config"] or {}).items():
            text = _cell(v)
            if text not in out.setdefault(k, []):
                out[k].append(text)
    return {k: ", ".join(v) for k, v in out.items()}


def environment_table(runs: list[dict]) -> str:
    from .environment import environment

    recorded = []
    for r in runs:
        env = r["environment"]
        if env is not None and env not in recorded:
            recorded.append(env)
    here = environment()
    cols = [(f"runs ({i + 1})" if len(recorded) > 1 else "runs", e) for i, e in enumerate(recorded)]
    cols.append(("this report's machine", here))
    keys = list(dict.fromkeys(k for _, e in cols for k in e))
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n, _ in cols) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{html.escape(_cell(e.get(k)))}</td>" for _, e in cols) + "</tr>"
        for k in keys
    )
    missing = sum(r["environment"] is None for r in runs)
    note = f"<p>{missing} of {len(runs)} runs recorded no environment.json.</p>" if missing else ""
    return f"{note}<table>{head}{body}</table>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.differ td { background: #fff6d5; }
img { max-width: 100%; }
code { font-size: 13px; }
"""


def render(groups: list[dict], runs: list[dict], target: float | None, title: str) -> str:
    lines = [(g["label"], r["rows"]) for g in groups for r in g["runs"]]
    png = figure_png(comparison_figure(lines, title))
    img = f"<img alt='comparison of the runs' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    header, rows = summary_rows(groups, target)
    unfinished = [r["dir"].name + (" (diverged)" if r["diverged"] else "") for r in runs if not r["finished"]]
    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    spread_note = "mean ± sample standard deviation over the seeds of a config" if any(
        len(g["runs"]) > 1 for g in groups
    ) else "one run per config"
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(runs)} runs in {len(groups)} configs, report made {made}.</p>",
        f"<p>Not finished (their last values are shown): {html.escape(', '.join(unfinished))}.</p>"
        if unfinished
        else "",
        f"<h2>Summary</h2><p>Final values; {spread_note}.</p>",
        _table(header, rows),
        "<h2>Comparison</h2>",
        img,
        "<h2>Configs</h2>",
        config_table(groups),
        "<h2>Environment</h2>",
        environment_table(runs),
        "</body></html>",
    ])


def write_report(dirs: list[str | Path], output: str | Path, target: float | None = None, title: str | None = None) -> Path:
    out = Path(output)
    if out.is_dir():
        raise UserError(f"-o {out} is a directory: give a file name such as report.html")
    runs = [load_run(d, target) for d in find_runs(dirs)]
    groups = group_runs(runs)
    title = title or ("distsgd report: " + ", ".join(g["label"] for g in groups[:4]) + (" …" if len(groups) > 4 else ""))
    return write_atomic(out, render(groups, runs, target, title))
