"""Build saecli's embedded offline default preset, "tiny".

What the preset is
------------------
A deliberately small GPT-style language model (a TransformerLens ``HookedTransformer``:
4 layers, d_model 128, about 1.9M parameters) trained from scratch on CPU, a byte-level
BPE tokenizer trained on the same text, and three sparse autoencoders (SAEs) trained
with SAELens on the model's residual stream (``blocks.{L}.hook_resid_post`` at an early,
a middle and the last layer).

The model's training text is (a) the factual statements of saecli's own benchmark,
``prompt + " " + fact`` for every record of ``saecli/assets/benchmark.json`` (never the
hallucinations), repeated many times so that the model learns them, and (b) generic
English prose from the documentation bundled with Python (``pydoc_data.topics``).
The SAEs see the model's activations on that same text.

It exists so that saecli can run end to end with no network and no downloads, and so
that its tests have a real model and real SAEs to run against. The model has learned
the benchmark's facts by rote; it is not a general language model, and nothing measured
with it says anything about how large language models represent facts or hallucinations.

Output (``--out``, default ``saecli/assets/tiny``)::

    model/config.json          HookedTransformerConfig(**d) keyword arguments
    model/model.safetensors    HookedTransformer state_dict (float32)
    model/tokenizer.json       tokenizers.Tokenizer.save()
    saes/layer_{L}/cfg.json, saes/layer_{L}/sae_weights.safetensors
                               SAELens inference SAEs (sae_lens.SAE.load_from_disk)
    build_info.json            seeds, corpus sizes, quality figures, versions, timing

The build is deterministic for a given machine type, Python and library versions: fixed
seeds, ``torch.use_deterministic_algorithms(True)``, two CPU threads, and fixed step
counts (never time-based). A full build takes about 6 minutes on 2 idle CPU cores (at most ~11 on a busy machine).

Usage::

    python scripts/build_tiny.py                 # full build into saecli/assets/tiny
    python scripts/build_tiny.py --quick         # ~20 s smoke test into a temp folder (or --out DIR)
"""

from __future__ import annotations

import os

# Set before torch / tokenizers / SAELens are imported: no progress bars, no wandb,
# no Hugging Face hub access, and single-threaded tokenizer training (determinism).
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

log = logging.getLogger("build_tiny")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "saecli" / "assets" / "tiny"
DEFAULT_DATA = REPO_ROOT / "saecli" / "assets" / "benchmark.json"

SPECIAL = "<|endoftext|>"  # the one special token: BOS, EOS and PAD
MODEL_NAME = "saecli-tiny"
SEED = 20240611
NUM_THREADS = 2
QUICK_THREADS = 1
"""--quick (a smoke test, often run beside other work: the test suite) takes one thread: two threads
on a 2-core machine with one core busy took twice as long. The full build keeps NUM_THREADS: the
committed weights were made with it."""


@dataclass(frozen=True)
class BuildPlan:
    """Every size and step count of a build (fixed numbers, so builds are reproducible)."""

    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    n_ctx: int = 128
    sae_layers: tuple[int, ...] = (0, 2, 3)
    doc_max_chars: int = 400
    # language model
    lm_steps: int = 900
    lm_fact_batch: int = 32
    lm_doc_batch: int = 8
    lm_lr: float = 2e-3
    lm_warmup: int = 60
    lm_weight_decay: float = 0.01
    # SAEs (BatchTopK training, saved as JumpReLU for inference)
    sae_expansion: int = 8
    sae_k: float = 32.0
    sae_fact_repeats: int = 8
    sae_batch: int = 2048
    sae_samples: int = 1_500_000
    sae_lr: float = 1e-3
    sae_dead_window: int = 200


FULL = BuildPlan()
QUICK = BuildPlan(lm_steps=10, lm_warmup=2, sae_samples=16_384, sae_dead_window=4)
QUICK_PROSE_CHUNKS = 100
"""With --quick, only the first prose chunks are used (the prose is most of the corpus to forward)."""


