"""Run-folder files: `metrics.parquet`, `manifest.json` and the part files of an unfinished run, each
written atomically and read literally (a path is never a pattern); the merge of the parts."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from saecli.columns import metric_columns
from saecli.errors import SaecliError
from saecli.faults import crash_point

METRICS_FILE = "metrics.parquet"
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
"""Finished samples of an unfinished run, one Parquet file per batch; merged and removed at the end."""
REPORT_FILES = ("detection.csv", "dashboard.png", "summary.md", "probes.csv", "generalisation.csv", "features.csv")
"""What ``saecli report`` writes into a run folder (the last three only for a run with residuals)."""


def schema(layers: Sequence[int]) -> dict[str, pl.DataType]:
    """Column types of ``metrics.parquet``: ids, then the metric columns in spec order."""
    types: dict[str, pl.DataType] = {
        "sample_id": pl.String(),
        "domain": pl.String(),
        "topic": pl.String(),
        "complexity": pl.Int64(),
    }
    for column in metric_columns(layers):
        if column.endswith("_l0_norm"):
            types[column] = pl.Int64()
        elif column.endswith("_shape_class"):
            types[column] = pl.String()
        else:
            types[column] = pl.Float64()
    return types


def rows_to_frame(rows: Sequence[dict[str, Any]], layers: Sequence[int]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=schema(layers), orient="row")


def probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises the OSError of a folder that refuses files.
    A real write, not ``os.access``: permissions are not the only reason a folder refuses files
    (read-only mounts, pseudo file systems, a full disk), and root passes every access check."""
    fd, probe = tempfile.mkstemp(prefix=".saecli-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to exactly ``path`` (through a file handle, as :func:`read_parquet` reads)."""
    with open(path, "wb") as handle:
        frame.write_parquet(handle)


def read_parquet(path: Path) -> pl.DataFrame:
    """A Parquet file at exactly ``path``. Polars reads a path string as a glob pattern (``[``,
    ``*``, ``?``), so a run folder named ``e[12]`` would read ``e1`` and ``e2``; an open file
    handle is always the one file."""
    with open(path, "rb") as handle:
        return pl.read_parquet(handle)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks through a handle (the path is literal)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary name beside it, then rename: the file is
    whole or absent, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        crash_point("tmp_written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(frame: pl.DataFrame, run_dir: Path) -> Path:
    path = run_dir / METRICS_FILE
    atomic_write(path, lambda tmp: write_parquet(frame, tmp))
    return path


def write_manifest(manifest: dict[str, Any], run_dir: Path) -> Path:
    path = run_dir / MANIFEST_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n"))
    return path


def write_part(frame: pl.DataFrame, run_dir: Path, number: int) -> Path:
    path = run_dir / PARTS_DIR / f"part-{number:06d}.parquet"
    atomic_write(path, lambda tmp: write_parquet(frame, tmp))
    return path


def read_parts(run_dir: Path, layers: Sequence[int]) -> tuple[list[pl.DataFrame], list[Path]]:
    """The readable part files of a run, and the corrupted ones (which are removed: redone)."""
    frames, bad = [], []
    for path in part_files(run_dir):
        try:
            frame = read_parquet(path)
            if frame.schema != pl.Schema(schema(layers)):
                raise ValueError("unexpected columns")
            frames.append(frame)
        except Exception:  # noqa: BLE001 - any unreadable part is redone, whatever broke it
            bad.append(path)
            path.unlink(missing_ok=True)
    return frames, bad


def merge_parts(run_dir: Path, layers: Sequence[int], sample_ids: Sequence[str]) -> pl.DataFrame:
    """The part files of a run as one table, rows in the order of ``sample_ids``, which they must
    hold exactly (each once)."""
    frames, _ = read_parts(run_dir, layers)
    merged = pl.concat(frames) if frames else rows_to_frame([], layers)
    position = {sid: i for i, sid in enumerate(sample_ids)}
    order = merged["sample_id"].map_elements(position.get, return_dtype=pl.Int64)
    frame = merged.with_columns(order.alias("__order")).sort("__order").drop("__order")
    if frame["sample_id"].to_list() != list(sample_ids):
        raise SaecliError(f"{run_dir}: the merged results do not match the samples", hint="start a new run", exit_code=1)
    return frame


def _temporaries(folder: Path, names: Sequence[str]) -> list[Path]:
    """Files :func:`atomic_write` left half-written for these file names (glob patterns; ``folder``
    itself is literal: ``Path.glob`` reads only its argument as a pattern)."""
    return [p for name in names for p in folder.glob(f".{name}.*.tmp")]


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Half-written files a killed run left under temporary names (never the results, never files
    saecli did not write)."""
    stale = _temporaries(run_dir, [METRICS_FILE, MANIFEST_FILE, RESIDUALS_FILE, *REPORT_FILES])
    stale += _temporaries(run_dir / PARTS_DIR, ["part-*.parquet", "part-*.residuals.safetensors"])
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def residual_part_path(run_dir: Path, number: int) -> Path:
    """The residuals of part ``number`` (written just before its table, removed with it)."""
    return run_dir / PARTS_DIR / f"part-{number:06d}.residuals.safetensors"


def write_residual_part(residuals: Residuals, run_dir: Path, number: int) -> Path:
    return write_residuals(residual_part_path(run_dir, number), residuals)


def merge_residual_parts(run_dir: Path, sample_ids: Sequence[str]) -> Path:
    """Write ``residuals.safetensors`` from the residuals of the finished parts, rows in the order
    of ``sample_ids`` (a part whose table is missing was not finished: its residuals are ignored)."""
    numbers = [int(p.stem.split("-")[1]) for p in part_files(run_dir)]
    paths = [residual_part_path(run_dir, n) for n in numbers]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SaecliError(
            f"{run_dir}: the residuals of {len(missing)} finished part(s) are missing ({missing[0]})",
            hint="start a new run (or run with --no-baselines)", exit_code=1,
        )
    merged = Residuals.concat([read_residuals(p) for p in paths]).select(list(sample_ids))
    return write_residuals(run_dir / RESIDUALS_FILE, merged)


def part_files(run_dir: Path) -> list[Path]:
    """The finished part files of an unfinished run, in the order they were written."""
    return sorted((run_dir / PARTS_DIR).glob("part-[0-9]*.parquet"))


def remove_parts(run_dir: Path) -> list[Path]:
    """Delete the part files (and their temporaries); the parts folder too once nothing else is in it."""
    parts = run_dir / PARTS_DIR
    removed = part_files(run_dir) + _temporaries(parts, ["part-*.parquet", "part-*.residuals.safetensors"])
    removed += sorted(parts.glob("part-[0-9]*.residuals.safetensors"))
    for path in removed:
        path.unlink(missing_ok=True)
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    return removed


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """A run folder's manifest, or a one-line error saying why it is not one."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise SaecliError(f"{run_dir} is not a saecli run folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SaecliError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise SaecliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(manifest, dict):
        raise SaecliError(f"{path} is not a saecli manifest (not a JSON object)")
    return manifest


def resume_command(run_dir: Path, manifest: dict[str, Any]) -> str:
    """What to type to finish the run in ``run_dir``."""
    command = "sequential" if manifest.get("mode") == "sequential" else "run"
    return f"saecli {command} --resume {shlex.quote(str(run_dir))}"


def read_run(run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A finished run's table and manifest. A run that has not completed (still running, killed,
    or interrupted) is refused: its folder may hold an earlier run's table under its manifest."""
    if not run_dir.is_dir():
        raise SaecliError(f"{run_dir} is not a saecli run folder (no such folder)")
    manifest = read_manifest(run_dir)
    if manifest.get("status") != "complete":
        raise SaecliError(
            f"the run in {run_dir} is not complete (status {manifest.get('status', 'unknown')!s}); "
            f"finish it first: {resume_command(run_dir, manifest)}"
        )
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise SaecliError(f"{run_dir} is not a saecli run folder (no {METRICS_FILE})")
    try:
        return read_parquet(metrics), manifest
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise SaecliError(f"cannot read {metrics}: {exc}".splitlines()[0], hint="rerun `saecli run` into a fresh --out") from None


# -- residuals.safetensors: the vectors the SAEs read, for probes fitted after the run --------------

RESIDUALS_FILE = "residuals.safetensors"
"""The residual-stream vectors and SAE feature activations of a run (``saecli report`` fits probes on them)."""
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


def read_residuals(path: Path) -> Residuals:
    """The residuals at exactly ``path``; a one-line SaecliError for a missing, truncated or foreign file."""
    import numpy as np
    import scipy.sparse as sp
    from safetensors.numpy import load

    path = Path(path)
    hint = "rerun `saecli run` (baselines on) to write it again, or move the file away to report without probes"
    if not path.is_file():
        raise SaecliError(f"no residuals file {path}", hint="`saecli run` writes it unless --no-baselines")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        meta = _safetensors_metadata(data)
        tensors = load(data)
        if meta.get("format") != "saecli-residuals":
            raise ValueError("not a saecli residuals file (no format saecli-residuals in its metadata)")
        if meta.get("schema") != str(RESIDUALS_SCHEMA):
            raise ValueError(f"schema {meta.get('schema')!r}, this saecli reads {RESIDUALS_SCHEMA}")
        layers = [int(layer) for layer in json.loads(meta["layers"])]
        sample_ids = [str(sid) for sid in json.loads(meta["sample_ids"])]
        d_sae = {int(layer): int(width) for layer, width in json.loads(meta["d_sae"]).items()}
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
        residuals = Residuals(layers=layers, sample_ids=sample_ids, dense=dense, features=features, d_sae=d_sae)
        residuals.check(str(path))
    except SaecliError as exc:
        raise SaecliError(exc.message, hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON, scipy: whatever a broken file raises
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SaecliError(f"{path} is not a readable saecli residuals file: {reason}", hint=hint) from None
    return residuals
