"""DIFF2-GD: differentially private distributed GD on communicated gradient differences.

Murata & Suzuki, "DIFF2: Differential private optimization via gradient differences for
nonconvex distributed learning", ICML 2023 (arXiv 2302.03884), Algorithm 1 (the DIFF2
framework) with the GD routine. P workers, worker p holding n_p records z and the loss
f_p(x) = (1/n_p) Σ_z ℓ(x, z); round r = 1, 2, ..., R:

    restart (r − 1 ≡ 0 mod T):   d_p = (1/n_p) [Σ_z clip_{C1}(∇ℓ(x_{r−1}, z)) + N(0, σ1²C1²I)]
                                 v_r = (1/P) Σ_p d_p
    otherwise:                   C_{2,r} = C2 · ‖x_{r−1} − x_{r−2}‖
                                 d_p = (1/n_p) [Σ_z clip_{C_{2,r}}(∇ℓ(x_{r−1}, z) − ∇ℓ(x_{r−2}, z))
                                                + N(0, σ2²C_{2,r}²I)]
                                 v_r = v_{r−1} + (1/P) Σ_p d_p
    GD routine:                  x_r = x_{r−1} − η v_r

Full local gradients (every record, every round), clipped per record, so one record moves a
worker's sum by at most C1 (restart) or C_{2,r} (difference). The difference radius scales
with the step: for an L-smooth ℓ, ‖∇ℓ(x_{r−1}, z) − ∇ℓ(x_{r−2}, z)‖ ≤ L‖x_{r−1} − x_{r−2}‖, so
C2 ≥ L clips nothing, and the difference's noise σ2·C_{2,r} shrinks as the iterates settle:
the estimator's variance is small when the steps are. Without noise and clipping the
differences telescope and v_r = ∇f(x_{r−1}) exactly at every round; the restarts every T
rounds bound the noise the recursion accumulates (the paper's T = Θ((G²√d / (L n_min P
ε))^{2/3} R) needs the Lipschitz and smoothness constants G, L, so T is an option here).

Privacy (the paper's local setting: each worker's messages protect its own records against
everybody else): each round is one Gaussian mechanism on a full-batch sum (sample rate 1),
noise multiplier σ1 at the ⌈R/T⌉ restarts and σ2 at the other rounds. Their composition is
accounted by Opacus's RDP (or PRV) accountant over the history [(σ1, 1, K1), (σ2, 1, K2)],
never by hand. With `target_epsilon`, σ1 and σ2 are calibrated as σ1 = s·√K1, σ2 = s·√K2:
the restarts and the differences each spend half the Rényi budget, which is the split of the
paper's privacy analysis as we read it (σ1 ∝ √(R/T), σ2 ∝ √R on the same C/(n_min ε) scale;
not checked against the full text, whose constants the library's calibration replaces anyway);
the common factor is found by bisection on the library's ε. `mode = "central"` splits the noise into
n shares σ/√n summed under secure aggregation, as dp_sgd does (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from .. import rng
from ..errors import UserError
from ..privacy import accounting
from ..privacy.mechanisms import clipped_sum, gaussian_noise, pad
from .base import ALGORITHMS, Seed, StepSize, options
from .dp_sgd import local_shards, validate_model


def plan_rounds(rounds: int, period: int) -> tuple[int, int]:
    """(K1, K2): restart rounds and difference rounds among the first `rounds` (r = 1, T+1, ...)."""
    restarts = -(-rounds // period)
    return restarts, rounds - restarts


def history(sigma1: float, sigma2: float, rounds: int, period: int) -> list[tuple[float, float, int]]:
    """The accountant's (σ, q, steps) history of `rounds` rounds in their order (q = 1: full batch)."""
    out: list[tuple[float, float, int]] = []
    for r in range(rounds):
        s = float(sigma1 if r % period == 0 else sigma2)
        if out and out[-1][0] == s:
            out[-1] = (s, 1.0, out[-1][2] + 1)
        else:
            out.append((s, 1.0, 1))
    return out


