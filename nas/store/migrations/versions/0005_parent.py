"""Searches from a parent model (issue 15): the search's parent record and each candidate's
derivation from it. Both nullable: a search without a parent, and every row written before
this revision, has neither.

Revision ID: 0005_parent
Revises: 0004_rungs
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_parent"
down_revision = "0004_rungs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.add_column(sa.Column("parent", sa.JSON(), nullable=True))
    with op.batch_alter_table("nas_candidates") as batch:
        batch.add_column(sa.Column("derivation", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never a copy of the table: SQLite's DROP
    # TABLE of the old nas_searches would cascade (foreign keys are on) and delete every
    # candidate of every search.
    with op.batch_alter_table("nas_candidates", recreate="never") as batch:
        batch.drop_column("derivation")
    with op.batch_alter_table("nas_searches", recreate="never") as batch:
        batch.drop_column("parent")
