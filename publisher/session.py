"""One session: the store, the catalog and the sender of one command or one service tick.

``sync`` brings the catalog in line with the article folder, ``build`` writes the feeds,
``plan`` says what a push would do now (``plan.read_plan``: the only code that decides what
is sent), ``push`` executes that plan through the ``Dispatcher`` (claims, pacing, recovery,
orphaning, migrations), and ``dry_run`` renders the same plan from the synced catalog,
changing nothing but the parse cache.

``publisher build``, ``push`` and ``push --dry-run`` open a session of their own
(``Session.opened``); ``publisher run`` makes one per tick over the connections it keeps
(``service.Service``), the catalog's sync on a connection of its own (``writer``), used
from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from publisher.catalog import Catalog
from publisher.config import Config
from publisher.errors import PublisherError
from publisher.loader import Progress
from publisher.logs import redact_text
from publisher.models import Article
from publisher.pipeline import (
    ROUTING_KEY,
    ROUTING_VERSION,
    BuildReport,
    CorpusReport,
    DryRun,
    DryRunItem,
    PushOutcome,
    route_warnings,
    sync_corpus,
    write_current_feeds,
)
from publisher.state import (
    Pacing,
    PlannedMarks,
    RunRecord,
    SQLStore,
    Store,
    open_store,
    state_exists,
    utc_now_iso,
)
from publisher.text import plural

if TYPE_CHECKING:  # a build needs none of these (nor the Telegram libraries under them)
    from publisher.delivery import Sender
    from publisher.destinations import Destinations
    from publisher.dispatch import Dispatcher
    from publisher.fanout import DmReport
    from publisher.feeds import BuildResult
    from publisher.messages import Message
    from publisher.plan import Action, Plan


class Session:
    """The store, the catalog and the sender of one command or one service tick."""

    def __init__(self, config: Config, store: Store, *, sender: Sender | None = None,
                 catalog: Catalog | None = None, writer: Catalog | None = None,
                 stop: asyncio.Event | None = None) -> None:
        """``catalog``: the one plans, pushes and lookups read (by default on the store's
        connection); ``writer``: the one syncs and feed writes use (by default the same).
        ``stop``: setting it ends a push after the send in flight."""
        self.config = config
        self.store = store
        self.sender = sender
        self.catalog = catalog or Catalog(store.db)
        self.writer = writer or self.catalog
        self._stop = stop

    @classmethod
    @contextlib.contextmanager
    def opened(cls, config: Config, *, sender: Sender | None = None,
               stop: asyncio.Event | None = None) -> Iterator[Session]:
        """A session over the state database of ``config``, closed at the end."""
        store = open_store(config.state.url)
        try:
            yield cls(config, store, sender=sender, stop=stop)
        finally:
            store.close()

    @classmethod
    @contextlib.contextmanager
    def for_dry_run(cls, config: Config) -> Iterator[Session]:
        """A session over the state, or, when there is none yet, over an empty one in a
        temporary folder: a dry run never creates the state a later push starts from."""
        if state_exists(config.state.url):
            with cls.opened(config) as session:
                yield session
            return
        with tempfile.TemporaryDirectory(prefix="publisher-dry-run-") as folder:
            store = SQLStore.open(f"sqlite:///{folder}/state.db")
            try:
                yield cls(config, store)
            finally:
                store.close()

    # -- the catalog and the feeds -----------------------------------------------------------

    def sync(self, progress: Progress | None = None, stop: threading.Event | None = None,
             paths: Collection[str] | None = None) -> CorpusReport:
        """Sync the catalog (only ``paths`` when a file watcher says only those changed)."""
        return sync_corpus(self.config, self.writer, progress, stop, paths)

    def write_feeds(self) -> BuildResult | None:
        """The feeds whose entries changed; None when every file is current."""
        return write_current_feeds(self.config, self.writer)

    def build(self, progress: Progress | None = None) -> BuildReport:
        """``publisher build``: sync, write the feeds that changed, record the run."""
        started = time.perf_counter()
        started_at = utc_now_iso()
        try:
            corpus = self.sync(progress)
            feeds = self.write_feeds()
        except PublisherError as exc:  # recorded: builds failing in a row make an alert
            self.record("build", started_at, False, {"error": redact_text(str(exc))})
            raise
        report = BuildReport(corpus, feeds, time.perf_counter() - started)
        self.record("build", started_at, True, report.summary())
        return report

    def record(self, kind: str, started_at: str, ok: bool, summary: dict[str, object]) -> None:
        """A run of ``kind`` ("build", "push") for ``publisher status``, ending now."""
        self.store.record_run(RunRecord(kind, started_at, utc_now_iso(), ok, summary))

    # -- the plan ----------------------------------------------------------------------------

    def plan(self, now: datetime | None = None,
             destinations: Destinations | None = None) -> Plan:
        """What a push would do at ``now`` (by default: now) from the synced catalog, with
        the destinations as the state remembers them unless given; nothing is written."""
        from publisher.destinations import remembered_destinations
        from publisher.plan import read_plan

        destinations = destinations or remembered_destinations(self.config, self.store)
        replan, new = self._articles_to_plan(destinations)
        return read_plan(self.store, self.config, new, replan, self.catalog.selected_article,
                         destinations, now or datetime.now(UTC), _pacing(self.config))

    def _routing(self, destinations: Destinations) -> str:
        """A digest of what routes articles: a push that finds another plans every article
        again. The chats as last resolved are part of it: a destination that now names
        another chat (or resolved at last) is planned again, and what its old chat waited
        for orphaned."""
        telegram = self.config.telegram
        remembered = [item.key for item in destinations.items]
        parts = [ROUTING_VERSION, telegram.chat_id, json.dumps(telegram.routes, sort_keys=True),
                 str(telegram.max_age_hours), json.dumps(remembered)]
        # A destination's own max_age_hours too (only when one is set: the digest of a
        # config without any stays what it was, and nothing is planned again for it).
        ages = {name: chat["max_age_hours"] for name, chat in telegram.chats.items()
                if "max_age_hours" in chat}
        if ages:
            parts.append(json.dumps(ages, sort_keys=True))
        return _digest(*parts)

    def _articles_to_plan(self, destinations: Destinations) -> tuple[bool, list[Article]]:
        """Unchanged routing: what is new or changed since it was last planned; else every
        selected article, which may owe a post somewhere new (or no longer)."""
        replan = self._routing(destinations) != self.catalog.get_meta(ROUTING_KEY)
        new = list(self.catalog.selected_articles()) if replan \
            else PlannedMarks(self.catalog.db).unplanned_articles()
        return replan, new

    # -- push and dry run --------------------------------------------------------------------

    async def push(self, corpus: CorpusReport | None = None, *,
                   reedit_since: datetime | None = None,
                   dm_seconds: float | None = None) -> PushOutcome:
        """Sync (unless ``corpus`` says it was), plan and execute the plan; records the run.
        The caller holds the instance lock and closes the sender. ``reedit_since``:
        ``publisher push --reedit``; ``dm_seconds``: the longest the DMs to followers may
        take after the channel posts (None: until none is due)."""
        from publisher.dispatch import Dispatcher

        if self.sender is None:  # a caller's mistake, not the operator's
            raise TypeError("Session.push needs a sender")
        corpus = corpus or self.sync()
        dispatcher = Dispatcher(self.store, self.sender, self.config, stop=self._stop,
                                reedit_since=reedit_since)
        return await self.deliver(dispatcher, corpus, dm_seconds=dm_seconds)

    async def deliver(self, dispatcher: Dispatcher, corpus: CorpusReport, *,
                      dm_seconds: float | None = None) -> PushOutcome:
        """Execute the plan of a synced catalog with ``dispatcher``; records the run."""
        started = time.perf_counter()
        started_at = utc_now_iso()
        routing = self._routing(dispatcher.destinations)
        replan, new = self._articles_to_plan(dispatcher.destinations)
        report = await dispatcher.run(new, self.catalog.selected_article, replan=replan)
        # An edit left for later (pacing, max_per_run, a stop) keeps its article unplanned.
        unedited = {article_id for article_id, _chat in dispatcher.edits_left}
        PlannedMarks(self.catalog.db).mark_planned(
            [article for article in new if article.id not in unedited])
        # Half applied (a destination's chat unknown, rows re-keyed): planned again next time.
        self.catalog.set_meta(ROUTING_KEY, routing if dispatcher.routing_settled else "")
        dms = await self._send_dms(dispatcher, dm_seconds)
        labels = dispatcher.destinations
        open_posts = {labels.label(chat): states
                      for chat, states in self.store.open_counts().items()}
        outcome = PushOutcome(corpus, report, corpus.seconds + time.perf_counter() - started,
                              open_posts, route_warnings(self.config, corpus.topic_slugs),
                              dms, dispatcher.fanned_out)
        self.record("push", started_at, report.ok, outcome.summary())
        return outcome

    async def _send_dms(self, dispatcher: Dispatcher, seconds: float | None) -> DmReport | None:
        """After the channel posts: the due DMs to followers (``fanout``), when enabled."""
        from publisher.fanout import FanOutSender

        if not self.config.followers.enabled or dispatcher.stop_requested or self.sender is None:
            return None
        fanout = FanOutSender(self.store, self.sender, self.config, owner=dispatcher.owner,
                              stop=self._stop)
        deadline = None if seconds is None else time.time() + seconds
        return await fanout.run(self.catalog.selected_article, deadline)

    def dry_run(self, now: datetime | None = None) -> DryRun:
        """What a push would post now, rendered: the plan of the synced catalog (the parse
        cache is all that changes); nothing is sent and the ledger is not touched."""
        from publisher.destinations import (
            maybe_one_chat,
            remembered_destinations,
            unmatched_names,
            waiting_for_unmatched,
        )
        from publisher.errors import RenderError
        from publisher.messages import render_for
        from publisher.plan import ActionKind, resolve_line, retract_line

        corpus = self.sync()
        destinations = remembered_destinations(self.config, self.store)
        plan = self.plan(now, destinations)
        result = DryRun(corpus, plan, notes=maybe_one_chat(destinations),
                        route_warnings=route_warnings(self.config, corpus.topic_slugs))
        unmatched = unmatched_names(self.store)
        if unmatched:
            result.notes.append(f"{waiting_for_unmatched('a destination', unmatched)}: a push "
                                "asks Telegram first, and what went out there is not sent again")
        order = {key: index for index, key in enumerate(destinations.keys())}
        actions = sorted(plan.actions, key=lambda action: (
            action.published_at, action.article_id, order.get(action.target.chat_id, len(order))
        ))
        for action in actions:
            if action.kind is ActionKind.EDIT:
                result.edits.append(f"edit {action.article_id} in {action.target.label}: "
                                    f"{action.change} changed")
                continue
            if action.kind is ActionKind.RETRACT:
                result.edits.append(retract_line(action))
                continue
            if action.kind is ActionKind.RESOLVE:
                result.edits.append(resolve_line(action))
                continue
            if action.kind is ActionKind.DIGEST:
                result.items.append(DryRunItem(action.target.label, self._digest(plan, action)))
                continue
            article = plan.articles.get(action.article_id) \
                or self.catalog.selected_article(action.article_id)
            if article is None:  # removed by another process since the plan was read
                continue
            try:
                message = render_for(article, self.config, action.target.label)
            except RenderError as exc:
                result.notes.append(f"{action.target.label}: {article.id} cannot be posted "
                                    f"({exc}): a push records it as failed")
                continue
            if action.silent:  # quiet hours, "silent" mode
                message = dataclasses.replace(message, silent=True)
            result.items.append(DryRunItem(action.target.label, message))
        result.notes += [f"{held.target.label}: {held.reason} ({plural(held.count, 'post')} "
                         "left)" for held in plan.held]
        result.edits += [fanout.line() for fanout in plan.fanouts if fanout.followers]
        return result


    def _digest(self, plan: Plan, action: Action) -> Message:
        """A digest the dry run shows: its articles as the push will list them."""
        from publisher.digest import digest_message

        found = (plan.articles.get(item) or self.catalog.selected_article(item)
                 for item in action.items)
        settings = self.config.settings_for(action.target.label)
        message = digest_message(action.article_id, [a for a in found if a is not None],
                                 settings, self.config.telegram.timezone)
        return dataclasses.replace(message, silent=action.silent or settings.silent)


def _pacing(config: Config) -> Pacing:
    from publisher.dispatch import paced_with_margin

    return paced_with_margin(config)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
