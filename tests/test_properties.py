"""Property-based: whatever malformed input ``saecli run`` is given (data files, preset TOMLs,
option values), it answers with exit code 2, exactly one line on stderr, no traceback, and leaves
the folder it ran in as it was. Each example loads no model: the input is refused before that."""

from __future__ import annotations

import contextlib
import json
import math
import string
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from saecli.cli import app
from saecli.config import load_preset_file
from saecli.data import load_samples

runner = CliRunner()
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {"id": "a", "domain": "entity", "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"}
INT64 = (-(2**63), 2**63 - 1)
MISSING = object()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def _refused(args: list[str], files: dict[str, str | bytes] | None = None) -> None:
    """Write ``files`` into a fresh folder, run ``saecli run ARGS --out <folder>/new`` there and
    check the one-line refusal. ``{dir}`` in an argument is the folder."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        root = Path(tmp)
        for name, content in (files or {}).items():
            (root / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        argv = ["run", *(a.replace("{dir}", tmp) for a in args), "--out", str(root / "new")]
        before = _snapshot(root)
        result = runner.invoke(app, argv)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (argv, result.exit_code, result.output)
        assert "Traceback" not in result.output, result.output
        assert len(lines) == 1, (argv, result.stderr)
        assert _snapshot(root) == before, argv
        assert not (root / "new").exists()


# -- values ------------------------------------------------------------------------------------------

SCALARS = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
ANY = st.one_of(
    SCALARS,
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=4), st.integers(), max_size=2),
)
NOT_STRING = ANY.filter(lambda v: not isinstance(v, str))
SURROGATE = st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), st.integers(0xD800, 0xDFFF).map(chr), st.text(max_size=4))
BLANK = st.text(" \t\n", max_size=3)
OUT_OF_INT64 = st.one_of(st.integers(min_value=INT64[1] + 1), st.integers(max_value=INT64[0] - 1))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- malformed data files ------------------------------------------------------------------------------

# For each field, values that no record may hold there (MISSING: the key left out).
BAD_FIELD = {
    "id": st.one_of(st.just(MISSING), st.booleans(), st.floats(), st.lists(st.integers(), max_size=2), BLANK, SURROGATE),
    "domain": st.one_of(st.just(MISSING), NOT_STRING, BLANK, SURROGATE),
    "prompt": st.one_of(st.just(MISSING), st.none(), NOT_STRING, BLANK, SURROGATE),
    "fact": st.one_of(st.just(MISSING), st.none(), NOT_STRING, BLANK, SURROGATE),
    "hallucination": st.one_of(st.just(MISSING), st.none(), NOT_STRING, BLANK, SURROGATE),
    "topic": st.one_of(NOT_STRING, SURROGATE),
    "complexity": st.one_of(OUT_OF_INT64, st.booleans(), st.floats(), st.text(max_size=4), st.lists(st.integers(), max_size=2)),
}


@st.composite
def bad_record_files(draw) -> tuple[str, str]:
    """A JSON list or JSONL file of good records and one with a bad field."""
    n = draw(st.integers(0, 3))
    records = [{**GOOD, "id": f"r{i}"} for i in range(n)]
    key = draw(st.sampled_from(sorted(BAD_FIELD)))
    value = draw(BAD_FIELD[key])
    bad = {k: v for k, v in {**GOOD, "id": "bad", key: value}.items() if v is not MISSING}
    records.insert(draw(st.integers(0, n)), bad)
    if draw(st.booleans()):
        return "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n"
    return "d.json", json.dumps(records)


@st.composite
def broken_json_files(draw) -> tuple[str, str | bytes]:
    """Random bytes, JSON that is not a list of objects, deep nesting, or JSONL with a broken line."""
    kind = draw(st.sampled_from(["bytes", "not a list", "not objects", "nested", "jsonl line", "encoding"]))
    if kind == "bytes":
        return draw(st.sampled_from(["d.json", "d.jsonl"])), draw(st.binary(max_size=64))
    if kind == "not a list":
        return "d.json", json.dumps(draw(st.one_of(SCALARS, st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))))
    if kind == "not objects":
        return "d.json", json.dumps(
            draw(st.lists(st.one_of(SCALARS, st.lists(st.integers(), max_size=2)), min_size=1, max_size=3))
        )
    if kind == "nested":
        depth = draw(st.integers(1, 100_000))
        return "d.json", "[" * depth + ("]" * depth if draw(st.booleans()) else "")
    if kind == "encoding":
        text = json.dumps([{**GOOD, "fact": draw(st.sampled_from(["Málaga", "Zürich", "Ελλάδα"]))}], ensure_ascii=False)
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1253"]))
        with contextlib.suppress(UnicodeEncodeError):
            return "d.json", text.encode(encoding)
        return "d.json", text.encode("utf-16")
    lines = [json.dumps({**GOOD, "id": f"r{i}"}) for i in range(draw(st.integers(0, 3)))]
    broken = draw(st.text(max_size=20).filter(lambda s: s.strip() and "\n" not in s and "\r" not in s))
    lines.insert(draw(st.integers(0, len(lines))), broken)
    return "d.jsonl", "\n".join(lines)


def test_good_records_load(tmp_path):
    # The properties below start from these records: they must be valid, so that what fails is the change.
    (tmp_path / "d.json").write_text(json.dumps([{**GOOD, "id": f"r{i}"} for i in range(3)]))
    assert len(load_samples(tmp_path / "d.json")) == 3


@FAST
@given(bad_record_files())
def test_record_with_a_bad_field_is_refused(file):
    name, content = file
    _refused(["--data", f"{{dir}}/{name}"], {name: content})


@FAST
@given(broken_json_files())
def test_broken_data_file_is_refused(file):
    name, content = file
    _refused(["--data", f"{{dir}}/{name}"], {name: content})


# -- malformed preset TOMLs ----------------------------------------------------------------------------

BASE_PRESET: dict[str, Any] = {
    "name": "p",
    "model": {"name": "saecli-tiny", "path": "builtin:tiny/model"},
    "sae": [{"layer": layer, "path": f"builtin:tiny/saes/layer_{layer}"} for layer in (0, 2, 3)],
    "defaults": {"batch_size": 16},
}
DTYPES, DEVICES = ("float32", "float64", "bfloat16", "float16"), ("auto", "cpu", "cuda", "mps")

# For each key, when a value is NOT acceptable there (the oracle, written apart from saecli's checks).
INVALID = {
    "model": {
        "name": lambda v: not isinstance(v, str),
        "path": lambda v: not isinstance(v, str),
        "dtype": lambda v: v not in DTYPES or not isinstance(v, str),
        "from_pretrained_kwargs": lambda v: not isinstance(v, dict),
        "random_init": lambda v: v is not False,  # true without config and tokenizer is refused too
        "config": lambda v: not isinstance(v, dict),
        "tokenizer": lambda v: not isinstance(v, str),
        "seed": lambda v: not _is_int(v) or not INT64[0] <= v <= INT64[1],
    },
    "sae": {
        "layer": lambda v: not _is_int(v) or v < 0 or v in (0, 2, 3),
        "release": lambda v: True,  # a second source beside 'path'
        "id": lambda v: True,
        "path": lambda v: not isinstance(v, str),
        "random": lambda v: True,
    },
    "defaults": {
        "batch_size": lambda v: v != "auto" and (not _is_int(v) or v < 1),
        "seed": lambda v: not _is_int(v) or not INT64[0] <= v <= INT64[1],
        "noise_std": lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0,
        "device": lambda v: not isinstance(v, str) or v not in DEVICES,
        "data": lambda v: not isinstance(v, str),
        "limit": lambda v: not _is_int(v) or v < 1,
    },
    "": {
        "name": lambda v: not isinstance(v, str),
        "description": lambda v: not isinstance(v, str),
        "synthetic": lambda v: not isinstance(v, bool),
        "model": lambda v: not isinstance(v, dict),
        "sae": lambda v: True,
        "defaults": lambda v: _bad_defaults(v),
    },
}


def _bad_defaults(value: Any) -> bool:
    """A [defaults] table that must be refused: not a table, or an unknown key, or a bad value
    (a table such as {batch_size = 16} is valid, and must not be drawn as a bad one)."""
    if not isinstance(value, dict):
        return True
    checks = INVALID["defaults"]
    return any(key not in checks or checks[key](v) for key, v in value.items())


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")  # JSON's escapes are TOML's, but for DEL
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml(preset: dict[str, Any]) -> str:
    """A preset as TOML: top-level keys, then [model], [[sae]] and [defaults] (if tables)."""
    tables = {k: v for k, v in preset.items() if k in ("model", "defaults") and isinstance(v, dict)}
    arrays = {k: v for k, v in preset.items() if k == "sae" and isinstance(v, list) and all(isinstance(t, dict) for t in v)}
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in preset.items() if k not in tables and k not in arrays]
    for key, table in tables.items():
        lines += [f"[{key}]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())]
    for table in arrays.get("sae", []):
        lines += ["[[sae]]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@st.composite
def bad_presets(draw) -> str:
    """The embedded preset with one key set to a value of the wrong type or range, or an unknown key."""
    preset = json.loads(json.dumps(BASE_PRESET))
    section = draw(st.sampled_from(sorted(INVALID)))
    allowed = INVALID[section]
    if draw(st.integers(0, 4)) == 0:  # an unknown key
        key = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(lambda k: k not in allowed))
        value = draw(SCALARS)
    else:
        key = draw(st.sampled_from(sorted(allowed)))
        value = draw(ANY.filter(allowed[key]))
    target = preset if section == "" else preset["sae"][draw(st.integers(0, 2))] if section == "sae" else preset[section]
    target[key] = value
    return _toml(preset)


def test_base_preset_is_valid(tmp_path):
    (tmp_path / "p.toml").write_text(_toml(BASE_PRESET))
    assert load_preset_file(tmp_path / "p.toml").layers == [0, 2, 3]


@FAST
@given(bad_presets())
def test_mistyped_preset_is_refused(text):
    _refused(["--config", "{dir}/p.toml"], {"p.toml": text})


# -- bad option values ---------------------------------------------------------------------------------


def _not_a_batch_size(text: str) -> bool:
    if text == "auto":
        return False
    try:
        return int(text) < 1
    except ValueError:
        return True


BAD_OPTIONS = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1", "-0.5"]).map(lambda v: ["--noise-std", v]),
    st.floats(max_value=-1e-300).map(lambda v: ["--noise-std", repr(v)]),
    OUT_OF_INT64.map(lambda v: ["--seed", str(v)]),
    st.integers(max_value=0).map(lambda v: ["--limit", str(v)]),
    st.text(max_size=6).filter(_not_a_batch_size).map(lambda v: ["--batch-size", v]),
    st.text(", \t", max_size=5).map(lambda v: ["--domains", v]),
)


@settings(FAST, max_examples=40)
@given(BAD_OPTIONS)
def test_bad_option_is_refused(args):
    _refused(args)
