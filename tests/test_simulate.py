"""`distsgd.simulate` on the user's own model and data: exactness against plain torch,
buffers (BatchNorm), map-style datasets, frozen parameters, one-line errors, user code
from a TOML config, and the own-model examples."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import distsgd
from distsgd.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N, B, SEED = 4, 8, 3


def _data(n=160, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return x, (x @ w).argmax(1)


def _mlp(bn=False, seed=0, features=6, classes=3):
    torch.manual_seed(seed)
    layers = (
        [nn.Linear(features, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh(), nn.Linear(16, classes)]
    )
    return nn.Sequential(*layers)


def _batches(train, n=N, b=B, seed=SEED):
    """Each worker's batch sequence, exactly as simulate draws them."""
    shards = distsgd.partition(train, n, "iid", seed=seed, batch_size=b)
    return [iter(distsgd.WorkerBatchSampler(shards[i], b, seed=seed, worker=i)) for i in range(n)]


def _one_line(err) -> str:
    msg = str(err)
    assert msg and "\n" not in msg, msg
    return msg


# ---- exactness ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 1e-2, False), (0.9, 1e-2, True)]
)
def test_allreduce_sgd_equals_torch_sgd_on_the_concatenated_batch(momentum, weight_decay, nesterov):
    x, y = _data()
    train = TensorDataset(x, y)
    model, steps, lr = _mlp(), 8, 0.2
    ref = copy.deepcopy(model)
    algorithm = distsgd.AllReduceSGD(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    r = distsgd.simulate(model, train, algorithm=algorithm, workers=N, batch_size=B, steps=steps, seed=SEED)

    opt = torch.optim.SGD(
        ref.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    batches = _batches(train)
    for _ in range(steps):
        idx = torch.tensor([i for it in batches for i in next(it)])
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()

    got = dict(r.model().named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(got[name], p, atol=1e-5, rtol=0)
        assert not torch.equal(p, dict(model.named_parameters())[name])  # it trained
    assert r.state["x"].std(0).max() == 0  # one model on every worker


def test_identical_workers_report_zero_consensus_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 32, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    r = distsgd.simulate(
        model,
        (x, y),
        (x[:30], y[:30]),
        algorithm=distsgd.AllReduceSGD(lr=0.1),
        workers=3,
        batch_size=8,
        steps=2,
        eval_every=1,
    )
    assert torch.equal(r.state["x"], r.state["x"][:1].expand_as(r.state["x"]))  # one model on every worker
    assert [row["consensus_distance"] for row in r.metrics] == [0.0, 0.0]
    assert not any(k.startswith("worker0_") for row in r.metrics for k in row)


def test_tied_weights_train_as_one_parameter():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    model[2].weight = model[0].weight
    ref = copy.deepcopy(model)
    r = distsgd.simulate(
        model, (x, y), algorithm=distsgd.AllReduceSGD(lr=0.2), workers=N, batch_size=B, steps=5, seed=SEED
    )
    assert "2.weight" not in r.workers.flat.names
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    batches = _batches(TensorDataset(x, y))
    for _ in range(5):
        idx = torch.tensor([i for it in batches for i in next(it)])
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    got = r.model()
    assert got[2].weight is got[0].weight
    for (name, p), q in zip(got.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


# ---- buffers (BatchNorm statistics) ------------------------------------------------------
def _ghost_batchnorm_reference(model, x, y, steps, lr, policy):
    """n copies of the model with shared parameters, each normalizing and tracking
    statistics on its own worker's batch; the mean gradient updates the shared parameters
    (AllReduce-SGD); with policy "average" the copies' float buffers are averaged each step."""
    master = copy.deepcopy(model)
    copies = [copy.deepcopy(model) for _ in range(N)]
    batches = _batches(TensorDataset(x, y))
    for _ in range(steps):
        grads = []
        for c, it in zip(copies, batches, strict=True):
            idx = torch.tensor(next(it))
            with torch.no_grad():
                for pc, pm in zip(c.parameters(), master.parameters(), strict=True):
                    pc.copy_(pm)
            c.zero_grad()
            F.cross_entropy(c(x[idx]), y[idx]).backward()
            grads.append([p.grad for p in c.parameters()])
        with torch.no_grad():
            for k, pm in enumerate(master.parameters()):
                pm.sub_(lr * torch.stack([g[k] for g in grads]).mean(0))
            if policy == "average":
                for name, b in master.named_buffers():
                    if b.is_floating_point():
                        mean = torch.stack([dict(c.named_buffers())[name] for c in copies]).mean(0)
                        for c in copies:
                            dict(c.named_buffers())[name].copy_(mean)
    return master, copies


@pytest.mark.parametrize("policy", ["average", "local"])
def test_batchnorm_buffers_average_or_local_match_per_worker_copies(policy):
    x, y = _data()
    model, steps, lr = _mlp(bn=True), 5, 0.1
    r = distsgd.simulate(
        model,
        (x, y),
        algorithm=distsgd.AllReduceSGD(lr=lr),
        workers=N,
        batch_size=B,
        steps=steps,
        seed=SEED,
        buffers=policy,
    )
    assert r.summary["buffers"] == policy
    master, copies = _ghost_batchnorm_reference(model, x, y, steps, lr, policy)
    sim = r.workers.buffers
    assert set(sim) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for name in ("1.running_mean", "1.running_var"):
        for i, c in enumerate(copies):  # worker i's statistics are those of a plain copy fed its batches
            torch.testing.assert_close(sim[name][i], dict(c.named_buffers())[name], atol=1e-5, rtol=0)
        same = all(torch.equal(sim[name][0], sim[name][i]) for i in range(1, N))
        assert same == (policy == "average"), name
    assert sim["1.num_batches_tracked"].tolist() == [steps] * N
    got = dict(r.model().named_parameters())
    for name, p in master.named_parameters():
        torch.testing.assert_close(got[name], p, atol=1e-5, rtol=0)


def test_default_buffer_policy_is_the_algorithms():
    x, y = _data()
    runs = {
        "average": distsgd.AllReduceSGD(lr=0.1),
        "local": distsgd.DPSGD(lr=0.1),
    }
    for policy, algorithm in runs.items():
        r = distsgd.simulate(_mlp(bn=True), (x, y), algorithm=algorithm, workers=N, batch_size=B, steps=2)
        assert r.summary["buffers"] == policy
        mean = r.workers.buffers["1.running_mean"]
        assert all(torch.equal(mean[0], mean[i]) for i in range(N)) == (policy == "average")
    assert distsgd.runner.buffer_policy(distsgd.LocalSGD(lr=0.1), None) == "local"
    assert distsgd.runner.buffer_policy(distsgd.Signum(lr=0.1), None) == "average"
    with pytest.raises(distsgd.UserError, match="buffers must be 'average' or 'local'"):
        distsgd.simulate(
            _mlp(bn=True),
            (x, y),
            algorithm=distsgd.DPSGD(lr=0.1),
            workers=N,
            batch_size=B,
            steps=1,
            buffers="shared",
        )


# ---- datasets ----------------------------------------------------------------------------
class PairDataset(Dataset):
    """A plain map-style dataset: (tensor, int) items, no fast path."""

    def __init__(self, x, y, with_targets=False):
        self.x, self.y = x, y
        if with_targets:
            self.targets = y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i].clone(), int(self.y[i])


@pytest.mark.parametrize("partition", ["iid", "dirichlet:1.0"])
def test_any_map_style_dataset_equals_the_tensor_fast_path(partition):
    x, y = _data(seed=1)
    xt, yt = _data(n=60, seed=2)
    results = []
    for train, test in [
        (TensorDataset(x, y), TensorDataset(xt, yt)),
        (PairDataset(x, y, with_targets=True), PairDataset(xt, yt)),
    ]:
        results.append(
            distsgd.simulate(
                _mlp(bn=True),
                train,
                test,
                algorithm=distsgd.DPSGD(lr=0.1, momentum=0.9),
                workers=N,
                batch_size=B,
                steps=6,
                eval_every=3,
                partition=partition,
                seed=SEED,
            )
        )
    fast, slow = results
    torch.testing.assert_close(slow.state["x"], fast.state["x"], atol=1e-6, rtol=0)
    for name, b in fast.workers.buffers.items():
        torch.testing.assert_close(slow.workers.buffers[name], b, atol=1e-6, rtol=0)
    for a, b in zip(fast.metrics, slow.metrics, strict=True):
        for k in ("batch_loss", "train_loss", "train_acc", "test_loss", "test_acc"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_a_dataset_without_targets_cannot_be_label_partitioned():
    x, y = _data()
    with pytest.raises(distsgd.UserError, match="needs integer class labels") as e:
        distsgd.simulate(
            _mlp(),
            PairDataset(x, y),
            algorithm=distsgd.DPSGD(lr=0.1),
            workers=N,
            batch_size=B,
            steps=1,
            partition="dirichlet:0.5",
        )
    _one_line(e.value)


# ---- frozen parameters, the averaged model -----------------------------------------------
def test_frozen_parameters_stay_and_model_is_the_average():
    x, y = _data()
    xt, yt = _data(n=60, seed=5)
    model = _mlp(bn=True)
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model)
    r = distsgd.simulate(
        model,
        (x, y),
        (xt, yt),
        algorithm=distsgd.DPSGD(lr=0.2, momentum=0.9),
        workers=N,
        batch_size=B,
        steps=6,
        seed=SEED,
    )
    assert "0.weight" not in r.workers.flat.names
    assert r.summary["task"]["parameters"] == sum(p.numel() for p in model.parameters()) - 6 * 16
    # simulate leaves the user's module as it was
    for (name, a), b in zip(model.state_dict().items(), before.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    avg = r.model()
    assert isinstance(avg, nn.Sequential) and avg is not model
    assert torch.equal(avg[0].weight, before[0].weight)  # frozen: not changed
    assert not torch.equal(avg[0].bias, before[0].bias)  # trainable: changed
    assert r.state["x"].std(0).max() > 0  # D-PSGD: the workers' models differ
    params = r.workers.flat.unflatten(r.state["x"].mean(0))
    for name, p in avg.named_parameters():
        if name in params:
            torch.testing.assert_close(p, params[name], atol=1e-6, rtol=0)
    for name, b in avg.named_buffers():
        w = r.workers.buffers[name]
        torch.testing.assert_close(b, w.float().mean(0).to(b.dtype) if b.is_floating_point() else w[0])
    # the averaged model reproduces the run's final test metrics
    avg.eval()
    with torch.no_grad():
        out = avg(xt)
    assert float((out.argmax(1) == yt).float().mean()) == pytest.approx(r.final["test_acc"], abs=1e-9)
    assert float(F.cross_entropy(out, yt)) == pytest.approx(r.final["test_loss"], abs=1e-5)


# ---- one-line errors ---------------------------------------------------------------------
class DataDependentIf(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # not vmappable: Python control flow on a tensor value
            return x
        return -x


class ItemInForward(nn.Module):
    def forward(self, x):
        return x * x.abs().max().item()  # not vmappable: .item()


def _gated(gate):
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(6, 8))
    net.add_module("gate", gate)
    net.add_module("fc2", nn.Linear(8, 3))
    return net


@pytest.mark.parametrize("gate", [DataDependentIf(), ItemInForward()], ids=["if", "item"])
def test_a_model_that_cannot_be_vmapped_is_one_clear_line(gate):
    x, y = _data()
    with pytest.raises(distsgd.UserError) as e:
        distsgd.simulate(
            _gated(gate), (x, y), algorithm=distsgd.AllReduceSGD(lr=0.1), workers=N, batch_size=B, steps=1
        )
    msg = _one_line(e.value)
    assert "cannot run in the stacked simulation" in msg
    assert f"submodule 'gate' ({type(gate).__name__})" in msg, msg
    assert "torch.where" in msg and "DistributedOptimizer" in msg


class RootIf(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else self.fc(-x)


def test_a_top_level_forward_that_cannot_be_vmapped_names_the_model():
    x, y = _data()
    with pytest.raises(distsgd.UserError) as e:
        distsgd.simulate(
            RootIf(), (x, y), algorithm=distsgd.AllReduceSGD(lr=0.1), workers=N, batch_size=B, steps=1
        )
    msg = _one_line(e.value)
    assert msg.startswith("the model RootIf cannot run in the stacked simulation (torch.func.vmap): ")
    assert "submodule" not in msg and "torch.where" in msg


def _frozen_model():
    m = _mlp()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize(
    "make,data,expected",
    [
        (_frozen_model, lambda: _data(), "has no trainable parameters"),
        (
            _mlp,
            lambda: (_data()[0][:, :4], _data()[1]),
            "cannot take a batch of the training set (inputs (8, 4))",
        ),
        (_mlp, lambda: (_data()[0], _data()[1][:100]), "inputs and targets differ in length"),
        (_mlp, lambda: (i for i in range(3)), "expected a map-style torch Dataset"),
        (_mlp, lambda: list(range(40)), "dataset items must be (input, target) pairs"),
        (lambda: nn.Linear(6, 3), lambda: (_data(n=20)[0], _data(n=20)[1]), "fewer than batch_size=8"),
    ],
    ids=["no-trainable", "input-shape", "lengths", "not-a-dataset", "not-pairs", "small-shards"],
)
def test_bad_user_input_is_one_line(make, data, expected):
    with pytest.raises(distsgd.UserError) as e:
        distsgd.simulate(
            make(), data(), algorithm=distsgd.AllReduceSGD(lr=0.1), workers=N, batch_size=B, steps=1
        )
    assert expected in _one_line(e.value)


def _labels_out_of_range(train_labels, test_labels=None):
    x, y = _data()
    test = (x[:10], test_labels) if test_labels is not None else None
    with pytest.raises(distsgd.UserError) as e:
        distsgd.simulate(
            _mlp(),
            (x, train_labels),
            test,
            algorithm=distsgd.AllReduceSGD(lr=0.1),
            workers=N,
            batch_size=B,
            steps=1,
        )
    return _one_line(e.value)


def test_labels_out_of_range_for_the_classifier():
    y = _data()[1]
    y_late = y.clone()
    y_late[-1] = 5  # outside the first (probe) batch
    assert "training labels span [0, 5] but the model has 3 outputs: labels must be in [0, 3)" in (
        _labels_out_of_range(y_late)
    )
    y_negative = y.clone()
    y_negative[-1] = -1
    assert "training labels span [-1, 2]" in _labels_out_of_range(y_negative)
    assert "test labels span [0, 7]" in _labels_out_of_range(y, torch.arange(10) % 8)


def test_out_of_range_labels_in_a_dataset_without_targets_are_a_user_error():
    x, y = _data()
    y = y.clone()
    y[-1] = 5  # outside the probe batch; every sample is drawn within 5 steps
    with pytest.raises(distsgd.UserError, match="label"):
        distsgd.simulate(
            _mlp(),
            PairDataset(x, y),
            algorithm=distsgd.AllReduceSGD(lr=0.1),
            workers=N,
            batch_size=B,
            steps=5,
        )


def test_a_loss_class_named_by_import_path_is_instantiated():
    x, y = _data()
    r = distsgd.simulate(
        _mlp(),
        (x, y),
        loss="torch.nn:CrossEntropyLoss",
        algorithm=distsgd.AllReduceSGD(lr=0.1),
        workers=N,
        batch_size=B,
        steps=2,
    )
    assert r.final["batch_loss"] > 0


def test_labels_out_of_range_in_the_first_batch_get_the_same_clear_message():
    y = _data()[1] + 2  # 2..4 for 3 outputs, in every batch
    assert "training labels span [2, 4] but the model has 3 outputs" in _labels_out_of_range(y)


@pytest.mark.parametrize(
    "algorithm,expected",
    [
        ({"name": "choco_sgd", "lr": -1}, "lr: Input should be greater than 0 (got -1)"),
        ({"name": "choco_sgd", "lr": "fast"}, "lr: Input should be a valid number"),
        ({"name": "choco_sgd", "lr": 0.1, "gamma": 2}, "gamma: Input should be less than or equal to 1"),
        ({"name": "choco_sgd", "lr": 0.1, "topology": "moebius"}, "unknown topology 'moebius'"),
        ({"name": "choco_sgd", "lr": 0.1, "compresor": "topk"}, "compresor: unknown option"),
        ({"name": "choco_sgd"}, "lr: required option is missing"),
        ("nope", "unknown algorithm 'nope' (choose from " + ", ".join(distsgd.ALGORITHMS.names()) + ")"),
    ],
)
def test_bad_algorithm_spec_is_one_line(algorithm, expected):
    x, y = _data()
    with pytest.raises(distsgd.UserError) as e:
        distsgd.simulate(_mlp(), (x, y), algorithm=algorithm, workers=N, batch_size=B, steps=1)
    msg = _one_line(e.value)
    assert msg.startswith("algorithm: ") and expected in msg, msg


def test_bad_algorithm_constructor_is_a_validation_error():
    with pytest.raises(ValidationError) as e:
        distsgd.ChocoSGD(lr="x")
    assert isinstance(e.value, ValueError) and "lr" in str(e.value)
    with pytest.raises(ValueError, match="greater than 0"):
        distsgd.ChocoSGD(lr=-1)
    with pytest.raises(ValueError, match="less than 1"):
        distsgd.AllReduceSGD(lr=0.1, momentum=1.0)


# ---- user code from a TOML config --------------------------------------------------------
USER_MODULE = """
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def _xy(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x @ torch.randn(6, 3, generator=torch.Generator().manual_seed(0))).argmax(1)


class TrainSet(Dataset):
    def __init__(self):
        self.x, self.targets = _xy(160, 1)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


test_set = TensorDataset(*_xy(60, 2))


def loss(out, y):
    return nn.functional.cross_entropy(out, y)
"""

USER_CONFIG = """
name = "mine"
n_workers = 4
steps = 6
eval_every = 3
[task]
model = "{module}:make_model"
train = "{module}:TrainSet"
test = "{module}:test_set"
loss = "{module}:loss"
partition = "dirichlet"
alpha = 1.0
batch_size = 8
[algorithm]
name = "dpsgd"
lr = 0.1
"""


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_runs_user_code_named_by_import_paths(tmp_path, capsys):
    (tmp_path / "usernets_ok.py").write_text(USER_MODULE)
    cfg = tmp_path / "conf" / "cfg.toml"
    cfg.parent.mkdir()
    shutil.move(tmp_path / "usernets_ok.py", cfg.parent / "usernets_ok.py")  # beside the config, not the cwd
    cfg.write_text(USER_CONFIG.format(module="usernets_ok"))
    out = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    rows = [json.loads(r) for r in (out / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(0 <= r["test_acc"] <= 1 for r in rows)
    summary = json.loads((out / "mine" / "summary.json").read_text())
    assert summary["task"]["dataset"] == "TrainSet" and summary["buffers"] == "local"
    assert summary["task"]["partition"] == "dirichlet:1.0"


BAD_MODULE = "raise RuntimeError('broken on purpose')\n"


@pytest.mark.parametrize(
    "edit,expected",
    [
        (
            ("usernets_bad:make_model", "no_such_module_xyz:make_model"),
            "task.model: cannot import module 'no_such_module_xyz'",
        ),
        (
            ("usernets_bad:make_model", "usernets_bad:make_modle"),
            "task.model: module 'usernets_bad' has no attribute 'make_modle'",
        ),
        (
            ("usernets_bad:TrainSet", "nocolon"),
            "task.train: expected an import path 'package.module:name', got 'nocolon'",
        ),
        (("usernets_bad:make_model", "nocolon"), "task: with train = an import path, model must be one too"),
        (("usernets_bad:loss", "usernets_bad:lost"), "loss: module 'usernets_bad' has no attribute 'lost'"),
        (('loss = "usernets_bad:loss"', 'loss = "hinge"'), "loss: unknown loss 'hinge'"),
        (
            ("usernets_bad:test_set", "usernets_broken:test_set"),
            "task.test: importing 'usernets_broken' failed: RuntimeError: broken on purpose",
        ),
        (("usernets_bad:make_model", "usernets_bad:_xy"), "task.model: calling '_xy' failed: TypeError"),
    ],
    ids=[
        "no-module",
        "no-attribute",
        "train-nocolon",
        "model-nocolon",
        "loss-attribute",
        "loss-name",
        "import-fails",
        "factory-fails",
    ],
)
def test_cli_bad_import_paths_are_one_line_exit_2(tmp_path, capsys, edit, expected):
    (tmp_path / "usernets_bad.py").write_text(USER_MODULE)
    (tmp_path / "usernets_broken.py").write_text(BAD_MODULE)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(USER_CONFIG.format(module="usernets_bad").replace(*edit))
    out = tmp_path / "runs"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    line = _stderr_line(capsys)
    assert line.startswith("distsgd: error: ") and expected in line, line
    assert not (out / "mine").exists()


# ---- the own-model examples --------------------------------------------------------------
def test_own_model_example_script_runs_small():
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "own_model_sim.py"), "--steps", "20", "--workers", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(line.startswith("AllReduce-SGD") and "average" in line for line in lines), p.stdout
    assert any(line.startswith("D-PSGD (ring)") and "local" in line for line in lines), p.stdout


def test_own_model_toml_runs_small(tmp_path):
    text = (EXAMPLES / "own_model.toml").read_text()
    assert "steps = 200" in text and "eval_every = 25" in text
    (tmp_path / "own_model.toml").write_text(
        text.replace("steps = 200", "steps = 6").replace("eval_every = 25", "eval_every = 3")
    )
    shutil.copy(EXAMPLES / "mynets.py", tmp_path / "mynets.py")
    out = tmp_path / "runs"
    assert main(["run", str(tmp_path / "own_model.toml"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "own_model" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["task"]["model"] == "DigitsCNN" and summary["buffers"] == "local"
    assert 0 <= summary["final"]["test_acc"] <= 1
