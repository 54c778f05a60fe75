"""The analysis engine, shared by ``run`` (batched) and ``sequential`` (the reference): tokenize,
run batches in the planned order with the out-of-memory backoff, and return each batch's rows with
the work it took.

Batched: samples are planned into batches for the least padding (:mod:`saecli.plan`); each batch
runs one forward pass over its fact and hallucination texts, or a prompt pass and a continuation
pass on the shared-prompt path (:mod:`saecli.forward`); SAE encode/decode and the Gram-matrix
geometry run on all reads of a layer at once (:mod:`saecli.sae_stage`); the rows are assembled from
them (:mod:`saecli.rows`).

Sequential: every text in its own forward pass (no padding, no prefix sharing), every activation
through the SAE and the geometry on its own; the same metric functions, one row at a time.

The engine works on any list of samples and returns results keyed by the sample's position, so a
caller can shard samples across processes and merge by sample id. Every run option comes from one
:class:`~saecli.config.RunConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from saecli import flops
from saecli.config import RunConfig
from saecli.data import Sample
from saecli.errors import SaecliError
from saecli.faults import oom_point
from saecli.forward import Forward, ForwardPass, Reads
from saecli.memory import is_out_of_memory
from saecli.models import LoadedPreset
from saecli.plan import SampleTokens, cut_to_context, planned_order
from saecli.residuals import Residuals
from saecli.rows import assemble_rows, kept_residuals
from saecli.sae_stage import LayerOut, SaeStage, stability_noise
from saecli.timer import StageTimer
from saecli.validation import check_batch_size

log = logging.getLogger(__name__)


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
    backoffs: list[dict[str, Any]] = field(default_factory=list)
    """The out-of-memory backoffs (failed size, new size, where) taken before this batch fitted."""

    @staticmethod
    def concat(results: Sequence[BatchResult]) -> BatchResult:
        """Several batches as one result (a Ray worker's chunk): rows, work and residuals in order."""
        residuals = [r.residuals for r in results if r.residuals is not None]
        sae_rows: dict[int, tuple[int, int]] = {}
        for r in results:
            for layer, (encoded, decoded) in r.sae_rows.items():
                before = sae_rows.get(layer, (0, 0))
                sae_rows[layer] = (before[0] + encoded, before[1] + decoded)
        return BatchResult(
            indices=[i for r in results for i in r.indices], rows=[row for r in results for row in r.rows],
            tokens=sum(r.tokens for r in results), forwarded_tokens=sum(r.forwarded_tokens for r in results),
            forwarded_real_tokens=sum(r.forwarded_real_tokens for r in results), passes=[p for r in results for p in r.passes],
            residuals=Residuals.concat(residuals) if residuals else None, sae_rows=sae_rows,
            backoffs=[b for r in results for b in r.backoffs],
        )  # fmt: skip

    @property
    def padding_fraction(self) -> float:
        """The fraction of forwarded positions that were padding (0.0 for a batch with no pass)."""
        forwarded = self.forwarded_tokens
        return 1.0 - self.forwarded_real_tokens / forwarded if forwarded else 0.0


class Engine:
    """Runs the analysis of samples on a loaded preset, with the options of one run configuration."""

    def __init__(
        self, loaded: LoadedPreset, config: RunConfig | None = None, *, timer: StageTimer | None = None, backoff: bool = True
    ):
        if not isinstance(loaded, LoadedPreset):
            raise SaecliError(f"the engine needs a LoadedPreset (from saecli.load_preset), got {type(loaded).__name__}")
        if config is not None and not isinstance(config, RunConfig):
            raise SaecliError(f"the engine needs a saecli.config.RunConfig, got {type(config).__name__}")
        self.loaded = loaded
        self.config = config or RunConfig()
        self.model = loaded.model
        self.layers = list(loaded.layers)
        if self.config.layers is not None and list(self.config.layers) != self.layers:
            raise SaecliError(f"the configuration reads layers {list(self.config.layers)}, the loaded preset {self.layers}",
                              hint="load the preset with them: saecli.load_preset(name, layers=...)")  # fmt: skip
        self.timer = timer or StageTimer()
        self.backoff = backoff
        """Split a batch that runs out of memory (off for ``bench``, which must see the OOM)."""
        self.backoffs: list[dict[str, Any]] = []
        self.baselines = self.config.baselines
        """Score the continuations' log-probabilities (the whole model runs) and keep the residuals."""
        self.forward = Forward(loaded, baselines=self.baselines, timer=self.timer)
        self.sae = SaeStage(loaded, noise_std=float(self.config.noise_std), keep_active=self.baselines, timer=self.timer)
        self.hooks = self.forward.hooks
        self.device = self.forward.device
        self.sae_dtype = self.sae.sae_dtype

    @property
    def stop_at(self) -> int:
        """The first block a pass without baselines need not run (after the deepest hooked block)."""
        return self.forward.stop_at

    # -- tokens -----------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.model.to_tokens(text, truncate=False, move_to_device=False)[0].tolist()

    def tokenize(self, samples: Sequence[Sample], *, truncate: bool | None = None) -> list[SampleTokens]:
        """Tokenize each sample's P, F and H alone, with where each continuation starts. A sample
        longer than the context is an error, or with ``truncate`` (default: the configuration's) is
        cut to it from the left as one window (:func:`~saecli.plan.cut_to_context`: the BOS stays,
        the continuations stay whole where they fit, and are scored from where they start)."""
        truncate = self.config.truncate if truncate is None else truncate
        out = []
        n_ctx = self.model.cfg.n_ctx
        bos = self.model.tokenizer.bos_token_id
        with self.timer("tokenize"):
            for sample in samples:
                toks = SampleTokens(self._tokens(sample.prompt), self._tokens(sample.fact_text), self._tokens(sample.hall_text))
                if toks.length > n_ctx:
                    if not truncate:
                        raise SaecliError(
                            f"sample {sample.id!r} is {toks.length} tokens long, more than the model's context of {n_ctx}",
                            hint="shorten it, or pass --truncate to cut long texts from the left",
                        )
                    toks = cut_to_context(toks, n_ctx, bos)
                out.append(toks)
        return out

    # -- one batch --------------------------------------------------------------------------------
    def _noise(self, samples: Sequence[Sample]) -> torch.Tensor:
        return stability_noise(self.config.seed, [s.id for s in samples], self.model.cfg.d_model, self.device)

    def analyze_batch(self, samples: Sequence[Sample], toks: Sequence[SampleTokens]) -> BatchResult:
        """A batch of samples, all texts of a layer processed together (``indices``: positions in ``samples``)."""
        oom_point(len(samples))
        with torch.inference_mode():
            reads = self.forward.batched(list(toks))
            n = len(samples)
            outs: dict[int, LayerOut] = {}
            sae_rows: dict[int, tuple[int, int]] = {}
            for i, layer in enumerate(self.layers):
                x = reads.acts[self.hooks[i]]
                first = i == 0
                outs[layer], work = self.sae.layer(
                    layer, x if first else x[n:], first=first, noise=self._noise(samples) if first else None
                )
                flops.add_rows(sae_rows, {layer: work})
            return self._result(samples, toks, reads, outs, sae_rows)

    def analyze_one(self, sample: Sample, toks: SampleTokens) -> BatchResult:
        """The reference: each text in its own pass, each activation processed alone."""
        with torch.inference_mode():
            reads = self.forward.sequential(toks)
            noise = self._noise([sample])
            outs: dict[int, LayerOut] = {}
            sae_rows: dict[int, tuple[int, int]] = {}
            for i, layer in enumerate(self.layers):
                x = reads.acts[self.hooks[i]]
                parts = []
                for r in range(3) if i == 0 else range(1, 3):
                    out, work = self.sae.layer(
                        layer, x[r : r + 1], first=i == 0, noise=noise[r - 1 : r] if i == 0 and r > 0 else None
                    )
                    parts.append(out)
                    flops.add_rows(sae_rows, {layer: work})
                outs[layer] = LayerOut.cat(parts)
            return self._result([sample], [toks], reads, outs, sae_rows)

    def _result(
        self,
        samples: Sequence[Sample],
        toks: Sequence[SampleTokens],
        reads: Reads,
        outs: dict[int, LayerOut],
        sae_rows: dict[int, tuple[int, int]],
    ) -> BatchResult:
        residuals = None
        if self.baselines:
            residuals = kept_residuals(samples, self.layers, self.hooks, self.loaded.saes, reads.acts, outs)
        with self.timer("metrics"):
            rows = assemble_rows(samples, self.layers, outs, reads.scored if self.baselines else None)
        return BatchResult(
            indices=list(range(len(samples))), rows=rows, tokens=sum(len(t.prompt) + len(t.fact) + len(t.hall) for t in toks),
            forwarded_tokens=sum(p.forwarded for p in reads.passes), forwarded_real_tokens=sum(p.real for p in reads.passes),
            passes=reads.passes, residuals=residuals, sae_rows=sae_rows,
        )  # fmt: skip

    # -- a run ------------------------------------------------------------------------------------
    def run(
        self, samples: Sequence[Sample], *, batch_size: int | None = None, toks: Sequence[SampleTokens] | None = None
    ) -> Iterator[BatchResult]:
        """Analyse samples; yields batches as they finish (in the plan's order, not input order).
        One sample at a time when the configuration's mode is ``sequential``; else batches of
        ``batch_size`` (default: the configuration's, which must then be a number, not ``"auto"``).

        A batch that runs out of memory is split in half and retried, down to single samples, and
        the run goes on at the smaller size (each step is appended to ``self.backoffs``). A single
        sample that does not fit raises the out-of-memory error.
        """
        sequential = self.config.mode == "sequential"
        size = 1 if sequential else check_batch_size(self.config.batch_size if batch_size is None else batch_size, auto=False)
        toks = list(toks) if toks is not None else self.tokenize(samples)
        order = list(range(len(samples))) if sequential else planned_order(toks, size)
        position, backoffs = 0, []
        while position < len(order):
            idx = order[position : position + size]
            batch, batch_toks = [samples[i] for i in idx], [toks[i] for i in idx]
            try:
                result = self.analyze_one(batch[0], batch_toks[0]) if sequential else self.analyze_batch(batch, batch_toks)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled here
                if not self.backoff or not is_out_of_memory(exc) or len(idx) == 1:
                    raise
                _free_memory(self.device)
                size = max(1, len(idx) // 2)
                backoffs.append({"failed_size": len(idx), "new_size": size, "at_sample": samples[idx[0]].id})
                self.backoffs.append(backoffs[-1])
                log.warning("out of memory at batch size %d; going on at %d", len(idx), size)
                continue
            position += len(idx)
            yield dataclasses.replace(result, indices=list(idx), backoffs=backoffs)
            backoffs = []


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def analyze(
    samples: Sequence[Sample],
    preset: LoadedPreset,
    config: RunConfig | None = None,
    *,
    on_batch: Callable[[BatchResult], None] | None = None,
    sequential: bool = False,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Analyse samples on a loaded preset, yielding one row (dict) per sample in input order.

    ``options`` are :class:`~saecli.config.RunConfig` fields (``batch_size``, ``seed``,
    ``noise_std``, ``baselines``, ``truncate``, ...) applied over ``config`` (default: the
    defaults); ``sequential=True`` is ``mode="sequential"``. The arguments are checked when it is
    called (with the checks of the CLI's options), not when the first row is asked for; each
    Sample has checked its own fields when it was made.
    """
    config = _analyze_config(config, sequential=sequential, options=options)
    samples = list(samples) if isinstance(samples, Iterable) and not isinstance(samples, (str, bytes)) else None
    if samples is None or not all(isinstance(s, Sample) for s in samples):
        raise SaecliError(
            "analyze needs a list of saecli.Sample", hint="load them with saecli.load_samples, or make Sample(...) objects"
        )
    engine = Engine(preset, config)
    return _rows_in_order(engine, samples, on_batch=on_batch)


def _analyze_config(config: RunConfig | None, *, sequential: bool, options: dict[str, Any]) -> RunConfig:
    """``config`` (or the defaults) with ``options`` applied, checked as the CLI checks its options;
    ``batch_size`` must be a number here (nothing probes ``"auto"``)."""
    if config is not None and not isinstance(config, RunConfig):
        raise SaecliError(f"analyze's config must be a saecli.config.RunConfig, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise SaecliError(
            f"analyze got an unknown option {unknown[0]!r}", hint=f"options are RunConfig fields: {', '.join(sorted(fields))}"
        )
    if sequential:
        if options.get("mode", "sequential") != "sequential":
            raise SaecliError(f"analyze got sequential=True and mode={options['mode']!r}", hint="pass one of them")
        options = {**options, "mode": "sequential"}
    if "batch_size" in options:
        check_batch_size(options["batch_size"], auto=False)
    config = dataclasses.replace(config or RunConfig(), **options)
    check_batch_size(config.batch_size, auto=False)
    return config


def _rows_in_order(
    engine: Engine, samples: list[Sample], *, on_batch: Callable[[BatchResult], None] | None
) -> Iterator[dict[str, Any]]:
    pending: dict[int, dict[str, Any]] = {}
    next_index = 0
    for result in engine.run(samples):
        if on_batch is not None:
            on_batch(result)
        pending.update(zip(result.indices, result.rows, strict=False))
        while next_index in pending:
            yield pending.pop(next_index)
            next_index += 1
