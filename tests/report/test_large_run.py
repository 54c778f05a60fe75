"""A large run's report: the probes on a seeded stratified subsample, the bootstrap and the features'
null on a rescaled one, the residuals read a part at a time; below the caps nothing changes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from saecli.cli import app
from saecli.errors import SaecliError
from saecli.io import RESIDUALS_FILE
from saecli.report import make_report
from saecli.report.detection import ALL, Metric, detect_metrics
from saecli.report.sampling import rescale, subsample, subsample_order
from saecli.residuals import read_residuals, residual_names

from .helpers import LAYERS, baseline_run, one_line_error, runner

CSVS = ("detection.csv", "probes.csv", "generalisation.csv", "features.csv")


@pytest.fixture
def quick_dashboard(monkeypatch):
    import saecli.report

    monkeypatch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"\x89PNG\r\n\x1a\n"))


@pytest.fixture(scope="module")
def run40(tmp_path_factory):
    return baseline_run(tmp_path_factory.mktemp("run40") / "run", n=40, layers=LAYERS[:2])


def _report(run_dir, out, **caps):
    out.mkdir()
    return make_report(run_dir, bootstrap=50, seed=3, folds=2, out_dir=out, **caps)


def test_the_subsample_is_stratified_nested_and_seeded():
    domains = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    order = subsample_order(domains, seed=0)
    assert sorted(order.tolist()) == list(range(100))
    labels = np.asarray(domains)
    for k in (1, 7, 20, 33, 99):
        counts = {d: int((labels[order[:k]] == d).sum()) for d in "abc"}
        assert all(abs(counts[d] - k * n / 100) <= 1 for d, n in (("a", 50), ("b", 30), ("c", 20))), (k, counts)
    small, large = subsample(domains, 20, 0), subsample(domains, 60, 0)
    assert set(small) <= set(large) and list(small) == sorted(small)  # nested, in the run's order
    assert np.array_equal(small, subsample(domains, 20, 0)) and not np.array_equal(small, subsample(domains, 20, 1))
    assert subsample(domains, 100, 0) is None  # nothing left out: nothing changes
    # a domain's own order is the same alone as among the others (a domain group's subsample nests too)
    alone = subsample_order(["b"] * 30, seed=0)
    assert np.array_equal(np.flatnonzero(labels == "b")[alone], order[labels[order] == "b"])


def test_rescale_is_the_identity_on_the_whole_and_shrinks_by_root_m_over_n():
    values = np.array([0.6, 0.7, 0.8])
    assert rescale(values, 0.7, 0.7, 50, 50) is values
    assert np.allclose(rescale(values, 0.65, 0.7, 25, 100), 0.65 + 0.5 * (values - 0.7))


def test_the_rescaled_bootstrap_has_the_width_of_the_whole():
    """vs_baseline on 600 of 6000 pairs, rescaled by √(m/n), spans about what the whole data's bootstrap does."""
    rng = np.random.default_rng(5)
    n = 6000
    base, signal = rng.normal(size=n), rng.normal(size=n)
    frame = pl.DataFrame({
        "domain": [("x", "y")[i % 2] for i in range(n)],
        "m_fact": signal, "m_hall": signal + 0.5 + rng.normal(size=n),
        "logprob_sum_fact": base + 0.2, "logprob_sum_hall": base + rng.normal(size=n),
    })  # fmt: skip
    metrics = [Metric("m", "m_fact", "m_hall"), Metric("logprob_sum", "logprob_sum_fact", "logprob_sum_hall", family="baseline")]
    whole = next(r for r in detect_metrics(frame, metrics, bootstrap=300, seed=0) if r.metric == "m" and r.domain == ALL)
    capped = detect_metrics(frame, metrics, bootstrap=300, seed=0, resample_samples=600)
    part = next(r for r in capped if r.metric == "m" and r.domain == ALL)
    assert part.vs_baseline == whole.vs_baseline  # the point estimate is on every pair
    width, part_width = whole.vs_baseline_high - whole.vs_baseline_low, part.vs_baseline_high - part.vs_baseline_low
    assert 0.75 < part_width / width < 1.33, (part_width, width)
    assert part.vs_baseline_low < part.vs_baseline < part.vs_baseline_high
    assert [r.auroc for r in capped] == [r.auroc for r in detect_metrics(frame, metrics, bootstrap=0)]


