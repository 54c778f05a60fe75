"""One validator per run option, shared by :class:`saecli.config.RunConfig`, a preset's
``[defaults]``, the command line and the Python API: each takes the value and the name a message
should call it by (``--limit``, ``[defaults] limit``, ``limit``), and returns the value or raises a
one-line :class:`SaecliError` naming that name and what is allowed."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from saecli.device import DEVICES, DTYPES
from saecli.errors import SaecliError

MODES = ("batched", "sequential")
LIMIT_ORDERS = ("balanced", "file")
"""How ``--limit N`` picks its N samples (:func:`saecli.data.limited`): round-robin over the domains, or the first N."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Seeds and sample complexities are stored as signed 64-bit integers (torch generators, Parquet)."""


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """``value`` as an error message quotes it. An integer of thousands of digits (from TOML, JSON or
    Python) would make ``repr`` itself fail on Python's digit limit, and fill the terminal: its size
    is named instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a whole number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def check_int64(value: Any, name: str) -> int:
    """A whole number in the signed 64-bit range."""
    if not is_whole(value) or not INT64_MIN <= value <= INT64_MAX:
        raise SaecliError(f"{name} must be a whole number from {INT64_MIN} to {INT64_MAX}, got {shown(value)}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """The stability noise's seed: any signed 64-bit integer."""
    return check_int64(value, name)


def is_finite_number(value: Any) -> bool:
    """An int or float that converts to a finite float (a huge int overflows it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_noise_std(value: Any, name: str = "noise_std") -> float:
    """σ of the stability noise: finite and >= 0 (NaN or infinity would turn every stability value into 0)."""
    if not is_finite_number(value) or value < 0:
        raise SaecliError(f"{name} must be a finite number >= 0, got {shown(value)}")
    return value


def check_limit(value: Any, name: str = "limit") -> int | None:
    """None (all samples) or a whole number >= 1."""
    if value is not None and (not is_whole(value) or value < 1):
        raise SaecliError(f"{name} must be a whole number >= 1, got {shown(value)}")
    return value


def check_batch_size(value: Any, name: str = "batch_size", *, auto: bool = True) -> int | str:
    """A whole number >= 1, or ``"auto"`` where the caller can probe one."""
    if (auto and value == "auto") or (is_whole(value) and value >= 1):
        return value
    raise SaecliError(f"{name} must be a whole number >= 1{' or ' + repr('auto') if auto else ''}, got {shown(value)}")


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
        raise SaecliError(f"{name} must be a tuple of domain names, got {shown(value)}")
    if not value or not all(d.strip() for d in value):
        raise SaecliError(
            f"{name} must name at least one domain, each non-empty, got {shown(value)}", hint="e.g. --domains entity,logical"
        )
    return value


def split_layers(value: Any) -> Any:
    """``"5,12,20"`` (spaces allowed) or a list → ``(5, 12, 20)``; anything else as it is (for
    :func:`check_layers` to judge)."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        return tuple(int(part) for part in parts) if all(part.isascii() and part.isdigit() for part in parts) else value
    return tuple(value) if isinstance(value, list) else value


def check_layers(value: Any, name: str = "layers") -> tuple[int, ...] | None:
    """None (the preset's own layers) or three different layers >= 0, early to late: the engine reads
    an early layer (drift, twist, stability, entropy) and two later ones (their consistency)."""
    layers = split_layers(value)
    if layers is None:
        return None
    if not (isinstance(layers, tuple) and len(layers) == 3 and all(is_whole(n) for n in layers)
            and 0 <= layers[0] < layers[1] < layers[2]):  # fmt: skip
        raise SaecliError(f"{name} must be three different layers from early to late, e.g. 5,12,20, got {shown(value)}")
    return layers


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
    if value is not None and (not is_whole(value) or not 1 <= value <= 1024):
        raise SaecliError(f"{name} must be a whole number from 1 to 1024, got {shown(value)}")
    return value


_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.")


def check_hook_layer(layer: int, hook: Any, where: str) -> None:
    """The SAE of layer L must read a hook of block L (``blocks.L.…``) when it reads a block's hook
    at all: the layer names its columns (``l{L}_…``) and the report's rows, which would otherwise
    describe another block. ``where`` says where the hook was found (a preset, a cfg.json)."""
    match = _BLOCK_HOOK.match(hook) if isinstance(hook, str) else None
    if match is not None and int(match.group(1)) != layer:
        block = int(match.group(1))
        raise SaecliError(
            f"{where}: the SAE for layer {layer} reads {hook!r}, a hook of block {block}",
            hint=f"declare it as layer {block}, or give layer {layer} an SAE that reads blocks.{layer}",
        )


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SaecliError(f"{name} must be true or false, got {shown(value)}")
    return value


def check_optional_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SaecliError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def check_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SaecliError(f"{name} must be a non-empty string, got {shown(value)}")
    return value


def _check_choice(allowed: tuple[str, ...], optional: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        if (value is None and optional) or (isinstance(value, str) and value in allowed):
            return value
        raise SaecliError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")

    return check


_OPTION_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "preset": check_str,
    "data": check_optional_str,
    "columns": check_columns,
    "limit": check_limit,
    "limit_order": _check_choice(LIMIT_ORDERS),
    "layers": check_layers,
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
