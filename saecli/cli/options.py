"""The command line's options, declared once, and the one way flags become a :class:`RunConfig`.

Every command that runs the engine (``run``, ``sequential``, ``bench``, ``compare``, ``doctor``)
takes its run options from the declarations below, gathers them into one :class:`RunFlags` and
calls :func:`resolve_run` — the same precedence (built-in defaults < the preset's ``[defaults]`` <
flags) and the same checks on every path, so an option cannot fall off on one of them. What is not a
run option (``--out``, ``--sizes``, ``--atol``, ...) belongs to its command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from saecli.config import DEFAULT_PRESET, Preset, RunConfig, find_preset, resolve_run_config, run_preset
from saecli.device import DEVICES, DTYPES
from saecli.errors import SaecliError
from saecli.validation import LIMIT_ORDERS, check_option

# The choices of --device and --dtype: saecli.device's vocabulary, the one the presets and the API accept.
Device = StrEnum("Device", {name: name for name in DEVICES})
DType = StrEnum("DType", {name: name for name in DTYPES})
LimitOrder = StrEnum("LimitOrder", {name: name for name in LIMIT_ORDERS})

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Preset name: tiny (embedded, default), gemma-2-2b, gpt2-small, ...", show_default=False),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers", metavar="L1,L2,L3", show_default=False,
        help="The three layers to read, early to late, e.g. 5,12,20: presets whose SAE ids follow the layer "
        "(gemma-2-2b, gpt2-small) [default: the preset's].",
    ),
]  # fmt: skip
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="A preset TOML file (instead of --preset).", show_default=False)
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", "-d", show_default=False,
        help="JSON list, JSONL file, or a folder of them (HB-1000 layout supported); a CSV, TSV or Parquet table; or "
        "hf:NAME[:CONFIG][:SPLIT], a Hugging Face dataset in the local cache (TruthfulQA, HaluEval mapped built in). "
        "Default: the built-in benchmark.",
    ),
]  # fmt: skip
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns", show_default=False, metavar="TARGET=COLUMN,...",
        help="Which column of a --data table or hf: dataset holds each field, e.g. prompt=question,fact=best_answer,"
        "hallucination=wrong (targets: id, prompt, fact, hallucination, domain, topic, complexity) "
        "[default: the columns named like the fields, or the dataset's built-in mapping].",
    ),
]  # fmt: skip
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", "-n", help="Analyse only N samples (N >= 1), picked by --limit-order.", show_default=False),
]
LimitOrderOpt = Annotated[
    LimitOrder | None,
    typer.Option(
        "--limit-order", show_default=False,
        help="Which N samples --limit keeps, in file order: balanced takes the domains in turn (round-robin, each "
        "domain's first ones); file takes the first N [default: balanced].",
    ),
]  # fmt: skip
DomainsOpt = Annotated[
    str | None,
    typer.Option("--domains", help="Comma-separated domains to keep, e.g. entity,logical (spaces allowed).", show_default=False),
]
BatchSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size", "-b", show_default=False,
        help="Samples per batch, or 'auto' for the largest that fits (probed) [default: 16, or the preset's].",
    ),
]  # fmt: skip
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the stability noise [default: 0].", show_default=False)]
NoiseOpt = Annotated[
    float | None,
    typer.Option("--noise-std", help="σ of the stability noise, finite and >= 0 [default: 0.1].", show_default=False),
]
DeviceOpt = Annotated[
    Device | None, typer.Option("--device", help="auto prefers cuda, then mps, then cpu [default: auto].", show_default=False)
]
DTypeOpt = Annotated[
    DType | None,
    typer.Option(
        "--dtype", help="Model dtype [default: the preset's, float32]. float64 makes the run exact to 1e-9.", show_default=False
    ),
]
TruncateOpt = Annotated[
    bool, typer.Option("--truncate", help="Cut texts longer than the model's context from the left (else an error).")
]
BaselinesOpt = Annotated[
    bool | None,
    typer.Option(
        "--baselines/--no-baselines", show_default=False,
        help="Score the continuations' log-probabilities and keep the residual vectors (residuals.safetensors) for the report's "
        "baselines and probes [default: on]; off is faster.",
    ),
]  # fmt: skip
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", help="torch CPU threads [default: as many as there are idle cores at the start].", show_default=False
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray", metavar="[ADDRESS]", show_default=False,
        help="Run on Ray: alone, join RAY_ADDRESS or start a local instance; or join ADDRESS (auto, HOST:6379, ray://HOST:10001).",
    ),
]  # fmt: skip
WorkerCpusOpt = Annotated[
    int | None,
    typer.Option(
        "--worker-cpus", show_default=False,
        help="With --ray: CPUs (and torch threads) per worker on a cluster without GPUs [default: 1].",
    ),
]  # fmt: skip


def out_option(default: str, what: str) -> Any:
    """``--out``: where a command writes (its default shown whole: ``<...>`` is markup to the help's renderer)."""
    return typer.Option("--out", "-o", help=f"{what} [default: `{default}`].", show_default=False)


def json_option(what: str) -> Any:
    """``--json``: what this command prints as JSON instead of its table."""
    return typer.Option("--json", help=f"Print {what} as JSON on stdout instead of the table.")


@dataclass(frozen=True)
class RunFlags:
    """The run options as typed on the command line; None (or False for ``--truncate``) means "not
    given", so the preset's ``[defaults]`` (or, on ``--resume``, the run's own settings) stand."""

    preset: str | None = None
    config: Path | None = None
    layers: str | None = None
    data: Path | None = None
    columns: str | None = None
    limit: int | None = None
    limit_order: LimitOrder | None = None
    domains: str | None = None
    batch_size: str | None = None
    seed: int | None = None
    noise_std: float | None = None
    device: Device | None = None
    dtype: DType | None = None
    truncate: bool = False
    baselines: bool | None = None
    threads: int | None = None

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> RunFlags:
        """The run options among a command's parameters (``locals()``); a command without one of
        them (``sequential`` has no ``--batch-size``) leaves it not given."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @property
    def preset_name(self) -> str | None:
        if self.preset is not None and self.config is not None:
            raise SaecliError("give either --preset or --config, not both")
        return str(self.config) if self.config is not None else self.preset

    def overrides(self) -> dict[str, Any]:
        """The given flags as :class:`RunConfig` values, each checked as the flag it came from (so a
        message names ``--limit``, not ``limit``); None for the ones not given."""
        raw = {
            "preset": self.preset_name,
            "layers": self.layers,
            "data": str(self.data) if self.data is not None else None,
            "columns": self.columns,
            "limit": self.limit,
            "limit_order": self.limit_order.value if self.limit_order is not None else None,
            "domains": self.domains,
            "batch_size": parse_batch_size(self.batch_size),
            "seed": self.seed,
            "noise_std": self.noise_std,
            "device": self.device.value if self.device is not None else None,
            "dtype": self.dtype.value if self.dtype is not None else None,
            "truncate": True if self.truncate else None,
            "baselines": self.baselines,
            "threads": self.threads,
        }
        for key, value in raw.items():
            if value is not None and key not in ("domains", "preset"):
                check_option(key, value, "--" + key.replace("_", "-"))
        return raw


def resolve_run(
    flags: RunFlags, *, mode: str = "batched", resume: Path | None = None, **command_defaults: Any
) -> tuple[Preset, RunConfig]:
    """The one function every command builds its :class:`RunConfig` with: built-in defaults < the
    command's own defaults (``compare``: float64) < the preset's ``[defaults]`` < flags; on
    ``--resume`` the run folder's own settings with the given flags on top. Returns the preset too."""
    overrides = {**flags.overrides(), "mode": mode}
    if resume is not None:
        from saecli.manifest import resume_config

        config = resume_config(resume, **overrides)
        return run_preset(config), config
    name = overrides["preset"] or DEFAULT_PRESET
    preset = find_preset(name)
    given = {key: value for key, value in overrides.items() if value is not None}
    below = {key: value for key, value in command_defaults.items() if key not in preset.defaults}
    config = resolve_run_config(preset, **{**below, **given, "preset": name})
    return run_preset(config, preset), config


def parse_counts(text: str, option: str, example: str = "1,8,32") -> list[int]:
    """``1,8,32`` → [1, 8, 32] for ``option``; anything else (an empty element included) is a
    one-line error naming it."""
    parts = [part.strip() for part in text.split(",")]
    try:
        counts = [int(part) for part in parts]
    except ValueError:
        counts = []
    if not counts or any(count < 1 for count in counts):
        raise SaecliError(f"{option} must be positive whole numbers separated by commas, e.g. {example} (got {text!r})")
    return counts


def parse_batch_size(text: str | None) -> int | str | None:
    """``16`` → 16, ``auto`` → "auto"; anything else is a one-line error."""
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SaecliError(f"--batch-size must be a whole number >= 1 or 'auto' (got {text!r})")
    return value
