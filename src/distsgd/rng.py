"""One seeding recipe for every random stream of the package.

A stream is named by (seed, key, purpose) and nothing else: `seed` is the run's seed (or
an option's, e.g. an algorithm's `seed`), `purpose` says what the numbers are for, and
`key` says whose they are:

- per-worker streams (key = the worker id; the server is `SERVER`): each worker draws
  from its own generator, so a process holding workers [2, 4) draws for workers 2 and 3
  exactly what the one-process simulation draws for them, whatever the split;
- shared streams (key = the step, or a layer): every process computes the same thing
  from the same inputs (an attack reads all n messages on every process), so every
  process seeds the same generator and draws the same numbers.

Never a process's rank or `comm.start`. `stream_seed` is the recipe; `generators`,
`states`, `load` and `save` keep per-worker generators in an algorithm's state (as
`get_state()` tensors, which checkpoints loaded with `weights_only=True` accept), and
`rand`, `randn`, `randint` draw stacked `[m, ...]` tensors whose row i comes from the
i-th local worker's generator.

Purposes (the only names `stream_seed` accepts, so a typo cannot alias a stream):

=============  ======  ==============================================================
purpose        key     stream
=============  ======  ==============================================================
sampling       worker  mini-batch reshuffling (`workers.Workers`, `WorkerBatchSampler`);
                       the historic formula, kept so sampling stays bit-identical
compress       worker  stochastic compressors (QSGD, Rand-K, natural); the server's
                       downlink compressor uses key `SERVER`
attack         step    Byzantine attacks' randomness (gaussian noise)
bgmd           step    BGMD's block sampling
bucketing      step    bucketing's shuffle
powersgd       layer   the PowerSGD compressor's initial Q (the same on every worker)
events         0       AD-PSGD's discrete-event simulation (one process holds it all)
clients        SERVER  federated rounds: which clients are sampled, their local steps,
                       dropouts and failures (every process draws the same)
dp_sampling    worker  DP-SGD's Poisson or uniform batches
dp_noise       worker  DP-SGD's Gaussian noise
input_noise    run     input perturbation of a task's training data (once)
=============  ======  ==============================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

SERVER = -1  # the key of the parameter server's per-worker streams

PURPOSES = {
    "sampling": "worker",
    "compress": "worker",
    "attack": "step",
    "bgmd": "step",
    "bucketing": "step",
    "powersgd": "layer",
    "events": "run",
    "clients": "server",
    "dp_sampling": "worker",
    "dp_noise": "worker",
    "input_noise": "run",
}

_MASK = (1 << 63) - 1

Generators = torch.Generator | Sequence[torch.Generator] | None


def stream_seed(seed: int, key: int, purpose: str) -> int:
    """The seed (in [0, 2⁶³)) of stream `purpose` for `key` (a worker id, `SERVER`, a step
    or a layer: see the table above) under the run's `seed`. Distinct (seed, key, purpose)
    give independent seeds (a 64-bit BLAKE2b digest); "sampling" keeps the historic
    formula of `workers._worker_seed`, so mini-batches are unchanged."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}: one of {', '.join(PURPOSES)}")
    seed, key = int(seed), int(key)
    if purpose == "sampling":
        return (seed * 1_000_003 + key * 7_919 + 17) % _MASK
    digest = hashlib.blake2b(f"distsgd\0{purpose}\0{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def generator(seed: int, key: int, purpose: str) -> torch.Generator:
    """A fresh CPU generator of stream (seed, key, purpose)."""
    return torch.Generator().manual_seed(stream_seed(seed, key, purpose))


def generators(seed: int, workers: Iterable[int], purpose: str) -> list[torch.Generator]:
    """One fresh generator per worker id (e.g. `comm.workers`): worker i's own stream."""
    return [generator(seed, w, purpose) for w in workers]


def save(gens: Sequence[torch.Generator]) -> torch.Tensor:
    """The generators' states stacked [m, S] (uint8), for an algorithm's state."""
    if not gens:
        return torch.empty(0, 0, dtype=torch.uint8)
    return torch.stack([g.get_state() for g in gens])


def load(states: torch.Tensor) -> list[torch.Generator]:
    """Generators restored from `save`'s tensor (or a list of `get_state()` tensors)."""
    out = []
    for s in states:
        g = torch.Generator()
        g.set_state(s.clone())  # its own storage: set_state on a row view of a stack segfaults
        out.append(g)
    return out


def states(seed: int, workers: Iterable[int], purpose: str) -> torch.Tensor:
    """The initial states of the workers' generators [m, S]: `save(generators(...))`."""
    return save(generators(seed, workers, purpose))


def _draw(fn, generator: Generators, size, dtype, device, **kw) -> torch.Tensor:
    size = tuple(size)
    if generator is None or isinstance(generator, torch.Generator):  # one stream for all rows
        return fn(*kw.values(), size, generator=generator, dtype=dtype).to(device)
    gens = list(generator)
    if len(gens) != size[0]:
        raise ValueError(f"{len(gens)} generators for {size[0]} rows")
    out = torch.empty(size, dtype=dtype)
    for i, g in enumerate(gens):
        fn(*kw.values(), size[1:], generator=g, dtype=dtype, out=out[i])
    return out.to(device)


def rand(generator: Generators, size, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """U[0, 1) of `size` = (m, ...): with a list of m generators, row i is
    `torch.rand(size[1:], generator=generator[i])`; with one generator (or None, torch's
    global one) the whole tensor is one draw, as `torch.rand(size)`."""
    return _draw(torch.rand, generator, size, dtype, device)


def randn(generator: Generators, size, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """N(0, 1) of `size` = (m, ...), row i from generator i (see `rand`)."""
    return _draw(torch.randn, generator, size, dtype, device)


def randint(generator: Generators, high: int, size, *, dtype=torch.int64, device=None) -> torch.Tensor:
    """Integers in [0, high) of `size` = (m, ...), row i from generator i (see `rand`)."""
    return _draw(torch.randint, generator, size, dtype, device, high=high)
