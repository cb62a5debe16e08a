"""The names of the files a build writes; light on purpose (imported on every start)."""

from __future__ import annotations

ALL_SLUG = "all"
FEED_SUFFIXES = {"rss": ".rss.xml", "atom": ".atom.xml", "json": ".json"}
OPML_NAME = "feeds.opml"
INDEX_NAME = "index.html"
STYLESHEET_NAME = "feed.xsl"  # how a browser shows an RSS or Atom feed
PAGE_NAMES = (OPML_NAME, INDEX_NAME, STYLESHEET_NAME)  # written beside the feeds, every build


def feed_name(slug: str, kind: str) -> str:
    """``<slug>.rss.xml``, ``<slug>.atom.xml`` or ``<slug>.json``."""
    return slug + FEED_SUFFIXES[kind]
