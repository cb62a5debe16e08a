"""WebSub publishing: tell the hub (``feeds.websub_hub``) which feeds changed after a build.

Each changed feed URL is announced with an HTTP POST of ``hub.mode=publish`` and ``hub.url``.
Failures are logged and never fatal: the URL stays pending in this process and is announced
again after the next build (``publisher run``); a one-shot ``publisher build`` only logs it.
After the first connection failure the remaining URLs of that build are left pending too, so
an unreachable hub costs one timeout per build, not one per feed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from publisher.config import FeedsConfig
from publisher.feeds import BuildResult, safe_url
from publisher.logs import event

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
USER_AGENT = "publisher (WebSub publisher)"


class Announcer:
    """Announces feed URLs to a hub and remembers, per hub, those not yet accepted."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._transport = transport
        self._pending: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def pending(self, hub: str) -> list[str]:
        with self._lock:
            return sorted(self._pending.get(hub, ()))

    def announce(self, hub: str, urls: Iterable[str]) -> list[str]:
        """Announce ``urls`` and those still pending for ``hub``; returns the accepted ones."""
        with self._lock:
            todo = sorted(self._pending.pop(hub, set()) | set(urls))
            accepted = self._post_all(hub, todo) if todo else []
            left = set(todo) - set(accepted)
            if left:
                self._pending[hub] = left
                event(log, logging.WARNING, "websub_pending", hub=hub, feeds=len(left))
        return accepted

    def _post_all(self, hub: str, urls: list[str]) -> list[str]:
        import httpx  # only builds with a hub pay for the import

        accepted: list[str] = []
        with httpx.Client(timeout=TIMEOUT_SECONDS, transport=self._transport,
                          headers={"User-Agent": USER_AGENT}) as client:
            for url in urls:
                try:
                    response = client.post(hub, data={"hub.mode": "publish", "hub.url": url})
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    event(log, logging.WARNING, "websub_failed", hub=hub, feed=url,
                          error=str(exc) or type(exc).__name__)
                    break  # the hub is unreachable: keep the rest for the next build
                if response.is_success:
                    accepted.append(url)
                else:
                    event(log, logging.WARNING, "websub_refused", hub=hub, feed=url,
                          status=response.status_code, reason=response.text[:200])
        if accepted:
            event(log, logging.INFO, "websub_announced", hub=hub, feeds=len(accepted))
        return accepted


_announcer = Announcer()


def changed_feed_urls(result: BuildResult, config: FeedsConfig) -> list[str]:
    """The self URLs of the feeds (RSS, Atom, JSON) that this build wrote."""
    urls = (safe_url(config.url_for(f.path.name)) for f in result.files if f.is_feed and f.changed)
    return [url for url in urls if url]


def announce_changed(result: BuildResult | None, config: FeedsConfig,
                     announcer: Announcer | None = None) -> list[str]:
    """Announce the feeds changed by ``result`` (plus any still pending) to the hub.

    ``result`` None (a build skipped as unchanged) only retries those pending. Does nothing
    without ``feeds.websub_hub``. Never raises for network trouble; returns the URLs the hub
    accepted.
    """
    if not config.websub_hub:
        return []
    urls = changed_feed_urls(result, config) if result is not None else []
    return (announcer or _announcer).announce(config.websub_hub, urls)
