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
    .venv/bin/python scripts/scale.py --sizes 1000000 --steps run,report  # the million-sample run
    .venv/bin/python scripts/scale.py --sizes 40 --batch-size 8           # a smoke test

``--steps`` leaves out what is not wanted (a million samples take over half an hour per run).
While ``run`` goes, the parts folder is watched: its largest number of files is reported.

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


class Watch:
    """The largest number of entries of ``folder`` seen while a command runs (polled)."""

    def __init__(self, folder: Path):
        self.folder, self.most, self.done = folder, 0, False
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.done:
            try:
                self.most = max(self.most, sum(1 for _ in self.folder.iterdir()))
            except OSError:
                pass
            time.sleep(0.05)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done = True
        self.thread.join()


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


def one_size(n: int, batch_size: int, out: Path, steps: set[str]) -> dict[str, float | int | None]:
    data = make_data(n, out / f"data-{n}.jsonl")
    common = ["--data", str(data), "--batch-size", str(batch_size)]
    row: dict[str, float | int | None] = dict.fromkeys(HEADER)
    row["samples"] = n
    run_dir = out / f"run-{n}"
    if "run" in steps:
        with Watch(run_dir / "parts") as watch:
            _, run_seconds, run_rss = measured(["run", *common, "--out", str(run_dir)])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        row.update(run_seconds=round(run_seconds, 1), samples_per_second=manifest["timings"]["samples_per_second"],
                   run_peak_rss_gb=round(run_rss / 1e9, 2), most_part_files=watch.most,
                   run_folder_mb=round(folder_bytes(run_dir) / 1e6, 1))  # fmt: skip
    if "resume" in steps:
        half = max(1, n // batch_size // 2)
        stopped = out / f"resumed-{n}"
        measured(["run", *common, "--out", str(stopped)], env={"SAECLI_CRASH_AT": f"batch_done#{half}"})
        row["resume_to_first_part_seconds"] = round(resume_start(stopped), 1)
    if "report" in steps:
        _, report_seconds, report_rss = measured(["report", str(run_dir)])
        row.update(report_seconds=round(report_seconds, 1), report_peak_rss_gb=round(report_rss / 1e9, 2))
    return row


HEADER = (
    "samples", "run_seconds", "samples_per_second", "run_peak_rss_gb", "most_part_files", "resume_to_first_part_seconds",
    "report_seconds", "report_peak_rss_gb", "run_folder_mb",
)  # fmt: skip
STEPS = {"run", "resume", "report"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated sample counts (default 10000,100000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="where the data, runs and scale.json go (default: a temp folder)")
    parser.add_argument("--steps", default="run,resume,report", help="which of run,resume,report to measure (report needs run)")
    args = parser.parse_args()
    steps = {s.strip() for s in args.steps.split(",")}
    if not steps or steps - STEPS or ("report" in steps and "run" not in steps):
        parser.error(f"--steps: a comma-separated subset of run,resume,report (report needs run), got {args.steps!r}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated whole numbers, got {args.sizes!r}")
    if any(n < 2 for n in sizes) or args.batch_size < 1:
        parser.error("--sizes: each size must be at least 2, and --batch-size at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="saecli-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(" | ".join(HEADER), flush=True)
    for n in sizes:
        row = one_size(n, args.batch_size, out, steps)
        rows.append(row)
        print(" | ".join("-" if row[k] is None else str(row[k]) for k in HEADER), flush=True)
    (out / "scale.json").write_text(
        json.dumps({"batch_size": args.batch_size, "steps": sorted(steps), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {out / 'scale.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
