"""A real feed reader against the served feeds: newsboat (and feedparser over HTTP).

newsboat runs non-interactively (``-x reload``) with its own HOME, URL list, config and cache
in the test's folder; its cache is an SQLite database we read back. Without newsboat this
module skips, except in CI (the environment variable CI is set), where it fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from test_feeds import make_article

from publisher.config import FeedsConfig
from publisher.feeds import STYLESHEET_INSTRUCTION, build_feeds
from publisher.models import Article, Provider
from publisher.server import RunningServer, start_server

NEWSBOAT_TIMEOUT = 30


@pytest.fixture
def newsboat() -> str:
    path = shutil.which("newsboat")
    if path is None:
        reason = "newsboat is not installed (apt-get install newsboat)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return path


class RequestLog(logging.Handler):
    """(path, status) of every ``http_request`` event the server logs (at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "publisher_fields", None) or {}
        if record.getMessage() == "http_request":
            self.seen.append((fields["path"], fields["status"]))


@pytest.fixture
def statuses() -> Iterator[list[tuple[str, int]]]:
    """(path, status) of every request the server answered, in order."""
    logger = logging.getLogger("publisher.server")
    handler, level = RequestLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server("127.0.0.1:0", feeds_dir=tmp_path / "feeds")
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def config(tmp_path: Path, server: RunningServer) -> FeedsConfig:
    return FeedsConfig(dir=tmp_path / "feeds", base_url=server.url + "/", title="Publisher",
                       site_url="https://example.org/")


def article(n: int, title: str, provider: str, topic: str, hour: int) -> Article:
    return make_article(n, title=title, provider=Provider(provider, "news.example.com"),
                        topics=(topic,), published_at=datetime(2024, 5, 1, hour, 7, tzinfo=UTC))


ARTICLES = [
    article(1, "Roboter übernehmen das Lager", "Heise Online", "Robotik", 9),
    article(2, "Robots & <humans> work side by side", "The Verge", "Robotik", 8),
    article(3, "EU agrees on AI rules", "Reuters", "AI", 7),
    article(4, "Chips: \"what's next\"?", "Ars Technica", "AI", 6),
]


def expected_rows(articles: list[Article], feed_url: str) -> set[tuple[object, ...]]:
    return {
        (a.id, a.title, a.provider.name, a.url, feed_url, int(a.published_at.timestamp()))
        for a in articles
    }


Reader = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def reader(tmp_path: Path, newsboat: str) -> Reader:
    """Run newsboat with everything inside ``tmp_path/reader``."""
    home = tmp_path / "reader"
    home.mkdir()
    (home / "config").write_text("")

    def run(*args: str, urls: str = "urls") -> subprocess.CompletedProcess[str]:
        command = [newsboat, "-u", str(home / urls), "-c", str(home / "cache.db"),
                   "-C", str(home / "config"), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=NEWSBOAT_TIMEOUT, cwd=home,
            env={"HOME": str(home), "PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8",
                 "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".data")},
        )
        assert result.returncode == 0, result.stderr
        return result

    return run


def backdate(folder: Path, seconds: int) -> None:
    for path in folder.iterdir():
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 10**9))


def cache_rows(tmp_path: Path) -> set[tuple[object, ...]]:
    db = sqlite3.connect(tmp_path / "reader" / "cache.db")
    try:
        return set(db.execute(
            "SELECT guid, title, author, url, feedurl, pubDate FROM rss_item WHERE deleted = 0"
        ))
    finally:
        db.close()


def cache_feeds(tmp_path: Path) -> dict[str, str]:
    db = sqlite3.connect(tmp_path / "reader" / "cache.db")
    try:
        return dict(db.execute("SELECT rssurl, title FROM rss_feed"))
    finally:
        db.close()


