"""``saecli doctor``: find what would make a run fail or crawl before it starts, and explain an
out-of-memory error after one.

The usual failures of an SAE run are an out-of-memory error on the accelerator, a run that silently
fell back to the CPU, a model that is not in the Hugging Face cache on an offline machine, and
library versions that do not fit together (TransformerLens 4 removed what SAELens needs). Each is
cheap to detect without loading a model, so ``doctor`` gathers the facts once and turns them into
checks with a status (ok, warn, fail), a detail and a hint that says what to type.

The modules, in the order the data flows, so that every check can be tested with a faked machine:

* :mod:`~saecli.doctor.facts`: :func:`gather_environment` reads the machine (versions, CUDA, MPS,
  CPU, memory) into an :class:`Environment`.
* :mod:`~saecli.doctor.preset`: :func:`gather_preset` reads a preset's files, cache entries, shapes
  (:mod:`~saecli.doctor.shapes`) and the data's longest text into a :class:`PresetFacts`. Only
  these two gatherers touch the system.
* :mod:`~saecli.doctor.checks`: the ``check_*`` functions, pure functions of those dataclasses.
* :mod:`~saecli.doctor.estimate`: the memory estimate, its check and the out-of-memory hints.
* :mod:`~saecli.doctor.probe`: the optional real measurement (``--probe``), the code path of
  ``run --batch-size auto``.
* :mod:`~saecli.doctor.diagnosis`: :func:`diagnose` composes them into a :class:`Report`.

What ``doctor`` shares with runs lives outside it: the device rule and dtype vocabulary in
:mod:`saecli.device`, memory measurement, the margin, the caps and the OOM message in
:mod:`saecli.memory`, cache and hub lookups and package versions in :mod:`saecli.hub`.

Heavy imports stay lazy: ``torch`` is imported inside :func:`gather_environment` (a broken install
becomes a failed check), versions come from package metadata, and neither TransformerLens nor
SAELens is imported for the checks (the SAELens release directory is read from its YAML file).
This package re-exports what the CLI and the tests use.
"""

from __future__ import annotations

from saecli.doctor.checks import (
    Check,
    Status,
    check_cpu,
    check_cuda,
    check_device,
    check_hub,
    check_mps,
    check_platform,
    check_preset,
    check_torch,
    check_versions,
    device_choice,
    version_problems,
)
from saecli.doctor.diagnosis import Report, diagnose
from saecli.doctor.estimate import MemoryEstimate, activation_bytes, check_memory, estimate_memory, oom_hints
from saecli.doctor.facts import GPU, Environment, gather_environment
from saecli.doctor.preset import Artifact, PresetFacts, gather_preset
from saecli.doctor.probe import ProbeResult, check_probe, run_probe
from saecli.doctor.shapes import KNOWN_SHAPES, ModelShape, SAEShape

__all__ = [
    "GPU",
    "KNOWN_SHAPES",
    "Artifact",
    "Check",
    "Environment",
    "MemoryEstimate",
    "ModelShape",
    "PresetFacts",
    "ProbeResult",
    "Report",
    "SAEShape",
    "Status",
    "activation_bytes",
    "check_cpu",
    "check_device",
    "check_hub",
    "check_memory",
    "check_mps",
    "check_cuda",
    "check_platform",
    "check_preset",
    "check_probe",
    "check_torch",
    "check_versions",
    "device_choice",
    "diagnose",
    "estimate_memory",
    "gather_environment",
    "gather_preset",
    "oom_hints",
    "run_probe",
    "version_problems",
]
