"""summary.md: the page of a report a researcher pastes into notes.

Boundary: formats a computed :class:`~saecli.report.detection.Report` as markdown text; computes no
statistic, reads and writes no file (:mod:`saecli.report` writes it).
"""

from __future__ import annotations

import math

from saecli.io import REPORT_FILES
from saecli.report.detection import ALL, BASELINE, PROBE, TOP_DEFAULT, Detection, Report, numeric_metrics

DETECTION_FILE, DASHBOARD_FILE, SUMMARY_FILE, PROBES_FILE, GENERALISATION_FILE, FEATURES_FILE = REPORT_FILES


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


def _family(r: Detection) -> str:
    return {BASELINE: " (baseline)", PROBE: " (probe)"}.get(r.family, "")


def _named(rows: list[Detection]) -> str:
    return ", ".join(f"`{r.metric}` ({_fmt_auc(r)})" for r in rows)


def baseline_sentence(report: Report) -> str:
    """The plain statement of which metrics and probes beat the log-probability baseline (all samples)."""
    base = report.baseline()
    if base is None:
        return (
            "Baselines were not computed for this run (an older run, or `saecli run --no-baselines`): nothing to "
            "compare the metrics with."
        )
    head = f"The log-probability baseline `{base.metric}` reaches AUROC {_fmt_auc(base)} ({base.direction})."
    if not math.isfinite(base.ci_low):
        return f"{head} Without bootstrap intervals (`--bootstrap 0`) no metric is said to beat it."
    winners = report.beat_baseline()
    geometry = [r for r in winners if r.family != PROBE]
    probes = [r for r in winners if r.family == PROBE]
    if not winners:
        return f"{head} **No metric and no probe beats it** with non-overlapping 95% intervals of |AUROC − 0.5|."
    parts = [f"{head} **Beating it with non-overlapping 95% intervals of |AUROC − 0.5|:**"]
    parts.append(f"geometry metrics: {_named(geometry)};" if geometry else "geometry metrics: none;")
    parts.append(f"probes: {_named(probes)}." if probes else "probes: none.")
    return " ".join(parts)


def _probe_lines(report: Report, domains: list[str]) -> list[str]:
    if not report.probes:
        return []
    lines = [
        "",
        f"## Probes: logistic regression, {report.folds}-fold cross-validation grouped by sample",
        "",
        "Out-of-fold scores of each text; a sample's fact and hallucination are always in the same fold. "
        "`resid`: the residual stream the layer's SAE reads; `sae`: that SAE's feature activations.",
        "",
        "| probe | inputs | " + " | ".join(f"{d} (n={report.domains[d]})" for d in domains) + f" | {ALL} | per-fold AUROC |",
        "| --- | --- |" + " --- |" * (len(domains) + 2),
    ]
    by_probe: dict[str, dict[str, object]] = {}
    for p in report.probes:
        by_probe.setdefault(p.probe, {})[p.domain] = p
    for name, cells in by_probe.items():
        first = cells[ALL]
        auc = [_fmt_auc(report.get(name, d)) for d in [*domains, ALL]]
        spread = f"{first.fold_auroc_mean:.3f} ± {first.fold_auroc_sd:.3f}" if math.isfinite(first.fold_auroc_sd) else "–"
        lines.append(f"| `{name}` | {first.n_features} | " + " | ".join(auc) + f" | {spread} |")
    return lines


def _generalisation_lines(report: Report) -> list[str]:
    if not report.generalisation:
        return []
    held = list(dict.fromkeys(g.held_out for g in report.generalisation))
    lines = [
        "",
        "## Out-of-domain generalisation: trained on the other domains, tested on this one",
        "",
        "AUROC [95% CI] on the held-out domain; in brackets the same probe cross-validated within all domains.",
        "",
        "| probe | " + " | ".join(held) + " |",
        "| --- |" + " --- |" * len(held),
    ]
    by_probe: dict[str, dict[str, object]] = {}
    for g in report.generalisation:
        by_probe.setdefault(g.probe, {})[g.held_out] = g
    for name, cells in by_probe.items():
        out = []
        for d in held:
            g = cells.get(d)
            if g is None or not math.isfinite(g.auroc):
                out.append("–")
                continue
            ci = f" [{g.ci_low:.3f}, {g.ci_high:.3f}]" if math.isfinite(g.ci_low) else ""
            cv = f" ({g.in_domain_auroc:.3f})" if math.isfinite(g.in_domain_auroc) else ""
            out.append(f"{g.auroc:.3f}{ci}{cv}")
        lines.append(f"| `{name}` | " + " | ".join(out) + " |")
    return lines


