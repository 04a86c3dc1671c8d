"""Choosing the candidate ``nas export`` writes: ``--trial N``, or ``--pick knee|best:METRIC``
narrowed by ``--where`` bounds.

The knee is the knee `nas.fronts.analyze` computes (the one every page and table shows), over
the candidates that meet the search's own constraints and every ``--where``; ``--where`` is
parsed by `nas.objectives`, so a bound reads and behaves as in a search space. When nothing
qualifies the error says what exists instead (the trial numbers, the candidates' states, the
closest candidate and its values), because the user's next step depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from nas.errors import ConfigError, NotFoundError
from nas.objectives import Constraint
from nas.states import LIVE_STATUSES
from nas.util import format_value

if TYPE_CHECKING:
    from nas.fronts import FrontAnalysis
    from nas.store import CandidateRecord, SearchRecord, Store

__all__ = ["Pick", "parse_where", "pick_candidate"]


class Pick(NamedTuple):
    search: SearchRecord
    candidate: CandidateRecord
    reason: str  # how it was chosen, for the user: "trial 3", "knee of the front of 5", ...


def parse_where(text: str) -> Constraint:
    """``METRIC<=VALUE`` or ``METRIC>=VALUE`` (e.g. ``params<=1e6``)."""
    try:
        return Constraint.parse(text)
    except ConfigError:
        raise ConfigError(f"--where={text!r} must look like METRIC<=NUMBER or METRIC>=NUMBER "
                          "(e.g. params<=1e6)", field="--where", value=text) from None


def pick_candidate(store: Store, name: str, trial: int | None = None, pick: str | None = None,
                   where: Sequence[str] | None = None) -> Pick:
    """The candidate ``--trial N`` names, or the one ``--pick`` chooses.

    ``pick``: ``knee`` (the knee of the front of the candidates that meet the search's
    constraints and every ``where``) or ``best:METRIC[:min|max]`` (the best value of METRIC
    among those; the direction defaults to the objective's, else min). The state of the
    candidate is not checked here: `nas.export.export_candidate` refuses what cannot be
    exported.
    """
    search = store.get_search(name)  # NotFoundError lists the existing searches
    if (trial is None) == (pick is None):
        raise ConfigError("give exactly one of --trial N or --pick knee|best:METRIC")
    if trial is not None:
        if where:
            raise ConfigError("--where narrows --pick; it does not apply to --trial")
        return _by_trial(store, search, trial)
    assert pick is not None
    return _by_pick(store, search, pick, [parse_where(w) for w in where or ()])


def _by_trial(store: Store, search: SearchRecord, trial: int) -> Pick:
    try:
        return Pick(search, store.candidate_by_trial(search.name, trial), f"trial {trial}")
    except NotFoundError:
        trials = [c.trial_number for c in store.candidates(search.name)]
        raise NotFoundError(f"search {search.name!r} has no trial {trial} "
                            f"(trials: {_ranges(trials) or 'none yet'})") from None


def _by_pick(store: Store, search: SearchRecord, pick: str, bounds: Sequence[Constraint]) -> Pick:
    from nas import fronts

    name = search.name
    analysis = fronts.analyze(search, store.candidates(name))
    if not analysis.complete:
        states = _count_states(analysis.candidates, live=search.status in LIVE_STATUSES)
        raise NotFoundError(f"search {name!r} has no complete candidate to pick from ({states})")
    known = sorted({m for c in analysis.complete for m in c.metrics})
    metric, direction = _parse_pick(pick, analysis)
    for m in [b.metric for b in bounds] + ([metric] if metric else []):
        if m not in known:
            raise ConfigError(f"unknown metric {m!r} (known: {', '.join(known)})", value=m)
    feasible = [c for c, ok in zip(analysis.complete, analysis.feasible) if ok]
    pool = [c for c in feasible if all(b.violation(c.metrics.get(b.metric, math.nan)) <= 0
                                       for b in bounds)]
    if not pool:
        raise NotFoundError(_no_match(name, analysis.complete, feasible, bounds))
    among = (f"the {len(pool)} candidates meeting {', '.join(b.text for b in bounds)}" if bounds
             else f"{len(pool)} feasible candidates")
    if metric is None:
        sub = fronts.analyze(search, pool)
        chosen = next((c for c in pool if c.id == sub.knee_id), None)
        if chosen is None:
            raise NotFoundError(f"search {name!r}: no knee among {among} (objective values missing?)")
        return Pick(search, chosen, f"knee of the {len(sub.front)}-candidate front among {among}")
    sign = -1.0 if direction == "max" else 1.0
    scored = [(sign * c.metrics[metric], c.trial_number, c) for c in pool
              if math.isfinite(c.metrics.get(metric, math.nan))]
    if not scored:
        raise NotFoundError(f"search {name!r}: no finite {metric} among {among}")
    chosen = min(scored, key=lambda s: s[:2])[2]
    return Pick(search, chosen, f"{'highest' if direction == 'max' else 'lowest'} {metric} "
                                f"({format_value(chosen.metrics[metric])}) of {among}")


def _parse_pick(pick: str, analysis: FrontAnalysis) -> tuple[str | None, str]:
    """``knee`` -> (None, "min"); ``best:METRIC[:min|max]`` -> (METRIC, direction), the
    direction defaulting to the search's objective on METRIC, else min."""
    if pick == "knee":
        return None, "min"
    if not pick.startswith("best:") or len(pick) <= 5:
        raise ConfigError(f"--pick={pick!r} must be 'knee' or 'best:METRIC' (e.g. best:val_loss)",
                          field="--pick", value=pick)
    metric, direction = pick[5:], ""
    head, sep, tail = metric.rpartition(":")
    if sep and tail in ("min", "max", "minimize", "maximize"):
        metric, direction = head, tail[:3]
    if not direction:
        directions = dict(zip(analysis.metrics, analysis.directions))
        direction = directions.get(metric, "min")
    return metric, direction


def _no_match(name: str, complete: Sequence[CandidateRecord], feasible: Sequence[CandidateRecord],
              bounds: Sequence[Constraint]) -> str:
    if not feasible:
        return (f"none of the {len(complete)} complete candidates of search {name!r} meets the "
                "search's constraints")

    def miss(c: CandidateRecord) -> float:
        return sum(max(0.0, b.violation(c.metrics.get(b.metric, math.nan))) for b in bounds)

    closest = min(feasible, key=lambda c: (miss(c), c.trial_number))
    values = ", ".join(f"{b.metric}={format_value(closest.metrics.get(b.metric, math.nan))}" for b in bounds)
    return (f"no candidate of search {name!r} meets {', '.join(b.text for b in bounds)} "
            f"({len(feasible)} feasible complete candidates); closest: trial "
            f"{closest.trial_number} ({values})")


def _count_states(records: Sequence[CandidateRecord], live: bool) -> str:
    """'2 failed, 1 running'; a trial its stopped or lost driver left running is 'interrupted'."""
    counts: dict[str, int] = {}
    for r in records:
        state = r.state if live or r.state != "running" else "interrupted"
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no candidates yet"


def _ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
