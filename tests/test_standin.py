"""Tests of the strict Bot API stand-in, over raw HTTP and through python-telegram-bot."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from helpers import image_bytes
from standin import server as standin_server
from standin.server import (
    DEFAULT_TOKEN,
    HUGE_BYTES,
    OK_FALSE_DESCRIPTION,
    PHOTO_FETCH_FAILED,
    BotApiStandin,
    StandinProcess,
    iter_records,
    parse_html,
)
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    LinkPreviewOptions,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.request import HTTPXRequest

CHANNEL = "@news_channel"
PHOTO_URL = "https://example.org/pictures/lead.jpg"
T = TypeVar("T")


@pytest.fixture
def api() -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, slow_seconds=1.0) as standin:
        yield standin


def test_the_spec_is_the_repository_copy_only(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    repository = Path(__file__).resolve().parent / "standin" / "bot-api.json"
    assert repository == standin_server.SPEC_PATH
    assert "sendMessage" in standin_server.load_spec()["methods"]
    missing = tmp_path / "bot-api.json"
    monkeypatch.setattr(standin_server, "SPEC_PATH", missing)
    monkeypatch.setenv("BOT_API_SPEC", str(repository))  # once a fallback: no longer read
    standin_server.load_spec.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"tests/standin/bot-api\.json") as raised:
            BotApiStandin(DEFAULT_TOKEN)
        assert str(missing) in str(raised.value)
    finally:
        standin_server.load_spec.cache_clear()


def call(
    api: BotApiStandin,
    method: str,
    token: str = DEFAULT_TOKEN,
    **request: Any,
) -> httpx.Response:
    """A raw Bot API call (POST unless http_method=...); request holds httpx keyword args."""
    http_method = request.pop("http_method", "POST")
    url = f"{api.base_url}{token}/{method}"
    return httpx.request(http_method, url, timeout=5, verify=False, **request)


def send(api: BotApiStandin, **params: Any) -> httpx.Response:
    return call(api, "sendMessage", data={"chat_id": CHANNEL, **params})


def description(response: httpx.Response) -> str:
    body = response.json()
    assert body["ok"] is False
    assert body["error_code"] == response.status_code
    return body["description"]


def with_bot(
    api: BotApiStandin, action: Callable[[Bot], Awaitable[T]], token: str = DEFAULT_TOKEN
) -> T:
    async def run() -> T:
        bot = Bot(
            token, base_url=api.base_url, request=plain_http(), get_updates_request=plain_http()
        )
        async with bot:
            return await action(bot)

    return asyncio.run(run())


def plain_http() -> HTTPXRequest:
    """PTB's transport without loading CA certificates (~30 ms each); the stand-in is plain HTTP."""
    return HTTPXRequest(httpx_kwargs={"verify": False})


def keyboard(*buttons: dict[str, Any]) -> str:
    return json.dumps({"inline_keyboard": [list(buttons)]})


# ------------------------------------------------------------------ routing and auth


def test_get_me_through_ptb_reports_the_bot(api: BotApiStandin) -> None:
    me = with_bot(api, lambda bot: bot.get_me())
    assert me.is_bot
    assert me.id == 123456
    assert me.username == api.bot_username


def test_method_names_are_case_insensitive_and_get_works(api: BotApiStandin) -> None:
    response = call(api, "GETME", http_method="GET")
    assert response.status_code == 200
    assert response.json()["result"]["is_bot"] is True


def test_wrong_token_is_401(api: BotApiStandin) -> None:
    response = call(api, "getMe", token="123456:WRONG")
    assert (response.status_code, description(response)) == (401, "Unauthorized")
    with pytest.raises(InvalidToken):
        with_bot(api, lambda bot: bot.get_me(), token="123456:WRONG")


@pytest.mark.parametrize("path", ["/bot", "/nonsense", "/botnot-a-token/getMe"])
def test_malformed_paths_are_404(api: BotApiStandin, path: str) -> None:
    response = httpx.post(api.url + path)
    assert (response.status_code, description(response)) == (404, "Not Found")


