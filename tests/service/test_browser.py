"""A real search, a real server and a real browser (Debian's headless Chromium via Selenium).

The search is launched through ``POST /api/searches`` on a running ``nas serve``, so the whole
path runs for real: the launcher starts ``python -m nas search`` (the same driver as the CLI,
with a small proxy budget), the browser opens the search's page while it is still starting,
and the page must turn into the search and redraw itself as candidates finish, without a
reload. Then: one marker per complete candidate, a click on a marker lands on that
candidate's page, and screenshots go to the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
TRIALS = 3
SEARCH_TIMEOUT_S = 420
POINTS_JS = "return document.querySelectorAll('#pareto .scatterlayer .trace .points path.point').length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _chromium(tmp_path, profile: str, *flags: str):
    """A real headless Chromium (skips without Debian's chromium and chromium-driver)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1100", *flags,
                 f"--user-data-dir={tmp_path / profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = _chromium(tmp_path, "chromium-profile")
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path):
    """``nas serve`` on a free port over an empty database; yields its base URL."""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    # The launcher's private directory (and Ray's) go in a scratch directory removed at the
    # end; a short path, as Ray's socket paths must fit in 107 characters.
    scratch = tempfile.mkdtemp(prefix="nas-bt-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": scratch}
    env.pop("NAS_TOKEN", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server writes it until the fixture ends
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
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(scratch, ignore_errors=True)


def small_space() -> str:
    """The tiny space with a smaller proxy budget: seconds per candidate on a busy laptop."""
    space = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    space["budget"].update(tokens=40_000, max_seconds=20)
    space.pop("fidelity", None)  # every candidate completes; test_browse_a_search_with_rungs has rungs
    return yaml.safe_dump(space, sort_keys=False)  # objectives keep their order


def test_browse_a_real_search(server, browser, tmp_path):
    r = httpx.post(f"{server}/api/searches", timeout=60,
                   json={"name": "browser", "space_yaml": small_space(), "trials": TRIALS})
    assert r.status_code == 202, r.text
    launched = r.json()
    try:
        # Open the page at once: it shows "starting", then becomes the search's page.
        browser.get(server + launched["url"])

        def search_page() -> bool:
            if "exited (" in browser.find_element("tag name", "h1").text:
                raise AssertionError("the search process failed:\n" +
                                     browser.find_element("css selector", "pre.log").text)
            return browser.execute_script("return !!document.getElementById('pareto')")

        wait_until(search_page, 180, "the search page (the driver creating the search)", interval=1)
        browser.execute_script("window.__sameDocument = true")

        def finished():
            s = httpx.get(f"{server}/api/searches/browser", timeout=10).json()
            return s if s["status"] not in ("running", "stopping") else None

        search = wait_until(finished, SEARCH_TIMEOUT_S, "the search to finish", interval=2)
        assert search["status"] == "finished", search
        complete = search["n_complete"]
        assert complete >= 1 and complete + search["n_failed"] == TRIALS

        # The page redrew by itself: one marker per complete candidate, no reload.
        wait_until(lambda: browser.execute_script(POINTS_JS) == complete, 30,
                   f"{complete} markers on the Pareto plot")
        assert browser.execute_script("return window.__sameDocument === true")
        # The last marker can arrive before the status: the search re-times its front after its
        # last trial, then finishes; the page hears that at its next poll.
        wait_until(lambda: browser.find_element("id", "status").text == "finished", 30,
                   "the page to show the search finished")
        rows = browser.find_elements("css selector", "#candidates tbody tr")
        assert len(rows) == TRIALS
        assert browser.find_element("id", "st-progress").text == f"{TRIALS} / {TRIALS}"
        browser.set_window_size(1400, 2000)  # the whole page in the screenshot
        time.sleep(1)  # Plotly redraws responsive plots after a resize
        browser.save_screenshot(str(tmp_path / "search.png"))
        browser.set_window_size(1400, 1100)
        time.sleep(1)

        # Click a marker of the front where Plotly draws it.
        target = click_first_front_marker(browser)
        wait_until(lambda: re.search(r"/candidates/(\d+)$", browser.current_url), 20,
                   "the click to open a candidate")
        assert browser.current_url.endswith(f"/candidates/{target['id']}")
        heading = browser.find_element("tag name", "h1").text
        trial = httpx.get(f"{server}/api/candidates/{target['id']}", timeout=10).json()["trial_number"]
        assert heading.startswith(f"Trial {trial}")  # one numbering: trials, as the CLI
        assert browser.find_element("id", "export").get_attribute("href").endswith(
            f"/api/candidates/{target['id']}/export")
        wait_until(lambda: browser.execute_script(
            "return document.querySelectorAll('#loss .scatterlayer .trace').length") == 1,
            20, "the loss curve")
        browser.save_screenshot(str(tmp_path / "candidate.png"))
        assert (tmp_path / "search.png").stat().st_size > 10_000
        print(f"screenshots: {tmp_path / 'search.png'} {tmp_path / 'candidate.png'}")
    finally:
        # The search runs in its own session: end it (and its workers) if the test failed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launched["pid"], signal.SIGTERM)


def test_browse_a_search_with_rungs(server, browser, tmp_path):
    """A real search with successive halving (the driver, as `nas search` runs it) in the
    served database: the search page counts its rungs and lists its pruned candidates, a click
    redraws the hypervolume against training tokens, and a pruned candidate's page shows its
    validation loss at every rung it reached."""
    from selenium.webdriver.common.action_chains import ActionChains

    from .factories import run_rung_search

    run_rung_search(f"sqlite:///{tmp_path / 'nas.db'}", tmp_path)  # the database `server` serves
    search = httpx.get(f"{server}/api/searches/halving", timeout=30).json()
    assert search["n_pruned"] >= 1 and search["fidelity"]["eta"] == 2, search
    browser.get(server + "/searches/halving")
    wait_until(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), 30,
               "the search page to load")

    # The rung table: what the API counts, rung by rung.
    shown = [[td.text for td in tr.find_elements("css selector", "td")][:4]
             for tr in browser.find_elements("css selector", "#rungs tbody tr")]
    assert shown == [[f"{r['rung'] + 1} of 3", f"{r['tokens']:,}", str(r["reached"]), str(r["pruned"])]
                     for r in search["rungs"]]
    spent = browser.find_element("id", "tokens-spent").text
    assert f"{search['tokens_spent']:,} training tokens spent" in spent

    # A click on a pruned count lists the pruned candidates, each with its reason.
    browser.find_element("css selector", "#rungs a.show-pruned").click()
    table_rows = "#candidates tbody tr"
    wait_until(lambda: len(browser.find_elements("css selector", table_rows)) == search["n_pruned"],
               10, "the pruned candidates")
    rows = browser.find_elements("css selector", table_rows)
    assert all(r.find_element("css selector", ".badge").text == "pruned" for r in rows)
    reasons = [r.find_element("css selector", ".error").get_attribute("title") for r in rows]
    assert all(reason.startswith("pruned at rung") for reason in reasons), reasons
    assert browser.find_element("id", "state-filter").get_attribute("value") == "pruned"
    browser.set_window_size(1400, 2400)
    time.sleep(1)
    browser.save_screenshot(str(tmp_path / "search-rungs.png"))
    browser.set_window_size(1400, 1100)

    # The hypervolume against training tokens: Plotly's button, clicked where it is drawn.
    history = httpx.get(f"{server}/api/searches/halving/hypervolume", timeout=30).json()
    button = browser.find_elements("css selector", "#hypervolume .updatemenu-button")[1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    ActionChains(browser).move_to_element(button).pause(0.3).click().perform()
    wait_until(lambda: browser.execute_script(
        "const gd = document.getElementById('hypervolume');"
        "return gd.layout.xaxis.title.text === 'training tokens spent' && gd.data[0].x"),
        10, "the hypervolume against training tokens")
    xs = browser.execute_script("return document.getElementById('hypervolume').data[0].x")
    assert xs == [h["tokens"] for h in history] and xs == sorted(xs)

    # The pruned candidate that got furthest: its rung losses, a table and markers on the curve.
    pruned = httpx.get(f"{server}/api/searches/halving/candidates", params={"state": "pruned"}).json()
    furthest = max(pruned, key=lambda c: c["tokens"])
    detail = httpx.get(f"{server}/api/candidates/{furthest['id']}", timeout=30).json()
    browser.get(server + furthest["url"])
    rung_rows = browser.find_elements("css selector", "#rungs tbody tr")
    assert len(rung_rows) == len(detail["rungs"]) >= 1
    assert "pruned here" in rung_rows[-1].text
    assert [r.find_elements("css selector", "td")[1].text for r in rung_rows] == [
        f"{x['tokens']:,}" for x in detail["rungs"]]
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll('#loss .scatterlayer .trace').length") == 2, 20,
        "the training curve and the rung losses")
    marked = browser.execute_script(
        "return document.getElementById('loss').data.find(t => t.meta === 'rungs').x")
    assert marked == [x["tokens"] for x in detail["rungs"]]
    browser.set_window_size(1400, 1800)
    time.sleep(1)
    browser.save_screenshot(str(tmp_path / "candidate-rungs.png"))
    print(f"screenshots: {tmp_path / 'search-rungs.png'} {tmp_path / 'candidate-rungs.png'}")


