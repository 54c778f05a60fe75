"""``saecli bench``: which batch size is fastest here without running out of memory."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from saecli.bench import (
    BASELINE_MODES,
    CSV_FILE,
    DEFAULT_RAY_BATCH,
    DEFAULT_RAY_WORKERS,
    DEFAULT_SIZES,
    JSON_FILE,
    MAX_REPEATS,
    SEQUENTIAL,
    RaySweep,
    SizeResult,
    Sweep,
    WorkersResult,
    check_options,
    check_ray_options,
    prepare_out_dir,
    save,
)
from saecli.bench.sweep import sweep
from saecli.cli.app import command, emit_json, results_in, stderr, stdout
from saecli.cli.options import (
    ColumnsOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DomainsOpt,
    DTypeOpt,
    LayersOpt,
    LimitOrderOpt,
    NoiseOpt,
    PresetOpt,
    RayOpt,
    RunFlags,
    SeedOpt,
    ThreadsOpt,
    TruncateOpt,
    WorkerCpusOpt,
    json_option,
    out_option,
    parse_counts,
    resolve_run,
)
from saecli.errors import SaecliError

Baselines = Enum("Baselines", {mode: mode for mode in BASELINE_MODES}, type=str)  # type: ignore[misc]


def _gib(value: int | float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


SizesOpt = Annotated[
    str | None,
    typer.Option(
        "--sizes",
        help=f"Batch sizes to measure, comma-separated [default: {','.join(map(str, DEFAULT_SIZES))}; "
        f"with --ray one size, {DEFAULT_RAY_BATCH}].",
        show_default=False,
    ),
]
# --limit and --repeats are checked by saecli.bench.check_options (one line), not by typer (a usage box).
BenchLimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        "-n",
        help="Samples per pass [default: the preset's, else 4 × the largest size (with --ray × "
        "the most workers), at most the data].",
        show_default=False,
    ),
]
SequentialOpt = Annotated[
    bool | None,
    typer.Option(
        "--sequential/--no-sequential",
        help="Also measure the sequential reference [default: on; off with --ray].",
        show_default=False,
    ),
]
BaselinesModeOpt = Annotated[
    Baselines,
    typer.Option(
        "--baselines",
        help="Time the analysis with the log-probability baselines and residuals (as `run`), "
        "without them (`run --no-baselines`), or both (the second after, in the same process).",
    ),
]
WorkerCountsOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N,M,...",
        show_default=False,
        help=f"With --ray: numbers of Ray workers to measure, comma-separated [default: {','.join(map(str, DEFAULT_RAY_WORKERS))}].",
    ),
]


@command()
def bench(
    sizes: SizesOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: BenchLimitOpt = None,
    limit_order: LimitOrderOpt = None,
    domains: DomainsOpt = None,
    repeats: Annotated[
        int, typer.Option("--repeats", help=f"Timed passes per size (1 to {MAX_REPEATS}); the median is reported.")
    ] = 3,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    truncate: TruncateOpt = False,
    threads: ThreadsOpt = None,
    sequential: SequentialOpt = None,
    baselines: BaselinesModeOpt = Baselines.both,
    out: Annotated[Path | None, out_option("bench/<UTC time>-<preset>", "Folder for bench.json and bench.csv")] = None,
    json_: Annotated[bool, json_option("the sweep (bench.json's document)")] = False,
    ray: RayOpt = None,
    workers: WorkerCountsOpt = None,
    worker_cpus: WorkerCpusOpt = None,
) -> None:
    """Sweep batch sizes, each in a fresh process: time (median of --repeats after a warm-up),
    samples/s, tokens/s, speedups, peak memory and the time per stage; then recommend a size.
    With --ray: the whole analysis on each number of --workers instead (one batch size), with
    throughput, scaling efficiency and peak memory per worker.

    Every run option of `run` that applies (--columns, --domains, --seed, --noise-std, --truncate,
    --threads, ...) and the preset's [defaults] apply here too; bench.json records the resolved
    configuration.

    Example: `saecli bench --sizes 1,4,8,16,32`, `saecli bench --preset gpt2-small-shape --limit 64`,
    `saecli bench --ray --workers 1,2,4`.
    """
    # --baselines both|on|off: "both" measures the run's setting (on unless the preset says off) and then off.
    flags = RunFlags.pick({**locals(), "baselines": {"on": True, "off": False}.get(baselines.value)})
    if ray is not None:
        _bench_ray(ray, flags, workers=workers, worker_cpus=worker_cpus, sizes=sizes, sequential=sequential, repeats=repeats,
                   baselines=baselines.value, out=out, json_=json_)  # fmt: skip
        return
    if workers is not None or worker_cpus is not None:
        raise SaecliError("--workers and --worker-cpus need --ray", hint="e.g. saecli bench --ray --workers 1,2")
    _bench_sizes(flags, sizes=sizes, sequential=sequential, repeats=repeats, baselines=baselines.value, out=out, json_=json_)


def _bench_sizes(flags: RunFlags, *, sizes: str | None, sequential: bool | None, repeats: int, baselines: str, out: Path | None,
                 json_: bool) -> None:  # fmt: skip
    """``bench``: the batch-size sweep."""
    size_list = parse_counts(sizes, "--sizes") if sizes is not None else list(DEFAULT_SIZES)
    check_options(sizes=size_list, repeats=repeats, limit=flags.limit)
    chosen, run_config = resolve_run(flags)
    run_config = dataclasses.replace(run_config, limit=run_config.limit or 4 * max(size_list))
    target = prepare_out_dir(out, chosen.name)  # before measuring: a folder that refuses files loses nothing
    if chosen.synthetic:
        stderr.print(
            Text.assemble(("note:", "yellow"), f" {chosen.name} has random weights: it measures cost; its metrics mean nothing.")
        )
    try:
        with _SizesProgress() as bar:
            result = sweep(run_config, sizes=size_list, repeats=repeats, include_sequential=sequential is not False,
                           baselines=baselines, on_start=bar.start, on_progress=bar.progress, on_done=bar.done)  # fmt: skip
    except BaseException:
        target.discard()
        raise
    _save_and_print(result, target.path, lambda saved: _print(result, json_, saved=saved))


class _SizesProgress:
    """The sweep on stderr: a bar for the size being measured (the samples of its timed passes), and
    a line for each size measured. The bar goes when its size is done (it is transient: a log gets
    the lines alone)."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=stderr, transient=True)  # fmt: skip
        self.task: TaskID | None = None

    def __enter__(self) -> _SizesProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, size: int | str) -> None:
        self.task = self.bar.add_task(f"{_label(size)}: loading (fresh process)", total=None)

    def progress(self, size: int | str, step: str, done: int, total: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, description=f"{_label(size)}: {step}", completed=done, total=total)

    def done(self, result: SizeResult) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.bar.refresh()  # else the line below would be printed with the finished bar redrawn under it
            self.task = None
        stderr.print(_line(result))


