"""``doctor --ray`` and ``bench --ray``: the checks as pure functions (fast), then on a real local
Ray instance (the session's ``ray_cluster``, slow)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from processes import saecli_process
from typer.testing import CliRunner

import saecli
from saecli import cluster
from saecli.cli import app
from saecli.cluster import DOCTOR_CHECKS
from saecli.doctor.nodes import ClusterFacts, NodeFacts, check_cluster, gather_cluster
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
                         connect_hint=f"check that `ray start --head` runs there and its port is open; {DOCTOR_CHECKS}")  # fmt: skip
    (row,) = check_cluster(facts, saecli.__version__)
    assert (row.name, row.status) == ("ray", "fail")
    assert "10.0.0.9:6379" in row.detail and "ray start --head" in row.hint and "saecli doctor" not in row.hint


def test_doctor_shows_a_failed_join_with_its_whole_hint(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "_reachable", lambda *args: None)  # as if it listened, and answered:
    monkeypatch.setattr(cluster, "_authenticate", lambda *args: None, raising=False)

    def init(**kwargs):  # but Ray could not join it
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    monkeypatch.setattr(ray, "init", init)
    (row,) = check_cluster(gather_cluster("10.0.0.9:6379", None), saecli.__version__)
    assert row.status == "fail" and "10.0.0.9:6379" in row.detail
    assert "saecli doctor" not in row.hint and not re.search(r"\b(or|and|check|with)\W*$", row.hint), row.hint


def test_a_cluster_without_alive_nodes_is_one_line():
    info = cluster.ClusterInfo(ray_version="2.60.0", address="10.0.0.9:6379", started_here=False, nodes=[])
    for options in (cluster.RayOptions(), cluster.RayOptions(workers=2), cluster.RayOptions(worker_cpus=4)):
        with pytest.raises(SaecliError, match="10.0.0.9:6379 has no alive node") as caught:
            cluster.plan(info, options)
        assert "ray status" in caught.value.hint


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_init_calls(monkeypatch):
    """This process not yet in a Ray cluster, and ``ray.init`` recording its arguments instead of
    joining anything (the real one would wait on a bad address for minutes)."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls = []

    def init(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stopped here: ray.init was called")

    monkeypatch.setattr(ray, "init", init)
    return calls


@pytest.fixture
def stale_address(tmp_path, monkeypatch, ray_init_calls):
    """Ray's address file left by a `ray start --head` that was killed: nothing listens there now."""
    services = pytest.importorskip("ray._private.services")
    address = f"127.0.0.1:{_closed_port()}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])  # no other Ray instance on this machine
    return address, tmp_path / "ray" / "ray_current_cluster", ray_init_calls


def test_a_stale_address_file_is_one_line_naming_the_address_and_the_file(stale_address):
    address, file, calls = stale_address
    started = time.perf_counter()
    with pytest.raises(SaecliError) as caught:
        cluster.connect(cluster.RayOptions(address="auto"))
    assert time.perf_counter() - started < cluster.CONNECT_TIMEOUT + 1 and not calls  # refused before Ray waits on it
    port = address.rpartition(":")[2]  # Ray reads 127.0.0.1 there as this machine's address
    assert f":{port} (from {file}" in caught.value.message and "ray start" in caught.value.hint


def test_an_address_that_listens_but_never_answers_is_one_line_within_the_bound(ray_init_calls, monkeypatch):
    monkeypatch.setattr(cluster, "GCS_TIMEOUT", 1.0, raising=False)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(SaecliError, match=f"no Ray cluster answered at {address} within 1 s"):
            cluster.connect(cluster.RayOptions(address=address))
    assert time.perf_counter() - started < 5 and not ray_init_calls


def test_ray_alone_starts_a_local_instance_whatever_the_address_file_says(stale_address):
    _, _, calls = stale_address
    with pytest.raises(SaecliError) as caught:
        cluster.connect(cluster.RayOptions())
    assert calls and calls[0].get("address") == "local"  # never the stale address (Ray's default for no address)
    assert caught.value.message.startswith("cannot start a local Ray instance")


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


@pytest.fixture
def ray_head(tmp_path):
    """A cluster started the way a user starts one, `ray start --head`, which turns token
    authentication on when the machine has a token (here in its own ~/.ray/auth_token); its own temp
    folder, so that nothing of it meets another Ray on this machine. Yields (port, environment of
    a driver that has the token); stopped by its process group (`ray stop` would stop every Ray here)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(home), "RAY_TMPDIR": temp}
    port = _closed_port()
    log = tmp_path / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port), "--num-cpus", "1",
                                 "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield port, env
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _saecli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return saecli_process(args, env, whole_env=True, cwd=cwd, timeout=180)


@pytest.mark.slow
def test_joining_a_cluster_that_wants_a_token(ray_head, tmp_path):
    port, env = ray_head
    address, out = f"127.0.0.1:{port}", tmp_path / "never"
    (tmp_path / "empty").mkdir()
    # Without a token: one line that says what is missing, in seconds (Ray alone: "Failed to connect" after 24 s).
    started = time.perf_counter()
    proc = _saecli(
        "run", "--limit", "2", "--ray", address, "--out", str(out), env=env | {"HOME": str(tmp_path / "empty")}, cwd=tmp_path
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and time.perf_counter() - started < 20, proc.stderr
    assert f"the Ray cluster at {address} wants an authentication token" in lines[0] and "~/.ray/auth_token" in lines[0]
    # A wrong one: refused, naming where it came from.
    proc = _saecli(
        "run", "--limit", "2", "--ray", address, "--out", str(out), env=env | {"RAY_AUTH_TOKEN": "not-the-token"}, cwd=tmp_path
    )
    assert proc.returncode == 2 and "refused the authentication token from RAY_AUTH_TOKEN" in proc.stderr, proc.stderr
    assert not out.exists()
    # With the cluster's token in ~/.ray/auth_token, as Ray documents: joined, and the node checked.
    proc = _saecli("doctor", "--ray", address, "--json", env=env, cwd=tmp_path)
    report = json.loads(proc.stdout)
    row = {c["name"]: c for c in report["checks"]}["ray"]
    assert row["status"] == "ok" and f"joined {address}" in row["detail"], row
    (node,) = report["cluster"]["nodes"]
    assert node["saecli_version"] == saecli.__version__ and node["preset_status"] == "ok"
