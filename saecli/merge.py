"""Parts merged into one file (the run's ``metrics.parquet`` and ``residuals.safetensors``, or a
larger part when the parts are compacted, :func:`saecli.parts.compact`) by streaming: memory bounded
by one *chunk* of :data:`MERGE_ROWS` rows, never the whole run.

The rows of all the parts, in input order, are cut into chunks of :data:`MERGE_ROWS` positions.
For each chunk, each part whose position range meets it gives the rows that fall in it: a part whose
rows are sorted by position (every merged or compacted one) gives a slice, read alone (Parquet
row groups, safetensors slices); a batch's part (a few rows, in the plan's order) is read whole
and filtered. The chunk's rows, sorted by position, are then written:

* the table as one Parquet row group (``pyarrow.parquet.ParquetWriter``; polars cannot append to a
  Parquet file);
* the residuals into a safetensors file whose header is computed first from the parts' headers (the
  rows and stored feature activations of each tensor), each chunk's block written at its offset in
  each tensor (dense rows; CSR ``indptr`` shifted by the activations before it, ``indices``, ``data``).

The batch plan (:func:`saecli.plan.planned_order`) sorts samples by length within windows of
:data:`saecli.plan.PLAN_WINDOW` samples only, so a batch's rows meet one or two chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from saecli.errors import SaecliError
from saecli.io import atomic_write, parquet_from_bytes, schema

if TYPE_CHECKING:
    from saecli.residuals import Residuals

log = logging.getLogger(__name__)

DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32}
MERGE_ROWS = 4096
"""Rows merged at once (for Gemma-2-2B's residuals, 4,096 rows are about 230 MB)."""


@dataclass
class Piece:
    """One part as the merge sees it: its table, its residuals (or None), its sample ids (its table's
    rows, in order) and the input position of each."""

    table: Path
    residuals: Path | None
    ids: pl.Series
    positions: np.ndarray

    @property
    def in_order(self) -> bool:
        """Rows sorted by position (a merged part): a chunk's rows are then one slice of it."""
        return bool(np.all(np.diff(self.positions) > 0))


def positions_of(
    part_ids: Sequence[pl.Series], sample_ids: Sequence[str], run_dir: Path, *, every: bool = True
) -> list[np.ndarray]:
    """The input position of every row of every part: one join over all ids (not a dict of a
    million Python strings). Refused when a part holds a sample not in the data, or a sample is held
    twice; with ``every``, also unless every sample is held."""
    index = pl.DataFrame({"sample_id": pl.Series(list(sample_ids), dtype=pl.String)}).with_row_index("position")
    sizes = [len(ids) for ids in part_ids]
    found = pl.DataFrame({"sample_id": pl.concat(list(part_ids)) if part_ids else pl.Series([], dtype=pl.String)})
    joined = found.join(index, on="sample_id", how="left", maintain_order="left")["position"]
    if joined.null_count() or joined.n_unique() != joined.len() or (every and joined.len() != index.height):
        raise SaecliError(f"{run_dir}: the part files hold a sample twice, or one not in the data", hint="start a new run",
                          exit_code=1)  # fmt: skip
    flat = joined.to_numpy().astype(np.int64)
    return list(np.split(flat, np.cumsum(sizes)[:-1])) if sizes else []


@dataclass
class _Take:
    """The rows of one piece that fall in a chunk: a slice ``[start, stop)`` of a piece in order, or
    the row numbers ``rows`` of a batch's piece."""

    piece: Piece
    start: int = 0
    stop: int = 0
    rows: np.ndarray | None = None

    @property
    def positions(self) -> np.ndarray:
        return self.piece.positions[self.start : self.stop] if self.rows is None else self.piece.positions[self.rows]


def chunks(pieces: Sequence[Piece], rows: int | None = None) -> Iterator[list[_Take]]:
    """The pieces' rows cut into chunks of ``rows`` (default :data:`MERGE_ROWS`) positions in input
    order; for each chunk, what each piece that meets it gives."""
    rows = rows or MERGE_ROWS
    spans = [(p, p.in_order, int(p.positions.min()), int(p.positions.max())) for p in pieces if p.positions.size]
    everything = np.sort(np.concatenate([p.positions for p, *_ in spans])) if spans else np.empty(0, dtype=np.int64)
    for first in range(0, everything.size, rows):
        low, high = everything[first], everything[min(first + rows, everything.size) - 1]
        takes = []
        for piece, in_order, lowest, highest in spans:
            if highest < low or lowest > high:
                continue
            if in_order:
                start, stop = np.searchsorted(piece.positions, low, "left"), np.searchsorted(piece.positions, high, "right")
                takes.append(_Take(piece, int(start), int(stop)))
            else:
                takes.append(_Take(piece, rows=np.flatnonzero((piece.positions >= low) & (piece.positions <= high))))
        yield [t for t in takes if t.positions.size]


def _ordered(takes: list[_Take]) -> np.ndarray:
    """The order that sorts a chunk's rows (its takes' rows, one after the other) by position."""
    return np.argsort(np.concatenate([t.positions for t in takes]), kind="stable")


def _read_table(take: _Take) -> pl.DataFrame:
    path = take.piece.table
    try:
        if take.rows is None:
            return pl.scan_parquet(path, glob=False).slice(take.start, take.stop - take.start).collect()
        return parquet_from_bytes(path.read_bytes())[0][take.rows]
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise SaecliError(
            f"cannot read {path}: {exc}".splitlines()[0], hint="run --resume again to redo it", exit_code=1
        ) from None


def chunk_tables(pieces: Sequence[Piece]) -> Iterator[pl.DataFrame]:
    """The pieces' table, a chunk at a time, rows in input order."""
    for takes in chunks(pieces):
        frame = pl.concat([_read_table(t) for t in takes])
        yield frame[_ordered(takes)]


def write_table_to(handle: Any, pieces: Sequence[Piece], layers: Sequence[int], metadata: dict[str, str] | None = None) -> int:
    """Write the pieces' tables as one Parquet file to the open binary ``handle``, a row group per
    chunk; the number of rows written."""
    import pyarrow.parquet as pq

    arrow_schema = pl.DataFrame(schema=schema(layers)).to_arrow().schema
    if metadata:
        arrow_schema = arrow_schema.with_metadata(metadata)
    rows = 0
    with pq.ParquetWriter(handle, arrow_schema) as writer:
        for frame in chunk_tables(pieces):
            writer.write_table(frame.to_arrow().cast(arrow_schema))
            rows += frame.height
    return rows


def write_table(pieces: Sequence[Piece], layers: Sequence[int], path: Path) -> int:
    """:func:`write_table_to` the file at exactly ``path``, atomically; the number of rows."""
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with open(tmp, "wb") as handle:
            rows = write_table_to(handle, pieces, layers)

    atomic_write(path, write)
    return rows


# -- residuals ------------------------------------------------------------------------------------
def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (no tensor is read)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size))


