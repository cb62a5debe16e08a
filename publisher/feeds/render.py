"""The render stage: planned feeds and their entries as bytes, by file name.

RSS 2.0 and Atom 1.0 come from feedgen (``FeedGenerator`` with its ``dc`` and ``media``
extensions); JSON Feed 1.1, ``feeds.opml`` (every feed, for a reader's import),
``index.html`` (the landing page) and ``feed.xsl`` (the stylesheet each RSS and Atom feed
names in an ``<?xml-stylesheet?>`` instruction, so that a browser shows a readable page)
from ``publisher.subscribe``, over the same entries.

Rendering is pure and deterministic: every date comes from the articles, so rebuilding an
unchanged corpus gives identical bytes, and the writer then leaves the files alone.

feedgen 1.0 has traps this module steers around:

* Atom entry links lose ``rel``/``type``, so only the article link goes through ``link()``
  (written as ``<link href>``, which Atom reads as rel="alternate"); related links, the RSS
  enclosure (``enclosure()`` would add an Atom link that turns into a second alternate) and
  the RSS ``<source>`` (``source()`` would also claim an Atom ``<source>`` feed) come from the
  small ``_PublisherEntryExtension`` below, and the RSS hub link from ``_PublisherExtension``;
* ``media.content()`` wraps in media:group unless ``group=None``;
* ``add_entry()`` prepends unless ``order="append"``;
* feed and entry dates default to "now": every one is set explicitly here;
* one control character makes ``rss_str()`` raise: all text is made safe first (entries);
* RSS ``<author>`` needs an e-mail address: the author goes into ``dc:creator`` instead;
* the last feed-level ``link()`` becomes the RSS ``<channel><link>``: the site link goes last.

feedgen formats each RSS date with ``locale.setlocale`` (process-wide, not thread-safe). That is
acceptable because feeds are built by one thread at a time; never render feeds concurrently.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from feedgen.util import xml_elem

from publisher.config import FeedsConfig
from publisher.feeds.entries import Entry, EntryCache, Picture, RelatedLink
from publisher.feeds.plan import Channel, PlannedFeed, channel_settings, plan_articles, safe_url
from publisher.models import Article
from publisher.names import (
    ALL_SLUG,
    FEED_SUFFIXES,
    INDEX_NAME,
    OPML_NAME,
    STYLESHEET_NAME,
    feed_name,
)
from publisher.subscribe import (
    HEADLINES,
    FeedLinks,
    Site,
    render_feed_stylesheet,
    render_json_feed,
    render_landing_page,
    render_opml,
)

GENERATOR = "publisher"
# Names the stylesheet a browser applies to an RSS or Atom feed; feed readers ignore it. A
# relative href: the stylesheet is beside the feed, on the same origin, as browsers require.
STYLESHEET_INSTRUCTION = f'<?xml-stylesheet type="text/xsl" href="{STYLESHEET_NAME}"?>\n'.encode()

ATOM_NS = "http://www.w3.org/2005/Atom"

# An empty feed still needs an Atom <updated>; a fixed date keeps rebuilds identical.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rendering:
    """Files rendered now, and files left as they are."""

    rendered: dict[str, bytes]
    unchanged: frozenset[str]
    counts: dict[str, int]  # entries per feed, for the next rendering's landing page


def render_feeds(selected: Sequence[Article], config: FeedsConfig,
                 modified: Mapping[str, datetime] | None = None) -> dict[str, bytes]:
    """Every file, by name: ``all.rss.xml``, ``all.atom.xml``, ``all.json``, the same per topic
    (``<slug>.rss.xml``...), ``feeds.opml``, ``index.html`` and ``feed.xsl``.

    ``selected`` is newest first, as ``selection.select`` returns it; ``modified``: when
    articles changed after first seen (``publisher.modified``). No I/O.
    """
    return render_changed_feeds(selected, config, {}, modified).rendered


def render_changed_feeds(
    selected: Sequence[Article], config: FeedsConfig, unchanged_counts: Mapping[str, int],
    modified: Mapping[str, datetime] | None = None,
) -> Rendering:
    """Like ``render_feeds``, but the feeds in ``unchanged_counts`` (slug -> the number of
    entries their files hold, from an earlier rendering of the same content and settings)
    are not rendered again: their files are ``unchanged``.

    ``selected`` is newest first and holds every article a changed feed may show; of an
    unchanged feed only its first ``HEADLINES`` are needed, for the landing page and the
    OPML, which list every feed and so are always rendered.
    """
    channel = channel_settings(config)
    return render_plan(plan_articles(selected, channel), channel, unchanged_counts, modified)


@dataclass(frozen=True, slots=True)
class _Feed:
    slug: str
    name: str
    title: str
    entries: tuple[Entry, ...]  # newest first
    count: int | None = None  # set when ``entries`` holds only the headlines


def render_plan(plan: Sequence[PlannedFeed], channel: Channel,
                unchanged_counts: Mapping[str, int],
                modified: Mapping[str, datetime] | None = None) -> Rendering:
    """The files of ``plan`` (see ``render_changed_feeds`` for ``unchanged_counts``);
    ``modified``: when articles changed after first seen (``publisher.modified``)."""
    config = channel.config
    entries = EntryCache(modified)
    unchanged: set[str] = set()
    feeds: list[_Feed] = []
    for planned in plan:
        count = unchanged_counts.get(planned.slug)
        if count is not None:
            unchanged.update(feed_name(planned.slug, kind) for kind in FEED_SUFFIXES)
        shown = config.max_items if count is None else min(HEADLINES, config.max_items)
        feed_entries = entries.first(planned.articles, shown)
        if feed_entries or planned.slug == ALL_SLUG:  # a topic without an http(s) link has no feed
            feeds.append(_Feed(planned.slug, planned.name, planned.title, feed_entries, count))
    links = [_links(feed, channel) for feed in feeds]
    site = _site(channel)
    rendered: dict[str, bytes] = {}
    for feed, feed_links in zip(feeds, links, strict=True):
        if feed_name(feed.slug, "rss") in unchanged:
            continue
        rss, atom = _render(feed, channel)
        rendered[feed_name(feed.slug, "rss")] = rss
        rendered[feed_name(feed.slug, "atom")] = atom
        rendered[feed_name(feed.slug, "json")] = render_json_feed(feed_links, site)
    rendered[OPML_NAME] = render_opml(links, site)
    rendered[INDEX_NAME] = render_landing_page(links, site)
    rendered[STYLESHEET_NAME] = render_feed_stylesheet(site)
    sizes = {feed.slug: link.size for feed, link in zip(feeds, links, strict=True)}
    return Rendering(rendered, frozenset(unchanged), sizes)


# --- links ------------------------------------------------------------------------------------


def _self_url(channel: Channel, slug: str, kind: str) -> str:
    return _url_for(channel, feed_name(slug, kind))


def _url_for(channel: Channel, file_name: str) -> str:
    return safe_url(channel.config.url_for(file_name)) or ""


def _site(channel: Channel) -> Site:
    return Site(
        title=channel.title,
        description=channel.description,
        language=channel.language,
        home=channel.site,
        opml_url=_url_for(channel, OPML_NAME),
        hub=channel.hub,
        telegram=channel.telegram,
        follow_bot=channel.follow_bot,
    )


def _links(feed: _Feed, channel: Channel) -> FeedLinks:
    urls = {kind: _self_url(channel, feed.slug, kind) for kind in FEED_SUFFIXES}
    return FeedLinks(feed.slug, feed.name, feed.title, urls, feed.entries, feed.count)


# --- RSS and Atom -----------------------------------------------------------------------------


class _PublisherExtension(BaseExtension):
    """Feed level: the WebSub hub link in RSS.

    feedgen's RSS channel only carries the ``rel="self"`` link of ``FeedGenerator.link()``;
    the Atom feed gets the hub from ``link()`` itself.
    """

    def __init__(self) -> None:
        self._hub: str | None = None

    def hub(self, url: str | None) -> None:
        self._hub = url

    def extend_rss(self, feed: Any) -> Any:
        if self._hub:
            xml_elem(f"{{{ATOM_NS}}}link", feed[0], href=self._hub, rel="hub")
        return feed


class _PublisherEntryExtension(BaseEntryExtension):
    """Entry level: what feedgen 1.0 cannot write without side effects on the other kind.

    Atom: ``rel="related"`` links (``FeedEntry.link()`` drops ``rel``/``type`` in Atom, which
    would make each one another alternate link). RSS: the ``<enclosure>`` (``enclosure()`` also
    adds an Atom link, with the same result) and ``<source url>`` (``source()`` also writes an
    Atom ``<source>``, which would claim the entry was copied from another Atom feed).
    """

    def __init__(self) -> None:
        self._related: tuple[RelatedLink, ...] = ()
        self._enclosure: Picture | None = None
        self._source: tuple[str, str] | None = None

    def related(self, links: tuple[RelatedLink, ...]) -> None:
        self._related = links

    def enclosure(self, image: Picture | None) -> None:
        self._enclosure = image

    def source(self, url: str, name: str) -> None:
        self._source = (url, name)

    def extend_atom(self, entry: Any) -> Any:
        # feedgen builds its Atom tree without a namespace and declares the Atom namespace as
        # the root's default, so these unqualified links land in it, like feedgen's own.
        for link in self._related:
            xml_elem("link", entry, rel="related", type="text/html", href=link.url,
                     title=link.title)
        return entry

    def extend_rss(self, item: Any) -> Any:
        if self._source is not None:
            url, name = self._source
            xml_elem("source", item, url=url).text = name
        if self._enclosure is not None:
            # The size in bytes is unknown; 0 is what the RSS Advisory Board prescribes for that.
            xml_elem("enclosure", item, url=self._enclosure.url, length="0",
                     type=self._enclosure.type)
        return item


def _render(feed: _Feed, channel: Channel) -> tuple[bytes, bytes]:
    """The RSS and the Atom document of ``feed``, from one FeedGenerator."""
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)  # dc:creator: RSS only, Atom has <author>
    fg.load_extension("media")
    fg.register_extension("publisher", _PublisherExtension, _PublisherEntryExtension)
    fg.title(feed.title)
    fg.description(channel.description)  # also the Atom subtitle
    if channel.language:
        fg.language(channel.language)  # also the Atom xml:lang
    fg.author(name=channel.title)
    # A fixed name without a version: a feedgen or publisher upgrade must not change the bytes.
    fg.generator(GENERATOR)
    if channel.ttl > 0:
        fg.ttl(channel.ttl)
    fg.publisher.hub(channel.hub)
    # Never "now": the newest entry, or a fixed date for an empty feed (Atom needs <updated>;
    # it is also the RSS lastBuildDate).
    if feed.entries:
        newest = feed.entries[0].published
        fg.updated(newest)
        fg.pubDate(newest)
    else:
        fg.updated(EPOCH)
    for entry in feed.entries:
        _add_entry(fg, entry)

    atom_self = _self_url(channel, feed.slug, "atom")
    fg.id(atom_self)
    fg.link(_feed_links(channel, atom_self, "application/atom+xml"), replace=True)
    atom = fg.atom_str(pretty=True)
    rss_self = _self_url(channel, feed.slug, "rss")
    fg.link(_feed_links(channel, rss_self, "application/rss+xml"), replace=True)
    rss = fg.rss_str(pretty=True)
    return _with_stylesheet(rss), _with_stylesheet(atom)


def _with_stylesheet(document: bytes) -> bytes:
    """``document`` with the stylesheet instruction after its XML declaration (feedgen writes
    one, on the first line), before the root element."""
    declaration, newline, rest = document.partition(b"\n")
    if not declaration.startswith(b"<?xml ") or not newline:
        return STYLESHEET_INSTRUCTION + document  # pragma: no cover - feedgen always declares
    return declaration + newline + STYLESHEET_INSTRUCTION + rest


def _feed_links(channel: Channel, self_url: str, kind: str) -> list[dict[str, str]]:
    """Self, hub and site links; RSS takes the self link, and the last one as channel link."""
    links = [{"href": self_url, "rel": "self", "type": kind}]
    if channel.hub:
        links.append({"href": channel.hub, "rel": "hub"})
    links.append({"href": channel.site, "rel": "alternate", "type": "text/html"})
    return links


def _add_entry(fg: FeedGenerator, entry: Entry) -> None:
    fe = fg.add_entry(order="append")
    fe.id(entry.id)  # also the RSS guid, isPermaLink="false"
    fe.title(entry.title)
    fe.link(href=entry.link, rel="alternate", type="text/html")  # the only link() call
    fe.updated(entry.updated)
    fe.published(entry.published)  # also the RSS pubDate
    if entry.author:
        fe.author(name=entry.author, uri=entry.source_url)  # no e-mail: no RSS <author>
        fe.dc.dc_creator(entry.author)
    if entry.summary:
        # RSS descriptions are HTML: a plain-text excerpt is escaped once more. description()
        # also sets the Atom content, which content() below replaces (content_html is never
        # empty when there is a summary), and summary() then leaves the RSS description alone.
        fe.description(html.escape(entry.summary, quote=False))
        fe.summary(entry.summary)
    if entry.content_html:
        # Without a summary feedgen puts this into the RSS <description> instead.
        fe.content(entry.content_html, type="html")
    if entry.categories:
        fe.category([{"term": category} for category in entry.categories])
    if entry.source_name:
        fe.publisher.source(entry.source_url, entry.source_name)
    fe.publisher.related(entry.related)
    if entry.image is not None:
        fe.publisher.enclosure(entry.image)
        fe.media.content(group=None, **_media_attributes(entry.image))  # None: no media:group


def _media_attributes(image: Picture) -> dict[str, str]:
    attributes = {"url": image.url, "medium": "image", "type": image.type}
    if image.width:
        attributes["width"] = str(image.width)
    if image.height:
        attributes["height"] = str(image.height)
    return attributes
