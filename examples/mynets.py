"""A user's own model, dataset and loss, for `distsgd run examples/own_model.toml`.

The config names them by import path ("mynets:make_model"); the config file's folder is
on the import path, so this module needs no installing. Factories (functions or classes
called with no arguments) and ready objects are both accepted.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

TRAIN_SAMPLES = 1500  # of the 1797 8x8 digits; the rest is the test set


class DigitsCNN(nn.Module):
    """conv(3x3) - BatchNorm - ReLU - maxpool - linear: a small CNN for 8x8 images."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def make_model(seed: int = 0) -> nn.Module:
    """The model, initialized from `seed` (the global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN()


@lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


class Digits(Dataset):
    """sklearn's 8x8 handwritten digits as a map-style Dataset of (image [1, 8, 8], label).

    `targets` (all labels) lets distsgd partition by label (dirichlet, labels) without
    iterating the dataset."""

    def __init__(self, split: str = "train"):
        images, labels = _load()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        keep = order[:TRAIN_SAMPLES] if split == "train" else order[TRAIN_SAMPLES:]
        self.images, self.targets = images[keep], labels[keep]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def train_set() -> Dataset:
    return Digits("train")


def test_set() -> Dataset:
    return Digits("test")


def smoothed_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch's mean cross-entropy with label smoothing 0.05 (a user loss)."""
    return F.cross_entropy(outputs, targets, label_smoothing=0.05)
