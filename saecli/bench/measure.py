"""One point of a batch-size sweep, in a process of its own (``python -m saecli.bench.measure``):
load the preset, run an uncounted warm-up, then time ``repeats`` passes of the engine over the same
samples. The job arrives as JSON on stdin (the resolved :class:`RunConfig` whole, the batch size
in it) and the result leaves as one JSON line on stdout, so the parent never loads a model and each
size's peak memory is its own.

Peak memory is read with :mod:`saecli.memory`'s device functions, the same ones
``--batch-size auto`` probes with, so the two agree on every device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from saecli.bench.results import SEQUENTIAL, SizeResult
from saecli.config import RunConfig
from saecli.errors import SaecliError
from saecli.memory import allocated_bytes, device_peak, is_out_of_memory, peak_memory, reset_device_peak

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Told ``(step, samples done, samples total)`` as the timed passes go: the samples of every pass of
one size, so that a slow size shows where it is (``step``: ``warm-up``, ``pass 2/3``, …)."""


def job(config: RunConfig, size: int | str, *, repeats: int, baselines: str) -> dict[str, Any]:
    """The JSON document :func:`measure` takes: ``config`` with this size's batch size and mode."""
    sequential = size == SEQUENTIAL
    sized = dataclasses.replace(config, batch_size=1 if sequential else int(size), mode="sequential" if sequential else "batched")
    return {"config": asdict(sized), "size": size, "repeats": repeats, "baselines": baselines}


def _timed_passes(
    loaded: Any, config: RunConfig, samples: list[Any], repeats: int, on_batch: Callable[[int, int], None] | None = None
) -> tuple[list[float], list[dict[str, float]], list[Any], Any]:
    """``repeats`` timed passes (stages synchronised on CUDA); the last pass's batches and engine.
    ``on_batch(pass, samples)`` after each batch (inside the timing: it must cost next to nothing)."""
    from saecli.device import synchronize
    from saecli.engine import Engine
    from saecli.timer import StageTimer

    times, stage_runs, batches, engine = [], [], [], None
    for _ in range(repeats):
        engine = Engine(loaded, config, timer=StageTimer(sync=True), backoff=False)
        started = time.perf_counter()
        batches = []
        for batch in engine.run(samples):
            batches.append(batch)
            if on_batch is not None:
                on_batch(len(times), len(batch.indices))
        synchronize(loaded.device)
        times.append(time.perf_counter() - started)
        stage_runs.append(dict(engine.timer.seconds))
    return times, stage_runs, batches, engine


def _count_work(
    result: SizeResult, loaded: Any, engine: Any, batches: list[Any], seconds: float, stages: dict[str, float]
) -> tuple[float, float]:
    """Tokens and padding of one pass into ``result``; its forward and SAE FLOPs (every repeat runs
    the same batches, so they are counted from the last)."""
    from saecli import flops

    result.tokens = sum(batch.tokens for batch in batches)
    forwarded = sum(batch.forwarded_tokens for batch in batches)
    forwarded_real = sum(batch.forwarded_real_tokens for batch in batches)
    result.forwarded_tokens = forwarded
    result.padding_fraction = round(1 - forwarded_real / forwarded, 4) if forwarded else None
    result.tokens_per_second = round(result.tokens / seconds, 1)
    shape = flops.ModelShape.of(loaded.model.cfg)
    forward = flops.forward_flops(shape, engine.stop_at, [p for batch in batches for p in batch.passes])
    sae_rows: dict[int, tuple[int, int]] = {}
    for batch in batches:
        flops.add_rows(sae_rows, batch.sae_rows)
    return forward, flops.sae_flops(loaded.saes, sae_rows)


