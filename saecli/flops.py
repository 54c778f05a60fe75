"""FLOP counts of the engine's work, from the model's and SAEs' shapes and the passes it ran; and a
matrix-product peak to compare them with.

A multiply-add counts 2 FLOPs; only the matrix products are counted (layer norms, activations,
softmax, the SAE's threshold and top-k are left out: they are a few FLOPs per element, not per
weight). The embedding is a lookup (0 FLOPs). Without baselines there is no unembedding: the pass
stops after the deepest hooked block (``Engine.stop_at``), so only the blocks that run are counted.
With baselines every block runs and the unembedding is counted at the positions it scored (each
distinct position once, ``ForwardPass.scored``), not at every forwarded position.

This module imports nothing of saecli's: the shapes and passes are read by attribute
(``ForwardPass``: rows, width, past, blocks, scored; a TransformerLens config; an SAE's ``cfg.d_in`` / ``cfg.d_sae``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a transformer's config."""

    d_model: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_mlp: int
    gated: bool
    d_vocab: int = 0
    """Logits the unembedding gives per position (``d_vocab_out``; 0: not known, nothing counted)."""

    @classmethod
    def of(cls, cfg: Any) -> ModelShape:
        """From a TransformerLens ``HookedTransformerConfig`` (grouped-query attention through
        ``n_key_value_heads``; no MLP when ``attn_only``)."""
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        d_mlp = 0 if getattr(cfg, "attn_only", False) else int(cfg.d_mlp or 0)
        d_vocab = getattr(cfg, "d_vocab_out", -1)
        d_vocab = int(d_vocab if d_vocab and d_vocab > 0 else cfg.d_vocab)
        return cls(
            int(cfg.d_model), int(cfg.n_heads), int(cfg.d_head), int(n_kv), d_mlp, bool(getattr(cfg, "gated_mlp", False)), d_vocab
        )

    def token_flops(self) -> int:
        """FLOPs per forwarded position and block that do not depend on the context:

        * attention projections: 2·d_model·(n_heads·d_head·2 + n_kv_heads·d_head·2) (Q and O over
          all heads, K and V over the key/value heads);
        * MLP: 2·d_model·d_mlp·(3 if gated else 2) (in and out, plus the gate).
        """
        projections = 2 * self.d_model * (2 * self.n_heads * self.d_head + 2 * self.n_kv_heads * self.d_head)
        mlp = 2 * self.d_model * self.d_mlp * (3 if self.gated else 2)
        return projections + mlp

    def attention_flops(self, context: int) -> int:
        """FLOPs per forwarded position and block of the attention scores (q·k) and of the weighted
        values (pattern·v) over ``context`` key positions: 2·2·n_heads·d_head·context."""
        return 2 * 2 * self.n_heads * self.d_head * context

    def unembed_flops(self) -> int:
        """FLOPs per unembedded position: 2·d_model·d_vocab (``x W_U``)."""
        return 2 * self.d_model * self.d_vocab


def forward_flops(shape: ModelShape, blocks: int, passes: Iterable[Any]) -> int:
    """FLOPs of forward passes through the first ``blocks`` blocks (or the pass's own ``blocks``).

    Per pass of ``rows`` sequences padded to ``width``, after ``past`` cached positions:
    ``blocks · rows · width · (token_flops + attention_flops(past + width))``, plus
    ``scored · unembed_flops`` for the positions a pass with baselines unembedded. Padding counts (it
    is forwarded), and the attention context is the padded key length ``past + width`` for every
    position, not the real causal context: TransformerLens computes the whole score matrix and
    masks it (the masked half and the padding are computed, then thrown away). So this is the work
    the device did, not the useful part of it; ``BatchResult.padding_fraction`` says how much of the
    positions were padding.
    """
    total = 0
    for p in passes:
        ran = getattr(p, "blocks", 0) or blocks  # a pass that scored log-probabilities ran every block
        total += ran * p.rows * p.width * (shape.token_flops() + shape.attention_flops(p.past + p.width))
        total += getattr(p, "scored", 0) * shape.unembed_flops()
    return total


def sae_flops(saes: Mapping[int, Any], rows: Mapping[int, tuple[int, int]]) -> int:
    """FLOPs of SAE encodes and decodes: 2·d_in·d_sae per row encoded (one more encode per noisy
    read of the first layer), 2·d_in per decoder row multiplied (the active features of each read
    when the reconstruction is summed over them, else all d_sae). ``rows`` maps a layer to its
    (encoded rows, decoder rows multiplied) (``BatchResult.sae_rows``)."""
    total = 0
    for layer, (encoded, decoder_rows) in rows.items():
        cfg = saes[layer].cfg
        total += 2 * int(cfg.d_in) * (int(cfg.d_sae) * encoded + decoder_rows)
    return total


def add_rows(into: dict[int, tuple[int, int]], more: Mapping[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Sum per-layer (encoded, decoded) rows of several batches."""
    for layer, (encoded, decoded) in more.items():
        e, d = into.get(layer, (0, 0))
        into[layer] = (e + encoded, d + decoded)
    return into


def peak_size(device: str) -> int:
    """The square matrix side for :func:`measure_peak`: 1024 on a CPU (about 2 GFLOP a product, well
    past the size where the BLAS reaches its peak), 8192 on an accelerator."""
    return 1024 if device.split(":")[0] == "cpu" else 8192


def measure_peak(device: str, dtype: Any, *, n: int | None = None, repeats: int = 5) -> float:
    """The best achieved GFLOP/s of an n×n by n×n ``torch.mm`` (2·n³ FLOPs) on ``device`` in
    ``dtype``: one uncounted product, then the fastest of ``repeats`` (each synchronised on CUDA/MPS)."""
    import torch

    n = n or peak_size(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    kind = torch.device(device).type

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize()
        elif kind == "mps":
            torch.mps.synchronize()

    with torch.inference_mode():
        torch.mm(a, b)
        sync()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9
