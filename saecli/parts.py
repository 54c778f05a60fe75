"""The part files of an unfinished run: one Parquet table per finished batch (and its residuals), each
bound to the run that wrote it and checked before it is trusted.

A part's table is ``parts/part-NNNNNN-<sha>.parquet``: ``<sha>`` is the first 16 hex digits of the
SHA-256 of the file's bytes, so any change to the file (a bit flip, a truncation) is seen. Its
Parquet metadata holds the run's identity (``saecli_identity``: what makes two runs the same
computation, :func:`saecli.manifest.identity`) and the SHA-256 of its residuals part
(``part-NNNNNN.residuals.safetensors``, written first), which the table's own checksum thereby covers.

Before a resumed run does any work, :func:`check_parts` reads every entry of the parts folder:

* a part whose bytes do not match its name, that does not parse, or whose residuals are missing or
  changed is removed with its residuals: its samples are analysed again;
* residuals without a table (the run stopped between the two writes) are removed;
* a part written by another run (another seed, data, layers, ...), and anything else named like a
  part (another pattern, a folder, a link), are refused in one line: they are not this run's to
  merge or delete. Files not named ``part-*`` are the user's and left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from saecli.errors import SaecliError
from saecli.io import PARTS_DIR, atomic_write, parquet_bytes, parquet_from_bytes, rows_to_frame, schema
from saecli.residuals import Residuals, residuals_bytes

log = logging.getLogger(__name__)

TABLE_NAME = re.compile(r"part-(\d{6})-([0-9a-f]{16})\.parquet")
RESIDUALS_NAME = re.compile(r"part-(\d{6})\.residuals\.safetensors")
TEMPORARY_NAME = re.compile(r"\.part-.*\.(parquet|residuals\.safetensors)\..*\.tmp")
"""Half-written files of an interrupted run (:func:`saecli.io.atomic_write`), removed on resume."""
IDENTITY_KEY = "saecli_identity"
EARLIER_DEFAULTS = {"truncate": False, "limit_order": "file"}
"""What a run made before saecli recorded these settings did: it never truncated, and its
``--limit`` took the first N samples."""
RESIDUALS_KEY = "saecli_residuals_sha256"


def _as_json(ident: dict[str, Any]) -> str:
    return json.dumps(ident, sort_keys=True, default=str)


def residuals_path(run_dir: Path, number: int) -> Path:
    return run_dir / PARTS_DIR / f"part-{number:06d}.residuals.safetensors"


def write_part(frame: pl.DataFrame, run_dir: Path, number: int, ident: dict[str, Any], residuals: Residuals | None) -> Path:
    """Part ``number``: its residuals (if any) first, then its table, each atomically (whole or
    absent); the samples count as finished once the table is there."""
    residuals_sha = ""
    if residuals is not None:
        data = residuals_bytes(residuals)
        residuals_sha = hashlib.sha256(data).hexdigest()
        atomic_write(residuals_path(run_dir, number), lambda tmp: tmp.write_bytes(data))
    table = parquet_bytes(frame, {IDENTITY_KEY: _as_json(ident), RESIDUALS_KEY: residuals_sha})
    path = run_dir / PARTS_DIR / f"part-{number:06d}-{hashlib.sha256(table).hexdigest()[:16]}.parquet"
    atomic_write(path, lambda tmp: tmp.write_bytes(table))
    return path


@dataclass
class Parts:
    """The checked parts of a run folder, in the order they were written."""

    frames: list[pl.DataFrame] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    with_residuals: list[bool] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    """Names of the broken parts that were removed (their samples are analysed again)."""

    @property
    def last_number(self) -> int:
        return max(self.numbers, default=0)

    def sample_ids(self) -> list[str]:
        return [sid for frame in self.frames for sid in frame["sample_id"].to_list()]


def check_parts(run_dir: Path, layers: Sequence[int], ident: dict[str, Any], resume: str) -> Parts:
    """Read and check every entry of ``run_dir/parts`` (see the module docstring). ``resume`` is the
    command that continues the run, for the hints."""
    folder = run_dir / PARTS_DIR
    parts = Parts()
    ident = json.loads(_as_json(ident))  # compared as it was written: JSON has no tuples
    if not folder.exists():
        return parts
    if not folder.is_dir() or folder.is_symlink():
        raise _not_ours(run_dir, PARTS_DIR, resume)
    tables: dict[int, Path] = {}
    residuals: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if TEMPORARY_NAME.fullmatch(name) and entry.is_file():
            continue
        if not name.startswith("part-"):  # not named like a part: the user's, left alone (as --force does)
            continue
        found = TABLE_NAME.fullmatch(name) or RESIDUALS_NAME.fullmatch(name)
        if found is None or entry.is_symlink() or not entry.is_file():
            raise _not_ours(run_dir, f"{PARTS_DIR}/{name}", resume)
        number = int(found.group(1))
        target = tables if name.endswith(".parquet") else residuals
        if number in target:
            raise _not_ours(run_dir, f"{PARTS_DIR}/{name}", resume)
        target[number] = entry
    for number, path in sorted(tables.items()):
        broken = _check_one(path, layers, ident, residuals.get(number), run_dir, resume)
        if broken is None:
            continue
        if isinstance(broken, str):
            log.warning("part file %s is broken (%s); its samples are analysed again", path.name, broken)
            parts.redone.append(path.name)
            path.unlink(missing_ok=True)
            if number in residuals:
                residuals.pop(number).unlink(missing_ok=True)
            continue
        frame, has_residuals = broken
        parts.frames.append(frame)
        parts.numbers.append(number)
        parts.with_residuals.append(has_residuals)
    for number, path in residuals.items():
        if number not in parts.numbers:  # the run stopped between a part's residuals and its table
            path.unlink(missing_ok=True)
    return parts


def _check_one(path: Path, layers: Sequence[int], ident: dict[str, Any], residuals: Path | None, run_dir: Path,
               resume: str) -> str | tuple[pl.DataFrame, bool] | None:  # fmt: skip
    """A part's table and whether it has residuals; or why it is broken (a str)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if hashlib.sha256(data).hexdigest()[:16] != TABLE_NAME.fullmatch(path.name).group(2):  # type: ignore[union-attr]
        return "its bytes changed since it was written"
    try:
        frame, metadata = parquet_from_bytes(data)
    except ValueError as exc:
        return str(exc)
    try:
        theirs = json.loads(metadata.get(IDENTITY_KEY, "null"))
    except ValueError:
        theirs = None
    if not isinstance(theirs, dict):
        raise _not_ours(run_dir, f"{PARTS_DIR}/{path.name}", resume, "it records no saecli run")
    theirs = {**EARLIER_DEFAULTS, **theirs}
    for key, value in ident.items():
        if theirs.get(key) != value:
            raise _not_ours(
                run_dir,
                f"{PARTS_DIR}/{path.name}",
                resume,
                f"it was written by a run with {key} {theirs.get(key)!r}, this run has {value!r}",
            )
    if frame.schema != pl.Schema(schema(layers)):
        return "unexpected columns"
    expected = metadata.get(RESIDUALS_KEY, "")
    if bool(expected) != bool(ident.get("baselines")):
        return "its residuals do not match the run's baselines setting"
    if expected:
        if residuals is None:
            return "its residuals are missing"
        try:
            if hashlib.sha256(residuals.read_bytes()).hexdigest() != expected:
                return f"its residuals {residuals.name} changed since they were written"
        except OSError as exc:
            return f"its residuals are unreadable: {exc.strerror or exc}"
    return frame, bool(expected)


