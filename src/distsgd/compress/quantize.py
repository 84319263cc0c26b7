"""Quantizers: identity, float16/bfloat16 casts, sign (1 bit), QSGD, natural compression."""

from __future__ import annotations

import torch

from ..rng import rand
from .base import Compressor, Payload, bits_for, pack_bits, pack_uint, unpack_bits, unpack_uint


class Identity(Compressor):
    """x sent as float32: 4·d bytes. Unbiased with ω = 0."""

    name = "identity"
    unbiased = True

    def compress(self, x, generator=None):
        return Payload({"values": x.float().contiguous()}, x.shape[1])

    def decompress(self, p):
        return p.wire["values"]


class Cast(Compressor):
    """x rounded to float16 or bfloat16 (round to nearest): 2·d bytes. Deterministic and
    slightly biased; relative error per coordinate at most 2⁻¹¹ (fp16, in range) or 2⁻⁸."""

    def __init__(self, dtype: str = "float16"):
        if dtype not in ("float16", "bfloat16"):
            raise ValueError("cast dtype must be float16 or bfloat16")
        self.dtype = getattr(torch, dtype)
        self.name = dtype

    def compress(self, x, generator=None):
        return Payload({"values": x.to(self.dtype)}, x.shape[1])

    def decompress(self, p):
        return p.wire["values"].float()


class Sign(Compressor):
    """sign(x) packed 8 coordinates per byte (sign(0) = +1, as the Signum/majority-vote
    code of Bernstein et al. ICLR 2019 packs it), optionally scaled:

    - scale=None: C(x) = sign(x), d/8 bytes (signSGD, Signum);
    - scale="l1": C(x) = (‖x‖₁/d)·sign(x), d/8 + 4 bytes (Karimireddy et al. 2019, EF-SGD),
      contractive: ‖C(x) − x‖² = ‖x‖² − ‖x‖₁²/d ≤ (1 − 1/d)‖x‖².
    """

    def __init__(self, scale: str | None = None):
        if scale not in (None, "l1"):
            raise ValueError("sign scale must be None or 'l1'")
        self.scale = scale
        self.name = "sign" if scale is None else "scaled_sign"

    def compress(self, x, generator=None):
        wire = {"bits": pack_bits(x >= 0)}
        if self.scale == "l1":
            wire["scale"] = x.abs().mean(1, keepdim=True).float()
        return Payload(wire, x.shape[1])

    def decompress(self, p):
        s = unpack_bits(p.wire["bits"], p.d).float().mul_(2).sub_(1)
        return s * p.wire["scale"] if "scale" in p.wire else s


class QSGD(Compressor):
    """QSGD with s levels (Alistarh et al., NeurIPS 2017, eq. (4)), per bucket of `bucket`
    coordinates: C(x)_i = ‖x_B‖₂ · sign(x_i) · ξ_i / s, with ξ_i = ⌊s|x_i|/‖x_B‖ + u⌋, u ~ U[0,1).
    Unbiased, E‖C(x) − x‖² ≤ min(b/s², √b/s)‖x‖² for bucket size b (Lemma 3.1).
    Wire: one float32 norm per bucket, 1 sign bit and ⌈log₂(s+1)⌉ (rounded to 1, 2, 4, 8)
    bits of level per coordinate."""

    name = "qsgd"
    unbiased = True
    option_docs = {"levels": "quantization levels s (1..255)", "bucket": "coordinates per norm"}

    def __init__(self, levels: int = 15, bucket: int = 512):
        if not 1 <= levels <= 255 or bucket < 1:
            raise ValueError("qsgd needs 1 <= levels <= 255 and bucket >= 1")
        self.levels, self.bucket = levels, bucket
        self.bits = bits_for(levels)

    def compress(self, x, generator=None):
        m, d = x.shape
        b = self.bucket
        pad = (-d) % b
        xb = torch.nn.functional.pad(x.float(), (0, pad)).view(m, -1, b)
        norms = xb.norm(dim=2, keepdim=True)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        u = rand(generator, xb.shape, device=x.device)  # row i from worker i's generator
        level = torch.floor(xb.abs() / safe * self.levels + u).clamp_(max=self.levels)
        level = level.view(m, -1)[:, :d].to(torch.uint8)
        wire = {"norms": norms.view(m, -1), "signs": pack_bits(x >= 0), "levels": pack_uint(level, self.bits)}
        return Payload(wire, d, {"levels": self.levels, "bucket": b})

    def decompress(self, p):
        d = p.d
        level = unpack_uint(p.wire["levels"], self.bits, d).float()
        sign = unpack_bits(p.wire["signs"], d).float().mul_(2).sub_(1)
        norms = p.wire["norms"].repeat_interleave(self.bucket, dim=1)[:, :d]
        return norms * sign * level / self.levels


class Natural(Compressor):
    """Natural compression (Horváth et al., "Natural compression for distributed deep
    learning", 2019): |x_i| ∈ [2^e, 2^{e+1}) is rounded to 2^e with probability
    (2^{e+1} − |x_i|)/2^e and to 2^{e+1} otherwise. Unbiased with ω = 1/8. Wire: a sign bit
    and an 8-bit exponent per coordinate (9 bits instead of 32; zero has its own code)."""

    name = "natural"
    unbiased = True
    _ZERO = -128  # exponent code for x_i = 0 (and underflow)

    def compress(self, x, generator=None):
        a = x.float().abs()
        mant, exp = torch.frexp(a)  # a = mant · 2^exp, mant ∈ [0.5, 1)
        low = exp - 1  # a ∈ [2^low, 2^(low+1))
        p_up = (a / torch.ldexp(torch.ones_like(a), low)) - 1.0  # (a − 2^low) / 2^low
        up = rand(generator, a.shape, device=x.device) < p_up
        e = (low + up.to(low.dtype)).clamp(-127, 127)
        e = torch.where(a > 0, e, torch.full_like(e, self._ZERO)).to(torch.int8)
        return Payload({"signs": pack_bits(x >= 0), "exponents": e}, x.shape[1])

    def decompress(self, p):
        e = p.wire["exponents"]
        sign = unpack_bits(p.wire["signs"], p.d).float().mul_(2).sub_(1)
        mag = torch.ldexp(torch.ones(e.shape, device=e.device), e.to(torch.int32))
        return torch.where(e == self._ZERO, torch.zeros_like(mag), mag * sign)
