"""saecli: sparse-autoencoder analysis of a language model over a fact/hallucination benchmark.

Python API (the CLI is a thin layer over these)::

    import saecli
    preset = saecli.load_preset("tiny", device="cpu", dtype="float32")
    samples = saecli.load_samples()          # the built-in benchmark
    rows = list(saecli.analyze(samples, preset, batch_size=16))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saecli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

SCHEMA_VERSION = 1

from saecli.data import Sample, load_samples  # noqa: E402
from saecli.errors import SaecliError  # noqa: E402
from saecli.models import LoadedPreset, load_preset  # noqa: E402


def __getattr__(name: str):
    # ``analyze`` needs torch; importing it on first use keeps `saecli --help` fast and lets
    # `saecli doctor` report a broken torch install instead of crashing on it.
    if name == "analyze":
        from saecli.engine import analyze

        return analyze
    raise AttributeError(f"module 'saecli' has no attribute {name!r}")


__all__ = ["SCHEMA_VERSION", "LoadedPreset", "Sample", "SaecliError", "__version__", "analyze", "load_preset", "load_samples"]
