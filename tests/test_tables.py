"""Tables of samples: CSV, TSV and Parquet with the default and mapped column names (``--columns``),
generated ids, literal paths, the dataset identity, and the same results whichever format the
pairs came from (JSON, CSV, TSV, Parquet, a Hugging Face dataset)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import polars as pl
import pytest
from fake_datasets import custom_dataset

import saecli
from saecli import tables
from saecli.config import RunConfig, load_preset_file, resolve_run_config
from saecli.data import Sample, dataset_identity, load_samples
from saecli.errors import SaecliError

RECORDS = [
    {"id": "cap-fr", "domain": "entity", "topic": "geography", "complexity": 1,
     "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"},
    {"id": "moon", "domain": "temporal", "topic": "space", "complexity": 2,
     "prompt": "The first person on the Moon was", "fact": "Neil Armstrong, in 1969", "hallucination": "Yuri Gagarin, in 1961"},
    {"id": "7", "domain": "logical", "topic": None, "complexity": None,
     "prompt": "If all cats are mammals, a cat is", "fact": "a mammal", "hallucination": "not a mammal"},
    {"id": "quote", "domain": "adversarial", "topic": "text", "complexity": 3,
     "prompt": 'She said "yes, tonight"', "fact": "and left,\nsmiling", "hallucination": "and stayed"},
]  # fmt: skip
RENAMED = {"id": "key", "prompt": "question", "fact": "best_answer", "hallucination": "wrong_answer", "domain": "area"}
COLUMNS = ",".join(f"{target}={name}" for target, name in RENAMED.items())


def _frame(records, rename=None) -> pl.DataFrame:
    frame = pl.DataFrame(records, schema={"id": pl.String, "domain": pl.String, "topic": pl.String, "complexity": pl.Int64,
                                          "prompt": pl.String, "fact": pl.String, "hallucination": pl.String})  # fmt: skip
    return frame.rename(rename or {})


def write_table(path: Path, records=RECORDS, rename=None) -> Path:
    """``records`` as a CSV, TSV or Parquet file (by suffix), written through a handle."""
    frame = _frame(records, rename)
    with open(path, "wb") as handle:
        if path.suffix == ".parquet":
            frame.write_parquet(handle)
        else:
            frame.write_csv(handle, separator="\t" if path.suffix == ".tsv" else ",")
    return path


def _expected() -> list[Sample]:
    return [Sample(**{k: v for k, v in r.items()}) for r in RECORDS]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_default_column_names(tmp_path, suffix):
    samples = load_samples(write_table(tmp_path / f"pairs{suffix}"))
    assert samples == _expected()
    assert samples[2].id == "7" and samples[2].topic is None and samples[3].fact == "and left,\nsmiling"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_mapped_column_names(tmp_path, suffix):
    path = write_table(tmp_path / f"pairs{suffix}", rename=RENAMED)
    assert load_samples(path, columns=COLUMNS) == _expected()
    assert load_samples(path, columns=dict(RENAMED)) == _expected()  # the TOML-table form
    with pytest.raises(SaecliError, match="no column 'prompt' \\(columns: key, area, topic, complexity, question"):
        load_samples(path)


def test_ids_are_made_stable_when_absent(tmp_path):
    # No id column: "pair-" + a hash of the three texts, the same whatever the format or row order.
    no_ids = [{k: v for k, v in r.items() if k != "id"} for r in RECORDS]
    csv_path = tmp_path / "a.csv"
    pl.DataFrame(no_ids).write_csv(csv_path)
    parquet_path = tmp_path / "b.parquet"
    pl.DataFrame(list(reversed(no_ids))).write_parquet(parquet_path)
    from_csv, from_parquet = load_samples(csv_path), load_samples(parquet_path)
    assert all(s.id.startswith("pair-") and len(s.id) == 17 for s in from_csv)
    assert [s.id for s in from_csv] == [s.id for s in reversed(from_parquet)]
    assert len({s.id for s in from_csv}) == 4
    # Two rows holding the same pair would share an id: both rows named (by the line each starts on:
    # the fourth pair spans lines 5 and 6).
    pl.DataFrame(no_ids + no_ids[:1]).write_csv(csv_path)
    with pytest.raises(SaecliError, match=r"a.csv line 7 holds the same prompt, fact and hallucination as .*a.csv line 2"):
        load_samples(csv_path)


def test_defaults_without_optional_columns(tmp_path):
    # Only the three texts: the domain is the file's name, no topic, no complexity.
    path = tmp_path / "my pairs.csv"
    path.write_text("prompt,fact,hallucination\nThe sky is,blue,green\n\n")
    (sample,) = load_samples(path)
    assert (sample.domain, sample.topic, sample.complexity) == ("my pairs", None, None)
    assert load_samples(path, domains=["my pairs"]) == [sample]


def test_csv_details(tmp_path):
    # A byte-order mark (Excel), CRLF line ends, quoted delimiters and line breaks, spaces around
    # header names, an empty topic, a complexity written as text.
    path = tmp_path / "excel.csv"
    path.write_bytes(b'\xef\xbb\xbf id , prompt ,fact,hallucination,topic,complexity,domain\r\n'
                     b'a,"The capital of France, a country, is",Paris,"Ly\r\non",,  12 ,entity\r\n')  # fmt: skip
    (sample,) = load_samples(path)
    assert (sample.id, sample.prompt, sample.hallucination, sample.topic, sample.complexity) == (
        "a",
        "The capital of France, a country, is",
        "Ly\r\non",
        None,
        12,
    )
    # Leading zeros do not count towards the 4300 digits Python turns into an int.
    path.write_text("prompt,fact,hallucination,complexity\nP,f,h,-" + "0" * 5000 + "12\n")
    assert load_samples(path)[0].complexity == -12


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_cell_as_long_as_json_allows(tmp_path, suffix):
    # Python's csv refuses cells over 128 KiB by default; the same text in JSON loads.
    long = [{**RECORDS[0], "prompt": "word " * 41_000 + "is"}]  # over 200 KiB
    (tmp_path / "d.json").write_text(json.dumps(long))
    assert load_samples(write_table(tmp_path / f"d{suffix}", records=long)) == load_samples(tmp_path / "d.json")


def test_literal_paths(tmp_path):
    # A name holding glob characters and a space is one file, never a pattern (Polars would read a
    # path string as a glob: "d[12] *?.parquet" could match other files).
    weird = tmp_path / "d[12] *?.parquet"
    write_table(weird)
    write_table(tmp_path / "d1 x.parquet", records=RECORDS[:1])
    assert load_samples(weird) == _expected()
    weird_csv = write_table(tmp_path / "[a] b*?.csv")
    assert load_samples(weird_csv) == _expected()
    assert dataset_identity(str(weird))["sha256"] == hashlib.sha256(weird.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "content, columns, message",
    [
        ("id,prompt,fact\na,P,f\n", None, "t.csv: no column 'hallucination' (columns: id, prompt, fact)"),
        (
            "id,q,fact,hallucination\na,P,f,h\n",
            "prompt=question",
            "t.csv: no column 'question' for prompt (columns: id, q, fact, hallucination)",
        ),
        ("id,prompt,fact,hallucination\na,P,,h\n", None, "t.csv line 2 (id 'a'): column 'fact' is empty"),
        ("k,prompt,fact,hallucination\na,P,f, \n", "id=k", "t.csv line 2 (id 'a'): column 'hallucination' is empty"),
        ("k,prompt,fact,hallucination\n,P,f,h\n", "id=k", "t.csv line 2 (id ''): column 'k' (id) is empty"),
        ("id,prompt,fact,hallucination\na,P,f,h\na,Q,f,h\n", None, "t.csv: duplicate sample id 'a'"),
        ("id,prompt,fact,hallucination\na,P,f\n", None, "t.csv line 2: 3 cells, but the header has 4 columns"),
        ("id,prompt,prompt,hallucination\n", None, "t.csv: column 'prompt' appears twice in the header"),
        ("", None, "t.csv: no header row"),
        ("id,prompt,fact,hallucination\n", None, "t.csv: no samples"),
        ("id,prompt,fact,hallucination,complexity\na,P,f,h,3.5\n", None, "column 'complexity' must be an integer, got str"),
        ('id,prompt,fact,hallucination\na,"P,f,h\n', None, "t.csv: invalid CSV at line"),
        (
            "id,prompt,fact,hallucination,complexity\na,P,f,h," + "9" * 5000 + "\n",
            None,
            "t.csv line 2 (id 'a'): column 'complexity' must be an integer from -9223372036854775808 to 9223372036854775807, "
            "got a 5000-digit number",
        ),
    ],
)
def test_bad_tables(tmp_path, content, columns, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(SaecliError) as info:
        load_samples(path, columns=columns)
    assert message in info.value.message


def test_bad_parquet_cells(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame(
        {"id": ["a"], "prompt": ["P"], "fact": [None], "hallucination": ["h"]}, schema_overrides={"fact": pl.String}
    ).write_parquet(path)
    with pytest.raises(SaecliError, match=r"t.parquet row 0 \(id 'a'\): column 'fact' is empty"):
        load_samples(path)
    pl.DataFrame({"id": ["a"], "prompt": ["P"], "fact": [1912], "hallucination": ["h"]}).write_parquet(path)
    with pytest.raises(SaecliError, match="column 'fact' must be a string, got int"):
        load_samples(path)
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(SaecliError, match="t.parquet is not a readable Parquet file"):
        load_samples(path)


def test_a_damaged_parquet_file_is_one_error_naming_it(tmp_path, capfd):
    # Parquet keeps no checksums: a flipped byte is found where the reader checks (the footer, page
    # headers, compressed pages) or read as the file now is. Which bytes are which changes between
    # Polars versions (2.1 panicked on byte 1177: a PanicException, which escapes `except Exception`,
    # after Rust printed the panic on stderr; 2.2 reads that byte's flip). Whatever the damage: one
    # error naming the file, or the samples; never a traceback or Rust's report.
    path = write_table(tmp_path / "d.parquet")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(SaecliError, match="d.parquet is not a readable Parquet file") as info:
        load_samples(path)
    assert "\n" not in str(info.value)
    refused = 0
    for offset in range(0, len(good), 5):
        path.write_bytes(good[:offset] + bytes([good[offset] ^ 0xFF]) + good[offset + 1 :])
        try:
            load_samples(path)
        except SaecliError as exc:
            assert "d.parquet" in exc.message and "\n" not in str(exc), (offset, str(exc))
            refused += 1
    assert refused > len(good) // 5 // 4  # much of the damage is found (2.1 and 2.2: three in five)
    assert capfd.readouterr().err == ""


def test_a_panic_report_is_dropped_and_other_stderr_kept(tmp_path, capfd):
    path = write_table(tmp_path / "d.parquet")

    def panics(handle):
        os.write(2, b"thread 'async-executor-0' panicked at ...\n")
        raise pl.exceptions.PanicException("assertion failed")

    def warns(handle):
        os.write(2, b"a warning\n")
        return "read"

    with pytest.raises(SaecliError, match="d.parquet is not a readable Parquet file: it is damaged or cut short"):
        tables.read_parquet_file(path, panics)
    assert tables.read_parquet_file(path, warns) == "read"
    assert capfd.readouterr().err == "a warning\n"


@pytest.mark.parametrize(
    "columns, message",
    [
        ("prompt", "columns: 'prompt' is not TARGET=COLUMN"),
        ("answer=x", "columns: unknown target 'answer'"),
        ("fact=a,fact=b", "columns: 'fact' is mapped twice"),
        ("fact=", "columns: 'fact' needs a column name"),
        (" , ", "columns maps no column"),
        ({"fact": 3}, "columns: 'fact' needs a column name, got 3"),
        (5, "columns must be a string TARGET=COLUMN,... or a table"),
    ],
)
def test_bad_column_mappings(tmp_path, columns, message):
    with pytest.raises(SaecliError) as info:
        RunConfig(columns=columns)
    assert message in info.value.message
    path = write_table(tmp_path / "t.csv")
    with pytest.raises(SaecliError):
        load_samples(path, columns=columns)


def test_columns_need_a_table(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS[:1]))
    with pytest.raises(SaecliError, match="--columns maps the columns of a CSV, TSV or Parquet table or an hf: dataset"):
        load_samples(path, columns="prompt=q")


def test_columns_in_the_run_config(tmp_path):
    # One canonical string, whatever the order or form it was given in; a preset's [defaults] may
    # set it (a string or a table), and a flag overrides it.
    assert RunConfig(columns="fact=b, prompt=a").columns == "prompt=a,fact=b"
    assert RunConfig(columns={"fact": "b", "prompt": "a"}).columns == "prompt=a,fact=b"
    assert RunConfig(**json.loads(json.dumps(RunConfig(columns="fact=b").__dict__))).columns == "fact=b"  # a manifest's config
    preset = tmp_path / "p.toml"
    preset.write_text('[model]\nname = "m"\npath = "x"\n' + "".join(f'[[sae]]\nlayer = {i}\npath = "s"\n' for i in range(3))
                      + '[defaults]\ndata = "t.csv"\ncolumns = { prompt = "question" }\n')  # fmt: skip
    loaded = load_preset_file(preset)
    assert resolve_run_config(loaded).columns == "prompt=question"
    assert resolve_run_config(loaded, columns="prompt=q2").columns == "prompt=q2"
    preset.write_text(preset.read_text().replace('columns = { prompt = "question" }', 'columns = "answer=x"'))
    with pytest.raises(SaecliError, match=r"p.toml: \[defaults\] columns: unknown target 'answer'"):
        load_preset_file(preset)
    preset.write_text(preset.read_text().replace('data = "t.csv"', 'data = "hf:truthful_qa:generation"'))
    preset.write_text(preset.read_text().replace('columns = "answer=x"\n', ""))
    assert resolve_run_config(load_preset_file(preset)).data == "hf:truthful_qa:generation"  # a name, not a path


def test_dataset_identity_of_each_format(tmp_path):
    path = write_table(tmp_path / "pairs.tsv", rename=RENAMED)
    ident = dataset_identity(str(path), COLUMNS)
    assert ident == {"format": "tsv", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                     "columns": {**RENAMED, "topic": "topic", "complexity": "complexity"}}  # fmt: skip
    assert dataset_identity(None)["format"] == "builtin"
    (tmp_path / "d.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    assert dataset_identity(str(tmp_path / "d.jsonl"))["format"] == "jsonl"


def test_same_results_whichever_format(tmp_path, monkeypatch, loaded64):
    """The same pairs as JSON, CSV, TSV, Parquet (default and mapped names) and a Hugging Face
    dataset give the same samples and the same metric rows."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    (tmp_path / "pairs.json").write_text(json.dumps(RECORDS))
    renamed = [{RENAMED.get(k, k): v for k, v in r.items()} for r in RECORDS]
    custom_dataset(cache, "me/pairs", renamed, split="test")
    sources = {
        "json": load_samples(tmp_path / "pairs.json"),
        "csv": load_samples(write_table(tmp_path / "pairs.csv")),
        "tsv": load_samples(write_table(tmp_path / "pairs.tsv", rename=RENAMED), columns=COLUMNS),
        "parquet": load_samples(write_table(tmp_path / "pairs.parquet", rename=RENAMED), columns=COLUMNS),
        "hf": load_samples("hf:me/pairs", columns=COLUMNS),
    }
    rows = {name: list(saecli.analyze(samples, loaded64, batch_size=2)) for name, samples in sources.items()}
    for name in sources:
        assert sources[name] == sources["json"], name
        assert rows[name] == rows["json"], name
    assert [r["sample_id"] for r in rows["hf"]] == [r["id"] for r in RECORDS]


