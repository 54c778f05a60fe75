"""A shared machine: what saecli writes is readable as the umask allows, and what it prints is whole
when it goes to a pipe or a log file."""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli import runner as run_module
from saecli.cli import app

pytestmark = pytest.mark.slow
cli = CliRunner()
SMALL = ["--limit", "8", "--batch-size", "2"]


class _Stop(KeyboardInterrupt):
    pass


def _fake_sweep(*args, **kwargs):
    """A measured sweep without measuring (each size would load the model in a process of its own),
    with the long values of a fast machine."""
    from saecli.bench import SEQUENTIAL, SizeResult, Sweep

    results = [SizeResult(size=size, ok=True, samples=4096, seconds_median=0.0123456, samples_per_second=rate,
                          tokens_per_second=rate * 1000, peak_memory=123456789012, forward_gflops=123456.789)
               for size, rate in ((SEQUENTIAL, 4321.5), (1, 43210.5), (64, 987654.3))]  # fmt: skip
    return Sweep(preset="tiny", device="cpu", dtype="float32", samples=4096, repeats=1, available_memory=None,
                 results=results, recommended=64, reason="fastest measured")  # fmt: skip


@contextmanager
def _umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    """The permission bits of ``folder`` and of everything under it, by path relative to it."""
    paths = [folder, *folder.rglob("*")]
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _wrong(modes: dict[str, int], folder: Path, mask: int) -> dict[str, str]:
    expected = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    return {name: oct(mode) for name, mode in modes.items() if mode != expected[(folder / name).is_dir()]}


def _interrupt_at(monkeypatch, point: str, seen: list[dict[str, int]] | None = None, folder: Path | None = None) -> None:
    """Stop the run (as Ctrl-C would) at ``point`` (``name#k``: the k-th time), noting the folder's
    modes there first: the lock file and the part files exist only while the run does."""
    name, _, nth = point.partition("#")
    count = [0]

    def stop(where: str) -> None:
        if where == name:
            count[0] += 1
            if count[0] == int(nth or 1):
                if seen is not None and folder is not None:
                    seen.append(_modes(folder))
                raise _Stop

    monkeypatch.setattr(run_module, "crash_point", stop)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_file_and_folder_follows_the_umask(tmp_path, monkeypatch, mask):
    import saecli.cli.bench
    import saecli.report

    out = tmp_path / "runs" / "r"
    seen: list[dict[str, int]] = []
    with _umask(mask):
        _interrupt_at(monkeypatch, "batch_done#3", seen, out)
        assert cli.invoke(app, ["run", *SMALL, "--out", str(out)]).exit_code == 130
        monkeypatch.undo()
        # the figure is drawn into the file atomic_write made (its mode is that file's): a stand-in is as good
        monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"\x89PNG"))
        assert {".saecli.lock", "parts", "manifest.json"} <= set(seen[0]) and any("part-" in p for p in seen[0])
        assert _wrong(seen[0], out, mask) == {}  # while running: lock file, parts, residual parts, manifest
        result = cli.invoke(app, ["run", "--resume", str(out)])
        assert result.exit_code == 0, result.output
        result = cli.invoke(app, ["report", str(out), "--bootstrap", "0"])
        assert result.exit_code == 0, result.output
        monkeypatch.setattr(saecli.cli.bench, "sweep", _fake_sweep)
        bench = tmp_path / "bench" / "b"
        assert cli.invoke(app, ["bench", "--out", str(bench)]).exit_code == 0
    finished = _modes(out)
    assert {"metrics.parquet", "residuals.safetensors", "dashboard.png", "features.csv"} <= set(finished)
    assert _wrong(finished, out, mask) == {}
    assert _wrong(_modes(tmp_path / "runs"), tmp_path / "runs", mask) == {}
    assert set(_modes(bench)) == {".", "bench.json", "bench.csv"} and _wrong(_modes(bench), bench, mask) == {}


def test_a_group_writable_umask_gives_group_writable_files(tmp_path):
    from saecli.io import atomic_write
    from saecli.rundir import LOCK_FILE, claim_run_dir

    with _umask(0o002), claim_run_dir(tmp_path / "run", preset_name="tiny"):
        atomic_write(tmp_path / "run" / "parts" / "a", lambda tmp: tmp.write_bytes(b"a"))
        assert _wrong(_modes(tmp_path / "run"), tmp_path / "run", 0o002) == {}
        assert LOCK_FILE in _modes(tmp_path / "run")


def test_resumed_rate_counts_only_the_samples_analysed_now(tmp_path, monkeypatch):
    out = tmp_path / "r"
    _interrupt_at(monkeypatch, "batch_done#3")  # two of four batches written: 4 of 8 samples finished
    assert cli.invoke(app, ["run", *SMALL, "--out", str(out)]).exit_code == 130
    monkeypatch.undo()
    result = cli.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["timings"]
    assert timings["samples_per_second"] == pytest.approx(4 / timings["analysis_seconds"], rel=0.01)  # seconds are rounded
    assert manifest["samples"] == 8 and manifest["resumed"] is True and timings["samples_analysed"] == 4
    assert "4 samples analysed" in result.stdout and "4 finished before" in result.stdout
    again = cli.invoke(app, ["run", "--resume", str(out), "--json"])  # a finished run: its summary again
    assert again.exit_code == 0 and json.loads(again.stdout)["timings"] == timings


def test_tables_and_logs_print_whole_when_not_a_terminal(tmp_path, monkeypatch):
    import logging

    import saecli.cli.bench

    def logged_sweep(*args, **kwargs):
        logging.getLogger("saecli.bench").warning("a warning as long as a path: %s", "/very/long" * 20)
        return _fake_sweep()

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(saecli.cli.bench, "sweep", logged_sweep)
    result = cli.invoke(app, ["-v", "bench", "--out", str(tmp_path / "b")])  # CliRunner's output is not a terminal
    assert result.exit_code == 0, result.output
    for value in ("0.012", "4321.5", "43210.5", "987654.3", "987654300", "114.98", "123456.8"):
        assert f" {value} │" in result.stdout, value
    assert f"WARNING  a warning as long as a path: {'/very/long' * 20}\n" in result.stderr  # one line, unpadded
    narrow = cli.invoke(app, ["bench", "--out", str(tmp_path / "c")], env={"COLUMNS": "70"})
    table = [line for line in narrow.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert narrow.exit_code == 0 and table and max(len(line) for line in table) <= 70  # COLUMNS still decides