def _feature_lines(report: Report, top: int) -> list[str]:
    if not report.features:
        return []
    lines = [
        "",
        "## SAE features that differ most between fact and hallucination",
        "",
        "d_z = mean / SD of the paired difference hall − fact of the feature's activation (> 0: stronger on "
        "hallucinations), with its bootstrap 95% interval; fires: share of fact / hallucination texts where it is "
        "active; ranked by score = |d_z| · (1 − min(fires on fact, fires on hall)), so features that fire on nearly "
        f"every text do not crowd the top. All ranked features: `{FEATURES_FILE}`.",
    ]
    for layer in dict.fromkeys(f.layer for f in report.features):
        rows = [f for f in report.features if f.layer == layer][: min(top, 10)]
        lines += [
            "",
            f"**Layer {layer}**",
            "",
            "| # | feature | d_z [95% CI] | fires fact / hall | AUROC | score |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for f in rows:
            name = f"[{f.feature}]({f.url})" if f.url else str(f.feature)
            ci = f" [{f.ci_low:+.2f}, {f.ci_high:+.2f}]" if math.isfinite(f.ci_low) else ""
            lines.append(
                f"| {f.rank} | {name} | {f.effect_size:+.2f}{ci} | {f.freq_fact:.0%} / {f.freq_hall:.0%} | {f.auroc:.3f} | {f.score:.3f} |"
            )
    return lines


def summary_markdown(report: Report, *, top: int = TOP_DEFAULT) -> str:
    """The page a researcher pastes into notes: top metrics, per-domain AUROC, the figure."""
    domains = list(report.domains)
    per_domain = ", ".join(f"{d} {n}" for d, n in report.domains.items())
    interval = (
        f"bootstrap 95% interval over samples ({report.bootstrap} resamples, seed {report.seed})"
        if report.bootstrap
        else "no bootstrap"
    )
    best = report.top(top)
    lines = [
        f"# saecli report: {report.preset}, {report.samples} samples",
        "",
        f"Run `{report.run_dir}`; data {report.data_source}; layers {', '.join(map(str, report.layers))}; domains: {per_domain}.",
        "",
        "**AUROC** = P(hall value > fact value) + ½·P(tie) over all hall/fact pairs (Mann-Whitney): 1 means "
        "every hallucination scores higher than every fact, 0 every one lower, 0.5 no separation. Intervals: "
        f"{interval}. Δ = hall − fact per sample (mean ± SD); p: two-sided Wilcoxon signed-rank, unadjusted for "
        f"the {len({r.metric for r in report.rows}) or len(numeric_metrics(report.layers))} metrics × {len(domains) + 1} groups tested.",
        "",
        *[f"> {note}" for note in report.notes],
        *([""] if report.notes else []),
        baseline_sentence(report),
        "",
        f"## Top {len(best)} metrics, all domains (by |AUROC − 0.5|)",
        "",
        "| # | metric | AUROC [95% CI] | direction | fact mean | hall mean | Δ mean ± SD | Wilcoxon p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(best, 1):
        sd = f" ± {r.sd_diff:.3g}" if math.isfinite(r.sd_diff) else ""
        lines.append(
            f"| {i} | `{r.metric}`{_family(r)} | {_fmt_auc(r)} | {r.direction} | {r.fact_mean:.4g} | {r.hall_mean:.4g} | "
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
    lines += _probe_lines(report, domains) + _generalisation_lines(report) + _feature_lines(report, top)
    files = (
        f"; probes `{PROBES_FILE}`, generalisation `{GENERALISATION_FILE}`, features `{FEATURES_FILE}`"
        if report.residuals
        else ""
    )
    lines += [
        "",
        f"All {len(report.rows)} rows (every numeric metric, baseline and probe × domain): `{DETECTION_FILE}`{files}.",
        "",
        f"![saecli dashboard: {report.preset}, {report.samples} samples]({DASHBOARD_FILE})",
        "",
    ]
    return "\n".join(lines)
