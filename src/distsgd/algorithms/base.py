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

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..comm.base import Communicator

Oracle = Callable[[torch.Tensor], torch.Tensor]
State = dict[str, Any]


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
    buf = d.clone() if buf is None else buf.mul(momentum).add_(d)
    return (d + momentum * buf if nesterov else buf), buf


def check_hyper(lr: float, momentum: float, weight_decay: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
