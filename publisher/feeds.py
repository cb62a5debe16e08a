"""RSS 2.0 and Atom 1.0 feeds: one pair for all articles and one per topic.

Rendering is pure and deterministic: every date comes from the articles, so rebuilding an
unchanged corpus gives identical bytes, and ``write_feeds`` then leaves the files alone.

The XML is built with lxml directly rather than feedgen: feedgen 1.0 drops ``rel``/``type``
from Atom entry links, wraps media:content in media:group, stamps "now" on every feed and
switches the process-wide locale to format each date, which is unsafe in a threaded scheduler.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

from lxml import etree

from publisher.config import FeedsConfig
from publisher.errors import FeedError
from publisher.models import Article, Image, article_id, best_image
from publisher.selection import group_by_topic, newest_first

_Element = etree._Element

ALL_SLUG = "all"
GENERATOR = "publisher"
FEED_NAME = re.compile(r"(?P<slug>[a-z0-9][a-z0-9-]*)\.(?P<kind>rss|atom)\.xml")

ATOM_NS = "http://www.w3.org/2005/Atom"
CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
DC_NS = "http://purl.org/dc/elements/1.1/"
MEDIA_NS = "http://search.yahoo.com/mrss/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
RSS_NSMAP = {"atom": ATOM_NS, "content": CONTENT_NS, "dc": DC_NS, "media": MEDIA_NS}
ATOM_NSMAP = {None: ATOM_NS, "media": MEDIA_NS}

# An empty feed still needs an Atom <updated>; a fixed date keeps rebuilds identical.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Characters XML 1.0 forbids (lxml refuses them), plus U+FFFE/U+FFFF and lone surrogates.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NOT_IN_URL = re.compile(r"\s|" + _XML_INVALID.pattern)
# Everything RFC 3986 allows in a URI; anything else (spaces, non-ASCII, quotes) is escaped.
_URI_SAFE = ";/?:@&=+$,-_.!~*'()#%[]"
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


@dataclass(frozen=True)
class FeedFile:
    path: Path
    kind: str  # "rss" | "atom"
    slug: str
    changed: bool


@dataclass(frozen=True)
class BuildResult:
    files: tuple[FeedFile, ...]
    removed: tuple[Path, ...]
    topics: int

    @property
    def written(self) -> int:
        return sum(1 for feed_file in self.files if feed_file.changed)

    @property
    def unchanged(self) -> int:
        return len(self.files) - self.written


# --- public API -------------------------------------------------------------------------------


def render_feeds(selected: Sequence[Article], config: FeedsConfig) -> dict[str, bytes]:
    """Every feed file, by file name: ``all.rss.xml``, ``all.atom.xml``, ``<slug>.rss.xml``...

    ``selected`` is newest first, as ``selection.select`` returns it. No I/O.
    """
    channel = _channel_settings(config)
    entries = _EntryCache()
    everything = newest_first({article.id: article for article in selected}.values())
    feeds = [_Feed(ALL_SLUG, channel.title, entries.first(everything, config.max_items))]
    for slug, topic in group_by_topic(selected).items():
        topic_entries = entries.first(topic.articles, config.max_items)
        if topic_entries:  # none when no article of the topic has an http(s) link
            title = f"{channel.title}: {_text(topic.name) or slug}"
            feeds.append(_Feed(slug, title, topic_entries))
    rendered: dict[str, bytes] = {}
    for feed in feeds:
        rendered[feed_name(feed.slug, "rss")] = _render_rss(feed, channel)
        rendered[feed_name(feed.slug, "atom")] = _render_atom(feed, channel)
    return rendered


def write_feeds(rendered: Mapping[str, bytes], out_dir: Path) -> BuildResult:
    """Write the changed files atomically and remove feed files no longer rendered."""
    root = _prepare_dir(out_dir)
    targets = [(name, *_parse_feed_name(name), _inside(root, name)) for name in sorted(rendered)]
    files = [
        FeedFile(path, kind, slug, write_atomic(path, rendered[name]))
        for name, slug, kind, path in targets
    ]
    removed = _remove_stale(root, keep=set(rendered))
    topics = len({feed.slug for feed in files if feed.slug != ALL_SLUG})
    return BuildResult(files=tuple(files), removed=removed, topics=topics)


def build_feeds(selected: Sequence[Article], config: FeedsConfig) -> BuildResult:
    return write_feeds(render_feeds(selected, config), config.dir)


def write_atomic(path: Path, data: bytes) -> bool:
    """Replace ``path`` with ``data`` unless it already holds exactly these bytes.

    A reader sees either the old or the new file, never a partial one; on failure the old
    file stays intact and the temporary file is removed. Returns True if it wrote.
    """
    if _holds(path, data):
        return False
    try:
        _replace(path, data)
    except OSError as exc:
        raise FeedError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return True


def feed_name(slug: str, kind: str) -> str:
    return f"{slug}.{kind}.xml"


# --- sanitising -------------------------------------------------------------------------------


def _text(value: str) -> str:
    """Text safe for XML: invalid characters dropped, whitespace collapsed."""
    return " ".join(_XML_INVALID.sub("", value).split())


def safe_url(url: str) -> str | None:
    """``url`` as an absolute http(s) URI fit for a feed, or None if it is anything else."""
    url = url.strip()
    if _NOT_IN_URL.search(url):
        return None
    try:
        parts = urlsplit(url)
        has_host = bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not has_host:
        return None
    return quote(url, safe=_URI_SAFE)


def _image_type(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return _IMAGE_TYPES.get(suffix, DEFAULT_IMAGE_TYPE)


def _dimension(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _utc(moment: datetime) -> datetime:
    """Whole seconds in UTC: RSS dates cannot carry fractions, and both kinds must agree."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _rfc822(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Picture:
    url: str
    type: str
    width: int | None
    height: int | None
    alt: str


