"""Feeds: rendered XML parsed back with lxml and feedparser and compared with the records."""

from __future__ import annotations

import errno
import json
import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import feedparser
import lxml.html
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from publisher.config import FeedsConfig
from publisher.errors import FeedError
from publisher.feeds import build_feeds, render_feeds, write_atomic, write_feeds
from publisher.feeds import write as feeds_write
from publisher.models import Article, Image, Provider, Related, article_id

ATOM = "{http://www.w3.org/2005/Atom}"
MEDIA = "{http://search.yahoo.com/mrss/}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
BASE_URL = "https://feeds.example.org/"
SITE_URL = "https://example.org/"
HUB_URL = "https://hub.example.org/"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

RFC822 = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} (GMT|[+-]\d{4})"
)
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
MIME = re.compile(r"[a-z]+/[-a-z0-9.+]+")
MEDIUMS = {"image", "audio", "video", "document", "executable"}
XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def make_article(n: int = 0, **changes: object) -> Article:
    url = str(changes.pop("url", f"https://news.example.com/story/{n}"))
    fields: dict[str, object] = {
        "id": article_id(url),
        "title": f"Story {n}",
        "url": url,
        "published_at": T0 - timedelta(hours=n),
        "excerpt": f"What happened in story {n}.",
        "provider": Provider(name="Example News", domain="news.example.com"),
        "topics": ("Computer Vision",),
        "images": (Image(f"https://img.example.com/{n}.png", 800, 600, "A picture"),),
        "related": (Related(f"Background {n}", f"https://other.example.net/bg/{n}"),),
        "published": True,
        "quality": 5,
    }
    fields.update(changes)
    return Article(**fields)  # type: ignore[arg-type]


def make_config(tmp_path: Path, **changes: object) -> FeedsConfig:
    values: dict[str, object] = {
        "dir": tmp_path / "feeds",
        "base_url": BASE_URL,
        "site_url": SITE_URL,
        "title": "Publisher",
        "websub_hub": HUB_URL,
    }
    values.update(changes)
    return FeedsConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> FeedsConfig:
    return make_config(tmp_path)


def xml(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def parsed(data: bytes) -> feedparser.FeedParserDict:
    result = feedparser.parse(data)
    assert not result.bozo, result.get("bozo_exception")
    return result


def rfc822_utc(value: str | None) -> datetime:
    """An RFC 822 date in UTC ("GMT" and "+0000" are the same zone), as an aware datetime."""
    assert value is not None and RFC822.fullmatch(value), value
    moment = parsedate_to_datetime(value)
    assert moment.utcoffset() == timedelta(0), value
    return moment


def rfc3339_utc(value: str | None) -> datetime:
    """An RFC 3339 date in UTC ("Z" and "+00:00" are the same zone), as an aware datetime."""
    assert value is not None and RFC3339.fullmatch(value), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0), value
    return moment


def atom_rel(link: etree._Element) -> str:
    """An Atom link's relation: without a rel attribute it is "alternate" (RFC 4287 4.2.7.2)."""
    return link.get("rel", "alternate")


def items(data: bytes) -> list[etree._Element]:
    return xml(data).findall("channel/item")


def entries(data: bytes) -> list[etree._Element]:
    return xml(data).findall(f"{ATOM}entry")


# --- the validator's rules, as far as they apply to what we publish ----------------------------


def is_http(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("http://", "https://"))


def html_links(markup: str) -> list[str]:
    if not markup.strip():
        return []
    fragment = lxml.html.fragment_fromstring(markup, create_parent="div")
    return [value for element in fragment.iter() for key, value in element.attrib.items()
            if key in ("href", "src")]


