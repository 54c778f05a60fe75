"""The engine on a seeded random model: exactness of batching, padding, prefix sharing and order."""

from __future__ import annotations

import random

import pytest
import torch

from saecli.columns import metric_columns
from saecli.config import RunConfig
from saecli.data import Sample
from saecli.engine import Engine, analyze
from saecli.forward import Forward
from saecli.plan import SampleTokens, continuation_start, forwarded_positions, plan_batches
from saecli.sae_stage import _decodes_linearly, noise_vector


def _by_id(rows):
    return {r["sample_id"]: r for r in rows}


def _max_diff(a: dict, b: dict) -> float:
    worst = 0.0
    assert a.keys() == b.keys()
    for sid in a:
        for col, va in a[sid].items():
            vb = b[sid][col]
            if isinstance(va, float):
                worst = max(worst, abs(va - vb))
            else:
                assert va == vb, (sid, col, va, vb)
    return worst


def test_padded_text_gives_same_residual_as_alone(loaded64):
    engine = Engine(loaded64)
    model = loaded64.model
    short, long = model.to_tokens("Paris")[0].tolist(), model.to_tokens("The capital of France is Paris")[0].tolist()
    together = engine.forward.one_pass([long, short], [(1, len(short) - 1)]).acts
    alone = engine.forward.one_pass([short], [(0, len(short) - 1)]).acts
    for hook in together:
        assert torch.allclose(together[hook], alone[hook], atol=1e-12, rtol=0)


def test_padding_positions_would_differ(loaded64):
    # The guard above means something: reading a padding position gives a different vector.
    engine = Engine(loaded64)
    short = loaded64.model.to_tokens("Paris")[0].tolist()
    long = loaded64.model.to_tokens("The capital of France is Paris")[0].tolist()
    real = engine.forward.one_pass([long, short], [(1, len(short) - 1)]).acts
    padded = engine.forward.one_pass([long, short], [(1, len(long) - 1)]).acts
    hook = next(iter(real))
    assert not torch.allclose(real[hook], padded[hook], atol=1e-6)


def test_batched_equals_sequential_float64(loaded64, samples):
    batched = _by_id(analyze(samples, loaded64, batch_size=7))
    reference = _by_id(analyze(samples, loaded64, sequential=True))
    assert _max_diff(batched, reference) <= 1e-9


def test_analyze_options_apply_over_a_run_config(loaded64, samples):
    config = RunConfig(noise_std=0.0, batch_size=4, baselines=False)
    given = _by_id(analyze(samples[:6], loaded64, config))
    assert given == _by_id(analyze(samples[:6], loaded64, noise_std=0.0, batch_size=4, baselines=False))
    assert all(r["stability_fact"] == 1.0 and r["logprob_sum_fact"] is None for r in given.values())
    over = _by_id(analyze(samples[:6], loaded64, config, baselines=True, sequential=True))
    assert all(r["logprob_sum_fact"] is not None for r in over.values())
    metric = [c for c in metric_columns(loaded64.layers) if not c.startswith("logprob")]
    assert (
        _max_diff(
            {s: {c: r[c] for c in metric} for s, r in given.items()}, {s: {c: r[c] for c in metric} for s, r in over.items()}
        )
        <= 1e-9
    )


def test_rows_in_input_order_with_spec_columns(loaded64, samples):
    rows = list(analyze(samples[:9], loaded64, batch_size=4))
    assert [r["sample_id"] for r in rows] == [s.id for s in samples[:9]]
    assert list(rows[0]) == ["sample_id", "domain", "topic", "complexity", *metric_columns(loaded64.layers)]


def test_order_and_grouping_do_not_change_results(loaded64, samples):
    base = _by_id(analyze(samples, loaded64, batch_size=5))
    shuffled = list(samples)
    random.Random(1).shuffle(shuffled)
    for batch_size in (1, 3, 24):
        assert _max_diff(base, _by_id(analyze(shuffled, loaded64, batch_size=batch_size))) <= 1e-9


def test_prompt_without_shared_prefix_gets_own_pass(loaded64, samples, monkeypatch):
    shared = _by_id(analyze(samples[:6], loaded64, batch_size=6))
    monkeypatch.setattr(SampleTokens, "prompt_in_fact", property(lambda self: False))
    own = _by_id(analyze(samples[:6], loaded64, batch_size=6))
    assert _max_diff(shared, own) <= 1e-9


def test_prompt_is_prefix_for_byte_tokenizer(loaded64, samples):
    toks = Engine(loaded64).tokenize(samples)
    assert all(t.prompt_in_fact for t in toks)
    assert all(t.prompt[0] == loaded64.model.tokenizer.bos_token_id for t in toks)
    assert sum(t.prompt[0] == t.prompt[1] for t in toks) == 0  # exactly one BOS


