"""Byzantine robustness: aggregation rules, BGMD, attacks."""

from ..registry import Registry
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
AGGREGATORS = Registry("aggregator", base=Aggregator)
for _name, _cls in RULES.items():
    AGGREGATORS.register(_name, _cls, hidden=("f",))

ATTACK_REGISTRY = Registry("attack", base=Attack)
for _kind in ATTACKS:
    ATTACK_REGISTRY.register(_kind, Attack, preset={"kind": _kind}, shorthand="scale")


def make_aggregator(spec, f: int = 0, *, nnm: bool = False, bucket: int = 1, seed: int = 0, **kw) -> Aggregator:
    """A rule from a spec ("geomed", {name = "cclip", tau = 10, nnm = true}, an instance),
    built for f Byzantine inputs, optionally behind NNM (`nnm`) and/or bucketing (`bucket`)."""
    if isinstance(spec, Aggregator):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec, **kw}
    spec = dict(spec)
    nnm = spec.pop("nnm", nnm)
    bucket = spec.pop("bucket", bucket)
    agg = AGGREGATORS.create(spec, f=f, seed=seed)
    if nnm:
        agg = NNM(agg)
    if bucket > 1:
        agg = Bucketing(agg, s=bucket)
    return agg


def make_attack(spec, seed: int = 0) -> Attack:
    """An attack from a spec ("alie", "scaled_flip:100", {name = "gaussian", scale = 10});
    a table may name it by `kind` as well."""
    if isinstance(spec, dict) and "name" not in spec and "kind" in spec:
        spec = {"name": spec["kind"], **{k: v for k, v in spec.items() if k != "kind"}}
    return ATTACK_REGISTRY.create(spec, seed=seed)


__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "ATTACK_REGISTRY",
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
    "make_attack",
    "pairwise_sq_distances",
    "pick_byzantine",
]
