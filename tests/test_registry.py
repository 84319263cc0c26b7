"""The registries: a user's own algorithm runs from TOML and Python alike, every entry has
one set of defaults whichever way it is built, and unknown names list the known ones."""

import dataclasses
import json
import tomllib
from typing import Annotated, ClassVar

import pytest
import torch
from pydantic import Field, ValidationError
from torch import nn

import distsgd
from distsgd.algorithms import ALGORITHMS, bind, options
from distsgd.api import make_algorithm
from distsgd.cli import main
from distsgd.compress import COMPRESSORS, make_compressor
from distsgd.config import build_algorithm, load_config, parse_config
from distsgd.registry import SpecError
from distsgd.robust import AGGREGATORS, ATTACK_REGISTRY, make_aggregator, make_attack
from distsgd.tasks import make_task
from distsgd.topology import TOPOLOGIES, Topology, TopologySpec, make_topology

TOY = "sign_descent_test"


@options
class SignDescentTest:
    """Sign descent on the all-reduced gradient (a test algorithm)."""

    buffer_policy: ClassVar[str] = "average"

    lr: Annotated[float, Field(gt=0, description="step size")] = 0.01
    scale: Annotated[float, Field(gt=0, le=10, description="multiplies the step")] = 1.0
    name: str = TOY

    def init(self, x0, comm):
        return {"x": x0.clone(), "t": 0}

    def step(self, state, oracle, comm):
        g = comm.all_reduce_mean(oracle(state["x"]))
        return {"x": state["x"].sub_(g.sign(), alpha=self.lr * self.scale), "t": state["t"] + 1}


@pytest.fixture
def sign_descent():
    assert TOY not in ALGORITHMS
    ALGORITHMS.register(factory=SignDescentTest, paper="a test")
    try:
        yield SignDescentTest
    finally:
        ALGORITHMS.unregister(TOY)


