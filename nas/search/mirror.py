"""Optuna storage for the one process that owns a study: reads from memory, writes through.

Optuna's database storage re-reads every unfinished trial from the database on each
``study.ask()`` (its cache may only trust finished trials, since another process could be
changing the running ones). With hundreds of candidates in flight that read is most of the
driver's time: 105 s of 208 s for 600 candidates with 256 in flight on PostgreSQL
(BENCHMARKS.md, "Many workers through one driver"). But a search's study has exactly one
writer, the driver (the store's heartbeat refuses a second one), so its running trials
cannot change behind its back.

`MirroredStorage` therefore keeps the study in an ``InMemoryStorage`` that the sampler and
every read use, and writes each change to the database first and to memory second: the
database always holds at least what memory does (apart from a trial being asked, below),
optuna-dashboard and our tests read the database as before, and a crash loses nothing the
database had. A new trial is written once its parameters are chosen (`flush`, which the
driver calls after each ask), in one transaction with them. Trial numbers agree (both number
trials densely in creation order; a creation whose acknowledgement a dropped connection
lost is mapped, not repeated, before the next one). A write the database refuses because
the trial already finished (a retried tell whose first commit went through) first copies
the database's trial into memory, so the two never disagree.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages._rdb import models  # noqa: PLC2701  (the schema `WriterStorage` adds rows to)
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy  # noqa: PLC2701  (BaseStorage's own return type)
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import insert

# Optuna keeps a trial's constraint values as system attributes "constraints:<name>"
# (`optuna.study._constrained_optimization`, whose name for it is private).
CONSTRAINT_KEY = "constraints:"


class WriterStorage(RDBStorage):
    """Optuna's database storage for a study's only writer, behind `MirroredStorage`.

    Creating a trial from a template, Optuna writes each parameter as a lone
    ``set_trial_param`` would: it re-reads the trial, reads the study's first trial with that
    parameter to check the distribution, and so flushes one INSERT at a time: three
    statements a parameter, most of the ~40 ms a candidate spent creating its trial on
    PostgreSQL (BENCHMARKS.md, "Many workers through one driver"). Behind the mirror, the
    in-memory storage already made that distribution check against the same trials when
    the sampler set each parameter, and the trial was created in this very transaction, so
    here creation only collects the parameter rows and inserts them in one statement.
    A tell also writes the trial's constraint values (one transaction per constraint in
    Optuna's `Trial.set_constraint`); `MirroredStorage` holds them back and they go in with
    the state and values, in the tell's own transaction. Everything else is Optuna's own code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._creating = threading.local()

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None,
                                session: Any) -> Any:
        self._creating.params = params = []
        try:
            trial = super()._get_prepared_new_trial(study_id, template_trial, session)
            if params:  # one executemany, no RETURNING: nothing reads their ids
                session.execute(insert(models.TrialParamModel.__table__), params)
            return trial
        finally:
            self._creating.params = None

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None,
                               system_attrs: Mapping[str, Any] | None = None) -> bool:
        """Optuna's state-and-values write, with ``system_attrs`` upserted in its transaction:
        they are executed, uncommitted, on the thread's scoped session, which Optuna's write
        then takes up and commits (or rolls back, with them)."""
        if system_attrs:
            session = self.scoped_session()
            try:
                for key, value in system_attrs.items():
                    self._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel,
                                                        trial_id, key, value)
            except BaseException:
                session.rollback()
                session.close()
                raise
        return super().set_trial_state_values(trial_id, state, values)

    def _set_trial_param_without_commit(self, session: Any, trial_id: int, param_name: str,
                                        param_value_internal: float, distribution: BaseDistribution,
                                        previous_distribution: BaseDistribution | None = None) -> None:
        params = getattr(self._creating, "params", None)
        if params is None:
            super()._set_trial_param_without_commit(session, trial_id, param_name, param_value_internal,
                                                    distribution, previous_distribution)
            return
        params.append({"trial_id": trial_id, "param_name": param_name, "param_value": param_value_internal,
                       "distribution_json": distribution_to_json(distribution)})


