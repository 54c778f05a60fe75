"""Nothing lost, ever: literal paths everywhere, the run folder claimed before anything in it is
deleted or written, unfinished runs never read as finished, resource errors that keep results."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli import io, rundir
from saecli import runner as run_module
from saecli.cli import app
from saecli.faults import crash_point
from saecli.rundir import LOCK_FILE, claim_run_dir

pytestmark = pytest.mark.slow
cli = CliRunner()
SMALL = ["--limit", "8", "--batch-size", "4", "--dtype", "float64"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _invoke(*args: str):
    return cli.invoke(app, list(args))


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


def _one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE}


def _interrupt_after_part(monkeypatch, nth: int = 1) -> None:
    """Ctrl-C right after the nth part file is written (what SIGKILL tests do in a subprocess)."""
    seen = {"after_part": 0}

    def point(name: str) -> None:
        if name in seen:
            seen[name] += 1
            if seen[name] == nth:
                raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "crash_point", point)


def _no_interrupt(monkeypatch) -> None:
    monkeypatch.setattr(run_module, "crash_point", crash_point)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref"
    _ok(_invoke("run", *SMALL, "--out", str(out)))
    return out


@pytest.mark.parametrize("name", ["runs/run [baseline]", "-e*? ünï cødé"])
def test_odd_folder_names_run_resume_compare_and_report(tmp_path, monkeypatch, reference, name):
    monkeypatch.chdir(tmp_path)  # relative, so that a leading '-' stays leading
    out = Path(name)
    _interrupt_after_part(monkeypatch)
    result = _invoke("run", *SMALL, f"--out={name}")
    assert result.exit_code == 130 and "--resume" in result.stderr, result.output
    assert len(io.part_files(out)) == 1
    _no_interrupt(monkeypatch)
    _ok(_invoke("run", f"--resume={name}"))
    assert not (out / "parts").exists()
    compared = _invoke("compare", "--atol", "1e-9", "--", str(reference), name)
    _ok(compared)
    assert "PASS" in compared.stdout
    _ok(_invoke("report", "--bootstrap", "20", "--", name))
    assert {"detection.csv", "dashboard.png", "summary.md"} <= {p.name for p in out.iterdir()}


def test_a_folder_name_is_never_a_pattern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _ok(_invoke("run", "--limit", "4", "--out", "e1"))
    _ok(_invoke("run", "--limit", "6", "--out", "e2"))
    _one_line_error(_invoke("report", "e[12]"), 2, "e[12] is not a")
    _one_line_error(_invoke("compare", "e[12]", "e1"), 2, "e[12]")
    _ok(_invoke("run", "--limit", "5", "--out", "e[12]"))
    report = _invoke("report", "e[12]", "--bootstrap", "0", "--json")
    _ok(report)
    assert json.loads(report.stdout)["samples"] == 5


def test_data_and_config_paths_are_literal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "d [1]"
    folder.mkdir()
    record = {"id": "a", "domain": "entity", "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"}
    (folder / "x?.json").write_text(json.dumps([record]))
    (folder / "xy.json").write_text(json.dumps([{**record, "id": "b"}]))  # what the pattern x? would also match
    shutil.copy(CONFIGS / "tiny.toml", tmp_path / "c [*].toml")
    _ok(_invoke("run", "--data", "d [1]/x?.json", "--config", "c [*].toml", "--out", "o [1]"))
    manifest = json.loads((tmp_path / "o [1]" / "manifest.json").read_text())
    assert manifest["samples"] == 1 and manifest["preset"]["source"].endswith("c [*].toml")


def test_a_folder_another_process_writes_is_never_touched(tmp_path, reference):
    out = tmp_path / "busy [1]"
    shutil.copytree(reference, out)
    (out / "parts").mkdir()
    (out / "parts" / "part-000001.parquet").write_bytes(b"a part of the running run")
    before = _files(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom saecli.rundir import claim_run_dir\n"
         "c = claim_run_dir(Path(sys.argv[1]), preset_name='tiny', force=True)\nprint('held', flush=True)\ntime.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        _one_line_error(_invoke("run", *SMALL, "--force", "--out", str(out)), 2, f"pid {proc.pid}")
        _one_line_error(_invoke("run", "--resume", str(out)), 2, f"pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert _files(out) == before


def test_two_runs_into_one_out_one_is_refused(tmp_path):
    out = tmp_path / "out"
    claim = claim_run_dir(out, preset_name="tiny")  # a run that has claimed the folder and is loading its model
    try:
        _one_line_error(_invoke("run", *SMALL, "--seed", "1", "--out", str(out)), 2, "another saecli process")
    finally:
        claim.release()
    _ok(_invoke("run", *SMALL, "--out", str(out)))
    before = _files(out)
    _one_line_error(_invoke("run", *SMALL, "--seed", "1", "--out", str(out)), 2, "already exists and is not empty")
    assert _files(out) == before


def test_two_default_runs_in_one_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir, "run_stamp", lambda: "20260101T000000Z")
    for _ in range(2):
        _ok(_invoke("run", "--limit", "2"))
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["20260101T000000Z-tiny", "20260101T000000Z-tiny-2"]
    assert all((tmp_path / "runs" / r / "metrics.parquet").is_file() for r in runs)


def test_force_keeps_the_users_files(tmp_path, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "parts").mkdir()
    (out / "parts" / "my notes.txt").write_text("mine")
    (out / "README").write_text("mine")
    _ok(_invoke("run", *SMALL, "--seed", "3", "--force", "--out", str(out)))
    assert (out / "parts" / "my notes.txt").read_text() == "mine" and (out / "README").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3


def test_interrupted_force_run_is_never_read_as_finished(tmp_path, monkeypatch, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    _interrupt_after_part(monkeypatch)
    assert _invoke("run", *SMALL, "--seed", "1", "--force", "--out", str(out)).exit_code == 130
    _no_interrupt(monkeypatch)
    assert not (out / "metrics.parquet").exists()  # the earlier run's table went before the new manifest
    _one_line_error(_invoke("report", str(out)), 2, "not complete", f"saecli run --resume {out}")
    _one_line_error(_invoke("compare", str(reference), str(out)), 2, "not complete", "--resume")
    _ok(_invoke("run", "--resume", str(out)))
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    _ok(_invoke("report", "--bootstrap", "0", str(out)))


def test_disk_full_keeps_finished_samples_and_resume_completes(tmp_path, monkeypatch, reference):
    out = tmp_path / "out"
    original, calls = run_module.write_part, []

    def full_disk(frame, run_dir, number, *args):
        calls.append(number)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(frame, run_dir, number, *args)

    monkeypatch.setattr(run_module, "write_part", full_disk)
    result = _invoke("run", *SMALL, "--out", str(out))
    _one_line_error(result, 1, "No space left on device", "4 samples finished so far are kept", f"saecli run --resume {out}")
    monkeypatch.undo()
    assert len(io.part_files(out)) == 1 and not (out / "metrics.parquet").exists()
    assert not list((out / "parts").glob(".*.tmp"))
    _ok(_invoke("run", "--resume", str(out)))
    _ok(_invoke("compare", str(reference), str(out), "--atol", "1e-9"))


def test_bad_text_found_after_the_claim_leaves_nothing(tmp_path):
    data = tmp_path / "d.json"
    record = {"id": "a", "domain": "entity", "prompt": "word " * 300, "fact": "Paris", "hallucination": "Lyon"}
    data.write_text(json.dumps([record]))
    out = tmp_path / "new" / "run"
    _one_line_error(_invoke("run", "--data", str(data), "--out", str(out)), 2, "more than the model's context")
    assert not (tmp_path / "new").exists()


def test_internal_error_shows_the_traceback_and_asks_for_a_report(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(run_module, "identity", broken)
    result = _invoke("run", "--limit", "2", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "an internal invariant broke" in result.stderr
    assert "bug in saecli" in result.stderr and "report it" in result.stderr
