"""The store's successive-halving half: rung losses and the checkpoints between rungs.

A rung's loss and its checkpoint are written in one transaction (`record_rung`), so a driver
killed after it loses nothing: the resumed candidate continues from that checkpoint. The
checkpoint is dropped when its candidate ends (`Store.finish_candidate`), so the store holds
one per running candidate at most.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nas.results import RungLoss
from nas.store import writes
from nas.store.engine import retrying
from nas.store.rows import rung_loss, search_id_of, trial_row
from nas.store.tables import Candidate, Checkpoint, Rung


class RungStore:
    """Mixed into `nas.store.Store`, which provides the sessions."""

    retry_attempts: int
    retry_backoff_s: float

    def _read(self) -> AbstractContextManager[Session]:  # pragma: no cover - Store's
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Session]:  # pragma: no cover - Store's
        raise NotImplementedError

    @retrying
    def record_rung(self, search: str, trial_number: int, rung: RungLoss, checkpoint: bytes) -> None:
        """A running trial finished ``rung`` and goes on: its loss and the checkpoint the next
        rung continues from, replacing the previous rung's. Repeating it changes nothing."""
        with self._write() as session:
            writes.record_rung(session, search, trial_number, rung, checkpoint)

    @retrying
    def checkpoint(self, search: str, trial_number: int) -> tuple[int, bytes] | None:
        """(the rung it ended, its bytes) of a running trial's checkpoint, if one is stored."""
        with self._read() as session:
            row = trial_row(session, search, trial_number)
            found = session.execute(select(Checkpoint.rung, Checkpoint.data)
                                    .where(Checkpoint.candidate_id == row.id)).one_or_none()
        return None if found is None else (int(found.rung), bytes(found.data))

    @retrying
    def rung_arrivals(self, search: str) -> list[tuple[int, RungLoss]]:
        """Every (trial number, rung loss) of a search in the order they arrived: what each
        promotion decision was made against."""
        with self._read() as session:
            search_id = search_id_of(session, search)
            rows = session.execute(
                select(Candidate.trial_number, Rung.rung, Rung.tokens, Rung.val_loss, Rung.seconds)
                .join(Candidate, Candidate.id == Rung.candidate_id)
                .where(Candidate.search_id == search_id).order_by(Rung.id)).all()
        return [(row.trial_number, rung_loss(row)) for row in rows]

    @retrying
    def checkpoint_bytes(self, search: str | None = None) -> int:
        """Bytes of checkpoints held (for one search, or all): bounded by the running trials."""
        with self._read() as session:
            query: Any = select(func.coalesce(func.sum(Checkpoint.size), 0))
            if search is not None:
                query = query.join(Candidate, Candidate.id == Checkpoint.candidate_id).where(
                    Candidate.search_id == search_id_of(session, search))
            return int(session.scalar(query) or 0)
