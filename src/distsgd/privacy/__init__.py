"""Differential privacy: accounting by maintained libraries, the DP-SGD mechanism, samplers.

- `accounting`: (ε, δ) of the subsampled Gaussian mechanism (Opacus RDP / PRV for Poisson
  sampling, dp-accounting RDP for sampling without replacement), σ calibration, a
  checkpointable accountant.
- `mechanisms`: per-sample clipping, Gaussian noise from per-worker generators,
  normalization by the expected batch, and the Poisson / uniform samplers.

The algorithm is `distsgd.algorithms.dp_sgd.DPSGDPrivate` (registered as "dp_sgd").
"""

from .accounting import Accountant, epsilon, max_steps, noise_multiplier
from .mechanisms import (
    clip,
    clip_factors,
    clipped_sum,
    gaussian_noise,
    poisson_sample,
    privatize,
    uniform_sample,
)

__all__ = [
    "Accountant",
    "clip",
    "clip_factors",
    "clipped_sum",
    "epsilon",
    "gaussian_noise",
    "max_steps",
    "noise_multiplier",
    "poisson_sample",
    "privatize",
    "uniform_sample",
]
