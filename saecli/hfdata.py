"""Hugging Face datasets from the local hub cache: ``--data hf:NAME[:CONFIG][:SPLIT]``.

Belongs here: reading the name (:func:`parse_spec`), finding the dataset in the hub cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``: where ``hf download
--repo-type dataset`` and ``datasets.load_dataset`` put it), its revision (``refs/main``), its
configs and splits (the ``configs:`` of the dataset card's YAML header, else the Hub's Parquet
layout ``CONFIG/SPLIT-00000-of-00001.parquet``), reading the split's Parquet files through file
handles, and the built-in mappings of the standard hallucination sets (:data:`BUILTINS`:
TruthfulQA generation and multiple-choice, HaluEval QA, dialogue and summarization). Never a
download: what is not in the cache is one error naming the ``hf download`` command that fetches it.

Does not belong here: the column mapping itself and Parquet reading (``saecli.tables``), checking
the samples (``saecli.data``). Imports ``saecli.tables``, ``saecli.config`` and ``saecli.errors``;
PyYAML only to read a dataset card.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saecli.config import HF_PREFIX
from saecli.errors import SaecliError
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
    read_parquet_table,
    resolve_mapping,
)

ALIASES = {"truthful_qa": "truthfulqa/truthful_qa"}
"""Old names the Hub redirects, → the repo they name now (the cache may hold either)."""


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
    ("pminervini/halueval", name): "it holds one response per item, labelled as hallucinated or not, not a true and a false completion"
    for name in ("general", "qa_samples", "dialogue_samples", "summarization_samples")
}
"""Configs of the standard sets that have no fact/hallucination pair."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
_SHARD = re.compile(r"(?P<split>[A-Za-z0-9_.]+?)(-\d{5}-of-\d{5})?(-[0-9a-f]+)?\.parquet")


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


def hub_cache() -> Path:
    """The hub cache, as ``huggingface_hub`` finds it (read from the environment at each call)."""
    default_home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    home = os.path.expandvars(os.path.expanduser(os.getenv("HF_HOME", default_home)))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HUB_CACHE", legacy))))


def fetch_command(repo: str, includes: list[str] | None = None) -> str:
    """The ``hf download`` that puts ``repo`` (or the files matching ``includes``) in the cache."""
    extra = "".join(f" --include '{pattern}'" for pattern in includes or [])
    return f"hf download --repo-type dataset {repo}{extra}"


@dataclass(frozen=True)
class Located:
    """A dataset split found in the cache."""

    spec: Spec
    repo: str
    """The repo id as the cache folder spells it (``truthfulqa/truthful_qa``)."""
    revision: str
    snapshot: Path
    config: str
    split: str
    files: tuple[str, ...]
    """The split's Parquet files, relative to the snapshot, in shard order."""

    @property
    def label(self) -> str:
        return f"hf:{self.repo}:{self.config}:{self.split}"

    @property
    def builtin(self) -> Builtin | None:
        return BUILTINS.get((self._canonical.lower(), self.config))

    @property
    def _canonical(self) -> str:
        return ALIASES.get(self.repo.lower(), self.repo)


def _repo_folder(cache: Path, name: str) -> tuple[str, Path] | None:
    """The cache folder of ``name`` (or of the names the Hub redirects to and from it), matched
    without regard to case as the Hub matches repo ids."""
    canonical = ALIASES.get(name.lower(), name)
    wanted = [canonical] + [old for old, new in ALIASES.items() if new.lower() == canonical.lower()] + [name]
    try:
        folders = {p.name.lower(): p for p in cache.iterdir() if p.name.startswith("datasets--") and p.is_dir()}
    except OSError:
        return None
    for repo in wanted:
        folder = folders.get(f"datasets--{repo.replace('/', '--')}".lower())
        if folder is not None:
            return folder.name[len("datasets--") :].replace("--", "/"), folder
    return None


