"""The plan: what a push will do now, for which destination, as a value.

``make_plan`` is the only code that decides what will be sent. Its inputs are the articles
new or changed since they were last planned (every selected one after a routing change),
the ledger's pending pairs, the destinations and the pacing state; its answer, a ``Plan``,
is what ``publisher push`` executes and what ``publisher push --dry-run`` prints.

An action is (kind, article, destination): a ``POST``, or a ``DIGEST`` that lists many
articles in one message (its ``items``; ``digest_send``). The destination's timing decides
too (``timing.timing_at``): quiet hours hold its posts ("hold") or send them silently, and
a digest destination gets one digest per window of its schedule; editing a post and
deleting one are kinds too. The direct messages to followers a new article owes are one
``FanOut`` per article (``plan_fanouts``, ``Plan.fanouts``), not an action per follower: the
push writes their ledger rows in one statement (``fanout``). A destination may be a forum
topic (its ``Target.chat_id`` is then "-100123/42") and has settings of its own
(``destinations.settings_for``); pacing is the chat's, shared by its topics.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from publisher.config import Config
from publisher.destinations import Destinations, remembered_destinations
from publisher.forum import chat_of
from publisher.models import Article
from publisher.state import ORPHANED, PENDING, SKIPPED, NewDelivery, Pacing, PendingPair, Store
from publisher.text import as_utc, plural
from publisher.timing import ChatTiming, timing_at

if TYPE_CHECKING:
    from publisher.db import Database
    from publisher.edits import SentPost
    from publisher.fanout import FanOut
    from publisher.reconcile import Probe

Lookup = Callable[[str], Article | None]
# A chat's sends and reserved slots (send_log) at or after a moment, newest first.
SendTimes = Callable[[str, float, int], list[float]]
DigestSince = Callable[[str], datetime | None]

NO_LONGER_SELECTED = "no longer selected (removed, unpublished or below select.min_quality)"
PACING_HELD = "pacing: the next free slot is more than telegram.max_wait_seconds away"


class ActionKind(enum.Enum):
    POST = "post"
    DIGEST = "digest"  # one message listing ``items`` (``digest_send.py``)
    EDIT = "edit"  # a sent post its changed article renders otherwise (``edit_send.py``)
    RETRACT = "retract"  # a sent post whose article is unpublished (``retract.py``)
    # An uncertain send looked for in its chat before the chat's next post (``reconcile.py``).
    RESOLVE = "resolve"


@dataclass(frozen=True, slots=True)
class Target:
    """Where an action goes: a chat as the ledger keys it, and as the config names it."""

    chat_id: str
    label: str


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    article_id: str
    target: Target
    title: str
    published_at: str  # ISO 8601, as the ledger orders a chat's pairs
    new: bool  # not in the ledger yet: the push records it first
    silent: bool = False  # quiet hours in "silent" mode: sent with notifications off
    # A digest: the articles it lists, oldest first (``article_id`` is its window).
    items: tuple[str, ...] = ()
    # An edit: what changed ("photo", "title", "text" or "buttons": ``edits.describe``);
    # a retraction: "delete" or "mark" (``retract.planned_mode``).
    change: str = ""


@dataclass(frozen=True, slots=True)
class Closing:
    """A pending pair the push settles without sending: its article is no longer selected
    or too old (skipped), or no longer routed to this chat (orphaned), or it may belong to
    a destination not resolved yet (it waits)."""

    article_id: str
    target: Target
    published_at: str
    reason: str


@dataclass(frozen=True, slots=True)
class Held:
    """Pairs due now that the push leaves for a later one, and why."""

    target: Target
    count: int
    reason: str


Entry = Action | Closing


def is_digest(entry: Entry) -> bool:
    return isinstance(entry, Action) and entry.kind is ActionKind.DIGEST


def is_edit(entry: Entry) -> bool:
    return isinstance(entry, Action) and entry.kind is ActionKind.EDIT


def is_retract(entry: Entry) -> bool:
    return isinstance(entry, Action) and entry.kind is ActionKind.RETRACT


def is_resolve(entry: Entry) -> bool:
    return isinstance(entry, Action) and entry.kind is ActionKind.RESOLVE


@dataclass(frozen=True)
class Plan:
    at: datetime
    actions: tuple[Action, ...] = ()  # per chat, oldest first
    closing: tuple[Closing, ...] = ()
    held: tuple[Held, ...] = ()
    # Every pair the new articles ask for (known to the ledger or not, skipped when too
    # old): what the push records, and, after a routing change, what is wanted.
    pairs: tuple[NewDelivery, ...] = ()
    articles: Mapping[str, Article] = field(default_factory=dict, compare=False, repr=False)
    # The articles whose posts need an edit, planned now or held: an article whose edit
    # does not happen in this push stays unplanned, so that the next one edits it.
    edits_due: frozenset[tuple[str, str]] = frozenset()  # (article, chat)
    # The new articles' DMs to followers (``fanout``): one entry per article, not per DM.
    fanouts: tuple[FanOut, ...] = ()

    def chats(self) -> list[str]:
        return list(dict.fromkeys(entry.target.chat_id for entry in self.entries()))

    def entries(self) -> Iterator[Entry]:
        yield from self.actions
        yield from self.closing

    def entries_for(self, chat_id: str) -> list[Entry]:
        """The chat's pairs in the order a push claims them (as ``Store.claim_next``)."""
        return sorted((entry for entry in self.entries() if entry.target.chat_id == chat_id),
                      key=lambda entry: (entry.published_at, entry.article_id))

    def held_for(self, chat_id: str) -> Held | None:
        return next((held for held in self.held if held.target.chat_id == chat_id), None)

    def digest_for(self, chat_id: str) -> Action | None:
        return next((action for action in self.actions if action.target.chat_id == chat_id
                     and action.kind is ActionKind.DIGEST), None)

    def edits_for(self, chat_id: str) -> list[Action]:
        return [action for action in self.actions if action.target.chat_id == chat_id
                and action.kind is ActionKind.EDIT]

    def retractions_for(self, chat_id: str) -> list[Action]:
        return [action for action in self.actions if action.target.chat_id == chat_id
                and action.kind is ActionKind.RETRACT]

    def resolutions_for(self, chat_id: str) -> list[Action]:
        return [action for action in self.actions if action.target.chat_id == chat_id
                and action.kind is ActionKind.RESOLVE]

    def posts_to(self, chat_id: str) -> list[Action]:
        return [action for action in self.actions if action.target.chat_id == chat_id]

    def lines(self) -> list[str]:
        """The plan as text, one line per action, closing and hold."""
        lines = [_line(action) for action in self.actions]
        lines += [f"close {item.article_id} in {item.target.label}: {item.reason}"
                  for item in self.closing]
        lines += [f"hold {held.count} in {held.target.label}: {held.reason}"
                  for held in self.held]
        lines += [fanout.line() for fanout in self.fanouts if fanout.followers]
        return lines

    def __str__(self) -> str:
        edits = sum(1 for action in self.actions if action.kind is ActionKind.EDIT)
        retracts = sum(1 for action in self.actions if action.kind is ActionKind.RETRACT)
        resolves = sum(1 for action in self.actions if action.kind is ActionKind.RESOLVE)
        posts = len(self.actions) - edits - retracts - resolves
        head = f"Plan at {self.at.isoformat(timespec='seconds')}: {posts} to post"
        if resolves:
            head += f", {resolves} uncertain to resolve"
        if edits:
            head += f", {plural(edits, 'edit')}"
        if retracts:
            head += f", {plural(retracts, 'retraction')}"
        return "\n".join([head, *(f"  {line}" for line in self.lines())])


