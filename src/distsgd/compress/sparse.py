"""Sparsifiers: Top-K (contractive) and Rand-K (unbiased when scaled).

Top-K keeps the K coordinates of largest magnitude: ‖C(x) − x‖² ≤ (1 − K/d)‖x‖²
(Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018, Lemma A.1). On
the wire: K float32 values, and their positions as K int32 indices or as a d-bit bitmap,
whichever is smaller (the bitmap wins when K > d/32).

Rand-K keeps K coordinates chosen uniformly without replacement, scaled by d/K:
E[C(x)] = x, E‖C(x) − x‖² = (d/K − 1)‖x‖² (Stich et al. 2018; Wangni et al. 2018). On the
wire: one int64 seed and K float32 values; the receiver regenerates the indices from the
seed, so they are never sent.
"""

from __future__ import annotations

import math

import torch

from ..rng import randint
from .base import Compressor, Payload, pack_bits, unpack_bits


def _k_of(d: int, k: int | None, ratio: float | None) -> int:
    if k is None:
        k = max(1, math.ceil((ratio if ratio is not None else 0.01) * d))
    return max(1, min(int(k), d))


class TopK(Compressor):
    """Top-K sparsification: the k largest-magnitude coordinates, sent as values plus int32
    indices or a bitmap (whichever is smaller). Contractive with δ = k/d."""

    name = "topk"
    option_docs = {"k": "coordinates kept (overrides ratio)", "ratio": "fraction of coordinates kept (0.01 if neither is set)"}

    def __init__(self, k: int | None = None, ratio: float | None = None):
        if k is not None and k < 1 or ratio is not None and not 0 < ratio <= 1:
            raise ValueError("top-k needs k >= 1 or 0 < ratio <= 1")
        self.k, self.ratio = k, ratio

    def compress(self, x, generator=None):
        m, d = x.shape
        k = _k_of(d, self.k, self.ratio)
        _, idx = x.abs().topk(k, dim=1, sorted=False)
        if 4 * k > (d + 7) // 8:  # a bitmap is smaller than int32 indices
            idx, _ = idx.sort(dim=1)
            mask = torch.zeros(m, d, dtype=torch.bool, device=x.device)
            mask.scatter_(1, idx, True)
            return Payload({"bitmap": pack_bits(mask), "values": x.gather(1, idx)}, d, {"k": k})
        return Payload({"indices": idx.to(torch.int32), "values": x.gather(1, idx)}, d, {"k": k})

    def decompress(self, p):
        out = torch.zeros(p.m, p.d, dtype=torch.float32, device=p.wire["values"].device)
        if "bitmap" in p.wire:
            mask = unpack_bits(p.wire["bitmap"], p.d).bool()
            out[mask] = p.wire["values"].reshape(-1).float()
        else:
            out.scatter_(1, p.wire["indices"].long(), p.wire["values"].float())
        return out


def sample_indices(d: int, k: int, seed: int) -> torch.Tensor:
    """A uniformly random k-subset of range(d), sorted, determined by `seed`: draw with
    replacement, drop repeats, draw the missing ones again (exchangeable, so uniform)."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, d, (k,), generator=g).unique()
    while idx.numel() < k:
        idx = torch.cat([idx, torch.randint(0, d, (k - idx.numel(),), generator=g)]).unique()
    return idx


class RandK(Compressor):
    """Rand-K sparsification: k uniformly random coordinates, sent as values plus one seed;
    scaled by d/k it is unbiased with ω = d/k − 1."""

    name = "randk"
    option_docs = {
        "k": "coordinates kept (overrides ratio)",
        "ratio": "fraction of coordinates kept (0.01 if neither is set)",
        "scaled": "multiply by d/k (unbiased)",
    }
    unbiased = True

    def __init__(self, k: int | None = None, ratio: float | None = None, scaled: bool = True):
        if k is not None and k < 1 or ratio is not None and not 0 < ratio <= 1:
            raise ValueError("rand-k needs k >= 1 or 0 < ratio <= 1")
        self.k, self.ratio, self.scaled = k, ratio, scaled
        self.unbiased = scaled

    def compress(self, x, generator=None):
        m, d = x.shape
        k = _k_of(d, self.k, self.ratio)
        seeds = randint(generator, 2**62, (m,))  # row i from worker i's generator
        scale = d / k if self.scaled else 1.0
        values = torch.stack([x[i, sample_indices(d, k, int(seeds[i]))] for i in range(m)]) * scale
        return Payload({"seed": seeds.unsqueeze(1), "values": values}, d, {"k": k})

    def decompress(self, p):
        out = torch.zeros(p.m, p.d, dtype=torch.float32, device=p.wire["values"].device)
        k = p.wire["values"].shape[1]
        for i in range(p.m):
            out[i, sample_indices(p.d, k, int(p.wire["seed"][i, 0]))] = p.wire["values"][i]
        return out
