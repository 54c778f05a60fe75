"""Batch planning: the samples' token ids, which samples share a batch, and what a batch forwards.

Belongs here: the token ids of a sample's texts (:class:`SampleTokens`), where a continuation
starts, the cut of a sample longer than the context (:func:`cut_to_context`), which samples take
the shared-prompt path, the padded positions a batch forwards (counted here only, for the plan and
for the forward pass's sliding-window check), the batch plan, and the cutting of a plan into
chunks of whole batches for Ray workers. Does not belong here: running anything
(:mod:`saecli.forward`).

Imports no torch, directly or through its imports: the Ray driver plans with it, and the driver
never loads a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SHARED_PROMPT = 8
"""Samples a batch needs before its prompts get a pass of their own (the shared-prompt path)."""
CHUNK_BATCHES = 4
"""Batches per chunk handed to a worker: large enough to keep a worker busy between hand-outs,
small enough that a dead worker's chunk is cheap to redo and that work spreads evenly."""
PLAN_WINDOW = 4096
"""Samples planned together (sorted by length and cut into batches), rounded up to whole batches.
A run is analysed window by window (the tokens of one window unpacked at a time); a larger window
pads a little less. Datasets of up to 4,096 samples (the built-in benchmark, HB) are planned whole."""


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


@dataclass
class SampleTokens:
    """Token ids of a sample's three texts, each tokenized alone as the model does, and where each
    continuation starts: the first scored token of F (``fact_start``) and of H (``hall_start``).
    The starts default to :func:`continuation_start` of the tokens given; a sample cut to the
    model's context (:func:`cut_to_context`) carries the starts found on its uncut tokens."""

    prompt: list[int]
    fact: list[int]
    hall: list[int]
    fact_start: int = -1
    hall_start: int = -1

    def __post_init__(self) -> None:
        if self.fact_start < 0:
            self.fact_start = continuation_start(self.prompt, self.fact)
        if self.hall_start < 0:
            self.hall_start = continuation_start(self.prompt, self.hall)

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
        """The prompt's tokens start both texts and both continuations start right after them."""
        n = len(self.prompt)
        return self.prompt_in_fact and self.prompt_in_hall and self.fact_start == n == self.hall_start


def cut_to_context(toks: SampleTokens, n_ctx: int, bos: int | None) -> SampleTokens:
    """A sample longer than the context (``toks.length > n_ctx``) cut to it from the left, as one
    window: each text keeps its first token when it is the BOS, and loses the tokens after it that
    do not fit, the prompt's first, so that F and H go on seeing the same prompt (the shorter text
    may lose more of the prompt than it alone would need).

    - ``c = max(len(F), len(H)) − n_ctx`` tokens must go from the longer text. The prompt loses
      ``c_P = min(c, len(P) − 1)`` tokens after its BOS (``P' = P[:1] + P[1 + c_P:]``; without a BOS,
      ``P' = P[c_P:]``): all of them but the BOS when the longer continuation alone fills the window.
    - F loses ``c_F = max(c_P, len(F) − n_ctx)`` tokens after its BOS, H likewise ``c_H``. Where the
      prompt starts a text, ``c_F = c_P`` unless ``P'`` + that continuation is longer than the window, so
      ``P'`` is a prefix of ``F'`` and ``H'`` and its last token is where the prompt ends inside them.
    - Scoring: the continuation is the text's own tokens after the prompt, found on the uncut
      tokens (``continuation_start``), so ``F'`` is scored from ``max(1, fact_start − c_F)`` to its
      end: the whole continuation, or, when it is longer than the window, every token after the BOS.
    - Reads: the last token of ``P'``, ``F'`` and ``H'``, each forwarded alone or as a prefix of
      another (equal residuals under causal attention), as for an uncut sample.
    """
    cut = toks.length - n_ctx
    if cut <= 0:
        return toks

    def drop(tokens: list[int], count: int) -> list[int]:
        b = 1 if bos is not None and tokens[:1] == [bos] else 0
        return tokens[:b] + tokens[b + count :]

    def drop_text(tokens: list[int], count: int) -> list[int]:
        return drop(tokens, min(count, len(tokens) - 2))  # at least two tokens stay: one is scored

    c_p = max(0, min(cut, len(toks.prompt) - 1))
    prompt = drop(toks.prompt, c_p)  # keeps its BOS, or its last token
    fact = drop_text(toks.fact, max(c_p, len(toks.fact) - n_ctx))
    hall = drop_text(toks.hall, max(c_p, len(toks.hall) - n_ctx))

    def start(uncut: list[int], start: int, text: list[int]) -> int:
        return max(1, min(start - (len(uncut) - len(text)), len(text) - 1))

    return SampleTokens(prompt, fact, hall, start(toks.fact, toks.fact_start, fact), start(toks.hall, toks.hall_start, hall))


