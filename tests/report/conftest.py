"""Fixtures of the report tests: one synthetic report for the package, and a guard on the statistics."""

from __future__ import annotations

import pytest

from saecli.report import make_report

from .helpers import synthetic_run


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    run_dir = synthetic_run(tmp_path_factory.mktemp("run"))
    return make_report(run_dir, bootstrap=200, seed=0)


@pytest.fixture
def no_detect(monkeypatch):
    """Fail the test if the statistics are computed (they must not be, for refused options)."""
    import saecli.report

    def detect(*args, **kwargs):
        raise AssertionError("detect_metrics was called")

    monkeypatch.setattr(saecli.report, "detect_metrics", detect)