def _line(action: Action) -> str:
    if action.kind is ActionKind.EDIT:
        return f"edit {action.article_id} in {action.target.label}: {action.change} changed"
    if action.kind is ActionKind.RETRACT:
        return retract_line(action)
    if action.kind is ActionKind.RESOLVE:
        return resolve_line(action)
    return (f"{action.kind.value} {action.article_id} to {action.target.label}"
            f"{' (new)' if action.new else ''}: {action.title}")


def retract_line(action: Action) -> str:
    return f"retract {action.article_id} in {action.target.label}: unpublished ({action.change})"


def resolve_line(action: Action) -> str:
    return (f"resolve uncertain {action.article_id} in {action.target.label} "
            f"(via the audit chat {action.change}): {action.title}")


@dataclass
class _Candidate:
    article_id: str
    chat_id: str
    published_at: str
    article: Article | None  # known for a new pair; looked up for a ledger pair
    new: bool


def plan_deliveries(
    selected: Iterable[Article], config: Config, now: datetime,
    destinations: Destinations | None = None,
) -> list[NewDelivery]:
    """Every (article, chat) pair the selection asks for, keyed as ``destinations`` key its
    chats (without: as the state remembers them); too-old articles marked skipped."""
    destinations = destinations or remembered_destinations(config, None)
    planned: list[NewDelivery] = []
    for article in selected:
        for chat in destinations.keys_for(article.topics):
            too_old = too_old_reason(article, chat, destinations, now)
            planned.append(
                NewDelivery(
                    article_id=article.id,
                    chat_id=chat,
                    title=article.title,
                    url=article.url,
                    published_at=article.published_at.isoformat(),
                    state=SKIPPED if too_old else PENDING,
                    reason=too_old,
                )
            )
    return planned


def too_old_reason(article: Article, key: str, destinations: Destinations,
                   now: datetime) -> str:
    """Why ``article`` is too old for the destination keyed ``key`` (its
    ``max_age_hours``), or "" when it is not."""
    hours = destinations.settings_for(key).max_age_hours
    if not hours or article.published_at >= now - timedelta(hours=hours):
        return ""
    return f"older than {destinations.setting_name(key, 'max_age_hours')} ({hours:g} h)"


@dataclass(frozen=True)
class PlanInputs:
    """What a plan is made of (read by ``session.Session.plan``)."""

    new_articles: Sequence[Article]
    replan: bool  # the routing changed: ``new_articles`` is every selected article
    known: Mapping[tuple[str, str], str]  # the ledger state of the new articles' pairs
    pending: Sequence[PendingPair]  # the ledger's pending pairs
    lookup: Lookup  # the selected article of an id, or None
    send_times: SendTimes
    # Per chat: the window of its last digest (None: it never had one).
    digest_since: DigestSince = lambda chat_id: None
    # The editable sent posts of ``new_articles`` (``edits.sent_posts``), by (article, chat).
    sent: Mapping[tuple[str, str], SentPost] = field(default_factory=dict)
    # ``publisher push --reedit``: ``sent`` is every post sent since then, edited wherever
    # its rendering now differs, whether its article changed or not.
    reedit_since: datetime | None = None
    # Sent posts whose article now says ``published: false`` (``retract.retracting_posts``).
    retracting: Sequence[tuple[SentPost, Article]] = ()
    # Uncertain sends a look in their chat may resolve (``reconcile.due_probes``).
    uncertain: Sequence[Probe] = ()


