"""Service fixtures: a store with known searches, an app over it, a fake process launcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from nas.service import create_app
from nas.service.launcher import Launcher
from nas.store import Store

from .factories import make_rung_search, make_search

TOKEN = "s3cret-token"


class FakeProcess:
    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeSpawn:
    """Stands in for subprocess.Popen: records what would have been started."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.processes: list[FakeProcess] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> FakeProcess:
        self.calls.append((argv, kwargs))
        self.processes.append(FakeProcess(4242 + len(self.processes)))
        return self.processes[-1]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Iterator[Store]:
    """Read-only tests share one database: 'demo' (finished) and 'live' (running)."""
    with Store(f"sqlite:///{tmp_path_factory.mktemp('svc') / 'nas.db'}") as store:
        make_search(store, "demo")
        make_search(store, "live", status="running", running=1)
        make_search(store, "cube", three_objectives=True)
        yield store


@pytest.fixture(scope="module")
def rung_store(tmp_path_factory) -> Iterator[Store]:
    """'rungs' (successive halving: pruned and complete candidates) beside 'demo' (no rungs)."""
    with Store(f"sqlite:///{tmp_path_factory.mktemp('rungs') / 'nas.db'}") as store:
        make_rung_search(store, "rungs")
        make_search(store, "demo")
        yield store


@pytest.fixture(scope="module")
def rung_client(rung_store) -> TestClient:
    return TestClient(create_app(rung_store))


@pytest.fixture(scope="module")
def client(shared_store) -> TestClient:
    return TestClient(create_app(shared_store, launcher=Launcher("sqlite:///unused.db",
                                                                  spawn=FakeSpawn())))


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    """A fresh database for tests that write."""
    with Store(f"sqlite:///{tmp_path / 'nas.db'}", retry_backoff_s=0.01) as s:
        make_search(s, "demo")
        make_search(s, "live", status="running", running=1)
        yield s


@pytest.fixture
def spawn() -> FakeSpawn:
    return FakeSpawn()


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path / "serve"


def app_client(store: Store, spawn: FakeSpawn, workdir: Path, **kwargs: Any) -> TestClient:
    from nas.service.launcher import child_db_url

    launcher = Launcher(child_db_url(store), workdir, spawn=spawn)
    return TestClient(create_app(store, launcher=launcher, **kwargs))


@pytest.fixture
def writer(store, spawn, workdir) -> TestClient:
    return app_client(store, spawn, workdir)


@pytest.fixture
def guarded(store, spawn, workdir) -> TestClient:
    """An app started with a token."""
    return app_client(store, spawn, workdir, token=TOKEN)
