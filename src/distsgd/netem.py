"""A small cluster on one Linux machine: k nodes, each in its own network namespace behind
its own rate-limited link, for running real torch.distributed jobs on a real, limited wire.

    distsgd netem --nodes 4 --bandwidth 100Mbit/s -- python train.py
    distsgd netem --nodes 4 --bandwidth 1Gbit/s -- torchrun --nnodes {nodes} \\
        --node-rank {rank} --nproc-per-node 1 --master-addr {master_addr} train.py

How it is wired (no root needed: an unprivileged user namespace, `unshare -rn`):

    node i: netns_i, eth0 = 10.77.0.(i+1)/24 ──veth──► port n<i> ─┐
                                                                   ├─ bridge br0 (the switch)
    node j: netns_j, eth0 = 10.77.0.(j+1)/24 ──veth──► port n<j> ─┘

A token-bucket filter (`tc` tbf) on each end of every veth limits that node's upload
(eth0's egress) and download (the switch port's egress) to the link rate, full duplex, so
bandwidth is per node as in a cluster where each machine has one NIC. The burst is at
least 256 KiB: veth hands over GSO packets of up to 64 KiB, and a bucket smaller than
that drops them until TCP stalls. Delay (and jitter) needs the kernel's netem qdisc; where
it is missing (`tc` answers "Specified qdisc kind is unknown") a delay is refused with
that reason rather than ignored. `shared=True` instead runs every node in one namespace
on its loopback with one tbf: a single shared bus, the total of all traffic limited once.

Every node's command gets the environment of a one-process-per-node torchrun launch
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK=0`, `MASTER_ADDR` = node 0, `MASTER_PORT`) plus
`GLOO_SOCKET_IFNAME=eth0`, and `{rank}`, `{nodes}`, `{master_addr}`, `{master_port}` in
the command are replaced, so a per-node `torchrun` works too. A straggler is a node whose
whole process group the launcher stops and continues (SIGSTOP/SIGCONT, 100 ms period):
`stragglers={2: 4.0}` runs node 2 a quarter of the time, a machine 4× slower at
everything. The result carries, for every node, the bytes its interface moved according
to the kernel (`/proc/<pid>/net/dev` of its namespace: payload plus Ethernet, IP and TCP
headers, and the ACKs), to set beside distsgd's own counters; inside a node,
`interface_bytes()` reads the same counters for a window of the run.

A node that fails ends the run: the others get 10 s to notice and exit on their own, then
are stopped; the launcher reports the first failing node in one line and exits with its
code (`NodeFailed`). Missing tools (`ip`, `tc`, `unshare`, `nsenter`), no permission for
namespaces, a bandwidth that is not a positive rate: one line, exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DistsgdError, UserError

TOOLS = ("ip", "tc", "unshare", "nsenter")
SUBNET = "10.77.0"
MASTER_PORT = 29533
GRACE_SECONDS = 10.0  # after a node fails, the others' time to exit on their own
DUTY_PERIOD = 0.1  # seconds: one stop/continue cycle of a straggler


class NodeFailed(DistsgdError):
    """A node's command exited with a non-zero code (the run's exit code is the node's)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


@dataclass(frozen=True)
class Cluster:
    """k nodes, each behind a `bandwidth` link (bytes/s, both directions), or one shared bus."""

    nodes: int
    bandwidth: float  # bytes per second
    delay: float = 0.0  # seconds, one way per link (needs netem)
    burst: int = 256 * 1024  # bytes in the token bucket
    shared: bool = False
    stragglers: dict[int, float] = field(default_factory=dict)  # node -> slowdown factor
    master_port: int = MASTER_PORT

    def __post_init__(self):
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise UserError(f"netem: nodes must be a positive whole number, got {self.nodes!r}")
        if not (isinstance(self.bandwidth, int | float) and 0 < self.bandwidth < float("inf")):
            raise UserError(f"netem: bandwidth must be a positive, finite rate, got {self.bandwidth!r}")
        if self.bandwidth * 8 < 8000:
            raise UserError(f"netem: bandwidth {self.bandwidth:g} B/s is below tc's 8 kbit/s")
        if not 0 <= self.delay <= 10:
            raise UserError(f"netem: delay must be between 0 and 10 s, got {self.delay!r}")
        if self.burst < 128 * 1024:
            raise UserError(
                f"netem: burst {self.burst} B is below 128 KiB; veth's 64 KiB GSO packets would stall TCP"
            )
        for node, factor in self.stragglers.items():
            if not 0 <= node < self.nodes:
                raise UserError(f"netem: straggler node {node} is not one of the {self.nodes} nodes")
            if not 1 <= factor <= 1000:
                raise UserError(f"netem: straggler slowdown {factor!r} must be between 1 and 1000")

    @property
    def master_addr(self) -> str:
        return "127.0.0.1" if self.shared else f"{SUBNET}.1"

    @property
    def rate_bits(self) -> int:
        return max(8000, round(self.bandwidth * 8))