def _snapshot(folder: Path, repo: str) -> tuple[str, Path]:
    ref = folder / "refs" / "main"
    try:
        revision = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        snapshots = sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir()) if (folder / "snapshots").is_dir() else []
    except OSError as exc:
        raise SaecliError(f"cannot read the cache folder {folder}: {exc.strerror or exc}") from None
    if revision and (folder / "snapshots" / revision).is_dir():
        return revision, folder / "snapshots" / revision
    if len(snapshots) == 1:
        return snapshots[0].name, snapshots[0]
    raise SaecliError(
        f"the cache folder {folder} has {'no' if not snapshots else 'several'} snapshot(s) and no refs/main naming one",
        hint=f"fetch the dataset again: {fetch_command(repo)}",
    )


def _files(snapshot: Path) -> list[str]:
    """Every file of the snapshot, relative and with ``/`` (walked, never globbed)."""
    out = []
    for root, dirs, names in os.walk(snapshot, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(snapshot)
        out += [(rel / n).as_posix() for n in sorted(names)]
    return out


def _card_configs(snapshot: Path) -> dict[str, dict[str, list[str]]] | None:
    """``configs:`` of the dataset card's YAML header: config → split → path patterns; None when
    the card is not there or declares none."""
    card = snapshot / "README.md"
    try:
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return None
    import yaml

    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    entries = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(entries, list):
        return None
    configs: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        splits: dict[str, list[str]] = {}
        files = entry.get("data_files")
        if isinstance(files, (str, list)) and all(isinstance(f, str) for f in ([files] if isinstance(files, str) else files)):
            splits["train"] = [files] if isinstance(files, str) else list(files)
        elif isinstance(files, list):
            for item in files:
                if isinstance(item, dict) and "split" in item and "path" in item:
                    paths = item["path"]
                    splits[str(item["split"])] = [paths] if isinstance(paths, str) else [str(p) for p in paths]
        configs[str(entry.get("config_name", "default"))] = splits
    return configs or None


def _layout_configs(files: list[str]) -> dict[str, dict[str, list[str]]]:
    """Configs and splits from the Hub's Parquet layout: ``CONFIG/SPLIT-00000-of-00001.parquet``
    (``data/`` is the config ``default``) or ``CONFIG/SPLIT/0000.parquet``."""
    configs: dict[str, dict[str, list[str]]] = {}
    for path in files:
        parts = path.split("/")
        if not path.endswith(".parquet") or len(parts) not in (2, 3):
            continue
        config = "default" if parts[0] == "data" else parts[0]
        if len(parts) == 3:
            split = parts[1]
        else:
            shard = _SHARD.fullmatch(parts[1])
            if shard is None:
                continue
            split = shard.group("split")
        configs.setdefault(config, {}).setdefault(split, []).append(path)
    return configs


def _matches(path: str, pattern: str) -> bool:
    """A card's data-file pattern against a snapshot path, segment by segment (``*`` stays within
    a folder, as in the ``datasets`` library)."""
    parts, wanted = path.split("/"), pattern.strip("/").split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def _choose(kind: str, given: str | None, available: list[str], spec: Spec, example: str) -> str:
    if given is not None:
        if given not in available:
            raise SaecliError(f"{spec.text}: unknown {kind} {given!r}", hint=f"{kind}s: {', '.join(available) or 'none'}")
        return given
    if len(available) == 1:
        return available[0]
    raise SaecliError(f"{spec.text}: name a {kind}, one of {', '.join(available)}", hint=f"e.g. {example}")


def locate(spec: Spec) -> Located:
    """The split ``spec`` names, in the hub cache; anything missing is one error with the command
    that fetches it."""
    cache = hub_cache()
    found = _repo_folder(cache, spec.name)
    repo = ALIASES.get(spec.name.lower(), spec.name)
    if found is None:
        raise SaecliError(
            f"dataset {spec.name} is not in the Hugging Face cache ({cache})",
            hint=f"fetch it with `{fetch_command(repo)}`, or point HF_HUB_CACHE (or HF_HOME) at the cache that holds it",
        )
    repo, folder = found
    revision, snapshot = _snapshot(folder, repo)
    files = _files(snapshot)
    card = _card_configs(snapshot)
    configs = card if card is not None else _layout_configs(files)
    if not configs:
        raise SaecliError(f"{spec.text}: no Parquet data files in the cached snapshot {snapshot}", hint=f"fetch them: {fetch_command(repo)}")
    if card is None and spec.config is not None and spec.config not in configs:
        # No dataset card to tell an unknown config from one not downloaded: say both.
        raise SaecliError(
            f"{spec.text}: config {spec.config!r} is not in the cache (cached: {', '.join(sorted(configs))})",
            hint=f"if {repo} has it, fetch it with `{fetch_command(repo, [spec.config + '/*'])}`",
        )
    config = _choose("config", spec.config, sorted(configs), spec, f"hf:{spec.name}:{sorted(configs)[0]}")
    splits = configs[config]
    split = _choose("split", spec.split, sorted(splits), spec, f"hf:{spec.name}:{config}:{sorted(splits)[0]}")
    patterns = splits[split]
    chosen = sorted({f for f in files for p in patterns if _matches(f, p)}) if card is not None else sorted(patterns)
    if not chosen:
        raise SaecliError(
            f"{spec.text}: the files of config {config!r}, split {split!r} are not in the cache ({snapshot})",
            hint=f"fetch them with `{fetch_command(repo, patterns)}`",
        )
    other = [f for f in chosen if not f.endswith(".parquet")]
    if other:
        raise SaecliError(f"{spec.text}: {other[0]} is not a Parquet file; saecli reads the Parquet files of a dataset",
                          hint="convert the split to Parquet, or export it as CSV and pass the file")  # fmt: skip
    return Located(spec, repo, revision, snapshot, config, split, tuple(chosen))


def read_table(located: Located) -> Table:
    """The rows of every file of the split, in shard order, labelled ``hf:REPO:CONFIG:SPLIT row N``."""
    columns: tuple[str, ...] | None = None
    rows: list[tuple[dict[str, Any], str]] = []
    for rel in located.files:
        table = read_parquet_table(located.snapshot / rel)
        if columns is not None and table.columns != columns:
            raise SaecliError(f"{located.label}: {rel} has other columns than the split's first file")
        columns = table.columns
        rows += [(row, f"{located.label} row {len(rows) + i}") for i, (row, _) in enumerate(table.rows)]
    return Table(columns or (), rows)


def mapping(located: Located, columns: tuple[str, ...], given: dict[str, str] | None) -> ColumnMap:
    """A built-in set's mapping (``given`` replacing single fields), else the same-named columns
    and ``given``; ids ``{set}-{row}``."""
    key = (located._canonical.lower(), located.config)
    if key in UNPAIRED and not given:
        raise SaecliError(f"{located.label} has no fact/hallucination pairs: {UNPAIRED[key]}",
                          hint="use its qa, dialogue or summarization config")  # fmt: skip
    builtin = located.builtin
    if builtin is not None:
        return resolve_mapping(columns, located.label, given=given, base=builtin.fields, domain=builtin.domain,
                               make_id=RowId(builtin.id_prefix))  # fmt: skip
    name = located.repo.split("/")[-1] + ("" if located.config == "default" else f"-{located.config}")
    return resolve_mapping(columns, located.label, given=given, domain=name, make_id=RowId(name))


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

    with open(located.snapshot / located.files[0], "rb") as handle:
        columns = tuple(pl.read_parquet_schema(handle))
    return {
        "format": "hf",
        "requested": text,
        "name": located.repo,
        "config": located.config,
        "split": located.split,
        "revision": located.revision,
        "files": [{"path": rel, "sha256": file_sha256(located.snapshot / rel)} for rel in located.files],
        "builtin_mapping": located.builtin is not None,
        "columns": mapping(located, columns, given).describe(),
    }
