"""Bad input: a clear one-line error, exit code 2, no traceback, and no file created or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli.cli import app
from saecli.config import assets_dir, find_preset
from saecli.synthetic import random_sae

runner = CliRunner()
GOOD = {"id": "a", "domain": "entity", "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"}


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _sae_folder(root: Path, name: str, d_in: int, hook: str) -> Path:
    folder = root / name
    random_sae(d_in, 32, hook).save_model(folder)
    return folder


def _preset(root: Path, sae_path: str) -> Path:
    return _write(root / "p.toml", TINY_PRESET.format(model="", sae3=f'path = "{sae_path}"', rest=""))


TINY_PRESET = """
[model]
name = "saecli-tiny"
path = "builtin:tiny/model"
{model}
[[sae]]
layer = 0
path = "builtin:tiny/saes/layer_0"
[[sae]]
layer = 2
path = "builtin:tiny/saes/layer_2"
[[sae]]
layer = 3
{sae3}
{rest}
"""

# A random_init model as small as the embedded one, so that a case reaches its model quickly.
RANDOM_PRESET = """
[model]
name = "small-random"
random_init = true
tokenizer = "builtin:tiny/model/tokenizer.json"
{model}
[model.config]
n_layers = 3
d_model = 16
n_heads = 2
d_head = 8
d_mlp = 32
d_vocab = 4096
n_ctx = 64
act_fn = "gelu"
normalization_type = "LN"
[[sae]]
layer = 0
random = {{ hook = "blocks.0.hook_resid_post", d_sae = 32 }}
[[sae]]
layer = 1
random = {{ hook = "blocks.1.hook_resid_post", d_sae = 32 }}
[[sae]]
layer = 2
random = {{ hook = "blocks.2.hook_resid_pre", d_sae = 32 }}
"""


def _toml(root: Path, *, model: str = "", sae3: str = 'path = "builtin:tiny/saes/layer_3"', rest: str = "") -> list[str]:
    """``run --config`` of a copy of the embedded preset's TOML with lines added or replaced."""
    return ["run", "--config", str(_write(root / "p.toml", TINY_PRESET.format(model=model, sae3=sae3, rest=rest)))]


def _random_toml(root: Path, *, model: str = "", edit: tuple[str, str] = ("", "")) -> list[str]:
    """``run --config`` of a small random_init preset with lines added to [model] or edited."""
    return ["run", "--config", str(_write(root / "r.toml", RANDOM_PRESET.format(model=model).replace(*edit)))]


def _broken_tiny(root: Path, relative: str, damage) -> list[str]:
    """``run --config`` of a copy of the embedded preset's files, one of them damaged by ``damage(path)``."""
    shutil.copytree(assets_dir() / "tiny", root / "tiny")
    damage(root / "tiny" / relative)
    text = Path(find_preset("tiny").source).read_text()
    return ["run", "--config", str(_write(root / "p.toml", text.replace("builtin:tiny", str(root / "tiny"))))]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# Each case: (name, setup(tmp) -> argv, expected message fragment)
