"""Re-time a search's front together: one process, interleaved rounds, one machine.

During a search each candidate is timed on its own, minutes apart, and a shared machine drifts
by more than two front members may differ. A re-timing (`retime`, ``nas retime NAME``, and the
driver at the end of a search through `retime_after_search`) takes the front and its nearest
dominated neighbours (the next non-dominated layer), exports each untrained (latency depends on
the shape only; the shape step's `nas.evaluate.export_shape`) and times them all with
`nas.latency.measure_together`: every round visits the members in a fresh random order, so
drift hits them alike, and every median gets a bootstrap 95% interval. Pairs of members whose
intervals overlap on a latency or throughput objective are recorded as unresolved. The front
is then recomputed from the new values and stored with what entered and left
(`nas.store.Store.record_retime`); the old measurements stay.

Machines are never mixed: a re-timing compares its members with every other ranked
candidate, so if any of those holds its latest latency on a re-timed profile from another
machine (or an unknown one: measured before machines were recorded), it is refused, naming
both, and ``--all`` (re-time every complete candidate) is suggested. Memory is not re-measured
(it does not drift): a re-timed measurement carries the memory of the one it replaces.

Which profiles: those an objective or constraint of the search measures latency or throughput
on (only they move the front); a search with none re-times every profile when asked directly,
and the end-of-search hook skips it.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas import pareto
from nas.errors import ConfigError, SearchError
from nas.fronts import FrontAnalysis, analyze, first_of_each_architecture
from nas.hardware import HardwareProfile
from nas.objectives import Constraint, latency_profile
from nas.results import MachineInfo, ProfileLatency

if TYPE_CHECKING:
    from nas.search.executor import RayExecutor
    from nas.search.request import SearchRequest
    from nas.store import CandidateRecord, RetimeRecord, SearchRecord, Store

log = logging.getLogger("nas.retime")

# (what is being done, steps done, steps in all): the CLI draws a progress bar from it.
ProgressFn = Callable[[str, int, int], None]
Graphs = Mapping[int, tuple[bytes, bytes]]  # candidate id -> (prefill ONNX, decode ONNX)
RETIMED_KINDS = ("latency:", "throughput:")  # metrics a re-timing replaces (as the store does)


class RetimeRefused(SearchError):
    """A re-timing that would compare numbers from two machines, or has nothing to time."""


@dataclass(frozen=True)
class RetimePlan:
    """What one re-timing of a search times: its members on its profiles."""

    search: SearchRecord
    analysis: FrontAnalysis  # the front as it stands, before
    profiles: tuple[HardwareProfile, ...]
    members: tuple[CandidateRecord, ...]

    @property
    def front_before(self) -> tuple[int, ...]:
        return tuple(sorted(self.analysis.front_ids))

    @property
    def outsiders(self) -> tuple[CandidateRecord, ...]:
        """Ranked candidates (complete, first of their architecture) that are not re-timed."""
        ids = {m.id for m in self.members}
        ranked = [self.analysis.complete[i] for i in first_of_each_architecture(self.analysis.complete)]
        return tuple(r for r in ranked if r.id not in ids)

    @property
    def rounds(self) -> int:
        return max((p.rounds for p in self.profiles), default=0)


def plan_retime(store: Store, name: str, *, profiles: Sequence[str] | None = None,
                neighbours: bool = True, all_candidates: bool = False) -> RetimePlan:
    """The members and profiles of a re-timing of search ``name`` (reads only)."""
    search = store.get_search(name)
    analysis = analyze(search, store.candidates(name, with_proxy=False))
    return RetimePlan(search, analysis, _profiles(search, profiles),
                      tuple(choose_members(analysis, neighbours=neighbours, all_candidates=all_candidates)))


def choose_members(analysis: FrontAnalysis, *, neighbours: bool = True,
                   all_candidates: bool = False) -> list[CandidateRecord]:
    """The front plus the next non-dominated layer of complete feasible candidates (the ones a
    re-timing could swap in), or every ranked complete candidate; by id."""
    ranked = first_of_each_architecture(analysis.complete)
    if all_candidates:
        return sorted((analysis.complete[i] for i in ranked), key=lambda r: r.id)
    feasible = [i for i in ranked if analysis.feasible[i]]
    if not feasible:
        return []
    layers = pareto.non_dominated_sort(analysis.values[feasible], analysis.directions)
    chosen = [feasible[i] for layer in layers[:2 if neighbours else 1] for i in layer]
    return sorted((analysis.complete[i] for i in chosen), key=lambda r: r.id)


def _profiles(search: SearchRecord, names: Sequence[str] | None) -> tuple[HardwareProfile, ...]:
    stored = [HardwareProfile.from_dict(p, source=f"search {search.name!r}") for p in search.profiles]
    if names is not None:
        by_name = {p.name: p for p in stored}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"search {search.name!r} has no profile {unknown[0]!r} (its profiles: "
                              f"{', '.join(by_name)})", field="profiles", value=list(names))
        return tuple(by_name[n] for n in names)
    return tuple(p for p in stored if p.name in front_profiles(search)) or tuple(stored)


def front_profiles(search: SearchRecord) -> set[str]:
    """Profiles whose latency or throughput an objective or constraint of ``search`` names."""
    metrics = [m for m, _ in search.objectives]
    for text in search.constraints:
        try:
            metrics.append(Constraint.parse(text).metric)
        except ConfigError:
            continue  # `nas.fronts` warns about a bound it cannot read; it moves no front here
    return {p for m in metrics if m.startswith(RETIMED_KINDS) and (p := latency_profile(m))}


# ----- machines ---------------------------------------------------------------------------
def check_machine(plan: RetimePlan, profile: str, machine: MachineInfo) -> None:
    """Refuse (RetimeRefused) when a candidate outside the members holds its latest latency on
    ``profile`` from a machine other than ``machine``: the new front would mix the two."""
    others: dict[str | None, list[CandidateRecord]] = {}
    for record in plan.outsiders:
        lat = next((x for x in record.latencies if x.profile == profile), None)
        if lat is None:
            continue
        theirs = lat.machine.hash if lat.machine is not None else None
        if theirs != machine.hash:
            others.setdefault(theirs, []).append(record)
    if not others:
        return
    records = next(iter(others.values()))
    theirs = next(x.machine for x in records[0].latencies if x.profile == profile)
    where = (f"on {theirs.summary}" if theirs is not None
             else "on an unknown machine (measured before nas recorded machines)")
    trials = ", ".join(str(r.trial_number) for r in records[:10]) + (", ..." if len(records) > 10 else "")
    rest = sum(len(v) for v in others.values()) - len(records)
    more = f" (and {rest} more on other machines)" if rest else ""
    raise RetimeRefused(
        f"re-timing search {plan.search.name!r} on {machine.summary} would mix machines: on profile "
        f"{profile!r}, trial(s) {trials} outside the re-timed front hold latencies measured {where}"
        f"{more}, and the recomputed front would compare numbers from both machines; re-time every "
        f"candidate together instead: nas retime {plan.search.name} --all")


# ----- exporting and timing ---------------------------------------------------------------
def export_members(plan: RetimePlan, *, progress: ProgressFn | None = None) -> dict[int, tuple[bytes, bytes]]:
    """Each member's untrained graphs (`nas.evaluate.export_shape`, the search's seed), here."""
    from nas.evaluate import export_shape

    graphs: dict[int, tuple[bytes, bytes]] = {}
    seed = int(plan.search.space.get("seed", 0) or 0)
    for done, record in enumerate(plan.members):
        if progress:
            progress(f"exporting trial {record.trial_number}", done, len(plan.members))
        graphs[record.id] = _graphs_of(record, export_shape(record.architecture, seed=seed))
    if progress:
        progress("exported", len(plan.members), len(plan.members))
    return graphs


def _graphs_of(record: CandidateRecord, shape: Any) -> tuple[bytes, bytes]:
    if not shape.ok:
        raise SearchError(f"re-timing: exporting trial {record.trial_number} "
                          f"({record.architecture.describe()}) failed: {shape.error}")
    return shape.prefill_onnx, shape.decode_onnx


def time_members(graphs: Graphs, profile: HardwareProfile, *, rounds: int | None = None,
                 seed: int = 0, cpus: Iterable[int] | None = None,
                 node: str = "") -> dict[int, ProfileLatency]:
    """Time ``graphs`` together on ``profile`` (`nas.latency.measure_together`): plain values in
    and out, so it runs the same here and in a Ray task on the profile's device."""
    from nas.latency import GraphPair, measure_together

    with tempfile.TemporaryDirectory(prefix="nas-retime-") as tmp:
        pairs = {}
        for key, (prefill, decode) in graphs.items():
            pair = GraphPair(Path(tmp, f"{key}-model.onnx"), Path(tmp, f"{key}-decode.onnx"))
            pair.prefill.write_bytes(prefill)
            pair.decode.write_bytes(decode)
            pairs[key] = pair
        timed = measure_together(pairs, profile, set(cpus) if cpus else None, rounds=rounds, seed=seed)
    return {key: dataclasses.replace(lat, node=node or lat.node) for key, lat in timed.items()}


