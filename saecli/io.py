"""Run-folder files: `metrics.parquet`, `samples.parquet`, `manifest.json` and the part files of an unfinished run, each
written atomically and read literally (a path is never a pattern); the merge of the parts; the name
of every file saecli writes into a run folder (so cleanup and ``--force`` know them).

Does not belong here: the contents of ``residuals.safetensors`` and of the residual parts
(``saecli.residuals``, which writes them through :func:`atomic_write`)."""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import hashlib
import json
import logging
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import polars as pl

from saecli.columns import metric_columns
from saecli.errors import SaecliError
from saecli.faults import crash_point

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.parquet"
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
"""Finished samples of an unfinished run, one Parquet file per batch; merged and removed at the end."""
RESIDUALS_FILE = "residuals.safetensors"
"""The residual-stream vectors and SAE feature activations of a run (``saecli.residuals``; ``saecli
report`` fits probes on them)."""
SAMPLES_FILE = "samples.parquet"
"""The texts of a run's samples, rows in ``metrics.parquet``'s order (:data:`SAMPLE_COLUMNS`): the report
shows them beside the numbers and groups its probe folds by them without the original data file."""
SAMPLE_COLUMNS = ("sample_id", "domain", "topic", "prompt", "fact", "hallucination")
REPORT_FILES = ("detection.csv", "dashboard.png", "summary.md", "report.html", "probes.csv", "generalisation.csv", "features.csv")
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


def parquet_bytes(frame: pl.DataFrame, metadata: dict[str, str] | None = None) -> bytes:
    """``frame`` as Parquet bytes (with key-value ``metadata``). Built in memory and written by
    Python: a full disk is then an OSError like any other write, not an error inside polars."""
    buffer = BytesIO()
    frame.write_parquet(buffer, metadata=metadata)
    return buffer.getvalue()


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to exactly ``path``."""
    data = parquet_bytes(frame)
    with open(path, "wb") as handle:
        handle.write(data)


def parquet_from_bytes(data: bytes) -> tuple[pl.DataFrame, dict[str, str]]:
    """A Parquet file's table and key-value metadata; a ValueError saying why for bytes that are
    not a readable Parquet file. Polars panics on some corruptions (``PanicException`` is not an
    ``Exception``), so that is caught too."""
    try:
        with panic_report_dropped(pl.exceptions.PanicException):
            metadata = pl.read_parquet_metadata(BytesIO(data))
            return pl.read_parquet(BytesIO(data)), metadata
    except (Exception, pl.exceptions.PanicException) as exc:  # noqa: BLE001 - whatever a broken file raises
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not a readable Parquet file ({reason})") from None


@contextmanager
def panic_report_dropped(panic: type[BaseException]) -> Iterator[None]:
    """Hold what is written to the process's stderr (file descriptor 2, where Rust prints a panic)
    while the block runs, and pass it on afterwards unless the block panicked: then it is the
    panic's report, and the one-line error stands for it."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to keep clean
        yield
        return
    panicked = False
    # Some damage makes Polars abort the process (an allocation of exabytes), which no except
    # sees and which would take the held report with it: Python's own fatal-error report, naming
    # this reader, goes to the real stderr instead of a silent exit.
    watch = not faulthandler.is_enabled()
    with tempfile.TemporaryFile() as held:
        _flush_stderr()  # what Python wrote before goes out first, in its place
        os.dup2(held.fileno(), 2)
        if watch:
            faulthandler.enable(file=saved)
        try:
            yield
        except BaseException as exc:
            panicked = isinstance(exc, panic)
            raise
        finally:
            if watch:
                faulthandler.disable()
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            if not panicked:
                held.seek(0)
                _pass_on(held.read())


def _flush_stderr() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):  # None, closed, or a closed pipe
        sys.stderr.flush()


def _pass_on(data: bytes) -> None:
    with contextlib.suppress(OSError):  # stderr gone: never mask the reader's own outcome
        while data:
            data = data[os.write(2, data) :]


