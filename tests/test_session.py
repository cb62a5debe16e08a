"""The session and its plan: a dry run shows what the next push sends, and the push sends
exactly that (real files, real SQLite and PostgreSQL, the stand-in Bot API)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import pipeline
from publisher.cli import cli
from publisher.config import Config, load_config
from publisher.dispatch import Dispatcher
from publisher.plan import PACING_HELD, ActionKind, Plan
from publisher.session import Session
from publisher.state import open_store

CHAT = "@news"
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


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin,
                state_url: str) -> ConfigMaker:
    def make(extra: str = "", **telegram: object) -> Config:
        settings = {"chat_id": CHAT, "api_base_url": botapi.base_url, "max_age_hours": 0,
                    "max_per_run": 0, "per_chat_interval_seconds": 0.06,
                    "timeout_seconds": 0.5, "max_wait_seconds": 5, **telegram}
        (tmp_path / "state").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n[telegram]\n'
            + "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in
                      settings.items()) + extra,
            encoding="utf-8",
        )
        return load_config(path, environ={})

    return make


class VirtualTime:
    """The dispatcher's clock and sleep: a minute passes at once."""

    def __init__(self) -> None:
        self.now = time.time()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)

    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def titles(api: BotApiStandin, start: int = 0, chat: str = CHAT) -> list[str]:
    return [record.visible_text.split("\n")[0] for record in api.sent_to(chat)[start:]]


def dry_titles(dry: pipeline.DryRun) -> list[str]:
    return [item.message.plain.split("\n")[0] for item in dry.items]


def cli_run(config: Config, *args: str) -> Result:
    return CliRunner().invoke(cli, [args[0], "-c", str(config.path), *args[1:]])


@contextmanager
def session_of(config: Config) -> Iterator[Session]:
    with Session.opened(config, sender=pipeline.make_sender(config)) as session:
        yield session


async def push_at(config: Config, virtual: VirtualTime) -> pipeline.PushOutcome:
    """A push whose dispatcher lives in virtual time (pacing waits pass at once)."""
    with session_of(config) as session:
        assert session.sender is not None
        try:
            dispatcher = Dispatcher(session.store, session.sender, config,
                                    clock=virtual.clock, sleep=virtual.sleep)
            return await session.deliver(dispatcher, session.sync())
        finally:
            await session.sender.close()


async def push_and_close(session: Session) -> pipeline.PushOutcome:
    assert session.sender is not None
    try:
        return await session.push()
    finally:
        await session.sender.close()


def dry_run_at(config: Config, moment: datetime | None = None) -> pipeline.DryRun:
    with Session.for_dry_run(config) as session:
        return session.dry_run(moment)


