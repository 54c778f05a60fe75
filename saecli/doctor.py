"""``saecli doctor``: find what would make a run fail or crawl before it starts, and explain an
out-of-memory error after one.

The usual failures of an SAE run are an out-of-memory error on the accelerator, a run that silently
fell back to the CPU, a model that is not in the Hugging Face cache on an offline machine, and
library versions that do not fit together (TransformerLens 4 removed what SAELens needs). Each is
cheap to detect without loading a model, so ``doctor`` gathers the facts once and turns them into
checks with a status (ok, warn, fail), a detail and a hint that says what to type.

Structure, so that every check can be tested with a faked machine:

* :func:`gather_environment` reads the machine (versions, CUDA, MPS, CPU, memory) into an
  :class:`Environment`; :func:`gather_preset` reads a preset's files, cache entries, shapes and the
  data's longest text into a :class:`PresetFacts`. Only these two touch the system.
* the ``check_*`` functions and :func:`estimate_memory` are pure functions of those dataclasses.
* :func:`diagnose` composes them into a :class:`Report`; :func:`run_probe` is the optional real
  measurement (``--probe``), the code path of ``run --batch-size auto``.

Heavy imports stay lazy: ``torch`` is imported inside :func:`gather_environment` (a broken install
becomes a failed check), versions come from package metadata, and neither TransformerLens nor
SAELens is imported for the checks (the SAELens release directory is read from its YAML file).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from saecli.bench import MEMORY_MARGIN, available_memory
from saecli.config import DEFAULT_PRESET, Preset, find_preset, resolve_location
from saecli.errors import SaecliError
from saecli.models import sae_dtype_for

Status = Literal["ok", "warn", "fail"]
GiB = 2**30

DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
CAP_CPU = 64
"""The largest batch predicted on a CPU; the same cap as ``autobatch.CAP_CPU`` (tested)."""
CAP_ACCELERATOR = 512
"""The largest batch predicted on CUDA or MPS; the same cap as ``autobatch.CAP_ACCELERATOR``."""
GEOMETRY_K = 200
"""Active features per read assumed for the geometry's [reads, k, d_model] float64 tensors: above
the L0 of the SAEs we ship (32 to ~100), so the estimate errs on the safe side."""
RUNTIME_OVERHEAD = {"cuda": GiB // 2, "mps": GiB // 2, "cpu": GiB}
"""Memory a run needs besides weights and activations: the CUDA/MPS allocator's cache and library
workspaces on an accelerator; on a CPU the imported libraries themselves (~0.6 GB measured)."""
ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
MPS_OPT_IN = "TRANSFORMERLENS_ALLOW_MPS"

HUB_MODELS = {"gpt2-small": "gpt2", "gpt2": "gpt2", "gemma-2-2b": "google/gemma-2-2b"}
"""TransformerLens name → Hugging Face repo of the models our presets use. TransformerLens's own
lookup (``get_official_model_name``) takes 5-10 s to import, so it is only the fallback for other
names; a test checks this table against it."""
GATED_PREFIXES = ("google/gemma", "meta-llama/", "mistralai/")
"""Repos that need an accepted licence and a logged-in client before ``hf download`` works."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a HookedTransformerConfig that decide memory; enough to count parameters and
    activations without building the model."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_vocab: int
    n_ctx: int
    gated_mlp: bool = False
    positional: str = "standard"

    @classmethod
    def from_tl_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From HookedTransformerConfig keyword arguments (the tiny model's config.json, a
        ``random_init`` preset's ``[model.config]``)."""
        d_model, n_heads = int(cfg["d_model"]), int(cfg.get("n_heads", 1))
        return cls(
            n_layers=int(cfg["n_layers"]),
            d_model=d_model,
            d_mlp=int(cfg.get("d_mlp") or 4 * d_model),
            n_heads=n_heads,
            d_head=int(cfg.get("d_head") or d_model // n_heads),
            n_kv_heads=int(cfg.get("n_key_value_heads") or n_heads),
            d_vocab=int(cfg["d_vocab"]),
            n_ctx=int(cfg.get("n_ctx", 1024)),
            gated_mlp=bool(cfg.get("gated_mlp", False)),
            positional=str(cfg.get("positional_embedding_type", "standard")),
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From a Hugging Face ``config.json`` (GPT-2 and Llama/Gemma key names)."""
        d_model = int(cfg.get("hidden_size") or cfg["n_embd"])
        n_heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        arch = " ".join(cfg.get("architectures") or [])
        return cls(
            n_layers=int(cfg.get("num_hidden_layers") or cfg["n_layer"]),
            d_model=d_model,
            d_mlp=int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d_model),
            n_heads=n_heads,
            d_head=int(cfg.get("head_dim") or d_model // n_heads),
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            d_vocab=int(cfg["vocab_size"]),
            n_ctx=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048),
            gated_mlp="GPT2" not in arch and "intermediate_size" in cfg,
            positional="standard" if "n_positions" in cfg else "rotary",
        )

    def parameters(self) -> int:
        """Parameters as TransformerLens holds them: the unembedding is its own matrix even where
        the Hugging Face model ties it to the embedding (so Gemma-2-2B counts 3.2B, not 2.6B)."""
        embed = self.d_vocab * self.d_model + (self.n_ctx * self.d_model if self.positional == "standard" else 0)
        unembed = self.d_model * self.d_vocab + self.d_vocab
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads) + self.d_head * (self.n_heads + 2 * self.n_kv_heads) + self.d_model
        mlp = self.d_model * self.d_mlp * (3 if self.gated_mlp else 2) + self.d_mlp + self.d_model
        norms = 4 * self.d_model
        return embed + unembed + self.n_layers * (attn + mlp + norms) + 2 * self.d_model


KNOWN_SHAPES = {
    "gpt2-small": ModelShape(n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, n_kv_heads=12, d_vocab=50257, n_ctx=1024),
    "gemma-2-2b": ModelShape(
        n_layers=26, d_model=2304, d_mlp=9216, n_heads=8, d_head=256, n_kv_heads=4, d_vocab=256000, n_ctx=8192,
        gated_mlp=True, positional="rotary",
    ),
}
"""Shapes of the hub presets' models, so the estimate needs neither the model nor the network.
The ``*-shape`` presets carry the same numbers in their TOML (a test checks they agree)."""


@dataclass(frozen=True)
class SAEShape:
    """One SAE's size and the hook it reads (which decides how deep the forward pass goes)."""

    layer: int
    d_in: int
    d_sae: int
    hook: str
    assumed: bool = False
    """True when d_sae was not known and a conservative width was assumed."""

    @property
    def block(self) -> int:
        """The deepest block the forward pass must run for this hook (conservatively the hook's own
        block, even for ``hook_resid_pre`` which the engine reads one block earlier)."""
        match = re.match(r"^blocks\.(\d+)\.", self.hook)
        return int(match.group(1)) if match else self.layer

    def parameters(self) -> int:
        """W_enc and W_dec (d_in × d_sae each), b_enc and a JumpReLU threshold (d_sae), b_dec."""
        return 2 * self.d_in * self.d_sae + 2 * self.d_sae + self.d_in


# -- the machine --------------------------------------------------------------------------------


@dataclass
class GPU:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    capability: str
    """Compute capability, e.g. ``8.0``; bfloat16 needs 8.0 or later."""
    total_bytes: int
    free_bytes: int | None
    bf16: bool


@dataclass
class Environment:
    """Everything doctor needs to know about this machine, gathered once by
    :func:`gather_environment` (tests build their own)."""

    platform: str
    machine: str
    python: str
    versions: dict[str, str | None]
    """Installed versions by import name; None when not installed."""
    torch_error: str | None = None
    """Why ``import torch`` failed; None when it worked."""
    torch_cuda_build: str | None = None
    """The CUDA version torch was built for (``torch.version.cuda``); None for a CPU build."""
    cuda_available: bool = False
    cuda_warning: str | None = None
    """What torch said while looking for CUDA (a driver that is too old, for example)."""
    driver_version: str | None = None
    driver_cuda: str | None = None
    """The newest CUDA version the installed driver supports."""
    gpus: list[GPU] = field(default_factory=list)
    nvidia_present: bool = False
    """An NVIDIA driver is installed (``nvidia-smi`` or ``/proc/driver/nvidia``), whatever torch says."""
    mps_built: bool = False
    mps_available: bool = False
    mps_max_bytes: int | None = None
    apple_silicon: bool = False
    cpu_count: int | None = None
    cpu_usable: int | None = None
    torch_threads: int | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    """The environment variables that change device or memory behaviour (no credentials)."""


ENV_VARS = (
    "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", MPS_OPT_IN, "PYTORCH_ENABLE_MPS_FALLBACK",
    "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
)
PACKAGES = ("saecli", "torch", "transformer_lens", "sae_lens", "numpy", "polars", "transformers", "huggingface_hub")


def package_versions() -> dict[str, str | None]:
    """Versions from package metadata: importing TransformerLens or SAELens would take seconds."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = None
    return out


def _import_torch() -> Any:
    import torch

    return torch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _nvidia_smi() -> str | None:
    """The driver version from ``nvidia-smi`` (None without one): the driver, not torch, decides
    which CUDA builds can run."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def gather_environment() -> Environment:
    """Read this machine. Never raises: what cannot be read stays None, and a torch that does not
    import is recorded in ``torch_error``."""
    env = Environment(
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        versions=package_versions(),
        apple_silicon=sys.platform == "darwin" and platform.machine() == "arm64",
        cpu_count=os.cpu_count(),
        env={k: os.environ[k] for k in ENV_VARS if k in os.environ},
    )
    env.cpu_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else env.cpu_count
    info = _meminfo()
    env.memory_total = info.get("MemTotal")
    env.memory_available = info.get("MemAvailable") or available_memory("cpu")
    env.driver_version = _nvidia_smi()
    env.nvidia_present = env.driver_version is not None or Path("/proc/driver/nvidia/version").exists()
    try:
        torch = _import_torch()
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libcudart, ABI clash) is a finding
        env.torch_error = _first_line(exc)
        return env
    env.torch_threads = torch.get_num_threads()
    env.torch_cuda_build = getattr(torch.version, "cuda", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            env.cuda_available = bool(torch.cuda.is_available())
        except Exception as exc:  # noqa: BLE001
            env.cuda_warning = _first_line(exc)
    if caught and env.cuda_warning is None:
        env.cuda_warning = str(caught[0].message).strip().splitlines()[0]
    try:
        raw = torch._C._cuda_getDriverVersion() if env.torch_cuda_build else 0
        env.driver_cuda = f"{raw // 1000}.{raw % 1000 // 10}" if raw else None
    except Exception:  # noqa: BLE001 - private API; only a detail
        pass
    if env.cuda_available:
        for i in range(torch.cuda.device_count()):
            try:
                props = torch.cuda.get_device_properties(i)
                free, total = torch.cuda.mem_get_info(i)
                env.gpus.append(GPU(i, props.name, f"{props.major}.{props.minor}", int(total), int(free), props.major >= 8))
            except Exception as exc:  # noqa: BLE001 - a GPU in a bad state is reported, not fatal
                env.gpus.append(GPU(i, f"unreadable ({_first_line(exc)})", "?", 0, None, False))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        try:
            env.mps_built, env.mps_available = bool(mps.is_built()), bool(mps.is_available())
            if env.mps_available and hasattr(torch.mps, "recommended_max_memory"):
                env.mps_max_bytes = int(torch.mps.recommended_max_memory())
        except Exception:  # noqa: BLE001
            pass
    return env


# -- the preset ---------------------------------------------------------------------------------


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
        """The command that fetches it alone; :func:`fetch_commands` merges several."""
        return fetch_commands([self])[0] if self.repo else None


def fetch_commands(artifacts: list[Artifact]) -> list[str]:
    """One ``hf download`` per repo, with an ``--include`` per folder (the whole repo when any
    artifact needs all of it), in the order the preset names them."""
    by_repo: dict[str, list[str | None]] = {}
    for a in artifacts:
        if a.repo is not None:
            by_repo.setdefault(a.repo, []).append(a.include)
    out = []
    for repo, includes in by_repo.items():
        if None in includes:
            out.append(f"hf download {repo}")
        else:
            out.append(f"hf download {repo} " + " ".join(f"--include '{folder}/*'" for folder in includes))
    return out


@dataclass
class HubStatus:
    """Whether a download could work now."""

    offline_env: bool
    reachable: bool | None
    endpoint: str
    cache: str


@dataclass
class PresetFacts:
    """What a preset needs and what of it is here, gathered by :func:`gather_preset`."""

    name: str
    source: str
    kind: Literal["local", "hub", "random"]
    dtype: str
    """The preset's own model dtype."""
    default_batch: int
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

    @property
    def missing(self) -> list[Artifact]:
        return [a for a in self.artifacts if not a.present]


def _hub_repo_for_model(name: str) -> tuple[str, str]:
    """The Hugging Face repo of a TransformerLens model name, and where the answer came from."""
    if name in HUB_MODELS:
        return HUB_MODELS[name], "saecli's table"
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name), "TransformerLens"
    except ValueError as exc:
        raise SaecliError(f"unknown TransformerLens model {name!r}: {exc}".splitlines()[0]) from None


def _sae_directory() -> dict[str, Any]:
    """SAELens's release directory, read from its YAML without importing SAELens (which takes
    10 s or more): the same file ``get_pretrained_saes_directory`` reads."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SaecliError("SAELens is not installed", hint="pip install 'sae-lens>=6.5'")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _hub_status() -> HubStatus:
    """Offline mode set, or the hub endpoint reachable (a 2-second TCP connect)?"""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or bool(getattr(constants, "HF_HUB_OFFLINE", False))
    endpoint = str(constants.ENDPOINT)
    reachable = None
    if not offline:
        parsed = urlparse(endpoint)
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=2):
                reachable = True
        except OSError:
            reachable = False
    return HubStatus(offline_env=offline, reachable=reachable, endpoint=endpoint, cache=str(constants.HF_HUB_CACHE))


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


def gather_preset(preset: Preset, data: str | None = None, *, check_hub: bool = True) -> PresetFacts:
    """What the preset needs and what of it is on this machine: local files, Hugging Face cache
    entries (and the command that fetches each missing one), the model's and SAEs' shapes, and the
    longest text of the data in tokens. Loads no model."""
    from saecli.data import load_samples
    from saecli.models import _cached_snapshot

    spec = preset.model
    kind: Literal["local", "hub", "random"] = "random" if spec.random_init else "local" if spec.path is not None else "hub"
    default = preset.defaults.get("batch_size", 16)
    facts = PresetFacts(
        name=preset.name, source=preset.source, kind=kind, dtype=spec.dtype,
        # A preset whose default is "auto" probes its own size: any safe size is then fine.
        default_batch=default if isinstance(default, int) else 1, synthetic=preset.synthetic,
    )
    tokenizer_file: Path | None = None
    if kind == "local":
        folder = resolve_location(spec.path, preset.base_dir)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            facts.artifacts.append(Artifact(f"model {name}", str(folder / name), (folder / name).is_file()))
        cfg = _read_json(folder / "config.json")
        if cfg is not None:
            facts.model_shape, facts.shape_source = ModelShape.from_tl_config(cfg), str(folder / "config.json")
        tokenizer_file = folder / "tokenizer.json"
    elif kind == "random":
        tokenizer_file = resolve_location(spec.tokenizer, preset.base_dir)
        facts.artifacts.append(Artifact("tokenizer", str(tokenizer_file), tokenizer_file.is_file()))
        facts.model_shape, facts.shape_source = ModelShape.from_tl_config(spec.config), "[model.config] of the preset"
    else:
        try:
            repo, where = _hub_repo_for_model(spec.name)
        except SaecliError as exc:
            facts.problems.append(exc.message)
            repo, where = None, ""
        if repo is not None:
            snapshot = _cached_snapshot(repo)
            facts.artifacts.append(Artifact(f"model {spec.name} ({repo}, from {where})", repo, snapshot is not None, repo=repo))
            if spec.name in KNOWN_SHAPES:
                facts.model_shape, facts.shape_source = KNOWN_SHAPES[spec.name], "saecli's table"
            elif snapshot is not None and (cfg := _read_json(snapshot / "config.json")) is not None:
                try:
                    facts.model_shape, facts.shape_source = ModelShape.from_hf_config(cfg), str(snapshot / "config.json")
                except (KeyError, TypeError, ValueError):
                    facts.problems.append(f"cannot read the shape of {repo} from its config.json")
            if snapshot is not None:
                tokenizer_file = snapshot / "tokenizer.json"
    directory: dict[str, Any] | None = None
    d_model = facts.model_shape.d_model if facts.model_shape else None
    for sae in preset.saes:
        if sae.path is not None:
            folder = resolve_location(sae.path, preset.base_dir)
            facts.artifacts.append(Artifact(f"SAE layer {sae.layer} cfg.json", str(folder / "cfg.json"), (folder / "cfg.json").is_file()))
            facts.artifacts.append(
                Artifact(f"SAE layer {sae.layer} weights", str(folder / "sae_weights.safetensors"), (folder / "sae_weights.safetensors").is_file())
            )
            cfg = _read_json(folder / "cfg.json")
            if cfg is not None:
                facts.saes.append(_sae_shape_from_cfg(sae.layer, cfg))
        elif sae.random is not None:
            facts.saes.append(SAEShape(sae.layer, d_model or 0, int(sae.random["d_sae"]), str(sae.random["hook"])))
        else:
            if directory is None:
                try:
                    directory = _sae_directory()
                except Exception as exc:  # noqa: BLE001 - reported as a problem of the preset check
                    facts.problems.append(f"cannot read SAELens's release directory: {_first_line(exc)}")
                    directory = {}
            release = directory.get(sae.release)
            paths = {s["id"]: str(s["path"]) for s in (release or {}).get("saes", [])}
            if release is None or sae.id not in paths:
                if directory:
                    facts.problems.append(
                        f"unknown SAELens release {sae.release!r}" if release is None else f"SAE id {sae.id!r} is not in release {sae.release}"
                    )
                continue
            repo, folder_in_repo = str(release["repo_id"]), paths[sae.id]
            snapshot = _cached_snapshot(repo, folder_in_repo)
            facts.artifacts.append(
                Artifact(f"SAE {sae.release}/{sae.id}", f"{repo}/{folder_in_repo}", snapshot is not None, repo=repo, include=folder_in_repo)
            )
            cfg = _read_json(snapshot / folder_in_repo / "cfg.json") if snapshot is not None else None
            if cfg is not None and "d_in" in cfg and "d_sae" in cfg:
                facts.saes.append(_sae_shape_from_cfg(sae.layer, cfg))
            else:
                width = _width_from_id(sae.id) or {"gpt2-small-res-jb": 24576}.get(sae.release)
                hook = sae.id if sae.id.startswith("blocks.") else f"blocks.{sae.layer}.hook_resid_post"
                facts.saes.append(SAEShape(sae.layer, d_model or 0, width or 32 * (d_model or 0), hook, assumed=width is None))
    if kind == "hub" and check_hub:
        try:
            facts.hub = _hub_status()
        except Exception as exc:  # noqa: BLE001
            facts.problems.append(f"cannot ask the hub client: {_first_line(exc)}")
    samples = load_samples(data)
    facts.n_samples = len(samples)
    facts.longest_tokens, facts.tokens_exact = _tokens_of_longest(samples, tokenizer_file)
    return facts


# -- checks ---------------------------------------------------------------------------------------


@dataclass
class Check:
    """One finding: what was checked, how it stands, and what to do about it."""

    name: str
    status: Status
    detail: str
    hint: str | None = None


def _vt(text: str | None) -> tuple[int, ...]:
    """``2.13.0+cpu`` → (2, 13, 0); ``4.0.0rc1`` → (4, 0, 0)."""
    match = re.match(r"(\d+(?:\.\d+)*)", text or "")
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


REQUIRED = ("torch", "transformer_lens", "sae_lens", "numpy", "polars")


def version_problems(versions: dict[str, str | None], python: str) -> list[tuple[Status, str, str]]:
    """Known-bad versions and combinations: (status, what is wrong, what to type)."""
    out: list[tuple[Status, str, str]] = []
    v = {k: _vt(text) for k, text in versions.items()}
    for name in REQUIRED:
        if versions.get(name) is None:
            out.append(("fail", f"{name} is not installed", "make install (or pip install -e .)"))
    tl, sl, torch_v, np_v = v.get("transformer_lens", ()), v.get("sae_lens", ()), v.get("torch", ()), v.get("numpy", ())
    if tl and tl >= (4,):
        out.append(("fail", f"transformer_lens {versions['transformer_lens']}: 4.0 removed HookedTransformer, which SAELens needs",
                    "pip install 'transformer-lens>=3.9,<4'"))
    elif tl and tl < (3, 9):
        out.append(("warn", f"transformer_lens {versions['transformer_lens']} is older than 3.9, the version saecli is tested with",
                    "pip install 'transformer-lens>=3.9,<4'"))
    if sl and sl < (6, 5):
        out.append(("fail", f"sae_lens {versions['sae_lens']}: saecli needs 6.5 or later (SAE configs with metadata)", "pip install 'sae-lens>=6.5'"))
    elif sl and sl >= (7,):
        out.append(("warn", f"sae_lens {versions['sae_lens']}: a major version saecli is not tested with", "pip install 'sae-lens>=6.5,<7'"))
    if torch_v and torch_v < (2, 2):
        out.append(("fail", f"torch {versions['torch']}: saecli needs 2.2 or later", "install a newer PyTorch (README, Install)"))
    if torch_v and torch_v < (2, 3) and np_v and np_v >= (2,):
        out.append(("fail", f"torch {versions['torch']} was built against NumPy 1 and breaks with numpy {versions['numpy']}",
                    "pip install 'numpy<2', or a PyTorch of 2.3 or later"))
    if versions.get("polars") and v["polars"] < (1,):
        out.append(("fail", f"polars {versions['polars']}: saecli needs 1.0 or later", "pip install 'polars>=1'"))
    if _vt(python) < (3, 11):
        out.append(("fail", f"Python {python}: saecli needs 3.11 or later", "use Python 3.11+"))
    return out


def _worst(statuses: list[Status]) -> Status:
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def check_platform(env: Environment) -> Check:
    return Check("platform", "ok", f"{env.platform} ({env.machine}), Python {env.python}")


def check_versions(env: Environment) -> Check:
    listed = ", ".join(f"{k} {v or 'not installed'}" for k, v in env.versions.items())
    problems = version_problems(env.versions, env.python)
    if not problems:
        return Check("versions", "ok", listed)
    detail = "; ".join(text for _, text, _ in problems) + f" ({listed})"
    return Check("versions", _worst([s for s, _, _ in problems]), detail, "; ".join(dict.fromkeys(h for _, _, h in problems)))


def check_torch(env: Environment) -> Check:
    if env.torch_error:
        return Check("torch", "fail", f"import torch failed: {env.torch_error}",
                     "reinstall PyTorch for this machine: pip install --force-reinstall torch (README, Install)")
    build = f"CUDA {env.torch_cuda_build} build" if env.torch_cuda_build else "CPU-only build"
    return Check("torch", "ok", f"torch {env.versions.get('torch')} imports ({build}, {env.torch_threads} CPU threads)")


def _gib(n: int | float | None) -> str:
    """Bytes for people: GiB with one decimal, MiB below 1 GiB (a tiny model is 11 MiB, not 0.0 GiB)."""
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


CUDA_WHEEL_HINT = (
    "install the CUDA build of PyTorch (pytorch.org's selector gives the `pip install torch --index-url ...` line), "
    "then `make install TORCH=`"
)


def check_cuda(env: Environment, requested: str = "auto") -> Check:
    """CUDA devices, or why there are none although an NVIDIA driver is installed."""
    if env.torch_error:
        return Check("cuda", "fail" if requested == "cuda" else "warn", "unknown: torch does not import")
    fail: Status = "fail" if requested == "cuda" else "warn"
    if not env.cuda_available:
        if env.nvidia_present and not env.torch_cuda_build:
            return Check("cuda", fail, f"an NVIDIA driver is installed ({env.driver_version or 'version unknown'}) but torch is a CPU-only build: runs use the CPU",
                         CUDA_WHEEL_HINT)
        if env.nvidia_present or env.torch_cuda_build:
            why = env.cuda_warning or "torch.cuda.is_available() is False"
            driver = f"; driver {env.driver_version} supports CUDA {env.driver_cuda}" if env.driver_version and env.driver_cuda else ""
            return Check("cuda", fail, f"torch built for CUDA {env.torch_cuda_build} but no CUDA device is usable: {why}{driver}",
                         "check `nvidia-smi` and CUDA_VISIBLE_DEVICES; the driver must support the CUDA version torch was built for "
                         "(update the driver or install a torch built for an older CUDA)")
        return Check("cuda", "fail" if requested == "cuda" else "ok", "not available (no NVIDIA driver, CPU-only torch)",
                     "use --device auto or cpu" if requested == "cuda" else None)
    parts = []
    for g in env.gpus:
        parts.append(f"GPU {g.index}: {g.name}, compute {g.capability}, {_gib(g.total_bytes)} total, {_gib(g.free_bytes)} free, "
                     f"bf16 {'yes' if g.bf16 else 'no'}")
    driver = f"driver {env.driver_version or '?'} (supports CUDA {env.driver_cuda or '?'}), torch built for CUDA {env.torch_cuda_build}"
    status: Status = "ok"
    hint = None
    first = env.gpus[0] if env.gpus else None
    if first and first.free_bytes is not None and first.total_bytes and first.free_bytes < 0.5 * first.total_bytes:
        status = "warn"
        hint = f"another process holds {_gib(first.total_bytes - first.free_bytes)} of GPU 0: see `nvidia-smi`, or pick a GPU with CUDA_VISIBLE_DEVICES"
    return Check("cuda", status, "; ".join(parts + [driver]), hint)


def check_mps(env: Environment, requested: str = "auto") -> Check:
    if env.torch_error:
        return Check("mps", "fail" if requested == "mps" else "warn", "unknown: torch does not import")
    opt_in = env.env.get(MPS_OPT_IN) == "1"
    if env.mps_available:
        detail = f"available (built: yes, recommended max {_gib(env.mps_max_bytes)}); {MPS_OPT_IN}={'1' if opt_in else 'unset'}"
        if opt_in:
            return Check("mps", "ok", detail)
        return Check("mps", "warn", detail + ": TransformerLens warns that MPS may give wrong results, saecli uses MPS anyway",
                     f"compare against the CPU (`saecli compare` on --device mps and cpu runs), then export {MPS_OPT_IN}=1 to accept MPS")
    if env.apple_silicon:
        why = "torch was built without MPS" if not env.mps_built else "built, but not available (macOS 12.3 or later is needed)"
        return Check("mps", "fail" if requested == "mps" else "warn", f"Apple silicon, {why}: runs use the CPU",
                     "install the default macOS wheel: make install TORCH=torch")
    return Check("mps", "fail" if requested == "mps" else "ok", f"not available (built: {'yes' if env.mps_built else 'no'}; not an Apple-silicon Mac)",
                 "use --device auto or cpu" if requested == "mps" else None)


def check_cpu(env: Environment) -> Check:
    threads = env.env.get("OMP_NUM_THREADS")
    detail = (f"{env.cpu_usable} usable of {env.cpu_count} cores, torch uses {env.torch_threads} threads"
              f"{f' (OMP_NUM_THREADS={threads})' if threads else ''}; memory {_gib(env.memory_available)} available of {_gib(env.memory_total)}")
    if env.memory_available is not None and env.memory_available < 2 * GiB:
        return Check("cpu", "warn", detail, "less than 2 GiB free: the libraries alone take ~0.6 GB; close other programs")
    return Check("cpu", "ok", detail)


def pick_device(env: Environment, requested: str = "auto") -> tuple[str | None, str]:
    """The device a run would use and why: ``models.resolve_device`` on the gathered facts (a test
    keeps them in step). None when the requested device is not there."""
    if env.torch_error:
        return None, "torch does not import"
    if requested == "auto":
        if env.cuda_available:
            name = env.gpus[0].name if env.gpus else "?"
            return "cuda", f"auto: CUDA is available ({name})"
        if env.mps_available:
            return "mps", "auto: no CUDA; Apple MPS is available"
        return "cpu", "auto: neither CUDA nor MPS is available"
    if requested == "cuda" and not env.cuda_available:
        return None, "--device cuda was asked for but CUDA is not available"
    if requested == "mps" and not env.mps_available:
        return None, "--device mps was asked for but MPS is not available"
    return requested, f"{requested}: asked for"


def check_device(env: Environment, requested: str, dtype: str) -> Check:
    """Which device a run picks and why, and whether the dtype works there."""
    device, why = pick_device(env, requested)
    if device is None:
        return Check("device", "fail", why, "use --device auto or --device cpu; see the cuda and mps rows")
    detail = f"{why}; dtype {dtype} (SAEs {sae_dtype_for(dtype)}, geometry float64)"
    if device == "mps" and dtype == "float64":
        return Check("device", "fail", detail + ": MPS has no float64", "use --dtype float32 or --device cpu")
    if device == "cuda" and dtype == "bfloat16" and env.gpus and not env.gpus[0].bf16:
        return Check("device", "warn", detail + f": GPU 0 (compute {env.gpus[0].capability}) has no native bfloat16", "use --dtype float16")
    if device == "cpu" and dtype in ("bfloat16", "float16"):
        return Check("device", "warn", detail + ": 16-bit matmuls are slow on most CPUs", "use --dtype float32 on a CPU")
    if device == "cpu" and requested == "auto" and (env.nvidia_present or env.apple_silicon):
        return Check("device", "warn", detail + ": there is a GPU, but torch cannot use it (see the cuda and mps rows)",
                     CUDA_WHEEL_HINT if env.nvidia_present else "make install TORCH=torch")
    return Check("device", "ok", detail)


def check_preset(facts: PresetFacts) -> Check:
    """Every file and cache entry the preset needs; for each missing one, the command that fetches it."""
    label = f"{facts.name} ({facts.kind}{', random weights: benchmarking only' if facts.synthetic else ''})"
    if facts.problems:
        return Check("preset", "fail", f"{label}: " + "; ".join(facts.problems), "check the release and id against SAELens's pretrained_saes.yaml")
    missing = facts.missing
    if not missing:
        where = "in the Hugging Face cache" if facts.kind == "hub" else "present"
        n = len(facts.artifacts)
        return Check("preset", "ok", f"{label}: {'all ' if n > 1 else ''}{n} file{'s' if n != 1 else ''} {where}")
    names = ", ".join(a.what for a in missing)
    local = [a for a in missing if a.repo is None]
    if local:
        return Check("preset", "fail", f"{label}: missing {', '.join(a.location for a in local)}",
                     "reinstall saecli (pip install -e .), or fix the paths in the preset file")
    hint = "; ".join(fetch_commands(missing))
    if any(a.repo.startswith(GATED_PREFIXES) for a in missing if a.repo):
        hint += " (gated: accept the licence on the model's Hugging Face page and `hf auth login` first)"
    hub = facts.hub
    if hub is not None and (hub.offline_env or hub.reachable is False):
        return Check("preset", "fail", f"{label}: not in the Hugging Face cache and the hub cannot be reached: {names}",
                     "fetch on a connected machine: " + hint)
    return Check("preset", "warn", f"{label}: not in the Hugging Face cache, will be downloaded on the first run: {names}", "or fetch now: " + hint)


def check_hub(facts: PresetFacts) -> Check | None:
    hub = facts.hub
    if hub is None:
        return None
    if hub.offline_env:
        state, status = "offline mode set (HF_HUB_OFFLINE)", "ok"
    elif hub.reachable:
        state, status = f"reachable ({hub.endpoint})", "ok"
    else:
        state, status = f"cannot reach {hub.endpoint}", "ok" if not facts.missing else "warn"
    hint = "unset HF_HUB_OFFLINE to download" if hub.offline_env and facts.missing else None
    return Check("hub", status, f"{state}; cache {hub.cache}", hint)


# -- memory -------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Predicted memory of a run at each batch size, against what the device has free (bytes)."""

    device: str
    dtype: str
    free_bytes: int | None
    budget_bytes: int | None
    """``MEMORY_MARGIN`` × free: what a batch may use (the margin bench and autobatch use)."""
    model_bytes: int
    sae_bytes: int
    overhead_bytes: int
    longest_tokens: int
    tokens_exact: bool
    per_batch: dict[int, int]
    """Batch size (powers of two up to the cap) → predicted total bytes."""
    largest_safe: int | None
    cap: int
    sae_widths_assumed: bool = False


def activation_bytes(shape: ModelShape, saes: list[SAEShape], batch: int, tokens: int, dtype: str) -> int:
    """Working memory of one batch (bytes), conservative and simple:

    * rows = 3 × batch: the fact and hallucination texts and, at worst, the prompt as its own row,
      each ``tokens`` long (the data's longest text: batches are padded to their longest).
    * forward, one block at a time (inference mode frees the previous block): residual stream and
      its normalised copies (6 × d_model), q/k/v/z with keys and values expanded to every head
      (6 × n_heads × d_head), the MLP's hidden layers (3 × d_mlp), in the model's dtype; and 4
      copies of the attention scores [rows, n_heads, tokens, tokens] in at least float32.
    * the prompt's key/value cache for every block run: 2 × rows × tokens × n_kv_heads × d_head.
    * SAE stage, per layer: 4 × [reads, d_sae] in the SAE dtype (pre-activations, features, the
      noisy features, top-k copies); reads = 3 × batch.
    * geometry, per layer: 4 × [reads, k, d_model] float64 (gathered decoder rows, their float64
      copy, centred, weighted) + 2 × [reads, k, k] float64, with k = ``GEOMETRY_K`` (or d_sae).

    SAE and geometry run one layer after another, so the largest layer counts, not their sum.
    """
    b = DTYPE_BYTES[dtype]
    s = DTYPE_BYTES[sae_dtype_for(dtype)]
    rows = 3 * batch
    t = rows * tokens
    block = t * b * (6 * shape.d_model + 6 * shape.n_heads * shape.d_head + 3 * shape.d_mlp)
    scores = 4 * rows * shape.n_heads * tokens * tokens * max(b, 4)
    blocks_run = min(shape.n_layers, max((sae.block for sae in saes), default=shape.n_layers - 1) + 1)
    kv = blocks_run * 2 * t * shape.n_kv_heads * shape.d_head * b
    per_layer = 0
    for sae in saes:
        k = min(GEOMETRY_K, sae.d_sae)
        reads = 3 * batch
        sae_stage = 4 * reads * sae.d_sae * s
        geometry = 4 * reads * k * shape.d_model * 8 + 2 * reads * k * k * 8
        per_layer = max(per_layer, sae_stage + geometry)
    return block + scores + kv + per_layer


def _free_for(env: Environment, device: str) -> int | None:
    if device == "cuda":
        return env.gpus[0].free_bytes if env.gpus else None
    if device == "mps":
        values = [v for v in (env.mps_max_bytes, env.memory_available) if v]
        return min(values) if values else None
    return env.memory_available


def estimate_memory(env: Environment, facts: PresetFacts, device: str, dtype: str) -> MemoryEstimate | None:
    """Weights + runtime overhead + one batch's activations, for batch sizes 1, 2, 4, ... up to the
    probing cap (and the data's size); the largest whose total stays under the margin is the
    predicted safe size. None when the model's shape is unknown."""
    shape = facts.model_shape
    if shape is None or facts.longest_tokens is None:
        return None
    saes = [sae if sae.d_in else SAEShape(sae.layer, shape.d_model, sae.d_sae, sae.hook, sae.assumed) for sae in facts.saes]
    model_bytes = shape.parameters() * DTYPE_BYTES[dtype]
    sae_bytes = sum(sae.parameters() for sae in saes) * DTYPE_BYTES[sae_dtype_for(dtype)]
    overhead = RUNTIME_OVERHEAD.get(device, GiB)
    fixed = model_bytes + sae_bytes + overhead
    free = _free_for(env, device)
    budget = int(free * MEMORY_MARGIN) if free else None
    cap = min(CAP_CPU if device == "cpu" else CAP_ACCELERATOR, max(facts.n_samples, 1))
    per_batch, size, largest = {}, 1, None
    while size <= cap:
        total = fixed + activation_bytes(shape, saes, size, facts.longest_tokens, dtype)
        per_batch[size] = total
        if budget is not None and total <= budget:
            largest = size
        size *= 2
    return MemoryEstimate(
        device=device, dtype=dtype, free_bytes=free, budget_bytes=budget, model_bytes=model_bytes, sae_bytes=sae_bytes,
        overhead_bytes=overhead, longest_tokens=facts.longest_tokens, tokens_exact=facts.tokens_exact, per_batch=per_batch,
        largest_safe=largest if budget is not None else None, cap=cap, sae_widths_assumed=any(s.assumed for s in saes),
    )


def _smaller_dtype(env: Environment, device: str, dtype: str) -> str | None:
    """The 16-bit dtype worth suggesting on this device, or None."""
    if device == "cpu" or DTYPE_BYTES[dtype] <= 2:
        return None
    if device == "cuda":
        return "bfloat16" if (env.gpus and env.gpus[0].bf16) else "float16"
    return "float16"


def check_memory(env: Environment, facts: PresetFacts, device: str | None, dtype: str) -> tuple[Check, MemoryEstimate | None]:
    """The predicted largest safe batch size against the preset's default, with the flags to pass
    when it does not fit."""
    if device is None:
        return Check("memory", "warn", "no estimate: no usable device"), None
    est = estimate_memory(env, facts, device, dtype)
    if est is None:
        return Check("memory", "warn", f"no estimate: the shape of model {facts.name} is not known",
                     f"measure it: saecli doctor --probe{_preset_flag(facts.source or facts.name)}"), None
    tokens = f"{est.longest_tokens} tokens ({'tokenized' if est.tokens_exact else 'chars/3 bound'})"
    weights = (f"weights {_gib(est.model_bytes)} model ({dtype}) + {_gib(est.sae_bytes)} SAEs ({sae_dtype_for(dtype)}) "
               f"+ {_gib(est.overhead_bytes)} runtime")
    if est.budget_bytes is None:
        return Check("memory", "warn", f"{weights}; free memory on {device} unknown", "use --batch-size auto, which probes"), est
    where = f"{_gib(est.free_bytes)} free on {device}, {MEMORY_MARGIN:.0%} usable = {_gib(est.budget_bytes)}"
    first = est.per_batch.get(1)
    detail = f"{weights}; longest text {tokens}; {where}"
    flag = _preset_flag(facts.source or facts.name)
    smaller = _smaller_dtype(env, device, dtype)
    if est.largest_safe is None:
        fixes = []
        if smaller:
            alt = estimate_memory(env, facts, device, smaller)
            fits = f" (predicted to fit batch {alt.largest_safe})" if alt and alt.largest_safe else ""
            fixes.append(f"--dtype {smaller}{fits}")
        if device != "cpu":
            fixes.append("--device cpu")
        fixes.append("free memory held by other processes")
        what = "the weights alone" if first is not None and est.model_bytes + est.sae_bytes + est.overhead_bytes > est.budget_bytes else "batch 1"
        return Check("memory", "fail", f"{detail}: {what} need more ({_gib(first)} at batch 1)", "; ".join(fixes)), est
    safe = est.largest_safe
    capped = f", the cap of {est.cap} for {device}" if safe * 2 > est.cap else ""
    detail += f"; predicted largest safe batch {safe} ({_gib(est.per_batch[safe])}{capped})"
    if safe < facts.default_batch:
        hint = f"saecli run{flag} --batch-size {safe} (or --batch-size auto, which measures)"
        if smaller:
            hint += f"; --dtype {smaller} halves the model's memory"
        if device == "cuda":
            hint += f"; {ALLOC_CONF} against fragmentation"
        return Check("memory", "warn", detail + f", below the preset's default {facts.default_batch}", hint), est
    return Check("memory", "ok", detail), est


def _preset_flag(preset: str) -> str:
    """`` --preset NAME`` for a named preset, `` --config PATH`` for a file."""
    if not preset:
        return ""
    if preset.endswith(".toml") or "/" in preset or os.sep in preset:
        from saecli.config import preset_dirs

        path = Path(preset)
        if path.suffix == ".toml" and any(path.resolve().parent == d for d in preset_dirs()):
            return f" --preset {path.stem}"
        return f" --config {preset}"
    return f" --preset {preset}"


def oom_hints(env: Environment, preset: str, device: str | None, dtype: str, estimate: MemoryEstimate | None) -> list[str]:
    """What to try after an out-of-memory error, most effective first, for this device."""
    flag = _preset_flag(preset)
    size = estimate.largest_safe if estimate and estimate.largest_safe else None
    hints = [f"--batch-size {size}: the predicted largest safe size here" if size else "--batch-size N with a smaller N (the batch is padded to its longest text)",
             "--batch-size auto: tries sizes on the data's longest texts and keeps the largest that fits"]
    smaller = _smaller_dtype(env, device or "cpu", dtype)
    if smaller:
        hints.append(f"--dtype {smaller}: halves the model's weights and activations (SAEs stay float32, geometry float64)")
    if device == "cuda":
        hints.append(f"{ALLOC_CONF} saecli run ...: when memory is free but fragmented (\"reserved but unallocated\" in the error)")
    if device != "cpu":
        hints.append(f"--device cpu: slower, but uses system memory ({_gib(env.memory_available)} available)")
    hints.append(f"saecli doctor --probe{flag}: loads the preset and measures the largest batch that fits")
    return hints


def oom_message(batch_size: int, preset: str, device: str) -> SaecliError:
    """The one-line error for an out-of-memory failure a run cannot recover from: names the batch
    size that failed and what to type next. For ``run``, ``sequential`` and ``bench`` to raise."""
    flags = []
    if batch_size > 1:
        flags.append(f"--batch-size {max(1, batch_size // 2)} (or auto)")
    else:
        flags.append("--batch-size auto")
    if device == "cuda":
        flags += ["--dtype bfloat16", "--device cpu", f"{ALLOC_CONF} against fragmentation"]
    elif device == "mps":
        flags += ["--dtype float16", "--device cpu"]
    hint = f"try {', '.join(flags)}; `saecli doctor --probe{_preset_flag(preset)} --device {device}` finds the largest batch that fits"
    return SaecliError(f"out of memory on {device} at batch size {batch_size}", hint=hint, exit_code=1)


# -- the probe -------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """``--probe``: the preset loaded for real and batch sizes tried on the data's longest texts."""

    ok: bool
    device: str | None = None
    dtype: str | None = None
    size: int | None = None
    reason: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)
    """Each size tried: ``size``, ``peak_bytes`` (process RSS on a CPU, allocated on CUDA), ``outcome``."""
    loaded_bytes: int | None = None
    """Memory after loading, before any batch: the baseline the peaks grow from."""
    load_seconds: float | None = None
    error: str | None = None
    hint: str | None = None


def run_probe(preset: str, *, device: str = "auto", dtype: str | None = None, data: str | None = None) -> ProbeResult:
    """Load the preset and find the largest batch that fits by trying it: ``find_batch_size``, the
    code of ``run --batch-size auto``. Failures (not cached, nothing fits) become the result."""
    try:
        from saecli.autobatch import find_batch_size
        from saecli.bench import current_rss, is_oom
        from saecli.data import load_samples
        from saecli.models import load_preset
    except Exception as exc:  # noqa: BLE001 - a broken install shows as a failed probe
        return ProbeResult(ok=False, error=f"cannot import the engine: {_first_line(exc)}", hint="see the torch and versions rows")
    samples = load_samples(data)
    try:
        loaded = load_preset(preset, device=device, dtype=dtype)
    except SaecliError as exc:
        return ProbeResult(ok=False, error=exc.message, hint=exc.hint)
    except Exception as exc:  # noqa: BLE001
        if is_oom(exc):
            return ProbeResult(ok=False, error=f"loading ran out of memory: {_first_line(exc)}",
                               hint="the weights do not fit: --dtype bfloat16 (CUDA), or --device cpu")
        raise
    result = ProbeResult(ok=False, device=loaded.device, dtype=loaded.dtype, load_seconds=round(loaded.load_seconds, 2))
    if loaded.device == "cuda":
        import torch

        result.loaded_bytes = int(torch.cuda.memory_allocated())
    elif loaded.device == "cpu":
        result.loaded_bytes = current_rss()
    try:
        auto = find_batch_size(loaded, samples)
    except SaecliError as exc:
        result.error, result.hint = exc.message, exc.hint
        return result
    result.ok, result.size, result.reason, result.probes = True, auto.size, auto.reason, auto.probes
    return result


def check_probe(probe: ProbeResult, default_batch: int) -> Check:
    if not probe.ok:
        return Check("probe", "fail", probe.error or "failed", probe.hint)
    tried = ", ".join(f"{p['size']}: {_gib(p['peak_bytes'])}" if "peak_bytes" in p else f"{p['size']}: {p['outcome']}" for p in probe.probes)
    detail = f"loaded on {probe.device} ({probe.dtype}) in {probe.load_seconds}s; largest batch that fit: {probe.size} (peaks {tried}); {probe.reason}"
    if probe.size is not None and probe.size < default_batch:
        return Check("probe", "warn", detail + f"; below the preset's default {default_batch}", f"pass --batch-size {probe.size}, or --batch-size auto")
    return Check("probe", "ok", detail)


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything ``doctor`` found; ``ok`` is False when any check failed."""

    preset: str
    device: str | None
    device_reason: str
    dtype: str
    checks: list[Check]
    estimate: MemoryEstimate | None
    probe: ProbeResult | None
    oom_hints: list[str]
    environment: Environment

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        if self.estimate is not None:
            out["estimate"]["per_batch"] = {str(k): v for k, v in self.estimate.per_batch.items()}
        return out


def diagnose(
    preset: str | None = None,
    *,
    device: str = "auto",
    dtype: str | None = None,
    data: str | None = None,
    probe: bool = False,
    env: Environment | None = None,
    facts: PresetFacts | None = None,
) -> Report:
    """Run every check (and the probe when asked). ``env`` and ``facts`` replace what would be
    gathered from this machine, for tests."""
    name = preset or DEFAULT_PRESET
    chosen = find_preset(name)
    env = env or gather_environment()
    facts = facts or gather_preset(chosen, data)
    dtype = dtype or chosen.model.dtype
    picked, reason = pick_device(env, device)
    checks = [check_platform(env), check_versions(env), check_torch(env), check_cuda(env, device), check_mps(env, device),
              check_cpu(env), check_device(env, device, dtype), check_preset(facts)]
    hub = check_hub(facts)
    if hub is not None:
        checks.append(hub)
    memory, estimate = check_memory(env, facts, picked, dtype)
    checks.append(memory)
    probed = None
    if probe:
        if env.torch_error:
            probed = ProbeResult(ok=False, error="not run: torch does not import")
        else:
            probed = run_probe(name, device=device, dtype=dtype, data=data)
        checks.append(check_probe(probed, facts.default_batch))
    return Report(preset=chosen.name, device=picked, device_reason=reason, dtype=dtype, checks=checks, estimate=estimate,
                  probe=probed, oom_hints=oom_hints(env, name, picked, dtype, estimate), environment=env)
