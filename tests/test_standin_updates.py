"""The stand-in's updates, over real HTTP: private chats, getUpdates, webhooks, callback
queries, blocked users and the overall rate limit (what the followers' bot meets)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standin.server import (
    DEFAULT_TOKEN,
    FIRST_UPDATE_ID,
    QUERY_TOO_OLD,
    TERMINATED_BY_OTHER,
    WEBHOOK_ACTIVE,
    BotApiStandin,
    StandinProcess,
)
from telegram import Bot

USER = 4242
OTHER_USER = 4343
KEYBOARD = {"inline_keyboard": [[{"text": "Robotics", "callback_data": "t:robotics"}],
                                [{"text": "Space", "callback_data": "t:space"}]]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, webhook_http_ok=True,
                       webhook_retry_seconds=0.05) as standin:
        yield standin


def call(api: BotApiStandin, method: str, **params: Any) -> httpx.Response:
    return httpx.post(f"{api.base_url}{DEFAULT_TOKEN}/{method}", json=params, timeout=10)


def result(api: BotApiStandin, method: str, **params: Any) -> Any:
    response = call(api, method, **params)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def error(api: BotApiStandin, method: str, **params: Any) -> tuple[int, str]:
    body = call(api, method, **params).json()
    assert body["ok"] is False
    return body["error_code"], body["description"]


def send_keyboard(api: BotApiStandin, user: int = USER) -> int:
    message = result(api, "sendMessage", chat_id=user, text="Pick topics",
                     reply_markup=KEYBOARD)
    return int(message["message_id"])


# ------------------------------------------------------------------ private chats


def test_user_message_is_a_private_update_with_a_command_entity(api: BotApiStandin) -> None:
    made = api.user_message(USER, "/start robotics", username="ada_l")
    [update] = result(api, "getUpdates")
    assert update == made
    assert update["update_id"] == FIRST_UPDATE_ID
    message = update["message"]
    assert message["chat"] == {"id": USER, "type": "private", "first_name": "Ada",
                               "username": "ada_l"}
    assert message["from"] == {"id": USER, "is_bot": False, "first_name": "Ada",
                               "username": "ada_l", "language_code": "en"}
    assert message["text"] == "/start robotics"
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]


def test_command_with_the_bots_name_and_plain_text(api: BotApiStandin) -> None:
    named = api.user_message(USER, "/topics@publisher_test_bot")
    plain = api.user_message(USER, "hello /start")
    assert named["message"]["entities"][0]["length"] == len("/topics@publisher_test_bot")
    assert "entities" not in plain["message"]
    assert plain["message"]["message_id"] == named["message"]["message_id"] + 1
    with pytest.raises(ValueError, match="1-4096"):
        api.user_message(USER, "   ")


def test_group_messages_are_shaped_per_chat_type(api: BotApiStandin) -> None:
    group = api.group_message(-4001, USER, "/start")
    supergroup = api.group_message(-1001234567890, USER, "hi", chat_type="supergroup")
    assert group["message"]["chat"] == {"id": -4001, "type": "group", "title": "Group -4001"}
    assert group["message"]["from"]["id"] == USER
    assert group["message"]["entities"][0]["type"] == "bot_command"
    assert supergroup["message"]["chat"]["type"] == "supergroup"
    with pytest.raises(ValueError, match="supergroup"):
        api.group_message(-4001, USER, "x", chat_type="supergroup")
    with pytest.raises(ValueError, match="group"):
        api.group_message(4001, USER, "x")


def test_updates_parse_in_python_telegram_bot(api: BotApiStandin) -> None:
    api.user_message(USER, "/start")
    api.callback_query(USER, send_keyboard(api), "t:space")
    api.group_message(-4001, OTHER_USER, "hi")

    async def fetch() -> list[Any]:
        async with Bot(DEFAULT_TOKEN, base_url=api.base_url) as bot:
            updates = await bot.get_updates(timeout=0)
            assert (await bot.get_me()).username == "publisher_test_bot"
            return list(updates)

    message, query, group = asyncio.run(fetch())
    assert message.message.text == "/start" and message.message.chat.type == "private"
    assert query.callback_query.data == "t:space"
    assert query.callback_query.message.reply_markup.inline_keyboard[0][0].text == "Robotics"
    assert group.message.chat.type == "group"


def test_get_me_username_is_settable(api: BotApiStandin) -> None:
    api.bot_username = "followers_bot"
    assert result(api, "getMe")["username"] == "followers_bot"


# ------------------------------------------------------------------ getUpdates


def test_offset_confirms_every_earlier_update(api: BotApiStandin) -> None:
    ids = [api.user_message(USER, f"m{n}")["update_id"] for n in range(4)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [u["update_id"] for u in result(api, "getUpdates")] == ids  # nothing confirmed
    assert [u["update_id"] for u in result(api, "getUpdates", offset=ids[2])] == ids[2:]
    assert [u["update_id"] for u in result(api, "getUpdates")] == ids[2:]  # forgotten
    assert result(api, "getUpdates", offset=ids[3] + 1) == []
    assert api.pending_updates == []


def test_negative_offset_keeps_the_last_updates_and_limit_is_clamped(
        api: BotApiStandin) -> None:
    ids = [api.user_message(USER, f"m{n}")["update_id"] for n in range(5)]
    assert [u["update_id"] for u in result(api, "getUpdates", limit=2)] == ids[:2]
    assert [u["update_id"] for u in result(api, "getUpdates", limit=0)] == ids[:1]
    assert [u["update_id"] for u in result(api, "getUpdates", offset=-2)] == ids[3:]
    assert [u["update_id"] for u in result(api, "getUpdates", limit=500)] == ids[3:]


def test_long_poll_returns_as_soon_as_an_update_arrives(api: BotApiStandin) -> None:
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(result, api, "getUpdates", timeout=5)
        api.wait_for_poll()
        api.user_message(USER, "hello")
        [update] = poll.result(timeout=5)
        assert time.monotonic() - started < 2
    assert update["message"]["text"] == "hello"
    assert api.poll_count == 1


def test_long_poll_waits_its_timeout_when_nothing_comes(api: BotApiStandin) -> None:
    started = time.monotonic()
    assert result(api, "getUpdates", timeout=1) == []
    assert 0.9 < time.monotonic() - started < 3


def test_a_second_poll_terminates_the_waiting_one(api: BotApiStandin) -> None:
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(error, api, "getUpdates", timeout=5)
        calls = api.wait_for_poll()
        second = pool.submit(result, api, "getUpdates", timeout=5)
        assert first.result(timeout=5) == (409, TERMINATED_BY_OTHER)
        api.wait_for_poll(after=calls)
        api.user_message(USER, "to the survivor")
        assert second.result(timeout=5)[0]["message"]["text"] == "to the survivor"


def test_allowed_updates_filters_what_is_kept(api: BotApiStandin) -> None:
    message_id = send_keyboard(api)
    assert result(api, "getUpdates", allowed_updates=["callback_query"]) == []
    api.user_message(USER, "ignored")
    api.callback_query(USER, message_id, "t:robotics")
    [update] = result(api, "getUpdates", allowed_updates=[])  # [] is: the default types
    assert "callback_query" in update
    api.user_message(USER, "kept again")
    assert "message" in result(api, "getUpdates", offset=update["update_id"] + 1)[0]


# ------------------------------------------------------------------ webhooks


class Receiver:
    """A webhook: records each POST (headers, body); answers the queued statuses, then 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        self.statuses: list[int] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.arrived:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.posts.append((dict(self.headers), body))
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)

    def wait_for(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, timeout=5)