# ----- the outcome ------------------------------------------------------------------------
def _interval(lat: ProfileLatency, metric: str) -> tuple[float, float] | None:
    kind, _, quantity = metric.split(":", 2)
    # tokens_per_s is batch * new_tokens over the reply time: its order is the replies' order.
    stats = lat.stats().get("generate_ms" if kind == "throughput" else quantity)
    if stats is None or stats.ci_low_ms is None or stats.ci_high_ms is None:
        return None
    return stats.ci_low_ms, stats.ci_high_ms


def unresolved_pairs(latencies: Mapping[int, Sequence[ProfileLatency]],
                     metrics: Sequence[str]) -> list[tuple[int, int, str]]:
    """(a, b, metric) for members a < b whose 95% intervals on ``metric`` overlap (or are
    unknown): their order on it is not settled by this measurement."""
    out = []
    for metric in metrics:
        profile = latency_profile(metric)
        found = {key: next((lat for lat in lats if lat.profile == profile), None)
                 for key, lats in latencies.items()}
        timed = sorted(key for key, lat in found.items() if lat is not None)
        for a, b in combinations(timed, 2):
            x, y = _interval(found[a], metric), _interval(found[b], metric)
            if x is None or y is None or (x[0] <= y[1] and y[0] <= x[1]):
                out.append((a, b, metric))
    return out


