"""`saecli run --ray`: one analysis on the workers of a real local Ray cluster; exact, resumable, and
nothing lost or duplicated when a worker, a node or the driver dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import alive_at_each_part
from processes import saecli_process
from typer.testing import CliRunner

from saecli import cluster, workers
from saecli import runner as run_module
from saecli.cli import app
from saecli.compare import compare_frames
from saecli.config import RunConfig
from saecli.io import read_parquet
from saecli.runner import execute

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
cli = CliRunner()
LIMIT = 48
SMALL = ["--limit", str(LIMIT), "--batch-size", "2", "--dtype", "float64"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> pl.DataFrame:
    """The plain (no Ray) batched run the Ray runs must equal row for row."""
    return execute(RunConfig(limit=LIMIT, batch_size=2, dtype="float64"), out=tmp_path_factory.mktemp("plain") / "run").frame


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pl.DataFrame:
    """The sequential reference."""
    config = RunConfig(limit=LIMIT, dtype="float64", mode="sequential")
    return execute(config, out=tmp_path_factory.mktemp("seq") / "run").frame


@pytest.fixture
def pools(monkeypatch):
    """Every worker pool a run starts, so a test can reach its workers mid-run."""
    started = []
    original = workers.Pool.start.__func__

    def start(cls, *args, **kwargs):
        pool = original(cls, *args, **kwargs)
        started.append(pool)
        return pool

    monkeypatch.setattr(workers.Pool, "start", classmethod(start))
    return started


def _one_line(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and "error" in line]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_two_workers_equal_sequential_and_the_plain_run(tmp_path, ray_cluster, plain, reference):
    out = tmp_path / "run [ray]"
    result = cli.invoke(app, ["run", *SMALL, "--ray", "--workers", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    frame = read_parquet(out / "metrics.parquet")
    assert frame.equals(plain)  # the same batches on the workers: identical, row for row
    assert compare_frames(reference, frame, atol=1e-9).passed
    from saecli.io import RESIDUALS_FILE
    from saecli.residuals import read_residuals

    kept = read_residuals(out / RESIDUALS_FILE)  # the workers' residuals, merged by the driver in the table's order
    assert kept.sample_ids == frame["sample_id"].to_list() and all(m.nnz > 0 for m in kept.features.values())
    manifest = json.loads(result.stdout)
    record = manifest["cluster"]
    assert record["workers"] == 2 and record["gpus_per_worker"] == 1  # one per (logical) GPU
    assert sorted(g for w in record["per_worker"] for g in w["gpu_ids"]) == ["0", "1"]  # each its own GPU
    assert sum(w["samples"] for w in record["per_worker"]) == LIMIT and all(w["samples"] > 0 for w in record["per_worker"])
    assert record["ray_version"] and record["nodes"][0]["gpus"] == 2


def test_default_workers_one_per_gpu(ray_cluster):
    info = cluster.connect(cluster.RayOptions())
    assert cluster.plan(info, cluster.RayOptions()).workers == 2
    with pytest.raises(cluster.SaecliError, match="room for 2 worker"):
        cluster.plan(info, cluster.RayOptions(workers=3))


SLOW_LOAD = 120.0


@pytest.mark.parametrize("how", ["ray.kill-one-of-two-replacement-loads-slowly", "SIGKILL-the-only-one"])
def test_a_worker_killed_mid_run_loses_nothing(tmp_path, ray_cluster, plain, pools, monkeypatch, how):
    killed = []

    def progress(done=None, total=None, busy=None):
        if done and not killed:  # the first chunk is written: kill workers that have more to do
            if how.startswith("ray.kill"):
                monkeypatch.setenv("SAECLI_SLOW_LOAD", str(SLOW_LOAD))  # workers started from now on load slowly
                ray_cluster.kill(pools[0].actors[1])
            else:
                os.kill(ray_cluster.get(pools[0].actors[0].pid.remote()), signal.SIGKILL)
            killed.append(time.perf_counter())

    config = RunConfig(limit=LIMIT, batch_size=2, dtype="float64")
    workers = 2 if how.startswith("ray.kill") else 1
    result = execute(config, out=tmp_path / "run", ray=cluster.RayOptions(workers=workers), progress=progress)
    after_kill = time.perf_counter() - killed[0]
    assert result.frame.equals(plain)  # nothing lost, nothing twice, nothing changed
    record = result.manifest["cluster"]
    assert sum(w["samples"] for w in record["per_worker"]) == LIMIT
    if how.startswith("ray.kill"):
        # The survivor went on with the rest while the replacement loaded: the driver did not wait for it.
        assert record["replaced_workers"] == 1 and after_kill < SLOW_LOAD / 2, f"the run ended {after_kill:.1f} s after the kill"
    else:
        # Only the replacement was left: it joined once loaded and did the rest.
        assert record["replaced_workers"] == 1 and [w["samples"] > 0 for w in record["per_worker"]] == [True, True]


def test_the_test_cluster_tolerates_a_loaded_machine(ray_cluster):
    from ray._raylet import Config

    # The session's cluster was started with the tolerant health checks (the driver reads the cluster's settings).
    assert Config.health_check_timeout_ms() >= 60_000 and Config.health_check_failure_threshold() >= 20


def test_a_test_cluster_that_died_is_started_again(ray_session):
    ray = ray_session.ray
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process
    os.kill(raylet.pid, signal.SIGTERM)  # the node leaves the cluster at once, as one marked dead does
    deadline = time.monotonic() + 30
    while ray_session.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_session.alive()
    died = ray_session.revive()  # what the ray_cluster fixture does after (and before) each test
    assert died is not None and "died during this test" in died
    assert ray_session.alive() and ray.get(ray.remote(num_cpus=0)(lambda: 42).remote(), timeout=60) == 42


def test_out_of_memory_backs_off_inside_the_worker(tmp_path, ray_cluster, plain, oom_above):
    oom_above(1)
    result = execute(
        RunConfig(limit=LIMIT, batch_size=2, dtype="float64"), out=tmp_path / "run", ray=cluster.RayOptions(workers=1)
    )
    assert compare_frames(plain, result.frame, atol=1e-12).passed
    assert result.manifest["backoffs"] and all(b["new_size"] == 1 for b in result.manifest["backoffs"])


def test_the_driver_holds_one_window_of_samples_and_results(tmp_path, ray_cluster, plain, monkeypatch):
    import gc

    from saecli.data import Sample
    from saecli.engine import BatchResult

    window = 8
    alive = alive_at_each_part(monkeypatch, window, Sample, BatchResult)
    gc.collect()
    baseline = sum(type(o) is Sample for o in gc.get_objects())
    result = execute(
        RunConfig(limit=LIMIT, batch_size=2, dtype="float64"), out=tmp_path / "run", ray=cluster.RayOptions(workers=1)
    )
    assert compare_frames(plain, result.frame, atol=1e-12).passed and len(alive) == LIMIT // window  # a part per chunk
    # 48 samples through the Ray workers, the driver never holding more than one window's samples
    # (plus a batch's) or more than one window's results.
    assert max(n for n, _ in alive) - baseline <= window + 2, alive
    assert max(r for _, r in alive) <= window // 2 + 1, alive


def test_driver_killed_mid_run_then_resumed_with_ray(tmp_path, ray_cluster, plain):
    out = tmp_path / "run"
    killed = saecli_process(["run", *SMALL, "--ray", "--workers", "2", "--out", str(out)], {"SAECLI_CRASH_AT": "after_part#2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.parquet").exists() and len(list((out / "parts").glob("part-*.parquet"))) == 2
    result = cli.invoke(app, ["run", "--resume", str(out), "--ray"])
    assert result.exit_code == 0, result.output
    assert read_parquet(out / "metrics.parquet").equals(plain)


def test_driver_interrupted_then_resumed_without_ray(tmp_path, ray_cluster, plain, monkeypatch):
    def stop_after_first_part(name):
        if name == "after_part":
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "crash_point", stop_after_first_part)
    out = tmp_path / "run"
    assert cli.invoke(app, ["run", *SMALL, "--ray", "--workers", "1", "--out", str(out)]).exit_code == 130
    monkeypatch.undo()
    result = cli.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert read_parquet(out / "metrics.parquet").equals(plain)


def test_unreachable_or_too_small_cluster_is_one_line_and_writes_nothing(tmp_path, ray_cluster):
    out = tmp_path / "never"
    _one_line(cli.invoke(app, ["run", "--limit", "4", "--ray", "--workers", "5", "--out", str(out)]), 2, "room for 2 worker")
    assert not out.exists()
    _one_line(cli.invoke(app, ["run", "--limit", "4", "--workers", "2", "--out", str(out)]), 2, "need --ray")
    assert not out.exists()


def test_unreachable_address_is_one_line(tmp_path):
    # A fresh process: this one may already be connected to the session's cluster.
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, "-m", "saecli", "run", "--limit", "4", "--ray", "127.0.0.1:1", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in lines[0]
    assert not out.exists()


def test_a_node_without_the_presets_files_is_one_line_and_writes_nothing(tmp_path, ray_cluster, monkeypatch):
    folder = tmp_path / "preset"
    (folder / "saes").mkdir(parents=True)
    toml = (Path(run_module.__file__).parents[1] / "configs" / "tiny.toml").read_text()
    missing = folder / "model-only-on-the-driver"
    (folder / "p.toml").write_text(toml.replace("builtin:tiny/model", str(missing)))
    monkeypatch.setattr(run_module, "check_preset_files", lambda preset: None)  # the driver's machine "has" them
    out = tmp_path / "never"
    result = cli.invoke(app, ["run", "--config", str(folder / "p.toml"), "--limit", "4", "--ray", "--out", str(out)])
    _one_line(result, 2, "on Ray worker host", str(missing))
    assert not out.exists()


TWO_NODES = """
import json, sys, threading
from pathlib import Path
from ray.cluster_utils import Cluster
import ray
from saecli import cluster as saecli_cluster
from saecli.config import RunConfig
from saecli.io import read_parquet
from saecli.runner import execute

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
second = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
removed = []

def progress(done=None, total=None, busy=None):
    if done and not removed:  # a chunk is written: take the second node away
        cluster.remove_node(second)
        removed.append(done)

config = RunConfig(limit=LIMIT, batch_size=2, dtype="float64")
try:  # a failure must not leave this cluster behind for the next test's ray.init to join
    result = execute(config, out=Path(sys.argv[1]), ray=saecli_cluster.RayOptions(workers=2), progress=progress)
    print(json.dumps({"removed": removed, "cluster": result.manifest["cluster"]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_node_removed_mid_run_loses_nothing(tmp_path, plain):
    out = tmp_path / "run"
    script = textwrap.dedent(TWO_NODES).replace("LIMIT", str(LIMIT))
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["removed"] and len(summary["cluster"]["nodes"]) == 2
    assert read_parquet(out / "metrics.parquet").equals(plain)
