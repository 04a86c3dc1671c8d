"""Store fixtures: every test runs on SQLite (a file) and on PostgreSQL (skipped if down)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nas.store import SearchRecord, Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database: a SQLite file, or the session's PostgreSQL database wiped clean."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nas.db'}"
    url: str = request.getfixturevalue("postgres_url")
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        # Cheaper than a database per test; also drops Optuna's tables from earlier tests.
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url, retry_backoff_s=0.01) as opened:
        yield opened


SearchFactory = Callable[..., SearchRecord]


@pytest.fixture
def new_search(store: Store) -> SearchFactory:
    def create(name: str = "s1", *, space_hash: str = "space-1", trials: int = 10) -> SearchRecord:
        return store.create_search(
            name, space={"n_layer": [2, 4]}, space_hash=space_hash,
            profiles=[{"name": "cpu", "intra_op_threads": 1}],
            objectives=[("val_loss", "minimize"), ("latency:cpu:decode_ms", "minimize")],
            constraints=["params <= 2e6"], data={"corpus": ["stdlib"], "tokenizer": "byte"},
            budget={"tokens": 1000}, trials=trials, study_name=f"study-{name}")

    return create

