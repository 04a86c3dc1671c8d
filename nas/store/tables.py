"""Typed SQLAlchemy tables of the store.

Every table is prefixed ``nas_`` because Optuna's study lives in the same database
(``optuna-dashboard <url>`` opens it), and Optuna owns unprefixed names such as
``studies``, ``trials`` and ``alembic_version``.

The schema is created and changed only by the Alembic migrations in
``nas/store/migrations``; ``tests/store`` checks that the migrations and these models
agree. Change both together (see ``nas.store.migrate``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from nas.states import CANDIDATE_STATES, DRIVER_LOST, LIVE_STATUSES, SEARCH_STATUSES  # noqa: F401 - re-exported

# Deterministic constraint names: Alembic can only alter or drop what it can name,
# and SQLite/PostgreSQL would otherwise invent different ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    SQLite has no time zone type and hands back naive values; PostgreSQL returns
    them in the session time zone. Callers always see UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - SQLAlchemy's TypeDecorator signature
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC timestamps")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - SQLAlchemy's TypeDecorator signature
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Real(TypeDecorator[float]):
    """A double that round-trips NaN: SQLite silently stores NaN as NULL, so NULL means NaN.

    A diverged candidate can legitimately have NaN metrics; they must be stored, not
    rejected by a NOT NULL constraint on one dialect only.
    """

    impl = Double
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> float | None:  # noqa: ARG002 - SQLAlchemy's TypeDecorator signature
        if value is None or math.isnan(value):
            return None
        return float(value)

    def process_result_value(self, value: float | None, dialect: Dialect) -> float:  # noqa: ARG002 - SQLAlchemy's TypeDecorator signature
        return math.nan if value is None else float(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), float: Real(), dict[str, Any]: JSON(),
                           list[Any]: JSON()}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Search(Base):
    """One search run: the inputs it was started with and where it stands."""

    __tablename__ = "nas_searches"
    __table_args__ = (CheckConstraint(_in("status", SEARCH_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    space: Mapped[dict[str, Any]]  # snapshot of the search space as started
    space_hash: Mapped[str] = mapped_column(String(64))
    profiles: Mapped[list[Any]]  # hardware profile dicts
    objectives: Mapped[list[Any]]  # [[metric, "minimize" | "maximize"], ...]
    constraints: Mapped[list[Any]]  # constraint expressions, e.g. "params <= 2e6"
    data: Mapped[dict[str, Any]]  # DataSpec.to_dict()
    budget: Mapped[dict[str, Any]]  # ProxyBudget.to_dict()
    trials: Mapped[int] = mapped_column(Integer)  # trials budget
    status: Mapped[str] = mapped_column(String(16))
    study_name: Mapped[str] = mapped_column(String(200))  # Optuna study in the same database
    # Fixed once so that hypervolumes recorded over time are comparable.
    reference_point: Mapped[list[Any] | None]
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]  # any write to the search or its candidates: readers poll it
    # Written every few seconds by a live driver (not a change readers need to redraw for);
    # a running or stopping search whose heartbeat is stale has lost its driver.
    heartbeat_at: Mapped[datetime | None]
    # Successive-halving settings as run ({min_tokens, eta, rung_tokens}); None: one rung, the
    # whole budget. A resumed search keeps these whatever the request says.
    fidelity: Mapped[dict[str, Any] | None]
    # The parent checkpoint its candidates are derived from (`nas.parent.ParentRef.record`:
    # path, fingerprint, depth, architecture, params); None: candidates train from scratch.
    parent: Mapped[dict[str, Any] | None]


class Candidate(Base):
    """One trial of a search: a row per (search, trial number), reused when a trial re-runs."""

    __tablename__ = "nas_candidates"
    __table_args__ = (
        UniqueConstraint("search_id", "trial_number"),
        Index(None, "search_id", "arch_hash"),  # evaluated-once lookup within a search
        Index(None, "search_id", "state"),  # per-state counts of every search
        CheckConstraint(_in("state", CANDIDATE_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("nas_searches.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[dict[str, Any]]
    arch_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)  # > 1 when a crashed trial was re-run
    timings: Mapped[dict[str, Any]]  # seconds: train, export, latency, total
    proxy: Mapped[dict[str, Any] | None]  # ProxyResult as JSON (curve etc.)
    node: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # How it was derived from the search's parent (`nas.derivation.Derivation.to_dict`); None in
    # a search without a parent.
    derivation: Mapped[dict[str, Any] | None]


class Metric(Base):
    """One metric of one candidate; the primary key makes a re-written metric replace, not add."""

    __tablename__ = "nas_metrics"

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("nas_candidates.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(nullable=True)  # NULL is NaN (see `Real`)


class Latency(Base):
    """One measurement of one candidate on one hardware profile.

    ``measurement`` 0 is the search's own; a re-timing (`Store.record_retime`) adds its number
    beside it, so every value ever measured is kept and the latest is the one in force.
    """

    __tablename__ = "nas_latencies"
    # Latency depends on the shape, not the weights: reuse it across searches.
    __table_args__ = (Index(None, "arch_hash", "profile_hash"),)

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("nas_candidates.id", ondelete="CASCADE"), primary_key=True)
    profile: Mapped[str] = mapped_column(String(200), primary_key=True)
    measurement: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False,
                                             server_default="0")
    profile_hash: Mapped[str] = mapped_column(String(64))
    arch_hash: Mapped[str] = mapped_column(String(64))
    prefill_median_ms: Mapped[float] = mapped_column(nullable=True)
    prefill_p90_ms: Mapped[float] = mapped_column(nullable=True)
    prefill_cv: Mapped[float] = mapped_column(nullable=True)
    prefill_n: Mapped[int] = mapped_column(Integer)
    decode_median_ms: Mapped[float] = mapped_column(nullable=True)
    decode_p90_ms: Mapped[float] = mapped_column(nullable=True)
    decode_cv: Mapped[float] = mapped_column(nullable=True)
    decode_n: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(255))
    measured_at: Mapped[datetime]
    # The rest of `ProfileLatency` (`nas.store.rows.workload_json`): workload stats by metric
    # suffix, tokens_per_s, peak_mb, estimate_mb, bootstrap intervals, the measuring host's
    # name. NULL in rows written before migration 0006.
    workload: Mapped[dict[str, Any] | None]
    # `MachineInfo.hash` of what measured it (nas_machines); NULL: unknown (before 0006).
    machine_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Machine(Base):
    """A kind of machine that took measurements, by `MachineInfo.hash` (host names excluded:
    identical nodes are one machine; each latency row keeps its own host)."""

    __tablename__ = "nas_machines"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    info: Mapped[dict[str, Any]]  # MachineInfo.to_dict() without the hostname
    first_seen: Mapped[datetime]


class Retime(Base):
    """One re-timing of a search's front (`nas.store.records.RetimeRecord`)."""

    __tablename__ = "nas_retimes"
    __table_args__ = (UniqueConstraint("search_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("nas_searches.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ...: its measurements' `measurement`
    created_at: Mapped[datetime]
    machine_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    profiles: Mapped[list[Any]]  # profile names timed
    members: Mapped[list[Any]]  # candidate ids timed together
    front_before: Mapped[list[Any]]
    front_after: Mapped[list[Any]]
    unresolved: Mapped[list[Any]]  # [[candidate a, candidate b, metric], ...]
    rounds: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Double)


class ParetoSnapshot(Base):
    """The front after ``n_complete`` finished candidates: hypervolume over time."""

    __tablename__ = "nas_pareto_snapshots"
    # One snapshot per count: re-adding one (a retried write, a resumed search) replaces it.
    __table_args__ = (UniqueConstraint("search_id", "n_complete"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("nas_searches.id", ondelete="CASCADE"))
    n_complete: Mapped[int] = mapped_column(Integer)
    # None until the reference point is fixed (plain Double: None must not read back as NaN).
    hypervolume: Mapped[float | None] = mapped_column(Double, nullable=True)
    front: Mapped[list[Any]]  # candidate ids on the front
    created_at: Mapped[datetime]
    # Training tokens the search had spent by then (every rung of every candidate); None in
    # snapshots written before rungs existed.
    tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Weights(Base):
    """Trained weights of a candidate, kept apart so that listing candidates never reads them."""

    __tablename__ = "nas_weights"

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("nas_candidates.id", ondelete="CASCADE"), primary_key=True)
    format: Mapped[str] = mapped_column(String(32))  # "safetensors"
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column("bytes", LargeBinary, deferred=True)
    created_at: Mapped[datetime]


class Rung(Base):
    """A candidate's validation loss at one rung; ``id`` is the order of arrival at the rungs,
    which promotion decisions depend on (`nas.fidelity.promotes`)."""

    __tablename__ = "nas_rungs"
    __table_args__ = (UniqueConstraint("candidate_id", "rung"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("nas_candidates.id", ondelete="CASCADE"))
    rung: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    val_loss: Mapped[float] = mapped_column(nullable=True)
    seconds: Mapped[float] = mapped_column(nullable=True)
    created_at: Mapped[datetime]


class Checkpoint(Base):
    """The training state a promoted candidate continues from (weights, optimizer, data
    position): kept only while the candidate is running, so the store stays bounded."""

    __tablename__ = "nas_checkpoints"

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("nas_candidates.id", ondelete="CASCADE"), primary_key=True)
    rung: Mapped[int] = mapped_column(Integer)  # the rung it ended
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column("bytes", LargeBinary, deferred=True)
    created_at: Mapped[datetime]


__all__ = ["Rung", "Checkpoint", "Base", "Candidate", "Latency", "Machine", "Metric", "ParetoSnapshot",
           "Retime", "Search", "Weights", "UTCDateTime", "Real", "utcnow", "SEARCH_STATUSES",
           "CANDIDATE_STATES"]
