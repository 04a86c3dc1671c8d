"""What the pages, the API and the report show about a search, read once and cached.

A `SearchView` is everything about one search at one moment: its summary, the
`FrontAnalysis` of its candidates, its snapshots and re-timings, and (computed on first use)
figures and table rows. `ViewCache` keeps the latest view per search and knows from a cheap summary
query (the search's `version`) when it is out of date. The ``*_out`` functions turn records
into the JSON-ready dicts of the API's schemas, which pages and reports embed as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from nas import plots
from nas.errors import NotFoundError
from nas.fronts import FrontAnalysis, analyze
from nas.objectives import Objective
from nas.service.measurements import intervals, latency_out, retime_out, unresolved_by_candidate
from nas.states import LIVE_STATUSES
from nas.util import json_safe

if TYPE_CHECKING:
    from nas.results import ProfileLatency
    from nas.store import (
        CandidateRecord,
        RetimeRecord,
        SearchRecord,
        SearchSummary,
        SnapshotRecord,
        Store,
    )

T = TypeVar("T")
log = logging.getLogger("nas.service")
ACTIVE_STATUSES = LIVE_STATUSES  # a page polls while its search is in one of these
FIGURE_PARTS = ("pareto", "pareto3d", "hypervolume", "parallel", "rungs", "retimes")


def search_url(name: str) -> str:
    return f"/searches/{quote(name, safe='')}"


def candidate_url(candidate_id: int) -> str:
    return f"/candidates/{candidate_id}"


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a missing or broken measurement reads as null."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


class SearchView:
    """One search as read at one moment; derived data is computed once, on first use."""

    def __init__(self, summary: SearchSummary, analysis: FrontAnalysis,
                 snapshots: Sequence[SnapshotRecord], retimes: Sequence[RetimeRecord] = ()) -> None:
        self.summary = summary
        self.version = version(summary)
        self.analysis = analysis
        self.snapshots = list(snapshots)
        self.retimes = list(retimes)  # oldest first; the last one's unresolved pairs are marked
        self._memo: dict[Any, Any] = {}
        self._lock = threading.Lock()

    @property
    def search(self) -> SearchRecord:
        return self.analysis.search

    @property
    def trial_of(self) -> dict[int, int]:
        """Candidate id -> trial number: what people read (ids stay in URLs)."""
        return self.memo("trials", lambda: {r.id: r.trial_number for r in self.analysis.candidates})

    @property
    def latest_retime(self) -> RetimeRecord | None:
        return self.retimes[-1] if self.retimes else None

    def unresolved(self) -> dict[int, list[dict[str, Any]]]:
        """Per candidate id, the members of the latest re-timing its order is not resolved against."""
        return self.memo("unresolved", lambda: unresolved_by_candidate(self.latest_retime, self.trial_of))

    def retimes_out(self) -> list[dict[str, Any]]:
        """The search's re-timings, oldest first (the API's `RetimeOut`)."""
        return self.memo("retimes", lambda: [retime_out(r, self.trial_of) for r in self.retimes])

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """``compute()`` once per key; concurrent first callers may both compute (harmless)."""
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = compute()
        with self._lock:
            return self._memo.setdefault(key, value)

    # ----- figures --------------------------------------------------------------------
    def pareto_figure(self, axes: Sequence[str]) -> dict[str, Any]:
        axes = tuple(axes)
        return self.memo(("pareto", axes),
                         lambda: plots.pareto_spec(plots.pareto_data(self.analysis, axes)))

    def figures(self, axes: Sequence[str] | None = None,
                parts: Sequence[str] = FIGURE_PARTS) -> dict[str, Any]:
        """The search page's figures as Plotly JSON; ``axes`` are two of `plots.axis_metrics`
        (x, y). Parts ``rungs`` and ``retimes`` are no figures but the rung counts and tokens
        spent (`rung_summary`) and the re-timings (`retimes_out`), drawn as tables by the page,
        of the same version as the figures."""
        analysis = self.analysis
        axes = list(axes) if axes else list(plots.default_axes(analysis.metrics))
        out: dict[str, Any] = {"version": self.version, "axes": axes, "objectives": analysis.metrics,
                               "axis_metrics": plots.axis_metrics(analysis.search),
                               "front_size": len(analysis.front), "knee_id": analysis.knee_id,
                               "knee_trial": knee_trial(analysis), "warnings": list(analysis.warnings)}
        if "pareto" in parts and len(analysis.metrics) >= 2:
            out["pareto"] = self.pareto_figure(axes)
        if "pareto3d" in parts and len(analysis.metrics) >= 3:
            out["pareto3d"] = self.pareto_figure(analysis.metrics[:3])
        if "hypervolume" in parts:
            out["hypervolume"] = self.memo("hypervolume", lambda: plots.hypervolume_spec(
                self.hypervolume_data()))
        if "parallel" in parts:
            out["parallel"] = self.memo("parallel",
                                        lambda: plots.parallel_spec(plots.parallel_data(analysis)))
        if "rungs" in parts:
            out.update(self.rung_summary())
        if "retimes" in parts:
            out["retimes"] = self.retimes_out()
        return out

    def hypervolume_data(self) -> plots.HypervolumeData:
        return self.memo("hypervolume-data", lambda: plots.hypervolume_data(self.snapshots, self.analysis))

    def hypervolume_history(self) -> list[dict[str, Any]]:
        """The hypervolume after each finished candidate, with the training tokens spent by then."""
        d = self.hypervolume_data()
        return [{"n_complete": n, "hypervolume": finite_or_none(hv), "front_size": size, "tokens": tokens,
                 "created_at": at} for n, hv, size, tokens, at
                in zip(d.n_complete, d.hypervolume, d.front_size, d.tokens, d.created_at)]

    def rung_summary(self) -> dict[str, Any]:
        """Successive halving at a glance: per rung, its tokens and how many candidates reached
        it and were pruned there; and the training tokens spent on every candidate."""
        return self.memo("rungs", lambda: {
            "rungs": [{"rung": c.rung, "tokens": c.tokens, "reached": c.reached, "pruned": c.pruned}
                      for c in self.analysis.rung_counts()],
            "tokens_spent": self.analysis.tokens_spent()})

    def thumbnail_svg(self) -> str:
        return self.memo("thumbnail", lambda: plots.thumbnail_svg(plots.thumbnail_data(self.analysis)))

    # ----- table rows -----------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per candidate (the API's `CandidateBrief`), by trial number."""
        return self.memo("rows", self._rows)

    def _rows(self) -> list[dict[str, Any]]:
        a = self.analysis
        front, knee = a.front_ids, a.knee_id
        feasible = {r.id: bool(f) for r, f in zip(a.complete, a.feasible.tolist())}
        unresolved = self.unresolved()
        return [candidate_brief(r, on_front=r.id in front, knee=r.id == knee,
                                feasible=feasible.get(r.id, _never_feasible(r)),
                                unresolved=unresolved.get(r.id, ())) for r in a.candidates]


