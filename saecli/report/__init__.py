"""The report of a finished run: which metric tells a hallucination from a fact, and how well.

``make_report(run_dir)`` reads ``metrics.parquet`` + ``manifest.json`` and writes, next to them:

* ``detection.csv``: for every numeric metric (each one with a ``_fact`` and a ``_hall`` column) and
  every domain (and ``all``), the AUROC of telling the hallucinated text from the factual one with its
  score 95% interval, the within-pair win rate with its Wilson interval, the paired effect (mean and
  SD of hall − fact), the Wilcoxon signed-rank p-value and its Benjamini-Hochberg q over every row
  (one family), and the paired bootstrap comparison with the best log-prob baseline; the report also
  holds the family-wise (sign-flip permutation) verdict on the best metric of each group;
* ``dashboard.png``: the five tests at a glance plus the detection ranking;
* ``summary.md``: the top metrics, the per-domain table, and the figure;
* ``report.html``: one self-contained page to explore all of it in a browser (:mod:`.html`).

A run with the log-probability baseline columns (``logprob_{sum,mean}_{fact,hall}``) ranks them with
the metrics. A run with ``residuals.safetensors`` also gets probes (:mod:`.probes`: logistic
regression on the residual stream and on the SAE features per layer, cross-validated with folds
grouped by sample, and trained on all domains but one to test on that one) whose out-of-fold scores
join the same ranking, and the SAE features that differ most (:mod:`.features`), each with the samples
it differs most on and, from the run's ``samples.parquet`` (older runs have none), their texts:

* ``probes.csv``, ``generalisation.csv``, ``features.csv``.

Boundary: this module is the orchestration (read and check the run, try the output folder, compute,
write each file atomically) and the public face of the package; the work lives in

* :mod:`.stats`: the statistics, pure functions on numpy arrays;
* :mod:`.detection`: the detection table of a run's frame, :class:`Report` and its option checks;
* :mod:`.summary`: summary.md as text;
* :mod:`.dashboard`: dashboard.png (matplotlib, imported only there and only when drawing);
* :mod:`.html`: report.html (the page's data from the same objects as the CSVs; plotly.js inlined);
* :mod:`.probes`, :mod:`.features`: the probes and the feature ranking (scikit-learn, scipy.sparse).

The bootstrap's mechanics (``BOOTSTRAP_BLOCK``, ``bootstrap_weights``, …) are not re-exported here:
import or patch them in :mod:`.stats`, where they are used. Nothing here prints: it logs and returns a
:class:`Report`. scipy and matplotlib are imported inside the functions that need them, so importing
saecli (and ``saecli --help``) stays fast.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from saecli.errors import SaecliError
from saecli.io import (
    METRICS_FILE,
    RESIDUALS_FILE,
    SAMPLE_COLUMNS,
    SAMPLES_FILE,
    atomic_write,
    finished_run,
    probe_write,
    read_parquet,
    verify_file,
)
from saecli.report.dashboard import FACT_COLOR, HALL_COLOR, SCATTER_POINTS, draw_dashboard
from saecli.report.detection import (
    ALL,
    ALPHA,
    FOLDS_DEFAULT,
    MAX_BOOTSTRAP,
    PROBE,
    TOP_DEFAULT,
    Best,
    Detection,
    Metric,
    Report,
    best_metrics,
    check_options,
    detect,
    detect_metrics,
    numeric_metrics,
    report_groups,
    run_metrics,
)
from saecli.report.features import FeatureRow
from saecli.report.folds import sample_groups
from saecli.report.probes import Generalisation, ProbeRow, probe_rows, run_probes, scores_frame
from saecli.report.probing import probe_and_rank
from saecli.report.progress import ReportProgress, Steps
from saecli.report.runtable import RunTable
from saecli.report.sampling import PROBE_SAMPLES, RESAMPLE_SAMPLES, sampled_note
from saecli.report.stats import (
    auroc,
    auroc_interval,
    bh_qvalues,
    direction,
    paired_effect,
    percentile_interval,
    weighted_auroc,
    wilcoxon_p,
    wilson_interval,
    win_rate,
)
from saecli.report.summary import (
    DASHBOARD_FILE,
    DETECTION_FILE,
    FEATURES_FILE,
    GENERALISATION_FILE,
    HTML_FILE,
    PROBES_FILE,
    SUMMARY_FILE,
    summary_markdown,
)
from saecli.report.texts import excerpts_of, rows_of, text_groups_of_run
from saecli.residuals import Residuals, read_residual_blocks, read_residuals

__all__ = [
    "ALL", "ALPHA", "Best", "DASHBOARD_FILE", "DETECTION_FILE", "HTML_FILE", "FACT_COLOR", "FEATURES_FILE", "FOLDS_DEFAULT", "GENERALISATION_FILE",
    "HALL_COLOR", "MAX_BOOTSTRAP", "PROBES_FILE", "PROBE_SAMPLES", "RESAMPLE_SAMPLES", "SUMMARY_FILE", "TOP_DEFAULT",
    "Detection", "Metric", "Report", "auroc", "auroc_interval", "bh_qvalues", "best_metrics", "check_options", "check_writable", "detect", "direction", "draw_dashboard",
    "load_residuals", "load_run", "load_texts", "make_report", "numeric_metrics", "paired_effect", "percentile_interval", "summary_markdown",
    "weighted_auroc", "wilcoxon_p", "wilson_interval", "win_rate", "write_files",
]  # fmt: skip

log = logging.getLogger(__name__)


def _layers_of(frame: pl.DataFrame, manifest: dict[str, Any]) -> list[int]:
    layers = manifest.get("layers")
    if not layers:  # an older or hand-written manifest: the columns say which layers there are
        layers = sorted({int(m.group(1)) for c in frame.columns if (m := re.fullmatch(r"l(\d+)_fact_l0_norm", c))})
    return [int(layer) for layer in layers]


def load_run(run_dir: Path) -> tuple[RunTable, dict[str, Any], list[int]]:
    """A run's table (read a column at a time as the report needs it: :class:`~.runtable.RunTable`),
    manifest and layers, checked for the columns the report needs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SaecliError(f"{run_dir} is not a folder", hint="give the folder a `saecli run` wrote (it holds metrics.parquet)")
    try:
        path, manifest = finished_run(run_dir)
        frame = RunTable(path)
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
        raise SaecliError(
            f"{run_dir / METRICS_FILE} lacks the columns {shown}",
            hint="was it written by another saecli version? rerun `saecli run`",
        )
    if frame.height == 0:
        raise SaecliError(f"{run_dir / METRICS_FILE} has no samples")
    return frame, manifest, layers


