"""A re-timed workload search in a real browser (Debian's headless Chromium via Selenium):
`nas serve` over a real SQLite store, the search page switched to a workload metric on its x
axis, the re-timings and intervals drawn by the page's own script; then the offline report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nas.store import Store

from .test_browser import POINTS_JS, ROOT, _chromium, free_port, wait_until
from .workloads import LONG, OBJECTIVE, SEARCHED, make_retimed_search

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TTFT = f"latency:{LONG}:ttft_ms"
PARETO = "document.getElementById('pareto')"


@pytest.fixture
def browser(tmp_path):
    driver = _chromium(tmp_path, "chromium-profile")
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path):
    """``nas serve`` over a database holding the re-timed search 'long'; yields (base URL, ids)."""
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(db) as store:
        ids = make_retimed_search(store, "long")
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - written until the fixture ends
    env = {k: v for k, v in os.environ.items() if k != "NAS_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "--db", db, "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"nas serve exited: {(tmp_path / 'serve.log').read_text()}")
        try:
            return httpx.get(f"{base}/api/searches", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, "nas serve to answer")
    yield base, ids
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def choose(browser, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", select_id)).select_by_value(value)


def test_switch_the_x_axis_to_a_workload_metric(served, browser, tmp_path):
    base, ids = served
    browser.get(f"{base}/searches/long")
    wait_until(lambda: browser.execute_script("return document.body.dataset.ready") == "1", 30, "the page")
    wait_until(lambda: browser.execute_script(POINTS_JS) == len(SEARCHED), 30, "a marker per candidate")
    assert browser.execute_script(f"return {PARETO}.layout.xaxis.title.text").startswith(OBJECTIVE)

    choose(browser, "ax-x", TTFT)
    wait_until(lambda: browser.execute_script(f"return {PARETO}.layout.xaxis.title.text")
               .startswith(TTFT), 20, "the plot redrawn with ttft_ms across")
    drawn = browser.execute_script(
        f"var out = {{}}; {PARETO}.data.forEach(function (t) {{ (t.customdata || []).forEach("
        "function (id, i) { out[id] = t.x[i]; }); }); return out;")
    with httpx.Client(base_url=base) as api:
        expected = {str(i): api.get(f"/api/candidates/{i}").json()["metrics"][TTFT] for i in ids.values()}
    assert {k: pytest.approx(v) for k, v in drawn.items()} == expected
    assert browser.execute_script(POINTS_JS) == len(SEARCHED)

    # The re-timing, drawn by the page's script: one row, trial 3 entered, trial 1 left.
    card = browser.find_element("id", "retimes-card")
    assert "hidden" not in card.get_attribute("class")
    (row,) = browser.find_elements("css selector", "#retimes tbody tr")
    assert row.find_element("css selector", ".entered").text == "trial 3"
    assert row.find_element("css selector", ".left").text == "trial 1"
    # The candidates table: trial 2's latency with its interval, marked unresolved against trial 1.
    cell = browser.find_element("css selector", f'#candidates tr[data-id="{ids[2]}"] .unresolved')
    assert "trial 1" in cell.get_attribute("title")
    assert "[3.3, 3.6]" in browser.find_element("css selector", f'#candidates tr[data-id="{ids[2]}"]').text
    browser.save_screenshot(str(tmp_path / "search-workload-axis.png"))
    browser.get(f"{base}/candidates/{ids[2]}")
    browser.find_element("css selector", f"#latency-{LONG} details summary").click()
    browser.save_screenshot(str(tmp_path / "candidate-workload.png"))
    print(f"screenshots: {tmp_path / 'search-workload-axis.png'} {tmp_path / 'candidate-workload.png'}")


def test_offline_report_switches_to_an_embedded_workload_axis(browser, tmp_path):
    from nas.report import write_report

    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        make_retimed_search(store, "long")
        report: Path = write_report(store, "long", tmp_path / "report.html")
    browser.get(report.as_uri())
    wait_until(lambda: browser.execute_script(POINTS_JS) == len(SEARCHED), 30, "the report's markers")
    choose(browser, "ax-x", TTFT)  # y stays val_loss: embedded
    wait_until(lambda: browser.execute_script(f"return {PARETO}.layout && {PARETO}.layout.xaxis.title.text"
                                              " || ''").startswith(TTFT), 20, "the embedded plot")
    choose(browser, "ax-y", f"memory:{LONG}:peak_mb")  # not embedded: said so, nothing fetched
    wait_until(lambda: "nas serve" in browser.find_element("id", "pareto").text, 20, "the note")
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
