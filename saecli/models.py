"""Loading a preset: the HookedTransformer and its three SAEs, on a device and in a dtype.

The embedded preset and the real ones take the same path: a local folder is loaded with
``HookedTransformer(cfg)`` + its safetensors weights and ``SAE.load_from_disk``; a hub preset with
``HookedTransformer.from_pretrained_no_processing`` and ``SAE.from_pretrained``, from the local
Hugging Face cache, with a one-line error naming what is missing when it is not there offline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from saecli.config import Preset, SAESpec, find_preset, resolve_location
from saecli.errors import SaecliError

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def sae_dtype_for(model_dtype: str) -> str:
    """SAEs run in the model's dtype, or float32 when the model runs in 16 bits."""
    return model_dtype if model_dtype in ("float32", "float64") else "float32"


def resolve_device(requested: str = "auto") -> tuple[str, str]:
    """The device to use and why. ``auto`` prefers cuda, then mps, then cpu."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        if cuda:
            return "cuda", f"auto: CUDA is available ({torch.cuda.get_device_name(0)})"
        if mps:
            return "mps", "auto: no CUDA; Apple MPS is available"
        return "cpu", "auto: neither CUDA nor MPS is available"
    if requested == "cuda" and not cuda:
        raise SaecliError("--device cuda was asked for but CUDA is not available", hint="run `saecli doctor`, or use --device cpu")
    if requested == "mps" and not mps:
        raise SaecliError("--device mps was asked for but MPS is not available", hint="use --device cpu")
    return requested, f"{requested}: asked for"


@dataclass
class LoadedPreset:
    """A preset ready to analyse: ``.model``, ``.saes`` (layer → SAE) and ``.layers``."""

    preset: Preset
    model: HookedTransformer
    saes: dict[int, SAE]
    hooks: dict[int, str]
    """Layer → the hook its SAE was trained on (from the SAE's own config)."""
    device: str
    device_reason: str
    dtype: str
    sae_dtype: str
    load_seconds: float
    identities: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return self.preset.layers


def _hub_is_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        parsed = urlparse(constants.ENDPOINT)
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=3):
            return False
    except OSError:
        return True


def _cached_snapshot(repo_id: str, subpath: str | None = None) -> Path | None:
    """The local snapshot folder of ``repo_id`` if it (and ``subpath`` in it) is in the cache."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id, local_files_only=True, allow_patterns=[f"{subpath}/*"] if subpath else ["config.json"]
            )
        )
    except Exception:  # noqa: BLE001 - any hub-client failure here means "not cached"
        return None
    target = folder / subpath if subpath else folder / "config.json"
    return folder if target.exists() else None


def missing_from_cache(preset: Preset) -> list[tuple[str, str]]:
    """What of a hub preset is not in the local Hugging Face cache: (what, command to fetch it)."""
    missing = []
    if preset.model.path is None and not preset.model.random_init:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            repo_id = get_official_model_name(preset.model.name)
        except ValueError as exc:
            raise SaecliError(f"unknown TransformerLens model {preset.model.name!r}: {exc}") from None
        if _cached_snapshot(repo_id) is None:
            missing.append((f"model {preset.model.name}", f"hf download {repo_id}"))
    for spec in preset.saes:
        if spec.path is not None or spec.random is not None:
            continue
        repo_id, folder = _sae_location(spec)
        if _cached_snapshot(repo_id, folder) is None:
            missing.append((f"SAE {spec.release}/{spec.id}", f"hf download {repo_id} --include '{folder}/*'"))
    return missing


def _require_cached(preset: Preset) -> None:
    missing = missing_from_cache(preset)
    if not missing:
        return
    if _hub_is_offline():
        what = ", ".join(m for m, _ in missing)
        raise SaecliError(
            f"not in the Hugging Face cache and the hub cannot be reached (offline): {what}",
            hint="fetch on a connected machine: " + "; ".join(cmd for _, cmd in missing),
        )
    log.info("downloading from the hub: %s", ", ".join(m for m, _ in missing))


def _sae_location(spec: SAESpec) -> tuple[str, str]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release = get_pretrained_saes_directory().get(spec.release)
    if release is None:
        raise SaecliError(f"unknown SAELens release {spec.release!r}")
    if spec.id not in release.saes_map:
        raise SaecliError(f"SAE id {spec.id!r} is not in release {spec.release}")
    return release.repo_id, release.saes_map[spec.id]


def _tokenizer(path: Path, special: str = "<|endoftext|>") -> Any:
    from transformers import PreTrainedTokenizerFast

    if not path.is_file():
        raise SaecliError(f"tokenizer file not found: {path}")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=special,
        eos_token=special,
        pad_token=special,
        # The tokenizer prepends BOS itself; TransformerLens then uses it as it is instead of
        # re-loading it by name from the hub.
        add_bos_token=True,
        name_or_path=str(path.parent),
    )


def _load_local_model(folder: Path, dtype: str, device: str) -> HookedTransformer:
    import torch
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise SaecliError(f"model folder {folder} has no {name}")
    cfg_dict = json.loads((folder / "config.json").read_text())
    cfg_dict.update(dtype=torch_dtype(dtype), device="cpu")
    cfg = HookedTransformerConfig(**cfg_dict)
    tokenizer = _tokenizer(folder / "tokenizer.json", cfg_dict.get("special_token", "<|endoftext|>"))
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    state = load_file(str(folder / "model.safetensors"))
    model.load_state_dict({k: v.to(torch_dtype(dtype)) for k, v in state.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        return model.to(device, print_details=False)


def _random_model(preset: Preset, dtype: str, device: str) -> HookedTransformer:
    """The architecture in ``model.config`` with seeded random weights, built on the device."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    spec = preset.model
    tokenizer = _tokenizer(resolve_location(spec.tokenizer, preset.base_dir))
    cfg = HookedTransformerConfig(**{**spec.config, "seed": spec.seed, "dtype": torch_dtype(dtype), "device": device})
    with torch.device(device):
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")
    model.eval()
    return model


