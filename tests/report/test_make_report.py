"""saecli.report.make_report: the run read and checked, the files of a report written."""

from __future__ import annotations

import csv
import json

import polars as pl
import pytest

from saecli.cli import app
from saecli.errors import SaecliError
from saecli.report import make_report, numeric_metrics

from .helpers import DOMAINS, LAYERS, runner, synthetic_run


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


def test_incomplete_run_is_refused(tmp_path):
    run_dir = synthetic_run(tmp_path / "run")
    pl.read_parquet(run_dir / "metrics.parquet").drop("entropy_hall").write_parquet(run_dir / "metrics.parquet")
    with pytest.raises(SaecliError, match="lacks the columns entropy_hall"):
        make_report(run_dir)
    (run_dir / "manifest.json").write_text("{not json")
    with pytest.raises(SaecliError, match="cannot read the run|not valid JSON"):
        make_report(run_dir)


def test_load_run_keeps_the_hint_of_finished_run(tmp_path, monkeypatch):
    import saecli.report

    def refuse(run_dir):
        raise SaecliError(f"the run in {run_dir} is not complete", hint=f"saecli run --resume {run_dir}")

    monkeypatch.setattr(saecli.report, "finished_run", refuse)
    with pytest.raises(SaecliError) as info:
        make_report(tmp_path)
    assert info.value.hint == f"saecli run --resume {tmp_path}"


@pytest.mark.slow
def test_report_of_a_real_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--limit", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = make_report(out, bootstrap=100)
    manifest = json.loads((out / "manifest.json").read_text())
    layers = manifest["layers"]
    assert manifest["preset"]["trained_on_benchmark"] is True and report.trained_on_benchmark  # the embedded preset
    assert "> **In-sample:**" in (out / "summary.md").read_text()
    frame = pl.read_csv(out / "detection.csv")
    geometry = frame.filter(pl.col("family") == "geometry")
    assert geometry.height == len(numeric_metrics(layers)) * (frame["domain"].n_unique())
    # A default run has baselines: the log-probabilities are ranked beside the geometry.
    assert set(frame.filter(pl.col("family") == "baseline")["metric"]) == {"logprob_sum", "logprob_mean"}
    assert set(frame["domain"]) == {*report.domains, "all"} and report.samples == 12
