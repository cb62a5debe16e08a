"""Durable state: the delivery ledger, chat migrations, the send log for pacing, run history.

The ledger is the source of truth for what was posted. Each (article, chat) pair moves
pending -> sending -> sent | failed | uncertain, or is recorded as skipped. ``sending`` is
committed *before* the HTTP request leaves, so a crash mid-send is visible afterwards and is
never silently repeated.

Storage sits behind ``Store``; ``SQLiteStore`` is the implementation (WAL mode). A
single-instance lock (``flock`` on a file beside the database) keeps two processes from
posting from one state at the same time; the kernel releases it when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from publisher.catalog import SCHEMA as CATALOG_SCHEMA
from publisher.catalog import transaction
from publisher.errors import AlreadyRunning, StateError

SCHEMA_VERSION = 3  # 2: the article catalog (parse cache); 3: its file keys and plans

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
UNCERTAIN = "uncertain"
SKIPPED = "skipped"
STATES = (PENDING, SENDING, SENT, FAILED, UNCERTAIN, SKIPPED)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    article_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    title TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    published_at TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    message_id INTEGER,
    sent_to TEXT,
    sent_at TEXT,
    reason TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (article_id, chat_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (chat_id, state, published_at);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state);
CREATE TABLE IF NOT EXISTS chat_migrations (
    chat_id TEXT PRIMARY KEY,
    migrated_to TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS send_log (
    chat_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS send_log_chat ON send_log (chat_id, at);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    summary TEXT NOT NULL
);
"""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Delivery:
    article_id: str
    chat_id: str
    state: str
    title: str
    url: str
    published_at: str
    attempts: int
    message_id: int | None
    sent_to: str | None
    sent_at: str | None
    reason: str
    next_attempt_at: float
    updated_at: str


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A pair the ledger should know about; ``state`` is pending, or skipped when too old."""

    article_id: str
    chat_id: str
    title: str
    url: str
    published_at: str
    state: str = PENDING
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunRecord:
    kind: str
    started_at: str
    finished_at: str
    ok: bool
    summary: dict[str, Any]


class Store(Protocol):
    """What the publisher needs from its state storage."""

    def add_deliveries(self, items: Iterable[NewDelivery]) -> int: ...
    def recover_interrupted(self, resend_chats: Iterable[str]) -> int: ...
    def due(self, chat_id: str, now: float, limit: int | None) -> list[Delivery]: ...
    def pending_chats(self) -> list[str]: ...
    def mark_sending(self, article_id: str, chat_id: str) -> bool: ...
    def mark_sent(self, article_id: str, chat_id: str, message_id: int, sent_to: str) -> None: ...
    def mark_failed(self, article_id: str, chat_id: str, reason: str) -> None: ...
    def mark_uncertain(self, article_id: str, chat_id: str, reason: str) -> None: ...
    def mark_skipped(self, article_id: str, chat_id: str, reason: str) -> None: ...
    def mark_retry(self, article_id: str, chat_id: str, reason: str, not_before: float,
                   count_attempt: bool = True) -> None: ...
    def requeue(self, state: str, chat_id: str | None, article_ids: Sequence[str]) -> int: ...
    def migration_for(self, chat_id: str) -> str | None: ...
    def record_migration(self, chat_id: str, migrated_to: str) -> None: ...
    def log_send(self, chat_id: str, at: float) -> None: ...
    def sends_since(self, chat_id: str, since: float) -> list[float]: ...
    def record_run(self, run: RunRecord) -> None: ...
    def last_runs(self) -> dict[str, RunRecord]: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def deliveries(self, states: Sequence[str], limit: int = 20) -> list[Delivery]: ...
    def close(self) -> None: ...


def sqlite_path(url: str) -> Path:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise StateError(
            f"state.url {url!r} is not supported yet: use sqlite:///PATH"
        )
    return Path(url[len(prefix):])


class SQLiteStore:
    """The ledger in one SQLite file, WAL mode, every change committed at once."""

    def __init__(self, path: Path, *, readonly: bool = False, threaded: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=not threaded
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                # threaded: used from worker threads, one at a time (the caller serialises).
                self._db = sqlite3.connect(path, timeout=30, check_same_thread=not threaded)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._db.isolation_level = None  # explicit transactions only
        if not readonly:
            self._migrate()

    @classmethod
    def open(cls, url: str, *, readonly: bool = False, threaded: bool = False) -> SQLiteStore:
        return cls(sqlite_path(url), readonly=readonly, threaded=threaded)

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for the catalog that lives in the same database."""
        return self._db

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction():
                self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {self.path} is unusable: {exc}") from None

    def _create_schema(self) -> None:
        self._drop_outdated_catalog()
        for statement in (_SCHEMA + CATALOG_SCHEMA).split(";"):
            if statement.strip():
                self._db.execute(statement)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None or int(row["value"]) < SCHEMA_VERSION:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
        elif int(row["value"]) > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema {row['value']}, newer than this "
                f"publisher understands ({SCHEMA_VERSION}); upgrade the publisher"
            )

    def _drop_outdated_catalog(self) -> None:
        """The catalog is a cache: a layout from an older version is dropped and rebuilt."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(catalog)")}
        if columns and not {"file_key", "planned"} <= columns:
            self._db.execute("DROP TABLE IF EXISTS catalog")
            self._db.execute("DROP TABLE IF EXISTS catalog_slugs")
            self._db.execute("DROP TABLE IF EXISTS catalog_topics")
            self._db.execute("DELETE FROM meta WHERE key LIKE 'catalog%' OR key LIKE '%digest'")

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._transaction():
            return self._db.execute(sql, params).rowcount

    # -- ledger ------------------------------------------------------------------------------

    def add_deliveries(self, items: Iterable[NewDelivery]) -> int:
        """Insert pairs the ledger has not seen; known pairs are left exactly as they are."""
        now = utc_now_iso()
        rows = [
            (i.article_id, i.chat_id, i.state, i.title, i.url, i.published_at, i.reason, now, now)
            for i in items
        ]
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO deliveries (article_id, chat_id, state, title, url, "
                "published_at, reason, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return self._db.total_changes - before

    def recover_interrupted(self, resend_chats: Iterable[str]) -> int:
        """Rows left in ``sending`` by a crash: uncertain, or pending for at-least-once chats."""
        resend = list(resend_chats)
        marks = ",".join("?" * len(resend)) or "''"
        now = utc_now_iso()
        reason = "interrupted while sending: it may or may not have been posted"
        with self._transaction():
            requeued = self._db.execute(
                f"UPDATE deliveries SET state='pending', reason=?, updated_at=? "
                f"WHERE state='sending' AND chat_id IN ({marks})",
                (reason, now, *resend),
            ).rowcount
            held = self._db.execute(
                "UPDATE deliveries SET state='uncertain', reason=?, updated_at=? "
                "WHERE state='sending'",
                (reason, now),
            ).rowcount
        return requeued + held

    def due(self, chat_id: str, now: float, limit: int | None) -> list[Delivery]:
        """Pending pairs of a chat whose backoff has passed, oldest article first."""
        sql = (
            "SELECT * FROM deliveries WHERE chat_id=? AND state='pending' AND next_attempt_at<=? "
            "ORDER BY published_at, article_id"
        )
        params: list[Any] = [chat_id, now]
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [_delivery(row) for row in self._db.execute(sql, params)]

    def pending_chats(self) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT chat_id FROM deliveries WHERE state='pending' ORDER BY chat_id"
        )
        return [row["chat_id"] for row in rows]

    def mark_sending(self, article_id: str, chat_id: str) -> bool:
        """Claim a pending pair for one send (committed before the request leaves).

        False when the pair is no longer pending: someone else has already dealt with it.
        """
        changed = self._write(
            "UPDATE deliveries SET state='sending', attempts=attempts+1, updated_at=? "
            "WHERE article_id=? AND chat_id=? AND state='pending'",
            (utc_now_iso(), article_id, chat_id),
        )
        return changed == 1

    def mark_sent(self, article_id: str, chat_id: str, message_id: int, sent_to: str) -> None:
        self._set(
            article_id, chat_id, "state='sent', message_id=?, sent_to=?, sent_at=?, reason=''",
            (message_id, sent_to, utc_now_iso()),
        )

    def mark_failed(self, article_id: str, chat_id: str, reason: str) -> None:
        self._set(article_id, chat_id, "state='failed', reason=?", (reason,))

    def mark_uncertain(self, article_id: str, chat_id: str, reason: str) -> None:
        self._set(article_id, chat_id, "state='uncertain', reason=?", (reason,))

    def mark_skipped(self, article_id: str, chat_id: str, reason: str) -> None:
        self._set(article_id, chat_id, "state='skipped', reason=?", (reason,))

    def mark_retry(self, article_id: str, chat_id: str, reason: str, not_before: float,
                   count_attempt: bool = True) -> None:
        """Back to pending, not to be tried before ``not_before`` (a Unix time)."""
        undo = "" if count_attempt else ", attempts=max(attempts-1, 0)"
        self._set(
            article_id, chat_id, f"state='pending', reason=?, next_attempt_at=?{undo}",
            (reason, not_before),
        )

    def _set(self, article_id: str, chat_id: str, assignments: str,
             params: Sequence[Any] = ()) -> None:
        changed = self._write(
            f"UPDATE deliveries SET {assignments}, updated_at=? WHERE article_id=? AND chat_id=?",
            (*params, utc_now_iso(), article_id, chat_id),
        )
        if changed != 1:
            raise StateError(f"ledger has no entry for {article_id} in {chat_id}")

    def requeue(self, state: str, chat_id: str | None, article_ids: Sequence[str]) -> int:
        """Put pairs in ``state`` (uncertain or failed) back to pending, e.g. after a look."""
        sql = (
            "UPDATE deliveries SET state='pending', next_attempt_at=0, attempts=0, "
            "reason='requeued by the operator', updated_at=? WHERE state=?"
        )
        params: list[Any] = [utc_now_iso(), state]
        if chat_id:
            sql += " AND chat_id=?"
            params.append(chat_id)
        if article_ids:
            sql += f" AND article_id IN ({','.join('?' * len(article_ids))})"
            params.extend(article_ids)
        return self._write(sql, params)

    # -- chats and pacing ---------------------------------------------------------------------

    def migration_for(self, chat_id: str) -> str | None:
        row = self._db.execute(
            "SELECT migrated_to FROM chat_migrations WHERE chat_id=?", (chat_id,)
        ).fetchone()
        return row["migrated_to"] if row else None

    def record_migration(self, chat_id: str, migrated_to: str) -> None:
        self._write(
            "INSERT INTO chat_migrations (chat_id, migrated_to, at) VALUES (?,?,?) "
            "ON CONFLICT (chat_id) DO UPDATE SET migrated_to=excluded.migrated_to, at=excluded.at",
            (chat_id, migrated_to, utc_now_iso()),
        )

    def log_send(self, chat_id: str, at: float) -> None:
        with self._transaction():
            self._db.execute("INSERT INTO send_log (chat_id, at) VALUES (?,?)", (chat_id, at))
            self._db.execute("DELETE FROM send_log WHERE at < ?", (at - 3600,))

    def sends_since(self, chat_id: str, since: float) -> list[float]:
        rows = self._db.execute(
            "SELECT at FROM send_log WHERE chat_id=? AND at>=? ORDER BY at", (chat_id, since)
        )
        return [row["at"] for row in rows]

    # -- runs and reporting -------------------------------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        self._write(
            "INSERT INTO runs (kind, started_at, finished_at, ok, summary) VALUES (?,?,?,?,?)",
            (run.kind, run.started_at, run.finished_at, int(run.ok), json.dumps(run.summary)),
        )
        self._write(
            "DELETE FROM runs WHERE kind=? AND id NOT IN "
            "(SELECT id FROM runs WHERE kind=? ORDER BY id DESC LIMIT 100)",
            (run.kind, run.kind),
        )

    def last_runs(self) -> dict[str, RunRecord]:
        rows = self._db.execute(
            "SELECT * FROM runs WHERE id IN (SELECT max(id) FROM runs GROUP BY kind) ORDER BY kind"
        )
        return {
            row["kind"]: RunRecord(
                kind=row["kind"], started_at=row["started_at"], finished_at=row["finished_at"],
                ok=bool(row["ok"]), summary=json.loads(row["summary"]),
            )
            for row in rows
        }

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        rows = self._db.execute(
            "SELECT chat_id, state, count(*) AS n FROM deliveries GROUP BY chat_id, state "
            "ORDER BY chat_id, state"
        )
        for row in rows:
            counts.setdefault(row["chat_id"], {})[row["state"]] = row["n"]
        return counts

    def deliveries(self, states: Sequence[str], limit: int = 20) -> list[Delivery]:
        rows = self._db.execute(
            f"SELECT * FROM deliveries WHERE state IN ({','.join('?' * len(states))}) "
            "ORDER BY updated_at DESC, article_id LIMIT ?",
            (*states, limit),
        )
        return [_delivery(row) for row in rows]

    def known_pairs(self) -> set[tuple[str, str]]:
        return {
            (row["article_id"], row["chat_id"])
            for row in self._db.execute("SELECT article_id, chat_id FROM deliveries")
        }

    def close(self) -> None:
        self._db.close()


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(**{name: row[name] for name in Delivery.__slots__})


def open_store(url: str, *, readonly: bool = False, threaded: bool = False) -> SQLiteStore:
    return SQLiteStore.open(url, readonly=readonly, threaded=threaded)


class InstanceLock:
    """An exclusive, non-blocking lock beside the database, released by the kernel on exit."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url).with_name(sqlite_path(url).name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another publisher process is using this state ({self.path}); "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
