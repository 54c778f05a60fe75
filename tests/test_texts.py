"""The texts beside the numbers: every run keeps its samples' texts (samples.parquet, recorded in the
manifest), resumed runs too."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import saecli.runner as run_module
from saecli.cli import app
from saecli.config import RunConfig
from saecli.data import load_samples
from saecli.io import SAMPLE_COLUMNS, SAMPLES_FILE, file_record, read_parquet

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
