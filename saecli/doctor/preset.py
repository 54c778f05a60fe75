"""A preset, as ``doctor`` needs it: which files and Hugging Face cache entries it uses and which of
them are here, its model's and SAEs' shapes, and the data's longest text in tokens.

Belongs here: :func:`gather_preset`, the only function of ``doctor`` that reads a preset's files and
the cache, and the :class:`PresetFacts` it fills (tests build their own). Loads no model: shapes
come from config files (or ``KNOWN_SHAPES``), SAE locations from SAELens's YAML directory
(:mod:`saecli.hub`). Does not belong here: judging the facts (:mod:`saecli.doctor.checks`),
the cache and hub lookups themselves (:mod:`saecli.hub`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saecli.config import Preset, RunConfig, SAESpec, resolve_location, resolve_run_config
from saecli.doctor.facts import first_line
from saecli.doctor.shapes import KNOWN_SHAPES, ModelShape, SAEShape
from saecli.errors import SaecliError
from saecli.hub import HubStatus, cached_snapshot, fetch_commands, hub_status, model_repo, sae_directory, sae_location


@dataclass
class Artifact:
    """A file or cache entry a preset needs, whether it is there, and how to get it."""

    what: str
    location: str
    present: bool
    repo: str | None = None
    """The Hugging Face repo it comes from; None for files that ship with saecli or the preset."""
    include: str | None = None
    """The folder inside ``repo`` (an SAE); None for the whole repo (a model)."""

    @property
    def fetch(self) -> str | None:
        """The command that fetches it alone; :func:`missing_fetch_commands` merges several."""
        return fetch_commands([(self.repo, self.include)])[0] if self.repo else None


@dataclass
class PresetFacts:
    """What a preset needs and what of it is here, gathered by :func:`gather_preset`."""

    name: str
    source: str
    kind: Literal["local", "hub", "random"]
    dtype: str
    """The preset's own model dtype."""
    default_batch: int
    """The batch size of the run checked (the preset's default unless --batch-size; 1 for auto)."""
    synthetic: bool = False
    artifacts: list[Artifact] = field(default_factory=list)
    hub: HubStatus | None = None
    model_shape: ModelShape | None = None
    shape_source: str = ""
    saes: list[SAEShape] = field(default_factory=list)
    longest_tokens: int | None = None
    tokens_exact: bool = False
    """True when the data was tokenized with the model's tokenizer; False for the chars/3 bound."""
    n_samples: int = 0
    problems: list[str] = field(default_factory=list)
    """What could not be worked out (an unknown SAELens release, an unreadable config)."""
    files_error: str | None = None
    """Why ``run`` refuses the preset's local files (a missing, truncated or unreadable one): the
    message of :func:`saecli.models.check_preset_files`, the check both make; None when they pass."""
    files_hint: str | None = None

    @property
    def missing(self) -> list[Artifact]:
        return [a for a in self.artifacts if not a.present]


def missing_fetch_commands(artifacts: list[Artifact]) -> list[str]:
    """The ``hf download`` commands that fetch these artifacts' hub entries, one per repo."""
    return fetch_commands((a.repo, a.include) for a in artifacts if a.repo is not None)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sae_shape_from_cfg(layer: int, cfg: dict[str, Any]) -> SAEShape:
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or f"blocks.{layer}.hook_resid_post"
    return SAEShape(layer=layer, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), hook=str(hook))


def _width_from_id(sae_id: str) -> int | None:
    """``layer_5/width_16k/canonical`` → 16384."""
    match = re.search(r"width_(\d+)(k|m)?", sae_id)
    if not match:
        return None
    return int(match.group(1)) * {None: 1, "k": 1024, "m": 1024**2}[match.group(2)]


def _tokens_of_longest(samples: list[Any], tokenizer_file: Path | None) -> tuple[int, bool]:
    """Tokens of the longest fact or hallucination text (+1 for BOS): exact with the model's
    tokenizer when it is on disk, else ``ceil(chars / 3)``, more than English text needs with any
    tokenizer we ship (3.5-4.5 characters per token)."""
    texts = [t for s in samples for t in (s.fact_text, s.hall_text)]
    if tokenizer_file is not None and tokenizer_file.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            return max(len(e.ids) for e in tokenizer.encode_batch(texts)) + 1, True
        except Exception:  # noqa: BLE001 - an unreadable tokenizer only costs exactness
            pass
    return math.ceil(max(len(t) for t in texts) / 3) + 1, False


def gather_preset(preset: Preset, config: RunConfig | None = None, *, check_hub: bool = True) -> PresetFacts:
    """What the preset needs and what of it is on this machine: local files, Hugging Face cache
    entries (and the command that fetches each missing one), the model's and SAEs' shapes, and the
    longest text in tokens of the data ``config`` selects (None: the preset's defaults). Loads no model."""
    from saecli.data import run_samples
    from saecli.models import check_preset_files

    spec = preset.model
    kind: Literal["local", "hub", "random"] = "random" if spec.random_init else "local" if spec.path is not None else "hub"
    config = config if config is not None else resolve_run_config(preset, preset=preset.name)
    default = config.batch_size
    facts = PresetFacts(
        name=preset.name,
        source=preset.source,
        kind=kind,
        dtype=spec.dtype,
        # A run whose batch size is "auto" probes its own size: any safe size is then fine.
        default_batch=default if isinstance(default, int) else 1,
        synthetic=preset.synthetic,
    )
    try:
        check_preset_files(preset)
    except SaecliError as exc:
        facts.files_error, facts.files_hint = exc.message, exc.hint
    tokenizer_file = _gather_model(preset, facts)
    _gather_saes(preset, facts)
    if kind == "hub" and check_hub:
        try:
            facts.hub = hub_status()
        except Exception as exc:  # noqa: BLE001
            facts.problems.append(f"cannot ask the hub client: {first_line(exc)}")
    samples = run_samples(config)
    facts.n_samples = len(samples)
    facts.longest_tokens, facts.tokens_exact = _tokens_of_longest(samples, tokenizer_file)
    return facts


