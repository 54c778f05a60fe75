"""saecli.report.features: which listed features the data support (sign test, BH q, the swap null's
threshold), checked against direct computations and over many simulated datasets."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.stats import binomtest

from saecli.report.features import (
    benjamini_hochberg,
    firing_frequency,
    null_max_scores,
    paired_effect_sizes,
    rank_features,
    sign_tests,
)

from .helpers import DENSE_FEATURE, PLANTED_FEATURE, planted_residuals


def simulated(seed, *, n=80, d=400, planted=False):
    """Sparse activations of ``n`` pairs over ``d`` features whose firing rates run from 0.2% (rare, as
    most SAE features) to 30%; fact and hallucination drawn from the same distribution, then swapped at
    random within pairs: no feature differs. ``planted``: feature 0 fires on 70% of hallucinations and
    5% of facts."""
    rng = np.random.default_rng(seed)
    rate = np.geomspace(0.002, 0.3, d)
    fact = (rng.random((n, d)) < rate) * rng.exponential(1.0, (n, d))
    hall = (rng.random((n, d)) < rate) * rng.exponential(1.0, (n, d))
    swap = rng.random(n) < 0.5
    fact[swap], hall[swap] = hall[swap].copy(), fact[swap].copy()
    if planted:
        fact[:, 0] = (rng.random(n) < 0.05) * rng.uniform(0.5, 1.5, n)
        hall[:, 0] = (rng.random(n) < 0.7) * rng.uniform(0.5, 1.5, n)
    return sp.csr_matrix(fact), sp.csr_matrix(hall)


def test_sign_test_is_exact_and_bh_matches_its_definition():
    fact, hall = simulated(3, n=40, d=200, planted=True)
    tests = sign_tests(fact, hall)
    d = (hall - fact).toarray()
    fires = (fact.toarray() > 0).any(axis=0) | (hall.toarray() > 0).any(axis=0)
    assert 20 < (~fires).sum() < 150  # rare features that never fire here: untested
    for j in np.flatnonzero(fires)[::7]:
        up, down = int((d[:, j] > 0).sum()), int((d[:, j] < 0).sum())
        assert (tests.n_up[j], tests.n_down[j]) == (up, down)
        expected = binomtest(up, up + down, 0.5).pvalue if up + down else 1.0
        assert math.isclose(tests.p[j], expected, rel_tol=1e-9), j
    assert np.array_equal(tests.tested, fires) and np.isnan(tests.p[~fires]).all() and np.isnan(tests.q[~fires]).all()
    p = tests.p[fires]
    ordered, m = np.sort(p), p.size
    q_sorted = [min(1.0, min(ordered[j] * m / (j + 1) for j in range(k, m))) for k in range(m)]
    brute = [q_sorted[int(np.searchsorted(ordered, p_k))] for p_k in p]  # BH: q_(k) = min_{j ≥ k} p_(j)·m/j
    np.testing.assert_allclose(tests.q[fires], brute, rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_a_rare_feature_moved_one_way_is_not_a_finding():
    """Issue 20's HB feature 955: 4 of n samples differ, all one way. The old bootstrap interval of d_z
    excluded 0; the sign test gives p = 2·(1/2)^4 = 0.125, and the feature is not significant."""
    n, d = 200, 50
    rng = np.random.default_rng(0)
    fact, hall = ((rng.random((n, d)) < 0.05) * rng.random((n, d)) for _ in range(2))
    fact[:, 9], hall[:, 9] = 0.0, 0.0
    fact[:4, 9] = [0.9, 1.1, 0.7, 1.3]  # fires on 4 facts, never on a hallucination
    rows = rank_features(sp.csr_matrix(fact), sp.csr_matrix(hall), layer=0, top=d, bootstrap=200)
    row = next(r for r in rows if r.feature == 9)
    assert (row.n_up, row.n_down) == (0, 4) and math.isclose(row.p, 0.125)
    assert row.q >= row.p and row.significant == 0
    assert row.tested == int(((fact > 0) | (hall > 0)).any(axis=0).sum())
    assert math.isnan(row.ci_low) and math.isnan(row.ci_high)


class _FixedDraws:
    """A stand-in generator whose ``random`` returns the given swap pattern (values < 0.5: swapped)."""

    def __init__(self, swapped):
        self.values = np.where(swapped, 0.0, 1.0)

    def random(self, shape):
        assert shape == self.values.shape
        return self.values


def test_null_scores_are_the_scores_of_the_swapped_data():
    fact, hall = simulated(1, n=30, d=120, planted=True)
    swapped = np.random.default_rng(2).random((4, 30)) < 0.5
    got = null_max_scores(fact, hall, 4, _FixedDraws(swapped))
    f, h = fact.toarray(), hall.toarray()
    for k, s in enumerate(swapped):
        f_k, h_k = np.where(s[:, None], h, f), np.where(s[:, None], f, h)
        _, _, dz = paired_effect_sizes(sp.csr_matrix(f_k), sp.csr_matrix(h_k))
        both = np.minimum(firing_frequency(sp.csr_matrix(f_k)), firing_frequency(sp.csr_matrix(h_k)))
        assert math.isclose(got[k], float((np.abs(dz) * (1 - both)).max()), rel_tol=1e-9)
    unswapped = null_max_scores(fact, hall, 1, _FixedDraws(np.zeros((1, 30), dtype=bool)))[0]
    assert math.isclose(unswapped, rank_features(fact, hall, layer=0, top=1, bootstrap=0)[0].score, rel_tol=1e-9)


def test_the_planted_feature_passes_both_and_the_dense_one_only_the_test():
    res, _ = planted_residuals(150, layers=[0], d_sae=512)
    fact, hall = res.features["l0_fact"], res.features["l0_hall"]
    tests = sign_tests(fact, hall)
    assert tests.q[DENSE_FEATURE] < 1e-6  # a real, regular shift on a feature that fires on every text ...
    rows = rank_features(fact, hall, layer=0, top=20, bootstrap=200, seed=0)
    assert DENSE_FEATURE not in [r.feature for r in rows]  # ... whose score is 0: not a finding
    assert rows[0].feature == PLANTED_FEATURE and rows[0].significant == 1
    assert [r.feature for r in rows if r.significant] == [PLANTED_FEATURE]
    assert len({r.null_threshold for r in rows}) == 1 and len({r.tested for r in rows}) == 1
    assert rows[0].tested == int(tests.tested.sum()) > 400
    again = rank_features(fact, hall, layer=0, top=20, bootstrap=200, seed=0)
    assert again == rows  # seeded
    assert all(r.significant == 0 for r in rank_features(fact, hall, layer=0, top=20, bootstrap=0))  # no draws: no threshold


def test_swapped_data_give_a_significant_feature_in_at_most_about_5_percent_of_datasets():
    seeds = range(100)
    found, naive = 0, 0
    for seed in seeds:
        fact, hall = simulated(seed)
        rows = rank_features(fact, hall, layer=0, top=50, bootstrap=200, seed=seed)
        found += any(r.significant for r in rows)
        naive += any(r.p < 0.05 for r in rows)  # uncorrected p of the listed features
    assert found <= 7, found  # 5% of 100 is 5; the binomial's 95th percentile 9
    assert naive >= 50, naive  # uncorrected, most datasets "find" something: the check can fail


def test_a_planted_feature_is_found_in_nearly_every_dataset():
    hits = 0
    for seed in range(40):
        fact, hall = simulated(seed, planted=True)
        rows = rank_features(fact, hall, layer=0, top=50, bootstrap=200, seed=seed)
        significant = [r.feature for r in rows if r.significant]
        hits += significant == [0]
    assert hits >= 38, hits
