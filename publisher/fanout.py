"""Fan-out: each newly selected article to the followers of its topics, through the ledger.

Planning (``plan.plan_fanouts`` decides, ``record_fanout`` writes): an article new to the
selection gets one ``fanouts`` row (its selection time: the moment a plan first saw it) and,
in the same transaction, one pending ledger row per follower whose topic ``since`` is at or
before that moment, written by one ``INSERT ... SELECT`` (100,000 rows in well under 2 s).
The ``fanouts`` primary key makes an article fan out once, even with two instances; the
ledger's primary key makes each follower's DM one row. DM rows are marked ``kind = 'dm'``
(a channel row's ``kind`` is NULL until sent, then "photo" or "text"): the channel paths of
the ledger leave them out (``CHANNEL_ROWS``), and a DM never gets a rendering, so it is never
edited or retracted.

Dispatch (``FanOutSender``): after the channel posts of a push, the due DM rows, oldest
article first, at ``followers.per_second`` over all followers (a token bucket shared by a few
concurrent senders, so a slow answer does not slow the rate), never two at once to one chat
and about one per second per chat. Each is claimed before the request (``sending`` with a
lease, as posts), then recorded: sent, uncertain (the request may have left), failed (the
message refused), or pending again (not sent: later; a 429 pauses the whole fan-out for its
``retry_after``). A 403 of a user who blocked the bot, is deactivated or never started it
removes the follower (``followers.forget``), logged without the chat id. A follower who
/stops mid fan-out has no rows left: nothing is recorded for them. A stop request ends the
fan-out after the DMs in flight; a ``deadline`` (``publisher run``'s tick) leaves the rest
pending for the next tick, after that tick's channel posts. The bucket is this process's:
instances sharing a PostgreSQL state share the DMs (each claimed by one) but each paces its
own, so their rates add up (the README says to divide ``per_second`` among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from publisher.db import Database
from publisher.errors import (
    Ambiguous,
    ChatForbidden,
    EntitiesRejected,
    NotSent,
    PhotoRejected,
    RateLimited,
    Rejected,
    RenderError,
    SendError,
    Unauthorized,
)
from publisher.logs import event
from publisher.models import Article
from publisher.state import INTERRUPTED, Store, utc_now_iso
from publisher.text import plural

if TYPE_CHECKING:  # a build migrates the state: it needs no Telegram libraries
    from publisher.config import Config
    from publisher.delivery import Sender
    from publisher.messages import Message

log = logging.getLogger(__name__)

DM_KIND = "dm"  # ``deliveries.kind`` of a DM row (``state.CHANNEL_ROWS`` leaves them out)
# 403 answers that say the follower is gone for good: forgotten, never retried.
GONE_REASONS = ("bot was blocked by the user", "user is deactivated",
                "bot can't initiate conversation")
SENDERS = 4  # DMs in flight at once: the rate holds while an answer takes up to 160 ms
BATCH = 512  # due rows read at a time
MAX_BACKOFF_SECONDS = 300.0
# ``publisher run``: the longest a tick spends on DMs before the next tick's channel posts.
TICK_SECONDS = 50.0
PER_CHAT_INTERVAL = 1.05  # Telegram: about one message per second in a private chat

Lookup = Callable[[str], Article | None]


def fanout_schema(dialect: str) -> list[str]:
    del dialect  # the same SQL in SQLite and PostgreSQL
    return [
        """CREATE TABLE IF NOT EXISTS fanouts (
            article_id TEXT PRIMARY KEY,
            selected_at DOUBLE PRECISION NOT NULL,
            followers BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS deliveries_dm ON deliveries (kind, state)",
    ]


@dataclass(frozen=True, slots=True)
class FanOut:
    """One article's DMs as planned: to ``followers`` chats following any of ``slugs``
    since ``selected_at`` or before."""

    article_id: str
    title: str
    url: str
    published_at: str
    slugs: tuple[str, ...]
    topics: tuple[str, ...]  # the names, for the plan's line
    followers: int
    selected_at: float

    def line(self) -> str:
        topics = ", ".join(self.topics)
        word = "topic" if len(self.topics) == 1 else "topics"
        return (f"DM {self.article_id} to {plural(self.followers, 'follower')} "
                f"({word} {topics})")


