"""`distsgd doctor`: one screen on whether this machine has what a run needs, and how to fix
what it lacks.

Basic checks (a failure makes `distsgd doctor` exit with code 1): Python, torch, gloo
(torch.distributed on CPU), the packages every run and plot uses. Optional ones (a warning,
exit code 0): CUDA and NCCL (GPU runs), network namespaces and `tc` (`distsgd netem`,
bandwidth-limited runs on one machine), TensorBoard (`--tensorboard`).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from dataclasses import dataclass

from .environment import cores, torch_build, version

EXIT_MISSING = 1  # a basic check failed


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" (an optional feature is missing) or "fail" (a run needs it)
    found: str
    fix: str = ""


def _pinned_torch() -> str | None:
    from importlib.metadata import PackageNotFoundError, requires

    try:
        for req in requires("distsgd") or ():
            if req.replace(" ", "").startswith("torch=="):
                return req.replace(" ", "").split("==", 1)[1].split(";")[0]
    except PackageNotFoundError:
        pass
    return None


def check_python() -> Check:
    return Check("python", "ok", f"{platform.python_version()} ({sys.executable})")


def check_torch() -> Check:
    try:
        import torch
    except ImportError as e:
        return Check("torch", "fail", f"cannot import ({e})", "pip install -e .  (installs the pinned torch)")
    found = f"{torch.__version__} ({torch_build()} build)"
    pinned = _pinned_torch()
    if pinned and torch.__version__.split("+")[0] != pinned:
        return Check("torch", "warn", found, f"distsgd is tested with torch {pinned}: pip install torch=={pinned}")
    return Check("torch", "ok", found)


def check_gloo() -> Check:
    import torch.distributed as dist

    if not dist.is_available():
        return Check("gloo", "fail", "torch.distributed is not built in", "install a torch wheel from PyPI or pytorch.org")
    if not dist.is_gloo_available():
        return Check("gloo", "fail", "no gloo backend", "install a torch wheel from PyPI or pytorch.org (gloo is built in)")
    return Check("gloo", "ok", "available (--backend torch on CPU)")


def check_cuda() -> Check:
    import torch

    if not torch.version.cuda:
        return Check("CUDA", "warn", "CPU build of torch", "GPU runs need a CUDA build: see pytorch.org/get-started")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return Check("CUDA", "warn", f"CUDA {torch.version.cuda} build, no GPU visible", "check nvidia-smi and CUDA_VISIBLE_DEVICES")
    names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
    return Check("CUDA", "ok", f"{n} device{'s' * (n > 1)}: {', '.join(names)}")


def check_nccl() -> Check:
    import torch.distributed as dist

    if dist.is_available() and dist.is_nccl_available():
        return Check("NCCL", "ok", "available")
    return Check("NCCL", "warn", "not available", "multi-GPU runs need a CUDA build of torch (NCCL is built in)")


def check_netem() -> Check:
    from . import netem

    missing = netem.missing_tools()
    if missing:
        return Check(
            "netem", "warn", f"missing {', '.join(missing)}", "apt-get install iproute2 util-linux (ip, tc, unshare, nsenter)"
        )
    why = netem.available()
    if why is not None:
        return Check(
            "netem",
            "warn",
            why.removeprefix("netem: "),
            "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run in a privileged container",
        )
    return Check("netem", "ok", "unshare -rn, ip, tc, nsenter work (distsgd netem, bandwidth-limited runs)")


def check_package(module: str, purpose: str, pip: str, basic: bool) -> Check:
    if importlib.util.find_spec(module) is not None:
        return Check(module, "ok", f"installed ({purpose})")
    return Check(module, "fail" if basic else "warn", f"not installed ({purpose})", f"pip install {pip}")


def check_cores() -> Check:
    n = cores()
    found = f"{n} usable (of {os.cpu_count()}); distsgd sweep runs {max(1, n // 2)} at a time by default"
    if n < 2:
        return Check("cores", "warn", found, "torchrun with several ranks and parallel sweeps want 2 or more cores")
    return Check("cores", "ok", found)


def checks() -> list[Check]:
    out = [check_python(), check_torch()]
    if out[-1].status == "fail":  # nothing below works without torch
        return out
    return out + [
        check_gloo(),
        check_cuda(),
        check_nccl(),
        check_cores(),
        check_netem(),
        check_package("matplotlib", "plot, report", "matplotlib", basic=True),
        check_package("rich", "progress, tables", "rich", basic=True),
        check_package("tensorboard", "run --tensorboard", "tensorboard", basic=False),
    ]


def doctor(console=None) -> int:
    """Print the checks as one table; 0 when every basic check passes, else EXIT_MISSING."""
    from rich.console import Console
    from rich.table import Table

    console = console or (Console() if sys.stdout.isatty() else Console(width=130))
    found = checks()
    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title=f"distsgd {version()} on {platform.platform()}", show_lines=False)
    for col in ("check", "status", "found", "how to fix"):
        table.add_column(col, overflow="fold")
    for c in found:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.found, c.fix)
    console.print(table)
    failed = [c.name for c in found if c.status == "fail"]
    if failed:
        console.print(f"[bold red]missing for every run: {', '.join(failed)}[/] (fix above; exit code {EXIT_MISSING})")
        return EXIT_MISSING
    warned = [c.name for c in found if c.status == "warn"]
    console.print("basics ok" + (f"; optional: {', '.join(warned)} (see above)" if warned else ""))
    return 0
