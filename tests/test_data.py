"""Loading benchmarks: the built-in one, JSON/JSONL, folders, HB-1000, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from saecli.data import Sample, load_samples
from saecli.errors import SaecliError


def test_builtin_benchmark_shape():
    samples = load_samples()
    assert len(samples) == 200
    assert Counter(s.domain for s in samples) == {d: 50 for d in ("entity", "temporal", "logical", "adversarial")}
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


def test_limit_takes_the_domains_in_turn_in_file_order(hb_dir):
    """HB-1000 lists its suites one after the other: the first 100 would all be entity swaps."""
    both = load_samples(hb_dir, domains=["entity", "logical"])
    picked = load_samples(hb_dir, domains=["entity", "logical"], limit=100)
    assert Counter(s.domain for s in picked) == {"entity": 50, "logical": 50}
    chosen = {s.id for s in picked}
    # Each domain's first 50, kept in file order; the same subset every time.
    assert [s.id for s in picked] == [s.id for s in both if s.id in chosen]
    assert chosen == {s.id for d in ("entity", "logical") for s in [x for x in both if x.domain == d][:50]}
    assert picked == load_samples(hb_dir, domains=["logical", "entity"], limit=100)
    # A domain with too few gives all it has, the others share the rest (round-robin: the first ones one more).
    assert Counter(s.domain for s in load_samples(hb_dir, limit=900)) == {
        "entity": 230,
        "temporal": 270,
        "logical": 200,
        "adversarial": 200,
    }
    assert Counter(s.domain for s in load_samples(hb_dir, limit=6)) == {
        "entity": 2,
        "temporal": 2,
        "logical": 1,
        "adversarial": 1,
    }
    assert load_samples(hb_dir, limit=10**6) == load_samples(hb_dir)
    assert [s.id for s in load_samples(hb_dir, domains=["entity", "logical"], limit=100, limit_order="file")] == [
        s.id for s in both[:100]
    ]
    with pytest.raises(SaecliError, match="limit_order must be one of balanced, file"):
        load_samples(hb_dir, limit=2, limit_order="random")


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


GOOD = {"id": "a", "domain": "entity", "prompt": "P", "fact": "f", "hallucination": "h"}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("id", "", "field 'id' is empty"),
        ("id", 3, "field 'id' must be a string, got int"),
        ("domain", " ", "field 'domain' is empty"),
        ("prompt", None, "field 'prompt' is missing"),
        ("fact", b"f", "field 'fact' must be a string, got bytes"),
        ("hallucination", "h\ud800", "field 'hallucination' is not valid Unicode text: it holds the lone surrogate \\\\ud800"),
        ("topic", 5, "field 'topic' must be a string"),
        ("topic", "\udfff", "field 'topic' is not valid Unicode text"),
        ("complexity", True, "field 'complexity' must be an integer, got bool"),
        ("complexity", 1.0, "field 'complexity' must be an integer, got float"),
        ("complexity", 2**63, "field 'complexity' must be an integer from -9223372036854775808 to 9223372036854775807"),
        ("complexity", -(2**63) - 1, "field 'complexity' must be an integer from"),
        pytest.param(
            "complexity",
            10**5000,
            "field 'complexity' must be an integer from .* got a number of about 5001 digits",
            id="5001 digits",
        ),
    ],
)
def test_sample_checks_every_field(field, value, message):
    # The Python API builds Samples itself: the checks live in Sample, not only in the loader.
    with pytest.raises(SaecliError, match=message):
        Sample(**{**GOOD, field: value})


def test_sample_accepts_the_int64_range():
    assert Sample(**GOOD, complexity=2**63 - 1).complexity == 2**63 - 1
    assert Sample(**GOOD, complexity=-(2**63)).complexity == -(2**63)


@pytest.mark.parametrize(
    "record, message",
    [
        ({**GOOD, "complexity": 2**70}, "bad.json record 0 (id 'a'): field 'complexity' must be an integer from"),
        ({**GOOD, "prompt": "P\ud800"}, "bad.json record 0 (id 'a'): field 'prompt' is not valid Unicode text"),
        ({**GOOD, "id": "\ud800"}, "bad.json record 0 (id '\\ud800'): field 'id' is not valid Unicode text"),
        ({**GOOD, "id": True}, "bad.json record 0 (id True): field 'id' must be a string, got bool"),
        ({**GOOD, "domain": ""}, "bad.json record 0 (id 'a'): field 'domain' is empty"),
        ({**GOOD, "id": "x" * 500, "topic": 1}, "bad.json record 0 (id '" + "x" * 56 + "...): field 'topic'"),
    ],
)
def test_bad_fields_name_file_record_and_field(tmp_path, record, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(SaecliError) as info:
        load_samples(path)
    assert message in info.value.message


BIG = "9" * 5000  # beyond the 4300 digits Python turns into an int


def _with_number(key: str, digits: str, **record) -> str:
    """A JSON record of ``GOOD`` whose ``key`` holds the number ``digits``, written as it is."""
    return json.dumps({**GOOD, **record, key: "@"}).replace('"@"', digits)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("d.json", f"[{_with_number('complexity', BIG)}]",
         "d.json record 0 (id 'a'): field 'complexity' must be an integer from -9223372036854775808 to 9223372036854775807, "
         "got a 5000-digit number"),
        ("d.jsonl", json.dumps({**GOOD, "id": "b"}) + "\n" + _with_number("complexity", "-" + BIG) + "\n",
         "d.jsonl:2 (id 'a'): field 'complexity' must be an integer from"),
        ("d.json", f"[{_with_number('topic', BIG)}]", "d.json record 0 (id 'a'): field 'topic' must be a string, got int"),
    ],
    ids=["complexity in JSON", "complexity in JSONL", "topic"],
)  # fmt: skip
def test_integers_beyond_pythons_digit_limit_are_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SaecliError) as info:
        load_samples(tmp_path / name)
    assert message in info.value.message


def test_a_whole_number_id_of_any_length_is_its_text(tmp_path):
    (tmp_path / "d.json").write_text(f"[{_with_number('id', BIG)}]")
    assert load_samples(tmp_path / "d.json")[0].id == BIG


def test_hb_suite_names_the_records_own_domain_field(tmp_path):
    # In an HB-1000 suite file the record's "domain" becomes the topic: an error names "domain".
    path = tmp_path / "bench_entity_swaps.json"
    path.write_text(json.dumps([{**GOOD, "domain": 7}]))
    with pytest.raises(SaecliError, match="field 'domain' must be a string, got int"):
        load_samples(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (json.dumps([GOOD]).encode("utf-16"), "bad.json is not UTF-8 text \\(it looks like UTF-16\\)"),
        (
            json.dumps([{**GOOD, "fact": "Málaga"}], ensure_ascii=False).encode("latin-1"),
            "bad.json is not UTF-8 text: byte 58 \\(0xe1\\)",
        ),
        (b"[" * 100_000, "bad.json: invalid JSON: arrays or objects nested too deeply"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ],
)
def test_unreadable_data_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SaecliError, match=message):
        load_samples(path)


def test_utf8_bom_and_line_separators(tmp_path):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert load_samples(tmp_path / "bom.json")[0].id == "a"
    # U+2028 may stand unescaped inside a JSON string: JSONL splits at "\n" only.
    (tmp_path / "x.jsonl").write_text(json.dumps({**GOOD, "prompt": "a\u2028b"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert load_samples(tmp_path / "x.jsonl")[0].prompt == "a\u2028b"
    (tmp_path / "deep.jsonl").write_text(json.dumps(GOOD) + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(SaecliError, match="deep.jsonl: invalid JSON at line 2: arrays or objects nested too deeply"):
        load_samples(tmp_path / "deep.jsonl")


def test_read_failure_is_one_error(tmp_path, monkeypatch):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD]))

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(SaecliError, match="cannot read .*d.json: Permission denied"):
        load_samples(path)
    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(SaecliError, match="cannot read .*: Permission denied"):
        load_samples(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"limit": 0}, "limit must be a whole number >= 1, got 0"),
        ({"limit": True}, "limit must be a whole number"),
        ({"domains": []}, "domains must name at least one domain"),
        ({"domains": "entity"}, "domains must be a tuple of domain names"),
        ({"domains": [""]}, "domains must name at least one domain"),
    ],
)
def test_load_samples_checks_its_options(kwargs, message):
    with pytest.raises(SaecliError, match=message):
        load_samples(**kwargs)
