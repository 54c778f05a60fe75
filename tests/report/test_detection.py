"""saecli.report.detection: which columns are tested, and the detection table of a synthetic run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import saecli.report.stats
from saecli.columns import metric_columns
from saecli.errors import SaecliError
from saecli.report import ALL, MAX_BOOTSTRAP, Metric, best_metrics, detect, detect_metrics, make_report, numeric_metrics

from .helpers import DOMAINS, LAYERS, synthetic_run


def test_numeric_metrics_are_the_fact_hall_pairs():
    metrics = numeric_metrics(LAYERS)
    columns = set(metric_columns(LAYERS))
    assert len(metrics) == 3 * 5 + 5
    assert all(m.fact in columns and m.hall in columns for m in metrics)
    names = [m.name for m in metrics]
    assert "l2_l0_norm" in names and "entropy" in names
    assert not any("shape_class" in n or n.endswith("_diff") for n in names)


def test_report_finds_the_planted_separators(synthetic_report):
    perfect = synthetic_report.get("l2_reconstruction_error")
    assert (perfect.auroc, perfect.ci_high, perfect.direction) == (1.0, 1.0, "hall higher")
    assert 0.7 < perfect.ci_low < 0.95  # a score interval keeps its width at perfect separation (15 pairs)
    assert (perfect.win_rate, perfect.win_high) == (1.0, 1.0) and 0.7 < perfect.win_low < 0.85
    assert perfect.significant and perfect.q < 0.05 and perfect.q >= perfect.wilcoxon_p
    assert perfect.mean_diff == pytest.approx(1.0) and perfect.sd_diff == pytest.approx(0.0, abs=1e-12)
    lower = synthetic_report.get("entropy", "logical")
    assert lower.auroc < 0.5 and lower.direction == "hall lower" and lower.mean_diff == pytest.approx(-0.5)
    assert lower.win_rate == 0.0
    assert synthetic_report.top(1)[0].metric == "l2_reconstruction_error"
    assert all(r.ci_low <= r.auroc <= r.ci_high for r in synthetic_report.rows)
    assert synthetic_report.tested == len(synthetic_report.rows)
    random_rows = [r for r in synthetic_report.rows if r.metric not in ("l2_reconstruction_error", "entropy")]
    assert not any(r.significant for r in random_rows)  # noise: nothing survives the correction
    best = synthetic_report.best_of()
    assert best.metric == "l2_reconstruction_error" and best.significant and best.null_q95 < 0.5
    assert [b.domain for b in synthetic_report.best] == [*DOMAINS, ALL]


def test_report_is_reproducible_with_the_seed(synthetic_report):
    run_dir = synthetic_report.run_dir
    frame = pl.read_parquet(run_dir / "metrics.parquet")
    assert list(map(repr, detect(frame, LAYERS, bootstrap=200, seed=0))) == list(map(repr, synthetic_report.rows))
    metrics = numeric_metrics(LAYERS)
    again = best_metrics(frame, metrics, permutations=200, seed=0)
    assert list(map(repr, again)) == list(map(repr, synthetic_report.best))
    other = best_metrics(frame, metrics, permutations=200, seed=1)
    assert [b.null_q95 for b in other] != [b.null_q95 for b in again]


def test_make_report_enforces_the_bootstrap_maximum(tmp_path, no_detect):
    run_dir = synthetic_run(tmp_path / "run")
    with pytest.raises(SaecliError, match=f"to {MAX_BOOTSTRAP} resamples"):
        make_report(run_dir, bootstrap=MAX_BOOTSTRAP + 1)
    with pytest.raises(SaecliError, match="--bootstrap"):
        detect(pl.DataFrame(), LAYERS, bootstrap=10**8)


def test_paired_bootstrap_against_the_baseline_in_chunks_is_one_draw(monkeypatch):
    """The difference to the baseline, resample by resample, is the same whatever the chunk size."""
    frame = _frame(np.random.default_rng(3), n=60, shift=2.0, with_baseline=True)
    metrics = _metrics(with_baseline=True)
    expected = detect_metrics(frame, metrics, bootstrap=200, seed=0)
    monkeypatch.setattr(saecli.report.stats, "BOOTSTRAP_BLOCK", 64)
    again = detect_metrics(frame, metrics, bootstrap=200, seed=0)
    assert [(r.vs_baseline_low, r.vs_baseline_high) for r in again] == [(r.vs_baseline_low, r.vs_baseline_high) for r in expected]
    planted = next(r for r in expected if r.metric == "m0" and r.domain == ALL)
    assert planted.beats_baseline and planted.vs_baseline_low > 0
    weak = [r for r in expected if r.family == "geometry" and r.metric != "m0" and r.domain == ALL]
    assert not any(r.beats_baseline for r in weak)


# -- simulation: no effect by construction, and a planted one ------------------------------------------

N_METRICS = 6


def _frame(rng, *, n=60, shift=0.0, with_baseline=False):
    """n pairs in three domains; N_METRICS correlated metrics (a shared per-text factor), hall and fact
    drawn alike, then swapped at random within pairs (no effect by construction); ``shift`` is added
    to the hallucination of m0 (a planted effect). ``with_baseline``: a weak log-prob baseline."""
    shared = rng.normal(size=(2, n, 1))
    values = 0.6 * shared + rng.normal(size=(2, n, N_METRICS))
    values[1, :, 0] += shift
    swap = rng.random(n) < 0.5
    fact, hall = np.where(swap[:, None], values[1], values[0]), np.where(swap[:, None], values[0], values[1])
    if shift:  # the planted metric keeps its labels
        fact[swap, 0], hall[swap, 0] = values[0, swap, 0], values[1, swap, 0]
    columns = {"domain": [("entity", "logical", "temporal")[i % 3] for i in range(n)]}
    for j in range(N_METRICS):
        columns[f"m{j}_fact"], columns[f"m{j}_hall"] = fact[:, j], hall[:, j]
    if with_baseline:
        base = rng.normal(size=n)
        columns["logprob_sum_fact"], columns["logprob_sum_hall"] = base + 0.3, base + rng.normal(size=n)
    return pl.DataFrame(columns)


def _metrics(with_baseline=False):
    out = [Metric(f"m{j}", f"m{j}_fact", f"m{j}_hall") for j in range(N_METRICS)]
    return out + ([Metric("logprob_sum", "logprob_sum_fact", "logprob_sum_hall", family="baseline")] if with_baseline else [])


def test_no_effect_is_called_significant_in_at_most_about_5_percent_of_datasets():
    """120 datasets with fact and hallucination swapped at random within pairs, every metric: a
    dataset with any row significant after correction (BH over its 24 tests) in about 5% of them
    (≤ 5% in expectation; the bound allows the sampling error of 120). Raw p < 0.05 would flag most."""
    flagged = raw = 0
    for seed in range(120):
        rows = detect_metrics(_frame(np.random.default_rng(seed)), _metrics(), bootstrap=0, seed=seed)
        flagged += any(r.significant for r in rows)
        raw += any(r.wilcoxon_p < 0.05 for r in rows)
    assert flagged / 120 <= 0.09, flagged
    assert raw / 120 > 0.3  # the correction is what keeps the first rate down


def test_the_best_metric_is_family_wise_significant_in_about_5_percent_of_null_datasets():
    """300 null datasets × 4 groups: the best of 6 metrics (direction and metric chosen on the data)
    reaches family-wise p < 0.05 in about 5% of them, while its naive single-metric reading would not."""
    significant = tests = 0
    for seed in range(300):
        for best in best_metrics(_frame(np.random.default_rng(seed)), _metrics(), permutations=200, seed=seed):
            significant += best.significant
            tests += 1
    assert tests == 1200 and significant / tests <= 0.07, significant


def test_a_planted_effect_is_found():
    found = 0
    for seed in range(20):
        frame = _frame(np.random.default_rng(1000 + seed), shift=1.2)
        rows = detect_metrics(frame, _metrics(), bootstrap=0, seed=seed)
        (best,) = [b for b in best_metrics(frame, _metrics(), permutations=200, seed=seed) if b.domain == ALL]
        planted = next(r for r in rows if r.metric == "m0" and r.domain == ALL)
        found += planted.significant and best.metric == "m0" and best.significant
    assert found >= 18, found
