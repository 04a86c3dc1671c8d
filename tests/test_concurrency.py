"""Readers while a search writes, on SQLite and PostgreSQL: `nas serve` and optuna-dashboard.

One real search per database (the CLI, in a child process) is read throughout by both
readers as fast as they answer: the service's JSON API (`create_app(store)` under FastAPI's
TestClient, its own `Store`) and the real `optuna-dashboard` server (a child process) over
its JSON API. Every response must be a success (404 only before the search exists), and at
the end the dashboard must list the study with the search's objective names. A search with
successive halving shows its pruned candidates there as Optuna's PRUNED trials.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from service.factories import run_rung_search

from harness import assert_optuna_agrees, free_port, kill_session, pg_database, search_args, start, wait_for
from nas.service import create_app
from nas.store import Store

pytestmark = pytest.mark.slow
NAME = "readers"
TRIALS = 2
POLL_S = 0.05  # a pause between rounds leaves the search a core on this 2-core machine
OBJECTIVES = ["val_loss", "latency:e2e-1t:decode_ms"]
DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")


@dataclass
class Observed:
    """What the readers saw during one search."""

    url: str
    serve: Counter = field(default_factory=Counter)  # HTTP status -> count
    serve_errors: list[str] = field(default_factory=list)
    candidate_counts: list[int] = field(default_factory=list)  # finished candidates, per poll
    dashboard: Counter = field(default_factory=Counter)
    dashboard_errors: list[str] = field(default_factory=list)
    dashboard_trial_counts: list[int] = field(default_factory=list)
    studies: list[dict] = field(default_factory=list)  # the dashboard's study list at the end
    detail: dict = field(default_factory=dict)  # the dashboard's view of our study at the end
    final_search: dict = field(default_factory=dict)
    final_candidates: list[dict] = field(default_factory=list)


class Dashboard:
    """``optuna-dashboard URL --port P``, the real server, in a session of its own."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        self.proc = start([str(DASHBOARD), url, "--host", "127.0.0.1", "--port", str(self.port), "--quiet"])
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        wait_for(self._up, 60, "optuna-dashboard to answer", self.proc)

    def _up(self) -> bool:
        try:
            return self.http.get("/api/meta").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.http.close()
        kill_session(self.proc)


