"""The network boundary: a small ``Sender`` interface and its Telegram implementation.

Everything python-telegram-bot raises is translated here into a ``SendError`` subclass that
says what the dispatcher needs to know: was the message posted, provably not posted, or
maybe posted. No token ever leaves this module inside an error message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeVar

import httpx

# Opt in to PTB's timedelta durations now; the int form warns (and fails tests) since 22.2.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
)
from telegram import error as tg_error
from telegram.constants import ParseMode
from telegram.request import HTTPXRequest

from publisher.errors import DeliveryError
from publisher.logs import redact_text, secret_variants
from publisher.messages import Button

log = logging.getLogger(__name__)

# What Telegram answers when it cannot fetch or use a photo URL.
PHOTO_ERRORS = (
    "wrong file identifier/http url specified",
    "failed to get http url content",
    "wrong type of the web page content",
    "wrong file identifier",
    "photo_invalid_dimensions",
    "image_process_failed",
)
ENTITY_ERROR = "can't parse entities"
# 400 answers about the chat, not the message: the chat stops for the run, posts stay pending.
CHAT_ERRORS = (
    "chat not found",
    "not enough rights",
    "need administrator rights",
    "chat_write_forbidden",
    "have no rights to send",
    "chat_restricted",
    "bot is not a member",
)


class SendError(DeliveryError):
    """A send did not end in a posted message. ``reason`` is safe to log and store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSent(SendError):
    """Provably not posted: the request never left, or Telegram answered with an error."""


class Ambiguous(SendError):
    """The request may have been posted: a timeout or a connection lost after it left."""


