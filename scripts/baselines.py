"""Reference baselines for saecli's engine: re-measure the speed ratio in one run.

Why this exists (issue: "Keep a script in scripts/ that runs that baseline, so the ratio can be
re-measured in one run"): the engine's speed is quoted as a ratio against the algorithm this field
starts from, and against the bare forward passes. This script times, on one preset and the same
samples, in one process:

``research``
    The one-text-at-a-time research algorithm, written the way the original notebooks do it: for
    each sample and each metric a FULL ``model.run_with_cache(text)`` (every hook cached, logits
    computed, no ``names_filter``, no ``stop_at_layer``) — 15 forward passes per sample:
    test 1 layer sensitivity F, H (2); test 2 misalignment P, F, H (3); test 3 noise stability F, H
    (2); test 4 entropy F, H (2); test 5 cross-layer consistency F, H once per layer of the pair
    L2, L3 (4); the log-probability baselines F, H (2), each the full logits of the whole text
    (``model(tokens)``) and a ``log_softmax`` over the vocabulary, summed and averaged over the
    continuation's tokens (those after the text's longest common prefix with the prompt's tokens,
    token 1 on at least). Each activation is encoded/decoded by its SAE alone, and the inertia
    eigenproblem is solved on the d_model × d_model covariance (``saecli.geometry.inertia_direct``)
    every time a metric needs geometry (test 1 per layer and text, test 2 for P, F, H). It computes
    the same columns as the engine (``saecli.columns.metric_columns``, the baselines included) with
    the same ``saecli.metrics`` functions, and is checked against ``saecli.analyze(...,
    sequential=True)`` on the first samples (``--check``). It is deliberately
    not optimised: it is the baseline.
``forward``
    The plain batched forward passes of the three texts alone, as the research "parallel" scripts
    do them: per batch of ``--batch-size`` samples, three ``model.run_with_cache(tokens,
    names_filter=<the three SAE hooks>)`` calls (one per text kind P, F, H) on right-padded tokens
    (each text tokenized alone with ``model.to_tokens``, padded with the pad id), batches in input
    order. No SAEs, no metrics. What the engine would cost if everything but the model were free
    and it did no forward-pass saving of its own.
``engine``
    saecli's own batched engine at the same batch size: ``list(saecli.analyze(samples, loaded,
    batch_size=B))``.

All three run under ``torch.inference_mode()`` and include tokenization in their time; loading the
preset is not timed. Before timing each one runs once on the first ``--warmup`` samples (not
counted). The table (stdout) gives samples/s and ``engine/that`` = engine samples/s divided by that
algorithm's; for research also the seconds per sample (median, min, max). Logging goes to stderr.

Measure on an otherwise idle machine: with torch's default threads, another busy process makes the
one-text-at-a-time passes several times slower (a max far above the median shows it); on a busy
machine use ``--threads 1``.

Run (from the repository root; the research baseline takes ~4 s per sample on gpt2-small-shape on
a 2-core CPU, so it uses the first ``--research-limit`` samples, default min(limit, 16))::

    .venv/bin/python scripts/baselines.py --preset gpt2-small-shape --limit 16 --batch-size 16
    .venv/bin/python scripts/baselines.py --preset tiny --limit 32 --json runs/baselines-tiny.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import saecli
from saecli import geometry, metrics
from saecli.columns import BASELINE_METRICS, KINDS, LAYER_METRICS, PAIRED_METRICS, layer_column, metric_columns, paired_column
from saecli.data import Sample
from saecli.models import LoadedPreset
from saecli.sae_stage import noise_vector

log = logging.getLogger("baselines")

ALGORITHMS = ("research", "forward", "engine")


# -- the engine: every call of saecli's engine in this script goes through here -------------------
def engine_rows(
    samples: Sequence[Sample], loaded: LoadedPreset, *, batch_size: int, seed: int, noise_std: float, sequential: bool = False
) -> list[dict[str, Any]]:
    """saecli's rows for the samples, in input order (batched, or the sequential reference)."""
    options: dict[str, Any] = {"seed": seed, "noise_std": noise_std}
    if sequential:
        options["sequential"] = True
    return list(saecli.analyze(samples, loaded, batch_size=batch_size, **options))


