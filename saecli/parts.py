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
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.errors import SaecliError
from saecli.faults import crash_point
from saecli.io import PARTS_DIR, atomic_write, file_sha256, new_temporary, parquet_bytes, parquet_from_bytes, schema
from saecli.merge import Piece, positions_of, write_residuals_file, write_table_to
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
TIER_KEY = "saecli_tier"
REPLACES_KEY = "saecli_replaces"
"""The numbers of the parts a compacted part holds: left over when the run stopped before they
were removed, they are removed on resume."""
FAN_IN = 16
"""Parts of one tier compacted into one of the next (:func:`compact`): a run holds at most
FAN_IN − 1 parts per tier, and each row is rewritten once per tier (log_FAN_IN of the batches)."""


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

    ids: list[pl.Series] = field(default_factory=list)
    """Each part's sample ids, in its rows' order (the tables themselves are read again when merged)."""
    numbers: list[int] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    with_residuals: list[bool] = field(default_factory=list)
    tiers: list[int] = field(default_factory=list)
    """0 for a batch's part; t + 1 for a part compacted from :data:`FAN_IN` parts of tier t."""
    positions: list[np.ndarray] = field(default_factory=list)
    """Each part's rows' input positions (:meth:`locate`)."""
    redone: list[str] = field(default_factory=list)
    """Names of the broken parts that were removed (their samples are analysed again)."""

    @property
    def last_number(self) -> int:
        return max(self.numbers, default=0)

    def locate(self, run_dir: Path, sample_ids: Sequence[str]) -> None:
        """Find each row's input position (:func:`saecli.merge.positions_of`: refused when a sample
        is held twice or is not in the data)."""
        self.positions = positions_of(self.ids, sample_ids, run_dir, every=False)

    def piece(self, k: int, run_dir: Path) -> Piece:
        """Part ``k`` as :mod:`saecli.merge` reads it."""
        residuals = residuals_path(run_dir, self.numbers[k]) if self.with_residuals[k] else None
        return Piece(self.tables[k], residuals, self.ids[k], self.positions[k])

    def add(self, number: int, table: Path, ids: pl.Series, positions: np.ndarray, *, residuals: bool, tier: int = 0) -> None:
        self.numbers.append(number)
        self.tables.append(table)
        self.ids.append(ids)
        self.positions.append(positions)
        self.with_residuals.append(residuals)
        self.tiers.append(tier)

    def drop(self, chosen: Sequence[int]) -> None:
        gone = set(chosen)
        for name in ("numbers", "tables", "ids", "positions", "with_residuals", "tiers"):
            setattr(self, name, [v for k, v in enumerate(getattr(self, name)) if k not in gone])


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
    checked = {
        number: _check_one(path, layers, ident, residuals.get(number), run_dir, resume) for number, path in sorted(tables.items())
    }
    replaced = {n for found in checked.values() if isinstance(found, _Found) for n in found.replaces}
    for number, found in checked.items():
        path = tables[number]
        if number in replaced or not isinstance(found, _Found):
            if number in replaced:  # the run stopped while compacting: a part holds these rows already
                log.info("removed %s, already compacted into a later part", path.name)
            else:
                log.warning("part file %s is broken (%s); its samples are analysed again", path.name, found)
                parts.redone.append(path.name)
            path.unlink(missing_ok=True)
            if number in residuals:
                residuals.pop(number).unlink(missing_ok=True)
            continue
        parts.ids.append(found.ids)
        parts.numbers.append(number)
        parts.tables.append(path)
        parts.with_residuals.append(found.residuals)
        parts.tiers.append(found.tier)
    for number, path in residuals.items():
        if number not in parts.numbers:  # the run stopped between a part's residuals and its table
            path.unlink(missing_ok=True)
    return parts


@dataclass
class _Found:
    """What a sound part holds: its ids, whether it has residuals, its tier, the parts it replaces."""

    ids: pl.Series
    residuals: bool
    tier: int
    replaces: list[int]


