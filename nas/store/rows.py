"""Rows to records and back, inside the caller's session: the mapping between the ORM tables
and the frozen records `Store` hands out, kept apart from the queries and transactions."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session

from nas.architecture import Architecture
from nas.errors import NotFoundError, StoreError
from nas.results import LatencyStats, MachineInfo, ProfileLatency, RungLoss
from nas.store.records import (
    CandidateRecord,
    SearchRecord,
    SearchSummary,
    SnapshotRecord,
    shown_status,
)
from nas.store.tables import (
    LIVE_STATUSES,
    Candidate,
    Checkpoint,
    Latency,
    Machine,
    Metric,
    ParetoSnapshot,
    Rung,
    Search,
    Weights,
)

_NAMES_SHOWN = 20  # existing search names listed in a NotFoundError


def search_row(session: Session, name: str) -> Search:
    row = session.scalar(select(Search).where(Search.name == name))
    if row is None:
        names = list(session.scalars(select(Search.name).order_by(Search.created_at)
                                     .limit(_NAMES_SHOWN + 1)))
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        raise NotFoundError(f"no search named {name!r} (existing: {shown or 'none'})")
    return row


def check_same_search(row: Search, space_hash: str, study_name: str,
                      parent: dict[str, Any] | None) -> None:
    """A create of an existing search must be a retry of the same one: the same space and
    study, and the same parent (by fingerprint: the same files at another path are the same
    parent); StoreError otherwise."""
    if row.space_hash != space_hash or row.study_name != study_name:
        raise StoreError(
            f"search {row.name!r} already exists with another space or study "
            f"(space hash {row.space_hash} vs {space_hash}, study {row.study_name!r} "
            f"vs {study_name!r})")
    stored, given = (None if p is None else p.get("fingerprint") for p in (row.parent, parent))
    if stored != given:
        raise StoreError(f"search {row.name!r} already exists with another parent (fingerprint "
                         f"{stored or 'none'} vs {given or 'none'})")


def candidate_row(session: Session, search_id: int, trial_number: int) -> Candidate | None:
    return session.scalar(select(Candidate).where(Candidate.search_id == search_id,
                                                  Candidate.trial_number == trial_number))


def search_id_of(session: Session, name: str) -> int:
    """The id of search ``name`` (its other columns are not read); NotFoundError otherwise."""
    found = session.scalar(select(Search.id).where(Search.name == name))
    return search_row(session, name).id if found is None else int(found)


def touch_search(session: Session, name: str, now: datetime) -> int:
    """Mark search ``name`` updated at ``now`` and return its id: what every candidate write
    needs of its search, in one statement; NotFoundError when there is no such search.

    Once per transaction: the writes of a batch (`nas.store.batch`) share one commit, so the
    first one's touch marks the time they all become visible (to within the batch)."""
    touched = session.info.setdefault("touched_searches", {})
    if name not in touched:
        found = session.scalar(update(Search).where(Search.name == name).values(updated_at=now)
                               .returning(Search.id).execution_options(synchronize_session=False))
        touched[name] = search_row(session, name).id if found is None else int(found)
    return touched[name]


def trial_row(session: Session, search: str, trial_number: int, *,
              touch: datetime | None = None) -> Candidate:
    """A search's started trial; ``touch``: also mark the search updated then (a write).
    NotFoundError when there is no such search or trial."""
    owner = search_id_of(session, search) if touch is None else touch_search(session, search, touch)
    row = candidate_row(session, owner, trial_number)
    if row is None:
        raise NotFoundError(f"search {search!r} has no trial {trial_number}")
    return row


RESULT_TABLES = (Metric, Latency, Weights)  # what a finished trial holds besides rungs


def delete_results(session: Session, candidate_id: int, *,
                   tables: Sequence[type] = RESULT_TABLES) -> None:
    """A trial's result rows (of ``tables``, some of `RESULT_TABLES`); its rungs and checkpoint
    are `delete_training`'s."""
    for table in tables:
        session.execute(delete(table).where(table.candidate_id == candidate_id)
                        .execution_options(synchronize_session=False))


