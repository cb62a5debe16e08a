"""The Bot API transport (``publisher.delivery``) against answers no real Telegram sends: gzip
bombs, answers with no Content-Length, encodings that were not asked for, results of the
wrong shape. Each must end as a clear reason, with bounded memory."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from standin.server import BOMB_BYTES, DEFAULT_TOKEN, BotApiStandin

from publisher.delivery import (
    MAX_ANSWER_BYTES,
    Ambiguous,
    NotSent,
    Rejected,
    SendError,
    TelegramSender,
    Unavailable,
)

CHAT = "@news"
T = TypeVar("T")


def with_sender(base_url: str, call: Callable[[TelegramSender], Awaitable[T]]) -> T:
    async def run() -> T:
        sender = TelegramSender(DEFAULT_TOKEN, base_url, timeout=10)
        try:
            await sender.start()
            return await call(sender)
        finally:
            await sender.close()

    return asyncio.run(run())


def send_text(sender: TelegramSender) -> Awaitable[int]:
    return sender.send_text(CHAT, "hello", html=False, buttons=[], preview_url=None)


def failure(base_url: str, call: Callable[[TelegramSender], Awaitable[Any]]) -> SendError:
    with pytest.raises(SendError) as raised:
        with_sender(base_url, call)
    return raised.value


def peak_traced_bytes(action: Callable[[], object]) -> int:
    """The most memory Python held at once (above what it held before) during ``action``."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- huge answers, through the stand-in ---------------------------------------------------------


def test_a_gzip_bomb_is_cut_at_the_cap_without_decoding_it(botapi: BotApiStandin) -> None:
    normal = peak_traced_bytes(lambda: with_sender(botapi.base_url, send_text))
    botapi.inject("gzip_bomb")
    errors: list[SendError] = []

    def bombed() -> None:
        errors.append(failure(botapi.base_url, send_text))

    # 1 GiB once decoded; httpx would have decoded each 64 KiB read whole (~64 MB): what
    # it holds beyond a normal send is the capped body, and a little.
    peak = peak_traced_bytes(bombed)
    assert peak < normal + MAX_ANSWER_BYTES + 1024 * 1024, f"{peak:,} bytes, {normal:,} normally"
    (error,) = errors
    assert isinstance(error, Ambiguous)  # it was carried out, then the answer went wrong
    assert error.reason == "the answer is larger than 4096 KiB (gzip-encoded, cut off)"
    assert [r.text for r in botapi.messages] == ["hello", "hello"]
    assert BOMB_BYTES >= 1024**3


def test_a_gzip_bomb_answering_get_me_is_a_clear_error(botapi: BotApiStandin) -> None:
    botapi.inject("gzip_bomb", method="getMe")
    error = failure(botapi.base_url, send_text)
    assert isinstance(error, Unavailable)
    assert error.reason == ("getMe failed: the answer is larger than 4096 KiB "
                            "(gzip-encoded, cut off)")
    assert botapi.messages == []


def test_a_huge_answer_without_content_length_is_cut_off(botapi: BotApiStandin) -> None:
    botapi.inject("huge_chunked")
    error = failure(botapi.base_url, send_text)
    assert isinstance(error, Ambiguous)
    assert error.reason == "the answer is larger than 4096 KiB (cut off)"
    assert [r.text for r in botapi.messages] == ["hello"]
    assert [r.fault for r in botapi.requests] == [None, "huge_chunked"]


def test_a_gzip_answer_within_the_cap_is_read() -> None:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, bomb_bytes=2 * 1024 * 1024) as api:
        api.inject("gzip_bomb")
        assert with_sender(api.base_url, send_text) == 1


# -- encodings, through a tiny server of canned answers ----------------------------------------


GET_ME = json.dumps({"ok": True, "result": {
    "id": 42, "is_bot": True, "first_name": "Bot", "username": "publisher_test_bot"}}).encode()