def read_plan(store: Store, config: Config, new_articles: Sequence[Article], replan: bool,
              lookup: Lookup, destinations: Destinations, now: datetime,
              pacing: Pacing, reedit_since: datetime | None = None) -> Plan:
    """The plan at ``now`` from the ledger as it is: what a push and a dry run both use."""
    from publisher.digest_ledger import digest_since
    from publisher.edits import sent_posts, sent_since

    sent = (sent_posts(store.db, (article.id for article in new_articles))
            if config.telegram.edits and new_articles else {})
    if reedit_since is not None:
        sent = sent_since(store.db, reedit_since.astimezone(UTC).isoformat(timespec="seconds"))
    from publisher.retract import KEEP, retracting_posts

    retracting = retracting_posts(store.db) if config.telegram.on_retract != KEEP else []
    from publisher.reconcile import due_probes

    uncertain = due_probes(store.db) if reconciling(config) else []
    inputs = PlanInputs(
        new_articles, replan, store.pair_states(article.id for article in new_articles),
        store.pending_pairs(), lookup, store.send_times,
        lambda chat_id: digest_since(store.db, chat_id), sent, reedit_since, retracting,
        uncertain,
    )
    plan = make_plan(inputs, config, destinations, now, pacing)
    if not config.followers.enabled or not new_articles:
        return plan
    fanouts = plan_fanouts(store.db, config, new_articles, inputs.known, now)
    return dataclasses.replace(plan, fanouts=fanouts)


def plan_fanouts(db: Database, config: Config, articles: Sequence[Article],
                 known: Mapping[tuple[str, str], str], now: datetime) -> tuple[FanOut, ...]:
    """The DMs the new articles owe followers: an article new to the selection (no fan-out
    yet, no row in the ledger: an article planned before, such as every selected one after
    a routing change, is the backlog) and not older than ``followers.max_age_hours`` goes to
    every follower of one of its topics since ``now`` or before: later followers never get
    it. An article with no follower yet is recorded too, so that it never fans out later."""
    from publisher.fanout import FanOut, count_followers, fanned_out
    from publisher.selection import topic_slug

    done = fanned_out(db, (article.id for article in articles))
    planned = {article_id for article_id, _chat in known}
    hours = config.follower_settings.max_age_hours
    fanouts: list[FanOut] = []
    for article in articles:
        if article.id in done or article.id in planned:
            continue
        if hours and article.published_at < now - timedelta(hours=hours):
            continue
        slugs = tuple(sorted({topic_slug(topic) for topic in article.topics}))
        fanouts.append(FanOut(article.id, article.title, article.url,
                              article.published_at.isoformat(), slugs, tuple(article.topics),
                              count_followers(db, slugs, now.timestamp()), now.timestamp()))
    return tuple(fanouts)


def make_plan(inputs: PlanInputs, config: Config, destinations: Destinations, now: datetime,
              pacing: Pacing) -> Plan:
    """What a push does at ``now``: per chat, its due pairs oldest first, each posted or
    closed as the push's checks will find it, cut at ``telegram.max_per_run`` posts and
    where the pacing state leaves the next slot beyond ``telegram.max_wait_seconds``."""
    pairs = plan_deliveries(inputs.new_articles, config, now, destinations)
    by_id = {article.id: article for article in inputs.new_articles}
    candidates = _candidates(inputs, pairs, by_id, now)
    # First of all: the chats' uncertain sends, looked for before anything else goes there.
    actions: list[Action] = _plan_resolutions(inputs, config, destinations)
    closing: list[Closing] = []
    held: list[Held] = []
    pacers: dict[str, Pacer] = {}  # per chat: the topics of a group share its pacing
    for chat_id, chat_candidates in candidates.items():
        target = Target(chat_id, destinations.label(chat_id))
        chat = chat_of(chat_id)
        if chat not in pacers:
            times = inputs.send_times(chat, now.timestamp() - pacing.window,
                                      pacing.per_chat_per_minute)
            pacers[chat] = Pacer(times, pacing, now.timestamp())
        settings = destinations.settings_for(chat_id)
        since = _digest_since(inputs, chat_id, chat_candidates) if settings.digest else None
        timing = timing_at(settings, config.telegram.timezone, now, since)
        plan_one = _plan_digest_chat if timing.digest else _plan_chat
        chat_plan = plan_one(chat_candidates, target, config, destinations, now, inputs.lookup,
                             pacers[chat], timing)
        actions += chat_plan.actions
        closing += chat_plan.closing
        held += chat_plan.held
    due = plan_edits(inputs, by_id, config, destinations, now)
    for chat_id, edits in due.items():
        target = Target(chat_id, destinations.label(chat_id))
        chat = chat_of(chat_id)
        if chat not in pacers:
            times = inputs.send_times(chat, now.timestamp() - pacing.window,
                                      pacing.per_chat_per_minute)
            pacers[chat] = Pacer(times, pacing, now.timestamp())
        # After the chat's new posts, in the slots its pacing leaves.
        for index, (post, change) in enumerate(edits):
            if pacers[chat].take() is None:
                held.append(Held(target, len(edits) - index, PACING_HELD))
                break
            article = by_id.get(post.article_id) or inputs.lookup(post.article_id)
            assert article is not None  # (found by ``plan_edits``)
            actions.append(Action(ActionKind.EDIT, post.article_id, target, article.title,
                                  article.published_at.isoformat(), False, change=change))
    actions += _plan_retractions(inputs, config, destinations, now, pacing, pacers, held)
    articles = {action.article_id: by_id[action.article_id]
                for action in actions if action.article_id in by_id}
    edits_due = frozenset((post.article_id, post.chat_id)
                          for edits in due.values() for post, _ in edits)
    return Plan(now, tuple(actions), tuple(closing), tuple(held), tuple(pairs), articles,
                edits_due)