def test_unknown_method_is_404(api: BotApiStandin) -> None:
    response = call(api, "sendTelepathy", data={"chat_id": CHANNEL})
    assert (response.status_code, description(response)) == (404, "Not Found")


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"text": "hello"}, "Bad Request: chat_id is empty"),
        ({"chat_id": CHANNEL}, "Bad Request: message text is empty"),
        ({"chat_id": CHANNEL, "text": ""}, "Bad Request: message text is empty"),
    ],
)
def test_missing_required_field_is_400(
    api: BotApiStandin, params: dict[str, str], expected: str
) -> None:
    response = call(api, "sendMessage", data=params)
    assert (response.status_code, description(response)) == (400, expected)
    assert api.messages == []


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"data": {"chat_id": CHANNEL, "text": "hi", "reply_markup": keyboard()}},
        {
            "files": {
                "chat_id": (None, CHANNEL),
                "text": (None, "hi"),
                "reply_markup": (None, keyboard()),
            }
        },
        {"json": {"chat_id": CHANNEL, "text": "hi", "reply_markup": json.loads(keyboard())}},
        {"params": {"chat_id": CHANNEL, "text": "hi", "reply_markup": keyboard()}},
    ],
    ids=["urlencoded", "multipart", "json", "query"],
)
def test_every_body_encoding_is_understood(
    api: BotApiStandin, request_kwargs: dict[str, Any]
) -> None:
    response = call(api, "sendMessage", **request_kwargs)
    assert response.status_code == 200, response.text
    [record] = api.messages
    assert (record.chat_id, record.text) == (CHANNEL, "hi")
    assert record.reply_markup == {"inline_keyboard": [[]]}


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"data": {"chat_id": CHANNEL, "text": "x", "message_thread_id": "abc"}},
        {"data": {"chat_id": CHANNEL, "text": "x", "disable_notification": "maybe"}},
        {"json": {"chat_id": CHANNEL, "text": {"not": "a string"}}},
        {"json": {"chat_id": True, "text": "x"}},
        {"json": {"chat_id": CHANNEL, "text": "x", "protect_content": "yes"}},
    ],
)
def test_type_mismatch_is_400(api: BotApiStandin, request_kwargs: dict[str, Any]) -> None:
    response = call(api, "sendMessage", **request_kwargs)
    assert response.status_code == 400
    assert "must be of type" in description(response)


def test_unknown_parameters_are_ignored_and_json_scalars_normalised(api: BotApiStandin) -> None:
    response = call(
        api,
        "sendMessage",
        json={"chat_id": -1001234567890, "text": 42, "disable_notification": True, "x": [1]},
    )
    assert response.status_code == 200
    [record] = api.messages
    assert (record.chat_id, record.text, record.chat["type"]) == (-1001234567890, "42", "channel")


def test_generic_methods_are_validated_and_accepted(api: BotApiStandin) -> None:
    assert call(api, "getChatMemberCount", data={}).status_code == 400
    response = call(api, "setMyCommands", json={"commands": [{"command": "a", "description": "b"}]})
    assert response.json() == {"ok": True, "result": True}


# ------------------------------------------------------------------ HTML parse mode

VALID_HTML = [
    ("<b>bold <i>both</i></b> plain", "bold both plain", ["bold", "italic"]),
    ('<a href="https://example.org/?a=1&amp;b=2">link</a>', "link", ["text_link"]),
    (
        "<strong>s</strong><em>e</em><ins>i</ins><del>d</del>",
        "seid",
        [
            "bold",
            "italic",
            "underline",
            "strikethrough",
        ],
    ),
    ('<span class="tg-spoiler">x</span><tg-spoiler>y</tg-spoiler>', "xy", ["spoiler"] * 2),
    ('<pre><code class="language-python">print(1 &lt; 2)</code></pre>', "print(1 < 2)", ["pre"]),
    (
        "<blockquote expandable>q</blockquote><code>c</code>",
        "qc",
        [
            "expandable_blockquote",
            "code",
        ],
    ),
    ('<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>', "👍", ["custom_emoji"]),
    ("&lt;&gt;&amp;&quot;&#65;&#x1F600;", '<>&"A😀', []),
]


