"""The detection table: every numeric metric of a run's table, per domain, through :mod:`.stats`.

Boundary: turns a results frame (already read) into :class:`Detection` rows and holds the
:class:`Report` they make up, with its option checks. No files are read or written here (see
:mod:`saecli.report`), nothing is drawn (:mod:`.dashboard`) or formatted as markdown (:mod:`.summary`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.columns import BASELINE_METRICS, KINDS, LAYER_NUMERIC, PAIRED_METRICS, layer_column, layer_metric, paired_column
from saecli.errors import SaecliError
from saecli.report.progress import Steps
from saecli.report.sampling import MIN_SAMPLES, PROBE_SAMPLES, RESAMPLE_SAMPLES, rescale, subsample
from saecli.report.stats import (
    auroc,
    auroc_interval,
    bh_qvalues,
    bootstrap_aurocs,
    direction,
    flip_null_max,
    group_rng,
    paired_effect,
    percentile_interval,
    permutation_p,
    wilcoxon_p,
    wilson_interval,
    win_rate,
)

ALL = "all"
"""The group of every sample, after the domains."""
TOP_DEFAULT = 10
FOLDS_DEFAULT = 5
"""Cross-validation folds of the probes (``--folds``)."""
MAX_FOLDS = 100
GEOMETRY, BASELINE, PROBE = "geometry", "baseline", "probe"
"""The families of a detection row: saecli's SAE metrics, the model's log-probability, a fitted probe."""
ALPHA = 0.05
"""The level of every test of the report: q < ALPHA is significant, family-wise p < ALPHA for the best."""
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
    ci_low: float  # score-type 95% interval of the AUROC (stats.auroc_interval)
    ci_high: float
    direction: str
    fact_mean: float
    hall_mean: float
    mean_diff: float
    sd_diff: float
    wilcoxon_p: float  # raw two-sided Wilcoxon signed-rank p of hall − fact
    family: str = GEOMETRY
    win_rate: float = math.nan  # share of pairs whose hall scores above its own fact (ties ½)
    win_low: float = math.nan  # Wilson 95% interval over the n pairs
    win_high: float = math.nan
    q: float = math.nan  # Benjamini-Hochberg q of wilcoxon_p over every row of the report
    significant: bool = False  # q < ALPHA
    vs_baseline: float = math.nan  # oriented AUROC − the group's best baseline's oriented AUROC
    vs_baseline_low: float = math.nan  # paired bootstrap 95% interval of that difference
    vs_baseline_high: float = math.nan
    beats_baseline: bool = False  # vs_baseline_low > 0

    @property
    def separation(self) -> float:
        """|AUROC − 0.5|: 0 is chance, 0.5 perfect (in either direction)."""
        return abs(self.auroc - 0.5) if math.isfinite(self.auroc) else -1.0

    @property
    def oriented(self) -> float:
        """The AUROC in the direction it is ranked in: max(AUROC, 1 − AUROC)."""
        return 0.5 + self.separation if math.isfinite(self.auroc) else math.nan

    @property
    def oriented_interval(self) -> tuple[float, float]:
        """The AUROC's interval in the direction it is ranked in (mirrored at 0.5 when AUROC < 0.5)."""
        if not math.isfinite(self.ci_low):
            return math.nan, math.nan
        return (self.ci_low, self.ci_high) if self.auroc >= 0.5 else (1 - self.ci_high, 1 - self.ci_low)