def wait_for_deliveries(api: BotApiStandin, count: int) -> list[Any]:
    """The stand-in's record of its POSTs once it holds ``count`` (it notes an outcome just
    after the receiver saw the request)."""
    deadline = time.monotonic() + 5
    while len(api.webhook_deliveries) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return api.webhook_deliveries


def refusing_url() -> str:
    """A webhook URL whose port refuses connections."""
    closed = Receiver()
    closed.server.server_close()
    return closed.url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.org/hook", "HTTPS url must be provided for webhook"),
        ("http://127.0.0.2:8080/hook", "HTTPS url must be provided for webhook"),
        ("https://example.org:8080/hook", "only on ports 80, 88, 443 or 8443"),
        ("https://10.1.2.3/hook", "IP address 10.1.2.3 is reserved"),
        ("ftp://example.org/hook", "HTTPS url must be provided for webhook"),
    ],
)
def test_webhook_urls_are_refused_as_telegram_does(api: BotApiStandin, url: str,
                                                   reason: str) -> None:
    code, description = error(api, "setWebhook", url=url)
    assert code == 400 and description.startswith("Bad Request: bad webhook: ")
    assert reason in description


def test_plain_http_webhooks_need_the_test_relaxation() -> None:
    with BotApiStandin(DEFAULT_TOKEN) as strict:
        code, description = error(strict, "setWebhook", url="http://127.0.0.1:9/hook")
        assert (code, description) == (
            400, "Bad Request: bad webhook: HTTPS url must be provided for webhook")
        assert result(strict, "setWebhook", url="https://example.org:8443/hook") is True


