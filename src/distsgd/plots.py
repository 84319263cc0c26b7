"""The comparison figure: accuracy (or test loss) and training loss against steps, bytes sent,
simulated seconds and wall-clock seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

PANELS = (  # x key, axis label (with its unit), scale to that unit, title
    ("step", "steps", 1.0, "steps"),
    ("bytes_sent_per_worker", "MB sent per worker", 1e-6, "bytes"),
    ("sim_seconds", "simulated time (s)", 1.0, "simulated time"),
    ("wall_seconds", "wall-clock time (s)", 1.0, "wall-clock time"),
)
Y_LABELS = {"test_acc": "test accuracy", "test_loss": "test loss", "train_loss": "training loss (log scale)"}


def read_run(run_dir: str | Path) -> tuple[str, list[dict]]:
    d = Path(run_dir)
    path = d / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{d}: no metrics.jsonl (is it a run directory?)")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__})") from None
    if not rows:
        raise UserError(f"{d}: metrics.jsonl is empty")
    name = d.name
    if (d / "summary.json").is_file():
        try:
            name = json.loads((d / "summary.json").read_text()).get("name", name)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return name, rows


def unique_labels(names: list[str], dirs: list[str | Path] | None = None) -> list[str]:
    """Labels for a legend: a name shared by runs becomes name (folder), then name #k."""
    out = list(names)
    if dirs is not None:
        for i, n in enumerate(names):
            if names.count(n) > 1 and Path(dirs[i]).name != n:
                out[i] = f"{n} ({Path(dirs[i]).name})"
    seen: dict[str, int] = {}
    shared = {label for label in out if out.count(label) > 1}
    for i, label in enumerate(out):
        if label in shared:
            seen[label] = seen.get(label, 0) + 1
            out[i] = f"{label} #{seen[label]}"
    return out


def comparison_figure(runs: list[tuple[str, list[dict]]], title: str | None = None):
    """Two rows (test accuracy, or test loss where a run has no accuracy; training loss) ×
    four x-axes. Runs with the same label (e.g. the seeds of one config) share a colour and
    one legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = "test_acc" if all("test_acc" in r[1][-1] for r in runs) else "test_loss"
    fig, axes = plt.subplots(2, len(PANELS), figsize=(4.2 * len(PANELS), 7.4), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours: dict[str, str] = {}
    handles: dict[str, object] = {}
    for label, rows in runs:
        colour = colours.setdefault(label, palette[len(colours) % len(palette)])
        for col, (xkey, xlabel, scale, xtitle) in enumerate(PANELS):
            xs = [r.get(xkey, float("nan")) * scale for r in rows]
            for row_i, ykey in enumerate((top, "train_loss")):
                ys = [_num(r.get(ykey)) for r in rows]
                ax = axes[row_i][col]
                (line,) = ax.plot(xs, ys, color=colour, marker="o" if len(rows) < 15 else None, ms=3, lw=1.4)
                handles.setdefault(label, line)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(Y_LABELS[ykey])
                ax.set_title(f"{Y_LABELS[ykey].removesuffix(' (log scale)')} vs {xtitle}", fontsize=10)
                if ykey == "train_loss" and all(y > 0 for y in ys if y == y):
                    ax.set_yscale("log")
                positive = [x for x in xs if x > 0]
                if xkey == "bytes_sent_per_worker" and positive:
                    if len(positive) == len(xs):
                        ax.set_xscale("log")
                    else:  # a run that sends nothing at first (or at all)
                        ax.set_xscale("symlog", linthresh=max(1e-3, min(positive)))
                ax.grid(alpha=0.3)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(len(handles), 4),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    if title:
        fig.suptitle(title)
    rows_of_legend = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, 0.035 * rows_of_legend + 0.01, 1, 1))
    return fig


def _num(v) -> float:
    return float(v) if isinstance(v, int | float) else float("nan")


def plot_runs(runs: list[tuple[str, list[dict]]], path: str | Path, title: str | None = None) -> Path:
    """The comparison figure, written atomically to `path` (its suffix is the format)."""
    return save_figure(comparison_figure(runs, title), path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to a temporary name, then rename it: never half-written."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png")
    except ValueError as e:  # an unknown format
        raise UserError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)
    os.replace(tmp, out)
    return out


def figure_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (for pages that embed their images)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
