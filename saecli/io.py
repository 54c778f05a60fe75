"""Run folders: ``metrics.parquet`` and ``manifest.json``, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
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


def default_run_dir(preset_name: str, root: Path = Path("runs")) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return root / f"{stamp}-{preset_name}"


def prepare_run_dir(path: Path, *, force: bool = False) -> Path:
    """Check that a run can be written to ``path`` before any work is done."""
    if path.exists() and not path.is_dir():
        raise SaecliError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SaecliError(f"output folder {path} already exists and is not empty", hint="choose another --out, or pass --force")
    existing = path if path.is_dir() else next((p for p in path.absolute().parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise SaecliError(f"output folder {path} cannot be created: {existing} is a file")
    # A real write, not os.access: permissions are not the only reason a folder refuses files
    # (read-only mounts, pseudo file systems), and root passes every access check.
    try:
        fd, probe = tempfile.mkstemp(prefix=".saecli-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SaecliError(f"output folder {path} cannot be written ({existing}: {exc.strerror})") from None
    return path


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


def _atomic_write(path: Path, write: Any) -> None:
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
    _atomic_write(path, lambda tmp: frame.write_parquet(tmp))
    return path


def write_manifest(manifest: dict[str, Any], run_dir: Path) -> Path:
    path = run_dir / MANIFEST_FILE
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n"))
    return path


def write_part(frame: pl.DataFrame, run_dir: Path, number: int) -> Path:
    path = run_dir / PARTS_DIR / f"part-{number:06d}.parquet"
    _atomic_write(path, lambda tmp: frame.write_parquet(tmp))
    return path


def read_parts(run_dir: Path, layers: Sequence[int]) -> tuple[list[pl.DataFrame], list[Path]]:
    """The readable part files of a run, and the corrupted ones (which are removed: redone)."""
    frames, bad = [], []
    for path in sorted((run_dir / PARTS_DIR).glob("part-*.parquet")):
        try:
            frame = pl.read_parquet(path)
            if frame.schema != pl.Schema(schema(layers)):
                raise ValueError("unexpected columns")
            frames.append(frame)
        except Exception:  # noqa: BLE001 - any unreadable part is redone, whatever broke it
            bad.append(path)
            path.unlink(missing_ok=True)
    return frames, bad


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Half-written files a killed run left under temporary names (never the results)."""
    stale = [*run_dir.glob(".*.tmp"), *(run_dir / PARTS_DIR).glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_parts(run_dir: Path) -> None:
    parts = run_dir / PARTS_DIR
    for path in parts.glob("*"):
        path.unlink(missing_ok=True)
    if parts.is_dir():
        parts.rmdir()


LOCK_FILE = ".saecli.lock"


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (see :func:`acquire_lock`) for the duration of the block."""
    lock = acquire_lock(run_dir)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def acquire_lock(run_dir: Path) -> Path:
    """Claim a run folder for this process: two processes writing one folder (a run and its
    resumption started too early) would interleave their part files. A lock left by a killed
    process (its pid no longer runs) is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise SaecliError(
                    f"another saecli process (pid {pid}) is writing to {run_dir}",
                    hint="wait for it to finish, or stop it and then --resume",
                ) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return path
    raise SaecliError(f"could not lock {run_dir}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise SaecliError(f"{run_dir} is not a saecli run folder (no {MANIFEST_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SaecliError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def read_run(run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A finished run's table and manifest."""
    metrics, manifest = run_dir / METRICS_FILE, run_dir / MANIFEST_FILE
    if not metrics.is_file() or not manifest.is_file():
        raise SaecliError(f"{run_dir} is not a saecli run folder (no {METRICS_FILE} and {MANIFEST_FILE})")
    return pl.read_parquet(metrics), json.loads(manifest.read_text())