def test_a_dry_run_shows_what_max_per_run_left_pending_and_the_push_sends_exactly_that(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    for index in range(1, 6):
        write_article(f"{index}.txt", index)
    config = make_config(max_per_run=2)
    first = dry_run_at(config)
    assert dry_titles(first) == ["Article number 1", "Article number 2"]
    assert "telegram.max_per_run (2) reached" in first.notes[-1]
    assert asyncio.run(pipeline.push(config)).report.total("sent") == 2
    assert titles(botapi) == dry_titles(first)

    # Three pairs are pending in the ledger now: the next push's two are shown.
    dry = cli_run(config, "push", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Dry run: 2 messages would be sent; nothing was sent." in dry.stdout
    assert ("Note: @news: telegram.max_per_run (2) reached: the rest wait for the next push "
            "(1 post left).") in dry.stdout
    shown = dry_titles(dry_run_at(config))
    assert shown == ["Article number 3", "Article number 4"]
    outcome = asyncio.run(pipeline.push(config))
    assert outcome.report.total("sent") == 2
    assert titles(botapi, 2) == shown
    assert dry_titles(dry_run_at(config)) == ["Article number 5"]


def test_a_dry_run_shows_what_pacing_left_pending_once_its_slot_is_free(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    for index in range(1, 5):
        write_article(f"{index}.txt", index)
    virtual = VirtualTime()
    with BotApiStandin(DEFAULT_TOKEN, clock=virtual.clock) as api:
        # Two sends per minute, and no waiting longer than 2 s: the third waits.
        config = make_config(api_base_url=api.base_url, per_chat_per_minute=2,
                             per_chat_interval_seconds=1.0, max_wait_seconds=2)
        outcome = asyncio.run(push_at(config, virtual))
        assert outcome.report.total("sent") == 2 and titles(api) == [
            "Article number 1", "Article number 2"]
        assert outcome.report.held == {CHAT: PACING_HELD}

        now = dry_run_at(config, virtual.moment())
        assert now.items == []  # the slots of this minute are taken
        assert now.notes == [f"@news: {PACING_HELD} (2 posts left)"]
        virtual.now += 70  # a minute later the budget is free again
        later = dry_run_at(config, virtual.moment())
        assert dry_titles(later) == ["Article number 3", "Article number 4"]
        again = asyncio.run(push_at(config, virtual))
        assert again.report.total("sent") == 2 and again.report.held == {}
        assert titles(api, 2) == dry_titles(later)


def test_with_two_destinations_the_dry_run_shows_each_chats_next_posts(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    for index in range(1, 5):
        write_article(f"{index}.txt", index, topics=["AI"] if index % 2 else ["Space"])
    config = make_config(max_per_run=1, extra='[telegram.routes]\nAI = "@robots"\n')
    asyncio.run(pipeline.push(config))  # one post per chat; both chats are known now
    assert titles(botapi) == ["Article number 1"]
    assert titles(botapi, chat="@robots") == ["Article number 1"]
    dry = dry_run_at(config)
    assert [(item.chat_id, item.message.plain.split("\n")[0]) for item in dry.items] == [
        ("@news", "Article number 2"), ("@robots", "Article number 3")]
    assert dry.notes == ["@news: telegram.max_per_run (1) reached: the rest wait for the "
                         "next push (2 posts left)"]  # @robots has only article 3 left
    asyncio.run(pipeline.push(config))
    assert titles(botapi, 1) == ["Article number 2"]
    assert titles(botapi, 1, chat="@robots") == ["Article number 3"]
    assert [item.chat_id for item in dry_run_at(config).items] == ["@news"]


def test_the_plan_is_a_value_and_the_push_executes_exactly_it(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config(max_per_run=2)
    asyncio.run(pipeline.push(config))  # the chat is resolved and remembered
    for index in (2, 3, 4):
        write_article(f"{index}.txt", index)
    moment = datetime.now(UTC)
    with session_of(config) as session:
        session.sync()
        plan = session.plan(moment)
        assert session.plan(moment) == plan  # nothing was written: the same plan again
        assert isinstance(plan, Plan)
        assert [action.kind for action in plan.actions] == [ActionKind.POST] * 2
        assert [action.title for action in plan.actions] == [
            "Article number 2", "Article number 3"]
        assert all(action.new and action.target.label == CHAT for action in plan.actions)
        assert [(held.count, held.target.label) for held in plan.held] == [(1, CHAT)]
        assert str(plan).splitlines()[1:] == [
            f"  post {plan.actions[0].article_id} to @news (new): Article number 2",
            f"  post {plan.actions[1].article_id} to @news (new): Article number 3",
            "  hold 1 in @news: telegram.max_per_run (2) reached: the rest wait for the "
            "next push",
        ]
        outcome = asyncio.run(push_and_close(session))
    assert outcome.report.total("sent") == 2
    assert titles(botapi, 1) == [action.title for action in plan.actions]


def test_a_pending_post_whose_article_went_is_a_closing_and_the_push_skips_it(
    make_config: ConfigMaker, write_article: ArticleWriter, articles_dir: Path,
    botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    write_article("2.txt", 2)
    config = make_config(max_per_run=1)
    asyncio.run(pipeline.push(config))
    (articles_dir / "2.txt").unlink()
    with Session.opened(config) as session:
        session.sync()
        plan = session.plan()
    assert plan.actions == ()
    (closing,) = plan.closing
    assert closing.reason.startswith("no longer selected")
    assert dry_run_at(config).items == []
    outcome = asyncio.run(pipeline.push(config))
    assert outcome.report.total("skipped") == 1 and outcome.report.total("sent") == 0
    assert len(botapi.messages) == 1


def test_a_dry_run_changes_nothing_but_the_parse_cache(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    asyncio.run(pipeline.push(config))
    added = write_article("2.txt", 2)

    def ledger_and_runs() -> tuple[object, ...]:
        store = open_store(config.state.url)
        try:
            return store.counts(), store.last_runs(), store.pending_pairs()
        finally:
            store.close()

    before = ledger_and_runs()
    dry = dry_run_at(config)
    assert dry.corpus.parsed >= 1 and dry_titles(dry) == ["Article number 2"]
    assert ledger_and_runs() == before
    with Session.opened(config) as session:  # the new file is in the parse cache
        assert str(added) in session.catalog.kept_ids()
    assert [request.method for request in botapi.requests].count("sendPhoto") == 1
    outcome = asyncio.run(pipeline.push(config))
    assert outcome.report.total("sent") == 1 and outcome.report.new == 1


def test_a_dry_run_without_a_state_creates_none(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    dry = dry_run_at(config)
    assert dry_titles(dry) == ["Article number 1"]
    if config.state.url == SQLITE_STATE:
        assert list((tmp_path / "state").iterdir()) == []


def test_the_plan_foresees_the_pacing_slots_the_ledger_reserves(tmp_path: Path) -> None:
    """Each send reserved as the one before leaves, as a push's loop does: the plan's
    foresight and the store's reservations agree, slot for slot, and on where they stop."""
    from publisher.config import Config as Defaults
    from publisher.dispatch import paced_with_margin
    from publisher.plan import Pacer

    pacing = dataclasses.replace(paced_with_margin(Defaults()), per_chat_per_minute=3,
                                 max_wait=15.0)
    store = open_store(f"sqlite:///{tmp_path}/pacing.db")
    try:
        start = 1_000_000.0
        for earlier in (start - 50, start - 20):  # sends of an earlier push, in the window
            assert store.reserve_send(CHAT, earlier, pacing) == earlier
        pacer = Pacer(store.send_times(CHAT, start - pacing.window, 3), pacing, start)
        now, foreseen, reserved = start, [], []
        for _ in range(8):
            foreseen.append(pacer.take())
            slot = store.reserve_send(CHAT, now, pacing)
            reserved.append(slot)
            if slot is None:
                break
            now = slot
    finally:
        store.close()
    assert foreseen == reserved
    assert reserved[-1] is None and len(reserved) > 2