def test_tsv_is_tab_separated(tmp_path):
    path = tmp_path / "t.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows([["prompt", "fact", "hallucination", "id"], ["A, b", "c", "d", "x"]])
    assert load_samples(path)[0].prompt == "A, b"


def test_resume_refuses_other_columns(tmp_path, loaded64):
    # Other columns read other texts: --resume refuses, naming the setting that changed.
    from saecli.manifest import resume_config
    from saecli.runner import execute

    path = write_table(tmp_path / "pairs.csv", rename=RENAMED)
    out = tmp_path / "run"
    execute(RunConfig(data=str(path), columns=COLUMNS, limit=2), out=out, loaded=loaded64)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["columns"] == COLUMNS and manifest["dataset"]["columns"]["fact"] == "best_answer"
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "finished_ids": []}))
    swapped = COLUMNS.replace("fact=best_answer,hallucination=wrong_answer", "fact=wrong_answer,hallucination=best_answer")
    with pytest.raises(SaecliError, match="cannot resume .*: columns was"):
        execute(resume_config(out, columns=swapped), resume=out, loaded=loaded64)
    assert execute(resume_config(out), resume=out, loaded=loaded64).manifest["status"] == "complete"


def test_a_missing_table_is_named(tmp_path):
    with pytest.raises(SaecliError, match="data path does not exist: .*nope.csv"):
        load_samples(tmp_path / "nope.csv", columns="prompt=q")


