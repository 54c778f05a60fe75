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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session: 2 CPUs, 2 logical GPUs (per-GPU placement on a
    CPU machine: a worker's device still resolves to the CPU), a small object store, no dashboard."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, num_gpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    yield ray
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    # The session's Ray instance keeps a few processes busy while it lives: start it as late as
    # possible, so the tests that do not need it do not share the two cores with it.
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))
