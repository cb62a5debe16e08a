"""The network boundary: a small ``Sender`` interface and its Telegram implementation.

Everything python-telegram-bot raises is translated here into a ``SendError`` subclass that
says what the dispatcher needs to know: was the message posted, provably not posted, or
maybe posted. No token ever leaves this module inside an error message.

The HTTP exchange is our own ``BoundedRequest`` (python-telegram-bot's ``BaseRequest`` over an
httpx stream), because an answer must be judged before PTB reads it: every request has an
overall deadline (a trickling answer never holds a push), answers are size-capped (a huge one
never fills the memory), whether the request had started to leave is known (so a failure is
"not sent" or "maybe sent" by fact, not by guess), and a 200 answer must be a well-formed
``{"ok": true, "result": ...}`` envelope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx

# Opt in to PTB's timedelta durations now; the int form warns (and fails tests) since 22.2.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LinkPreviewOptions,
    Message,
)
from telegram import error as tg_error
from telegram.constants import ParseMode
from telegram.request import BaseRequest, RequestData

# The send errors live in publisher.errors; imported from here too, as before.
from publisher.errors import Ambiguous as Ambiguous
from publisher.errors import ChatForbidden as ChatForbidden
from publisher.errors import ChatMigrated as ChatMigrated
from publisher.errors import EntitiesRejected as EntitiesRejected
from publisher.errors import NotSent as NotSent
from publisher.errors import PhotoRejected as PhotoRejected
from publisher.errors import RateLimited as RateLimited
from publisher.errors import Rejected as Rejected
from publisher.errors import SendError as SendError
from publisher.errors import Unauthorized as Unauthorized
from publisher.errors import Unavailable as Unavailable
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
    "message thread not found",  # a forum topic that does not exist (or was deleted)
    "topic_closed",
    "topic_deleted",
)
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # Bot API answers to what we send are a few KB
MAX_CONNECT_SECONDS = 10.0
CONNECTIONS = 8  # chats are sent to concurrently, one request in flight each


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
    is_forum: bool = False  # a supergroup with topics: a destination may be one of them


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What ``getChatMember`` says of the bot in a chat."""

    status: str  # "creator", "administrator", "member", "restricted", "left" or "kicked"
    can_post_messages: bool | None = None  # administrators of channels
    can_send_messages: bool | None = None  # restricted members
    is_member: bool | None = None  # restricted members


T = TypeVar("T")


# -- the HTTP exchange -------------------------------------------------------------------------


class ExchangeFailed(tg_error.TelegramError):
    """No usable answer. ``left``: the request had started to leave, so it may have been
    carried out; otherwise it provably was not."""

    def __init__(self, message: str, *, left: bool) -> None:
        super().__init__(message)
        self.left = left


class RefusedAnswer(tg_error.TelegramError):
    """A 2xx answer saying ``"ok": false``: nothing was done."""


class FloodWait(tg_error.TelegramError):
    """An error answer carrying ``parameters.retry_after``, as a number of seconds or None."""

    def __init__(self, seconds: float | None, asked: object) -> None:
        super().__init__(f"retry after {asked!r}")
        self.seconds = seconds
        self.asked = asked


class TokenRefused(tg_error.TelegramError):
    """401 or 404 at the bot's URL: the token (or telegram.api_base_url) is wrong."""


class _Progress:
    """Whether a request has started to leave, from httpcore's trace events."""

    def __init__(self) -> None:
        self.left = False

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("send_request_headers.started"):
            self.left = True


