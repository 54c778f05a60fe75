"""``--truncate``: a sample longer than the model's context is cut to it from the left as one window,
and every path (the full pass, the shared-prompt path, sequential) scores and reads that window as
the model itself does, by hand, on the cut tokens (issue 20)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_loaded

from saecli.config import RunConfig
from saecli.data import Sample
from saecli.engine import Engine, analyze
from saecli.errors import SaecliError

N_CTX = 48
BOS = 9


@pytest.fixture(scope="module")
def loaded48():
    # Byte tokens: a character is a token, so a sample's length is its text's, plus the BOS.
    return random_loaded(dtype="float64", seed=5, n_ctx=N_CTX)


def _samples() -> list[Sample]:
    long_prompt = "Here is a long document about the weather in many towns. " * 3  # 174 tokens > N_CTX
    specs = [
        (long_prompt + "Summary:", "It rains.", "It snows a lot."),  # the prompt's start is cut
        (long_prompt + "In short", "Dry.", "Wet and windy."),
        (("Tell me more about it: " * 2).strip(), "Fine.", "It is hot."),  # partly cut prompt
        ("Q: capital of France? A:", "Paris", "Berlin, a city of many, many people and of long rivers, it is."),
        ("Q:", "x" * 80, "y"),  # a continuation longer than the window: all continuation after the BOS
        ("Q:", "yes", "no"),  # fits: left as it is
        ("Where is the cat?", "On the mat.", "In the sky."),
        (long_prompt.strip(), "a", "b"),
        ("Name a colour.", "Blue.", "Loud."),
        (long_prompt[:60] + "?", "Rather long answer here, it is.", "No."),
    ]
    return [Sample(f"t{i}", "test", p, f, h) for i, (p, f, h) in enumerate(specs)]


def _own_tokens(loaded, sample: Sample) -> tuple[list[int], list[int], list[int]]:
    """The uncut P, F, H tokens and each continuation's own tokens (F and H minus the prompt)."""
    model = loaded.model
    p, f, h = (model.to_tokens(t, truncate=False)[0].tolist() for t in (sample.prompt, sample.fact_text, sample.hall_text))
    assert f[: len(p)] == p and h[: len(p)] == p  # byte tokens: the prompt is a prefix
    return p, f, h


def _window(loaded, sample: Sample) -> tuple[list[int], list[int], list[int], int, int]:
    """The window by the definition, built here from the uncut tokens: the longer text keeps its BOS
    and its last N_CTX − 1 tokens; P' is what is left of the prompt in it, the same for F and H
    (just the BOS when a continuation fills the window); a text is P' and its continuation's last
    tokens. Returns P', F', H' and how many tokens of F' and H' are scored (their own, after P')."""
    p, f, h = _own_tokens(loaded, sample)
    length = max(len(f), len(h))
    if length <= N_CTX:
        return p, f, h, len(f) - len(p), len(h) - len(p)
    kept_prompt = max(1, len(p) - (length - N_CTX))
    prompt = [p[0]] + p[len(p) - kept_prompt + 1 :]

    def text(t: list[int]) -> list[int]:
        own = t[len(p) :]
        if len(prompt) + len(own) <= N_CTX:
            return prompt + own
        return [t[0]] + own[len(own) - (N_CTX - 1) :]

    fact, hall = text(f), text(h)
    scored = [min(len(t) - len(p), len(w) - 1) for t, w in ((f, fact), (h, hall))]
    return prompt, fact, hall, scored[0], scored[1]


def _logprob_by_hand(model, text: list[int], scored: int) -> tuple[float, float]:
    """Σ and mean of log p(token | preceding) over the last ``scored`` tokens, from the model's logits."""
    with torch.inference_mode():
        logprob = torch.log_softmax(model(torch.tensor([text]))[0].to(torch.float64), -1)
    values = [logprob[q - 1, text[q]].item() for q in range(len(text) - scored, len(text))]
    return sum(values), sum(values) / len(values)


def _resid_by_hand(model, text: list[int], hook: str) -> torch.Tensor:
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor([text]), names_filter=hook)
    return cache[hook][0, -1]


