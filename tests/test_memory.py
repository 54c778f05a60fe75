"""``saecli.memory``: this process's memory, the margin and caps, the OOM test and the OOM message."""

from __future__ import annotations

import sys

import pytest
import torch

from saecli import memory
from saecli.memory import (
    CAP_ACCELERATOR,
    CAP_CPU,
    GiB,
    batch_cap,
    gib,
    is_out_of_memory,
    oom_message,
    peak_memory,
    preset_flag,
)


def test_oom_message_names_the_batch_and_the_next_command():
    err = oom_message(32, "gemma-2-2b", "cuda")
    assert err.message == "out of memory on cuda at batch size 32" and err.exit_code == 1
    assert "--batch-size 16" in err.hint and "--dtype bfloat16" in err.hint and "expandable_segments:True" in err.hint
    assert "saecli doctor --probe --preset gemma-2-2b --device cuda" in err.hint
    one = oom_message(1, "my/preset.toml", "cpu")
    assert "--batch-size 0" not in one.hint and "--batch-size auto" in one.hint and "--dtype" not in one.hint
    assert "saecli doctor --probe --config my/preset.toml --device cpu" in one.hint


def test_preset_flag_names_a_shipped_preset_by_name():
    from saecli.config import preset_dirs

    shipped = preset_dirs()[0] / "gpt2-small.toml"
    assert preset_flag("tiny") == " --preset tiny"
    assert preset_flag(str(shipped)) == " --preset gpt2-small"
    assert preset_flag("elsewhere/mine.toml") == " --config elsewhere/mine.toml"
    assert preset_flag("") == ""


@pytest.mark.parametrize(
    "exc, oom",
    [
        (MemoryError(), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
        (RuntimeError("MPS backend out of memory"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_is_out_of_memory(exc, oom):
    assert is_out_of_memory(exc) is oom


def test_caps_and_bytes_for_people():
    assert batch_cap("cpu") == CAP_CPU == 64 and batch_cap("cuda") == batch_cap("mps") == CAP_ACCELERATOR == 512
    assert memory.MEMORY_MARGIN == 0.8
    assert (gib(None), gib(11 * 2**20), gib(1.5 * GiB)) == ("?", "11 MiB", "1.5 GiB")


def test_this_process():
    assert memory.current_rss() > 0 and memory.peak_rss() >= memory.current_rss() // 2
    assert memory.allocated_bytes("cpu") > 0 and memory.device_peak("cpu") > 0
    assert set(peak_memory("cpu")) == {"rss_bytes"} and peak_memory("cpu")["rss_bytes"] > 0
    if sys.platform == "linux":
        assert memory.reset_peak_rss() and memory.available_memory("cpu") > 0
        assert set(memory.system_memory()) == {"MemTotal", "MemAvailable"}


def test_accelerator_branches_on_a_faked_cuda(monkeypatch):
    """No GPU here: the CUDA branches run against torch.cuda functions replaced by fakes."""
    calls = []
    fakes = {
        "max_memory_allocated": lambda: 3 * GiB,
        "max_memory_reserved": lambda: 4 * GiB,
        "memory_allocated": lambda: GiB,
        "mem_get_info": lambda: (5 * GiB, 8 * GiB),
        "empty_cache": lambda: calls.append("empty"),
        "reset_peak_memory_stats": lambda: calls.append("reset"),
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    peaks = peak_memory("cuda")
    assert set(peaks) == {"rss_bytes", "cuda_allocated_bytes", "cuda_reserved_bytes"}
    assert (peaks["cuda_allocated_bytes"], peaks["cuda_reserved_bytes"]) == (3 * GiB, 4 * GiB)
    assert memory.allocated_bytes("cuda") == GiB and memory.device_peak("cuda") == 3 * GiB
    assert memory.available_memory("cuda") == 5 * GiB
    memory.reset_device_peak("cuda")
    assert calls == ["empty", "reset"]
