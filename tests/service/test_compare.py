"""The compare page: fronts of searches that share objectives on one Pareto plot, and why
the others cannot join it."""

from __future__ import annotations

import html
import json
import re
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from harness import assert_documented
from nas import plots
from nas.fronts import load_front
from nas.objectives import Objective
from nas.service import create_app
from nas.service.compare_page import cannot_compare, compare, requested_names

from .factories import POINTS, make_search

HTML = {"Accept": "text/html"}
NOT_SHARED = ("demo and cube do not share objectives: val_loss, latency:cpu-1t:decode_ms "
              "vs val_loss, latency:cpu-1t:decode_ms, params")


def figure(page: str) -> dict:
    match = re.search(r"var figure = (\{.*?\});\n", page, re.DOTALL)
    assert match, "the page embeds its figure"
    return json.loads(match.group(1))


def markers(fig: dict) -> list[dict]:
    return [t for t in fig["data"] if t["mode"] == "markers"]


def problems(page: str) -> list[str]:
    return [html.unescape(m) for m in
            re.findall(r'<div class="banner bad cannot-compare" role="alert">(.*?)</div>', page, re.DOTALL)]


def test_two_searches_on_one_plot(client, shared_store):
    r = client.get("/compare?names=demo,live", headers=HTML)
    assert r.status_code == 200 and problems(r.text) == []
    fig = figure(r.text)
    plots.to_figure(fig)  # a valid Plotly figure
    traces = markers(fig)
    assert [t["meta"] for t in traces] == ["demo", "live"]
    for trace in traces:
        front = load_front(shared_store, trace["meta"])
        assert sorted(trace["customdata"]) == sorted(r.id for r in front.front)  # the one front
    assert traces[0]["marker"]["color"] != traces[1]["marker"]["color"]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("latency:cpu-1t:decode_ms")
    assert '<script src="/vendor/plotly.min.js"></script>' in r.text
    assert "https://" not in r.text and "http://" not in r.text  # nothing from a CDN
    # The table: both fronts are the same points, so each is wholly on the combined front.
    assert r.text.count("3 of 3") == 2
    # Checkboxes send repeated names: the same page.
    again = client.get("/compare?names=demo&names=live", headers=HTML)
    assert [t["meta"] for t in markers(figure(again.text))] == ["demo", "live"]


def test_the_better_front_wins_the_numbers(store):
    worse = [(loss + 0.5, ms * 2, params) for loss, ms, params in POINTS]
    make_search(store, "worse", points=worse)
    result = compare([load_front(store, "demo"), load_front(store, "worse")])
    better, other = result.rows
    assert (better["name"], other["name"]) == ("demo", "worse")
    assert better["on_combined"] == better["front_size"] == 3 and other["on_combined"] == 0
    assert better["hypervolume"] > other["hypervolume"] >= 0
    assert result.reference is not None and result.excluded == ()


def test_searches_without_shared_objectives_say_why(client):
    r = client.get("/compare?names=demo,cube", headers=HTML)
    assert r.status_code == 422
    assert problems(r.text) == [NOT_SHARED]
    assert 'id="compare"' not in r.text
    assert_documented("page-compare-no-shared-objectives", r.status_code, problems(r.text)[0])


def test_the_ones_that_share_are_still_plotted(client):
    r = client.get("/compare?names=cube,demo,live", headers=HTML)
    assert r.status_code == 200
    assert [t["meta"] for t in markers(figure(r.text))] == ["demo", "live"]  # the larger group
    assert problems(r.text) == [NOT_SHARED]


def test_directions_are_named_when_only_they_differ():
    def fake(name: str, *objectives: tuple[str, str]) -> SimpleNamespace:
        objs = tuple(Objective(m, d) for m, d in objectives)
        return SimpleNamespace(search=SimpleNamespace(name=name), objectives=objs,
                               metrics=[o.metric for o in objs])

    a = fake("a", ("val_loss", "min"), ("params", "min"))
    b = fake("b", ("val_loss", "min"), ("params", "max"))
    assert cannot_compare(a, b) == ("a and b do not share objectives: val_loss (min), params (min) "
                                    "vs val_loss (min), params (max)")


def test_three_objectives_are_compared_in_two_axes(store):
    make_search(store, "cube-a", three_objectives=True)
    make_search(store, "cube-b", three_objectives=True,
                points=[(loss + 0.1, ms, params / 2) for loss, ms, params in POINTS])
    client = TestClient(create_app(store))
    r = client.get("/compare?names=cube-a,cube-b&x=params&y=val_loss", headers=HTML)
    assert r.status_code == 200
    fig = figure(r.text)
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("params")
    assert fig["layout"]["yaxis"]["title"]["text"].startswith("val_loss")
    assert len(markers(fig)) == 2
    assert '<option value="params" selected>' in r.text
    bad = client.get("/compare?names=cube-a,cube-b&x=speed", headers=HTML)
    assert bad.status_code == 200 and problems(bad.text)[0].startswith(
        "x='speed' is not an objective these searches share, nor a metric all their profiles measure "
        "(val_loss, latency:cpu-1t:decode_ms, params, latency:cpu-1t:prefill_ms)")
    assert fig != figure(bad.text)  # drawn on the default axes instead


def test_picking_searches(client):
    r = client.get("/compare", headers=HTML)
    assert r.status_code == 200 and problems(r.text) == []
    for name in ("demo", "live", "cube"):
        assert f'name="names" value="{name}"' in r.text
    one = client.get("/compare?names=demo", headers=HTML)
    assert one.status_code == 422
    assert 'name="names" value="demo" id="pick-1" checked' in one.text
    assert_documented("page-compare-one-search", one.status_code, problems(one.text)[0])


def test_too_many_searches(client):
    names = ",".join(f"s{k}" for k in range(9))
    r = client.get(f"/compare?names={names}", headers=HTML)
    assert_documented("page-compare-too-many", r.status_code, problems(r.text)[0])


def test_an_unknown_search_is_not_found(client):
    r = client.get("/compare?names=demo,nope", headers=HTML)
    assert r.status_code == 404 and "no search named &#39;nope&#39;" in r.text


def test_the_list_page_links_the_compare_page(client):
    page = client.get("/", headers=HTML).text
    assert '<form id="compare-form" class="compare-bar" method="get" action="/compare">' in page
    assert 'name="names" value="demo" form="compare-form"' in page
    rows = client.get("/partials/searches", headers=HTML).text  # the live refresh keeps them
    assert 'name="names" value="live" form="compare-form"' in rows


@pytest.mark.parametrize(("given", "names"), [
    (["a,b"], ["a", "b"]), (["a", "b", "a"], ["a", "b"]), ([" a , ,b,"], ["a", "b"]), ([], []),
])
def test_requested_names(given, names):
    assert requested_names(given) == names