def rss_problems(data: bytes, self_url: str) -> list[str]:
    problems: list[str] = []
    root = xml(data)
    channel = root.find("channel")
    if root.tag != "rss" or root.get("version") != "2.0" or channel is None:
        return ["not an RSS 2.0 document"]
    for tag in ("title", "link", "description"):
        if not (channel.findtext(tag) or "").strip():
            problems.append(f"channel lacks {tag}")
    if not is_http(channel.findtext("link")):
        problems.append("channel link not http(s)")
    self_links = [ln for ln in channel.findall(f"{ATOM}link") if ln.get("rel") == "self"]
    if [ln.get("href") for ln in self_links] != [self_url]:
        problems.append(f"atom:link self is not exactly {self_url}")
    problems += [f"bad hub {ln.get('href')}" for ln in channel.findall(f"{ATOM}link")
                 if not is_http(ln.get("href"))]
    for tag in ("pubDate", "lastBuildDate"):
        value = channel.findtext(tag)
        if value is not None and not RFC822.fullmatch(value):
            problems.append(f"channel {tag} not RFC 822: {value}")
    ttl = channel.findtext("ttl")
    if ttl is not None and not ttl.isdigit():
        problems.append("ttl not an integer")
    guids = [item.findtext("guid") for item in channel.findall("item")]
    problems += [f"duplicate guid {g}" for g, n in Counter(guids).items() if n > 1]
    for item in channel.findall("item"):
        problems += item_problems(item)
    if any(True for _ in root.iter(f"{MEDIA}group")):
        problems.append("media:group present")
    return problems


def item_problems(item: etree._Element) -> list[str]:
    problems: list[str] = []
    if not (item.findtext("title") or item.findtext("description")):
        problems.append("item has neither title nor description")
    if not is_http(item.findtext("link")):
        problems.append("item link not http(s)")
    guid = item.find("guid")
    if guid is None or not guid.text or guid.get("isPermaLink") not in ("true", "false"):
        problems.append("item guid missing or isPermaLink not true/false")
    if not RFC822.fullmatch(item.findtext("pubDate") or ""):
        problems.append("item pubDate not RFC 822")
    if item.find("author") is not None:
        problems.append("RSS author needs an e-mail: use dc:creator")
    enclosures = item.findall("enclosure")
    if len(enclosures) > 1:
        problems.append("more than one enclosure")
    for enclosure in enclosures:
        if not (enclosure.get("length") or "").isdigit():
            problems.append(f"enclosure length {enclosure.get('length')!r} not an integer")
        if not MIME.fullmatch(enclosure.get("type") or ""):
            problems.append("enclosure type not a MIME type")
        if not is_http(enclosure.get("url")):
            problems.append("enclosure url not http(s)")
    for source in item.findall("source"):
        if not is_http(source.get("url")) or not source.text:
            problems.append("source lacks url or name")
    problems += media_problems(item)
    content = item.findtext(f"{CONTENT}encoded") or ""
    problems += [f"non-http link in content: {url}" for url in html_links(content)
                 if not is_http(url)]
    return problems


def media_problems(parent: etree._Element) -> list[str]:
    problems: list[str] = []
    for media in parent.iter(f"{MEDIA}content"):
        if media.getparent() is not parent:
            problems.append("media:content not a direct child of its item/entry")
        if not is_http(media.get("url")) or media.get("medium") not in MEDIUMS:
            problems.append("media:content lacks an http(s) url or a known medium")
        for size in ("width", "height"):
            value = media.get(size)
            if value is not None and not (value.isdigit() and int(value) > 0):
                problems.append(f"media:content {size} not a positive integer")
    return problems


def atom_problems(data: bytes, self_url: str) -> list[str]:
    problems: list[str] = []
    root = xml(data)
    if root.tag != f"{ATOM}feed":
        return ["not an Atom feed"]
    for tag in ("id", "title", "updated"):
        if root.find(f"{ATOM}{tag}") is None:
            problems.append(f"feed lacks {tag}")
    if not RFC3339.fullmatch(root.findtext(f"{ATOM}updated") or ""):
        problems.append("feed updated not RFC 3339")
    links = root.findall(f"{ATOM}link")
    if [ln.get("href") for ln in links if ln.get("rel") == "self"] != [self_url]:
        problems.append(f"self link is not exactly {self_url}")
    problems += alternate_problems(links, "feed")
    problems += [f"non-http link {ln.get('href')}" for ln in root.iter(f"{ATOM}link")
                 if not is_http(ln.get("href"))]
    feed_author = root.find(f"{ATOM}author/{ATOM}name") is not None
    ids = [entry.findtext(f"{ATOM}id") for entry in root.findall(f"{ATOM}entry")]
    problems += [f"duplicate id {i}" for i, n in Counter(ids).items() if n > 1]
    for entry in root.findall(f"{ATOM}entry"):
        problems += entry_problems(entry, feed_author)
    if any(True for _ in root.iter(f"{MEDIA}group")):
        problems.append("media:group present")
    return problems


