"""The real-preset path, offline: ``load_preset("gpt2-small")`` from a fake Hugging Face cache.

The ``gpt2-small`` preset loads its model with ``HookedTransformer.from_pretrained_no_processing``
and its SAEs with ``SAE.from_pretrained("gpt2-small-res-jb", ...)``; the other tests only use the
embedded preset, which takes the local-folder path. Here we build, in ``tmp_path``, a Hugging Face
hub cache in the layout the hub client writes (``models--ORG--NAME/{blobs,refs,snapshots}``)
holding a *tiny* random GPT-2 (TransformerLens reads GPT-2's dimensions from ``config.json``, so
12 layers of width 32 load as "gpt2-small") and three tiny SAEs in the file layout of
``jbloom/GPT2-Small-SAEs-Reformatted``. With ``HF_HUB_OFFLINE=1`` every library in the chain
(huggingface_hub, transformers, TransformerLens, SAELens) must find everything in that cache, and
saecli's "not cached" check must name what is missing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from fake_hub import add_repo

import saecli
from saecli.config import find_preset
from saecli.hub import sae_location

pytestmark = pytest.mark.slow

PRESET = "gpt2-small"
D_MODEL = 32
D_SAE = 64
N_LAYERS = 12  # the preset reads blocks 2, 6 and 10; GPT-2 small has 12 blocks
N_CTX = 256  # the tokenizer below is (almost) one token per byte: room for the longest sample
EOT = "<|endoftext|>"
# A few merges, so that merges.txt and the BPE model are not empty; the rest is byte-level.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("Ġ", "o"), ("Ġo", "f")]


# --- the cache layout --------------------------------------------------------------------------


def _add_to_cache(cache: Path, repo_id: str, staged: Path) -> Path:
    """Put the files under ``staged`` into ``cache`` as the hub client would after a download."""
    files = {str(p.relative_to(staged)): p.read_bytes() for p in sorted(staged.rglob("*")) if p.is_file()}
    return add_repo(cache, "models", repo_id, files)


# --- the fake repositories -----------------------------------------------------------------------


def _write_tokenizer(folder: Path) -> int:
    """A GPT-2-style byte-level BPE tokenizer; returns its vocabulary size.

    The vocabulary is the 256 byte symbols of GPT-2's byte-level alphabet plus a few merges and
    ``<|endoftext|>`` (last, as in GPT-2), so every text tokenizes without unknown tokens and the
    embedding matrix stays small. ``save_pretrained`` writes ``tokenizer.json`` and
    ``tokenizer_config.json`` (what ``AutoTokenizer`` reads); ``vocab.json`` and ``merges.txt`` are
    written too because the real ``gpt2`` repo has them.
    """
    from tokenizers import pre_tokenizers
    from transformers import GPT2Tokenizer  # the tokenizers-backed ("fast") class in transformers 5

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab[EOT] = len(vocab)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=MERGES, model_max_length=N_CTX)
    tokenizer.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return len(vocab)


def _write_tiny_gpt2(folder: Path) -> None:
    """A seeded random GPT-2 with the real architecture and tiny widths, as ``save_pretrained``
    writes it (``config.json`` + ``model.safetensors``), plus its tokenizer.

    ``n_ctx`` is passed explicitly: the real ``gpt2`` config.json carries this legacy key and
    TransformerLens reads it, but transformers 5's ``GPT2Config`` no longer writes it by itself.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab_size = _write_tokenizer(folder)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=N_CTX,
        n_ctx=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=2,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG of other tests
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)


