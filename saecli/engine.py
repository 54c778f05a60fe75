"""The analysis engine, shared by ``run`` (batched) and ``sequential`` (the reference).

Batched: samples are ordered by token length and cut into batches; each batch runs one forward
pass over its fact and hallucination texts (right-padded, so causal attention keeps every real
token's residual equal to its unpadded value), capturing only the SAE hooks at the positions read
and stopping after the deepest hooked block. The prompt's residual is read from the fact text's
pass at the prompt's last position when the prompt's tokens are a prefix of the fact text's; where
they are not, the prompt gets a row of its own. SAE encode/decode and the Gram-matrix geometry run
on all reads of a layer at once.

Sequential: every text in its own forward pass (no padding, no prefix sharing), every activation
through the SAE and the geometry on its own; the same metric functions, one row at a time.

The engine works on any list of samples and returns results keyed by the sample's position, so a
caller can shard samples across processes and merge by sample id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from saecli import geometry, metrics
from saecli.columns import BASELINE_METRICS, KINDS, LAYER_METRICS, metric_columns
from saecli.config import check_batch_size, check_noise_std, check_seed
from saecli.data import Sample
from saecli.device import torch_dtype
from saecli.errors import SaecliError
from saecli.faults import oom_point
from saecli.memory import is_out_of_memory
from saecli.models import LoadedPreset
from saecli.residuals import Residuals, residual_key

log = logging.getLogger(__name__)

MIN_SHARED_PROMPT = 8
"""Samples a batch needs before its prompts get a pass of their own (the shared-prompt path)."""
GEOMETRY_CHUNK = 8
"""Rows per call of the geometry, after sorting a layer's reads by their number of active features."""


def _decodes_linearly(sae: Any) -> bool:
    """Whether ``sae.decode(f)`` is ``f @ W_dec + b_dec`` through identity hooks (SAELens's standard
    and JumpReLU SAEs without activation normalisation or hook_z reshaping): then the reconstruction
    is summed over the active features alone, from the decoder rows the geometry gathers anyway,
    instead of a product with all d_sae rows. Any other SAE is decoded by its own ``decode``."""
    from sae_lens import JumpReLUSAE, StandardSAE

    decode = getattr(type(sae), "decode", None)
    hook = getattr(sae.cfg.metadata, "hook_name", None) or ""
    return (
        decode in (StandardSAE.decode, JumpReLUSAE.decode)
        and getattr(sae.cfg, "normalize_activations", "none") in ("none", None)
        and not hook.endswith("_z")
    )


def noise_vector(seed: int, sample_id: str, kind: str, d_model: int) -> torch.Tensor:
    """ε ~ N(0, I) in float64 from a generator seeded by (seed, sample id, text kind), so a
    sample's noise never depends on batch size, order or worker."""
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{kind}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(d_model, generator=generator, dtype=torch.float64)


_FINAL = "__final_resid__"


def continuation_start(prompt: Sequence[int], text: Sequence[int]) -> int:
    """Where a text's continuation starts: after its longest common prefix with the prompt's tokens
    (all of the prompt's when they are a prefix, as they usually are), and at least at token 1
    (the BOS, or the first token, is never scored) and at most at its last token."""
    common = 0
    for a, b in zip(prompt, text, strict=False):
        if a != b:
            break
        common += 1
    return max(1, min(common, len(text) - 1))


_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _earliest_equivalent(hook: str) -> str:
    """``blocks.L.hook_resid_pre`` holds exactly ``blocks.{L-1}.hook_resid_post`` (the previous
    block's output is the next block's input), which lets the pass stop one block earlier."""
    match = _RESID_PRE.match(hook)
    if match and int(match.group(1)) > 0:
        return f"blocks.{int(match.group(1)) - 1}.hook_resid_post"
    return hook


def _block_of(hook: str) -> int:
    """The block whose forward fires this hook (hooks before the first block count as -1)."""
    match = _BLOCK.match(hook)
    return int(match.group(1)) if match else -1


@dataclass
class SampleTokens:
    """Token ids of a sample's three texts, each tokenized alone as the model does."""

    prompt: list[int]
    fact: list[int]
    hall: list[int]

    @property
    def prompt_in_fact(self) -> bool:
        n = len(self.prompt)
        return len(self.fact) >= n and self.fact[:n] == self.prompt

    @property
    def prompt_in_hall(self) -> bool:
        n = len(self.prompt)
        return len(self.hall) >= n and self.hall[:n] == self.prompt

    @property
    def length(self) -> int:
        return max(len(self.fact), len(self.hall))

    @property
    def continuation(self) -> int:
        """The longer continuation's tokens after the prompt (on the shared-prompt path)."""
        return self.length - len(self.prompt)

    @property
    def shares_prompt(self) -> bool:
        return self.prompt_in_fact and self.prompt_in_hall


