"""saecli.report.stats: the statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saecli.report.stats import (
    _midranks,
    auroc,
    auroc_interval,
    bh_qvalues,
    bootstrap_chunks,
    bootstrap_weights,
    direction,
    flip_null_max,
    paired_effect,
    percentile_interval,
    permutation_p,
    weighted_auroc,
    wilcoxon_p,
    wilson_interval,
    win_rate,
)


def _pairs_auroc(hall, fact):
    """The definition, pair by pair."""
    return sum(1.0 if h > f else 0.5 if h == f else 0.0 for h in hall for f in fact) / (len(hall) * len(fact))


# -- AUROC -----------------------------------------------------------------------------------------


def test_auroc_hand_computed():
    # h=3 beats 2 and 0 (2), h=1 beats 0 (1), h=4 beats 2 and 0 (2): 5 of 9 pairs.
    assert auroc(np.array([3.0, 1.0, 4.0]), np.array([2.0, 0.0, 5.0])) == pytest.approx(5 / 9)


def test_auroc_ties():
    # h=1: ½ (tie with f=1) twice; h=2: 1 + ½ + ½ = 2 → 3 of 9.
    assert auroc(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 2.0])) == pytest.approx(1 / 3)
    assert auroc(np.full(5, 7.0), np.full(5, 7.0)) == 0.5
    rng = np.random.default_rng(3)
    hall, fact = rng.integers(0, 4, 40).astype(float), rng.integers(0, 4, 40).astype(float)  # many ties
    assert auroc(hall, fact) == pytest.approx(_pairs_auroc(hall, fact), abs=1e-12)


def test_auroc_perfect_separation_and_direction():
    low, high = np.array([0.1, 0.2, 0.3, 0.3]), np.array([0.5, 0.9, 0.6, 0.31])
    assert auroc(high, low) == 1.0 and direction(1.0) == "hall higher"
    assert auroc(low, high) == 0.0 and direction(0.0) == "hall lower"
    assert direction(0.5) == "none" and math.isnan(auroc(np.array([]), low))


def test_weighted_auroc_is_the_auroc_of_the_resampled_data():
    rng = np.random.default_rng(1)
    hall, fact = rng.integers(0, 6, 25).astype(float), rng.integers(0, 6, 25).astype(float)
    assert weighted_auroc(hall, fact, np.ones(25)) == pytest.approx(auroc(hall, fact), abs=1e-12)
    weights = bootstrap_weights(25, 7, np.random.default_rng(0))
    assert weights.shape == (7, 25) and (weights.sum(axis=1) == 25).all()
    fast = weighted_auroc(hall, fact, weights)
    for b in range(7):
        idx = np.repeat(np.arange(25), weights[b].astype(int))  # pairs stay together
        assert fast[b] == pytest.approx(auroc(hall[idx], fact[idx]), abs=1e-12)


# -- bootstrap, effect, test -----------------------------------------------------------------------


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(5)
    fact = rng.normal(size=60)
    hall = fact + rng.normal(0.4, 1.0, size=60)
    point = auroc(hall, fact)

    def interval(seed):
        return percentile_interval(weighted_auroc(hall, fact, bootstrap_weights(60, 500, np.random.default_rng(seed))))

    lo, hi = interval(0)
    assert lo < point < hi and 0.5 < point and hi - lo < 0.4
    assert interval(0) == (lo, hi)
    assert interval(1) != (lo, hi)


def test_paired_effect_and_wilcoxon():
    mean, sd = paired_effect(np.array([2.0, 4.0, 9.0]), np.array([1.0, 1.0, 3.0]))  # d = 1, 3, 6
    assert mean == pytest.approx(10 / 3) and sd == pytest.approx(
        math.sqrt(((1 - 10 / 3) ** 2 + (3 - 10 / 3) ** 2 + (6 - 10 / 3) ** 2) / 2)
    )
    assert wilcoxon_p(np.ones(10), np.ones(10)) == 1.0
    fact = np.linspace(0, 1, 30)
    assert wilcoxon_p(fact + 0.5, fact) < 1e-4  # every difference positive
    # Exact null distribution of W+ for n = 10 (every sign pattern equally likely), by counting subsets of
    # the ranks 1..10: d has ranks 9 and 10 negative, so W− = 19 and p = 2·P(W ≤ 19).
    counts = [1] + [0] * 55
    for rank in range(1, 11):
        counts = [c + (counts[s - rank] if s >= rank else 0) for s, c in enumerate(counts)]
    d = np.array([1, 2, 3, 4, 5, 6, 7, 8, -9, -10], dtype=float)
    assert wilcoxon_p(d, np.zeros(10)) == pytest.approx(2 * sum(counts[:20]) / 2**10)


def test_bootstrap_chunks_are_the_single_draw():
    for n, resamples, block in [(15, 200, 16), (15, 200, 45), (7, 5, 1), (40, 33, 10**6), (1, 3, 1)]:
        whole = bootstrap_weights(n, resamples, np.random.default_rng([3, n]))
        chunks = list(bootstrap_chunks(n, resamples, np.random.default_rng([3, n]), block))
        assert all(c.shape[0] * n <= max(block, n) for c in chunks)
        assert np.array_equal(np.concatenate(chunks), whole)


def test_wilcoxon_with_ties_on_few_samples_is_scipys_permutation_p():
    """Up to 13 samples with ties or zeros the p-value is computed by enumerating the sign patterns;
    it must equal scipy's own (slow) exact permutation test."""
    import warnings

    from scipy.stats import wilcoxon

    rng = np.random.default_rng(4)
    checked = 0
    for n in (2, 3, 5, 8, 9):
        for _ in range(3):
            d = rng.integers(-3, 4, size=n).astype(float)
            if not np.any(d != 0):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = float(wilcoxon(d).pvalue)
            assert wilcoxon_p(d, np.zeros(n)) == pytest.approx(expected, abs=1e-12), d
            checked += 1
    assert checked >= 12


