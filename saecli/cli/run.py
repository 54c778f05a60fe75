"""``saecli run`` (batched) and ``saecli sequential`` (the one-text-at-a-time reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from saecli.cli.app import (
    ColumnsOpt,
    ConfigOpt,
    DataOpt,
    Device,
    DeviceOpt,
    DomainsOpt,
    DType,
    DTypeOpt,
    ForceOpt,
    JsonOpt,
    LimitOpt,
    NoiseOpt,
    OutOpt,
    PresetOpt,
    RayOpt,
    SeedOpt,
    ThreadsOpt,
    app,
    emit_json,
    parse_batch_size,
    preset_arg,
    stderr,
    stdout,
)
from saecli.config import DEFAULT_PRESET, check_option, find_preset, resolve_run_config
from saecli.errors import RunInterrupted, SaecliError
from saecli.runner import RunResult, domain_summary, execute, resume_config


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
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
        stderr.print("[yellow]note:[/] this preset has random weights; its metrics mean nothing.")
    summary = domain_summary(result.frame, m["layers"])
    table = Table(title=f"Mean hall − fact by domain ({m['preset']['name']}, {m['samples']} samples)")
    table.add_column("metric", no_wrap=True)
    domains = summary["domain"].to_list()
    for domain, n in zip(domains, summary["n"].to_list(), strict=False):
        table.add_column(f"{domain}\nn={n}", justify="right")
    for metric in summary.columns[2:]:
        table.add_row(metric, *[f"{v:+.4f}" if v is not None else "–" for v in summary[metric].to_list()])
    stdout.print(table)
    t = m["timings"]
    stdout.print(
        f"{m['samples']} samples in {t['analysis_seconds']:.1f}s ({t['samples_per_second']:.1f} samples/s, "
        f"load {t['load_seconds']:.1f}s) on {m['device']} ({m['device_reason']}), {m['dtype']}, batch size {m['batch_size']}"
    )
    stdout.print(f"results: {result.run_dir / 'metrics.parquet'}")


def _run(
    mode: str,
    *,
    preset: str | None,
    config: Path | None,
    data: Path | None,
    limit: int | None,
    domains: str | None,
    batch_size: str | None,
    columns: str | None = None,
    seed: int | None,
    noise_std: float | None,
    device: Device | None,
    dtype: DType | None,
    out: Path | None,
    force: bool,
    resume: Path | None,
    truncate: bool,
    report: bool,
    as_json: bool,
    baselines: bool | None = None,
    threads: int | None = None,
    ray: str | None = None,
    workers: int | None = None,
    worker_cpus: int | None = None,
) -> None:
    """What ``run`` and ``sequential`` share: flags → RunConfig, one call to the runner, render."""
    preset_name = preset_arg(preset, config)
    # None means "not given": the preset's defaults (or, on --resume, the run's own settings) stand.
    flags: dict[str, Any] = {
        "preset": preset_name,
        "data": str(data) if data is not None else None,
        "columns": check_option("columns", columns, "--columns"),
        "limit": limit,
        "domains": domains,
        "batch_size": parse_batch_size(batch_size),
        "seed": seed,
        "noise_std": noise_std,
        "device": device.value if device is not None else None,
        "dtype": dtype.value if dtype is not None else None,
        "mode": mode,
        "truncate": True if truncate else None,
        "baselines": baselines,
        "threads": threads,
    }
    ray_options = None
    if ray is not None:
        from saecli.cluster import DEFAULT_WORKER_CPUS, RayOptions, import_ray

        import_ray()  # a missing Ray is one line before anything else
        ray_options = RayOptions(address=None if ray == "local" else ray, workers=workers,
                                 worker_cpus=worker_cpus if worker_cpus is not None else DEFAULT_WORKER_CPUS)  # fmt: skip
    elif workers is not None or worker_cpus is not None:
        raise SaecliError("--workers and --worker-cpus need --ray", hint="e.g. saecli run --ray --workers 2")
    if resume is not None:
        if out is not None:
            raise SaecliError("--resume continues the given folder; do not also pass --out")
        if force:
            raise SaecliError("--resume continues the given folder; --force would replace it: give only one of them")
        run_config = resume_config(resume, **flags)
        chosen = find_preset(run_config.preset)
    else:
        chosen = find_preset(preset_name or DEFAULT_PRESET)
        run_config = resolve_run_config(chosen, **{**flags, "preset": preset_name or DEFAULT_PRESET})
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
            stderr.print("[yellow]interrupted.[/] Finished samples are kept; continue with:")
            stderr.print(f"  {stop.resume_command}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            progress.stop()
            stderr.print("[yellow]interrupted.[/] Nothing was written.")
            raise typer.Exit(130) from None
        except SaecliError:
            progress.live.transient = True  # the error is the one line left on stderr
            raise
    _render(result, as_json)
    if report:
        from saecli.cli.report import render_report
        from saecli.report import make_report

        with stderr.status("writing the report"):
            made = make_report(result.run_dir)
        if not as_json:
            render_report(made)


ResumeOpt = Annotated[
    Path | None, typer.Option("--resume", help="Continue an interrupted run folder (its own settings are kept).", show_default=False)
]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Cut texts longer than the model's context from the left.")]
BaselinesOpt = Annotated[
    bool | None,
    typer.Option("--baselines/--no-baselines", help="Score the continuations' log-probabilities and keep the residual vectors "
                 "(residuals.safetensors) for the report's baselines and probes [default: on]; off is faster.", show_default=False),
]
ReportOpt = Annotated[bool, typer.Option("--report", help="Also write the report (dashboard.png, detection.csv, summary.md).")]


@app.command()
def run(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
    domains: DomainsOpt = None,
    batch_size: Annotated[
        str | None,
        typer.Option("--batch-size", "-b", help="Samples per batch, or 'auto' for the largest that fits (probed) [default: 16].", show_default=False),
    ] = None,
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
    workers: Annotated[
        int | None, typer.Option("--workers", help="Ray workers [default: one per GPU; without GPUs one per --worker-cpus CPUs].", show_default=False)
    ] = None,
    worker_cpus: Annotated[
        int | None, typer.Option("--worker-cpus", help="CPUs (and torch threads) per Ray worker on a cluster without GPUs [default: 1].", show_default=False)
    ] = None,
) -> None:
    """Analyse the benchmark in batches and write **metrics.parquet** and **manifest.json**.

    Example: `saecli run --batch-size 16`, `saecli run --preset gemma-2-2b --data ../shared/data/hb`,
    `saecli run --ray auto` (every GPU of a Ray cluster).
    """
    _run("batched", preset=preset, config=config, data=data, columns=columns, limit=limit, domains=domains, batch_size=batch_size,
         seed=seed, noise_std=noise_std, device=device, dtype=dtype, out=out, force=force, as_json=json_,
         resume=resume, truncate=truncate, report=report, threads=threads, ray=ray, workers=workers, worker_cpus=worker_cpus,
         baselines=baselines)


@app.command()
def sequential(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
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
    _run("sequential", preset=preset, config=config, data=data, columns=columns, limit=limit, domains=domains, batch_size=None,
         seed=seed, noise_std=noise_std, device=device, dtype=dtype, out=out, force=force, as_json=json_,
         resume=resume, truncate=truncate, report=report, threads=threads, baselines=baselines)