def shared_prompt_rows(toks: Sequence[SampleTokens]) -> list[int]:
    """The samples of a batch that take the shared-prompt path: all whose prompt tokens start both
    texts, when there are at least ``MIN_SHARED_PROMPT`` of them; else none."""
    shared = [i for i, t in enumerate(toks) if t.shares_prompt]
    # Two short passes cost more than one longer pass for small batches (measured on
    # gpt2-small-shape, CPU: -15% at 4 samples, +3-10% at 16 and 32).
    return shared if len(shared) >= MIN_SHARED_PROMPT else []


def shared_prompt_widths(toks: Sequence[SampleTokens]) -> tuple[int, int]:
    """Padded widths of the shared-prompt path's two passes over ``toks`` (all on the path): the
    prompts', and the continuations' (which attend to the prompts' padded width before them)."""
    return max(len(t.prompt) for t in toks), max(t.continuation for t in toks)


def full_pass_rows(toks: Sequence[SampleTokens]) -> int:
    """Rows of the one pass over samples off the shared-prompt path: F and H each, and the prompt
    too where it is not a prefix of the fact text (then it cannot be read from the fact's row)."""
    return sum(2 if t.prompt_in_fact else 3 for t in toks)


def forwarded_positions(toks: Sequence[SampleTokens]) -> int:
    """Positions (rows × padded width, summed over passes) a batch forwards, as the batched forward
    pass (:mod:`saecli.forward`) forwards them (the sliding-window check aside)."""
    shared = shared_prompt_rows(toks)
    others = [t for i, t in enumerate(toks) if i not in set(shared)]
    total = 0
    if shared:
        on_path = [toks[i] for i in shared]
        prompt_width, continuation_width = shared_prompt_widths(on_path)
        total += len(on_path) * prompt_width + 2 * len(on_path) * continuation_width
    if others:
        total += full_pass_rows(others) * max(t.length for t in others)
    return total


def plan_batches(toks: Sequence[SampleTokens], batch_size: int) -> list[list[int]]:
    """Batches of sample positions that forward few padding positions, the heaviest first (so
    an out-of-memory error shows at the start of a run) and a short batch, if any, last.

    Samples are sorted by one of three keys and cut into batches; the key kept is the one whose
    batches forward the fewest positions (:func:`forwarded_positions`). Texts of equal length
    share a batch when the sort is by total length; on the shared-prompt path (HB-style data) it
    is prompts of equal length and continuations of equal length that matter, each in its own pass.
    """
    order_by = {
        "length": lambda i: (-toks[i].length, i),
        "continuation": lambda i: (-toks[i].continuation, -len(toks[i].prompt), i),
        "prompt": lambda i: (-len(toks[i].prompt), -toks[i].continuation, i),
    }
    best: list[list[int]] = []
    best_cost = None
    for key in order_by.values():
        order = sorted(range(len(toks)), key=key)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        cost = [forwarded_positions([toks[i] for i in batch]) for batch in batches]
        if best_cost is None or sum(cost) < best_cost:
            full = [b for b in range(len(batches)) if len(batches[b]) == batch_size]
            short = [b for b in range(len(batches)) if len(batches[b]) < batch_size]
            best = [batches[b] for b in sorted(full, key=lambda b: -cost[b]) + short]
            best_cost = sum(cost)
    return best


