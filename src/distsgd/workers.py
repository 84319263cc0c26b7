"""Stacked workers: one flat parameter row per worker, per-worker gradients in one call.

`Flat` maps a module's parameters to offsets in a flat float32 vector, so the m local
workers' parameters are one tensor x[m, d] and each layer is a view into its row.
`Workers` draws every worker's next mini-batch from its own shard and returns all m
stochastic gradients with one `torch.func.vmap(grad_and_value(loss))` over
`functional_call`, the vectorized replacement for m separate models.

Sampling is random reshuffling per worker: each worker walks a fresh permutation of its
own shard, B samples a step, and moves to a new permutation (dropping the remainder) when
fewer than B are left, so every sample is seen at most once per local epoch. Worker i's permutations draw
from its own generator, seeded from (seed, i): a process holding any slice of the
workers draws exactly the batches the one-process simulation draws for them.

The batch size may change from call to call (`gradients(x, batch_size=B)`, for methods that
grow their batch such as DiveBatch): a worker's stream is a position in its sequence of
permutations, and a draw of B takes the next B samples of the current permutation; if fewer
than B are left in it, the rest of that local epoch is dropped and the draw starts the next
permutation. The sequence of permutations itself never depends on B, so worker i's draws
depend only on (seed, i) and the batch sizes asked of it. `indices=` bypasses the stream,
and `per_sample=True` returns every sample's own gradient (a vmap over the samples nested in
the vmap over the workers), e.g. for gradient diversity or per-sample clipping.

`per_sample=True, max_grad_norm=C` returns what DP-SGD needs of them, the clipped sums
Σ_j min(1, C/(‖g_ij‖ + 1e-6))·g_ij [m, d], and for models whose trainable layers are all
nn.Linear or nn.Conv1d (`GhostClip`) computes them without materializing a per-sample
gradient: ghost norms (Li, Tramèr, Liang, Hashimoto, "Large language models can be strong
differentially private learners", ICLR 2022, §4) and book-keeping (Bu, Wang, Zha, Karypis,
"Differentially private optimization on large model at small cost", ICML 2023), from one
forward and one backward of the batch; other models take the vmap path, with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ._alloc import tune_allocator
from .privacy.mechanisms import CLIP_EPS, check_max_grad_norm
from .tasks.task import Task


@dataclass(frozen=True)
class Flat:
    """Names, shapes and offsets of a module's parameters in one flat vector of length d."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    d: int

    @classmethod
    def from_module(cls, module: nn.Module) -> Flat:
        """The trainable parameters (requires_grad); frozen ones stay constants, as DDP leaves them."""
        names, shapes, offsets, off = [], [], [], 0
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            names.append(name)
            shapes.append(p.shape)
            offsets.append(off)
            off += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), off)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        params = dict(module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).float()

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of one flat row x[d] shaped as the module's parameters."""
        return {
            name: x[off : off + shape.numel()].view(shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def layer(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The view of layer `name` in a stacked x[m, d]: [m, *shape]."""
        k = self.names.index(name)
        off, shape = self.offsets[k], self.shapes[k]
        return x[:, off : off + shape.numel()].view(x.shape[0], *shape)


REFILL_BATCHES = 16


def not_vmappable(model: nn.Module, err: Exception, sample: torch.Tensor) -> Exception:
    """One clear error for a model the stacked engine cannot vmap, naming the innermost
    submodule that was running when it failed (found by re-running one sample under hooks)."""
    from .errors import UserError

    running: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_pre_hook(lambda mod, _a: running.append(names.get(id(mod), "?")))
        for m in model.modules()
    ] + [m.register_forward_hook(lambda mod, _a, _o: running.pop()) for m in model.modules()]
    try:
        from torch.func import functional_call, vmap

        params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}
        buffers = {n: b.detach().unsqueeze(0).clone() for n, b in model.named_buffers()}
        vmap(lambda p, b, x: functional_call(model, (p, b), (x,)))(params, buffers, sample.unsqueeze(0))
    except Exception:
        pass
    finally:
        for h in hooks:
            h.remove()
    where = f" in submodule {running[-1]!r} ({type(model.get_submodule(running[-1])).__name__})" if running and running[-1] else ""
    first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
    return UserError(
        f"the model {type(model).__name__} cannot run in the stacked simulation (torch.func.vmap){where}: "
        f"{first}. Data-dependent control flow (if/loops on tensor values), .item() and in-place "
        "updates of captured tensors are not vmappable; rewrite them with torch.where, or run "
        "distsgd.DistributedOptimizer under torchrun instead"
    )


def _worker_seed(seed: int, worker: int) -> int:
    from .rng import stream_seed

    return stream_seed(seed, worker, "sampling")


def refill_epochs(size: int, batch_size: int) -> int:
    """Local epochs drawn at a time: REFILL_BATCHES batches' worth, so the per-worker Python
    work happens once every few epochs rather than every epoch."""
    per_epoch = size // batch_size
    return (REFILL_BATCHES + per_epoch - 1) // per_epoch


def draw_permutations(shard: torch.Tensor, epochs: int, generator: torch.Generator) -> torch.Tensor:
    """`epochs` fresh permutations of a worker's shard [epochs, len(shard)]: its next local epochs."""
    keys = torch.rand(epochs, len(shard), generator=generator)
    return shard[keys.argsort(dim=1)]


class WorkerBatchSampler(torch.utils.data.Sampler):
    """The batches worker `worker` draws in the simulation, for a DataLoader under torchrun:

        loader = DataLoader(train_set, batch_sampler=WorkerBatchSampler(shards[rank], 32, seed=0, worker=rank))

    Random reshuffling of its shard every local epoch (the remainder dropped), from the same
    (seed, worker) generator as `Workers`, so a drop-in run sees the simulated worker's exact
    batches. Endless unless `steps` is given."""

    def __init__(self, shard, batch_size: int, *, seed: int = 0, worker: int = 0, steps: int | None = None):
        self.shard = torch.as_tensor(shard, dtype=torch.long)
        if batch_size < 1 or len(self.shard) < batch_size:
            raise ValueError(f"a shard of {len(self.shard)} samples cannot give batches of {batch_size}")
        self.batch_size, self.seed, self.worker, self.steps = batch_size, seed, worker, steps

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless WorkerBatchSampler has no length (pass steps=)")
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(_worker_seed(self.seed, self.worker))
        b, per_epoch = self.batch_size, len(self.shard) // self.batch_size
        epochs = refill_epochs(len(self.shard), b)
        done = 0
        while self.steps is None or done < self.steps:
            perm = draw_permutations(self.shard, epochs, g)
            for e in range(epochs):
                for k in range(per_epoch):
                    if self.steps is not None and done >= self.steps:
                        return
                    yield perm[e, k * b : (k + 1) * b].tolist()
                    done += 1


GHOST_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity, nn.Flatten)


class GhostClip:
    """Clipped per-sample gradient sums of m stacked workers without per-sample gradients.

    For a layer y = W a (+ b) applied to sample j, the per-sample gradient is
    ∇_W ℓ_j = Σ_t g_jt a_jtᵀ with a_jt the layer's input and
    g_jt = ∂ℓ_j/∂y_jt its output gradient (t: positions of a sequence, the output positions of
    a Conv1d with a its unfolded patches, one position for a plain Linear). Because the
    samples do not interact, one backward of Σ_j ℓ_j gives every g_j, and (Li et al. 2022):

        ‖∇_W ℓ_j‖² = ‖a_j‖²‖g_j‖²   (one position),   Σ_{t,s} (a_jt·a_js)(g_jt·g_js)   (T positions,
        or ‖Σ_t g_jt a_jtᵀ‖² formed directly when T² > rows·cols),   ‖∇_b ℓ_j‖² = ‖Σ_t g_jt‖²;

    then with c_j = mask_j·min(1, C/(‖∇ℓ_j‖ + 1e-6)) the clipped sum is Σ_j c_j ∇ℓ_j =
    Σ_j c_j Σ_t g_jt a_jtᵀ, one contraction per layer of the stored a and g (book-keeping,
    Bu et al. 2023: no second backward). The activations a and output gradients g come from
    forward hooks that record each layer's input and add a zero probe to its output, the
    probes being what the backward differentiates, inside the vmap over the workers.

    Covered: models whose trainable parameters all belong to nn.Linear or nn.Conv1d layers
    (groups 1, zero or no padding), each called once per forward, with no buffers, whose
    forward treats the samples of a batch independently (checked once on the first batch:
    the batched output equals the per-sample one). Anything else: `supported` is False and the
    engine takes the vmap path."""

    def __init__(self, model: nn.Module, flat: Flat, frozen: dict, loss):
        self.model, self.flat, self.frozen, self.loss = model, flat, frozen, loss
        self.layers: dict[str, nn.Module] = {}  # module name -> module
        self.params: dict[str, tuple[str, str]] = {}  # flat name -> (module name, "weight" | "bias")
        self.supported = self._cover()
        self.known: dict = {}  # batch shape -> the covered layers' output shapes (None: not covered)
        self._grad = vmap(grad_and_value(self._probe_loss, has_aux=True))

    def _cover(self) -> bool:
        if any(True for _ in self.model.buffers()):
            return False
        owners = {}
        for mname, mod in self.model.named_modules():
            for pname, _ in mod.named_parameters(recurse=False):
                owners[f"{mname}.{pname}" if mname else pname] = (mname, mod, pname)
        for name in self.flat.names:
            mname, mod, pname = owners[name]
            if type(mod) is nn.Conv1d:
                if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    return False
            elif type(mod) is not nn.Linear:
                return False
            self.layers[mname] = mod
            self.params[name] = (mname, pname)
        # every other module with parameters must hold only frozen ones (constants)
        return bool(self.layers)

    def _probe_loss(self, probes, params, xb, yb):
        """Σ_j ℓ_j with a zero probe added to every covered layer's output; aux: the layers'
        inputs and the per-sample losses."""
        acts = {}
        handles = []
        for mname, mod in self.layers.items():
            def hook(_m, args, out, mname=mname):
                acts[mname] = args[0]
                return out + probes[mname]

            handles.append(mod.register_forward_hook(hook))
        try:
            out = functional_call(self.model, (params, self.frozen), (xb,))
        finally:
            for h in handles:
                h.remove()
        losses = vmap(lambda o, t: self.loss(o.unsqueeze(0), t.unsqueeze(0)))(out, yb)
        return losses.sum(), (acts, losses)

    def _shapes(self, params0: dict, xb0: torch.Tensor) -> dict | None:
        """Each covered layer's output shape for worker 0's batch xb0 (None: a layer is not
        called exactly once, or the batch is not its leading dimension, or samples interact),
        found once per batch shape."""
        key = tuple(xb0.shape[1:])  # per sample: the shapes, the checks, do not depend on the batch size
        if key not in self.known:
            self.known[key] = self._discover(params0, xb0)
        per = self.known[key]
        return None if per is None else {n: (xb0.shape[0], *shape) for n, shape in per.items()}

    def _discover(self, params0: dict, xb0: torch.Tensor) -> dict | None:
        shapes: dict[str, list] = {m: [] for m in self.layers}
        handles = [mod.register_forward_hook(lambda _m, a, o, n=n: shapes[n].append((a[0].shape, o.shape)))
                   for n, mod in self.layers.items()]
        try:
            with torch.no_grad():
                out = functional_call(self.model, (params0, self.frozen), (xb0,))
        finally:
            for h in handles:
                h.remove()
        b = xb0.shape[0]
        if any(len(v) != 1 or v[0][0][0] != b or v[0][1][0] != b for v in shapes.values()):
            return None
        with torch.no_grad():  # the forward must not mix samples: batched == one at a time
            one = torch.cat([functional_call(self.model, (params0, self.frozen), (xb0[j : j + 1],)) for j in range(min(b, 2))])
        if one.shape != out[: len(one)].shape or not torch.allclose(one, out[: len(one)], rtol=1e-4, atol=1e-5):
            return None
        return {n: tuple(v[0][1][1:]) for n, v in shapes.items()}

    @staticmethod
    def _positions(mod: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [m, B, T, p] contiguous, G [m, B, q, T]): the layer's inputs at each of its T
        output positions (a Conv1d's receptive fields, as strided views of the padded input:
        no im2col) and its output gradients, in the conv's own [q, T] layout."""
        m, b = a.shape[:2]
        if isinstance(mod, nn.Conv1d):
            (k,), (stride,), (dil,), (pad,) = mod.kernel_size, mod.stride, mod.dilation, mod.padding
            if pad:
                a = torch.nn.functional.pad(a, (pad, pad))
            win = a.unfold(-1, dil * (k - 1) + 1, stride)  # [m, B, cin, T, span]: position t reads t·stride + j·dil
            if dil > 1:
                win = win[..., ::dil]
            t = win.shape[3]
            return win.permute(0, 1, 3, 2, 4).reshape(m, b, t, -1), g.reshape(m, b, g.shape[-2], t)
        return a.reshape(m, b, -1, a.shape[-1]).contiguous(), g.reshape(m, b, -1, g.shape[-1]).transpose(2, 3)

    def clipped_sums(self, layers: dict, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float, mask: torch.Tensor | None):
        """(Σ_j c_j ∇ℓ_ij [m, d], per-sample norms ‖∇ℓ_ij‖ [m, B], per-sample losses [m, B]),
        or None when this batch is not covered (the caller takes the vmap path)."""
        m, b = xb.shape[:2]
        shapes = self._shapes({n: t[0] for n, t in layers.items()}, xb[0])
        if shapes is None:
            return None
        probes = {n: torch.zeros(m, *shape, dtype=xb.dtype if xb.is_floating_point() else torch.float32) for n, shape in shapes.items()}
        grads, (_, (acts, losses)) = self._grad(probes, layers, xb, yb)
        sq = torch.zeros(m, b, dtype=torch.float32)
        pos = {}
        for mname, mod in self.layers.items():
            a, g = self._positions(mod, acts[mname].detach(), grads[mname])  # A [m, B, T, p], G [m, B, q, T]
            pos[mname] = (a, g)
            for owner, pname in self.params.values():
                if owner != mname:
                    continue
                if pname == "bias":
                    sq += g.sum(3).square().sum(-1)
                elif a.shape[2] == 1:  # one position: ‖a‖²‖g‖²
                    sq += a.square().sum((2, 3)) * g.square().sum((2, 3))
                elif a.shape[2] ** 2 <= a.shape[3] * g.shape[2]:  # ghost norm: Gram matrices of the positions
                    sq += ((a @ a.transpose(2, 3)) * (g.transpose(2, 3) @ g)).sum((2, 3))
                else:  # the per-sample gradient of this layer [q, p] is the smaller object
                    sq += (g @ a).square().sum((2, 3))
        norms = sq.clamp(min=0).sqrt()
        c = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        if mask is not None:
            c = c * mask.to(c.dtype)
        out = []
        for name in self.flat.names:
            mname, pname = self.params[name]
            a, g = pos[mname]
            if pname == "bias":  # Σ_j c_j Σ_t g_jt
                out.append((c.unsqueeze(1) @ g.sum(3)).reshape(m, -1))
            else:  # Σ_j c_j Σ_t g_jt a_jtᵀ: one [q, B·T] @ [B·T, p] product per worker
                q, t = g.shape[2], g.shape[3]
                gc = torch.empty(m, q, b, t, dtype=g.dtype)
                torch.mul(g.transpose(1, 2), c.view(m, 1, b, 1), out=gc)
                out.append((gc.reshape(m, q, b * t) @ a.reshape(m, b * t, -1)).reshape(m, -1))
        return torch.cat(out, dim=1), norms, losses


class Workers:
    """The m workers [start, start + m) of a task: batches, gradients and evaluation.

    `samples_drawn[i]` (int64 [m]) counts the training samples local worker i has computed
    gradients on (its stream's draws and the columns of `indices=`): the true epochs of a
    run whose batch size varies are `samples_drawn.sum()` over all workers / len(train).
    """

    clips_sums = True  # gradients(per_sample=True, max_grad_norm=C) returns clipped sums (dp_sgd asks for them)

    def __init__(
        self, task: Task, seed: int = 0, start: int = 0, m: int | None = None, compile: bool = False
    ):
        tune_allocator()
        self.task = task
        self.start = start
        self.m = task.n - start if m is None else m
        self.batch_size = task.batch_size
        self.flat = Flat.from_module(task.model)
        self.model = task.model
        ids = range(start, start + self.m)
        self.shards = [task.shards[i] for i in ids]
        flip = [i - start for i in task.label_flip if start <= i < start + self.m]
        self._flip = torch.tensor(flip, dtype=torch.long) if flip else None
        self.generators = [torch.Generator().manual_seed(_worker_seed(seed, i)) for i in ids]
        b = self.batch_size
        self.sizes = torch.tensor([len(s) for s in self.shards])
        # permutations drawn per refill: fixed here from the task's batch size, whatever
        # batch sizes are asked for later, so the sequence of permutations never depends on them
        self.epochs = torch.tensor([refill_epochs(len(s), b) for s in self.shards])
        self.lengths = self.epochs * self.sizes  # samples in a worker's buffer of permutations
        self.base = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)[:-1]])
        self.perm = torch.empty(int(self.lengths.sum()), dtype=torch.long)
        # each worker's position in its buffer, in samples; at the end: the first draw fills every buffer
        self.cursor = self.lengths.clone()
        self.samples_drawn = torch.zeros(self.m, dtype=torch.long)
        self._arange = torch.arange(self.batch_size)
        loss = task.loss
        # labels not known up front (a Dataset without .targets): check each batch as drawn
        self._classes = task.num_classes if task.kind == "multiclass" and task.train.labels() is None else None
        trainable = set(self.flat.names)
        self.frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in trainable}
        # buffers (BatchNorm statistics) per worker [m, ...]: updated in place by the forward
        self.buffers = {n: b.detach().unsqueeze(0).repeat(self.m, *[1] * b.dim()) for n, b in self.model.named_buffers()}
        frozen = self.frozen

        def sample_loss(params, buffers, xb, yb):
            return loss(functional_call(self.model, (params, buffers, frozen), (xb,)), yb)

        def own_loss(params, buffers, xi, yi):  # one sample's loss: the loss of a batch of one
            return sample_loss(params, buffers, xi.unsqueeze(0), yi.unsqueeze(0))

        # Differentiate per layer, not through slices of the flat row: the backward of a
        # slice writes a zero-filled [d] gradient per layer, which costs more than the model.
        self._grad = vmap(grad_and_value(sample_loss))
        if compile:  # inductor fuses the batched kernels: ~1.4x faster, ~25 s to compile
            self._grad = torch.compile(self._grad, dynamic=False)
        # per-sample: a vmap over one worker's samples (its parameters shared) inside the vmap over workers
        self._per_sample_grad = vmap(vmap(grad_and_value(own_loss), in_dims=(None, None, 0, 0)))
        # clipped per-sample sums without per-sample gradients (Linear / Conv1d models); False: always the vmap path
        self.ghost = GhostClip(self.model, self.flat, frozen, loss)
        self.ghost_clipping = self.ghost.supported

    @property
    def d(self) -> int:
        return self.flat.d

    def x0(self) -> torch.Tensor:
        """The common initial parameters, one row per local worker [m, d]."""
        return self.flat.flatten(self.model).unsqueeze(0).repeat(self.m, 1)

    def next_batch(self, rows: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        """Indices [m, B] of every local worker's next mini-batch, or [len(rows), B] of the
        local workers `rows` only (asynchronous algorithms): each worker's sequence of
        batches is the same either way. B is `batch_size`, by default the task's.

        A draw takes the next B samples of the worker's current permutation of its shard; when
        fewer than B are left in it, the rest is dropped and the draw starts the next one."""
        from .errors import UserError

        b = self.batch_size if batch_size is None else int(batch_size)
        sizes = self.sizes if rows is None else self.sizes[rows]
        if batch_size is not None and not 1 <= b <= int(sizes.min()):
            smallest = int(sizes.argmin()) if rows is None else int(rows[sizes.argmin()])
            raise UserError(
                f"batch_size={b} does not fit: worker {self.start + smallest} holds {int(sizes.min())} "
                f"training samples (a batch is 1 to that many)"
            )
        cursor = self.cursor if rows is None else self.cursor[rows]
        lengths = self.lengths if rows is None else self.lengths[rows]
        off = cursor % sizes
        first = torch.where(off + b > sizes, cursor - off + sizes, cursor)  # too few left: next permutation
        empty = first >= lengths  # the buffer is used up: draw the next permutations
        if bool(empty.any()):
            local = torch.nonzero(empty).flatten()
            for j, i in zip(local.tolist(), (local if rows is None else rows[local]).tolist(), strict=True):
                size, epochs, lo = int(self.sizes[i]), int(self.epochs[i]), int(self.base[i])
                self.perm[lo : lo + epochs * size] = draw_permutations(self.shards[i], epochs, self.generators[i]).reshape(-1)
                first[j] = 0
        arange = self._arange if b == self.batch_size else torch.arange(b)
        base = self.base if rows is None else self.base[rows]
        if rows is None:
            self.cursor = first + b
            self.samples_drawn += b
        else:
            self.cursor[rows] = first + b
            self.samples_drawn[rows] += b
        return self.perm[(base + first).unsqueeze(1) + arange]

    def _check_indices(self, indices, k: int) -> torch.Tensor:
        from .errors import UserError

        idx = torch.as_tensor(indices)
        if idx.dtype != torch.long:
            raise UserError(f"indices must be a LongTensor [workers, B] of dataset indices, got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.shape[0] != k or idx.shape[1] < 1:
            raise UserError(f"indices must be [{k}, B] (one row per worker asked, B >= 1), got {list(idx.shape)}")
        size = len(self.task.train)
        if int(idx.min()) < 0 or int(idx.max()) >= size:
            raise UserError(f"indices must lie in [0, {size}) (the training set), got {int(idx.min())}..{int(idx.max())}")
        return idx

    def gradients(
        self,
        x: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        indices: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        count: bool = True,
        per_sample: bool = False,
        max_grad_norm: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One stochastic gradient per worker at its own row of x[m, d]: (g[m, d], loss[m]).
        With `rows` (local indices), x holds those workers' rows only and only they draw.
        Each worker's buffers (BatchNorm statistics) advance with its own batch.

        batch_size=B: each worker draws its next B samples (default: the task's batch size).
        indices=idx [m', B]: the dataset indices to use instead of drawing (the streams do
        not move). mask [m', B] (bool): which of them are real samples, the rest padding (a
        Poisson batch padded to the longest): `samples_drawn` counts the real ones and the
        returned loss averages over them. count=False: the samples are not counted again
        (the same batch evaluated at a second point, as DIFF2's gradient differences do).
        per_sample=True: g is [m', B, d], row j of worker i the gradient of sample j's own
        loss (a batch of one); loss[m'] stays the mean loss of the batch. Per-sample gradients
        need a model whose forward leaves its buffers alone (no BatchNorm in training mode).
        per_sample=True, max_grad_norm=C: g is the clipped sum [m', d] of the per-sample
        gradients, Σ_j mask_ij·min(1, C/(‖g_ij‖ + 1e-6))·g_ij (C = inf: their plain sum), by
        `GhostClip` where the model is covered (`ghost_clipping`), else by the vmap path.
        """
        from .errors import UserError

        k = x.shape[0]
        if indices is not None:
            if batch_size is not None:
                raise UserError("give batch_size or indices, not both")
            idx = self._check_indices(indices, k)
            if mask is not None and tuple(mask.shape) != tuple(idx.shape):
                raise UserError(f"mask has shape {tuple(mask.shape)}, indices {tuple(idx.shape)}")
            if count:
                used = mask.sum(1).long() if mask is not None else torch.full((k,), idx.shape[1], dtype=torch.long)
                if rows is None:
                    self.samples_drawn += used
                else:
                    self.samples_drawn[rows] += used
        else:
            idx = self.next_batch(rows, batch_size)
        xb, y = self.task.train.batch(idx)
        if self._classes is not None:
            from .tasks.user import check_labels

            check_labels(y.reshape(-1), self._classes, "training")
        if self._flip is not None:
            flip = self._flip if rows is None else torch.nonzero(torch.isin(rows, self._flip)).flatten()
            y[flip] = self.task.flipped(y[flip])
        layers = {name: self.flat.layer(x, name) for name in self.flat.names}
        buffers = self.buffers if rows is None else {n: b[rows] for n, b in self.buffers.items()}
        if per_sample and max_grad_norm is not None:
            sums, _, loss = self.clipped_sums(layers, buffers, xb, y, max_grad_norm, mask)
            if mask is not None:
                real = mask.to(loss.dtype)
                return sums, (loss * real).sum(1) / real.sum(1).clamp(min=1)
            return sums, loss.mean(1)
        if per_sample:
            try:
                grads, loss = self._per_sample_grad(layers, buffers, xb, y)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                if buffers:
                    raise UserError(
                        f"per-sample gradients need a model whose forward leaves its buffers alone "
                        f"({', '.join(buffers)}): BatchNorm in training mode mixes the samples of a batch; "
                        "use GroupNorm or LayerNorm"
                    ) from None
                raise not_vmappable(self.model, e, xb[0, 0]) from None
            b = idx.shape[1]
            g = torch.cat([grads[name].reshape(k, b, -1) for name in self.flat.names], dim=2)
            if mask is not None:
                real = mask.to(loss.dtype)
                return g, (loss * real).sum(1) / real.sum(1).clamp(min=1)
            return g, loss.mean(1)
        try:
            grads, loss = self._grad(layers, buffers, xb, y)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
            raise not_vmappable(self.model, e, xb[0]) from None
        if rows is not None:
            for n, b in buffers.items():
                self.buffers[n][rows] = b
        g = torch.cat([grads[name].reshape(k, -1) for name in self.flat.names], dim=1)
        return g, loss

    def clipped_sums(self, layers, buffers, xb, y, max_grad_norm: float, mask=None, *, fast: bool | None = None):
        """(clipped sums [m, d], per-sample gradient norms [m, B], per-sample losses [m, B]) of
        the batch xb [m, B, ...] at the stacked layer views `layers`: by ghost norms and
        book-keeping (`fast`, default `ghost_clipping`) or from the vmap's per-sample gradients."""
        from .errors import UserError

        check_max_grad_norm(max_grad_norm)
        if fast is None:
            fast = self.ghost_clipping
        if fast:
            try:
                got = self.ghost.clipped_sums(layers, xb, y, max_grad_norm, mask)
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                got = None  # not covered after all (e.g. a forward vmap cannot trace): the vmap path
            if got is not None:
                return got
            self.ghost_clipping = False  # this model's forward is not covered: do not try again
        try:
            grads, loss = self._per_sample_grad(layers, buffers, xb, y)
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
            if buffers:
                raise UserError(
                    f"per-sample gradients need a model whose forward leaves its buffers alone "
                    f"({', '.join(buffers)}): BatchNorm in training mode mixes the samples of a batch; "
                    "use GroupNorm or LayerNorm"
                ) from None
            raise not_vmappable(self.model, e, xb[0, 0]) from None
        k, b = xb.shape[:2]
        g = torch.cat([grads[name].reshape(k, b, -1) for name in self.flat.names], dim=2)
        norms = torch.linalg.vector_norm(g, dim=-1)
        c = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        if mask is not None:
            c = c * mask.to(c.dtype)
        return torch.einsum("mb,mbd->md", c, g), norms, loss

    def average_buffers(self, comm) -> None:
        """Every worker's floating-point buffers become their mean over all workers."""
        for b in self.buffers.values():
            if b.is_floating_point():
                b.copy_(comm.all_reduce_mean(b.reshape(self.m, -1)).reshape(b.shape))

    def mean_buffers(self, comm) -> dict[str, torch.Tensor]:
        """The buffers of the averaged model (float ones averaged over all workers; counters
        such as BatchNorm's num_batches_tracked from the first local worker)."""
        return {
            n: comm.average(b.reshape(self.m, -1)).reshape(b.shape[1:]) if b.is_floating_point() else b[0]
            for n, b in self.buffers.items()
        }

    def outputs(self, p: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None):
        """The model in eval mode with flat parameters p[d] and `buffers` (default: the first
        local worker's), as a function of a batch of inputs."""
        params = self.flat.unflatten(p)
        if buffers is None:
            buffers = {n: b[0] for n, b in self.buffers.items()}
        state = (params, buffers, self.frozen)

        def f(xb):
            was = self.model.training
            self.model.eval()
            try:
                return functional_call(self.model, state, (xb,))
            finally:
                self.model.train(was)

        return f

    def state_dict(self) -> dict:
        return {
            "buffers": {n: b.clone() for n, b in self.buffers.items()},
            "perm": self.perm.clone(),
            "cursor": self.cursor.clone(),
            "samples_drawn": self.samples_drawn.clone(),
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, s: dict) -> None:
        """Restore `state_dict()`; a state from before variable batch sizes (batches `taken`
        instead of a `cursor` in samples, no `samples_drawn`) loads too, its sample count
        starting from 0."""
        for n, b in s.get("buffers", {}).items():
            self.buffers[n].copy_(b)
        self.perm = s["perm"].clone()
        if "cursor" in s:
            self.cursor = s["cursor"].clone()
        else:  # `taken` batches of the task's batch size, each local epoch's remainder dropped
            per_epoch = self.sizes // self.batch_size
            taken = s["taken"]
            self.cursor = (taken // per_epoch) * self.sizes + (taken % per_epoch) * self.batch_size
        if "samples_drawn" in s:
            self.samples_drawn = s["samples_drawn"].clone()
        for g, st in zip(self.generators, s["generators"], strict=True):
            g.set_state(st)
