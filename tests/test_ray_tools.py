"""``doctor --ray`` and ``bench --ray``: the checks as pure functions (fast), then on a real local
Ray instance (the session's ``ray_cluster``, slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

import saecli
from saecli import cluster
from saecli.cli import app
from saecli.doctor.nodes import ClusterFacts, NodeFacts, check_cluster
from saecli.errors import SaecliError
from saecli.memory import GiB

runner = CliRunner()


def _node(**kw) -> NodeFacts:
    base = {"node_id": "n1", "address": "10.0.0.2", "cpus": 8.0, "gpus": 1.0, "host": "gpu1", "saecli_version": saecli.__version__,
            "python": "3.11.7", "memory_available": 30 * GiB, "memory_total": 64 * GiB, "preset_status": "ok",
            "preset_detail": "tiny (local): all 9 files present"}  # fmt: skip
    return NodeFacts(**{**base, **kw})


def _rows(checks):
    return {c.name: c for c in checks}


def test_check_cluster_unreachable_is_one_failed_row():
    facts = ClusterFacts(address="10.0.0.9:6379", connect_error="cannot reach the Ray cluster at 10.0.0.9:6379 (Connection refused)",
                         connect_hint="is `ray start --head` running there, and is the port open? `saecli doctor --ray ADDRESS` checks")  # fmt: skip
    (row,) = check_cluster(facts, saecli.__version__)
    assert (row.name, row.status) == ("ray", "fail")
    assert "10.0.0.9:6379" in row.detail and "ray start --head" in row.hint and "saecli doctor" not in row.hint


def test_a_cluster_without_alive_nodes_is_one_line():
    info = cluster.ClusterInfo(ray_version="2.60.0", address="10.0.0.9:6379", started_here=False, nodes=[])
    for options in (cluster.RayOptions(), cluster.RayOptions(workers=2), cluster.RayOptions(worker_cpus=4)):
        with pytest.raises(SaecliError, match="10.0.0.9:6379 has no alive node") as caught:
            cluster.plan(info, options)
        assert "ray status" in caught.value.hint


def test_check_cluster_rows_per_node():
    facts = ClusterFacts(address="auto", ray_version="2.60.0", nodes=[
        _node(),
        _node(node_id="n2", address="10.0.0.3", host="cpu1", gpus=0.0, saecli_version="0.0.9", memory_available=GiB // 2),
        _node(node_id="n3", address="10.0.0.4", host=None, error="ModuleNotFoundError: No module named 'saecli'", saecli_missing=True),
        _node(node_id="n4", address="10.0.0.5", host="gpu2", preset_status="fail", preset_detail="tiny: the SAE for layer 0 does not exist",
              preset_hint="copy the preset's files"),
    ])  # fmt: skip
    rows = _rows(check_cluster(facts, saecli.__version__))
    assert rows["ray"].status == "ok" and "4 alive node(s)" in rows["ray"].detail
    assert rows["node gpu1"].status == "ok" and "8 CPUs, 1 GPUs" in rows["node gpu1"].detail
    assert rows["saecli @ gpu1"].status == "ok" and rows["preset @ gpu1"].status == "ok"
    assert rows["node cpu1"].status == "warn" and "2 GiB" in rows["node cpu1"].hint
    assert rows["saecli @ cpu1"].status == "warn" and "same saecli version" in rows["saecli @ cpu1"].hint
    assert rows["saecli @ 10.0.0.4"].status == "fail" and "install saecli" in rows["saecli @ 10.0.0.4"].hint
    assert rows["preset @ gpu2"].status == "fail" and rows["preset @ gpu2"].hint == "copy the preset's files"


def test_doctor_ray_without_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    for args in (["doctor", "--ray"], ["bench", "--ray", "--workers", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "pip install 'saecli[ray]'" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "--sizes", "8,16"], "one batch size"),
        (["--ray", "--workers", "0"], "--workers must be"),
        (["--ray", "--workers", "a"], "--workers must be"),
        (["--workers", "2"], "need --ray"),
    ],
)
def test_bench_ray_refuses_before_starting(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # no bench folder made


# -- on a real local Ray instance -----------------------------------------------------------------


@pytest.mark.slow
def test_doctor_ray_lists_the_node(ray_cluster):
    result = runner.invoke(app, ["doctor", "--ray", "--json"])
    report = json.loads(result.stdout)
    cluster = report["cluster"]
    assert cluster["ray_version"] == ray_cluster.__version__ and not cluster["started_here"]
    (node,) = cluster["nodes"]
    assert node["cpus"] >= 1 and node["saecli_version"] == saecli.__version__ and node["memory_available"] > 0
    assert node["preset_status"] == "ok" and "files present" in node["preset_detail"]
    rows = {c["name"]: c for c in report["checks"]}
    label = node["host"]
    assert rows["ray"]["status"] == "ok"
    assert rows[f"node {label}"]["status"] in ("ok", "warn") and "CPUs" in rows[f"node {label}"]["detail"]
    assert rows[f"saecli @ {label}"]["status"] == "ok" and rows[f"preset @ {label}"]["status"] == "ok"
    assert result.exit_code == 0, result.output
    assert ray_cluster.is_initialized()  # joined, so left running


@pytest.mark.slow
def test_doctor_ray_preset_file_missing_on_the_node(ray_cluster, tmp_path):
    preset = tmp_path / "broken.toml"
    saes = "".join(f'[[sae]]\nlayer = {layer}\npath = "{path}"\n'
                   for layer, path in ((0, "saes/missing"), (2, "builtin:tiny/saes/layer_2"), (3, "builtin:tiny/saes/layer_3")))  # fmt: skip
    preset.write_text('name = "broken"\n[model]\nname = "saecli-tiny"\npath = "builtin:tiny/model"\n' + saes)
    result = runner.invoke(app, ["doctor", "--ray", "--preset", str(preset), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    label = report["cluster"]["nodes"][0]["host"]
    row = {c["name"]: c for c in report["checks"]}[f"preset @ {label}"]
    assert row["status"] == "fail" and "saes/missing" in row["detail"] and row["hint"]


@pytest.mark.slow
def test_doctor_ray_unreachable_address_is_a_failed_check_quickly(tmp_path):
    # A fresh process: this one's Ray (the session's) would be kept whatever the address.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "saecli", "doctor", "--ray", "127.0.0.1:1", "--json"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert time.perf_counter() - started < 60
    assert proc.returncode == 1, proc.stderr
    row = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["ray"]
    assert row["status"] == "fail" and "127.0.0.1:1" in row["detail"] and "ray start --head" in row["hint"]


@pytest.mark.slow
def test_bench_ray_two_worker_counts(ray_cluster, tmp_path):
    out = tmp_path / "b"
    result = runner.invoke(
        app,
        [
            "bench",
            "--ray",
            "--workers",
            "1,2",
            "--limit",
            "8",
            "--repeats",
            "1",
            "--baselines",
            "on",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "bench.json").read_text())
    assert (saved["config"]["seed"], saved["config"]["batch_size"], saved["config"]["limit"]) == (3, 16, 8)  # the resolved config
    assert saved["kind"] == "ray" and saved["batch_size"] == 16 and saved["samples"] == 8
    rows = saved["results"]
    assert [r["workers"] for r in rows] == [1, 2] and all(r["ok"] and r["samples_per_second"] > 0 for r in rows)
    assert rows[0]["speedup_vs_1_worker"] == 1.0 and rows[1]["efficiency"] is not None
    assert len(rows[1]["per_worker_samples_per_second"]) == 2 and rows[1]["peak_memory_per_worker"] > 0
    assert (out / "bench.csv").read_text().startswith("workers,ok,")
    assert "efficiency" in result.stdout and ray_cluster.is_initialized()
