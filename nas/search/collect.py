"""What the driver does with each result that arrives: the shape step, each profile's timing,
each rung's training, and the single write of a finished trial (`nas.search.driver`).

A mixin of `SearchDriver`, which owns the state named below; kept apart so the driver's own
module reads as the run's outline (ask, submit, collect, commit) and this one as the
per-result rules: a violator of a shape-only constraint is never trained, a rung decides
promotion (`nas.search.rungs`), and every write goes through the driver's `WriteBatch`, its
follow-ups (Optuna, the front, the next rung) after the commit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from nas.architecture import static_metrics
from nas.evaluate import assemble, infeasible, pruned, shape_metrics
from nas.results import CandidateResult, RungLoss
from nas.search.executor import RayExecutor, ray_error
from nas.search.front import LiveFront
from nas.search.inflight import InFlight
from nas.search.request import SearchRequest
from nas.search.rungs import RungLadder
from nas.search.study import Finished, SearchStudy
from nas.space import SearchSpace
from nas.store.batch import WriteBatch

if TYPE_CHECKING:
    from nas.evaluate import TrainOutput
    from nas.parent import ParentRef
    from nas.store import CandidateRecord


class ResultHandling:
    """`SearchDriver`'s handling of arrived results."""

    name: str
    request: SearchRequest
    space: SearchSpace
    executor: RayExecutor
    ladder: RungLadder
    writes: WriteBatch
    front: LiveFront
    inflight: dict[int, InFlight]
    by_hash: dict[str, InFlight]
    finished: dict[str, Finished]
    _parent: ParentRef | None

    @property
    def study(self) -> SearchStudy:  # pragma: no cover - the driver's
        raise NotImplementedError

    def _commit(self) -> None:  # pragma: no cover - the driver's
        raise NotImplementedError

    def _count(self, state: str) -> None:  # pragma: no cover - the driver's
        raise NotImplementedError

    def _collect(self) -> None:
        """Handle whatever finished during one short wait."""
        owner = {ref: entry for entry in self.inflight.values() for ref in entry.pending}
        for ref in self.executor.wait(list(owner)):
            entry = owner[ref]
            if self.inflight.get(entry.number) is not entry or ref not in entry.pending:
                continue  # its trial already failed on another ref
            if entry.shaping:
                self._on_shaped(entry)
            elif entry.measure_refs:
                self._on_measured(entry, ref)
            else:
                self._on_trained(entry)
        self._commit()

    def _get(self, entry: InFlight, ref: Any, step: str) -> Any:
        """A task's result, or None after failing ``entry`` with the reason its worker died."""
        try:
            return self.executor.get(ref)
        except Exception as err:  # noqa: BLE001 - worker killed more often than max_retries
            self._fail(entry, f"{step} worker failed after {self.request.max_retries} retries: "
                              f"{ray_error(err)}")
            return None

    def _on_shaped(self, entry: InFlight) -> None:
        entry.shape = self._get(entry, entry.shape_ref, "shape step")
        if entry.shape is None:
            return
        if not entry.shape.ok:
            self._fail(entry, entry.shape.error)
            return
        entry.measure_started = time.perf_counter()
        for profile in self.request.profiles:
            if profile.name not in entry.latencies:
                entry.measure_refs[self.executor.submit_measure(profile, entry.shape)] = profile.name
        self._on_latencies(entry)

    def _on_measured(self, entry: InFlight, ref: Any) -> None:
        profile = entry.measure_refs.pop(ref)
        try:
            entry.latencies[profile] = self.executor.get(ref)
        except Exception as err:  # noqa: BLE001 - worker died or measurement failed
            self._fail(entry, f"latency on profile {profile!r} failed: {ray_error(err)}")
            return
        self._on_latencies(entry)

    def _on_latencies(self, entry: InFlight) -> None:
        """Once every profile is timed, decide every constraint that needs no training: a
        violator is stored infeasible and never trained; a feasible candidate trains next."""
        if entry.measure_refs:
            return
        if entry.measure_started:
            entry.measure_seconds = time.perf_counter() - entry.measure_started
        latencies = [entry.latencies[p.name] for p in self.request.profiles]
        metrics = shape_metrics(entry.arch, latencies)
        violations = self.space.shape_violations(metrics)
        if violations:
            self._finish(entry, infeasible(entry.arch, entry.shape, latencies, entry.measure_seconds,
                                           violations))
            return
        # Trains once committed: a crash after that retimes nothing.
        self.writes.record_shape(self.name, entry.number, latencies, then=lambda _: self._ready(entry))

    @staticmethod
    def _ready(entry: InFlight) -> None:
        entry.ready_to_train = True

    def _on_trained(self, entry: InFlight) -> None:
        """A rung's training arrived: the candidate completes (last rung), goes on to the next
        rung from its checkpoint, or is pruned (`nas.search.rungs`)."""
        train = entry.train = self._get(entry, entry.train_ref, "training")
        if train is None:
            return
        if not train.ok:
            self._fail(entry, train.error, trained=train)
            return
        assert train.proxy is not None
        seconds = train.timings.get("train", 0.0)
        rung = RungLoss(entry.rung, train.proxy.tokens, train.proxy.val_loss, seconds)
        entry.train_seconds += seconds
        entry.train = train = dataclasses.replace(train, timings={**train.timings,
                                                                  "train": entry.train_seconds})
        if train.checkpoint is None:  # the last rung (or a timeout, which cannot go on)
            self._complete(entry, rung)
            return
        latencies = [entry.latencies[p.name] for p in self.request.profiles]
        decision = self.ladder.decide(entry.number, rung, shape_metrics(entry.arch, latencies))
        if not decision.promoted:
            self._finish(entry, pruned(entry.arch, train, latencies, self._timings(entry), rung,
                                       decision.reason))
            return
        entry.rung += 1
        entry.checkpoint, entry.train_ref, entry.train = train.checkpoint, None, None
        entry.ready_to_train = False  # until its rung is committed: a crash then loses no rung

        def stored(_: None) -> None:
            self.front.set_tokens(entry.number, rung.tokens)
            entry.ready_to_train = True

        self.writes.record_rung(self.name, entry.number, rung, train.checkpoint, then=stored)

    def _timings(self, entry: InFlight) -> dict[str, float]:
        timings = {**(entry.shape.timings if entry.shape is not None else {}),
                   "train": entry.train_seconds, "latency": entry.measure_seconds}
        timings["total"] = sum(timings.values())
        return timings

    def _complete(self, entry: InFlight, rung: RungLoss) -> None:
        assert entry.train is not None
        latencies = [entry.latencies[p.name] for p in self.request.profiles]
        result = assemble(entry.arch, entry.train, latencies, entry.measure_seconds, shape=entry.shape)
        result = dataclasses.replace(result, rung=rung)
        missing = [m for m in self.space.objective_names() if not _finite(result.metrics.get(m))]
        if missing:
            self._fail(entry, f"objective(s) {missing} missing or not finite", trained=entry.train)
            return
        self._finish(entry, result)

    def _fail(self, entry: InFlight, error: str, trained: TrainOutput | None = None) -> None:
        timings = dict(entry.shape.timings) if entry.shape is not None else {}
        if trained is not None:
            timings.update(trained.timings)
        node = trained.node if trained is not None else entry.shape.node if entry.shape is not None else ""
        result = CandidateResult(
            entry.arch, "failed", metrics=static_metrics(entry.arch),
            proxy=trained.proxy if trained is not None else None, error=error, timings=timings,
            # the shape's latencies stay in the cache: a failed training does not change them
            latencies=tuple(entry.latencies.values()) if not entry.measure_refs else (), node=node)
        self._finish(entry, result)

    def _finish(self, entry: InFlight, result: CandidateResult) -> None:
        """The single store write of a finished trial; once committed, Optuna hears it, and its
        repeats. It leaves the trials in flight now (nothing more of it is awaited)."""
        if self._parent is not None:  # how it came from the parent, whatever its fate
            result = dataclasses.replace(result, derivation=self._parent.plan(result.architecture).to_dict())
        arch_hash = result.architecture.hash
        first = self.finished.get(arch_hash)
        if first is None:
            first = self.finished[arch_hash] = Finished(entry.number, result.state, dict(result.metrics))
            self._count(first.state)
        self.inflight.pop(entry.number, None)
        self.by_hash.pop(entry.arch.hash, None)
        complete = result.state == "complete"  # only a complete record can change the front
        self.writes.finish_candidate(self.name, entry.number, result, read_back=complete,
                                     then=lambda record: self._finished(entry, result, record, first))

    def _finished(self, entry: InFlight, result: CandidateResult, record: CandidateRecord | None,
                  first: Finished) -> None:
        """After ``entry``'s result is committed: the front, Optuna, its repeats, a snapshot."""
        front_changed = (self.front.add(record) if record is not None
                         else self.front.ended(entry.number, result))
        told = entry.trial if entry.trial is not None else entry.number
        if result.state == "complete":
            self.study.tell_complete(told, result.metrics)
        elif result.state == "infeasible":
            self.study.tell_infeasible(told, result.metrics)
        elif result.state == "pruned":
            self.study.tell_pruned(told, result.metrics)
        else:
            self.study.tell_failed(told)
        for follower in entry.followers:
            self.study.tell_like(follower, first)
        if self.front.snapshot_due(front_changed):
            self.front.snapshot()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

