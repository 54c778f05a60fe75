"""The mechanisms that keep a large run's report in bounded memory, checked on small data: features
ranked a block of rows at a time, fold groups from hashes of the texts, residuals read in blocks,
metric columns made one at a time, the dashboard's scatter subsampled above its cap."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from saecli.data import Sample
from saecli.errors import SaecliError
from saecli.io import RESIDUALS_FILE, samples_frame, write_samples
from saecli.report import make_report
from saecli.report.detection import LazyPairs, _pairs, run_metrics
from saecli.report.features import rank_feature_blocks, rank_features
from saecli.report.folds import hashed_text_groups, sample_groups, text_groups
from saecli.report.probes import ProbeOutcome
from saecli.report.sampling import subsample
from saecli.report.stats import flip_null_max, group_rng
from saecli.report.texts import excerpts_of, text_groups_of_run
from saecli.residuals import read_residual_blocks, read_residuals, write_residuals

from .helpers import LAYERS, baseline_run, planted_residuals


@pytest.fixture(scope="module")
def planted():
    residuals, domains = planted_residuals(90, layers=[0])
    return residuals.features["l0_fact"], residuals.features["l0_hall"], domains


def _same_rows(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for name, value in dataclasses.asdict(x).items():
            other = getattr(y, name)
            if isinstance(value, float):
                assert other == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), name
            else:
                assert other == value, name


def test_features_ranked_block_by_block_equal_those_ranked_at_once(planted):
    fact, hall, domains = planted
    rows = subsample(domains, 40, 0)
    ids = [f"s{i}" for i in range(fact.shape[0])]
    whole = rank_features(fact, hall, layer=0, top=20, bootstrap=50, sample_ids=ids, null_rows=rows)
    reads = []

    def blocks():
        reads.append(1)
        return [(fact[a : a + 16], hall[a : a + 16]) for a in range(0, fact.shape[0], 16)]

    by_block = rank_feature_blocks(blocks, layer=0, top=20, bootstrap=50, sample_ids=ids, null=(fact[rows], hall[rows]))
    _same_rows(whole, by_block)
    assert len(reads) == 2  # the sums, then the top features' columns
    assert {r.null_samples for r in by_block} == {40}
    one_block = rank_feature_blocks(lambda: [(fact, hall)], layer=0, top=20, bootstrap=50, sample_ids=ids,
                                    null=(fact[rows], hall[rows]))  # fmt: skip
    assert one_block == whole  # one block: exactly the same values


def test_fold_groups_from_text_hashes_equal_those_of_the_samples(tmp_path):
    texts = ["Paris is in", "France.", "Spain.", "Rome is in", "Italy.", "Paris is in France.", "the sun", "hot", "cold"]
    rng = random.Random(0)
    samples = [
        Sample(id=f"s{i}", domain="d", prompt=rng.choice(texts), fact=rng.choice(texts), hallucination=rng.choice(texts))
        for i in range(40)
    ]  # prompts shared, and a prompt that is another sample's whole fact text
    write_samples([samples_frame(samples)], tmp_path)
    order = list(range(40))
    rng.shuffle(order)  # the table's order is not the file's
    frame = pl.DataFrame({"sample_id": [samples[i].id for i in order]})
    groups = text_groups_of_run(tmp_path, frame)
    assert groups.tolist() == sample_groups([samples[i] for i in order]).tolist()
    assert 1 < len(set(groups.tolist())) < 40
    with pytest.raises(SaecliError, match="it holds no row for sample 'nope'"):
        text_groups_of_run(tmp_path, pl.DataFrame({"sample_id": ["s1", "nope"]}))
    excerpts = excerpts_of(tmp_path, ["s3", "s7", "absent"])
    assert set(excerpts) == {"s3", "s7"} and samples[3].hallucination in excerpts["s3"]


def test_hashed_groups_are_the_groups_of_the_texts():
    for trial in range(50):
        rng = random.Random(trial)
        vocab = [f"t{i}" for i in range(rng.randint(1, 30))] + ["", " "]
        texts = [tuple(rng.choice(vocab) for _ in range(3)) for _ in range(rng.randint(0, 30))]
        hashes = np.array([[hash(t.strip()) % (1 << 63) for t in row] for row in texts], dtype=np.uint64).reshape(-1, 3)
        present = np.array([[bool(t.strip()) for t in row] for row in texts], dtype=bool).reshape(-1, 3)
        assert hashed_text_groups(hashes, present).tolist() == text_groups(texts).tolist(), texts


def test_residuals_read_in_blocks_equal_one_read(tmp_path):
    residuals, _ = planted_residuals(50, layers=[0])
    path = write_residuals(tmp_path / RESIDUALS_FILE, residuals)
    rows = np.r_[np.arange(10, 50), np.arange(0, 10)]
    keys = ["features.l0_fact", "dense.l0_hall"]
    blocks = list(read_residual_blocks(path, keys, rows, 7))
    assert [b.n for b in blocks] == [7] * 7 + [1]
    whole = read_residuals(path, keys=keys, rows=rows)
    assert [sid for b in blocks for sid in b.sample_ids] == whole.sample_ids
    assert np.array_equal(np.concatenate([b.dense["l0_hall"] for b in blocks]), whole.dense["l0_hall"])
    import scipy.sparse as sp

    stacked = sp.vstack([b.features["l0_fact"] for b in blocks], format="csr")
    assert (stacked != whole.features["l0_fact"]).nnz == 0
    path.write_bytes(path.read_bytes()[:-100])  # cut short: one error, not a short array
    with pytest.raises(SaecliError, match="not a readable saecli residuals file"):
        list(read_residual_blocks(path, keys, rows, 7))


@pytest.fixture(scope="module")
def run60(tmp_path_factory):
    return baseline_run(tmp_path_factory.mktemp("run60") / "run", n=60, layers=LAYERS[:2])


def test_metric_columns_made_one_at_a_time_give_the_same_null(run60):
    frame = pl.read_parquet(run60 / "metrics.parquet")
    metrics = run_metrics(frame, LAYERS[:2])
    lazy = LazyPairs(frame, metrics)
    assert len(lazy) == len(metrics) and len(lazy[1:3]) == 2
    eager = flip_null_max(_pairs(frame, metrics), frame.height, 200, group_rng(0, "x"))
    assert np.array_equal(flip_null_max(lazy, frame.height, 200, group_rng(0, "x")), eager)


def test_the_dashboard_scatter_is_a_seeded_subsample_above_its_cap(run60, tmp_path, monkeypatch):
    import saecli.report
    import saecli.report.dashboard as dashboard

    drawn = {}

    def draw(frame, report, path):
        from matplotlib.figure import Figure

        ax = Figure().add_subplot()
        dashboard._centroid_drift(ax, frame, report)
        drawn["points"] = sum(len(c.get_offsets()) for c in ax.collections)
        drawn["title"] = ax.get_title()
        path.write_bytes(b"png")

    monkeypatch.setattr(saecli.report, "draw_dashboard", draw)
    monkeypatch.setattr(saecli.report, "run_probes", lambda residuals, domains, **kwargs: ProbeOutcome())  # tested elsewhere
    full = make_report(run60, bootstrap=0, folds=2, out_dir=tmp_path / "a")
    assert drawn["points"] == 60 and "drawn" not in drawn["title"] and "dashboard_scatter" not in full.subsampled
    for module in (saecli.report, dashboard):
        monkeypatch.setattr(module, "SCATTER_POINTS", 25)
    capped = make_report(run60, bootstrap=0, folds=2, out_dir=tmp_path / "b")
    assert drawn["points"] == 25 and "25 of 60 samples drawn (seeded, by domain)" in drawn["title"]
    assert capped.subsampled["dashboard_scatter"] == 25
    assert [n for n in capped.notes if n.startswith("The centroid-drift scatter of dashboard.png: on 25 of 60 samples")]
    domains = pl.read_parquet(run60 / "metrics.parquet")["domain"].to_list()
    assert np.array_equal(dashboard.scatter_rows(domains, 0), dashboard.scatter_rows(domains, 0))
    assert not np.array_equal(dashboard.scatter_rows(domains, 0), dashboard.scatter_rows(domains, 1))
    for name in ("detection.csv", "features.csv"):  # only the figure and its notes differ
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_run_table_reads_as_the_frame_a_column_at_a_time(tmp_path):
    from saecli.io import METRICS_FILE, read_parquet
    from saecli.report.runtable import CACHED, RunTable

    run_dir = baseline_run(tmp_path / "run", n=40, residuals=False)
    frame = read_parquet(run_dir / METRICS_FILE)
    table = RunTable(run_dir / METRICS_FILE)
    assert (table.height, table.columns, table.schema) == (frame.height, frame.columns, frame.schema)
    for column in frame.columns:
        assert table[column].equals(frame[column]), column
    assert len(table._cache) == CACHED  # the columns read last, not the table
    rows = [7, 0, 39, 7]
    assert table[rows].equals(frame[rows]) and table[np.asarray(rows)].equals(frame[rows])
    assert table.select("domain", pl.col("sample_id").cast(pl.String).alias("id")).equals(
        frame.select("domain", pl.col("sample_id").cast(pl.String).alias("id"))
    )
    scores = pl.DataFrame({"probe_fact": np.arange(40.0), "probe_hall": -np.arange(40.0)})
    wider = table.hstack(scores)
    assert wider.columns == [*frame.columns, "probe_fact", "probe_hall"] and wider["probe_hall"].equals(scores["probe_hall"])
    assert table.columns == frame.columns  # the original keeps its columns
    counts = frame.group_by("domain", maintain_order=True).len()
    assert table.domain_counts() == dict(zip(counts["domain"], counts["len"], strict=True))


def test_the_report_never_reads_the_metrics_table_whole(tmp_path, monkeypatch):
    import saecli.io
    import saecli.report
    from saecli.io import METRICS_FILE

    run_dir = baseline_run(tmp_path / "run", n=40)
    before = make_report(run_dir, bootstrap=20, seed=0, out_dir=tmp_path / "before")
    whole = saecli.io.read_parquet

    def refuse_the_table(path):
        assert Path(path).name != METRICS_FILE, "metrics.parquet read whole"
        return whole(path)

    monkeypatch.setattr(saecli.io, "read_parquet", refuse_the_table)
    monkeypatch.setattr(saecli.report, "read_parquet", refuse_the_table)
    after = make_report(run_dir, bootstrap=20, seed=0, out_dir=tmp_path / "after")
    assert before.frame().equals(after.frame()) and before.rows
