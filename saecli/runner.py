"""One run end to end: load, analyse, write the run folder. What ``run`` and ``sequential`` call."""

from __future__ import annotations

import dataclasses
import logging
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl

import saecli
from saecli import io
from saecli.config import RunConfig, find_preset
from saecli.data import builtin_benchmark_path, load_samples
from saecli.engine import Engine
from saecli.models import LoadedPreset, load_preset

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (samples done, samples total) after each batch."""


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    manifest: dict[str, Any]
    frame: pl.DataFrame


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "saecli": saecli.__version__}
    for name in ("torch", "transformer_lens", "sae_lens", "numpy", "polars"):
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def peak_memory(device: str) -> dict[str, int | None]:
    """Peak resident memory of this process, and the accelerator's peak where there is one."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out: dict[str, int | None] = {"rss_bytes": rss_bytes}
    if device == "cuda":
        out["cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_reserved_bytes"] = torch.cuda.max_memory_reserved()
    elif device == "mps":
        out["mps_driver_allocated_bytes"] = torch.mps.driver_allocated_memory()
    return out


def build_manifest(
    config: RunConfig, loaded: LoadedPreset, engine: Engine, *, n_samples: int, n_tokens: int, data_source: str,
    analysis_seconds: float, batch_size: int,
) -> dict[str, Any]:
    preset = loaded.preset
    return {
        "schema_version": saecli.SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": config.mode,
        "config": dataclasses.asdict(config),
        "preset": {
            "name": preset.name,
            "source": preset.source,
            "description": preset.description,
            "synthetic": preset.synthetic,
        },
        "model": loaded.identities.get("model"),
        "saes": {
            str(layer): {"identity": loaded.identities["saes"].get(str(layer)), "hook": loaded.hooks[layer]}
            for layer in loaded.layers
        },
        "layers": loaded.layers,
        "hooks": [loaded.hooks[layer] for layer in loaded.layers],
        "dtype": loaded.dtype,
        "sae_dtype": loaded.sae_dtype,
        "geometry_dtype": "float64",
        "device": loaded.device,
        "device_reason": loaded.device_reason,
        "batch_size": batch_size,
        "seed": config.seed,
        "noise_std": config.noise_std,
        "samples": n_samples,
        "data_source": data_source,
        "versions": package_versions(),
        "timings": {
            "load_seconds": round(loaded.load_seconds, 4),
            "analysis_seconds": round(analysis_seconds, 4),
            "samples_per_second": round(n_samples / analysis_seconds, 4) if analysis_seconds > 0 else None,
            "tokens_per_second": round(n_tokens / analysis_seconds, 2) if analysis_seconds > 0 else None,
            "stages_seconds": {k: round(v, 4) for k, v in engine.timer.seconds.items()},
        },
        "tokens": n_tokens,
        "peak_memory": peak_memory(loaded.device),
    }


def execute(
    config: RunConfig,
    *,
    out: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    loaded: LoadedPreset | None = None,
) -> RunResult:
    """Run the analysis described by ``config`` and write its run folder."""
    preset = loaded.preset if loaded is not None else find_preset(config.preset)
    samples = load_samples(config.data, domains=config.domains, limit=config.limit)
    run_dir = io.prepare_run_dir(out or io.default_run_dir(preset.name), force=force)
    if loaded is None:
        loaded = load_preset(preset, device=config.device, dtype=config.dtype)
    if preset.synthetic:
        log.warning("preset %s has random weights: its metrics mean nothing (benchmarking only)", preset.name)
    batch_size, auto = config.batch_size, None
    if config.mode == "batched" and batch_size == "auto":
        from saecli.autobatch import find_batch_size

        auto = find_batch_size(loaded, samples, seed=config.seed, noise_std=config.noise_std)
        batch_size = auto.size
    engine = Engine(loaded, seed=config.seed, noise_std=config.noise_std)
    rows: list[dict[str, Any] | None] = [None] * len(samples)
    done = n_tokens = 0
    if progress is not None:
        progress(0, len(samples))
    started = time.perf_counter()
    for batch in engine.run(samples, batch_size=batch_size, sequential=config.mode == "sequential"):
        for index, row in zip(batch.indices, batch.rows, strict=False):
            rows[index] = row
        done += len(batch.indices)
        n_tokens += batch.tokens
        if progress is not None:
            progress(done, len(samples))
    analysis_seconds = time.perf_counter() - started
    with engine.timer("write"):
        frame = io.rows_to_frame(rows, loaded.layers)
        io.write_metrics(frame, run_dir)
    manifest = build_manifest(
        config,
        loaded,
        engine,
        n_samples=len(samples),
        n_tokens=n_tokens,
        data_source=str(config.data) if config.data else f"built-in ({builtin_benchmark_path().name})",
        analysis_seconds=analysis_seconds,
        batch_size=batch_size if config.mode == "batched" else 1,
    )
    if auto is not None:
        manifest["batch_size_auto"] = {"chosen": auto.size, "reason": auto.reason, "probes": auto.probes}
    io.write_manifest(manifest, run_dir)
    return RunResult(run_dir=run_dir, manifest=manifest, frame=frame)


def domain_summary(frame: pl.DataFrame, layers: list[int]) -> pl.DataFrame:
    """Per domain, the mean hall − fact difference of the headline metrics (and all domains)."""
    headline = [f"l{layer}_{{}}_reconstruction_error" for layer in layers] + [
        f"l{layers[0]}_{{}}_l0_norm",
        "centroid_drift_{}",
        "axis_twist_{}",
        "stability_{}",
        "entropy_{}",
        "cross_layer_consistency_{}",
    ]
    exprs = [
        (pl.col(p.format("hall")).cast(pl.Float64) - pl.col(p.format("fact")).cast(pl.Float64)).mean().alias(p.replace("_{}", ""))
        for p in headline
    ]
    by_domain = frame.group_by("domain", maintain_order=True).agg(pl.len().alias("n"), *exprs)
    overall = frame.select(pl.lit("all").alias("domain"), pl.len().alias("n"), *exprs)
    return pl.concat([by_domain, overall.cast(by_domain.schema)])

