"""Every script in scripts/ run as a user runs it (a subprocess from the repository root, on the
embedded ``tiny`` preset, small sizes, output in a temporary folder), so that none can rot unseen.

Two runs are ``slow``: build_tiny.py's quick build (then loaded as a preset and analysed) and
gpu_check.sh for real (a minute or two each on 2 cores). Their fast tests check build_tiny.py's
start, and run gpu_check.sh with stand-ins for ``saecli`` and pytest, so that its steps, their exit
codes, the budget and the summary are checked in about a second.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import saecli
from saecli.cli import app
from saecli.columns import metric_columns

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
GOLDEN = ROOT / "tests" / "golden" / "tiny.json"
TESTED = {
    "baselines.py",
    "build_tiny.py",
    "competitor_bench.py",
    "gpu_check.sh",
    "gpu_check_summary.py",
    "html_load.py",
    "scale.py",
    "update_golden.py",
}
GPU_CHECK_STEPS = ["doctor", "pytest-gpu", "compare-float64", "compare-float32", "compare-bfloat16", "bench-bfloat16", "bench-float32",
                   "doctor-probe"]  # fmt: skip
REQUIRED_STEPS = {"doctor", "pytest-gpu", "compare-float64", "bench-bfloat16", "bench-float32"}


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a script run: this checkout's saecli first on the path, no saecli
    command that could be another checkout's, one thread (set by conftest), offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_script(args: list[str], *, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = ["bash", *args] if args[0].endswith(".sh") else [sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, env=env or script_env(), capture_output=True, text=True, timeout=timeout)


def test_every_script_has_a_test():
    scripts = {p.name for p in SCRIPTS.iterdir() if p.is_file() and p.suffix in (".py", ".sh")}
    assert scripts == TESTED, "a script was added or removed: give it a test here"


# -- baselines.py ---------------------------------------------------------------------------------
def test_baselines_times_all_three_and_research_agrees_with_sequential_on_every_column(tmp_path):
    out = tmp_path / "baselines.json"
    result = run_script(["scripts/baselines.py", "--preset", "tiny", "--limit", "6", "--research-limit", "3", "--batch-size", "3",
                         "--check", "2", "--threads", "1", "--json", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(research|forward|engine)\s+\d+\s+[\d.]+\s+([\d.]+)", result.stdout, re.M)
    }
    assert set(table) == {"research", "forward", "engine"} and all(rate > 0 for rate in table.values()), result.stdout
    assert re.search(r"research: 45 forward passes", result.stdout), result.stdout  # 15 per sample
    assert re.search(r"research vs saecli sequential, first 2 samples, tolerance 0.0001: agree", result.stdout), result.stdout

    document = json.loads(out.read_text())
    assert [r["algorithm"] for r in document["results"]] == ["research", "forward", "engine"]
    assert [r["samples"] for r in document["results"]] == [3, 6, 6]
    check = document["check"]
    assert check["passed"] and not check["mismatches"] and check["samples"] == 2
    # Every numeric column of the table is compared, the log-probability baselines included.
    layers = document["layers"]
    numeric = [c for c in metric_columns(layers) if not c.endswith("_shape_class") and not c.endswith("_l0_norm")]
    assert sorted(check["max_abs_diff_per_column"]) == sorted(numeric)
    for column in ("logprob_sum_fact", "logprob_sum_hall", "logprob_sum_diff", "logprob_mean_fact", "logprob_mean_diff"):
        assert check["max_abs_diff_per_column"][column] < 1e-4, column
    assert check["largest"]["abs_diff"] < 1e-4


def test_baselines_rejects_an_unknown_algorithm():
    result = run_script(["scripts/baselines.py", "--preset", "tiny", "--which", "research,fastest"])
    assert result.returncode == 2 and "--which: unknown ['fastest']" in result.stderr


# -- scale.py -------------------------------------------------------------------------------------
@pytest.mark.slow  # three saecli processes on the embedded preset: ~20 s on 2 idle cores (report: its own tests)
def test_scale_measures_run_and_resume_and_the_resumed_run_matches(tmp_path):
    import polars as pl

    result = run_script(
        ["scripts/scale.py", "--sizes", "16", "--batch-size", "8", "--steps", "run,resume", "--out", str(tmp_path)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, row = result.stdout.strip().splitlines()
    assert header.split(" | ")[0] == "samples" and row.split(" | ")[0] == "16"
    (measured,) = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert measured["report_seconds"] is None and row.split(" | ")[header.split(" | ").index("report_seconds")] == "-"
    assert measured["samples"] == 16 and all(v > 0 for v in measured.values() if v is not None), measured
    # The data repeat the benchmark with new ids; the run stopped halfway and resumed ends like the uninterrupted one.
    ids = [json.loads(line)["id"] for line in (tmp_path / "data-16.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16
    whole = pl.read_parquet(tmp_path / "run-16" / "metrics.parquet").sort("sample_id")
    resumed = pl.read_parquet(tmp_path / "resumed-16" / "metrics.parquet").sort("sample_id")
    assert sorted(whole["sample_id"]) == sorted(ids)
    assert whole.equals(resumed)


def test_scale_rejects_bad_sizes_and_steps():
    result = run_script(["scripts/scale.py", "--sizes", "10k"])
    assert result.returncode == 2 and "--sizes: expected comma-separated whole numbers" in result.stderr
    result = run_script(["scripts/scale.py", "--steps", "report"])
    assert result.returncode == 2 and "report needs run" in result.stderr


# -- html_load.py ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_html_load_measures_a_page(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(
        '<!doctype html><html><body><script type="application/json" id="saecli-data">'
        '{"samples": 3, "sample_table": {"samples": [{}, {}]}}</script>'
        '<p>page</p><script>performance.mark("saecli-tables"); performance.mark("saecli-ready");'
        'document.body.dataset.ready = "1"</script>'
        "</body></html>"
    )
    result = run_script(["scripts/html_load.py", str(page), "--repeats", "1"], timeout=120)
    if result.returncode == 2 and "no chromium" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-3000:]
    header, row = result.stdout.strip().splitlines()
    assert header == "page | MB | samples embedded | paint_ms | tables_ms | ready_ms | warm_ready_ms"
    cells = row.split(" | ")
    assert cells[0] == str(page) and cells[2] == "2 of 3" and all(int(c) > 0 for c in cells[3:]), row
    result = run_script(["scripts/html_load.py", str(tmp_path / "absent.html")])
    assert result.returncode == 2 and "no such file" in result.stderr


# -- update_golden.py -----------------------------------------------------------------------------
def test_update_golden_writes_the_committed_values(tmp_path):
    out = tmp_path / "tiny.json"
    result = run_script(["scripts/update_golden.py", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote 5 rows to {out}" in result.stdout
    written, committed = json.loads(out.read_text()), json.loads(GOLDEN.read_text())
    assert (written["preset"], written["dtype"]) == ("tiny", "float64")
    rows = {r["sample_id"]: r for r in written["rows"]}
    assert sorted(rows) == sorted(r["sample_id"] for r in committed["rows"])
    columns = metric_columns(saecli.load_preset("tiny", device="cpu", dtype="float64").layers)
    for expected in committed["rows"]:
        got = rows[expected["sample_id"]]
        assert set(columns) <= set(got)
        for column, value in expected.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, abs=1e-8), (expected["sample_id"], column)
            else:
                assert got[column] == value, (expected["sample_id"], column)


# -- build_tiny.py --------------------------------------------------------------------------------
def test_build_tiny_refuses_a_missing_benchmark_and_writes_nothing(tmp_path):
    result = run_script(
        ["scripts/build_tiny.py", "--quick", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "built")]
    )
    assert result.returncode == 2 and "benchmark file not found" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # ~20 s on 2 idle cores, over a minute on a busy machine
def test_build_tiny_quick_build_loads_as_a_preset_like_the_embedded_one(tmp_path):
    assets = ROOT / "saecli" / "assets" / "tiny"
    before = {p: p.stat().st_mtime_ns for p in assets.rglob("*")}
    out = tmp_path / "built"
    result = run_script(["scripts/build_tiny.py", "--quick", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tiny preset written to {out}" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in assets.rglob("*")} == before, "the embedded preset was touched"
    assert not list(tmp_path.glob(".*.building")), "the staging folder was left behind"

    info = json.loads((out / "build_info.json").read_text())
    assert info["quick"] is True and info["sae_layers"] == [0, 2, 3]
    assert info["files"].keys() >= {"model/config.json", "model/model.safetensors", "model/tokenizer.json",
                                    "saes/layer_0/cfg.json", "saes/layer_3/sae_weights.safetensors"}  # fmt: skip

    # The embedded preset's own TOML, pointed at the new folder.
    toml = (ROOT / "configs" / "tiny.toml").read_text()
    assert toml.count("builtin:tiny/") == 4
    toml = toml.replace('name = "tiny"', 'name = "tiny-rebuilt"').replace("builtin:tiny/", "built/")
    (tmp_path / "tiny-rebuilt.toml").write_text(toml)
    loaded = saecli.load_preset(str(tmp_path / "tiny-rebuilt.toml"), device="cpu", dtype="float32")
    assert loaded.preset.name == "tiny-rebuilt" and list(loaded.layers) == [0, 2, 3]
    rows = list(saecli.analyze(saecli.load_samples(limit=3), loaded, batch_size=3))
    assert [r["sample_id"] for r in rows] == [s.id for s in saecli.load_samples(limit=3)]
    for row in rows:
        for column in metric_columns(loaded.layers):
            value = row[column]
            assert value is not None or column.endswith("_shape_class"), column
            assert not isinstance(value, float) or math.isfinite(value), column


# -- competitor_bench.py --------------------------------------------------------------------------
def _competitor_bench(competitors: str) -> dict[tuple[str, str], tuple[float, int]]:
    """Run it on 4 samples, once per setting; (competitor, threads label) -> (samples/s, threads used)."""
    result = run_script(["scripts/competitor_bench.py", "--preset", "tiny", "--limit", "4", "--batch-size", "2", "--repeats", "1",
                         "--competitors", competitors])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("tiny, 4 samples, batch 2,")
    rates = {}
    for line in lines[1:]:
        match = re.match(r"\s+(.+?)\s+(auto threads|--threads \d+)\s+([\d.]+) \((\d+)\)", line)
        assert match, line
        rates[match.group(1), match.group(2)] = (float(match.group(3)), int(match.group(4)))
    cores = os.cpu_count() or 1
    assert all(rate > 0 for rate, _ in rates.values())
    assert all(used == cores for (_, label), (_, used) in rates.items() if label == f"--threads {cores}")
    return rates


def test_competitor_bench_times_saecli_with_auto_and_all_threads():
    rates = _competitor_bench("idle")
    assert set(rates) == {("idle", "auto threads"), ("idle", f"--threads {os.cpu_count() or 1}")}


def test_competitor_bench_competitors_stop_when_told(monkeypatch):
    import importlib.util
    import threading

    import torch

    spec = importlib.util.spec_from_file_location("competitor_bench", SCRIPTS / "competitor_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.KEYS.values()) == set(module.COMPETITORS)
    stop = threading.Event()
    stop.set()
    threads = torch.get_num_threads()
    try:
        for target in module.COMPETITORS.values():
            if target is not None:
                target(stop)  # returns at once: the event is set
    finally:
        torch.set_num_threads(threads)


def test_competitor_bench_rejects_an_unknown_competitor():
    result = run_script(["scripts/competitor_bench.py", "--competitors", "idle,gpu"])
    assert result.returncode == 2 and "--competitors: unknown ['gpu']" in result.stderr


# -- gpu_check_summary.py -------------------------------------------------------------------------
def _write_check_folder(folder: Path) -> None:
    """A gpu_check.sh folder: doctor with a probe, a passing and a drifting compare, a finished bench
    and one cut by its timeout, pytest with no GPU test."""
    folder.mkdir()
    steps = [("doctor", 0, "2.9", 60, 1), ("pytest-gpu", 5, "11.4", 120, 1), ("compare-float64", 0, "25.3", 75, 1),
             ("compare-float32", 1, "58.3", 60, 0), ("bench-bfloat16", 0, "40.7", 170, 1), ("bench-float32", 124, "170.0", 170, 1),
             ("doctor-probe", 0, "17.0", 90, 0)]  # fmt: skip
    tsv = "step\trc\tseconds\ttimeout\trequired\tcommand\n" + "".join(
        f"{s}\t{rc}\t{sec}\t{t}\t{req}\tcmd {s}\n" for s, rc, sec, t, req in steps
    )
    (folder / "steps.tsv").write_text(tsv)
    (folder / "env.txt").write_text("started   2026-01-01T00:00:00Z\nmode      device=cpu quick=1 budget=420s\n")
    doctor = {"ok": True, "device": "cpu", "device_reason": "cpu: asked for", "dtype": "bfloat16",
              "environment": {"versions": {"saecli": "0.1.0", "torch": "2.13.0"}, "gpus": []},
              "checks": [{"name": "device", "status": "warn", "detail": "16-bit matmuls are slow"}, {"name": "x", "status": "ok"}],
              "estimate": {"largest_safe": 64, "free_bytes": 2**31, "model_bytes": 2**20, "sae_bytes": 2**20, "longest_tokens": 37}}  # fmt: skip
    (folder / "doctor.out").write_text("a log line first\n" + json.dumps(doctor))
    probe = {**doctor, "probe": {"ok": True, "size": 64, "load_seconds": 6.6, "loaded_bytes": 2**29, "reason": "probing cap",
                                 "probes": [{"size": 1, "outcome": "ok", "peak_bytes": 2**29}]}}  # fmt: skip
    (folder / "doctor-probe.out").write_text(json.dumps(probe))
    (folder / "pytest-gpu.out").write_text(
        "SKIPPED [1] tests/test_gpu.py:27: needs a CUDA device\n3 skipped, 583 deselected in 7.14s\n"
    )

    def compare(passed: bool, worst: float) -> dict:
        columns = [{"column": "gini_fact", "kind": "numeric", "max_abs": worst / 2, "worst_sample": "entity-001"},
                   {"column": "axis_twist_diff", "kind": "numeric", "max_abs": worst, "worst_sample": "entity-019"},
                   {"column": "l0_fact_shape_class", "kind": "discrete", "mismatches": 0 if passed else 2}]  # fmt: skip
        return {"passed": passed, "device": "cpu", "dtype": "float64" if passed else "float32",
                "batch_sizes": {"1": {"columns": columns}, "4": {"columns": columns[:1]}}}  # fmt: skip

    (folder / "compare-float64.out").write_text(json.dumps(compare(True, 1.8e-13)))
    drift = compare(False, 1.03e-4)
    drift["drift_vs_float64"] = {
        "sequential": {"columns": [{"column": "axis_twist_diff", "kind": "numeric", "max_abs": 4.7e-4, "median_abs": 7e-6}]}
    }
    (folder / "compare-float32.out").write_text(json.dumps(drift))
    (folder / "compare-float32.err").write_text("compare: drift above --atol\n")
    bench = {"samples": 32, "device": "cpu", "dtype": "bfloat16", "recommended": 4, "reason": "fastest measured",
             "results": [{"size": 1, "ok": True, "samples_per_second": 5.6, "samples_per_second_no_baselines": 6.4, "tokens_per_second": 248.3,
                          "seconds_median": 5.7, "peak_memory": 2**29, "peak_increase": 2**26, "load_seconds": 5.9,
                          "stages": {"forward": 3.0, "sae": 1.0}},
                         {"size": 4, "ok": True, "samples_per_second": 19.0, "tokens_per_second": 839.7, "seconds_median": 1.7,
                          "peak_memory": 2**29, "peak_increase": 2**26, "load_seconds": 6.1, "stages": {"forward": 1.0, "sae": 1.0}},
                         {"size": 8, "ok": False, "oom": True, "error": "out of memory"}]}  # fmt: skip
    (folder / "bench-bfloat16").mkdir()
    (folder / "bench-bfloat16" / "bench.json").write_text(json.dumps(bench))
    (folder / "bench-float32.err").write_text(
        "bench: batch 1: 7.5 samples/s, peak 0.57 GiB\nbench: batch 4: 17.25 samples/s, peak 0.60 GiB\n"
    )


def test_gpu_check_summary_parses_a_folder(tmp_path):
    folder = tmp_path / "check"
    _write_check_folder(folder)
    result = run_script(["scripts/gpu_check_summary.py", str(folder)])
    assert result.returncode == 0, result.stderr
    expected = f"""\
        gpu_check summary: {folder}
        started   2026-01-01T00:00:00Z
        mode      device=cpu quick=1 budget=420s

        step                  exit  seconds  timeout  required
        doctor                   0      2.9       60  yes
        pytest-gpu               5     11.4      120  yes
        compare-float64          0     25.3       75  yes
        compare-float32          1     58.3       60  no (exit 1 by design)
        bench-bfloat16           0     40.7      170  yes
        bench-float32          124    170.0      170  yes
        doctor-probe             0     17.0       90  no

        [doctor] exit 0, 2.9 s
          ok=True device=cpu (cpu: asked for) dtype=bfloat16
          versions: saecli 0.1.0, torch 2.13.0
          warn: device: 16-bit matmuls are slow
          predicted largest safe batch 64 (free 2.00 GiB, model 0.00 GiB, SAEs 0.00 GiB, longest 37 tokens)
        [pytest-gpu] exit 5, 11.4 s
          SKIPPED [1] tests/test_gpu.py:27: needs a CUDA device | 3 skipped, 583 deselected in 7.14s
          exit 5: no test carries the gpu mark
        [compare-float64] exit 0, 25.3 s
          passed=True device=cpu dtype=float64 max|Δ|=1.800e-13 (axis_twist_diff, batch 1, entity-019); discrete mismatches 0
          max|Δ| per batch size: 1: 1.80e-13, 4: 9.00e-14
        [compare-float32] exit 1, 58.3 s
          passed=False device=cpu dtype=float32 max|Δ|=1.030e-04 (axis_twist_diff, batch 1, entity-019); discrete mismatches 2
          max|Δ| per batch size: 1: 1.03e-04, 4: 5.15e-05
          drift vs float64, sequential: axis_twist_diff max 4.70e-04 median 7.00e-06
        [bench-bfloat16] exit 0, 40.7 s
          best 19.0 samples/s at batch 4 (32 samples, device cpu, dtype bfloat16, load 6.1 s, peak 0.50 GiB); recommended 4
            batch 1: 5.6 samples/s (6.4 without baselines), 248.3 tokens/s, 5.7 s, peak 0.50 GiB (+0.06 GiB), load 5.9 s; forward 75% sae 25%
            batch 4: 19.0 samples/s, 839.7 tokens/s, 1.7 s, peak 0.50 GiB (+0.06 GiB), load 6.1 s; forward 50% sae 50%
            batch 8: OOM: out of memory
            reason: fastest measured
        [bench-float32] exit 124, 170.0 s
          no bench.json (cut short?); from stderr: best 17.25 samples/s at batch 4
            batch 1: 7.5 samples/s (peak 0.57 GiB), batch 4: 17.25 samples/s (peak 0.60 GiB)
          TIMED OUT after 170 s
          stderr: bench: batch 1: 7.5 samples/s, peak 0.57 GiB | bench: batch 4: 17.25 samples/s, peak 0.60 GiB
        [doctor-probe] exit 0, 17.0 s
          ok=True device=cpu (cpu: asked for) dtype=bfloat16
          versions: saecli 0.1.0, torch 2.13.0
          warn: device: 16-bit matmuls are slow
          predicted largest safe batch 64 (free 2.00 GiB, model 0.00 GiB, SAEs 0.00 GiB, longest 37 tokens)
          probe: ok=True size=64 load 6.6 s, loaded 0.50 GiB; probing cap
          probes (size:outcome/peak): 1:ok/0.50 GiB
        """
    assert result.stdout == textwrap.dedent(expected)


# -- gpu_check.sh ---------------------------------------------------------------------------------
STAND_IN = '''\
"""Stands in for `python -m saecli` in gpu_check.sh's fast test: logs its arguments, answers like saecli."""
import json, os, pathlib, sys

