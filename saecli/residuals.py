"""``residuals.safetensors``: the vectors each layer's SAE read, kept by a run with baselines for
the probes ``saecli report`` fits after it.

Belongs here: :class:`Residuals` (one row per sample: the dense residuals and the sparse SAE feature
activations, keyed by :func:`residual_key`) and its safetensors layout (:func:`write_residuals`,
:func:`read_residuals`).

Does not belong here: the names and places of run-folder files and atomic writes (``saecli.io``,
which this imports); the residuals of an unfinished run's parts (``saecli.parts``); computing the
vectors (``saecli.engine``); the probes (``saecli.report.probes``). numpy, scipy and safetensors only inside functions, so that importing
this (and the report) stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saecli.errors import SaecliError
from saecli.io import atomic_write

RESIDUALS_SCHEMA = 1
"""Version of the layout below, in the file's metadata (``schema``)."""
RESIDUAL_KINDS = ("fact", "hall")


def residual_key(layer: int, kind: str) -> str:
    """``l{layer}_{kind}``: the key of one layer's vectors of one kind of text, e.g. ``l5_hall``."""
    return f"l{layer}_{kind}"


@dataclass
class Residuals:
    """What each layer's SAE read, one row per sample (rows in ``sample_ids`` order).

    * ``dense[l{L}_{kind}]``: float32 [n, d_model], the residual at the text's last token that layer
      L's SAE encodes (kind ``fact`` or ``hall``);
    * ``features[l{L}_{kind}]``: ``scipy.sparse.csr_matrix`` float32 [n, d_sae[L]], the SAE feature
      activations f of the same vector (only f > 0 stored).

    Either dict may lack a layer (e.g. a run that kept only one of them), but a key it has must be
    one of ``layers`` × (fact, hall), and every array has one row per sample.

    On disk (``residuals.safetensors``, :func:`write_residuals`): a dense array is the tensor
    ``dense.l{L}_{kind}``; a CSR matrix is three tensors ``features.l{L}_{kind}.indptr`` (int64),
    ``.indices`` (int32) and ``.data`` (float32); the metadata holds ``format`` (``saecli-residuals``),
    ``schema``, and as JSON ``layers``, ``sample_ids`` and ``d_sae`` (layer → width).
    """

    layers: list[int]
    sample_ids: list[str]
    dense: dict[str, Any] = field(default_factory=dict)  # str → np.ndarray
    features: dict[str, Any] = field(default_factory=dict)  # str → scipy.sparse.csr_matrix
    d_sae: dict[int, int] = field(default_factory=dict)
    run: str = ""
    """The ``config_hash`` of the run that wrote the file (empty for residuals not bound to a run)."""

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    def check(self, source: str = "residuals") -> None:
        """Raise a SaecliError naming ``source`` when the arrays do not fit the ids and layers."""
        keys = {residual_key(layer, kind) for layer in self.layers for kind in RESIDUAL_KINDS}
        if len(set(self.sample_ids)) != len(self.sample_ids):
            raise SaecliError(f"{source}: duplicate sample ids")
        for name, table in (("dense", self.dense), ("features", self.features)):
            for key, array in table.items():
                if key not in keys:
                    raise SaecliError(f"{source}: unexpected {name} key {key!r} (layers {self.layers})")
                if len(array.shape) != 2 or array.shape[0] != self.n:
                    raise SaecliError(f"{source}: {name} {key} has shape {tuple(array.shape)}, expected {self.n} rows")
        for key, matrix in self.features.items():
            layer = int(key[1:].split("_", 1)[0])
            if layer not in self.d_sae:
                raise SaecliError(f"{source}: features {key} but no d_sae for layer {layer}")
            if matrix.shape[1] != self.d_sae[layer]:
                raise SaecliError(f"{source}: features {key} have {matrix.shape[1]} columns, d_sae is {self.d_sae[layer]}")

    @classmethod
    def concat(cls, parts: Sequence[Residuals]) -> Residuals:
        """The rows of ``parts`` one after the other (same layers, keys and widths; ids all distinct)."""
        import numpy as np
        import scipy.sparse as sp

        if not parts:
            raise SaecliError("no residuals to concatenate")
        first = parts[0]
        for part in parts[1:]:
            if part.layers != first.layers or set(part.dense) != set(first.dense) or set(part.features) != set(first.features):
                raise SaecliError("residual parts differ in layers or keys; they cannot be concatenated")
            if part.d_sae != first.d_sae:
                raise SaecliError(f"residual parts differ in SAE widths ({part.d_sae} vs {first.d_sae})")
        out = cls(
            layers=list(first.layers),
            sample_ids=[sid for part in parts for sid in part.sample_ids],
            dense={k: np.concatenate([p.dense[k] for p in parts], axis=0) for k in first.dense},
            features={k: sp.vstack([p.features[k] for p in parts], format="csr", dtype=np.float32) for k in first.features},
            d_sae=dict(first.d_sae),
        )
        out.check("concatenated residuals")
        return out

    def select(self, ids: Sequence[str]) -> Residuals:
        """The rows of ``ids``, in that order; a SaecliError naming the ids this holds no row of."""
        position = {sid: i for i, sid in enumerate(self.sample_ids)}
        missing = [sid for sid in ids if sid not in position]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise SaecliError(f"the residuals hold no row for sample ids {shown}")
        import numpy as np

        rows = np.fromiter((position[sid] for sid in ids), dtype=np.int64, count=len(ids))
        return Residuals(
            layers=list(self.layers),
            sample_ids=list(ids),
            dense={k: v[rows] for k, v in self.dense.items()},
            features={k: v[rows] for k, v in self.features.items()},
            d_sae=dict(self.d_sae),
            run=self.run,
        )


