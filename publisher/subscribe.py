"""What subscribers see besides RSS and Atom: JSON Feed 1.1, an OPML list, a landing page, and
``feed.xsl``, the stylesheet that makes an RSS or Atom feed opened in a browser a readable page.

The render stage of ``publisher.feeds`` for these outputs: pure functions over already
sanitised entries (``feeds.entries.Entry`` fits ``EntryLike``): every URL they receive is an
absolute http(s) URL, every text free of XML-invalid characters. Output is deterministic
(no "now", JSON keys sorted), so an unchanged corpus gives identical bytes.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any, Protocol

from publisher.names import ALL_SLUG

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
OPML_DOCS = "http://opml.org/spec2.opml"
HEADLINES = 5
MAX_START_LENGTH = 64  # Telegram's limit of a deep link's start parameter

# kind -> (label, media type); the order in which the landing page offers them.
FORMATS: dict[str, tuple[str, str]] = {
    "rss": ("RSS", "application/rss+xml"),
    "atom": ("Atom", "application/atom+xml"),
    "json": ("JSON Feed", "application/feed+json"),
}


class ImageLike(Protocol):
    @property
    def url(self) -> str: ...


class EntryLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def link(self) -> str: ...
    @property
    def published(self) -> datetime: ...  # aware, UTC, whole seconds
    @property
    def summary(self) -> str: ...
    @property
    def author(self) -> str: ...
    @property
    def source_url(self) -> str: ...
    @property
    def categories(self) -> tuple[str, ...]: ...
    @property
    def image(self) -> ImageLike | None: ...
    @property
    def content_html(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Site:
    """Channel-level settings: the title, description and language of every page and feed."""

    title: str
    description: str
    language: str
    home: str  # the site link
    opml_url: str
    hub: str | None = None
    telegram: str = ""  # the Telegram channel's URL, or "" for none
    follow_bot: str = ""  # the followers' bot (its username): a deep link per topic


@dataclass(frozen=True, slots=True)
class FeedLinks:
    """One feed (all articles or one topic) in every format, with its entries newest first."""

    slug: str
    name: str  # "All articles" or the topic's name
    title: str  # the feed's own title
    urls: dict[str, str]  # kind ("rss", "atom", "json") -> absolute URL
    entries: Sequence[EntryLike]
    count: int | None = None  # how many entries the feed holds, when ``entries`` are its first

    @property
    def size(self) -> int:
        return self.count if self.count is not None else len(self.entries)


# --- JSON Feed --------------------------------------------------------------------------------


def render_json_feed(feed: FeedLinks, site: Site) -> bytes:
    """JSON Feed 1.1 (https://www.jsonfeed.org/version/1.1/), keys sorted, UTF-8."""
    document: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": feed.title,
        "home_page_url": site.home,
        "feed_url": feed.urls["json"],
        "description": site.description,
        "authors": [{"name": site.title}],
        "items": [_json_item(entry) for entry in feed.entries],
    }
    if site.language:
        document["language"] = site.language
    if site.hub:
        document["hubs"] = [{"type": "WebSub", "url": site.hub}]
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, indent=2)
    return (text + "\n").encode("utf-8")


def _json_item(entry: EntryLike) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": entry.id,
        "url": entry.link,
        "title": entry.title,
        "date_published": rfc3339(entry.published),
        "date_modified": rfc3339(getattr(entry, "updated", entry.published)),
    }
    # One of content_html and content_text is required.
    if entry.content_html:
        item["content_html"] = entry.content_html
    else:
        item["content_text"] = entry.summary
    if entry.summary:
        item["summary"] = entry.summary
    if entry.author:
        item["authors"] = [{"name": entry.author, "url": entry.source_url}]
    if entry.categories:
        item["tags"] = list(entry.categories)
    if entry.image is not None:
        item["image"] = entry.image.url
    return item


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- OPML -------------------------------------------------------------------------------------


def render_opml(feeds: Sequence[FeedLinks], site: Site) -> bytes:
    """OPML 2.0: one ``type="rss"`` outline per feed (its RSS URL), in the given order."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = site.title
    newest = _newest(feeds)
    if newest is not None:
        ET.SubElement(head, "dateModified").text = format_datetime(newest, usegmt=True)
    ET.SubElement(head, "docs").text = OPML_DOCS
    body = ET.SubElement(root, "body")
    for feed in feeds:
        ET.SubElement(body, "outline", type="rss", version="RSS2", text=feed.title,
                      title=feed.title, xmlUrl=feed.urls["rss"], htmlUrl=site.home)
    ET.indent(root)
    document = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + document + b"\n"


def _newest(feeds: Sequence[FeedLinks]) -> datetime | None:
    return max((feed.entries[0].published for feed in feeds if feed.entries), default=None)


# --- landing page -----------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light dark; --muted: #666; --line: #ddd; --accent: #0b5cad; }
@media (prefers-color-scheme: dark) { :root { --muted: #aaa; --line: #444; --accent: #6cb0ff; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 46rem; padding: 1rem; line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--accent); }
h1 { margin: .5rem 0 0; font-size: 1.7rem; }
h2 { margin: 0; font-size: 1.25rem; }
header p, .meta, .count, footer { color: var(--muted); }
section { border-top: 1px solid var(--line); padding: 1rem 0; }
.count { font-size: .9rem; font-weight: normal; }
.subscribe { margin: .4rem 0; display: flex; flex-wrap: wrap; gap: .5rem; }
.subscribe a { border: 1px solid var(--line); border-radius: .4rem; padding: .1rem .6rem;
               text-decoration: none; }
ul { margin: .4rem 0 0; padding-left: 1.2rem; }
li { margin: .3rem 0; overflow-wrap: anywhere; }
.meta { font-size: .85rem; }
footer { border-top: 1px solid var(--line); padding-top: 1rem; font-size: .9rem; }
""".strip()


