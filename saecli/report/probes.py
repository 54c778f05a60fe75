"""Probes: logistic regression on what the SAEs read, as the baseline the geometry metrics must approach.

For each layer, two probes tell the hallucinated text from the factual one:

* ``probe_resid_l{L}``: on the residual-stream vector the layer's SAE encodes (d_model inputs,
  standardised: ``StandardScaler``);
* ``probe_sae_l{L}``: on that SAE's feature activations f (d_sae inputs, sparse, scaled by each
  feature's largest absolute value: ``MaxAbsScaler``, which keeps them sparse).

Each is scikit-learn's ``LogisticRegression`` (L2, ``C`` = :data:`PROBE_C`, lbfgs) behind its scaler
in a ``Pipeline``, so the scaling is fitted on the training folds only. Every sample gives two rows
(its fact text, label 0; its hallucination, label 1).

**Cross-validation, folds grouped by sample.** ``StratifiedGroupKFold`` with the sample as the group
and the domain as the stratum (shuffled, seeded): a sample's two texts are always in the same fold, so
a probe is never tested on a text whose twin it was trained on, and each fold holds the domains in
about their overall proportions. Each text gets the decision score of the model that did not see it
(out of fold); the AUROC of those scores, hall vs fact, with its bootstrap interval over samples, is
computed per domain and over all exactly as for a metric (:func:`saecli.report.detection.detect_metrics`),
on the same resamples. The interval covers the resampling of the test samples, not the variation of
the fitted models; the spread of the per-fold AUROCs is reported beside it (probes.csv).

**Out-of-domain generalisation.** For each domain D, a probe is trained on every sample of the other
domains and tested on D's: its AUROC on D with the bootstrap interval over D's samples, beside the
in-domain cross-validated AUROC on D.

Too little data is said, not crashed on: fewer samples than folds (no cross-validation), a single
domain (no generalisation), an empty training set.

Boundary: numpy, scipy.sparse and scikit-learn (imported inside the functions); reads no file, draws
nothing.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import paired_column
from saecli.report.detection import ALL, PROBE, Detection, Metric
from saecli.report.stats import auroc, bootstrap_aurocs, group_rng, percentile_interval
from saecli.residuals import RESIDUAL_KINDS, Residuals, residual_key

log = logging.getLogger(__name__)

PROBE_C = 1.0
"""Inverse L2 strength of the logistic regression (scikit-learn's default), on scaled inputs."""
PROBE_MAX_ITER = 2000
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
    fact: np.ndarray  # out-of-fold decision score of each sample's fact text
    hall: np.ndarray  # … and of its hallucination
    fold: np.ndarray  # the test fold of each sample
    fold_aurocs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ProbeRow:
    """A line of probes.csv: one probe in one group (domain or ``all``)."""

    probe: str
    layer: int
    input: str
    domain: str
    n: int
    auroc: float
    ci_low: float
    ci_high: float
    folds: int
    n_features: int
    fold_auroc_mean: float
    fold_auroc_sd: float
    c: float = PROBE_C


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


def grouped_folds(strata: Sequence[Any], n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) row indices of each fold over the 2n rows fact₀…factₙ₋₁, hall₀…hallₙ₋₁.

    ``StratifiedGroupKFold`` (shuffled with ``seed``), groups = the sample (row i and row n + i),
    strata = each sample's domain (``strata``): a sample's two texts never straddle train and test.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(strata)
    codes = np.unique(np.asarray(list(strata), dtype=object).astype(str), return_inverse=True)[1]
    groups = np.tile(np.arange(n), 2)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only k members"
        return [(train, test) for train, test in splitter.split(np.zeros((2 * n, 1)), np.tile(codes, 2), groups)]


def cross_validate(
    fact: Any, hall: Any, strata: Sequence[Any], *, n_splits: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Out-of-fold decision scores of the fact and hall texts of n samples (rows of ``fact``/``hall``),
    the test fold of each sample, and the AUROC within each fold."""
    n = fact.shape[0]
    x = _stack(fact, hall)
    y = np.r_[np.zeros(n), np.ones(n)]
    scores = np.full(2 * n, math.nan)
    fold = np.full(n, -1, dtype=np.int64)
    fold_aurocs = []
    for k, (train, test) in enumerate(grouped_folds(strata, n_splits, seed)):
        scores[test] = _fit_scores(x, y, train, test)
        samples = np.unique(test % n)
        fold[samples] = k
        fold_aurocs.append(auroc(scores[n + samples], scores[samples]))
    return scores[:n], scores[n:], fold, fold_aurocs


def generalise(
    fact: Any, hall: Any, domains: Sequence[str], *, bootstrap: int, seed: int
) -> list[tuple[str, int, int, float, float, float]]:
    """For each domain D (first-seen order): train on the other domains' samples, test on D's:
    (D, n_train, n_test, AUROC, ci_low, ci_high); the interval is the bootstrap over D's samples, on
    the resamples the detection table draws for D (:func:`~saecli.report.stats.group_rng`)."""
    n = fact.shape[0]
    labels = np.asarray(list(domains), dtype=object)
    x = _stack(fact, hall)
    y = np.r_[np.zeros(n), np.ones(n)]
    out = []
    for domain in dict.fromkeys(labels.tolist()):
        held = labels == domain
        test_samples, train_samples = np.flatnonzero(held), np.flatnonzero(~held)
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


def run_probes(residuals: Residuals, domains: Sequence[str], *, n_splits: int, seed: int, bootstrap: int) -> ProbeOutcome:
    """Every probe the residuals allow (residual and SAE features, per layer), cross-validated, and
    its leave-one-domain-out generalisation. ``residuals`` rows are the run's rows (``domains``)."""
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
    cv = n >= n_splits
    if not cv:
        outcome.notes.append(f"probes: not enough data for {n_splits}-fold cross-validation ({n} samples); no probe AUROC")
    if len(distinct) < 2:
        outcome.notes.append("out-of-domain generalisation: not enough data (one domain only)")
    for source, layer, fact, hall in inputs:
        name = probe_name(source, layer)
        in_domain: dict[str, float] = {}
        if cv:
            f, h, fold, fold_aurocs = cross_validate(fact, hall, domains, n_splits=n_splits, seed=seed)
            fit = ProbeFit(name, layer, source, int(fact.shape[1]), n_splits, f, h, fold, fold_aurocs)
            outcome.fits.append(fit)
            labels = np.asarray(list(domains), dtype=object)
            in_domain = {d: auroc(h[labels == d], f[labels == d]) for d in distinct}
            log.info("%s: cross-validated AUROC %.3f (%d folds)", name, auroc(h, f), n_splits)
        if len(distinct) >= 2:
            for domain, n_train, n_test, point, lo, hi in generalise(fact, hall, domains, bootstrap=bootstrap, seed=seed):
                outcome.generalisation.append(
                    Generalisation(name, layer, source, domain, n_train, n_test, point, lo, hi, in_domain.get(domain, math.nan))
                )
    return outcome


def scores_frame(fits: Sequence[ProbeFit], domains: Sequence[str]) -> tuple[pl.DataFrame, list[Metric]]:
    """The out-of-fold scores as a frame (``domain``, ``{probe}_fact``, ``{probe}_hall``) and their
    metrics, for :func:`~saecli.report.detection.detect_metrics`."""
    columns: dict[str, Any] = {"domain": list(domains)}
    metrics = []
    for fit in fits:
        fact, hall = paired_column(fit.name, "fact"), paired_column(fit.name, "hall")
        columns[fact], columns[hall] = fit.fact, fit.hall
        metrics.append(Metric(fit.name, fact, hall, fit.layer, fit.source, PROBE))
    return pl.DataFrame(columns), metrics


def probe_rows(fits: Sequence[ProbeFit], rows: Sequence[Detection]) -> list[ProbeRow]:
    """probes.csv: each probe's detection rows (per domain and all) with its fit's details."""
    by_name = {fit.name: fit for fit in fits}
    out = []
    for r in rows:
        fit = by_name.get(r.metric)
        if fit is None:
            continue
        per_fold = np.asarray(fit.fold_aurocs, dtype=np.float64)
        per_fold = per_fold[np.isfinite(per_fold)]
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
            )  # fmt: skip
        )
    order = {name: i for i, name in enumerate(by_name)}
    return sorted(out, key=lambda p: (order[p.probe], p.domain == ALL))
