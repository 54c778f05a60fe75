"""One run end to end: load, analyse, write the run folder. What ``run`` and ``sequential`` call."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from saecli import io
from saecli.backend import Backend, LocalBackend, Progress
from saecli.columns import PAIRED_METRICS, layer_column, layer_metric, paired_column
from saecli.config import RunConfig, run_preset
from saecli.data import Selection, builtin_benchmark_path, run_selection
from saecli.errors import RunInterrupted, SaecliError
from saecli.faults import crash_point
from saecli.manifest import check_resumable, finish_manifest, identity, start_manifest, stored_identity
from saecli.memory import is_out_of_memory as is_oom
from saecli.memory import oom_message
from saecli.merge import write_residuals_file, write_table
from saecli.models import LoadedPreset, check_preset_files, load_preset
from saecli.parts import Parts, check_parts, compact, write_part
from saecli.plan import PackedTokens, windows
from saecli.rundir import claim_run_dir, clear_outputs
from saecli.staging import (
    StagedSamples,
    Staging,
    TokenFile,
    data_fingerprint,
    record_staged,
    remove_input,
    stage_samples,
    staged_earlier,
    staged_input,
)

if TYPE_CHECKING:
    from saecli.cluster import RayOptions
    from saecli.engine import BatchResult

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run produced. Its table stays on disk (a million rows need not fit in
    memory): :attr:`frame` reads it when asked."""

    run_dir: Path
    manifest: dict[str, Any]

    @property
    def frame(self) -> pl.DataFrame:
        return io.read_parquet(self.run_dir / io.METRICS_FILE)

    def scan(self) -> pl.LazyFrame:
        """The table, to be read by streaming (the path is literal: no glob)."""
        return pl.scan_parquet(self.run_dir / io.METRICS_FILE, glob=False)


def unfinished(n: int, held: Sequence[np.ndarray]) -> np.ndarray:
    """The input positions (of ``n``) that no part holds, in input order: one mask over the positions
    the parts' check found (a set of finished ids built per sample made resuming quadratic, 2.7 s
    at 8,000 samples; a set of a million id strings costs ~0.1 GB)."""
    mask = np.ones(n, dtype=bool)
    for positions in held:
        mask[positions] = False
    return np.flatnonzero(mask).astype(np.int64)


def _every_sample_once(parts: Parts, n: int, run_dir: Path) -> None:
    """The parts this process holds cover the ``n`` samples, each once (what the merge writes)."""
    count = np.zeros(n, dtype=np.int32)
    for positions in parts.positions:
        np.add.at(count, positions, 1)
    if not np.all(count == 1):
        raise SaecliError(f"{run_dir}: the part files hold a sample twice, or miss one", hint="start a new run", exit_code=1)


