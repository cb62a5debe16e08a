"""The pipeline: load -> select -> build feeds and/or deliver. Each call returns a report.

``build`` and ``push`` work through the catalog in the state database, so unchanged files
are never parsed twice and only the articles the feeds show (or a push sends) are held in
memory. ``load_and_select`` is the pure path (no state at all) used by ``check`` and
``push --dry-run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from publisher import __version__
from publisher.catalog import Catalog, FeedSelection
from publisher.config import Config
from publisher.errors import ConfigError
from publisher.loader import Limits, LoadResult, Notice, Problem, Progress, load_articles
from publisher.logs import add_secret
from publisher.models import Article
from publisher.names import ALL_SLUG, FEED_SUFFIXES, PAGE_NAMES, feed_name
from publisher.selection import select
from publisher.state import (
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
    from publisher.destinations import Destinations
    from publisher.dispatch import Dispatcher, PushReport
    from publisher.feeds import BuildResult
    from publisher.messages import Message

FEEDS_KEY = "feeds_digest"
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

    def summary(self) -> dict[str, object]:
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

    def summary(self) -> dict[str, object]:
        report = self.report
        return {
            "files": self.corpus.files,
            "bad": len(self.corpus.problems),
            "selected": self.corpus.selected,
            "new": report.new,
            "sent": report.total("sent"),
            "failed": report.total("failed"),
            "uncertain": report.total("uncertain"),
            "skipped": report.total("skipped"),
            "orphaned": report.total("orphaned"),
            "rate_limited": report.total("rate_limited"),
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
    loaded: LoadReport
    items: list[DryRunItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # destinations that may be one chat
    route_warnings: list[str] = field(default_factory=list)


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


def write_current_feeds(config: Config, catalog: Catalog) -> BuildResult | None:
    """Render and write the feeds whose entries changed; None when every file is current.

    One writer at a time per state (instances sharing a PostgreSQL state included); what
    was written is remembered per host and folder, since each host may have its own disk.
    """
    with catalog.db.exclusive("feeds"):
        return _write_current_feeds(config, catalog)


def feeds_key(config: Config) -> str:
    return f"{FEEDS_KEY}:{socket.gethostname()}:{config.feeds.dir.resolve()}"


def _write_current_feeds(config: Config, catalog: Catalog) -> BuildResult | None:
    selection = catalog.feed_selection(config.feeds.max_items)
    # A new publisher version may render differently: its first build renders every feed.
    settings = _digest(__version__, repr(config.feeds))
    key = feeds_key(config)
    last = _json_object(catalog.get_meta(key))
    known = last.get("feeds", {}) if last.get("settings") == settings else {}
    known = {slug: digest for slug, digest in known.items() if _feed_files_exist(config, slug)}
    pages = all((config.feeds.dir / name).is_file() for name in PAGE_NAMES)
    if last.get("entries") == selection.digest and known and known == last.get("feeds") and pages:
        if config.feeds.websub_hub:
            from publisher.websub import announce_changed

            announce_changed(None, config.feeds)  # retry what the hub has not accepted yet
        return None
    from publisher.feeds import HEADLINES, render_changed_feeds, write_feeds
    from publisher.websub import announce_changed

    digests = _feed_digests(selection)
    counts = last.get("counts", {}) if known else {}
    unchanged = {
        slug: counts[slug]
        for slug, digest in digests.items()
        if known.get(slug) == digest and isinstance(counts.get(slug), int)
    }
    paths = _paths_to_render(selection, unchanged, HEADLINES)
    articles, moved = catalog.articles_as_selected(selection, paths)
    rendering = render_changed_feeds(articles, config.feeds, unchanged)
    result = write_feeds(rendering.rendered, config.feeds.dir, rendering.unchanged)
    # What another process changed after the selection was read was rendered as it is now,
    # not as digested: the feeds holding it, and the pages, are not remembered as current
    # (a later return to the digested records must not find them "unchanged").
    stale = _feeds_holding(selection, moved)
    feeds = {slug: digest for slug, digest in digests.items()
             if slug in rendering.counts and slug not in stale}
    catalog.set_meta(
        key,
        json.dumps({"entries": "" if moved else selection.digest, "settings": settings,
                    "feeds": feeds, "counts": rendering.counts}),
    )
    announce_changed(result, config.feeds)
    return result


def _feed_members(selection: FeedSelection) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    yield ALL_SLUG, selection.newest
    yield from selection.topics.items()


def _feed_digests(selection: FeedSelection) -> dict[str, str]:
    """Per feed, a digest of the records it may show, in order (the settings are compared on
    their own): equal digests, equal files."""
    digests = {}
    for slug, members in _feed_members(selection):
        digest = hashlib.blake2b(slug.encode(), digest_size=16)
        for _, record in members:
            digest.update(record.encode())
        digests[slug] = digest.hexdigest()
    return digests


def _feeds_holding(selection: FeedSelection, paths: set[str]) -> set[str]:
    if not paths:
        return set()
    return {slug for slug, members in _feed_members(selection)
            if any(path in paths for path, _ in members)}


def _paths_to_render(selection: FeedSelection, unchanged: Mapping[str, int],
                     headlines: int) -> list[str]:
    """Every article of a changed feed, the first ``headlines`` of an unchanged one (for the
    landing page); newest first."""
    wanted: set[str] = set()
    for slug, members in _feed_members(selection):
        shown = members[:headlines] if slug in unchanged else members
        wanted.update(path for path, _ in shown)
    return [path for path in selection.paths if path in wanted]


def _json_object(text: str | None) -> dict[str, Any]:
    """A JSON object kept in the state, or {} when absent or unreadable (then all is redone)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _feed_files_exist(config: Config, slug: str) -> bool:
    return all((config.feeds.dir / feed_name(slug, kind)).is_file() for kind in FEED_SUFFIXES)