def _check_one(path: Path, layers: Sequence[int], ident: dict[str, Any], residuals: Path | None, run_dir: Path,
               resume: str) -> str | _Found:  # fmt: skip
    """What a sound part holds; or why it is broken (a str)."""
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
            if file_sha256(residuals) != expected:
                return f"its residuals {residuals.name} changed since they were written"
        except OSError as exc:
            return f"its residuals are unreadable: {exc.strerror or exc}"
    try:
        tier, replaces = int(metadata.get(TIER_KEY, "0")), [int(n) for n in json.loads(metadata.get(REPLACES_KEY, "[]"))]
    except (ValueError, TypeError):
        return "its compaction record is not readable"
    return _Found(frame["sample_id"], bool(expected), tier, replaces)


def _not_ours(run_dir: Path, name: str, resume: str, why: str = "it is not a part file this run wrote") -> SaecliError:
    return SaecliError(
        f"{run_dir / name}: {why}",
        hint=f"move it out of {run_dir / PARTS_DIR}, then: {resume}",
    )


def compact(parts: Parts, run_dir: Path, ident: dict[str, Any], layers: Sequence[int]) -> int:
    """While :data:`FAN_IN` parts share a tier, merge the oldest of them into one part of the next
    tier (rows sorted by input position, streamed by :mod:`saecli.merge`), then remove them: the
    parts folder stays small (at most FAN_IN − 1 parts per tier) and each row is rewritten once per
    tier. The merged part is written whole (residuals, then table, each renamed into place) before
    any of the parts it replaces is removed; it names them (``saecli_replaces``), so a run stopped
    in between removes the rest on resume. Returns the number of parts written."""
    written = 0
    while True:
        tiers = sorted({t for t in parts.tiers if parts.tiers.count(t) >= FAN_IN})
        if not tiers:
            return written
        chosen = [k for k, t in enumerate(parts.tiers) if t == tiers[0]][:FAN_IN]
        _compact_into_one(parts, chosen, run_dir, ident, layers, tiers[0] + 1)
        written += 1


def _compact_into_one(parts: Parts, chosen: list[int], run_dir: Path, ident: dict[str, Any], layers: Sequence[int],
                      tier: int) -> None:  # fmt: skip
    pieces = [parts.piece(k, run_dir) for k in chosen]
    positions = np.concatenate([p.positions for p in pieces])
    order = np.argsort(positions, kind="stable")
    ids = pl.concat([p.ids for p in pieces]).gather(order)
    number = parts.last_number + 1
    residuals_sha = ""
    has_residuals = all(p.residuals is not None for p in pieces)
    if has_residuals:
        write_residuals_file(pieces, ids.to_list(), layers, residuals_path(run_dir, number))
        residuals_sha = file_sha256(residuals_path(run_dir, number))
    metadata = {IDENTITY_KEY: _as_json(ident), RESIDUALS_KEY: residuals_sha, TIER_KEY: str(tier),
                REPLACES_KEY: json.dumps([parts.numbers[k] for k in chosen])}  # fmt: skip
    tmp = new_temporary(run_dir / PARTS_DIR / f"part-{number:06d}.parquet")
    try:
        with open(tmp, "wb") as handle:
            write_table_to(handle, pieces, layers, metadata)
        crash_point("compact_written")
        table = run_dir / PARTS_DIR / f"part-{number:06d}-{file_sha256(tmp)[:16]}.parquet"
        os.replace(tmp, table)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point("compacted")
    for piece in pieces:
        piece.table.unlink(missing_ok=True)
        crash_point("compact_removed")
        if piece.residuals is not None:
            piece.residuals.unlink(missing_ok=True)
    log.debug("compacted %d parts of tier %d into %s", len(pieces), tier - 1, table.name)
    parts.drop(chosen)
    parts.add(number, table, ids, positions[order], residuals=has_residuals, tier=tier)
