"""`distsgd collectives`: unit parsing, one-line errors (exit code 2), and its output files."""

import json
import os
import subprocess
import sys

import pytest

from distsgd.cli import main
from distsgd.collectives.report import parse_bandwidth, parse_latency, parse_size, parse_sizes
from distsgd.errors import UserError

# small and fast: 4 nodes, ring only, three sizes
FAST = ["collectives", "--topology", "ring:4", "--algorithms", "ring", "--sizes", "1KiB..4KiB"]


def _one_line_error(capsys) -> str:
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err, cap.err
    assert lines[0].startswith("distsgd: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("16GB/s", 16e9),
        ("16GiB/s", 16 * 2**30),
        ("100Gbit/s", 100e9 / 8),
        ("1.25e8", 1.25e8),  # a plain number is bytes/s, as before
        ("16e9", 16e9),
        ("400 MB/s", 400e6),
        ("10kB/s", 1e4),
        ("10KiB/s", 10 * 1024),
        ("1Tbit/s", 1e12 / 8),
        ("12B/s", 12.0),
    ],
)
def test_bandwidth_units(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["16Gb/s", "16Gbps", "16GB", "16 gigabytes", "16gb/s", "16GBit/s", "", "GB/s", "0", "0.5", "-16GB/s"],
)
def test_ambiguous_or_bad_bandwidth_is_refused(text):
    with pytest.raises(UserError, match="bad bandwidth"):
        parse_bandwidth(text)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("64MiB", 64 * 2**20),
        ("32KiB", 32 * 1024),
        ("1GB", 10**9),
        ("512B", 512),
        ("4096", 4096),
        ("1.5KiB", 1536),
    ],
)
def test_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("64mib", "unknown unit 'mib'"),
        ("64Mb", "unknown unit 'Mb'"),  # megabits or megabytes? refused
        ("64b", "unknown unit 'b'"),
        ("-1MiB", "at least 1 byte"),
        ("0", "at least 1 byte"),
        ("1.5B", "whole number of bytes"),
        ("inf", "finite"),
        ("nan", "finite"),
        ("2PiB", "unknown unit"),
        ("1e18", "more than 1 PiB"),
        ("12 parsecs", "unknown unit"),
    ],
)
def test_bad_sizes_are_refused(text, expected):
    with pytest.raises(UserError, match="bad size") as e:
        parse_size(text)
    assert expected in str(e.value)


def test_size_ranges_and_lists():
    assert parse_sizes("32KiB..256KiB") == [32768, 65536, 131072, 262144]
    assert parse_sizes("1MiB, 8MiB") == [2**20, 8 * 2**20]
    assert parse_sizes("") == []


