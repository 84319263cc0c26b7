"""The machine a run ran on, as its run directory records it (environment.json)."""

from __future__ import annotations

import os
import platform


def version() -> str:
    """distsgd's installed version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("distsgd")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_build() -> str:
    import torch

    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return "CPU"


def environment() -> dict:
    import torch

    return {
        "distsgd": version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_build": torch_build(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
    }