CASES = [
    ("missing data path", lambda t: ["run", "--data", str(t / "nope.json")], "data path does not exist"),
    (
        "invalid JSON",
        lambda t: ["run", "--data", str(_write(t / "d.json", '[{"id": "a",\n "x": }]'))],
        "invalid JSON at line 2, column",
    ),
    (
        "invalid JSONL",
        lambda t: ["run", "--data", str(_write(t / "d.jsonl", json.dumps(GOOD) + "\n{oops\n"))],
        "d.jsonl: invalid JSON at line 2",
    ),
    (
        "missing field",
        lambda t: ["run", "--data", str(_write(t / "d.json", [{k: v for k, v in GOOD.items() if k != "fact"}]))],
        "(id 'a'): field 'fact' is missing",
    ),
    (
        "wrong type",
        lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "hallucination": 7}]))],
        "field 'hallucination' must be a string",
    ),
    ("empty text", lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "prompt": ""}]))], "field 'prompt' is empty"),
    ("duplicate ids", lambda t: ["run", "--data", str(_write(t / "d.json", [GOOD, GOOD]))], "duplicate sample id 'a'"),
    ("unknown domain", lambda t: ["run", "--domains", "entity,physics"], "domain 'physics' is not in the data"),
    (
        "text too long",
        lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "prompt": "word " * 300}]))],
        "sample 'a' is",
    ),
    ("unknown preset", lambda t: ["run", "--preset", "gemma-7"], "unknown preset 'gemma-7'"),
    (
        "config unknown key",
        lambda t: ["run", "--config", str(_write(t / "c.toml", '[model]\nname = "x"\nsize = 3\n'))],
        "unknown key 'size' in [model]",
    ),
    (
        "config wrong type",
        lambda t: ["run", "--config", str(_write(t / "c.toml", "[model]\nname = 5\n"))],
        "'model.name' must be str",
    ),
    (
        "SAE d_in mismatch",
        lambda t: ["run", "--config", str(_preset(t, str(_sae_folder(t, "s", 64, "blocks.3.hook_resid_post"))))],
        "has d_in 64 but the model's d_model is 128",
    ),
    (
        "SAE hook not in model",
        lambda t: ["run", "--config", str(_preset(t, str(_sae_folder(t, "s", 128, "blocks.3.hook_bogus"))))],
        "reads hook 'blocks.3.hook_bogus', which the model",
    ),
    ("batch size 0", lambda t: ["run", "--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    ("batch size negative", lambda t: ["run", "--batch-size", "-3"], "--batch-size must be a whole number >= 1"),
    ("batch size not a number", lambda t: ["run", "--batch-size", "many"], "--batch-size must be a whole number >= 1"),
    ("sizes malformed", lambda t: ["bench", "--sizes", "1,,x"], "--sizes must be positive whole numbers"),
    ("output exists", lambda t: ["run", "--out", str(_write(t / "out", "") and t)], "already exists and is not empty"),
    ("output not writable", lambda t: ["run", "--out", str(_write(t / "afile", "x") / "sub")], "cannot be created"),
    ("output on a pseudo file system", lambda t: ["run", "--out", "/proc/saecli-run"], "cannot be written"),
    ("resume a non-run", lambda t: ["run", "--resume", str(t)], "is not a saecli run folder"),
    # Sample fields: every one checked by Sample itself, named with the file and the record.
    (
        "complexity beyond 64 bits",
        lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "complexity": 2**70}]))],
        "d.json record 0 (id 'a'): field 'complexity' must be an integer from -9223372036854775808 to 9223372036854775807",
    ),
    (
        "lone surrogate in a text",
        lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "fact": "Par\ud800is"}]))],
        "(id 'a'): field 'fact' is not valid Unicode text",
    ),
    (
        "lone surrogate in an id (JSONL)",
        lambda t: ["run", "--data", str(_write(t / "d.jsonl", json.dumps({**GOOD, "id": "\ud800"})))],
        "d.jsonl:1 (id '\\ud800'): field 'id' is not valid Unicode text",
    ),
    # Data files that are not UTF-8 JSON.
    (
        "UTF-16 data",
        lambda t: ["run", "--data", str(_write_bytes(t / "d.json", json.dumps([GOOD]).encode("utf-16")))],
        "d.json is not UTF-8 text (it looks like UTF-16)",
    ),
    (
        "Latin-1 data",
        lambda t: [
            "run",
            "--data",
            str(_write_bytes(t / "d.json", json.dumps([{**GOOD, "fact": "Málaga"}], ensure_ascii=False).encode("latin-1"))),
        ],
        "d.json is not UTF-8 text: byte",
    ),
    (
        "deeply nested JSON",
        lambda t: ["run", "--data", str(_write(t / "d.json", "[" * 100_000))],
        "d.json: invalid JSON: arrays or objects nested too deeply",
    ),
    # Run options: one validator each, shared by flags, [defaults] and the Python API.
    # nan may be refused by the option's own range check or by RunConfig's: either way, one line.
    ("noise std nan", lambda t: ["run", "--noise-std", "nan"], "noise"),
    ("noise std inf", lambda t: ["run", "--noise-std", "inf"], "--noise-std must be a finite number >= 0, got inf"),
    ("seed beyond 64 bits", lambda t: ["run", "--seed", str(2**70)], "seed must be a whole number from -9223372036854775808"),
    ("domains only commas", lambda t: ["run", "--domains", ","], "domains must name at least one domain"),
    # Preset files: unreadable, or a value of the wrong type anywhere, named with the file and the key.
    (
        "binary config",
        lambda t: ["run", "--config", str(_write_bytes(t / "c.toml", bytes(range(256))))],
        "c.toml is not a UTF-8 text file",
    ),
    ("config is a folder", lambda t: ["run", "--config", str((t / "c.toml").mkdir() or t / "c.toml")], "c.toml is a folder"),
    (
        "config noise_std nan",
        lambda t: _toml(t, rest="[defaults]\nnoise_std = nan"),
        "p.toml: [defaults] noise_std must be a finite number >= 0",
    ),
    (
        "config noise_std a string",
        lambda t: _toml(t, rest='[defaults]\nnoise_std = "x"'),
        "p.toml: [defaults] noise_std must be a finite number",
    ),
    (
        "config batch_size 0",
        lambda t: _toml(t, rest="[defaults]\nbatch_size = 0"),
        "p.toml: [defaults] batch_size must be a whole number >= 1",
    ),
    (
        "config seed beyond 64 bits",
        lambda t: _toml(t, rest=f"[defaults]\nseed = {2**70}"),
        "p.toml: [defaults] seed must be a whole number from",
    ),
    (
        "config from_pretrained_kwargs",
        lambda t: _toml(t, model="from_pretrained_kwargs = 3"),
        "p.toml: 'model.from_pretrained_kwargs' must be table",
    ),
    ("config random_init a string", lambda t: _toml(t, model='random_init = "no"'), "p.toml: 'model.random_init' must be bool"),
    (
        "config random SAE d_sae",
        lambda t: _toml(t, sae3='random = { hook = "blocks.3.hook_resid_post", d_sae = "x" }'),
        "p.toml: sae.random (layer 3).d_sae must be a whole number >= 1",
    ),
    (
        "config model.config a string",
        lambda t: _toml(t, model='random_init = true\ntokenizer = "builtin:tiny/model/tokenizer.json"\nconfig = "x"'),
        "p.toml: 'model.config' must be table, got str 'x'",
    ),
    (
        "config model.seed a float",
        lambda t: _random_toml(t, model="seed = 1.5"),
        "r.toml: 'model.seed' must be int, got float 1.5",
    ),
    (
        "config model.config mistyped",
        lambda t: _random_toml(t, edit=("n_layers = 3", 'n_layers = "three"')),
        "r.toml has a [model.config] that is not a valid",
    ),
    # The preset's own files: checked before any model is built, each named.
    (
        "SAE weights missing",
        lambda t: _broken_tiny(t, "saes/layer_3/sae_weights.safetensors", Path.unlink),
        "layer_3/sae_weights.safetensors is missing",
    ),
    (
        "SAE weights truncated",
        lambda t: _broken_tiny(t, "saes/layer_2/sae_weights.safetensors", _truncate),
        "layer_2/sae_weights.safetensors is truncated",
    ),
    (
        "SAE cfg.json not JSON",
        lambda t: _broken_tiny(t, "saes/layer_0/cfg.json", lambda p: p.write_text("{oops")),
        "layer_0/cfg.json is not valid JSON",
    ),
    (
        "SAE cfg.json not an SAE config",
        lambda t: _broken_tiny(t, "saes/layer_0/cfg.json", lambda p: p.write_text("{}")),
        "layer_0 (the SAE for layer 0) cannot be loaded by SAELens",
    ),
    (
        "model weights missing",
        lambda t: _broken_tiny(t, "model/model.safetensors", Path.unlink),
        "model/model.safetensors is missing",
    ),
    (
        "model weights truncated",
        lambda t: _broken_tiny(t, "model/model.safetensors", _truncate),
        "model/model.safetensors is truncated",
    ),
    (
        "model config.json not JSON",
        lambda t: _broken_tiny(t, "model/config.json", lambda p: p.write_bytes(b"\x00\xff")),
        "model/config.json is not UTF-8 text",
    ),
]


