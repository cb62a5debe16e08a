"""`publisher push` against the strict stand-in Bot API: exactly once, never lost."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, OK_FALSE_DESCRIPTION, BotApiStandin

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.delivery import BotInfo, ChatInfo, MemberInfo, Rejected
from publisher.destinations import remembered_destinations
from publisher.errors import AlreadyRunning
from publisher.logs import configure_logging
from publisher.state import Delivery, InstanceLock, open_store

CHAT = "@news"
ConfigMaker = Callable[..., Config]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


TELEGRAM_DEFAULTS = {
    "chat_id": CHAT,
    "max_age_hours": 0,
    "max_per_run": 0,
    "per_chat_interval_seconds": 0.06,
    "timeout_seconds": 0.5,
    "max_wait_seconds": 5,
}


def toml_value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


SQLITE_STATE = "sqlite:///state/publisher.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    """Every delivery behaviour holds on both engines."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return SQLITE_STATE


@pytest.fixture
def make_config(
    tmp_path: Path, articles_dir: Path, botapi: BotApiStandin, state_url: str
) -> ConfigMaker:
    """A config for the stand-in; keyword arguments override [telegram] keys."""

    def make(extra: str = "", base_url: str | None = None, **telegram: object) -> Config:
        settings = {**TELEGRAM_DEFAULTS, "api_base_url": base_url or botapi.base_url, **telegram}
        path = tmp_path / "config.toml"
        (tmp_path / "state").mkdir(exist_ok=True)  # publisher never creates a state folder
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n'
            "[telegram]\n"
            + "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
            + extra,
            encoding="utf-8",
        )
        return load_config(path, environ={})

    return make


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def ledger(config: Config) -> dict[str, dict[str, int]]:
    """The ledger's counts per chat, each chat called as the config names it (the ledger
    keys chats by their numeric id)."""
    store = open_store(config.state.url)
    try:
        labels = remembered_destinations(config, store)
        return {labels.label(chat): by_state for chat, by_state in store.counts().items()}
    finally:
        store.close()


def titles(api: BotApiStandin, chat: str = CHAT) -> list[str]:
    return [record.visible_text.split("\n")[0] for record in api.sent_to(chat)]


