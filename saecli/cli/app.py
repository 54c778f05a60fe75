"""The Typer application, its command class, the one `--json` printer, and the one place where errors become messages (the shared options live in :mod:`saecli.cli.options`)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import typer.core
from rich.console import Console, ConsoleDimensions, Group
from rich.logging import RichHandler
from rich.text import Text

import saecli
from saecli.errors import SaecliError


class StdoutError(Exception):
    """Standard output cannot be written (a closed pipe, a full disk): not a bug, and not the
    command's failure either, so the boundary tells it apart from every other OSError."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


UNWRAPPED_WIDTH = 10_000
"""The width of a console that is not a terminal: wide enough that no value is cut or wrapped."""


class _Console(Console):
    """A console that, writing to a pipe or a file (not a terminal), neither cuts nor wraps: Rich
    would take 80 columns there and print a table's ``43210.5`` as ``43…``, so a log or a ``| grep``
    would lose the value. ``COLUMNS``, when set, still decides."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


class _LogHandler(RichHandler):
    """Rich's log lines are a table as wide as the console: unwrapped (not a terminal) that is
    thousands of trailing spaces per line, so there a record is its level and message alone."""

    def render(self, *, record: logging.LogRecord, traceback: Any, message_renderable: Any) -> Any:
        if self.console.is_terminal:
            return super().render(record=record, traceback=traceback, message_renderable=message_renderable)
        line = Text.assemble(self.get_level_text(record), " ", message_renderable)
        return line if traceback is None else Group(line, traceback)


class _Stdout(_Console):
    """The results console: a failed write becomes a :class:`StdoutError`."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().print(*args, **kwargs)
        except OSError as exc:
            self._failed(exc)

    def out(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().out(*args, **kwargs)
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        # What could not go out stays in Rich's buffer and would lead the next print (the app run
        # again in one process, as tests do): drop it.
        del self._buffer[:]
        raise StdoutError(exc) from None

    def on_broken_pipe(self) -> None:
        # Rich's own answer is to exit on the spot; the boundary decides instead (see _stdout_failed).
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


# Neither console reads markup or emoji codes in what it prints: domains, ids, topics, paths and
# messages are the user's text and print as typed. Our own styling is Text with a style
# (``Text.assemble(("error:", "bold red"), " ", message)``), never markup around a value.
stderr = _Console(stderr=True, markup=False, emoji=False)
stdout = _Stdout(markup=False, emoji=False)

BROKEN_PIPE_EXIT = 141
"""The exit code when stdout is a pipe its reader closed (``saecli run | head -1``): 128 + SIGPIPE,
what a shell reports for a program the signal ended, so that ``set -o pipefail`` scripts can tell it
from a failure."""

_results: ContextVar[Path | None] = ContextVar("saecli_results", default=None)
"""Where the running command's results are on disk, once they are (see :func:`results_in`)."""


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


def results_in(folder: Path) -> None:
    """Note where the command's results are on disk, for the message when stdout cannot take them."""
    _results.set(folder)


def _flush_stdout() -> None:
    # Text another library wrote to sys.stdout would otherwise fail at the interpreter's exit flush,
    # outside the boundary, as "Exception ignored".
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise StdoutError(exc) from None


def _stdout_failed(exc: StdoutError) -> int:
    """The exit code for a stdout that cannot be written; a closed pipe ends quietly, as other Unix
    tools end, anything else is one line on stderr naming where the results are."""
    try:  # what is still buffered then goes nowhere, instead of failing again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (tests)
        pass
    if isinstance(exc.cause, BrokenPipeError):
        return BROKEN_PIPE_EXIT
    folder = _results.get()
    where = f"; the results are in {folder}" if folder is not None else ""
    error_line(f"cannot write to standard output ({exc.cause.strerror or exc.cause}){where}")
    return 1


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


def _parsed(parse: Any) -> list[str]:
    """``parse()``: the arguments parsed. ``--help`` and ``--version`` print while the arguments are
    parsed, before the command's boundary; only stdout is written then (no option reads a file), so
    an OSError there is a stdout that cannot be written (typer's own help console raises it raw)."""
    try:
        return parse()
    except StdoutError as exc:
        raise typer.Exit(_stdout_failed(exc)) from None
    except OSError as exc:
        raise typer.Exit(_stdout_failed(StdoutError(exc))) from None


class Command(typer.core.TyperCommand):
    """Every saecli command: the help shows a flag without a value type."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return _parsed(lambda: super(Command, self).parse_args(ctx, args))


class _Group(typer.core.TyperGroup):
    """The one boundary where errors become messages: a SaecliError or a usage error is one line on
    stderr and its exit code; a stdout that cannot be written is neither (:func:`_stdout_failed`);
    anything else is a bug, shown in full with a request to report it."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return _parsed(lambda: super(_Group, self).parse_args(ctx, _fill_optional_values(args)))

    def invoke(self, ctx: click.Context) -> Any:
        _results.set(None)  # a command run before in this process (tests) said where its results were
        try:
            try:
                result = super().invoke(ctx)
            except _EXITS:
                _flush_stdout()
                raise
            _flush_stdout()
            return result
        except StdoutError as exc:
            raise typer.Exit(_stdout_failed(exc)) from None
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
        handlers=[_LogHandler(console=stderr, show_path=False, show_time=False, markup=False)],
        force=True,
    )


def main() -> None:
    """Console-script entry point."""
    app()
