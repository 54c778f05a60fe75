"""Claiming a run folder: created and locked before anything in it is deleted or written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saecli import rundir
from saecli.errors import SaecliError
from saecli.rundir import LOCK_FILE, claim_run_dir, clear_outputs

ODD_NAMES = ["run [baseline]", "e*?", "sp ace", "ünï cødé", "-lead", "a'b\"c"]

HOLD = """
import sys, time
from pathlib import Path
from saecli.rundir import claim_run_dir
claim = claim_run_dir(Path(sys.argv[1]), preset_name="tiny", force=True)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Another process holding a folder's claim, as a running `saecli run` would."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("name", ODD_NAMES)
def test_claim_creates_and_locks_literal_paths(tmp_path, name):
    path = tmp_path / "deep" / name
    with claim_run_dir(path, preset_name="tiny") as claim:
        assert claim.path == path and path.is_dir() and (path / LOCK_FILE).is_file()
        assert json.loads((path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(SaecliError, match="another saecli process"):
            claim_run_dir(path, preset_name="tiny", force=True)
        (path / "metrics.parquet").write_text("x")  # something was written: the folder stays
    assert path.is_dir() and not (path / LOCK_FILE).exists()


def test_claim_that_wrote_nothing_leaves_nothing(tmp_path):
    path = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError), claim_run_dir(path, preset_name="tiny"):
        raise RuntimeError("bad input found after the claim")
    assert list(tmp_path.iterdir()) == []  # the run folder and the parents it created are gone
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(RuntimeError), claim_run_dir(existing, preset_name="tiny"):
        raise RuntimeError
    assert existing.is_dir()  # the user's own (empty) folder is not removed


def test_existing_folder_needs_force_and_force_keeps_user_files(tmp_path):
    path = tmp_path / "run"
    (path / "parts").mkdir(parents=True)
    saecli_files = ["metrics.parquet", "manifest.json", "samples.parquet", "summary.md", "parts/part-000001.parquet",
                    ".metrics.parquet.x1.tmp", ".samples.parquet.x1.tmp"]  # fmt: skip
    user_files = ["notes.txt", "parts/notes.txt", "parts/part-final.csv", ".notes.tmp"]
    for rel in saecli_files + user_files:
        (path / rel).write_text(rel)
    with pytest.raises(SaecliError, match="already exists and is not empty"):
        claim_run_dir(path, preset_name="tiny")
    assert not (path / LOCK_FILE).exists()
    with claim_run_dir(path, preset_name="tiny", force=True) as claim:
        removed = clear_outputs(claim.path)
    assert sorted(str(p.relative_to(path)) for p in removed) == sorted(saecli_files)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(user_files)


def test_default_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir, "run_stamp", lambda: "20260101T000000Z")
    first = claim_run_dir(None, preset_name="tiny")
    second = claim_run_dir(None, preset_name="tiny")
    try:
        assert first.path == Path("runs/20260101T000000Z-tiny")
        assert second.path == Path("runs/20260101T000000Z-tiny-2")
    finally:
        first.release()
        second.release()


def test_lock_of_another_live_process_is_refused_then_taken_over_when_it_dies(tmp_path, holder):
    path = tmp_path / "run [x]"
    proc = holder(path)
    with pytest.raises(SaecliError, match=f"pid {proc.pid}"):
        claim_run_dir(path, preset_name="tiny", force=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (path / LOCK_FILE).is_file()  # left behind by the killed process...
    with claim_run_dir(path, preset_name="tiny", force=True):  # ...and taken over
        pass


def test_lock_naming_a_pid_that_now_belongs_to_another_program_is_taken_over(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": other.pid, "host": os.uname().nodename, "since": "x", "argv": ["saecli"]}
        (path / LOCK_FILE).write_text(json.dumps(record))
        with claim_run_dir(path, preset_name="tiny", force=True) as claim:
            assert json.loads((claim.path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        other.kill()
        other.wait()


def test_dangling_symlink_and_file_in_the_way(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SaecliError, match="symbolic link"):
        claim_run_dir(link, preset_name="tiny")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SaecliError, match="is a file"):
        claim_run_dir(tmp_path / "afile" / "sub", preset_name="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out"]


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(SaecliError, match="not a saecli run folder"):
        claim_run_dir(tmp_path / "missing", preset_name="tiny", resume=True)
    with pytest.raises(SaecliError, match="not a saecli run folder"):
        claim_run_dir(tmp_path, preset_name="tiny", resume=True)
    assert not (tmp_path / LOCK_FILE).exists()


def test_claim_is_atomic_between_processes(tmp_path):
    """Many processes claim one folder at once: exactly one gets it."""
    path = tmp_path / "race"
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom saecli.rundir import claim_run_dir\nfrom saecli.errors import SaecliError\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "try:\n    c = claim_run_dir(Path(sys.argv[1]), preset_name='tiny')\nexcept SaecliError:\n    print('refused'); sys.exit(0)\n"
        "print('claimed', flush=True); time.sleep(1.5)\n"
    )
    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), start], stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["claimed", "refused", "refused", "refused"]