@pytest.mark.parametrize(("html", "visible", "entity_types"), VALID_HTML)
def test_valid_html_is_parsed(html: str, visible: str, entity_types: list[str]) -> None:
    text, entities = parse_html(html)
    assert text == visible
    assert [entity["type"] for entity in entities] == entity_types


def test_entities_use_utf16_offsets_and_reach_ptb(api: BotApiStandin) -> None:
    html = '😀 <b>bold</b> <a href="https://example.org">more</a>'
    message = with_bot(api, lambda bot: bot.send_message(CHANNEL, html, parse_mode="HTML"))
    assert message.text == "😀 bold more"
    assert [(e.type, e.offset, e.length) for e in message.entities] == [
        ("bold", 3, 4),
        ("text_link", 8, 4),
    ]
    assert message.entities[1].url == "https://example.org"
    [record] = api.messages
    assert record.visible_text == "😀 bold more"
    assert record.text == html


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("<script>alert(1)</script>", 'Unsupported start tag "script" at byte offset 0'),
        ("Tom & Jerry", 'Unexpected "&" at byte offset 4'),
        ("a&nbsp;b", 'Unsupported HTML entity "&nbsp;" at byte offset 1'),
        ("it&apos;s", 'Unsupported HTML entity "&apos;"'),
        ("<b>unclosed", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("1 < 2", 'Unexpected "<" at byte offset 2'),
        ("2 > 1", 'Unexpected ">" at byte offset 2'),
        ("x</b>", 'Unexpected end tag "</b>" at byte offset 1'),
        ("<a>no href</a>", 'Tag "a" must have attribute "href"'),
        ('<span class="red">x</span>', 'Tag "span" must have class "tg-spoiler"'),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("é<u>", 'Can\'t find end tag corresponding to start tag "u"'),
        ("éé<x>", 'Unsupported start tag "x" at byte offset 4'),
        ("<a href=https://e.com>x</a>", "Unexpected end of name token at byte offset 0"),
        ('<a href="https://e.com/?q=a "b"">x</a>', "Expected attribute name at byte offset"),
    ],
)
def test_invalid_html_is_rejected(api: BotApiStandin, html: str, reason: str) -> None:
    response = send(api, text=html, parse_mode="HTML")
    assert response.status_code == 400
    assert description(response).startswith(f"Bad Request: can't parse entities: {reason}")
    assert api.messages == []


def test_invalid_html_raises_bad_request_in_ptb(api: BotApiStandin) -> None:
    with pytest.raises(BadRequest, match="Can't parse entities"):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "a &nbsp; b", parse_mode="HTML"))


def test_without_parse_mode_html_is_plain_text(api: BotApiStandin) -> None:
    assert send(api, text="<script> & &nbsp;").status_code == 200
    assert api.messages[0].visible_text == "<script> & &nbsp;"


def test_unknown_parse_mode_is_rejected(api: BotApiStandin) -> None:
    response = send(api, text="x", parse_mode="BBCode")
    assert description(response) == "Bad Request: unsupported parse_mode"


# ------------------------------------------------------------------ lengths


@pytest.mark.parametrize(
    ("text", "parse_mode", "accepted"),
    [
        ("a" * 4096, None, True),
        ("a" * 4097, None, False),
        ("😀" * 2048, None, True),
        ("😀" * 2049, None, False),
        ("<b>" + "a" * 4096 + "</b>", "HTML", True),
        ("&amp;" * 4096, "HTML", True),
        ("&amp;" * 4097, "HTML", False),
    ],
)
def test_text_length_is_utf16_after_entities(
    api: BotApiStandin, text: str, parse_mode: str | None, accepted: bool
) -> None:
    response = send(api, text=text, **({"parse_mode": parse_mode} if parse_mode else {}))
    if accepted:
        assert response.status_code == 200
    else:
        assert description(response) == "Bad Request: message is too long"


def test_text_empty_after_parsing_is_rejected(api: BotApiStandin) -> None:
    response = send(api, text="<b> </b>", parse_mode="HTML")
    assert description(response) == "Bad Request: message text is empty"


