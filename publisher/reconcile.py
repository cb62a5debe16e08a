"""Uncertain sends resolved by themselves: was the post that got no answer posted after all?

Channel and supergroup message ids grow by one per message and are never reused. Before a
post leaves for such a chat (when ``telegram.reconcile`` is on and ``telegram.audit_chat``
set), the ledger keeps a *probe* row: the chat's newest message id known then (``after``: the
largest id of the ledger's posts and digests in that chat), when the send left, and what the
post will show. When the send ends ambiguous (a timeout after the request left, a lost
connection, a crash), its post, if it exists, has an id above ``after``. The dispatcher
looks, before anything else is sent to that chat: right after the ambiguous send, and at the
start of the chat's next run (``plan.ActionKind.RESOLVE``).

The look never changes a message: each candidate id ``after + 1, after + 2, ...`` is
*forwarded* to the audit chat (silently), the copy's text or caption (as Telegram shows it,
after entity parsing), its link URLs and whether it has a photo are compared with what was
rendered, and the copy is deleted. An edit "that changes nothing" is no safe probe: a bot
that is a channel admin with ``can_edit_messages`` may edit other admins' posts, and would
rewrite one that is not its own.

The verdict (``Verdict``):

* ``FOUND``: a candidate shows exactly what was rendered: ``sent`` with that id, its date
  and its rendering (so edits and retractions work);
* ``NOT_POSTED``: conclusive only when every candidate before the first "message to forward
  not found" exists and is another message, and that id and the ones after it, ``TAIL`` in
  a row, are not found (ids beyond the chat's newest message), those missing ids looked at
  no sooner than ``SETTLE_SECONDS`` after the send left (a request Telegram received has
  been carried out by then; a post found needs no such wait). Back to ``pending``: sent
  again;
* ``UNDECIDED``: the look could not be made now (network, 429, pacing): the send stays
  ``uncertain`` and the chat posts nothing new in this run; after ``MAX_PASSES`` such looks
  it is given up;
* ``GIVEN_UP``: the look cannot tell (a missing id followed by an existing one: a deleted
  message that may have been ours; a message like ours but not the same; the window of
  ``WINDOW`` ids exhausted; the audit chat refuses; a message that cannot be forwarded, a
  service message or a protected channel's, which could be ours for all a forward says):
  it stays ``uncertain`` exactly as
  without reconciliation, for the operator (``publisher ack`` / ``resend``), and the chat
  goes on.

What is never resolved: a chat that is not a channel or supergroup (a group's and a private
chat's ids are the bot's mailbox's, with gaps), a chat with no known earlier message id, a
send left in flight by a version without probe rows, digests, edits and retractions.
"""

from __future__ import annotations

import enum
import html
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from publisher.db import Database, upsert
from publisher.errors import ChatForbidden, ChatMigrated, Rejected, SendError
from publisher.forum import split_key
from publisher.logs import event
from publisher.state import UNCERTAIN, utc_now_iso

if TYPE_CHECKING:
    from publisher.messages import Message
    from publisher.models import Article

log = logging.getLogger(__name__)

SETTLE_SECONDS = 5.0  # a request Telegram received is carried out within this (looked after)
WINDOW = 20  # candidate ids looked at per look, after the chat's last known one
TAIL = 3  # ids in a row not found after the newest existing one: beyond the chat's newest
MAX_PASSES = 3  # looks that could not be made (network, 429) before the send is given up
NOT_FOUND = "message to forward not found"
CHANNEL_TYPES = ("channel", "supergroup")  # chats whose message ids grow by one per message
DUE = "due"
GIVEN_UP_STATE = "given_up"
PREPARED = "prepared"  # written before the send; due once the send is found uncertain
FOUND_REASON = "found in the chat by reconciliation"
NOT_POSTED_REASON = "not posted (reconciliation found no trace of it): sent again"

