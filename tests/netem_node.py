"""A node of tests/test_netem.py: a few drop-in steps over gloo, then this node's byte
counts (the kernel's and distsgd's) for the window, written to $OUT/node<rank>.json."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distsgd import DistributedOptimizer
from distsgd.netem import interface_counters


def main() -> None:
    algorithm, out_dir = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))  # 19 k parameters
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, algorithm)
    g = torch.Generator().manual_seed(rank)
    dist.barrier()
    k0, w0 = interface_counters(), (opt.comm.wire.sent, opt.comm.wire.received)
    for _ in range(20):
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    dist.barrier()
    k1, w1 = interface_counters(), (opt.comm.wire.sent, opt.comm.wire.received)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    result = {
        **{f"kernel_{k}": k1[k] - k0[k] for k in k0},
        "wire_sent": w1[0] - w0[0],
        "wire_received": w1[1] - w0[1],
        "logical_sent": float(opt.comm.traffic.sent.mean()),
        "same_model": all(torch.equal(every[0], e) for e in every),
        "ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
        "node": os.environ.get("DISTSGD_NETEM_NODE"),
    }
    with open(os.path.join(out_dir, f"node{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