def _hub(root: Path, *, without: str | None = None) -> Path:
    """A fake hub cache with TruthfulQA and HaluEval (``tests/fake_datasets.py``), less one of them."""
    from fake_datasets import standard_cache

    cache = standard_cache(root / "hub")
    if without is not None:
        shutil.rmtree(cache / f"datasets--{without.replace('/', '--')}")
    return cache


def _data_run(root: Path, data: str, *extra: str, without: str | None = None) -> list[str]:
    """``run --data DATA`` with the fake hub cache in place (less ``without``)."""
    _hub(root, without=without)
    return ["run", "--data", data, *extra]


# Tables and Hugging Face datasets (HF_HUB_CACHE points at tmp/hub): each one line, before the model loads.
DATA_CASES = [
    (
        "table missing column",
        lambda t: ["run", "--data", str(_write(t / "d.csv", "id,prompt,fact\na,P,f\n"))],
        "d.csv: no column 'hallucination' (columns: id, prompt, fact)",
    ),
    (
        "table mapped column missing",
        lambda t: [
            "run",
            "--data",
            str(_write(t / "d.tsv", "id\tq\tfact\thallucination\na\tP\tf\th\n")),
            "--columns",
            "prompt=question",
        ],
        "d.tsv: no column 'question' for prompt",
    ),
    (
        "table empty cell",
        lambda t: ["run", "--data", str(_write(t / "d.csv", "id,prompt,fact,hallucination\na,P,,h\n"))],
        "d.csv line 2 (id 'a'): column 'fact' is empty",
    ),
    (
        "table duplicate id",
        lambda t: ["run", "--data", str(_write(t / "d.csv", "id,prompt,fact,hallucination\na,P,f,h\na,Q,f,h\n"))],
        "d.csv: duplicate sample id 'a'",
    ),
    (
        "table ragged row",
        lambda t: ["run", "--data", str(_write(t / "d.csv", "id,prompt,fact,hallucination\na,P,f\n"))],
        "d.csv line 2: 3 cells, but the header has 4 columns",
    ),
    ("unknown dataset", lambda t: _data_run(t, "hf:nobody/nothing"), "dataset nobody/nothing is not in the Hugging Face cache"),
    (
        "cache without the dataset",
        lambda t: _data_run(t, "hf:truthful_qa:generation", without="truthfulqa/truthful_qa"),
        "hint: fetch it with `hf download --repo-type dataset truthfulqa/truthful_qa`",
    ),
    (
        "no cache at all",
        lambda t: ["run", "--data", "hf:pminervini/HaluEval:qa"],
        "dataset pminervini/HaluEval is not in the Hugging Face cache",
    ),
    (
        "unknown config",
        lambda t: _data_run(t, "hf:truthfulqa/truthful_qa:gen"),
        "unknown config 'gen' (hint: configs: generation, multiple_choice)",
    ),
    ("unknown split", lambda t: _data_run(t, "hf:pminervini/HaluEval:qa:train"), "unknown split 'train' (hint: splits: data)"),
    ("config needed", lambda t: _data_run(t, "hf:truthful_qa"), "name a config, one of generation, multiple_choice"),
    ("unpaired config", lambda t: _data_run(t, "hf:pminervini/HaluEval:general"), "has no fact/hallucination pairs"),
    ("bad dataset name", lambda t: _data_run(t, "hf:a/b/c"), "the form is hf:NAME[:CONFIG][:SPLIT]"),
    (
        "dataset column missing",
        lambda t: _data_run(t, "hf:truthful_qa:generation", "--columns", "fact=answer"),
        "no column 'answer' for fact",
    ),
    (
        "columns unknown target",
        lambda t: _data_run(t, "hf:truthful_qa:generation", "--columns", "answer=x"),
        "--columns: unknown target 'answer' (hint: targets: id, prompt, fact, hallucination, domain, topic, complexity)",
    ),
    ("columns twice", lambda t: ["run", "--columns", "fact=a,fact=b"], "--columns: 'fact' is mapped twice"),
    ("columns syntax", lambda t: ["run", "--columns", "prompt"], "--columns: 'prompt' is not TARGET=COLUMN"),
    ("columns empty", lambda t: ["run", "--columns", ""], "--columns maps no column"),
    (
        "columns on JSON",
        lambda t: ["run", "--data", str(_write(t / "d.json", [GOOD])), "--columns", "prompt=q"],
        "--columns maps the columns of a CSV, TSV or Parquet table or an hf: dataset",
    ),
    (
        "sequential columns",
        lambda t: ["sequential", "--columns", "x=y", "--out", str(t / "new-run")],
        "--columns: unknown target 'x'",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, setup, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(tmp_path, monkeypatch, name, setup, message):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    test_bad_input(tmp_path, monkeypatch, name, setup, message)


@pytest.mark.slow
@pytest.mark.parametrize("name, setup, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, name, setup, message):
    monkeypatch.chdir(tmp_path)
    args = setup(tmp_path)
    if "--out" not in args and "--resume" not in args and args[0] == "run":
        args += ["--out", str(tmp_path / "new-run")]
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "new-run").exists() and not (tmp_path / "runs").exists()


def test_long_text_runs_with_truncate(tmp_path):
    data = _write(tmp_path / "d.json", [{**GOOD, "prompt": "word " * 300}])
    result = runner.invoke(app, ["run", "--data", str(data), "--truncate", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "metrics.parquet").is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_std": float("nan")}, "noise_std must be a finite number >= 0, got nan"),
        ({"noise_std": float("inf")}, "noise_std must be a finite number >= 0, got inf"),
        ({"seed": 2**64}, "seed must be a whole number from"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"batch_size": "auto"}, "batch_size must be a whole number >= 1, got 'auto'"),
        ({"samples": [GOOD]}, "analyze needs a list of saecli.Sample"),
        ({"samples": "abc"}, "analyze needs a list of saecli.Sample"),
        ({"preset": "tiny"}, "the engine needs a LoadedPreset"),
        ({"bogus": 1}, "analyze got an unknown option 'bogus'"),
        ({"config": {"seed": 1}}, "analyze's config must be a saecli.config.RunConfig"),
        ({"sequential": True, "mode": "batched"}, "analyze got sequential=True and mode='batched'"),
        ({"mode": "parallel"}, "mode must be one of batched, sequential, got 'parallel'"),
    ],
)
def test_python_api_checks_its_arguments_when_called(loaded64, samples, kwargs, message):
    # The same checks as the CLI's options, raised by the call itself rather than at the first row.
    import saecli

    args = {"samples": samples[:2], "preset": loaded64, **kwargs}
    with pytest.raises(saecli.SaecliError) as info:
        saecli.analyze(args.pop("samples"), args.pop("preset"), **args)
    assert message in info.value.message