@pytest.mark.parametrize(
    ("secret", "description"),
    [
        ("has space", "Bad Request: secret token contains unallowed characters"),
        ("é", "Bad Request: secret token contains unallowed characters"),
        ("x" * 257, "Bad Request: secret token is too long"),
    ],
)
def test_webhook_secrets_are_checked(api: BotApiStandin, secret: str,
                                     description: str) -> None:
    assert error(api, "setWebhook", url="https://example.org/hook",
                 secret_token=secret) == (400, description)


def test_webhook_gets_each_update_with_the_secret_and_retries_on_500(
        api: BotApiStandin, receiver: Receiver) -> None:
    receiver.statuses = [500, 500]
    assert result(api, "setWebhook", url=receiver.url, secret_token="s3cret_-A") is True
    assert error(api, "getUpdates") == (409, WEBHOOK_ACTIVE)
    first = api.user_message(USER, "one")
    second = api.user_message(USER, "two")
    receiver.wait_for(4)  # two refusals, then both delivered
    headers, bodies = receiver.posts[0][0], [body for _, body in receiver.posts]
    assert headers["X-Telegram-Bot-Api-Secret-Token"] == "s3cret_-A"
    assert headers["Content-Type"] == "application/json"
    assert bodies == [first, first, first, second]
    deliveries = wait_for_deliveries(api, 4)
    assert [d.error for d in deliveries] == ["Wrong response from the webhook: 500 "
                                             "Internal Server Error"] * 2 + [None, None]
    info = result(api, "getWebhookInfo")
    assert info["url"] == receiver.url and info["pending_update_count"] == 0
    assert info["has_custom_certificate"] is False
    assert info["last_error_message"].endswith("500 Internal Server Error")
    assert abs(info["last_error_date"] - time.time()) < 5


def test_an_unreachable_webhook_keeps_the_update(receiver: Receiver) -> None:
    # A 30 s backoff: only a new setWebhook ending it delivers within receiver's 5 s.
    with BotApiStandin(DEFAULT_TOKEN, webhook_http_ok=True, webhook_retry_seconds=30) as api:
        assert result(api, "setWebhook", url=refusing_url()) is True
        api.user_message(USER, "waits")
        wait_for_deliveries(api, 1)
        info = result(api, "getWebhookInfo")
        assert info["pending_update_count"] == 1
        assert info["last_error_message"] == "Connection refused"
        assert result(api, "setWebhook", url=receiver.url) is True
        receiver.wait_for(1)
    assert receiver.posts[0][1]["message"]["text"] == "waits"
    assert "X-Telegram-Bot-Api-Secret-Token" not in receiver.posts[0][0]


def test_delete_webhook_drops_pending_updates_when_asked(api: BotApiStandin) -> None:
    hook = refusing_url()  # nothing is ever delivered
    assert result(api, "setWebhook", url=hook, allowed_updates=["message"]) is True
    info = result(api, "getWebhookInfo")
    assert info["allowed_updates"] == ["message"] and info["max_connections"] == 40
    result(api, "deleteWebhook")
    api.user_message(USER, "one")
    result(api, "setWebhook", url=hook, drop_pending_updates=True)
    assert result(api, "getWebhookInfo")["pending_update_count"] == 0
    api.user_message(USER, "two")
    assert result(api, "deleteWebhook", drop_pending_updates=True) is True
    assert result(api, "getWebhookInfo") == {"url": "", "has_custom_certificate": False,
                                             "pending_update_count": 0}
    api.user_message(USER, "three")
    assert [u["message"]["text"] for u in result(api, "getUpdates")] == ["three"]


def test_setting_a_webhook_ends_a_waiting_poll(api: BotApiStandin) -> None:
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(error, api, "getUpdates", timeout=5)
        api.wait_for_poll()
        result(api, "setWebhook", url=refusing_url())
        assert poll.result(timeout=5) == (409, WEBHOOK_ACTIVE)


# ------------------------------------------------------------------ callback queries


def test_callback_query_carries_the_message_and_is_answered_once(api: BotApiStandin) -> None:
    api.user_message(USER, "/start", first_name="Grace")
    message_id = send_keyboard(api)
    query = api.callback_query(USER, message_id, "t:robotics")["callback_query"]
    assert query["from"]["first_name"] == "Grace" and query["data"] == "t:robotics"
    assert query["message"]["message_id"] == message_id
    assert query["message"]["reply_markup"] == KEYBOARD
    assert query["chat_instance"]
    assert result(api, "answerCallbackQuery", callback_query_id=query["id"],
                  text="Robotics ✓") is True
    assert error(api, "answerCallbackQuery", callback_query_id=query["id"]) == (
        400, QUERY_TOO_OLD)
    assert error(api, "answerCallbackQuery", callback_query_id="123") == (400, QUERY_TOO_OLD)
    [answer] = api.callback_answers
    assert answer.text == "Robotics ✓" and answer.latency is not None
    assert 0 <= answer.latency < 1


