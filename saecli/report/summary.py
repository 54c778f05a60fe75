"""summary.md: the page of a report a researcher pastes into notes.

Boundary: formats a computed :class:`~saecli.report.detection.Report` as markdown text; computes no
statistic, reads and writes no file (:mod:`saecli.report` writes it).
"""

from __future__ import annotations

import math

from saecli.io import REPORT_FILES
from saecli.report.detection import ALL, ALPHA, BASELINE, PROBE, TOP_DEFAULT, Detection, Report

DETECTION_FILE, DASHBOARD_FILE, SUMMARY_FILE, HTML_FILE, PROBES_FILE, GENERALISATION_FILE, FEATURES_FILE = REPORT_FILES


def auroc_words(value: float) -> str:
    """The direction of an AUROC in words: ``0.0`` → "the hallucination always scores lower — perfect separation"."""
    if not math.isfinite(value):
        return "no value"
    if value in (0.0, 1.0):
        return f"the hallucination always scores {'higher' if value else 'lower'} — perfect separation"
    if value == 0.5:
        return "no separation"
    share, word = (value, "higher") if value > 0.5 else (1 - value, "lower")
    return f"the hallucination scores {word} in {share:.0%} of hall/fact comparisons"


def _fmt_auc(r: Detection, *, word: bool = False) -> str:
    """``0.930 [0.905, 0.952]``, with ``word``: ``… higher*`` (direction; * when significant after correction)."""
    if not math.isfinite(r.auroc):
        return "–"
    ci = f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if math.isfinite(r.ci_low) else ""
    if not word:
        return f"{r.auroc:.3f}{ci}"
    side = "higher" if r.auroc > 0.5 else "lower" if r.auroc < 0.5 else "none"
    return f"{r.auroc:.3f}{ci} {side}{'*' if r.significant else ''}"


def _fmt_win(r: Detection) -> str:
    if not math.isfinite(r.win_rate):
        return "–"
    ci = f" [{r.win_low:.2f}, {r.win_high:.2f}]" if math.isfinite(r.win_low) else ""
    return f"{r.win_rate:.2f}{ci}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _fmt_num(v: float) -> str:
    return f"{v:+.4g}" if math.isfinite(v) else "–"


def _family(r: Detection) -> str:
    return {BASELINE: " (baseline)", PROBE: " (probe)"}.get(r.family, "")


def _named(rows: list[Detection]) -> str:
    return ", ".join(
        f"`{r.metric}` (AUROC {_fmt_auc(r, word=True)}, {r.vs_baseline:+.3f} [{r.vs_baseline_low:+.3f}, {r.vs_baseline_high:+.3f}])"
        for r in rows
    )


def baseline_sentence(report: Report) -> str:
    """The plain statement of which metrics and probes beat the log-probability baseline (all samples)."""
    base = report.baseline()
    if base is None:
        return (
            "Baselines were not computed for this run (an older run, or `saecli run --no-baselines`): nothing to "
            "compare the metrics with."
        )
    head = f"The log-probability baseline `{base.metric}` reaches AUROC {_fmt_auc(base)}: {auroc_words(base.auroc)}."
    if not report.bootstrap:
        return f"{head} Without bootstrap resamples (`--bootstrap 0`) no metric is said to beat it."
    test = (
        "by a paired bootstrap over pairs of (its AUROC − the baseline's), both in the direction they are ranked, "
        f"95% interval above 0 ({report.bootstrap} resamples)"
    )
    winners = report.beat_baseline()
    geometry = [r for r in winners if r.family != PROBE]
    probes = [r for r in winners if r.family == PROBE]
    if not winners:
        return f"{head} **No metric and no probe beats it** {test}."
    parts = [f"{head} **Beating it** {test}, difference [interval] after each:"]
    parts.append(f"geometry metrics: {_named(geometry)};" if geometry else "geometry metrics: none;")
    parts.append(f"probes: {_named(probes)}." if probes else "probes: none.")
    return " ".join(parts)


