"""A batch's results as the rows of the results table, and what the residuals file keeps of it.

Belongs here: pairing each layer's reads back into samples (reads ordered [P.., F.., H..] on the
first layer, [F.., H..] on the others), the paired metrics of the fact and the hallucination with
their differences, the log-probability baselines per text, and the residual vectors and active
features kept for the report's probes. Column names come from :mod:`saecli.columns` only. Does not
belong here: computing the reads (:mod:`saecli.forward`) or their SAE metrics (:mod:`saecli.sae_stage`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from saecli import metrics
from saecli.columns import BASELINE_METRICS, KINDS, LAYER_METRICS, layer_column, metric_columns, paired_columns
from saecli.data import Sample
from saecli.forward import Scored
from saecli.residuals import Residuals, residual_key
from saecli.sae_stage import LayerOut

FACT_MINUS_HALL = ("stability", "cross_layer_consistency")
"""The spec's sign: these paired metrics' difference is fact − hall, every other one's hall − fact."""


def assemble_rows(
    samples: Sequence[Sample], layers: Sequence[int], outs: Mapping[int, LayerOut], scored: Scored | None
) -> list[dict[str, Any]]:
    """Per-sample rows from layer outputs whose reads are ordered [P.., F.., H..] for the first
    layer and [F.., H..] for the others, and (with baselines) the continuations' scored tokens
    (slots F_i = i, H_i = n + i); without, the baseline columns are null."""
    n = len(samples)
    cols = {**_layer_columns(layers, outs, n), **_paired_columns(layers, outs, n), **_baseline_columns(scored, n)}
    lists = {k: (v if isinstance(v, list) else v.cpu().tolist()) for k, v in cols.items()}
    order = metric_columns(layers)
    rows = []
    for i, s in enumerate(samples):
        row: dict[str, Any] = {"sample_id": s.id, "domain": s.domain, "topic": s.topic, "complexity": s.complexity}
        row.update({c: lists[c][i] for c in order})
        rows.append(row)
    return rows


def _layer_columns(layers: Sequence[int], outs: Mapping[int, LayerOut], n: int) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for layer in layers:
        out = outs[layer]
        offset = n if layer == layers[0] else 0  # the first layer's outputs hold the prompts' reads too
        for k, kind in enumerate(KINDS):
            sl = slice(offset + k * n, offset + (k + 1) * n)
            for name in LAYER_METRICS:
                value = out.l0 if name == "l0_norm" else getattr(out, name)
                cols[layer_column(layer, kind, name)] = value[sl]
    return cols


def _paired_columns(layers: Sequence[int], outs: Mapping[int, LayerOut], n: int) -> dict[str, Any]:
    """Fact and hallucination against the prompt on the first layer (drift, twist, stability,
    entropy), and the second and third layers' reconstructions against each other."""
    first, second, third = layers
    o = outs[first]
    p, f, h = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    pairs = {
        "centroid_drift": (
            metrics.angle_degrees(o.centroid[p], o.centroid[f]),
            metrics.angle_degrees(o.centroid[p], o.centroid[h]),
        ),
        "axis_twist": (metrics.line_angle_degrees(o.axis[p], o.axis[f]), metrics.line_angle_degrees(o.axis[p], o.axis[h])),
        "stability": (metrics.jaccard(o.top[f], o.top_noisy[f]), metrics.jaccard(o.top[h], o.top_noisy[h])),
        "entropy": (o.entropy[f], o.entropy[h]),
    }
    a, b = outs[second].x_hat, outs[third].x_hat
    pairs["cross_layer_consistency"] = (metrics.cosine_similarity(a[:n], b[:n]), metrics.cosine_similarity(a[n:], b[n:]))
    cols: dict[str, Any] = {}
    for base, (fact, hall) in pairs.items():
        cols.update(zip(paired_columns(base), (fact, hall, fact - hall if base in FACT_MINUS_HALL else hall - fact), strict=True))
    return cols


def _baseline_columns(scored: Scored | None, n: int) -> dict[str, Any]:
    """Σ and mean log-probability of each continuation (fact − hall as the difference); null without baselines."""
    if scored is None:
        return {name: [None] * n for base in BASELINE_METRICS for name in paired_columns(base)}
    total, mean = scored.per_text(2 * n)
    cols: dict[str, Any] = {}
    for base, value in zip(BASELINE_METRICS, (total, mean), strict=True):
        fact, hall = value[:n], value[n:]
        cols.update(zip(paired_columns(base), (fact, hall, fact - hall), strict=True))
    return cols


def kept_residuals(
    samples: Sequence[Sample],
    layers: Sequence[int],
    hooks: Sequence[str],
    saes: Mapping[int, Any],
    acts: Mapping[str, torch.Tensor],
    outs: Mapping[int, LayerOut],
) -> Residuals:
    """What the residuals file keeps of a batch (reads [P.., F.., H..]): each layer's F and H
    vectors (float32) and their active features (``LayerOut.active``)."""
    import numpy as np
    import scipy.sparse as sp

    n = len(samples)
    dense, features, d_sae = {}, {}, {}
    for i, layer in enumerate(layers):
        x = acts[hooks[i]]
        out = outs[layer]
        offset = n if i == 0 else 0  # the first layer's outputs hold the prompts' reads too
        d_sae[layer] = int(saes[layer].cfg.d_sae)
        for k, kind in enumerate(KINDS):
            dense[residual_key(layer, kind)] = x[(k + 1) * n : (k + 2) * n].float().cpu().numpy()
            active = out.active[offset + k * n : offset + (k + 1) * n]
            indptr = np.concatenate([[0], np.cumsum([len(a) for a, _ in active])]).astype(np.int64)
            indices = np.concatenate([a for a, _ in active]) if active else np.zeros(0, np.int32)
            data = np.concatenate([v for _, v in active]) if active else np.zeros(0, np.float32)
            matrix = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr), shape=(n, d_sae[layer]))
            matrix.sort_indices()
            features[residual_key(layer, kind)] = matrix
    return Residuals(layers=list(layers), sample_ids=[s.id for s in samples], dense=dense, features=features, d_sae=d_sae)
