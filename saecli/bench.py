"""Batch-size sweeps: each size measured in a fresh process, so its peak memory is its own.

``sweep`` (the parent) starts one worker per size (and one for the sequential reference) as
``python -m saecli.bench``; the worker loads the preset, runs an uncounted warm-up, then ``repeats``
timed passes over the same samples, and prints one JSON document on its last stdout line.

Nothing measured is lost: the options are checked and the output folder is created and tried with a
real write (:func:`prepare_out_dir`) before the first worker starts, and ``bench.json`` / ``bench.csv``
are written atomically.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saecli import rundir
from saecli.device import live_facts, resolve_device
from saecli.errors import SaecliError
from saecli.hub import package_versions
from saecli.io import atomic_write, probe_write
from saecli.memory import (
    MEMORY_MARGIN,
    available_memory,
    current_rss,
    is_out_of_memory,
    peak_memory,
    peak_rss,
    reset_peak_rss,
)

log = logging.getLogger(__name__)

SEQUENTIAL = "sequential"
MAX_REPEATS = 100
"""Timed passes per size at most: the median is stable long before, and each pass costs a full analysis."""
MAX_SIZES = 32
"""Batch sizes per sweep at most: each one is a fresh process that loads the model."""
BENCH_ROOT = Path("bench")
JSON_FILE, CSV_FILE = "bench.json", "bench.csv"


@dataclass
class SizeResult:
    """One point of the sweep (all times in seconds, memory in bytes)."""

    size: int | str
    ok: bool
    oom: bool = False
    error: str | None = None
    samples: int = 0
    tokens: int = 0
    seconds_median: float | None = None
    seconds_min: float | None = None
    seconds_max: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    speedup_vs_batch1: float | None = None
    speedup_vs_sequential: float | None = None
    load_seconds: float | None = None
    model_memory: int | None = None
    """Resident (CPU) or allocated (GPU) memory after loading, before any analysis."""
    peak_memory: int | None = None
    peak_increase: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, per pass (median over repeats)."""
    forwarded_tokens: int = 0
    """Positions forwarded per pass, padding included (``tokens`` counts each text's real tokens)."""
    padding_fraction: float | None = None
    """The share of the forwarded positions that were padding."""
    forward_gflops: float | None = None
    """Achieved GFLOP/s of the forward pass: :func:`saecli.flops.forward_flops` ÷ the seconds of the
    ``forward`` stage and of the ``baselines`` stage (the unembedding at the scored positions)."""
    sae_gflops: float | None = None
    """Achieved GFLOP/s of SAE encode/decode: :func:`saecli.flops.sae_flops` ÷ the ``sae`` stage's seconds."""
    peak_gflops: float | None = None
    """Best GFLOP/s of a square ``torch.mm`` on the same device in the model's dtype (:func:`saecli.flops.measure_peak`)."""
    sae_peak_gflops: float | None = None
    """The same in the SAEs' dtype (float32 when the model runs in 16 bits; else equal to ``peak_gflops``)."""
    forward_utilization: float | None = None
    """forward_gflops ÷ peak_gflops."""
    sae_utilization: float | None = None
    """sae_gflops ÷ sae_peak_gflops."""
    memory_detail: dict[str, Any] = field(default_factory=dict)
    baselines: bool = True
    """Whether the timed passes scored log-probabilities and kept residuals (as ``run`` does by default)."""
    samples_per_second_no_baselines: float | None = None
    """With ``--baselines both``: the same passes with baselines off (``run --no-baselines``), timed after."""


