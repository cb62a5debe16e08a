"""A push sending one destination's digest: the plan's ``DIGEST`` action, executed.

In the chat's loop, after its other entries: reserve a pacing slot, wait for it, claim the
digest (``digest_ledger.claim_digest``: its row and its pairs, at once), settle what is no
longer to be listed (skipped, orphaned), send the one message, and record the outcome on the
digest and every pair it holds. The outcomes are a post's: sent; provably not sent (back to
pending, the window tried again); maybe sent (``uncertain``, never sent again); refused
(``failed``); the chat stopped (403, chat not found); a 429 (pending until it is over).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from publisher import alerts
from publisher.delivery import (
    Ambiguous,
    ChatForbidden,
    ChatMigrated,
    EntitiesRejected,
    NotSent,
    PhotoRejected,
    RateLimited,
    Rejected,
    Unauthorized,
)
from publisher.digest import render_digest
from publisher.digest_ledger import claim_digest, drop_from_digest, settle_digest
from publisher.errors import RenderError
from publisher.forum import chat_of, split_key, thread_of, with_thread
from publisher.logs import event
from publisher.models import Article
from publisher.plan import NO_LONGER_SELECTED, Action
from publisher.state import FAILED, PENDING, SENT, UNCERTAIN, Delivery

if TYPE_CHECKING:
    from publisher.dispatch import ChatRun, Dispatcher, Lookup

UNSURE_WAIT_SECONDS = 300.0  # as dispatch's: a pair that may be a destination's not resolved

log = logging.getLogger(__name__)

NOT_SENT_WAIT_SECONDS = 60.0  # a digest that provably did not leave is tried again after


async def send_digest(dispatcher: Dispatcher, run: ChatRun, action: Action,
                      lookup: Lookup) -> None:
    """Execute the plan's digest for the chat of ``run`` (see the module's docstring)."""
    d = dispatcher
    store = d._store
    slot = await d._await_slot(run)
    if slot is None:
        return
    now = d._clock()
    claimed = claim_digest(store.db, run.key, action.article_id, action.items, now, d._owner,
                           now + d._lease_seconds)
    articles = _listed(d, run, action, claimed, lookup)
    if not articles:
        store.cancel_reservation(chat_of(run.key), slot)
        return
    settings = d.destinations.settings_for(run.key)
    try:
        text = render_digest(articles, settings, d._settings.timezone,
                             datetime.fromisoformat(action.article_id))
    except RenderError as exc:  # nothing left: it failed, as a post Telegram would refuse
        settle_digest(store.db, run.key, action.article_id, d._owner, FAILED, str(exc))
        store.cancel_reservation(chat_of(run.key), slot)
        run.report.failed += len(articles)
        event(log, logging.ERROR, "digest_failed", chat=d._label(run.key),
              window=action.article_id, reason=str(exc))
        return
    silent = action.silent or settings.silent
    try:
        message_id = await _post(d, run.key, text.html, silent)
    except BaseException as exc:
        _settle_failure(d, run, action, articles, exc)
        if not isinstance(exc, Exception) or not _known(exc):
            raise
        return
    settle_digest(store.db, run.key, action.article_id, d._owner, SENT, message_id=message_id)
    run.report.sent += len(articles)
    run.report.digests += 1
    run.report.in_digests += len(articles)
    event(log, logging.INFO, "digest_sent", chat=d._label(run.key), window=action.article_id,
          articles=len(articles), listed=text.listed, message_id=message_id)


def _listed(d: Dispatcher, run: ChatRun, action: Action, claimed: list[Delivery],
            lookup: Lookup) -> list[Article]:
    """The claimed pairs' articles still to be listed; the others settled (and taken off
    the digest's row) as a push settles a post's pair."""
    articles: list[Article] = []
    dropped: list[str] = []
    for item in claimed:
        article = lookup(item.article_id)
        if article is None:
            d._store.mark_skipped(item.article_id, run.key, NO_LONGER_SELECTED, owner=d._owner)
            run.report.skipped += 1
        elif run.key not in d.destinations.keys_for(article.topics):
            unknown = d.destinations.unresolved_for(article.topics)
            if unknown:  # it may be this chat: it waits, as a post's pair would
                d._store.mark_retry(item.article_id, run.key,
                                    f"{', '.join(unknown)} not resolved yet: it may be this chat",
                                    d._clock() + UNSURE_WAIT_SECONDS, count_attempt=False,
                                    owner=d._owner)
            else:
                d._store.mark_orphaned(item.article_id, run.key, d._owner)
                run.report.orphaned += 1
        else:
            articles.append(article)
            continue
        dropped.append(item.article_id)
    if dropped:
        drop_from_digest(d._store.db, run.key, action.article_id, dropped)
    return articles


async def _post(d: Dispatcher, key: str, html: str, silent: bool) -> int:
    """The digest, to a chat or a forum topic of one, bounded by the claim's lease as a
    post is. Each keyword only when needed: a test's Sender may know neither."""
    chat_id, thread = split_key(key)
    extra: dict[str, Any] = {"silent": True} if silent else {}
    if thread is not None:
        extra["thread_id"] = thread
    try:
        return await asyncio.wait_for(
            d._sender.send_text(chat_id, html, html=True, buttons=(), preview_url=None,
                                **extra),
            d._send_deadline)
    except TimeoutError:
        raise Ambiguous(f"no answer within {d._send_deadline:g} s (the claim's lease)") from None


