"""The part of a report that reads the residuals: the probes (on a subsample of a large run) and the
SAE feature ranking (one layer at a time), each reading only the rows and arrays it uses.

Boundary: orchestration between :mod:`saecli.report` (which reads and checks the run) and
:mod:`.probes` / :mod:`.features` (the computations); reads residuals.safetensors a part at a time
through :func:`saecli.report.load_residuals`'s ``rows`` and ``keys``; writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import polars as pl

from saecli.io import RESIDUALS_FILE
from saecli.report.detection import ALL, Report
from saecli.report.features import FEATURE_ROWS, FEATURES_TOP, FeatureRow, neuronpedia_id, rank_feature_blocks, rank_features
from saecli.report.probes import ProbeFit, ProbeOutcome, run_probes
from saecli.report.progress import Steps
from saecli.report.sampling import sampled_note, subsample
from saecli.residuals import Residuals, residual_key

log = logging.getLogger(__name__)

Loader = Callable[..., Residuals | None]
"""``load(rows=…, keys=…)``: part of the run's residuals, rows in the table's order (:func:`saecli.report.load_residuals`)."""
Blocks = Callable[..., Iterable[Residuals]]
"""``blocks(keys, block)``: the arrays ``keys`` of every row, in the table's order, ``block`` rows at a
time (:meth:`saecli.report.RunResiduals.blocks`)."""
Excerpts = Callable[[Iterable[str]], dict[str, str]]
"""``excerpts(ids)``: the text excerpt of each of those samples the run kept (:func:`saecli.report.texts.excerpts_of`)."""


def _probe_inputs(report: Report, domains: list[str], groups: Any, load: Loader, steps: Steps) -> tuple[Any, ...]:
    """The residuals, domains and groups the probes see: every row, or above ``report.probe_samples`` the
    first that many of the seeded stratified order (:func:`~saecli.report.sampling.subsample`), read alone."""
    rows = subsample(domains, report.probe_samples, report.seed)
    if rows is None:
        return load(), domains, groups, None
    steps.plan(1)
    steps.start(f"reading the probes' {rows.size:,} of {len(domains):,} samples")
    report.subsampled["probes"] = int(rows.size)
    report.notes.append(sampled_note("Probes (probes.csv, generalisation.csv, the probe rows of detection.csv)", int(rows.size),
                                     len(domains)))  # fmt: skip
    picked = [domains[i] for i in rows.tolist()]
    return load(rows=rows), picked, (None if groups is None else np.asarray(groups)[rows]), rows


def probe_and_rank(
    report: Report, frame: pl.DataFrame, index: Residuals, manifest: dict[str, Any], excerpts: Excerpts | None,
    steps: Steps, load: Loader, groups: Any, fit: Callable[..., ProbeOutcome] = run_probes, blocks: Blocks | None = None,
) -> list[ProbeFit]:  # fmt: skip
    """Probes, their generalisation, and the feature ranking per layer (with the samples each feature
    differs most on, and their text ``excerpts`` when the run kept them); returns the probes' fits
    (their out-of-fold scores join the detection ranking). ``index``: the residuals' ids and layers (no
    arrays); ``load``: reads the rows and arrays each step needs; ``blocks``: reads a layer's features a
    block of :data:`~saecli.report.features.FEATURE_ROWS` rows at a time for a run whose probes did
    not read every row (None: read whole); ``groups``: the fold group of each sample
    (:func:`~saecli.report.folds.sample_groups`; None: each sample its own); ``fit``: what fits the
    probes (:func:`~saecli.report.probes.run_probes`)."""
    from saecli.residuals import residual_names

    domains = frame["domain"].to_list()
    ids = frame["sample_id"].cast(pl.String)  # a Series: a million ids as Python strings are ~0.1 GB
    names = set(residual_names(report.run_dir / RESIDUALS_FILE))
    ranked = [layer for layer in index.layers if all(f"features.{residual_key(layer, k)}" in names for k in ("fact", "hall"))]
    steps.plan(len(ranked))
    residuals, probe_domains, probe_groups, rows = _probe_inputs(report, domains, groups, load, steps)
    outcome = fit(residuals, probe_domains, n_splits=report.folds, seed=report.seed, bootstrap=report.bootstrap,
                         groups=probe_groups, steps=steps)  # fmt: skip
    whole = residuals if rows is None else None  # a run within the cap: every row already read, ranked from it
    del residuals
    counts = dict(report.domains) | {ALL: report.samples}
    for probe in outcome.fits:
        probe.rows, probe.run_counts = rows, counts
    report.notes += outcome.notes
    report.generalisation = outcome.generalisation
    null_rows = subsample(domains, report.resample_samples, report.seed) if report.bootstrap else None
    if null_rows is not None:
        report.subsampled["features_null"] = int(null_rows.size)
        report.notes.append(sampled_note("The SAE features' null threshold (features.csv null_threshold)", int(null_rows.size),
                                         len(domains)) + "; rescaled by √(m/n)")  # fmt: skip
    if whole is None and blocks is not None and len(domains) > FEATURE_ROWS:
        report.notes.append(f"SAE features (features.csv): every sample, read {FEATURE_ROWS:,} at a time (sums added block "
                            "by block: the same statistics as at once)")  # fmt: skip
    for layer in ranked:
        steps.start(f"SAE features: layer {layer}")
        report.features += _rank_layer(report, layer, whole, load, blocks, manifest, ids, null_rows)
    if not report.features and any(name.startswith("features.") for name in names):
        report.notes.append("SAE features: not enough data to rank them (fewer than 2 samples, or no feature differs)")
    if excerpts is not None and report.features:
        report.features = _with_texts(report.features, excerpts)
    return outcome.fits


def _pair(part: Residuals, layer: int) -> tuple[Any, Any]:
    return part.features[residual_key(layer, "fact")], part.features[residual_key(layer, "hall")]


def _rank_layer(
    report: Report, layer: int, whole: Residuals | None, load: Loader, blocks: Blocks | None, manifest: dict[str, Any],
    ids: Any, null_rows: Any,
) -> list[FeatureRow]:  # fmt: skip
    """One layer's feature ranking: from the rows the probes read (a run within their cap), else read a
    block of rows at a time (``blocks``), the null's rows read alone."""
    keys = [f"features.{residual_key(layer, k)}" for k in ("fact", "hall")]
    options = {"layer": layer, "top": FEATURES_TOP, "bootstrap": report.bootstrap, "seed": report.seed,
               "neuronpedia": neuronpedia_id(manifest, layer), "sample_ids": ids}  # fmt: skip
    if whole is not None or blocks is None:
        fact, hall = _pair(whole if whole is not None else load(keys=keys), layer)
        return rank_features(fact, hall, null_rows=null_rows, **options)
    null = None
    if report.bootstrap:
        null = _pair(load(keys=keys) if null_rows is None else load(rows=null_rows, keys=keys), layer)
    return rank_feature_blocks(lambda: (_pair(part, layer) for part in blocks(keys, FEATURE_ROWS)), null=null, **options)


def _with_texts(rows: list[FeatureRow], excerpts: Excerpts) -> list[FeatureRow]:
    """The rows with each named sample's text excerpt (``top{k}_text``), read for those samples only."""
    slots = [f"top{k}" for k in range(1, 4)]
    texts = excerpts({getattr(r, f"{s}_sample") for r in rows for s in slots} - {""})
    return [
        dataclasses.replace(
            r, **{f"{s}_text": texts.get(getattr(r, f"{s}_sample"), "") for s in slots if getattr(r, f"{s}_sample")}
        )
        for r in rows
    ]
