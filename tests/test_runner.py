import json

import torch

from distsgd import DPSGD, LocalSGD, NetworkModel, make_topology, train
from distsgd.tasks import make_task


def _task():
    return make_task("digits", n_workers=4, model="mlp", hidden=(16,), batch_size=8, seed=1)


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    task = _task()
    topo = make_topology("ring", 4)
    algo = DPSGD(lr=0.05, momentum=0.9, topology=topo)
    net = NetworkModel(straggler_prob=0.3, seed=4)  # the clock's generator must resume too

    def run(run_dir, **kw):
        return train(task, algo, steps=100, eval_every=10, network=net, seed=7, run_dir=run_dir, **kw)

    full = run(tmp_path / "full")
    part_dir = tmp_path / "part"
    run(part_dir, checkpoint_every=50, stop_after=60)  # dies at 60: rows 51..60 must be dropped
    resumed = run(part_dir, checkpoint_every=50, resume=True)
    assert torch.equal(full.state["x"], resumed.state["x"])
    assert torch.equal(full.state["momentum"], resumed.state["momentum"])
    rows_full = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    rows_res = [json.loads(x) for x in (part_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_res] == [r["step"] for r in rows_full]
    for a, b in zip(rows_full, rows_res, strict=True):
        for k in a:
            if k != "wall_seconds":
                assert a[k] == b[k], k
    summary = json.loads((part_dir / "summary.json").read_text())
    assert summary["finished"] and summary["traffic"] == full.summary["traffic"]
    assert (part_dir / "metrics.csv").read_text().count("\n") == 11  # header + 10 rows


def test_metrics_report_traffic_time_and_accuracy(tmp_path):
    task = _task()
    res = train(task, LocalSGD(lr=0.1, local_steps=5), steps=40, eval_every=20, run_dir=tmp_path)
    last = res.final
    assert last["step"] == 40 and 0.0 <= last["test_acc"] <= 1.0
    assert last["bytes_sent_per_worker"] == 8 * 2 * 3 / 4 * 4 * task.description["parameters"]
    assert last["sim_seconds"] > 0 and last["consensus_distance"] == 0.0  # averaged at step 40
    assert res.metrics[0]["consensus_distance"] == 0.0
    assert (tmp_path / "summary.json").exists() and (tmp_path / "metrics.csv").exists()


def test_training_reduces_the_loss():
    task = _task()
    res = train(task, DPSGD(lr=0.1, topology=make_topology("ring", 4)), steps=150, eval_every=50)
    assert res.metrics[-1]["train_loss"] < 0.6 * res.metrics[0]["train_loss"]
    assert res.metrics[-1]["test_acc"] > 0.8


def test_lr_schedules_scale_the_algorithms_lr():
    import math
    from dataclasses import dataclass

    from distsgd.lr_schedule import LRSchedule

    @dataclass(frozen=True)
    class Recorder:  # records the lr it is stepped with
        lr: float
        name: str = "recorder"

        def init(self, x0, comm):
            return {"x": x0.clone(), "lrs": []}

        def step(self, state, oracle, comm):
            oracle(state["x"])
            return {"x": state["x"], "lrs": state["lrs"] + [self.lr]}

    task = _task()
    steps = 20
    cases = {
        LRSchedule(): [2.0] * steps,
        LRSchedule("step", milestones=(0.25, 0.5), gamma=0.5): [2.0] * 5 + [1.0] * 5 + [0.5] * 10,
        LRSchedule("cosine", warmup=4): [2.0 * (t + 1) / 4 for t in range(4)]
        + [1.0 + math.cos(math.pi * (t - 4) / 16) for t in range(4, steps)],
    }
    for schedule, expected in cases.items():
        r = train(task, Recorder(lr=2.0), steps=steps, lr_schedule=schedule)
        assert all(math.isclose(a, b) for a, b in zip(r.state["lrs"], expected, strict=True))
    assert r.summary["lr_schedule"]["kind"] == "cosine"