@dataclass
class Canned:
    """Answers getMe with ``get_me`` (as Telegram does), every other request with
    ``status``, ``headers`` and ``body``; ``seen`` holds the requests' headers."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    get_me: bytes = GET_ME
    seen: list[dict[str, str]] = field(default_factory=list)


def message_answer(message_id: int = 7) -> bytes:
    return json.dumps({"ok": True, "result": {
        "message_id": message_id, "date": 1735689600, "text": "hello",
        "chat": {"id": -1001, "type": "channel", "title": "News", "username": "news"}},
    }).encode()


@pytest.fixture
def canned() -> Iterator[tuple[Canned, str]]:
    answers = Canned()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answers.seen.append(dict(self.headers))
            getme = self.path.endswith("/getMe")
            status, headers, body = (200, {}, answers.get_me) if getme else (
                answers.status, answers.headers, answers.body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield answers, f"http://127.0.0.1:{server.server_address[1]}/bot"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", raw_deflate), ("identity", lambda data: data), ("", lambda data: data),
    ("gzip", lambda data: gzip.compress(data[:40]) + gzip.compress(data[40:])),  # 2 members
])
def test_answers_in_the_codings_asked_for_are_read(
    canned: tuple[Canned, str], coding: str, encode: Callable[[bytes], bytes],
) -> None:
    answers, base_url = canned
    answers.body = encode(message_answer(7))
    answers.headers = {"Content-Encoding": coding} if coding else {}
    assert with_sender(base_url, send_text) == 7
    assert {seen["Accept-Encoding"] for seen in answers.seen} == {"gzip, deflate"}


@pytest.mark.parametrize(("coding", "body", "reason"), [
    ("br", b"\x0b\x02\x80hello\x03", "the answer is encoded as 'br', which was not asked for"),
    ("gzip, gzip", gzip.compress(gzip.compress(message_answer())),
     "the answer is encoded as 'gzip, gzip', which was not asked for"),
    ("gzip", gzip.compress(message_answer())[:-9], "the answer's gzip encoding is broken"),
    ("gzip", GZIP_HEADER + b"\xff\xff\xff", "the answer's gzip encoding is broken"),
    ("deflate", b"\xff\xff\xff", "the answer's deflate encoding is broken"),
])
def test_an_answer_in_another_coding_is_maybe_sent_with_its_reason(
    canned: tuple[Canned, str], coding: str, body: bytes, reason: str,
) -> None:
    answers, base_url = canned
    answers.headers, answers.body = {"Content-Encoding": coding}, body
    error = failure(base_url, send_text)
    assert isinstance(error, Ambiguous) and error.reason.startswith(reason), error.reason


def test_an_error_answer_in_gzip_keeps_its_description(canned: tuple[Canned, str]) -> None:
    answers, base_url = canned
    answers.status, answers.headers = 400, {"Content-Encoding": "gzip"}
    answers.body = gzip.compress(json.dumps({
        "ok": False, "error_code": 400, "description": "Bad Request: message is too long",
    }).encode())
    error = failure(base_url, send_text)
    assert isinstance(error, Rejected) and error.reason == "Message is too long"


def test_an_error_answer_in_a_coding_not_asked_for_is_still_not_sent(
    canned: tuple[Canned, str],
) -> None:
    answers, base_url = canned
    answers.status, answers.headers, answers.body = 502, {"Content-Encoding": "br"}, b"\x00"
    error = failure(base_url, send_text)
    assert isinstance(error, NotSent) and not isinstance(error, Ambiguous)


# -- results of the wrong shape -----------------------------------------------------------------

CHAT_JSON = {"id": -1001, "type": "channel", "title": "News", "username": "news"}
GOOD_MESSAGE = {"message_id": 7, "date": 1735689600, "text": "hello", "chat": CHAT_JSON}


def answering(result: object) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode()


@pytest.mark.parametrize(("result", "problem"), [
    ("surprise", "it is a string ('surprise'), not an object"),
    ([1, 2], "it is a list, not an object"),
    (None, "it is null, not an object"),
    ({**GOOD_MESSAGE, "message_id": "7"}, "its message_id is a string ('7'), not a positive "
                                          "integer"),
    ({**GOOD_MESSAGE, "message_id": True}, "its message_id is true, not a positive integer"),
    ({**GOOD_MESSAGE, "message_id": -3}, "its message_id is -3, not a positive integer"),
    ({"message_id": 7, "chat": CHAT_JSON}, "it has no date"),
    ({**GOOD_MESSAGE, "chat": "news"}, "its chat is a string ('news'), not an object"),
    ({**GOOD_MESSAGE, "chat": {"id": -1001}}, "it has no chat.type"),
    ({**GOOD_MESSAGE, "date": 10**20}, "timestamp out of range for platform time_t"),  # PTB's
])
def test_a_send_answered_with_a_wrong_result_says_what_is_wrong(
    canned: tuple[Canned, str], result: object, problem: str,
) -> None:
    answers, base_url = canned
    answers.body = answering(result)
    error = failure(base_url, send_text)
    assert isinstance(error, Ambiguous)  # it may have been posted
    assert error.reason == f"the answer's result is not a Message: {problem}"


@pytest.mark.parametrize(("ask", "result", "reason"), [
    ("chat", "surprise", "the answer's result is not a Chat: it is a string ('surprise'), not "
                         "an object"),
    ("chat", {"type": "channel"}, "the answer's result is not a Chat: it has no id"),
    ("chat", {"id": -1001, "type": "channel"},  # PTB needs more than this bot reads
     "the answer's result is not a Chat: missing 2 required fields: 'accent_color_id' and "
     "'max_reaction_count'"),
    ("member", {"status": "member"}, "the answer's result is not a ChatMember: it has no user"),
    ("member", {"status": "member", "user": {"id": "42"}},
     "the answer's result is not a ChatMember: its user.id is a string ('42'), not an integer"),
])
def test_a_question_answered_with_a_wrong_result_says_what_is_wrong(
    canned: tuple[Canned, str], ask: str, result: object, reason: str,
) -> None:
    answers, base_url = canned
    answers.body = answering(result)

    def asked(sender: TelegramSender) -> Awaitable[object]:
        if ask == "chat":
            return sender.get_chat(CHAT)
        return sender.get_chat_member(CHAT, 42)

    error = failure(base_url, asked)
    assert isinstance(error, NotSent) and error.reason == reason


@pytest.mark.parametrize(("result", "problem"), [
    ("surprise", "it is a string ('surprise'), not an object"),
    ({"id": 42, "is_bot": "yes", "first_name": "Bot"}, "its is_bot is a string ('yes'), not a "
                                                       "boolean"),
    ({"id": 42, "is_bot": True}, "it has no first_name"),
])
def test_get_me_answered_with_a_wrong_result_says_what_is_wrong(
    canned: tuple[Canned, str], result: object, problem: str,
) -> None:
    answers, base_url = canned
    answers.get_me = answering(result)
    error = failure(base_url, send_text)
    assert isinstance(error, Unavailable)
    assert error.reason == f"getMe failed: the answer's result is not a bot user: {problem}"
