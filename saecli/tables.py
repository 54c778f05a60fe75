"""Tables of samples: CSV, TSV and Parquet files, and the mapping of a table's columns to sample fields.

Belongs here: reading a table's header and rows exactly as written (CSV/TSV through Python's
``csv`` module, every cell a string; Parquet through an open file handle, never a path string that
Polars would read as a glob pattern, a damaged file one error even where Polars panics), and
turning rows into sample records by a column mapping (:class:`ColumnMap`): each field from a
column (``--columns fact=best_answer``), a fixed value, an element of a list column, a choice of a
labelled struct column, or a stable id. A missing column is one error naming the columns there
are. ``saecli.hfdata`` maps the rows of Hugging Face datasets with the same pieces.

Does not belong here: checking the fields' values (``saecli.data.Sample`` does, and
``saecli.data`` words the error with the file, row and column), decoding a file's bytes
(``saecli.data`` reads text files), finding datasets in the Hugging Face cache (``saecli.hub``).
Imports ``saecli.config`` (the mapping targets) and ``saecli.errors``; Polars only inside the
Parquet reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from saecli.errors import SaecliError
from saecli.io import panic_report_dropped
from saecli.validation import COLUMN_TARGETS

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
"""File suffix (any case) → table format."""
REQUIRED = ("prompt", "fact", "hallucination")
TEXTS = ("id", "prompt", "fact", "hallucination", "domain")
"""Fields a sample must have as non-empty text: an empty or null cell is "empty", not "missing"."""
T = TypeVar("T")
_WHOLE_NUMBER = re.compile(r"\s*([+-]?)0*(\d+)\s*")


def table_format(path: Path) -> str | None:
    """``csv``, ``tsv`` or ``parquet`` by the file's suffix; None for any other file."""
    return TABLE_FORMATS.get(path.suffix.lower())


class LongNumber:
    """A whole number with more digits than Python turns into an int (``sys.get_int_max_str_digits()``,
    4300 by default), kept as its digits: far beyond any complexity a sample accepts, so the
    sample's own check refuses it by name, while an id keeps it as its text."""

    def __init__(self, digits: str):
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {len(self.digits.lstrip('+-'))}-digit number"


def whole_number(text: str) -> int | LongNumber | None:
    """``text`` as a whole number (a sign, digits, spaces around): an int, a :class:`LongNumber`
    where int() would refuse that many digits, or None when it is no whole number."""
    match = _WHOLE_NUMBER.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()  # leading zeros dropped: they would count towards the limit
    try:
        return int(sign + digits)
    except ValueError:
        return LongNumber(sign + digits)


@dataclass(frozen=True)
class Table:
    """A table as read: its column names and its rows, each with a label for error messages."""

    columns: tuple[str, ...]
    rows: Iterable[tuple[dict[str, Any], str]]
    """Made a row at a time as they are wanted, from the text (CSV, TSV) or the columns (Parquet) read:
    500,000 rows held as Python dicts took 1.3 GB. Iterated once (each read of the data reads again)."""


def parse_delimited(text: str, path: Path, delimiter: str) -> Table:
    """A CSV (``,``) or TSV (tab) text with a header row; every cell stays a string. Quoted cells may
    hold the delimiter and line breaks (as spreadsheet programs, pandas and Polars write them)."""
    # csv refuses a cell over csv.field_size_limit() (128 KiB by default), a limit JSON data has not;
    # no cell is longer than the whole text. Only ever raised: the limit is the whole process's, and
    # putting it back could cut short a parse in another thread.
    if csv.field_size_limit() < len(text):
        csv.field_size_limit(len(text))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "TSV" if delimiter == "\t" else "CSV"
    header: list[str] | None = None
    line = 1  # the line the next record starts on
    try:
        for cells in reader:
            line = reader.line_num + 1
            if not _blank(cells):
                header = [name.strip() for name in cells]
                break
    except csv.Error as exc:
        raise SaecliError(f"{path}: invalid {kind} at line {reader.line_num}: {exc}") from None
    if header is None:
        raise SaecliError(f"{path}: no header row", hint="the first line names the columns, e.g. id,prompt,fact,hallucination")
    _check_header(header, path)
    names = header

    def rows(line: int) -> Iterator[tuple[dict[str, Any], str]]:
        # The rows are made as they are wanted: a million rows as dicts are ~1.5 GB, the text a fraction.
        try:
            for cells in reader:
                start, line = line, reader.line_num + 1
                if _blank(cells):
                    continue
                if len(cells) != len(names):
                    raise SaecliError(
                        f"{path} line {start}: {len(cells)} cells, but the header has {len(names)} columns",
                        hint=f"quote cells that hold the delimiter or a line break ({kind})",
                    )
                yield dict(zip(names, cells, strict=True)), f"{path} line {start}"
        except csv.Error as exc:
            raise SaecliError(f"{path}: invalid {kind} at line {reader.line_num}: {exc}") from None

    return Table(tuple(header), rows(line))


