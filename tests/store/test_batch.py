"""WriteBatch: a burst of candidate writes in one transaction, follow-ups only after it commits."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from nas.architecture import Architecture
from nas.errors import StoreError
from nas.results import RungLoss
from nas.store.batch import WriteBatch

from .factories import latency, result

ARCH = Architecture(n_layer=2, d_model=64)
OTHER = Architecture(n_layer=4, d_model=64)


def commits(store) -> list[int]:
    """A list that grows by one per transaction committed on ``store``'s writer."""
    seen: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: seen.append(1))
    return seen


def test_a_burst_is_one_transaction_and_its_follow_ups_run_after_it_in_order(store, new_search):
    new_search("s1")
    batch = WriteBatch(store)
    order: list[str] = []
    batch.start_candidate("s1", 0, ARCH, then=lambda cid: order.append(f"started {cid > 0}"))
    batch.record_shape("s1", 0, [latency()], then=lambda _: order.append("shaped"))
    batch.record_rung("s1", 0, RungLoss(0, 512, 4.2, 1.0), b"checkpoint",
                      then=lambda _: order.append("rung"))
    batch.after(lambda: order.append("told a repeat"))
    batch.start_candidate("s1", 1, OTHER)
    batch.finish_candidate("s1", 1, result(OTHER), read_back=True,
                           then=lambda record: order.append(f"finished {record.state}"))
    assert len(batch) == 6 and order == []  # nothing written, nothing followed up yet
    assert store.candidates("s1") == []
    before = store.get_search("s1").updated_at
    seen = commits(store)
    batch.commit()
    assert len(seen) == 1
    assert order == ["started True", "shaped", "rung", "told a repeat", "finished complete"]
    assert store.checkpoint("s1", 0) == (0, b"checkpoint")
    assert [r.state for r in store.candidates("s1")] == ["running", "complete"]
    assert store.get_search("s1").updated_at > before  # pages see the search changed
    assert len(batch) == 0
    batch.commit()  # an empty batch writes nothing
    assert len(seen) == 1


def test_a_refused_write_rolls_the_burst_back_and_keeps_it(store, new_search):
    new_search("s1")
    store.start_candidate("s1", 0, ARCH)
    store.finish_candidate("s1", 0, result(ARCH))
    batch = WriteBatch(store)
    followed: list[object] = []
    batch.start_candidate("s1", 1, OTHER, then=followed.append)
    batch.start_candidate("s1", 0, ARCH, then=followed.append)  # complete: refused
    with pytest.raises(StoreError, match="already complete"):
        batch.commit()
    assert followed == []  # nothing follows a write that is not stored
    assert [r.trial_number for r in store.candidates("s1")] == [0]  # trial 1 rolled back with it
    assert len(batch) == 2  # kept: a stop's commit could try it again


def test_a_result_in_an_unfinished_state_is_refused_when_added(store, new_search):
    new_search("s1")
    batch = WriteBatch(store)
    with pytest.raises(ValueError, match="running"):
        batch.finish_candidate("s1", 0, result(ARCH, state="running"), read_back=False)
    assert len(batch) == 0
