import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distsgd.compress import (
    QSGD,
    Cast,
    Identity,
    Natural,
    PowerSGD,
    RandK,
    Sign,
    TopK,
    pack_bits,
    unpack_bits,
)
from distsgd.compress.base import pack_uint, unpack_uint

shapes = st.tuples(st.integers(1, 4), st.integers(1, 300))
seeds = st.integers(0, 2**31 - 1)


def _x(shape, seed, zeros=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 10
    if zeros:
        x[torch.rand(*shape, generator=g) < 0.3] = 0
    return x


@settings(max_examples=80, deadline=None)
@given(shape=shapes, seed=seeds)
def test_sign_packing_round_trips_exactly(shape, seed):
    bits = _x(shape, seed) >= 0
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], math.ceil(shape[1] / 8))
    assert torch.equal(unpack_bits(packed, shape[1]).bool(), bits)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=seeds, bits=st.sampled_from([1, 2, 4, 8]))
def test_uint_packing_round_trips(shape, seed, bits):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.uint8)
    packed = pack_uint(v, bits)
    assert packed.shape[1] == math.ceil(shape[1] * bits / 8)
    assert torch.equal(unpack_uint(packed, bits, shape[1]), v)


ALL = [
    Identity(),
    Cast("float16"),
    Cast("bfloat16"),
    Sign(),
    Sign("l1"),
    TopK(ratio=0.1),
    TopK(k=3),
    RandK(ratio=0.2),
    QSGD(4, 16),
    QSGD(1, 7),
    Natural(),
]


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds, c=st.sampled_from(ALL), zeros=st.booleans())
def test_byte_counts_match_the_wire_and_zero_is_safe(shape, seed, c, zeros):
    x = _x(shape, seed, zeros)
    p = c.compress(x, torch.Generator().manual_seed(seed))
    assert p.nbytes_per_worker == sum(t[0].numel() * t.element_size() for t in p.wire.values())
    assert all(t.shape[0] == shape[0] for t in p.wire.values())
    y = c.decompress(p)
    assert y.shape == x.shape and torch.isfinite(y).all()
    z = c(torch.zeros(shape), torch.Generator().manual_seed(seed))
    assert torch.isfinite(z).all()
    if not isinstance(c, Sign) or c.scale == "l1":
        assert torch.equal(z, torch.zeros(shape))  # an all-zero input decodes to zero


def test_wire_sizes():
    d = 1000
    x = torch.randn(2, d)
    assert Identity().compress(x).nbytes_per_worker == 4 * d
    assert Cast("bfloat16").compress(x).nbytes_per_worker == 2 * d
    assert Sign().compress(x).nbytes_per_worker == d // 8  # 32x fewer than float32
    assert Sign("l1").compress(x).nbytes_per_worker == d // 8 + 4
    assert TopK(k=10).compress(x).nbytes_per_worker == 10 * 4 + 10 * 4  # values + int32 indices
    assert TopK(k=500).compress(x).nbytes_per_worker == 500 * 4 + d // 8  # bitmap is smaller
    assert RandK(k=10).compress(x).nbytes_per_worker == 10 * 4 + 8  # seed, never the indices
    assert QSGD(15, 100).compress(x).nbytes_per_worker == 10 * 4 + d // 8 + d // 2
    assert Natural().compress(x).nbytes_per_worker == d // 8 + d  # 9 bits per coordinate


@settings(max_examples=80, deadline=None)
@given(shape=shapes, seed=seeds, frac=st.floats(0.01, 1.0))
def test_topk_contracts(shape, seed, frac):
    x = _x(shape, seed)
    k = max(1, int(frac * shape[1]))
    y = TopK(k=k)(x)
    err = (y - x).pow(2).sum(1)
    assert (err <= (1 - k / shape[1]) * x.pow(2).sum(1) * (1 + 1e-6) + 1e-9).all()
    assert ((y != 0).sum(1) <= k).all()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=seeds)
def test_scaled_sign_contracts(shape, seed):
    x = _x(shape, seed)
    err = (Sign("l1")(x) - x).pow(2).sum(1)
    assert (err <= (1 - 1 / shape[1]) * x.pow(2).sum(1) * (1 + 1e-5) + 1e-9).all()


@pytest.mark.parametrize("c,omega", [(RandK(ratio=0.25), 3.0), (QSGD(2, 8), 2.0), (Natural(), 0.125)])
def test_unbiased_compressors(c, omega):
    """Mean of many independent draws → x, within a 5-sigma bound from the variance law."""
    torch.manual_seed(0)
    x = torch.randn(1, 64) * 3
    draws = 4000
    g = torch.Generator().manual_seed(1)
    total = torch.zeros_like(x)
    sq = 0.0
    for _ in range(draws):
        y = c(x, g)
        total += y
        sq += float((y - x).pow(2).sum())
    mean = total / draws
    var_bound = omega * float(x.pow(2).sum())
    assert sq / draws <= var_bound * 1.1  # the variance law E‖C(x) − x‖² ≤ ω‖x‖²
    sigma = math.sqrt(var_bound / draws)
    assert float((mean - x).norm()) < 5 * sigma


def test_topk_decode_matches_both_index_formats():
    x = torch.randn(3, 200)
    for k in (5, 150):  # indices, then bitmap
        y = TopK(k=k)(x)
        ref = torch.zeros_like(x).scatter_(
            1, x.abs().topk(k, dim=1).indices, x.gather(1, x.abs().topk(k, dim=1).indices)
        )
        assert torch.equal(y, ref)


def test_powersgd_is_exact_on_low_rank_matrices_and_warm_starts():
    g = torch.Generator().manual_seed(0)
    shapes = [torch.Size([30, 20]), torch.Size([30])]
    low = (torch.randn(2, 30, 2, generator=g) @ torch.randn(2, 2, 20, generator=g)).reshape(2, -1)
    x = torch.cat([low, torch.randn(2, 30, generator=g)], 1)
    c = PowerSGD(shapes, rank=2)
    p = c.compress(x)
    assert p.nbytes_per_worker == (30 + 20) * 2 * 4 + 30 * 4
    assert torch.allclose(c.decompress(p), x, atol=1e-4)
    full = torch.randn(2, 630, generator=g)
    options = dict(vars(c))
    errs, state = [], None
    for _ in range(5):  # warm start: repeated compression of the same matrix improves
        p, state = c.compress_with(full, None, state)  # the Q is the caller's state
        errs.append(float((c.decompress(p) - full)[:, :600].norm()))
    assert errs[-1] < errs[0]
    assert vars(c) == options  # nothing hides in the compressor
    assert torch.equal(c(full), c(full))  # without a state: one power step from the initial Q
