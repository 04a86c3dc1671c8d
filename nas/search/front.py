"""The driver's view of its front: the progress numbers, the reference point, the snapshots.

Computed as every reader computes it (`nas.fronts.analyze`), so the progress display, the
Pareto snapshots and the outcome agree with the pages. Reading every candidate after every
result would cost O(n) per trial (O(n^2) for a search; 10,000 candidates is hours of driver
time), so `LiveFront` reads the store once, when the driver starts, and then keeps the front
in memory: a new complete candidate is analysed together with the current front members
only (the non-dominated set of all points is the non-dominated set of the old front plus the
new point), and its hypervolume is that front's. Training tokens are kept per trial as the
store holds them, so their sum is what ``sum(r.tokens for r in candidates)`` would read.

Snapshots: the hypervolume changes only when the front does, so a snapshot is written
whenever the front changes, and otherwise after `SNAPSHOT_EVERY` complete candidates or
`SNAPSHOT_S` seconds, and when the search stops: the hypervolume-over-time plot is the same
step curve as with one snapshot per candidate, and the latest snapshot (the search list's
front size) is never more than that far behind.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nas.fronts import FrontAnalysis, analyze, first_of_each_architecture

if TYPE_CHECKING:
    from nas.results import CandidateResult
    from nas.search.request import Progress
    from nas.store import CandidateRecord, SearchRecord, Store

SNAPSHOT_EVERY = 50  # complete candidates between snapshots while the front stands still
SNAPSHOT_S = 10.0  # ... or seconds, whichever comes first


class LiveFront:
    """One search's front, hypervolume, reference point and token count, kept up to date
    from the records the driver writes (`add`, `set_tokens`) after one full read (`load`)."""

    def __init__(self, store: Store, name: str, progress: Progress, trials: int) -> None:
        self.store = store
        self.name = name
        self.progress = progress
        self.trials = trials
        self.search: SearchRecord | None = None
        self.members: list[CandidateRecord] = []  # the front, by trial number
        self.complete_archs: set[str] = set()  # architectures with a complete result
        self._early: list[CandidateRecord] = []  # feasible results until the reference is fixed
        self._tokens: dict[int, int] = {}  # trial number -> training tokens the store holds
        self._snapshot_n = -1  # n_complete of the last snapshot written
        self._snapshot_at = 0.0
        self._unsaved = False  # the front or the count moved since the last snapshot

    @property
    def n_complete(self) -> int:
        return len(self.complete_archs)

    def load(self, *, with_proxy: bool = False) -> FrontAnalysis:
        """Read every candidate once (start, resume, the outcome) and start from there."""
        records = self.store.candidates(self.name, with_proxy=with_proxy)
        self.search = self.store.get_search(self.name)
        analysis = analyze(self.search, records)
        if self.search.reference_point is None:
            self._early = [analysis.complete[i] for i in first_of_each_architecture(analysis.complete)
                           if analysis.feasible[i]]
            if self._fix_reference():
                analysis = analyze(self.search, records)
        self.members = sorted(analysis.front, key=lambda r: r.trial_number)
        self.complete_archs = {analysis.complete[i].arch_hash
                               for i in first_of_each_architecture(analysis.complete)}
        self._tokens = {r.trial_number: r.tokens for r in records}
        self.progress.tokens = sum(self._tokens.values())
        self._publish(analysis)
        return analysis

    def set_tokens(self, trial: int, tokens: int) -> None:
        """A rung of ``trial`` was stored: its tokens are now ``tokens``."""
        self.progress.tokens += tokens - self._tokens.get(trial, 0)
        self._tokens[trial] = tokens

    def ended(self, trial: int, result: CandidateResult) -> bool:
        """``trial`` was stored without completing (its record not read back): count the tokens
        its record holds, as `CandidateRecord.tokens` reads them: its last rung's (the one it
        ended at, else the last one stored), else its proxy run's. It leaves the front as it is."""
        if result.rung is not None:
            self.set_tokens(trial, result.rung.tokens)
        elif not self._tokens.get(trial):  # no rung stored
            self.set_tokens(trial, result.proxy.tokens if result.proxy is not None else 0)
        return False

    def add(self, record: CandidateRecord) -> bool:
        """A finished candidate was stored; True when it changed the front."""
        self.set_tokens(record.trial_number, record.tokens)
        if record.state != "complete" or record.arch_hash in self.complete_archs:
            return False
        assert self.search is not None, "LiveFront.load() first"
        self.complete_archs.add(record.arch_hash)
        self._unsaved = True
        points = sorted([*self.members, record], key=lambda r: r.trial_number)
        analysis = analyze(self.search, points)
        mine = next(i for i, r in enumerate(analysis.complete) if r is record)
        feasible = bool(analysis.feasible[mine])
        if self.search.reference_point is None and feasible:
            self._early.append(record)
            if self._fix_reference():
                analysis = analyze(self.search, points)
        changed = any(r is record for r in analysis.front)
        if changed:
            self.members = sorted(analysis.front, key=lambda r: r.trial_number)
        self._publish(analysis)
        return changed

    def snapshot_due(self, front_changed: bool) -> bool:
        if not self._unsaved:
            return False
        return (front_changed or self.n_complete - self._snapshot_n >= SNAPSHOT_EVERY
                or time.monotonic() - self._snapshot_at >= SNAPSHOT_S)

    def snapshot(self) -> None:
        """Record the front after `n_complete` complete candidates (replacing one of that count)."""
        if not self.complete_archs:
            return
        self.store.add_pareto_snapshot(
            self.name, n_complete=self.n_complete, hypervolume=self.progress.hypervolume,
            front_ids=[r.id for r in self.members], tokens=self.progress.tokens)
        self._snapshot_n, self._snapshot_at, self._unsaved = self.n_complete, time.monotonic(), False

    def flush(self) -> None:
        """The last snapshot, when the search stops: the latest one counts every candidate."""
        if self._unsaved:
            self.snapshot()

    def _publish(self, analysis: FrontAnalysis) -> None:
        assert self.search is not None
        self.progress.front = len(self.members)
        self.progress.hypervolume = analysis.hypervolume if self.search.reference_point is not None else None

    def _fix_reference(self) -> bool:
        """Fix the search's hypervolume reference once enough feasible results exist (3, or the
        whole budget if smaller), so hypervolumes over time compare; True when written."""
        from nas import pareto

        assert self.search is not None
        if not self._early or len(self._early) < min(3, self.trials):
            return False
        analysis = analyze(self.search, self._early)
        reference = pareto.reference_point(analysis.values, analysis.directions)
        self.store.update_search(self.name, reference_point=[float(x) for x in reference])
        self.search = self.store.get_search(self.name)
        self._early = []
        return True
