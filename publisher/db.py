"""One small SQL interface over SQLite (the default) and PostgreSQL (psycopg 3).

The rest of the publisher writes its SQL once, with ``?`` placeholders and the subset both
engines share (``INSERT ... ON CONFLICT``, window functions, ``RETURNING``); the few places
that differ ask the database for its dialect. Cross-process mutual exclusion is the
engine's own: ``flock`` beside a SQLite file, advisory locks in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from publisher.errors import Interrupted as Interrupted
from publisher.errors import StateError

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
LOCK_POLL_SECONDS = 0.1
# libpq also takes ?password=...: the value of that query parameter
_QUERY_PASSWORD = re.compile(r"(?:(?<=^password=)|(?<=&password=))[^&]*")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...  # read-only in sqlite3's and psycopg's cursors

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """A connection in autocommit mode; ``transaction()`` groups statements."""

    dialect: str  # "sqlite" or "postgresql"
    shared: bool  # True: several publisher processes may use this state at once
    description: str  # where it is, safe to print (no password)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int: ...
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def exclusive(self, name: str, stop: threading.Event | None = None
                  ) -> contextlib.AbstractContextManager[None]: ...
    def lock_in_transaction(self, name: str) -> None: ...
    def close(self) -> None: ...


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def sqlite_path(url: str) -> Path:
    if not url.startswith(SQLITE_PREFIX):
        raise StateError(f"state.url {redact_url(url)!r} is not a sqlite:///PATH URL")
    return Path(url[len(SQLITE_PREFIX):])


def url_passwords(url: str) -> list[str]:
    """Every password a database URL carries: after the user name, or as a ``password``
    query parameter (both valid for libpq), as written and percent-decoded."""
    parts = urlsplit(url)
    found = [parts.password or "", *_QUERY_PASSWORD.findall(parts.query)]
    variants = {text for password in found for text in (password, unquote(password)) if text}
    return sorted(variants, key=len, reverse=True)


def redact_url(url: str) -> str:
    """The URL with every password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc[2]}")
    query = _QUERY_PASSWORD.sub("***", parts.query)
    return urlunsplit(parts._replace(query=query))


def connect(url: str, *, readonly: bool = False, threaded: bool = False) -> Database:
    if is_postgres_url(url):
        from publisher.logs import add_secret

        for password in url_passwords(url):  # a password in the URL never reaches a log line
            add_secret(password)
        return PostgresDatabase(url)
    return SQLiteDatabase(sqlite_path(url), readonly=readonly, threaded=threaded)


