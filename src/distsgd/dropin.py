"""A drop-in for an ordinary torchrun training loop: any registered algorithm, one rank per worker.

    model = MyNet().to(device)
    opt = distsgd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                                       algorithm="signum_mv")
    for x, y in loader:
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()

The wrapper runs the same `Algorithm.step` as the simulation, over the same
torch.distributed communicator (m = 1 worker per rank), with the rank's gradient as the
oracle. How it maps onto the user's objects:

- Parameters: the trainable parameters (requires_grad) become views into one flat float32
  vector x [1, d] and their `.grad` views into one flat gradient, so the algorithm updates
  the model in place and reads the gradient without a copy. Frozen parameters are left
  alone (not sent, not updated), and a parameter that got no gradient in this step
  (unused in the forward) counts as a zero gradient, as DDP with find_unused_parameters.
- The wrapped optimizer is the source of the hyper-parameters: its lr (followed at every
  step, so the user's LR scheduler on it keeps working), momentum, weight_decay and nesterov
  fill the algorithm's options of the same names that the spec leaves unset. The update
  itself is the algorithm's; the wrapped optimizer's `step` is never called.
- Start: rank 0's parameters and buffers are broadcast to every rank at construction,
  as DDP does, so all workers start from one x₀ (as in the simulation).
- Buffers (BatchNorm statistics): "average" all-reduces them after every step, "local"
  leaves each rank its own; the default is the algorithm's (as in `distsgd.simulate`).
- Overlap (AllReduce-SGD, whose step begins with the all-reduce mean of the gradient): as
  DDP does, the gradient is all-reduced during the backward pass, bucket by bucket (the
  parameters in reverse order, a first bucket of 1 MiB and then 25 MiB, DDP's defaults) as
  soon as every gradient of a bucket has been accumulated (`bucket_cap_mb` sets the size),
  and the backward pass ends with the mean over ranks in the flat gradient; `step()` then
  applies the update (the traffic counted as one all-reduce). Several backward passes before a step average each pass's
  gradients, so their sum is still the mean of the ranks' sums. Code between backward and
  step sees (and edits) the mean, as with DDP. Buckets start in bucket order on every rank
  (collectives must be issued in one order). After a backward pass that raised, call
  `zero_grad()`; with reentrant activation checkpointing use `overlap=False` (the nested
  passes would reduce twice). `overlap=False` reduces in `step()` instead.
- `state_dict()` / `load_state_dict()` carry all algorithm state (error-feedback memory,
  PowerSGD's Q, gossip copies, momentum buffers, random generators), so a checkpoint of
  the model plus this resumes bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
from torch import nn

from .algorithms import ALGORITHMS, bind
from .api import make_algorithm
from .comm.base import payload_bytes
from .comm.network import NetworkModel
from .errors import UserError
from .runner import buffer_policy
from .workers import Flat

FROM_OPTIMIZER = ("lr", "momentum", "weight_decay", "nesterov")


def _fill_from_optimizer(spec, optimizer) -> dict | object:
    """A str/dict spec with the optimizer's hyper-parameters for the options it leaves unset."""
    if not isinstance(spec, str | dict):
        return spec
    table = {"name": spec} if isinstance(spec, str) else dict(spec)
    if ":" in str(table.get("name", "")):
        raise UserError(f"algorithm: {table['name']!r}: give options as a table, not 'name:value'")
    if optimizer is None:
        return table
    try:
        names = set(ALGORITHMS.entry(str(table.get("name"))).option_names())
    except ValueError as e:
        raise UserError(f"algorithm: {e}") from None
    group = optimizer.param_groups[0]
    for key in FROM_OPTIMIZER:
        if key in names and key not in table and key in group:
            table[key] = group[key]
    return table


