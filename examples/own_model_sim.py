"""Your own model and Dataset with 64 simulated workers: D-PSGD on a ring vs AllReduce-SGD.

A small CNN with BatchNorm, written as an ordinary `nn.Module`, trains on sklearn's 8x8
digits served by an ordinary map-style `Dataset` of (image, label) pairs. `distsgd.simulate`
stacks the workers (one vmapped gradient call per step for all of them) and keeps each
worker's BatchNorm statistics: averaged every step for AllReduce-SGD (one shared model),
local for D-PSGD (every worker its own model). The table gives the averaged model's final
test accuracy, the bytes each worker sent, the simulated seconds on a 1 Gbit/s network and
the wall seconds of the simulation.

    python examples/own_model_sim.py                       # 64 workers, ~1 min on 2 cores
    python examples/own_model_sim.py --steps 20 --workers 8
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import distsgd


class DigitsDataset(Dataset):
    """(image [1, 8, 8], label) pairs; `targets` holds all labels, so label-skewed
    partitions (dirichlet) need not iterate the dataset."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def digits(test_size: int = 297) -> tuple[DigitsDataset, DigitsDataset]:
    """sklearn's 1797 handwritten 8x8 digits, shuffled once and split into train and test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[test_size:], order[:test_size]
    return DigitsDataset(images[train], labels[train]), DigitsDataset(images[test], labels[test])


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)  # [B, C, 4, 4]
        return self.fc(x.flatten(1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--partition", default="dirichlet:1.0", help="iid, dirichlet:α or labels:k")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    train, test = digits()
    torch.manual_seed(args.seed)
    model = SmallCNN()  # every worker starts from these parameters and buffers
    network = distsgd.NetworkModel(latency=1e-4, bandwidth=1.25e8, compute_seconds=2e-3)
    algorithms = {
        "AllReduce-SGD": distsgd.AllReduceSGD(lr=args.lr, momentum=0.9),
        "D-PSGD (ring)": distsgd.DPSGD(lr=args.lr, momentum=0.9, topology="ring"),
    }
    print(
        f"{args.workers} workers x {args.batch_size} samples, {args.steps} steps, "
        f"{sum(p.numel() for p in model.parameters())} parameters, partition {args.partition}"
    )
    header = f"{'algorithm':<16}{'buffers':>9}{'test acc':>10}{'MB sent/worker':>16}{'sim s':>9}{'wall s':>9}"
    rows = []
    for name, algorithm in algorithms.items():
        t0 = time.perf_counter()
        r = distsgd.simulate(
            model,
            train,
            test,
            algorithm=algorithm,
            workers=args.workers,
            partition=args.partition,
            batch_size=args.batch_size,
            steps=args.steps,
            eval_every=args.steps,
            network=network,
            seed=args.seed,
        )
        wall = time.perf_counter() - t0
        f = r.final
        rows.append(
            f"{name:<16}{r.summary['buffers']:>9}{f['test_acc']:>10.3f}"
            f"{f['bytes_sent_per_worker'] / 1e6:>16.3f}{f['sim_seconds']:>9.2f}{wall:>9.1f}"
        )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