def build(config: Config, progress: Progress | None = None) -> BuildReport:
    """``publisher build``: sync the catalog, then write the feeds if they changed."""
    started = time.perf_counter()
    started_at = utc_now_iso()
    store = open_store(config.state.url)
    try:
        catalog = Catalog(store.db)
        corpus = sync_corpus(config, catalog, progress)
        feeds = write_current_feeds(config, catalog)
        report = BuildReport(corpus, feeds, time.perf_counter() - started)
        store.record_run(RunRecord("build", started_at, utc_now_iso(), True, report.summary()))
    finally:
        store.close()
    return report


def make_sender(config: Config) -> Sender:
    from publisher.delivery import TelegramSender

    token = config.read_token()
    add_secret(token)
    return TelegramSender(token, config.telegram.api_base_url, config.telegram.timeout_seconds)


def require_chat(config: Config) -> None:
    if not config.telegram.chat_id and not config.telegram.routes:
        raise ConfigError("no chat to post to: set telegram.chat_id in the config")


async def push(config: Config, sender: Sender | None = None, *,
               stop: asyncio.Event | None = None) -> PushOutcome:
    """One delivery pass, as ``publisher push`` runs it: under the single-instance lock.

    Setting ``stop`` ends the pass after the send in flight (which is recorded).
    """
    from publisher.dispatch import Dispatcher

    require_chat(config)
    sender = sender or make_sender(config)
    with instance_lock(config.state.url):
        store = open_store(config.state.url)
        try:
            catalog = Catalog(store.db)
            corpus = sync_corpus(config, catalog)
            try:
                dispatcher = Dispatcher(store, sender, config, stop=stop)
                return await deliver(config, store, dispatcher, catalog, corpus)
            finally:
                await sender.close()
        finally:
            store.close()


