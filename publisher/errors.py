"""One exception hierarchy for everything the library raises on purpose.

The CLI turns a ``PublisherError`` into ``Error: <message>`` and exit status 1.
"""

from __future__ import annotations


class PublisherError(Exception):
    """Base class of every error the publisher reports to its user."""


class ConfigError(PublisherError):
    """The configuration file, environment or flags are wrong."""


class ArticleError(PublisherError):
    """One article file cannot be used; the message is the one-line reason."""


class FeedError(PublisherError):
    """Feeds could not be built or written."""


class StateError(PublisherError):
    """The state database cannot be opened, migrated or locked."""


class AlreadyRunning(StateError):
    """Another process holds the single-instance lock on the same state."""


class DeliveryError(PublisherError):
    """Sending to a chat failed in a way the run cannot recover from."""
