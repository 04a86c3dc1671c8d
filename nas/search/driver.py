"""The search driver: Optuna ask -> Ray tasks -> store, with resume and clean stops.

The driver owns the study (`nas.search.study`) and the database; Ray tasks
(`nas.search.executor`) are pure functions that return records (`nas.evaluate`). The order
of writes makes crashes harmless:

1. ``study.ask()`` then ``store.start_candidate`` (state ``running``) before submitting;
2. the shape step: the untrained model's ONNX graphs are timed on every profile not already in
   the latency cache (latency depends on shape, not weights). A candidate that breaks a
   constraint needing no training is written ``infeasible`` with its reason and never trained;
   a feasible one has its latencies written (`Store.record_shape`) and then trains;
3. the finished result is written in ONE store transaction, *then* told to Optuna.

Writes go through a `WriteBatch`: what one burst of results (one wait) or one round of asks
produces is committed together, and what follows a write (Optuna hearing of it, the next
rung's training) runs only after that commit, so the order above holds per write.

On resume, a ``running`` candidate is re-run under the same trial number from its shape step
(its latencies come from the cache, so nothing is timed twice), an Optuna trial
that never reached the store is failed, and a stored result that Optuna never heard of is
told again. Nothing finished is trained twice. Every input is checked (data, name reuse, Ray
address, resources no node offers, GPUs) before the search is written, so a refused start
leaves nothing behind that a corrected re-run would then refuse to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.errors import SearchError
from nas.evaluate import shape_metrics
from nas.parent import ParentRef, open_parent
from nas.retime import retime_after_search
from nas.search.collect import ResultHandling
from nas.search.executor import RayExecutor, RayTasks
from nas.search.front import LiveFront
from nas.search.heartbeat import heartbeat, stop_on_signals
from nas.search.inflight import InFlight
from nas.search.request import Progress, SearchOutcome, SearchRequest
from nas.search.rungs import RungLadder
from nas.search.study import Finished, SearchStudy, study_name
from nas.store.batch import WriteBatch

if TYPE_CHECKING:
    from optuna.trial import Trial

    from nas.data import TokenData
    from nas.store import CandidateRecord, SearchRecord, Store

log = logging.getLogger("nas.search")

# Consecutive samples rejected by shape-only constraints before we call the space infeasible.
MAX_STATIC_REJECTIONS = 500
# Consecutive draws of already-evaluated architectures before the driver enqueues an unseen one
# drawn uniformly: a sampler that has converged (or a nearly exhausted small space) would
# otherwise ask forever without adding a distinct architecture.
REPEATS_BEFORE_RANDOM = 20
STOP_POLL_S = 1.0  # how often the store is asked whether `nas serve` requested a stop


class SearchDriver(ResultHandling):
    """Runs one search to its trial budget; resumable; stops cleanly on SIGINT/SIGTERM."""

    def __init__(self, request: SearchRequest, store: Store, *,
                 on_progress: Callable[[Progress], None] | None = None,
                 stop_event: threading.Event | None = None,
                 tasks: Callable[[Any], RayTasks] | None = None) -> None:
        """``tasks``: the Ray remote functions' factory (`RayExecutor`'s ``tasks_factory``);
        None: the real ones. Benchmarks and tests pass simulated ones."""
        self.request = request
        self.store = store
        self.writes = WriteBatch(store)  # committed after each round of asks and each wait
        self.space = request.space
        self.name = request.name
        self.on_progress = on_progress or (lambda _p: None)
        self.stop_event = stop_event or threading.Event()
        self.executor = RayExecutor(request, tasks_factory=tasks)
        self.ladder = RungLadder(self.space, request.fidelity)
        self.progress = Progress(total=request.effective_trials)
        self.front = LiveFront(store, self.name, self.progress, request.effective_trials)
        self.inflight: dict[int, InFlight] = {}  # trial number -> entry
        self.by_hash: dict[str, InFlight] = {}  # arch hash -> the entry evaluating it
        self.finished: dict[str, Finished] = {}  # arch hash -> its first finished result
        self._study: SearchStudy | None = None
        self._repeats_in_a_row = 0
        self._rejections_in_a_row = 0
        self._last_stop_poll = 0.0
        self._data_ref: Any = None  # the prepared tokens in Ray's object store
        self._parent: ParentRef | None = None  # the model candidates derive from, if any
        self._parent_ref: Any = None  # ... in Ray's object store

    @property
    def study(self) -> SearchStudy:
        if self._study is None:
            raise RuntimeError("the study is opened by run()")
        return self._study

    # ----- the run -----------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        started = time.monotonic()
        existing = self._check_inputs()
        if existing is not None and self._nothing_to_do():
            return self._close_without_work(started)
        data = self._prepare_data()
        self._parent = open_parent(self.space.parent, data, self.space.budget, self.space.seed,
                                   existing.parent if existing else None, self.name,
                                   self.request.train_threads)
        self.executor.check_placement()
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self.executor.shutdown)  # the one place Ray is shut down
            self.executor.start()
            self._open_search(existing)
            cleanup.enter_context(stop_on_signals(self.stop_event, self.progress))
            try:
                self._study = SearchStudy.open(self.space, self.store, self.name)
                self.store.set_status(self.name, "running")
                cleanup.enter_context(heartbeat(self.store, self.name))
                status = self._search(data)
                if status == "finished" and self.request.retime:  # the front timed together
                    retime_after_search(self.store, self.request, self.executor, report=self._note,
                                        stop=self.stop_event)
            except KeyboardInterrupt:  # a second Ctrl-C: stop now
                status = "stopped"
                self.writes.commit()  # the results already in hand
                self.front.flush()
            except BaseException as err:
                self._cancel_inflight()
                self._mark_failed(err)
                raise
            self._cancel_inflight()
            self.store.set_status(self.name, status)
        return self._outcome(status, started)

    def _search(self, data: TokenData) -> str:
        """Ask, train, time and record until the budget is spent or a stop arrives; the status."""
        self.front.load()  # a resumed search's front, and its reference point once known
        self.study.repair(self._stored())
        self._data_ref = self.executor.put(data)
        self._parent_ref = self.executor.put(self._parent) if self._parent is not None else None
        self._rerun_interrupted()
        while not self.stop_event.is_set():
            self._fill()
            if not self.inflight:
                # An ask retried over a database outage can leave the first attempt's trial
                # RUNNING in Optuna with nothing stored; fail it now rather than at a resume.
                self.study.repair(self._stored())
                self.front.flush()
                return "finished" if self._budget_left() <= 0 else "stopped"
            self._collect()
            self._poll_stop_request()
            self._report()
        self.front.flush()
        return "stopped"

    def _outcome(self, status: str, started: float) -> SearchOutcome:
        front = self.front.load(with_proxy=True).front
        p = self.progress
        return SearchOutcome(self.name, status, p.done - p.failed - p.infeasible - p.pruned, p.failed,
                             list(front), p.hypervolume, time.monotonic() - started,
                             n_infeasible=p.infeasible, n_pruned=p.pruned, tokens=p.tokens)

    # ----- before anything is written ------------------------------------------------------
    def _check_inputs(self) -> SearchRecord | None:
        """The stored search of this name if this request may resume it; reads only."""
        self.space.check_profiles(self.request.profiles)  # also for a request not built by resolve_profiles
        existing = self.store.find_search(self.request.name)
        if existing is None:
            return None
        refusal = self.request.resume_refusal(existing)
        if refusal:
            raise SearchError(refusal)
        self._load_finished()
        return existing

    def _nothing_to_do(self) -> bool:
        """A resumed search that already holds its budget, with nothing left running."""
        return self._budget_left() <= 0 and not self.store.running_trials(self.name)

    def _close_without_work(self, started: float) -> SearchOutcome:
        """Finish it without starting Ray or preparing data; Optuna is still repaired."""
        SearchStudy.open(self.space, self.store, self.name).repair(self._stored())
        self.store.update_search(self.name, trials=self.request.effective_trials)
        self.store.set_status(self.name, "finished")
        return self._outcome("finished", started)

    def _prepare_data(self) -> TokenData:
        from nas.data import check_fits, prepare

        data = prepare(self.request.data_spec)
        check_fits(data, self.space.budget)
        self.space.check_tokenizer(data.vocab_size)
        return data

    def _open_search(self, existing: SearchRecord | None) -> None:
        req, space = self.request, self.space
        if existing is not None:
            self.store.update_search(req.name, trials=req.effective_trials)
            return
        self.store.create_search(
            req.name, space=space.to_dict(), space_hash=space.hash,
            profiles=[p.to_dict() for p in req.profiles],
            objectives=list(zip(space.objective_names(), space.directions())),
            constraints=list(space.constraint_texts()), data=req.data_spec.to_dict(),
            budget=space.budget.to_dict(), trials=req.effective_trials, study_name=study_name(req.name),
            fidelity=req.fidelity_record,
            parent=self._parent.record() if self._parent is not None else None)

    def _load_finished(self) -> None:
        """The finished results (what repeats are told) and every rung arrival, as stored."""
        records = self.store.candidates(self.name, with_proxy=False)
        self.ladder.replay(self.store.rung_arrivals(self.name),
                           {r.trial_number: shape_metrics(r.architecture, r.latencies) for r in records})
        for record in sorted(records, key=lambda r: r.trial_number):
            if record.state == "running":
                continue
            # setdefault: the first result of an architecture stands (a repeat an older version stored)
            self.finished.setdefault(record.arch_hash, Finished(record.trial_number, record.state,
                                                                dict(record.metrics)))
        self._count_progress()

    def _stored(self) -> dict[int, CandidateRecord]:
        return {r.trial_number: r for r in self.store.candidates(self.name, with_proxy=False)}

    # ----- stopping ----------------------------------------------------------------------
    def _poll_stop_request(self) -> None:
        """`nas serve` asks a search to stop by setting its status to 'stopping' in the store."""
        now = time.monotonic()
        if now - self._last_stop_poll < STOP_POLL_S:
            return
        self._last_stop_poll = now
        search = self.store.find_search(self.name)
        if search is not None and search.status == "stopping":
            self.stop_event.set()
            self.progress.message = "stop requested from the web service"

    def _cancel_inflight(self) -> None:
        self.executor.cancel(ref for entry in self.inflight.values()
                             for ref in (entry.shape_ref, entry.train_ref, *entry.measure_refs))

    def _mark_failed(self, err: BaseException) -> None:
        """Record why the search stopped; the database may be what failed, so never mask ``err``."""
        try:
            self.store.set_status(self.name, "failed", error=str(err) or type(err).__name__)
        except Exception as store_err:  # noqa: BLE001
            log.warning("could not mark search %r failed: %s", self.name, store_err)

    # ----- asking and submitting ---------------------------------------------------------------
    def _budget_left(self) -> int:
        """Distinct architectures still to start: repeat draws never use up the budget."""
        return self.request.effective_trials - len(self.finished) - len(self.inflight)

    def _training_in_flight(self) -> int:
        return sum(1 for f in self.inflight.values() if f.train is None)

    def _timing_waits(self) -> bool:
        """Hold new training while a local exclusive timing task waits for the node to go idle."""
        return self.executor.timing_holds_training and any(f.measure_refs for f in self.inflight.values())

    def _fill(self) -> None:
        """Ask and submit while budget, training slots and the timing policy allow."""
        self._start_training()
        while (not self.stop_event.is_set() and self._budget_left() > 0
               and self._training_in_flight() < self.executor.max_in_flight()
               and not self._timing_waits()):
            if self._ask_and_submit():
                self._rejections_in_a_row = 0
                continue
            self._rejections_in_a_row += 1
            if self._rejections_in_a_row >= MAX_STATIC_REJECTIONS:
                raise SearchError(
                    f"{MAX_STATIC_REJECTIONS} candidates in a row broke the shape-only "
                    f"constraints {list(self.space.constraint_texts())}; relax them or "
                    "narrow the space")
        self._commit()

    def _commit(self) -> None:
        """Commit the batched writes; then train whatever their follow-ups made ready."""
        self.writes.commit()
        self._start_training()

    def _ask_and_submit(self) -> bool:
        """Ask Optuna for one candidate; False when it broke a shape-only constraint."""
        trial, arch = self.study.ask()
        if self.space.check_static(arch):
            self.study.tell_rejected(trial, arch)  # nothing is trained or stored
            return False
        if arch.hash in self.by_hash or arch.hash in self.finished:
            self._repeat(trial, arch)
            return True
        self._repeats_in_a_row = 0
        self.writes.start_candidate(self.name, trial.number, arch)
        self._submit(trial.number, arch, trial)
        return True

    def _repeat(self, trial: Trial, arch: Architecture) -> None:
        """A draw of an architecture already evaluated (or in flight): Optuna hears the earlier
        result so the sampler still learns, but nothing is stored or trained and the budget is
        not used up."""
        leader = self.by_hash.get(arch.hash)
        original = leader.number if leader is not None else self.finished[arch.hash].trial
        self.study.mark_repeat(trial, original)
        if leader is not None:
            leader.followers.append(trial)  # told when the leader's result is written
        else:  # once its original's result is committed (it may be in this batch)
            first = self.finished[arch.hash]
            self.writes.after(lambda: self.study.tell_like(trial, first))
        self._repeats_in_a_row += 1
        if self._repeats_in_a_row >= REPEATS_BEFORE_RANDOM:
            self._repeats_in_a_row = 0
            self.study.enqueue_unseen(self.finished.keys() | self.by_hash.keys(),
                                      self.request.distinct_architectures)

    def _rerun_interrupted(self) -> None:
        """Trials a crash left running are re-run under the same number: from the checkpoint of
        the last rung they finished, or else from their shape step."""
        for number in self.store.running_trials(self.name):
            record = self.store.candidate_by_trial(self.name, number)
            self.store.start_candidate(self.name, number, record.architecture)  # counts the attempt
            stored = self.store.checkpoint(self.name, number)
            if stored is None or len(record.latencies) < len(self.request.profiles):
                self._submit(number, record.architecture, None)
                continue
            rung, checkpoint = stored
            entry = InFlight(number, record.architecture, None, rung=rung + 1, checkpoint=checkpoint,
                             ready_to_train=True,
                             train_seconds=sum(r.seconds for r in record.rungs if r.rung <= rung),
                             latencies={lat.profile: lat for lat in record.latencies})
            self.inflight[number] = entry
            self.by_hash[entry.arch.hash] = entry

    def _submit(self, number: int, arch: Architecture, trial: Trial | None) -> None:
        """Start the shape step: profiles in the latency cache are reused, the others timed."""
        entry = InFlight(number, arch, trial)
        self.inflight[number] = entry
        self.by_hash[arch.hash] = entry
        for profile in self.request.profiles:
            # Latency depends on shape, not weights: a shape timed before (in any search, on
            # this machine when timing is local) is reused.
            cached = self.store.cached_latency(arch.hash, profile.hash, self.executor.machine_hash)
            if cached is not None:
                entry.latencies[profile.name] = dataclasses.replace(cached, profile=profile.name)
        if len(entry.latencies) < len(self.request.profiles):
            entry.shape_ref = self.executor.submit_shape(arch)
        else:
            self._on_latencies(entry)

    def _start_training(self) -> None:
        """Train the feasible candidates whose shape step is done, unless timing holds training."""
        if self._timing_waits():
            return
        for entry in self.inflight.values():
            if entry.ready_to_train and entry.train_ref is None:
                entry.train_ref = self.executor.submit_train(
                    entry.arch, self._data_ref, self.ladder.stop_at(entry.rung), entry.checkpoint,
                    self._parent_ref)

    # ----- progress ----------------------------------------------------------------------------
    def _count_progress(self) -> None:
        """Count every finished result (once, when the stored ones are loaded)."""
        self.progress.done = self.progress.failed = self.progress.infeasible = self.progress.pruned = 0
        for finished in self.finished.values():
            self._count(finished.state)

    def _count(self, state: str) -> None:
        """One more distinct architecture finished in ``state`` (kept incrementally: O(1))."""
        self.progress.done += 1
        if state in ("failed", "infeasible", "pruned"):
            setattr(self.progress, state, getattr(self.progress, state) + 1)

    def _report(self) -> None:
        self.progress.running = len(self.inflight)
        self.on_progress(self.progress)

    def _note(self, message: str) -> None:
        self.progress.message = message
        self._report()

