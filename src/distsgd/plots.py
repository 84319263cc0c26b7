"""The comparison figure: accuracy and loss against steps, bytes sent and simulated time."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

PANELS = (
    ("step", "steps"),
    ("bytes_sent_per_worker", "MB sent per worker"),
    ("sim_seconds", "simulated seconds"),
)


def read_run(run_dir: str | Path) -> tuple[str, list[dict]]:
    d = Path(run_dir)
    path = d / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{d}: no metrics.jsonl (is it a run directory?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise UserError(f"{d}: metrics.jsonl is empty")
    name = d.name
    if (d / "summary.json").is_file():
        name = json.loads((d / "summary.json").read_text()).get("name", name)
    return name, rows


def plot_runs(runs: list[tuple[str, list[dict]]], path: str | Path, title: str | None = None) -> Path:
    """Two rows (test accuracy or test loss; training loss) × three x-axes. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = "test_acc" if all("test_acc" in r[1][-1] for r in runs) else "test_loss"
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), squeeze=False)
    for name, rows in runs:
        for col, (xkey, xlabel) in enumerate(PANELS):
            xs = [r[xkey] / (1e6 if xkey.startswith("bytes") else 1) for r in rows]
            for row_i, ykey in enumerate((top, "train_loss")):
                ys = [r.get(ykey, float("nan")) for r in rows]
                ax = axes[row_i][col]
                ax.plot(xs, ys, label=name, marker="o" if len(rows) < 15 else None, ms=3)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(
                    {"test_acc": "test accuracy", "test_loss": "test loss"}.get(ykey, "training loss")
                )
                if ykey == "train_loss":
                    ax.set_yscale("log")
                if xkey == "bytes_sent_per_worker" and max(xs) > 0:
                    ax.set_xscale("symlog", linthresh=max(1e-3, min((x for x in xs if x > 0), default=1)))
                ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to a temporary name, then rename it: never half-written."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
