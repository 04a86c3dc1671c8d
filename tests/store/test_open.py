"""Opening databases (bad URLs, concurrent first opens), retries, and readers beside a writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from nas.architecture import Architecture
from nas.errors import StoreError
from nas.store import Store
from nas.store.engine import json_dumps, json_loads, retrying

from .factories import result


def test_unknown_dialect():
    with pytest.raises(StoreError, match=r"'nosuchdb://u:\*\*\*@h/x'.*unknown database dialect"):
        Store("nosuchdb://u:secret@h/x")


def test_not_a_url():
    with pytest.raises(StoreError, match="not a database URL"):
        Store("just some words")


def test_unreachable_postgres_masks_the_password():
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nas")
    message = str(info.value)
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nas" in message
    assert "hunter2" not in message and "refused" in message.lower()


def test_unwritable_sqlite_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="is not a directory"):
        Store(f"sqlite:///{blocker}/nas.db")
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path}/missing/nas.db")
    # The check cannot see everything (here: a directory where the file should be).
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="unable to open database file"):
        Store(f"sqlite:///{tmp_path}/dir.db")


def test_describe_url_masks_the_password(tmp_path):
    with Store(f"sqlite:///{tmp_path}/nas.db") as store:
        assert store.describe_url() == f"sqlite:///{tmp_path}/nas.db"
    from nas.store.engine import describe, parse_url

    assert describe(parse_url("postgresql+psycopg://me:pw@db/nas")) == \
        "postgresql+psycopg://me:***@db/nas"


def test_in_memory_sqlite():
    with Store("sqlite://") as store:
        store.create_search("m", space={}, space_hash="h", profiles=[], objectives=[],
                            constraints=[], data={}, budget={}, trials=1, study_name="m")
        assert store.get_search("m").name == "m"
        with pytest.raises(StoreError, match="in-memory"):
            store.optuna_storage()


def test_json_codec_keeps_non_finite_floats_standard():
    text = json_dumps({"a": [float("inf"), float("-inf"), 1.5], "b": "x"})
    assert "Infinity" in text and "NaN" not in text
    assert json_loads(text) == {"a": [float("inf"), float("-inf"), 1.5], "b": "x"}
    assert json_loads(b'{"a": 1}') == {"a": 1}


class _Flaky:
    retry_attempts = 3
    retry_backoff_s = 0.0

    def __init__(self, failures: int, invalidated: bool = True) -> None:
        self.failures, self.invalidated, self.calls = failures, invalidated, 0

    def describe_url(self) -> str:
        return "postgresql+psycopg://u:***@h/db"

    @retrying
    def write(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection"),
                                   connection_invalidated=self.invalidated)
        return "ok"


def test_retry_on_lost_connection():
    flaky = _Flaky(failures=2)
    assert flaky.write() == "ok" and flaky.calls == 3
    exhausted = _Flaky(failures=5)
    with pytest.raises(StoreError, match=r"write failed after 3 attempts: server closed"):
        exhausted.write()
    assert exhausted.calls == 3


def test_no_retry_for_sqlite_mistakes():
    import sqlite3

    class Broken(_Flaky):
        @retrying
        def write(self) -> str:
            self.calls += 1
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))

    broken = Broken(failures=0)
    with pytest.raises(OperationalError):
        broken.write()
    assert broken.calls == 1


@pytest.mark.postgres
def test_postgres_restart_is_survived(postgres_url):
    """Server-side connection loss (as in a restart): the next write reconnects."""
    import psycopg

    store = Store(postgres_url, retry_backoff_s=0.05)
    try:
        store.create_search("restart", space={}, space_hash="h", profiles=[], objectives=[],
                            constraints=[], data={}, budget={}, trials=1, study_name="r")
        with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"),
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        store.set_status("restart", "finished")
        assert store.get_search("restart").status == "finished"
    finally:
        store.close()


def test_concurrent_first_opens(db_url):
    """A search and `nas serve` started together on a new database both open it."""
    url = db_url
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url).close()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


READER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from nas.store import Store
    url, done, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    store = Store(url)
    reads = 0
    while not done.exists() or reads < 3:
        store.list_searches()
        store.candidates("live")
        reads += 1
        ready.touch()
    print(reads)
""")


def test_readers_beside_a_writer_on_sqlite(tmp_path):
    """The service reads (thread and process) while the driver writes: never 'database is locked'."""
    url = f"sqlite:///{tmp_path}/nas.db"
    done = tmp_path / "done"
    writer = Store(url)
    writer.create_search("live", space={}, space_hash="h", profiles=[], objectives=[],
                         constraints=[], data={}, budget={}, trials=30, study_name="live")
    ready = tmp_path / "ready"
    reader_process = subprocess.Popen([sys.executable, "-c", READER, url, str(done), str(ready)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    thread_errors: list[BaseException] = []
    thread_reads = 0

    def read_in_thread() -> None:
        nonlocal thread_reads
        reader = Store(url)
        try:
            while not done.exists() or thread_reads < 3:
                reader.candidates("live")
                thread_reads += 1
        except BaseException as err:  # noqa: BLE001 - reported below
            thread_errors.append(err)
        finally:
            reader.close()

    thread = threading.Thread(target=read_in_thread)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and reader_process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # let the reader process start reading before writing begins
        arch = Architecture()
        for trial in range(30):
            writer.start_candidate("live", trial, arch)
            writer.finish_candidate("live", trial, result(arch))
    finally:
        done.touch()
        thread.join()
        out, err = reader_process.communicate(timeout=60)
        writer.close()
    assert thread_errors == []
    assert reader_process.returncode == 0, err
    assert int(out) >= 3 and thread_reads >= 3
    with Store(url) as store:
        assert len(store.candidates("live")) == 30