def test_callback_queries_telegram_could_not_make(api: BotApiStandin) -> None:
    message_id = send_keyboard(api)
    plain = result(api, "sendMessage", chat_id=USER, text="no buttons")["message_id"]
    with pytest.raises(ValueError, match="no button"):
        api.callback_query(USER, message_id, "t:unknown")
    with pytest.raises(ValueError, match="no button"):
        api.callback_query(USER, plain, "t:robotics")
    with pytest.raises(ValueError, match="no message"):
        api.callback_query(OTHER_USER, message_id, "t:robotics")
    with pytest.raises(ValueError, match="no message"):
        api.callback_query(USER, message_id + 5, "t:robotics")


def test_callback_answers_are_late_after_15_seconds() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, clock=clock) as api:
        message_id = send_keyboard(api)
        late = api.callback_query(USER, message_id, "t:space")["callback_query"]["id"]
        in_time = api.callback_query(USER, message_id, "t:space")["callback_query"]["id"]
        clock.now += 14.5
        assert result(api, "answerCallbackQuery", callback_query_id=in_time) is True
        clock.now += 1
        assert error(api, "answerCallbackQuery", callback_query_id=late) == (
            400, QUERY_TOO_OLD)
        assert [a.latency for a in api.callback_answers] == [None, 14.5]


def test_callback_answer_text_and_url_limits(api: BotApiStandin) -> None:
    message_id = send_keyboard(api)
    query = api.callback_query(USER, message_id, "t:space")["callback_query"]["id"]
    assert error(api, "answerCallbackQuery", callback_query_id=query, text="x" * 201) == (
        400, "Bad Request: MESSAGE_TOO_LONG")
    assert error(api, "answerCallbackQuery", callback_query_id=query,
                 url="https://example.org/") == (400, "Bad Request: URL_INVALID")
    assert result(api, "answerCallbackQuery", callback_query_id=query, text="x" * 200,
                  show_alert=True, url="https://t.me/publisher_test_bot?start=space")


def test_toggles_edit_the_keyboard_in_a_private_chat(api: BotApiStandin) -> None:
    api.user_message(USER, "/topics")
    message_id = send_keyboard(api)
    ticked = {"inline_keyboard": [[{"text": "Robotics ✓", "callback_data": "t:robotics"}],
                                  [{"text": "Space", "callback_data": "t:space"}]]}
    edited = result(api, "editMessageReplyMarkup", chat_id=USER, message_id=message_id,
                    reply_markup=ticked)
    assert edited["reply_markup"] == ticked and edited["chat"]["type"] == "private"
    assert error(api, "editMessageReplyMarkup", chat_id=USER, message_id=message_id,
                 reply_markup=ticked)[1].startswith("Bad Request: message is not modified")
    text = result(api, "editMessageText", chat_id=USER, message_id=message_id,
                  text="Your topics", reply_markup=ticked)
    assert text["text"] == "Your topics"
    query = api.callback_query(USER, message_id, "t:robotics")["callback_query"]
    assert query["message"]["text"] == "Your topics"
    user_message_id = api.user_message(USER, "mine")["message"]["message_id"]
    assert error(api, "editMessageText", chat_id=USER, message_id=user_message_id,
                 text="x") == (400, "Bad Request: message to edit not found")


# ------------------------------------------------------------------ 403s


def test_blocked_and_deactivated_users_refuse_messages(api: BotApiStandin) -> None:
    api.user_message(USER, "/start")
    api.user_message(OTHER_USER, "/start")
    assert result(api, "sendMessage", chat_id=USER, text="welcome")
    api.block_bot(USER)
    api.deactivate_user(OTHER_USER)
    assert error(api, "sendMessage", chat_id=USER, text="x") == (
        403, "Forbidden: bot was blocked by the user")
    assert error(api, "sendMessage", chat_id=OTHER_USER, text="x") == (
        403, "Forbidden: user is deactivated")
    kicked = api.pending_updates[-1]["my_chat_member"]
    assert kicked["old_chat_member"]["status"] == "member"
    assert kicked["new_chat_member"]["status"] == "kicked"
    assert kicked["chat"]["id"] == USER
    with pytest.raises(ValueError, match="deactivated"):
        api.user_message(OTHER_USER, "/start")
    api.user_message(USER, "/start")  # writing again restarts the bot
    assert result(api, "sendMessage", chat_id=USER, text="welcome back")
    assert api.pending_updates[-2]["my_chat_member"]["new_chat_member"]["status"] == "member"
    assert [r.visible_text for r in api.sent_to(USER)] == ["welcome", "welcome back"]