def test_newsboat_reads_rss_and_atom_and_gets_304_later(
    tmp_path: Path, server: RunningServer, config: FeedsConfig, reader: Reader,
    statuses: list[tuple[str, int]],
) -> None:
    build_feeds(ARTICLES, config)
    for name in ("robotik.atom.xml", "ai.rss.xml"):  # styled for browsers; newsboat reads on
        assert (config.dir / name).read_bytes().split(b"\n")[1] == STYLESHEET_INSTRUCTION.strip()
    # As if built ten minutes ago: the rebuild below must have a later Last-Modified, because
    # libcurl (newsboat's HTTP client) discards a 200 whose Last-Modified is not newer, in
    # whole seconds, than the If-Modified-Since it sent.
    backdate(config.dir, seconds=600)
    robotik, ai = server.url + "/robotik.atom.xml", server.url + "/ai.rss.xml"
    (tmp_path / "reader" / "urls").write_text(f"{robotik}\n{ai}\n")

    reader("-x", "reload")
    assert cache_rows(tmp_path) == (
        expected_rows(ARTICLES[:2], robotik) | expected_rows(ARTICLES[2:], ai)
    )
    assert cache_feeds(tmp_path) == {robotik: "Publisher: Robotik", ai: "Publisher: AI"}
    # newsboat stores the validators it got on its second fetch and sends them from the third.
    reader("-x", "reload")
    del statuses[:]
    reader("-x", "reload")
    assert sorted(statuses) == [("/ai.rss.xml", 304), ("/robotik.atom.xml", 304)]

    newer = article(5, "New robot arm", "Wired", "Robotik", 10)
    build_feeds([newer, *ARTICLES], config)
    del statuses[:]
    reader("-x", "reload")
    assert sorted(statuses) == [("/ai.rss.xml", 304), ("/robotik.atom.xml", 200)]
    assert cache_rows(tmp_path) == (
        expected_rows([newer, *ARTICLES[:2]], robotik) | expected_rows(ARTICLES[2:], ai)
    )


def test_newsboat_imports_the_opml_and_reads_every_feed(
    tmp_path: Path, server: RunningServer, config: FeedsConfig, reader: Reader,
) -> None:
    build_feeds(ARTICLES, config)
    result = reader("-i", str(config.dir / "feeds.opml"))
    assert "Import of" in result.stdout
    urls = [server.url + f"/{slug}.rss.xml" for slug in ("all", "ai", "robotik")]
    assert (tmp_path / "reader" / "urls").read_text().split() == urls
    reader("-x", "reload")
    assert cache_feeds(tmp_path) == dict(
        zip(urls, ["Publisher", "Publisher: AI", "Publisher: Robotik"], strict=True)
    )
    # An article in several feeds is one item to newsboat (same guid).
    assert {row[:4] for row in cache_rows(tmp_path)} == {
        row[:4] for row in expected_rows(ARTICLES, "")
    }


def test_feedparser_over_http_with_validators(
    server: RunningServer, config: FeedsConfig, statuses: list[tuple[str, int]]
) -> None:
    build_feeds(ARTICLES, config)
    for name, articles in (("robotik.atom.xml", ARTICLES[:2]), ("ai.rss.xml", ARTICLES[2:]),
                           ("all.rss.xml", ARTICLES)):
        url = f"{server.url}/{name}"
        first = feedparser.parse(url)
        assert not first.bozo, first.get("bozo_exception")
        assert first.status == 200
        assert first.headers["content-encoding"] == "gzip"  # feedparser accepts gzip
        assert [(e.id, e.title, e.link, e.author) for e in first.entries] == [
            (a.id, a.title, a.url, a.provider.name) for a in articles
        ]
        assert [e.published_parsed[:6] for e in first.entries] == [
            a.published_at.timetuple()[:6] for a in articles
        ]
        assert feedparser.parse(url, etag=first.etag).status == 304
        assert feedparser.parse(url, modified=first.modified).status == 304
    assert [status for _, status in statuses] == [200, 304, 304] * 3
