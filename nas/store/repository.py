"""`Store`: the repository over the search database.

One writer (the search driver) and any number of concurrent readers (``nas serve``,
reports, export, optuna-dashboard). Every method is one transaction; every write is
idempotent, so `retrying` may re-run it after a lost connection without duplicating rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from nas.architecture import Architecture
from nas.errors import NotFoundError, StoreError
from nas.results import CandidateResult, ProfileLatency, to_jsonable
from nas.store import engine as _engine
from nas.store import migrate, writes
from nas.store.engine import retrying
from nas.store.records import (
    CandidateRecord,
    SearchRecord,
    SearchSummary,
    SnapshotRecord,
)
from nas.store.retimes import RetimeStore
from nas.store.rows import (
    check_same_search,
    latency_columns,
    load_candidates,
    machine_join,
    profile_latency,
    search_id_of,
    search_record,
    search_row,
    search_summaries,
    snapshot_record,
    trial_row,
)
from nas.store.rungs import RungStore
from nas.store.tables import (
    CANDIDATE_STATES,
    LIVE_STATUSES,
    SEARCH_STATUSES,
    Candidate,
    Checkpoint,
    Latency,
    Metric,
    ParetoSnapshot,
    Retime,
    Rung,
    Search,
    Weights,
    utcnow,
)

if TYPE_CHECKING:
    import optuna



T = TypeVar("T")


class Store(RungStore, RetimeStore):
    """The search database at ``url`` (default ``sqlite:///nas.db``), upgraded to head on open.

    Raises StoreError naming the URL (password masked) when the database cannot be
    opened or its schema is newer than this code.
    """

    def __init__(self, url: str = _engine.DEFAULT_URL, *, retry_attempts: int = 5,
                 retry_backoff_s: float = 0.5, must_exist: bool = False) -> None:
        """``must_exist``: for readers; a missing SQLite file is a StoreError, not created."""
        self.retry_attempts = retry_attempts  # 5 attempts, 0.5 s doubling: ~7.5 s of outage
        self.retry_backoff_s = retry_backoff_s
        self._url = _engine.parse_url(url)
        self.engine = _engine.create_store_engine(self._url, must_exist=must_exist)
        try:
            migrate.upgrade(self.engine, self.describe_url())
        except DBAPIError as err:
            self.engine.dispose()
            raise StoreError(_engine.open_error(self._url, err)) from err
        except BaseException:
            self.engine.dispose()
            raise
        self._writer = self.engine.execution_options(**{_engine.WRITE: True})
        # Reads span several queries (candidates, then their metrics...): on PostgreSQL
        # they must see one snapshot. SQLite transactions are snapshots already.
        self._reader = (self.engine.execution_options(isolation_level="REPEATABLE READ")
                        if self.engine.dialect.name == "postgresql" else self.engine)

    # ----- plumbing ---------------------------------------------------------------------
    def describe_url(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return _engine.describe(self._url)

    def __repr__(self) -> str:
        return f"Store({self.describe_url()!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._reader) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer) as session, session.begin():
            yield session

    def optuna_storage(self, kind: type[optuna.storages.RDBStorage] | None = None,
                       ) -> optuna.storages.RDBStorage:
        """Optuna's storage on the same database, so optuna-dashboard sees the study; ``kind``:
        an `RDBStorage` subclass to make instead (the driver's `nas.search.mirror.WriterStorage`)."""
        import optuna

        if _engine.is_memory(self._url):
            raise StoreError("an in-memory SQLite database cannot be shared with Optuna; "
                             "use a file (sqlite:///nas.db)")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if _engine.is_sqlite(self._url):
            # WAL is a property of the file (set by our engine); the busy timeout is per connection.
            kwargs["connect_args"] = {"timeout": _engine.BUSY_TIMEOUT_S}
        return (kind or optuna.storages.RDBStorage)(self._url.render_as_string(hide_password=False),
                                                    engine_kwargs=kwargs)

    # ----- searches ---------------------------------------------------------------------
    @retrying
    def create_search(self, name: str, *, space: dict[str, Any], space_hash: str,
                      profiles: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, str]],
                      constraints: Sequence[str], data: dict[str, Any], budget: dict[str, Any],
                      trials: int, study_name: str, fidelity: dict[str, Any] | None = None,
                      parent: dict[str, Any] | None = None) -> SearchRecord:
        """Create a running search; if it exists with the same space, study and parent, return it.

        ``parent`` is `nas.parent.ParentRef.record` (None: candidates train from scratch).
        Returning the existing one makes a retried create harmless; a different space, study
        or parent fingerprint under the same name is a StoreError (the driver checks
        `find_search` first).
        """
        now = utcnow()
        with self._write() as session:
            row = session.scalar(select(Search).where(Search.name == name))
            if row is not None:
                check_same_search(row, space_hash, study_name, parent)
                return search_record(row)
            row = Search(name=name, space=dict(space), space_hash=space_hash,
                         profiles=[dict(p) for p in profiles],
                         objectives=[[metric, direction] for metric, direction in objectives],
                         constraints=list(constraints), data=dict(data), budget=dict(budget),
                         trials=trials, status="running", study_name=study_name,
                         reference_point=None, error="", created_at=now, started_at=now,
                         finished_at=None, updated_at=now, heartbeat_at=now,
                         fidelity=None if fidelity is None else dict(fidelity),
                         parent=None if parent is None else to_jsonable(parent))
            session.add(row)
            session.flush()
            return search_record(row)

    @retrying
    def find_search(self, name: str) -> SearchRecord | None:
        with self._read() as session:
            row = session.scalar(select(Search).where(Search.name == name))
            return None if row is None else search_record(row)

    @retrying
    def get_search(self, name: str) -> SearchRecord:
        """The search called ``name``; NotFoundError listing the existing names otherwise."""
        with self._read() as session:
            return search_record(search_row(session, name))

    @retrying
    def list_searches(self) -> list[SearchSummary]:
        """All searches, oldest first; three queries whatever the number of searches."""
        with self._read() as session:
            return search_summaries(session)

    @retrying
    def set_status(self, name: str, status: str, error: str = "") -> None:
        """running clears the finish time and error; stopped/finished/failed set the finish time."""
        if status not in SEARCH_STATUSES:
            raise ValueError(f"status={status!r} must be one of {', '.join(SEARCH_STATUSES)}")
        now = utcnow()
        with self._write() as session:
            row = search_row(session, name)
            row.status, row.error, row.updated_at = status, error, now
            if status in LIVE_STATUSES:
                row.heartbeat_at = now  # set by the driver itself, or by a reader asking it to stop
                row.started_at = row.started_at or now
                row.finished_at = None
            else:
                row.finished_at = now

    @retrying
    def heartbeat(self, name: str) -> None:
        """The driver of ``name`` is alive (see `nas.store.records.shown_status`)."""
        with self._write() as session:
            search_row(session, name).heartbeat_at = utcnow()

    @retrying
    def update_search(self, name: str, *, trials: int | None = None,
                      reference_point: Sequence[float] | None = None) -> SearchRecord:
        """Change the trials budget (a resumed search may extend it) or record the reference point."""
        with self._write() as session:
            row = search_row(session, name)
            if trials is not None:
                row.trials = trials
            if reference_point is not None:
                row.reference_point = [float(v) for v in reference_point]
            row.updated_at = utcnow()
            session.flush()
            return search_record(row)

    def delete_search(self, name: str) -> SearchRecord:
        """Delete search ``name``, its candidates (metrics, latencies, weights), snapshots and
        its Optuna study; return what was deleted. NotFoundError if there is no such search.

        The study goes first: a study left behind would be loaded (``load_if_exists``) by the
        next search of that name and feed it the old trials. Latency rows belong to one
        candidate each (a search that reused a cached latency stored its own copy), so no
        other search loses anything; the cache forgets the shapes only this search timed.
        Callers refuse to delete a search whose driver is alive (it would write on).
        """
        record = self.get_search(name)
        self._delete_study(record.study_name)
        self._delete_search_rows(name)
        return record

    def _delete_study(self, study_name: str) -> None:
        if _engine.is_memory(self._url):
            return  # Optuna cannot share an in-memory database: there is no study
        import optuna

        storage = self.optuna_storage()
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass  # never created (the driver failed first) or deleted by an earlier attempt
        finally:
            storage.remove_session()
            storage.engine.dispose()

    @retrying
    def _delete_search_rows(self, name: str) -> None:
        """One transaction; children explicitly, not through ON DELETE CASCADE, which SQLite
        enforces only on connections with foreign keys on."""
        with self._write() as session:
            search_id = session.scalar(select(Search.id).where(Search.name == name))
            if search_id is None:
                return  # a retry after a lost commit acknowledgement: already gone
            ids = select(Candidate.id).where(Candidate.search_id == search_id)
            for table in (Metric, Latency, Weights, Rung, Checkpoint):
                session.execute(delete(table).where(table.candidate_id.in_(ids))
                                .execution_options(synchronize_session=False))
            for table in (Candidate, ParetoSnapshot, Retime):
                session.execute(delete(table).where(table.search_id == search_id)
                                .execution_options(synchronize_session=False))
            session.execute(delete(Search).where(Search.id == search_id)
                            .execution_options(synchronize_session=False))

    # ----- candidates: writes -------------------------------------------------------------
    @retrying
    def start_candidate(self, search: str, trial_number: int, architecture: Architecture) -> int:
        """Record a trial as running and return the candidate id.

        A trial that re-runs after a crash keeps its row (and id): it is reset to running,
        anything partial is removed and ``attempts`` goes up; a running trial's shape-step
        latencies (`record_shape`) are kept when the architecture is the same.
        A complete trial is never reset (StoreError): its result is reused, not recomputed. A
        retry of this call after a lost commit acknowledgement counts one attempt too many.
        """
        with self._write() as session:
            return writes.start_candidate(session, search, trial_number, architecture)

    @retrying
    def finish_candidate(self, search: str, trial_number: int, result: CandidateResult, *,
                         read_back: bool = True) -> CandidateRecord | None:
        """Write everything a trial produced in one transaction; repeating it changes nothing.

        The candidate row is created if `start_candidate` was skipped (e.g. a candidate
        pruned before training). Metrics, latencies and weights replace what was stored;
        ``result.rung`` (the rung it ended at) is written with them and its checkpoint dropped;
        ``result.derivation`` (how it came from the search's parent) replaces the stored one.
        Returns the stored record, read back in the same transaction; None with
        ``read_back=False`` (five queries fewer: the driver needs the record of a complete
        candidate only).
        """
        with self._write() as session:
            return writes.finish_candidate(session, search, trial_number, result, read_back=read_back)

    @retrying
    def write_together(self, writes_: Sequence[Callable[[Session], T]]) -> list[T]:
        """Run ``writes_`` (`nas.store.writes` functions given their arguments) in one
        transaction, in order, and return their answers: one commit, and the search touched
        once, for a burst of results (`nas.store.batch.WriteBatch`)."""
        with self._write() as session:
            return [write(session) for write in writes_]

    @retrying
    def record_shape(self, search: str, trial_number: int,
                     latencies: Sequence[ProfileLatency]) -> None:
        """Store the latencies of a running trial's shape step, before it trains: a crash
        during training then finds them in the latency cache. Repeating it changes nothing."""
        with self._write() as session:
            writes.record_shape(session, search, trial_number, latencies)

    @retrying
    def fail_candidate(self, search: str, trial_number: int, error: str,
                       state: str = "failed") -> None:
        """Mark a started trial failed (or pruned) with its error; a complete one is refused."""
        if state not in ("failed", "pruned"):
            raise ValueError(f"state={state!r} must be 'failed' or 'pruned'")
        now = utcnow()
        with self._write() as session:
            row = trial_row(session, search, trial_number, touch=now)
            if row.state == "complete":
                raise StoreError(f"search {search!r} trial {trial_number} is complete "
                                 f"(candidate {row.id}); refusing to mark it {state}")
            row.state, row.error, row.finished_at = state, error, now

    @retrying
    def add_pareto_snapshot(self, search: str, n_complete: int, hypervolume: float | None,
                            front_ids: Iterable[int], tokens: int | None = None) -> SnapshotRecord:
        """Record the front after ``n_complete`` candidates (replacing one with the same count)."""
        now = utcnow()
        with self._write() as session:
            search_id = search_id_of(session, search)
            row = session.scalar(select(ParetoSnapshot).where(
                ParetoSnapshot.search_id == search_id, ParetoSnapshot.n_complete == n_complete))
            if row is None:
                row = ParetoSnapshot(search_id=search_id, n_complete=n_complete)
                session.add(row)
            row.hypervolume = None if hypervolume is None else float(hypervolume)
            row.front, row.created_at, row.tokens = [int(i) for i in front_ids], now, tokens
            session.flush()
            return snapshot_record(row)

    # ----- candidates: reads --------------------------------------------------------------
    @retrying
    def candidates(self, search: str, states: Iterable[str] | None = None, *,
                   with_proxy: bool = True) -> list[CandidateRecord]:
        """Candidates of a search by trial number, optionally only those in ``states``.

        ``with_proxy=False`` leaves ``proxy`` empty and ``derivation`` None: decoding every
        loss curve is ~90% of reading 10,000 candidates, derivations add half again, and
        lists, tables and fronts show neither (a candidate's page reads it by id).
        """
        with self._read() as session:
            where = [Candidate.search_id == search_id_of(session, search)]
            if states is not None:
                wanted = list(states)
                unknown = set(wanted) - set(CANDIDATE_STATES)
                if unknown:
                    raise ValueError(f"states {sorted(unknown)} not in {', '.join(CANDIDATE_STATES)}")
                where.append(Candidate.state.in_(wanted))
            return load_candidates(session, *where, with_proxy=with_proxy)

    @retrying
    def candidate(self, candidate_id: int) -> CandidateRecord:
        with self._read() as session:
            found = load_candidates(session, Candidate.id == candidate_id)
        if not found:
            raise NotFoundError(f"no candidate with id {candidate_id}")
        return found[0]

    @retrying
    def candidate_by_trial(self, search: str, trial_number: int) -> CandidateRecord:
        with self._read() as session:
            search_id = search_id_of(session, search)
            found = load_candidates(session, Candidate.search_id == search_id,
                                     Candidate.trial_number == trial_number)
        if not found:
            raise NotFoundError(f"search {search!r} has no trial {trial_number}")
        return found[0]

    @retrying
    def cached_latency(self, arch_hash: str, profile_hash: str,
                       machine_hash: str | None = None) -> ProfileLatency | None:
        """The latest latency measured for this shape on this profile, in any search.

        ``machine_hash``: only a measurement that machine took (`MachineInfo.hash`), never one
        from another machine or an unknown one (rows from before machines were recorded): the
        driver passes its own when timing runs on this host. None: any machine.
        """
        where = [Latency.arch_hash == arch_hash, Latency.profile_hash == profile_hash]
        if machine_hash is not None:
            where.append(Latency.machine_hash == machine_hash)
        with self._read() as session:
            row = session.execute(
                machine_join(select(*latency_columns())).where(*where)
                .order_by(Latency.measured_at.desc(), Latency.measurement.desc()).limit(1)).one_or_none()
            return None if row is None else profile_latency(row)

    @retrying
    def running_trials(self, search: str) -> list[int]:
        """Trial numbers still marked running: after a crash, the ones to re-run."""
        with self._read() as session:
            search_id = search_id_of(session, search)
            return list(session.scalars(
                select(Candidate.trial_number).where(Candidate.search_id == search_id,
                                                     Candidate.state == "running")
                .order_by(Candidate.trial_number)))

    @retrying
    def pareto_snapshots(self, search: str) -> list[SnapshotRecord]:
        with self._read() as session:
            search_id = search_id_of(session, search)
            # Core rows, not ORM entities: a long search has one snapshot per finished trial.
            rows = session.connection().execute(
                select(ParetoSnapshot.n_complete, ParetoSnapshot.hypervolume, ParetoSnapshot.front,
                       ParetoSnapshot.created_at, ParetoSnapshot.tokens)
                .where(ParetoSnapshot.search_id == search_id).order_by(ParetoSnapshot.n_complete))
            return [snapshot_record(row) for row in rows]

    @retrying
    def weights(self, candidate_id: int) -> bytes:
        """The stored safetensors bytes of a candidate (the only method that reads them)."""
        with self._read() as session:
            data = session.scalar(select(Weights.data).where(Weights.candidate_id == candidate_id))
        if data is None:
            raise NotFoundError(f"no weights stored for candidate {candidate_id}")
        return bytes(data)
