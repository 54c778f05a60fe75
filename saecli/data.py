"""Benchmark samples: the built-in benchmark, JSON/JSONL files, folders, the HB-1000 layout, tables
(CSV/TSV/Parquet, ``saecli.tables``) and Hugging Face datasets from the local cache (``hf:``,
``saecli.hfdata``); every record checked as a :class:`Sample`, and the dataset's identity for the
run manifest (:func:`dataset_identity`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saecli import hfdata, tables
from saecli.config import RunConfig, assets_dir
from saecli.errors import SaecliError
from saecli.io import file_sha256
from saecli.validation import INT64_MAX, INT64_MIN, check_domains, check_limit, check_option, columns_mapping

# HB-1000 (neural-polygraph) ships one file per suite; the record's own "domain" is a topic.
HB_FILES = {
    "bench_entity_swaps.json": "entity",
    "bench_temporal_shifts.json": "temporal",
    "bench_logical_inversions.json": "logical",
    "bench_adversarial_traps.json": "adversarial",
}

_REQUIRED_TEXT = ("prompt", "fact", "hallucination")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a user's value, cut so that a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SampleFieldError(SaecliError):
    """One field of a sample is invalid; the data loader re-words it with the file and record."""

    def __init__(self, sample_id: Any, name: str, problem: str):
        where = f"sample {_short(sample_id)}: " if isinstance(sample_id, str) and sample_id else ""
        super().__init__(f"{where}field '{name}' {problem}")
        self.field = name
        self.problem = problem


def _type_name(value: Any) -> str:
    return "int" if isinstance(value, tables.LongNumber) else type(value).__name__


def _int_text(value: int) -> str:
    """An int for a message: str() refuses one of more than ``sys.get_int_max_str_digits()`` digits."""
    if value.bit_length() <= 256:
        return str(value)
    return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def _text_problem(value: Any, *, optional: bool = False) -> str | None:
    """Why ``value`` cannot be one of a sample's texts, or None when it can."""
    if value is None:
        return None if optional else "is missing"
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not optional and not value.strip():
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads turns "\ud800" into a lone surrogate, which the tokenizer fails on mid-run.
        bad = value[exc.start]
        return f"is not valid Unicode text: it holds the lone surrogate \\u{ord(bad):04x} at character {exc.start}"
    return None


def _complexity_problem(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, tables.LongNumber):
        return f"must be an integer from {INT64_MIN} to {INT64_MAX}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {type(value).__name__}"
    if not INT64_MIN <= value <= INT64_MAX:
        # Stored as Int64 in metrics.parquet: a larger value would fail at the first write.
        return f"must be an integer from {INT64_MIN} to {INT64_MAX}, got {_int_text(value)}"
    return None


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a prompt with a true and a false completion.

    Every field is checked when a sample is made (from a data file or in Python), so nothing a
    sample holds can fail later in the tokenizer or in the Parquet writer.
    """

    id: str
    domain: str
    prompt: str
    fact: str
    hallucination: str
    topic: str | None = None
    complexity: int | None = None

    def __post_init__(self) -> None:
        problems = {
            "id": _text_problem(self.id),
            "domain": _text_problem(self.domain),
            **{key: _text_problem(getattr(self, key)) for key in _REQUIRED_TEXT},
            "topic": _text_problem(self.topic, optional=True),
            "complexity": _complexity_problem(self.complexity),
        }
        for name, problem in problems.items():
            if problem is not None:
                raise SampleFieldError(self.id, name, problem)

    @property
    def fact_text(self) -> str:
        """F = prompt + " " + fact."""
        return f"{self.prompt} {self.fact}"

    @property
    def hall_text(self) -> str:
        """H = prompt + " " + hallucination."""
        return f"{self.prompt} {self.hallucination}"


def builtin_benchmark_path() -> Path:
    return assets_dir() / "benchmark.json"


def _read_text(path: Path) -> str:
    """A data file's text: UTF-8 (a byte-order mark is allowed), else one error naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        guess = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SaecliError(
            f"{path} is not UTF-8 text{guess}: byte {exc.start} (0x{raw[exc.start]:02x}) is not valid UTF-8",
            hint="save the file as UTF-8",
        ) from None