def alternate_problems(links: list[etree._Element], where: str) -> list[str]:
    alternates = [ln for ln in links if ln.get("rel", "alternate") == "alternate"]
    keys = Counter((ln.get("type"), ln.get("hreflang")) for ln in alternates)
    return [f"{where} has {n} alternate links of type {key}" for key, n in keys.items() if n > 1]


def entry_problems(entry: etree._Element, feed_author: bool) -> list[str]:
    problems: list[str] = []
    for tag in ("id", "title", "updated"):
        if entry.find(f"{ATOM}{tag}") is None:
            problems.append(f"entry lacks {tag}")
    for tag in ("updated", "published"):
        value = entry.findtext(f"{ATOM}{tag}")
        if value is not None and not RFC3339.fullmatch(value):
            problems.append(f"entry {tag} not RFC 3339")
    if not feed_author and entry.find(f"{ATOM}author/{ATOM}name") is None:
        problems.append("entry without author in a feed without author")
    problems += alternate_problems(entry.findall(f"{ATOM}link"), "entry")
    content = entry.find(f"{ATOM}content")
    if content is not None:
        if content.get("type") != "html":
            problems.append("content is not type html")
        problems += [f"non-http link in content: {url}" for url in html_links(content.text or "")
                     if not is_http(url)]
    summary = entry.find(f"{ATOM}summary")
    if summary is not None and summary.get("type", "text") != "text":
        problems.append("summary of plain text must be type text")
    return problems + media_problems(entry)


def xml_feeds(rendered: dict[str, bytes]) -> dict[str, bytes]:
    """The RSS and Atom documents; JSON Feed, OPML and the landing page: test_subscribe."""
    return {name: data for name, data in rendered.items()
            if name.endswith((".rss.xml", ".atom.xml"))}


def file_names(*slugs: str) -> list[str]:
    """Every file rendered for feeds with these slugs, sorted."""
    feeds = [f"{slug}.{suffix}" for slug in slugs for suffix in ("rss.xml", "atom.xml", "json")]
    return sorted([*feeds, "feed.xsl", "feeds.opml", "index.html"])


def assert_valid(rendered: dict[str, bytes], config: FeedsConfig) -> None:
    for name, data in xml_feeds(rendered).items():
        check = rss_problems if name.endswith(".rss.xml") else atom_problems
        assert check(data, config.url_for(name)) == [], name
        parsed(data)


# --- rendering ---------------------------------------------------------------------------------


def test_renders_all_and_topic_feeds_that_pass_the_validation_rules(config: FeedsConfig) -> None:
    articles = [
        make_article(0, topics=("Computer Vision", "Robotics")),
        make_article(1, topics=("Robotics",)),
        make_article(2, topics=()),
    ]
    rendered = render_feeds(articles, config)
    assert sorted(rendered) == file_names("all", "computer-vision", "robotics")
    assert_valid(rendered, config)
    assert len(items(rendered["all.rss.xml"])) == 3
    assert len(entries(rendered["robotics.atom.xml"])) == 2
    channel = xml(rendered["robotics.rss.xml"]).find("channel")
    assert channel.findtext("title") == "Publisher: Robotics"
    assert channel.findtext("link") == SITE_URL
    assert channel.findtext("ttl") == "60"
    assert channel.findtext("language") == "en"
    assert xml(rendered["all.atom.xml"]).findtext(f"{ATOM}title") == "Publisher"


