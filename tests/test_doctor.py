import importlib.util

import torch

from distsgd import doctor
from distsgd.cli import main


def _names(capsys):
    return capsys.readouterr().out


def test_doctor_checks_the_basics_and_says_what_is_optional(capsys):
    code = main(["doctor"])
    out = _names(capsys)
    for name in ("python", "torch", "gloo", "CUDA", "NCCL", "cores", "netem", "tensorboard"):
        assert name in out, name
    assert torch.__version__ in out
    assert code == 0 and "basics ok" in out


def test_missing_gloo_fails_with_a_fix(capsys, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    assert main(["doctor"]) == doctor.EXIT_MISSING == 1
    out = _names(capsys)
    assert "missing for every run: gloo" in out and "install a torch wheel" in out


def test_a_missing_optional_package_is_a_warning_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    check = next(c for c in doctor.checks() if c.name == "tensorboard")
    assert check.status == "warn" and check.fix == "pip install tensorboard"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert next(c for c in doctor.checks() if c.name == "matplotlib").status == "fail"


def test_netem_check_reports_missing_tools(monkeypatch):
    from distsgd import netem

    monkeypatch.setattr(netem, "missing_tools", lambda: ["tc"])
    c = doctor.check_netem()
    assert c.status == "warn" and "tc" in c.found and "iproute2" in c.fix
