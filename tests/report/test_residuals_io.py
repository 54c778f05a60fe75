"""saecli.residuals: residuals.safetensors: the layout the engine writes and the report reads, read literally."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from saecli.errors import SaecliError
from saecli.io import RESIDUALS_FILE
from saecli.residuals import Residuals, read_residuals, write_residuals


def small(ids=("a", "b", "c"), layers=(5, 12), d_model=4, d_sae=10, seed=0):
    rng = np.random.default_rng(seed)
    n = len(ids)
    dense, features = {}, {}
    for layer in layers:
        for kind in ("fact", "hall"):
            dense[f"l{layer}_{kind}"] = rng.normal(size=(n, d_model)).astype(np.float32)
            m = rng.random((n, d_sae)) * (rng.random((n, d_sae)) < 0.3)  # f > 0 on ~30% of entries
            features[f"l{layer}_{kind}"] = sp.csr_matrix(m.astype(np.float32))
    return Residuals(
        layers=list(layers), sample_ids=list(ids), dense=dense, features=features, d_sae={layer: d_sae for layer in layers}
    )


def same(a: Residuals, b: Residuals) -> bool:
    return (
        a.layers == b.layers and a.sample_ids == b.sample_ids and a.d_sae == b.d_sae
        and set(a.dense) == set(b.dense) and set(a.features) == set(b.features)
        and all(np.array_equal(a.dense[k], b.dense[k]) for k in a.dense)
        and all((a.features[k] != b.features[k]).nnz == 0 and a.features[k].shape == b.features[k].shape for k in a.features)
    )  # fmt: skip


def test_round_trip_at_a_literal_path(tmp_path):
    res = small(ids=("s-1", "ü ñ", "x[1]"))
    folder = tmp_path / "run [1]* x"
    decoy = tmp_path / "run 1* x"  # what the pattern "run [1]* x" would match
    decoy.mkdir()
    write_residuals(decoy / RESIDUALS_FILE, small(ids=("other",)))
    folder.mkdir()
    path = write_residuals(folder / RESIDUALS_FILE, res)
    assert path == folder / RESIDUALS_FILE
    back = read_residuals(folder / RESIDUALS_FILE)
    assert same(back, res)
    assert back.dense["l5_fact"].dtype == np.float32 and back.features["l12_hall"].dtype == np.float32
    assert sorted(p.name for p in folder.iterdir()) == [RESIDUALS_FILE]  # no temporary left


def test_the_file_layout_is_the_contract(tmp_path):
    from safetensors.numpy import load

    res = small()
    write_residuals(tmp_path / RESIDUALS_FILE, res)
    data = (tmp_path / RESIDUALS_FILE).read_bytes()
    tensors = load(data)
    csr = res.features["l5_hall"]
    assert tensors["dense.l5_fact"].dtype == np.float32 and tensors["dense.l5_fact"].shape == (3, 4)
    assert tensors["features.l5_hall.indptr"].dtype == np.int64 and np.array_equal(tensors["features.l5_hall.indptr"], csr.indptr)
    assert tensors["features.l5_hall.indices"].dtype == np.int32 and np.array_equal(
        tensors["features.l5_hall.indices"], csr.indices
    )
    assert tensors["features.l5_hall.data"].dtype == np.float32 and np.all(tensors["features.l5_hall.data"] > 0)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = header["__metadata__"]
    assert meta["schema"] == "1" and json.loads(meta["sample_ids"]) == ["a", "b", "c"] and json.loads(meta["layers"]) == [5, 12]
    assert json.loads(meta["d_sae"]) == {"5": 10, "12": 10}


def test_zero_activations_are_not_stored(tmp_path):
    res = small()
    m = res.features["l5_fact"].tolil()
    m[0, 0] = 0.0
    res.features["l5_fact"] = sp.csr_matrix(m)
    res.features["l5_fact"].data[:1] = 0.0  # an explicit zero in the structure
    write_residuals(tmp_path / "r.safetensors", res)
    back = read_residuals(tmp_path / "r.safetensors").features["l5_fact"]
    assert np.all(back.data > 0) and np.array_equal(back.toarray(), res.features["l5_fact"].toarray())


def test_select_reorders_rows_and_names_missing_ids():
    res = small(ids=("a", "b", "c"))
    picked = res.select(["c", "a"])
    assert picked.sample_ids == ["c", "a"]
    assert np.array_equal(picked.dense["l5_fact"], res.dense["l5_fact"][[2, 0]])
    assert np.array_equal(picked.features["l12_hall"].toarray(), res.features["l12_hall"].toarray()[[2, 0]])
    with pytest.raises(SaecliError, match="no row for sample ids zz"):
        res.select(["a", "zz"])


def test_concat_and_its_refusals():
    a, b = small(ids=("a", "b"), seed=1), small(ids=("c",), seed=2)
    both = Residuals.concat([a, b])
    assert both.sample_ids == ["a", "b", "c"]
    assert np.array_equal(both.dense["l12_hall"][2], b.dense["l12_hall"][0])
    assert np.array_equal(both.features["l5_fact"].toarray()[:2], a.features["l5_fact"].toarray())
    with pytest.raises(SaecliError, match="duplicate sample ids"):
        Residuals.concat([a, a])
    with pytest.raises(SaecliError, match="layers or keys"):
        Residuals.concat([a, small(ids=("d",), layers=(5,))])
    with pytest.raises(SaecliError):
        Residuals.concat([])


def test_bad_files_are_one_clear_error(tmp_path):
    with pytest.raises(SaecliError, match="no residuals file"):
        read_residuals(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad [x].safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SaecliError, match=r"bad \[x\].safetensors is not a readable saecli residuals file"):
        read_residuals(bad)
    write_residuals(tmp_path / "good.safetensors", small())
    whole = (tmp_path / "good.safetensors").read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(SaecliError, match="not a readable saecli residuals file"):
        read_residuals(bad)
    from safetensors.numpy import save

    bad.write_bytes(save({"x": np.zeros(3, dtype=np.float32)}))  # a safetensors file, not ours
    with pytest.raises(SaecliError, match="not a saecli residuals file"):
        read_residuals(bad)


def test_inconsistent_arrays_are_refused(tmp_path):
    res = small()
    res.dense["l5_fact"] = res.dense["l5_fact"][:2]
    with pytest.raises(SaecliError, match="expected 3 rows"):
        write_residuals(tmp_path / "r.safetensors", res)
    res = small()
    res.dense["l7_fact"] = res.dense["l5_fact"]
    with pytest.raises(SaecliError, match="unexpected dense key 'l7_fact'"):
        write_residuals(tmp_path / "r.safetensors", res)
    assert not (tmp_path / "r.safetensors").exists()
