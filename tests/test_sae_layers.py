"""Which layers a run reads: the layer a preset declares for an SAE is the block of the hook it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli.cli import app
from saecli.config import find_preset
from saecli.errors import SaecliError
from saecli.models import check_preset_files

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def _preset(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (CONFIGS / f"{name}.toml").read_text()
    assert old in text
    path = tmp_path / f"{name}-edited.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_random_sae_of_another_block_is_refused_when_the_preset_is_read(tmp_path):
    path = _preset(tmp_path, "gpt2-small-shape", "layer = 6\n", "layer = 7\n")
    with pytest.raises(SaecliError) as info:
        find_preset(str(path))
    assert info.value.message.startswith(str(path))
    assert "the SAE for layer 7 reads 'blocks.6.hook_resid_pre', a hook of block 6" in info.value.message
    assert "declare it as layer 6" in info.value.hint


def test_a_local_sae_of_another_block_is_refused_before_anything_is_written(tmp_path):
    """tiny's first SAE reads blocks.0 (its cfg.json says so): declared as layer 1, its columns would be l1_*."""
    path = _preset(tmp_path, "tiny", "layer = 0\n", "layer = 1\n")
    with pytest.raises(SaecliError, match="cfg.json: the SAE for layer 1 reads 'blocks.0.hook_resid_post', a hook of block 0"):
        check_preset_files(find_preset(str(path)))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--config", str(path), "--limit", "2", "--out", str(out)])
    assert result.exit_code == 2 and "the SAE for layer 1 reads 'blocks.0.hook_resid_post'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_a_hub_sae_of_another_block_is_refused_as_it_loads(tmp_path, monkeypatch):
    """A hub SAE's hook is in its own config only: checked when it loads, before the model does."""
    import saecli.models

    path = _preset(tmp_path, "tiny", "layer = 0\n", "layer = 1\n")
    monkeypatch.setattr(saecli.models, "check_preset_files", lambda preset: None)  # as for a hub SAE: nothing local
    monkeypatch.setattr(saecli.models, "_load_local_model", lambda *a: pytest.fail("the model loaded first"))
    with pytest.raises(SaecliError, match="the SAE for layer 1 reads 'blocks.0.hook_resid_post'"):
        saecli.models.load_preset(str(path), device="cpu")


# -- --layers: a preset's [sae_template] makes the SAE of any layer in its range --------------------

SMALL = """
name = "small"
[model]
name = "small-random"
random_init = true
tokenizer = "builtin:tiny/model/tokenizer.json"
config = { n_layers = 4, d_model = 16, n_heads = 2, d_head = 8, d_mlp = 32, d_vocab = 4096, n_ctx = 64, act_fn = "gelu", normalization_type = "LN" }
[[sae]]
layer = 0
random = { hook = "blocks.0.hook_resid_post", d_sae = 32 }
[[sae]]
layer = 1
random = { hook = "blocks.1.hook_resid_post", d_sae = 32 }
[[sae]]
layer = 2
random = { hook = "blocks.2.hook_resid_post", d_sae = 32 }
[sae_template]
random = { hook = "blocks.{layer}.hook_resid_post", d_sae = 32 }
layer_range = [0, 3]
"""


