"""dashboard.png: the five tests and the detection ranking of a report in one figure.

Boundary: the only module of saecli that imports matplotlib, and only inside the functions that draw
(so importing saecli stays fast). The figure is drawn on an Agg canvas without pyplot, which keeps
the process's own matplotlib backend untouched. Reads the run's frame and a computed
:class:`~saecli.report.detection.Report`; computes no detection statistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import KINDS, SHAPE_CLASSES, layer_column, layer_metric, paired_column
from saecli.report.detection import ALL, ALPHA, BASELINE, GEOMETRY, PROBE, Detection, Report

FACT_COLOR, HALL_COLOR = "#2b6cb0", "#c53030"
SCATTER_POINTS = 10_000
"""Samples the centroid-drift scatter draws at most: above it a seeded subsample stratified by domain
(:func:`~saecli.report.sampling.subsample`, the report's seed), said in the panel's title and the notes;
a million points take seconds to draw and cover the panel. Its percentage above the diagonal is on every sample."""


def scatter_rows(domains: Sequence[Any], seed: int) -> np.ndarray | None:
    """The rows the centroid-drift scatter draws (ascending), or None for all of them (at most :data:`SCATTER_POINTS`)."""
    from saecli.report.sampling import subsample

    return subsample(domains, SCATTER_POINTS, seed)


def _values(frame: pl.DataFrame, column: str) -> np.ndarray:
    v = frame[column].cast(pl.Float64).fill_null(math.nan).to_numpy()
    return v[np.isfinite(v)]


def _legend_kinds(ax: Any, **kwargs: Any) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=FACT_COLOR, label="fact"), Patch(color=HALL_COLOR, label="hallucination")], **kwargs)


def _fade(ax: Any, cells: list[tuple[int, int]]) -> None:
    """Wash out and hatch the (row, column) cells of a heatmap that are not significant after correction,
    so their colour does not read as an effect."""
    from matplotlib.patches import Rectangle

    for i, j in cells:
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", alpha=0.65, hatch="///", edgecolor="#999999", linewidth=0)
        )


def _delta_heatmap(ax: Any, fig: Any, frame: pl.DataFrame, report: Report, base: str, label: str) -> None:
    """Mean hall − fact of ``l{L}_{base}``, rows domains (+ all), columns layers; * marks q < ALPHA
    (Benjamini-Hochberg over the whole report), cells not significant are washed out and hatched."""
    groups = [*report.domains, ALL]
    grid = np.full((len(groups), len(report.layers)), math.nan)
    for i, d in enumerate(groups):
        for j, layer in enumerate(report.layers):
            grid[i, j] = report.get(layer_metric(layer, base), d).mean_diff
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    bound = bound or 1.0
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    cbar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
    cbar.set_label("mean Δ (hall − fact)")
    cbar.formatter.set_useOffset(False)
    cbar.formatter.set_scientific(False)
    decimals = max(0, 2 - math.floor(math.log10(bound)))
    ax.set_xticks(range(len(report.layers)), [f"layer {layer}" for layer in report.layers])
    ax.set_yticks(range(len(groups)), [f"{d} ({report.domains.get(d, report.samples)})" for d in groups])
    ax.axhline(len(groups) - 1.5, color="black", linewidth=1)
    faded = []
    for i, d in enumerate(groups):
        for j, layer in enumerate(report.layers):
            v = grid[i, j]
            if not math.isfinite(v):
                continue
            significant = report.get(layer_metric(layer, base), d).significant
            if not significant:
                faded.append((i, j))
            ax.text(
                j, i, f"{v:+.{decimals}f}{'*' if significant else ''}", ha="center", va="center", fontsize=10, zorder=3,
                color="white" if significant and abs(v) > 0.6 * bound else "black",
            )  # fmt: skip
    _fade(ax, faded)
    ax.set_title(f"{label}: mean Δ hall − fact\n(domain (n) × layer; * q < {ALPHA}, hatched: not significant)")


def _paired_boxes(ax: Any, groups: list[tuple[str, np.ndarray, np.ndarray]], ylabel: str) -> None:
    """Side-by-side fact / hall boxplots per group, means marked with a white diamond."""
    positions = np.arange(len(groups)) * 3.0
    for offset, idx, color in ((-0.55, 1, FACT_COLOR), (0.55, 2, HALL_COLOR)):
        data = [g[idx] for g in groups]
        box = ax.boxplot(
            data, positions=positions + offset, widths=0.9, patch_artist=True, showfliers=False, showmeans=True,
            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5},
            medianprops={"color": "black"},
        )  # fmt: skip
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.75)
    ax.set_xticks(positions, [g[0] for g in groups])
    ax.set_xlim(positions[0] - 1.5, positions[-1] + 1.5)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.12 * (high - low))  # room for the legend above the whiskers
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _legend_kinds(ax, loc="upper center", ncol=2, fontsize=9)


def _overlaid_hist(ax: Any, fact: np.ndarray, hall: np.ndarray, xlabel: str, bins: Any = 30) -> None:
    both = np.concatenate([fact, hall])
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else bins
    for values, color, name in ((fact, FACT_COLOR, "fact"), (hall, HALL_COLOR, "hallucination")):
        mean = f"mean {values.mean():.3g}" if values.size else "none"
        ax.hist(values, bins=edges, color=color, alpha=0.45, label=f"{name} ({mean})")
        ax.hist(values, bins=edges, color=color, histtype="step", linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_dashboard(frame: pl.DataFrame, report: Report, path: Path) -> None:
    """The five tests and the detection ranking in one figure (PNG at ``path``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # text.parse_math off: a domain or preset name is the user's text, and a "$" in it would be read as
    # mathtext (and a "$\\frac$" fail to draw at all).
    rc = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
          "text.parse_math": False}  # fmt: skip
    import matplotlib

    with matplotlib.rc_context(rc):
        extra = report.baselines or bool(report.probes) or bool(report.features)
        fig = Figure(figsize=(26, 23 if extra else 17), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        _draw(fig, frame, report)
        fig.savefig(path, format="png", dpi=100, facecolor="white")


def _draw(fig: Any, frame: pl.DataFrame, report: Report) -> None:
    """Lay out the dashboard's grid on ``fig`` and draw every panel into it."""
    extra = report.baselines or bool(report.probes) or bool(report.features)
    grid = fig.add_gridspec(4 if extra else 3, 4)
    layers = report.layers
    per_domain = ", ".join(f"{d} {n}" for d, n in report.domains.items())
    fig.suptitle(
        f"saecli report: preset {report.preset}, {report.samples} samples ({per_domain}); layers {', '.join(map(str, layers))}; "
        f"data {report.data_source}",
        fontsize=15, fontweight="bold",
    )  # fmt: skip
    # The per-domain panels read four columns: only those are copied per domain, not the run's table.
    narrow = frame.select("domain", *(paired_column(m, k) for m in ("stability", "cross_layer_consistency") for k in KINDS))
    by_domain = [(d, narrow.filter(pl.col("domain") == d)) for d in report.domains] + [(ALL, narrow)]

    _draw_layer_panels(fig, grid, frame, report)
    _draw_sample_panels(fig, grid, frame, report)
    _draw_domain_panels(fig, grid, frame, report, by_domain)

    # Detection: the ranking and the per-domain AUROC of the top metrics.
    _forest(fig.add_subplot(grid[0:2, 3]), report)
    _auroc_by_domain(fig, fig.add_subplot(grid[2, 3]), report)

    if extra:  # geometry against the baselines and probes; generalisation; the features that differ
        _versus_baselines(fig.add_subplot(grid[3, 0:2]), report)
        _generalisation(fig, fig.add_subplot(grid[3, 2]), report)
        _top_features(fig.add_subplot(grid[3, 3]), report)


def _draw_layer_panels(fig: Any, grid: Any, frame: pl.DataFrame, report: Report) -> None:
    """Row 0 (test 1): reconstruction error and sphericity Δ heatmaps, L0 by layer."""
    layers = report.layers
    _delta_heatmap(fig.add_subplot(grid[0, 0]), fig, frame, report, "reconstruction_error", "Reconstruction error ‖x − x̂‖")
    _delta_heatmap(fig.add_subplot(grid[0, 1]), fig, frame, report, "sphericity", "Sphericity c/a")
    ax = fig.add_subplot(grid[0, 2])
    _paired_boxes(
        ax, [(f"layer {layer}", _values(frame, layer_column(layer, "fact", "l0_norm")), _values(frame, layer_column(layer, "hall", "l0_norm"))) for layer in layers],
        "active SAE features (L0)",
    )  # fmt: skip
    ax.set_title(f"L0 by layer, fact vs hall (all {report.samples} samples)")


def _draw_sample_panels(fig: Any, grid: Any, frame: pl.DataFrame, report: Report) -> None:
    """Row 1 (tests 2 and 4): centroid drift, axis twist and entropy of the first layer."""
    first = report.layers[0]
    _centroid_drift(fig.add_subplot(grid[1, 0]), frame, report)

    # Test 2: axis twist.
    ax = fig.add_subplot(grid[1, 1])
    _overlaid_hist(
        ax,
        _values(frame, paired_column("axis_twist", "fact")),
        _values(frame, paired_column("axis_twist", "hall")),
        "line angle(u_P, u_text) [degrees]",
        bins=np.linspace(0, 90, 31),
    )
    ax.set_title(f"Axis twist, layer {first}: distribution over {report.samples} samples")

    # Test 4: entropy.
    ax = fig.add_subplot(grid[1, 2])
    _overlaid_hist(
        ax,
        _values(frame, paired_column("entropy", "fact")),
        _values(frame, paired_column("entropy", "hall")),
        "entropy −Σ p ln p of the top-50 active values [nats]",
    )
    ax.set_title(f"Entropy, layer {first}: distribution over {report.samples} samples")


def _centroid_drift(ax: Any, frame: pl.DataFrame, report: Report) -> None:
    """Test 2: per-sample centroid drift, hall against fact, coloured by domain, with the diagonal."""
    fact, hall = (frame[f"centroid_drift_{k}"].cast(pl.Float64).to_numpy() for k in KINDS)
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    domains = frame["domain"].to_numpy()
    shown = scatter_rows(domains, report.seed)
    drawn = np.arange(frame.height) if shown is None else shown
    for i, d in enumerate(report.domains):
        rows = drawn[domains[drawn] == d]
        ax.scatter(fact[rows], hall[rows], s=12, alpha=0.6, color=palette[i % len(palette)], label=d, edgecolors="none")
    finite = np.isfinite(fact) & np.isfinite(hall)
    both = np.concatenate([fact[finite], hall[finite]])
    low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    pad = 0.05 * (high - low) or 1.0
    low, high = max(0.0, low - pad), high + pad
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="hall = fact")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")
    above = float(np.mean(hall[finite] > fact[finite])) if finite.any() else math.nan
    ax.set_xlabel("fact: angle(c_P, c_F) [degrees]")
    ax.set_ylabel("hallucination: angle(c_P, c_H) [degrees]")
    sampled = "" if shown is None else f";\n{shown.size:,} of {frame.height:,} samples drawn (seeded, by domain)"
    ax.set_title(f"Centroid drift, layer {report.layers[0]} ({above:.0%} of samples above the diagonal{sampled})")
    ax.legend(loc="lower right", fontsize=9, markerscale=1.5)


def _draw_domain_panels(
    fig: Any, grid: Any, frame: pl.DataFrame, report: Report, by_domain: list[tuple[str, pl.DataFrame]]
) -> None:
    """Row 2 (tests 3, 5 and 1): stability and cross-layer consistency by domain, shape classes."""
    layers = report.layers
    _stability(fig.add_subplot(grid[2, 0]), by_domain, layers[0])

    # Test 5: cross-layer consistency per domain.
    ax = fig.add_subplot(grid[2, 1])
    _paired_boxes(
        ax, [(d, _values(part, paired_column("cross_layer_consistency", "fact")), _values(part, paired_column("cross_layer_consistency", "hall"))) for d, part in by_domain],
        f"cosine(x̂ layer {layers[1]}, x̂ layer {layers[2]})" if len(layers) > 2 else "cosine of reconstructions",
    )  # fmt: skip
    ax.set_title("Cross-layer consistency by domain")

    # Test 1: shape classes.
    ax = fig.add_subplot(grid[2, 2])
    _shape_counts(ax, frame, layers)


def _stability(ax: Any, by_domain: list[tuple[str, pl.DataFrame]], first: int) -> None:
    """Test 3: stability under noise, mean ± 95% CI of fact and hall per domain (+ all)."""
    x = np.arange(len(by_domain))
    for offset, kind, color in ((-0.2, "fact", FACT_COLOR), (0.2, "hall", HALL_COLOR)):
        values = [_values(part, paired_column("stability", kind)) for _, part in by_domain]
        means = [v.mean() if v.size else math.nan for v in values]
        errs = [1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0 for v in values]
        ax.errorbar(x + offset, means, yerr=errs, fmt="o", color=color, markersize=8, capsize=4, linewidth=2)
    ax.set_xticks(x, [f"{d}\n(n={part.height})" for d, part in by_domain])
    ax.set_xlim(-0.6, len(by_domain) - 0.4)
    ax.axvline(len(by_domain) - 1.5, color="black", linewidth=1)
    ax.set_ylabel("Jaccard of top-10 features, clean vs noisy (mean)")
    ax.set_title(f"Stability under noise, layer {first}: mean ± 95% CI")
    ax.grid(axis="y", alpha=0.3)
    _legend_kinds(ax, loc="best", fontsize=9)


FAMILY_COLORS = {GEOMETRY: "#4a5568", BASELINE: "#d69e2e", PROBE: "#38a169"}


def _versus_baselines(ax: Any, report: Report, k: int = 12) -> None:
    """AUROC oriented to ≥ 0.5 (max(AUROC, 1 − AUROC)) with intervals: every baseline and probe and the
    best geometry metrics, on all samples; the best baseline's interval shaded."""
    rows = [r for r in report.rows if r.domain == ALL and math.isfinite(r.auroc)]
    geometry = sorted((r for r in rows if r.family == GEOMETRY), key=lambda r: (-r.separation, r.metric))[:k]
    shown = sorted([*geometry, *(r for r in rows if r.family != GEOMETRY)], key=lambda r: (-r.separation, r.metric))
    base = report.baseline()
    if base is not None and math.isfinite(base.ci_low):
        lo, hi = base.oriented_interval
        ax.axvspan(lo, hi, color=FAMILY_COLORS[BASELINE], alpha=0.18, label=f"{base.metric} 95% CI")
    x = np.arange(len(shown))
    for xi, r in zip(x, shown, strict=True):
        color = FAMILY_COLORS.get(r.family, "black")
        lo, hi = r.oriented_interval
        if math.isfinite(lo):
            ax.plot([lo, hi], [xi, xi], color=color, linewidth=2.5)
        filled = r.beats_baseline or r.family == BASELINE
        ax.plot(r.oriented, xi, "o", color=color, markersize=7, markerfacecolor=color if filled else "white")
    ax.set_yticks(x, [_label(r) for r in shown], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0.45, 1.02)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("AUROC oriented to ≥ 0.5: max(AUROC, 1 − AUROC), with 95% interval")
    winners = len(report.beat_baseline())
    verdict = "no baseline in this run" if base is None else f"{winners} beat the best baseline (paired bootstrap; filled dots)"
    ax.set_title(f"Geometry metrics vs log-probability baselines and probes (all {report.samples} samples; {verdict})")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", label=name) for name, c in FAMILY_COLORS.items()]
    ax.legend(handles=handles, loc="lower right", fontsize=9)


def _label(r: Detection) -> str:
    flip = " (flipped)" if r.auroc < 0.5 else ""
    return f"{r.metric}{flip}"


def _generalisation(fig: Any, ax: Any, report: Report) -> None:
    """Held-out-domain AUROC of each probe (trained on the other domains)."""
    if not report.generalisation:
        ax.axis("off")
        reason = "no residuals in this run" if not report.residuals else "not enough data (one domain?)"
        ax.text(0.5, 0.5, f"Out-of-domain generalisation: {reason}", ha="center", va="center", transform=ax.transAxes)
        return
    probes = list(dict.fromkeys(g.probe for g in report.generalisation))
    held = list(dict.fromkeys(g.held_out for g in report.generalisation))
    grid = np.full((len(probes), len(held)), math.nan)
    for g in report.generalisation:
        grid[probes.index(g.probe), held.index(g.held_out)] = g.auroc
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02).set_label("AUROC on the held-out domain")
    ax.set_xticks(range(len(held)), held, rotation=20, ha="right")
    ax.set_yticks(range(len(probes)), probes)
    for i in range(len(probes)):
        for j in range(len(held)):
            v = grid[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if abs(v - 0.5) > 0.3 else "black")
    ax.set_title("Out of domain: probe trained on the other domains")