def _digest_since(inputs: PlanInputs, chat_id: str,
                  candidates: Sequence[_Candidate]) -> datetime | None:
    """Since when a digest destination's articles wait: its last digest, else the oldest
    one's publication (an article goes in the first digest after it was published)."""
    last = inputs.digest_since(chat_id)
    if last is not None or not candidates:
        return last
    return as_utc(datetime.fromisoformat(min(c.published_at for c in candidates)))


def _candidates(inputs: PlanInputs, pairs: Sequence[NewDelivery], by_id: Mapping[str, Article],
                now: datetime) -> dict[str, list[_Candidate]]:
    """Per chat, the pairs a push will claim: due ledger pairs and new pending ones (after
    a routing change, orphaned pairs wanted again too), oldest first."""
    due = now.timestamp()
    found: dict[tuple[str, str], _Candidate] = {}
    for pair in inputs.pending:
        if pair.next_attempt_at <= due:
            found[(pair.article_id, pair.chat_id)] = _Candidate(
                pair.article_id, pair.chat_id, pair.published_at, None, False)
    for item in pairs:
        key = (item.article_id, item.chat_id)
        state = inputs.known.get(key)
        if key in found or (item.state != PENDING and state is None):
            continue
        if state is None:
            found[key] = _Candidate(item.article_id, item.chat_id, item.published_at,
                                    by_id[item.article_id], True)
        elif state == ORPHANED and inputs.replan:  # the push makes it pending again
            found[key] = _Candidate(item.article_id, item.chat_id, item.published_at,
                                    None, False)
    by_chat: dict[str, list[_Candidate]] = {}
    for candidate in sorted(found.values(), key=lambda c: (c.chat_id, c.published_at,
                                                           c.article_id)):
        by_chat.setdefault(candidate.chat_id, []).append(candidate)
    return by_chat


@dataclass
class _ChatPlan:
    actions: list[Action] = field(default_factory=list)
    closing: list[Closing] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


def _plan_chat(candidates: Sequence[_Candidate], target: Target, config: Config,
               destinations: Destinations, now: datetime, lookup: Lookup,
               pacer: Pacer, timing: ChatTiming) -> _ChatPlan:
    budget = destinations.settings_for(target.chat_id).max_per_run or None
    plan = _ChatPlan()
    if timing.hold:  # quiet hours: everything waits for the window's end, closings too
        plan.held.append(Held(target, len(candidates), timing.hold))
        return plan
    for index, candidate in enumerate(candidates):
        if budget is not None and len(plan.actions) >= budget:
            plan.held.append(Held(target, len(candidates) - index,
                                  max_per_run_reason(target.chat_id, destinations)))
            break
        # A push reserves a slot before it claims a pair, even one it then closes.
        if pacer.next_slot() is None:
            plan.held.append(Held(target, len(candidates) - index, PACING_HELD))
            break
        article = candidate.article if candidate.new else lookup(candidate.article_id)
        reason = _why_not_posted(article, target.chat_id, destinations, now)
        if reason:  # its slot is given back
            plan.closing.append(Closing(candidate.article_id, target, candidate.published_at,
                                        reason))
            continue
        assert article is not None
        pacer.take()
        plan.actions.append(Action(ActionKind.POST, candidate.article_id, target,
                                   article.title, candidate.published_at, candidate.new,
                                   timing.silent))
    return plan


