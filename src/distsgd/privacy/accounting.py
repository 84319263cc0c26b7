"""Privacy accounting of the subsampled Gaussian mechanism, done by maintained libraries.

DP-SGD (Abadi et al., "Deep learning with differential privacy", CCS 2016, Alg. 1) releases,
every step, a clipped sum of a random subsample plus N(0, σ²C²I). Its (ε, δ) after T steps is
computed here by a library, never by hand:

- Poisson sampling (each record joins the batch with probability q, independently, the
  add-or-remove-one neighbouring relation): Opacus's accountants, `"rdp"` (Rényi DP of the
  sampled Gaussian, Mironov, CSF 2017 and Mironov, Talwar, Zhang 2019, converted to (ε, δ) as
  in Balle et al. 2020; the TF-Privacy port in `opacus.accountants.analysis.rdp`) or `"prv"`
  (privacy-loss random variables composed by FFT, Gopi, Lee, Wutschitz, NeurIPS 2021; an
  upper bound, tighter than RDP).
- uniform fixed-size sampling without replacement (a batch of exactly B of the N records,
  fresh every step): Google's dp-accounting `RdpAccountant` with the replace-one
  neighbouring relation and `SampledWithoutReplacementDpEvent` (Wang, Balle, Kasiviswanathan,
  "Subsampled Rényi DP and analytical moments accountant", AISTATS 2019, Thm. 27). Under
  replace-one, swapping one record moves a clipped sum by up to 2C, so the Gaussian event
  gets noise multiplier σ/2 (noise σC over sensitivity 2C). Its ε is a replace-one guarantee
  (datasets of the same size differing in one record), not comparable one for one with the
  add-or-remove ε of Poisson sampling. There is no PRV accountant for this sampler: asking
  for one is refused, never answered with the Poisson accountant.

Why Opacus for Poisson: its RDP accountant is the reference that most published DP-SGD
numbers were computed with (σ = 1.5, q = 0.04, 2250 steps, δ = 1e-5 gives ε = 7.32911...),
its PRV accountant is the tightest general one, and `get_noise_multiplier` is the standard
calibration. dp-accounting is used only where Opacus has no analysis (sampling without
replacement). `Accountant` keeps the history of (σ, q, steps) that both libraries compose,
as plain numbers, so a checkpoint holds it and a resumed run continues the sum exactly.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

ACCOUNTANTS = ("rdp", "prv")
SAMPLINGS = ("poisson", "uniform")
MAX_STEPS = 10**9  # "never exhausted" for the budget search


# -- the checks every entry point shares: one line each ----------------------------------------


def check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise UserError(f"delta must be in (0, 1), got {delta}")


def check_noise_multiplier(noise_multiplier: float) -> None:
    if not (isinstance(noise_multiplier, int | float) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise UserError(f"noise_multiplier σ must be a finite number >= 0, got {noise_multiplier}")


def check_sample_rate(sample_rate: float) -> None:
    if not (isinstance(sample_rate, int | float) and 0 < sample_rate <= 1):
        raise UserError(f"sample_rate q must be in (0, 1], got {sample_rate}")


def check_target_epsilon(target_epsilon: float) -> None:
    if not (isinstance(target_epsilon, int | float) and 0 < target_epsilon and math.isfinite(target_epsilon)):
        raise UserError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")


def check_kind(accountant: str, sampling: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise UserError(f"unknown accountant {accountant!r} (choose from {', '.join(ACCOUNTANTS)})")
    if sampling not in SAMPLINGS:
        raise UserError(f"unknown sampling {sampling!r} (choose from {', '.join(SAMPLINGS)})")
    if sampling == "uniform" and accountant != "rdp":
        raise UserError(
            f"the {accountant!r} accountant analyses Poisson sampling only; fixed-size uniform sampling "
            "is accounted by dp-accounting's RDP (replace-one): use accountant = 'rdp' or sampling = 'poisson'"
        )


def _batch(sample_rate: float, dataset_size: int | None) -> int:
    """The fixed batch size B = q·N of uniform sampling (q must be B/N for an integer B)."""
    if dataset_size is None or dataset_size < 1:
        raise UserError("uniform sampling is accounted with the dataset size N: pass dataset_size")
    b = round(sample_rate * dataset_size)
    if not 1 <= b <= dataset_size or abs(b - sample_rate * dataset_size) > 1e-6 * dataset_size:
        raise UserError(f"uniform sampling needs q·N to be a batch size in [1, N]: q = {sample_rate}, N = {dataset_size}")
    return b


# -- the accountant ----------------------------------------------------------------------------


@dataclass
class Accountant:
    """The (σ, q, steps) history of one subsampled Gaussian mechanism and its (ε, δ).

    `accountant` is "rdp" or "prv"; `sampling` is "poisson" (Opacus) or "uniform" (fixed batch
    q·N without replacement, dp-accounting, needs `dataset_size` N). `step` adds steps
    (consecutive equal (σ, q) merge, as Opacus's accountants do), `epsilon(δ)` asks the library,
    `state_dict()` / `from_state()` are plain numbers for checkpoints.
    """

    accountant: str = "rdp"
    sampling: str = "poisson"
    dataset_size: int | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self):
        check_kind(self.accountant, self.sampling)
        self.history = [(float(s), float(q), int(t)) for s, q, t in self.history]
        for s, q, _ in self.history:
            check_noise_multiplier(s)
            check_sample_rate(q)
            if self.sampling == "uniform":
                _batch(q, self.dataset_size)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        check_noise_multiplier(noise_multiplier)
        check_sample_rate(sample_rate)
        if self.sampling == "uniform":
            _batch(sample_rate, self.dataset_size)
        if steps < 0:
            raise UserError(f"steps must be >= 0, got {steps}")
        if steps == 0:
            return
        if self.history and self.history[-1][:2] == (float(noise_multiplier), float(sample_rate)):
            s, q, t = self.history[-1]
            self.history[-1] = (s, q, t + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        return sum(t for _, _, t in self.history)

    def epsilon(self, delta: float) -> float:
        """ε spent at δ, as the library computes it (inf when some step had σ = 0)."""
        check_delta(delta)
        history = [h for h in self.history if h[2] > 0]
        if not history:
            return 0.0
        if any(s == 0 for s, _, _ in history):
            return math.inf  # no noise: the library's answer too (RDP is infinite); skip the warnings
        if self.sampling == "uniform":
            return _uniform_epsilon(history, self.dataset_size, delta)
        from opacus.accountants import PRVAccountant, RDPAccountant

        acc = RDPAccountant() if self.accountant == "rdp" else PRVAccountant()
        acc.history = list(history)
        with warnings.catch_warnings():  # "optimal order is the largest alpha": not an error
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta=delta))

    def state_dict(self) -> dict:
        return {
            "accountant": self.accountant,
            "sampling": self.sampling,
            "dataset_size": self.dataset_size,
            "history": [[s, q, t] for s, q, t in self.history],
        }

    @classmethod
    def from_state(cls, state: dict) -> Accountant:
        return cls(state["accountant"], state["sampling"], state["dataset_size"], [tuple(h) for h in state["history"]])


def _uniform_event(noise_multiplier: float, batch: int, dataset_size: int):
    """One step: a batch of `batch` of `dataset_size` records drawn without replacement,
    the Gaussian mechanism on the sum (noise σC over a replace-one sensitivity of 2C: multiplier σ/2)."""
    import dp_accounting as dpa

    return dpa.SampledWithoutReplacementDpEvent(dataset_size, batch, dpa.GaussianDpEvent(noise_multiplier / 2))


def _uniform_events(history, dataset_size: int):
    import dp_accounting as dpa

    return dpa.ComposedDpEvent(
        [dpa.SelfComposedDpEvent(_uniform_event(s, _batch(q, dataset_size), dataset_size), t) for s, q, t in history]
    )


def _replace_one_accountant():
    import dp_accounting as dpa

    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)


@functools.lru_cache(maxsize=256)
def _uniform_rdp_once(noise_multiplier: float, batch: int, dataset_size: int):
    """(orders, RDP of one step) of the library's accountant for one sampled-without-
    replacement Gaussian step, or None where the library keeps them elsewhere. Computing
    them is the costly part (about 0.1 s), and they do not change from step to step."""
    acc = _replace_one_accountant()
    acc.compose(_uniform_event(noise_multiplier, batch, dataset_size))
    orders, rdp = getattr(acc, "_orders", None), getattr(acc, "_rdp", None)
    return None if orders is None or rdp is None else (np.array(orders), np.array(rdp))


def _uniform_epsilon(history, dataset_size: int, delta: float) -> float:
    """The library's ε for `history`: its composition (RDP += steps × one step's RDP, event
    by event, from zero) and its `compute_epsilon`, with each event's one-step RDP cached."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    once = [_uniform_rdp_once(s, _batch(q, dataset_size), dataset_size) for s, q, _ in history]
    if any(o is None for o in once):  # the library changed its insides: compose from scratch
        return float(_replace_one_accountant().compose(_uniform_events(history, dataset_size)).get_epsilon(delta))
    orders = once[0][0]
    rdp = np.zeros_like(orders, dtype=np.float64)
    for (_, _, t), (_, r) in zip(history, once, strict=True):
        rdp += t * r
    return float(compute_epsilon(orders, rdp, delta)[0])


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    *,
    sampling: str = "poisson",
    dataset_size: int | None = None,
) -> float:
    """ε after `steps` steps of the subsampled Gaussian mechanism (σ, q) at δ (see `Accountant`)."""
    acc = Accountant(accountant, sampling, dataset_size)
    acc.step(noise_multiplier, sample_rate, steps)
    return acc.epsilon(delta)


