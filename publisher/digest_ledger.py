"""Digests in the ledger: each article in exactly one digest per destination, no digest twice.

A digest is a claim of many pairs at once. In one transaction the push inserts the digest's
row (``digests``: the chat, the window it is for, the articles it lists, ``sending``, the
claimer and a lease) and claims every listed pair still pending (``sending``, as a post's
claim); a second claim of the same window (another instance, a later push) inserts nothing
and claims nothing. Then the one message leaves, and the outcome is recorded on the row and
on every pair alike: ``sent`` (with the message id), ``uncertain``, ``failed``, or back to
``pending`` when it provably did not leave (the row is then deleted: that window may be
tried again). A process killed mid-send leaves the pairs ``sending``: the next push finds
them interrupted, as any post (``uncertain``; not sent again), and the row ``uncertain``.

The ``alerts`` table is here too: when each operator alert cause was last sent
(``alerts.py``).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from publisher.db import IN_BATCH, Database
from publisher.state import DELIVERY_COLUMNS, PENDING, SENDING, SENT, Delivery, utc_now_iso
from publisher.text import as_utc

DIGEST_STATES = (SENDING, SENT, "uncertain", "failed")
KEEP_DIGESTS = timedelta(days=90)


def timing_schema(dialect: str) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS digests (
            chat_id TEXT NOT NULL,
            fire_at TEXT NOT NULL,
            state TEXT NOT NULL,
            items TEXT NOT NULL,
            message_id BIGINT,
            reason TEXT NOT NULL DEFAULT '',
            claimed_by TEXT,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (chat_id, fire_at)
        )""",
        "CREATE TABLE IF NOT EXISTS alerts (cause TEXT PRIMARY KEY, "
        "sent_at DOUBLE PRECISION NOT NULL)",
    ]


# The connections whose tables this process made sure of.
_ENSURED: weakref.WeakSet[Database] = weakref.WeakSet()


def ensure_timing_tables(db: Database) -> None:
    """Create ``digests`` and ``alerts`` where missing, once per connection: a state of the
    current schema version made before they existed gets them when first written to (they
    are new tables, no migration of anything there)."""
    if db in _ENSURED:
        return
    if not has_table(db, "digests") or not has_table(db, "alerts"):
        with db.transaction():
            db.lock_in_transaction("schema")
            for statement in timing_schema(db.dialect):
                db.execute(statement)
    _ENSURED.add(db)


@dataclass(frozen=True)
class DigestRecord:
    chat_id: str
    fire_at: str
    state: str
    items: tuple[str, ...]
    message_id: int | None
    reason: str
    updated_at: str


def has_table(db: Database, name: str = "digests") -> bool:
    if db.dialect == "sqlite":
        return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                          (name,)).fetchone() is not None
    return bool(db.execute("SELECT to_regclass(?)", (name,)).fetchone()[0])


def digest_since(db: Database, chat_id: str) -> datetime | None:
    """The window of the chat's last digest (sent, or maybe sent), None without one."""
    if not has_table(db):  # a read-only state of an older version
        return None
    row = db.execute("SELECT max(fire_at) FROM digests WHERE chat_id=?", (chat_id,)).fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None


def claim_digest(db: Database, chat_id: str, fire_at: str, article_ids: Sequence[str],
                 now: float, owner: str, lease_until: float) -> list[Delivery]:
    """Claim the digest of ``chat_id`` for window ``fire_at``: its row and each listed pair
    still pending and due, in one transaction; [] when the window is taken (or nothing of
    it is pending any more: then no row is left)."""
    ensure_timing_tables(db)
    stamp = utc_now_iso()
    with db.transaction():
        inserted = db.execute(
            "INSERT INTO digests (chat_id, fire_at, state, items, claimed_by, lease_until, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT (chat_id, fire_at) DO NOTHING",
            (chat_id, fire_at, SENDING, "[]", owner, lease_until, stamp, stamp),
        ).rowcount
        if not inserted:
            return []
        claimed = [Delivery(*row) for row in _rows_in(
            db, f"UPDATE deliveries SET state='sending', attempts=attempts+1, claimed_by=?, "
                f"lease_until=?, updated_at=? WHERE chat_id=? AND state='pending' "
                f"AND next_attempt_at<=? AND article_id IN ({{}}) RETURNING {DELIVERY_COLUMNS}",
            sorted(set(article_ids)), (owner, lease_until, stamp, chat_id, now))]
        if not claimed:
            db.execute("DELETE FROM digests WHERE chat_id=? AND fire_at=?", (chat_id, fire_at))
            return []
        ordered = sorted(claimed, key=lambda item: (item.published_at, item.article_id))
        db.execute("UPDATE digests SET items=? WHERE chat_id=? AND fire_at=?",
                   (json.dumps([item.article_id for item in ordered]), chat_id, fire_at))
        # The ledger's rows say what each article became; the digests are kept a while
        # for ``publisher status`` (the newest of a chat always: its next window's start).
        kept_from = (datetime.fromisoformat(fire_at) - KEEP_DIGESTS).isoformat()
        db.execute("DELETE FROM digests WHERE chat_id=? AND fire_at<? AND state<>'sending'",
                   (chat_id, kept_from))
    return ordered