class RateLimited(SendError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Telegram asked to wait {retry_after:g} s (429)")
        self.retry_after = retry_after


class ChatMigrated(SendError):
    def __init__(self, new_chat_id: str) -> None:
        super().__init__(f"the chat moved to {new_chat_id}")
        self.new_chat_id = new_chat_id


class PhotoRejected(SendError):
    """Telegram refused the photo (URL not fetchable, not an image); text can still go."""


class EntitiesRejected(SendError):
    """Telegram could not parse our HTML: a bug in rendering; plain text can still go."""


class Rejected(SendError):
    """A 400 answer about this message: retrying the same request cannot help."""


class ChatForbidden(SendError):
    """403: the bot was removed from the chat or is not allowed to post there."""


class Unauthorized(SendError):
    """The bot token was refused: nothing can be sent until the operator fixes it."""


@dataclass(frozen=True, slots=True)
class BotInfo:
    """Who the bot is (``getMe``)."""

    id: int
    username: str


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """What ``getChat`` says of a chat: its numeric id is the ledger's key for it."""

    id: int
    type: str  # "channel", "supergroup", "group" or "private"
    title: str = ""
    username: str = ""  # without "@"; empty for a private channel or group
    # Whether plain members may send messages (a group's default permissions); None: unknown.
    members_can_send: bool | None = None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What ``getChatMember`` says of the bot in a chat."""

    status: str  # "creator", "administrator", "member", "restricted", "left" or "kicked"
    can_post_messages: bool | None = None  # administrators of channels
    can_send_messages: bool | None = None  # restricted members
    is_member: bool | None = None  # restricted members


T = TypeVar("T")


class Sender(Protocol):
    """Posts rendered messages; raises ``SendError`` subclasses; returns the message id."""

    async def start(self) -> None:
        """Prepare the connection; idempotent. Raises SendError when Telegram is unusable."""

    async def close(self) -> None: ...

    async def get_me(self) -> BotInfo:
        """The bot (after ``start``)."""

    async def get_chat(self, chat_id: str) -> ChatInfo:
        """The chat ``chat_id`` ("@username" or a numeric id) names; ``ChatMigrated`` when
        the group became a supergroup, ``ChatForbidden`` when it is unknown."""

    async def get_chat_member(self, chat_id: str, user_id: int) -> MemberInfo: ...

    async def send_photo(
        self, chat_id: str, photo_url: str, caption_html: str, buttons: Sequence[Sequence[Button]]
    ) -> int: ...

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        html: bool,
        buttons: Sequence[Sequence[Button]],
        preview_url: str | None,
    ) -> int: ...


class TelegramSender:
    """``Sender`` over the Bot API through python-telegram-bot, at any Bot API base URL."""

    def __init__(self, token: str, base_url: str, timeout: float = 20.0) -> None:
        self._token = token
        # One TLS context for both clients, made as httpx makes it (certifi, SSL_CERT_FILE):
        # loading the CA bundle twice cost more CPU than the rest of a push's start.
        tls = httpx.create_ssl_context()
        self._requests = tuple(
            HTTPXRequest(
                connection_pool_size=size,
                connect_timeout=min(timeout, 10.0),
                read_timeout=timeout,
                write_timeout=timeout,
                pool_timeout=min(timeout, 10.0),
                httpx_kwargs={"verify": tls},
            )
            for size in (8, 1)
        )
        self._bot = Bot(
            token, base_url=base_url, request=self._requests[0],
            get_updates_request=self._requests[1],
        )
        self._started = False

    async def start(self) -> None:
        """Idempotent; the first call asks getMe, proving the token and the URL."""
        if self._started:
            return
        try:
            await self._bot.initialize()
        except tg_error.TelegramError as exc:
            raise self._translate(exc) from None
        self._started = True

    async def close(self) -> None:
        """Close the HTTP clients, also when ``start`` failed half-way (PTB would not)."""
        if self._started:
            await self._bot.shutdown()
            self._started = False
        for request in self._requests:
            await request.shutdown()

    async def get_me(self) -> BotInfo:
        await self.start()
        me = self._bot.bot
        return BotInfo(id=me.id, username=me.username or "")

    async def get_chat(self, chat_id: str) -> ChatInfo:
        chat = await self._asked(self._bot.get_chat(chat_id=chat_id))
        permissions = chat.permissions
        return ChatInfo(
            id=chat.id,
            type=str(chat.type),
            title=chat.title or chat.full_name or "",
            username=chat.username or "",
            members_can_send=None if permissions is None else permissions.can_send_messages,
        )

    async def get_chat_member(self, chat_id: str, user_id: int) -> MemberInfo:
        member = await self._asked(self._bot.get_chat_member(chat_id=chat_id, user_id=user_id))
        return MemberInfo(
            status=str(member.status),
            can_post_messages=getattr(member, "can_post_messages", None),
            can_send_messages=getattr(member, "can_send_messages", None),
            is_member=getattr(member, "is_member", None),
        )

    async def _asked(self, request: Awaitable[T]) -> T:
        """The answer to a question (it changes nothing, so any failure is just an error)."""
        try:
            return await request
        except tg_error.TelegramError as exc:
            raise self._translate(exc) from None
        except Exception as exc:  # PTB choking on an odd answer
            raise NotSent(f"unreadable answer: {type(exc).__name__}") from exc

    async def send_photo(
        self, chat_id: str, photo_url: str, caption_html: str, buttons: Sequence[Sequence[Button]]
    ) -> int:
        return await self._posted(
            self._bot.send_photo(
                chat_id=chat_id,
                photo=photo_url,
                caption=caption_html,
                parse_mode=ParseMode.HTML,
                reply_markup=_keyboard(buttons),
            ),
            photo=True,
        )

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        html: bool,
        buttons: Sequence[Sequence[Button]],
        preview_url: str | None,
    ) -> int:
        preview = (
            LinkPreviewOptions(url=preview_url, prefer_large_media=True)
            if preview_url
            else LinkPreviewOptions(is_disabled=True)
        )
        return await self._posted(
            self._bot.send_message(
                chat_id=chat_id,
                text=text,
                parse_mode=ParseMode.HTML if html else None,
                reply_markup=_keyboard(buttons),
                link_preview_options=preview,
            )
        )

    async def _posted(self, request: Awaitable[Message], *, photo: bool = False) -> int:
        """The message id of a send, or the translated reason it did not (surely) happen."""
        try:
            message = await request
        except tg_error.TelegramError as exc:
            raise self._translate(exc, photo=photo) from None
        except Exception as exc:  # PTB choking on an odd answer: it may have been posted
            raise Ambiguous(f"unreadable answer: {type(exc).__name__}") from exc
        return message.message_id

    def _translate(self, exc: tg_error.TelegramError, *, photo: bool = False) -> SendError:
        """PTB's exception to ours. Order matters: TimedOut and BadRequest are NetworkErrors."""
        reason = self._redact(_first_line(exc.message))
        match exc:
            case tg_error.RetryAfter():
                return RateLimited(_retry_after_seconds(exc))
            case tg_error.ChatMigrated():
                return ChatMigrated(str(exc.new_chat_id))
            case tg_error.InvalidToken():
                return Unauthorized(f"the bot token was refused: {reason}")
            case tg_error.Forbidden():
                return ChatForbidden(reason)
            case tg_error.TimedOut():
                return self._timed_out(exc, reason)
            case tg_error.BadRequest():
                return _bad_request(reason, photo=photo)
            case tg_error.NetworkError():
                return self._network_error(exc, reason)
        # Anything else (an answer that could not be read, a 2xx without a result...) came
        # back after the request reached Telegram: it may have been posted.
        return Ambiguous(f"{type(exc).__name__}: {reason}")

    def _timed_out(self, exc: tg_error.TimedOut, reason: str) -> SendError:
        cause = exc.__cause__
        if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout):
            return NotSent(f"timed out before the request left ({type(cause).__name__})")
        return Ambiguous(f"no answer in time ({type(cause).__name__ if cause else reason})")

    def _network_error(self, exc: tg_error.NetworkError, reason: str) -> SendError:
        cause = exc.__cause__
        if cause is None or isinstance(cause, tg_error.TelegramError):
            # An HTTP error answer (5xx, a proxy's HTML page): the message was not posted.
            return NotSent(f"Telegram answered with an error: {reason}")
        if isinstance(cause, httpx.ConnectError | httpx.UnsupportedProtocol | httpx.InvalidURL):
            return NotSent(f"cannot connect: {type(cause).__name__}")
        return Ambiguous(f"connection lost after sending: {type(cause).__name__}")

    def _redact(self, text: str) -> str:
        return redact_text(text, secret_variants(self._token))


def _first_line(message: str, limit: int = 300) -> str:
    """PTB appends whole response bodies (HTML error pages) to messages; keep the gist."""
    gist = message.split(". Parsing the server response", 1)[0]
    gist = " ".join(gist.split())
    return gist if len(gist) <= limit else gist[: limit - 1] + "…"


def _bad_request(reason: str, *, photo: bool) -> SendError:
    lowered = reason.lower()
    if photo and any(marker in lowered for marker in PHOTO_ERRORS):
        return PhotoRejected(reason)
    if ENTITY_ERROR in lowered:
        return EntitiesRejected(reason)
    if any(marker in lowered for marker in CHAT_ERRORS):
        return ChatForbidden(reason)
    return Rejected(reason)


def _retry_after_seconds(exc: tg_error.RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _keyboard(buttons: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    rows = [
        [InlineKeyboardButton(text=button.text, url=button.url) for button in row]
        for row in buttons
        if row
    ]
    return InlineKeyboardMarkup(rows) if rows else None
