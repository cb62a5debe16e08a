"""The pipeline: load -> select -> build feeds and/or deliver. Each call returns a report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from publisher.config import Config
from publisher.delivery import Sender, TelegramSender
from publisher.dispatch import Dispatcher, PushReport, plan_deliveries
from publisher.errors import ConfigError
from publisher.feeds import BuildResult, build_feeds
from publisher.loader import LOADER_NAME, Loader, LoadResult, Progress
from publisher.logs import add_secret
from publisher.messages import Message, render_message
from publisher.models import Article
from publisher.selection import group_by_topic, select
from publisher.state import (
    PENDING,
    InstanceLock,
    RunRecord,
    SQLiteStore,
    Store,
    open_store,
    sqlite_path,
    utc_now_iso,
)
from publisher.websub import announce_changed


@dataclass
class LoadReport:
    load: LoadResult
    selected: list[Article]
    seconds: float
    loader: str = LOADER_NAME

    @property
    def topics(self) -> int:
        return len(group_by_topic(self.selected))


@dataclass
class BuildReport:
    loaded: LoadReport
    feeds: BuildResult
    seconds: float

    def summary(self) -> dict[str, object]:
        return {
            "files": self.loaded.load.files_read,
            "bad": len(self.loaded.load.problems),
            "selected": len(self.loaded.selected),
            "topics": self.feeds.topics,
            "written": self.feeds.written,
            "unchanged": self.feeds.unchanged,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PushOutcome:
    loaded: LoadReport
    report: PushReport
    seconds: float

    def summary(self) -> dict[str, object]:
        report = self.report
        return {
            "files": self.loaded.load.files_read,
            "bad": len(self.loaded.load.problems),
            "selected": len(self.loaded.selected),
            "new": report.new,
            "sent": report.total("sent"),
            "failed": report.total("failed"),
            "uncertain": report.total("uncertain"),
            "skipped": report.total("skipped"),
            "rate_limited": report.total("rate_limited"),
            "errors": report.errors,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DryRunItem:
    chat_id: str
    message: Message


@dataclass
class DryRun:
    loaded: LoadReport
    items: list[DryRunItem] = field(default_factory=list)


def load_and_select(
    config: Config, loader: Loader | None = None, progress: Progress | None = None
) -> LoadReport:
    started = time.perf_counter()
    loader = loader or Loader(config.articles.max_file_bytes)
    result = loader.load(config.articles.dir, progress)
    selected = select(result.articles, config.select.min_quality)
    return LoadReport(result, selected, time.perf_counter() - started)


def build(
    config: Config, loader: Loader | None = None, progress: Progress | None = None
) -> BuildReport:
    started = time.perf_counter()
    loaded = load_and_select(config, loader, progress)
    feeds = build_feeds(loaded.selected, config.feeds)
    announce_changed(feeds, config.feeds)
    return BuildReport(loaded, feeds, time.perf_counter() - started)


def make_sender(config: Config) -> Sender:
    token = config.read_token()
    add_secret(token)
    return TelegramSender(token, config.telegram.api_base_url, config.telegram.timeout_seconds)


async def push(config: Config, sender: Sender | None = None) -> PushOutcome:
    """One delivery pass, as ``publisher push`` runs it: under the single-instance lock."""
    require_chat(config)
    sender = sender or make_sender(config)
    with InstanceLock(config.state.url):
        store = open_store(config.state.url)
        try:
            loaded = load_and_select(config)
            try:
                return await deliver(config, store, Dispatcher(store, sender, config), loaded)
            finally:
                await sender.close()
        finally:
            store.close()


async def deliver(
    config: Config, store: Store, dispatcher: Dispatcher, loaded: LoadReport
) -> PushOutcome:
    """Post what is new and due from an already loaded selection; records the run."""
    started = time.perf_counter()
    started_at = utc_now_iso()
    report = await dispatcher.run(loaded.selected)
    outcome = PushOutcome(loaded, report, loaded.seconds + time.perf_counter() - started)
    store.record_run(RunRecord("push", started_at, utc_now_iso(), report.ok, outcome.summary()))
    return outcome


def require_chat(config: Config) -> None:
    if not config.telegram.chat_id and not config.telegram.routes:
        raise ConfigError("no chat to post to: set telegram.chat_id in the config")


def dry_run(config: Config) -> DryRun:
    """What a push would post now, rendered; nothing is sent and nothing is written."""
    loaded = load_and_select(config)
    known = _known_pairs(config)
    now = datetime.now(UTC)
    budget: dict[str, int] = {}
    by_id = {article.id: article for article in loaded.selected}
    result = DryRun(loaded)
    planned = sorted(
        (p for p in plan_deliveries(loaded.selected, config, now) if p.state == PENDING),
        key=lambda p: (p.published_at, p.article_id),
    )
    for item in planned:
        if (item.article_id, item.chat_id) in known:
            continue
        used = budget.get(item.chat_id, 0)
        if config.telegram.max_per_run and used >= config.telegram.max_per_run:
            continue
        budget[item.chat_id] = used + 1
        message = render_message(by_id[item.article_id], timezone=config.telegram.timezone)
        result.items.append(DryRunItem(item.chat_id, message))
    return result


def _known_pairs(config: Config) -> set[tuple[str, str]]:
    if not sqlite_path(config.state.url).exists():
        return set()
    store = SQLiteStore.open(config.state.url, readonly=True)
    try:
        return store.known_pairs()
    finally:
        store.close()
