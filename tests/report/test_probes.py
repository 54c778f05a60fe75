"""saecli.report.probes: folds grouped by sample, planted signals found, shuffled labels at chance, OOD."""

from __future__ import annotations

import numpy as np
import pytest

from saecli.report.folds import grouped_folds
from saecli.report.probes import cross_validate, generalise, make_probe, run_probes
from saecli.report.stats import auroc

from .helpers import DENSE_FEATURE, PLANTED_FEATURE, planted_residuals


def test_grouped_folds_never_split_a_sample():
    n = 37
    strata = [("entity", "logical", "temporal")[i % 3] for i in range(n)]
    folds = grouped_folds(strata, 5, seed=3)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(2 * n))  # every text tested exactly once
    for train, test in folds:
        samples_test, samples_train = set((test % n).tolist()), set((train % n).tolist())
        assert not samples_test & samples_train  # no sample on both sides
        assert set(test.tolist()) == {i for s in samples_test for i in (s, n + s)}  # fact and hall together
        assert {strata[s] for s in samples_test} == {"entity", "logical", "temporal"}  # stratified by domain
    assert [t.tolist() for _, t in grouped_folds(strata, 5, seed=3)] == [t.tolist() for _, t in folds]  # seeded


def test_cross_validate_reports_each_sample_in_one_fold():
    res, domains = planted_residuals(40, layers=[0])
    f, h, fold, fold_aurocs = cross_validate(res.dense["l0_fact"], res.dense["l0_hall"], domains, n_splits=4, seed=0)
    assert f.shape == h.shape == (40,) and np.isfinite(f).all() and np.isfinite(h).all()
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3] and len(fold_aurocs) == 4
    assert np.bincount(fold).min() >= 9  # 40 samples in 4 folds of about 10


@pytest.fixture(scope="module")
def planted():
    res, domains = planted_residuals(150, layers=[0])
    return res, domains, run_probes(res, domains, n_splits=5, seed=0, bootstrap=100)


def test_planted_direction_is_found_by_the_residual_probe(planted):
    _, _, outcome = planted
    fit = next(f for f in outcome.fits if f.name == "probe_resid_l0")
    assert auroc(fit.hall, fit.fact) > 0.9
    assert min(fit.fold_aurocs) > 0.8


def test_planted_feature_is_found_by_the_sae_probe(planted):
    res, _, outcome = planted
    fit = next(f for f in outcome.fits if f.name == "probe_sae_l0")
    # the planted feature fires on 80% of hallucinations and 10% of facts: the best single-text AUROC is
    # about 0.5 + (0.8 - 0.1) / 2 = 0.85; everything else is noise
    assert auroc(fit.hall, fit.fact) > 0.75
    import scipy.sparse as sp

    x = sp.vstack([res.features["l0_fact"], res.features["l0_hall"]], format="csr")
    y = np.r_[np.zeros(res.n), np.ones(res.n)]
    coef = make_probe(sparse=True).fit(x, y)[-1].coef_.ravel()
    assert int(np.argmax(np.abs(coef))) == PLANTED_FEATURE
    assert int(np.argmax(np.abs(coef))) != DENSE_FEATURE


def test_planted_direction_generalises_to_every_held_out_domain(planted):
    _, domains, outcome = planted
    rows = [g for g in outcome.generalisation if g.probe == "probe_resid_l0"]
    assert [g.held_out for g in rows] == ["entity", "logical", "temporal"]
    for g in rows:
        assert g.n_train == 100 and g.n_test == 50
        assert g.auroc > 0.9 and g.ci_low <= g.auroc <= g.ci_high
        assert g.in_domain_auroc > 0.9


def test_a_domain_specific_direction_does_not_generalise():
    """Each domain's label lives in its own direction: trained without a domain, the probe cannot see
    its direction (AUROC near 0.5 there), while cross-validation over all domains finds all three."""
    res, domains = planted_residuals(150, layers=[0], per_domain_direction=True, shift=1.5)
    fact, hall = res.dense["l0_fact"], res.dense["l0_hall"]
    for domain, n_train, n_test, point, lo, hi in generalise(fact, hall, domains, bootstrap=100, seed=0):
        assert lo <= point <= hi
        assert n_train == 100 and n_test == 50
        assert 0.3 < point < 0.7, (domain, point)
    f, h, _, _ = cross_validate(fact, hall, domains, n_splits=5, seed=0)
    labels = np.asarray(domains)
    for domain in ("entity", "logical", "temporal"):
        assert auroc(h[labels == domain], f[labels == domain]) > 0.85


def test_shuffled_labels_give_chance_for_every_probe():
    res, domains = planted_residuals(200, layers=[0], swap=True, seed=5)
    outcome = run_probes(res, domains, n_splits=5, seed=0, bootstrap=0)
    assert {f.name for f in outcome.fits} == {"probe_resid_l0", "probe_sae_l0"}
    for fit in outcome.fits:
        assert abs(auroc(fit.hall, fit.fact) - 0.5) < 0.15, fit.name
    assert len(outcome.generalisation) == 6
    for g in outcome.generalisation:
        assert abs(g.auroc - 0.5) < 0.15, g


def test_too_little_data_is_said_not_crashed_on():
    res, domains = planted_residuals(3, layers=[0])
    outcome = run_probes(res, domains, n_splits=5, seed=0, bootstrap=10)
    assert outcome.fits == [] and any("not enough data for 5-fold" in note for note in outcome.notes)
    one = ["entity"] * 12
    res, _ = planted_residuals(12, layers=[0], domains=("entity",))
    outcome = run_probes(res, one, n_splits=5, seed=0, bootstrap=10)
    assert len(outcome.fits) == 2 and outcome.generalisation == []
    assert any("generalisation: not enough data (one domain only)" in note for note in outcome.notes)
    # Enough samples, but each domain too small for the stratified folds (what --limit 8 picks from 4 domains).
    four = ("entity", "logical", "temporal", "adversarial")
    res, spread = planted_residuals(8, layers=[0], domains=four)
    assert sorted(spread) == sorted(four * 2)
    outcome = run_probes(res, spread, n_splits=5, seed=0, bootstrap=10)
    assert outcome.fits == [] and any("at most 2 in a domain" in note for note in outcome.notes)


def test_probes_are_deterministic():
    res, domains = planted_residuals(30, layers=[0])
    a = run_probes(res, domains, n_splits=3, seed=1, bootstrap=20)
    b = run_probes(res, domains, n_splits=3, seed=1, bootstrap=20)
    for x, y in zip(a.fits, b.fits, strict=True):
        assert np.array_equal(x.fact, y.fact) and np.array_equal(x.hall, y.hall) and np.array_equal(x.fold, y.fold)
    assert a.generalisation == b.generalisation
