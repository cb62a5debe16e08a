"""Quiet hours, digests and operator alerts, on the stand-in Bot API with a fake clock
(real files, real SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin, Recorded

from publisher import digest_send, pipeline
from publisher.config import Config, load_config
from publisher.digest_ledger import claim_digest, recent_digests, settle_digest
from publisher.dispatch import Dispatcher
from publisher.errors import ConfigError
from publisher.session import Session
from publisher.settings import PostSettings
from publisher.state import NewDelivery, open_store
from publisher.status import collect_status, render_text
from publisher.timing import (
    parse_digest,
    parse_quiet_hours,
    timing_at,
    with_standard_weekdays,
)

CHAT = "@news"
OPS = "@opsdesk"
ConfigMaker = Callable[..., Config]
SQLITE_STATE = "sqlite:///state/publisher.db"


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return SQLITE_STATE


class FakeClock:
    """The dispatcher's clock and sleep, and the stand-in's: pacing waits pass at once."""

    def __init__(self, moment: str) -> None:
        self.now = datetime.fromisoformat(moment).timestamp()

    def set(self, moment: str) -> None:
        self.now = datetime.fromisoformat(moment).timestamp()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock("2025-01-01T20:00:00+00:00")


@pytest.fixture
def api(fake: FakeClock) -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, clock=fake.clock) as standin:
        yield standin


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, api: BotApiStandin,
                state_url: str) -> ConfigMaker:
    def make(extra: str = "", **telegram: object) -> Config:
        settings = {"chat_id": CHAT, "api_base_url": api.base_url, "max_age_hours": 0,
                    "max_per_run": 0, "per_chat_interval_seconds": 0.06,
                    "timeout_seconds": 0.5, "max_wait_seconds": 5, **telegram}
        (tmp_path / "state").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n[telegram]\n'
            + "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items()) + extra,
            encoding="utf-8",
        )
        return load_config(path, environ={})

    return make


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


@contextmanager
def session_of(config: Config) -> Iterator[Session]:
    with Session.opened(config, sender=pipeline.make_sender(config)) as session:
        yield session


async def _push(config: Config, fake: FakeClock) -> pipeline.PushOutcome:
    with session_of(config) as session:
        assert session.sender is not None
        try:
            dispatcher = Dispatcher(session.store, session.sender, config,
                                    clock=fake.clock, sleep=fake.sleep)
            return await session.deliver(dispatcher, session.sync())
        finally:
            await session.sender.close()


def push(config: Config, fake: FakeClock) -> pipeline.PushOutcome:
    return asyncio.run(_push(config, fake))


def dry_run(config: Config, fake: FakeClock) -> pipeline.DryRun:
    with Session.for_dry_run(config) as session:
        return session.dry_run(fake.moment())


def first_lines(records: list[Recorded]) -> list[str]:
    return [record.visible_text.split("\n")[0] for record in records]


def states(config: Config) -> dict[str, str]:
    """Article title -> its ledger state in the main chat."""
    store = open_store(config.state.url)
    try:
        return {delivery.title: delivery.state
                for delivery in store.deliveries(["pending", "sending", "sent", "uncertain",
                                                  "failed", "skipped"], limit=100)}
    finally:
        store.close()


def at(hour: str, day: int = 1) -> str:
    return f"2025-01-{day:02d}T{hour}:00+00:00"


# -- quiet hours ---------------------------------------------------------------------------


def test_quiet_hours_in_silent_mode_send_without_notification_only_in_the_window(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    # 23:00-07:00 in Berlin (UTC+1 in January): 22:30 UTC is 23:30 there.
    config = make_config(quiet_hours="23:00-07:00", timezone="Europe/Berlin")
    write_article("1.txt", 1, publishedDateTime="2025-01-01T22:00:00Z")
    fake.set(at("22:30"))
    assert [item.message.silent for item in dry_run(config, fake).items] == [True]
    assert push(config, fake).report.total("sent") == 1
    write_article("2.txt", 2, publishedDateTime="2025-01-02T06:30:00Z")
    fake.set(at("06:30", 2))  # 07:30 in Berlin: the window is over
    assert push(config, fake).report.total("sent") == 1
    sent = api.sent_to(CHAT)
    assert first_lines(sent) == ["Article number 1", "Article number 2"]
    assert sent[0].params.get("disable_notification") is True
    assert "disable_notification" not in sent[1].params


def test_quiet_hours_in_hold_mode_send_nothing_then_the_held_posts_oldest_first(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(quiet_hours="23:00-07:00", quiet_mode="hold", max_age_hours=8)
    write_article("1.txt", 1, publishedDateTime="2025-01-01T21:30:00Z")  # 8 h old at 05:40
    write_article("2.txt", 2, publishedDateTime="2025-01-01T23:10:00Z")
    write_article("3.txt", 3, publishedDateTime="2025-01-01T23:05:00Z")
    fake.set(at("23:20"))
    dry = dry_run(config, fake)
    assert dry.items == []
    assert dry.notes == ["@news: quiet hours until 07:00 (3 posts left)"]
    held = push(config, fake)
    assert held.report.total("sent") == 0 and api.sent_to(CHAT) == []
    assert held.report.held == {CHAT: "quiet hours until 07:00"}
    assert held.report.ok
    fake.set(at("06:59", 2))  # still quiet: nothing
    assert push(config, fake).report.total("sent") == 0 and api.sent_to(CHAT) == []

    fake.set(at("07:00", 2))  # over: the held posts, oldest first, aged from the article
    outcome = push(config, fake)
    assert first_lines(api.sent_to(CHAT)) == ["Article number 3", "Article number 2"]
    assert outcome.report.total("skipped") == 1
    assert states(config)["Article number 1"] == "skipped"
    assert all("disable_notification" not in record.params for record in api.sent_to(CHAT))


def test_per_destination_quiet_hours_hold_only_that_destination(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config('[telegram.routes]\nAI = "@night"\n'
                         '[telegram.chats."@night"]\nquiet_hours = "22:00-06:00"\n'
                         'quiet_mode = "hold"\n')
    write_article("1.txt", 1)
    fake.set(at("23:00"))
    outcome = push(config, fake)
    assert len(api.sent_to(CHAT)) == 1 and api.sent_to("@night") == []
    assert outcome.report.held == {"@night": "quiet hours until 06:00"}
    fake.set(at("06:00", 2))
    push(config, fake)
    assert first_lines(api.sent_to("@night")) == ["Article number 1"]
    assert len(api.sent_to(CHAT)) == 1


# -- digests -------------------------------------------------------------------------------


def _digest_lines(record: Recorded) -> list[str]:
    return record.visible_text.split("\n")


def test_a_digest_across_two_windows_lists_each_article_once_best_first(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="daily 08:00", digest_max_items=2)
    write_article("1.txt", 1, publishedDateTime="2025-01-01T05:00:00Z", quality=50)
    write_article("2.txt", 2, publishedDateTime="2025-01-01T06:00:00Z", quality=90)
    write_article("3.txt", 3, publishedDateTime="2025-01-01T06:30:00Z", quality=90, heat=50)
    fake.set(at("07:00"))
    waiting = push(config, fake)
    assert api.sent_to(CHAT) == []
    assert waiting.report.held == {CHAT: "digest: the next one at 08:00"}

    fake.set(at("08:05"))
    dry = dry_run(config, fake)
    assert [item.message.article_id for item in dry.items] == [
        "digest 2025-01-01T08:00:00+00:00"]
    push(config, fake)
    (first,) = api.sent_to(CHAT)
    assert _digest_lines(first) == ["3 new articles", "• Article number 3 · Example News",
                                    "• Article number 2 · Example News", "and 1 more"]
    assert first.text == dry.items[0].message.html
    links = [entity["url"] for entity in first.entities if entity["type"] == "text_link"]
    assert links == ["https://news.example.com/articles/3", "https://news.example.com/articles/2"]
    assert "disable_notification" not in first.params
    push(config, fake)  # the same window again: nothing
    assert len(api.sent_to(CHAT)) == 1

    write_article("4.txt", 4, publishedDateTime="2025-01-01T09:00:00Z")
    fake.set(at("10:30"))
    later = push(config, fake)
    assert later.report.held == {CHAT: "digest: the next one at 2025-01-02 08:00"}
    fake.set(at("08:00", 2))
    push(config, fake)
    push(config, fake)
    digests = api.sent_to(CHAT)
    assert len(digests) == 2
    assert _digest_lines(digests[1]) == ["1 new article", "• Article number 4 · Example News"]
    assert set(states(config).values()) == {"sent"}


@pytest.mark.parametrize(("language", "header", "single", "more"), [
    ("de", "3 neue Artikel", "1 neuer Artikel", "und 1 weitere"),
    ("fa", "3 مقالهٔ تازه", "1 مقالهٔ تازه", "و 1 مورد دیگر"),
    ("ja", "新着記事 3 件", "新着記事 1 件", "ほか 1 件"),
    ("ru", "3 новые статьи", "1 новая статья", "и ещё 1"),
])
def test_a_digest_speaks_the_destinations_language_by_default(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock, language: str, header: str, single: str, more: str,
) -> None:
    config = make_config(extra=f'[telegram.chats."{CHAT}"]\ndigest = "hourly"\n'
                               f'digest_max_items = 2\nlanguage = "{language}"\n')
    for index in (1, 2, 3):
        write_article(f"{index}.txt", index, publishedDateTime=f"2025-01-01T09:0{index}:00Z")
    fake.set(at("10:00"))
    push(config, fake)
    write_article("4.txt", 4, publishedDateTime="2025-01-01T10:10:00Z")
    fake.set(at("11:00"))
    push(config, fake)
    first, second = api.sent_to(CHAT)
    assert _digest_lines(first)[0] == header and _digest_lines(first)[-1] == more
    assert _digest_lines(second) == [single, "• Article number 4 · Example News"]


def test_a_digest_killed_after_it_left_is_never_sent_again_nor_its_articles(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(digest="hourly", alert_chat=OPS)
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    write_article("2.txt", 2, publishedDateTime="2025-01-01T09:20:00Z")
    fake.set(at("10:01"))

    real_settle = digest_send.settle_digest

    def killed(*args: object, **kwargs: object) -> int:
        raise SystemExit("killed after the send, before its outcome was recorded")

    monkeypatch.setattr(digest_send, "settle_digest", killed)
    with pytest.raises(SystemExit):
        push(config, fake)
    assert len(api.sent_to(CHAT)) == 1  # it went out; the ledger says "sending"
    assert set(states(config).values()) == {"sending"}
    monkeypatch.setattr(digest_send, "settle_digest", real_settle)

    fake.set(at("10:30"))
    outcome = push(config, fake)  # the claims are found interrupted: uncertain, not resent
    assert len(api.sent_to(CHAT)) == 1
    assert outcome.report.total("uncertain") == 2
    assert set(states(config).values()) == {"uncertain"}
    (alert,) = api.sent_to(OPS)
    assert "2 posts to @news may or may not have gone out" in alert.visible_text

    write_article("3.txt", 3, publishedDateTime="2025-01-01T10:40:00Z")
    fake.set(at("11:00"))
    push(config, fake)
    push(config, fake)
    digests = api.sent_to(CHAT)
    assert len(digests) == 2
    assert _digest_lines(digests[1]) == ["1 new article", "• Article number 3 · Example News"]
    assert len(api.sent_to(OPS)) == 1
    store = open_store(config.state.url)
    try:
        assert [d.state for d in recent_digests(store.db)] == ["sent", "uncertain"]
    finally:
        store.close()


def test_a_digest_that_provably_did_not_leave_goes_in_a_later_push(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly")
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    fake.set(at("10:01"))
    api.inject("500")
    failed = push(config, fake)
    assert api.sent_to(CHAT) == [] and failed.report.held[CHAT].startswith("digest not sent")
    assert set(states(config).values()) == {"pending"}
    fake.set(at("10:05"))
    push(config, fake)
    assert len(api.sent_to(CHAT)) == 1
    assert set(states(config).values()) == {"sent"}


def test_a_rate_limited_digest_waits_it_out_and_an_unpublished_article_leaves_it(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly")
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    write_article("2.txt", 2, publishedDateTime="2025-01-01T09:20:00Z")
    fake.set(at("09:30"))
    push(config, fake)  # planned: both wait for 10:00
    write_article("2.txt", 2, publishedDateTime="2025-01-01T09:20:00Z", published=False)
    fake.set(at("10:01"))
    api.inject("429", method="sendMessage", retry_after=30)
    limited = push(config, fake)
    assert api.sent_to(CHAT) == [] and limited.report.held[CHAT].startswith("rate limited")
    assert limited.report.total("skipped") == 1
    assert states(config) == {"Article number 1": "pending", "Article number 2": "skipped"}
    fake.now += 10  # not over yet: nothing is due
    assert push(config, fake).report.total("sent") == 0 and api.sent_to(CHAT) == []
    fake.now += 30
    assert push(config, fake).report.total("sent") == 1
    (digest,) = api.sent_to(CHAT)
    assert _digest_lines(digest) == ["1 new article", "• Article number 1 · Example News"]


def test_a_destination_with_nothing_new_gets_no_digest_and_quiet_hours_hold_it(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="0 6 * * *", quiet_hours="05:00-07:00", quiet_mode="hold")
    fake.set(at("06:30", 2))
    assert push(config, fake).report.total("sent") == 0
    write_article("1.txt", 1, publishedDateTime="2025-01-01T20:00:00Z")
    held = push(config, fake)
    assert held.report.held == {CHAT: "quiet hours until 07:00"} and api.sent_to(CHAT) == []
    fake.set(at("07:00", 2))
    push(config, fake)
    assert first_lines(api.sent_to(CHAT)) == ["1 new article"]


def test_a_long_digest_drops_items_to_fit_4096_and_counts_them(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly", digest_max_items=40, silent=True)
    for index in range(1, 41):
        write_article(f"{index}.txt", index, title=f"Article number {index} " + "word " * 40,
                      publishedDateTime=f"2025-01-01T09:{index:02d}:00Z")
    fake.set(at("10:00"))
    outcome = push(config, fake)
    (digest,) = api.sent_to(CHAT)  # the stand-in refuses a text over 4096 units
    lines = _digest_lines(digest)
    listed = len([line for line in lines if line.startswith("•")])
    assert 0 < listed < 40 and lines[-1] == f"and {40 - listed} more"
    assert outcome.report.total("sent") == 40
    assert digest.params.get("disable_notification") is True


# -- alerts --------------------------------------------------------------------------------


def test_a_stopped_destination_alerts_once_per_hour_without_the_token(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(alert_chat=OPS)
    write_article("1.txt", 1)
    fake.set(at("10:00"))
    api.forbid_chat(CHAT)
    first = push(config, fake)
    assert not first.report.ok
    (alert,) = api.sent_to(OPS)
    assert alert.visible_text.startswith("publisher: @news stopped: ")
    assert DEFAULT_TOKEN not in alert.visible_text
    assert DEFAULT_TOKEN.split(":")[1] not in alert.visible_text
    fake.set(at("10:40"))
    push(config, fake)
    assert len(api.sent_to(OPS)) == 1  # the same cause within the hour: no second alert
    fake.set(at("11:01"))
    push(config, fake)
    assert len(api.sent_to(OPS)) == 2
    document = status_at(config, fake)
    assert [alert["at"] for alert in document["alerts"]] == ["2025-01-01T11:01:00+00:00"]
    assert document["alerts"][0]["cause"].startswith("stopped:")
    assert "Recent alerts (telegram.alert_chat" in render_text(document)


def test_an_uncertain_post_alerts_with_its_title_and_a_failing_alert_blocks_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(alert_chat=OPS)
    write_article("1.txt", 1, excerpt="A long text that no alert may carry. " * 5)
    write_article("2.txt", 2)
    fake.set(at("10:00"))
    api.inject("drop", method="sendPhoto")
    outcome = push(config, fake)
    assert outcome.report.total("uncertain") == 1 and outcome.report.total("sent") == 1
    (alert,) = api.sent_to(OPS)
    assert '"Article number 1"' in alert.visible_text
    assert "no alert may carry" not in alert.visible_text

    write_article("3.txt", 3)
    api.forbid_chat(OPS)  # the alert chat itself refuses: logged, the post still goes out
    api.inject("drop", method="sendPhoto")
    fake.set(at("11:30"))
    write_article("4.txt", 4)
    later = push(config, fake)
    assert later.report.total("uncertain") == 1 and later.report.total("sent") == 1
    assert len(api.sent_to(OPS)) == 1


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ('quiet_hours = "25:00-07:00"\n', "config key telegram.quiet_hours must be a window"),
    ('quiet_hours = "23:00-23:00"\n', "config key telegram.quiet_hours must not start and"),
    ('digest = "sometimes"\n', "config key telegram.digest must be"),
    ('[telegram.chats."@news"]\ndigest = "daily 25:00"\n',
     'config key telegram.chats."@news".digest must be'),
    ('digest = "hourly"\ndigest_template = "{% for x in items %}"\n',
     "telegram.digest_template: line 1: "),
    ('digest = "hourly"\ndigest_template = "<b>{{ count }}</b>\\n\\n<div>{{ more }}</div>"\n',
     "telegram.digest_template: line 3: unsupported tag <div>"),
    ('digest = "hourly"\ndigest_template = "{{ (\'<\' ~ \'p>\') | safe }}"\n',
     "telegram.digest_template: line 1: No filter named 'safe'"),
    ('digest = "hourly"\ndigest_template = "{% for i in items %}{{ i.nope }}{% endfor %}"\n',
     "telegram.digest_template: line 1: "),
    ('digest = "hourly"\ndigest_template = "{{ nothing }}"\n',
     "telegram.digest_template: line 1: undefined variable 'nothing'"),
])
def test_timing_keys_that_cannot_be_right_are_config_errors(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[telegram]\nchat_id = "@news"\n' + extra, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert message in str(caught.value)



# -- status --------------------------------------------------------------------------------


def waits(document: dict[str, Any]) -> dict[str, str]:
    return {wait["destination"]: wait["why"] for wait in document["waiting"]}


def status_at(config: Config, fake: FakeClock) -> dict[str, Any]:
    store = open_store(config.state.url, readonly=True)
    try:
        return collect_status(store, config, None, fake.now)
    finally:
        store.close()


def test_status_says_per_destination_what_waits_for_quiet_hours_and_digests(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config('[telegram.routes]\nAI = "@digested"\n'
                         '[telegram.chats."@digested"]\ndigest = "daily 08:00"\n',
                         quiet_hours="23:00-07:00", quiet_mode="hold")
    write_article("1.txt", 1, publishedDateTime="2025-01-01T22:00:00Z")
    write_article("2.txt", 2, publishedDateTime="2025-01-01T22:10:00Z")
    fake.set(at("23:30"))
    push(config, fake)
    document = status_at(config, fake)
    quiet = "quiet hours until 07:00"
    assert waits(document) == {CHAT: quiet, "@digested": quiet}
    text = render_text(document)
    assert "  @news: 2 posts due now: quiet hours until 07:00" in text
    assert "quiet 23:00-07:00 (hold), digest daily 08:00" in text
    by_name = {d["destination"]: d for d in document["destinations"]}
    assert by_name["@digested"]["digest"] == "daily 08:00"
    assert by_name[CHAT]["quiet_hours"] == "23:00-07:00" and "digest" not in by_name[CHAT]

    fake.set(at("07:30", 2))
    push(config, fake)  # @news gets its posts; @digested waits for its digest
    document = status_at(config, fake)
    assert waits(document) == {"@digested": "digest: the next one at 08:00"}
    assert "  @digested: 2 posts due now: digest: the next one at 08:00" in render_text(document)

    fake.set(at("08:00", 2))
    push(config, fake)
    write_article("3.txt", 3, publishedDateTime="2025-01-02T08:10:00Z")
    fake.set(at("08:15", 2))
    push(config, fake)
    document = status_at(config, fake)
    assert waits(document) == {"@digested": "digest: the next one at 2025-01-03 08:00"}
    text = render_text(document)
    assert "Recent digests:\n  2025-01-02T08:00:00+00:00  @digested  2 articles  sent" in text


def test_two_instances_claiming_one_digest_window_claim_it_once(state_url: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state").mkdir()
    first, second = open_store(state_url), open_store(state_url)
    try:
        first.add_deliveries([NewDelivery(f"a{i}", "-100", f"T{i}", f"https://x.example/{i}",
                                          f"2025-01-01T0{i}:00:00+00:00") for i in range(3)])
        window, items = "2025-01-01T08:00:00+00:00", ["a0", "a1", "a2"]
        claimed = claim_digest(first.db, "-100", window, items, 1e10, "one", 2e10)
        assert [item.article_id for item in claimed] == items
        assert claim_digest(second.db, "-100", window, items, 1e10, "two", 2e10) == []
        later = "2025-01-02T08:00:00+00:00"  # a later window finds nothing pending either
        assert claim_digest(second.db, "-100", later, items, 1e10, "two", 2e10) == []
        assert [d.state for d in recent_digests(first.db)] == ["sending"]
        assert settle_digest(second.db, "-100", window, "two", "sent", message_id=1) == 0
        assert settle_digest(first.db, "-100", window, "one", "sent", message_id=7) == 3
        assert {d.state for d in first.deliveries(["sent"], 10)} == {"sent"}
        assert [(d.state, d.message_id) for d in recent_digests(second.db)] == [("sent", 7)]
        first.add_deliveries([NewDelivery("b", "-100", "B", "https://x.example/b",
                                          "2025-04-01T00:00:00+00:00")])
        spring = "2025-04-11T08:00:00+00:00"  # more than 90 days on: the first one goes
        assert len(claim_digest(first.db, "-100", spring, ["b"], 1e10, "one", 2e10)) == 1
        assert [d.fire_at for d in recent_digests(first.db)] == [spring]
    finally:
        first.close()
        second.close()


def test_a_digest_that_may_have_gone_out_is_uncertain_and_alerted(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly", alert_chat=OPS)
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    write_article("2.txt", 2, publishedDateTime="2025-01-01T09:20:00Z")
    fake.set(at("10:01"))
    api.inject("drop", method="sendMessage", chat_id=CHAT)
    outcome = push(config, fake)
    assert outcome.report.total("uncertain") == 2
    assert set(states(config).values()) == {"uncertain"}
    (alert,) = api.sent_to(OPS)
    assert "2 posts to @news may or may not have gone out" in alert.visible_text
    fake.set(at("11:01"))
    push(config, fake)  # a new window: nothing new, no digest; the uncertain are not resent
    assert api.sent_to(CHAT) == []
    store = open_store(config.state.url)
    try:
        assert [d.state for d in recent_digests(store.db)] == ["uncertain"]
    finally:
        store.close()


# -- the commands --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "publisher", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN})


def test_dry_run_push_and_status_say_what_quiet_hours_and_a_digest_hold(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)  # the commands' clock is the real one: a window around it
    start, end = (f"{(now + timedelta(hours=h)).strftime('%H:%M')}" for h in (-1, 1))
    write_article("1.txt", 1)
    config = make_config(quiet_hours=f"{start}-{end}", quiet_mode="hold")
    dry = run_cli("push", "--dry-run", "-c", str(config.path), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: 0 messages would be sent; nothing was sent." in dry.stdout
    assert f"Note: @news: quiet hours until {end} (1 post left)." in dry.stdout
    pushed = run_cli("push", "-c", str(config.path), cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert f"@news: quiet hours until {end}" in pushed.stdout and api.sent_to(CHAT) == []
    status = run_cli("status", "-c", str(config.path), cwd=tmp_path)
    assert f"@news: 1 post due now: quiet hours until {end}" in status.stdout

    config = make_config(digest="hourly")  # due: the article is older than the last hour
    dry = run_cli("push", "--dry-run", "-c", str(config.path), cwd=tmp_path)
    assert "sendMessage to @news (digest " in dry.stdout
    assert ('    | • <a href="https://news.example.com/articles/1">Article number 1</a> · '
            "Example News") in dry.stdout
    assert run_cli("push", "-c", str(config.path), cwd=tmp_path).returncode == 0
    (digest,) = api.sent_to(CHAT)
    assert digest.visible_text == "1 new article\n• Article number 1 · Example News"
    status = run_cli("status", "-c", str(config.path), cwd=tmp_path)
    assert "Recent digests:" in status.stdout and "@news  1 article  sent" in status.stdout
    assert "digest hourly" in status.stdout


def test_check_telegram_asks_about_the_alert_chat_too(
    make_config: ConfigMaker, api: BotApiStandin, tmp_path: Path,
) -> None:
    config = make_config(alert_chat=OPS)
    fine = run_cli("check", "--telegram", "-c", str(config.path), cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr
    lines = fine.stdout.splitlines()
    assert lines[2].startswith(f'ok    {OPS} (telegram.alert_chat): channel "opsdesk"')
    assert "The bot can post to 1 destination and the alert chat." in fine.stderr + fine.stdout
    api.unknown_chat(OPS)
    refused = run_cli("check", "--telegram", "-c", str(config.path), cwd=tmp_path)
    assert refused.returncode == 1
    assert f"FAIL  {OPS} (telegram.alert_chat): Chat not found" in refused.stdout


# -- the rules, by themselves --------------------------------------------------------------


@pytest.mark.parametrize(("window", "local", "inside"), [
    ("23:00-07:00", "23:00", True), ("23:00-07:00", "03:00", True),
    ("23:00-07:00", "07:00", False), ("23:00-07:00", "22:59", False),
    ("09:00-17:30", "12:00", True), ("09:00-17:30", "17:30", False),
    ("09:00-17:30", "08:59", False), ("0:00-6:00", "05:59", True),
])
def test_quiet_hours_windows_wrap_past_midnight_and_end_exclusive(
    window: str, local: str, inside: bool
) -> None:
    quiet = parse_quiet_hours(window, "k")
    assert quiet is not None
    zone = ZoneInfo("Asia/Tokyo")
    moment = datetime.fromisoformat(f"2025-06-01T{local.zfill(5)}:00").replace(tzinfo=zone)
    assert quiet.contains(moment.astimezone(UTC), zone) is inside


@pytest.mark.parametrize(("spec", "now", "latest", "following"), [
    ("daily 08:00", "2025-03-30T09:00:00+02:00", "2025-03-30T08:00:00+02:00",
     "2025-03-31T08:00:00+02:00"),  # the day summer time began in Berlin
    ("hourly", "2025-01-01T10:00:00+01:00", "2025-01-01T10:00:00+01:00",
     "2025-01-01T11:00:00+01:00"),
    ("0 8 * * 1", "2025-01-05T12:00:00+01:00", "2024-12-30T08:00:00+01:00",
     "2025-01-06T08:00:00+01:00"),  # Mondays: a Sunday looks a week back
    ("0 0 29 2 *", "2025-01-01T00:00:00+01:00", "2024-02-29T00:00:00+01:00",
     "2028-02-29T00:00:00+01:00"),
])
def test_digest_schedules_find_their_latest_and_next_fire_times(
    spec: str, now: str, latest: str, following: str
) -> None:
    schedule = parse_digest(spec, "Europe/Berlin", "k")
    assert schedule is not None
    moment = datetime.fromisoformat(now)
    assert schedule.latest_at(moment) == datetime.fromisoformat(latest)
    assert schedule.next_after(moment) == datetime.fromisoformat(following)


def test_a_digest_is_due_once_its_window_passed_what_waits() -> None:
    settings = PostSettings(digest="daily 08:00")
    morning = datetime(2025, 1, 2, 8, 30, tzinfo=UTC)
    due = timing_at(settings, "UTC", morning, datetime(2025, 1, 1, 20, 0, tzinfo=UTC))
    assert due.window == datetime(2025, 1, 2, 8, 0, tzinfo=UTC)
    done = timing_at(settings, "UTC", morning, due.window)  # that digest went out
    assert done.window is None and done.waiting == "digest: the next one at 2025-01-03 08:00"
    assert timing_at(settings, "UTC", morning, None).window is None  # nothing waits


@pytest.mark.parametrize(("crontab", "days"), [
    ("0 8 * * 1-5", "mon,tue,wed,thu,fri"), ("0 8 * * 0", "sun"), ("0 8 * * 7", "sun"),
    ("0 8 * * 6,0", "sat,sun"), ("0 8 * * */2", "sun,tue,thu,sat"), ("0 8 * * *", "*"),
    ("0 8 * * mon-fri", "mon-fri"),
])
def test_digest_cron_lines_count_weekdays_as_cron_does(crontab: str, days: str) -> None:
    assert with_standard_weekdays(crontab).split()[4] == days
    schedule = parse_digest(crontab, "UTC", "k")
    assert schedule is not None
    sunday = datetime(2025, 1, 5, 12, 0, tzinfo=UTC)
    fires = {fire.strftime("%a") for n in range(7)
             if (fire := schedule.next_after(sunday + timedelta(days=n))) is not None}
    expected = {"mon,tue,wed,thu,fri": {"Mon", "Tue", "Wed", "Thu", "Fri"}, "sun": {"Sun"},
                "sat,sun": {"Sat", "Sun"}, "sun,tue,thu,sat": {"Sun", "Tue", "Thu", "Sat"},
                "*": {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"},
                "mon-fri": {"Mon", "Tue", "Wed", "Thu", "Fri"}}
    assert fires == expected[days]


def test_a_state_made_before_the_digest_tables_gets_them_when_first_needed(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly", alert_chat=OPS)
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    store = open_store(config.state.url)  # the current schema version, as an older build
    try:  # of it made it: without the tables of this feature
        with store.db.transaction():
            store.db.execute("DROP TABLE digests")
            store.db.execute("DROP TABLE alerts")
    finally:
        store.close()
    assert status_at(config, fake)["digests"] == []  # read-only: nothing to create
    fake.set(at("10:01"))
    api.forbid_chat(CHAT)
    push(config, fake)
    assert len(api.sent_to(OPS)) == 1  # the alerts table, made for the alert
    api.allow_chat(CHAT)
    fake.set(at("10:05"))
    push(config, fake)
    assert first_lines(api.sent_to(CHAT)) == ["1 new article"]


def test_preview_says_a_destination_gets_digests_and_keeps_quiet_hours(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path,
) -> None:
    path = write_article("1.txt", 1)
    config = make_config(digest="daily 08:00", quiet_hours="22:00-06:00", quiet_mode="hold",
                         timezone="Europe/Berlin")
    shown = run_cli("preview", "-c", str(config.path), str(path), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "  goes in the destination's digest (daily 08:00), not as this post" in shown.stdout
    assert ("  in quiet hours (22:00-06:00, Europe/Berlin): held until they end"
            in shown.stdout)


def test_two_topics_of_one_forum_one_with_digests_one_quiet(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    api.add_chat(CHAT, -1001)
    api.add_forum("@labforum", -1009, topics=[10, 20])
    config = make_config('[telegram.routes]\nAI = ["@labforum/10", "@labforum/20"]\n'
                         '[telegram.chats."@labforum/10"]\nquiet_hours = "09:00-11:00"\n'
                         '[telegram.chats."@labforum/20"]\ndigest = "hourly"\n')
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z")
    fake.set(at("09:30"))
    outcome = push(config, fake)
    assert outcome.report.ok, outcome.report
    (post,) = api.sent_to("@labforum")
    assert post.params["message_thread_id"] == 10 and post.params["disable_notification"]
    assert "disable_notification" not in api.sent_to(CHAT)[0].params
    fake.set(at("10:00"))
    push(config, fake)
    digest = api.sent_to("@labforum")[1]
    assert digest.params["message_thread_id"] == 20 and "disable_notification" not in digest.params
    assert digest.visible_text.startswith("1 new article")
    assert len(api.sent_to("@labforum")) == 2 and len(api.sent_to(CHAT)) == 1


def test_a_digest_template_of_ones_own_with_a_babel_date_in_german(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(digest="hourly", language="de", date_format="long",
                         timezone="Europe/Berlin",
                         digest_template="<b>Neu am {{ date }}</b>{% for i in items %}\n"
                                         "<a href=\"{{ i.url }}\">{{ i.title }}</a>{% endfor %}")
    write_article("1.txt", 1, publishedDateTime="2025-01-01T09:10:00Z", title="Tom & <Jerry>")
    fake.set(at("10:01"))
    push(config, fake)
    (digest,) = api.sent_to(CHAT)
    assert digest.visible_text == "Neu am 1. Januar 2025\nTom & <Jerry>"


def test_a_destination_telegram_does_not_find_alerts_once_and_never_the_article(
    make_config: ConfigMaker, write_article: ArticleWriter, api: BotApiStandin,
    fake: FakeClock,
) -> None:
    config = make_config(alert_chat=OPS)
    write_article("1.txt", 1, excerpt="The whole text of the article, which no alert carries.")
    write_article("2.txt", 2)
    fake.set(at("10:00"))
    api.unknown_chat(CHAT)
    first = push(config, fake)
    assert not first.report.ok and api.sent_to(CHAT) == []
    (alert,) = api.sent_to(OPS)
    assert alert.visible_text.startswith("publisher: @news stopped: ")
    assert "Chat not found" in alert.visible_text and "whole text" not in alert.visible_text
    assert alert.visible_text.count("@news") == 1  # named once, not again in the reason
    assert DEFAULT_TOKEN.split(":")[1] not in alert.visible_text
    assert len(alert.visible_text) <= 600 and alert.params.get("parse_mode") is None
    fake.set(at("10:59"))
    push(config, fake)
    assert len(api.sent_to(OPS)) == 1
