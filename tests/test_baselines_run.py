"""Baselines in a run: the log-probability columns, residuals.safetensors, --no-baselines, and the
Neuronpedia ids the manifest carries for the report's feature links."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from saecli.cli import app
from saecli.config import RunConfig
from saecli.io import RESIDUALS_FILE, read_parquet
from saecli.report import make_report
from saecli.residuals import read_residuals
from saecli.runner import execute

runner = CliRunner()


def test_default_run_keeps_residuals_in_table_order_and_scores_the_continuations(tmp_path):
    out = tmp_path / "run [a]*"
    result = runner.invoke(app, ["run", "--limit", "10", "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = read_parquet(out / "metrics.parquet")
    kept = read_residuals(out / RESIDUALS_FILE)
    assert kept.sample_ids == frame["sample_id"].to_list()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["baselines"] is True and manifest["identity"]["baselines"] is True
    for layer in manifest["layers"]:
        assert kept.dense[f"l{layer}_fact"].shape == (10, kept.dense[f"l{layer}_hall"].shape[1])
        # The features kept are the ones the table counted.
        nnz = kept.features[f"l{layer}_fact"].getnnz(axis=1).tolist()
        assert nnz == frame[f"l{layer}_fact_l0_norm"].to_list()
    # The embedded preset learned its facts: the fact's continuation is the likelier one.
    assert (frame["logprob_sum_diff"] > 0).mean() > 0.9
    assert frame["logprob_mean_fact"].is_not_null().all()


def test_no_baselines_writes_no_residuals_and_null_columns_and_force_removes_old_ones(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", "--limit", "6", "--out", str(out)]).exit_code == 0
    assert (out / RESIDUALS_FILE).is_file()
    result = runner.invoke(app, ["run", "--limit", "6", "--out", str(out), "--force", "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert not (out / RESIDUALS_FILE).exists()  # the earlier run's file does not outlive --force
    frame = read_parquet(out / "metrics.parquet")
    assert frame.select(pl.col("^logprob_.*$").is_null().all()).row(0) == (True,) * 6
    assert json.loads((out / "manifest.json").read_text())["baselines"] is False


def test_resume_refuses_other_baselines(tmp_path, monkeypatch):
    import saecli.runner as run_module

    def stop_after_first_part(name):
        if name == "after_part":
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "crash_point", stop_after_first_part)
    out = tmp_path / "run"
    with pytest.raises(run_module.RunInterrupted):
        execute(RunConfig(limit=8, batch_size=4), out=out)
    monkeypatch.undo()
    result = runner.invoke(app, ["run", "--resume", str(out), "--no-baselines"])
    assert result.exit_code == 2 and "baselines" in result.stderr


def test_neuronpedia_id_of_an_sae_reaches_the_manifest_and_the_feature_links(tmp_path):
    from helpers import random_loaded

    loaded = random_loaded(dtype="float64", seed=1)
    first, *others = loaded.layers
    loaded.saes[first].cfg.metadata.neuronpedia_id = "gpt2-small/0-res-jb"
    result = execute(RunConfig(limit=24, batch_size=8), out=tmp_path / "run", loaded=loaded)
    saes = result.manifest["saes"]
    assert saes[str(first)]["neuronpedia_id"] == "gpt2-small/0-res-jb"
    assert all(saes[str(layer)]["neuronpedia_id"] is None for layer in others)
    make_report(tmp_path / "run", bootstrap=20)
    features = pl.read_csv(tmp_path / "run" / "features.csv")
    linked = features.filter(pl.col("layer") == first)
    assert linked.height > 0 and all(
        url == f"https://www.neuronpedia.org/gpt2-small/0-res-jb/{feature}"
        for url, feature in zip(linked["url"], linked["feature"], strict=True)
    )
    assert features.filter(pl.col("layer") != first)["url"].fill_null("").eq("").all()
