"""The names of search statuses and candidate states: the store's CHECK constraints, the API's
schemas, the pages and the CLI all read them from here."""

from __future__ import annotations

SEARCH_STATUSES: tuple[str, ...] = ("running", "stopping", "stopped", "finished", "failed")
LIVE_STATUSES: tuple[str, ...] = ("running", "stopping")  # a driver should be beating
DRIVER_LOST = "driver lost"  # what readers see for a live status whose heartbeat went stale
SHOWN_STATUSES: tuple[str, ...] = (*SEARCH_STATUSES, DRIVER_LOST)
# infeasible: its shape step (untrained export, latency, size) broke a constraint that needs no
# training, so it was stored with its reason and never trained.
CANDIDATE_STATES: tuple[str, ...] = ("running", "complete", "failed", "pruned", "infeasible")
