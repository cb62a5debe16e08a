"""The followers' updates in: long polling (``getUpdates``) or a webhook, one handler for both.

Each update is handled in one transaction with what records it as handled: the
``getUpdates`` offset (``followers.commit_offset``), or, for a webhook, its inbox row's body
cleared. The replies go out after the commit: a crash before it handles the update again
(once: nothing of it was kept), a crash after it loses at most a reply, never doubles a
subscription.

Polling: ``deleteWebhook`` first (Telegram answers ``getUpdates`` 409 while a webhook is
set); a 409 (another poller) backs off and is logged once; network errors back off up to
a minute and never end the service. On PostgreSQL, several instances share the state and
exactly one polls: the holder of a session-level advisory lock on a connection of its own
(``PollLeader``); when it dies, its session and lock go with it and another instance takes
over. SQLite admits one instance per state anyway (``state.instance_lock``).

Webhook: ``setWebhook(url, secret_token)`` at start; the ``[server]`` listener takes the
POSTs at the URL's path (``WebhookEndpoint``): the secret header checked in constant time
(missing 401, wrong 403, nothing stored), the body bounded, the update stored by its id
(again is a no-op) and answered 200 at once; the service drains the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from publisher import followers
from publisher.bot import (
    AnswerCallback,
    BotSettings,
    EditKeyboard,
    Effect,
    FollowerBot,
    SendText,
    TopicIndex,
    describe_effects,
    update_id_of,
)
from publisher.catalog import Catalog
from publisher.config import FollowersConfig
from publisher.db import Database, connect, is_postgres_url
from publisher.delivery import BotInfo
from publisher.errors import (
    ChatForbidden,
    PollConflict,
    PublisherError,
    RateLimited,
    SendError,
    StateError,
    Unauthorized,
)
from publisher.logs import event
from publisher.messages import CallbackButton

log = logging.getLogger(__name__)

POLL_LIMIT = 100
MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
CONFLICT_BACKOFF_SECONDS = 10.0
LEADER_RETRY_SECONDS = 5.0
INBOX_CHECK_SECONDS = 5.0  # the inbox is read this often even without a nudge
HANDLED_KEPT_SECONDS = 86_400.0  # a handled webhook update's id is kept this long
MAX_WEBHOOK_BODY = 256 * 1024  # an update is a few KB; Telegram's largest are far below
LEADER_LOCK = "followers.poller"
OFFSET_LOCK = "followers.offset"
REPLY_ATTEMPTS = 3  # a reply refused with 429 is tried again after the wait asked for
MAX_REPLY_WAIT_SECONDS = 5.0  # longer waits drop the reply: the follower can ask again


@runtime_checkable
class BotSender(Protocol):
    """What the bot needs of a sender (``TelegramSender`` has it)."""

    async def get_updates(self, offset: int, timeout: int, limit: int = 100
                          ) -> list[dict[str, Any]]: ...

    async def answer_callback_query(self, callback_query_id: str, text: str = "") -> None: ...

    async def send_keyboard(self, chat_id: str, text_html: str,
                            buttons: Sequence[Sequence[CallbackButton]]) -> int: ...

    async def edit_keyboard(self, chat_id: str, message_id: int,
                            buttons: Sequence[Sequence[CallbackButton]]) -> None: ...

    async def set_webhook(self, url: str, secret: str) -> None: ...

    async def delete_webhook(self) -> None: ...

    async def get_me(self) -> BotInfo: ...


class CurrentSender:
    """The service's sender as it is at each call: a SIGHUP that changes ``[telegram]``
    replaces (and closes) it, and the bot's long-running loops must follow."""

    def __init__(self, current: Callable[[], BotSender]) -> None:
        self._current = current

    async def get_updates(self, offset: int, timeout: int, limit: int = 100
                          ) -> list[dict[str, Any]]:
        return await self._current().get_updates(offset, timeout, limit)

    async def answer_callback_query(self, callback_query_id: str, text: str = "") -> None:
        await self._current().answer_callback_query(callback_query_id, text)

    async def send_keyboard(self, chat_id: str, text_html: str,
                            buttons: Sequence[Sequence[CallbackButton]]) -> int:
        return await self._current().send_keyboard(chat_id, text_html, buttons)

    async def edit_keyboard(self, chat_id: str, message_id: int,
                            buttons: Sequence[Sequence[CallbackButton]]) -> None:
        await self._current().edit_keyboard(chat_id, message_id, buttons)

    async def set_webhook(self, url: str, secret: str) -> None:
        await self._current().set_webhook(url, secret)

    async def delete_webhook(self) -> None:
        await self._current().delete_webhook()

    async def get_me(self) -> BotInfo:
        return await self._current().get_me()


