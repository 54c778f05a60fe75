"""``saecli.hub``: package versions, repo lookups, the local cache and the fetch commands, offline."""

from __future__ import annotations

import hashlib
import platform

import pytest

from saecli import hub
from saecli.errors import SaecliError


def test_package_versions_one_list():
    versions = hub.package_versions()
    assert list(versions) == ["python", *hub.PACKAGES]
    assert versions["python"] == platform.python_version() and versions["torch"] and versions["polars"]


def test_fetch_commands_one_per_repo():
    wanted = [("org/saes", "layer_1"), ("gpt2", None), ("org/saes", "layer_2"), ("gpt2", "x")]
    assert hub.fetch_commands(wanted) == ["hf download org/saes --include 'layer_1/*' --include 'layer_2/*'", "hf download gpt2"]
    assert hub.is_gated("google/gemma-2-2b") and not hub.is_gated("gpt2")


def test_repo_lookups_without_the_libraries():
    assert hub.model_repo("gpt2-small") == ("gpt2", "saecli's table")
    assert hub.sae_location("gpt2-small-res-jb", "blocks.6.hook_resid_pre") == (
        "jbloom/GPT2-Small-SAEs-Reformatted",
        "blocks.6.hook_resid_pre",
    )
    with pytest.raises(SaecliError, match="unknown SAELens release 'nope'"):
        hub.sae_location("nope", "x")
    with pytest.raises(SaecliError, match="SAE id 'nope' is not in release gpt2-small-res-jb"):
        hub.sae_location("gpt2-small-res-jb", "nope")


def test_cached_snapshot_and_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = hashlib.sha1(b"gpt2").hexdigest()
    repo = cache / "models--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "blocks.1").mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    assert hub.cached_snapshot("gpt2") == repo / "snapshots" / commit
    assert hub.cached_snapshot("gpt2", "blocks.2") is None and hub.cached_snapshot("other/repo") is None
    assert hub.is_offline()
    status = hub.hub_status()
    assert status.offline_env and status.reachable is None and status.cache == str(cache)
