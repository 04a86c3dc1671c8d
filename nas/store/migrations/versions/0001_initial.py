"""Initial schema: searches, candidates, metrics, latencies, Pareto snapshots, weights.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in nas/store/tables.py at this revision: a migration must not
# change meaning when the models change later. The NaN/UTC handling is Python-side only.
UTC = sa.DateTime(timezone=True)
REAL: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.create_table(
        "nas_searches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("space_hash", sa.String(64), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("study_name", sa.String(200), nullable=False),
        sa.Column("reference_point", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.CheckConstraint("status IN ('running', 'stopping', 'stopped', 'finished', 'failed')",
                           name=op.f("ck_nas_searches_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_searches")),
        sa.UniqueConstraint("name", name=op.f("uq_nas_searches_name")),
    )
    op.create_table(
        "nas_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.JSON(), nullable=False),
        sa.Column("arch_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("proxy", sa.JSON(), nullable=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
        sa.CheckConstraint("state IN ('running', 'complete', 'failed', 'pruned')",
                           name=op.f("ck_nas_candidates_state")),
        sa.ForeignKeyConstraint(["search_id"], ["nas_searches.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_candidates_search_id_nas_searches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_candidates")),
        sa.UniqueConstraint("search_id", "trial_number",
                            name=op.f("uq_nas_candidates_search_id_trial_number")),
    )
    op.create_index(op.f("ix_nas_candidates_search_id_arch_hash"), "nas_candidates",
                    ["search_id", "arch_hash"])
    op.create_index(op.f("ix_nas_candidates_search_id_state"), "nas_candidates",
                    ["search_id", "state"])
    op.create_table(
        "nas_metrics",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", REAL, nullable=True),
        sa.ForeignKeyConstraint(["candidate_id"], ["nas_candidates.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_metrics_candidate_id_nas_candidates")),
        sa.PrimaryKeyConstraint("candidate_id", "name", name=op.f("pk_nas_metrics")),
    )
    op.create_table(
        "nas_latencies",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(200), nullable=False),
        sa.Column("profile_hash", sa.String(64), nullable=False),
        sa.Column("arch_hash", sa.String(64), nullable=False),
        sa.Column("prefill_median_ms", REAL, nullable=True),
        sa.Column("prefill_p90_ms", REAL, nullable=True),
        sa.Column("prefill_cv", REAL, nullable=True),
        sa.Column("prefill_n", sa.Integer(), nullable=False),
        sa.Column("decode_median_ms", REAL, nullable=True),
        sa.Column("decode_p90_ms", REAL, nullable=True),
        sa.Column("decode_cv", REAL, nullable=True),
        sa.Column("decode_n", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("measured_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["nas_candidates.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_latencies_candidate_id_nas_candidates")),
        sa.PrimaryKeyConstraint("candidate_id", "profile", name=op.f("pk_nas_latencies")),
    )
    op.create_index(op.f("ix_nas_latencies_arch_hash_profile_hash"), "nas_latencies",
                    ["arch_hash", "profile_hash"])
    op.create_table(
        "nas_pareto_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("n_complete", sa.Integer(), nullable=False),
        sa.Column("hypervolume", REAL, nullable=True),
        sa.Column("front", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["search_id"], ["nas_searches.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_pareto_snapshots_search_id_nas_searches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_pareto_snapshots")),
        sa.UniqueConstraint("search_id", "n_complete",
                            name=op.f("uq_nas_pareto_snapshots_search_id_n_complete")),
    )
    op.create_table(
        "nas_weights",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["nas_candidates.id"], ondelete="CASCADE",
                                name=op.f("fk_nas_weights_candidate_id_nas_candidates")),
        sa.PrimaryKeyConstraint("candidate_id", name=op.f("pk_nas_weights")),
    )


def downgrade() -> None:
    for table in ("nas_weights", "nas_pareto_snapshots", "nas_latencies", "nas_metrics",
                  "nas_candidates", "nas_searches"):
        op.drop_table(table)
