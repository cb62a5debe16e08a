"""Destinations: the chats the config names, as Telegram's numeric chat ids.

The config names a chat as "@opnews" or as "-1001000000000"; the ledger keys it by the id
``getChat`` answers, so both spellings are one chat and nothing is posted twice when the
config changes from one to the other. Each push resolves every destination once, at its
start; what Telegram said is remembered in the state (``chat_names``, ``chats``). When
Telegram cannot be asked, the remembered id is used (a numeric id needs none); an "@name"
never resolved cannot be posted to in that run: its pairs are planned under the name and
re-keyed when it resolves, so nothing is lost.

A ledger of an earlier version keys chats by the config's text. Each push also asks which
chat every such name is, and re-keys its rows; until that is done for every name under which
a post went out (or may have), ``unmatched_names``, a destination Telegram did not confirm in
this push might be one of them, and nothing is posted to it: its posts wait.

A destination may be a forum topic, ``"@group/42"`` or ``"-100123/42"`` (``forum``): it
resolves as its chat does and is keyed ``"-100123/42"``; a topic needs a forum supergroup.

Routes match topics by slug: ``robotics``, ``Robotics`` and ``"Robotics "`` route the topic
"Robotics"; a route that matches no topic of the corpus is reported (``route_warnings``).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from publisher.config import Config
from publisher.delivery import (
    ChatForbidden,
    ChatInfo,
    ChatMigrated,
    MemberInfo,
    Rejected,
    Sender,
    SendError,
    Unauthorized,
)
from publisher.forum import chat_of, split_key, thread_of, with_thread
from publisher.logs import event
from publisher.selection import topic_slug
from publisher.settings import PostSettings
from publisher.state import ChatRecord, Store

log = logging.getLogger(__name__)

MAX_MIGRATIONS = 2  # a chat that keeps answering "migrated" is not followed forever
_CHAT_ID = re.compile(r"^-?\d+$")


def is_chat_id(text: str) -> bool:
    """Whether ``text`` is a numeric chat id, or one with a forum topic ("-100123/42"):
    what the ledger keys a resolved destination by."""
    return bool(_CHAT_ID.match(chat_of(text.strip())))


def chat_name(text: str) -> str:
    """A destination as configured, normalised: "@OpNews" -> "@opnews" (Telegram's names
    are case-insensitive), " -100123 " -> "-100123", "@Group/042" -> "@group/42"."""
    chat, thread = split_key(text.strip())
    chat = str(int(chat)) if _CHAT_ID.match(chat) else chat.lower()
    return with_thread(chat, thread)


def follow_migrations(migrations: Mapping[str, str], chat: str) -> str:
    """Where a chat that migrated (a group that became a supergroup) went, hop by hop."""
    seen = {chat}
    while chat in migrations and migrations[chat] not in seen:
        chat = migrations[chat]
        seen.add(chat)
    return chat


@dataclass(frozen=True, slots=True)
class Destination:
    """One chat as configured, and the ledger key it has in this push."""

    configured: str  # as written in the config
    key: str  # Telegram's numeric id; the configured name (``chat_name``) while never resolved
    chat: ChatRecord | None = None  # what Telegram said of it (now or when last asked)
    error: str = ""  # why it cannot be posted to in this push
    confirmed: bool = False  # Telegram said which chat it is, in this push
    answered: bool = False  # Telegram answered about it in this push (maybe: no usable chat)

    @property
    def resolved(self) -> bool:
        """Whether its chat is known (confirmed now, remembered, or a numeric id)."""
        return is_chat_id(self.key)

    @property
    def known(self) -> bool:
        """Whether it is known which chat it is, or that it names none Telegram lets us
        use ("chat not found"): a name Telegram could not be asked about might be any."""
        return self.resolved or self.answered

    @property
    def postable(self) -> bool:
        return not self.error and is_chat_id(self.key)


class Destinations:
    """Every configured destination of one push, and the ledger keys of its topics."""

    def __init__(self, config: Config, items: Sequence[Destination],
                 chats: Mapping[str, ChatRecord] | None = None, *, rekeyed: int = 0) -> None:
        self._config = config
        self.items = list(items)
        self.rekeyed = rekeyed  # ledger rows moved under another key while resolving
        self._by_text = {item.configured: item for item in self.items}
        self._chats = dict(chats or {})
        for item in self.items:
            if item.chat is not None:
                self._chats[chat_of(item.key)] = item.chat

    def key(self, configured: str) -> str:
        return self._by_text[configured].key

    def keys(self) -> list[str]:
        """Every ledger key of a configured destination, main chat first."""
        return list(dict.fromkeys(item.key for item in self.items))

    def postable_keys(self) -> list[str]:
        return list(dict.fromkeys(item.key for item in self.items if item.postable))

    def keys_for(self, topics: tuple[str, ...]) -> list[str]:
        """The ledger keys an article with these topics goes to (two spellings of one chat
        are one key)."""
        return list(dict.fromkeys(self.key(text) for text in self._config.chats_for(topics)))

    @property
    def complete(self) -> bool:
        """Every destination's chat is known (or known to be none): no ledger key may be a
        destination's without the push knowing it."""
        return all(item.known for item in self.items)

    @property
    def all_confirmed(self) -> bool:
        """Telegram said in this push which chat every destination is (or that it names no
        chat): a name none of them goes by is no destination."""
        return all(item.confirmed or (item.answered and not item.resolved)
                   for item in self.items)

    def unresolved(self) -> list[str]:
        return [item.configured for item in self.items if not item.known]

    def unresolved_for(self, topics: tuple[str, ...]) -> list[str]:
        """The destinations of an article with these topics whose chat is not known."""
        return [text for text in self._config.chats_for(topics)
                if not self._by_text[text].known]

    def owner(self, key: str) -> Destination | None:
        """The configured destination a ledger key belongs to: the one keyed so, or, for a
        name, the destination of that name in another spelling ("@OpNews" is "@opnews")."""
        for item in self.items:
            if item.key == key:
                return item
        if not is_chat_id(key):
            name = chat_name(key)
            for item in self.items:
                if chat_name(item.configured) == name:
                    return item
        return None

    def label(self, key: str) -> str:
        """What to call a ledger key: the destination as configured; for a chat no longer
        configured, its "@username" (as Telegram last gave it), else its id."""
        owner = self.owner(key)
        if owner is not None:
            return owner.configured
        chat = self._chats.get(chat_of(key))
        return with_thread(chat.public_name, thread_of(key)) if chat and chat.public_name \
            else key

    def chat(self, key: str) -> ChatRecord | None:
        """What Telegram said of the chat of a ledger key (a topic's: its group's)."""
        return self._chats.get(chat_of(key))

    def settings_for(self, key: str) -> PostSettings:
        """The settings of the destination a ledger key belongs to (the defaults for a
        chat no longer configured)."""
        owner = self.owner(key)
        return self._config.settings_for(owner.configured if owner else "")

    def setting_name(self, key: str, name: str) -> str:
        """The config key a destination's setting comes from, for messages:
        ``telegram.max_per_run`` or ``telegram.chats."@group/42".max_per_run``."""
        owner = self.owner(key)
        if owner is not None and name in self._config.telegram.chats.get(owner.configured, {}):
            return f'telegram.chats."{owner.configured}".{name}'
        return f"telegram.{name}"

    def moved(self, old: str, new: str) -> Destinations:
        """The same destinations after the chat keyed ``old`` migrated to ``new`` (its
        topics with it)."""
        items = [replace(item, key=with_thread(new, thread_of(item.key)))
                 if chat_of(item.key) == old else item for item in self.items]
        return Destinations(self._config, items, self._chats, rekeyed=self.rekeyed)


