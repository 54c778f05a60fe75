"""Typed configuration: presets (configs/*.toml) and the resolved run configuration.

Precedence, lowest first: the dataclass defaults below < the preset's ``[defaults]`` table <
options given on the command line (or keyword arguments of the Python API). Unknown keys in a
TOML file are rejected with the file and the key named.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from saecli.device import DEVICES, DTYPES
from saecli.errors import SaecliError

MODES = ("batched", "sequential")
BUILTIN_PREFIX = "builtin:"
HF_PREFIX = "hf:"
"""``--data hf:NAME[:CONFIG][:SPLIT]`` names a Hugging Face dataset, not a path."""
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


def _type_name(t: type) -> str:
    # TOML's words for the containers a preset author writes.
    return {dict: "table", list: "array"}.get(t, t.__name__)


def _type_problem(value: Any, types: tuple[type, ...]) -> str | None:
    """Why ``value`` is none of ``types`` (a bool is not an int here), or None when it is one."""
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    names = " or ".join(_type_name(t) for t in types if t is not type(None))
    return f"must be {names}, got {_type_name(type(value))} {value!r}"


def _expect(value: Any, types: type | tuple[type, ...], key: str, source: Path | str) -> Any:
    problem = _type_problem(value, types if isinstance(types, tuple) else (types,))
    if problem is not None:
        raise SaecliError(f"{source}: '{key}' {problem}")
    return value


def _field_types(annotation: str) -> tuple[type, ...]:
    """The runtime types of a dataclass field's annotation string (``str | None``, ``dict[str, Any]``)."""
    names = {"str": str, "int": int, "bool": bool, "float": float, "dict": dict, "tuple": tuple, "None": type(None)}
    return tuple(names[part.strip().split("[")[0]] for part in annotation.split("|"))


def _check_field_types(spec: Any, prefix: str, suffix: str = "") -> None:
    """Check every field of a spec dataclass against its annotation, so that a mistyped TOML
    value is refused where it is read, not deep inside the model loading."""
    for f in dataclasses.fields(spec):
        problem = _type_problem(getattr(spec, f.name), _field_types(f.type))
        if problem is not None:
            raise SaecliError(f"'{prefix}.{f.name}'{suffix} {problem}")


