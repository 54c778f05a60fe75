"""A run's input, staged in its folder while it runs: the selected samples and a new run's checked
tokens, read back one plan window at a time, so that a run holds no sample's text and no token it is
not analysing (a million samples' texts are about 1.5 GB on the embedded preset's data).

The data is read twice and never held: once to check it and select the samples
(:func:`saecli.data.run_selection`, before the run folder is claimed), once more to write the
selected samples into :data:`INPUT_DIR` (a Parquet row group per :data:`~saecli.plan.PLAN_WINDOW`
samples) while their fingerprint (the run identity's ``data_fingerprint``) is computed. Data changed
between the two reads is refused. The folder is the run's own (the run folder is locked): it is
removed when the run ends; an interrupted run's is taken as it is by ``--resume`` when the data's
files are unchanged (:func:`staged_earlier`: resuming a million samples then reads no data), else
staged again, and removed by ``--force``. At the end, ``samples.parquet`` is written from it by
streaming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saecli.config import RunConfig
from saecli.data import Sample, Selection, dataset_identity
from saecli.errors import SaecliError
from saecli.io import SAMPLE_COLUMNS, atomic_write, file_sha256, samples_frame
from saecli.plan import PLAN_WINDOW, PackedTokens, SampleTokens

INPUT_DIR = ".saecli-input.tmp"
"""The folder of a run's staged input, inside the run folder."""
SAMPLES_NAME = "samples.parquet"
RECORD_NAME = "staged.json"
log = logging.getLogger(__name__)
_TYPES = {**dict.fromkeys(SAMPLE_COLUMNS, pl.String()), "complexity": pl.Int64()}


