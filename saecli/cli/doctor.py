"""``saecli doctor``: device, cache, version and memory checks, each with what to type."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from saecli.cli.app import command, emit_json, stderr, stdout
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
    json_option,
    resolve_run,
)
from saecli.doctor import Report, diagnose
from saecli.memory import GiB

_STATUS = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "bold red")}


@command()
def doctor(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    data: DataOpt = None,
    columns: ColumnsOpt = None,
    limit: LimitOpt = None,
    limit_order: LimitOrderOpt = None,
    domains: DomainsOpt = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    noise_std: NoiseOpt = None,
    truncate: TruncateOpt = False,
    baselines: BaselinesOpt = None,
    threads: ThreadsOpt = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe", help="Also load the preset and find the largest batch that fits by trying it (as `run --batch-size auto`)."
        ),
    ] = False,
    ray: RayOpt = None,
    json_: Annotated[bool, json_option("the checks, the memory estimate and the resolved configuration")] = False,
) -> None:
    """Check versions, devices, the preset's cache entries and its memory needs before a long run,
    or explain an out-of-memory error after one. Exit code 1 when a check fails.

    The run options (--data, --columns, --batch-size, ...) and the preset's [defaults] resolve as
    for `run`: doctor checks the run those options describe.

    With --ray [ADDRESS]: also whether the Ray cluster can be reached and, on each node, its CPUs,
    GPUs and free memory, its saecli version and the preset's files.

    Example: `saecli doctor`, `saecli doctor --preset gemma-2-2b --dtype bfloat16`, `saecli doctor --probe`,
    `saecli doctor --ray auto`.
    """
    _, run_config = resolve_run(RunFlags.pick(locals()))
    args: dict[str, str] = {}
    if ray is not None:
        from saecli.cluster import import_ray

        import_ray()  # a missing Ray is one line (exit code 2) before anything else
        args["ray"] = ray
    waiting = " and ".join(
        w
        for w, asked in (("probing batch sizes (loads the preset)", probe), ("checking the Ray cluster", ray is not None))
        if asked
    )
    if waiting and not json_:
        with stderr.status(waiting):
            report = diagnose(run_config, probe=probe, **args)
    else:
        report = diagnose(run_config, probe=probe, **args)
    if json_:
        emit_json(report.to_dict())
    else:
        _render(report)
    if not report.ok:
        raise typer.Exit(1)


def _render(report: Report) -> None:
    table = Table(title=f"saecli doctor: {report.preset} on {report.device or '?'} ({report.dtype})", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail / what to do")
    for check in report.checks:
        cell = Text(check.detail)
        if check.hint:
            cell.append(f"\n→ {check.hint}", style="cyan")
        table.add_row(check.name, Text(*_STATUS[check.status]), cell)
    stdout.print(table)
    est = report.estimate
    if est is not None and est.per_batch:
        shown = [size for size in est.per_batch if est.largest_safe is None or size <= 2 * est.largest_safe] or [1]
        line = ", ".join(f"{size}: {est.per_batch[size] / GiB:.2f}" for size in shown)
        stdout.print(f"estimated GiB by batch size: {line}", highlight=False)
    if report.probe is not None and report.probe.probes:
        base = report.probe.loaded_bytes
        probes = Table(title="--probe: peak memory per batch size")
        for column in ("batch", "peak GiB", "+GiB over loaded", "outcome"):
            probes.add_column(column, justify="right" if column != "outcome" else "left")
        for p in report.probe.probes:
            peak = p.get("peak_bytes")
            probes.add_row(
                str(p["size"]),
                "–" if peak is None else f"{peak / GiB:.2f}",
                "–" if peak is None or base is None else f"{(peak - base) / GiB:.2f}",
                p["outcome"],
            )
        stdout.print(probes)
    stdout.print(Text("If a run runs out of memory:", style="bold"))
    for hint in report.oom_hints:
        stdout.print(f"  • {hint}", highlight=False)
    counts = {s: sum(c.status == s for c in report.checks) for s in ("ok", "warn", "fail")}
    stdout.print(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed", highlight=False)