def _label(size: int | str) -> str:
    return "sequential" if size == SEQUENTIAL else f"batch size {size}"


def _print(result: Sweep, json_: bool, *, saved: Path | None) -> None:
    """The sweep as JSON or as a table with the recommendation, then where it was saved."""
    if json_:
        emit_json(result.to_dict())
        return
    table = Table(
        title=f"saecli bench: {result.preset}, {result.samples} samples, {result.device} {result.dtype}, median of {result.repeats}"
    )
    both = any(r.samples_per_second_no_baselines for r in result.results)
    columns = (
        "size",
        "s",
        "samples/s",
        *(("no-bl/s",) if both else ()),
        "tok/s",
        "×b1",
        "×seq",
        "peak GiB",
        "+GiB",
        "fwd GF/s",
        "util",
        "SAE GF/s",
        "util",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "size" else "right", no_wrap=True, min_width=len(column))
    for r in result.results:
        label = "seq" if r.size == SEQUENTIAL else str(r.size)
        if not r.ok:
            table.add_row(label, Text("OOM" if r.oom else "failed", style="red"), *[""] * (len(columns) - 2))
            continue
        table.add_row(
            label, f"{r.seconds_median:.3f}", f"{r.samples_per_second:.1f}",
            *((_num(r.samples_per_second_no_baselines),) if both else ()), f"{r.tokens_per_second:.0f}",
            _x(r.speedup_vs_batch1), _x(r.speedup_vs_sequential), _gib(r.peak_memory), _gib(r.peak_increase),
            _num(r.forward_gflops), _pct(r.forward_utilization), _num(r.sae_gflops), _pct(r.sae_utilization),
        )  # fmt: skip
    stdout.print(table)
    peaks = sorted(r.peak_gflops for r in result.results if r.ok and r.peak_gflops)
    if peaks:
        sae_peaks = sorted(r.sae_peak_gflops for r in result.results if r.ok and r.sae_peak_gflops)
        sae_note = f"; SAE dtype {sae_peaks[len(sae_peaks) // 2]:.0f}" if sae_peaks and sae_peaks != peaks else ""
        stdout.print(f"GF/s: GFLOP/s counted from the shapes and the positions forwarded (padding included); util: ÷ the "
                     f"torch.mm peak measured in each size's process (median {peaks[len(peaks) // 2]:.0f} GFLOP/s{sae_note})",
                     highlight=False)  # fmt: skip
    best = next((r for r in result.results if r.size == result.recommended), None)
    if best is not None:
        stdout.print(f"time per stage at batch {best.size}: {_stages(best, 6)}")
    if result.recommended is not None:
        stdout.print(Text.assemble("recommended: ", (f"--batch-size {result.recommended}", "bold"), f" ({result.reason})"))
    else:
        stdout.print(Text.assemble(("no recommendation:", "red"), f" {result.reason}"))
    if saved is not None:
        stdout.print(f"saved: {saved / JSON_FILE}, {saved / CSV_FILE}", highlight=False, soft_wrap=True)