BASELINE_MODES = ("both", "on", "off")
"""bench --baselines: time the analysis with baselines (as ``run``), without, or both."""


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """The worker: load, warm up, time ``repeats`` passes at one size. Runs in a fresh process."""
    import torch

    from saecli import flops
    from saecli.config import RunConfig
    from saecli.data import load_samples
    from saecli.engine import Engine
    from saecli.models import load_preset

    size = job["size"]
    sequential = size == SEQUENTIAL
    loaded = load_preset(job["preset"], device=job["device"], dtype=job["dtype"])
    samples = load_samples(job["data"], domains=job.get("domains"), limit=job["limit"], columns=job.get("columns"))
    if loaded.device == "cuda":
        torch.cuda.synchronize()
        model_memory = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        model_memory = current_rss()
        reset_peak_rss()
    result = SizeResult(size=size, ok=False, samples=len(samples), load_seconds=round(loaded.load_seconds, 3), model_memory=model_memory)
    batch_size = 1 if sequential else int(size)
    mode = job.get("baselines", "on")
    result.baselines = mode != "off"
    config = RunConfig(seed=job["seed"], noise_std=job["noise_std"], batch_size=batch_size, mode="sequential" if sequential else "batched",
                       baselines=result.baselines)  # fmt: skip
    try:
        for _ in Engine(loaded, config, backoff=False).run(samples[: min(len(samples), max(batch_size, 2))]):  # warm-up
            pass
        times, stage_runs, batches, stop_at = _timed_runs(loaded, samples, config, job["repeats"])
        if mode == "both":  # the same passes without baselines, after (the peak memory is the heavier run's)
            plain, _, _, _ = _timed_runs(loaded, samples, replace(config, baselines=False), job["repeats"], sync=False)
            result.samples_per_second_no_baselines = round(len(samples) / statistics.median(plain), 3)
        # Every repeat runs the same batches: the work is counted from the last one.
        tokens = sum(batch.tokens for batch in batches)
        forwarded = sum(batch.forwarded_tokens for batch in batches)
        forwarded_real = sum(batch.forwarded_real_tokens for batch in batches)
        shape = flops.ModelShape.of(loaded.model.cfg)
        forward_flops = flops.forward_flops(shape, stop_at, [p for batch in batches for p in batch.passes])
        sae_rows: dict[int, tuple[int, int]] = {}
        for batch in batches:
            flops.add_rows(sae_rows, batch.sae_rows)
        sae_flops = flops.sae_flops(loaded.saes, sae_rows)
        # Peak memory before the matrix-product peak, whose operands are not the analysis's.
        memory = peak_memory(loaded.device)
        peak = memory.get("cuda_allocated_bytes") if loaded.device == "cuda" else peak_rss()
    except Exception as exc:  # noqa: BLE001 - an OOM is a result of the sweep, not a crash
        if not is_out_of_memory(exc):
            raise
        result.oom, result.error = True, str(exc).splitlines()[0][:200]
        result.memory_detail = peak_memory(loaded.device)
        return asdict(result)
    mm_peak, sae_peak = _matmul_peaks(loaded)
    median = statistics.median(times)
    result.ok = True
    result.tokens = tokens
    result.seconds_median, result.seconds_min, result.seconds_max = round(median, 4), round(min(times), 4), round(max(times), 4)
    result.samples_per_second = round(len(samples) / median, 3)
    result.tokens_per_second = round(tokens / median, 1)
    result.peak_memory = peak
    result.peak_increase = (peak - model_memory) if peak is not None else None
    stages = {k: statistics.median(run.get(k, 0.0) for run in stage_runs) for k in stage_runs[0]}
    result.stages = {k: round(v, 4) for k, v in stages.items()}
    result.forwarded_tokens = forwarded
    result.padding_fraction = round(1 - forwarded_real / forwarded, 4) if forwarded else None
    result.peak_gflops = round(mm_peak, 2) if mm_peak else None
    result.sae_peak_gflops = round(sae_peak, 2) if sae_peak else None
    forward_seconds = stages.get("forward", 0.0) + stages.get("baselines", 0.0)  # forward_flops counts the unembedding too
    if stages.get("forward"):
        result.forward_gflops = round(forward_flops / forward_seconds / 1e9, 3)
        result.forward_utilization = round(forward_flops / forward_seconds / 1e9 / mm_peak, 4) if mm_peak else None
    if stages.get("sae"):
        result.sae_gflops = round(sae_flops / stages["sae"] / 1e9, 3)
        result.sae_utilization = round(sae_flops / stages["sae"] / 1e9 / sae_peak, 4) if sae_peak else None
    result.memory_detail = memory
    return asdict(result)