def upsert(table: str, columns: Sequence[str], keys: Sequence[str],
           also: str = "") -> str:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` setting every other column (both engines).

    ``also``: extra assignments for the update, e.g. resetting derived columns.
    """
    updates = [f"{column} = excluded.{column}" for column in columns if column not in keys]
    if also:
        updates.append(also)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
    )


# -- SQLite -----------------------------------------------------------------------------------


IN_BATCH = 500  # values per IN (...) list: well within both engines' parameter limits


def rows_in(db: Database, sql: str, values: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql``, a query with one ``IN ({})``, for every one of ``values``: asked
    ``IN_BATCH`` at a time."""
    for start in range(0, len(values), IN_BATCH):
        batch = values[start : start + IN_BATCH]
        yield from db.execute(sql.format(",".join("?" * len(batch))), batch)


class SQLiteDatabase:
    dialect = "sqlite"
    shared = False

    def __init__(self, path: Path, *, readonly: bool = False, threaded: bool = False) -> None:
        import sqlite3

        self.path = path
        self.description = str(path)
        self._errors = sqlite3.Error
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=not threaded
                )
            else:
                require_state_folder(path)
                # threaded: used from worker threads, one at a time (the caller serialises).
                self._db = sqlite3.connect(path, timeout=30, check_same_thread=not threaded)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open state database {path}: {exc}{folder_problem(path)}"
                             ) from None
        self._db.isolation_level = None  # explicit transactions only
        if readonly:
            try:  # SQLite opens lazily: a WAL database in a read-only folder fails here
                self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            except sqlite3.DatabaseError as exc:
                self._db.close()
                raise StateError(
                    f"cannot read state database {path}: {exc}{folder_problem(path)}"
                ) from None
        else:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit is on disk before it returns. With NORMAL, a power cut may
                # roll back the last commits, and a send recorded as under way would be
                # sent again; a commit costs one fsync more, and few are made.
                self._db.execute("PRAGMA synchronous=FULL")
                # Up to 64 MiB of pages in memory (allocated only as they are read): a cold
                # sync inserts into several indexes at random places, and re-reading evicted
                # pages cost more than parsing.
                self._db.execute("PRAGMA cache_size=-65536")
            except sqlite3.DatabaseError as exc:
                self._db.close()
                raise StateError(
                    f"state database {path} is unusable: {exc}{folder_problem(path)}"
                ) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self._db.execute(sql, params)
        except self._errors as exc:
            raise StateError(f"state database {self.path}: {exc}") from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        try:
            return self._db.executemany(sql, rows).rowcount
        except self._errors as exc:
            raise StateError(f"state database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")  # one writer at a time: the engine serialises
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    @contextlib.contextmanager
    def exclusive(self, name: str, stop: threading.Event | None = None) -> Iterator[None]:
        """A lock file beside the database; the kernel releases it if the process dies."""
        lock_path = f"{self.path}.{name}.lock"
        try:
            handle = open(lock_path, "a+b")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise StateError(
                f"cannot open the lock file {lock_path}: {exc.strerror or exc}"
                f"{folder_problem(self.path)}"
            ) from None
        with handle:
            _poll(lambda: _try_flock(handle.fileno()), stop, name)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lock_in_transaction(self, name: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already admits one writer at a time."""

    def close(self) -> None:
        self._db.close()


def require_state_folder(database: Path) -> None:
    """The folder of a SQLite state must exist: it is never created, since a typo in it would
    start a new, empty ledger (and every selected article would be posted again)."""
    if not database.parent.is_dir():
        raise StateError(
            f"config key state.url: the folder {database.parent} does not exist; create it "
            "if this is where the ledger is to be (a new folder means a new, empty ledger)"
        )


def folder_problem(database: Path) -> str:
    """Why a SQLite database's folder may be the trouble, as a clause to append; ""."""
    folder = database.parent
    if not folder.is_dir():
        return f" (the folder {folder} does not exist)"
    if not os.access(folder, os.W_OK):
        return (f" (the state folder {folder} is read-only: SQLite writes its -wal, -shm and "
                "lock files beside the database; make it writable or change state.url)")
    return ""


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _poll(attempt: Any, stop: threading.Event | None, name: str) -> None:
    while not attempt():
        if stop is not None:
            if stop.wait(LOCK_POLL_SECONDS):
                raise Interrupted(f"stopped while waiting for the {name} lock")
        else:
            time.sleep(LOCK_POLL_SECONDS)


# -- PostgreSQL -------------------------------------------------------------------------------


class PostgresDatabase:
    """psycopg 3 in autocommit mode; ``?`` placeholders become ``%s``.

    A connection lost between transactions (a server restart during months of service) is
    opened again at the next statement; the statement that met the loss fails as a
    ``StateError`` and the job that ran it is retried by its caller.
    """

    dialect = "postgresql"
    shared = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise StateError(
                "state.url is a PostgreSQL URL but psycopg is not installed: "
                "pip install 'publisher[postgresql]'"
            ) from None
        self._psycopg = psycopg
        self._url = url
        self.description = redact_url(url)
        self._depth = 0  # open transaction blocks
        self._sql: dict[str, str] = {}
        self._keys: dict[str, int] = {}  # advisory lock keys by name (the schema is fixed)
        self._session_locks = 0  # advisory locks held by this connection's session
        self._db = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the state database {self.description}: {_first_line(exc)}"
            ) from None

    def _connection(self) -> Any:
        if self._db.closed or self._db.broken:
            if self._depth or self._session_locks:
                # A new session would not hold what this one held: fail, never carry on.
                raise StateError(f"lost the connection to the state database {self.description}")
            self._db = self._connect()
        return self._db

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        connection = self._connection()
        try:
            return connection.execute(self._translate(sql), tuple(params))  # type: ignore[no-any-return]
        except self._psycopg.OperationalError as exc:
            raise StateError(f"state database {self.description}: {_first_line(exc)}") from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        connection = self._connection()
        try:
            with connection.cursor() as cursor:
                cursor.executemany(self._translate(sql), rows)
                return max(cursor.rowcount, 0)
        except self._psycopg.OperationalError as exc:
            raise StateError(f"state database {self.description}: {_first_line(exc)}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        connection = self._connection()
        self._depth += 1
        try:
            with connection.transaction():
                yield
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def exclusive(self, name: str, stop: threading.Event | None = None) -> Iterator[None]:
        """A session advisory lock: held by this connection, released if it dies."""
        key = self._lock_key(name)
        _poll(
            lambda: bool(self.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]),
            stop, name,
        )
        self._session_locks += 1
        try:
            yield
        finally:
            self._session_locks -= 1
            if not (self._db.closed or self._db.broken):
                self.execute("SELECT pg_advisory_unlock(?)", (key,))

    def lock_in_transaction(self, name: str) -> None:
        """Wait for and take a lock released when the current transaction ends."""
        self.execute("SELECT pg_advisory_xact_lock(?)", (self._lock_key(name),))

    def _lock_key(self, name: str) -> int:
        # Keyed by schema too, so publishers in different schemas never wait for each other.
        key = self._keys.get(name)
        if key is None:
            row = self.execute(
                "SELECT hashtextextended(current_schema() || ':publisher:' || ?, 0)", (name,)
            ).fetchone()
            key = self._keys[name] = int(row[0])
        return key

    def close(self) -> None:
        self._db.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