class DistributedOptimizer:
    """Wraps the user's optimizer and model; `step()` runs one step of `algorithm` across ranks."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        model: nn.Module,
        algorithm="allreduce_sgd",
        *,
        seed: int = 0,
        buffers: str | None = None,
        network: NetworkModel | None = None,
        group=None,
        overlap: bool | None = None,
        bucket_cap_mb: float = 25.0,
    ):
        if not dist.is_available() or not dist.is_initialized():
            raise UserError(
                "DistributedOptimizer needs torch.distributed initialized: launch with torchrun and call "
                "torch.distributed.init_process_group first"
            )
        if not isinstance(model, nn.Module):
            raise UserError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None:
            if not isinstance(optimizer, torch.optim.SGD):
                raise UserError(
                    f"DistributedOptimizer applies the algorithm's own update; wrap torch.optim.SGD "
                    f"(its lr, momentum, weight_decay and nesterov are used), not {type(optimizer).__name__}"
                )
            if len(optimizer.param_groups) != 1:
                raise UserError("DistributedOptimizer supports one parameter group (one lr for the whole model)")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError(f"the model {type(model).__name__} has no trainable parameters")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise UserError(f"the model's parameters are on several devices {sorted(map(str, devices))}")
        if any(p.dtype != torch.float32 for p in params):
            raise UserError("DistributedOptimizer trains float32 parameters (use autocast for lower precision)")
        from ._alloc import tune_allocator
        from .comm.torchdist import TorchDistCommunicator

        tune_allocator()  # keep freed step-sized buffers instead of returning them to the OS
        self.optimizer = optimizer
        self.model = model
        self.comm = TorchDistCommunicator(dist.get_world_size(group), network, group)
        self.flat = Flat.from_module(model)
        device = devices.pop()
        # the model's parameters and gradients become views of two flat vectors
        self.x = self.flat.flatten(model).unsqueeze(0).to(device)
        self.grad = torch.zeros_like(self.x)
        self._grad_views = self.flat.unflatten(self.grad[0])  # name -> its view of the flat gradient
        self._params = dict(model.named_parameters())
        with torch.no_grad():
            for name, view in self.flat.unflatten(self.x[0]).items():
                self._params[name].data = view
        self._attach_grads()
        self.algorithm = self._base = bind(
            make_algorithm(_fill_from_optimizer(algorithm, optimizer)), self.comm.n, seed, self.flat.shapes
        )
        if hasattr(self.algorithm, "validate"):
            try:
                self.algorithm.validate(self.comm.n)
            except ValueError as e:
                raise UserError(f"algorithm: {e}") from None
        if getattr(self.algorithm, "attack", None) is not None and getattr(self.algorithm.attack, "on_data", False):
            raise UserError("label flipping acts on the data: flip the labels in the Byzantine ranks' loader")
        self.policy = buffer_policy(self.algorithm, buffers)
        self._initial_lr = self._scaled_at = self._optimizer_lr()
        if self._initial_lr is not None and not self._initial_lr > 0:
            raise UserError(f"the optimizer's lr must be > 0, got {self._initial_lr}")
        can = bool(getattr(self.algorithm, "gradient_all_reduce", False))
        if overlap and not can:
            raise UserError(f"overlap: {self.algorithm.name} does not start its step with an all-reduce of the gradient")
        if not (isinstance(bucket_cap_mb, int | float) and math.isfinite(bucket_cap_mb) and bucket_cap_mb > 0):
            raise UserError(f"bucket_cap_mb must be a positive number of MiB, got {bucket_cap_mb!r}")
        on = (can if overlap is None else overlap) and self.comm.world > 1
        previous = getattr(model, "_distsgd_buckets", None)
        if previous is not None:  # the model was wrapped before: only this wrapper's hooks may act
            previous.remove()
        self.buckets = model._distsgd_buckets = _Buckets(self, int(bucket_cap_mb * 2**20)) if on else None
        # every worker starts from the same x₀ and buffers (rank 0's), as DDP does
        src = 0 if group is None else dist.get_global_rank(group, 0)
        dist.broadcast(self.x, src, group=group)
        for b in model.buffers():
            dist.broadcast(b, src, group=group)
        self.state = self.algorithm.init(self.x, self.comm)
        self.state["x"] = self.x

    # -- the user's loop ---------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient (the parameters' .grad stay views of it)."""
        if self.buckets is not None:
            self.buckets.reset()
        self.grad.zero_()
        self._attach_grads()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        loss = None
        if closure is not None:  # as torch.optim: the closure's forward and backward need autograd
            with torch.enable_grad():
                loss = closure()
        comm = self.comm
        if self.buckets is not None and self.buckets.reduced:  # averaged during the backward pass
            self.buckets.reduced = False
            comm = _Reduced(self.comm)
        g = self._gradient()  # .grad replaced after backward (masked, clipped) is what counts
        calls = 0

        def oracle(x: torch.Tensor, rows=None) -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls > 1 or rows is not None:
                raise UserError(
                    f"{self.algorithm.name} needs more than one gradient per step: it cannot run as a drop-in"
                )
            self.comm.compute()
            if comm is not self.comm:  # the all-reduce mean the step asks for has been taken; the
                comm.mean = g  # step uses the gradient only through it, so no copy is needed
                return g
            return g.clone()  # the algorithm may keep it (D²'s g_prev); the buffer is reused

        state = self._current().step(self.state, oracle, comm)
        if state["x"] is not self.x:  # the new parameters go into the model's flat storage
            for k, v in state.items():
                if v is self.x:  # e.g. D²'s x_prev: keep the old parameters it refers to
                    state[k] = v.clone()
            self.x.copy_(state["x"])
            state["x"] = self.x
        self.state = state
        if self.policy == "average":
            self._average_buffers()
        if self.optimizer is not None:  # a scheduler on it checks that a step happened first
            self.optimizer._opt_called = True
        return loss

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "algorithm": self._base.name,
            "world": self.comm.n,
            "rank": self.comm.rank,
            "d": self.flat.d,
            "state": {k: v for k, v in self.state.items() if k != "x"},
            "comm": self.comm.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "initial_lr": self._initial_lr,
        }

    def load_state_dict(self, sd: dict) -> None:
        expect = (self._base.name, self.comm.n, self.comm.rank, self.flat.d)
        got = (sd.get("algorithm"), sd.get("world"), sd.get("rank"), sd.get("d"))
        if got != expect:
            raise UserError(
                f"this DistributedOptimizer state is for (algorithm, world, rank, parameters) = {got}, "
                f"not {expect}"
            )
        device = self.x.device
        state = {k: _to(v, device) for k, v in sd["state"].items()}
        state["x"] = self.x  # the parameters come from the model's own state_dict
        self.state = state
        self.comm.load_state_dict(sd["comm"])
        if self.optimizer is not None and sd.get("optimizer") is not None:
            self.optimizer.load_state_dict(sd["optimizer"])
        self._initial_lr = sd.get("initial_lr", self._initial_lr)

    # -- pieces --------------------------------------------------------------------------------
    @property
    def param_groups(self):
        return self.optimizer.param_groups if self.optimizer is not None else []

    def _optimizer_lr(self) -> float | None:
        return self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None

    def _current(self):
        """The algorithm with its lr scaled as the wrapped optimizer's lr has moved since the
        wrapper was made (an LR scheduler on the optimizer): lr · lr_opt(t) / lr_opt(0)."""
        lr = self._optimizer_lr()
        if lr is not None and hasattr(self._base, "lr") and lr != self._scaled_at:
            self._scaled_at = lr
            factor = lr / self._initial_lr
            self.algorithm = self._base if factor == 1 else dataclasses.replace(self._base, lr=self._base.lr * factor)
        return self.algorithm

    def _attach_grads(self) -> None:
        for name, view in self._grad_views.items():
            p = self._params[name]
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view

    def _gather_grads(self, names) -> None:
        """Bring these parameters' .grad into the flat gradient: a replaced tensor (e.g. after
        model.zero_grad(set_to_none=True)) is copied in and the view attached again; None
        counts as zero (and stays None until `_attach_grads`)."""
        for name in names:
            p, view = self._params[name], self._grad_views[name]
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
                p.grad = view

    def _gradient(self) -> torch.Tensor:
        """This rank's gradient [1, d], the flat buffer with every .grad gathered into it."""
        self._gather_grads(self._grad_views)
        self._attach_grads()
        return self.grad

    def _average_buffers(self) -> None:
        bufs = [b for b in self.model.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.reshape(-1).float() for b in bufs]).unsqueeze(0)
        mean = self.comm.all_reduce_mean(flat)[0]
        off = 0
        for b in bufs:
            b.copy_(mean[off : off + b.numel()].view_as(b))
            off += b.numel()


