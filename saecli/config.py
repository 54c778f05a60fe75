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

from saecli.device import DTYPES
from saecli.errors import SaecliError
from saecli.validation import (
    INT64_MAX,
    canonical_columns,
    check_hook_layer,
    check_int64,
    check_option,
    check_str,
    is_finite_number,
    is_whole,
    shown,
    split_domains,
    split_layers,
)

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
            raise SaecliError(f"the SAE for layer {self.layer} needs exactly one of 'path', 'release' and 'id', or 'random'")
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
        check_hook_layer(self.layer, random["hook"], "sae.random.hook")
        if not is_whole(random["d_sae"]) or not 1 <= random["d_sae"] <= INT64_MAX:
            raise SaecliError(f"{where}.d_sae must be a whole number >= 1, got {random['d_sae']!r}")
        if "target_l0" in random:
            target = random["target_l0"]
            if not is_finite_number(target) or target <= 0:
                raise SaecliError(f"{where}.target_l0 must be a finite number > 0, got {target!r}")
        if "seed" in random:
            check_int64(random["seed"], f"{where}.seed")

    @property
    def identity(self) -> str:
        if self.random is not None:
            return f"random:{self.random['hook']}:{self.random['d_sae']}"
        return self.path if self.path is not None else f"{self.release}/{self.id}"


@dataclass(frozen=True)
class SAETemplate:
    """A preset's ``[sae_template]``: the SAE of any layer in ``layer_range``, ``{layer}`` in its id
    (or in a random SAE's hook) standing for the layer. What ``--layers`` reads its SAEs from."""

    layer_range: tuple[int, int]
    """The first and the last layer with an SAE (``[0, 25]`` in TOML)."""
    release: str | None = None
    """SAELens release, e.g. ``gemma-scope-2b-pt-res-canonical``."""
    id: str | None = None
    """SAE id with ``{layer}``, e.g. ``layer_{layer}/width_16k/canonical``."""
    random: dict[str, Any] | None = None
    """A random SAE as in ``[[sae]]``, its hook with ``{layer}`` (its seed is the layer unless given)."""

    def __post_init__(self) -> None:
        span = self.layer_range
        if not (
            isinstance(span, (list, tuple)) and len(span) == 2 and all(is_whole(n) for n in span) and 0 <= span[0] <= span[1]
        ):
            raise SaecliError(f"'sae_template.layer_range' must be [first, last], whole numbers with 0 <= first <= last, got {shown(span)}")  # fmt: skip
        object.__setattr__(self, "layer_range", tuple(span))
        _check_field_types(self, "sae_template")
        key, text = ("random.hook", self.random.get("hook")) if self.random is not None else ("id", self.id)
        if not isinstance(text, str) or "{layer}" not in text:
            raise SaecliError(f"'sae_template.{key}' must hold {{layer}}, where the layer goes, got {shown(text)}",
                              hint="e.g. id = \"layer_{layer}/width_16k/canonical\"")  # fmt: skip
        try:
            self.spec(span[0])  # every other check is the SAE's own
        except SaecliError as exc:
            raise SaecliError(f"[sae_template]: {exc.message}", exc.hint) from None

    def spec(self, layer: int) -> SAESpec:
        """The SAE of ``layer``."""

        def fill(text: Any) -> Any:
            return text.replace("{layer}", str(layer)) if isinstance(text, str) else text

        random = None if self.random is None else {"seed": layer, **self.random, "hook": fill(self.random.get("hook"))}
        return SAESpec(layer=layer, release=self.release, id=fill(self.id), random=random)


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
    trained_on_benchmark: bool = False
    """True when the model (or its SAEs) learned the built-in benchmark's facts (the embedded ``tiny``):
    on that benchmark its log-probability and reconstruction AUROCs are in-sample, and the report says so."""
    sae_template: SAETemplate | None = None
    """The SAE of any layer in a range, for ``--layers``; None: the preset's own SAEs only."""

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
            raise SaecliError(
                f"unknown key '{unknown[0]}' in [defaults]", hint=f"allowed keys: {', '.join(sorted(PRESET_DEFAULT_KEYS))}"
            )
        for key, value in self.defaults.items():
            check_option(key, value, f"[defaults] {key}")

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.saes]

    def with_layers(self, layers: tuple[int, ...] | None) -> Preset:
        """This preset reading ``layers`` (``--layers``: checked three, early to late), each SAE its
        ``[sae_template]``'s; None: as it is."""
        if layers is None:
            return self
        if self.sae_template is None:
            raise SaecliError(f"preset {self.name} cannot read other layers (--layers): it names each of its SAEs, "
                              "with no [sae_template]", hint="--layers needs a preset whose SAE ids follow the layer, "
                              "e.g. gemma-2-2b or gpt2-small")  # fmt: skip
        first, last = self.sae_template.layer_range
        outside = [n for n in layers if not first <= n <= last]
        if outside:
            raise SaecliError(f"--layers: preset {self.name} has SAEs for layers {first} to {last}, not for {outside[0]}")
        return dataclasses.replace(self, saes=tuple(self.sae_template.spec(n) for n in layers))

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()


