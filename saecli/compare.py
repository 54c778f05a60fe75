"""Comparing two result tables column by column: the check that batched equals sequential."""

from __future__ import annotations

import gc
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from saecli.columns import ID_COLUMNS
from saecli.config import RunConfig
from saecli.errors import SaecliError

# Manifest fields that must agree for two runs to be comparable at all.
COMPARABLE_FIELDS = ("schema_version", "preset.name", "layers", "seed", "noise_std")


@dataclass
class ColumnReport:
    """How one column of B differs from A."""

    column: str
    kind: str
    """``numeric`` (tolerance) or ``discrete`` (integer / categorical: must be equal)."""
    max_abs: float
    max_rel: float
    worst_sample: str | None
    mismatches: int
    passed: bool
    median_abs: float = 0.0
    """The median |Δ| over samples (numeric columns): the typical drift, beside the worst."""


@dataclass
class Mismatch:
    """A discrete value that differs, or a numeric one beyond tolerance."""

    sample_id: str
    column: str
    a: Any
    b: Any


@dataclass
class Comparison:
    """The result of comparing table B against table A."""

    label_a: str
    label_b: str
    atol: float
    rtol: float
    samples: int
    columns: list[ColumnReport]
    mismatches: list[Mismatch]
    missing_in_b: list[str] = field(default_factory=list)
    missing_in_a: list[str] = field(default_factory=list)
    near_threshold: dict[str, int] = field(default_factory=dict)
    """sample id → number of SAE features whose pre-activation lies within a small margin of
    its threshold (one such flip explains a discrete difference)."""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.columns) and not self.missing_in_a and not self.missing_in_b

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.columns if c.kind == "numeric"), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["max_abs"] = self.max_abs
        return out


