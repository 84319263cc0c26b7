"""signSGD / Signum with majority vote, MNIST-1D, 16 workers, through the benchmark harness.

Claim 3 (Bernstein et al., ICLR 2019): Signum with majority vote reaches test accuracy
within 2 points of AllReduce-SGD with momentum, with 32× fewer bits per step each way
than float32. 1D-CNN, batch 32 per worker, IID shards less a 10% validation split, a
cosine learning-rate schedule, STEPS steps.

Claim 4: majority vote keeps training when a minority of workers (1 to 3 of 16) send the
negated sign, and the mean of the signs stays within 3 points of it. For the ICLR 2019
abstract's comparison ("unlike SGD"), AllReduce-SGD with momentum is run with the same
workers sending −g (the negation) and −100·g (a scaled negation, which a sign vote cannot
tell from the negation); diverged runs are counted as such.

Tuning (`harness.tune_config`): the lr of AllReduce-SGD, Signum (vote) and Signum (mean of
signs) each by validation accuracy averaged over seeds 0 and 1, on a ×2 grid widened while
the winner sits on an edge; claim 4 reuses the lrs tuned without adversaries (the attack is
unknown when tuning). Final figures: seeds 100–102, mean ± std and a 95% interval; the gap
of claim 3 and the vote − mean difference are per-seed differences (paired by seed).

    python benchmarks/signum_claims.py [--recheck PATH] [--plot-only]

Writes benchmarks/results/signum_claims.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from _common import RESULTS, write_result, write_text  # noqa: E402

STEPS = 1500
N = 16
BENCH = "signum_claims"
BASE = {
    "n_workers": N,
    "steps": STEPS,
    "eval_every": STEPS // 10,
    "lr_schedule": {"kind": "cosine"},
    "task": {"dataset": "mnist1d", "model": "cnn1d", "batch_size": 32, "validation": 0.1},
}
METHODS = {  # label: (algorithm table less lr, starting lr grid)
    "allreduce_sgd": ({"name": "allreduce_sgd", "momentum": 0.9}, [0.05, 0.1, 0.2]),
    "signum_vote": ({"name": "signum", "beta": 0.9}, [0.0015, 0.003, 0.006]),
    "signum_mean": ({"name": "signum", "beta": 0.9, "aggregate": "mean"}, [0.003, 0.006, 0.012]),
}
FS = (1, 2, 3)


def config(algorithm: dict) -> dict:
    return {**BASE, "algorithm": algorithm}


def attacked(label: str, lr: float, f: int) -> dict:
    """The algorithm table of a claim-4 cell: f adversaries (workers 0..f-1)."""
    byz = list(range(f))
    if label in ("signum_vote", "signum_mean"):
        return {**METHODS[label][0], "lr": lr, "byzantine": byz}
    attack = {"sgd_negated": "sign_flip", "sgd_scaled_negated": "scaled_flip"}[label]
    return {"name": "robust_sgd", "lr": lr, "momentum": 0.9, "worker_momentum": 0.0, "aggregator": "mean",
            "attack": attack, "byzantine": byz, "check": False}


def cells(lrs: dict) -> dict:
    """Every final cell: name -> algorithm table."""
    out = {label: {**METHODS[label][0], "lr": lrs[label]} for label in METHODS}
    for f in FS:
        for label in ("signum_vote", "signum_mean"):
            out[f"{label}_f{f}"] = attacked(label, lrs[label], f)
        for label in ("sgd_negated", "sgd_scaled_negated"):
            out[f"{label}_f{f}"] = attacked(label, lrs["allreduce_sgd"], f)
    return out


def paired(a: list, b: list, scale: float = 100.0) -> dict:
    """stats of the per-seed differences a − b (a diverged side makes that seed's None)."""
    return harness.stats([None if x is None or y is None else scale * (x - y) for x, y in zip(a, b, strict=True)])


def figures(finals: dict, bytes_up: float, bytes_down: float, fp32: float) -> dict:
    acc = {k: v["test_acc"]["values"] for k, v in finals.items()}
    figs = {
        "sgd_test_acc": finals["allreduce_sgd"]["test_acc"],
        "signum_vote_test_acc": finals["signum_vote"]["test_acc"],
        "signum_mean_test_acc": finals["signum_mean"]["test_acc"],
        "gap_points": paired(acc["allreduce_sgd"], acc["signum_vote"]),
        "reduction_up": harness.stats([fp32 / bytes_up]),
        "reduction_down": harness.stats([fp32 / bytes_down]),
    }
    for f in FS:
        vote, mean = f"signum_vote_f{f}", f"signum_mean_f{f}"
        figs[f"f{f}_vote"] = finals[vote]["test_acc"]
        figs[f"f{f}_mean_of_signs"] = finals[mean]["test_acc"]
        figs[f"f{f}_vote_minus_mean_points"] = paired(acc[vote], acc[mean])
        for label in ("sgd_negated", "sgd_scaled_negated"):
            figs[f"f{f}_{label}"] = finals[f"{label}_f{f}"]["test_acc"]
    return figs


def main() -> None:
    t0 = time.time()
    tuning, lrs = {}, {}
    for label, (algorithm, grid) in METHODS.items():
        rec = harness.tune_config(label, config(algorithm), grid, bench=BENCH, say=print)
        tuning[label], lrs[label] = rec, rec["best"]
        print(f"{label}: lr {rec['best']:g} (edge {rec['edge']}, added {rec['added']}, stopped {rec['stopped']})", flush=True)
    finals = {}
    for name, algorithm in cells(lrs).items():
        finals[name] = harness.final_config(name, config(algorithm), {}, bench=BENCH)
        print(f"{name}: {harness.show(finals[name]['test_acc'])}", flush=True)
    d = json.loads(Path(finals["signum_vote"]["runs"][0], "summary.json").read_text())
    fp32 = 4.0 * d["parameters"]  # a float32 gradient up, a float32 update down
    up = d["traffic"]["bytes_sent_per_worker"] / STEPS
    down = d["traffic"]["bytes_received_per_worker"] / STEPS
    figs = figures(finals, up, down, fp32)
    verdicts = {
        "signum_vs_sgd": harness.verdict(finals["signum_vote"]["test_acc"], finals["allreduce_sgd"]["test_acc"]),
        **{f"f{f}_vote_vs_mean": harness.verdict(finals[f"signum_vote_f{f}"]["test_acc"],
                                                  finals[f"signum_mean_f{f}"]["test_acc"]) for f in FS},
    }
    payload = {
        "steps": STEPS, "parameters": d["parameters"], "n_workers": N, "base": BASE,
        "seeds": {"tuning": list(harness.TUNING_SEEDS), "final": list(harness.FINAL_SEEDS)},
        "lrs": lrs, "tuning": tuning, "cells": cells(lrs),
        "finals": {k: {m: v[m] for m in ("test_acc", "val_acc", "train_loss") if m in v} for k, v in finals.items()},
        "bytes_per_step": {"up": up, "down": down, "fp32_each_way": fp32},
        "figures": figs, "verdicts": verdicts, "edges": harness.edges({"tuning": tuning}),
        "wall_seconds": time.time() - t0,
    }
    print(write_result(BENCH, payload))
    write_text(RESULTS / f"{BENCH}.md", markdown(payload))
    plot()


def recheck(path: str) -> None:
    """One fresh seed of every final cell at the committed lrs; the figures' fresh values."""
    committed = harness.load(BENCH)
    finals = {name: harness.final_config(name, config(alg), {}, bench=BENCH, seeds=(harness.RECHECK_SEED,))
              for name, alg in committed["cells"].items()}
    b = committed["bytes_per_step"]
    figs = figures(finals, b["up"], b["down"], b["fp32_each_way"])
    harness.write_recheck(path, {k: v["mean"] for k, v in figs.items()})


def markdown(r: dict) -> str:
    f = r["figures"]
    lines = [
        f"# Signum claims (MNIST-1D 1D-CNN, {r['n_workers']} workers, {r['steps']} steps, cosine)",
        "",
        f"Final test accuracy over seeds {r['seeds']['final']} (mean ± std; 95% interval); lrs tuned on "
        f"validation accuracy over seeds {r['seeds']['tuning']}.",
        "",
        "| method | lr | test accuracy | 95% interval |",
        "|---|---|---|---|",
    ]
    for label, key in (("AllReduce-SGD, momentum 0.9", "sgd_test_acc"), ("Signum, majority vote", "signum_vote_test_acc"),
                       ("Signum, mean of signs", "signum_mean_test_acc")):
        lr = r["lrs"][{"sgd_test_acc": "allreduce_sgd", "signum_vote_test_acc": "signum_vote",
                       "signum_mean_test_acc": "signum_mean"}[key]]
        lines.append(f"| {label} | {lr:g} | {harness.show(f[key])} | {_ci(f[key])} |")
    lines += [
        "",
        f"Gap AllReduce-SGD − Signum vote: {harness.show(f['gap_points'], 2)} points ({_ci(f['gap_points'], 2)}); "
        f"verdict Signum vs SGD: {r['verdicts']['signum_vs_sgd']}. Bytes per step: "
        f"{f['reduction_up']['mean']:.1f}× fewer up, {f['reduction_down']['mean']:.1f}× fewer down than float32.",
        "",
        "| adversaries of 16 | Signum vote | mean of signs | vote − mean (points) | SGD, −g | SGD, −100·g |",
        "|---|---|---|---|---|---|",
    ]
    for k in FS:
        lines.append(
            f"| {k} | {harness.show(f[f'f{k}_vote'])} | {harness.show(f[f'f{k}_mean_of_signs'])} | "
            f"{harness.show(f[f'f{k}_vote_minus_mean_points'], 2)} | {harness.show(f[f'f{k}_sgd_negated'])} | "
            f"{harness.show(f[f'f{k}_sgd_scaled_negated'])} |"
        )
    lines += ["", "Tuning (validation accuracy, mean over seeds):", ""]
    for label, rec in r["tuning"].items():
        pts = ", ".join(f"{v}: {s['mean']:.3f}" if s["mean"] is not None else f"{v}: diverged"
                        for v, s in rec["scores"].items())
        lines.append(f"- {label}: best {rec['best']:g} of {pts}" + (f" (edge: {rec['stopped']})" if rec["edge"] else ""))
    return "\n".join(lines) + "\n"


def _ci(s: dict, digits: int = 3) -> str:
    return "–" if not s.get("ci") else f"[{s['ci'][0]:.{digits}f}, {s['ci'][1]:.{digits}f}]"


def plot() -> None:
    """Bars with error bars for claim 3, lines with error bars for claim 4, from the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distsgd.plots import save_figure

    r = harness.load(BENCH)
    f = r["figures"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = ("sgd_test_acc", "signum_vote_test_acc", "signum_mean_test_acc")
    axes[0].bar(["AllReduce-SGD", "Signum vote", "Signum mean"], [f[k]["mean"] for k in keys],
                yerr=[f[k]["std"] or 0 for k in keys], capsize=4)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"MNIST-1D, {r['n_workers']} workers, {r['steps']} steps, {len(r['seeds']['final'])} seeds")
    fs = [0, *FS]
    for key0, key, label in (("signum_vote_test_acc", "vote", "Signum, majority vote"),
                             ("signum_mean_test_acc", "mean_of_signs", "Signum, mean of signs"),
                             ("sgd_test_acc", "sgd_negated", "SGD, adversaries send −g"),
                             ("sgd_test_acc", "sgd_scaled_negated", "SGD, −100·g")):
        series = [f[key0], *(f[f"f{k}_{key}"] for k in FS)]
        xs = [x for x, s in zip(fs, series, strict=True) if s["mean"] is not None]
        axes[1].errorbar(xs, [s["mean"] for s in series if s["mean"] is not None],
                         yerr=[s["std"] or 0 for s in series if s["mean"] is not None], marker="o", capsize=3,
                         label=label)
    axes[1].set_xlabel("adversarial workers (of 16); diverged runs not drawn")
    axes[1].set_ylabel("test accuracy")
    axes[1].legend()
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, RESULTS / f"{BENCH}.png", dpi=100)
    print(RESULTS / f"{BENCH}.png")


if __name__ == "__main__":
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--recheck", metavar="PATH")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()
    if a.plot_only:
        plot()
    elif a.recheck:
        recheck(a.recheck)
    else:
        main()
