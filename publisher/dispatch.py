"""Dispatch: the ledger-driven loop that posts pending articles, paced and fault-tolerant.

At its start a push asks Telegram which chat each destination is (``destinations``): the
ledger keys chats by that numeric id. Then it reads the plan (``plan.read_plan``), records
its new pairs, and executes it. For each chat, oldest article first: reserve a pacing slot
in the state, wait for it, claim the plan's oldest due pair (``sending``, committed, with
this process's name and a lease), post, then record the outcome. Several processes sharing a
PostgreSQL state run this same loop; the claim is what keeps them from posting anything
twice. Outcomes decide what happens next:

* posted -> ``sent`` with the message id;
* provably not posted (connection refused, 5xx) -> back to ``pending`` with backoff,
  a bounded number of tries per run, then left for the next run;
* maybe posted (timeout after the request left) -> ``uncertain`` (or ``pending`` again for
  chats configured ``on_uncertain = "resend"``);
* 429 -> wait ``retry_after`` plus jitter and retry the same message, never dropping it (a
  retry_after that is not a number, negative or above ``max_wait_seconds`` counts as
  ``max_wait_seconds``, which leaves the chat for the next run);
* 400 about the message -> ``failed`` with the reason; 403 -> the chat stops for this run;
* a pair its destination no longer wants (a chat or route removed) -> ``orphaned``, unsent;
  never while a destination's chat is unknown (it may be the pair's chat).

A destination may be a forum topic ("-100123/42"): its posts carry ``message_thread_id``,
its ``max_age_hours`` and ``max_per_run`` are its own (``Config.settings_for``), and its
pacing slots are its chat's, shared by every topic of the group (Telegram's limits are per
chat).

Pacing keeps a margin (``PACING_MARGIN``) below Telegram's limits: a request paced exactly at
the limit arrives a few milliseconds early as often as late, and then draws a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from publisher import alerts, reconcile
from publisher.config import Config
from publisher.delivery import (
    Ambiguous,
    ChatForbidden,
    ChatMigrated,
    EntitiesRejected,
    NotSent,
    PhotoRejected,
    RateLimited,
    Rejected,
    Sender,
    SendError,
    Unauthorized,
)
from publisher.destinations import (
    MAX_MIGRATIONS,
    Destinations,
    is_chat_id,
    remembered_destinations,
    resolve_destinations,
)
from publisher.digest_ledger import recover_digests
from publisher.errors import RenderError
from publisher.forum import chat_of, split_key, thread_of, with_thread
from publisher.logs import event
from publisher.messages import Message, render_for
from publisher.models import Article
from publisher.photos import photo_poster
from publisher.plan import (  # plan_deliveries: re-exported, where it used to live
    NO_LONGER_SELECTED,
    PACING_HELD,
    Action,
    ActionKind,
    Entry,
    Plan,
    is_digest,
    is_edit,
    is_resolve,
    is_retract,
    max_per_run_reason,
    plan_deliveries,  # noqa: F401
    read_plan,
    reconciling,
    too_old_reason,
)
from publisher.reconcile import Probe, Resolution, Verdict
from publisher.retract import has_retracting
from publisher.state import (
    ORPHANED,
    SKIPPED,
    UNCERTAIN,
    ChatRecord,
    Delivery,
    Pacing,
    Store,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
MAX_RATE_LIMITS = 5  # 429s for one article in one run; then the chat waits for the next run
UNSURE_WAIT_SECONDS = 300.0  # a pair that may belong to a destination not resolved yet
RESOLVING_HELD = "an uncertain send is looked for first (telegram.audit_chat)"
# Sends stay this fraction slower than each of Telegram's limits (per chat, per minute, bot
# wide): enough for tens of milliseconds of network jitter per second of interval.
PACING_MARGIN = 0.05


@dataclass
class ChatReport:
    """One destination in one push. Counts are of ledger changes: ``uncertain`` includes
    sends found interrupted (and held), ``skipped`` pairs too old when planned."""

    sent: int = 0
    failed: int = 0
    digests: int = 0  # digest messages sent; their articles are counted in ``sent`` too
    in_digests: int = 0  # of ``sent``: the articles those digests listed or counted
    uncertain: int = 0
    skipped: int = 0
    orphaned: int = 0
    rate_limited: int = 0
    recovered: int = 0  # of ``uncertain``: sends an earlier process left in flight
    edited: int = 0  # posts edited to follow their article (``edit_send``)
    gone: int = 0  # posts found deleted in the chat when edited
    retracted: int = 0  # posts of unpublished articles deleted or marked (``retract``)
    # Uncertain sends a look settled (``reconcile``): found posted (then in ``sent`` too
    # when the send was this push's), or found not posted and sent again.
    resolved: int = 0
    error: str = ""
    held: str = ""  # why posts due now were left for a later push (pacing, max_per_run...)


@dataclass
class PushReport:
    new: int = 0
    chats: dict[str, ChatReport] = field(default_factory=dict)  # by destination label
    fatal: str = ""

    def chat(self, chat_id: str) -> ChatReport:
        return self.chats.setdefault(chat_id, ChatReport())

    def total(self, name: str) -> int:
        return sum(getattr(report, name) for report in self.chats.values())

    @property
    def errors(self) -> dict[str, str]:
        return {chat: report.error for chat, report in self.chats.items() if report.error}

    @property
    def held(self) -> dict[str, str]:
        """Why chats left posts that were due for a later push (without an error)."""
        return {chat: report.held for chat, report in self.chats.items()
                if report.held and not report.error}

    @property
    def nothing_delivered(self) -> bool:
        """Posts were tried and not one surely went out: each ended uncertain or failed
        (sends an earlier process left in flight were not tried by this push)."""
        tried_uncertain = self.total("uncertain") - self.total("recovered")
        return self.total("sent") == 0 and tried_uncertain + self.total("failed") > 0

    @property
    def ok(self) -> bool:
        return (not self.fatal and not self.errors and self.total("failed") == 0
                and not self.nothing_delivered)


Sleep = Callable[[float], Awaitable[None]]
Lookup = Callable[[str], Article | None]


def paced_with_margin(config: Config) -> Pacing:
    """Telegram's limits from the config, each made ``PACING_MARGIN`` stricter."""
    slower = 1.0 + PACING_MARGIN
    telegram = config.telegram
    return Pacing(
        per_chat_interval=telegram.per_chat_interval_seconds * slower,
        per_chat_per_minute=telegram.per_chat_per_minute,
        global_interval=slower / telegram.global_per_second,
        max_wait=telegram.max_wait_seconds,
        window=60.0 * slower,
    )