# --------------------------------------------------------------------------- setup


def set_determinism(seed: int, threads: int = NUM_THREADS) -> None:
    """Seed every RNG in use and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- corpus


def load_records(path: Path) -> list[dict[str, Any]]:
    """Load the benchmark: a JSON list of records with prompt, fact and hallucination."""
    with path.open(encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list) or not records:
        raise SystemExit(f"{path}: expected a non-empty JSON list of records")
    for i, r in enumerate(records):
        for key in ("prompt", "fact", "hallucination"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise SystemExit(f"{path}: record {i} has no usable {key!r}")
    return records


def fact_text(record: dict[str, Any]) -> str:
    return record["prompt"] + " " + record["fact"]


def hallucination_text(record: dict[str, Any]) -> str:
    return record["prompt"] + " " + record["hallucination"]


_HEADING_RULE = re.compile(r"[*=\-~^#]{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def pydoc_chunks(max_chars: int) -> list[str]:
    """Prose from the Python documentation bundled with the interpreter.

    Paragraphs of ``pydoc_data.topics`` (sorted by topic) minus headings and the indented
    code / grammar blocks, whitespace collapsed, split into sentences and regrouped into
    chunks of at most ``max_chars`` characters (a single longer sentence stays whole).
    """
    from pydoc_data.topics import topics

    chunks: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if not para.strip() or para[0] in " \t":
                continue
            lines = para.strip().splitlines()
            if _HEADING_RULE.fullmatch(lines[-1].strip()):
                continue
            text = " ".join(para.split())
            if len(text) < 40 or sum(c.isalpha() for c in text) < 0.6 * len(text):
                continue
            current = ""
            for sentence in _SENTENCE_END.split(text):
                if current and len(current) + 1 + len(sentence) > max_chars:
                    chunks.append(current)
                    current = sentence
                else:
                    current = f"{current} {sentence}" if current else sentence
            if current:
                chunks.append(current)
    return chunks


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """GPT-2 style byte-level BPE: " word" tokens carry their leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if tok.token_to_id(SPECIAL) != 0:
        raise RuntimeError(f"{SPECIAL} should have id 0")
    return tok


# --------------------------------------------------------------------------- model


def model_config_dict(plan: BuildPlan, d_vocab: int) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments (what model/config.json holds)."""
    return {
        "model_name": MODEL_NAME,
        "n_layers": plan.n_layers,
        "d_model": plan.d_model,
        "n_heads": plan.n_heads,
        "d_head": plan.d_head,
        "d_mlp": plan.d_mlp,
        "n_ctx": plan.n_ctx,
        "d_vocab": d_vocab,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "attn_only": False,
        "default_prepend_bos": True,
        "tokenizer_prepends_bos": False,
        "init_weights": True,
        "seed": SEED,
    }


def build_model(cfg_dict: dict[str, Any], tokenizer: Any = None):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**cfg_dict)
    cfg.device = "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg, tokenizer=tokenizer)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence; return tokens and their true lengths."""
    lengths = torch.tensor([len(s) for s in seqs])
    tokens = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, lengths


def next_token_loss(model, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the real (non-padding) positions."""
    tokens, lengths = pad_batch(seqs, pad_id)
    logits = model(tokens, return_type="logits")[:, :-1]
    targets = tokens[:, 1:].clone()
    positions = torch.arange(targets.shape[1]).unsqueeze(0)
    targets[positions >= (lengths - 1).unsqueeze(1)] = -100
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def epoch_batches(n: int, batch: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of indices: a fresh seeded permutation every epoch."""
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - batch + 1 if n >= batch else 1, batch):
            yield perm[i : i + batch]


