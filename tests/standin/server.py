"""A strict, local stand-in for the Telegram Bot API, used by the publisher's tests.

Stdlib only.  It validates requests against the machine-readable Bot API spec
(``bot-api.json``), parses Telegram's HTML subset, enforces text/caption limits, inline
keyboards and Telegram-like rate limits, records every accepted message, and can inject
faults (5xx, dropped connections, slow replies after recording, 403, 429 with any retry_after,
200 answers with ok:false or the wrong shape, huge or trickling answers, ...). Forum
supergroups (``add_forum``, ``createForumTopic``) have topics: a ``message_thread_id`` must
name one of them, else 400 "message thread not found".

Updates (what a bot answering people receives): tests inject private-chat messages
(``user_message``), group messages (``group_message``) and taps on the bot's inline buttons
(``callback_query``); ``block_bot``/``deactivate_user`` make sends to a user 403.  The bot
gets them by ``getUpdates`` (offsets confirm, long polling, 409 for a second poller or while a
webhook is set) or by ``setWebhook`` (POSTed with the secret header, retried until a 2xx),
and answers queries by ``answerCallbackQuery`` (once, within 15 s by ``clock``).
``webhook_http_ok=True`` is a test-only relaxation: http://127.0.0.1:<port> webhooks.

Library use::

    with BotApiStandin(token="123456:ABC-test_token") as api:
        bot = telegram.Bot(token, base_url=api.base_url)

Standalone use (prints the base URL on the first stdout line, serves until SIGTERM)::

    python tests/standin/server.py --port 0 --token T [--record FILE]

The spec is the repository's own copy next to this module (``tests/standin/bot-api.json``,
MIT-licensed, see ``bot-api.LICENSE``); there is no other source, so every checkout tests
against the same spec.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import email.parser
import email.policy
import functools
import io
import ipaddress
import itertools
import json
import math
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from email.message import EmailMessage
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO
from urllib.parse import parse_qsl, urlsplit

from PIL import Image

DEFAULT_TOKEN = "123456:ABC-test_token"
SPEC_PATH = Path(__file__).resolve().parent / "bot-api.json"

PHOTO_WRONG_ID = "wrong file identifier/HTTP URL specified"
PHOTO_FETCH_FAILED = "failed to get HTTP URL content"
PHOTO_WRONG_TYPE = "wrong type of the web page content"
# What Telegram says of a photo it got (by URL or uploaded) but cannot use.
PHOTO_INVALID_DIMENSIONS = "PHOTO_INVALID_DIMENSIONS"
IMAGE_PROCESS_FAILED = "IMAGE_PROCESS_FAILED"
PHOTO_REASONS = (PHOTO_WRONG_ID, PHOTO_FETCH_FAILED, PHOTO_WRONG_TYPE,
                 IMAGE_PROCESS_FAILED, PHOTO_INVALID_DIMENSIONS)

KICKED = "Forbidden: bot was kicked from the channel chat"
NOT_MEMBER = "Forbidden: bot is not a member of the channel chat"
CHAT_NOT_FOUND = "Bad Request: chat not found"
CHAT_MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
THREAD_NOT_FOUND = "Bad Request: message thread not found"
TOPIC_CLOSED = "Bad Request: TOPIC_CLOSED"
TOPIC_RIGHTS = "Bad Request: not enough rights to create a topic"
TOPIC_ICON_COLORS = (7322096, 16766590, 13338331, 9367192, 16749490, 16478047)
MARKUP_UNPARSABLE = "Bad Request: can't parse reply keyboard markup JSON object"

FAULTS = frozenset(
    {
        "500",
        "502_html",
        "drop",
        "slow_after_record",
        "drop_after_record",
        "403",
        "429",
        "refuse_photo",
        "parse_entities",
        "ok_false",  # 200 with {"ok": false}: nothing was done
        "no_result",  # 200 with {"ok": true} and no result: nothing was done
        "wrong_shape",  # 200 with a result of the wrong type: nothing was done
        "huge_answer",  # done and recorded, then a 200 answer of huge_bytes
        "trickle_answer",  # done and recorded, then the answer a byte at a time (slow_seconds)
        # done and recorded, then a 200 answer of huge_bytes without Content-Length (chunked)
        "huge_chunked",
        # done and recorded, then a 200 gzip answer of about 1 MB that decodes to bomb_bytes
        # of valid JSON, whatever Accept-Encoding asked for (a hostile proxy)
        "gzip_bomb",
    }
)
OK_FALSE_DESCRIPTION = "Service Unavailable: the gateway refused the request"
HUGE_BYTES = 200 * 1024 * 1024
BOMB_BYTES = 1024 * 1024 * 1024

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
MEDIA_GROUP_MIN, MEDIA_GROUP_MAX = 2, 10
MEDIA_GROUP_TYPES = frozenset({"photo", "video", "document", "audio"})
CALLBACK_DATA_MAX_BYTES = 64

_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_API_PATH_RE = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z0-9_]+)/?$")
_USERNAME_RE = re.compile(r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")
_INT_RE = re.compile(r"^-?\d+$")
_FLOAT_RE = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
_FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{20,}$")
_TAG_NAME_START_RE = re.compile(r"[A-Za-z]")
_ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z_-]+")
_NAME_TOKEN_RE = re.compile(r"[A-Za-z0-9.-]+")
_ENTITY_NAME_RE = re.compile(r"#x[0-9A-Fa-f]+|#\d+|[A-Za-z][A-Za-z0-9]*")
_PRIMITIVE_TYPE_NAMES = {"int": "Integer", "bool": "Boolean", "str": "String", "float": "Float"}
_BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}

Json = dict[str, Any]
Delivery = Literal["send", "drop", "delay", "huge", "trickle", "chunked", "bomb"]
# Faults whose request is carried out (and recorded) before the answer goes wrong.
AFTER_RECORD_DELIVERY: dict[str, Delivery] = {
    "slow_after_record": "delay",
    "drop_after_record": "drop",
    "huge_answer": "huge",
    "trickle_answer": "trickle",
    "huge_chunked": "chunked",
    "gzip_bomb": "bomb",
}


class ApiError(Exception):
    """A Bot API error reply: becomes the {"ok": false, ...} envelope with status error_code."""

    def __init__(self, error_code: int, description: str, parameters: Json | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def envelope(self) -> Json:
        body: Json = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(reason: str) -> ApiError:
    return ApiError(400, f"Bad Request: {reason}")


def too_many_requests(retry_after: Any) -> ApiError:
    return ApiError(
        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --------------------------------------------------------------------------- HTML parse_mode

_TAG_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "tg-emoji": "custom_emoji",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_MAX_LEN = 10


@dataclass
class _OpenTag:
    name: str
    entity: Json | None
    start: int


class HtmlParseError(ValueError):
    """Telegram's "can't parse entities" reason, e.g. 'Unsupported start tag "x" at ...'."""


class _HtmlParser:
    """Parser for Telegram's HTML subset, producing the visible text and MessageEntity dicts."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.out: list[str] = []
        self.length = 0  # visible length so far, UTF-16 code units
        self.stack: list[_OpenTag] = []
        self.entities: list[Json] = []

    def parse(self) -> tuple[str, list[Json]]:
        while self.pos < len(self.source):
            char = self.source[self.pos]
            if char == "<":
                self._tag()
            elif char == "&":
                self._emit(self._entity_at(self.pos))
            elif char == ">":
                self._fail('Unexpected ">"', self.pos, ', it must be escaped as "&gt;"')
            else:
                self._emit(char)
                self.pos += 1
        if self.stack:
            raise HtmlParseError(
                f'Can\'t find end tag corresponding to start tag "{self.stack[-1].name}"'
            )
        self.entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
        return "".join(self.out), self.entities

    def _fail(self, what: str, at: int, suffix: str = "") -> NoReturn:
        offset = len(self.source[:at].encode("utf-8", "surrogatepass"))
        raise HtmlParseError(f"{what} at byte offset {offset}{suffix}")

    def _emit(self, text: str) -> None:
        self.out.append(text)
        self.length += utf16_len(text)

    def _entity_at(self, start: int) -> str:
        """Decode the HTML entity at start ('&'); advance past it."""
        end = self.source.find(";", start, start + _ENTITY_MAX_LEN + 2)
        name = self.source[start + 1 : end] if end != -1 else ""
        if not _ENTITY_NAME_RE.fullmatch(name):
            self._fail('Unexpected "&"', start, ', it must be escaped as "&amp;"')
        decoded = _decode_entity(name)
        if decoded is None:
            self._fail(f'Unsupported HTML entity "&{name};"', start)
        self.pos = end + 1
        return decoded

    def _tag(self) -> None:
        start = self.pos
        if self.source.startswith("</", start):
            self._end_tag(start)
            return
        if not _TAG_NAME_START_RE.match(self.source, start + 1):
            self._fail('Unexpected "<"', start, ', it must be escaped as "&lt;"')
        name_end = self._scan_until(" \t\r\n/>", start + 1)
        name = self.source[start + 1 : name_end].lower()
        if name not in _TAG_ENTITY_TYPES:
            self._fail(f'Unsupported start tag "{name}"', start)
        self.pos = name_end
        attributes = self._attributes(start)
        entity = self._open_entity(name, attributes, start)
        self.stack.append(_OpenTag(name, entity, self.length))

    def _scan_until(self, stop_chars: str, index: int) -> int:
        while index < len(self.source) and self.source[index] not in stop_chars:
            index += 1
        return index

    def _attributes(self, tag_start: int) -> dict[str, str]:
        attributes: dict[str, str] = {}
        while True:
            while self.pos < len(self.source) and self.source[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos >= len(self.source):
                self._fail("Unclosed start tag", tag_start)
            if self.source[self.pos] == ">":
                self.pos += 1
                return attributes
            match = _ATTRIBUTE_NAME_RE.match(self.source, self.pos)
            if match is None:
                self._fail("Expected attribute name", self.pos)
            self.pos = match.end()
            while self.pos < len(self.source) and self.source[self.pos] in " \t\r\n":
                self.pos += 1
            value = ""  # a bare attribute: <blockquote expandable>
            if self.source.startswith("=", self.pos):
                self.pos += 1
                while self.pos < len(self.source) and self.source[self.pos] in " \t\r\n":
                    self.pos += 1
                value = self._attribute_value(tag_start)
            attributes[match.group().lower()] = value

    def _attribute_value(self, tag_start: int) -> str:
        quote = self.source[self.pos : self.pos + 1]
        if quote in ('"', "'"):
            end = self.source.find(quote, self.pos + 1)
            if end == -1:
                self._fail("Unclosed start tag", tag_start)
            raw, self.pos = self.source[self.pos + 1 : end], end + 1
        else:  # a name token: letters, digits, "." and "-", then a space or the tag's end
            end = self._scan_until(" \t\r\n>", self.pos)
            raw, self.pos = self.source[self.pos : end], end
            if not _NAME_TOKEN_RE.fullmatch(raw):
                self._fail("Unexpected end of name token", tag_start)
        return self._decode_attribute(raw, tag_start)

    def _decode_attribute(self, raw: str, tag_start: int) -> str:
        parts: list[str] = []
        for index, piece in enumerate(raw.split("&")):
            if index == 0:
                parts.append(piece)
                continue
            name, semicolon, rest = piece.partition(";")
            decoded = _decode_entity(name) if semicolon else None
            if decoded is None:
                self._fail('Unexpected "&" in an attribute value', tag_start)
            parts.append(f"{decoded}{rest}")
        return "".join(parts)

    def _open_entity(self, name: str, attributes: dict[str, str], at: int) -> Json | None:
        entity: Json = {"type": _TAG_ENTITY_TYPES[name]}
        if name == "a":
            if not attributes.get("href"):
                self._fail('Tag "a" must have attribute "href"', at)
            entity["url"] = attributes["href"]
        elif name == "span" and attributes.get("class") != "tg-spoiler":
            self._fail('Tag "span" must have class "tg-spoiler"', at)
        elif name == "tg-emoji":
            if not attributes.get("emoji-id", "").isdigit():
                self._fail('Tag "tg-emoji" must have a numeric attribute "emoji-id"', at)
            entity["custom_emoji_id"] = attributes["emoji-id"]
        elif name == "blockquote" and "expandable" in attributes:
            entity["type"] = "expandable_blockquote"
        elif name == "code" and self._inside_pre() and "class" in attributes:
            language = attributes["class"].removeprefix("language-")
            pre_entity = self.stack[-1].entity
            if attributes["class"].startswith("language-") and language and pre_entity:
                pre_entity["language"] = language
                return None  # Telegram folds <pre><code class=...> into one "pre" entity
        return entity

    def _inside_pre(self) -> bool:
        return bool(self.stack) and self.stack[-1].name == "pre"

    def _end_tag(self, start: int) -> None:
        end = self.source.find(">", start)
        if end == -1:
            self._fail("Unclosed end tag", start)
        name = self.source[start + 2 : end].strip().lower()
        if not self.stack:
            self._fail(f'Unexpected end tag "</{name}>"', start)
        open_tag = self.stack.pop()
        if name != open_tag.name:
            self._fail(
                "Unmatched end tag",
                start,
                f', expected "</{open_tag.name}>", found "</{name}>"',
            )
        length = self.length - open_tag.start
        if open_tag.entity is not None and length > 0:
            self.entities.append({**open_tag.entity, "offset": open_tag.start, "length": length})
        self.pos = end + 1


def _decode_entity(name: str) -> str | None:
    if name in _NAMED_ENTITIES:
        return _NAMED_ENTITIES[name]
    if not name.startswith("#"):
        return None
    digits = name[1:]
    try:
        code = int(digits[1:], 16) if digits[:1] in ("x", "X") else int(digits)
    except ValueError:
        return None
    if not 0 < code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code)


def parse_html(source: str) -> tuple[str, list[Json]]:
    """Return (visible text, entities) of Telegram-HTML source, or raise HtmlParseError."""
    return _HtmlParser(source).parse()


def render(text: str, parse_mode: str | None) -> tuple[str, list[Json]]:
    """Visible text and entities for text sent with parse_mode, or a 400 ApiError."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        try:
            return parse_html(text)
        except HtmlParseError as exc:
            raise bad_request(f"can't parse entities: {exc}") from exc
    if mode in ("", "markdown", "markdownv2"):
        return text, []  # Markdown is accepted but not parsed by the stand-in
    raise bad_request("unsupported parse_mode")


