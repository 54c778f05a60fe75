"""A stdout that cannot be written (a full disk, a closed pipe) is no bug: the results on disk stay,
a closed pipe ends quietly with exit code 141, anything else is one line on stderr (exit code 1)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from report.helpers import synthetic_run
from typer.testing import CliRunner

from saecli.cli import app
from saecli.cli.app import BROKEN_PIPE_EXIT
from saecli.cli.app import stdout as results_console

runner = CliRunner()


class _Unwritable:
    """A stdout whose every write fails as ``error`` says (what Rich's console writes to)."""

    def __init__(self, error: OSError) -> None:
        self.error, self.encoding = error, "utf-8"

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.mark.slow
@pytest.mark.parametrize(
    "error, code, line",
    [(OSError(errno.ENOSPC, "No space left on device"), 1, "error: cannot write to standard output (No space left on "
      "device); the results are in {out}"), (BrokenPipeError(errno.EPIPE, "Broken pipe"), BROKEN_PIPE_EXIT, None)],
    ids=["full", "closed pipe"],
)  # fmt: skip
def test_run_whose_stdout_fails_keeps_its_results(tmp_path, monkeypatch, error, code, line):
    monkeypatch.setattr(results_console, "_file", _Unwritable(error))  # the setter would not be undone to None
    out = tmp_path / "r"
    result = runner.invoke(app, ["run", "--limit", "2", "--out", str(out), "--json"])
    assert result.exit_code == code, result.output
    errors = [x for x in result.stderr.splitlines() if x.strip() and "━" not in x]  # less the progress bar
    assert errors == ([line.format(out=out)] if line else []), result.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def _saecli(*args: str, stdout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saecli", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("args", [("doctor",), ("run", "-h")])  # the help is typer's own console, before the command
def test_full_stdout_is_one_line_not_a_bug(tmp_path, args):
    with open("/dev/full", "w") as full:
        done = _saecli(*args, stdout=full.fileno())
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "error: cannot write to standard output (No space left on device)", done.stderr


@pytest.mark.slow
def test_closed_pipe_ends_quietly(tmp_path):
    run = synthetic_run(tmp_path / "run")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as in `saecli compare A B | head -0`
    try:
        done = _saecli("compare", str(run), str(run), stdout=write)
    finally:
        os.close(write)
    assert done.returncode == BROKEN_PIPE_EXIT and done.stderr == "", done.stderr
