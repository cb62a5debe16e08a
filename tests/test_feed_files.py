"""What the feeds' writer left on disk, remembered in the ``feed_files`` table.

Real article files, real SQLite and PostgreSQL states, real builds: a build remembers one row
per file it wrote or kept; a file deleted or altered on disk is written again at the next
build; a schema 7 state (a JSON object in a meta row) upgrades in place.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ArticleWriter

from publisher.catalog import Catalog, FeedFileRecord, FeedSelection
from publisher.config import Config, FeedsConfig, load_config
from publisher.feeds import feeds_key
from publisher.feeds.plan import channel_settings, plan_articles, plan_selection
from publisher.models import Article
from publisher.names import PAGE_NAMES
from publisher.pipeline import BuildReport, build
from publisher.state import SCHEMA_VERSION, NewDelivery, open_store

ConfigMaker = Callable[[], Config]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_config(request: pytest.FixtureRequest, tmp_path: Path,
                config_file: Callable[..., Path]) -> ConfigMaker:
    """The config of a site with ``articles/`` and ``feeds/``, its state in either engine."""
    url = (str(request.getfixturevalue("postgres_url")) if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'state.db'}")
    path = config_file(f'[state]\nurl = "{url}"\n')
    return lambda: load_config(path, environ={})


def remembered(config: Config) -> dict[str, FeedFileRecord]:
    store = open_store(config.state.url)
    try:
        return Catalog(store.db).feed_files(feeds_key(config))
    finally:
        store.close()


def written(report: BuildReport) -> list[str]:
    assert report.feeds is not None
    return sorted(f.path.name for f in report.feeds.files if f.changed)


def test_every_file_written_is_remembered_with_its_size_and_digest(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    write_article("b.txt", 2, topics=["AI", "Space"])
    config = make_config()
    build(config)
    rows = remembered(config)
    on_disk = {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()}
    assert sorted(rows) == sorted(on_disk)  # one row per file, nothing else
    for name, data in on_disk.items():
        assert rows[name].size == len(data)
        assert rows[name].digest == hashlib.blake2b(data, digest_size=16).hexdigest()
    assert {name: rows[name].entries for name in ("all.rss.xml", "ai.json", "space.atom.xml")
            } == {"all.rss.xml": 2, "ai.json": 2, "space.atom.xml": 1}
    assert all(rows[name].entries is None and rows[name].members for name in PAGE_NAMES)
    assert len({rows[name].settings for name in rows}) == 1
    assert build(config).feeds is None  # remembered: nothing to render


def test_a_topic_that_goes_is_forgotten_with_its_files(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    space = write_article("b.txt", 2, topics=["Space"])
    config = make_config()
    build(config)
    space.unlink()
    build(config)
    assert not any(name.startswith("space.") for name in remembered(config))
    assert not (config.feeds.dir / "space.rss.xml").exists()


@pytest.mark.parametrize("lost", [
    ["space.rss.xml"],
    ["space.rss.xml", "space.atom.xml", "space.json"],  # a whole feed
    ["index.html"],
])
def test_a_file_deleted_on_disk_is_written_again(
    make_config: ConfigMaker, write_article: ArticleWriter, lost: list[str]
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    write_article("b.txt", 2, topics=["Space"])
    config = make_config()
    build(config)
    before = {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()}
    for name in lost:
        (config.feeds.dir / name).unlink()
    assert written(build(config)) == sorted(lost)
    assert {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()} == before
    assert build(config).feeds is None


def test_a_file_changed_on_disk_is_written_again(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    config = make_config()
    build(config)
    feed = config.feeds.dir / "ai.atom.xml"
    expected = feed.read_bytes()
    feed.write_bytes(expected[: len(expected) // 2])  # a copy cut short, say
    assert written(build(config)) == ["ai.atom.xml"]
    assert feed.read_bytes() == expected


def test_each_place_has_rows_of_its_own(
    make_config: ConfigMaker, write_article: ArticleWriter, tmp_path: Path
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    config = make_config()
    build(config)
    other = load_config(None, environ={}, overrides={
        "articles.dir": str(config.articles.dir), "feeds.dir": str(tmp_path / "elsewhere"),
        "state.url": config.state.url,
    })
    assert build(other).feeds is not None  # another folder: written, not taken as current
    assert sorted(remembered(other)) == sorted(remembered(config))
    assert build(config).feeds is None and build(other).feeds is None


def _as_schema_7(config: Config) -> None:
    """The state as publisher 7 left it: no feed_files, a JSON object in a meta row."""
    store = open_store(config.state.url)
    try:
        db = store.db
        db.execute("DROP TABLE feed_files")
        db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        old = json.dumps({"entries": "x", "settings": "y", "feeds": {"ai": "z"},
                          "counts": {"ai": 1}})
        key = f"feeds_digest:{socket.gethostname()}:{config.feeds.dir.resolve()}"
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, old))
    finally:
        store.close()


def test_a_schema_7_state_upgrades_in_place(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1, topics=["AI"])
    write_article("b.txt", 2, topics=["Space"])
    config = make_config()
    build(config)
    store = open_store(config.state.url)
    try:
        store.add_deliveries([NewDelivery("a1", "-100", "Posted", "https://e.com/1",
                                          "2025-01-01T00:00:00+00:00")])
    finally:
        store.close()
    files = {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()}
    _as_schema_7(config)

    store = open_store(config.state.url)  # the upgrade, as every command starts
    try:
        version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION) == "15"
        left = store.db.execute("SELECT count(*) FROM meta WHERE key LIKE 'feeds_digest:%'")
        assert left.fetchone()[0] == 0
        assert Catalog(store.db).feed_files(feeds_key(config)) == {}
        assert store.counts() == {"-100": {"pending": 1}}  # the ledger is kept
    finally:
        store.close()
    again = build(config)
    assert written(again) == []  # every feed rendered once, not one byte written
    assert {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()} == files
    assert sorted(remembered(config)) == sorted(files)
    assert build(config).feeds is None


def _article(index: int, topics: tuple[str, ...]) -> Article:
    return Article(id=f"id-{index}", title=f"Title {index}", url=f"https://e.com/{index}",
                   published_at=datetime(2025, 1, index, tzinfo=UTC), topics=topics,
                   published=True, source_path=f"/a/{index}.txt")


def test_the_plan_shows_the_members_the_catalog_chose() -> None:
    """A feed's members are the catalog's SQL selection, as it gives them: the plan never
    groups the articles again (here the catalog holds one article back from "ai", as a
    ``max_items`` limit would, and names the topic by its newest member)."""
    articles = {a.source_path: a for a in (_article(1, ("AI",)), _article(2, ("Ai", "Space")),
                                           _article(3, ("Space",)))}
    selection = FeedSelection(
        newest=[("/a/3.txt", "r3"), ("/a/2.txt", "r2"), ("/a/1.txt", "r1")],
        topics={"space": [("/a/3.txt", "r3"), ("/a/2.txt", "r2")], "ai": [("/a/2.txt", "r2")]},
        paths=["/a/3.txt", "/a/2.txt", "/a/1.txt"], digest="d", records={},
    )
    channel = channel_settings(FeedsConfig(title="News"))
    plan = plan_selection(selection, articles, channel)
    assert [(feed.slug, feed.name, [a.id for a in feed.articles]) for feed in plan] == [
        ("all", "All articles", ["id-3", "id-2", "id-1"]),
        ("ai", "Ai", ["id-2"]),  # not id-1, which the catalog left out
        ("space", "Space", ["id-3", "id-2"]),
    ]
    whole = plan_articles(list(articles.values())[::-1], channel)
    assert [a.id for a in whole[1].articles] == ["id-2", "id-1"]  # what regrouping would show


def test_an_edited_article_is_updated_in_its_feeds_with_the_same_id(
    make_config: ConfigMaker, write_article: ArticleWriter
) -> None:
    import re

    write_article("a.txt", 1, topics=["AI"])
    write_article("b.txt", 2, topics=["AI"])
    config = make_config()
    build(config)
    folder = config.feeds.dir
    atom = (folder / "all.atom.xml").read_text(encoding="utf-8")
    items = {item["title"]: item for item in
             json.loads((folder / "all.json").read_text(encoding="utf-8"))["items"]}
    first = items["Article number 1"]
    assert first["date_modified"] == first["date_published"]  # never changed: as before
    before = datetime.now(UTC).replace(microsecond=0)
    write_article("a.txt", 1, topics=["AI"], title="Article number 1, corrected")
    build(config)
    items = {item["title"]: item for item in
             json.loads((folder / "all.json").read_text(encoding="utf-8"))["items"]}
    fixed, other = items["Article number 1, corrected"], items["Article number 2"]
    assert fixed["id"] == first["id"]
    assert fixed["date_published"] == first["date_published"]
    assert datetime.fromisoformat(fixed["date_modified"]) >= before
    assert other["date_modified"] == other["date_published"]
    updated = (folder / "all.atom.xml").read_text(encoding="utf-8")
    [entry] = [text for text in re.findall(r"<entry>.*?</entry>", updated, re.S)
               if "corrected" in text]
    stamp = re.search(r"<updated>(.*?)</updated>", entry)
    assert stamp is not None and datetime.fromisoformat(stamp.group(1)) >= before
    assert atom != updated
    # A build that finds nothing new keeps the moment: the files stay as they are.
    write_article("b.txt", 2, topics=["AI"], quality=99)  # selected the same, renders the same
    build(config)
    assert (folder / "all.atom.xml").read_text(encoding="utf-8") == updated
