"""What a benchmark records: one result per batch size (:class:`SizeResult`) or worker count
(:class:`WorkersResult`), the sweep around them (:class:`Sweep`, :class:`RaySweep`, each with the
resolved run configuration it measured), the recommendation, and ``bench.json`` / ``bench.csv``.
Pure data and files: nothing here loads a model or starts a process."""

from __future__ import annotations

import csv
import errno
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saecli.errors import SaecliError
from saecli.io import atomic_write
from saecli.memory import MEMORY_MARGIN

SEQUENTIAL = "sequential"
JSON_FILE, CSV_FILE = "bench.json", "bench.csv"
BASELINE_MODES = ("both", "on", "off")
"""bench --baselines: time the analysis with baselines (as ``run``), without, or both."""


@dataclass
class SizeResult:
    """One point of the sweep (all times in seconds, memory in bytes)."""

    size: int | str
    ok: bool
    oom: bool = False
    error: str | None = None
    samples: int = 0
    tokens: int = 0
    seconds_median: float | None = None
    seconds_min: float | None = None
    seconds_max: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    speedup_vs_batch1: float | None = None
    speedup_vs_sequential: float | None = None
    load_seconds: float | None = None
    model_memory: int | None = None
    """Resident (CPU) or allocated (GPU) memory after loading, before any analysis."""
    peak_memory: int | None = None
    peak_increase: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, per pass (median over repeats)."""
    forwarded_tokens: int = 0
    """Positions forwarded per pass, padding included (``tokens`` counts each text's real tokens)."""
    padding_fraction: float | None = None
    """The share of the forwarded positions that were padding."""
    forward_gflops: float | None = None
    """Achieved GFLOP/s of the forward pass: :func:`saecli.flops.forward_flops` ÷ the seconds of the
    ``forward`` stage and of the ``baselines`` stage (the unembedding at the scored positions)."""
    sae_gflops: float | None = None
    """Achieved GFLOP/s of SAE encode/decode: :func:`saecli.flops.sae_flops` ÷ the ``sae`` stage's seconds."""
    peak_gflops: float | None = None
    """Best GFLOP/s of a square ``torch.mm`` on the same device in the model's dtype (:func:`saecli.flops.measure_peak`)."""
    sae_peak_gflops: float | None = None
    """The same in the SAEs' dtype (float32 when the model runs in 16 bits; else equal to ``peak_gflops``)."""
    forward_utilization: float | None = None
    """forward_gflops ÷ peak_gflops."""
    sae_utilization: float | None = None
    """sae_gflops ÷ sae_peak_gflops."""
    memory_detail: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, Any] | None = None
    """The torch CPU threads of this size's process, and why (``--threads``, or the idle cores); None off the CPU."""
    baselines: bool = True
    """Whether the timed passes scored log-probabilities and kept residuals (as ``run`` does by default)."""
    samples_per_second_no_baselines: float | None = None
    """With ``--baselines both``: the same passes with baselines off (``run --no-baselines``), timed after."""


@dataclass
class Sweep:
    """A finished sweep: every size, the recommendation and where it was saved."""

    preset: str
    device: str
    dtype: str
    samples: int
    repeats: int
    available_memory: int | None
    results: list[SizeResult]
    recommended: int | None
    reason: str
    synthetic: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    """Python and the packages a run depends on (``saecli.hub.package_versions``), as a run manifest records them."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved run configuration measured (a run manifest's ``config``; ``batch_size`` aside, each size's own)."""
    out_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkersResult:
    """One worker count of a ``bench --ray`` sweep (times in seconds, memory in bytes); each pass is
    a whole run (:func:`saecli.runner.execute`) on that many Ray workers, the preset loaded afresh."""

    workers: int
    ok: bool
    error: str | None = None
    device: str | None = None
    samples: int = 0
    tokens: int = 0
    seconds_median: float | None = None
    """The analysis (the manifest's ``analysis_seconds``), without starting workers and loading."""
    seconds_min: float | None = None
    seconds_max: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    speedup_vs_1_worker: float | None = None
    efficiency: float | None = None
    """samples/s at this count / (count × samples/s on one worker): 1.0 is perfect scaling."""
    per_worker_samples_per_second: list[float | None] = field(default_factory=list)
    """Each worker's samples per busy second (median over the passes), from the manifest's ``cluster``."""
    load_seconds: float | None = None
    """Starting the workers and loading the preset on each (median), not part of ``seconds``."""
    peak_memory_per_worker: int | None = None
    """The largest worker's peak: resident memory on a CPU, allocated memory on a GPU."""
    peak_memory_driver: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, summed over the workers, per pass (median over repeats)."""
    baselines: bool = True
    """Whether the timed runs scored log-probabilities and kept residuals (as ``run`` does by default)."""
    samples_per_second_no_baselines: float | None = None
    """With ``--baselines both``: the same runs with baselines off, timed after."""


@dataclass
class RaySweep:
    """A finished ``bench --ray`` sweep and where it was saved."""

    preset: str
    device: str
    dtype: str
    batch_size: int
    samples: int
    repeats: int
    worker_cpus: int
    address: str
    ray_version: str
    nodes: list[dict[str, Any]]
    results: list[WorkersResult]
    synthetic: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved run configuration of every run of the sweep (a run manifest's ``config``)."""
    out_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "ray", **asdict(self)}


