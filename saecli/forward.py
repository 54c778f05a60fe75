"""The model's forward passes and what is read from them: residuals at the SAE hooks and, with
baselines on, the log-probabilities of the continuation tokens.

Belongs here: padding, one hooked pass (:meth:`Forward.one_pass`), the unembedding at the scored
positions, the shared-prompt path (a prompt pass whose keys and values the continuation pass
attends to), and the batched and sequential reads of a batch. Each call returns what it read, the
scored tokens and the :class:`ForwardPass` shapes it ran; nothing is kept between calls. Does not
belong here: which samples share a batch (:mod:`saecli.plan`), the SAEs (:mod:`saecli.sae_stage`).

Right padding keeps every real token's residual equal to its unpadded value under causal
attention, so batched reads equal sequential ones.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from saecli.models import LoadedPreset
from saecli.plan import SampleTokens, shared_prompt_rows, shared_prompt_widths

Timer = Callable[[str], AbstractContextManager[Any]]
"""Times a stage: ``with timer("forward"): ...`` (:class:`saecli.timer.StageTimer`)."""

_FINAL = "__final_resid__"
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
    scored: int = 0
    """Positions unembedded to score log-probabilities (each distinct position once; 0 without baselines)."""

    @property
    def forwarded(self) -> int:
        return self.rows * self.width


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
class Reads:
    """What the passes over a batch gave: residuals per SAE hook ({hook: [reads, d]}), the scored
    continuation tokens, and every pass that ran (for FLOP counts)."""

    acts: dict[str, torch.Tensor]
    scored: Scored
    passes: list[ForwardPass]


@dataclass
class PassOut:
    """One pass: residuals per SAE hook, the scored tokens' log-probabilities, and its shape."""

    acts: dict[str, torch.Tensor]
    logprobs: torch.Tensor | None
    shape: ForwardPass


