"""The memory estimate of ``doctor``: a run's memory at each batch size, predicted from the model's
and SAEs' shapes and the data's longest text, against what the device has free; the largest batch
predicted to stay under ``MEMORY_MARGIN`` of it; and what to try after an out-of-memory error.

Belongs here: the byte counts (:func:`activation_bytes`, :func:`estimate_memory`), the memory check
(:func:`check_memory`) and the hints that depend on the estimate (:func:`oom_hints`). Pure functions
of the gathered facts. Does not belong here: measuring memory (:mod:`saecli.memory`, the probe in
:mod:`probe`), the margin and caps themselves (:mod:`saecli.memory`, shared with ``bench`` and
``--batch-size auto``), the one-line OOM error of a run (:func:`saecli.memory.oom_message`).
"""

from __future__ import annotations

from dataclasses import dataclass

from saecli.device import DTYPE_BYTES, sae_dtype_for
from saecli.doctor.checks import Check
from saecli.doctor.facts import Environment
from saecli.doctor.preset import PresetFacts
from saecli.doctor.shapes import ModelShape, SAEShape
from saecli.memory import ALLOC_CONF, MEMORY_MARGIN, GiB, batch_cap, gib, preset_flag

GEOMETRY_K = 200
"""Active features per read assumed for the geometry's [reads, k, d_model] float64 tensors: above
the L0 of the SAEs we ship (32 to ~100), so the estimate errs on the safe side."""
RUNTIME_OVERHEAD = {"cuda": GiB // 2, "mps": GiB // 2, "cpu": GiB}
"""Memory a run needs besides weights and activations: the CUDA/MPS allocator's cache and library
workspaces on an accelerator; on a CPU the imported libraries themselves (~0.6 GB measured)."""


@dataclass
class MemoryEstimate:
    """Predicted memory of a run at each batch size, against what the device has free (bytes)."""

    device: str
    dtype: str
    free_bytes: int | None
    budget_bytes: int | None
    """``MEMORY_MARGIN`` × free: what a batch may use (the margin bench and autobatch use)."""
    model_bytes: int
    sae_bytes: int
    overhead_bytes: int
    longest_tokens: int
    tokens_exact: bool
    per_batch: dict[int, int]
    """Batch size (powers of two up to the cap) → predicted total bytes."""
    largest_safe: int | None
    cap: int
    sae_widths_assumed: bool = False


def activation_bytes(shape: ModelShape, saes: list[SAEShape], batch: int, tokens: int, dtype: str) -> int:
    """Working memory of one batch (bytes), conservative and simple:

    * rows = 3 × batch: the fact and hallucination texts and, at worst, the prompt as its own row,
      each ``tokens`` long (the data's longest text: batches are padded to their longest).
    * forward, one block at a time (inference mode frees the previous block): residual stream and
      its normalised copies (6 × d_model), q/k/v/z with keys and values expanded to every head
      (6 × n_heads × d_head), the MLP's hidden layers (3 × d_mlp), in the model's dtype; and 4
      copies of the attention scores [rows, n_heads, tokens, tokens] in at least float32.
    * the prompt's key/value cache for every block run: 2 × rows × tokens × n_kv_heads × d_head.
    * SAE stage, per layer: 4 × [reads, d_sae] in the SAE dtype (pre-activations, features, the
      noisy features, top-k copies); reads = 3 × batch.
    * geometry, per layer: 4 × [reads, k, d_model] float64 (gathered decoder rows, their float64
      copy, centred, weighted) + 2 × [reads, k, k] float64, with k = ``GEOMETRY_K`` (or d_sae).

    SAE and geometry run one layer after another, so the largest layer counts, not their sum.
    """
    b = DTYPE_BYTES[dtype]
    s = DTYPE_BYTES[sae_dtype_for(dtype)]
    rows = 3 * batch
    t = rows * tokens
    block = t * b * (6 * shape.d_model + 6 * shape.n_heads * shape.d_head + 3 * shape.d_mlp)
    scores = 4 * rows * shape.n_heads * tokens * tokens * max(b, 4)
    blocks_run = min(shape.n_layers, max((sae.block for sae in saes), default=shape.n_layers - 1) + 1)
    kv = blocks_run * 2 * t * shape.n_kv_heads * shape.d_head * b
    per_layer = 0
    for sae in saes:
        k = min(GEOMETRY_K, sae.d_sae)
        reads = 3 * batch
        sae_stage = 4 * reads * sae.d_sae * s
        geometry = 4 * reads * k * shape.d_model * 8 + 2 * reads * k * k * 8
        per_layer = max(per_layer, sae_stage + geometry)
    return block + scores + kv + per_layer


def free_for(env: Environment, device: str) -> int | None:
    """Memory free for a run on ``device`` as gathered (MPS: the smaller of its recommended maximum
    and the system's available memory); None when unknown."""
    if device == "cuda":
        return env.gpus[0].free_bytes if env.gpus else None
    if device == "mps":
        values = [v for v in (env.mps_max_bytes, env.memory_available) if v]
        return min(values) if values else None
    return env.memory_available


def estimate_memory(env: Environment, facts: PresetFacts, device: str, dtype: str) -> MemoryEstimate | None:
    """Weights + runtime overhead + one batch's activations, for batch sizes 1, 2, 4, ... up to the
    probing cap (and the data's size); the largest whose total stays under the margin is the
    predicted safe size. None when the model's shape is unknown."""
    shape = facts.model_shape
    if shape is None or facts.longest_tokens is None:
        return None
    saes = [sae if sae.d_in else SAEShape(sae.layer, shape.d_model, sae.d_sae, sae.hook, sae.assumed) for sae in facts.saes]
    model_bytes = shape.parameters() * DTYPE_BYTES[dtype]
    sae_bytes = sum(sae.parameters() for sae in saes) * DTYPE_BYTES[sae_dtype_for(dtype)]
    overhead = RUNTIME_OVERHEAD.get(device, GiB)
    fixed = model_bytes + sae_bytes + overhead
    free = free_for(env, device)
    budget = int(free * MEMORY_MARGIN) if free else None
    cap = min(batch_cap(device), max(facts.n_samples, 1))
    per_batch, size, largest = {}, 1, None
    while size <= cap:
        total = fixed + activation_bytes(shape, saes, size, facts.longest_tokens, dtype)
        per_batch[size] = total
        if budget is not None and total <= budget:
            largest = size
        size *= 2
    return MemoryEstimate(
        device=device,
        dtype=dtype,
        free_bytes=free,
        budget_bytes=budget,
        model_bytes=model_bytes,
        sae_bytes=sae_bytes,
        overhead_bytes=overhead,
        longest_tokens=facts.longest_tokens,
        tokens_exact=facts.tokens_exact,
        per_batch=per_batch,
        largest_safe=largest if budget is not None else None,
        cap=cap,
        sae_widths_assumed=any(s.assumed for s in saes),
    )


def smaller_dtype(env: Environment, device: str, dtype: str) -> str | None:
    """The 16-bit dtype worth suggesting on this device, or None."""
    if device == "cpu" or DTYPE_BYTES[dtype] <= 2:
        return None
    if device == "cuda":
        return "bfloat16" if (env.gpus and env.gpus[0].bf16) else "float16"
    return "float16"


def check_memory(env: Environment, facts: PresetFacts, device: str | None, dtype: str) -> tuple[Check, MemoryEstimate | None]:
    """The predicted largest safe batch size against the run's batch size (the preset's default unless --batch-size), with the flags to pass
    when it does not fit."""
    if device is None:
        return Check("memory", "warn", "no estimate: no usable device"), None
    est = estimate_memory(env, facts, device, dtype)
    if est is None:
        return Check(
            "memory",
            "warn",
            f"no estimate: the shape of model {facts.name} is not known",
            f"measure it: saecli doctor --probe{preset_flag(facts.source or facts.name)}",
        ), None
    tokens = f"{est.longest_tokens} tokens ({'tokenized' if est.tokens_exact else 'chars/3 bound'})"
    weights = (
        f"weights {gib(est.model_bytes)} model ({dtype}) + {gib(est.sae_bytes)} SAEs ({sae_dtype_for(dtype)}) "
        f"+ {gib(est.overhead_bytes)} runtime"
    )
    if est.budget_bytes is None:
        return Check("memory", "warn", f"{weights}; free memory on {device} unknown", "use --batch-size auto, which probes"), est
    where = f"{gib(est.free_bytes)} free on {device}, {MEMORY_MARGIN:.0%} usable = {gib(est.budget_bytes)}"
    first = est.per_batch.get(1)
    detail = f"{weights}; longest text {tokens}; {where}"
    flag = preset_flag(facts.source or facts.name)
    smaller = smaller_dtype(env, device, dtype)
    if est.largest_safe is None:
        fixes = []
        if smaller:
            alt = estimate_memory(env, facts, device, smaller)
            fits = f" (predicted to fit batch {alt.largest_safe})" if alt and alt.largest_safe else ""
            fixes.append(f"--dtype {smaller}{fits}")
        if device != "cpu":
            fixes.append("--device cpu")
        fixes.append("free memory held by other processes")
        what = (
            "the weights alone"
            if first is not None and est.model_bytes + est.sae_bytes + est.overhead_bytes > est.budget_bytes
            else "batch 1"
        )
        return Check("memory", "fail", f"{detail}: {what} need more ({gib(first)} at batch 1)", "; ".join(fixes)), est
    safe = est.largest_safe
    capped = f", the cap of {est.cap} for {device}" if safe * 2 > est.cap else ""
    detail += f"; predicted largest safe batch {safe} ({gib(est.per_batch[safe])}{capped})"
    if safe < facts.default_batch:
        hint = f"saecli run{flag} --batch-size {safe} (or --batch-size auto, which measures)"
        if smaller:
            hint += f"; --dtype {smaller} halves the model's memory"
        if device == "cuda":
            hint += f"; {ALLOC_CONF} against fragmentation"
        return Check("memory", "warn", detail + f", below the run's batch size {facts.default_batch}", hint), est
    return Check("memory", "ok", detail), est


def oom_hints(env: Environment, preset: str, device: str | None, dtype: str, estimate: MemoryEstimate | None) -> list[str]:
    """What to try after an out-of-memory error, most effective first, for this device."""
    flag = preset_flag(preset)
    size = estimate.largest_safe if estimate and estimate.largest_safe else None
    hints = [
        f"--batch-size {size}: the predicted largest safe size here"
        if size
        else "--batch-size N with a smaller N (the batch is padded to its longest text)",
        "--batch-size auto: tries sizes on the data's longest texts and keeps the largest that fits",
    ]
    smaller = smaller_dtype(env, device or "cpu", dtype)
    if smaller:
        hints.append(f"--dtype {smaller}: halves the model's weights and activations (SAEs stay float32, geometry float64)")
    if device == "cuda":
        hints.append(f'{ALLOC_CONF} saecli run ...: when memory is free but fragmented ("reserved but unallocated" in the error)')
    if device != "cpu":
        hints.append(f"--device cpu: slower, but uses system memory ({gib(env.memory_available)} available)")
    hints.append(f"saecli doctor --probe{flag}: loads the preset and measures the largest batch that fits")
    return hints
