"""The Optuna side of a search: open, ask, tell, repeats, repair, constraint values.

The study lives in the search's own database (``nas:<name>``), so optuna-dashboard opens it;
the driver, its only writer, reads it from memory (`nas.search.mirror`).
The driver writes the store first and tells Optuna second; `SearchStudy.repair` makes Optuna
agree with the store after a crash between the two. Every storage call here is retried over
a dropped database connection, as the store retries its own writes, and every tell is safe
to repeat.

Constraint values (Optuna's convention: <= 0 feasible, keyed by the constraint's text) are
recorded with the public ``Trial.set_constraint`` before ``study.tell``: Optuna 5's samplers
read them from the trial, so no sampler is given a ``constraints_func``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.trial import Trial, TrialState

from nas.architecture import Architecture, static_metrics
from nas.errors import SearchError
from nas.search.mirror import MirroredStorage, WriterStorage
from nas.space import SearchSpace, make_sampler, trial_seed

if TYPE_CHECKING:
    from nas.store import CandidateRecord, Store

log = logging.getLogger("nas.search")

REPEAT_ATTR = "nas:repeat_of"  # Optuna user attribute: the trial whose architecture a draw repeats
# A converged sampler may not find an unseen architecture of a huge space by chance: this
# many uniform draws are tried before the driver asks the sampler again.
RANDOM_UNSEEN_TRIES = 200

T = TypeVar("T")
TrialRef = Trial | int  # a live trial asked by this process, or a number from an earlier one


@dataclass(frozen=True)
class Finished:
    """A distinct architecture's first finished result: what a repeat draw is told."""

    trial: int
    state: str  # complete | failed | infeasible | pruned
    metrics: dict[str, float]


def study_name(search: str) -> str:
    return f"nas:{search}"