@pytest.mark.parametrize(
    "text,expected",
    [("150e-9", 150e-9), ("150ns", 150e-9), ("1.5us", 1.5e-6), ("1ms", 1e-3), ("0", 0.0), ("2s", 2.0)],
)
def test_latency_units(text, expected):
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--bandwidth", "inf"], "bad bandwidth 'inf': must be a finite number"),
        (["--bandwidth", "nan"], "bad bandwidth 'nan': must be a finite number"),
        (["--bandwidth", "-inf"], "bad bandwidth '-inf'"),
        (["--bandwidth", "1e308"], "must be between 1 B/s and 1e18 B/s"),
        (["--bandwidth", "0"], "must be between 1 B/s"),
        (["--bandwidth", "-5GB/s"], "must be between 1 B/s"),
        (["--bandwidth", "16Gb/s"], "unknown unit 'Gb/s'"),
        (["--latency", "nan"], "bad latency 'nan': must be a finite number"),
        (["--latency", "inf"], "bad latency 'inf': must be a finite number"),
        (["--latency", "-1e-9"], "bad latency '-1e-9': must be >= 0"),
        (["--latency", "150 parsecs"], "unknown unit"),
        (["--sizes", "-1MiB"], "bad size '-1MiB': must be at least 1 byte"),
        (["--sizes=-1MiB"], "bad size '-1MiB': must be at least 1 byte"),
        (["--sizes", "64mib"], "unknown unit 'mib'"),
        (["--sizes", ","], "--sizes is empty"),
        (["--packet", "0"], "bad packet size '0'"),
        (["--cut-through", "--store-and-forward"], "exclude each other"),
        (["--store-and-forward", "--model", "flow"], "not with --model flow"),
        (["--nis", "x"], "bad --nis 'x'"),
        (["--nis", "0"], "bad --nis '0'"),
        (["--nis", "-2"], "bad --nis '-2'"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main([*FAST, *args]) == 2
    line = _one_line_error(capsys)
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_json_into_a_missing_directory(tmp_path, capsys):
    target = tmp_path / "missing" / "rows.json"
    assert main([*FAST, "--json", str(target)]) == 2
    line = _one_line_error(capsys)
    assert "--json" in line and "does not exist" in line, line
    assert not (tmp_path / "missing").exists()  # not created either
    assert main([*FAST, "--json", str(tmp_path)]) == 2  # a directory
    assert "is a directory" in _one_line_error(capsys)


def test_json_is_written_atomically(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "rows.json"
    target.write_text("old")
    assert main([*FAST, "--json", str(target), "--bandwidth", "100Gbit/s", "--latency", "1us"]) == 0
    doc = json.loads(target.read_text())
    assert doc["interconnect"]["link_bandwidth"] == pytest.approx(12.5e9)
    assert doc["interconnect"]["link_latency"] == pytest.approx(1e-6)
    assert [r["size"] for r in doc["rows"]] == [1024, 2048, 4096]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]  # no temporary left, no plot
    assert str(target) in capsys.readouterr().out


def test_json_write_failure_is_one_line(tmp_path, capsys, monkeypatch):
    def fail(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", fail)
    target = tmp_path / "rows.json"
    assert main([*FAST, "--json", str(target)]) == 2
    assert "cannot write --json" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed


def test_no_plot_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(FAST) == 0
    assert list(tmp_path.iterdir()) == []  # no collectives.png in the current directory
    assert "ring" in capsys.readouterr().out
    png = tmp_path / "c.png"
    assert main([*FAST, "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]


@pytest.mark.parametrize(
    "plot,expected",
    [("missing/c.png", "does not exist"), ("c.xyz", "unknown image format '.xyz'"), (".", "not a file name")],
)
def test_bad_plot_paths(tmp_path, capsys, monkeypatch, plot, expected):
    monkeypatch.chdir(tmp_path)
    assert main([*FAST, "--plot", plot]) == 2
    assert expected in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_help_says_a_plain_bandwidth_is_bytes_per_second():
    p = subprocess.run(
        [sys.executable, "-m", "distsgd.cli", "collectives", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert p.returncode == 0
    assert "a plain number is bytes/s" in p.stdout and "100Gbit/s" in p.stdout
    assert "collectives.png" not in p.stdout


def test_bandwidth_inf_from_the_shell_is_one_line(tmp_path):
    """The original report: a ZeroDivisionError traceback from `--bandwidth inf`."""
    p = subprocess.run(
        [sys.executable, "-m", "distsgd.cli", *FAST, "--bandwidth", "inf"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == "distsgd: error: bad bandwidth 'inf': must be a finite number"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("collective", ["reduce_scatter", "allgather", "broadcast"])
def test_other_collectives_and_their_bounds(tmp_path, capsys, collective):
    target = tmp_path / "rows.json"
    args = ["collectives", "--topology", "ring:4", "--sizes", "64KiB", "--collective", collective]
    args += ["--json", str(target), "--root", "2" if collective == "broadcast" else "0"]
    assert main(args) == 0
    doc = json.loads(target.read_text())
    defaults = {"ring", "biring"} | ({"multitree"} if collective != "broadcast" else set())
    assert {r["algorithm"] for r in doc["rows"]} == defaults  # the default algorithms that apply here
    node_bw = doc["interconnect"]["node_bandwidth"]
    assert node_bw == 2 * 16e9  # 4 interfaces, but two network links out of a ring's router
    bound = {"broadcast": 1.0}.get(collective, 3 / 4) * 65536 / node_bw
    for r in doc["rows"]:
        assert r["collective"] == collective
        assert r["lower_bound_seconds"] == pytest.approx(bound)
        assert r["seconds"] >= bound
    title = {"reduce_scatter": "reduce-scatter", "allgather": "all-gather"}.get(collective, collective)
    assert f"{title} on ring:4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--collective", "gather"], "bad --collective 'gather' (choose from allreduce, reduce_scatter"),
        (["--collective", "broadcast", "--root", "4"], "bad --root '4': ring:4 has nodes 0..3"),
        (["--collective", "broadcast", "--root", "x"], "bad --root 'x'"),
        (["--root", "1"], "--root is for --collective broadcast only"),
        (
            ["--collective", "allgather", "--algorithms", "dbtree"],
            "dbtree has no allgather (choose from ring",
        ),
        (["--collective", "broadcast", "--algorithms", "multitree"], "multitree has no broadcast"),
        (["--algorithms", "multiring"], "multiring needs a torus"),
    ],
)
def test_bad_collective_options_give_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main([*FAST, *args]) == 2
    line = _one_line_error(capsys)
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []


def test_json_has_every_links_traffic_and_the_heatmap_is_written_only_where_asked(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    target, heat = tmp_path / "rows.json", tmp_path / "heat.png"
    args = ["collectives", "--topology", "torus:3x3", "--sizes", "64KiB", "--algorithms", "ring,multiring"]
    assert main([*args, "--json", str(target), "--timeline", "4", "--straggler", "1:2us"]) == 0
    doc = json.loads(target.read_text())
    links = doc["links"]
    assert len(links) == 9 * 4 * 2 + 9 * 4  # 4 NIs each way per node, 4 network links per router
    assert {lk["kind"] for lk in links} == {"injection", "ejection", "network"}
    assert links[0] == {
        "id": 0, "from": "node0", "to": "router0", "kind": "injection", "bandwidth": 16e9, "latency": 0.0
    }  # fmt: skip
    assert doc["stragglers"] == {"1": pytest.approx(2e-6)}
    for r in doc["rows"]:
        assert len(r["link_bytes"]) == len(r["link_utilization"]) == len(r["link_timeline"]) == len(links)
        assert max(r["link_utilization"]) == pytest.approx(r["busiest_link_utilization"])
        assert all(len(t) == 4 for t in r["link_timeline"])
        assert r["seconds"] > 2e-6
    multiring = next(r for r in doc["rows"] if r["algorithm"] == "multiring")
    assert all(b > 0 for b, lk in zip(multiring["link_bytes"], links, strict=True) if lk["kind"] == "network")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]  # no heat map unless asked
    assert main([*args, "--heatmap", str(heat)]) == 0
    assert heat.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png", "rows.json"]
    capsys.readouterr()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--heatmap", "missing/h.png"], "--heatmap 'missing/h.png': directory 'missing' does not exist"),
        (["--heatmap", "h.xyz"], "--heatmap 'h.xyz': unknown image format '.xyz'"),
        (["--timeline", "4"], "--timeline goes into the --json output"),
        (["--timeline", "0", "--json", "r.json"], "bad --timeline '0'"),
        (["--timeline", "x", "--json", "r.json"], "bad --timeline 'x'"),
        (["--straggler", "9:1us"], "bad --straggler '9:1us': node 9 is not one of 0..3"),
        (["--straggler", "1"], "bad --straggler '1' (use NODE:DELAY"),
        (["--straggler", "1:-1us"], "bad latency '-1us': must be >= 0"),
        (["--straggler", "1:1us,1:2us"], "node 1 twice"),
    ],
)
def test_bad_link_statistics_options_give_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main([*FAST, *args]) == 2
    line = _one_line_error(capsys)
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []
