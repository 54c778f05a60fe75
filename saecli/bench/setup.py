"""What a benchmark checks before it measures anything: its options (one line each, before a
folder is made or a process started) and the folder it will save into (made and tried with a real
write first, so that a folder that refuses files costs no measurement)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saecli import rundir
from saecli.errors import SaecliError
from saecli.io import probe_write

MAX_REPEATS = 100
"""Timed passes per size at most: the median is stable long before, and each pass costs a full analysis."""
MAX_SIZES = 32
"""Batch sizes per sweep at most: each one is a fresh process that loads the model."""
MAX_WORKER_COUNTS = 16
DEFAULT_SIZES = (1, 4, 8, 16, 32)
DEFAULT_RAY_BATCH = 16
DEFAULT_RAY_WORKERS = (1, 2)
BENCH_ROOT = Path("bench")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(*, sizes: Sequence[int], repeats: int, limit: int | None = None) -> None:
    """Refuse, before any folder is made or worker started, a sweep that cannot run or would not end
    (the one place both the CLI and :func:`sweep` check these).

    A batch size has no upper bound of its own: the data caps it (a size above the number of samples
    measures one batch of all of them), and a size that does not fit is recorded as out of memory,
    which is what a sweep is for.
    """
    if not sizes or not all(_whole(size) and size >= 1 for size in sizes):
        raise SaecliError(f"--sizes must be positive whole numbers separated by commas, e.g. 1,8,32 (got {list(sizes)!r})")
    if len(sizes) > MAX_SIZES:
        raise SaecliError(
            f"--sizes takes at most {MAX_SIZES} batch sizes (got {len(sizes)})",
            hint="each size is a fresh process; split the sweep",
        )
    if not _whole(repeats) or not 1 <= repeats <= MAX_REPEATS:
        raise SaecliError(f"--repeats must be a whole number from 1 to {MAX_REPEATS} (got {repeats!r})")
    if limit is not None and (not _whole(limit) or limit < 1):
        raise SaecliError(f"--limit must be a whole number >= 1 (got {limit!r})")


def check_ray_options(*, workers: Sequence[int], sizes: Sequence[int], repeats: int, limit: int | None = None) -> None:
    """Refuse, before Ray starts or a folder is made, a ``bench --ray`` that cannot run."""
    if not workers or not all(_whole(k) and k >= 1 for k in workers):
        raise SaecliError(f"--workers must be positive whole numbers separated by commas, e.g. 1,2,4 (got {list(workers)!r})")
    if len(workers) > MAX_WORKER_COUNTS:
        raise SaecliError(f"--workers takes at most {MAX_WORKER_COUNTS} counts (got {len(workers)})")
    if len(sizes) != 1:
        raise SaecliError(f"with --ray, --sizes is one batch size (got {','.join(map(str, sizes))})",
                          hint="e.g. --sizes 16; sweep batch sizes without --ray")  # fmt: skip
    check_options(sizes=sizes, repeats=repeats, limit=limit)


@dataclass
class OutDir:
    """The folder a sweep saves into, made before the sweep starts."""

    path: Path
    created: list[Path] = field(default_factory=list)
    """Folders :func:`prepare_out_dir` made, outermost first: removed again by :meth:`discard`."""

    def discard(self) -> None:
        """For a sweep that ends without saving (an error, Ctrl-C): remove the folders made for it,
        if still empty (never anything written in them)."""
        rundir.remove_empty(self.created)


def prepare_out_dir(out: Path | None, preset: str, *, root: Path = BENCH_ROOT) -> OutDir:
    """Create the folder ``bench.json`` and ``bench.csv`` will go to and try it with a real write, so
    that a folder that cannot take them is refused before anything is measured, not after.

    ``out`` None is a new ``root/<UTC second>-<preset>`` (``-2``, ``-3``, ... appended when a sweep
    started in the same second has it). An explicit ``out`` may exist (its bench files are replaced).
    """
    if out is not None and out.exists() and not out.is_dir():
        raise SaecliError(f"bench output {out} exists and is not a folder", hint="choose another --out")
    first = Path(out) if out is not None else root
    target = OutDir(first, rundir.make_folders(first))
    try:
        if out is None:
            target.path = rundir.new_folder(root, f"{rundir.run_stamp()}-{re.sub(r'[^A-Za-z0-9._-]+', '-', preset)}")
            target.created.append(target.path)
        probe_write(target.path)
    except OSError as exc:
        target.discard()
        raise rundir.not_writable(target.path, target.path, exc) from None
    except BaseException:
        target.discard()
        raise
    return target
