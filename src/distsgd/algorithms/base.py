"""What every algorithm shares: the protocol, the oracle type and the SGD update.

An algorithm is a frozen dataclass of hyperparameters with two pure-ish methods,
`init(x0, comm) -> state` and `step(state, oracle, comm) -> state` (optax-style: all
that changes lives in `state`, a dict of tensors and ints, so a checkpoint is the state).
`oracle(x)` returns one stochastic gradient per local worker at x[m, d], drawing each
worker's next mini-batch; all cross-worker traffic goes through `comm`. Like a torch
optimizer, `step` may update the tensors of the state it is given in place (the stacked
parameters are large): clone a state you want to keep.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import torch
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from ..comm.base import Communicator
from ..compress import Compressor, make_compressor
from ..registry import Registry, one_line
from ..topology import Topology, TopologySpec

Oracle = Callable[[torch.Tensor], torch.Tensor]
State = dict[str, Any]


ALGORITHMS = Registry("algorithm")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def options(cls):
    """Make an algorithm's class its own configuration: a frozen pydantic dataclass, so the
    same typed, ranged fields validate `ChocoSGD(lr=...)` in Python and `[algorithm]` in TOML.
    Validation is strict: unknown options, a string for a number (lr = "0.1") or a bool for
    a number (lr = true) are errors; an int is a float; a list is accepted for a tuple
    (TOML has no tuples); ranges come from `Field`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for name, hint in hints.items():
        if name in cls.__dict__.get("__annotations__", {}) and "tuple" in repr(hint):
            cls.__annotations__[name] = Annotated[hint, Field(strict=False)]
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True, strict=True)
    return _pydantic_dataclass(frozen=True, config=config)(cls)


def _compressor(v):
    return v if v is None else make_compressor(v)


# Option types shared by the algorithms: each accepts a spec (a name, "name:value" or a
# table, see `distsgd.registry`) or a built object.
TopologyOption = Annotated[Topology | TopologySpec, BeforeValidator(TopologySpec.parse)]
CompressorOption = Annotated[Compressor, BeforeValidator(_compressor)]

# The options many algorithms share, declared once (type, range and meaning).
StepSize = Annotated[float, Field(gt=0, description="step size γ")]
Momentum = Annotated[float, Field(ge=0, lt=1, description="heavy-ball momentum μ (torch.optim.SGD form)")]
WeightDecay = Annotated[float, Field(ge=0, description="L2 weight decay λ")]
Nesterov = Annotated[bool, Field(description="Nesterov momentum")]
Seed = Annotated[int | None, Field(ge=0, description="seed of the algorithm's random draws (default: the run's)")]
Graph = Annotated[
    TopologyOption,
    Field(description='gossip graph: a name (ring, torus, exponential, ...), "random_regular:4" or a table with mixing'),
]


def bind(algorithm, n: int, seed: int = 0, shapes=None, data: dict | None = None):
    """The algorithm ready for n workers: topology specs built for n (seeded), an unset
    `seed` set to the run's, an unset `shapes` (the model's layer shapes, for layer-wise
    methods such as PowerSGD) filled in, likewise unset options named in `data` (facts of
    the task the engine knows: `client_sizes`, the workers' shard sizes, and `batch_size`),
    then the algorithm's own `bind(n)` if it has one (e.g. picking the Byzantine workers).
    Binding a bound algorithm changes nothing."""
    if not dataclasses.is_dataclass(algorithm):
        return algorithm
    for f in dataclasses.fields(algorithm):  # the parameters are float32: so must the options fit
        v = getattr(algorithm, f.name)
        if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX):
            raise ValueError(f"{f.name} = {v} is not a finite float32 number")
    names = {f.name for f in dataclasses.fields(algorithm)}
    changes = {}
    for f in dataclasses.fields(algorithm):
        v = getattr(algorithm, f.name)
        if isinstance(v, TopologySpec):
            changes[f.name] = v.build(n, seed)
    if "seed" in names and algorithm.seed is None:
        changes["seed"] = seed
    if "shapes" in names and algorithm.shapes is None and shapes is not None:
        changes["shapes"] = tuple(tuple(s) for s in shapes)
    for key, value in (data or {}).items():
        if key in names and getattr(algorithm, key) is None and value is not None:
            changes[key] = value
    try:
        out = dataclasses.replace(algorithm, **changes) if changes else algorithm
        hook = getattr(out, "bind", None)
        return hook(n) if hook is not None else out
    except ValidationError as e:  # a check that needs n (e.g. D² on its topology): one line
        raise ValueError(one_line(e)) from None


def seed_of(algorithm) -> int:
    """The algorithm's seed (0 when left unset and never bound)."""
    return algorithm.seed or 0


class Algorithm(Protocol):
    name: str

    def init(self, x0: torch.Tensor, comm: Communicator) -> State: ...

    def step(self, state: State, oracle: Oracle, comm: Communicator) -> State: ...


def sgd_direction(
    g: torch.Tensor,
    x: torch.Tensor,
    buf: torch.Tensor | None,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step direction of heavy-ball SGD as torch.optim.SGD defines it (dampening 0):

        d = g + λx;  b ← μb + d;  direction = d + μb (Nesterov) or b.

    Returns (direction, new momentum buffer); with μ = 0 the buffer stays None.
    """
    d = g + weight_decay * x if weight_decay else g
    if not momentum:
        return d, None
    buf = d.clone() if buf is None else buf.mul_(momentum).add_(d)  # in place: the state's buffer
    return (d + momentum * buf if nesterov else buf), buf


def check_hyper(lr: float, momentum: float, weight_decay: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
