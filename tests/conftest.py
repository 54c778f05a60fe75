"""Shared fixtures: a seeded random model + SAEs built in memory (no files, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import random_loaded

from saecli.data import load_samples

HB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hb"


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tiny matrices: threading only adds contention noise on a 2-core machine.
    # OMP_NUM_THREADS also tells runs (and the subprocesses tests start) to take one thread, instead
    # of measuring the idle cores of a machine the test suite itself keeps busy.
    previous, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(previous)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session")
def loaded64():
    return random_loaded(dtype="float64", seed=0)


@pytest.fixture(scope="session")
def samples():
    return load_samples(limit=24)


@pytest.fixture(scope="session")
def hb_dir() -> Path:
    if not HB_DIR.is_dir():
        pytest.skip(f"shared benchmark not found at {HB_DIR}")
    return HB_DIR


@pytest.fixture
def oom_above(monkeypatch):
    """Make the engine's batches larger than ``limit`` fail as out of memory, as a GPU would, so that
    backoff and OOM reporting can be tested on a CPU (``saecli.faults.oom_point``; Ray workers see
    it too)."""

    def install(limit: int) -> None:
        monkeypatch.setenv("SAECLI_OOM_ABOVE", str(limit))

    return install


RAY_TEST_CONFIG = {"health_check_period_ms": 10_000, "health_check_timeout_ms": 60_000, "health_check_failure_threshold": 20}
"""Ray marks a node dead after ``failure_threshold`` health checks in a row fail, each given
``timeout_ms``: by default 5 of 10 s, which a busy 2-core machine running the suite beside other
work was seen to miss. These give its raylet 20 minutes before the test cluster is lost."""


class RayTestCluster:
    """The session's local Ray instance: 2 CPUs, 2 logical GPUs (per-GPU placement on a CPU machine:
    a worker's device still resolves to the CPU), a small object store, no dashboard."""

    def __init__(self, ray):
        self.ray = ray
        self.started = False

    def start(self) -> None:
        if not self.ray.is_initialized():
            self.ray.init(address="local", num_cpus=2, num_gpus=2, object_store_memory=80 * 2**20, include_dashboard=False,
                          log_to_driver=False, configure_logging=False, _system_config=RAY_TEST_CONFIG)  # fmt: skip
            self.started = True

    def alive(self) -> bool:
        try:
            return self.ray.is_initialized() and any(node.get("Alive") for node in self.ray.nodes())
        except Exception:  # noqa: BLE001 - a cluster that cannot even list its nodes is not alive
            return False

    def revive(self) -> str | None:
        """None when the cluster is alive; else start a fresh one and say what happened."""
        if self.alive():
            return None
        self.ray.shutdown()
        self.start()
        return (
            "the session's Ray test cluster died during this test (its node was marked dead); a fresh one serves the next tests"
        )


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    cluster = RayTestCluster(ray)
    cluster.start()
    yield cluster
    if cluster.started:
        ray.shutdown()


@pytest.fixture
def ray_cluster(ray_session):
    """The session's Ray instance, alive: a cluster that died fails the test it died in, not every
    test after it."""
    ray_session.revive()
    yield ray_session.ray
    died = ray_session.revive()
    if died is not None:
        pytest.fail(died, pytrace=False)


def pytest_collection_modifyitems(config, items):
    # The session's Ray instance keeps a few processes busy while it lives: start it as late as
    # possible, so the tests that do not need it do not share the two cores with it.
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))