@pytest.mark.parametrize(
    ("caption", "accepted"),
    [
        ("😀" * 1024, False),
        ("😀" * 512, True),
        ("<b>" + "a" * 1024 + "</b>", True),
        ("<b>" + "a" * 1025 + "</b>", False),
        ("&amp;" * 1024, True),
        ("", True),
    ],
)
def test_caption_length_is_utf16_after_entities(
    api: BotApiStandin, caption: str, accepted: bool
) -> None:
    params = {"chat_id": CHANNEL, "photo": PHOTO_URL, "caption": caption, "parse_mode": "HTML"}
    response = call(api, "sendPhoto", data=params)
    if accepted:
        assert response.status_code == 200
    else:
        assert description(response) == "Bad Request: message caption is too long"


# ------------------------------------------------------------------ reply markup and previews


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        (
            keyboard({"text": "Go", "url": "javascript:alert(1)"}),
            "Bad Request: inline keyboard button URL 'javascript:alert(1)' is invalid: "
            "Unsupported URL protocol",
        ),
        (keyboard({"text": "Go", "url": "https://"}), "is invalid: Wrong HTTP URL"),
        ("[]", "Bad Request: can't parse reply keyboard markup JSON object"),
        ("{not json", "Bad Request: can't parse reply keyboard markup JSON object"),
        ('{"inline_keyboard": [{"text": "x"}]}', "can't parse reply keyboard markup JSON"),
        (keyboard({"text": "", "url": "https://example.org"}), 'Field "text" must be non-empty'),
        (keyboard({"text": "Go"}), "Bad Request: text buttons are unallowed in the inline"),
        (keyboard({"text": "Go", "url": "https://a.org", "callback_data": "x"}), "exactly one"),
        (keyboard({"text": "Go", "callback_data": "x" * 65}), "Bad Request: BUTTON_DATA_INVALID"),
    ],
)
def test_invalid_keyboards_are_rejected(api: BotApiStandin, markup: str, expected: str) -> None:
    response = send(api, text="x", reply_markup=markup)
    assert response.status_code == 400
    assert expected in description(response)


def test_valid_keyboard_round_trips_through_ptb(api: BotApiStandin) -> None:
    markup = InlineKeyboardMarkup(
        [
            [InlineKeyboardButton("Read", url="https://example.org/a")],
            [InlineKeyboardButton("Profile", url="tg://resolve?domain=news")],
            [InlineKeyboardButton("Like", callback_data="x" * 64)],
        ]
    )
    message = with_bot(api, lambda bot: bot.send_message(CHANNEL, "x", reply_markup=markup))
    assert message.reply_markup == markup
    assert api.messages[0].reply_markup == markup.to_dict()


def test_link_preview_options(api: BotApiStandin) -> None:
    options = LinkPreviewOptions(url="https://example.org", prefer_large_media=True)
    message = with_bot(
        api, lambda bot: bot.send_message(CHANNEL, "x", link_preview_options=options)
    )
    assert message.link_preview_options == options
    assert send(api, text="y", disable_web_page_preview="true").status_code == 200
    assert api.messages[1].link_preview_options == {"is_disabled": True}
    response = send(api, text="z", link_preview_options='{"is_disabled": "no"}')
    assert "link preview options" in description(response)


# ------------------------------------------------------------------ photos and media groups


def test_send_photo_by_url_and_upload_through_ptb(api: BotApiStandin) -> None:
    async def both(bot: Bot) -> None:
        await bot.send_photo(CHANNEL, photo=PHOTO_URL, caption="<i>c</i>", parse_mode="HTML")
        await bot.send_photo(CHANNEL, photo=image_bytes("PNG"), caption="é 😀")

    with_bot(api, both)
    by_url, uploaded = api.messages
    assert (by_url.photo, by_url.caption, by_url.visible_text) == (PHOTO_URL, "<i>c</i>", "c")
    assert uploaded.photo is not None and uploaded.photo.startswith("upload:")
    assert uploaded.caption == "é 😀"
    assert [by_url.message_id, uploaded.message_id] == [1, 2]


@pytest.mark.parametrize("photo", ["not a url", "ftp://example.org/a.jpg", "short_id"])
def test_implausible_photo_strings_are_rejected(api: BotApiStandin, photo: str) -> None:
    response = call(api, "sendPhoto", data={"chat_id": CHANNEL, "photo": photo})
    assert description(response) == "Bad Request: wrong file identifier/HTTP URL specified"


