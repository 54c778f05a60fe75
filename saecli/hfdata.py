"""Hugging Face datasets from the local hub cache: ``--data hf:NAME[:CONFIG][:SPLIT]``.

Belongs here: reading the name (:func:`parse_spec`), reading the split's Parquet files through file
handles (:func:`read_table`), and the built-in mappings of the standard hallucination sets
(:data:`BUILTINS`: TruthfulQA generation and multiple-choice, HaluEval QA, dialogue and
summarization; :data:`UNPAIRED`: their configs without a fact/hallucination pair), and the
dataset identity the manifest records (:func:`identity`).

Does not belong here: finding the dataset in the hub cache, its revision, configs, splits and files
(``saecli.hub``: :func:`saecli.hub.cached_dataset`; never a download), the column mapping itself
and Parquet reading (``saecli.tables``), checking the samples (``saecli.data``). Imports
``saecli.hub``, ``saecli.tables``, ``saecli.io`` (file hashes), ``saecli.config`` and ``saecli.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from saecli.config import HF_PREFIX
from saecli.errors import SaecliError
from saecli.hub import CachedDataset, cached_dataset
from saecli.io import file_sha256
from saecli.tables import (
    Choice,
    Column,
    ColumnMap,
    First,
    RowId,
    Source,
    Table,
    Template,
    read_parquet_file,
    read_parquet_table,
    resolve_mapping,
)


@dataclass(frozen=True)
class Builtin:
    """A standard set's mapping to prompt / fact / hallucination."""

    domain: str
    """The domain of every sample (``--domains`` filters by it)."""
    id_prefix: str
    """Sample ids are ``{id_prefix}-{row}``: the row's position in the split at that revision."""
    fields: dict[str, Source]


BUILTINS: dict[tuple[str, str], Builtin] = {
    ("truthfulqa/truthful_qa", "generation"): Builtin("truthfulqa", "truthfulqa-gen", {
        "prompt": Column("question"), "fact": Column("best_answer"), "hallucination": First("incorrect_answers"),
        "topic": Column("category"),
    }),
    ("truthfulqa/truthful_qa", "multiple_choice"): Builtin("truthfulqa", "truthfulqa-mc", {
        "prompt": Column("question"), "fact": Choice("mc1_targets", 1), "hallucination": Choice("mc1_targets", 0),
    }),
    ("pminervini/halueval", "qa"): Builtin("halueval-qa", "halueval-qa", {
        "prompt": Column("question"), "fact": Column("right_answer"), "hallucination": Column("hallucinated_answer"),
    }),
    ("pminervini/halueval", "dialogue"): Builtin("halueval-dialogue", "halueval-dialogue", {
        "prompt": Column("dialogue_history"), "fact": Column("right_response"), "hallucination": Column("hallucinated_response"),
    }),
    ("pminervini/halueval", "summarization"): Builtin("halueval-summarization", "halueval-summarization", {
        "prompt": Template("document", "{}\n\nSummary:"), "fact": Column("right_summary"),
        "hallucination": Column("hallucinated_summary"),
    }),
}  # fmt: skip
"""(repo in lower case, config) → its mapping. ``--columns`` replaces single fields of it."""

