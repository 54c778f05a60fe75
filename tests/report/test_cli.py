"""``saecli report``: the table, the JSON, and every refusal as one line before any work."""

from __future__ import annotations

import csv
import errno
import json

import pytest

from saecli.cli import app
from saecli.report import make_report, numeric_metrics

from .helpers import DOMAINS, LAYERS, one_line_error, runner, snapshot, synthetic_run


def test_cli_report_table_and_json(synthetic_report, tmp_path):
    run_dir = synthetic_report.run_dir
    out = tmp_path / "elsewhere"
    result = runner.invoke(
        app, ["report", str(run_dir), "--bootstrap", "50", "--top", "3", "--out", str(out)], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    perfect = synthetic_report.get("l2_reconstruction_error")
    assert "l2_reconstruction_error" in result.stdout and f"1.000 [{perfect.ci_low:.3f}, 1.000]" in result.stdout
    assert "hall always higher" in result.stdout  # the direction in words, short in the table (in full in summary.md)
    assert "significant after Benjamini-Hochberg correction over all 80 tests" in result.stdout
    assert "Best metric, all samples: family-wise p" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dashboard.png", "detection.csv", "report.html", "summary.md"]
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["samples"] == 15 and doc["domains"] == DOMAINS and doc["top"][0] == "l2_reconstruction_error"
    assert len(doc["rows"]) == 20 * 4 and all(r["ci_low"] is not None for r in doc["rows"])  # analytic intervals
    assert doc["best"] == [] and doc["tested"] == 80  # no permutations without --bootstrap
    row = next(r for r in doc["rows"] if r["metric"] == "l2_reconstruction_error" and r["domain"] == "all")
    assert row["auroc"] == 1.0 and row["win_rate"] == 1.0 and row["significant"] is True
    assert 0 < row["wilcoxon_p"] <= row["q"] < 0.05 and row["win_low"] < 1.0 == row["win_high"]


def test_json_carries_the_verdicts(synthetic_report):
    doc = json.loads(json.dumps(synthetic_report.to_dict()))
    for key in ("auroc", "ci_low", "ci_high", "win_rate", "win_low", "win_high", "wilcoxon_p", "q", "significant"):
        assert all(key in r for r in doc["rows"]), key
    (best,) = [b for b in doc["best"] if b["domain"] == "all"]
    assert best["metric"] == "l2_reconstruction_error" and best["significant"] is True and best["permutations"] == 200
    assert best["p_family"] == 1 / 201 and 0 < best["null_q95"] < 0.5 and best["metrics"] == 20
    assert doc["alpha"] == 0.05 and "q" in doc["statistics"]


def test_detection_csv_keeps_full_precision(synthetic_report):
    with open(synthetic_report.run_dir / "detection.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_key = {(r.metric, r.domain): r for r in synthetic_report.rows}
    for row in rows:
        r = by_key[row["metric"], row["domain"]]
        assert float(row["wilcoxon_p"]) == r.wilcoxon_p and float(row["q"]) == r.q  # round-trip exact
    tiny = [row["wilcoxon_p"] for row in rows if float(row["wilcoxon_p"]) < 1e-3]
    assert tiny and all(float(text) > 0 and len(text) > 8 for text in tiny)  # e.g. 0.00016244084518680075, not 0.000162


def test_not_a_run_folder_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a saecli run folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a folder" in result.output


# -- limits: nothing lost, nothing exhausted -------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [("--bootstrap", "100001", "--bootstrap must be a whole number from 0"), ("--bootstrap", "-1", "--bootstrap"),
     ("--seed", "-1", "--seed must be a whole number >= 0"), ("--top", "0", "--top must be")],
)  # fmt: skip
def test_report_options_out_of_range_are_one_line_before_any_work(tmp_path, no_detect, option, value, message):
    run_dir = synthetic_run(tmp_path / "run")
    before = snapshot(run_dir)
    result = runner.invoke(app, ["report", str(run_dir), option, value])
    one_line_error(result, 2, message)
    assert snapshot(run_dir) == before  # nothing written


def test_report_into_a_folder_that_cannot_be_written(tmp_path, no_detect):
    run_dir = synthetic_run(tmp_path / "run")
    before = snapshot(run_dir)
    result = runner.invoke(app, ["report", str(run_dir), "--out", "/proc/saecli-report"])
    one_line_error(result, 2, "cannot write the report into /proc/saecli-report", "--out DIR")
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(afile / "sub")])
    one_line_error(result, 2, f"{afile} is a file")
    assert snapshot(run_dir) == before and afile.read_text() == "x"


def test_disk_full_while_writing_keeps_the_files_written(tmp_path, monkeypatch):
    import saecli.report

    run_dir = synthetic_run(tmp_path / "run")
    make_report(run_dir, bootstrap=0)
    before = snapshot(run_dir)

    def full(frame, report, path):
        path.write_bytes(b"\x89PNG half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saecli.report, "draw_dashboard", full)
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "20"])
    one_line_error(result, 1, "dashboard.png: No space left on device", "detection.csv written and kept", "free some space")
    after = snapshot(run_dir)
    assert sorted(after) == sorted(before)  # no temporary left behind
    assert after["dashboard.png"] == before["dashboard.png"] and after["summary.md"] == before["summary.md"]
    assert after["metrics.parquet"] == before["metrics.parquet"] and after["manifest.json"] == before["manifest.json"]
    with open(run_dir / "detection.csv", newline="") as fh:  # the new table, whole
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(numeric_metrics(LAYERS)) * (len(DOMAINS) + 1) and rows[0]["ci_low"] != ""
