"""The followers' bot end to end: updates injected into the Bot API stand-in, fetched with
getUpdates by the real TelegramSender, handled against a real SQLite state and catalog, the
replies checked as the stand-in recorded them.

Subscribing by command, by keyboard toggle (the callback answered within a second, the
keyboard edited) and by deep link; /unsubscribe, /latest, /stop; a group answered once;
the rate limit; long input; the offset across a crash; the poll loop's 409 and stop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import followers, updates
from publisher.bot import BotSettings, FollowerBot, Topic, TopicIndex
from publisher.catalog import Catalog
from publisher.delivery import TelegramSender
from publisher.state import SQLStore, open_store

USER = 4242
OTHER = 777
LONG_TOPIC = "Very Long Topic Name " * 4  # its slug is longer than callback data may be


@dataclass
class World:
    api: BotApiStandin
    store: SQLStore
    bot: FollowerBot

    @property
    def db(self) -> Any:
        return self.store.db

    def pump(self) -> list[dict[str, Any]]:
        """One getUpdates from the stored offset (no wait), every update handled and its
        replies sent, as the poller does."""
        return asyncio.run(self._pump())

    async def _pump(self) -> list[dict[str, Any]]:
        sender = TelegramSender(DEFAULT_TOKEN, self.api.base_url, 5.0)
        try:
            got = await sender.get_updates(followers.read_offset(self.db), 0)
            for update in got:
                await updates.send_effects(sender, updates.handle_polled(self.db, self.bot,
                                                                         update))
            return got
        finally:
            await sender.close()

    def said(self, chat: int = USER) -> list[str]:
        return [record.visible_text for record in self.api.sent_to(chat)]

    def keyboard(self, chat: int = USER) -> list[tuple[str, str]]:
        """The (text, data) buttons of the newest message with a keyboard in ``chat``,
        edits included."""
        markup = next(record.reply_markup for record in reversed(self.api.sent_to(chat))
                      if record.reply_markup)
        return [(button["text"], button["callback_data"])
                for row in markup["inline_keyboard"] for button in row]


@pytest.fixture
def world(botapi: BotApiStandin, tmp_path: Path, articles_dir: Path,
          write_article: ArticleWriter) -> Iterator[World]:
    write_article("a.md", 1, topics=["Robotics"], title="Robots <b>rise</b>")
    write_article("b.md", 2, topics=["Space Exploration", "Robotics"])
    write_article("c.md", 3, topics=[LONG_TOPIC])
    write_article("d.md", 4, topics=["Robotics"], webUrl="https://news.example.com/x?a=1&b=2")
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    catalog = Catalog(store.db)
    catalog.sync(articles_dir, 1 << 20, 0)
    settings = BotSettings(bot_username=botapi.bot_username, command_interval=0.0,
                           latest_interval=0.0)
    try:
        yield World(botapi, store, FollowerBot(TopicIndex(catalog), settings))
    finally:
        store.close()


def test_start_shows_the_welcome_and_the_topic_keyboard(world: World) -> None:
    world.api.user_message(USER, "/start")
    world.pump()
    assert "Tap a topic below" in world.said()[-1]
    buttons = world.keyboard()
    assert [text for text, _ in buttons] == ["Robotics", "Space Exploration",
                                             "Very Long Topic Name Very Long Topic Na…"]
    assert all(len(data.encode()) <= 64 for _, data in buttons)
    assert not followers.is_follower(world.db, str(USER))  # nothing stored for a look


def test_subscribe_by_command_in_any_case_and_by_slug(world: World) -> None:
    world.api.user_message(USER, "/subscribe ROBOTICS")
    world.api.user_message(USER, "/subscribe@publisher_test_bot space-exploration")
    world.pump()
    assert followers.topics_of(world.db, str(USER)) == ("robotics", "space-exploration")
    assert world.said()[-2:] == [
        "You follow Robotics now: its new articles come here.",
        "You follow Space Exploration now: its new articles come here."]


def test_a_command_for_another_bot_is_not_taken(world: World) -> None:
    world.api.user_message(USER, "/subscribe@other_bot robotics")
    world.pump()
    assert followers.topics_of(world.db, str(USER)) == ()


def test_toggle_follows_answers_at_once_and_edits_the_keyboard(world: World) -> None:
    world.api.user_message(USER, "/topics")
    world.pump()
    menu = world.api.sent_to(USER)[-1]
    long_data = dict(world.keyboard())["Very Long Topic Name Very Long Topic Na…"]
    world.api.callback_query(USER, menu.message_id, long_data)
    world.pump()
    answer = world.api.callback_answers[-1]
    assert answer.answered_at is not None and answer.answered_at - answer.asked_at < 1.0
    assert answer.text.startswith("Following Very Long Topic Name")
    assert ("✓ Very Long Topic Name Very Long Topic Na…", long_data) in world.keyboard()
    long_slug = world.bot.topics.by_token(long_data)
    assert long_slug is not None and len(long_slug.slug) > 64
    assert followers.topics_of(world.db, str(USER)) == (long_slug.slug,)

    world.api.callback_query(USER, menu.message_id, long_data)  # a second tap: stop
    world.pump()
    assert world.api.callback_answers[-1].text.startswith("Stopped")
    assert ("Very Long Topic Name Very Long Topic Na…", long_data) in world.keyboard()
    assert followers.topics_of(world.db, str(USER)) == ()


def test_callback_data_that_is_not_ours_changes_nothing(world: World) -> None:
    bot, db = world.bot, world.db
    hostile = [{"update_id": 1, "callback_query": {
        "id": "q1", "data": data, "from": {"id": USER},
        "message": {"message_id": 5, "chat": {"id": USER, "type": "private"}}}}
        for data in ["t:" + "0" * 16, "robotics", "t:zz", None, "t:" + "a" * 200]]
    for update in hostile:
        with db.transaction():
            effects = bot.handle(db, update, now=1.0)
        assert effects[0] == updates.AnswerCallback("q1", effects[0].text)  # type: ignore[union-attr]
    assert followers.follower_count(db) == 0
    assert bot.handle(db, {"update_id": 2, "callback_query": {"id": 5}}) == []


def test_deep_link_subscribes_directly(world: World) -> None:
    world.api.user_message(USER, "/start space-exploration")
    world.pump()
    assert followers.topics_of(world.db, str(USER)) == ("space-exploration",)
    assert world.said()[-1].startswith("You follow Space Exploration now.")
    assert ("✓ Space Exploration", Topic("space-exploration", "").token) in world.keyboard()


def test_unsubscribe_one_and_all_and_latest(world: World) -> None:
    with world.db.transaction():
        followers.subscribe(world.db, str(USER), "robotics", 1.0)
        followers.subscribe(world.db, str(USER), "space-exploration", 1.0)
    world.api.user_message(USER, "/unsubscribe robotics")
    world.api.user_message(USER, "/unsubscribe robotics")
    world.api.user_message(USER, "/unsubscribe all")
    world.api.user_message(USER, "/latest robotics")
    world.pump()
    said = world.said()
    assert said[:3] == ["You no longer follow Robotics.",
                        "You do not follow that. /topics shows what you follow.",
                        "You follow no topic now (you followed 1)."]
    latest = world.api.sent_to(USER)[-1]
    assert latest.visible_text.splitlines() == [
        "The newest in Robotics:", "• Article number 4", "• Article number 2",
        "• Robots <b>rise</b>"]  # the title escaped, never rendered as HTML
    links = [entity["url"] for entity in latest.entities if entity["type"] == "text_link"]
    assert links == ["https://news.example.com/x?a=1&b=2", "https://news.example.com/articles/2",
                     "https://news.example.com/articles/1"]


def test_stop_forgets_every_row(world: World) -> None:
    with world.db.transaction():
        followers.subscribe(world.db, str(USER), "robotics", 1.0)
    world.api.user_message(USER, "/stop")
    world.pump()
    assert not followers.is_follower(world.db, str(USER))
    assert followers.topics_of(world.db, str(USER)) == ()
    assert world.said()[-1].startswith("Done: I forgot you")


def test_a_group_is_answered_once_then_left_in_silence(world: World) -> None:
    for text in ["/start", "/subscribe robotics", "/help"]:
        world.api.group_message(-555, USER, text)
    world.pump()
    assert world.said(-555) == [
        "Thank you! I take subscriptions in a private chat: t.me/publisher_test_bot"]
    assert followers.follower_count(world.db) == 0
    assert world.db.execute("SELECT chat_id FROM follower_groups").fetchall() == [("-555",)]


def test_commands_faster_than_the_limit_are_dropped(world: World) -> None:
    world.bot = FollowerBot(world.bot.topics, replace(world.bot.settings, command_interval=60.0,
                                                      latest_interval=120.0))
    world.api.user_message(USER, "/subscribe robotics")
    for _ in range(5):
        world.api.user_message(USER, "/help")
    world.pump()
    assert len(world.said()) == 1  # the first answered, the burst dropped
    limits = world.bot.limits
    with world.db.transaction():  # a minute later: one more, but /latest has its own limit
        assert limits.allow(world.db, str(USER), time.time() + 61)
        assert limits.allow(world.db, str(USER), time.time() + 61, latest=True)
        assert not limits.allow(world.db, str(USER), time.time() + 62, latest=True)


def test_long_input_is_not_parsed(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="publisher")
    secret_words = "/subscribe robotics " + "x" * 300
    world.api.user_message(USER, secret_words)
    world.api.user_message(USER, "hello there, bot")
    world.pump()
    assert followers.topics_of(world.db, str(USER)) == ()
    assert world.said() == ["I did not understand that. /topics to choose topics, /help for "
                            "the rest."] * 2
    logged = " ".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "xxxx" not in logged and "hello there" not in logged and "robotics" not in logged
    assert "'length': 320" in logged


def test_max_subscribers_refuses_politely(world: World) -> None:
    world.bot = FollowerBot(world.bot.topics, replace(world.bot.settings, max_subscribers=1))
    world.api.user_message(OTHER, "/subscribe robotics")
    world.api.user_message(USER, "/subscribe robotics")
    world.pump()
    assert world.said()[-1] == "Sorry, I cannot take more followers at the moment."
    assert followers.follower_count(world.db) == 1


def test_blocking_the_bot_forgets_the_follower(world: World) -> None:
    with world.db.transaction():
        followers.subscribe(world.db, str(USER), "robotics", 1.0)
    world.api.block_bot(USER)
    world.pump()
    assert not followers.is_follower(world.db, str(USER))


# -- offsets: a crash before the commit handles again, after it does not --------------------


def test_a_crash_before_the_commit_handles_the_update_again_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.api.user_message(USER, "/subscribe robotics")

    def crash(db: Any, update_id: int) -> None:
        raise KeyboardInterrupt("killed before the commit")

    with monkeypatch.context() as patch:
        patch.setattr(followers, "commit_offset", crash)
        with pytest.raises(KeyboardInterrupt):
            world.pump()
    assert followers.topics_of(world.db, str(USER)) == ()  # rolled back with the offset
    assert world.said() == []
    world.pump()  # the restart: the same update again
    assert followers.topics_of(world.db, str(USER)) == ("robotics",)
    assert len(world.said()) == 1
    assert world.pump() == []


def test_a_crash_after_the_commit_repeats_nothing(world: World, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    world.api.user_message(USER, "/subscribe robotics")
    world.api.user_message(USER, "/unsubscribe robotics")

    async def lost(*args: Any) -> None:
        raise KeyboardInterrupt("killed after the commit, before the reply")

    with monkeypatch.context() as patch:
        patch.setattr(updates, "send_effects", lost)
        with pytest.raises(KeyboardInterrupt):
            world.pump()
    assert followers.topics_of(world.db, str(USER)) == ("robotics",)
    world.store.close()
    world.store = open_store(f"sqlite:///{tmp_path}/state.db")  # a new process
    world.bot = FollowerBot(TopicIndex(Catalog(world.db)), world.bot.settings)
    world.pump()  # the next update only: the first is not handled again
    assert followers.topics_of(world.db, str(USER)) == ()
    assert world.said() == ["You no longer follow Robotics."]


def test_an_update_the_bot_fails_on_is_skipped_not_retried_for_ever(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.api.user_message(USER, "/subscribe robotics")
    world.api.user_message(OTHER, "/subscribe robotics")
    handle = world.bot.handle

    def fail_for_user(db: Any, update: Any, now: Any = None) -> Any:
        if update["message"]["chat"]["id"] == USER:
            followers.subscribe(db, str(USER), "robotics", 1.0)  # half done, then a bug
            raise ValueError("a bug")
        return handle(db, update, now)

    monkeypatch.setattr(world.bot, "handle", fail_for_user)
    world.pump()
    assert not followers.is_follower(world.db, str(USER))  # its effect rolled back
    assert followers.topics_of(world.db, str(OTHER)) == ("robotics",)
    assert world.pump() == []  # neither comes again


# -- the poll loop ----------------------------------------------------------------------------


def test_the_poller_deletes_the_webhook_polls_and_stops_at_once(world: World) -> None:
    async def scenario() -> float:
        sender = TelegramSender(DEFAULT_TOKEN, world.api.base_url, 5.0)
        stop = asyncio.Event()
        poller = updates.Poller(world.db, sender, world.bot, updates.PollLeader("sqlite://"),
                                timeout=30, stop=stop)
        task = asyncio.create_task(poller.run())
        await asyncio.to_thread(world.api.user_message, USER, "/subscribe robotics")
        for _ in range(100):
            if world.said():
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(world.api.wait_for_poll, 5.0, after=1)
        started = time.monotonic()
        stop.set()  # mid long poll
        await asyncio.wait_for(task, 5)
        await sender.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0
    assert followers.topics_of(world.db, str(USER)) == ("robotics",)
    methods = [request.method for request in world.api.requests]
    assert methods.index("deleteWebhook") < methods.index("getUpdates")


def test_a_second_poller_conflicts_backs_off_and_logs_once(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="publisher")

    async def scenario() -> None:
        sender = TelegramSender(DEFAULT_TOKEN, world.api.base_url, 5.0)
        other = TelegramSender(DEFAULT_TOKEN, world.api.base_url, 5.0)
        stop = asyncio.Event()
        poller = updates.Poller(world.db, sender, world.bot, updates.PollLeader("sqlite://"),
                                timeout=2, stop=stop)
        task = asyncio.create_task(poller.run())
        await asyncio.to_thread(world.api.wait_for_poll, 5.0)
        for _ in range(3):  # another process polling with the same token ends our poll
            await other.get_updates(0, 0)
            await asyncio.sleep(0.1)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
        await sender.close()
        await other.close()

    asyncio.run(scenario())
    assert caplog.text.count("followers_poll_conflict") == 1


def test_network_errors_back_off_and_never_end_the_loop(world: World) -> None:
    async def scenario() -> None:
        sender = TelegramSender(DEFAULT_TOKEN, "http://127.0.0.1:9/bot", 1.0)
        stop = asyncio.Event()
        poller = updates.Poller(world.db, sender, world.bot, updates.PollLeader("sqlite://"),
                                timeout=1, stop=stop)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.5)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
        await sender.close()

    asyncio.run(scenario())


# -- the webhook inbox -------------------------------------------------------------------------


def test_the_inbox_handles_each_update_once(world: World) -> None:
    update = {"update_id": 9, "message": {"message_id": 1, "date": 0, "text": "/subscribe robotics",
                                          "chat": {"id": USER, "type": "private"}}}
    with world.db.transaction():
        assert updates.store_update(world.db, update, time.time())
        assert not updates.store_update(world.db, update, time.time())  # delivered twice
    effects = updates.handle_inbox(world.db, world.bot)
    assert len(effects) == 1 and followers.topics_of(world.db, str(USER)) == ("robotics",)
    with world.db.transaction():
        assert not updates.store_update(world.db, update, time.time())  # and again, later
    assert updates.handle_inbox(world.db, world.bot) == []
    stored = world.db.execute("SELECT body FROM follower_updates").fetchall()
    assert stored == [(None,)]  # what the follower typed is not kept once handled
    assert json.dumps(update)  # (a JSON object as Telegram sends it)


def test_the_welcome_template_is_escaped_and_checked(world: World, tmp_path: Path,
                                                    config_file: Any) -> None:
    world.bot = FollowerBot(world.bot.topics, replace(
        world.bot.settings, welcome="<b>Hi</b> from @{{ bot_username }}: "
        "{{ topics | join(', ') }}"))
    with world.db.transaction():
        effects = world.bot.handle(world.db, {"update_id": 1, "message": {
            "message_id": 1, "chat": {"id": USER, "type": "private"}, "text": "/start"}})
    assert effects[0].html.startswith(  # type: ignore[union-attr]
        "<b>Hi</b> from @publisher_test_bot: Robotics, Space Exploration, Very Long")
    from publisher.config import load_config
    from publisher.errors import ConfigError

    bad = config_file('[followers]\nwelcome = "{{ chat_id }}"\n')
    with pytest.raises(ConfigError, match=r"followers\.welcome: line 1: undefined"):
        load_config(bad)
