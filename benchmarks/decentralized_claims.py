"""Decentralized training beyond D-PSGD (issue 6): three claims, MNIST-1D, 1D-CNN, 16 workers.

1. `d2`: D² against D-PSGD on a ring when every worker holds 1 or 2 labels, and on IID
   shards: training loss and test accuracy of the averaged model at the same step. Plain
   SGD for both (the paper's setting), lr from {0.05, 0.1, 0.2} by final training loss per
   algorithm and data split. The even ring's Metropolis W has λ_min = −1/3, so D² runs on
   the lazy (W + I)/2; `dpsgd_lazy` is D-PSGD on that same lazy W, the control that
   separates D²'s correction from its slower mixing.
2. `adpsgd`: AD-PSGD against AllReduce-SGD and D-PSGD (ring), plain SGD with the same lr,
   with one worker 4× slower, and with every worker's gradient time varying randomly
   (log-normal jitter σ = 0.5 plus 10% transient 4× stragglers). Simulated time to a
   target test accuracy (90% of AllReduce-SGD's final), seconds per epoch, and the
   accuracy reached per epoch.
3. `choco`: CHOCO-SGD with Top-1% and with scaled-sign compression on a ring against
   D-PSGD (adapt-then-combine, momentum 0.9): test accuracy and bytes sent per worker;
   the consensus step size γ is picked from a grid by final training loss. CHOCO then
   runs 3× the steps, and the bytes each needs to first reach D-PSGD's final accuracy
   less one point are compared.

Writes benchmarks/results/{d2,adpsgd,choco}_claims.json and .png.
Run: python benchmarks/decentralized_claims.py [d2|adpsgd|choco ...] [--steps 1500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result  # noqa: E402

from distsgd import DPSGD, AllReduceSGD, NetworkModel, make_task, make_topology, train  # noqa: E402
from distsgd.algorithms import ADPSGD, D2, ChocoSGD  # noqa: E402
from distsgd.compress import Sign, TopK  # noqa: E402

N = 16
KEYS = ("step", "epoch", "train_loss", "test_acc", "worker0_test_acc", "consensus_distance", "sim_seconds")


def _task(**kw):
    return make_task("mnist1d", n_workers=N, model="cnn1d", batch_size=32, seed=0, **kw)


def _curve(r) -> list[dict]:
    return [{k: row.get(k) for k in KEYS + ("bytes_sent_per_worker", "staleness_mean")} for row in r.metrics]


def _run(task, algo, steps, **kw):
    return train(task, algo, steps=steps, eval_every=max(steps // 30, 1), **kw)


def _best(task, make, grid, steps, **kw):
    runs = {v: _run(task, make(v), steps, **kw) for v in grid}
    v = min(runs, key=lambda k: runs[k].final["train_loss"])
    return v, runs[v]


def claim_d2(steps: int) -> dict:
    ring = make_topology("ring", N)
    out = {}
    for split, kw in {
        "1 label per worker": {"partition": "labels", "labels_per_worker": 1},
        "2 labels per worker": {"partition": "labels", "labels_per_worker": 2},
        "iid": {},
    }.items():
        task = _task(**kw)
        row = {}
        for name, make in (
            ("dpsgd", lambda lr: DPSGD(lr=lr, topology=ring)),
            ("d2", lambda lr: D2(lr=lr, topology=ring)),
            ("dpsgd_lazy", lambda lr: DPSGD(lr=lr, topology=ring.lazy())),  # D²'s own W, as a control
        ):
            lr, r = _best(task, make, (0.05, 0.1, 0.2), steps)
            row[name] = {"lr": lr, "final": {k: r.final.get(k) for k in KEYS}, "curve": _curve(r)}
            print(
                f"D2 claim, {split}: {name} lr {lr}: train loss {r.final['train_loss']:.4f}, "
                f"test acc {r.final['test_acc']:.3f}",
                flush=True,
            )
        out[split] = row
    return {
        "steps": steps,
        "topology": ring.summary(),
        "d2_mixing": D2(lr=0.1, topology=ring).topology.mixing_kind,
        "results": out,
    }


def claim_adpsgd(steps: int, lr: float = 0.05) -> dict:
    ring = make_topology("ring", N)
    task = _task()
    settings = {
        "one worker 4x slower": NetworkModel(speeds=(1.0,) * (N - 1) + (0.25,)),
        "random speeds": NetworkModel(speed_jitter=0.5, straggler_prob=0.1, straggler_slowdown=4.0, seed=1),
    }
    out = {}
    for name, net in settings.items():
        runs = {
            "allreduce_sgd": _run(task, AllReduceSGD(lr=lr), steps, network=net),
            "dpsgd": _run(task, DPSGD(lr=lr, topology=ring), steps, network=net),
            "adpsgd": _run(task, ADPSGD(lr=lr, topology=ring), steps, network=net),
        }
        target = 0.9 * runs["allreduce_sgd"].final["test_acc"]
        row = {"target_test_acc": target}
        for algo, r in runs.items():
            hit = next((m for m in r.metrics if m["test_acc"] >= target), None)
            epochs = r.final["epoch"]
            row[algo] = {
                "final": {k: r.final.get(k) for k in KEYS + ("staleness_mean", "staleness_max")},
                "seconds_to_target": hit["sim_seconds"] if hit else None,
                "epoch_at_target": hit["epoch"] if hit else None,
                "seconds_per_epoch": r.final["sim_seconds"] / epochs,
                "curve": _curve(r),
            }
        base = row["allreduce_sgd"]
        for algo in ("dpsgd", "adpsgd"):
            a = row[algo]
            a["epoch_speedup_vs_allreduce"] = base["seconds_per_epoch"] / a["seconds_per_epoch"]
            if a["seconds_to_target"] and base["seconds_to_target"]:
                a["time_to_target_speedup_vs_allreduce"] = base["seconds_to_target"] / a["seconds_to_target"]
        out[name] = row
        print(
            f"AD-PSGD claim, {name}: target {target:.3f}; "
            + "; ".join(
                f"{a}: {row[a]['seconds_to_target']} s to target, {row[a]['seconds_per_epoch']:.3f} s/epoch, "
                f"final acc {row[a]['final']['test_acc']:.3f}"
                for a in runs
            ),
            flush=True,
        )
    return {"steps": steps, "lr": lr, "results": out}


def claim_choco(steps: int) -> dict:
    ring = make_topology("ring", N)
    task = _task()
    base = _run(task, DPSGD(lr=0.05, momentum=0.9, topology=ring, variant="atc"), steps)
    out = {
        "dpsgd": {
            "final": {k: base.final.get(k) for k in KEYS + ("bytes_sent_per_worker",)},
            "curve": _curve(base),
        }
    }
    print(
        f"CHOCO claim: D-PSGD acc {base.final['test_acc']:.3f}, "
        f"{base.final['bytes_sent_per_worker'] / 1e6:.1f} MB per worker",
        flush=True,
    )
    for name, comp in (("top1%", TopK(ratio=0.01)), ("scaled sign", Sign(scale="l1"))):
        gamma, r = _best(
            task,
            lambda g, comp=comp: ChocoSGD(lr=0.05, momentum=0.9, topology=ring, compressor=comp, gamma=g),
            (0.01, 0.05, 0.2),
            steps,
        )
        target = base.final["test_acc"] - 0.01
        long = _run(
            task, ChocoSGD(lr=0.05, momentum=0.9, topology=ring, compressor=comp, gamma=gamma), 3 * steps
        )
        hit = next((m for m in long.metrics if m["test_acc"] >= target), None)
        hit_base = next(m for m in base.metrics if m["test_acc"] >= target)
        out[name] = {
            "gamma": gamma,
            "final": {k: r.final.get(k) for k in KEYS + ("bytes_sent_per_worker",)},
            "curve": _curve(r),
            "bytes_reduction_vs_dpsgd": base.final["bytes_sent_per_worker"]
            / r.final["bytes_sent_per_worker"],
            "accuracy_gap_points": 100 * (base.final["test_acc"] - r.final["test_acc"]),
            "long_run": {
                "steps": 3 * steps,
                "final": {k: long.final.get(k) for k in KEYS + ("bytes_sent_per_worker",)},
                "curve": _curve(long),
                "target_test_acc": target,
                "bytes_to_target": hit["bytes_sent_per_worker"] if hit else None,
                "dpsgd_bytes_to_target": hit_base["bytes_sent_per_worker"],
                "bytes_to_target_reduction": hit_base["bytes_sent_per_worker"] / hit["bytes_sent_per_worker"]
                if hit
                else None,
            },
        }
        lr_ = out[name]["long_run"]
        print(
            f"CHOCO claim: {name} (gamma {gamma}): acc {r.final['test_acc']:.3f} at {steps} steps, "
            f"{out[name]['bytes_reduction_vs_dpsgd']:.0f}x fewer bytes; {3 * steps} steps: acc "
            f"{long.final['test_acc']:.3f}; to {target:.3f}: {lr_['bytes_to_target']} vs "
            f"{lr_['dpsgd_bytes_to_target']} bytes",
            flush=True,
        )
    return {"steps": steps, "results": out}


def plot(name: str) -> None:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distsgd.plots import save_figure

    r = json.loads((RESULTS / f"{name}_claims.json").read_text())["results"]
    if name == "d2":
        fig, axes = plt.subplots(2, len(r), figsize=(5 * len(r), 7))
        for col, (split, row) in enumerate(r.items()):
            for algo, v in row.items():
                steps = [m["step"] for m in v["curve"]]
                axes[0, col].semilogy(
                    steps, [m["train_loss"] for m in v["curve"]], label=f"{algo} (lr {v['lr']})"
                )
                axes[1, col].plot(steps, [m["test_acc"] for m in v["curve"]], label=algo)
            axes[0, col].set_title(split)
            axes[0, col].set_ylabel("training loss (averaged model)")
            axes[1, col].set_ylabel("test accuracy")
            axes[1, col].set_xlabel("step")
            axes[0, col].legend()
    elif name == "adpsgd":
        fig, axes = plt.subplots(2, len(r), figsize=(6 * len(r), 7))
        for col, (setting, row) in enumerate(r.items()):
            for algo in ("allreduce_sgd", "dpsgd", "adpsgd"):
                c = row[algo]["curve"]
                axes[0, col].plot([m["sim_seconds"] for m in c], [m["test_acc"] for m in c], label=algo)
                axes[1, col].plot([m["epoch"] for m in c], [m["test_acc"] for m in c], label=algo)
            axes[0, col].axhline(row["target_test_acc"], ls=":", c="gray")
            axes[0, col].set_title(setting)
            axes[0, col].set_xlabel("simulated seconds")
            axes[1, col].set_xlabel("epoch")
            for ax in axes[:, col]:
                ax.set_ylabel("test accuracy")
                ax.legend()
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for algo, v in r.items():
            c = v["curve"]
            label = algo if algo == "dpsgd" else f"CHOCO {algo} (γ {v['gamma']})"
            if "long_run" in v:
                c = v["long_run"]["curve"]
            axes[0].plot([m["step"] for m in c], [m["test_acc"] for m in c], label=label)
            axes[1].plot(
                [m["bytes_sent_per_worker"] / 1e6 for m in c], [m["test_acc"] for m in c], label=label
            )
        axes[0].set_xlabel("step")
        axes[1].set_xlabel("MB sent per worker")
        axes[1].set_xscale("log")
        for ax in axes:
            ax.set_ylabel("test accuracy")
            ax.legend()
    fig.tight_layout()
    save_figure(fig, RESULTS / f"{name}_claims.png", dpi=90)
    print(RESULTS / f"{name}_claims.png")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("claims", nargs="*", default=["d2", "adpsgd", "choco"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    fns = {"d2": claim_d2, "adpsgd": claim_adpsgd, "choco": claim_choco}
    for c in args.claims:
        if not args.plot_only:
            print(write_result(f"{c}_claims", fns[c](args.steps)))
        plot(c)


if __name__ == "__main__":
    main()
