"""Typed configuration: presets (configs/*.toml) and the resolved run configuration.

Precedence, lowest first: the dataclass defaults below < the preset's ``[defaults]`` table <
options given on the command line (or keyword arguments of the Python API). Unknown keys in a
TOML file are rejected with the file and the key named.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from saecli.errors import SaecliError

DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = ("batched", "sequential")
BUILTIN_PREFIX = "builtin:"
DEFAULT_PRESET = "tiny"


def assets_dir() -> Path:
    """Folder of the files shipped inside the package (the embedded preset, the benchmark)."""
    return Path(str(resources.files("saecli") / "assets"))


def preset_dirs() -> list[Path]:
    """Where named presets live: inside the installed package, or ``configs/`` of a checkout."""
    candidates = [Path(str(resources.files("saecli") / "configs")), Path(__file__).resolve().parents[1] / "configs"]
    unique: dict[Path, None] = {p.resolve(): None for p in candidates if p.is_dir()}
    return list(unique)


def available_presets() -> list[str]:
    names = {p.stem for d in preset_dirs() for p in d.glob("*.toml")}
    return sorted(names)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, source: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SaecliError(
            f"{source}: unknown key '{unknown[0]}' in {where}",
            hint=f"allowed keys: {', '.join(sorted(allowed))}",
        )


def _expect(value: Any, types: type | tuple[type, ...], key: str, source: Path | str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SaecliError(f"{source}: '{key}' has the wrong type (got a boolean)")
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise SaecliError(f"{source}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def resolve_location(value: str, base: Path) -> Path:
    """A local path from a preset: ``builtin:...`` is inside the package, relative paths are
    relative to the preset file's folder."""
    if value.startswith(BUILTIN_PREFIX):
        return assets_dir() / value[len(BUILTIN_PREFIX) :]
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


@dataclass(frozen=True)
class ModelSpec:
    """Which language model a preset analyses."""

    name: str
    """TransformerLens model name (``gemma-2-2b``) or a label for a local model."""
    path: str | None = None
    """Local folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json``; None loads
    ``name`` from the Hugging Face cache through TransformerLens."""
    dtype: str = "float32"
    """Model dtype when ``--dtype`` is not given: one of float32, float64, bfloat16, float16."""
    from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``HookedTransformer.from_pretrained_no_processing``."""
    random_init: bool = False
    """Build the architecture in ``config`` with seeded random weights (benchmark-only presets)."""
    config: dict[str, Any] = field(default_factory=dict)
    """``HookedTransformerConfig`` keyword arguments of a ``random_init`` model."""
    tokenizer: str | None = None
    """``tokenizer.json`` of a ``random_init`` model (``builtin:`` paths allowed)."""
    seed: int = 0
    """Seed of a ``random_init`` model's weights."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SaecliError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.random_init and (not self.config or self.tokenizer is None):
            raise SaecliError("a random_init model needs 'config' and 'tokenizer'")


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a preset: a SAELens release and id, or a local folder (``SAE.load_from_disk``)."""

    layer: int
    """Layer label used in column names (``l{layer}_...``)."""
    release: str | None = None
    """SAELens release, e.g. ``gemma-scope-2b-pt-res-canonical``."""
    id: str | None = None
    """SAE id within the release, e.g. ``layer_5/width_16k/canonical``."""
    path: str | None = None
    """Local folder as written by SAELens (``cfg.json`` + ``sae_weights.safetensors``)."""
    random: dict[str, Any] | None = None
    """A seeded random JumpReLU SAE: ``{hook, d_sae, target_l0, seed}`` (benchmark-only presets)."""

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise SaecliError(f"sae.layer must be >= 0, got {self.layer}")
        hub = self.release is not None or self.id is not None
        sources = (self.path is not None) + hub + (self.random is not None)
        if sources != 1 or (hub and (self.release is None or self.id is None)):
            raise SaecliError(
                f"the SAE for layer {self.layer} needs exactly one of 'path', 'release' and 'id', or 'random'"
            )
        if self.random is not None:
            _check_keys(self.random, {"hook", "d_sae", "target_l0", "seed"}, f"sae.random (layer {self.layer})", Path("preset"))
            for key in ("hook", "d_sae"):
                if key not in self.random:
                    raise SaecliError(f"sae.random for layer {self.layer} needs '{key}'")

    @property
    def identity(self) -> str:
        if self.random is not None:
            return f"random:{self.random['hook']}:{self.random['d_sae']}"
        return self.path if self.path is not None else f"{self.release}/{self.id}"


@dataclass(frozen=True)
class Preset:
    """A model, its three layers and their SAEs, and run defaults."""

    name: str
    """Short name (the file's stem for named presets)."""
    model: ModelSpec
    """The language model."""
    saes: tuple[SAESpec, ...]
    """Exactly three SAEs, early, middle and late layer, in that order."""
    description: str = ""
    """One line shown in ``--help`` and in manifests."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Run options this preset sets (keys of :class:`RunConfig`)."""
    source: str = ""
    """The TOML file this preset was read from."""
    synthetic: bool = False
    """True when the weights are random: its metrics mean nothing (benchmarking only)."""

    def __post_init__(self) -> None:
        if len(self.saes) != 3:
            raise SaecliError(f"{self.source}: a preset needs exactly 3 SAEs, got {len(self.saes)}")
        layers = [s.layer for s in self.saes]
        if len(set(layers)) != 3:
            raise SaecliError(f"{self.source}: the 3 SAE layers must differ, got {layers}")

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.saes]

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()