def _random_saes(preset: Preset, model: HookedTransformer, dtype: str, device: str) -> dict[int, SAE]:
    """Seeded random JumpReLU SAEs, thresholds calibrated on the model's own activations for the
    requested mean L0 (``target_l0``, default 100: what trained SAEs of this width show)."""
    import torch

    from saecli.data import load_samples
    from saecli.synthetic import calibrate_thresholds, random_sae

    probe = [s.fact_text for s in load_samples(limit=32)]
    tokens = model.to_tokens(probe, padding_side="right")
    lengths = torch.tensor([len(model.to_tokens(t)[0]) for t in probe], device=tokens.device)
    real = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
    real[:, 0] = False  # not the BOS position
    hooks = [spec.random["hook"] for spec in preset.saes]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in hooks)
    saes = {}
    for spec in preset.saes:
        cfg = spec.random
        sae = random_sae(model.cfg.d_model, int(cfg["d_sae"]), cfg["hook"], seed=int(cfg.get("seed", spec.layer)), dtype="float64")
        calibrate_thresholds(sae, cache[cfg["hook"]][real].to(torch.float64).cpu(), float(cfg.get("target_l0", 100)))
        saes[spec.layer] = sae.to(device=device, dtype=torch_dtype(dtype))
    return saes


def _load_hub_model(preset: Preset, dtype: str, device: str, extra: dict[str, Any]) -> HookedTransformer:
    from transformer_lens import HookedTransformer

    kwargs = {**extra, **preset.model.from_pretrained_kwargs}
    try:
        # TransformerLens prints progress to stdout, where saecli writes results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            model = HookedTransformer.from_pretrained_no_processing(
                preset.model.name, dtype=torch_dtype(dtype), device=device, default_padding_side="right", **kwargs
            )
    except OSError as exc:
        raise SaecliError(f"could not load model {preset.model.name}: {exc}".splitlines()[0]) from None
    model.eval()
    return model


def _load_sae(spec: SAESpec, preset: Preset, dtype: str, device: str) -> SAE:
    from sae_lens import SAE

    if spec.path is not None:
        folder = resolve_location(spec.path, preset.base_dir)
        if not (folder / "cfg.json").is_file():
            raise SaecliError(f"SAE folder for layer {spec.layer} not found or has no cfg.json: {folder}")
        return SAE.load_from_disk(str(folder), device=device, dtype=dtype)
    try:
        return SAE.from_pretrained(spec.release, spec.id, device=device, dtype=dtype)
    except OSError as exc:
        raise SaecliError(f"could not load SAE {spec.identity}: {exc}".splitlines()[0]) from None


def load_preset(
    name_or_path: str | Preset = "tiny", *, device: str = "auto", dtype: str | None = None
) -> LoadedPreset:
    """Load a preset by name, TOML path or :class:`Preset`, ready for :func:`saecli.analyze`."""
    preset = name_or_path if isinstance(name_or_path, Preset) else find_preset(name_or_path)
    dtype = dtype or preset.model.dtype
    device, reason = resolve_device(device)
    if device == "mps" and dtype == "float64":
        raise SaecliError("MPS does not support float64", hint="use --dtype float32 or --device cpu")
    sae_dtype = sae_dtype_for(dtype)
    started = time.perf_counter()
    _require_cached(preset)
    if preset.model.random_init:
        model = _random_model(preset, dtype, device)
        saes = _random_saes(preset, model, sae_dtype, device)
    elif preset.model.path is not None:
        saes = {spec.layer: _load_sae(spec, preset, sae_dtype, device) for spec in preset.saes}
        model = _load_local_model(resolve_location(preset.model.path, preset.base_dir), dtype, device)
    else:
        saes = {spec.layer: _load_sae(spec, preset, sae_dtype, device) for spec in preset.saes}
        first = next(iter(saes.values()))
        extra = dict(getattr(first.cfg.metadata, "model_from_pretrained_kwargs", None) or {})
        model = _load_hub_model(preset, dtype, device, extra)
    hooks: dict[int, str] = {}
    for layer, sae in saes.items():
        hook = sae.cfg.metadata.hook_name
        if hook not in model.hook_dict:
            raise SaecliError(f"the SAE for layer {layer} reads hook {hook!r}, which the model {preset.model.name} does not have")
        if sae.cfg.d_in != model.cfg.d_model:
            raise SaecliError(
                f"the SAE for layer {layer} has d_in {sae.cfg.d_in} but the model's d_model is {model.cfg.d_model}"
            )
        hooks[layer] = hook
        sae.eval()
    loaded = LoadedPreset(
        preset=preset,
        model=model,
        saes=saes,
        hooks=hooks,
        device=device,
        device_reason=reason,
        dtype=dtype,
        sae_dtype=sae_dtype,
        load_seconds=time.perf_counter() - started,
        identities={
            "model": preset.model.path or preset.model.name,
            "saes": {str(s.layer): s.identity for s in preset.saes},
        },
    )
    log.info("loaded preset %s on %s (%s) in %.1fs", preset.name, device, dtype, loaded.load_seconds)
    return loaded
