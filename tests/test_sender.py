"""``TelegramSender``'s translation of Bot API answers into ``SendError``s, over
``httpx.MockTransport``: every answer shape in one process, no server. (The end-to-end tests
use the real stand-in server: tests/test_push.py, tests/test_delivery.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import pytest

from publisher.delivery import (
    MAX_ANSWER_BYTES,
    Ambiguous,
    ChatForbidden,
    ChatMigrated,
    EntitiesRejected,
    NotSent,
    PhotoRejected,
    RateLimited,
    Rejected,
    SendError,
    TelegramSender,
    Unauthorized,
    Unavailable,
)

TOKEN = "123456:ABC-mock_transport_token"
BASE_URL = "https://api.telegram.invalid/bot"
CHAT = "@news"
PHOTO = "https://example.org/lead.jpg"
ME = {"id": 123456, "is_bot": True, "first_name": "Publisher", "username": "publisher_bot"}
T = TypeVar("T")
Answer = Callable[[httpx.Request], httpx.Response]


def message(message_id: int = 42) -> dict[str, Any]:
    return {"message_id": message_id, "date": 1_700_000_000,
            "chat": {"id": -1001, "type": "channel", "title": "News"}}


def ok(result: object) -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "result": result})


def error(status: int, description: str, **parameters: object) -> httpx.Response:
    body: dict[str, object] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return httpx.Response(status, json=body)


class BotApi:
    """Answers getMe; every other method with ``answer`` (a response, or a function of the
    request). Remembers the methods asked for."""

    def __init__(self, answer: httpx.Response | Answer) -> None:
        self.answer = answer
        self.methods: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rpartition("/")[2]
        self.methods.append(method)
        if method == "getMe":
            return ok(ME)
        return self.answer(request) if callable(self.answer) else self.answer


def streamed(answer: Answer) -> Answer:
    """``answer`` with its responses' bodies as streams, as a network transport gives them:
    an ``httpx.Response(content=...)`` is read already, and the sender reads the raw stream
    itself (to cap and decode it a piece at a time)."""

    def stream(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=httpx.ByteStream(response.content))

    return stream


def run(api: BotApi | Answer, call: Callable[[TelegramSender], Awaitable[T]]) -> T:
    async def go() -> T:
        sender = TelegramSender(TOKEN, BASE_URL, timeout=5,
                                transport=httpx.MockTransport(streamed(api)))
        try:
            await sender.start()
            return await call(sender)
        finally:
            await sender.close()

    return asyncio.run(go())


def send_text(sender: TelegramSender) -> Awaitable[int]:
    return sender.send_text(CHAT, "<b>hello</b>", html=True, buttons=[], preview_url=None)


def send_photo(sender: TelegramSender) -> Awaitable[int]:
    return sender.send_photo(CHAT, PHOTO, "<b>hello</b>", buttons=[])


def failure(answer: httpx.Response | Answer,
            call: Callable[[TelegramSender], Awaitable[Any]] = send_text) -> SendError:
    with pytest.raises(SendError) as raised:
        run(BotApi(answer), call)
    assert TOKEN not in str(raised.value) and TOKEN not in raised.value.reason
    assert TOKEN.partition(":")[2] not in raised.value.reason
    return raised.value


def test_a_posted_message_gives_its_id_and_the_request_goes_to_the_method() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(message(77))

    api = BotApi(answer)
    assert run(api, send_text) == 77
    assert api.methods == ["getMe", "sendMessage"]
    assert seen[0].url.path == f"/bot{TOKEN}/sendMessage"
    sent = dict(parse_qsl(seen[0].content.decode()))  # PTB posts a form
    assert (sent["chat_id"], sent["text"], sent["parse_mode"]) == (CHAT, "<b>hello</b>", "HTML")


def test_ok_false_in_a_200_answer_is_not_sent_with_its_description() -> None:
    refused = failure(httpx.Response(200, json={"ok": False, "description": "gateway refused"}))
    assert type(refused) is NotSent
    assert refused.reason == "Telegram answered ok:false: gateway refused"


def test_a_200_answer_without_ok_true_may_have_been_posted() -> None:
    unclear = failure(httpx.Response(200, json={"result": message()}))
    assert isinstance(unclear, Ambiguous)
    assert unclear.reason == 'the answer has no "ok": true and result'


def test_a_result_of_the_wrong_shape_may_have_been_posted() -> None:
    unclear = failure(ok({"message_id": "42"}))
    assert isinstance(unclear, Ambiguous)
    assert "not a Message" in unclear.reason and "message_id" in unclear.reason


@pytest.mark.parametrize(("description", "expected", "reason"), [
    ("Bad Request: message is too long", Rejected, "Message is too long"),
    ("Bad Request: can't parse entities: unclosed tag", EntitiesRejected,
     "Can't parse entities: unclosed tag"),
    ("Bad Request: chat not found", ChatForbidden, "Chat not found"),
])
def test_a_400_answer_says_what_was_refused(description: str, expected: type[SendError],
                                            reason: str) -> None:
    refused = failure(error(400, description))
    assert type(refused) is expected and refused.reason == reason  # as PTB words it
    assert isinstance(refused, NotSent)


def test_a_refused_photo_url_is_a_photo_rejection_only_for_a_photo() -> None:
    refused = error(400, "Bad Request: wrong file identifier/HTTP URL specified")
    assert type(failure(refused, send_photo)) is PhotoRejected
    assert type(failure(refused, send_text)) is Rejected


def test_403_is_a_forbidden_chat() -> None:
    forbidden = failure(error(403, "Forbidden: bot was kicked from the channel chat"))
    assert type(forbidden) is ChatForbidden
    assert forbidden.reason == "Forbidden: bot was kicked from the channel chat"


def test_a_429_carries_its_retry_after() -> None:
    limited = failure(error(429, "Too Many Requests: retry after 7", retry_after=7))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    assert limited.reason == "Telegram asked to wait 7 s (429)"


@pytest.mark.parametrize("asked", ['"soon"', "-Infinity", "NaN", "true", "null"])
def test_a_429_with_an_unusable_retry_after_has_none(asked: str) -> None:
    body = ('{"ok": false, "error_code": 429, "description": "Too Many Requests", '
            f'"parameters": {{"retry_after": {asked}}}}}')
    limited = failure(httpx.Response(429, content=body.encode(),
                                     headers={"Content-Type": "application/json"}))
    assert isinstance(limited, RateLimited) and limited.retry_after is None
    assert "unusable retry_after" in limited.reason


def test_a_migrated_group_names_its_new_chat() -> None:
    moved = failure(error(400, "Bad Request: group chat was upgraded to a supergroup chat",
                          migrate_to_chat_id=-100987))
    assert isinstance(moved, ChatMigrated) and moved.new_chat_id == "-100987"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_answer_was_not_posted(status: int) -> None:
    page = httpx.Response(status, text="<html><body><h1>Bad Gateway</h1></body></html>",
                          headers={"Content-Type": "text/html"})
    not_sent = failure(page)
    assert type(not_sent) is NotSent
    assert not_sent.reason.startswith("Telegram answered with an error")
    assert "<html>" not in not_sent.reason


def test_an_oversized_answer_is_no_answer_and_may_have_been_posted() -> None:
    huge = httpx.Response(200, content=b" " * (MAX_ANSWER_BYTES + 1),
                          headers={"Content-Type": "application/json"})
    too_large = failure(huge)
    assert isinstance(too_large, Ambiguous)
    assert too_large.reason.startswith(f"the answer is larger than {MAX_ANSWER_BYTES // 1024} KiB")


def test_a_connection_refused_before_sending_was_not_posted() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    refused = failure(refuse)
    assert type(refused) is NotSent and refused.reason == "cannot connect: ConnectError"


def test_a_refused_token_is_unauthorized_and_never_named() -> None:
    def refuse_all(request: httpx.Request) -> httpx.Response:
        return error(401, f"Unauthorized: token {TOKEN} is not valid")

    with pytest.raises(Unauthorized) as raised:
        run(refuse_all, send_text)
    assert raised.value.reason == "the bot token was refused (401)"


def test_a_description_echoing_the_token_is_redacted_in_any_case() -> None:
    # PTB lowercases a description (str.capitalize): the token must not pass as lowercase.
    key = TOKEN.partition(":")[2]
    echoed = failure(error(400, f"Bad Request: unknown bot {TOKEN} in /bot{TOKEN}/sendMessage"))
    assert isinstance(echoed, Rejected)
    assert echoed.reason == "Unknown bot <redacted> in /bot<redacted>/sendmessage"
    alone = failure(error(400, f"Bad Request: key {key.upper()} refused"))
    assert alone.reason == "Key <redacted> refused"
    assert key.lower() not in alone.reason.lower()


def test_telegram_down_at_start_is_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway")

    with pytest.raises(Unavailable) as raised:
        run(down, send_text)
    assert raised.value.reason.startswith("getMe failed: ")
    assert TOKEN not in raised.value.reason


def forward(sender: TelegramSender) -> Awaitable[Any]:
    return sender.forward_message("-4001", CHAT, 7)


def test_a_forward_says_what_the_original_shows_and_where_it_came_from() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        copy = {**message(3), "caption": "Title\nExcerpt", "photo": [
            {"file_id": "AgACAgIAAxkBAAIabcdefghij", "file_unique_id": "AQADabc",
             "width": 90, "height": 60}],
            "caption_entities": [{"type": "text_link", "offset": 0, "length": 5,
                                  "url": "https://news.example.com/a"},
                                 {"type": "bold", "offset": 6, "length": 7}],
            "forward_origin": {"type": "channel", "chat": message()["chat"],
                               "message_id": 7, "date": 1_699_999_000}}
        return ok(copy)

    copy = run(BotApi(answer), forward)
    assert (copy.message_id, copy.text, copy.has_photo) == (3, "Title\nExcerpt", True)
    assert copy.link_urls == ("https://news.example.com/a",)
    assert (copy.origin_message_id, copy.origin_date) == (7, 1_699_999_000)
    [request] = seen
    assert request.url.path.endswith("/forwardMessage")
    sent = dict(parse_qsl(request.content.decode()))
    assert sent["from_chat_id"] == CHAT and str(sent["message_id"]) == "7"
    assert str(sent["disable_notification"]).lower() == "true"


def test_a_forward_of_a_missing_message_is_refused_and_never_names_the_token() -> None:
    missing = failure(error(400, f"Bad Request: message to forward not found ({TOKEN})"),
                      forward)
    assert isinstance(missing, Rejected)
    assert "message to forward not found" in missing.reason.lower()
    assert isinstance(failure(error(403, "Forbidden: bot is not a member of the group chat"),
                              forward), ChatForbidden)
