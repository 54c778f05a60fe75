"""Loading a preset: the HookedTransformer and its three SAEs, on a device and in a dtype.

The embedded preset and the real ones take the same path: a local folder is loaded with
``HookedTransformer(cfg)`` + its safetensors weights and ``SAE.load_from_disk``; a hub preset with
``HookedTransformer.from_pretrained_no_processing`` and ``SAE.from_pretrained``, from the local
Hugging Face cache, with a one-line error naming what is missing when it is not there offline.

The device rule and dtypes come from :mod:`saecli.device`, the cache and hub lookups from
:mod:`saecli.hub`; a ``random_init`` preset is built with :mod:`saecli.synthetic`'s builders
(imported only for such presets: that module needs torch at import time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saecli.config import Preset, SAESpec, find_preset, resolve_location
from saecli.device import dtype_problem, live_facts, resolve_device, sae_dtype_for, torch_dtype
from saecli.errors import SaecliError
from saecli.hub import cached_snapshot, fetch_commands, is_offline, model_repo, sae_location
from saecli.memory import is_out_of_memory
from saecli.validation import check_hook_layer, check_option

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresetInfo:
    """What a run records of a loaded preset, without its weights: the manifest's fields. A local
    run takes it from its :class:`LoadedPreset`; a Ray worker sends it to the driver, which never
    loads the model."""

    preset: Preset
    layers: list[int]
    hooks: dict[int, str]
    identities: dict[str, Any]
    dtype: str
    sae_dtype: str
    device: str
    device_reason: str
    load_seconds: float
    neuronpedia_ids: dict[int, str | None]


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

    @property
    def neuronpedia_ids(self) -> dict[int, str | None]:
        """Layer → the Neuronpedia id SAELens records in the SAE's metadata (the GemmaScope and
        gpt2-small-res-jb releases have one), or None: the report links features only with an id."""
        out: dict[int, str | None] = {}
        for layer, sae in self.saes.items():
            value = getattr(getattr(sae.cfg, "metadata", None), "neuronpedia_id", None)
            out[layer] = value if isinstance(value, str) and value else None
        return out

    @property
    def info(self) -> PresetInfo:
        return PresetInfo(preset=self.preset, layers=list(self.layers), hooks=dict(self.hooks), identities=self.identities,
                          dtype=self.dtype, sae_dtype=self.sae_dtype, device=self.device, device_reason=self.device_reason,
                          load_seconds=self.load_seconds, neuronpedia_ids=self.neuronpedia_ids)  # fmt: skip


def missing_from_cache(preset: Preset) -> list[tuple[str, str]]:
    """What of a hub preset is not in the local Hugging Face cache: (what, command to fetch it)."""
    missing = []
    if preset.model.path is None and not preset.model.random_init:
        repo_id, _ = model_repo(preset.model.name)
        if cached_snapshot(repo_id) is None:
            missing.append((f"model {preset.model.name}", fetch_commands([(repo_id, None)])[0]))
    for spec in preset.saes:
        if spec.path is not None or spec.random is not None:
            continue
        repo_id, folder = sae_location(spec.release, spec.id)
        if cached_snapshot(repo_id, folder) is None:
            missing.append((f"SAE {spec.release}/{spec.id}", fetch_commands([(repo_id, folder)])[0]))
    return missing


def _require_cached(preset: Preset) -> None:
    missing = missing_from_cache(preset)
    if not missing:
        return
    if is_offline():
        what = ", ".join(m for m, _ in missing)
        raise SaecliError(
            f"not in the Hugging Face cache and the hub cannot be reached (offline): {what}",
            hint="fetch on a connected machine: " + "; ".join(cmd for _, cmd in missing),
        )
    log.info("downloading from the hub: %s", ", ".join(m for m, _ in missing))


# -- local files, checked before anything is loaded ----------------------------------------------

_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
_MAX_HEADER = 100_000_000  # what the safetensors library itself accepts


def _gist(exc: BaseException, limit: int = 240) -> str:
    """A library's error in one line: its first lines, cut (a state-dict mismatch runs for pages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_file(what: str, path: Path, problem: str) -> SaecliError:
    return SaecliError(f"{what}: {path} {problem}", hint="restore the file, or re-create the preset's files")


