"""Alembic environment of the store, run by `nas.store.migrate` on a connection it passes in.

It only ever runs online against ``config.attributes["connection"]``: the store opens the
database itself (with its SQLite settings and error messages) and holds the lock.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.types import TypeDecorator

from nas.store.migrate import VERSION_TABLE, include_name
from nas.store.tables import Base


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:  # noqa: ARG001 - Alembic's render_item signature
    # Migrations hold plain SQL types: our TypeDecorators only change Python-side handling.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("nas migrations run through nas.store (Store(url) upgrades on open), "
                       "or with alembic_config(connection) from nas.store.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    compare_type=True,
    render_as_batch=True,  # SQLite alters tables by copying them
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
