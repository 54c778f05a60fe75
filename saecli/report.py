"""The report of a finished run: which metric tells a hallucination from a fact, and how well.

``make_report(run_dir)`` reads ``metrics.parquet`` + ``manifest.json`` and writes, next to them:

* ``detection.csv``: for every numeric metric (each one with a ``_fact`` and a ``_hall`` column) and
  every domain (and ``all``), the AUROC of telling the hallucinated text from the factual one with a
  bootstrap 95% interval over samples, the paired effect (mean and SD of hall − fact) and the
  Wilcoxon signed-rank p-value;
* ``dashboard.png``: the five tests at a glance plus the detection ranking;
* ``summary.md``: the top metrics, the per-domain table, and the figure.

Every statistic is a small pure function below. This module never prints: it logs and returns a
:class:`Report`. matplotlib and scipy are imported inside the functions that need them, so importing
saecli (and ``saecli --help``) stays fast; the figure is drawn on an Agg canvas without pyplot, which
keeps the process's own matplotlib backend untouched.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import KINDS, LAYER_METRICS
from saecli.errors import SaecliError
from saecli.io import METRICS_FILE, REPORT_FILES, atomic_write, probe_write, read_run

log = logging.getLogger(__name__)

DETECTION_FILE, DASHBOARD_FILE, SUMMARY_FILE = REPORT_FILES
ALL = "all"
SAMPLE_METRICS = ("centroid_drift", "axis_twist", "stability", "entropy", "cross_layer_consistency")
LAYER_NUMERIC = tuple(name for name in LAYER_METRICS if name != "shape_class")
SHAPE_CLASSES = ("Spherical", "Oblate", "Prolate", "Triaxial")
FACT_COLOR, HALL_COLOR = "#2b6cb0", "#c53030"
TOP_DEFAULT = 10
MAX_BOOTSTRAP = 100_000
"""The most bootstrap resamples a report takes (default 1000): far more than a 95% interval needs, while
the time grows with every one."""
BOOTSTRAP_BLOCK = 1 << 21
"""Resample × sample weights held at once (16 MiB of float64): the bootstrap is drawn in chunks of
``BOOTSTRAP_BLOCK // n`` resamples, so its memory does not grow with ``bootstrap × n``."""


# -- the statistics (pure) -------------------------------------------------------------------------


def auroc(hall: np.ndarray, fact: np.ndarray) -> float:
    """Area under the ROC curve of the score separating hall values from fact values.

    ``AUROC = P(h > f) + ½·P(h = f)`` over all (hall, fact) pairs, i.e. the Mann-Whitney
    ``U / (n_h·n_f)`` with ``U = R_h − n_h(n_h + 1)/2``, ``R_h`` the sum of the mid-ranks of the hall
    values in the pooled sample. 1.0: every hall value is above every fact value; 0.0: every one is
    below; 0.5: no separation. NaN when either side is empty.
    """
    h, f = np.asarray(hall, dtype=np.float64), np.asarray(fact, dtype=np.float64)
    if h.size == 0 or f.size == 0:
        return math.nan
    ranks = _midranks(np.concatenate([h, f]))
    u = ranks[: h.size].sum() - h.size * (h.size + 1) / 2.0
    return float(u / (h.size * f.size))


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    mid = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mid, ends - starts)
    return ranks