def test_file_ids_are_accepted(api: BotApiStandin) -> None:
    file_id = "AgACAgIAAxkBAAIBZ2Zt_example-file_id"
    response = call(api, "sendPhoto", data={"chat_id": CHANNEL, "photo": file_id})
    assert response.status_code == 200


def test_refused_photo_urls_fail_with_the_configured_reason(api: BotApiStandin) -> None:
    api.refuse_photo(lambda url: url.endswith(".gif"), PHOTO_FETCH_FAILED)
    api.refuse_photo(PHOTO_URL)
    with pytest.raises(BadRequest, match="Failed to get http url content"):
        with_bot(api, lambda bot: bot.send_photo(CHANNEL, photo="https://a.org/x.gif"))
    response = call(api, "sendPhoto", data={"chat_id": CHANNEL, "photo": PHOTO_URL})
    assert description(response) == "Bad Request: wrong file identifier/HTTP URL specified"
    with pytest.raises(ValueError, match="reason"):
        api.refuse_photo(PHOTO_URL, "no reason")


def test_media_group_through_ptb(api: BotApiStandin) -> None:
    media = [InputMediaPhoto(PHOTO_URL, caption="<b>one</b>", parse_mode="HTML")]
    media.append(InputMediaPhoto(image_bytes("PNG")))
    messages = with_bot(api, lambda bot: bot.send_media_group(CHANNEL, media))
    assert [message.message_id for message in messages] == [1, 2]
    assert messages[0].caption == "one"
    assert len({message.media_group_id for message in messages}) == 1
    assert [record.visible_text for record in api.sent_to(CHANNEL)] == ["one", ""]


def media_group(count: int, **item: Any) -> str:
    return json.dumps([{"type": "photo", "media": PHOTO_URL, **item}] * count)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"media": media_group(1)}, "media must include 2-10 items"),
        ({"media": media_group(11)}, "media must include 2-10 items"),
        ({"media": media_group(2), "reply_markup": keyboard()}, "reply markup is not allowed"),
        ({"media": media_group(2, caption="😀" * 513)}, "message caption is too long"),
        ({"media": media_group(2, type="sticker")}, "unsupported media type"),
        ({"media": '{"type": "photo"}'}, "can't parse media JSON object"),
        ({"media": media_group(2, media="attach://missing")}, "attach://"),
        (
            {
                "media": json.dumps(
                    [{"type": "document", "media": PHOTO_URL}, json.loads(media_group(1))[0]]
                )
            },
            "document can't be mixed",
        ),
    ],
)
def test_invalid_media_groups_are_rejected(
    api: BotApiStandin, params: dict[str, str], expected: str
) -> None:
    response = call(api, "sendMediaGroup", data={"chat_id": CHANNEL, **params})
    assert response.status_code == 400
    assert expected in description(response)
    assert api.messages == []


def test_media_group_of_ten_is_accepted(api: BotApiStandin) -> None:
    response = call(api, "sendMediaGroup", data={"chat_id": CHANNEL, "media": media_group(10)})
    assert len(response.json()["result"]) == 10


# ------------------------------------------------------------------ chats


def test_message_ids_increase_per_chat(api: BotApiStandin) -> None:
    for chat in (CHANNEL, "-1001234567890", CHANNEL):
        assert send(api, chat_id=chat, text="x").status_code == 200
    assert [r.message_id for r in api.messages] == [1, 1, 2]
    assert len(api.sent_to("@NEWS_channel")) == 2
    api.reset()
    assert api.messages == [] and api.requests == []


def test_forbidden_chat_raises_forbidden(api: BotApiStandin) -> None:
    api.forbid_chat(CHANNEL)
    with pytest.raises(Forbidden, match="bot was kicked from the channel chat"):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "x"))
    api.forbid_chat(CHANNEL, kicked=False)
    assert "not a member" in description(send(api, text="x"))
    api.allow_chat(CHANNEL)
    assert send(api, text="x").status_code == 200