# -- research: one text at a time, a full cache per metric ----------------------------------------
class Research:
    """The research algorithm: 15 full forward passes per sample, SAE and direct geometry per read."""

    def __init__(self, loaded: LoadedPreset, *, seed: int = 0, noise_std: float = 0.1):
        self.loaded = loaded
        self.model = loaded.model
        self.layers = list(loaded.layers)
        self.hooks = loaded.hooks
        self.seed = seed
        self.noise_std = float(noise_std)
        self.passes = 0
        self.sample_seconds: list[float] = []

    def _cache(self, text: str) -> Any:
        """A full ``run_with_cache``: every hook of the model cached, logits computed."""
        self.passes += 1
        _logits, cache = self.model.run_with_cache(text)
        return cache

    def _tokens(self, text: str) -> list[int]:
        return self.model.to_tokens(text)[0].tolist()

    def _continuation_logprobs(self, prompt: str, text: str) -> tuple[float, float]:
        """Sum and mean of ``log p(token | preceding)`` over the text's continuation tokens: the full
        logits of the whole text (``model(tokens)``), a log-softmax over the vocabulary."""
        prompt_ids, ids = self._tokens(prompt), self._tokens(text)
        common = 0
        while common < min(len(prompt_ids), len(ids)) and prompt_ids[common] == ids[common]:
            common += 1
        start = max(1, min(common, len(ids) - 1))  # the first token is never scored; the last always is
        self.passes += 1
        logits = self.model(torch.tensor([ids], device=self.loaded.device))
        logits = logits if logits.dtype == torch.float64 else logits.float()
        logprobs = torch.log_softmax(logits[0], dim=-1).to(torch.float64)
        picked = [float(logprobs[position - 1, ids[position]]) for position in range(start, len(ids))]
        total = math.fsum(picked)
        return total, total / len(picked)

    def _read(self, cache: Any, layer: int) -> torch.Tensor:
        """The residual at the layer's SAE hook, last token ([1, d_model], in the SAE's dtype)."""
        sae = self.loaded.saes[layer]
        return cache[self.hooks[layer]][:, -1, :].to(sae.W_dec.dtype)

    def _encode(self, layer: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """SAE encode/decode of one activation; active values sorted descending ([1, k])."""
        sae = self.loaded.saes[layer]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        active = torch.nonzero(f[0] > 0).flatten()
        values, order = torch.sort(f[0, active], descending=True)
        indices = active[order]
        values, indices = values.unsqueeze(0), indices.unsqueeze(0)
        mask = values > 0
        return {"f": f, "x_hat": x_hat, "values": values, "indices": indices, "mask": mask, "l0": metrics.l0_norm(mask)}

    def _inertia(self, layer: int, enc: dict[str, torch.Tensor]) -> geometry.Inertia:
        """The inertia eigenproblem on the full d_model × d_model covariance."""
        sae = self.loaded.saes[layer]
        values = enc["values"].to(torch.float64)
        total = values.sum(-1, keepdim=True)
        weights = values / total if float(total) > 0 else torch.zeros_like(values)
        return geometry.inertia_direct(sae.W_dec[enc["indices"]], weights, enc["l0"])

    def row(self, sample: Sample) -> dict[str, Any]:
        first, second, third = self.layers
        texts = {"prompt": sample.prompt, "fact": sample.fact_text, "hall": sample.hall_text}
        row: dict[str, Any] = {
            "sample_id": sample.id,
            "domain": sample.domain,
            "topic": sample.topic,
            "complexity": sample.complexity,
        }
        cols: dict[str, Any] = {}
        with torch.inference_mode():
            # Test 1: layer sensitivity (F, H; every layer).
            for kind in KINDS:
                cache = self._cache(texts[kind])
                for layer in self.layers:
                    x = self._read(cache, layer)
                    enc = self._encode(layer, x)
                    inertia = self._inertia(layer, enc)
                    values = {
                        "l0_norm": int(enc["l0"][0]),
                        "reconstruction_error": float(metrics.reconstruction_error(x, enc["x_hat"])[0]),
                        "gini": float(metrics.gini(enc["values"], enc["mask"])[0]),
                        "sphericity": float(metrics.sphericity(inertia.eigenvalues, enc["l0"])[0]),
                        "shape_class": metrics.shape_class(inertia.eigenvalues, enc["l0"])[0],
                        "dimensionality": float(metrics.dimensionality(inertia.eigenvalues)[0]),
                    }
                    for name in LAYER_METRICS:
                        cols[layer_column(layer, kind, name)] = values[name]
                del cache

            # Test 2: semantic misalignment (P, F, H; layer L1).
            centroid, axis = {}, {}
            for kind in ("prompt", "fact", "hall"):
                cache = self._cache(texts[kind])
                enc = self._encode(first, self._read(cache, first))
                inertia = self._inertia(first, enc)
                centroid[kind], axis[kind] = inertia.centroid, inertia.axis
                del cache
            for kind in KINDS:
                cols[paired_column("centroid_drift", kind)] = float(metrics.angle_degrees(centroid["prompt"], centroid[kind])[0])
                cols[paired_column("axis_twist", kind)] = float(metrics.line_angle_degrees(axis["prompt"], axis[kind])[0])

            # Test 3: stability under noise added to the cached residual (F, H; layer L1).
            sae = self.loaded.saes[first]
            for kind in KINDS:
                cache = self._cache(texts[kind])
                x = self._read(cache, first)
                enc = self._encode(first, x)
                noise = noise_vector(self.seed, sample.id, kind, self.model.cfg.d_model).to(x)
                f_noisy = sae.encode(x + self.noise_std * noise)
                noisy_values, noisy_indices = f_noisy.topk(metrics.TOP_STABILITY, dim=-1)
                top = metrics.top_indices(enc["indices"], enc["mask"])
                top_noisy = metrics.top_indices(noisy_indices, noisy_values > 0)
                cols[paired_column("stability", kind)] = float(metrics.jaccard(top, top_noisy)[0])
                del cache

            # Test 4: entropy of the clean features (F, H; layer L1).
            for kind in KINDS:
                cache = self._cache(texts[kind])
                enc = self._encode(first, self._read(cache, first))
                cols[paired_column("entropy", kind)] = float(metrics.entropy(enc["values"], enc["mask"])[0])
                del cache

            # Test 5: cross-layer consistency (F, H; a pass per layer of the pair L2, L3).
            for kind in KINDS:
                x_hat = {}
                for layer in (second, third):
                    cache = self._cache(texts[kind])
                    x_hat[layer] = self._encode(layer, self._read(cache, layer))["x_hat"]
                    del cache
                cols[paired_column("cross_layer_consistency", kind)] = float(
                    metrics.cosine_similarity(x_hat[second], x_hat[third])[0]
                )

            # Baselines: log p(continuation | prompt) of F and H, from the full logits of each text.
            for kind in KINDS:
                total, mean = self._continuation_logprobs(sample.prompt, texts[kind])
                cols[paired_column("logprob_sum", kind)], cols[paired_column("logprob_mean", kind)] = total, mean

        for base in (*PAIRED_METRICS, *BASELINE_METRICS):
            fact, hall = cols[paired_column(base, "fact")], cols[paired_column(base, "hall")]
            # The spec's sign: stability, consistency and the log-probabilities are fact − hall, the
            # rest hall − fact.
            fact_minus_hall = base in ("stability", "cross_layer_consistency", *BASELINE_METRICS)
            cols[paired_column(base, "diff")] = fact - hall if fact_minus_hall else hall - fact
        row.update({c: cols[c] for c in metric_columns(self.layers)})
        return row

    def run(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        rows = []
        self.sample_seconds = []
        started = time.perf_counter()
        for i, sample in enumerate(samples, start=1):
            before = time.perf_counter()
            rows.append(self.row(sample))
            self.sample_seconds.append(time.perf_counter() - before)
            if i % 4 == 0 or i == len(samples):
                elapsed = time.perf_counter() - started
                log.info("research: %d/%d samples, %.2f samples/s", i, len(samples), i / elapsed)
        return rows


# -- forward: the three texts' batched passes alone -----------------------------------------------
def run_forward(loaded: LoadedPreset, samples: Sequence[Sample], batch_size: int) -> int:
    """Three right-padded ``run_with_cache`` passes per batch (P, F, H), caching only the SAE
    hooks; returns the number of passes."""
    model = loaded.model
    tokenizer = model.tokenizer
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    names = set(loaded.hooks.values())
    device = torch.device(loaded.device)
    passes = 0
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            for texts in ([s.prompt for s in batch], [s.fact_text for s in batch], [s.hall_text for s in batch]):
                seqs = [model.to_tokens(t, truncate=False, move_to_device=False)[0] for t in texts]
                lengths = torch.tensor([len(s) for s in seqs])
                tokens = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
                for row, seq in enumerate(seqs):
                    tokens[row, : len(seq)] = seq
                _logits, cache = model.run_with_cache(
                    tokens.to(device), names_filter=lambda name: name in names, padding_side="right"
                )
                rows, last = torch.arange(len(seqs), device=device), (lengths - 1).to(device)
                _reads = {hook: cache[hook][rows, last] for hook in names}  # what the metrics would read
                passes += 1
    return passes


# -- timing and the agreement check ---------------------------------------------------------------
def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def compare_rows(ours: list[dict[str, Any]], reference: list[dict[str, Any]], columns: list[str], tol: float) -> dict[str, Any]:
    """Column-wise comparison: numeric |a − b| ≤ tol, discrete (int, str, None) exactly equal."""
    worst: dict[str, dict[str, Any]] = {}
    mismatches = []
    for a, b in zip(ours, reference, strict=True):
        assert a["sample_id"] == b["sample_id"], (a["sample_id"], b["sample_id"])
        for col in columns:
            va, vb = a[col], b[col]
            if isinstance(va, float) or isinstance(vb, float):
                diff = abs(float(va) - float(vb))
                if math.isnan(diff) and not (math.isnan(float(va)) and math.isnan(float(vb))):
                    diff = math.inf
                elif math.isnan(diff):
                    diff = 0.0
                if col not in worst or diff > worst[col]["abs_diff"]:
                    worst[col] = {"abs_diff": diff, "sample_id": a["sample_id"], "research": va, "sequential": vb}
                if diff > tol:
                    mismatches.append(
                        {"sample_id": a["sample_id"], "column": col, "research": va, "sequential": vb, "abs_diff": diff}
                    )
            elif va != vb:
                mismatches.append(
                    {"sample_id": a["sample_id"], "column": col, "research": va, "sequential": vb, "abs_diff": None}
                )
    largest = max(worst.items(), key=lambda kv: kv[1]["abs_diff"]) if worst else None
    return {
        "samples": len(ours),
        "tolerance": tol,
        "passed": not mismatches,
        "mismatches": mismatches,
        "largest": {"column": largest[0], **largest[1]} if largest else None,
        "max_abs_diff_per_column": {c: w["abs_diff"] for c, w in worst.items()},
    }


def print_table(results: list[dict[str, Any]]) -> None:
    engine = next((r for r in results if r["algorithm"] == "engine"), None)
    header = f"{'algorithm':<10} {'samples':>7} {'seconds':>9} {'samples/s':>10} {'engine/that':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{engine['samples_per_s'] / r['samples_per_s']:.1f}x" if engine else "-"
        r["engine_ratio"] = engine["samples_per_s"] / r["samples_per_s"] if engine else None
        print(f"{r['algorithm']:<10} {r['samples']:>7} {r['seconds']:>9.3f} {r['samples_per_s']:>10.3f} {ratio:>12}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the research and forward-only baselines against saecli's engine on one preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="gpt2-small-shape", help="saecli preset name or TOML path")
    parser.add_argument("--limit", type=int, default=32, help="N samples, as saecli's --limit picks them (forward, engine)")
    parser.add_argument(
        "--research-limit", type=int, default=None, help="the first N of those for research (default: min(limit, 16))"
    )
    parser.add_argument("--data", default=None, help="samples file or folder (default: the built-in benchmark)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--which", default=",".join(ALGORITHMS), help="comma-separated subset of research,forward,engine")
    parser.add_argument("--warmup", type=int, default=1, help="samples of untimed warm-up per algorithm (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="stability noise seed (as saecli)")
    parser.add_argument("--noise-std", type=float, default=0.1, help="stability noise σ (as saecli)")
    parser.add_argument(
        "--check", type=int, default=3, help="compare research with saecli sequential on the first N samples (0: skip)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = [w for w in which if w not in ALGORITHMS]
    if unknown or not which:
        parser.error(f"--which: unknown {unknown or 'empty'}; choose from {','.join(ALGORITHMS)}")
    args.which = [a for a in ALGORITHMS if a in which]
    if args.limit < 1 or args.batch_size < 1:
        parser.error("--limit and --batch-size must be at least 1")
    if args.research_limit is None:
        args.research_limit = min(args.limit, 16)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    log.info("torch threads: %d", torch.get_num_threads())

    loaded = saecli.load_preset(args.preset, device=args.device, dtype=args.dtype)
    all_samples = saecli.load_samples(args.data, limit=max(args.limit, args.research_limit))
    samples = all_samples[: args.limit]
    warm = all_samples[: args.warmup]
    device = loaded.device
    log.info(
        "preset %s, layers %s, hooks %s, %s on %s, %d samples",
        loaded.preset.name,
        loaded.layers,
        list(loaded.hooks.values()),
        loaded.dtype,
        device,
        len(samples),
    )

    results: list[dict[str, Any]] = []
    check: dict[str, Any] | None = None
    research_rows: list[dict[str, Any]] = []
    for algorithm in args.which:
        if algorithm == "research":
            research = Research(loaded, seed=args.seed, noise_std=args.noise_std)
            todo = all_samples[: args.research_limit]
            if warm:
                research.run(warm)
            research.passes = 0
            research_rows, seconds = timed(lambda r=research, t=todo: r.run(t), device)
            per_sample = sorted(research.sample_seconds)
            n, extra = (
                len(todo),
                {
                    "forward_passes": research.passes,
                    "sample_seconds": research.sample_seconds,
                    "median_sample_seconds": per_sample[len(per_sample) // 2],
                },
            )
        elif algorithm == "forward":
            if warm:
                run_forward(loaded, warm, args.batch_size)
            passes, seconds = timed(lambda: run_forward(loaded, samples, args.batch_size), device)
            n, extra = len(samples), {"forward_passes": passes}
        else:
            options = {"batch_size": args.batch_size, "seed": args.seed, "noise_std": args.noise_std}
            if warm:
                engine_rows(warm, loaded, **options)
            _rows, seconds = timed(lambda o=options: engine_rows(samples, loaded, **o), device)
            n, extra = len(samples), {}
        results.append({"algorithm": algorithm, "samples": n, "seconds": seconds, "samples_per_s": n / seconds, **extra})
        log.info("%s: %d samples in %.3f s (%.3f samples/s)", algorithm, n, seconds, n / seconds)

    if research_rows and args.check > 0:
        subset = all_samples[: min(args.check, len(research_rows))]
        reference = engine_rows(subset, loaded, batch_size=1, seed=args.seed, noise_std=args.noise_std, sequential=True)
        tol = 1e-8 if loaded.dtype == "float64" else 1e-4
        check = compare_rows(research_rows[: len(subset)], reference, metric_columns(loaded.layers), tol)

    print(
        f"preset {loaded.preset.name}, {loaded.dtype} on {device}, batch size {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads"
    )
    print_table(results)
    for r in results:
        if r.get("sample_seconds"):
            times = r["sample_seconds"]
            print(
                f"{r['algorithm']}: {r['forward_passes']} forward passes; seconds per sample median "
                f"{r['median_sample_seconds']:.3f}, min {min(times):.3f}, max {max(times):.3f}"
            )
    if check is not None:
        largest = check["largest"]
        verdict = "agree" if check["passed"] else f"DISAGREE ({len(check['mismatches'])} values)"
        print(
            f"\nresearch vs saecli sequential, first {check['samples']} samples, tolerance {check['tolerance']:g}: {verdict}; "
            f"largest |diff| {largest['abs_diff']:.3g} in {largest['column']} ({largest['sample_id']})"
        )
        for m in check["mismatches"]:
            print(f"  {m['sample_id']} {m['column']}: research {m['research']!r}, sequential {m['sequential']!r}")

    if args.json is not None:
        from importlib.metadata import version

        document = {
            "preset": loaded.preset.name,
            "layers": loaded.layers,
            "hooks": loaded.hooks,
            "dtype": loaded.dtype,
            "device": device,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "data": str(args.data) if args.data else "builtin",
            "warmup_samples": len(warm),
            "seed": args.seed,
            "noise_std": args.noise_std,
            "load_seconds": loaded.load_seconds,
            "results": results,
            "check": check,
            "versions": {
                "python": platform.python_version(),
                **{pkg: version(pkg) for pkg in ("saecli", "torch", "transformer_lens", "sae_lens")},
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        log.info("wrote %s", args.json)
    return 0 if check is None or check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
