"""Benchmarks: which batch size (``bench``) or how many Ray workers (``bench --ray``) is fastest
here without running out of memory, for the run a :class:`saecli.config.RunConfig` describes.

``setup`` checks the options and makes the output folder before anything is measured; ``measure``
times one batch size in a process of its own; ``sweep`` runs those processes and recommends a size;
``ray`` times whole runs on 1, 2, ... workers; ``results`` holds what is recorded and saves
``bench.json`` / ``bench.csv``.
"""

from __future__ import annotations

from saecli.bench.results import (
    BASELINE_MODES,
    CSV_FILE,
    JSON_FILE,
    SEQUENTIAL,
    RaySweep,
    SizeResult,
    Sweep,
    WorkersResult,
    recommend,
    save,
)
from saecli.bench.setup import (
    DEFAULT_RAY_BATCH,
    DEFAULT_RAY_WORKERS,
    DEFAULT_SIZES,
    MAX_REPEATS,
    check_options,
    check_ray_options,
    prepare_out_dir,
)

__all__ = [
    "BASELINE_MODES", "CSV_FILE", "DEFAULT_RAY_BATCH", "DEFAULT_RAY_WORKERS", "DEFAULT_SIZES", "JSON_FILE", "MAX_REPEATS",
    "SEQUENTIAL", "RaySweep", "SizeResult", "Sweep", "WorkersResult", "check_options", "check_ray_options", "prepare_out_dir",
    "recommend", "save",
]  # fmt: skip
