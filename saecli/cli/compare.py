"""``saecli compare``: batched against sequential, or two run folders against each other."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from saecli.cli.app import command, emit_json, stderr, stdout
from saecli.cli.options import (
    BaselinesOpt,
    ColumnsOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DomainsOpt,
    DType,
    LayersOpt,
    LimitOpt,
    LimitOrderOpt,
    NoiseOpt,
    PresetOpt,
    RunFlags,
    SeedOpt,
    ThreadsOpt,
    TruncateOpt,
    json_option,
    parse_counts,
    resolve_run,
)
from saecli.compare import Comparison, check_comparable, compare_frames, compare_live
from saecli.errors import SaecliError
from saecli.io import read_run

MAX_LINES = 40


def _fmt(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.3g}"


def _flagged(label: str, rest: str, style: str = "red") -> None:
    """A coloured label, then sample ids and run folders (the user's text) as typed, on one line."""
    stdout.print(Text.assemble((label, style), rest), soft_wrap=True)


def _render(result: Comparison) -> None:
    title = f"{result.label_b} vs {result.label_a}: {result.samples} samples, atol {result.atol:g}, rtol {result.rtol:g}"
    table = Table(title=title)
    for name, justify in (("column", "left"), ("max |Δ|", "right"), ("max rel Δ", "right"), ("at sample", "left"), ("", "left")):
        table.add_column(name, justify=justify)
    for c in result.columns:
        verdict = Text("pass", style="green") if c.passed else Text(f"FAIL ({c.mismatches})", style="red")
        if c.kind == "discrete":
            table.add_row(c.column, "equal" if c.passed else "differs", "", c.worst_sample or "", verdict)
        else:
            table.add_row(c.column, _fmt(c.max_abs), _fmt(c.max_rel), c.worst_sample or "", verdict)
    stdout.print(table)
    for sid in result.missing_in_b:
        _flagged("missing", f" sample {sid} is in {result.label_a} but not in {result.label_b}")
    for sid in result.missing_in_a:
        _flagged("extra", f" sample {sid} is in {result.label_b} but not in {result.label_a}")
    for m in result.mismatches[:MAX_LINES]:
        near = result.near_threshold.get(m.sample_id)
        note = f" ({near} near-threshold SAE features)" if near is not None else ""
        _flagged("mismatch", f" sample {m.sample_id} column {m.column}: {m.a!r} vs {m.b!r}{note}")
    if len(result.mismatches) > MAX_LINES:
        stdout.print(f"... and {len(result.mismatches) - MAX_LINES} more mismatches (see --json)")
    verdict, style = ("PASS", "bold green") if result.passed else ("FAIL", "bold red")
    summary = f" {result.label_b} vs {result.label_a}: max |Δ| {_fmt(result.max_abs)} over {len(result.columns)} columns"
    _flagged(verdict, summary, style)


def _render_drift(drift: dict[str, Comparison]) -> None:
    """Per column, how far each run of the lower precision lies from the float64 reference."""
    if not drift:
        return
    first = next(iter(drift.values()))
    table = Table(title=f"drift against the float64 sequential reference: {first.samples} samples (max |Δ| / median |Δ|)")
    table.add_column("column", justify="left")
    for label in drift:
        table.add_column(label, justify="right")
    for i, column in enumerate(first.columns):
        cells = []
        for result in drift.values():
            c = result.columns[i]
            cells.append(
                f"{c.mismatches} differ"
                if c.kind == "discrete" and c.mismatches
                else "equal"
                if c.kind == "discrete"
                else f"{_fmt(c.max_abs)} / {_fmt(c.median_abs)}"
            )
        table.add_row(column.column, *cells)
    stdout.print(table)


def _check_options(*, atol: float, rtol: float, noise_std: float | None, batch_size: int) -> None:
    """Refuse, before anything is read or run, tolerances that make every check pass or fail whatever
    the data (nan compares false, inf accepts anything), a noise σ that is not a number, and a batch
    size below 1. A batch size above the number of samples is one batch of all of them."""
    for name, value in (("--atol", atol), ("--rtol", rtol), ("--noise-std", noise_std)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise SaecliError(f"{name} must be a finite number >= 0 (got {value})")
    if batch_size < 1:
        raise SaecliError(f"--batch-size must be a whole number >= 1 (got {batch_size})")


def _live(flags: RunFlags, sizes: list[int], *, atol: float, rtol: float) -> tuple[dict[Any, Comparison], dict[str, Comparison], dict[str, Any]]:  # fmt: skip
    """Run the sequential reference and the batched engine now (float64 unless --dtype), a progress
    bar per run: their comparisons, the drift against float64, and the --json document."""
    _, run_config = resolve_run(flags, dtype="float64")
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        live = compare_live(run_config, sizes, atol=atol, rtol=rtol, progress=progress)
    return live.results, live.drift, {**live.to_dict(), "config": dataclasses.asdict(run_config)}


@command()
def compare(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Two run folders to compare. Without them: run sequential and batched now.", show_default=False),
    ] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
    limit_order: LimitOrderOpt = None,
    domains: DomainsOpt = None,
    size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size to check (>= 1).")] = 16,
    sizes: Annotated[
        str | None,
        typer.Option("--sizes", help="Several batch sizes to check, e.g. 1,8,32 (overrides --batch-size).", show_default=False),
    ] = None,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    device: DeviceOpt = None,
    dtype: Annotated[
        DType | None,
        typer.Option(
            "--dtype",
            show_default=False,
            help="float64 checks the algorithm; below it, each run is also measured against a "
            "float64 reference (its drift per column) [default: float64].",
        ),
    ] = None,
    truncate: TruncateOpt = False,
    baselines: BaselinesOpt = None,
    threads: ThreadsOpt = None,
    # Bounds are checked by _check_options (one line), not by typer (a usage box; its range lets inf through).
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance for numeric columns (finite, >= 0).")] = 1e-6,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance for numeric columns (finite, >= 0).")] = 0.0,
    json_: Annotated[bool, json_option("the comparison")] = False,
) -> None:
    """Check that batched and sequential results agree (exit 0) or show where they do not (exit 1).

    Numeric columns pass when |a − b| ≤ atol + rtol·|a|; integer and categorical columns must be equal.
    Every run option of `run` that applies, and the preset's [defaults], apply to both runs.
    Example: `saecli compare --sizes 1,8,32`, `saecli compare runs/A runs/B`.
    """
    flags = RunFlags.pick(locals())
    _check_options(atol=atol, rtol=rtol, noise_std=noise_std, batch_size=size)
    drift: dict[str, Comparison] = {}
    if runs:
        if len(runs) != 2:
            raise SaecliError("compare takes exactly two run folders (or none to run both modes now)")
        frame_a, manifest_a = read_run(runs[0])
        frame_b, manifest_b = read_run(runs[1])
        check_comparable(manifest_a, manifest_b, str(runs[0]), str(runs[1]))
        results = {"runs": compare_frames(frame_a, frame_b, atol=atol, rtol=rtol, label_a=str(runs[0]), label_b=str(runs[1]))}
        document = {"passed": results["runs"].passed, **results["runs"].to_dict()}
    else:
        size_list = parse_counts(sizes, "--sizes") if sizes is not None else [size]
        results, drift, document = _live(flags, size_list, atol=atol, rtol=rtol)
    if json_:
        emit_json(document)
    else:
        for result in results.values():
            _render(result)
        _render_drift(drift)
    raise typer.Exit(0 if all(r.passed for r in results.values()) else 1)
