"""A worker-count sweep on Ray (``bench --ray``): the whole analysis, as ``run --ray`` runs it
(:func:`saecli.runner.execute`), on each number of workers, each run a temporary run folder."""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saecli.bench.results import RaySweep, WorkersResult
from saecli.bench.setup import check_ray_options
from saecli.config import RunConfig, run_preset
from saecli.errors import SaecliError
from saecli.hub import package_versions
from saecli.runner import execute


def _peak_bytes(peak: dict[str, Any] | None, device: str | None) -> int | None:
    if not peak:
        return None
    return peak.get("cuda_allocated_bytes") if device == "cuda" else peak.get("rss_bytes")


def ray_sweep(
    config: RunConfig,
    *,
    workers: Sequence[int],
    repeats: int,
    ray: Any,
    baselines: str = "on",
    on_start: Callable[[int, int], None] | None = None,
    on_done: Callable[[WorkersResult], None] | None = None,
) -> RaySweep:
    """Time the whole analysis ``config`` describes (its ``batch_size``, ``limit`` samples) on each
    number of Ray ``workers`` (``ray`` a :class:`saecli.cluster.RayOptions`): one uncounted warm-up
    run, then ``repeats`` runs per count, and with ``baselines`` "both" as many again without
    baselines. One Ray connection serves the sweep (started here and stopped at the end, or joined)."""
    from saecli.cluster import connect, import_ray, plan
    from saecli.data import run_samples

    check_ray_options(workers=workers, sizes=[config.batch_size], repeats=repeats, limit=config.limit)
    if config.mode != "batched":
        raise SaecliError("bench --ray measures the batched analysis; the sequential reference runs on one machine",
                          hint="drop --sequential, or bench without --ray")  # fmt: skip
    ray_module = import_ray()
    run_samples(config)  # bad data: one error, not one per run
    chosen = run_preset(config)
    timed = dataclasses.replace(config, baselines=baselines != "off")
    info = connect(ray)
    try:
        plan(info, dataclasses.replace(ray, workers=max(workers)))  # the largest count fits, or one line now
        with tempfile.TemporaryDirectory(prefix="saecli-bench-ray-") as tmp:
            runs = iter(range(1_000_000))

            def one_run(k: int, run_config: RunConfig) -> dict[str, Any]:
                folder = Path(tmp) / f"run-{next(runs)}-w{k}"
                try:
                    return execute(run_config, out=folder, ray=dataclasses.replace(ray, workers=k)).manifest
                finally:
                    shutil.rmtree(folder, ignore_errors=True)

            if on_start:
                on_start(min(workers), 0)
            one_run(min(workers), timed)  # warm-up: imports, the OS's file cache, Ray's first worker processes
            results = []
            for k in workers:
                if on_start:
                    on_start(k, repeats)
                try:
                    result = _workers_result(k, [one_run(k, timed) for _ in range(repeats)])
                    if baselines == "both":
                        plain = [one_run(k, dataclasses.replace(timed, baselines=False)) for _ in range(repeats)]
                        median = statistics.median(m["timings"]["analysis_seconds"] for m in plain)
                        result.samples_per_second_no_baselines = round(plain[-1]["samples"] / median, 3) if median > 0 else None
                except SaecliError as exc:
                    result = WorkersResult(workers=k, ok=False, error=exc.message[:300])
                results.append(result)
                if on_done:
                    on_done(result)
    finally:
        if info.started_here and ray_module.is_initialized():
            ray_module.shutdown()
    base = next((r for r in results if r.workers == 1 and r.ok), None)
    for r in results:
        if r.ok and r.samples_per_second and base is not None and base.samples_per_second:
            r.speedup_vs_1_worker = round(r.samples_per_second / base.samples_per_second, 3)
            r.efficiency = round(r.samples_per_second / (r.workers * base.samples_per_second), 3)
    first = next((r for r in results if r.ok), None)
    return RaySweep(
        preset=chosen.name, device=(first.device if first else None) or config.device, dtype=config.dtype or chosen.model.dtype,
        batch_size=config.batch_size, samples=first.samples if first else config.limit, repeats=repeats, worker_cpus=ray.worker_cpus,
        address=info.address, ray_version=info.ray_version,
        nodes=[{"node": n.node_id, "address": n.address, "cpus": n.cpus, "gpus": n.gpus} for n in info.nodes],
        results=results, synthetic=chosen.synthetic, versions=package_versions(), config=asdict(config),
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
        rates = [
            w.get("samples_per_second")
            for m in manifests
            for w in m.get("cluster", {}).get("per_worker", [])
            if w.get("worker") == wid
        ]
        rates = [r for r in rates if r is not None]
        per_worker.append(round(statistics.median(rates), 3) if rates else None)
    worker_peaks = [_peak_bytes(p, device) for m in manifests for p in (m.get("peak_memory") or {}).get("workers", [])]
    driver_peaks = [_peak_bytes((m.get("peak_memory") or {}).get("driver"), "cpu") for m in manifests]
    stage_runs = [m["timings"].get("stages_seconds", {}) for m in manifests]
    return WorkersResult(
        workers=k, ok=True, device=device, samples=n, tokens=tokens, baselines=bool(last.get("baselines", True)),
        seconds_median=round(median, 4), seconds_min=round(min(times), 4), seconds_max=round(max(times), 4),
        samples_per_second=round(n / median, 3) if median > 0 else None,
        tokens_per_second=round(tokens / median, 1) if median > 0 else None,
        per_worker_samples_per_second=per_worker,
        load_seconds=round(statistics.median(m["timings"]["load_seconds"] for m in manifests), 3),
        peak_memory_per_worker=max((p for p in worker_peaks if p is not None), default=None),
        peak_memory_driver=max((p for p in driver_peaks if p is not None), default=None),
        stages={s: round(statistics.median(run.get(s, 0.0) for run in stage_runs), 4) for s in stage_runs[0]},
    )  # fmt: skip
