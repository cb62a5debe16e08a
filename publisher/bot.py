"""The followers' bot: one Telegram update in, its effect on the followers' rows, the replies out.

``FollowerBot.handle`` reads an update (a Bot API JSON object: from ``getUpdates`` or a
webhook, the same), changes the rows (``publisher.followers``) and returns the replies as
values (``SendText``, ``AnswerCallback``, ``EditKeyboard``); it sends nothing and opens no
transaction: ``publisher.updates`` wraps its changes and the update's offset in one, and
sends the replies after the commit (a crash then loses at most a reply, never doubles an
effect).

Everything in an update is untrusted: fields are checked for their types, a callback's data
must be one of ours (``t:`` and 16 hex digits, a digest of the topic's slug: slugs may be 80
characters, callback data at most 64 bytes), text longer than ``max_input_chars`` is not
parsed, and nothing a follower typed is echoed, rendered unescaped or logged (the log gets
the command's name and the text's length).
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from publisher import followers
from publisher.catalog import _NEWEST, _TOPIC_NEWEST, Catalog
from publisher.config import FollowersConfig
from publisher.db import Database
from publisher.errors import RenderError
from publisher.logs import event
from publisher.messages import CallbackButton
from publisher.models import Article
from publisher.selection import topic_slug

log = logging.getLogger(__name__)

LATEST_COUNT = 5
MAX_KEYBOARD_TOPICS = 50  # Telegram takes 100 buttons a keyboard; a list this long is enough
MAX_BUTTON_CHARS = 40
MAX_STRANGERS = 10_000  # rate-limit memory for chats that are no followers (yet)
COMMANDS = frozenset({"start", "topics", "subscribe", "unsubscribe", "latest", "stop", "help"})
CALLBACK = re.compile(r"t:([0-9a-f]{16})")
WELCOME_VARIABLES = frozenset({"bot_username", "topics"})
DEFAULT_WELCOME = ("Hello! I send you the new articles of the topics you choose, as they "
                   "are published. Tap a topic below to follow it.")
ONE_LINE_HELP = "I did not understand that. /topics to choose topics, /help for the rest."
HELP = (
    "/topics: the topics, tap one to follow it or stop\n"
    "/subscribe TOPIC, /unsubscribe TOPIC or /unsubscribe all\n"
    "/latest or /latest TOPIC: the newest articles\n"
    "/stop: forget me (every topic and all I keep about you)\n"
    "/help: this list"
)


# -- the replies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SendText:
    """A message to a private chat (HTML), with the topic keyboard when ``buttons``."""

    chat_id: str
    html: str
    buttons: tuple[tuple[CallbackButton, ...], ...] = ()


@dataclass(frozen=True)
class AnswerCallback:
    callback_id: str
    text: str = ""


@dataclass(frozen=True)
class EditKeyboard:
    chat_id: str
    message_id: int
    buttons: tuple[tuple[CallbackButton, ...], ...]


Effect = SendText | AnswerCallback | EditKeyboard


# -- the topics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    slug: str
    name: str

    @property
    def token(self) -> str:
        """Its callback data: fixed length whatever the slug's."""
        return "t:" + hashlib.sha256(self.slug.encode()).hexdigest()[:16]