def test_offline_report_in_the_browser(browser, tmp_path):
    """The report of a three-objective search opens from a file: plots drawn, nothing fetched,
    a click finds the candidate in the table, and the 3-D view draws."""
    from nas.report import write_report
    from nas.store import Store

    from .factories import make_search

    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        make_search(store, "cube", three_objectives=True)
        report = write_report(store, "cube", tmp_path / "report.html")
        started = store.get_search("cube").started_at
    browser.get(report.as_uri())
    wait_until(lambda: browser.execute_script(POINTS_JS) == 6, 30, "6 markers in the report")
    # The script writes dates as the templates do (nas.dates): one format in every view.
    from nas.dates import format_when

    assert browser.find_element("id", "st-started").text == format_when(started)
    assert browser.find_element("id", "st-knee").text == "knee: trial 1"
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == [], f"the report fetched {fetched}"
    rows = browser.find_elements("css selector", "#candidates tbody tr")
    assert len(rows) == 7
    target = click_first_front_marker(browser)
    wait_until(lambda: len(browser.find_elements("css selector", "#candidates tbody tr")) == 1,
               10, "the table to show the clicked candidate")
    row = browser.find_element("css selector", "#candidates tbody tr")
    assert row.get_attribute("data-id") == str(target["id"])
    browser.find_element("id", "view3d").click()
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll('#pareto .gl-container canvas, #pareto canvas').length > 0"
        " && document.getElementById('pareto').dataset.view === '3d'"), 20, "the 3-D view")
    browser.save_screenshot(str(tmp_path / "report-3d.png"))


