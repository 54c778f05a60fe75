"""The machine, as ``doctor`` needs it: versions, torch and its CUDA and MPS view, the NVIDIA driver,
CPUs, memory and the environment variables that change device or memory behaviour.

Belongs here: :func:`gather_environment`, the only function of ``doctor`` that reads the machine, and
the :class:`Environment` it fills (tests build their own). Does not belong here: judging the facts
(:mod:`saecli.doctor.checks`), the preset's files (:mod:`saecli.doctor.preset`). torch is imported
inside :func:`gather_environment` (through :func:`import_torch`, which tests replace), so that a
broken install becomes a failed check instead of a crash.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saecli.device import DeviceFacts, choose_threads
from saecli.hub import package_versions
from saecli.memory import available_memory, system_memory

MPS_OPT_IN = "TRANSFORMERLENS_ALLOW_MPS"
"""The environment variable with which TransformerLens accepts MPS (it warns without it)."""


@dataclass
class GPU:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    capability: str
    """Compute capability, e.g. ``8.0``; bfloat16 needs 8.0 or later."""
    total_bytes: int
    free_bytes: int | None
    bf16: bool


@dataclass
class Environment:
    """Everything doctor needs to know about this machine, gathered once by
    :func:`gather_environment` (tests build their own)."""

    platform: str
    machine: str
    python: str
    versions: dict[str, str | None]
    """Installed versions by import name; None when not installed."""
    torch_error: str | None = None
    """Why ``import torch`` failed; None when it worked."""
    torch_cuda_build: str | None = None
    """The CUDA version torch was built for (``torch.version.cuda``); None for a CPU build."""
    cuda_available: bool = False
    cuda_warning: str | None = None
    """What torch said while looking for CUDA (a driver that is too old, for example)."""
    driver_version: str | None = None
    driver_cuda: str | None = None
    """The newest CUDA version the installed driver supports."""
    gpus: list[GPU] = field(default_factory=list)
    nvidia_present: bool = False
    """An NVIDIA driver is installed (``nvidia-smi`` or ``/proc/driver/nvidia``), whatever torch says."""
    mps_built: bool = False
    mps_available: bool = False
    mps_max_bytes: int | None = None
    apple_silicon: bool = False
    cpu_count: int | None = None
    cpu_usable: int | None = None
    torch_threads: int | None = None
    run_threads: int | None = None
    """The torch threads a CPU run would take now (:func:`saecli.device.choose_threads`)."""
    run_threads_reason: str = ""
    cpu_bf16: str | None = None
    """The CPU's native bfloat16 instructions (``amx_bf16``, ``avx512_bf16``), or None."""
    memory_total: int | None = None
    memory_available: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    """The environment variables that change device or memory behaviour (no credentials)."""

    def device_facts(self) -> DeviceFacts:
        """What :func:`saecli.device.resolve_device` decides by, as gathered here."""
        return DeviceFacts(cuda=self.cuda_available, mps=self.mps_available, gpu_name=self.gpus[0].name if self.gpus else "?")


ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    MPS_OPT_IN,
    "PYTORCH_ENABLE_MPS_FALLBACK",
    "OMP_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
)


def import_torch() -> Any:
    """``import torch``; tests replace it with one that fails like a broken install."""
    import torch

    return torch


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _nvidia_smi() -> str | None:
    """The driver version from ``nvidia-smi`` (None without one): the driver, not torch, decides
    which CUDA builds can run."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def cpu_bf16_flags() -> str | None:
    """The native bfloat16 instructions /proc/cpuinfo lists (x86: AMX, AVX-512 BF16), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return ", ".join(found) or None


def gather_environment() -> Environment:
    """Read this machine. Never raises: what cannot be read stays None, and a torch that does not
    import is recorded in ``torch_error``."""
    env = Environment(
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        versions=package_versions(),
        apple_silicon=sys.platform == "darwin" and platform.machine() == "arm64",
        cpu_count=os.cpu_count(),
        env={k: os.environ[k] for k in ENV_VARS if k in os.environ},
    )
    env.cpu_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else env.cpu_count
    env.run_threads, env.run_threads_reason = choose_threads()
    env.cpu_bf16 = cpu_bf16_flags()
    info = system_memory()
    env.memory_total = info.get("MemTotal")
    env.memory_available = info.get("MemAvailable") or available_memory("cpu")
    env.driver_version = _nvidia_smi()
    env.nvidia_present = env.driver_version is not None or Path("/proc/driver/nvidia/version").exists()
    try:
        torch = import_torch()
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libcudart, ABI clash) is a finding
        env.torch_error = first_line(exc)
        return env
    env.torch_threads = torch.get_num_threads()
    env.torch_cuda_build = getattr(torch.version, "cuda", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            env.cuda_available = bool(torch.cuda.is_available())
        except Exception as exc:  # noqa: BLE001
            env.cuda_warning = first_line(exc)
    if caught and env.cuda_warning is None:
        env.cuda_warning = str(caught[0].message).strip().splitlines()[0]
    try:
        raw = torch._C._cuda_getDriverVersion() if env.torch_cuda_build else 0
        env.driver_cuda = f"{raw // 1000}.{raw % 1000 // 10}" if raw else None
    except Exception:  # noqa: BLE001 - private API; only a detail
        pass
    if env.cuda_available:
        for i in range(torch.cuda.device_count()):
            try:
                props = torch.cuda.get_device_properties(i)
                free, total = torch.cuda.mem_get_info(i)
                env.gpus.append(GPU(i, props.name, f"{props.major}.{props.minor}", int(total), int(free), props.major >= 8))
            except Exception as exc:  # noqa: BLE001 - a GPU in a bad state is reported, not fatal
                env.gpus.append(GPU(i, f"unreadable ({first_line(exc)})", "?", 0, None, False))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        try:
            env.mps_built, env.mps_available = bool(mps.is_built()), bool(mps.is_available())
            if env.mps_available and hasattr(torch.mps, "recommended_max_memory"):
                env.mps_max_bytes = int(torch.mps.recommended_max_memory())
        except Exception:  # noqa: BLE001
            pass
    return env
