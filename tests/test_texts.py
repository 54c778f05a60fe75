"""The texts beside the numbers: every run keeps its samples' texts (samples.parquet, recorded in the
manifest), resumed runs too; features.csv names the samples each feature differs most on, with an
excerpt of their texts; the report groups its probe folds by the kept texts, and still reports runs
that kept none."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import saecli.runner as run_module
from saecli.cli import app
from saecli.config import RunConfig
from saecli.data import load_samples
from saecli.errors import SaecliError
from saecli.io import RESIDUALS_FILE, SAMPLE_COLUMNS, SAMPLES_FILE, file_record, read_parquet
from saecli.report import make_report
from saecli.report.folds import sample_groups
from saecli.residuals import read_residuals

runner = CliRunner()


def _rows(samples):
    return [(s.id, s.domain, s.topic, s.prompt, s.fact, s.hallucination) for s in samples]


def _check_texts(out, samples):
    texts = read_parquet(out / SAMPLES_FILE)
    assert tuple(texts.columns) == SAMPLE_COLUMNS
    assert texts["sample_id"].to_list() == read_parquet(out / "metrics.parquet")["sample_id"].to_list()
    assert texts.rows() == _rows(samples)
    assert json.loads((out / "manifest.json").read_text())["files"][SAMPLES_FILE] == file_record(out / SAMPLES_FILE)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 8 samples of two domains from a data file that is deleted afterwards (as a data file
    on another machine or since edited would be), in another order than the built-in benchmark's,
    two of them sharing a prompt. Returns the run folder and the samples as the run read them."""
    builtin = load_samples()
    picked = [s for s in builtin if s.domain == "entity"][:4] + [s for s in builtin if s.domain == "temporal"][:4]
    records = [{"id": s.id, "domain": s.domain, "topic": s.topic, "prompt": s.prompt, "fact": s.fact,
                "hallucination": s.hallucination} for s in reversed(picked)]  # fmt: skip
    records[5]["prompt"] = records[1]["prompt"]
    root = tmp_path_factory.mktemp("texts")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    samples = load_samples(data)
    out = root / "run"
    result = runner.invoke(app, ["run", "--data", str(data), "--batch-size", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data.unlink()
    return out, samples


@pytest.mark.slow
def test_a_run_keeps_its_samples_texts_in_the_table_order(run):
    out, samples = run
    _check_texts(out, samples)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_texts_too(tmp_path, monkeypatch):
    def stop_after_first_part(name):
        if name == "after_part":
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "crash_point", stop_after_first_part)
    out = tmp_path / "run"
    with pytest.raises(run_module.RunInterrupted):
        run_module.execute(RunConfig(limit=6, batch_size=2, baselines=False), out=out)
    monkeypatch.undo()
    assert not (out / SAMPLES_FILE).exists()
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["resumed"] is True
    _check_texts(out, load_samples(limit=6))


# -- the report: which samples each feature differs most on, and the probe folds from the kept texts


@pytest.fixture
def report_quickly(monkeypatch):
    """No figure and no probe fits (both tested elsewhere); the probes' fold groups are recorded."""
    import saecli.report
    from saecli.report.probes import ProbeOutcome

    seen = {}

    def probes(residuals, domains, **kwargs):
        seen["groups"] = kwargs.get("groups")
        return ProbeOutcome()

    monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"png"))
    monkeypatch.setattr(saecli.report, "run_probes", probes)
    return seen


def _top_rows(residuals, layer, feature):
    """The rows of the three largest non-zero |hall − fact| of a feature (ties: earlier row), and the differences."""
    hall = residuals.features[f"l{layer}_hall"][:, feature].toarray().ravel().astype(np.float64)
    diff = hall - residuals.features[f"l{layer}_fact"][:, feature].toarray().ravel().astype(np.float64)
    order = sorted(range(diff.size), key=lambda i: (-abs(diff[i]), i))
    return [i for i in order[:3] if diff[i] != 0], diff


@pytest.mark.slow
def test_features_name_the_samples_they_differ_most_on_with_their_texts(run, tmp_path, report_quickly):
    out, samples = run
    report = make_report(out, bootstrap=0, out_dir=tmp_path)
    features = pl.read_csv(tmp_path / "features.csv")
    assert features.height > 0
    residuals = read_residuals(out / RESIDUALS_FILE)
    by_id = {s.id: s for s in samples}
    for row in features.iter_rows(named=True):
        rows, diff = _top_rows(residuals, row["layer"], row["feature"])
        assert rows, row  # a listed feature differs on some sample
        for k in range(1, 4):
            if k > len(rows):
                assert not row[f"top{k}_sample"] and not row[f"top{k}_text"] and math.isnan(row[f"top{k}_diff"])
                continue
            sample = by_id[row[f"top{k}_sample"]]
            assert sample.id == residuals.sample_ids[rows[k - 1]]
            assert row[f"top{k}_diff"] == pytest.approx(diff[rows[k - 1]], abs=1e-5)
            text = row[f"top{k}_text"]
            assert sample.prompt[-40:] in text and sample.fact in text and sample.hallucination in text
    # The data file is gone: the folds are grouped by the texts the run kept (the shared prompt joins two samples).
    assert not [n for n in report.notes if n.startswith("Probe folds:")]
    assert report_quickly["groups"].tolist() == sample_groups(samples).tolist()
    assert len(set(report_quickly["groups"].tolist())) == len(samples) - 1


@pytest.mark.slow
def test_a_run_without_samples_parquet_still_reports(run, tmp_path, report_quickly):
    out, _ = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / SAMPLES_FILE).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"][SAMPLES_FILE]  # as a run from before the texts were kept
    (old / "manifest.json").write_text(json.dumps(manifest))
    report = make_report(old, bootstrap=0)
    features = pl.read_csv(old / "features.csv")
    assert features.height > 0 and (features["top1_text"].fill_null("") == "").all()
    ids = read_residuals(old / RESIDUALS_FILE).sample_ids
    assert set(features["top1_sample"]) <= set(ids)
    assert [n for n in report.notes if n.startswith("Probe folds: the run's data cannot be read again")]
    assert report_quickly["groups"] is None


@pytest.mark.slow
def test_a_samples_file_that_is_not_the_runs_is_refused(run, tmp_path, report_quickly):
    from helpers import rerecord

    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    texts = read_parquet(copy / SAMPLES_FILE)
    texts.head(5).write_parquet(copy / SAMPLES_FILE)
    with pytest.raises(SaecliError, match="is not the file this run wrote"):
        make_report(copy, bootstrap=0)
    rerecord(copy, SAMPLES_FILE)
    with pytest.raises(
        SaecliError, match=f"does not match metrics.parquet: it holds no row for sample {texts['sample_id'][5]!r}"
    ):
        make_report(copy, bootstrap=0)
    assert not (copy / "features.csv").exists()