def weighted_auroc(hall: np.ndarray, fact: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of paired samples counted ``weights`` times (one row of weights per resample).

    Sample i contributes its hall value ``h_i`` and its fact value ``f_i``, each ``w_i`` times, so
    ``AUROC_w = Σ_i Σ_j w_i·w_j·[1(h_i > f_j) + ½·1(h_i = f_j)] / (Σ_i w_i)²``. With bootstrap counts
    as weights this is exactly the AUROC of the resampled data, in O(B·n log n) instead of a re-rank
    per resample. ``weights`` is (n,) or (B, n); returns a scalar array or (B,).
    """
    h, f = np.asarray(hall, dtype=np.float64), np.asarray(fact, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(f, kind="mergesort")
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w[:, order], axis=1)], axis=1)
    below = np.searchsorted(f[order], h, side="left")  # fact values < h_i
    at_or_below = np.searchsorted(f[order], h, side="right")  # fact values ≤ h_i
    score = (cum[:, below] + cum[:, at_or_below]) / 2.0  # weighted count of f_j < h_i, plus ½ ties
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * score).sum(axis=1) / total**2
    return out[0] if np.ndim(weights) == 1 else out


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Counts of each of n samples in ``resamples`` resamples of size n drawn with replacement:
    one multinomial(n; 1/n, …, 1/n) row per resample, shape (resamples, n)."""
    if n == 0 or resamples == 0:
        return np.zeros((resamples, n))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def bootstrap_chunks(n: int, resamples: int, rng: np.random.Generator, block: int | None = None) -> Iterator[np.ndarray]:
    """:func:`bootstrap_weights` in successive chunks of at most ``block // n`` rows (at least one).

    The generator draws each row in turn, so the chunks concatenated are exactly
    ``bootstrap_weights(n, resamples, rng)``: the same seed gives the same intervals whatever the chunk size.
    """
    rows = max(1, (BOOTSTRAP_BLOCK if block is None else block) // max(n, 1))
    for start in range(0, resamples, rows):
        yield bootstrap_weights(n, min(rows, resamples - start), rng)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval: the (1 − level)/2 and (1 + level)/2 quantiles of the
    resampled statistic (NaN resamples ignored; NaN, NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_effect(hall: np.ndarray, fact: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of ``d_i = h_i − f_i``; SD is NaN for n < 2."""
    d = np.asarray(hall, dtype=np.float64) - np.asarray(fact, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan


def wilcoxon_p(hall: np.ndarray, fact: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``d_i = h_i − f_i`` against a zero median shift.

    Zero differences are dropped (Wilcoxon's convention); scipy picks the exact distribution for
    small untied samples and the tie-corrected normal approximation otherwise. 1.0 when every
    difference is zero (no evidence of a shift); NaN when there are no samples.
    """
    d = np.asarray(hall, dtype=np.float64) - np.asarray(fact, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def direction(value: float) -> str:
    """``hall higher`` for AUROC > 0.5, ``hall lower`` for AUROC < 0.5, ``none`` at 0.5 (or NaN)."""
    if not math.isfinite(value) or value == 0.5:
        return "none"
    return "hall higher" if value > 0.5 else "hall lower"


# -- which columns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A numeric metric measured on both texts: its name and its fact / hall columns."""

    name: str  # e.g. "l2_reconstruction_error" or "entropy"
    fact: str
    hall: str
    layer: int | None = None
    base: str = ""


def numeric_metrics(layers: Sequence[int]) -> list[Metric]:
    """Every metric with a ``_fact`` and a ``_hall`` column, in spec order (no ``_diff`` columns,
    no shape class)."""
    fact, hall = KINDS
    out = [
        Metric(f"l{layer}_{name}", f"l{layer}_{fact}_{name}", f"l{layer}_{hall}_{name}", layer, name)
        for layer in layers
        for name in LAYER_NUMERIC
    ]
    out += [Metric(base, f"{base}_{fact}", f"{base}_{hall}", None, base) for base in SAMPLE_METRICS]
    return out


# -- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One metric in one domain: how well it tells hall from fact."""

    metric: str
    layer: int | None
    domain: str
    n: int
    auroc: float
    ci_low: float
    ci_high: float
    direction: str
    fact_mean: float
    hall_mean: float
    mean_diff: float
    sd_diff: float
    wilcoxon_p: float

    @property
    def separation(self) -> float:
        """|AUROC − 0.5|: 0 is chance, 0.5 perfect (in either direction)."""
        return abs(self.auroc - 0.5) if math.isfinite(self.auroc) else -1.0


@dataclass
class Report:
    run_dir: Path
    out_dir: Path
    preset: str
    samples: int
    layers: list[int]
    domains: dict[str, int]  # domain → samples, in input order
    data_source: str
    bootstrap: int
    seed: int
    rows: list[Detection]
    files: dict[str, Path] = field(default_factory=dict)

    def top(self, k: int = TOP_DEFAULT, domain: str = ALL) -> list[Detection]:
        """The k metrics that separate best in ``domain``, by |AUROC − 0.5| (ties: name order)."""
        rows = [r for r in self.rows if r.domain == domain]
        return sorted(rows, key=lambda r: (-r.separation, r.metric))[:k]

    def get(self, metric: str, domain: str = ALL) -> Detection:
        return next(r for r in self.rows if r.metric == metric and r.domain == domain)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([asdict(r) for r in self.rows], schema=_DETECTION_SCHEMA, orient="row")

    def to_dict(self) -> dict[str, Any]:
        """The detection document (``saecli report --json``); NaN becomes null."""
        return {
            "run_dir": str(self.run_dir),
            "preset": self.preset,
            "samples": self.samples,
            "layers": self.layers,
            "domains": self.domains,
            "data_source": self.data_source,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "auroc": "P(hall > fact) + ½·P(tie) over all hall/fact pairs; < 0.5: lower for hallucinations",
            "files": {k: str(v) for k, v in self.files.items()},
            "top": [r.metric for r in self.top()],
            "rows": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.rows],
        }


_DETECTION_SCHEMA = {
    "metric": pl.String(), "layer": pl.Int64(), "domain": pl.String(), "n": pl.Int64(), "auroc": pl.Float64(),
    "ci_low": pl.Float64(), "ci_high": pl.Float64(), "direction": pl.String(), "fact_mean": pl.Float64(),
    "hall_mean": pl.Float64(), "mean_diff": pl.Float64(), "sd_diff": pl.Float64(), "wilcoxon_p": pl.Float64(),
}  # fmt: skip


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _group_rng(seed: int, domain: str) -> np.random.Generator:
    """One generator per (seed, domain): a domain's resamples never depend on the other domains."""
    return np.random.default_rng([seed, zlib.crc32(domain.encode())])


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_options(*, bootstrap: int, seed: int, top: int = TOP_DEFAULT) -> None:
    """Refuse, before any work, the report options that would fail or exhaust memory later (the one
    place both the CLI and the Python API check them)."""
    if not _whole(bootstrap) or not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise SaecliError(
            f"--bootstrap must be a whole number from 0 (no interval) to {MAX_BOOTSTRAP} resamples (got {bootstrap!r})",
            hint="the default is 1000",
        )
    if not _whole(seed) or seed < 0:
        raise SaecliError(f"--seed must be a whole number >= 0 (got {seed!r})")
    if not _whole(top) or top < 1:
        raise SaecliError(f"--top must be a whole number >= 1 (got {top!r})")


def _bootstrap_aurocs(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, bootstrap: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The resampled AUROC of each (hall, fact, ok) metric, all metrics on the same resamples, drawn in
    chunks (memory O(chunk × n), not O(bootstrap × n)); an empty array for a metric with no sample."""
    out = [np.empty(bootstrap if ok.any() else 0) for _, _, ok in pairs]
    start = 0
    for weights in bootstrap_chunks(n, bootstrap, rng):
        stop = start + weights.shape[0]
        for values, (h, f, ok) in zip(out, pairs, strict=True):
            if values.size:
                values[start:stop] = weighted_auroc(h, f, weights[:, ok])
        start = stop
    return out


def detect(frame: pl.DataFrame, layers: Sequence[int], *, bootstrap: int = 1000, seed: int = 0) -> list[Detection]:
    """Detection statistics of every numeric metric, per domain (input order) and over all samples.

    Within a group every metric is bootstrapped on the same resamples of samples (a sample's fact and
    hall values stay together). A sample missing either value of a metric (null or NaN) is left out
    of that metric only.
    """
    check_options(bootstrap=bootstrap, seed=seed)
    domains = list(dict.fromkeys(frame["domain"].to_list()))
    groups = [(d, frame.filter(pl.col("domain") == d)) for d in domains] + [(ALL, frame)]
    metrics = numeric_metrics(layers)
    rows: list[Detection] = []
    for domain, part in groups:
        pairs = []
        for metric in metrics:
            fact = part[metric.fact].cast(pl.Float64).fill_null(math.nan).to_numpy()
            hall = part[metric.hall].cast(pl.Float64).fill_null(math.nan).to_numpy()
            ok = np.isfinite(fact) & np.isfinite(hall)
            pairs.append((hall[ok], fact[ok], ok))
        rng = _group_rng(seed, domain)
        resampled = _bootstrap_aurocs(pairs, part.height, bootstrap, rng) if bootstrap else [np.empty(0)] * len(pairs)
        for metric, (h, f, ok), values in zip(metrics, pairs, resampled, strict=True):
            point = auroc(h, f)
            lo, hi = percentile_interval(values) if values.size else (math.nan, math.nan)
            mean, sd = paired_effect(h, f)
            rows.append(
                Detection(
                    metric=metric.name, layer=metric.layer, domain=domain, n=int(ok.sum()), auroc=point, ci_low=lo, ci_high=hi,
                    direction=direction(point), fact_mean=float(f.mean()) if f.size else math.nan,
                    hall_mean=float(h.mean()) if h.size else math.nan, mean_diff=mean, sd_diff=sd, wilcoxon_p=wilcoxon_p(h, f),
                )  # fmt: skip
            )
    return rows


def _layers_of(frame: pl.DataFrame, manifest: dict[str, Any]) -> list[int]:
    layers = manifest.get("layers")
    if not layers:  # an older or hand-written manifest: the columns say which layers there are
        layers = sorted({int(m.group(1)) for c in frame.columns if (m := re.fullmatch(r"l(\d+)_fact_l0_norm", c))})
    return [int(layer) for layer in layers]


def load_run(run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any], list[int]]:
    """A run's table, manifest and layers, checked for the columns the report needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SaecliError(f"{run_dir} is not a folder", hint="give the folder a `saecli run` wrote (it holds metrics.parquet)")
    try:
        frame, manifest = read_run(run_dir)
    except SaecliError as exc:  # keep a hint that says more (e.g. the command that finishes the run)
        hint = exc.hint or "give the folder a `saecli run` wrote, e.g. runs/<time>-tiny"
        raise SaecliError(exc.message, hint=hint, exit_code=exc.exit_code) from None
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:  # a truncated file, broken JSON
        raise SaecliError(f"cannot read the run in {run_dir}: {exc}", hint="rerun `saecli run` into a fresh --out") from None
    if not isinstance(manifest, dict):
        raise SaecliError(f"{run_dir / 'manifest.json'} is not a saecli manifest (not a JSON object)")
    layers = _layers_of(frame, manifest)
    if not layers:
        raise SaecliError(f"{run_dir / METRICS_FILE} has no per-layer metric columns (l<L>_fact_l0_norm, …)")
    needed = ["domain"] + [c for m in numeric_metrics(layers) for c in (m.fact, m.hall)]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SaecliError(f"{run_dir / METRICS_FILE} lacks the columns {shown}", hint="was it written by another saecli version? rerun `saecli run`")
    if frame.height == 0:
        raise SaecliError(f"{run_dir / METRICS_FILE} has no samples")
    return frame.with_columns(pl.col("domain").fill_null("(none)")), manifest, layers


def make_report(run_dir: Path, *, bootstrap: int = 1000, seed: int = 0, out_dir: Path | None = None, top: int = TOP_DEFAULT) -> Report:
    """Compute the detection table of a finished run and write detection.csv, dashboard.png and
    summary.md into the run folder (or ``out_dir``).

    The options are checked, the run read and the output folder tried with a real write before
    anything is computed; each file is written atomically (whole or absent).
    """
    check_options(bootstrap=bootstrap, seed=seed, top=top)
    run_dir = Path(run_dir)
    frame, manifest, layers = load_run(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_writable(out_dir, run_dir)
    preset = manifest.get("preset")
    counts = frame.group_by("domain", maintain_order=True).len()
    report = Report(
        run_dir=run_dir,
        out_dir=out_dir,
        preset=str(preset.get("name", "?") if isinstance(preset, dict) else preset or "?"),
        samples=frame.height,
        layers=layers,
        domains=dict(zip(counts["domain"].to_list(), counts["len"].to_list(), strict=True)),
        data_source=str(manifest.get("data_source") or (manifest.get("config") or {}).get("data") or "?"),
        bootstrap=bootstrap,
        seed=seed,
        rows=[],
    )
    log.info("report of %s: %d samples, %d metrics, %d bootstrap resamples", run_dir, frame.height, len(numeric_metrics(layers)), bootstrap)
    report.rows = detect(frame, layers, bootstrap=bootstrap, seed=seed)
    write_files(report, frame, top=top)
    log.info("wrote %s", ", ".join(str(p) for p in report.files.values()))
    return report


def _reason(exc: OSError) -> str:
    """``No space left on device``, also for an OSError made from an errno alone."""
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))


def _elsewhere(run_dir: Path, exc: OSError | None = None) -> str:
    """The fix for a folder that refuses the report."""
    fix = f"write it elsewhere: saecli report {run_dir} --out DIR"
    return f"free some space, or {fix}" if exc is not None and exc.errno == errno.ENOSPC else fix


def check_writable(out_dir: Path, run_dir: Path) -> None:
    """Refuse an output folder that cannot take the report, before anything is computed.

    A real write (a temporary file created and removed), not ``os.access``: permissions are not the
    only reason a folder refuses files (read-only mounts, pseudo file systems, a full disk), and root
    passes every access check. A folder that does not exist yet is tried in its nearest existing parent.
    """
    if out_dir.is_symlink() and not out_dir.exists():
        raise SaecliError(f"cannot write the report into {out_dir}: it is a broken symbolic link", hint=_elsewhere(run_dir))
    absolute = out_dir.absolute()
    existing = next(p for p in (absolute, *absolute.parents) if p.exists())
    if not existing.is_dir():
        raise SaecliError(f"cannot write the report into {out_dir}: {existing} is a file", hint=_elsewhere(run_dir))
    try:
        probe_write(existing)
    except OSError as exc:
        raise SaecliError(
            f"cannot write the report into {out_dir} ({existing}: {_reason(exc)})", hint=_elsewhere(run_dir, exc)
        ) from None


def write_files(report: Report, frame: pl.DataFrame, *, top: int = TOP_DEFAULT) -> None:
    """detection.csv, dashboard.png and summary.md into ``report.out_dir``, each atomically.

    A folder that fails on the way (a full disk, a mount gone read-only) is one error naming the file,
    the files already written (kept, whole) and the fix; no file is ever left half-written.
    """
    writers = {
        "detection": (DETECTION_FILE, lambda p: report.frame().write_csv(p, float_precision=6)),
        "dashboard": (DASHBOARD_FILE, lambda p: draw_dashboard(frame, report, p)),
        "summary": (SUMMARY_FILE, lambda p: p.write_text(summary_markdown(report, top=top), encoding="utf-8")),
    }
    for key, (name, write) in writers.items():
        path = report.out_dir / name
        try:
            atomic_write(path, write)
        except OSError as exc:
            kept = f"; {', '.join(p.name for p in report.files.values())} written and kept" if report.files else ""
            raise SaecliError(
                f"cannot write {path}: {_reason(exc)}{kept}", hint=_elsewhere(report.run_dir, exc), exit_code=1
            ) from None
        report.files[key] = path


# -- summary.md ------------------------------------------------------------------------------------


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


# -- dashboard.png ---------------------------------------------------------------------------------


def _values(frame: pl.DataFrame, column: str) -> np.ndarray:
    v = frame[column].cast(pl.Float64).fill_null(math.nan).to_numpy()
    return v[np.isfinite(v)]


def _legend_kinds(ax: Any, **kwargs: Any) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=FACT_COLOR, label="fact"), Patch(color=HALL_COLOR, label="hallucination")], **kwargs)


def _delta_heatmap(ax: Any, fig: Any, frame: pl.DataFrame, report: Report, base: str, label: str) -> None:
    """Mean hall − fact of ``l{L}_{base}``, rows domains (+ all), columns layers; * marks p < 0.05."""
    groups = [*report.domains, ALL]
    grid = np.full((len(groups), len(report.layers)), math.nan)
    for i, d in enumerate(groups):
        for j, layer in enumerate(report.layers):
            grid[i, j] = report.get(f"l{layer}_{base}", d).mean_diff
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
    for i, d in enumerate(groups):
        for j, layer in enumerate(report.layers):
            v = grid[i, j]
            if not math.isfinite(v):
                continue
            star = "*" if report.get(f"l{layer}_{base}", d).wilcoxon_p < 0.05 else ""
            ax.text(j, i, f"{v:+.{decimals}f}{star}", ha="center", va="center", fontsize=10, color="white" if abs(v) > 0.6 * bound else "black")
    ax.set_title(f"{label}: mean Δ hall − fact\n(domain (n) × layer; * Wilcoxon p < 0.05)")


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

    rc = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10}
    import matplotlib

    with matplotlib.rc_context(rc):
        fig = Figure(figsize=(26, 17), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        _draw(fig, frame, report)
        fig.savefig(path, format="png", dpi=100, facecolor="white")


def _draw(fig: Any, frame: pl.DataFrame, report: Report) -> None:
    grid = fig.add_gridspec(3, 4)
    layers, first = report.layers, report.layers[0]
    domains = list(report.domains)
    per_domain = ", ".join(f"{d} {n}" for d, n in report.domains.items())
    fig.suptitle(
        f"saecli report: preset {report.preset}, {report.samples} samples ({per_domain}); layers {', '.join(map(str, layers))}; "
        f"data {report.data_source}",
        fontsize=15, fontweight="bold",
    )  # fmt: skip
    by_domain = [(d, frame.filter(pl.col("domain") == d)) for d in domains] + [(ALL, frame)]

    # Test 1: reconstruction error and sphericity Δ, L0 by layer.
    _delta_heatmap(fig.add_subplot(grid[0, 0]), fig, frame, report, "reconstruction_error", "Reconstruction error ‖x − x̂‖")
    _delta_heatmap(fig.add_subplot(grid[0, 1]), fig, frame, report, "sphericity", "Sphericity c/a")
    ax = fig.add_subplot(grid[0, 2])
    _paired_boxes(
        ax, [(f"layer {layer}", _values(frame, f"l{layer}_fact_l0_norm"), _values(frame, f"l{layer}_hall_l0_norm")) for layer in layers],
        "active SAE features (L0)",
    )  # fmt: skip
    ax.set_title(f"L0 by layer, fact vs hall (all {report.samples} samples)")

    # Test 2: centroid drift, axis twist.
    ax = fig.add_subplot(grid[1, 0])
    fact, hall = (frame[f"centroid_drift_{k}"].cast(pl.Float64).to_numpy() for k in KINDS)
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for i, d in enumerate(domains):
        mask = (frame["domain"] == d).to_numpy()
        ax.scatter(fact[mask], hall[mask], s=12, alpha=0.6, color=palette[i % len(palette)], label=d, edgecolors="none")
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
    ax.set_title(f"Centroid drift, layer {first} ({above:.0%} of samples above the diagonal)")
    ax.legend(loc="lower right", fontsize=9, markerscale=1.5)

    ax = fig.add_subplot(grid[1, 1])
    _overlaid_hist(ax, _values(frame, "axis_twist_fact"), _values(frame, "axis_twist_hall"), "line angle(u_P, u_text) [degrees]", bins=np.linspace(0, 90, 31))
    ax.set_title(f"Axis twist, layer {first}: distribution over {report.samples} samples")

    # Test 4: entropy.
    ax = fig.add_subplot(grid[1, 2])
    _overlaid_hist(ax, _values(frame, "entropy_fact"), _values(frame, "entropy_hall"), "entropy −Σ p ln p of the top-50 active values [nats]")
    ax.set_title(f"Entropy, layer {first}: distribution over {report.samples} samples")

    # Test 3: stability, mean ± 95% CI per domain.
    ax = fig.add_subplot(grid[2, 0])
    x = np.arange(len(by_domain))
    for offset, kind, color in ((-0.2, "fact", FACT_COLOR), (0.2, "hall", HALL_COLOR)):
        values = [_values(part, f"stability_{kind}") for _, part in by_domain]
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

    # Test 5: cross-layer consistency per domain.
    ax = fig.add_subplot(grid[2, 1])
    _paired_boxes(
        ax, [(d, _values(part, "cross_layer_consistency_fact"), _values(part, "cross_layer_consistency_hall")) for d, part in by_domain],
        f"cosine(x̂ layer {layers[1]}, x̂ layer {layers[2]})" if len(layers) > 2 else "cosine of reconstructions",
    )  # fmt: skip
    ax.set_title("Cross-layer consistency by domain")

    # Test 1: shape classes.
    ax = fig.add_subplot(grid[2, 2])
    _shape_counts(ax, frame, layers)

    # Detection: the ranking and the per-domain AUROC of the top metrics.
    _forest(fig.add_subplot(grid[0:2, 3]), report)
    _auroc_by_domain(fig, fig.add_subplot(grid[2, 3]), report)


def _shape_counts(ax: Any, frame: pl.DataFrame, layers: Sequence[int]) -> None:
    """Stacked counts of the shape classes per layer and text; classes no sample has are named in the title."""
    classes: list[str | None] = [*SHAPE_CLASSES, None]
    colors = ["#1b9e77", "#e6ab02", "#d95f02", "#7570b3", "#bbbbbb"]
    counts = np.zeros((len(classes), 2 * len(layers)))
    labels = []
    for j, (layer, kind) in enumerate((layer, kind) for layer in layers for kind in KINDS):
        column = frame[f"l{layer}_{kind}_shape_class"].to_list()
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
    ci = f"bootstrap 95% CI, {report.bootstrap} resamples" if report.bootstrap else "no bootstrap"
    ax.set_title(f"Detection: top {len(rows)} metrics by |AUROC − 0.5|\n(all {report.samples} samples; {ci})")
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
    for i in range(len(rows)):
        for j in range(len(groups)):
            v = grid[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if abs(v - 0.5) > 0.3 else "black")
    ax.set_title(f"AUROC by domain, top {len(rows)} metrics")


def report_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)
