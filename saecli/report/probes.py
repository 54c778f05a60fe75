"""Probes: logistic regression on what the SAEs read, as the baseline the geometry metrics must approach.

For each layer, two probes tell the hallucinated text from the factual one:

* ``probe_resid_l{L}``: on the residual-stream vector the layer's SAE encodes (d_model inputs,
  standardised: ``StandardScaler``);
* ``probe_sae_l{L}``: on that SAE's feature activations f (d_sae inputs, sparse, scaled by each
  feature's largest absolute value: ``MaxAbsScaler``, which keeps them sparse).

Each is scikit-learn's ``LogisticRegression`` (L2, ``C`` = :data:`PROBE_C`, lbfgs) behind its scaler
in a ``Pipeline``, so the scaling is fitted on the training folds only. Every sample gives two rows
(its fact text, label 0; its hallucination, label 1).

**Repeated cross-validation, folds grouped by sample and by text.** Samples that share any identical
text (the prompt, the fact text prompt + " " + fact or the hallucination text, in any field) are joined
into one group, transitively (union-find, :func:`text_groups`, :func:`sample_groups`); without texts
each sample is its own group. ``StratifiedGroupKFold``
with those groups and the domain as the stratum: a sample's two texts, and every sample sharing a text
with it, are always in the same fold, so a probe is never tested on a text it was trained on. The
split is repeated ``repeats`` times with the fold seeds ``seed``, ``seed + 1``, …; each repeat gives
every text the decision score of the model that did not see it (out of fold).

The probe's AUROC (per domain and over all) is the **mean over repeats** of the out-of-fold AUROCs.
Its interval is the 2.5–97.5 percentiles of the AUROCs of *every repeat on every bootstrap resample*
of samples (the resamples the detection table draws for that group, :func:`~saecli.report.stats.group_rng`):
the pooled spread holds the resampling of the test samples and the choice of folds (law of total
variance), though not the refitting on resampled training sets. ``fact``/``hall`` of a
:class:`ProbeFit` are each text's score averaged over the repeats (the paired statistics of the
detection row are computed on them); the per-fold and per-repeat AUROCs are reported beside (probes.csv).

**Out-of-domain generalisation.** For each domain D, a probe is trained on every sample of the other
domains and tested on D's: its AUROC on D with the bootstrap interval over D's samples, beside the
in-domain cross-validated AUROC on D. A training sample that shares a text with a sample of D is
left out of D's training set.

Too little data is said, not crashed on: fewer groups than folds (no cross-validation), a single
domain (no generalisation), an empty training set.

Boundary: numpy, scipy.sparse and scikit-learn (imported inside the functions); reads no file, draws
nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import paired_column
from saecli.report.detection import ALL, PROBE, Detection, Metric
from saecli.report.folds import group_codes, grouped_folds
from saecli.report.progress import Steps
from saecli.report.stats import (
    auroc,
    bootstrap_aurocs,
    direction,
    group_rng,
    paired_effect,
    percentile_interval,
    wilcoxon_p,
)
from saecli.residuals import RESIDUAL_KINDS, Residuals, residual_key

log = logging.getLogger(__name__)

PROBE_C = 1.0
"""Inverse L2 strength of the logistic regression (scikit-learn's default), on scaled inputs."""
PROBE_MAX_ITER = 2000
PROBE_REPEATS = 3
"""Repeats of the grouped cross-validation (fold seeds ``seed`` … ``seed + repeats − 1``)."""
PROBE_THREADS = 1
"""BLAS / OpenMP threads of the probe fits (:func:`run_probes`)."""
RESIDUAL, SAE = "residual", "sae"
"""What a probe reads: the residual-stream vector, or the SAE's feature activations."""


def probe_name(source: str, layer: int) -> str:
    """``probe_resid_l{L}`` or ``probe_sae_l{L}``: the probe's name in the detection ranking."""
    return f"probe_{'resid' if source == RESIDUAL else 'sae'}_l{layer}"


@dataclass
class ProbeFit:
    """A probe cross-validated over a run's samples (arrays in the run's row order)."""

    name: str
    layer: int
    source: str
    n_features: int
    folds: int
    fact: np.ndarray  # out-of-fold decision score of each sample's fact text, averaged over the repeats
    hall: np.ndarray  # … and of its hallucination
    fold: np.ndarray  # the test fold of each sample (first repeat)
    fold_aurocs: list[float] = field(default_factory=list)  # every fold of every repeat
    repeats: int = 1
    repeat_fact: np.ndarray | None = None  # repeats × n out-of-fold scores
    repeat_hall: np.ndarray | None = None
    repeat_aurocs: list[float] = field(default_factory=list)  # AUROC over all samples, per repeat
    groups: int = 0  # cross-validation groups (samples joined by shared texts)
    detections: list[Detection] = field(default_factory=list)  # per domain and all: mean AUROC, pooled interval
    repeat_sd: dict[str, float] = field(default_factory=dict)  # per domain and all: SD of the repeats' AUROCs
    rows: np.ndarray | None = None  # the run's rows the arrays are of (a subsample); None: every row
    run_counts: dict[str, int] = field(default_factory=dict)  # per domain and all: the run's samples


@dataclass(frozen=True)
class ProbeRow:
    """A line of probes.csv: one probe in one group (domain or ``all``)."""

    probe: str
    layer: int
    input: str
    domain: str
    n: int
    auroc: float  # mean over repeats
    ci_low: float  # pooled over repeats and resamples
    ci_high: float
    folds: int
    n_features: int
    fold_auroc_mean: float
    fold_auroc_sd: float
    c: float = PROBE_C
    repeats: int = 1
    repeat_auroc_sd: float = math.nan  # SD of the repeats' AUROCs (this group)
    groups: int = 0
    n_run: int = 0  # the run's samples in this group (> n: the probe was fitted on a subsample of them)


@dataclass(frozen=True)
class Generalisation:
    """A line of generalisation.csv: a probe trained on the other domains, tested on ``held_out``."""

    probe: str
    layer: int
    input: str
    held_out: str
    n_train: int
    n_test: int
    auroc: float
    ci_low: float
    ci_high: float
    in_domain_auroc: float  # the cross-validated AUROC of the same probe on this domain (NaN without CV)


@dataclass
class ProbeOutcome:
    fits: list[ProbeFit] = field(default_factory=list)
    generalisation: list[Generalisation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_probe(sparse: bool) -> Any:
    """An unfitted scaler + logistic-regression pipeline (deterministic: lbfgs has no randomness)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    scaler = MaxAbsScaler() if sparse else StandardScaler()
    return make_pipeline(scaler, LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))


def _is_sparse(x: Any) -> bool:
    import scipy.sparse as sp

    return sp.issparse(x)


def _stack(fact: Any, hall: Any) -> Any:
    """Fact rows then hall rows, as float64 (CSR stays CSR)."""
    import scipy.sparse as sp

    if _is_sparse(fact):
        return sp.vstack([fact, hall], format="csr", dtype=np.float64)
    return np.concatenate([np.asarray(fact, dtype=np.float64), np.asarray(hall, dtype=np.float64)], axis=0)


def _fit_scores(x: Any, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Fit on the rows ``train``, return the decision scores of the rows ``test``."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = make_probe(_is_sparse(x)).fit(x[train], y[train])
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("a probe did not converge in %d iterations; its scores are used as they are", PROBE_MAX_ITER)
    return np.asarray(model.decision_function(x[test]), dtype=np.float64)


def cross_validate(
    fact: Any, hall: Any, strata: Sequence[Any], *, n_splits: int, seed: int, groups: Sequence[Any] | None = None,
    on_fold: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:  # fmt: skip
    """Out-of-fold decision scores of the fact and hall texts of n samples (rows of ``fact``/``hall``),
    the test fold of each sample, and the AUROC within each fold (one split, fold seed ``seed``);
    ``on_fold(k)`` as fold k starts."""
    n = fact.shape[0]
    x = _stack(fact, hall)
    y = np.r_[np.zeros(n), np.ones(n)]
    scores = np.full(2 * n, math.nan)
    fold = np.full(n, -1, dtype=np.int64)
    fold_aurocs = []
    for k, (train, test) in enumerate(grouped_folds(strata, n_splits, seed, groups)):
        if on_fold is not None:
            on_fold(k)
        scores[test] = _fit_scores(x, y, train, test)
        samples = np.unique(test % n)
        fold[samples] = k
        fold_aurocs.append(auroc(scores[n + samples], scores[samples]))
    return scores[:n], scores[n:], fold, fold_aurocs


def repeated_cross_validate(
    fact: Any, hall: Any, strata: Sequence[Any], *, n_splits: int, seed: int, repeats: int = PROBE_REPEATS,
    groups: Sequence[Any] | None = None, on_fold: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:  # fmt: skip
    """:func:`cross_validate` with the fold seeds ``seed`` … ``seed + repeats − 1``: the fact and hall
    scores and the folds as (repeats × n) arrays, and the AUROCs of every fold of every repeat.
    ``on_fold(repeat, k)`` is called as each fold starts."""
    runs = []
    for r in range(repeats):
        tell = None if on_fold is None else functools.partial(on_fold, r)
        runs.append(cross_validate(fact, hall, strata, n_splits=n_splits, seed=seed + r, groups=groups, on_fold=tell))
    return (
        np.stack([r[0] for r in runs]),
        np.stack([r[1] for r in runs]),
        np.stack([r[2] for r in runs]),
        [a for r in runs for a in r[3]],
    )


def _parts(domains: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(domain, sample mask) per domain in first-seen order, then (``all``, every sample)."""
    labels = np.asarray(list(domains), dtype=object)
    return [(str(d), labels == d) for d in dict.fromkeys(labels.tolist())] + [(ALL, np.ones(labels.size, dtype=bool))]


def repeated_detections(fit: ProbeFit, domains: Sequence[str], *, bootstrap: int, seed: int) -> list[Detection]:
    """The probe's detection rows per domain (first-seen order) and over all: AUROC = the mean of the
    repeats' AUROCs; interval = percentiles of every repeat's AUROC on every bootstrap resample (the
    resamples :func:`~saecli.report.detection.detect_metrics` draws for that group); the paired
    statistics on the repeat-averaged scores."""
    f_all = fit.repeat_fact if fit.repeat_fact is not None else fit.fact[None, :]
    h_all = fit.repeat_hall if fit.repeat_hall is not None else fit.hall[None, :]
    rows = []
    for domain, mask in _parts(domains):
        f, h = f_all[:, mask], h_all[:, mask]
        m = int(mask.sum())
        point = float(np.mean([auroc(h[r], f[r]) for r in range(f.shape[0])]))
        lo, hi = math.nan, math.nan
        if bootstrap:
            ok = np.ones(m, dtype=bool)
            values = bootstrap_aurocs([(h[r], f[r], ok) for r in range(f.shape[0])], m, bootstrap, group_rng(seed, domain))
            lo, hi = percentile_interval(np.concatenate(values))
        f_mean, h_mean = f.mean(axis=0), h.mean(axis=0)
        mean, sd = paired_effect(h_mean, f_mean)
        rows.append(
            Detection(
                metric=fit.name,
                layer=fit.layer,
                domain=domain,
                n=m,
                auroc=point,
                ci_low=lo,
                ci_high=hi,
                direction=direction(point),
                fact_mean=float(f_mean.mean()),
                hall_mean=float(h_mean.mean()),
                mean_diff=mean,
                sd_diff=sd,
                wilcoxon_p=wilcoxon_p(h_mean, f_mean),
                family=PROBE,
            )  # fmt: skip
        )
    return rows


def probe_detections(fits: Sequence[ProbeFit]) -> list[Detection]:
    """The detection rows of every probe (repeated CV, :func:`repeated_detections`), for the ranking:
    what the report should add to its rows instead of ``detect_metrics`` on :func:`scores_frame`."""
    return [row for fit in fits for row in fit.detections]


def generalise(
    fact: Any, hall: Any, domains: Sequence[str], *, bootstrap: int, seed: int, groups: Sequence[Any] | None = None,
    on_domain: Callable[[str], None] | None = None,
) -> list[tuple[str, int, int, float, float, float]]:  # fmt: skip
    """For each domain D (first-seen order): train on the other domains' samples (less any that shares
    a group, i.e. a text, with a sample of D), test on D's: (D, n_train, n_test, AUROC, ci_low,
    ci_high); the interval is the bootstrap over D's samples, on the resamples the detection table
    draws for D (:func:`~saecli.report.stats.group_rng`). ``on_domain(D)`` is called as D starts."""
    n = fact.shape[0]
    labels = np.asarray(list(domains), dtype=object)
    codes = group_codes(n, groups)
    x = _stack(fact, hall)
    y = np.r_[np.zeros(n), np.ones(n)]
    out = []
    for domain in dict.fromkeys(labels.tolist()):
        if on_domain is not None:
            on_domain(str(domain))
        held = labels == domain
        test_samples = np.flatnonzero(held)
        train_samples = np.flatnonzero(~held & ~np.isin(codes, codes[held]))
        if train_samples.size == 0:
            continue
        train, test = np.r_[train_samples, n + train_samples], np.r_[test_samples, n + test_samples]
        scores = _fit_scores(x, y, train, test)
        f, h = scores[: test_samples.size], scores[test_samples.size :]
        point = auroc(h, f)
        lo, hi = math.nan, math.nan
        if bootstrap:
            (values,) = bootstrap_aurocs([(h, f, np.ones(f.size, dtype=bool))], f.size, bootstrap, group_rng(seed, domain))
            lo, hi = percentile_interval(values)
        out.append((str(domain), int(train_samples.size), int(test_samples.size), point, lo, hi))
    return out


def _fit_probe(
    source: str, layer: int, fact: Any, hall: Any, domains: Sequence[str], *, n_splits: int, seed: int, bootstrap: int,
    repeats: int, groups: Sequence[Any] | None, steps: Steps,
) -> ProbeFit:  # fmt: skip
    """One probe, cross-validated ``repeats`` times, with its detection rows (``repeats × n_splits + 1``
    steps: the folds, then the intervals)."""
    name = probe_name(source, layer)
    f, h, folds, fold_aurocs = repeated_cross_validate(
        fact, hall, domains, n_splits=n_splits, seed=seed, repeats=repeats, groups=groups,
        on_fold=lambda r, k: steps.start(f"{name}: repeat {r + 1}/{repeats}, fold {k + 1}/{n_splits}"),
    )  # fmt: skip
    fit = ProbeFit(
        name, layer, source, int(fact.shape[1]), n_splits, f.mean(axis=0), h.mean(axis=0), folds[0], fold_aurocs,
        repeats=repeats, repeat_fact=f, repeat_hall=h, repeat_aurocs=[auroc(h[r], f[r]) for r in range(repeats)],
        groups=int(np.unique(group_codes(fact.shape[0], groups)).size),
    )  # fmt: skip
    steps.start(f"{name}: intervals")
    fit.detections = repeated_detections(fit, domains, bootstrap=bootstrap, seed=seed)
    if repeats > 1:
        fit.repeat_sd = {d: float(np.std([auroc(h[r, m], f[r, m]) for r in range(repeats)], ddof=1)) for d, m in _parts(domains)}
    log.info("%s: cross-validated AUROC %.3f (%d folds × %d repeats)", name, np.mean(fit.repeat_aurocs), n_splits, repeats)
    return fit


def run_probes(
    residuals: Residuals, domains: Sequence[str], *, n_splits: int, seed: int, bootstrap: int,
    groups: Sequence[Any] | None = None, repeats: int = PROBE_REPEATS, steps: Steps | None = None,
) -> ProbeOutcome:  # fmt: skip
    """Every probe the residuals allow (residual and SAE features, per layer), cross-validated
    ``repeats`` times with folds grouped by ``groups`` (a label per sample, e.g. :func:`text_groups`;
    default: the sample), and its leave-one-domain-out generalisation. ``residuals`` rows are the
    run's rows (``domains``). ``steps``: its steps are added to the plan, then started one by one.

    The fits run with :data:`PROBE_THREADS` BLAS/OpenMP threads (``threadpoolctl``, scikit-learn's
    own dependency): a probe's matrices (at most ``2 × probe_samples`` rows) are too small for threads
    to pay, and on a busy 2-core machine they contend (a 10,000-text fit of 128 inputs: 0.08 s with one
    thread, 2.7 s with two while another process ran)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=PROBE_THREADS):
        return _run_probes(residuals, domains, n_splits=n_splits, seed=seed, bootstrap=bootstrap, groups=groups,
                           repeats=repeats, steps=steps or Steps())  # fmt: skip


def _run_probes(
    residuals: Residuals, domains: Sequence[str], *, n_splits: int, seed: int, bootstrap: int,
    groups: Sequence[Any] | None, repeats: int, steps: Steps,
) -> ProbeOutcome:  # fmt: skip
    """:func:`run_probes`, within its thread limit."""
    outcome = ProbeOutcome()
    n = residuals.n
    distinct = list(dict.fromkeys(domains))
    inputs = [
        (source, layer, table[residual_key(layer, "fact")], table[residual_key(layer, "hall")])
        for layer in residuals.layers
        for source, table in ((RESIDUAL, residuals.dense), (SAE, residuals.features))
        if all(residual_key(layer, kind) in table for kind in RESIDUAL_KINDS)
    ]
    if not inputs:
        outcome.notes.append("the residuals file holds no layer with both texts: no probe fitted")
        return outcome
    codes = group_codes(n, groups)
    n_groups, shared = int(np.unique(codes).size), int((np.bincount(codes)[codes] > 1).sum())
    if shared:
        outcome.notes.append(
            f"probes: {shared} samples share a text with another sample; the {n} samples form {n_groups} "
            "groups, each kept in one fold"
        )
    # The folds are stratified by domain over both texts of each sample: scikit-learn refuses them
    # when every domain has fewer than n_splits texts (8 samples in 4 domains, as --limit 8 picks).
    largest = max(np.unique(np.asarray(list(domains), dtype=object).astype(str), return_counts=True)[1], default=0)
    cv = n_groups >= n_splits and 2 * int(largest) >= n_splits
    if not cv:
        outcome.notes.append(f"probes: not enough data for {n_splits}-fold cross-validation ({n} samples, {n_groups} groups, "
                             f"at most {largest} in a domain); no probe AUROC")  # fmt: skip
    if len(distinct) < 2:
        outcome.notes.append("out-of-domain generalisation: not enough data (one domain only)")
    steps.plan(len(inputs) * ((repeats * n_splits + 1 if cv else 0) + (len(distinct) if len(distinct) >= 2 else 0)))
    for source, layer, fact, hall in inputs:
        in_domain: dict[str, float] = {}
        if cv:
            fit = _fit_probe(source, layer, fact, hall, domains, n_splits=n_splits, seed=seed, bootstrap=bootstrap,
                             repeats=repeats, groups=groups, steps=steps)  # fmt: skip
            outcome.fits.append(fit)
            in_domain = {r.domain: r.auroc for r in fit.detections}
        if len(distinct) >= 2:
            name = probe_name(source, layer)
            for domain, n_train, n_test, point, lo, hi in generalise(
                fact, hall, domains, bootstrap=bootstrap, seed=seed, groups=groups,
                on_domain=lambda d, name=name: steps.start(f"{name}: trained without {d}, tested on it"),
            ):  # fmt: skip
                outcome.generalisation.append(
                    Generalisation(name, layer, source, domain, n_train, n_test, point, lo, hi, in_domain.get(domain, math.nan))
                )
    return outcome


def _run_rows(values: np.ndarray, rows: np.ndarray | None, n: int) -> np.ndarray:
    """A subsample's values at their ``rows`` of the run's n, NaN elsewhere (as they are without rows)."""
    if rows is None:
        return values
    out = np.full(n, math.nan)
    out[rows] = values
    return out


def scores_frame(fits: Sequence[ProbeFit], domains: Sequence[str]) -> tuple[pl.DataFrame, list[Metric]]:
    """The out-of-fold scores (averaged over the repeats) as a frame (``domain``, ``{probe}_fact``,
    ``{probe}_hall``) and their metrics, for :func:`~saecli.report.detection.detect_metrics`. A probe
    fitted on a subsample (``fit.rows``) has NaN on the other rows: the detection table leaves them out."""
    columns: dict[str, Any] = {"domain": list(domains)}
    metrics = []
    for fit in fits:
        fact, hall = paired_column(fit.name, "fact"), paired_column(fit.name, "hall")
        columns[fact], columns[hall] = _run_rows(fit.fact, fit.rows, len(domains)), _run_rows(fit.hall, fit.rows, len(domains))
        metrics.append(Metric(fit.name, fact, hall, fit.layer, fit.source, PROBE))
    return pl.DataFrame(columns), metrics


def probe_rows(fits: Sequence[ProbeFit], rows: Sequence[Detection] = ()) -> list[ProbeRow]:
    """probes.csv: each probe's repeated-CV detection rows (per domain and all; ``rows`` are used only
    for a fit without them) with its fit's details."""
    by_name = {fit.name: fit for fit in fits}
    out = []
    for fit in fits:
        per_fold = np.asarray(fit.fold_aurocs, dtype=np.float64)
        per_fold = per_fold[np.isfinite(per_fold)]
        for r in fit.detections or [r for r in rows if r.metric == fit.name]:
            out.append(
                ProbeRow(
                    probe=fit.name,
                    layer=fit.layer,
                    input=fit.source,
                    domain=r.domain,
                    n=r.n,
                    auroc=r.auroc,
                    ci_low=r.ci_low,
                    ci_high=r.ci_high,
                    folds=fit.folds,
                    n_features=fit.n_features,
                    fold_auroc_mean=float(per_fold.mean()) if per_fold.size else math.nan,
                    fold_auroc_sd=float(per_fold.std(ddof=1)) if per_fold.size > 1 else math.nan,
                    repeats=fit.repeats,
                    repeat_auroc_sd=fit.repeat_sd.get(r.domain, math.nan),
                    groups=fit.groups,
                    n_run=fit.run_counts.get(r.domain, r.n),
                )  # fmt: skip
            )
    order = {name: i for i, name in enumerate(by_name)}
    return sorted(out, key=lambda p: (order[p.probe], p.domain == ALL))