@dataclass(frozen=True)
class Prepared:
    article: Article
    message: Message
    target: str  # the chat id to post to (where the chat migrated, if it did)


@dataclass(frozen=True)
class Skip:
    article: Article | None  # None: no longer selected


@dataclass(frozen=True)
class Unrenderable:
    """The destination's template cannot make a post of the article Telegram would accept."""

    reason: str


@dataclass(frozen=True)
class Orphan:
    """The pair's destination no longer wants the article (its route or chat removed)."""


@dataclass(frozen=True)
class Unsure:
    """The known destinations no longer want the article here, but one not resolved yet may
    be this chat: the pair waits (orphaned or sent once that destination resolves)."""

    reason: str


class Outcome(enum.Enum):
    DONE = "done"  # the article reached a final state in this chat
    RETRY = "retry"  # back to pending; the chat goes on
    MOVED = "moved"  # the chat migrated: it goes on under its new id
    STOP = "stop"  # the chat stops for this run


@dataclass
class Tries:
    """What happened to one article in one chat during this run."""

    not_sent: int = 0
    migrations: int = 0
    rate_limited: int = 0


@dataclass(frozen=True)
class Unavailable:
    """Why nothing can be posted in this run (every chat waits)."""

    reason: str
    error: str  # what each destination with posts waiting reports


@dataclass
class ChatRun:
    """One chat's loop in this run; ``key`` changes when the chat migrates."""

    key: str
    report: ChatReport
    budget: int | None
    queue: list[Entry] = field(default_factory=list)  # the plan's pairs still to claim
    planned_key: str = ""  # the chat's key when planned (before a migration)
    tries: dict[str, Tries] = field(default_factory=dict)
    digest: Action | None = None  # the plan's digest for this chat, sent after the queue
    digest_chat: bool = False  # the destination gets digests, never single posts


