"""``saecli.device``: the one device rule and dtype vocabulary that the loader, ``doctor``, the CLI
and the preset files share."""

from __future__ import annotations

import os

import pytest
import torch

from saecli import config, validation
from saecli.cli.options import Device, DType
from saecli.device import (
    DEVICES,
    DTYPE_BYTES,
    DTYPES,
    DeviceFacts,
    dtype_problem,
    live_facts,
    resolve_device,
    sae_dtype_for,
    torch_dtype,
)
from saecli.errors import SaecliError


@pytest.mark.parametrize(
    "facts, picked, why",
    [
        (DeviceFacts(cuda=True, mps=True, gpu_name="Fake GPU"), "cuda", "auto: CUDA is available (Fake GPU)"),
        (DeviceFacts(cuda=False, mps=True), "mps", "auto: no CUDA; Apple MPS is available"),
        (DeviceFacts(cuda=False, mps=False), "cpu", "auto: neither CUDA nor MPS is available"),
    ],
)
def test_auto_prefers_cuda_then_mps_then_cpu(facts, picked, why):
    assert resolve_device("auto", facts) == (picked, why)


def test_a_device_asked_for_is_used_when_there_and_refused_when_not():
    none = DeviceFacts(cuda=False, mps=False)
    assert resolve_device("cpu", none) == ("cpu", "cpu: asked for")
    assert resolve_device("cuda", DeviceFacts(cuda=True, mps=False)) == ("cuda", "cuda: asked for")
    with pytest.raises(SaecliError, match="--device cuda was asked for but CUDA is not available") as info:
        resolve_device("cuda", none)
    assert "saecli doctor" in info.value.hint
    with pytest.raises(SaecliError, match="--device mps was asked for but MPS is not available"):
        resolve_device("mps", none)


def test_live_facts_are_torch_s():
    facts = live_facts()
    assert facts.cuda == torch.cuda.is_available()
    assert resolve_device("cpu", facts)[0] == "cpu"


def test_dtype_vocabulary():
    assert [torch_dtype(name).itemsize for name in DTYPES] == [DTYPE_BYTES[name] for name in DTYPES]
    assert {name: sae_dtype_for(name) for name in DTYPES} == {
        "float32": "float32",
        "float64": "float64",
        "bfloat16": "float32",
        "float16": "float32",
    }


def test_one_vocabulary_for_cli_presets_and_api():
    assert (validation.DEVICES, validation.DTYPES, config.DTYPES) == (DEVICES, DTYPES, DTYPES)
    assert [d.value for d in Device] == list(DEVICES) and [d.value for d in DType] == list(DTYPES)


def test_dtypes_a_device_cannot_run():
    assert dtype_problem("mps", "float64") == ("MPS does not support float64", "use --dtype float32 or --device cpu")
    assert all(dtype_problem(d, t) is None for d in ("cpu", "cuda") for t in DTYPES)


def test_live_facts_name_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Fake H200")
    facts = live_facts()
    assert facts.cuda and resolve_device("auto", facts) == ("cuda", "auto: CUDA is available (Fake H200)")


def test_threads_follow_the_idle_cores(monkeypatch):
    from saecli import device

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    for idle, expected in ((4.0, 4), (2.6, 3), (1.2, 1), (0.0, 1), (7.0, 4)):
        monkeypatch.setattr(device, "idle_cores", lambda idle=idle: idle)
        threads, reason = device.choose_threads()
        assert threads == expected and "idle" in reason
    assert device.choose_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.choose_threads() == (2, "OMP_NUM_THREADS=2")


def test_idle_cores_sees_a_busy_core():
    import multiprocessing

    from saecli import device

    if device.idle_cores(0.05) is None:
        pytest.skip("no /proc/stat here")
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        busy = device.idle_cores(0.5)
    finally:
        stop.set()
        spinner.join()
    assert busy is not None and busy <= (os.cpu_count() or 1) - 0.5


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def test_a_run_takes_fewer_threads_while_others_use_the_cores_and_more_when_they_stop(monkeypatch):
    """Between windows the threads follow the CPU other processes used: the machine's busy time
    less this process's own (fake /proc/stat and process clock: 2 cores, 100 ticks a second)."""
    import torch

    from saecli import device

    clock = {"busy": 0.0, "total": 0.0, "own": 0.0}
    monkeypatch.setattr(device, "_cpu_times", lambda: (clock["busy"], clock["total"]))
    monkeypatch.setattr(device.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(device, "usable_cores", lambda: 2)
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)

    def ten_seconds(own, others):
        clock["total"] += 2 * 10 * 100
        clock["busy"] += (own + others) * 10 * 100
        clock["own"] += own * 10

    share = device.ThreadShare(2)
    ten_seconds(own=2.0, others=0.0)
    assert share.update(100) == 2 and set_to == []  # alone: both cores
    ten_seconds(own=1.0, others=1.0)  # a process started beside the run
    assert share.update(200) == 1 and set_to == [1]
    ten_seconds(own=1.0, others=0.9)
    assert share.update(300) == 1 and set_to == [1]
    ten_seconds(own=1.0, others=0.1)  # it ended
    assert share.update(400) == 2 and set_to == [1, 2]
    assert share.count == 2 and [c["after_samples"] for c in share.changes] == [200, 400]