def test_noise_depends_on_seed_sample_and_text_only():
    a = noise_vector(0, "s1", "fact", 16)
    assert torch.equal(a, noise_vector(0, "s1", "fact", 16))
    assert not torch.equal(a, noise_vector(1, "s1", "fact", 16))
    assert not torch.equal(a, noise_vector(0, "s2", "fact", 16))
    assert not torch.equal(a, noise_vector(0, "s1", "hall", 16))


def test_noise_changes_stability_only(loaded64, samples):
    quiet = _by_id(analyze(samples[:8], loaded64, noise_std=0.0))
    loud = _by_id(analyze(samples[:8], loaded64, noise_std=50.0))
    assert all(r["stability_fact"] == 1.0 for r in quiet.values())
    assert any(r["stability_fact"] < 1.0 for r in loud.values())
    sid = samples[0].id
    assert quiet[sid]["entropy_fact"] == loud[sid]["entropy_fact"]


def test_realistic_sparsity_of_random_saes(loaded64, samples):
    rows = list(analyze(samples, loaded64))
    l0 = [r[f"l{layer}_fact_l0_norm"] for r in rows for layer in loaded64.layers]
    assert 0 < sum(l0) / len(l0) < 0.2 * 128


def test_text_longer_than_context_is_an_error(loaded64):
    from saecli.data import Sample
    from saecli.errors import SaecliError

    long = Sample(id="x", domain="entity", prompt="word " * 200, fact="a", hallucination="b")
    with pytest.raises(SaecliError, match="'x'"):
        list(analyze([long], loaded64))


def test_resid_pre_is_read_from_previous_block(loaded64):
    import dataclasses

    pre = dataclasses.replace(loaded64, hooks={layer: f"blocks.{layer}.hook_resid_pre" for layer in loaded64.layers})
    engine = Engine(pre)
    assert engine.stop_at == max(loaded64.layers)  # the deepest block itself need not run
    tokens = loaded64.model.to_tokens("The capital of France is Paris")[0].tolist()
    got = engine.forward.one_pass([tokens], [(0, len(tokens) - 1)]).acts
    _, cache = loaded64.model.run_with_cache(torch.tensor([tokens]))
    for hook, value in got.items():
        assert torch.equal(value[0], cache[hook][0, -1])


def test_mixed_shared_and_unshared_prompts(loaded64, samples, monkeypatch):
    reference = _by_id(analyze(samples[:20], loaded64, sequential=True))
    # Some samples take the shared-prompt (KV cache) path, the others their own passes.
    monkeypatch.setattr(SampleTokens, "prompt_in_hall", property(lambda self: len(self.prompt) % 3 != 0))
    assert _max_diff(reference, _by_id(analyze(samples[:20], loaded64, batch_size=20))) <= 1e-9


@pytest.mark.parametrize("window", [8, 4096])
def test_rotary_gqa_model_batched_equals_sequential(samples, window):
    from helpers import random_loaded

    # window 8 is shorter than the texts: the shared-prompt path must step aside (see
    # Forward._cache_is_exact); 4096 (Gemma-2's) takes it.
    # Gemma-like attention: rotary positions, grouped key/value heads, RMS norm, local windows.
    loaded = random_loaded(
        dtype="float64",
        seed=3,
        model_overrides={
            "positional_embedding_type": "rotary",
            "rotary_dim": 8,
            "n_key_value_heads": 2,
            "normalization_type": "RMS",
            "use_local_attn": True,
            "window_size": window,
            "attn_types": ["local", "global", "local"],
            "gated_mlp": True,
        },
    )
    reference = _by_id(analyze(samples[:12], loaded, sequential=True))
    assert _max_diff(reference, _by_id(analyze(samples[:12], loaded, batch_size=12))) <= 1e-9


def test_shared_prompt_path_is_taken_for_large_batches(loaded64, samples, monkeypatch):
    calls = []
    original = Forward.shared_prompt
    monkeypatch.setattr(Forward, "shared_prompt", lambda self, toks: calls.append(len(toks)) or original(self, toks))
    list(analyze(samples[:12], loaded64, batch_size=12))
    list(analyze(samples[:12], loaded64, batch_size=4))
    assert calls == [12]


# -- forwarded positions: padding counted per pass ------------------------------------------------


def _run_known(loaded, lengths):
    """One batch of samples with hand-made token ids: (prompt, fact, hall) lengths, or a negative
    prompt length for a prompt that is not a prefix of its texts."""
    samples, toks = [], []
    for i, (p, f, h) in enumerate(lengths):
        prompt = list(range(10, 10 + abs(p)))
        if p < 0:
            prompt = [60 + t for t in prompt]  # not a prefix of the fact or hallucination text
        base = list(range(10, 10 + max(f, h) + abs(p)))
        fact = (prompt + base[abs(p) : f]) if p > 0 else base[:f]
        hall = (prompt + [40 + t for t in base[abs(p) : h]]) if p > 0 else [40 + t for t in base[:h]]
        samples.append(Sample(id=f"s{i}", domain="d", prompt="p", fact="f", hallucination="h"))
        toks.append(SampleTokens(prompt, fact, hall))
    engine = Engine(loaded)
    (batch,) = list(engine.run(samples, batch_size=len(samples), toks=toks))
    return engine, batch