# -- calibration -------------------------------------------------------------------------------


def noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    *,
    sampling: str = "poisson",
    dataset_size: int | None = None,
) -> float:
    """The σ that keeps ε ≤ target_epsilon after `steps` steps at q, δ: Opacus's
    `get_noise_multiplier` (bisection to ε within 0.01 below the target) for Poisson sampling,
    dp-accounting's `calibrate_dp_mechanism` for uniform. A target no σ reaches within the
    steps is one UserError line."""
    check_target_epsilon(target_epsilon)
    check_delta(delta)
    check_sample_rate(sample_rate)
    check_kind(accountant, sampling)
    if steps < 1:
        raise UserError(f"planned steps must be >= 1, got {steps}")
    unreachable = UserError(
        f"target_epsilon = {target_epsilon:g} is unreachable in {steps} steps at sample rate {sample_rate:g} "
        f"(δ = {delta:g}, {accountant} accountant, {sampling} sampling): no noise multiplier σ ≤ 1e6 gets there; "
        "plan fewer steps, a lower sample rate, a larger δ"
        + (" or the prv accountant" if accountant == "rdp" and sampling == "poisson" else "")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampling == "poisson":
            from opacus.accountants.utils import get_noise_multiplier

            try:
                return float(
                    get_noise_multiplier(
                        target_epsilon=target_epsilon,
                        target_delta=delta,
                        sample_rate=sample_rate,
                        steps=steps,
                        accountant=accountant,
                    )
                )
            except ValueError:  # "The privacy budget is too low."
                raise unreachable from None
        from dp_accounting import mechanism_calibration as mc

        b = _batch(sample_rate, dataset_size)
        try:
            sigma = mc.calibrate_dp_mechanism(
                _replace_one_accountant,
                lambda s: _uniform_events([(s, b / dataset_size, steps)], dataset_size),
                target_epsilon,
                delta,
                mc.LowerEndpointAndGuess(1e-3, 1.0),
                tol=1e-4,
            )
        except (mc.NoBracketIntervalFoundError, ValueError):
            raise unreachable from None
        if sigma is None or sigma > 1e6:
            raise unreachable
        return float(sigma)


def max_steps(
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    target_epsilon: float,
    accountant: str = "rdp",
    *,
    sampling: str = "poisson",
    dataset_size: int | None = None,
    guess: int = 1,
) -> int:
    """The largest T with ε(σ, q, T, δ) ≤ target_epsilon (0 if not even one step fits;
    `MAX_STEPS` if T reaches it), by doubling from `guess` and bisecting on the library's ε
    (ε grows with T)."""
    check_target_epsilon(target_epsilon)

    def fits(t: int) -> bool:
        return epsilon(noise_multiplier, sample_rate, t, delta, accountant, sampling=sampling, dataset_size=dataset_size) <= target_epsilon

    if not fits(1):
        return 0
    lo, hi = 1, max(2, int(guess))
    while fits(hi):  # invariant: fits(lo)
        if hi >= MAX_STEPS:
            return MAX_STEPS
        lo, hi = hi, min(2 * hi, MAX_STEPS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
