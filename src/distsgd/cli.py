"""The `distsgd` command: run, resume, plot, demo. User errors: one line, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError


def _cmd_run(args) -> int:
    from .config import build, load_config
    from .runner import train

    cfg = load_config(args.config)
    run_dir = Path(args.out or cfg.out_dir) / cfg.name
    comm = None
    if args.backend == "torch":
        comm = _torch_communicator(cfg)
    task, algorithm, network = build(cfg)
    if comm is not None:
        from .comm.torchdist import TorchDistCommunicator

        comm = TorchDistCommunicator(cfg.n_workers, network)
    res = train(
        task,
        algorithm,
        steps=cfg.steps,
        eval_every=cfg.eval_every,
        network=network,
        comm=comm,
        seed=cfg.seed,
        run_dir=run_dir,
        checkpoint_every=cfg.checkpoint_every,
        resume=args.resume,
        progress=not args.quiet,
        name=cfg.name,
        config=cfg.model_dump(),
        compile=cfg.compile,
    )
    if res.comm is not None and res.comm.start == 0 and not args.quiet:
        f = res.final
        shown = {k: f[k] for k in ("step", "test_acc", "test_loss", "train_loss", "sim_seconds") if k in f}
        print(f"{cfg.name}: " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()) + f"  -> {run_dir}")
    return 0


def _torch_communicator(cfg):
    """Check the world before joining it, then initialize the process group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.n_workers % world:
        raise UserError(f"n_workers={cfg.n_workers} is not divisible by the world size {world}")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UserError("--backend torch must be launched with torchrun (MASTER_ADDR is not set)")
        dist.init_process_group("gloo")
    return True


def _cmd_plot(args) -> int:
    from .plots import plot_runs, read_run

    runs = [read_run(d) for d in args.run_dirs]
    out = plot_runs(runs, args.output)
    print(out)
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    if args.steps < 1:
        raise UserError("--steps must be >= 1")
    run_demo(steps=args.steps, n_workers=args.workers, out_dir=args.out, progress=not args.quiet)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distsgd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train from a TOML config")
    r.add_argument("config")
    r.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    r.add_argument(
        "--backend",
        choices=("sim", "torch"),
        default="sim",
        help="sim: all workers in this process; torch: torch.distributed under torchrun",
    )
    r.add_argument("--out", help="directory for runs (default: out_dir in the config)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_run)
    pl = sub.add_parser("plot", help="compare runs: accuracy and loss vs steps, bytes, time")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("-o", "--output", default="comparison.png")
    pl.set_defaults(func=_cmd_plot)
    d = sub.add_parser("demo", help="AllReduce-SGD vs Local SGD vs D-PSGD on MNIST-1D, 16 workers")
    d.add_argument("--steps", type=int, default=1500)
    d.add_argument("--workers", type=int, default=16)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"distsgd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distsgd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