def remembered_destinations(config: Config, store: Store | None) -> Destinations:
    """The destinations as the state remembers them, asking Telegram nothing. Two
    spellings of one name ("@OpNews", "@opnews") are one destination, keyed alike."""
    names = store.chat_names() if store is not None else {}
    migrations = store.migrations() if store is not None else {}
    chats = store.chats() if store is not None else {}
    owners: dict[str, list[str]] = {}  # "@username" -> the chats known to go by it
    for chat in chats.values():
        if chat.username:
            owners.setdefault(chat_name(chat.public_name), []).append(chat.chat_id)
    items = []
    for text in config.destinations:
        name, thread = split_key(chat_name(text))
        by_username = owners.get(name, [])
        key = (names.get(name) or (name if is_chat_id(name) else None)
               or (by_username[0] if len(by_username) == 1 else None))
        if key is None:
            items.append(Destination(text, with_thread(name, thread), error=(
                f"cannot post to {text}: Telegram has not resolved it yet; its posts wait")))
            continue
        key = follow_migrations(migrations, key)
        items.append(Destination(text, with_thread(key, thread), chats.get(key)))
    return Destinations(config, items, chats)


def maybe_one_chat(destinations: Destinations,
                   keys: Iterable[str] | None = None) -> list[str]:
    """A line per destination named by a name never resolved, which may be the chat of a
    destination named by an id the state knows nothing of (asking Telegram nothing); only
    those keyed ``keys`` when given."""
    wanted = set(destinations.keys() if keys is None else keys)
    items = [item for item in destinations.items if item.key in wanted]
    names = list(dict.fromkeys(destinations.label(item.key) for item in items
                               if not item.resolved))
    ids = list(dict.fromkeys(item.key for item in items
                             if item.resolved and destinations.chat(item.key) is None))
    if not ids:
        return []
    return [f"{name} and {', '.join(ids)} were never resolved: they may be one chat, which a "
            "push posts to once (it asks Telegram first)" for name in names]


