"""Bodies of the drop-in tests' processes (importable by spawned processes): an ordinary
torchrun-style loop around `distsgd.DistributedOptimizer`, one rank per worker."""

import functools
import itertools
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_helpers import _init, _leave
from torch import nn

import distsgd

WORLD = 4  # ranks of the equivalence run
B = 16  # batch size
SEED = 1  # partition, sampler and algorithm seed (simulate's seed=)
PARTITION = "dirichlet:0.5"
STEPS = 50  # the longer drift run

# key -> (the spec given to the drop-in, the wrapped SGD's keyword arguments, the same
# algorithm as simulate() takes it). The drop-in spec leaves lr (and for AllReduce-SGD the
# momentum) to the wrapped optimizer, so filling options from torch.optim.SGD is tested too.
ALGOS = {
    "allreduce_sgd": ("allreduce_sgd", {"lr": 0.05, "momentum": 0.9}, {"name": "allreduce_sgd", "lr": 0.05, "momentum": 0.9}),
    "local_sgd": ({"name": "local_sgd", "local_steps": 4}, {"lr": 0.05}, None),
    "dpsgd": ({"name": "dpsgd", "topology": "ring"}, {"lr": 0.05}, None),
    "d2": ({"name": "d2"}, {"lr": 0.05}, None),
    "choco_sgd": ({"name": "choco_sgd", "compressor": "topk:0.1", "gamma": 0.3}, {"lr": 0.05}, None),
    "compressed_sgd": ({"name": "compressed_sgd", "compressor": "topk:0.1", "error_feedback": True}, {"lr": 0.05}, None),
    "ef21": ({"name": "ef21", "compressor": "topk:0.1"}, {"lr": 0.05}, None),
    "signum_mv": ({"name": "signum_mv"}, {"lr": 0.001}, None),
    "powersgd": ({"name": "powersgd", "rank": 2, "momentum": 0.9}, {"lr": 0.05}, None),
    "robust_sgd": ({"name": "robust_sgd", "aggregator": "geomed"}, {"lr": 0.05}, None),
    "robust_gossip": ({"name": "robust_gossip"}, {"lr": 0.05}, None),
}

# (key, buffers policy) for the buffer test: both policies against an algorithm whose default
# is the other one (AllReduce-SGD averages by default, D-PSGD keeps them local)
BUFFER_CASES = [("allreduce_sgd", "local"), ("dpsgd", "average"), ("allreduce_sgd", "average")]
BUFFER_STEPS = 5

RESUME_KEYS = ["choco_sgd", "powersgd", "ef21", "signum_mv", "compressed_sgd", "d2", "local_sgd"]
RESUME_WORLD, RESUME_STEPS, RESUME_AT = 2, 20, 10


def resume_spec(key: str):
    """ALGOS' spec, on the complete graph where it gossips (a ring needs 3 workers)."""
    spec = ALGOS[key][0]
    return {**spec, "topology": "complete"} if key in ("choco_sgd", "d2") else spec


def sim_spec(key: str) -> dict:
    """The algorithm as `distsgd.simulate` takes it: the drop-in spec plus the optimizer's lr."""
    spec, opt, full = ALGOS[key]
    if full is not None:
        return dict(full)
    return {**spec, "lr": opt["lr"]}


@functools.cache
def digits():
    """sklearn's 8x8 digits as 1x8x8 images: (train, test) TensorDatasets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    return torch.utils.data.TensorDataset(x[:1500], y[:1500]), torch.utils.data.TensorDataset(x[1500:], y[1500:])


class Net(nn.Module):
    """A small CNN with BatchNorm (running statistics are buffers)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.c1(x))), 2)
        return self.fc(x.flatten(1))


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_buffers(model: nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().reshape(-1).double() for b in model.buffers()])


