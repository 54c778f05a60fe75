"""report.html: its data is the CSVs' data, it needs no network, and (marker ``browser``) it works in
headless Chromium: no console errors, the ranking sorts, a search finds a sample, a feature links to
Neuronpedia. One report of a small run with texts and residuals, one browser, for the whole module.

The browser tests skip with one line where chromium, chromedriver or selenium is missing (``make
test`` installs them where it can: its ``browser`` step). The screenshot they take is kept in
``$SAECLI_ARTIFACTS`` when set (CI), else in pytest's temporary folder of this module (its path is
printed by ``pytest -rA``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from saecli.data import Sample
from saecli.io import samples_frame, write_samples
from saecli.report import make_report
from saecli.report.html import DATA_ID, embedded_rows, read_page_data

from .helpers import LAYERS, baseline_run

GEMMA = "gemma-2-2b/20-gemmascope-res-16k"
SEARCHED = "s17"


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    """A 24-sample run with baselines, residuals (Neuronpedia id on layer 2) and texts, reported once."""
    run_dir = baseline_run(tmp_path_factory.mktemp("html") / "run", n=24, layers=LAYERS[:2], neuronpedia={LAYERS[1]: GEMMA})
    domains = pl.read_parquet(run_dir / "metrics.parquet")["domain"].to_list()
    texts = [Sample(id=f"s{i}", domain=d, prompt=f"Question {i} <b>about</b> {d}?", fact=f"true answer {i}",
                    hallucination=f"false answer {i}") for i, d in enumerate(domains)]  # fmt: skip
    write_samples([samples_frame(texts)], run_dir)
    with pytest.MonkeyPatch.context() as patch:  # the dashboard is not what this module tests (seconds to draw)
        import saecli.report

        patch.setattr(saecli.report, "draw_dashboard", lambda frame, report, path: path.write_bytes(b"\x89PNG\r\n\x1a\n"))
        report = make_report(run_dir, bootstrap=50, seed=0, folds=2)
    return report


@pytest.fixture(scope="module")
def page(html_report):
    return (html_report.out_dir / "report.html").read_text(encoding="utf-8")


def _same(a, b) -> bool:
    """One CSV cell and one JSON value: equal, NaN and null alike, floats to the CSV's 6 significant places."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6)
    return a == b or str(a) == str(b)


def _compare(data: dict, csv: Path) -> None:
    frame = pl.read_csv(csv)
    assert data["columns"] == frame.columns
    assert len(data["rows"]) == frame.height > 0
    for i, (embedded, written) in enumerate(zip(data["rows"], frame.iter_rows(), strict=True)):
        for name, a, b in zip(frame.columns, written, embedded, strict=True):
            assert _same(a, b), (csv.name, i, name, a, b)


def test_the_page_holds_the_numbers_of_the_csvs(html_report, page):
    data = read_page_data(page)
    _compare(data["detection"], html_report.out_dir / "detection.csv")
    _compare(data["features"], html_report.out_dir / "features.csv")
    assert data["samples"] == 24 and len(data["sample_table"]["samples"]) == 24
    sample = next(s for s in data["sample_table"]["samples"] if s["id"] == SEARCHED)
    assert sample["fact"] == "true answer 17" and set(sample["features"]) == {"0", "2"}


def test_the_page_is_self_contained(page):
    assert "<script src" not in page and '<link rel="stylesheet"' not in page  # everything inline: no CDN, no network
    assert page.count(f'id="{DATA_ID}"') == 1 and "Plotly" in page
    assert "<b>about</b>" not in page  # a text is data, never markup


def test_a_large_run_embeds_a_subsample_and_says_so(html_report, monkeypatch):
    import saecli.report.html

    monkeypatch.setattr(saecli.report.html, "SAMPLES_EMBED", 6)
    frame = pl.read_parquet(html_report.run_dir / "metrics.parquet")
    report = dataclasses.replace(html_report, features=html_report.features[:1])  # a tiny run's features name every sample
    rows, note = embedded_rows(report, frame)
    named = {getattr(f, f"top{k}_sample") for f in report.features for k in (1, 2, 3)} - {""}
    ids = set(np.asarray(frame["sample_id"].to_list())[rows].tolist())
    assert named <= ids and len(ids) < 24 and len(ids) >= 6
    assert f"hold {len(ids)} of 24 samples" in note and "seeded subsample of 6" in note


