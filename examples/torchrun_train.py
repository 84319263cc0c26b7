"""An ordinary torchrun training loop; any distsgd algorithm in place of DDP.

    torchrun --standalone --nproc_per_node 4 examples/torchrun_train.py --algorithm choco_sgd

Against the same loop with DDP, two lines differ (marked `# distsgd`): the import, and the
optimizer wrapped instead of the model. Each rank is one worker of the algorithm; the
loader gives every rank its own part of the data (DistributedSampler), or with
`--partition dirichlet:0.3` (optional, the only other use of distsgd here) the non-i.i.d.
shards and exact batches that `distsgd.simulate(..., partition="dirichlet:0.3",
seed=...)` gives its workers. Decentralized algorithms gossip on a ring by default, which
needs 3 or more ranks.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import distsgd  # distsgd


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self, channels=16, blocks=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3)))


def digits():
    d = load_digits()  # 1797 images 8x8, 10 classes
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="allreduce_sgd", help="any registered distsgd algorithm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partition", default=None, help="e.g. dirichlet:0.3 (default: DistributedSampler)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    train, test = digits()
    if args.partition is None:
        sampler = DistributedSampler(train, num_replicas=world, rank=rank, seed=args.seed, drop_last=True)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    else:
        shards = distsgd.partition(train, world, args.partition, seed=args.seed, batch_size=args.batch_size)
        batches = distsgd.WorkerBatchSampler(shards[rank], args.batch_size, seed=args.seed, worker=rank)
        loader = DataLoader(train, batch_sampler=batches)

    torch.manual_seed(args.seed)  # every rank builds the same initial model
    model = ResNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    optimizer = distsgd.DistributedOptimizer(optimizer, model, algorithm=args.algorithm, seed=args.seed)  # distsgd

    model.train()
    step, epoch = 0, 0
    while step < args.steps:
        if args.partition is None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
        epoch += 1

    # test accuracy of this rank's model (decentralized algorithms: each rank its own),
    # averaged over the ranks
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        correct = (model(x.to(device)).argmax(1) == y.to(device)).float().mean()
    dist.all_reduce(correct)
    if rank == 0:
        print(f"final test accuracy {correct.item() / world:.4f} ({args.algorithm}, {world} ranks, {args.steps} steps)")
    dist.barrier()  # every rank is done before any closes its connections
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: a thread of the torch.distributed (gloo) runtime sometimes
    # aborts the process there ("terminate called without an active exception"), plain
    # DDP scripts included, and torchrun then reports a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