def _blank(cells: list[str]) -> bool:
    """A blank line of the table (no cells, or one of whitespace)."""
    return not cells or (len(cells) == 1 and not cells[0].strip())


def _check_header(header: list[str], path: Path) -> None:
    seen: set[str] = set()
    for i, name in enumerate(header):
        if not name:
            raise SaecliError(f"{path}: column {i + 1} of the header has no name")
        if name in seen:
            raise SaecliError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)


def read_parquet_table(path: Path) -> Table:
    """A Parquet file at exactly ``path`` (through a file handle: Polars reads a path string as a glob
    pattern), rows as Python values (lists and structs as lists and dicts)."""
    import polars as pl

    frame = read_parquet_file(path, pl.read_parquet)
    return Table(tuple(frame.columns), ((row, f"{path} row {i}") for i, row in enumerate(frame.iter_rows(named=True))))


def read_parquet_file(path: Path, read: Callable[[BinaryIO], T]) -> T:
    """``read(handle)`` (a Polars reader) of the file at exactly ``path``. A file that cannot be
    opened, or that Polars fails on (damaged, cut short, not Parquet), is one SaecliError naming it.
    Polars panics on some damage: a ``PanicException``, which derives from BaseException and so
    escapes ``except Exception``, after Rust has printed the panic and its backtrace on stderr."""
    import polars as pl

    try:
        with open(path, "rb") as handle, panic_report_dropped(pl.exceptions.PanicException):
            return read(handle)
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except pl.exceptions.PanicException:
        raise SaecliError(
            f"{path} is not a readable Parquet file: it is damaged or cut short (Polars failed on it)",
            hint="write the file again",
        ) from None
    except pl.exceptions.PolarsError as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SaecliError(f"{path} is not a readable Parquet file: {first}") from None


# -- from a row to a sample record ------------------------------------------------------------------


class Source:
    """Where one sample field comes from: ``value(row, index)``, the columns it reads, and how the
    manifest and error messages call it."""

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns this field reads (its ``name``, where it has one)."""
        name = getattr(self, "name", None)
        return (name,) if name is not None else ()

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def noun(self, target: str) -> str:
        """How an error message calls the field: ``column 'best_answer' (fact)``."""
        return f"field {target!r}"


@dataclass(frozen=True)
class Column(Source):
    """A column's cell as it is."""

    name: str

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        return row[self.name]

    def describe(self) -> str:
        return self.name

    def noun(self, target: str) -> str:
        return f"column {self.name!r}" + ("" if self.name == target else f" ({target})")


@dataclass(frozen=True)
class Const(Source):
    """A fixed value (a dataset's domain)."""

    text: str

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        return self.text

    def describe(self) -> str:
        return f"fixed: {self.text}"


@dataclass(frozen=True)
class RowId(Source):
    """``{prefix}-{row}``: the row's position (0-based) in a dataset pinned by its revision."""

    prefix: str

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        return f"{self.prefix}-{index}"

    def describe(self) -> str:
        return f"{self.prefix}-{{row}}"


class PairId(Source):
    """``pair-`` and 12 hex digits of the SHA-256 of the prompt, fact and hallucination: the same
    pair has the same id whatever the file, format, row order or the rows around it."""

    def describe(self) -> str:
        return "pair-{sha256(prompt, fact, hallucination)[:12]}"


