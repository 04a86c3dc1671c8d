"""Candidate writes collected and committed together, with what must follow each one.

The driver handles results in bursts (everything that finished during one wait). Written one
transaction each, a candidate's start, shape, rungs and result cost a commit and a touch of
its search apiece; a `WriteBatch` sends a burst's writes in one transaction instead, and
runs each write's follow-up (telling Optuna, starting the next rung's training) only after
the commit. So the rule "Optuna hears, and the next step starts, only after the store has
it" holds as it does for single writes, and a crash before the commit loses only work that
nothing else has seen: the resume re-runs it.

The whole transaction is retried on a lost connection (`nas.store.engine.retrying`): every
write in it is idempotent (`nas.store.writes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.results import CandidateResult, ProfileLatency, RungLoss
from nas.store import writes

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from nas.store.repository import Store

Write = Callable[["Session"], Any]
Then = Callable[[Any], None]


class WriteBatch:
    """Writes to one store, in order, and the follow-ups to run once they are committed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes: list[Write | None] = []  # None: a follow-up only (`after`)
        self._then: list[Then | None] = []

    def __len__(self) -> int:
        return len(self._writes)

    def start_candidate(self, search: str, trial_number: int, architecture: Architecture,
                        then: Then | None = None) -> None:
        self._add(functools.partial(writes.start_candidate, search=search, trial_number=trial_number,
                                    architecture=architecture), then)

    def record_shape(self, search: str, trial_number: int, latencies: Sequence[ProfileLatency],
                     then: Then | None = None) -> None:
        self._add(functools.partial(writes.record_shape, search=search, trial_number=trial_number,
                                    latencies=tuple(latencies)), then)

    def record_rung(self, search: str, trial_number: int, rung: RungLoss, checkpoint: bytes,
                    then: Then | None = None) -> None:
        self._add(functools.partial(writes.record_rung, search=search, trial_number=trial_number,
                                    rung=rung, checkpoint=checkpoint), then)

    def finish_candidate(self, search: str, trial_number: int, result: CandidateResult, *,
                         read_back: bool, then: Then | None = None) -> None:
        """``then`` gets the stored record (None without ``read_back``)."""
        writes.check_finished_state(result)  # refused now, not at the commit
        self._add(functools.partial(writes.finish_candidate, search=search, trial_number=trial_number,
                                    result=result, read_back=read_back), then)

    def after(self, then: Callable[[], None]) -> None:
        """Run ``then`` after this batch's commit (in order with the writes' follow-ups): for
        what must not get ahead of the store, e.g. telling Optuna a repeat's result."""
        self._add(None, lambda _result: then())

    def commit(self) -> None:
        """Write everything in one transaction, then run the follow-ups in order. A commit
        that raises keeps the batch, so a later `commit` (a stop's) can still write it."""
        if not self._writes:
            return
        real = [w for w in self._writes if w is not None]
        results = iter(self.store.write_together(real) if real else [])
        written, thens = self._writes, self._then
        self._writes, self._then = [], []
        for write, then in zip(written, thens):
            result = next(results) if write is not None else None
            if then is not None:
                then(result)

    def _add(self, write: Write | None, then: Then | None) -> None:
        self._writes.append(write)
        self._then.append(then)