def test_channel_links_self_site_and_hub(config: FeedsConfig) -> None:
    rendered = render_feeds([make_article()], config)
    rss_links = {
        ln.get("rel"): ln.get("href")
        for ln in xml(rendered["computer-vision.rss.xml"]).findall(f"channel/{ATOM}link")
    }
    assert rss_links == {"self": BASE_URL + "computer-vision.rss.xml", "hub": HUB_URL}
    atom = xml(rendered["computer-vision.atom.xml"])
    atom_links = {ln.get("rel"): ln.get("href") for ln in atom.findall(f"{ATOM}link")}
    assert atom_links == {
        "self": BASE_URL + "computer-vision.atom.xml", "alternate": SITE_URL, "hub": HUB_URL,
    }
    no_hub = render_feeds([make_article()], FeedsConfig(base_url=BASE_URL))
    assert b'rel="hub"' not in no_hub["all.rss.xml"] + no_hub["all.atom.xml"]


def test_title_with_markup_is_escaped_as_plain_text(config: FeedsConfig) -> None:
    rendered = render_feeds([make_article(title="<b>A & B</b>")], config)
    assert items(rendered["all.rss.xml"])[0].findtext("title") == "<b>A & B</b>"
    assert entries(rendered["all.atom.xml"])[0].findtext(f"{ATOM}title") == "<b>A & B</b>"
    for name in ("all.rss.xml", "all.atom.xml"):
        assert parsed(rendered[name]).entries[0].title == "<b>A & B</b>"
    assert_valid(rendered, config)


def test_control_characters_are_dropped_and_unicode_kept(config: FeedsConfig) -> None:
    article = make_article(
        title="Künstliche\x00 Intelligenz \x1b🤖",
        excerpt="Straße\x0c 😀",
        topics=("Künstliche Intelligenz",),
    )
    rendered = render_feeds([article], config)
    assert_valid(rendered, config)
    feed = parsed(rendered["kunstliche-intelligenz.atom.xml"])
    assert feed.feed.title == "Publisher: Künstliche Intelligenz"
    assert feed.entries[0].title == "Künstliche Intelligenz 🤖"
    assert feed.entries[0].summary == "Straße 😀"
    assert parsed(rendered["kunstliche-intelligenz.rss.xml"]).entries[0].title == (
        "Künstliche Intelligenz 🤖"
    )


def test_entries_are_newest_first_and_capped(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_items=3)
    articles = [make_article(n) for n in (4, 0, 3, 1, 2)]  # not in order, on purpose
    rendered = render_feeds(articles, config)
    expected = [article_id(f"https://news.example.com/story/{n}") for n in (0, 1, 2)]
    for name in ("all.rss.xml", "computer-vision.rss.xml"):
        assert [item.findtext("guid") for item in items(rendered[name])] == expected
    for name in ("all.atom.xml", "computer-vision.atom.xml"):
        assert [e.findtext(f"{ATOM}id") for e in entries(rendered[name])] == expected


def test_ids_are_the_article_id_and_stable(config: FeedsConfig) -> None:
    article = make_article()
    first = render_feeds([article], config)
    again = render_feeds([make_article()], config)
    assert first == again
    guid = items(first["all.rss.xml"])[0].find("guid")
    assert guid.text == article.id and guid.get("isPermaLink") == "false"
    assert entries(first["all.atom.xml"])[0].findtext(f"{ATOM}id") == article.id
    assert parsed(first["all.atom.xml"]).entries[0].id == article.id
    assert parsed(first["all.rss.xml"]).entries[0].id == article.id


def test_item_carries_link_dates_author_source_and_categories(config: FeedsConfig) -> None:
    article = make_article(topics=("Computer Vision", "AI & Policy"))
    rendered = render_feeds([article], config)
    item = items(rendered["all.rss.xml"])[0]
    assert item.findtext("link") == article.url
    assert rfc822_utc(item.findtext("pubDate")) == T0
    assert item.findtext(f"{DC}creator") == "Example News"
    source = item.find("source")
    assert (source.get("url"), source.text) == ("https://news.example.com/", "Example News")
    assert [c.text for c in item.findall("category")] == ["Computer Vision", "AI & Policy"]
    rss_entry = parsed(rendered["all.rss.xml"]).entries[0]
    assert [tag.term for tag in rss_entry.tags] == ["Computer Vision", "AI & Policy"]
    assert rss_entry.author == "Example News"
    atom_entry = parsed(rendered["all.atom.xml"]).entries[0]
    assert [tag.term for tag in atom_entry.tags] == ["Computer Vision", "AI & Policy"]
    assert atom_entry.author == "Example News"
    assert atom_entry.published_parsed[:6] == (2024, 5, 1, 12, 0, 0)
    assert atom_entry.summary == article.excerpt


