"""The `distsgd` command: run, sweep, report, plot, doctor, demo, algorithms, collectives, netem.
User errors: one line, exit code 2."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .errors import DistsgdError, Fault, UserError


def _cmd_run(args) -> int:
    from . import overrides
    from .api import run_config

    cfg, _ = overrides.load(args.config, [overrides.parse_override(o) for o in args.set])
    run_dir = Path(args.out or cfg.out_dir) / cfg.name
    sinks = []
    if args.tensorboard:
        from .sinks import TensorBoardSink

        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if args.backend == "torch":
        _join_process_group(cfg)
        try:
            res = run_config(cfg, run_dir, backend="torch", resume=args.resume, progress=not args.quiet, sinks=sinks)
        except BaseException:
            _abandon_process_group()
            raise
        _leave_process_group()
    else:
        res = run_config(cfg, run_dir, resume=args.resume, progress=not args.quiet, sinks=sinks)
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
        from datetime import timedelta

        try:
            seconds = float(os.environ.get("DISTSGD_TIMEOUT", "300"))
        except ValueError:
            raise UserError("DISTSGD_TIMEOUT must be a number of seconds") from None
        # a collective that waits longer than this for a peer fails instead of hanging
        dist.init_process_group("gloo", timeout=timedelta(seconds=seconds))
        import signal

        # torchrun stops the other ranks with SIGTERM when one fails: leave quietly (the
        # failing rank has said why), without a traceback per rank
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))


def _leave_process_group() -> None:
    """Wait for every rank, then close the group (gloo may abort a process that exits
    while a peer still holds its connections)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _abandon_process_group() -> None:
    """After a failure: close the group without waiting for peers that may be gone."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _rank_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"rank {rank}: " if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _cmd_plot(args) -> int:
    from .plots import plot_runs, read_run, unique_labels

    runs = [read_run(d) for d in args.run_dirs]
    labels = unique_labels([name for name, _ in runs], args.run_dirs)
    out = plot_runs([(label, rows) for label, (_, rows) in zip(labels, runs, strict=True)], args.output, args.title)
    print(out)
    return 0


def _cmd_sweep(args) -> int:
    from . import overrides, sweep

    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    say = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    res = sweep.run_sweep(
        args.config,
        sweep.parse_grid(args.grid),
        seeds=args.seeds,
        out=args.out,
        jobs=args.jobs,
        target=args.target,
        select=args.select,
        metric=args.metric,
        tensorboard=args.tensorboard,
        overrides=[overrides.parse_override(o) for o in args.set],
        widen=args.widen,
        say=say,
    )
    sweep.print_summary(res, res.target)
    print(f"ran {res.ran}, skipped {res.skipped} -> {res.root / 'sweep.md'}")
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.run_dirs, args.output, target=args.target, title=args.title))
    return 0


def _cmd_doctor(args) -> int:
    from .doctor import doctor

    return doctor()


def _cmd_demo(args) -> int:
    from .demo import run_demo

    if args.steps < 1:
        raise UserError("--steps must be >= 1")
    run_demo(steps=args.steps, n_workers=args.workers, out_dir=args.out, progress=not args.quiet)
    return 0


def _cmd_collectives(args) -> int:
    from .collectives import COLLECTIVE_ALGORITHMS, build_schedule, make_interconnect
    from .collectives.report import (
        check_output,
        check_plot_path,
        compare,
        heatmap,
        link_table,
        parse_bandwidth,
        parse_latency,
        parse_size,
        parse_sizes,
        parse_stragglers,
        plot,
        print_table,
        write_json_atomic,
    )

    # every argument and output path is checked before the (possibly long) simulation
    bandwidth = parse_bandwidth(args.bandwidth)
    latency = parse_latency(args.latency)
    try:
        nis = int(args.nis)
    except ValueError:
        nis = 0
    if not 1 <= nis <= 1024:
        raise UserError(f"bad --nis '{args.nis}': must be a whole number from 1 to 1024")
    net = make_interconnect(args.topology, bandwidth=bandwidth, latency=latency, nis=nis)
    collective = args.collective.strip().lower().replace("-", "_")
    collective = {"all_reduce": "allreduce", "all_gather": "allgather", "reducescatter": "reduce_scatter"}.get(
        collective, collective
    )
    if collective not in COLLECTIVE_ALGORITHMS:
        raise UserError(
            f"bad --collective '{args.collective}' (choose from {', '.join(COLLECTIVE_ALGORITHMS)})"
        )
    try:
        root = int(args.root)
    except ValueError:
        root = -1
    if not 0 <= root < net.n:
        raise UserError(f"bad --root '{args.root}': {net.name} has nodes 0..{net.n - 1}")
    if args.root != "0" and collective != "broadcast":
        raise UserError("--root is for --collective broadcast only")
    sizes = parse_sizes(args.sizes)
    if not sizes:
        raise UserError("--sizes is empty")
    packet = parse_size(args.packet, "packet size") if args.packet else None
    if args.model == "flow" and (args.packet or args.cut_through or args.store_and_forward):
        raise UserError("--packet, --cut-through and --store-and-forward describe the packet model: not with --model flow")
    if args.cut_through and args.store_and_forward:
        raise UserError("--cut-through and --store-and-forward exclude each other (cut-through is the default)")
    if args.plot:
        check_plot_path(args.plot)
    if args.heatmap:
        check_plot_path(args.heatmap, "--heatmap")
    if args.json:
        check_output(args.json, "--json")
    timeline = 0
    if args.timeline is not None:
        try:
            timeline = int(args.timeline)
        except ValueError:
            timeline = 0
        if not 1 <= timeline <= 10000:
            raise UserError(f"bad --timeline '{args.timeline}': must be a whole number from 1 to 10000")
        if not args.json:
            raise UserError("--timeline goes into the --json output: give --json PATH too")
    delays = parse_stragglers(args.straggler, net.n) if args.straggler else None
    if args.algorithms is None:  # the default set, less those this collective or network lacks
        wanted = ["ring", "biring", "multiring", "dbtree", "ring2d", "multitree"]
        names = [a for a in wanted if a in COLLECTIVE_ALGORITHMS[collective]]
        names = [a for a in names if a != "multiring" or (net.kind == "torus" and min(net.shape) >= 3)]
        names = [a for a in names if a != "ring2d" or (net.direct and net.kind != "ring")]
    else:
        names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if "ring" not in names:
        names.insert(0, "ring")  # the baseline every speedup is measured against
    schedules = {name: build_schedule(name, net, collective, root) for name in names}
    rows = compare(
        net,
        schedules,
        sizes,
        packet,
        not args.store_and_forward,
        lockstep=not args.dataflow,
        collective=collective,
        links=bool(args.json or args.heatmap),
        timeline=timeline,
        delays=delays,
        model=args.model,
    )
    print_table(net, rows)
    if args.plot:
        print(plot(net, rows, args.plot))
    if args.heatmap:
        print(heatmap(net, rows, args.heatmap))
    if args.json:
        doc = {"interconnect": net.summary(), "links": link_table(net), "rows": rows}
        if delays:
            doc["stragglers"] = {str(k): v for k, v in delays.items()}
        print(write_json_atomic(args.json, doc))
    return 0


def _cmd_netem(args) -> int:
    from . import netem
    from .collectives.report import parse_bandwidth, parse_latency, parse_size, write_json_atomic

    command = list(args.node_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.json:
        from .collectives.report import check_output

        check_output(args.json, "--json")
    if args.log_dir and not Path(args.log_dir).is_dir():
        raise UserError(f"--log-dir '{args.log_dir}' is not a directory")
    cluster = netem.Cluster(
        nodes=args.nodes,
        bandwidth=parse_bandwidth(args.bandwidth),
        delay=parse_latency(args.delay),
        burst=parse_size(args.burst, "burst"),
        shared=args.shared,
        stragglers=netem.parse_stragglers(args.straggler),
    )
    result = netem.run(command, cluster, timeout=args.timeout, log_dir=args.log_dir)
    for r in result.nodes:
        print(
            f"node {r.node}: {r.seconds:8.2f} s  sent {r.tx_bytes:>14,} B  received {r.rx_bytes:>14,} B "
            f"(kernel, {'shared bus' if cluster.shared else 'eth0'})"
        )
    if args.json:
        write_json_atomic(args.json, result.to_json())
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


def _version() -> str:
    from .environment import version

    return f"distsgd {version()}"


SET_HELP = (
    "override a config value, e.g. -s algorithm.lr=0.1 -s task.hidden=[64,64] -s algorithm.compressor=topk:0.01 "
    "(a TOML value; a bare word is a string; ~KEY removes a key); repeatable"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distsgd", description=__doc__)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train from a TOML config")
    r.add_argument("config")
    r.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    r.add_argument(
        "--tensorboard", action="store_true", help="also write the metrics for TensorBoard (RUN_DIR/tensorboard)"
    )
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
    pl.add_argument("--title", help="the figure's title")
    pl.set_defaults(func=_cmd_plot)
    sw = sub.add_parser(
        "sweep",
        help="run a grid of config values x seeds (parallel, resumable) and summarize it",
        description="Run every combination of the --grid values (and of a [sweep] table in CONFIG) x --seeds "
        "into OUT/<name>/, skipping runs already finished with the same config, then print and write "
        "sweep.md and sweep.json: mean ± std over seeds of the final test accuracy and loss, steps and "
        "simulated seconds to --target, bytes per worker and simulated seconds.",
    )
    sw.add_argument("config")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values of one key, e.g. algorithm.lr=0.01,0.03,0.1 (TOML values; commas inside [] do not split); "
        "repeatable: the product is run",
    )
    sw.add_argument("--seeds", type=int, help="seeds per grid point: seed, seed+1, ... (default 1)")
    sw.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    sw.add_argument("--out", help="folder of the sweep's folder (default: out_dir in the config)")
    sw.add_argument("--jobs", type=int, help="runs at a time, one process and one thread each (default: cores/2)")
    sw.add_argument("--target", type=float, help="test accuracy to time: steps and simulated seconds to reach it")
    sw.add_argument("--select", metavar="KEY", help="pick the best value of this grid key per algorithm, e.g. lr")
    sw.add_argument(
        "--metric",
        choices=("auto", "test_acc", "test_loss", "val_acc", "val_loss", "train_loss", "steps_to_target",
                 "sim_seconds_to_target"),
        help="what --select optimizes (auto: final validation accuracy if the runs have one, else validation loss, else test loss)",
    )
    sw.add_argument(
        "--widen",
        type=int,
        metavar="N",
        help="while --select's best sits on an edge of its values, add the next value past it (x/÷ the edge's "
        "ratio), up to N per algorithm (default 0)",
    )
    sw.add_argument("--tensorboard", action="store_true", help="also write each run's metrics for TensorBoard")
    sw.add_argument("--quiet", action="store_true", help="print only the summary")
    sw.set_defaults(func=_cmd_sweep)
    rp = sub.add_parser(
        "report",
        help="one self-contained HTML page comparing runs: configs, plots, summary, environment",
    )
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of them (a sweep)")
    rp.add_argument("-o", "--output", default="report.html")
    rp.add_argument("--target", type=float, help="also steps and simulated seconds to this test accuracy")
    rp.add_argument("--title", help="the page's title")
    rp.set_defaults(func=_cmd_report)
    dr = sub.add_parser(
        "doctor",
        help="check this machine for what runs need (torch, gloo, CUDA/NCCL, namespaces and tc, cores)",
        description="Exit code 0: the basics work (optional features may be missing); 1: something every run "
        "needs is missing (the table says how to fix it).",
    )
    dr.set_defaults(func=_cmd_doctor)
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
    c = sub.add_parser(
        "collectives", help="simulate all-reduce, reduce-scatter, all-gather or broadcast algorithms on an interconnect"
    )
    c.add_argument(
        "--topology",
        default="torus:4x4",
        help="ring:N, mesh:RxC, torus:RxC, switch:N, fattree:K, bigraph:PxS",
    )
    c.add_argument(
        "--collective",
        default="allreduce",
        help="allreduce (default), reduce_scatter, allgather or broadcast",
    )
    c.add_argument(
        "--algorithms",
        help="comma list of ring, biring, multiring, hd, dbtree, ring2d, hierarchical, multitree "
        "(reduce_scatter, allgather: ring, biring, multiring, hd, multitree; broadcast: ring, biring, "
        "multiring; default: ring, biring, multiring, dbtree, ring2d, multitree where they apply)",
    )
    c.add_argument("--root", default="0", help="the source node of a broadcast (default: 0)")
    c.add_argument(
        "--sizes",
        default="32KiB..64MiB",
        help="A..B (doubling) or a comma list; units B, KiB, MiB, GiB (binary) or kB, MB, GB "
        "(decimal), a plain number is bytes",
    )
    c.add_argument(
        "--bandwidth",
        default="16e9",
        help="per link: a plain number is bytes/s; or with a unit, e.g. 16GB/s, 16GiB/s, 100Gbit/s "
        "(default: 16e9 = 16GB/s)",
    )
    c.add_argument(
        "--latency",
        default="150e-9",
        help="per link: a plain number is seconds; or e.g. 150ns, 1.5us, 1ms (default: 150e-9)",
    )
    c.add_argument("--nis", default="4", help="network interfaces per node (default: 4)")
    c.add_argument("--packet", help="packet size, e.g. 4KiB (default: size/2048, at least 256B)")
    c.add_argument("--cut-through", action="store_true", help="a packet moves on once its head has arrived (the default)")
    c.add_argument(
        "--store-and-forward",
        action="store_true",
        help="a packet moves on once it has arrived whole; with --packet at least the largest message, "
        "whole messages are stored and forwarded (ASTRA-sim's analytical backend on a switch)",
    )
    c.add_argument(
        "--model",
        choices=("packet", "flow"),
        default="packet",
        help="packet: every packet through every link (FIFO); flow: messages as max-min fair flows, "
        "cost independent of the size (for large sizes and node counts; default: packet)",
    )
    c.add_argument(
        "--dataflow",
        action="store_true",
        help="start each message when its data is ready (default: steps in lockstep)",
    )
    c.add_argument("--plot", metavar="PATH", help="write a plot of time against size here (default: none)")
    c.add_argument(
        "--heatmap",
        metavar="PATH",
        help="write a plot of every link's utilization at the largest size here (default: none)",
    )
    c.add_argument(
        "--timeline",
        metavar="K",
        help="with --json: also every link's utilization in K equal intervals of each run",
    )
    c.add_argument(
        "--straggler",
        metavar="NODE:DELAY[,...]",
        help="nodes whose sends start that much late, e.g. 3:20us,7:1ms (default: none)",
    )
    c.add_argument(
        "--json",
        metavar="PATH",
        help="also write the rows as JSON here, with every link's bytes, busy seconds and utilization "
        "(its directory must exist)",
    )
    ne = sub.add_parser(
        "netem",
        help="run a command on k nodes, each in its own network namespace behind a rate-limited link",
        description="Run COMMAND on every node (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as torchrun "
        "sets them; {rank}, {nodes}, {master_addr}, {master_port} in COMMAND are filled in) and report "
        "the bytes each node's interface moved, from the kernel's counters.",
    )
    ne.add_argument("--nodes", type=int, default=2, help="number of nodes (default: 2)")
    ne.add_argument("--bandwidth", default="1Gbit/s", help="per node, each way, e.g. 100Mbit/s, 1Gbit/s, 125MB/s")
    ne.add_argument("--delay", default="0", help="one-way delay per link, e.g. 1ms (needs the kernel's netem)")
    ne.add_argument("--burst", default="256KiB", help="token bucket size (at least 128KiB; default 256KiB)")
    ne.add_argument("--shared", action="store_true", help="one shared bus (loopback, one limit) instead of a link per node")
    ne.add_argument("--straggler", help="NODE:SLOWDOWN[,...]: run these nodes 1/SLOWDOWN of the time, e.g. 1:4")
    ne.add_argument("--timeout", type=float, help="stop every node after this many seconds (exit code 4)")
    ne.add_argument("--log-dir", help="write node<i>.log here instead of sharing this terminal")
    ne.add_argument("--json", metavar="PATH", help="write the kernel byte counts and times as JSON here")
    ne.add_argument("node_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="what every node runs")
    ne._negative_number_matcher = re.compile(r"^-(?:\d|\.\d|inf|nan)", re.IGNORECASE)
    ne.set_defaults(func=_cmd_netem)
    # values such as -1MiB or -5e-9 reach the parsers above (one-line errors) instead of
    # being taken for options; this sub-command has no option that looks like a number
    c._negative_number_matcher = re.compile(r"^-(?:\d|\.\d|inf|nan)", re.IGNORECASE)
    c.set_defaults(func=_cmd_collectives)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 `distsgd doctor` found a basic requirement missing; 2 a user
    error (config, override, input, file); 3 diverged (non-finite loss or parameters); 4 a
    fault (a peer rank died or timed out, the disk is full); 130 interrupted. Each error is
    one line on stderr, prefixed with the rank under torchrun."""
    args = parser().parse_args(argv)
    distributed = getattr(args, "backend", None) == "torch"
    try:
        code = args.func(args)
    except DistsgdError as e:
        msg = str(e)
        _say(f"distsgd: {e.label}: {'' if msg.startswith('rank ') else _rank_prefix()}{msg}")
        code = e.exit_code
    except KeyboardInterrupt:
        _say(f"distsgd: {_rank_prefix()}interrupted")
        code = 130
    except Exception as e:
        if not distributed or not _is_peer_failure(e):
            raise
        why = re.sub(r"^\[[^\]]*\]\s*", "", _one_line(e)).split(". This is")[0]  # gloo's source location, advice
        _say(f"distsgd: error: {_rank_prefix()}lost contact with another rank ({why})")
        code = Fault.exit_code
    if distributed and argv is None:
        # The process group is closed (or abandoned). Skip interpreter teardown: a C++
        # thread left by the torch.distributed runtime sometimes aborts the process there
        # ("terminate called without an active exception", ~1 exit in 20 here), which
        # torchrun reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _say(line: str) -> None:
    """One line to stderr in one write (ranks failing together must not interleave)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _is_peer_failure(e: Exception) -> bool:
    """A torch.distributed error of a collective whose peer died, closed or timed out."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    text = str(e).lower()
    return isinstance(e, backend_error) or (
        isinstance(e, RuntimeError)
        and any(k in text for k in ("gloo", "connection", "timed out", "timeout", "peer", "socket"))
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