def _bench_ray(address: str, flags: RunFlags, *, workers: str | None, worker_cpus: int | None, sizes: str | None,
               sequential: bool | None, repeats: int, baselines: str, out: Path | None, json_: bool) -> None:  # fmt: skip
    """``bench --ray``: the same analysis on each number of Ray workers."""
    from saecli.bench.ray import ray_sweep
    from saecli.cluster import DEFAULT_WORKER_CPUS, RayOptions, import_ray

    worker_list = parse_counts(workers, "--workers", "1,2,4") if workers is not None else list(DEFAULT_RAY_WORKERS)
    size_list = parse_counts(sizes, "--sizes") if sizes is not None else [DEFAULT_RAY_BATCH]
    check_ray_options(workers=worker_list, sizes=size_list, repeats=repeats, limit=flags.limit)
    if sequential:
        raise SaecliError("bench --ray measures the batched analysis; the sequential reference runs on one machine",
                          hint="drop --sequential, or bench without --ray")  # fmt: skip
    options = RayOptions(address=None if address == "local" else address,
                         worker_cpus=worker_cpus if worker_cpus is not None else DEFAULT_WORKER_CPUS)  # fmt: skip
    import_ray()  # a missing Ray is one line before anything else
    chosen, run_config = resolve_run(flags)
    run_config = dataclasses.replace(run_config, batch_size=size_list[0],
                                     limit=run_config.limit or 4 * size_list[0] * max(worker_list))  # fmt: skip
    target = prepare_out_dir(out, chosen.name)
    if chosen.synthetic:
        stderr.print(
            Text.assemble(("note:", "yellow"), f" {chosen.name} has random weights: it measures cost; its metrics mean nothing.")
        )

    def started(k: int, runs: int) -> None:
        what = "warm-up run (not counted)" if runs == 0 else f"{runs} run(s)"
        status.update(f"{k} Ray worker(s): {what}")

    try:
        with stderr.status("starting Ray") as status:
            result = ray_sweep(run_config, workers=worker_list, repeats=repeats, ray=options, baselines=baselines, on_start=started,
                               on_done=lambda r: stderr.print(_ray_line(r)))  # fmt: skip
    except BaseException:
        target.discard()
        raise
    _save_and_print(result, target.path, lambda saved: _print_ray(result, json_, saved=saved))


