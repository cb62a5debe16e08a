"""Dispatch: the ledger-driven loop that posts pending articles, paced and fault-tolerant.

For each chat, oldest article first: commit ``sending``, post, then record the outcome.
Outcomes decide what happens next:

* posted -> ``sent`` with the message id;
* provably not posted (connection refused, 5xx) -> back to ``pending`` with backoff,
  a bounded number of tries per run, then left for the next run;
* maybe posted (timeout after the request left) -> ``uncertain`` (or ``pending`` again for
  chats configured ``on_uncertain = "resend"``);
* 429 -> wait ``retry_after`` plus jitter and retry the same message, never dropping it;
* 400 about the message -> ``failed`` with the reason; 403 -> the chat stops for this run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from publisher.config import Config, TelegramConfig
from publisher.delivery import (
    Ambiguous,
    ChatForbidden,
    ChatMigrated,
    EntitiesRejected,
    NotSent,
    PhotoRejected,
    RateLimited,
    Rejected,
    Sender,
    SendError,
    Unauthorized,
)
from publisher.logs import event
from publisher.messages import Message, render_message
from publisher.models import Article
from publisher.state import PENDING, SKIPPED, Delivery, NewDelivery, Store

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
MAX_MIGRATIONS = 2  # a chat that keeps answering "migrated" is not followed forever


@dataclass
class ChatReport:
    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: int = 0
    rate_limited: int = 0
    error: str = ""


@dataclass
class PushReport:
    new: int = 0
    chats: dict[str, ChatReport] = field(default_factory=dict)
    fatal: str = ""

    def chat(self, chat_id: str) -> ChatReport:
        return self.chats.setdefault(chat_id, ChatReport())

    def total(self, name: str) -> int:
        return sum(getattr(report, name) for report in self.chats.values())

    @property
    def errors(self) -> dict[str, str]:
        return {chat: report.error for chat, report in self.chats.items() if report.error}

    @property
    def ok(self) -> bool:
        return not self.fatal and not self.errors and self.total("failed") == 0


def plan_deliveries(
    selected: Iterable[Article], config: Config, now: datetime
) -> list[NewDelivery]:
    """Every (article, chat) pair the selection asks for; too-old articles marked skipped."""
    max_age = config.telegram.max_age_hours
    oldest = now - timedelta(hours=max_age) if max_age else None
    planned: list[NewDelivery] = []
    for article in selected:
        too_old = oldest is not None and article.published_at < oldest
        for chat in config.chats_for(article.topics):
            planned.append(
                NewDelivery(
                    article_id=article.id,
                    chat_id=chat,
                    title=article.title,
                    url=article.url,
                    published_at=article.published_at.isoformat(),
                    state=SKIPPED if too_old else PENDING,
                    reason=f"older than telegram.max_age_hours ({max_age:g} h)" if too_old else "",
                )
            )
    return planned


class Pacer:
    """Telegram's limits: per chat an interval and a per-minute budget; a global rate.

    The per-minute budget counts sends recorded in the state, so back-to-back runs share it.
    """

    def __init__(self, store: Store, settings: TelegramConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._global_next = 0.0
        self._lock = asyncio.Lock()

    def delay_for(self, chat_id: str) -> float:
        """Seconds to wait before the next send to ``chat_id`` may leave."""
        now = self._clock()
        recent = self._store.sends_since(chat_id, now - 60.0)
        delay = 0.0
        if recent:
            delay = max(delay, recent[-1] + self._settings.per_chat_interval_seconds - now)
        budget = self._settings.per_chat_per_minute
        if len(recent) >= budget:
            delay = max(delay, recent[-budget] + 60.0 - now)
        return max(delay, 0.0)

    async def claim_global_slot(self) -> None:
        async with self._lock:
            now = self._clock()
            wait = self._global_next - now
            self._global_next = max(now, self._global_next) + 1.0 / self._settings.global_per_second
        if wait > 0:
            await asyncio.sleep(wait)


Sleep = Callable[[float], Awaitable[None]]
Lookup = Callable[[str], Article | None]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        config: Config,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sender = sender
        self._config = config
        self._settings = config.telegram
        self._sleep = sleep
        self._clock = clock
        self._pacer = Pacer(store, config.telegram, clock)
        self._stop = False
        self._fatal = ""

    def request_stop(self) -> None:
        """Finish the send in flight, record it, and post nothing more in this run."""
        self._stop = True

    async def run(self, new_articles: Iterable[Article], lookup: Lookup) -> PushReport:
        """Plan ``new_articles`` into the ledger, then post what is due.

        ``lookup`` gives the currently selected article of an id, or None when it is no
        longer selected (its pending posts are then skipped).
        """
        report = PushReport()
        now = datetime.fromtimestamp(self._clock(), UTC)
        report.new = self._store.add_deliveries(plan_deliveries(new_articles, self._config, now))
        # Every configured chat: the main one and each route's.
        every_chat = self._config.chats_for(tuple(self._settings.routes))
        resend_chats = every_chat if self._settings.on_uncertain == "resend" else ()
        recovered = self._store.recover_interrupted(resend_chats)
        if recovered:
            event(log, logging.WARNING, "recovered_interrupted_sends", count=recovered)
        chats = self._store.pending_chats()
        if chats and not await self._start_sender(chats, report):
            return report
        # Every chat runs to its end even when another fails, so no send is left in flight
        # behind the report; the first unexpected error is raised after all have finished.
        outcomes = await asyncio.gather(
            *(self._run_chat(chat, lookup, report) for chat in chats), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        report.fatal = self._fatal
        return report

    async def _start_sender(self, chats: list[str], report: PushReport) -> bool:
        try:
            await self._sender.start()
        except SendError as exc:
            report.fatal = exc.reason
            for chat in chats:
                report.chat(chat).error = f"Telegram unavailable: {exc.reason}"
            event(log, logging.ERROR, "telegram_unavailable", reason=exc.reason)
            return False
        return True

    async def _run_chat(self, chat_id: str, lookup: Lookup, report: PushReport) -> None:
        chat_report = report.chat(chat_id)
        budget = self._settings.max_per_run or None
        oldest = self._oldest_allowed()
        for item in self._store.due(chat_id, self._clock(), None):
            if self._stop or self._fatal or (budget is not None and budget <= 0):
                return
            article = lookup(item.article_id)
            if article is None or (oldest is not None and article.published_at < oldest):
                self._skip(item, article, chat_report)
                continue
            keep_going = await self._deliver(item, article, chat_report)
            if budget is not None:
                budget -= 1
            if not keep_going:
                return

    def _oldest_allowed(self) -> datetime | None:
        hours = self._settings.max_age_hours
        if not hours:
            return None
        return datetime.fromtimestamp(self._clock(), UTC) - timedelta(hours=hours)

    def _skip(self, item: Delivery, article: Article | None, chat_report: ChatReport) -> None:
        reason = (
            "no longer selected (removed, unpublished or below select.min_quality)"
            if article is None
            else f"older than telegram.max_age_hours ({self._settings.max_age_hours:g} h)"
        )
        self._store.mark_skipped(item.article_id, item.chat_id, reason)
        chat_report.skipped += 1
        event(log, logging.INFO, "skipped", chat=item.chat_id, article=item.article_id,
              reason=reason)

    async def _deliver(self, item: Delivery, article: Article, chat_report: ChatReport) -> bool:
        """Post one article to one chat, retrying as the outcome allows. False: stop the chat."""
        message = render_message(article, timezone=self._settings.timezone)
        chat_id = item.chat_id
        tries = migrations = 0
        while True:
            if not await self._wait_for_pacing(chat_id):
                return False
            target = self._store.migration_for(chat_id) or chat_id
            if not self._store.mark_sending(article.id, chat_id):
                return True  # no longer pending: another pass has taken it
            self._store.log_send(chat_id, self._clock())
            try:
                message_id = await self._post(target, message)
            except RateLimited as exc:
                chat_report.rate_limited += 1
                if not await self._wait_rate_limit(article.id, chat_id, exc):
                    return False
                continue
            except ChatMigrated as exc:
                migrations += 1
                if migrations > MAX_MIGRATIONS:
                    self._store.mark_failed(article.id, chat_id, f"the chat keeps moving: {exc}")
                    chat_report.failed += 1
                    return True
                self._store.record_migration(chat_id, exc.new_chat_id)
                self._store.mark_retry(article.id, chat_id, exc.reason, 0, count_attempt=False)
                event(log, logging.WARNING, "chat_migrated", chat=chat_id, to=exc.new_chat_id)
                continue
            except NotSent as exc:
                tries += 1
                if not await self._back_off(article.id, chat_id, exc.reason, tries, chat_report):
                    return False
                continue
            except Ambiguous as exc:
                if self._settings.on_uncertain == "resend":
                    tries += 1
                    if not await self._back_off(article.id, chat_id, exc.reason, tries,
                                                chat_report):
                        return False
                    continue
                self._store.mark_uncertain(article.id, chat_id, exc.reason)
                chat_report.uncertain += 1
                event(log, logging.WARNING, "uncertain", chat=chat_id, article=article.id,
                      reason=exc.reason, title=article.title)
                return True
            except Rejected as exc:
                self._store.mark_failed(article.id, chat_id, exc.reason)
                chat_report.failed += 1
                event(log, logging.ERROR, "failed", chat=chat_id, article=article.id,
                      reason=exc.reason, title=article.title)
                return True
            except ChatForbidden as exc:
                self._store.mark_retry(article.id, chat_id, exc.reason, 0, count_attempt=False)
                chat_report.error = f"cannot post to {chat_id}: {exc.reason}"
                event(log, logging.ERROR, "chat_stopped", chat=chat_id, reason=exc.reason)
                return False
            except Unauthorized as exc:
                self._store.mark_retry(article.id, chat_id, exc.reason, 0, count_attempt=False)
                self._fatal = chat_report.error = exc.reason
                event(log, logging.ERROR, "unauthorized", reason=exc.reason)
                return False
            except Exception as exc:  # a bug or a surprise: the request may have left
                reason = f"unexpected error while sending: {type(exc).__name__}: {exc}"
                self._store.mark_uncertain(article.id, chat_id, reason)
                chat_report.uncertain += 1
                raise
            self._store.mark_sent(article.id, chat_id, message_id, target)
            chat_report.sent += 1
            event(log, logging.INFO, "sent", chat=chat_id, article=article.id,
                  message_id=message_id, title=article.title)
            return True

    async def _post(self, chat_id: str, message: Message) -> int:
        if message.photo_url:
            try:
                return await self._sender.send_photo(
                    chat_id, message.photo_url, message.html, message.buttons
                )
            except PhotoRejected as exc:
                event(log, logging.WARNING, "photo_refused", chat=chat_id,
                      article=message.article_id, reason=exc.reason, photo=message.photo_url)
            except EntitiesRejected as exc:
                return await self._post_plain(chat_id, message, exc)
        try:
            return await self._sender.send_text(
                chat_id, message.text_html, html=True, buttons=message.buttons,
                preview_url=message.preview_url,
            )
        except EntitiesRejected as exc:
            return await self._post_plain(chat_id, message, exc)

    async def _post_plain(self, chat_id: str, message: Message, exc: EntitiesRejected) -> int:
        event(log, logging.ERROR, "bug_html_refused", chat=chat_id, article=message.article_id,
              reason=exc.reason)
        return await self._sender.send_text(
            chat_id, message.plain, html=False, buttons=message.buttons,
            preview_url=message.preview_url,
        )

    async def _wait_for_pacing(self, chat_id: str) -> bool:
        delay = self._pacer.delay_for(chat_id)
        if delay > self._settings.max_wait_seconds:
            event(log, logging.INFO, "pacing_deferred", chat=chat_id, wait=round(delay, 1))
            return False
        if delay > 0:
            await self._sleep(delay)
        await self._pacer.claim_global_slot()
        return not self._fatal and not self._stop

    async def _wait_rate_limit(self, article_id: str, chat_id: str, exc: RateLimited) -> bool:
        wait = exc.retry_after + random.uniform(0.05, 0.5)
        self._store.mark_retry(article_id, chat_id, exc.reason, self._clock() + wait,
                               count_attempt=False)
        event(log, logging.WARNING, "rate_limited", chat=chat_id, retry_after=exc.retry_after)
        if wait > self._settings.max_wait_seconds or self._stop:
            return False
        await self._sleep(wait)
        return True

    async def _back_off(self, article_id: str, chat_id: str, reason: str, tries: int,
                        chat_report: ChatReport) -> bool:
        """Back to pending; retry in this run while tries remain, else leave it for the next."""
        delay = min(2.0 ** (tries - 1), MAX_BACKOFF_SECONDS) * random.uniform(0.8, 1.2)
        self._store.mark_retry(article_id, chat_id, reason, self._clock() + delay)
        event(log, logging.WARNING, "retry_later", chat=chat_id, article=article_id,
              reason=reason, tries=tries)
        if tries >= self._settings.max_tries or self._stop:
            chat_report.error = f"Telegram unavailable for {chat_id}: {reason}"
            return False
        await self._sleep(delay)
        return True