@pytest.mark.parametrize(
    ("preset", "layers", "release", "ids"),
    [
        ("gemma-2-2b", "3, 10,18", "gemma-scope-2b-pt-res-canonical", [f"layer_{n}/width_16k/canonical" for n in (3, 10, 18)]),
        ("gpt2-small", "0,4,11", "gpt2-small-res-jb", [f"blocks.{n}.hook_resid_pre" for n in (0, 4, 11)]),
        ("gpt2-small-shape", "0,4,11", None, [None] * 3),
    ],
)
def test_layers_replace_the_presets_saes_with_its_templates(preset, layers, release, ids):
    from saecli.cli.options import RunFlags, resolve_run

    chosen, config = resolve_run(RunFlags(preset=preset, layers=layers))
    wanted = [int(n) for n in layers.split(",")]
    assert config.layers == tuple(wanted) and chosen.layers == wanted
    assert [s.release for s in chosen.saes] == [release] * 3 and [s.id for s in chosen.saes] == ids
    if release is None:
        assert [s.random["hook"] for s in chosen.saes] == [f"blocks.{n}.hook_resid_pre" for n in wanted]
        assert [s.random["seed"] for s in chosen.saes] == wanted


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "0,2,3"], "preset tiny cannot read other layers (--layers): it names each of its SAEs"),
        (
            ["--preset", "gemma-2-2b", "--layers", "5,12,26"],
            "--layers: preset gemma-2-2b has SAEs for layers 0 to 25, not for 26",
        ),
        (
            ["--preset", "gpt2-small", "--layers", "2,6"],
            "--layers must be three different layers from early to late, e.g. 5,12,20, got '2,6'",
        ),
        (["--preset", "gpt2-small", "--layers", "6,2,10"], "got '6,2,10'"),
        (["--preset", "gpt2-small", "--layers", "2,2,10"], "got '2,2,10'"),
        (["--preset", "gpt2-small", "--layers", "2,six,10"], "got '2,six,10'"),
        (["--preset", "gpt2-small", "--layers", "-1,2,10"], "got '-1,2,10'"),
    ],
)
def test_layers_are_checked_before_anything_loads_or_is_written(tmp_path, args, message):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2 and message in " ".join(result.stderr.split()), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("name", ["gemma-2-2b", "gpt2-small", "gemma-2-2b-shape", "gpt2-small-shape"])
def test_the_presets_templates_give_their_own_saes_and_saelens_has_every_layer(name):
    from saecli.hub import sae_location

    preset = find_preset(name)
    assert preset.with_layers(tuple(preset.layers)).saes == preset.saes
    first, last = preset.sae_template.layer_range
    assert last + 1 == (26 if "gemma" in name else 12)  # every block of the model
    for spec in (preset.sae_template.spec(layer) for layer in range(first, last + 1)):
        assert spec.random is not None or sae_location(spec.release, spec.id)  # else: "not in release"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("layer_range = [0, 3]", "layer_range = [3, 0]"), "'sae_template.layer_range' must be [first, last]"),
        (("layer_range = [0, 3]", ""), "[sae_template] needs 'layer_range'"),
        (("blocks.{layer}.hook_resid_post", "blocks.1.hook_resid_post"), "'sae_template.random.hook' must hold {layer}"),
        (("layer_range = [0, 3]", 'layer_range = [0, 3]\npath = "x"'), "unknown key 'path' in [sae_template]"),
        (
            ("layer_range = [0, 3]", 'layer_range = [0, 3]\nrelease = "r"\nid = "{layer}"'),
            "[sae_template]: the SAE for layer 0 needs exactly one",
        ),
        (
            ('hook_resid_post", d_sae = 32 }\nlayer_range', 'hook_resid_post", d_sae = 0 }\nlayer_range'),
            "[sae_template]: sae.random (layer 0).d_sae",
        ),
    ],
)
def test_a_bad_template_is_refused_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "small.toml"
    assert edit[0] in SMALL
    path.write_text(SMALL.replace(*edit))
    with pytest.raises(SaecliError) as info:
        find_preset(str(path))
    assert info.value.message.startswith(str(path)) and message in info.value.message, info.value.message


@pytest.mark.slow
def test_a_run_reads_the_layers_it_is_given_and_resume_keeps_them(tmp_path):
    import json

    import saecli

    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["run", "--config", str(path), "--layers", "1,2,3", "--limit", "2", "--no-baselines", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["layers"] == manifest["config"]["layers"] == [1, 2, 3] and list(manifest["saes"]) == ["1", "2", "3"]
    assert manifest["hooks"] == [f"blocks.{n}.hook_resid_post" for n in (1, 2, 3)]
    result = runner.invoke(app, ["run", "--resume", str(out), "--layers", "0,1,2"])
    assert result.exit_code == 2 and "layers was [1, 2, 3] and is now [0, 1, 2]" in result.output
    loaded = saecli.load_preset(str(path), device="cpu", layers="1,2,3")
    assert loaded.layers == [1, 2, 3] and sorted(loaded.hooks.values()) == [f"blocks.{n}.hook_resid_post" for n in (1, 2, 3)]
    with pytest.raises(SaecliError, match=r"the configuration reads layers \[0, 1, 2\], the loaded preset \[1, 2, 3\]"):
        saecli.analyze(saecli.load_samples(limit=1), loaded, layers=(0, 1, 2))
