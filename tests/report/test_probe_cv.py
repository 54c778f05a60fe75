"""saecli.report.probes: folds grouped by shared texts, repeated cross-validation and its interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saecli.report.detection import detect_metrics
from saecli.report.folds import grouped_folds, sample_groups, text_groups
from saecli.report.probes import (
    ProbeFit,
    generalise,
    probe_detections,
    probe_rows,
    repeated_cross_validate,
    repeated_detections,
    run_probes,
    scores_frame,
)
from saecli.report.stats import auroc

from .helpers import planted_residuals


def test_text_groups_join_samples_sharing_any_text_transitively():
    texts = [
        ("Q0", "Paris is in France.", "Paris is in Spain."),
        ("Q1", "Paris is in France.", "H1"),  # shares sample 0's fact
        ("H1", "F2", "H2"),  # its prompt is sample 1's hallucination: joined through 1 to 0
        ("Q3", "F3", "H3"),
        ("", "F4", "  "),  # blank texts join nothing
        (" Q3 ", None, "H5"),  # the same text up to surrounding spaces
        ("Q6", "", "H6"),
    ]
    assert text_groups(texts).tolist() == [0, 0, 0, 1, 2, 1, 3]
    assert text_groups([]).tolist() == []


def test_grouped_folds_keep_each_text_group_in_one_fold():
    n = 60
    strata = [("entity", "logical", "temporal")[i % 3] for i in range(n)]
    groups = [i // 3 if i < 30 else i for i in range(n)]  # ten groups of three, then singletons
    for seed in (0, 1, 2):
        folds = grouped_folds(strata, 5, seed, groups)
        assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(2 * n))
        for train, test in folds:
            test_groups = {groups[i % n] for i in test.tolist()}
            assert not test_groups & {groups[i % n] for i in train.tolist()}  # no group on both sides


def test_sample_groups_use_the_texts_the_run_reads():
    from saecli.data import Sample

    samples = [
        Sample("a", "entity", "The capital of Australia is", "Canberra", "Sydney"),
        Sample("b", "entity", "The largest city of Australia is", "Sydney", "Canberra"),  # same words, other texts
        Sample("c", "entity", "The capital of Australia is", "Canberra.", "Melbourne"),  # a's prompt
        Sample("d", "logical", "The year WW2 ended is", "1945", "1944"),
        Sample("e", "logical", "The year WW2 ended is 1945 and", "true", "false"),
    ]
    assert sample_groups(samples).tolist() == [0, 1, 0, 2, 3]


@pytest.fixture(scope="module")
def repeated():
    res, domains = planted_residuals(90, layers=[0], shift=0.35, seed=3)
    return res, domains, run_probes(res, domains, n_splits=5, seed=0, bootstrap=200, repeats=4)


def test_the_auroc_is_the_mean_of_the_repeats_and_the_interval_holds_their_spread(repeated):
    _, domains, outcome = repeated
    fit = next(f for f in outcome.fits if f.name == "probe_resid_l0")
    assert fit.repeats == 4 and fit.repeat_fact.shape == (4, 90) and len(fit.fold_aurocs) == 20
    assert len(set(fit.repeat_aurocs)) == 4  # the fold seed moves the AUROC ...
    every = next(r for r in fit.detections if r.domain == "all")
    assert math.isclose(every.auroc, float(np.mean(fit.repeat_aurocs)))
    assert every.ci_low < min(fit.repeat_aurocs) <= max(fit.repeat_aurocs) < every.ci_high  # ... the interval holds it
    assert [r.domain for r in fit.detections] == ["entity", "logical", "temporal", "all"]
    rows = probe_rows(outcome.fits)
    row = next(r for r in rows if r.probe == fit.name and r.domain == "all")
    assert (row.auroc, row.ci_low, row.ci_high, row.repeats) == (every.auroc, every.ci_low, every.ci_high, 4)
    assert math.isclose(row.repeat_auroc_sd, float(np.std(fit.repeat_aurocs, ddof=1)))
    assert probe_detections(outcome.fits) == [r for f in outcome.fits for r in f.detections]
    assert np.allclose(fit.fact, fit.repeat_fact.mean(axis=0))  # the averaged scores, for scores_frame


def test_one_repeat_is_the_detection_table_of_its_scores():
    res, domains = planted_residuals(45, layers=[0], shift=0.5)
    outcome = run_probes(res, domains, n_splits=3, seed=2, bootstrap=100, repeats=1)
    frame, metrics = scores_frame(outcome.fits, domains)
    expected = detect_metrics(frame, metrics, bootstrap=100, seed=2)
    # One repeat: the same AUROC, means and test as the metrics' table of the same scores (the interval
    # differs by design: the probe's is the bootstrap over its repeats, the table's a score interval).
    key = ("metric", "domain", "n", "auroc", "fact_mean", "hall_mean", "wilcoxon_p")
    got = [tuple(getattr(r, k) for k in key) for r in probe_detections(outcome.fits)]
    assert got == [tuple(getattr(r, k) for k in key) for f in outcome.fits for r in expected if r.metric == f.name]


def test_repeats_are_the_fold_seeds_in_turn():
    res, domains = planted_residuals(40, layers=[0])
    fact, hall = res.dense["l0_fact"], res.dense["l0_hall"]
    f, h, folds, _ = repeated_cross_validate(fact, hall, domains, n_splits=4, seed=7, repeats=2)
    f8, _, folds8, _ = repeated_cross_validate(fact, hall, domains, n_splits=4, seed=8, repeats=1)
    assert np.array_equal(f[1], f8[0]) and np.array_equal(folds[1], folds8[0])
    assert not np.array_equal(folds[0], folds[1])


def test_shared_texts_are_said_and_leave_the_out_of_domain_training_set():
    res, domains = planted_residuals(30, layers=[0])
    groups = list(range(30))
    groups[1] = 0  # samples 0 (entity) and 1 (logical) share a text
    outcome = run_probes(res, domains, n_splits=5, seed=0, bootstrap=0, groups=groups, repeats=2)
    assert any("2 samples share a text" in note and "29 groups" in note for note in outcome.notes)
    assert {f.groups for f in outcome.fits} == {29}
    held = {
        d: n_train
        for d, n_train, *_ in generalise(res.dense["l0_fact"], res.dense["l0_hall"], domains, bootstrap=0, seed=0, groups=groups)
    }
    assert held == {"entity": 19, "logical": 19, "temporal": 20}  # the other's twin is not trained on
    few = run_probes(res, domains, n_splits=5, seed=0, bootstrap=0, groups=[i % 4 for i in range(30)])
    assert few.fits == [] and any("4 groups" in note for note in few.notes)


def test_shuffled_labels_give_an_interval_that_covers_chance_in_about_95_percent_of_datasets():
    covered, seeds = 0, range(30)
    for seed in seeds:
        res, domains = planted_residuals(60, layers=[0], swap=True, seed=seed, d_model=8)
        fact, hall = res.dense["l0_fact"], res.dense["l0_hall"]
        f, h, folds, fold_aurocs = repeated_cross_validate(fact, hall, domains, n_splits=5, seed=seed, repeats=3)
        fit = ProbeFit("probe_resid_l0", 0, "residual", 8, 5, f.mean(0), h.mean(0), folds[0], fold_aurocs, repeats=3,
                       repeat_fact=f, repeat_hall=h)  # fmt: skip
        every = repeated_detections(fit, domains, bootstrap=200, seed=seed)[-1]
        covered += every.ci_low <= 0.5 <= every.ci_high
        assert abs(auroc(h[0], f[0]) - 0.5) < 0.25
    assert covered >= 26, covered  # 95% of 30 is 28.5