@dataclass(frozen=True)
class Best:
    """The best metric of a group by |AUROC − 0.5|, judged against all the metrics tested with it."""

    domain: str
    metric: str
    auroc: float
    separation: float
    p_family: float
    """Share of sign-flip permutations whose best |AUROC − 0.5| (over every metric) reaches this one's."""
    null_q95: float
    """95th percentile of that null maximum: a best |AUROC − 0.5| above it is family-wise significant."""
    permutations: int
    metrics: int
    """How many metrics the maximum is taken over."""

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_family) and self.p_family < ALPHA


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
    best: list[Best] = field(default_factory=list)
    """The family-wise verdict on the best metric of each domain and of all samples."""
    trained_on_benchmark: bool = False
    """The preset learned the built-in benchmark (manifest ``preset.trained_on_benchmark``)."""
    probe_samples: int = PROBE_SAMPLES
    """The most samples the probes are fitted and scored on (a larger run: a seeded subsample, :mod:`.sampling`)."""
    resample_samples: int = RESAMPLE_SAMPLES
    """The most samples of a group the paired bootstrap and the SAE features' null draw from (rescaled to the group)."""
    subsampled: dict[str, int] = field(default_factory=dict)
    """What ran on a subsample and on how many samples (``probes``, ``bootstrap``, ``features_null``); empty below the caps."""

    @property
    def tested(self) -> int:
        """How many rows (metric, baseline or probe × group) have a p-value: the size of the BH family."""
        return sum(1 for r in self.rows if math.isfinite(r.wilcoxon_p))

    def best_of(self, domain: str = ALL) -> Best | None:
        return next((b for b in self.best if b.domain == domain), None)

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
        """The metrics and probes that beat the best baseline of ``domain``: the paired bootstrap 95%
        interval of (their oriented AUROC − the baseline's), on the same resamples of pairs, lies
        above 0. Best first; none without baselines or without bootstrap."""
        rows = [r for r in self.rows if r.domain == domain and r.beats_baseline]
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
            "trained_on_benchmark": self.trained_on_benchmark,
            "alpha": ALPHA,
            "tested": self.tested,
            "statistics": STATISTICS,
            "files": {k: str(v) for k, v in self.files.items()},
            "top": [r.metric for r in self.top()],
            "rows": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.rows],
            "baselines": self.baselines,
            "beat_baseline": [r.metric for r in self.beat_baseline()],
            "best": [{k: _json_value(v) for k, v in asdict(b).items()} | {"significant": b.significant} for b in self.best],
            "folds": self.folds,
            "probe_samples": self.probe_samples,
            "resample_samples": self.resample_samples,
            "subsampled": dict(self.subsampled),
            "probes": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.probes],
            "generalisation": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.generalisation],
            "features": [{k: _json_value(v) for k, v in asdict(r).items()} for r in self.features],
            "notes": list(self.notes),
        }


_DETECTION_SCHEMA = {
    "metric": pl.String(), "layer": pl.Int64(), "domain": pl.String(), "n": pl.Int64(), "auroc": pl.Float64(),
    "ci_low": pl.Float64(), "ci_high": pl.Float64(), "direction": pl.String(), "fact_mean": pl.Float64(),
    "hall_mean": pl.Float64(), "mean_diff": pl.Float64(), "sd_diff": pl.Float64(), "wilcoxon_p": pl.Float64(),
    "family": pl.String(), "win_rate": pl.Float64(), "win_low": pl.Float64(), "win_high": pl.Float64(),
    "q": pl.Float64(), "significant": pl.Boolean(), "vs_baseline": pl.Float64(), "vs_baseline_low": pl.Float64(),
    "vs_baseline_high": pl.Float64(), "beats_baseline": pl.Boolean(),
}  # fmt: skip

