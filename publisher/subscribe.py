"""What subscribers see besides RSS and Atom: JSON Feed 1.1, an OPML list and a landing page.

Pure functions over already sanitised entries (``feeds._Entry`` fits ``EntryLike``): every URL
they receive is an absolute http(s) URL, every text free of XML-invalid characters. Output is
deterministic (no "now", JSON keys sorted), so an unchanged corpus gives identical bytes.
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

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
OPML_DOCS = "http://opml.org/spec2.opml"
HEADLINES = 5

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
        "date_modified": rfc3339(entry.published),
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
        f'<a href="{_attr(site.opml_url)}">all feeds at once (OPML)</a>.</p>\n</header>\n<main>\n',
        *(_section(feed) for feed in feeds),
        f'</main>\n<footer><a href="{_attr(site.home)}">{_esc(site.home)}</a></footer>\n'
        "</body>\n</html>\n",
    ]
    return "".join(parts).encode("utf-8")


def _autodiscovery(feed: FeedLinks) -> str:
    return "".join(
        f'<link rel="alternate" type="{media_type}" title="{_attr(f"{feed.title} ({label})")}" '
        f'href="{_attr(feed.urls[kind])}">\n'
        for kind, (label, media_type) in FORMATS.items()
    )


def _section(feed: FeedLinks) -> str:
    count = feed.size
    links = "".join(
        f'<a href="{_attr(feed.urls[kind])}" type="{media_type}">{label}</a>'
        for kind, (label, media_type) in FORMATS.items()
    )
    headlines = "".join(_headline(entry) for entry in feed.entries[:HEADLINES])
    latest = f"<ul>\n{headlines}</ul>\n" if headlines else "<p>No articles yet.</p>\n"
    return (
        f'<section id="{_attr(feed.slug)}">\n'
        f'<h2>{_esc(feed.name)} <span class="count">{count} '
        f"article{'' if count == 1 else 's'}</span></h2>\n"
        f'<p class="subscribe">{links}</p>\n{latest}</section>\n'
    )


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