def settle_digest(db: Database, chat_id: str, fire_at: str, owner: str, state: str,
                  reason: str = "", *, message_id: int | None = None,
                  not_before: float = 0.0) -> int:
    """Record a claimed digest's outcome on its row and on the pairs it holds (those still
    its claim); ``pending``: the pairs go back and the row goes (the window may be tried
    again). How many pairs it settled."""
    stamp = utc_now_iso()
    with db.transaction():
        row = db.execute("SELECT items FROM digests WHERE chat_id=? AND fire_at=? "
                         "AND claimed_by=?", (chat_id, fire_at, owner)).fetchone()
        if row is None:
            return 0
        items = json.loads(row[0])
        if state == PENDING:
            assignments = ("state='pending', claimed_by=NULL, reason=?, next_attempt_at=?, "
                           "attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END")
            values: tuple[object, ...] = (reason, not_before)
            db.execute("DELETE FROM digests WHERE chat_id=? AND fire_at=?", (chat_id, fire_at))
        else:
            assignments = "state=?, reason=?, message_id=?, sent_to=?, sent_at=?"
            values = (state, reason, message_id, chat_id if state == SENT else None,
                      stamp if state == SENT else None)
            db.execute("UPDATE digests SET state=?, reason=?, message_id=?, updated_at=?, "
                       "claimed_by=NULL WHERE chat_id=? AND fire_at=?",
                       (state, reason, message_id, stamp, chat_id, fire_at))
        changed = sum(1 for _ in _rows_in(
            db, f"UPDATE deliveries SET {assignments}, updated_at=? WHERE chat_id=? "
                "AND state='sending' AND claimed_by=? AND article_id IN ({}) "
                "RETURNING article_id",
            items, (*values, stamp, chat_id, owner)))
    return changed


def drop_from_digest(db: Database, chat_id: str, fire_at: str, article_ids: Sequence[str]
                     ) -> None:
    """Take articles the push settled otherwise (skipped, orphaned) off a claimed digest."""
    row = db.execute("SELECT items FROM digests WHERE chat_id=? AND fire_at=?",
                     (chat_id, fire_at)).fetchone()
    if row is None:
        return
    dropped = set(article_ids)
    kept = [item for item in json.loads(row[0]) if item not in dropped]
    with db.transaction():
        if kept:
            db.execute("UPDATE digests SET items=? WHERE chat_id=? AND fire_at=?",
                       (json.dumps(kept), chat_id, fire_at))
        else:
            db.execute("DELETE FROM digests WHERE chat_id=? AND fire_at=?", (chat_id, fire_at))


def _rows_in(db: Database, sql: str, values: Sequence[str],
             params: Sequence[object]) -> Iterator[tuple[Any, ...]]:
    """``db.rows_in`` with ``params`` before the ``IN ({})`` list's values."""
    for start in range(0, len(values), IN_BATCH):
        batch = values[start:start + IN_BATCH]
        yield from db.execute(sql.format(",".join("?" * len(batch))),
                              (*params, *batch)).fetchall()


def recover_digests(db: Database, shared: bool, now: float) -> int:
    """Digests a dead process left ``sending``: ``uncertain`` (their pairs are recovered
    as any interrupted send)."""
    if not has_table(db) or db.execute(
            "SELECT 1 FROM digests WHERE state='sending' LIMIT 1").fetchone() is None:
        return 0  # the common case, without a write transaction
    stale = "state='sending'" + (" AND lease_until < ?" if shared else "")
    with db.transaction():
        return db.execute(
            f"UPDATE digests SET state='uncertain', claimed_by=NULL, reason=?, updated_at=? "
            f"WHERE {stale}",
            ("interrupted while sending: it may or may not have been posted", utc_now_iso(),
             *((now,) if shared else ())),
        ).rowcount


def recent_digests(db: Database, limit: int = 20) -> list[DigestRecord]:
    """The latest digests, newest first (for ``publisher status``)."""
    if not has_table(db):
        return []
    rows = db.execute(
        "SELECT chat_id, fire_at, state, items, message_id, reason, updated_at FROM digests "
        "ORDER BY fire_at DESC, chat_id LIMIT ?", (limit,))
    return [DigestRecord(chat, fire, state, tuple(json.loads(items)), message, reason, stamp)
            for chat, fire, state, items, message, reason, stamp in rows]


def waiting_since(db: Database, chat_id: str) -> datetime | None:
    """What ``plan`` counts a digest destination's wait from: its last digest, else the
    publication of its oldest pending article."""
    last = digest_since(db, chat_id)
    if last is not None:
        return last
    row = db.execute("SELECT min(published_at) FROM deliveries WHERE chat_id=? "
                     "AND state='pending'", (chat_id,)).fetchone()
    return as_utc(datetime.fromisoformat(row[0])) if row and row[0] else None