def read_parquet(path: Path) -> pl.DataFrame:
    """A Parquet file at exactly ``path`` (a ValueError for a broken one). Polars reads a path
    string as a glob pattern (``[``, ``*``, ``?``), so a run folder named ``e[12]`` would read
    ``e1`` and ``e2``; its bytes are always the one file."""
    return parquet_from_bytes(Path(path).read_bytes())[0]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks through a handle (the path is literal)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_temporary(path: Path) -> Path:
    """Create an empty, fresh ``.<name>.<random>.tmp`` beside ``path``. Not ``tempfile.mkstemp``:
    its files are ``-rw-------`` whatever the umask, and the rename would keep that mode, so that
    colleagues on a shared machine could not read the results. Created with 0666 here, the umask
    (and a default ACL) decide, as for any file a program writes."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary name beside it, then rename: the file is
    whole or absent, never half-written. Its mode is the umask's, as for any other file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(path)
    try:
        write(tmp)
        crash_point("tmp_written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_metrics(frame: pl.DataFrame, run_dir: Path) -> Path:
    path = run_dir / METRICS_FILE
    data = parquet_bytes(frame)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def samples_frame(samples: Sequence[Any]) -> pl.DataFrame:
    """``samples`` (:class:`saecli.data.Sample`-like) as a frame of :data:`SAMPLE_COLUMNS`."""
    columns = {name: [getattr(s, "id" if name == "sample_id" else name) for s in samples] for name in SAMPLE_COLUMNS}
    return pl.DataFrame(columns, schema=dict.fromkeys(SAMPLE_COLUMNS, pl.String()))


def write_samples(frames: Iterable[pl.DataFrame], run_dir: Path) -> Path:
    """:data:`SAMPLES_FILE` of the samples in ``frames`` (each a frame of :data:`SAMPLE_COLUMNS`,
    written as one row group as it comes: a million texts are never held at once)."""
    import pyarrow.parquet as pq

    types = dict.fromkeys(SAMPLE_COLUMNS, pl.String())
    arrow_schema = pl.DataFrame(schema=types).to_arrow().schema
    path = run_dir / SAMPLES_FILE

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle, pq.ParquetWriter(handle, arrow_schema) as writer:
            for frame in frames:
                writer.write_table(frame.select(SAMPLE_COLUMNS).cast(types).to_arrow().cast(arrow_schema))

    atomic_write(path, write)
    return path


def file_record(path: Path) -> dict[str, Any]:
    """What the final manifest records of a file it vouches for (``files``): its size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def verify_file(run_dir: Path, manifest: dict[str, Any], name: str) -> None:
    """Refuse ``run_dir/name`` unless it is the file the run recorded in its manifest: a bit flip, a
    truncation or a file copied from another run is caught here, not read as this run's results.
    Manifests written before the record existed (no ``files``) are taken as they are."""
    files = manifest.get("files")
    if files is None:
        log.info("%s was written before saecli recorded checksums: %s is not verified", run_dir / MANIFEST_FILE, name)
        return
    record = files.get(name) if isinstance(files, dict) else None
    path = run_dir / name
    if not isinstance(record, dict):
        raise SaecliError(f"{path} is not part of the run in {run_dir} (its manifest does not record it)",
                          hint="move it away, or rerun `saecli run` into a fresh --out")  # fmt: skip
    try:
        same = path.stat().st_size == record.get("bytes") and file_sha256(path) == record.get("sha256")
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not same:
        raise SaecliError(
            f"{path} is not the file this run wrote (its size or SHA-256 differs from {MANIFEST_FILE}): corrupted or replaced",
            hint="rerun `saecli run` into a fresh --out",
        )


def write_manifest(manifest: dict[str, Any], run_dir: Path) -> Path:
    path = run_dir / MANIFEST_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n"))
    return path


