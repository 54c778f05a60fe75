"""Shared fixtures: a seeded random model + SAEs built in memory (no files, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saecli.data import load_samples
from saecli.synthetic import random_loaded

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