def test_offline_report_of_a_search_with_rungs(browser, tmp_path):
    """The report counts the rungs and lists pruned candidates with nothing fetched, and its
    hypervolume plot switches to training tokens (Plotly's own buttons: no server needed)."""
    from selenium.webdriver.common.action_chains import ActionChains

    from nas.report import write_report
    from nas.store import Store

    from .factories import RUNG_COUNTS, make_rung_search

    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        make_rung_search(store, "rungs")
        report = write_report(store, "rungs", tmp_path / "report.html")
    browser.get(report.as_uri())
    wait_until(lambda: len(browser.find_elements("css selector", "#rungs tbody tr")) == 3, 30,
               "the rung table")
    counts = [[td.text for td in tr.find_elements("css selector", "td")][2:4]
              for tr in browser.find_elements("css selector", "#rungs tbody tr")]
    assert counts == [[str(reached), str(pruned)] for _, _, reached, pruned in RUNG_COUNTS]
    browser.find_element("css selector", "#rungs a.show-pruned").click()
    wait_until(lambda: len(browser.find_elements("css selector", "#candidates tbody tr")) == 3, 10,
               "the pruned candidates")
    button = browser.find_elements("css selector", "#hypervolume .updatemenu-button")[1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    ActionChains(browser).move_to_element(button).pause(0.3).click().perform()
    wait_until(lambda: browser.execute_script(
        "return document.getElementById('hypervolume').layout.xaxis.title.text") == "training tokens spent",
        10, "the hypervolume against tokens")
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def click_first_front_marker(browser) -> dict:
    """Click the front trace's first marker where Plotly drew it; returns its candidate id."""
    from selenium.webdriver.common.action_chains import ActionChains

    target = browser.execute_script("""
        const gd = document.getElementById('pareto');
        const trace = gd.data.find(t => t.meta === 'front');
        const fl = gd._fullLayout, rect = gd.getBoundingClientRect();
        return {id: trace.customdata[0], w: rect.width, h: rect.height,
                x: fl._size.l + fl.xaxis.d2p(trace.x[0]), y: fl._size.t + fl.yaxis.d2p(trace.y[0])};
    """)
    plot = browser.find_element("id", "pareto")
    ActionChains(browser).move_to_element_with_offset(
        plot, round(target["x"] - target["w"] / 2), round(target["y"] - target["h"] / 2)
    ).pause(0.5).click().perform()
    return target


@pytest.fixture
def offline_browser(tmp_path):
    """Chromium that cannot resolve any host but 127.0.0.1: a CDN asset would not load."""
    offline = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
    driver = _chromium(tmp_path, "chromium-offline", offline)
    yield driver
    driver.quit()


def test_api_docs_offline(server, offline_browser, tmp_path):
    """/api/docs renders Swagger UI's operations list with the network cut off: every asset
    comes from the server itself (the installed bundle), none from a CDN."""
    offline_browser.get(server + "/api/docs")
    wait_until(
        lambda: len(offline_browser.find_elements("css selector", ".opblock")) >= 8,
        30,
        "Swagger UI's operations list",
    )
    paths = {e.text for e in offline_browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/api/searches", "/api/searches/{name}/front"} <= paths
    fetched = offline_browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert fetched and all(url.startswith(server + "/") for url in fetched), fetched
    offline_browser.save_screenshot(str(tmp_path / "api-docs.png"))


def launch_from_the_form(browser, server: str, name: str, space_yaml: str) -> None:
    """Fill the "New search" page as a person would (own YAML, 1 trial) and submit it."""
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/new")
    browser.find_element("id", "name").clear()
    browser.find_element("id", "name").send_keys(name)
    Select(browser.find_element("id", "space")).select_by_value("")  # my own YAML
    browser.execute_script(
        "arguments[0].value = arguments[1]", browser.find_element("id", "space_yaml"), space_yaml
    )
    browser.find_element("id", "trials").send_keys("1")
    browser.find_element("id", "start").click()


def wait_for_search_page(browser, server: str, name: str) -> None:
    """The redirect lands on the search's live page ("starting", then the search itself)."""
    wait_until(
        lambda: browser.current_url == f"{server}/searches/{name}", 30, f"the redirect to /searches/{name}"
    )

    def search_page() -> bool:
        if "exited (" in browser.find_element("tag name", "h1").text:
            raise AssertionError(
                "the search process failed:\n" + browser.find_element("css selector", "pre.log").text
            )
        return browser.execute_script("return !!document.getElementById('pareto')")

    wait_until(search_page, 180, f"the page of {name} (the driver creating the search)", interval=1)


def wait_finished(server: str, name: str) -> dict:
    def finished():
        s = httpx.get(f"{server}/api/searches/{name}", timeout=10).json()
        return s if s["status"] not in ("running", "stopping") else None

    search = wait_until(finished, SEARCH_TIMEOUT_S, f"{name} to finish", interval=2)
    assert search["status"] == "finished" and search["n_complete"] == 1, search
    return search


def test_launch_from_the_new_search_page_and_compare(server, browser, tmp_path):
    """Two searches started from the "New search" form (the first after an inline error),
    each landing on its live page; then the compare page overlays their two fronts."""
    space = small_space()
    try:
        # A typo in the YAML: the form comes back with the error beside the box, naming the key.
        launch_from_the_form(browser, server, "form-a", space.replace("n_layer:", "n_layers:", 1))
        error = wait_until(
            lambda: browser.find_elements("id", "error-space_yaml"), 30, "the inline YAML error"
        )[0]
        assert "unknown key 'architecture.n_layers'" in error.text
        assert browser.find_element("id", "error-key").text == "architecture.n_layers"
        assert browser.current_url == f"{server}/new"
        browser.save_screenshot(str(tmp_path / "new-search-error.png"))

        launch_from_the_form(browser, server, "form-a", space)
        wait_for_search_page(browser, server, "form-a")
        wait_finished(server, "form-a")
        wait_until(lambda: browser.execute_script(POINTS_JS) == 1, 30, "form-a's marker")

        other = yaml.safe_load(space)
        other["seed"] = 1  # another first architecture, so the fronts differ
        launch_from_the_form(browser, server, "form-b", yaml.safe_dump(other, sort_keys=False))
        wait_for_search_page(browser, server, "form-b")
        wait_finished(server, "form-b")

        # Tick both on the list page and compare them: one plot, two fronts.
        browser.get(server + "/")
        for name in ("form-a", "form-b"):
            browser.find_element("css selector", f"input[name=names][value={name}]").click()
        browser.find_element("id", "compare-selected").click()
        wait_until(lambda: "/compare?" in browser.current_url, 20, "the compare page")
        fronts = wait_until(
            lambda: browser.execute_script(
                "const gd = document.getElementById('compare');"
                "return gd && gd.data ? gd.data.filter(t => t.mode === 'markers').map(t => t.meta) : null"
            ),
            30,
            "the compare plot",
        )
        assert fronts == ["form-a", "form-b"]
        assert len(browser.find_elements("css selector", "#compare .scatterlayer .points path.point")) == 2
        assert browser.find_elements("css selector", ".cannot-compare") == []
        browser.save_screenshot(str(tmp_path / "compare.png"))
        print(f"screenshots: {tmp_path / 'new-search-error.png'} {tmp_path / 'compare.png'}")
    finally:
        # The searches run in their own sessions: end them (and their workers) if the test failed.
        for name in ("form-a", "form-b"):
            s = httpx.get(f"{server}/api/searches/{name}", timeout=10)
            if s.status_code == 200 and s.json()["status"] in ("running", "stopping"):
                httpx.post(f"{server}/api/searches/{name}/stop", timeout=10)
