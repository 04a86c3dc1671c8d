"""HTML pages, static assets, the offline report and the `serve`/`report` commands."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from typer.testing import CliRunner

from harness import assert_documented
from nas.errors import ConfigError, NotFoundError
from nas.report import render_report, write_report
from nas.service.templating import plotly_js_path, script_json

HTML = {"Accept": "text/html,application/xhtml+xml"}


def embedded_config(html: str) -> dict:
    match = re.search(r"window\.NAS = (\{.*?\});</script>", html, re.S)
    assert match, "the page embeds its configuration"
    return json.loads(match.group(1))


def test_searches_page(client):
    r = client.get("/", headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for name in ("demo", "live", "cube"):
        assert f'href="/searches/{name}"' in html
        assert f'src="/searches/{name}/thumbnail.svg?v=' in html
    assert "status-finished" in html and "status-running" in html
    assert 'id="live" class="live"' in html  # a running search: the page polls
    rows = client.get("/partials/searches", headers=HTML)
    assert rows.status_code == 200 and rows.headers["x-active"] == "1" and "<tr>" in rows.text


def test_thumbnail(client):
    r = client.get("/searches/demo/thumbnail.svg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.text.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "<polyline" in r.text


def test_search_page(client):
    r = client.get("/searches/demo", headers=HTML)
    assert r.status_code == 200
    html = r.text
    for element in ('id="pareto"', 'id="hypervolume"', 'id="parallel"', 'id="candidates"',
                    'id="ax-x"', 'id="filter"', 'id="state-filter"', 'id="stop"'):
        assert element in html
    assert 'id="view3d"' not in html  # two objectives
    assert '<script src="/vendor/plotly.min.js"></script>' in html
    assert "https://" not in html and "http://" not in html  # nothing from a CDN
    config = embedded_config(html)
    assert config["offline"] is False and config["axes"] == ["latency:cpu-1t:decode_ms", "val_loss"]
    assert config["api"]["figures"] == "/api/searches/demo/figures"
    assert config["search"]["front_size"] == 3
    assert 'id="view3d"' in client.get("/searches/cube", headers=HTML).text


def test_candidate_page(client, shared_store):
    record = shared_store.candidate_by_trial("demo", 1)
    r = client.get(f"/candidates/{record.id}", headers=HTML)
    assert r.status_code == 200
    html = r.text
    assert f'href="/api/candidates/{record.id}/export"' in html and "Export (zip)" in html
    assert "knee of the front" in html and record.architecture.describe() in html
    assert "cpu-1t" in html and "decode" in html and "p90" in html and "2.0%" in html  # CV
    assert 'id="loss"' in html and '"type":"scatter"' in html
    assert 'href="/searches/demo"' in html


def test_failed_candidate_page_escapes_the_error(client, shared_store):
    failed = shared_store.candidate_by_trial("demo", 6)
    html = client.get(f"/candidates/{failed.id}", headers=HTML).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "Export (zip)" not in html  # only complete candidates export


def test_running_candidate_page_polls(client, shared_store):
    running = shared_store.candidate_by_trial("live", 7)
    html = client.get(f"/candidates/{running.id}", headers=HTML).text
    assert running.state == "running" and "window.location.reload()" in html


def test_unknown_pages_are_404_pages(client):
    r = client.get("/searches/nope", headers=HTML)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "no search named &#39;nope&#39;" in r.text
    r = client.get("/candidates/999999", headers=HTML)
    assert r.status_code == 404 and "no candidate with id 999999" in r.text
    assert client.get("/candidates/x", headers=HTML).status_code == 422


def test_plotly_is_served_from_the_package(client):
    r = client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert r.content == plotly_js_path().read_bytes()
    for asset in ("/static/search.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_script_json_cannot_close_the_script():
    text = str(script_json({"x": "</script><script>alert(1)</script>", "nan": float("nan")}))
    assert "</" not in text and "<" not in text
    assert json.loads(text) == {"x": "</script><script>alert(1)</script>", "nan": None}


# ----- offline report --------------------------------------------------------------------------
def test_report_is_self_contained(shared_store, tmp_path):
    path = write_report(shared_store, "cube", tmp_path / "report.html")
    html = path.read_text()
    # No network: no external scripts, styles or images; plotly.js is inline.
    assert not re.search(r"<(script|img|iframe)[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=\"https?:", html)
    assert "/vendor/plotly.min.js" not in html and "/static/" not in html
    assert plotly_js_path().read_text()[:200] in html
    config = embedded_config(html)
    assert config["offline"] is True and len(config["data"]["candidates"]) == 7
    figures = config["data"]["figures"]
    # 3 objectives: 6 axis pairs; and the one measured metric that is no objective
    # (latency:cpu-1t:prefill_ms) against the first objective
    assert len(figures["pareto"]) == 7 and "pareto3d" in figures
    assert {"hypervolume", "parallel"} <= set(figures)
    markers = [t for t in figures["pareto"]["latency:cpu-1t:decode_ms|val_loss"]["data"]
               if t.get("mode") == "markers"]
    assert sum(len(t["customdata"]) for t in markers) == 6
    assert "offline report" in html and 'id="stop"' not in html


def test_report_of_unknown_search(shared_store):
    with pytest.raises(NotFoundError, match="nope"):
        render_report(shared_store, "nope")


def test_report_and_serve_commands(shared_store, tmp_path, monkeypatch):
    from nas.cli import app

    db = f"sqlite:///{shared_store.engine.url.database}"
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "demo", "--db", db, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1_000_000 and "wrote" in result.output

    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda web, **kw: served.update(kw, app=web))
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--db", db, "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served["host"] == "127.0.0.1" and served["port"] == 8123

    result = CliRunner().invoke(app, ["serve", "--db", db, "--host", "0.0.0.0", "--port", "8123"])
    assert isinstance(result.exception, ConfigError) and "refusing to bind" in str(result.exception)
    monkeypatch.setenv("NAS_TOKEN", "t0k")
    result = CliRunner().invoke(app, ["serve", "--db", db, "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 0 and served["host"] == "0.0.0.0"
    assert "token required" in result.output


# ----- issue 12: offline API docs, HTML 404s, one numbering, one date format ----------------
def test_api_docs_are_served_from_the_package(client):
    """Swagger UI comes from the installed bundle, as plotly.js does: the page works offline."""
    from nas.service.api_docs import swagger_ui_dir

    html = client.get("/api/docs").text
    assert "SwaggerUIBundle" in html and "'/api/openapi.json'" in html
    assert "https://" not in html and "http://" not in html  # no CDN, no favicon from elsewhere
    assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css"),
                        ("favicon-32x32.png", "image/png")):
        assert f'"/vendor/swagger-ui/{asset}"' in html
        r = client.get(f"/vendor/swagger-ui/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert r.content == (swagger_ui_dir() / asset).read_bytes()
    # Swagger UI 5: the first major version that renders the OpenAPI 3.1 FastAPI writes.
    assert "/swagger-ui-5." in str(swagger_ui_dir())
    assert client.get("/api/openapi.json").json()["openapi"].startswith("3.1")
    assert client.get("/vendor/swagger-ui/index.html").status_code == 404  # only what the page loads
    assert client.get("/api/redoc").status_code == 404  # one docs page


@pytest.mark.parametrize("accept", [None, "*/*", "text/html,application/xhtml+xml"])
@pytest.mark.parametrize(
    "path, message",
    [
        ("/searches/nope", "no search named &#39;nope&#39;"),
        ("/candidates/999999", "no candidate with id 999999"),
        ("/no/such/page", "there is no page at /no/such/page"),
    ],
)
def test_html_routes_answer_404_with_a_page(client, path, message, accept):
    """A browser, curl (``*/*``) or no Accept at all: a page in the site's look, a link home."""
    r = client.get(path, headers={"Accept": accept} if accept else {"Accept": ""})
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), r.text
    html = r.text
    assert message in html and "<h1>Not found" in html
    assert 'class="topbar"' in html and 'href="/static/style.css"' in html  # the site's look
    assert 'class="btn primary" href="/"' in html


def test_api_404s_stay_json(client):
    for path in ("/api/searches/nope", "/api/candidates/999999", "/api/nope"):
        for accept in ("text/html", "*/*"):
            r = client.get(path, headers={"Accept": accept})
            assert r.status_code == 404 and r.headers["content-type"] == "application/json", path
            assert isinstance(r.json()["detail"], str)
    # A client that asks for JSON only gets JSON from a page route too.
    r = client.get("/searches/nope", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json() == {
        "detail": "no search named 'nope' (existing: demo, live, cube)"
    }


def test_candidate_page_says_trial_not_candidate_id(client, shared_store):
    record = shared_store.candidate_by_trial("demo", 4)
    assert record.id != 4  # the fixture's ids and trial numbers differ, or this proves nothing
    html = client.get(f"/candidates/{record.id}", headers=HTML).text
    assert "<title>Trial 4 · demo · nas</title>" in html
    assert re.search(r"<h1>Trial 4\b", html) and f"candidate {record.id}" not in html


def test_search_page_script_shows_the_knee_as_a_trial():
    from nas.service.templating import static_text

    js = static_text("search.js")
    assert '"knee: trial " + figs.knee_trial' in js and "knee: candidate" not in js


def test_one_date_format_in_pages_and_report(client, shared_store, tmp_path):
    from datetime import datetime, timedelta, timezone

    from nas.dates import format_when
    from nas.service.templating import environment, static_text

    aware = datetime(2026, 12, 1, 22, 46, 59, tzinfo=timezone(timedelta(hours=1)))
    assert format_when(aware) == "2026-12-01 21:46 UTC" and format_when(None) == "–"
    assert environment().filters["when"] is format_when
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")
    record = shared_store.candidate_by_trial("demo", 1)
    page = client.get(f"/candidates/{record.id}", headers=HTML).text
    assert f"started {format_when(record.started_at)}" in page
    rows = client.get("/", headers=HTML).text
    assert format_when(shared_store.get_search("demo").created_at) in rows
    assert not re.search(r"\d\d:\d\d:\d\d UTC", page + rows)  # no second format with seconds
    report = write_report(shared_store, "demo", tmp_path / "r.html").read_text()
    assert re.search(r"written " + stamp.pattern, report)
    # The script formats the API's ISO timestamps the same way (checked in a browser in
    # test_browser.py); the hypervolume hover text comes from nas.plots with format_when.
    assert '" UTC"' in static_text("search.js") and "toLocaleString()" not in static_text("search.js")
    hover = embedded_config(report)["data"]["figures"]["hypervolume"]["data"][0]["customdata"]
    assert all(stamp.fullmatch(when) for _, when in hover)


DOCUMENTED_PAGES = {
    "page-unknown-search": "/searches/nope",
    "page-unknown-candidate": "/candidates/999999",
    "page-unknown-path": "/no/such/page",
    "docs-unknown-asset": "/vendor/swagger-ui/index.html",
}


@pytest.mark.parametrize("row_id", sorted(DOCUMENTED_PAGES))
def test_documented(row_id, client):
    """docs/bad-input.md's rows for pages: the message the 404 page shows, as curl gets it."""
    r = client.get(DOCUMENTED_PAGES[row_id], headers={"Accept": "*/*"})
    assert r.headers["content-type"].startswith("text/html")
    shown = re.search(r'<p class="error-message">(.*?)</p>', r.text, re.DOTALL)
    assert shown, r.text
    assert_documented(row_id, r.status_code, unescape(shown.group(1)))


def test_a_search_whose_driver_was_lost_says_so(client, monkeypatch):
    """'live' is stored as running with one trial in flight; once its heartbeat is stale the
    pages and the API say 'driver lost' and count the trial as interrupted, not running."""
    monkeypatch.setattr("nas.store.records.STALE_AFTER_SECONDS", -1.0)
    html = client.get("/", headers=HTML).text
    assert "status-driver-lost" in html and "1 interrupted" in html
    page = client.get("/searches/live", headers=HTML).text
    assert 'class="badge status-driver-lost">driver lost<' in page
    listed = {s["name"]: s for s in client.get("/api/searches").json()}
    assert listed["live"]["status"] == "driver lost"
    assert (listed["live"]["n_running"], listed["live"]["n_interrupted"]) == (0, 1)


def test_an_infeasible_candidate_is_shown_with_its_state_and_counted(store, writer):
    """Broken in the shape step, never trained: counted in lists, badged on its page, listed by
    the API's state filter, and shown by `nas show --all`, yet never on the front."""
    from nas.fronts import load_front
    from nas.results import CandidateResult
    from nas.terminal import make_console, trials_table

    from .factories import arch, make_search

    make_search(store, "inf", failed=0)
    n = len(store.candidates("inf"))
    reason = "violates latency:cpu-1t:decode_ms <= 0.05 (measured 0.081)"
    store.start_candidate("inf", n, arch(n))
    cid = store.finish_candidate("inf", n, CandidateResult(
        arch(n), "infeasible", metrics={"params": 1e5, "latency:cpu-1t:decode_ms": 0.081},
        error=reason, timings={"export": 0.1, "latency": 0.2, "total": 0.3})).id
    listed = {s["name"]: s for s in writer.get("/api/searches").json()}
    assert listed["inf"]["n_infeasible"] == 1
    assert "1 infeasible" in writer.get("/", headers=HTML).text
    page = writer.get(f"/candidates/{cid}", headers=HTML).text
    assert 'class="badge state-infeasible">infeasible<' in page and "measured 0.081" in page
    rows = writer.get("/api/searches/inf/candidates", params={"state": "infeasible"}).json()
    assert [r["id"] for r in rows] == [cid] and rows[0]["feasible"] is False
    analysis = load_front(store, "inf")
    assert cid not in analysis.front_ids and [r.id for r in analysis.infeasible] == [cid]
    console = make_console()
    with console.capture() as captured:
        console.print(trials_table(console, analysis))
    assert "infeasible" in captured.get() and reason in captured.get()
