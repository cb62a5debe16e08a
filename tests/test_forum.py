"""Forum topics as destinations: "@group/42" and "-100123/42", keyed with the thread, posted
with message_thread_id, paced as their chat; per-destination max_age_hours and max_per_run.

Against the strict stand-in Bot API (which knows forum supergroups and their topics), on
SQLite and PostgreSQL (``state_url``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import ArticleWriter
from standin.server import (
    DEFAULT_TOKEN,
    THREAD_NOT_FOUND,
    BotApiStandin,
    Recorded,
    StandinProcess,
)
from telegram import Bot
from telegram.error import BadRequest
from test_destinations import cli_run, counts, id_of, make_v5_state, status_json
from test_push import CHAT, ConfigMaker, ledger, make_config, push, state_url, token

from publisher.config import load_config
from publisher.errors import ConfigError
from publisher.forum import chat_of, split_key, thread_of, with_thread
from publisher.state import NewDelivery, open_store

FIXTURES = (make_config, state_url, token)  # test_push's, on both engines
FORUM = "@forum"
FORUM_ID = -1001000000050
NEWS_ID = -1001000000000
T = TypeVar("T")


def routes(**by_topic: str | list[str]) -> str:
    lines = "".join(f"{topic} = {_toml(chats)}\n" for topic, chats in by_topic.items())
    return "[telegram.routes]\n" + lines


def _toml(value: str | list[str]) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return "[" + ", ".join(f'"{item}"' for item in value) + "]"


def in_topic(api: BotApiStandin, thread: int | None, chat: int | str = FORUM) -> list[str]:
    """The titles posted to one topic of a chat (None: outside any topic)."""
    return [record.visible_text.split("\n")[0] for record in api.sent_to(chat)
            if record.message_thread_id == thread]


def with_bot(api: BotApiStandin, call: Callable[[Bot], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Bot(DEFAULT_TOKEN, base_url=api.base_url) as bot:
            return await call(bot)

    return asyncio.run(run())


# -- the destination syntax --------------------------------------------------------------------


def test_a_destination_splits_into_its_chat_and_its_thread() -> None:
    assert split_key("-1001234567890/42") == ("-1001234567890", 42)
    assert split_key("@group/42") == ("@group", 42)
    assert split_key("@channel") == ("@channel", None)
    assert split_key("-100123") == ("-100123", None)
    assert chat_of("-100123/7") == "-100123" and thread_of("-100123/7") == 7
    assert with_thread("-100123", 7) == "-100123/7" and with_thread("-100123", None) == "-100123"


@pytest.mark.parametrize("bad", ["-100123/0", "-100123/abc", "@group/", "@group/-5",
                                 "@group/1/2", "/42", "@group/4.2", "@group/99999999999999999999"])
@pytest.mark.parametrize("where", ["chat_id", "routes", "chats"])
def test_a_thread_id_that_is_not_a_positive_integer_is_a_config_error_naming_the_key(
    tmp_path: Path, bad: str, where: str
) -> None:
    text = {
        "chat_id": f'[telegram]\nchat_id = "{bad}"\n',
        "routes": f'[telegram]\nchat_id = "@news"\n[telegram.routes]\nRobotics = ["@a", "{bad}"]\n',
        "chats": f'[telegram]\nchat_id = "{bad}"\n[telegram.chats."{bad}"]\nsilent = true\n',
    }[where]
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    key = {"chat_id": "telegram.chat_id", "routes": "telegram.routes.Robotics",
           "chats": "telegram.chat_id"}[where]
    assert str(caught.value).startswith(f"config key {key}: {bad!r}"), caught.value


def test_a_bad_thread_in_the_environment_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"telegram\.chat_id: '@group/x'"):
        load_config(None, environ={"PUBLISHER_TELEGRAM_CHAT_ID": "@group/x"})


def test_forum_topics_are_accepted_wherever_a_chat_is(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[telegram]\nchat_id = "-1001234567890/42"\n'
        '[telegram.routes]\nRobotics = ["@group/7", "@channel"]\n'
        '[telegram.chats."@group/7"]\nmax_per_run = 2\n', encoding="utf-8")
    config = load_config(path, environ={})
    assert config.destinations == ("-1001234567890/42", "@group/7", "@channel")
    assert config.settings_for("@group/7").max_per_run == 2
    assert config.settings_for("-1001234567890/42").max_per_run == 10


# -- the stand-in knows forums --------------------------------------------------------------


def test_the_standin_checks_message_thread_id_and_records_it(botapi: BotApiStandin) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[5])
    botapi.add_chat(CHAT, NEWS_ID)
    chat = with_bot(botapi, lambda bot: bot.get_chat(FORUM))
    assert (chat.id, chat.type, chat.is_forum) == (FORUM_ID, "supergroup", True)
    assert not with_bot(botapi, lambda bot: bot.get_chat(CHAT)).is_forum
    sent = with_bot(botapi, lambda bot: bot.send_message(
        FORUM, "hello", message_thread_id=5, disable_notification=True))
    assert sent.message_thread_id == 5 and sent.is_topic_message
    for chat_id, thread in ((FORUM, 6), (CHAT, 5)):  # no such topic; not a forum
        with pytest.raises(BadRequest, match=r"(?i)message thread not found"):
            with_bot(botapi, lambda bot, c=chat_id, t=thread: bot.send_message(  # type: ignore[misc]
                c, "hello", message_thread_id=t))
    general = with_bot(botapi, lambda bot: bot.send_message(FORUM, "to the general topic"))
    assert general.message_thread_id is None
    records: list[Recorded] = botapi.sent_to(FORUM)
    assert [(r.message_thread_id, r.disable_notification) for r in records] == [
        (5, True), (None, False)]
    assert THREAD_NOT_FOUND.endswith("message thread not found")


def test_the_standin_creates_forum_topics_for_an_administrator(botapi: BotApiStandin) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID)
    with pytest.raises(BadRequest, match=r"(?i)not enough rights"):
        with_bot(botapi, lambda bot: bot.create_forum_topic(FORUM, "Robotics"))
    botapi.set_member(FORUM, "administrator", can_manage_topics=True)
    topic = with_bot(botapi, lambda bot: bot.create_forum_topic(FORUM, "Robotics"))
    assert topic.name == "Robotics" and topic.message_thread_id > 0
    sent = with_bot(botapi, lambda bot: bot.send_photo(
        FORUM, "https://img.example.com/1.jpg", message_thread_id=topic.message_thread_id))
    assert sent.message_thread_id == topic.message_thread_id
    with pytest.raises(BadRequest, match=r"(?i)not a forum"):
        with_bot(botapi, lambda bot: bot.create_forum_topic(CHAT, "Robotics"))


def test_the_standin_process_takes_forums_by_control_and_records_threads(
    botapi_process: StandinProcess,
) -> None:
    assert botapi_process.control("add_forum", {"chat": FORUM, "chat_id": FORUM_ID,
                                                "topics": [3]}) == {"ok": True}

    async def send(bot: Bot) -> None:
        await bot.send_message(FORUM, "in topic 3", message_thread_id=3)
        with pytest.raises(BadRequest, match=r"(?i)message thread not found"):
            await bot.send_message(FORUM, "nowhere", message_thread_id=4)

    async def run() -> None:
        async with Bot(DEFAULT_TOKEN, base_url=botapi_process.base_url) as bot:
            await send(bot)

    asyncio.run(run())
    (record,) = botapi_process.messages()
    assert (record["chat"]["id"], record["message_thread_id"]) == (FORUM_ID, 3)
    assert record["disable_notification"] is False


# -- posting to topics ------------------------------------------------------------------------


def test_two_topics_of_one_group_are_two_destinations_and_two_posts(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10, 20])
    write_article("1.txt", 1, topics=["AI", "Robotics"])
    write_article("2.txt", 2, topics=["Robotics"])
    config = make_config(extra=routes(AI=f"{FORUM}/10", Robotics=[f"{FORUM}/20", f"{FORUM}/10"]))
    outcome = push(config)
    assert outcome.report.ok and outcome.report.total("sent") == 6
    assert in_topic(botapi, 10) == ["Article number 1", "Article number 2"]
    assert in_topic(botapi, 20) == ["Article number 1", "Article number 2"]
    assert in_topic(botapi, None) == []  # nothing outside the topics
    assert counts(config) == {str(NEWS_ID): {"sent": 2}, f"{FORUM_ID}/10": {"sent": 2},
                              f"{FORUM_ID}/20": {"sent": 2}}
    assert ledger(config) == {CHAT: {"sent": 2}, f"{FORUM}/10": {"sent": 2},
                              f"{FORUM}/20": {"sent": 2}}
    assert push(config).report.total("sent") == 0
    # The topic named by the group's id instead of its username is the same destination.
    by_id = make_config(extra=routes(AI=f"{FORUM_ID}/10", Robotics=[f"{FORUM_ID}/20"]))
    write_article("3.txt", 3, topics=["AI"])
    assert push(by_id).report.total("sent") == 2  # article 3: the main chat and topic 10
    assert in_topic(botapi, 10)[-1] == "Article number 3" and len(botapi.messages) == 8
    assert counts(by_id)[f"{FORUM_ID}/10"] == {"sent": 3}


def test_text_messages_and_the_photo_fallback_go_to_the_topic_too(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1, images=[])
    write_article("2.txt", 2)
    botapi.refuse_photo("https://img.example.com/2.jpg")
    outcome = push(make_config(chat_id=f"{FORUM}/10"))
    assert outcome.report.ok and outcome.report.total("sent") == 2
    records = botapi.sent_to(FORUM)
    assert [(r.method, r.message_thread_id) for r in records] == [
        ("sendMessage", 10), ("sendMessage", 10)]
    refused = [entry for entry in botapi.requests if entry.method == "sendPhoto"]
    assert [int(entry.params["message_thread_id"]) for entry in refused] == [10]


def test_the_topics_of_a_group_share_its_pacing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10, 20, 30])
    for index in range(1, 5):
        write_article(f"{index}.txt", index)
    # Paced per topic, three loops would post to the group three times as fast as it
    # allows: the stand-in answers 429 to anything closer than its 20 ms per chat.
    config = make_config(chat_id=f"{FORUM}/10",
                         extra=routes(AI=[f"{FORUM}/20", f"{FORUM}/30"]))
    outcome = push(config)
    assert outcome.report.ok and outcome.report.total("sent") == 12
    assert outcome.report.total("rate_limited") == 0
    # Each send waits for its slot, so the 12 cannot span less than 11 intervals of 63 ms
    # (the first may leave late on a busy machine: hence the margin); paced per topic, the
    # three topics' 4 sends each would take about a third of that.
    times = sorted(record.at for record in botapi.sent_to(FORUM))
    assert times[-1] - times[0] > 0.5, times
    store = open_store(config.state.url)
    try:
        rows = list(store.db.execute("SELECT chat_id, at FROM send_log"))
    finally:
        store.close()
    paced = {chat for chat, _ in rows}
    slots = sorted(at for chat, at in rows if chat == str(FORUM_ID))
    assert len(slots) == 12
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 0.06 * 1.05 - 1e-6
    assert paced == {str(FORUM_ID), "*"}  # one chat's slots (and the bot-wide ones)


def test_a_topic_that_does_not_exist_stops_that_topic_only_and_nothing_goes_twice(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1)
    write_article("2.txt", 2)
    config = make_config(extra=routes(AI=[f"{FORUM}/10", f"{FORUM}/99"]))
    outcome = push(config)
    assert not outcome.report.ok
    error = outcome.report.errors[f"{FORUM}/99"]
    assert error == f"cannot post to {FORUM}/99: Message thread not found"
    assert in_topic(botapi, 10) == ["Article number 1", "Article number 2"]
    assert ledger(config)[f"{FORUM}/99"] == {"pending": 2}  # they wait, nothing is lost
    again = push(config)
    assert "thread not found" in again.report.errors[f"{FORUM}/99"]
    assert again.report.total("sent") == 0 and len(botapi.messages) == 4
    status = cli_run(config, "status")
    assert f"{FORUM}/99" in status.output and "thread not found" in status.output
    botapi.add_topic(FORUM, 99)  # an operator's fix (Telegram would give it another id)
    assert push(config).report.total("sent") == 2
    assert in_topic(botapi, 99) == ["Article number 1", "Article number 2"]
    assert len(botapi.messages) == 6
    assert push(config).report.total("sent") == 0


def test_a_closed_topic_stops_that_topic_until_it_is_reopened(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10, 20])
    botapi.close_topic(FORUM, 20)
    write_article("1.txt", 1)
    config = make_config(chat_id=f"{FORUM}/10", extra=routes(AI=f"{FORUM}/20"))
    outcome = push(config)
    assert outcome.report.errors == {f"{FORUM}/20": f"cannot post to {FORUM}/20: Topic_closed"}
    assert ledger(config) == {f"{FORUM}/10": {"sent": 1}, f"{FORUM}/20": {"pending": 1}}
    botapi.set_member(FORUM, "administrator", can_manage_topics=True)  # an admin may post
    assert push(config).report.total("sent") == 1
    assert in_topic(botapi, 20) == ["Article number 1"] and len(botapi.messages) == 2


def test_a_topic_of_a_chat_that_is_no_forum_is_refused_before_anything_is_sent(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_chat("@robots", -1001000000001)
    write_article("1.txt", 1)
    config = make_config(extra=routes(AI="@robots/3"))
    outcome = push(config)
    assert "not a forum" in outcome.report.errors["@robots/3"]
    assert [record.chat.get("id") for record in botapi.messages] == [NEWS_ID]
    assert not [entry for entry in botapi.requests if "message_thread_id" in entry.params]


def test_check_telegram_says_whether_a_topics_chat_is_a_forum(
    make_config: ConfigMaker, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    config = make_config(extra=routes(AI=[f"{FORUM}/10", f"{CHAT}/4"]))
    result = cli_run(config, "check", "--telegram")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[2] == (f'ok    {FORUM}/10: supergroup "forum" ({FORUM_ID}), forum topic 10: '
                        "the bot is a member and may send messages"), lines
    assert lines[3].startswith(f'FAIL  {CHAT}/4: channel "news" ({NEWS_ID}): the chat is a '
                               "channel, not a forum"), lines
    assert "1 problem" in result.stderr


def test_a_dry_run_and_status_name_the_topic(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1)
    topic = f"{FORUM_ID}/10"  # an id: a dry run asks Telegram nothing, a name is unresolved
    push(make_config())  # the main chat only: the topic is new in the next config
    config = make_config(extra=routes(AI=topic))  # (cli_run reads the file written last)
    dry = cli_run(config, "push", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"to {topic}" in dry.output and f"to {CHAT}" not in dry.output, dry.output
    push(config)
    status = cli_run(config, "status")
    assert topic in status.output, status.output
    assert in_topic(botapi, 10) == ["Article number 1"]
    forum = make_config(extra=routes(AI=f"{FORUM}/10"))  # by name: a public forum, linked
    write_article("2.txt", 2)
    assert push(forum).report.total("sent") == 2
    document = status_json(forum)
    listed = {item["destination"]: item for item in document["destinations"]}
    assert (listed[f"{FORUM}/10"]["topic"], listed[f"{FORUM}/10"]["link"]) == (
        10, "https://t.me/forum/10")
    assert (listed[CHAT]["topic"], listed[CHAT]["link"]) == (None, "https://t.me/news")


def test_ack_and_resend_name_a_topic_as_configured(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1)
    # A wide pacing gap: a request that reaches a busy stand-in late must not meet the next
    # one's 429, which would take one of the two injected faults.
    config = make_config(chat_id=FORUM, extra=routes(AI=f"{FORUM}/10"),
                         per_chat_interval_seconds=0.3)
    botapi.inject("drop_after_record", times=2)  # both sends may have gone out: uncertain
    assert push(config).report.total("uncertain") == 2
    acked = cli_run(config, "ack", "--chat", f"{FORUM}/10", id_of(1))
    assert acked.exit_code == 0, acked.output
    assert ledger(config) == {FORUM: {"uncertain": 1}, f"{FORUM}/10": {"sent": 1}}
    resent = cli_run(config, "resend", "--chat", f"{FORUM_ID}", id_of(1))
    assert resent.exit_code == 0, resent.output
    assert ledger(config) == {FORUM: {"pending": 1}, f"{FORUM}/10": {"sent": 1}}
    unknown = cli_run(config, "ack", "--chat", f"{FORUM}/11", id_of(1))
    assert unknown.exit_code == 2 and f"no post for the chat {FORUM}/11" in unknown.output


# -- per-destination settings ---------------------------------------------------------------


def test_max_per_run_and_max_age_hours_are_each_destinations_own(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10, 20])
    now = datetime.now(UTC)
    for index in range(1, 4):
        published = (now - timedelta(hours=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_article(f"{index}.txt", index, publishedDateTime=published)
    config = make_config(extra=routes(AI=[f"{FORUM}/10", f"{FORUM}/20"])
                         + f'[telegram.chats."{FORUM}/10"]\nmax_per_run = 1\n'
                         + f'[telegram.chats."{FORUM}/20"]\nmax_age_hours = 1.5\n')
    outcome = push(config)
    assert outcome.report.chats[f"{FORUM}/10"].held == (
        f'telegram.chats."{FORUM}/10".max_per_run (1) reached: the rest wait for the next push')
    assert len(in_topic(botapi, 10)) == 1
    assert in_topic(botapi, 20) == ["Article number 1"]  # the others are older than 1.5 h
    assert len(in_topic(botapi, None, CHAT)) == 3  # the defaults: no limits in these tests
    assert outcome.report.chats[f"{FORUM}/20"].skipped == 2
    store = open_store(config.state.url)
    try:
        reasons = {row[0] for row in store.db.execute(
            "SELECT reason FROM deliveries WHERE state = 'skipped'")}
    finally:
        store.close()
    assert reasons == {f'older than telegram.chats."{FORUM}/20".max_age_hours (1.5 h)'}
    assert push(config).report.total("sent") == 1  # topic 10's next one
    assert ledger(config)[f"{FORUM}/10"] == {"pending": 1, "sent": 2}


# -- the ledger --------------------------------------------------------------------------------


def test_an_old_ledger_upgrades_and_a_topic_is_a_destination_of_its_own(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    for index in (1, 2):
        write_article(f"{index}.txt", index)
    config = make_config(chat_id=FORUM, extra=routes(AI=f"{FORUM}/10"))
    # A ledger of an earlier version, keyed by the config's text: article 1 went to the group.
    make_v5_state(config.state.url, [(id_of(1), FORUM, "sent")])
    outcome = push(config)
    assert outcome.report.ok
    assert in_topic(botapi, None) == ["Article number 2"]  # the group: only the new one
    assert in_topic(botapi, 10) == ["Article number 1", "Article number 2"]
    assert counts(config) == {str(FORUM_ID): {"sent": 2}, f"{FORUM_ID}/10": {"sent": 2}}
    assert push(config).report.total("sent") == 0


def test_posts_planned_under_a_topics_name_are_rekeyed_when_it_resolves(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_chat(CHAT, NEWS_ID)
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1)
    config = make_config(extra=routes(AI=f"{FORUM}/10"))
    botapi.set_down()
    assert not push(config).report.ok
    assert set(counts(config)) == {CHAT, f"{FORUM}/10"}  # planned under the names
    botapi.set_down(False)
    assert push(config).report.total("sent") == 2
    assert counts(config) == {str(NEWS_ID): {"sent": 1}, f"{FORUM_ID}/10": {"sent": 1}}
    assert in_topic(botapi, 10) == ["Article number 1"]


def test_a_topic_kept_under_its_name_moves_when_its_chat_is_already_known(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum(FORUM, FORUM_ID, topics=[10])
    write_article("1.txt", 1)
    assert push(make_config(chat_id=FORUM)).report.total("sent") == 1  # @forum resolved
    config = make_config(chat_id=FORUM, extra=routes(AI=f"{FORUM}/10"))
    store = open_store(config.state.url)
    try:  # a pair planned under the topic's name (while its chat was not known)
        store.add_deliveries([NewDelivery(id_of(1), f"{FORUM}/10", "Article number 1",
                                          "https://news.example.com/articles/1",
                                          "2025-01-01T01:01:00+00:00")])
    finally:
        store.close()
    assert push(config).report.total("sent") == 1
    assert counts(config) == {str(FORUM_ID): {"sent": 1}, f"{FORUM_ID}/10": {"sent": 1}}
    assert in_topic(botapi, 10) == ["Article number 1"]


def test_a_chat_that_migrates_takes_its_topics_with_it(state_url: str, tmp_path: Path) -> None:
    url = state_url if state_url.startswith("postgresql") else f"sqlite:///{tmp_path}/s.db"
    store = open_store(url)
    try:
        store.add_deliveries([
            NewDelivery("a", chat, "A", "https://e.com/a", "2025-01-01T00:00:00+00:00")
            for chat in ("-123", "-123/7", "-1234/7")
        ])
        assert store.move_chat("-123", "-100456") == 2
        assert sorted(chat for _, chat in store.known_pairs()) == [
            "-100456", "-100456/7", "-1234/7"]
    finally:
        store.close()
