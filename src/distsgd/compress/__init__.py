"""Compressors with exact wire formats (see `compress.base`)."""

from __future__ import annotations

from ..registry import Registry
from .base import Compressor, Payload, pack_bits, unpack_bits
from .powersgd import PowerSGD
from .quantize import QSGD, Cast, Identity, Natural, Sign
from .sparse import RandK, TopK

__all__ = [
    "QSGD",
    "COMPRESSORS",
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


COMPRESSORS = Registry("compressor", base=Compressor)
COMPRESSORS.register("identity", Identity)
COMPRESSORS.register("float16", Cast, preset={"dtype": "float16"})
COMPRESSORS.register("bfloat16", Cast, preset={"dtype": "bfloat16"})
COMPRESSORS.register("sign", Sign, preset={"scale": None})
COMPRESSORS.register("scaled_sign", Sign, preset={"scale": "l1"})
COMPRESSORS.register("topk", TopK, shorthand="ratio")
COMPRESSORS.register("randk", RandK, shorthand="ratio")
COMPRESSORS.register("qsgd", QSGD, shorthand="levels")
COMPRESSORS.register("natural", Natural)


def make_compressor(spec, **kw) -> Compressor:
    """A compressor from a spec ("topk:0.01", {name = "qsgd", levels = 7}, an instance) or
    a name plus options (options left None are not set)."""
    if isinstance(spec, str) and kw:
        spec = {"name": spec, **{k: v for k, v in kw.items() if v is not None}}
    return COMPRESSORS.create(spec)
