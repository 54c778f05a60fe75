"""The texts a run kept (``samples.parquet``) as the report needs them, without a Python object per sample:

* the probes' fold groups (:func:`text_groups_of_run`): every sample's texts hashed a row group at a
  time by polars, the groups found from the hashes (:func:`~saecli.report.folds.hashed_text_groups`);
* the excerpts of a few samples (:func:`excerpts_of`), e.g. the top samples of features.csv: only
  their rows are kept from each row group.

Memory holds the ids and three 8-byte hashes per sample, not the texts (about 1.5 KB per sample as
:class:`saecli.data.Sample` objects on the built-in benchmark).

Boundary: reads ``samples.parquet`` (pyarrow, through a handle: the path is literal) and nothing else;
computes no statistic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.errors import SaecliError
from saecli.io import METRICS_FILE, SAMPLE_COLUMNS, SAMPLES_FILE
from saecli.report.features import sample_excerpt
from saecli.report.folds import hashed_text_groups

HASHED = ("prompt", "fact_text", "hall_text")
"""The texts a run reads of each sample, hashed for the fold groups (as :func:`~saecli.report.folds.sample_groups`)."""
BATCH_ROWS = 65_536
"""Rows of samples.parquet read at once (the size of the row groups the run writes)."""


def _hint() -> str:
    return f"rerun `saecli run`, or move {SAMPLES_FILE} away to report without the texts"


def _batches(path: Path, columns: Iterable[str]) -> Iterator[pl.DataFrame]:
    """``columns`` of samples.parquet, :data:`BATCH_ROWS` rows at a time (a one-line SaecliError for a broken file)."""
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [c for c in SAMPLE_COLUMNS if c not in names]
            if missing:
                raise SaecliError(f"{path} lacks the column {missing[0]!r}", hint=_hint())
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
                yield pl.from_arrow(batch).cast(pl.String)  # type: ignore[union-attr]
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:  # pyarrow's errors are ValueErrors or OSErrors
        raise SaecliError(f"cannot read {path}: {exc}".splitlines()[0], hint=_hint()) from None


def _hash(text: pl.Expr) -> pl.Expr:
    """The 64-bit hash of a text stripped of outer whitespace; null for a missing or empty one (not a shared text)."""
    stripped = text.str.strip_chars()
    return pl.when(stripped.str.len_bytes() > 0).then(stripped.hash(seed=0))


def text_hashes(path: Path) -> pl.DataFrame:
    """``sample_id`` and the hash of each of :data:`HASHED` per row of samples.parquet, in the file's order."""
    prompt = pl.col("prompt")
    exprs = {
        "prompt": _hash(prompt),
        "fact_text": _hash(pl.concat_str([prompt, pl.lit(" "), pl.col("fact")])),
        "hall_text": _hash(pl.concat_str([prompt, pl.lit(" "), pl.col("hallucination")])),
    }
    parts = [
        batch.select(pl.col("sample_id"), *(e.alias(k) for k, e in exprs.items()))
        for batch in _batches(path, ("sample_id", "prompt", "fact", "hallucination"))
    ]
    schema = {"sample_id": pl.String(), **dict.fromkeys(HASHED, pl.UInt64())}
    return pl.concat(parts) if parts else pl.DataFrame(schema=schema)


def text_groups_of_run(run_dir: Path, frame: pl.DataFrame) -> np.ndarray:
    """The fold group of each sample of ``frame`` (its row order) from the run's samples.parquet:
    :func:`~saecli.report.folds.sample_groups` of the kept samples, computed from hashes of their texts.
    A file that lacks a sample of the table, or holds one twice, is an error (with the way around it)."""
    path = Path(run_dir) / SAMPLES_FILE
    hashes = text_hashes(path)
    if hashes["sample_id"].n_unique() != hashes.height:
        raise SaecliError(f"{path} does not match {METRICS_FILE}: it holds a sample id twice", hint=_hint())
    joined = (
        frame.select(pl.col("sample_id").cast(pl.String))
        .with_row_index("_row")
        .join(hashes.with_columns(pl.lit(True).alias("_kept")), on="sample_id", how="left")
        .sort("_row")
    )
    absent = joined.filter(pl.col("_kept").is_null())
    if absent.height:
        raise SaecliError(f"{path} does not match {METRICS_FILE}: it holds no row for sample {absent['sample_id'][0]!r}",
                          hint=_hint())  # fmt: skip
    columns = [joined[c] for c in HASHED]  # each as uint64 (a frame's to_numpy could widen to float64, losing bits)
    values = np.stack([c.fill_null(0).to_numpy() for c in columns], axis=1).astype(np.uint64)
    present = np.stack([c.is_not_null().to_numpy() for c in columns], axis=1)
    return hashed_text_groups(values, present)


def rows_of(run_dir: Path, ids: Iterable[str], columns: Sequence[str] = SAMPLE_COLUMNS) -> Iterator[dict[str, Any]]:
    """The rows (``columns``, as text) of each of ``ids`` the run's samples.parquet holds, read a row
    group at a time and only those rows kept (a one-line SaecliError for a broken file)."""
    wanted = pl.Series(sorted(set(ids)), dtype=pl.String)
    if wanted.is_empty():
        return
    for batch in _batches(Path(run_dir) / SAMPLES_FILE, columns):
        yield from batch.filter(pl.col("sample_id").is_in(wanted)).iter_rows(named=True)


def excerpts_of(run_dir: Path, ids: Iterable[str]) -> dict[str, str]:
    """:func:`~saecli.report.features.sample_excerpt` of each of ``ids`` the run's samples.parquet holds."""
    rows = rows_of(run_dir, ids, ("sample_id", "prompt", "fact", "hallucination"))
    return {r["sample_id"]: sample_excerpt(r["prompt"] or "", r["fact"] or "", r["hallucination"] or "") for r in rows}