# --------------------------------------------------------------------------- the spec


@functools.cache
def load_spec() -> Json:
    """The Bot API spec: the repository's copy, ``SPEC_PATH``, and nothing else."""
    try:
        text = SPEC_PATH.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the Bot API spec is missing: {SPEC_PATH} (tests/standin/bot-api.json in the "
            "repository)"
        ) from None
    return json.loads(text)


def _field_kind(types: list[str]) -> str:
    kinds = {
        ("Integer",): "int",
        ("Boolean",): "bool",
        ("String",): "str",
        ("Float",): "float",
        ("Integer", "String"): "int_or_str",
    }
    if "InputFile" in types:
        return "file"
    return kinds.get(tuple(types), "json")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fields: dict[str, str]  # field name -> kind (int, bool, str, float, int_or_str, file, json)
    required: frozenset[str]
    returns: tuple[str, ...]

    @property
    def creates_message(self) -> bool:
        return self.returns in (("Message",), ("Array of Message",))


_EXTRA_FIELDS = {"sendMessage": {"disable_web_page_preview": "bool"}}


def method_specs(spec: Json) -> dict[str, MethodSpec]:
    """Lower-cased method name -> MethodSpec."""
    specs = {}
    for name, method in spec["methods"].items():
        fields = {f["name"]: _field_kind(f["types"]) for f in method.get("fields", [])}
        fields.update(_EXTRA_FIELDS.get(name, {}))
        required = frozenset(f["name"] for f in method.get("fields", []) if f["required"])
        specs[name.lower()] = MethodSpec(name, fields, required, tuple(method["returns"]))
    return specs


def inline_button_actions(spec: Json) -> frozenset[str]:
    """InlineKeyboardButton fields of which exactly one must be set."""
    fields = spec["types"]["InlineKeyboardButton"]["fields"]
    return frozenset(f["name"] for f in fields) - {"text", "icon_custom_emoji_id", "style"}


# --------------------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes

    def describe(self) -> str:
        return f"upload:{self.filename}"


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Parameters of a request body: str values (forms), JSON values, or UploadedFile parts."""
    header = EmailMessage()
    header["content-type"] = content_type or "application/octet-stream"
    mime = header.get_content_type()
    if not body:
        return {}
    if mime == "application/json":
        return _parse_json_body(body)
    if mime == "multipart/form-data":
        return _parse_multipart(content_type, body)
    if mime == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    raise bad_request(f"unsupported Content-Type {mime}")


def _parse_json_body(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise bad_request("can't parse JSON encoded request") from exc
    if not isinstance(decoded, dict):
        raise bad_request("JSON encoded request must be an object")
    return decoded


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    preamble = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(preamble + body)
    if not message.is_multipart():
        raise bad_request("can't parse multipart/form-data request")
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            params[name] = data.decode("utf-8", "replace")
        else:
            params[name] = UploadedFile(filename, part.get_content_type(), data)
    return params


# Telegram's limits of an uploaded photo (sendPhoto's "photo" field in the Bot API spec).
MAX_UPLOADED_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_SIDES = 10_000  # width + height
MAX_PHOTO_RATIO = 20
UPLOADED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def check_uploaded_photo(upload: UploadedFile) -> None:
    """An uploaded photo as Telegram judges it: by its bytes (not its name or type), at most
    10 MB, width + height <= 10000, ratio <= 20."""
    if len(upload.data) > MAX_UPLOADED_PHOTO_BYTES or not upload.data:
        raise bad_request(IMAGE_PROCESS_FAILED)
    try:
        with Image.open(io.BytesIO(upload.data), formats=UPLOADED_FORMATS) as image:
            width, height = image.size
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        raise bad_request(IMAGE_PROCESS_FAILED) from None
    if (width + height > MAX_PHOTO_SIDES or min(width, height) < 1
            or max(width, height) > MAX_PHOTO_RATIO * min(width, height)):
        raise bad_request(PHOTO_INVALID_DIMENSIONS)


# --------------------------------------------------------------------------- parameter types

_JSON_FIELD_LABELS = {
    "reply_markup": "reply keyboard markup",
    "entities": "entities",
    "caption_entities": "entities",
    "link_preview_options": "link preview options",
    "media": "media",
}


def _type_error(name: str, type_name: str) -> ApiError:
    return bad_request(f'field "{name}" must be of type {type_name}')


def _json_error(name: str) -> ApiError:
    return bad_request(f"can't parse {_JSON_FIELD_LABELS.get(name, name)} JSON object")


def coerce(name: str, kind: str, value: Any) -> Any:
    """A parameter value (form string, JSON value or upload) converted to its spec type."""
    if isinstance(value, UploadedFile):
        if kind == "file":
            return value
        raise _type_error(name, _PRIMITIVE_TYPE_NAMES.get(kind, "String"))
    return _CONVERTERS[kind](name, value)


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value)
    raise _type_error(name, "Integer")


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise _type_error(name, "Boolean")


def _to_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _type_error(name, "String")


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    raise _type_error(name, "Float")


def _to_int_or_str(name: str, value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if _INT_RE.match(value.strip()) else value
    raise _type_error(name, "Integer or String")


def _to_json(name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise _json_error(name) from exc
    if not isinstance(value, dict | list):
        raise _json_error(name)
    return value


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "int": _to_int,
    "bool": _to_bool,
    "str": _to_str,
    "float": _to_float,
    "int_or_str": _to_int_or_str,
    "file": _to_str,
    "json": _to_json,
}

_MISSING_MESSAGES = {
    "text": "Bad Request: message text is empty",
    "photo": "Bad Request: there is no photo in the request",
}


def validate_params(method: MethodSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """Typed parameters; unknown ones are passed through untouched (Telegram ignores them)."""
    params: dict[str, Any] = {}
    for name, value in raw.items():
        kind = method.fields.get(name)
        if value is None or (kind is not None and value == ""):
            continue  # Telegram treats null and empty values as absent
        params[name] = value if kind is None else coerce(name, kind, value)
    missing = sorted(method.required - params.keys())
    if missing:
        name = missing[0]
        raise ApiError(400, _MISSING_MESSAGES.get(name, f"Bad Request: {name} is empty"))
    return params


def json_safe(params: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.describe() if isinstance(value, UploadedFile) else value
        for key, value in params.items()
    }


# --------------------------------------------------------------------------- content checks


def check_text(text: str, parse_mode: str | None) -> tuple[str, list[Json]]:
    visible, entities = render(text, parse_mode)
    if not visible.strip():
        raise bad_request("message text is empty")
    if utf16_len(visible) > TEXT_LIMIT:
        raise bad_request("message is too long")
    return visible, entities


def check_caption(caption: str | None, parse_mode: str | None) -> tuple[str, list[Json]]:
    if caption is None:
        return "", []
    visible, entities = render(caption, parse_mode)
    if utf16_len(visible) > CAPTION_LIMIT:
        raise bad_request("message caption is too long")
    return visible, entities


def check_reply_markup(markup: Any, button_actions: frozenset[str]) -> None:
    if not isinstance(markup, dict):
        raise ApiError(400, MARKUP_UNPARSABLE)
    if "inline_keyboard" not in markup:
        if not markup.keys() & {"keyboard", "remove_keyboard", "force_reply"}:
            raise ApiError(400, MARKUP_UNPARSABLE)
        return
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(400, MARKUP_UNPARSABLE)
    for button in itertools.chain.from_iterable(rows):
        check_inline_button(button, button_actions)


def check_inline_button(button: Any, button_actions: frozenset[str]) -> None:
    if not isinstance(button, dict):
        raise ApiError(400, MARKUP_UNPARSABLE)
    text = button.get("text")
    if not isinstance(text, str) or not text:
        raise bad_request('can\'t parse inline keyboard button: Field "text" must be non-empty')
    actions = button.keys() & button_actions
    if not actions:
        raise bad_request("text buttons are unallowed in the inline keyboard")
    if len(actions) > 1:
        raise bad_request(
            "can't parse inline keyboard button: exactly one of the optional fields must be used"
        )
    if "url" in button:
        check_button_url(button["url"])
    if "callback_data" in button:
        data = button["callback_data"]
        if not isinstance(data, str) or not 1 <= len(data.encode()) <= CALLBACK_DATA_MAX_BYTES:
            raise bad_request("BUTTON_DATA_INVALID")


def check_button_url(url: Any) -> None:
    if not isinstance(url, str):
        raise ApiError(400, MARKUP_UNPARSABLE)
    problem = _url_problem(url)
    if problem:
        raise bad_request(f"inline keyboard button URL '{url}' is invalid: {problem}")


def _url_problem(url: str) -> str | None:
    if not url or any(char.isspace() for char in url):
        return "Wrong HTTP URL"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "tg":
        return None if parts.netloc or parts.path else "Wrong tg:// URL"
    if scheme not in ("http", "https"):
        return "Unsupported URL protocol"
    if not parts.hostname or "." not in parts.hostname.strip("."):
        return "Wrong HTTP URL"
    return None


def check_link_preview_options(options: Any) -> None:
    if not isinstance(options, dict):
        raise bad_request("can't parse link preview options JSON object")
    for key, value in options.items():
        valid = isinstance(value, str) if key == "url" else isinstance(value, bool)
        if not valid:
            raise bad_request("can't parse link preview options JSON object")


def is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


# --------------------------------------------------------------------------- chats


def chat_key(chat: int | str) -> int | str:
    """Canonical chat identity: an int id, or a lower-cased "@username"."""
    if isinstance(chat, int):
        return chat
    text = chat.strip()
    if _INT_RE.match(text):
        return int(text)
    return text.lower()


def chat_json(chat_id: int, username: str | None) -> Json:
    if username is not None or chat_id <= -1_000_000_000_000:
        chat: Json = {"id": chat_id, "type": "channel", "title": username or f"Channel {chat_id}"}
    elif chat_id < 0:
        chat = {"id": chat_id, "type": "group", "title": f"Group {chat_id}"}
    else:
        chat = {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
    if username is not None:
        chat["username"] = username
    return chat


def forum_json(chat_id: int, username: str | None) -> Json:
    """A supergroup with topics ("is_forum"), public when it has a username."""
    chat: Json = {"id": chat_id, "type": "supergroup", "title": username or f"Forum {chat_id}",
                  "is_forum": True}
    if username is not None:
        chat["username"] = username
    return chat


CHAT_QUESTIONS = frozenset({"getChat", "getChatMember"})
MEMBER_STATUSES = frozenset({"creator", "administrator", "member", "restricted", "left",
                             "kicked"})
_ADMIN_RIGHTS = (
    "can_be_edited", "is_anonymous", "can_manage_chat", "can_delete_messages",
    "can_manage_video_chats", "can_restrict_members", "can_promote_members", "can_change_info",
    "can_invite_users", "can_post_stories", "can_edit_stories", "can_delete_stories",
)
_RESTRICTED_RIGHTS = (
    "can_send_audios", "can_send_documents", "can_send_photos", "can_send_videos",
    "can_send_video_notes", "can_send_voice_notes", "can_send_polls", "can_send_other_messages",
    "can_add_web_page_previews", "can_react_to_messages", "can_edit_tag", "can_change_info",
    "can_invite_users", "can_pin_messages", "can_manage_topics",
)


def chat_full_info(chat: Json) -> Json:
    """getChat's answer: a ChatFullInfo with every field the spec requires."""
    info: Json = {
        **chat,
        "accent_color_id": 0,
        "max_reaction_count": 11,
        "accepted_gift_types": {
            "unlimited_gifts": False, "limited_gifts": False, "unique_gifts": False,
            "premium_subscription": False, "gifts_from_channels": False,
        },
    }
    if chat["type"] in ("group", "supergroup"):
        info["permissions"] = {"can_send_messages": True, "can_send_photos": True}
    return info