def fanned_out(db: Database, article_ids: Iterable[str]) -> set[str]:
    """Those of ``article_ids`` that fanned out already (or were planned to nobody)."""
    ids = sorted(set(article_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in db.execute(
            f"SELECT article_id FROM fanouts WHERE article_id IN ({marks})", chunk))
    return found


def count_followers(db: Database, slugs: Sequence[str], since_before: float) -> int:
    if not slugs:
        return 0
    marks = ",".join("?" * len(slugs))
    row = db.execute(
        f"SELECT COUNT(DISTINCT chat_id) FROM follower_topics WHERE slug IN ({marks}) "
        "AND since <= ?", (*slugs, since_before)).fetchone()
    return int(row[0])


def record_fanout(db: Database, fanout: FanOut) -> int:
    """The article's fan-out into the ledger, once: its ``fanouts`` row and a pending DM row
    per follower, in one transaction; how many DM rows it added (0 when another instance
    or an earlier push recorded it)."""
    stamp = utc_now_iso()
    with db.transaction():
        claimed = db.execute(
            "INSERT INTO fanouts (article_id, selected_at, followers) VALUES (?, ?, ?) "
            "ON CONFLICT (article_id) DO NOTHING", (fanout.article_id, fanout.selected_at,
                                                   fanout.followers)).rowcount
        if claimed != 1 or not fanout.slugs:
            return 0
        marks = ",".join("?" * len(fanout.slugs))
        return db.execute(
            "INSERT INTO deliveries (article_id, chat_id, state, title, url, published_at, "
            "reason, created_at, updated_at, kind) "
            "SELECT ?, chat_id, 'pending', ?, ?, ?, '', ?, ?, ? FROM follower_topics "
            f"WHERE slug IN ({marks}) AND since <= ? "
            # A follower of two of its topics is selected twice: the conflict clause keeps
            # one row, at a fraction of what a GROUP BY's sort costs on 100,000 rows.
            "ON CONFLICT (article_id, chat_id) DO NOTHING",
            (fanout.article_id, fanout.title, fanout.url, fanout.published_at, stamp, stamp,
             DM_KIND, *fanout.slugs, fanout.selected_at)).rowcount


def dm_counts(db: Database) -> dict[str, int]:
    """The DM rows by state (through the DM index)."""
    rows = db.execute("SELECT state, COUNT(*) FROM deliveries WHERE kind = ? GROUP BY state "
                      "ORDER BY state", (DM_KIND,))
    return {state: int(count) for state, count in rows}


def has_due_dms(db: Database, now: float) -> bool:
    row = db.execute("SELECT 1 FROM deliveries WHERE kind = ? AND state = 'pending' "
                     "AND next_attempt_at <= ? LIMIT 1", (DM_KIND, now)).fetchone()
    return row is not None


def recover_dms(db: Database, shared: bool, now: float) -> int:
    """DMs a dead process left in flight: uncertain, never sent again (a private state has
    no live claim at a push's start; a shared one only those whose lease ran out)."""
    lease = " AND lease_until < ?" if shared else ""
    with db.transaction():
        return db.execute(
            "UPDATE deliveries SET state = 'uncertain', reason = ?, updated_at = ? "
            f"WHERE kind = ? AND state = 'sending'{lease}",
            (INTERRUPTED, utc_now_iso(), DM_KIND, *((now,) if shared else ()))).rowcount


@dataclass
class DmReport:
    """What one fan-out did (counts of ledger changes)."""

    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: int = 0
    removed: int = 0  # followers who blocked the bot or are gone: forgotten
    rate_limited: int = 0
    retried: int = 0
    error: str = ""
    left: int = 0  # DM rows still pending after it
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        fields: dict[str, object] = {
            name: getattr(self, name) for name in (
                "sent", "failed", "uncertain", "skipped", "removed", "rate_limited", "left")
            if getattr(self, name)}
        if self.error:
            fields["error"] = self.error
        return fields


async def wait_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, cut short by a stop request (a 429's pause may be long)."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


class TokenBucket:
    """Slots ``interval`` apart over all followers, handed out in order; a pause (a 429)
    moves every slot not yet used past its end."""

    def __init__(self, per_second: float, clock: Callable[[], float]) -> None:
        self._interval = 1.0 / per_second
        self._clock = clock
        self._next = 0.0
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)
        self._next = max(self._next, self.paused_until)

    async def take(self, stop: asyncio.Event) -> bool:
        """Wait for a slot; False when a stop came meanwhile."""
        while not stop.is_set():
            now = self._clock()
            slot = max(now, self._next, self.paused_until)
            self._next = slot + self._interval
            await wait_unless_stopped(stop, slot - now)
            if self.paused_until <= self._clock():
                return not stop.is_set()
        return False


@dataclass
class _Queue:
    """The due DM rows handed to the senders: each once, never two at once to one chat."""

    rows: deque[tuple[str, str]] = field(default_factory=deque)
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # chats with a DM in flight
    exhausted: bool = False


class FanOutSender:
    def __init__(self, store: Store, sender: Sender, config: Config, *,
                 owner: str, stop: asyncio.Event | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._db = store.db
        self._sender = sender
        self._config = config
        self._settings = config.follower_settings
        self._owner = owner
        self._stop = stop if stop is not None else asyncio.Event()
        self._clock = clock
        self._lease = config.state.lease_seconds
        self._bucket = TokenBucket(config.followers.per_second, clock)
        self._last_sent: dict[str, float] = {}
        self._messages: dict[str, Message | str] = {}  # per article: its DM, or why none
        self._queue = _Queue()
        self.report = DmReport()

    async def run(self, lookup: Lookup, deadline: float | None = None) -> DmReport:
        """Send the due DMs until none is left, a stop request, or ``deadline``."""
        started = time.perf_counter()
        self.report.uncertain += recover_dms(self._db, self._db.shared, self._clock())
        if has_due_dms(self._db, self._clock()):
            try:
                await self._sender.start()
            except SendError as exc:
                self.report.error = f"Telegram unavailable: {exc.reason}"
            else:
                await asyncio.gather(*(self._worker(lookup, deadline) for _ in range(SENDERS)))
        self.report.left = dm_counts(self._db).get("pending", 0)
        self.report.seconds = time.perf_counter() - started
        if self.report.sent or self.report.failed or self.report.removed:
            event(log, logging.INFO, "dms_done", **self.report.summary())
        return self.report

    def _stopped(self, deadline: float | None) -> bool:
        return (self._stop.is_set() or bool(self.report.error)
                or (deadline is not None and self._clock() >= deadline))

    async def _worker(self, lookup: Lookup, deadline: float | None) -> None:
        while not self._stopped(deadline):
            row = self._next_row()
            if row is None:
                paused = self._bucket.paused_until - self._clock()
                if self._queue.exhausted and not self._queue.in_flight and paused <= 0:
                    return
                # Others' DMs in flight may come back, a 429's retry is due after its pause.
                await wait_unless_stopped(self._stop, max(0.05, min(paused + 0.01, 1.0)))
                continue
            article_id, chat_id = row
            try:
                await self._one(article_id, chat_id, lookup)
            finally:
                self._queue.in_flight.discard(row)
                self._queue.busy.discard(chat_id)

    def _next_row(self) -> tuple[str, str] | None:
        """The oldest due row not in flight whose chat has none in flight."""
        queue = self._queue
        for _ in range(2):
            for row in list(queue.rows):
                if row[1] not in queue.busy:
                    queue.rows.remove(row)
                    queue.in_flight.add(row)
                    queue.busy.add(row[1])
                    return row
            self._refill()
            if not queue.rows:
                return None
        return None

    def _refill(self) -> None:
        queue = self._queue
        rows = self._db.execute(
            "SELECT article_id, chat_id FROM deliveries WHERE kind = ? AND state = 'pending' "
            "AND next_attempt_at <= ? ORDER BY published_at, article_id, chat_id LIMIT ?",
            (DM_KIND, self._clock(), BATCH + len(queue.in_flight))).fetchall()
        known = set(queue.rows)
        fresh = [(str(a), str(c)) for a, c in rows
                 if (a, c) not in queue.in_flight and (a, c) not in known]
        queue.rows.extend(fresh)
        queue.exhausted = not fresh and not queue.rows

    async def _one(self, article_id: str, chat_id: str, lookup: Lookup) -> None:
        """One DM: paced, claimed, sent, recorded."""
        wait = self._last_sent.get(chat_id, 0.0) + PER_CHAT_INTERVAL - self._clock()
        await wait_unless_stopped(self._stop, wait)
        if not await self._bucket.take(self._stop):
            return
        now = self._clock()
        item = self._store.claim_pair(article_id, chat_id, now, self._owner, now + self._lease)
        if item is None:  # another instance took it, or the follower is gone
            return
        message = self._message_for(article_id, lookup)
        if isinstance(message, str):
            self._store.mark_skipped(article_id, chat_id, message, owner=self._owner)
            self.report.skipped += 1
            return
        self._last_sent[chat_id] = now
        await self._send(article_id, chat_id, message)

    def _message_for(self, article_id: str, lookup: Lookup) -> Message | str:
        """The article's DM (rendered once per fan-out), or why it is not sent."""
        if article_id not in self._messages:
            article = lookup(article_id)
            self._messages[article_id] = self._render(article)
        return self._messages[article_id]

    def _render(self, article: Article | None) -> Message | str:
        from publisher.messages import render_message

        if article is None:
            return "no longer selected"
        hours = self._settings.max_age_hours
        if hours and article.published_at < datetime.now(UTC) - timedelta(hours=hours):
            return f"older than followers.max_age_hours ({hours:g} h)"
        try:
            return render_message(article, self._settings, timezone=self._config.telegram.timezone,
                                  key="followers")
        except RenderError as exc:
            return f"cannot be rendered: {exc}"

    async def _send(self, article_id: str, chat_id: str, message: Message) -> None:
        owner = self._owner
        try:
            message_id = await asyncio.wait_for(self._post(chat_id, message), self._lease * 0.9)
        except TimeoutError:
            self._store.mark_uncertain(article_id, chat_id, "no answer within the lease", owner)
            self.report.uncertain += 1
        except RateLimited as exc:
            wait = (exc.retry_after if exc.retry_after is not None and exc.retry_after >= 0
                    else self._config.telegram.max_wait_seconds) + random.uniform(0.05, 0.2)
            self._store.mark_retry(article_id, chat_id, exc.reason, self._clock() + wait,
                                   count_attempt=False, owner=owner)
            self._bucket.pause(wait)
            self.report.rate_limited += 1
            event(log, logging.WARNING, "dm_rate_limited", retry_after=round(wait, 3))
        except Ambiguous as exc:
            self._store.mark_uncertain(article_id, chat_id, exc.reason, owner)
            self.report.uncertain += 1
        except ChatForbidden as exc:
            self._forbidden(article_id, chat_id, exc.reason)
        except Unauthorized as exc:
            self._store.mark_retry(article_id, chat_id, exc.reason, 0, count_attempt=False,
                                   owner=owner)
            self.report.error = exc.reason
        except Rejected as exc:
            self._store.mark_failed(article_id, chat_id, exc.reason, owner)
            self.report.failed += 1
            event(log, logging.ERROR, "dm_failed", article=article_id, reason=exc.reason)
        except NotSent as exc:  # provably not sent: later, with a backoff
            attempts = self._attempts(article_id, chat_id)
            delay = min(2.0 ** attempts, MAX_BACKOFF_SECONDS) * random.uniform(0.8, 1.2)
            self._store.mark_retry(article_id, chat_id, exc.reason, self._clock() + delay,
                                   owner=owner)
            self.report.retried += 1
        except Exception as exc:  # a bug or a surprise: the request may have left
            self._store.mark_uncertain(article_id, chat_id,
                                       f"unexpected error: {type(exc).__name__}", owner)
            self.report.uncertain += 1
            raise
        else:
            self._mark_sent(article_id, chat_id, message_id)

    def _attempts(self, article_id: str, chat_id: str) -> int:
        row = self._db.execute("SELECT attempts FROM deliveries WHERE article_id = ? AND "
                               "chat_id = ?", (article_id, chat_id)).fetchone()
        return int(row[0]) if row else 1

    def _forbidden(self, article_id: str, chat_id: str, reason: str) -> None:
        from publisher.followers import forget

        if any(gone in reason.lower() for gone in GONE_REASONS):
            with self._db.transaction():
                forget(self._db, chat_id)
            self.report.removed += 1
            # No chat id: who follows is the follower's business.
            event(log, logging.INFO, "follower_removed", reason=reason)
            return
        self._store.mark_failed(article_id, chat_id, reason, self._owner)
        self.report.failed += 1
        event(log, logging.ERROR, "dm_failed", article=article_id, reason=reason)

    def _mark_sent(self, article_id: str, chat_id: str, message_id: int) -> None:
        """Sent: recorded, unless the follower was forgotten meanwhile (their rows gone)."""
        stamp = utc_now_iso()
        with self._db.transaction():
            self._db.execute(
                "UPDATE deliveries SET state = 'sent', message_id = ?, sent_to = ?, sent_at = ?, "
                "reason = '', updated_at = ? WHERE article_id = ? AND chat_id = ?",
                (message_id, chat_id, stamp, stamp, article_id, chat_id))
        self.report.sent += 1

    async def _post(self, chat_id: str, message: Message) -> int:
        options = {"silent": True} if message.silent else {}
        if message.photo_url:
            with contextlib.suppress(PhotoRejected):
                return await self._sender.send_photo(chat_id, message.photo_url, message.html,
                                                     message.buttons, **options)
        try:
            return await self._sender.send_text(chat_id, message.text_html, html=True,
                                                buttons=message.buttons,
                                                preview_url=message.preview_url, **options)
        except EntitiesRejected:
            return await self._sender.send_text(chat_id, message.plain, html=False,
                                                buttons=message.buttons,
                                                preview_url=message.preview_url, **options)