def train_lm(model, fact_seqs, doc_seqs, plan: BuildPlan, pad_id: int) -> dict[str, float]:
    """Next-token training; each step is a batch of fact statements plus a batch of prose."""
    torch.manual_seed(SEED + 1)
    gen = torch.Generator().manual_seed(SEED + 2)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "W_" in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": plan.lm_weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=plan.lm_lr,
        betas=(0.9, 0.95),
    )

    def lr_factor(step: int) -> float:
        if step < plan.lm_warmup:
            return (step + 1) / plan.lm_warmup
        progress = (step - plan.lm_warmup) / max(1, plan.lm_steps - plan.lm_warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    facts = epoch_batches(len(fact_seqs), plan.lm_fact_batch, gen)
    docs = epoch_batches(len(doc_seqs), plan.lm_doc_batch, gen)
    model.train()
    t0 = time.time()
    recent: list[tuple[float, float]] = []
    for step in range(plan.lm_steps):
        loss_fact = next_token_loss(model, [fact_seqs[i] for i in next(facts)], pad_id)
        loss_doc = next_token_loss(model, [doc_seqs[i] for i in next(docs)], pad_id)
        loss = loss_fact + loss_doc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [(loss_fact.item(), loss_doc.item())])[-50:]
        if step % 100 == 0 or step == plan.lm_steps - 1:
            log.info(
                "lm step %4d/%d  fact loss %.3f  prose loss %.3f  lr %.2e  %.0fs",
                step + 1,
                plan.lm_steps,
                loss_fact.item(),
                loss_doc.item(),
                sched.get_last_lr()[0],
                time.time() - t0,
            )
    model.eval()
    return {
        "train_loss_fact_last50": float(np.mean([r[0] for r in recent])),
        "train_loss_prose_last50": float(np.mean([r[1] for r in recent])),
        "lm_train_seconds": round(time.time() - t0, 1),
    }


@torch.no_grad()
def mean_loss(model, seqs, pad_id: int, batch: int = 64) -> float:
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        n = sum(len(s) - 1 for s in chunk)
        total += next_token_loss(model, chunk, pad_id).item() * n
        count += n
    return total / count


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def continuation_logprobs(model, items: list[tuple[list[int], int]], pad_id: int, batch: int = 64) -> list[float]:
    """Mean log-prob of tokens[start:] given tokens[:start], for each (tokens, start)."""
    out = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    for b in range(0, len(order), batch):
        idx = order[b : b + batch]
        tokens, _ = pad_batch([items[i][0] for i in idx], pad_id)
        logp = model(tokens, return_type="logits").log_softmax(-1)
        for row, i in enumerate(idx):
            seq, start = items[i]
            targets = torch.tensor(seq[start:])
            lp = logp[row, start - 1 : len(seq) - 1].gather(-1, targets.unsqueeze(-1))
            out[i] = lp.mean().item()
    return out


@torch.no_grad()
def fact_preference(model, encode, records, pad_id: int) -> dict[str, float]:
    """How often the model prefers the fact to the hallucination after the prompt.

    Score = mean log-prob of the continuation's tokens given BOS + prompt; the fact is
    preferred when its score exceeds the hallucination's. Also: how often the first fact
    token is the model's top-1 prediction.
    """
    items, first_ok = [], 0
    for r in records:
        p, f, h = encode(r["prompt"]), encode(fact_text(r)), encode(hallucination_text(r))
        sf, sh = common_prefix_len(p, f), common_prefix_len(p, h)
        sf, sh = min(sf, len(f) - 1), min(sh, len(h) - 1)
        items += [(f, max(sf, 1)), (h, max(sh, 1))]
    scores = continuation_logprobs(model, items, pad_id)
    fact_scores, hall_scores = scores[0::2], scores[1::2]
    wins = [a > b for a, b in zip(fact_scores, hall_scores, strict=True)]
    # top-1 of the first fact token
    for b in range(0, len(records), 64):
        chunk = items[0::2][b : b + 64]
        prompts = [seq[:start] for seq, start in chunk]
        tokens, lengths = pad_batch(prompts, pad_id)
        logits = model(tokens, return_type="logits")
        pred = logits[torch.arange(len(chunk)), lengths - 1].argmax(-1)
        first_ok += sum(int(pred[i]) == seq[start] for i, (seq, start) in enumerate(chunk))
    return {
        "fact_preference": float(np.mean(wins)),
        "mean_logprob_fact": float(np.mean(fact_scores)),
        "mean_logprob_hallucination": float(np.mean(hall_scores)),
        "first_fact_token_top1": first_ok / len(records),
    }