class Forward:
    """Forward passes of a loaded preset's model, captured at its SAE hooks."""

    def __init__(self, loaded: LoadedPreset, *, baselines: bool, timer: Timer):
        self.model = loaded.model
        self.baselines = baselines
        """Score the continuations' log-probabilities (then the whole model runs)."""
        self.timer = timer
        self.hooks = [loaded.hooks[layer] for layer in loaded.layers]
        # Where each hook's value is captured, and the first block that need not run at all.
        self.capture = {hook: _earliest_equivalent(hook) for hook in self.hooks}
        self.stop_at = max(_block_of(hook) for hook in self.capture.values()) + 1
        self.final_hook = f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"
        self.device = torch.device(loaded.device)
        tokenizer = self.model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded tokens and their attention mask (1 on real tokens)."""
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return tokens.to(self.device), mask.to(self.device)

    def one_pass(
        self,
        seqs: Sequence[Sequence[int]],
        reads: list[tuple[int, int]],
        *,
        kv_cache: Any = None,
        scores: Sequence[tuple[int, int, int]] = (),
    ) -> PassOut:
        """Residuals at the SAE hooks for (row, position) reads: {hook: [n_reads, d]}, and for each
        (row, position, token) of ``scores`` the log-probability the model gives that token at that
        position (then every block runs; else the pass stops after the deepest hooked block). With
        ``kv_cache``, ``seqs`` continue the cached sequences and positions count from their start."""
        tokens, mask = self.pad(seqs)
        captured: dict[str, torch.Tensor] = {}
        keep = self._keeper(captured, reads)
        hooks = [(name, keep) for name in set(self.capture.values())]
        if scores:
            hooks.append((self.final_hook, self._keeper(captured, [(r, p) for r, p, _ in scores], key=_FINAL)))
        blocks = self.model.cfg.n_layers if scores else self.stop_at
        extra = {} if kv_cache is None else {"past_kv_cache": kv_cache, "attention_mask": mask}
        past = 0 if kv_cache is None else int(kv_cache.previous_attention_mask.shape[1])  # cached positions attended to
        with self.timer("forward"):
            self.model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=blocks, padding_side="right", **extra)
        logprobs, unembedded = None, 0
        if scores:
            with self.timer("baselines"):
                logprobs, unembedded = self._logprobs(captured[_FINAL], [t for _, _, t in scores])
        shape = ForwardPass(rows=tokens.shape[0], width=tokens.shape[1], real=sum(len(s) for s in seqs), past=past, blocks=blocks,
                            scored=unembedded)  # fmt: skip
        return PassOut({hook: captured[source] for hook, source in self.capture.items()}, logprobs, shape)

    def _keeper(self, captured: dict[str, torch.Tensor], at: list[tuple[int, int]], *, key: str | None = None) -> Any:
        """A hook that keeps the activation at the (row, position) pairs ``at`` ([len(at), d]) in
        ``captured`` under ``key`` (default: the hook's name)."""
        rows = torch.tensor([r for r, _ in at], device=self.device)
        positions = torch.tensor([p for _, p in at], device=self.device)

        def capture(act: torch.Tensor, hook: Any) -> None:
            captured[key or hook.name] = act[rows, positions].reshape(len(at), -1).clone()

        return capture

    def _logprobs(self, resid: torch.Tensor, targets: Sequence[int]) -> tuple[torch.Tensor, int]:
        """``log p(token | preceding)`` from the last block's residual at each scored position, as the
        model's own head computes it (final norm, unembedding ``x W_U + b_U``, logit soft-cap), in
        float64 [m]: the target's logit minus the log-sum-exp of all (the full log-softmax over the
        vocabulary is never written out); and how many positions were unembedded. Positions scored
        twice (a prompt's last position predicts both continuations' first tokens) are unembedded once."""
        from transformer_lens.utilities.activation_functions import apply_softcap

        model = self.model
        unique, slot = torch.unique(resid, dim=0, return_inverse=True)
        x = model.ln_final(unique.unsqueeze(0))[0] if model.cfg.normalization_type is not None else unique
        logits = apply_softcap(x @ model.unembed.W_U + model.unembed.b_U, model.cfg.output_logits_soft_cap)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        index = torch.tensor(list(targets), device=logits.device)
        picked = logits[slot, index]
        return (picked - torch.logsumexp(logits, dim=-1)[slot]).to(torch.float64), int(unique.shape[0])

    def shared_prompt(
        self, toks: list[SampleTokens]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Scored, list[ForwardPass]]:
        """For samples whose prompt tokens start both F and H: one pass over the prompts that keeps
        their keys and values, then one pass over the fact and hallucination continuations that
        attends to them. Returns the reads [P..] and [F.., H..], (with baselines) the scored
        continuation tokens (text slot F_i = i, H_i = n + i), and the two passes."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        n = len(toks)
        # On this path both continuations start right after the prompt (SampleTokens.shares_prompt).
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
        prompts = self.one_pass(
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
        texts = self.one_pass(tails, [(row, len(tail) - 1) for row, tail in enumerate(tails)], kv_cache=both, scores=tail_scores)
        scored = Scored.of(prompt_slots, prompts.logprobs) + Scored.of(tail_slots, texts.logprobs)
        return prompts.acts, texts.acts, scored, [prompts.shape, texts.shape]

    def _cache_is_exact(self, toks: list[SampleTokens]) -> bool:
        """Sliding-window attention measures distance in padded positions; with the prompts'
        padding inside the cache that differs from the unpadded distance once a padded text
        outgrows the window. Then the shared-prompt path is not used."""
        cfg = self.model.cfg
        if not getattr(cfg, "use_local_attn", False) or not cfg.window_size:
            return True
        return sum(shared_prompt_widths(toks)) <= cfg.window_size

    def _text_scores(self, row: int, start: int, text: Sequence[int]) -> list[tuple[int, int, int]]:
        """(row, position, next token) for every continuation token of a text forwarded whole, the
        continuation starting at token ``start`` (``SampleTokens.fact_start`` or ``hall_start``)."""
        if not self.baselines:
            return []
        return [(row, position, text[position + 1]) for position in range(start - 1, len(text) - 1)]

    def batched(self, toks: list[SampleTokens]) -> Reads:
        """Residuals of a batch, reads ordered [P_0..P_B-1, F_0.., H_0..], and the scored
        continuation tokens with text slots F_i = i, H_i = B + i."""
        n = len(toks)
        shared = shared_prompt_rows(toks)
        if shared and not self._cache_is_exact([toks[i] for i in shared]):
            shared = []
        others = [i for i in range(n) if i not in set(shared)]
        out: dict[str, torch.Tensor] = {}
        scored, passes = Scored(), []

        def place(index: list[int], kind: int, values: dict[str, torch.Tensor]) -> None:
            for hook, value in values.items():
                if hook not in out:
                    out[hook] = torch.empty((3 * n, value.shape[-1]), dtype=value.dtype, device=value.device)
                out[hook][[kind * n + i for i in index]] = value

        if shared:
            prompts, texts, shared_scored, shared_passes = self.shared_prompt([toks[i] for i in shared])
            place(shared, 0, prompts)
            place(shared, 1, {h: v[: len(shared)] for h, v in texts.items()})
            place(shared, 2, {h: v[len(shared) :] for h, v in texts.items()})
            m = len(shared)
            scored += shared_scored.relabel([shared[j % m] + (n if j >= m else 0) for j in range(2 * m)])
            passes += shared_passes
        if others:
            seqs, reads, scores, slots = self._full_pass_inputs(toks, others)
            result = self.one_pass(seqs, reads, scores=scores)
            m = len(others)
            for kind in range(3):
                place(others, kind, {h: v[kind * m : (kind + 1) * m] for h, v in result.acts.items()})
            scored += Scored.of(slots, result.logprobs)
            passes.append(result.shape)
        return Reads(out, scored, passes)

    def _full_pass_inputs(
        self, toks: list[SampleTokens], others: list[int]
    ) -> tuple[list[list[int]], list[tuple[int, int]], list[tuple[int, int, int]], list[int]]:
        """The one pass over samples off the shared-prompt path: its rows (F and H of each sample,
        and the prompt where it is not a prefix of the fact text), its reads [P.., F.., H..], and
        the scored tokens with their text slots (F_i = i, H_i = n + i of the whole batch)."""
        n = len(toks)
        seqs: list[list[int]] = []
        p_reads, f_reads, h_reads = [], [], []
        scores, slots = [], []
        for i in others:
            t = toks[i]
            f_row = len(seqs)
            seqs += [t.fact, t.hall]
            f_reads.append((f_row, len(t.fact) - 1))
            h_reads.append((f_row + 1, len(t.hall) - 1))
            for kind, (row, start, text) in enumerate(((f_row, t.fact_start, t.fact), (f_row + 1, t.hall_start, t.hall))):
                text_scores = self._text_scores(row, start, text)
                scores += text_scores
                slots += [kind * n + i] * len(text_scores)
            if t.prompt_in_fact:
                p_reads.append((f_row, len(t.prompt) - 1))
            else:
                seqs.append(t.prompt)
                p_reads.append((len(seqs) - 1, len(t.prompt) - 1))
        return seqs, p_reads + f_reads + h_reads, scores, slots

    def sequential(self, t: SampleTokens) -> Reads:
        """Each text in its own pass: reads [P, F, H], and the scored continuation tokens (F: slot 0, H: slot 1)."""
        parts, scored, passes = [], Scored(), []
        for kind, (start, seq) in enumerate(((0, t.prompt), (t.fact_start, t.fact), (t.hall_start, t.hall))):
            scores = self._text_scores(0, start, seq) if kind > 0 else []
            result = self.one_pass([seq], [(0, len(seq) - 1)], scores=scores)
            parts.append(result.acts)
            scored += Scored.of([kind - 1] * len(scores), result.logprobs)
            passes.append(result.shape)
        return Reads({hook: torch.cat([p[hook] for p in parts]) for hook in parts[0]}, scored, passes)