def shared_prompt_rows(toks: Sequence[SampleTokens]) -> list[int]:
    """The samples of a batch that take the shared-prompt path: all whose prompt tokens start both
    texts, when there are at least ``MIN_SHARED_PROMPT`` of them; else none."""
    shared = [i for i, t in enumerate(toks) if t.shares_prompt]
    # Two short passes cost more than one longer pass for small batches (measured on
    # gpt2-small-shape, CPU: -15% at 4 samples, +3-10% at 16 and 32).
    return shared if len(shared) >= MIN_SHARED_PROMPT else []


def forwarded_positions(toks: Sequence[SampleTokens]) -> int:
    """Positions (rows × padded width, summed over passes) a batch forwards, as
    :meth:`Engine._residuals_batched` forwards them (the sliding-window check aside)."""
    shared = shared_prompt_rows(toks)
    others = [t for i, t in enumerate(toks) if i not in set(shared)]
    total = 0
    if shared:
        on_path = [toks[i] for i in shared]
        total += len(on_path) * max(len(t.prompt) for t in on_path)
        total += 2 * len(on_path) * max(max(len(t.fact), len(t.hall)) - len(t.prompt) for t in on_path)
    if others:
        rows = sum(2 if t.prompt_in_fact else 3 for t in others)
        total += rows * max(t.length for t in others)
    return total


@dataclass(frozen=True)
class ForwardPass:
    """The shape of one forward pass: ``rows`` sequences right-padded to ``width`` positions, each
    attending also to ``past`` cached positions (the prompts' padded width, in the shared-prompt
    continuation pass; 0 otherwise); ``real`` of the ``rows × width`` positions are real tokens."""

    rows: int
    width: int
    real: int
    past: int = 0
    blocks: int = 0
    """The transformer blocks it ran (all of them when it scored log-probabilities; 0: not recorded)."""

    @property
    def forwarded(self) -> int:
        return self.rows * self.width