def instance_name() -> str:
    """Who holds a claim: visible in the ledger, unique per process."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Dispatcher:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        config: Config,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        stop: asyncio.Event | None = None,
        reedit_since: datetime | None = None,
    ) -> None:
        """``stop``: an event whose setting is a stop request (as ``request_stop``).
        ``reedit_since``: ``publisher push --reedit``, the posts sent since then are edited
        wherever their rendering differs (``plan.plan_edits``)."""
        self._reedit_since = reedit_since
        self._store = store
        self._sender = sender
        self._config = config
        self._settings = config.telegram
        self._lease_seconds = config.state.lease_seconds
        self._send_deadline = config.state.lease_seconds * 0.9
        self._pacing = paced_with_margin(config)
        self._sleep = sleep
        self._clock = clock
        self._owner = instance_name()
        self._stopping = stop if stop is not None else asyncio.Event()
        self._photos = photo_poster(store, sender, config)
        self._kinds: dict[tuple[str, str], str] = {}  # (key, article): how it went out
        self._fatal = ""
        self.destinations = remembered_destinations(config, store)
        self.plan = Plan(datetime.fromtimestamp(clock(), UTC))  # what this run executes
        # False when this push left the routing half applied (pairs that may be orphaned
        # were kept pending, or rows were re-keyed): the next push plans everything again.
        self.routing_settled = True
        self.alerts: list[alerts.Alert] = []  # for telegram.alert_chat, sent when the push ends
        # Articles whose posts the plan would edit and this push has not (yet): left
        # unplanned for the next push (``Session.deliver``).
        self.edits_left: set[tuple[str, str]] = set()  # (article, chat)
        self.fanned_out = 0  # DM rows to followers this push planned (``fanout``)
        self._chats: dict[str, ChatRecord] | None = None  # what getChat said, by chat id

    def request_stop(self) -> None:
        """Finish the send in flight, record it, and post nothing more in this run; a wait
        (pacing, a 429, a retry's backoff) ends at once."""
        self._stopping.set()

    @property
    def owner(self) -> str:
        """This process's name in the ledger's claims."""
        return self._owner

    @property
    def stop_requested(self) -> bool:
        return self._stopping.is_set()

    async def _pause(self, seconds: float) -> None:
        """The injected sleep, cut short by a stop request."""
        if self._stopping.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeper, stopper):
                waiter.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)

    async def run(self, new_articles: Sequence[Article], lookup: Lookup, *,
                  replan: bool = False) -> PushReport:
        """Plan (``plan.read_plan``), record the plan's new pairs, then execute it.

        ``lookup`` gives the currently selected article of an id, or None when it is no
        longer selected (its pending posts are then skipped). ``replan``: the routing
        changed and ``new_articles`` is every selected article; pairs no longer wanted are
        orphaned, orphaned ones wanted again are pending again.
        """
        report = PushReport()
        destinations = self.destinations = remembered_destinations(self._config, self._store)
        self._recover(destinations, report)
        # Telegram is asked only when there is something to plan or to post (pairs kept
        # under a name not resolved yet may be a destination's).
        names = [key for key in self._store.chat_keys() if not is_chat_id(key)]
        if reconciling(self._config):
            reconcile.drop_settled(self._store.db)
        work = (bool(new_articles) or self._reedit_since is not None
                or self._store.has_pending([*destinations.keys(), *names])
                or has_retracting(self._store.db, self._settings.on_retract)
                or (reconciling(self._config) and bool(reconcile.due_probes(self._store.db))))
        unavailable = await self._start_sender() if work else None
        if work and unavailable is None:
            destinations, unavailable = await self._resolve(destinations)
        # Planned even when Telegram is unusable (under the remembered ids): nothing is lost.
        self.destinations = destinations
        self._plan(new_articles, replan, lookup, report)
        if unavailable is not None:
            report.fatal = unavailable.reason
            pending = set(self._store.pending_chats())
            for item in destinations.items:
                if item.key in pending:
                    report.chat(item.configured).error = unavailable.error
            return report
        for item in destinations.items:
            if item.error:
                report.chat(item.configured).error = item.error
            if item.error and item.answered:
                self.alerts.append(alerts.stopped(item.key, item.configured, item.error))
        pending = set(self._store.pending_chats())
        edits = {action.target.chat_id for action in self.plan.actions
                 if is_edit(action) or is_retract(action) or is_resolve(action)}
        chats = [key for key in destinations.postable_keys() if key in pending or key in edits]
        # Every chat runs to its end even when another fails, so no send is left in flight
        # behind the report; the first unexpected error is raised after all have finished.
        outcomes = await asyncio.gather(
            *(self._run_chat(chat, lookup, report) for chat in chats), return_exceptions=True
        )
        await self._send_alerts()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        report.fatal = self._fatal
        return report

    async def _send_alerts(self) -> None:
        """This push's alerts, after its deliveries (``alerts.Alerter`` never raises)."""
        if self.alerts and self._settings.alert_chat:
            timeout = alerts.STOPPING_ALERT_TIMEOUT_SECONDS if self.stop_requested \
                else alerts.ALERT_TIMEOUT_SECONDS
            await alerts.Alerter(self._store.db, self._sender.send_text, self._config,
                                 self._clock, timeout=timeout).send(self.alerts)

    def _recover(self, destinations: Destinations, report: PushReport) -> None:
        """Sends a dead process left in flight: uncertain (counted as this push's), or
        pending again for at-least-once chats."""
        # The texts too: an earlier version keyed a chat by the config's text ("@OpNews").
        resend = ([*destinations.keys(), *(text.strip() for text in self._config.destinations)]
                  if self._settings.on_uncertain == "resend" else ())
        recovered = self._store.recover_interrupted_by_chat(resend, self._clock())
        if recovered:
            event(log, logging.WARNING, "recovered_interrupted_sends",
                  count=sum(recovered.values()))
        for (chat, state), count in recovered.items():
            if state == UNCERTAIN:
                chat_report = report.chat(destinations.label(chat))
                chat_report.uncertain += count
                chat_report.recovered += count
                self.alerts.append(alerts.uncertain(chat, destinations.label(chat), count,
                                                    "interrupted while sending"))
        recover_digests(self._store.db, self._store.db.shared, self._clock())

    async def _resolve(self, destinations: Destinations
                       ) -> tuple[Destinations, Unavailable | None]:
        try:
            return await resolve_destinations(self._config, self._store, self._sender), None
        except Unauthorized as exc:
            event(log, logging.ERROR, "unauthorized", reason=exc.reason)
            return destinations, Unavailable(exc.reason, exc.reason)

    def _plan(self, articles: Sequence[Article], replan: bool, lookup: Lookup,
              report: PushReport) -> None:
        """The plan, and its new pairs into the ledger (too old: skipped, counted as this
        push's); after a routing change, what is no longer wanted is orphaned and what is
        wanted again not."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        self.plan = read_plan(self._store, self._config, articles, replan, lookup,
                              self.destinations, now, self._pacing, self._reedit_since)
        self.edits_left = set(self.plan.edits_due)
        self._record_fanouts()
        planned = list(self.plan.pairs)
        added = self._store.add_deliveries_by_chat(planned)
        report.new = sum(added.values())
        moved: Counter[tuple[str, str]] = Counter()
        held = 0
        if replan:
            moved, held = self._store.reconcile(
                {(item.article_id, item.chat_id) for item in planned},
                {article.id for article in articles}, set(self.destinations.keys()),
                self._orphanable(),
            )
        self.routing_settled = not held and not self.destinations.rekeyed
        for (chat, state), count in (added + moved).items():
            if state == SKIPPED:
                report.chat(self.destinations.label(chat)).skipped += count
            elif state == ORPHANED:
                report.chat(self.destinations.label(chat)).orphaned += count

    def _record_fanouts(self) -> None:
        """The plan's DMs to followers into the ledger, before its channel pairs: an article
        with pairs in the ledger counts as planned before (``plan.plan_fanouts``)."""
        from publisher.fanout import record_fanout

        for fanout in self.plan.fanouts:
            self.fanned_out += record_fanout(self._store.db, fanout)

    def _orphanable(self) -> Callable[[str], bool]:
        """Which chats' pairs may be orphaned in this push: none while a destination's chat
        is unknown (it may be any of them); while names are kept that Telegram has not
        matched to a chat, only chats known by id unless every destination was confirmed
        (a name no confirmed chat goes by is no destination)."""
        destinations = self.destinations
        if not destinations.complete:
            return lambda chat: False
        if destinations.all_confirmed:
            return lambda chat: True
        return is_chat_id

    async def _start_sender(self) -> Unavailable | None:
        try:
            await self._sender.start()
        except Unauthorized as exc:
            event(log, logging.ERROR, "unauthorized", reason=exc.reason)
            return Unavailable(exc.reason, exc.reason)
        except SendError as exc:
            event(log, logging.ERROR, "telegram_unavailable", reason=exc.reason)
            return Unavailable(exc.reason, f"Telegram unavailable: {exc.reason}")
        return None

    async def _run_chat(self, chat_id: str, lookup: Lookup, report: PushReport) -> None:
        """Reserve a pacing slot, wait for it, claim the oldest due post, send it; repeat.

        The claim comes after the wait, so no claim is held while pacing; a slot left unused
        (nothing due, or the post skipped) is given back.
        """
        entries = self.plan.entries_for(chat_id)
        run = ChatRun(chat_id, report.chat(self.destinations.label(chat_id)),
                      self.destinations.settings_for(chat_id).max_per_run or None,
                      [entry for entry in entries if not (is_digest(entry) or is_edit(entry)
                                                          or is_retract(entry)
                                                          or is_resolve(entry))],
                      chat_id,
                      digest=self.plan.digest_for(chat_id),
                      digest_chat=bool(self.destinations.settings_for(chat_id).digest))
        if not await self._run_resolutions(run):
            return
        while not (self.stop_requested or self._fatal):
            if run.budget is not None and run.budget <= 0:
                if self._store.has_pending([run.key]):
                    run.report.held = max_per_run_reason(run.key, self.destinations)
                return
            if not run.queue:
                if run.digest is not None:
                    from publisher.digest_send import send_digest

                    await send_digest(self, run, run.digest, lookup)
                    run.digest = None
                    continue
                if await self._run_edits(run, lookup) and await self._run_retractions(run):
                    self._held_by_plan(run)
                return
            slot = await self._await_slot(run)
            if slot is None:
                return
            if not await self._claim_and_send(run, slot, lookup):
                return

    async def _await_slot(self, run: ChatRun) -> float | None:
        """A pacing slot of the chat's, waited for; None when the chat stops for this run:
        the next free slot is too far away (said in the report), or a stop came meanwhile
        (the slot given back). A forum topic's slots are its chat's: the group's topics
        share its pacing."""
        slot = self._store.reserve_send(chat_of(run.key), self._clock(), self._pacing)
        if slot is None:
            event(log, logging.INFO, "pacing_deferred", chat=self._label(run.key))
            run.report.held = PACING_HELD
            return None
        delay = slot - self._clock()
        if delay > 0:
            await self._pause(delay)
        if self.stop_requested or self._fatal:
            self._store.cancel_reservation(chat_of(run.key), slot)
            return None
        return slot

    async def _run_edits(self, run: ChatRun, lookup: Lookup) -> bool:
        """The plan's edits of the chat, after its new posts, each in a pacing slot of the
        chat's; False when the chat stopped for this run."""
        from publisher.delivery import Editor
        from publisher.edit_send import Edited, send_edit

        if not isinstance(self._sender, Editor) or run.key != run.planned_key:
            return True  # a test's sender without edits; a chat that moved: the next push
        for action in self.plan.edits_for(run.planned_key):
            slot = await self._await_slot(run)
            if slot is None:
                return False
            outcome = await send_edit(self._store.db, self._sender, self._config, run.key,
                                      self._label(run.key), action.article_id, lookup,
                                      datetime.fromtimestamp(self._clock(), UTC))
            self.edits_left.discard((action.article_id, run.planned_key))
            if outcome is Edited.EDITED:
                run.report.edited += 1
            elif outcome is Edited.GONE:
                run.report.gone += 1
            elif outcome is Edited.SKIPPED:  # no request: its slot is given back
                self._store.cancel_reservation(chat_of(run.key), slot)
        return True

    async def _run_retractions(self, run: ChatRun) -> bool:
        """The plan's retractions of the chat, after its edits, each in a pacing slot of
        the chat's; False when the chat stopped for this run."""
        from publisher.retract import Retracted, send_retract

        if run.key != run.planned_key:
            return True  # a chat that moved: the next push
        for action in self.plan.retractions_for(run.planned_key):
            slot = await self._await_slot(run)
            if slot is None:
                return False
            outcome = await send_retract(
                self._store.db, self._sender, self._settings.retract_template, run.key,
                self._label(run.key), action.article_id, self._settings.on_retract,
                datetime.fromtimestamp(self._clock(), UTC))
            if outcome in (Retracted.DELETED, Retracted.MARKED):
                run.report.retracted += 1
            elif outcome is Retracted.GONE:
                run.report.gone += 1
            elif outcome is Retracted.SKIPPED:  # no request: its slot is given back
                self._store.cancel_reservation(chat_of(run.key), slot)
        return True

    def _held_by_plan(self, run: ChatRun) -> None:
        """The plan's pairs are done: say why it left the chat's others for later."""
        held = self.plan.held_for(run.planned_key)
        if held is None or run.report.held or not self._store.has_pending([run.key]):
            return
        if held.reason == PACING_HELD:
            event(log, logging.INFO, "pacing_deferred", chat=self._label(run.key))
        run.report.held = held.reason

    def _claim_planned(self, run: ChatRun, now: float) -> tuple[Entry, Delivery] | None:
        """Claim the chat's first planned pair that is due, oldest first, as ``claim_next``
        would; a pair no longer pending (another instance took it) leaves the queue, one
        this run retries stays in it until it is due."""
        for entry in list(run.queue):
            item = self._store.claim_pair(entry.article_id, run.key, now, self._owner,
                                          now + self._lease_seconds)
            if item is not None:
                return entry, item
            if entry.article_id not in run.tries:
                run.queue.remove(entry)
        return None

    async def _claim_and_send(self, run: ChatRun, slot: float, lookup: Lookup) -> bool:
        """One claim in a reserved slot; False when the chat is done for this run."""
        now = self._clock()
        claimed = self._claim_planned(run, now)
        if claimed is None:
            self._store.cancel_reservation(chat_of(run.key), slot)
            return False
        entry, item = claimed
        try:
            prepared = self._prepare(item, lookup)
        except BaseException:
            # Nothing has left yet: give the pair back rather than leave it "sending"
            # (which the next run would have to call uncertain).
            with contextlib.suppress(Exception):
                self._store.mark_retry(item.article_id, item.chat_id, "interrupted before "
                                       "sending", 0, count_attempt=False, owner=self._owner)
            raise
        if isinstance(prepared, Prepared) and run.digest_chat:
            # Re-selected since the plan closed it: it waits for the next digest.
            prepared = Unsure("waits for the destination's next digest")
        if isinstance(prepared, Skip | Orphan | Unsure | Unrenderable):
            run.queue.remove(entry)
            self._store.cancel_reservation(chat_of(run.key), slot)
            if isinstance(prepared, Unrenderable):
                self._unrenderable(item, prepared.reason, run.report)
            elif isinstance(prepared, Skip):
                self._skip(item, prepared.article, run.report)
            elif isinstance(prepared, Orphan):
                self._orphan(item, run.report)
            else:  # back to pending, not to be claimed again in this push
                self._settled(item.article_id, item.chat_id, self._store.mark_retry(
                    item.article_id, item.chat_id, prepared.reason, now + UNSURE_WAIT_SECONDS,
                    count_attempt=False, owner=self._owner))
            return True
        if isinstance(entry, Action) and entry.silent:  # quiet hours, "silent" mode
            prepared = replace(prepared, message=replace(prepared.message, silent=True))
        outcome = await self._send_claimed(
            item, prepared, run.tries.setdefault(item.article_id, Tries()), run
        )
        if outcome is Outcome.STOP:
            return False
        if outcome is Outcome.DONE:
            run.queue.remove(entry)
            if run.budget is not None:
                run.budget -= 1
        return True

    def _prepare(self, item: Delivery, lookup: Lookup
                 ) -> Prepared | Skip | Orphan | Unsure | Unrenderable:
        """What to send for a claimed pair (or why not): every step that can fail before the
        request, so a failure here provably posted nothing."""
        article = lookup(item.article_id)
        now = datetime.fromtimestamp(self._clock(), UTC)
        if article is None or too_old_reason(article, item.chat_id, self.destinations, now):
            return Skip(article)
        if item.chat_id not in self.destinations.keys_for(article.topics):
            unknown = self.destinations.unresolved_for(article.topics)
            if unknown:
                return Unsure(f"{', '.join(unknown)} not resolved yet: it may be this chat")
            return Orphan()
        try:
            message = render_for(article, self._config, self._label(item.chat_id))
        except RenderError as exc:
            return Unrenderable(str(exc))
        return Prepared(article, message, item.chat_id)

    def _skip(self, item: Delivery, article: Article | None, chat_report: ChatReport) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        reason = (NO_LONGER_SELECTED if article is None
                  else too_old_reason(article, item.chat_id, self.destinations, now))
        self._settled(item.article_id, item.chat_id,
                      self._store.mark_skipped(item.article_id, item.chat_id, reason,
                                               owner=self._owner))
        chat_report.skipped += 1
        event(log, logging.INFO, "skipped", chat=self._label(item.chat_id),
              article=item.article_id, reason=reason)

    def _unrenderable(self, item: Delivery, reason: str, chat_report: ChatReport) -> None:
        self._settled(item.article_id, item.chat_id, self._store.mark_failed(
            item.article_id, item.chat_id, reason, owner=self._owner))
        chat_report.failed += 1
        event(log, logging.ERROR, "failed", chat=self._label(item.chat_id),
              article=item.article_id, reason=reason)

    def _orphan(self, item: Delivery, chat_report: ChatReport) -> None:
        self._settled(item.article_id, item.chat_id,
                      self._store.mark_orphaned(item.article_id, item.chat_id, self._owner))
        chat_report.orphaned += 1
        event(log, logging.INFO, "orphaned", chat=self._label(item.chat_id),
              article=item.article_id)

    def _label(self, key: str) -> str:
        """A chat in the log: as configured (the ledger keys it by its numeric id)."""
        return self.destinations.label(key)

    def _settled(self, article_id: str, chat_id: str, recorded: bool) -> None:
        if not recorded:  # our lease ran out and another instance took the pair over
            event(log, logging.WARNING, "claim_lost", chat=self._label(chat_id), article=article_id)

    async def _send_claimed(self, item: Delivery, prepared: Prepared, tries: Tries,
                            run: ChatRun) -> Outcome:
        """Post one claimed article to its chat and record what happened."""
        article, message, target = prepared.article, prepared.message, prepared.target
        chat_id, chat_report = item.chat_id, run.report
        probing = self._prepare_probe(item, prepared)
        try:
            message_id = await self._post_probed(item, target, message, probing)
        except RateLimited as exc:
            chat_report.rate_limited += 1
            outcome = await self._wait_rate_limit(article.id, chat_id, exc, tries)
            if outcome is Outcome.STOP:
                chat_report.held = f"rate limited: {exc.reason}"
            return outcome
        except ChatMigrated as exc:
            tries.migrations += 1
            if tries.migrations > MAX_MIGRATIONS:
                self._settled(article.id, chat_id, self._store.mark_failed(
                    article.id, chat_id, f"the chat keeps moving: {exc}", owner=self._owner))
                chat_report.failed += 1
                return Outcome.DONE
            self._follow_migration(item, exc, run)
            return Outcome.MOVED
        except Ambiguous as exc:
            if probing:
                return await self._look_after_ambiguous(item, prepared, exc.reason, tries, run)
            if self._settings.on_uncertain == "resend":
                return await self._back_off(article.id, chat_id, exc.reason, tries, chat_report)
            self._settled(article.id, chat_id, self._store.mark_uncertain(
                article.id, chat_id, exc.reason, owner=self._owner))
            chat_report.uncertain += 1
            event(log, logging.WARNING, "uncertain", chat=self._label(chat_id), article=article.id,
                  reason=exc.reason, title=article.title)
            self.alerts.append(alerts.uncertain(chat_id, self._label(chat_id), 1, exc.reason,
                                                article.title))
            return Outcome.DONE
        except Rejected as exc:
            self._settled(article.id, chat_id, self._store.mark_failed(
                article.id, chat_id, exc.reason, owner=self._owner))
            chat_report.failed += 1
            event(log, logging.ERROR, "failed", chat=self._label(chat_id), article=article.id,
                  reason=exc.reason, title=article.title)
            return Outcome.DONE
        except ChatForbidden as exc:
            self._settled(article.id, chat_id, self._store.mark_retry(
                article.id, chat_id, exc.reason, 0, count_attempt=False, owner=self._owner))
            chat_report.error = (
                f"cannot post to {self.destinations.label(chat_id)}: {exc.reason}"
            )
            event(log, logging.ERROR, "chat_stopped", chat=self._label(chat_id), reason=exc.reason)
            self.alerts.append(alerts.stopped(chat_id, self._label(chat_id), exc.reason))
            return Outcome.STOP
        except Unauthorized as exc:
            self._settled(article.id, chat_id, self._store.mark_retry(
                article.id, chat_id, exc.reason, 0, count_attempt=False, owner=self._owner))
            self._fatal = chat_report.error = exc.reason
            event(log, logging.ERROR, "unauthorized", reason=exc.reason)
            return Outcome.STOP
        except NotSent as exc:  # after its subclasses: any other not-sent is retried
            return await self._back_off(article.id, chat_id, exc.reason, tries, chat_report)
        except Exception as exc:  # a bug or a surprise: the request may have left
            reason = f"unexpected error while sending: {type(exc).__name__}: {exc}"
            self._store.mark_uncertain(article.id, chat_id, reason, owner=self._owner)
            chat_report.uncertain += 1
            raise
        self._store.mark_sent(article.id, chat_id, message_id, target)
        self._remember_rendering(item.chat_id, target, article, message)
        chat_report.sent += 1
        event(log, logging.INFO, "sent", chat=self._label(chat_id), article=article.id,
              message_id=message_id, title=article.title)
        return Outcome.DONE

    # -- uncertain sends looked for (``publisher.reconcile``) ----------------------------------

    def _can_reconcile(self, key: str) -> bool:
        """Whether an uncertain send to the destination ``key`` can be looked for: reconciling
        is on, the sender forwards, and the chat's ids grow by one per message."""
        from publisher.delivery import Forwarder

        if not reconciling(self._config) or not isinstance(self._sender, Forwarder):
            return False
        if self._chats is None:
            self._chats = self._store.chats()
        chat = chat_of(key)
        record = self._chats.get(chat)
        audit = self._settings.audit_chat.strip().lower()
        if record is None or audit in (chat, record.public_name.lower()):
            return False  # (forwards into the chat itself would be posts in it)
        return record.type in reconcile.CHANNEL_TYPES

    def _prepare_probe(self, item: Delivery, prepared: Prepared) -> bool:
        """Before the send: the probe row a look would need (False: no look possible, the
        chat's newest message id unknown, or no look for this chat at all)."""
        if not self._can_reconcile(item.chat_id):
            return False
        after = reconcile.last_message_id(self._store.db, chat_of(item.chat_id))
        if after is None:
            return False
        reconcile.prepare(self._store.db, item.article_id, item.chat_id, after,
                          prepared.message, prepared.article, self._clock())
        return True

    async def _post_probed(self, item: Delivery, target: str, message: Message,
                           probing: bool) -> int:
        """The post; its probe row is dropped once the send settled either way (kept when
        it may have been posted: an ``Ambiguous``, or a surprise)."""
        try:
            message_id = await self._post_within_lease(target, message)
        except SendError as exc:
            if probing and not isinstance(exc, Ambiguous):
                reconcile.forget(self._store.db, item.article_id, item.chat_id)
            raise
        if probing:
            reconcile.forget(self._store.db, item.article_id, item.chat_id)
        return message_id

    async def _audit_slot(self) -> bool:
        """A pacing slot of the audit chat's for one forward, waited for; False when the
        look must stop (no slot within ``max_wait_seconds``, a stop request)."""
        audit = self._settings.audit_chat.strip()
        slot = self._store.reserve_send(audit, self._clock(), self._pacing)
        if slot is None:
            return False
        delay = slot - self._clock()
        if delay > 0:
            await self._pause(delay)
        if self.stop_requested or self._fatal:
            self._store.cancel_reservation(audit, slot)
            return False
        return True

    async def _look(self, probe: Probe) -> Resolution:
        label = self._label(probe.chat_id)
        resolution = await reconcile.look(
            self._sender, self._settings.audit_chat.strip(), probe, pace=self._audit_slot,
            pause=self._pause, clock=self._clock, label=label)
        event(log, logging.INFO, "uncertain_looked_for", chat=label, article=probe.article_id,
              verdict=resolution.verdict.value, reason=resolution.reason,
              forwards=resolution.forwards)
        return resolution

    async def _look_after_ambiguous(self, item: Delivery, prepared: Prepared, reason: str,
                                    tries: Tries, run: ChatRun) -> Outcome:
        """An ambiguous send to a chat where a look can tell: recorded uncertain, then
        looked for at once, before anything else is sent to the chat."""
        article, chat_id = prepared.article, item.chat_id
        self._settled(article.id, chat_id, self._store.mark_uncertain(
            article.id, chat_id, reason, owner=self._owner))
        probe = reconcile.probe_for(self._store.db, article.id, chat_id)
        if probe is None:  # another instance took the pair or its probe meanwhile
            run.report.uncertain += 1
            event(log, logging.WARNING, "uncertain", chat=self._label(chat_id),
                  article=article.id, reason=reason, title=article.title)
            return Outcome.DONE
        resolution = await self._look(probe)
        if resolution.verdict is Verdict.FOUND:
            if reconcile.record_found(self._store.db, probe, resolution):
                run.report.sent += 1
                run.report.resolved += 1
                event(log, logging.INFO, "sent", chat=self._label(chat_id), article=article.id,
                      message_id=resolution.message_id, title=article.title, found=True)
            return Outcome.DONE
        if resolution.verdict is Verdict.NOT_POSTED:
            run.report.resolved += 1
            return self._resend_not_posted(probe, tries, run)
        still_due = self._not_resolved(probe, resolution)
        if self._settings.on_uncertain == "resend":  # at-least-once: as without a look
            return await self._back_off(article.id, chat_id, reason, tries, run.report,
                                        requeue=lambda at: reconcile.requeue(
                                            self._store.db, probe, reason, at))
        self._held_uncertain(probe, reason, run.report, alert=not still_due)
        if still_due:
            run.report.held = RESOLVING_HELD
            return Outcome.STOP
        return Outcome.DONE

    def _resend_not_posted(self, probe: Probe, tries: Tries, run: ChatRun) -> Outcome:
        """Found not posted: pending again, sent at once in this run (a bounded number of
        times, as any send found not to have gone out)."""
        tries.not_sent += 1
        event(log, logging.WARNING, "retry_later", chat=self._label(probe.chat_id),
              article=probe.article_id, reason=reconcile.NOT_POSTED_REASON,
              tries=tries.not_sent)
        if tries.not_sent >= self._settings.max_tries:
            reconcile.requeue(self._store.db, probe, reconcile.NOT_POSTED_REASON,
                              self._clock() + MAX_BACKOFF_SECONDS)
            run.report.error = (f"Telegram unavailable for {self._label(probe.chat_id)}: "
                                "sends keep getting lost")
            return Outcome.STOP
        reconcile.requeue(self._store.db, probe, reconcile.NOT_POSTED_REASON, self._clock())
        return Outcome.STOP if self.stop_requested else Outcome.RETRY

    def _not_resolved(self, probe: Probe, resolution: Resolution) -> bool:
        """A look without a verdict: True while the send is looked for again later (a look
        a stop request cut short does not count)."""
        if resolution.verdict is Verdict.UNDECIDED and self.stop_requested:
            return True
        if resolution.verdict is Verdict.UNDECIDED:
            return reconcile.record_undecided(self._store.db, probe, resolution.reason)
        reconcile.give_up(self._store.db, probe, resolution.reason)
        return False

    def _held_uncertain(self, probe: Probe, reason: str, report: ChatReport, *,
                        alert: bool) -> None:
        """The send stays uncertain (as without reconciliation): counted and logged; the
        operator is alerted once no look will resolve it."""
        report.uncertain += 1
        event(log, logging.WARNING, "uncertain", chat=self._label(probe.chat_id),
              article=probe.article_id, reason=reason, title=probe.title)
        if alert:
            self._alert_uncertain(probe, reason)

    def _alert_uncertain(self, probe: Probe, reason: str) -> None:
        self.alerts.append(alerts.uncertain(probe.chat_id, self._label(probe.chat_id), 1,
                                            reason, probe.title))

    async def _run_resolutions(self, run: ChatRun) -> bool:
        """The plan's uncertain sends of the chat, looked for before it gets anything else;
        False when one is still to be looked for (the chat waits for the next run: at most
        one unresolved send per chat is in flight)."""
        if run.key != run.planned_key:
            return True
        for action in self.plan.resolutions_for(run.planned_key):
            if self.stop_requested or self._fatal:
                return False
            probe = reconcile.probe_for(self._store.db, action.article_id, run.key)
            if probe is None:  # settled since it was planned (another instance, an ack)
                continue
            resolution = await self._look(probe)
            if resolution.verdict is Verdict.FOUND:
                if reconcile.record_found(self._store.db, probe, resolution):
                    run.report.resolved += 1
            elif resolution.verdict is Verdict.NOT_POSTED:
                if reconcile.requeue(self._store.db, probe, reconcile.NOT_POSTED_REASON,
                                     self._clock()):
                    run.report.resolved += 1
                    self._queue_resend(run, action)
            elif self._not_resolved(probe, resolution):
                run.report.held = RESOLVING_HELD
                return False
            else:  # given up: the operator's now
                self._alert_uncertain(probe, resolution.reason)
        return True

    def _queue_resend(self, run: ChatRun, action: Action) -> None:
        """A send found not posted goes out in this run with the chat's other posts, unless
        the plan holds the chat (quiet hours, a digest destination): then the next push."""
        if run.digest_chat or self.plan.held_for(run.planned_key) is not None:
            return
        post = replace(action, kind=ActionKind.POST, change="")
        run.queue.append(post)
        run.queue.sort(key=lambda entry: (entry.published_at, entry.article_id))

    def _remember_rendering(self, key: str, target: str, article: Article,
                            message: Message) -> None:
        """What went out, for later edits (``publisher.edits``)."""
        from publisher.edits import PHOTO, TEXT, record_rendering, rendering_of

        kind = self._kinds.pop((target, article.id), PHOTO if message.photo_url else TEXT)
        record_rendering(self._store.db, article.id, key, rendering_of(message, kind), article)

    def _follow_migration(self, item: Delivery, exc: ChatMigrated, run: ChatRun) -> None:
        """The group became a supergroup: its pairs (this one given back first) move to the
        new id, remembered, and the chat's loop goes on there (a topic's: in the same topic
        of the new chat)."""
        self._settled(item.article_id, item.chat_id, self._store.mark_retry(
            item.article_id, item.chat_id, exc.reason, 0, count_attempt=False,
            owner=self._owner))
        event(log, logging.WARNING, "chat_migrated", chat=self._label(item.chat_id),
              to=exc.new_chat_id)
        old = chat_of(item.chat_id)
        self._store.move_chat(old, exc.new_chat_id)
        self.destinations = self.destinations.moved(old, exc.new_chat_id)
        run.key = with_thread(exc.new_chat_id, thread_of(item.chat_id))

    async def _post_within_lease(self, chat_id: str, message: Message) -> int:
        """The post, bounded so that it settles before the claim's lease runs out (or is
        recorded as ambiguous): no other instance takes over a send that is still running."""
        try:
            return await asyncio.wait_for(self._post(chat_id, message), self._send_deadline)
        except TimeoutError:
            raise Ambiguous(
                f"no answer within {self._send_deadline:g} s (the claim's lease)"
            ) from None

    async def _post(self, key: str, message: Message) -> int:
        """Post to a destination: a chat, or a forum topic of one ("-100123/42")."""
        chat_id, thread = split_key(key)
        options = _send_options(thread, message)
        if message.photo_url:
            try:  # by URL or uploaded (publisher.photos); None: it goes as text
                posted = await self._photos.post(chat_id, message, self._label(key), options)
            except EntitiesRejected as exc:
                return await self._post_plain(key, message, exc)
            if posted is not None:
                return posted
        self._kinds[(key, message.article_id)] = "text"  # (a photo refused goes as text)
        try:
            return await self._sender.send_text(
                chat_id, message.text_html, html=True, buttons=message.buttons,
                preview_url=message.preview_url, **options,
            )
        except EntitiesRejected as exc:
            return await self._post_plain(key, message, exc)

    async def _post_plain(self, key: str, message: Message, exc: EntitiesRejected) -> int:
        """The plain-text fallback; refused too, the message has failed, for both reasons."""
        event(log, logging.ERROR, "bug_html_refused", chat=self._label(key),
              article=message.article_id, reason=exc.reason)
        self._kinds[(key, message.article_id)] = "text"
        chat_id, thread = split_key(key)
        try:
            return await self._sender.send_text(
                chat_id, message.plain, html=False, buttons=message.buttons,
                preview_url=message.preview_url, **_send_options(thread, message),
            )
        except (Rejected, EntitiesRejected, PhotoRejected) as plain:
            raise Rejected(
                f"HTML refused: {exc.reason}; plain text refused too: {plain.reason}"
            ) from None

    async def _wait_rate_limit(self, article_id: str, chat_id: str, exc: RateLimited,
                               tries: Tries) -> Outcome:
        """Wait out a 429 and retry, or leave the chat for the next run when the wait is
        too long (or unusable: it then counts as ``max_wait_seconds``) or keeps coming."""
        tries.rate_limited += 1
        max_wait = self._settings.max_wait_seconds
        asked = exc.retry_after
        usable = asked is not None and 0 <= asked <= max_wait
        retry_after = asked if usable and asked is not None else max_wait
        wait = retry_after + random.uniform(0.05, 0.5)
        self._settled(article_id, chat_id, self._store.mark_retry(
            article_id, chat_id, exc.reason, self._clock() + wait, count_attempt=False,
            owner=self._owner))
        fields: dict[str, object] = {"retry_after": round(retry_after, 3)}
        if not usable:
            fields["reason"] = exc.reason
        event(log, logging.WARNING, "rate_limited", chat=self._label(chat_id), **fields)
        if wait > max_wait or self.stop_requested or tries.rate_limited >= MAX_RATE_LIMITS:
            return Outcome.STOP
        await self._pause(wait)
        return Outcome.RETRY

    async def _back_off(self, article_id: str, chat_id: str, reason: str, tries: Tries,
                        chat_report: ChatReport,
                        requeue: Callable[[float], bool] | None = None) -> Outcome:
        """Back to pending; retry in this run while tries remain, else leave it for the next.
        ``requeue``: how it goes back at a time (default: from our claim)."""
        tries.not_sent += 1
        delay = min(2.0 ** (tries.not_sent - 1), MAX_BACKOFF_SECONDS) * random.uniform(0.8, 1.2)
        if requeue is not None:
            requeue(self._clock() + delay)
        else:
            self._settled(article_id, chat_id, self._store.mark_retry(
                article_id, chat_id, reason, self._clock() + delay, owner=self._owner))
        event(log, logging.WARNING, "retry_later", chat=self._label(chat_id), article=article_id,
              reason=reason, tries=tries.not_sent)
        if self.stop_requested:
            return Outcome.STOP
        if tries.not_sent >= self._settings.max_tries:
            chat_report.error = (
                f"Telegram unavailable for {self.destinations.label(chat_id)}: {reason}"
            )
            return Outcome.STOP
        await self._pause(delay)
        return Outcome.RETRY


def _send_options(thread: int | None, message: Message) -> dict[str, Any]:
    """The send's optional arguments, only where they differ from a plain post: a forum
    topic (``thread_id``), a silent post (``silent``). A message to a whole chat, with sound,
    goes out exactly as before either existed, to any ``Sender`` (a test's without them)."""
    options: dict[str, Any] = {} if thread is None else {"thread_id": thread}
    if message.silent:
        options["silent"] = True
    return options