async def deliver(
    config: Config, store: Store, dispatcher: Dispatcher, catalog: Catalog,
    corpus: CorpusReport,
) -> PushOutcome:
    """Post what is new and due from a synced catalog; records the run."""
    started = time.perf_counter()
    started_at = utc_now_iso()
    # The chats as last resolved are part of it: a destination that now names another chat
    # (or resolved at last) is planned again, and what its old chat waited for orphaned.
    remembered = [item.key for item in dispatcher.destinations.items]
    routing = _digest(ROUTING_VERSION, config.telegram.chat_id,
                      json.dumps(config.telegram.routes, sort_keys=True),
                      str(config.telegram.max_age_hours), json.dumps(remembered))
    replan = routing != catalog.get_meta(ROUTING_KEY)
    # Unchanged routing: what is new or changed since it was last planned; else every
    # selected article, which may owe a post somewhere new (or no longer).
    marks = PlannedMarks(catalog.db)
    new = list(catalog.selected_articles()) if replan else marks.unplanned_articles()
    report = await dispatcher.run(new, catalog.selected_article, replan=replan)
    marks.mark_planned(new)
    # Half applied (a destination's chat unknown, rows re-keyed): planned again next time.
    catalog.set_meta(ROUTING_KEY, routing if dispatcher.routing_settled else "")
    labels = dispatcher.destinations
    open_posts = {labels.label(chat): states for chat, states in store.open_counts().items()}
    outcome = PushOutcome(corpus, report, corpus.seconds + time.perf_counter() - started,
                          open_posts, route_warnings(config, corpus.topic_slugs))
    store.record_run(RunRecord("push", started_at, utc_now_iso(), report.ok, outcome.summary()))
    return outcome


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# -- the pure path ---------------------------------------------------------------------------


def load_and_select(config: Config, progress: Progress | None = None) -> LoadReport:
    result = load_articles(config.articles.dir, article_limits(config), progress)
    return LoadReport(result, select(result.articles, config.select.min_quality))


def dry_run(config: Config) -> DryRun:
    """What a push would post now, rendered; nothing is sent and nothing is written."""
    from publisher.destinations import maybe_one_chat, waiting_for_unmatched
    from publisher.dispatch import plan_deliveries
    from publisher.messages import render_message
    from publisher.selection import topic_slug

    loaded = load_and_select(config)
    known, destinations, unmatched = _known_pairs(config)
    loaded.selected = _with_remembered_ids(loaded.selected, config)
    now = datetime.now(UTC)
    budget: dict[str, int] = {}
    by_id = {article.id: article for article in loaded.selected}
    slugs = {topic_slug(topic) for article in loaded.selected for topic in article.topics}
    result = DryRun(loaded, notes=maybe_one_chat(destinations),
                    route_warnings=route_warnings(config, slugs))
    if unmatched:
        result.notes.append(f"{waiting_for_unmatched('a destination', unmatched)}: a push asks "
                            "Telegram first, and what went out there is not sent again")
    planned = sorted(
        (p for p in plan_deliveries(loaded.selected, config, now, destinations)
         if p.state == PENDING),
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
        result.items.append(DryRunItem(destinations.label(item.chat_id), message))
    return result


def _with_remembered_ids(articles: list[Article], config: Config) -> list[Article]:
    """The articles with the ids the catalog keeps for their files (the identity rule, see
    ``catalog._kept_ids``), as a push would see them."""
    if not articles or not state_exists(config.state.url):
        return articles
    store = open_store(config.state.url, readonly=True)
    try:
        kept = {} if store.empty else Catalog(store.db).kept_ids()
    finally:
        store.close()
    return [
        dataclasses.replace(article, id=kept[article.source_path])
        if kept.get(article.source_path, article.id) != article.id else article
        for article in articles
    ]


def _known_pairs(config: Config) -> tuple[set[tuple[str, str]], Destinations, list[str]]:
    """The pairs the ledger knows, the destinations as it remembers them (a dry run asks
    Telegram nothing), and the names it keeps posts under not matched to a chat yet."""
    from publisher.destinations import remembered_destinations, unmatched_names

    if not state_exists(config.state.url):
        return set(), remembered_destinations(config, None), []
    store = open_store(config.state.url, readonly=True)
    try:
        if store.empty:
            return set(), remembered_destinations(config, None), []
        return (store.known_pairs(), remembered_destinations(config, store),
                unmatched_names(store))
    finally:
        store.close()
