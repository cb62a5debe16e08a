"""Followers: who chose which topics in a private chat with the bot.

Only what delivery needs is stored, and the README promises no more: a follower's chat id,
the topics (by slug) they chose and when, and the times of their last commands (for the
abuse limits). No names, no usernames, no text they typed. ``forget`` deletes every row
about a follower, the ledger's DM rows included.

A follower's chat is a destination like any other: the ledger keys its DMs by the chat id
(a private chat's id is the user's, a positive number), with the same claim, sent and
uncertain rules as channel posts.

The last update handled (``getUpdates`` offset) is kept in ``meta`` under ``UPDATE_OFFSET``,
committed in the transaction that records the update's effect, so a crash neither loses nor
repeats a command. So the functions that change rows open no transaction of their own: the
caller wraps one update's changes and ``commit_offset`` in one ``db.transaction()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from publisher.db import Database, upsert
from publisher.errors import PublisherError

UPDATE_OFFSET = "followers.update_offset"


class FollowerLimitReached(PublisherError):
    """``followers.max_subscribers`` followers exist already: a new one is turned away."""


def followers_schema(dialect: str) -> list[str]:
    del dialect  # the same SQL in SQLite and PostgreSQL
    return [
        """CREATE TABLE IF NOT EXISTS followers (
            chat_id TEXT PRIMARY KEY,
            joined_at DOUBLE PRECISION NOT NULL,
            last_command_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_latest_at DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE IF NOT EXISTS follower_topics (
            chat_id TEXT NOT NULL,
            slug TEXT NOT NULL,
            since DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (chat_id, slug)
        )""",
        "CREATE INDEX IF NOT EXISTS follower_topics_slug ON follower_topics (slug, since)",
    ]


@dataclass(frozen=True)
class Follower:
    chat_id: str
    joined_at: float
    topics: tuple[str, ...]  # slugs, sorted


def is_follower(db: Database, chat_id: str) -> bool:
    return db.execute("SELECT 1 FROM followers WHERE chat_id = ?", (chat_id,)).fetchone() \
        is not None


def get_follower(db: Database, chat_id: str) -> Follower | None:
    row = db.execute("SELECT joined_at FROM followers WHERE chat_id = ?", (chat_id,)).fetchone()
    if row is None:
        return None
    return Follower(chat_id, float(row[0]), topics_of(db, chat_id))


def topics_of(db: Database, chat_id: str) -> tuple[str, ...]:
    rows = db.execute("SELECT slug FROM follower_topics WHERE chat_id = ? ORDER BY slug",
                      (chat_id,)).fetchall()
    return tuple(row[0] for row in rows)


def follower_count(db: Database) -> int:
    return int(db.execute("SELECT COUNT(*) FROM followers").fetchone()[0])


def join(db: Database, chat_id: str, now: float, max_subscribers: int = 0) -> bool:
    """Make ``chat_id`` a follower (with no topics yet); True when it is new. Raises
    ``FollowerLimitReached`` when ``max_subscribers`` (0 = no limit) are there already.
    In a transaction: two instances must not both take the last place."""
    if is_follower(db, chat_id):
        return False
    db.lock_in_transaction("followers")
    if max_subscribers and follower_count(db) >= max_subscribers:
        raise FollowerLimitReached(f"{max_subscribers:,} followers already: no room for another")
    db.execute("INSERT INTO followers (chat_id, joined_at) VALUES (?, ?)", (chat_id, now))
    return True


def subscribe(db: Database, chat_id: str, slug: str, now: float,
              max_subscribers: int = 0) -> bool:
    """Follow one topic from ``now`` on (never its backlog); True when it is new."""
    join(db, chat_id, now, max_subscribers)
    if slug in topics_of(db, chat_id):
        return False
    db.execute("INSERT INTO follower_topics (chat_id, slug, since) VALUES (?, ?, ?)",
               (chat_id, slug, now))
    return True


def unsubscribe(db: Database, chat_id: str, slug: str) -> bool:
    """Stop following one topic; True when it was followed."""
    cursor = db.execute("DELETE FROM follower_topics WHERE chat_id = ? AND slug = ?",
                        (chat_id, slug))
    return cursor.rowcount > 0


def unsubscribe_all(db: Database, chat_id: str) -> int:
    """Stop following every topic (the follower stays, with none); how many were followed."""
    return db.execute("DELETE FROM follower_topics WHERE chat_id = ?", (chat_id,)).rowcount


def toggle(db: Database, chat_id: str, slug: str, now: float, max_subscribers: int = 0) -> bool:
    """Follow the topic if not followed, else stop; True when it is now followed."""
    if unsubscribe(db, chat_id, slug):
        return False
    subscribe(db, chat_id, slug, now, max_subscribers)
    return True


def forget(db: Database, chat_id: str) -> None:
    """Every row about this follower, gone: topics, the follower, its ledger rows (a DM
    already claimed elsewhere finds its row gone and records nothing)."""
    db.execute("DELETE FROM follower_topics WHERE chat_id = ?", (chat_id,))
    db.execute("DELETE FROM followers WHERE chat_id = ?", (chat_id,))
    db.execute("DELETE FROM deliveries WHERE chat_id = ?", (chat_id,))


def followers_of(db: Database, slugs: Sequence[str], since_before: float) -> list[str]:
    """The chats that followed any of these topics before ``since_before`` (an article's
    selection time: later followers never get it), each once, in a stable order."""
    if not slugs:
        return []
    marks = ", ".join("?" for _ in slugs)
    rows = db.execute(
        f"SELECT DISTINCT chat_id FROM follower_topics WHERE slug IN ({marks}) AND since <= ? "
        "ORDER BY chat_id", (*slugs, since_before)).fetchall()
    return [row[0] for row in rows]


def counts_by_topic(db: Database) -> dict[str, int]:
    rows = db.execute("SELECT slug, COUNT(*) FROM follower_topics GROUP BY slug ORDER BY slug")
    return {slug: int(count) for slug, count in rows}


def touch_command(db: Database, chat_id: str, now: float, *, latest: bool = False) -> None:
    """Remember when this follower last sent a command (and /latest), for the rate limits."""
    column = "last_latest_at" if latest else "last_command_at"
    db.execute(f"UPDATE followers SET {column} = ? WHERE chat_id = ?", (now, chat_id))


def last_commands(db: Database, chat_id: str) -> tuple[float, float]:
    """(last command, last /latest) of this follower; (0, 0) for a stranger."""
    row = db.execute("SELECT last_command_at, last_latest_at FROM followers WHERE chat_id = ?",
                     (chat_id,)).fetchone()
    return (float(row[0]), float(row[1])) if row else (0.0, 0.0)


def read_offset(db: Database) -> int:
    """The next ``getUpdates`` offset: one above the last update handled (0: none yet)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (UPDATE_OFFSET,)).fetchone()
    return int(row[0]) if row else 0


def commit_offset(db: Database, update_id: int) -> None:
    """Record ``update_id`` as handled; call inside the transaction of its effect."""
    statement = upsert("meta", ("key", "value"), ("key",))
    db.execute(statement, (UPDATE_OFFSET, str(update_id + 1)))


def remove_followers(db: Database, chat_ids: Iterable[str]) -> None:
    """Blocked or deactivated: forgotten like ``/stop``."""
    for chat_id in chat_ids:
        forget(db, chat_id)