def _top_features(ax: Any, report: Report, k: int = 5) -> None:
    """The top features of each layer: d_z with its interval."""
    rows: list[Any] = []
    for layer in dict.fromkeys(f.layer for f in report.features):
        rows += [f for f in report.features if f.layer == layer][:k]
    if not rows:
        ax.axis("off")
        ax.text(0.5, 0.5, "SAE features: no residuals in this run", ha="center", va="center", transform=ax.transAxes)
        return
    y = np.arange(len(rows))
    for yi, f in zip(y, rows, strict=True):
        color = HALL_COLOR if f.effect_size > 0 else FACT_COLOR
        if math.isfinite(f.ci_low):
            ax.plot([f.ci_low, f.ci_high], [yi, yi], color=color, linewidth=2)
        ax.plot(f.effect_size if math.isfinite(f.effect_size) else 0.0, yi, "o", color=color, markersize=6)
    ax.set_yticks(y, [f"L{f.layer} #{f.feature} ({f.freq_fact:.0%}/{f.freq_hall:.0%})" for f in rows], fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel("d_z = mean / SD of hall − fact activation (95% CI)")
    ax.set_title(f"Top {k} SAE features per layer by score\n(label: layer, feature, fires on fact / hall)")
    ax.grid(axis="x", alpha=0.3)


def _shape_counts(ax: Any, frame: pl.DataFrame, layers: Sequence[int]) -> None:
    """Stacked counts of the shape classes per layer and text; classes no sample has are named in the title."""
    classes: list[str | None] = [*SHAPE_CLASSES, None]
    colors = ["#1b9e77", "#e6ab02", "#d95f02", "#7570b3", "#bbbbbb"]
    counts = np.zeros((len(classes), 2 * len(layers)))
    labels = []
    for j, (layer, kind) in enumerate((layer, kind) for layer in layers for kind in KINDS):
        column = frame[layer_column(layer, kind, "shape_class")].to_list()
        for i, cls in enumerate(classes):
            counts[i, j] = sum(1 for v in column if v == cls)
        labels.append(f"layer {layer}\n{kind}")
    x = np.arange(counts.shape[1]) + np.repeat(np.arange(len(layers)) * 0.5, 2)
    bottoms = np.zeros(counts.shape[1])
    total = float(frame.height) or 1.0
    for i, cls in enumerate(classes):
        if not counts[i].any():
            continue
        ax.bar(x, counts[i], bottom=bottoms, color=colors[i], width=0.8, label=cls or "nothing active")
        for xj, c, b in zip(x, counts[i], bottoms, strict=True):
            if c >= 0.06 * total:
                ax.text(xj, b + c / 2, f"{int(c)}", ha="center", va="center", fontsize=9, color="white")
        bottoms += counts[i]
    ax.set_xticks(x, labels)
    ax.set_ylabel("samples")
    ax.set_ylim(0, bottoms.max() * 1.15 if bottoms.max() else 1)
    ax.legend(loc="upper center", ncol=5, fontsize=9, frameon=False)
    absent = [cls for i, cls in enumerate(SHAPE_CLASSES) if not counts[i].any()]
    note = f" (no sample is {' or '.join(absent)})" if absent else ""
    ax.set_title(f"Shape class of the inertia ellipsoid, counts\n{note.strip(' ()')}".rstrip())


def _forest(ax: Any, report: Report, k: int = 20) -> None:
    rows = [r for r in report.top(k) if math.isfinite(r.auroc)]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        color = HALL_COLOR if r.auroc > 0.5 else FACT_COLOR
        if math.isfinite(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [yi, yi], color=color, linewidth=2)
        ax.plot(r.auroc, yi, "o", color=color, markersize=7)
        ax.text(1.02, yi, f"{r.auroc:.2f}", va="center", fontsize=9, transform=ax.get_yaxis_transform())
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, [r.metric for r in rows])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("AUROC, hall vs fact (> 0.5: higher for hallucinations)")
    ax.set_title(f"Detection: top {len(rows)} metrics by |AUROC − 0.5|\n(all {report.samples} samples; score 95% intervals)")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D

    ax.legend(
        handles=[Line2D([], [], color=HALL_COLOR, marker="o", label="higher in hall"), Line2D([], [], color=FACT_COLOR, marker="o", label="lower in hall")],
        loc="lower left", fontsize=9,
    )  # fmt: skip


def _auroc_by_domain(fig: Any, ax: Any, report: Report, k: int = 8) -> None:
    rows = report.top(k)
    groups = [*report.domains, ALL]
    grid = np.array([[report.get(r.metric, d).auroc for d in groups] for r in rows]).reshape(len(rows), len(groups))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02).set_label("AUROC")
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [r.metric for r in rows])
    faded = []
    for i, r in enumerate(rows):
        for j, d in enumerate(groups):
            v, significant = grid[i, j], report.get(r.metric, d).significant
            if not math.isfinite(v):
                continue
            if not significant:
                faded.append((i, j))
            star, light = ("*", abs(v - 0.5) > 0.3) if significant else ("", False)
            ax.text(j, i, f"{v:.2f}{star}", ha="center", va="center", fontsize=9, color="white" if light else "black", zorder=3)
    _fade(ax, faded)
    ax.set_title(f"AUROC by domain, top {len(rows)} metrics\n(* q < {ALPHA}; hatched: not significant after correction)")
