"""A Task from the user's own model, datasets and loss.

`user_task(model, train, test, loss=..., n_workers=..., partition=...)` checks once, on
one batch, what would otherwise fail deep inside the stacked engine: a model with no
trainable parameters, inputs of the wrong shape for the model, a loss that cannot compare
the model's outputs with the targets, labels outside the model's classes. Each is one
`UserError` line. Classification (integer targets, outputs [B, C] with C > 1) gets
accuracy in the metrics; anything else reports the loss only.

Partitions: "iid", "dirichlet:α" (Hsu et al. 2019, per class proportions ~ Dir(α)),
"labels:k" (k classes per worker), or the user's own list of index tensors, one per worker.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from . import partition as part
from .task import Samples, Task, hold_out

LOSSES = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "nll": F.nll_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}


def import_path(path: str, what: str, search: tuple[str, ...] = ()):
    """The object at "package.module:attribute" (a dotted attribute path is allowed), looked
    up on sys.path plus the current directory and `search` (e.g. the config file's folder)."""
    if not isinstance(path, str) or ":" not in path:
        raise UserError(f"{what}: expected an import path 'package.module:name', got {path!r}")
    module_name, _, attr = path.partition(":")
    for folder in (os.getcwd(), *search):
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{what}: cannot import module {module_name!r} ({e})") from None
    except Exception as e:  # the user's module failed while importing
        raise UserError(f"{what}: importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    for part_name in attr.split("."):
        if not hasattr(obj, part_name):
            raise UserError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part_name)
    return obj


def resolve(obj, what: str, *, call: bool = True, search: tuple[str, ...] = ()):
    """An import path is imported; a callable (factory) is called with no arguments."""
    if isinstance(obj, str):
        obj = import_path(obj, what, search)
    if call and callable(obj) and not isinstance(obj, nn.Module | torch.utils.data.Dataset):
        try:
            obj = obj()
        except Exception as e:
            raise UserError(f"{what}: calling {getattr(obj, '__name__', obj)!r} failed: {type(e).__name__}: {e}") from None
    return obj


def resolve_loss(loss, search: tuple[str, ...] = ()) -> Callable:
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    if isinstance(loss, str):
        if ":" not in loss:
            raise UserError(f"loss: unknown loss {loss!r} (choose from {', '.join(LOSSES)} or 'package.module:name')")
        loss = import_path(loss, "loss", search)
    if isinstance(loss, type) and issubclass(loss, nn.Module):  # e.g. "torch.nn:CrossEntropyLoss"
        try:
            loss = loss()
        except Exception as e:
            raise UserError(f"loss: {loss.__name__}() failed: {type(e).__name__}: {e}") from None
    if not callable(loss):
        raise UserError(f"loss: expected a callable loss(outputs, targets), got {type(loss).__name__}")
    return loss


def make_shards(partition, labels: torch.Tensor | None, size: int, n: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if isinstance(partition, list | tuple):
        shards = [torch.as_tensor(s, dtype=torch.long) for s in partition]
        if len(shards) != n:
            raise UserError(f"partition: {len(shards)} index sets for {n} workers")
        for s in shards:
            if len(s) and (int(s.min()) < 0 or int(s.max()) >= size):
                raise UserError(f"partition: an index is outside the training set [0, {size})")
        return shards
    name, _, value = str(partition).partition(":")
    if name == "iid":
        return part.iid(size, n, g)
    if name in ("dirichlet", "labels"):
        if labels is None or labels.dtype.is_floating_point:
            raise UserError(
                f"partition {name}: needs integer class labels (a tensor dataset, or a dataset with .targets)"
            )
        try:
            arg = float(value) if name == "dirichlet" else int(value)
        except ValueError:
            raise UserError(f"partition {partition!r}: expected {name}:{'α' if name == 'dirichlet' else 'k'}") from None
        if name == "dirichlet":
            if not value:
                arg = 0.5
            if not arg > 0:
                raise UserError(f"partition dirichlet: α must be > 0, got {arg}")
            return part.dirichlet(labels, n, arg, g, min_size=batch_size)
        return part.labels_per_worker(labels, n, arg if value else 2, g)
    raise UserError(f"unknown partition {partition!r} (choose from iid, dirichlet:α, labels:k, or index lists)")


def classifies(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Integer targets and outputs [B, C] with C > 1: a classifier (accuracy is reported)."""
    return not y.dtype.is_floating_point and out.dim() == 2 and out.shape[1] > 1


def check_labels(labels: torch.Tensor, classes: int, name: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise UserError(
            f"{name} labels span [{int(labels.min())}, {int(labels.max())}] but the model has "
            f"{classes} outputs: labels must be in [0, {classes})"
        )


def _probe(model: nn.Module, loss: Callable, train: Samples, batch_size: int):
    """One forward and loss on a copy of the model: (outputs, targets) or a UserError."""
    xb, yb = train.batch(torch.arange(min(batch_size, len(train))))
    probe = copy.deepcopy(model)
    with torch.no_grad():
        try:
            out = probe(xb)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"the model {type(model).__name__} cannot take a batch of the training set "
                f"(inputs {tuple(xb.shape)}): {msg}"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise UserError(f"the model {type(model).__name__} must return one tensor, got {type(out).__name__}")
        if classifies(out, yb):
            check_labels(yb, out.shape[1], "training")
        try:
            value = loss(out, yb)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"the loss cannot compare outputs {tuple(out.shape)} with targets {tuple(yb.shape)} "
                f"({yb.dtype}): {msg}"
            ) from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise UserError("the loss must return the batch's mean loss, one number")
    return out, yb


def user_task(
    model: nn.Module,
    train,
    test=None,
    *,
    loss="cross_entropy",
    n_workers: int,
    batch_size: int = 32,
    partition="iid",
    validation: float = 0.0,
    seed: int = 0,
) -> Task:
    """The checked task of a user's model and data; `validation` holds out that fraction of
    the training samples (drawn from `seed`) as a validation split no worker trains on."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"the model {type(model).__name__} has no trainable parameters")
    if n_workers < 1:
        raise UserError(f"workers must be >= 1, got {n_workers}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    loss = resolve_loss(loss)
    train_s = Samples(train)
    test_s = Samples(test) if test is not None else None
    out, yb = _probe(model, loss, train_s, batch_size)
    kind, classes = "other", 1
    if classifies(out, yb):
        kind, classes = "multiclass", out.shape[1]
        for name, s in (("training", train_s), ("test", test_s)):
            labels = s.labels() if s is not None else None
            if labels is not None:  # otherwise every batch is checked as it is drawn
                check_labels(labels, classes, name)
    val, pool = hold_out(len(train_s), validation, torch.Generator().manual_seed(seed))
    if pool is None:
        shards = make_shards(partition, train_s.labels(), len(train_s), n_workers, batch_size, seed)
    elif isinstance(partition, list | tuple):
        raise UserError("validation with explicit index lists: leave the validation samples out of the lists yourself")
    else:
        labels = train_s.labels()
        shards = make_shards(partition, None if labels is None else labels[pool], len(pool), n_workers, batch_size, seed)
        shards = [pool[s] for s in shards]
    smallest = min(len(s) for s in shards)
    if smallest < batch_size:
        raise UserError(
            f"a worker holds {smallest} training samples, fewer than batch_size={batch_size}: "
            "lower the batch size or the number of workers, or add samples"
        )
    desc = {
        "dataset": type(train).__name__,
        "model": type(model).__name__,
        "partition": partition if isinstance(partition, str) else "user",
        "n_workers": n_workers,
        "batch_size": batch_size,
        "train_samples": len(train_s) - (0 if val is None else len(val)),
        **({"validation_samples": len(val)} if val is not None else {}),
        "test_samples": len(test_s) if test_s is not None else 0,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "buffers": sum(b.numel() for b in model.buffers()),
    }
    return Task(train_s, test_s, shards, model, batch_size, desc, loss, kind, classes, val=val)


def partition(dataset, n_workers: int, scheme="iid", *, seed: int = 0, batch_size: int = 1) -> list[torch.Tensor]:
    """The index shards `distsgd.simulate(..., partition=scheme, seed=seed)` gives its workers,
    for a torchrun script's DataLoader (with `distsgd.WorkerBatchSampler`): "iid",
    "dirichlet:α" or "labels:k"; `batch_size` is the least samples a worker gets (Dirichlet)."""
    data = Samples(dataset)
    return make_shards(scheme, data.labels(), len(data), n_workers, batch_size, seed)