def pair_id(prompt: Any, fact: Any, hallucination: Any) -> str:
    texts = [t.strip() if isinstance(t, str) else t for t in (prompt, fact, hallucination)]
    return "pair-" + hashlib.sha256(json.dumps(texts, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class First(Source):
    """The first element of a list column (TruthfulQA's ``incorrect_answers``)."""

    name: str

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        items = row[self.name]
        if not isinstance(items, list):
            return items  # not a list: the sample's own check names the type
        return items[0] if items else ""

    def describe(self) -> str:
        return f"{self.name}[0]"

    def noun(self, target: str) -> str:
        return f"the first of column {self.name!r} ({target})"


@dataclass(frozen=True)
class Choice(Source):
    """The first choice with ``label`` of a ``{choices, labels}`` struct column (TruthfulQA's
    ``mc1_targets``: label 1 is the true answer, 0 a false one)."""

    name: str
    label: int

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        cell = row[self.name]
        if not isinstance(cell, dict):
            return cell
        for choice, label in zip(cell.get("choices") or [], cell.get("labels") or [], strict=False):
            if label == self.label:
                return choice
        return ""

    def describe(self) -> str:
        return f"{self.name}: first choice labelled {self.label}"

    def noun(self, target: str) -> str:
        return f"the choice labelled {self.label} in column {self.name!r} ({target})"


@dataclass(frozen=True)
class Template(Source):
    """A text around one column's cell (``{}`` marks the cell): HaluEval's summarization prompt."""

    name: str
    text: str

    def value(self, row: Mapping[str, Any], index: int) -> Any:
        cell = row[self.name]
        return self.text.replace("{}", cell) if isinstance(cell, str) and cell.strip() else cell

    def describe(self) -> str:
        return json.dumps(self.text.replace("{}", "{" + self.name + "}"), ensure_ascii=False)

    def noun(self, target: str) -> str:
        return f"column {self.name!r} ({target})"


@dataclass(frozen=True)
class ColumnMap:
    """Where each sample field comes from. ``fields`` holds a :class:`Source` per target present;
    ``id``, ``domain`` absent mean a generated id and the default domain."""

    fields: dict[str, Source]

    def describe(self) -> dict[str, str]:
        """The mapping as the manifest records it: ``{"fact": "best_answer", ...}``."""
        return {target: self.fields[target].describe() for target in COLUMN_TARGETS if target in self.fields}

    def nouns(self) -> dict[str, str]:
        return {target: source.noun(target) for target, source in self.fields.items()}


def resolve_mapping(
    columns: tuple[str, ...],
    where: str,
    *,
    given: dict[str, str] | None,
    base: dict[str, Source] | None = None,
    domain: str,
    make_id: Source | None = None,
) -> ColumnMap:
    """The mapping of a table with these ``columns``: ``base`` (a built-in dataset's own mapping, or
    nothing), then each field from its same-named column where there is one, ``given``
    (``--columns``) over both. Every column the mapping reads must exist: else one error naming it
    and the columns there are. No ``id``: ``make_id`` (default: :class:`PairId`); no ``domain``:
    ``domain``."""
    fields: dict[str, Source] = dict(base or {})
    for target in COLUMN_TARGETS:
        if target not in fields and target in columns:
            fields[target] = Column(target)
    for target, name in (given or {}).items():
        fields[target] = Column(name)
    present = ", ".join(columns) or "none"
    for target in REQUIRED:
        if target not in fields:
            raise SaecliError(
                f"{where}: no column {target!r} (columns: {present})",
                hint=f"name the column that holds the {target} with --columns {target}=COLUMN",
            )
    for target in COLUMN_TARGETS:
        source = fields.get(target)
        for name in source.columns if source is not None else ():
            if name not in columns:
                mapped = "" if name == target else f" for {target}"
                raise SaecliError(
                    f"{where}: no column {name!r}{mapped} (columns: {present})",
                    hint=f"map another column with --columns {target}=COLUMN",
                )
    fields.setdefault("domain", Const(domain))
    fields.setdefault("id", make_id or PairId())
    return ColumnMap({target: fields[target] for target in COLUMN_TARGETS if target in fields})


def records(table: Table, mapping: ColumnMap) -> Iterator[tuple[dict[str, Any], str]]:
    """Each row of ``table`` as a sample record (the keys of :class:`saecli.data.Sample`), with its
    label. Cells are taken as written, except: a null or empty required text is "" (reported as
    empty, not missing), an empty topic is no topic, a whole number written as text is a
    complexity, and a generated id is computed from the row's own texts."""
    for index, (row, where) in enumerate(table.rows):
        record: dict[str, Any] = {}
        for target, source in mapping.fields.items():
            if isinstance(source, PairId):
                continue
            value = source.value(row, index)
            if target in TEXTS and value is None:
                value = ""
            elif target == "topic" and (value is None or (isinstance(value, str) and not value.strip())):
                value = None
            elif target == "complexity" and isinstance(value, str):
                number = whole_number(value)
                value = number if number is not None else (None if not value.strip() else value)
            record[target] = value
        if isinstance(mapping.fields.get("id"), PairId):
            record["id"] = pair_id(record.get("prompt"), record.get("fact"), record.get("hallucination"))
        yield record, where


def duplicate_pairs(items: Iterable[tuple[dict[str, Any], str]], mapping: ColumnMap) -> Iterator[tuple[dict[str, Any], str]]:
    """The ``items``, passed on as they come; with generated ids, two rows with the same texts would
    get the same id: the second is refused, naming both rows."""
    if not isinstance(mapping.fields.get("id"), PairId):
        yield from items
        return
    first: dict[str, str] = {}
    for record, where in items:
        seen = first.setdefault(record["id"], where)
        if seen != where:
            raise SaecliError(
                f"{where} holds the same prompt, fact and hallucination as {seen}",
                hint="remove one of them, or give every row an id: an 'id' column, or --columns id=COLUMN",
            )
        yield record, where