def load_residuals(
    run_dir: Path, frame: pl.DataFrame, manifest: dict[str, Any] | None = None, *, rows: Any = None,
    keys: Sequence[str] | None = None,
) -> Residuals | None:  # fmt: skip
    """The run's residuals, rows in ``frame``'s order, or None for a run without them. A file that
    is unreadable, is not the one the run recorded in its ``manifest``, or lacks a sample of the
    table is an error (with the way to report without it).

    ``rows`` (row numbers of ``frame``) and ``keys`` (:func:`~saecli.residuals.read_residuals`: e.g.
    ``features.l2_fact``; ``()``: the ids and layers alone) read only part of the file: the rows in
    that order, the arrays named. Without either the whole file is read, as before."""
    path = Path(run_dir) / RESIDUALS_FILE
    if not path.exists():
        return None
    if manifest is not None:
        verify_file(Path(run_dir), manifest, RESIDUALS_FILE)
    if rows is not None or keys is not None:
        return _load_part(path, frame, manifest, rows, keys)
    residuals = read_residuals(path)
    layers = manifest.get("layers") if manifest is not None else None
    if layers and residuals.layers != layers:
        raise SaecliError(
            f"{path} holds layers {residuals.layers}, the run has {layers}",
            hint=f"rerun `saecli run`, or move {RESIDUALS_FILE} away to report without probes",
        )
    if "sample_id" not in frame.columns:
        raise SaecliError(f"{Path(run_dir) / METRICS_FILE} has no sample_id column to match {RESIDUALS_FILE} with")
    try:
        return residuals.select(frame["sample_id"].cast(pl.String).to_list())
    except SaecliError as exc:
        raise SaecliError(
            f"{path} does not match {METRICS_FILE}: {exc.message}",
            hint=f"rerun `saecli run`, or move {RESIDUALS_FILE} away to report without probes",
        ) from None