def record_retime(store: Store, plan: RetimePlan, timed: Mapping[str, Mapping[int, ProfileLatency]],
                  machine: MachineInfo, *, rounds: int, seconds: float) -> RetimeRecord:
    """Store ``timed`` (profile -> candidate id -> new measurement, all from ``machine``): the
    front recomputed from it, the unresolved pairs, and a snapshot of the new front."""
    before = {r.id: r for r in plan.members}
    latencies: dict[int, list[ProfileLatency]] = {}
    for by_id in timed.values():
        for key, lat in by_id.items():
            old = next((x for x in before[key].latencies if x.profile == lat.profile), None)
            if old is not None:  # memory is not re-measured: the replaced measurement's stands
                lat = dataclasses.replace(lat, peak_mb=old.peak_mb, estimate_mb=old.estimate_mb)
            latencies.setdefault(key, []).append(lat)
    after = analyze(plan.search, [_with(r, latencies.get(r.id)) for r in plan.analysis.candidates])
    objectives = [m for m in plan.analysis.metrics
                  if m.startswith(RETIMED_KINDS) and latency_profile(m) in timed]
    record = store.record_retime(
        plan.search.name, latencies=latencies, machine=machine, profiles=list(timed),
        members=[r.id for r in plan.members], front_before=plan.front_before,
        front_after=sorted(after.front_ids), unresolved=unresolved_pairs(latencies, objectives),
        rounds=rounds, seconds=seconds)
    _snapshot(store, plan.search, after)
    return record


def _with(record: CandidateRecord, latencies: Sequence[ProfileLatency] | None) -> CandidateRecord:
    if not latencies:
        return record
    metrics = {**record.metrics, **{k: v for lat in latencies for k, v in lat.metrics().items()
                                    if k.startswith(RETIMED_KINDS)}}
    return dataclasses.replace(record, metrics=metrics)


def _snapshot(store: Store, search: SearchRecord, after: FrontAnalysis) -> None:
    """Replace the latest Pareto snapshot (same count of candidates) with the new front, so the
    search list's front size agrees with the front every reader now computes."""
    if not after.complete:
        return
    store.add_pareto_snapshot(
        search.name, n_complete=len(first_of_each_architecture(after.complete)),
        hypervolume=after.hypervolume if search.reference_point is not None else None,
        front_ids=sorted(after.front_ids), tokens=after.tokens_spent())


