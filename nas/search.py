"""The search driver: Optuna ask -> Ray tasks -> store, with resume and clean stops.

The driver owns the Optuna study and the database; Ray tasks are pure functions that
return records (`nas.evaluate`). The order of writes makes crashes harmless:

1. ``study.ask()`` then ``store.start_candidate`` (state ``running``) before submitting;
2. the finished result is written in ONE store transaction, *then* told to Optuna.

On resume, a ``running`` candidate is re-run under the same trial number, an Optuna
trial that never reached the store is failed, and a stored result that Optuna never
heard of is told again. Nothing finished is trained twice.

Core policy (see `nas.affinity`): on every node the last ``max(profile threads)``
cores time graphs and the others train; training tasks and timing tasks are pinned
to their sets. Locally this is enforced with two Ray custom resources,
``nas_train`` (one unit per training slot) and ``nas_measure`` (one). Separate cores
are not enough on their own: a training process on the neighbouring core still slows
a larger candidate's prefill by up to ~10% through the shared cache and memory bus
(BENCHMARKS.md). So by default (``timing="exclusive"``) a timing task also takes
every ``nas_train`` unit and the driver holds new training while one waits: timing
then runs on an otherwise idle node. ``timing="overlap"`` trades that accuracy for
throughput and times on the reserved cores while training goes on. When the node has
too few cores to split, timing is always exclusive.

On a cluster (``--ray-address``) the driver is still the only database client; workers
get the driver's copy of `nas` (runtime_env ``py_modules``) and no credentials. Training
asks for ``--threads`` CPUs (and ``--gpus-per-trial`` GPUs). A profile with a
``ray_resource`` is timed only on nodes holding it, and its timing task also holds
``intra_op_threads`` of that node's CPUs (at most what the smallest such node has): a
device node started with ``--num-cpus 1`` then alternates training and timing instead
of overlapping them, and one started with ``--num-cpus 0`` only ever times. Every input
is checked (data, name reuse, Ray address, resources no node offers, GPUs) before the
search is written, so a refused start leaves nothing behind. Optuna's storage calls are
retried over a dropped connection like the store's own writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from nas.architecture import Architecture
from nas.errors import ConfigError, SearchError
from nas.hardware import HardwareProfile
from nas.results import CandidateResult, ProfileLatency
from nas.space import SearchSpace
from nas.specs import DataSpec

log = logging.getLogger("nas.search")

REPEAT_ATTR = "nas:repeat_of"  # Optuna user attribute: the trial whose architecture a draw repeats

TIMING_POLICIES = ("exclusive", "overlap")
# Consecutive samples rejected by shape-only constraints before we call the space infeasible.
MAX_STATIC_REJECTIONS = 500
# Consecutive draws of already-evaluated architectures before the driver enqueues an unseen one
# drawn uniformly: a sampler that has converged (or a nearly exhausted small space) would
# otherwise ask forever without adding a distinct architecture.
REPEATS_BEFORE_RANDOM = 20
RANDOM_UNSEEN_TRIES = 200
RAY_CONNECT_TIMEOUT_S = 5.0  # an unreachable --ray-address fails in seconds, not after Ray's retries


@dataclass(frozen=True)
class SearchRequest:
    """Everything `nas search` needs; the CLI and the web API both build one."""

    space: SearchSpace
    name: str
    profiles: tuple[HardwareProfile, ...]
    trials: int
    db_url: str = "sqlite:///nas.db"
    data: DataSpec | None = None  # None: the space's own data section
    workers: int | None = None  # training tasks in flight; None: one per training core
    ray_address: str | None = None
    train_threads: int = 1
    gpus_per_trial: float = 0.0
    max_retries: int = 2  # re-runs of a trial whose worker process died
    seed: int = 0
    timing: str = "exclusive"  # or "overlap": time on reserved cores while training runs

    def __post_init__(self) -> None:
        if self.timing not in TIMING_POLICIES:
            raise ConfigError(f"timing={self.timing!r} must be one of {', '.join(TIMING_POLICIES)}",
                              field="timing", value=self.timing)

    @property
    def data_spec(self) -> DataSpec:
        return self.data or self.space.data

    @property
    def measure_threads(self) -> int:
        return max((p.intra_op_threads for p in self.profiles), default=1)

    def oversubscription(self, cores: list[int] | None = None) -> str | None:
        """A note when ``--workers`` x ``--threads`` exceeds this machine's training cores.

        Trainings then share cores: each candidate trains slower and the search is rarely faster
        (measured: 2 workers on a 2-core machine, one training core, ran 0.92-0.96x as fast as one).
        """
        if not self.workers or self.ray_address:
            return None
        from nas.affinity import plan_cores

        plan = plan_cores(self.measure_threads, cores)
        train_cores = len(plan.train_cores)
        if self.workers * self.train_threads <= train_cores:
            return None
        return (f"--workers {self.workers} x --threads {self.train_threads} is more than the "
                f"{train_cores} training core(s) here ({plan.describe()}): trainings will share "
                f"cores, which slows each candidate and rarely speeds up the search; "
                f"--workers {max(1, train_cores // self.train_threads)} fits.")

    @functools.cached_property
    def distinct_architectures(self) -> tuple[Architecture, ...] | None:
        """The space's architectures that meet its shape-only constraints; None: too many to list."""
        found = self.space.distinct_architectures()
        return None if found is None else tuple(found)

    @property
    def space_size(self) -> int | None:
        found = self.distinct_architectures
        return None if found is None else len(found)

    @property
    def effective_trials(self) -> int:
        """The budget in distinct architectures: ``trials``, or the space's size if smaller."""
        size = self.space_size
        return self.trials if size is None else max(1, min(self.trials, size))

    def trials_note(self) -> str | None:
        """Said once when the space is smaller than the budget."""
        if self.effective_trials >= self.trials:
            return None
        return (f"space {self.space.name!r} holds only {self.space_size} distinct architecture(s) "
                f"that meet its shape-only constraints: --trials {self.trials} evaluates "
                f"{self.effective_trials}")