_TAG = re.compile(r"<[^>]*>")
_HREF = re.compile(r"""<a\s[^>]*href\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


def reconcile_schema(dialect: str) -> list[str]:
    """Schema 12: one probe row per send that may need a look (``Probe``)."""
    return [
        """CREATE TABLE IF NOT EXISTS uncertain_probes (
            article_id TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            state TEXT NOT NULL,
            after_message_id BIGINT NOT NULL,
            left_at DOUBLE PRECISION NOT NULL,
            expected TEXT NOT NULL,
            passes BIGINT NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            updated_at TEXT NOT NULL,
            PRIMARY KEY (article_id, chat_id)
        )""",
    ]


def add_probes(db: Database, version: int) -> None:
    """12: the ``uncertain_probes`` table, created by the schema list."""


class Verdict(enum.Enum):
    FOUND = "found"
    NOT_POSTED = "not posted"
    UNDECIDED = "undecided"  # the look could not be made now: looked at again
    GIVEN_UP = "given up"  # the look cannot tell: uncertain, for the operator


class Likeness(enum.Enum):
    SAME = "same"
    LIKE = "like"  # the same first line or a link in common, yet not the same: no verdict
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Form:
    """One way the post may show: as a photo with a caption, as text, as plain text."""

    photo: bool
    text: str  # as Telegram shows it: tags removed, entities decoded, trimmed
    links: tuple[str, ...]  # the text_link URLs, in order


@dataclass(frozen=True, slots=True)
class Expected:
    """What the post shows, and what the ledger records once it is found."""

    forms: tuple[Form, ...]
    renderings: dict[str, str]  # kind ("photo", "text") -> ``edits.Rendering.to_json()``
    article_digest: str
    title: str

    def to_json(self) -> str:
        return json.dumps({
            "forms": [[form.photo, form.text, list(form.links)] for form in self.forms],
            "renderings": self.renderings, "digest": self.article_digest, "title": self.title,
        }, ensure_ascii=False)

    @classmethod
    def from_json(cls, stored: str) -> Expected:
        data = json.loads(stored)
        forms = tuple(Form(bool(photo), str(text), tuple(links))
                      for photo, text, links in data["forms"])
        return cls(forms, dict(data["renderings"]), str(data["digest"]), str(data["title"]))


@dataclass(frozen=True, slots=True)
class Probe:
    article_id: str
    chat_id: str  # the ledger's key (a chat, or a chat's forum topic)
    after: int  # the chat's newest message id known when the send left
    left_at: float  # Unix time
    expected: Expected
    passes: int
    title: str
    published_at: str


@dataclass(frozen=True, slots=True)
class Resolution:
    verdict: Verdict
    reason: str
    message_id: int | None = None
    sent_at: datetime | None = None
    photo: bool = False
    forwards: int = 0  # forwards made to the audit chat


# -- what the post shows ----------------------------------------------------------------------


def visible_text(html_text: str) -> str:
    """What Telegram shows of Telegram HTML: tags removed, entities decoded, trimmed."""
    return html.unescape(_TAG.sub("", html_text)).strip()


def link_urls(html_text: str) -> tuple[str, ...]:
    return tuple(html.unescape(first or second) for first, second in _HREF.findall(html_text))


def expected_of(message: Message, article: Article) -> Expected:
    """Every form the post of ``message`` may have taken (a photo with its caption; a refused
    photo goes as text; HTML Telegram cannot parse goes as plain text), and its renderings
    for the ledger."""
    from publisher.codec import digest_of
    from publisher.edits import PHOTO, TEXT, rendering_of

    forms = []
    renderings = {TEXT: rendering_of(message, TEXT).to_json()}
    if message.photo_url:
        forms.append(Form(True, visible_text(message.html), link_urls(message.html)))
        renderings[PHOTO] = rendering_of(message, PHOTO).to_json()
    forms.append(Form(False, visible_text(message.text_html), link_urls(message.text_html)))
    forms.append(Form(False, message.plain.strip(), ()))
    return Expected(tuple(dict.fromkeys(forms)), renderings, digest_of(article), article.title)


def likeness(text: str, photo: bool, links: Sequence[str], expected: Expected) -> Likeness:
    """Is a forwarded message the post? ``LIKE`` when it shares the first line or a link
    with one of its forms without being one: then no verdict is safe (Telegram may have
    shown a detail otherwise than our reading of its HTML predicts)."""
    shown = text.strip()
    seen = tuple(_same_url(link) for link in links)
    if any(form.photo == photo and form.text == shown
           and tuple(_same_url(link) for link in form.links) == seen
           for form in expected.forms):
        return Likeness.SAME
    first = _first_line(shown)
    for form in expected.forms:
        if (first and first == _first_line(form.text)) or \
                {_same_url(link) for link in form.links} & set(seen):
            return Likeness.LIKE
    return Likeness.OTHER


def _same_url(url: str) -> str:
    """A link as Telegram may give it back: scheme and host lower-cased, "/" for no path."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/",
                       parts.query, parts.fragment))


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# -- the ledger's side ------------------------------------------------------------------------


