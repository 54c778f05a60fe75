"""The Hugging Face hub and the installed packages, as saecli sees them without loading a model.

Belongs here: which hub repo holds a model (``HUB_MODELS``, then TransformerLens's lookup) and an
SAE (SAELens's release directory, read from its YAML file), whether a repo (or a folder of it) is in
the local cache (:func:`cached_snapshot`), whether the hub can be reached (:func:`hub_status`,
:func:`is_offline`), the ``hf download`` command that fetches what is missing
(:func:`fetch_commands`), and the versions of the packages a run depends on
(:func:`package_versions`: the one list the run manifest, ``bench`` and ``doctor`` record).

Does not belong here: loading models or SAEs (``saecli.models``), deciding what a preset needs
(``saecli.models`` for a run, ``saecli.doctor.preset`` for the checks). Imports only
``saecli.errors``; ``huggingface_hub``, TransformerLens and PyYAML only inside functions, and
SAELens not at all (importing it takes 10 s or more; its release directory is a YAML file).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from saecli.errors import SaecliError

HUB_MODELS = {"gpt2-small": "gpt2", "gpt2": "gpt2", "gemma-2-2b": "google/gemma-2-2b"}
"""TransformerLens name → Hugging Face repo of the models our presets use. TransformerLens's own
lookup (``get_official_model_name``) takes 5-10 s to import, so it is only the fallback for other
names; a test checks this table against it."""
GATED_PREFIXES = ("google/gemma", "meta-llama/", "mistralai/")
"""Repos that need an accepted licence and a logged-in client before ``hf download`` works."""
PACKAGES = ("saecli", "torch", "transformer_lens", "sae_lens", "numpy", "polars", "transformers", "huggingface_hub")
"""The packages whose versions a run manifest, a bench sweep and ``doctor`` record (import names)."""
OFFLINE_VALUES = ("1", "true", "yes", "on")


def package_versions() -> dict[str, str | None]:
    """Python's version, then each of ``PACKAGES`` from package metadata (None when not installed):
    importing TransformerLens or SAELens to ask would take seconds."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = None
    return out


# -- where things live on the hub -----------------------------------------------------------------


def model_repo(name: str) -> tuple[str, str]:
    """The Hugging Face repo of a TransformerLens model name, and where the answer came from."""
    if name in HUB_MODELS:
        return HUB_MODELS[name], "saecli's table"
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name), "TransformerLens"
    except ValueError as exc:
        raise SaecliError(f"unknown TransformerLens model {name!r}: {exc}".splitlines()[0]) from None


@functools.cache
def sae_directory() -> dict[str, Any]:
    """SAELens's release directory, read from its YAML without importing SAELens: the same file
    ``get_pretrained_saes_directory`` reads (a test checks they agree). Read once per process."""
    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SaecliError("SAELens is not installed", hint="pip install 'sae-lens>=6.5'")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def sae_location(release: str, sae_id: str) -> tuple[str, str]:
    """The hub repo and the folder in it of SAE ``sae_id`` of SAELens release ``release``."""
    entry = sae_directory().get(release)
    if entry is None:
        raise SaecliError(f"unknown SAELens release {release!r}")
    paths = {s["id"]: str(s["path"]) for s in entry.get("saes", [])}
    if sae_id not in paths:
        raise SaecliError(f"SAE id {sae_id!r} is not in release {release}")
    return str(entry["repo_id"]), paths[sae_id]


def is_gated(repo: str) -> bool:
    """Whether ``hf download`` of this repo needs an accepted licence and a login first."""
    return repo.startswith(GATED_PREFIXES)


# -- the local cache ------------------------------------------------------------------------------


def cached_snapshot(repo_id: str, subpath: str | None = None) -> Path | None:
    """The local snapshot folder of ``repo_id`` if it (and ``subpath`` in it) is in the cache."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id, local_files_only=True, allow_patterns=[f"{subpath}/*"] if subpath else ["config.json"]
            )
        )
    except Exception:  # noqa: BLE001 - any hub-client failure here means "not cached"
        return None
    target = folder / subpath if subpath else folder / "config.json"
    return folder if target.exists() else None


def fetch_commands(wanted: Iterable[tuple[str, str | None]]) -> list[str]:
    """For (repo, folder in it, or None for the whole repo) pairs: one ``hf download`` per repo,
    with an ``--include`` per folder (the whole repo when any pair needs all of it), in the order
    given."""
    by_repo: dict[str, list[str | None]] = {}
    for repo, include in wanted:
        by_repo.setdefault(repo, []).append(include)
    out = []
    for repo, includes in by_repo.items():
        if None in includes:
            out.append(f"hf download {repo}")
        else:
            out.append(f"hf download {repo} " + " ".join(f"--include '{folder}/*'" for folder in includes))
    return out


# -- the network ----------------------------------------------------------------------------------


@dataclass
class HubStatus:
    """Whether a download could work now."""

    offline_env: bool
    """``HF_HUB_OFFLINE`` is set."""
    reachable: bool | None
    """The endpoint took a TCP connection; None when not tried (offline mode)."""
    endpoint: str
    cache: str


def hub_status(timeout: float = 2.0) -> HubStatus:
    """Offline mode set, or the hub endpoint reachable (a TCP connect of at most ``timeout`` s)?"""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in OFFLINE_VALUES or bool(getattr(constants, "HF_HUB_OFFLINE", False))
    endpoint = str(constants.ENDPOINT)
    reachable = None
    if not offline:
        parsed = urlparse(endpoint)
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
                reachable = True
        except OSError:
            reachable = False
    return HubStatus(offline_env=offline, reachable=reachable, endpoint=endpoint, cache=str(constants.HF_HUB_CACHE))


def is_offline(timeout: float = 3.0) -> bool:
    """True when nothing can be downloaded now: offline mode, or the hub does not answer."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in OFFLINE_VALUES:
        return True
    status = hub_status(timeout)
    return status.offline_env or not status.reachable
