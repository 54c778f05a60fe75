"""Run-folder files: `metrics.parquet`, `manifest.json` and the part files of an unfinished run, each
written atomically and read literally (a path is never a pattern); the merge of the parts; the name
of every file saecli writes into a run folder (so cleanup and ``--force`` know them).

Does not belong here: the contents of ``residuals.safetensors`` and of the residual parts
(``saecli.residuals``, which writes them through :func:`atomic_write`)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Sequence
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
RESIDUALS_FILE = "residuals.safetensors"
"""The residual-stream vectors and SAE feature activations of a run (``saecli.residuals``; ``saecli
report`` fits probes on them)."""
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