_PRESET_KEYS = {"name", "description", "model", "sae", "defaults", "synthetic"}
_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
_SAE_KEYS = {f.name for f in dataclasses.fields(SAESpec)}


def load_preset_file(path: Path) -> Preset:
    """Parse and validate one preset file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaecliError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SaecliError(f"{path}: invalid TOML: {exc}") from None
    _check_keys(raw, _PRESET_KEYS, "the top level", path)
    model_raw = _expect(raw.get("model"), dict, "model", path)
    _check_keys(model_raw, _MODEL_KEYS, "[model]", path)
    sae_raw = _expect(raw.get("sae", []), list, "sae", path)
    saes = []
    for i, table in enumerate(sae_raw):
        _expect(table, dict, f"sae[{i}]", path)
        _check_keys(table, _SAE_KEYS, f"[[sae]] #{i + 1}", path)
        _expect(table.get("layer"), int, f"sae[{i}].layer", path)
        if "random" in table:
            _expect(table["random"], dict, f"sae[{i}].random", path)
        for key in ("release", "id", "path"):
            if key in table:
                _expect(table[key], str, f"sae[{i}].{key}", path)
        saes.append(_with_source(path, lambda t=table: SAESpec(**t)))
    _expect(model_raw.get("name"), str, "model.name", path)
    defaults = _expect(raw.get("defaults", {}), dict, "defaults", path)
    _check_keys(defaults, set(PRESET_DEFAULT_KEYS), "[defaults]", path)
    return _with_source(
        path,
        lambda: Preset(
            name=_expect(raw.get("name", path.stem), str, "name", path),
            description=_expect(raw.get("description", ""), str, "description", path),
            model=ModelSpec(**model_raw),
            saes=tuple(saes),
            defaults=defaults,
            source=str(path),
            synthetic=_expect(raw.get("synthetic", False), bool, "synthetic", path),
        ),
    )


def _with_source(path: Path, build: Any) -> Any:
    """Run a constructor, prefixing a validation error with the file it came from."""
    try:
        return build()
    except SaecliError as exc:
        if str(path) in exc.message:
            raise
        raise SaecliError(f"{path}: {exc.message}", exc.hint) from None


def find_preset(name_or_path: str) -> Preset:
    """A preset by name (``tiny``, ``gemma-2-2b``) or by the path of a TOML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or candidate.is_file():
        if not candidate.is_file():
            raise SaecliError(f"config file not found: {candidate}")
        return load_preset_file(candidate)
    for directory in preset_dirs():
        path = directory / f"{name_or_path}.toml"
        if path.is_file():
            return load_preset_file(path)
    raise SaecliError(
        f"unknown preset {name_or_path!r}",
        hint=f"available: {', '.join(available_presets())}; or pass --config FILE.toml",
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results, resolved from defaults, preset and flags."""

    preset: str = DEFAULT_PRESET
    """Preset name or TOML path."""
    data: str | None = None
    """Benchmark file or folder; None is the built-in benchmark."""
    limit: int | None = None
    """Analyse only the first N samples (after the domain filter)."""
    domains: tuple[str, ...] | None = None
    """Keep only these domains."""
    batch_size: int | str = 16
    """Samples per batch (``batched`` mode), or ``"auto"``: the largest that fits (probed)."""
    seed: int = 0
    """Seed of the stability noise."""
    noise_std: float = 0.1
    """Standard deviation σ of the stability noise."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str | None = None
    """Model dtype; None takes the preset's."""
    mode: str = "batched"
    """batched (``run``) or sequential (the one-text-at-a-time reference)."""

    def __post_init__(self) -> None:
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise SaecliError(f"batch_size must be a whole number >= 1 or 'auto', got {self.batch_size!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise SaecliError(f"limit must be a whole number >= 1, got {self.limit!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SaecliError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.noise_std, (int, float)) or self.noise_std < 0:
            raise SaecliError(f"noise_std must be a number >= 0, got {self.noise_std!r}")
        if self.device not in DEVICES:
            raise SaecliError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise SaecliError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.mode not in MODES:
            raise SaecliError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


PRESET_DEFAULT_KEYS = ("batch_size", "seed", "noise_std", "device", "data", "limit")


def resolve_run_config(preset: Preset, /, **overrides: Any) -> RunConfig:
    """Apply the precedence defaults < preset ``[defaults]`` < overrides (None means not given)."""
    values: dict[str, Any] = {}
    for key in PRESET_DEFAULT_KEYS:
        if key in preset.defaults:
            values[key] = preset.defaults[key]
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    if isinstance(values.get("domains"), str):
        values["domains"] = tuple(d.strip() for d in values["domains"].split(",") if d.strip())
    elif values.get("domains") is not None:
        values["domains"] = tuple(values["domains"])
    if values.get("data") is not None and preset.defaults.get("data") == values["data"]:
        values["data"] = str(resolve_location(values["data"], preset.base_dir))
    return RunConfig(**values)
