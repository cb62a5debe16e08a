"""JSON Feed, OPML, the landing page, and WebSub announcements."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import feedparser
import httpx
import lxml.html
import pytest
from lxml import etree
from test_feeds import (
    ATOM,
    BASE_URL,
    HUB_URL,
    SITE_URL,
    entries,
    file_names,
    is_http,
    make_article,
    make_config,
    rfc3339_utc,
)

from publisher.config import FeedsConfig
from publisher.feeds import BuildResult, build_feeds, render_feeds
from publisher.models import Image, Related
from publisher.websub import Announcer, announce_changed

ARTICLES = [
    make_article(0, topics=("Computer Vision", "Robotics")),
    make_article(1, title="<script>alert(1)</script> & more", topics=("Robotics",)),
    make_article(2, topics=("Robotics",), images=(), related=()),
]


@pytest.fixture
def config(tmp_path: Path) -> FeedsConfig:
    return make_config(tmp_path)


@pytest.fixture
def rendered(config: FeedsConfig) -> dict[str, bytes]:
    return render_feeds(ARTICLES, config)


# --- JSON Feed ---------------------------------------------------------------------------------


def json_problems(document: dict[str, object], self_url: str) -> list[str]:
    """The JSON Feed 1.1 rules that apply to what we publish."""
    problems = []
    if document.get("version") != "https://jsonfeed.org/version/1.1":
        problems.append("version")
    if not isinstance(document.get("title"), str) or not document["title"]:
        problems.append("title")
    if document.get("feed_url") != self_url:
        problems.append("feed_url")
    if not is_http(str(document.get("home_page_url"))):
        problems.append("home_page_url")
    items = document.get("items")
    if not isinstance(items, list):
        return [*problems, "items"]
    ids = [item.get("id") for item in items]
    if len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
        problems.append("ids not unique non-empty strings")
    for item in items:
        if "content_html" not in item and "content_text" not in item:
            problems.append(f"{item['id']}: no content")
        for key in ("url", "image"):
            if key in item and not is_http(item[key]):
                problems.append(f"{item['id']}: {key} not http(s)")
        for key in ("date_published", "date_modified"):
            rfc3339_utc(item[key])
    return problems


def test_json_feed_per_feed_with_the_same_entries_as_atom(
    rendered: dict[str, bytes], config: FeedsConfig
) -> None:
    for slug in ("all", "computer-vision", "robotics"):
        document = json.loads(rendered[f"{slug}.json"])
        assert json_problems(document, config.url_for(f"{slug}.json")) == [], slug
        atom = entries(rendered[f"{slug}.atom.xml"])
        assert [(i["id"], i["title"], i["url"], rfc3339_utc(i["date_published"]))
                for i in document["items"]] == [
            (e.findtext(f"{ATOM}id"), e.findtext(f"{ATOM}title"),
             e.find(f"{ATOM}link").get("href"), rfc3339_utc(e.findtext(f"{ATOM}published")))
            for e in atom
        ]
        atom_root = etree.fromstring(rendered[f"{slug}.atom.xml"])
        assert document["title"] == atom_root.findtext(f"{ATOM}title")


def test_json_feed_item_fields(rendered: dict[str, bytes]) -> None:
    document = json.loads(rendered["robotics.json"])
    assert document["home_page_url"] == SITE_URL
    assert document["hubs"] == [{"type": "WebSub", "url": HUB_URL}]
    assert document["language"] == "en"
    assert document["authors"] == [{"name": "Publisher"}]
    first, second, third = document["items"]
    article = ARTICLES[0]
    assert first["summary"] == article.excerpt
    assert first["authors"] == [{"name": "Example News", "url": "https://news.example.com/"}]
    assert first["tags"] == ["Computer Vision", "Robotics"]
    assert first["image"] == article.images[0].url
    assert article.related[0].url in first["content_html"]
    assert first["date_published"] == first["date_modified"] == "2024-05-01T12:00:00Z"
    assert second["title"] == "<script>alert(1)</script> & more"  # JSON strings are plain text
    assert third["content_html"] == "<p>What happened in story 2.</p>" and "image" not in third


def test_json_feed_without_summary_has_content_text(config: FeedsConfig) -> None:
    bare = make_article(excerpt="", images=(), related=())
    (item,) = json.loads(render_feeds([bare], config)["all.json"])["items"]
    assert item["content_text"] == "" and "content_html" not in item and "summary" not in item
    no_hub = json.loads(render_feeds([bare], FeedsConfig(base_url=BASE_URL))["all.json"])
    assert "hubs" not in no_hub


def test_json_feed_bytes_are_sorted_deterministic_utf8(config: FeedsConfig) -> None:
    article = make_article(title="Künstliche Intelligenz 🤖")
    data = render_feeds([article], config)["all.json"]
    assert "Künstliche Intelligenz 🤖".encode() in data
    document = json.loads(data)
    assert data == (json.dumps(document, sort_keys=True, ensure_ascii=False, indent=2)
                    + "\n").encode()
    assert render_feeds([make_article(title="Künstliche Intelligenz 🤖")], config)["all.json"] == (
        data
    )


def test_empty_corpus_json_feed(config: FeedsConfig) -> None:
    document = json.loads(render_feeds([], config)["all.json"])
    assert document["items"] == []
    assert json_problems(document, config.url_for("all.json")) == []


# --- OPML --------------------------------------------------------------------------------------


def test_opml_lists_every_feed(rendered: dict[str, bytes]) -> None:
    root = etree.fromstring(rendered["feeds.opml"])
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.findtext("head/title") == "Publisher"
    assert root.findtext("head/dateModified") == "Wed, 01 May 2024 12:00:00 GMT"
    outlines = [(o.get("type"), o.get("text"), o.get("xmlUrl"), o.get("htmlUrl"))
                for o in root.findall("body/outline")]
    assert outlines == [
        ("rss", "Publisher", BASE_URL + "all.rss.xml", SITE_URL),
        ("rss", "Publisher: Computer Vision", BASE_URL + "computer-vision.rss.xml", SITE_URL),
        ("rss", "Publisher: Robotics", BASE_URL + "robotics.rss.xml", SITE_URL),
    ]


def test_opml_escapes_titles(tmp_path: Path) -> None:
    config = make_config(tmp_path, title='News "&" <more>')
    root = etree.fromstring(render_feeds([make_article(topics=("A&B <c>",))], config)["feeds.opml"])
    assert root.findtext("head/title") == 'News "&" <more>'
    assert [o.get("title") for o in root.findall("body/outline")] == [
        'News "&" <more>', 'News "&" <more>: A&B <c>',
    ]


def test_empty_corpus_opml_has_no_date(config: FeedsConfig) -> None:
    root = etree.fromstring(render_feeds([], config)["feeds.opml"])
    assert root.find("head/dateModified") is None
    assert len(root.findall("body/outline")) == 1


# --- landing page ------------------------------------------------------------------------------


def page(rendered: dict[str, bytes]) -> lxml.html.HtmlElement:
    return lxml.html.document_fromstring(rendered["index.html"])


def test_landing_page_autodiscovery_per_feed(rendered: dict[str, bytes]) -> None:
    links = page(rendered).xpath("//head/link[@rel='alternate']")
    kinds = [("application/rss+xml", "rss.xml"), ("application/atom+xml", "atom.xml"),
             ("application/feed+json", "json")]
    assert [(ln.get("type"), ln.get("href")) for ln in links] == [
        (media_type, f"{BASE_URL}{slug}.{suffix}")
        for slug in ("all", "computer-vision", "robotics") for media_type, suffix in kinds
    ]
    assert links[3].get("title") == "Publisher: Computer Vision (RSS)"


def test_landing_page_topics_counts_headlines_and_subscribe_links(
    rendered: dict[str, bytes],
) -> None:
    sections = page(rendered).xpath("//main/section")
    assert [s.get("id") for s in sections] == ["all", "computer-vision", "robotics"]
    robotics = sections[2]
    assert robotics.findtext("h2").strip() == "Robotics"
    assert robotics.find("h2/span").text == "3 articles"
    assert sections[1].find("h2/span").text == "1 article"
    assert [(a.text, a.get("href")) for a in robotics.xpath(".//p[@class='subscribe']/a")] == [
        ("RSS", BASE_URL + "robotics.rss.xml"), ("Atom", BASE_URL + "robotics.atom.xml"),
        ("JSON Feed", BASE_URL + "robotics.json"),
    ]
    headlines = robotics.xpath(".//ul/li/a")
    assert [(a.text, a.get("href")) for a in headlines] == [
        (article.title, article.url) for article in ARTICLES
    ]
    assert robotics.xpath(".//ul/li/span/time/@datetime")[0] == "2024-05-01T12:00:00Z"


def test_landing_page_is_escaped_self_contained_and_mobile_ready(
    rendered: dict[str, bytes],
) -> None:
    document = page(rendered)
    assert document.xpath("//script") == [] and document.xpath("//img") == []
    assert b"<script>" not in rendered["index.html"]
    assert b"&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in rendered["index.html"]
    assert document.xpath("//link[@rel='stylesheet']") == []
    assert len(document.xpath("//style")) == 1
    assert document.xpath("//meta[@name='viewport']/@content") == [
        "width=device-width, initial-scale=1"
    ]
    assert document.get("lang") == "en"
    assert document.findtext(".//title") == "Publisher"
    urls = document.xpath("//@href | //@src")
    assert urls and all(is_http(url) for url in urls)
    assert BASE_URL + "feeds.opml" in urls


def test_landing_page_headlines_are_capped_and_empty_feeds_say_so(config: FeedsConfig) -> None:
    many = render_feeds([make_article(n) for n in range(8)], config)
    assert len(page(many).xpath("//section[@id='all']//li")) == 5
    assert page(many).xpath("//section[@id='all']/h2/span")[0].text == "8 articles"
    empty = page(render_feeds([], config))
    assert empty.xpath("//section[@id='all']/p[last()]")[0].text == "No articles yet."


def test_hostile_text_and_urls_stay_out_of_every_new_file(config: FeedsConfig) -> None:
    sneaky = make_article(
        title='"><img src=x onerror=alert(1)>',
        images=(Image("javascript:alert(1)", 900, 900),),
        related=(Related("Evil", "javascript:alert(2)"),),
        topics=('Topic"><b>',),
    )
    rendered = render_feeds([sneaky], make_config(config.dir.parent, title="<i>T</i>"))
    for name in ("index.html", "feeds.opml", "all.json"):
        assert b"javascript" not in rendered[name], name
    assert b"<img" not in rendered["index.html"] and b"<i>" not in rendered["index.html"]
    document = page(rendered)
    assert document.findtext(".//h1") == "<i>T</i>"
    assert document.xpath("//section[@id='all']//li/a")[0].text == sneaky.title


# --- written with the feeds --------------------------------------------------------------------


def test_new_files_are_written_with_the_feeds_and_only_when_changed(config: FeedsConfig) -> None:
    first = build_feeds(ARTICLES, config)
    assert sorted(p.name for p in config.dir.iterdir()) == file_names(
        "all", "computer-vision", "robotics"
    )
    pages = {f.path.name: (f.slug, f.kind) for f in first.files if not f.is_feed}
    assert pages == {"feeds.opml": ("feeds", "opml"), "index.html": ("index", "html"),
                     "feed.xsl": ("feed", "xsl")}
    assert first.topics == 2
    again = build_feeds(ARTICLES, config)
    assert again.written == 0
    changed = build_feeds(ARTICLES[1:], config)
    assert {f.path.name for f in changed.files if f.changed} == {
        "all.rss.xml", "all.atom.xml", "all.json", "robotics.rss.xml", "robotics.atom.xml",
        "robotics.json", "feeds.opml", "index.html",
    }
    assert [p.name for p in changed.removed] == [
        "computer-vision.atom.xml", "computer-vision.json", "computer-vision.rss.xml",
    ]


# --- the feeds in a browser -------------------------------------------------------------------


def browser_page(rendered: dict[str, bytes], name: str) -> lxml.html.HtmlElement:
    """What a browser shows for feed ``name``: its stylesheet applied by libxslt (the XSLT
    engine of Chrome and Safari)."""
    stylesheet = etree.XSLT(etree.fromstring(rendered["feed.xsl"]))
    return lxml.html.document_fromstring(str(stylesheet(etree.fromstring(rendered[name]))))


@pytest.mark.parametrize("kind", ["rss.xml", "atom.xml"])
def test_a_feed_opened_in_a_browser_is_a_page_that_says_how_to_subscribe(
    config: FeedsConfig, kind: str
) -> None:
    excerpt = 'Robots & <humans> "work" together; 5 > 3, &amp; is how HTML writes &.'
    articles = [*ARTICLES[:2], make_article(2, topics=("Robotics",), excerpt=excerpt)]
    rendered = render_feeds(articles, config)
    name = f"robotics.{kind}"
    lines = rendered[name].split(b"\n")
    assert lines[0].startswith(b"<?xml ")
    assert lines[1] == b'<?xml-stylesheet type="text/xsl" href="feed.xsl"?>'
    parsed = feedparser.parse(rendered[name])  # feed readers are not disturbed
    assert not parsed.bozo and len(parsed.entries) == 3
    document = browser_page(rendered, name)
    assert document.findtext(".//title") == "Publisher: Robotics (feed)"
    assert document.findtext(".//h1") == "Publisher: Robotics"
    assert "To subscribe, copy this address into your feed reader" in document.text_content()
    assert document.xpath("//p[@class='feed-url']/code")[0].text == BASE_URL + name
    assert document.xpath("//a[@href='index.html']")[0].text == "Every feed and topic"
    headlines = document.xpath("//main/section/h2/a")
    assert [(a.text_content().strip(), a.get("href")) for a in headlines] == [
        (article.title, article.url) for article in articles
    ]
    summaries = [p.text_content() for p in document.xpath("//main/section/p[not(@class)]")]
    assert summaries[-1] == excerpt  # the excerpt as written, not its HTML escaping
    assert summaries[0] == articles[0].excerpt
    assert document.xpath("//main/section/p[@class='meta']")[0].text_content().startswith(
        "Example News · "
    )
    assert document.xpath("//script") == []  # the hostile title is text
    assert document.get("lang") == "en"
    assert "t.me" not in etree.tostring(document, encoding="unicode")


def test_telegram_url_is_linked_from_the_landing_page_and_the_feed_pages(
    tmp_path: Path,
) -> None:
    rendered = render_feeds(ARTICLES, make_config(tmp_path, telegram_url="https://t.me/robots"))
    landing = page(rendered).xpath("//header//a[@href='https://t.me/robots']")
    assert [a.text for a in landing] == ["Publisher on Telegram"]
    for name in ("all.rss.xml", "robotics.atom.xml"):
        links = browser_page(rendered, name).xpath("//a[@href='https://t.me/robots']")
        assert [a.text for a in links] == ["Follow on Telegram"]
    plain = render_feeds(ARTICLES, make_config(tmp_path))
    assert b"t.me" not in plain["index.html"] and b"t.me" not in plain["feed.xsl"]


def test_the_stylesheet_is_written_with_the_feeds_and_comes_back_if_deleted(
    tmp_path: Path, articles_dir: Path, write_article: Callable[..., Path]
) -> None:
    from publisher import pipeline
    from publisher.config import load_config

    write_article("a.txt", 1)
    config = load_config(None, environ={}, overrides={
        "articles.dir": str(articles_dir), "feeds.dir": str(tmp_path / "feeds"),
        "state.url": f"sqlite:///{tmp_path / 'state.db'}",
    })
    pipeline.build(config)
    stylesheet = tmp_path / "feeds" / "feed.xsl"
    data = stylesheet.read_bytes()
    assert pipeline.build(config).feeds is None  # current: nothing rendered, nothing removed
    assert stylesheet.read_bytes() == data
    stylesheet.unlink()
    assert pipeline.build(config).feeds is not None and stylesheet.read_bytes() == data


# --- WebSub ------------------------------------------------------------------------------------


class Hub:
    """A WebSub hub stand-in: records publish requests; answers with ``status`` or raises."""

    def __init__(self) -> None:
        self.requests: list[dict[str, list[str]]] = []
        self.status = 204
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.method == "POST" and str(request.url) == HUB_URL
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        self.requests.append(parse_qs(request.content.decode()))
        return httpx.Response(self.status)

    def announced(self) -> list[str]:
        assert all(r["hub.mode"] == ["publish"] for r in self.requests)
        urls = [url for r in self.requests for url in r["hub.url"]]
        self.requests.clear()
        return urls


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def announcer(hub: Hub) -> Announcer:
    return Announcer(transport=httpx.MockTransport(hub.handle))


def feed_urls(*slugs: str) -> list[str]:
    return sorted(f"{BASE_URL}{slug}.{suffix}" for slug in slugs
                  for suffix in ("rss.xml", "atom.xml", "json"))


def test_changed_feeds_are_announced(config: FeedsConfig, hub: Hub, announcer: Announcer) -> None:
    result = build_feeds(ARTICLES, config)
    accepted = announce_changed(result, config, announcer)
    assert accepted == feed_urls("all", "computer-vision", "robotics")
    assert hub.announced() == accepted  # feeds only: not the OPML, not the landing page
    assert announce_changed(build_feeds(ARTICLES, config), config, announcer) == []
    assert hub.announced() == []
    result = build_feeds([*ARTICLES, make_article(9, topics=("Robotics",))], config)
    assert announce_changed(result, config, announcer) == feed_urls("all", "robotics")


def test_failures_are_logged_kept_and_retried_at_the_next_build(
    config: FeedsConfig, hub: Hub, announcer: Announcer, caplog: pytest.LogCaptureFixture
) -> None:
    hub.down = True
    with caplog.at_level(logging.WARNING, logger="publisher.websub"):
        assert announce_changed(build_feeds(ARTICLES, config), config, announcer) == []
    assert [r.getMessage() for r in caplog.records] == ["websub_failed", "websub_pending"]
    assert announcer.pending(HUB_URL) == feed_urls("all", "computer-vision", "robotics")
    hub.down, hub.status = False, 503
    assert announce_changed(build_feeds(ARTICLES, config), config, announcer) == []
    assert len(hub.announced()) == 9  # every one tried, every one refused
    hub.status = 202
    unchanged = build_feeds(ARTICLES, config)
    assert unchanged.written == 0
    assert announce_changed(unchanged, config, announcer) == feed_urls(
        "all", "computer-vision", "robotics"
    )
    assert announcer.pending(HUB_URL) == []


def test_a_skipped_build_only_retries_what_is_pending(
    config: FeedsConfig, hub: Hub, announcer: Announcer
) -> None:
    assert announce_changed(None, config, announcer) == []
    assert hub.requests == []
    hub.status = 500
    announce_changed(build_feeds([make_article()], config), config, announcer)
    hub.announced()
    hub.status = 204
    assert announce_changed(None, config, announcer) == feed_urls("all", "computer-vision")


def test_an_unreachable_hub_costs_one_attempt_per_build(config: FeedsConfig) -> None:
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectTimeout("timed out", request=request)

    slow = Announcer(transport=httpx.MockTransport(refuse))
    assert announce_changed(build_feeds(ARTICLES, config), config, slow) == []
    assert len(attempts) == 1
    assert len(slow.pending(HUB_URL)) == 9


def test_no_hub_no_announcement(tmp_path: Path, hub: Hub, announcer: Announcer) -> None:
    config = make_config(tmp_path, websub_hub="")
    assert announce_changed(build_feeds(ARTICLES, config), config, announcer) == []
    assert hub.requests == []


def test_a_real_post_reaches_a_hub_over_http(config: FeedsConfig) -> None:
    """Against a local HTTP hub, with the module's default announcer."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    bodies: list[bytes] = []

    class HubHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), HubHandler) as httpd:
        thread = Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            hub_url = f"http://127.0.0.1:{httpd.server_address[1]}/"
            local = make_config(config.dir.parent, websub_hub=hub_url)
            result = build_feeds([make_article()], local)
            assert announce_changed(result, local) == feed_urls("all", "computer-vision")
        finally:
            httpd.shutdown()
            thread.join()
    assert sorted(parse_qs(body.decode())["hub.url"][0] for body in bodies) == feed_urls(
        "all", "computer-vision"
    )
    assert parse_qs(bodies[0].decode())["hub.mode"] == ["publish"]


def test_announce_changed_ignores_pages(config: FeedsConfig, announcer: Announcer) -> None:
    result = build_feeds(ARTICLES, config)
    pages_only = BuildResult(tuple(f for f in result.files if not f.is_feed), (), 0)
    assert announce_changed(pages_only, config, announcer) == []
