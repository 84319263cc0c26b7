"""Byzantine attacks: what the Byzantine workers send in place of their true message.

An attack sees every worker's true message g[n, d] (the omniscient adversary of the
papers: it knows the honest gradients) and the ids of the Byzantine workers, and returns
the f rows they send. μ and σ below are the coordinate-wise mean and standard deviation
of the true messages of all n workers.

- `sign_flip`:   −g_i (the ICLR 2019 signSGD adversary; Allen-Zhu et al. 2021)
- `scaled_flip`: −c·g_i, the "scaled bit flip" of the BGMD paper (c = 100 there)
- `gaussian`:    g_i + N(0, σ_n² I) (BGMD: additive N(0, 100), σ_n = 10); the noise of
                 step t comes from stream (seed, t, "attack") of `distsgd.rng`, which every
                 process draws alike (each sees all n messages)
- `alie`:        μ − z·σ, "A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS 2019):
                 s = ⌊n/2 + 1⌋ − f workers must be won over, z = Φ⁻¹((n − s)/n)
- `ipm`:         −ε·μ, inner product manipulation (Xie, Koyejo, Gupta, UAI 2020), ε = 0.1
- `label_flip`:  the Byzantine workers train on labels y → C − 1 − y and send honestly
                 (applied to the data: see `flip_labels`)
- `adaptive`:    μ + s·p with p ∈ {−σ (ALIE's direction), −μ (IPM's)} and the scale s from a
                 grid chosen each step to minimise ⟨Agg(messages), μ⟩, the progress of the
                 aggregate along the honest mean, against the aggregator in use (a line
                 search in the spirit of Shejwalkar & Houmansadr, NDSS 2021). Its trial
                 aggregations do not touch the aggregator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

import torch

from ..rng import generator
from .aggregators import Aggregator

ATTACKS = ("none", "sign_flip", "scaled_flip", "gaussian", "alie", "ipm", "label_flip", "adaptive")
ADAPTIVE_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: the largest z for which μ − zσ still wins s = ⌊n/2+1⌋ − f workers."""
    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


@dataclass(frozen=True)
class Attack:
    kind: str = "none"
    scale: float | None = None  # c of scaled_flip, σ_n of gaussian, z of alie, ε of ipm
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")

    @property
    def on_data(self) -> bool:
        return self.kind == "label_flip"

    def __call__(
        self,
        g: torch.Tensor,
        byzantine: torch.Tensor,
        t: int,
        aggregator: Aggregator | None = None,
        agg_state: dict | None = None,
    ) -> torch.Tensor:
        n, f = g.shape[0], byzantine.numel()
        own = g[byzantine]
        k = self.kind
        if k in ("none", "label_flip") or f == 0:
            return own
        if k == "sign_flip":
            return -own
        if k == "scaled_flip":
            return -(self.scale if self.scale is not None else 100.0) * own
        if k == "gaussian":
            gen = generator(self.seed, t, "attack")  # (seed, step): the same on every process
            sigma = self.scale if self.scale is not None else 10.0
            return own + sigma * torch.randn(own.shape, generator=gen, dtype=own.dtype)
        mu, sd = g.mean(0), g.std(0, correction=0)
        if k == "alie":
            z = self.scale if self.scale is not None else alie_z(n, f)
            return (mu - z * sd).expand(f, -1).clone()
        if k == "ipm":
            return (-(self.scale if self.scale is not None else 0.1) * mu).expand(f, -1).clone()
        return self._adaptive(g, byzantine, mu, sd, aggregator, agg_state)

    @staticmethod
    def _adaptive(g, byzantine, mu, sd, aggregator, agg_state):
        if aggregator is None:
            raise ValueError("the adaptive attack needs the aggregator in use")
        f = byzantine.numel()
        sent = g.clone()
        best, best_row = math.inf, None
        for p in (-sd, -mu):
            for s in ADAPTIVE_SCALES:
                row = mu + s * p
                sent[byzantine] = row
                v, _ = aggregator(sent, agg_state)  # functional: agg_state is left as it was
                progress = float(v @ mu)
                if best_row is None or progress < best or math.isnan(progress):
                    best, best_row = progress, row
        return best_row.expand(f, -1).clone()


def pick_byzantine(n: int, f: int, seed: int) -> tuple[int, ...]:
    """The f Byzantine workers, drawn without replacement from a seeded generator."""
    if not 0 <= f < n:
        raise ValueError(f"need 0 <= f < n, got f={f}, n={n}")
    gen = torch.Generator().manual_seed(seed)
    return tuple(sorted(torch.randperm(n, generator=gen)[:f].tolist()))


def flip_labels(task, workers):
    """A copy of `task` whose `workers` see flipped labels: y → C − 1 − y (classification),
    1 − y (binary) or −y (regression). The other workers and the test set are unchanged."""
    if not workers:
        return task
    return replace(task, label_flip=tuple(sorted(workers)))
