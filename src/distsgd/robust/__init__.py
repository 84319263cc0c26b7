"""Byzantine robustness: aggregation rules, BGMD, attacks."""

from .aggregators import (
    NNM,
    Aggregator,
    Bucketing,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MajorityVote,
    Mean,
    MultiKrum,
    TrimmedMean,
    geometric_median,
    krum_scores,
    pairwise_sq_distances,
)
from .attacks import ATTACKS, Attack, alie_z, flip_labels, pick_byzantine
from .bgmd import BGMD

RULES = {
    "mean": Mean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multikrum": MultiKrum,
    "geomed": GeometricMedian,
    "cclip": CenteredClipping,
    "bgmd": BGMD,
    "vote": MajorityVote,
}


def make_aggregator(name: str, f: int = 0, *, nnm: bool = False, bucket: int = 1, **kw) -> Aggregator:
    """A rule by name, built for f Byzantine inputs, optionally behind NNM and/or bucketing."""
    if name not in RULES:
        raise ValueError(f"unknown aggregator {name!r} (choose from {', '.join(RULES)})")
    agg = RULES[name](f=f, **kw)
    if nnm:
        agg = NNM(agg)
    if bucket > 1:
        agg = Bucketing(agg, s=bucket)
    return agg


__all__ = [
    "ATTACKS",
    "BGMD",
    "NNM",
    "RULES",
    "Aggregator",
    "Attack",
    "Bucketing",
    "CenteredClipping",
    "CoordinateMedian",
    "GeometricMedian",
    "Krum",
    "MajorityVote",
    "Mean",
    "MultiKrum",
    "TrimmedMean",
    "alie_z",
    "flip_labels",
    "geometric_median",
    "krum_scores",
    "make_aggregator",
    "pairwise_sq_distances",
    "pick_byzantine",
]
