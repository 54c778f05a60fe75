"""``doctor --probe``: load the preset for real and find the largest batch that fits by trying it,
with the code of ``run --batch-size auto`` (:func:`saecli.autobatch.find_batch_size`).

Belongs here: running the probe and turning its outcome into a :class:`ProbeResult` and a check.
Does not belong here: the probing itself (:mod:`saecli.autobatch`), the prediction without loading
(:mod:`estimate`). The engine is imported inside :func:`run_probe`, so that a broken install is a
failed probe, not a crash of ``doctor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saecli.config import RunConfig
from saecli.doctor.checks import Check
from saecli.doctor.facts import first_line
from saecli.errors import SaecliError
from saecli.memory import allocated_bytes, gib, is_out_of_memory


@dataclass
class ProbeResult:
    """``--probe``: the preset loaded for real and batch sizes tried on the data's longest texts."""

    ok: bool
    device: str | None = None
    dtype: str | None = None
    size: int | None = None
    reason: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)
    """Each size tried: ``size``, ``peak_bytes`` (process RSS on a CPU, allocated on CUDA), ``outcome``."""
    loaded_bytes: int | None = None
    """Memory after loading, before any batch: the baseline the peaks grow from."""
    load_seconds: float | None = None
    error: str | None = None
    hint: str | None = None


def run_probe(config: RunConfig) -> ProbeResult:
    """Load the preset and find the largest batch that fits by trying it: ``find_batch_size``, the
    code of ``run --batch-size auto``. Failures (not cached, nothing fits) become the result."""
    try:
        from saecli.autobatch import find_batch_size
        from saecli.data import run_samples
        from saecli.models import load_preset
    except Exception as exc:  # noqa: BLE001 - a broken install shows as a failed probe
        return ProbeResult(ok=False, error=f"cannot import the engine: {first_line(exc)}", hint="see the torch and versions rows")
    from saecli.device import set_torch_threads

    samples = run_samples(config)
    try:
        loaded = load_preset(config.preset, device=config.device, dtype=config.dtype, layers=config.layers)
    except SaecliError as exc:
        return ProbeResult(ok=False, error=exc.message, hint=exc.hint)
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc):
            return ProbeResult(
                ok=False,
                error=f"loading ran out of memory: {first_line(exc)}",
                hint="the weights do not fit: --dtype bfloat16 (CUDA), or --device cpu",
            )
        raise
    result = ProbeResult(ok=False, device=loaded.device, dtype=loaded.dtype, load_seconds=round(loaded.load_seconds, 2))
    if loaded.device == "cpu":
        set_torch_threads(config.threads)
    if loaded.device in ("cuda", "cpu"):
        result.loaded_bytes = allocated_bytes(loaded.device)
    try:
        auto = find_batch_size(loaded, samples, config)
    except SaecliError as exc:
        result.error, result.hint = exc.message, exc.hint
        return result
    result.ok, result.size, result.reason, result.probes = True, auto.size, auto.reason, auto.probes
    return result


def check_probe(probe: ProbeResult, default_batch: int) -> Check:
    if not probe.ok:
        return Check("probe", "fail", probe.error or "failed", probe.hint)
    tried = ", ".join(
        f"{p['size']}: {gib(p['peak_bytes'])}" if "peak_bytes" in p else f"{p['size']}: {p['outcome']}" for p in probe.probes
    )
    detail = f"loaded on {probe.device} ({probe.dtype}) in {probe.load_seconds}s; largest batch that fit: {probe.size} (peaks {tried}); {probe.reason}"
    if probe.size is not None and probe.size < default_batch:
        return Check(
            "probe",
            "warn",
            detail + f"; below the run's batch size {default_batch}",
            f"pass --batch-size {probe.size}, or --batch-size auto",
        )
    return Check("probe", "ok", detail)
