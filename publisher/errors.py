"""Every exception the publisher raises on purpose, in one hierarchy.

The CLI turns a ``PublisherError`` into ``Error: <message>`` and exit status 1::

    PublisherError
     ├── ConfigError                 the configuration file, environment or flags are wrong
     ├── InitError                   ``publisher init`` cannot create the site's files
     ├── ServerError                 the HTTP server cannot listen or start
     ├── ArticleError                one article file cannot be used
     │    ├── FutureDate             dated too far ahead: good from ``valid_from`` on
     │    └── SyncInterrupted        a sync was asked to stop; what it committed holds
     ├── FeedError                   feeds could not be built or written
     ├── RenderError                 an article cannot become a post Telegram accepts
     ├── StateError                  the state database cannot be opened, migrated or locked
     │    ├── AlreadyRunning         another process holds the single-instance lock
     │    ├── Interrupted            a wait for a lock was ended by a stop request
     │    └── CodecError             a stored article cannot be decoded: parse it again
     └── DeliveryError               sending to Telegram went wrong
          ├── PushIncomplete         a push left chats with errors
          ├── ImageUnavailable       a photo could not be downloaded or made uploadable
          └── SendError              one request did not end in a posted message
               ├── NotSent           "not posted": certainly not delivered, safe to send again
               │    ├── RateLimited         429: wait ``retry_after`` seconds
               │    ├── ChatMigrated        the group became a supergroup ``new_chat_id``
               │    ├── PhotoRejected       the photo was refused; text can still go
               │    ├── EntitiesRejected    our HTML was refused; plain text can still go
               │    ├── Rejected            a 400 about this message: retrying cannot help
               │    ├── ChatForbidden       the chat cannot be posted to (403, not a member)
               │    ├── Unauthorized        the bot token was refused
               │    ├── Unavailable         getMe failed: Telegram cannot be used this run
               │    └── PollConflict        409: another getUpdates poller, or a webhook
               └── Ambiguous         "maybe posted": the request left, no usable answer came

A send ends in a message id, a ``NotSent`` or an ``Ambiguous``: the two families are what
the ledger needs to know (retry freely, or hold the pair as uncertain). Handlers that treat a
``NotSent`` subclass specially must come before ``except NotSent``.

Not here, on purpose: signals private to one module that never reach a user
(``publisher.files.FileTooLarge`` and ``NotRegularFile``, the loader's ``_Unreadable``, the
Telegram transport's ``ExchangeFailed``, ``FloodWait`` ... which are python-telegram-bot
exceptions and are translated into the classes above before they leave
``publisher.delivery``).
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "AlreadyRunning",
    "Ambiguous",
    "ArticleError",
    "ChatForbidden",
    "ChatMigrated",
    "CodecError",
    "ConfigError",
    "DeliveryError",
    "EntitiesRejected",
    "FeedError",
    "FutureDate",
    "ImageUnavailable",
    "InitError",
    "Interrupted",
    "NotSent",
    "PhotoRejected",
    "PollConflict",
    "PublisherError",
    "PushIncomplete",
    "RateLimited",
    "Rejected",
    "RenderError",
    "SendError",
    "ServerError",
    "StateError",
    "SyncInterrupted",
    "Unauthorized",
    "Unavailable",
]


class PublisherError(Exception):
    """Base class of every error the publisher reports to its user."""


class ConfigError(PublisherError):
    """The configuration file, environment or flags are wrong."""


class InitError(PublisherError):
    """``publisher init`` cannot create the site's folder or files."""


class ServerError(PublisherError):
    """The HTTP server cannot listen on its address or start (the port is taken, too few
    file descriptors are left, ...)."""


# -- articles ----------------------------------------------------------------------------------


class ArticleError(PublisherError):
    """One article file cannot be used; the message is the one-line reason."""


class FutureDate(ArticleError):
    """The article is dated too far ahead; the same file is good from ``valid_from`` on."""

    def __init__(self, message: str, valid_from: datetime) -> None:
        super().__init__(message)
        self.valid_from = valid_from


class SyncInterrupted(ArticleError):
    """The sync was asked to stop; everything committed so far is consistent."""


class FeedError(PublisherError):
    """Feeds could not be built or written."""


# -- the state database ------------------------------------------------------------------------


class RenderError(PublisherError):
    """An article cannot become a post Telegram accepts: its template fails on it, or the
    rendering does not fit even as a text message without the excerpt."""


class StateError(PublisherError):
    """The state database cannot be opened, migrated or locked."""


class AlreadyRunning(StateError):
    """Another process holds the single-instance lock on the same state."""


class Interrupted(StateError):
    """A wait for a lock was ended by a stop request."""


class CodecError(StateError):
    """A stored article that this publisher cannot decode (written by a newer one, or
    damaged): its file is parsed again."""


# -- delivery ----------------------------------------------------------------------------------


class DeliveryError(PublisherError):
    """Sending to Telegram went wrong in a way the run reports."""


class ImageUnavailable(DeliveryError):
    """A photo publisher tried to download itself (refused by address, too large, not an
    image, unreachable): its post goes as text."""


class PushIncomplete(DeliveryError):
    """A push that left chats with errors; ``back_off`` unless other chats went fine."""

    def __init__(self, message: str, *, back_off: bool) -> None:
        super().__init__(message)
        self.back_off = back_off


class SendError(DeliveryError):
    """A send did not end in a posted message. ``reason`` is safe to log and store: it never
    holds the bot token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSent(SendError):
    """Provably not posted: the request never left, or Telegram answered with an error.
    Sending the same message again cannot post it twice."""


class Ambiguous(SendError):
    """The request may have been posted: a timeout or a connection lost after it left, or an
    answer that could not be read."""


class RateLimited(NotSent):
    """A 429. ``retry_after`` is None when the answer's value was unusable (not a number)."""

    def __init__(self, retry_after: float | None, asked: object = None) -> None:
        if retry_after is None:
            reason = f"Telegram answered 429 with an unusable retry_after ({asked!r})"
        else:
            reason = f"Telegram asked to wait {retry_after:g} s (429)"
        super().__init__(reason)
        self.retry_after = retry_after


class ChatMigrated(NotSent):
    """The group became a supergroup: ``new_chat_id`` is where its messages go now."""

    def __init__(self, new_chat_id: str) -> None:
        super().__init__(f"the chat moved to {new_chat_id}")
        self.new_chat_id = new_chat_id


class PhotoRejected(NotSent):
    """Telegram refused the photo (URL not fetchable, not an image); text can still go."""


class EntitiesRejected(NotSent):
    """Telegram could not parse our HTML: a bug in rendering; plain text can still go."""


class Rejected(NotSent):
    """A 400 answer about this message: retrying the same request cannot help."""


class ChatForbidden(NotSent):
    """403: the bot was removed from the chat or is not allowed to post there."""


class Unauthorized(NotSent):
    """The bot token was refused: nothing can be sent until the operator fixes it."""


class Unavailable(NotSent):
    """getMe failed: Telegram (or what answers at its URL) cannot be used for this run."""


class PollConflict(NotSent):
    """409 to ``getUpdates``: another process polls with this token, or a webhook is set."""