def residuals_bytes(residuals: Residuals) -> bytes:
    """The safetensors bytes of ``residuals`` (layout in :class:`Residuals`)."""
    import numpy as np
    import scipy.sparse as sp
    from safetensors.numpy import save

    residuals.check()
    tensors: dict[str, Any] = {}
    for key, array in residuals.dense.items():
        tensors[f"dense.{key}"] = np.ascontiguousarray(array, dtype=np.float32)
    for key, matrix in residuals.features.items():
        csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)  # arrays from Ray are read-only
        csr.sum_duplicates()
        csr.eliminate_zeros()
        tensors[f"features.{key}.indptr"] = np.ascontiguousarray(csr.indptr, dtype=np.int64)
        tensors[f"features.{key}.indices"] = np.ascontiguousarray(csr.indices, dtype=np.int32)
        tensors[f"features.{key}.data"] = np.ascontiguousarray(csr.data, dtype=np.float32)
    metadata = {
        "format": "saecli-residuals",
        "schema": str(RESIDUALS_SCHEMA),
        "layers": json.dumps([int(layer) for layer in residuals.layers]),
        "sample_ids": json.dumps(list(residuals.sample_ids), ensure_ascii=False),
        "d_sae": json.dumps({str(layer): int(width) for layer, width in residuals.d_sae.items()}),
        "run": residuals.run,
    }
    return save(tensors, metadata=metadata)


def write_residuals(path: Path, residuals: Residuals) -> Path:
    """Write ``residuals`` to exactly ``path`` (a literal path), atomically (whole or absent)."""
    path = Path(path)
    data = residuals_bytes(residuals)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + size].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header.get("__metadata__") or {}


