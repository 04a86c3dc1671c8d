"""The driver's view of its front: the progress numbers, the reference point, the snapshots.

Computed as every reader computes it (`nas.fronts.analyze`), so the progress display, the
Pareto snapshot after each complete trial and the outcome agree with the pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.fronts import FrontAnalysis, analyze, first_of_each_architecture

if TYPE_CHECKING:
    from nas.search.request import Progress
    from nas.store import Store


def refresh_front(store: Store, name: str, progress: Progress, trials: int, *,
                  snapshot: bool = False, with_proxy: bool = False) -> FrontAnalysis:
    """Update ``progress`` (front size, hypervolume, training tokens spent) from the store,
    fix the reference point once it can be, and record a snapshot when asked."""
    records = store.candidates(name, with_proxy=with_proxy)
    search = store.get_search(name)
    analysis = analyze(search, records)
    if search.reference_point is None and _write_reference_point(store, name, analysis, trials):
        search = store.get_search(name)
        analysis = analyze(search, records)
    progress.front = len(analysis.front)
    progress.tokens = sum(r.tokens for r in records)
    progress.hypervolume = analysis.hypervolume if search.reference_point is not None else None
    if snapshot:
        store.add_pareto_snapshot(
            name, n_complete=len(first_of_each_architecture(analysis.complete)),
            hypervolume=progress.hypervolume,
            front_ids=[r.id for r, on in zip(analysis.complete, analysis.on_front) if on],
            tokens=progress.tokens)
    return analysis


def _write_reference_point(store: Store, name: str, analysis: FrontAnalysis, trials: int) -> bool:
    """Fix the search's hypervolume reference once enough feasible results exist (3, or the
    whole budget if smaller), so hypervolumes over time compare; True when written."""
    from nas import pareto

    feasible = [i for i in first_of_each_architecture(analysis.complete) if analysis.feasible[i]]
    if not feasible or len(feasible) < min(3, trials):
        return False
    reference = pareto.reference_point(analysis.values[feasible], analysis.directions)
    store.update_search(name, reference_point=[float(x) for x in reference])
    return True
