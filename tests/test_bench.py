"""bench (sweep, recommendation, OOM as a result) and --batch-size auto."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from saecli.autobatch import find_batch_size
from saecli.bench import SEQUENTIAL, SizeResult, Sweep, recommend
from saecli.bench.measure import job, measure
from saecli.cli import app
from saecli.config import RunConfig
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


def test_auto_halves_on_oom(loaded64, samples, oom_above):
    oom_above(4)
    auto = find_batch_size(loaded64, samples, cap=32)
    assert auto.size == 4
    assert [p["size"] for p in auto.probes] == [1, 2, 4, 8] and auto.probes[-1]["outcome"] == "out of memory"
    assert "batch 8 ran out of memory" in auto.reason


def test_auto_single_sample_that_does_not_fit(loaded64, samples, oom_above):
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
def test_measure_records_oom(oom_above):
    oom_above(2)
    config = RunConfig(preset="tiny", limit=8, device="cpu", dtype="float32")
    result = measure(job(config, 4, repeats=1, baselines="on"))
    assert result["oom"] is True and result["ok"] is False and "out of memory" in result["error"]
    told = []
    ok = measure(job(config, 2, repeats=2, baselines="on"), progress=lambda *step: told.append(step))
    assert told == [("warm-up", 0, 16), *[(f"pass {k}/2", d, 16) for k, ds in ((1, (2, 4, 6, 8)), (2, (10, 12, 14, 16))) for d in ds],
                    ("measuring the torch.mm peak", 16, 16)]  # fmt: skip
    assert (
        ok["ok"] and ok["samples"] == 8 and ok["samples_per_second"] > 0 and set(ok["stages"]) >= {"forward", "sae", "geometry"}
    )
    _sane_flops(ok)


def _sane_flops(r):
    """Counted FLOP/s and utilizations present and plausible (a tiny model on a CPU uses little of the peak)."""
    assert r["forwarded_tokens"] > 0 and 0.0 <= r["padding_fraction"] < 1.0
    assert r["peak_gflops"] > 0 and r["sae_peak_gflops"] > 0
    for part in ("forward", "sae"):
        assert r[f"{part}_gflops"] > 0
        assert 0.0 < r[f"{part}_utilization"] <= 1.5
        assert r[f"{part}_utilization"] == pytest.approx(r[f"{part}_gflops"] / r["peak_gflops"], rel=0.01, abs=1e-4)


@pytest.mark.slow
def test_bench_cli_writes_json_and_csv(tmp_path):
    out = tmp_path / "b"
    args = ["bench", "--sizes", "1,2", "--limit", "4", "--repeats", "1", "--seed", "3", "--domains", "entity, logical"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    config = doc["config"]  # the resolved run configuration measured
    assert (config["seed"], config["domains"], config["limit"], config["preset"]) == (3, ["entity", "logical"], 4, "tiny")
    assert doc == json.loads((out / "bench.json").read_text()) | {"out_dir": doc["out_dir"]}
    sizes = [r["size"] for r in doc["results"]]
    assert sizes == [SEQUENTIAL, 1, 2] and all(r["ok"] for r in doc["results"])
    assert doc["recommended"] in (1, 2)
    assert doc["results"][1]["speedup_vs_batch1"] == 1.0
    assert doc["versions"]["python"] and doc["versions"]["torch"]  # the list a run manifest records
    for r in doc["results"]:
        _sane_flops(r)
    assert doc["results"][0]["padding_fraction"] == 0.0  # sequential: every text alone
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["size"] for r in rows] == [SEQUENTIAL, "1", "2"] and "stage_forward_seconds" in rows[0]
    assert float(rows[2]["forward_gflops"]) > 0 and float(rows[2]["sae_utilization"]) > 0


FAKE_WORKER = """
import json, sys
document = json.load(sys.stdin)
if document["size"] == 2:
    sys.stderr.write("a worker that logs much\\n" * 5000 + "RuntimeError: the last line says why\\n")
    sys.exit(3)
for done in (0, 2, 4):
    print(json.dumps({"progress": ["pass 1/1", done, 4]}), flush=True)
print("a line some library printed")
print(json.dumps({"size": document["size"], "ok": True, "samples": 4, "samples_per_second": 10.0, "seconds_median": 0.4,
                  "tokens_per_second": 90.0}))
