"""Fault points for tests. Crash points for the resume tests: ``SAECLI_CRASH_AT=name`` (or
``name#k`` for the k-th time the point is reached) makes the process kill itself with SIGKILL there,
as a power cut or the kernel's OOM killer would. Unset (always, outside tests), a fault point does
nothing."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

_seen: Counter[str] = Counter()


def crash_point(name: str) -> None:
    wanted = os.environ.get("SAECLI_CRASH_AT")
    if not wanted:
        return
    _seen[name] += 1
    point, _, nth = wanted.partition("#")
    if point == name and _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def oom_point(batch_size: int) -> None:
    """``SAECLI_OOM_ABOVE=n``: a batch of more than n samples fails as an accelerator out of memory
    would, so that backoff is tested on a CPU, in this process or in a Ray worker (which gets the
    driver's ``SAECLI_*`` variables). Unset (always, outside tests), it does nothing."""
    limit = os.environ.get("SAECLI_OOM_ABOVE")
    if limit and batch_size > int(limit):
        raise MemoryError(f"out of memory (SAECLI_OOM_ABOVE={limit}, batch of {batch_size})")


def slow_load_point() -> None:
    """``SAECLI_SLOW_LOAD=seconds``: a Ray worker waits that long before it loads the preset, as one
    loading a large model from a cold disk would, so that the pool is tested going on without it.
    Unset (always, outside tests), it does nothing."""
    seconds = os.environ.get("SAECLI_SLOW_LOAD")
    if seconds:
        time.sleep(float(seconds))
