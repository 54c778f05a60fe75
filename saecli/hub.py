"""The Hugging Face hub and the installed packages, as saecli sees them without loading a model.

Belongs here: which hub repo holds a model (``HUB_MODELS``, then TransformerLens's lookup) and an
SAE (SAELens's release directory, read from its YAML file), whether a model repo (or a folder of it)
is in the local cache (:func:`cached_snapshot`), where the cache is (:func:`hub_cache`) and a
dataset split in it (:func:`cached_dataset`: the repo folder, its revision from ``refs/main``, its
configs and splits from the dataset card's ``configs:`` or the Hub's Parquet layout, and the
split's files), whether the hub can be reached (:func:`hub_status`, :func:`is_offline`), the
``hf download`` command that fetches what is missing (:func:`download_command`, used by
:func:`fetch_commands` and :func:`dataset_fetch_command`), and the versions of the packages a run
depends on (:func:`package_versions`: the one list the run manifest, ``bench`` and ``doctor``
record).

A model is looked up through ``huggingface_hub`` (``snapshot_download(local_files_only=True)``),
the client that will load it, so the check and the load agree; a dataset saecli reads itself, so
its lookup walks the cache folder (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read at each call), matching repo ids without regard to case as the
Hub does.

Does not belong here: loading models or SAEs (``saecli.models``), deciding what a preset needs
(``saecli.models`` for a run, ``saecli.doctor.preset`` for the checks), the ``hf:`` syntax, the
built-in dataset mappings and reading rows (``saecli.hfdata``). Imports only ``saecli.errors``;
``huggingface_hub``, TransformerLens and PyYAML only inside functions, and SAELens not at all
(importing it takes 10 s or more; its release directory is a YAML file).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
import platform
import re
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
            snapshot_download(repo_id, local_files_only=True, allow_patterns=[f"{subpath}/*"] if subpath else ["config.json"])
        )
    except Exception:  # noqa: BLE001 - any hub-client failure here means "not cached"
        return None
    target = folder / subpath if subpath else folder / "config.json"
    return folder if target.exists() else None


def download_command(repo: str, includes: Iterable[str] = (), *, repo_type: str | None = None) -> str:
    """The ``hf download`` that puts ``repo`` (or its files matching ``includes``) in the cache;
    ``repo_type`` ``dataset`` for a dataset."""
    kind = f" --repo-type {repo_type}" if repo_type else ""
    return f"hf download{kind} {repo}" + "".join(f" --include '{pattern}'" for pattern in includes)


def fetch_commands(wanted: Iterable[tuple[str, str | None]]) -> list[str]:
    """For (model or SAE repo, folder in it, or None for the whole repo) pairs: one ``hf download``
    per repo, with an ``--include`` per folder (the whole repo when any pair needs all of it), in
    the order given."""
    by_repo: dict[str, list[str | None]] = {}
    for repo, include in wanted:
        by_repo.setdefault(repo, []).append(include)
    return [
        download_command(repo, [] if None in includes else [f"{folder}/*" for folder in includes])
        for repo, includes in by_repo.items()
    ]


# -- datasets in the local cache ------------------------------------------------------------------

DATASET_ALIASES = {"truthful_qa": "truthfulqa/truthful_qa"}
"""Old dataset names the Hub redirects, → the repo they name now (the cache may hold either)."""
_SHARD = re.compile(r"(?P<split>[A-Za-z0-9_.]+?)(-\d{5}-of-\d{5})?(-[0-9a-f]+)?\.parquet")


def hub_cache() -> Path:
    """The hub cache, as ``huggingface_hub`` finds it (read from the environment at each call)."""
    default_home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    home = os.path.expandvars(os.path.expanduser(os.getenv("HF_HOME", default_home)))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HUB_CACHE", legacy))))


def dataset_fetch_command(repo: str, includes: Iterable[str] = ()) -> str:
    """The ``hf download --repo-type dataset`` that puts ``repo`` (or the files matching
    ``includes``) in the cache."""
    return download_command(repo, includes, repo_type="dataset")


@dataclass(frozen=True)
class CachedDataset:
    """A dataset split found in the cache."""

    repo: str
    """The repo id as the cache folder spells it (``truthfulqa/truthful_qa``)."""
    revision: str
    snapshot: Path
    config: str
    split: str
    files: tuple[str, ...]
    """The split's Parquet files, relative to the snapshot, in shard order."""

    @property
    def canonical(self) -> str:
        """The repo id the Hub answers to now (an old name resolved through :data:`DATASET_ALIASES`)."""
        return DATASET_ALIASES.get(self.repo.lower(), self.repo)


def _dataset_folder(cache: Path, name: str) -> tuple[str, Path] | None:
    """The cache folder of ``name`` (or of the names the Hub redirects to and from it), matched
    without regard to case as the Hub matches repo ids."""
    canonical = DATASET_ALIASES.get(name.lower(), name)
    wanted = [canonical] + [old for old, new in DATASET_ALIASES.items() if new.lower() == canonical.lower()] + [name]
    try:
        folders = {p.name.lower(): p for p in cache.iterdir() if p.name.startswith("datasets--") and p.is_dir()}
    except OSError:
        return None
    for repo in wanted:
        folder = folders.get(f"datasets--{repo.replace('/', '--')}".lower())
        if folder is not None:
            return folder.name[len("datasets--") :].replace("--", "/"), folder
    return None


def _snapshot(folder: Path, repo: str) -> tuple[str, Path]:
    ref = folder / "refs" / "main"
    try:
        revision = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        snapshots = sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir()) if (folder / "snapshots").is_dir() else []
    except OSError as exc:
        raise SaecliError(f"cannot read the cache folder {folder}: {exc.strerror or exc}") from None
    if revision and (folder / "snapshots" / revision).is_dir():
        return revision, folder / "snapshots" / revision
    if len(snapshots) == 1:
        return snapshots[0].name, snapshots[0]
    raise SaecliError(
        f"the cache folder {folder} has {'no' if not snapshots else 'several'} snapshot(s) and no refs/main naming one",
        hint=f"fetch the dataset again: {dataset_fetch_command(repo)}",
    )