def _known(exc: Exception) -> bool:
    return isinstance(exc, RateLimited | ChatMigrated | Ambiguous | Rejected | EntitiesRejected
                      | PhotoRejected | ChatForbidden | Unauthorized | NotSent)


def _settle_failure(d: Dispatcher, run: ChatRun, action: Action, articles: list[Article],
                    exc: BaseException) -> None:
    """Record why the digest did not (surely) go out, on its row and its pairs."""
    key, window, count = run.key, action.article_id, len(articles)
    label = d._label(key)

    def settle(state: str, reason: str, not_before: float = 0.0) -> None:
        settle_digest(d._store.db, key, window, d._owner, state, reason, not_before=not_before)

    match exc:
        case RateLimited():
            run.report.rate_limited += 1
            wait = exc.retry_after if exc.retry_after is not None else d._settings.max_wait_seconds
            settle(PENDING, exc.reason, d._clock() + max(0.0, wait))
            run.report.held = f"rate limited: {exc.reason}"
        case ChatMigrated():
            settle(PENDING, exc.reason)
            old = chat_of(key)
            d._store.move_chat(old, exc.new_chat_id)
            d.destinations = d.destinations.moved(old, exc.new_chat_id)
            run.key = with_thread(exc.new_chat_id, thread_of(key))
        case Ambiguous() if d._settings.on_uncertain == "resend":
            settle(PENDING, exc.reason)
        case Ambiguous():
            settle(UNCERTAIN, exc.reason)
            run.report.uncertain += count
            d.alerts.append(alerts.uncertain(key, label, count, exc.reason))
            event(log, logging.WARNING, "digest_uncertain", chat=label, window=window,
                  reason=exc.reason)
        case Rejected() | EntitiesRejected() | PhotoRejected():
            settle(FAILED, f"digest refused: {exc.reason}")
            run.report.failed += count
            event(log, logging.ERROR, "digest_failed", chat=label, window=window,
                  reason=exc.reason)
        case ChatForbidden():
            settle(PENDING, exc.reason)
            run.report.error = f"cannot post to {label}: {exc.reason}"
            d.alerts.append(alerts.stopped(key, label, exc.reason))
            event(log, logging.ERROR, "chat_stopped", chat=label, reason=exc.reason)
        case Unauthorized():
            settle(PENDING, exc.reason)
            d._fatal = run.report.error = exc.reason
        case NotSent():
            settle(PENDING, exc.reason, d._clock() + NOT_SENT_WAIT_SECONDS)
            run.report.held = f"digest not sent ({exc.reason}): tried again later"
            event(log, logging.WARNING, "retry_later", chat=label, window=window,
                  reason=exc.reason)
        case _:  # a bug, a surprise, a cancellation: the request may have left
            settle(UNCERTAIN, f"unexpected error while sending: {type(exc).__name__}")
            run.report.uncertain += count
