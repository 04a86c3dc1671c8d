"""Workload measurements and re-timings on the pages, the JSON API and the offline report.

A real SQLite store (`tests.service.workloads`: a search on a long-context workload profile,
its front re-timed once) behind the real app, read through FastAPI's TestClient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from html import unescape
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from nas import plots
from nas.fronts import load_front
from nas.service import create_app
from nas.service.schemas import CandidateOut, FrontOut, RetimeOut
from nas.store import Store

from .workloads import (
    LONG,
    MACHINE,
    OBJECTIVE,
    RETIMED,
    SEARCHED,
    api_latency,
    make_retimed_search,
)

HTML = {"Accept": "text/html"}
TTFT, PEAK, TPS = f"latency:{LONG}:ttft_ms", f"memory:{LONG}:peak_mb", f"throughput:{LONG}:tokens_per_s"
DECODE_2048 = OBJECTIVE


@pytest.fixture(scope="module")
def retimed(tmp_path_factory) -> Iterator[tuple[Store, dict[int, int]]]:
    with Store(f"sqlite:///{tmp_path_factory.mktemp('long') / 'nas.db'}") as store:
        yield store, make_retimed_search(store, "long")


@pytest.fixture(scope="module")
def client(retimed) -> TestClient:
    return TestClient(create_app(retimed[0]))


def section(html: str, start: str, end: str = "</table>") -> str:
    """The HTML from ``start`` to the next ``end`` (inclusive): one table of a page."""
    i = html.index(start)
    return html[i:html.index(end, i) + len(end)]


def cells(row_html: str) -> list[str]:
    return [unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, flags=re.S)]


def row(html: str, metric: str) -> list[str]:
    match = re.search(rf'<tr data-metric="{re.escape(metric)}">(.*?)</tr>', html, flags=re.S)
    assert match, f"no row for {metric}"
    return cells(match.group(1))


# ----- the candidate page --------------------------------------------------------------------
def test_candidate_page_shows_the_workload_table_with_intervals(client, retimed):
    store, ids = retimed
    html = client.get(f"/candidates/{ids[2]}", headers=HTML).text
    workload = section(html, f'id="latency-{LONG}"', '<table class="grid earlier">')
    assert "measurement 1: re-timing 1" in workload
    head = section(workload, "<thead>", "</thead>")
    assert [unescape(h) for h in re.findall(r"<th[^>]*>([^<]*)</th>", head)] == [
        "quantity", "median (ms)", "p90 (ms)", "CV", "95% interval (ms)", "runs"]
    # Every quantity the measurement holds, by metric name, in order.
    assert re.findall(r'<tr data-metric="([^"]+)">', workload) == [
        f"latency:{LONG}:{q}"
        for q in ("prefill_ms", "decode_ms", "decode_ms@2048", "ttft_ms", "generate_ms")]
    median, (lo, hi) = RETIMED[2]
    assert row(workload, DECODE_2048) == ["decode_ms@2048", f"{median:.4g}", f"{median * 1.1:.4g}", "3.0%",
                                          f"{lo:.4g} – {hi:.4g}", "10"]
    lat = store.candidate(ids[2]).latencies[0]
    memory = section(workload, '<table class="grid workload-memory">')
    assert all(f"{h} (MB)" in memory for h in ("measured peak", "estimate", "measured − estimate"))
    values = cells(memory)
    assert values[0] == f"{lat.tokens_per_s:.4g}"
    # tokens/s interval: batch * new_tokens over the generate time's interval, ends swapped
    g = lat.stats()["generate_ms"]
    work = lat.tokens_per_s * g.median_ms
    assert values[1] == f"{work / g.ci_high_ms:.4g} – {work / g.ci_low_ms:.4g}"
    assert values[2:] == [f"{lat.peak_mb:.4g}", f"{lat.estimate_mb:.4g}", "+2 (+10%)"]
    # The machine: its summary, and every flag behind <details>.
    assert f"measured on {MACHINE.summary}" in workload
    details = section(workload, "<details>", "</details>")
    assert " ".join(MACHINE.flags) in details and MACHINE.hash in details and "1.17.0" in details


def test_candidate_page_lists_earlier_measurements(client, retimed):
    store, ids = retimed
    html = client.get(f"/candidates/{ids[2]}", headers=HTML).text
    earlier = section(html, '<table class="grid earlier">')
    rows = re.findall(r'<tr data-measurement="(\d+)">(.*?)</tr>', earlier, flags=re.S)
    assert [n for n, _ in rows] == ["0"]
    searched = cells(rows[0][1])
    assert searched[0] == "0: the search's" and searched[1] == MACHINE.summary
    assert searched[4] == f"{SEARCHED[2][1]:.4g}"  # decode_ms@2048 as the search measured it
    # A candidate never re-timed: no interval column, no earlier measurements.
    plain = client.get(f"/candidates/{ids[4]}", headers=HTML).text
    table = section(plain, f'id="latency-{LONG}"')
    assert "95% interval" not in table and "measurement 0: the search's" in unescape(table)
    assert 'class="grid earlier"' not in plain


def test_candidate_page_marks_the_unresolved_pair_and_intervals(client, retimed):
    _, ids = retimed
    html = client.get(f"/candidates/{ids[2]}", headers=HTML).text
    objective = re.search(rf'<tr class="objective" data-metric="{re.escape(DECODE_2048)}">(.*?)</tr>',
                          html, flags=re.S).group(1)
    assert 'class="unresolved"' in objective and "against trial 1" in objective
    assert "[3.3, 3.6]" in objective
    note = re.search(r'<p class="small muted unresolved-note">(.*?)</p>', html, flags=re.S).group(1)
    assert f'href="/candidates/{ids[1]}">trial 1</a>' in note and DECODE_2048 in note
    # Trial 3 was re-timed but every pair with it is resolved: an interval, no mark.
    other = client.get(f"/candidates/{ids[3]}", headers=HTML).text
    assert "unresolved-note" not in other and "[2.1, 2.3]" in other


# ----- the JSON API --------------------------------------------------------------------------
def test_candidate_json_round_trips_every_measurement(client, retimed):
    store, ids = retimed
    data = client.get(f"/api/candidates/{ids[2]}").json()
    CandidateOut.model_validate(data)
    assert [api_latency(x) for x in data["latencies"]] == list(store.candidate(ids[2]).latencies)
    assert [api_latency(x) for x in data["latency_history"]] == store.latency_history(ids[2])
    assert [x["measurement"] for x in data["latency_history"]] == [0, 1]
    lat = data["latencies"][0]
    assert lat["retimed"] and lat["measurement"] == 1
    assert lat["stats"]["decode_ms@2048"]["ci_low_ms"] == RETIMED[2][1][0]
    assert lat["memory_diff_mb"] == pytest.approx(lat["peak_mb"] - lat["estimate_mb"])
    assert lat["machine"]["summary"] == MACHINE.summary and lat["machine"]["hash"] == MACHINE.hash
    assert lat["machine"]["hostname"] == "node-a" and lat["machine"]["flags"] == list(MACHINE.flags)
    assert data["intervals"][DECODE_2048] == list(RETIMED[2][1])
    assert set(data["intervals"]) >= {TTFT, TPS} and PEAK not in data["intervals"]
    assert data["unresolved"] == [{"id": ids[1], "trial_number": 1, "metric": DECODE_2048}]
    # The JSON names survive a round trip through the API's own encoder unchanged.
    assert json.loads(json.dumps(data))["metrics"][DECODE_2048] == RETIMED[2][0]


def test_retimes_endpoint_and_front(client, retimed):
    _, ids = retimed
    (retime,) = client.get("/api/searches/long/retimes").json()
    RetimeOut.model_validate(retime)
    trials = {name: [c["trial_number"] for c in retime[name]]
              for name in ("members", "front_before", "front_after", "entered", "left")}
    assert trials == {"members": [0, 1, 2, 3], "front_before": [0, 1, 2], "front_after": [0, 2, 3],
                      "entered": [3], "left": [1]}
    assert retime["number"] == 1 and retime["rounds"] == 2 and retime["n_unresolved"] == 1
    assert retime["machine"]["summary"] == MACHINE.summary and retime["profiles"] == [LONG]
    (pair,) = retime["unresolved"]
    assert (pair["a"]["trial_number"], pair["b"]["trial_number"], pair["metric"]) == (2, 1, DECODE_2048)
    assert pair["a"]["url"] == f"/candidates/{ids[2]}"

    front = client.get("/api/searches/long/front").json()
    FrontOut.model_validate(front)
    assert sorted(c["trial_number"] for c in front["candidates"]) == [0, 2, 3]
    assert front["retime"]["number"] == 1
    by_trial = {c["trial_number"]: c for c in front["candidates"]}
    assert by_trial[2]["intervals"][DECODE_2048] == list(RETIMED[2][1])
    assert [u["trial_number"] for u in by_trial[2]["unresolved"]] == [1]
    assert by_trial[0]["unresolved"] == []
    rows = {r["trial_number"]: r for r in client.get("/api/searches/long/candidates").json()}
    assert [u["trial_number"] for u in rows[1]["unresolved"]] == [2]  # both ways round
    assert rows[4]["intervals"] == {} and rows[4]["unresolved"] == []
    (drawn,) = client.get("/api/searches/long/figures", params={"part": "retimes"}).json()["retimes"]
    assert datetime.fromisoformat(drawn.pop("created_at")) == datetime.fromisoformat(retime.pop("created_at"))
    assert drawn == retime


def test_a_search_never_retimed_has_none(tmp_path):
    from .factories import make_search

    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        make_search(store, "demo")
        client = TestClient(create_app(store))
        assert client.get("/api/searches/demo/retimes").json() == []
        front = client.get("/api/searches/demo/front").json()
        assert front["retime"] is None and all(c["intervals"] == {} for c in front["candidates"])
        assert client.get("/api/searches/nope/retimes").status_code == 404


# ----- workload metrics as plot axes ---------------------------------------------------------
def test_search_page_offers_workload_metrics_as_axes(client):
    html = client.get("/searches/long", headers=HTML).text
    select = section(html, '<select id="ax-x">', "</select>")
    objectives, measured = re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', select, flags=re.S)
    assert objectives[0] == "objectives" and measured[0] == "measured on the profiles"
    assert re.findall(r'<option value="([^"]+)"', objectives[1]) == ["val_loss", DECODE_2048]
    assert re.findall(r'<option value="([^"]+)"', measured[1]) == [
        f"latency:{LONG}:prefill_ms", f"latency:{LONG}:decode_ms", TTFT, f"latency:{LONG}:generate_ms",
        TPS, PEAK, f"memory:{LONG}:estimate_mb"]
    assert 'id="retimes-card"' in html and 'id="table-note"' in html


@pytest.mark.parametrize("x", [TTFT, PEAK, TPS, f"latency:{LONG}:decode_ms"])
def test_figures_take_a_workload_metric_as_axis(client, retimed, x):
    store, ids = retimed
    r = client.get("/api/searches/long/figures", params={"x": x, "y": "val_loss", "part": "pareto"})
    assert r.status_code == 200, r.text
    figs = r.json()
    assert figs["axes"] == [x, "val_loss"] and x in figs["axis_metrics"]
    pareto = figs["pareto"]
    direction = "higher" if x.startswith("throughput:") else "lower"
    assert pareto["layout"]["xaxis"]["title"]["text"] == f"{x} ({direction} is better)"
    markers = [t for t in pareto["data"] if t.get("mode") == "markers"]
    drawn = {i: xv for t in markers for i, xv in zip(t["customdata"], t["x"])}
    assert drawn == {ids[k]: store.candidate(ids[k]).metrics[x] for k in SEARCHED}
    front = next(t for t in markers if t["meta"] == "front")
    assert sorted(front["customdata"]) == sorted(ids[k] for k in (0, 2, 3))  # the search's front
    hover = dict(zip(front["customdata"], front["text"]))[ids[2]]
    assert f"{DECODE_2048}: 3.4 [3.3, 3.6]" in hover and f"{x}: " in hover  # re-timed: its interval
    # The same request, written by hand: ':' and '@' percent-encoded in the query string.
    raw = client.get(f"/api/searches/long/figures?x={quote(x, safe='')}&y=val_loss&part=pareto")
    assert raw.json()["axes"] == [x, "val_loss"]


def test_figures_refuse_a_metric_no_profile_measures(client):
    r = client.get("/api/searches/long/figures", params={"x": f"latency:{LONG}:decode_ms@4096"})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", "x"] and "nor a metric its profiles measure" in detail["msg"]
    assert TTFT in detail["msg"]


def test_pareto_data_on_measured_axes(retimed):
    store, ids = retimed
    analysis = load_front(store, "long")
    data = plots.pareto_data(analysis, (TPS, PEAK))
    assert [a.direction for a in data.axes] == ["max", "min"]
    # Step line: the front of these two axes, throughput up and peak down. Trial 0 has the
    # highest throughput and the lowest peak, so it alone is that front (taken the wrong way
    # round, every trial would be on it).
    trial0 = store.candidate(ids[0]).metrics
    assert list(zip(*data.step)) == [(trial0[TPS], trial0[PEAK])]
    assert data.hidden_ids == []
    with pytest.raises(ValueError, match="nor a metric its profiles measure"):
        plots.pareto_data(analysis, ("val_loss", "latency:other:ttft_ms"))


def test_compare_page_offers_shared_workload_metrics(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as store:
        make_retimed_search(store, "long-a")
        make_retimed_search(store, "long-b")
        client = TestClient(create_app(store))
        r = client.get(f"/compare?names=long-a,long-b&x={quote(TTFT)}&y=val_loss", headers=HTML)
        assert r.status_code == 200
        assert f'<option value="{TTFT}" selected>' in r.text
        assert 'optgroup label="measured on every search\'s profiles"' in r.text
        figure = json.loads(re.search(r"var figure = (\{.*?\});\n", r.text, flags=re.S).group(1))
        assert figure["layout"]["xaxis"]["title"]["text"].startswith(TTFT)


# ----- the offline report --------------------------------------------------------------------
def test_report_embeds_intervals_retimes_and_measured_axes(retimed):
    from nas.report import render_report

    store, ids = retimed
    html = render_report(store, "long")
    config = json.loads(re.search(r"window\.NAS = (\{.*?\});</script>", html, flags=re.S).group(1))
    data = config["data"]
    (retime,) = data["figures"]["retimes"]
    assert [c["trial_number"] for c in retime["entered"]] == [3]
    rows = {r["trial_number"]: r for r in data["candidates"]}
    assert rows[2]["intervals"][DECODE_2048] == list(RETIMED[2][1])
    assert [u["trial_number"] for u in rows[2]["unresolved"]] == [1]
    assert f"{TTFT}|val_loss" in data["figures"]["pareto"] and f"{PEAK}|val_loss" in data["figures"]["pareto"]
    assert f'<option value="{TTFT}"' in html
