"""make_report with the log-probability baselines and residuals: one ranking, probes, OOD, features, links."""

from __future__ import annotations

import json

import polars as pl
import pytest

from saecli.cli import app
from saecli.errors import SaecliError
from saecli.io import REPORT_FILES, RESIDUALS_FILE
from saecli.report import load_residuals, load_run, make_report
from saecli.residuals import read_residuals, write_residuals

from .helpers import LAYERS, PLANTED_FEATURE, baseline_run, one_line_error, runner, snapshot, synthetic_run

GEMMA = "gemma-2-2b/20-gemmascope-res-16k"
PROBES = {f"probe_{kind}_l{layer}" for layer in LAYERS for kind in ("resid", "sae")}


@pytest.fixture
def quick_dashboard(monkeypatch):
    """A stand-in for the figure (drawn by the module fixture below and in test_dashboard)."""
    import saecli.report

    monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"\x89PNG\r\n\x1a\n"))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run_dir = baseline_run(tmp_path_factory.mktemp("full") / "run", n=60, neuronpedia={LAYERS[1]: GEMMA})
    return make_report(run_dir, bootstrap=100, seed=0)


def test_every_file_is_written(full_report):
    run_dir = full_report.run_dir
    for name in REPORT_FILES:  # every one: the run has residuals
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A synthetic run has no data file to read its texts back from: its probe folds are per sample, said once.
    assert full_report.baselines and full_report.residuals
    assert [n for n in full_report.notes if not n.startswith("Probe folds:")] == []


def test_one_ranking_with_baselines_and_probes(full_report):
    frame = pl.read_csv(full_report.run_dir / "detection.csv")
    families = dict(zip(frame["metric"], frame["family"], strict=False))
    assert families["logprob_sum"] == families["logprob_mean"] == "baseline"
    assert {m for m, f in families.items() if f == "probe"} == PROBES
    assert families["l2_reconstruction_error"] == "geometry"
    assert frame.filter(pl.col("metric") == "logprob_mean")["domain"].to_list() == ["entity", "logical", "temporal", "all"]
    top = [r.metric for r in full_report.top(8)]
    assert top[0] == "l2_reconstruction_error"  # planted: perfect
    assert {"probe_resid_l0", "probe_resid_l2", "probe_resid_l3"} <= set(top)  # planted direction: AUROC > 0.9
    for layer in LAYERS:
        assert full_report.get(f"probe_resid_l{layer}").auroc > 0.9


def test_summary_says_which_metrics_beat_the_baseline(full_report):
    summary = (full_report.run_dir / "summary.md").read_text()
    base = full_report.baseline()
    assert base is not None and base.metric in ("logprob_sum", "logprob_mean")
    assert abs(base.auroc - 0.5) < 0.2  # logprob_shift 0: the baseline is weak
    winners = {r.metric for r in full_report.beat_baseline()}
    assert "l2_reconstruction_error" in winners and {"probe_resid_l0", "probe_resid_l2", "probe_resid_l3"} <= winners
    for r in full_report.beat_baseline():
        assert r.vs_baseline_low > 0 and r.vs_baseline == pytest.approx(r.oriented - base.oriented)
    losers = [r for r in full_report.rows if r.domain == "all" and r.family == "geometry" and not r.beats_baseline]
    assert losers and all(r.vs_baseline_low <= 0 for r in losers)
    assert f"The log-probability baseline `{base.metric}` reaches AUROC" in summary
    assert "**Beating it** by a paired bootstrap over pairs of (its AUROC − the baseline's)" in summary
    assert "geometry metrics: `l2_reconstruction_error` (AUROC 1.000 [" in summary
    assert "## Probes: logistic regression, 5-fold cross-validation grouped by sample" in summary
    assert "## Out-of-domain generalisation" in summary and "## SAE features that differ most" in summary
    assert "in parentheses the same probe cross-validated" in summary and "in brackets" not in summary
    assert f"over all {full_report.tested} tests" in summary and full_report.tested == len(full_report.rows)


def test_probe_and_generalisation_tables(full_report):
    probes = pl.read_csv(full_report.run_dir / "probes.csv")
    assert set(probes["probe"]) == PROBES and probes.height == len(PROBES) * 4
    assert set(probes["folds"]) == {5}
    resid = probes.filter((pl.col("input") == "residual") & (pl.col("domain") == "all"))
    assert (resid["n_features"] == 16).all() and (resid["auroc"] > 0.9).all() and (resid["n"] == 60).all()
    ood = pl.read_csv(full_report.run_dir / "generalisation.csv")
    assert ood.height == len(PROBES) * 3
    assert ((ood["n_train"] + ood["n_test"]) == 60).all() and set(ood["held_out"]) == {"entity", "logical", "temporal"}
    assert (ood.filter(pl.col("input") == "residual")["auroc"] > 0.8).all()


def test_features_table_and_neuronpedia_links(full_report):
    features = pl.read_csv(full_report.run_dir / "features.csv")
    for layer in LAYERS:
        rows = features.filter(pl.col("layer") == layer).sort("rank")
        assert rows["feature"][0] == PLANTED_FEATURE, layer
        urls = rows["url"].fill_null("").to_list()
        if layer == LAYERS[1]:
            assert urls == [f"https://www.neuronpedia.org/{GEMMA}/{f}" for f in rows["feature"]]
        else:
            assert urls == [""] * rows.height  # no neuronpedia_id in the manifest: no link
    summary = (full_report.run_dir / "summary.md").read_text()
    assert f"[{PLANTED_FEATURE}](https://www.neuronpedia.org/{GEMMA}/{PLANTED_FEATURE})" in summary
    assert summary.count("neuronpedia.org") == summary.count(f"neuronpedia.org/{GEMMA}/")


