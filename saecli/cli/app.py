"""The Typer application, its shared options, and the one place where errors become messages."""

from __future__ import annotations

import json
import logging
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

import saecli
from saecli.device import DEVICES, DTYPES
from saecli.errors import SaecliError

stderr = Console(stderr=True)
stdout = Console()


# Usage errors of click and of typer (which ships its own copy of click), and their exits.
_USAGE_ERRORS = (click.exceptions.ClickException, typer.exceptions.TyperException)
_EXITS = (click.exceptions.Exit, click.exceptions.Abort, typer.Exit, typer.Abort)


def _finite(value: Any) -> Any:
    """NaN and infinity become null: JSON has no such numbers, and a reader would choke on them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    """The one printer of every ``--json``: one valid JSON document (indented, UTF-8) on stdout, and
    nothing else there."""
    text = json.dumps(_finite(document), indent=2, ensure_ascii=False, default=str)
    stdout.out(text, highlight=False)


def error_line(message: str, hint: str | None = None) -> None:
    """An error the user can act on, as one line on stderr (their own text may hold newlines)."""
    line = " ".join(message.split())
    extra = f" [dim](hint: {escape(' '.join(hint.split()))})[/]" if hint else ""
    stderr.print(f"[bold red]error:[/] {escape(line)}{extra}", highlight=False, soft_wrap=True)


OPTIONAL_VALUE = {"--ray": "local"}
"""Options whose value may be left out (``--ray`` alone, or ``--ray ADDRESS``), and the value that
stands for "left out". Click has no such options; the group fills the value in before parsing."""


def _fill_optional_values(args: list[str]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg in OPTIONAL_VALUE and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i] = f"{arg}={OPTIONAL_VALUE[arg]}"
    return out


class _Group(typer.core.TyperGroup):
    """The one boundary where errors become messages: a SaecliError or a usage error is one line on
    stderr and its exit code; anything else is a bug, shown in full with a request to report it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _fill_optional_values(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SaecliError as exc:
            error_line(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except _EXITS:
            raise
        except _USAGE_ERRORS as exc:
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or ctx.command_path
            error_line(exc.format_message(), f"see `{where} --help`")
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except Exception:
            stderr.print_exception(show_locals=False)
            stderr.print(
                "[bold red]internal error:[/] this is a bug in saecli, not in what you typed. Please report it with "
                "the command, `saecli doctor --json` and the traceback above.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="saecli",
    help="Sparse-autoencoder analysis of a language model over a fact/hallucination benchmark.\n\n"
    "Reads the residual stream at three layers (TransformerLens), encodes it with SAEs (SAELens) and "
    "writes per-sample metrics to Parquet. Runs offline on the embedded `tiny` preset by default.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"saecli {saecli.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_path=False, show_time=False)],
        force=True,
    )


# The choices of --device and --dtype: saecli.device's vocabulary, the one the presets and the API accept.
Device = StrEnum("Device", {name: name for name in DEVICES})
DType = StrEnum("DType", {name: name for name in DTYPES})


# Options shared by several commands, declared once.
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Preset name: tiny (embedded, default), gemma-2-2b, gpt2-small, ...", show_default=False),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="A preset TOML file (instead of --preset).", show_default=False)
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", "-d", show_default=False,
        help="JSON list, JSONL file, or a folder of them (HB-1000 layout supported); a CSV, TSV or Parquet table; or "
        "hf:NAME[:CONFIG][:SPLIT], a Hugging Face dataset in the local cache (TruthfulQA, HaluEval mapped built in). "
        "Default: the built-in benchmark.",
    ),
]  # fmt: skip
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns", show_default=False, metavar="TARGET=COLUMN,...",
        help="Which column of a --data table or hf: dataset holds each field, e.g. prompt=question,fact=best_answer,"
        "hallucination=wrong (targets: id, prompt, fact, hallucination, domain, topic, complexity) "
        "[default: the columns named like the fields, or the dataset's built-in mapping].",
    ),
]  # fmt: skip
LimitOpt = Annotated[int | None, typer.Option("--limit", "-n", help="Analyse only the first N samples (N >= 1).", show_default=False)]
DomainsOpt = Annotated[
    str | None, typer.Option("--domains", help="Comma-separated domains to keep, e.g. entity,logical.", show_default=False)
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the stability noise [default: 0].", show_default=False)]
NoiseOpt = Annotated[
    float | None, typer.Option("--noise-std", help="σ of the stability noise, finite and >= 0 [default: 0.1].", show_default=False)
]
DeviceOpt = Annotated[
    Device | None, typer.Option("--device", help="auto prefers cuda, then mps, then cpu [default: auto].", show_default=False)
]
DTypeOpt = Annotated[
    DType | None,
    typer.Option("--dtype", help="Model dtype [default: the preset's, float32]. float64 makes the run exact to 1e-9.", show_default=False),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run folder [default: runs/<UTC time>-<preset>].", show_default=False)
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into an existing, non-empty --out folder.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="torch CPU threads [default: as many as there are idle cores at the start].", show_default=False),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray", metavar="[ADDRESS]", show_default=False,
        help="Run on Ray: alone, join RAY_ADDRESS or start a local instance; or join ADDRESS (auto, HOST:6379, ray://HOST:10001).",
    ),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of the table (run: the manifest).")]


def preset_arg(preset: str | None, config: Path | None) -> str | None:
    if preset is not None and config is not None:
        raise SaecliError("give either --preset or --config, not both")
    return str(config) if config is not None else preset


def parse_counts(text: str, option: str = "--sizes", example: str = "1,8,32") -> list[int]:
    """``1,8,32`` → [1, 8, 32] for ``option``; anything else is a one-line error naming it."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(count < 1 for count in counts):
        raise SaecliError(f"{option} must be positive whole numbers separated by commas, e.g. {example} (got {text!r})")
    return counts


def parse_sizes(text: str) -> list[int]:
    """``--sizes 1,8,32`` → [1, 8, 32]."""
    return parse_counts(text)


def parse_batch_size(text: str | None) -> int | str | None:
    """``16`` → 16, ``auto`` → "auto"; anything else is a one-line error."""
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SaecliError(f"--batch-size must be a whole number >= 1 or 'auto' (got {text!r})")
    return value


def main() -> None:
    """Console-script entry point."""
    app()