def gather(t: torch.Tensor) -> torch.Tensor:
    """[world, ...] of every rank's t."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def loader(train, shards, rank: int, steps: int):
    sampler = distsgd.WorkerBatchSampler(shards[rank], B, seed=SEED, worker=rank, steps=steps)
    return torch.utils.data.DataLoader(train, batch_sampler=sampler)


def make(key: str, buffers=None, init_seed: int = 0, spec=None):
    torch.manual_seed(init_seed)
    model = Net()
    default, opt_kw, _ = ALGOS[key]
    spec = default if spec is None else spec
    opt = distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), **opt_kw), model, algorithm=spec,
                                       seed=SEED, buffers=buffers)
    return model, opt


def train_step(model, opt, xb, yb):
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    opt.step()


def equivalence(rank, world, rdzv, steps, data, out_path):
    """Every algorithm of ALGOS (default buffer policy) for `steps` steps, parameters and
    buffers gathered after the first and the last; then BUFFER_CASES and the semantics. Rank 0
    saves {(key, step): (params [world, d], buffers [world, b])} and {(key, policy): ...}."""
    _init(rank, world, rdzv)
    try:
        train = torch.utils.data.TensorDataset(*data)  # the parent's: no sklearn import here
        shards = distsgd.partition(train, world, PARTITION, seed=SEED, batch_size=B)
        out = {}
        for key in ALGOS:
            model, opt = make(key)
            for t, (xb, yb) in enumerate(loader(train, shards, rank, steps)):
                train_step(model, opt, xb, yb)
                if t + 1 in (1, steps):
                    out[key, t + 1] = (gather(flat_params(model)), gather(flat_buffers(model)))
        for key, policy in BUFFER_CASES:
            model, opt = make(key, buffers=policy)
            for xb, yb in loader(train, shards, rank, BUFFER_STEPS):
                train_step(model, opt, xb, yb)
            out[key, policy] = (gather(flat_params(model)), {n: gather(b.detach()) for n, b in model.named_buffers()})
        out["semantics"] = semantics(rank, world, train)
        if rank == 0:
            torch.save(out, out_path)
    finally:
        _leave()


def resume(rank, world, rdzv, phase, ckpt_dir, data, out_path):
    """phase "full": RESUME_STEPS steps, checkpointing model and optimizer after RESUME_AT;
    phase "resumed": a fresh model (other initial weights) and optimizer load the
    checkpoint and run the remaining batches. Rank 0 saves every rank's final parameters
    and buffers per algorithm."""
    _init(rank, world, rdzv)
    try:
        train = torch.utils.data.TensorDataset(*data)  # the parent's: no sklearn import here
        shards = distsgd.partition(train, world, PARTITION, seed=SEED, batch_size=B)
        out = {}
        for key in RESUME_KEYS:
            path = os.path.join(ckpt_dir, f"{key}-{rank}.pt")
            batches = loader(train, shards, rank, RESUME_STEPS)
            if phase == "full":
                model, opt = make(key, spec=resume_spec(key))
                for t, (xb, yb) in enumerate(batches):
                    if t == RESUME_AT:
                        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
                    train_step(model, opt, xb, yb)
            else:
                model, opt = make(key, init_seed=1234, spec=resume_spec(key))  # not the checkpoint's weights
                ck = torch.load(path, weights_only=False)
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["opt"])
                for xb, yb in itertools.islice(batches, RESUME_AT, None):
                    train_step(model, opt, xb, yb)
            out[key] = (gather(flat_params(model)), gather(flat_buffers(model)))
        if rank == 0:
            torch.save(out, out_path)
    finally:
        _leave()


OVERLAP_STEPS = 6


def overlap(rank, world, rdzv, data, out_path):
    """AllReduce-SGD with the all-reduce overlapping the backward pass (buckets of about
    1 KiB: two for Net) against reducing in step(): plain steps, two backward passes per step, the
    user clearing .grad through the model, a parameter without gradient, a model wrapped
    twice, a graph that differs by rank. Rank 0 saves
    {case: (params [world, d] with overlap, traffic with, params without, traffic without)}."""
    _init(rank, world, rdzv)
    try:
        train = torch.utils.data.TensorDataset(*data)
        shards = distsgd.partition(train, world, PARTITION, seed=SEED, batch_size=B)
        out = {}
        for case in ("plain", "accumulate", "model_clears", "unused", "rewrapped", "rank_dependent", "closure",
                     "replaced_grad"):
            got = []
            for on in (True, False):
                torch.manual_seed(0)
                model = Partly() if case == "unused" else TwoHeads() if case == "rank_dependent" else Net()
                first = None
                if case == "rewrapped":  # a wrapper made before on the same model must not act
                    first = distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), model, seed=SEED)
                opt = distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), model,
                                                   seed=SEED, overlap=on, bucket_cap_mb=0.001)
                assert (opt.buckets is not None) == on
                assert first is None or first.buckets.handles == []  # its hooks are off the parameters
                assert not on or len(opt.buckets.bounds) == (3 if case == "rank_dependent" else 2)  # heads, then the rest
                for xb, yb in loader(train, shards, rank, OVERLAP_STEPS):
                    if case == "model_clears":
                        model.zero_grad(set_to_none=True)
                    else:
                        opt.zero_grad()
                    half = B // 2
                    parts = [(xb[:half], yb[:half]), (xb[half:], yb[half:])] if case == "accumulate" else [(xb, yb)]
                    if case == "closure":  # as with torch.optim: step(closure) runs forward and backward
                        opt.step(lambda m=model, x=xb, y=yb: F.cross_entropy(m(x), y).backward())
                        continue
                    for x, y in parts:
                        logits = model(x, head=rank % 2) if case == "rank_dependent" else model(x)
                        F.cross_entropy(logits, y).backward()
                    assert not on or opt.buckets.reduced  # the mean is in .grad before step()
                    if case == "replaced_grad":  # code between backward and step assigns .grad
                        for p in model.parameters():
                            p.grad = p.grad * 0.5
                    opt.step()
                got += [gather(flat_params(model)), (opt.comm.traffic.summary(), opt.comm.wire.summary())]
            out[case] = tuple(got)
        if rank == 0:
            torch.save(out, out_path)
    finally:
        _leave()


class TwoHeads(nn.Module):
    """A trunk and two heads; each rank trains through one (a graph that differs by rank:
    its buckets fill in a different order on each)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(64, 32)
        self.heads = nn.ModuleList([nn.Linear(32, 10), nn.Linear(32, 10)])

    def forward(self, x, head: int = 0):
        return self.heads[head](torch.relu(self.trunk(x.flatten(1))))


