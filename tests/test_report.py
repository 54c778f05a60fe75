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
                    "data_source": "test", "status": "complete"}, path)  # fmt: skip
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
    with pytest.raises(SaecliError, match="cannot read the run|not valid JSON"):
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


# -- limits: nothing lost, nothing exhausted -------------------------------------------------------


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def no_detect(monkeypatch):
    """Fail the test if the statistics are computed (they must not be, for refused options)."""
    import saecli.report

    def detect(*args, **kwargs):
        raise AssertionError("detect was called")

    monkeypatch.setattr(saecli.report, "detect", detect)


@pytest.mark.parametrize(
    "option, value, message",
    [("--bootstrap", "100001", "--bootstrap must be a whole number from 0"), ("--bootstrap", "-1", "--bootstrap"),
     ("--seed", "-1", "--seed must be a whole number >= 0"), ("--top", "0", "--top must be")],
)  # fmt: skip
def test_report_options_out_of_range_are_one_line_before_any_work(tmp_path, no_detect, option, value, message):
    run_dir = _synthetic_run(tmp_path / "run")
    before = _snapshot(run_dir)
    result = runner.invoke(app, ["report", str(run_dir), option, value])
    _one_line_error(result, 2, message)
    assert _snapshot(run_dir) == before  # nothing written


def test_make_report_enforces_the_bootstrap_maximum(tmp_path, no_detect):
    from saecli.report import MAX_BOOTSTRAP

    run_dir = _synthetic_run(tmp_path / "run")
    with pytest.raises(SaecliError, match=f"to {MAX_BOOTSTRAP} resamples"):
        make_report(run_dir, bootstrap=MAX_BOOTSTRAP + 1)
    with pytest.raises(SaecliError, match="--bootstrap"):
        detect(pl.DataFrame(), LAYERS, bootstrap=10**8)


def test_bootstrap_chunks_are_the_single_draw():
    from saecli.report import bootstrap_chunks

    for n, resamples, block in [(15, 200, 16), (15, 200, 45), (7, 5, 1), (40, 33, 10**6), (1, 3, 1)]:
        whole = bootstrap_weights(n, resamples, np.random.default_rng([3, n]))
        chunks = list(bootstrap_chunks(n, resamples, np.random.default_rng([3, n]), block))
        assert all(c.shape[0] * n <= max(block, n) for c in chunks)
        assert np.array_equal(np.concatenate(chunks), whole)


def test_detect_in_chunks_gives_the_intervals_of_one_draw(synthetic_report, monkeypatch):
    """Same seed, same intervals as the single (bootstrap × n) draw the report made before chunking,
    with at most ``BOOTSTRAP_BLOCK`` weights drawn at a time."""
    import saecli.report
    from saecli.report import ALL, _group_rng

    frame = pl.read_parquet(synthetic_report.run_dir / "metrics.parquet")
    expected = {}
    for domain in [*DOMAINS, ALL]:
        part = frame if domain == ALL else frame.filter(pl.col("domain") == domain)
        weights = bootstrap_weights(part.height, 200, _group_rng(0, domain))  # the whole draw at once
        for m in numeric_metrics(LAYERS):
            fact, hall = (part[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in (m.fact, m.hall))
            ok = np.isfinite(fact) & np.isfinite(hall)
            expected[m.name, domain] = percentile_interval(weighted_auroc(hall[ok], fact[ok], weights[:, ok]))

    drawn = []
    original = saecli.report.bootstrap_weights

    def recording(n, resamples, rng):
        drawn.append((resamples, n))
        return original(n, resamples, rng)

    monkeypatch.setattr(saecli.report, "bootstrap_weights", recording)
    monkeypatch.setattr(saecli.report, "BOOTSTRAP_BLOCK", 64)  # 4 resamples of 15 samples, 12 of 5
    rows = detect(frame, LAYERS, bootstrap=200, seed=0)
    assert len(drawn) > len(DOMAINS) + 1 and all(rows * n <= 64 for rows, n in drawn)
    assert {(r.metric, r.domain): (r.ci_low, r.ci_high) for r in rows} == expected
    assert [(r.ci_low, r.ci_high) for r in rows] == [(r.ci_low, r.ci_high) for r in synthetic_report.rows]


def test_report_into_a_folder_that_cannot_be_written(tmp_path, no_detect):
    run_dir = _synthetic_run(tmp_path / "run")
    before = _snapshot(run_dir)
    result = runner.invoke(app, ["report", str(run_dir), "--out", "/proc/saecli-report"])
    _one_line_error(result, 2, "cannot write the report into /proc/saecli-report", "--out DIR")
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(afile / "sub")])
    _one_line_error(result, 2, f"{afile} is a file")
    assert _snapshot(run_dir) == before and afile.read_text() == "x"


def test_disk_full_while_writing_keeps_the_files_written(tmp_path, monkeypatch):
    import errno

    import saecli.report

    run_dir = _synthetic_run(tmp_path / "run")
    make_report(run_dir, bootstrap=0)
    before = _snapshot(run_dir)

    def full(frame, report, path):
        path.write_bytes(b"\x89PNG half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saecli.report, "draw_dashboard", full)
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "20"])
    _one_line_error(result, 1, "dashboard.png: No space left on device", "detection.csv written and kept", "free some space")
    after = _snapshot(run_dir)
    assert sorted(after) == sorted(before)  # no temporary left behind
    assert after["dashboard.png"] == before["dashboard.png"] and after["summary.md"] == before["summary.md"]
    assert after["metrics.parquet"] == before["metrics.parquet"] and after["manifest.json"] == before["manifest.json"]
    with open(run_dir / "detection.csv", newline="") as fh:  # the new table, whole
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(numeric_metrics(LAYERS)) * (len(DOMAINS) + 1) and rows[0]["ci_low"] != ""


def test_load_run_keeps_the_hint_of_read_run(tmp_path, monkeypatch):
    import saecli.report

    def refuse(run_dir):
        raise SaecliError(f"the run in {run_dir} is not complete", hint=f"saecli run --resume {run_dir}")

    monkeypatch.setattr(saecli.report, "read_run", refuse)
    with pytest.raises(SaecliError) as info:
        make_report(tmp_path)
    assert info.value.hint == f"saecli run --resume {tmp_path}"
