"""Presets and the precedence defaults < preset file < command-line flags."""

from __future__ import annotations

import pytest

from saecli.config import RunConfig, available_presets, find_preset, load_preset_file, resolve_run_config
from saecli.errors import SaecliError

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
