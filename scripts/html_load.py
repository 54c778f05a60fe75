"""How heavy a report.html is: its size, the samples it embeds and its load time in headless Chromium.

For each page, in a browser of its own: the file's size, the samples its browser holds (of the
run's), and on the first load (cold: a fresh browser, as a user opening the file) the milliseconds
from navigation start to the first contentful paint, to the verdict and tables built (the page's
``saecli-tables`` mark; it compiles plotly.js after them) and to everything drawn, plots included
(``saecli-ready``); then the median of ``--repeats`` loads after it to everything drawn (warm: the
browser may reuse compiled script).

Usage::

    .venv/bin/python scripts/html_load.py runs/<time>-tiny/report.html big-run/report.html

Needs chromium and chromedriver on PATH (``apt-get install chromium chromium-driver``) and selenium;
prints one table row per page.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

READY = "return document.body.dataset.ready === '1'"
MARKS = (
    "const at = (name) => (performance.getEntriesByName(name)[0] || {}).startTime;"
    "return [at('first-contentful-paint'), at('saecli-tables'), at('saecli-ready')]"
)


def driver():
    """Headless Chromium through the system's chromedriver (Selenium Manager never downloads one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)


def wait(browser, check: str, timeout: float = 120) -> None:
    """Until the page says ``check`` (a page that never does: an error naming it, not a hang)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.005).until(
        lambda b: b.execute_script(check), f"the page never said: {check}"
    )


def measure(page: Path, repeats: int) -> dict[str, float]:
    """Milliseconds from navigation start to the first paint, the tables and ready on the first (cold)
    load in a fresh browser; the median to ready of the later (warm) loads."""
    browser = driver()
    try:
        marks = []
        for _ in range(1 + repeats):
            browser.get("about:blank")
            browser.get(page.resolve().as_uri())
            wait(browser, READY)
            marks.append(browser.execute_script(MARKS))
    finally:
        browser.quit()
    paint, tables, ready = marks[0]
    warm = statistics.median(m[2] for m in marks[1:]) if repeats else float("nan")
    return {"paint_ms": paint, "tables_ms": tables, "cold_ms": ready, "warm_ms": warm}


def embedded(page: Path) -> str:
    from saecli.report.html import read_page_data

    data = read_page_data(page.read_text(encoding="utf-8"))
    return f"{len(data['sample_table']['samples']):,} of {data['samples']:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=Path, help="report.html files")
    parser.add_argument("--repeats", type=int, default=3, help="warm loads after the first (default 3)")
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        print("html_load.py: no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.pages if not p.is_file()]
    if missing:
        print(f"html_load.py: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    print("page | MB | samples embedded | paint_ms | tables_ms | ready_ms | warm_ready_ms")
    for page in args.pages:
        times = measure(page, args.repeats)
        size = page.stat().st_size / 1e6
        print(
            f"{page} | {size:.2f} | {embedded(page)} | {times['paint_ms']:.0f} | {times['tables_ms']:.0f} | {times['cold_ms']:.0f} | {times['warm_ms']:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
