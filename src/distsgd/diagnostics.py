"""Loss-landscape diagnostics of trained (stacked) models: gradient diversity, the Hessian's
top eigenvalues and trace, SAM sharpness, average-direction sharpness, consensus distance.

Everything is a function of an `EmpiricalLoss`: the mean loss of a model over a fixed set
of samples, as a function of one flat parameter vector w[d],

    L(w) = (1/N) Σ_c |c| · ℓ(f(w; X_c), Y_c)           (chunks c of the N samples; ℓ a mean loss)

built once by `empirical_loss(model, data, loss)` and differentiated with torch.func
(gradients by reverse mode, Hessian-vector products forward-over-reverse: Hv = jvp(∇L, w, v)).
The model runs in eval mode (BatchNorm uses its running statistics), as in PyHessian.

Parameters are given the stacked way: a flat p[d], the workers' x[m, d] (with the `Flat` of
the model), or None for the module's own parameters. On x[m, d] a diagnostic measures the
averaged model x̄ = (1/m) Σ_i x_i by default, or every row with `per_worker=True` (one value
per worker). Random probes draw from a `torch.Generator` seeded by `seed` (and the row).

    f = empirical_loss(task.model, task, max_samples=2048)
    hessian_top_eigenvalue(f, x).eigenvalues      # λ_max of ∇²L at x̄
    hessian_trace(f, x, per_worker=True).mean     # tr ∇²L at every worker's model [m]
    sharpness(f, x, rho=0.05)                     # L(x̄ + ρ g/‖g‖) − L(x̄)
    average_direction_sharpness(f, x).mean        # E_{ε∼N(0,Ξ)} L(x̄ + ε) − L(x̄)

`measure("hessian_top,hessian_trace,sharpness:0.05", task, model, x, flat)` runs a list of
them and returns a flat dict of floats for a metrics row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from .errors import UserError
from .tasks.task import Samples, Task
from .workers import Flat

# -- the objective --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmpiricalLoss:
    """L(w) = (1/N) Σ_c |c| ℓ(f(w; X_c), Y_c): the mean loss of the model with flat
    parameters w[d] over N fixed samples, held as chunks (X_c, Y_c). `forward(w, X)` gives
    the model's outputs; `loss(outputs, targets)` is the mean loss of a batch."""

    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    chunks: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    d: int
    w0: torch.Tensor | None = None  # the module's own flat parameters (params=None measures them)

    @property
    def n(self) -> int:
        """N: the number of samples."""
        return sum(len(y) for _, y in self.chunks)

    def _chunk(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self.loss(self.forward(w, xb), yb)

    def _weights(self) -> Iterator[tuple[float, torch.Tensor, torch.Tensor]]:
        n = self.n
        for xb, yb in self.chunks:
            yield len(yb) / n, xb, yb

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """L(w), a 0-d tensor."""
        with torch.no_grad():
            return sum(c * self._chunk(w, xb, yb).double() for c, xb, yb in self._weights())

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(w), ∇L(w)[d])."""
        value, g = torch.zeros((), dtype=torch.float64), torch.zeros_like(w)
        for c, xb, yb in self._weights():
            gc, vc = grad_and_value(self._chunk)(w, xb, yb)
            g.add_(gc, alpha=c)
            value += c * vc.double()
        return value, g

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇²L(w) v for v[d], or for each row of v[k, d] (one vmapped call), by
        forward-over-reverse differentiation: Hv = d/dt ∇L(w + t v) at t = 0."""
        single = v.dim() == 1
        vs = v.unsqueeze(0) if single else v
        out = torch.zeros_like(vs)
        for c, xb, yb in self._weights():

            def hv(u, xb=xb, yb=yb):
                return jvp(lambda p: grad(self._chunk)(p, xb, yb), (w,), (u,))[1]

            out.add_(vmap(hv)(vs), alpha=c)
        return out[0] if single else out

    def sample_gradients(self, w: torch.Tensor, chunk: int = 256) -> Iterator[torch.Tensor]:
        """The per-sample gradients ∇ℓ_i(w), chunk by chunk: [≤ chunk, d] each."""

        def one(p, x1, y1):
            return self.loss(self.forward(p, x1.unsqueeze(0)), y1.unsqueeze(0))

        per_sample = vmap(grad(one), in_dims=(None, 0, 0))
        for xb, yb in self.chunks:
            for lo in range(0, len(yb), chunk):
                yield per_sample(w, xb[lo : lo + chunk], yb[lo : lo + chunk])


