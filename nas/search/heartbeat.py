"""The driver's heartbeat: how readers tell a live search from one whose driver died."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.store import Store

log = logging.getLogger("nas.search")


@contextlib.contextmanager
def heartbeat(store: Store, name: str) -> Iterator[None]:
    """Beat every few seconds from a thread of its own while the driver runs, so that a
    long synchronous step never reads as a lost driver, and a killed one soon does."""
    from nas.store.records import HEARTBEAT_SECONDS

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                store.heartbeat(name)
            except Exception as err:  # noqa: BLE001 - an outage the store's retries gave up on
                log.warning("heartbeat of search %r not written: %s", name, err)

    thread = threading.Thread(target=beat, name=f"nas-heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)
