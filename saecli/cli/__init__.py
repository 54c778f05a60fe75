"""The command line: a thin adapter over the engine. One file per command."""

from __future__ import annotations

from saecli.cli import bench as _bench  # noqa: F401  (registers bench)
from saecli.cli import compare as _compare  # noqa: F401  (registers compare)
from saecli.cli import doctor as _doctor  # noqa: F401  (registers doctor)
from saecli.cli import report as _report  # noqa: F401  (registers report)
from saecli.cli import run as _run  # noqa: F401  (registers run and sequential)
from saecli.cli.app import app, main

__all__ = ["app", "main"]