def _get(manifest: dict[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_comparable(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> None:
    """Refuse runs that differ in what makes results comparable."""
    for key in COMPARABLE_FIELDS:
        va, vb = _get(a, key), _get(b, key)
        if va != vb:
            raise SaecliError(f"runs are not comparable: {key} is {va!r} in {label_a} but {vb!r} in {label_b}")


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_float()


def _delta(x: float | None, y: float | None) -> tuple[float, float]:
    """Absolute and relative difference; missing or NaN on one side only is infinitely far."""
    x_nan = x is None or math.isnan(x)
    y_nan = y is None or math.isnan(y)
    if x_nan or y_nan:
        return (0.0, 0.0) if x_nan and y_nan else (math.inf, math.inf)
    diff = abs(x - y)
    return diff, (diff / abs(x) if x != 0 else (0.0 if diff == 0 else math.inf))


def compare_frames(
    a: pl.DataFrame, b: pl.DataFrame, *, atol: float = 1e-6, rtol: float = 0.0, label_a: str = "A", label_b: str = "B"
) -> Comparison:
    """Compare every metric column of B against A, joined on ``sample_id``.

    A numeric value passes when ``|a − b| ≤ atol + rtol·|a|``; integer and categorical values must be
    equal (nulls equal nulls). Samples present in only one table are listed.
    """
    ids_a, ids_b = a["sample_id"].to_list(), b["sample_id"].to_list()
    set_a, set_b = set(ids_a), set(ids_b)
    missing_in_b = [s for s in ids_a if s not in set_b]
    missing_in_a = [s for s in ids_b if s not in set_a]
    extra_cols = sorted(set(a.columns) ^ set(b.columns))
    if extra_cols:
        raise SaecliError(f"the two tables have different columns: {', '.join(extra_cols)}")
    joined = a.join(b, on="sample_id", how="inner", suffix="__b", maintain_order="left")
    ids = joined["sample_id"].to_list()
    reports, mismatches = [], []
    for column in a.columns:
        if column in ID_COLUMNS:
            continue
        va, vb = joined[column].to_list(), joined[f"{column}__b"].to_list()
        if _is_numeric(a.schema[column]):
            worst_abs, worst_rel, worst_id, bad = 0.0, 0.0, None, 0
            diffs = []
            for sid, x, y in zip(ids, va, vb, strict=False):
                diff, rel = _delta(x, y)
                diffs.append(diff)
                if worst_id is None or diff > worst_abs:
                    worst_abs, worst_id = diff, sid
                worst_rel = max(worst_rel, rel)
                if not diff <= atol + rtol * (abs(x) if x is not None and not math.isnan(x) else 0.0):
                    bad += 1
                    mismatches.append(Mismatch(sid, column, x, y))
            median = statistics.median(diffs) if diffs else 0.0
            reports.append(ColumnReport(column, "numeric", worst_abs, worst_rel, worst_id, bad, bad == 0, median_abs=median))
        else:
            bad_rows = [(sid, x, y) for sid, x, y in zip(ids, va, vb, strict=False) if x != y]
            mismatches += [Mismatch(sid, column, x, y) for sid, x, y in bad_rows]
            reports.append(
                ColumnReport(column, "discrete", 0.0, 0.0, bad_rows[0][0] if bad_rows else None, len(bad_rows), not bad_rows)
            )
    return Comparison(
        label_a=label_a,
        label_b=label_b,
        atol=atol,
        rtol=rtol,
        samples=len(ids),
        columns=reports,
        mismatches=mismatches,
        missing_in_b=missing_in_b,
        missing_in_a=missing_in_a,
    )


def count_near_threshold(loaded: Any, samples: list[Any], margin: float) -> dict[str, int]:
    """Per sample, SAE features (all layers and texts) whose pre-activation is within ``margin``
    of its threshold (0 for ReLU SAEs): the candidates for a flip between two runs."""
    import torch

    from saecli.engine import Engine

    engine = Engine(loaded)
    counts: dict[str, int] = {}
    with torch.inference_mode():
        for sample, toks in zip(samples, engine.tokenize(samples), strict=False):
            acts = engine.forward.sequential(toks).acts
            total = 0
            for layer, hook in zip(engine.layers, engine.hooks, strict=False):
                sae = loaded.saes[layer]
                _, cache = sae.run_with_cache(acts[hook].to(engine.sae_dtype), names_filter="hook_sae_acts_pre")
                pre = cache["hook_sae_acts_pre"]
                threshold = getattr(sae, "threshold", None)
                threshold = threshold if threshold is not None else torch.zeros((), dtype=pre.dtype)
                total += int(((pre - threshold).abs() <= margin).sum())
            counts[sample.id] = total
    return counts


@dataclass
class LiveComparison:
    """Sequential reference against the batched engine at one or more batch sizes."""

    dtype: str
    device: str
    results: dict[int, Comparison]
    drift: dict[str, Comparison] = field(default_factory=dict)
    """Below float64: each run of this dtype (``sequential``, ``batch N``) against the sequential
    float64 reference, per column; what the precision costs. It does not decide ``passed``."""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.results.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "device": self.device,
            "passed": self.passed,
            "batch_sizes": {str(size): c.to_dict() for size, c in self.results.items()},
            "drift_vs_float64": {label: c.to_dict() for label, c in self.drift.items()},
        }


def compare_live(
    config: RunConfig,
    sizes: list[int],
    *,
    atol: float = 1e-6,
    rtol: float = 0.0,
    margin: float = 1e-5,
    progress: Any = None,
) -> LiveComparison:
    """Run the sequential reference and the batched engine on the same preset, data, seed and
    dtype, and compare every metric column at each batch size. Below float64, also run the
    sequential reference in float64 first (its model freed before the other loads) and report the
    drift of every run against it."""
    from saecli.data import run_samples
    from saecli.device import live_facts, resolve_device, set_torch_threads
    from saecli.models import load_preset

    samples = run_samples(config)
    if resolve_device(config.device, live_facts())[0] == "cpu":
        set_torch_threads(config.threads)
    exact = None
    if config.dtype not in (None, "float64"):
        loaded = load_preset(config.preset, device=config.device, dtype="float64", layers=config.layers)
        exact = _frame(samples, loaded, config, "sequential float64", progress, sequential=True)
        del loaded  # the float64 model goes before the other is loaded: never two in memory
        gc.collect()
    loaded = load_preset(config.preset, device=config.device, dtype=config.dtype, layers=config.layers)

    def frame(label: str, **kwargs: Any) -> pl.DataFrame:
        return _frame(samples, loaded, config, label, progress, **kwargs)

    reference = frame("sequential", sequential=True)
    results = {}
    batched_frames = {}
    for size in sizes:
        batched = batched_frames[size] = frame(f"batch {size}", batch_size=size)
        result = compare_frames(reference, batched, atol=atol, rtol=rtol, label_a="sequential", label_b=f"batch {size}")
        discrete = {c.column for c in result.columns if c.kind == "discrete"}
        flagged_ids = {m.sample_id for m in result.mismatches if m.column in discrete}
        flagged = [s for s in samples if s.id in flagged_ids]
        if flagged:
            result.near_threshold = count_near_threshold(loaded, flagged, margin)
        results[size] = result
    drift = {}
    if exact is not None:
        label = "float64 sequential"
        drift["sequential"] = compare_frames(
            exact, reference, atol=atol, rtol=rtol, label_a=label, label_b=f"{loaded.dtype} sequential"
        )
        for size, batched in batched_frames.items():
            drift[f"batch {size}"] = compare_frames(
                exact, batched, atol=atol, rtol=rtol, label_a=label, label_b=f"{loaded.dtype} batch {size}"
            )
    return LiveComparison(dtype=loaded.dtype, device=loaded.device, results=results, drift=drift)


def _frame(samples: list[Any], loaded: Any, config: RunConfig, label: str, progress: Any, **kwargs: Any) -> pl.DataFrame:
    """The result table of one engine run of ``samples``: ``config`` whole, with ``kwargs`` (the
    batch size, or ``sequential``) on top."""
    from saecli.engine import analyze
    from saecli.io import rows_to_frame

    done = 0

    def on_batch(batch: Any) -> None:
        nonlocal done
        done += len(batch.indices)
        if progress is not None:
            progress(label, done, len(samples))

    rows = analyze(samples, loaded, config, on_batch=on_batch, **kwargs)
    return rows_to_frame(list(rows), loaded.layers)