args = sys.argv[1:]
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
def opt(name):
    return args[args.index(name) + 1] if name in args else None
if args[0] == "doctor":
    doc = {"ok": True, "device": opt("--device"), "device_reason": "asked for", "dtype": opt("--dtype"), "checks": []}
    if "--probe" in args:
        doc["probe"] = {"ok": True, "size": 8, "reason": "stand-in"}
    print(json.dumps(doc))
    sys.exit(int(os.environ.get("STAND_IN_DOCTOR_RC", "0")))
if args[0] == "compare":
    passed = opt("--dtype") == "float64"
    print(json.dumps({"passed": passed, "device": opt("--device"), "dtype": opt("--dtype"), "batch_sizes": {}}))
    sys.exit(0 if passed else 1)
if args[0] == "bench":
    out = pathlib.Path(opt("--out"))
    out.mkdir(parents=True)
    results = [{"size": int(s), "ok": True, "samples_per_second": 10.0 * int(s)} for s in opt("--sizes").split(",")]
    (out / "bench.json").write_text(json.dumps({"samples": int(opt("--limit")), "device": opt("--device"), "dtype": opt("--dtype"),
                                                "recommended": results[-1]["size"], "results": results}))
    sys.exit(0)
sys.exit(9)
'''


def _stand_ins(tmp_path: Path) -> dict[str, str]:
    """Environment for gpu_check.sh with saecli and pytest replaced by stand-ins (the summary and
    the `import pytest` check still run on this Python)."""
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pytest ]; then echo "3 skipped, 5 deselected"; exit 0; fi\n'
                      f'exec {sys.executable} "$@"\n')  # fmt: skip
    python.chmod(0o755)
    return script_env(SAECLI=f"{sys.executable} {tmp_path / 'stand_in.py'}", PYTHON=str(python), STAND_IN_LOG=str(tmp_path / "calls.log"),
                      GPU_CHECK_DATA=str(tmp_path))  # fmt: skip


def _steps(folder: Path) -> dict[str, str]:
    lines = (folder / "steps.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", "rc", "seconds", "timeout", "required", "command"]
    return {fields[0]: fields[1] for fields in (line.split("\t") for line in lines[1:])}


def _summary_rows(folder: Path) -> dict[str, str]:
    """step -> exit code, from the table of summary.txt."""
    rows = re.findall(r"^(\S+)\s+(\S+)\s+[\d.]+\s+\d+\s+(?:yes|no)", (folder / "summary.txt").read_text(), re.M)
    return dict(rows)


def test_gpu_check_sh_runs_every_step_and_summarises_them(tmp_path):
    out = tmp_path / "check"
    result = run_script(["scripts/gpu_check.sh", "--cpu", "--quick", str(out)], env=_stand_ins(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = _steps(out)
    assert list(steps) == GPU_CHECK_STEPS
    assert {s: rc for s, rc in steps.items() if s in REQUIRED_STEPS} == dict.fromkeys(REQUIRED_STEPS, "0")
    assert steps["compare-float32"] == steps["compare-bfloat16"] == "1"
    assert _summary_rows(out) == steps
    summary = (out / "summary.txt").read_text()
    assert "mode      device=cpu quick=1 budget=420s" in summary
    assert "best 40.0 samples/s at batch 4 (32 samples, device cpu, dtype float32" in summary
    assert (out / "bench-bfloat16" / "bench.json").is_file() and (out / "doctor.out").is_file()

    # --cpu --quick: the embedded preset on the CPU, 32 samples, sizes 1,4; both benches, bfloat16 with and without baselines.
    calls = [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert [c[0] for c in calls] == ["doctor", "compare", "compare", "compare", "bench", "bench", "doctor"]
    assert all(c[c.index("--device") + 1] == "cpu" for c in calls)
    benches = [c for c in calls if c[0] == "bench"]
    for bench in benches:
        assert bench[bench.index("--preset") + 1] == "tiny" and bench[bench.index("--sizes") + 1] == "1,4"
        assert bench[bench.index("--limit") + 1] == "32" and bench[bench.index("--data") + 1] == str(tmp_path)
    assert [b[b.index("--baselines") + 1] for b in benches] == ["both", "on"]
    # The real saecli takes every option the script passes (a real --cpu --quick run takes over a
    # minute of the suite's ten: the steps themselves are the commands' own tests).
    for call in calls:
        accepted = CliRunner().invoke(app, [*call, "--help"])
        assert accepted.exit_code == 0, (call, accepted.output)


def test_gpu_check_sh_fails_on_a_failed_required_step_and_skips_steps_out_of_budget(tmp_path):
    out = tmp_path / "failed"
    env = _stand_ins(tmp_path) | {"STAND_IN_DOCTOR_RC": "3"}
    result = run_script(["scripts/gpu_check.sh", "--cpu", "--quick", str(out)], env=env, timeout=120)
    assert result.returncode == 1
    steps = _steps(out)
    assert steps["doctor"] == "3" and steps["doctor-probe"] == "3" and steps["bench-float32"] == "0"
    assert _summary_rows(out) == steps

    out = tmp_path / "no-budget"
    result = run_script(
        ["scripts/gpu_check.sh", "--cpu", "--quick", "--budget", "0", str(out)], env=_stand_ins(tmp_path), timeout=60
    )
    assert result.returncode == 1
    steps = _steps(out)
    assert list(steps) == GPU_CHECK_STEPS and set(steps.values()) == {"skipped"}

    result = run_script(["scripts/gpu_check.sh", "--no-such-option"], env=_stand_ins(tmp_path))
    assert result.returncode == 2 and "unknown option --no-such-option" in result.stderr