def delete_training(session: Session, candidate_id: int, *, keep_rungs: bool = False) -> None:
    """The checkpoint (and, unless ``keep_rungs``, the rung losses) of a candidate."""
    for table in (Checkpoint,) if keep_rungs else (Checkpoint, Rung):
        session.execute(delete(table).where(table.candidate_id == candidate_id)
                        .execution_options(synchronize_session=False))


def write_rung(session: Session, candidate_id: int, rung: RungLoss, now: Any) -> None:
    """Insert (or replace, for a rung re-run after a crash) one rung's loss."""
    session.execute(delete(Rung).where(Rung.candidate_id == candidate_id, Rung.rung == rung.rung)
                    .execution_options(synchronize_session=False))
    session.add(Rung(candidate_id=candidate_id, rung=rung.rung, tokens=rung.tokens,
                     val_loss=rung.val_loss, seconds=rung.seconds, created_at=now))


def rung_loss(row: Any) -> RungLoss:
    return RungLoss(rung=row.rung, tokens=int(row.tokens), val_loss=row.val_loss,
                    seconds=row.seconds)


def _stats_json(stats: LatencyStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def _stats(data: Mapping[str, Any]) -> LatencyStats:
    return LatencyStats(median_ms=float(data["median_ms"]), p90_ms=float(data["p90_ms"]),
                        cv=float(data["cv"]), n=int(data["n"]), ci_low_ms=data.get("ci_low_ms"),
                        ci_high_ms=data.get("ci_high_ms"))


def workload_json(lat: ProfileLatency) -> dict[str, Any] | None:
    """Everything of ``lat`` beyond the prefill/decode columns; None when there is nothing
    (a plain profile measured without intervals on an unnamed host)."""
    data: dict[str, Any] = {}
    if lat.workload:
        data["stats"] = {suffix: _stats_json(stats) for suffix, stats in lat.workload}
    for name in ("tokens_per_s", "peak_mb", "estimate_mb"):
        if getattr(lat, name) is not None:
            data[name] = float(getattr(lat, name))
    for phase, stats in (("prefill", lat.prefill), ("decode", lat.decode)):
        if stats.ci_low_ms is not None or stats.ci_high_ms is not None:
            data[f"{phase}_ci"] = [stats.ci_low_ms, stats.ci_high_ms]
    if lat.machine is not None and lat.machine.hostname:
        data["hostname"] = lat.machine.hostname  # nas_machines holds what identical hosts share
    return data or None


def machine_json(machine: MachineInfo) -> dict[str, Any]:
    """A nas_machines row's info: the machine without the host that happened to report it."""
    data = machine.to_dict()
    data.pop("hostname", None)
    return data


def latency_values(candidate_id: int, arch_hash: str, lat: ProfileLatency,
                   now: Any, measurement: int | None = None) -> dict[str, Any]:
    """A nas_latencies row; ``measurement`` overrides ``lat.measurement`` (a re-timing's number)."""
    values: dict[str, Any] = {
        "candidate_id": candidate_id, "profile": lat.profile, "profile_hash": lat.profile_hash,
        "arch_hash": arch_hash, "node": lat.node, "measured_at": now,
        "measurement": lat.measurement if measurement is None else measurement,
        "workload": workload_json(lat), "machine_hash": None if lat.machine is None else lat.machine.hash}
    for phase, stats in (("prefill", lat.prefill), ("decode", lat.decode)):
        values.update({f"{phase}_median_ms": stats.median_ms, f"{phase}_p90_ms": stats.p90_ms,
                       f"{phase}_cv": stats.cv, f"{phase}_n": stats.n})
    return values


def upsert_machines(session: Session, machines: Iterable[MachineInfo | None], now: Any) -> None:
    """Record ``machines`` (first seen now); a known hash stays as it is. INSERT ... ON
    CONFLICT DO NOTHING: a `nas retime` and a search may record the same one at once."""
    by_hash = {m.hash: m for m in machines if m is not None}
    if not by_hash:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    session.execute(dialect_insert(Machine).on_conflict_do_nothing(index_elements=["hash"]),
                    [{"hash": h, "info": machine_json(m), "first_seen": now} for h, m in by_hash.items()])


def insert_latencies(session: Session, candidate_id: int, arch_hash: str,
                     latencies: Sequence[ProfileLatency], now: Any,
                     measurement: int | None = None) -> None:
    """Insert latency rows (and their machines) for one candidate."""
    if not latencies:
        return
    upsert_machines(session, (lat.machine for lat in latencies), now)
    session.execute(insert(Latency), [latency_values(candidate_id, arch_hash, lat, now, measurement)
                                      for lat in latencies])


def latency_columns() -> list[Any]:
    """The columns `profile_latency` reads: a latency row with its machine's info (outer join
    with `machine_join`; NULL for rows from before migration 0006)."""
    return [*Latency.__table__.c, Machine.info.label("machine_info")]


def machine_join(query: Select[Any]) -> Select[Any]:
    return query.outerjoin(Machine, Machine.hash == Latency.machine_hash)


def profile_latency(row: Any) -> ProfileLatency:
    """A `latency_columns` row as the `ProfileLatency` that was stored, every field included."""
    extra: Mapping[str, Any] = row.workload or {}
    cis = {phase: extra.get(f"{phase}_ci") or [None, None] for phase in ("prefill", "decode")}
    info = getattr(row, "machine_info", None)
    machine = (None if info is None
               else MachineInfo.from_dict({**info, "hostname": extra.get("hostname", "")}))
    return ProfileLatency(
        profile=row.profile, profile_hash=row.profile_hash, node=row.node,
        prefill=LatencyStats(row.prefill_median_ms, row.prefill_p90_ms, row.prefill_cv, row.prefill_n,
                             *cis["prefill"]),
        decode=LatencyStats(row.decode_median_ms, row.decode_p90_ms, row.decode_cv, row.decode_n,
                            *cis["decode"]),
        workload=tuple((suffix, _stats(stats)) for suffix, stats in extra.get("stats", {}).items()),
        tokens_per_s=extra.get("tokens_per_s"), peak_mb=extra.get("peak_mb"),
        estimate_mb=extra.get("estimate_mb"), machine=machine, measurement=int(row.measurement))


def latest_latencies(rows: Iterable[Any]) -> dict[int, list[ProfileLatency]]:
    """Per candidate, the latest measurement on each profile (by profile name): what is in
    force. ``rows`` ordered by candidate, profile and measurement."""
    latest: dict[tuple[int, str], Any] = {}
    for row in rows:
        latest[(row.candidate_id, row.profile)] = row  # later measurements overwrite earlier
    out: dict[int, list[ProfileLatency]] = defaultdict(list)
    for (candidate_id, _profile), row in latest.items():
        out[candidate_id].append(profile_latency(row))
    return out


def load_candidates(session: Session, *where: ColumnElement[bool],
                     with_proxy: bool = True) -> list[CandidateRecord]:
    """Candidates matching ``where`` with metrics, latencies (the latest measurement per
    profile, with its machine), weights flags and rungs: five queries.

    Core column selects on the session's connection, not ORM entities: 10,000 candidates
    would otherwise mean 10,000 identity-map entries and change tracking for nothing.
    """
    conn = session.connection()
    rows = conn.execute(
        select(Candidate.id, Search.name, Candidate.trial_number, Candidate.architecture,
               Candidate.arch_hash, Candidate.state, Candidate.error, Candidate.attempts,
               Candidate.timings, Candidate.proxy if with_proxy else literal(None).label("proxy"),
               Candidate.node, Candidate.started_at, Candidate.finished_at,
               Candidate.derivation if with_proxy else literal(None).label("derivation"))
        .join(Search, Search.id == Candidate.search_id).where(*where)
        .order_by(Candidate.search_id, Candidate.trial_number)).all()
    if not rows:
        return []
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    for candidate_id, name, value in conn.execute(
            select(Metric.candidate_id, Metric.name, Metric.value)
            .join(Candidate, Candidate.id == Metric.candidate_id).where(*where)):
        metrics[candidate_id][name] = value
    latencies = latest_latencies(conn.execute(machine_join(
        select(*latency_columns()).join(Candidate, Candidate.id == Latency.candidate_id))
        .where(*where).order_by(Latency.candidate_id, Latency.profile, Latency.measurement)))
    with_weights = set(conn.scalars(
        select(Weights.candidate_id).join(Candidate, Candidate.id == Weights.candidate_id)
        .where(*where)))
    rungs: dict[int, list[RungLoss]] = defaultdict(list)
    for rung in conn.execute(
            select(Rung.candidate_id, Rung.rung, Rung.tokens, Rung.val_loss, Rung.seconds)
            .join(Candidate, Candidate.id == Rung.candidate_id).where(*where)
            .order_by(Rung.candidate_id, Rung.rung)):
        rungs[rung.candidate_id].append(rung_loss(rung))
    archs: dict[str, Architecture] = {}  # searches revisit shapes; frozen, so shareable
    records = []
    for row in rows:
        arch = archs.get(row.arch_hash)
        if arch is None:
            arch = archs[row.arch_hash] = Architecture.from_dict(row.architecture)
        records.append(CandidateRecord(
            id=row.id, search=row.name, trial_number=row.trial_number, architecture=arch,
            arch_hash=row.arch_hash, state=row.state, error=row.error, attempts=row.attempts,
            metrics=metrics.get(row.id, {}), latencies=tuple(latencies.get(row.id, ())),
            proxy=row.proxy or {}, timings=row.timings, node=row.node,
            started_at=row.started_at, finished_at=row.finished_at,
            has_weights=row.id in with_weights, rungs=tuple(rungs.get(row.id, ())),
            derivation=row.derivation))
    return records


def search_record(row: Search) -> SearchRecord:
    return SearchRecord(
        id=row.id, name=row.name, space=row.space, space_hash=row.space_hash,
        profiles=tuple(row.profiles), objectives=tuple((m, d) for m, d in row.objectives),
        constraints=tuple(row.constraints), data=row.data, budget=row.budget, trials=row.trials,
        status=shown_status(row.status, row.heartbeat_at), study_name=row.study_name,
        reference_point=None if row.reference_point is None else tuple(row.reference_point),
        error=row.error, created_at=row.created_at, started_at=row.started_at,
        finished_at=row.finished_at, updated_at=row.updated_at, heartbeat_at=row.heartbeat_at,
        fidelity=row.fidelity, parent=row.parent)


def search_summaries(session: Session) -> list[SearchSummary]:
    """Every search, oldest first, with its counts per state and latest Pareto snapshot:
    three queries whatever the number of searches (`Store.list_searches`)."""
    searches = session.execute(
        select(Search.id, Search.name, Search.status, Search.trials, Search.created_at,
               Search.updated_at, Search.finished_at, Search.heartbeat_at)
        .order_by(Search.created_at, Search.id)
    ).all()
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for search_id, state, n in session.execute(
            select(Candidate.search_id, Candidate.state, func.count())
            .group_by(Candidate.search_id, Candidate.state)):
        counts[search_id][state] = n
    latest = (select(ParetoSnapshot.search_id,
                     func.max(ParetoSnapshot.n_complete).label("n_complete"))
              .group_by(ParetoSnapshot.search_id).subquery())
    fronts = {
        search_id: (hypervolume, front) for search_id, hypervolume, front in session.execute(
            select(ParetoSnapshot.search_id, ParetoSnapshot.hypervolume, ParetoSnapshot.front)
            .join(latest, (ParetoSnapshot.search_id == latest.c.search_id)
                  & (ParetoSnapshot.n_complete == latest.c.n_complete)))
    }
    summaries = []
    for row in searches:
        by_state = counts.get(row.id, {})
        hypervolume, front = fronts.get(row.id, (None, []))
        status = shown_status(row.status, row.heartbeat_at)
        in_flight = by_state.get("running", 0)
        live = status in LIVE_STATUSES
        summaries.append(SearchSummary(
            name=row.name, status=status, trials=row.trials,
            n_complete=by_state.get("complete", 0), n_failed=by_state.get("failed", 0),
            n_pruned=by_state.get("pruned", 0), n_running=in_flight if live else 0,
            front_size=len(front), hypervolume=hypervolume, created_at=row.created_at,
            updated_at=row.updated_at, finished_at=row.finished_at,
            n_interrupted=0 if live else in_flight, n_infeasible=by_state.get("infeasible", 0)))
    return summaries


def snapshot_record(row: Any) -> SnapshotRecord:
    return SnapshotRecord(n_complete=row.n_complete, hypervolume=row.hypervolume,
                          front_ids=tuple(int(i) for i in row.front), created_at=row.created_at,
                          tokens=None if row.tokens is None else int(row.tokens))