def test_source_without_domain_is_the_article_origin(config: FeedsConfig) -> None:
    article = make_article(
        url="https://user@blog.example.com:8443/p?q=1", provider=Provider("Blog")
    )
    source = items(render_feeds([article], config)["all.rss.xml"])[0].find("source")
    assert (source.get("url"), source.text) == ("https://blog.example.com:8443/", "Blog")


def test_a_provider_known_by_an_idna_host_is_named_in_unicode(config: FeedsConfig) -> None:
    article = make_article(provider=Provider("", "xn--bcher-kva.example"))
    rendered = render_feeds([article], config)
    item = items(rendered["all.rss.xml"])[0]
    assert item.findtext(f"{DC}creator") == "bücher.example"
    source = item.find("source")
    assert (source.get("url"), source.text) == ("https://xn--bcher-kva.example/",
                                                "bücher.example")
    atom = parsed(rendered["all.atom.xml"]).entries[0]
    assert atom.author == "bücher.example"
    assert atom.author_detail.href == "https://xn--bcher-kva.example/"
    item_json = json.loads(rendered["all.json"])["items"][0]
    assert item_json["authors"] == [{"name": "bücher.example",
                                     "url": "https://xn--bcher-kva.example/"}]
    page = rendered["index.html"].decode()
    assert "bücher.example · " in page and "xn--bcher-kva" not in page


def test_image_is_enclosure_media_content_and_img(config: FeedsConfig) -> None:
    images = (
        Image("https://img.example.com/small.webp", 100, 100),  # an icon: not the best image
        Image("https://img.example.com/big.webp?w=1200", 1200, 800, "Big"),
    )
    rendered = render_feeds([make_article(images=images)], config)
    item = items(rendered["all.rss.xml"])[0]
    enclosure = item.find("enclosure")
    assert enclosure.attrib == {
        "url": "https://img.example.com/big.webp?w=1200", "length": "0", "type": "image/webp",
    }
    for parent in (item, entries(rendered["all.atom.xml"])[0]):
        (media,) = parent.findall(f"{MEDIA}content")
        assert media.attrib == {
            "url": "https://img.example.com/big.webp?w=1200", "medium": "image",
            "type": "image/webp", "width": "1200", "height": "800",
        }
    assert b"media:group" not in rendered["all.rss.xml"] + rendered["all.atom.xml"]
    rss_entry = parsed(rendered["all.rss.xml"]).entries[0]
    assert [(e.href, e.type, e.length) for e in rss_entry.enclosures] == [
        ("https://img.example.com/big.webp?w=1200", "image/webp", "0")
    ]
    assert [m["url"] for m in rss_entry.media_content] == ["https://img.example.com/big.webp?w=1200"]
    assert html_links(rss_entry.content[0].value)[0] == "https://img.example.com/big.webp?w=1200"


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("https://i.example.com/a.JPG", "image/jpeg"),
        ("https://i.example.com/a.png", "image/png"),
        ("https://i.example.com/a.gif?x=.png", "image/gif"),
        ("https://i.example.com/photo", "image/jpeg"),
        ("https://i.example.com/a.svg", "image/svg+xml"),
    ],
)
def test_image_type_is_guessed_from_the_extension(config: FeedsConfig, url: str, mime: str) -> None:
    rendered = render_feeds([make_article(images=(Image(url),))], config)
    assert items(rendered["all.rss.xml"])[0].find("enclosure").get("type") == mime


