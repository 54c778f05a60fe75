"""Long runs that survive: SIGKILL at any point, resume, out-of-memory backoff."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from processes import saecli_process
from typer.testing import CliRunner

import saecli
from saecli.cli import app
from saecli.compare import compare_frames
from saecli.config import RunConfig
from saecli.io import RESIDUALS_FILE, rows_to_frame
from saecli.manifest import resume_config
from saecli.residuals import Residuals, read_residuals
from saecli.runner import execute
from saecli.staging import INPUT_DIR

runner = CliRunner()
LIMIT, BATCH = 20, 4  # five batches: enough points to stop between and inside them
RUN_ARGS = ["run", "--limit", str(LIMIT), "--batch-size", str(BATCH), "--dtype", "float64"]


def _saecli(args, env_extra=None):
    return saecli_process(args, env_extra)


@pytest.fixture(scope="module")
def reference():
    loaded = saecli.load_preset("tiny", device="cpu", dtype="float64")
    samples = saecli.load_samples(limit=LIMIT)
    return rows_to_frame(list(saecli.analyze(samples, loaded, batch_size=BATCH)), loaded.layers)


@pytest.fixture(scope="module")
def reference_residuals():
    from saecli.engine import Engine

    loaded = saecli.load_preset("tiny", device="cpu", dtype="float64")
    samples = saecli.load_samples(limit=LIMIT)
    kept = [batch.residuals for batch in Engine(loaded).run(samples, batch_size=BATCH)]
    return Residuals.concat(kept).select([s.id for s in samples])


def _same_residuals(a, b):
    assert a.sample_ids == b.sample_ids and a.layers == b.layers
    for key in a.dense:
        assert np.allclose(a.dense[key], b.dense[key], atol=1e-6, rtol=0)
        assert (a.features[key] != b.features[key]).nnz == 0 or abs(a.features[key] - b.features[key]).max() <= 1e-6


CRASH_POINTS = [
    "after_manifest",  # before the first part file
    "tmp_written#3",  # the first part's residuals written under their temporary name, not yet renamed
    "tmp_written#4",  # the first part's table under its temporary name (its residuals renamed)
    "batch_done#3",  # mid-run: a batch analysed, nothing of it written
    "after_part#4",  # a part renamed, the manifest not yet updated
    "before_merge",  # every part written
    # The files written before the merge: the staged input's record, the manifest and 5 × 2 parts.
    "tmp_written#13",  # during the merge: residuals.safetensors under its temporary name
    "tmp_written#14",  # during the merge: metrics.parquet under its temporary name
    "after_merge",  # merged, final manifest not yet written
    "after_final_manifest",  # done but the parts not yet removed
]


HALF_WRITTEN = {
    "tmp_written#3": "parts/.part-000001.residuals.safetensors.*.tmp",
    "tmp_written#4": "parts/.part-000001-*.parquet.*.tmp",
    "tmp_written#13": ".residuals.safetensors.*.tmp",
    "tmp_written#14": ".metrics.parquet.*.tmp",
}


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference, reference_residuals, point):
    out = tmp_path / "run"
    killed = _saecli([*RUN_ARGS, "--out", str(out)], {"SAECLI_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point in HALF_WRITTEN:  # the point is the window its comment says
        assert list(out.glob(HALF_WRITTEN[point])), sorted(p.name for p in out.rglob("*"))
    assert not (out / "metrics.parquet").exists() or point == "after_final_manifest" or point == "after_merge"
    # Killed for real in its own process; resumed in this one (the model is loaded once per test session).
    resumed = runner.invoke(app, ["run", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    frame = pl.read_parquet(out / "metrics.parquet")
    assert frame["sample_id"].to_list() == reference["sample_id"].to_list()  # none missing or duplicated
    assert compare_frames(reference, frame, atol=1e-6).passed
    _same_residuals(reference_residuals, read_residuals(out / RESIDUALS_FILE))  # rows in the table's order, none lost
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and not (out / "parts").exists()
    assert not list(out.glob(".*.tmp"))


COMPACTING = "import saecli.parts; saecli.parts.FAN_IN = 2"
"""saecli with parts compacted two by two (five batches: tiers 0, 1 and 2 are all written)."""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compacted#2"])  # before the rename: as tmp_written above; while removing: the same clean-up
def test_sigkill_while_compacting_then_resume_equals_uninterrupted(tmp_path, monkeypatch, reference, reference_residuals, point):
    out = tmp_path / "run"
    killed = saecli_process([*RUN_ARGS, "--out", str(out)], {"SAECLI_CRASH_AT": point}, prelude=COMPACTING)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tables = sorted(p.name for p in (out / "parts").glob("part-*.parquet"))
    if point == "compacted#2":  # parts 4 and 5 beside part 6 that replaces them (and part 3, of 1 and 2)
        assert [t[:11] for t in tables] == ["part-000003", "part-000004", "part-000005", "part-000006"], tables
    monkeypatch.setattr("saecli.parts.FAN_IN", 2)
    resumed = runner.invoke(app, ["run", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    frame = pl.read_parquet(out / "metrics.parquet")
    assert frame["sample_id"].to_list() == reference["sample_id"].to_list()
    assert compare_frames(reference, frame, atol=1e-6).passed
    _same_residuals(reference_residuals, read_residuals(out / RESIDUALS_FILE))


@pytest.mark.slow
def test_compaction_keeps_the_parts_folder_small_and_changes_nothing(tmp_path, monkeypatch, reference):
    import saecli.runner as runner_module

    monkeypatch.setattr("saecli.parts.FAN_IN", 2)
    counts = []

    def counting(parts, run_dir, *args):
        written = compact(parts, run_dir, *args)
        counts.append(len(list((run_dir / "parts").iterdir())))
        return written

    compact = runner_module.compact
    monkeypatch.setattr(runner_module, "compact", counting)
    result = execute(RunConfig(limit=LIMIT, batch_size=1, dtype="float64"), out=tmp_path / "run")
    # 20 batches compacted two by two: at most one part per tier (tiers 0-4), each a table and its residuals.
    assert len(counts) == LIMIT and max(counts) <= 2 * 5 and counts[-1] == 2 * 2  # 20 = 16 + 4: tiers 4 and 2
    assert compare_frames(reference, result.frame, atol=1e-6).passed


@pytest.mark.slow
def test_resume_refuses_other_settings_and_non_runs(tmp_path):
    out = tmp_path / "run"
    assert _saecli([*RUN_ARGS, "--out", str(out)], {"SAECLI_CRASH_AT": "after_part#1"}).returncode == -signal.SIGKILL

    # The killed run's lock file and staged input are saecli's bookkeeping, taken over (the input staged
    # again) by each attempt; the results must not change.
    def files():
        return {
            p.name: p.read_bytes()
            for p in out.rglob("*")
            if p.is_file() and p.name != ".saecli.lock" and INPUT_DIR not in p.relative_to(out).parts
        }

    before = files()
    result = runner.invoke(app, ["run", "--resume", str(out), "--seed", "5"])
    assert result.exit_code == 2 and "seed was 0 and is now 5" in result.output
    result = runner.invoke(app, ["run", "--resume", str(out), "--dtype", "float32"])
    assert result.exit_code == 2 and "dtype" in result.output
    assert files() == before
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a saecli run folder" in result.output


@pytest.mark.slow
def test_resume_refuses_another_limit_order(tmp_path):
    out = tmp_path / "run"
    assert (
        runner.invoke(app, ["run", "--limit", "2", "--limit-order", "file", "--no-baselines", "--out", str(out)]).exit_code == 0
    )
    result = runner.invoke(app, ["run", "--resume", str(out), "--limit-order", "balanced"])
    assert result.exit_code == 2 and "limit_order was 'file' and is now 'balanced'" in result.output
    # A run from before the order was recorded took the first N samples: resumed, it keeps them.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["limit_order"], manifest["identity"]["limit_order"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0 and "already complete" in result.output, result.output


@pytest.mark.slow
def test_corrupted_part_is_redone(tmp_path, reference):
    out = tmp_path / "run"
    assert _saecli([*RUN_ARGS, "--out", str(out)], {"SAECLI_CRASH_AT": "after_part#3"}).returncode == -signal.SIGKILL
    part = sorted((out / "parts").glob("part-*.parquet"))[1]
    part.write_bytes(b"not parquet")
    resumed = runner.invoke(app, ["run", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert part.name in " ".join(resumed.stderr.split()) and "is broken" in resumed.stderr
    assert compare_frames(reference, pl.read_parquet(out / "metrics.parquet"), atol=1e-6).passed


@pytest.mark.slow
def test_oom_backoff_gives_identical_results(tmp_path, reference, oom_above):
    oom_above(1)
    config = RunConfig(limit=LIMIT, batch_size=16, dtype="float64")
    result = execute(config, out=tmp_path / "run")
    assert compare_frames(reference, result.frame, atol=1e-9).passed
    assert result.manifest["backoffs"] == [
        {"failed_size": 16, "new_size": 8, "at_sample": result.manifest["backoffs"][0]["at_sample"]},
        {"failed_size": 8, "new_size": 4, "at_sample": result.manifest["backoffs"][1]["at_sample"]},
        {"failed_size": 4, "new_size": 2, "at_sample": result.manifest["backoffs"][2]["at_sample"]},
        {"failed_size": 2, "new_size": 1, "at_sample": result.manifest["backoffs"][3]["at_sample"]},
    ]


@pytest.mark.slow
def test_single_sample_oom_is_one_line_error(tmp_path, oom_above):
    oom_above(0)
    result = runner.invoke(app, ["run", "--limit", "4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "batch size 1" in result.output and "saecli doctor --probe" in result.output and "Traceback" not in result.output


def test_main_module_runs():
    result = subprocess.run([sys.executable, "-m", "saecli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"saecli {saecli.__version__}"


@pytest.mark.slow
def test_truncate_is_part_of_the_run_identity(tmp_path, monkeypatch):
    from saecli import runner as run_module

    records = [{"id": f"s{i}", "domain": "entity", "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"}
               for i in range(6)]  # fmt: skip
    records[0]["prompt"] = "word " * 300  # longer than the model's context: needs --truncate
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "run"
    seen = []

    def stop_after_first_part(name):
        if name == "after_part":
            seen.append(name)
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "crash_point", stop_after_first_part)
    args = ["run", "--data", str(data), "--batch-size", "2", "--out", str(out)]
    assert runner.invoke(app, [*args, "--truncate"]).exit_code == 130
    monkeypatch.undo()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["truncate"] is True and manifest["identity"]["truncate"] is True
    with pytest.raises(saecli.SaecliError, match="truncate was True and is now False"):
        execute(resume_config(out, truncate=False), resume=out)
    result = runner.invoke(app, ["run", "--resume", str(out)])  # the run's own --truncate is kept
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out / "metrics.parquet").height == 6


def test_a_batch_writes_a_bounded_amount(tmp_path, monkeypatch):
    """The manifest is written when the run starts and ends, not once per batch with every finished
    id (bytes written per batch grew with the run: quadratic in total)."""
    from saecli import io as io_module
    from saecli import runner as run_module

    sizes: list[int] = []
    original = io_module.write_manifest

    def counted(manifest, run_dir):
        path = original(manifest, run_dir)
        sizes.append(path.stat().st_size)
        return path

    monkeypatch.setattr(run_module.io, "write_manifest", counted)
    result = execute(RunConfig(limit=8, batch_size=1, baselines=False), out=tmp_path / "run")
    assert result.manifest["status"] == "complete" and len(list((tmp_path / "run").rglob("*.parquet"))) == 2
    assert len(sizes) == 2, sizes  # start and end, for 8 batches
