"""HTML pages, static assets, the offline report and the `serve`/`report` commands."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

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
    assert len(figures["pareto"]) == 6 and "pareto3d" in figures  # 3 objectives: 6 axis pairs
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

    result = CliRunner().invoke(app, ["serve", "--db", db, "--host", "0.0.0.0"])
    assert isinstance(result.exception, ConfigError) and "refusing to bind" in str(result.exception)
    monkeypatch.setenv("NAS_TOKEN", "t0k")
    result = CliRunner().invoke(app, ["serve", "--db", db, "--host", "0.0.0.0"])
    assert result.exit_code == 0 and served["host"] == "0.0.0.0"
    assert "token required" in result.output
