"""How saecli scales with the number of samples: the checks behind the "large runs" figures.

For each size N it makes a dataset of N pairs (the built-in benchmark repeated with new ids, so the
texts, and the work per sample, stay those of the benchmark), then measures, each command in its
own process:

* ``run``: wall seconds, samples/s and peak RSS;
* ``run --resume`` of the same run stopped halfway (``SAECLI_CRASH_AT``): seconds from the command
  to its first new part file (how soon a resumed run is analysing again);
* ``report``: wall seconds and peak RSS;
* the run folder's size.

Usage::

    .venv/bin/python scripts/scale.py --sizes 10000,100000 --out scale/   # README's figures
    .venv/bin/python scripts/scale.py --sizes 40 --batch-size 8           # a smoke test

Prints one table row per size and writes ``scale.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "saecli" / "assets" / "benchmark.json"
MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); code = subprocess.run(sys.argv[1:]).returncode; "
    "print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)"
)
"""A fresh parent per command, so that its children's peak RSS is that command's alone."""


def make_data(n: int, path: Path) -> Path:
    records = json.loads(BENCHMARK.read_text())
    with path.open("w") as handle:
        for i in range(n):
            record = records[i % len(records)]
            handle.write(json.dumps({**record, "id": f"{record['id']}-{i // len(records)}"}) + "\n")
    return path


def measured(args: list[str], env: dict[str, str] | None = None) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak RSS (bytes) of ``saecli args`` in its own process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "saecli", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    code, seconds, rss = done.stderr.strip().splitlines()[-1].split()
    if int(code) not in (0, -9):
        raise SystemExit(f"saecli {' '.join(args)} failed ({code}):\n{done.stderr[-3000:]}")
    return int(code), float(seconds), int(rss)


def resume_start(run_dir: Path) -> float:
    """Seconds from ``saecli run --resume`` to its first new part file (it then runs to the end)."""
    before = set((run_dir / "parts").glob("part-*.parquet"))
    started, first = time.perf_counter(), []

    def watch() -> None:
        while not first:
            if set((run_dir / "parts").glob("part-*.parquet")) - before or (run_dir / "metrics.parquet").exists():
                first.append(time.perf_counter() - started)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    measured(["run", "--resume", str(run_dir)])
    first.append(time.perf_counter() - started)  # ends the watcher if it saw nothing
    return first[0]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_size(n: int, batch_size: int, out: Path) -> dict[str, float | int]:
    data = make_data(n, out / f"data-{n}.jsonl")
    common = ["--data", str(data), "--batch-size", str(batch_size)]
    _, run_seconds, run_rss = measured(["run", *common, "--out", str(out / f"run-{n}")])
    manifest = json.loads((out / f"run-{n}" / "manifest.json").read_text())
    half = max(1, n // batch_size // 2)
    stopped = out / f"resumed-{n}"
    measured(["run", *common, "--out", str(stopped)], env={"SAECLI_CRASH_AT": f"batch_done#{half}"})
    resume_seconds = resume_start(stopped)
    _, report_seconds, report_rss = measured(["report", str(out / f"run-{n}")])
    return {
        "samples": n,
        "run_seconds": round(run_seconds, 1),
        "samples_per_second": manifest["timings"]["samples_per_second"],
        "run_peak_rss_gb": round(run_rss / 1e9, 2),
        "resume_to_first_part_seconds": round(resume_seconds, 1),
        "report_seconds": round(report_seconds, 1),
        "report_peak_rss_gb": round(report_rss / 1e9, 2),
        "run_folder_mb": round(folder_bytes(out / f"run-{n}") / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated sample counts (default 10000,100000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="where the data, runs and scale.json go (default: a temp folder)")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated whole numbers, got {args.sizes!r}")
    if any(n < 2 for n in sizes) or args.batch_size < 1:
        parser.error("--sizes: each size must be at least 2, and --batch-size at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="saecli-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    header = (
        "samples", "run_seconds", "samples_per_second", "run_peak_rss_gb", "resume_to_first_part_seconds",
        "report_seconds", "report_peak_rss_gb", "run_folder_mb",
    )  # fmt: skip
    print(" | ".join(header), flush=True)
    for n in sizes:
        row = one_size(n, args.batch_size, out)
        rows.append(row)
        print(" | ".join(str(row[k]) for k in header), flush=True)
    (out / "scale.json").write_text(json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'scale.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
