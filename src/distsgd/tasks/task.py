"""A Task: the data shards of n workers, a model and its loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from . import datasets as ds
from . import partition as part
from .models import build_model


def loss_for(kind: str):
    """Mean loss of a batch: cross-entropy, logistic (binary) or half squared error."""
    if kind == "multiclass":
        return F.cross_entropy
    if kind == "binary":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y)
    return lambda out, y: 0.5 * (out.squeeze(-1) - y).pow(2).mean()


@dataclass
class Task:
    """What the workers train on. `shards[i]` indexes worker i's training samples."""

    dataset: ds.Dataset
    shards: list[torch.Tensor]
    model: nn.Module  # the architecture and the common initial parameters x₀
    batch_size: int
    description: dict
    label_flip: tuple[int, ...] = ()  # workers whose training labels are flipped (an attack)

    def flipped(self, y: torch.Tensor) -> torch.Tensor:
        """The labels a label-flipping worker sees: C − 1 − y, 1 − y (binary) or −y."""
        if self.dataset.kind == "multiclass":
            return self.dataset.num_classes - 1 - y
        return 1 - y if self.dataset.kind == "binary" else -y

    @property
    def n(self) -> int:
        return len(self.shards)

    @property
    def loss(self):
        return loss_for(self.dataset.kind)

    @torch.no_grad()
    def evaluate(self, outputs_fn, split: str = "test", chunk: int = 4096) -> dict:
        """Loss (and accuracy for classification) of `outputs_fn(x_batch)` on a split."""
        x, y = (
            (self.dataset.x_test, self.dataset.y_test)
            if split == "test"
            else (
                self.dataset.x,
                self.dataset.y,
            )
        )
        total, correct = 0.0, 0
        for lo in range(0, len(y), chunk):
            out = outputs_fn(x[lo : lo + chunk])
            yb = y[lo : lo + chunk]
            total += float(self.loss(out, yb)) * len(yb)
            if self.dataset.kind == "multiclass":
                correct += int((out.argmax(-1) == yb).sum())
            elif self.dataset.kind == "binary":
                correct += int(((out.squeeze(-1) > 0).float() == yb).sum())
        res = {f"{split}_loss": total / len(y)}
        if self.dataset.kind != "regression":
            res[f"{split}_acc"] = correct / len(y)
        return res


def make_task(
    dataset: str = "mnist1d",
    *,
    n_workers: int = 16,
    model: str = "mlp",
    hidden: tuple[int, ...] = (100, 100),
    partition: str | None = None,
    alpha: float = 0.5,
    labels_per_worker: int = 2,
    batch_size: int = 32,
    num_samples: int = 5000,
    samples_per_worker: int = 200,
    dim: int = 20,
    heterogeneity: float = 0.0,
    seed: int = 0,
) -> Task:
    """Build data, shards and model. Every random choice draws from `seed`.

    dataset: mnist1d | digits | logistic | least_squares; partition: iid | dirichlet |
    labels (k = labels_per_worker) | natural (each synthetic worker keeps the data it
    generated; the default for synthetic data, iid otherwise).
    """
    if n_workers < 1:
        raise UserError(f"n_workers must be >= 1, got {n_workers}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if dataset == "mnist1d":
        data = ds.mnist1d(num_samples=num_samples)
    elif dataset == "digits":
        data = ds.digits(seed=seed)
    elif dataset in ("logistic", "least_squares"):
        data = ds.synthetic(dataset, n_workers, samples_per_worker, dim, heterogeneity, seed=seed)
    else:
        raise UserError(f"unknown dataset '{dataset}' (choose from {', '.join(ds.DATASETS)})")

    if partition is None:
        partition = "natural" if data.groups is not None else "iid"
    g = torch.Generator().manual_seed(seed)
    if partition == "iid":
        shards = part.iid(len(data.y), n_workers, g)
    elif partition == "dirichlet":
        if data.kind == "regression":
            raise UserError("the dirichlet partition needs class labels; use iid or natural")
        shards = part.dirichlet(data.y, n_workers, alpha, g, min_size=batch_size)
    elif partition == "labels":
        if data.kind == "regression":
            raise UserError("the labels partition needs class labels; use iid or natural")
        shards = part.labels_per_worker(data.y, n_workers, labels_per_worker, g)
    elif partition == "natural":
        if data.groups is None:
            raise UserError(f"dataset {dataset} has no natural partition; use iid, dirichlet or labels")
        shards = part.natural(data.groups, n_workers)
    else:
        raise UserError(f"unknown partition '{partition}' (choose from {', '.join(part.PARTITIONS)})")
    smallest = min(len(s) for s in shards)
    if smallest < batch_size:
        raise UserError(
            f"a worker holds {smallest} training samples, fewer than batch_size={batch_size}: "
            f"lower the batch size or the number of workers, or add samples"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, data.features, data.num_classes, list(hidden))
    desc = {
        "dataset": dataset,
        "model": model,
        "partition": partition,
        "n_workers": n_workers,
        "batch_size": batch_size,
        "train_samples": len(data.y),
        "test_samples": len(data.y_test),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    return Task(data, shards, net, batch_size, desc)