def knee_trial(analysis: FrontAnalysis) -> int | None:
    """The knee's trial number: what people read (ids stay in URLs and ``knee_id``)."""
    return next((r.trial_number for r in analysis.front if r.id == analysis.knee_id), None)


def candidate_brief(record: CandidateRecord, *, on_front: bool, knee: bool,
                    feasible: bool | None, unresolved: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One candidate as lists show it (the API's `CandidateBrief`). ``intervals``: the 95%
    intervals of its re-timed metrics; ``unresolved``: the members of the latest re-timing its
    order is not resolved against (`SearchView.unresolved`)."""
    arch = record.architecture
    return {
        "id": record.id, "search": record.search, "trial_number": record.trial_number,
        "state": record.state, "error": record.error, "architecture": arch.to_dict(),
        "description": arch.describe(), "arch_hash": record.arch_hash, "params": arch.n_params,
        "metrics": {k: finite_or_none(v) for k, v in record.metrics.items()},
        "on_front": on_front, "knee": knee, "feasible": feasible, "tokens": record.tokens,
        "intervals": intervals(record.latencies), "unresolved": list(unresolved),
        "url": candidate_url(record.id),
    }


def _never_feasible(record) -> bool | None:
    """False for a candidate its shape step found infeasible; None (not ranked) otherwise."""
    return False if record.state == "infeasible" else None


# ----- JSON-ready dicts (the API's schemas, also embedded in pages and reports) -------------
def summary_out(s) -> dict[str, Any]:
    return {
        "name": s.name,
        "status": s.status,
        "trials": s.trials,
        "n_complete": s.n_complete,
        "n_failed": s.n_failed,
        "n_pruned": s.n_pruned,
        "n_running": s.n_running,
        "n_interrupted": s.n_interrupted,
        "n_infeasible": s.n_infeasible,
        "front_size": s.front_size,
        "hypervolume": s.hypervolume,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "finished_at": s.finished_at,
        "version": version(s),
        "url": search_url(s.name),
    }


def search_out(summary: SearchSummary, search: SearchRecord) -> dict[str, Any]:
    """A search without reading its candidates: what pages poll must stay cheap when a
    search has 10,000 of them (front size and hypervolume are the latest snapshot's)."""
    objectives = [Objective.parse((m, d)) for m, d in search.objectives]
    return {
        **summary_out(summary),
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
        "constraints": list(search.constraints),
        "profiles": [p.get("name", "") for p in search.profiles],
        "budget": search.budget,
        "data": search.data,
        "space": search.space,
        "reference_point": list(search.reference_point) if search.reference_point else None,
        "error": search.error,
        "started_at": search.started_at,
        "fidelity": search.fidelity,
        "rung_tokens": list(search.rung_tokens),
        "parent": search.parent,
    }


def candidate_out(record, view: SearchView, history: Sequence[ProfileLatency] = ()) -> dict[str, Any]:
    """Everything about one candidate (the API's `CandidateOut`); ``history`` is every
    measurement of it (`Store.latency_history`), the ones in force included."""
    a = view.analysis
    feasible = next((bool(f) for r, f in zip(a.complete, a.feasible) if r.id == record.id),
                    _never_feasible(record))
    brief = candidate_brief(
        record, on_front=record.id in a.front_ids, knee=record.id == a.knee_id, feasible=feasible,
        unresolved=view.unresolved().get(record.id, ()),
    )
    return {
        **brief,
        "attempts": record.attempts,
        "latencies": [latency_out(lat) for lat in record.latencies],
        "latency_history": [latency_out(lat) for lat in history],
        "proxy": record.proxy,
        "rungs": [{"rung": r.rung, "tokens": r.tokens, "val_loss": finite_or_none(r.val_loss),
                   "seconds": finite_or_none(r.seconds)} for r in record.rungs],
        "timings": {k: finite_or_none(v) for k, v in record.timings.items()},
        "node": record.node,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "has_weights": record.has_weights,
        "derivation": record.derivation,
        "search_url": search_url(record.search),
        "export_url": f"/api/candidates/{record.id}/export",
    }


class ViewCache:
    """The latest `SearchView` of a few searches, kept fresh without making readers wait.

    The first read of a search builds its view (for 10,000 candidates about two seconds,
    nearly all of it in `Store.candidates`). After that, a read that finds the search changed
    gets the previous view at once while one background thread builds the new one
    (stale-while-revalidate): a page polling a running search never waits on a rebuild.
    Every view carries its ``version`` and so does the cheap `search` read, so a page knows
    when what it drew is behind and fetches again.
    """

    def __init__(self, store: Store, size: int = 8, background: bool = True) -> None:
        self.store = store
        self.size = size
        self.background = background  # False: every read waits for a fresh view (reports)
        self._views: OrderedDict[str, SearchView] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._refreshing: set[str] = set()

    def summaries(self) -> list[SearchSummary]:
        return self.store.list_searches()

    def search(self, name: str) -> tuple[SearchSummary, SearchRecord]:
        """Summary and record of one search: two small queries, no candidates."""
        summary = self.summary(name)
        return summary, self.store.get_search(name)

    def summary(self, name: str) -> SearchSummary:
        for s in self.store.list_searches():
            if s.name == name:
                return s
        self.store.get_search(name)  # raises NotFoundError listing the existing names
        raise NotFoundError(f"no search named {name!r}")  # created and deleted in between

    def get(self, name: str) -> SearchView:
        summary = self.summary(name)
        with self._lock:
            cached = self._views.get(name)
            if cached is not None:
                self._views.move_to_end(name)
                if cached.version == version(summary):
                    return cached
                if self.background:
                    self._refresh_later(name)
                    return cached
        return self._rebuild(name)

    def clear(self) -> None:
        with self._lock:
            self._views.clear()

    def _refresh_later(self, name: str) -> None:
        """Start one background rebuild of ``name`` unless one is running (caller holds the lock)."""
        if name in self._refreshing:
            return
        self._refreshing.add(name)

        def run() -> None:
            try:
                self._rebuild(name)
            except Exception:  # noqa: BLE001 - a failed refresh leaves the old view; the next read retries
                log.warning("refreshing search %r failed", name, exc_info=True)
            finally:
                with self._lock:
                    self._refreshing.discard(name)

        threading.Thread(target=run, name=f"nas-view-{name}", daemon=True).start()

    def _rebuild(self, name: str) -> SearchView:
        with self._lock:
            building = self._building.setdefault(name, threading.Lock())
        # One build per search at a time; a reader that waited reuses what was just built.
        with building:
            summary = self.summary(name)
            with self._lock:
                cached = self._views.get(name)
                if cached is not None and cached.version == version(summary):
                    return cached
            view = self._build(name, summary)
            with self._lock:
                self._views[name] = view
                self._views.move_to_end(name)
                while len(self._views) > self.size:
                    self._views.popitem(last=False)
            return view

    def _build(self, name: str, summary: SearchSummary) -> SearchView:
        search = self.store.get_search(name)
        analysis = analyze(search, self.store.candidates(name, with_proxy=False))
        return SearchView(summary, analysis, self.store.pareto_snapshots(name),
                          self.store.retimes(name))


def version(s: SearchSummary) -> str:
    """Changes whenever the search or its candidates do: ``updated_at`` moves on every write
    to them, and the snapshot fields catch the snapshot the driver writes right after."""
    key = (
        s.updated_at.isoformat(),
        s.status,
        s.n_complete,
        s.n_failed,
        s.n_pruned,
        s.n_running,
        s.n_interrupted,
        s.n_infeasible,
        s.front_size,
        s.hypervolume,
    )
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]


def json_bytes(value: Any) -> bytes:
    """JSON for large responses, without FastAPI's per-value `jsonable_encoder` walk.

    Figures and rows are plain types already; NaN/infinity (not JSON) become null in the
    rare document that has them."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(json_safe(value), separators=(",", ":")).encode()