def test_every_selected_article_once_and_nothing_else(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    for index in range(1, 6):
        write_article(f"{index}.txt", index)
    write_article("draft.txt", 6, published=False)
    write_article("weak.txt", 7, quality=1)
    write_article("dupe.txt", 8, webUrl="https://news.example.com/articles/1?utm_source=x")
    config = make_config(extra="[select]\nmin_quality = 50\n")
    outcome = push(config)
    assert outcome.report.ok and outcome.report.total("sent") == 5
    sent = titles(botapi)
    assert sorted(sent) == sorted(
        ["Article number 8", "Article number 2", "Article number 3", "Article number 4",
         "Article number 5"]
    )
    # Oldest first, so the channel reads in order.
    assert sent == ["Article number 2", "Article number 3", "Article number 4",
                    "Article number 5", "Article number 8"]
    assert push(config).report.total("sent") == 0
    assert len(botapi.messages) == 5
    write_article("new.txt", 20)
    assert push(config).report.total("sent") == 1
    assert titles(botapi)[-1] == "Article number 20"
    assert ledger(config) == {CHAT: {"sent": 6}}


def test_message_shape_photo_caption_keyboard(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article(
        "a.txt", 1, title='<script>alert("x")</script> & Tom & Jerry',
        topics=["Computer Vision", "AI"],
        related=[{"title": f"Related {i}", "webUrl": f"https://other.example.com/{i}"}
                 for i in range(5)],
    )
    push(make_config())
    (record,) = botapi.messages
    assert record.method.lower() == "sendphoto"
    assert record.photo == "https://img.example.com/1.jpg"
    assert record.parse_mode == "HTML"
    assert record.visible_text.startswith('<script>alert("x")</script> & Tom & Jerry\n')
    assert "&lt;script&gt;" in (record.caption or "")
    assert "#ComputerVision" in record.visible_text and "#AI" in record.visible_text
    rows = record.reply_markup["inline_keyboard"]  # type: ignore[index]
    assert rows[0][0] == {"text": "Read on Example News",
                          "url": "https://news.example.com/articles/1"}
    assert [row[0]["url"] for row in rows[1:]] == [
        f"https://other.example.com/{i}" for i in range(3)
    ]


def test_article_without_image_goes_as_text_with_preview(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1, images=[{"url": "https://e.com/icon.png", "width": 32,
                                       "height": 32}])
    push(make_config())
    (record,) = botapi.messages
    assert record.method.lower() == "sendmessage"
    assert record.link_preview_options is not None
    assert record.link_preview_options["url"] == "https://news.example.com/articles/1"


@pytest.mark.parametrize(
    "reason",
    ["wrong file identifier/HTTP URL specified", "failed to get HTTP URL content",
     "wrong type of the web page content"],
)
def test_refused_photo_falls_back_to_text(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin, reason: str
) -> None:
    write_article("a.txt", 1)
    botapi.refuse_photo("https://img.example.com/1.jpg", reason)
    outcome = push(make_config())
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.method.lower() == "sendmessage"
    assert record.visible_text.startswith("Article number 1")
    assert record.reply_markup is not None


def test_unparseable_entities_resent_once_as_plain_text(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_article("a.txt", 1)
    botapi.inject("parse_entities", times=1)
    with caplog.at_level(logging.ERROR):
        outcome = push(make_config())
    assert outcome.report.total("sent") == 1
    (record,) = botapi.messages
    assert record.parse_mode is None and record.text and "Article number 1" in record.text
    assert any("bug_html_refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", ["500", "502_html"])
def test_server_errors_are_retried_and_delivered_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin, fault: str
) -> None:
    write_article("a.txt", 1)
    botapi.inject(fault, times=2)
    outcome = push(make_config())
    assert outcome.report.ok and outcome.report.total("sent") == 1
    assert len(botapi.messages) == 1


def test_telegram_down_leaves_articles_pending_then_delivers(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config(max_tries=2)
    botapi.set_down(True)
    outcome = push(config)
    assert not outcome.report.ok and outcome.report.errors
    assert botapi.messages == []
    assert ledger(config) == {CHAT: {"pending": 2}}
    botapi.set_down(False)
    outcome = push(config)
    assert outcome.report.ok and len(botapi.messages) == 2


def test_connection_refused_never_loses_an_article(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    config = make_config(base_url=f"http://127.0.0.1:{closed_port}/bot")
    outcome = push(config)
    assert "cannot connect" in outcome.report.errors[CHAT]
    assert ledger(config) == {CHAT: {"pending": 1}}
    push(make_config())
    assert len(botapi.messages) == 1


@pytest.mark.parametrize("fault", ["slow_after_record", "drop_after_record", "drop"])
def test_ambiguous_sends_are_held_as_uncertain_not_resent(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin, fault: str
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config()
    botapi.inject(fault, times=1)
    outcome = push(config)
    assert outcome.report.total("uncertain") == 1 and outcome.report.total("sent") == 1
    assert ledger(config) == {CHAT: {"sent": 1, "uncertain": 1}}
    push(config)
    recorded = [r.visible_text.split("\n")[0] for r in botapi.messages]
    expected_posts = 2 if fault != "drop" else 1  # "drop" never reached the channel
    assert len(recorded) == expected_posts and len(set(recorded)) == len(recorded)
    # After a look, the operator requeues it; it goes out.
    store = open_store(config.state.url)
    assert len(store.requeue("uncertain", None, [])) == 1
    store.close()
    push(config)
    assert ledger(config) == {CHAT: {"sent": 2}}


def test_on_uncertain_resend_gives_at_least_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config(on_uncertain="resend")
    botapi.inject("slow_after_record", times=1)
    outcome = push(config)
    assert outcome.report.total("sent") == 1
    assert len(botapi.messages) == 2  # the first one did arrive: at-least-once
    assert ledger(config) == {CHAT: {"sent": 1}}


def test_crash_while_sending_is_recovered_as_uncertain(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    selected = pipeline.load_and_select(config).selected
    store = open_store(config.state.url)
    from publisher.dispatch import plan_deliveries

    store.add_deliveries(plan_deliveries(selected, config, datetime.now(UTC)))
    # ...and the process died here, its lease long over (a shared state waits for that).
    assert store.claim_next(CHAT, time.time(), "crashed", time.time() - 1)
    store.close()
    push(config)
    assert botapi.messages == []
    assert ledger(config) == {CHAT: {"uncertain": 1}}


def test_rate_limit_answer_is_waited_out_and_the_same_message_retried(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    botapi.inject("429", times=1, retry_after=1)
    outcome = push(make_config())
    assert outcome.report.ok and outcome.report.total("rate_limited") == 1
    assert titles(botapi) == ["Article number 1", "Article number 2"]


def test_too_fast_client_gets_429s_but_loses_and_duplicates_nothing(
    tmp_path: Path, write_article: ArticleWriter, make_config: ConfigMaker
) -> None:
    for index in range(1, 5):
        write_article(f"{index}.txt", index)
    with BotApiStandin(DEFAULT_TOKEN, per_chat_interval=0.5) as api:
        config = make_config(per_chat_interval_seconds=0, base_url=api.base_url)
        outcome = push(config)
        assert outcome.report.ok and outcome.report.total("rate_limited") >= 1
        assert sorted(titles(api)) == [f"Article number {i}" for i in range(1, 5)]


def test_long_rate_limit_leaves_the_rest_for_the_next_run(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    botapi.inject("429", times=1, retry_after=60)
    outcome = push(config)
    assert outcome.report.total("sent") == 0 and outcome.report.total("rate_limited") == 1
    assert ledger(config) == {CHAT: {"pending": 1}}


def test_forbidden_chat_stops_that_chat_only(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1, topics=["Robotics"])
    config = make_config(extra='[telegram.routes]\nRobotics = "@robots"\n')
    botapi.forbid_chat(CHAT)
    outcome = push(config)
    assert not outcome.report.ok and "kicked" in outcome.report.errors[CHAT]
    assert len(botapi.sent_to("@robots")) == 1
    botapi.allow_chat(CHAT)
    assert push(config).report.ok
    assert ledger(config) == {CHAT: {"sent": 1}, "@robots": {"sent": 1}}


def test_migrated_chat_is_followed_and_remembered(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    botapi.migrate_chat(CHAT, -1009999)
    push(config)
    write_article("b.txt", 2)
    push(config)
    assert len(botapi.sent_to(-1009999)) == 2
    migrations = [r for r in botapi.requests if r.status == 400]
    assert len(migrations) == 1  # the second article went straight to the new chat


def test_unknown_chat_stops_only_that_chat(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    botapi.unknown_chat("@elsewhere")
    outcome = push(make_config(extra='[telegram.routes]\nAI = "@elsewhere"\n'))
    assert len(botapi.messages) == 1 and len(botapi.sent_to(CHAT)) == 1
    assert "chat not found" in outcome.report.errors["@elsewhere"].lower()


class FakeChats:
    """The chat questions of a Sender without Telegram: every "@name" is a channel with an
    id of its own (the same one each time)."""

    async def get_me(self) -> BotInfo:
        return BotInfo(1, "fake_bot")

    async def get_chat(self, chat_id: str) -> ChatInfo:
        number = int(chat_id) if chat_id.lstrip("-").isdigit() else (
            -1_002_000_000_000 - sum(ord(c) for c in chat_id))
        return ChatInfo(number, "channel", chat_id, chat_id.lstrip("@"))

    async def get_chat_member(self, chat_id: str, user_id: int) -> MemberInfo:
        return MemberInfo("administrator", can_post_messages=True)


class RefusingSender(FakeChats):
    """A Sender whose Telegram refuses one article's message with a 400."""

    def __init__(self, refused_title: str) -> None:
        self.refused_title = refused_title
        self.posted: list[str] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send_photo(self, chat_id: str, photo_url: str, caption_html: str,
                         buttons: object) -> int:
        if self.refused_title in caption_html:
            raise Rejected("Bad Request: message is too long")
        self.posted.append(caption_html)
        return len(self.posted)

    async def send_text(self, chat_id: str, text: str, **kwargs: object) -> int:
        raise AssertionError("not expected")


def test_bad_request_marks_failed_and_is_not_retried_forever(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config()
    sender = RefusingSender("Article number 1")
    outcome = asyncio.run(pipeline.push(config, sender))
    assert outcome.report.total("failed") == 1 and not outcome.report.ok
    assert len(sender.posted) == 1
    assert ledger(config) == {CHAT: {"failed": 1, "sent": 1}}
    again = asyncio.run(pipeline.push(config, sender))
    assert again.report.ok and len(sender.posted) == 1


def test_routes_send_each_article_to_each_distinct_chat_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1, topics=["Robotics", "Computer Vision"])
    write_article("b.txt", 2, topics=["AI"])
    config = make_config(extra='[telegram.routes]\nRobotics = "@robots"\n'
                               '"Computer Vision" = ["@robots", "@news", "@vision"]\n')
    push(config)
    assert len(botapi.sent_to(CHAT)) == 2
    assert len(botapi.sent_to("@robots")) == 1
    assert len(botapi.sent_to("@vision")) == 1


def test_backlog_age_window_and_per_run_limit(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    now = datetime.now(UTC)
    write_article("old.txt", 1, publishedDateTime=(now - timedelta(hours=30)).isoformat())
    for index in range(2, 7):
        write_article(f"{index}.txt", index,
                      publishedDateTime=(now - timedelta(hours=10 - index)).isoformat())
    config = make_config(max_age_hours=24, max_per_run=3)
    first = push(config)
    assert first.report.total("sent") == 3
    assert titles(botapi) == ["Article number 2", "Article number 3", "Article number 4"]
    assert ledger(config) == {CHAT: {"pending": 2, "sent": 3, "skipped": 1}}
    push(config)
    assert titles(botapi)[3:] == ["Article number 5", "Article number 6"]
    assert "Article number 1" not in titles(botapi)


@pytest.mark.parametrize("state_url", [SQLITE_STATE])  # PostgreSQL admits several
def test_single_instance_lock(make_config: ConfigMaker, write_article: ArticleWriter) -> None:
    write_article("a.txt", 1)
    config = make_config()
    with InstanceLock(config.state.url), pytest.raises(AlreadyRunning):
        push(config)


def test_token_never_appears_in_logs(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    capfd: pytest.CaptureFixture[str],
) -> None:
    write_article("a.txt", 1)
    botapi.inject("500", times=1)
    botapi.inject("slow_after_record", times=1)
    write_article("b.txt", 2)
    configure_logging(logging.DEBUG)
    try:
        for name in ("httpx", "httpcore", "telegram"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        push(make_config())
    finally:
        configure_logging(logging.WARNING)
    out, err = capfd.readouterr()
    assert "HTTP Request" in err or "sent" in err  # debug logging really was on
    secret = DEFAULT_TOKEN.partition(":")[2]
    assert DEFAULT_TOKEN not in out + err and secret not in out + err


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=60, check=False,
    )


def test_cli_push_status_resend_and_no_token_in_output(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config()
    botapi.inject("slow_after_record", times=1)
    result = run_cli("push", "-c", str(config.path), "-vv", "--debug", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Sent 1 post; 0 failed, 1 uncertain" in result.stdout
    status = run_cli("status", "-c", str(config.path), cwd=tmp_path)
    assert status.returncode == 0
    assert f"{CHAT} (channel" in status.stdout and ": 1 sent, 1 uncertain" in status.stdout
    assert "publisher resend -c" in status.stdout and "publisher ack -c" in status.stdout
    resend = run_cli("resend", "-c", str(config.path), "--all", cwd=tmp_path)
    assert "Requeued 1 uncertain post;" in resend.stdout
    again = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert again.returncode == 0 and "Sent 1 post;" in again.stdout
    everything = "".join(r.stdout + r.stderr for r in (result, status, resend, again))
    assert DEFAULT_TOKEN not in everything and DEFAULT_TOKEN.partition(":")[2] not in everything


def test_cli_push_exits_nonzero_when_a_chat_fails(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    botapi.forbid_chat(CHAT)
    result = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert result.returncode == 1
    assert f"Error: cannot post to {CHAT}: Forbidden: bot was kicked" in result.stderr


def test_cli_missing_token_is_a_clear_error(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    config = make_config()
    env = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "publisher", "push", "-c", str(config.path)], cwd=tmp_path,
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no bot token: set the environment variable")
    assert "Traceback" not in result.stderr


def test_cli_dry_run_prints_and_changes_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1, title="Dry <run> & test")
    config = make_config()
    result = run_cli("push", "-c", str(config.path), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sendPhoto to @news" in result.stdout and "Dry &lt;run&gt; &amp; test" in result.stdout
    assert "1 message would be sent; nothing was sent" in result.stdout
    assert botapi.requests == []
    assert list((tmp_path / "state").iterdir()) == []


class ExplodingSender(RefusingSender):
    """A Sender that fails unexpectedly (a bug, an odd answer) for one chat."""

    async def send_photo(self, chat_id: str, photo_url: str, caption_html: str,
                         buttons: object) -> int:
        if chat_id == str((await self.get_chat("@broken")).id):
            raise RuntimeError("surprise")
        self.posted.append(f"{chat_id} {caption_html[:40]}")
        return len(self.posted)


def test_unexpected_error_in_one_chat_leaves_no_send_in_flight_and_no_duplicate(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    for index in range(1, 4):
        write_article(f"{index}.txt", index)
    config = make_config(extra='[telegram.routes]\nAI = "@broken"\n')
    sender = ExplodingSender("nothing refused")
    with pytest.raises(RuntimeError, match="surprise"):
        asyncio.run(pipeline.push(config, sender))
    assert len(sender.posted) == 3  # the healthy chat finished its run
    assert ledger(config) == {CHAT: {"sent": 3}, "@broken": {"pending": 2, "uncertain": 1}}
    with pytest.raises(RuntimeError):
        asyncio.run(pipeline.push(config, sender))
    assert len(sender.posted) == 3  # nothing posted twice


def test_a_topic_routed_later_reaches_its_chat(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    config = make_config(extra='[telegram.routes]\nRobotics = "@robots"\n')
    push(config)
    write_article("a.txt", 1, topics=["AI", "Robotics"], excerpt="Now about robots too.")
    push(config)
    assert len(botapi.sent_to(CHAT)) == 1 and len(botapi.sent_to("@robots")) == 1


def test_chat_level_bad_request_keeps_posts_pending() -> None:
    from publisher.delivery import ChatForbidden, _bad_request

    for reason in ("Bad Request: not enough rights to send photos to the chat",
                   "Bad Request: need administrator rights in the channel chat",
                   "Bad Request: CHAT_WRITE_FORBIDDEN"):
        assert isinstance(_bad_request(reason, photo=True), ChatForbidden)


def test_unreadable_success_answer_counts_as_maybe_posted() -> None:
    from telegram.error import TelegramError

    from publisher.delivery import Ambiguous, TelegramSender

    sender = TelegramSender(DEFAULT_TOKEN, "http://127.0.0.1:9/bot")
    assert isinstance(sender._translate(TelegramError("Invalid server response")), Ambiguous)
    asyncio.run(sender.close())


def test_a_failure_after_the_claim_but_before_the_request_loses_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from publisher.catalog import Catalog
    from publisher.errors import StateError

    write_article("a.txt", 1)
    config = make_config()
    real = Catalog.selected_article
    calls: list[str] = []

    def flaky(self: Catalog, article_id: str) -> object:
        calls.append(article_id)
        if len(calls) == 1:
            raise StateError("state database: server closed the connection unexpectedly")
        return real(self, article_id)

    monkeypatch.setattr(Catalog, "selected_article", flaky)
    with pytest.raises(StateError):
        push(config)
    assert ledger(config) == {CHAT: {"pending": 1}}  # given back, not left "sending"
    assert push(config).report.total("sent") == 1
    assert len(botapi.messages) == 1


# -- a broken Bot API or proxy -----------------------------------------------------------------


def states(config: Config) -> dict[str, int]:
    """The ledger's counts per state, whatever the chats are keyed by."""
    merged: dict[str, int] = {}
    for by_state in ledger(config).values():
        for state, count in by_state.items():
            merged[state] = merged.get(state, 0) + count
    return merged


def deliveries(config: Config, state: str) -> list[Delivery]:
    store = open_store(config.state.url)
    try:
        return store.deliveries([state], limit=1000)
    finally:
        store.close()


@pytest.mark.parametrize("retry_after", [-5, "soon", 2, 10**9])
def test_unusable_retry_after_counts_as_max_wait(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    retry_after: object,
) -> None:
    write_article("a.txt", 1)
    config = make_config(max_wait_seconds=1)
    botapi.inject("429", times=1, retry_after=retry_after)
    before = time.time()
    outcome = push(config)
    assert outcome.report.total("rate_limited") == 1 and outcome.report.total("sent") == 0
    assert [r.method for r in botapi.requests] == ["getMe", "getChat", "sendPhoto"]  # no loop
    (waiting,) = deliveries(config, "pending")
    # Retried after max_wait_seconds (plus jitter): not at once, not in 30 years.
    assert before + 1.05 <= waiting.next_attempt_at <= time.time() + 1.5
    assert "429" in waiting.reason


def test_a_429_that_keeps_coming_leaves_the_chat_for_the_next_run(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from publisher.dispatch import MAX_RATE_LIMITS

    write_article("a.txt", 1)
    config = make_config()
    botapi.inject("429", times=100, retry_after=0)
    outcome = push(config)
    assert outcome.report.total("rate_limited") == MAX_RATE_LIMITS
    assert len(botapi.requests) == 2 + MAX_RATE_LIMITS  # getMe, getChat, the tries
    assert states(config) == {"pending": 1}


def test_ok_false_in_a_200_answer_is_not_sent_and_keeps_its_reason(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config(max_tries=1)
    botapi.inject("ok_false")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and botapi.messages == []
    (waiting,) = deliveries(config, "pending")
    assert OK_FALSE_DESCRIPTION in waiting.reason and "KeyError" not in waiting.reason
    time.sleep(max(waiting.next_attempt_at - time.time(), 0.0))  # its backoff
    assert push(config).report.total("sent") == 1
    assert len(botapi.messages) == 1


def _config_for_fault(make_config: ConfigMaker, fault: str) -> Config:
    """The tests' 0.5 s deadline for a trickle; for an answer cut by its size, a deadline
    that a busy machine's decompression cannot reach first."""
    return make_config() if fault == "trickle_answer" else make_config(timeout_seconds=5)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("ok_false", OK_FALSE_DESCRIPTION), ("no_result", 'no "ok": true and result'),
     ("wrong_shape", "not a bot user"), ("huge_answer", "larger than 4096 KiB"),
     ("huge_chunked", "larger than 4096 KiB (cut off)"),
     ("gzip_bomb", "larger than 4096 KiB (gzip-encoded, cut off)"),
     ("trickle_answer", "no complete answer within 0.5 s")],
)
def test_get_me_answering_nonsense_is_a_clear_error(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    fault: str, reason: str,
) -> None:
    write_article("a.txt", 1)
    config = _config_for_fault(make_config, fault)
    botapi.inject(fault, method="getMe")
    outcome = push(config)
    assert outcome.report.fatal.startswith("getMe failed: ") and reason in outcome.report.fatal
    assert list(outcome.report.errors.values()) == [
        f"Telegram unavailable: {outcome.report.fatal}"]
    assert botapi.messages == [] and states(config) == {"pending": 1}
    assert push(config).report.total("sent") == 1


def test_html_and_plain_text_both_refused_fails_with_both_reasons_and_goes_on(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config()
    botapi.inject("parse_entities", times=2)
    outcome = push(config)
    assert outcome.report.total("failed") == 1 and outcome.report.total("sent") == 1
    (failed,) = deliveries(config, "failed")
    assert failed.title == "Article number 1"
    assert failed.reason.startswith("HTML refused: Can't parse entities")
    assert "; plain text refused too: Can't parse entities" in failed.reason
    assert titles(botapi) == ["Article number 2"]


@pytest.mark.parametrize(("fault", "reason"), [
    ("huge_answer", "the answer is larger than 4096 KiB"),
    ("huge_chunked", "the answer is larger than 4096 KiB (cut off)"),
    ("gzip_bomb", "the answer is larger than 4096 KiB (gzip-encoded, cut off)"),
    ("trickle_answer", "no complete answer within 0.5 s"),
])
def test_a_huge_or_trickling_answer_is_cut_and_the_send_held_as_uncertain(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    fault: str, reason: str,
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = _config_for_fault(make_config, fault)
    botapi.inject(fault)
    botapi.slow_seconds = 4.0  # a trickle that would hold the send for 4 s: cut at 0.5 s
    started = time.monotonic()
    outcome = push(config)
    assert time.monotonic() - started < 3.0
    assert outcome.report.total("uncertain") == 1 and outcome.report.total("sent") == 1
    (held,) = deliveries(config, "uncertain")
    assert held.title == "Article number 1" and reason in held.reason
    assert len(botapi.messages) == 2  # it was posted: at-most-once held it back


def test_a_send_answered_with_a_wrong_result_is_held_with_what_was_wrong(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    botapi.inject("wrong_shape")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 1
    (held,) = deliveries(config, "uncertain")
    assert held.reason == ("the answer's result is not a Message: it is a string "
                           "('surprise'), not an object")


def test_a_wrong_token_is_reported_as_refused_in_push_and_status(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    wrong = {"TELEGRAM_BOT_TOKEN": "123456:WRONG-token-value_abc"}
    result = run_cli("push", "-c", str(config.path), cwd=tmp_path, env=wrong)
    assert result.returncode == 1
    assert "Error: the bot token was refused (401)" in result.stderr.splitlines()
    assert "unavailable" not in result.stderr.lower()
    status = run_cli("status", "-c", str(config.path), cwd=tmp_path)
    assert re.search(r"error in \S+: the bot token was refused \(401\)", status.stdout)
    assert "unavailable" not in status.stdout.lower()


def test_cli_push_exits_nonzero_when_no_post_surely_went_out(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    config = make_config()
    botapi.inject("slow_after_record")
    result = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Sent 0 posts; 0 failed, 1 uncertain" in result.stdout
    assert "Error: no post surely went out: 1 uncertain, 0 failed" in result.stderr
    again = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # nothing to do is no failure


def test_cli_push_exits_zero_when_a_429_leaves_posts_for_the_next_run(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    config = make_config(max_wait_seconds=1)
    botapi.inject("429", times=1, retry_after=60)  # longer than max_wait_seconds: next run
    result = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # pending, not uncertain or failed
    assert "Sent 0 posts; 0 failed, 0 uncertain" in result.stdout
    assert "rate limited: Telegram asked to wait 60 s (429)" in result.stdout
    assert "Error:" not in result.stderr
    assert states(config) == {"pending": 1}


def test_cli_push_log_lines_stay_one_line_without_bodies_or_tracebacks(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1)
    config = make_config(max_tries=1)
    botapi.inject("502_html")
    result = run_cli("push", "-c", str(config.path), "-v", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "<html>" not in result.stderr and "Traceback" not in result.stderr
    assert any(" retry_later " in line for line in lines)
    for line in lines:
        assert LOG_LINE.match(line) or line.startswith(("Error: ", "Using config ")), line


LOG_LINE = re.compile(
    r'^\d{4}-\d\d-\d\dT[\d:.]+\+00:00 (debug|info|warning|error|critical) [\w.]+'
    r'( [^\s=]+=("([^"\\]|\\.)*"|[^\s"]+))*$'
)


# -- signals -----------------------------------------------------------------------------------


def start_cli_push(config: Config, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "publisher", "push", "-c", str(config.path)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_held_reply(api: BotApiStandin, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(r.fault == "slow_after_record" for r in api.requests):
        assert time.monotonic() < deadline, "no reply was held back"
        time.sleep(0.02)


@pytest.mark.parametrize("on_uncertain", ["hold", "resend"])
def test_sigterm_lets_push_finish_the_send_in_flight_and_record_it(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path, on_uncertain: str,
) -> None:
    write_article("a.txt", 1)
    write_article("b.txt", 2)
    config = make_config(on_uncertain=on_uncertain, timeout_seconds=3)
    botapi.inject("slow_after_record")  # the reply comes back after slow_seconds
    process = start_cli_push(config, tmp_path)
    wait_for_held_reply(botapi)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Sent 1 post; 0 failed, 0 uncertain" in out
    assert "Stopped by SIGTERM after the send in flight, which was recorded" in err
    assert states(config) == {"pending": 1, "sent": 1}
    assert push(config).report.total("sent") == 1
    assert titles(botapi) == ["Article number 1", "Article number 2"]  # none posted twice


@pytest.mark.parametrize("state_url", [SQLITE_STATE])  # the process's stop, not the ledger
def test_a_second_signal_stops_push_at_once_with_status_1(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    write_article("a.txt", 1)
    with BotApiStandin(DEFAULT_TOKEN, slow_seconds=30) as api:
        config = make_config(base_url=api.base_url, timeout_seconds=20)
        api.inject("slow_after_record")
        process = start_cli_push(config, tmp_path)
        wait_for_held_reply(api)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
        assert time.monotonic() - started < 2
    assert process.returncode == 1


@pytest.mark.parametrize("state_url", [SQLITE_STATE])  # the process's stop, not the ledger
def test_sigterm_abandons_a_push_send_hanging_past_the_stop_deadline(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    from publisher.stopping import STOP_DEADLINE_SECONDS

    write_article("a.txt", 1)
    with BotApiStandin(DEFAULT_TOKEN, slow_seconds=STOP_DEADLINE_SECONDS + 3) as api:
        config = make_config(base_url=api.base_url, timeout_seconds=STOP_DEADLINE_SECONDS + 5)
        api.inject("slow_after_record")
        process = start_cli_push(config, tmp_path)
        wait_for_held_reply(api)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
        assert STOP_DEADLINE_SECONDS <= time.monotonic() - started < STOP_DEADLINE_SECONDS + 3
    assert process.returncode == 128 + signal.SIGTERM
    assert "Error: stopped by SIGTERM: a send still hanging after 7 s was abandoned" in err
    assert states(config) == {"sending": 1}  # the next start calls it uncertain


# -- pacing ------------------------------------------------------------------------------------


class VirtualTime:
    """Waits pass at once; the stand-in sees each request arrive late by a seeded network
    latency of 0 to ``jitter`` seconds, so requests paced exactly at a limit sometimes come
    early relative to the one before, as they do over a real network."""

    def __init__(self, jitter: float = 0.03, seed: int = 7) -> None:
        self.now = time.time()
        self.jitter = jitter
        self._random = random.Random(seed)

    def clock(self) -> float:
        return self.now

    def arrival(self) -> float:
        return self.now + self._random.uniform(0, self.jitter)

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def test_pacing_keeps_a_margin_below_telegrams_exact_limits(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    from publisher.catalog import Catalog
    from publisher.dispatch import Dispatcher

    total = 26  # more than the 20 a chat may get per minute
    for index in range(1, total + 1):
        write_article(f"{index}.txt", index)
    virtual = VirtualTime()
    # Telegram's documented limits, exactly: 1 s per chat, 20 per minute, 30 per second.
    with BotApiStandin(DEFAULT_TOKEN, clock=virtual.arrival) as api:
        config = make_config(base_url=api.base_url, per_chat_interval_seconds=1.0,
                             max_wait_seconds=120, timeout_seconds=5)

        async def paced_push() -> pipeline.PushOutcome:
            store = open_store(config.state.url)
            sender = pipeline.make_sender(config)
            try:
                catalog = Catalog(store.db)
                corpus = pipeline.sync_corpus(config, catalog)
                dispatcher = Dispatcher(store, sender, config, sleep=virtual.sleep,
                                        clock=virtual.clock)
                return await pipeline.deliver(config, store, dispatcher, catalog, corpus)
            finally:
                await sender.close()
                store.close()

        outcome = asyncio.run(paced_push())
        assert [r.status for r in api.requests if r.status != 200] == []
        assert outcome.report.total("sent") == total
        assert outcome.report.total("rate_limited") == 0
        assert len(api.messages) == total


def test_reserved_slots_keep_a_margin_below_the_bot_wide_limit(state_url: str,
                                                               tmp_path: Path) -> None:
    from standin.server import ApiError, RateLimiter

    from publisher.config import Config as DefaultConfig
    from publisher.dispatch import paced_with_margin

    url = state_url if not state_url.startswith("sqlite") else f"sqlite:///{tmp_path}/s.db"
    store = open_store(url)
    pacing = paced_with_margin(DefaultConfig())  # Telegram's limits: 1 s, 20/min, 30/s
    start = 1_000_000.0
    slots = [(store.reserve_send(f"@chat{chat:02d}", start, pacing), chat)
             for _ in range(3) for chat in range(40)]
    store.close()
    jitter = random.Random(11)
    arrivals = sorted((slot + jitter.uniform(0, 0.03), chat) for slot, chat in slots
                      if slot is not None)
    assert len(arrivals) == 120
    now = [0.0]
    limiter = RateLimiter(1.0, 20, 30, clock=lambda: now[0])
    for at, chat in arrivals:
        now[0] = at
        try:
            limiter.acquire(chat)
        except ApiError as exc:
            pytest.fail(f"429 for chat {chat} at +{at - start:.3f} s: {exc}")