CONFIG = f"""
name = "toy"
n_workers = 4
steps = 4
eval_every = 2
[task]
dataset = "digits"
model = "linear"
batch_size = 8
[algorithm]
name = "{TOY}"
lr = 0.02
scale = 2.0
"""


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_registered_algorithm_runs_from_toml(sign_descent, tmp_path, capsys):
    entry = ALGORITHMS.entry(TOY)
    assert TOY in ALGORITHMS.names() and entry.factory is SignDescentTest
    assert [(o.name, o.default, o.required) for o in entry.options()] == [
        ("lr", 0.01, False),
        ("scale", 1.0, False),
    ]
    assert entry.summary == "Sign descent on the all-reduced gradient (a test algorithm)."

    cfg = tmp_path / "toy.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "toy" / "summary.json").read_text())
    assert summary["algorithm"] == {"lr": 0.02, "scale": 2.0, "name": TOY}
    assert summary["buffers"] == "average"
    rows = [json.loads(r) for r in (out / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]

    # the same run from Python: the config's task and the class itself
    task = make_task("digits", n_workers=4, model="linear", batch_size=8, seed=0)
    r = distsgd.train(task, SignDescentTest(lr=0.02, scale=2.0), steps=4, eval_every=2, seed=0)
    for a, b in zip(rows, r.metrics, strict=True):
        for k in ("batch_loss", "train_loss", "test_acc", "bytes_sent_per_worker", "sim_seconds"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k


def test_a_registered_algorithm_runs_from_simulate_by_name_and_table(sign_descent):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    x0 = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    for spec, step in [(TOY, 0.01), ({"name": TOY, "lr": 0.05, "scale": 3}, 0.15)]:
        r = distsgd.simulate(model, (x, y), algorithm=spec, workers=4, batch_size=8, steps=3, seed=1)
        assert r.summary["algorithm"]["name"] == TOY
        moved = (r.state["x"] - x0).abs()
        assert moved.max() <= 3 * step + 1e-6 and moved.max() >= 3 * step - 1e-6  # whole sign steps
        assert r.state["x"].std(0).max() == 0  # one model


@pytest.mark.parametrize(
    "edit,expected",
    [
        (("scale = 2.0", 'scale = "big"'), "algorithm.scale: Input should be a valid number"),
        (("scale = 2.0", "scale = 20"), "algorithm.scale: Input should be less than or equal to 10 (got 20)"),
        (("scale = 2.0", "scael = 2.0"), "algorithm.scael: unknown option"),
        (("lr = 0.02", "lr = 0"), "algorithm.lr: Input should be greater than 0 (got 0)"),
    ],
)
def test_a_registered_algorithms_options_are_validated(sign_descent, tmp_path, capsys, edit, expected):
    cfg = tmp_path / "toy.toml"
    cfg.write_text(CONFIG.replace(*edit))
    out = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    line = _stderr_line(capsys)
    assert line.startswith("distsgd: error: ") and expected in line, line
    assert not out.exists()


def test_a_registered_algorithms_options_in_python(sign_descent):
    with pytest.raises(ValidationError):
        SignDescentTest(scale="big")
    with pytest.raises(distsgd.UserError, match=r"^algorithm: scale: Input should be a valid number"):
        make_algorithm({"name": TOY, "scale": "big"})
    with pytest.raises(
        distsgd.UserError, match=r"^algorithm: scale: Input should be less than or equal to 10"
    ):
        make_algorithm({"name": TOY, "scale": 11})
    assert make_algorithm(TOY) == SignDescentTest()


def test_register_and_unregister(sign_descent):
    ALGORITHMS.register(factory=SignDescentTest)  # the same factory again: no change
    assert ALGORITHMS.names().count(TOY) == 1

    @options
    class Other:
        lr: float = 0.1
        name: str = TOY

    with pytest.raises(ValueError, match=f"algorithm '{TOY}' is already registered"):
        ALGORITHMS.register(factory=Other)
    assert ALGORITHMS.entry(TOY).factory is SignDescentTest
    ALGORITHMS.unregister(TOY)
    assert TOY not in ALGORITHMS.names()
    with pytest.raises(distsgd.UserError, match=f"unknown algorithm '{TOY}'"):
        make_algorithm(TOY)


def test_the_toy_is_gone_after_its_fixture():
    assert TOY not in ALGORITHMS.names()


# ---- one set of defaults -----------------------------------------------------------------
def _norm(v):
    """A comparable form of an algorithm and what it holds (compressors and topologies
    compare by content, not identity)."""
    if isinstance(v, Topology):
        return ("Topology", v.name, v.mixing_kind, v.mixing.tolist())
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, {f.name: _norm(getattr(v, f.name)) for f in dataclasses.fields(v)})
    if isinstance(v, list | tuple):
        return type(v)(_norm(x) for x in v)
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if hasattr(v, "__dict__") and not isinstance(v, type):
        return (type(v).__name__, _norm(vars(v)))
    return v


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_toml_table_python_constructor_and_registry_defaults_agree(name):
    entry = ALGORITHMS.entry(name)
    cls = entry.factory
    assert getattr(distsgd, cls.__name__) is cls  # the class is exported
    n, seed, lr = 8, 3, 0.05
    cfg = parse_config(
        tomllib.loads(f'n_workers = {n}\nseed = {seed}\n[algorithm]\nname = "{name}"\nlr = {lr}\n')
    )
    from_toml = bind(build_algorithm(cfg.algorithm), n, seed)
    from_python = bind(cls(**entry.preset, lr=lr), n, seed)
    from_api = bind(make_algorithm({"name": name, "lr": lr}), n, seed)
    documented = {o.name: o.default for o in entry.options() if not o.required}
    from_docs = bind(cls(**entry.preset, lr=lr, **documented), n, seed)
    assert _norm(from_toml) == _norm(from_python) == _norm(from_api) == _norm(from_docs)


# ---- unknown names -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,known,build",
    [
        ("algorithm", ALGORITHMS.names(), lambda: build_algorithm("nope")),
        ("compressor", COMPRESSORS.names(), lambda: make_compressor("nope")),
        ("aggregator", AGGREGATORS.names(), lambda: make_aggregator("nope", f=1)),
        ("attack", ATTACK_REGISTRY.names(), lambda: make_attack("nope")),
        ("topology", list(TOPOLOGIES), lambda: TopologySpec.parse("nope")),
    ],
)
def test_unknown_names_list_the_known_ones(kind, known, build):
    with pytest.raises(ValueError) as e:
        build()
    msg = str(e.value)
    assert "\n" not in msg and f"unknown {kind} 'nope' (choose from {', '.join(known)})" in msg, msg