def test_atom_entry_has_one_alternate_link_plus_related_links(config: FeedsConfig) -> None:
    related = (
        Related("One", "https://a.example.net/1"),
        Related("Two & more", "https://b.example.net/2"),
    )
    article = make_article(related=related)
    rendered = render_feeds([article], config)
    links = [(atom_rel(ln), ln.get("href")) for ln in entries(rendered["all.atom.xml"])[0]
             .findall(f"{ATOM}link")]
    assert links == [
        ("alternate", article.url),
        ("related", "https://a.example.net/1"),
        ("related", "https://b.example.net/2"),
    ]
    atom_entry = parsed(rendered["all.atom.xml"]).entries[0]
    assert atom_entry.link == article.url
    assert [(ln.rel, ln.href) for ln in atom_entry.links] == links
    for name in ("all.rss.xml", "all.atom.xml"):
        content = parsed(rendered[name]).entries[0].content[0].value
        hrefs = html_links(content)
        assert hrefs == [article.images[0].url, *(r.url for r in related)]
        assert "Two &amp; more" in content


def test_article_without_image_or_related_items(config: FeedsConfig) -> None:
    rendered = render_feeds([make_article(images=(), related=())], config)
    assert_valid(rendered, config)
    item = items(rendered["all.rss.xml"])[0]
    assert item.find("enclosure") is None and item.find(f"{MEDIA}content") is None
    assert item.findtext(f"{CONTENT}encoded") == "<p>What happened in story 0.</p>"
    entry = entries(rendered["all.atom.xml"])[0]
    assert [atom_rel(ln) for ln in entry.findall(f"{ATOM}link")] == ["alternate"]
    assert parsed(rendered["all.rss.xml"]).entries[0].get("enclosures") == []


def test_non_http_urls_never_appear(config: FeedsConfig) -> None:
    sneaky = make_article(
        images=(
            Image("javascript:alert(1)", 900, 900),
            Image("ftp://img.example.com/x.png", 900, 900),
        ),
        related=(Related("Evil", "javascript:alert(2)"), Related("Data", "data:text/html,hi")),
    )
    no_link = make_article(1, url="javascript:alert(3)", topics=("Hidden",))
    rendered = render_feeds([sneaky, no_link], config)
    assert sorted(rendered) == file_names("all", "computer-vision")
    for data in rendered.values():
        assert b"javascript" not in data and b"ftp:" not in data and b"data:" not in data
    assert_valid(rendered, config)
    assert len(items(rendered["all.rss.xml"])) == 1


def test_channel_dates_are_the_newest_entry_not_now(config: FeedsConfig) -> None:
    rendered = render_feeds([make_article(2), make_article(1)], config)
    channel = xml(rendered["all.rss.xml"]).find("channel")
    newest = datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert rfc822_utc(channel.findtext("lastBuildDate")) == newest
    assert rfc822_utc(channel.findtext("pubDate")) == newest
    assert rfc3339_utc(xml(rendered["all.atom.xml"]).findtext(f"{ATOM}updated")) == newest


def test_empty_corpus_gives_valid_empty_feeds(config: FeedsConfig) -> None:
    rendered = render_feeds([], config)
    assert sorted(rendered) == file_names("all")
    assert_valid(rendered, config)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert rfc3339_utc(xml(rendered["all.atom.xml"]).findtext(f"{ATOM}updated")) == epoch


def test_bad_site_url_is_a_feed_error(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="http"):
        render_feeds([make_article()], make_config(tmp_path, site_url="javascript:alert(1)"))


# --- writing -----------------------------------------------------------------------------------


def test_rebuild_of_unchanged_corpus_rewrites_nothing(config: FeedsConfig) -> None:
    first = build_feeds([make_article(0), make_article(1)], config)
    assert first.written == 9 and first.unchanged == 0 and first.topics == 1
    stamps = {f.path: f.path.stat().st_mtime_ns for f in first.files}
    contents = {f.path: f.path.read_bytes() for f in first.files}
    second = build_feeds([make_article(0), make_article(1)], config)
    assert second.written == 0 and second.unchanged == 9 and second.removed == ()
    assert {f.path: f.path.stat().st_mtime_ns for f in second.files} == stamps
    assert {f.path: f.path.read_bytes() for f in second.files} == contents
    assert {(f.slug, f.kind) for f in second.files} == {
        (slug, kind) for slug in ("all", "computer-vision") for kind in ("rss", "atom", "json")
    } | {("feeds", "opml"), ("index", "html"), ("feed", "xsl")}
    assert [f.kind for f in second.files if f.is_feed] == ["atom", "json", "rss"] * 2