def default_member_status(chat_type: str) -> str:
    """A bot that posts to a channel is one of its administrators; in a group, a member."""
    return "administrator" if chat_type == "channel" else "member"


def chat_member(status: str, user: Json, **rights: bool) -> Json:
    """A ChatMember of the given status with the fields the spec requires for it."""
    member: Json = {"status": status, "user": user}
    if status == "creator":
        member["is_anonymous"] = False
    elif status == "administrator":
        member.update(dict.fromkeys(_ADMIN_RIGHTS, False))
        member.update(can_post_messages=True, can_edit_messages=True)
    elif status == "restricted":
        member.update(dict.fromkeys(_RESTRICTED_RIGHTS, True))
        member.update(is_member=True, can_send_messages=False, until_date=0)
    elif status == "kicked":
        member["until_date"] = 0
    member.update(rights)
    return member


# --------------------------------------------------------------------------- rate limits


class RateLimiter:
    """Telegram-like flood control: per-chat interval, per-chat per minute, global per second."""

    def __init__(
        self,
        per_chat_interval: float,
        per_chat_per_minute: int,
        global_per_second: int,
        clock: Callable[[], float],
    ) -> None:
        self.per_chat_interval = per_chat_interval
        self.per_chat_per_minute = per_chat_per_minute
        self.global_per_second = global_per_second
        self.clock = clock
        self._last: dict[int, float] = {}
        self._minute: dict[int, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._second: collections.deque[float] = collections.deque()

    def acquire(self, chat_id: int, count: int = 1) -> None:
        """Take count message slots for chat_id or raise a 429 ApiError."""
        now = self.clock()
        minute, second = self._minute[chat_id], self._second
        _expire(minute, now - 60)
        _expire(second, now - 1)
        # Telegram's 20 per minute is a group's (and channel's) limit; a private chat
        # (a positive id) has only its ~1 per second.
        per_minute = self.per_chat_per_minute if chat_id < 0 else math.inf
        waits = [
            self._last.get(chat_id, -math.inf) + self.per_chat_interval - now,
            _window_wait(minute, count, per_minute, 60, now),
            _window_wait(second, count, self.global_per_second, 1, now),
        ]
        wait = max(waits)
        if wait > 0:
            raise too_many_requests(max(1, math.ceil(wait)))
        self._last[chat_id] = now
        minute.extend([now] * count)
        second.extend([now] * count)

    def reset(self) -> None:
        self._last.clear()
        self._minute.clear()
        self._second.clear()


def _expire(window: collections.deque[float], before: float) -> None:
    while window and window[0] <= before:
        window.popleft()


def _window_wait(
    window: collections.deque[float], count: int, limit: float, span: float, now: float
) -> float:
    excess = len(window) + count - limit
    if excess <= 0:
        return 0.0
    return window[int(min(excess, len(window))) - 1] + span - now


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Recorded:
    """One accepted message (a media group yields one per item)."""

    method: str
    chat_id: int | str  # as sent: an int id or "@username"
    message_id: int
    text: str | None
    caption: str | None
    parse_mode: str | None
    photo: str | None  # URL, file_id, or "upload:<filename>"
    reply_markup: Json | None
    link_preview_options: Json | None
    params: Json
    at: float  # wall-clock time.time()
    visible_text: str = ""  # text/caption as a user sees it after entity parsing
    entities: list[Json] = field(default_factory=list)
    chat: Json = field(default_factory=dict)
    media_group_id: str | None = None
    message_thread_id: int | None = None  # the forum topic it was posted in
    disable_notification: bool = False  # sent silently
    forward_origin: Json | None = None  # a forward's MessageOrigin (forwardMessage)

    def to_json(self) -> Json:
        return asdict(self)


@dataclass(frozen=True)
class RequestLog:
    method: str
    params: Json
    status: int  # 0 when the connection was dropped without a reply
    fault: str | None
    at: float


@dataclass
class Fault:
    kind: str
    remaining: int
    # Lower-cased; None matches any method but the questions (getMe, getChat, getChatMember):
    # a fault is for what a test sends unless it names the method.
    method: str | None
    chat: int | str | None
    retry_after: Any  # any JSON value: a broken server may send -5 or "soon"

    def matches(self, method: str, chat: int | str | None) -> bool:
        if self.remaining <= 0:
            return False
        method_ok = (
            method.lower() not in _QUESTIONS if self.method is None else self.method == method
        )
        return method_ok and (self.chat is None or self.chat == chat)


# The update methods too: a test's fault is for what the bot sends, not for a poller that
# happens to run alongside (name the method to fault getUpdates).
_QUESTIONS = frozenset({"getme", "getchat", "getchatmember", "getupdates", "getwebhookinfo",
                        "setwebhook", "deletewebhook"})


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delivery: Delivery = "send"


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps(payload, ensure_ascii=False).encode(), headers=headers)


def error_reply(error: ApiError) -> Reply:
    headers: tuple[tuple[str, str], ...] = ()
    if error.parameters and "retry_after" in error.parameters:
        headers = (("Retry-After", str(error.parameters["retry_after"])),)
    return json_reply(error.error_code, error.envelope(), headers)


@dataclass
class _Outcome:
    """What one API call produced: the result payload and the messages to record."""

    result: Any
    records: list[Recorded] = field(default_factory=list)


# --------------------------------------------------------------------------- the stand-in