def test_json_document_has_the_new_tables(full_report, tmp_path, quick_dashboard):
    result = runner.invoke(
        app, ["report", str(full_report.run_dir), "--bootstrap", "0", "--folds", "3", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["baselines"] is True and doc["folds"] == 3 and {p["probe"] for p in doc["probes"]} == PROBES
    assert {p["folds"] for p in doc["probes"]} == {3} and len(doc["generalisation"]) == len(PROBES) * 3
    assert doc["beat_baseline"] == []  # no bootstrap: no intervals, nothing said to beat it
    assert pl.read_csv(tmp_path / "probes.csv")["folds"].unique().to_list() == [3]


def test_residual_rows_are_matched_by_sample_id(full_report):
    frame, _, _ = load_run(full_report.run_dir)
    on_disk = read_residuals(full_report.run_dir / RESIDUALS_FILE)
    assert on_disk.sample_ids == list(reversed(frame["sample_id"].to_list()))  # written in another order
    assert load_residuals(full_report.run_dir, frame).sample_ids == frame["sample_id"].to_list()


def test_shuffled_labels_give_chance_for_every_method(tmp_path, quick_dashboard):
    run_dir = baseline_run(tmp_path / "run", n=150, logprob_shift=3.0, swap=True, seed=7)
    report = make_report(run_dir, bootstrap=0, seed=0)
    rows = [r for r in report.rows if r.domain == "all"]
    assert {r.family for r in rows} == {"geometry", "baseline", "probe"}
    for r in rows:
        assert abs(r.auroc - 0.5) < 0.15, (r.metric, r.auroc)
    assert not any(r.significant for r in report.rows)  # after correction, nothing is called significant
    for g in report.generalisation:
        assert abs(g.auroc - 0.5) < 0.2, g
    for f in report.features:
        assert abs(f.auroc - 0.5) < 0.15, f


def test_a_strong_baseline_is_beaten_by_nothing_and_runs_without_residuals(tmp_path, quick_dashboard):
    run_dir = baseline_run(tmp_path / "run", n=40, logprob_shift=30.0, residuals=False)
    report = make_report(run_dir, bootstrap=100, seed=0)
    base = report.baseline()
    assert base.auroc == 0.0 and base.direction == "hall lower"  # log p(fact) always higher
    assert report.beat_baseline() == []  # l2_reconstruction_error is perfect too: the intervals touch
    summary = (run_dir / "summary.md").read_text()
    assert "**No metric and no probe beats it** by a paired bootstrap" in summary
    assert "AUROC 0.000 [" in summary and "the hallucination always scores lower — perfect separation" in summary
    assert f"No {RESIDUALS_FILE} in the run: no probes" in summary
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "dashboard.png",
        "detection.csv",
        "manifest.json",
        "metrics.parquet",
        "report.html",
        "summary.md",
    ]


def test_a_run_without_baselines_says_so(tmp_path, quick_dashboard):
    report = make_report(synthetic_run(tmp_path / "run"), bootstrap=20)
    summary = (report.run_dir / "summary.md").read_text()
    assert "Baselines were not computed for this run" in summary and "--no-baselines" in summary
    assert f"No {RESIDUALS_FILE} in the run" in summary
    assert not report.baselines and not report.residuals and report.baseline() is None and report.beat_baseline() == []
    assert all(r.family == "geometry" for r in report.rows)


def test_tiny_data_is_reported_not_crashed_on(tmp_path, quick_dashboard):
    run_dir = baseline_run(tmp_path / "run", n=4)
    report = make_report(run_dir, bootstrap=20, folds=5)
    assert report.probes == [] and any("not enough data for 5-fold" in n for n in report.notes)
    assert pl.read_csv(run_dir / "probes.csv").height == 0
    assert "not enough data" in (run_dir / "summary.md").read_text()


def test_bad_or_mismatched_residuals_are_refused_before_writing(tmp_path, no_detect):
    run_dir = baseline_run(tmp_path / "run [1]", n=12)
    res = read_residuals(run_dir / RESIDUALS_FILE)
    write_residuals(run_dir / RESIDUALS_FILE, res.select(res.sample_ids[1:]))
    before = snapshot(run_dir)
    with pytest.raises(SaecliError, match="does not match metrics.parquet: the residuals hold no row for sample ids"):
        make_report(run_dir)
    (run_dir / RESIDUALS_FILE).write_bytes(b"garbage")
    result = runner.invoke(app, ["report", str(run_dir)])
    one_line_error(result, 2, "not a readable saecli residuals file", "move the file away")
    assert snapshot(run_dir) | {RESIDUALS_FILE: b""} == before | {RESIDUALS_FILE: b""}  # nothing written


def test_folds_out_of_range_is_one_line(tmp_path, no_detect):
    run_dir = baseline_run(tmp_path / "run", n=12)
    one_line_error(
        runner.invoke(app, ["report", str(run_dir), "--folds", "1"]), 2, "--folds must be a whole number from 2 to 100"
    )


def test_baseline_columns_without_values_count_as_no_baselines(tmp_path, quick_dashboard):
    run_dir = baseline_run(tmp_path / "run", n=12, residuals=False)
    frame = pl.read_parquet(run_dir / "metrics.parquet")
    nulls = [pl.lit(None, dtype=pl.Float64).alias(c) for c in frame.columns if c.startswith("logprob")]
    frame.with_columns(nulls).write_parquet(run_dir / "metrics.parquet")
    report = make_report(run_dir, bootstrap=20)
    assert not report.baselines and all(r.family != "baseline" for r in report.rows)
    assert "Baselines were not computed for this run" in (run_dir / "summary.md").read_text()
