"""Shared fixtures: a seeded random model + SAEs built in memory (no files, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_loaded

from saecli.data import load_samples

HB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hb"


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tiny matrices: threading only adds contention noise on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
    """Make the engine's batches larger than ``limit`` raise an out-of-memory error, as a GPU
    would, so that backoff and OOM reporting can be tested on a CPU."""
    from saecli.engine import Engine

    original = Engine.analyze_batch

    def install(limit: int) -> None:
        def patched(self, samples, toks):
            if len(samples) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return original(self, samples, toks)

        monkeypatch.setattr(Engine, "analyze_batch", patched)

    return install
