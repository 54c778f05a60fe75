"""Golden values of the embedded preset (regenerate with scripts/update_golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import saecli

GOLDEN = Path(__file__).parent / "golden" / "tiny.json"


@pytest.fixture(scope="module")
def tiny64():
    return saecli.load_preset("tiny", device="cpu", dtype="float64")


@pytest.mark.slow
@pytest.mark.parametrize("sequential", [True, False])
def test_embedded_preset_matches_golden(tiny64, sequential):
    golden = json.loads(GOLDEN.read_text())["rows"]
    ids = [row["sample_id"] for row in golden]
    samples = [s for s in saecli.load_samples() if s.id in ids]
    rows = {r["sample_id"]: r for r in saecli.analyze(samples, tiny64, sequential=sequential, batch_size=4)}
    for expected in golden:
        got = rows[expected["sample_id"]]
        for column, value in expected.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, abs=1e-8), (expected["sample_id"], column)
            else:
                assert got[column] == value, (expected["sample_id"], column)


@pytest.mark.slow
def test_embedded_preset_is_realistically_sparse(tiny64):
    rows = list(saecli.analyze(saecli.load_samples(limit=40), tiny64))
    d_sae = tiny64.saes[tiny64.layers[0]].cfg.d_sae
    for layer in tiny64.layers:
        mean_l0 = sum(r[f"l{layer}_fact_l0_norm"] for r in rows) / len(rows)
        assert 1 <= mean_l0 < 0.05 * d_sae
