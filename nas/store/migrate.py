"""Alembic, driven from code: the schema is upgraded when a `Store` opens the database.

No ``alembic.ini`` exists on disk; `alembic_config` builds the configuration. Our version
table is ``nas_alembic_version`` because Optuna keeps its own Alembic history in
``alembic_version`` in the same database.

To change the schema, edit ``tables.py`` and add a revision next to ``0001_initial.py``;
with a database at the current head::

    from alembic import command
    from nas.store import Store
    from nas.store.migrate import alembic_config

    store = Store("sqlite:///scratch.db")
    with store.engine.begin() as conn:
        command.revision(alembic_config(conn), "what changed", autogenerate=True)

then review the generated file (SQLite needs ``op.batch_alter_table`` for most changes;
env.py renders those) and run ``tests/store``, which compares migrations with the models.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from nas.errors import StoreError
from nas.store.engine import WRITE

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "nas_alembic_version"
# Serialises concurrent first opens (a search and `nas serve` started together) on PostgreSQL.
_PG_LOCK_KEY = zlib.crc32(b"nas.store.migrate")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def include_name(name: str | None, type_: str, parent_names: object) -> bool:  # noqa: ARG001 - Alembic's include_name signature
    """Only our tables: Optuna's share the database and must look neither added nor removed."""
    if type_ == "table":
        return bool(name) and str(name).startswith("nas_") and name != VERSION_TABLE
    return True


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, url: str) -> None:
    """Bring the schema to head; StoreError if the database is newer than this code."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    # Fast path without the write lock: readers open a database at head all the time,
    # including while a search writes to it.
    with engine.connect() as connection:
        current = current_revision(connection)
    if current == head:
        return
    known = {rev.revision for rev in script.walk_revisions()}
    _refuse_newer(current, known, head, url)
    with engine.connect().execution_options(**{WRITE: True}) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = current_revision(connection)  # another process may have upgraded meanwhile
        _refuse_newer(current, known, head, url)
        if current != head:
            # env.py runs inside this transaction: DDL commits or rolls back as a whole.
            command.upgrade(alembic_config(connection), "head")


def _refuse_newer(current: str | None, known: set[str], head: str | None, url: str) -> None:
    if current is not None and current not in known:
        raise StoreError(
            f"database {url!r} has schema revision {current!r}, which is newer than this "
            f"version of nas understands (its newest is {head!r}): upgrade nas to open it")