def test_migrated_chat_raises_chat_migrated(api: BotApiStandin) -> None:
    api.migrate_chat(-4001, -1004001)
    with pytest.raises(ChatMigrated) as raised:
        with_bot(api, lambda bot: bot.send_message(-4001, "x"))
    assert raised.value.new_chat_id == -1004001
    assert send(api, chat_id="-1004001", text="x").status_code == 200


def test_unknown_and_unlisted_chats_are_not_found(api: BotApiStandin) -> None:
    api.unknown_chat("@gone_channel")
    with pytest.raises(BadRequest, match="Chat not found"):
        with_bot(api, lambda bot: bot.send_message("@gone_channel", "x"))
    api.add_chat(CHANNEL, -1009999)
    assert description(send(api, chat_id="@other_channel", text="x")).endswith("chat not found")
    assert description(send(api, chat_id="@x", text="x")).endswith("chat not found")
    assert send(api, chat_id="-1009999", text="x").status_code == 200
    assert send(api, text="x").json()["result"]["chat"]["id"] == -1009999
    assert [r.message_id for r in api.sent_to(-1009999)] == [1, 2]


def test_concurrent_sends_get_distinct_message_ids(api: BotApiStandin) -> None:
    def send_one(index: int) -> int:
        return send(api, chat_id=CHANNEL, text=f"m{index}").json()["result"]["message_id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = sorted(pool.map(send_one, range(24)))
    assert ids == list(range(1, 25))
    assert len(api.messages) == len(api.requests) == 24


def test_token_must_look_like_a_bot_token() -> None:
    with pytest.raises(ValueError, match="bot token"):
        BotApiStandin("T")


# ------------------------------------------------------------------ rate limits


@pytest.fixture
def timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt in to PTB's future RetryAfter.retry_after type (else a PTBDeprecationWarning)."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")


@pytest.mark.usefixtures("timedelta_retry_after")
def test_per_chat_interval_gives_429_with_retry_after() -> None:
    with BotApiStandin(DEFAULT_TOKEN, per_chat_interval=5) as api:
        assert send(api, text="first").status_code == 200
        response = send(api, text="second")
        assert response.status_code == 429
        assert response.json()["parameters"] == {"retry_after": 5}
        assert response.headers["Retry-After"] == "5"
        assert description(response) == "Too Many Requests: retry after 5"
        assert send(api, chat_id="@other_channel", text="x").status_code == 200
        with pytest.raises(RetryAfter) as raised:
            with_bot(api, lambda bot: bot.send_message(CHANNEL, "third"))
        assert raised.value.retry_after.total_seconds() == 5
        assert [r.text for r in api.messages] == ["first", "x"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_per_minute_window_with_injected_clock() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, per_chat_interval=1, clock=clock) as api:
        for _ in range(20):
            assert send(api, text="x").status_code == 200
            clock.now += 1.5
        response = send(api, text="x")  # 20 sends in the last 30 s: the first leaves at +60 s
        assert response.json()["parameters"]["retry_after"] == 30
        clock.now += 30
        assert send(api, text="x").status_code == 200


def test_global_per_second_limit() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, per_chat_interval=0, global_per_second=3, clock=clock) as api:
        for index in range(3):
            assert send(api, chat_id=f"-100{index + 1}", text="x").status_code == 200
        assert send(api, chat_id="-1009", text="x").json()["parameters"]["retry_after"] == 1
        clock.now += 1
        assert send(api, chat_id="-1009", text="x").status_code == 200


def test_media_group_items_count_towards_the_windows() -> None:
    clock = FakeClock()
    with BotApiStandin(DEFAULT_TOKEN, per_chat_per_minute=5, clock=clock) as api:
        params = {"chat_id": CHANNEL, "media": media_group(4)}
        assert call(api, "sendMediaGroup", data=params).status_code == 200
        clock.now += 2
        assert call(api, "sendMediaGroup", data=params).status_code == 429


def test_fast_fixture_allows_paced_sends(botapi: BotApiStandin) -> None:
    assert send(botapi, text="a").status_code == 200
    assert send(botapi, text="b").status_code == 429
    asyncio.run(asyncio.sleep(botapi.limiter.per_chat_interval))
    assert send(botapi, text="c").status_code == 200
    assert [r.text for r in botapi.messages] == ["a", "c"]


