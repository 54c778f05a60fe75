"""Regenerate tests/golden/tiny.json: metrics of a few built-in samples on the embedded preset.

Run after rebuilding the embedded preset (scripts/build_tiny.py) or after an intended change to a
metric's definition; the golden test then guards against unintended changes.

    .venv/bin/python scripts/update_golden.py
    .venv/bin/python scripts/update_golden.py --out /tmp/tiny.json   # elsewhere, e.g. to compare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import saecli

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tiny.json"
SAMPLE_IDS = ["entity-001", "temporal-010", "logical-020", "adversarial-030", "adversarial-050"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GOLDEN, help="the file to write (default tests/golden/tiny.json)")
    out = parser.parse_args().out
    preset = saecli.load_preset("tiny", device="cpu", dtype="float64")
    samples = [s for s in saecli.load_samples() if s.id in SAMPLE_IDS]
    rows = list(saecli.analyze(samples, preset, sequential=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": "tiny", "dtype": "float64", "rows": rows}, indent=1) + "\n")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
