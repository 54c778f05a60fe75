"""Names of the results table's columns (``shared/spec/metrics.md``), with no heavy imports."""

from __future__ import annotations

from collections.abc import Sequence

KINDS = ("fact", "hall")
LAYER_METRICS = ("l0_norm", "reconstruction_error", "gini", "sphericity", "shape_class", "dimensionality")
LAYER_NUMERIC = tuple(name for name in LAYER_METRICS if name != "shape_class")
"""The per-layer metrics with numeric values (all but the categorical ``shape_class``)."""
SHAPE_CLASSES = ("Spherical", "Oblate", "Prolate", "Triaxial")
"""The values of an ``l<L>_<kind>_shape_class`` column (null when nothing is active)."""
ID_COLUMNS = ("sample_id", "domain", "topic", "complexity")
PAIRED_METRICS = ("centroid_drift", "axis_twist", "stability", "entropy", "cross_layer_consistency")
BASELINE_METRICS = ("logprob_sum", "logprob_mean")
"""The log-probability baselines: ``log p(continuation | prompt)`` of the fact and of the hallucination,
summed and averaged over the continuation's tokens (``_diff`` = fact − hall); null with --no-baselines."""


def layer_column(layer: int, kind: str, name: str) -> str:
    """``l{layer}_{kind}_{name}``, e.g. ``l2_hall_gini``."""
    return f"l{layer}_{kind}_{name}"


def layer_metric(layer: int, name: str) -> str:
    """``l{layer}_{name}``, e.g. ``l2_gini``: a per-layer metric as the report ranks it (both texts)."""
    return f"l{layer}_{name}"


def paired_column(base: str, kind: str) -> str:
    """``{base}_{kind}``, e.g. ``entropy_fact`` or ``entropy_diff``."""
    return f"{base}_{kind}"


def paired_columns(base: str) -> tuple[str, str, str]:
    """The fact, hallucination and difference columns of a paired metric, e.g. ``entropy_fact``,
    ``entropy_hall``, ``entropy_diff``."""
    fact, hall = (paired_column(base, kind) for kind in KINDS)
    return fact, hall, paired_column(base, "diff")


def metric_columns(layers: Sequence[int]) -> list[str]:
    """The metric columns of a results table, in order."""
    cols = [layer_column(layer, kind, name) for layer in layers for kind in KINDS for name in LAYER_METRICS]
    for base in (*PAIRED_METRICS, *BASELINE_METRICS):
        cols += paired_columns(base)
    return cols
