import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_error_line, write_config

from distsgd.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

GOOD = """
name = "tiny"
n_workers = 4
steps = 30
eval_every = 10
checkpoint_every = 15
[task]
dataset = "digits"
model = "linear"
batch_size = 8
[algorithm]
name = "dpsgd"
lr = 0.1
[algorithm.topology]
name = "ring"
"""


DPSGD_TABLE = 'name = "dpsgd"\nlr = 0.1\n[algorithm.topology]\nname = "ring"'


def _write(tmp_path, text, name="cfg.toml"):
    return write_config(tmp_path, text, name)


_err = one_error_line


@pytest.mark.parametrize(
    "edit,expected",
    [
        (('name = "dpsgd"', 'name = "adamw_sgd"'), "unknown algorithm 'adamw_sgd'"),
        (("lr = 0.1", "lr = -0.1"), "algorithm.lr: Input should be greater than 0"),
        (('name = "ring"', 'name = "moebius"'), "algorithm.topology: unknown topology 'moebius'"),
        (("n_workers = 4", "n_workers = 4\nbogus = 1"), "bogus: unknown key"),
        (("batch_size = 8", "batch_size = 8\nmomentum = 0.9"), "task.momentum: unknown key"),
        (("[algorithm.topology]", "[algorithm.topology"), "invalid TOML"),
        (('name = "ring"', 'name = "torus"'), "2x2 torus"),  # does not fit n = 4
        (("n_workers = 4", "n_workers = 0"), "n_workers: Input should be greater than or equal to 1"),
        (("batch_size = 8", "batch_size = 900"), "fewer than batch_size=900"),
        (  # the geometric median has no guarantee for 2 Byzantine workers of 4
            (
                DPSGD_TABLE,
                'name = "robust_sgd"\nlr = 0.1\nf = 2\n[algorithm.aggregator]\nname = "geomed"',
            ),
            "geomed has no guarantee for n=4, f=2: it needs f < n/2",
        ),
        (
            (
                DPSGD_TABLE,
                'name = "robust_sgd"\nlr = 0.1\nf = 1\n[algorithm.aggregator]\nname = "krum"',
            ),
            "krum has no guarantee for n=4, f=1: it needs n > 2f + 2",
        ),
        (
            (
                DPSGD_TABLE,
                'name = "robust_gossip"\nlr = 0.1\nf = 1\n[algorithm.attack]\nkind = "adaptive"',
            ),
            "adaptive attack targets one server aggregator",
        ),
        (
            (
                DPSGD_TABLE,
                'name = "robust_sgd"\nlr = 0.1\n[algorithm.aggregator]\nname = "bgmd"\nmemory = "rows"',
            ),
            "algorithm: aggregator 'bgmd': bgmd memory must be 'mean', 'worker' or 'none', got 'rows'",
        ),
        (  # an even Metropolis ring has λ_min = −1/3 exactly
            ('name = "dpsgd"\nlr = 0.1', 'name = "d2"\nlr = 0.1\nlazy = false'),
            "D² needs λ_min(W) > −1/3",
        ),
    ],
)
def test_bad_configs_give_one_line_and_exit_2(tmp_path, capsys, edit, expected):
    text = GOOD.replace(*edit)
    code = main(["run", _write(tmp_path, text), "--out", str(tmp_path / "runs"), "--quiet"])
    assert code == 2
    line = _err(capsys)
    assert line.startswith("distsgd: error: ") and expected in line, line
    assert not (tmp_path / "runs" / "tiny" / "summary.json").exists()


def test_unreadable_or_missing_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in _err(capsys)
    assert main(["run", str(tmp_path)]) == 2  # a directory
    assert "cannot read config file" in _err(capsys)
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["run", str(p)]) == 2
    assert "cannot read config file" in _err(capsys)


