"""distsgd.netem: bad input, missing tools, and a real 2-node run on rate-limited links
where the kernel's byte counters and distsgd's wire counters must agree."""

import json
import sys
from pathlib import Path

import pytest

from distsgd import netem
from distsgd.cli import main
from distsgd.errors import UserError

NODE = str(Path(__file__).with_name("netem_node.py"))
UNAVAILABLE = netem.available()
needs_namespaces = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network namespaces here: {UNAVAILABLE}")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"nodes": 2, "bandwidth": 0}, "positive"),
        ({"nodes": 2, "bandwidth": -1e6}, "positive"),
        ({"nodes": 2, "bandwidth": float("inf")}, "finite"),
        ({"nodes": 2, "bandwidth": float("nan")}, "positive"),
        ({"nodes": 0, "bandwidth": 1e6}, "nodes"),
        ({"nodes": 2, "bandwidth": 1e6, "burst": 4096}, "128 KiB"),
        ({"nodes": 2, "bandwidth": 1e6, "stragglers": {2: 4.0}}, "straggler node 2"),
        ({"nodes": 2, "bandwidth": 1e6, "stragglers": {1: 0.5}}, "slowdown"),
    ],
)
def test_cluster_rejects_bad_links(kwargs, words):
    with pytest.raises(UserError, match=words):
        netem.Cluster(**kwargs)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--bandwidth", "0", "--", "true"], "bandwidth"),
        (["--bandwidth", "-5Mbit/s", "--", "true"], "bandwidth"),
        (["--bandwidth", "1Gb/s", "--", "true"], "unknown unit"),
        (["--nodes", "0", "--", "true"], "nodes"),
        (["--straggler", "x:y", "--", "true"], "straggler"),
        (["--json", "/no/such/dir/out.json", "--", "true"], "does not exist"),
        ([], "no command"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, words, capsys):
    assert main(["netem", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_missing_tools_are_named(monkeypatch):
    real = netem.shutil.which
    monkeypatch.setattr(netem.shutil, "which", lambda t: None if t == "tc" else real(t))
    with pytest.raises(UserError, match="missing tc"):
        netem.check_available()


def test_delay_without_netem_qdisc_is_refused(monkeypatch):
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    monkeypatch.setattr(netem, "netem_qdisc_available", lambda: False)
    with pytest.raises(UserError, match="no netem qdisc"):
        netem.run(["true"], netem.Cluster(nodes=2, bandwidth=1e8, delay=0.001))


@needs_namespaces
@pytest.mark.parametrize(
    "algorithm",
    [
        "allreduce_sgd",
        "signum_mv",
        {"name": "ef21", "compressor": "topk:0.05"},
        {"name": "choco_sgd", "topology": "complete", "compressor": "topk:0.05"},
    ],
    ids=["allreduce_sgd", "signum_mv", "ef21", "choco_sgd"],
)
def test_two_nodes_kernel_bytes_match_distsgd_wire_counters(algorithm, tmp_path):
    """2 ranks, 1 Gbit/s each: what the kernel moved on each node's interface is what
    distsgd's wire counters say, within 5% plus headers (and ACKs); the logical counters of
    the replicated server (Signum-MV) are what the algorithm sends, less than the wire."""
    result = netem.run(
        [sys.executable, NODE, json.dumps(algorithm), str(tmp_path)],
        netem.Cluster(nodes=2, bandwidth=125e6),
        timeout=120,
        log_dir=tmp_path,
    )
    assert result.ok and len(result.nodes) == 2
    for rank in range(2):
        got = json.loads((tmp_path / f"node{rank}.json").read_text())
        assert got["ifname"] == "eth0" and got["node"] == str(rank)
        assert got["same_model"] or "choco" in str(algorithm)
        for way, ours in (("tx", "wire_sent"), ("rx", "wire_received")):
            assert got[ours] > 0
            kernel, packets = got[f"kernel_{way}_bytes"], got[f"kernel_{way}_packets"]
            # headers: Ethernet 14 + IP 20 + TCP 32 bytes a packet, and gloo's small preamble
            # of each message; ACKs are packets with headers only
            assert 0.95 * got[ours] <= kernel <= 1.05 * got[ours] + 100 * packets, (algorithm, rank, way, got)
        # the whole run's counters include the rendezvous and the start broadcast
        assert result.nodes[rank].tx_bytes >= got["kernel_tx_bytes"]
    if algorithm == "signum_mv":  # 2 ranks: the all-gather sends each rank's bits once
        assert got["wire_sent"] == pytest.approx(got["logical_sent"])


@needs_namespaces
def test_a_failing_node_ends_the_run_naming_it(tmp_path):
    code = (
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1': sys.exit(7)\n"
        "time.sleep(1)\n"
    )
    with pytest.raises(netem.NodeFailed, match="node 1 exited with code 7") as e:
        netem.run([sys.executable, "-c", code], netem.Cluster(nodes=3, bandwidth=1e8), timeout=60)
    assert e.value.exit_code == 7


@needs_namespaces
def test_shared_bus_and_cli_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = (
        "import os, socket\n"
        "r = int(os.environ['RANK'])\n"
        "assert os.environ['MASTER_ADDR'] == '127.0.0.1' and os.environ['GLOO_SOCKET_IFNAME'] == 'lo'\n"
    )
    rc = main(["netem", "--nodes", "2", "--shared", "--bandwidth", "100Mbit/s", "--json", str(out), "--",
               sys.executable, "-c", code])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["cluster"]["link"] == "shared bus" and len(report["nodes"]) == 2
    assert "node 1:" in capsys.readouterr().out
