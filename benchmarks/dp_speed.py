"""DP-SGD speed (issue 16): per-sample clipping in the stacked engine vs Opacus's hooks, and
the cost of DP-SGD over plain SGD in our engine.

Side by side on the same model and the same batch (MNIST-1D inputs, B records per worker):

1. privatized gradient, one worker: our `Workers.gradients(x, indices, per_sample=True,
   max_grad_norm=C)` (the clipped sum: ghost norms and book-keeping for these Linear / Conv1d
   models, one forward and one backward, no per-sample gradient materialized) +
   `privacy.mechanisms.noised_mean` (noise, normalize) + the SGD update, vs Opacus:
   `GradSampleModule` (forward/backward hooks that build per-sample gradients) wrapped by
   `DPOptimizer` (clip, accumulate, noise, step); and, for reference, our vmap path (per-sample
   gradients by torch.func.vmap, then `privatize`), measured in the same rounds;
2. m = 16 workers: our one stacked call for all 16 vs Opacus once per worker (16 calls),
   both per worker;
3. DP-SGD over plain SGD in our engine, m = 16: one `dp_sgd` step (Poisson batches,
   per-sample gradients, clipping, noise, all-reduce, update) vs one `allreduce_sgd` step
   (batch gradients); the same with uniform sampling (fixed batches of B without
   replacement, accounted as such): the stacked engine pads every worker's Poisson batch to
   the largest of the step, about 20% more records with 16 workers of B = 64, which fixed
   batches do not need; and the gradient oracles alone (per-sample + privatize vs batch).

Goals: ours ≥ 1× Opacus (speed-up = Opacus time / ours), DP-SGD ≤ 2× plain SGD. Timing:
median over rounds of the mean time per call; the two sides of every ratio are measured
alternately (ABAB...) in the same rounds, so the load of the shared machine hits both alike.
One thread (torch.set_num_threads(1)). `--quick`: fewer rounds (seconds).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result, write_text  # noqa: E402

from distsgd import rng  # noqa: E402
from distsgd.algorithms import ALGORITHMS, bind  # noqa: E402
from distsgd.comm.simulated import SimulatedCommunicator  # noqa: E402
from distsgd.privacy.mechanisms import noised_mean, privatize  # noqa: E402
from distsgd.tasks.task import make_task  # noqa: E402
from distsgd.workers import Workers  # noqa: E402

SIGMA, CLIP, LR = 1.0, 1.0, 0.1


def interleaved(fns: dict, calls: int, rounds: int) -> dict:
    """Median over `rounds` of the mean seconds per call of every fn, the fns run one after
    the other inside each round (ABAB...), after one warm-up round."""
    samples = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            if r:  # round 0: warm-up
                samples[k].append((time.perf_counter() - t) / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


class EngineOracle:
    def __init__(self, workers):
        self.workers, self.shards = workers, workers.shards

    def __call__(self, x, rows=None, **kw):
        return self.workers.gradients(x, rows, **kw)[0]


def ours(task, m: int, batch: int, vmap_path: bool = False):
    """Clipped per-sample sums of m stacked workers (the engine's path: ghost clipping where
    the model is covered; `vmap_path`: per-sample gradients by vmap, then privatize), noised,
    normalized, applied."""
    workers = Workers(task, seed=0)
    x = workers.x0()
    idx = torch.stack([s[:batch] for s in workers.shards])
    gens = rng.generators(0, range(m), "dp_noise")

    def step():
        if vmap_path:
            g, _ = workers.gradients(x, indices=idx, per_sample=True)
            x.sub_(privatize(g, None, max_grad_norm=CLIP, noise_std=SIGMA * CLIP, generators=gens, normalizer=float(batch)), alpha=LR)
        else:
            s, _ = workers.gradients(x, indices=idx, per_sample=True, max_grad_norm=CLIP)
            x.sub_(noised_mean(s, noise_std=SIGMA * CLIP, generators=gens, normalizer=float(batch)), alpha=LR)

    return step, idx


def opacus(task, idx_row, batch: int):
    """Opacus's hooks (GradSampleModule) + DPOptimizer on worker 0's batch."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = GradSampleModule(copy.deepcopy(task.model))
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=LR), noise_multiplier=SIGMA, max_grad_norm=CLIP, expected_batch_size=batch)
    xb, yb = task.train.batch(idx_row)

    def step():
        opt.zero_grad(set_to_none=True)
        task.loss(model(xb), yb).backward()
        opt.step()

    return step