def _plan_digest_chat(candidates: Sequence[_Candidate], target: Target, config: Config,
                      destinations: Destinations, now: datetime, lookup: Lookup,
                      pacer: Pacer, timing: ChatTiming) -> _ChatPlan:
    """A digest destination: its due pairs become one ``DIGEST`` action when a window is
    due (and no quiet hours hold it), else they wait. Waiting for its digest does not age
    an article: ``max_age_hours`` applied when it was first planned."""
    plan = _ChatPlan()
    if timing.hold:
        plan.held.append(Held(target, len(candidates), timing.hold))
        return plan
    items: list[_Candidate] = []
    for index, candidate in enumerate(candidates):
        article = candidate.article if candidate.new else lookup(candidate.article_id)
        # As of its publication: waiting for its digest does not age an article.
        reason = _why_not_posted(article, target.chat_id, destinations,
                                 article.published_at if article else now)
        if not reason:
            items.append(candidate)
            continue
        if pacer.next_slot() is None:  # a closing is claimed in a slot of its own
            plan.held.append(Held(target, len(candidates) - index, PACING_HELD))
            return plan
        plan.closing.append(Closing(candidate.article_id, target, candidate.published_at,
                                    reason))
    if not items:
        return plan
    if timing.window is None:
        plan.held.append(Held(target, len(items), timing.waiting))
    elif pacer.take() is None:
        plan.held.append(Held(target, len(items), PACING_HELD))
    else:
        window = timing.window.astimezone(UTC).isoformat(timespec="seconds")
        plan.actions.append(Action(
            ActionKind.DIGEST, window, target, f"digest of {plural(len(items), 'article')}",
            items[-1].published_at, any(item.new for item in items), timing.silent,
            tuple(item.article_id for item in items)))
    return plan


def plan_edits(inputs: PlanInputs, by_id: Mapping[str, Article], config: Config,
               destinations: Destinations, now: datetime
               ) -> dict[str, list[tuple[SentPost, str]]]:
    """Per chat, the sent posts whose article changed and now renders otherwise (with what
    the edit changes), oldest first; none when ``telegram.edits`` is off. With
    ``reedit_since``: every post sent since then that renders otherwise."""
    from publisher.edits import describe, needed_change

    found: dict[str, list[tuple[SentPost, str]]] = {}
    reedit = inputs.reedit_since is not None
    if not config.telegram.edits and not reedit:
        return found
    for post in sorted(inputs.sent.values(), key=lambda post: post.sent_at):
        article = by_id.get(post.article_id) or (inputs.lookup(post.article_id) if reedit
                                                 else None)
        if article is None:
            continue
        change = needed_change(post, article, config, destinations.label(post.chat_id), now,
                               reedit=reedit)
        if change:
            found.setdefault(post.chat_id, []).append((post, describe(post, article, change)))
    return found