def unmatched_names(store: Store) -> list[str]:
    """The names (not numeric ids) the ledger keeps posts under that went out or may have,
    and that no resolution has re-keyed yet: an earlier version's keys, mostly."""
    return store.posted_keys(key for key in store.chat_keys() if not is_chat_id(key))


def waiting_for_unmatched(text: str, names: Sequence[str]) -> str:
    """Why a destination Telegram did not confirm may not be posted to: the posts kept under
    ``names``, which it may be."""
    return (f"the ledger holds posts under {', '.join(names)} not matched to a chat yet (kept "
            f"by an earlier version), which {text} may be")


async def resolve_destinations(config: Config, store: Store, sender: Sender) -> Destinations:
    """Ask Telegram (``getChat``) which chat each destination is, and each name the ledger
    keeps rows under; remember the answers, and re-key what the ledger kept under an older
    name of a chat. Raises ``Unauthorized`` only."""
    known = remembered_destinations(config, store)
    names = store.chat_names()
    migrations = dict(store.migrations())
    ledger_keys = store.chat_keys()
    configured = list(dict.fromkeys(chat_of(chat_name(text)) for text in config.destinations))
    kept = [chat_of(chat_name(key)) for key in ledger_keys if not is_chat_id(key)]
    asked = list(dict.fromkeys([*configured, *kept]))
    answers = await asyncio.gather(
        *(_ask(name, follow_migrations(migrations, name), store, sender) for name in asked),
        return_exceptions=True,  # every question answered before anything is raised
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    by_name = dict(zip(asked, answers, strict=True))
    rekeyed = 0
    chats = dict(known._chats)
    for name, answer in by_name.items():
        if not isinstance(answer, Resolved):
            continue
        chats[answer.chat.chat_id] = answer.chat
        # What the ledger kept under another name of this chat is re-keyed: the text as
        # written ("@OpNews", before it resolved or by an older publisher), its @username
        # (a config now naming it by id), a group it migrated from.
        texts = [chat_of(text.strip()) for text in config.destinations
                 if chat_of(chat_name(text)) == name]
        sources = [s for s in (*texts, name, answer.chat.public_name, *answer.hops) if s]
        unchanged = (names.get(name) == answer.chat.chat_id
                     and known.chat(answer.chat.chat_id) == answer.chat)
        lowered = {source.lower() for source in sources} - {answer.chat.chat_id}
        # (a topic kept under the name, "@group/42", moves with its chat)
        if not unchanged or any(chat_of(key).lower() in lowered for key in ledger_keys):
            rekeyed += store.remember_chat(name, answer.chat, sources)
    # Re-keyed as far as Telegram answered: what is left under a name might be any chat.
    unmatched = unmatched_names(store) if ledger_keys else []
    items = []
    for text in config.destinations:
        thread = thread_of(chat_name(text))
        answer = by_name[chat_of(chat_name(text))]
        fallback = known._by_text[text]
        if isinstance(answer, Resolved) and thread is not None and not answer.forum:
            items.append(Destination(text, with_thread(answer.chat.chat_id, thread),
                                     answer.chat, error=f"cannot post to {text}: "
                                     f"{not_a_forum(answer.chat.type)}", confirmed=True))
        elif isinstance(answer, Resolved):
            items.append(Destination(text, with_thread(answer.chat.chat_id, thread), answer.chat,
                                     confirmed=True))
        elif isinstance(answer, Unreachable) and fallback.postable and unmatched:
            event(log, logging.WARNING, "chat_unconfirmed", chat=text, reason=answer.reason,
                  unmatched=",".join(unmatched))
            items.append(replace(fallback, error=(
                f"cannot confirm which chat {text} is ({answer.reason}); "
                f"{waiting_for_unmatched(text, unmatched)}: its posts wait until Telegram "
                "confirms which chat it is")))
        elif isinstance(answer, Unreachable) and fallback.postable:
            event(log, logging.WARNING, "chat_unresolved", chat=text, reason=answer.reason,
                  using=fallback.key)
            items.append(fallback)
        elif isinstance(answer, Unreachable):
            items.append(replace(fallback, error=(
                f"cannot resolve {text}: {answer.reason}; its posts wait")))
        else:
            items.append(replace(fallback, error=f"cannot post to {text}: {answer}",
                                 answered=True))
    return Destinations(config, items, chats, rekeyed=rekeyed)


@dataclass(frozen=True, slots=True)
class Resolved:
    chat: ChatRecord
    hops: tuple[str, ...]  # the chats it migrated from, on the way
    forum: bool = False  # a forum supergroup: its topics can be posted to


def not_a_forum(chat_type: str) -> str:
    """Why a forum topic of a chat of this type cannot be posted to."""
    return (f"the chat is a {chat_type}, not a forum: a topic (\"/thread\") needs a "
            "supergroup with topics enabled")


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Telegram could not be asked (down, timed out, rate limited)."""

    reason: str


async def _ask(name: str, target: str, store: Store,
               sender: Sender) -> Resolved | Unreachable | str:
    """What Telegram says ``name`` is: the chat, Unreachable, or why it cannot be used."""
    hops = [name] if target != name else []
    for _ in range(MAX_MIGRATIONS + 1):
        try:
            info = await sender.get_chat(target)
        except ChatMigrated as exc:
            store.move_chat(target, exc.new_chat_id)
            event(log, logging.WARNING, "chat_migrated", chat=target, to=exc.new_chat_id)
            hops.append(target)
            target = exc.new_chat_id
            continue
        except Unauthorized:
            raise
        except (ChatForbidden, Rejected) as exc:
            return exc.reason
        except SendError as exc:
            return Unreachable(exc.reason)
        return Resolved(ChatRecord(str(info.id), info.type, info.title, info.username),
                        tuple(hops), info.is_forum)
    return f"the chat keeps moving (now {target})"


def route_warnings(routes: Mapping[str, Sequence[str]], topic_slugs: Iterable[str]) -> list[str]:
    """One line per route that matches no topic of the corpus, with the closest topic."""
    slugs = sorted(set(topic_slugs))
    warnings = []
    for route in routes:
        slug = topic_slug(route)
        if slug in slugs:
            continue
        close = difflib.get_close_matches(slug, slugs, n=1, cutoff=0.6)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        warnings.append(f'route "{route}" matches no topic of the selected articles{hint}')
    return warnings


# -- publisher check --telegram ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    subject: str  # "bot", or a destination as configured
    detail: str


async def check_telegram(config: Config, sender: Sender) -> list[Check]:
    """getMe, then for every destination getChat and getChatMember: can the bot post there?

    Asks only; writes nothing (not even the state). The first check is the bot's.
    """
    try:
        await sender.start()
        me = await sender.get_me()
    except SendError as exc:
        await sender.close()
        return [Check(False, "bot", exc.reason)]
    try:
        checks = [Check(True, "bot", f"@{me.username} (id {me.id}): the token works")]
        for text in config.destinations:
            checks.append(await _check_destination(text, me.id, sender))
        for key in ("alert_chat", "audit_chat"):  # the operator's chats: the bot posts there
            chat = str(getattr(config.telegram, key)).strip()
            if chat:
                check = await _check_destination(chat, me.id, sender)
                checks.append(replace(check, subject=f"{chat} (telegram.{key})"))
        return checks
    finally:
        await sender.close()


async def _check_destination(text: str, bot_id: int, sender: Sender) -> Check:
    target, thread = split_key(chat_name(text))
    moved = ""
    for _ in range(MAX_MIGRATIONS + 1):
        try:
            chat = await sender.get_chat(target)
            break
        except ChatMigrated as exc:
            target, moved = exc.new_chat_id, f" (migrated to {exc.new_chat_id}: followed)"
        except SendError as exc:
            return Check(False, text, exc.reason)
    else:
        return Check(False, text, f"the chat keeps moving (now {target})")
    title = f' "{chat.title}"' if chat.title else ""
    described = f"{chat.type}{title} ({chat.id}){moved}"
    if thread is not None and not chat.is_forum:
        return Check(False, text, f"{described}: {not_a_forum(chat.type)}")
    if thread is not None:
        described += f", forum topic {thread}"
    try:
        member = await sender.get_chat_member(str(chat.id), bot_id)
    except SendError as exc:
        return Check(False, text, f"{described}: cannot see the bot's membership: {exc.reason}")
    ok, verdict = can_post(chat, member)
    return Check(ok, text, f"{described}: {verdict}")


def can_post(chat: ChatInfo, member: MemberInfo) -> tuple[bool, str]:
    """Whether a bot with this membership can post to this chat, and why (not)."""
    status = member.status
    if status in ("left", "kicked"):
        return False, f"the bot is not a member ({status})"
    if chat.type == "channel":
        if status == "creator":
            return True, "the bot owns the channel"
        if status == "administrator" and member.can_post_messages:
            return True, "the bot is an administrator and can post messages"
        if status == "administrator":
            return False, "the bot is an administrator without the right to post messages"
        return False, f"the bot is a {status}, not an administrator who can post messages"
    if chat.type in ("group", "supergroup"):
        if status in ("creator", "administrator"):
            return True, f"the bot is an {status if status != 'creator' else 'owner'}"
        if status == "restricted":
            if member.is_member and member.can_send_messages:
                return True, "the bot is a restricted member that may send messages"
            return False, "the bot is restricted from sending messages"
        if chat.members_can_send is False:
            return False, "the bot is a member, but members may not send messages"
        return True, "the bot is a member and may send messages"
    return True, "a private chat: it exists (its user must have started the bot)"