class TopicIndex:
    """The topics of the selected articles, and their newest articles, from the catalog
    (never a refetch). Read again when the catalog's revision moves."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._revision: int | None = None
        self._topics: list[Topic] = []

    def topics(self) -> list[Topic]:
        revision = self._catalog.revision()
        if revision != self._revision:
            self._topics = [self._topic(slug) for slug in self._catalog.topic_slugs()]
            self._revision = revision
        return self._topics

    def _topic(self, slug: str) -> Topic:
        """The slug with the name its newest article spells it with."""
        for article in self.latest(slug, 1):
            for name in article.topics:
                if topic_slug(name) == slug:
                    return Topic(slug, name)
        return Topic(slug, slug)

    def find(self, text: str) -> Topic | None:
        """A topic by its name or slug, in any case (or by the slug the text would have)."""
        wanted = text.strip().casefold()
        if not wanted:
            return None
        for topic in self.topics():
            if wanted in (topic.slug, topic.name.casefold()):
                return topic
        slug = topic_slug(text.strip())
        return next((topic for topic in self.topics() if topic.slug == slug), None)

    def by_token(self, token: str) -> Topic | None:
        return next((topic for topic in self.topics() if topic.token == token), None)

    def latest(self, slug: str | None, count: int = LATEST_COUNT) -> list[Article]:
        db = self._catalog.db
        if slug is None:
            rows = db.execute(f"{_NEWEST} LIMIT ?", (count,))
        else:
            rows = db.execute(_TOPIC_NEWEST, (slug, count))
        return self._catalog.articles_at([row[0] for row in rows])


# -- the limits ----------------------------------------------------------------------------


class CommandLimits:
    """A follower's commands at most every ``interval`` s, ``/latest`` every ``latest``
    s: kept in the followers' rows; for a chat that is no follower, in memory (nothing is
    stored about a stranger)."""

    def __init__(self, interval: float, latest: float) -> None:
        self.interval = interval
        self.latest = latest
        self._strangers: OrderedDict[tuple[str, bool], float] = OrderedDict()

    def allow(self, db: Database, chat_id: str, now: float, *, latest: bool = False) -> bool:
        gap = self.latest if latest else self.interval
        if followers.is_follower(db, chat_id):
            last_command, last_latest = followers.last_commands(db, chat_id)
            if now - (last_latest if latest else last_command) < gap:
                return False
            followers.touch_command(db, chat_id, now, latest=latest)
            return True
        key = (chat_id, latest)
        if now - self._strangers.get(key, 0.0) < gap:
            return False
        self._strangers[key] = now
        self._strangers.move_to_end(key)
        while len(self._strangers) > MAX_STRANGERS:
            self._strangers.popitem(last=False)
        return True


# -- the bot ---------------------------------------------------------------------------------


def bot_schema(dialect: str) -> list[str]:
    """Groups answered once (then left in silence), and the webhook's inbox: each update
    stored as received, its body cleared once handled (the row stays a day: Telegram may
    deliver an update again, and it must not be handled twice)."""
    del dialect
    return [
        """CREATE TABLE IF NOT EXISTS follower_groups (
            chat_id TEXT PRIMARY KEY,
            answered_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS follower_updates (
            update_id BIGINT PRIMARY KEY,
            body TEXT,
            received_at DOUBLE PRECISION NOT NULL
        )""",
    ]


@dataclass(frozen=True)
class BotSettings:
    bot_username: str = ""
    max_subscribers: int = 0
    command_interval: float = 1.0
    latest_interval: float = 10.0
    max_input_chars: int = 256
    welcome: str = ""

    @classmethod
    def from_config(cls, config: FollowersConfig, bot_username: str = "") -> BotSettings:
        return cls(bot_username=(bot_username or config.bot_username).lstrip("@"),
                   max_subscribers=config.max_subscribers,
                   command_interval=config.command_interval_seconds,
                   latest_interval=config.latest_interval_seconds,
                   max_input_chars=config.max_input_chars, welcome=config.welcome)


class FollowerBot:
    """What the bot does with each update; see the module's docstring."""

    def __init__(self, topics: TopicIndex, settings: BotSettings) -> None:
        self.topics = topics
        self.settings = settings
        self.limits = CommandLimits(settings.command_interval, settings.latest_interval)

    def handle(self, db: Database, update: Mapping[str, Any], now: float | None = None
               ) -> list[Effect]:
        """The update's effect on ``db`` (in the caller's transaction) and its replies."""
        now = time.time() if now is None else now
        if isinstance(update.get("callback_query"), dict):
            return self._on_callback(db, update["callback_query"], now)
        if isinstance(update.get("message"), dict):
            return self._on_message(db, update["message"], now)
        if isinstance(update.get("my_chat_member"), dict):
            self._on_membership(db, update["my_chat_member"])
        return []

    # -- messages ------------------------------------------------------------------------

    def _on_message(self, db: Database, message: Mapping[str, Any], now: float) -> list[Effect]:
        chat = message.get("chat")
        if not isinstance(chat, dict) or not _is_id(chat.get("id")):
            return []
        chat_id = str(chat["id"])
        if chat.get("type") in ("group", "supergroup"):
            return self._on_group(db, chat_id, now)
        if chat.get("type") != "private":
            return []
        text = message.get("text")
        if not self.limits.allow(db, chat_id, now):
            event(log, logging.DEBUG, "follower_command_dropped", reason="rate")
            return []
        if not isinstance(text, str) or len(text) > self.settings.max_input_chars:
            event(log, logging.DEBUG, "follower_input_ignored",
                  length=len(text) if isinstance(text, str) else 0)
            return [SendText(chat_id, html.escape(ONE_LINE_HELP))]
        command, argument = self._parse(text)
        event(log, logging.DEBUG, "follower_command",
              command=command if command in COMMANDS else "other", length=len(text))
        effects = self._command(db, chat_id, command, argument, now)
        followers.touch_command(db, chat_id, now)  # a follower it made counts it, too
        return effects

    def _parse(self, text: str) -> tuple[str, str]:
        """("start", "robotics") from "/start@ThisBot robotics"; ("", "") for no command
        (or one addressed to another bot)."""
        text = text.strip()
        if not text.startswith("/"):
            return "", ""
        head, _, argument = text.partition(" ")
        name, _, addressee = head[1:].partition("@")
        if addressee and addressee.casefold() != self.settings.bot_username.casefold():
            return "", ""
        return name.casefold(), argument.strip()

    def _command(self, db: Database, chat_id: str, command: str, argument: str,
                 now: float) -> list[Effect]:
        match command:
            case "start":
                return self._start(db, chat_id, argument, now)
            case "topics":
                return [self._keyboard_message(db, chat_id, "Tap a topic to follow it, tap "
                                               "it again to stop.")]
            case "subscribe":
                return self._subscribe(db, chat_id, argument, now)
            case "unsubscribe":
                return self._unsubscribe(db, chat_id, argument)
            case "latest":
                return self._latest(db, chat_id, argument, now)
            case "stop":
                followers.forget(db, chat_id)
                return [SendText(chat_id, "Done: I forgot you, your topics with you. "
                                 "/start to begin again.")]
            case "help":
                return [SendText(chat_id, html.escape(HELP))]
        return [SendText(chat_id, html.escape(ONE_LINE_HELP))]

    def _start(self, db: Database, chat_id: str, argument: str, now: float) -> list[Effect]:
        topic = self.topics.find(argument) if argument else None
        if topic is not None:  # a deep link: t.me/<bot>?start=<slug>
            refusal = self._follow(db, chat_id, topic, now)
            if refusal:
                return [SendText(chat_id, refusal)]
            return [self._keyboard_message(
                db, chat_id, f"You follow <b>{html.escape(topic.name)}</b> now. "
                "Tap to change your topics.")]
        return [self._keyboard_message(db, chat_id, self._welcome())]

    def _welcome(self) -> str:
        if not self.settings.welcome:
            return html.escape(DEFAULT_WELCOME)
        from publisher.templates import compile_template, render

        template = compile_template(self.settings.welcome, "followers.welcome",
                                    variables=WELCOME_VARIABLES)
        names = [topic.name for topic in self.topics.topics()]
        try:
            return render(template, {"bot_username": self.settings.bot_username,
                                     "topics": names}, "followers.welcome")
        except RenderError as exc:  # checked at load; a rendering can still fail
            event(log, logging.WARNING, "follower_welcome_failed", reason=str(exc))
            return html.escape(DEFAULT_WELCOME)

    def _subscribe(self, db: Database, chat_id: str, argument: str,
                   now: float) -> list[Effect]:
        topic = self.topics.find(argument)
        if topic is None:
            return [SendText(chat_id, "Which topic? /topics lists them: tap one to follow it.")]
        refusal = self._follow(db, chat_id, topic, now)
        return [SendText(chat_id, refusal or f"You follow <b>{html.escape(topic.name)}</b> "
                         "now: its new articles come here.")]

    def _follow(self, db: Database, chat_id: str, topic: Topic, now: float) -> str:
        """Follow ``topic``; the polite refusal when there is no room, else ""."""
        try:
            followers.subscribe(db, chat_id, topic.slug, now, self.settings.max_subscribers)
        except followers.FollowerLimitReached:
            return "Sorry, I cannot take more followers at the moment."
        return ""

    def _unsubscribe(self, db: Database, chat_id: str, argument: str) -> list[Effect]:
        if argument.casefold() == "all":
            count = followers.unsubscribe_all(db, chat_id)
            return [SendText(chat_id, f"You follow no topic now (you followed {count}).")]
        topic = self.topics.find(argument)
        if topic is None or not followers.unsubscribe(db, chat_id, topic.slug):
            return [SendText(chat_id, "You do not follow that. /topics shows what you follow.")]
        return [SendText(chat_id, f"You no longer follow <b>{html.escape(topic.name)}</b>.")]

    def _latest(self, db: Database, chat_id: str, argument: str, now: float) -> list[Effect]:
        if not self.limits.allow(db, chat_id, now, latest=True):
            return [SendText(chat_id, f"/latest once every "
                             f"{self.settings.latest_interval:g} seconds, please.")]
        topic = self.topics.find(argument) if argument else None
        if argument and topic is None:
            return [SendText(chat_id, "Which topic? /topics lists them.")]
        articles = self.topics.latest(topic.slug if topic else None)
        links = [_link(article) for article in articles if _is_http(article.url)]
        if not links:
            return [SendText(chat_id, "Nothing published yet.")]
        heading = f"The newest in <b>{html.escape(topic.name)}</b>:" if topic else "The newest:"
        return [SendText(chat_id, "\n".join([heading, *links]))]

    def _on_group(self, db: Database, chat_id: str, now: float) -> list[Effect]:
        """One polite answer per group, then silence: only the group's id is kept."""
        answered = db.execute("SELECT 1 FROM follower_groups WHERE chat_id = ?",
                              (chat_id,)).fetchone()
        if answered is not None:
            return []
        db.execute("INSERT INTO follower_groups (chat_id, answered_at) VALUES (?, ?)",
                   (chat_id, now))
        where = f"t.me/{self.settings.bot_username}" if self.settings.bot_username \
            else "a private chat with me"
        return [SendText(chat_id, html.escape(
            f"Thank you! I take subscriptions in a private chat: {where}"))]

    def _on_membership(self, db: Database, change: Mapping[str, Any]) -> None:
        """A follower who blocks the bot is forgotten at once (delivery would find out)."""
        chat = change.get("chat")
        member = change.get("new_chat_member")
        if (isinstance(chat, dict) and chat.get("type") == "private" and _is_id(chat.get("id"))
                and isinstance(member, dict) and member.get("status") == "kicked"):
            followers.forget(db, str(chat["id"]))

    # -- the keyboard ----------------------------------------------------------------------

    def keyboard(self, db: Database, chat_id: str) -> tuple[tuple[CallbackButton, ...], ...]:
        followed = set(followers.topics_of(db, chat_id))
        return tuple(
            (CallbackButton(_button_text(topic, topic.slug in followed), topic.token),)
            for topic in self.topics.topics()[:MAX_KEYBOARD_TOPICS]
        )

    def _keyboard_message(self, db: Database, chat_id: str, text_html: str) -> Effect:
        buttons = self.keyboard(db, chat_id)
        if not buttons:
            return SendText(chat_id, text_html + "\n\n" + "No topics yet: come back soon.")
        return SendText(chat_id, text_html, buttons)

    def _on_callback(self, db: Database, query: Mapping[str, Any], now: float) -> list[Effect]:
        callback_id = query.get("id")
        if not isinstance(callback_id, str) or not callback_id:
            return []
        message = query.get("message")
        chat = message.get("chat") if isinstance(message, dict) else None
        if (not isinstance(message, dict) or not isinstance(chat, dict)
                or chat.get("type") != "private" or not _is_id(chat.get("id"))
                or not _is_id(message.get("message_id"))):
            return [AnswerCallback(callback_id)]
        chat_id, message_id = str(chat["id"]), int(message["message_id"])
        data = query.get("data")
        match = CALLBACK.fullmatch(data) if isinstance(data, str) else None
        if match is None:
            event(log, logging.DEBUG, "follower_callback_refused",
                  length=len(data) if isinstance(data, str) else 0)
            return [AnswerCallback(callback_id)]
        if not self.limits.allow(db, chat_id, now):
            return [AnswerCallback(callback_id, "One tap a second, please.")]
        topic = self.topics.by_token(match.group(0))
        if topic is None:
            return [AnswerCallback(callback_id, "That topic is no longer listed."),
                    EditKeyboard(chat_id, message_id, self.keyboard(db, chat_id))]
        return self._toggle(db, chat_id, message_id, callback_id, topic, now)

    def _toggle(self, db: Database, chat_id: str, message_id: int, callback_id: str,
                topic: Topic, now: float) -> list[Effect]:
        try:
            now_followed = followers.toggle(db, chat_id, topic.slug, now,
                                            self.settings.max_subscribers)
        except followers.FollowerLimitReached:
            return [AnswerCallback(callback_id, "Sorry, I cannot take more followers now.")]
        notice = f"Following {topic.name}" if now_followed else f"Stopped {topic.name}"
        event(log, logging.DEBUG, "follower_toggle", followed=now_followed)
        return [AnswerCallback(callback_id, _cut(notice, 200)),
                EditKeyboard(chat_id, message_id, self.keyboard(db, chat_id))]


def _button_text(topic: Topic, followed: bool) -> str:
    return ("✓ " if followed else "") + _cut(topic.name, MAX_BUTTON_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _link(article: Article) -> str:
    title = html.escape(_cut(article.title, 200))
    return f'• <a href="{html.escape(article.url, quote=True)}">{title}</a>'


def update_id_of(update: Mapping[str, Any]) -> int | None:
    value = update.get("update_id")
    return value if isinstance(value, int) and _is_id(value) and value >= 0 else None


def describe_effects(effects: Sequence[Effect]) -> str:
    """The replies' kinds, for a log line: never their text."""
    return ",".join(type(effect).__name__ for effect in effects) or "none"