def _parse_json(text: str, path: Path, lineno: int | None = None) -> Any:
    """One JSON document; a syntax error or absurd nesting is one error with the file and line."""
    try:
        return json.loads(text, parse_int=tables.whole_number)
    except json.JSONDecodeError as exc:
        line = lineno if lineno is not None else exc.lineno
        raise SaecliError(f"{path}: invalid JSON at line {line}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        where = f" at line {lineno}" if lineno is not None else ""
        raise SaecliError(f"{path}: invalid JSON{where}: arrays or objects nested too deeply") from None


def _read_records(path: Path) -> Iterator[tuple[Any, str]]:
    """Records of one JSON list or JSONL file, each with a label for error messages. A JSONL file
    is read a line at a time (a million records need not be in memory at once); a JSON list is one
    document, parsed whole."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
        return
    data = _parse_json(_read_text(path), path)
    if isinstance(data, dict) and isinstance(data.get("samples"), list):
        data = data["samples"]
    if not isinstance(data, list):
        raise SaecliError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    yield from ((rec, f"{path} record {i}") for i, rec in enumerate(data))


def _jsonl_records(path: Path) -> Iterator[tuple[Any, str]]:
    """The records of a JSONL file as it is read, line by line: the same records and errors as
    :func:`_read_text` and a split would give, in bounded memory."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; a generator cannot use `with` across yields and errors alike)
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        offset, first = 0, b""
        # JSON Lines are separated by "\n" only: str.splitlines() would also cut at U+2028 and
        # other characters that JSON strings may hold as they are. Iterating bytes splits at b"\n".
        for lineno, raw in enumerate(_lines(handle, path), start=1):
            first = first or raw[:2]
            start = 3 if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                guess = " (it looks like UTF-16)" if first in (b"\xff\xfe", b"\xfe\xff") else ""
                at = offset + start + exc.start
                raise SaecliError(
                    f"{path} is not UTF-8 text{guess}: byte {at} (0x{raw[start + exc.start]:02x}) is not valid UTF-8",
                    hint="save the file as UTF-8",
                ) from None
            offset += len(raw)
            if line.strip():
                yield _parse_json(line, path, lineno), f"{path}:{lineno}"


def _lines(handle: Any, path: Path) -> Iterator[bytes]:
    try:
        yield from handle
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _to_sample(record: Any, where: str, suite: str | None, nouns: dict[str, str] | None = None) -> Sample:
    """A record as a Sample; a bad field is one error naming the file, the record and the field
    (``nouns``: how to call a field that came from elsewhere, ``column 'best_answer' (fact)``)."""
    if not isinstance(record, dict):
        raise SaecliError(f"{where}: expected an object, got {type(record).__name__}")
    rid = record.get("id")
    label = f"{where} (id {_short(rid)})" if rid is not None else where
    # Whole-number ids are accepted as their text (some benchmarks number their records), however long.
    sample_id = str(rid) if isinstance(rid, int) and not isinstance(rid, bool) else rid
    sample_id = rid.digits if isinstance(rid, tables.LongNumber) else sample_id
    own_domain = record.get("domain")
    # In an HB-1000 suite file the file names the domain and the record's own "domain" is a topic.
    domain, topic = (suite, own_domain) if suite is not None else (own_domain, record.get("topic"))
    if nouns is None:
        nouns = {"topic": "field 'domain'"} if suite is not None else {}
    texts = {key: record.get(key) for key in _REQUIRED_TEXT}
    try:
        return Sample(
            id=sample_id,
            domain=domain,
            topic=topic,
            complexity=record.get("complexity"),
            **{key: value.strip() if isinstance(value, str) else value for key, value in texts.items()},
        )
    except SampleFieldError as exc:
        raise SaecliError(f"{label}: {nouns.get(exc.field, f'field {exc.field!r}')} {exc.problem}") from None


def _files_of(path: Path) -> list[tuple[Path, str | None]]:
    """The data files of ``path`` (a file, or the .json/.jsonl files of a folder) with their suite."""
    try:
        if path.is_file():
            return [(path, HB_FILES.get(path.name))]
        if not path.is_dir():
            if path.exists():
                raise SaecliError(f"data path {path} is neither a file nor a folder")
            raise SaecliError(f"data path does not exist: {path}")
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not files:
        raise SaecliError(f"{path}: no .json or .jsonl files in this folder")
    hb = [p for p in files if p.name in HB_FILES]
    if hb:
        # HB-1000 order: the suites in their conventional order, whatever the listing order.
        order = list(HB_FILES)
        files = sorted(hb, key=lambda p: order.index(p.name))
    return [(p, HB_FILES.get(p.name)) for p in files]


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~user of an unknown user: then it is a name like any other
        return path


def _table_of(path: Path, fmt: str) -> tables.Table:
    if fmt == "parquet":
        return tables.read_parquet_table(path)
    return tables.parse_delimited(_read_text(path), path, "\t" if fmt == "tsv" else ",")


def _mapped_samples(table: tables.Table, mapping: tables.ColumnMap) -> Iterator[Sample]:
    """The table's rows as samples, one at a time (each checked as it comes)."""
    nouns = mapping.nouns()
    return (
        _to_sample(record, where, None, nouns)
        for record, where in tables.duplicate_pairs(tables.records(table, mapping), mapping)
    )


def _table_source(path: str | Path | None) -> tuple[Path, str] | None:
    """A table file's path and format (CSV, TSV, Parquet by suffix), or None for other data."""
    if path is None or hfdata.is_hf(path):
        return None
    source = _expand(Path(path))
    fmt = tables.table_format(source)
    return (source, fmt) if fmt is not None and source.is_file() else None


@dataclass
class Selection:
    """The samples a data source and its options select, checked (every record, unique ids, the
    domains asked for present, the limit applied) by one pass over the data.

    ``ids`` are the selected samples' ids in order. The samples themselves are :attr:`kept` when
    the selection was made with ``keep`` (what :func:`load_samples` returns); otherwise
    :meth:`samples` reads the data again and yields them one at a time, so that a run of a million
    samples never holds their texts (a JSONL file is read line by line)."""

    source: Path | str
    ids: list[str]
    rows: list[int] | None
    """The selected samples' record numbers in the data (None: every record, in order)."""
    kept: list[Sample] | None
    read: Callable[[], Iterator[Sample]]
    """Every sample of the data, in file order, read and checked again."""

    def __len__(self) -> int:
        return len(self.ids)

    def samples(self) -> Iterator[Sample]:
        """The selected samples, in order (from memory when kept, else read again)."""
        if self.kept is not None:
            yield from self.kept
            return
        wanted = iter(self.rows) if self.rows is not None else None
        following = next(wanted, None) if wanted is not None else None
        for number, sample in enumerate(self.read()):
            if wanted is None or number == following:
                yield sample
                following = next(wanted, None) if wanted is not None else None
                if wanted is not None and following is None:
                    return


def select_samples(
    path: str | Path | None = None,
    *,
    domains: Iterable[str] | None = None,
    limit: int | None = None,
    columns: str | dict[str, str] | None = None,
    limit_order: str = "balanced",
    keep: bool = True,
) -> Selection:
    """Check the data at ``path`` and select its samples, as :func:`load_samples` describes; with
    ``keep`` False the texts are not kept (:class:`Selection`)."""
    if path is not None and not isinstance(path, (str, Path)):
        raise SaecliError(f"data must be a path, got {type(path).__name__} {path!r}")
    check_limit(limit)
    check_option("limit_order", limit_order)
    if domains is not None:
        domains = check_domains(tuple(domains) if not isinstance(domains, str) else domains)
    source, read = _sample_reader(path, columns_mapping(columns))
    ids: list[str] = []
    codes: dict[str, int] = {}
    domain_of: list[int] = []
    kept: list[Sample] | None = [] if keep else None
    for sample in read():
        ids.append(sample.id)
        domain_of.append(codes.setdefault(sample.domain, len(codes)))
        if kept is not None:
            kept.append(sample)
    if not ids:
        raise SaecliError(f"{source}: no samples")
    dupes = [sid for sid, n in Counter(ids).items() if n > 1]
    if dupes:
        raise SaecliError(f"{source}: duplicate sample id {dupes[0]!r}", hint="sample ids must be unique")
    rows: list[int] | None = None
    if domains is not None:
        missing = [d for d in domains if d not in codes]
        if missing:
            raise SaecliError(f"domain {missing[0]!r} is not in the data", hint=f"domains present: {', '.join(sorted(codes))}")
        wanted = {codes[d] for d in domains}
        rows = [i for i, code in enumerate(domain_of) if code in wanted]
    if limit is not None:
        among = rows if rows is not None else range(len(ids))
        rows = [among[i] for i in limited_positions([domain_of[r] for r in among], limit, limit_order)]
    if rows is not None and len(rows) == len(ids):
        rows = None
    if rows is not None:
        ids = [ids[r] for r in rows]
        kept = [kept[r] for r in rows] if kept is not None else None
    return Selection(source=source, ids=ids, rows=rows, kept=kept, read=read)


def _sample_reader(path: str | Path | None, given: Any) -> tuple[Path | str, Callable[[], Iterator[Sample]]]:
    """Where the data is, and a function that reads its samples, every one checked, in file order
    (each call reads the data again)."""
    if hfdata.is_hf(path):
        return str(path), lambda: _mapped_samples(*hfdata.load(str(path), given))
    table = _table_source(path)
    if table is not None:
        source, fmt = table

        def read_table() -> Iterator[Sample]:
            rows = _table_of(source, fmt)
            return _mapped_samples(rows, tables.resolve_mapping(rows.columns, str(source), given=given, domain=source.stem))

        return source, read_table
    source = _expand(Path(path)) if path is not None else builtin_benchmark_path()
    files = _files_of(source)  # a path that does not exist is reported first
    if given is not None:
        raise SaecliError("--columns maps the columns of a CSV, TSV or Parquet table or an hf: dataset, not JSON records",
                          hint="JSON records name their fields: id, domain, prompt, fact, hallucination")  # fmt: skip
    return source, lambda: (_to_sample(record, where, suite) for file, suite in files for record, where in _read_records(file))


def load_samples(
    path: str | Path | None = None,
    *,
    domains: Iterable[str] | None = None,
    limit: int | None = None,
    columns: str | dict[str, str] | None = None,
    limit_order: str = "balanced",
) -> list[Sample]:
    """Load benchmark samples, in file order.

    ``path`` is a JSON list, a JSONL file, or a folder of them (the HB-1000 layout maps its four
    files to the domains entity/temporal/logical/adversarial, keeping each record's own ``domain``
    as ``topic``); a ``.csv``, ``.tsv`` or ``.parquet`` table; or ``hf:NAME[:CONFIG][:SPLIT]``, a
    Hugging Face dataset in the local cache. None loads the built-in benchmark. ``columns``
    (``"prompt=question,fact=best_answer"`` or a dict) names the columns of a table or dataset that
    hold the sample fields (default: the columns named like them, or a built-in dataset's mapping).
    ``limit`` keeps N of the samples (after the domain filter) as :func:`limited` picks them by ``limit_order``.
    """
    selection = select_samples(path, domains=domains, limit=limit, columns=columns, limit_order=limit_order)
    assert selection.kept is not None
    return selection.kept


def run_samples(config: RunConfig) -> list[Sample]:
    """The samples a run's configuration selects (its data, columns, domains and limit, in its
    limit order): what every command that runs the engine analyses."""
    selection = run_selection(config, keep=True)
    assert selection.kept is not None
    return selection.kept


def run_selection(config: RunConfig, *, keep: bool = False) -> Selection:
    """:func:`run_samples` as a :class:`Selection`: by default without the texts, which a run of
    any size reads again as it goes (:meth:`Selection.samples`)."""
    return select_samples(config.data, domains=config.domains, limit=config.limit, columns=config.columns,
                          limit_order=config.limit_order, keep=keep)  # fmt: skip


def limited(samples: list[Sample], limit: int, order: str = "balanced") -> list[Sample]:
    """``limit`` of ``samples``, in file order, as :func:`limited_positions` picks them."""
    return [samples[i] for i in limited_positions([s.domain for s in samples], limit, order)]


def limited_positions(domains: Sequence[Any], limit: int, order: str = "balanced") -> list[int]:
    """Which ``limit`` of samples whose domains are ``domains`` to keep, as positions in file order.
    ``file``: the first ones. ``balanced``: as a round-robin over the domains (in the order each
    first appears) picks them, each domain's in file order: every domain gives as many as the
    smallest it can, a domain with too few gives all of its own and the others share the rest, the
    first domains one more when it does not divide evenly. Benchmarks list their domains one after
    the other, so the first N would often be one domain alone."""
    if order == "file" or limit >= len(domains):
        return list(range(min(limit, len(domains))))
    members: dict[Any, list[int]] = {}
    for i, domain in enumerate(domains):
        members.setdefault(domain, []).append(i)
    sizes = [len(m) for m in members.values()]
    # The number of whole rounds: the largest r whose rounds take at most ``limit`` samples
    # (a binary search, so that a million samples in thousands of domains cost no loop per sample).
    low, high = 0, max(sizes)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(min(n, mid) for n in sizes) <= limit else (low, mid - 1)
    left = limit - sum(min(n, low) for n in sizes)
    keep: list[int] = []
    for indices in members.values():
        extra = 1 if left > 0 and len(indices) > low else 0
        left -= extra
        keep += indices[: low + extra]
    return sorted(keep)


def dataset_identity(path: str | Path | None, columns: str | dict[str, str] | None = None) -> dict[str, Any]:
    """What the run manifest records of the data: its format, where it is, the SHA-256 of each file
    read (an ``hf:`` dataset: its name, config, split and revision) and the column mapping used."""
    given = columns_mapping(columns)
    if hfdata.is_hf(path):
        return hfdata.identity(str(path), given)
    table = _table_source(path)
    if table is not None:
        source, fmt = table
        rows = _table_of(source, fmt)
        mapping = tables.resolve_mapping(rows.columns, str(source), given=given, domain=source.stem)
        return {"format": fmt, "path": str(source), "sha256": file_sha256(source), "columns": mapping.describe()}
    source = _expand(Path(path)) if path is not None else builtin_benchmark_path()
    files = _files_of(source)
    fmt = "builtin" if path is None else "folder" if source.is_dir() else source.suffix.lstrip(".") or "json"
    return {
        "format": fmt,
        "path": str(source) if path is not None else source.name,
        "files": [{"path": file.name, "sha256": file_sha256(file)} for file, _ in files],
    }
