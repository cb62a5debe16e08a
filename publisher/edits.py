"""Posts that follow their article: what a sent post was, and whether it needs an edit.

At each send the ledger keeps the post's kind ("photo" or "text"), the digests of its
rendering (caption/text, photo URL, keyboard: ``Rendering``) and the digest of the article
record it was rendered from (``codec.digest_of``). A post is edited only when its ARTICLE
changed since (another record digest) and the new rendering differs: a template or config
change alone never mass-edits the archive. Rows from before schema 10 have no rendering and
are never edited. The plan decides (``plan.ActionKind.EDIT``), the dispatcher executes
(``edit_post``): caption or text, media (the photo changed), or only the keyboard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from publisher.codec import digest_of
from publisher.config import Config
from publisher.db import Database
from publisher.errors import RenderError
from publisher.messages import Message
from publisher.models import Article, Image
from publisher.state import EDIT_COLUMNS, GONE, LEDGER_COLUMNS, SENT, STATES, ledger_schema
from publisher.text import as_utc

PHOTO = "photo"
TEXT = "text"
# What an edit changes, in the order the dispatcher calls them.
MEDIA = "media"  # editMessageMedia: the photo (with caption and keyboard)
BODY = "body"  # editMessageCaption / editMessageText (with the keyboard)
MARKUP = "markup"  # editMessageReplyMarkup: only the buttons


@dataclass(frozen=True, slots=True)
class Rendering:
    """A post as Telegram shows it, in digests."""

    kind: str  # PHOTO or TEXT
    photo_url: str  # "" for a text post
    body: str  # digest of the caption/text (and a text post's preview link)
    markup: str  # digest of the keyboard

    def to_json(self) -> str:
        return json.dumps([self.photo_url, self.body, self.markup])

    @classmethod
    def from_row(cls, kind: str, stored: str) -> Rendering:
        photo_url, body, markup = json.loads(stored)
        return cls(kind, photo_url, body, markup)


@dataclass(frozen=True, slots=True)
class SentPost:
    """A sent post the ledger can edit."""

    article_id: str
    chat_id: str
    message_id: int
    sent_at: str
    rendering: Rendering
    article_digest: str
    title: str  # of the article as last sent or edited


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def rendering_of(message: Message, kind: str) -> Rendering:
    """The rendering of ``message`` sent as ``kind`` (a refused photo goes as text)."""
    markup = _digest(json.dumps([[(b.text, b.url) for b in row] for row in message.buttons]))
    if kind == PHOTO and message.photo_url:
        return Rendering(PHOTO, message.photo_url, _digest(message.html), markup)
    return Rendering(TEXT, "", _digest(message.text_html, message.preview_url), markup)


def keeping_photo(article: Article, photo_url: str) -> Article:
    """A photo post whose article lost its image keeps its last photo."""
    return replace(article, images=(Image(photo_url),))


def changes(old: Rendering, new: Rendering) -> str:
    """What an edit must change to turn ``old`` into ``new``; "" when nothing."""
    if old.kind == PHOTO and new.photo_url and new.photo_url != old.photo_url:
        return MEDIA
    if new.body != old.body:
        return BODY
    if new.markup != old.markup:
        return MARKUP
    return ""


def describe(post: SentPost, article: Article, change: str) -> str:
    """What changed, for a reader of the plan: "photo", "title", "text" or "buttons"."""
    if change == MEDIA:
        return "photo"
    if change == BODY:
        return "title" if article.title != post.title else "text"
    return "buttons"


def too_old(post: SentPost, max_age_hours: float, now: datetime) -> bool:
    """Older than ``telegram.edit_max_age_hours`` (0: no limit): left as it is."""
    if not max_age_hours or not post.sent_at:
        return bool(max_age_hours) and not post.sent_at
    return as_utc(datetime.fromisoformat(post.sent_at)) < now - timedelta(hours=max_age_hours)


# -- the ledger's side ---------------------------------------------------------------------------


_SENT_POSTS = (
    "SELECT article_id, chat_id, message_id, sent_at, kind, rendered, article_digest, title "
    "FROM deliveries WHERE state = 'sent' AND rendered IS NOT NULL AND message_id IS NOT NULL"
)


def _post(row: tuple[object, ...]) -> SentPost:
    article_id, chat_id, message_id, sent_at, kind, rendered, digest, title = row
    return SentPost(str(article_id), str(chat_id), int(str(message_id)), str(sent_at or ""),
                    Rendering.from_row(str(kind), str(rendered)), str(digest or ""),
                    str(title or ""))


def sent_posts(db: Database, article_ids: Iterable[str]) -> dict[tuple[str, str], SentPost]:
    """The editable sent posts of these articles, by (article, chat)."""
    found: dict[tuple[str, str], SentPost] = {}
    ids = list(dict.fromkeys(article_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = db.execute(f"{_SENT_POSTS} AND article_id IN ({','.join('?' * len(chunk))})",
                          chunk)
        for row in rows:
            post = _post(tuple(row))
            found[(post.article_id, post.chat_id)] = post
    return found


def sent_since(db: Database, since: str) -> dict[tuple[str, str], SentPost]:
    """Every editable sent post sent at or after ``since`` (ISO 8601), for ``--reedit``."""
    rows = db.execute(f"{_SENT_POSTS} AND sent_at >= ?", (since,))
    posts = [_post(tuple(row)) for row in rows]
    return {(post.article_id, post.chat_id): post for post in posts}


def record_rendering(db: Database, article_id: str, chat_id: str, rendering: Rendering,
                     article: Article) -> None:
    """What was sent (or what an edit made of it), from which record of the article."""
    db.execute(
        "UPDATE deliveries SET kind = ?, rendered = ?, article_digest = ?, title = ? "
        "WHERE article_id = ? AND chat_id = ? AND state = ?",
        (rendering.kind, rendering.to_json(), digest_of(article), article.title, article_id,
         chat_id, SENT),
    )


def mark_gone(db: Database, article_id: str, chat_id: str, reason: str) -> None:
    """The post was deleted in the chat: never touched again."""
    db.execute(
        f"UPDATE deliveries SET state = '{GONE}', reason = ? "
        "WHERE article_id = ? AND chat_id = ? AND state = ?",
        (reason, article_id, chat_id, SENT),
    )


def add_edit_columns(db: Database, version: int) -> None:
    """10: what each sent post was (``EDIT_COLUMNS``) and the 'gone' state."""
    existing = _columns(db)
    if not existing:
        return
    for column in EDIT_COLUMNS:
        if column not in existing:
            db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} TEXT")
    if db.dialect == "postgresql":
        states = ", ".join(repr(s) for s in STATES)
        db.execute("ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check")
        db.execute("ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check "
                   f"CHECK (state IN ({states}))")
        return
    # SQLite cannot alter a CHECK: the table is copied into one that allows 'gone'.
    create = next(s for s in ledger_schema("sqlite") if "TABLE IF NOT EXISTS deliveries" in s)
    columns = ", ".join((*LEDGER_COLUMNS, *EDIT_COLUMNS))
    db.execute(create.replace("TABLE IF NOT EXISTS deliveries", "TABLE deliveries_new"))
    db.execute(f"INSERT INTO deliveries_new ({columns}) SELECT {columns} FROM deliveries")
    db.execute("DROP TABLE deliveries")
    db.execute("ALTER TABLE deliveries_new RENAME TO deliveries")


def _columns(db: Database) -> set[str]:
    from publisher.state import _columns as columns

    return columns(db, "deliveries")



def new_message(post: SentPost, article: Article, config: Config, label: str) -> Message:
    """What the post of ``article`` is now, for a post sent as ``post`` (a photo post whose
    article has no usable image any more keeps its last photo)."""
    from publisher.messages import render_for

    message = render_for(article, config, label)
    if post.rendering.kind == PHOTO and not message.photo_url and post.rendering.photo_url:
        message = render_for(keeping_photo(article, post.rendering.photo_url), config, label)
    return message


def needed_change(post: SentPost, article: Article, config: Config, label: str,
                  now: datetime, *, reedit: bool = False) -> str:
    """What an edit of ``post`` must change for ``article`` as it is now; "" when none is
    due: its article unchanged (unless ``reedit``), too old, or rendered the same."""
    if not reedit and post.article_digest == digest_of(article):
        return ""
    # ``--reedit --since`` chose its posts by their age itself.
    if not reedit and too_old(post, config.telegram.edit_max_age_hours, now):
        return ""
    try:
        message = new_message(post, article, config, label)
    except RenderError:
        return ""
    return changes(post.rendering, rendering_of(message, post.rendering.kind))