UNPAIRED = {
    (
        "pminervini/halueval",
        name,
    ): "it holds one response per item, labelled as hallucinated or not, not a true and a false completion"
    for name in ("general", "qa_samples", "dialogue_samples", "summarization_samples")
}
"""Configs of the standard sets that have no fact/hallucination pair."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


@dataclass(frozen=True)
class Spec:
    """``hf:NAME[:CONFIG][:SPLIT]`` as given."""

    text: str
    name: str
    config: str | None
    split: str | None


def is_hf(data: Any) -> bool:
    return isinstance(data, str) and data.startswith(HF_PREFIX)


def parse_spec(text: str) -> Spec:
    """``hf:truthfulqa/truthful_qa:generation:validation`` → its parts (config and split optional)."""
    parts = text[len(HF_PREFIX) :].split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip() for p in parts) or not _NAME.fullmatch(parts[0]):
        raise SaecliError(
            f"{text!r} is not a Hugging Face dataset: the form is hf:NAME[:CONFIG][:SPLIT]",
            hint="e.g. hf:truthfulqa/truthful_qa:generation:validation, hf:pminervini/HaluEval:qa",
        )
    return Spec(text, parts[0], *(parts[1:] + [None, None])[:2])


def locate(spec: Spec) -> CachedDataset:
    """The split ``spec`` names, in the hub cache (:func:`saecli.hub.cached_dataset`)."""
    return cached_dataset(spec.text, spec.name, spec.config, spec.split)


def label(found: CachedDataset) -> str:
    """``hf:REPO:CONFIG:SPLIT``: how rows and the mapping name the split."""
    return f"{HF_PREFIX}{found.repo}:{found.config}:{found.split}"


def builtin(found: CachedDataset) -> Builtin | None:
    """The built-in mapping of the split's set and config, if it has one."""
    return BUILTINS.get((found.canonical.lower(), found.config))


def read_table(located: CachedDataset) -> Table:
    """The rows of every file of the split, in shard order, labelled ``hf:REPO:CONFIG:SPLIT row N``:
    the files' columns checked first, then each file read as its rows are wanted."""
    import polars as pl

    columns: tuple[str, ...] | None = None
    for rel in located.files:
        found = tuple(read_parquet_file(located.snapshot / rel, pl.read_parquet_schema))
        if columns is not None and found != columns:
            raise SaecliError(f"{label(located)}: {rel} has other columns than the split's first file")
        columns = found

    def rows() -> Iterator[tuple[dict[str, Any], str]]:
        number = 0
        for rel in located.files:
            for row, _ in read_parquet_table(located.snapshot / rel).rows:
                yield row, f"{label(located)} row {number}"
                number += 1

    return Table(columns or (), rows())


def mapping(located: CachedDataset, columns: tuple[str, ...], given: dict[str, str] | None) -> ColumnMap:
    """A built-in set's mapping (``given`` replacing single fields), else the same-named columns
    and ``given``; ids ``{set}-{row}``."""
    key = (located.canonical.lower(), located.config)
    if key in UNPAIRED and not given:
        raise SaecliError(f"{label(located)} has no fact/hallucination pairs: {UNPAIRED[key]}",
                          hint="use its qa, dialogue or summarization config")  # fmt: skip
    found = builtin(located)
    if found is not None:
        return resolve_mapping(columns, label(located), given=given, base=found.fields, domain=found.domain,
                               make_id=RowId(found.id_prefix))  # fmt: skip
    name = located.repo.split("/")[-1] + ("" if located.config == "default" else f"-{located.config}")
    return resolve_mapping(columns, label(located), given=given, domain=name, make_id=RowId(name))


def load(text: str, given: dict[str, str] | None) -> tuple[Table, ColumnMap]:
    """The rows of ``hf:...`` and how they map to samples."""
    located = locate(parse_spec(text))
    table = read_table(located)
    return table, mapping(located, table.columns, given)


def identity(text: str, given: dict[str, str] | None) -> dict[str, Any]:
    """What the manifest records of an ``hf:`` dataset: its name, config, split, revision, the
    SHA-256 of each file read and the mapping used."""
    located = locate(parse_spec(text))
    import polars as pl

    columns = tuple(read_parquet_file(located.snapshot / located.files[0], pl.read_parquet_schema))
    return {
        "format": "hf",
        "requested": text,
        "name": located.repo,
        "config": located.config,
        "split": located.split,
        "revision": located.revision,
        "files": [{"path": rel, "sha256": file_sha256(located.snapshot / rel)} for rel in located.files],
        "builtin_mapping": builtin(located) is not None,
        "columns": mapping(located, columns, given).describe(),
    }