def _load_part(path: Path, frame: pl.DataFrame, manifest: dict[str, Any] | None, rows: Any, keys: Any) -> Residuals:
    """:func:`load_residuals` of some rows and arrays: the file's ids and layers checked as for the whole
    file, then only those read (file rows found by sample id)."""
    return read_residuals(path, keys=keys, rows=_file_rows(path, frame, manifest, rows))


class RunResiduals:
    """The run's residuals read a part at a time, rows in ``frame``'s order: the file rows of the table's
    samples found once (by id, :func:`_file_rows`), then each read takes only what it asks for.

    ``load(rows=…, keys=…)`` is :func:`load_residuals` of the run (no ``rows`` and no ``keys``: the
    whole file, as it reads it); ``blocks(keys, block)`` the arrays ``keys`` of every row, ``block`` rows
    at a time (:func:`~saecli.residuals.read_residual_blocks`): one block in memory, not the run."""

    def __init__(self, run_dir: Path, frame: pl.DataFrame) -> None:
        self.run_dir, self.frame, self.path = Path(run_dir), frame, Path(run_dir) / RESIDUALS_FILE
        self._rows: Any = None

    def file_rows(self) -> Any:
        import numpy as np

        if self._rows is None:
            self._rows = np.asarray(_file_rows(self.path, self.frame, None, None), dtype=np.int64)
        return self._rows

    def __call__(self, *, rows: Any = None, keys: Sequence[str] | None = None) -> Residuals | None:
        import numpy as np

        if rows is None and keys is None:
            return load_residuals(self.run_dir, self.frame)
        picked = self.file_rows() if rows is None else self.file_rows()[np.asarray(rows, dtype=np.int64)]
        return read_residuals(self.path, keys=keys, rows=picked)

    def blocks(self, keys: Sequence[str], block: int) -> Iterator[Residuals]:
        return read_residual_blocks(self.path, keys, self.file_rows(), block)


def _file_rows(path: Path, frame: pl.DataFrame, manifest: dict[str, Any] | None, rows: Any) -> list[int]:
    """The file rows of ``frame``'s rows ``rows`` (None: all), found by sample id, after checking the
    file's layers against the run's (a SaecliError with the way to report without the file)."""
    header = read_residuals(path, keys=())
    layers = manifest.get("layers") if manifest is not None else None
    hint = f"rerun `saecli run`, or move {RESIDUALS_FILE} away to report without probes"
    if layers and header.layers != layers:
        raise SaecliError(f"{path} holds layers {header.layers}, the run has {layers}", hint=hint)
    if "sample_id" not in frame.columns:
        raise SaecliError(f"{path.parent / METRICS_FILE} has no sample_id column to match {RESIDUALS_FILE} with")
    # A join, not a dict of Python strings: a million ids are matched in a few hundred MB less.
    table = pl.DataFrame({"sample_id": pl.Series(header.sample_ids, dtype=pl.String)}).with_row_index("_file")
    del header
    wanted = frame.select(pl.col("sample_id").cast(pl.String))
    if rows is not None:
        wanted = wanted[[int(i) for i in rows]]
    found = wanted.join(table, on="sample_id", how="left", maintain_order="left")
    missing = found.filter(pl.col("_file").is_null())["sample_id"].to_list()
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SaecliError(f"{path} does not match {METRICS_FILE}: the residuals hold no row for sample ids {shown}", hint=hint)
    return found["_file"].to_list()


