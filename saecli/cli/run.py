"""``saecli run`` (batched) and ``saecli sequential`` (the one-text-at-a-time reference)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from saecli.cli.app import (
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DomainsOpt,
    DTypeOpt,
    ForceOpt,
    JsonOpt,
    LimitOpt,
    NoiseOpt,
    OutOpt,
    PresetOpt,
    SeedOpt,
    app,
    parse_batch_size,
    preset_arg,
    stderr,
    stdout,
)
from saecli.config import DEFAULT_PRESET, find_preset, resolve_run_config
from saecli.runner import RunResult, domain_summary, execute


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
        stdout.print_json(json.dumps(result.manifest, default=str))
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


def _run(mode: str, *, preset, config, data, limit, domains, batch_size, seed, noise_std, device, dtype, out, force, as_json) -> None:
    chosen = find_preset(preset_arg(preset, config) or DEFAULT_PRESET)
    run_config = resolve_run_config(
        chosen,
        preset=preset_arg(preset, config) or DEFAULT_PRESET,
        data=str(data) if data is not None else None,
        limit=limit,
        domains=domains,
        batch_size=parse_batch_size(batch_size),
        seed=seed,
        noise_std=noise_std,
        device=device.value if device is not None else None,
        dtype=dtype.value if dtype is not None else None,
        mode=mode,
    )
    with _progress() as progress:
        task = progress.add_task(f"loading {chosen.name}", total=None, rate="–")

        def update(done: int, total: int) -> None:
            if done == 0:  # loading is over; the rate and ETA count from here
                progress.reset(task, total=total, description=f"{mode} {chosen.name}", rate="–")
                return
            elapsed = progress.tasks[task].elapsed or 0.0
            rate = f"{done / elapsed:.1f}" if elapsed > 0 else "–"
            progress.update(task, completed=done, total=total, rate=rate)

        result = execute(run_config, out=out, force=force, progress=update)
    _render(result, as_json)


@app.command()
def run(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
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
    json_: JsonOpt = False,
) -> None:
    """Analyse the benchmark in batches and write **metrics.parquet** and **manifest.json**.

    Example: `saecli run --batch-size 16`, `saecli run --preset gemma-2-2b --data ../shared/data/hb`.
    """
    _run("batched", preset=preset, config=config, data=data, limit=limit, domains=domains, batch_size=batch_size,
         seed=seed, noise_std=noise_std, device=device, dtype=dtype, out=out, force=force, as_json=json_)


@app.command()
def sequential(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    data: DataOpt = None,
    limit: LimitOpt = None,
    domains: DomainsOpt = None,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The reference: one sample at a time, each text in its own forward pass, no padding.

    Slow by design; `saecli compare` checks `run` against it.
    """
    _run("sequential", preset=preset, config=config, data=data, limit=limit, domains=domains, batch_size=None,
         seed=seed, noise_std=noise_std, device=device, dtype=dtype, out=out, force=force, as_json=json_)