def _poll_serve(client: TestClient, seen: Observed) -> bool:
    """One round of the reads a browser on the search's page makes; True once it is finished."""
    search = client.get(f"/api/searches/{NAME}")
    candidates = client.get(f"/api/searches/{NAME}/candidates")
    listing = client.get("/api/searches")
    finished = False
    for response in (search, candidates, listing):
        seen.serve[response.status_code] += 1
        if response.status_code not in (200, 404) or (
            response.status_code == 404 and search.status_code == 200
        ):
            seen.serve_errors.append(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    if candidates.status_code == 200:
        seen.candidate_counts.append(sum(c["state"] in ("complete", "failed") for c in candidates.json()))
    if search.status_code == 200:
        finished = search.json()["status"] == "finished"
    return finished


def _poll_dashboard(dashboard: Dashboard, seen: Observed) -> None:
    listing = dashboard.http.get("/api/studies")
    seen.dashboard[listing.status_code] += 1
    if listing.status_code != 200:
        seen.dashboard_errors.append(f"/api/studies: {listing.status_code} {listing.text[:300]}")
        return
    ours = [s for s in listing.json()["study_summaries"] if s["study_name"] == f"nas:{NAME}"]
    if ours:
        detail = dashboard.http.get(f"/api/studies/{ours[0]['study_id']}")
        seen.dashboard[detail.status_code] += 1
        if detail.status_code != 200:
            seen.dashboard_errors.append(f"study detail: {detail.status_code} {detail.text[:300]}")
        else:
            seen.dashboard_trial_counts.append(len(detail.json()["trials"]))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def observed(request, tmp_path_factory) -> Iterator[Observed]:
    """Run one search on the database while both readers poll it; what they saw."""
    if request.param == "sqlite":
        yield _observe(f"sqlite:///{tmp_path_factory.mktemp('readers') / 'nas.db'}")
    else:
        with pg_database(request.getfixturevalue("postgres_url")) as url:
            yield _observe(url)


def _observe(url: str) -> Observed:
    seen = Observed(url)
    search = start(search_args(NAME, url, trials=TRIALS))
    dashboard: Dashboard | None = None
    try:
        with Store(url) as store:
            client = TestClient(create_app(store))
            finished = False
            while not finished and search.poll() is None:
                finished = _poll_serve(client, seen)
                # The dashboard opens the database once the search has asked for a candidate, so
                # Optuna's tables exist (both creating them at once would race on the DDL).
                if dashboard is None and store.find_search(NAME) and store.candidates(NAME):
                    dashboard = Dashboard(url)
                if dashboard is not None:
                    _poll_dashboard(dashboard, seen)
                time.sleep(POLL_S)
            _out, err = search.communicate(timeout=240)
            assert search.returncode == 0, err
            _poll_serve(client, seen)
            seen.final_search = client.get(f"/api/searches/{NAME}").json()
            seen.final_candidates = client.get(f"/api/searches/{NAME}/candidates").json()
            assert dashboard is not None, "the search never appeared in the store"
            seen.studies = dashboard.http.get("/api/studies").json()["study_summaries"]
            ours = next(s for s in seen.studies if s["study_name"] == f"nas:{NAME}")
            # optuna-dashboard caches a study's trials for 2-10 s (its _storage.get_trials TTL),
            # so the final state shows up within that, not at once.
            seen.detail = wait_for(
                lambda: _final_detail(dashboard, ours["study_id"]),
                30,
                "optuna-dashboard to show every trial finished",
            )
        return seen
    finally:
        if search.poll() is None:
            kill_session(search)
        if dashboard is not None:
            dashboard.stop()


def _final_detail(dashboard: Dashboard, study_id: int) -> dict | None:
    detail = dashboard.http.get(f"/api/studies/{study_id}").json()
    finished = [t for t in detail["trials"] if t["state"] in ("Complete", "Fail")]
    return detail if len(finished) == TRIALS else None


def test_nas_serve_reads_while_a_search_writes(observed: Observed):
    assert not observed.serve_errors, observed.serve_errors
    assert observed.serve[200] > 30  # it really read throughout
    counts = observed.candidate_counts
    assert counts == sorted(counts) and len(set(counts)) > 1  # saw the search progress, never go back
    assert observed.final_search["status"] == "finished"
    assert len(observed.final_candidates) == TRIALS
    assert all(c["state"] in ("complete", "failed") for c in observed.final_candidates)


def test_optuna_dashboard_reads_while_a_search_writes(observed: Observed):
    assert not observed.dashboard_errors, observed.dashboard_errors
    assert observed.dashboard[200] > 5
    counts = observed.dashboard_trial_counts
    assert counts and counts == sorted(counts)


def test_optuna_dashboard_lists_the_study_with_its_objective_names(observed: Observed):
    assert [s["study_name"] for s in observed.studies] == [f"nas:{NAME}"]
    study = next(s for s in observed.studies if s["study_name"] == f"nas:{NAME}")
    assert study["directions"] == ["minimize", "minimize"]
    assert observed.detail["name"] == f"nas:{NAME}"
    assert observed.detail["objective_names"] == OBJECTIVES  # set_metric_names, read by the dashboard
    finished = [t for t in observed.detail["trials"] if t["state"] in ("Complete", "Fail")]
    assert len(finished) == TRIALS


def test_optuna_dashboard_shows_the_pruned_trials_of_a_search_with_rungs(tmp_path):
    """The driver prunes (Optuna cannot prune multi-objective studies) and tells Optuna PRUNED:
    the real dashboard lists exactly the store's pruned candidates as Pruned trials, and the
    service's API lists the same ones."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    outcome = run_rung_search(url, tmp_path)
    with Store(url) as store:
        states = {c.trial_number: c.state for c in store.candidates("halving")}
        assert_optuna_agrees(store, "halving")
        served = TestClient(create_app(store)).get("/api/searches/halving/candidates",
                                                   params={"state": "pruned"}).json()
    pruned = sorted(n for n, state in states.items() if state == "pruned")
    assert pruned and outcome.n_pruned == len(pruned), states
    assert sorted(c["trial_number"] for c in served) == pruned
    dashboard = Dashboard(url)
    try:
        study = next(s for s in dashboard.http.get("/api/studies").json()["study_summaries"]
                     if s["study_name"] == "nas:halving")
        trials = dashboard.http.get(f"/api/studies/{study['study_id']}").json()["trials"]
    finally:
        dashboard.stop()
    shown = {t["number"]: t["state"] for t in trials if t["number"] in states}
    assert sorted(n for n, state in shown.items() if state == "Pruned") == pruned
    assert {n for n, state in shown.items() if state == "Complete"} == {
        n for n, state in states.items() if state == "complete"}
