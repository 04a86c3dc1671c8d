"""Successive halving in the service: rung counts, pruned candidates, rung losses, the
hypervolume against training tokens, and launching with ``no_fidelity``.

The search is written through the store as the driver writes one (`make_rung_search`): each
promoted rung with its checkpoint, the last one with the result, snapshots with tokens.
"""

from __future__ import annotations

import re
import sys

import plotly.graph_objects as go
import pytest

from nas.report import render_report
from nas.space import SearchSpace

from .factories import RUNG_COUNTS, RUNG_TOKENS, RUNG_TOKENS_SPENT, RUNG_TRIALS
from .test_launch_page import PASTED
from .test_pages import HTML, embedded_config

PRUNED = [k for k, (_, state) in RUNG_TRIALS.items() if state == "pruned"]


def test_a_search_says_its_rungs_and_the_tokens_it_spent(rung_client):
    s = rung_client.get("/api/searches/rungs").json()
    assert s["fidelity"] == {"min_tokens": 512, "eta": 2, "rung_tokens": list(RUNG_TOKENS)}
    assert s["rung_tokens"] == list(RUNG_TOKENS)
    assert [(r["rung"], r["tokens"], r["reached"], r["pruned"]) for r in s["rungs"]] == RUNG_COUNTS
    assert s["tokens_spent"] == RUNG_TOKENS_SPENT
    assert s["n_pruned"] == len(PRUNED) == sum(r["pruned"] for r in s["rungs"])
    # The figures carry the same counts, of the version they show.
    figures = rung_client.get("/api/searches/rungs/figures", params={"part": "rungs"}).json()
    assert figures["rungs"] == s["rungs"] and figures["tokens_spent"] == RUNG_TOKENS_SPENT
    assert figures["version"] == s["version"]


def test_a_search_without_rungs_has_one_rung_the_whole_budget(rung_client):
    s = rung_client.get("/api/searches/demo").json()
    assert s["fidelity"] is None and s["rung_tokens"] == [2048]
    # Its candidates were stored before rungs were: nothing reached a stored rung, and the
    # tokens spent are not known (rather than a wrong 0).
    assert s["rungs"] == [{"rung": 0, "tokens": 2048, "reached": 0, "pruned": 0}]
    assert s["tokens_spent"] is None
    assert "rungs" not in rung_client.get("/api/searches/demo/figures", params={"part": "pareto"}).json()


def test_pruned_candidates_are_listed_with_their_reason_and_tokens(rung_client):
    r = rung_client.get("/api/searches/rungs/candidates", params={"state": "pruned"})
    rows = r.json()
    assert [c["trial_number"] for c in rows] == PRUNED and r.headers["x-total-count"] == str(len(PRUNED))
    by_trial = {c["trial_number"]: c for c in rows}
    assert by_trial[3]["error"].startswith("pruned at rung 2 of 3 (1,024 tokens")
    assert [by_trial[k]["tokens"] for k in PRUNED] == [512, 1024, 512]
    assert all(c["metrics"].get("val_loss") is None and not c["on_front"] for c in rows)
    assert all(c["feasible"] is None for c in rows)  # never ranked


@pytest.mark.parametrize("trial", [0, 3])
def test_a_candidate_has_its_rung_losses(rung_client, rung_store, trial):
    record = rung_store.candidate_by_trial("rungs", trial)
    c = rung_client.get(f"/api/candidates/{record.id}").json()
    losses, state = RUNG_TRIALS[trial]
    assert c["state"] == state and c["tokens"] == RUNG_TOKENS[len(losses) - 1]
    assert [(x["rung"], x["tokens"], x["val_loss"]) for x in c["rungs"]] == [
        (k, RUNG_TOKENS[k], pytest.approx(loss)) for k, loss in enumerate(losses)]
    assert all(x["seconds"] > 0 for x in c["rungs"])
    assert c["has_weights"] == (state == "complete")


def test_hypervolume_history_and_plot_against_tokens(rung_client):
    history = rung_client.get("/api/searches/rungs/hypervolume").json()
    assert [(h["n_complete"], h["tokens"]) for h in history] == [(1, 2048), (2, 4096), (3, 7680)]
    assert history[-1]["hypervolume"] == pytest.approx(0.3) and history[-1]["created_at"]
    fig = rung_client.get("/api/searches/rungs/figures", params={"part": "hypervolume"}).json()["hypervolume"]
    go.Figure(fig)  # valid Plotly, buttons included
    (menu,) = fig["layout"]["updatemenus"]
    by_name = {b["name"]: b for b in menu["buttons"]}
    assert by_name["tokens"]["args"][0]["x"] == [[2048, 4096, 7680]]
    assert by_name["tokens"]["args"][1] == {"xaxis.title.text": "training tokens spent"}
    assert by_name["candidates"]["args"][0]["x"] == [fig["data"][0]["x"]] == [[1, 2, 3]]
    # Snapshots older than rungs know no tokens: no buttons.
    demo = rung_client.get("/api/searches/demo/figures", params={"part": "hypervolume"}).json()
    assert "updatemenus" not in demo["hypervolume"]["layout"]
    assert {h["tokens"] for h in rung_client.get("/api/searches/demo/hypervolume").json()} == {None}


