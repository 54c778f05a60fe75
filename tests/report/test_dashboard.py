"""saecli.report.dashboard: the figure, and matplotlib imported only to draw it."""

from __future__ import annotations

import subprocess
import sys

from saecli.report.dashboard import draw_dashboard

PNG = b"\x89PNG\r\n\x1a\n"


def test_dashboard_is_a_png(synthetic_report):
    assert (synthetic_report.run_dir / "dashboard.png").read_bytes()[:8] == PNG


def test_draw_dashboard_draws_the_report_again(synthetic_report, tmp_path):
    import polars as pl

    frame = pl.read_parquet(synthetic_report.run_dir / "metrics.parquet")
    draw_dashboard(frame, synthetic_report, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (synthetic_report.run_dir / "dashboard.png").read_bytes()  # deterministic


def test_importing_the_report_loads_neither_matplotlib_nor_scipy():
    heavy = "{'matplotlib', 'scipy', 'sklearn', 'safetensors'}"
    code = f"import sys, saecli.report, saecli.io; print(sorted({heavy} & {{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
