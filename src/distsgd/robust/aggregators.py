"""Robust aggregation rules: n vectors g[n, d], of which up to f may be Byzantine, -> one [d].

Each rule is a frozen dataclass with

    check(n)                 ValueError when the rule has no guarantee for n workers and f
    init(d) -> state         what it carries between steps (empty for the stateless rules)
    __call__(g, state) -> (v, state)      functional: the state passed in is not modified
    aggregate(g) -> v        a one-off call from a fresh state

Rules (f = assumed number of Byzantine inputs):

- `Mean`: (1/n) Σ g_i. Breaks with one Byzantine input; `check` refuses f ≥ 1.
- `CoordinateMedian`: per coordinate, the median (mean of the two middle values for even n,
  as numpy). Needs f < n/2 (Yin et al., ICML 2018).
- `TrimmedMean`: per coordinate, drop the f largest and f smallest, average the rest.
  Needs n > 2f (Yin et al., ICML 2018).
- `Krum`, `MultiKrum` (Blanchard et al., NeurIPS 2017): score(i) = Σ of the squared
  distances from g_i to its n − f − 2 nearest other inputs; Krum returns the input of lowest
  score, Multi-Krum the mean of the m lowest. Needs n > 2f + 2.
- `GeometricMedian`: argmin_v Σ_i ‖v − g_i‖ by the smoothed Weiszfeld iteration of Pillutla,
  Kakade, Harchaoui ("Robust Aggregation for Federated Learning", IEEE TSP 2022, Alg. 3):
  β_i = 1/max(ν, ‖v − g_i‖), v ← Σ β_i g_i / Σ β_i, from the mean, until the objective's
  relative decrease is ≤ ftol or `max_iter`. Breakdown point 1/2: needs f < n/2. For
  n ≤ 128 the iteration runs on the n × n Gram matrix of the inputs (every iterate is a
  convex combination of them), so it reads G about twice whatever the tolerance.
- `CenteredClipping` (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
  Optimization", ICML 2021, eq. (2)): L times v ← v + (1/n) Σ_i (g_i − v)·min(1, τ/‖g_i − v‖),
  starting from the previous step's aggregate (its state). Needs f < n/2.
- `MajorityVote`: sign(Σ_i sign(g_i)), ties +1 (signSGD's vote, Bernstein et al. 2019).

Pre-aggregation steps that wrap any rule:

- `NNM` (Allouah et al., "Fixing by Mixing", AISTATS 2023): replace each g_i by the mean of
  its n − f nearest inputs (itself included), then aggregate. Needs n > 2f.
- `Bucketing` (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
  via Bucketing", ICLR 2022): shuffle, average buckets of s, aggregate the ⌈n/s⌉ means with
  the inner rule (which must tolerate f contaminated buckets among ⌈n/s⌉).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Aggregator:
    f: int = 0
    name: str = "aggregator"

    def check(self, n: int) -> None:
        """Raise ValueError when n inputs with f Byzantine are outside the rule's guarantee."""

    def init(self, d: int) -> dict:
        return {}

    def __call__(self, g: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def aggregate(self, g: torch.Tensor) -> torch.Tensor:
        return self(g, self.init(g.shape[1]))[0]


def _need(ok: bool, rule: str, n: int, f: int, condition: str) -> None:
    if not ok:
        raise ValueError(f"{rule} has no guarantee for n={n}, f={f}: it needs {condition}")


def _honest_majority(rule: Aggregator, n: int) -> None:
    """The check of every rule with breakdown point 1/2: f ≥ 0 and f < n/2."""
    _check_f(rule.f)
    _need(2 * rule.f < n, rule.name, n, rule.f, "f < n/2")


def _check_f(f: int) -> None:
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")


def gram(
    g: torch.Tensor, center: torch.Tensor | None = None, *, exact: bool = False, chunk_bytes: int = 8 << 20
) -> torch.Tensor:
    """(G − 1cᵀ)(G − 1cᵀ)ᵀ in float64 [n, n], in one pass over g; `center` None means c = 0.

    Products are float32 (relative error ~1e-6 of ‖g_i − c‖·‖g_j − c‖), summed in float64
    over column chunks of about `chunk_bytes`; `exact` converts each chunk to float64 first
    (2.5× slower, no cancellation), so a float64 copy of g is never whole."""
    n, d = g.shape
    if center is None and not exact:
        return (g @ g.T).double()
    step = max(1024, chunk_bytes // (n * 8))
    K = torch.zeros(n, n, dtype=torch.float64)
    for j in range(0, d, step):
        x = g[:, j : j + step]
        if center is not None:
            x = x - center[j : j + step]
        if exact:
            x = x.double()
            K.addmm_(x, x.T)
        else:
            K += (x @ x.T).double()
    return K


def pairwise_sq_distances(g: torch.Tensor) -> torch.Tensor:
    """‖g_i − g_j‖² [n, n] from the exact float64 Gram matrix (exact zeros on the diagonal)."""
    K = gram(g, exact=True)
    sq = K.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * K).clamp_(min=0)
    d2.fill_diagonal_(0)
    return d2


@dataclass(frozen=True)
class Mean(Aggregator):
    f: int = 0
    name: str = "mean"

    def check(self, n):
        _check_f(self.f)
        _need(self.f == 0, "mean", n, self.f, "f = 0 (one Byzantine input moves it arbitrarily)")

    def __call__(self, g, state):
        return g.mean(0), state


@dataclass(frozen=True)
class CoordinateMedian(Aggregator):
    f: int = 0
    name: str = "median"

    def check(self, n):
        _honest_majority(self, n)

    def __call__(self, g, state):
        n = g.shape[0]
        s = g.sort(0).values
        lo, hi = (n - 1) // 2, n // 2
        return (s[lo] + s[hi]) / 2 if lo != hi else s[lo].clone(), state


@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    f: int = 0
    name: str = "trimmed_mean"

    def check(self, n):
        _check_f(self.f)
        _need(n > 2 * self.f, "trimmed_mean", n, self.f, "n > 2f")

    def __call__(self, g, state):
        n = g.shape[0]
        return g.sort(0).values[self.f : n - self.f].mean(0), state


def krum_scores(g: torch.Tensor, f: int) -> torch.Tensor:
    """Blanchard et al.'s score: the sum of squared distances to the n − f − 2 nearest others."""
    n = g.shape[0]
    d2 = pairwise_sq_distances(g)
    d2.fill_diagonal_(math.inf)
    k = max(n - f - 2, 1)
    return d2.topk(k, dim=1, largest=False).values.sum(1)


@dataclass(frozen=True)
class MultiKrum(Aggregator):
    f: int = 0
    m: int | None = None  # how many lowest-score inputs to average; None: n − f
    name: str = "multikrum"

    def check(self, n):
        _check_f(self.f)
        _need(n > 2 * self.f + 2, self.name, n, self.f, "n > 2f + 2")
        if self.m is not None and not 1 <= self.m <= n - self.f:
            raise ValueError(f"{self.name}: m must be in [1, n − f] = [1, {n - self.f}], got {self.m}")

    def __call__(self, g, state):
        m = self.m if self.m is not None else g.shape[0] - self.f
        chosen = krum_scores(g, self.f).argsort(stable=True)[:m]
        return g[chosen].mean(0), state


@dataclass(frozen=True)
class Krum(MultiKrum):
    m: int | None = 1
    name: str = "krum"


def geometric_median(
    g: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    nu: float = 1e-6,
    ftol: float = 1e-6,
    max_iter: int = 100,
    method: str = "auto",
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld (Pillutla et al. 2022, Alg. 3) from the weighted mean; returns
    (median, iterations). Stops when (F_prev − F) ≤ ftol·F, F(v) = Σ α_i ‖v − g_i‖.

    Two ways to run the same iteration (same iterates in exact arithmetic):

    - ``"direct"``: each iteration one pass over g for the distances ‖g_i − v‖ and one
      matrix-vector product for the weighted mean, O(n·d) per iteration.
    - ``"gram"``: every iterate is a convex combination v = Σ_j w_j g_j of the inputs, so
      ‖g_i − v‖² = K_ii − 2(Kw)_i + wᵀKw with K the n × n Gram matrix of the inputs about a
      centre c. One product G Gᵀ, then every iteration costs O(n²) on w, and one last
      product v = wᵀG: the tolerance is nearly free. Float32 products lose ~1e-6 of
      ‖g_i − c‖² + ‖v − c‖² in each squared distance, so when that is more than 1e-4 of some
      ‖g_i − v‖² (gradients that nearly agree, far from the centre) the Gram matrix is
      recomputed about the current v, where the terms are the distances themselves.
    - ``"auto"``: gram for n ≤ 128, direct above. Measured at d = 1e6 with 5 iterations
      (benchmarks/robust_aggregation_speed.py): gram 4.0×, 2.9× and 1.9× faster at n = 32,
      64 and 128; its n²·d product grows faster than direct's 2·n·d per iteration.
    """
    n = g.shape[0]
    alpha = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    if method == "auto":
        method = "gram" if n <= _GRAM_MAX_N else "direct"
    if method == "gram":
        return _weiszfeld_gram(g, alpha, nu, ftol, max_iter)
    if method != "direct":
        raise ValueError(f"geometric_median method must be 'auto', 'gram' or 'direct', got {method!r}")
    v = (alpha.to(g.dtype) @ g) / float(alpha.sum())
    # distances summed in float64: a float32 objective stops changing (and so stops the
    # iteration) while a slowly converging iterate still moves
    dist = torch.linalg.vector_norm(g - v, dim=1).double()
    obj = float(alpha @ dist)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        beta = alpha / dist.clamp(min=nu)
        v = (beta.to(g.dtype) @ g) / float(beta.sum())
        dist = torch.linalg.vector_norm(g - v, dim=1).double()
        prev, obj = obj, float(alpha @ dist)
        if abs(prev - obj) <= ftol * obj:
            break
    return v, it


_GRAM_MAX_N = 128
_GRAM_TOL = 1e-4  # largest tolerated relative error of a squared distance before recentring


def _gram_distances(K: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """‖x_i − Σ_j w_j x_j‖ for all i and ‖Σ_j w_j x_j‖², from the Gram matrix K of the x_i."""
    Kw = K @ w
    q = float(w @ Kw)
    return (K.diagonal() - 2 * Kw + q).clamp_(min=0).sqrt_(), q


def _weiszfeld_gram(g, alpha, nu, ftol, max_iter, rounds: int = 3):
    w = alpha / alpha.sum()  # v = wᵀg: the weighted mean
    K = gram(g)
    rel_err = 16 * torch.finfo(g.dtype).eps  # of an inner product over many coordinates
    it = 0
    for r in range(rounds):
        dist, q = _gram_distances(K, w)
        obj = float(alpha @ dist)
        while it < max_iter:
            it += 1
            beta = alpha / dist.clamp(min=nu)
            w = beta / beta.sum()
            dist, q = _gram_distances(K, w)
            prev, obj = obj, float(alpha @ dist)
            if abs(prev - obj) <= ftol * obj:
                break
        err = rel_err * (K.diagonal() + q) / dist.clamp(min=nu).square()
        if float(err.max()) <= _GRAM_TOL or r == rounds - 1:
            break
        K = gram(g, w.to(g.dtype) @ g)  # recentre at the current estimate and refine from there
    return w.to(g.dtype) @ g, it


@dataclass(frozen=True)
class GeometricMedian(Aggregator):
    f: int = 0
    nu: float = 1e-6  # smoothing: the smallest distance a weight divides by
    ftol: float = 1e-6  # stop when the objective's relative decrease is below this
    max_iter: int = 100
    method: str = "auto"  # "gram", "direct" or "auto" (see geometric_median)
    name: str = "geomed"

    def __post_init__(self):
        if self.method not in ("auto", "gram", "direct"):
            raise ValueError(f"geomed method must be 'auto', 'gram' or 'direct', got {self.method!r}")

    def check(self, n):
        _honest_majority(self, n)

    def __call__(self, g, state):
        v, _ = geometric_median(g, nu=self.nu, ftol=self.ftol, max_iter=self.max_iter, method=self.method)
        return v, state


@dataclass(frozen=True)
class CenteredClipping(Aggregator):
    f: int = 0
    tau: float = 1.0  # clipping radius
    iterations: int = 1  # L in the paper (1 suffices with worker momentum)
    name: str = "cclip"

    def check(self, n):
        _honest_majority(self, n)
        if not self.tau > 0 or self.iterations < 1:
            raise ValueError("cclip needs tau > 0 and iterations >= 1")

    def init(self, d):
        return {"center": torch.zeros(d)}

    def __call__(self, g, state):
        v = state["center"]
        for _ in range(self.iterations):
            diff = g - v
            scale = (self.tau / torch.linalg.vector_norm(diff, dim=1).clamp(min=1e-12)).clamp(max=1)
            v = v + (scale @ diff) / g.shape[0]
        return v, {"center": v}


@dataclass(frozen=True)
class MajorityVote(Aggregator):
    f: int = 0
    name: str = "vote"

    def check(self, n):
        _honest_majority(self, n)

    def __call__(self, g, state):
        plus = (g >= 0).sum(0)
        return torch.where(2 * plus >= g.shape[0], 1.0, -1.0), state


@dataclass(frozen=True)
class NNM(Aggregator):
    """Nearest-neighbour mixing before `inner` (Allouah et al. 2023, Algorithm 1); f is inner's."""

    inner: Aggregator
    name: str = "nnm"

    @property
    def f(self) -> int:
        return self.inner.f

    def check(self, n):
        _need(n > 2 * self.f, "nnm", n, self.f, "n > 2f")
        self.inner.check(n)

    def init(self, d):
        return self.inner.init(d)

    def __call__(self, g, state):
        n = g.shape[0]
        nearest = pairwise_sq_distances(g).argsort(dim=1, stable=True)[:, : n - self.f]  # self first
        mix = torch.zeros(n, n, dtype=g.dtype).scatter_(1, nearest, 1.0 / (n - self.f))
        return self.inner(mix @ g, state)  # row i: the mean of its n − f nearest inputs


@dataclass(frozen=True)
class Bucketing(Aggregator):
    """Average random buckets of size s, then `inner` (Karimireddy, He, Jaggi 2022, Alg. 1).

    f Byzantine inputs contaminate at most f of the ⌈n/s⌉ buckets, so `inner` (built for
    the same f) must have a guarantee for ⌈n/s⌉ inputs."""

    inner: Aggregator
    s: int = 2
    seed: int = 0
    name: str = "bucketing"

    @property
    def f(self) -> int:
        return self.inner.f

    def check(self, n):
        if self.s < 1:
            raise ValueError(f"bucketing needs s >= 1, got {self.s}")
        buckets = math.ceil(n / self.s)
        try:
            self.inner.check(buckets)
        except ValueError as e:
            raise ValueError(f"bucketing into {buckets} buckets: {e}") from None

    def init(self, d):
        return {"t": 0, "inner": self.inner.init(d)}

    def __call__(self, g, state):
        n = g.shape[0]
        from ..rng import generator

        gen = generator(self.seed, state["t"], "bucketing")
        perm = torch.randperm(n, generator=gen)
        means = torch.stack([g[perm[i : i + self.s]].mean(0) for i in range(0, n, self.s)])
        v, inner = self.inner(means, state["inner"])
        return v, {"t": state["t"] + 1, "inner": inner}