def test_forwarded_tokens_full_pass(loaded64):
    # 3 samples (< MIN_SHARED_PROMPT): one pass. A and B read their prompt from the fact row; C's
    # prompt is not a prefix, so it gets a row of its own. Rows: 5, 6 | 4, 3 | 5, 5, 4 → 7 rows × 6.
    engine, batch = _run_known(loaded64, [(3, 5, 6), (2, 4, 3), (-4, 5, 5)])
    assert [(p.rows, p.width, p.past, p.real) for p in batch.passes] == [(7, 6, 0, 32)]
    assert batch.tokens == (3 + 5 + 6) + (2 + 4 + 3) + (4 + 5 + 5) == 37  # unchanged meaning: P + F + H
    assert batch.forwarded_tokens == 42 and batch.forwarded_real_tokens == 32
    assert batch.padding_fraction == pytest.approx(10 / 42)
    # SAE rows: the first layer encodes its 3·3 reads, and again the 3·2 F and H reads with noise;
    # each layer's reconstructions multiply the active decoder rows of its reads (one chunk here:
    # every read padded to the widest).
    first, *others = engine.layers
    assert {layer: encoded for layer, (encoded, _) in batch.sae_rows.items()} == {first: 15, **{layer: 6 for layer in others}}
    d_sae = loaded64.saes[first].cfg.d_sae
    for layer in others:  # 6 reads: one chunk, padded to the widest (both known from the rows)
        l0 = [row[f"l{layer}_{kind}_l0_norm"] for row in batch.rows for kind in ("fact", "hall")]
        assert batch.sae_rows[layer][1] == 6 * max(max(l0), 1) < 6 * d_sae
    l0 = [row[f"l{first}_{kind}_l0_norm"] for row in batch.rows for kind in ("fact", "hall")]
    assert sum(l0) <= batch.sae_rows[first][1] < 9 * d_sae


def test_forwarded_tokens_shared_prompt(loaded64):
    # 8 samples whose prompts start both texts: a prompt pass (8 rows × 5) and a continuation
    # pass (16 rows × 4, attending to the 5 cached prompt positions).
    prompts, fact_tails, hall_tails = [2, 3, 4, 2, 3, 4, 2, 5], [1, 2, 3, 1, 2, 3, 4, 1], [2, 1, 1, 3, 2, 2, 1, 1]
    lengths = [(p, p + f, p + h) for p, f, h in zip(prompts, fact_tails, hall_tails, strict=True)]
    _, batch = _run_known(loaded64, lengths)
    assert [(p.rows, p.width, p.past, p.real) for p in batch.passes] == [(8, 5, 0, 25), (16, 4, 5, 17 + 13)]
    assert batch.forwarded_tokens == 40 + 64 and batch.forwarded_real_tokens == 25 + 30
    assert batch.tokens == 3 * 25 + 30  # each prompt counted in P, F and H, forwarded once
    assert batch.padding_fraction == pytest.approx(49 / 104)


def test_sequential_forwards_no_padding(loaded64, samples):
    batches = list(Engine(loaded64, RunConfig(mode="sequential")).run(samples[:3]))
    assert all(len(b.passes) == 3 and b.forwarded_tokens == b.forwarded_real_tokens == b.tokens for b in batches)
    assert all(b.padding_fraction == 0.0 for b in batches)


def test_sparse_reconstruction_equals_sae_decode(loaded64, samples):
    engine = Engine(loaded64)
    layer = engine.layers[1]
    sae = loaded64.saes[layer]
    assert _decodes_linearly(sae)
    toks = engine.tokenize(samples[:6])
    with torch.inference_mode():
        x = engine.forward.batched(toks).acts[engine.hooks[1]]
        out, _ = engine.sae.layer(layer, x, first=False, noise=None)
        assert torch.allclose(out.x_hat, sae.decode(sae.encode(x)), atol=1e-12, rtol=0)


def test_sae_with_activation_normalisation_is_decoded_by_itself(loaded64, monkeypatch):
    sae = next(iter(loaded64.saes.values()))
    monkeypatch.setattr(sae.cfg, "normalize_activations", "constant_norm_rescale")
    assert not _decodes_linearly(sae)