@dataclass
class NodeResult:
    node: int
    returncode: int
    seconds: float
    tx_bytes: int  # the kernel's counters of the node's interface (shared: the bus's)
    rx_bytes: int
    tx_packets: int
    rx_packets: int


@dataclass
class NetemResult:
    cluster: dict
    nodes: list[NodeResult]
    seconds: float
    netem_available: bool

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 for r in self.nodes)

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "seconds": self.seconds,
            "netem_available": self.netem_available,
            "nodes": [asdict(r) for r in self.nodes],
        }


def parse_stragglers(text: str | None) -> dict[int, float]:
    """'2:4' or '1:2,3:4' -> {node: slowdown}."""
    out: dict[int, float] = {}
    for part in filter(None, (text or "").split(",")):
        node, sep, factor = part.partition(":")
        try:
            out[int(node)] = float(factor) if sep else 4.0
        except ValueError:
            raise UserError(f"netem: bad straggler '{part}' (use NODE:SLOWDOWN, e.g. 2:4)") from None
    return out


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def check_available() -> None:
    """Raise UserError saying what is missing when namespaces cannot be made here."""
    missing = missing_tools()
    if missing:
        raise UserError(
            f"netem: missing {', '.join(missing)} (needs iproute2's ip and tc, util-linux's unshare and nsenter)"
        )
    probe = subprocess.run(
        ["unshare", "-rn", "ip", "link", "add", "probe0", "type", "bridge"], capture_output=True, text=True
    )
    if probe.returncode:
        why = (probe.stderr.strip().splitlines() or ["unknown reason"])[-1]
        raise UserError(f"netem: cannot create a network namespace with a bridge here ({why})")


def available() -> str | None:
    """None when a cluster can be made here, else why not (for skipping tests)."""
    try:
        check_available()
    except UserError as e:
        return str(e)
    return None


def interface_counters() -> dict[str, int]:
    """What the kernel counted on this namespace's interfaces (eth0 on a node of a per-node
    cluster; lo on a shared bus, lo only when there is nothing else): tx/rx bytes, headers
    included, and tx/rx packets (a GSO packet counts once)."""
    rows = _read_net_dev(Path("/proc/self/net/dev"))
    pick = [v for k, v in rows.items() if k != "lo"] or list(rows.values())
    return {
        "rx_bytes": sum(v[0] for v in pick),
        "rx_packets": sum(v[1] for v in pick),
        "tx_bytes": sum(v[2] for v in pick),
        "tx_packets": sum(v[3] for v in pick),
    }


def interface_bytes() -> tuple[int, int]:
    """(tx, rx) bytes of `interface_counters`."""
    c = interface_counters()
    return c["tx_bytes"], c["rx_bytes"]