def last_message_id(db: Database, chat: str) -> int | None:
    """The newest message id the state knows of in ``chat`` (its topics included): of its
    posts (sent, gone, retracted) and digests."""
    pattern = chat.replace("%", r"\%").replace("_", r"\_") + "/%"
    found = [row[0] for row in db.execute(
        "SELECT MAX(message_id) FROM deliveries WHERE (chat_id = ? OR chat_id LIKE ? "
        "ESCAPE '\\') AND message_id IS NOT NULL", (chat, pattern))]
    from publisher.digest_ledger import has_table

    if has_table(db, "digests"):
        found += [row[0] for row in db.execute(
            "SELECT MAX(message_id) FROM digests WHERE (chat_id = ? OR chat_id LIKE ? "
            "ESCAPE '\\') AND message_id IS NOT NULL", (chat, pattern))]
    known = [int(value) for value in found if value is not None]
    return max(known) if known else None


def prepare(db: Database, article_id: str, key: str, after: int, message: Message,
            article: Article, now: float) -> None:
    """Before the send leaves: what a look would need if it ends uncertain."""
    db.execute(
        upsert("uncertain_probes", ("article_id", "chat_id", "state", "after_message_id",
                                    "left_at", "expected", "passes", "reason", "updated_at"),
               ("article_id", "chat_id")),
        (article_id, key, PREPARED, after, now, expected_of(message, article).to_json(), 0, "",
         utc_now_iso()),
    )


def forget(db: Database, article_id: str, key: str) -> None:
    """The send settled (sent, not sent, failed): no look is needed."""
    db.execute("DELETE FROM uncertain_probes WHERE article_id = ? AND chat_id = ?",
               (article_id, key))


_DUE_PROBES = (
    "SELECT p.article_id, p.chat_id, p.after_message_id, p.left_at, p.expected, p.passes, "
    "d.title, d.published_at FROM uncertain_probes p JOIN deliveries d "
    "ON d.article_id = p.article_id AND d.chat_id = p.chat_id "
    f"WHERE d.state = '{UNCERTAIN}' AND p.state IN ('{DUE}', '{PREPARED}')"
)


def due_probes(db: Database, keys: Iterable[str] | None = None) -> list[Probe]:
    """The uncertain sends a look may still resolve, oldest send first (a send a process
    left in flight, recovered as uncertain, is one too)."""
    if not has_probes(db):
        return []
    params: list[Any] = []
    sql = _DUE_PROBES
    if keys is not None:
        chosen = list(keys)
        if not chosen:
            return []
        sql += f" AND p.chat_id IN ({','.join('?' * len(chosen))})"
        params = chosen
    rows = db.execute(sql + " ORDER BY p.left_at, p.article_id", params).fetchall()
    return [Probe(str(a), str(c), int(after), float(left), Expected.from_json(str(expected)),
                  int(passes), str(title), str(published))
            for a, c, after, left, expected, passes, title, published in rows]


def probe_for(db: Database, article_id: str, key: str) -> Probe | None:
    return next((probe for probe in due_probes(db, [key]) if probe.article_id == article_id),
                None)


def has_probes(db: Database) -> bool:
    from publisher.digest_ledger import has_table

    return has_table(db, "uncertain_probes")


