"""Executing a plan's edits (``plan.ActionKind.EDIT``): one Bot API edit per post.

The plan decided that the post's article changed and renders otherwise; here the post is
read again (another instance may have edited it, or found it deleted) and edited with the
method its change needs. "message is not modified" means it already shows this rendering:
done. "message to edit not found" (deleted by an admin) marks the post ``gone``: it is never
touched again. Any other refusal leaves the post as it was, and logged; the next change of
its article tries again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime

from publisher.config import Config
from publisher.db import Database
from publisher.delivery import Editor
from publisher.edits import (
    BODY,
    MEDIA,
    PHOTO,
    Rendering,
    SentPost,
    keeping_photo,
    mark_gone,
    needed_change,
    new_message,
    record_rendering,
    rendering_of,
    sent_posts,
)
from publisher.errors import PhotoRejected, SendError
from publisher.forum import split_key
from publisher.logs import event
from publisher.messages import Message
from publisher.models import Article

log = logging.getLogger(__name__)

NOT_MODIFIED = "message is not modified"
NOT_FOUND = "message to edit not found"


class Edited(enum.Enum):
    EDITED = "edited"
    UNCHANGED = "unchanged"  # "message is not modified": Telegram shows this rendering
    SKIPPED = "skipped"  # nothing to do any more (no request made)
    GONE = "gone"
    FAILED = "failed"


async def send_edit(db: Database, editor: Editor, config: Config, key: str, label: str,
                    article_id: str, lookup: Callable[[str], Article | None],
                    now: datetime) -> Edited:
    """Edit the post of ``article_id`` in the destination ``key`` to its article's current
    rendering; what came of it."""
    article = lookup(article_id)
    post = sent_posts(db, [article_id]).get((article_id, key))
    if article is None or post is None:
        return Edited.SKIPPED
    # The plan saw the article change; whether the post still differs is read again.
    change = needed_change(post, article, config, label, now, reedit=True)
    if not change:
        return Edited.SKIPPED
    message = new_message(post, article, config, label)
    rendering = rendering_of(message, post.rendering.kind)
    try:
        try:
            await _edit(editor, key, post, change, message)
        except PhotoRejected as exc:  # the new photo cannot be had: the old one stays
            event(log, logging.WARNING, "edit_photo_refused", chat=label, article=article_id,
                  reason=exc.reason)
            message = new_message(post, keeping_photo(article, post.rendering.photo_url),
                                  config, label)
            rendering = rendering_of(message, post.rendering.kind)
            await _edit(editor, key, post, BODY, message)
    except SendError as exc:
        return _refused(db, post, rendering, article, label, exc)
    record_rendering(db, article_id, key, rendering, article)
    event(log, logging.INFO, "edited", chat=label, article=article_id,
          message_id=post.message_id, change=change)
    return Edited.EDITED


async def _edit(editor: Editor, key: str, post: SentPost, change: str,
                message: Message) -> None:
    chat_id, _thread = split_key(key)  # a message id names the message in its chat
    message_id, buttons = post.message_id, message.buttons
    if change == MEDIA and message.photo_url:
        await editor.edit_media(chat_id, message_id, message.photo_url, message.html, buttons)
    elif change in (MEDIA, BODY) and post.rendering.kind == PHOTO:
        await editor.edit_caption(chat_id, message_id, message.html, buttons)
    elif change == BODY:
        await editor.edit_text(chat_id, message_id, message.text_html, buttons,
                               message.preview_url or None)
    else:
        await editor.edit_markup(chat_id, message_id, buttons)


def _refused(db: Database, post: SentPost, rendering: Rendering, article: Article,
             label: str, exc: SendError) -> Edited:
    reason = exc.reason
    if NOT_MODIFIED in reason.lower():  # it already shows this rendering
        record_rendering(db, post.article_id, post.chat_id, rendering, article)
        return Edited.UNCHANGED
    if NOT_FOUND in reason.lower():
        mark_gone(db, post.article_id, post.chat_id, reason)
        event(log, logging.WARNING, "post_gone", chat=label, article=post.article_id,
              message_id=post.message_id, reason=reason)
        return Edited.GONE
    event(log, logging.WARNING, "edit_failed", chat=label, article=post.article_id,
          message_id=post.message_id, reason=reason)
    return Edited.FAILED
