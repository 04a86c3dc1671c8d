"""Everything Ray: start or join, check the cluster, resource options, submit/wait/cancel.

Core policy (see `nas.affinity`): on every node the last ``max(profile threads)`` cores
time graphs and the others train; training tasks and timing tasks are pinned to their
sets. Locally this is enforced with two Ray custom resources, ``nas_train`` (one unit per
training slot) and ``nas_measure`` (one). Separate cores are not enough on their own: a
training process on the neighbouring core still slows a larger candidate's prefill through
the shared cache and memory bus (BENCHMARKS.md). So by default (``timing="exclusive"``) a
timing task also takes every ``nas_train`` unit and the driver holds new training while
one waits: timing then runs on an otherwise idle node. ``timing="overlap"`` trades that
accuracy for throughput and times on the reserved cores while training goes on. When the
node has too few cores to split, timing is always exclusive.

On a cluster (``--ray-address``) the driver is still the only database client; workers
get the driver's copy of `nas` (runtime_env ``py_modules``) and no credentials. Training
asks for ``--threads`` CPUs (and ``--gpus-per-trial`` GPUs). A profile with a
``ray_resource`` is timed only on nodes holding it, and its timing task also holds
``intra_op_threads`` of that node's CPUs (at most what the smallest such node has). Such a
node exists to be timed (a phone-class board), so training and shape steps never go there:
they carry a label selector on Ray's ``ray.io/node-id`` label that excludes every node
holding a profile's ``ray_resource`` when the search starts (a device node that joins later
is not excluded; start device nodes first).

Ray is imported only by `RayExecutor.start`, so a search with nothing to do never pays for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import ConfigError, SearchError
from nas.hardware import HardwareProfile

if TYPE_CHECKING:
    from nas.affinity import CorePlan
    from nas.architecture import Architecture
    from nas.evaluate import ShapeOutput, TrainOutput
    from nas.search.request import SearchRequest

RAY_CONNECT_TIMEOUT_S = 5.0  # an unreachable --ray-address fails in seconds, not after Ray's retries
_NOT_RESOURCES = ("memory", "object_store_memory")  # what every node has; not worth listing


@dataclasses.dataclass(frozen=True)
class RayTasks:
    """The Ray remote functions; `ray_tasks` defines them once per process."""

    train: Any
    measure: Any
    shape: Any
    retime: Any


class RayExecutor:
    """Ray for one run of the driver, and the run-wide facts about where tasks can go.

    Everything that is fixed for the run (local or cluster, training slots, whether the
    cluster offers ``nas_measure``, the CPUs a device's timing task holds, the core plan) is
    decided once, in `start`, and read from here instead of being passed down.
    """

    def __init__(self, request: SearchRequest, *,
                 tasks_factory: Callable[[Any], RayTasks] | None = None) -> None:
        """``tasks_factory``: builds the remote functions from the ``ray`` module once Ray is
        up (default `ray_tasks`, the real evaluation). The seam benchmarks and tests use to run
        the real driver, Ray and store against simulated candidates (bench/fake_evaluator.py)."""
        self.request = request
        self.tasks_factory = tasks_factory or ray_tasks
        self.local = not request.ray_address
        self.ray: Any = None  # the ray module, once started
        self.tasks: RayTasks | None = None
        self.train_slots = 1  # nas_train units of a Ray instance we started here
        self.cluster_has_measure = False
        self.device_cpus: dict[str, int] = {}  # profile -> CPUs its timing task holds on a device
        self.timing_nodes: tuple[str, ...] = ()  # Ray node ids holding a profile's ray_resource
        self.max_node_cpus = 1
        self._started = False  # True: this process started (or joined) Ray, so it shuts it down

    @functools.cached_property
    def plan(self) -> CorePlan:
        """This node's split of cores between training and timing (computed once per run)."""
        from nas.affinity import plan_cores

        return plan_cores(self.request.measure_threads)

    @functools.cached_property
    def machine_hash(self) -> str | None:
        """This host's `MachineInfo.hash` when timing runs here (a local search): the latency
        cache then reuses only measurements this machine took. None on a cluster: any node's."""
        if not self.local:
            return None
        from nas.machine import local_machine

        return local_machine().hash

    @property
    def exclusive_timing(self) -> bool:
        return self.request.timing == "exclusive" or self.plan.exclusive

    @property
    def timing_holds_training(self) -> bool:
        """Locally, an exclusive timing task waits for the node to go idle, so the driver must
        not keep it busy with new training (a cluster's nodes are not ours to idle)."""
        return self.local and self.exclusive_timing

    # ----- start, check, stop ------------------------------------------------------------
    def check_placement(self) -> None:
        """Refuse what can never be placed, before Ray starts or anything is written."""
        req = self.request
        if req.ray_address:
            check_ray_address(req.ray_address)
            return
        bound = next((p for p in req.profiles if p.ray_resource), None)
        if bound is not None:
            raise ConfigError(
                f"ray_resource={bound.ray_resource!r} binds this profile's latency to Ray nodes started "
                "with that resource, so the search needs a cluster: pass --ray-address HOST:PORT",
                source=f"hardware profile {bound.name!r}", field="ray_resource", value=bound.ray_resource)

    def start(self) -> None:
        """Start Ray here, or join ``--ray-address``; check the cluster can run every task we send.

        The caller registers `shutdown` first: a refused cluster is then shut down by it too.
        """
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if self.local:
                self._start_local()
            else:
                self._join_cluster()
            self._started = True
        self._check_cluster()
        self.cluster_has_measure = "nas_measure" in ray.cluster_resources()
        self.tasks = self.tasks_factory(ray)

    def _start_local(self) -> None:
        req = self.request
        self.train_slots = req.workers or max(1, self.plan.train_slots // max(1, req.train_threads))
        # Ray >= 2.59 turns token authentication on for a local cluster and says so on stderr
        # every run; keep it on, without the notice. (Setting RAY_AUTH_MODE here instead would
        # be too late: Ray reads it when it is imported.)
        with _quiet_logger("ray._private.authentication.authentication_token_setup"):
            self.ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                          configure_logging=False,
                          resources={"nas_train": float(self.train_slots), "nas_measure": 1.0})

    def _join_cluster(self) -> None:
        address = self.request.ray_address
        # Workers run the driver's own copy of `nas`, so a cluster needs only its dependencies.
        package = Path(__file__).resolve().parents[1]
        runtime_env = {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}
        try:
            self.ray.init(address=address, log_to_driver=False, configure_logging=False,
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
                              f"{ray_error(err)}; {hint}") from None

    def _check_cluster(self) -> None:
        """Refuse tasks no node can run: Ray would otherwise queue them forever, silently."""
        req = self.request
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        nodes = [n.get("Resources", {}) for n in alive]
        where = f"the Ray cluster at {req.ray_address!r}" if req.ray_address else "the local Ray instance"
        for resource in ("nas_measure", "nas_train") if self.local else ():
            if not any(r.get(resource, 0) >= 1 for r in nodes):
                raise SearchError(f"{where} has no node with the resource {resource!r}; it was "
                                  "started outside this search (ray.init before the driver)")
        self.device_cpus = {}
        for profile in req.profiles:
            if not profile.ray_resource:
                continue
            devices = [r for r in nodes if r.get(profile.ray_resource, 0) >= 1]
            if not devices:
                offered = sorted({k for r in nodes for k in r
                                  if not k.startswith("node:") and k not in _NOT_RESOURCES})
                raise ConfigError(
                    f"ray_resource={profile.ray_resource!r} is offered by no node of {where} "
                    f"(resources there: {', '.join(offered) or 'none'}); start the device's node with "
                    f"`ray start --address {req.ray_address or 'HEAD:PORT'} "
                    f"--resources '{{\"{profile.ray_resource}\": 1}}'`",
                    source=f"hardware profile {profile.name!r}", field="ray_resource",
                    value=profile.ray_resource)
            # Timing holds the CPUs it times on, so Ray never runs a training task beside it on
            # the device; capped by the smallest device so the task is never unschedulable.
            self.device_cpus[profile.name] = min(
                profile.intra_op_threads, min(int(r.get("CPU", 0)) for r in devices))
        self.max_node_cpus = max((int(r.get("CPU", 0)) for r in nodes), default=1)
        bound = {p.ray_resource for p in req.profiles if p.ray_resource}
        self.timing_nodes = tuple(sorted(n["NodeID"] for n in alive
                                         if any(n.get("Resources", {}).get(r, 0) >= 1 for r in bound)))
        trainers = [n.get("Resources", {}) for n in alive if n["NodeID"] not in self.timing_nodes]
        if not self.local and not any(r.get("CPU", 0) >= req.train_threads
                                      and r.get("GPU", 0.0) >= req.gpus_per_trial for r in trainers):
            raise SearchError(
                f"no node of {where} can train (--threads {req.train_threads}"
                f"{f', --gpus-per-trial {req.gpus_per_trial:g}' if req.gpus_per_trial else ''}) "
                f"besides the {len(self.timing_nodes)} node(s) holding {', '.join(sorted(bound))}, "
                "which only time: add a training node (`ray start --address HEAD:PORT`)")
        if req.gpus_per_trial > 0:
            most = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
            if most < req.gpus_per_trial:
                raise SearchError(f"--gpus-per-trial {req.gpus_per_trial:g}: no node of {where} has "
                                  f"that many GPUs (the most on one node: {most:g})")

    def shutdown(self) -> None:
        """Stop the Ray we started (or leave the cluster we joined); a no-op otherwise."""
        if self._started:
            self.ray.shutdown()
            self._started = False

    # ----- resources ---------------------------------------------------------------------
    def max_in_flight(self) -> int:
        """Training tasks to keep in flight. A cluster's CPUs are read on every call, because
        nodes may join a running cluster; this node's core plan is fixed for the run."""
        req = self.request
        if req.workers:
            return req.workers
        if not self.local:
            return max(1, int(self.ray.cluster_resources().get("CPU", 1)) // max(1, req.train_threads))
        return max(1, self.plan.train_slots // max(1, req.train_threads))

    def train_options(self) -> dict[str, Any]:
        req = self.request
        options: dict[str, Any] = {"max_retries": req.max_retries, "num_gpus": req.gpus_per_trial}
        if self.local:
            options.update(num_cpus=0, resources={"nas_train": 1.0})
        else:
            options.update(num_cpus=req.train_threads)
            if self.timing_nodes:  # never on a node that is there to be timed
                options["label_selector"] = {"ray.io/node-id": f"!in({','.join(self.timing_nodes)})"}
        return options

    def measure_options(self, profile: HardwareProfile) -> dict[str, Any]:
        options: dict[str, Any] = {"max_retries": self.request.max_retries}
        if profile.ray_resource:
            options.update(num_cpus=self.device_cpus[profile.name],
                           resources={profile.ray_resource: 1.0})
        elif self.local:
            resources = {"nas_measure": 1.0}
            if self.exclusive_timing:
                resources["nas_train"] = float(self.train_slots)  # time only while nothing trains
            options.update(num_cpus=0, resources=resources)
        elif self.cluster_has_measure:
            options.update(num_cpus=0, resources={"nas_measure": 1.0})
        else:
            options.update(num_cpus=min(profile.intra_op_threads, self.max_node_cpus))
        return options

    # ----- tasks -------------------------------------------------------------------------
    def put(self, value: Any) -> Any:
        """One copy in Ray's object store, shared by every task (the prepared token data)."""
        return self.ray.put(value)

    def submit_shape(self, arch: Architecture) -> Any:
        """The shape step (untrained export): on the training side of the core plan."""
        req = self.request
        return self._tasks.shape.options(**self.train_options()).remote(
            arch, req.space.seed, req.train_threads, req.measure_threads)

    def submit_train(self, arch: Architecture, data_ref: Any, stop_at: int | None = None,
                     resume: bytes | None = None, parent_ref: Any = None) -> Any:
        """Train to step ``stop_at`` (a rung; None: the budget's end), from ``resume`` if given;
        ``parent_ref``: the search's `nas.parent.ParentRef` in the object store, or None."""
        req = self.request
        return self._tasks.train.options(**self.train_options()).remote(
            arch, req.space.budget, data_ref, req.space.seed, req.train_threads, req.measure_threads,
            stop_at, resume, parent_ref)

    def submit_measure(self, profile: HardwareProfile, graphs: ShapeOutput | TrainOutput) -> Any:
        return self._tasks.measure.options(**self.measure_options(profile)).remote(
            graphs.prefill_onnx, graphs.decode_onnx, profile, self.request.measure_threads)

    def submit_retime(self, profile: HardwareProfile, graphs: Mapping[int, tuple[bytes, bytes]]) -> Any:
        """Time a front's graphs together (`nas.retime.time_members`) where ``profile`` is timed."""
        return self._tasks.retime.options(**self.measure_options(profile)).remote(
            dict(graphs), profile, self.request.measure_threads)

    def wait(self, refs: Sequence[Any], timeout: float = 0.25) -> list[Any]:
        """The refs that are ready within ``timeout`` seconds (the driver's poll interval)."""
        if not refs:
            return []
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        return ready

    def get(self, ref: Any) -> Any:
        return self.ray.get(ref)

    def cancel(self, refs: Iterable[Any]) -> None:
        for ref in refs:
            if ref is not None:
                with contextlib.suppress(Exception):  # already finished or gone
                    self.ray.cancel(ref, force=True)

    @property
    def _tasks(self) -> RayTasks:
        if self.tasks is None:
            raise RuntimeError("RayExecutor.start() was not called")
        return self.tasks


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


def ray_error(err: BaseException) -> str:
    """A Ray error in one line: its type and the last line of its (often long) message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.cache
def ray_tasks(ray: Any) -> RayTasks:
    """The Ray remote task bodies, defined on first use so importing this module imports no Ray.

    Each pins itself to its side of the node's core plan, made in the worker (every process
    on a node makes the same plan), so training and timing never share a core.
    """

    @ray.remote
    def train(arch: Architecture, budget: Any, data: Any, seed: int, threads: int,
              measure_threads: int, stop_at: int | None = None,
              resume: bytes | None = None, parent: Any = None) -> TrainOutput:
        from nas.affinity import plan_cores
        from nas.evaluate import train_and_export
        from nas.gpu_share import current_share

        plan = plan_cores(measure_threads)
        context = ray.get_runtime_context()
        # A fraction of a GPU (--gpus-per-trial < 1) is checked and capped in the task itself.
        share = current_share(context.get_assigned_resources().get("GPU", 0.0))
        # Training only: the shape step's graphs were timed (latency depends on shape, not weights).
        output = train_and_export(arch, budget, data, seed=seed, threads=threads, cores=plan.train_cores,
                                  export=False, stop_at=stop_at, resume=resume, parent=parent,
                                  gpu_share=share)
        return dataclasses.replace(output, node=context.get_node_id())

    @ray.remote
    def shape(arch: Architecture, seed: int, threads: int, measure_threads: int) -> ShapeOutput:
        from nas.affinity import plan_cores
        from nas.evaluate import export_shape

        plan = plan_cores(measure_threads)
        output = export_shape(arch, seed=seed, threads=threads, cores=plan.train_cores)
        return dataclasses.replace(output, node=ray.get_runtime_context().get_node_id())

    @ray.remote
    def measure(prefill_onnx: bytes, decode_onnx: bytes, profile: HardwareProfile,
                measure_threads: int) -> Any:
        from nas.affinity import plan_cores
        from nas.evaluate import measure_profile

        plan = plan_cores(measure_threads)
        return measure_profile(prefill_onnx, decode_onnx, profile, cores=plan.measure_cores,
                               node=ray.get_runtime_context().get_node_id())

    @ray.remote
    def retime(graphs: dict[int, tuple[bytes, bytes]], profile: HardwareProfile,
               measure_threads: int) -> Any:
        from nas.affinity import plan_cores
        from nas.retime import time_members

        plan = plan_cores(measure_threads)
        return time_members(graphs, profile, cpus=plan.measure_cores,
                            node=ray.get_runtime_context().get_node_id())

    return RayTasks(train, measure, shape, retime)
