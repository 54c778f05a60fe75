"""A batch-size sweep, the parent side: every size (and the sequential reference) measured in a
process of its own (:mod:`saecli.bench.measure`), then the speedups and the recommendation."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from saecli.bench.measure import PROGRESS_KEY, job
from saecli.bench.results import SEQUENTIAL, SizeResult, Sweep, recommend
from saecli.bench.setup import check_options
from saecli.config import RunConfig, run_preset
from saecli.device import live_facts, resolve_device
from saecli.hub import package_versions
from saecli.memory import available_memory

WORKER = [sys.executable, "-m", "saecli.bench.measure"]
"""The command that measures one size (:func:`saecli.bench.measure.main`): a JSON job on its stdin,
progress lines and then its result (the last other line) on its stdout."""


def _told(line: str) -> tuple[str, int, int] | None:
    """The (step, done, total) of a worker's progress line; None for any other line."""
    if PROGRESS_KEY not in line:
        return None
    try:
        step, done, total = json.loads(line)[PROGRESS_KEY]
        return str(step), int(done), int(total)
    except (ValueError, TypeError, KeyError):
        return None


def _run_worker(document: dict[str, Any], on_progress: Callable[[str, int, int], None] | None = None) -> SizeResult:
    """Measure one size in a fresh process, telling ``on_progress`` its progress lines as they come.
    Its stderr goes to a file, not a pipe: a worker that logs much must not block on a pipe no one
    reads while its stdout is read."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    last = ""
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env) as proc,
    ):
        try:
            proc.stdin.write(json.dumps(document))
            proc.stdin.close()
            for line in proc.stdout:
                told = _told(line)
                if told is None:
                    last = line if line.strip() else last
                elif on_progress is not None:
                    on_progress(*told)
        except BaseException:  # Ctrl-C, or a callback that failed: the worker must not outlive the sweep
            proc.kill()
            raise
        returncode = proc.wait()
        errors.seek(0)
        stderr = errors.read()
    if returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        killed = returncode in (-9, 137)  # the kernel's OOM killer sends SIGKILL
        message = "killed (out of memory?)" if killed else (lines[-1] if lines else f"exit code {returncode}")
        return SizeResult(size=document["size"], ok=False, oom=killed, error=message[:300])
    return SizeResult(**json.loads(last))


def sweep(
    config: RunConfig,
    *,
    sizes: Sequence[int],
    repeats: int,
    include_sequential: bool = True,
    baselines: str = "on",
    on_start: Callable[[int | str], None] | None = None,
    on_done: Callable[[SizeResult], None] | None = None,
    on_progress: Callable[[int | str, str, int, int], None] | None = None,
) -> Sweep:
    """Measure every size (and the sequential reference) of the run ``config`` describes, each in
    its own process; ``config.limit`` samples (the caller sets it: bench's default is 4 × the
    largest size). ``on_progress(size, step, done, total)``: the samples of that size's passes."""
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
        told = None if on_progress is None else functools.partial(on_progress, size)
        result = _run_worker(job(measured, size, repeats=repeats, baselines=baselines), told)
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
