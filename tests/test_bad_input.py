"""Bad input: a clear one-line error, exit code 2, no traceback, and no file created or changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli.cli import app
from saecli.synthetic import random_sae

runner = CliRunner()
GOOD = {"id": "a", "domain": "entity", "prompt": "The capital of France is", "fact": "Paris", "hallucination": "Lyon"}


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _sae_folder(root: Path, name: str, d_in: int, hook: str) -> Path:
    folder = root / name
    random_sae(d_in, 32, hook).save_model(folder)
    return folder


def _preset(root: Path, sae_path: str) -> Path:
    return _write(
        root / "p.toml",
        f"""
[model]
name = "saecli-tiny"
path = "builtin:tiny/model"
[[sae]]
layer = 0
path = "builtin:tiny/saes/layer_0"
[[sae]]
layer = 2
path = "builtin:tiny/saes/layer_2"
[[sae]]
layer = 3
path = "{sae_path}"
""",
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# Each case: (name, setup(tmp) -> argv, expected message fragment)
CASES = [
    ("missing data path", lambda t: ["run", "--data", str(t / "nope.json")], "data path does not exist"),
    ("invalid JSON", lambda t: ["run", "--data", str(_write(t / "d.json", '[{"id": "a",\n "x": }]'))], "invalid JSON at line 2, column"),
    ("invalid JSONL", lambda t: ["run", "--data", str(_write(t / "d.jsonl", json.dumps(GOOD) + "\n{oops\n"))], "d.jsonl: invalid JSON at line 2"),
    ("missing field", lambda t: ["run", "--data", str(_write(t / "d.json", [{k: v for k, v in GOOD.items() if k != "fact"}]))],
     "(id 'a'): field 'fact' is missing"),
    ("wrong type", lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "hallucination": 7}]))], "field 'hallucination' must be a string"),
    ("empty text", lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "prompt": ""}]))], "field 'prompt' is empty"),
    ("duplicate ids", lambda t: ["run", "--data", str(_write(t / "d.json", [GOOD, GOOD]))], "duplicate sample id 'a'"),
    ("unknown domain", lambda t: ["run", "--domains", "entity,physics"], "domain 'physics' is not in the data"),
    ("text too long", lambda t: ["run", "--data", str(_write(t / "d.json", [{**GOOD, "prompt": "word " * 300}]))],
     "sample 'a' is"),
    ("unknown preset", lambda t: ["run", "--preset", "gemma-7"], "unknown preset 'gemma-7'"),
    ("config unknown key", lambda t: ["run", "--config", str(_write(t / "c.toml", '[model]\nname = "x"\nsize = 3\n'))], "unknown key 'size' in [model]"),
    ("config wrong type", lambda t: ["run", "--config", str(_write(t / "c.toml", '[model]\nname = 5\n'))], "'model.name' must be str"),
    ("SAE d_in mismatch", lambda t: ["run", "--config", str(_preset(t, str(_sae_folder(t, "s", 64, "blocks.3.hook_resid_post"))))],
     "has d_in 64 but the model's d_model is 128"),
    ("SAE hook not in model", lambda t: ["run", "--config", str(_preset(t, str(_sae_folder(t, "s", 128, "blocks.9.hook_resid_post"))))],
     "reads hook 'blocks.9.hook_resid_post', which the model"),
    ("batch size 0", lambda t: ["run", "--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    ("batch size negative", lambda t: ["run", "--batch-size", "-3"], "--batch-size must be a whole number >= 1"),
    ("batch size not a number", lambda t: ["run", "--batch-size", "many"], "--batch-size must be a whole number >= 1"),
    ("sizes malformed", lambda t: ["bench", "--sizes", "1,,x"], "--sizes must be positive whole numbers"),
    ("output exists", lambda t: ["run", "--out", str(_write(t / "out", "") and t)], "already exists and is not empty"),
    ("output not writable", lambda t: ["run", "--out", str(_write(t / "afile", "x") / "sub")], "cannot be created"),
    ("output on a pseudo file system", lambda t: ["run", "--out", "/proc/saecli-run"], "cannot be written"),
    ("resume a non-run", lambda t: ["run", "--resume", str(t)], "is not a saecli run folder"),
]


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
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "new-run").exists() and not (tmp_path / "runs").exists()


def test_long_text_runs_with_truncate(tmp_path):
    data = _write(tmp_path / "d.json", [{**GOOD, "prompt": "word " * 300}])
    result = runner.invoke(app, ["run", "--data", str(data), "--truncate", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "metrics.parquet").is_file()