def _not_ours(run_dir: Path, name: str, resume: str, why: str = "it is not a part file this run wrote") -> SaecliError:
    return SaecliError(
        f"{run_dir / name}: {why}",
        hint=f"move it out of {run_dir / PARTS_DIR}, then: {resume}",
    )


def merge_parts(parts: Parts, layers: Sequence[int], sample_ids: Sequence[str], run_dir: Path) -> pl.DataFrame:
    """The checked parts as one table, rows in the order of ``sample_ids``, which they must hold
    exactly (each once)."""
    merged = pl.concat(parts.frames) if parts.frames else rows_to_frame([], layers)
    position = {sid: i for i, sid in enumerate(sample_ids)}
    order = merged["sample_id"].map_elements(position.get, return_dtype=pl.Int64)
    frame = merged.with_columns(order.alias("__order")).sort("__order").drop("__order")
    if frame["sample_id"].to_list() != list(sample_ids):
        raise SaecliError(f"{run_dir}: the merged results do not match the samples", hint="start a new run", exit_code=1)
    return frame


def merged_residuals(parts: Parts, run_dir: Path, sample_ids: Sequence[str]) -> Residuals:
    """The residuals of the checked parts, rows in the order of ``sample_ids``."""
    from saecli.residuals import read_residuals

    if not all(parts.with_residuals):
        raise SaecliError(f"{run_dir}: a finished part has no residuals", hint="start a new run", exit_code=1)
    pieces = [read_residuals(residuals_path(run_dir, number)) for number in parts.numbers]
    return Residuals.concat(pieces).select(list(sample_ids))
