"""The followers' updates inside ``publisher run``: long polling answers /start end to end,
the webhook (the stand-in POSTing to the [server] listener) refuses a wrong or missing
secret and handles the right one, and two instances on PostgreSQL poll once, the second
taking over when the first dies."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ArticleWriter, wait_for
from standin.fixtures import FAST_PER_CHAT_INTERVAL
from standin.server import DEFAULT_TOKEN, BotApiStandin, StandinProcess
from test_service import Publisher, publishers, start  # noqa: F401 - fixtures

from publisher import followers, updates
from publisher.bot import BotSettings, FollowerBot, TopicIndex
from publisher.catalog import Catalog
from publisher.config import load_config
from publisher.delivery import TelegramSender
from publisher.errors import ConfigError
from publisher.service import Service
from publisher.state import open_store

USER = 4242
SECRET = "s3cret-Token_1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, api: BotApiStandin | StandinProcess, listen: str = "",
                 **followers_keys: object) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    keys = {"enabled": True, "poll_timeout_seconds": 1, "command_interval_seconds": 0,
            **followers_keys}
    path = tmp_path / "config.toml"
    path.write_text(
        '[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
        'base_url = "https://feeds.example.org/"\n'
        '[state]\nurl = "sqlite:///state/publisher.db"\n'
        '[schedule]\nbuild = "1h"\npush = "1h"\nwatch = false\n'
        + (f'[server]\nlisten = "{listen}"\n' if listen else "")
        + f'[telegram]\nchat_id = "@news"\napi_base_url = "{api.base_url}"\n'
        'per_chat_interval_seconds = 0.06\ntimeout_seconds = 2\nmax_age_hours = 0\n'
        '[followers]\n' + "".join(
            f"{key} = {value!r}\n".replace("True", "true").replace("'", '"')
            for key, value in keys.items()),
        encoding="utf-8")
    return path


def run_service(config: Path, drive: Callable[[], None]) -> int:
    """``publisher run`` in this (the main) thread, as the CLI runs it, while ``drive`` acts
    from another thread; the service is stopped (as by SIGTERM) when ``drive`` returns."""
    service = Service(load_config(config))
    failure: list[BaseException] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()

        def driver() -> None:
            try:
                drive()
            except BaseException as exc:
                failure.append(exc)
            finally:
                loop.call_soon_threadsafe(service.request_stop)

        thread = threading.Thread(target=driver)
        thread.start()
        try:
            return await service.serve()
        finally:
            await asyncio.to_thread(thread.join, 30)

    status = asyncio.run(main())
    if failure:
        raise failure[0]
    return status


@pytest.fixture
def articles(write_article: ArticleWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    write_article("a.md", 1, topics=["Robotics"])
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)


def test_publisher_run_answers_start_by_long_polling(
        botapi: BotApiStandin, tmp_path: Path, articles: None) -> None:
    def drive() -> None:
        botapi.wait_for_poll(20.0)
        # The topics are the catalog's: asked before the first sync, /start has none yet.
        wait_for(lambda: botapi.sent_to("@news"), "the first sync and push")
        botapi.user_message(USER, "/start")
        wait_for(lambda: botapi.sent_to(USER), "the answer to /start")
        menu = botapi.sent_to(USER)[0]
        data = menu.reply_markup["inline_keyboard"][0][0]["callback_data"]  # type: ignore[index]
        botapi.callback_query(USER, menu.message_id, data)
        wait_for(lambda: botapi.callback_answers[-1].answered_at, "the tap answered")

    assert run_service(write_config(tmp_path, botapi), drive) == 0
    menu = botapi.sent_to(USER)[0]
    assert "Tap a topic below" in menu.visible_text
    assert botapi.callback_answers[-1].text == "Following Robotics"
    store = open_store(f"sqlite:///{tmp_path}/state/publisher.db")
    try:
        assert followers.topics_of(store.db, str(USER)) == ("robotics",)
    finally:
        store.close()


def test_a_webhook_needs_the_listener(botapi: BotApiStandin, tmp_path: Path) -> None:
    config = write_config(tmp_path, botapi, webhook_url="https://bot.example.org/hook",
                          webhook_secret=SECRET)
    with pytest.raises(ConfigError, match=r"needs server\.listen"):
        load_config(config)


@pytest.fixture
def webhook_api() -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, per_chat_interval=FAST_PER_CHAT_INTERVAL,
                       webhook_http_ok=True) as api:
        yield api


def test_the_webhook_refuses_a_wrong_secret_and_handles_the_right_one(
        webhook_api: BotApiStandin, tmp_path: Path, articles: None,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram/hook"
    config = write_config(tmp_path, webhook_api, listen=f"127.0.0.1:{port}",
                          webhook_url=hook, webhook_secret=SECRET)
    forged = {"update_id": 1, "message": {"message_id": 1, "date": 0, "text": "/subscribe "
              "robotics", "chat": {"id": 666, "type": "private"}}}
    answers: dict[str, int] = {}

    def drive() -> None:
        wait_for(lambda: any(r.method == "setWebhook" for r in webhook_api.requests),
                 "setWebhook")
        for name, headers in [("missing", {}), ("wrong", {
                "X-Telegram-Bot-Api-Secret-Token": "not-the-secret"})]:
            answers[name] = httpx.post(hook, json=forged, headers=headers).status_code
        answers["get"] = httpx.get(hook).status_code
        webhook_api.user_message(USER, "/subscribe robotics")
        wait_for(lambda: webhook_api.sent_to(USER), "the answer through the webhook")

    caplog.set_level(logging.INFO, logger="publisher")
    assert run_service(config, drive) == 0
    assert answers == {"missing": 401, "wrong": 403, "get": 404}
    assert webhook_api.sent_to(USER)[0].visible_text.startswith("You follow Robotics now")
    assert [d.error for d in webhook_api.webhook_deliveries] == [None]
    store = open_store(f"sqlite:///{tmp_path}/state/publisher.db")
    try:
        assert not followers.is_follower(store.db, "666")  # the forged update: never stored
        assert followers.topics_of(store.db, str(USER)) == ("robotics",)
    finally:
        store.close()
    assert SECRET not in caplog.text
    assert all(SECRET not in str(vars(record)) for record in caplog.records)


def test_kill_9_after_the_commit_before_the_reply_repeats_nothing(
        tmp_path: Path, articles: None,
        start: Callable[..., Publisher]) -> None:  # noqa: F811 - the fixture
    with StandinProcess(DEFAULT_TOKEN, record_path=tmp_path / "sent.jsonl",
                        extra_args=["--per-chat-interval", "0.03", "--slow-seconds", "10"]
                        ) as standin:
        write_config(tmp_path, standin)

        def control(action: str, payload: dict[str, Any] | None = None) -> Any:
            answer = standin.control(action, payload)
            return answer["result"] if isinstance(answer, dict) and "result" in answer \
                else answer

        def replies() -> list[str]:
            return [m["visible_text"] for m in standin.messages() if m["chat_id"] == USER]

        publisher = start()
        wait_for(lambda: control("poll_count"), "the first getUpdates")
        # The reply is recorded, then held: the kill lands after the commit, before the
        # next getUpdates could confirm the update to Telegram.
        control("inject", {"fault": "slow_after_record", "method": "sendMessage"})
        control("user_message", {"user_id": USER, "text": "/subscribe robotics"})
        wait_for(replies, "the reply, held back")
        publisher.kill()
        assert len(control("pending_updates")) == 1  # Telegram would send it again
        publisher = start()
        wait_for(lambda: not control("pending_updates"), "the update confirmed")
        control("user_message", {"user_id": USER, "text": "/help"})
        wait_for(lambda: len(replies()) == 2, "the answer to /help")
        assert publisher.stop() == 0
        said = replies()
    assert said[0].startswith("You follow Robotics now") and said[1].startswith("/topics")
    store = open_store(f"sqlite:///{tmp_path}/state/publisher.db")
    try:
        assert followers.topics_of(store.db, str(USER)) == ("robotics",)
    finally:
        store.close()


# -- several instances on PostgreSQL ----------------------------------------------------------


def test_two_instances_on_postgresql_poll_once_and_one_takes_over(
        postgres_url: str, botapi: BotApiStandin, articles_dir: Path, articles: None,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(updates, "LEADER_RETRY_SECONDS", 0.2)
    caplog.set_level(logging.WARNING, logger="publisher")
    stores = [open_store(postgres_url), open_store(postgres_url)]
    Catalog(stores[0].db).sync(articles_dir, 1 << 20, 0)

    async def scenario() -> list[bool]:
        senders = [TelegramSender(DEFAULT_TOKEN, botapi.base_url, 5.0) for _ in stores]
        leaders = [updates.PollLeader(postgres_url) for _ in stores]
        stops = [asyncio.Event() for _ in stores]
        tasks = []
        for store, sender, leader, stop in zip(stores, senders, leaders, stops, strict=True):
            bot = FollowerBot(TopicIndex(Catalog(store.db)), BotSettings(command_interval=0))
            poller = updates.Poller(store.db, sender, bot, leader, timeout=1, stop=stop)
            tasks.append(asyncio.create_task(poller.run()))
            await asyncio.sleep(0.3)  # the first takes the lead before the second tries
        for index in range(3):
            await asyncio.to_thread(botapi.user_message, USER + index, "/subscribe robotics")
        await _until(lambda: len(botapi.messages) >= 3)
        held = [leader.held for leader in leaders]
        stops[0].set()  # the leader goes away: its session (and lock) with it
        await asyncio.wait_for(tasks[0], 5)
        await asyncio.to_thread(botapi.user_message, USER + 9, "/subscribe robotics")
        await _until(lambda: len(botapi.messages) >= 4)
        stops[1].set()
        await asyncio.wait_for(tasks[1], 5)
        for sender in senders:
            await sender.close()
        return held

    try:
        assert asyncio.run(scenario()) == [True, False]
        db = stores[0].db
        assert followers.counts_by_topic(db) == {"robotics": 4}
        assert len(botapi.messages) == 4  # each update handled once
    finally:
        for store in stores:
            store.close()
    assert "followers_poll_conflict" not in caplog.text  # never two getUpdates at a time


async def _until(condition: Callable[[], Any], seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_publisher_run_subscribes_a_follower_and_sends_the_next_article(
        botapi: BotApiStandin, tmp_path: Path, articles: None,
        write_article: ArticleWriter) -> None:
    """The whole loop as a follower lives it, inside one ``publisher run``: /subscribe by
    long polling, then a new file in the watched folder reaches the channel and, once, the
    follower's chat; the article that was there before never does."""
    config = write_config(tmp_path, botapi, max_age_hours=0)  # the sample dates are old
    text = config.read_text(encoding="utf-8").replace(
        "watch = false", "watch = true\ndebounce_seconds = 0.2")
    config.write_text(text, encoding="utf-8")

    def dms() -> list[str]:
        return [m.visible_text for m in botapi.sent_to(USER) if m.method == "sendPhoto"]

    def drive() -> None:
        botapi.wait_for_poll(20.0)
        wait_for(lambda: botapi.sent_to("@news"), "the first article in the channel")
        botapi.user_message(USER, "/subscribe robotics")
        wait_for(lambda: botapi.sent_to(USER), "the answer to /subscribe")
        write_article("b.md", 2, title="Robots learn to fold laundry", topics=["Robotics"])
        wait_for(dms, "the new article in the follower's chat", timeout=30)

    assert run_service(config, drive) == 0
    assert len(dms()) == 1 and "Robots learn to fold laundry" in dms()[0]
    channel = [m.visible_text for m in botapi.sent_to("@news")]
    assert len(channel) == 2 and "Robots learn to fold laundry" in channel[1]
    store = open_store(f"sqlite:///{tmp_path}/state/publisher.db")
    try:
        rows = store.db.execute("SELECT state FROM deliveries WHERE chat_id = ?",
                                (str(USER),)).fetchall()
        assert [row[0] for row in rows] == ["sent"]
    finally:
        store.close()
