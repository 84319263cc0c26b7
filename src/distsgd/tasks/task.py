"""A Task: the data shards of n workers, a model and its loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset, default_collate

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


def hold_out(size: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(validation indices, the rest) of `size` training samples: round(fraction·size) drawn
    at random, both sorted; (None, None) for fraction 0 (no draw, so the partition's random
    stream is what it is without a validation split)."""
    if fraction == 0:
        return None, None
    if not 0 < fraction < 1:
        raise UserError(f"validation must be a fraction in [0, 1), got {fraction}")
    k = round(fraction * size)
    if k < 1 or k >= size:
        raise UserError(f"validation = {fraction} of {size} training samples leaves {k} for validation and {size - k} to train on")
    order = torch.randperm(size, generator=generator)
    return order[:k].sort().values, order[k:].sort().values


class Samples:
    """Training or test samples: two tensors (the fast path: one indexing per batch) or any
    map-style `torch.utils.data.Dataset` whose items are (input, target) pairs, batched with
    torch's `default_collate`. A `TensorDataset` of two tensors takes the fast path."""

    def __init__(self, data):
        self.x = self.y = None
        self.source = data
        if isinstance(data, TensorDataset) and len(data.tensors) == 2:
            self.x, self.y = data.tensors
        elif isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            self.x, self.y = data
        elif not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise UserError(
                f"expected a map-style torch Dataset (with __getitem__ and __len__) or (inputs, targets) "
                f"tensors, got {type(data).__name__}"
            )
        if self.x is not None and len(self.x) != len(self.y):
            raise UserError(f"inputs and targets differ in length: {len(self.x)} and {len(self.y)}")
        if len(self) == 0:
            raise UserError("the dataset is empty")

    def __len__(self) -> int:
        return len(self.y) if self.y is not None else len(self.source)

    @property
    def fast(self) -> bool:
        return self.x is not None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the samples `idx` (any shape S): [*S, ...] each."""
        if self.fast:
            return self.x[idx], self.y[idx]
        items = [self.source[i] for i in idx.reshape(-1).tolist()]
        try:
            xb, yb = default_collate(items)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"dataset items must be (input, target) pairs of tensors or numbers: {e}") from None
        yb = torch.as_tensor(yb)
        return xb.reshape(*idx.shape, *xb.shape[1:]), yb.reshape(*idx.shape, *yb.shape[1:])

    def labels(self) -> torch.Tensor | None:
        """All targets (for partitioning and checks): the tensor, a dataset's `targets`, or
        None when only iterating the dataset would tell."""
        if self.y is not None:
            return self.y
        t = getattr(self.source, "targets", None)
        return torch.as_tensor(t) if t is not None else None


@dataclass
class Task:
    """What the workers train on. `shards[i]` indexes worker i's training samples."""

    train: Samples
    test: Samples | None
    shards: list[torch.Tensor]
    model: nn.Module  # the architecture and the common initial parameters x₀ (and buffers)
    batch_size: int
    description: dict
    loss: Callable  # loss(outputs, targets) -> mean loss of the batch
    kind: str  # "multiclass" | "binary" | "regression" | "other" (no accuracy)
    num_classes: int = 1
    label_flip: tuple[int, ...] = ()  # workers whose training labels are flipped (an attack)
    dataset: ds.Dataset | None = None  # the built-in dataset, when the task is one of ours
    eval_samples: int = 10_000  # train metrics on at most this many samples (a fixed subset)
    val: torch.Tensor | None = None  # training samples held out as the validation split (in no shard)

    def flipped(self, y: torch.Tensor) -> torch.Tensor:
        """The labels a label-flipping worker sees: C − 1 − y, 1 − y (binary) or −y."""
        if self.kind == "multiclass":
            return self.num_classes - 1 - y
        if self.kind == "other":
            raise UserError("label flipping needs class labels or regression targets")
        return 1 - y if self.kind == "binary" else -y

    @property
    def n(self) -> int:
        return len(self.shards)

    @property
    def train_samples(self) -> int:
        """Training samples the workers may draw from (the validation split held out)."""
        return len(self.train) - (0 if self.val is None else len(self.val))

    @torch.no_grad()
    def evaluate(self, outputs_fn, split: str = "test", chunk: int = 4096) -> dict:
        """Loss (and accuracy for classification) of `outputs_fn(x_batch)` on a split: "train"
        (a fixed subset of at most `eval_samples`), "val" (the held-out samples) or "test"."""
        data = self.test if split == "test" else self.train
        if data is None or (split == "val" and self.val is None):
            return {}
        if split == "val":
            order = self.val
        elif split == "train" and self.val is not None:  # the samples trained on, never the held-out ones
            kept = torch.ones(len(data), dtype=torch.bool)
            kept[self.val] = False
            pool = kept.nonzero().squeeze(1)
            pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[: self.eval_samples]
            order = pool[pick.sort().values]
        elif split == "train" and len(data) > self.eval_samples:  # a fixed random subset, the same at every evaluation
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: self.eval_samples].sort().values
        else:
            order = torch.arange(len(data))
        count = len(order)
        if not data.fast:
            chunk = min(chunk, 256)
        total, correct = 0.0, 0
        for lo in range(0, count, chunk):
            xb, yb = data.batch(order[lo : lo + chunk])
            if self.kind == "multiclass" and not data.fast:  # labels not checked up front
                from .user import check_labels

                check_labels(yb, self.num_classes, split)
            out = outputs_fn(xb)
            total += float(self.loss(out, yb)) * len(yb)
            if self.kind == "multiclass":
                correct += int((out.argmax(-1) == yb).sum())
            elif self.kind == "binary":
                correct += int(((out.squeeze(-1) > 0).float() == yb).sum())
        res = {f"{split}_loss": total / count}
        if self.kind in ("multiclass", "binary"):
            res[f"{split}_acc"] = correct / count
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
    regions: int = 20,
    lags: int = 6,
    input_epsilon: float | None = None,
    input_mechanism: str = "laplace",
    input_delta: float | None = None,
    validation: float = 0.0,
    seed: int = 0,
) -> Task:
    """Build data, shards and model. Every random choice draws from `seed`.

    dataset: mnist1d | digits | logistic | least_squares | mobility; partition: iid | dirichlet |
    labels (k = labels_per_worker) | natural (each synthetic worker keeps the data it
    generated; the default for synthetic data, iid otherwise).

    mobility: one-step-ahead forecasting of synthetic counts in `regions` regions from the
    last `lags` half-hours (mean squared error loss; model forecast_cnn, mlp or linear).
    `input_epsilon` perturbs its training series once before training (input perturbation,
    `distsgd.privacy.input_perturbation`: "laplace", or "gaussian" with `input_delta`).

    validation: the fraction of the training samples held out (drawn from `seed`) as a
    validation split that no worker trains on; evaluations then report val_loss and val_acc,
    which is what tuning should select on (the test split stays for the final figures).
    """
    if n_workers < 1:
        raise UserError(f"n_workers must be >= 1, got {n_workers}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if input_epsilon is not None and dataset != "mobility":
        raise UserError(f"input_epsilon (input perturbation) applies to the mobility dataset, not {dataset}")
    if model == "forecast_cnn" and dataset != "mobility":
        raise UserError(f"model 'forecast_cnn' reads forecasting windows: use it with dataset 'mobility', not {dataset}")
    if dataset == "mnist1d":
        data = ds.mnist1d(num_samples=num_samples)
    elif dataset == "digits":
        data = ds.digits(seed=seed)
    elif dataset in ("logistic", "least_squares"):
        data = ds.synthetic(dataset, n_workers, samples_per_worker, dim, heterogeneity, seed=seed)
    elif dataset == "mobility":
        perturb = None
        if input_epsilon is not None:
            from ..privacy.input_perturbation import series_perturbation

            perturb = series_perturbation(input_epsilon, input_mechanism, delta=input_delta, seed=seed)
        data = ds.mobility(regions=regions, lags=lags, seed=seed, perturb=perturb)
    else:
        raise UserError(f"unknown dataset '{dataset}' (choose from {', '.join(ds.DATASETS)})")

    if partition is None:
        partition = "natural" if data.groups is not None else "iid"
    g = torch.Generator().manual_seed(seed)
    val, pool = hold_out(len(data.y), validation, g)
    y = data.y if pool is None else data.y[pool]
    if partition == "iid":
        shards = part.iid(len(y), n_workers, g)
    elif partition == "dirichlet":
        if data.kind == "regression":
            raise UserError("the dirichlet partition needs class labels; use iid or natural")
        shards = part.dirichlet(y, n_workers, alpha, g, min_size=batch_size)
    elif partition == "labels":
        if data.kind == "regression":
            raise UserError("the labels partition needs class labels; use iid or natural")
        shards = part.labels_per_worker(y, n_workers, labels_per_worker, g)
    elif partition == "natural":
        if data.groups is None:
            raise UserError(f"dataset {dataset} has no natural partition; use iid, dirichlet or labels")
        shards = part.natural(data.groups if pool is None else data.groups[pool], n_workers)
    else:
        raise UserError(f"unknown partition '{partition}' (choose from {', '.join(part.PARTITIONS)})")
    if pool is not None:
        shards = [pool[s] for s in shards]
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
        **({"regions": regions, "lags": lags} if dataset == "mobility" else {}),
        **({"input_epsilon": input_epsilon, "input_mechanism": input_mechanism, "input_delta": input_delta} if input_epsilon is not None else {}),
        "model": model,
        "partition": partition,
        "n_workers": n_workers,
        "batch_size": batch_size,
        "train_samples": len(data.y) - (0 if val is None else len(val)),
        **({"validation_samples": len(val)} if val is not None else {}),
        "test_samples": len(data.y_test),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    return Task(
        Samples((data.x, data.y)),
        Samples((data.x_test, data.y_test)),
        shards,
        net,
        batch_size,
        desc,
        F.mse_loss if dataset == "mobility" else loss_for(data.kind),
        data.kind,
        data.num_classes,
        dataset=data,
        val=val,
    )
