"""Seeded random models and SAEs built from a config in milliseconds: for tests, and for
benchmarking the engine's cost without weights. Their metrics mean nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from saecli.config import ModelSpec, Preset, SAESpec
from saecli.models import LoadedPreset, sae_dtype_for, torch_dtype

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


def random_sae(
    d_in: int, d_sae: int, hook_name: str, *, seed: int = 0, dtype: str = "float32", target_l0: float = 8.0
) -> SAE:
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


def random_loaded(
    *,
    n_layers: int = 3,
    d_model: int = 32,
    d_sae: int = 128,
    layers: tuple[int, int, int] = (0, 1, 2),
    dtype: str = "float64",
    seed: int = 0,
    target_l0: float = 8.0,
    n_ctx: int = 128,
    model_overrides: dict[str, Any] | None = None,
) -> LoadedPreset:
    """A complete :class:`LoadedPreset` with random weights (tests: milliseconds on a CPU)."""
    model = random_model(
        {"n_layers": n_layers, "d_model": d_model, "n_heads": 4, "d_head": d_model // 4, "d_mlp": 4 * d_model, "n_ctx": n_ctx,
         **(model_overrides or {})},
        seed=seed,
        dtype=dtype,
    )
    sae_dtype = sae_dtype_for(dtype)
    # The residual stream of a random model grows through the layers; scale each SAE's threshold
    # to the spread of its layer so every layer stays sparse.
    probe = model.to_tokens(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."])
    _, cache = model.run_with_cache(probe, names_filter=lambda n: n.endswith("hook_resid_post"))
    saes, hooks = {}, {}
    for i, layer in enumerate(layers):
        hook = f"blocks.{layer}.hook_resid_post"
        sae = random_sae(d_model, d_sae, hook, seed=seed + 1 + i, dtype=sae_dtype, target_l0=target_l0)
        spread = cache[hook].to(torch.float64).std().item()
        sae.threshold.data *= spread
        saes[layer], hooks[layer] = sae, hook
    preset = Preset(
        name="random",
        description="seeded random weights (tests only)",
        model=ModelSpec(name="random", dtype=dtype),
        saes=tuple(SAESpec(layer=layer, path=f"memory:{layer}") for layer in layers),
        synthetic=True,
    )
    return LoadedPreset(
        preset=preset,
        model=model,
        saes=saes,
        hooks=hooks,
        device="cpu",
        device_reason="tests",
        dtype=dtype,
        sae_dtype=sae_dtype,
        load_seconds=0.0,
        identities={"model": "random", "saes": {}},
    )