def data_fingerprint(samples: Any) -> str:
    """The run identity's ``data_fingerprint``: the SHA-256 (first 16 hex digits) of every sample's
    id, prompt, fact and hallucination, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        _digest(digest, sample)
    return digest.hexdigest()[:16]


def _digest(digest: Any, sample: Sample) -> None:
    digest.update(json.dumps([sample.id, sample.prompt, sample.fact, sample.hallucination]).encode())


def remove_input(run_dir: Path) -> bool:
    """Remove the staged input a run left in ``run_dir`` (the caller holds the run folder's lock)."""
    folder = run_dir / INPUT_DIR
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
        return True
    if folder.is_symlink() or folder.exists():
        folder.unlink()
        return True
    return False


@dataclass
class Staging:
    """The staged input folder of the run in progress."""

    folder: Path
    keep_on_error: bool = False
    """Keep it when the run fails (a run with a manifest, which ``--resume`` continues and which
    reuses it); a new run that fails before its manifest leaves nothing behind."""


@contextmanager
def staged_input(run_dir: Path, *, reuse: bool = False, keep_on_error: bool = False) -> Iterator[Staging]:
    """This run's :data:`INPUT_DIR`: the one an interrupted run staged (``reuse``) or a fresh one (a
    stale one removed first). Removed when the run ends, and when it fails unless
    :attr:`Staging.keep_on_error`."""
    folder = run_dir / INPUT_DIR
    if not reuse:
        remove_input(run_dir)
        folder.mkdir()
    staging = Staging(folder, keep_on_error=keep_on_error)
    try:
        yield staging
    except BaseException:
        if not staging.keep_on_error:
            remove_input(run_dir)
        raise
    remove_input(run_dir)


def _options(config: RunConfig) -> dict[str, Any]:
    """What selects a run's samples from its data."""
    chosen = {"data": config.data, "columns": config.columns, "domains": config.domains, "limit": config.limit,
              "limit_order": config.limit_order}  # fmt: skip
    return json.loads(json.dumps(chosen, default=str))


def record_staged(staging: Staging, samples: StagedSamples, fingerprint: str, config: RunConfig) -> None:
    """Vouch for the staged samples (written last, atomically): what selected them, the data's files
    (their SHA-256, as the manifest records them) and the staged file's own SHA-256, so that a resumed
    run can take them without reading the data again (:func:`staged_earlier`)."""
    record = {
        "options": _options(config),
        "dataset": dataset_identity(config.data, config.columns),
        "fingerprint": fingerprint,
        "samples": len(samples),
        "sha256": file_sha256(samples.path),
    }
    atomic_write(staging.folder / RECORD_NAME, lambda p: p.write_text(json.dumps(record), encoding="utf-8"))


def staged_earlier(run_dir: Path, config: RunConfig) -> tuple[StagedSamples, str] | None:
    """The samples an interrupted run staged, with their fingerprint, when they can be taken as they
    are: vouched for (:func:`record_staged`), selected by the same options, from data whose files have
    not changed since, and the staged file intact. None (the data is then read again) otherwise."""
    folder = run_dir / INPUT_DIR
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("options") != _options(config):
            return None
        if record.get("dataset") != dataset_identity(config.data, config.columns):
            return None
        path = folder / SAMPLES_NAME
        if record.get("sha256") != file_sha256(path):
            return None
        ids = pl.scan_parquet(path, glob=False).select("sample_id").collect()["sample_id"].to_list()
    except (OSError, ValueError, SaecliError, pl.exceptions.PolarsError):
        return None
    if len(ids) != record.get("samples") or not isinstance(record.get("fingerprint"), str):
        return None
    log.info("resuming with the samples staged in %s (the data's files are unchanged)", folder)
    return StagedSamples(path=path, ids=ids), record["fingerprint"]


@dataclass
class StagedSamples:
    """The selected samples of a run, on disk in input order; :meth:`window` reads some of them."""

    path: Path
    ids: list[str]
    """Every sample's id, in input order (the run's one per-sample list in memory)."""

    def __len__(self) -> int:
        return len(self.ids)

    def _frame(self, start: int, stop: int) -> pl.DataFrame:
        # The path is literal (glob=False); a slice reads only the row groups it covers.
        return pl.scan_parquet(self.path, glob=False).slice(start, stop - start).collect()

    def window(self, positions: Any) -> list[Sample]:
        """The samples at ``positions`` (increasing input positions, as a window of the plan holds)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return []
        start = int(positions[0])
        frame = self._frame(start, int(positions[-1]) + 1)
        rows = frame[positions - start] if positions.size != frame.height else frame
        return [
            Sample(
                id=r["sample_id"],
                domain=r["domain"],
                prompt=r["prompt"],
                fact=r["fact"],
                hallucination=r["hallucination"],
                topic=r["topic"],
                complexity=r["complexity"],
            )  # fmt: skip
            for r in rows.iter_rows(named=True)
        ]

    def frames(self) -> Iterator[pl.DataFrame]:
        """The samples as ``samples.parquet``'s columns, :data:`~saecli.plan.PLAN_WINDOW` rows at a time."""
        for start in range(0, len(self), PLAN_WINDOW):
            yield self._frame(start, min(start + PLAN_WINDOW, len(self))).select(SAMPLE_COLUMNS)

    def probe_candidates(self) -> list[Sample]:
        """The samples an automatic batch size is probed on: all of a run of up to one plan window,
        else the window's worth with the most characters (the longest in tokens are among them)."""
        if len(self) <= PLAN_WINDOW:
            return self.window(np.arange(len(self)))
        texts = [pl.col(c).str.len_bytes() for c in ("prompt", "fact", "hallucination")]
        longest = (
            pl.scan_parquet(self.path, glob=False)
            .select(pl.sum_horizontal(texts).alias("chars"))
            .with_row_index("position")
            .top_k(PLAN_WINDOW, by="chars")
            .collect()
        )
        return self.window(np.sort(longest["position"].to_numpy()))


def stage_samples(selection: Selection, folder: Path) -> tuple[StagedSamples, str]:
    """Write ``selection``'s samples into ``folder`` (read from the data once more) and return them
    with their fingerprint. The data must still hold the samples the selection checked."""
    import pyarrow.parquet as pq

    path = folder / SAMPLES_NAME
    schema = pl.DataFrame(schema=_TYPES).to_arrow().schema
    digest = hashlib.sha256()
    ids = selection.ids
    count = 0
    with open(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        chunk: list[Sample] = []
        for sample in selection.samples():
            if count >= len(ids) or sample.id != ids[count]:
                raise _changed(selection)
            _digest(digest, sample)
            chunk.append(sample)
            count += 1
            if len(chunk) == PLAN_WINDOW:
                writer.write_table(_arrow(chunk, schema))
                chunk = []
        if chunk or not count:
            writer.write_table(_arrow(chunk, schema))
    if count != len(ids):
        raise _changed(selection)
    return StagedSamples(path=path, ids=ids), digest.hexdigest()[:16]


def _arrow(chunk: list[Sample], schema: Any) -> Any:
    complexity = pl.Series("complexity", [s.complexity for s in chunk], dtype=pl.Int64())
    return samples_frame(chunk).with_columns(complexity).to_arrow().cast(schema)


def _changed(selection: Selection) -> SaecliError:
    return SaecliError(f"{selection.source} changed while the run was reading it", hint="run again once the data stays as it is")


class TokenFile:
    """A new run's checked tokens, on disk (:class:`~saecli.plan.PackedTokens`' three arrays,
    appended a window at a time), read back by sample range with plain reads (not a memory map:
    its pages would count in the process's memory as the run goes)."""

    def __init__(self, folder: Path):
        self.paths = {name: folder / f"tokens.{name}" for name in ("ids", "ends", "starts")}
        for path in self.paths.values():
            path.write_bytes(b"")
        self.samples = 0
        self.tokens = 0

    def append(self, pack: PackedTokens) -> None:
        arrays = {"ids": pack.ids.astype(np.int32), "ends": pack.ends + self.tokens, "starts": pack.starts.astype(np.int64)}
        for name, array in arrays.items():
            with open(self.paths[name], "ab") as handle:
                array.astype(np.int32 if name == "ids" else np.int64).tofile(handle)
        self.samples += len(pack)
        self.tokens += int(pack.ids.size)

    def _read(self, name: str, dtype: Any, start: int, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        with open(self.paths[name], "rb") as handle:
            handle.seek(start * size)
            return np.fromfile(handle, dtype=dtype, count=count)

    def unpack(self, start: int, stop: int) -> list[SampleTokens]:
        """The tokens of samples ``start`` to ``stop``."""
        stop = min(stop, self.samples)
        if stop <= start:
            return []
        first = 3 * start - 1 if start else 3 * start
        ends = self._read("ends", np.int64, first, 3 * stop - first)
        begin = int(ends[0]) if start else 0
        ends = ends[1:] if start else ends
        ids = self._read("ids", np.int32, begin, int(ends[-1]) - begin)
        starts = self._read("starts", np.int64, 2 * start, 2 * (stop - start)).reshape(-1, 2)
        return PackedTokens(ids, ends - begin, starts).unpack()