def dp_vs_sgd(task, batch: int):
    """One dp_sgd step vs one allreduce_sgd step (m = task.n), and their gradient oracles."""
    sizes = tuple(len(s) for s in task.shards)
    comm = SimulatedCommunicator(task.n)
    w_dp, w_sgd = Workers(task, seed=0), Workers(task, seed=0)
    dp = bind(ALGORITHMS.create({"name": "dp_sgd", "lr": LR, "noise_multiplier": SIGMA, "max_grad_norm": CLIP, "batch_size": batch}),
              task.n, 0, data={"client_sizes": sizes})
    w_uni = Workers(task, seed=0)
    uni = bind(ALGORITHMS.create({"name": "dp_sgd", "lr": LR, "noise_multiplier": SIGMA, "max_grad_norm": CLIP,
                                  "batch_size": batch, "sampling": "uniform"}), task.n, 0, data={"client_sizes": sizes})
    sgd = ALGORITHMS.create({"name": "allreduce_sgd", "lr": LR})
    s_dp, s_sgd = dp.init(w_dp.x0(), comm), sgd.init(w_sgd.x0(), comm)
    o_dp, o_uni = EngineOracle(w_dp), EngineOracle(w_uni)
    state = {"dp": s_dp, "sgd": s_sgd, "uniform": uni.init(w_uni.x0(), comm)}

    def step_dp():
        state["dp"] = dp.step(state["dp"], o_dp, comm)

    def step_uniform():
        state["uniform"] = uni.step(state["uniform"], o_uni, comm)

    def step_sgd():
        state["sgd"] = sgd.step(state["sgd"], lambda x: w_sgd.gradients(x, batch_size=batch)[0], comm)

    x = w_sgd.x0()
    idx = torch.stack([s[:batch] for s in w_sgd.shards])
    gens = rng.generators(0, range(task.n), "dp_noise")

    def grad_dp():
        s, _ = w_sgd.gradients(x, indices=idx, per_sample=True, max_grad_norm=CLIP)
        noised_mean(s, noise_std=SIGMA * CLIP, generators=gens, normalizer=float(batch))

    def grad_sgd():
        w_sgd.gradients(x, indices=idx)

    return {"dp_sgd step": step_dp, "dp_sgd uniform step": step_uniform, "allreduce_sgd step": step_sgd,
            "per-sample + privatize": grad_dp, "batch gradient": grad_sgd}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds, batch, m = (3, 32, 4) if args.quick else (15, 64, 16)
    calls = 2 if args.quick else 5
    rows = []
    for model in ("mlp", "cnn1d"):
        one = make_task("mnist1d", n_workers=1, model=model, batch_size=batch, seed=0)
        many = make_task("mnist1d", n_workers=m, model=model, batch_size=batch, seed=0)
        ours1, idx1 = ours(one, 1, batch)
        vmap1, _ = ours(one, 1, batch, vmap_path=True)
        oursm, idxm = ours(many, m, batch)
        op = opacus(one, idx1[0], batch)
        t = interleaved({"ours 1": ours1, "opacus 1": op, "ours vmap 1": vmap1, f"ours {m}": oursm}, calls, rounds)
        params = sum(p.numel() for p in one.model.parameters())
        rows.append({"model": model, "parameters": params, "batch": batch, "compare": "ours vs Opacus, one worker",
                     "ours_s": t["ours 1"], "other_s": t["opacus 1"], "speedup": t["opacus 1"] / t["ours 1"], "goal": ">= 1"})
        rows.append({"model": model, "parameters": params, "batch": batch, "compare": "ours, vmap path (reference) vs Opacus, one worker",
                     "ours_s": t["ours vmap 1"], "other_s": t["opacus 1"], "speedup": t["opacus 1"] / t["ours vmap 1"], "goal": "-"})
        rows.append({"model": model, "parameters": params, "batch": batch, "compare": f"ours {m} stacked vs Opacus {m}× (per worker)",
                     "ours_s": t[f"ours {m}"] / m, "other_s": t["opacus 1"], "speedup": t["opacus 1"] * m / t[f"ours {m}"], "goal": ">= 1"})
        fns = dp_vs_sgd(many, batch)
        t = interleaved(fns, calls, rounds)
        rows.append({"model": model, "parameters": params, "batch": batch, "compare": f"dp_sgd step vs allreduce_sgd step (m = {m})",
                     "ours_s": t["dp_sgd step"], "other_s": t["allreduce_sgd step"],
                     "overhead": t["dp_sgd step"] / t["allreduce_sgd step"], "goal": "<= 2"})
        rows.append({"model": model, "parameters": params, "batch": batch,
                     "compare": f"dp_sgd step, uniform sampling, vs allreduce_sgd step (m = {m})",
                     "ours_s": t["dp_sgd uniform step"], "other_s": t["allreduce_sgd step"],
                     "overhead": t["dp_sgd uniform step"] / t["allreduce_sgd step"], "goal": "<= 2"})
        rows.append({"model": model, "parameters": params, "batch": batch, "compare": f"per-sample + privatize vs batch gradient (m = {m})",
                     "ours_s": t["per-sample + privatize"], "other_s": t["batch gradient"],
                     "overhead": t["per-sample + privatize"] / t["batch gradient"], "goal": "<= 2"})
        print(rows[-6:], flush=True)
    lines = ["# DP-SGD speed", "",
             f"MNIST-1D inputs, batch {batch} per worker, σ = {SIGMA}, C = {CLIP}; one thread; median of {rounds} interleaved "
             f"rounds of {calls} calls{' (quick: smoke run, not a result)' if args.quick else ''}. Speed-up = Opacus / ours "
             "(goal ≥ 1); overhead = DP-SGD / plain SGD (goal ≤ 2).", "",
             "| model | params | comparison | ours (ms) | other (ms) | ratio | goal | met |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("speedup", r.get("overhead"))
        met = "-" if r["goal"] == "-" else ("yes" if (ratio >= 1 if "speedup" in r else ratio <= 2) else "**no**")
        kind = "speed-up" if "speedup" in r else "overhead"
        lines.append(f"| {r['model']} | {r['parameters']} | {r['compare']} | {1e3 * r['ours_s']:.2f} | {1e3 * r['other_s']:.2f} | "
                     f"{kind} {ratio:.2f}× | {r['goal']} | {met} |")
    lines += ["", "Ours: the engine's clipped per-sample sums (`Workers.gradients(..., per_sample=True, max_grad_norm=C)`: "
              "ghost norms and book-keeping for these Linear / Conv1d models, no per-sample gradients), what `dp_sgd` "
              "uses; the vmap-path row (per-sample gradients, then clip) is the fallback for other models, for reference. "
              "Opacus side: `GradSampleModule` + `DPOptimizer` (per-sample norms, clip, accumulate, noise, step), the "
              "same model and batch; the m-worker row runs it once per worker (Opacus has no stacked workers). The step "
              "rows include the sampling (Poisson unless marked uniform) and the all-reduce; the oracle rows are the gradients "
              "alone.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        write_result("dp_speed", {"rounds": rounds, "calls": calls, "batch": batch, "m": m, "rows": rows})
        write_text(RESULTS / "dp_speed.md", text)


if __name__ == "__main__":
    main()
