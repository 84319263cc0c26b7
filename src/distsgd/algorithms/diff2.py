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

Privacy. The guarantee is for what the rounds release (the noised average the server, or
secure aggregation, forms), as in the paper: each round is one Gaussian mechanism on a
full-batch clipped sum (sample rate 1); one record, replaced, moves its worker's sum by at most
2·C1 (restart) or 2·C_{2,r} (difference), and the noise is σ1·C1 or σ2·C_{2,r}. Calibration
(`calibration = "paper"`, the default) is the paper's, for R planned rounds, restart period T,
target (ε, δ) and u = 1.25:

    α  = 1 + ⌈2 ln(1/δ) / ε⌉                              (one Rényi order)
    σ1 = √(4u·α·K1 / ε)         (T = 1, DP-GD: √(4·α·R / ε))
    σ2 = √(4u·α·R / ((u − 1)·ε))

with K1 = R/T restarts. These are the noise multipliers of a worker's clipped *sum*; the
authors state them on the average of the P workers' means, σ_paper = σ / (n_min·P):
σ1,paper² = 4u·α·R / (T·n_min²·P²·ε), σ2,paper² = 4u·α·R / ((u − 1)·n_min²·P²·ε), which is
what the authors' reproduction code sets (`Diff2_GD_Server._set_sigma`, `_set_sigma2`, as
preserved in the public fork lawrenceztang/CE-PLSGM, src/optimizers.py: coef 4u for T > 1,
4 for T = 1, coef 2·2u/(u − 1) for σ2, α = int(1 + ⌈2 log(1/δ)/ε⌉), u = 1.25). Why it
holds (Mironov, CSF 2017: the Gaussian's RDP, composition, conversion to (ε, δ)): a Gaussian of sensitivity 2C and std σC is
(α, 2α/σ²)-RDP, so the K1 restarts spend K1·2α/σ1² = ε/(2u), the at most R differences
R·2α/σ2² = (u − 1)ε/(2u), together ε/2, and ε/2 + ln(1/δ)/(α − 1) ≤ ε: the restarts get the
share 1/u of the Rényi budget, the differences (u − 1)/u. Left open by what we could read:
the paper's own statement (its text past the introduction was not retrievable here, so the
proposition is not cited by number; the formula is the authors' code, checked by the proof
above); we take K1 = ⌈R/T⌉ (the paper's R/T when T divides R, sound otherwise), and count
R difference rounds as the paper does (K2 = R − K1 < R: conservative). `mode = "central"`
is the paper's noise on the average exactly (n shares σC/√n summed under secure aggregation,
as dp_sgd's; with equal shards the std on the average is σ1·C1/(n·P) = σ1,paper·C1);
`mode = "local"` adds σC per worker, so each message alone carries the guarantee against
everybody (√P more noise on the average than the paper's).

The reported ε is the library's: Opacus's RDP (or PRV) accountant over the history
[(σ1, 1, K1), (σ2, 1, K2)] (Gaussians at q = 1, the add/remove relation of Opacus's DP-GD,
sensitivity C), which is tighter than the paper's single-order bound, so it comes out below
the target; the run stops when that ε would pass `target_epsilon`. `calibration =
"accountant"` instead keeps the paper's ratio σ2/σ1 = √(R / ((u − 1)·K1)) (the same 1/u :
(u − 1)/u split of the Rényi budget at every order) and finds the smallest common scale whose
library ε meets the target, by bisection.
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


PAPER_U = 1.25  # the paper's u > 1: the restarts get 1/u of the Rényi budget (the authors' code's value)


def paper_order(target_epsilon: float, delta: float) -> int:
    """α = 1 + ⌈2 ln(1/δ)/ε⌉: the Rényi order of the paper's calibration, at which
    ln(1/δ)/(α − 1) ≤ ε/2."""
    return 1 + math.ceil(2 * math.log(1 / delta) / target_epsilon)


def paper_sigmas(target_epsilon: float, delta: float, rounds: int, period: int, u: float = PAPER_U) -> tuple[float, float]:
    """The paper's (σ1, σ2) for R = `rounds`, T = `period` and (ε, δ), as noise multipliers of
    a worker's clipped sum: σ1 = √(4u·α·K1/ε), σ2 = √(4u·α·R/((u − 1)·ε)), K1 = ⌈R/T⌉;
    T = 1 (DP-GD, no differences): σ1 = σ2 = √(4·α·R/ε). See the module docstring."""
    accounting.check_target_epsilon(target_epsilon)
    accounting.check_delta(delta)
    if not u > 1:
        raise UserError(f"diff2: the budget split u must be > 1, got {u}")
    alpha = paper_order(target_epsilon, delta)
    k1, _ = plan_rounds(rounds, period)
    if period == 1:
        sigma = math.sqrt(4 * alpha * k1 / target_epsilon)
        return sigma, sigma
    return math.sqrt(4 * u * alpha * k1 / target_epsilon), math.sqrt(4 * u * alpha * rounds / ((u - 1) * target_epsilon))


def calibrate(
    target_epsilon: float, delta: float, rounds: int, period: int, accountant: str = "rdp", method: str = "paper"
) -> tuple[float, float]:
    """(σ1, σ2) for the planned rounds: the paper's closed form (`method = "paper"`), or
    (`"accountant"`) the paper's ratio σ2/σ1 = √(R/((u − 1)·K1)) with the smallest common
    scale s (bisection to 1e-4 relative) whose composed ε (the library's) is at most
    target_epsilon."""
    if method == "paper":
        return paper_sigmas(target_epsilon, delta, rounds, period)
    accounting.check_target_epsilon(target_epsilon)
    accounting.check_delta(delta)
    k1, _ = plan_rounds(rounds, period)
    r1, r2 = (1.0, 1.0) if period == 1 else (math.sqrt(PAPER_U * k1), math.sqrt(PAPER_U * rounds / (PAPER_U - 1)))

    def eps(s: float) -> float:
        return epsilon(s * r1, s * r2, rounds, period, delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            raise UserError(f"diff2: target_epsilon = {target_epsilon:g} is unreachable in {rounds} rounds (δ = {delta:g})")
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi * r1, hi * r2


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
    calibration: Annotated[Literal["paper", "accountant"], Field(description="σ1, σ2 from target_epsilon: the paper's closed form, or its ratio scaled by the accountant")] = "paper"
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
            s1, s2 = calibrate(self.target_epsilon, self.delta, self.rounds, self.restart_period, self.accountant, self.calibration)
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
