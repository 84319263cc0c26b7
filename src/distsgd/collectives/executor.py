"""Run any collective schedule for real over torch.distributed point-to-point operations.

`ScheduleRunner(schedule)(tensor)` runs the schedule in place on a whole vector (an
all-reduce sums it; see `schedules` for what each collective leaves where);
`reduce_scatter`, `all_gather` and `broadcast` take the arguments of
`dist.reduce_scatter_tensor`, `dist.all_gather_into_tensor` and `dist.broadcast`.

Each rank walks the schedule in step order; in a step it posts every send it owes
(reading its buffer as it was before the step) and every receive it expects, waits for
them, then adds (`reduce`) or writes (`copy`) what arrived. Works with gloo on CPU and
NCCL on GPU; tags are message indices so any two messages stay apart.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .schedules import REDUCE, Schedule


class ScheduleRunner:
    """Precomputes this rank's sends and receives per step for a schedule."""

    def __init__(self, schedule: Schedule, rank: int | None = None, group=None):
        self.schedule = schedule
        self.group = group
        self.rank = dist.get_rank(group) if rank is None else rank
        if dist.get_world_size(group) != schedule.n:
            raise ValueError(
                f"schedule is for {schedule.n} ranks, the group has {dist.get_world_size(group)}"
            )
        steps: dict[int, tuple[list, list]] = {}
        for k, m in enumerate(schedule.messages):
            if m.src == self.rank:
                steps.setdefault(m.step, ([], []))[0].append((k, m))
            if m.dst == self.rank:
                steps.setdefault(m.step, ([], []))[1].append((k, m))
        self.steps = [steps[s] for s in sorted(steps)]
        self._bounds: dict[int, list[int]] = {}

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all ranks in place (the flat view must be contiguous)."""
        flat = tensor.view(-1)
        bounds = self._bounds.get(flat.numel())
        if bounds is None:
            bounds = self.schedule.chunk_bounds(flat.numel()).tolist()
            self._bounds[flat.numel()] = bounds
        for sends, recvs in self.steps:
            reqs = []
            for k, m in sends:
                payload = flat[bounds[m.lo] : bounds[m.hi]].clone()
                reqs.append(dist.isend(payload, m.dst, group=self.group, tag=k))
            incoming = []
            for k, m in recvs:
                buf = torch.empty(bounds[m.hi] - bounds[m.lo], dtype=flat.dtype, device=flat.device)
                reqs.append(dist.irecv(buf, m.src, group=self.group, tag=k))
                incoming.append((m, buf))
            for r in reqs:
                r.wait()
            for m, buf in incoming:
                seg = flat[bounds[m.lo] : bounds[m.hi]]
                if m.op == REDUCE:
                    seg.add_(buf)
                else:
                    seg.copy_(buf)
        return tensor

    def _expect(self, collective: str) -> None:
        if self.schedule.collective != collective:
            raise ValueError(f"this runner's schedule is a {self.schedule.collective}, not a {collective}")

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        """output [m] = this rank's block of the sum of every rank's input [n·m], like
        dist.reduce_scatter_tensor(output, input) with SUM; input is left unchanged."""
        self._expect("reduce_scatter")
        n, m = self.schedule.n, output.numel()
        if input.numel() != n * m:
            raise ValueError(f"input has {input.numel()} elements, not world size × output = {n * m}")
        work = input.reshape(-1).clone()
        self(work)
        output.view(-1).copy_(work[self.rank * m : (self.rank + 1) * m])
        return output

    def all_gather(self, output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        """output [n·m] = every rank's input [m] in rank order, like
        dist.all_gather_into_tensor(output, input)."""
        self._expect("allgather")
        n, m = self.schedule.n, input.numel()
        if output.numel() != n * m:
            raise ValueError(f"output has {output.numel()} elements, not world size × input = {n * m}")
        flat = output.view(-1)
        flat[self.rank * m : (self.rank + 1) * m].copy_(input.reshape(-1))
        self(flat)
        return output

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor becomes the root's (the schedule's root), like
        dist.broadcast(tensor, root)."""
        self._expect("broadcast")
        return self(tensor)