def _read_net_dev(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """interface -> (rx_bytes, rx_packets, tx_bytes, tx_packets)."""
    out = {}
    for line in path.read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        out[name.strip()] = (int(f[0]), int(f[1]), int(f[8]), int(f[9]))
    return out


def run(
    command: list[str],
    cluster: Cluster,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    log_dir: str | Path | None = None,
) -> NetemResult:
    """Run `command` on every node of `cluster` (see the module docstring); returns when all
    nodes have exited. Raises NodeFailed when one failed, UserError when the cluster cannot
    be made here."""
    if not command:
        raise UserError("netem: no command to run on the nodes")
    check_available()
    if cluster.delay and not netem_qdisc_available():
        raise UserError(
            "netem: this kernel has no netem qdisc (sch_netem), so delay, jitter and loss are unavailable; "
            "run without a delay"
        )
    with tempfile.TemporaryDirectory(prefix="distsgd-netem-") as tmp:
        spec = Path(tmp) / "spec.json"
        report = Path(tmp) / "report.json"
        spec.write_text(
            json.dumps(
                {
                    "cluster": asdict(cluster),
                    "command": list(command),
                    "env": env or {},
                    "timeout": timeout,
                    "log_dir": str(log_dir) if log_dir else None,
                    "report": str(report),
                    "parent": os.getpid(),
                }
            )
        )
        launcher = subprocess.Popen(
            ["unshare", "-rn", "--kill-child=SIGTERM", sys.executable, "-m", "distsgd.netem", str(spec)],
        )
        try:
            code = launcher.wait()
        except KeyboardInterrupt:
            launcher.send_signal(signal.SIGINT)
            launcher.wait()
            raise
        if not report.exists():
            sig = -code if code < 0 else code - 128 if code > 128 else None
            if sig:
                raise UserError(f"netem: the launcher was stopped by signal {sig}; it stopped its nodes")
            raise UserError(f"netem: the launcher ended with code {code} before making the cluster")
        out = json.loads(report.read_text())
    if "error" in out:
        raise UserError(out["error"])
    result = NetemResult(
        cluster=out["cluster"],
        nodes=[NodeResult(**r) for r in out["nodes"]],
        seconds=out["seconds"],
        netem_available=out["netem_available"],
    )
    if out.get("failed"):
        raise NodeFailed(out["failed"]["message"], out["failed"]["code"])
    return result


_netem_probe: bool | None = None


def netem_qdisc_available() -> bool:
    """Whether this kernel has the netem qdisc (delay, jitter, loss)."""
    global _netem_probe
    if _netem_probe is None:
        probe = subprocess.run(
            ["unshare", "-rn", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True,
            text=True,
        )
        _netem_probe = probe.returncode == 0
    return _netem_probe


# -- the launcher: runs inside `unshare -rn` (root of a fresh user and network namespace) --


def _sh(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"netem: `{' '.join(args)}` failed: {r.stderr.strip() or r.returncode}")


def _shape(prefix: list[str], dev: str, c: Cluster, netem: bool) -> None:
    """tbf at the link rate on dev's egress (after a netem delay where asked)."""
    queue = int(min(64 * 2**20, max(2 * 2**20, 0.1 * c.bandwidth)))  # bytes waiting, not dropped
    tbf = ["tbf", "rate", f"{c.rate_bits}bit", "burst", str(c.burst), "limit", str(queue)]
    if c.delay and netem:
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", f"{c.delay * 1e3:g}ms")
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "parent", "1:", "handle", "2:", *tbf)
    else:
        _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", *tbf)


def _launch(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    report = Path(spec["report"])
    cfg = dict(spec["cluster"])
    cfg["stragglers"] = {int(k): v for k, v in cfg["stragglers"].items()}
    c = Cluster(**cfg)
    holders: list[subprocess.Popen] = []
    procs: list[subprocess.Popen] = []

    def write(obj) -> None:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, report)

    try:
        netem = netem_qdisc_available()
        _sh("ip", "link", "set", "lo", "up")
        counters: list[Path] = []
        if c.shared:
            _shape([], "lo", c, netem)
            prefixes = [[] for _ in range(c.nodes)]
            counters = [Path(f"/proc/{os.getpid()}/net/dev")] * c.nodes
        else:
            _sh("ip", "link", "add", "br0", "type", "bridge")
            _sh("ip", "link", "set", "br0", "up")
            prefixes = []
            for i in range(c.nodes):
                h = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
                holders.append(h)
                ns = ["nsenter", "-t", str(h.pid), "-n"]
                for _ in range(200):  # until the holder has entered its namespace
                    if os.readlink(f"/proc/{h.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                        break
                    time.sleep(0.01)
                _sh("ip", "link", "add", f"n{i}", "type", "veth", "peer", "name", f"e{i}")
                _sh("ip", "link", "set", f"e{i}", "netns", str(h.pid))
                _sh(*ns, "ip", "link", "set", f"e{i}", "name", "eth0")
                _sh(*ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
                _sh(*ns, "ip", "link", "set", "eth0", "up")
                _sh(*ns, "ip", "link", "set", "lo", "up")
                _sh("ip", "link", "set", f"n{i}", "master", "br0")
                _sh("ip", "link", "set", f"n{i}", "up")
                _shape([], f"n{i}", c, netem)  # the node's download
                _shape(ns, "eth0", c, netem)  # the node's upload
                prefixes.append(ns)
                counters.append(Path(f"/proc/{h.pid}/net/dev"))
    except UserError as e:
        write({"error": str(e)})
        _stop(holders)
        return 2

    iface = "lo" if c.shared else "eth0"

    def read(i: int) -> tuple[int, int, int, int]:
        return _read_net_dev(counters[i]).get(iface, (0, 0, 0, 0))

    before = [read(i) for i in range(c.nodes)]
    log_dir = Path(spec["log_dir"]) if spec["log_dir"] else None

    def stop_all(signum, frame):  # the launcher is stopped: take the nodes with it
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
        _stop(holders)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGHUP, stop_all)

    def watch_parent() -> None:  # the caller killed (no signal reaches us through unshare -r)
        while True:
            time.sleep(0.5)
            try:
                os.kill(spec["parent"], 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass

    if spec.get("parent"):
        threading.Thread(target=watch_parent, daemon=True).start()
    started = time.monotonic()
    ended: dict[int, float] = {}
    for i in range(c.nodes):
        fill = {"rank": i, "nodes": c.nodes, "master_addr": c.master_addr, "master_port": c.master_port}
        argv = list(spec["command"])
        for key, value in fill.items():  # only these placeholders: other braces (JSON) stay
            argv = [a.replace("{" + key + "}", str(value)) for a in argv]
        # the namespaces have no name service: c10d's "cannot retrieve the hostname" warnings
        # are noise here (set TORCH_CPP_LOG_LEVEL yourself to see them)
        env = {"TORCH_CPP_LOG_LEVEL": "ERROR"} | dict(os.environ) | spec["env"] | {
            "RANK": str(i),
            "WORLD_SIZE": str(c.nodes),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(i),
            "MASTER_ADDR": c.master_addr,
            "MASTER_PORT": str(c.master_port),
            "GLOO_SOCKET_IFNAME": iface,
            "DISTSGD_NETEM_NODE": str(i),
        }
        out = open(log_dir / f"node{i}.log", "w") if log_dir else None  # noqa: SIM115
        procs.append(
            subprocess.Popen(prefixes[i] + argv, env=env, stdout=out, stderr=out, start_new_session=True)
        )
    stop_duty = threading.Event()
    duty = [
        threading.Thread(target=_duty_cycle, args=(procs[i], f, stop_duty), daemon=True)
        for i, f in c.stragglers.items()
        if f > 1
    ]
    for t in duty:
        t.start()

    failed = None
    deadline = started + spec["timeout"] if spec["timeout"] else None
    while len(ended) < c.nodes:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic()
                if p.returncode and failed is None:
                    failed = {"node": i, "code": p.returncode, "at": ended[i]}
        now = time.monotonic()
        if failed and now > failed["at"] + GRACE_SECONDS:
            break
        if deadline and now > deadline:
            failed = failed or {"node": None, "code": 4, "at": now}
            break
        time.sleep(0.02)
    stop_duty.set()
    for t in duty:
        t.join()
    after = [read(i) for i in range(c.nodes)]
    stopped = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in stopped:
        _kill_group(procs[i])
    nodes = []
    for i, p in enumerate(procs):
        rx, rxp, tx, txp = (a - b for a, b in zip(after[i], before[i], strict=True))
        nodes.append(
            asdict(
                NodeResult(
                    node=i,
                    returncode=p.returncode if p.returncode is not None else -9,
                    seconds=ended.get(i, time.monotonic()) - started,
                    tx_bytes=tx,
                    rx_bytes=rx,
                    tx_packets=txp,
                    rx_packets=rxp,
                )
            )
        )
    obj = {
        "cluster": asdict(c) | {"link": "shared bus" if c.shared else "per node"},
        "nodes": nodes,
        "seconds": max(ended.values(), default=time.monotonic()) - started,
        "netem_available": netem,
    }
    if failed:
        if failed["node"] is None:
            msg = f"netem: the nodes did not finish within {spec['timeout']:g} s; stopped them"
        else:
            code = failed["code"]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            msg = f"netem: node {failed['node']} {how}" + (
                f"; stopped node{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} "
                f"{GRACE_SECONDS:g} s later"
                if stopped
                else ""
            )
            failed["code"] = code if code > 0 else 4
        obj["failed"] = {"message": msg, "code": failed["code"]}
    write(obj)
    _stop(holders)
    return obj.get("failed", {}).get("code", 0)


def _duty_cycle(p: subprocess.Popen, factor: float, stop: threading.Event) -> None:
    """Run p's process group 1/factor of the time."""
    on = DUTY_PERIOD / factor
    try:
        while not stop.is_set() and p.poll() is None:
            time.sleep(on)
            os.killpg(p.pid, signal.SIGSTOP)
            time.sleep(DUTY_PERIOD - on)
            os.killpg(p.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    finally:
        try:
            os.killpg(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _kill_group(p: subprocess.Popen) -> None:
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
    try:
        p.wait(timeout=3)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _stop(holders: list[subprocess.Popen]) -> None:
    for h in holders:
        h.kill()
        h.wait()


if __name__ == "__main__":  # the launcher, inside `unshare -rn`
    sys.exit(_launch(sys.argv[1]))
