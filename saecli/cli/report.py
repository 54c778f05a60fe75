"""``saecli report RUN_DIR``: detection.csv, dashboard.png and summary.md for a finished run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from saecli.cli.app import command, emit_json, results_in, stderr, stdout
from saecli.cli.options import json_option
from saecli.report import ALPHA, FOLDS_DEFAULT, MAX_BOOTSTRAP, PROBE_SAMPLES, RESAMPLE_SAMPLES, TOP_DEFAULT, Report, make_report
from saecli.report.summary import baseline_sentence, best_sentence


def _ci(low: float, high: float, digits: int = 3) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else "–"


def _short_words(value: float) -> str:
    """The direction of an AUROC in a few words, for the table (summary.md says it in full)."""
    if not math.isfinite(value) or value == 0.5:
        return "no separation" if math.isfinite(value) else "–"
    if value in (0.0, 1.0):
        return f"hall always {'higher' if value else 'lower'}"
    share, word = (value, "higher") if value > 0.5 else (1 - value, "lower")
    return f"hall {word} in {share:.0%}"


def _side(value: float) -> str:
    return "hall higher" if value > 0.5 else "hall lower" if value < 0.5 else "no separation"


def report_with_progress(run_dir: Path, **options: Any) -> Report:
    """:func:`~saecli.report.make_report` with its steps drawn as a bar on stderr. No ETA: the steps
    differ too much in length (a probe's fold against writing a CSV) for a rate to predict the rest."""
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # the description names the user's folder
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
    ) as bar:
        task = bar.add_task(f"report: reading {run_dir}", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=f"report: {step}", completed=done, total=total)

        try:
            return make_report(run_dir, progress=progress, **options)
        except BaseException:
            bar.live.transient = True  # the error (or the interruption) is what is left on stderr
            raise


def render_report(report: Report, *, top: int = TOP_DEFAULT) -> None:
    """The top metrics as a Rich table on stdout, then the verdicts and where the files are."""
    table = Table(title=f"Top {top} metrics by |AUROC − 0.5|, hall vs fact ({report.preset}, {report.samples} samples)")
    for name, justify in (
        ("metric", "left"), ("AUROC [95% CI]", "left"), ("direction", "left"), ("win rate [95% CI]", "left"),
        ("Δ hall − fact", "right"), (f"q (BH, {report.tested} tests)", "right"), ("best domain", "left"),
    ):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=name == "metric", overflow="fold")
    domains = list(report.domains)
    for r in report.top(top):
        per_domain = [report.get(r.metric, d) for d in domains]
        best = max(per_domain, key=lambda x: x.separation) if len(per_domain) > 1 else None
        sd = f" ± {r.sd_diff:.2g}" if math.isfinite(r.sd_diff) else ""
        color = "red" if r.auroc > 0.5 else "blue" if r.auroc < 0.5 else "default"
        win = f"{r.win_rate:.2f} {_ci(r.win_low, r.win_high, 2)}" if math.isfinite(r.win_rate) else "–"
        table.add_row(
            r.metric,
            Text.assemble((f"{r.auroc:.3f}", f"bold {color}"), f" {_ci(r.ci_low, r.ci_high)}") if math.isfinite(r.auroc) else "–",
            _short_words(r.auroc),
            win,
            f"{r.mean_diff:+#.3g}{sd}",
            f"{r.q:.1e}{' *' if r.significant else ''}" if math.isfinite(r.q) else "–",
            f"{best.domain} {best.auroc:.2f} ({_side(best.auroc)})" if best is not None else "",
        )
    stdout.print(table)
    for note in report.notes:
        stdout.print(note, highlight=False, soft_wrap=True)
    for line in (
        f"direction: how often the hallucination scores higher (lower) than a fact, over all hall/fact comparisons. "
        f"* q < {ALPHA}: significant after Benjamini-Hochberg correction over all {report.tested} tests.",
        f"Best metric, all samples: {best_sentence(report)}.".replace("**", ""),
        baseline_sentence(report).replace("**", ""),
    ):
        stdout.print(line, highlight=False, soft_wrap=True)
    for path in report.files.values():
        stdout.print(f"wrote {path}", highlight=False, soft_wrap=True)


@command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run folder written by `saecli run` (holds metrics.parquet and manifest.json).", show_default=False
        ),
    ],
    # Bounds are checked by make_report (one line, also for the Python API), not by typer (a usage box).
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            "-B",
            help=f"Resamples of the paired bootstrap against the baseline and sign-flip permutations of the best "
            f"metric's family-wise test (0: neither; at most {MAX_BOOTSTRAP}).",
        ),
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the resamples and permutations (>= 0).")] = 0,
    top: Annotated[int, typer.Option("--top", "-k", help="Metrics in the table and in summary.md (>= 1).")] = TOP_DEFAULT,
    folds: Annotated[
        int,
        typer.Option("--folds", help="Cross-validation folds of the probes, grouped by sample (2 to 100; runs with residuals)."),
    ] = FOLDS_DEFAULT,
    probe_samples: Annotated[
        int,
        typer.Option(
            "--probe-samples",
            help="Fit the probes on at most this many samples (a larger run: a seeded subsample, stratified by domain; >= 20).",
        ),
    ] = PROBE_SAMPLES,
    resample_samples: Annotated[
        int,
        typer.Option(
            "--resample-samples",
            help="Draw the paired bootstrap and the SAE features' null from at most this many samples of a group, "
            "rescaled to the group (>= 20). AUROCs, p- and q-values always use every sample.",
        ),
    ] = RESAMPLE_SAMPLES,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the report files here instead of into RUN_DIR.", show_default=False)
    ] = None,
    json_: Annotated[bool, json_option("the detection document")] = False,
) -> None:
    """Which metric tells hallucinations from facts: AUROC and win rate per metric and domain, with intervals and q-values.

    Writes **detection.csv**, **dashboard.png** and **summary.md** into the run folder; for a run with
    residuals.safetensors also **probes.csv**, **generalisation.csv** and **features.csv** (probes on the
    residual stream and SAE features, leave-one-domain-out tests, the features that differ most).
    Example: `saecli report runs/20250101T000000Z-tiny`, `saecli report RUN --bootstrap 2000 --json`.
    """
    result = report_with_progress(run_dir, bootstrap=bootstrap, seed=seed, out_dir=out, top=top, folds=folds,
                                  probe_samples=probe_samples, resample_samples=resample_samples)  # fmt: skip
    results_in(result.out_dir)
    if json_:
        emit_json(result.to_dict())
    else:
        render_report(result, top=top)