# ------------------------------------------------------------------ fault injection


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("500", NetworkError, "Internal Server Error"),
        ("502_html", NetworkError, "Bad Gateway"),
        ("drop", NetworkError, None),
        ("403", Forbidden, "kicked"),
        ("refuse_photo", BadRequest, "Wrong file identifier"),
        ("parse_entities", BadRequest, "Can't parse entities"),
    ],
)
def test_faults_as_seen_by_ptb(
    api: BotApiStandin, fault: str, error: type[Exception], match: str | None
) -> None:
    api.inject(fault)
    with pytest.raises(error, match=match):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "x"))
    assert api.messages == []
    assert api.requests[-1].fault == fault
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "again"))
    assert [r.text for r in api.messages] == ["again"]


@pytest.mark.usefixtures("timedelta_retry_after")
def test_forced_429_carries_retry_after(api: BotApiStandin) -> None:
    api.inject("429", retry_after=7)
    with pytest.raises(RetryAfter) as raised:
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "x"))
    assert raised.value.retry_after.total_seconds() == 7


@pytest.mark.parametrize("retry_after", [-5, "soon", 2.5])
def test_forced_429_answers_any_retry_after_as_is(api: BotApiStandin, retry_after: Any) -> None:
    api.inject("429", retry_after=retry_after)
    response = send(api, text="x")
    assert response.status_code == 429
    assert response.json()["parameters"] == {"retry_after": retry_after}
    assert response.headers["Retry-After"] == str(retry_after)
    assert api.messages == []


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        ("ok_false", {"ok": False, "error_code": 503, "description": OK_FALSE_DESCRIPTION}),
        ("no_result", {"ok": True}),
        ("wrong_shape", {"ok": True, "result": "surprise"}),
    ],
)
def test_odd_200_answers_do_nothing(api: BotApiStandin, fault: str, answer: Any) -> None:
    api.inject(fault, method="getMe")
    api.inject(fault)
    for method, data in (("getMe", {}), ("sendMessage", {"chat_id": CHANNEL, "text": "x"})):
        response = call(api, method, data=data)
        assert (response.status_code, response.json()) == (200, answer)
    assert api.messages == []
    assert [r.fault for r in api.requests] == [fault, fault]


def test_huge_answer_is_recorded_then_streamed_without_end(api: BotApiStandin) -> None:
    api.inject("huge_answer")
    url = f"{api.base_url}{DEFAULT_TOKEN}/sendMessage"
    with httpx.stream("POST", url, data={"chat_id": CHANNEL, "text": "big"}, timeout=5) as answer:
        assert answer.status_code == 200
        assert int(answer.headers["Content-Length"]) == HUGE_BYTES
        start = b""
        for chunk in answer.iter_bytes():
            start += chunk
            if len(start) > 1_000_000:
                break  # the client walks away; the stand-in stops writing
    assert start.startswith(b'{"ok": true, "result": {"message_id": 1')
    assert [r.text for r in api.messages] == ["big"]
    assert send(api, text="after").status_code == 200


def test_huge_answer_is_valid_json_when_read_to_the_end() -> None:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, huge_bytes=300_000) as api:
        api.inject("huge_answer")
        response = send(api, text="big")
    assert len(response.content) == 300_000
    body = response.json()
    assert body["result"]["text"] == "big" and set(body["padding"]) == {"x"}


def test_huge_chunked_is_recorded_then_streamed_without_a_length() -> None:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, huge_bytes=300_000) as api:
        api.inject("huge_chunked")
        response = send(api, text="big")
    assert "Content-Length" not in response.headers
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(response.content) == 300_000
    body = response.json()
    assert body["result"]["text"] == "big" and set(body["padding"]) == {"x"}
    assert [r.text for r in api.messages] == ["big"]


