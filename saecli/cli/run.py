"""``saecli run`` (batched) and ``saecli sequential`` (the one-text-at-a-time reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from saecli.cli.app import command, emit_json, results_in, stderr, stdout
from saecli.cli.options import (
    BaselinesOpt,
    BatchSizeOpt,
    ColumnsOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DomainsOpt,
    DTypeOpt,
    LayersOpt,
    LimitOpt,
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
from saecli.errors import RunInterrupted, SaecliError
from saecli.runner import RunResult, domain_summary, execute


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # the description names the user's preset
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} samples/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


def _render(result: RunResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.manifest)
        return
    m = result.manifest
    if m["preset"]["synthetic"]:
        stderr.print(Text.assemble(("note:", "yellow"), " this preset has random weights; its metrics mean nothing."))
    summary = domain_summary(result.scan(), m["layers"])
    table = Table(title=f"Mean hall − fact by domain ({m['preset']['name']}, {m['samples']} samples)")
    table.add_column("metric", no_wrap=True)
    domains = summary["domain"].to_list()
    for domain, n in zip(domains, summary["n"].to_list(), strict=False):
        table.add_column(f"{domain}\nn={n}", justify="right")
    for metric in summary.columns[2:]:
        table.add_row(metric, *[f"{v:+.4f}" if v is not None else "–" for v in summary[metric].to_list()])
    stdout.print(table)
    t = m["timings"]
    analysed = t.get("samples_analysed", m["samples"])  # manifests before it: every sample counted
    rate = "–" if t["samples_per_second"] is None else f"{t['samples_per_second']:.1f}"
    counted, before = f"{analysed} samples", ""
    if m.get("resumed"):  # the rate is over the samples analysed now: those finished before took no time here
        counted, before = f"{analysed} samples analysed", f"; {m['samples'] - analysed} finished before"
    stdout.print(
        f"{counted} in {t['analysis_seconds']:.1f}s ({rate} samples/s, load {t['load_seconds']:.1f}s{before}) "
        f"on {m['device']} ({m['device_reason']}), {m['dtype']}, batch size {m['batch_size']}"
    )
    stdout.print(f"results: {result.run_dir / 'metrics.parquet'}", soft_wrap=True)  # a path, whole on one line


def _run(
    mode: str,
    flags: RunFlags,
    *,
    out: Path | None,
    force: bool,
    resume: Path | None,
    report: bool,
    as_json: bool,
    ray: str | None = None,
    workers: str | None = None,
    worker_cpus: int | None = None,
) -> None:
    """What ``run`` and ``sequential`` share: flags → RunConfig (:func:`resolve_run`), one call to the runner, render."""
    ray_options = None
    if ray is not None:
        from saecli.cluster import DEFAULT_WORKER_CPUS, RayOptions, import_ray

        import_ray()  # a missing Ray is one line before anything else
        count = parse_counts(workers, "--workers", "2") if workers is not None else None
        if count is not None and len(count) != 1:
            raise SaecliError(
                f"run --workers is one number of Ray workers (got {workers!r})",
                hint="sweep worker counts with `saecli bench --ray --workers 1,2,4`",
            )
        ray_options = RayOptions(address=None if ray == "local" else ray, workers=count[0] if count else None,
                                 worker_cpus=worker_cpus if worker_cpus is not None else DEFAULT_WORKER_CPUS)  # fmt: skip
    elif workers is not None or worker_cpus is not None:
        raise SaecliError("--workers and --worker-cpus need --ray", hint="e.g. saecli run --ray --workers 2")
    if resume is not None:
        if out is not None:
            raise SaecliError("--resume continues the given folder; do not also pass --out")
        if force:
            raise SaecliError("--resume continues the given folder; --force would replace it: give only one of them")
    chosen, run_config = resolve_run(flags, mode=mode, resume=resume)
    with _progress() as progress:
        task = progress.add_task(f"loading {chosen.name}", total=None, rate="–")

        resumed_at: list[int] = []  # samples already done when the analysis started

        busy_note: list[str] = [""]  # "2/2 workers busy" on Ray

        def update(done: int | None = None, total: int | None = None, *, busy: tuple[int, int] | None = None) -> None:
            if busy is not None:
                busy_note[0] = f" ({busy[0]}/{busy[1]} workers busy)"
                progress.update(task, description=f"{mode} {chosen.name}{busy_note[0]}")
                return
            if not resumed_at:  # loading is over; the rate and ETA count from here
                resumed_at.append(done)
                progress.reset(task, total=total, completed=done, description=f"{mode} {chosen.name}{busy_note[0]}", rate="–")
                return
            elapsed = progress.tasks[task].elapsed or 0.0
            rate = f"{(done - resumed_at[0]) / elapsed:.1f}" if elapsed > 0 else "–"
            progress.update(task, completed=done, total=total, rate=rate)

        try:
            result = execute(run_config, out=out, force=force, progress=update, resume=resume, ray=ray_options)
        except RunInterrupted as stop:
            progress.stop()
            stderr.print(Text.assemble(("interrupted.", "yellow"), " Finished samples are kept; continue with:"))
            stderr.print(f"  {stop.resume_command}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            progress.stop()
            stderr.print(Text.assemble(("interrupted.", "yellow"), " Nothing was written."))
            raise typer.Exit(130) from None
        except SaecliError:
            progress.live.transient = True  # the error is the one line left on stderr
            raise
    results_in(result.run_dir)
    _render(result, as_json)
    if report:
        from saecli.cli.report import render_report, report_with_progress

        made = report_with_progress(result.run_dir)
        if not as_json:
            render_report(made)


ResumeOpt = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue an interrupted run folder (its own settings are kept).", show_default=False),
]
ReportOpt = Annotated[bool, typer.Option("--report", help="Also write the report (dashboard.png, detection.csv, summary.md).")]
OutOpt = Annotated[Path | None, out_option("runs/<UTC time>-<preset>", "Run folder")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Write into an existing, non-empty --out folder (replacing only saecli's own files).")
]
JsonOpt = Annotated[bool, json_option("the run's manifest")]
WorkersOpt = Annotated[
    str | None,
    typer.Option("--workers", metavar="N", help="With --ray: Ray workers [default: one per GPU; without GPUs one per --worker-cpus CPUs].",
                 show_default=False),
]  # fmt: skip


@command()
def run(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
    limit_order: LimitOrderOpt = None,
    domains: DomainsOpt = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = None,
    truncate: TruncateOpt = False,
    baselines: BaselinesOpt = None,
    report: ReportOpt = False,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    worker_cpus: WorkerCpusOpt = None,
) -> None:
    """Analyse the benchmark in batches and write **metrics.parquet** and **manifest.json**.

    Example: `saecli run --batch-size 16`, `saecli run --preset gemma-2-2b --data ../shared/data/hb`,
    `saecli run --ray auto` (every GPU of a Ray cluster).
    """
    _run("batched", RunFlags.pick(locals()), out=out, force=force, resume=resume, report=report, as_json=json_, ray=ray,
         workers=workers, worker_cpus=worker_cpus)  # fmt: skip


@command()
def sequential(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
    limit_order: LimitOrderOpt = None,
    domains: DomainsOpt = None,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = None,
    truncate: TruncateOpt = False,
    baselines: BaselinesOpt = None,
    report: ReportOpt = False,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """The reference: one sample at a time, each text in its own forward pass, no padding.

    Slow by design; `saecli compare` checks `run` against it.
    """
    _run("sequential", RunFlags.pick(locals()), out=out, force=force, resume=resume, report=report, as_json=json_)