def read_residuals(path: Path, *, keys: Iterable[str] | None = None, rows: Sequence[int] | None = None) -> Residuals:
    """The residuals at exactly ``path``; a one-line SaecliError for a missing, truncated or foreign file.

    ``keys`` (e.g. ``dense.l0_fact``, ``features.l0_fact``; :func:`residual_names`) reads only those
    arrays (an empty list: the ids, layers and widths alone); ``rows`` (positions in the file, any
    order) only those rows, in that order, with their ``sample_ids``. Either reads the file through
    ``safetensors.safe_open`` a slice at a time (a dense array in blocks of rows, a CSR matrix its
    ``indptr`` and then the entries of the rows asked for), so memory holds what is returned, not the
    file. Without either, the whole file is read and checked as before.
    """
    import numpy as np
    import scipy.sparse as sp
    from safetensors.numpy import load

    path = Path(path)
    hint = "rerun `saecli run` (baselines on) to write it again, or move the file away to report without probes"
    if not path.is_file():
        raise SaecliError(f"no residuals file {path}", hint="`saecli run` writes it unless --no-baselines")
    if keys is not None or rows is not None:
        return _read_part(path, keys, rows, hint)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    with _readable(path, hint):
        meta = _safetensors_metadata(data)
        tensors = load(data)
        layers, sample_ids, d_sae = _described(meta)
        dense = {name.removeprefix("dense."): array for name, array in tensors.items() if name.startswith("dense.")}
        features = {}
        for name in tensors:
            if name.startswith("features.") and name.endswith(".indptr"):
                key = name.removeprefix("features.").removesuffix(".indptr")
                prefix = f"features.{key}"
                layer = int(key[1:].split("_", 1)[0])
                if layer not in d_sae:
                    raise ValueError(f"no d_sae for layer {layer} in its metadata")
                rows, cols = tensors[f"{prefix}.indptr"].size - 1, d_sae[layer]
                features[key] = sp.csr_matrix(
                    (tensors[f"{prefix}.data"].astype(np.float32), tensors[f"{prefix}.indices"], tensors[f"{prefix}.indptr"]),
                    shape=(rows, cols),
                )
        residuals = Residuals(layers=layers, sample_ids=sample_ids, dense=dense, features=features, d_sae=d_sae,
                              run=str(meta.get("run", "")))  # fmt: skip
        residuals.check(str(path))
    return residuals


@contextmanager
def _readable(path: Path, hint: str) -> Iterator[None]:
    """Whatever a broken residuals file raises as one-line SaecliError naming ``path``, with ``hint``."""
    try:
        yield
    except SaecliError as exc:
        raise SaecliError(exc.message, hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON, scipy: whatever a broken file raises
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SaecliError(f"{path} is not a readable saecli residuals file: {reason}", hint=hint) from None


def _described(meta: dict[str, str], *, series: bool = False) -> tuple[list[int], Any, dict[int, int]]:
    """The layers, sample ids and SAE widths a residuals file's metadata records (a ValueError for
    a file that is not saecli's, or of another schema). ``series``: the ids as a polars String Series
    when polars can decode them (:func:`_id_series`), else a list."""
    if meta.get("format") != "saecli-residuals":
        raise ValueError("not a saecli residuals file (no format saecli-residuals in its metadata)")
    if meta.get("schema") != str(RESIDUALS_SCHEMA):
        raise ValueError(f"schema {meta.get('schema')!r}, this saecli reads {RESIDUALS_SCHEMA}")
    layers = [int(layer) for layer in json.loads(meta["layers"])]
    sample_ids = _id_series(meta["sample_ids"]) if series else None
    if sample_ids is None:
        sample_ids = [str(sid) for sid in json.loads(meta["sample_ids"])]
    d_sae = {int(layer): int(width) for layer, width in json.loads(meta["d_sae"]).items()}
    return layers, sample_ids, d_sae


def _id_series(raw: str) -> Any:
    """The JSON list of ids ``raw`` decoded by polars into a String Series (no Python string per id: a
    million of them are ~0.1 GB, and their memory is not given back whole); None when polars cannot
    decode it as strings (a foreign file: the list path then says what is wrong with it)."""
    import polars as pl

    try:
        ids = pl.Series([raw], dtype=pl.String).str.json_decode(pl.List(pl.String)).explode()
    except Exception:  # noqa: BLE001 - any decoding failure: the plain JSON path decides
        return None
    return None if ids.null_count() else ids


BLOCK_BYTES = 1 << 25
"""Bytes of a dense array read at once by a partial read (32 MiB: 65,536 rows at d_model 128, 3,640 at 2,304)."""


def residual_names(path: Path) -> list[str]:
    """The arrays a residuals file holds, as :func:`read_residuals` ``keys`` (``dense.l0_fact``,
    ``features.l0_fact``, …), in the file's order; a one-line SaecliError for an unreadable file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - whatever a broken file raises
        raise SaecliError(
            f"{path} is not a readable saecli residuals file: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    out = [n for n in names if n.startswith("dense.")]
    return out + [n.removesuffix(".indptr") for n in names if n.startswith("features.") and n.endswith(".indptr")]


def _dense_rows(handle: Any, name: str, rows: Any) -> Any:
    """Rows ``rows`` of the dense tensor ``name``, read in blocks of :data:`BLOCK_BYTES` (from the first to
    the last row wanted in each block: the rows of a block between them are read, not the whole tensor)."""
    import numpy as np

    total, width = handle.get_slice(name).get_shape()
    out = np.empty((rows.size, width), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    step = max(1, BLOCK_BYTES // (4 * max(int(width), 1)))
    for start in range(0, int(total), step):
        lo, hi = np.searchsorted(ordered, [start, start + step])
        if hi > lo:
            first = int(ordered[lo])
            block = handle.get_slice(name)[first : int(ordered[hi - 1]) + 1]
            out[order[lo:hi]] = block[ordered[lo:hi] - first]
    return out


def _csr_rows(handle: Any, prefix: str, rows: Any, width: int) -> Any:
    """Rows ``rows`` of the CSR matrix stored as ``{prefix}.indptr/.indices/.data``: its indptr, then
    each requested row's entries (consecutive rows read as one slice)."""
    import numpy as np
    import scipy.sparse as sp

    indptr = handle.get_tensor(f"{prefix}.indptr")
    if rows is None:
        rows = np.arange(indptr.size - 1)
    starts, ends = indptr[rows], indptr[rows + 1]
    out_ptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    indices = np.empty(int(out_ptr[-1]), dtype=np.int32)
    data = np.empty(int(out_ptr[-1]), dtype=np.float32)
    # runs of consecutive rows: one slice each
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1 if rows.size else np.array([], dtype=np.int64)
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, rows.size], strict=True):
        if b <= a:
            continue
        lo, hi = int(starts[a]), int(ends[b - 1])
        indices[out_ptr[a] : out_ptr[b]] = handle.get_slice(f"{prefix}.indices")[lo:hi]
        data[out_ptr[a] : out_ptr[b]] = handle.get_slice(f"{prefix}.data")[lo:hi]
    return sp.csr_matrix((data, indices, out_ptr), shape=(rows.size, width))