class SearchStudy:
    """One search's Optuna study, with the space that turns metrics into values and constraints."""

    def __init__(self, study: optuna.Study, storage: MirroredStorage, space: SearchSpace,
                 store: Store) -> None:
        self.optuna_study = study
        self.storage = storage  # the one `study` uses: the driver created it, see `_reopen`
        self.space = space
        self.store = store
        self.next_number = 0  # the number the next ask will get: it seeds the sampler for it
        self._study_id: int | None = None

    @classmethod
    def open(cls, space: SearchSpace, store: Store, search: str) -> SearchStudy:
        """Create the study, or load it to resume; ``next_number`` continues its trials."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        storage = MirroredStorage(store.optuna_storage(WriterStorage))

        def create() -> optuna.Study:
            study = optuna.create_study(study_name=study_name(search), storage=storage,
                                        sampler=make_sampler(space), directions=space.directions(),
                                        load_if_exists=True)
            study.set_metric_names(space.objective_names())
            return study

        opened = cls(retry_transient(store, create), storage, space, store)
        opened.next_number = len(opened._retry(opened.optuna_study.get_trials, deepcopy=False))
        return opened

    def _retry(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return retry_transient(self.store, call, *args, **kwargs)

    # ----- ask -------------------------------------------------------------------------
    def ask(self) -> tuple[Trial, Architecture]:
        """A new trial and the architecture the space suggests for it."""
        return self._retry(self._ask_once)

    def _ask_once(self) -> tuple[Trial, Architecture]:
        # A fresh sampler seeded for this trial's position: a resumed run continues the stream.
        self.optuna_study.sampler = make_sampler(self.space,
                                                 seed=trial_seed(self.space.seed, self.next_number))
        trial = self.optuna_study.ask()
        self.next_number = trial.number + 1
        try:
            arch = self.space.suggest(trial)
            self.storage.flush()  # the trial and its parameters reach the database together
            return trial, arch
        except Exception:
            # Fail the half-asked trial if the database lets us; if not, `repair` does.
            with contextlib.suppress(Exception):
                self.optuna_study.tell(trial, state=TrialState.FAIL)
            raise

    def enqueue_unseen(self, seen: Collection[str], listed: Sequence[Architecture] | None) -> None:
        """Queue one not-yet-evaluated architecture, drawn uniformly, for the next ask.

        ``seen``: hashes evaluated or in flight; ``listed``: the space's architectures when it
        is small enough to list (then the pick is exact), else uniform draws are tried.
        """
        import numpy as np

        rng = np.random.default_rng(trial_seed(self.space.seed, self.next_number))
        if listed is not None:
            unseen = [a for a in listed if a.hash not in seen]
            pick = unseen[int(rng.integers(len(unseen)))] if unseen else None
        else:
            draws = (self.space.sample_random(rng) for _ in range(RANDOM_UNSEEN_TRIES))
            pick = next((a for a in draws if a.hash not in seen and not self.space.check_static(a)), None)
        if pick is not None:
            self._retry(self.optuna_study.enqueue_trial, self.space.params_for(pick))

    # ----- tell ------------------------------------------------------------------------
    def tell_complete(self, trial: TrialRef, metrics: Mapping[str, float]) -> None:
        """The objective values and every constraint's value of a complete candidate."""
        self._retry(self._tell, trial, self.space.objective_values(metrics),
                    self.space.constraint_dict(metrics))

    def tell_failed(self, trial: TrialRef) -> None:
        self._retry(self._tell, trial, None, None, TrialState.FAIL)

    def tell_rejected(self, trial: TrialRef, arch: Architecture) -> None:
        """PRUNED, with the shape-only constraint values: TPE learns to avoid it, nothing is stored."""
        self._retry(self._tell, trial, None,
                    self.space.constraint_dict(static_metrics(arch), partial=True), TrialState.PRUNED)

    def tell_infeasible(self, trial: TrialRef, metrics: Mapping[str, float]) -> None:
        """PRUNED, with the constraint values its shape step measured (latency, size): the
        sampler learns the feasible region; it was never trained (no objective values)."""
        self._retry(self._tell, trial, None, self.space.constraint_dict(metrics, partial=True),
                    TrialState.PRUNED)

    def tell_pruned(self, trial: TrialRef, metrics: Mapping[str, float]) -> None:
        """PRUNED by successive halving (the driver decides: Optuna cannot prune multi-objective
        studies), with the constraint values its shape step measured."""
        self._retry(self._tell, trial, None, self.space.constraint_dict(metrics, partial=True),
                    TrialState.PRUNED)

    def mark_repeat(self, trial: Trial, original: int) -> None:
        """Mark a draw of trial ``original``'s architecture, so readers can tell it apart."""
        self._retry(trial.set_user_attr, REPEAT_ATTR, original)

    def tell_like(self, trial: TrialRef, original: Finished) -> None:
        """Tell a repeat draw its original's result, so the sampler still learns from it."""
        if original.state == "complete":
            self.tell_complete(trial, original.metrics)
        elif original.state == "infeasible":
            self.tell_infeasible(trial, original.metrics)
        elif original.state == "pruned":
            self.tell_pruned(trial, original.metrics)
        else:
            self.tell_failed(trial)

    def _tell(self, trial: TrialRef, values: Sequence[float] | None,
              constraints: Mapping[str, float] | None, state: TrialState | None = None) -> None:
        """Tell Optuna once; constraints go on the trial first (Optuna 5 reads them there).

        Repeatable: a retry after a commit whose acknowledgement the dropped connection lost,
        or a trial repaired twice, finds it finished and leaves it as it is.
        """
        try:
            if constraints:
                self._set_constraints(self._live(trial), constraints)
            self.optuna_study.tell(trial, values, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    @staticmethod
    def _set_constraints(trial: Trial, constraints: Mapping[str, float]) -> None:
        have = trial.constraints  # a retried tell finds what its first attempt wrote
        for key, value in constraints.items():
            if key in have:
                continue
            if math.isnan(value):
                raise SearchError(f"constraint {key!r} of trial {trial.number} is NaN")
            trial.set_constraint(key, value)

    def _live(self, trial: TrialRef) -> Trial:
        return trial if isinstance(trial, Trial) else self._reopen(trial)

    def _reopen(self, number: int) -> Trial:
        """A `Trial` for a running trial an earlier driver process asked (re-run or repaired
        after a crash), so its constraints are recorded with ``Trial.set_constraint`` too.

        Optuna has no public "running trial by number": ``study.ask()`` only creates trials or
        pops waiting ones, and a `FrozenTrial` cannot record constraints. The public `Trial`
        constructor takes the storage's trial id, which the storage API's
        ``get_trial_id_from_study_id_trial_number`` gives; we call it on the storage object we
        created and handed to Optuna, not through the study's private ``_storage``. The
        constructor runs the sampler's ``before_trial``, a no-op for every sampler `make_sampler`
        builds.
        """
        if self._study_id is None:
            self._study_id = self.storage.get_study_id_from_name(self.optuna_study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return Trial(self.optuna_study, trial_id)

    # ----- after a crash -----------------------------------------------------------------
    def repair(self, stored: Mapping[int, CandidateRecord]) -> None:
        """Make Optuna agree with the store (``stored``: the search's records by trial number)."""
        running = self._retry(self.optuna_study.get_trials, deepcopy=False, states=[TrialState.RUNNING])
        for trial in running:
            record = stored.get(trial.number)
            if record is None:  # asked, never recorded: nothing to lose
                self.tell_failed(trial.number)
            elif record.state == "complete":
                self.tell_complete(trial.number, record.metrics)
            elif record.state == "infeasible":
                self.tell_infeasible(trial.number, record.metrics)
            elif record.state == "pruned":
                self.tell_pruned(trial.number, record.metrics)
            elif record.state == "failed":
                self.tell_failed(trial.number)
            # running: re-run by this driver under the same number, told when it finishes


def retry_transient(store: Store, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an Optuna storage call, retrying it over a dropped database connection.

    Our own store retries its writes itself (`nas.store.engine.retrying`); Optuna wraps the
    same errors in ``StorageInternalError`` and gives up, so its calls are retried here, with
    the store's attempts and backoff. Every call passed here is safe to repeat.
    """
    attempt = 1
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:
            cause = transient_cause(err)
            if cause is None or attempt >= store.retry_attempts:
                raise
            delay = store.retry_backoff_s * 2 ** (attempt - 1)
            log.warning("%s: Optuna storage call failed (%s); retrying in %.1f s (attempt %d of %d)",
                        store.describe_url(), cause, delay, attempt + 1, store.retry_attempts)
            time.sleep(delay)
            attempt += 1


def transient_cause(err: BaseException) -> BaseException | None:
    """The lost-connection (or locked-database) error behind ``err``, if that is what it is."""
    from sqlalchemy.exc import DBAPIError

    from nas.store.engine import is_transient

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DBAPIError) and is_transient(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