STATISTICS = {
    "auroc": "P(hall > fact) + ½·P(tie) over all n×n hall/fact combinations (Mann-Whitney U / n²)",
    "ci_low, ci_high": "95% score interval of the AUROC (Newcombe 2006 method 5: Hanley-McNeil variance at the candidate)",
    "win_rate": "share of pairs whose hallucination scores above its own fact, ties ½",
    "win_low, win_high": "Wilson 95% interval of the win rate over the n pairs",
    "wilcoxon_p": "raw two-sided Wilcoxon signed-rank p of hall − fact",
    "q": "Benjamini-Hochberg q of wilcoxon_p over every row (metrics, baselines, probes × groups)",
    "significant": "q < alpha",
    "vs_baseline": "oriented AUROC minus the group's best baseline's; paired bootstrap 95% interval over pairs "
    "(a group above resample_samples: drawn from that many, spread rescaled by sqrt(m/n))",
    "best.p_family": "sign-flip permutation p of the best |AUROC − 0.5| against the null maximum over all metrics",
}
"""What each statistic of the detection document is (``--json`` carries it)."""


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_options(
    *, bootstrap: int, seed: int, top: int = TOP_DEFAULT, folds: int = FOLDS_DEFAULT, probe_samples: int = PROBE_SAMPLES,
    resample_samples: int = RESAMPLE_SAMPLES,
) -> None:  # fmt: skip
    """Refuse, before any work, the report options that would fail or exhaust memory later (the one
    place both the CLI and the Python API check them)."""
    for flag, value in (("--probe-samples", probe_samples), ("--resample-samples", resample_samples)):
        if not _whole(value) or value < MIN_SAMPLES:
            raise SaecliError(f"{flag} must be a whole number >= {MIN_SAMPLES} (got {value!r})",
                              hint=f"the defaults are {PROBE_SAMPLES} and {RESAMPLE_SAMPLES}")  # fmt: skip
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
    return detect_metrics(frame, run_metrics(frame, layers), bootstrap=bootstrap, seed=seed)


def run_metrics(frame: pl.DataFrame, layers: Sequence[int]) -> list[Metric]:
    """Every numeric metric of a run's table, then the log-probability baselines it has values of."""
    return numeric_metrics(layers) + [m for m in baseline_metrics(frame.columns) if _has_values(frame, m)]


def _has_values(frame: pl.DataFrame, metric: Metric) -> bool:
    values = [frame[c].cast(pl.Float64).fill_null(math.nan).to_numpy() for c in (metric.fact, metric.hall)]
    return bool(np.any(np.isfinite(values[0]) & np.isfinite(values[1])))


def report_groups(frame: pl.DataFrame) -> int:
    """How many groups the detection table and the family-wise test go through: each domain, then all."""
    return frame["domain"].n_unique() + 1


class GroupRows:
    """One domain's rows of the table (input order), each column taken when asked for: a large run's
    domain is never copied whole (with one domain, a copy of the whole table), one column at a time is.
    Reads as the filtered frame does: ``height``, ``[column]`` (a Series), ``[rows]`` (a frame of those rows)."""

    def __init__(self, frame: pl.DataFrame, domain: str) -> None:
        self.frame, self.mask = frame, frame["domain"] == domain
        self.height = int(self.mask.sum())

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.frame[key].filter(self.mask)
        return self.frame[np.flatnonzero(self.mask.to_numpy())[np.asarray(key)]]


def _groups(frame: pl.DataFrame) -> Iterator[tuple[str, Any]]:
    """Each domain's rows (:class:`GroupRows`, first-seen order), then all (the table itself)."""
    for domain in frame["domain"].unique(maintain_order=True).to_list():
        yield domain, GroupRows(frame, domain)
    yield ALL, frame


