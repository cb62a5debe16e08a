"""The pipeline: load -> select -> build feeds and/or deliver. Each call returns a report.

``build``, ``push`` and ``dry_run`` open a ``session.Session`` and work through the catalog
in the state database, so unchanged files are never parsed twice and only the articles the
feeds show (or a push sends) are held in memory. ``load_and_select`` is the pure path (no
state at all) used by ``check``. The reports, the corpus sync and the feed writing are here.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from publisher.catalog import Catalog
from publisher.config import Config
from publisher.errors import ConfigError
from publisher.feeds import feeds_key, write_current_feeds  # noqa: F401 - feeds_key: kept here
from publisher.loader import Limits, LoadResult, Notice, Problem, Progress, load_articles
from publisher.logs import Fields, add_secret
from publisher.models import Article
from publisher.selection import select
from publisher.state import (  # noqa: F401
    PENDING,
    PlannedMarks,
    RunRecord,
    Store,
    instance_lock,
    open_store,
    state_exists,
    utc_now_iso,
)

if TYPE_CHECKING:  # rendering and the Telegram side are imported only when used
    from publisher.delivery import Sender
    from publisher.dispatch import Dispatcher, PushReport
    from publisher.fanout import DmReport
    from publisher.feeds import BuildResult
    from publisher.messages import Message
    from publisher.plan import Plan

ROUTING_KEY = "routing_digest"
# Bump when the same config routes differently (2: routes match topics by slug; chats are
# keyed by numeric id): the first push of a new version plans every article once more.
ROUTING_VERSION = "2"


@dataclass
class CorpusReport:
    """What a sync of the article folder found."""

    files: int
    problems: list[Problem]
    selected: int
    topics: int
    parsed: int
    seconds: float
    topic_slugs: tuple[str, ...] = ()  # of the selected articles
    notices: list[Notice] = field(default_factory=list)  # usable files, not whole


@dataclass
class BuildReport:
    corpus: CorpusReport
    feeds: BuildResult | None  # None: the feeds on disk were already current
    seconds: float

    def summary(self) -> Fields:
        return {
            "files": self.corpus.files,
            "bad": len(self.corpus.problems),
            "parsed": self.corpus.parsed,
            "selected": self.corpus.selected,
            "topics": self.corpus.topics,
            "written": self.feeds.written if self.feeds else 0,
            "unchanged": self.feeds.unchanged if self.feeds else 0,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PushOutcome:
    corpus: CorpusReport
    report: PushReport
    seconds: float
    # Per destination label, the pairs still open after the push (pending, uncertain,
    # failed, orphaned): the metrics' gauges.
    open_posts: dict[str, dict[str, int]] = field(default_factory=dict)
    route_warnings: list[str] = field(default_factory=list)
    dms: DmReport | None = None  # the DMs to followers after the channel posts (``fanout``)
    fanned_out: int = 0  # DM rows this push planned

    def summary(self) -> Fields:
        report = self.report
        dms = {} if self.dms is None else {"dms": {**self.dms.summary(),
                                                   "planned": self.fanned_out}}
        return {
            **dms,
            "files": self.corpus.files,
            "bad": len(self.corpus.problems),
            "selected": self.corpus.selected,
            "new": report.new,
            "sent": report.total("sent"),
            "digests": report.total("digests"),
            "in_digests": report.total("in_digests"),
            "failed": report.total("failed"),
            "uncertain": report.total("uncertain"),
            "skipped": report.total("skipped"),
            "orphaned": report.total("orphaned"),
            "rate_limited": report.total("rate_limited"),
            **({"edited": report.total("edited")} if report.total("edited") else {}),
            **({"gone": report.total("gone")} if report.total("gone") else {}),
            **({"retracted": report.total("retracted")} if report.total("retracted") else {}),
            **({"resolved": report.total("resolved")} if report.total("resolved") else {}),
            "errors": report.errors,
            "held": {chat: r.held for chat, r in report.chats.items() if r.held},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class LoadReport:
    """The pure path: every article in memory, no state."""

    load: LoadResult
    selected: list[Article]


@dataclass
class DryRunItem:
    chat_id: str
    message: Message


@dataclass
class DryRun:
    corpus: CorpusReport
    plan: Plan
    items: list[DryRunItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # destinations that may be one chat
    route_warnings: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)  # "edit ID in @chat: title changed"


# -- the catalog path ------------------------------------------------------------------------


def sync_corpus(config: Config, catalog: Catalog, progress: Progress | None = None,
                stop: threading.Event | None = None,
                paths: Collection[str] | None = None) -> CorpusReport:
    """Sync the catalog with the articles folder (only ``paths``, when a watcher says only
    those changed: ``Catalog.sync``)."""
    started = time.perf_counter()
    sync = catalog.sync(
        config.articles.dir, article_limits(config), config.select.min_quality,
        progress, stop=stop, allow_empty=config.articles.allow_empty, paths=paths,
    )
    slugs = tuple(catalog.topic_slugs())
    return CorpusReport(
        files=sync.files,
        problems=sync.problems,
        selected=catalog.selected_count(),
        topics=len(slugs),
        parsed=sync.parsed,
        seconds=time.perf_counter() - started,
        topic_slugs=slugs,
        notices=sync.notices,
    )


def route_warnings(config: Config, topic_slugs: Iterable[str]) -> list[str]:
    """A line per ``[telegram.routes]`` key that matches no topic of the selected articles."""
    if not config.telegram.routes:
        return []
    from publisher.destinations import route_warnings as warnings

    return warnings(config.telegram.routes, topic_slugs)


def article_limits(config: Config) -> Limits:
    articles = config.articles
    return Limits(articles.max_file_bytes, articles.max_topics, articles.max_related)


def build(config: Config, progress: Progress | None = None) -> BuildReport:
    """``publisher build``: sync the catalog, then write the feeds if they changed."""
    from publisher.session import Session

    with Session.opened(config) as session:
        return session.build(progress)


def make_sender(config: Config) -> Sender:
    from publisher.delivery import TelegramSender

    token = config.read_token()
    add_secret(token)
    return TelegramSender(token, config.telegram.api_base_url, config.telegram.timeout_seconds)


def require_chat(config: Config) -> None:
    if not config.telegram.chat_id and not config.telegram.routes:
        raise ConfigError("no chat to post to: set telegram.chat_id in the config")


async def push(config: Config, sender: Sender | None = None, *,
               stop: asyncio.Event | None = None,
               reedit_since: datetime | None = None) -> PushOutcome:
    """One delivery pass, as ``publisher push`` runs it: under the single-instance lock.

    Setting ``stop`` ends the pass after the send in flight (which is recorded).
    ``reedit_since``: also edit the posts sent since then whose rendering differs.
    """
    from publisher.session import Session

    require_chat(config)
    sender = sender or make_sender(config)
    with instance_lock(config.state.url), Session.opened(config, sender=sender,
                                                        stop=stop) as session:
        try:
            return await session.push(reedit_since=reedit_since)
        finally:
            await sender.close()


async def deliver(
    config: Config, store: Store, dispatcher: Dispatcher, catalog: Catalog,
    corpus: CorpusReport,
) -> PushOutcome:
    """Post what the plan of a synced catalog says (``Session.deliver``); records the run."""
    from publisher.session import Session

    return await Session(config, store, catalog=catalog).deliver(dispatcher, corpus)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# -- the pure path ---------------------------------------------------------------------------


def load_and_select(config: Config, progress: Progress | None = None) -> LoadReport:
    result = load_articles(config.articles.dir, article_limits(config), progress)
    return LoadReport(result, select(result.articles, config.select.min_quality))


def dry_run(config: Config) -> DryRun:
    """What a push would post now, rendered (``Session.dry_run``): nothing is sent, and
    nothing but the parse cache is written."""
    from publisher.session import Session

    with Session.for_dry_run(config) as session:
        return session.dry_run()
