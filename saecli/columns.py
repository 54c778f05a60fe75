"""Names of the results table's columns (``shared/spec/metrics.md``), with no heavy imports."""

from __future__ import annotations

from collections.abc import Sequence

KINDS = ("fact", "hall")
LAYER_METRICS = ("l0_norm", "reconstruction_error", "gini", "sphericity", "shape_class", "dimensionality")
ID_COLUMNS = ("sample_id", "domain", "topic", "complexity")
PAIRED_METRICS = ("centroid_drift", "axis_twist", "stability", "entropy", "cross_layer_consistency")


def metric_columns(layers: Sequence[int]) -> list[str]:
    """The metric columns of a results table, in order."""
    cols = [f"l{layer}_{kind}_{name}" for layer in layers for kind in KINDS for name in LAYER_METRICS]
    for base in PAIRED_METRICS:
        cols += [f"{base}_fact", f"{base}_hall", f"{base}_diff"]
    return cols
