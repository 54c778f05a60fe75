"""saecli: sparse-autoencoder analysis of a language model over a fact/hallucination benchmark.

Python API (the CLI is a thin layer over these)::

    import saecli
    preset = saecli.load_preset("tiny", device="cpu", dtype="float32")
    samples = saecli.load_samples()          # the built-in benchmark
    rows = list(saecli.analyze(samples, preset, batch_size=16))

The names of the API are imported on first use (a module ``__getattr__``): importing any module of
the package runs this file first, and ``import saecli.device`` (or ``saecli.config``,
``saecli.columns``) must not load polars, the data modules or torch. ``analyze`` needs torch;
importing it late also keeps `saecli --help` fast and lets `saecli doctor` report a broken torch
install instead of crashing on it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("saecli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

SCHEMA_VERSION = 1

_LAZY = {
    "Sample": "saecli.data",
    "load_samples": "saecli.data",
    "SaecliError": "saecli.errors",
    "LoadedPreset": "saecli.models",
    "load_preset": "saecli.models",
    "analyze": "saecli.engine",
}
"""API name → the module that defines it, imported on first use."""

if TYPE_CHECKING:  # for type checkers and editors; at run time ``__getattr__`` imports them
    from saecli.data import Sample, load_samples
    from saecli.engine import analyze
    from saecli.errors import SaecliError
    from saecli.models import LoadedPreset, load_preset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'saecli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    """The API, the dunders, and the submodules imported so far (not this file's own helpers)."""
    own = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    submodules = {n for n, v in globals().items() if isinstance(v, ModuleType) and v.__name__.startswith("saecli.")}
    return sorted({*__all__, *own, *submodules})


__all__ = ["SCHEMA_VERSION", "LoadedPreset", "Sample", "SaecliError", "__version__", "analyze", "load_preset", "load_samples"]
