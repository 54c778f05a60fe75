"""A run's ``metrics.parquet`` as the report reads it: one column at a time, from the file.

A million-sample table is ~0.6 GB in memory (61 columns), and reading it whole took ~1 GB; the
report never needs it whole. It computes per metric (the fact and the hall column of one metric,
8 MB each at a million), per group (one domain's rows of those columns), and per subsample (some
rows). :class:`RunTable` gives each of these as the report's code asks a polars frame for them —
``table[column]`` (a Series), ``table[rows]`` (those rows), ``table.select(...)``, ``height``,
``columns`` — while holding in memory only the ids and domains (and the probe scores the report
adds, :meth:`RunTable.hstack`). Each column is read from the file when asked for (a scan of one
column, tens of milliseconds at a million rows), the last few kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

KEPT = ("sample_id", "domain")
"""Read once and held: every group and every subsample needs them."""
CACHED = 8
"""Columns kept after reading: a metric's fact and hall column, and the next metric's."""


class RunTable:
    """The table of ``path`` (a Parquet file, its path literal), read a column at a time; ``extra``:
    columns held in memory beside it (the report's probe scores), same height."""

    def __init__(self, path: Path, *, extra: pl.DataFrame | None = None, _kept: pl.DataFrame | None = None,
                 _schema: pl.Schema | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self._schema = _schema if _schema is not None else self._scan().collect_schema()
        if _kept is None:
            kept = [c for c in KEPT if c in self._schema]
            _kept = self._scan().select(kept).collect()
            if "domain" in _kept.columns:
                _kept = _kept.with_columns(pl.col("domain").fill_null("(none)"))
        self._kept = _kept
        self.extra = extra if extra is not None else pl.DataFrame()
        self._cache: OrderedDict[str, pl.Series] = OrderedDict()

    def _scan(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.path, glob=False)

    @property
    def height(self) -> int:
        return self._kept.height

    def __len__(self) -> int:
        return self.height

    @property
    def columns(self) -> list[str]:
        return list(self._schema) + [c for c in self.extra.columns if c not in self._schema]

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({**self._schema, **self.extra.schema})

    def column(self, name: str) -> pl.Series:
        """One column, read from the file (or held)."""
        if name in self._kept.columns:
            return self._kept[name]
        if name in self.extra.columns:
            return self.extra[name]
        if name not in self._schema:
            raise pl.exceptions.ColumnNotFoundError(name)
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        series = self._scan().select(name).collect()[name]
        self._cache[name] = series
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return series

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.column(key)
        return self.rows(key)

    def rows(self, rows: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """The rows ``rows`` (in that order), every column: a subsample, not the run."""
        index = pl.Series(np.asarray(rows, dtype=np.int64))
        return pl.DataFrame([self.column(c).gather(index) for c in self.columns])

    def select(self, *exprs: Any) -> pl.DataFrame:
        """``DataFrame.select`` over the columns the expressions name, read alone."""
        flat = [e for x in exprs for e in (x if isinstance(x, list | tuple) else [x])]
        wanted = {}
        for e in flat:
            for name in [e] if isinstance(e, str) else e.meta.root_names():
                wanted.setdefault(name, self.column(name))
        return pl.DataFrame(list(wanted.values())).select(flat)

    def hstack(self, other: pl.DataFrame) -> RunTable:
        """This table with ``other``'s columns added (held in memory)."""
        extra = other if self.extra.width == 0 else self.extra.hstack(other)
        return RunTable(self.path, extra=extra, _kept=self._kept, _schema=self._schema)

    def domain_counts(self) -> dict[str, int]:
        """Samples per domain, in first-seen order."""
        counts = self._kept.group_by("domain", maintain_order=True).len()
        return dict(zip(counts["domain"].to_list(), counts["len"].to_list(), strict=True))
