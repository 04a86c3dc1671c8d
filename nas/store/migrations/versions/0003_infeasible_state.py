"""Candidate state ``infeasible``: broke a constraint in the shape step, never trained.

Revision ID: 0003_infeasible_state
Revises: 0002_driver_heartbeat
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003_infeasible_state"
down_revision = "0002_driver_heartbeat"
branch_labels = None
depends_on = None

_BEFORE = "state IN ('running', 'complete', 'failed', 'pruned')"
_AFTER = "state IN ('running', 'complete', 'failed', 'pruned', 'infeasible')"


def _replace_check(condition: str) -> None:
    # batch mode: SQLite cannot alter a constraint, so the table is copied with the new one.
    with op.batch_alter_table("nas_candidates") as batch:
        batch.drop_constraint(op.f("ck_nas_candidates_state"), type_="check")
        batch.create_check_constraint(op.f("ck_nas_candidates_state"), condition)


def upgrade() -> None:
    _replace_check(_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM nas_candidates WHERE state = 'infeasible'")
    _replace_check(_BEFORE)