# -- one update -----------------------------------------------------------------------------


def handle_polled(db: Database, bot: FollowerBot, update: Mapping[str, Any],
                  now: float | None = None) -> list[Effect]:
    """A polled update's effect and its offset, in one transaction; its replies. The offset
    lock makes a second poller (during a takeover) wait, then find the update handled."""
    update_id = update_id_of(update)
    if update_id is None:
        return []

    def handle() -> list[Effect]:
        db.lock_in_transaction(OFFSET_LOCK)
        if update_id < followers.read_offset(db):
            return []  # handled already (another poller got it first)
        effects = bot.handle(db, update, now)
        followers.commit_offset(db, update_id)
        return effects

    return _guarded(db, update_id, handle, lambda: followers.commit_offset(db, update_id))


def _guarded(db: Database, update_id: int, handle: Callable[[], list[Effect]],
             skip: Callable[[], object]) -> list[Effect]:
    """``handle`` in a transaction. An update it fails on for a reason of its own (not the
    state database's) is skipped, its effect rolled back: one odd update must not stop
    every later one, retried for ever."""
    try:
        with db.transaction():
            return handle()
    except StateError:
        raise
    except Exception as exc:
        event(log, logging.ERROR, "follower_update_failed", update_id=update_id,
              error=type(exc).__name__)
        with db.transaction():
            skip()
        return []


async def send_effects(sender: BotSender, effects: Sequence[Effect]) -> None:
    """The replies, in order; one that fails is logged (never its text) and dropped: the
    follower can ask again. Callback answers first come first: Telegram wants them fast."""
    for effect in effects:
        for attempt in range(REPLY_ATTEMPTS):
            try:
                await _send(sender, effect)
                break
            except RateLimited as exc:  # a private chat takes about one message a second
                wait = min(exc.retry_after or 1.0, MAX_REPLY_WAIT_SECONDS)
                if attempt + 1 == REPLY_ATTEMPTS:
                    event(log, logging.WARNING, "follower_reply_failed",
                          kind=type(effect).__name__, reason=exc.reason)
                    break
                await asyncio.sleep(wait)
            except SendError as exc:
                level = logging.INFO if isinstance(exc, ChatForbidden) else logging.WARNING
                event(log, level, "follower_reply_failed", kind=type(effect).__name__,
                      reason=exc.reason)
                break


async def _send(sender: BotSender, effect: Effect) -> None:
    match effect:
        case AnswerCallback():
            await sender.answer_callback_query(effect.callback_id, effect.text)
        case EditKeyboard():
            await sender.edit_keyboard(effect.chat_id, effect.message_id, effect.buttons)
        case SendText():
            await sender.send_keyboard(effect.chat_id, effect.html, effect.buttons)


# -- one poller among instances -------------------------------------------------------------