def _hb_like_tokens(n: int, seed: int = 0) -> list[SampleTokens]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [1] + [rng.randrange(2, 50) for _ in range(rng.randrange(2, 28))]
        fact = prompt + [rng.randrange(2, 50) for _ in range(rng.randrange(1, 15))]
        hall = prompt + [rng.randrange(2, 50) for _ in range(rng.randrange(1, 15))]
        out.append(SampleTokens(prompt, fact, hall))
    return out


@pytest.mark.parametrize("batch_size", [1, 5, 16, 32])
def test_plan_covers_every_sample_once_short_batch_last(batch_size):
    toks = _hb_like_tokens(103)
    batches = plan_batches(toks, batch_size)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    full = [forwarded_positions([toks[i] for i in b]) for b in batches if len(b) == batch_size]
    assert full == sorted(full, reverse=True)  # the heaviest batch first: an OOM shows at once


def test_plan_forwards_less_padding_than_sorting_by_length():
    toks = _hb_like_tokens(400, seed=3)
    by_length = sorted(range(len(toks)), key=lambda i: (-toks[i].length, i))
    old = sum(forwarded_positions([toks[i] for i in by_length[j : j + 16]]) for j in range(0, len(toks), 16))
    new = sum(forwarded_positions([toks[i] for i in b]) for b in plan_batches(toks, 16))
    assert new < 0.95 * old


def _logprob_by_hand(model, prompt_ids, text_ids):
    """Σ and mean of log p(text token | preceding) over the continuation, from the model's full logits."""
    logits = model(torch.tensor([text_ids]))[0].to(torch.float64)
    logprob = torch.log_softmax(logits, -1)
    start = continuation_start(prompt_ids, text_ids)
    values = [logprob[p, text_ids[p + 1]].item() for p in range(start - 1, len(text_ids) - 1)]
    return sum(values), sum(values) / len(values)


@pytest.mark.parametrize("batch_size", [1, 3, 12])
def test_logprob_baselines_equal_the_models_own_logits(loaded64, samples, batch_size):
    # 12 samples take the shared-prompt path (prompt pass + cached continuation pass); 3 the full pass.
    engine = Engine(loaded64)
    rows = {r["sample_id"]: r for r in analyze(samples[:12], loaded64, batch_size=batch_size)}
    for sample, toks in zip(samples[:12], engine.tokenize(samples[:12]), strict=True):
        for kind, text in (("fact", toks.fact), ("hall", toks.hall)):
            total, mean = _logprob_by_hand(loaded64.model, toks.prompt, text)
            assert rows[sample.id][f"logprob_sum_{kind}"] == pytest.approx(total, abs=1e-9)
            assert rows[sample.id][f"logprob_mean_{kind}"] == pytest.approx(mean, abs=1e-9)
        row = rows[sample.id]
        assert row["logprob_sum_diff"] == pytest.approx(row["logprob_sum_fact"] - row["logprob_sum_hall"], abs=1e-12)


def test_without_baselines_the_pass_stops_early_and_the_columns_are_null(loaded64, samples):
    with_baselines = Engine(loaded64)
    without = Engine(loaded64, RunConfig(baselines=False))
    (a,) = list(with_baselines.run(samples[:4], batch_size=4))
    (b,) = list(without.run(samples[:4], batch_size=4))
    assert all(p.blocks == loaded64.model.cfg.n_layers for p in a.passes)
    assert all(p.blocks == without.stop_at for p in b.passes)
    assert b.residuals is None and all(row["logprob_sum_fact"] is None for row in b.rows)
    metric = [c for c in a.rows[0] if not c.startswith("logprob")]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert all(ra[c] == rb[c] or abs(ra[c] - rb[c]) <= 1e-12 for c in metric if ra[c] is not None)


def test_residuals_kept_are_what_the_saes_read(loaded64, samples):
    engine = Engine(loaded64)
    (batch,) = list(engine.run(samples[:5], batch_size=5))
    kept = batch.residuals
    assert kept.sample_ids == [samples[i].id for i in batch.indices]
    toks = engine.tokenize([samples[i] for i in batch.indices])
    for t, sid in zip(toks, kept.sample_ids, strict=True):
        with torch.inference_mode():
            alone = engine.forward.sequential(t).acts
        i = kept.sample_ids.index(sid)
        for layer, hook in zip(engine.layers, engine.hooks, strict=True):
            sae = loaded64.saes[layer]
            for k, kind in enumerate(("fact", "hall")):
                x = alone[hook][k + 1]
                assert kept.dense[f"l{layer}_{kind}"][i] == pytest.approx(x.float().numpy(), abs=1e-6)
                with torch.inference_mode():
                    f = sae.encode(x.unsqueeze(0))[0]
                row = kept.features[f"l{layer}_{kind}"][i].toarray()[0]
                assert set(row.nonzero()[0]) == set(torch.nonzero(f > 0)[:, 0].tolist())
                assert row == pytest.approx(f.float().numpy(), abs=1e-6)