def test_the_engine_cuts_to_the_window_of_the_definition(loaded48):
    from saecli.plan import shared_prompt_rows

    samples = _samples()
    toks = Engine(loaded48, RunConfig(truncate=True)).tokenize(samples)
    assert sum(max(len(s.fact_text), len(s.hall_text)) + 1 > N_CTX for s in samples) == 7
    for sample, t in zip(samples, toks, strict=True):
        prompt, fact, hall, fact_scored, hall_scored = _window(loaded48, sample)
        assert (t.prompt, t.fact, t.hall) == (prompt, fact, hall), sample.id
        assert (len(t.fact) - t.fact_start, len(t.hall) - t.hall_start) == (fact_scored, hall_scored), sample.id
        assert t.length <= N_CTX and t.fact[0] == t.hall[0] == t.prompt[0] == loaded48.model.tokenizer.bos_token_id
    # Every sample keeps the prompt as a prefix of both texts: all take the shared-prompt path.
    assert shared_prompt_rows(toks) == list(range(len(samples)))
    with pytest.raises(SaecliError, match="more than the model's context of 48"):
        Engine(loaded48).tokenize(samples)


@pytest.mark.parametrize("mode", ["shared", "full", "own_prompt_pass", "sequential"])
def test_truncated_scores_and_reads_equal_the_model_by_hand(loaded48, mode, monkeypatch):
    from saecli.plan import SampleTokens

    samples = _samples()
    if mode == "own_prompt_pass":  # the prompt forwarded in a row of its own, not read from F's row
        monkeypatch.setattr(SampleTokens, "prompt_in_fact", property(lambda self: False))
    config = RunConfig(truncate=True, mode="sequential" if mode == "sequential" else "batched")
    engine = Engine(loaded48, config)
    batch_size = {"shared": len(samples), "full": 3, "own_prompt_pass": len(samples), "sequential": 1}[mode]
    results = list(engine.run(samples, batch_size=batch_size))
    if mode == "shared":
        assert any(p.past > 0 for p in results[0].passes)  # the prompt cache was used
    else:
        assert all(p.past == 0 for r in results for p in r.passes)
    model = loaded48.model
    checked = 0
    for result in results:
        rows = dict(zip(result.indices, result.rows, strict=True))
        for i in result.indices:
            sample, row = samples[i], rows[i]
            k = result.residuals.sample_ids.index(sample.id)
            prompt, fact, hall, fact_scored, hall_scored = _window(loaded48, sample)
            for kind, text, scored in (("fact", fact, fact_scored), ("hall", hall, hall_scored)):
                total, mean = _logprob_by_hand(model, text, scored)
                assert row[f"logprob_sum_{kind}"] == pytest.approx(total, abs=1e-9, rel=0), (sample.id, kind)
                assert row[f"logprob_mean_{kind}"] == pytest.approx(mean, abs=1e-9, rel=0), (sample.id, kind)
                for layer in engine.layers:
                    x = _resid_by_hand(model, text, loaded48.hooks[layer])
                    kept = result.residuals.dense[f"l{layer}_{kind}"][k]
                    assert kept == pytest.approx(x.float().numpy(), abs=1e-6), (sample.id, kind, layer)
                    sae = loaded48.saes[layer]
                    with torch.inference_mode():
                        f = sae.encode(x[None])[0]
                        error = (x - sae.decode(f[None])[0]).norm().item()
                    assert row[f"l{layer}_{kind}_reconstruction_error"] == pytest.approx(error, abs=1e-9, rel=0)
                    assert row[f"l{layer}_{kind}_l0_norm"] == int((f > 0).sum())
            checked += 1
    assert checked == len(samples)


@pytest.mark.parametrize("mode", ["shared", "full", "sequential"])
def test_truncated_prompt_read_is_the_prompts_last_token_in_the_window(loaded48, mode):
    # The prompt's read (behind drift and twist) is P' forwarded alone, = its last token inside F'.
    samples = _samples()
    engine = Engine(loaded48, RunConfig(truncate=True))
    toks = engine.tokenize(samples)
    with torch.inference_mode():
        if mode == "sequential":
            reads = [engine.forward.sequential(t).acts for t in toks]
            prompt_reads = {h: torch.stack([r[h][0] for r in reads]) for h in engine.hooks}
        else:
            batch = toks if mode == "shared" else toks[:3]
            acts = engine.forward.batched(batch).acts
            prompt_reads = {h: v[: len(batch)] for h, v in acts.items()}
    for i, reads_i in enumerate(zip(*prompt_reads.values(), strict=True)):
        prompt, fact, *_ = _window(loaded48, samples[i])
        for hook, value in zip(prompt_reads, reads_i, strict=True):
            assert fact[: len(prompt)] == prompt  # P' ends where the prompt ends inside F'
            assert torch.allclose(value, _resid_by_hand(loaded48.model, prompt, hook), atol=1e-10, rtol=0), (i, hook)


