"""The `distsgd` command: run, resume, plot, demo, algorithms. User errors: one line, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError


def _cmd_run(args) -> int:
    from .api import run_config
    from .config import load_config

    cfg = load_config(args.config)
    run_dir = Path(args.out or cfg.out_dir) / cfg.name
    if args.backend == "torch":
        _join_process_group(cfg)
        try:
            res = run_config(cfg, run_dir, backend="torch", resume=args.resume, progress=not args.quiet)
        finally:
            _leave_process_group()
    else:
        res = run_config(cfg, run_dir, resume=args.resume, progress=not args.quiet)
    if res.comm is not None and res.comm.start == 0 and not args.quiet:
        f = res.final
        shown = {k: f[k] for k in ("step", "test_acc", "test_loss", "train_loss", "sim_seconds") if k in f}
        print(f"{cfg.name}: " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()) + f"  -> {run_dir}")
    return 0


def _join_process_group(cfg) -> None:
    """Check the world before joining it, then initialize the process group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.n_workers % world:
        raise UserError(f"n_workers={cfg.n_workers} is not divisible by the world size {world}")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UserError("--backend torch must be launched with torchrun (MASTER_ADDR is not set)")
        dist.init_process_group("gloo")


def _leave_process_group() -> None:
    """Wait for every rank, then close the group (gloo may abort a process that exits
    while a peer still holds its connections)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


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


def _cmd_collectives(args) -> int:
    import json

    from .collectives import build_schedule, make_interconnect
    from .collectives.report import compare, parse_size, parse_sizes, plot, print_table

    net = make_interconnect(args.topology, bandwidth=args.bandwidth, latency=args.latency, nis=args.nis)
    sizes = parse_sizes(args.sizes)
    if not sizes:
        raise UserError("--sizes is empty")
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if "ring" not in names:
        names.insert(0, "ring")  # the baseline every speedup is measured against
    schedules = {name: build_schedule(name, net) for name in names}
    packet = parse_size(args.packet) if args.packet else None
    rows = compare(net, schedules, sizes, packet, args.cut_through, lockstep=not args.dataflow)
    print_table(net, rows)
    if args.plot:
        print(plot(net, rows, args.plot))
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"interconnect": net.summary(), "rows": rows}, indent=2))
        os.replace(tmp, out)
    return 0


def _cmd_algorithms(args) -> int:
    from .reference import render_markdown, render_text

    if args.markdown:
        if args.name:
            raise UserError("--markdown prints the whole reference; leave out NAME")
        sys.stdout.write(render_markdown())
    else:
        sys.stdout.write(render_text(args.name))
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
    a = sub.add_parser(
        "algorithms",
        help="list the algorithms, compressors, aggregators, attacks and topologies with their options",
    )
    a.add_argument("name", nargs="?", help="show this entry only (e.g. choco_sgd, topk, geomed, alie, ring)")
    a.add_argument("--markdown", action="store_true", help="print the README's configuration reference")
    a.set_defaults(func=_cmd_algorithms)
    c = sub.add_parser("collectives", help="simulate all-reduce algorithms on an interconnect")
    c.add_argument(
        "--topology",
        default="torus:4x4",
        help="ring:N, mesh:RxC, torus:RxC, switch:N, fattree:K, bigraph:PxS",
    )
    c.add_argument(
        "--algorithms",
        default="ring,dbtree,ring2d,multitree",
        help="comma list of ring, hd, dbtree, ring2d, hierarchical, multitree",
    )
    c.add_argument("--sizes", default="32KiB..64MiB", help="A..B (doubling) or a comma list")
    c.add_argument("--bandwidth", type=float, default=16e9, help="bytes/s per link")
    c.add_argument("--latency", type=float, default=150e-9, help="seconds per link")
    c.add_argument("--nis", type=int, default=4, help="network interfaces per node")
    c.add_argument("--packet", help="packet size (default: size/2048, at least 256B)")
    c.add_argument("--cut-through", action="store_true", help="cut-through instead of store-and-forward")
    c.add_argument(
        "--dataflow",
        action="store_true",
        help="start each message when its data is ready (default: steps in lockstep)",
    )
    c.add_argument("--plot", default="collectives.png", help="where to write the plot ('' for none)")
    c.add_argument("--json", help="also write the rows as JSON")
    c.set_defaults(func=_cmd_collectives)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        if getattr(args, "backend", None) == "torch" and argv is None:
            # Every file is written and the process group is closed. Skip interpreter
            # teardown: a C++ thread left by the torch.distributed runtime sometimes
            # aborts the process there ("terminate called without an active
            # exception", ~1 exit in 20 here), which torchrun reports as a failed run.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except UserError as e:
        print(f"distsgd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distsgd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