def _save_and_print(result: Sweep | RaySweep, folder: Path, show: Any) -> None:
    """Save bench.json/bench.csv, then show the results; if saving fails, the measurements still go
    to stdout first: a full disk must not cost the sweep."""
    try:
        save(result, folder)
    except SaecliError as exc:
        show(None)
        raise SaecliError(f"{exc.message} (the results are printed above)", hint=exc.hint, exit_code=exc.exit_code) from None
    results_in(folder)
    show(folder)


def _ray_line(r: WorkersResult) -> str:
    if not r.ok:
        return f"  {r.workers} worker(s): failed ({r.error})"
    rates = ", ".join("–" if v is None else f"{v:.1f}" for v in r.per_worker_samples_per_second)
    return (f"  {r.workers} worker(s): {r.samples_per_second:.1f} samples/s (per worker, busy time: {rates}), "
            f"peak {_gib(r.peak_memory_per_worker)} GiB per worker")  # fmt: skip


def _print_ray(result: RaySweep, json_: bool, *, saved: Path | None) -> None:
    if json_:
        emit_json(result.to_dict())
        return
    nodes = len(result.nodes)
    table = Table(title=f"saecli bench --ray: {result.preset}, {result.samples} samples, batch {result.batch_size}, "
                        f"{result.device} {result.dtype}, median of {result.repeats}",
                  caption=f"Ray {result.ray_version}, {nodes} node{'s' if nodes != 1 else ''}, {result.worker_cpus} CPU(s) per worker without GPUs")  # fmt: skip
    both = any(r.samples_per_second_no_baselines for r in result.results)
    columns = ("workers", "s", "samples/s", *(("no-bl/s",) if both else ()), "×1 worker", "efficiency", "GiB/worker")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for r in result.results:
        if not r.ok:
            table.add_row(str(r.workers), Text("failed", style="red"), *[""] * (len(columns) - 2))
            continue
        table.add_row(
            str(r.workers), f"{r.seconds_median:.3f}", f"{r.samples_per_second:.1f}",
            *((_num(r.samples_per_second_no_baselines),) if both else ()), _x(r.speedup_vs_1_worker),
            "–" if r.efficiency is None else f"{r.efficiency:.0%}", _gib(r.peak_memory_per_worker),
        )  # fmt: skip
    stdout.print(table)
    done = [r for r in result.results if r.ok]
    stdout.print("s: the analysis alone (median), not starting the workers and loading the preset on each (" +
                 ", ".join(f"{r.workers}: {r.load_seconds:.1f} s" for r in done) + "); efficiency: samples/s ÷ (workers × samples/s "
                 "on 1 worker); GiB/worker: the largest worker's peak (driver: " + ", ".join(_gib(r.peak_memory_driver) for r in done) + ")",
                 highlight=False)  # fmt: skip
    for r in result.results:
        if not r.ok:
            stdout.print(Text.assemble((f"{r.workers} worker(s) failed:", "red"), f" {r.error}"))
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
    plain = f" ({r.samples_per_second_no_baselines:.1f} without baselines)" if r.samples_per_second_no_baselines else ""
    return f"  {label}: {r.samples_per_second:.1f} samples/s{plain}, peak {_gib(r.peak_memory)} GiB"