def record_found(db: Database, probe: Probe, resolution: Resolution) -> bool:
    """The post exists: ``sent`` with its id, date and rendering; False when another
    process settled the pair meanwhile."""
    from publisher.edits import PHOTO, TEXT

    kind = PHOTO if resolution.photo and PHOTO in probe.expected.renderings else TEXT
    sent_at = (resolution.sent_at or datetime.now(UTC)).isoformat(timespec="seconds")
    changed = db.execute(
        "UPDATE deliveries SET state = 'sent', message_id = ?, sent_to = ?, sent_at = ?, "
        "reason = ?, claimed_by = NULL, kind = ?, rendered = ?, article_digest = ?, "
        f"title = ?, updated_at = ? WHERE article_id = ? AND chat_id = ? AND state = '{UNCERTAIN}'",
        (resolution.message_id, probe.chat_id, sent_at, FOUND_REASON, kind,
         probe.expected.renderings[kind], probe.expected.article_digest, probe.expected.title,
         utc_now_iso(), probe.article_id, probe.chat_id),
    ).rowcount
    if changed == 1:  # else the row (and any new probe of it) is another process's now
        forget(db, probe.article_id, probe.chat_id)
    return changed == 1


def requeue(db: Database, probe: Probe, reason: str, not_before: float) -> bool:
    """Back to ``pending`` from ``uncertain`` (not posted, or ``on_uncertain = "resend"``)."""
    changed = db.execute(
        "UPDATE deliveries SET state = 'pending', claimed_by = NULL, reason = ?, "
        f"next_attempt_at = ?, updated_at = ? WHERE article_id = ? AND chat_id = ? "
        f"AND state = '{UNCERTAIN}'",
        (reason, not_before, utc_now_iso(), probe.article_id, probe.chat_id),
    ).rowcount
    if changed == 1:
        forget(db, probe.article_id, probe.chat_id)
    return changed == 1


def record_undecided(db: Database, probe: Probe, reason: str) -> bool:
    """A look that could not be made: due again, or given up after ``MAX_PASSES``; True
    when it is still due."""
    if probe.passes + 1 >= MAX_PASSES:
        give_up(db, probe, f"{reason} ({MAX_PASSES} looks)")
        return False
    db.execute(
        f"UPDATE uncertain_probes SET state = '{DUE}', passes = passes + 1, reason = ?, "
        "updated_at = ? WHERE article_id = ? AND chat_id = ?",
        (reason, utc_now_iso(), probe.article_id, probe.chat_id),
    )
    return True


def give_up(db: Database, probe: Probe, reason: str) -> None:
    """The look cannot tell: it stays uncertain, for the operator, and says why."""
    db.execute(
        f"UPDATE uncertain_probes SET state = '{GIVEN_UP_STATE}', reason = ?, updated_at = ? "
        "WHERE article_id = ? AND chat_id = ?",
        (reason, utc_now_iso(), probe.article_id, probe.chat_id),
    )
    db.execute(
        "UPDATE deliveries SET reason = reason || ? WHERE article_id = ? AND chat_id = ? "
        f"AND state = '{UNCERTAIN}'",
        (f"; not resolved by a look: {reason}", probe.article_id, probe.chat_id),
    )


def drop_settled(db: Database) -> None:
    """Probe rows whose pair is no longer in flight or uncertain (failed, skipped...)."""
    if has_probes(db):
        db.execute(
            "DELETE FROM uncertain_probes WHERE NOT EXISTS (SELECT 1 FROM deliveries d "
            "WHERE d.article_id = uncertain_probes.article_id AND d.chat_id = "
            "uncertain_probes.chat_id AND d.state IN ('sending', 'uncertain'))"
        )


# -- the look ---------------------------------------------------------------------------------


Pace = Callable[[], Awaitable[bool]]  # wait for the audit chat's next slot; False: stop now
Pause = Callable[[float], Awaitable[None]]


@dataclass
class _Scan:
    """What the candidates said so far."""

    settled_at: float  # from then on, a missing id is not a send still being carried out
    misses: int = 0  # "not found" in a row since the last existing message
    gap: bool = False  # a missing id before an existing one: a deleted message, maybe ours
    forwards: int = 0


