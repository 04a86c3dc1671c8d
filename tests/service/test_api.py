"""The JSON API: every route, with its 401/404/409/422 answers."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nas.errors import ConfigError
from nas.service import create_app
from nas.service.auth import check_bind, is_loopback, resolve_token
from nas.store import Store

from .conftest import TOKEN
from .factories import LATENCY, POINTS, arch, make_search, result

TINY_YAML_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "search_spaces", "tiny.yaml")


def loc(response) -> list[list]:
    return [e["loc"] for e in response.json()["detail"]]


# ----- reading -----------------------------------------------------------------------------
def test_list_searches(client):
    r = client.get("/api/searches")
    assert r.status_code == 200
    by_name = {s["name"]: s for s in r.json()}
    assert list(by_name) == ["demo", "live", "cube"]
    demo = by_name["demo"]
    assert demo["status"] == "finished" and demo["n_complete"] == 6 and demo["n_failed"] == 1
    assert demo["front_size"] == 3 and demo["url"] == "/searches/demo"
    assert by_name["live"]["status"] == "running" and by_name["live"]["n_running"] == 1


def test_read_search(client, shared_store):
    r = client.get("/api/searches/demo")
    assert r.status_code == 200
    s = r.json()
    assert s["objectives"] == [{"metric": "val_loss", "direction": "min"},
                               {"metric": LATENCY, "direction": "min"}]
    assert s["constraints"] == ["params <= 1500000"] and s["profiles"] == ["cpu-1t"]
    assert s["reference_point"] == [3.5, 0.5] and s["front_size"] == 3
    knee = shared_store.candidate_by_trial("demo", 1)
    figures = client.get("/api/searches/demo/figures", params={"part": "hypervolume"}).json()
    assert figures["knee_id"] == knee.id and figures["warnings"] == [] and figures["front_size"] == 3
    assert figures["knee_trial"] == 1  # what people read: the trial number, as the CLI
    assert s["hypervolume"] == pytest.approx(0.6)  # the latest snapshot's
    assert s["updated_at"].endswith("Z") or "+00:00" in s["updated_at"]


def test_read_front(client, shared_store):
    r = client.get("/api/searches/demo/front")
    assert r.status_code == 200
    front = r.json()
    assert [c["trial_number"] for c in front["candidates"]] == [2, 1, 0]
    assert all(c["on_front"] and c["feasible"] for c in front["candidates"])
    assert front["knee_id"] == shared_store.candidate_by_trial("demo", 1).id
    assert front["knee_trial"] == 1
    assert front["hypervolume"] == pytest.approx(0.28)


def test_list_candidates_and_filters(client):
    r = client.get("/api/searches/demo/candidates")
    assert r.status_code == 200 and r.headers["x-total-count"] == "7"
    rows = r.json()
    assert [c["trial_number"] for c in rows] == list(range(7))
    failed = rows[-1]
    assert failed["state"] == "failed" and "diverged" in failed["error"]
    assert failed["metrics"] == {} and failed["feasible"] is None
    assert rows[5]["feasible"] is False and rows[5]["on_front"] is False
    assert rows[0]["description"] == arch(0).describe() and rows[0]["url"] == f"/candidates/{rows[0]['id']}"

    r = client.get("/api/searches/demo/candidates", params={"state": ["failed", "running"]})
    assert [c["state"] for c in r.json()] == ["failed"]
    r = client.get("/api/searches/demo/candidates", params={"on_front": "true", "limit": 2, "offset": 1})
    assert r.headers["x-total-count"] == "3" and [c["trial_number"] for c in r.json()] == [1, 2]


@pytest.mark.parametrize("params, field", [
    ({"state": "exploded"}, "state"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset"),
    ({"on_front": "perhaps"}, "on_front"),
])
def test_list_candidates_rejects_bad_queries(client, params, field):
    r = client.get("/api/searches/demo/candidates", params=params)
    assert r.status_code == 422 and loc(r)[0][:2] == ["query", field]


def test_figures(client):
    r = client.get("/api/searches/demo/figures")
    assert r.status_code == 200
    figs = r.json()
    assert figs["axes"] == [LATENCY, "val_loss"] and "pareto3d" not in figs
    assert {"pareto", "hypervolume", "parallel"} <= set(figs)
    markers = [t for t in figs["pareto"]["data"] if t.get("mode") == "markers"]
    assert sum(len(t["customdata"]) for t in markers) == 6

    r = client.get("/api/searches/demo/figures", params={"x": "val_loss", "y": LATENCY, "part": "pareto"})
    assert set(r.json()) == {"version", "axes", "objectives", "axis_metrics", "front_size", "knee_id",
                             "knee_trial", "warnings", "pareto"}
    assert r.json()["pareto"]["layout"]["xaxis"]["title"]["text"].startswith("val_loss")
    assert "pareto3d" in client.get("/api/searches/cube/figures").json()


@pytest.mark.parametrize("params, field", [
    ({"x": "params"}, "x"), ({"y": "nonsense"}, "y"), ({"x": "val_loss", "y": "val_loss"}, "y"),
    ({"part": "pie"}, "part"),
])
def test_figures_reject_bad_axes(client, params, field):
    r = client.get("/api/searches/demo/figures", params=params)
    assert r.status_code == 422 and loc(r)[0][:2] == ["query", field]


def test_read_candidate(client, shared_store):
    record = shared_store.candidate_by_trial("demo", 1)
    r = client.get(f"/api/candidates/{record.id}")
    assert r.status_code == 200
    c = r.json()
    assert c["knee"] and c["on_front"] and c["architecture"] == arch(1).to_dict()
    assert c["metrics"]["val_loss"] == 2.8 and c["has_weights"]
    (lat,) = c["latencies"]
    assert lat["profile"] == "cpu-1t" and lat["decode"] == {"median_ms": 0.2, "p90_ms": pytest.approx(0.22),
                                                           "cv": 0.02, "n": 200, "ci_low_ms": None,
                                                           "ci_high_ms": None}
    assert c["proxy"]["curve"][0] == [256, pytest.approx(4.744)]
    assert c["export_url"] == f"/api/candidates/{record.id}/export" and c["search_url"] == "/searches/demo"


@pytest.mark.parametrize("url", [
    "/api/searches/nope", "/api/searches/nope/front", "/api/searches/nope/candidates",
    "/api/searches/nope/figures", "/api/candidates/999999",
])
def test_unknown_things_are_404_with_a_message(client, url):
    r = client.get(url)
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "nope" in detail and "demo" in detail or "999999" in detail


def test_non_integer_candidate_id_is_422(client):
    r = client.get("/api/candidates/abc")
    assert r.status_code == 422 and loc(r)[0] == ["path", "candidate_id"]


def test_openapi_schema_lists_every_route(client):
    schema = client.get("/api/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/api/searches", "/api/searches/{name}", "/api/searches/{name}/front",
        "/api/searches/{name}/candidates", "/api/searches/{name}/figures",
        "/api/searches/{name}/hypervolume", "/api/searches/{name}/retimes",
        "/api/candidates/{candidate_id}", "/api/searches/{name}/stop",
        "/api/candidates/{candidate_id}/export"}  # nas.service.export_api
    assert set(paths["/api/searches"]) == {"get", "post"}
    assert "LaunchIn" in schema["components"]["schemas"]
    assert client.get("/api/docs").status_code == 200


# ----- launching -----------------------------------------------------------------------------
def test_launch_a_shipped_space(writer, spawn, store, workdir):
    r = writer.post("/api/searches", json={"name": "new-1", "space": "tiny", "trials": 3,
                                           "profiles": ["cpu-1t"]})
    assert r.status_code == 202, r.text
    assert r.json() == {"name": "new-1", "status": "starting", "pid": 4242,
                        "url": "/searches/new-1", "api_url": "/api/searches/new-1"}
    ((argv, kwargs),) = spawn.calls
    assert argv == [sys.executable, "-m", "nas", "search", "tiny", "--name", "new-1",
                    "--profiles", "cpu-1t", "--no-progress", "--trials", "3"]
    assert kwargs["shell"] is False and kwargs["start_new_session"] is True
    assert kwargs["env"]["NAS_DB"] == f"sqlite:///{store.engine.url.database}"
    assert "NAS_TOKEN" not in kwargs["env"]
    assert kwargs["cwd"] == workdir
    # Until the driver has created it, its page says it is starting.
    page = writer.get("/searches/new-1", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "starting" in page.text
    r = writer.get("/api/searches/new-1")
    assert r.status_code == 404 and "is starting" in r.json()["detail"]
    spawn.processes[0].returncode = 2
    assert "exited with code 2" in writer.get("/api/searches/new-1").json()["detail"]
    assert "exited (2)" in writer.get("/searches/new-1", headers={"Accept": "text/html"}).text


def test_launch_yaml_goes_to_a_private_file(writer, spawn, workdir):
    text = Path(TINY_YAML_PATH).read_text()
    r = writer.post("/api/searches", json={"name": "from-yaml", "space_yaml": text})
    assert r.status_code == 202, r.text
    argv = spawn.calls[0][0]
    path = argv[4]
    assert os.path.dirname(path) == str(workdir / "spaces") and path.endswith(".yaml")
    assert os.path.basename(path).startswith("from-yaml-")
    assert Path(path).read_text() == text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(workdir / "spaces").st_mode) == 0o700
    assert "--trials" not in argv and argv[argv.index("--profiles") + 1] == "cpu-1t"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "space": "tiny", "trials": 0}, ["body", "trials"]),
        ({"name": "x", "space": "tiny", "trials": 10**6}, ["body", "trials"]),
        ({"name": "../etc", "space": "tiny"}, ["body", "name"]),
        ({"name": "a b", "space": "tiny"}, ["body", "name"]),
        ({"name": "x; rm -rf /", "space": "tiny"}, ["body", "name"]),
        ({"space": "tiny"}, ["body", "name"]),
        ({"name": "x", "space": "../search_spaces/tiny"}, ["body", "space"]),
        ({"name": "x", "space": "no-such-space"}, ["body", "space"]),
        ({"name": "x"}, ["body"]),
        ({"name": "x", "space": "tiny", "space_yaml": "name: y"}, ["body"]),
        ({"name": "x", "space": "tiny", "profiles": ["/etc/passwd"]}, ["body", "profiles", 0]),
        ({"name": "x", "space": "tiny", "profiles": ["no-such-profile"]}, ["body", "profiles"]),
        (
            {"name": "x", "space": "tiny", "profiles": ["cpu-2t"]},
            ["body", "profiles"],
        ),  # objective needs cpu-1t
        ({"name": "x", "space": "tiny", "profiles": []}, ["body", "profiles"]),
        ({"name": "x", "space": "tiny", "shell": "yes"}, ["body", "shell"]),
        ({"name": "x", "space_yaml": "objectives: [this is: not: yaml"}, ["body", "space_yaml"]),
        (
            {
                "name": "x",
                "space_yaml": "name: x\nobjectives: {val_loss: min}\narchitecture: {n_head: 3, d_model: 32}",
            },
            ["body", "space_yaml", "architecture"],
        ),
        (
            {"name": "x", "space_yaml": "objectives: {val_loss: min}\ndata: {corpus: [/etc/passwd]}"},
            ["body", "space_yaml", "data", "corpus"],
        ),
        (
            {"name": "x", "space_yaml": "objectives: {val_loss: min}\nprofiles: [nowhere]"},
            ["body", "space_yaml", "profiles"],
        ),
        ({"name": "x", "space_yaml": "x" * (64 * 1024 + 1)}, ["body", "space_yaml"]),
    ],
)
def test_launch_rejects_bad_bodies_naming_the_field(writer, spawn, body, field, workdir):
    r = writer.post("/api/searches", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][: len(field)] == field, r.json()
    assert r.json()["detail"][0]["msg"]
    assert spawn.calls == []
    assert not (workdir / "spaces").exists() or not any((workdir / "spaces").iterdir())


def test_launch_rejects_a_body_that_is_not_json(writer, spawn):
    r = writer.post(
        "/api/searches",
        content="name=x&space=tiny",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422 and spawn.calls == []
    r = writer.post("/api/searches", content="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and spawn.calls == []


def test_launch_conflicts(writer, spawn, store):
    r = writer.post("/api/searches", json={"name": "live", "space": "tiny"})
    assert r.status_code == 409 and "running" in r.json()["detail"]
    r = writer.post("/api/searches", json={"name": "demo", "space": "tiny"})
    assert r.status_code == 409 and "another search space" in r.json()["detail"]
    assert writer.post("/api/searches", json={"name": "twice", "space": "tiny"}).status_code == 202
    r = writer.post("/api/searches", json={"name": "twice", "space": "tiny"})
    assert r.status_code == 409 and "already starting" in r.json()["detail"]
    spawn.processes[0].returncode = 1  # it died: trying again is allowed
    assert writer.post("/api/searches", json={"name": "twice", "space": "tiny"}).status_code == 202


def test_launch_needs_a_database_file(spawn):
    with Store("sqlite://") as memory:
        c = TestClient(create_app(memory))
        r = c.post("/api/searches", json={"name": "x", "space": "tiny"})
    assert r.status_code == 409 and "in memory" in r.json()["detail"]


# ----- stopping ------------------------------------------------------------------------------
def test_stop(writer, store):
    r = writer.post("/api/searches/live/stop")
    assert r.status_code == 202 and r.json() == {"name": "live", "status": "stopping"}
    assert store.get_search("live").status == "stopping"  # the driver polls this
    assert writer.post("/api/searches/live/stop").status_code == 202  # idempotent
    r = writer.post("/api/searches/demo/stop")
    assert r.status_code == 409 and "finished" in r.json()["detail"]
    r = writer.post("/api/searches/nope/stop")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_stopping_a_search_whose_driver_was_lost_records_the_stop(writer, store, monkeypatch):
    monkeypatch.setattr("nas.store.records.STALE_AFTER_SECONDS", -1.0)  # every heartbeat is stale
    assert store.get_search("live").status == "driver lost"
    r = writer.post("/api/searches/live/stop")
    assert r.status_code == 202 and r.json() == {"name": "live", "status": "stopped"}
    monkeypatch.undo()
    assert store.get_search("live").status == "stopped"


# ----- token, origin, host -----------------------------------------------------------------
@pytest.mark.parametrize(
    "request_",
    [
        ("post", "/api/searches", {"name": "x", "space": "tiny"}),
        ("post", "/api/searches/live/stop", None),
        ("delete", "/api/searches/live", None),
        ("put", "/api/searches/live", {}),
    ],
)
def test_writes_need_the_token(guarded, store, spawn, request_):
    method, url, body = request_
    r = getattr(guarded, method)(url, **({"json": body} if body is not None else {}))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    r = getattr(guarded, method)(
        url, headers={"Authorization": "Bearer wrong"}, **({"json": body} if body is not None else {})
    )
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    assert spawn.calls == [] and store.get_search("live").status == "running"


def test_the_token_opens_writes_and_reads_need_none(guarded, store, spawn):
    assert guarded.get("/api/searches").status_code == 200
    assert guarded.get("/").status_code == 200
    r = guarded.post("/api/searches/live/stop", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202
    r = guarded.post("/api/searches", json={"name": "x", "space": "tiny"}, headers={"X-NAS-Token": TOKEN})
    assert r.status_code == 202 and len(spawn.calls) == 1


def test_cross_site_writes_are_refused(writer, store):
    r = writer.post("/api/searches/live/stop", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and store.get_search("live").status == "running"
    r = writer.post("/api/searches/live/stop", headers={"Origin": "http://testserver"})
    assert r.status_code == 202


def test_allowed_hosts_stop_dns_rebinding(store, spawn, workdir):
    from .conftest import app_client

    c = app_client(store, spawn, workdir, allowed_hosts=["127.0.0.1", "localhost"])
    assert c.get("/api/searches", headers={"Host": "evil.example:8000"}).status_code == 400
    assert c.get("/api/searches", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert c.get("/api/searches", headers={"Host": "localhost"}).status_code == 200


def test_bind_rules(monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(ConfigError, match="refusing to bind 0.0.0.0.*--token"):
        check_bind("0.0.0.0", None)
    monkeypatch.setenv("NAS_TOKEN", "from-env")
    assert resolve_token(None) == "from-env" and resolve_token("given") == "given"
    monkeypatch.setenv("NAS_TOKEN", "")
    assert resolve_token(None) is None


# ----- a database being written ---------------------------------------------------------------
def test_reads_while_a_search_writes(tmp_path):
    """A writer process-like thread adds candidates while the API is read: never an error."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(url) as setup:
        make_search(setup, "busy", points=POINTS[:2], failed=0, status="running", snapshots=False)
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with Store(url, retry_backoff_s=0.01) as driver:
            k = 2
            while not stop.is_set() and k < 60:
                driver.start_candidate("busy", k, arch(k))
                driver.finish_candidate("busy", k, result(k, 3.0 - k / 100, 0.1 + k / 100, 1e4))
                driver.add_pareto_snapshot("busy", k + 1, None, [])
                written.append(k)
                k += 1
            driver.set_status("busy", "finished")

    with Store(url) as reader:
        c = TestClient(create_app(reader))
        thread = threading.Thread(target=write)
        thread.start()
        seen = []
        try:
            deadline = time.monotonic() + 30
            while thread.is_alive() and time.monotonic() < deadline:
                for path in (
                    "/api/searches/busy",
                    "/api/searches/busy/candidates",
                    "/api/searches/busy/figures",
                    "/searches/busy",
                    "/",
                ):
                    r = c.get(path)
                    assert r.status_code == 200, (path, r.text)
                seen.append(client_count := len(c.get("/api/searches/busy/candidates").json()))
                assert client_count >= 2
        finally:
            stop.set()
            thread.join()
        final = c.get("/api/searches/busy").json()
    assert final["status"] == "finished" and final["n_complete"] == 2 + len(written)
    assert len(seen) > 1 and seen == sorted(seen)  # polls see the search grow, never shrink


