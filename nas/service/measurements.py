"""Latency and memory measurements as readers show them: JSON-ready dicts, intervals, re-timings.

The pages, the JSON API, the offline report and ``nas show`` all read a candidate's
measurements (`nas.results.ProfileLatency`: one per profile, the latest in force, and every
earlier one in `Store.latency_history`) and a search's re-timings (`nas.store.RetimeRecord`)
through these functions, so a 95% interval or an unresolved pair reads the same everywhere.

Pure Python over records: no FastAPI, no store access (callers pass what they read).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.results import LatencyStats, MachineInfo, ProfileLatency
    from nas.store import RetimeRecord

# <kind>:<profile>:<quantity>; profile names never hold a colon (`nas.names.NAME_PATTERN`).
_METRIC_RE = re.compile(r"^(latency|throughput|memory):([^:]+):(.+)$")


def _finite(value: float | None) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def stats_out(s: LatencyStats) -> dict[str, Any]:
    """One timed quantity (the API's `LatencyStatsOut`); NaN and infinity read as null."""
    return {"median_ms": _finite(s.median_ms), "p90_ms": _finite(s.p90_ms), "cv": _finite(s.cv),
            "n": s.n, "ci_low_ms": _finite(s.ci_low_ms), "ci_high_ms": _finite(s.ci_high_ms)}


def machine_out(m: MachineInfo | None) -> dict[str, Any] | None:
    """The machine that took a measurement (the API's `MachineOut`), with its hash and summary."""
    if m is None:
        return None
    return {**m.to_dict(), "hash": m.hash, "summary": m.summary}


def latency_out(lat: ProfileLatency) -> dict[str, Any]:
    """One measurement on one profile (the API's `ProfileLatencyOut`).

    ``stats`` holds every timed quantity by metric suffix (prefill_ms, decode_ms, then the
    workload's: decode_ms@<context>, ttft_ms, generate_ms); ``prefill`` and ``decode`` repeat
    the first two, as the API has always had them. ``memory_diff_mb`` is measured peak minus
    the closed-form estimate (null unless both are known).
    """
    peak, estimate = _finite(lat.peak_mb), _finite(lat.estimate_mb)
    return {
        "profile": lat.profile, "profile_hash": lat.profile_hash, "node": lat.node,
        "measurement": lat.measurement,
        "prefill": stats_out(lat.prefill), "decode": stats_out(lat.decode),
        "stats": {name: stats_out(s) for name, s in lat.stats().items()},
        "tokens_per_s": _finite(lat.tokens_per_s), "peak_mb": peak, "estimate_mb": estimate,
        "memory_diff_mb": peak - estimate if peak is not None and estimate is not None else None,
        "retimed": any(s.ci_low_ms is not None for s in lat.stats().values()),
        "machine": machine_out(lat.machine),
    }


def measurement_label(number: int) -> str:
    """``the search's`` for measurement 0, ``re-timing k`` after that."""
    return "the search's" if number == 0 else f"re-timing {number}"


# ----- intervals ------------------------------------------------------------------------------
def metric_interval(latencies: Iterable[ProfileLatency], metric: str) -> tuple[float, float] | None:
    """The 95% interval of ``metric`` in the measurements in force; None when it has none
    (not re-timed, not a timed metric, or not measured).

    ``throughput:<p>:tokens_per_s`` is ``batch * new_tokens`` over the generate time's median,
    so its interval is that constant over the generate time's interval (ends swapped).
    Memory is measured once, without an interval.
    """
    match = _METRIC_RE.match(metric)
    if match is None:
        return None
    kind, profile, quantity = match.groups()
    lat = next((x for x in latencies if x.profile == profile), None)
    if lat is None or kind == "memory":
        return None
    if kind == "latency":
        s = lat.stats().get(quantity)
        if s is None or _finite(s.ci_low_ms) is None or _finite(s.ci_high_ms) is None:
            return None
        return (float(s.ci_low_ms), float(s.ci_high_ms))  # type: ignore[arg-type]
    generate = lat.stats().get("generate_ms")
    tps = _finite(lat.tokens_per_s)
    if quantity != "tokens_per_s" or generate is None or tps is None:
        return None
    lo, hi, median = _finite(generate.ci_low_ms), _finite(generate.ci_high_ms), _finite(generate.median_ms)
    if lo is None or hi is None or median is None or lo <= 0:
        return None
    work = tps * median  # batch * new_tokens * 1000: tokens/s times ms
    return (work / hi, work / lo)


def intervals(latencies: Sequence[ProfileLatency]) -> dict[str, list[float]]:
    """Every metric of ``latencies`` that has a 95% interval, as ``[low, high]``."""
    out: dict[str, list[float]] = {}
    for lat in latencies:
        timed = (lat.prefill, lat.decode, *(s for _, s in lat.workload))
        if all(s.ci_low_ms is None for s in timed):
            continue  # never re-timed: the common case, once per row of 10,000 (kept cheap)
        for metric in lat.metrics():
            found = metric_interval((lat,), metric)
            if found is not None:
                out[metric] = [found[0], found[1]]
    return out


# ----- re-timings -----------------------------------------------------------------------------
def unresolved_by_candidate(retime: RetimeRecord | None,
                            trial_of: Mapping[int, int]) -> dict[int, list[dict[str, Any]]]:
    """Per candidate id, the members its order is not resolved against in ``retime`` (the
    latest re-timing): ``{"id", "trial_number", "metric"}`` each, both ways round."""
    out: dict[int, list[dict[str, Any]]] = {}
    if retime is None:
        return out
    for a, b, metric in retime.unresolved:
        for me, other in ((a, b), (b, a)):
            out.setdefault(me, []).append({"id": other, "trial_number": trial_of.get(other),
                                           "metric": metric})
    return out


def _ref(candidate_id: int, trial_of: Mapping[int, int]) -> dict[str, Any]:
    return {"id": candidate_id, "trial_number": trial_of.get(candidate_id),
            "url": f"/candidates/{candidate_id}"}


def retime_out(retime: RetimeRecord, trial_of: Mapping[int, int]) -> dict[str, Any]:
    """One re-timing (the API's `RetimeOut`); candidates as ``{id, trial_number, url}``, the
    time as ISO 8601 text: figures and the report embed it with plain `json.dumps`."""
    refs = {name: [_ref(i, trial_of) for i in getattr(retime, name)]
            for name in ("members", "front_before", "front_after", "entered", "left")}
    return {
        "number": retime.number, "search": retime.search,
        "created_at": retime.created_at.isoformat(),
        "machine": machine_out(retime.machine), "profiles": list(retime.profiles), **refs,
        "unresolved": [{"a": _ref(a, trial_of), "b": _ref(b, trial_of), "metric": metric}
                       for a, b, metric in retime.unresolved],
        "n_unresolved": len(retime.unresolved), "rounds": retime.rounds, "seconds": retime.seconds,
    }


def history_by_profile(history: Sequence[ProfileLatency],
                       current: Sequence[ProfileLatency]) -> dict[str, list[ProfileLatency]]:
    """Per profile, the measurements before the one in force (oldest first): what the
    candidate page lists under "earlier measurements"; a profile never re-timed has none."""
    in_force = {lat.profile: lat.measurement for lat in current}
    out: dict[str, list[ProfileLatency]] = {}
    for lat in history:
        if lat.profile in in_force and lat.measurement != in_force[lat.profile]:
            out.setdefault(lat.profile, []).append(lat)
    return out


def format_interval(low: float, high: float) -> str:
    """``[0.1203, 0.1261]``: four significant digits, as values are shown beside it."""
    return f"[{low:.4g}, {high:.4g}]"
