"""User text is data, never markup: domains, topics, sample ids, preset names and paths holding Rich
markup (``[/]``, ``[bold]``), emoji codes (``:smile:``) or mathtext (``$\\frac$``) print as typed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # tables wide enough that no cell is folded
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAIRS = [("The capital of France is", "Paris", "Lyon"), ("The capital of Spain is", "Madrid", "Seville"),
         ("Two plus two is", "four", "five"), ("The sky is", "blue", "green")]  # fmt: skip
DOMAINS = ["d[/]", "a:smile:b", "d[/]", "$\\frac$"]
TOPICS = ["[bold]x", "t[/]", "[red]", "$x$"]
IDS = ["s:smile:1", "s[bold]2", "s$\\frac$3", "s[/]4"]


@pytest.mark.slow
def test_markup_in_data_names_and_folders_prints_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative folders: short lines
    with open("d [1].jsonl", "w") as f:
        for (prompt, fact, hall), domain, topic, sid in zip(PAIRS, DOMAINS, TOPICS, IDS, strict=True):
            record = {"id": sid, "domain": domain, "topic": topic, "prompt": prompt, "fact": fact, "hallucination": hall}
            f.write(json.dumps(record) + "\n")
    config = Path("p [bold].toml")
    config.write_text((CONFIGS / "tiny.toml").read_text().replace('name = "tiny"', 'name = "tiny [/]:smile:"', 1))
    out = "run [baseline]:smile:"
    base = ["run", "--config", str(config), "--data", "d [1].jsonl", "--batch-size", "4"]
    result = runner.invoke(app, [*base, "--out", out], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "results: run [baseline]:smile:/metrics.parquet" in result.stdout
    assert "(tiny [/]:smile:, 4 samples)" in result.stdout and "d[/]" in result.stdout and "a:smile:b" in result.stdout
    assert "batched tiny [/]:smile:" in result.stderr  # the progress bar's description
    assert "😄" not in result.output

    result = runner.invoke(app, ["-v", "report", out, "--bootstrap", "0"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}/dashboard.png" in result.stdout and "(tiny [/]:smile:, 4 samples)" in result.stdout
    assert "d[/] " in result.stdout or "a:smile:b " in result.stdout  # the best domain
    assert f"report of {out}: 4 samples" in result.stderr  # a log line through the RichHandler

    assert runner.invoke(app, [*base, "--limit", "3", "--out", "three"]).exit_code == 0
    result = runner.invoke(app, ["compare", out, "three"], env=WIDE)
    assert result.exit_code == 1, result.output
    assert f"missing sample s$\\frac$3 is in {out} but not in three" in result.stdout  # --limit 3: one of each domain
    assert f"FAIL three vs {out}: max" in result.stdout and "😄" not in result.output
    shutil.rmtree("three")


def test_markup_in_an_error_and_its_hint_prints_literally(tmp_path):
    missing = tmp_path / "gone [bold]:smile:[/]"
    result = runner.invoke(app, ["report", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"error: {missing} is not a folder" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["run", "--data", str(missing / "x.json")])
    assert result.exit_code == 2 and str(missing) in " ".join(result.stderr.split()), result.output
