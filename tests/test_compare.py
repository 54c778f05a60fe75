"""compare can fail: perturbed runs are reported precisely and exit 1."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from helpers import rerecord
from typer.testing import CliRunner

from saecli.cli import app
from saecli.compare import compare_frames

runner = CliRunner()


def _frame():
    return pl.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "domain": ["entity"] * 3,
            "topic": [None] * 3,
            "complexity": [1, 2, 3],
            "l0_fact_l0_norm": [3, 4, 5],
            "l0_fact_shape_class": ["Prolate", None, "Triaxial"],
            "entropy_fact": [1.0, 2.0, 3.0],
        },
        schema_overrides={"topic": pl.String},
    )


def test_identical_frames_pass():
    result = compare_frames(_frame(), _frame())
    assert result.passed and result.max_abs == 0.0


def test_tolerance_boundary():
    b = _frame().with_columns(pl.Series("entropy_fact", [1.0, 2.0 + 5e-7, 3.0]))
    assert compare_frames(_frame(), b, atol=1e-6).passed
    b = _frame().with_columns(pl.Series("entropy_fact", [1.0, 2.0 + 2e-6, 3.0]))
    result = compare_frames(_frame(), b, atol=1e-6)
    assert not result.passed
    column = next(c for c in result.columns if c.column == "entropy_fact")
    assert column.worst_sample == "b" and column.max_abs == pytest.approx(2e-6) and column.mismatches == 1
    assert compare_frames(_frame(), b, atol=1e-6, rtol=1e-6).passed  # 1e-6 + 1e-6·2 ≥ 2e-6


def test_discrete_and_missing():
    b = _frame().with_columns(pl.Series("l0_fact_shape_class", ["Prolate", "Oblate", "Triaxial"]))
    b = b.filter(pl.col("sample_id") != "c")
    result = compare_frames(_frame(), b)
    assert not result.passed
    assert result.missing_in_b == ["c"]
    assert [(m.sample_id, m.column, m.a, m.b) for m in result.mismatches] == [("b", "l0_fact_shape_class", None, "Oblate")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    result = runner.invoke(app, ["run", "--limit", "8", "--dtype", "float64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy(run_dir, tmp_path, edit):
    other = tmp_path / "b"
    shutil.copytree(run_dir, other)
    frame = pl.read_parquet(other / "metrics.parquet")
    edit(frame).write_parquet(other / "metrics.parquet")
    rerecord(other)
    return other


@pytest.mark.slow
def test_compare_runs_identical(run_dir, tmp_path):
    other = _copy(run_dir, tmp_path, lambda f: f)
    result = runner.invoke(app, ["compare", str(run_dir), str(other)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout


@pytest.mark.slow
def test_compare_runs_perturbed(run_dir, tmp_path):
    def perturb(frame):
        ids = frame["sample_id"].to_list()
        frame = frame.with_columns(
            pl.when(pl.col("sample_id") == ids[1])
            .then(pl.col("entropy_fact") + 2e-6)
            .otherwise(pl.col("entropy_fact"))
            .alias("entropy_fact"),
            pl.when(pl.col("sample_id") == ids[2])
            .then(pl.lit("Spherical"))
            .otherwise(pl.col("l2_hall_shape_class"))
            .alias("l2_hall_shape_class"),
        )
        return frame.filter(pl.col("sample_id") != ids[5])

    other = _copy(run_dir, tmp_path, perturb)
    ids = pl.read_parquet(run_dir / "metrics.parquet")["sample_id"].to_list()
    result = runner.invoke(app, ["compare", str(run_dir), str(other), "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] is False and doc["missing_in_b"] == [ids[5]]
    bad = {(m["sample_id"], m["column"]) for m in doc["mismatches"]}
    assert bad == {(ids[1], "entropy_fact"), (ids[2], "l2_hall_shape_class")}
    entropy = next(c for c in doc["columns"] if c["column"] == "entropy_fact")
    assert entropy["max_abs"] == pytest.approx(2e-6, rel=1e-3) and entropy["worst_sample"] == ids[1]
    table = runner.invoke(app, ["compare", str(run_dir), str(other)])
    assert table.exit_code == 1 and "FAIL" in table.stdout and f"sample {ids[5]}" in table.stdout


@pytest.mark.slow
def test_compare_refuses_other_config(run_dir, tmp_path):
    other = _copy(run_dir, tmp_path, lambda f: f)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["seed"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["compare", str(run_dir), str(other)])
    assert result.exit_code == 2 and "seed" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_compare_live_passes_in_float64():
    result = runner.invoke(app, ["compare", "--limit", "12", "--sizes", "1,5", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] and doc["dtype"] == "float64" and set(doc["batch_sizes"]) == {"1", "5"}
    assert max(v["max_abs"] for v in doc["batch_sizes"].values()) <= 1e-9
    assert doc["drift_vs_float64"] == {}  # float64 is its own reference: no second model loaded


def test_compare_needs_two_runs_and_valid_sizes(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "exactly two run folders" in result.output
    result = runner.invoke(app, ["compare", "--sizes", "1,x"])
    assert result.exit_code == 2 and "--sizes" in result.output


def test_near_threshold_counts(loaded64, samples):
    from saecli.compare import count_near_threshold

    everything = count_near_threshold(loaded64, samples[:2], margin=1e9)
    d_sae = loaded64.saes[loaded64.layers[0]].cfg.d_sae
    assert everything == {s.id: 3 * len(loaded64.layers) * d_sae for s in samples[:2]}
    assert set(count_near_threshold(loaded64, samples[:2], margin=0.0).values()) == {0}


def _tiny_run(folder):
    """A run folder holding ``_frame()``, without running anything."""
    folder.mkdir()
    with open(folder / "metrics.parquet", "wb") as handle:
        _frame().write_parquet(handle)
    manifest = {"schema_version": 1, "preset": {"name": "tiny"}, "layers": [0], "seed": 0, "noise_std": 0.1, "status": "complete"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "option, value",
    [("--atol", "nan"), ("--atol", "inf"), ("--atol", "-1e-6"), ("--rtol", "nan"), ("--rtol", "inf"), ("--noise-std", "inf"),
     ("--batch-size", "0")],
)  # fmt: skip
def test_compare_refuses_non_finite_or_negative_numbers(tmp_path, monkeypatch, option, value):
    import saecli.cli.compare

    def refuse(*args, **kwargs):
        raise AssertionError("compared anyway")

    monkeypatch.setattr(saecli.cli.compare, "compare_frames", refuse)
    monkeypatch.setattr(saecli.cli.compare, "compare_live", refuse)
    a, b = _tiny_run(tmp_path / "a"), _tiny_run(tmp_path / "b")
    for args in ([str(a), str(b)], []):  # two run folders, and a live comparison
        result = runner.invoke(app, ["compare", *args, option, value])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {option} must be"), result.stderr


@pytest.mark.slow
def test_compare_below_float64_reports_drift_against_a_float64_reference():
    result = runner.invoke(app, ["compare", "--limit", "8", "--sizes", "4", "--dtype", "float32", "--json"])
    doc = json.loads(result.stdout)
    assert doc["dtype"] == "float32" and set(doc["drift_vs_float64"]) == {"sequential", "batch 4"}
    for drift in doc["drift_vs_float64"].values():
        numeric = {c["column"]: c for c in drift["columns"] if c["kind"] == "numeric"}
        assert "entropy_fact" in numeric and "l0_fact_reconstruction_error" in numeric
        # float32 is not float64: some column moves, but only by rounding, nowhere near a metric's scale.
        assert 0 < max(c["max_abs"] for c in numeric.values()) < 1.0
        assert all(c["median_abs"] <= c["max_abs"] for c in numeric.values())
    table = runner.invoke(app, ["compare", "--limit", "8", "--sizes", "4", "--dtype", "float32"])
    assert "drift against the float64 sequential reference" in table.stdout