def test_a_bot_cannot_start_a_private_chat_when_asked_to_be_strict() -> None:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, private_chats_need_start=True) as api:
        assert error(api, "sendMessage", chat_id=USER, text="hi") == (
            403, "Forbidden: bot can't initiate conversation with a user")
        assert result(api, "sendMessage", chat_id="@news_channel", text="channels are fine")
        api.user_message(USER, "/start")
        assert result(api, "sendMessage", chat_id=USER, text="hi")["chat"]["first_name"] == "Ada"
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False) as lenient:
        assert result(lenient, "sendMessage", chat_id=USER, text="hi")  # as before


# ------------------------------------------------------------------ rate limits


def fan_out(api: BotApiStandin, clock: FakeClock, per_second: float, chats: int) -> list[int]:
    """Send one message to each of ``chats`` private chats, ``per_second`` on the clock."""
    statuses = []
    with httpx.Client(base_url=f"{api.base_url}{DEFAULT_TOKEN}") as client:
        for index in range(chats):
            response = client.post("/sendMessage", json={"chat_id": 10_000 + index,
                                                         "text": "new article"})
            statuses.append(response.status_code)
            clock.now += 1 / per_second
    return statuses


def test_a_fan_out_at_25_per_second_passes_and_40_gets_429s() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, clock=clock) as api:
        assert set(fan_out(api, clock, 25, 100)) == {200}
        clock.now += 5
        statuses = fan_out(api, clock, 40, 100)
        assert statuses.count(429) >= 20 and statuses[:30] == [200] * 30
        refused = next(r for r in api.requests if r.status == 429)
        assert refused.method == "sendMessage"


def test_one_message_per_second_per_private_chat_but_no_per_minute_cap() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, clock=clock) as api:
        assert result(api, "sendMessage", chat_id=USER, text="a")
        clock.now += 0.5
        response = call(api, "sendMessage", chat_id=USER, text="b")
        assert response.status_code == 429
        assert response.json()["parameters"]["retry_after"] == 1
        for _ in range(30):  # a group's 20 per minute is not a private chat's limit
            clock.now += 1
            assert result(api, "sendMessage", chat_id=USER, text="c")


# ------------------------------------------------------------------ faults, other process


def test_a_fault_for_any_method_spares_the_poller(api: BotApiStandin) -> None:
    api.inject("500")
    assert result(api, "getUpdates") == []
    assert call(api, "sendMessage", chat_id=USER, text="x").status_code == 500
    api.inject("500", method="getUpdates")
    assert call(api, "getUpdates").status_code == 500


def test_updates_in_a_stand_in_process() -> None:
    with StandinProcess(DEFAULT_TOKEN, extra_args=["--private-chats-need-start",
                                                   "--bot-username", "other_bot"]) as process:
        made = process.control("user_message", {"user_id": USER, "text": "/start"})
        assert made["result"]["message"]["chat"]["id"] == USER
        base = f"{process.base_url}{DEFAULT_TOKEN}"
        [update] = httpx.post(f"{base}/getUpdates", json={}).json()["result"]
        assert update == made["result"]
        assert httpx.post(f"{base}/getMe").json()["result"]["username"] == "other_bot"
        process.control("block_bot", {"user_id": USER})
        refused = httpx.post(f"{base}/sendMessage", json={"chat_id": USER, "text": "x"})
        assert refused.json()["description"] == "Forbidden: bot was blocked by the user"
        assert process.control("poll_count")["result"] == 1
        assert len(process.control("updates")["result"]) == 2  # with the my_chat_member
        with pytest.raises(urllib.error.HTTPError) as refused_query:
            process.control("callback_query", {"user_id": USER, "message_id": 9, "data": "x"})
        assert "no message 9" in json.loads(refused_query.value.read())["description"]


def test_update_ids_keep_increasing_across_a_reset(api: BotApiStandin) -> None:
    before = api.user_message(USER, "one")["update_id"]
    api.reset()
    assert api.pending_updates == []
    after = api.user_message(USER, "two")
    assert after["update_id"] > before
    assert result(api, "getUpdates", offset=before + 1) == [after]
