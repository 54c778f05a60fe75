"""Benchmark samples: the built-in benchmark, JSON/JSONL files, folders, and the HB-1000 layout."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saecli.config import assets_dir
from saecli.errors import SaecliError

DOMAINS = ("entity", "temporal", "logical", "adversarial")

# HB-1000 (neural-polygraph) ships one file per suite; the record's own "domain" is a topic.
HB_FILES = {
    "bench_entity_swaps.json": "entity",
    "bench_temporal_shifts.json": "temporal",
    "bench_logical_inversions.json": "logical",
    "bench_adversarial_traps.json": "adversarial",
}

_REQUIRED_TEXT = ("prompt", "fact", "hallucination")


@dataclass(frozen=True)
class Sample:
    """One benchmark item: a prompt with a true and a false completion."""

    id: str
    domain: str
    prompt: str
    fact: str
    hallucination: str
    topic: str | None = None
    complexity: int | None = None

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


def _read_records(path: Path) -> list[tuple[Any, str]]:
    """Records of one JSON list or JSONL file, each with a label for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SaecliError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((json.loads(line), f"{path}:{lineno}"))
            except json.JSONDecodeError as exc:
                raise SaecliError(f"{path}: invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SaecliError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("samples"), list):
        data = data["samples"]
    if not isinstance(data, list):
        raise SaecliError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(rec, f"{path} record {i}") for i, rec in enumerate(data)]


def _to_sample(record: Any, where: str, suite: str | None) -> Sample:
    if not isinstance(record, dict):
        raise SaecliError(f"{where}: expected an object, got {type(record).__name__}")
    rid = record.get("id")
    label = f"{where} (id {rid!r})" if rid is not None else where
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise SaecliError(f"{label}: field 'id' is missing or not a string")
    for key in _REQUIRED_TEXT:
        value = record.get(key)
        if value is None:
            raise SaecliError(f"{label}: field '{key}' is missing")
        if not isinstance(value, str):
            raise SaecliError(f"{label}: field '{key}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise SaecliError(f"{label}: field '{key}' is empty")
    own_domain = record.get("domain")
    if own_domain is not None and not isinstance(own_domain, str):
        raise SaecliError(f"{label}: field 'domain' must be a string")
    topic = record.get("topic")
    if suite is not None:
        domain, topic = suite, own_domain
    else:
        if own_domain is None:
            raise SaecliError(f"{label}: field 'domain' is missing")
        domain = own_domain
    if topic is not None and not isinstance(topic, str):
        raise SaecliError(f"{label}: field 'topic' must be a string")
    complexity = record.get("complexity")
    if complexity is not None and (isinstance(complexity, bool) or not isinstance(complexity, int)):
        raise SaecliError(f"{label}: field 'complexity' must be an integer")
    return Sample(
        id=str(rid),
        domain=domain,
        prompt=record["prompt"].strip(),
        fact=record["fact"].strip(),
        hallucination=record["hallucination"].strip(),
        topic=topic,
        complexity=complexity,
    )


def _files_of(path: Path) -> list[tuple[Path, str | None]]:
    if path.is_file():
        return [(path, HB_FILES.get(path.name))]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise SaecliError(f"{path}: no .json or .jsonl files in this folder")
        hb = [p for p in files if p.name in HB_FILES]
        if hb:
            # HB-1000 order: the suites in their conventional order, whatever the listing order.
            order = list(HB_FILES)
            files = sorted(hb, key=lambda p: order.index(p.name))
        return [(p, HB_FILES.get(p.name)) for p in files]
    raise SaecliError(f"data path does not exist: {path}")


def load_samples(
    path: str | Path | None = None,
    *,
    domains: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Sample]:
    """Load benchmark samples, in file order.

    ``path`` is a JSON list, a JSONL file, or a folder of them (the HB-1000 layout maps its four
    files to the domains entity/temporal/logical/adversarial, keeping each record's own ``domain``
    as ``topic``). None loads the built-in benchmark.
    """
    source = Path(path).expanduser() if path is not None else builtin_benchmark_path()
    samples = [
        _to_sample(record, where, suite)
        for file, suite in _files_of(source)
        for record, where in _read_records(file)
    ]
    if not samples:
        raise SaecliError(f"{source}: no samples")
    dupes = [sid for sid, n in Counter(s.id for s in samples).items() if n > 1]
    if dupes:
        raise SaecliError(f"{source}: duplicate sample id {dupes[0]!r}", hint="sample ids must be unique")
    if domains is not None:
        wanted = list(domains)
        present = sorted({s.domain for s in samples})
        missing = [d for d in wanted if d not in present]
        if missing:
            raise SaecliError(f"domain {missing[0]!r} is not in the data", hint=f"domains present: {', '.join(present)}")
        samples = [s for s in samples if s.domain in wanted]
    if limit is not None:
        samples = samples[:limit]
    return samples