class BotApiStandin:
    """A strict Bot API server on 127.0.0.1 in a background thread (use as context manager)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_username: str = "publisher_test_bot",
        known_chats: Iterable[int | str] | None = None,
        rate_limits: bool = True,
        per_chat_interval: float = 1.0,
        per_chat_per_minute: int = 20,
        global_per_second: int = 30,
        slow_seconds: float = 3.0,
        huge_bytes: int = HUGE_BYTES,
        bomb_bytes: int = BOMB_BYTES,
        clock: Callable[[], float] = time.monotonic,
        record_file: str | Path | None = None,
        webhook_http_ok: bool = False,
        webhook_retry_seconds: float = 0.1,
        private_chats_need_start: bool = False,
    ) -> None:
        if not _TOKEN_RE.match(token):
            raise ValueError(f"token {token!r} does not look like a bot token (123456:ABC...)")
        spec = load_spec()
        self.token = token
        self.bot_username = bot_username
        self.slow_seconds = slow_seconds
        self.huge_bytes = huge_bytes
        self.bomb_bytes = bomb_bytes
        self.rate_limits = rate_limits
        self.limiter = RateLimiter(per_chat_interval, per_chat_per_minute, global_per_second, clock)
        self._methods = method_specs(spec)
        self._button_actions = inline_button_actions(spec)
        self._address = (host, port)
        self._record_path = Path(record_file) if record_file else None
        self._record_stream: TextIO | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._configured_chats = [chat_key(chat) for chat in known_chats or ()]
        self._init_updates(clock, webhook_http_ok, webhook_retry_seconds,
                           private_chats_need_start)
        self._init_state()

    def _init_state(self) -> None:
        self._messages: list[Recorded] = []
        self._requests: list[RequestLog] = []
        self._faults: list[Fault] = []
        self._photo_rules: list[tuple[Callable[[str], bool], str]] = []
        self._uploads: list[UploadedFile] = []  # photos accepted as multipart uploads
        self._chat_rules: dict[int | str, ApiError] = {}
        self._known: set[int | str] | None = (
            set(self._configured_chats) if self._configured_chats else None
        )
        self._usernames: dict[str, int] = {}  # "@name" -> chat id
        self._display_names: dict[int, str] = {}  # chat id -> username as first seen
        self._next_message_id: dict[int, int] = collections.defaultdict(lambda: 1)
        self._members: dict[int, tuple[str, dict[str, bool]]] = {}  # chat id -> the bot's
        self._forums: dict[int, dict[int, str]] = {}  # forum chat id -> its topics' names
        self._closed: set[tuple[int, int]] = set()  # (forum chat id, thread)
        self._edits: list[Recorded] = []  # every accepted edit: the message as it became
        self._foreign: set[tuple[int, int]] = set()  # (chat id, message id) not the bot's
        self._deleted: list[Recorded] = []
        self._fault_script: dict[str, collections.deque[str]] = {}  # method -> faults, "" none
        self._down = False
        self._status_all: int | None = None
        self.limiter.reset()
        self._init_updates_state()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> BotApiStandin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._record_path is not None:
            self._record_stream = self._record_path.open("a", encoding="utf-8")
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="botapi-standin",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._stop_updates()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        if self._record_stream is not None:
            self._record_stream.close()
        self._server = self._thread = self._record_stream = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What telegram.Bot(token, base_url=...) wants: PTB appends the token and /method."""
        return f"{self.url}/bot"

    # ----------------------------------------------------------------- configuration

    def inject(
        self,
        fault: str,
        times: int = 1,
        method: str | None = None,
        chat_id: int | str | None = None,
        retry_after: Any = 1,
    ) -> None:
        """Queue a fault for the next `times` matching requests (method=None: every method
        but getMe, getChat and getChatMember).

        ``retry_after`` is what a "429" fault answers, as is: a number, or any JSON value.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        chat = None if chat_id is None else chat_key(chat_id)
        with self._lock:
            self._faults.append(
                Fault(fault, times, method.lower() if method else None, chat, retry_after)
            )

    def set_down(self, down: bool = True) -> None:
        """While down, every API request gets nginx's 502 HTML page."""
        with self._lock:
            self._down = down

    def set_status_all(self, status: int | None) -> None:
        """Answer every API request with this error status (JSON envelope); None to stop."""
        with self._lock:
            self._status_all = status

    def forbid_chat(self, chat: int | str, *, kicked: bool = True) -> None:
        """403 for chat: "bot was kicked" or (kicked=False) "bot is not a member"."""
        self._set_chat_rule(chat, ApiError(403, KICKED if kicked else NOT_MEMBER))

    def migrate_chat(self, old: int | str, new_id: int) -> None:
        self._set_chat_rule(old, ApiError(400, CHAT_MIGRATED, {"migrate_to_chat_id": new_id}))

    def unknown_chat(self, chat: int | str) -> None:
        self._set_chat_rule(chat, ApiError(400, CHAT_NOT_FOUND))

    def set_member(self, chat: int | str, status: str, **rights: bool) -> None:
        """What getChatMember says of the bot in chat: "administrator", "member",
        "restricted", "left", "kicked" or "creator"; rights override the defaults (e.g.
        can_post_messages=False, can_send_messages=False)."""
        if status not in MEMBER_STATUSES:
            raise ValueError(f"status must be one of {sorted(MEMBER_STATUSES)}")
        with self._lock:
            chat_id = self._resolve_chat(chat, sending=False)["id"]
            self._members[chat_id] = (status, dict(rights))

    def allow_chat(self, chat: int | str) -> None:
        """Drop any forbid/migrate/unknown rule for chat."""
        with self._lock:
            self._chat_rules.pop(chat_key(chat), None)

    def add_chat(self, chat: int | str, chat_id: int | None = None) -> None:
        """Make chat known (once any chat is added, other chats are "chat not found").

        With a "@username" and chat_id, both identify the same channel.
        """
        key = chat_key(chat)
        with self._lock:
            self._known = (self._known or set()) | {key}
            if isinstance(key, str) and chat_id is not None:
                self._usernames[key] = chat_id
                self._display_names[chat_id] = str(chat).strip().lstrip("@")
                self._known.add(chat_id)

    def add_forum(self, chat: int | str, chat_id: int | None = None,
                  topics: Iterable[int] = ()) -> None:
        """Make chat a known forum supergroup (with "@username" and chat_id, one chat)
        whose topics are ``topics`` (more come from ``add_topic`` or createForumTopic)."""
        self.add_chat(chat, chat_id)
        with self._lock:
            forum_id = self._resolve_chat(chat, sending=False)["id"]
            self._forums.setdefault(forum_id, {})
        for thread in topics:
            self.add_topic(chat, thread)

    def add_topic(self, chat: int | str, thread: int, name: str = "") -> None:
        """A topic of a forum added by ``add_forum``; its ids come after the chat's messages
        (a topic's id is that of the message that created it)."""
        with self._lock:
            forum_id = self._resolve_chat(chat, sending=False)["id"]
            self._forums[forum_id][thread] = name or f"Topic {thread}"
            self._next_message_id[forum_id] = max(self._next_message_id[forum_id], thread + 1)

    def delete_topic(self, chat: int | str, thread: int) -> None:
        with self._lock:
            self._forums[self._resolve_chat(chat, sending=False)["id"]].pop(thread)

    def close_topic(self, chat: int | str, thread: int, closed: bool = True) -> None:
        """A closed topic takes messages only from administrators who may manage topics."""
        with self._lock:
            key = (self._resolve_chat(chat, sending=False)["id"], thread)
            if closed:
                self._closed.add(key)
            else:
                self._closed.discard(key)

    def refuse_photo(
        self, url_or_predicate: str | Callable[[str], bool], reason: str = PHOTO_WRONG_ID
    ) -> None:
        """Fail photos whose URL/file_id equals the string (or satisfies the predicate)."""
        reason = reason.removeprefix("Bad Request: ")
        if reason not in PHOTO_REASONS:
            raise ValueError(f"reason must be one of {PHOTO_REASONS}")
        predicate = (
            url_or_predicate
            if callable(url_or_predicate)
            else functools.partial(str.__eq__, url_or_predicate)
        )
        with self._lock:
            self._photo_rules.append((predicate, reason))

    def reset(self) -> None:
        """Forget messages, requests, faults, chat/photo rules, rate-limit history, down state."""
        with self._lock:
            self._init_state()

    def _set_chat_rule(self, chat: int | str, error: ApiError) -> None:
        with self._lock:
            self._chat_rules[chat_key(chat)] = error

    # ----------------------------------------------------------------- records

    @property
    def messages(self) -> list[Recorded]:
        with self._lock:
            return list(self._messages)

    @property
    def requests(self) -> list[RequestLog]:
        with self._lock:
            return list(self._requests)

    @property
    def uploads(self) -> list[UploadedFile]:
        """The files sendPhoto accepted (as uploaded), in order."""
        with self._lock:
            return list(self._uploads)

    def sent_to(self, chat: int | str) -> list[Recorded]:
        """Accepted messages for chat, by "@username" or by numeric id."""
        key = chat_key(chat)
        with self._lock:
            chat_id = self._usernames.get(key) if isinstance(key, str) else key
            return [
                record
                for record in self._messages
                if chat_key(record.chat_id) == key or record.chat.get("id") == chat_id
            ]

    # ----------------------------------------------------------------- dispatch

    def dispatch(self, http_method: str, path: str, content_type: str, body: bytes) -> Reply:
        """Answer one HTTP request (called from the server's handler threads)."""
        target = urlsplit(path)
        if target.path.startswith("/_control/"):
            return self._control(http_method, target.path, body)
        with self._lock:
            if self._down:
                return Reply(502, NGINX_502, "text/html")
            status_all = self._status_all
        if status_all is not None:
            return error_reply(ApiError(status_all, _status_phrase(status_all)))
        try:
            method, raw = self._route(target.path, target.query, content_type, body)
        except ApiError as error:
            return error_reply(error)
        return self._call(method, raw)

    def _route(
        self, path: str, query: str, content_type: str, body: bytes
    ) -> tuple[MethodSpec, dict[str, Any]]:
        match = _API_PATH_RE.match(path)
        if match is None or not _TOKEN_RE.match(match["token"]):
            raise ApiError(404, "Not Found")
        if match["token"] != self.token:
            raise ApiError(401, "Unauthorized")
        method = self._methods.get(match["method"].lower())
        if method is None:
            raise ApiError(404, "Not Found")
        raw: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        raw.update(parse_body(content_type, body))
        return method, raw

    def _call(self, method: MethodSpec, raw: dict[str, Any]) -> Reply:
        raw_chat = raw.get("chat_id")
        fault = self._take_fault(method.name, raw_chat)
        if fault is not None and fault.kind not in AFTER_RECORD_DELIVERY:
            reply = _fault_reply(fault)
        else:
            reply = self._execute(method, raw)
            if fault is not None and reply.status == HTTPStatus.OK:
                reply = Reply(reply.status, reply.body,
                              delivery=AFTER_RECORD_DELIVERY[fault.kind])
        self._log(method.name, raw, reply, fault)
        return reply

    def _take_fault(self, method: str, raw_chat: Any) -> Fault | None:
        scripted, fault = self._scripted_fault(method)
        if scripted:
            return fault
        chat = chat_key(raw_chat) if isinstance(raw_chat, int | str) else None
        with self._lock:
            # A fault for "@name" also meets what is sent to that channel by its id.
            names: list[int | str | None] = [None] if chat is None else self._aliases(chat)
            for fault in self._faults:
                if any(fault.matches(method.lower(), name) for name in names):
                    fault.remaining -= 1
                    return fault
        return None

    def _log(self, method: str, raw: dict[str, Any], reply: Reply, fault: Fault | None) -> None:
        status = 0 if reply.delivery == "drop" else reply.status
        entry = RequestLog(
            method, json_safe(raw), status, fault.kind if fault else None, time.time()
        )
        with self._lock:
            self._requests.append(entry)

    def _execute(self, method: MethodSpec, raw: dict[str, Any]) -> Reply:
        try:
            params = validate_params(method, raw)
            with self._lock:
                outcome = self._perform(method, params)
                self._record(outcome.records)
        except ApiError as error:
            return error_reply(error)
        return json_reply(200, {"ok": True, "result": outcome.result})

    def _perform(self, method: MethodSpec, params: dict[str, Any]) -> _Outcome:
        if method.name == "getMe":
            return _Outcome(self._bot_user())
        if method.name in UPDATE_METHODS:
            return _Outcome(self._update_method(method.name, params))
        sending = method.name not in CHAT_QUESTIONS
        chat = (
            self._resolve_chat(params["chat_id"], sending=sending) if "chat_id" in params
            else None
        )
        if chat is not None:
            chat = self._private_chat(chat, sending=sending)
        if chat is not None and method.name == "getChat":
            return _Outcome(chat_full_info(chat))
        if chat is not None and method.name == "getChatMember":
            return _Outcome(self._chat_member(chat, params["user_id"]))
        if chat is not None and method.name == "createForumTopic":
            return _Outcome(self._create_topic(chat, params))
        if chat is not None and method.name in EDIT_METHODS:
            return _Outcome(self._edit_message(method.name, chat, params))
        if chat is not None and method.name == "deleteMessage":
            return _Outcome(self._delete_message(chat, params))
        if chat is not None and method.name == "forwardMessage":
            return self._forward_message(method, chat, params)
        if chat is None or not method.creates_message:
            return _Outcome(True)
        self._check_thread(chat, params.get("message_thread_id"))
        builders = {
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendMediaGroup": self._send_media_group,
        }
        records = builders.get(method.name, self._send_other)(method.name, chat, params)
        if self.rate_limits:
            self.limiter.acquire(chat["id"], len(records))
        return self._assign_ids(method, chat, records)

    # ----------------------------------------------------------------- edits

    @property
    def edits(self) -> list[Recorded]:
        """Accepted edits, oldest first: each the whole message as the edit left it."""
        with self._lock:
            return list(self._edits)

    def delete_by_admin(self, chat: int | str, message_id: int) -> None:
        """An admin deletes a message: it cannot be edited any more."""
        chat_id = self._resolve_chat(chat, sending=False)["id"]
        with self._lock:
            self._messages = [record for record in self._messages
                              if (record.chat.get("id"), record.message_id)
                              != (chat_id, message_id)]

    def post_as_other(self, chat: int | str, text: str) -> int:
        """Someone else (another admin) posts ``text``: the bot cannot edit it."""
        found = self._resolve_chat(chat, sending=False)
        with self._lock:
            record = self._new_record("sendMessage", found, {"chat_id": found["id"]},
                                      text=text, visible=text, entities=[])
            message_id = self._next_message_id[found["id"]]
            self._next_message_id[found["id"]] = message_id + 1
            self._messages.append(_replace_id(record, message_id))
            self._foreign.add((found["id"], message_id))
        return message_id

    def _edit_message(self, method: str, chat: Json, params: Json) -> Json:
        """editMessageText/Caption/Media/ReplyMarkup of a message in ``chat``, as Telegram
        answers them (not found, not the bot's, not modified)."""
        index, old = self._message_to_edit(chat, params.get("message_id"))
        if (chat["id"], old.message_id) in self._foreign:
            raise bad_request("message can't be edited")
        new = _edited(self, method, old, params)
        if _shown(new) == _shown(old):
            raise bad_request(NOT_MODIFIED)
        self._messages[index] = new
        self._edits.append(new)
        return self._message_json(new)

    def _delete_message(self, chat: Json, params: Json) -> bool:
        """deleteMessage as Telegram answers a bot: not found, not the bot's in a group,
        or older than 48 hours (by its records' wall clock) cannot be deleted."""
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise bad_request("message identifier is not specified")
        found = next(((index, record) for index, record in enumerate(self._messages)
                      if record.chat.get("id") == chat["id"]
                      and record.message_id == message_id), None)
        if found is None:
            raise bad_request("message to delete not found")
        index, record = found
        foreign = (chat["id"], message_id) in self._foreign and chat.get("type") != "channel"
        if foreign or time.time() - record.at >= DELETE_WINDOW_SECONDS:
            raise bad_request("message can't be deleted")
        del self._messages[index]
        self._deleted.append(record)
        return True

    @property
    def deleted(self) -> list[Recorded]:
        """Messages deleted by deleteMessage, oldest first."""
        with self._lock:
            return list(self._deleted)

    def set_message_date(self, chat: int | str, message_id: int, at: float) -> None:
        """Tests: the message was sent at ``at`` (a Unix time), e.g. to make it too old to
        delete."""
        chat_id = self._resolve_chat(chat, sending=False)["id"]
        with self._lock:
            self._messages = [replace(record, at=at)
                              if (record.chat.get("id"), record.message_id)
                              == (chat_id, message_id) else record
                              for record in self._messages]

    def _message_to_edit(self, chat: Json, message_id: Any) -> tuple[int, Recorded]:
        if not isinstance(message_id, int):
            raise bad_request("message identifier is not specified")
        for index, record in enumerate(self._messages):
            if record.chat.get("id") == chat["id"] and record.message_id == message_id:
                return index, record
        raise bad_request("message to edit not found")

    def _check_thread(self, chat: Json, thread: int | None) -> None:
        """A message_thread_id names an open topic of a forum supergroup (a plain group's
        reply threads are not modelled: none exists)."""
        if thread is not None and thread not in self._forums.get(chat["id"], {}):
            raise ApiError(400, THREAD_NOT_FOUND)
        if (chat["id"], thread) in self._closed and not self._manages_topics(chat):
            raise ApiError(400, TOPIC_CLOSED)

    def _manages_topics(self, chat: Json) -> bool:
        member = self._chat_member(chat, self._bot_user()["id"])
        return member["status"] == "creator" or (
            member["status"] == "administrator" and member.get("can_manage_topics") is True)

    def _create_topic(self, chat: Json, params: Json) -> Json:
        """createForumTopic: a forum only, by an administrator that may manage topics."""
        if chat["id"] not in self._forums:
            raise bad_request("the chat is not a forum")
        name = params["name"]
        if not 1 <= utf16_len(name) <= 128:
            raise bad_request("TOPIC_TITLE_EMPTY" if not name else "TOPIC_TITLE_TOO_LONG")
        color = params.get("icon_color", TOPIC_ICON_COLORS[0])
        if color not in TOPIC_ICON_COLORS:
            raise bad_request("TOPIC_ICON_COLOR_INVALID")
        if not self._manages_topics(chat):
            raise ApiError(400, TOPIC_RIGHTS)
        thread = self._next_message_id[chat["id"]]
        self._next_message_id[chat["id"]] = thread + 1
        self._forums[chat["id"]][thread] = name
        return {"message_thread_id": thread, "name": name, "icon_color": color}

    def _aliases(self, key: int | str) -> list[int | str]:
        """Both names of a chat: its id and its "@username" (rules set by either apply)."""
        if isinstance(key, str):
            chat_id = self._usernames.get(key)
            return [key] if chat_id is None else [key, chat_id]
        username = self._display_names.get(key)
        return [key] if username is None else [key, f"@{username}".lower()]

    def _chat_member(self, chat: Json, user_id: int) -> Json:
        """The bot's membership in chat (other users are not tracked)."""
        bot = self._bot_user()
        if user_id != bot["id"]:
            raise bad_request("user not found")
        rule = next((self._chat_rules[alias] for alias in self._aliases(chat["id"])
                     if alias in self._chat_rules), None)
        if rule is not None and rule.error_code == 403:
            status = "kicked" if rule.description == KICKED else "left"
            return chat_member(status, bot)
        status, rights = self._members.get(chat["id"], (None, {}))
        return chat_member(status or default_member_status(chat["type"]), bot, **rights)

    def _bot_user(self) -> Json:
        bot_id = int(self.token.split(":", 1)[0])
        return {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Publisher Test Bot",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _resolve_chat(self, chat: int | str, *, sending: bool = True) -> Json:
        """The chat a chat_id names; its rules apply (a ban only to what it sends: the
        bot can still look a public channel up, and finds itself kicked from it)."""
        key = chat_key(chat)
        for candidate in self._aliases(key):
            rule = self._chat_rules.get(candidate)
            if rule is not None and (sending or rule.error_code != 403):
                raise rule
        if (isinstance(key, str) and not _USERNAME_RE.match(key)) or key == 0:
            raise ApiError(400, CHAT_NOT_FOUND)
        if self._known is not None and key not in self._known:
            raise ApiError(400, CHAT_NOT_FOUND)
        if isinstance(key, str):
            chat_id = self._usernames.setdefault(key, -1_001_000_000_000 - len(self._usernames))
            self._display_names.setdefault(chat_id, str(chat).strip().lstrip("@"))
        else:
            chat_id = key
        if chat_id in self._forums:
            return forum_json(chat_id, self._display_names.get(chat_id))
        return chat_json(chat_id, self._display_names.get(chat_id))

    # ----------------------------------------------------------------- send methods

    def _send_message(self, method: str, chat: Json, params: Json) -> list[Recorded]:
        visible, entities = check_text(params["text"], params.get("parse_mode"))
        self._check_markup(params)
        preview = params.get("link_preview_options")
        if preview is not None:
            check_link_preview_options(preview)
        elif params.get("disable_web_page_preview"):
            preview = {"is_disabled": True}
        return [
            self._new_record(
                method,
                chat,
                params,
                text=params["text"],
                visible=visible,
                entities=entities,
                link_preview_options=preview,
            )
        ]

    def _send_photo(self, method: str, chat: Json, params: Json) -> list[Recorded]:
        photo = self._check_media_source(params["photo"], params, is_photo=True)
        caption = params.get("caption")
        visible, entities = check_caption(caption, params.get("parse_mode"))
        self._check_markup(params)
        if isinstance(params["photo"], UploadedFile):
            self._uploads.append(params["photo"])
        return [
            self._new_record(
                method,
                chat,
                params,
                caption=caption,
                visible=visible,
                entities=entities,
                photo=photo,
            )
        ]

    def _send_media_group(self, method: str, chat: Json, params: Json) -> list[Recorded]:
        media = params["media"]
        if "reply_markup" in params:
            raise bad_request("reply markup is not allowed for media groups")
        if not isinstance(media, list) or not all(isinstance(item, dict) for item in media):
            raise bad_request("can't parse media JSON object")
        if not MEDIA_GROUP_MIN <= len(media) <= MEDIA_GROUP_MAX:
            raise bad_request("media must include 2-10 items")
        types = [item.get("type") for item in media]
        for kind in ("document", "audio"):
            if kind in types and set(types) != {kind}:
                raise bad_request(f"{kind} can't be mixed with other media types")
        group_id = str(secrets.randbelow(10**18))
        return [self._media_item(method, chat, params, item, group_id) for item in media]

    def _media_item(
        self, method: str, chat: Json, params: Json, item: Json, group_id: str
    ) -> Recorded:
        kind = item.get("type")
        if kind not in MEDIA_GROUP_TYPES:
            raise bad_request(f"unsupported media type {kind!r} in the media group")
        source = self._check_media_source(item.get("media"), params, is_photo=kind == "photo")
        caption = item.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise bad_request("can't parse media JSON object")
        visible, entities = check_caption(caption, item.get("parse_mode"))
        return self._new_record(
            method,
            chat,
            {**params, "media": item},
            caption=caption,
            visible=visible,
            entities=entities,
            photo=source if kind == "photo" else None,
            parse_mode=item.get("parse_mode"),
            media_group_id=group_id,
        )

    def _send_other(self, method: str, chat: Json, params: Json) -> list[Recorded]:
        text, caption = params.get("text"), params.get("caption")
        if isinstance(text, str):
            visible, entities = check_text(text, params.get("parse_mode"))
        else:
            visible, entities = check_caption(caption, params.get("parse_mode"))
        self._check_markup(params)
        return [
            self._new_record(
                method,
                chat,
                params,
                text=text,
                caption=caption,
                visible=visible,
                entities=entities,
            )
        ]

    def _check_markup(self, params: Json) -> None:
        if "reply_markup" in params:
            check_reply_markup(params["reply_markup"], self._button_actions)

    def _check_media_source(self, source: Any, params: Json, *, is_photo: bool) -> str:
        """Validate a photo/media value (upload, attach://, URL or file_id); return its label."""
        if isinstance(source, str) and source.startswith("attach://"):
            source = params.get(source.removeprefix("attach://"))
            if not isinstance(source, UploadedFile):
                raise bad_request("file for an attach:// URL was not found in the request")
        if isinstance(source, UploadedFile):
            if is_photo:
                check_uploaded_photo(source)
            return source.describe()
        if not isinstance(source, str) or not (is_http_url(source) or _FILE_ID_RE.match(source)):
            raise bad_request(PHOTO_WRONG_ID)
        if is_photo:
            for predicate, reason in self._photo_rules:
                if predicate(source):
                    raise bad_request(reason)
        return source

    def _new_record(
        self,
        method: str,
        chat: Json,
        params: Json,
        *,
        visible: str,
        entities: list[Json],
        text: str | None = None,
        caption: str | None = None,
        photo: str | None = None,
        link_preview_options: Json | None = None,
        parse_mode: str | None = None,
        media_group_id: str | None = None,
    ) -> Recorded:
        return Recorded(
            method=method,
            chat_id=_as_sent(params["chat_id"]),
            message_id=0,  # assigned once the whole call is accepted
            text=text,
            caption=caption,
            parse_mode=parse_mode or params.get("parse_mode"),
            photo=photo,
            reply_markup=params.get("reply_markup"),
            link_preview_options=link_preview_options,
            params=json_safe(params),
            at=time.time(),
            visible_text=visible,
            entities=entities,
            chat=chat,
            media_group_id=media_group_id,
            message_thread_id=params.get("message_thread_id"),
            disable_notification=bool(params.get("disable_notification", False)),
        )

    def _assign_ids(self, method: MethodSpec, chat: Json, records: list[Recorded]) -> _Outcome:
        numbered = []
        for record in records:
            message_id = self._next_message_id[chat["id"]]
            self._next_message_id[chat["id"]] = message_id + 1
            numbered.append(_replace_id(record, message_id))
        messages = [self._message_json(record) for record in numbered]
        result = messages if method.returns == ("Array of Message",) else messages[0]
        return _Outcome(result, numbered)

    def _message_json(self, record: Recorded) -> Json:
        message: Json = {
            "message_id": record.message_id,
            "date": int(record.at),
            "chat": record.chat,
        }
        if record.chat["type"] == "channel":
            message["sender_chat"] = record.chat
        else:
            message["from"] = self._bot_user()
        if record.text is not None:
            message.update(text=record.visible_text, entities=record.entities)
        elif record.caption:
            message.update(caption=record.visible_text, caption_entities=record.entities)
        if record.photo is not None:
            message["photo"] = _photo_sizes()
        if record.media_group_id is not None:
            message["media_group_id"] = record.media_group_id
        if record.message_thread_id is not None:
            message.update(message_thread_id=record.message_thread_id, is_topic_message=True)
        markup = record.reply_markup
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        if record.link_preview_options is not None:
            message["link_preview_options"] = record.link_preview_options
        if record.forward_origin is not None:
            message["forward_origin"] = record.forward_origin
        return message

    def _record(self, records: list[Recorded]) -> None:
        self._messages.extend(records)
        if self._record_stream is None:
            return
        for record in records:
            self._record_stream.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        self._record_stream.flush()

    # ----------------------------------------------------------------- forwards and probes

    def _forward_message(self, method: MethodSpec, chat: Json, params: Json) -> _Outcome:
        """forwardMessage as Telegram does it: a new message in ``chat`` (the bot must be able
        to post there) showing the original's text and entities, or caption, caption entities
        and photo, with its ``forward_origin``; 400 "message to forward not found" for an id
        that is missing (deleted, or beyond the source chat's newest message)."""
        source = self._resolve_chat(params["from_chat_id"])
        message_id = params.get("message_id")
        original = next((record for record in self._messages
                         if record.chat.get("id") == source["id"]
                         and record.message_id == message_id), None)
        if original is None:
            raise bad_request("message to forward not found")
        self._check_thread(chat, params.get("message_thread_id"))
        if source["type"] == "channel":
            origin: Json = {"type": "channel", "chat": source, "message_id": original.message_id,
                            "date": int(original.at)}
        else:
            origin = {"type": "user", "sender_user": self._bot_user(), "date": int(original.at)}
        record = replace(
            original, method=method.name, chat_id=_as_sent(params["chat_id"]), message_id=0,
            params=json_safe(params), at=time.time(), chat=chat, reply_markup=None,
            media_group_id=None, message_thread_id=params.get("message_thread_id"),
            disable_notification=bool(params.get("disable_notification", False)),
            forward_origin=origin,
        )
        if self.rate_limits:
            self.limiter.acquire(chat["id"])
        return self._assign_ids(method, chat, [record])

    @property
    def forwards(self) -> list[Recorded]:
        """Every accepted forwardMessage, as the copy was made (deleted ones included)."""
        with self._lock:
            return [record for record in [*self._messages, *self._deleted]
                    if record.forward_origin is not None]

    @property
    def changed_messages(self) -> list[tuple[int, int]]:
        """(chat id, message id) of every message an accepted edit changed, in order: what
        a probe must never cause."""
        with self._lock:
            return [(record.chat["id"], record.message_id) for record in self._edits]

    def post_as_admin(self, chat: int | str, text: str, photo: str | None = None) -> int:
        """Another admin posts ``text`` (a caption, with ``photo``): a message id the bot did
        not make, between its own."""
        if photo is None:
            return self.post_as_other(chat, text)
        found = self._resolve_chat(chat, sending=False)
        with self._lock:
            record = self._new_record("sendPhoto", found, {"chat_id": found["id"]},
                                      caption=text, visible=text, entities=[], photo=photo)
            message_id = self._next_message_id[found["id"]]
            self._next_message_id[found["id"]] = message_id + 1
            self._messages.append(_replace_id(record, message_id))
            self._foreign.add((found["id"], message_id))
        return message_id

    def script_faults(self, method: str, faults: Iterable[str]) -> None:
        """The faults of the next calls of ``method``, one per call in order ("" for none):
        e.g. ``["", "drop", "", "slow_after_record"]`` for the 2nd and 4th sendPhoto. Scripted
        calls take no queued fault."""
        for fault in faults:
            if fault and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            self._fault_script[method.lower()] = collections.deque(faults)

    def _scripted_fault(self, method: str) -> tuple[bool, Fault | None]:
        """(whether the call is scripted, its fault)."""
        with self._lock:
            script = self._fault_script.get(method.lower())
            if not script:
                return False, None
            kind = script.popleft()
        return True, (Fault(kind, 0, method.lower(), None, 1) if kind else None)

    # ----------------------------------------------------------------- updates (followers)
    # What a bot that answers people receives: private-chat and group messages and callback
    # queries that a test injects, fetched by getUpdates (long polling) or POSTed to a
    # webhook; 403s for users who blocked the bot.  State is under self._lock;
    # self._updates_changed (a Condition on it) wakes long polls and the webhook thread.

    def _init_updates(self, clock: Callable[[], float], webhook_http_ok: bool,
                      webhook_retry_seconds: float, private_chats_need_start: bool) -> None:
        self.clock = clock  # the callback queries' 15 s, like the rate limits
        # Test-only relaxation: Telegram wants https on 443/80/88/8443; this also takes
        # http://127.0.0.1:<any port> so a test's plain HTTP receiver can be the webhook.
        self.webhook_http_ok = webhook_http_ok
        self.webhook_retry_seconds = webhook_retry_seconds
        # Telegram refuses a private chat whose user never wrote to the bot; opt-in, since
        # many tests send to positive ids nobody "started".
        self.private_chats_need_start = private_chats_need_start
        self._updates_changed = threading.Condition(self._lock)
        self._webhook_thread: threading.Thread | None = None
        self._poll_generation = 0  # the newest getUpdates; an older one still waiting: 409
        self._poll_calls = 0
        self._waiting_polls: set[int] = set()  # call numbers of getUpdates now waiting
        # Not reset by reset(): a bot's stored offset must never skip the updates after it.
        self._next_update_id = FIRST_UPDATE_ID

    def _init_updates_state(self) -> None:
        self._updates: list[Json] = []  # unconfirmed, oldest first
        self._injected: list[Json] = []  # every update ever made, as made
        self._allowed_updates = DEFAULT_ALLOWED_UPDATES
        self._users: dict[int, Json] = {}
        self._started: set[int] = set()
        self._private_refusals: dict[int, str] = {}  # user id -> the 403's description
        self._queries: dict[str, CallbackAnswer] = {}
        self._webhook: WebhookConfig | None = None
        self._webhook_error: tuple[int, str] | None = None
        self._webhook_deliveries: list[WebhookDelivery] = []
        with self._lock:
            self._updates_changed.notify_all()

    def _stop_updates(self) -> None:
        with self._lock:
            self._updates_changed.notify_all()
        if self._webhook_thread is not None:
            self._webhook_thread.join(timeout=5)
            self._webhook_thread = None

    # ---- test-side injection

    def user_message(self, user_id: int, text: str, *, first_name: str = "Ada",
                     username: str | None = None, language_code: str = "en") -> Json:
        """User ``user_id`` writes ``text`` to the bot in their private chat; returns the
        Update (``update["message"]["message_id"]``).  A leading /command (or
        /command@botname) carries a bot_command entity.  Writing again after block_bot
        restarts the bot for that user."""
        if user_id <= 0:
            raise ValueError("a user id is positive")
        _check_incoming_text(text)
        with self._lock:
            if self._private_refusals.get(user_id) == DEACTIVATED:
                raise ValueError(f"user {user_id} is deactivated: they cannot write")
            user = _user_json(user_id, first_name, username, language_code)
            self._users[user_id] = user
            if self._private_refusals.pop(user_id, None) is not None:
                self._enqueue("my_chat_member", self._membership_change(user_id, "kicked",
                                                                        "member"))
            self._started.add(user_id)
            if self._known is not None:
                self._known.add(user_id)
            return self._enqueue("message",
                                 self._incoming(_private_chat_json(user), user, text))

    def group_message(self, chat_id: int, user_id: int, text: str,
                      chat_type: Literal["group", "supergroup"] = "group", *,
                      first_name: str = "Ada", username: str | None = None) -> Json:
        """User ``user_id`` writes ``text`` in group ``chat_id`` (a supergroup's id is
        -100...); returns the Update."""
        if chat_type == "supergroup" and chat_id > -1_000_000_000_000:
            raise ValueError("a supergroup's id is -100... (at most -1000000000000)")
        if chat_type == "group" and not -1_000_000_000_000 < chat_id < 0:
            raise ValueError("a group's id is negative (and above -1000000000000)")
        _check_incoming_text(text)
        with self._lock:
            user = self._users.get(user_id) or _user_json(user_id, first_name, username, None)
            if self._known is not None:
                self._known.add(chat_id)
            chat = {"id": chat_id, "type": chat_type, "title": f"Group {chat_id}"}
            return self._enqueue("message", self._incoming(chat, user, text))

    def callback_query(self, user_id: int, message_id: int, data: str) -> Json:
        """User ``user_id`` taps the inline button with ``data`` under the bot's message
        ``message_id`` in their private chat; returns the Update
        (``update["callback_query"]["id"]``).  ValueError if there is no such button:
        Telegram could not produce that query."""
        with self._lock:
            record = next((r for r in self._messages if r.chat.get("id") == user_id
                           and r.chat.get("type") == "private"
                           and r.message_id == message_id), None)
            if record is None:
                raise ValueError(f"the bot has no message {message_id} in chat {user_id}")
            if data not in _callback_data(record.reply_markup):
                raise ValueError(f"message {message_id} has no button with data {data!r}")
            if self._private_refusals.get(user_id) == DEACTIVATED:
                raise ValueError(f"user {user_id} is deactivated: they cannot tap")
            user = self._users.get(user_id) or _user_json(user_id, "Ada", None, "en")
            query_id = str(10**18 + secrets.randbelow(8 * 10**18))
            self._queries[query_id] = CallbackAnswer(query_id, user_id, message_id, data,
                                                     asked_at=self.clock())
            query = {"id": query_id, "from": user, "message": self._message_json(record),
                     "chat_instance": str(user_id * 2654435761 % 10**19), "data": data}
            return self._enqueue("callback_query", query)

    def block_bot(self, user_id: int) -> None:
        """The user blocks the bot: sends to their chat get 403 "bot was blocked by the
        user"; the bot gets a my_chat_member update (member -> kicked), as from Telegram."""
        with self._lock:
            self._private_refusals[user_id] = BLOCKED
            self._enqueue("my_chat_member", self._membership_change(user_id, "member",
                                                                    "kicked"))

    def deactivate_user(self, user_id: int) -> None:
        """The user deletes their account: sends get 403 "user is deactivated"."""
        with self._lock:
            self._private_refusals[user_id] = DEACTIVATED

    # ---- test-side observation

    @property
    def poll_count(self) -> int:
        """How many getUpdates calls arrived."""
        with self._lock:
            return self._poll_calls

    def wait_for_poll(self, timeout: float = 5.0, *, after: int = 0) -> int:
        """Wait until a getUpdates long poll (the ``after``-th call or a later one) is
        waiting for updates; returns poll_count.  TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not any(call > after for call in self._waiting_polls):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no getUpdates is waiting after call {after}")
                self._updates_changed.wait(remaining)
            return self._poll_calls

    @property
    def pending_updates(self) -> list[Json]:
        """Updates not yet confirmed (by a getUpdates offset or a webhook's 2xx)."""
        with self._lock:
            return list(self._updates)

    @property
    def injected_updates(self) -> list[Json]:
        """Every update made, confirmed or not, oldest first."""
        with self._lock:
            return list(self._injected)

    @property
    def callback_answers(self) -> list[CallbackAnswer]:
        """Every callback query made, with when (stand-in clock) it was answered."""
        with self._lock:
            return list(self._queries.values())

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Each POST to the webhook: the update id and its outcome."""
        with self._lock:
            return list(self._webhook_deliveries)

    # ---- private chats as the send methods see them

    def _private_chat(self, chat: Json, *, sending: bool) -> Json:
        """A private chat of a user who wrote is shown as theirs; sends to a user who
        blocked the bot, was deactivated or (private_chats_need_start) never wrote: 403."""
        if chat.get("type") != "private":
            return chat
        user_id = chat["id"]
        if sending and user_id in self._private_refusals:
            raise ApiError(403, self._private_refusals[user_id])
        if sending and self.private_chats_need_start and user_id not in self._started:
            raise ApiError(403, CANT_INITIATE)
        user = self._users.get(user_id)
        return chat if user is None else _private_chat_json(user)

    # ---- building updates

    def _incoming(self, chat: Json, user: Json, text: str) -> Json:
        message_id = self._next_message_id[chat["id"]]
        self._next_message_id[chat["id"]] = message_id + 1
        message: Json = {"message_id": message_id, "from": user, "chat": chat,
                         "date": int(time.time()), "text": text}
        entities = _command_entities(text)
        if entities:
            message["entities"] = entities
        return message

    def _membership_change(self, user_id: int, old: str, new: str) -> Json:
        user = self._users.get(user_id) or _user_json(user_id, "Ada", None, "en")
        bot = self._bot_user()
        return {"chat": _private_chat_json(user), "from": user, "date": int(time.time()),
                "old_chat_member": chat_member(old, bot),
                "new_chat_member": chat_member(new, bot)}

    def _enqueue(self, kind: str, payload: Json) -> Json:
        update = {"update_id": self._next_update_id, kind: payload}
        self._next_update_id += 1
        self._injected.append(update)
        allowed = self._webhook.allowed if self._webhook is not None else None
        # Telegram does not keep an update of a type the bot did not ask for.
        if kind in (allowed if allowed is not None else self._allowed_updates):
            self._updates.append(update)
            self._updates_changed.notify_all()
        return update

    # ---- the update methods

    def _update_method(self, name: str, params: Json) -> Any:
        handlers: dict[str, Callable[[Json], Any]] = {
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._webhook_info,
            "answerCallbackQuery": self._answer_callback_query,
        }
        return handlers[name](params)

    def _get_updates(self, params: Json) -> list[Json]:
        """getUpdates: confirm what ``offset`` confirms, then the first ``limit`` updates,
        waiting up to ``timeout`` s for one (the lock is released while waiting)."""
        self._poll_calls += 1
        call = self._poll_calls
        if self._webhook is not None:
            raise ApiError(409, WEBHOOK_ACTIVE)
        self._confirm(params.get("offset", 0))
        if "allowed_updates" in params:
            self._allowed_updates = _allowed_updates(params["allowed_updates"])
        limit = min(max(params.get("limit", 100), 1), 100)  # Telegram clamps to 1-100
        deadline = time.monotonic() + max(params.get("timeout", 0), 0)
        self._poll_generation += 1
        generation = self._poll_generation
        self._updates_changed.notify_all()  # an older poll still waiting must give up
        self._waiting_polls.add(call)
        try:
            while True:
                if generation != self._poll_generation:
                    raise ApiError(409, TERMINATED_BY_OTHER)
                if self._webhook is not None:
                    raise ApiError(409, WEBHOOK_ACTIVE)
                remaining = deadline - time.monotonic()
                if self._updates or remaining <= 0 or self._stopping.is_set():
                    return self._updates[:limit]
                self._updates_changed.wait(remaining)
        finally:
            self._waiting_polls.discard(call)

    def _confirm(self, offset: int) -> None:
        """A positive offset confirms every earlier update; a negative one keeps only the
        last -offset updates (all previous ones are forgotten)."""
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    def _set_webhook(self, params: Json) -> bool:
        url = params["url"]
        problem = _webhook_url_problem(url, self.webhook_http_ok)
        if problem is not None:
            raise bad_request(f"bad webhook: {problem}")
        secret = params.get("secret_token")
        if secret is not None and len(secret) > SECRET_TOKEN_MAX:
            raise bad_request("secret token is too long")
        if secret is not None and not _SECRET_TOKEN_RE.fullmatch(secret):
            raise bad_request("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if allowed is not None:
            self._allowed_updates = _allowed_updates(allowed)
        if params.get("drop_pending_updates"):
            self._updates = []
        connections = min(max(params.get("max_connections", 40), 1), 100)
        self._webhook = WebhookConfig(url, secret, connections,
                                      None if allowed is None else self._allowed_updates)
        self._updates_changed.notify_all()
        if self._webhook_thread is None or not self._webhook_thread.is_alive():
            self._webhook_thread = threading.Thread(target=self._webhook_loop,
                                                    name="botapi-webhook", daemon=True)
            self._webhook_thread.start()
        return True

    def _delete_webhook(self, params: Json) -> bool:
        if params.get("drop_pending_updates"):
            self._updates = []
        self._webhook = None
        self._webhook_error = None
        self._updates_changed.notify_all()
        return True

    def _webhook_info(self, params: Json) -> Json:
        info: Json = {"url": "", "has_custom_certificate": False,
                      "pending_update_count": len(self._updates)}
        if self._webhook is not None:
            info.update(url=self._webhook.url, max_connections=self._webhook.max_connections,
                        ip_address="127.0.0.1")
            if self._webhook.allowed is not None:
                info["allowed_updates"] = sorted(self._webhook.allowed)
        if self._webhook is not None and self._webhook_error is not None:
            info.update(last_error_date=self._webhook_error[0],
                        last_error_message=self._webhook_error[1])
        return info

    def _answer_callback_query(self, params: Json) -> bool:
        """Once per query, within 15 s of the tap (by the stand-in's clock)."""
        query = self._queries.get(params["callback_query_id"])
        now = self.clock()
        if (query is None or query.answered_at is not None
                or now - query.asked_at > CALLBACK_ANSWER_SECONDS):
            raise ApiError(400, QUERY_TOO_OLD)
        text = params.get("text", "")
        if utf16_len(text) > CALLBACK_TEXT_MAX:
            raise bad_request("MESSAGE_TOO_LONG")
        url = params.get("url")
        if url is not None and not url.startswith(f"https://t.me/{self.bot_username}?start="):
            raise bad_request("URL_INVALID")  # only a game's or the bot's own start link
        cache_time = params.get("cache_time", 0)
        if cache_time < 0:
            raise bad_request("CACHE_TIME_INVALID")
        self._queries[query.query_id] = replace(
            query, answered_at=now, text=text, show_alert=bool(params.get("show_alert")),
            url=url, cache_time=cache_time)
        return True

    # ---- webhook delivery (a background thread)

    def _webhook_loop(self) -> None:
        """POST the oldest pending update to the webhook until it answers 2xx; on an error,
        keep it, record last_error_* and retry with a doubling backoff."""
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                webhook = self._webhook
                if webhook is None or not self._updates:
                    self._updates_changed.wait(0.5)
                    continue
                update = self._updates[0]
            error = _post_update(webhook.url, webhook.secret, update)
            with self._lock:
                self._webhook_deliveries.append(
                    WebhookDelivery(update["update_id"], error, time.time()))
                if error is None:
                    self._updates = [u for u in self._updates if u is not update]
                    failures = 0
                    continue
                self._webhook_error = (int(time.time()), error)
                failures += 1
                backoff = self.webhook_retry_seconds * 2 ** min(failures - 1, 10)
                # A new setWebhook (or deleteWebhook) ends the backoff: try the new URL now.
                cap = max(self.webhook_retry_seconds, WEBHOOK_MAX_BACKOFF)
                if self._updates_changed.wait_for(
                        lambda old=webhook: self._stopping.is_set() or self._webhook is not old,
                        timeout=min(backoff, cap)):
                    failures = 0

    def _updates_control(self, action: str, payload: Json) -> Any:
        """/_control/<action> for a stand-in in another process: the injections (POST a
        JSON object of their arguments; the answer's "result" is what they return) and
        GET updates, pending_updates, callback_answers, poll_count."""
        injections: dict[str, Callable[..., Any]] = {
            "user_message": self.user_message, "group_message": self.group_message,
            "callback_query": self.callback_query, "block_bot": self.block_bot,
            "deactivate_user": self.deactivate_user,
        }
        if action in injections:
            return injections[action](**payload)
        observations: dict[str, Callable[[], Any]] = {
            "updates": lambda: self.injected_updates,
            "pending_updates": lambda: self.pending_updates,
            "callback_answers": lambda: [asdict(a) for a in self.callback_answers],
            "poll_count": lambda: self.poll_count,
        }
        return observations[action]()


    # ----------------------------------------------------------------- /_control

    def _control(self, http_method: str, path: str, body: bytes) -> Reply:
        action = path.removeprefix("/_control/").strip("/")
        try:
            payload = json.loads(body) if body else {}
            if action in UPDATE_CONTROLS:
                return json_reply(200, {"ok": True,
                                        "result": self._updates_control(action, payload)})
            if http_method == "GET":
                return json_reply(200, self._control_query(action))
            self._control_command(action, payload)
        except (ApiError, ValueError, TypeError, KeyError) as exc:
            return json_reply(400, {"ok": False, "description": f"{type(exc).__name__}: {exc}"})
        return json_reply(200, {"ok": True})

    def _control_query(self, action: str) -> list[Json]:
        if action == "messages":
            return [record.to_json() for record in self.messages]
        if action == "requests":
            return [asdict(entry) for entry in self.requests]
        raise KeyError(action)

    def _control_command(self, action: str, payload: Json) -> None:
        commands: dict[str, Callable[[], None]] = {
            "inject": lambda: self.inject(
                payload["fault"],
                times=payload.get("times", 1),
                method=payload.get("method"),
                chat_id=payload.get("chat_id"),
                retry_after=payload.get("retry_after", 1),
            ),
            "down": lambda: self.set_down(bool(payload.get("down", True))),
            "status_all": lambda: self.set_status_all(payload.get("status")),
            "reset": self.reset,
            "forbid_chat": lambda: self.forbid_chat(payload["chat"]),
            "migrate_chat": lambda: self.migrate_chat(payload["chat"], payload["new_id"]),
            "unknown_chat": lambda: self.unknown_chat(payload["chat"]),
            "allow_chat": lambda: self.allow_chat(payload["chat"]),
            "add_forum": lambda: self.add_forum(
                payload["chat"], payload.get("chat_id"), payload.get("topics", ())
            ),
            "refuse_photo": lambda: self.refuse_photo(
                payload["url"], payload.get("reason", PHOTO_WRONG_ID)
            ),
            "set_member": lambda: self.set_member(
                payload["chat"], payload["status"], **payload.get("rights", {})
            ),
        }
        commands[action]()


def _as_sent(chat: int | str) -> int | str:
    key = chat_key(chat)
    return key if isinstance(key, int) else str(chat).strip()


DELETE_WINDOW_SECONDS = 48 * 3600  # a bot deletes only messages younger than this
EDIT_METHODS = frozenset({"editMessageText", "editMessageCaption", "editMessageMedia",
                          "editMessageReplyMarkup"})
NOT_MODIFIED = ("message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message")


def _shown(record: Recorded) -> tuple[Any, ...]:
    """What "not modified" compares: the content and the reply markup."""
    return (record.visible_text, json.dumps(record.entities, sort_keys=True), record.photo,
            json.dumps(record.reply_markup, sort_keys=True))


def _edited(standin: BotApiStandin, method: str, old: Recorded, params: Json) -> Recorded:
    """The message ``old`` as the edit ``method`` with ``params`` makes it."""
    markup = params.get("reply_markup")
    if markup is not None:
        standin._check_markup(params)
    changes: Json = {"reply_markup": markup}
    if method == "editMessageText":
        if old.text is None:
            raise bad_request("there is no text in the message to edit")
        visible, entities = check_text(params["text"], params.get("parse_mode"))
        changes.update(text=params["text"], visible_text=visible, entities=entities,
                       parse_mode=params.get("parse_mode"))
        preview = params.get("link_preview_options")
        if preview is not None:
            check_link_preview_options(preview)
            changes["link_preview_options"] = preview
    elif method == "editMessageCaption":
        if old.photo is None:
            raise bad_request("there is no caption in the message to edit")
        visible, entities = check_caption(params.get("caption"), params.get("parse_mode"))
        changes.update(caption=params.get("caption"), visible_text=visible, entities=entities,
                       parse_mode=params.get("parse_mode"))
    elif method == "editMessageMedia":
        media = params.get("media")
        if not isinstance(media, dict) or media.get("type") != "photo":
            raise bad_request("can't parse InputMedia: media is not a photo")
        if old.photo is None:
            raise bad_request("there is no media in the message to edit")
        photo = standin._check_media_source(media.get("media"), params, is_photo=True)
        visible, entities = check_caption(media.get("caption"), media.get("parse_mode"))
        changes.update(photo=photo, caption=media.get("caption"), visible_text=visible,
                       entities=entities, parse_mode=media.get("parse_mode"))
    return Recorded(**{**old.__dict__, **changes, "at": time.time()})


def _replace_id(record: Recorded, message_id: int) -> Recorded:
    return Recorded(**{**record.__dict__, "message_id": message_id})


def _photo_sizes() -> list[Json]:
    unique = secrets.token_hex(8)
    return [
        {
            "file_id": f"AgACAgIAAxkBAAI{unique}{size}",
            "file_unique_id": f"AQAD{unique[:8]}{size}",
            "width": width,
            "height": height,
            "file_size": width * height // 10,
        }
        for size, (width, height) in enumerate([(90, 60), (320, 213), (1280, 853)])
    ]


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _fault_reply(fault: Fault) -> Reply:
    if fault.kind == "drop":
        return Reply(0, b"", delivery="drop")
    if fault.kind == "502_html":
        return Reply(502, NGINX_502, "text/html")
    answers = {
        "ok_false": {"ok": False, "error_code": 503, "description": OK_FALSE_DESCRIPTION},
        "no_result": {"ok": True},
        "wrong_shape": {"ok": True, "result": "surprise"},
    }
    if fault.kind in answers:
        return json_reply(200, answers[fault.kind])
    errors = {
        "500": ApiError(500, "Internal Server Error"),
        "403": ApiError(403, KICKED),
        "429": too_many_requests(fault.retry_after),
        "refuse_photo": bad_request(PHOTO_WRONG_ID),
        "parse_entities": bad_request(
            'can\'t parse entities: Unsupported start tag "x" at byte offset 0'
        ),
    }
    return error_reply(errors[fault.kind])


# --------------------------------------------------------------------------- gzip bomb

_MIB = 1024 * 1024
_BOMB_PREFIX = b'{"padding": "'


@dataclass(frozen=True)
class GzipBomb:
    """A gzip stream of ``{"padding": "xxx...", <the real answer's fields>}``, made cheaply.

    Each MiB of padding is one raw-deflate block ended by a full flush, which resets the
    compressor: every such block is the same bytes, made once and written ``repeat`` times.
    Only the answer's own end (a final block) and the gzip trailer (CRC-32 and size) are
    made per reply.
    """

    start: bytes  # the gzip header and the padding's start, as deflate
    block: bytes  # one MiB of padding, as deflate
    repeat: int
    crc: int  # of the prefix and the padding
    size: int  # their bytes

    def ending(self, answer: bytes) -> bytes:
        """The answer's fields after the padding, as the final deflate block, and the gzip
        trailer."""
        end = b'", ' + answer[1:]
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        final = deflate.compress(end) + deflate.flush(zlib.Z_FINISH)
        size = (self.size + len(end)) % 2**32
        return final + zlib.crc32(end, self.crc).to_bytes(4, "little") + size.to_bytes(4, "little")

    def length(self, ending: int) -> int:
        return len(self.start) + self.repeat * len(self.block) + ending


@functools.lru_cache(maxsize=4)
def gzip_bomb(decoded_bytes: int) -> GzipBomb:
    repeat = max(decoded_bytes // _MIB, 1)
    padding = b"x" * _MIB
    first = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = first.compress(_BOMB_PREFIX) + first.flush(zlib.Z_FULL_FLUSH)
    block = first.compress(padding) + first.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(_BOMB_PREFIX)
    for _ in range(repeat):
        crc = zlib.crc32(padding, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no time
    return GzipBomb(header + start, block, repeat, crc, len(_BOMB_PREFIX) + repeat * _MIB)


# --------------------------------------------------------------------------- updates

UPDATE_CONTROLS = frozenset({"user_message", "group_message", "callback_query", "block_bot",
                             "deactivate_user", "updates", "pending_updates",
                             "callback_answers", "poll_count"})
UPDATE_METHODS = frozenset({"getUpdates", "setWebhook", "deleteWebhook", "getWebhookInfo",
                            "answerCallbackQuery"})
FIRST_UPDATE_ID = 725_000_001  # Telegram's ids start anywhere: never assume 0 or 1
# What Telegram sends when allowed_updates is absent or empty.
DEFAULT_ALLOWED_UPDATES = frozenset(
    {"message", "edited_message", "channel_post", "edited_channel_post", "inline_query",
     "chosen_inline_result", "callback_query", "shipping_query", "pre_checkout_query",
     "poll", "poll_answer", "my_chat_member", "chat_join_request", "chat_boost",
     "removed_chat_boost", "business_connection", "business_message",
     "edited_business_message", "deleted_business_messages", "purchased_paid_media"}
)
BLOCKED = "Forbidden: bot was blocked by the user"
DEACTIVATED = "Forbidden: user is deactivated"
CANT_INITIATE = "Forbidden: bot can't initiate conversation with a user"
TERMINATED_BY_OTHER = ("Conflict: terminated by other getUpdates request; make sure that only "
                       "one bot instance is running")
WEBHOOK_ACTIVE = ("Conflict: can't use getUpdates method while webhook is active; use "
                  "deleteWebhook to delete the webhook first")
QUERY_TOO_OLD = ("Bad Request: query is too old and response timeout expired or query ID is "
                 "invalid")
CALLBACK_ANSWER_SECONDS = 15.0
CALLBACK_TEXT_MAX = 200
WEBHOOK_PORTS = frozenset({443, 80, 88, 8443})
SECRET_TOKEN_MAX = 256
WEBHOOK_MAX_BACKOFF = 2.0  # Telegram backs off to minutes; tests want seconds
WEBHOOK_TIMEOUT_SECONDS = 2.0
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]{3,32})?(?=\s|$)")


@dataclass(frozen=True)
class CallbackAnswer:
    """A callback query made by callback_query() and how the bot answered it (times are
    the stand-in's clock)."""

    query_id: str
    user_id: int
    message_id: int
    data: str
    asked_at: float
    answered_at: float | None = None
    text: str = ""
    show_alert: bool = False
    url: str | None = None
    cache_time: int = 0

    @property
    def latency(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.asked_at


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str | None
    max_connections: int
    allowed: frozenset[str] | None  # as setWebhook named them; None: not named


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST of an update to the webhook; error None: it answered 2xx."""

    update_id: int
    error: str | None
    at: float  # wall-clock time.time()


def _user_json(user_id: int, first_name: str, username: str | None,
               language_code: str | None) -> Json:
    user: Json = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username is not None:
        user["username"] = username
    if language_code is not None:
        user["language_code"] = language_code
    return user


def _private_chat_json(user: Json) -> Json:
    chat: Json = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
    if "username" in user:
        chat["username"] = user["username"]
    return chat


def _check_incoming_text(text: str) -> None:
    if not text.strip() or utf16_len(text) > TEXT_LIMIT:
        raise ValueError("a message's text is 1-4096 characters, not blank")


def _command_entities(text: str) -> list[Json]:
    """A leading /command (or /command@bot) is a bot_command entity, as Telegram marks it."""
    match = _COMMAND_RE.match(text)
    if match is None:
        return []
    return [{"type": "bot_command", "offset": 0, "length": utf16_len(match.group())}]


def _callback_data(markup: Json | None) -> set[str]:
    if not isinstance(markup, dict) or not isinstance(markup.get("inline_keyboard"), list):
        return set()
    return {button["callback_data"] for row in markup["inline_keyboard"] for button in row
            if isinstance(button, dict) and isinstance(button.get("callback_data"), str)}


def _allowed_updates(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(kind, str) for kind in value):
        raise bad_request("can't parse allowed updates JSON object")
    return frozenset(value) if value else DEFAULT_ALLOWED_UPDATES


def _webhook_url_problem(url: str, http_ok: bool) -> str | None:
    """Telegram's reason to refuse a webhook URL (http_ok: the tests' 127.0.0.1 relaxation)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "Wrong port number specified in the URL"
    if parts.scheme == "http" and http_ok and parts.hostname == "127.0.0.1":
        return None
    if parts.scheme != "https":
        return "HTTPS url must be provided for webhook"
    if not parts.hostname or "." not in parts.hostname.strip("."):
        return "Failed to resolve host: Name or service not known"
    if (port or 443) not in WEBHOOK_PORTS:
        return "Webhook can be set up only on ports 80, 88, 443 or 8443"
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(parts.hostname).is_global:
            return f"IP address {parts.hostname} is reserved"
    return None


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post_update(url: str, secret: str | None, update: Json) -> str | None:
    """POST one update as Telegram does; None if the webhook answered 2xx, else what
    getWebhookInfo's last_error_message says."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    request = urllib.request.Request(url, data=json.dumps(update).encode(), headers=headers,
                                     method="POST")
    try:
        with _NO_PROXY_OPENER.open(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            response.read()
            status, reason = response.status, response.reason
    except urllib.error.HTTPError as error:
        status, reason = error.code, error.reason
        error.close()
    except TimeoutError:
        return "Read timeout expired"
    except (urllib.error.URLError, OSError) as error:
        refused = isinstance(getattr(error, "reason", error), ConnectionRefusedError)
        return "Connection refused" if refused else "Connection failed"
    if 200 <= status < 300:
        return None
    return f"Wrong response from the webhook: {status} {reason}"


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined by server_close()
    block_on_close = True

    def __init__(self, address: tuple[str, int], standin: BotApiStandin) -> None:
        self.standin = standin
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # The head and the body go out in two writes: without this, Nagle's algorithm and
        # the client's delayed ACK hold each keep-alive answer back ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        standin = self.server.standin
        reply = standin.dispatch(
            self.command, self.path, self.headers.get("Content-Type", ""), body
        )
        if reply.delivery == "drop":
            self.close_connection = True
            return
        if reply.delivery == "delay" and standin._stopping.wait(standin.slow_seconds):
            self.close_connection = True
            return
        writers = {"huge": self._write_huge, "trickle": self._write_trickling,
                   "chunked": self._write_chunked, "bomb": self._write_bomb}
        with contextlib.suppress(OSError):
            writers.get(reply.delivery, self._write)(reply)

    def _write(self, reply: Reply) -> None:
        self._write_head(reply, len(reply.body))
        self.wfile.write(reply.body)

    def _write_head(self, reply: Reply, length: int | None,
                    extra: tuple[tuple[str, str], ...] = ()) -> None:
        """The status line and headers; ``length`` None: chunked, no Content-Length."""
        self.send_response(reply.status)
        self.send_header("Server", "nginx/1.18.0")
        self.send_header("Content-Type", reply.content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        for name, value in (*reply.headers, *extra):
            self.send_header(name, value)
        self.end_headers()

    def _write_huge(self, reply: Reply) -> None:
        """The real answer padded to ``huge_bytes`` of valid JSON, streamed (never held)."""
        standin = self.server.standin
        head, tail = reply.body[:-1] + b', "padding": "', b'"}'
        padding = max(standin.huge_bytes - len(head) - len(tail), 0)
        self.close_connection = True
        self._write_head(reply, len(head) + padding + len(tail))
        self.wfile.write(head)
        chunk = b"x" * 65536
        while padding > 0 and not standin._stopping.is_set():
            self.wfile.write(chunk[:padding])
            padding -= len(chunk)
        self.wfile.write(tail)

    def _write_chunked(self, reply: Reply) -> None:
        """The real answer padded to ``huge_bytes`` of valid JSON, in chunked encoding: no
        Content-Length announces its size."""
        standin = self.server.standin
        head, tail = reply.body[:-1] + b', "padding": "', b'"}'
        padding = max(standin.huge_bytes - len(head) - len(tail), 0)
        self.close_connection = True
        self._write_head(reply, None)
        self._write_chunk(head)
        chunk = b"x" * 65536
        while padding > 0 and not standin._stopping.is_set():
            self._write_chunk(chunk[:padding])
            padding -= len(chunk)
        self._write_chunk(tail)
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write_bomb(self, reply: Reply) -> None:
        """The real answer after ``bomb_bytes`` of padding, gzip-encoded: a valid gzip stream
        of about 1 KB per MiB it decodes to, with its Content-Length."""
        bomb = gzip_bomb(self.server.standin.bomb_bytes)
        end = bomb.ending(reply.body)
        self.close_connection = True
        self._write_head(reply, bomb.length(len(end)), (("Content-Encoding", "gzip"),))
        self.wfile.write(bomb.start)
        for _ in range(bomb.repeat):
            if self.server.standin._stopping.is_set():
                return
            self.wfile.write(bomb.block)
        self.wfile.write(end)

    def _write_trickling(self, reply: Reply) -> None:
        """The real answer, one byte at a time, spread over ``slow_seconds``."""
        standin = self.server.standin
        pause = standin.slow_seconds / max(len(reply.body), 1)
        self.close_connection = True
        self._write_head(reply, len(reply.body))
        for index in range(len(reply.body)):
            if standin._stopping.wait(pause):
                return
            self.wfile.write(reply.body[index : index + 1])


# --------------------------------------------------------------------------- subprocess mode


class StandinProcess:
    """Runs this module as a separate process (context manager); for subprocess/kill -9 tests."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        record_path: str | Path | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.token = token
        self.record_path = Path(record_path) if record_path else None
        self._args = [sys.executable, str(Path(__file__).resolve()), "--port", "0"]
        self._args += ["--token", token, *extra_args]
        if self.record_path is not None:
            self._args += ["--record", str(self.record_path)]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> StandinProcess:
        self._process = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], self._startup_timeout)
        self.base_url = self._process.stdout.readline().strip() if ready else ""
        if not self.base_url.startswith("http://"):
            self.stop()
            raise RuntimeError("the stand-in process did not print its base URL")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def url(self) -> str:
        return self.base_url.removesuffix("/bot")

    def control(self, action: str, payload: Json | None = None) -> Any:
        """GET /_control/<action> without payload, POST it with one."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/_control/{action}", data=data)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def messages(self) -> list[Json]:
        return self.control("messages")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.terminate()
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()
        finally:
            if self._process.stdout is not None:
                self._process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Strict Telegram Bot API stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--record", help="append every accepted message as a JSON line here")
    parser.add_argument("--no-rate-limits", action="store_true")
    parser.add_argument("--per-chat-interval", type=float, default=1.0)
    parser.add_argument("--per-chat-per-minute", type=int, default=20)
    parser.add_argument("--global-per-second", type=int, default=30)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    parser.add_argument("--huge-bytes", type=int, default=HUGE_BYTES)
    parser.add_argument("--bomb-bytes", type=int, default=BOMB_BYTES)
    parser.add_argument("--bot-username", default="publisher_test_bot")
    parser.add_argument("--webhook-http-ok", action="store_true",
                        help="test-only: also accept http://127.0.0.1:<port> webhooks")
    parser.add_argument("--private-chats-need-start", action="store_true")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with BotApiStandin(
        args.token,
        host=args.host,
        port=args.port,
        rate_limits=not args.no_rate_limits,
        per_chat_interval=args.per_chat_interval,
        per_chat_per_minute=args.per_chat_per_minute,
        global_per_second=args.global_per_second,
        slow_seconds=args.slow_seconds,
        huge_bytes=args.huge_bytes,
        bomb_bytes=args.bomb_bytes,
        record_file=args.record,
        bot_username=args.bot_username,
        webhook_http_ok=args.webhook_http_ok,
        private_chats_need_start=args.private_chats_need_start,
    ) as api:
        print(api.base_url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


def iter_records(path: str | Path) -> Iterator[Json]:
    """The messages a --record file holds (tolerates a torn last line after kill -9)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            yield json.loads(line)


if __name__ == "__main__":
    sys.exit(main())
