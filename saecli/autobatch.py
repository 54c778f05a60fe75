"""``--batch-size auto``: the largest batch that fits, found by trying it on the longest texts.

Each probe runs the whole analysis of a batch (forward, SAEs, geometry, metrics) made of the
data's longest samples, doubling the size from 1. It stops at an out-of-memory error (and keeps
the last size that ran), when a probe's peak memory passes the safety margin, or when the next
doubling is predicted to pass it. Nothing is cached: every run probes its own preset and data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saecli.config import RunConfig
from saecli.data import Sample
from saecli.engine import Engine
from saecli.errors import SaecliError
from saecli.memory import MEMORY_MARGIN, available_memory, batch_cap, device_peak, is_out_of_memory, reset_device_peak
from saecli.models import LoadedPreset

log = logging.getLogger(__name__)


@dataclass
class AutoBatch:
    """The chosen size, why, and every probe (size, peak bytes, outcome)."""

    size: int
    reason: str
    probes: list[dict[str, Any]] = field(default_factory=list)


def find_batch_size(
    loaded: LoadedPreset,
    samples: Sequence[Sample],
    config: RunConfig | None = None,
    *,
    margin: float = MEMORY_MARGIN,
    cap: int | None = None,
    available: int | None = None,
) -> AutoBatch:
    """Probe batch sizes 1, 2, 4, ... on the longest samples; return the largest that fits, with the
    run's configuration (default: the defaults): its baselines change the memory a batch takes."""
    engine = Engine(loaded, config)
    toks = engine.tokenize(samples)
    longest = sorted(range(len(samples)), key=lambda i: (-toks[i].length, i))
    device = loaded.device
    cap = cap or min(len(samples), batch_cap(device))
    available = available if available is not None else available_memory(device)
    budget = available * margin if available else None
    reset_device_peak(device)
    base = device_peak(device)
    probes: list[dict[str, Any]] = []
    best, why, size = None, "", 1
    while size <= cap:
        batch = [longest[i % len(longest)] for i in range(size)]
        try:
            engine.analyze_batch([samples[i] for i in batch], [toks[i] for i in batch])
        except Exception as exc:  # noqa: BLE001 - only an OOM is an answer; anything else is re-raised
            if not is_out_of_memory(exc):
                raise
            probes.append({"size": size, "outcome": "out of memory"})
            reset_device_peak(device)
            why = f"batch {size} ran out of memory"
            break
        peak = device_peak(device)
        probes.append({"size": size, "peak_bytes": peak, "outcome": "ok"})
        if budget is not None and peak > budget:
            why = f"batch {size} peaked at {peak / 2**30:.2f} GiB, over {margin:.0%} of {available / 2**30:.1f} GiB"
            break
        best = size
        predicted = base + 2 * (peak - base)
        if budget is not None and predicted > budget and size * 2 <= cap:
            why = (
                f"batch {size * 2} would need about {predicted / 2**30:.2f} GiB, over {margin:.0%} of {available / 2**30:.1f} GiB"
            )
            break
        size *= 2
        reset_device_peak(device)
    else:
        why = f"reached the probing cap of {cap} ({'CPU' if device == 'cpu' else 'the data'} limit)"
    if best is None:
        raise SaecliError(
            f"not even one sample fits in memory on {device}: {why}",
            hint=f"try --dtype bfloat16 on CUDA, or --device cpu; `saecli doctor --probe --preset {loaded.preset.name}`",
            exit_code=1,
        )
    reason = f"largest size that fit, probed with the data's longest texts: {why}"
    log.info("--batch-size auto: %d (%s)", best, reason)
    return AutoBatch(size=best, reason=reason, probes=probes)
