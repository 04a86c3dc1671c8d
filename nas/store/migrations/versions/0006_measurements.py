"""Measurements that say what took them, and re-timings of a search's front (issue 16).

nas_latencies gains ``measurement`` (0: the search's own; k: the k-th re-timing), now part of
its primary key so a re-timing adds a row beside the old one; ``workload`` (JSON: the
workload's stats, throughput, memory, bootstrap intervals) and ``machine_hash``, both NULL in
the rows written before this revision (their machine is unknown). New tables: nas_machines
(what a machine hash stands for) and nas_retimes (one row per re-timing of a front).

Revision ID: 0006_measurements
Revises: 0005_parent
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_measurements"
down_revision = "0005_parent"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nas_machines",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_nas_machines")),
    )
    op.create_table(
        "nas_retimes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("machine_hash", sa.String(64), nullable=True),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("front_before", sa.JSON(), nullable=False),
        sa.Column("front_after", sa.JSON(), nullable=False),
        sa.Column("unresolved", sa.JSON(), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["search_id"], ["nas_searches.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_retimes_search_id_nas_searches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_retimes")),
        sa.UniqueConstraint("search_id", "number", name=op.f("uq_nas_retimes_search_id_number")),
    )
    # A new primary key: PostgreSQL alters in place; SQLite copies the table, which is safe
    # here (no table refers to nas_latencies, so dropping the old copy cascades nowhere).
    with op.batch_alter_table("nas_latencies") as batch:
        batch.drop_constraint("pk_nas_latencies", type_="primary")
        batch.add_column(sa.Column("measurement", sa.Integer(), nullable=False,
                                   server_default=sa.text("0")))
        batch.add_column(sa.Column("workload", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("machine_hash", sa.String(64), nullable=True))
        batch.create_primary_key("pk_nas_latencies", ["candidate_id", "profile", "measurement"])


def downgrade() -> None:
    # The old key holds one row per (candidate, profile): keep the latest measurement, the one
    # the candidate's metrics carry. The earlier ones and the re-timing records are lost.
    op.execute(sa.text(
        "DELETE FROM nas_latencies WHERE measurement < (SELECT max(l2.measurement) FROM "
        "nas_latencies l2 WHERE l2.candidate_id = nas_latencies.candidate_id "
        "AND l2.profile = nas_latencies.profile)"))
    with op.batch_alter_table("nas_latencies") as batch:
        batch.drop_constraint("pk_nas_latencies", type_="primary")
        batch.drop_column("machine_hash")
        batch.drop_column("workload")
        batch.drop_column("measurement")
        batch.create_primary_key("pk_nas_latencies", ["candidate_id", "profile"])
    op.drop_table("nas_retimes")
    op.drop_table("nas_machines")
