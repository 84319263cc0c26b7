"""The DP-SGD mechanism on stacked per-sample gradients, and the samplers it is accounted for.

Abadi et al., "Deep learning with differential privacy", CCS 2016, Algorithm 1, per worker i
with per-sample gradients g_ij of its batch L_i:

    ḡ_ij = g_ij · min(1, C / ‖g_ij‖)                      (clip, eq. "Clip gradient")
    g̃_i  = (Σ_j ḡ_ij + N(0, σ²C²I)) / b_i                 (noise, then normalize)

where b_i is the *expected* batch size q·N_i (Poisson) or the fixed B (uniform), as the
analysis assumes (Opacus: "mean" reduction divides by the expected batch, not the realised
one). The clip factor is Opacus's min(1, C / (‖g‖ + 1e-6)), which keeps ‖ḡ‖ ≤ C in floating
point. Functions here are pure and act on the last dimensions: g[m, B, d] with a mask[m, B]
that marks the real samples of a padded (Poisson, variable-size) batch; each worker's noise
row comes from its own generator (`distsgd.rng`), so any split of workers over processes
draws the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import rng
from ..errors import UserError

CLIP_EPS = 1e-6  # Opacus's: ‖g‖ + 1e-6 in the clip factor


def check_max_grad_norm(max_grad_norm: float) -> None:
    if not (isinstance(max_grad_norm, int | float) and max_grad_norm > 0) or math.isnan(max_grad_norm):
        raise UserError(f"max_grad_norm C must be > 0, got {max_grad_norm}")


def clip_factors(per_sample: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (‖g‖ + 1e-6)) of each per-sample gradient g[..., d]: [...]. C = inf: all 1."""
    check_max_grad_norm(max_grad_norm)
    norms = torch.linalg.vector_norm(per_sample, dim=-1)
    return (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)


def clip(per_sample: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """The per-sample gradients g[..., d] scaled to norm at most C (Abadi et al., Alg. 1)."""
    return per_sample * clip_factors(per_sample, max_grad_norm).unsqueeze(-1)


def clipped_sum(per_sample: torch.Tensor, max_grad_norm: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_j mask_ij · clip(g_ij) over the batch: g[m, B, d], mask[m, B] -> [m, d]."""
    w = clip_factors(per_sample, max_grad_norm)
    if mask is not None:
        if mask.shape != per_sample.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match the per-sample gradients {tuple(per_sample.shape)}")
        w = w * mask.to(w.dtype)
    return torch.einsum("mb,mbd->md", w, per_sample)


def gaussian_noise(generators: Sequence[torch.Generator], shape, std: float, *, dtype=torch.float32) -> torch.Tensor:
    """N(0, std²) of `shape` = (m, d), row i from worker i's generator (zeros, drawing
    nothing, when std = 0)."""
    if std == 0:
        return torch.zeros(shape, dtype=dtype)
    if not (std > 0 and math.isfinite(std)):
        raise UserError(f"the noise standard deviation σ·C must be a finite number >= 0, got {std}")
    return rng.randn(generators, shape, dtype=dtype).mul_(std)


def privatize(
    per_sample: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    max_grad_norm: float,
    noise_std: float,
    generators: Sequence[torch.Generator],
    normalizer: torch.Tensor | float,
) -> torch.Tensor:
    """(Σ_j clip_C(g_ij) + N(0, noise_std²)) / normalizer_i for every worker: [m, d].

    `noise_std` is σ·C for a worker that adds the whole noise (local DP), σ·C/√n for one of
    n workers whose noises are summed (distributed DP); `normalizer` the expected batch
    size (a number or one per worker [m])."""
    return noised_mean(clipped_sum(per_sample, max_grad_norm, mask), noise_std=noise_std, generators=generators, normalizer=normalizer)


def noised_mean(
    clipped: torch.Tensor, *, noise_std: float, generators: Sequence[torch.Generator], normalizer: torch.Tensor | float
) -> torch.Tensor:
    """(s_i + N(0, noise_std²)) / normalizer_i of clipped sums s[m, d] (the second half of
    `privatize`, for sums the engine clipped without per-sample gradients): the same draws."""
    s = clipped + gaussian_noise(generators, clipped.shape, noise_std, dtype=clipped.dtype)
    norm = torch.as_tensor(normalizer, dtype=s.dtype)
    return s / (norm.unsqueeze(-1) if norm.dim() else norm)


# -- samplers: the accountant's assumption, drawn ----------------------------------------------


def pad(chosen: list[torch.Tensor], shards: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [m, B_max] (padded with each shard's first index) and mask [m, B_max] (True =
    a real sample); B_max ≥ 1, so a step always has a batch to differentiate."""
    if len(chosen) != len(shards):
        raise ValueError(f"{len(chosen)} batches for {len(shards)} shards")
    lengths = torch.tensor([len(c) for c in chosen], dtype=torch.long)
    width = max(1, int(lengths.max()))
    mask = torch.arange(width) < lengths.unsqueeze(1)  # each row: its samples first
    idx = torch.stack([shard[:1] for shard in shards]).to(torch.long).expand(-1, width).clone()
    idx[mask] = torch.cat(chosen).to(torch.long)  # row-major: row i's True slots take chosen[i] in order
    return idx, mask


def poisson_sample(
    shards: Sequence[torch.Tensor], sample_rates: Sequence[float], generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson sampling: each record of worker i's shard joins its batch with probability
    q_i, independently (the sampled Gaussian's assumption). Returns (indices, mask), padded."""
    chosen = []
    for shard, q, g in zip(shards, sample_rates, generators, strict=True):
        keep = torch.rand(len(shard), generator=g, dtype=torch.float64) < q
        chosen.append(shard[keep])
    return pad(chosen, shards)


def uniform_sample(
    shards: Sequence[torch.Tensor], batch_sizes: Sequence[int], generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform sampling without replacement: worker i's batch is B_i distinct records of its
    shard, every subset equally likely, drawn afresh each step (not an epoch's shuffle)."""
    chosen = []
    for shard, b, g in zip(shards, batch_sizes, generators, strict=True):
        if not 1 <= b <= len(shard):
            raise UserError(f"a fixed batch of {b} cannot be drawn from a shard of {len(shard)} samples")
        chosen.append(shard[torch.randperm(len(shard), generator=g)[:b]])
    return pad(chosen, shards)