"""


def test_sweep_tells_the_progress_of_each_size_as_it_comes(tmp_path, monkeypatch):
    import sys

    import saecli.bench.sweep

    monkeypatch.setattr(saecli.bench.sweep, "WORKER", [sys.executable, "-c", FAKE_WORKER])
    told = []
    result = saecli.bench.sweep.sweep(RunConfig(limit=4, device="cpu"), sizes=[1, 2], repeats=1,
                                      on_progress=lambda *step: told.append(step))  # fmt: skip
    assert told == [(size, "pass 1/1", done, 4) for size in (SEQUENTIAL, 1) for done in (0, 2, 4)]
    outcome = [(r.size, r.ok, r.samples_per_second) for r in result.results]
    assert outcome == [(SEQUENTIAL, True, 10.0), (1, True, 10.0), (2, False, None)]
    assert result.results[2].error == "RuntimeError: the last line says why"  # its stderr, read after 100 kB of it
    cli = runner.invoke(app, ["bench", "--sizes", "1,2", "--limit", "4", "--out", str(tmp_path / "b")])  # the bar drawn from it
    assert cli.exit_code == 0, cli.output
    assert (
        "  sequential: 10.0 samples/s" in cli.stderr and "  batch 2: failed (RuntimeError: the last line says why)" in cli.stderr
    )


def test_bench_rejects_bad_sizes():
    result = runner.invoke(app, ["bench", "--sizes", "4,-1"])
    assert result.exit_code == 2 and "--sizes" in result.output


# -- nothing lost: options and the output folder are checked before anything is measured ----------


@pytest.fixture
def no_sweep(monkeypatch):
    """Fail the test if a size is measured."""
    import saecli.bench.sweep
    import saecli.cli.bench

    def refuse(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(saecli.cli.bench, "sweep", refuse)
    monkeypatch.setattr(saecli.bench.sweep, "_run_worker", refuse)


def _fake_sweep(*args, **kwargs):
    results = [_result(SEQUENTIAL, 10.0, GiB), _result(1, 20.0, GiB), _result(4, 60.0, GiB)]
    for r in results:
        r.samples, r.seconds_median, r.tokens_per_second, r.stages = 8, 0.1, 900.0, {"forward": 0.05}
    return Sweep(preset="tiny", device="cpu", dtype="float32", samples=8, repeats=1, available_memory=8 * GiB,
                 results=results, recommended=4, reason="fastest measured")  # fmt: skip


def _one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, message",
    [(["--out", "/proc/saecli-bench"], "output folder /proc/saecli-bench cannot be written"),
     (["--repeats", "101"], "--repeats must be a whole number from 1 to 100"), (["--repeats", "0"], "--repeats"),
     (["--limit", "0"], "--limit must be"), (["--sizes", ",".join(str(s) for s in range(1, 34))], "at most 32 batch sizes")],
)  # fmt: skip
def test_bench_refuses_before_measuring(tmp_path, monkeypatch, no_sweep, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["bench", *args])
    _one_line_error(result, 2, message)
    assert list(tmp_path.iterdir()) == []  # no bench folder made


def test_bench_results_survive_a_full_disk(tmp_path, monkeypatch):
    import errno

    import saecli.bench.results
    import saecli.cli.bench

    monkeypatch.setattr(saecli.cli.bench, "sweep", _fake_sweep)
    real = saecli.bench.results.atomic_write

    def full(path, write):
        if path.name == "bench.csv":  # bench.json fits, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(saecli.bench.results, "atomic_write", full)
    out = tmp_path / "b"
    result = runner.invoke(app, ["bench", "--out", str(out), "--json"])
    _one_line_error(result, 1, "bench.csv: No space left on device", "results are printed above", "free some space")
    doc = json.loads(result.stdout)
    assert doc["recommended"] == 4 and [r["size"] for r in doc["results"]] == [SEQUENTIAL, 1, 4]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]  # whole, and no temporary left
    result = runner.invoke(app, ["bench", "--out", str(out)], env={"COLUMNS": "160"})
    _one_line_error(result, 1, "No space left on device")
    assert "recommended: --batch-size 4" in result.stdout and "saved:" not in result.stdout
    assert "fwd GF/s" in result.stdout and "SAE GF/s" in result.stdout  # the columns, empty (–) when not measured


def test_bench_folder_named_like_markup_prints_as_typed(tmp_path, monkeypatch):
    import saecli.cli.bench

    monkeypatch.setattr(saecli.cli.bench, "sweep", _fake_sweep)
    out = tmp_path / "b [baseline]:smile:"
    result = runner.invoke(app, ["bench", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"saved: {out / 'bench.json'}, {out / 'bench.csv'}" in result.stdout


def test_default_bench_folders_never_collide(tmp_path, monkeypatch):
    import saecli.cli.bench
    import saecli.rundir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(saecli.cli.bench, "sweep", _fake_sweep)
    monkeypatch.setattr(saecli.rundir, "run_stamp", lambda: "20250101T000000Z")  # three benches in one second
    for _ in range(3):
        result = runner.invoke(app, ["bench", "--json"])
        assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "bench").iterdir())
    assert folders == ["20250101T000000Z-tiny", "20250101T000000Z-tiny-2", "20250101T000000Z-tiny-3"]
    assert all((tmp_path / "bench" / f / "bench.json").is_file() for f in folders)


def test_interrupted_bench_leaves_no_empty_folder(tmp_path, monkeypatch):
    import saecli.cli.bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(saecli.cli.bench, "sweep", interrupted)
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 130 and list(tmp_path.iterdir()) == []


def test_sweep_checks_its_options(no_sweep):
    from saecli.bench.sweep import sweep

    with pytest.raises(SaecliError, match="--repeats"):
        sweep(RunConfig(limit=4, device="cpu"), sizes=[1], repeats=10**6)