def test_a_samples_features_are_those_that_differ_most():
    import scipy.sparse as sp

    from saecli.report.html import FEATURES_PER_SAMPLE, _top_differences

    fact = sp.csr_matrix(np.array([[0.0, 1.0, 2.0, 0.0, 5.0, 0.0, 0.0, 1.0]]))
    hall = sp.csr_matrix(np.array([[3.0, 1.0, 0.0, 0.5, 5.0, 2.0, 0.1, 0.0]]))
    top = _top_differences(fact, hall, 0)
    assert FEATURES_PER_SAMPLE == 5 and top == [[0, 0.0, 3.0], [2, 2.0, 0.0], [5, 0.0, 2.0], [7, 1.0, 0.0], [3, 0.0, 0.5]]


# -- in a real browser -------------------------------------------------------------------------------


def _chrome():
    """A headless Chromium driven by Selenium through the system's chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; `make test` does it as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system's driver given by path: Selenium Manager never tries to download one
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def browser(html_report):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chrome()
    try:
        driver.get((html_report.out_dir / "report.html").resolve().as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        yield driver
    finally:
        driver.quit()


@pytest.mark.browser
def test_the_page_loads_without_console_errors(browser, tmp_path_factory):
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.find_elements("css selector", "#plot-forest .main-svg")  # plotly drew
    folder = Path(os.environ.get("SAECLI_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report-html.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot of report.html: {shot}")


def _column(driver, table: str, index: int) -> list[str]:
    return [td.text for td in driver.find_elements("css selector", f"#{table} tbody tr td:nth-child({index})")]


@pytest.mark.browser
def test_the_ranking_table_sorts(browser, html_report):
    from selenium.webdriver.common.keys import Keys

    def header():  # the table is drawn again on each sort
        return browser.find_element("css selector", '#ranking th[data-key="auroc"]')

    def aurocs():
        return [float(text.split()[0]) for text in _column(browser, "ranking", 6)]

    def first_page(descending):  # the table shows the group "all" first, 25 rows a page
        values = sorted((r.auroc for r in html_report.rows if r.domain == "all" and math.isfinite(r.auroc)), reverse=descending)
        return values[:25]

    header().find_element("tag name", "button").click()
    shown = aurocs()
    assert header().get_attribute("aria-sort") == "descending" and len(shown) > 5
    assert shown == sorted(shown, reverse=True) and np.allclose(shown, first_page(True), atol=6e-4)
    browser.switch_to.active_element.send_keys("\n")  # the keyboard sorts too: focus stays on the header's button
    shown = aurocs()
    assert header().get_attribute("aria-sort") == "ascending" and np.allclose(shown, first_page(False), atol=6e-4)
    rows = browser.find_elements("css selector", "#ranking tbody tr")
    assert [r.get_attribute("tabindex") for r in rows[:3]] == ["0", "-1", "-1"]  # one row in the tab order
    rows[0].click()
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)  # the arrow keys move between rows
    assert browser.switch_to.active_element.get_attribute("data-id") == rows[1].get_attribute("data-id")


@pytest.mark.browser
def test_a_search_finds_a_sample_by_id(browser):
    search = browser.find_element("id", "sample-search")
    search.clear()
    search.send_keys(SEARCHED)
    ids = [tr.get_attribute("data-id") for tr in browser.find_elements("css selector", "#samples tbody tr")]
    assert SEARCHED in ids and len(ids) < 24
    detail = browser.find_element("id", "sample-detail").text
    assert f"Sample {SEARCHED}" in detail and "true answer 17" in detail and "false answer 17" in detail
    assert "Question 17 <b>about</b>" in detail  # shown as text
    assert re.search(r"layer 0: #\d+ \(fact [-\d.e]+, hall [-\d.e]+\)", detail), detail  # its top SAE features


@pytest.mark.browser
def test_a_feature_links_to_its_neuronpedia_page(browser, html_report):
    feature = next(f for f in html_report.features if f.layer == LAYERS[1])
    link = browser.find_element("css selector", f'#features tr[data-id="{feature.layer}:{feature.feature}"] a.np-link')
    assert link.get_attribute("href") == f"https://www.neuronpedia.org/{GEMMA}/{feature.feature}"
    assert not browser.find_elements("css selector", f'#features tr[data-id^="{LAYERS[0]}:"] a.np-link')  # layer 0: no id