class Partly(nn.Module):
    """A frozen layer, a trainable head and a parameter the forward never uses."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(64, 32)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(32, 10)
        self.unused = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.head(torch.relu(self.frozen(x.flatten(1))))


def _error(make_it) -> tuple[str, str] | None:
    """(exception type, message) of make_it(), or None when it raised nothing."""
    try:
        make_it()
    except Exception as e:
        return type(e).__name__, str(e)
    return None


def semantics(rank: int, world: int, train) -> dict:
    """DDP semantics (frozen and unused parameters, an LR scheduler on the wrapped SGD,
    initial parameters) and the constructor's errors, in the running process group."""
    import warnings

    shards = distsgd.partition(train, world, "iid", seed=SEED, batch_size=B)
    out = {}

    # frozen and unused parameters, each loop style of clearing the gradients
    lr, wd, steps = 0.1, 0.01, 5
    for algo, clear in (("allreduce_sgd", "opt"), ("allreduce_sgd", "model"), ("dpsgd", "opt")):
        torch.manual_seed(0)
        model = Partly()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = distsgd.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd), model, algorithm=algo, seed=SEED
        )
        unused_grads = []
        for xb, yb in loader(train, shards, rank, steps):
            opt.zero_grad() if clear == "opt" else model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            unused_grads.append(None if model.unused.grad is None else model.unused.grad.clone())
            opt.step()
        out["partly", algo, clear] = {
            "before": before,
            "after": {n: gather(p.detach().clone()) for n, p in model.named_parameters()},
            "frozen_grad": model.frozen.weight.grad,
            "unused_grads": unused_grads,
            "d": opt.flat.d,
            "lr": lr,
            "wd": wd,
            "steps": steps,
        }

    # StepLR halving the wrapped SGD's lr: AllReduce-SGD without momentum against the
    # hand computation x ← x − lr_t · mean_i g_i (the mean over ranks by dist.all_reduce)
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    sgd = torch.optim.SGD(model.parameters(), lr=0.4)
    opt = distsgd.DistributedOptimizer(sgd, model, algorithm="allreduce_sgd", seed=SEED)
    sched = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for xb, yb in loader(train, shards, rank, 4):
            opt.zero_grad()
            F.cross_entropy(model(xb.flatten(1)), yb).backward()
            g = torch.cat([model.weight.grad.reshape(-1), model.bias.grad.reshape(-1)])
            dist.all_reduce(g)
            g /= world
            x0 = flat_params(model).clone()
            lr_t = sgd.param_groups[0]["lr"]
            opt.step()
            sched.step()
            rows.append((lr_t, x0, g, flat_params(model).clone()))
    out["steplr"] = rows
    out["steplr_warnings"] = [str(w.message) for w in caught if "lr_scheduler" in str(w.message)]

    # DDP broadcasts rank 0's parameters and buffers at construction: ranks that
    # initialized their models differently start from the same model
    torch.manual_seed(100 + rank)
    model = Net()
    distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="dpsgd", seed=SEED)
    out["initial_params"] = gather(flat_params(model))

    # errors of the constructor, each before any collective (so every rank raises)
    torch.manual_seed(0)
    net = Net()

    def wrap(opt_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), algorithm="allreduce_sgd"):
        return lambda: distsgd.DistributedOptimizer(opt_factory(net), net, algorithm=algorithm, seed=SEED)

    frozen = Net().requires_grad_(False)
    out["errors"] = {
        "adam": _error(wrap(opt_factory=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))),
        "unknown": _error(wrap(algorithm="no_such_algorithm")),
        "bad_option": _error(wrap(algorithm={"name": "choco_sgd", "gamma": "x"})),
        "overlap_gossip": _error(lambda: distsgd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net,
                                                                      algorithm="dpsgd", overlap=True)),
        "bucket_cap": _error(lambda: distsgd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net,
                                                                  bucket_cap_mb=0)),
        "no_trainable": _error(
            lambda: distsgd.DistributedOptimizer(torch.optim.SGD(frozen.parameters(), lr=0.1), frozen)
        ),
    }
    return out
