"""A candidate's writes, each given the session to run in: `Store` runs one in its own
transaction, `nas.store.batch.WriteBatch` runs many in one.

Every write is idempotent (repeating it, or a batch of them, after a commit whose
acknowledgement was lost, changes nothing but ``attempts``), which is what lets `Store`
retry a transaction whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from nas.architecture import Architecture
from nas.errors import StoreError
from nas.results import CandidateResult, ProfileLatency, RungLoss, to_jsonable
from nas.states import CANDIDATE_STATES
from nas.store.records import CandidateRecord
from nas.store.rows import (
    RESULT_TABLES,
    candidate_row,
    delete_results,
    delete_training,
    insert_latencies,
    load_candidates,
    touch_search,
    trial_row,
    write_rung,
)
from nas.store.tables import Candidate, Checkpoint, Latency, Metric, Weights, utcnow

FINISHED_STATES = tuple(s for s in CANDIDATE_STATES if s != "running")


def start_candidate(session: Session, search: str, trial_number: int, architecture: Architecture) -> int:
    """`Store.start_candidate`'s write: the candidate id of a trial now running."""
    now = utcnow()
    owner_id = touch_search(session, search, now)
    row = candidate_row(session, owner_id, trial_number)
    if row is None:
        row = Candidate(search_id=owner_id, trial_number=trial_number, attempts=1)
        session.add(row)
    elif row.state == "complete":
        raise StoreError(f"search {search!r} trial {trial_number} is already complete "
                         f"(candidate {row.id}); refusing to run it again")
    else:
        row.attempts += 1
        # A crash re-run keeps its shape step's latencies (they depend on shape only)
        # and the rungs it finished, whose checkpoint it continues from.
        keep = row.state == "running" and row.arch_hash == architecture.hash
        delete_results(session, row.id, tables=(Metric, Weights) if keep else RESULT_TABLES)
        if not keep:
            delete_training(session, row.id)
    row.architecture, row.arch_hash = architecture.to_dict(), architecture.hash
    row.state, row.error, row.timings, row.proxy, row.node = "running", "", {}, None, ""
    row.derivation = None  # written with its result (`finish_candidate`)
    row.started_at, row.finished_at = now, None
    session.flush()
    return row.id


def check_finished_state(result: CandidateResult) -> None:
    if result.state not in FINISHED_STATES:
        raise ValueError(f"state={result.state!r} must be one of {', '.join(FINISHED_STATES)}")


def finish_candidate(session: Session, search: str, trial_number: int, result: CandidateResult, *,
                     read_back: bool = True) -> CandidateRecord | None:
    """`Store.finish_candidate`'s write: everything a trial produced; its record if ``read_back``."""
    check_finished_state(result)
    now = utcnow()
    arch = result.architecture
    owner_id = touch_search(session, search, now)
    row = candidate_row(session, owner_id, trial_number)
    # What there is to replace: nothing in a new row; in a running one only its shape
    # step's latencies (`start_candidate` cleared the rest); a finished one (this call
    # repeated) holds all of it.
    held = () if row is None else (Latency,) if row.state == "running" else RESULT_TABLES
    if row is None:
        row = Candidate(search_id=owner_id, trial_number=trial_number, attempts=1, started_at=now)
        session.add(row)
    row.architecture, row.arch_hash = arch.to_dict(), arch.hash
    row.state, row.error, row.node = result.state, result.error, result.node
    row.timings = {k: float(v) for k, v in result.timings.items()}
    row.proxy = None if result.proxy is None else to_jsonable(result.proxy)
    row.derivation = None if result.derivation is None else to_jsonable(result.derivation)
    row.finished_at = now
    session.flush()
    delete_results(session, row.id, tables=held)
    if result.metrics:
        session.execute(insert(Metric), [
            {"candidate_id": row.id, "name": name, "value": float(value)}
            for name, value in result.metrics.items()])
    # The search's own measurement (0), whatever a reused cached one was numbered.
    insert_latencies(session, row.id, arch.hash, result.latencies, now, measurement=0)
    if result.weights is not None:
        session.execute(insert(Weights), [{
            "candidate_id": row.id, "format": "safetensors", "size": len(result.weights),
            "data": result.weights, "created_at": now}])
    if held:
        delete_training(session, row.id, keep_rungs=True)
    if result.rung is not None:
        write_rung(session, row.id, result.rung, now)
        session.flush()
    return load_candidates(session, Candidate.id == row.id)[0] if read_back else None


def record_shape(session: Session, search: str, trial_number: int,
                 latencies: Sequence[ProfileLatency]) -> None:
    """`Store.record_shape`'s write: a running trial's shape-step latencies."""
    now = utcnow()
    row = _running(session, search, trial_number, now)
    session.execute(delete(Latency).where(Latency.candidate_id == row.id)
                    .execution_options(synchronize_session=False))
    insert_latencies(session, row.id, row.arch_hash, latencies, now, measurement=0)


def record_rung(session: Session, search: str, trial_number: int, rung: RungLoss,
                checkpoint: bytes) -> None:
    """`Store.record_rung`'s write: a rung's loss and the checkpoint the next rung continues from."""
    now = utcnow()
    row = _running(session, search, trial_number, now)
    write_rung(session, row.id, rung, now)
    delete_training(session, row.id, keep_rungs=True)
    session.add(Checkpoint(candidate_id=row.id, rung=rung.rung, size=len(checkpoint),
                           data=checkpoint, created_at=now))


def _running(session: Session, search: str, trial_number: int, now: object) -> Candidate:
    row = trial_row(session, search, trial_number, touch=now)
    if row.state != "running":
        raise StoreError(f"search {search!r} trial {trial_number} is {row.state}, not running")
    return row
