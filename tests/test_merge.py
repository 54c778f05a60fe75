"""The streaming merge of a run's parts (saecli.merge): the merged files are those an in-memory
merge makes, written one group of parts at a time; the batch plan keeps a batch within one window
of the input, so that the groups stay a window wide."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from saecli import io, merge, plan
from saecli.compare import compare_frames
from saecli.config import RunConfig
from saecli.merge import Piece, chunks, positions_of, write_residuals_file, write_table
from saecli.parts import write_part
from saecli.residuals import Residuals, read_residuals
from saecli.runner import execute

LAYERS = [0, 2]


def _rows(ids: list[str], rng: np.random.Generator) -> pl.DataFrame:
    value = {pl.Float64(): lambda: float(rng.normal()), pl.Int64(): lambda: int(rng.integers(0, 9)), pl.String(): lambda: "x"}
    rows = [{column: value[dtype]() for column, dtype in io.schema(LAYERS).items()} | {"sample_id": sid} for sid in ids]
    return io.rows_to_frame(rows, LAYERS)


def _residuals(ids: list[str], rng: np.random.Generator) -> Residuals:
    dense = {
        f"l{layer}_{kind}": rng.normal(size=(len(ids), 4)).astype(np.float32) for layer in LAYERS for kind in ("fact", "hall")
    }
    features = {key: sp.random(len(ids), 16, density=0.3, format="csr", dtype=np.float32, random_state=int(rng.integers(1 << 30)))
                for key in dense}  # fmt: skip
    return Residuals(layers=LAYERS, sample_ids=ids, dense=dense, features=features, d_sae=dict.fromkeys(LAYERS, 16))


def _scattered_parts(tmp_path, n: int, batches: list[list[int]]):
    """Parts written as a run writes them, holding the given positions (batches) of ``n`` samples."""
    rng = np.random.default_rng(0)
    ids = [f"s{i:03d}" for i in range(n)]
    frames, residuals = [], []
    for number, batch in enumerate(batches, 1):
        batch_ids = [ids[i] for i in batch]
        frames.append(_rows(batch_ids, rng))
        residuals.append(_residuals(batch_ids, rng))
        write_part(frames[-1], tmp_path, number, {"seed": 0}, residuals[-1])
    tables = sorted((tmp_path / io.PARTS_DIR).glob("part-*.parquet"))
    part_ids = [f["sample_id"] for f in frames]
    positions = positions_of(part_ids, ids, tmp_path)
    pieces = [Piece(t, tmp_path / io.PARTS_DIR / f"part-{k + 1:06d}.residuals.safetensors", part_ids[k], positions[k])
              for k, t in enumerate(tables)]  # fmt: skip
    return ids, frames, residuals, pieces


def test_chunks_take_slices_of_parts_in_order_and_filter_the_others(tmp_path):
    def piece(positions):
        return Piece(tmp_path / "t", None, pl.Series([f"s{i}" for i in positions]), np.array(positions))

    merged, batch, late = piece(list(range(0, 10))), piece([13, 10, 12]), piece([3_500_000_000, 11])
    taken = [[(t.piece is merged, t.start, t.stop, None if t.rows is None else t.rows.tolist()) for t in c]
             for c in chunks([merged, batch, late], rows=4)]  # fmt: skip
    assert taken == [
        [(True, 0, 4, None)],
        [(True, 4, 8, None)],
        [(True, 8, 10, None), (False, 0, 0, [1]), (False, 0, 0, [1])],  # positions 8, 9, 10, 11
        [(False, 0, 0, [0, 2]), (False, 0, 0, [0])],  # positions 12, 13, 3.5e9
    ]


def test_positions_refuse_a_sample_missing_or_twice(tmp_path):
    from saecli.errors import SaecliError

    ids = ["a", "b", "c"]
    assert [p.tolist() for p in positions_of([pl.Series(["c", "a"]), pl.Series(["b"])], ids, tmp_path)] == [[2, 0], [1]]
    assert [p.tolist() for p in positions_of([pl.Series(["c"])], ids, tmp_path, every=False)] == [[2]]
    for parts in ([pl.Series(["c", "a"])], [pl.Series(["c", "a"]), pl.Series(["b", "a"])], [pl.Series(["c", "a", "x"])]):
        with pytest.raises(SaecliError, match="hold a sample twice, or one not in the data"):
            positions_of(parts, ids, tmp_path)


def test_the_streamed_merge_equals_the_merge_in_memory_one_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "MERGE_ROWS", 8)
    # Three windows of 8 samples, each scrambled over its batches (as the length sort does), written
    # in an order that is not the input's; the last window's batches finish out of order.
    order = list(range(24))
    windows = [order[0:8], order[8:16], order[16:24]]
    for window in windows:
        random.Random(len(window) + window[0]).shuffle(window)
    batches = [windows[0][:4], windows[0][4:], windows[2][4:], windows[1][:3], windows[1][3:], windows[2][:4]]
    ids, frames, residuals, pieces = _scattered_parts(tmp_path, 24, batches)

    out = tmp_path / "metrics.parquet"
    assert write_table(pieces, LAYERS, out) == 24
    expected = pl.concat(frames).sort(pl.col("sample_id"))
    assert pl.read_parquet(out).equals(expected)
    assert [pq.ParquetFile(out).metadata.row_group(g).num_rows for g in range(3)] == [8, 8, 8]  # one chunk at a time

    path = tmp_path / "residuals.safetensors"
    write_residuals_file(pieces, ids, LAYERS, path, run="abc")
    merged = read_residuals(path)
    whole = Residuals.concat(residuals).select(ids)
    assert merged.sample_ids == ids and merged.run == "abc" and merged.d_sae == whole.d_sae
    assert set(merged.dense) == set(whole.dense) and set(merged.features) == set(whole.features)
    for key in whole.dense:
        np.testing.assert_array_equal(merged.dense[key], whole.dense[key])
        assert (merged.features[key] != whole.features[key]).nnz == 0


def test_merged_parts_merge_again_by_slices_with_a_scattered_redo(tmp_path, monkeypatch):
    # Parts merged once (as compaction does) are merged again with a batch that redid samples from
    # every chunk (a resumed run's broken part): slices of the former, filtered rows of the latter.
    monkeypatch.setattr(merge, "MERGE_ROWS", 5)
    ids, frames, residuals, pieces = _scattered_parts(tmp_path, 14, [[0, 1, 2], [6, 5, 4], [9, 8, 10, 12], [13, 3, 11, 7]])
    first = tmp_path / "first.parquet"
    write_table(pieces[:3], LAYERS, first)
    kept = [i for i in range(14) if i not in (3, 7, 11, 13)]
    write_residuals_file(pieces[:3], [ids[i] for i in kept], LAYERS, tmp_path / "first.safetensors")
    compacted = Piece(first, tmp_path / "first.safetensors", pl.Series([ids[i] for i in kept]), np.array(kept))
    assert compacted.in_order and not pieces[3].in_order
    out = tmp_path / "metrics.parquet"
    write_table([compacted, pieces[3]], LAYERS, out)
    assert pl.read_parquet(out).equals(pl.concat(frames).sort("sample_id"))
    write_residuals_file([compacted, pieces[3]], ids, LAYERS, tmp_path / "r.safetensors")
    merged, whole = read_residuals(tmp_path / "r.safetensors"), Residuals.concat(residuals).select(ids)
    for key in whole.dense:
        np.testing.assert_array_equal(merged.dense[key], whole.dense[key])
        assert (merged.features[key] != whole.features[key]).nnz == 0


def test_the_plan_keeps_each_batch_within_a_window(monkeypatch, loaded64):
    from saecli.data import load_samples
    from saecli.engine import Engine

    monkeypatch.setattr(plan, "PLAN_WINDOW", 7)  # rounded up to whole batches of 3: windows of 9
    toks = Engine(loaded64, RunConfig(dtype="float64")).tokenize(load_samples(limit=20))
    order = plan.planned_order(toks, 3)
    assert sorted(order) == list(range(20))
    batches = [order[i : i + 3] for i in range(0, 20, 3)]
    assert all(len({i // 9 for i in batch}) == 1 for batch in batches), batches


@pytest.mark.slow
def test_a_run_merges_window_by_window(tmp_path, monkeypatch, loaded64):
    reference = execute(RunConfig(limit=20, batch_size=4, dtype="float64"), out=tmp_path / "whole", loaded=loaded64)
    monkeypatch.setattr(plan, "PLAN_WINDOW", 8)
    monkeypatch.setattr(merge, "MERGE_ROWS", 8)
    result = execute(RunConfig(limit=20, batch_size=4, dtype="float64"), out=tmp_path / "run", loaded=loaded64)
    metrics = pq.ParquetFile(tmp_path / "run" / io.METRICS_FILE).metadata
    assert [metrics.row_group(g).num_rows for g in range(metrics.num_row_groups)] == [8, 8, 4]
    assert compare_frames(reference.frame, result.frame, atol=1e-9).passed  # other batches: float noise only
    assert read_residuals(tmp_path / "run" / io.RESIDUALS_FILE).sample_ids == result.frame["sample_id"].to_list()