class BoundedRequest(BaseRequest):
    """PTB's transport over httpx, with an overall deadline and a cap on the answer's size.

    Failures are raised as ``ExchangeFailed`` (with whether the request had left),
    ``RefusedAnswer``, ``FloodWait`` or ``TokenRefused``; error answers without those are
    handed to PTB, which turns them into its usual exceptions.
    """

    def __init__(self, deadline: float, *, max_bytes: int = MAX_ANSWER_BYTES,
                 verify: Any = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._verify = verify
        self._transport = transport  # None: httpx's own connection pool
        self._client: httpx.AsyncClient | None = None

    @property
    def read_timeout(self) -> float:
        return self._deadline

    async def initialize(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._deadline,
                                      connect=min(self._deadline, MAX_CONNECT_SECONDS),
                                      pool=min(self._deadline, MAX_CONNECT_SECONDS)),
                limits=httpx.Limits(max_connections=CONNECTIONS,
                                    max_keepalive_connections=CONNECTIONS),
                verify=self._verify,
                headers={"Accept-Encoding": ACCEPT_ENCODING},
                transport=self._transport,
            )

    async def shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        """PTB's, without its log line: PTB logs the whole unreadable body with a traceback."""
        try:
            return json.loads(payload.decode("utf-8", "replace"))  # type: ignore[no-any-return]
        except ValueError:
            raise tg_error.TelegramError("Invalid server response") from None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """One exchange within the deadline; the timeout arguments are PTB's per-call
        overrides, which this bot never passes: the deadline covers everything."""
        await self.initialize()
        progress = _Progress()
        try:
            async with asyncio.timeout(self._deadline):
                status, body = await self._exchange(url, method, request_data, progress)
        except TimeoutError:
            raise ExchangeFailed(f"no complete answer within {self._deadline:g} s",
                                 left=progress.left) from None
        except httpx.HTTPError as exc:
            raise ExchangeFailed(_describe(exc, progress.left), left=_may_have_left(
                exc, progress.left)) from None
        if 200 <= status <= 299:
            _check_envelope(body, url.rpartition("/")[2])
        else:
            _check_error_answer(status, body)
        return status, body

    async def _exchange(self, url: str, method: str, request_data: RequestData | None,
                        progress: _Progress) -> tuple[int, bytes]:
        assert self._client is not None
        request = self._client.build_request(
            method, url, headers={"User-Agent": self.USER_AGENT},
            data=request_data.json_parameters if request_data else None,
            files=request_data.multipart_data if request_data else None,
            extensions={"trace": progress.trace},
        )
        response = await self._client.send(request, stream=True)
        try:
            body = await self._read_capped(response)
        finally:
            await response.aclose()
        return response.status_code, body

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The decoded body, at most ``max_bytes``: an error answer is cut there (its status
        says enough), a success answer that long is no answer.

        The raw bytes are decoded here, a bounded piece at a time: httpx would decompress
        each read whole, and a read of a gzip bomb is a thousand times larger decoded."""
        success = 200 <= response.status_code <= 299
        declared = response.headers.get("Content-Length", "")
        if success and declared.isdigit() and int(declared) > self._max_bytes:
            raise ExchangeFailed(self._too_large(f"{int(declared)} bytes announced"), left=True)
        try:
            body = BoundedBody(response.headers.get("Content-Encoding", ""), self._max_bytes)
            async for raw in response.aiter_raw():
                if not body.feed(raw):
                    break
            else:
                body.finish()
        except BadEncoding as exc:
            if success:
                raise ExchangeFailed(str(exc), left=True) from None
            return b""  # an error answer: its status says enough
        if body.too_large and success:
            raise ExchangeFailed(self._too_large(body.describe_cut()), left=True)
        return body.value()[: self._max_bytes]

    def _too_large(self, detail: str) -> str:
        return f"the answer is larger than {self._max_bytes // 1024} KiB ({detail})"


class BadEncoding(Exception):
    """An answer's Content-Encoding that was not asked for, or bytes that do not decode."""


_GZIP_MAGIC = b"\x1f\x8b"
# Content-Encoding -> zlib's wbits; "deflate" is zlib-wrapped, or raw from some servers.
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"
_INFLATE_PIECE = 64 * 1024  # decoded bytes made at a time: no large transient buffers