def load_texts(run_dir: Path, frame: pl.DataFrame, manifest: dict[str, Any] | None = None) -> list[Any] | None:
    """The run's samples (:class:`saecli.data.Sample`) from its samples.parquet, in ``frame``'s row
    order, or None for a run without one (runs before it was kept). A file that is unreadable, is not
    the one the run recorded, or lacks a sample of the table is an error (with the way around it)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.exists():
        return None
    if manifest is not None:
        verify_file(Path(run_dir), manifest, SAMPLES_FILE)
    hint = f"rerun `saecli run`, or move {SAMPLES_FILE} away to report without the texts"
    try:
        texts = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise SaecliError(f"cannot read {path}: {exc}".splitlines()[0], hint=hint) from None
    missing = [c for c in SAMPLE_COLUMNS if c not in texts.columns]
    if missing:
        raise SaecliError(f"{path} lacks the column {missing[0]!r}", hint=hint)
    by_id = {row["sample_id"]: row for row in texts.select(SAMPLE_COLUMNS).cast(pl.String).iter_rows(named=True)}
    ids = frame["sample_id"].cast(pl.String).to_list()
    absent = [sid for sid in ids if sid not in by_id]
    if absent or len(by_id) != texts.height:
        problem = f"no row for sample {absent[0]!r}" if absent else "a sample id twice"
        raise SaecliError(f"{path} does not match {METRICS_FILE}: it holds {problem}", hint=hint)
    try:
        return [_sample(by_id[sid]) for sid in ids]
    except SaecliError as exc:
        raise SaecliError(f"{path}: {exc.message}", hint=hint) from None


def _sample(row: dict[str, Any]) -> Any:
    """A row of samples.parquet (:data:`SAMPLE_COLUMNS`, as text) as a :class:`saecli.data.Sample`."""
    from saecli.data import Sample

    return Sample(id=row["sample_id"], domain=row["domain"], prompt=row["prompt"], fact=row["fact"],
                  hallucination=row["hallucination"], topic=row["topic"])  # fmt: skip


def make_report(
    run_dir: Path, *, bootstrap: int = 1000, seed: int = 0, out_dir: Path | None = None, top: int = TOP_DEFAULT,
    folds: int = FOLDS_DEFAULT, progress: ReportProgress | None = None, probe_samples: int = PROBE_SAMPLES,
    resample_samples: int = RESAMPLE_SAMPLES,
) -> Report:  # fmt: skip
    """Compute the detection table of a finished run and write detection.csv, dashboard.png and
    summary.md into the run folder (or ``out_dir``); for a run with residuals also the probes,
    their out-of-domain generalisation and the feature ranking (probes.csv, generalisation.csv,
    features.csv), the probes joining the detection ranking.

    The options are checked, the run (and its residuals' ids and layers: their arrays are read a part
    at a time as each step needs them) read and the output folder tried with a real write before
    anything is computed; each file is written atomically (whole or absent). ``progress``
    is told of each step as it starts (:data:`~saecli.report.progress.ReportProgress`).

    A run of more samples than ``probe_samples`` fits its probes on a seeded, domain-stratified
    subsample of that many; a group of more than ``resample_samples`` draws its paired bootstrap and
    the SAE features' null from that many, rescaled to the group (:mod:`.sampling`); the notes,
    summary.md and ``Report.subsampled`` say which and how many. At most the caps nothing changes.
    """
    check_options(bootstrap=bootstrap, seed=seed, top=top, folds=folds, probe_samples=probe_samples,
                  resample_samples=resample_samples)  # fmt: skip
    run_dir = Path(run_dir)
    frame, manifest, layers = load_run(run_dir)
    residuals = load_residuals(run_dir, frame, manifest, keys=())  # the ids and layers checked; arrays read when used
    if residuals is not None:  # checked: its layers are all the report keeps of it (a million ids are ~0.1 GB)
        residuals = Residuals(layers=residuals.layers, sample_ids=[], d_sae=residuals.d_sae, run=residuals.run)
    texts = _kept_texts(run_dir, manifest) if residuals is not None else False  # read for the probes and features only
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_writable(out_dir, run_dir)
    preset = manifest.get("preset")
    report = Report(
        run_dir=run_dir,
        out_dir=out_dir,
        preset=str(preset.get("name", "?") if isinstance(preset, dict) else preset or "?"),
        samples=frame.height,
        layers=layers,
        domains=frame.domain_counts(),
        data_source=str(manifest.get("data_source") or (manifest.get("config") or {}).get("data") or "?"),
        bootstrap=bootstrap,
        seed=seed,
        rows=[],
        folds=folds,
        trained_on_benchmark=bool(isinstance(preset, dict) and preset.get("trained_on_benchmark") is True),
        probe_samples=probe_samples,
        resample_samples=resample_samples,
    )
    log.info(
        "report of %s: %d samples, %d metrics, %d bootstrap resamples",
        run_dir,
        frame.height,
        len(numeric_metrics(layers)),
        bootstrap,
    )
    table, metrics = frame, run_metrics(frame, layers)
    report.residuals = residuals is not None
    steps = Steps(progress)  # the detection table per group, the family-wise test per group (with permutations), the files
    steps.plan(report_groups(frame) * (2 if bootstrap else 1) + len(_writers(report, frame, top)))
    fits: list[Any] = []
    if residuals is None:
        report.notes.append(f"No {RESIDUALS_FILE} in the run: no probes, out-of-domain test or SAE feature ranking.")
    else:
        load = RunResiduals(run_dir, frame)
        groups = _text_groups(frame, manifest, report, texts)
        excerpts = functools.partial(excerpts_of, run_dir) if texts else None
        fits = probe_and_rank(
            report, frame, residuals, manifest, excerpts, steps, load, groups, fit=run_probes, blocks=load.blocks
        )
        if fits:  # the probes' out-of-fold scores join the metrics: one ranking, one family of tests
            scores, probe_metrics = scores_frame(fits, frame["domain"].to_list())
            table, metrics = frame.hstack(scores.drop("domain")), metrics + probe_metrics
    if bootstrap and frame.height > resample_samples and any(m.family == "baseline" for m in metrics):
        report.subsampled["bootstrap"] = resample_samples
        report.notes.append(sampled_note("The paired bootstrap against the baseline (vs_baseline), per group", resample_samples,
                                         frame.height) + "; its spread rescaled by √(m/n) to the group's")  # fmt: skip
    if frame.height > SCATTER_POINTS:  # drawing a million points takes seconds and covers the panel
        report.subsampled["dashboard_scatter"] = SCATTER_POINTS
        report.notes.append(sampled_note("The centroid-drift scatter of dashboard.png", SCATTER_POINTS, frame.height))
    report.rows = detect_metrics(table, metrics, bootstrap=bootstrap, seed=seed, steps=steps, resample_samples=resample_samples)
    report.best = best_metrics(table, metrics, permutations=bootstrap, seed=seed, steps=steps)
    report.baselines = any(r.family == "baseline" for r in report.rows)  # summary.md says so when not
    if fits:
        report.probes = probe_rows(fits, [r for r in report.rows if r.family == PROBE])
    write_files(report, frame, top=top, steps=steps)
    steps.finish()
    log.info("wrote %s", ", ".join(str(p) for p in report.files.values()))
    return report


def _kept_texts(run_dir: Path, manifest: dict[str, Any]) -> bool:
    """Whether the run kept its texts (samples.parquet), checked to be the file it recorded."""
    if not (Path(run_dir) / SAMPLES_FILE).exists():
        return False
    verify_file(Path(run_dir), manifest, SAMPLES_FILE)
    return True


def _text_groups(frame: pl.DataFrame, manifest: dict[str, Any], report: Report, texts: bool) -> Any:
    """The probes' fold groups (samples that share a text stay in one fold), from the texts the run
    kept (``texts``: hashed a row group at a time, :func:`~saecli.report.texts.text_groups_of_run`) or,
    for a run that kept none, its data read again as the run read it; None (each sample its own group,
    said in the notes) when that data cannot be read any more or no longer holds the run's samples."""
    from saecli.data import load_samples

    if texts:
        return text_groups_of_run(report.run_dir, frame)
    config = manifest.get("config") or {}
    try:
        # A run that recorded no limit order predates it: its --limit took the first N samples.
        samples = load_samples(config.get("data"), domains=config.get("domains"), limit=config.get("limit"),
                               columns=config.get("columns"), limit_order=config.get("limit_order", "file"))  # fmt: skip
    except SaecliError as exc:
        report.notes.append(f"Probe folds: the run's data cannot be read again ({exc.message}); each sample is its own group.")
        return None
    by_id = {s.id: s for s in samples}
    ids = frame["sample_id"].to_list()
    if not all(i in by_id for i in ids):
        report.notes.append("Probe folds: the run's data no longer holds all its samples; each sample is its own group.")
        return None
    return sample_groups([by_id[i] for i in ids])