def _plan_retractions(inputs: PlanInputs, config: Config, destinations: Destinations,
                      now: datetime, pacing: Pacing, pacers: dict[str, Pacer],
                      held: list[Held]) -> list[Action]:
    """Per chat, after its new posts and edits, in the slots its pacing leaves: the sent
    posts whose article is unpublished, deleted or marked per ``telegram.on_retract``."""
    from publisher.retract import planned_mode

    actions: list[Action] = []
    stopped: set[str] = set()
    for post, article in inputs.retracting:
        mode = planned_mode(post, config.telegram.on_retract, now)
        if not mode or post.chat_id in stopped:
            continue
        target = Target(post.chat_id, destinations.label(post.chat_id))
        chat = chat_of(post.chat_id)
        if chat not in pacers:
            times = inputs.send_times(chat, now.timestamp() - pacing.window,
                                      pacing.per_chat_per_minute)
            pacers[chat] = Pacer(times, pacing, now.timestamp())
        if pacers[chat].take() is None:
            left = sum(1 for other, _ in inputs.retracting if other.chat_id == post.chat_id
                       and other.sent_at >= post.sent_at)
            held.append(Held(target, left, PACING_HELD))
            stopped.add(post.chat_id)
            continue
        actions.append(Action(ActionKind.RETRACT, post.article_id, target, article.title,
                              article.published_at.isoformat(), False, change=mode))
    return actions


def reconciling(config: Config) -> bool:
    """Whether uncertain sends are looked for (``telegram.reconcile`` with an audit chat)."""
    return config.telegram.reconcile and bool(config.telegram.audit_chat.strip())


def _plan_resolutions(inputs: PlanInputs, config: Config,
                      destinations: Destinations) -> list[Action]:
    """Per configured chat, its uncertain sends that a look may resolve, oldest first. The
    look goes to the audit chat, not the chat: no pacing slot of the chat's is taken."""
    keys = set(destinations.keys())
    audit = config.telegram.audit_chat.strip()
    return [Action(ActionKind.RESOLVE, probe.article_id,
                   Target(probe.chat_id, destinations.label(probe.chat_id)), probe.title,
                   probe.published_at, False, change=audit)
            for probe in inputs.uncertain if probe.chat_id in keys]


def max_per_run_reason(key: str, destinations: Destinations) -> str:
    """Why a destination's posts past its ``max_per_run`` wait."""
    budget = destinations.settings_for(key).max_per_run
    return (f"{destinations.setting_name(key, 'max_per_run')} ({budget}) reached: the rest "
            "wait for the next push")


def _why_not_posted(article: Article | None, chat_id: str, destinations: Destinations,
                    now: datetime) -> str:
    """The push's checks before a send (``Dispatcher._prepare``): "" when it posts."""
    if article is None:
        return NO_LONGER_SELECTED
    too_old = too_old_reason(article, chat_id, destinations, now)
    if too_old:
        return too_old
    if chat_id not in destinations.keys_for(article.topics):
        unknown = destinations.unresolved_for(article.topics)
        if unknown:
            return f"{', '.join(unknown)} not resolved yet: it may be this chat"
        return "no longer routed to this chat: orphaned"
    return ""


class Pacer:
    """``Store.reserve_send`` foreseen for one chat: each send reserved when the one before
    leaves, as a push's loop does. The bot-wide rate is left out: its interval is a small
    fraction of a second, far below any ``max_wait_seconds`` that holds posts back."""

    def __init__(self, newest_first: Sequence[float], pacing: Pacing, now: float) -> None:
        # Only the newest ``per_chat_per_minute`` sends can decide a slot, as in the store.
        self._sends = deque(sorted(newest_first), maxlen=pacing.per_chat_per_minute)
        self._pacing = pacing
        self._now = now

    def take(self) -> float | None:
        """The next send's slot (then taken), or None when it is too far away."""
        slot = self.next_slot()
        if slot is not None:
            self._sends.append(slot)
            self._now = slot
        return slot

    def next_slot(self) -> float | None:
        """The next send's slot, or None when it is more than ``max_wait`` away."""
        pacing = self._pacing
        budget = pacing.per_chat_per_minute
        latest = [at for at in self._sends if at >= self._now - pacing.window]
        slot = self._now
        if latest:
            slot = max(slot, latest[-1] + pacing.per_chat_interval)
        if len(latest) >= budget:
            slot = max(slot, latest[-budget] + pacing.window)
        return None if slot - self._now > pacing.max_wait else slot
