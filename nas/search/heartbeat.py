"""A driver's life as others see it and end it: its heartbeat (how readers tell a live search
from one whose driver died) and the signals that stop it."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.search.request import Progress
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


@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event, progress: Progress) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) sets ``stop_event``: the driver stops cleanly after the current
    writes; a second one raises KeyboardInterrupt and aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread (the service's launcher)
        return

    def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        if stop_event.is_set():
            raise KeyboardInterrupt
        stop_event.set()
        progress.message = "stopping: waiting for nothing, cancelling running trials"

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
