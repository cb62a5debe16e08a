"""The entries stage: each article as the values both feed kinds (and JSON Feed) show.

Every value is made safe once, here, with the shared rules of ``publisher.text``: the
loader already guarantees them for the catalog's articles, and applying them again changes
nothing there; articles given to ``render_feeds`` directly (a preview, a test) come from
anywhere and still give well-formed feeds.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from publisher.feeds.plan import safe_url
from publisher.models import Article, Image, article_id, best_image
from publisher.text import as_utc, xml_text

_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_IMAGE_TYPES = {
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".jpe": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
}
DEFAULT_IMAGE_TYPE = "image/jpeg"


def feed_moment(moment: datetime) -> datetime:
    """Whole seconds in UTC: RSS dates cannot carry fractions, and both kinds must agree."""
    return as_utc(moment).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Picture:
    url: str
    type: str
    width: int | None
    height: int | None
    alt: str


@dataclass(frozen=True, slots=True)
class RelatedLink:
    url: str
    title: str


@dataclass(frozen=True, slots=True)
class Entry:
    """What both feed kinds say about one article, made safe once."""

    id: str
    title: str
    link: str
    published: datetime
    summary: str
    author: str
    source_url: str
    source_name: str
    categories: tuple[str, ...]
    image: Picture | None
    related: tuple[RelatedLink, ...]
    content_html: str
    # When its record last changed after it was first seen (``publisher.modified``); None:
    # never, and its feeds say its publication date, as they always did.
    modified: datetime | None = None

    @property
    def updated(self) -> datetime:
        """Atom ``<updated>`` and JSON Feed ``date_modified``."""
        return self.modified if self.modified and self.modified > self.published \
            else self.published


class EntryCache:
    """Builds each article's entry once, however many feeds it appears in.

    Only articles that reach a feed are looked at, so a large corpus costs little.
    """

    def __init__(self, modified: Mapping[str, datetime] | None = None) -> None:
        self._entries: dict[str, Entry | None] = {}
        self._modified = modified or {}

    def first(self, articles: Iterable[Article], limit: int) -> tuple[Entry, ...]:
        """The entries of the first ``limit`` articles that have an http(s) link."""
        found: list[Entry] = []
        for article in articles:
            if len(found) == limit:
                break
            if (entry := self._get(article)) is not None:
                found.append(entry)
        return tuple(found)

    def _get(self, article: Article) -> Entry | None:
        if article.id not in self._entries:
            self._entries[article.id] = make_entry(article, self._modified.get(article.id))
        return self._entries[article.id]


def make_entry(article: Article, modified: datetime | None = None) -> Entry | None:
    """The entry for ``article``; None if it has no http(s) link to point to."""
    link = safe_url(article.url)
    if link is None:
        return None
    title = xml_text(article.title) or link
    image = _picture(article, title)
    related = _related_links(article, link)
    summary = xml_text(article.excerpt)
    return Entry(
        id=xml_text(article.id) or article_id(link),
        title=title,
        link=link,
        published=feed_moment(article.published_at),
        summary=summary,
        author=xml_text(article.provider_label),
        source_url=_source_url(article.provider.domain, link),
        source_name=xml_text(article.provider.name) or xml_text(article.provider_label),
        categories=tuple(dict.fromkeys(filter(None, map(xml_text, article.topics)))),
        image=image,
        related=related,
        content_html=_content_html(summary, image, related),
        modified=feed_moment(modified) if modified else None,
    )


def _picture(article: Article, title: str) -> Picture | None:
    usable = [
        Image(url, image.width, image.height, image.title)
        for image in article.images
        if (url := safe_url(image.url))
    ]
    image = best_image(usable)
    if image is None:
        return None
    return Picture(
        url=image.url,
        type=_image_type(image.url),
        width=_dimension(image.width),
        height=_dimension(image.height),
        alt=xml_text(image.title) or title,
    )


def _image_type(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return _IMAGE_TYPES.get(suffix, DEFAULT_IMAGE_TYPE)


def _dimension(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _related_links(article: Article, link: str) -> tuple[RelatedLink, ...]:
    links: dict[str, RelatedLink] = {}
    for related in article.related:
        url = safe_url(related.url)
        if url and url != link and url not in links:
            links[url] = RelatedLink(url=url, title=xml_text(related.title) or url)
    return tuple(links.values())


def _source_url(domain: str, link: str) -> str:
    """The provider's site if its domain is a plain host name, else the article's origin."""
    host = domain.strip().lower().rstrip(".")
    if _HOST_NAME.fullmatch(host):
        return f"https://{host}/"
    parts = urlsplit(link)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/"


def _content_html(summary: str, image: Picture | None, related: tuple[RelatedLink, ...]) -> str:
    esc = html.escape
    blocks = []
    if image is not None:
        size = "".join(
            f' {name}="{value}"'
            for name, value in (("width", image.width), ("height", image.height))
            if value
        )
        blocks.append(f'<p><img src="{esc(image.url)}" alt="{esc(image.alt)}"{size}></p>')
    if summary:
        blocks.append(f"<p>{esc(summary)}</p>")
    if related:
        items = "".join(f'<li><a href="{esc(r.url)}">{esc(r.title)}</a></li>' for r in related)
        blocks.append(f"<p>Related:</p><ul>{items}</ul>")
    return "".join(blocks)