_PRESET_KEYS = {"name", "description", "model", "sae", "sae_template", "defaults", "synthetic", "trained_on_benchmark"}
_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
_SAE_KEYS = {f.name for f in dataclasses.fields(SAESpec)}
_TEMPLATE_KEYS = {f.name for f in dataclasses.fields(SAETemplate)}


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
        raise SaecliError(
            f"{path} is not a UTF-8 text file (byte {exc.start} is not UTF-8)", hint="a preset is a TOML file"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SaecliError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise SaecliError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        raise SaecliError(f"{path}: invalid TOML: {str(exc).splitlines()[0]}") from None


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
    template = None
    if "sae_template" in raw:
        table = _expect(raw["sae_template"], dict, "sae_template", path)
        _check_keys(table, _TEMPLATE_KEYS, "[sae_template]", path)
        if "layer_range" not in table:
            raise SaecliError(f"{path}: [sae_template] needs 'layer_range', its first and last layer, e.g. [0, 25]")
        template = _with_source(path, lambda: SAETemplate(**table))
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
            trained_on_benchmark=_expect(raw.get("trained_on_benchmark", False), bool, "trained_on_benchmark", path),
            sae_template=template,
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
    layers: tuple[int, ...] | None = None
    """The three layers to read, early to late (``--layers 5,12,20``), each SAE from the preset's
    ``[sae_template]``; None: the preset's own layers."""
    data: str | None = None
    """Benchmark file or folder, a CSV/TSV/Parquet table, or ``hf:NAME[:CONFIG][:SPLIT]`` (a Hugging
    Face dataset in the local cache); None is the built-in benchmark."""
    columns: str | None = None
    """Which column of a table or dataset holds each sample field, ``prompt=question,fact=best_answer``
    (a TOML table in a preset); None: the columns named like the fields, or a built-in dataset's own
    mapping. It changes what is analysed, so the samples it reads are part of the run's identity."""
    limit: int | None = None
    """Analyse only N samples (after the domain filter), picked by ``limit_order``."""
    limit_order: str = "balanced"
    """How ``limit`` picks them (:func:`saecli.data.limited`): ``balanced``, a round-robin over the
    domains, or ``file``, the first N. It changes what is analysed: part of the run's identity."""
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
        object.__setattr__(self, "layers", split_layers(self.layers))
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))


PRESET_DEFAULT_KEYS = ("batch_size", "seed", "noise_std", "device", "data", "columns", "limit", "limit_order")


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
    config = RunConfig(**values)
    preset.with_layers(config.layers)  # layers this preset has no SAE for: refused now, before anything loads
    return config


def run_preset(config: RunConfig, preset: Preset | None = None) -> Preset:
    """The preset a run reads: ``preset`` (default: the one ``config`` names) with ``config.layers``."""
    return (preset if preset is not None else find_preset(config.preset)).with_layers(config.layers)