class BoundedBody:
    """An answer's body decoded as its raw bytes arrive, never more than ``limit`` + 1 bytes
    of it made: a small gzip answer can decode to gigabytes.

    ``feed`` returns False once the raw or the decoded bytes exceed ``limit`` (``too_large``);
    ``BadEncoding`` for a Content-Encoding other than identity, gzip or deflate (one coding:
    stacked codings multiply a bomb) or for bytes that do not decode.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in _CODINGS):
            raise BadEncoding(f"the answer is encoded as {content_encoding.strip()!r}, "
                              f"which was not asked for (only {ACCEPT_ENCODING})")
        self.coding = codings[0] if codings else "identity"
        self._limit = limit
        self._parts: list[bytes] = []
        self._raw = self._decoded = 0
        self._ended = False  # the compressed stream's end came: what follows is ignored
        self._first = True
        self._zlib = self._decompressor(self.coding)

    @staticmethod
    def _decompressor(coding: str, *, raw_deflate: bool = False) -> Any:
        if coding == "identity":
            return None
        return zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else _CODINGS[coding])

    @property
    def too_large(self) -> bool:
        return max(self._raw, self._decoded) > self._limit

    def describe_cut(self) -> str:
        return "cut off" if self.coding == "identity" else f"{self.coding}-encoded, cut off"

    def feed(self, raw: bytes) -> bool:
        self._raw += len(raw)
        if self._zlib is None:
            self._keep(raw)
        elif not self._ended:
            self._inflate(raw)
        return not self.too_large

    def value(self) -> bytes:
        return b"".join(self._parts)

    def finish(self) -> None:
        """The body's end: ``BadEncoding`` when its compressed stream had not ended."""
        if self._zlib is not None and not self._ended and not self._zlib.eof:
            raise BadEncoding(f"the answer's {self.coding} encoding is broken: it ends early")

    def _keep(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._decoded += len(data)

    def _inflate(self, data: bytes) -> None:
        """Decompress ``data`` at most up to the limit (and a byte), a piece at a time: the
        rest of a bomb is never made. A gzip member's end may be followed by another member."""
        while data and not self.too_large:
            try:
                out = self._zlib.decompress(data, min(self._limit - self._decoded + 1,
                                                      _INFLATE_PIECE))
            except zlib.error as exc:
                if self._first and self.coding == "deflate":  # a raw deflate stream
                    self._first = False
                    self._zlib = self._decompressor(self.coding, raw_deflate=True)
                    continue
                raise BadEncoding(f"the answer's {self.coding} encoding is broken: {exc}"
                                  ) from None
            self._first = False
            self._keep(out)
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                rest = self._zlib.unused_data
                if self.coding == "deflate" or not rest.startswith(_GZIP_MAGIC):
                    self._ended = True
                    return
                self._zlib, data = self._decompressor(self.coding), rest


def _may_have_left(exc: httpx.HTTPError, started: bool) -> bool:
    never_left = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                  httpx.UnsupportedProtocol, httpx.InvalidURL)
    return started and not isinstance(exc, never_left)


def _describe(exc: httpx.HTTPError, left: bool) -> str:
    kind = type(exc).__name__
    if not _may_have_left(exc, left):
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out before the request left ({kind})"
        return f"cannot connect: {kind}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({kind})"
    return f"connection lost after sending: {kind}"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _check_envelope(body: bytes, method: str) -> None:
    """A 2xx answer must be ``{"ok": true, "result": ...}`` with the result ``method``
    answers with; PTB would fail on anything else with a KeyError or an AttributeError (or
    log the body), or take a message id that is a string, and lose what the answer said."""
    envelope = _json_object(body)
    if envelope is None:
        raise ExchangeFailed("the answer is not a JSON object", left=True)
    if envelope.get("ok") is False:
        description = envelope.get("description")
        raise RefusedAnswer(str(description) if description else "no description")
    if envelope.get("ok") is not True or "result" not in envelope:
        raise ExchangeFailed('the answer has no "ok": true and result', left=True)
    shape = RESULT_SHAPES.get(method.lower())
    if shape is not None:
        kind, fields = shape
        problem = _shape_problem(envelope["result"], fields)
        if problem is not None:
            raise ExchangeFailed(f"the answer's result is not a {kind}: {problem}", left=True)


_MISSING = object()
# What this bot reads of each method's result (and PTB needs to read it): dotted field paths
# and their JSON types; "id" is a positive integer (a message id).
RESULT_SHAPES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "sendmessage": ("Message", (("message_id", "id"), ("date", "integer"), ("chat", "object"),
                                ("chat.id", "integer"), ("chat.type", "string"))),
    "getme": ("bot user", (("id", "integer"), ("is_bot", "boolean"),
                           ("first_name", "string"))),
    "getchat": ("Chat", (("id", "integer"), ("type", "string"))),
    "getchatmember": ("ChatMember", (("status", "string"), ("user", "object"),
                                     ("user.id", "integer"))),
}
RESULT_SHAPES["sendphoto"] = RESULT_SHAPES["sendmessage"]