def _temporaries(folder: Path, names: Sequence[str]) -> list[Path]:
    """Files :func:`atomic_write` left half-written for these file names (glob patterns; ``folder``
    itself is literal: ``Path.glob`` reads only its argument as a pattern)."""
    return [p for name in names for p in folder.glob(f".{name}.*.tmp")]


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Half-written files a killed run left under temporary names (never the results, never files
    saecli did not write)."""
    stale = _temporaries(run_dir, [METRICS_FILE, SAMPLES_FILE, MANIFEST_FILE, RESIDUALS_FILE, *REPORT_FILES])
    stale += _temporaries(run_dir / PARTS_DIR, ["part-*.parquet", "part-*.residuals.safetensors"])
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def part_files(run_dir: Path) -> list[Path]:
    """The finished part files of an unfinished run, in the order they were written."""
    return sorted(p for p in (run_dir / PARTS_DIR).glob("part-[0-9]*.parquet") if p.is_file())


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
    problem = _manifest_problem(manifest)
    if problem:
        raise SaecliError(
            f"{path} is not a valid saecli manifest: {problem}", hint="was it edited? rerun `saecli run` into a fresh --out"
        )
    return manifest


_NUMBER = (int, float)
_MANIFEST_SHAPE: dict[str, Any] = {
    "status": str, "mode": str, "config": dict, "identity": dict, "config_hash": str, "created_at": str,
    "preset": {"name": str, "synthetic": bool, "trained_on_benchmark": bool}, "layers": [int], "hooks": [str],
    "saes": dict, "baselines": bool, "dtype": str, "device": str, "device_reason": str, "batch_size": int,
    "seed": int, "noise_std": _NUMBER, "samples": int, "data_source": str, "finished_ids": [str], "backoffs": [dict],
    "files": {name: {"bytes": int, "sha256": str} for name in (METRICS_FILE, SAMPLES_FILE, RESIDUALS_FILE)},
    "timings": {"load_seconds": _NUMBER, "analysis_seconds": _NUMBER, "samples_analysed": int,
                "samples_per_second": (*_NUMBER, type(None)), "tokens_per_second": (*_NUMBER, type(None)), "stages_seconds": dict},
    "tokens": int, "resumed": bool, "padding": dict, "peak_memory": dict,
}  # fmt: skip
"""The types of the manifest fields saecli reads back (a field may be absent); a nested dict lists
the types of its own fields."""
_COMPLETE_NEEDS = ("preset", "layers", "samples", "timings", "device", "dtype", "batch_size")
"""What a complete run's manifest must hold for ``run --resume`` to print its summary again."""


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Why ``manifest`` is not one saecli wrote (a field of the wrong type, a missing one), or None."""
    if manifest.get("status") not in ("running", "complete"):
        return f"status is {manifest.get('status')!r}, not 'running' or 'complete'"
    return _shape_problem(manifest, _MANIFEST_SHAPE, "")


def check_complete(manifest: dict[str, Any], run_dir: Path) -> None:
    """Refuse a complete run's manifest that lacks what its summary is printed from."""
    missing = [key for key in _COMPLETE_NEEDS if key not in manifest]
    if missing:
        raise SaecliError(f"{run_dir / MANIFEST_FILE} is not a valid saecli manifest: the field {missing[0]!r} is missing",
                          hint="was it edited? rerun `saecli run` into a fresh --out")  # fmt: skip


def _shape_problem(value: Any, shape: Any, where: str) -> str | None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'the manifest'} is {type(value).__name__}, not an object"
        for key, inner in shape.items():
            if key in value and (problem := _shape_problem(value[key], inner, f"{where}.{key}".lstrip("."))):
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is {type(value).__name__}, not a list"
        return next((p for i, item in enumerate(value) if (p := _shape_problem(item, shape[0], f"{where}[{i}]"))), None)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in kinds:  # JSON true is not a count
        return f"{where} is a boolean"
    if not isinstance(value, kinds):
        return f"{where} is {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}"
    return None


def resume_command(run_dir: Path, manifest: dict[str, Any]) -> str:
    """What to type to finish the run in ``run_dir``."""
    command = "sequential" if manifest.get("mode") == "sequential" else "run"
    return f"saecli {command} --resume {shlex.quote(str(run_dir))}"


def read_run(run_dir: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A finished run's table and manifest. A run that has not completed (still running, killed,
    or interrupted) is refused: its folder may hold an earlier run's table under its manifest."""
    metrics, manifest = finished_run(run_dir)
    try:
        return read_parquet(metrics), manifest
    except (OSError, ValueError) as exc:
        raise SaecliError(f"cannot read {metrics}: {exc}".splitlines()[0], hint="rerun `saecli run` into a fresh --out") from None


def finished_run(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A finished run's table (its path, the file checked to be the one the run recorded) and
    manifest, refused as :func:`read_run` refuses them."""
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
    verify_file(run_dir, manifest, METRICS_FILE)
    return metrics, manifest