def _timed_runs(
    loaded: Any, samples: list[Any], config: Any, repeats: int, *, sync: bool = True
) -> tuple[list[float], list[dict[str, float]], list[Any], int]:
    """``repeats`` timed runs of ``samples`` (stages synchronised with ``sync``): their seconds, their
    stage seconds, the last run's batches (every run forms the same ones) and the engine's ``stop_at``."""
    import torch

    from saecli.engine import Engine, StageTimer

    times, stage_runs, batches, stop_at = [], [], [], 0
    for _ in range(repeats):
        engine = Engine(loaded, config, timer=StageTimer(sync=sync), backoff=False)
        started = time.perf_counter()
        batches = list(engine.run(samples))
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        stage_runs.append(dict(engine.timer.seconds))
        stop_at = engine.stop_at
    return times, stage_runs, batches, stop_at


def _matmul_peaks(loaded: Any) -> tuple[float | None, float | None]:
    """The matrix-product peak in the model's and in the SAEs' dtype, measured in this process after
    the timed passes (same device). One that fails (out of memory beside a large batch) gives None
    (the utilizations stay empty)."""
    from saecli import flops
    from saecli.device import torch_dtype

    try:
        mm_peak: float | None = flops.measure_peak(loaded.device, torch_dtype(loaded.dtype))
        same = loaded.sae_dtype == loaded.dtype
        sae_peak = mm_peak if same else flops.measure_peak(loaded.device, torch_dtype(loaded.sae_dtype))
    except Exception as exc:  # noqa: BLE001 - the sweep's measurements stand without it
        log.warning("matrix-product peak not measured: %s", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return None, None
    return mm_peak, sae_peak


@dataclass
class Sweep:
    """A finished sweep: every size, the recommendation and where it was saved."""

    preset: str
    device: str
    dtype: str
    samples: int
    repeats: int
    available_memory: int | None
    results: list[SizeResult]
    recommended: int | None
    reason: str
    synthetic: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    """Python and the packages a run depends on (``saecli.hub.package_versions``), as a run manifest records them."""
    out_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_worker(job: dict[str, Any]) -> SizeResult:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "saecli.bench"], input=json.dumps(job), capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        killed = proc.returncode in (-9, 137)  # the kernel's OOM killer sends SIGKILL
        message = "killed (out of memory?)" if killed else (lines[-1] if lines else f"exit code {proc.returncode}")
        return SizeResult(size=job["size"], ok=False, oom=killed, error=message[:300])
    last = proc.stdout.strip().splitlines()[-1]
    data = json.loads(last)
    return SizeResult(**data)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(*, sizes: Sequence[int], repeats: int, limit: int | None = None) -> None:
    """Refuse, before any folder is made or worker started, a sweep that cannot run or would not end
    (the one place both the CLI and :func:`sweep` check these).

    A batch size has no upper bound of its own: the data caps it (a size above the number of samples
    measures one batch of all of them), and a size that does not fit is recorded as out of memory,
    which is what a sweep is for.
    """
    if not sizes or not all(_whole(size) and size >= 1 for size in sizes):
        raise SaecliError(f"--sizes must be positive whole numbers separated by commas, e.g. 1,8,32 (got {list(sizes)!r})")
    if len(sizes) > MAX_SIZES:
        raise SaecliError(
            f"--sizes takes at most {MAX_SIZES} batch sizes (got {len(sizes)})", hint="each size is a fresh process; split the sweep"
        )
    if not _whole(repeats) or not 1 <= repeats <= MAX_REPEATS:
        raise SaecliError(f"--repeats must be a whole number from 1 to {MAX_REPEATS} (got {repeats!r})")
    if limit is not None and (not _whole(limit) or limit < 1):
        raise SaecliError(f"--limit must be a whole number >= 1 (got {limit!r})")