def test_stale_topic_feeds_are_removed_and_other_files_kept(config: FeedsConfig) -> None:
    build_feeds([make_article(0, topics=("Robotics",)), make_article(1)], config)
    foreign = {
        "README.md": "keep me", "Notes.rss.xml": "keep me", "x.xml": "keep me",
        "package.json": '{"name": "not a feed"}', "old.json": '{"version": "1.0"}',
        "broken.json": "{", "list.json": "[]",
        "other.json": '{"version": "https://jsonfeed.org/version/1"}',
    }
    for name, text in foreign.items():
        (config.dir / name).write_text(text)
    (config.dir / "linked.rss.xml").symlink_to(config.dir / "README.md")
    result = build_feeds([make_article(1)], config)
    assert result.removed == tuple(
        config.dir / name for name in ("robotics.atom.xml", "robotics.json", "robotics.rss.xml")
    )
    assert sorted(p.name for p in config.dir.iterdir()) == sorted(
        [*foreign, "linked.rss.xml", *file_names("all", "computer-vision")]
    )
    assert all((config.dir / name).read_text() == text for name, text in foreign.items())


def test_traversal_shaped_topic_stays_inside_the_feeds_dir(tmp_path: Path) -> None:
    config = make_config(tmp_path, dir=tmp_path / "a" / "b" / "feeds")
    result = build_feeds([make_article(topics=("../../x", "/etc/passwd"))], config)
    assert {f.path.parent for f in result.files} == {config.dir.resolve()}
    assert sorted(p.name for p in config.dir.iterdir()) == file_names("all", "etc-passwd", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize(
    "name",
    ["../evil.rss.xml", "/tmp/evil.rss.xml", "notes.txt", "A.rss.xml", "x.json.xml", "feeds.html",
     "../index.html"],
)
def test_write_feeds_refuses_foreign_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(FeedError):
        write_feeds({name: b"<rss/>"}, tmp_path / "feeds")
    assert not (tmp_path / "evil.rss.xml").exists()


def test_failed_write_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "all.rss.xml"
    assert write_atomic(path, b"old") is True

    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(feeds_write.os, "replace", disk_full)
    with pytest.raises(FeedError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["all.rss.xml"]


def test_write_into_a_missing_folder_is_a_feed_error(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="cannot write"):
        write_atomic(tmp_path / "missing" / "all.rss.xml", b"data")


def test_write_atomic_reports_whether_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "out.xml"
    assert write_atomic(path, b"one") is True
    assert write_atomic(path, b"one") is False
    assert write_atomic(path, b"two") is True
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == 0o644


# --- properties --------------------------------------------------------------------------------


def cleaned(text: str) -> str:
    return " ".join(XML_INVALID.sub("", text).split())


@settings(max_examples=100, deadline=None)
@given(title=st.text(), excerpt=st.text(), provider=st.text(), topic=st.text())
def test_any_text_gives_well_formed_feeds(
    title: str, excerpt: str, provider: str, topic: str
) -> None:
    config = FeedsConfig(base_url=BASE_URL)
    article = make_article(
        title=title, excerpt=excerpt, provider=Provider(provider), topics=(topic,),
        related=(Related(title, "https://r.example.com/"),),
    )
    rendered = render_feeds([article], config)
    assert len(rendered) == 9
    expected_title = cleaned(title) or article.url
    for name, data in xml_feeds(rendered).items():
        root = xml(data)
        result = parsed(data)
        assert len(result.entries) == 1
        if name.endswith(".atom.xml"):
            assert root.find(f"{ATOM}entry").findtext(f"{ATOM}title") == expected_title
        else:
            assert root.find("channel/item").findtext("title") == expected_title
