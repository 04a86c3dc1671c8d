"""Driver heartbeat: when the driver of a running search last said it is alive.

Revision ID: 0002_driver_heartbeat
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_driver_heartbeat"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.drop_column("heartbeat_at")