class _Buckets:
    """DDP's overlap of the gradient all-reduce with the backward pass, on the flat gradient:
    buckets are contiguous ranges of it (the parameters in reverse order, 1 MiB for the
    first bucket, then `cap` bytes: DDP's bucket_cap_mb); a post-accumulate-grad hook counts
    each bucket's gradients, and buckets start their all-reduce (sum, asynchronous) in
    bucket order once all their gradients are in; a callback at the end of the backward pass
    starts the rest (a parameter that got no gradient counts as zero, or what it held),
    waits for all and divides by the number of ranks."""

    FIRST = 1 << 20  # bytes, DDP's first bucket

    def __init__(self, opt: DistributedOptimizer, cap: int):
        self.opt = opt
        self.reduced = False
        flat = opt.flat
        order = sorted(range(len(flat.names)), key=lambda k: flat.offsets[k], reverse=True)
        self.bounds: list[tuple[int, int]] = []  # (lo, hi) of each bucket in the flat vector
        self.members: list[list[str]] = []
        self.bucket_of: dict[str, int] = {}
        limit, lo, hi, names = min(self.FIRST, cap), None, None, []
        for k in order:
            name, off = flat.names[k], flat.offsets[k]
            size = math.prod(flat.shapes[k])
            hi = off + size if hi is None else hi
            lo = off
            names.append(name)
            if (hi - lo) * 4 >= limit:
                self._close(lo, hi, names)
                limit, hi, names = cap, None, []
        if names:
            self._close(lo, hi, names)
        self._fresh()
        self.handles = [opt._params[n].register_post_accumulate_grad_hook(self._ready) for n in flat.names]
        self.name_of = {id(opt._params[n]): n for n in flat.names}

    def remove(self) -> None:
        """Take the hooks off the parameters (a new wrapper of the same model)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def reset(self) -> None:
        """A new accumulation starts: finish what a backward pass that did not complete (an
        exception in it) left in flight, and count every bucket's gradients afresh."""
        for w in self.works.values():
            w.wait()
        self._fresh()
        self.reduced = False

    def _close(self, lo: int, hi: int, names: list[str]) -> None:
        for n in names:
            self.bucket_of[n] = len(self.bounds)
        self.bounds.append((lo, hi))
        self.members.append(list(names))

    def _ready(self, p: torch.Tensor) -> None:
        name = self.name_of[id(p)]
        self.opt._gather_grads((name,))  # the user may have cleared .grad before this pass
        if not self.queued:  # the pass's first gradient: finish the pass when autograd is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self.queued = True
        self.pending[self.bucket_of[name]] -= 1
        # in bucket order, as DDP: every rank must issue its collectives in the same order,
        # and the order in which buckets fill may differ between ranks (data-dependent graphs)
        while self.next < len(self.bounds) and self.pending[self.next] == 0:
            self._start(self.next)
            self.next += 1

    def _start(self, b: int) -> None:
        lo, hi = self.bounds[b]
        self.works[b] = dist.all_reduce(self.opt.grad[0, lo:hi], op=dist.ReduceOp.SUM, group=self.opt.comm.group,
                                        async_op=True)

    def _finish(self) -> None:
        opt = self.opt
        with torch.no_grad():
            for b in range(self.next, len(self.bounds)):  # not started: a parameter got no gradient
                if self.pending[b]:
                    opt._gather_grads(self.members[b])
                self._start(b)
            for w in self.works.values():
                w.wait()
            opt.grad.div_(opt.comm.n)
        opt.comm._wire_all_reduce(opt.grad[0])  # every pass moves the whole gradient
        self._fresh()
        self.reduced = True

    def _fresh(self) -> None:
        self.works = {}
        self.pending = [len(m) for m in self.members]
        self.next = 0  # the next bucket to start
        self.queued = False


class _Reduced:
    """The communicator for a step whose gradient was all-reduced during the backward pass:
    `all_reduce_mean` of that gradient (`mean`) returns it and counts the algorithm's one
    all-reduce as the communicator would have (the bytes on the wire were counted by each
    backward pass: k passes before a step move k gradients); everything else goes to the
    communicator."""

    def __init__(self, comm):
        self._comm = comm
        self.mean = None

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.mean:
            return self._comm.all_reduce_mean(x)
        self.mean = None
        self._comm._record_all_reduce(payload_bytes(x))  # the wire was counted per backward pass
        return x

    def __getattr__(self, name):
        return getattr(self._comm, name)


def _to(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device) if v.dtype != torch.uint8 or v.device.type != "cpu" else v  # generator states stay on CPU
    if isinstance(v, dict):
        return {k: _to(x, device) for k, x in v.items()}
    if isinstance(v, list):
        return [_to(x, device) for x in v]
    return v