@dataclass
class BatchResult:
    """Rows of one batch, with the input positions of its samples and the work it took."""

    indices: list[int]
    rows: list[dict[str, Any]]
    tokens: int
    """Real (unpadded) tokens of the texts analysed: len(P) + len(F) + len(H) per sample, whether or
    not the prompt had a pass of its own."""
    forwarded_tokens: int = 0
    """Positions forwarded, padding included: Σ rows × padded width over the batch's passes (the
    prompt pass and the continuation pass each count, on the shared-prompt path)."""
    forwarded_real_tokens: int = 0
    """The real tokens among ``forwarded_tokens``. Fewer than ``tokens`` where a prompt is read
    from its fact text's pass (it is not forwarded on its own) or is forwarded once for both of its
    continuations, so the padding fraction is ``1 − forwarded_real_tokens / forwarded_tokens``
    (``1 − tokens / forwarded_tokens`` can be negative)."""
    passes: list[ForwardPass] = field(default_factory=list)
    """Every forward pass the batch ran, for FLOP counts (:mod:`saecli.flops`)."""
    residuals: Residuals | None = None
    """The vectors each SAE read for F and H and their feature activations (with baselines on)."""
    sae_rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per SAE layer: the reads it encoded (the first layer's noisy F and H reads add encodes), and
    the decoder rows its reconstructions multiplied (Σ over reads of the active features gathered,
    padded to the chunk's widest, when the reconstruction is summed over them; d_sae per read otherwise)."""

    @property
    def padding_fraction(self) -> float:
        """The fraction of forwarded positions that were padding (0.0 for a batch with no pass)."""
        forwarded = self.forwarded_tokens
        return 1.0 - self.forwarded_real_tokens / forwarded if forwarded else 0.0


@dataclass
class Scored:
    """Log-probabilities of continuation tokens, each with the text slot it belongs to."""

    slots: list[int] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)

    @staticmethod
    def of(slots: list[int], logprobs: torch.Tensor | None) -> Scored:
        return Scored(list(slots), [logprobs] if logprobs is not None else [])

    def __add__(self, other: Scored) -> Scored:
        return Scored(self.slots + other.slots, self.logprobs + other.logprobs)

    def relabel(self, new_slot: list[int]) -> Scored:
        return Scored([new_slot[s] for s in self.slots], list(self.logprobs))

    def per_text(self, texts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and mean of the log-probabilities of each of ``texts`` slots (float64 [texts] each)."""
        total = torch.zeros(texts, dtype=torch.float64)
        count = torch.zeros(texts, dtype=torch.float64)
        if self.slots:
            index = torch.tensor(self.slots)
            values = torch.cat([lp.cpu() for lp in self.logprobs])
            total.index_add_(0, index, values)
            count.index_add_(0, index, torch.ones_like(values))
        return total, total / count


@dataclass
class _LayerOut:
    """What one layer's SAE and geometry give for a stack of activations (tensors, n-leading)."""

    l0: torch.Tensor
    reconstruction_error: torch.Tensor
    gini: torch.Tensor
    sphericity: torch.Tensor
    shape_class: list[str | None]
    dimensionality: torch.Tensor
    x_hat: torch.Tensor
    active: list[tuple[Any, Any]] | None = None
    """Per read, its active features' (indices, values) as numpy arrays (kept for the residuals file)."""
    centroid: torch.Tensor | None = None
    axis: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    top: torch.Tensor | None = None
    top_noisy: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[_LayerOut]) -> _LayerOut:
        merged = {}
        for name in _LayerOut.__dataclass_fields__:
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                merged[name] = None
            elif isinstance(values[0], list):
                merged[name] = [v for part in values for v in part]
            else:
                merged[name] = torch.cat(values)
        return _LayerOut(**merged)


@dataclass
class StageTimer:
    """Seconds spent per stage; synchronises CUDA at stage ends when ``sync`` is set."""

    sync: bool = False
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sync and torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - started


class Engine:
    """Runs the analysis of samples on a loaded preset."""

    def __init__(
        self,
        loaded: LoadedPreset,
        *,
        seed: int = 0,
        noise_std: float = 0.1,
        timer: StageTimer | None = None,
        backoff: bool = True,
        baselines: bool = True,
    ):
        if not isinstance(loaded, LoadedPreset):
            raise SaecliError(f"the engine needs a LoadedPreset (from saecli.load_preset), got {type(loaded).__name__}")
        self.loaded = loaded
        self.model = loaded.model
        self.layers = list(loaded.layers)
        self.seed = check_seed(seed)
        self.noise_std = float(check_noise_std(noise_std))
        self.timer = timer or StageTimer()
        self.backoff = backoff
        """Split a batch that runs out of memory (off for ``bench``, which must see the OOM)."""
        self.backoffs: list[dict[str, Any]] = []
        self.hooks = [loaded.hooks[layer] for layer in self.layers]
        # Where each hook's value is captured, and the first block that need not run at all.
        self.capture = {hook: _earliest_equivalent(hook) for hook in self.hooks}
        self.stop_at = max(_block_of(hook) for hook in self.capture.values()) + 1
        self.baselines = bool(baselines)
        """Score the continuations' log-probabilities (the whole model runs) and keep the residuals."""
        self.final_hook = f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"
        self.device = torch.device(loaded.device)
        self.sae_dtype = torch_dtype(loaded.sae_dtype)
        tokenizer = self.model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        # The work of the batch being analysed (reset by ``run`` before each try of a batch).
        self._passes: list[ForwardPass] = []
        self._sae_rows: dict[int, tuple[int, int]] = {}
        self._residuals: Residuals | None = None

    # -- tokens -----------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.model.to_tokens(text, truncate=False, move_to_device=False)[0].tolist()

    def tokenize(self, samples: Sequence[Sample], *, truncate: bool = False) -> list[SampleTokens]:
        """Tokenize each sample's P, F and H alone. A text longer than the context is an error,
        or with ``truncate`` is cut from the left (keeping the BOS)."""
        out = []
        n_ctx = self.model.cfg.n_ctx
        with self.timer("tokenize"):
            for sample in samples:
                toks = SampleTokens(self._tokens(sample.prompt), self._tokens(sample.fact_text), self._tokens(sample.hall_text))
                if toks.length > n_ctx:
                    if not truncate:
                        raise SaecliError(
                            f"sample {sample.id!r} is {toks.length} tokens long, more than the model's context of {n_ctx}",
                            hint="shorten it, or pass --truncate to cut long texts from the left",
                        )
                    toks = SampleTokens(*(self._cut_left(t, n_ctx) for t in (toks.prompt, toks.fact, toks.hall)))
                out.append(toks)
        return out

    def _cut_left(self, tokens: list[int], n_ctx: int) -> list[int]:
        if len(tokens) <= n_ctx:
            return tokens
        bos = self.model.tokenizer.bos_token_id
        keep_bos = bos is not None and tokens[0] == bos
        return ([bos] if keep_bos else []) + tokens[len(tokens) - (n_ctx - keep_bos) :]

    @staticmethod
    def plan(tokens: Sequence[SampleTokens], batch_size: int) -> list[list[int]]:
        """Batches of sample positions that forward few padding positions, the heaviest first (so
        an out-of-memory error shows at the start of a run) and a short batch, if any, last.

        Samples are sorted by one of three keys and cut into batches; the key kept is the one whose
        batches forward the fewest positions (:func:`forwarded_positions`). Texts of equal length
        share a batch when the sort is by total length; on the shared-prompt path (HB-style data) it
        is prompts of equal length and continuations of equal length that matter, each in its own pass.
        """
        order_by = {
            "length": lambda i: (-tokens[i].length, i),
            "continuation": lambda i: (-tokens[i].continuation, -len(tokens[i].prompt), i),
            "prompt": lambda i: (-len(tokens[i].prompt), -tokens[i].continuation, i),
        }
        best: list[list[int]] = []
        best_cost = None
        for key in order_by.values():
            order = sorted(range(len(tokens)), key=key)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            cost = [forwarded_positions([tokens[i] for i in batch]) for batch in batches]
            if best_cost is None or sum(cost) < best_cost:
                full = [b for b in range(len(batches)) if len(batches[b]) == batch_size]
                short = [b for b in range(len(batches)) if len(batches[b]) < batch_size]
                best = [batches[b] for b in sorted(full, key=lambda b: -cost[b]) + short]
                best_cost = sum(cost)
        return best

    # -- forward ----------------------------------------------------------------------------------
    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded tokens and their attention mask (1 on real tokens)."""
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return tokens.to(self.device), mask.to(self.device)

    def _forward(
        self,
        seqs: Sequence[Sequence[int]],
        reads: list[tuple[int, int]],
        *,
        kv_cache: Any = None,
        scores: Sequence[tuple[int, int, int]] = (),
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Residuals at the SAE hooks for (row, position) reads: {hook: [n_reads, d]}, and for each
        (row, position, token) of ``scores`` the log-probability the model gives that token at that
        position (then every block runs; else the pass stops after the deepest hooked block). With
        ``kv_cache``, ``seqs`` continue the cached sequences and positions count from their start."""
        tokens, mask = self._pad(seqs)
        rows = torch.tensor([r for r, _ in reads], device=self.device)
        positions = torch.tensor([p for _, p in reads], device=self.device)
        captured: dict[str, torch.Tensor] = {}

        def capture(act: torch.Tensor, hook: Any) -> None:
            captured[hook.name] = act[rows, positions].reshape(len(reads), -1).clone()

        hooks = [(name, capture) for name in set(self.capture.values())]
        if scores:
            score_rows = torch.tensor([r for r, _, _ in scores], device=self.device)
            score_positions = torch.tensor([p for _, p, _ in scores], device=self.device)

            def capture_final(act: torch.Tensor, hook: Any) -> None:
                captured[_FINAL] = act[score_rows, score_positions].clone()

            hooks.append((self.final_hook, capture_final))
        blocks = self.model.cfg.n_layers if scores else self.stop_at
        extra = {} if kv_cache is None else {"past_kv_cache": kv_cache, "attention_mask": mask}
        past = 0 if kv_cache is None else int(kv_cache.previous_attention_mask.shape[1])  # cached positions attended to
        self._passes.append(
            ForwardPass(rows=tokens.shape[0], width=tokens.shape[1], real=sum(len(s) for s in seqs), past=past, blocks=blocks)
        )
        with self.timer("forward"):
            self.model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=blocks, padding_side="right", **extra)
        logprobs = None
        if scores:
            with self.timer("baselines"):
                logprobs = self._logprobs(captured[_FINAL], [t for _, _, t in scores])
        return {hook: captured[source] for hook, source in self.capture.items()}, logprobs

    def _logprobs(self, resid: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
        """``log p(token | preceding)`` from the last block's residual at each scored position, as the
        model's own head computes it (final norm, unembedding ``x W_U + b_U``, logit soft-cap), in
        float64 [m]: the target's logit minus the log-sum-exp of all (the full log-softmax over the
        vocabulary is never written out). Positions scored twice (a prompt's last position predicts
        both continuations' first tokens) are unembedded once."""
        from transformer_lens.utilities.activation_functions import apply_softcap

        model = self.model
        unique, slot = torch.unique(resid, dim=0, return_inverse=True)
        x = model.ln_final(unique.unsqueeze(0))[0] if model.cfg.normalization_type is not None else unique
        logits = apply_softcap(x @ model.unembed.W_U + model.unembed.b_U, model.cfg.output_logits_soft_cap)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        index = torch.tensor(list(targets), device=logits.device)
        picked = logits[slot, index]
        return (picked - torch.logsumexp(logits, dim=-1)[slot]).to(torch.float64)

    def _shared_prompt(self, toks: list[SampleTokens]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Scored]:
        """For samples whose prompt tokens start both F and H: one pass over the prompts that keeps
        their keys and values, then one pass over the fact and hallucination continuations that
        attends to them. Returns the reads [P..] and [F.., H..], and (with baselines) the scored
        continuation tokens as (text slot F_i = i, H_i = n + i, log-probability)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        n = len(toks)
        tails = [t.fact[len(t.prompt) :] for t in toks] + [t.hall[len(t.prompt) :] for t in toks]
        # The prompt's last position predicts each continuation's first token; each continuation
        # position but the last predicts the next one.
        prompt_scores, tail_scores, prompt_slots, tail_slots = [], [], [], []
        if self.baselines:
            for slot, tail in enumerate(tails):
                i = slot % n
                prompt_scores.append((i, len(toks[i].prompt) - 1, tail[0]))
                prompt_slots.append(slot)
                for position in range(len(tail) - 1):
                    tail_scores.append((slot, position, tail[position + 1]))
                    tail_slots.append(slot)
        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, batch_size=n)
        prompts, lp_prompt = self._forward(
            [t.prompt for t in toks], [(i, len(t.prompt) - 1) for i, t in enumerate(toks)], kv_cache=cache, scores=prompt_scores
        )
        # The same prompt cache serves the fact row i and the hallucination row n + i.
        both = TransformerLensKeyValueCache(
            entries=[
                dataclasses.replace(e, past_keys=e.past_keys.repeat(2, 1, 1, 1), past_values=e.past_values.repeat(2, 1, 1, 1))
                for e in cache.entries
            ],
            previous_attention_mask=cache.previous_attention_mask.repeat(2, 1),
        )
        texts, lp_tails = self._forward(tails, [(row, len(tail) - 1) for row, tail in enumerate(tails)], kv_cache=both, scores=tail_scores)
        scored = Scored.of(prompt_slots, lp_prompt) + Scored.of(tail_slots, lp_tails)
        return prompts, texts, scored

    def _cache_is_exact(self, toks: list[SampleTokens]) -> bool:
        """Sliding-window attention measures distance in padded positions; with the prompts'
        padding inside the cache that differs from the unpadded distance once a padded text
        outgrows the window. Then the shared-prompt path is not used."""
        cfg = self.model.cfg
        if not getattr(cfg, "use_local_attn", False) or not cfg.window_size:
            return True
        width = max(len(t.prompt) for t in toks) + max(max(len(t.fact), len(t.hall)) - len(t.prompt) for t in toks)
        return width <= cfg.window_size

    def _text_scores(self, row: int, prompt: Sequence[int], text: Sequence[int]) -> list[tuple[int, int, int]]:
        """(row, position, next token) for every continuation token of a text forwarded whole."""
        if not self.baselines:
            return []
        return [(row, position, text[position + 1]) for position in range(continuation_start(prompt, text) - 1, len(text) - 1)]

    def _residuals_batched(self, toks: list[SampleTokens]) -> tuple[dict[str, torch.Tensor], Scored]:
        """Residuals of a batch, reads ordered [P_0..P_B-1, F_0.., H_0..], and the scored
        continuation tokens with text slots F_i = i, H_i = B + i."""
        n = len(toks)
        shared = shared_prompt_rows(toks)
        if shared and not self._cache_is_exact([toks[i] for i in shared]):
            shared = []
        others = [i for i in range(n) if i not in set(shared)]
        out: dict[str, torch.Tensor] = {}
        scored = Scored()

        def place(index: list[int], kind: int, values: dict[str, torch.Tensor]) -> None:
            for hook, value in values.items():
                if hook not in out:
                    out[hook] = torch.empty((3 * n, value.shape[-1]), dtype=value.dtype, device=value.device)
                out[hook][[kind * n + i for i in index]] = value

        if shared:
            prompts, texts, shared_scored = self._shared_prompt([toks[i] for i in shared])
            place(shared, 0, prompts)
            place(shared, 1, {h: v[: len(shared)] for h, v in texts.items()})
            place(shared, 2, {h: v[len(shared) :] for h, v in texts.items()})
            m = len(shared)
            scored += shared_scored.relabel([shared[j % m] + (n if j >= m else 0) for j in range(2 * m)])
        if others:
            seqs: list[list[int]] = []
            p_reads, f_reads, h_reads = [], [], []
            scores, slots = [], []
            for i in others:
                t = toks[i]
                f_row = len(seqs)
                seqs += [t.fact, t.hall]
                f_reads.append((f_row, len(t.fact) - 1))
                h_reads.append((f_row + 1, len(t.hall) - 1))
                for kind, (row, text) in enumerate(((f_row, t.fact), (f_row + 1, t.hall))):
                    text_scores = self._text_scores(row, t.prompt, text)
                    scores += text_scores
                    slots += [kind * n + i] * len(text_scores)
                if t.prompt_in_fact:
                    p_reads.append((f_row, len(t.prompt) - 1))
                else:
                    seqs.append(t.prompt)
                    p_reads.append((len(seqs) - 1, len(t.prompt) - 1))
            values, logprobs = self._forward(seqs, p_reads + f_reads + h_reads, scores=scores)
            m = len(others)
            for kind in range(3):
                place(others, kind, {h: v[kind * m : (kind + 1) * m] for h, v in values.items()})
            scored += Scored.of(slots, logprobs)
        return out, scored

    def residuals_sequential(self, t: SampleTokens) -> tuple[dict[str, torch.Tensor], Scored]:
        """Each text in its own pass: reads [P, F, H], and the scored continuation tokens (F: slot 0, H: slot 1)."""
        parts, scored = [], Scored()
        for kind, seq in enumerate((t.prompt, t.fact, t.hall)):
            scores = self._text_scores(0, t.prompt, seq) if kind > 0 else []
            values, logprobs = self._forward([seq], [(0, len(seq) - 1)], scores=scores)
            parts.append(values)
            scored += Scored.of([kind - 1] * len(scores), logprobs)
        return {hook: torch.cat([p[hook] for p in parts]) for hook in parts[0]}, scored

    # -- SAE and geometry -------------------------------------------------------------------------
    def _layer(self, layer: int, x: torch.Tensor, *, first: bool, noise: torch.Tensor | None) -> _LayerOut:
        sae = self.loaded.saes[layer]
        x = x.to(self.sae_dtype)
        noisy = 0 if noise is None else len(noise)  # noise perturbs the last rows (the F and H reads)
        sparse = _decodes_linearly(sae)
        decoder_rows = 0  # decoder rows multiplied: the gathered (padded) active ones, or all d_sae per read
        with self.timer("sae"):
            f = sae.encode(x)
            x_hat = None if sparse else sae.decode(f)
            l0 = metrics.l0_norm(f > 0)
            width = max(int(l0.max()), 1)
            values, indices = f.topk(width, dim=-1)
            mask = values > 0
            f_noisy = sae.encode(x[len(x) - noisy :] + self.noise_std * noise.to(x)) if noise is not None else None
        eigenvalues, centroid, axis = [], [], []
        parts = []
        # Rows sorted by their number of active features, so each chunk's Gram matrices are padded
        # only to its own widest row: the eigen-decomposition costs k³ per row.
        order = torch.sort(l0, stable=True).indices
        for chunk in order.split(GEOMETRY_CHUNK):
            k = max(int(l0[chunk].max()), 1)
            v, m = values[chunk, :k], mask[chunk, :k]
            decoder_rows += len(chunk) * k
            with self.timer("sae"):
                positions = sae.W_dec[indices[chunk, :k]]
                if sparse:
                    parts.append(torch.einsum("nk,nkd->nd", torch.where(m, v, torch.zeros_like(v)), positions) + sae.b_dec)
            with self.timer("geometry"):
                inertia = geometry.inertia_gram(positions, geometry.masses(v, m), l0[chunk], need_axis=first)
            eigenvalues.append(inertia.eigenvalues)
            centroid.append(inertia.centroid)
            axis.append(inertia.axis)
        inverse = torch.argsort(order)
        encoded, decoded = self._sae_rows.get(layer, (0, 0))
        self._sae_rows[layer] = (encoded + len(x) + noisy, decoded + (decoder_rows if sparse else len(x) * f.shape[-1]))
        with self.timer("sae"):
            if sparse:
                x_hat = sae.hook_sae_recons(torch.cat(parts)[inverse])
        with self.timer("metrics"):
            span = max(e.shape[-1] for e in eigenvalues)
            lam = torch.cat([torch.nn.functional.pad(e, (0, span - e.shape[-1])) for e in eigenvalues])[inverse]
            out = _LayerOut(
                l0=l0,
                reconstruction_error=metrics.reconstruction_error(x, x_hat),
                gini=metrics.gini(values, mask),
                sphericity=metrics.sphericity(lam, l0),
                shape_class=metrics.shape_class(lam, l0),
                dimensionality=metrics.dimensionality(lam),
                x_hat=x_hat,
            )
            if self.baselines:
                kept_values, kept_indices, kept_mask = values.float().cpu().numpy(), indices.cpu().numpy(), mask.cpu().numpy()
                out.active = [(kept_indices[r][kept_mask[r]], kept_values[r][kept_mask[r]]) for r in range(len(x))]
            if first:
                out.centroid, out.axis = torch.cat(centroid)[inverse], torch.cat(axis)[inverse]
                out.entropy = metrics.entropy(values, mask)
                out.top = metrics.top_indices(indices, mask)
                out.top_noisy = torch.full_like(out.top, -1)  # rows without noise (the prompt) are never read
            if f_noisy is not None:
                noisy_values, noisy_indices = f_noisy.topk(metrics.TOP_STABILITY, dim=-1)
                out.top_noisy[len(x) - noisy :] = metrics.top_indices(noisy_indices, noisy_values > 0)
        return out

    def _noise(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Noise for the L1 reads [F.., H..] (the prompt's reads get none: stability is of F and H)."""
        d = self.model.cfg.d_model
        return torch.stack([noise_vector(self.seed, s.id, kind, d) for kind in KINDS for s in samples]).to(self.device)

    # -- assembly ---------------------------------------------------------------------------------
    def _rows(self, samples: Sequence[Sample], outs: dict[int, _LayerOut], scored: Scored | None) -> list[dict[str, Any]]:
        """Per-sample rows from layer outputs whose reads are ordered [P.., F.., H..] for the first
        layer and [F.., H..] for the others, and (with baselines) the continuations' scored tokens
        (slots F_i = i, H_i = n + i); without, the baseline columns are null."""
        n = len(samples)
        first, second, third = self.layers
        cols: dict[str, Any] = {}
        with self.timer("metrics"):
            for layer in self.layers:
                out = outs[layer]
                offset = n if layer == first else 0
                for k, kind in enumerate(KINDS):
                    sl = slice(offset + k * n, offset + (k + 1) * n)
                    for name in LAYER_METRICS:
                        value = out.l0 if name == "l0_norm" else getattr(out, name)
                        cols[f"l{layer}_{kind}_{name}"] = value[sl]
            o = outs[first]
            p, f, h = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
            pairs = {
                "centroid_drift": (metrics.angle_degrees(o.centroid[p], o.centroid[f]), metrics.angle_degrees(o.centroid[p], o.centroid[h])),
                "axis_twist": (metrics.line_angle_degrees(o.axis[p], o.axis[f]), metrics.line_angle_degrees(o.axis[p], o.axis[h])),
                "stability": (metrics.jaccard(o.top[f], o.top_noisy[f]), metrics.jaccard(o.top[h], o.top_noisy[h])),
                "entropy": (o.entropy[f], o.entropy[h]),
            }
            a, b = outs[second].x_hat, outs[third].x_hat
            pairs["cross_layer_consistency"] = (
                metrics.cosine_similarity(a[:n], b[:n]),
                metrics.cosine_similarity(a[n:], b[n:]),
            )
            for base, (fact, hall) in pairs.items():
                cols[f"{base}_fact"], cols[f"{base}_hall"] = fact, hall
                # The spec's sign: stability and consistency are fact − hall, the rest hall − fact.
                fact_minus_hall = base in ("stability", "cross_layer_consistency")
                cols[f"{base}_diff"] = fact - hall if fact_minus_hall else hall - fact
            if scored is not None:
                total, mean = scored.per_text(2 * n)
                for base, value in (("logprob_sum", total), ("logprob_mean", mean)):
                    fact, hall = value[:n], value[n:]
                    cols[f"{base}_fact"], cols[f"{base}_hall"], cols[f"{base}_diff"] = fact, hall, fact - hall
            else:
                for base in BASELINE_METRICS:
                    for kind in (*KINDS, "diff"):
                        cols[f"{base}_{kind}"] = [None] * n
            lists = {k: (v if isinstance(v, list) else v.cpu().tolist()) for k, v in cols.items()}
            order = metric_columns(self.layers)
            rows = []
            for i, s in enumerate(samples):
                row: dict[str, Any] = {"sample_id": s.id, "domain": s.domain, "topic": s.topic, "complexity": s.complexity}
                row.update({c: lists[c][i] for c in order})
                rows.append(row)
        return rows

    # -- public -----------------------------------------------------------------------------------
    def analyze_batch(self, samples: Sequence[Sample], toks: Sequence[SampleTokens]) -> list[dict[str, Any]]:
        """Rows for a batch of samples, all texts of a layer processed together."""
        oom_point(len(samples))
        with torch.inference_mode():
            acts, scored = self._residuals_batched(list(toks))
            n = len(samples)
            outs = {}
            for i, layer in enumerate(self.layers):
                x = acts[self.hooks[i]]
                first = i == 0
                outs[layer] = self._layer(layer, x if first else x[n:], first=first, noise=self._noise(samples) if first else None)
            self._residuals = self._kept(samples, acts, outs)
            return self._rows(samples, outs, scored if self.baselines else None)

    def analyze_one(self, sample: Sample, toks: SampleTokens) -> dict[str, Any]:
        """The reference: each text in its own pass, each activation processed alone."""
        with torch.inference_mode():
            acts, scored = self.residuals_sequential(toks)
            noise = self._noise([sample])
            outs = {}
            for i, layer in enumerate(self.layers):
                x = acts[self.hooks[i]]
                reads = range(3) if i == 0 else range(1, 3)
                outs[layer] = _LayerOut.cat(
                    [self._layer(layer, x[r : r + 1], first=i == 0, noise=noise[r - 1 : r] if i == 0 and r > 0 else None) for r in reads]
                )
            self._residuals = self._kept([sample], acts, outs)
            return self._rows([sample], outs, scored if self.baselines else None)[0]

    def _kept(self, samples: Sequence[Sample], acts: dict[str, torch.Tensor], outs: dict[int, _LayerOut]) -> Residuals | None:
        """What the residuals file keeps of a batch (reads [P.., F.., H..]): each layer's F and H
        vectors (float32) and their active features; None without baselines."""
        if not self.baselines:
            return None
        import numpy as np
        import scipy.sparse as sp

        n = len(samples)
        dense, features, d_sae = {}, {}, {}
        for i, layer in enumerate(self.layers):
            x = acts[self.hooks[i]]
            out = outs[layer]
            offset = n if i == 0 else 0  # the first layer's outputs hold the prompts' reads too
            d_sae[layer] = int(self.loaded.saes[layer].cfg.d_sae)
            for k, kind in enumerate(KINDS):
                dense[residual_key(layer, kind)] = x[(k + 1) * n : (k + 2) * n].float().cpu().numpy()
                active = out.active[offset + k * n : offset + (k + 1) * n]
                indptr = np.concatenate([[0], np.cumsum([len(a) for a, _ in active])]).astype(np.int64)
                indices = np.concatenate([a for a, _ in active]) if active else np.zeros(0, np.int32)
                data = np.concatenate([v for _, v in active]) if active else np.zeros(0, np.float32)
                matrix = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr), shape=(n, d_sae[layer]))
                matrix.sort_indices()
                features[residual_key(layer, kind)] = matrix
        return Residuals(layers=list(self.layers), sample_ids=[s.id for s in samples], dense=dense, features=features, d_sae=d_sae)

    def run(
        self,
        samples: Sequence[Sample],
        *,
        batch_size: int = 16,
        sequential: bool = False,
        toks: Sequence[SampleTokens] | None = None,
    ) -> Iterator[BatchResult]:
        """Analyse samples; yields batches as they finish (in length order, not input order).

        A batch that runs out of memory is split in half and retried, down to single samples, and
        the run goes on at the smaller size (each step is appended to ``self.backoffs``). A single
        sample that does not fit raises the out-of-memory error.
        """
        toks = list(toks) if toks is not None else self.tokenize(samples)
        order = list(range(len(samples))) if sequential else [i for batch in self.plan(toks, batch_size) for i in batch]
        size = 1 if sequential else batch_size
        position = 0
        while position < len(order):
            idx = order[position : position + size]
            batch, batch_toks = [samples[i] for i in idx], [toks[i] for i in idx]
            self._passes, self._sae_rows, self._residuals = [], {}, None
            try:
                rows = [self.analyze_one(batch[0], batch_toks[0])] if sequential else self.analyze_batch(batch, batch_toks)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                if not self.backoff or not is_out_of_memory(exc) or len(idx) == 1:
                    raise
                _free_memory(self.device)
                size = max(1, len(idx) // 2)
                self.backoffs.append({"failed_size": len(idx), "new_size": size, "at_sample": samples[idx[0]].id})
                log.warning("out of memory at batch size %d; going on at %d", len(idx), size)
                continue
            position += len(idx)
            n_tokens = sum(len(t.prompt) + len(t.fact) + len(t.hall) for t in batch_toks)
            yield BatchResult(
                indices=list(idx), rows=rows, tokens=n_tokens, passes=self._passes, sae_rows=self._sae_rows, residuals=self._residuals,
                forwarded_tokens=sum(p.forwarded for p in self._passes), forwarded_real_tokens=sum(p.real for p in self._passes),
            )


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def analyze(
    samples: Sequence[Sample],
    preset: LoadedPreset,
    *,
    batch_size: int = 16,
    sequential: bool = False,
    seed: int = 0,
    noise_std: float = 0.1,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Analyse samples on a loaded preset, yielding one row (dict) per sample in input order.

    The arguments are checked when it is called (with the checks of the CLI's options), not when
    the first row is asked for; each Sample has checked its own fields when it was made.
    """
    check_batch_size(batch_size, auto=False)
    samples = list(samples) if isinstance(samples, Iterable) and not isinstance(samples, (str, bytes)) else None
    if samples is None or not all(isinstance(s, Sample) for s in samples):
        raise SaecliError("analyze needs a list of saecli.Sample", hint="load them with saecli.load_samples, or make Sample(...) objects")
    engine = Engine(preset, seed=seed, noise_std=noise_std)
    return _rows_in_order(engine, samples, batch_size=batch_size, sequential=sequential, on_batch=on_batch)


def _rows_in_order(
    engine: Engine, samples: list[Sample], *, batch_size: int, sequential: bool, on_batch: Callable[[BatchResult], None] | None
) -> Iterator[dict[str, Any]]:
    pending: dict[int, dict[str, Any]] = {}
    next_index = 0
    for result in engine.run(samples, batch_size=batch_size, sequential=sequential):
        if on_batch is not None:
            on_batch(result)
        pending.update(zip(result.indices, result.rows, strict=False))
        while next_index in pending:
            yield pending.pop(next_index)
            next_index += 1
