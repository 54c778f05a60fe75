"""CLI wiring through Typer's CliRunner, on the embedded preset."""

from __future__ import annotations

import json
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

import saecli
from saecli.cli import app
from saecli.columns import metric_columns

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and saecli.__version__ in result.output
    result = runner.invoke(app, ["run", "-h"])
    assert result.exit_code == 0 and "--batch-size" in result.output and "--preset" in result.output


@pytest.mark.slow
def test_run_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--limit", "6", "--batch-size", "4", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["preset"]["name"] == "tiny" and manifest["samples"] == 6 and manifest["batch_size"] == 4
    assert set(manifest["versions"]) >= {"saecli", "torch", "transformer_lens", "sae_lens", "numpy", "polars"}
    assert manifest["hooks"] == [f"blocks.{layer}.hook_resid_post" for layer in manifest["layers"]]
    frame = pl.read_parquet(out / "metrics.parquet")
    assert frame.columns == ["sample_id", "domain", "topic", "complexity", *metric_columns(manifest["layers"])]
    assert frame["sample_id"].to_list() == [s.id for s in saecli.load_samples(limit=6)]
    # The built-in benchmark lists its domains one after the other: --limit takes them in turn, and says so.
    assert frame["domain"].to_list() == ["entity", "entity", "temporal", "temporal", "logical", "adversarial"]
    assert manifest["config"]["limit_order"] == manifest["identity"]["limit_order"] == "balanced"


@pytest.mark.slow
def test_run_table_and_sequential(tmp_path):
    result = runner.invoke(app, ["sequential", "--limit", "3", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "Mean hall − fact by domain" in result.stdout and "metrics.parquet" in result.stdout
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["mode"] == "sequential" and manifest["batch_size"] == 1


@pytest.mark.slow
def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["run", "--limit", "2", "--out", str(out)])
    assert result.exit_code == 2
    assert "already exists" in result.output and "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--preset", "nope"], "unknown preset 'nope'"),
        (["run", "--data", "/does/not/exist.json"], "data path does not exist"),
        (["run", "--domains", "physics"], "'physics' is not in the data"),
        (["run", "--preset", "tiny", "--config", "x.toml"], "either --preset or --config"),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_missing_hub_model_offline_names_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["run", "--preset", "gemma-2-2b", "--limit", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "not in the Hugging Face cache" in result.output and "hf download google/gemma-2-2b" in result.output
    assert "Traceback" not in result.output


def test_ray_missing_is_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = runner.invoke(app, ["run", "--ray", "--limit", "2", "--out", str(tmp_path / "never")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'saecli[ray]'" in lines[0]
    assert not (tmp_path / "never").exists()


def test_manifest_records_the_threads_and_the_padding(tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["run", "--limit", "2", "--threads", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["threads"] == {"used": 1, "reason": "--threads"}
    padding = manifest["padding"]
    assert padding["forwarded_tokens"] >= padding["real_tokens"] > 0
    assert padding["fraction"] == round(1 - padding["real_tokens"] / padding["forwarded_tokens"], 4)
    result = runner.invoke(app, ["run", "--limit", "2", "--threads", "0", "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and "threads must be a whole number from 1 to 1024" in result.stderr
