"""`publisher push` against the strict stand-in Bot API: exactly once, never lost."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botapi_standin import DEFAULT_TOKEN, BotApiStandin
from conftest import ArticleWriter

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.delivery import Rejected
from publisher.errors import AlreadyRunning
from publisher.logs import configure_logging
from publisher.state import InstanceLock, open_store

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
    store = open_store(config.state.url)
    try:
        return store.counts()
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
    assert store.requeue("uncertain", None, []) == 1
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
    assert [r.chat_id for r in botapi.messages] == [CHAT]
    assert "chat not found" in outcome.report.errors["@elsewhere"].lower()


class RefusingSender:
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
    assert "Sent 1, failed 0, uncertain 1" in result.stdout
    status = run_cli("status", "-c", str(config.path), cwd=tmp_path)
    assert status.returncode == 0
    assert f"{CHAT}: sent 1, uncertain 1" in status.stdout
    assert "publisher resend -c" in status.stdout
    resend = run_cli("resend", "-c", str(config.path), "--all", cwd=tmp_path)
    assert "Requeued 1 uncertain" in resend.stdout
    again = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert again.returncode == 0 and "Sent 1," in again.stdout
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
        if chat_id == "@broken":
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