class MirroredStorage(BaseStorage):
    """``backend`` (the search's database) mirrored in memory, for a study's only writer."""

    def __init__(self, backend: WriterStorage) -> None:
        self.backend = backend
        self.memory = InMemoryStorage()
        self._lock = threading.RLock()
        self._study_ids: dict[int, int] = {}  # memory study id -> database study id
        self._trial_ids: dict[int, int] = {}  # memory trial id -> database trial id
        self._trial_study: dict[int, int] = {}  # memory trial id -> memory study id
        self._numbers: dict[int, list[int]] = {}  # memory study id -> memory trial ids by number
        self._pending: dict[int, list[int]] = {}  # memory study id -> trials not yet in the database
        self._unsure: set[int] = set()  # memory study ids whose last trial creation raised
        self._held: dict[int, dict[str, Any]] = {}  # memory trial id -> constraints not yet written

    # ----- studies -------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        with self._lock:
            backend_id = self.backend.create_new_study(directions, study_name)
            name = self.backend.get_study_name_from_id(backend_id)
            return self._add_study(backend_id, self.memory.create_new_study(directions, name))

    def get_study_id_from_name(self, study_name: str) -> int:
        with self._lock:
            try:
                return self.memory.get_study_id_from_name(study_name)
            except KeyError:
                return self._load(self.backend.get_study_id_from_name(study_name))

    def _load(self, backend_id: int) -> int:
        """Copy a study and all its trials from the database: once, when it is opened."""
        memory_id = self._add_study(backend_id, self.memory.create_new_study(
            self.backend.get_study_directions(backend_id), self.backend.get_study_name_from_id(backend_id)))
        for key, value in self.backend.get_study_user_attrs(backend_id).items():
            self.memory.set_study_user_attr(memory_id, key, value)
        for key, value in self.backend.get_study_system_attrs(backend_id).items():
            self.memory.set_study_system_attr(memory_id, key, value)
        self._copy_trials(memory_id)
        return memory_id

    def _add_study(self, backend_id: int, memory_id: int) -> int:
        self._study_ids[memory_id] = backend_id
        self._numbers[memory_id] = []
        self._pending[memory_id] = []
        return memory_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self.backend.delete_study(self._study_ids[study_id])
            self.memory.delete_study(study_id)
            del self._study_ids[study_id]

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        with self._lock:
            self.backend.set_study_user_attr(self._study_ids[study_id], key, value)
            self.memory.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        with self._lock:
            self.backend.set_study_system_attr(self._study_ids[study_id], key, value)
            self.memory.set_study_system_attr(study_id, key, value)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.memory.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.memory.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.memory.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.memory.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.memory.get_all_studies()  # the studies this process opened

    # ----- trials: writes ------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """In memory now; in the database, with its parameters, at `flush` (one transaction
        instead of one per parameter: the database's parameter write also checks every
        earlier trial's distribution, 12 ms each on PostgreSQL with 256 in flight)."""
        with self._lock:
            self.flush(study_id)  # earlier trials first: the database numbers them in this order
            memory_id = self.memory.create_new_trial(study_id, template_trial)
            self._trial_study[memory_id] = study_id
            self._numbers[study_id].append(memory_id)
            self._pending[study_id].append(memory_id)
            return memory_id

    def flush(self, study_id: int | None = None) -> None:
        """Write the trials created since the last flush to the database (all studies: None)."""
        with self._lock:
            for study in self._study_ids if study_id is None else (study_id,):
                if study in self._unsure:  # a creation raised: the database may have kept it
                    self._reconcile(study)
                pending = self._pending[study]
                while pending:
                    try:
                        backend_id = self.backend.create_new_trial(
                            self._study_ids[study], template_trial=self.memory.get_trial(pending[0]))
                    except BaseException:
                        self._unsure.add(study)
                        raise
                    self._trial_ids[pending.pop(0)] = backend_id

    def _reconcile(self, study_id: int) -> None:
        """After a failed creation: map the database's trials this memory has not mapped yet,
        by number (a creation committed but never acknowledged is not created twice)."""
        backend_study = self._study_ids[study_id]
        numbers, pending = self._numbers[study_id], self._pending[study_id]
        mapped = len(numbers) - len(pending)
        for trial in self.backend.get_all_trials(backend_study, deepcopy=False)[mapped:]:
            if trial.number != mapped or not pending:
                raise RuntimeError(f"Optuna study {backend_study} holds trial {trial.number} this "
                                   f"process did not create: is another process writing it?")
            self._trial_ids[pending.pop(0)] = trial._trial_id  # noqa: SLF001 (see `_load`)
            mapped += 1
        self._unsure.discard(study_id)

    def _copy_trials(self, study_id: int) -> None:
        """Copy the database's trials into memory, in number order (opening a study)."""
        backend_study = self._study_ids[study_id]
        for trial in self.backend.get_all_trials(backend_study, deepcopy=False):
            if trial.number != len(self._numbers[study_id]):
                raise RuntimeError(f"Optuna study {backend_study}: trial numbers are not dense "
                                   f"(found {trial.number}, expected {len(self._numbers[study_id])})")
            memory_id = self.memory.create_new_trial(study_id, trial)
            # FrozenTrial has no public id; the public lookup by number costs a query per trial.
            self._trial_ids[memory_id] = trial._trial_id  # noqa: SLF001
            self._trial_study[memory_id] = study_id
            self._numbers[study_id].append(memory_id)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            if trial_id in self._pending[self._trial_study[trial_id]]:
                self.memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
                return
            with self._writing(trial_id) as backend_id:
                self.backend.set_trial_param(backend_id, param_name, param_value_internal, distribution)
                self.memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._writing(trial_id) as backend_id:
            written = self.backend.set_trial_state_values(backend_id, state, values,
                                                          system_attrs=self._held.get(trial_id))
            if not written:
                return False  # the database's answer stands (a waiting trial already taken)
            self._held.pop(trial_id, None)
            return self.memory.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._writing(trial_id) as backend_id:
            self.backend.set_trial_intermediate_value(backend_id, step, intermediate_value)
            self.memory.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._writing(trial_id) as backend_id:
            self.backend.set_trial_user_attr(backend_id, key, value)
            self.memory.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """A constraint value of a running trial is held until its tell, which writes it (the
        constraints are set just before it: `nas.search.study`); any other attribute now."""
        with self._lock:
            if key.startswith(CONSTRAINT_KEY) and not self.memory.get_trial(trial_id).state.is_finished():
                self.memory.set_trial_system_attr(trial_id, key, value)
                self._held.setdefault(trial_id, {})[key] = value
                return
        with self._writing(trial_id) as backend_id:
            self.backend.set_trial_system_attr(backend_id, key, value)
            self.memory.set_trial_system_attr(trial_id, key, value)

    @contextlib.contextmanager
    def _writing(self, trial_id: int) -> Iterator[int]:
        """Hold the lock for one trial write (database first, the trial flushed before it);
        yields the trial's database id.

        A write the database refuses because the trial finished (a tell whose commit went
        through but whose acknowledgement a dropped connection lost, then retried) copies the
        finished trial into memory before the refusal goes on to the caller."""
        with self._lock:
            self.flush(self._trial_study[trial_id])
            try:
                yield self._trial_ids[trial_id]
            except UpdateFinishedTrialError:
                self._sync_finished(trial_id)
                raise

    def _sync_finished(self, trial_id: int) -> None:
        self._held.pop(trial_id, None)  # the database's finished trial has what it has
        if self.memory.get_trial(trial_id).state.is_finished():
            return
        trial = self.backend.get_trial(self._trial_ids[trial_id])
        for key, value in trial.system_attrs.items():
            self.memory.set_trial_system_attr(trial_id, key, value)
        for key, value in trial.user_attrs.items():
            self.memory.set_trial_user_attr(trial_id, key, value)
        self.memory.set_trial_state_values(trial_id, trial.state, trial.values)

    # ----- trials: reads (memory only) -------------------------------------------------------
    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.memory.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.memory.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self.memory.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self.memory.get_n_trials(study_id, state)

    def remove_session(self) -> None:
        self.flush()
        self.backend.remove_session()