def _files(snapshot: Path) -> list[str]:
    """Every file of the snapshot, relative and with ``/`` (walked, never globbed)."""
    out = []
    for root, dirs, names in os.walk(snapshot, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(snapshot)
        out += [(rel / n).as_posix() for n in sorted(names)]
    return out


def _card_configs(snapshot: Path) -> dict[str, dict[str, list[str]]] | None:
    """``configs:`` of the dataset card's YAML header: config → split → path patterns; None when
    the card is not there or declares none."""
    card = snapshot / "README.md"
    try:
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return None
    import yaml

    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    entries = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(entries, list):
        return None
    configs: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        splits: dict[str, list[str]] = {}
        files = entry.get("data_files")
        if isinstance(files, (str, list)) and all(isinstance(f, str) for f in ([files] if isinstance(files, str) else files)):
            splits["train"] = [files] if isinstance(files, str) else list(files)
        elif isinstance(files, list):
            for item in files:
                if isinstance(item, dict) and "split" in item and "path" in item:
                    paths = item["path"]
                    splits[str(item["split"])] = [paths] if isinstance(paths, str) else [str(p) for p in paths]
        configs[str(entry.get("config_name", "default"))] = splits
    return configs or None


def _layout_configs(files: list[str]) -> dict[str, dict[str, list[str]]]:
    """Configs and splits from the Hub's Parquet layout: ``CONFIG/SPLIT-00000-of-00001.parquet``
    (``data/`` is the config ``default``) or ``CONFIG/SPLIT/0000.parquet``."""
    configs: dict[str, dict[str, list[str]]] = {}
    for path in files:
        parts = path.split("/")
        if not path.endswith(".parquet") or len(parts) not in (2, 3):
            continue
        config = "default" if parts[0] == "data" else parts[0]
        if len(parts) == 3:
            split = parts[1]
        else:
            shard = _SHARD.fullmatch(parts[1])
            if shard is None:
                continue
            split = shard.group("split")
        configs.setdefault(config, {}).setdefault(split, []).append(path)
    return configs


def _matches(path: str, pattern: str) -> bool:
    """A card's data-file pattern against a snapshot path, segment by segment (``*`` stays within
    a folder, as in the ``datasets`` library)."""
    parts, wanted = path.split("/"), pattern.strip("/").split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def _choose(kind: str, given: str | None, available: list[str], text: str, example: str) -> str:
    if given is not None:
        if given not in available:
            raise SaecliError(f"{text}: unknown {kind} {given!r}", hint=f"{kind}s: {', '.join(available) or 'none'}")
        return given
    if len(available) == 1:
        return available[0]
    raise SaecliError(f"{text}: name a {kind}, one of {', '.join(available)}", hint=f"e.g. {example}")


def cached_dataset(text: str, name: str, config: str | None = None, split: str | None = None) -> CachedDataset:
    """Split ``split`` of config ``config`` of dataset ``name`` (either None: the only one there is),
    in the hub cache, without a download; anything missing is one error, naming ``text`` (the
    dataset as the user wrote it, e.g. ``hf:NAME:CONFIG``) and the command that fetches it."""
    cache = hub_cache()
    found = _dataset_folder(cache, name)
    repo = DATASET_ALIASES.get(name.lower(), name)
    if found is None:
        raise SaecliError(
            f"dataset {name} is not in the Hugging Face cache ({cache})",
            hint=f"fetch it with `{dataset_fetch_command(repo)}`, or point HF_HUB_CACHE (or HF_HOME) at the cache that holds it",
        )
    repo, folder = found
    revision, snapshot = _snapshot(folder, repo)
    files = _files(snapshot)
    card = _card_configs(snapshot)
    configs = card if card is not None else _layout_configs(files)
    if not configs:
        raise SaecliError(
            f"{text}: no Parquet data files in the cached snapshot {snapshot}", hint=f"fetch them: {dataset_fetch_command(repo)}"
        )
    if card is None and config is not None and config not in configs:
        # No dataset card to tell an unknown config from one not downloaded: say both.
        raise SaecliError(
            f"{text}: config {config!r} is not in the cache (cached: {', '.join(sorted(configs))})",
            hint=f"if {repo} has it, fetch it with `{dataset_fetch_command(repo, [config + '/*'])}`",
        )
    chosen_config = _choose("config", config, sorted(configs), text, f"{text}:{sorted(configs)[0]}")
    splits = configs[chosen_config]
    with_config = text if config is not None else f"{text}:{chosen_config}"
    chosen_split = _choose("split", split, sorted(splits), text, f"{with_config}:{sorted(splits)[0]}")
    patterns = splits[chosen_split]
    files_chosen = sorted({f for f in files for p in patterns if _matches(f, p)}) if card is not None else sorted(patterns)
    if not files_chosen:
        raise SaecliError(
            f"{text}: the files of config {chosen_config!r}, split {chosen_split!r} are not in the cache ({snapshot})",
            hint=f"fetch them with `{dataset_fetch_command(repo, patterns)}`",
        )
    other = [f for f in files_chosen if not f.endswith(".parquet")]
    if other:
        raise SaecliError(f"{text}: {other[0]} is not a Parquet file; saecli reads the Parquet files of a dataset",
                          hint="convert the split to Parquet, or export it as CSV and pass the file")  # fmt: skip
    return CachedDataset(repo, revision, snapshot, chosen_config, chosen_split, tuple(files_chosen))


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
