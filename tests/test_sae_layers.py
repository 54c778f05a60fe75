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