def _pairs(part: pl.DataFrame, metrics: Sequence[Metric]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(hall, fact, ok) of each metric: the values of the samples that have both, and their mask."""
    out = []
    for metric in metrics:
        fact = part[metric.fact].cast(pl.Float64).fill_null(math.nan).to_numpy()
        hall = part[metric.hall].cast(pl.Float64).fill_null(math.nan).to_numpy()
        ok = np.isfinite(fact) & np.isfinite(hall)
        out.append((hall[ok], fact[ok], ok))
    return out


class LazyPairs(Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """:func:`_pairs` made one metric at a time, when asked for (each time): a large group's every
    metric column is never held at once (about 17 bytes per sample and metric), only the one in use."""

    def __init__(self, part: pl.DataFrame, metrics: Sequence[Metric]) -> None:
        self.part, self.metrics = part, list(metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _pairs(self.part, [self.metrics[i]])[0]


def _pairs_of(part: pl.DataFrame, metrics: Sequence[Metric], cap: int) -> Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pairs of a group: all at once up to ``cap`` samples (the bootstrap reads them many times),
    one metric at a time above it (:class:`LazyPairs`: the same values)."""
    return LazyPairs(part, metrics) if part.height > cap else _pairs(part, metrics)


def detect_metrics(
    frame: pl.DataFrame, metrics: Sequence[Metric], *, bootstrap: int = 1000, seed: int = 0, steps: Steps | None = None,
    resample_samples: int = RESAMPLE_SAMPLES,
) -> list[Detection]:  # fmt: skip
    """Detection statistics of ``metrics`` (columns of ``frame``), per domain (input order) and over
    all samples, with the Benjamini-Hochberg q-values over every row returned (one family).

    Within a group every metric is bootstrapped on the same resamples of samples (a sample's fact and
    hall values stay together): the paired bootstrap of each metric's oriented AUROC minus the best
    baseline's (none without baselines or with ``bootstrap`` 0). The resamples depend only on the
    seed, the group and its size. A sample missing either value of a metric (null or NaN) is left out
    of that metric only. ``steps``: one step per group (:func:`report_groups`). A group of more than
    ``resample_samples`` samples is bootstrapped on that many (:func:`_resampled`).
    """
    check_options(bootstrap=bootstrap, seed=seed, resample_samples=resample_samples)
    steps = steps or Steps()
    rows: list[Detection] = []
    for domain, part in _groups(frame):
        steps.start(f"detection table: {domain}")
        pairs = _pairs_of(part, metrics, resample_samples)
        group = [_row(metric, domain, *pair) for metric, pair in zip(metrics, pairs, strict=True)]
        if bootstrap and any(r.family == BASELINE and math.isfinite(r.auroc) for r in group):
            resampled = _resampled(part, metrics, pairs, group, bootstrap=bootstrap, seed=seed, cap=resample_samples)
            group = _versus_baseline(group, resampled)
        rows += group
    return adjust(rows)


def _resampled(
    part: pl.DataFrame, metrics: Sequence[Metric], pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    group: list[Detection], *, bootstrap: int, seed: int, cap: int,
) -> list[np.ndarray]:  # fmt: skip
    """The bootstrap AUROCs of every metric of one group (``group``: its rows, same order as ``pairs``),
    all on the same resamples (generator :func:`~saecli.report.stats.group_rng` of the seed and group).

    A group of n > ``cap`` samples draws its resamples from its first ``cap`` samples in the seeded,
    stratified order (:func:`~saecli.report.sampling.subsample`) and each metric's values are carried
    to the whole group: ``θ̂_n + √(m/n)·(θ*_m − θ̂_m)``, m and n the metric's samples in the subsample and
    in the group (:func:`~saecli.report.sampling.rescale`: the m-out-of-n bootstrap). Up to the cap the
    resamples are those of the whole group, unchanged.
    """
    domain = group[0].domain if group else ALL
    rows = subsample(part["domain"].to_list(), cap, seed)
    if rows is None:
        return bootstrap_aurocs(pairs, part.height, bootstrap, group_rng(seed, domain))
    sub = _pairs(part[rows], metrics)
    values = bootstrap_aurocs(sub, int(rows.size), bootstrap, group_rng(seed, domain))
    return [rescale(v, r.auroc, auroc(h, f), int(h.size), r.n) for v, r, (h, f, _) in zip(values, group, sub, strict=True)]


def _row(metric: Metric, domain: str, h: np.ndarray, f: np.ndarray, ok: np.ndarray) -> Detection:
    point = auroc(h, f)
    lo, hi = auroc_interval(point, h.size, f.size)
    wins = win_rate(h, f)
    win_lo, win_hi = wilson_interval(wins, h.size)
    mean, sd = paired_effect(h, f)
    return Detection(
        metric=metric.name, layer=metric.layer, domain=domain, n=int(ok.sum()), auroc=point, ci_low=lo, ci_high=hi,
        direction=direction(point), fact_mean=float(f.mean()) if f.size else math.nan,
        hall_mean=float(h.mean()) if h.size else math.nan, mean_diff=mean, sd_diff=sd, wilcoxon_p=wilcoxon_p(h, f),
        family=metric.family, win_rate=wins, win_low=win_lo, win_high=win_hi,
    )  # fmt: skip


def _versus_baseline(group: list[Detection], resampled: list[np.ndarray]) -> list[Detection]:
    """Each non-baseline row with the paired bootstrap of (its oriented AUROC − the best baseline's):
    both oriented as ranked on the whole data (the direction is not re-chosen per resample), the
    difference taken resample by resample, its percentile 95% interval; it beats the baseline when
    the interval lies above 0."""
    candidates = [i for i, r in enumerate(group) if r.family == BASELINE and math.isfinite(r.auroc)]
    b = min(candidates, key=lambda i: (-group[i].separation, group[i].metric))
    base = _orient(resampled[b], group[b].auroc)
    out = []
    for r, values in zip(group, resampled, strict=True):
        if r.family == BASELINE or values.size == 0 or not math.isfinite(r.auroc):
            out.append(r)
            continue
        lo, hi = percentile_interval(_orient(values, r.auroc) - base)
        out.append(
            replace(r, vs_baseline=r.oriented - group[b].oriented, vs_baseline_low=lo, vs_baseline_high=hi, beats_baseline=lo > 0)
        )
    return out


def _orient(values: np.ndarray, point: float) -> np.ndarray:
    return values if point >= 0.5 else 1.0 - values


def adjust(rows: Sequence[Detection]) -> list[Detection]:
    """The rows with the Benjamini-Hochberg q of their Wilcoxon p over all of them, and ``significant``."""
    q = bh_qvalues([r.wilcoxon_p for r in rows])
    return [replace(r, q=float(v), significant=bool(v < ALPHA)) for r, v in zip(rows, q, strict=True)]


def best_metrics(
    frame: pl.DataFrame, metrics: Sequence[Metric], *, permutations: int, seed: int = 0, steps: Steps | None = None
) -> list[Best]:
    """The family-wise verdict on the best metric of each group (domains, then all).

    The best is the metric with the largest |AUROC − 0.5| (its direction chosen on the same data).
    Its p is calibrated against the permutation null of the MAXIMUM of |AUROC − 0.5| over all
    ``metrics``, each permutation swapping fact and hallucination within each pair with probability ½
    (the same swaps for every metric: :func:`~saecli.report.stats.flip_null_max`), so choosing the best
    of many is paid for. Probe scores are taken as they are (the probes are not refitted per
    permutation). None without permutations. ``steps``: one step per group (:func:`report_groups`)
    when there are permutations.
    """
    if not permutations:
        return []
    steps = steps or Steps()
    out = []
    for domain, part in _groups(frame):
        steps.start(f"family-wise test: {domain} ({permutations} permutations)")
        pairs = _pairs_of(part, metrics, RESAMPLE_SAMPLES)
        seps = [abs(auroc(h, f) - 0.5) if h.size else -1.0 for h, f, _ in pairs]
        if not pairs or max(seps) < 0:
            continue
        j = min(range(len(metrics)), key=lambda i: (-seps[i], metrics[i].name))
        null = flip_null_max(pairs, part.height, permutations, group_rng(seed, f"flip:{domain}"))
        out.append(
            Best(
                domain=domain,
                metric=metrics[j].name,
                auroc=auroc(*pairs[j][:2]),
                separation=seps[j],
                p_family=permutation_p(seps[j], null),
                null_q95=float(np.percentile(null, 95)),
                permutations=permutations,
                metrics=sum(1 for s in seps if s >= 0),
            )  # fmt: skip
        )
    return out
