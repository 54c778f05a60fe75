"""The shapes that decide a run's memory: a model's (:class:`ModelShape`, from a TransformerLens or a
Hugging Face config, or ``KNOWN_SHAPES`` for the hub presets) and each SAE's (:class:`SAEShape`).

Belongs here: counting parameters from a shape. Does not belong here: reading the files the shapes
come from (:mod:`saecli.doctor.preset`), turning shapes into bytes (:mod:`saecli.doctor.estimate`).
Pure: imports nothing of saecli.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a HookedTransformerConfig that decide memory; enough to count parameters and
    activations without building the model."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_vocab: int
    n_ctx: int
    gated_mlp: bool = False
    positional: str = "standard"

    @classmethod
    def from_tl_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From HookedTransformerConfig keyword arguments (the tiny model's config.json, a
        ``random_init`` preset's ``[model.config]``)."""
        d_model, n_heads = int(cfg["d_model"]), int(cfg.get("n_heads", 1))
        return cls(
            n_layers=int(cfg["n_layers"]),
            d_model=d_model,
            d_mlp=int(cfg.get("d_mlp") or 4 * d_model),
            n_heads=n_heads,
            d_head=int(cfg.get("d_head") or d_model // n_heads),
            n_kv_heads=int(cfg.get("n_key_value_heads") or n_heads),
            d_vocab=int(cfg["d_vocab"]),
            n_ctx=int(cfg.get("n_ctx", 1024)),
            gated_mlp=bool(cfg.get("gated_mlp", False)),
            positional=str(cfg.get("positional_embedding_type", "standard")),
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From a Hugging Face ``config.json`` (GPT-2 and Llama/Gemma key names)."""
        d_model = int(cfg.get("hidden_size") or cfg["n_embd"])
        n_heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        arch = " ".join(cfg.get("architectures") or [])
        return cls(
            n_layers=int(cfg.get("num_hidden_layers") or cfg["n_layer"]),
            d_model=d_model,
            d_mlp=int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d_model),
            n_heads=n_heads,
            d_head=int(cfg.get("head_dim") or d_model // n_heads),
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            d_vocab=int(cfg["vocab_size"]),
            n_ctx=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048),
            gated_mlp="GPT2" not in arch and "intermediate_size" in cfg,
            positional="standard" if "n_positions" in cfg else "rotary",
        )

    def parameters(self) -> int:
        """Parameters as TransformerLens holds them: the unembedding is its own matrix even where
        the Hugging Face model ties it to the embedding (so Gemma-2-2B counts 3.2B, not 2.6B)."""
        embed = self.d_vocab * self.d_model + (self.n_ctx * self.d_model if self.positional == "standard" else 0)
        unembed = self.d_model * self.d_vocab + self.d_vocab
        attn = (
            self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
            + self.d_head * (self.n_heads + 2 * self.n_kv_heads)
            + self.d_model
        )
        mlp = self.d_model * self.d_mlp * (3 if self.gated_mlp else 2) + self.d_mlp + self.d_model
        norms = 4 * self.d_model
        return embed + unembed + self.n_layers * (attn + mlp + norms) + 2 * self.d_model


KNOWN_SHAPES = {
    "gpt2-small": ModelShape(
        n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, n_kv_heads=12, d_vocab=50257, n_ctx=1024
    ),
    "gemma-2-2b": ModelShape(
        n_layers=26,
        d_model=2304,
        d_mlp=9216,
        n_heads=8,
        d_head=256,
        n_kv_heads=4,
        d_vocab=256000,
        n_ctx=8192,
        gated_mlp=True,
        positional="rotary",
    ),
}
"""Shapes of the hub presets' models, so the estimate needs neither the model nor the network.
The ``*-shape`` presets carry the same numbers in their TOML (a test checks they agree)."""


@dataclass(frozen=True)
class SAEShape:
    """One SAE's size and the hook it reads (which decides how deep the forward pass goes)."""

    layer: int
    d_in: int
    d_sae: int
    hook: str
    assumed: bool = False
    """True when d_sae was not known and a conservative width was assumed."""

    @property
    def block(self) -> int:
        """The deepest block the forward pass must run for this hook (conservatively the hook's own
        block, even for ``hook_resid_pre`` which the engine reads one block earlier)."""
        match = re.match(r"^blocks\.(\d+)\.", self.hook)
        return int(match.group(1)) if match else self.layer

    def parameters(self) -> int:
        """W_enc and W_dec (d_in × d_sae each), b_enc and a JumpReLU threshold (d_sae), b_dec."""
        return 2 * self.d_in * self.d_sae + 2 * self.d_sae + self.d_in