def test_n_not_divisible_by_the_world_size(tmp_path):
    cfg = _write(tmp_path, GOOD.replace("n_workers = 4", "n_workers = 6"))
    env = {**os.environ, "WORLD_SIZE": "4", "RANK": "0"}
    p = subprocess.run(
        [sys.executable, "-m", "distsgd.cli", "run", cfg, "--backend", "torch"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == "distsgd: error: rank 0: n_workers=6 is not divisible by the world size 4"


def test_run_resume_and_plot(tmp_path, capsys):
    cfg = _write(tmp_path, GOOD)
    out = tmp_path / "runs"
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    run_dir = out / "tiny"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert (run_dir / "checkpoint.pt").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algorithm"]["topology"]["spectral_gap"] > 0
    assert main(["run", cfg, "--out", str(out), "--quiet", "--resume"]) == 0  # from step 30: no-op
    assert main(["plot", str(run_dir), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in _err(capsys)
    assert main(["run", _write(tmp_path, GOOD.replace("tiny", "other"), "o.toml"), "--resume"]) == 2


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")))
def test_example_configs_validate(path):
    from distsgd.config import build, load_config

    cfg = load_config(path)
    task, algo, net = build(cfg)
    assert task.n == cfg.n_workers


def test_collectives_command(tmp_path, capsys):
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    code = main(
        [
            "collectives",
            "--topology",
            "torus:4x4",
            "--algorithms",
            "ring2d,multitree",
            "--sizes",
            "64KiB..256KiB",
            "--plot",
            str(png),
            "--json",
            str(js),
        ]
    )
    assert code == 0
    rows = json.loads(js.read_text())["rows"]
    assert {r["algorithm"] for r in rows} == {"ring", "ring2d", "multitree"}  # ring added as baseline
    assert [r["size"] for r in rows if r["algorithm"] == "ring"] == [65536, 131072, 262144]
    assert all(r["ratio_to_bound"] >= 1 for r in rows) and png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "multitree" in out and "x bound" in out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--topology", "torus:4"], "bad topology"),
        (["--topology", "hypertorus:4x4"], "bad topology"),
        (["--sizes", "64MiB..1KiB"], "first size is larger"),
        (["--sizes", "12 parsecs"], "bad size"),
        (["--algorithms", "ring,butterfly"], "unknown all-reduce algorithm 'butterfly'"),
        (["--topology", "switch:8", "--algorithms", "ring2d"], "ring2d needs a mesh or torus"),
    ],
)
def test_collectives_errors(tmp_path, capsys, args, expected):
    assert main(["collectives", "--plot", str(tmp_path / "x.png"), *args]) == 2
    line = _err(capsys)
    assert expected in line, line
    assert not (tmp_path / "x.png").exists()


def _final(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["config"], {k: v for k, v in summary["final"].items() if k != "wall_seconds"}


def test_overrides_equal_the_same_edit_in_the_file(tmp_path):
    from distsgd.config import load_config

    sets = ["-s", "algorithm.lr=0.05", "-s", "n_workers=9", "-s", "task.batch_size=4", "-s", "algorithm.topology=torus"]
    sets += ["-s", "~checkpoint_every", "-s", "+network.latency=1e-3"]
    assert main(["run", _write(tmp_path, GOOD), "--out", str(tmp_path / "a"), "--quiet", *sets]) == 0
    edited = (
        GOOD.replace("lr = 0.1", "lr = 0.05")
        .replace("n_workers = 4", "n_workers = 9")
        .replace("batch_size = 8", "batch_size = 4")
        .replace('[algorithm.topology]\nname = "ring"', 'topology = "torus"\n[network]\nlatency = 1e-3')
        .replace("checkpoint_every = 15\n", "")
    )
    assert main(["run", _write(tmp_path, edited, "edited.toml"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a, b = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
    assert _final(a) == _final(b)
    cfg_a = _final(a)[0]
    assert cfg_a["algorithm"] == {"name": "dpsgd", "lr": 0.05, "topology": "torus"} and cfg_a["n_workers"] == 9
    assert not (a / "checkpoint.pt").exists()
    # the effective config is the whole config: loading it gives the run's config back
    assert load_config(a / "config.toml").model_dump() == load_config(tmp_path / "edited.toml").model_dump()
    assert not list(a.glob(".*tmp*"))  # written by rename, no temporary left
    assert set(json.loads((a / "environment.json").read_text())) >= {"python", "torch", "torch_build", "cores"}


def test_override_values_read_as_toml():
    from distsgd.overrides import parse_override

    assert parse_override("task.hidden=[64,64]").value == [64, 64]
    assert parse_override('algorithm.compressor="topk:0.01"').value == "topk:0.01"
    assert parse_override("algorithm.compressor=topk:0.01").value == "topk:0.01"  # not TOML: a string
    assert parse_override("task.dataset=digits").value == "digits"
    assert parse_override("compile=true").value is True and parse_override("algorithm.lr=.5").value == 0.5
    assert parse_override("algorithm.topology={name='ring', mixing='uniform'}").value == {
        "name": "ring",
        "mixing": "uniform",
    }


@pytest.mark.parametrize(
    "override,expected",
    [
        ("bogus=1", "with -s bogus=1: bogus: unknown key"),
        ("algorithm.momentun=0.9", "with -s algorithm.momentun=0.9: algorithm.momentun: unknown option"),
        ("n_workers=abc", "with -s n_workers=abc: n_workers: Input should be a valid integer (got 'abc')"),
        ("algorithm.lr=fast", "algorithm.lr: Input should be a valid number (got 'fast')"),
        ("task.batch_size=[8]", "task.batch_size: Input should be a valid integer"),
        ("task.dataset.size=1", "-s task.dataset.size=1: task.dataset is 'digits', not a table"),
        ("~task.nothing", "-s ~task.nothing: task.nothing is not in the config"),
        ("algorithm..lr=1", "bad override 'algorithm..lr=1'"),
        ("algorithm.lr", "expected KEY.PATH=VALUE"),
    ],
)
def test_bad_overrides_give_one_line_and_exit_2(tmp_path, capsys, override, expected):
    out = tmp_path / "runs"
    assert main(["run", _write(tmp_path, GOOD), "--out", str(out), "--quiet", "-s", override]) == 2
    line = _err(capsys)
    assert line.startswith("distsgd: error: ") and expected in line, line
    assert not out.exists()


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"distsgd {version('distsgd')}"


def test_tensorboard_gets_every_metrics_row(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    assert main(["run", _write(tmp_path, GOOD), "--out", str(out), "--quiet", "--tensorboard"]) == 0
    rows = [json.loads(x) for x in (out / "tiny" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tiny" / "tensorboard"))
    events.Reload()
    acc = events.Scalars("test/acc")
    assert [e.step for e in acc] == [r["step"] for r in rows]
    assert [e.value for e in acc] == pytest.approx([r["test_acc"] for r in rows])
    assert "cost/bytes_sent_per_worker" in events.Tags()["scalars"]


def test_tensorboard_missing_is_one_line_with_the_pip_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    out = tmp_path / "runs"
    assert main(["run", _write(tmp_path, GOOD), "--out", str(out), "--quiet", "--tensorboard"]) == 2
    assert "pip install tensorboard" in _err(capsys)
    assert not out.exists()


def test_the_effective_config_writer_round_trips_through_tomllib():
    import tomllib

    from distsgd.overrides import to_toml

    data = {
        "name": 'q"uo\\te\n\ttab\x7f\x01é',
        "lr": -2.5e-7,
        "big": 1e30,
        "flag": False,
        "n": 3,
        "weird key": [1, [2.5, 3], {"x": "y"}],
        "task": {"hidden": [64, 64], "sub": {"milestones": [0.5, 0.75]}, "only": {"deep": {"z": "w"}}},
    }
    assert tomllib.loads(to_toml(data)) == data
