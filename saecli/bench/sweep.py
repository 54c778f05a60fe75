"""A batch-size sweep, the parent side: every size (and the sequential reference) measured in a
process of its own (:mod:`saecli.bench.measure`), then the speedups and the recommendation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from saecli.bench.measure import job
from saecli.bench.results import SEQUENTIAL, SizeResult, Sweep, recommend
from saecli.bench.setup import check_options
from saecli.config import RunConfig, run_preset
from saecli.device import live_facts, resolve_device
from saecli.hub import package_versions
from saecli.memory import available_memory


def _run_worker(document: dict[str, Any]) -> SizeResult:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "saecli.bench.measure"], input=json.dumps(document), capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        killed = proc.returncode in (-9, 137)  # the kernel's OOM killer sends SIGKILL
        message = "killed (out of memory?)" if killed else (lines[-1] if lines else f"exit code {proc.returncode}")
        return SizeResult(size=document["size"], ok=False, oom=killed, error=message[:300])
    return SizeResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def sweep(
    config: RunConfig,
    *,
    sizes: Sequence[int],
    repeats: int,
    include_sequential: bool = True,
    baselines: str = "on",
    on_start: Callable[[int | str], None] | None = None,
    on_done: Callable[[SizeResult], None] | None = None,
) -> Sweep:
    """Measure every size (and the sequential reference) of the run ``config`` describes, each in
    its own process; ``config.limit`` samples (the caller sets it: bench's default is 4 × the
    largest size)."""
    from saecli.data import run_samples

    check_options(sizes=sizes, repeats=repeats, limit=config.limit)
    run_samples(config)  # bad data: one error here, not one per size
    chosen = run_preset(config)
    device, _ = resolve_device(config.device, live_facts())
    dtype = config.dtype or chosen.model.dtype
    measured = RunConfig(**{**asdict(config), "device": device, "dtype": dtype})
    results = []
    for size in ([SEQUENTIAL] if include_sequential else []) + list(sizes):
        if on_start:
            on_start(size)
        result = _run_worker(job(measured, size, repeats=repeats, baselines=baselines))
        results.append(result)
        if on_done:
            on_done(result)
    base = next((r for r in results if r.size == 1 and r.ok), None)
    seq = next((r for r in results if r.size == SEQUENTIAL and r.ok), None)
    for r in results:
        if r.ok and r.samples_per_second:
            if base:
                r.speedup_vs_batch1 = round(r.samples_per_second / base.samples_per_second, 3)
            if seq:
                r.speedup_vs_sequential = round(r.samples_per_second / seq.samples_per_second, 3)
    available = available_memory(device)
    best, why = recommend(results, available)
    n_samples = next((r.samples for r in results if r.samples), config.limit)
    return Sweep(preset=chosen.name, device=device, dtype=dtype, samples=n_samples, repeats=repeats, available_memory=available,
                 results=results, recommended=best, reason=why, synthetic=chosen.synthetic, versions=package_versions(),
                 config=asdict(config))  # fmt: skip