async def look(sender: Any, audit_chat: str, probe: Probe, *, pace: Pace, pause: Pause,
               clock: Callable[[], float] = time.time, label: str = "") -> Resolution:
    """Forward the candidates of ``probe`` to ``audit_chat`` one by one until a verdict;
    each forward is deleted again. ``sender``: a ``delivery.Forwarder``. A post found needs
    no wait; ids found missing before ``SETTLE_SECONDS`` after the send left are looked at
    again once that time has come, before "not posted" is concluded."""
    chat_id, _thread = split_key(probe.chat_id)
    scan = _Scan(probe.left_at + SETTLE_SECONDS)
    candidate = probe.after + 1
    while candidate <= probe.after + WINDOW:
        if not await pace():
            return Resolution(Verdict.UNDECIDED, "stopped before the look ended",
                              forwards=scan.forwards)
        verdict = await _look_at(sender, audit_chat, chat_id, candidate, probe, scan, label)
        if verdict is not None and verdict.verdict is Verdict.NOT_POSTED \
                and clock() < scan.settled_at:
            # Missing so soon after the send: looked at again once it has surely been
            # carried out, if it was received at all.
            await pause(scan.settled_at - clock())
            candidate, scan.misses = candidate - TAIL + 1, 0
            continue
        if verdict is not None:
            return verdict
        candidate += 1
    return Resolution(Verdict.GIVEN_UP, f"no trace of it within {WINDOW} message ids after "
                      f"{probe.after}", forwards=scan.forwards)


async def _look_at(sender: Any, audit_chat: str, chat_id: str, candidate: int, probe: Probe,
                   scan: _Scan, label: str) -> Resolution | None:
    """One candidate: a verdict, or None to look at the next one."""
    try:
        copy = await sender.forward_message(audit_chat, chat_id, candidate)
    except SendError as exc:
        if NOT_FOUND in exc.reason.lower():
            scan.misses += 1
            if scan.misses < TAIL:
                return None
            if scan.gap:
                return Resolution(Verdict.GIVEN_UP, "a message after its last known id was "
                                  "deleted: it may have been this post", forwards=scan.forwards)
            return Resolution(Verdict.NOT_POSTED, f"ids {candidate - TAIL + 1}-{candidate} "
                              "are beyond the chat's newest message", forwards=scan.forwards)
        return _refused(exc, audit_chat, scan)
    scan.forwards += 1
    await _delete_copy(sender, audit_chat, copy.message_id, label)
    if scan.misses:
        scan.gap = True
    scan.misses = 0
    if copy.origin_message_id is not None and copy.origin_message_id != candidate:
        return Resolution(Verdict.GIVEN_UP, f"forwarding id {candidate} gave message "
                          f"{copy.origin_message_id}", forwards=scan.forwards)
    match likeness(copy.text, copy.has_photo, copy.link_urls, probe.expected):
        case Likeness.SAME:
            sent_at = (datetime.fromtimestamp(copy.origin_date, UTC)
                       if copy.origin_date is not None else None)
            return Resolution(Verdict.FOUND, f"message {candidate}", candidate, sent_at,
                              copy.has_photo, scan.forwards)
        case Likeness.LIKE:
            return Resolution(Verdict.GIVEN_UP, f"message {candidate} looks like it but "
                              "differs", forwards=scan.forwards)
    return None


def _refused(exc: SendError, audit_chat: str, scan: _Scan) -> Resolution:
    """A forward that failed otherwise. A refusal is given up at once: the audit chat or
    the channel refuses (403, no rights), a 400 about the message (a protected channel's
    "message can't be forwarded"). Anything else (a 429, the network, a 5xx, no answer) is
    looked at again later."""
    if isinstance(exc, ChatForbidden | Rejected | ChatMigrated):
        return Resolution(Verdict.GIVEN_UP, f"forwarding to {audit_chat} refused: {exc.reason}",
                          forwards=scan.forwards)
    return Resolution(Verdict.UNDECIDED, f"the look failed: {exc.reason}",
                      forwards=scan.forwards)


async def _delete_copy(sender: Any, audit_chat: str, message_id: int, label: str) -> None:
    """The copy in the audit chat goes again; a failure leaves it there (logged)."""
    try:
        await sender.delete_message(audit_chat, message_id)
    except SendError as exc:
        event(log, logging.WARNING, "audit_copy_left", chat=audit_chat, message_id=message_id,
              reason=exc.reason, of=label)