@dataclass
class OutDir:
    """The folder a sweep saves into, made before the sweep starts."""

    path: Path
    created: list[Path] = field(default_factory=list)
    """Folders :func:`prepare_out_dir` made, outermost first: removed again by :meth:`discard`."""

    def discard(self) -> None:
        """For a sweep that ends without saving (an error, Ctrl-C): remove the folders made for it,
        if still empty (never anything written in them)."""
        rundir.remove_empty(self.created)


def prepare_out_dir(out: Path | None, preset: str, *, root: Path = BENCH_ROOT) -> OutDir:
    """Create the folder ``bench.json`` and ``bench.csv`` will go to and try it with a real write, so
    that a folder that cannot take them is refused before anything is measured, not after.

    ``out`` None is a new ``root/<UTC second>-<preset>`` (``-2``, ``-3``, ... appended when a sweep
    started in the same second has it). An explicit ``out`` may exist (its bench files are replaced).
    """
    if out is not None and out.exists() and not out.is_dir():
        raise SaecliError(f"bench output {out} exists and is not a folder", hint="choose another --out")
    first = Path(out) if out is not None else root
    target = OutDir(first, rundir.make_folders(first))
    try:
        if out is None:
            target.path = rundir.new_folder(root, f"{rundir.run_stamp()}-{re.sub(r'[^A-Za-z0-9._-]+', '-', preset)}")
            target.created.append(target.path)
        probe_write(target.path)
    except OSError as exc:
        target.discard()
        raise rundir.not_writable(target.path, target.path, exc) from None
    except BaseException:
        target.discard()
        raise
    return target


def recommend(results: list[SizeResult], available: int | None) -> tuple[int | None, str]:
    """The fastest size whose peak memory stays under the margin of available memory."""
    batched = [r for r in results if r.ok and r.size != SEQUENTIAL]
    if not batched:
        return None, "no batch size completed"
    limit = available * MEMORY_MARGIN if available else None
    fitting = [r for r in batched if limit is None or r.peak_memory is None or r.peak_memory <= limit]
    if not fitting:
        return None, f"every size's peak memory exceeds {MEMORY_MARGIN:.0%} of the available memory"
    best = max(fitting, key=lambda r: r.samples_per_second or 0.0)
    why = f"fastest measured ({best.samples_per_second:.1f} samples/s)"
    if limit is not None and best.peak_memory is not None:
        why += f", peak memory {best.peak_memory / 2**30:.2f} GiB under {MEMORY_MARGIN:.0%} of the {available / 2**30:.1f} GiB available"
    skipped = [str(r.size) for r in batched if r not in fitting]
    if skipped:
        why += f"; not considered (over the memory margin): {', '.join(skipped)}"
    return int(best.size), why


def sweep(
    *,
    preset: str,
    sizes: list[int],
    data: str | None,
    limit: int,
    repeats: int,
    device: str,
    dtype: str | None,
    seed: int = 0,
    noise_std: float = 0.1,
    domains: list[str] | None = None,
    include_sequential: bool = True,
    baselines: str = "on",
    columns: str | None = None,
    on_start: Callable[[int | str], None] | None = None,
    on_done: Callable[[SizeResult], None] | None = None,
) -> Sweep:
    """Measure every size (and the sequential reference) in its own process."""
    from saecli.config import find_preset
    from saecli.data import load_samples

    check_options(sizes=sizes, repeats=repeats, limit=limit)
    load_samples(data, domains=domains, limit=limit, columns=columns)  # bad data is one error here, not a failure in every worker
    chosen = find_preset(preset)
    device, _ = resolve_device(device, live_facts())
    dtype = dtype or chosen.model.dtype
    job = {"preset": preset, "data": data, "domains": domains, "limit": limit, "repeats": repeats,
           "device": device, "dtype": dtype, "seed": seed, "noise_std": noise_std, "baselines": baselines,
           "columns": columns}
    order: list[int | str] = ([SEQUENTIAL] if include_sequential else []) + list(sizes)
    results = []
    for size in order:
        if on_start:
            on_start(size)
        result = _run_worker({**job, "size": size})
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
    n_samples = next((r.samples for r in results if r.samples), limit)
    return Sweep(preset=chosen.name, device=device, dtype=dtype, samples=n_samples, repeats=repeats,
                 available_memory=available, results=results, recommended=best, reason=why, synthetic=chosen.synthetic,
                 versions=package_versions())


