"""signSGD / Signum with majority vote (issue 4, claims 3 and 4), MNIST-1D, 16 workers.

Claim 3 (Bernstein et al. ICLR 2019): Signum with majority vote reaches test accuracy
within 2 points of AllReduce-SGD with momentum, with 32× fewer bits per step each way
than float32. Both learning rates are picked by final training loss from a small grid
(no test-set tuning); 1D-CNN, batch 32 per worker, IID shards.

Claim 4: majority vote keeps training when a minority of workers (1 to 3 of 16) send
the negated sign; the plain average of the signs does worse.

Writes benchmarks/results/signum_claims.json. Run: python benchmarks/signum_claims.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from distsgd import AllReduceSGD, make_task, train  # noqa: E402
from distsgd.algorithms import Signum  # noqa: E402

STEPS = 1500


def best(task, make, lrs):
    runs = {lr: train(task, make(lr), steps=STEPS, eval_every=STEPS // 10) for lr in lrs}
    lr = min(runs, key=lambda k: runs[k].final["train_loss"])
    return lr, runs[lr]


def main():
    task = make_task("mnist1d", n_workers=16, model="cnn1d", batch_size=32, seed=0)
    d = task.description["parameters"]
    sgd_lr, sgd = best(task, lambda lr: AllReduceSGD(lr=lr, momentum=0.9), [0.02, 0.05, 0.1])
    sig_lr, sig = best(task, lambda lr: Signum(lr=lr, beta=0.9), [3e-4, 1e-3, 3e-3])
    fp32_bytes = 4 * d  # a float32 gradient up, a float32 update down
    sig_up = sig.summary["traffic"]["bytes_sent_per_worker"] / STEPS
    sig_down = sig.summary["traffic"]["bytes_received_per_worker"] / STEPS
    c3 = {
        "allreduce_sgd": {
            "lr": sgd_lr,
            "test_acc": sgd.final["test_acc"],
            "train_loss": sgd.final["train_loss"],
        },
        "signum_vote": {
            "lr": sig_lr,
            "test_acc": sig.final["test_acc"],
            "train_loss": sig.final["train_loss"],
        },
        "accuracy_gap_points": 100 * (sgd.final["test_acc"] - sig.final["test_acc"]),
        "bytes_per_step_up": sig_up,
        "bytes_per_step_down": sig_down,
        "fp32_bytes_per_step_each_way": fp32_bytes,
        "reduction_up": fp32_bytes / sig_up,
        "reduction_down": fp32_bytes / sig_down,
    }
    print(
        f"claim 3: AllReduce-SGD (lr {sgd_lr}) {sgd.final['test_acc']:.3f}, Signum vote (lr {sig_lr}) "
        f"{sig.final['test_acc']:.3f}: gap {c3['accuracy_gap_points']:.1f} points; "
        f"{c3['reduction_up']:.1f}x fewer bytes up, {c3['reduction_down']:.1f}x down"
    )
    c4 = []
    for f in (0, 1, 2, 3):
        row = {"byzantine": f}
        for agg in ("vote", "mean"):
            r = train(
                task,
                Signum(lr=sig_lr, beta=0.9, aggregate=agg, byzantine=tuple(range(f))),
                steps=STEPS,
                eval_every=STEPS // 10,
            )
            row[agg] = r.final["test_acc"]
        c4.append(row)
        print(f"claim 4: {f}/16 negated: vote {row['vote']:.3f}, mean of signs {row['mean']:.3f}")
    print(write_result("signum_claims", {"steps": STEPS, "parameters": d, "claim3": c3, "claim4": c4}))
    plot()


def plot() -> None:
    """Bars for claim 3 (accuracy and bytes per step), lines for claim 4, from the JSON."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from _common import RESULTS

    r = json.loads((RESULTS / "signum_claims.json").read_text())
    c3, c4 = r["claim3"], r["claim4"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].bar(
        ["AllReduce-SGD", "Signum vote"], [c3["allreduce_sgd"]["test_acc"], c3["signum_vote"]["test_acc"]]
    )
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"MNIST-1D, 16 workers, {r['steps']} steps")
    axes[1].bar(
        ["float32 each way", "Signum up", "Signum down"],
        [c3["fp32_bytes_per_step_each_way"], c3["bytes_per_step_up"], c3["bytes_per_step_down"]],
    )
    axes[1].set_yscale("log")
    axes[1].set_ylabel("bytes per step per worker")
    f = [row["byzantine"] for row in c4]
    axes[2].plot(f, [row["vote"] for row in c4], marker="o", label="majority vote")
    axes[2].plot(f, [row["mean"] for row in c4], marker="s", label="mean of signs")
    axes[2].set_xlabel("workers sending the negated sign (of 16)")
    axes[2].set_ylabel("test accuracy")
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    from distsgd.plots import save_figure

    save_figure(fig, RESULTS / "signum_claims.png", dpi=100)
    print(RESULTS / "signum_claims.png")


if __name__ == "__main__":
    if "--plot-only" in sys.argv:
        plot()
    else:
        main()
