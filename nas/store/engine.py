"""Engines for the store: URL checks, SQLite settings, JSON codec and transient-error retries."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from nas.errors import StoreError

log = logging.getLogger("nas.store")

DEFAULT_URL = "sqlite:///nas.db"
BUSY_TIMEOUT_S = 30.0  # a SQLite writer waits this long for another writer (e.g. Optuna's engine)
PG_CONNECT_TIMEOUT_S = 10  # a firewalled host fails in seconds instead of hanging
WRITE = "nas_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


# ----- URLs ------------------------------------------------------------------------------
def parse_url(text: str) -> URL:
    try:
        return make_url(text)
    except ArgumentError as err:
        raise StoreError(f"cannot open database {mask_url(text)!r}: not a database URL ({err}); "
                         "use e.g. sqlite:///nas.db or postgresql+psycopg://user@host/db") from None


def mask_url(text: str) -> str:
    """The password masked, for URLs SQLAlchemy could not even parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", text)


def describe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def is_memory(url: URL) -> bool:
    return is_sqlite(url) and url.database in (None, "", ":memory:")


def reason(err: BaseException) -> str:
    """One line saying why the driver failed, without SQLAlchemy's SQL echo and links."""
    orig = err.orig if isinstance(err, DBAPIError) else err
    return " ".join(str(orig).split()) or type(orig).__name__


# ----- JSON: PostgreSQL's json type rejects NaN and Infinity, which losses can be -----------------
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """Non-finite floats become the strings "NaN", "Infinity", "-Infinity" (standard JSON)."""
    return json.dumps(_encode(value), allow_nan=False)


def json_loads(text: str | bytes) -> Any:
    value = json.loads(text)
    # Walking every document is the slow part of reading 10,000 candidates: only walk
    # the documents that can hold a non-finite marker.
    if isinstance(text, bytes):
        marked = b"NaN" in text or b"Infinity" in text
    else:
        marked = "NaN" in text or "Infinity" in text
    return _decode(value) if marked else value


# ----- engines ---------------------------------------------------------------------------
def create_store_engine(url: URL, *, must_exist: bool = False) -> Engine:
    """An engine with the store's settings; StoreError for an unknown dialect or a bad path.

    ``must_exist``: readers (``nas ls``, ``show``...) must not create a SQLite file by
    opening a mistyped URL, so a missing file is a StoreError saying so.
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": json_dumps,
                              "json_deserializer": json_loads}
    if is_sqlite(url):
        if is_memory(url):
            # One connection, or each connection would see its own empty database.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            _check_sqlite_path(url, must_exist)
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
    elif (url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2")
          and "connect_timeout" not in url.query):
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise StoreError(f"cannot open database {describe(url)!r}: unknown database dialect "
                         f"{url.drivername!r}; use sqlite:///path.db or "
                         "postgresql+psycopg://user@host/db") from None
    except ImportError as err:
        raise StoreError(f"cannot open database {describe(url)!r}: the driver for "
                         f"{url.drivername!r} is not installed ({err})") from None
    if is_sqlite(url):
        _configure_sqlite(engine)
    return engine


def _check_sqlite_path(url: URL, must_exist: bool = False) -> None:
    # sqlite3 only says "unable to open database file"; name the actual problem.
    if url.query.get("uri") or str(url.database).startswith("file:"):
        return
    path = Path(str(url.database)).expanduser().resolve()
    parent = path.parent
    if not parent.exists():
        problem = f"directory {parent} does not exist"
    elif not parent.is_dir():
        problem = f"{parent} is not a directory"
    elif must_exist and not path.exists():
        problem = f"it does not exist (no file {path}); a search creates it"
    else:
        return
    raise StoreError(f"cannot open database {describe(url)!r}: {problem}")


_PG_NO_DATABASE = re.compile(r'database "(?P<name>[^"]*)" does not exist')


def open_error(url: URL, err: BaseException) -> str:
    """Why the database at ``url`` cannot be opened, in one line the user can act on."""
    why = reason(err)
    missing = _PG_NO_DATABASE.search(why)
    if missing and url.get_backend_name() == "postgresql":
        server = f"{url.host or 'localhost'}:{url.port or 5432}"
        return (f"cannot open database {describe(url)!r}: it does not exist (the server at {server} "
                f"has no database {missing['name']!r}); create it first, e.g. "
                f"createdb -h {url.host or 'localhost'} -p {url.port or 5432}"
                f"{f' -U {url.username}' if url.username else ''} {missing['name']}")
    return f"cannot open database {describe(url)!r}: {why}"


def _ensure_wal(cursor: sqlite3.Cursor) -> None:
    """WAL: readers never block the writer, nor it them. It is a property of the file.

    Switching needs an exclusive lock and SQLite reports "database is locked" at once,
    without the busy handler, when several connections open a new file together (a
    search and `nas serve` started at the same time): wait for the one that switches.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # SQLAlchemy emits BEGIN itself (below): sqlite3's legacy mode would not begin a
        # transaction for SELECTs (reads would not see one snapshot) nor for DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _ensure_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A write takes the write lock up front (waiting up to busy_timeout): a deferred
        # transaction that reads first and then writes fails at once with "database is
        # locked" if another writer (Optuna's engine) committed in between.
        immediate = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# ----- retries ---------------------------------------------------------------------------
def is_transient(err: DBAPIError) -> bool:
    """A lost connection or a locked database: the same call may well succeed shortly."""
    if err.connection_invalidated:
        return True
    if not isinstance(err, OperationalError):
        return False
    if isinstance(err.orig, sqlite3.Error):
        # sqlite3 raises OperationalError for SQL mistakes too ("no such table").
        message = str(err.orig).lower()
        return "locked" in message or "busy" in message
    return True  # server restarting, connection refused or reset, serialization failure


class _Retrying(Protocol):
    retry_attempts: int
    retry_backoff_s: float

    def describe_url(self) -> str: ...


S = TypeVar("S", bound=_Retrying)
P = ParamSpec("P")
R = TypeVar("R")


def retrying(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Re-run a store method after a transient error, with exponential backoff.

    Safe only because every store method is one transaction that is idempotent: a retry
    after a commit whose acknowledgement was lost writes the same rows again, never more.
    """

    @functools.wraps(method)
    def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        attempt = 1
        while True:
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as err:
                if not is_transient(err):
                    raise
                if attempt >= self.retry_attempts:
                    raise StoreError(f"database {self.describe_url()!r}: {method.__name__} failed "
                                     f"after {attempt} attempts: {reason(err)}") from err
                delay = self.retry_backoff_s * 2 ** (attempt - 1)
                log.warning("%s: %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                            self.describe_url(), method.__name__, reason(err), delay,
                            attempt + 1, self.retry_attempts)
                time.sleep(delay)
                attempt += 1

    return wrapper
