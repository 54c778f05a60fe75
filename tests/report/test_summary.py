"""saecli.report.summary: summary.md of a synthetic run."""

from __future__ import annotations

import json
from pathlib import Path

from saecli.report import make_report
from saecli.report.summary import auroc_words, summary_markdown

from .helpers import DOMAINS, synthetic_run


def test_summary_names_the_planted_separator_and_the_figure(synthetic_report):
    summary = (synthetic_report.run_dir / "summary.md").read_text()
    low = synthetic_report.get("l2_reconstruction_error").ci_low
    assert (
        f"| 1 | `l2_reconstruction_error` | 1.000 [{low:.3f}, 1.000] | the hallucination always scores higher — perfect "
        "separation | 1.00 [" in summary
    )
    assert "![saecli dashboard" in summary and "(dashboard.png)" in summary


def test_summary_states_the_tests_and_the_family_wise_verdict(synthetic_report):
    summary = (synthetic_report.run_dir / "summary.md").read_text()
    assert f"Benjamini-Hochberg over all {len(synthetic_report.rows)} tests" in summary
    assert "direction is chosen on the same data (ranking by |AUROC − 0.5|)" in summary
    best = synthetic_report.best_of()
    assert f"**Best metric, all samples**: family-wise p = {best.p_family:.3f} against the best of 20 metrics" in summary
    assert "higher*" in summary and "In-sample" not in summary
    assert "1.000 [" in summary and "[1.000, 1.000]" not in summary  # no zero-width interval


def test_auroc_in_words():
    assert auroc_words(0.0) == "the hallucination always scores lower — perfect separation"
    assert auroc_words(1.0) == "the hallucination always scores higher — perfect separation"
    assert auroc_words(0.25) == "the hallucination scores lower in 75% of hall/fact comparisons"
    assert auroc_words(0.5) == "no separation"


def test_a_preset_that_learned_the_benchmark_says_so_first(tmp_path, monkeypatch):
    import saecli.report

    monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"png"))
    run_dir = synthetic_run(tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["preset"]["trained_on_benchmark"] = True
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    report = make_report(run_dir, bootstrap=0)
    head = (run_dir / "summary.md").read_text().splitlines()[:4]
    assert report.trained_on_benchmark and report.to_dict()["trained_on_benchmark"] is True
    assert head[2].startswith("> **In-sample:** the preset `synthetic` learned the built-in benchmark"), head
    assert "log-probability and reconstruction AUROCs are in-sample" in head[2]


def test_summary_is_the_file_written_and_honours_top(synthetic_report):
    assert summary_markdown(synthetic_report) == (synthetic_report.run_dir / "summary.md").read_text(encoding="utf-8")
    short = summary_markdown(synthetic_report, top=3)
    assert "## Top 3 metrics, all domains" in short
    assert short.count("| `") == 3 + 3  # the top table and the per-domain table, three rows each
    for domain, n in DOMAINS.items():
        assert f"{domain} (n={n})" in short and f"* **{domain}**: `" in short


def test_the_tiny_preset_declares_that_it_learned_the_benchmark(tmp_path):
    import pytest

    from saecli.config import find_preset, load_preset_file
    from saecli.errors import SaecliError

    tiny = find_preset("tiny")
    assert tiny.trained_on_benchmark is True and find_preset("gpt2-small").trained_on_benchmark is False
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(tiny.source).read_text().replace("trained_on_benchmark = true", 'trained_on_benchmark = "yes"'))
    with pytest.raises(SaecliError, match="trained_on_benchmark"):
        load_preset_file(bad)