def windows(n: int, batch_size: int) -> list[range]:
    """Positions 0..n-1 cut into plan windows of :data:`PLAN_WINDOW` samples (whole batches)."""
    size = -(-PLAN_WINDOW // batch_size) * batch_size
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass
class PackedTokens:
    """The tokens of many samples in three arrays: about 4 bytes a token where lists of Python
    ints take about 36, so that a run's samples can be tokenized (and checked) before it starts
    without holding them as lists. :meth:`unpack` gives back the very same :class:`SampleTokens`."""

    ids: np.ndarray
    """int32, every sample's prompt, fact and hall token ids one after the other."""
    ends: np.ndarray
    """int64 [3n]: where each text ends in ``ids``."""
    starts: np.ndarray
    """int64 [n, 2]: each sample's ``fact_start`` and ``hall_start``."""

    @classmethod
    def pack(cls, toks: Sequence[SampleTokens]) -> PackedTokens:
        texts = [text for t in toks for text in (t.prompt, t.fact, t.hall)]
        lengths = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
        ids = np.fromiter((i for text in texts for i in text), dtype=np.int32, count=int(lengths.sum()))
        starts = np.array([(t.fact_start, t.hall_start) for t in toks], dtype=np.int64).reshape(-1, 2)
        return cls(ids, np.cumsum(lengths), starts)

    @classmethod
    def concat(cls, packs: Sequence[PackedTokens]) -> PackedTokens:
        offsets = np.cumsum([0] + [p.ids.size for p in packs[:-1]])
        return cls(
            np.concatenate([p.ids for p in packs]) if packs else np.empty(0, dtype=np.int32),
            np.concatenate([p.ends + offset for p, offset in zip(packs, offsets, strict=True)])
            if packs
            else np.empty(0, dtype=np.int64),
            np.concatenate([p.starts for p in packs]) if packs else np.empty((0, 2), dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.starts)

    def unpack(self, start: int = 0, stop: int | None = None) -> list[SampleTokens]:
        """The tokens of samples ``start`` to ``stop`` (default: all), as lists again."""
        stop = len(self) if stop is None else min(stop, len(self))
        if stop <= start:
            return []
        ends = self.ends[3 * start : 3 * stop]
        begin = int(self.ends[3 * start - 1]) if start else 0
        lists = [text.tolist() for text in np.split(self.ids[begin : int(ends[-1])], ends[:-1] - begin)]
        return [
            SampleTokens(lists[3 * i], lists[3 * i + 1], lists[3 * i + 2], int(fact), int(hall))
            for i, (fact, hall) in enumerate(self.starts[start:stop].tolist())
        ]


def planned_order(toks: Sequence[SampleTokens], batch_size: int) -> list[int]:
    """Sample positions in the order the batch plan runs them (its batches one after another),
    planned window by window of :data:`PLAN_WINDOW` samples: a batch then holds samples from one
    window of the input, so the run's outputs are merged one window at a time
    (:mod:`saecli.merge`), not by holding the whole run."""
    order: list[int] = []
    for window in windows(len(toks), batch_size):
        part = toks[window.start : window.stop]
        order.extend(window.start + i for batch in plan_batches(part, batch_size) for i in batch)
    return order


def chunk_plan(order: list[int], batch_size: int, workers: int) -> list[list[int]]:
    """Cut the length order into chunks of whole batches (so each worker forms a plain run's batches)."""
    per_chunk = batch_size * CHUNK_BATCHES
    # Few samples on many workers: smaller chunks (still whole batches) so that every worker gets some.
    while per_chunk > batch_size and len(order) < per_chunk * workers:
        per_chunk -= batch_size
    return [order[i : i + per_chunk] for i in range(0, len(order), per_chunk)]