def render_landing_page(feeds: Sequence[FeedLinks], site: Site) -> bytes:
    """A self-contained HTML page: every feed with its count, headlines and subscribe links."""
    lang = f' lang="{_attr(site.language)}"' if site.language else ""
    parts = [
        f"<!DOCTYPE html>\n<html{lang}>\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(site.title)}</title>\n"
        f'<meta name="description" content="{_attr(site.description)}">\n',
        *(_autodiscovery(feed) for feed in feeds),
        f"<style>\n{_STYLE}\n</style>\n</head>\n<body>\n<header>\n",
        f"<h1>{_esc(site.title)}</h1>\n<p>{_esc(site.description)}</p>\n",
        "<p>Paste a feed address into your feed reader, or import "
        f'<a href="{_attr(site.opml_url)}">all feeds at once (OPML)</a>.</p>\n',
        _telegram_line(site),
        "</header>\n<main>\n",
        *(_section(feed, site) for feed in feeds),
        f'</main>\n<footer><a href="{_attr(site.home)}">{_esc(site.home)}</a></footer>\n'
        "</body>\n</html>\n",
    ]
    return "".join(parts).encode("utf-8")


def _telegram_line(site: Site) -> str:
    if not site.telegram:
        return ""
    return (f'<p class="telegram">Or follow <a href="{_attr(site.telegram)}">'
            f"{_esc(site.title)} on Telegram</a>.</p>\n")


def _autodiscovery(feed: FeedLinks) -> str:
    return "".join(
        f'<link rel="alternate" type="{media_type}" title="{_attr(f"{feed.title} ({label})")}" '
        f'href="{_attr(feed.urls[kind])}">\n'
        for kind, (label, media_type) in FORMATS.items()
    )


def _section(feed: FeedLinks, site: Site) -> str:
    count = feed.size
    links = "".join(
        f'<a href="{_attr(feed.urls[kind])}" type="{media_type}">{label}</a>'
        for kind, (label, media_type) in FORMATS.items()
    ) + _follow_link(feed, site)
    headlines = "".join(_headline(entry) for entry in feed.entries[:HEADLINES])
    latest = f"<ul>\n{headlines}</ul>\n" if headlines else "<p>No articles yet.</p>\n"
    return (
        f'<section id="{_attr(feed.slug)}">\n'
        f'<h2>{_esc(feed.name)} <span class="count">{count} '
        f"article{'' if count == 1 else 's'}</span></h2>\n"
        f'<p class="subscribe">{links}</p>\n{latest}</section>\n'
    )


def _follow_link(feed: FeedLinks, site: Site) -> str:
    """A topic's "Get it in Telegram": the bot's deep link that subscribes to it (the bot
    username and slug are checked safe: letters, digits, ``_`` and ``-``). Telegram takes a
    ``start`` parameter of at most 64 characters: a longer slug has no link."""
    if not site.follow_bot or feed.slug == ALL_SLUG or len(feed.slug) > MAX_START_LENGTH:
        return ""
    url = f"https://t.me/{site.follow_bot}?start={feed.slug}"
    return f' <a class="follow" href="{_attr(url)}">Get it in Telegram</a>'


def _headline(entry: EntryLike) -> str:
    day = entry.published.strftime("%Y-%m-%d")
    source = f"{_esc(entry.author)} · " if entry.author else ""
    return (
        f'<li><a href="{_attr(entry.link)}">{_esc(entry.title)}</a><br>'
        f'<span class="meta">{source}<time datetime="{rfc3339(entry.published)}">{day}</time>'
        "</span></li>\n"
    )


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _attr(text: str) -> str:
    return html.escape(text, quote=True)


# --- the feeds in a browser -------------------------------------------------------------------
# An XSLT 1.0 stylesheet (the version browsers run) for both RSS and Atom. Feed readers and
# validators ignore the <?xml-stylesheet?> instruction that points to it. Every text is
# written with value-of (escaped): an RSS description is HTML, so the excerpt in it is first
# unescaped by the "text" template, never copied as markup (disable-output-escaping is not
# honoured by every browser, and would let markup through).