def _read_part(path: Path, keys: Iterable[str] | None, rows: Sequence[int] | None, hint: str) -> Residuals:
    """:func:`read_residuals` of some arrays and rows (``keys``, ``rows``), by positioned reads (:class:`_Tensors`)."""
    import numpy as np

    picked = None if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    with _readable(path, hint), _opened(path) as (handle, meta, described, wanted):
        return _rows_of(handle, meta, described, wanted(keys), picked, str(path))


@contextmanager
def _opened(path: Path) -> Iterator[tuple[Any, dict[str, str], Any, Any]]:
    """The file open for positioned reads (:class:`_Tensors`): its handle, its metadata, what that
    describes (:func:`_described`, read once: a million ids are a large JSON list) and
    ``wanted(keys)``: the arrays of ``keys`` it holds (all of them, sorted, for None)."""
    with open(path, "rb") as file:
        handle = _Tensors(file)
        meta = handle.metadata() or {}
        described = _described(meta, series=True)
        names = set(handle.keys())
        held = [n for n in names if n.startswith("dense.")] + [
            n.removesuffix(".indptr") for n in names if n.startswith("features.") and n.endswith(".indptr")
        ]

        def wanted(keys: Iterable[str] | None) -> list[str]:
            return sorted(held) if keys is None else [k for k in keys if k in held]

        yield handle, meta, described, wanted


def _rows_of(handle: Any, meta: dict[str, str], described: Any, wanted: list[str], picked: Any, source: str) -> Residuals:
    """The arrays ``wanted`` at rows ``picked`` (file positions; None: all) of an open file whose
    metadata ``meta`` describes ``described`` (:func:`_described`: read once per file, not per block)."""
    import numpy as np

    layers, sample_ids, d_sae = described
    if picked is not None and picked.size and (picked.min() < 0 or picked.max() >= len(sample_ids)):
        raise ValueError(f"rows outside its {len(sample_ids)} samples")
    dense, features = {}, {}
    for name in wanted:
        kind, key = name.split(".", 1)
        if kind == "dense":
            every = np.arange(len(sample_ids)) if picked is None else picked
            dense[key] = _dense_rows(handle, name, every)
        else:
            layer = int(key[1:].split("_", 1)[0])
            if layer not in d_sae:
                raise ValueError(f"no d_sae for layer {layer} in its metadata")
            features[key] = _csr_rows(handle, name, picked, d_sae[layer])
    if isinstance(sample_ids, list):
        ids = sample_ids if picked is None else [sample_ids[i] for i in picked.tolist()]
    else:  # a Series (_id_series): only the rows read become Python strings
        ids = (sample_ids if picked is None else sample_ids.gather(picked)).to_list()
    residuals = Residuals(layers=layers, sample_ids=ids, dense=dense, features=features, d_sae=d_sae,
                          run=str(meta.get("run", "")))  # fmt: skip
    residuals.check(source)
    return residuals


