"""The statistics of a report, as small pure functions on numpy arrays.

* the AUROC (Mann-Whitney) and its score-type interval (:func:`auroc_interval`), honest at 0 and 1;
* the within-pair win rate and its Wilson interval (:func:`win_rate`, :func:`wilson_interval`);
* the Wilcoxon signed-rank p-value and the Benjamini-Hochberg q-values (:func:`bh_qvalues`);
* the sign-flip permutation null of the best metric (:func:`flip_null_max`), family-wise;
* the bootstrap over pairs (weights, chunks, resampled AUROCs), for paired differences of AUROCs.

Boundary: numpy (and scipy, imported inside :func:`wilcoxon_p`) only: no polars, no files, no
plotting, no knowledge of which columns a run has. :mod:`saecli.report.detection` applies these
functions to a run's table.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from statistics import NormalDist

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
    cum = np.zeros((w.shape[0], f.size + 1))
    np.cumsum(w[:, order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(f[order], h, side="left")  # fact values < h_i
    at_or_below = np.searchsorted(f[order], h, side="right")  # fact values ≤ h_i
    # twice the weighted count of f_j < h_i plus ½ ties: one gather when no h_i ties a fact value.
    # With whole-number weights (bootstrap counts) every sum below is a whole number under 2⁵³, so
    # the result does not depend on the order of the additions.
    twice = cum[:, below]
    if np.array_equal(below, at_or_below):
        twice *= 2.0
    else:
        twice += cum[:, at_or_below]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", w, twice) / 2.0 / total**2
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
                values[start:stop] = weighted_auroc(h, f, weights if ok.all() else weights[:, ok])
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


def z_value(level: float = 0.95) -> float:
    """The two-sided standard normal quantile of ``level`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def _hanley_mcneil_variance(theta: float, n_hall: int, n_fact: int) -> float:
    """Var(AUROC) at a true AUROC ``theta`` (Hanley & McNeil 1982, with their exponential
    approximations Q1 = θ/(2 − θ), Q2 = 2θ²/(1 + θ)), both sample sizes replaced by their mean N*
    (Newcombe 2006, method 5): θ(1 − θ)·[1 + (N* − 1)(1 − θ)/(2 − θ) + (N* − 1)θ/(1 + θ)] / (n_h·n_f)."""
    m = (n_hall + n_fact) / 2.0
    return theta * (1 - theta) * (1 + (m - 1) * (1 - theta) / (2 - theta) + (m - 1) * theta / (1 + theta)) / (n_hall * n_fact)


def auroc_interval(value: float, n_hall: int, n_fact: int, level: float = 0.95) -> tuple[float, float]:
    """Score-type interval of an AUROC (Newcombe 2006, "method 5"): every θ with
    ``(AUROC − θ)² ≤ z²·V(θ)``, V the Hanley-McNeil variance evaluated at θ, not at the estimate.

    Why this one: the percentile bootstrap and the Wald (DeLong) interval take their width from the
    data's own spread, which vanishes at perfect separation (AUROC 0 or 1 gives [0, 0] or [1, 1], and
    true values of 0.98 are then "excluded"); like Wilson's interval for a proportion, the score
    interval asks which true values would make the estimate unsurprising, so its width at 0 or 1 is
    that of the nearest plausible θ ([0.960, 1] for 50 pairs at AUROC 1). Its coverage is not taken
    on trust: ``tests/report/test_stats.py`` checks by simulation that it covers the true AUROC in
    about 95% of datasets at 0.7 and at 0.99 with 50 pairs. V assumes a pair's two values
    independent; for paired data Var(AUROC) ≈ V − 2·Cov(G(h_i), 1 − F(f_i))/n, so the usual
    positive correlation within a pair makes the interval wider than needed (conservative), and only
    a negative one would make it too narrow. Solved by bisection on each side of the estimate; NaN,
    NaN when there is no value.
    """
    if not math.isfinite(value) or n_hall < 1 or n_fact < 1:
        return math.nan, math.nan
    z2 = z_value(level) ** 2

    def end(far: float) -> float:
        """Bisect between ``far`` (0 or 1: outside unless it is the estimate) and the estimate (inside)."""
        near = value
        if far == value:
            return value
        for _ in range(50):  # |far − near| < 2⁻⁵⁰
            mid = (far + near) / 2
            if (value - mid) ** 2 > z2 * _hanley_mcneil_variance(mid, n_hall, n_fact):
                far = mid
            else:
                near = mid
        return near

    return end(0.0), end(1.0)


def win_rate(hall: np.ndarray, fact: np.ndarray) -> float:
    """Within-pair win rate: the share of samples whose hallucination scores above its own fact,
    ties counting ½ (``mean(1(h_i > f_i) + ½·1(h_i = f_i))``); NaN without samples."""
    h, f = np.asarray(hall, dtype=np.float64), np.asarray(fact, dtype=np.float64)
    if h.size == 0:
        return math.nan
    return float(np.mean((h > f) + 0.5 * (h == f)))


def wilson_interval(rate: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``rate`` of ``n`` independent trials (the pairs):
    ``(p + z²/2n ± z·√(p(1 − p)/n + z²/4n²)) / (1 + z²/n)``. Near-nominal coverage also at 0 and 1
    (where the Wald interval has width 0); ties counted ½ only shrink the true variance, so it stays
    conservative with ties. NaN, NaN for n = 0."""
    if n < 1 or not math.isfinite(rate):
        return math.nan, math.nan
    z2 = z_value(level) ** 2
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(max(rate * (1 - rate), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n) * math.sqrt(z2)
    # at 0 and 1 the end on the boundary is the boundary itself (exact: rounding would leave 0.9999…)
    return 0.0 if rate == 0 else max(0.0, centre - half), 1.0 if rate == 1 else min(1.0, centre + half)


def bh_qvalues(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values of one family: ``q_(i) = min over j ≥ i of p_(j)·m / j`` over the m
    finite p-values sorted ascending, at most 1; a row with q < α is a discovery at false-discovery
    rate α (valid for independent or positively dependent tests). NaN p-values stay NaN and are not
    counted in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok], kind="mergesort")]
    scaled = p[order] * ok.size / np.arange(1, ok.size + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def flip_null_max(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """The permutation null of ``max over metrics of |AUROC − 0.5|`` for n paired samples.

    Each permutation swaps each sample's fact and hallucination with probability ½, the same swaps
    for every metric (so the correlation between metrics is kept); ``pairs`` are (hall, fact, ok) as
    in :func:`bootstrap_aurocs`. A swap moves no value, only its label, so each metric's pooled
    mid-ranks are computed once and a permutation's hall rank sum is
    ``Σ r_h + Σ_i flip_i·(r_f,i − r_h,i)``: one matrix product per chunk of permutations. Returns
    (permutations,) maxima (NaN-free: metrics with no sample are skipped; zeros when none has one).
    """
    base, scale, offset = np.empty(len(pairs)), np.empty(len(pairs)), np.empty(len(pairs))
    delta = np.zeros((n, len(pairs)))
    used = np.zeros(len(pairs), dtype=bool)
    for j, (h, f, ok) in enumerate(pairs):  # one metric's values at a time (``pairs`` may make them when asked)
        if not ok.any():
            continue
        ranks = _midranks(np.concatenate([h, f]))
        k = h.size
        base[j], scale[j], offset[j], used[j] = ranks[:k].sum(), 1.0 / (k * k), k * (k + 1) / 2.0, True
        delta[ok, j] = ranks[k:] - ranks[:k]
        del ranks
    if not used.all():
        base, scale, offset, delta = base[used], scale[used], offset[used], delta[:, used]
    out = np.zeros(permutations)
    rows = max(1, BOOTSTRAP_BLOCK // max(n, 1))
    for start in range(0, permutations, rows):
        flips = (rng.random((min(rows, permutations - start), n)) < 0.5).astype(np.float64)
        if used.any():
            aurocs = (base + flips @ delta - offset) * scale
            out[start : start + flips.shape[0]] = np.abs(aurocs - 0.5).max(axis=1)
    return out


def permutation_p(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null ≥ observed}) / (1 + permutations)``: the permutation p-value, never 0 (the
    observed labelling counts as one permutation); a relative tolerance of 1e-12 for equal values."""
    if not math.isfinite(observed) or null.size == 0:
        return math.nan
    return float((1 + np.count_nonzero(null >= observed - 1e-12 * max(1.0, abs(observed)))) / (1 + null.size))
