"""Seeded random models and SAEs built from a config in milliseconds: the builders behind the
``random_init`` presets (benchmarking the engine's cost without weights) and the tests' models.
Their metrics mean nothing.

Data flows one way: ``saecli.models`` builds random presets with these functions; this module needs
nothing of ``saecli.models`` (the test helper that wraps them into a ``LoadedPreset`` lives in
``tests/helpers.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from saecli.device import torch_dtype

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

SPECIAL = "<|endoftext|>"


def byte_tokenizer() -> Any:
    """A byte-level tokenizer with no merges (256 byte tokens + one special token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[SPECIAL] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SPECIAL])
    # add_bos_token makes the tokenizer itself prepend BOS, which TransformerLens detects and
    # respects (it would otherwise try to re-load the tokenizer by name from the hub).
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, add_bos_token=True, name_or_path="bytes"
    )


def random_model(cfg: dict[str, Any], *, seed: int = 0, dtype: str = "float32", tokenizer: Any = None) -> HookedTransformer:
    """A HookedTransformer of the given config with seeded random weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = tokenizer or byte_tokenizer()
    full = {"act_fn": "gelu", "normalization_type": "LN", "d_vocab": len(tokenizer), "seed": seed, **cfg}
    config = HookedTransformerConfig(**full, dtype=torch_dtype(dtype), device="cpu")
    model = HookedTransformer(config, tokenizer=tokenizer, default_padding_side="right")
    model.eval()
    return model


def random_sae(d_in: int, d_sae: int, hook_name: str, *, seed: int = 0, dtype: str = "float32", target_l0: float = 8.0) -> SAE:
    """A JumpReLU SAE with seeded random unit-norm decoder rows, encoder = decoderᵀ, and thresholds
    set so that about ``target_l0`` features fire on a Gaussian input of unit variance per dim."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    cfg = JumpReLUSAEConfig(
        d_in=d_in, d_sae=d_sae, dtype=dtype, device="cpu", metadata=SAEMetadata(hook_name=hook_name, model_name="random")
    )
    sae = JumpReLUSAE(cfg)
    w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    # With x ~ N(0, s²I) and unit rows, each pre-activation ~ N(0, s²); a threshold of z·s with
    # P(N(0,1) > z) = target_l0 / d_sae gives about target_l0 active features.
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - target_l0 / d_sae)).item()
    state = {
        "W_dec": w_dec,
        "W_enc": w_dec.T.clone(),
        "b_enc": torch.zeros(d_sae, dtype=torch.float64),
        "b_dec": torch.zeros(d_in, dtype=torch.float64),
        "threshold": torch.full((d_sae,), z, dtype=torch.float64),
    }
    sae.load_state_dict({k: v.to(torch_dtype(dtype)) for k, v in state.items()}, strict=True)
    sae.eval()
    return sae


def calibrate_thresholds(sae: SAE, acts: torch.Tensor, target_l0: float) -> None:
    """Set one JumpReLU threshold for all features so that, on these activations [n, d_in], the
    mean number of active features is ``target_l0``."""
    w_enc = sae.W_enc.detach().to(torch.float64).cpu()
    b_dec = sae.b_dec.detach().to(torch.float64).cpu()
    pre = ((acts - b_dec) @ w_enc).flatten()
    keep = max(1, min(pre.numel() - 1, round(target_l0 * acts.shape[0])))
    threshold = torch.kthvalue(pre, pre.numel() - keep).values
    sae.threshold.data.fill_(float(threshold))
