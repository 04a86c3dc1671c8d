"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end); skips if down.

    Tests sharing it must not rely on it being empty: it lives for the whole session.
    """
    psycopg = pytest.importorskip("psycopg")
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=3"
    name = f"nas_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} "
                    f"({' '.join(str(err).split())}); start it with: {PG_START}")
    yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        # FORCE: a test that leaked a connection must not leave the database behind.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