@dataclass
class _Layout:
    """The merged file's tensors: name → (dtype, shape, start offset in the data section)."""

    tensors: dict[str, tuple[str, list[int], int]]
    data_start: int


def _layout(pieces: Sequence[Piece], n: int, metadata: dict[str, str]) -> tuple[_Layout, bytes]:
    """Shapes of the merged tensors from the parts' headers: dense [n, d]; CSR indptr [n + 1],
    indices and data [Σ nnz]. Returns the layout and the header bytes (padded to 8 bytes)."""
    shapes: dict[str, tuple[str, list[int]]] = {}
    for piece in pieces:
        header = _header(piece.residuals)  # type: ignore[arg-type]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = info["dtype"], list(info["shape"])
            if name.endswith(".indptr"):
                shape = [n + 1]
            elif name.startswith("dense."):
                shape = [n, *shape[1:]]
            elif name in shapes:  # indices, data: their lengths add up
                shape = [shapes[name][1][0] + shape[0]]
            if name in shapes and (shapes[name][0] != dtype or shapes[name][1][1:] != shape[1:]):
                raise SaecliError(f"{piece.residuals}: its tensor {name} differs from the other parts'", hint="start a new run",
                                  exit_code=1)  # fmt: skip
            shapes[name] = (dtype, shape)
    tensors, offset, entries = {}, 0, {}
    for name in sorted(shapes):
        dtype, shape = shapes[name]
        size = int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
        tensors[name] = (dtype, shape, offset)
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    header = len(text).to_bytes(8, "little") + text
    return _Layout(tensors, len(header)), header


