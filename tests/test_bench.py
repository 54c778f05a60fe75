"""bench (sweep, recommendation, OOM as a result) and --batch-size auto."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from saecli.autobatch import find_batch_size
from saecli.bench import SEQUENTIAL, SizeResult, measure, recommend
from saecli.cli import app
from saecli.errors import SaecliError

runner = CliRunner()
GiB = 2**30


def _result(size, rate, peak):
    return SizeResult(size=size, ok=True, samples_per_second=rate, peak_memory=peak)


def test_recommend_fastest_under_margin():
    results = [_result(SEQUENTIAL, 1.0, GiB), _result(1, 5.0, GiB), _result(8, 20.0, 3 * GiB), _result(32, 30.0, 9 * GiB)]
    size, why = recommend(results, available=10 * GiB)
    assert size == 8 and "32" in why  # 32 is faster but over 80% of 10 GiB
    assert recommend(results, available=None)[0] == 32
    assert recommend([SizeResult(size=1, ok=False, oom=True)], available=GiB)[0] is None




def test_auto_halves_on_oom(loaded64, samples, monkeypatch, oom_above):
    oom_above(4)
    auto = find_batch_size(loaded64, samples, cap=32)
    assert auto.size == 4
    assert [p["size"] for p in auto.probes] == [1, 2, 4, 8] and auto.probes[-1]["outcome"] == "out of memory"
    assert "batch 8 ran out of memory" in auto.reason


def test_auto_single_sample_that_does_not_fit(loaded64, samples, monkeypatch, oom_above):
    oom_above(0)
    with pytest.raises(SaecliError, match="not even one sample fits") as info:
        find_batch_size(loaded64, samples)
    assert "doctor --probe" in info.value.hint


def test_auto_respects_memory_margin(loaded64, samples):
    # With almost nothing available, the first probe already passes the margin: no size fits.
    with pytest.raises(SaecliError):
        find_batch_size(loaded64, samples, available=1)
    assert find_batch_size(loaded64, samples, cap=8, available=None).size == 8


@pytest.mark.slow
def test_measure_records_oom(monkeypatch, oom_above):
    oom_above(2)
    job = {"preset": "tiny", "data": None, "limit": 8, "repeats": 1, "device": "cpu", "dtype": "float32",
           "seed": 0, "noise_std": 0.1, "size": 4}
    result = measure(job)
    assert result["oom"] is True and result["ok"] is False and "out of memory" in result["error"]
    ok = measure({**job, "size": 2})
    assert ok["ok"] and ok["samples"] == 8 and ok["samples_per_second"] > 0 and set(ok["stages"]) >= {"forward", "sae", "geometry"}


@pytest.mark.slow
def test_bench_cli_writes_json_and_csv(tmp_path):
    out = tmp_path / "b"
    result = runner.invoke(app, ["bench", "--sizes", "1,2", "--limit", "4", "--repeats", "1", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc == json.loads((out / "bench.json").read_text()) | {"out_dir": doc["out_dir"]}
    sizes = [r["size"] for r in doc["results"]]
    assert sizes == [SEQUENTIAL, 1, 2] and all(r["ok"] for r in doc["results"])
    assert doc["recommended"] in (1, 2)
    assert doc["results"][1]["speedup_vs_batch1"] == 1.0
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["size"] for r in rows] == [SEQUENTIAL, "1", "2"] and "stage_forward_seconds" in rows[0]


def test_bench_rejects_bad_sizes():
    result = runner.invoke(app, ["bench", "--sizes", "4,-1"])
    assert result.exit_code == 2 and "--sizes" in result.output
