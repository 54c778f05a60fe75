"""saecli.report.detection: which columns are tested, and the detection table of a synthetic run."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

import saecli.report.stats
from saecli.columns import metric_columns
from saecli.errors import SaecliError
from saecli.report import ALL, MAX_BOOTSTRAP, detect, make_report, numeric_metrics
from saecli.report.stats import bootstrap_weights, group_rng, percentile_interval, weighted_auroc

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
    assert (perfect.auroc, perfect.ci_low, perfect.ci_high, perfect.direction) == (1.0, 1.0, 1.0, "hall higher")
    assert perfect.mean_diff == pytest.approx(1.0) and perfect.sd_diff == pytest.approx(0.0, abs=1e-12)
    lower = synthetic_report.get("entropy", "logical")
    assert lower.auroc < 0.5 and lower.direction == "hall lower" and lower.mean_diff == pytest.approx(-0.5)
    assert synthetic_report.top(1)[0].metric == "l2_reconstruction_error"
    assert all(r.ci_low <= r.ci_high for r in synthetic_report.rows)


def test_report_is_reproducible_with_the_seed(synthetic_report, tmp_path):
    run_dir = synthetic_report.run_dir
    again = detect(pl.read_parquet(run_dir / "metrics.parquet"), LAYERS, bootstrap=200, seed=0)
    assert [(r.ci_low, r.ci_high) for r in again] == [(r.ci_low, r.ci_high) for r in synthetic_report.rows]
    other = detect(pl.read_parquet(run_dir / "metrics.parquet"), LAYERS, bootstrap=200, seed=1)
    assert [(r.ci_low, r.ci_high) for r in other] != [(r.ci_low, r.ci_high) for r in synthetic_report.rows]


def test_make_report_enforces_the_bootstrap_maximum(tmp_path, no_detect):
    run_dir = synthetic_run(tmp_path / "run")
    with pytest.raises(SaecliError, match=f"to {MAX_BOOTSTRAP} resamples"):
        make_report(run_dir, bootstrap=MAX_BOOTSTRAP + 1)
    with pytest.raises(SaecliError, match="--bootstrap"):
        detect(pl.DataFrame(), LAYERS, bootstrap=10**8)


def test_detect_in_chunks_gives_the_intervals_of_one_draw(synthetic_report, monkeypatch):
    """Same seed, same intervals as the single (bootstrap × n) draw the report made before chunking,
    with at most ``BOOTSTRAP_BLOCK`` weights drawn at a time."""
    frame = pl.read_parquet(synthetic_report.run_dir / "metrics.parquet")
    expected = {}
    for domain in [*DOMAINS, ALL]:
        part = frame if domain == ALL else frame.filter(pl.col("domain") == domain)
        weights = bootstrap_weights(part.height, 200, group_rng(0, domain))  # the whole draw at once
        for m in numeric_metrics(LAYERS):
            fact, hall = (part[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in (m.fact, m.hall))
            ok = np.isfinite(fact) & np.isfinite(hall)
            expected[m.name, domain] = percentile_interval(weighted_auroc(hall[ok], fact[ok], weights[:, ok]))

    drawn = []
    original = saecli.report.stats.bootstrap_weights

    def recording(n, resamples, rng):
        drawn.append((resamples, n))
        return original(n, resamples, rng)

    monkeypatch.setattr(saecli.report.stats, "bootstrap_weights", recording)
    monkeypatch.setattr(saecli.report.stats, "BOOTSTRAP_BLOCK", 64)  # 4 resamples of 15 samples, 12 of 5
    rows = detect(frame, LAYERS, bootstrap=200, seed=0)
    assert len(drawn) > len(DOMAINS) + 1 and all(rows * n <= 64 for rows, n in drawn)
    assert {(r.metric, r.domain): (r.ci_low, r.ci_high) for r in rows} == expected
    assert [(r.ci_low, r.ci_high) for r in rows] == [(r.ci_low, r.ci_high) for r in synthetic_report.rows]