def _chunk_residuals(takes: list[_Take]) -> Residuals:
    """A chunk's residuals, rows in input order. A part's residual rows are keyed by id: they are
    matched to its table's rows by id, and a slice's ids must be its table's."""
    from saecli.residuals import Residuals, read_residuals

    blocks = []
    for take in takes:
        piece = take.piece
        if take.rows is None:
            block = read_residuals(piece.residuals, rows=range(take.start, take.stop))  # type: ignore[arg-type]
            wanted = piece.ids[take.start : take.stop].to_list()
            if block.sample_ids != wanted:
                raise SaecliError(f"{piece.residuals}: its rows are not its table's", hint="start a new run", exit_code=1)
        else:
            block = read_residuals(piece.residuals).select(piece.ids.gather(take.rows).to_list())  # type: ignore[arg-type]
        blocks.append(block)
    merged = Residuals.concat(blocks) if len(blocks) > 1 else blocks[0]
    return merged.select([merged.sample_ids[i] for i in _ordered(takes)])


def write_residuals_file(pieces: Sequence[Piece], sample_ids: Sequence[str], layers: Sequence[int], path: Path, *,
                         run: str = "", atomic: bool = True) -> None:  # fmt: skip
    """Write the pieces' residuals as one ``residuals.safetensors`` at ``path`` (atomically, or
    into the existing empty file ``path`` when not ``atomic``), rows in input order (``sample_ids``:
    the pieces' ids sorted by position), a chunk in memory at a time."""
    from saecli.residuals import RESIDUALS_SCHEMA

    first = _header(pieces[0].residuals)["__metadata__"]  # type: ignore[arg-type]
    metadata = {
        "format": "saecli-residuals",
        "schema": str(RESIDUALS_SCHEMA),
        "layers": json.dumps([int(layer) for layer in layers]),
        "sample_ids": json.dumps(list(sample_ids), ensure_ascii=False),
        "d_sae": first.get("d_sae", "{}"),
        "run": run,
    }
    layout, header = _layout(pieces, len(sample_ids), metadata)

    def write(tmp: Path) -> None:
        written = dict.fromkeys(layout.tensors, 0)  # bytes written so far into each tensor
        nnz: dict[str, int] = {}
        with open(tmp, "r+b") as handle:
            handle.write(header)
            handle.truncate(layout.data_start + sum(_nbytes(t) for t in layout.tensors.values()))
            for takes in chunks(pieces):
                block = _chunk_residuals(takes)
                for name, array in _tensors(block, nnz).items():
                    dtype, _, start = layout.tensors[name]
                    data = np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
                    handle.seek(layout.data_start + start + written[name])
                    handle.write(data)
                    written[name] += len(data)
        for name, tensor in layout.tensors.items():
            if written[name] != _nbytes(tensor):
                raise SaecliError(f"{path}: tensor {name} was not written whole", hint="start a new run", exit_code=1)

    if atomic:
        atomic_write(path, write)
    else:
        write(path)


def _nbytes(tensor: tuple[str, list[int], int]) -> int:
    dtype, shape, _ = tensor
    return int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize


def _tensors(block: Residuals, nnz: dict[str, int]) -> dict[str, np.ndarray]:
    """A group's block of every merged tensor. ``nnz`` holds, per CSR written to before, the
    activations written so far: the block's indptr is shifted by it and loses its leading entry
    (the previous block's last); the first block's keeps its 0. ``nnz`` is advanced."""
    import scipy.sparse as sp

    out: dict[str, np.ndarray] = {f"dense.{key}": array for key, array in block.dense.items()}
    for key, matrix in block.features.items():
        csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # arrays read from a file are read-only
        csr.sum_duplicates()
        csr.eliminate_zeros()
        name = f"features.{key}"
        indptr = csr.indptr.astype(np.int64) + nnz.get(name, 0)
        out[f"{name}.indptr"] = indptr[1:] if name in nnz else indptr
        nnz[name] = int(indptr[-1])
        out[f"{name}.indices"] = csr.indices
        out[f"{name}.data"] = csr.data
    return out