def _shape_problem(result: object, fields: tuple[tuple[str, str], ...]) -> str | None:
    """What keeps ``result`` from having ``fields``, in words; None when it has them."""
    if not isinstance(result, dict):
        return f"it is {_json_kind(result)}, not an object"
    for path, expected in fields:
        value: object = result
        for key in path.split("."):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return f"it has no {path}"
        if not _json_is(value, expected):
            shown = expected if expected != "id" else "positive integer"
            return f"its {path} is {_json_kind(value)}, not {_article(shown)}"
    return None


def _json_is(value: object, expected: str) -> bool:
    integer = isinstance(value, int) and not isinstance(value, bool)
    checks = {"integer": integer, "id": integer and value > 0,  # type: ignore[operator]
              "string": isinstance(value, str), "boolean": isinstance(value, bool),
              "object": isinstance(value, dict)}
    return checks[expected]


def _json_kind(value: object) -> str:
    """A JSON value as words: ``"x"`` is "a string ('x')", 5 is "5"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else _cut(str(value), 30)
    if isinstance(value, str):
        return f"a string ({_cut(value, 30)!r})"
    return "a list" if isinstance(value, list) else "an object"


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ptb_problem(exc: Exception) -> str:
    """What python-telegram-bot could not read in a result, without its internals'
    names: ``ChatFullInfo.__init__() missing 1 required positional argument: 'x'`` says
    "missing 1 required field: 'x'", a KeyError 'date' says "no 'date'"."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}" if exc.args else "a field is missing"
    text = str(exc)
    text = re.sub(r"^[\w.]+\(\) ", "", text).replace("positional argument", "field")
    return _first_line(text, 200) or "it cannot be read"


def _check_error_answer(status: int, body: bytes) -> None:
    """What PTB misreads in an error answer: a 401 or 404 (PTB's message would name the
    token) and a retry_after that is not a usable number (PTB would loop on a negative one
    and crash on a string)."""
    if status == 401:
        raise TokenRefused("the bot token was refused (401)")
    if status == 404:
        raise TokenRefused("the Bot API answered 404 Not Found: check the bot token and "
                           "telegram.api_base_url")
    envelope = _json_object(body) or {}
    parameters = envelope.get("parameters")
    if not isinstance(parameters, dict) or parameters.get("migrate_to_chat_id"):
        return
    if "retry_after" in parameters:
        asked = parameters["retry_after"]
        raise FloodWait(_seconds(asked), asked)


def _seconds(value: object) -> float | None:
    """A JSON number of seconds, or None (a string, a bool, NaN, an infinity...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) else None


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
        self, chat_id: str, photo_url: str, caption_html: str, buttons: Sequence[Sequence[Button]],
        *, thread_id: int | None = None, silent: bool = False,
    ) -> int:
        """``thread_id``: the forum topic to post in (``message_thread_id``); given only
        for a topic, so a Sender without topics needs no such argument. ``silent``: without
        a notification (``disable_notification``)."""

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        html: bool,
        buttons: Sequence[Sequence[Button]],
        preview_url: str | None,
        thread_id: int | None = None,
        silent: bool = False,
    ) -> int:
        """``preview_url``: the link to preview; empty or None, no preview."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A photo posted from its bytes: the message, and the file id Telegram gave the photo
    (empty when the answer had none), which other chats can be sent instead of the bytes."""

    message_id: int
    file_id: str


@runtime_checkable
class PhotoUploader(Protocol):
    """A ``Sender`` that can also upload a photo's bytes (multipart ``sendPhoto``)."""

    async def send_photo_file(
        self, chat_id: str, data: bytes, filename: str, caption_html: str,
        buttons: Sequence[Sequence[Button]], *, thread_id: int | None = None,
        silent: bool = False,
    ) -> Uploaded: ...


