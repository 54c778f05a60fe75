"""On a CUDA device (skipped without one): exactness, the baselines and the memory a batch takes."""

from __future__ import annotations

import pytest
import torch

import saecli
from saecli.engine import Engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def cuda64():
    return saecli.load_preset("tiny", device="cuda", dtype="float64")


def test_batched_equals_sequential_on_cuda_float64(cuda64):
    samples = saecli.load_samples(limit=24)
    batched = {r["sample_id"]: r for r in saecli.analyze(samples, cuda64, batch_size=16)}
    reference = {r["sample_id"]: r for r in saecli.analyze(samples, cuda64, sequential=True)}
    worst = max(abs(v - reference[s][c]) for s, row in batched.items() for c, v in row.items() if isinstance(v, float))
    assert worst <= 1e-6


def test_cuda_equals_cpu_float64():
    samples = saecli.load_samples(limit=8)
    cpu = {r["sample_id"]: r for r in saecli.analyze(samples, saecli.load_preset("tiny", device="cpu", dtype="float64"))}
    cuda = {r["sample_id"]: r for r in saecli.analyze(samples, saecli.load_preset("tiny", device="cuda", dtype="float64"))}
    for sid, row in cuda.items():
        for column, value in row.items():
            if isinstance(value, float):
                assert value == pytest.approx(cpu[sid][column], abs=1e-6), (sid, column)
            else:
                assert value == cpu[sid][column], (sid, column)


def test_a_batch_stays_on_the_device_and_frees_its_memory(cuda64):
    samples = saecli.load_samples(limit=32)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    batches = list(Engine(cuda64).run(samples, batch_size=32))
    torch.cuda.synchronize()
    assert len(batches) == 1 and batches[0].residuals is not None
    assert torch.cuda.memory_allocated() - before < 64 * 2**20  # nothing of the batch left on the device