class PollLeader:
    """On PostgreSQL: the right to poll, as a session advisory lock on a connection of its
    own (the service's connection must stay free for its transactions). On SQLite: always
    held (the instance lock already admits one process)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._db: Database | None = None
        self.held = not is_postgres_url(url)

    def try_take(self) -> bool:
        if self.held:
            return True
        try:
            if self._db is None:
                self._db = connect(self._url)
            row = self._db.execute("SELECT pg_try_advisory_lock(hashtextextended("
                                   "current_schema() || ':publisher:' || ?, 0))",
                                   (LEADER_LOCK,)).fetchone()
        except PublisherError as exc:
            event(log, logging.WARNING, "poller_lock_failed", reason=str(exc))
            self.release()
            return False
        self.held = bool(row[0])
        return self.held

    def check(self) -> bool:
        """Still ours: the connection holding the lock is alive."""
        if self._db is None:
            return self.held
        try:
            self._db.execute("SELECT 1")
        except PublisherError:
            self.release()
        return self.held

    def release(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()  # the session ends: its advisory lock with it
            self._db = None
            self.held = False


class Poller:
    """``getUpdates`` in a loop until ``stop``; see the module's docstring."""

    def __init__(self, db: Database, sender: BotSender, bot: FollowerBot, leader: PollLeader,
                 timeout: int, stop: asyncio.Event) -> None:
        self._db = db
        self._sender = sender
        self._bot = bot
        self._leader = leader
        self._timeout = timeout
        self._stop = stop
        self._backoff = MIN_BACKOFF_SECONDS
        self._conflicted = False
        self._webhook_deleted = False

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                if not await asyncio.to_thread(self._leader.try_take):
                    await self._pause(LEADER_RETRY_SECONDS)
                    continue
                await self._poll_once()
        finally:
            await asyncio.to_thread(self._leader.release)

    async def _poll_once(self) -> None:
        try:
            if not self._webhook_deleted:
                await self._sender.delete_webhook()
                self._webhook_deleted = True
                event(log, logging.INFO, "followers_polling", timeout=self._timeout)
            updates = await self._until_stopped(self._sender.get_updates(
                followers.read_offset(self._db), self._timeout, POLL_LIMIT))
            if updates is None or not await asyncio.to_thread(self._leader.check):
                return
            self._conflicted = False
            self._backoff = MIN_BACKOFF_SECONDS
            for update in updates:
                effects = handle_polled(self._db, self._bot, update)
                event(log, logging.DEBUG, "follower_update", replies=describe_effects(effects))
                await send_effects(self._sender, effects)
        except PollConflict as exc:
            if not self._conflicted:
                event(log, logging.WARNING, "followers_poll_conflict", reason=exc.reason)
                self._conflicted = True
            self._webhook_deleted = False
            await self._pause(CONFLICT_BACKOFF_SECONDS)
        except RateLimited as exc:
            await self._pause(min(exc.retry_after or self._backoff, MAX_BACKOFF_SECONDS))
        except Unauthorized as exc:
            event(log, logging.ERROR, "followers_poll_failed", reason=exc.reason)
            await self._pause(MAX_BACKOFF_SECONDS)
        except PublisherError as exc:  # the network, Telegram, the state database
            event(log, logging.WARNING, "followers_poll_failed", reason=str(exc),
                  retry_in=self._backoff)
            await self._back_off()
        except Exception as exc:  # a sender closed by a reload mid-poll, a bug: never the end
            event(log, logging.ERROR, "followers_poll_failed", error=type(exc).__name__,
                  retry_in=self._backoff)
            await self._back_off()

    async def _back_off(self) -> None:
        await self._pause(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    async def _until_stopped(self, request: Awaitable[list[dict[str, Any]]]
                             ) -> list[dict[str, Any]] | None:
        """The long poll's answer, or None when ``stop`` came first (the poll is abandoned:
        what it would have returned comes again, its offset not confirmed)."""
        poll = asyncio.ensure_future(request)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll
        return poll.result() if not poll.cancelled() else None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


# -- the webhook ----------------------------------------------------------------------------


def store_update(db: Database, update: Mapping[str, Any], now: float) -> bool:
    """Keep a webhook's update until it is handled; False when it was there already."""
    update_id = update_id_of(update)
    if update_id is None:
        return False
    cursor = db.execute(
        "INSERT INTO follower_updates (update_id, body, received_at) VALUES (?, ?, ?) "
        "ON CONFLICT (update_id) DO NOTHING", (update_id, json.dumps(update), now))
    return cursor.rowcount > 0


def handle_inbox(db: Database, bot: FollowerBot, now: float | None = None,
                 limit: int = POLL_LIMIT) -> list[Effect]:
    """The stored updates not handled yet, oldest first, each in its own transaction with
    its body cleared (another instance draining too finds it taken); their replies."""
    now = time.time() if now is None else now
    rows = db.execute("SELECT update_id FROM follower_updates WHERE body IS NOT NULL "
                      "ORDER BY update_id LIMIT ?", (limit,)).fetchall()
    effects: list[Effect] = []
    for (update_id,) in rows:
        effects += _guarded(db, update_id, functools.partial(_handle_stored, db, bot,
                                                             update_id, now),
                            functools.partial(_clear_stored, db, update_id))
    db.execute("DELETE FROM follower_updates WHERE body IS NULL AND received_at < ?",
               (now - HANDLED_KEPT_SECONDS,))
    return effects


def _handle_stored(db: Database, bot: FollowerBot, update_id: int, now: float) -> list[Effect]:
    row = db.execute("SELECT body FROM follower_updates WHERE update_id = ? "
                     "AND body IS NOT NULL", (update_id,)).fetchone()
    if row is None or not _clear_stored(db, update_id):
        return []  # another instance handled it
    update = json.loads(row[0])
    return bot.handle(db, update, now) if isinstance(update, dict) else []


def _clear_stored(db: Database, update_id: int) -> bool:
    """Mark a stored update handled (its text gone); False when it was already."""
    return db.execute("UPDATE follower_updates SET body = NULL WHERE update_id = ? "
                      "AND body IS NOT NULL", (update_id,)).rowcount > 0


Response = tuple[int, list[tuple[bytes, bytes]], bytes]


class WebhookEndpoint:
    """POSTs of Telegram's updates at ``path``, for the ``[server]`` listener's thread.

    ``store`` keeps an update (in a worker thread, on a connection of its own: it
    serialises its calls); ``stored`` is called after a new one was kept (to nudge the
    service's drain)."""

    def __init__(self, url: str, secret: str, store: Callable[[dict[str, Any]], bool],
                 stored: Callable[[], None]) -> None:
        self.path = urlsplit(url).path or "/"
        self._secret = secret.encode()
        self._store = store
        self._stored = stored

    async def respond(self, scope: Mapping[str, Any], receive: Any) -> Response:
        given = _header(scope, b"x-telegram-bot-api-secret-token")
        if given is None:
            return _plain(401, b"secret token missing\n")
        if not hmac.compare_digest(given, self._secret):
            event(log, logging.WARNING, "webhook_refused", reason="wrong secret token")
            return _plain(403, b"wrong secret token\n")
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_WEBHOOK_BODY):
            return _plain(413, b"too large\n")
        body = await _read_body(receive, MAX_WEBHOOK_BODY)
        if body is None:
            return _plain(413, b"too large\n")
        try:
            update = json.loads(body)
        except ValueError:
            return _plain(400, b"not JSON\n")
        if not isinstance(update, dict) or update_id_of(update) is None:
            return _plain(400, b"not an update\n")
        try:
            new = await asyncio.to_thread(self._store, update)
        except PublisherError as exc:  # Telegram sends it again on an error answer
            event(log, logging.WARNING, "webhook_store_failed", reason=str(exc))
            return _plain(503, b"cannot store it now\n")
        if new:
            self._stored()
        return _plain(200, b"ok\n")


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def _read_body(receive: Any, limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _plain(status: int, body: bytes) -> Response:
    return status, [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store")], body


class WebhookReceiver:
    """The service's side of the webhook: ``setWebhook`` at start (retried until it works),
    then the inbox drained whenever the endpoint stores an update (and every few seconds)."""

    def __init__(self, db: Database, sender: BotSender, bot: FollowerBot, url: str,
                 secret: str, stop: asyncio.Event) -> None:
        self._db = db
        self._sender = sender
        self._bot = bot
        self._url = url
        self._secret = secret
        self._stop = stop
        self.nudge = asyncio.Event()

    async def run(self) -> None:
        await self._set_webhook()
        while not self._stop.is_set():
            try:
                effects = handle_inbox(self._db, self._bot)
                await send_effects(self._sender, effects)
            except PublisherError as exc:
                event(log, logging.WARNING, "webhook_inbox_failed", reason=str(exc))
            except Exception as exc:  # a sender closed by a reload mid-reply, a bug
                event(log, logging.ERROR, "webhook_inbox_failed", error=type(exc).__name__)
            self.nudge.clear()
            await _first_of(self.nudge, self._stop, INBOX_CHECK_SECONDS)

    async def _set_webhook(self) -> None:
        backoff = MIN_BACKOFF_SECONDS
        while not self._stop.is_set():
            try:
                await self._sender.set_webhook(self._url, self._secret)
                event(log, logging.INFO, "followers_webhook_set")
                return
            except SendError as exc:  # its reason never holds the secret: it is not echoed
                event(log, logging.WARNING, "followers_webhook_failed", reason=exc.reason,
                      retry_in=backoff)
            await _first_of(self._stop, self._stop, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


async def _first_of(one: asyncio.Event, other: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


# -- in the service -------------------------------------------------------------------------


class FollowersSide:
    """The bot's part of ``publisher run``: the poller or the webhook receiver as a task of
    the service's loop, with the webhook endpoint for its listener. ``db`` is the service's
    state connection (used in the loop's thread); the webhook's store has its own."""

    def __init__(self, config: FollowersConfig, state_url: str, db: Database,
                 sender: BotSender) -> None:
        self._config = config
        self._state_url = state_url
        self._db = db
        self._sender = sender
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._bot = FollowerBot(TopicIndex(Catalog(db)), BotSettings.from_config(config))
        self._receiver: WebhookReceiver | None = None
        self._store_db: Database | None = None
        self._store_lock = threading.Lock()
        self.endpoint: WebhookEndpoint | None = None
        if config.webhook_url:
            self._receiver = WebhookReceiver(db, sender, self._bot, config.webhook_url,
                                             config.webhook_secret, self._stop)
            loop = asyncio.get_running_loop()
            nudge = self._receiver.nudge

            def stored() -> None:  # in the listener's thread
                loop.call_soon_threadsafe(nudge.set)

            self.endpoint = WebhookEndpoint(config.webhook_url, config.webhook_secret,
                                            self._store, stored)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, seconds: float) -> None:
        """Stop: the update being handled finishes (its replies may be cut short)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), seconds)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        with self._store_lock:
            if self._store_db is not None:
                self._store_db.close()
                self._store_db = None

    async def _run(self) -> None:
        await self._learn_username()
        if self._receiver is not None:
            await self._receiver.run()
            return
        poller = Poller(self._db, self._sender, self._bot, PollLeader(self._state_url),
                        self._config.poll_timeout_seconds, self._stop)
        await poller.run()

    async def _learn_username(self) -> None:
        """The bot's username (``/start@name``, the groups' answer): the config's, else
        getMe's, asked until Telegram answers."""
        if self._config.bot_username:
            return
        backoff = MIN_BACKOFF_SECONDS
        while not self._stop.is_set():
            try:
                me = await self._sender.get_me()
            except SendError as exc:
                event(log, logging.WARNING, "followers_getme_failed", reason=exc.reason)
                await _first_of(self._stop, self._stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            self._bot.settings = dataclasses.replace(self._bot.settings,
                                                     bot_username=me.username)
            return

    def _store(self, update: dict[str, Any]) -> bool:
        with self._store_lock:
            if self._store_db is None:
                self._store_db = connect(self._state_url, threaded=True)
            with self._store_db.transaction():
                return store_update(self._store_db, update, time.time())
