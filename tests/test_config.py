"""Presets, the precedence defaults < preset file < command-line flags, and the checks of every
option and preset value (and of a preset's files) before anything is loaded."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest

from saecli.config import (
    Preset,
    RunConfig,
    SAESpec,
    assets_dir,
    available_presets,
    find_preset,
    load_preset_file,
    resolve_run_config,
)
from saecli.errors import SaecliError
from saecli.models import check_preset_files

PRESET = """
name = "mine"
[model]
name = "saecli-tiny"
path = "builtin:tiny/model"
[[sae]]
layer = 0
path = "a"
[[sae]]
layer = 1
path = "b"
[[sae]]
layer = 2
path = "c"
[defaults]
batch_size = 4
seed = 7
"""


def test_named_presets_exist():
    assert {"tiny", "gemma-2-2b", "gpt2-small"} <= set(available_presets())
    gemma = find_preset("gemma-2-2b")
    assert gemma.layers == [5, 12, 20]
    assert [s.id for s in gemma.saes] == [f"layer_{n}/width_16k/canonical" for n in (5, 12, 20)]
    assert all(s.release == "gemma-scope-2b-pt-res-canonical" for s in gemma.saes)


def test_precedence(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(PRESET)
    preset = load_preset_file(path)
    assert RunConfig().batch_size == 16 and RunConfig().seed == 0
    from_file = resolve_run_config(preset)
    assert (from_file.batch_size, from_file.seed, from_file.noise_std) == (4, 7, 0.1)
    flags = resolve_run_config(preset, batch_size=32, seed=None, noise_std=0.5)
    assert (flags.batch_size, flags.seed, flags.noise_std) == (32, 7, 0.5)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("[defaults]", "[defaults]\nbatchsize = 3"), "unknown key 'batchsize' in \\[defaults\\]"),
        (lambda s: s.replace('name = "mine"', 'name = "mine"\ncolour = 1'), "unknown key 'colour'"),
        (lambda s: s.replace("layer = 2", 'layer = "two"'), "must be int"),
        (lambda s: s.replace('path = "c"', 'path = "c"\nrelease = "r"'), "exactly one of"),
        (lambda s: s.replace("batch_size = 4", "batch_size = 0"), "batch_size must be a whole number"),
        (lambda s: s.replace("[model]", '[model]\ndtype = "float8"'), "model.dtype must be one of"),
        (lambda s: s + "[[sae]]\nlayer = 3\npath = 'd'\n", "exactly 3 SAEs"),
    ],
)
def test_bad_preset_files(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(PRESET))
    with pytest.raises(SaecliError, match=message) as info:
        resolve_run_config(load_preset_file(path))
    if "batch_size" not in message:
        assert str(path) in info.value.message


def test_unknown_preset_lists_available():
    with pytest.raises(SaecliError, match="unknown preset 'gemma-9'") as info:
        find_preset("gemma-9")
    assert "tiny" in info.value.hint


@pytest.mark.parametrize("field, value", [("batch_size", -1), ("device", "tpu"), ("dtype", "int8"), ("noise_std", -0.1)])
def test_run_config_validation_names_field(field, value):
    with pytest.raises(SaecliError, match=field):
        RunConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("noise_std", math.nan, "noise_std must be a finite number >= 0, got nan"),
        ("noise_std", math.inf, "noise_std must be a finite number >= 0, got inf"),
        ("noise_std", 10**400, "noise_std must be a finite number >= 0"),
        ("noise_std", "0.1", "noise_std must be a finite number"),
        ("noise_std", True, "noise_std must be a finite number"),
        ("seed", 2**63, "seed must be a whole number from -9223372036854775808 to 9223372036854775807, got 9223372036854775808"),
        ("seed", 1.5, "seed must be a whole number"),
        pytest.param(
            "seed",
            10**5000,
            "seed must be a whole number from -9223372036854775808 to 9223372036854775807, got a whole "
            "number of about 5001 digits",
            id="seed-5001-digits",
        ),
        ("seed", False, "seed must be a whole number"),
        ("limit", 0, "limit must be a whole number >= 1, got 0"),
        ("limit", 2.0, "limit must be a whole number >= 1"),
        ("batch_size", "many", "batch_size must be a whole number >= 1 or 'auto', got 'many'"),
        ("batch_size", True, "batch_size must be a whole number >= 1"),
        ("domains", (), "domains must name at least one domain"),
        ("domains", ("entity", " "), "domains must name at least one domain"),
        ("domains", ("entity", 3), "domains must be a tuple of domain names"),
        ("data", 5, "data must be a string, got int 5"),
        ("device", None, "device must be one of auto, cpu, cuda, mps, got None"),
        ("mode", "fast", "mode must be one of batched, sequential"),
        ("preset", "", "preset must be a non-empty string"),
    ],
)
def test_run_config_refuses_each_bad_value(field, value, message):
    with pytest.raises(SaecliError) as info:
        RunConfig(**{field: value})
    assert message in info.value.message


def test_domains_are_split_and_an_empty_list_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(PRESET)
    preset = load_preset_file(path)
    assert resolve_run_config(preset, domains=" entity, logical ,").domains == ("entity", "logical")
    assert RunConfig(domains=["entity"]).domains == ("entity",)  # as a manifest's JSON stores it
    for text in (",", " , ,", ""):
        with pytest.raises(SaecliError, match="domains must name at least one domain"):
            resolve_run_config(preset, domains=text)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("seed = 7", "seed = nan"), "[defaults] seed must be a whole number"),
        (lambda s: s.replace("seed = 7", "noise_std = nan"), "[defaults] noise_std must be a finite number >= 0, got nan"),
        (lambda s: s.replace("seed = 7", "noise_std = -inf"), "[defaults] noise_std must be a finite number >= 0, got -inf"),
        (lambda s: s.replace("seed = 7", 'noise_std = "x"'), "[defaults] noise_std must be a finite number >= 0, got 'x'"),
        (lambda s: s.replace("seed = 7", f"seed = {2**70}"), "[defaults] seed must be a whole number from"),
        (lambda s: s.replace("batch_size = 4", "batch_size = 0"), "[defaults] batch_size must be a whole number >= 1"),
        (lambda s: s.replace("seed = 7", "limit = 0"), "[defaults] limit must be a whole number >= 1"),
        (lambda s: s.replace("seed = 7", 'device = "tpu"'), "[defaults] device must be one of auto, cpu, cuda, mps"),
        (lambda s: s.replace("seed = 7", "data = 5"), "[defaults] data must be a string"),
        (
            lambda s: s.replace('name = "mine"', "defaults = 3").replace("[defaults]\nbatch_size = 4\nseed = 7", ""),
            "'defaults' must be table",
        ),
        (lambda s: s.replace("[model]", "[model]\ndtype = 5"), "'model.dtype' must be str, got int 5"),
        (lambda s: s.replace("[model]", '[model]\nconfig = "x"'), "'model.config' must be table, got str 'x'"),
        (lambda s: s.replace("[model]", "[model]\nfrom_pretrained_kwargs = 3"), "'model.from_pretrained_kwargs' must be table"),
        (lambda s: s.replace("[model]", '[model]\nrandom_init = "yes"'), "'model.random_init' must be bool, got str 'yes'"),
        (lambda s: s.replace("[model]", "[model]\nseed = 1.5"), "'model.seed' must be int, got float 1.5"),
        (lambda s: s.replace("[model]", f"[model]\nseed = {2**64}"), "model.seed must be a whole number from"),
        (lambda s: s.replace("[model]", "[model]\ntokenizer = []"), "'model.tokenizer' must be str, got array []"),
        (lambda s: s.replace('path = "c"', "path = 3"), "'sae.path' (the SAE for layer 2) must be str, got int 3"),
        (
            lambda s: s.replace('path = "c"', 'random = { hook = "h", d_sae = "x" }'),
            "sae.random (layer 2).d_sae must be a whole number >= 1",
        ),
        (
            lambda s: s.replace('path = "c"', "random = { hook = 1, d_sae = 8 }"),
            "sae.random (layer 2).hook must be a non-empty string",
        ),
        (
            lambda s: s.replace('path = "c"', 'random = { hook = "h", d_sae = 8, target_l0 = nan }'),
            "target_l0 must be a finite number > 0",
        ),
        (
            lambda s: s.replace('path = "c"', 'random = { hook = "h", d_sae = 8, seed = 0.5 }'),
            "sae.random (layer 2).seed must be a whole",
        ),
        (
            lambda s: s.replace('path = "c"', 'random = { hook = "h", d_sae = 8, size = 1 }'),
            "unknown key 'size' in sae.random (layer 2)",
        ),
        (lambda s: s.replace('path = "c"', "random = 5"), "'sae.random' (the SAE for layer 2) must be table"),
        (lambda s: 'sae = 5\n[model]\nname = "x"\n', "'sae' must be array, got int 5"),
        (lambda s: "model = 3\n", "'model' must be table, got int 3"),
        (lambda s: s.replace('[model]\nname = "saecli-tiny"\npath = "builtin:tiny/model"\n', ""), "no [model] table"),
        (lambda s: s.replace('name = "mine"', "synthetic = 1"), "'synthetic' must be bool, got int 1"),
    ],
)
def test_mistyped_preset_values_name_file_and_key(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(PRESET))
    with pytest.raises(SaecliError) as info:
        load_preset_file(path)
    assert message in info.value.message
    assert info.value.message.startswith(f"{path}") or f"{path}:" in info.value.message


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(bytes(range(256))), "is not a UTF-8 text file (byte 128 is not UTF-8)"),
        (lambda p: p.mkdir(), "is a folder, not a TOML file"),
        (lambda p: p.write_text("a = " + "[" * 100_000), "invalid TOML"),
        (lambda p: p.write_text("seed = " + "7" * 5000), "invalid TOML: Exceeds the limit"),
    ],
)
def test_unreadable_preset_files(tmp_path, make, message):
    path = tmp_path / "c.toml"
    make(path)
    with pytest.raises(SaecliError) as info:
        find_preset(str(path))
    assert message in info.value.message and str(path) in info.value.message


def test_a_folder_is_not_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert find_preset("tiny").name == "tiny"  # a folder named like a preset does not hide it
    (tmp_path / "mine").mkdir()
    with pytest.raises(SaecliError, match="config path mine is a folder, not a TOML file"):
        find_preset("mine")


# -- the preset's files, checked before any model is built (saecli.models.check_preset_files) --------


def _sae_copy(tmp_path, damage=None) -> Preset:
    """The embedded preset with its layer-3 SAE copied to ``tmp_path`` and damaged there."""
    folder = tmp_path / "layer_3"
    shutil.copytree(assets_dir() / "tiny" / "saes" / "layer_3", folder)
    if damage is not None:
        damage(folder)
    tiny = find_preset("tiny")
    return dataclasses.replace(tiny, saes=(*tiny.saes[:2], SAESpec(layer=3, path=str(folder))))


def _header(folder, header: bytes, data: bytes = b"") -> None:
    (folder / "sae_weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "sae_weights.safetensors").unlink(), "sae_weights.safetensors is missing"),
        (lambda f: (f / "cfg.json").unlink(), "cfg.json is missing"),
        (lambda f: (f / "cfg.json").write_text("[1]"), "cfg.json must hold a JSON object, not list"),
        (lambda f: (f / "cfg.json").write_text('{"d_in": '), "cfg.json is not valid JSON (line 1, column 10"),
        (lambda f: (f / "cfg.json").write_bytes(b"\xff"), "cfg.json is not UTF-8 text"),
        (lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x01\x02"), "is not a safetensors file (only 2 bytes)"),
        (lambda f: _header(f, b"{}" + b" " * 6, b"x"), "is longer than its header says"),
        (lambda f: _header(f, b"not json"), "its header is not JSON"),
        (lambda f: _header(f, b"[]"), "its header is not a JSON object"),
        (
            lambda f: _header(f, json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), b"1234"),
            "is truncated (its header needs",
        ),
        (
            lambda f: _header(f, json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"12345678"),
            "tensor 'w' of shape [3] does not match its 8 bytes",
        ),
        (
            lambda f: _header(f, json.dumps({"w": {"dtype": "F32", "shape": [2]}}).encode()),
            "tensor 'w' has no valid data_offsets",
        ),
        (lambda f: (f / "sae_weights.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}"), "its header claims"),
    ],
)
def test_check_preset_files_names_the_bad_file(tmp_path, damage, message):
    preset = _sae_copy(tmp_path, damage)
    with pytest.raises(SaecliError) as info:
        check_preset_files(preset)
    assert message in info.value.message
    assert info.value.message.startswith(f"the SAE for layer 3: {tmp_path / 'layer_3'}")


def test_check_preset_files_accepts_whole_files(tmp_path):
    check_preset_files(find_preset("tiny"))
    check_preset_files(_sae_copy(tmp_path))
    for name in ("gemma-2-2b", "gemma-2-2b-shape"):  # hub presets: nothing local to check; random_init: its tokenizer
        check_preset_files(find_preset(name))