def epsilon(sigma1: float, sigma2: float, rounds: int, period: int, delta: float, accountant: str = "rdp") -> float:
    """ε after `rounds` rounds: Opacus composes the restart and difference Gaussians (q = 1)."""
    acc = accounting.Accountant(accountant, "poisson")
    for s, q, t in history(sigma1, sigma2, rounds, period):
        acc.step(s, q, t)
    return acc.epsilon(delta)


def calibrate(target_epsilon: float, delta: float, rounds: int, period: int, accountant: str = "rdp") -> tuple[float, float]:
    """(σ1, σ2) = s·(√K1, √K2) with the smallest s (bisection to 1e-4 relative) whose composed ε
    (the library's) is at most target_epsilon: the paper's scaling, half the Rényi budget each."""
    accounting.check_target_epsilon(target_epsilon)
    accounting.check_delta(delta)
    k1, k2 = plan_rounds(rounds, period)

    def eps(s: float) -> float:
        return epsilon(s * math.sqrt(k1), s * math.sqrt(k2), rounds, period, delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            raise UserError(f"diff2: target_epsilon = {target_epsilon:g} is unreachable in {rounds} rounds (δ = {delta:g})")
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi * math.sqrt(k1), hi * math.sqrt(k2)


def max_rounds(sigma1: float, sigma2: float, period: int, delta: float, target_epsilon: float, accountant: str = "rdp", guess: int = 1) -> int:
    """The largest R with ε(R rounds) ≤ target_epsilon (0 if not even one round fits), by
    doubling from `guess` and bisecting on the library's ε (ε grows with the rounds)."""

    def fits(r: int) -> bool:
        return epsilon(sigma1, sigma2, r, period, delta, accountant) <= target_epsilon

    if not fits(1):
        return 0
    lo, hi = 1, max(2, int(guess))
    while fits(hi):  # invariant: fits(lo)
        if hi >= accounting.MAX_STEPS:
            return accounting.MAX_STEPS
        lo, hi = hi, min(2 * hi, accounting.MAX_STEPS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def full_shards(shards) -> tuple[torch.Tensor, torch.Tensor]:
    """Every record of every local shard: indices [m, N_max] (padded with the shard's first
    record) and mask [m, N_max] (True = a real record)."""
    return pad(list(shards), shards)


@ALGORITHMS.register(
    paper="Murata & Suzuki, ICML 2023 (DIFF2, Alg. 1, GD routine); Mironov, CSF 2017",
    hidden=("client_sizes", "run_steps"),
)
@options
class DIFF2:
    """DIFF2-GD: DP full-batch GD whose estimator adds clipped, noised gradient differences."""

    engine_fields = ("client_sizes", "run_steps")  # set by the engine (unannotated: not an option)
    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: StepSize
    restart_period: Annotated[int, Field(ge=1, description="T: a full (clipped, noised) gradient every T rounds, differences between")] = 10
    max_grad_norm: Annotated[float | None, Field(gt=0, description="C1, the per-record clip of the restart gradients (None: no clipping, only with σ = 0)")] = 1.0
    diff_clip: Annotated[float | None, Field(gt=0, description="C2: differences are clipped per record at C2·‖x_{r−1} − x_{r−2}‖ (None: no clipping, only with σ = 0)")] = 1.0
    noise_multiplier: Annotated[float | None, Field(ge=0, description="σ1: noise std σ1·C1 on each restart sum (None: calibrated from target_epsilon)")] = None
    diff_noise_multiplier: Annotated[float | None, Field(ge=0, description="σ2: noise std σ2·C_{2,r} on each difference sum (None: calibrated)")] = None
    target_epsilon: Annotated[float | None, Field(gt=0, description="ε budget: calibrates σ1, σ2 for the planned rounds, or bounds the run")] = None
    delta: Annotated[float, Field(gt=0, lt=1, description="δ of the (ε, δ) guarantee")] = 1e-5
    steps: Annotated[int | None, Field(ge=1, description="planned rounds R (default: the run's steps)")] = None
    accountant: Annotated[Literal["rdp", "prv"], Field(description="Opacus accountant composing the rounds' Gaussians (q = 1)")] = "rdp"
    mode: Annotated[Literal["local", "central"], Field(description="local: each worker adds σC; central: each adds σC/√n, summed under secure aggregation")] = "local"
    chunk: Annotated[int | None, Field(ge=1, description="records per per-sample gradient call (memory bound; the result is the same)")] = None
    client_sizes: tuple[int, ...] | None = None  # n_p, set by the engine
    run_steps: int | None = None  # the run's steps, set by the engine: the planned rounds when steps is unset
    seed: Seed = None
    name: str = "diff2"

    def __post_init__(self):
        sigmas = (self.noise_multiplier, self.diff_noise_multiplier)
        if self.max_grad_norm is None and self.noise_multiplier != 0:
            raise ValueError("max_grad_norm = None (no clipping) leaves the restart's sensitivity unbounded: only with noise_multiplier = 0")
        if self.diff_clip is None and self.diff_noise_multiplier != 0:
            raise ValueError("diff_clip = None (no clipping) leaves the differences' sensitivity unbounded: only with diff_noise_multiplier = 0")
        if (sigmas[0] is None) != (sigmas[1] is None):
            raise ValueError("set both noise_multiplier (σ1) and diff_noise_multiplier (σ2), or neither with target_epsilon")
        accounting.check_kind(self.accountant, "poisson")

    # -- planning: the rounds, σ1 and σ2 ----------------------------------------------------
    @property
    def rounds(self) -> int | None:
        return self.steps if self.steps is not None else self.run_steps

    def bind(self, n: int):
        """With the run known: calibrate (σ1, σ2) from target_epsilon for the planned rounds,
        or check given ones against it, before anything trains."""
        if self.client_sizes is not None and len(self.client_sizes) != n:
            raise ValueError(f"client_sizes has {len(self.client_sizes)} entries for {n} workers")
        if self.client_sizes is not None and self.noise_multiplier is None and self.target_epsilon is None:
            raise UserError("diff2: set noise_multiplier and diff_noise_multiplier (σ1, σ2) or target_epsilon")
        if self.target_epsilon is None or self.rounds is None:
            return self
        if self.noise_multiplier is None:
            s1, s2 = calibrate(self.target_epsilon, self.delta, self.rounds, self.restart_period, self.accountant)
            return dataclasses.replace(self, noise_multiplier=s1, diff_noise_multiplier=s2)
        if self.steps is not None:  # an explicit plan is checked; a run's steps stop at the budget
            spent = epsilon(self.noise_multiplier, self.diff_noise_multiplier, self.steps, self.restart_period, self.delta, self.accountant)
            if spent > self.target_epsilon:
                raise UserError(
                    f"diff2: σ1 = {self.noise_multiplier:g}, σ2 = {self.diff_noise_multiplier:g} spend ε = {spent:.4g} > "
                    f"target_epsilon = {self.target_epsilon:g} in the {self.steps} planned rounds (δ = {self.delta:g})"
                )
        return self

    # -- the algorithm ---------------------------------------------------------------------
    def init(self, x0, comm):
        if self.noise_multiplier is None:
            raise UserError("diff2: σ1, σ2 are calibrated from target_epsilon for the planned rounds: set steps, or run it with distsgd.train")
        if self.client_sizes is None:
            raise UserError("diff2 needs the workers' shard sizes (client_sizes): run it with distsgd.train")
        return {
            "x": x0.clone(),
            "x_prev": x0.clone(),  # x_{r−2}
            "v": torch.zeros_like(x0[:1]),  # the estimator, the same on every worker: one row
            "t": 0,
            "noise_rng": rng.states(self.seed or 0, comm.workers, "dp_noise"),
            "accountant": accounting.Accountant(self.accountant, "poisson").state_dict(),
            "max_steps": None if self.target_epsilon is None else max_rounds(
                self.noise_multiplier, self.diff_noise_multiplier, self.restart_period, self.delta,
                self.target_epsilon, self.accountant, guess=self.rounds or 1,
            ),  # None: no budget
        }

    def budget_exhausted(self, state) -> bool:
        """True when one more round would spend more than target_epsilon."""
        limit = state["max_steps"]
        return limit is not None and state["t"] + 1 > limit

    def _clipped_sum(self, oracle, x, x_prev, idx, mask, scale, clip):
        """Σ_z mask·clip_C(g_z(x) − g_z(x_prev)) / scale over the shard in chunks (x_prev None:
        the gradients themselves): [m, d]."""
        width = idx.shape[1] if self.chunk is None else self.chunk
        total = None
        for lo in range(0, idx.shape[1], width):
            cols = slice(lo, lo + width)
            g = oracle(x, indices=idx[:, cols], mask=mask[:, cols], per_sample=True)
            if x_prev is not None:  # the same samples at the previous point: counted once
                g = g - oracle(x_prev, indices=idx[:, cols], mask=mask[:, cols], count=False, per_sample=True)
            s = clipped_sum(g / scale.to(g.dtype).view(-1, 1, 1), clip, mask[:, cols])
            total = s if total is None else total + s
        return total

    def step(self, state, oracle, comm):
        if self.budget_exhausted(state):
            raise UserError(f"the privacy budget ε = {self.target_epsilon:g} (δ = {self.delta:g}) is spent: stop the run there")
        t, x, x_prev = state["t"], state["x"], state["x_prev"]
        shards = local_shards(oracle, comm)
        local = list(comm.workers)
        for i, shard in zip(local, shards, strict=True):
            if len(shard) != self.client_sizes[i]:
                raise UserError(f"worker {i}'s shard holds {len(shard)} samples, client_sizes says {self.client_sizes[i]}")
        idx, mask = full_shards(shards)
        restart = t % self.restart_period == 0
        if restart:  # Alg. 1: the clipped full gradient at x_{r−1}
            sigma, clip = self.noise_multiplier, self.max_grad_norm
            scale = torch.ones(comm.m, dtype=torch.float64)
            s = self._clipped_sum(oracle, x, None, idx, mask, scale, math.inf if clip is None else clip)
        else:  # Alg. 1: the clipped difference at radius C2·‖x_{r−1} − x_{r−2}‖, written as Δ·clip_{C2}(·/Δ)
            sigma, clip = self.diff_noise_multiplier, self.diff_clip
            step_norm = torch.linalg.vector_norm((x - x_prev).double(), dim=1)  # ‖x_{r−1} − x_{r−2}‖ per row
            scale = torch.where(step_norm > 0, step_norm, torch.ones_like(step_norm))
            s = self._clipped_sum(oracle, x, x_prev, idx, mask, scale, math.inf if clip is None else clip)
            scale = step_norm  # Δ = 0: x did not move, the difference and its noise are 0
        gens = rng.load(state["noise_rng"])
        std = 0.0 if sigma == 0 else sigma * clip / (math.sqrt(comm.n) if self.mode == "central" else 1.0)
        s = (s + gaussian_noise(gens, s.shape, std, dtype=s.dtype)) * scale.to(s.dtype).unsqueeze(1)
        if self.mode == "central":
            normalizer = torch.full((comm.m,), sum(self.client_sizes) / comm.n, dtype=s.dtype)
        else:
            normalizer = torch.tensor([self.client_sizes[i] for i in local], dtype=s.dtype)
        d = comm.all_reduce_mean((s / normalizer.unsqueeze(1)).to(x.dtype))[:1]
        v = d if restart else state["v"] + d
        acc = accounting.Accountant.from_state(state["accountant"])
        acc.step(sigma, 1.0)
        return {
            "x": x - self.lr * v,  # the GD routine
            "x_prev": x.clone(),
            "v": v,
            "t": t + 1,
            "noise_rng": rng.save(gens),
            "accountant": acc.state_dict(),
            "max_steps": state["max_steps"],
        }

    def epsilon(self, state) -> float:
        """ε spent so far at δ (the library's composition of the rounds)."""
        return accounting.Accountant.from_state(state["accountant"]).epsilon(self.delta)

    def metrics(self, state) -> dict:
        return {
            "epsilon": self.epsilon(state),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "diff_noise_multiplier": self.diff_noise_multiplier,
        }

    def prepare_task(self, task):
        """Refuse models without per-sample gradients (BatchNorm) before training."""
        validate_model(task.model)
        return task