_POLARS_TYPES = {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String()}


def _table(rows: list[Any], cls: type) -> pl.DataFrame:
    """Dataclass rows as a frame with one column per field (typed, also when there are no rows)."""
    fields = dataclasses.fields(cls)
    schema = {f.name: _POLARS_TYPES[str(f.type)] for f in fields}
    return (
        pl.DataFrame([dataclasses.asdict(r) for r in rows], schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    )


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


def _full_precision(frame: pl.DataFrame) -> pl.DataFrame:
    """The table with every float written as Python's repr (shortest round-trip form, scientific
    notation for small values): a p of 3e-40 is kept, not rounded to 0.000000."""
    floats = [c for c, t in frame.schema.items() if t == pl.Float64]
    as_text = [pl.Series(c, [_repr(v) for v in frame[c].to_list()], dtype=pl.String) for c in floats]
    return frame.with_columns(as_text)


def _repr(value: float | None) -> str | None:
    return None if value is None else repr(value) if math.isfinite(value) else "NaN"


def _writers(report: Report, frame: pl.DataFrame, top: int) -> dict[str, tuple[str, Any]]:
    """The report's files (name and writer of each), by key."""
    writers = {
        "detection": (DETECTION_FILE, lambda p: _full_precision(report.frame()).write_csv(p)),
        "dashboard": (DASHBOARD_FILE, lambda p: draw_dashboard(frame, report, p)),
        "summary": (SUMMARY_FILE, lambda p: p.write_text(summary_markdown(report, top=top), encoding="utf-8")),
        "html": (HTML_FILE, lambda p: p.write_text(_html(report, frame), encoding="utf-8")),
    }
    if report.residuals:
        writers |= {
            "probes": (PROBES_FILE, lambda p: _table(report.probes, ProbeRow).write_csv(p, float_precision=6)),
            "generalisation": (
                GENERALISATION_FILE,
                lambda p: _table(report.generalisation, Generalisation).write_csv(p, float_precision=6),
            ),
            "features": (FEATURES_FILE, lambda p: _table(report.features, FeatureRow).write_csv(p, float_precision=6)),
        }
    return writers


def _html(report: Report, frame: pl.DataFrame) -> str:
    """report.html, with the texts and the SAE activations of the samples it embeds read for those alone."""
    from saecli.report.html import html_page, page_data
    from saecli.residuals import residual_names

    run_dir = report.run_dir
    residuals = run_dir / RESIDUALS_FILE
    names = residual_names(residuals) if report.residuals and residuals.exists() else []
    load = functools.partial(load_residuals, run_dir, frame) if names else None
    data = page_data(report, frame, load=load, names=names, read_texts=functools.partial(read_texts, run_dir))
    return html_page(data)


def read_texts(run_dir: Path, ids: Sequence[str]) -> dict[str, Any] | None:
    """Sample id → :class:`saecli.data.Sample` for ``ids`` alone, from the run's samples.parquet (only
    those rows are kept: a large run's page embeds a subset); None for a run that kept no texts or
    whose file cannot be read (the page then shows ids and numbers only)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.exists():
        return None
    try:
        return {r["sample_id"]: _sample(r) for r in rows_of(run_dir, ids)}
    except SaecliError as exc:
        log.warning("report.html without texts: cannot read %s (%s)", path, exc.message)
        return None


def write_files(report: Report, frame: pl.DataFrame, *, top: int = TOP_DEFAULT, steps: Steps | None = None) -> None:
    """detection.csv, dashboard.png and summary.md (and, with residuals, probes.csv,
    generalisation.csv and features.csv) into ``report.out_dir``, each atomically; one step each.

    A folder that fails on the way (a full disk, a mount gone read-only) is one error naming the file,
    the files already written (kept, whole) and the fix; no file is ever left half-written.
    """
    steps = steps or Steps()
    for key, (name, write) in _writers(report, frame, top).items():
        steps.start(f"writing {name}")
        path = report.out_dir / name
        try:
            atomic_write(path, write)
        except OSError as exc:
            kept = f"; {', '.join(p.name for p in report.files.values())} written and kept" if report.files else ""
            raise SaecliError(
                f"cannot write {path}: {_reason(exc)}{kept}", hint=_elsewhere(report.run_dir, exc), exit_code=1
            ) from None
        report.files[key] = path
