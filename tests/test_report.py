"""saecli report: the detection statistics against hand-computed cases, and the files of a report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from saecli.cli import app
from saecli.engine import metric_columns
from saecli.errors import SaecliError
from saecli.io import rows_to_frame, write_manifest, write_metrics
from saecli.report import (
    auroc,
    bootstrap_weights,
    detect,
    direction,
    make_report,
    numeric_metrics,
    paired_effect,
    percentile_interval,
    weighted_auroc,
    wilcoxon_p,
)

runner = CliRunner()
LAYERS = [0, 2, 3]


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
    assert mean == pytest.approx(10 / 3) and sd == pytest.approx(math.sqrt(((1 - 10 / 3) ** 2 + (3 - 10 / 3) ** 2 + (6 - 10 / 3) ** 2) / 2))
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


def test_numeric_metrics_are_the_fact_hall_pairs():
    metrics = numeric_metrics(LAYERS)
    columns = set(metric_columns(LAYERS))
    assert len(metrics) == 3 * 5 + 5
    assert all(m.fact in columns and m.hall in columns for m in metrics)
    names = [m.name for m in metrics]
    assert "l2_l0_norm" in names and "entropy" in names
    assert not any("shape_class" in n or n.endswith("_diff") for n in names)


# -- a report of a synthetic run -------------------------------------------------------------------

DOMAINS = {"entity": 6, "logical": 5, "temporal": 4}


def _synthetic_run(path, *, layers=LAYERS):
    """15 samples of random metrics; l2_reconstruction_error separates perfectly (hall = fact + 1)."""
    rng = np.random.default_rng(0)
    domains = [d for d, n in DOMAINS.items() for _ in range(n)]
    rows = []
    for i, domain in enumerate(domains):
        row = {"sample_id": f"s{i}", "domain": domain, "topic": None, "complexity": 1}
        for column in metric_columns(layers):
            if column.endswith("_l0_norm"):
                row[column] = int(rng.integers(5, 40))
            elif column.endswith("_shape_class"):
                row[column] = ["Spherical", "Oblate", "Prolate", "Triaxial", None][int(rng.integers(0, 5))]
            else:
                row[column] = float(rng.random())
        row[f"l{layers[1]}_hall_reconstruction_error"] = row[f"l{layers[1]}_fact_reconstruction_error"] + 1.0
        row["entropy_hall"] = row["entropy_fact"] - 0.5  # always lower for hallucinations
        rows.append(row)
    rows[0]["stability_hall"] = math.nan  # a missing value leaves that sample out of that metric only
    write_metrics(rows_to_frame(rows, layers), path)
    write_manifest({"schema_version": 1, "preset": {"name": "synthetic"}, "layers": layers, "samples": len(rows),
                    "data_source": "test"}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    run_dir = _synthetic_run(tmp_path_factory.mktemp("run"))
    return make_report(run_dir, bootstrap=200, seed=0)


def test_report_writes_every_file(synthetic_report):
    run_dir = synthetic_report.run_dir
    for name in ("detection.csv", "dashboard.png", "summary.md"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run_dir / "detection.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups = [*DOMAINS, "all"]
    assert len(rows) == len(numeric_metrics(LAYERS)) * len(groups)
    assert {(r["metric"], r["domain"]) for r in rows} == {(m.name, g) for m in numeric_metrics(LAYERS) for g in groups}
    by_key = {(r["metric"], r["domain"]): r for r in rows}
    assert by_key[("stability", "entity")]["n"] == "5" and by_key[("stability", "all")]["n"] == "14"
    assert by_key[("entropy", "temporal")]["n"] == "4"


def test_report_finds_the_planted_separators(synthetic_report):
    perfect = synthetic_report.get("l2_reconstruction_error")
    assert (perfect.auroc, perfect.ci_low, perfect.ci_high, perfect.direction) == (1.0, 1.0, 1.0, "hall higher")
    assert perfect.mean_diff == pytest.approx(1.0) and perfect.sd_diff == pytest.approx(0.0, abs=1e-12)
    lower = synthetic_report.get("entropy", "logical")
    assert lower.auroc < 0.5 and lower.direction == "hall lower" and lower.mean_diff == pytest.approx(-0.5)
    assert synthetic_report.top(1)[0].metric == "l2_reconstruction_error"
    assert all(r.ci_low <= r.ci_high for r in synthetic_report.rows)
    summary = (synthetic_report.run_dir / "summary.md").read_text()
    assert "`l2_reconstruction_error` | 1.000 [1.000, 1.000] | hall higher" in summary
    assert "![saecli dashboard" in summary and "(dashboard.png)" in summary


def test_report_is_reproducible_with_the_seed(synthetic_report, tmp_path):
    run_dir = synthetic_report.run_dir
    again = detect(pl.read_parquet(run_dir / "metrics.parquet"), LAYERS, bootstrap=200, seed=0)
    assert [(r.ci_low, r.ci_high) for r in again] == [(r.ci_low, r.ci_high) for r in synthetic_report.rows]
    other = detect(pl.read_parquet(run_dir / "metrics.parquet"), LAYERS, bootstrap=200, seed=1)
    assert [(r.ci_low, r.ci_high) for r in other] != [(r.ci_low, r.ci_high) for r in synthetic_report.rows]


def test_cli_report_table_and_json(synthetic_report, tmp_path):
    run_dir = synthetic_report.run_dir
    out = tmp_path / "elsewhere"
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "50", "--top", "3", "--out", str(out)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "l2_reconstruction_error" in result.stdout and "1.000 [1.000, 1.000]" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dashboard.png", "detection.csv", "summary.md"]
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["samples"] == 15 and doc["domains"] == DOMAINS and doc["top"][0] == "l2_reconstruction_error"
    assert len(doc["rows"]) == 20 * 4 and all(r["ci_low"] is None for r in doc["rows"])  # no bootstrap: no interval


def test_not_a_run_folder_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a saecli run folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_incomplete_run_is_refused(tmp_path):
    run_dir = _synthetic_run(tmp_path / "run")
    pl.read_parquet(run_dir / "metrics.parquet").drop("entropy_hall").write_parquet(run_dir / "metrics.parquet")
    with pytest.raises(SaecliError, match="lacks the columns entropy_hall"):
        make_report(run_dir)
    (run_dir / "manifest.json").write_text("{not json")
    with pytest.raises(SaecliError, match="cannot read the run"):
        make_report(run_dir)


@pytest.mark.slow
def test_report_of_a_real_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--limit", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = make_report(out, bootstrap=100)
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    frame = pl.read_csv(out / "detection.csv")
    assert frame.height == len(numeric_metrics(layers)) * (frame["domain"].n_unique())
    assert set(frame["domain"]) == {*report.domains, "all"} and report.samples == 12
