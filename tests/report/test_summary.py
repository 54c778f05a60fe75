"""saecli.report.summary: summary.md of a synthetic run."""

from __future__ import annotations

from saecli.report.summary import summary_markdown

from .helpers import DOMAINS


def test_summary_names_the_planted_separator_and_the_figure(synthetic_report):
    summary = (synthetic_report.run_dir / "summary.md").read_text()
    assert "`l2_reconstruction_error` | 1.000 [1.000, 1.000] | hall higher" in summary
    assert "![saecli dashboard" in summary and "(dashboard.png)" in summary


def test_summary_is_the_file_written_and_honours_top(synthetic_report):
    assert summary_markdown(synthetic_report) == (synthetic_report.run_dir / "summary.md").read_text(encoding="utf-8")
    short = summary_markdown(synthetic_report, top=3)
    assert "## Top 3 metrics, all domains" in short
    assert short.count("| `") == 3 + 3  # the top table and the per-domain table, three rows each
    for domain, n in DOMAINS.items():
        assert f"{domain} (n={n})" in short and f"* **{domain}**: `" in short