def test_the_search_page_has_the_rung_table_and_a_tokens_column(rung_client):
    html = rung_client.get("/searches/rungs", headers=HTML).text
    assert 'id="rungs-card"' in html and 'id="rungs"' in html and "512 / 1,024 / 2,048 tokens" in html
    assert "top 1/2" in html and "<option>pruned</option>" in html
    assert embedded_config(html)["search"]["fidelity"]["eta"] == 2
    assert 'id="rungs-card"' not in rung_client.get("/searches/demo", headers=HTML).text


def _rung_rows(html: str) -> list[str]:
    table = re.search(r'<table class="grid" id="rungs">(.*?)</table>', html, re.S)
    assert table, "the candidate page shows its rungs"
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()
            for row in re.findall(r"<tr>(.*?)</tr>", table.group(1).split("<tbody>")[1], re.S)]


def test_a_pruned_candidates_page_shows_its_rung_losses(rung_client, rung_store):
    record = rung_store.candidate_by_trial("rungs", 3)
    html = rung_client.get(f"/candidates/{record.id}", headers=HTML).text
    rows = _rung_rows(html)
    assert rows == ["1 of 3 512 3.9 0.1 promoted", "2 of 3 1,024 3.7 0.2 pruned here"]
    assert "pruned at rung 2 of 3" in html and "Export (zip)" not in html
    figure = re.search(r"var fig = (\{.*?\});\n", html, re.S).group(1)
    assert '"meta":"rungs"' in figure and '"x":[512,1024]' in figure


def test_a_complete_candidate_went_through_every_rung(rung_client, rung_store):
    record = rung_store.candidate_by_trial("rungs", 4)
    rows = _rung_rows(rung_client.get(f"/candidates/{record.id}", headers=HTML).text)
    assert [r.split(" ")[0:3] for r in rows] == [["1", "of", "3"], ["2", "of", "3"], ["3", "of", "3"]]
    assert rows[-1].endswith("2.6 0.3")  # the last: neither promoted nor pruned
    # Without fidelity there is one rung, the whole budget: no rung table, no rung markers.
    demo = rung_store.candidate_by_trial("demo", 1)
    page = rung_client.get(f"/candidates/{demo.id}", headers=HTML).text
    assert 'id="rungs"' not in page and '"meta":"rungs"' not in page


def test_the_report_shows_rungs_and_tokens(rung_store):
    config = embedded_config(render_report(rung_store, "rungs"))
    assert config["search"]["tokens_spent"] == RUNG_TOKENS_SPENT
    figures = config["data"]["figures"]
    assert [r["reached"] for r in figures["rungs"]] == [c[2] for c in RUNG_COUNTS]
    assert figures["hypervolume"]["layout"]["updatemenus"][0]["buttons"][1]["name"] == "tokens"
    assert sorted(c["trial_number"] for c in config["data"]["candidates"] if c["state"] == "pruned") == PRUNED


# ----- launching without fidelity ------------------------------------------------------------
def test_no_fidelity_reaches_the_search_process(writer, spawn):
    r = writer.post("/api/searches", json={"name": "full", "space": "tiny", "no_fidelity": True})
    assert r.status_code == 202, r.text
    r = writer.post("/new", data={"name": "full-form", "space": "tiny", "space_yaml": "", "trials": "",
                                  "no_fidelity": "1"}, follow_redirects=False)
    assert r.status_code == 303
    writer.post("/api/searches", json={"name": "rungs-default", "space": "tiny"})
    (api, _), (form, _), (default, _) = spawn.calls
    assert api[-1] == form[-1] == "--no-fidelity" and "--no-fidelity" not in default
    assert api[:3] == [sys.executable, "-m", "nas"]
    assert 'name="no_fidelity"' in writer.get("/new").text


@pytest.mark.parametrize("stored_rungs", [True, False])
def test_a_resume_under_other_fidelity_settings_is_refused(writer, store, spawn, stored_rungs):
    """A stopped search resumes only the way it started (with rungs or without), as `nas
    search` insists: the launcher says so at once (409), before any process starts."""
    text = PASTED + "fidelity: {min_tokens: 1024, eta: 2}\n"
    space = SearchSpace.from_yaml_text(text)
    store.create_search("halving", space=space.to_dict(), space_hash=space.hash,
                        profiles=[{"name": "cpu-1t"}], objectives=[("val_loss", "minimize")],
                        constraints=[], data={}, budget={}, trials=4, study_name="nas:halving",
                        fidelity={"min_tokens": 1024, "eta": 2, "rung_tokens": [1024, 2048, 4096]}
                        if stored_rungs else None)
    store.set_status("halving", "stopped")
    other = {"space_yaml": text, "no_fidelity": stored_rungs}  # the other way than it started
    r = writer.post("/api/searches", json={"name": "halving", **other})
    assert r.status_code == 409, r.text
    assert ("drop no_fidelity" if stored_rungs else "set no_fidelity") in r.json()["detail"]
    form = {"name": "halving", "space": "", "space_yaml": text, "trials": "",
            **({"no_fidelity": "1"} if stored_rungs else {})}
    r = writer.post("/new", data=form, follow_redirects=False)
    assert r.status_code == 409 and "resumes only that way" in r.text
    assert spawn.calls == []
    r = writer.post("/api/searches",
                    json={"name": "halving", "space_yaml": text, "no_fidelity": not stored_rungs})
    assert r.status_code == 202, r.text  # the way it started: resumed
    assert ("--no-fidelity" in spawn.calls[0][0]) is not stored_rungs
