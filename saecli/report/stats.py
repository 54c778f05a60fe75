"""The statistics of a report, as small pure functions on numpy arrays.

Boundary: numpy (and scipy, imported inside :func:`wilcoxon_p`) only: no polars, no files, no
plotting, no knowledge of which columns a run has. :mod:`saecli.report.detection` applies these
functions to a run's table.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator

import numpy as np

BOOTSTRAP_BLOCK = 1 << 21
"""Resample × sample weights held at once (16 MiB of float64): the bootstrap is drawn in chunks of
``BOOTSTRAP_BLOCK // n`` resamples, so its memory does not grow with ``bootstrap × n``."""


def auroc(hall: np.ndarray, fact: np.ndarray) -> float:
    """Area under the ROC curve of the score separating hall values from fact values.

    ``AUROC = P(h > f) + ½·P(h = f)`` over all (hall, fact) pairs, i.e. the Mann-Whitney
    ``U / (n_h·n_f)`` with ``U = R_h − n_h(n_h + 1)/2``, ``R_h`` the sum of the mid-ranks of the hall
    values in the pooled sample. 1.0: every hall value is above every fact value; 0.0: every one is
    below; 0.5: no separation. NaN when either side is empty.
    """
    h, f = np.asarray(hall, dtype=np.float64), np.asarray(fact, dtype=np.float64)
    if h.size == 0 or f.size == 0:
        return math.nan
    ranks = _midranks(np.concatenate([h, f]))
    u = ranks[: h.size].sum() - h.size * (h.size + 1) / 2.0
    return float(u / (h.size * f.size))


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    mid = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mid, ends - starts)
    return ranks


def weighted_auroc(hall: np.ndarray, fact: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of paired samples counted ``weights`` times (one row of weights per resample).

    Sample i contributes its hall value ``h_i`` and its fact value ``f_i``, each ``w_i`` times, so
    ``AUROC_w = Σ_i Σ_j w_i·w_j·[1(h_i > f_j) + ½·1(h_i = f_j)] / (Σ_i w_i)²``. With bootstrap counts
    as weights this is exactly the AUROC of the resampled data, in O(B·n log n) instead of a re-rank
    per resample. ``weights`` is (n,) or (B, n); returns a scalar array or (B,).
    """
    h, f = np.asarray(hall, dtype=np.float64), np.asarray(fact, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(f, kind="mergesort")
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w[:, order], axis=1)], axis=1)
    below = np.searchsorted(f[order], h, side="left")  # fact values < h_i
    at_or_below = np.searchsorted(f[order], h, side="right")  # fact values ≤ h_i
    score = (cum[:, below] + cum[:, at_or_below]) / 2.0  # weighted count of f_j < h_i, plus ½ ties
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * score).sum(axis=1) / total**2
    return out[0] if np.ndim(weights) == 1 else out


def group_rng(seed: int, group: str) -> np.random.Generator:
    """One generator per (seed, group): a group's resamples never depend on the other groups."""
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Counts of each of n samples in ``resamples`` resamples of size n drawn with replacement:
    one multinomial(n; 1/n, …, 1/n) row per resample, shape (resamples, n)."""
    if n == 0 or resamples == 0:
        return np.zeros((resamples, n))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def bootstrap_chunks(n: int, resamples: int, rng: np.random.Generator, block: int | None = None) -> Iterator[np.ndarray]:
    """:func:`bootstrap_weights` in successive chunks of at most ``block // n`` rows (at least one).

    The generator draws each row in turn, so the chunks concatenated are exactly
    ``bootstrap_weights(n, resamples, rng)``: the same seed gives the same intervals whatever the chunk size.
    """
    rows = max(1, (BOOTSTRAP_BLOCK if block is None else block) // max(n, 1))
    for start in range(0, resamples, rows):
        yield bootstrap_weights(n, min(rows, resamples - start), rng)


def bootstrap_aurocs(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, bootstrap: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The resampled AUROC of each (hall, fact, ok) metric of n samples (``ok``: the mask of the samples
    the metric has, ``hall`` and ``fact`` their values), all metrics on the same resamples, drawn in
    chunks (memory O(chunk × n), not O(bootstrap × n)); an empty array for a metric with no sample."""
    out = [np.empty(bootstrap if ok.any() else 0) for _, _, ok in pairs]
    start = 0
    for weights in bootstrap_chunks(n, bootstrap, rng):
        stop = start + weights.shape[0]
        for values, (h, f, ok) in zip(out, pairs, strict=True):
            if values.size:
                values[start:stop] = weighted_auroc(h, f, weights[:, ok])
        start = stop
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval: the (1 − level)/2 and (1 + level)/2 quantiles of the
    resampled statistic (NaN resamples ignored; NaN, NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_effect(hall: np.ndarray, fact: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of ``d_i = h_i − f_i``; SD is NaN for n < 2."""
    d = np.asarray(hall, dtype=np.float64) - np.asarray(fact, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan


def wilcoxon_p(hall: np.ndarray, fact: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``d_i = h_i − f_i`` against a zero median shift.

    Zero differences are dropped (Wilcoxon's convention); scipy picks the exact distribution for
    small untied samples and the tie-corrected normal approximation otherwise. 1.0 when every
    difference is zero (no evidence of a shift); NaN when there are no samples.

    Up to 13 samples with ties or zeros, scipy runs an exact permutation test over the 2^n sign
    patterns, which takes it seconds per call; :func:`_signed_rank_permutation_p` computes the same
    p-value by enumerating the patterns in one matrix product.
    """
    d = np.asarray(hall, dtype=np.float64) - np.asarray(fact, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    if d.size <= PERMUTATION_MAX_N and (np.any(d == 0) or np.unique(np.abs(d[d != 0])).size < np.count_nonzero(d)):
        return _signed_rank_permutation_p(d)
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


PERMUTATION_MAX_N = 13
"""Below this many samples with ties or zeros scipy's ``wilcoxon`` takes the exact permutation test."""


def _signed_rank_permutation_p(d: np.ndarray) -> float:
    """Two-sided p-value of the exact sign-flip permutation test of the Wilcoxon W+ statistic, as
    ``scipy.stats.wilcoxon(d)`` computes it for n ≤ 13 with ties or zeros: W+ = sum of the mid-ranks of
    |d| over the positive d (zeros dropped), its null distribution over all 2^n sign patterns, and
    p = 2·min(P(W ≤ w), P(W ≥ w)) with scipy's relative tolerance on the comparisons, at most 1."""
    d = d[d != 0]
    n = d.size
    ranks = _midranks(np.abs(d))
    observed = float(ranks[d > 0].sum())
    patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    null = patterns @ ranks
    gamma = abs(1e-14 * observed)  # scipy.stats.permutation_test's tolerance for equal statistics
    less = np.count_nonzero(null <= observed + gamma) / null.size
    greater = np.count_nonzero(null >= observed - gamma) / null.size
    return float(min(1.0, 2 * min(less, greater)))


def direction(value: float) -> str:
    """``hall higher`` for AUROC > 0.5, ``hall lower`` for AUROC < 0.5, ``none`` at 0.5 (or NaN)."""
    if not math.isfinite(value) or value == 0.5:
        return "none"
    return "hall higher" if value > 0.5 else "hall lower"