@pytest.mark.parametrize(
    "algorithm,expected",
    [
        (
            {"name": "nope", "lr": 0.1},
            "unknown algorithm 'nope' (choose from " + ", ".join(ALGORITHMS.names()),
        ),
        (
            {"name": "choco_sgd", "lr": 0.1, "compressor": "nope"},
            "unknown compressor 'nope' (choose from " + ", ".join(COMPRESSORS.names()),
        ),
        (
            {"name": "robust_sgd", "lr": 0.1, "f": 1, "aggregator": "nope"},
            "unknown aggregator 'nope' (choose from " + ", ".join(AGGREGATORS.names()),
        ),
        (
            {"name": "robust_sgd", "lr": 0.1, "f": 1, "attack": "nope"},
            "unknown attack 'nope' (choose from " + ", ".join(ATTACK_REGISTRY.names()),
        ),
        (
            {"name": "dpsgd", "lr": 0.1, "topology": "nope"},
            "unknown topology 'nope' (choose from " + ", ".join(TOPOLOGIES),
        ),
    ],
    ids=["algorithm", "compressor", "aggregator", "attack", "topology"],
)
def test_unknown_names_in_a_config_list_the_known_ones(tmp_path, algorithm, expected):
    with pytest.raises(distsgd.UserError) as e:
        parse_config({"n_workers": 8, "algorithm": algorithm})
    msg = str(e.value)
    assert "\n" not in msg and expected in msg, msg
    lines = ["n_workers = 8", "[algorithm]"] + [f"{k} = {json.dumps(v)}" for k, v in algorithm.items()]
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(distsgd.UserError, match="choose from"):
        load_config(tmp_path / "c.toml")


def test_make_topology_unknown_name():
    with pytest.raises(
        distsgd.UserError, match="unknown topology 'nope' \\(choose from " + ", ".join(TOPOLOGIES)
    ):
        make_topology("nope", 4)


# ---- shorthands --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "short,table",
    [
        ("topk:0.01", {"name": "topk", "ratio": 0.01}),
        ("randk:0.1", {"name": "randk", "ratio": 0.1}),
        ("qsgd:7", {"name": "qsgd", "levels": 7}),
    ],
)
def test_compressor_shorthand_equals_the_table(short, table):
    a, b = make_compressor(short), make_compressor(table)
    assert type(a) is type(b) and _norm(a) == _norm(b)
    assert _norm(distsgd.ChocoSGD(lr=0.1, compressor=short)) == _norm(
        distsgd.ChocoSGD(lr=0.1, compressor=table)
    )
    assert _norm(build_algorithm({"name": "choco_sgd", "lr": 0.1, "compressor": short})) == _norm(
        build_algorithm({"name": "choco_sgd", "lr": 0.1, "compressor": table})
    )


def test_other_shorthands_equal_their_tables():
    assert make_compressor("topk:0.01").ratio == 0.01 and make_compressor("qsgd:7").levels == 7
    assert make_attack("alie:1.5") == make_attack({"name": "alie", "scale": 1.5})
    assert TopologySpec.parse("random_regular:4") == TopologySpec.parse(
        {"name": "random_regular", "degree": 4}
    )
    with pytest.raises(SpecError, match="compressor 'sign' takes no 'name:value' shorthand; use a table"):
        make_compressor("sign:3")
    with pytest.raises(SpecError, match=r"compressor 'topk': unknown option 'ratioo' \(options: k, ratio\)"):
        make_compressor({"name": "topk", "ratioo": 0.1})