def _gather_model(preset: Preset, facts: PresetFacts) -> Path | None:
    """Fill ``facts`` with the model's artifacts and shape (by its kind); return its tokenizer file, if known."""
    spec = preset.model
    if facts.kind == "local":
        folder = resolve_location(spec.path, preset.base_dir)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            facts.artifacts.append(Artifact(f"model {name}", str(folder / name), (folder / name).is_file()))
        cfg = _read_json(folder / "config.json")
        if cfg is not None:
            facts.model_shape, facts.shape_source = ModelShape.from_tl_config(cfg), str(folder / "config.json")
        return folder / "tokenizer.json"
    if facts.kind == "random":
        tokenizer_file = resolve_location(spec.tokenizer, preset.base_dir)
        facts.artifacts.append(Artifact("tokenizer", str(tokenizer_file), tokenizer_file.is_file()))
        facts.model_shape, facts.shape_source = ModelShape.from_tl_config(spec.config), "[model.config] of the preset"
        return tokenizer_file
    return _gather_hub_model(preset, facts)


def _gather_hub_model(preset: Preset, facts: PresetFacts) -> Path | None:
    """Fill ``facts`` for a hub model: its cache entry and shape; return the cached tokenizer file, if any."""
    spec = preset.model
    try:
        repo, where = model_repo(spec.name)
    except SaecliError as exc:
        facts.problems.append(exc.message)
        return None
    snapshot = cached_snapshot(repo)
    facts.artifacts.append(Artifact(f"model {spec.name} ({repo}, from {where})", repo, snapshot is not None, repo=repo))
    if spec.name in KNOWN_SHAPES:
        facts.model_shape, facts.shape_source = KNOWN_SHAPES[spec.name], "saecli's table"
    elif snapshot is not None and (cfg := _read_json(snapshot / "config.json")) is not None:
        try:
            facts.model_shape, facts.shape_source = ModelShape.from_hf_config(cfg), str(snapshot / "config.json")
        except (KeyError, TypeError, ValueError):
            facts.problems.append(f"cannot read the shape of {repo} from its config.json")
    return snapshot / "tokenizer.json" if snapshot is not None else None


def _gather_saes(preset: Preset, facts: PresetFacts) -> None:
    """Fill ``facts`` with each SAE's artifacts and shape (local files, random, or SAELens on the hub)."""
    directory_error: str | None = None  # None: SAELens's directory not read yet; "": read; else why it could not be
    d_model = facts.model_shape.d_model if facts.model_shape else None
    for sae in preset.saes:
        if sae.path is not None:
            folder = resolve_location(sae.path, preset.base_dir)
            facts.artifacts.append(
                Artifact(f"SAE layer {sae.layer} cfg.json", str(folder / "cfg.json"), (folder / "cfg.json").is_file())
            )
            facts.artifacts.append(
                Artifact(
                    f"SAE layer {sae.layer} weights",
                    str(folder / "sae_weights.safetensors"),
                    (folder / "sae_weights.safetensors").is_file(),
                )
            )
            cfg = _read_json(folder / "cfg.json")
            if cfg is not None:
                facts.saes.append(_sae_shape_from_cfg(sae.layer, cfg))
        elif sae.random is not None:
            facts.saes.append(SAEShape(sae.layer, d_model or 0, int(sae.random["d_sae"]), str(sae.random["hook"])))
        else:
            if directory_error is None:
                directory_error = _read_sae_directory(facts)
            if not directory_error:
                _gather_hub_sae(sae, facts, d_model)


def _read_sae_directory(facts: PresetFacts) -> str:
    """Read SAELens's release directory once: "" when it could be read, else why not (also a problem in ``facts``)."""
    try:
        sae_directory()
        return ""
    except Exception as exc:  # noqa: BLE001 - reported as a problem of the preset check
        directory_error = f"cannot read SAELens's release directory: {first_line(exc)}"
        facts.problems.append(directory_error)
        return directory_error


def _gather_hub_sae(sae: SAESpec, facts: PresetFacts, d_model: int | None) -> None:
    """Fill ``facts`` for one SAELens SAE: its cache entry and its shape (from its cfg.json, else assumed)."""
    try:
        repo, folder_in_repo = sae_location(sae.release, sae.id)
    except SaecliError as exc:
        facts.problems.append(exc.message)
        return
    snapshot = cached_snapshot(repo, folder_in_repo)
    facts.artifacts.append(
        Artifact(
            f"SAE {sae.release}/{sae.id}", f"{repo}/{folder_in_repo}", snapshot is not None, repo=repo, include=folder_in_repo
        )
    )
    cfg = _read_json(snapshot / folder_in_repo / "cfg.json") if snapshot is not None else None
    if cfg is not None and "d_in" in cfg and "d_sae" in cfg:
        facts.saes.append(_sae_shape_from_cfg(sae.layer, cfg))
    else:
        width = _width_from_id(sae.id) or {"gpt2-small-res-jb": 24576}.get(sae.release)
        hook = sae.id if sae.id.startswith("blocks.") else f"blocks.{sae.layer}.hook_resid_post"
        facts.saes.append(SAEShape(sae.layer, d_model or 0, width or 32 * (d_model or 0), hook, assumed=width is None))
