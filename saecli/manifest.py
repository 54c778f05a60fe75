"""The manifest of a run (``manifest.json``: built when it starts, completed when it ends) and the
run's identity: the settings that make two runs the same computation, which resuming checks and
every part file records (``saecli.parts``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import saecli
from saecli import io
from saecli.config import RunConfig
from saecli.data import dataset_identity
from saecli.errors import SaecliError
from saecli.hub import package_versions
from saecli.parts import EARLIER_DEFAULTS
from saecli.validation import split_domains

if TYPE_CHECKING:
    from saecli.models import PresetInfo


def start_manifest(
    config: RunConfig,
    loaded: PresetInfo,
    ident: dict[str, Any],
    *,
    n_samples: int,
    data_source: str,
    batch_size: int,
    backoffs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a run as it starts (status ``running``; the part files, not the manifest, say
    which samples are finished). :func:`finish_manifest` turns it into the final one: the one place a
    manifest is built."""
    preset = loaded.preset
    return {
        "schema_version": saecli.SCHEMA_VERSION,
        "status": "running",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": config.mode,
        "config": dataclasses.asdict(config),
        "identity": ident,
        "config_hash": config_hash(ident),
        "preset": {
            "name": preset.name,
            "source": preset.source,
            "description": preset.description,
            "synthetic": preset.synthetic,
            "trained_on_benchmark": preset.trained_on_benchmark,
        },
        "model": loaded.identities.get("model"),
        "saes": {
            str(layer): {
                "identity": loaded.identities["saes"].get(str(layer)),
                "hook": loaded.hooks[layer],
                "neuronpedia_id": loaded.neuronpedia_ids.get(layer),
            }
            for layer in loaded.layers
        },
        "baselines": config.baselines,
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
        "dataset": dataset_identity(config.data, config.columns),
        "versions": package_versions(),
        "backoffs": backoffs,
    }


def finish_manifest(
    manifest: dict[str, Any],
    *,
    load_seconds: float,
    stages: dict[str, float],
    n_tokens: int,
    analysis_seconds: float,
    n_analysed: int,
    resumed: bool,
    peak: dict[str, Any],
) -> dict[str, Any]:
    """The final manifest: status ``complete``, timings and peak memory; the finished ids are the
    rows of metrics.parquet and are not repeated. The rates are this process's: its ``n_analysed``
    samples (and their ``n_tokens``) over its analysis seconds; a resumed run's samples finished
    before the interruption took none of those seconds."""
    final = {k: v for k, v in manifest.items() if k != "finished_ids"}  # listed by runs before 2026-12
    timed = analysis_seconds > 0 and n_analysed > 0  # a resume with nothing left to do has no rate
    final.update(
        status="complete",
        timings={
            "load_seconds": round(load_seconds, 4),
            "analysis_seconds": round(analysis_seconds, 4),
            "samples_analysed": n_analysed,
            "samples_per_second": round(n_analysed / analysis_seconds, 4) if timed else None,
            "tokens_per_second": round(n_tokens / analysis_seconds, 2) if timed else None,
            "stages_seconds": {k: round(v, 4) for k, v in stages.items()},
        },
        tokens=n_tokens,
        peak_memory=peak,
        resumed=resumed,
    )
    return final


IDENTITY_FIELDS = (
    "preset",
    "data",
    "domains",
    "limit",
    "limit_order",
    "layers",
    "seed",
    "noise_std",
    "dtype",
    "mode",
    "truncate",
    "truncation",
    "columns",
    "baselines",
    "data_fingerprint",
)
"""What must not change between a run and its resumption; the settings first, so that a message
names the one that changed rather than the samples it selects."""

TRUNCATION = "one window"
"""How ``--truncate`` cuts a sample (:func:`saecli.plan.cut_to_context`). Runs made before it cut P,
F and H apart (and scored the whole window) recorded no such field, so resuming one is refused
rather than mixing the two."""


def identity(config: RunConfig, loaded_layers: list[int], dtype: str, fingerprint: str) -> dict[str, Any]:
    """The fields that make two runs' results the same computation (``fingerprint``: the data's,
    :func:`saecli.staging.data_fingerprint`)."""
    return {
        "preset": config.preset,
        "data": config.data,
        "data_fingerprint": fingerprint,
        "domains": list(config.domains) if config.domains else None,
        "limit": config.limit,
        "limit_order": config.limit_order,
        "layers": loaded_layers,
        "seed": config.seed,
        "noise_std": config.noise_std,
        "dtype": dtype,
        "mode": config.mode,
        "truncate": config.truncate,
        "truncation": TRUNCATION if config.truncate else None,
        "columns": config.columns,
        "baselines": config.baselines,
    }


def config_hash(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def resume_config(run_dir: Path, **overrides: Any) -> RunConfig:
    """The configuration of an unfinished run folder, with explicitly given options on top (the
    identity check then refuses any that change the results)."""
    manifest = io.read_manifest(run_dir)
    stored = manifest.get("config")
    if not isinstance(stored, dict) or "identity" not in manifest:
        raise SaecliError(f"{run_dir} is not a saecli run folder that can be resumed (its manifest has no config)")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise SaecliError(
            f"{run_dir / io.MANIFEST_FILE}: unknown config key {unknown[0]!r}", hint="was it written by another saecli version?"
        )
    values = {**EARLIER_DEFAULTS, **stored, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        values["domains"] = split_domains(values.get("domains"))
        return RunConfig(**values)
    except SaecliError as exc:
        raise SaecliError(f"{run_dir / io.MANIFEST_FILE}: config: {exc.message}", hint="was it edited? start a new run") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise SaecliError(
            f"{run_dir / io.MANIFEST_FILE}: config is not valid ({exc})", hint="was it edited? start a new run"
        ) from None


def check_resumable(manifest: dict[str, Any], ident: dict[str, Any], run_dir: Path) -> None:
    stored = {**EARLIER_DEFAULTS, "baselines": False, **(manifest.get("identity") or {})}
    for key in IDENTITY_FIELDS:
        if stored.get(key) != ident.get(key):
            raise SaecliError(
                f"cannot resume {run_dir}: {key} was {stored.get(key)!r} and is now {ident.get(key)!r}",
                hint="resume with the run's own settings, or start a new run",
            )


def stored_identity(config: RunConfig, manifest: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The identity of ``config`` for a complete run, whose model is not loaded again: the layers
    and the dtype are the run's unless ``config`` names them."""
    recorded = manifest.get("identity") or {}
    dtype = recorded.get("dtype") if config.dtype in (None, "auto") else config.dtype
    layers = list(config.layers) if config.layers is not None else recorded.get("layers") or []
    return identity(config, layers, str(dtype), fingerprint)