def _module_forward(model: nn.Module, flat: Flat, buffers: dict | None):
    def forward(w: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            state = flat.unflatten(w) if buffers is None else (flat.unflatten(w), buffers)
            return functional_call(model, state, (xb,))
        finally:
            model.train(was)

    return forward


def _samples(data, split: str) -> tuple[Samples, Callable | None]:
    if isinstance(data, Task):
        if split not in ("train", "test"):
            raise UserError(f"diagnostics: split must be 'train' or 'test', got {split!r}")
        s = data.train if split == "train" else data.test
        if s is None:
            raise UserError(f"diagnostics: the task has no {split} split")
        return s, data.loss
    if isinstance(data, Samples):
        return data, None
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return Samples(tuple(data)), None
    raise UserError(
        f"diagnostics: data must be a Task, Samples or an (inputs, targets) pair of tensors, got {type(data).__name__}"
    )


def empirical_loss(
    model: nn.Module | Callable,
    data,
    loss: Callable | None = None,
    *,
    flat: Flat | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
    split: str = "train",
    max_samples: int | None = None,
    chunk: int = 4096,
) -> EmpiricalLoss:
    """The objective L(w) of every diagnostic: `model` on `data` under `loss`.

    model: an nn.Module (run with `functional_call` on the flat parameters through `flat`,
    default `Flat.from_module(model)`, with `buffers` or its own), or a `Workers.outputs`-
    style callable `model(w)` returning the function inputs -> outputs (then `flat` gives d).
    data: a `Task` (its `split`, and its loss by default), `Samples`, or (inputs, targets).
    loss: loss(outputs, targets) -> the mean loss of a batch. max_samples: a fixed random
    subset of at most that many samples (the same every call, as `Task.evaluate` does).
    """
    samples, task_loss = _samples(data, split)
    loss = loss if loss is not None else task_loss if task_loss is not None else getattr(model, "loss", None)
    if not callable(loss):
        raise UserError(
            f"diagnostics: the model {type(model).__name__} has no loss: pass loss=... "
            "(a function loss(outputs, targets) -> mean loss of a batch) or a Task"
        )
    if isinstance(model, nn.Module):
        flat = flat or Flat.from_module(model)
        forward = _module_forward(model, flat, buffers)
    elif callable(model):
        if flat is None:
            raise UserError("diagnostics: a model given as a function w -> outputs needs flat= (its Flat)")

        def forward(w, xb):
            return model(w)(xb)

    else:
        raise UserError(f"diagnostics: model must be an nn.Module or a function w -> outputs, got {type(model).__name__}")
    if max_samples is not None and max_samples < 1:
        raise UserError(f"diagnostics: max_samples must be >= 1, got {max_samples}")
    count = len(samples) if max_samples is None else min(len(samples), max_samples)
    if count == len(samples):
        order = torch.arange(count)
    else:
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:count].sort().values
    step = chunk if samples.fast else min(chunk, 256)
    chunks = tuple(samples.batch(order[lo : lo + step]) for lo in range(0, count, step))
    w0 = flat.flatten(model) if isinstance(model, nn.Module) else None
    return EmpiricalLoss(forward, loss, chunks, flat.d, w0)


# -- parameters: p[d], x[m, d] or the module's own --------------------------------------------


def _rows(f: EmpiricalLoss, params, per_worker: bool) -> tuple[torch.Tensor, bool]:
    """The points to measure [k, d] and whether the answer is one value per row."""
    if params is None:
        if f.w0 is None:
            raise UserError("diagnostics: pass params (p[d] or x[m, d]): the model is a function, not a module")
        params = f.w0
    if isinstance(params, nn.Module):
        params = Flat.from_module(params).flatten(params)
    if not isinstance(params, torch.Tensor):
        raise UserError(f"diagnostics: params must be p[d], x[m, d] or an nn.Module, got {type(params).__name__}")
    x = params.detach().float()
    if x.dim() not in (1, 2) or x.shape[-1] != f.d:
        raise UserError(f"diagnostics: params must be p[{f.d}] or x[m, {f.d}], got shape {tuple(x.shape)}")
    if x.dim() == 1:
        return x.unsqueeze(0), False
    if per_worker:
        return x, True
    return x.mean(0, keepdim=True), False


def _out(values: list, per_worker: bool) -> torch.Tensor:
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])
    return t if per_worker else t[0]


def _generator(seed: int, row: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + row)


# -- gradient diversity ---------------------------------------------------------------------


