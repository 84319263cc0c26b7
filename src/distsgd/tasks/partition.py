"""Split a training set over n workers: IID, Dirichlet(α) over labels, k labels per worker.

Every partitioner returns a list of n index tensors (one shard per worker), seeded.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

PARTITIONS = ("iid", "dirichlet", "labels", "natural")


def iid(num_samples: int, n: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation cut into n near-equal shards."""
    return list(torch.randperm(num_samples, generator=generator).tensor_split(n))


def dirichlet(
    labels: torch.Tensor, n: int, alpha: float, generator: torch.Generator, min_size: int
) -> list[torch.Tensor]:
    """Label skew (Hsu, Qi, Brown 2019): for each class c, proportions p_c ~ Dir(α·1_n)
    decide how many of c's samples each worker gets. Small α: each worker sees few classes;
    α → ∞: IID. Redrawn (up to 100 times) until every worker holds at least `min_size`."""
    if alpha <= 0:
        raise UserError(f"task.alpha must be > 0 for the dirichlet partition, got {alpha}")
    classes = labels.unique()
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    for _ in range(100):
        shards: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for c in classes:
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            p = torch.from_numpy(rng.dirichlet(np.full(n, float(alpha))))
            cuts = (p.cumsum(0) * len(idx)).round().long().clamp(max=len(idx))
            start = 0
            for i in range(n):
                shards[i].append(idx[start : int(cuts[i])])
                start = int(cuts[i])
        out = [torch.cat(s) for s in shards]
        if min(len(s) for s in out) >= min_size:
            return [s[torch.randperm(len(s), generator=generator)] for s in out]
    raise UserError(
        f"dirichlet partition with alpha={alpha} left a worker with fewer than {min_size} samples "
        f"after 100 draws; raise task.alpha, lower task.batch_size or use fewer workers"
    )


def labels_per_worker(labels: torch.Tensor, n: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Pathological label skew with exactly k labels per worker: worker i holds classes
    {(i·k + j) mod C : j < k}, and each class's samples are split evenly among its holders."""
    classes = labels.unique().tolist()
    c = len(classes)
    if not 1 <= k <= c:
        raise UserError(f"task.labels_per_worker must be in [1, {c}], got {k}")
    holders: dict[int, list[int]] = {cl: [] for cl in classes}
    for i in range(n):
        for j in range(k):
            holders[classes[(i * k + j) % c]].append(i)
    shards: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for cl, who in holders.items():
        if not who:
            continue
        idx = torch.nonzero(labels == cl).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        for part, i in zip(idx.tensor_split(len(who)), who, strict=True):
            shards[i].append(part)
    out = []
    for s in shards:
        s = torch.cat(s)
        out.append(s[torch.randperm(len(s), generator=generator)])
    return out


def natural(groups: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Each sample stays with the worker that generated it (synthetic data)."""
    if int(groups.max()) + 1 != n:
        raise UserError(f"the dataset was generated for {int(groups.max()) + 1} workers, not n={n}")
    return [torch.nonzero(groups == i).flatten() for i in range(n)]
