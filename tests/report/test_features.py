"""saecli.report.features: the paired effect per feature, the ranking, Neuronpedia links, the samples
a feature differs most on.

The sign test, FDR and null threshold, and their simulations: test_feature_claims.py."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from saecli.report.features import (
    firing_frequency,
    neuronpedia_id,
    neuronpedia_url,
    paired_effect_sizes,
    rank_features,
    sample_excerpt,
    top_samples,
)

from .helpers import DENSE_FEATURE, PLANTED_FEATURE, planted_residuals

GEMMA = "gemma-2-2b/20-gemmascope-res-16k"


def test_effect_sizes_and_frequencies_match_a_dense_computation():
    rng = np.random.default_rng(1)
    n, d = 40, 300
    fact = rng.random((n, d)) * (rng.random((n, d)) < 0.2)
    hall = rng.random((n, d)) * (rng.random((n, d)) < 0.2)
    hall[:, 5] = fact[:, 5] + 0.25  # a constant difference: SD 0, d_z infinite
    mean, sd, dz = paired_effect_sizes(sp.csr_matrix(fact), sp.csr_matrix(hall))
    diff = hall - fact
    np.testing.assert_allclose(mean, diff.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(np.delete(sd, 5), np.delete(diff.std(axis=0, ddof=1), 5), atol=1e-12)
    expected = np.divide(diff.mean(axis=0), diff.std(axis=0, ddof=1), out=np.zeros(d), where=diff.std(axis=0, ddof=1) > 0)
    np.testing.assert_allclose(np.delete(dz, 5), np.delete(expected, 5), atol=1e-9)
    assert dz[5] == math.inf
    np.testing.assert_allclose(firing_frequency(sp.csr_matrix(fact)), (fact > 0).mean(axis=0))


def test_planted_feature_ranks_first_and_the_dense_one_is_held_down():
    res, _ = planted_residuals(150, layers=[0], d_sae=512)
    fact, hall = res.features["l0_fact"], res.features["l0_hall"]
    _, _, dz = paired_effect_sizes(fact, hall)
    assert int(np.argmax(np.abs(dz))) == DENSE_FEATURE  # the dense feature has by far the largest |d_z| ...
    rows = rank_features(fact, hall, layer=0, top=20, bootstrap=200, seed=0)
    assert rows[0].feature == PLANTED_FEATURE and rows[0].rank == 1  # ... but the planted one ranks first
    assert DENSE_FEATURE not in [r.feature for r in rows]  # fires on every text of both kinds: score 0
    top = rows[0]
    assert top.effect_size > 0 and math.isnan(top.ci_low) and math.isnan(top.ci_high)  # no post-selection interval
    assert top.significant == 1 and top.q < 1e-6 and top.score > top.null_threshold
    assert 0.6 < top.freq_hall < 0.95 and top.freq_fact < 0.2 and top.auroc > 0.8
    assert top.score == top.effect_size * (1 - min(top.freq_fact, top.freq_hall))
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    assert all(r.url == "" for r in rows)  # no Neuronpedia id: no link


def test_shuffled_labels_leave_no_feature_that_separates():
    res, _ = planted_residuals(200, layers=[0], swap=True, seed=5)
    rows = rank_features(res.features["l0_fact"], res.features["l0_hall"], layer=0, top=10, bootstrap=0)
    assert all(abs(r.auroc - 0.5) < 0.15 for r in rows)
    assert all(math.isnan(r.ci_low) for r in rows)  # no bootstrap: no interval
    assert rows[0].score < 0.4  # vs about 1.2 for the planted feature when the labels are kept


def test_neuronpedia_link_with_an_id_and_none_without():
    assert neuronpedia_url(GEMMA, 123) == f"https://www.neuronpedia.org/{GEMMA}/123"
    for missing in (None, "", "   ", 5, {"id": GEMMA}):
        assert neuronpedia_url(missing, 123) == ""
    manifest = {
        "saes": {"20": {"identity": "x", "neuronpedia_id": GEMMA}, "5": {"identity": "y", "neuronpedia_id": None}, "12": {}}
    }
    assert neuronpedia_id(manifest, 20) == GEMMA
    assert neuronpedia_id(manifest, 5) is None and neuronpedia_id(manifest, 12) is None and neuronpedia_id(manifest, 7) is None
    assert neuronpedia_id({}, 20) is None and neuronpedia_id({"saes": ["x"]}, 20) is None
    res, _ = planted_residuals(30, layers=[0])
    rows = rank_features(res.features["l0_fact"], res.features["l0_hall"], layer=0, top=5, bootstrap=0, neuronpedia=GEMMA)
    assert [r.url for r in rows] == [f"https://www.neuronpedia.org/{GEMMA}/{r.feature}" for r in rows]


def test_too_few_samples_rank_nothing():
    one = sp.csr_matrix(np.ones((1, 4)))
    assert rank_features(one, one * 2, layer=0) == []
    same = sp.csr_matrix(np.eye(4))
    assert rank_features(same, same, layer=0) == []  # nothing differs


def test_top_samples_by_largest_difference_either_way_ties_to_the_earlier_row_zeros_left_out():
    diffs = np.array([[0.5, 0.0], [-2.0, 0.0], [0.5, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert top_samples(diffs) == [[1, 3, 0], [2]]
    fact, hall = sp.csr_matrix((-diffs).clip(0)), sp.csr_matrix(diffs.clip(0))  # hall − fact = diffs
    rows = rank_features(fact, hall, layer=0, bootstrap=0, sample_ids=list("abcde"), excerpts=[f"text {c}" for c in "abcde"])
    by_feature = {r.feature: r for r in rows}
    assert (by_feature[0].top1_sample, by_feature[0].top1_diff, by_feature[0].top1_text) == ("b", -2.0, "text b")
    assert (by_feature[0].top2_sample, by_feature[0].top3_sample, by_feature[0].top3_diff) == ("d", "a", 0.5)
    assert (by_feature[1].top1_sample, by_feature[1].top2_sample, by_feature[1].top2_text) == ("c", "", "")
    assert math.isnan(by_feature[1].top2_diff)
    unnamed = rank_features(fact, hall, layer=0, bootstrap=0)
    assert {r.feature: r.top1_sample for r in unnamed} == {0: "1", 1: "2"}  # row numbers, no texts
    assert all(r.top1_text == "" for r in unnamed)


def test_an_excerpt_is_one_short_line_ending_the_prompt_where_the_feature_is_read():
    assert sample_excerpt("The capital of France is", "Paris", "Lyon") == "The capital of France is → fact: Paris / hall: Lyon"
    long = sample_excerpt("Once upon a time\n" * 10 + "the answer was", "x" * 100, "a\nb")
    assert "\n" not in long and long.startswith("…") and long.split(" → ")[0].endswith("the answer was")
    assert len(long.split(" → ")[0]) == 60 and "fact: " + "x" * 29 + "… / hall: a b" in long