def _read_local(what: str, path: Path) -> bytes:
    """A file of a preset, whole; missing or unreadable is one error naming it."""
    if not path.exists():
        raise _bad_file(what, path, "is missing")
    if not path.is_file():
        raise _bad_file(what, path, "is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _bad_file(what, path, f"cannot be read ({exc.strerror or exc})") from None


def check_json_file(what: str, path: Path) -> dict[str, Any]:
    """A JSON file of a preset that must hold one object (config.json, cfg.json, tokenizer.json)."""
    try:
        data = json.loads(_read_local(what, path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad_file(what, path, f"is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _bad_file(what, path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise _bad_file(what, path, "is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise _bad_file(what, path, f"must hold a JSON object, not {type(data).__name__}")
    return data


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None. Reads only its header: 8 bytes of
    little-endian header length, a JSON header whose tensors' data_offsets cover the rest exactly."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"is not a safetensors file (only {size} bytes)"
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _MAX_HEADER):
                return f"is truncated or not a safetensors file (its header claims {length} bytes, the file has {size})"
            header_bytes = handle.read(length)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or not isinstance(shape, list)
            or not all(isinstance(d, int) for d in shape)
        ):
            return f"is not a safetensors file (tensor {name!r} has no valid data_offsets and shape)"
        width = _SAFETENSORS_DTYPE_BYTES.get(info.get("dtype"))
        if width is not None and math.prod(shape) * width != offsets[1] - offsets[0]:
            return f"is damaged (tensor {name!r} of shape {shape} does not match its {offsets[1] - offsets[0]} bytes)"
        end = max(end, offsets[1])
    if 8 + length + end != size:
        state = "truncated" if 8 + length + end > size else "longer than its header says"
        return f"is {state} (its header needs {8 + length + end} bytes, the file has {size})"
    return None


@contextlib.contextmanager
def _naming(path: Path, problem: str) -> Iterator[None]:
    """Turn a failure of a library loading ``path`` into one line naming the file. The checks of
    :func:`check_preset_files` come first; this catches what they cannot see (a config.json with
    the wrong keys, weights of another shape). Out-of-memory errors pass through: they are not
    the file's fault."""
    try:
        yield
    except SaecliError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the loading libraries on this file
        if is_out_of_memory(exc):
            raise
        raise SaecliError(f"{path} {problem}: {_gist(exc)}") from None


def check_safetensors_file(what: str, path: Path) -> None:
    """A safetensors file of a preset: there, readable, and as long as its header says."""
    if not path.exists():
        raise _bad_file(what, path, "is missing")
    if not path.is_file():
        raise _bad_file(what, path, "is not a file")
    problem = _safetensors_problem(path)
    if problem is not None:
        raise _bad_file(what, path, problem)


def check_preset_files(preset: Preset) -> None:
    """Check every local file a preset uses before any model is built: each is there, its JSON
    parses to an object, and each safetensors file's header matches its size. The first problem is
    one SaecliError naming the file. Hub models and SAEs are not checked here (``_require_cached``
    is); loads nothing heavy."""
    spec = preset.model
    if spec.random_init:
        check_json_file("the model's tokenizer", resolve_location(spec.tokenizer, preset.base_dir))
    elif spec.path is not None:
        folder = resolve_location(spec.path, preset.base_dir)
        if not folder.is_dir():
            raise _bad_file(f"the model {spec.name}", folder, "is not a folder" if folder.exists() else "does not exist")
        check_json_file(f"the model {spec.name}", folder / "config.json")
        check_safetensors_file(f"the model {spec.name}", folder / "model.safetensors")
        check_json_file(f"the model {spec.name}", folder / "tokenizer.json")
    for sae in preset.saes:
        if sae.path is None:
            continue
        what = f"the SAE for layer {sae.layer}"
        folder = resolve_location(sae.path, preset.base_dir)
        if not folder.is_dir():
            raise _bad_file(what, folder, "is not a folder" if folder.exists() else "does not exist")
        cfg = check_json_file(what, folder / "cfg.json")
        meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
        check_hook_layer(sae.layer, meta.get("hook_name", cfg.get("hook_name")), str(folder / "cfg.json"))
        check_safetensors_file(what, folder / "sae_weights.safetensors")


def _tokenizer(path: Path, special: str = "<|endoftext|>") -> Any:
    from transformers import PreTrainedTokenizerFast

    if not path.is_file():
        raise SaecliError(f"tokenizer file not found: {path}")
    with _naming(path, "is not a tokenizer file that can be loaded"):
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

    what = f"the model in {folder}"
    cfg_dict = check_json_file(what, folder / "config.json")
    cfg_dict.update(dtype=torch_dtype(dtype), device="cpu")
    with _naming(folder / "config.json", "is not a TransformerLens model config"):
        cfg = HookedTransformerConfig(**cfg_dict)
        special = cfg_dict.get("special_token", "<|endoftext|>")
    tokenizer = _tokenizer(folder / "tokenizer.json", special)
    with _naming(folder / "config.json", "describes a model that cannot be built"):
        model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    weights = folder / "model.safetensors"
    check_safetensors_file(what, weights)
    with _naming(weights, "cannot be loaded into the model of config.json"):
        state = load_file(str(weights))
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
    # TransformerLens checks few of its config's types: a mistyped value often fails only when the
    # model is built, so both steps are named after [model.config].
    with _naming(Path(preset.source or "the preset"), "has a [model.config] that is not a valid TransformerLens config"):
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

    # The first 32 in file order: the thresholds (and so every benchmark of these presets) stay as they were.
    probe = [s.fact_text for s in load_samples(limit=32, limit_order="file")]
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
        sae = random_sae(
            model.cfg.d_model, int(cfg["d_sae"]), cfg["hook"], seed=int(cfg.get("seed", spec.layer)), dtype="float64"
        )
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
        with _naming(folder, f"(the SAE for layer {spec.layer}) cannot be loaded by SAELens"):
            sae = SAE.load_from_disk(str(folder), device=device, dtype=dtype)
    else:
        try:
            sae = SAE.from_pretrained(spec.release, spec.id, device=device, dtype=dtype)
        except OSError as exc:
            raise SaecliError(f"could not load SAE {spec.identity}: {exc}".splitlines()[0]) from None
    # A hub SAE's hook is known only now: checked before the model loads (minutes for a large one).
    check_hook_layer(spec.layer, sae.cfg.metadata.hook_name, f"SAE {spec.identity}")
    return sae


def load_preset(name_or_path: str | Preset = "tiny", *, device: str = "auto", dtype: str | None = None,
                layers: Any = None) -> LoadedPreset:  # fmt: skip
    """Load a preset by name, TOML path or :class:`Preset`, ready for :func:`saecli.analyze`;
    ``layers`` (``(5, 12, 20)`` or ``"5,12,20"``) reads those layers, as ``--layers`` does."""
    preset = name_or_path if isinstance(name_or_path, Preset) else find_preset(name_or_path)
    check_option("device", device)
    check_option("dtype", dtype)
    preset = preset.with_layers(check_option("layers", layers))
    check_preset_files(preset)
    dtype = dtype or preset.model.dtype
    device, reason = resolve_device(device, live_facts())
    problem = dtype_problem(device, dtype)
    if problem is not None:
        raise SaecliError(problem[0], hint=problem[1])
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
            raise SaecliError(f"the SAE for layer {layer} has d_in {sae.cfg.d_in} but the model's d_model is {model.cfg.d_model}")
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