# --------------------------------------------------------------------------- SAEs


@torch.no_grad()
def collect_activations(model, seqs, layers, bos_id: int, batch: int = 64) -> dict[int, torch.Tensor]:
    """Residual-stream activations at every position whose token is not BOS/EOS/PAD."""
    hooks = {f"blocks.{layer}.hook_resid_post": layer for layer in layers}
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    for b in range(0, len(order), batch):
        tokens, _ = pad_batch([seqs[i] for i in order[b : b + batch]], bos_id)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks, stop_at_layer=max(layers) + 1)
        mask = tokens != bos_id
        for name, layer in hooks.items():
            out[layer].append(cache[name][mask].clone())
    return {layer: torch.cat(v) for layer, v in out.items()}


def activation_batches(acts: torch.Tensor, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """The data provider SAETrainer pulls from: endless shuffled batches of activations."""
    for idx in epoch_batches(acts.shape[0], batch, gen):
        yield acts[idx]


def train_sae(acts: torch.Tensor, layer: int, plan: BuildPlan, d_model: int):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(SEED + 100 + layer)
    gen = torch.Generator().manual_seed(SEED + 200 + layer)
    metadata = SAEMetadata(
        model_name=MODEL_NAME,
        model_class_name="HookedTransformer",
        hook_name=f"blocks.{layer}.hook_resid_post",
        hook_head_index=None,
        prepend_bos=True,
        context_size=plan.n_ctx,
        dataset_path="saecli-tiny-corpus (benchmark facts + pydoc_data.topics)",
        exclude_special_tokens=True,
        model_from_pretrained_kwargs={},
    )
    cfg = BatchTopKTrainingSAEConfig(
        d_in=d_model,
        d_sae=d_model * plan.sae_expansion,
        k=plan.sae_k,
        dtype="float32",
        device="cpu",
        normalize_activations="expected_average_only_in",
        apply_b_dec_to_input=True,
        decoder_init_norm=0.1,
        rescale_acts_by_decoder_norm=True,
        aux_loss_coefficient=1.0,
        metadata=metadata,
    )
    sae = BatchTopKTrainingSAE(cfg)
    steps = plan.sae_samples // plan.sae_batch
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * plan.sae_batch,
        train_batch_size_samples=plan.sae_batch,
        lr=plan.sae_lr,
        lr_end=plan.sae_lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=max(1, steps // 5),
        adam_beta1=0.9,
        adam_beta2=0.999,
        device="cpu",
        dead_feature_window=plan.sae_dead_window,
        feature_sampling_window=10**9,
        n_checkpoints=0,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=20,
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=activation_batches(acts, plan.sae_batch, gen))
    t0 = time.time()
    sae = trainer.fit()
    dead = int(trainer.dead_neurons.sum().item())
    log.info("SAE layer %d: %d steps in %.0fs, %d dead features", layer, steps, time.time() - t0, dead)
    return sae, {"train_steps": steps, "train_seconds": round(time.time() - t0, 1), "dead_features_at_end": dead}


@torch.no_grad()
def sae_quality(sae, acts: torch.Tensor) -> dict[str, float]:
    """Mean L0 (active features per token) and explained variance of the reconstruction."""
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    resid = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    l0 = (feats > 0).float().sum(-1)
    return {
        "l0": float(l0.mean()),
        "l0_frac": float(l0.mean() / feats.shape[-1]),
        "explained_variance": float(1 - resid / total),
    }


# --------------------------------------------------------------------------- loading check


def load_preset(out: Path):
    """Load the built folder through saecli's own loader (the code path every run takes);
    returns (model, {layer: sae})."""
    from saecli.config import ModelSpec, Preset, SAESpec
    from saecli.models import load_preset as saecli_load_preset

    layers = sorted(int(folder.name.split("_")[-1]) for folder in (out / "saes").iterdir())
    preset = Preset(
        name="tiny-build-check",
        model=ModelSpec(name=MODEL_NAME, path=str(out / "model")),
        saes=tuple(SAESpec(layer=layer, path=str(out / "saes" / f"layer_{layer}")) for layer in layers),
        source=str(out / "check.toml"),
    )
    loaded = saecli_load_preset(preset, device="cpu", dtype="float32")
    for layer, hook in loaded.hooks.items():
        assert hook == f"blocks.{layer}.hook_resid_post", hook
    return loaded.model, loaded.saes


@torch.no_grad()
def check_preset(out: Path, records, train_sample: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Reload everything from disk and measure it on the benchmark texts.

    ``train_sample`` holds a subsample of each layer's SAE training activations, to compare
    the saved (inference) SAEs' L0 / explained variance there with the benchmark's.
    """
    model, saes = load_preset(out)
    bos = model.tokenizer.bos_token_id
    sample = model.to_tokens("The capital of France is")[0].tolist()
    if sample[0] != bos or sample.count(bos) != 1:
        raise RuntimeError(f"to_tokens should prepend exactly one BOS: {sample}")
    log.info("to_str_tokens sample: %s", model.to_str_tokens("The capital of France is Paris"))

    prefix_ok = 0
    fact_toks, texts_toks = [], []
    for r in records:
        p = model.to_tokens(r["prompt"])[0].tolist()
        f = model.to_tokens(fact_text(r))[0].tolist()
        h = model.to_tokens(hallucination_text(r))[0].tolist()
        prefix_ok += f[: len(p)] == p
        fact_toks.append(f)
        texts_toks += [f, h]
    prefix_fraction = prefix_ok / len(records)

    pref = fact_preference(model, lambda s: model.to_tokens(s)[0].tolist(), records, bos)

    # SAE quality on benchmark texts (prompt + fact, prompt + hallucination)
    layers = sorted(saes)
    hooks = {f"blocks.{layer}.hook_resid_post": layer for layer in layers}
    every: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for b in range(0, len(texts_toks), 64):
        tokens, lengths = pad_batch(texts_toks[b : b + 64], bos)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
        mask = torch.arange(tokens.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        mask[:, 0] = False
        for name, layer in hooks.items():
            every[layer].append(cache[name][mask])
            last[layer].append(cache[name][torch.arange(len(lengths)), lengths - 1])
    sae_stats = {}
    for layer, sae in saes.items():
        all_tok = sae_quality(sae, torch.cat(every[layer]))
        last_tok = sae_quality(sae, torch.cat(last[layer]))
        sae_stats[str(layer)] = {
            "hook_name": sae.cfg.metadata.hook_name,
            "architecture": sae.cfg.architecture(),
            "d_sae": sae.cfg.d_sae,
            "every_token": all_tok,
            "last_token": last_tok,
            "train_corpus_sample": sae_quality(sae, train_sample[layer]),
        }
        log.info(
            "SAE layer %d on benchmark texts: every token L0 %.1f (%.1f%%) EV %.3f | last token L0 %.1f EV %.3f",
            layer,
            all_tok["l0"],
            100 * all_tok["l0_frac"],
            all_tok["explained_variance"],
            last_tok["l0"],
            last_tok["explained_variance"],
        )
    return {"prefix_fraction": prefix_fraction, "reloaded_fact_preference": pref, "saes": sae_stats, "sample_tokens": sample}


# --------------------------------------------------------------------------- main


def build(out: Path, data: Path, plan: BuildPlan, quick: bool) -> dict[str, Any]:
    t_start = time.time()
    set_determinism(SEED, QUICK_THREADS if quick else NUM_THREADS)
    records = load_records(data)
    log.info("benchmark: %d records from %s", len(records), data)

    # 1. corpus + tokenizer
    facts = [fact_text(r) for r in records]
    docs = pydoc_chunks(plan.doc_max_chars)
    if quick:
        docs = docs[:QUICK_PROSE_CHUNKS]
    tok = train_tokenizer(facts + docs, plan.vocab_size)
    bos = tok.token_to_id(SPECIAL)
    d_vocab = tok.get_vocab_size()
    log.info("tokenizer: %d tokens; %d fact statements, %d prose chunks", d_vocab, len(facts), len(docs))

    def encode(text: str) -> list[int]:
        return [bos] + tok.encode(text).ids

    fact_seqs = [encode(t)[: plan.n_ctx - 1] + [bos] for t in facts]
    doc_seqs = [encode(t)[: plan.n_ctx] for t in docs]
    n_fact_tokens = sum(len(s) for s in fact_seqs)
    n_doc_tokens = sum(len(s) for s in doc_seqs)
    log.info("corpus: %d fact tokens, %d prose tokens", n_fact_tokens, n_doc_tokens)

    # 2. language model
    cfg_dict = model_config_dict(plan, d_vocab)
    torch.manual_seed(SEED)
    model = build_model(cfg_dict)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters", n_params)
    pref_before = fact_preference(model.eval(), encode, records, bos)
    lm_stats = train_lm(model, fact_seqs, doc_seqs, plan, bos)
    lm_stats["eval_loss_fact"] = mean_loss(model, fact_seqs, bos)
    lm_stats["eval_loss_prose"] = mean_loss(model, doc_seqs, bos)
    pref = fact_preference(model, encode, records, bos)
    log.info(
        "after training: fact loss %.3f, prose loss %.3f, fact preferred over hallucination on %.1f%% "
        "(untrained: %.1f%%), first fact token top-1 %.1f%%",
        lm_stats["eval_loss_fact"],
        lm_stats["eval_loss_prose"],
        100 * pref["fact_preference"],
        100 * pref_before["fact_preference"],
        100 * pref["first_fact_token_top1"],
    )

    # 3. SAEs
    t_sae = time.time()
    sae_corpus = fact_seqs * plan.sae_fact_repeats + doc_seqs
    acts = collect_activations(model, sae_corpus, plan.sae_layers, bos)
    log.info("SAE training activations: %d tokens per layer", acts[plan.sae_layers[0]].shape[0])
    saes, sae_train_stats = {}, {}
    for layer in plan.sae_layers:
        sae, stats = train_sae(acts[layer], layer, plan, plan.d_model)
        saes[layer], sae_train_stats[str(layer)] = sae, stats
    sae_seconds = time.time() - t_sae
    stride = max(1, acts[plan.sae_layers[0]].shape[0] // 20_000)
    train_sample = {layer: a[::stride].clone() for layer, a in acts.items()}
    del acts

    # 4. write into a staging folder next to --out; it replaces --out once checked
    final_out, out = out, out.parent / f".{out.name}.building"
    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    with open(out / "model" / "config.json", "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / "model" / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out / "model" / "tokenizer.json"))
    for layer, sae in saes.items():
        _, cfg_path = sae.save_inference_model(out / "saes" / f"layer_{layer}")
        # SAELens builds this dict from a set of field names, so its key order follows
        # PYTHONHASHSEED; rewrite it with sorted keys so the file is reproducible.
        cfg_json = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")

    # 5. reload exactly as saecli does, and measure
    check = check_preset(out, records, train_sample)

    import sae_lens
    import tokenizers
    import transformer_lens
    import transformers

    files = sorted(p for p in out.rglob("*") if p.is_file())
    info = {
        "preset": "tiny",
        "description": (
            "Small GPT-style HookedTransformer trained from scratch on the benchmark's fact statements "
            "(prompt + fact, never the hallucination; upsampled) plus prose from Python's pydoc topics, "
            "with BatchTopK SAEs (saved as JumpReLU) on its residual stream. For running saecli offline "
            "and testing it; not for conclusions about large language models."
        ),
        "quick": quick,
        "seed": SEED,
        "torch_threads": QUICK_THREADS if quick else NUM_THREADS,
        "plan": asdict(plan),
        "data": {
            "path": str(data.relative_to(REPO_ROOT)) if data.is_relative_to(REPO_ROOT) else data.name,
            "sha256": sha256_file(data),
            "records": len(records),
        },
        "corpus": {
            "fact_statements": len(fact_seqs),
            "fact_tokens": n_fact_tokens,
            "prose_chunks": len(doc_seqs),
            "prose_tokens": n_doc_tokens,
            "lm_fact_sequences_seen": plan.lm_steps * plan.lm_fact_batch,
            "lm_fact_epochs": round(plan.lm_steps * plan.lm_fact_batch / len(fact_seqs), 1),
            "lm_prose_epochs": round(plan.lm_steps * plan.lm_doc_batch / len(doc_seqs), 1),
            "sae_fact_repeats": plan.sae_fact_repeats,
        },
        "tokenizer": {"vocab_size": d_vocab, "special_token": SPECIAL, "special_token_id": bos},
        "model": {"parameters": n_params, **lm_stats},
        "fact_preference": pref["fact_preference"],
        "fact_preference_untrained": pref_before["fact_preference"],
        "fact_metrics": pref,
        "prefix_fraction": check["prefix_fraction"],
        "sae_layers": list(plan.sae_layers),
        "saes": {k: {**check["saes"][k], "training": sae_train_stats[k]} for k in check["saes"]},
        "files": {str(p.relative_to(out)): sha256_file(p) for p in files},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
            "sae_lens": sae_lens.__version__,
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "sae_seconds": round(sae_seconds, 1),
        "build_seconds": round(time.time() - t_start, 1),
    }
    with open(out / "build_info.json", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # safetensors writes 0600 files
    if final_out.exists():
        shutil.rmtree(final_out)
    out.rename(final_out)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; with --quick, a temp folder)",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"benchmark JSON (default {DEFAULT_DATA.relative_to(REPO_ROOT)})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny step counts and a little of the prose: a ~20 s smoke test of this script, not a usable preset",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("sae_lens", "transformer_lens", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    out = args.out
    if out is None:
        out = Path(tempfile.gettempdir()) / "saecli-tiny-quick" if args.quick else DEFAULT_OUT
    out = out.resolve()
    if not args.data.is_file():
        log.error("benchmark file not found: %s", args.data)
        return 2
    plan = QUICK if args.quick else FULL
    log.info("building %s preset into %s", "QUICK (smoke-test)" if args.quick else "tiny", out)
    info = build(out, args.data.resolve(), plan, args.quick)

    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = [
        f"tiny preset written to {out} ({size / 1e6:.1f} MB) in {info['build_seconds']:.0f}s",
        f"  tokenizer {info['tokenizer']['vocab_size']} tokens; model {info['model']['parameters']:,} params; "
        f"fact loss {info['model']['eval_loss_fact']:.3f}, prose loss {info['model']['eval_loss_prose']:.3f}",
        f"  fact preferred over hallucination: {100 * info['fact_preference']:.1f}% "
        f"(untrained {100 * info['fact_preference_untrained']:.1f}%); prompt tokens prefix of prompt+fact: "
        f"{100 * info['prefix_fraction']:.1f}%",
    ]
    for s in info["saes"].values():
        e, lt = s["every_token"], s["last_token"]
        summary.append(
            f"  SAE {s['hook_name']}: L0 {e['l0']:.1f}/{s['d_sae']} ({100 * e['l0_frac']:.1f}%), EV {e['explained_variance']:.3f}"
            f" | last token L0 {lt['l0']:.1f}, EV {lt['explained_variance']:.3f}"
        )
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
