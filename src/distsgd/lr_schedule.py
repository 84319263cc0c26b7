"""Learning-rate schedules applied by the runner to any algorithm with an `lr` field.

The factor multiplies the algorithm's base `lr` at step t (0-based, of `steps`):

    constant:  1
    cosine:    ½(1 + cos(π·p)),  p = (t − warmup)/(steps − warmup)       (Loshchilov & Hutter 2017)
    step:      gamma^(number of milestones m with t ≥ m·steps)          (milestones as fractions)

with an optional linear warmup (t + 1)/warmup over the first `warmup` steps (Goyal et al.
2017), which every kind honours. The runner rebuilds the (frozen) algorithm with the
scaled `lr` only when the factor changes, so a constant schedule costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "cosine", "step")


@dataclass(frozen=True)
class LRSchedule:
    kind: str = "constant"
    warmup: int = 0
    milestones: tuple[float, ...] = (0.5, 0.75)  # for "step": fractions of the run
    gamma: float = 0.1  # for "step": factor at each milestone

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"lr schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.warmup < 0 or not 0 < self.gamma <= 1:
            raise ValueError("lr schedule needs warmup >= 0 and 0 < gamma <= 1")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError("lr schedule milestones are fractions of the run, each in (0, 1)")

    def factor(self, t: int, steps: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.kind == "cosine":
            span = max(steps - self.warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t - self.warmup, span) / span))
        if self.kind == "step":
            return self.gamma ** sum(t >= m * steps for m in self.milestones)
        return 1.0
