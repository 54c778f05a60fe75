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


def test_cells_not_significant_after_correction_are_faded(synthetic_report, tmp_path, monkeypatch):
    import polars as pl

    import saecli.report.dashboard as dashboard

    faded = []
    monkeypatch.setattr(dashboard, "_fade", lambda ax, cells: faded.append(sorted(cells)))
    draw_dashboard(pl.read_parquet(synthetic_report.run_dir / "metrics.parquet"), synthetic_report, tmp_path / "d.png")
    reconstruction, sphericity, by_domain = faded
    groups = [*synthetic_report.domains, "all"]
    expected = sorted(
        (i, j)
        for i, d in enumerate(groups)
        for j, layer in enumerate(synthetic_report.layers)
        if not synthetic_report.get(f"l{layer}_reconstruction_error", d).significant
    )
    assert reconstruction == expected and (3, 1) not in reconstruction  # l2 over all samples: significant
    assert len(sphericity) == 4 * 3  # random: nothing significant, every cell faded
    top = [r.metric for r in synthetic_report.top(8)]
    significant = {(i, j) for i, m in enumerate(top) for j, d in enumerate([*synthetic_report.domains, "all"])
                   if synthetic_report.get(m, d).significant}  # fmt: skip
    assert significant and not significant & set(by_domain) and len(by_domain) == 8 * 4 - len(significant)