def _write_sae(folder: Path, hook_name: str, seed: int) -> None:
    """One SAE as ``jbloom/GPT2-Small-SAEs-Reformatted`` ships it: ``cfg.json`` (the pre-6.0 SAELens
    keys those files have: ``hook_point``, no ``sae_lens_version``, dtype ``torch.float32``, so
    SAELens' legacy-config conversion runs as it does for the real ones), ``sae_weights.safetensors``
    (W_enc, b_enc, W_dec, b_dec) and ``sparsity.safetensors``.

    The decoder rows are unit vectors and the encoder their transpose scaled up, so with a zero
    encoder bias about half the features fire on any residual: the metrics have something to chew on.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    layer = int(hook_name.split(".")[1])
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": hook_name,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "expansion_factor": D_SAE // D_MODEL,
        "b_dec_init_method": "geometric_median",
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "device": "cuda",
        "seed": 42,
        "dtype": "torch.float32",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_MODEL, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    save_file(
        {
            "W_enc": (w_dec.T * 10.0).contiguous(),
            "b_enc": torch.zeros(D_SAE),
            "W_dec": w_dec.contiguous(),
            "b_dec": 0.01 * torch.randn(D_MODEL, generator=gen),
        },
        str(folder / "sae_weights.safetensors"),
    )
    save_file({"sparsity": -3.0 * torch.ones(D_SAE)}, str(folder / "sparsity.safetensors"))


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Make every hub client in this process use ``cache`` and stay offline, for this test only.

    huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants``
    at import time (already done by now), and looks them up there at call time; transformers asks
    ``huggingface_hub.constants`` too (``is_offline_mode``). So both the module attributes and the
    environment (read by saecli's ``hub.is_offline`` and by any subprocess) are patched; monkeypatch
    restores all of it afterwards.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> dict[str, Path]:
    """The fake cache with everything the ``gpt2-small`` preset needs; returns each SAE's snapshot
    folder by hook id. Repo ids and folders come from TransformerLens and the SAELens directory, as
    saecli's own lookup does, so the test follows the preset file."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    preset = find_preset(PRESET)
    cache, staging = tmp_path / "hub", tmp_path / "staging"

    model_dir = staging / "model"
    _write_tiny_gpt2(model_dir)
    _add_to_cache(cache, get_official_model_name(preset.model.name), model_dir)

    sae_folders = {}
    sae_repo = None
    for spec in preset.saes:
        sae_repo, folder = sae_location(spec.release, spec.id)
        _write_sae(staging / "saes" / folder, hook_name=spec.id, seed=spec.layer)
        sae_folders[spec.id] = folder
    snapshot = _add_to_cache(cache, sae_repo, staging / "saes")

    _point_hub_at(monkeypatch, cache)
    return {hook: snapshot / folder for hook, folder in sae_folders.items()}


# --- the tests -----------------------------------------------------------------------------------


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, float)}


def test_gpt2_small_preset_loads_and_runs_from_offline_cache(fake_hub):
    loaded = saecli.load_preset(PRESET, device="cpu", dtype="float64")

    assert loaded.hooks == {layer: f"blocks.{layer}.hook_resid_pre" for layer in (2, 6, 10)}
    assert loaded.model.cfg.d_model == D_MODEL and loaded.model.cfg.n_layers == N_LAYERS
    assert loaded.model.cfg.dtype == torch.float64
    assert all(sae.cfg.d_sae == D_SAE and sae.W_enc.dtype == torch.float64 for sae in loaded.saes.values())

    samples = saecli.load_samples(limit=3)
    batched = list(saecli.analyze(samples, loaded, batch_size=3))
    sequential = list(saecli.analyze(samples, loaded, sequential=True))

    assert [r["sample_id"] for r in batched] == [s.id for s in samples] == [r["sample_id"] for r in sequential]
    for row_b, row_s in zip(batched, sequential, strict=True):
        numbers = _numbers(row_b)
        assert numbers, "no numeric columns"
        bad = [k for k, v in numbers.items() if not math.isfinite(v)]
        assert not bad, f"non-finite metrics for {row_b['sample_id']}: {bad}"
        assert row_b.keys() == row_s.keys()
        worst = max(abs(v - row_s[k]) for k, v in numbers.items())
        assert worst <= 1e-9, (row_b["sample_id"], worst)
        assert {k: v for k, v in row_b.items() if k not in numbers} == {k: v for k, v in row_s.items() if k not in numbers}


def test_missing_sae_is_named_with_its_download_command(fake_hub):
    missing_hook = "blocks.6.hook_resid_pre"
    shutil.rmtree(fake_hub[missing_hook])

    with pytest.raises(saecli.SaecliError) as info:
        saecli.load_preset(PRESET, device="cpu", dtype="float64")

    err = info.value
    assert f"gpt2-small-res-jb/{missing_hook}" in err.message
    assert "offline" in err.message
    assert "blocks.2.hook_resid_pre" not in err.message and "model gpt2-small" not in err.message
    assert err.hint is not None
    assert f"hf download jbloom/GPT2-Small-SAEs-Reformatted --include '{missing_hook}/*'" in err.hint
