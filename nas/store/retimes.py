"""The store's re-timing half: every measurement of a candidate, and re-timings of a front.

A re-timing (`nas.retime`) times a search's front members together and writes their new
measurements beside the old ones (``measurement`` = the re-timing's number), so nothing
measured is ever overwritten: `latency_history` shows all of it, `CandidateRecord.latencies`
the latest. The members' latency and throughput metrics, which fronts and constraints read,
take the new values in the same transaction, with the record of what changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from nas.errors import StoreError
from nas.results import MachineInfo, ProfileLatency
from nas.store.engine import retrying
from nas.store.records import RetimeRecord
from nas.store.rows import (
    insert_latencies,
    latency_columns,
    machine_join,
    profile_latency,
    search_row,
    upsert_machines,
)
from nas.store.tables import Candidate, Latency, Machine, Metric, Retime, utcnow

# Metrics a re-timing replaces: timings. Memory is measured once per candidate, by the search
# (a process holding every member's sessions is no measure of one deployment's peak).
RETIMED_KINDS = ("latency:", "throughput:")


class RetimeStore:
    """Mixed into `nas.store.Store`, which provides the sessions."""

    retry_attempts: int
    retry_backoff_s: float

    def _read(self) -> AbstractContextManager[Session]:  # pragma: no cover - Store's
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Session]:  # pragma: no cover - Store's
        raise NotImplementedError

    def describe_url(self) -> str:  # pragma: no cover - Store's
        raise NotImplementedError

    @retrying
    def latency_history(self, candidate_id: int) -> list[ProfileLatency]:
        """Every measurement of a candidate, by profile and then measurement (0: the search's,
        then each re-timing's); [] for a candidate without any."""
        with self._read() as session:
            rows = session.execute(machine_join(select(*latency_columns()))
                                   .where(Latency.candidate_id == candidate_id)
                                   .order_by(Latency.profile, Latency.measurement))
            return [profile_latency(row) for row in rows]

    def record_retime(self, search: str, *, latencies: Mapping[int, Sequence[ProfileLatency]],
                      machine: MachineInfo, profiles: Sequence[str], members: Sequence[int],
                      front_before: Sequence[int], front_after: Sequence[int],
                      unresolved: Sequence[tuple[int, int, str]], rounds: int,
                      seconds: float) -> RetimeRecord:
        """Store one re-timing in one transaction: the new measurements (by candidate id, each
        numbered with the re-timing), the members' latency/throughput metrics set to them, the
        machine, and the record. The previous measurements stay (`latency_history`).

        The record's machine is the kind (`MachineInfo.hash`), its host name left out; each
        measurement keeps the host that took it. Candidates must belong to ``search``
        (StoreError otherwise). The timestamp is taken
        once, here: a retry after a lost commit acknowledgement finds its record and returns
        it instead of writing a second re-timing.
        """
        return self._record_retime(
            search, utcnow(), latencies={int(k): tuple(v) for k, v in latencies.items()},
            machine=dataclasses.replace(machine, hostname=""), profiles=tuple(profiles),
            members=tuple(int(m) for m in members),
            front_before=tuple(int(i) for i in front_before),
            front_after=tuple(int(i) for i in front_after),
            unresolved=tuple((int(a), int(b), str(m)) for a, b, m in unresolved),
            rounds=int(rounds), seconds=float(seconds))

    @retrying
    def _record_retime(self, search: str, now: datetime, *,
                       latencies: dict[int, tuple[ProfileLatency, ...]], machine: MachineInfo,
                       profiles: tuple[str, ...], members: tuple[int, ...],
                       front_before: tuple[int, ...], front_after: tuple[int, ...],
                       unresolved: tuple[tuple[int, int, str], ...], rounds: int,
                       seconds: float) -> RetimeRecord:
        with self._write() as session:
            owner = search_row(session, search)
            done = session.scalar(select(Retime).where(Retime.search_id == owner.id,
                                                       Retime.created_at == now))
            if done is not None:
                return _record(done, search, machine)
            hashes = dict(session.execute(
                select(Candidate.id, Candidate.arch_hash)
                .where(Candidate.search_id == owner.id, Candidate.id.in_(list(latencies)))).all())
            strangers = sorted(set(latencies) - set(hashes))
            if strangers:
                raise StoreError(f"search {search!r} has no candidates with ids {strangers}; "
                                 "a re-timing stores measurements of its own candidates only")
            number = int(session.scalar(select(func.coalesce(func.max(Retime.number), 0))
                                        .where(Retime.search_id == owner.id)) or 0) + 1
            upsert_machines(session, [machine], now)
            for candidate_id, measured in latencies.items():
                insert_latencies(session, candidate_id, hashes[candidate_id], measured, now, number)
                _replace_metrics(session, candidate_id, measured)
            row = Retime(search_id=owner.id, number=number, created_at=now,
                         machine_hash=machine.hash, profiles=list(profiles), members=list(members),
                         front_before=list(front_before), front_after=list(front_after),
                         unresolved=[list(u) for u in unresolved], rounds=rounds, seconds=seconds)
            session.add(row)
            owner.updated_at = now
            session.flush()
            return _record(row, search, machine)

    @retrying
    def retimes(self, search: str) -> list[RetimeRecord]:
        """Every re-timing of a search, oldest (number 1) first."""
        with self._read() as session:
            search_id = search_row(session, search).id
            rows = session.execute(
                select(Retime, Machine.info).outerjoin(Machine, Machine.hash == Retime.machine_hash)
                .where(Retime.search_id == search_id).order_by(Retime.number)).all()
            return [_record(row, search, None if info is None else MachineInfo.from_dict(info))
                    for row, info in rows]


def _replace_metrics(session: Session, candidate_id: int, measured: Sequence[ProfileLatency]) -> None:
    values = {name: value for lat in measured for name, value in lat.metrics().items()
              if name.startswith(RETIMED_KINDS)}
    if not values:
        return
    session.execute(delete(Metric).where(Metric.candidate_id == candidate_id,
                                         Metric.name.in_(list(values)))
                    .execution_options(synchronize_session=False))
    session.execute(insert(Metric), [{"candidate_id": candidate_id, "name": name, "value": float(value)}
                                     for name, value in values.items()])


def _record(row: Retime, search: str, machine: MachineInfo | None) -> RetimeRecord:
    return RetimeRecord(
        number=row.number, search=search, created_at=row.created_at, machine=machine,
        profiles=tuple(row.profiles), members=tuple(int(i) for i in row.members),
        front_before=tuple(int(i) for i in row.front_before),
        front_after=tuple(int(i) for i in row.front_after),
        unresolved=tuple((int(a), int(b), str(m)) for a, b, m in row.unresolved),
        rounds=row.rounds, seconds=float(row.seconds))