CSV_FIELDS = ["size", "ok", "oom", "samples", "seconds_median", "seconds_min", "seconds_max", "samples_per_second",
              "tokens_per_second", "speedup_vs_batch1", "speedup_vs_sequential", "model_memory", "peak_memory",
              "peak_increase", "forwarded_tokens", "padding_fraction", "forward_gflops", "sae_gflops", "peak_gflops",
              "sae_peak_gflops", "forward_utilization", "sae_utilization", "error"]


def save(result: Sweep | RaySweep, out_dir: Path) -> None:
    """``bench.json`` (everything) and ``bench.csv`` (one row per size, stages as columns), each
    written atomically (whole or absent). A folder that fails (a full disk, a mount gone read-only) is
    a one-line error (exit code 1) naming the file and the fix; the caller still holds ``result``."""
    result.out_dir = str(out_dir)
    stages = sorted({k for r in result.results for k in r.stages})

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            fields = RAY_CSV_FIELDS if isinstance(result, RaySweep) else CSV_FIELDS
            writer.writerow(fields + [f"stage_{s}_seconds" for s in stages])
            for r in result.results:
                row = asdict(r)
                writer.writerow([_cell(row[f]) for f in fields] + [r.stages.get(s) for s in stages])

    for path, write in (
        (out_dir / JSON_FILE, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")),
        (out_dir / CSV_FILE, write_csv),
    ):
        try:
            atomic_write(path, write)
        except OSError as exc:
            hint = "free some space, or choose another --out" if exc.errno == errno.ENOSPC else "choose another --out"
            raise SaecliError(f"cannot save {path}: {exc.strerror or exc}", hint=hint, exit_code=1) from None


def _cell(value: Any) -> Any:
    return " ".join("" if v is None else str(v) for v in value) if isinstance(value, list) else value


# -- the same analysis on 1, 2, ... Ray workers ----------------------------------------------------

DEFAULT_RAY_BATCH = 16
MAX_WORKER_COUNTS = 16


@dataclass
class WorkersResult:
    """One worker count of a ``bench --ray`` sweep (times in seconds, memory in bytes); each pass is
    a whole run (:func:`saecli.runner.execute`) on that many Ray workers, the preset loaded afresh."""

    workers: int
    ok: bool
    error: str | None = None
    device: str | None = None
    samples: int = 0
    tokens: int = 0
    seconds_median: float | None = None
    """The analysis (the manifest's ``analysis_seconds``), without starting workers and loading."""
    seconds_min: float | None = None
    seconds_max: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    speedup_vs_1_worker: float | None = None
    efficiency: float | None = None
    """samples/s at this count / (count × samples/s on one worker): 1.0 is perfect scaling."""
    per_worker_samples_per_second: list[float | None] = field(default_factory=list)
    """Each worker's samples per busy second (median over the passes), from the manifest's ``cluster``."""
    load_seconds: float | None = None
    """Starting the workers and loading the preset on each (median), not part of ``seconds``."""
    peak_memory_per_worker: int | None = None
    """The largest worker's peak: resident memory on a CPU, allocated memory on a GPU."""
    peak_memory_driver: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, summed over the workers, per pass (median over repeats)."""


@dataclass
class RaySweep:
    """A finished ``bench --ray`` sweep and where it was saved."""

    preset: str
    device: str
    dtype: str
    batch_size: int
    samples: int
    repeats: int
    worker_cpus: int
    address: str
    ray_version: str
    nodes: list[dict[str, Any]]
    results: list[WorkersResult]
    synthetic: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    out_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "ray", **asdict(self)}


RAY_CSV_FIELDS = ["workers", "ok", "device", "samples", "seconds_median", "seconds_min", "seconds_max", "samples_per_second",
                  "tokens_per_second", "speedup_vs_1_worker", "efficiency", "per_worker_samples_per_second", "load_seconds",
                  "peak_memory_per_worker", "peak_memory_driver", "error"]  # fmt: skip


def check_ray_options(*, workers: Sequence[int], sizes: Sequence[int], repeats: int, limit: int | None = None) -> None:
    """Refuse, before Ray starts or a folder is made, a ``bench --ray`` that cannot run."""
    if not workers or not all(_whole(k) and k >= 1 for k in workers):
        raise SaecliError(f"--workers must be positive whole numbers separated by commas, e.g. 1,2,4 (got {list(workers)!r})")
    if len(workers) > MAX_WORKER_COUNTS:
        raise SaecliError(f"--workers takes at most {MAX_WORKER_COUNTS} counts (got {len(workers)})")
    if len(sizes) != 1:
        raise SaecliError(f"with --ray, --sizes is one batch size (got {','.join(map(str, sizes))})",
                          hint="e.g. --sizes 16; sweep batch sizes without --ray")  # fmt: skip
    check_options(sizes=sizes, repeats=repeats, limit=limit)


def _peak_bytes(peak: dict[str, Any] | None, device: str | None) -> int | None:
    if not peak:
        return None
    return peak.get("cuda_allocated_bytes") if device == "cuda" else peak.get("rss_bytes")


def ray_sweep(
    *,
    preset: str,
    workers: list[int],
    batch_size: int,
    data: str | None,
    limit: int,
    repeats: int,
    device: str,
    dtype: str | None,
    address: str | None = None,
    worker_cpus: int | None = None,
    seed: int = 0,
    noise_std: float = 0.1,
    domains: list[str] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_done: Callable[[WorkersResult], None] | None = None,
    execute: Callable[..., Any],
) -> RaySweep:
    """Time the whole analysis on each number of Ray workers: one uncounted warm-up run, then
    ``repeats`` runs per count (each a run folder in a temporary directory, deleted afterwards).
    One Ray connection serves the sweep (started here, and then stopped at the end, or joined).

    ``execute`` is :func:`saecli.runner.execute` (passed in: this module sits beside the runner in
    the import layers, not above it); it returns a result with the run's ``manifest``."""
    import shutil
    import tempfile

    from saecli.cluster import DEFAULT_WORKER_CPUS, RayOptions, connect, import_ray, plan
    from saecli.config import RunConfig, find_preset
    from saecli.data import load_samples

    check_ray_options(workers=workers, sizes=[batch_size], repeats=repeats, limit=limit)
    cpus = worker_cpus if worker_cpus is not None else DEFAULT_WORKER_CPUS
    RayOptions(address=address, worker_cpus=cpus)  # its own checks, before Ray starts
    ray = import_ray()
    load_samples(data, domains=domains, limit=limit)  # bad data is one error here, not one per run
    chosen = find_preset(preset)
    config = RunConfig(preset=preset, data=data, limit=limit, domains=tuple(domains) if domains else None, batch_size=batch_size,
                       seed=seed, noise_std=noise_std, device=device, dtype=dtype)  # fmt: skip
    info = connect(RayOptions(address=address, worker_cpus=cpus))
    try:
        plan(info, RayOptions(address=address, workers=max(workers), worker_cpus=cpus))  # the largest count fits, or one line now
        with tempfile.TemporaryDirectory(prefix="saecli-bench-ray-") as tmp:
            runs = iter(range(1_000_000))

            def one_run(k: int) -> dict[str, Any]:
                folder = Path(tmp) / f"run-{next(runs)}-w{k}"
                try:
                    return execute(config, out=folder, ray=RayOptions(address=address, workers=k, worker_cpus=cpus)).manifest
                finally:
                    shutil.rmtree(folder, ignore_errors=True)

            if on_start:
                on_start(min(workers), 0)
            one_run(min(workers))  # warm-up: imports, the OS's file cache, Ray's first worker processes
            results = []
            for k in workers:
                if on_start:
                    on_start(k, repeats)
                try:
                    manifests = [one_run(k) for _ in range(repeats)]
                except SaecliError as exc:
                    result = WorkersResult(workers=k, ok=False, error=exc.message[:300])
                else:
                    result = _workers_result(k, manifests)
                results.append(result)
                if on_done:
                    on_done(result)
    finally:
        if info.started_here and ray.is_initialized():
            ray.shutdown()
    base = next((r for r in results if r.workers == 1 and r.ok), None)
    for r in results:
        if r.ok and r.samples_per_second and base is not None and base.samples_per_second:
            r.speedup_vs_1_worker = round(r.samples_per_second / base.samples_per_second, 3)
            r.efficiency = round(r.samples_per_second / (r.workers * base.samples_per_second), 3)
    first = next((r for r in results if r.ok), None)
    return RaySweep(
        preset=chosen.name, device=(first.device if first else None) or device, dtype=dtype or chosen.model.dtype,
        batch_size=batch_size, samples=first.samples if first else limit, repeats=repeats, worker_cpus=cpus, address=info.address,
        ray_version=info.ray_version, nodes=[{"node": n.node_id, "address": n.address, "cpus": n.cpus, "gpus": n.gpus} for n in info.nodes],
        results=results, synthetic=chosen.synthetic, versions=package_versions(),
    )  # fmt: skip


def _workers_result(k: int, manifests: list[dict[str, Any]]) -> WorkersResult:
    """One worker count's row from its runs' manifests."""
    times = [m["timings"]["analysis_seconds"] for m in manifests]
    median = statistics.median(times)
    last = manifests[-1]
    device = last.get("device")
    n, tokens = last["samples"], last.get("tokens", 0)
    per_worker: list[float | None] = []
    for wid in range(k):
        rates = [w.get("samples_per_second") for m in manifests for w in m.get("cluster", {}).get("per_worker", []) if w.get("worker") == wid]
        rates = [r for r in rates if r is not None]
        per_worker.append(round(statistics.median(rates), 3) if rates else None)
    worker_peaks = [_peak_bytes(p, device) for m in manifests for p in (m.get("peak_memory") or {}).get("workers", [])]
    driver_peaks = [_peak_bytes((m.get("peak_memory") or {}).get("driver"), "cpu") for m in manifests]
    stage_runs = [m["timings"].get("stages_seconds", {}) for m in manifests]
    return WorkersResult(
        workers=k, ok=True, device=device, samples=n, tokens=tokens,
        seconds_median=round(median, 4), seconds_min=round(min(times), 4), seconds_max=round(max(times), 4),
        samples_per_second=round(n / median, 3) if median > 0 else None,
        tokens_per_second=round(tokens / median, 1) if median > 0 else None,
        per_worker_samples_per_second=per_worker,
        load_seconds=round(statistics.median(m["timings"]["load_seconds"] for m in manifests), 3),
        peak_memory_per_worker=max((p for p in worker_peaks if p is not None), default=None),
        peak_memory_driver=max((p for p in driver_peaks if p is not None), default=None),
        stages={s: round(statistics.median(run.get(s, 0.0) for run in stage_runs), 4) for s in stage_runs[0]},
    )  # fmt: skip


def _worker_main() -> int:
    job = json.loads(sys.stdin.read())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result = measure(job)
    except SaecliError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