# ----- entry points -----------------------------------------------------------------------
def retime(store: Store, search_name: str, *, profiles: Sequence[str] | None = None,
           neighbours: bool = True, all_candidates: bool = False, rounds: int | None = None,
           seed: int = 0, cpus: Iterable[int] | None = None,
           progress: ProgressFn | None = None) -> RetimeRecord:
    """Re-time search ``search_name`` in this process, on this machine (``nas retime``)."""
    from nas.machine import local_machine

    started = time.perf_counter()
    plan = plan_retime(store, search_name, profiles=profiles, neighbours=neighbours,
                       all_candidates=all_candidates)
    if not plan.members or not plan.profiles:
        raise RetimeRefused(f"search {search_name!r} has no " + (
            "complete feasible candidate" if plan.profiles else "hardware profile") + " to re-time")
    machine = local_machine()
    for profile in plan.profiles:
        check_machine(plan, profile.name, machine)  # before anything is timed
    graphs = export_members(plan, progress=progress)
    timed = {}
    for done, profile in enumerate(plan.profiles):
        if progress:
            progress(f"timing {len(graphs)} together on {profile.name}", done, len(plan.profiles))
        timed[profile.name] = time_members(graphs, profile, rounds=rounds, seed=seed, cpus=cpus)
    if progress:
        progress("timed", len(plan.profiles), len(plan.profiles))
    return record_retime(store, plan, timed, machine, rounds=rounds or plan.rounds,
                         seconds=time.perf_counter() - started)


def retime_after_search(store: Store, request: SearchRequest, executor: RayExecutor, *,
                        report: Callable[[str], None], stop: threading.Event) -> list[RetimeRecord]:
    """The driver's re-timing when a search finishes, on its running Ray: members exported in
    parallel shape tasks; timed in the driver process when timing is local, else in a Ray task
    placed like the profile's measure task. Profiles timed on different machines are recorded
    as one re-timing per machine. Skipped when fewer than two candidates would be timed or no
    objective or constraint is timed. A refusal (mixed machines) or a failure is reported and
    logged, never fatal: the search itself has finished."""
    try:
        plan = plan_retime(store, request.name)
        if len(plan.members) < 2 or not front_profiles(plan.search):
            return []  # no order to settle (`retime` still re-times a lone member when asked)
        return _retime_on_ray(store, plan, executor, report, stop)
    except (SearchError, ConfigError) as err:
        report(f"front not re-timed: {err}")
        log.warning("search %r: front not re-timed: %s", request.name, err)
        return []


def _retime_on_ray(store: Store, plan: RetimePlan, executor: RayExecutor,
                   report: Callable[[str], None], stop: threading.Event) -> list[RetimeRecord]:
    from nas.machine import local_machine
    from nas.search.executor import ray_error

    started = time.perf_counter()
    if executor.local:
        for profile in plan.profiles:
            check_machine(plan, profile.name, local_machine())
    report(f"re-timing the front: {len(plan.members)} candidates together on "
           f"{', '.join(p.name for p in plan.profiles)}")
    refs = {r.id: executor.submit_shape(r.architecture) for r in plan.members}
    try:
        graphs = {r.id: _graphs_of(r, executor.get(refs[r.id])) for r in plan.members}
        by_machine: dict[str, tuple[MachineInfo, dict[str, dict[int, ProfileLatency]]]] = {}
        for profile in plan.profiles:
            if stop.is_set():
                return []
            if executor.local:
                timed = time_members(graphs, profile, cpus=executor.plan.measure_cores)
            else:
                timed = executor.get(executor.submit_retime(profile, graphs))
            machine = next(iter(timed.values())).machine or local_machine()
            by_machine.setdefault(machine.hash, (machine, {}))[1][profile.name] = timed
    except Exception as err:
        if isinstance(err, (SearchError, ConfigError)):
            raise
        raise SearchError(f"re-timing task failed: {ray_error(err)}") from err
    records = []
    for machine, timed_profiles in by_machine.values():
        # A second machine's profiles are recorded against the front the first one left.
        current = _refreshed(store, plan, list(timed_profiles)) if records else plan
        for profile in timed_profiles:
            check_machine(current, profile, machine)
        records.append(record_retime(store, current, timed_profiles, machine, rounds=plan.rounds,
                                     seconds=time.perf_counter() - started))
    if records:
        last = records[-1]
        report(f"front re-timed: {len(last.members)} candidates, {len(last.entered)} entered, "
               f"{len(last.left)} left, {len(last.unresolved)} pair(s) unresolved")
    return records


def _refreshed(store: Store, plan: RetimePlan, profiles: list[str]) -> RetimePlan:
    """``plan``'s members on ``profiles``, re-read after an earlier re-timing changed the store."""
    fresh = plan_retime(store, plan.search.name, profiles=profiles)
    ids = {r.id for r in plan.members}
    return dataclasses.replace(fresh, members=tuple(r for r in fresh.analysis.complete if r.id in ids))