@dataclass(frozen=True, slots=True)
class _RelatedLink:
    url: str
    title: str


@dataclass(frozen=True, slots=True)
class _Entry:
    """What both feed kinds say about one article, sanitised once."""

    id: str
    title: str
    link: str
    published: datetime
    summary: str
    author: str
    source_url: str
    source_name: str
    categories: tuple[str, ...]
    image: _Picture | None
    related: tuple[_RelatedLink, ...]
    content_html: str


class _EntryCache:
    """Builds each article's entry once, however many feeds it appears in.

    Only articles that reach a feed are looked at, so a large corpus costs little.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry | None] = {}

    def first(self, articles: Iterable[Article], limit: int) -> tuple[_Entry, ...]:
        """The entries of the first ``limit`` articles that have an http(s) link."""
        found: list[_Entry] = []
        for article in articles:
            if len(found) == limit:
                break
            if (entry := self._get(article)) is not None:
                found.append(entry)
        return tuple(found)

    def _get(self, article: Article) -> _Entry | None:
        if article.id not in self._entries:
            self._entries[article.id] = _make_entry(article)
        return self._entries[article.id]


def _make_entry(article: Article) -> _Entry | None:
    """The entry for ``article``; None if it has no http(s) link to point to."""
    link = safe_url(article.url)
    if link is None:
        return None
    title = _text(article.title) or link
    image = _picture(article, title)
    related = _related_links(article, link)
    summary = _text(article.excerpt)
    return _Entry(
        id=_text(article.id) or article_id(link),
        title=title,
        link=link,
        published=_utc(article.published_at),
        summary=summary,
        author=_text(article.provider_label),
        source_url=_source_url(article.provider.domain, link),
        source_name=_text(article.provider.name) or _text(article.provider_label),
        categories=tuple(dict.fromkeys(filter(None, map(_text, article.topics)))),
        image=image,
        related=related,
        content_html=_content_html(summary, image, related),
    )


def _picture(article: Article, title: str) -> _Picture | None:
    usable = [
        Image(url, image.width, image.height, image.title)
        for image in article.images
        if (url := safe_url(image.url))
    ]
    image = best_image(usable)
    if image is None:
        return None
    return _Picture(
        url=image.url,
        type=_image_type(image.url),
        width=_dimension(image.width),
        height=_dimension(image.height),
        alt=_text(image.title) or title,
    )


def _related_links(article: Article, link: str) -> tuple[_RelatedLink, ...]:
    links: dict[str, _RelatedLink] = {}
    for related in article.related:
        url = safe_url(related.url)
        if url and url != link and url not in links:
            links[url] = _RelatedLink(url=url, title=_text(related.title) or url)
    return tuple(links.values())


def _source_url(domain: str, link: str) -> str:
    """The provider's site if its domain is a plain host name, else the article's origin."""
    host = domain.strip().lower().rstrip(".")
    if _HOST_NAME.fullmatch(host):
        return f"https://{host}/"
    parts = urlsplit(link)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/"


def _content_html(summary: str, image: _Picture | None, related: tuple[_RelatedLink, ...]) -> str:
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


# --- feeds ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Channel:
    """Feed-level settings shared by every feed, validated once."""

    title: str
    description: str
    language: str
    site: str
    ttl: int
    hub: str | None
    config: FeedsConfig


@dataclass(frozen=True, slots=True)
class _Feed:
    slug: str
    title: str
    entries: tuple[_Entry, ...]  # newest first


def _channel_settings(config: FeedsConfig) -> _Channel:
    title = _text(config.title)
    if not title:
        raise FeedError("feeds.title must not be empty")
    site = safe_url(config.site)
    if site is None or safe_url(config.base_url) is None:
        raise FeedError(
            f"feeds.base_url and feeds.site_url must be http(s) URLs, "
            f"not {config.base_url!r} / {config.site_url!r}"
        )
    hub = safe_url(config.websub_hub) if config.websub_hub else None
    if config.websub_hub and hub is None:
        raise FeedError(f"feeds.websub_hub must be an http(s) URL, not {config.websub_hub!r}")
    return _Channel(
        title=title,
        description=_text(config.description) or title,
        language=_text(config.language),
        site=site,
        ttl=config.ttl,
        hub=hub,
        config=config,
    )


def _self_url(channel: _Channel, slug: str, kind: str) -> str:
    return safe_url(channel.config.url_for(feed_name(slug, kind))) or ""


def _sub(parent: _Element, tag: str, text: str | None = None, **attrib: str) -> _Element:
    element = etree.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _serialise(root: _Element) -> bytes:
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)


def _render_rss(feed: _Feed, channel: _Channel) -> bytes:
    rss = etree.Element("rss", {"version": "2.0"}, nsmap=RSS_NSMAP)
    head = _sub(rss, "channel")
    _sub(head, "title", feed.title)
    _sub(head, "link", channel.site)
    _sub(head, "description", channel.description)
    atom_link = f"{{{ATOM_NS}}}link"
    self_url = _self_url(channel, feed.slug, "rss")
    _sub(head, atom_link, href=self_url, rel="self", type="application/rss+xml")
    if channel.hub:
        _sub(head, atom_link, href=channel.hub, rel="hub")
    if channel.language:
        _sub(head, "language", channel.language)
    if feed.entries:
        newest = _rfc822(feed.entries[0].published)
        _sub(head, "pubDate", newest)
        _sub(head, "lastBuildDate", newest)
    _sub(head, "generator", GENERATOR)
    if channel.ttl > 0:
        _sub(head, "ttl", str(channel.ttl))
    for entry in feed.entries:
        _add_rss_item(head, entry)
    return _serialise(rss)


def _add_rss_item(parent: _Element, entry: _Entry) -> None:
    item = _sub(parent, "item")
    _sub(item, "title", entry.title)
    _sub(item, "link", entry.link)
    if entry.summary:
        # RSS descriptions are HTML: a plain-text excerpt is escaped once more.
        _sub(item, "description", html.escape(entry.summary, quote=False))
    if entry.content_html:
        _sub(item, f"{{{CONTENT_NS}}}encoded", entry.content_html)
    if entry.author:
        _sub(item, f"{{{DC_NS}}}creator", entry.author)
    for category in entry.categories:
        _sub(item, "category", category)
    _sub(item, "guid", entry.id, isPermaLink="false")
    _sub(item, "pubDate", _rfc822(entry.published))
    if entry.source_name:
        _sub(item, "source", entry.source_name, url=entry.source_url)
    if entry.image is not None:
        # The size in bytes is unknown; 0 is what the RSS Advisory Board prescribes for that.
        _sub(item, "enclosure", url=entry.image.url, length="0", type=entry.image.type)
        _add_media_content(item, entry.image)


def _add_media_content(parent: _Element, image: _Picture) -> None:
    attrib = {"url": image.url, "medium": "image", "type": image.type}
    if image.width:
        attrib["width"] = str(image.width)
    if image.height:
        attrib["height"] = str(image.height)
    _sub(parent, f"{{{MEDIA_NS}}}content", **attrib)


def _render_atom(feed: _Feed, channel: _Channel) -> bytes:
    root = etree.Element(f"{{{ATOM_NS}}}feed", nsmap=ATOM_NSMAP)
    if channel.language:
        root.set(XML_LANG, channel.language)
    self_url = _self_url(channel, feed.slug, "atom")
    _atom(root, "id", self_url)
    _atom(root, "title", feed.title)
    _atom(root, "subtitle", channel.description)
    _atom(root, "updated", _rfc3339(feed.entries[0].published if feed.entries else EPOCH))
    author = _atom(root, "author")
    _atom(author, "name", channel.title)
    _atom(root, "link", rel="self", type="application/atom+xml", href=self_url)
    _atom(root, "link", rel="alternate", type="text/html", href=channel.site)
    if channel.hub:
        _atom(root, "link", rel="hub", href=channel.hub)
    _atom(root, "generator", GENERATOR)
    for entry in feed.entries:
        _add_atom_entry(root, entry)
    return _serialise(root)


def _atom(parent: _Element, tag: str, text: str | None = None, **attrib: str) -> _Element:
    return _sub(parent, f"{{{ATOM_NS}}}{tag}", text, **attrib)


def _add_atom_entry(parent: _Element, entry: _Entry) -> None:
    element = _atom(parent, "entry")
    _atom(element, "id", entry.id)
    _atom(element, "title", entry.title)
    _atom(element, "updated", _rfc3339(entry.published))
    _atom(element, "published", _rfc3339(entry.published))
    if entry.author:
        author = _atom(element, "author")
        _atom(author, "name", entry.author)
        _atom(author, "uri", entry.source_url)
    _atom(element, "link", rel="alternate", type="text/html", href=entry.link)
    for related in entry.related:
        _atom(element, "link", rel="related", type="text/html", href=related.url,
              title=related.title)
    if entry.summary:
        _atom(element, "summary", entry.summary)
    if entry.content_html:
        _atom(element, "content", entry.content_html, type="html")
    for category in entry.categories:
        _atom(element, "category", term=category)
    if entry.image is not None:
        _add_media_content(element, entry.image)


# --- files ------------------------------------------------------------------------------------


def _prepare_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir.resolve(strict=True)
    except OSError as exc:
        raise FeedError(f"cannot create feeds folder {out_dir}: {exc.strerror or exc}") from exc


def _parse_feed_name(name: str) -> tuple[str, str]:
    match = FEED_NAME.fullmatch(name)
    if match is None:
        raise FeedError(f"not a feed file name: {name!r}")
    return match["slug"], match["kind"]


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refusing anything that would land outside ``root``."""
    path = (root / name).resolve()
    if path.parent != root:
        raise FeedError(f"refusing to write {name!r} outside {root}")
    return path


def _holds(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:  # missing or unreadable: write it, and let the write report real trouble
        return False


def _replace(path: Path, data: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; feeds are served to anyone
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale(root: Path, keep: set[str]) -> tuple[Path, ...]:
    removed = []
    for path in sorted(root.iterdir()):
        if path.name in keep or not FEED_NAME.fullmatch(path.name) or path.is_dir():
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FeedError(f"cannot remove stale feed {path}: {exc.strerror or exc}") from exc
        removed.append(path)
    return tuple(removed)