def test_compare_and_bench_take_columns(tmp_path):
    from typer.testing import CliRunner

    from saecli.cli import app

    table = tmp_path / "pairs [1].csv"
    table.write_text('question,best_answer,wrong\n"The capital of France is","Paris","Rome"\n"Water boils at","100 °C","50 °C"\n')
    mapping = "prompt=question,fact=best_answer,hallucination=wrong"
    cli = CliRunner()
    result = cli.invoke(app, ["compare", "--data", str(table), "--columns", mapping, "--sizes", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch_sizes"]["2"]["samples"] == 2
    # Without the mapping the table is refused before bench creates or measures anything.
    result = cli.invoke(app, ["bench", "--data", str(table), "--sizes", "2", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2 and "--columns" in result.stderr and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("suffix", ["parquet", "csv", "tsv"])
def test_a_table_gives_its_rows_one_at_a_time(tmp_path, suffix):
    # 500,000 rows held as Python dicts took 1.3 GB to select from Parquet (0.78 GB from CSV); the
    # samples now come as the rows are read, the rows of a repeated pair still refused (when the
    # second one comes).
    from saecli.data import _sample_reader

    path = tmp_path / f"t.{suffix}"
    texts = {"prompt": ["P1", "P2", "P3", "P1"], "fact": ["f1", "f2", "f3", "f1"], "hallucination": ["h1", "h2", "h3", "h1"]}
    frame = pl.DataFrame(texts)
    frame.write_parquet(path) if suffix == "parquet" else frame.write_csv(path, separator="," if suffix == "csv" else "\t")
    samples = _sample_reader(path, None)[1]()
    assert [next(samples).prompt for _ in range(3)] == ["P1", "P2", "P3"]  # before the repeated pair is read
    first, last = ("row 0", "row 3") if suffix == "parquet" else ("line 2", "line 5")
    with pytest.raises(SaecliError, match=rf"t.{suffix} {last} holds the same prompt, fact and hallucination as .*{first}"):
        next(samples)
