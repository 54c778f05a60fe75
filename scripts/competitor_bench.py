"""saecli beside other work: throughput idle and with a competitor on the machine, side by side.

For each competitor (none; a busy loop on one core; a second PyTorch process doing matrix products)
(each on one core) it runs ``saecli run`` with the default thread choice and with ``--threads N`` forced to every core
(what saecli did before it chose its threads), and prints samples/s from the manifests.

    python scripts/competitor_bench.py --limit 200 --batch-size 16
    python scripts/competitor_bench.py --preset gpt2-small-shape --limit 64
    python scripts/competitor_bench.py --competitors idle,torch --repeats 1   # a subset
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _busy_loop(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        pass


def _torch_loop(stop: multiprocessing.synchronize.Event) -> None:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a = (a @ a).clamp_(-1, 1)


COMPETITORS = {"idle": None, "busy loop (1 core)": _busy_loop, "PyTorch matmuls (1 core)": _torch_loop}
KEYS = {"idle": "idle", "busy": "busy loop (1 core)", "torch": "PyTorch matmuls (1 core)"}
"""The names ``--competitors`` takes, for the entries of COMPETITORS."""


def run(args: argparse.Namespace, threads: int | None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "saecli", "run", "--preset", args.preset, "--limit", str(args.limit), "--batch-size",
               str(args.batch_size), "--out", str(Path(tmp) / "run"), "--json"]  # fmt: skip
        if threads is not None:
            cmd += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        manifest = json.loads(out.stdout)
        return manifest["timings"]["samples_per_second"], manifest.get("threads", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--competitors", default=",".join(KEYS), help=f"comma-separated subset of {','.join(KEYS)}")
    args = parser.parse_args()
    chosen = [k.strip() for k in args.competitors.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in KEYS]
    if unknown or not chosen:
        parser.error(f"--competitors: unknown {unknown or 'empty'}; choose from {','.join(KEYS)}")
    cores = os.cpu_count() or 1
    print(f"{args.preset}, {args.limit} samples, batch {args.batch_size}, {cores} cores; samples/s (threads used)")
    for name, target in ((KEYS[k], COMPETITORS[KEYS[k]]) for k in KEYS if k in chosen):
        stop = multiprocessing.Event()
        proc = multiprocessing.Process(target=target, args=(stop,)) if target else None
        if proc:
            proc.start()
            time.sleep(1.0)
        try:
            for label, threads in (("auto threads", None), (f"--threads {cores}", cores)):
                results = [run(args, threads) for _ in range(args.repeats)]
                rates = ", ".join(f"{r:.1f} ({t.get('used')})" for r, t in results)
                print(f"  {name:28s} {label:12s} {rates}   [{results[0][1].get('reason', '')}]", flush=True)
        finally:
            if proc:
                stop.set()
                proc.join()


if __name__ == "__main__":
    main()
