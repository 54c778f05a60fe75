"""FLOP counts against hand counts, and the matrix-product peak."""

from __future__ import annotations

from transformer_lens import HookedTransformerConfig

from saecli.config import RunConfig
from saecli.engine import Engine
from saecli.flops import ModelShape, forward_flops, measure_peak, sae_flops
from saecli.forward import ForwardPass
from saecli.plan import continuation_start


def test_tiny_model_flops_by_hand(loaded64):
    # random_loaded: d_model 32, 4 heads of 8 (no grouped KV), d_mlp 128, gelu (not gated).
    shape = ModelShape.of(loaded64.model.cfg)
    assert shape == ModelShape(d_model=32, n_heads=4, d_head=8, n_kv_heads=4, d_mlp=128, gated=False, d_vocab=257)
    # Q, K, V, O: 2·32·(4·8·2 + 4·8·2) = 8192; MLP in and out: 2·32·128·2 = 16384.
    assert shape.token_flops() == 8192 + 16384 == 24576
    assert shape.attention_flops(9) == 2 * 2 * 4 * 8 * 9 == 1152
    # Hooks at blocks 0, 1, 2 (resid_post): three blocks run. The shared-prompt batch of
    # test_engine: 8 prompts × 5, then 16 continuations × 4 after 5 cached positions.
    assert Engine(loaded64).stop_at == 3
    passes = [ForwardPass(rows=8, width=5, real=25), ForwardPass(rows=16, width=4, real=30, past=5)]
    prompt = 3 * 8 * 5 * (24576 + 128 * 5)  # 3,025,920
    continuation = 3 * 16 * 4 * (24576 + 128 * (5 + 4))  # 4,939,776
    assert forward_flops(shape, 3, passes) == prompt + continuation == 7_965_696
    # SAEs 32 → 128: 2·32·128 = 8192 per row encoded; 2·32 = 64 per decoder row multiplied.
    rows = {0: (40, 24 * 9), 1: (16, 16 * 7), 2: (16, 16 * 128)}
    assert sae_flops(loaded64.saes, rows) == 8192 * (40 + 16 + 16) + 64 * (216 + 112 + 2048) == 741_888


def test_unembedding_is_counted_at_the_scored_positions(loaded64):
    # Baselines on: the last block's residual is unembedded (2·32·257 = 16,448 FLOPs) at each
    # distinct scored position, on top of the blocks.
    shape = ModelShape.of(loaded64.model.cfg)
    assert shape.unembed_flops() == 2 * 32 * 257 == 16_448
    passes = [
        ForwardPass(rows=8, width=5, real=25, blocks=3, scored=8),
        ForwardPass(rows=16, width=4, real=30, past=5, blocks=3, scored=14),
    ]
    blocks = 3 * 8 * 5 * (24576 + 128 * 5) + 3 * 16 * 4 * (24576 + 128 * (5 + 4))
    assert forward_flops(shape, 3, passes) == blocks + (8 + 14) * 16_448


def test_engine_records_the_unembedded_positions(loaded64, samples):
    # Sequential: the prompt's pass scores nothing; F's and H's passes unembed every continuation
    # position but the last (each predicts the next token), all distinct.
    engine = Engine(loaded64, RunConfig(mode="sequential"))
    toks = engine.tokenize(samples[:2])
    for batch, t in zip(engine.run(samples[:2], toks=toks), toks, strict=True):
        expected = [0, *(len(text) - continuation_start(t.prompt, text) for text in (t.fact, t.hall))]
        assert [p.scored for p in batch.passes] == expected and all(expected[1:])
        plain = [ForwardPass(p.rows, p.width, p.real, p.past, p.blocks) for p in batch.passes]
        unembedded = forward_flops(ModelShape.of(loaded64.model.cfg), engine.stop_at, batch.passes) - forward_flops(
            ModelShape.of(loaded64.model.cfg), engine.stop_at, plain
        )
        assert unembedded == sum(expected) * 2 * 32 * 257
    # Batched with the shared-prompt path: a prompt's last position scores both continuations'
    # first tokens and is unembedded once.
    (batch,) = list(Engine(loaded64).run(samples[:8], batch_size=8))
    prompt_pass, _ = batch.passes
    assert prompt_pass.rows == 8 and prompt_pass.scored == 8
    # Without baselines nothing is unembedded.
    (batch,) = list(Engine(loaded64, RunConfig(baselines=False)).run(samples[:8], batch_size=8))
    assert all(p.scored == 0 for p in batch.passes)


def test_gated_grouped_query_shape_by_hand():
    # Gemma-2-2B's block: d_model 2304, 8 heads of 256, 4 KV heads, gated MLP of 9216.
    cfg = HookedTransformerConfig(n_layers=1, d_model=2304, n_ctx=16, d_head=256, n_heads=8, n_key_value_heads=4, d_mlp=9216,
                                  act_fn="gelu", gated_mlp=True, d_vocab=16, device="cpu")  # fmt: skip
    shape = ModelShape.of(cfg)
    assert (shape.n_kv_heads, shape.gated) == (4, True)
    assert shape.token_flops() == 2 * 2304 * (8 * 256 * 2 + 4 * 256 * 2) + 2 * 2304 * 9216 * 3 == 155_713_536
    attn_only = ModelShape.of(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=2, n_heads=4, attn_only=True,
                                                      act_fn="gelu", d_vocab=4, device="cpu"))  # fmt: skip
    assert attn_only.token_flops() == 2 * 8 * (4 * 2 * 2 + 4 * 2 * 2)


def test_measure_peak_is_positive():
    import torch

    assert measure_peak("cpu", torch.float32, n=128, repeats=2) > 0