def test_a_cut_prompt_scores_only_the_continuation(loaded48):
    # Issue 20: the prompt and the texts were cut apart, so the continuation "started" after the
    # BOS and the whole window was scored (−1129 over 127 tokens instead of −31 over 4 on a real model).
    sample = _samples()[0]
    (row,) = analyze([sample], loaded48, truncate=True, batch_size=1)
    _, fact, _, scored, _ = _window(loaded48, sample)
    assert scored == len(" It rains.") < len(fact) - 1
    total, _ = _logprob_by_hand(loaded48.model, fact, scored)
    whole, _ = _logprob_by_hand(loaded48.model, fact, len(fact) - 1)
    assert row["logprob_sum_fact"] == pytest.approx(total, abs=1e-9, rel=0)
    assert abs(row["logprob_sum_fact"] - whole) > 10.0
    assert row["logprob_sum_fact"] == pytest.approx(row["logprob_mean_fact"] * scored, abs=1e-9, rel=0)


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_truncated_batched_equals_sequential_float64(loaded48, batch_size):
    samples = _samples()
    batched = {r["sample_id"]: r for r in analyze(samples, loaded48, truncate=True, batch_size=batch_size)}
    reference = {r["sample_id"]: r for r in analyze(samples, loaded48, truncate=True, sequential=True)}
    assert batched.keys() == reference.keys()
    for sid, row in batched.items():
        for col, value in row.items():
            if isinstance(value, float):
                assert value == pytest.approx(reference[sid][col], abs=1e-9, rel=0), (sid, col)
            else:
                assert value == reference[sid][col], (sid, col)


def test_cut_to_context_on_plain_tokens():
    from saecli.plan import SampleTokens, cut_to_context

    prompt = [BOS, *range(10, 30)]  # 21 tokens
    t = SampleTokens(prompt, prompt + [1, 2, 3], prompt + [4, 5])
    assert cut_to_context(t, 24, BOS) is t  # fits
    cut = cut_to_context(t, 10, BOS)  # 14 tokens go: the prompt keeps its BOS and last 6 tokens
    assert cut.prompt == [BOS, *range(24, 30)]
    assert (cut.fact, cut.hall) == (cut.prompt + [1, 2, 3], cut.prompt + [4, 5])
    assert (cut.fact_start, cut.hall_start) == (7, 7) and cut.shares_prompt
    # A continuation longer than the window: the window is all continuation after the BOS, and the
    # other text keeps the same (empty) prompt: both still start right after P' = [BOS].
    long = SampleTokens(prompt, prompt + list(range(100, 140)), prompt + [4, 5])
    cut = cut_to_context(long, 16, BOS)
    assert cut.prompt == [BOS] and cut.fact == [BOS, *range(125, 140)] and cut.hall == [BOS, 4, 5]
    assert (cut.fact_start, cut.hall_start) == (1, 1) and cut.shares_prompt
    # Without a BOS: the first tokens go, the prompt keeps at least its last token.
    bare = SampleTokens(prompt[1:], prompt[1:] + [1, 2, 3], prompt[1:] + [4])
    cut = cut_to_context(bare, 8, None)
    assert cut.prompt == [25, 26, 27, 28, 29] and cut.fact == [25, 26, 27, 28, 29, 1, 2, 3]
    assert cut.fact_start == 5 and cut.hall == [25, 26, 27, 28, 29, 4] and cut.hall_start == 5
    assert len(cut_to_context(bare, 2, None).fact) == 2 and cut_to_context(bare, 2, None).fact_start == 1


def test_a_truncated_run_from_before_the_fix_is_not_resumed(tmp_path):
    """A --truncate run written by the old cut (no `truncation` in its identity) is refused, not mixed."""
    from saecli.config import RunConfig
    from saecli.errors import SaecliError
    from saecli.manifest import check_resumable as _check_resumable
    from saecli.manifest import identity

    current = identity(RunConfig(truncate=True), [0, 2, 3], "float32", "0" * 16)
    old = {k: v for k, v in current.items() if k != "truncation"}
    with pytest.raises(SaecliError, match="truncation"):
        _check_resumable({"identity": old}, current, tmp_path)
    plain = identity(RunConfig(), [0, 2, 3], "float32", "0" * 16)
    _check_resumable(
        {"identity": {k: v for k, v in plain.items() if k != "truncation"}}, plain, tmp_path
    )  # untruncated: as before
