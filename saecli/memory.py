"""Memory: how much this process holds and has held, what is free, how much of it a run may use,
and what to say when it runs out.

Belongs here: the resident memory of this process (now, its high-water mark and resetting it),
the accelerator's peaks (CUDA, MPS), the memory free on a device, the safety margin
``MEMORY_MARGIN`` and the batch-size caps that ``bench``, ``--batch-size auto`` and ``doctor``
share, the out-of-memory test (:func:`is_out_of_memory`) and the one-line error a run raises after
an out-of-memory failure it cannot recover from (:func:`oom_message`), with the byte formatting and
preset flag it needs.

Does not belong here: predicting a run's memory from a model's shape (``saecli.doctor.estimate``),
measuring batch sizes (``saecli.bench``, ``saecli.autobatch``), devices and dtypes
(``saecli.device``). Imports only ``saecli.config`` and ``saecli.errors``; torch only inside the
functions that need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from saecli.config import preset_dirs
from saecli.errors import SaecliError

__all__ = [
    "ALLOC_CONF",
    "CAP_ACCELERATOR",
    "CAP_CPU",
    "GiB",
    "MEMORY_MARGIN",
    "allocated_bytes",
    "available_memory",
    "batch_cap",
    "current_rss",
    "device_peak",
    "gib",
    "is_out_of_memory",
    "oom_message",
    "peak_memory",
    "peak_rss",
    "preset_flag",
    "reset_device_peak",
    "reset_peak_rss",
    "system_memory",
]

GiB = 2**30
MEMORY_MARGIN = 0.8
"""A batch size is kept (recommended by ``bench``, chosen by ``--batch-size auto``, predicted safe by
``doctor``) only if its peak memory stays under this fraction of what is available."""
CAP_CPU = 64
"""The largest batch probed or predicted on a CPU: memory is rarely the limit there and larger
batches gain little."""
CAP_ACCELERATOR = 512
"""The largest batch probed or predicted on CUDA or MPS."""
ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
"""What to set when CUDA memory is free but fragmented ("reserved but unallocated")."""


def batch_cap(device: str) -> int:
    """The largest batch size worth probing or predicting on ``device``."""
    return CAP_CPU if device == "cpu" else CAP_ACCELERATOR


# -- the machine ----------------------------------------------------------------------------------


def system_memory() -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` from /proc/meminfo (bytes), those that could be read."""
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def available_memory(device: str) -> int | None:
    """Bytes available to a run on this device (CUDA: free on the card; CPU/MPS: MemAvailable)."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    available = system_memory().get("MemAvailable")
    if available is not None:
        return available
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, check=True)
            return int(out.stdout.strip())
        except (OSError, ValueError, subprocess.CalledProcessError):
            return None
    return None


# -- this process ---------------------------------------------------------------------------------


def _proc_status(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _lifetime_peak_rss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS): the fallback off Linux."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss() -> int:
    """Resident memory of this process now."""
    now = _proc_status("VmRSS")
    return now if now is not None else _lifetime_peak_rss()


def reset_peak_rss() -> bool:
    """Start a new resident-memory high-water mark (Linux), so that the peak of an analysis is not
    the peak of loading the model. False where the platform cannot do it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The resident-memory high-water mark (since :func:`reset_peak_rss` on Linux)."""
    peak = _proc_status("VmHWM")
    return peak if peak is not None else _lifetime_peak_rss()


def peak_memory(device: str) -> dict[str, int | None]:
    """The peaks a run records: the resident memory of this process over its whole life, and the
    accelerator's peaks where there is one."""
    out: dict[str, int | None] = {"rss_bytes": _lifetime_peak_rss()}
    if device == "cuda":
        import torch

        out["cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_reserved_bytes"] = torch.cuda.max_memory_reserved()
    elif device == "mps":
        import torch

        out["mps_driver_allocated_bytes"] = torch.mps.driver_allocated_memory()
    return out


def allocated_bytes(device: str) -> int:
    """Memory in use now, measured as :func:`device_peak` measures the peak: allocated on CUDA, the
    driver's allocation on MPS, this process's resident memory on a CPU."""
    if device == "cuda":
        import torch

        return int(torch.cuda.memory_allocated())
    if device == "mps":
        import torch

        return int(torch.mps.driver_allocated_memory())
    return current_rss()


def device_peak(device: str) -> int:
    """The peak since :func:`reset_device_peak`: allocated on CUDA, the driver's allocation on MPS,
    the resident high-water mark on a CPU."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if device == "mps":
        import torch

        return int(torch.mps.driver_allocated_memory())
    return peak_rss()


def reset_device_peak(device: str) -> None:
    """Empty the accelerator's cache and start a new peak. Where a CPU's high-water mark cannot be
    reset it only grows, which still works for probes that grow: the latest is the largest."""
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif device == "mps":
        import torch

        torch.mps.empty_cache()
    else:
        reset_peak_rss()


# -- for people -----------------------------------------------------------------------------------


def gib(n: int | float | None) -> str:
    """Bytes for people: GiB with one decimal, MiB below 1 GiB (a tiny model is 11 MiB, not 0.0 GiB)."""
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def preset_flag(preset: str) -> str:
    """`` --preset NAME`` for a named preset, `` --config PATH`` for a file: how a suggested
    command names the preset."""
    if not preset:
        return ""
    if preset.endswith(".toml") or "/" in preset or os.sep in preset:
        path = Path(preset)
        if path.suffix == ".toml" and any(path.resolve().parent == d for d in preset_dirs()):
            return f" --preset {path.stem}"
        return f" --config {preset}"
    return f" --preset {preset}"


def oom_message(batch_size: int, preset: str, device: str) -> SaecliError:
    """The one-line error for an out-of-memory failure a run cannot recover from: names the batch
    size that failed and what to type next. For ``run``, ``sequential`` and ``bench`` to raise."""
    flags = []
    if batch_size > 1:
        flags.append(f"--batch-size {max(1, batch_size // 2)} (or auto)")
    else:
        flags.append("--batch-size auto")
    if device == "cuda":
        flags += ["--dtype bfloat16", "--device cpu", f"{ALLOC_CONF} against fragmentation"]
    elif device == "mps":
        flags += ["--dtype float16", "--device cpu"]
    hint = f"try {', '.join(flags)}; `saecli doctor --probe{preset_flag(preset)} --device {device}` finds the largest batch that fits"
    return SaecliError(f"out of memory on {device} at batch size {batch_size}", hint=hint, exit_code=1)


def is_out_of_memory(exc: BaseException) -> bool:
    """An out-of-memory error of CUDA, MPS or a CPU allocation."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("out of memory", "can't allocate memory", "failed to allocate")
    )
