"""Compressors with exact wire formats (see `compress.base`)."""

from __future__ import annotations

from .base import Compressor, Payload, pack_bits, unpack_bits
from .powersgd import PowerSGD
from .quantize import QSGD, Cast, Identity, Natural, Sign
from .sparse import RandK, TopK

__all__ = [
    "QSGD",
    "Cast",
    "Compressor",
    "Identity",
    "Natural",
    "Payload",
    "PowerSGD",
    "RandK",
    "Sign",
    "TopK",
    "make_compressor",
    "pack_bits",
    "unpack_bits",
]


def make_compressor(name: str, **kw) -> Compressor:
    """By name: identity, float16, bfloat16, sign, scaled_sign, topk, randk, qsgd, natural."""
    table = {
        "identity": lambda: Identity(),
        "float16": lambda: Cast("float16"),
        "bfloat16": lambda: Cast("bfloat16"),
        "sign": lambda: Sign(),
        "scaled_sign": lambda: Sign("l1"),
        "topk": lambda: TopK(kw.get("k"), kw.get("ratio")),
        "randk": lambda: RandK(kw.get("k"), kw.get("ratio")),
        "qsgd": lambda: QSGD(kw.get("levels", 15), kw.get("bucket", 512)),
        "natural": lambda: Natural(),
    }
    if name not in table:
        from ..errors import UserError

        raise UserError(f"unknown compressor '{name}' (choose from {', '.join(table)}, or PowerSGD in code)")
    return table[name]()