RAY_CSV_FIELDS = ["workers", "ok", "device", "samples", "seconds_median", "seconds_min", "seconds_max", "samples_per_second",
                  "samples_per_second_no_baselines", "tokens_per_second", "speedup_vs_1_worker", "efficiency",
                  "per_worker_samples_per_second", "load_seconds", "peak_memory_per_worker", "peak_memory_driver", "error"]  # fmt: skip


def recommend(results: list[SizeResult], available: int | None) -> tuple[int | None, str]:
    """The fastest size whose peak memory stays under the margin of available memory."""
    batched = [r for r in results if r.ok and r.size != SEQUENTIAL]
    if not batched:
        return None, "no batch size completed"
    limit = available * MEMORY_MARGIN if available else None
    fitting = [r for r in batched if limit is None or r.peak_memory is None or r.peak_memory <= limit]
    if not fitting:
        return None, f"every size's peak memory exceeds {MEMORY_MARGIN:.0%} of the available memory"
    best = max(fitting, key=lambda r: r.samples_per_second or 0.0)
    why = f"fastest measured ({best.samples_per_second:.1f} samples/s)"
    if limit is not None and best.peak_memory is not None:
        why += f", peak memory {best.peak_memory / 2**30:.2f} GiB under {MEMORY_MARGIN:.0%} of the {available / 2**30:.1f} GiB available"
    skipped = [str(r.size) for r in batched if r not in fitting]
    if skipped:
        why += f"; not considered (over the memory margin): {', '.join(skipped)}"
    return int(best.size), why


CSV_FIELDS = [
    "size",
    "ok",
    "oom",
    "samples",
    "seconds_median",
    "seconds_min",
    "seconds_max",
    "samples_per_second",
    "samples_per_second_no_baselines",
    "tokens_per_second",
    "speedup_vs_batch1",
    "speedup_vs_sequential",
    "model_memory",
    "peak_memory",
    "peak_increase",
    "forwarded_tokens",
    "padding_fraction",
    "forward_gflops",
    "sae_gflops",
    "peak_gflops",
    "sae_peak_gflops",
    "forward_utilization",
    "sae_utilization",
    "error",
]


def save(result: Sweep | RaySweep, out_dir: Path) -> None:
    """``bench.json`` (everything) and ``bench.csv`` (one row per size, stages as columns), each
    written atomically (whole or absent). A folder that fails (a full disk, a mount gone read-only) is
    a one-line error (exit code 1) naming the file and the fix; the caller still holds ``result``."""
    result.out_dir = str(out_dir)
    stages = sorted({k for r in result.results for k in r.stages})

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            fields = RAY_CSV_FIELDS if isinstance(result, RaySweep) else CSV_FIELDS
            writer.writerow(fields + [f"stage_{s}_seconds" for s in stages])
            for r in result.results:
                row = asdict(r)
                writer.writerow([_cell(row[f]) for f in fields] + [r.stages.get(s) for s in stages])

    for path, write in (
        (out_dir / JSON_FILE, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")),
        (out_dir / CSV_FILE, write_csv),
    ):
        try:
            atomic_write(path, write)
        except OSError as exc:
            hint = "free some space, or choose another --out" if exc.errno == errno.ENOSPC else "choose another --out"
            raise SaecliError(f"cannot save {path}: {exc.strerror or exc}", hint=hint, exit_code=1) from None


def _cell(value: Any) -> Any:
    return " ".join("" if v is None else str(v) for v in value) if isinstance(value, list) else value