_STYLESHEET = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by publisher with the feeds: shows a feed opened in a browser as a page. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:content="http://purl.org/rss/1.0/modules/content/"
    exclude-result-prefixes="atom dc content">
<xsl:output method="html" encoding="UTF-8" indent="yes" doctype-system="about:legacy-compat"/>

<xsl:variable name="title" select="/rss/channel/title | /atom:feed/atom:title"/>
<xsl:variable name="feed-url"
    select="(/rss/channel/atom:link[@rel='self'] | /atom:feed/atom:link[@rel='self'])/@href"/>

<xsl:template match="/">
<html lang="{/rss/channel/language | /atom:feed/@xml:lang}">
<head>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title><xsl:value-of select="$title"/> (feed)</title>
<style>
@STYLE@
.feed-url { font-size: 1.05rem; overflow-wrap: anywhere; }
.feed-url code { border: 1px solid var(--line); border-radius: .4rem; padding: .2rem .5rem;
                 user-select: all; }
</style>
</head>
<body>
<header>
<p class="meta">This is a news feed<xsl:choose>
<xsl:when test="/rss"> (RSS)</xsl:when><xsl:otherwise> (Atom)</xsl:otherwise>
</xsl:choose>: a feed reader shows its new articles as they come.</p>
<h1><xsl:value-of select="$title"/></h1>
<p><xsl:value-of select="/rss/channel/description | /atom:feed/atom:subtitle"/></p>
<p>To subscribe, copy this address into your feed reader (Feedly, Inoreader, NetNewsWire,
Thunderbird, newsboat...):</p>
<p class="feed-url"><code><xsl:value-of select="$feed-url"/></code></p>
<p><a href="index.html">Every feed and topic</a>@TELEGRAM@</p>
</header>
<main>
<xsl:apply-templates select="/rss/channel/item | /atom:feed/atom:entry"/>
</main>
</body>
</html>
</xsl:template>

<xsl:template match="item">
<section>
<h2><a href="{link}"><xsl:value-of select="title"/></a></h2>
<p class="meta"><xsl:if test="dc:creator"><xsl:value-of select="dc:creator"/> · </xsl:if>
<xsl:value-of select="substring(pubDate, 6, 11)"/></p>
<xsl:if test="content:encoded">
<p><xsl:call-template name="text"><xsl:with-param name="html" select="description"/>
</xsl:call-template></p>
</xsl:if>
</section>
</xsl:template>

<xsl:template match="atom:entry">
<section>
<h2><a href="{atom:link[not(@rel) or @rel='alternate']/@href}">
<xsl:value-of select="atom:title"/></a></h2>
<p class="meta"><xsl:if test="atom:author/atom:name">
<xsl:value-of select="atom:author/atom:name"/> · </xsl:if>
<xsl:value-of select="substring(atom:published, 1, 10)"/></p>
<xsl:if test="atom:summary"><p><xsl:value-of select="atom:summary"/></p></xsl:if>
</section>
</xsl:template>

<!-- The text of escaped HTML without markup: &amp; &lt; &gt; &quot; &#x27; decoded. -->
<xsl:template name="text">
<xsl:param name="html"/>
<xsl:choose>
<xsl:when test="contains($html, '&amp;')">
<xsl:value-of select="substring-before($html, '&amp;')"/>
<xsl:variable name="rest" select="substring-after($html, '&amp;')"/>
<xsl:variable name="entity" select="substring-before($rest, ';')"/>
<xsl:choose>
<xsl:when test="$entity = 'amp'">&amp;</xsl:when>
<xsl:when test="$entity = 'lt'">&lt;</xsl:when>
<xsl:when test="$entity = 'gt'">&gt;</xsl:when>
<xsl:when test="$entity = 'quot'">&quot;</xsl:when>
<xsl:when test="$entity = '#x27' or $entity = '#39'">'</xsl:when>
<xsl:otherwise>&amp;</xsl:otherwise>
</xsl:choose>
<xsl:call-template name="text">
<xsl:with-param name="html" select="substring($rest, 1 + (string-length($entity) + 1) *
    number($entity = 'amp' or $entity = 'lt' or $entity = 'gt' or $entity = 'quot'
           or $entity = '#x27' or $entity = '#39'))"/>
</xsl:call-template>
</xsl:when>
<xsl:otherwise><xsl:value-of select="$html"/></xsl:otherwise>
</xsl:choose>
</xsl:template>
</xsl:stylesheet>
"""


def render_feed_stylesheet(site: Site) -> bytes:
    """``feed.xsl``: the page a browser shows for a feed: what it is, the address to copy into
    a reader, a link to every feed (and to the Telegram channel), and the entries."""
    telegram = ""
    if site.telegram:
        telegram = f' · <a href="{_attr(site.telegram)}">Follow on Telegram</a>'
    text = _STYLESHEET.replace("@STYLE@", _STYLE).replace("@TELEGRAM@", telegram)
    return text.encode("utf-8")
