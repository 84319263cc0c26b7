"""Input perturbation: noise added to the data once, before training, with its own ε.

Arcolezi et al., "Differentially private multivariate time series forecasting of aggregated
human mobility with deep learning: input or gradient perturbation?", Neural Comput. Appl. 34
(2022) 13355, compare this with DP-SGD (gradient perturbation) at equal ε. Every released
value v of the training series (the number of people in one region during one half-hour)
becomes

    Laplace mechanism:   v + Lap(Δ₁/ε)                            (ε-DP; Dwork et al. 2006)
    Gaussian mechanism:  v + N(0, σ²), σ = Δ₂ · σ*(ε, δ)          ((ε, δ)-DP)

where σ*(ε, δ) is the analytic Gaussian mechanism's noise for sensitivity 1 (Balle & Wang,
ICML 2018), computed by dp-accounting (`gaussian_mechanism.get_sigma_gaussian`); the paper's
classical σ = Δ₂√(2 ln(1.25/δ))/ε is looser and valid only for ε < 1.

Sensitivity, stated: a count changes by at most 1 when one person is added or removed at one
time step (a person is in one region at a time), so Δ₁ = Δ₂ = 1 per value by default. The
guarantee is per record (one person at one time step). A person present in k released values
is protected at kε (sequential composition), the paper's ε̌ = 3120·ε for someone present over
its whole 65-day training period. Everything computed afterwards (standardization, windows,
any training, any number of epochs) is post-processing: no further privacy cost, unlike
DP-SGD, whose ε grows with the steps. What it protects: the data themselves, before any
learning party sees them; what it costs: every value carries noise of the full scale.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .. import rng
from ..errors import UserError

MECHANISMS = ("laplace", "gaussian")


def noise_scale(
    epsilon: float,
    mechanism: Literal["laplace", "gaussian"] = "laplace",
    *,
    delta: float | None = None,
    sensitivity: float = 1.0,
) -> float:
    """The Laplace scale b = Δ₁/ε, or the Gaussian σ = Δ₂·σ*(ε, δ) (analytic, dp-accounting)."""
    if not (isinstance(epsilon, int | float) and epsilon > 0 and math.isfinite(epsilon)):
        raise UserError(f"input perturbation epsilon must be a finite number > 0, got {epsilon}")
    if not (isinstance(sensitivity, int | float) and sensitivity > 0 and math.isfinite(sensitivity)):
        raise UserError(f"input perturbation sensitivity must be a finite number > 0, got {sensitivity}")
    if mechanism == "laplace":
        if delta not in (None, 0, 0.0):
            raise UserError("the Laplace mechanism is pure ε-DP: leave delta unset (or use mechanism = 'gaussian')")
        return sensitivity / epsilon
    if mechanism == "gaussian":
        if delta is None or not 0 < delta < 1:
            raise UserError(f"the Gaussian mechanism needs delta in (0, 1), got {delta}")
        from dp_accounting.gaussian_mechanism import get_sigma_gaussian

        return sensitivity * float(get_sigma_gaussian(epsilon, delta))
    raise UserError(f"unknown input perturbation mechanism {mechanism!r} (choose from {', '.join(MECHANISMS)})")


def perturb(
    values: torch.Tensor,
    epsilon: float,
    mechanism: Literal["laplace", "gaussian"] = "laplace",
    *,
    delta: float | None = None,
    sensitivity: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`values` with independent noise of the mechanism added to every entry, once."""
    scale = noise_scale(epsilon, mechanism, delta=delta, sensitivity=sensitivity)
    if mechanism == "gaussian":
        noise = torch.randn(values.shape, generator=generator, dtype=torch.float64) * scale
    else:  # inverse CDF of Lap(0, b): u ~ U(−½, ½), −b·sign(u)·log(1 − 2|u|)
        u = torch.rand(values.shape, generator=generator, dtype=torch.float64) - 0.5
        noise = -scale * u.sign() * torch.log1p(-2 * u.abs())
    return (values.double() + noise).to(values.dtype if values.is_floating_point() else torch.float64)


def series_perturbation(epsilon: float, mechanism: str = "laplace", *, delta: float | None = None, sensitivity: float = 1.0, seed: int = 0):
    """The map a dataset applies to its raw training series once (see `datasets.mobility`),
    drawing from the run's "input_noise" stream. Checks its options now, before any data."""
    noise_scale(epsilon, mechanism, delta=delta, sensitivity=sensitivity)

    def apply(values: torch.Tensor) -> torch.Tensor:
        return perturb(values, epsilon, mechanism, delta=delta, sensitivity=sensitivity, generator=rng.generator(seed, 0, "input_noise"))

    return apply