@contextmanager
def _writing(run_dir: Path, done: int, manifest: dict[str, Any]) -> Iterator[None]:
    """A failed write (disk full, a folder made read-only, a quota) ends the run with one line; the
    part files already written stay, and ``--resume`` continues from them."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
        raise SaecliError(
            f"cannot write to {run_dir} ({reason}); the {done} samples finished so far are kept",
            hint=f"{fix}, then: {io.resume_command(run_dir, manifest)}",
            exit_code=1,
        ) from None


def execute(
    config: RunConfig,
    *,
    out: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    loaded: LoadedPreset | None = None,
    resume: Path | None = None,
    ray: RayOptions | None = None,
) -> RunResult:
    """Run the analysis described by ``config`` and write its run folder; with ``ray`` (a
    :class:`saecli.cluster.RayOptions`) on the workers of a Ray cluster, the driver alone writing.

    Everything that can be checked without the model (the samples, every option, the preset's
    files) is checked first; then the run folder is claimed (created and locked, see
    :mod:`saecli.rundir`) before the model loads. Finished batches are written as part files as
    the run goes (atomically: a temporary name, then a rename) and the manifest lists the finished
    sample ids, so a run stopped at any moment is completed by ``resume``. At the end the parts are
    merged into ``metrics.parquet`` (rows in input order), atomically, and removed. Input found bad
    after the claim (a text longer than the model's context) leaves nothing behind.
    """
    preset = loaded.preset if loaded is not None else run_preset(config)
    # The data is checked in one pass and its texts read again as the run goes; a resumed run takes the
    # samples its first attempt staged when the data's files have not changed.
    staged = staged_earlier(resume, config) if resume is not None else None
    selection = run_selection(config) if staged is None else None
    if loaded is None:
        check_preset_files(preset)
    if ray is not None and config.mode != "batched":
        raise SaecliError(
            "--ray runs the batched analysis; the sequential reference runs on one machine", hint="use `saecli run --ray`"
        )
    target = resume if resume is not None else out
    with claim_run_dir(target, preset_name=preset.name, force=force, resume=resume is not None) as claim:
        try:
            return _execute_claimed(
                config,
                claim.path,
                preset,
                selection,
                staged,
                loaded=loaded,
                progress=progress,
                resuming=resume is not None,
                ray=ray,
            )
        except KeyboardInterrupt:
            if (claim.path / io.MANIFEST_FILE).is_file():
                raise RunInterrupted(claim.path, io.resume_command(claim.path, {"mode": config.mode})) from None
            raise


def _execute_claimed(
    config: RunConfig,
    run_dir: Path,
    preset: Any,
    selection: Selection | None,
    staged: tuple[StagedSamples, str] | None,
    *,
    loaded: LoadedPreset | None,
    progress: Progress | None,
    resuming: bool,
    ray: Any,
) -> RunResult:
    previous = io.read_manifest(run_dir) if resuming else None
    if previous is not None and previous.get("status") == "complete" and not (run_dir / io.PARTS_DIR).exists():
        if remove_input(run_dir):
            log.info("removed the staged input the finished run left")
        fingerprint = staged[1] if staged is not None else data_fingerprint(selection.samples() if selection else [])
        check_resumable(previous, stored_identity(config, previous, fingerprint), run_dir)
        _, manifest = io.read_run(run_dir)
        io.check_complete(manifest, run_dir)
        log.warning("%s is already complete; nothing to resume", run_dir)
        return RunResult(run_dir=run_dir, manifest=manifest)
    if preset.synthetic:
        log.warning("preset %s has random weights: its metrics mean nothing (benchmarking only)", preset.name)
    if staged is not None and not staged[0].path.is_file():
        raise SaecliError(f"{run_dir} changed while this run was starting", hint="run the same command again")
    with staged_input(run_dir, reuse=staged is not None, keep_on_error=previous is not None) as staging:
        if staged is None:
            assert selection is not None
            samples, fingerprint = stage_samples(selection, staging.folder)
            record_staged(staging, samples, fingerprint, config)
        else:
            samples, fingerprint = staged
        backend = _backend(config, preset, loaded, ray)
        try:
            return _analyse(config, run_dir, preset, samples, fingerprint, staging, backend, previous=previous, progress=progress)
        finally:
            backend.close()


def _backend(config: RunConfig, preset: Any, loaded: LoadedPreset | None, ray: Any) -> Backend:
    if ray is not None:
        from saecli.workers import RayBackend

        return RayBackend(ray, preset, config)
    return LocalBackend(loaded or load_preset(preset, device=config.device, dtype=config.dtype), config)


def _analyse(
    config: RunConfig,
    run_dir: Path,
    preset: Any,
    samples: StagedSamples,
    fingerprint: str,
    staging: Staging,
    backend: Backend,
    *,
    previous: dict[str, Any] | None,
    progress: Progress | None,
) -> RunResult:
    """Start the manifest, analyse what is not finished yet (part by part), merge, finish."""
    info = backend.info
    ident = identity(config, info.layers, info.dtype, fingerprint)
    if previous is not None:
        check_resumable(previous, ident, run_dir)
    done = _finished_so_far(run_dir, samples.ids, info.layers, ident, config.mode) if previous is not None else Parts()
    todo = unfinished(len(samples), done.positions)
    packed = _checked_tokens(backend, samples, todo, staging.folder) if previous is None else None
    state, batch_size = _start(config, run_dir, samples, backend, ident, previous=previous)
    staging.keep_on_error = True  # the run has its manifest: --resume continues it from its parts and staged input
    work = _Work(done=len(samples) - len(todo), parts=done, todo=todo, earlier_backoffs=list(state["backoffs"]))
    if progress is not None:
        progress(work.done, len(samples))
    started = time.perf_counter()
    try:
        for window in windows(len(todo), batch_size):
            work.todo = todo[window.start : window.stop]
            chunk = samples.window(work.todo)
            toks = packed.unpack(window.start, window.stop) if packed is not None else backend.tokenize(chunk)
            for batch in backend.batches(chunk, toks, batch_size, progress):
                crash_point("batch_done")
                with backend.timer("write"), _writing(run_dir, work.done, state):
                    _write_part(batch, run_dir, state, work, info.layers, samples.ids)
                    # The parts say which samples are finished; the manifest is rewritten only when what
                    # it records changes (an out-of-memory backoff), so a batch writes a bounded amount.
                    backoffs = work.earlier_backoffs + backend.backoffs
                    if backoffs != state["backoffs"]:
                        state["backoffs"] = backoffs
                        io.write_manifest(state, run_dir)
                if progress is not None:
                    progress(work.done, len(samples))
    except Exception as exc:
        if is_oom(exc):
            raise oom_message(1, preset.name, info.device) from None
        raise
    return _finish(config, run_dir, samples, backend, state, work, time.perf_counter() - started, resumed=previous is not None)


def _checked_tokens(backend: Backend, samples: StagedSamples, todo: Any, folder: Path) -> TokenFile:
    """Every sample of a new run tokenized before anything is written, so that a text too long for
    the model leaves the folder as it was; kept packed (about 4 bytes a token) on disk beside the
    staged samples until its window runs. A resumed run skips this: the run that started it checked
    every sample, and it tokenizes each window as it comes (resuming starts at once)."""
    tokens = TokenFile(folder)
    for w in windows(len(todo), 1):
        tokens.append(PackedTokens.pack(backend.tokenize(samples.window(todo[w.start : w.stop]))))
    return tokens


@dataclass
class _Work:
    """What the analysis has done so far in this process (for the progress, the parts and the manifest)."""

    done: int
    parts: Parts
    """The run's parts on disk, as this process wrote and compacted them."""
    todo: Any
    """The input positions of the samples of the window being analysed (np.ndarray; a batch's indices index it)."""
    earlier_backoffs: list[dict[str, Any]]
    """Out-of-memory backoffs of the run before it was resumed (this process's are the backend's)."""
    analysed: int = 0
    """Samples analysed in this process (``done`` also counts those a resumed run finished before)."""
    tokens: int = 0
    forwarded: int = 0
    """Token positions forwarded (padded)."""
    forwarded_real: int = 0
    """The real tokens among them."""


def _start(config: RunConfig, run_dir: Path, samples: StagedSamples, backend: Backend, ident: dict[str, Any], *,
           previous: dict[str, Any] | None) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The batch size (probed for ``auto``) and the manifest of the run as it starts, written after
    clearing what the folder held: this run's own half-written files (resume) or an earlier run's
    that --force replaces (its table first, so that an interruption never leaves an old
    metrics.parquet under the new run's manifest)."""
    batch_size, auto = config.batch_size, None
    if config.mode == "batched" and batch_size == "auto":
        auto = backend.auto_batch_size(samples.probe_candidates())
        batch_size = auto.size
    batch_size = batch_size if config.mode == "batched" else 1
    earlier_backoffs = list(previous.get("backoffs", [])) if previous else []
    data_source = str(config.data) if config.data else f"built-in ({builtin_benchmark_path().name})"
    state = start_manifest(config, backend.info, ident, n_samples=len(samples), data_source=data_source, batch_size=batch_size,
                           backoffs=earlier_backoffs)  # fmt: skip
    if auto is not None:
        state["batch_size_auto"] = {"chosen": auto.size, "reason": auto.reason, "probes": auto.probes}
    with _writing(run_dir, 0, state):
        if previous is not None:
            for path in io.remove_temporaries(run_dir):
                log.info("removed %s, left half-written by the interrupted run", path.name)
        else:
            for path in clear_outputs(run_dir):
                log.info("--force: removed %s of the earlier run", path.relative_to(run_dir))
        crash_point("before_manifest")
        io.write_manifest(state, run_dir)
    crash_point("after_manifest")
    return state, batch_size


def _finished_so_far(run_dir: Path, ids: list[str], layers: list[int], ident: dict[str, Any], mode: str) -> Parts:
    """The checked parts of the run (:func:`saecli.parts.check_parts`: a broken part is removed and
    analysed again; another run's part is refused), each row's input position found, before any
    work starts."""
    parts = check_parts(run_dir, layers, ident, io.resume_command(run_dir, {"mode": mode}))
    parts.locate(run_dir, ids)
    return parts


def _write_part(batch: BatchResult, run_dir: Path, state: dict[str, Any], work: _Work, layers: list[int], ids: list[str]) -> None:
    """One finished batch as a part file (its residuals first: a part's samples count as done once
    its table is there), its work counted, and the parts compacted when a tier is full."""
    part = io.rows_to_frame(batch.rows, layers)
    positions = work.todo[np.asarray(batch.indices, dtype=np.int64)]
    if part["sample_id"].to_list() != [ids[i] for i in positions]:
        raise RuntimeError("a batch's rows are not its samples")  # the engine's contract; never the user's input
    number = work.parts.last_number + 1
    table = write_part(part, run_dir, number, state["identity"], batch.residuals)
    work.parts.add(number, table, part["sample_id"], positions, residuals=batch.residuals is not None)
    crash_point("after_part")
    work.done += len(batch.indices)
    work.analysed += len(batch.indices)
    work.tokens += batch.tokens
    work.forwarded += batch.forwarded_tokens
    work.forwarded_real += batch.forwarded_real_tokens
    compact(work.parts, run_dir, state["identity"], layers)


def _finish(config: RunConfig, run_dir: Path, samples: StagedSamples, backend: Backend, state: dict[str, Any], work: _Work,
            analysis_seconds: float, *, resumed: bool) -> RunResult:  # fmt: skip
    """Merge the parts into metrics.parquet (and the residuals), keep the samples' texts beside them
    (samples.parquet), write the final manifest, remove the parts."""
    crash_point("before_merge")
    ids = samples.ids
    layers = backend.info.layers
    # The parts as this process checked (at resume) or wrote and compacted them, with their rows' input
    # positions: not read and joined again (a million ids joined at once was this run's peak memory).
    parts = work.parts
    _every_sample_once(parts, len(ids), run_dir)
    files = {}
    with backend.timer("write"), _writing(run_dir, work.done, state):
        pieces = [parts.piece(k, run_dir) for k in range(len(parts.numbers))]
        if config.baselines:
            if not all(parts.with_residuals):
                raise SaecliError(f"{run_dir}: a finished part has no residuals", hint="start a new run", exit_code=1)
            write_residuals_file(pieces, ids, layers, run_dir / io.RESIDUALS_FILE, run=state["config_hash"])
            files[io.RESIDUALS_FILE] = io.file_record(run_dir / io.RESIDUALS_FILE)
        write_table(pieces, layers, run_dir / io.METRICS_FILE)
        files[io.METRICS_FILE] = io.file_record(run_dir / io.METRICS_FILE)
        files[io.SAMPLES_FILE] = io.file_record(
            io.write_samples(samples.frames(), run_dir)
        )  # the table's rows are in `ids` order
    crash_point("after_merge")
    state = {**state, "backoffs": work.earlier_backoffs + backend.backoffs, **backend.record(), "files": files}
    forwarded, real = work.forwarded, work.forwarded_real
    state["padding"] = {
        "forwarded_tokens": forwarded,
        "real_tokens": real,
        "fraction": round(1 - real / forwarded, 4) if forwarded else 0.0,
    }
    manifest = finish_manifest(state, load_seconds=backend.info.load_seconds, stages=backend.stages(), n_tokens=work.tokens,
                               analysis_seconds=analysis_seconds, n_analysed=work.analysed, resumed=resumed,
                               peak=backend.peak())  # fmt: skip
    with _writing(run_dir, work.done, state):
        io.write_manifest(manifest, run_dir)
    crash_point("after_final_manifest")
    io.remove_parts(run_dir)
    return RunResult(run_dir=run_dir, manifest=manifest)


def domain_summary(frame: pl.DataFrame | pl.LazyFrame, layers: list[int]) -> pl.DataFrame:
    """Per domain, the mean hall − fact difference of the headline metrics (and all domains). A
    LazyFrame (a scan of ``metrics.parquet``) is read by streaming, only the columns needed."""
    headline = {layer_metric(layer, "reconstruction_error"): lambda kind, layer=layer: layer_column(layer, kind, "reconstruction_error")
                for layer in layers}  # fmt: skip
    headline[layer_metric(layers[0], "l0_norm")] = lambda kind: layer_column(layers[0], kind, "l0_norm")
    for base in PAIRED_METRICS:
        headline[base] = lambda kind, base=base: paired_column(base, kind)
    exprs = [
        (pl.col(column("hall")).cast(pl.Float64) - pl.col(column("fact")).cast(pl.Float64)).mean().alias(name)
        for name, column in headline.items()
    ]
    lazy = frame.lazy()
    by_domain = lazy.group_by("domain", maintain_order=True).agg(pl.len().alias("n"), *exprs).collect(engine="streaming")
    overall = lazy.select(pl.lit("all").alias("domain"), pl.len().alias("n"), *exprs).collect(engine="streaming")
    return pl.concat([by_domain, overall.cast(by_domain.schema)])