def gradient_diversity(per_sample_grads: torch.Tensor) -> torch.Tensor:
    """Δ = Σ_i ‖g_i‖² / ‖Σ_i g_i‖² of n gradients g[n, d] (Yin et al., "Gradient Diversity:
    a Key Ingredient for Scalable Distributed Learning", AISTATS 2018, Definition 1).

    1/n ≤ Δ (Cauchy–Schwarz): n identical gradients give exactly 1/n, orthogonal gradients
    of equal norm give 1, gradients that cancel give +inf (and all-zero ones nan). Δ is the
    same for mean- and sum-reduced gradients (invariant to scaling). Leading dimensions
    batch: g[..., n, d] -> Δ[...]. Computed in float64."""
    g = per_sample_grads.double()
    if g.dim() < 2:
        raise UserError(f"gradient_diversity: expected gradients g[n, d], got shape {tuple(g.shape)}")
    return g.pow(2).sum((-2, -1)) / g.sum(-2).pow(2).sum(-1)


def sample_gradient_diversity(
    f: EmpiricalLoss, params=None, *, per_worker: bool = False, chunk: int = 256
) -> torch.Tensor:
    """`gradient_diversity` of the N per-sample gradients ∇ℓ_i(w) of f's samples at w,
    Σ_i ‖∇ℓ_i‖² / ‖Σ_i ∇ℓ_i‖², streamed in chunks (never all N × d at once)."""
    x, pw = _rows(f, params, per_worker)
    out = []
    for w in x:
        sq, total = torch.zeros((), dtype=torch.float64), torch.zeros(f.d, dtype=torch.float64)
        for g in f.sample_gradients(w, chunk):
            g = g.double()
            sq += g.pow(2).sum()
            total += g.sum(0)
        out.append(sq / total.pow(2).sum())
    return _out(out, pw)


# -- consensus distance ---------------------------------------------------------------------


def consensus_distance(x: torch.Tensor) -> torch.Tensor:
    """(1/m) Σ_i ‖x_i − x̄‖² of the stacked models x[m, d] (Kong et al., "Consensus Control
    for Decentralized Deep Learning", ICML 2021, whose Ξ_t² it is); the same number as the
    communicators' `consensus_distance` in one process. Float64; identical rows give 0.
    It is tr Ξ of `consensus_covariance_factor`."""
    if x.dim() != 2:
        raise UserError(f"consensus_distance: expected the stacked models x[m, d], got shape {tuple(x.shape)}")
    x = x.detach().double()
    return (x - x.mean(0)).pow(2).sum(1).mean()


# -- Hessian: top eigenvalues and trace -------------------------------------------------------