def _utilization(result: SizeResult, loaded: Any, stages: dict[str, float], forward: float, sae: float) -> None:
    """Achieved GFLOP/s against the matrix-product peak measured here, after the timed passes (same
    device, same dtypes). A peak that fails (out of memory beside a large batch) leaves them empty."""
    from saecli import flops
    from saecli.device import torch_dtype

    try:
        mm_peak: float | None = flops.measure_peak(loaded.device, torch_dtype(loaded.dtype))
        same = loaded.sae_dtype == loaded.dtype
        sae_peak = mm_peak if same else flops.measure_peak(loaded.device, torch_dtype(loaded.sae_dtype))
    except Exception as exc:  # noqa: BLE001 - the sweep's measurements stand without it
        log.warning("matrix-product peak not measured: %s", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        mm_peak = sae_peak = None
    result.peak_gflops = round(mm_peak, 2) if mm_peak else None
    result.sae_peak_gflops = round(sae_peak, 2) if sae_peak else None
    # forward_flops counts the unembedding at the scored positions, which is timed as ``baselines``.
    seconds = {"forward": stages.get("forward", 0.0) + stages.get("baselines", 0.0), "sae": stages.get("sae", 0.0)}
    for part, work, peak in (("forward", forward, mm_peak), ("sae", sae, sae_peak)):
        if stages.get(part):
            achieved = work / seconds[part] / 1e9
            setattr(result, f"{part}_gflops", round(achieved, 3))
            setattr(result, f"{part}_utilization", round(achieved / peak, 4) if peak else None)


class _Counter:
    """The samples done over all passes of one size, for a :data:`Progress`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def step(self, step: str) -> None:
        if self.progress is not None:
            self.progress(step, self.done, self.total)

    def passes(self, repeats: int, what: str) -> Callable[[int, int], None]:
        def on_batch(index: int, samples: int) -> None:
            self.done += samples
            self.step(f"pass {index + 1}/{repeats}{what}")

        return on_batch


def measure(document: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Load, warm up, time ``repeats`` passes at one size (and, with ``baselines`` "both", the same
    passes without baselines after), telling ``progress``. Runs in a fresh process; an out-of-memory
    error is a result."""
    from saecli.data import run_samples
    from saecli.device import set_torch_threads
    from saecli.engine import Engine
    from saecli.models import load_preset

    config = RunConfig(**document["config"])
    mode = document.get("baselines", "on")
    config = dataclasses.replace(config, baselines=mode != "off")
    loaded = load_preset(config.preset, device=config.device, dtype=config.dtype, layers=config.layers)
    threads = set_torch_threads(config.threads) if loaded.device == "cpu" else None
    samples = run_samples(config)
    model_memory = allocated_bytes(loaded.device)
    reset_device_peak(loaded.device)
    result = SizeResult(size=document["size"], ok=False, samples=len(samples), load_seconds=round(loaded.load_seconds, 3),
                        model_memory=model_memory, baselines=config.baselines, threads=threads)  # fmt: skip
    repeats = document["repeats"]
    tell = _Counter(progress, len(samples) * repeats * (2 if mode == "both" else 1))
    try:
        tell.step("warm-up")
        warm = Engine(loaded, config, backoff=False)
        for _ in warm.run(samples[: min(len(samples), max(config.batch_size, 2))]):
            pass
        times, stage_runs, batches, engine = _timed_passes(loaded, config, samples, repeats, tell.passes(repeats, ""))
        if mode == "both":  # the same passes without baselines, after (the peak memory is the heavier run's)
            plain, _, _, _ = _timed_passes(loaded, dataclasses.replace(config, baselines=False), samples, repeats,
                                           tell.passes(repeats, " without baselines"))  # fmt: skip
            result.samples_per_second_no_baselines = round(len(samples) / statistics.median(plain), 3)
        # Peak memory before the matrix-product peak, whose operands are not the analysis's.
        result.memory_detail = peak_memory(loaded.device)
        result.peak_memory = device_peak(loaded.device)
    except Exception as exc:  # noqa: BLE001 - an OOM is a result of the sweep, not a crash
        if not is_out_of_memory(exc):
            raise
        result.oom, result.error = True, str(exc).splitlines()[0][:200]
        result.memory_detail = peak_memory(loaded.device)
        return asdict(result)
    median = statistics.median(times)
    stages = {k: statistics.median(run.get(k, 0.0) for run in stage_runs) for k in stage_runs[0]}
    forward, sae = _count_work(result, loaded, engine, batches, median, stages)
    tell.step("measuring the torch.mm peak")
    _utilization(result, loaded, stages, forward, sae)
    result.ok = True
    result.seconds_median, result.seconds_min, result.seconds_max = round(median, 4), round(min(times), 4), round(max(times), 4)
    result.samples_per_second = round(len(samples) / median, 3)
    result.peak_increase = (result.peak_memory - model_memory) if result.peak_memory is not None else None
    result.stages = {k: round(v, 4) for k, v in stages.items()}
    return asdict(result)


PROGRESS_KEY = "progress"
"""A line ``{"progress": [step, done, total]}`` on the worker's stdout is progress, not its result."""


def _progress_lines() -> Progress:
    """Progress as JSON lines on stdout for the parent (:func:`saecli.bench.sweep.sweep`): a new step
    at once, otherwise at most ten lines a second, since it is told inside the timed passes."""
    last = {"at": 0.0, "step": ""}

    def emit(step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if step == last["step"] and now - last["at"] < 0.1 and done < total:
            return
        last.update(at=now, step=step)
        print(json.dumps({PROGRESS_KEY: [step, done, total]}), flush=True)

    return emit


def main() -> int:
    document = json.loads(sys.stdin.read())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result = measure(document, _progress_lines())
    except SaecliError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
