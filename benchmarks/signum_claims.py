"""signSGD / Signum with majority vote (issue 4, claims 3 and 4), MNIST-1D, 16 workers.

Claim 3 (Bernstein et al. ICLR 2019): Signum with majority vote reaches test accuracy
within 2 points of AllReduce-SGD with momentum, with 32× fewer bits per step each way
than float32. Both use a cosine learning-rate schedule; each one's lr is picked by final
training loss from a small grid (no test-set tuning) on seed 0, then both are run on
seeds 0, 1, 2 and the mean test accuracies compared. 1D-CNN, batch 32 per worker, IID.

Claim 4: majority vote keeps training when a minority of workers (1 to 3 of 16) send the
negated sign; the plain average of the signs does worse. The mean of the signs gets its
own lr (it shrinks the step where workers disagree), tuned the same way at f = 0. For the
ICLR 2019 abstract's comparison ("unlike SGD"), AllReduce-SGD with momentum is run with the
same workers sending −g (the negation) and −100·g (a scaled negation, which a sign vote
cannot tell from the negation).

Writes benchmarks/results/signum_claims.json and .png. Run: python benchmarks/signum_claims.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from distsgd import AllReduceSGD, make_task, train  # noqa: E402
from distsgd.algorithms import RobustSGD, Signum  # noqa: E402
from distsgd.lr_schedule import LRSchedule  # noqa: E402
from distsgd.robust import Attack, Mean  # noqa: E402

STEPS = 1500
COSINE = LRSchedule("cosine")
SEEDS = (0, 1, 2)


def run(task, algo, seed=0):
    return train(task, algo, steps=STEPS, eval_every=STEPS // 10, seed=seed, lr_schedule=COSINE)


def best(task, make, lrs):
    runs = {lr: run(task, make(lr)) for lr in lrs}
    lr = min(runs, key=lambda k: runs[k].final["train_loss"])
    return lr, runs[lr]


def seeds_mean(task, algo, first) -> tuple[float, list[float]]:
    accs = [first.final["test_acc"]] + [run(task, algo, seed=s).final["test_acc"] for s in SEEDS[1:]]
    return statistics.mean(accs), accs


def main():
    task = make_task("mnist1d", n_workers=16, model="cnn1d", batch_size=32, seed=0)
    d = task.description["parameters"]
    sgd_lr, sgd = best(task, lambda lr: AllReduceSGD(lr=lr, momentum=0.9), [0.05, 0.1, 0.2])
    sig_lr, sig = best(task, lambda lr: Signum(lr=lr, beta=0.9), [3e-3, 6e-3, 1e-2])
    sgd_mean, sgd_accs = seeds_mean(task, AllReduceSGD(lr=sgd_lr, momentum=0.9), sgd)
    sig_mean, sig_accs = seeds_mean(task, Signum(lr=sig_lr, beta=0.9), sig)
    fp32_bytes = 4 * d  # a float32 gradient up, a float32 update down
    sig_up = sig.summary["traffic"]["bytes_sent_per_worker"] / STEPS
    sig_down = sig.summary["traffic"]["bytes_received_per_worker"] / STEPS
    c3 = {
        "lr_schedule": "cosine",
        "seeds": list(SEEDS),
        "allreduce_sgd": {"lr": sgd_lr, "test_acc": sgd_mean, "test_acc_per_seed": sgd_accs},
        "signum_vote": {"lr": sig_lr, "test_acc": sig_mean, "test_acc_per_seed": sig_accs},
        "accuracy_gap_points": 100 * (sgd_mean - sig_mean),
        "bytes_per_step_up": sig_up,
        "bytes_per_step_down": sig_down,
        "fp32_bytes_per_step_each_way": fp32_bytes,
        "reduction_up": fp32_bytes / sig_up,
        "reduction_down": fp32_bytes / sig_down,
    }
    print(
        f"claim 3: AllReduce-SGD (lr {sgd_lr}) {sgd_mean:.3f} {sgd_accs}, Signum vote (lr {sig_lr}) "
        f"{sig_mean:.3f} {sig_accs}: gap {c3['accuracy_gap_points']:.1f} points; "
        f"{c3['reduction_up']:.1f}x fewer bytes up, {c3['reduction_down']:.1f}x down"
    )
    mean_lr, mean_run = best(task, lambda lr: Signum(lr=lr, beta=0.9, aggregate="mean"), [6e-3, 1e-2, 2e-2])
    c4 = []
    for f in (0, 1, 2, 3):
        byz = tuple(range(f))
        row = {"byzantine": f}
        row["vote"] = (sig if f == 0 else run(task, Signum(lr=sig_lr, beta=0.9, byzantine=byz))).final[
            "test_acc"
        ]
        mean = (
            mean_run if f == 0 else run(task, Signum(lr=mean_lr, beta=0.9, aggregate="mean", byzantine=byz))
        )
        row["mean_of_signs"] = mean.final["test_acc"]
        for key, attack in (
            ("sgd_negated", Attack("sign_flip")),
            ("sgd_scaled_negated", Attack("scaled_flip")),
        ):
            if f == 0:
                row[key] = sgd.final["test_acc"]
                continue
            algo = RobustSGD(
                lr=sgd_lr, momentum=0.9, aggregator=Mean(), attack=attack, byzantine=byz, check=False,
                worker_momentum=0.0,
            )
            acc = run(task, algo).final.get("test_acc")
            row[key] = acc if acc == acc else None  # diverged
        c4.append(row)
        print(
            f"claim 4: {f}/16 adversaries: vote {row['vote']:.3f}, mean of signs {row['mean_of_signs']:.3f}, "
            f"SGD with -g {row['sgd_negated']}, SGD with -100g {row['sgd_scaled_negated']}"
        )
    payload = {"steps": STEPS, "parameters": d, "claim3": c3, "mean_of_signs_lr": mean_lr, "claim4": c4}
    print(write_result("signum_claims", payload))
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
    axes[0].set_title(f"MNIST-1D, 16 workers, {r['steps']} steps, mean of {len(c3['seeds'])} seeds")
    axes[1].bar(
        ["float32 each way", "Signum up", "Signum down"],
        [c3["fp32_bytes_per_step_each_way"], c3["bytes_per_step_up"], c3["bytes_per_step_down"]],
    )
    axes[1].set_yscale("log")
    axes[1].set_ylabel("bytes per step per worker")
    f = [row["byzantine"] for row in c4]
    axes[2].plot(f, [row["vote"] for row in c4], marker="o", label="Signum, majority vote")
    axes[2].plot(f, [row["mean_of_signs"] for row in c4], marker="s", label="Signum, mean of signs")
    for key, label in (("sgd_negated", "SGD, adversaries send −g"), ("sgd_scaled_negated", "SGD, −100·g")):
        axes[2].plot(f, [row[key] if row[key] is not None else 0.1 for row in c4], marker="^", label=label)
    axes[2].set_xlabel("adversarial workers (of 16); diverged runs drawn at 0.1")
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
