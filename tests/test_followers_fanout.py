"""Delivery to followers: each new article to the followers of its topics, once, through the
ledger, after the channel's posts, paced; 429s waited out, blocked followers forgotten, a
kill -9 doubling nothing; the plan, status and metrics show it. Followers are made directly
with ``publisher.followers`` (the bot's side is tested elsewhere), against the strict
stand-in and real SQLite and PostgreSQL states."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import fanout, followers, pipeline
from publisher.config import Config, load_config
from publisher.fanout import dm_counts
from publisher.metrics import Metrics
from publisher.session import Session
from publisher.state import open_store
from publisher.status import collect_status, render_text

CHANNEL = "@news"
ConfigMaker = Callable[..., Config]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite:///state/publisher.db"


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin,
                state_url: str) -> ConfigMaker:
    def make(followers_extra: str = "", per_second: float = 25) -> Config:
        (tmp_path / "state").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n'
            f'[telegram]\nchat_id = "{CHANNEL}"\napi_base_url = "{botapi.base_url}"\n'
            "max_age_hours = 0\nper_chat_interval_seconds = 0.06\ntimeout_seconds = 2\n"
            "max_wait_seconds = 5\n"
            f"[followers]\nenabled = true\nmax_age_hours = 0\nper_second = {per_second}\n"
            + followers_extra, encoding="utf-8")
        return load_config(path, environ={})

    return make


def subscribe(config: Config, chats: dict[int, list[str]], at: float | None = None) -> None:
    store = open_store(config.state.url)
    try:
        with store.db.transaction():
            for chat, slugs in chats.items():
                for slug in slugs:
                    followers.subscribe(store.db, str(chat), slug, time.time() if at is None
                                        else at)
    finally:
        store.close()


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def dms(api: BotApiStandin) -> Counter[int]:
    """How many messages each private chat got."""
    return Counter(int(record.chat_id) for record in api.messages
                   if str(record.chat_id).lstrip("-").isdigit() and int(record.chat_id) > 0)


def queue(config: Config) -> dict[str, int]:
    store = open_store(config.state.url)
    try:
        return dm_counts(store.db)
    finally:
        store.close()


def test_a_new_article_reaches_exactly_its_topics_followers_once_after_the_channel(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {101: ["robotics"], 102: ["robotics", "space"], 103: ["space"],
                       104: ["ai"]}, at=time.time() - 60)
    write_article("r.txt", 1, topics=["Robotics", "Space"])
    outcome = push(config)
    assert outcome.report.ok and outcome.dms is not None
    assert outcome.fanned_out == 3 and outcome.dms.sent == 3
    assert dms(botapi) == {101: 1, 102: 1, 103: 1}  # 102 follows both topics: one DM
    channel = [r for r in botapi.messages if r.chat_id == CHANNEL or int(r.chat_id) < 0]
    assert len(channel) == 1
    first_dm = min(r.at for r in botapi.messages if r not in channel)
    assert channel[0].at <= first_dm  # the channel's post went first
    dm = next(r for r in botapi.messages if r.chat_id == 101)
    assert "Article number 1" in (dm.caption or dm.text or "")
    again = push(config)
    assert again.dms is not None and again.dms.sent == 0 and again.fanned_out == 0
    assert sum(dms(botapi).values()) == 3
    assert queue(config) == {"sent": 3}


def test_a_follower_who_subscribed_after_the_selection_gets_nothing_of_it(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {201: ["ai"]}, at=time.time() - 60)
    write_article("1.txt", 1)
    push(config)
    subscribe(config, {202: ["ai"]})  # after article 1 was selected
    write_article("1.txt", 1, excerpt="Changed since.")  # planned again: still not for 202
    write_article("2.txt", 2)
    outcome = push(config)
    assert outcome.dms is not None and outcome.dms.sent == 2
    assert dms(botapi) == {201: 2, 202: 1}
    later = [r for r in botapi.messages if r.chat_id == 202]
    assert "Article number 2" in (later[0].caption or later[0].text or "")


def test_enabling_followers_on_an_old_corpus_sends_nothing_old(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)  # the article is planned (and posted) before anyone follows
    subscribe(config, {301: ["ai"]}, at=0.0)  # even a "since" long before
    text = (tmp_path / "config.toml").read_text(encoding="utf-8")
    (tmp_path / "config.toml").write_text(text.replace('chat_id = "@news"',
                                                       'chat_id = "@other"'), encoding="utf-8")
    replanned = push(load_config(tmp_path / "config.toml", environ={}))  # a routing change
    assert replanned.fanned_out == 0 and dms(botapi) == {}


def test_blocked_and_deactivated_followers_are_forgotten_not_retried(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    subscribe(config, {401: ["ai"], 402: ["ai"], 403: ["ai"]}, at=time.time() - 60)
    botapi.block_bot(401)
    botapi.deactivate_user(402)
    write_article("1.txt", 1)
    outcome = push(config)
    assert outcome.dms is not None and (outcome.dms.sent, outcome.dms.removed) == (1, 2)
    assert dms(botapi) == {403: 1}
    store = open_store(config.state.url)
    try:
        assert followers.follower_count(store.db) == 1
        assert followers.counts_by_topic(store.db) == {"ai": 1}
    finally:
        store.close()
    assert queue(config) == {"sent": 1}  # the removed followers' rows are gone
    assert "401" not in caplog.text and "402" not in caplog.text
    write_article("2.txt", 2)
    assert push(config).dms.sent == 1  # type: ignore[union-attr]


def test_a_429_pauses_the_fan_out_and_drops_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {chat: ["ai"] for chat in range(501, 509)}, at=time.time() - 60)
    write_article("1.txt", 1)
    botapi.inject("429", chat_id=504, retry_after=1)
    started = time.monotonic()
    outcome = push(config)
    assert outcome.dms is not None and outcome.dms.rate_limited == 1
    assert outcome.dms.sent == 8 and dms(botapi) == {chat: 1 for chat in range(501, 509)}
    assert time.monotonic() - started >= 1.0  # waited out
    refused = [r for r in botapi.requests if r.fault == "429"]
    after = [r for r in botapi.requests if r.method in ("sendPhoto", "sendMessage")
             and r.status == 200 and refused and r.at > refused[0].at]
    # Nothing went out during the pause (the other senders' DMs already on their way may
    # land at once).
    assert all(r.at >= refused[0].at + 0.9 for r in after[fanout.SENDERS - 1:])


def test_a_429_on_the_last_dm_is_waited_out_in_the_same_push(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {511: ["ai"], 512: ["ai"]}, at=time.time() - 60)
    write_article("1.txt", 1)
    botapi.inject("429", chat_id=512, retry_after=1)
    outcome = push(config)
    assert outcome.dms is not None and (outcome.dms.sent, outcome.dms.left) == (2, 0)
    assert dms(botapi) == {511: 1, 512: 1}


def test_dry_run_shows_the_fan_out_in_one_line(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
) -> None:
    config = make_config()
    subscribe(config, {chat: ["robotics"] for chat in range(1000, 1012)}, at=time.time() - 60)
    write_article("1.txt", 1, topics=["Robotics"])
    with Session.for_dry_run(config) as session:
        dry = session.dry_run()
    assert "DM a" not in " ".join(dry.edits)
    lines = [line for line in dry.edits if line.startswith("DM ")]
    assert len(lines) == 1 and lines[0].endswith("to 12 followers (topic Robotics)")
    assert botapi.messages == [] and queue(config) == {}


def test_status_and_metrics_show_followers_and_the_dm_queue(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {601: ["ai"], 602: ["ai", "space"]}, at=time.time() - 60)
    botapi.inject("403", chat_id=602)  # not a follower gone: failed, kept
    write_article("1.txt", 1)
    outcome = push(config)
    store = open_store(config.state.url)
    try:
        document = collect_status(store, config, None, time.time())
        metrics = Metrics()
        metrics.observe_followers(followers.counts_by_topic(store.db), dm_counts(store.db),
                                  outcome.dms)
    finally:
        store.close()
    assert document["followers"] == {"total": 2, "by_topic": {"ai": 2, "space": 1},
                                     "dms": {"failed": 1, "sent": 1}}
    text = render_text(document)
    assert "Followers: 2\n  ai: 2\n  space: 1\nDM queue: 0 pending, 1 sent, 1 failed" in text
    assert "601" not in text and "602" not in text  # counts only
    assert [d["destination"] for d in document["destinations"]] == [CHANNEL]
    rendered = metrics.render().decode()
    assert 'publisher_followers{topic="ai"} 2.0' in rendered
    assert 'publisher_dm_total{outcome="sent"} 1.0' in rendered
    assert 'publisher_dm_total{outcome="failed"} 1.0' in rendered
    assert 'publisher_dm_queue{state="failed"} 1.0' in rendered


@pytest.mark.parametrize("state_url", ["sqlite:///state/publisher.db"])
def test_kill_9_during_a_fan_out_then_a_new_push_doubles_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path
) -> None:
    config = make_config(per_second=10)
    chats = list(range(701, 741))
    subscribe(config, {chat: ["ai"] for chat in chats}, at=time.time() - 60)
    write_article("1.txt", 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "push", "-c", str(config.path)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while sum(dms(botapi).values()) < 10:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    first = sum(dms(botapi).values())
    assert first < len(chats)
    outcome = push(config)
    got = dms(botapi)
    assert max(got.values()) == 1  # no DM twice
    counts = queue(config)
    assert counts.get("pending", 0) == 0 and counts.get("sending", 0) == 0
    # Each got it once, recorded sent, or is uncertain: the DM in flight when it was killed
    # (which may have arrived), never sent again.
    assert counts["sent"] + counts.get("uncertain", 0) == len(chats)
    assert counts["sent"] <= len(got) <= len(chats)
    assert outcome.dms is not None and counts.get("uncertain", 0) <= 4  # at most SENDERS


@pytest.mark.parametrize("state_url", ["sqlite:///state/publisher.db"])
def test_the_landing_page_links_each_topic_to_the_bot_when_its_username_is_set(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    write_article("1.txt", 1, topics=["Robotics", "AI Ethics & Policy"])
    pages = {}
    for extra in ("", 'bot_username = "news_follow_bot"\n'):
        config = make_config(extra)
        with Session.opened(config) as session:
            session.build()
        pages[extra] = (config.feeds.dir / "index.html").read_text(encoding="utf-8")
    assert "t.me/" not in pages[""] and "Get it in Telegram" not in pages[""]
    linked = pages['bot_username = "news_follow_bot"\n']
    assert ('<a class="follow" href="https://t.me/news_follow_bot?start=robotics">'
            "Get it in Telegram</a>") in linked
    assert "https://t.me/news_follow_bot?start=ai-ethics-policy" in linked
    assert "start=all" not in linked  # every article is not a topic to follow


def test_a_tick_s_time_for_dms_runs_out_and_the_next_push_goes_on(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config(per_second=10)
    chats = range(801, 821)
    subscribe(config, {chat: ["ai"] for chat in chats}, at=time.time() - 60)
    write_article("1.txt", 1)

    async def tick() -> pipeline.PushOutcome:
        from publisher.delivery import TelegramSender

        sender = TelegramSender(DEFAULT_TOKEN, config.telegram.api_base_url, 2.0)
        try:
            with Session.opened(config, sender=sender) as session:
                return await session.push(dm_seconds=0.5)
        finally:
            await sender.close()

    first = asyncio.run(tick())
    assert first.dms is not None and 0 < first.dms.sent < 20 and first.dms.left > 0
    assert first.dms.sent + first.dms.left == 20
    second = asyncio.run(tick())
    assert second.dms is not None and second.fanned_out == 0
    while second.dms.left:
        second = asyncio.run(tick())
    assert dms(botapi) == {chat: 1 for chat in chats}


@pytest.mark.parametrize("state_url", ["sqlite:///state/publisher.db"])
def test_sigterm_stops_the_fan_out_after_the_dm_in_flight(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path
) -> None:
    config = make_config(per_second=10)
    subscribe(config, {chat: ["ai"] for chat in range(901, 931)}, at=time.time() - 60)
    write_article("1.txt", 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "push", "-c", str(config.path)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while sum(dms(botapi).values()) < 5:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 128 + signal.SIGTERM
    counts = queue(config)
    assert counts.get("uncertain", 0) == 0 and counts.get("sending", 0) == 0
    assert counts["sent"] == sum(dms(botapi).values()) < 30
    assert counts["sent"] + counts["pending"] == 30


def test_a_follower_who_stops_mid_fan_out_gets_nothing_recorded(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    subscribe(config, {951: ["ai"], 952: ["ai"], 953: ["ai"]}, at=time.time() - 60)
    write_article("1.txt", 1)
    botapi.inject("slow_after_record", chat_id=952)  # its answer held for a second

    def stop_952_while_its_dm_is_in_flight() -> None:
        deadline = time.monotonic() + 20
        while not any(r.fault == "slow_after_record" for r in botapi.requests):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        store = open_store(config.state.url)
        try:
            with store.db.transaction():
                followers.forget(store.db, "952")  # what /stop does
        finally:
            store.close()

    import threading

    stopper = threading.Thread(target=stop_952_while_its_dm_is_in_flight)
    stopper.start()
    outcome = push(config)
    stopper.join()
    assert outcome.dms is not None and outcome.dms.sent == 3  # what went out went out...
    store = open_store(config.state.url)
    try:
        rows = store.db.execute("SELECT chat_id FROM deliveries WHERE kind = 'dm' "
                                "ORDER BY chat_id").fetchall()
    finally:
        store.close()
    assert [row[0] for row in rows] == ["951", "953"]  # ...but nothing is kept about 952


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)
def test_two_instances_on_postgresql_fan_an_article_out_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    chats = range(1101, 1141)
    subscribe(config, {chat: ["ai"] for chat in chats}, at=time.time() - 60)
    write_article("1.txt", 1)

    async def instance() -> pipeline.PushOutcome:
        from publisher.delivery import TelegramSender

        sender = TelegramSender(DEFAULT_TOKEN, config.telegram.api_base_url, 2.0)
        try:
            with Session.opened(config, sender=sender) as session:
                return await session.push()
        finally:
            await sender.close()

    async def both() -> list[pipeline.PushOutcome]:
        return list(await asyncio.gather(instance(), instance()))

    outcomes = asyncio.run(both())
    assert sum(outcome.fanned_out for outcome in outcomes) == 40
    assert sum(o.dms.sent for o in outcomes if o.dms is not None) == 40
    assert dms(botapi) == {chat: 1 for chat in chats}
    assert queue(config) == {"sent": 40}
