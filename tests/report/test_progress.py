"""The report's progress: every step told as it starts, through to the end, and drawn on stderr."""

from __future__ import annotations

import numpy as np
import pytest

from saecli.cli import app
from saecli.report import make_report

from .helpers import LAYERS, baseline_run, runner


@pytest.fixture
def quick_dashboard(monkeypatch):
    import saecli.report

    monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"\x89PNG\r\n\x1a\n"))


def test_every_step_is_told_in_order_through_to_the_end(tmp_path, monkeypatch, quick_dashboard):
    import saecli.report.probes

    # What is counted is the steps, not the fits: scores for the test rows without fitting (60 ms a fit).
    monkeypatch.setattr(saecli.report.probes, "_fit_scores", lambda x, y, train, test: np.linspace(0.0, 1.0, len(test)))
    run_dir = baseline_run(tmp_path / "run", n=12, layers=LAYERS[:2])  # residuals: probes, generalisation, features too
    calls: list[tuple[str, int, int]] = []
    make_report(run_dir, bootstrap=20, folds=2, progress=lambda step, done, total: calls.append((step, done, total)))
    steps, done, totals = zip(*calls, strict=True)
    total = totals[0]
    assert set(totals) == {total} and list(done) == [*range(total), total]  # each step once, then the end
    probes, groups, files = 2 * 2, 3 + 1, 7  # residual and SAE probes of 2 layers; 3 domains and all
    folds = probes * 3 * 2  # 3 repeats of 2 folds
    assert total == folds + probes + probes * 3 + 2 + 2 * groups + files
    assert "probe_resid_l0: repeat 3/3, fold 2/2" in steps and "probe_sae_l2: trained without temporal, tested on it" in steps
    assert "SAE features: layer 2" in steps and "detection table: all" in steps
    assert "family-wise test: entity (20 permutations)" in steps
    assert steps[-2:] == ("writing features.csv", "done")


def test_the_command_draws_the_progress_on_stderr(tmp_path, quick_dashboard):
    run_dir = baseline_run(tmp_path / "run", n=12, residuals=False)
    result = runner.invoke(app, ["report", str(run_dir), "--bootstrap", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert "report: done" in result.stderr and "8/8" in result.stderr  # 4 groups, 4 files (not a terminal: the last state)
    assert result.stdout.startswith("{")  # the progress is not in the results