def test_a_capped_report_records_its_subsample_and_is_deterministic(run40, tmp_path, quick_dashboard):
    caps = {"probe_samples": 20, "resample_samples": 30}
    report = _report(run40, tmp_path / "a", **caps)
    assert report.subsampled == {"probes": 20, "features_null": 30, "bootstrap": 30}
    probes = pl.read_csv(tmp_path / "a" / "probes.csv")
    assert set(probes.filter(pl.col("domain") == ALL)["n"]) == {20} and set(probes.filter(pl.col("domain") == ALL)["n_run"]) == {
        40
    }
    per_domain = dict(probes.filter(pl.col("domain") != ALL).select("domain", "n").unique().iter_rows())
    assert per_domain == {"entity": 7, "logical": 7, "temporal": 6}  # 14/13/13 of 40, halved and kept in proportion
    detection = pl.read_csv(tmp_path / "a" / "detection.csv")
    probe_all = detection.filter((pl.col("family") == "probe") & (pl.col("domain") == ALL))
    assert set(probe_all["n"]) == {20}  # both texts of each drawn sample scored: whole pairs
    assert set(detection.filter((pl.col("family") == "geometry") & (pl.col("domain") == ALL))["n"]) == {40}
    assert set(pl.read_csv(tmp_path / "a" / "features.csv")["null_samples"]) == {30}
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "on 20 of 40 samples" in summary and "on 30 of 40 samples" in summary
    assert make_report(run40, bootstrap=0, folds=2, out_dir=tmp_path / "c", **caps).to_dict()["subsampled"] == {"probes": 20}
    _report(run40, tmp_path / "b", **caps)
    for name in CSVS:  # the same seed: the same subsample, folds, resamples and draws
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_at_the_caps_nothing_changes(run40, tmp_path, quick_dashboard):
    default = _report(run40, tmp_path / "default")
    at_cap = _report(run40, tmp_path / "cap", probe_samples=40, resample_samples=40)
    assert default.subsampled == at_cap.subsampled == {}
    for name in CSVS:
        assert (tmp_path / "cap" / name).read_bytes() == (tmp_path / "default" / name).read_bytes(), name
    assert not any("subsample" in note for note in default.notes)


def test_the_residuals_are_read_a_part_at_a_time(run40):
    path = run40 / RESIDUALS_FILE
    whole = read_residuals(path)
    rows = [7, 3, 39, 0]
    part = read_residuals(path, rows=rows)
    assert part.sample_ids == [whole.sample_ids[i] for i in rows]
    for key in whole.dense:
        assert np.array_equal(part.dense[key], whole.dense[key][rows])
    for key in whole.features:
        assert (part.features[key] != whole.features[key][rows]).nnz == 0
    header = read_residuals(path, keys=())
    assert header.sample_ids == whole.sample_ids and header.dense == {} and header.features == {}
    assert header.d_sae == whole.d_sae and header.layers == whole.layers
    one = read_residuals(path, keys=["features.l0_hall"])
    assert list(one.features) == ["l0_hall"] and one.dense == {}
    assert residual_names(path) == sorted(f"{t}.{k}" for t in ("dense", "features") for k in whole.dense)
    with pytest.raises(SaecliError, match="not a readable saecli residuals file"):
        read_residuals(path, rows=[40])


def test_caps_below_the_minimum_are_refused_before_any_work(run40, no_detect):
    for option in ("probe_samples", "resample_samples"):
        with pytest.raises(SaecliError, match=f"--{option.replace('_', '-')} must be a whole number >= 20"):
            make_report(run40, **{option: 5})
    one_line_error(runner.invoke(app, ["report", str(run40), "--resample-samples", "3"]), 2, "--resample-samples")


def test_the_rescaled_feature_null_matches_the_whole():
    """The features' null threshold drawn on 1000 of 6000 pairs, times √(1000/6000), is that of all 6000."""
    from saecli.report.features import null_threshold
    from saecli.report.stats import group_rng

    from .helpers import planted_residuals

    res, domains = planted_residuals(6000, layers=[0], d_sae=100, swap=True)
    fact, hall = res.features["l0_fact"], res.features["l0_hall"]
    whole = null_threshold(fact, hall, 200, group_rng(0, "null"))
    part = null_threshold(fact, hall, 200, group_rng(0, "null"), rows=subsample(domains, 1000, 0))
    assert 0.85 < part / whole < 1.15, (part, whole)
    assert null_threshold(fact, hall, 200, group_rng(0, "null"), rows=np.arange(6000)) == whole  # all rows: unchanged
