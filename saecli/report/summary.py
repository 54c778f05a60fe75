"""summary.md: the page of a report a researcher pastes into notes.

Boundary: formats a computed :class:`~saecli.report.detection.Report` as markdown text; computes no
statistic, reads and writes no file (:mod:`saecli.report` writes it).
"""

from __future__ import annotations

import math

from saecli.io import REPORT_FILES
from saecli.report.detection import ALL, TOP_DEFAULT, Detection, Report, numeric_metrics

DETECTION_FILE, DASHBOARD_FILE, SUMMARY_FILE = REPORT_FILES


def _fmt_auc(r: Detection) -> str:
    if not math.isfinite(r.auroc):
        return "–"
    ci = f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if math.isfinite(r.ci_low) else ""
    return f"{r.auroc:.3f}{ci}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _fmt_num(v: float) -> str:
    return f"{v:+.4g}" if math.isfinite(v) else "–"


def summary_markdown(report: Report, *, top: int = TOP_DEFAULT) -> str:
    """The page a researcher pastes into notes: top metrics, per-domain AUROC, the figure."""
    domains = list(report.domains)
    per_domain = ", ".join(f"{d} {n}" for d, n in report.domains.items())
    interval = f"bootstrap 95% interval over samples ({report.bootstrap} resamples, seed {report.seed})" if report.bootstrap else "no bootstrap"
    best = report.top(top)
    lines = [
        f"# saecli report: {report.preset}, {report.samples} samples",
        "",
        f"Run `{report.run_dir}`; data {report.data_source}; layers {', '.join(map(str, report.layers))}; "
        f"domains: {per_domain}.",
        "",
        "**AUROC** = P(hall value > fact value) + ½·P(tie) over all hall/fact pairs (Mann-Whitney): 1 means "
        "every hallucination scores higher than every fact, 0 every one lower, 0.5 no separation. Intervals: "
        f"{interval}. Δ = hall − fact per sample (mean ± SD); p: two-sided Wilcoxon signed-rank, unadjusted for "
        f"the {len(numeric_metrics(report.layers))} metrics × {len(domains) + 1} groups tested.",
        "",
        f"## Top {len(best)} metrics, all domains (by |AUROC − 0.5|)",
        "",
        "| # | metric | AUROC [95% CI] | direction | fact mean | hall mean | Δ mean ± SD | Wilcoxon p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(best, 1):
        sd = f" ± {r.sd_diff:.3g}" if math.isfinite(r.sd_diff) else ""
        lines.append(
            f"| {i} | `{r.metric}` | {_fmt_auc(r)} | {r.direction} | {r.fact_mean:.4g} | {r.hall_mean:.4g} | "
            f"{_fmt_num(r.mean_diff)}{sd} | {_fmt_p(r.wilcoxon_p)} |"
        )
    lines += [
        "",
        "## Per domain: AUROC [95% CI] of the top metrics",
        "",
        "| metric | " + " | ".join(f"{d} (n={report.domains[d]})" for d in domains) + f" | {ALL} (n={report.samples}) |",
        "| --- |" + " --- |" * (len(domains) + 1),
    ]
    for r in best:
        cells = [_fmt_auc(report.get(r.metric, d)) for d in [*domains, ALL]]
        lines.append(f"| `{r.metric}` | " + " | ".join(cells) + " |")
    lines += ["", "Best metric per domain:", ""]
    for d in domains:
        (b,) = report.top(1, d) or [None]
        if b is not None:
            chance = "; the interval includes 0.5" if b.ci_low <= 0.5 <= b.ci_high else ""
            lines.append(f"* **{d}**: `{b.metric}`, AUROC {_fmt_auc(b)} ({b.direction}{chance})")
    lines += [
        "",
        f"All {len(report.rows)} rows (every numeric metric × domain): `{DETECTION_FILE}`.",
        "",
        f"![saecli dashboard: {report.preset}, {report.samples} samples]({DASHBOARD_FILE})",
        "",
    ]
    return "\n".join(lines)
