"""Loading benchmarks: the built-in one, JSON/JSONL, folders, HB-1000, and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from saecli.data import DOMAINS, load_samples
from saecli.errors import SaecliError


def test_builtin_benchmark_shape():
    samples = load_samples()
    assert len(samples) == 200
    assert Counter(s.domain for s in samples) == {d: 50 for d in DOMAINS}
    assert len({s.id for s in samples}) == 200
    assert all(s.fact != s.hallucination for s in samples)
    assert samples[0].fact_text == f"{samples[0].prompt} {samples[0].fact}"


def test_hb1000_layout(hb_dir):
    samples = load_samples(hb_dir)
    assert len(samples) == 930
    assert Counter(s.domain for s in samples) == {"entity": 230, "temporal": 300, "logical": 200, "adversarial": 200}
    first = samples[0]
    assert (first.id, first.domain, first.topic) == ("geo_001", "entity", "geography")
    assert {s.topic for s in samples if s.domain == "temporal"} >= {"temporal"}
    assert all(isinstance(s.complexity, int) for s in samples)


def test_hb1000_single_file_keeps_suite(hb_dir):
    samples = load_samples(hb_dir / "bench_logical_inversions.json")
    assert {s.domain for s in samples} == {"logical"} and len(samples) == 200


def test_domains_and_limit(hb_dir):
    samples = load_samples(hb_dir, domains=["logical", "entity"], limit=250)
    assert len(samples) == 250 and {s.domain for s in samples} == {"entity", "logical"}


def test_jsonl_and_json_list(tmp_path):
    rec = {"id": "a", "domain": "entity", "prompt": "P", "fact": "f", "hallucination": "h"}
    (tmp_path / "x.jsonl").write_text(json.dumps(rec) + "\n\n" + json.dumps({**rec, "id": "b"}) + "\n")
    assert [s.id for s in load_samples(tmp_path / "x.jsonl")] == ["a", "b"]
    (tmp_path / "y.json").write_text(json.dumps([rec]))
    assert load_samples(tmp_path / "y.json")[0].topic is None


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"id": "a"', "invalid JSON at line 1"),
        ('[{"id": "a", "domain": "entity", "prompt": "P", "fact": "f"}]', "'hallucination' is missing"),
        ('[{"id": "a", "domain": "entity", "prompt": "P", "fact": 3, "hallucination": "h"}]', "'fact' must be a string"),
        ('[{"id": "a", "domain": "entity", "prompt": " ", "fact": "f", "hallucination": "h"}]', "'prompt' is empty"),
        (
            '[{"id": "a", "domain": "entity", "prompt": "P", "fact": "f", "hallucination": "h"},'
            ' {"id": "a", "domain": "entity", "prompt": "Q", "fact": "f", "hallucination": "h"}]',
            "duplicate sample id 'a'",
        ),
        ('{"x": 1}', "expected a JSON list"),
    ],
)
def test_bad_records(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SaecliError, match=message):
        load_samples(path)


def test_missing_path_and_unknown_domain(tmp_path):
    with pytest.raises(SaecliError, match="does not exist"):
        load_samples(tmp_path / "nope.json")
    with pytest.raises(SaecliError, match="'physics' is not in the data"):
        load_samples(domains=["physics"])