def test_a_changed_search_is_served_stale_while_it_is_rebuilt(store, writer):
    """Pages never wait for a rebuild: after a write they get the previous view at once, a
    background thread builds the new one, and the version tells them they are behind."""
    first = writer.get("/api/searches/live/figures", params={"part": "hypervolume"}).json()
    assert first["version"] == writer.get("/api/searches/live").json()["version"]
    n = len(writer.get("/api/searches/live/candidates").json())

    store.start_candidate("live", 50, arch(50))
    store.finish_candidate("live", 50, result(50, 2.5, 0.5, 1e4))
    current = writer.get("/api/searches/live").json()["version"]
    assert current != first["version"]  # the cheap read is always current
    rows = writer.get("/api/searches/live/candidates")
    assert rows.headers["x-search-version"] in (first["version"], current)

    def caught_up() -> bool:
        r = writer.get("/api/searches/live/candidates")
        return r.headers["x-search-version"] == current and len(r.json()) == n + 1

    deadline = time.monotonic() + 20
    while not caught_up():
        assert time.monotonic() < deadline, "the background rebuild never landed"
        time.sleep(0.05)
    figures = writer.get("/api/searches/live/figures", params={"part": "hypervolume"}).json()
    assert figures["version"] == current


def test_reports_never_serve_a_stale_view(store):
    from nas.service.views import ViewCache

    views = ViewCache(store, background=False)
    before = views.get("live")
    store.set_status("live", "stopped")
    after = views.get("live")
    assert after is not before and after.summary.status == "stopped"