# -- one validator per run option, shared by RunConfig, a preset's [defaults] and the Python API --

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Seeds and sample complexities are stored as signed 64-bit integers (torch generators, Parquet)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int64(value: Any, name: str) -> int:
    """A whole number in the signed 64-bit range."""
    if not _is_int(value) or not INT64_MIN <= value <= INT64_MAX:
        raise SaecliError(f"{name} must be a whole number from {INT64_MIN} to {INT64_MAX}, got {value!r}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """The stability noise's seed: any signed 64-bit integer."""
    return check_int64(value, name)


def _is_finite_number(value: Any) -> bool:
    """An int or float that converts to a finite float (a huge int overflows it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_noise_std(value: Any, name: str = "noise_std") -> float:
    """σ of the stability noise: finite and >= 0 (NaN or infinity would turn every stability value into 0)."""
    if not _is_finite_number(value) or value < 0:
        raise SaecliError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_limit(value: Any, name: str = "limit") -> int | None:
    """None (all samples) or a whole number >= 1."""
    if value is not None and (not _is_int(value) or value < 1):
        raise SaecliError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def check_batch_size(value: Any, name: str = "batch_size", *, auto: bool = True) -> int | str:
    """A whole number >= 1, or ``"auto"`` where the caller can probe one."""
    if (auto and value == "auto") or (_is_int(value) and value >= 1):
        return value
    raise SaecliError(f"{name} must be a whole number >= 1{' or ' + repr('auto') if auto else ''}, got {value!r}")


def split_domains(value: Any) -> Any:
    """``"entity, logical"`` or a list → ``("entity", "logical")``; anything else as it is (for
    :func:`check_domains` to judge). Only commas and spaces give an empty tuple, which is refused."""
    if isinstance(value, str):
        return tuple(d.strip() for d in value.split(",") if d.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


def check_domains(value: Any, name: str = "domains") -> tuple[str, ...] | None:
    """None (every domain) or a non-empty tuple of non-empty domain names."""
    if value is None:
        return None
    if not isinstance(value, tuple) or not all(isinstance(d, str) for d in value):
        raise SaecliError(f"{name} must be a tuple of domain names, got {value!r}")
    if not value or not all(d.strip() for d in value):
        raise SaecliError(f"{name} must name at least one domain, each non-empty, got {value!r}", hint="e.g. --domains entity,logical")
    return value


COLUMN_TARGETS = ("id", "prompt", "fact", "hallucination", "domain", "topic", "complexity")
"""The sample fields a table's or a dataset's columns can be mapped to (``--columns fact=best_answer``)."""


def columns_mapping(value: Any, name: str = "columns") -> dict[str, str] | None:
    """``"prompt=question,fact=best_answer"`` (the flag) or ``{prompt = "question"}`` (a TOML table)
    as ``{target: column}``, in :data:`COLUMN_TARGETS` order; None stays None. Every mistake (bad
    syntax, an unknown or repeated target, an empty column name) is one error naming the allowed
    targets."""
    if value is None:
        return None
    allowed = f"targets: {', '.join(COLUMN_TARGETS)}"
    example = "e.g. prompt=question,fact=best_answer,hallucination=wrong"
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for part in (p for p in value.split(",") if p.strip()):
            if "=" not in part:
                raise SaecliError(f"{name}: {part.strip()!r} is not TARGET=COLUMN", hint=f"{example}; {allowed}")
            target, column = part.split("=", 1)
            pairs.append((target.strip(), column.strip()))
    else:
        raise SaecliError(f"{name} must be a string TARGET=COLUMN,... or a table, got {type(value).__name__} {value!r}")
    if not pairs:
        raise SaecliError(f"{name} maps no column", hint=f"{example}; {allowed}")
    mapping: dict[str, str] = {}
    for target, column in pairs:
        if target not in COLUMN_TARGETS:
            raise SaecliError(f"{name}: unknown target {target!r}", hint=allowed)
        if target in mapping:
            raise SaecliError(f"{name}: {target!r} is mapped twice", hint="map each target to one column")
        if not isinstance(column, str) or not column.strip():
            raise SaecliError(f"{name}: {target!r} needs a column name, got {column!r}", hint=example)
        if "," in column or column != column.strip():
            raise SaecliError(f"{name}: column name {column!r} of {target!r} has a comma or surrounding spaces",
                              hint="rename that column in the file")  # fmt: skip
        mapping[target] = column
    return {target: mapping[target] for target in COLUMN_TARGETS if target in mapping}


def check_columns(value: Any, name: str = "columns") -> str | dict[str, str] | None:
    """None (the columns named like the fields, or a built-in dataset's own mapping), or a column
    mapping as :func:`columns_mapping` reads it."""
    columns_mapping(value, name)
    return value


def canonical_columns(value: Any) -> Any:
    """A column mapping as the one string a run records (``prompt=question,fact=best_answer``, in
    :data:`COLUMN_TARGETS` order), so that equal mappings compare equal; anything it cannot read is
    returned as it is, for :func:`check_columns` to refuse."""
    try:
        mapping = columns_mapping(value)
    except SaecliError:
        return value
    return None if mapping is None else ",".join(f"{target}={column}" for target, column in mapping.items())


def check_threads(value: Any, name: str = "threads") -> int | None:
    """None (chosen at the start of a run) or a whole number from 1 to 1024."""
    if value is not None and (not _is_int(value) or not 1 <= value <= 1024):
        raise SaecliError(f"{name} must be a whole number from 1 to 1024, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SaecliError(f"{name} must be true or false, got {value!r}")
    return value


def check_optional_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SaecliError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def check_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SaecliError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_choice(allowed: tuple[str, ...], optional: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        if (value is None and optional) or (isinstance(value, str) and value in allowed):
            return value
        raise SaecliError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    return check


_OPTION_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "preset": check_str,
    "data": check_optional_str,
    "columns": check_columns,
    "limit": check_limit,
    "domains": check_domains,
    "batch_size": check_batch_size,
    "seed": check_seed,
    "noise_std": check_noise_std,
    "device": _check_choice(DEVICES),
    "dtype": _check_choice(DTYPES, optional=True),
    "mode": _check_choice(MODES),
    "truncate": check_bool,
    "baselines": check_bool,
    "threads": check_threads,
}


def check_option(key: str, value: Any, name: str | None = None) -> Any:
    """Validate one run option (a :class:`RunConfig` field) and return it unchanged; ``name`` is how
    the message calls it (default: the key). The one check behind flags, presets and the API."""
    return _OPTION_CHECKS[key](value, name or key)


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
        _check_field_types(self, "model")
        if self.dtype not in DTYPES:
            raise SaecliError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_int64(self.seed, "model.seed")
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
        _check_field_types(self, "sae", f" (the SAE for layer {self.layer!r})")
        if self.layer < 0:
            raise SaecliError(f"sae.layer must be >= 0, got {self.layer}")
        hub = self.release is not None or self.id is not None
        sources = (self.path is not None) + hub + (self.random is not None)
        if sources != 1 or (hub and (self.release is None or self.id is None)):
            raise SaecliError(
                f"the SAE for layer {self.layer} needs exactly one of 'path', 'release' and 'id', or 'random'"
            )
        if self.random is not None:
            self._check_random(self.random)

    def _check_random(self, random: dict[str, Any]) -> None:
        """The keys and values of a random SAE's table, checked here rather than when it is built."""
        where = f"sae.random (layer {self.layer})"
        unknown = sorted(set(random) - {"hook", "d_sae", "target_l0", "seed"})
        if unknown:
            raise SaecliError(f"unknown key '{unknown[0]}' in {where}", hint="allowed keys: d_sae, hook, seed, target_l0")
        for key in ("hook", "d_sae"):
            if key not in random:
                raise SaecliError(f"sae.random for layer {self.layer} needs '{key}'")
        check_str(random["hook"], f"{where}.hook")
        if not _is_int(random["d_sae"]) or not 1 <= random["d_sae"] <= INT64_MAX:
            raise SaecliError(f"{where}.d_sae must be a whole number >= 1, got {random['d_sae']!r}")
        if "target_l0" in random:
            target = random["target_l0"]
            if not _is_finite_number(target) or target <= 0:
                raise SaecliError(f"{where}.target_l0 must be a finite number > 0, got {target!r}")
        if "seed" in random:
            check_int64(random["seed"], f"{where}.seed")

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
        self._check_defaults()
        if len(self.saes) != 3:
            raise SaecliError(f"{self.source}: a preset needs exactly 3 SAEs, got {len(self.saes)}")
        layers = [s.layer for s in self.saes]
        if len(set(layers)) != 3:
            raise SaecliError(f"{self.source}: the 3 SAE layers must differ, got {layers}")

    def _check_defaults(self) -> None:
        """``[defaults]`` holds only run options, each checked as the same flag would be (the loader
        adds the file to the message)."""
        problem = _type_problem(self.defaults, (dict,))
        if problem is not None:
            raise SaecliError(f"'defaults' {problem}")
        unknown = sorted(set(self.defaults) - set(PRESET_DEFAULT_KEYS))
        if unknown:
            raise SaecliError(f"unknown key '{unknown[0]}' in [defaults]", hint=f"allowed keys: {', '.join(sorted(PRESET_DEFAULT_KEYS))}")
        for key, value in self.defaults.items():
            check_option(key, value, f"[defaults] {key}")

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.saes]

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()


_PRESET_KEYS = {"name", "description", "model", "sae", "defaults", "synthetic"}
_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
_SAE_KEYS = {f.name for f in dataclasses.fields(SAESpec)}


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of a preset file; anything that keeps it from being read is one error naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SaecliError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise SaecliError(f"config path {path} is a folder, not a TOML file") from None
    except OSError as exc:
        raise SaecliError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SaecliError(f"{path} is not a UTF-8 text file (byte {exc.start} is not UTF-8)", hint="a preset is a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SaecliError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise SaecliError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def load_preset_file(path: Path) -> Preset:
    """Parse and validate one preset file: every key and value, before anything is loaded."""
    raw = _read_toml(path)
    _check_keys(raw, _PRESET_KEYS, "the top level", path)
    if "model" not in raw:
        raise SaecliError(f"{path}: no [model] table", hint="a preset needs [model] with at least 'name'")
    model_raw = _expect(raw["model"], dict, "model", path)
    _check_keys(model_raw, _MODEL_KEYS, "[model]", path)
    _expect(model_raw.get("name"), str, "model.name", path)
    sae_raw = _expect(raw.get("sae", []), list, "sae", path)
    saes = []
    for i, table in enumerate(sae_raw):
        _expect(table, dict, f"sae[{i}]", path)
        _check_keys(table, _SAE_KEYS, f"[[sae]] #{i + 1}", path)
        _expect(table.get("layer"), int, f"sae[{i}].layer", path)
        saes.append(_with_source(path, lambda t=table: SAESpec(**t)))
    defaults = _expect(raw.get("defaults", {}), dict, "defaults", path)
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


def _with_source(path: Path | str, build: Any) -> Any:
    """Run a constructor, prefixing a validation error with the file it came from."""
    try:
        return build()
    except SaecliError as exc:
        if str(path) in exc.message:
            raise
        raise SaecliError(f"{path}: {exc.message}", exc.hint) from None


def find_preset(name_or_path: str) -> Preset:
    """A preset by name (``tiny``, ``gemma-2-2b``) or by the path of a TOML file."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise SaecliError(f"a preset is a name or the path of a TOML file, got {name_or_path!r}")
    try:
        candidate = Path(name_or_path).expanduser()
    except RuntimeError:  # ~user of an unknown user
        candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file():
        return load_preset_file(candidate)
    for directory in preset_dirs():
        path = directory / f"{name_or_path}.toml"
        if path.is_file():
            return load_preset_file(path)
    if candidate.is_dir():  # checked last: a folder in the current one may share a preset's name
        raise SaecliError(f"config path {candidate} is a folder, not a TOML file")
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
    """Benchmark file or folder, a CSV/TSV/Parquet table, or ``hf:NAME[:CONFIG][:SPLIT]`` (a Hugging
    Face dataset in the local cache); None is the built-in benchmark."""
    columns: str | None = None
    """Which column of a table or dataset holds each sample field, ``prompt=question,fact=best_answer``
    (a TOML table in a preset); None: the columns named like the fields, or a built-in dataset's own
    mapping. It changes what is analysed, so the samples it reads are part of the run's identity."""
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
    truncate: bool = False
    """Cut texts longer than the model's context from the left (keeping BOS) instead of refusing
    them. It changes those samples' results, so it is part of the run's identity."""
    baselines: bool = True
    """Score the log-probability of each continuation (the whole model runs, not just up to the
    deepest SAE) and keep the residual vectors and SAE features in ``residuals.safetensors``, for
    the report's baselines and probes. Off: faster, and the baseline columns are null."""
    threads: int | None = None
    """torch CPU threads; None: as many as there are idle cores at the start (see
    :func:`saecli.device.choose_threads`)."""

    def __post_init__(self) -> None:
        # --domains arrives as "a,b" (the CLI), a list (a manifest's JSON) or a tuple (Python).
        object.__setattr__(self, "domains", split_domains(self.domains))
        object.__setattr__(self, "columns", canonical_columns(self.columns))
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))


PRESET_DEFAULT_KEYS = ("batch_size", "seed", "noise_std", "device", "data", "columns", "limit")


def resolve_run_config(preset: Preset, /, **overrides: Any) -> RunConfig:
    """Apply the precedence defaults < preset ``[defaults]`` < overrides (None means not given)."""
    values: dict[str, Any] = {}
    for key in PRESET_DEFAULT_KEYS:
        if key in preset.defaults:
            values[key] = preset.defaults[key]
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    values["domains"] = split_domains(values.get("domains"))
    data = values.get("data")
    if data is not None and preset.defaults.get("data") == data and not str(data).startswith(HF_PREFIX):
        values["data"] = str(resolve_location(values["data"], preset.base_dir))
    return RunConfig(**values)
