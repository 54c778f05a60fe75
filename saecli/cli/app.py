"""The Typer application, its command class, the one `--json` printer, and the one place where errors become messages (the shared options live in :mod:`saecli.cli.options`)."""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any

import click
import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

import saecli
from saecli.errors import SaecliError

# Neither console reads markup or emoji codes in what it prints: domains, ids, topics, paths and
# messages are the user's text and print as typed. Our own styling is Text with a style
# (``Text.assemble(("error:", "bold red"), " ", message)``), never markup around a value.
stderr = Console(stderr=True, markup=False, emoji=False)
stdout = Console(markup=False, emoji=False)


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
    extra = (f" (hint: {' '.join(hint.split())})", "dim") if hint else ""
    stderr.print(Text.assemble(("error:", "bold red"), " ", " ".join(message.split()), extra), soft_wrap=True)


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


def _plain_flags(params: list[Any]) -> list[Any]:
    """On/off flags take no value: no ``<bool>`` after them in the help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """Every saecli command: the help shows a flag without a value type."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    """The one boundary where errors become messages: a SaecliError or a usage error is one line on
    stderr and its exit code; anything else is a bug, shown in full with a request to report it."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _fill_optional_values(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SaecliError as exc:
            error_line(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print(Text("interrupted", style="yellow"))
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
                Text.assemble(
                    ("internal error:", "bold red"),
                    " this is a bug in saecli, not in what you typed. Please report it with the command, "
                    "`saecli doctor --json` and the traceback above.",
                ),
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


def command(**kwargs: Any) -> Any:
    """``@command()`` registers a saecli command (``app.command`` with saecli's command class)."""
    return app.command(cls=Command, **kwargs)


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
        handlers=[RichHandler(console=stderr, show_path=False, show_time=False, markup=False)],
        force=True,
    )


def main() -> None:
    """Console-script entry point."""
    app()