class TopEigen(NamedTuple):
    """eigenvalues [k] ([m, k] per worker), eigenvectors [k, d] ([m, k, d]) of unit norm,
    iterations: the power iterations each eigenvalue took."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    iterations: torch.Tensor


class Estimate(NamedTuple):
    """A Monte Carlo estimate: mean, its standard error (sample std / √samples) and the
    number of samples (tensors: 0-d, or [m] per worker)."""

    mean: torch.Tensor
    stderr: torch.Tensor
    samples: torch.Tensor


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + 1e-6)


def hessian_top_eigenvalue(
    f: EmpiricalLoss,
    params=None,
    *,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    per_worker: bool = False,
) -> TopEigen:
    """The k eigenvalues of ∇²L(w) largest in magnitude, by power iteration on
    Hessian-vector products with deflation, as PyHessian's `hessian.eigenvalues` (Yao et
    al., "PyHessian: Neural Networks Through the Lens of the Hessian", IEEE BigData 2020;
    its defaults maxIter 100, tol 1e-3):

        v ← v/‖v‖, v ⟂ earlier eigenvectors (Gram–Schmidt);  λ = vᵀHv;  v ← Hv/‖Hv‖,

    from a seeded Gaussian start, until |λ − λ_prev| / (|λ_prev| + 1e-6) < tol. This is a
    change criterion, not an error bound: λ approaches |λ_max| from below at the rate
    (λ₂/λ₁)^(2t)."""
    if k < 1 or max_iter < 1 or tol <= 0:
        raise UserError(f"hessian_top_eigenvalue: need k >= 1, max_iter >= 1 and tol > 0, got {k}, {max_iter}, {tol}")
    x, pw = _rows(f, params, per_worker)
    values, vectors, iters = [], [], []
    for row, w in enumerate(x):
        gen = _generator(seed, row)
        found: list[torch.Tensor] = []
        lams, its = [], []
        for _ in range(k):
            v = _unit(torch.randn(f.d, generator=gen))
            lam, it = None, 0
            for it in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
                for u in found:
                    v = v - (v @ u) * u
                v = _unit(v)
                hv = f.hvp(w, v)
                new = float(v.double() @ hv.double())
                v = _unit(hv)
                done = lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol
                lam = new
                if done:
                    break
            for u in found:  # the returned vector orthogonal to the earlier ones too
                v = v - (v @ u) * u
            found.append(_unit(v))
            lams.append(lam)
            its.append(it)
        values.append(torch.tensor(lams, dtype=torch.float64))
        vectors.append(torch.stack(found))
        iters.append(torch.tensor(its))
    if pw:
        return TopEigen(torch.stack(values), torch.stack(vectors), torch.stack(iters))
    return TopEigen(values[0], vectors[0], iters[0])


def hessian_trace(
    f: EmpiricalLoss,
    params=None,
    *,
    samples: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    batch: int = 10,
    seed: int = 0,
    per_worker: bool = False,
) -> Estimate:
    """tr ∇²L(w) by Hutchinson's estimator with Rademacher probes z (Hutchinson, "A
    stochastic estimator of the trace of the influence matrix for Laplacian smoothing
    splines", 1989; PyHessian `hessian.trace`): tr H = E[zᵀHz], z_j = ±1.

    With `samples` a fixed number of probes; by default PyHessian's rule: stop once the
    running mean moves by less than tol relative, |mean_t − mean_{t−1}| / (|mean_{t−1}| + 1e-6)
    < tol, after at most max_iter probes. The per-probe variance is 2 Σ_{i≠j} H_ij², so a
    diagonal H is exact from one probe. Probes are drawn `batch` at a time (one vmapped
    call) and the rule is applied to them in order: the result does not depend on `batch`."""
    if samples is not None and samples < 1:
        raise UserError(f"hessian_trace: samples must be >= 1, got {samples}")
    if max_iter < 1 or tol <= 0 or batch < 1:
        raise UserError(f"hessian_trace: need max_iter >= 1, tol > 0 and batch >= 1, got {max_iter}, {tol}, {batch}")
    x, pw = _rows(f, params, per_worker)
    means, errs, counts = [], [], []
    limit = samples if samples is not None else max_iter
    for row, w in enumerate(x):
        gen = _generator(seed, row)
        vals: list[float] = []
        stop = False
        while len(vals) < limit and not stop:
            z = torch.randint(0, 2, (min(batch, limit - len(vals)), f.d), generator=gen).float().mul_(2).sub_(1)
            for q in (f.hvp(w, z).double() * z.double()).sum(1).tolist():
                prev = sum(vals) / len(vals) if vals else 0.0
                vals.append(q)
                if samples is None and abs(sum(vals) / len(vals) - prev) / (abs(prev) + 1e-6) < tol:
                    stop = True
                    break
        t = torch.tensor(vals, dtype=torch.float64)
        means.append(t.mean())
        errs.append(t.std() / math.sqrt(len(vals)) if len(vals) > 1 else torch.tensor(math.inf))
        counts.append(len(vals))
    return Estimate(_out(means, pw), _out(errs, pw), _out(counts, pw).long())


# -- sharpness ------------------------------------------------------------------------------


def sharpness(
    f: EmpiricalLoss, params=None, rho: float = 0.05, *, steps: int = 0, per_worker: bool = False
) -> torch.Tensor:
    """SAM sharpness max_{‖ε‖₂ ≤ ρ} L(w + ε) − L(w) (Foret et al., "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021: the sharpness term of
    the SAM objective, eq. (1)), estimated from below:

        ε₀ = ρ g/‖g‖, g = ∇L(w)            (the first-order solution, eq. (2))
        ε_{t+1} = Π_ρ(ε_t + ρ ∇L(w+ε_t)/‖∇L(w+ε_t)‖)   (`steps` projected ascent steps)

    returning the largest L(w + ε_t) − L(w) seen. On a quadratic, ε₀ gives exactly
    ρ‖g‖ + ½ρ² ĝᵀHĝ (ĝ = g/‖g‖). A zero gradient gives ε₀ = 0 (SAM's ‖g‖ + 1e-12)."""
    if not rho > 0:
        raise UserError(f"sharpness: rho must be > 0, got {rho}")
    if steps < 0:
        raise UserError(f"sharpness: steps must be >= 0, got {steps}")
    x, pw = _rows(f, params, per_worker)
    out = []
    for w in x:
        base, g = f.value_and_grad(w)
        eps = rho * g / (g.norm() + 1e-12)
        best = -math.inf
        for t in range(steps + 1):
            if t < steps:
                value, ge = f.value_and_grad(w + eps)
            else:
                value = f(w + eps)
            best = max(best, float(value - base))
            if t < steps:
                eps = eps + rho * ge / (ge.norm() + 1e-12)
                eps = eps * min(1.0, rho / float(eps.norm()))
        out.append(best)
    return _out(out, pw)


def consensus_covariance_factor(x: torch.Tensor) -> torch.Tensor:
    """D[m, d] with Ξ = DᵀD = (1/m) Σ_i (x_i − x̄)(x_i − x̄)ᵀ, the consensus covariance of the
    stacked models (Zhu et al. 2023, see `average_direction_sharpness`): D = (x − x̄)/√m. A draw ε = Dᵀz with
    z ∼ N(0, I_m) has covariance Ξ, without forming the d × d matrix."""
    x = x.detach().double()
    return (x - x.mean(0)) / math.sqrt(x.shape[0])


def average_direction_sharpness(
    f: EmpiricalLoss,
    x: torch.Tensor,
    *,
    samples: int = 64,
    seed: int = 0,
    method: str = "monte_carlo",
) -> Estimate:
    """The average-direction sharpness of the averaged model x̄ of the stacked models x[m, d]
    (Zhu, He, Chen, Song, Tao, "Decentralized SGD and Average-direction SAM are Asymptotically
    Equivalent", ICML 2023, arXiv 2306.02913: the asymptotic-equivalence theorem, whose
    averaged-model update is x̄ ← x̄ − η E_{ε∼N(0,Ξ)} ∇L(x̄ + ε) + higher-order terms):

        S(x̄) = E_{ε∼N(0,Ξ)} L(x̄ + ε) − L(x̄),   Ξ = (1/m) Σ_i (x_i − x̄)(x_i − x̄)ᵀ,

    the loss D-SGD's averaged model implicitly minimizes, on top of L, at Ξ = its workers'
    spread; by Taylor's theorem S = ½ tr(∇²L(x̄) Ξ) + O(E‖ε‖³), the sharpness regularizer the
    paper reads off this loss (whose strength does not shrink as the total batch grows).

    method "monte_carlo": `samples` antithetic pairs ε = Dᵀz, ±ε (`consensus_covariance_factor`),
    each giving ½(L(x̄+ε) + L(x̄−ε)) − L(x̄) (exactly ½εᵀHε on a quadratic); mean and standard
    error over pairs. method "second_order": ½ tr(HΞ) = (1/2m) Σ_i (x_i − x̄)ᵀ H (x_i − x̄),
    exactly, from m Hessian-vector products (stderr 0). Identical rows give 0."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != f.d:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"average_direction_sharpness: needs the stacked models x[m, {f.d}], got {shape}")
    if method not in ("monte_carlo", "second_order"):
        raise UserError(f"average_direction_sharpness: method must be 'monte_carlo' or 'second_order', got {method!r}")
    if samples < 2:
        raise UserError(f"average_direction_sharpness: samples must be >= 2, got {samples}")
    xbar = x.detach().float().mean(0)
    factor = consensus_covariance_factor(x)
    if method == "second_order":
        u = factor.float()
        value = 0.5 * (f.hvp(xbar, u).double() * factor).sum()
        return Estimate(value, torch.zeros((), dtype=torch.float64), torch.tensor(factor.shape[0]))
    base = f(xbar)
    z = torch.randn(samples, factor.shape[0], generator=_generator(seed, 0), dtype=torch.float64)
    eps = (z @ factor).float()
    vals = torch.stack([0.5 * (f(xbar + e) + f(xbar - e)) - base for e in eps])
    return Estimate(vals.mean(), vals.std() / math.sqrt(samples), torch.tensor(samples))


# -- several at once: for a run's metrics rows ----------------------------------------------

DIAGNOSTICS = {
    "gradient_diversity": "Σ‖∇ℓ_i‖²/‖Σ∇ℓ_i‖² over the samples (Yin et al. 2018)",
    "hessian_top": "top Hessian eigenvalue(s) by power iteration; hessian_top:k for the top k",
    "hessian_trace": "Hessian trace by Hutchinson (with its standard error)",
    "sharpness": "SAM sharpness L(w+ρĝ) − L(w); sharpness:ρ (default 0.05)",
    "avg_sharpness": "average-direction sharpness E_{ε∼N(0,Ξ)}L(x̄+ε) − L(x̄) (Zhu et al. 2023)",
    "consensus_distance": "(1/m)Σ‖x_i − x̄‖²",
}


@dataclass(frozen=True)
class Diagnostic:
    """One requested diagnostic: its name and argument (k for hessian_top, ρ for sharpness)."""

    name: str
    arg: float | None = None


def parse(spec: str | Sequence[str]) -> tuple[Diagnostic, ...]:
    """"hessian_top,hessian_trace,sharpness:0.05" (or a list of such items) -> Diagnostics;
    an unknown name or a bad argument is one UserError line."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    out = []
    for item in items:
        if not item:
            continue
        name, _, arg = item.partition(":")
        name = name.strip()
        if name not in DIAGNOSTICS:
            raise UserError(f"diagnostics: unknown diagnostic {name!r} (choose from {', '.join(DIAGNOSTICS)})")
        value = None
        if arg:
            if name not in ("hessian_top", "sharpness"):
                raise UserError(f"diagnostics: {name} takes no argument, got {item!r}")
            try:
                value = float(arg)
            except ValueError:
                raise UserError(f"diagnostics: {item!r}: the argument must be a number") from None
            if name == "sharpness" and not value > 0:
                raise UserError(f"diagnostics: {item!r}: rho must be > 0")
            if name == "hessian_top" and (value < 1 or value != int(value)):
                raise UserError(f"diagnostics: {item!r}: k must be a whole number >= 1")
        out.append(Diagnostic(name, value))
    return tuple(out)


def _key(dg: Diagnostic) -> str:
    return f"sharpness_{(dg.arg or 0.05):g}" if dg.name == "sharpness" else dg.name


def measure(
    spec: str | Sequence[str] | Sequence[Diagnostic],
    data,
    model: nn.Module | Callable,
    x: torch.Tensor,
    flat: Flat | None = None,
    *,
    buffers: dict[str, torch.Tensor] | None = None,
    loss: Callable | None = None,
    split: str = "train",
    max_samples: int | None = 2048,
    per_worker: bool = False,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """The diagnostics `spec` of the stacked models x[m, d] (or one p[d]) on `data` (a Task:
    its `split`, at most `max_samples` fixed samples, its loss), as a flat dict for a
    metrics row: hessian_top (and hessian_top_2.. for k > 1), hessian_trace and
    hessian_trace_se, sharpness_<ρ>, avg_sharpness and avg_sharpness_se, gradient_diversity,
    consensus_distance. On the averaged model, or per worker (lists of m floats) with
    `per_worker`; avg_sharpness and consensus_distance are always of the whole x."""
    diags = tuple(spec) if spec and all(isinstance(s, Diagnostic) for s in spec) else parse(spec)
    f = empirical_loss(model, data, loss, flat=flat, buffers=buffers, split=split, max_samples=max_samples)

    def num(t: torch.Tensor):
        return [float(v) for v in t] if t.dim() else float(t)

    row: dict[str, float | list[float]] = {}
    for dg in diags:
        if dg.name == "hessian_top":
            ev = hessian_top_eigenvalue(f, x, k=int(dg.arg or 1), seed=seed, per_worker=per_worker).eigenvalues
            for i in range(ev.shape[-1]):
                row["hessian_top" if i == 0 else f"hessian_top_{i + 1}"] = num(ev[..., i])
        elif dg.name == "hessian_trace":
            est = hessian_trace(f, x, seed=seed, per_worker=per_worker)
            row["hessian_trace"], row["hessian_trace_se"] = num(est.mean), num(est.stderr)
        elif dg.name == "sharpness":
            row[_key(dg)] = num(sharpness(f, x, dg.arg or 0.05, per_worker=per_worker))
        elif dg.name == "gradient_diversity":
            row["gradient_diversity"] = num(sample_gradient_diversity(f, x, per_worker=per_worker))
        elif dg.name == "avg_sharpness":
            xs = x if x.dim() == 2 else x.unsqueeze(0)
            est = average_direction_sharpness(f, xs, seed=seed)
            row["avg_sharpness"], row["avg_sharpness_se"] = float(est.mean), float(est.stderr)
        elif dg.name == "consensus_distance":
            row["consensus_distance"] = float(consensus_distance(x if x.dim() == 2 else x.unsqueeze(0)))
    return row
