"""Write the summary of a scripts/gpu_check.sh folder to stdout: each step, its exit code and
seconds, and the key figures (bench: best samples/s per dtype; compare: passed and max |Δ|;
doctor: device, GPU, predicted and probed batch). Standard library only (runs on the device
machine before anything else is known to work)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any


def load_json(path: Path) -> Any:
    """The JSON document in a file, or the last JSON object in it (stdout may carry other lines)."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    if start >= 0:
        try:
            return json.loads(text[start:])
        except ValueError:
            return None
    return None


def tail(path: Path, n: int = 1) -> str:
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("sequential ", "batch ")) or "━" not in line]
    return " | ".join(lines[-n:])[:300]


def gib(n: Any) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "?"


def doctor_figures(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return []
    env = doc.get("environment") or {}
    lines = [f"ok={doc.get('ok')} device={doc.get('device')} ({doc.get('device_reason')}) dtype={doc.get('dtype')}"]
    for gpu in env.get("gpus") or []:
        lines.append("gpu: " + ", ".join(f"{k}={v}" for k, v in gpu.items() if v is not None))
    versions = env.get("versions") or {}
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for check in doc.get("checks") or []:
        if check.get("status") != "ok":
            lines.append(f"{check.get('status')}: {check.get('name')}: {check.get('detail')}")
    est = doc.get("estimate") or {}
    if est:
        lines.append(
            f"predicted largest safe batch {est.get('largest_safe')} (free {gib(est.get('free_bytes'))}, "
            f"model {gib(est.get('model_bytes'))}, SAEs {gib(est.get('sae_bytes'))}, longest {est.get('longest_tokens')} tokens)"
        )
    probe = doc.get("probe")
    if isinstance(probe, dict):
        tried = ", ".join(f"{p.get('size')}:{p.get('outcome')}/{gib(p.get('peak_bytes'))}" for p in probe.get("probes") or [])
        lines.append(
            f"probe: ok={probe.get('ok')} size={probe.get('size')} load {probe.get('load_seconds')} s, "
            f"loaded {gib(probe.get('loaded_bytes'))}; {probe.get('reason') or probe.get('error')}"
        )
        if tried:
            lines.append(f"probes (size:outcome/peak): {tried}")
    return lines


def compare_figures(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return []
    worst: tuple[float, str, str, str | None] | None = None
    discrete = 0
    per_size = []
    for size, result in (doc.get("batch_sizes") or {}).items():
        size_max = 0.0
        for col in result.get("columns") or []:
            if col.get("kind") == "discrete":
                discrete += int(col.get("mismatches") or 0)
                continue
            value = col.get("max_abs")
            if isinstance(value, (int, float)):
                size_max = max(size_max, value)
                if worst is None or value > worst[0]:
                    worst = (value, col.get("column"), size, col.get("worst_sample"))
        per_size.append(f"{size}: {size_max:.2e}")
    line = f"passed={doc.get('passed')} device={doc.get('device')} dtype={doc.get('dtype')}"
    if worst is not None:
        line += f" max|Δ|={worst[0]:.3e} ({worst[1]}, batch {worst[2]}, {worst[3]})"
    line += f"; discrete mismatches {discrete}"
    lines = [line, "max|Δ| per batch size: " + ", ".join(per_size)] if per_size else [line]
    for label, result in (doc.get("drift_vs_float64") or {}).items():
        numeric = [c for c in result.get("columns") or [] if c.get("kind") == "numeric"]
        top = sorted(numeric, key=lambda c: -(c.get("max_abs") or 0))[:3]
        lines.append(
            f"drift vs float64, {label}: "
            + ", ".join(f"{c.get('column')} max {c.get('max_abs'):.2e} median {c.get('median_abs', 0):.2e}" for c in top)
        )
    return lines


def bench_figures(folder: Path, stderr: Path) -> list[str]:
    doc = load_json(folder / "bench.json")
    if isinstance(doc, dict):
        rows = [r for r in doc.get("results") or [] if r.get("ok")]
        lines = []
        if rows:
            best = max(rows, key=lambda r: r.get("samples_per_second") or 0)
            lines.append(
                f"best {best.get('samples_per_second')} samples/s at batch {best.get('size')} "
                f"({doc.get('samples')} samples, device {doc.get('device')}, dtype {doc.get('dtype')}, "
                f"load {best.get('load_seconds')} s, peak {gib(best.get('peak_memory'))}); "
                f"recommended {doc.get('recommended')}"
            )
        else:
            lines.append(f"no size succeeded (device {doc.get('device')}, dtype {doc.get('dtype')})")
        for r in doc.get("results") or []:
            if r.get("ok"):
                stages = r.get("stages") or {}
                total = sum(v for v in stages.values() if isinstance(v, (int, float))) or 1.0
                split = " ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items() if isinstance(v, (int, float)))
                plain = r.get("samples_per_second_no_baselines")
                lines.append(
                    f"  batch {r.get('size')}: {r.get('samples_per_second')} samples/s"
                    + (f" ({plain} without baselines)" if plain else "")
                    + ", "
                    f"{r.get('tokens_per_second')} tokens/s, {r.get('seconds_median')} s, "
                    f"peak {gib(r.get('peak_memory'))} (+{gib(r.get('peak_increase'))}), load {r.get('load_seconds')} s; {split}"
                )
            else:
                lines.append(f"  batch {r.get('size')}: {'OOM' if r.get('oom') else 'failed'}: {r.get('error')}")
        if doc.get("reason"):
            lines.append(f"  reason: {doc.get('reason')}")
        return lines
    # Cut by its timeout: bench.json was never written; its stderr has a line per size done.
    done = []
    if stderr.is_file():
        for m in re.finditer(r"batch (\d+): ([\d.]+) samples/s(?:, peak ([\d.]+ \w+))?", stderr.read_text(errors="replace")):
            done.append((float(m.group(2)), int(m.group(1)), m.group(3)))
    if not done:
        return ["no bench.json and no size finished"]
    best = max(done)
    return [
        f"no bench.json (cut short?); from stderr: best {best[0]} samples/s at batch {best[1]}",
        "  " + ", ".join(f"batch {s}: {v} samples/s (peak {p})" for v, s, p in done),
    ]


def _required(row: dict[str, str]) -> str:
    if row["required"] == "1":
        return "yes"
    return "no (exit 1 by design)" if row["step"].startswith("compare-") else "no"


def main() -> int:
    out = Path(sys.argv[1])
    rows = list(csv.DictReader((out / "steps.tsv").open(), delimiter="\t"))
    print(f"gpu_check summary: {out}")
    env = out / "env.txt"
    if env.is_file():
        print(env.read_text().rstrip())
    print()
    print(f"{'step':<18} {'exit':>7} {'seconds':>8} {'timeout':>8}  required")
    for r in rows:
        print(f"{r['step']:<18} {r['rc']:>7} {r['seconds']:>8} {r['timeout']:>8}  {_required(r)}")
    print()
    for r in rows:
        name = r["step"]
        lines: list[str] = []
        if name.startswith("doctor"):
            lines = doctor_figures(load_json(out / f"{name}.out"))
        elif name.startswith("compare"):
            lines = compare_figures(load_json(out / f"{name}.out"))
        elif name.startswith("bench"):
            lines = bench_figures(out / name, out / f"{name}.err")
        elif name.startswith("pytest"):
            text = tail(out / f"{name}.out", 3)
            lines = [text or "(no output)"]
            if r["rc"] == "5":
                lines.append("exit 5: no test carries the gpu mark")
        if r["rc"] not in ("0",) and not (name.startswith("compare-") and name != "compare-float64" and r["rc"] == "1"):
            if r["rc"] in ("124", "137"):
                lines.append(f"TIMED OUT after {r['timeout']} s")
            err = tail(out / f"{name}.err", 2)
            if err:
                lines.append(f"stderr: {err}")
        print(f"[{name}] exit {r['rc']}, {r['seconds']} s")
        for line in lines or ["(no figures)"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