@dataclass
class SearchOutcome:
    name: str
    status: str
    n_complete: int
    n_failed: int
    front: list[Any]  # CandidateRecord
    hypervolume: float | None
    seconds: float


@dataclass
class _InFlight:
    """One trial between submission and its single store write."""

    trial: int
    arch: Architecture
    train_ref: Any = None
    train: Any = None  # TrainOutput once it arrived
    measure_refs: dict[Any, str] = field(default_factory=dict)  # ref -> profile name
    latencies: dict[str, ProfileLatency] = field(default_factory=dict)
    measure_started: float = 0.0
    followers: list[int] = field(default_factory=list)  # repeat draws of it, told when it ends


@dataclass(frozen=True)
class _Finished:
    """A distinct architecture's first finished result: what a repeat draw is told."""

    trial: int
    state: str  # complete | failed
    metrics: dict[str, float]


@dataclass
class Progress:
    """What the progress display shows; updated by the driver."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    front: int = 0
    hypervolume: float | None = None
    message: str = ""


def resolve_profiles(space: SearchSpace, profiles: Sequence[HardwareProfile] | None) -> tuple[HardwareProfile, ...]:
    """The profiles to measure; every profile an objective or constraint names must be among them."""
    from nas.hardware import check_available, load_profiles

    chosen = tuple(profiles) if profiles else tuple(load_profiles(",".join(space.profiles)))
    names = {p.name for p in chosen}
    for metric in space.metric_names():
        if metric.startswith("latency:"):
            profile = metric.split(":")[1]
            if profile not in names:
                raise ConfigError(
                    f"metric {metric!r} needs profile {profile!r}, which is not among the measured "
                    f"profiles ({', '.join(sorted(names))})", source=space.source, field="profiles",
                    value=sorted(names))
    space.check_profiles(chosen)  # every candidate holds the context each profile times
    for profile in chosen:
        check_available(profile)
    return chosen


class SearchDriver:
    """Runs one search to its trial budget; resumable; stops cleanly on SIGINT/SIGTERM."""

    def __init__(self, request: SearchRequest, store, *, on_progress: Callable[[Progress], None] | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self.request = request
        self.store = store
        self.space = request.space
        self.on_progress = on_progress or (lambda _p: None)
        self.stop_event = stop_event or threading.Event()
        self.objectives = self.space.objective_names()
        self.directions = self.space.directions()
        self.inflight: dict[int, _InFlight] = {}
        self.by_hash: dict[str, _InFlight] = {}
        self.points: dict[int, tuple[list[float], bool]] = {}  # candidate id -> (objectives, feasible)
        self.progress = Progress(total=request.effective_trials)
        self._finished: dict[str, _Finished] = {}  # arch hash -> its first finished result
        self._next_trial = 0  # the number the next ask will get: seeds the sampler for it
        self._repeats_in_a_row = 0
        self._started_ray = False
        self._train_slots = 1
        self._point_hashes: set[str] = set()
        self._last_stop_poll = 0.0
        self._reference: list[float] | None = None
        self._device_cpus: dict[str, int] = {}  # profile -> CPUs its timing task holds on a device
        self._max_node_cpus = 1

    # ----- set-up -------------------------------------------------------------------
    def _check_existing(self):
        """The stored search of this name if it can be resumed with this request; reads only."""
        req, space = self.request, self.space
        existing = self.store.find_search(req.name)
        if existing is None:
            return None
        if existing.space_hash != space.hash:
            raise SearchError(
                f"search {req.name!r} already exists with a different search space "
                f"(stored space hash {existing.space_hash}, given {space.hash}); "
                "use another --name, or the same space to resume it")
        stored_profiles = sorted(p.get("name", "") for p in existing.profiles)
        if stored_profiles != sorted(p.name for p in req.profiles):
            raise SearchError(
                f"search {req.name!r} already exists with profiles {stored_profiles}; "
                f"resume it with the same profiles or use another --name")
        if existing.data != req.data_spec.to_dict():
            raise SearchError(f"search {req.name!r} already exists with data {existing.data}; "
                              "resume it with the same data or use another --name")
        return existing

    def _open_search(self, existing):
        req, space = self.request, self.space
        if existing is None:
            return self.store.create_search(
                req.name, space=space.to_dict(), space_hash=space.hash,
                profiles=[p.to_dict() for p in req.profiles],
                objectives=list(zip(self.objectives, self.directions)),
                constraints=list(space.constraint_texts()), data=req.data_spec.to_dict(),
                budget=space.budget.to_dict(), trials=req.effective_trials, study_name=f"nas:{req.name}")
        self.store.update_search(req.name, trials=req.effective_trials)
        return existing

    def _open_study(self):
        import optuna

        from nas.space import make_sampler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

        def open_study():
            study = optuna.create_study(
                study_name=f"nas:{self.request.name}", storage=self.store.optuna_storage(),
                sampler=make_sampler(self.space), directions=list(self.directions), load_if_exists=True)
            study.set_metric_names(list(self.objectives))
            return study

        return self._db(open_study)

    def _db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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
                cause = _transient_cause(err)
                if cause is None or attempt >= self.store.retry_attempts:
                    raise
                delay = self.store.retry_backoff_s * 2 ** (attempt - 1)
                log.warning("%s: Optuna storage call failed (%s); retrying in %.1f s (attempt %d of %d)",
                            self.store.describe_url(), cause, delay, attempt + 1,
                            self.store.retry_attempts)
                time.sleep(delay)
                attempt += 1

    def _start_ray(self):
        """Start Ray here, or join ``--ray-address``; check the cluster can run every task we send."""
        import ray

        from nas.affinity import plan_cores

        if not ray.is_initialized():
            if self.request.ray_address:
                self._join_cluster(ray)
            else:
                plan = plan_cores(self.request.measure_threads)
                slots = self.request.workers or max(1, plan.train_slots // max(1, self.request.train_threads))
                self._train_slots = slots
                # Ray >= 2.59 turns token authentication on for a local cluster and says so on
                # stderr every run; keep it on, without the notice. (Setting RAY_AUTH_MODE here
                # instead would be too late: Ray reads it when it is imported.)
                with _quiet_logger("ray._private.authentication.authentication_token_setup"):
                    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                             configure_logging=False,
                             resources={"nas_train": float(slots), "nas_measure": 1.0})
            self._started_ray = True
        try:
            self._check_cluster(ray)
        except BaseException:
            self._shutdown_ray(ray)
            raise
        return ray

    def _join_cluster(self, ray) -> None:
        address = self.request.ray_address
        # Workers run the driver's own copy of `nas`, so a cluster needs only its dependencies.
        package = Path(__file__).resolve().parent
        runtime_env = {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False,
                     runtime_env=runtime_env)
        except Exception as err:  # noqa: BLE001 - Ray raises several types here
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                hint = ("check that this machine has the cluster's token (RAY_AUTH_TOKEN, "
                        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head "
                        "node prints it)")
            else:
                hint = ("if the cluster uses token authentication, set RAY_AUTH_MODE=token and give "
                        "this machine its token (RAY_AUTH_TOKEN or ~/.ray/auth_token; `ray "
                        "get-auth-token` on the head node prints it)")
            raise SearchError(f"cannot join the Ray cluster at --ray-address {address!r}: "
                              f"{_ray_error(err)}; {hint}") from None

    def _check_cluster(self, ray) -> None:
        """Refuse tasks no node can run: Ray would otherwise queue them forever, silently."""
        req = self.request
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        where = (f"the Ray cluster at {req.ray_address!r}" if req.ray_address
                 else "the local Ray instance")
        needed = {"nas_train", "nas_measure"} if not req.ray_address else set()
        for resource in sorted(needed):
            if not any(r.get(resource, 0) >= 1 for r in nodes):
                raise SearchError(f"{where} has no node with the resource {resource!r}; it was "
                                  "started outside this search (ray.init before the driver)")
        self._device_cpus = {}
        for profile in req.profiles:
            if not profile.ray_resource:
                continue
            devices = [r for r in nodes if r.get(profile.ray_resource, 0) >= 1]
            if not devices:
                offered = sorted({k for r in nodes for k in r if not k.startswith("node:")
                                  and k not in ("memory", "object_store_memory")})
                raise ConfigError(
                    f"ray_resource={profile.ray_resource!r} is offered by no node of {where} "
                    f"(resources there: {', '.join(offered) or 'none'}); start the device's node with "
                    f"`ray start --address {req.ray_address or 'HEAD:PORT'} "
                    f"--resources '{{\"{profile.ray_resource}\": 1}}'`",
                    source=f"hardware profile {profile.name!r}", field="ray_resource",
                    value=profile.ray_resource)
            # Timing holds the CPUs it times on, so Ray never runs a training task beside it on
            # the device; capped by the smallest device so the task is never unschedulable.
            self._device_cpus[profile.name] = min(
                profile.intra_op_threads, min(int(r.get("CPU", 0)) for r in devices))
        self._max_node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=1)
        if req.gpus_per_trial > 0:
            most = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
            if most < req.gpus_per_trial:
                raise SearchError(f"--gpus-per-trial {req.gpus_per_trial:g}: no node of {where} has "
                                  f"that many GPUs (the most on one node: {most:g})")

    # ----- the loop -----------------------------------------------------------------
    def run(self) -> SearchOutcome:
        started = time.monotonic()
        req = self.request
        # Nothing is written until every input is checked: a search that cannot start must
        # not leave a record behind that a corrected re-run would then refuse to resume.
        self.space.check_profiles(req.profiles)  # also for a request not built by resolve_profiles
        existing = self._check_existing()
        self._reference = existing.reference_point if existing is not None else None
        if existing is not None and self._nothing_to_do():
            return self._close_without_work(started)
        data = self._prepare_data()
        if req.ray_address:
            check_ray_address(req.ray_address)
        elif any(p.ray_resource for p in req.profiles):
            bound = next(p for p in req.profiles if p.ray_resource)
            raise ConfigError(
                f"ray_resource={bound.ray_resource!r} binds this profile's latency to Ray nodes started "
                "with that resource, so the search needs a cluster: pass --ray-address HOST:PORT",
                source=f"hardware profile {bound.name!r}", field="ray_resource", value=bound.ray_resource)
        ray = self._start_ray()
        try:
            search = self._open_search(existing)
        except BaseException:
            self._shutdown_ray(ray)
            raise
        status = "stopped"
        restore = self._install_signal_handlers()
        cleanup = contextlib.ExitStack()
        try:
            study = self._open_study()
            self.store.set_status(req.name, "running")
            cleanup.enter_context(_heartbeat(self.store, req.name))
            self._reference = search.reference_point
            self._load_finished()
            self._repair_study(study)
            self._next_trial = len(self._db(study.get_trials, deepcopy=False))
            tasks = _ray_tasks(ray)
            local = not req.ray_address
            cluster_has_measure = "nas_measure" in ray.cluster_resources()
            data_ref = ray.put(data)
            queue = list(self.store.running_trials(req.name))  # left running by a crash
            for trial_number in queue:
                record = self.store.candidate_by_trial(req.name, trial_number)
                self.store.start_candidate(req.name, trial_number, record.architecture)  # counts the attempt
                self._submit(tasks, data_ref, trial_number, record.architecture, local)
            rejections = 0
            while not self.stop_event.is_set():
                while (not self.stop_event.is_set() and self._budget_left() > 0
                       and self._training_in_flight() < self._max_in_flight()
                       and not self._timing_waits()):
                    if self._ask_and_submit(study, tasks, data_ref, local):
                        rejections = 0
                    else:
                        rejections += 1
                        if rejections >= MAX_STATIC_REJECTIONS:
                            raise SearchError(
                                f"{MAX_STATIC_REJECTIONS} candidates in a row broke the shape-only "
                                f"constraints {list(self.space.constraint_texts())}; relax them or "
                                "narrow the space")
                if not self.inflight:
                    status = "finished" if self._budget_left() <= 0 else "stopped"
                    # An ask retried over a database outage can leave the first attempt's trial
                    # RUNNING in Optuna with nothing stored; fail it now rather than at a resume.
                    self._repair_study(study)
                    break
                self._collect(study, tasks, ray, local, cluster_has_measure)
                self._poll_stop_request()
                self._report()
        except KeyboardInterrupt:
            status = "stopped"
        except BaseException as err:
            self._cancel(ray)
            self._mark_failed(err)
            self._shutdown_ray(ray)
            raise
        finally:
            cleanup.close()
            restore()
        if self.inflight:
            self._cancel(ray)
        self.store.set_status(req.name, status)
        self._shutdown_ray(ray)
        front = self._front_records()
        return SearchOutcome(req.name, status, self.progress.done - self.progress.failed,
                             self.progress.failed, front, self.progress.hypervolume,
                             time.monotonic() - started)

    def _nothing_to_do(self) -> bool:
        """A resumed search that already holds its budget, with nothing left running."""
        self._load_finished()
        return self._budget_left() <= 0 and not self.store.running_trials(self.request.name)

    def _close_without_work(self, started: float) -> SearchOutcome:
        """Finish it without starting Ray or preparing data; Optuna is still repaired."""
        self._repair_study(self._open_study())
        self.store.update_search(self.request.name, trials=self.request.effective_trials)
        self.store.set_status(self.request.name, "finished")
        front = self._front_records()
        return SearchOutcome(self.request.name, "finished", self.progress.done - self.progress.failed,
                             self.progress.failed, front, self.progress.hypervolume,
                             time.monotonic() - started)

    def _prepare_data(self):
        from nas.data import check_fits, prepare

        data = prepare(self.request.data_spec)
        check_fits(data, self.space.budget)
        if data.vocab_size != self.space.vocab_size:
            raise ConfigError(f"the tokenizer gives vocab_size={data.vocab_size} but the space fixes "
                              f"{self.space.vocab_size}", source=self.space.source, field="vocab_size",
                              value=self.space.vocab_size)
        return data

    def _mark_failed(self, err: BaseException) -> None:
        """Record why the search stopped; the database may be what failed, so never mask ``err``."""
        try:
            self.store.set_status(self.request.name, "failed", error=str(err) or type(err).__name__)
        except Exception as store_err:  # noqa: BLE001
            log.warning("could not mark search %r failed: %s", self.request.name, store_err)

    def _shutdown_ray(self, ray) -> None:
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def _install_signal_handlers(self) -> Callable[[], None]:
        """First Ctrl-C stops cleanly after the current writes; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):  # noqa: ARG001
            if self.stop_event.is_set():
                raise KeyboardInterrupt
            self.stop_event.set()
            self.progress.message = "stopping: waiting for nothing, cancelling running trials"

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(sig, prev) for sig, prev in previous.items()]

    def _poll_stop_request(self) -> None:
        """`nas serve` asks a search to stop by setting its status to 'stopping' in the store."""
        now = time.monotonic()
        if now - self._last_stop_poll < 1.0:
            return
        self._last_stop_poll = now
        search = self.store.find_search(self.request.name)
        if search is not None and search.status == "stopping":
            self.stop_event.set()
            self.progress.message = "stop requested from the web service"

    def _budget_left(self) -> int:
        """Distinct architectures still to start: repeat draws never use up the budget."""
        return self.request.effective_trials - len(self._finished) - len(self.inflight)

    def _training_in_flight(self) -> int:
        return sum(1 for f in self.inflight.values() if f.train is None)

    def _max_in_flight(self) -> int:
        if self.request.workers:
            return self.request.workers
        if self.request.ray_address:
            import ray

            return max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, self.request.train_threads))
        from nas.affinity import plan_cores

        return max(1, plan_cores(self.request.measure_threads).train_slots // max(1, self.request.train_threads))

    def _ask_and_submit(self, study, tasks, data_ref, local: bool) -> bool:
        """Ask Optuna for one candidate; False when it broke a shape-only constraint."""
        import optuna

        from nas.architecture import static_metrics

        trial, arch = self._db(self._ask, study)
        if self.space.check_static(arch):
            # Recorded as infeasible so TPE learns to avoid it; nothing is trained or stored.
            self._db(_tell, study, trial.number, None,
                     self.space.constraint_dict(static_metrics(arch), partial=True),
                     state=optuna.trial.TrialState.PRUNED)
            return False
        if arch.hash in self.by_hash or arch.hash in self._finished:
            self._repeat(study, trial, arch)
            return True
        self._repeats_in_a_row = 0
        self.store.start_candidate(self.request.name, trial.number, arch)
        self._submit(tasks, data_ref, trial.number, arch, local)
        return True

    def _repeat(self, study, trial, arch: Architecture) -> None:
        """A draw of an architecture already evaluated (or in flight): Optuna hears the earlier
        result so the sampler still learns, but nothing is stored or trained and the budget is
        not used up. The trial carries ``nas:repeat_of`` so readers can tell it apart."""
        leader = self.by_hash.get(arch.hash)
        original = leader.trial if leader is not None else self._finished[arch.hash].trial
        self._db(trial.set_user_attr, REPEAT_ATTR, original)
        if leader is not None:
            leader.followers.append(trial.number)  # told when the leader's result is written
        else:
            self._db(self._tell_repeat, study, trial.number, self._finished[arch.hash])
        self._repeats_in_a_row += 1
        if self._repeats_in_a_row >= REPEATS_BEFORE_RANDOM:
            self._repeats_in_a_row = 0
            self._enqueue_unseen(study)

    def _tell_repeat(self, study, trial_number: int, finished: _Finished) -> None:
        import optuna

        if finished.state == "complete":
            _tell(study, trial_number, self.space.objective_values(finished.metrics),
                  self.space.constraint_dict(finished.metrics))
        else:
            _tell(study, trial_number, None, None, state=optuna.trial.TrialState.FAIL)

    def _enqueue_unseen(self, study) -> None:
        """Queue one not-yet-evaluated architecture, drawn uniformly, for the next ask."""
        import numpy as np

        from nas.space import trial_seed

        rng = np.random.default_rng(trial_seed(self.space.seed, self._next_trial))
        seen = self._finished.keys() | self.by_hash.keys()
        listed = self.request.distinct_architectures
        if listed is not None:
            unseen = [a for a in listed if a.hash not in seen]
            pick = unseen[int(rng.integers(len(unseen)))] if unseen else None
        else:
            draws = (self.space.sample_random(rng) for _ in range(RANDOM_UNSEEN_TRIES))
            pick = next((a for a in draws if a.hash not in seen and not self.space.check_static(a)), None)
        if pick is not None:
            self._db(study.enqueue_trial, self.space.params_for(pick))

    def _ask(self, study):
        """``study.ask()`` and the space's suggestions, as one unit `_db` can retry."""
        import optuna

        from nas.space import make_sampler, trial_seed

        # A fresh sampler seeded for this trial's position: a resumed run continues the stream.
        study.sampler = make_sampler(self.space, seed=trial_seed(self.space.seed, self._next_trial))
        trial = study.ask()
        self._next_trial = trial.number + 1
        try:
            return trial, self.space.suggest(trial)
        except Exception:
            # Fail the half-asked trial if the database lets us; if not, resume's repair does.
            with contextlib.suppress(Exception):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise

    def _submit(self, tasks, data_ref, trial_number: int, arch: Architecture, local: bool) -> None:
        req = self.request
        options: dict[str, Any] = {"max_retries": req.max_retries, "num_gpus": req.gpus_per_trial}
        if local:
            options.update(num_cpus=0, resources={"nas_train": 1.0})
        else:
            options.update(num_cpus=req.train_threads)
        ref = tasks.train.options(**options).remote(
            arch, self.space.budget, data_ref, self.space.seed, req.train_threads, req.measure_threads)
        entry = _InFlight(trial_number, arch, train_ref=ref)
        self.inflight[trial_number] = entry
        self.by_hash[arch.hash] = entry

    def _measure_options(self, profile: HardwareProfile, local: bool, cluster_has_measure: bool) -> dict:
        from nas.affinity import plan_cores

        if profile.ray_resource:
            return {"num_cpus": self._device_cpus[profile.name],
                    "resources": {profile.ray_resource: 1.0}}
        if local:
            resources = {"nas_measure": 1.0}
            if self._exclusive_timing():
                resources["nas_train"] = float(self._train_slots)  # time only while nothing trains
            return {"num_cpus": 0, "resources": resources}
        if cluster_has_measure:
            return {"num_cpus": 0, "resources": {"nas_measure": 1.0}}
        return {"num_cpus": min(profile.intra_op_threads, self._max_node_cpus)}

    def _exclusive_timing(self) -> bool:
        from nas.affinity import plan_cores

        return self.request.timing == "exclusive" or plan_cores(self.request.measure_threads).exclusive

    def _timing_waits(self) -> bool:
        """Hold new training while a local exclusive timing task waits for the node to go idle."""
        if self.request.ray_address or not self._exclusive_timing():
            return False
        return any(f.measure_refs for f in self.inflight.values())

    def _collect(self, study, tasks, ray, local: bool, cluster_has_measure: bool) -> None:
        refs = [f.train_ref for f in self.inflight.values() if f.train is None]
        refs += [r for f in self.inflight.values() for r in f.measure_refs]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.25)
        for ref in ready:
            entry = self._entry_for(ref)
            if entry is None:
                continue
            if ref is entry.train_ref and entry.train is None:
                self._on_trained(entry, ref, study, tasks, ray, local, cluster_has_measure)
            else:
                profile = entry.measure_refs.pop(ref)
                try:
                    entry.latencies[profile] = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - worker died or measurement failed
                    self._fail(study, entry, f"latency on profile {profile!r} failed: {_ray_error(err)}")
                    continue
                if not entry.measure_refs:
                    self._complete(study, entry)

    def _entry_for(self, ref) -> _InFlight | None:
        for entry in self.inflight.values():
            if ref is entry.train_ref or ref in entry.measure_refs:
                return entry
        return None

    def _on_trained(self, entry: _InFlight, ref, study, tasks, ray, local, cluster_has_measure) -> None:
        try:
            entry.train = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - worker killed more often than max_retries
            self._fail(study, entry, f"training worker failed after {self.request.max_retries} "
                                     f"retries: {_ray_error(err)}")
            return
        if not entry.train.ok:
            self._fail(study, entry, entry.train.error, result_train=entry.train)
            return
        entry.measure_started = time.perf_counter()
        for profile in self.request.profiles:
            cached = self.store.cached_latency(entry.arch.hash, profile.hash)
            if cached is not None:
                entry.latencies[profile.name] = dataclasses.replace(cached, profile=profile.name)
                continue
            measure_ref = tasks.measure.options(
                max_retries=self.request.max_retries,
                **self._measure_options(profile, local, cluster_has_measure),
            ).remote(entry.train.prefill_onnx, entry.train.decode_onnx, profile,
                     self.request.measure_threads)
            entry.measure_refs[measure_ref] = profile.name
        if not entry.measure_refs:
            self._complete(study, entry)

    # ----- the single write per finished trial ----------------------------------------------
    def _complete(self, study, entry: _InFlight) -> None:
        from nas.evaluate import assemble

        latencies = [entry.latencies[p.name] for p in self.request.profiles]
        result = assemble(entry.arch, entry.train, latencies, time.perf_counter() - entry.measure_started)
        missing = [m for m in self.objectives if not _finite(result.metrics.get(m))]
        if missing:
            self._fail(study, entry, f"objective(s) {missing} missing or not finite", result_train=entry.train)
            return
        self._write_result(study, entry.trial, result)
        self._tell_followers(study, entry)
        self._drop(entry)

    def _tell_followers(self, study, entry: _InFlight) -> None:
        for follower in entry.followers:
            self._db(self._tell_repeat, study, follower, self._finished[entry.arch.hash])

    def _fail(self, study, entry: _InFlight, error: str, result_train=None) -> None:
        from nas.architecture import static_metrics

        result = CandidateResult(
            entry.arch, "failed", metrics=static_metrics(entry.arch),
            proxy=result_train.proxy if result_train is not None else None, error=error,
            timings=dict(result_train.timings) if result_train is not None else {},
            node=result_train.node if result_train is not None else "")
        self._write_result(study, entry.trial, result)
        self._tell_followers(study, entry)
        self._drop(entry)

    def _write_result(self, study, trial_number: int, result: CandidateResult) -> None:
        import optuna

        record = self.store.finish_candidate(self.request.name, trial_number, result)
        self._finished.setdefault(record.arch_hash, _Finished(trial_number, result.state, dict(result.metrics)))
        self._count_progress()
        if result.state == "complete":
            values = self.space.objective_values(result.metrics)
            violations = self.space.constraint_dict(result.metrics)
            self._db(_tell, study, trial_number, values, violations)
            self._add_point(record, values, all(v <= 0 for v in violations.values()))
            self._snapshot()
        else:
            self._db(_tell, study, trial_number, None, None, state=optuna.trial.TrialState.FAIL)

    def _count_progress(self) -> None:
        self.progress.done = len(self._finished)
        self.progress.failed = sum(1 for f in self._finished.values() if f.state == "failed")

    def _drop(self, entry: _InFlight) -> None:
        self.inflight.pop(entry.trial, None)
        self.by_hash.pop(entry.arch.hash, None)

    def _cancel(self, ray) -> None:
        for entry in self.inflight.values():
            for ref in [entry.train_ref, *entry.measure_refs]:
                if ref is not None:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - already finished or gone
                        pass

    # ----- Pareto bookkeeping -------------------------------------------------------------
    def _load_finished(self) -> None:
        records = self.store.candidates(self.request.name, states=["complete", "failed"], with_proxy=False)
        for record in sorted(records, key=lambda r: r.trial_number):
            if record.arch_hash in self._finished:  # a repeat stored by an older version
                continue
            self._finished[record.arch_hash] = _Finished(record.trial_number, record.state,
                                                         dict(record.metrics))
            if record.state == "complete":
                self._add_point(record, self.space.objective_values(record.metrics),
                                self.space.is_feasible(record.metrics))
        self._count_progress()
        self._summarize()

    def _add_point(self, record, values: list[float], feasible: bool) -> None:
        """One point per architecture: a repeat reuses the first result (as `nas.fronts` ranks)."""
        if record.arch_hash in self._point_hashes:
            return
        self._point_hashes.add(record.arch_hash)
        self.points[record.id] = (values, feasible)

    def _repair_study(self, study) -> None:
        """Make Optuna agree with the store after a crash between the two writes."""
        import optuna

        stored = {r.trial_number: r for r in self.store.candidates(self.request.name)}
        running = self._db(study.get_trials, deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
        for trial in running:
            record = stored.get(trial.number)
            if record is None:  # asked, never recorded: nothing to lose
                self._db(_tell, study, trial.number, None, None, state=optuna.trial.TrialState.FAIL)
            elif record.state == "complete":
                self._db(_tell, study, trial.number, self.space.objective_values(record.metrics),
                         self.space.constraint_dict(record.metrics))
            elif record.state == "failed":
                self._db(_tell, study, trial.number, None, None, state=optuna.trial.TrialState.FAIL)

    def _summarize(self):
        from nas import pareto

        if not self.points:
            return None
        ids = list(self.points)
        values = [self.points[i][0] for i in ids]
        feasible = [self.points[i][1] for i in ids]
        if self._reference is None and sum(feasible) >= min(3, self.request.effective_trials):
            feasible_values = [v for v, ok in zip(values, feasible) if ok]
            self._reference = list(pareto.reference_point(feasible_values, self.directions))
            self.store.update_search(self.request.name, reference_point=self._reference)
        summary = pareto.summarize(values, self.directions, feasible=feasible, reference=self._reference)
        self.progress.front = len(summary.front)
        self.progress.hypervolume = summary.hypervolume if self._reference is not None else None
        return [ids[i] for i in summary.front], summary

    def _snapshot(self) -> None:
        summarized = self._summarize()
        if summarized is None:
            return
        front_ids, _summary = summarized
        self.store.add_pareto_snapshot(self.request.name, n_complete=len(self.points),
                                       hypervolume=self.progress.hypervolume, front_ids=front_ids)

    def _front_records(self) -> list[Any]:
        summarized = self._summarize()
        if summarized is None:
            return []
        front_ids = set(summarized[0])
        return [r for r in self.store.candidates(self.request.name, states=["complete"]) if r.id in front_ids]

    def _report(self) -> None:
        self.progress.running = len(self.inflight)
        self.on_progress(self.progress)


# ----- helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def _heartbeat(store, name: str) -> Iterator[None]:
    """Beat every few seconds from a thread of its own while the driver runs, so that a
    long synchronous step never reads as a lost driver, and a killed one soon does."""
    from nas.store.records import HEARTBEAT_SECONDS

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                store.heartbeat(name)
            except Exception as err:  # noqa: BLE001 - an outage the store's retries gave up on
                log.warning("heartbeat of search %r not written: %s", name, err)

    thread = threading.Thread(target=beat, name=f"nas-heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _tell(study, trial_number: int, values, violations, state=None) -> None:
    """Tell Optuna once; constraints are recorded on the trial first (Optuna 5 reads them there).

    Repeatable: a trial already finished (repaired twice, or a retry after a commit whose
    acknowledgement the dropped connection lost) is left as it is.
    """
    from nas.space import store_constraint_values

    try:
        if violations:
            store_constraint_values(study, trial_number, violations)
        if state is None:
            study.tell(trial_number, values)
        else:
            study.tell(trial_number, state=state)
    except (ValueError, RuntimeError) as err:
        if "finished" not in str(err).lower():
            raise


def _transient_cause(err: BaseException) -> BaseException | None:
    """The lost-connection (or locked-database) error behind ``err``, if that is what it is."""
    from sqlalchemy.exc import DBAPIError

    from nas.store.engine import is_transient

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DBAPIError) and is_transient(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def check_ray_address(address: str) -> None:
    """Fail in seconds, with a message, when nothing listens at ``--ray-address``.

    Ray itself retries an unreachable address for about 20 s and then reports only
    "Failed to connect". ``auto`` (the cluster this machine belongs to) is left to Ray.
    """
    target = address.removeprefix("ray://")
    if target in ("auto", "local"):
        return
    host, sep, port_text = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SearchError(f"--ray-address {address!r} must be HOST:PORT of a Ray head node "
                          "(e.g. 10.0.0.5:6379, as `ray start --head` prints it) or 'auto'")
    try:
        socket.create_connection((host, int(port_text)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        why = err.strerror or str(err) or type(err).__name__
        raise SearchError(f"cannot join the Ray cluster at --ray-address {address!r}: nothing answers "
                          f"at {host}:{port_text} ({why}); start a head node there with `ray start "
                          f"--head --port {port_text}`, or leave --ray-address out to run on this "
                          "machine") from None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ray_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


_TASKS = None


def _ray_tasks(ray):
    """Ray remote wrappers, defined lazily so importing this module does not import Ray."""
    global _TASKS
    if _TASKS is not None:
        return _TASKS

    @ray.remote
    def train(arch, budget, data, seed, threads, measure_threads):
        from nas.affinity import plan_cores
        from nas.evaluate import train_and_export

        plan = plan_cores(measure_threads)
        output = train_and_export(arch, budget, data, seed=seed, threads=threads, cores=plan.train_cores)
        return dataclasses.replace(output, node=ray.get_runtime_context().get_node_id())

    @ray.remote
    def measure(prefill_onnx, decode_onnx, profile, measure_threads):
        from nas.affinity import plan_cores
        from nas.evaluate import measure_profile

        plan = plan_cores(measure_threads)
        return measure_profile(prefill_onnx, decode_onnx, profile, cores=plan.measure_cores,
                               node=ray.get_runtime_context().get_node_id())

    @dataclass
    class Tasks:
        train: Any
        measure: Any

    _TASKS = Tasks(train, measure)
    return _TASKS