# -- intervals with honest coverage ----------------------------------------------------------------


@pytest.mark.parametrize("true_auroc", [0.7, 0.99])
def test_auroc_interval_covers_the_true_value_95_percent_of_the_time(true_auroc):
    """50 pairs, binormal scores with the shift that gives ``true_auroc`` (Φ(shift/√2)); 400 datasets."""
    from statistics import NormalDist

    shift = math.sqrt(2) * NormalDist().inv_cdf(true_auroc)
    rng = np.random.default_rng(int(true_auroc * 100))
    covered = 0
    for _ in range(400):
        fact, hall = rng.normal(size=50), rng.normal(shift, 1.0, size=50)
        lo, hi = auroc_interval(auroc(hall, fact), 50, 50)
        covered += lo <= true_auroc <= hi
    assert 0.92 <= covered / 400 <= 0.99, covered / 400


def test_auroc_interval_keeps_its_width_at_perfect_separation():
    lo, hi = auroc_interval(1.0, 50, 50)
    assert hi == 1.0 and 0.85 < lo < 0.97  # not [1, 1]: a true 0.95 is not excluded by 50 pairs
    assert auroc_interval(0.0, 50, 50) == pytest.approx((1 - hi, 1 - lo), abs=1e-9)  # mirrored
    lo, hi = auroc_interval(0.8, 50, 50)
    assert lo < 0.8 < hi and hi - lo < 0.3
    wide, narrow = auroc_interval(0.8, 10, 10), auroc_interval(0.8, 500, 500)
    assert wide[1] - wide[0] > hi - lo > narrow[1] - narrow[0]
    assert all(math.isnan(v) for v in auroc_interval(math.nan, 5, 5))


def test_win_rate_and_its_wilson_interval():
    assert win_rate(np.array([2.0, 1.0, 5.0, 3.0]), np.array([1.0, 1.0, 6.0, 0.0])) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # Wilson by hand: p = 0.3, n = 20, z = 1.959964
    z = 1.959963984540054
    centre = (0.3 + z * z / 40) / (1 + z * z / 20)
    half = z * math.sqrt(0.3 * 0.7 / 20 + z * z / 1600) / (1 + z * z / 20)
    assert wilson_interval(0.3, 20) == pytest.approx((centre - half, centre + half), abs=1e-12)
    lo, hi = wilson_interval(1.0, 50)
    assert hi == 1.0 and 0.9 < lo < 0.95  # honest at the boundary: not [1, 1]


def test_wilson_interval_covers_the_win_probability():
    rng = np.random.default_rng(2)
    for prob in (0.6, 0.97):
        hits = 0
        for _ in range(400):
            lo, hi = wilson_interval(float(np.mean(rng.random(50) < prob)), 50)
            hits += lo <= prob <= hi
        assert 0.90 <= hits / 400 <= 0.99, (prob, hits)


# -- multiplicity ----------------------------------------------------------------------------------


def test_bh_qvalues_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005, math.nan, 0.5]
    # sorted finite: 0.005, 0.01, 0.03, 0.04, 0.5 (m = 5) → ×5/rank: 0.025, 0.025, 0.05, 0.05, 0.5; running min from the top
    q = bh_qvalues(p)
    assert q[[3, 0, 2, 1, 5]] == pytest.approx([0.025, 0.025, 0.05, 0.05, 0.5])
    assert math.isnan(q[4]) and bh_qvalues([0.9, 0.95]).tolist() == [0.95, 0.95]
    assert bh_qvalues([]).size == 0


def test_flip_null_is_the_auroc_of_the_swapped_pairs():
    """The rank-sum shortcut against swapping the values and computing the AUROC anew."""
    rng = np.random.default_rng(8)
    n = 12
    hall, fact = rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)  # ties
    other_h, other_f = rng.normal(size=n), rng.normal(size=n)
    ok = np.ones(n, bool)
    ok2 = ok.copy()
    ok2[3] = False
    pairs = [(hall, fact, ok), (other_h[ok2], other_f[ok2], ok2)]
    null = flip_null_max(pairs, n, 30, np.random.default_rng(1))
    flips = np.random.default_rng(1).random((30, n)) < 0.5
    for b in range(30):
        h1, f1 = np.where(flips[b], fact, hall), np.where(flips[b], hall, fact)
        h2, f2 = np.where(flips[b], other_f, other_h)[ok2], np.where(flips[b], other_h, other_f)[ok2]
        expected = max(abs(auroc(h1, f1) - 0.5), abs(auroc(h2, f2) - 0.5))
        assert null[b] == pytest.approx(expected, abs=1e-12)
    assert _midranks(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]


def test_permutation_p():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert permutation_p(0.3, null) == pytest.approx(3 / 5)  # 0.3 and 0.4, plus the observed
    assert permutation_p(0.9, null) == pytest.approx(1 / 5) and math.isnan(permutation_p(0.3, np.array([])))
