"""The detection table: every numeric metric of a run's table, per domain, through :mod:`.stats`.

Boundary: turns a results frame (already read) into :class:`Detection` rows and holds the
:class:`Report` they make up, with its option checks. No files are read or written here (see
:mod:`saecli.report`), nothing is drawn (:mod:`.dashboard`) or formatted as markdown (:mod:`.summary`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import BASELINE_METRICS, KINDS, LAYER_NUMERIC, PAIRED_METRICS, layer_column, layer_metric, paired_column
from saecli.errors import SaecliError
from saecli.report.stats import (
    auroc,
    bootstrap_aurocs,
    direction,
    group_rng,
    paired_effect,
    percentile_interval,
    wilcoxon_p,
)

ALL = "all"
"""The group of every sample, after the domains."""
TOP_DEFAULT = 10
FOLDS_DEFAULT = 5
"""Cross-validation folds of the probes (``--folds``)."""
MAX_FOLDS = 100
GEOMETRY, BASELINE, PROBE = "geometry", "baseline", "probe"
"""The families of a detection row: saecli's SAE metrics, the model's log-probability, a fitted probe."""
MAX_BOOTSTRAP = 100_000
"""The most bootstrap resamples a report takes (default 1000): far more than a 95% interval needs, while
the time grows with every one."""


@dataclass(frozen=True)
class Metric:
    """A numeric metric measured on both texts: its name and its fact / hall columns."""

    name: str  # e.g. "l2_reconstruction_error" or "entropy"
    fact: str
    hall: str
    layer: int | None = None
    base: str = ""
    family: str = GEOMETRY


def baseline_metrics(columns: Sequence[str]) -> list[Metric]:
    """The log-probability baselines a run's table has (``logprob_{sum,mean}_{fact,hall}``; none for a
    run without baselines). log p(fact) is expected higher: their AUROC is below 0.5 when they work."""
    fact, hall = KINDS
    present = set(columns)
    return [
        Metric(base, paired_column(base, fact), paired_column(base, hall), None, base, BASELINE)
        for base in BASELINE_METRICS
        if paired_column(base, fact) in present and paired_column(base, hall) in present
    ]


def numeric_metrics(layers: Sequence[int]) -> list[Metric]:
    """Every metric with a ``_fact`` and a ``_hall`` column, in spec order (no ``_diff`` columns,
    no shape class)."""
    fact, hall = KINDS
    out = [
        Metric(layer_metric(layer, name), layer_column(layer, fact, name), layer_column(layer, hall, name), layer, name)
        for layer in layers
        for name in LAYER_NUMERIC
    ]
    out += [Metric(base, paired_column(base, fact), paired_column(base, hall), None, base) for base in PAIRED_METRICS]
    return out


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
    family: str = GEOMETRY

    @property
    def separation(self) -> float:
        """|AUROC − 0.5|: 0 is chance, 0.5 perfect (in either direction)."""
        return abs(self.auroc - 0.5) if math.isfinite(self.auroc) else -1.0

    @property
    def separation_interval(self) -> tuple[float, float]:
        """The 95% interval of the AUROC folded onto |AUROC − 0.5| (0 at the low end when it holds
        0.5); NaN, NaN without an interval."""
        lo, hi = self.ci_low, self.ci_high
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return math.nan, math.nan
        low = 0.0 if lo <= 0.5 <= hi else min(abs(lo - 0.5), abs(hi - 0.5))
        return low, max(abs(lo - 0.5), abs(hi - 0.5))


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
    folds: int = FOLDS_DEFAULT
    baselines: bool = False
    """Whether the run has the log-probability baseline columns."""
    residuals: bool = False
    """Whether the run has residuals.safetensors (probes, generalisation and features computed from it)."""
    probes: list[Any] = field(default_factory=list)  # probes.ProbeRow: probes.csv
    generalisation: list[Any] = field(default_factory=list)  # probes.Generalisation: generalisation.csv
    features: list[Any] = field(default_factory=list)  # features.FeatureRow: features.csv
    notes: list[str] = field(default_factory=list)
    """What was not computed and why (no baselines, not enough data for the probes, …)."""

    def top(self, k: int = TOP_DEFAULT, domain: str = ALL) -> list[Detection]:
        """The k metrics that separate best in ``domain``, by |AUROC − 0.5| (ties: name order)."""
        rows = [r for r in self.rows if r.domain == domain]
        return sorted(rows, key=lambda r: (-r.separation, r.metric))[:k]

    def get(self, metric: str, domain: str = ALL) -> Detection:
        return next(r for r in self.rows if r.metric == metric and r.domain == domain)

    def baseline(self, domain: str = ALL) -> Detection | None:
        """The log-probability baseline that separates best in ``domain`` (None without baselines)."""
        rows = [r for r in self.rows if r.domain == domain and r.family == BASELINE and math.isfinite(r.auroc)]
        return min(rows, key=lambda r: (-r.separation, r.metric)) if rows else None

    def beat_baseline(self, domain: str = ALL) -> list[Detection]:
        """The metrics and probes whose separation interval lies wholly above the best baseline's:
        the low end of their |AUROC − 0.5| interval above the high end of the baseline's (intervals
        that do not overlap; a conservative reading, not a formal test). Best first."""
        base = self.baseline(domain)
        if base is None or not math.isfinite(base.separation_interval[1]):
            return []
        ceiling = base.separation_interval[1]
        rows = [r for r in self.rows if r.domain == domain and r.family != BASELINE and r.separation_interval[0] > ceiling]
        return sorted(rows, key=lambda r: (-r.separation, r.metric))

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
            "baselines": self.baselines,
            "beat_baseline": [r.metric for r in self.beat_baseline()],
            "folds": self.folds,
            "probes": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.probes],
            "generalisation": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.generalisation],
            "features": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.features],
            "notes": list(self.notes),
        }


_DETECTION_SCHEMA = {
    "metric": pl.String(), "layer": pl.Int64(), "domain": pl.String(), "n": pl.Int64(), "auroc": pl.Float64(),
    "ci_low": pl.Float64(), "ci_high": pl.Float64(), "direction": pl.String(), "fact_mean": pl.Float64(),
    "hall_mean": pl.Float64(), "mean_diff": pl.Float64(), "sd_diff": pl.Float64(), "wilcoxon_p": pl.Float64(),
    "family": pl.String(),
}  # fmt: skip


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_options(*, bootstrap: int, seed: int, top: int = TOP_DEFAULT, folds: int = FOLDS_DEFAULT) -> None:
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
    if not _whole(folds) or not 2 <= folds <= MAX_FOLDS:
        raise SaecliError(f"--folds must be a whole number from 2 to {MAX_FOLDS} (got {folds!r})", hint="the default is 5")


def detect(frame: pl.DataFrame, layers: Sequence[int], *, bootstrap: int = 1000, seed: int = 0) -> list[Detection]:
    """Detection statistics of every numeric metric, and of the log-probability baselines when the
    run has them (columns present with at least one value), per domain (input order) and over all
    samples (see :func:`detect_metrics`)."""
    baselines = [m for m in baseline_metrics(frame.columns) if _has_values(frame, m)]
    return detect_metrics(frame, numeric_metrics(layers) + baselines, bootstrap=bootstrap, seed=seed)


def _has_values(frame: pl.DataFrame, metric: Metric) -> bool:
    values = [frame[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in (metric.fact, metric.hall)]
    return bool(np.any(np.isfinite(values[0]) & np.isfinite(values[1])))


def detect_metrics(frame: pl.DataFrame, metrics: Sequence[Metric], *, bootstrap: int = 1000, seed: int = 0) -> list[Detection]:
    """Detection statistics of ``metrics`` (columns of ``frame``), per domain (input order) and over
    all samples.

    Within a group every metric is bootstrapped on the same resamples of samples (a sample's fact and
    hall values stay together); the resamples depend only on the seed, the group and its size, so two
    calls on frames of the same samples (the metrics, then the probes' scores) share them. A sample
    missing either value of a metric (null or NaN) is left out of that metric only.
    """
    check_options(bootstrap=bootstrap, seed=seed)
    domains = list(dict.fromkeys(frame["domain"].to_list()))
    groups = [(d, frame.filter(pl.col("domain") == d)) for d in domains] + [(ALL, frame)]
    rows: list[Detection] = []
    for domain, part in groups:
        pairs = []
        for metric in metrics:
            fact = part[metric.fact].cast(pl.Float64).fill_null(math.nan).to_numpy()
            hall = part[metric.hall].cast(pl.Float64).fill_null(math.nan).to_numpy()
            ok = np.isfinite(fact) & np.isfinite(hall)
            pairs.append((hall[ok], fact[ok], ok))
        rng = group_rng(seed, domain)
        resampled = bootstrap_aurocs(pairs, part.height, bootstrap, rng) if bootstrap else [np.empty(0)] * len(pairs)
        for metric, (h, f, ok), values in zip(metrics, pairs, resampled, strict=True):
            point = auroc(h, f)
            lo, hi = percentile_interval(values) if values.size else (math.nan, math.nan)
            mean, sd = paired_effect(h, f)
            rows.append(
                Detection(
                    metric=metric.name,
                    layer=metric.layer,
                    domain=domain,
                    n=int(ok.sum()),
                    auroc=point,
                    ci_low=lo,
                    ci_high=hi,
                    direction=direction(point),
                    fact_mean=float(f.mean()) if f.size else math.nan,
                    hall_mean=float(h.mean()) if h.size else math.nan,
                    mean_diff=mean,
                    sd_diff=sd,
                    wilcoxon_p=wilcoxon_p(h, f),
                    family=metric.family,
                )  # fmt: skip
            )
    return rows
