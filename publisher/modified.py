"""When each article's record last changed, for the feeds' Atom ``<updated>`` and JSON Feed
``date_modified`` (its post on Telegram is edited at the same change: ``publisher.edits``).

The feed writer keeps, per article id, the digest of the content it last wrote and when that
content changed (``entry_changes``). An article first seen is not "modified" (its entry says
its publication date, as before); a later build that finds other content records that
moment. A change the entry does not show (a moved file, its quality) is none. Feeds stay a
function of the state: nothing here is "now" unless the content changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime

from publisher.db import Database
from publisher.models import Article


def changes_schema(dialect: str) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS entry_changes (
            article_id TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            changed_us BIGINT NOT NULL DEFAULT 0
        )""",
    ]


def content_digest(article: Article) -> str:
    """Of what its feed entry shows: a change nobody sees there (quality, heat, the file's
    path) does not update it."""
    from publisher.feeds.entries import make_entry

    return hashlib.sha256(repr(make_entry(article)).encode()).hexdigest()[:16]


def modified_times(db: Database, articles: Iterable[Article], now: datetime
                   ) -> dict[str, datetime]:
    """Of these articles, those modified since first seen: id -> when (whole seconds, UTC).
    Records what is new or changed (inside the feed writer's lock)."""
    wanted = {article.id: content_digest(article) for article in articles}
    known: dict[str, tuple[str, int]] = {}
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = db.execute("SELECT article_id, digest, changed_us FROM entry_changes "
                          f"WHERE article_id IN ({','.join('?' * len(chunk))})", chunk)
        known.update({str(row[0]): (str(row[1]), int(row[2])) for row in rows})
    moment = int(now.astimezone(UTC).replace(microsecond=0).timestamp()) * 1_000_000
    new = [(article_id, digest, 0) for article_id, digest in wanted.items()
           if article_id not in known]
    changed = [(digest, moment, article_id) for article_id, digest in wanted.items()
               if article_id in known and known[article_id][0] != digest]
    with db.transaction():
        if new:
            db.executemany("INSERT INTO entry_changes (article_id, digest, changed_us) "
                           "VALUES (?, ?, ?) ON CONFLICT (article_id) DO NOTHING", new)
        if changed:
            db.executemany("UPDATE entry_changes SET digest = ?, changed_us = ? "
                           "WHERE article_id = ?", changed)
    times = {article_id: changed_us for article_id, (_digest, changed_us) in known.items()}
    times.update({article_id: moment for _digest, moment, article_id in changed})
    return {article_id: datetime.fromtimestamp(us / 1_000_000, UTC)
            for article_id, us in times.items() if us}