def test_gzip_bomb_is_a_small_valid_gzip_of_a_large_answer() -> None:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, bomb_bytes=8 * 1024 * 1024) as api:
        api.inject("gzip_bomb")
        url = f"{api.base_url}{DEFAULT_TOKEN}/sendMessage"
        with httpx.stream("POST", url, data={"chat_id": CHANNEL, "text": "boom"},
                          headers={"Accept-Encoding": "identity"}, timeout=5) as answer:
            raw = b"".join(answer.iter_raw())
    assert answer.headers["Content-Encoding"] == "gzip"  # whatever was asked for
    assert int(answer.headers["Content-Length"]) == len(raw) < 20_000
    decoded = gzip.decompress(raw)  # checks the CRC and the size
    assert len(decoded) > 8 * 1024 * 1024
    body = json.loads(decoded)
    assert body["ok"] is True and body["result"]["text"] == "boom"
    assert [r.text for r in api.messages] == ["boom"]


def test_trickle_answer_takes_slow_seconds_in_many_pieces(api: BotApiStandin) -> None:
    api.inject("trickle_answer")
    url = f"{api.base_url}{DEFAULT_TOKEN}/sendMessage"
    started = time.monotonic()
    with httpx.stream("POST", url, data={"chat_id": CHANNEL, "text": "slow"}, timeout=5) as answer:
        pieces = list(answer.iter_raw())
    assert time.monotonic() - started >= api.slow_seconds * 0.9
    assert len(pieces) > 10
    assert json.loads(b"".join(pieces))["result"]["text"] == "slow"
    assert [r.text for r in api.messages] == ["slow"]


def test_slow_after_record_times_out_but_is_posted(api: BotApiStandin) -> None:
    api.inject("slow_after_record")
    with pytest.raises(TimedOut):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "late", read_timeout=0.3))
    assert [r.text for r in api.messages] == ["late"]


def test_drop_after_record_is_a_network_error_but_is_posted(api: BotApiStandin) -> None:
    api.inject("drop_after_record")
    with pytest.raises(NetworkError):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "ghost"))
    assert [r.text for r in api.messages] == ["ghost"]
    assert api.requests[-1].status == 0


def test_faults_filter_by_method_and_chat_and_repeat(api: BotApiStandin) -> None:
    api.inject("500", times=2, method="sendphoto", chat_id="@NEWS_CHANNEL")
    assert send(api, text="text is not a photo").status_code == 200
    photo = {"chat_id": CHANNEL, "photo": PHOTO_URL}
    other = {"chat_id": "@elsewhere", "photo": PHOTO_URL}
    assert call(api, "sendPhoto", data=other).status_code == 200
    statuses = [call(api, "sendPhoto", data=photo).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    with pytest.raises(ValueError, match="unknown fault"):
        api.inject("explode")


def test_down_and_status_all(api: BotApiStandin) -> None:
    api.set_down(True)
    response = call(api, "getMe")
    assert (response.status_code, response.headers["Content-Type"]) == (502, "text/html")
    with pytest.raises(NetworkError):
        with_bot(api, lambda bot: bot.get_me())
    api.set_down(False)
    api.set_status_all(503)
    assert description(call(api, "getMe")) == "Service Unavailable"
    api.set_status_all(None)
    assert call(api, "getMe").status_code == 200


# ------------------------------------------------------------------ standalone process


def test_standalone_process_serves_records_and_obeys_control(tmp_path: Path) -> None:
    record_path = tmp_path / "sent.jsonl"
    with StandinProcess(DEFAULT_TOKEN, record_path=record_path) as process:
        assert process.base_url.startswith("http://127.0.0.1:")
        url = f"{process.base_url}{DEFAULT_TOKEN}/sendMessage"
        assert httpx.post(url, data={"chat_id": CHANNEL, "text": "hi"}).status_code == 200
        assert [m["text"] for m in process.messages()] == ["hi"]
        process.control("inject", {"fault": "500", "method": "sendMessage"})
        assert httpx.post(url, data={"chat_id": "@b_channel", "text": "x"}).status_code == 500
        process.control("down", {"down": True})
        assert httpx.post(url, data={"chat_id": "@b_channel", "text": "x"}).status_code == 502
        process.control("down", {"down": False})
        assert process.control("requests")[-1]["status"] == 500
        assert process.stop() == 0
    assert [record["text"] for record in iter_records(record_path)] == ["hi"]


def test_process_fixture_and_control_errors(botapi_process: StandinProcess) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        httpx.post(f"{botapi_process.url}/_control/inject", json={}).raise_for_status()
    botapi_process.control("reset", {})
    assert botapi_process.messages() == []
