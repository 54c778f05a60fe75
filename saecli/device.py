"""The one device and dtype vocabulary: which devices and dtypes exist, how a dtype name becomes a
torch dtype and how many bytes it takes, which dtype the SAEs run in, and which device a run uses.

Belongs here: the names (``DEVICES``, ``DTYPES``) that the CLI, the preset files, the loader and
``doctor`` all accept; the rules that follow from them (:func:`sae_dtype_for`); and the single
device-resolution rule, :func:`resolve_device`, a pure function of :class:`DeviceFacts` (is CUDA
available? MPS?). The loader passes the live facts (:func:`live_facts`), ``doctor`` the facts it
gathered, so both always pick the same device for the same machine.

Also here: how many CPU threads a run takes (:func:`choose_threads`), the CPU's share of the
device question.

Does not belong here: memory (``saecli.memory``), reading the rest of the machine (``doctor``),
loading anything (``saecli.models``). Imports only ``saecli.errors``; torch only inside functions,
so the vocabulary costs nothing to import.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saecli.errors import SaecliError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
"""What ``--device`` and a preset's ``device`` accept; ``auto`` prefers cuda, then mps, then cpu."""
DTYPES = ("float32", "float64", "bfloat16", "float16")
"""What ``--dtype`` and a preset's ``model.dtype`` accept."""
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
"""Bytes per element of each dtype in ``DTYPES``."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name in ``DTYPES``."""
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def sae_dtype_for(model_dtype: str) -> str:
    """SAEs run in the model's dtype, or float32 when the model runs in 16 bits."""
    return model_dtype if model_dtype in ("float32", "float64") else "float32"


def dtype_problem(device: str, dtype: str) -> tuple[str, str] | None:
    """Why ``dtype`` cannot run on ``device`` and what to pass instead, or None when it can."""
    if device == "mps" and dtype == "float64":
        return "MPS does not support float64", "use --dtype float32 or --device cpu"
    return None


@dataclass(frozen=True)
class DeviceFacts:
    """What decides the device: whether CUDA and MPS are usable, and the first GPU's name (for the
    reason that a run records)."""

    cuda: bool
    mps: bool
    gpu_name: str = "?"


def live_facts() -> DeviceFacts:
    """The facts of this process, from torch (imported here)."""
    import torch

    cuda = bool(torch.cuda.is_available())
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    name = "?"
    if cuda:
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - the name is only a detail of the reason
            pass
    return DeviceFacts(cuda=cuda, mps=mps, gpu_name=name)


def resolve_device(requested: str, facts: DeviceFacts) -> tuple[str, str]:
    """The device to use and why. ``auto`` prefers cuda, then mps, then cpu; a device asked for
    that is not there is a SaecliError."""
    if requested == "auto":
        if facts.cuda:
            return "cuda", f"auto: CUDA is available ({facts.gpu_name})"
        if facts.mps:
            return "mps", "auto: no CUDA; Apple MPS is available"
        return "cpu", "auto: neither CUDA nor MPS is available"
    if requested == "cuda" and not facts.cuda:
        raise SaecliError(
            "--device cuda was asked for but CUDA is not available", hint="run `saecli doctor`, or use --device cpu"
        )
    if requested == "mps" and not facts.mps:
        raise SaecliError("--device mps was asked for but MPS is not available", hint="use --device cpu")
    return requested, f"{requested}: asked for"


# -- CPU threads ------------------------------------------------------------------------------------

IDLE_SAMPLE_SECONDS = 0.25
"""How long the start of a CPU run watches the cores to see how many are idle."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores, from /proc/stat; None where there is no /proc."""
    try:
        fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def idle_cores(seconds: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """How many cores' worth of CPU nobody used during ``seconds`` (None where it cannot be read)."""
    first = _cpu_times()
    if first is None:
        try:
            return max(0.0, (os.cpu_count() or 1) - os.getloadavg()[0])  # macOS: the 1-minute load
        except OSError:
            return None
    time.sleep(seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (1.0 - busy / total)


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The torch threads of a CPU run, and why.

    PyTorch's threads wait for each other at every operation; when another process holds one of
    the cores a thread needs, every operation waits for the scheduler (measured here: a second
    PyTorch process on one core made a 2-thread run 40x slower; one thread kept 85-95% of its idle speed).
    So a run takes as many threads as there are cores idle when it starts, at least one:
    ``--threads N`` (or ``OMP_NUM_THREADS``) decides instead.
    """
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), f"OMP_NUM_THREADS={env}"
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        return cores, f"{cores} usable cores (their load could not be read)"
    threads = max(1, min(cores, int(idle + 0.5)))
    return threads, f"{idle:.1f} of {cores} usable cores idle at the start"


def automatic_threads(requested: int | None) -> bool:
    """Whether :func:`choose_threads` decides by the idle cores (neither ``--threads`` nor
    ``OMP_NUM_THREADS`` given)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return requested is None and not (env.isdigit() and int(env) >= 1)


SHARE_CHANGES_KEPT = 100
"""Thread changes a manifest lists (a run that changed more often says how many in all)."""


class ThreadShare:
    """A CPU run's torch threads chosen again as other processes come and go: a run of a million
    samples lasts an hour, and a process that starts beside it after it chose two threads makes
    every operation wait (measured here: a 10,000-sample run fell from 410 to 25 samples/s when a
    report started beside it). :meth:`update`, called between plan windows (about every 10 s),
    takes as many threads as the cores other processes left idle since the last call: the CPU time
    of the whole machine less this process's own."""

    def __init__(self, threads: int):
        self.threads = threads
        self.changes: list[dict[str, Any]] = []
        self.count = 0
        self._mark = (_cpu_times(), time.process_time())

    def others(self) -> float | None:
        """Cores' worth of CPU other processes used since the last call (None where unreadable)."""
        mark, self._mark = self._mark, (_cpu_times(), time.process_time())
        if mark[0] is None or self._mark[0] is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = (self._mark[0][0] - mark[0][0]) / ticks - (self._mark[1] - mark[1])
        total = (self._mark[0][1] - mark[0][1]) / ticks
        return None if total <= 0 else max(0.0, (os.cpu_count() or 1) * busy / total)

    def update(self, done: int) -> int:
        """Set torch's threads for what comes next, after ``done`` samples; the threads now."""
        import torch

        others = self.others()
        if others is None:
            return self.threads
        cores = usable_cores()
        threads = max(1, min(cores, int(cores - others + 0.5)))
        if threads != self.threads:
            log.info("%d CPU thread(s) from now on: other processes used %.1f of %d cores", threads, others, cores)
            torch.set_num_threads(threads)
            self.threads = threads
            self.count += 1
            if len(self.changes) < SHARE_CHANGES_KEPT:
                self.changes.append({"after_samples": done, "threads": threads, "others_cores": round(others, 2)})
        return self.threads


def set_torch_threads(requested: int | None) -> dict[str, Any]:
    """Give torch the CPU threads :func:`choose_threads` picks (``--threads`` when given), and say
    what the manifest (or bench.json) records. The one place every path that runs the engine on a
    CPU (run, bench, compare, doctor's probe) sets them."""
    import torch

    threads, reason = choose_threads(requested)
    torch.set_num_threads(threads)
    return {"used": threads, "reason": reason}


def synchronize(device: str) -> None:
    """Wait for the accelerator's queued work (so that a timer stops when the work is done)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()
