"""signSGD and Signum with majority vote.

Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed Optimisation for
Non-Convex Problems", ICML 2018 (Algorithm 3, majority vote); Bernstein, Zhao,
Azizzadenesheli, Anandkumar, "signSGD with Majority Vote is Communication Efficient and
Fault Tolerant", ICLR 2019 (Algorithm 1, Signum with majority vote):

    worker i:  v_i ← β v_i + (1 − β) g_i;  send pack(sign(v_i))          (1 bit / coordinate)
    server:    V = sign(Σ_i sign(v_i));   send pack(V)                    (1 bit / coordinate)
    worker:    x ← x − η (V + λ x)                                        (weight decay after the vote)

β = 0 is signSGD. Ties: the ICLR 2019 code packs sign(0) as +1, so a zero momentum entry
votes +1 and a tied vote (possible with an even number of workers) becomes +1; we do the
same. `byzantine` workers send the negated sign (the ICLR 2019 code's adversary); the
vote tolerates a minority. `aggregate="mean"` replaces the vote by the plain average of
the signs (sent back as float32), the comparison of the paper's robustness claim.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from ..compress.base import Payload, pack_bits, unpack_bits
from .base import ALGORITHMS, StepSize, WeightDecay, options


def majority_vote(bits_all: torch.Tensor, d: int) -> torch.Tensor:
    """Packed signs of n workers [n, ⌈d/8⌉] -> packed sign of their sum [1, ⌈d/8⌉] (tie: +1)."""
    n = bits_all.shape[0]
    plus = unpack_bits(bits_all, d).sum(0, dtype=torch.int32)  # workers voting +1
    return pack_bits((2 * plus >= n).unsqueeze(0))


@ALGORITHMS.register(paper="Bernstein et al., ICML 2018 and ICLR 2019")
@ALGORITHMS.register("signum_mv", paper="Bernstein et al., ICLR 2019 (Signum with majority vote)")
@options
class Signum:
    """Signum / signSGD with majority vote: 1 bit per coordinate each way."""

    buffer_policy: ClassVar[str] = "average"  # every worker holds the same model

    lr: StepSize
    beta: Annotated[float, Field(ge=0, lt=1, description="momentum β (0: signSGD)")] = 0.9
    weight_decay: WeightDecay = 0.0
    aggregate: Annotated[Literal["vote", "mean"], Field(description="vote: sign of the sum (1 bit back); mean: mean of the signs (float32 back)")] = "vote"
    byzantine: Annotated[tuple[int, ...], Field(description="workers that send the negated sign (the ICLR 2019 adversary)")] = ()
    name: str = "signum"

    def init(self, x0, comm):
        return {"x": x0.clone(), "momentum": torch.zeros_like(x0), "t": 0}

    def step(self, state, oracle, comm):
        x = state["x"]
        v = state["momentum"].mul_(self.beta).add_(oracle(x), alpha=1 - self.beta)
        d = x.shape[1]
        positive = v >= 0
        if self.byzantine:
            ids = torch.arange(comm.start, comm.start + comm.m)
            bad = torch.isin(ids, torch.tensor(self.byzantine)).unsqueeze(1)
            positive = torch.where(bad, ~positive, positive)
        votes = comm.gather_payload(Payload({"bits": pack_bits(positive)}, d))
        if self.aggregate == "vote":
            vote = comm.broadcast_payload(Payload({"bits": majority_vote(votes.wire["bits"], d)}, d))
            sign = unpack_bits(vote.wire["bits"], d).float().mul_(2).sub_(1)
        else:
            mean = unpack_bits(votes.wire["bits"], d).float().mul_(2).sub_(1).mean(0, keepdim=True)
            sign = comm.broadcast_payload(Payload({"mean": mean}, d)).wire["mean"]
        if self.weight_decay:
            sign = sign + self.weight_decay * x
        return {"x": x.sub_(sign, alpha=self.lr), "momentum": v, "t": state["t"] + 1}