def read_residual_blocks(path: Path, keys: Iterable[str], rows: Sequence[int], block: int) -> Iterator[Residuals]:
    """:func:`read_residuals` of ``keys`` at ``rows`` (file positions), ``block`` rows at a time: the
    file opened and its metadata read once for all the blocks (a one-line SaecliError for a broken file)."""
    import numpy as np

    path = Path(path)
    hint = "rerun `saecli run` (baselines on) to write it again, or move the file away to report without probes"
    if not path.is_file():
        raise SaecliError(f"no residuals file {path}", hint="`saecli run` writes it unless --no-baselines")
    picked = np.asarray(rows, dtype=np.int64).reshape(-1)
    with _readable(path, hint), _opened(path) as (handle, meta, described, wanted):
        names = wanted(keys)
        for start in range(0, picked.size, max(1, block)):
            yield _rows_of(handle, meta, described, names, picked[start : start + block], str(path))


_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "F16": "<f2", "BF16": None}


class _Tensors:
    """A safetensors file read by positioned reads (``os.pread``), rows of a tensor at a time, with the
    calls of ``safe_open`` this module uses (``metadata``, ``keys``, ``get_tensor``, ``get_slice(name)[a:b]``).

    Not ``safe_open``: it maps the file, and every page a read touches counts in the process's resident
    memory until the file is closed, so that reading every row of a tensor (a layer's features, a
    block at a time) or rows spread over the whole file (the probes' subsample) held as much resident
    memory as the file (6.8 GB of peak RSS for a million-sample report); a positioned read holds only
    the rows it returns (the kernel's page cache is not the process's memory).
    """

    def __init__(self, file: Any) -> None:
        import os

        self.fd = file.fileno()
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, 8, 0)
        if len(head) < 8:
            raise ValueError("too short for a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise ValueError("header longer than the file")
        header = json.loads(os.pread(self.fd, length, 8).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        self.meta = header.pop("__metadata__", None) or {}
        self.start = 8 + length
        self.tensors: dict[str, tuple[str, list[int], int]] = {}
        for name, info in header.items():
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            if _DTYPES.get(dtype) is None:
                raise ValueError(f"tensor {name}: dtype {dtype} is not one saecli writes")
            if end - begin != math.prod(shape) * int(dtype[1:]) // 8 or begin < 0 or self.start + end > size:
                raise ValueError(f"tensor {name}: its bytes do not fit its shape or the file (cut short?)")
            self.tensors[name] = (dtype, shape, int(begin))

    def metadata(self) -> dict[str, str]:
        return self.meta

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self, name)

    def get_tensor(self, name: str) -> Any:
        return self.rows(name, 0, self.tensors[name][1][0])

    def rows(self, name: str, start: int, stop: int) -> Any:
        """Rows ``start:stop`` (along the first axis) of tensor ``name``, read alone."""
        import os

        import numpy as np

        dtype, shape, begin = self.tensors[name]
        start, stop = max(0, start), min(max(start, stop), shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64)) * int(dtype[1:]) // 8
        out = np.empty((stop - start, *shape[1:]), dtype=_DTYPES[dtype])
        view, offset = memoryview(out.reshape(-1).view(np.uint8)), self.start + begin + start * row
        while view.nbytes:
            got = os.preadv(self.fd, [view], offset)
            if got <= 0:
                raise ValueError(f"tensor {name}: the file ends before its rows (cut short?)")
            view, offset = view[got:], offset + got
        return out


@dataclass
class _Slice:
    """``safe_open``'s slice of one tensor: its shape, and rows read as ``[a:b]``."""

    tensors: _Tensors
    name: str

    def get_shape(self) -> list[int]:
        return list(self.tensors.tensors[self.name][1])

    def __getitem__(self, rows: slice) -> Any:
        start, stop, _ = rows.indices(self.tensors.tensors[self.name][1][0])
        return self.tensors.rows(self.name, start, stop)
