"""RSS 2.0, Atom 1.0 and JSON Feed 1.1 (one set for all articles and one per topic), with an
OPML list, a landing page and a stylesheet, built in stages (as Pelican's readers,
generators and writers)::

    catalog (SQL: the members of every feed)
      -> plan     which feeds exist, their members and settings       feeds/plan.py
      -> entries  each article as the values a feed entry shows       feeds/entries.py
      -> render   RSS/Atom (feedgen), JSON Feed, OPML, landing page,  feeds/render.py
                  stylesheet: bytes by file name                      (+ publisher/subscribe.py)
      -> write    atomic writes, stale feeds removed, nothing outside feeds/write.py
    current: the stages run against the catalog, rendering only the feeds whose members
             changed; what is on disk is remembered in the ``feed_files`` table (current.py)

This module keeps the names other modules import. The render stage (feedgen, lxml) is
imported only when something is rendered: a build with nothing changed never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from publisher.feeds.current import FEEDS_KEY, feeds_key, write_current_feeds
from publisher.feeds.plan import ALL_NAME, safe_url
from publisher.feeds.write import (
    FEED_NAME,
    PAGES,
    BuildResult,
    FeedFile,
    write_atomic,
    write_feeds,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from publisher.config import FeedsConfig
    from publisher.feeds.entries import DEFAULT_IMAGE_TYPE
    from publisher.feeds.render import (
        ATOM_NS,
        EPOCH,
        GENERATOR,
        STYLESHEET_INSTRUCTION,
        Rendering,
        render_changed_feeds,
        render_feeds,
    )
    from publisher.models import Article
    from publisher.subscribe import HEADLINES

# Names of the render stage (and its entries), imported on first use (PEP 562).
_RENDER_NAMES = frozenset({
    "ATOM_NS", "EPOCH", "GENERATOR", "HEADLINES", "STYLESHEET_INSTRUCTION", "Rendering",
    "render_changed_feeds", "render_feeds", "render_plan",
})

__all__ = [
    "ALL_NAME", "ATOM_NS", "DEFAULT_IMAGE_TYPE", "EPOCH", "FEEDS_KEY", "FEED_NAME", "GENERATOR",
    "HEADLINES", "PAGES", "STYLESHEET_INSTRUCTION", "BuildResult", "FeedFile", "Rendering",
    "build_feeds", "feeds_key", "render_changed_feeds", "render_feeds", "safe_url",
    "write_atomic", "write_current_feeds", "write_feeds",
]


def __getattr__(name: str) -> Any:
    if name in _RENDER_NAMES:
        from publisher.feeds import render

        return getattr(render, name)
    if name == "DEFAULT_IMAGE_TYPE":
        from publisher.feeds import entries

        return entries.DEFAULT_IMAGE_TYPE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_feeds(selected: Sequence[Article], config: FeedsConfig) -> BuildResult:
    """Render every feed of ``selected`` (newest first) and write them into ``config.dir``."""
    from publisher.feeds.render import render_feeds

    return write_feeds(render_feeds(selected, config), config.dir)
