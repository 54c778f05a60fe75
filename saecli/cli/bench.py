"""``saecli bench``: which batch size is fastest here without running out of memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from saecli.bench import (
    CSV_FILE,
    JSON_FILE,
    MAX_REPEATS,
    SEQUENTIAL,
    SizeResult,
    Sweep,
    check_options,
    prepare_out_dir,
    save,
    sweep,
)
from saecli.cli.app import (
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DomainsOpt,
    DTypeOpt,
    JsonOpt,
    PresetOpt,
    app,
    emit_json,
    parse_sizes,
    preset_arg,
    stderr,
    stdout,
)
from saecli.config import DEFAULT_PRESET, find_preset
from saecli.errors import SaecliError


def _gib(value: int | float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


@app.command()
def bench(
    sizes: Annotated[str, typer.Option("--sizes", help="Batch sizes to measure, comma-separated.")] = "1,4,8,16,32",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    # --limit and --repeats are checked by saecli.bench.check_options (one line), not by typer (a usage box).
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Samples per pass [default: 4 × the largest size, at most the data].", show_default=False)
    ] = None,
    domains: DomainsOpt = None,
    repeats: Annotated[int, typer.Option("--repeats", help=f"Timed passes per size (1 to {MAX_REPEATS}); the median is reported.")] = 3,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    sequential: Annotated[bool, typer.Option("--sequential/--no-sequential", help="Also measure the sequential reference.")] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for bench.json and bench.csv [default: bench/<UTC time>-<preset>].", show_default=False)
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Sweep batch sizes, each in a fresh process: time (median of --repeats after a warm-up),
    samples/s, tokens/s, speedups, peak memory and the time per stage; then recommend a size.

    Example: `saecli bench --sizes 1,4,8,16,32`, `saecli bench --preset gpt2-small-shape --limit 64`.
    """
    size_list = parse_sizes(sizes)
    check_options(sizes=size_list, repeats=repeats, limit=limit)
    name = preset_arg(preset, config) or DEFAULT_PRESET
    chosen = find_preset(name)
    n = limit or 4 * max(size_list)
    target = prepare_out_dir(out, chosen.name)  # before measuring: a folder that refuses files loses nothing
    if chosen.synthetic:
        stderr.print(f"[yellow]note:[/] {chosen.name} has random weights: it measures cost; its metrics mean nothing.")
    try:
        with stderr.status("") as status:
            result = sweep(
                preset=name, sizes=size_list, data=str(data) if data else None, limit=n, repeats=repeats,
                device=device.value if device else "auto", dtype=dtype.value if dtype else None,
                domains=[d for d in domains.split(",") if d] if domains else None, include_sequential=sequential,
                on_start=lambda size: status.update(f"measuring {'sequential' if size == SEQUENTIAL else f'batch size {size}'} (fresh process)"),
                on_done=lambda r: stderr.print(_line(r)),
            )  # fmt: skip
    except BaseException:
        target.discard()
        raise
    try:
        save(result, target.path)
    except SaecliError as exc:
        # The measurements go to stdout first: a full disk must not cost the sweep.
        _print(result, json_, saved=None)
        raise SaecliError(f"{exc.message} (the results are printed above)", hint=exc.hint, exit_code=exc.exit_code) from None
    _print(result, json_, saved=target.path)


def _print(result: Sweep, json_: bool, *, saved: Path | None) -> None:
    """The sweep as JSON or as a table with the recommendation, then where it was saved."""
    if json_:
        emit_json(result.to_dict())
        return
    table = Table(title=f"saecli bench: {result.preset}, {result.samples} samples, {result.device} {result.dtype}, median of {result.repeats}")
    for column in ("size", "s", "samples/s", "tok/s", "×b1", "×seq", "peak GiB", "+GiB"):
        table.add_column(column, justify="left" if column == "size" else "right", no_wrap=True, min_width=len(column))
    for r in result.results:
        label = "seq" if r.size == SEQUENTIAL else str(r.size)
        if not r.ok:
            table.add_row(label, "[red]OOM[/]" if r.oom else "[red]failed[/]", *[""] * 6)
            continue
        table.add_row(
            label, f"{r.seconds_median:.3f}", f"{r.samples_per_second:.1f}", f"{r.tokens_per_second:.0f}",
            _x(r.speedup_vs_batch1), _x(r.speedup_vs_sequential), _gib(r.peak_memory), _gib(r.peak_increase),
        )
    stdout.print(table)
    best = next((r for r in result.results if r.size == result.recommended), None)
    if best is not None:
        stdout.print(f"time per stage at batch {best.size}: {_stages(best, 6)}")
    if result.recommended is not None:
        stdout.print(f"recommended: [bold]--batch-size {result.recommended}[/] ({result.reason})")
    else:
        stdout.print(f"[red]no recommendation:[/] {result.reason}")
    if saved is not None:
        stdout.print(f"saved: {saved / JSON_FILE}, {saved / CSV_FILE}", highlight=False, soft_wrap=True)


def _stages(r: SizeResult, top: int) -> str:
    """The ``top`` largest stages as shares of the pass time."""
    ranked = sorted(r.stages.items(), key=lambda kv: -kv[1])[:top]
    total = r.seconds_median or 1.0
    return ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in ranked)


def _line(r: SizeResult) -> str:
    label = "sequential" if r.size == SEQUENTIAL else f"batch {r.size}"
    if not r.ok:
        return f"  {label}: {'OOM' if r.oom else 'failed'} ({r.error})"
    return f"  {label}: {r.samples_per_second:.1f} samples/s, peak {_gib(r.peak_memory)} GiB"
