"""Retractions: a posted article that now says ``published: false`` (``plan.ActionKind.RETRACT``).

Per ``telegram.on_retract`` its post is deleted ("delete", the default), edited to
``telegram.retract_template`` ("mark") or left as it is ("keep"). Telegram lets a bot delete
only messages younger than 48 hours: an older post (or one Telegram says "can't be deleted")
is marked instead, and logged. Afterwards the post is ``retracted`` and never touched again;
"message to delete not found" (an admin deleted it) makes it ``gone``.

Only an explicit ``published: false`` retracts: a deleted file or a quality drop leaves the
post alone (too easy to cause by accident). Rows from before schema 10 (no rendering) are
never retracted, as they are never edited.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import jinja2

from publisher import templates
from publisher.catalog import stored_article
from publisher.db import Database
from publisher.edits import _SENT_POSTS, PHOTO, SentPost, _post, mark_gone
from publisher.errors import SendError
from publisher.forum import split_key
from publisher.logs import event
from publisher.models import Article
from publisher.state import GONE, RETRACTED, SENT
from publisher.text import as_utc

log = logging.getLogger(__name__)

DELETE = "delete"
MARK = "mark"
KEEP = "keep"
RETRACT_MODES = (DELETE, MARK, KEEP)
DEFAULT_RETRACT_TEMPLATE = "This article was withdrawn."
RETRACT_VARIABLES = frozenset({"title", "url", "provider"})
RETRACT_KEY = "telegram.retract_template"
# Telegram deletes a bot's message only this long after it was sent.
DELETE_MAX_AGE = timedelta(hours=48)
UNPUBLISHED = "unpublished"
NOT_FOUND = "message to delete not found"
CANNOT_DELETE = "message can't be deleted"

# A sent post whose article is in the catalog only unpublished: not selected under any copy
# of its id, and at least one file of it says ``published: false`` (not a quality drop).
# Read from the few unpublished catalog rows, each probing the ledger by its key.
_RETRACTING = (
    f"{_SENT_POSTS} AND article_id IN (SELECT u.article_id FROM catalog u WHERE "
    "u.published = 0 AND u.problem IS NULL AND NOT EXISTS (SELECT 1 FROM catalog s "
    "WHERE s.article_id = u.article_id AND s.selected = 1))"
)
_ARTICLE = ("SELECT data FROM catalog WHERE article_id = ? AND published = 0 "
            "AND problem IS NULL ORDER BY published_us DESC, path DESC LIMIT 1")


@runtime_checkable
class Deleter(Protocol):
    """A ``Sender`` that can also delete a message it sent."""

    async def delete_message(self, chat_id: str, message_id: int) -> None: ...


class Retracted(enum.Enum):
    DELETED = "deleted"
    MARKED = "marked"
    SKIPPED = "skipped"  # nothing to do any more (no request made)
    GONE = "gone"
    FAILED = "failed"


def compile_retract_template(source: str) -> jinja2.Template:
    """``telegram.retract_template`` compiled, or a ``ConfigError`` naming the key."""
    return templates.compile_template(source or DEFAULT_RETRACT_TEMPLATE, RETRACT_KEY,
                                      variables=RETRACT_VARIABLES)


def retraction_html(article: Article, source: str) -> str:
    """What a marked post says instead of the article."""
    context = {"title": article.title.strip(), "url": templates.attribute_safe(article.url),
               "provider": article.provider_label.strip()}
    return templates.render(compile_retract_template(source), context, RETRACT_KEY)


def retracting_posts(db: Database) -> list[tuple[SentPost, Article]]:
    """Every sent post whose article now says ``published: false``, oldest first."""
    found = []
    for row in db.execute(f"{_RETRACTING} ORDER BY sent_at"):
        post = _post(tuple(row))
        article = unpublished_article(db, post.article_id)
        if article is not None:
            found.append((post, article))
    return found


def has_retracting(db: Database, on_retract: str) -> bool:
    """Whether a push has a post to retract (and so must ask Telegram)."""
    return on_retract != KEEP and db.execute(f"{_RETRACTING} LIMIT 1").fetchone() is not None


def unpublished_article(db: Database, article_id: str) -> Article | None:
    row = db.execute(_ARTICLE, (article_id,)).fetchone()
    return stored_article(row[0]) if row else None


def planned_mode(post: SentPost, on_retract: str, now: datetime) -> str:
    """What a retraction of ``post`` does: delete, mark (an old post), or "" (keep)."""
    if on_retract == KEEP:
        return ""
    if on_retract == DELETE and not too_old_to_delete(post, now):
        return DELETE
    return MARK


def too_old_to_delete(post: SentPost, now: datetime) -> bool:
    if not post.sent_at:
        return True
    return as_utc(datetime.fromisoformat(post.sent_at)) < now - DELETE_MAX_AGE


def mark_retracted(db: Database, article_id: str, chat_id: str, reason: str) -> None:
    """The post was deleted or marked for its unpublished article: never touched again."""
    db.execute(
        f"UPDATE deliveries SET state = '{RETRACTED}', reason = ? "
        "WHERE article_id = ? AND chat_id = ? AND state = ?",
        (reason, article_id, chat_id, SENT),
    )


async def send_retract(db: Database, sender: object, template: str, key: str, label: str,
                       article_id: str, on_retract: str, now: datetime) -> Retracted:
    """Retract the post of ``article_id`` in the destination ``key``; what came of it. The
    post is read again: another instance may have retracted it, or the file be published."""
    found = {post.chat_id: (post, article) for post, article in retracting_posts(db)
             if post.article_id == article_id}
    if key not in found:
        return Retracted.SKIPPED
    post, article = found[key]
    mode = planned_mode(post, on_retract, now)
    if not mode:
        return Retracted.SKIPPED
    chat_id, _thread = split_key(key)
    if mode == DELETE and isinstance(sender, Deleter):
        try:
            await sender.delete_message(chat_id, post.message_id)
        except SendError as exc:
            if NOT_FOUND in exc.reason.lower():
                return _gone(db, post, label, exc.reason)
            if CANNOT_DELETE not in exc.reason.lower():
                return _failed(post, label, exc.reason)
            event(log, logging.WARNING, "retract_marked_instead", chat=label,
                  article=article_id, message_id=post.message_id, reason=exc.reason)
        else:
            mark_retracted(db, article_id, key, f"{UNPUBLISHED}: deleted")
            event(log, logging.INFO, "retracted", chat=label, article=article_id,
                  message_id=post.message_id, mode=DELETE)
            return Retracted.DELETED
    elif mode == MARK and on_retract == DELETE:
        event(log, logging.WARNING, "retract_marked_instead", chat=label, article=article_id,
              message_id=post.message_id, reason="older than 48 hours: Telegram cannot delete it")
    return await _mark(db, sender, template, key, label, post, article)


async def _mark(db: Database, sender: object, template: str, key: str, label: str,
                post: SentPost, article: Article) -> Retracted:
    from publisher.delivery import Editor

    if not isinstance(sender, Editor):
        return Retracted.SKIPPED
    chat_id, _thread = split_key(key)
    html = retraction_html(article, template)
    try:
        if post.rendering.kind == PHOTO:
            await sender.edit_caption(chat_id, post.message_id, html, [])
        else:
            await sender.edit_text(chat_id, post.message_id, html, [], None)
    except SendError as exc:
        reason = exc.reason.lower()
        if "message is not modified" not in reason:
            if "message to edit not found" in reason:
                return _gone(db, post, label, exc.reason)
            return _failed(post, label, exc.reason)
    mark_retracted(db, post.article_id, key, f"{UNPUBLISHED}: marked")
    event(log, logging.INFO, "retracted", chat=label, article=post.article_id,
          message_id=post.message_id, mode=MARK)
    return Retracted.MARKED


def _gone(db: Database, post: SentPost, label: str, reason: str) -> Retracted:
    mark_gone(db, post.article_id, post.chat_id, reason)
    event(log, logging.WARNING, "post_gone", chat=label, article=post.article_id,
          message_id=post.message_id, reason=reason, state=GONE)
    return Retracted.GONE


def _failed(post: SentPost, label: str, reason: str) -> Retracted:
    event(log, logging.WARNING, "retract_failed", chat=label, article=post.article_id,
          message_id=post.message_id, reason=reason)
    return Retracted.FAILED