@runtime_checkable
class Editor(Protocol):
    """A ``Sender`` that can also edit a message it sent (``publisher.edit_send``)."""

    async def edit_caption(self, chat_id: str, message_id: int, caption_html: str,
                           buttons: Sequence[Sequence[Button]]) -> None: ...

    async def edit_text(self, chat_id: str, message_id: int, text_html: str,
                        buttons: Sequence[Sequence[Button]], preview_url: str | None
                        ) -> None: ...

    async def edit_media(self, chat_id: str, message_id: int, photo_url: str,
                         caption_html: str, buttons: Sequence[Sequence[Button]]) -> None: ...

    async def edit_markup(self, chat_id: str, message_id: int,
                          buttons: Sequence[Sequence[Button]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What ``forwardMessage`` made of a message: the copy's id (in the chat it went to) and
    what the original shows, as Telegram describes it after entity parsing."""

    message_id: int  # of the copy
    text: str  # the text, or the caption of a media message ("" for none)
    has_photo: bool
    link_urls: tuple[str, ...]  # the text_link entities' URLs, in order
    origin_message_id: int | None  # the original's id, when Telegram says (a channel's post)
    origin_date: int | None  # when the original was sent (Unix time), when Telegram says


@runtime_checkable
class Forwarder(Protocol):
    """A ``Sender`` that can also forward a message and delete one (``publisher.reconcile``)."""

    async def forward_message(self, chat_id: str, from_chat_id: str, message_id: int
                              ) -> Forwarded: ...

    async def delete_message(self, chat_id: str, message_id: int) -> None: ...


class TelegramSender:
    """``Sender`` (and ``PhotoUploader``) over the Bot API through python-telegram-bot, at
    any Bot API base URL.

    ``transport``: the httpx transport requests go through (``httpx.MockTransport`` in unit
    tests); None, the default, is httpx's connection pool over the network. A given
    transport does its own TLS, if any. Without httpcore under it, whether a request had
    started to leave is not seen, so a failure it raises counts as "not sent".
    """

    def __init__(self, token: str, base_url: str, timeout: float = 20.0, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._token = token
        # One client (this bot never calls getUpdates), with a TLS context made as httpx makes
        # it (certifi, SSL_CERT_FILE): loading the CA bundle is most of a push's start-up CPU.
        verify: Any = httpx.create_ssl_context() if transport is None else True
        self._request = BoundedRequest(timeout, verify=verify, transport=transport)
        self._bot = Bot(
            token, base_url=base_url, request=self._request, get_updates_request=self._request,
        )
        self._started = False

    async def start(self) -> None:
        """Idempotent; the first call asks getMe, proving the token and the URL."""
        if self._started:
            return
        try:
            await self._bot.initialize()
        except tg_error.TelegramError as exc:
            error = self._translate(exc)
            if isinstance(error, Unauthorized):
                raise error from None
            raise Unavailable(f"getMe failed: {error.reason}") from None
        except Exception as exc:  # a 200 answer whose result PTB cannot read (shape checked)
            raise Unavailable(self._redact(
                f"getMe failed: the answer's result is not a bot user: {_ptb_problem(exc)}"
            )) from None
        self._started = True

    async def close(self) -> None:
        """Close the HTTP client, also when ``start`` failed half-way (PTB would not)."""
        if self._started:
            await self._bot.shutdown()
            self._started = False
        await self._request.shutdown()

    async def get_me(self) -> BotInfo:
        await self.start()
        me = self._bot.bot
        return BotInfo(id=me.id, username=me.username or "")

    async def get_chat(self, chat_id: str) -> ChatInfo:
        chat = await self._asked(self._bot.get_chat(chat_id=chat_id), "Chat")
        permissions = chat.permissions
        return ChatInfo(
            id=chat.id,
            type=str(chat.type),
            title=chat.title or chat.full_name or "",
            username=chat.username or "",
            members_can_send=None if permissions is None else permissions.can_send_messages,
            is_forum=bool(chat.is_forum),
        )

    async def get_chat_member(self, chat_id: str, user_id: int) -> MemberInfo:
        member = await self._asked(self._bot.get_chat_member(chat_id=chat_id, user_id=user_id),
                                   "ChatMember")
        return MemberInfo(
            status=str(member.status),
            can_post_messages=getattr(member, "can_post_messages", None),
            can_send_messages=getattr(member, "can_send_messages", None),
            is_member=getattr(member, "is_member", None),
        )

    async def _asked(self, request: Awaitable[T], kind: str) -> T:
        """The answer to a question (it changes nothing, so any failure is just an error)."""
        try:
            return await request
        except tg_error.TelegramError as exc:
            error = self._translate(exc)
            raise NotSent(error.reason) if isinstance(error, Ambiguous) else error from None
        except Exception as exc:  # PTB choking on an odd result (its shape was checked)
            raise NotSent(self._redact(f"the answer's result is not a {kind}: "
                                       f"{_ptb_problem(exc)}")) from exc

    async def send_photo(
        self, chat_id: str, photo_url: str, caption_html: str, buttons: Sequence[Sequence[Button]],
        *, thread_id: int | None = None, silent: bool = False,
    ) -> int:
        return await self._posted(
            self._bot.send_photo(
                chat_id=chat_id,
                message_thread_id=thread_id,
                photo=photo_url,
                caption=caption_html,
                parse_mode=ParseMode.HTML,
                reply_markup=_keyboard(buttons),
                disable_notification=silent or None,
            ),
            photo=True,
        )

    async def send_photo_file(
        self, chat_id: str, data: bytes, filename: str, caption_html: str,
        buttons: Sequence[Sequence[Button]], *, thread_id: int | None = None,
        silent: bool = False,
    ) -> Uploaded:
        """The photo's bytes uploaded as a multipart file part."""
        message = await self._message(
            self._bot.send_photo(
                chat_id=chat_id,
                message_thread_id=thread_id,
                disable_notification=silent or None,
                photo=InputFile(data, filename=filename),
                caption=caption_html,
                parse_mode=ParseMode.HTML,
                reply_markup=_keyboard(buttons),
            ),
            photo=True,
        )
        sizes = message.photo or ()
        return Uploaded(message.message_id, sizes[-1].file_id if sizes else "")

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        html: bool,
        buttons: Sequence[Sequence[Button]],
        preview_url: str | None,
        thread_id: int | None = None,
        silent: bool = False,
    ) -> int:
        preview = (
            LinkPreviewOptions(url=preview_url, prefer_large_media=True)
            if preview_url
            else LinkPreviewOptions(is_disabled=True)
        )
        return await self._posted(
            self._bot.send_message(
                chat_id=chat_id,
                message_thread_id=thread_id,
                text=text,
                parse_mode=ParseMode.HTML if html else None,
                reply_markup=_keyboard(buttons),
                link_preview_options=preview,
                disable_notification=silent or None,
            )
        )

    async def edit_caption(self, chat_id: str, message_id: int, caption_html: str,
                           buttons: Sequence[Sequence[Button]]) -> None:
        await self._edited(self._bot.edit_message_caption(
            chat_id=chat_id, message_id=message_id, caption=caption_html,
            parse_mode=ParseMode.HTML, reply_markup=_keyboard(buttons)))

    async def edit_text(self, chat_id: str, message_id: int, text_html: str,
                        buttons: Sequence[Sequence[Button]], preview_url: str | None) -> None:
        preview = (LinkPreviewOptions(url=preview_url, prefer_large_media=True) if preview_url
                   else LinkPreviewOptions(is_disabled=True))
        await self._edited(self._bot.edit_message_text(
            chat_id=chat_id, message_id=message_id, text=text_html, parse_mode=ParseMode.HTML,
            reply_markup=_keyboard(buttons), link_preview_options=preview))

    async def edit_media(self, chat_id: str, message_id: int, photo_url: str,
                         caption_html: str, buttons: Sequence[Sequence[Button]]) -> None:
        media = InputMediaPhoto(photo_url, caption=caption_html, parse_mode=ParseMode.HTML)
        await self._edited(self._bot.edit_message_media(
            chat_id=chat_id, message_id=message_id, media=media,
            reply_markup=_keyboard(buttons)), photo=True)

    async def edit_markup(self, chat_id: str, message_id: int,
                          buttons: Sequence[Sequence[Button]]) -> None:
        await self._edited(self._bot.edit_message_reply_markup(
            chat_id=chat_id, message_id=message_id, reply_markup=_keyboard(buttons)))

    async def delete_message(self, chat_id: str, message_id: int) -> None:
        """deleteMessage (``retract.Deleter``)."""
        await self._edited(self._bot.delete_message(chat_id=chat_id, message_id=message_id))

    async def forward_message(self, chat_id: str, from_chat_id: str, message_id: int
                              ) -> Forwarded:
        """forwardMessage, silently (``Forwarder``): a look at a message that changes
        nothing in its chat."""
        message = await self._message(self._bot.forward_message(
            chat_id=chat_id, from_chat_id=from_chat_id, message_id=message_id,
            disable_notification=True))
        return _forwarded(message)

    async def _edited(self, request: Awaitable[object], *, photo: bool = False) -> None:
        """An edit, or the translated reason it did not (surely) happen."""
        try:
            await request
        except tg_error.TelegramError as exc:
            raise self._translate(exc, photo=photo) from None
        except Exception as exc:  # PTB choking on an odd result: it may have been edited
            raise Ambiguous(self._redact(f"the answer's result is not a Message: "
                                         f"{_ptb_problem(exc)}")) from exc

    async def _posted(self, request: Awaitable[Message], *, photo: bool = False) -> int:
        """The message id of a send, or the translated reason it did not (surely) happen."""
        return (await self._message(request, photo=photo)).message_id

    async def _message(self, request: Awaitable[Message], *, photo: bool = False) -> Message:
        """The message a send posted, or the translated reason it did not (surely) happen."""
        try:
            return await request
        except tg_error.TelegramError as exc:
            raise self._translate(exc, photo=photo) from None
        except Exception as exc:  # PTB choking on an odd result: it may have been posted
            raise Ambiguous(self._redact(f"the answer's result is not a Message: "
                                         f"{_ptb_problem(exc)}")) from exc

    def _translate(self, exc: tg_error.TelegramError, *, photo: bool = False) -> SendError:
        """PTB's exception (or our transport's) to ours. Order matters: BadRequest and
        Forbidden answers are NetworkErrors to PTB."""
        reason = self._redact(_first_line(exc.message))
        match exc:
            case ExchangeFailed():
                return Ambiguous(reason) if exc.left else NotSent(reason)
            case RefusedAnswer():
                return NotSent(f"Telegram answered ok:false: {reason}")
            case FloodWait():
                return RateLimited(exc.seconds, exc.asked)
            case TokenRefused():
                return Unauthorized(reason)
            case tg_error.RetryAfter():
                return RateLimited(_retry_after_seconds(exc))
            case tg_error.ChatMigrated():
                return ChatMigrated(str(exc.new_chat_id))
            case tg_error.InvalidToken():
                return Unauthorized("the bot token was refused")
            case tg_error.Forbidden():
                return ChatForbidden(reason)
            case tg_error.BadRequest():
                return _bad_request(reason, photo=photo)
            case tg_error.NetworkError():
                # An HTTP error answer (5xx, a proxy's HTML page): the message was not posted.
                return NotSent(f"Telegram answered with an error: {reason}")
        # Anything else (an answer PTB could not read) came back after the request reached
        # Telegram: it may have been posted.
        return Ambiguous(f"{type(exc).__name__}: {reason}")

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


def _forwarded(message: Message) -> Forwarded:
    entities = message.entities or message.caption_entities or ()
    origin = message.forward_origin
    origin_id = getattr(origin, "message_id", None)
    origin_date = getattr(origin, "date", None)
    return Forwarded(
        message_id=message.message_id,
        text=message.text or message.caption or "",
        has_photo=bool(message.photo),
        link_urls=tuple(entity.url for entity in entities if entity.url),
        origin_message_id=origin_id if isinstance(origin_id, int) else None,
        origin_date=int(origin_date.timestamp()) if origin_date is not None else None,
    )


def _keyboard(buttons: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    rows = [
        [InlineKeyboardButton(text=button.text, url=button.url) for button in row]
        for row in buttons
        if row
    ]
    return InlineKeyboardMarkup(rows) if rows else None
