"""Forum topics: a destination is a chat, or a chat plus one topic of a forum supergroup.

The config writes a topic after the chat, with a slash: ``"-1001234567890/42"`` or
``"@group/42"`` (42 is the topic's ``message_thread_id``). The ledger keys a destination by
its resolved chat id plus the thread, ``"-1001234567890/42"``: two topics of one group are
two destinations (an article goes to each once), and ``"@group/42"`` renamed to
``"-1001234567890/42"`` is the same one. Telegram's limits are per chat, so pacing is keyed
by the chat alone (``chat_of``).

No imports from the rest of the publisher but its errors: the state, the config and the
destinations all use these helpers.
"""

from __future__ import annotations

import re

from publisher.errors import ConfigError

SEPARATOR = "/"
MAX_THREAD_ID = 2**63 - 1  # an Integer of the Bot API; more is a typo
_DIGITS = re.compile(r"^\d+$")


def split_key(key: str) -> tuple[str, int | None]:
    """A destination (as configured or as the ledger keys it) as (chat, thread or None);
    lenient: what is not a valid thread stays part of the chat."""
    chat, separator, thread = key.rpartition(SEPARATOR)
    if not separator or not chat or not _DIGITS.match(thread) or int(thread) < 1:
        return key, None
    return chat, int(thread)


def chat_of(key: str) -> str:
    """The chat of a destination: what pacing, getChat and chat migrations are keyed by."""
    return split_key(key)[0]


def thread_of(key: str) -> int | None:
    return split_key(key)[1]


def with_thread(chat: str, thread: int | None) -> str:
    """The destination of ``chat``'s topic ``thread`` (the chat itself for None)."""
    return chat if thread is None else f"{chat}{SEPARATOR}{thread}"


def check_destination(text: str, key: str) -> None:
    """A ``ConfigError`` naming ``key`` unless ``text`` is a chat or a chat with a valid
    forum topic: a thread id is a positive integer of at most 64 bits."""
    if SEPARATOR not in text:
        return
    chat, _, thread = text.strip().rpartition(SEPARATOR)
    problem = ""
    if not chat.strip() or SEPARATOR in chat:
        problem = 'must be a chat ("@name" or an id) with at most one "/thread" after it'
    elif not _DIGITS.match(thread) or not 1 <= int(thread) <= MAX_THREAD_ID:
        problem = ("names a forum topic whose thread id is not a positive integer "
                   f"({thread!r})")
    if problem:
        raise ConfigError(f"config key {key}: {text!r} {problem}")
