"""The search database: our ``nas_*`` tables and Optuna's study, in one database.

``Store(url)`` opens (and migrates) it; the search driver is the only writer and every
write is one idempotent transaction, retried on a lost connection. Readers (``nas serve``,
reports, export, optuna-dashboard) read concurrently and receive frozen records
(`SearchRecord`, `SearchSummary`, `CandidateRecord`, `SnapshotRecord`), never ORM rows.

URLs: ``sqlite:///path.db`` (WAL, 30 s busy timeout, foreign keys) or
``postgresql+psycopg://user:password@host/db``. Timestamps are aware UTC datetimes.
Resume: ``running_trials(search)`` lists the trials a crash left running; the driver
re-runs them with ``start_candidate`` (same row, ``attempts`` + 1).
"""

from nas.store.engine import DEFAULT_URL
from nas.store.records import CandidateRecord, RetimeRecord, SearchRecord, SearchSummary, SnapshotRecord
from nas.store.repository import Store

__all__ = ["DEFAULT_URL", "CandidateRecord", "RetimeRecord", "SearchRecord", "SearchSummary",
           "SnapshotRecord", "Store"]