def best_sentence(report: Report, domain: str = ALL) -> str:
    """The family-wise verdict on the best metric of ``domain`` as one sentence."""
    b = report.best_of(domain)
    if b is None:
        return "no family-wise test (`--bootstrap 0`: no permutations)"
    verdict = "significant" if b.significant else "**not** significant"
    return (
        f"family-wise p = {_fmt_p(b.p_family)} against the best of {b.metrics} metrics under {b.permutations} random "
        f"swaps within pairs (the null's 95th percentile of the best |AUROC − 0.5| is {b.null_q95:.3f}, this one "
        f"{b.separation:.3f}): {verdict}"
    )


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
        auc = [_fmt_auc(report.get(name, d), word=True) for d in [*domains, ALL]]
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
        "AUROC [95% interval] on the held-out domain (above 0.5: the probe scores the hallucination higher, the "
        "direction it was trained in; below 0.5: lower); in parentheses the same probe cross-validated within all domains.",
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
        "hallucinations); fires: share of fact / hallucination texts where it is active; ranked by score = |d_z| · "
        "(1 − min(fires on fact, fires on hall)), so features that fire on nearly every text do not crowd the top; "
        "AUROC: the activation as a detector (above 0.5: the hallucination's is higher, below: lower). p: exact "
        "two-sided sign test on the pairs where the feature differs (up / down: hall higher / lower); q: "
        "Benjamini-Hochberg over every feature of the layer that fires at least once; threshold: the 95th percentile "
        "of the best score under random swaps of fact and hallucination within pairs. A feature is significant (*) "
        f"only when q ≤ 0.05 and its score beats the threshold. All ranked features: `{FEATURES_FILE}`.",
    ]
    for layer in dict.fromkeys(f.layer for f in report.features):
        rows = [f for f in report.features if f.layer == layer][: min(top, 10)]
        first = rows[0]
        found = sum(f.significant for f in report.features if f.layer == layer)
        lines += [
            "",
            f"**Layer {layer}**: {first.tested} features tested, null threshold {first.null_threshold:.3f}, {found} significant.",
            "",
            "| # | feature | d_z | up / down | p | q | fires fact / hall | AUROC | score |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in rows:
            name = f"[{f.feature}]({f.url})" if f.url else str(f.feature)
            star = "*" if f.significant else ""
            lines.append(
                f"| {f.rank} | {name} | {f.effect_size:+.2f} | {f.n_up} / {f.n_down} | {f.p:.2g} | {f.q:.2g}{star} | "
                f"{f.freq_fact:.0%} / {f.freq_hall:.0%} | {f.auroc:.3f} | {f.score:.3f}{star} |"
            )
    return lines


def _head(report: Report) -> list[str]:
    """The title, the in-sample warning, the run, and what each statistic is."""
    per_domain = ", ".join(f"{d} {n}" for d, n in report.domains.items())
    groups = len(report.domains) + 1
    learned = (
        [
            f"> **In-sample:** the preset `{report.preset}` learned the built-in benchmark (its model was trained on "
            "these facts): on that benchmark its log-probability and reconstruction AUROCs are in-sample, not evidence "
            "of detection on unseen text.",
            "",
        ]
        if report.trained_on_benchmark
        else []
    )
    return [
        f"# saecli report: {report.preset}, {report.samples} samples",
        "",
        *learned,
        f"Run `{report.run_dir}`; data {report.data_source}; layers {', '.join(map(str, report.layers))}; domains: {per_domain}.",
        "",
        "**AUROC** = P(hall value > fact value) + ½·P(tie) over all n×n hall/fact combinations (Mann-Whitney U / n²): "
        "1 means every hallucination scores higher than every fact, 0 every one lower, 0.5 no separation; its 95% "
        "interval is a score interval (Newcombe's Hanley-McNeil method), which keeps its width at 0 and 1. "
        "**Win rate** = share of pairs whose hallucination scores above its own fact (ties ½), with a Wilson 95% "
        "interval over the pairs. Δ = hall − fact per sample (mean ± SD). **p**: two-sided Wilcoxon signed-rank; "
        f"**q**: Benjamini-Hochberg over all {report.tested} tests (metrics, baselines and probes × {groups} groups); "
        f"significant = q < {ALPHA} (* below). Each metric's direction is chosen on the same data (ranking by "
        "|AUROC − 0.5|), so the best metric of a group is judged family-wise, against random swaps of fact and "
        "hallucination within pairs.",
        "",
    ]


def summary_markdown(report: Report, *, top: int = TOP_DEFAULT) -> str:
    """The page a researcher pastes into notes: top metrics, per-domain AUROC, the figure."""
    domains = list(report.domains)
    best = report.top(top)
    lines = [
        *_head(report),
        *[f"> {note}" for note in report.notes],
        *([""] if report.notes else []),
        baseline_sentence(report),
        "",
        f"**Best metric, all samples**: {best_sentence(report)}.",
        "",
        f"## Top {len(best)} metrics, all domains (by |AUROC − 0.5|)",
        "",
        "| # | metric | AUROC [95% CI] | in words | win rate [95% CI] | Δ mean ± SD | Wilcoxon p | q |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(best, 1):
        sd = f" ± {r.sd_diff:.3g}" if math.isfinite(r.sd_diff) else ""
        star = "*" if r.significant else ""
        lines.append(
            f"| {i} | `{r.metric}`{_family(r)} | {_fmt_auc(r)} | {auroc_words(r.auroc)} | {_fmt_win(r)} | "
            f"{_fmt_num(r.mean_diff)}{sd} | {_fmt_p(r.wilcoxon_p)} | {_fmt_p(r.q)}{star} |"
        )
    lines += [
        "",
        "## Per domain: AUROC [95% CI] of the top metrics",
        "",
        f"higher / lower: the hallucination scores higher / lower than the fact; * significant after correction (q < {ALPHA}).",
        "",
        "| metric | " + " | ".join(f"{d} (n={report.domains[d]})" for d in domains) + f" | {ALL} (n={report.samples}) |",
        "| --- |" + " --- |" * (len(domains) + 1),
    ]
    for r in best:
        cells = [_fmt_auc(report.get(r.metric, d), word=True) for d in [*domains, ALL]]
        lines.append(f"| `{r.metric}` | " + " | ".join(cells) + " |")
    lines += ["", "Best metric per domain:", ""]
    for d in domains:
        (b,) = report.top(1, d) or [None]
        if b is not None:
            lines.append(f"* **{d}**: `{b.metric}`, AUROC {_fmt_auc(b)}: {auroc_words(b.auroc)}; {best_sentence(report, d)}")
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
