"""Successive halving: rung losses, checkpoints between rungs, the search's fidelity, and the
training tokens spent at each Pareto snapshot.

Revision ID: 0004_rungs
Revises: 0003_infeasible_state
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_rungs"
down_revision = "0003_infeasible_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nas_rungs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("val_loss", sa.Double(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["nas_candidates.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_rungs_candidate_id_nas_candidates")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_rungs")),
        sa.UniqueConstraint("candidate_id", "rung", name=op.f("uq_nas_rungs_candidate_id_rung")),
    )
    op.create_table(
        "nas_checkpoints",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["nas_candidates.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_checkpoints_candidate_id_nas_candidates")),
        sa.PrimaryKeyConstraint("candidate_id", name=op.f("pk_nas_checkpoints")),
    )
    with op.batch_alter_table("nas_searches") as batch:
        batch.add_column(sa.Column("fidelity", sa.JSON(), nullable=True))
    with op.batch_alter_table("nas_pareto_snapshots") as batch:
        batch.add_column(sa.Column("tokens", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN, never a copy: SQLite's DROP TABLE of the old nas_searches
    # would cascade (foreign keys are on) and delete every candidate (see 0005_parent).
    with op.batch_alter_table("nas_pareto_snapshots", recreate="never") as batch:
        batch.drop_column("tokens")
    with op.batch_alter_table("nas_searches", recreate="never") as batch:
        batch.drop_column("fidelity")
    op.drop_table("nas_checkpoints")
    op.drop_table("nas_rungs")
