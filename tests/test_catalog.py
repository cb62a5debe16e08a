"""The catalog answers selection exactly as the pure functions do, and never serves stale data."""

from __future__ import annotations

import marshal
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import SEEDS, article_record, front_matter

from publisher import catalog as catalog_module
from publisher import codec
from publisher import scan as scan_module
from publisher.catalog import Catalog, create_schema
from publisher.config import FeedsConfig
from publisher.db import Database, PostgresDatabase, SQLiteDatabase
from publisher.errors import ArticleError
from publisher.feeds import render_feeds
from publisher.loader import load_articles
from publisher.selection import group_by_topic, select
from publisher.state import PlannedMarks, ledger_schema

TOPICS = ["AI", "Robotics", "Tech/Science", "Tech Science", "Künstliche Intelligenz", "Space",
          "Climate", "../../x"]


def random_corpus(directory: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    for index in range(count):
        url = f"https://news.example.com/{rng.randrange(count * 3 // 4)}"  # some duplicates
        record = article_record(
            index,
            webUrl=url if rng.random() < 0.9 else url.upper().replace("HTTPS://", "https://"),
            published=rng.random() < 0.8,
            quality=rng.randrange(0, 250),
            publishedDateTime=f"2025-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
                              f"T{rng.randrange(24):02d}:00:00Z",
            topics=rng.sample(TOPICS, rng.randrange(0, 4)),
        )
        text = front_matter(record) if rng.random() > 0.05 else "---\nbroken: [\n---\n"
        (directory / f"{index:04d}.txt").write_text(text, encoding="utf-8")


CatalogOpener = Callable[[Path], Catalog]
RACY_NS = scan_module.RACY_NS


@pytest.fixture(autouse=True)
def _files_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write files and sync within milliseconds, so every file would be racy
    and read again by the next sync (``scan.RACY_NS``; its own test below): here a
    file is read once per change, as it is when it was written a few seconds earlier."""
    monkeypatch.setattr(scan_module, "RACY_NS", 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_catalog(request: pytest.FixtureRequest) -> Iterator[CatalogOpener]:
    """Open a new, empty catalog (a SQLite file in the folder, or a fresh PostgreSQL schema)."""
    opened: list[Database] = []

    def open_one(folder: Path) -> Catalog:
        if request.param == "postgresql":
            db: Database = PostgresDatabase(request.getfixturevalue("postgres_schema_factory")())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            db = SQLiteDatabase(folder / "state.db")
        opened.append(db)
        create_schema(db)
        return Catalog(db)

    yield open_one
    for db in opened:
        db.close()


@pytest.mark.parametrize(("seed", "min_quality", "limit"), [(1, 0, 5), (2, 100, 3), (3, 50, 50)])
def test_sql_selection_equals_the_pure_functions(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path, seed: int,
    min_quality: int, limit: int,
) -> None:
    random_corpus(articles_dir, 150, seed)
    catalog = open_catalog(tmp_path)
    report = catalog.sync(articles_dir, 1 << 20, min_quality)
    loaded = load_articles(articles_dir)
    assert [str(p) for p in report.problems] == [str(p) for p in loaded.problems]
    expected = select(loaded.articles, min_quality)
    assert list(catalog.selected_articles()) == expected
    assert catalog.selected_count() == len(expected)
    assert catalog.topic_slugs() == sorted(group_by_topic(expected))
    config = FeedsConfig(dir=tmp_path / "feeds", max_items=limit)
    shown, _ = catalog.feed_articles(limit)
    assert len(shown) < len(expected) or limit >= 50
    assert render_feeds(shown, config) == render_feeds(expected, config)


@pytest.mark.parametrize("modulus", [1, 2, 61])
def test_incremental_syncs_stay_equal_to_the_pure_functions(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch, modulus: int,
) -> None:
    """Edits, deletions, moves between folders, new duplicates and threshold changes,
    re-synced round after round; chunks of the stored scan of one, two or ~60 files."""
    monkeypatch.setattr(scan_module, "CHUNK_INODE_MODULUS", modulus)
    random_corpus(articles_dir, 80, 11)
    folders = [articles_dir, articles_dir / "2030", articles_dir / "2030" / "12"]
    for folder in folders[1:]:
        folder.mkdir()
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 50)
    rng = random.Random(5)
    for round_number in range(6):
        files = sorted(path for path in articles_dir.rglob("*.txt"))
        for path in rng.sample(files, 8):
            path.unlink()
        for path in rng.sample(sorted(articles_dir.rglob("*.txt")), 5):  # moved elsewhere
            path.rename(rng.choice(folders) / f"moved-{round_number}-{path.name}")
        for index in range(6):
            number = 1000 + round_number * 10 + index
            record = article_record(
                number, webUrl=f"https://news.example.com/{rng.randrange(60)}",
                quality=rng.randrange(0, 250), published=rng.random() < 0.7,
                publishedDateTime=f"2026-01-{rng.randrange(1, 28):02d}T00:00:00Z",
                topics=rng.sample(TOPICS, rng.randrange(0, 3)),
            )
            (rng.choice(folders) / f"{number}.txt").write_text(front_matter(record))
        min_quality = 50 if round_number < 4 else 120
        catalog.sync(articles_dir, 1 << 20, min_quality)
        expected = select(load_articles(articles_dir).articles, min_quality)
        assert list(catalog.selected_articles()) == expected, f"round {round_number}"
        assert catalog.topic_slugs() == sorted(group_by_topic(expected))
        config = FeedsConfig(dir=tmp_path / "feeds", max_items=4)
        assert render_feeds(catalog.feed_articles(4)[0], config) == render_feeds(expected, config)


def test_seeds_round_trip_through_the_codec() -> None:
    for article in load_articles(SEEDS).articles:
        assert codec.decode(codec.encode(article).blob) == article


def test_sync_reparses_only_what_changed_and_never_serves_stale(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    for index in range(1, 4):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 3
    again = catalog.sync(articles_dir, 1 << 20, 0)
    assert (again.parsed, again.removed) == (0, 0)
    # Edit in place: same size, new content, mtime moves on.
    path = articles_dir / "2.txt"
    path.write_text(path.read_text().replace("Article number 2", "Article number X"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    assert "Article number X" in {a.title for a in catalog.selected_articles()}
    (articles_dir / "3.txt").unlink()
    (articles_dir / "1.txt").write_text("not an article")
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (1, 1)
    assert [p.path.name for p in report.problems] == ["1.txt"]
    assert [a.title for a in catalog.selected_articles()] == ["Article number X"]


def test_a_file_rewritten_within_one_tick_of_the_file_clock_is_read_again(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scan_module, "RACY_NS", RACY_NS)
    article = articles_dir / "a.txt"
    (articles_dir / "b.txt").write_text(front_matter(article_record(2)))
    article.write_text(front_matter(article_record(1, title="Title one")))
    real_scan = scan_module.scan_chunks
    first_seen: dict[str, tuple[object, ...]] = {}

    def coarse_clock_scan(directory: Path) -> scan_module.Listing:
        """A file system whose clock stamps both writes of a.txt alike: same key."""
        listing = real_scan(directory)
        listing.chunks = [[first_seen.setdefault(entry[0], entry) for entry in chunk]
                          for chunk in listing.chunks]
        return listing

    monkeypatch.setattr(scan_module, "scan_chunks", coarse_clock_scan)
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 2

    def titles() -> set[str]:
        return {a.title for a in catalog.selected_articles()}

    for title in ("Title two", "Title six"):  # same size: only the content differs
        article.write_text(front_matter(article_record(1, title=title)))
        assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 2  # both are still racy
        assert title in titles()
    # An interrupted sync leaves no stored scan: the comparison with the rows re-reads too.
    catalog.db.execute("DELETE FROM meta WHERE key = ?", (scan_module.SCAN_ROOT_KEY,))
    article.write_text(front_matter(article_record(1, title="Title ten")))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 2
    assert "Title ten" in titles()
    later = time.time_ns() + RACY_NS
    monkeypatch.setattr(scan_module.time, "time_ns", lambda: later)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 2  # once more, with their keys
    for _ in range(2):  # no longer racy: settled
        assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 0
    assert titles() == {"Title ten", "Article number 2"}


def test_a_file_read_again_unchanged_stays_planned_and_a_changed_one_does_not(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    for index in (1, 2):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    for statement in ledger_schema(catalog.db.dialect):  # the marks are the ledger's
        catalog.db.execute(statement)
    marks = PlannedMarks(catalog.db)
    catalog.sync(articles_dir, 1 << 20, 0)
    assert [a.title for a in marks.unplanned_articles()] == ["Article number 1",
                                                             "Article number 2"]
    marks.mark_planned(marks.unplanned_articles())
    assert marks.unplanned_articles() == []
    touched = articles_dir / "1.txt"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    assert marks.unplanned_articles() == []  # the same record: nothing to plan again
    edited = articles_dir / "2.txt"
    edited.write_text(front_matter(article_record(2, title="Article number 2, corrected")))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    assert [a.title for a in marks.unplanned_articles()] == ["Article number 2, corrected"]


def test_parallel_parse_gives_the_same_catalog(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    random_corpus(articles_dir, 60, 7)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    serial = open_catalog(tmp_path / "a")
    serial.sync(articles_dir, 1 << 20, 0, workers=1)
    monkeypatch.setattr(catalog_module, "PARALLEL_MIN_FILES", 10)
    monkeypatch.setattr(catalog_module, "BATCH_FILES", 7)
    parallel = open_catalog(tmp_path / "b")
    report = parallel.sync(articles_dir, 1 << 20, 0, workers=2)
    assert report.parsed == 60
    assert list(parallel.selected_articles()) == list(serial.selected_articles())
    assert parallel.feed_articles(5) == serial.feed_articles(5)


def test_a_sync_between_selecting_and_rendering_feeds_leaves_no_feed_stale(
    tmp_path: Path, articles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from publisher import pipeline
    from publisher.config import load_config
    from publisher.state import open_store

    article = articles_dir / "a.txt"
    mtime = 1_900_000_000_000_000_000

    def write_title(title: str) -> None:  # same size every time: only mtime tells
        nonlocal mtime
        article.write_text(front_matter(article_record(1, title=title)))
        mtime += 1_000_000_000
        os.utime(article, ns=(mtime, mtime))

    (articles_dir / "b.txt").write_text(front_matter(article_record(2, topics=["Space"])))
    write_title("Title one")
    config_path = tmp_path / "config.toml"
    config_path.write_text('[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n')
    config = load_config(config_path, environ={})
    pipeline.build(config)
    write_title("Title two")
    real_selection = Catalog.feed_selection

    def another_process_syncs_after_the_selection(self: Catalog, limit: int) -> object:
        selection = real_selection(self, limit)
        write_title("Title one")  # the file goes back, and another instance syncs it
        other = open_store(config.state.url)
        try:
            pipeline.sync_corpus(config, Catalog(other.db))
        finally:
            other.close()
        return selection

    monkeypatch.setattr(Catalog, "feed_selection", another_process_syncs_after_the_selection)
    assert pipeline.build(config).feeds is not None  # selected "two", rendered "one"
    monkeypatch.setattr(Catalog, "feed_selection", real_selection)
    write_title("Title two")  # back to the records that build selected
    pipeline.build(config)
    # "Title two" came after "Title one": an edit, which its entries' <updated> tell.
    store = open_store(config.state.url)
    try:
        modified = {row[0]: datetime.fromtimestamp(row[1] / 1e6, UTC) for row in store.db.execute(
            "SELECT article_id, changed_us FROM entry_changes WHERE changed_us > 0")}
    finally:
        store.close()
    assert len(modified) == 1
    expected = render_feeds(select(load_articles(articles_dir).articles, 0), config.feeds,
                            modified)
    written = {p.name: p.read_bytes() for p in config.feeds.dir.iterdir()}
    assert b"Title two" in written["all.rss.xml"]
    assert written == expected


def test_a_folder_that_cannot_be_read_keeps_its_articles_until_it_can(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from publisher.errors import ArticleError

    sub = articles_dir / "2026" / "11"
    sub.mkdir(parents=True)
    (articles_dir / "a.txt").write_text(front_matter(article_record(1)))
    (sub / "b.txt").write_text(front_matter(article_record(2)))
    (sub / "c.txt").write_text(front_matter(article_record(3)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    everything = list(catalog.selected_articles())
    assert len(everything) == 3
    real_open = os.open
    failing: set[str] = set()

    def open_failing(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if os.fspath(path).rstrip(os.sep) in failing:  # as root, chmod 000 would not do
            raise OSError(5, "Input/output error")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_failing)
    failing.add(str(sub))
    for _ in range(2):  # every sync says so, and keeps them
        caplog.clear()
        report = catalog.sync(articles_dir, 1 << 20, 0)
        assert report.removed == 0
        assert list(catalog.selected_articles()) == everything
        assert f"cannot read the article folder {sub} (Input/output error)" in caplog.text
        (sub / "c.txt").unlink(missing_ok=True)  # deleted while it cannot be read
    (articles_dir / "d.txt").write_text(front_matter(article_record(4)))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1  # the rest goes on
    assert len(list(catalog.selected_articles())) == 4
    failing.clear()
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (0, 1)  # readable again: c.txt is gone
    assert [a.title for a in catalog.selected_articles()] == [
        "Article number 4", "Article number 2", "Article number 1"]
    failing.add(str(articles_dir))
    with pytest.raises(ArticleError, match=r"cannot read the articles folder .*: Input/output"):
        catalog.sync(articles_dir, 1 << 20, 0)
    assert len(list(catalog.selected_articles())) == 3
    failing.clear()
    assert load_articles(articles_dir).problems == []
    failing.add(str(sub))
    assert [str(p) for p in load_articles(articles_dir).problems] == [
        f"{sub}: cannot read this folder: Input/output error"]


def test_missing_folder_is_a_clear_error(open_catalog: CatalogOpener, tmp_path: Path) -> None:
    from publisher.errors import ArticleError

    with pytest.raises(ArticleError, match="articles folder not found"):
        open_catalog(tmp_path).sync(tmp_path / "nope", 1 << 20, 0)


def test_builds_rewrite_only_changed_feeds_and_match_a_full_render(
    tmp_path: Path, articles_dir: Path
) -> None:
    from publisher import pipeline
    from publisher.config import load_config

    (articles_dir / "a.txt").write_text(front_matter(article_record(1, topics=["AI"])))
    (articles_dir / "b.txt").write_text(front_matter(article_record(2, topics=["Space"])))
    config_path = tmp_path / "config.toml"
    config_path.write_text('[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n')
    config = load_config(config_path, environ={})
    first = pipeline.build(config)
    assert first.feeds is not None and first.feeds.written == 12
    space = config.feeds.dir / "space.rss.xml"
    before = space.stat().st_mtime_ns
    assert pipeline.build(config).feeds is None  # nothing changed: nothing rendered
    (articles_dir / "c.txt").write_text(front_matter(article_record(3, topics=["AI"])))
    second = pipeline.build(config)
    assert second.feeds is not None
    written = sorted(f.path.name for f in second.feeds.files if f.changed)
    assert written == ["ai.atom.xml", "ai.json", "ai.rss.xml", "all.atom.xml", "all.json",
                       "all.rss.xml", "feeds.opml", "index.html"]
    assert space.stat().st_mtime_ns == before
    expected = render_feeds(select(load_articles(articles_dir).articles, 0), config.feeds)
    assert {p.name: p.read_bytes() for p in config.feeds.dir.iterdir()} == expected
    space.unlink()  # a feed file deleted by hand comes back at the next build
    assert pipeline.build(config).feeds is not None and space.read_bytes() == expected[space.name]


def test_interrupted_sync_leaves_nothing_stale(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(1, 4):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    (articles_dir / "4.txt").write_text(front_matter(article_record(4)))
    (articles_dir / "5.txt").write_text(front_matter(article_record(5)))
    real_upsert = Catalog._upsert
    calls: list[object] = []

    def crash_in_the_second_batch(self: Catalog, row: tuple[object, ...]) -> None:
        calls.append(row[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_upsert(self, row)

    monkeypatch.setattr(catalog_module, "BATCH_FILES", 1)  # the first batch is committed
    monkeypatch.setattr(Catalog, "_upsert", crash_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        catalog.sync(articles_dir, 1 << 20, 0)
    monkeypatch.setattr(Catalog, "_upsert", real_upsert)
    assert "Article number 4" in {a.title for a in catalog.selected_articles()}
    (articles_dir / "4.txt").unlink()
    (articles_dir / "5.txt").unlink()
    (articles_dir / "1.txt").unlink()
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (0, 2)  # picked up: nothing parsed again
    assert [a.title for a in catalog.selected_articles()] == ["Article number 3",
                                                               "Article number 2"]


def test_an_interrupted_bulk_load_is_picked_up_and_selected(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    random_corpus(articles_dir, 40, 12)
    catalog = open_catalog(tmp_path)
    stop = threading.Event()
    insert = Catalog._insert

    def insert_then_stop(self: Catalog, rows: list[tuple[object, ...]]) -> None:
        insert(self, rows)
        stop.set()  # a SIGTERM after the first committed part of the load

    monkeypatch.setattr(catalog_module, "BATCH_FILES", 10)
    monkeypatch.setattr(catalog_module, "COLD_COMMIT_FILES", 10)
    monkeypatch.setattr(Catalog, "_insert", insert_then_stop)
    with pytest.raises(catalog_module.SyncInterrupted):
        catalog.sync(articles_dir, 1 << 20, 0, stop=stop)
    monkeypatch.setattr(Catalog, "_insert", insert)
    assert catalog.db.execute("SELECT count(*) FROM catalog").fetchone()[0] == 10
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert report.parsed == 30  # the rest, not all 40
    expected = select(load_articles(articles_dir).articles, 0)
    assert list(catalog.selected_articles()) == expected
    config = FeedsConfig(dir=tmp_path / "feeds", max_items=50)
    assert render_feeds(catalog.feed_articles(50)[0], config) == render_feeds(expected, config)


def test_a_bulk_load_that_dies_in_its_last_transaction_is_selected_by_the_next_sync(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    random_corpus(articles_dir, 30, 13)
    catalog = open_catalog(tmp_path)
    real_remove = Catalog._remove

    def die_in_the_last_transaction(self: Catalog, paths: list[str], min_quality: int) -> None:
        raise KeyboardInterrupt  # a kill, a lost connection, a full disk: rolled back

    monkeypatch.setattr(Catalog, "_remove", die_in_the_last_transaction)
    with pytest.raises(KeyboardInterrupt):
        catalog.sync(articles_dir, 1 << 20, 0)
    monkeypatch.setattr(Catalog, "_remove", real_remove)
    assert catalog.db.execute("SELECT count(*) FROM catalog").fetchone()[0] == 30
    assert catalog.selected_count() == 0  # every row, none selected yet
    expected = select(load_articles(articles_dir).articles, 0)
    assert expected
    for _ in range(2):  # the next sync finishes the load; the one after finds it finished
        report = catalog.sync(articles_dir, 1 << 20, 0)
        assert report.parsed == 0
        assert list(catalog.selected_articles()) == expected
    assert catalog.get_meta(catalog_module.BULK_LOAD_KEY) is None


def test_a_renamed_file_stays_selected_throughout_the_sync(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (articles_dir / "a.txt").write_text(front_matter(article_record(1)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    (article,) = catalog.selected_articles()
    (articles_dir / "a.txt").rename(articles_dir / "b.txt")
    seen: list[object] = []
    real_remove = Catalog._remove

    def look_before_removing(self: Catalog, paths: list[str], min_quality: int) -> None:
        seen.append(self.selected_article(article.id))  # what a concurrent push sees
        real_remove(self, paths, min_quality)

    monkeypatch.setattr(Catalog, "_remove", look_before_removing)
    catalog.sync(articles_dir, 1 << 20, 0)
    assert seen and seen[0] is not None
    (after,) = catalog.selected_articles()
    assert after.id == article.id and after.source_path.endswith("b.txt")


def test_changed_size_cap_parses_again(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    (articles_dir / "a.txt").write_text(front_matter(article_record(1)))
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    report = catalog.sync(articles_dir, 100, 0)
    # Looked at again, and too large to be read, so not parsed.
    assert report.parsed == 0 and "file too large" in str(report.problems[0])
    assert catalog.selected_count() == 0
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    assert catalog.selected_count() == 1


@pytest.mark.parametrize(
    "fields",
    [{"quality": 10**300}, {"quality": "1e300"}, {"heat": 2**70},
     {"images": [{"url": "https://e.com/i.jpg", "width": float("inf"), "height": 10}]},
     {"publishedDateTime": "0001-01-01T00:00:00+01:00"}],
)
def test_extreme_values_never_stop_a_sync(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path, fields: dict[str, object]
) -> None:
    (articles_dir / "odd.txt").write_text(front_matter(article_record(1, **fields)))
    (articles_dir / "fine.txt").write_text(front_matter(article_record(2)))
    catalog = open_catalog(tmp_path)
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert report.parsed == 2
    assert "Article number 2" in {a.title for a in catalog.selected_articles()}


def test_an_older_catalog_layout_is_rebuilt(tmp_path: Path, articles_dir: Path) -> None:
    from publisher.state import open_store

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE catalog (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '2'), ('catalog_scan', 'x')")
    db.commit()
    db.close()
    (articles_dir / "a.txt").write_text(front_matter(article_record(1)))
    store = open_store(f"sqlite:///{path}")
    catalog = Catalog(store.db)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    assert catalog.selected_count() == 1
    store.close()


def test_a_version_4_state_keeps_its_parsed_rows(tmp_path: Path, articles_dir: Path) -> None:
    """The stored scan changed layout in version 5: the upgrade drops the old one and the
    next sync compares the files with the rows, parsing nothing again."""
    from publisher.state import SCHEMA_VERSION, open_store

    random_corpus(articles_dir, 40, 6)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(url)
    assert Catalog(store.db).sync(articles_dir, 1 << 20, 0).parsed == 40
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        DROP TABLE catalog_scan;
        CREATE TABLE catalog_snapshot (id BIGINT PRIMARY KEY, data BLOB NOT NULL);
        INSERT INTO catalog_snapshot VALUES (1, x'00');
        DELETE FROM meta WHERE key = 'catalog_scan_root';
        UPDATE meta SET value = 'a hash of the old snapshot'
            WHERE key = 'catalog_scan_fingerprint';
        UPDATE meta SET value = '4' WHERE key = 'schema_version';
    """)
    db.close()
    store = open_store(url)
    tables = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
    assert "catalog_snapshot" not in tables and "catalog_scan" in tables
    catalog = Catalog(store.db)
    assert catalog.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert catalog.get_meta("catalog_scan_fingerprint") is None
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed, report.files) == (0, 0, 40)
    (articles_dir / "new.txt").write_text(front_matter(article_record(900)))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    store.close()


def test_a_small_change_rewrites_only_its_own_chunks_of_the_stored_scan(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Files just written are "racy" (saved with a key no stat gives) for 2 s, so a chunk
    # saved while they were would differ from the same chunk saved later: not this test's
    # subject, and a slow machine would cross that line between the syncs.
    monkeypatch.setattr("publisher.scan.RACY_NS", 0)
    random_corpus(articles_dir, 600, 4)
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)

    def stored() -> dict[bytes, list[str]]:
        rows = catalog.db.execute("SELECT digest, data FROM catalog_scan")
        return {bytes(digest): [e[0] for e in marshal.loads(data)] for digest, data in rows}

    chunks = stored()
    assert len(chunks) > 4  # ~60 files a chunk
    assert sorted(name for names in chunks.values() for name in names) == sorted(
        path.name for path in articles_dir.iterdir()
    )

    # Chunk sizes are geometric (a boundary after ~1 inode in 61), so the chunk that a
    # change lands in can hold a few hundred files: count the chunks, not their files.
    def changed_since(before: dict[bytes, list[str]]) -> tuple[set[str], set[str], int, int]:
        """The names in chunks that were added and in chunks that went, and how many
        chunks were added and went."""
        after = stored()
        new, old = after.keys() - before.keys(), before.keys() - after.keys()
        added = {name for digest in new for name in after[digest]}
        gone = {name for digest in old for name in before[digest]}
        return added, gone, len(new), len(old)

    (articles_dir / "new.txt").write_text(front_matter(article_record(900)))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 1
    added, gone, new, old = changed_since(chunks)
    assert "new.txt" in added and old == 1 and new <= 2  # two if its inode ends a chunk
    assert len(added) == len(gone) + 1
    chunks = stored()
    victim = next(Path(a.source_path).name for a in catalog.selected_articles()
                  if Path(a.source_path).name != "new.txt")
    text = (articles_dir / victim).read_text()  # edited in place below: same size
    (articles_dir / victim).write_text(text.replace("Article number", "Article NUMBER"))
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert report.parsed == 1 and report.removed == 0
    assert any("NUMBER" in a.title for a in catalog.selected_articles())
    added, gone, new, old = changed_since(chunks)
    assert victim in added and victim in gone and added == gone and new == old == 1
    chunks = stored()
    (articles_dir / "new.txt").unlink()
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert report.parsed == 0 and report.removed == 1
    assert "Article number 900" not in {a.title for a in catalog.selected_articles()}
    added, gone, new, old = changed_since(chunks)
    assert "new.txt" in gone and "new.txt" not in added and new == 1 and old <= 2
    assert len(added) == len(gone) - 1
    chunks = stored()
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 0
    assert stored() == chunks


def test_a_scan_of_another_folder_is_compared_with_the_rows(
    open_catalog: CatalogOpener, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    random_corpus(first, 30, 5)
    random_corpus(second, 30, 5)  # the same names and contents, other files
    catalog = open_catalog(tmp_path)
    assert catalog.sync(first, 1 << 20, 0).parsed == 30
    report = catalog.sync(second, 1 << 20, 0)
    assert report.parsed == 30 and report.removed == 30
    paths = {row[0] for row in catalog.db.execute("SELECT path FROM catalog")}
    assert paths == {str(path) for path in second.iterdir()}


def test_an_unreadable_stored_scan_falls_back_to_the_rows(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    random_corpus(articles_dir, 200, 7)
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    with catalog.db.transaction():
        catalog.db.execute("UPDATE catalog_scan SET data = ?", (b"\x00garbage",))
    (articles_dir / "0003.txt").unlink()
    (articles_dir / "new.txt").write_text(front_matter(article_record(900)))
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (1, 1)
    stored = [marshal.loads(row[0]) for row in catalog.db.execute("SELECT data FROM catalog_scan")]
    assert sorted(entry[0] for chunk in stored for entry in chunk) == sorted(
        path.name for path in articles_dir.iterdir()
    )  # stored again, readable


def test_folders_are_scanned_and_links_to_folders_are_not_followed(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    (articles_dir / "2024" / "05").mkdir(parents=True)
    (articles_dir / "2024" / "05" / "a.txt").write_text(front_matter(article_record(1)))
    (articles_dir / "named.txt").mkdir()  # a folder with an article's name: a folder
    (articles_dir / "named.txt" / "b.md").write_text(front_matter(article_record(2)))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.txt").write_text(front_matter(article_record(3)))
    (articles_dir / "linked").symlink_to(outside)  # not followed
    (articles_dir / "linked.txt").symlink_to(outside)  # not followed either
    (articles_dir / "file-link.txt").symlink_to(outside / "c.txt")  # a file: read
    (articles_dir / ".hidden.txt").write_text(front_matter(article_record(4)))
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 3
    paths = sorted(row[0] for row in catalog.db.execute("SELECT path FROM catalog"))
    assert paths == sorted(
        str(articles_dir / name) for name in ("2024/05/a.txt", "named.txt/b.md", "file-link.txt")
    )
    (articles_dir / "2024" / "05" / "d.txt").write_text(front_matter(article_record(5)))
    (articles_dir / "named.txt" / "b.md").unlink()
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (1, 1)
    assert {a.title for a in catalog.selected_articles()} == {
        "Article number 1", "Article number 3", "Article number 5"
    }


def test_a_name_listed_twice_while_the_folder_changed_is_not_lost(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing made while files are replaced may hold a name twice (POSIX allows it): the
    stored scan then has it in two chunks, and one of them changing must not drop it."""
    monkeypatch.setattr(scan_module, "CHUNK_INODE_MODULUS", 1)  # a chunk per file
    random_corpus(articles_dir, 20, 8)
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    rows = {bytes(digest): marshal.loads(data)
            for digest, data in catalog.db.execute("SELECT digest, data FROM catalog_scan")}
    (_, (twice,)), (other_digest, (other,)) = list(rows.items())[:2]
    with catalog.db.transaction():  # what a listing with ``twice`` in it twice stored
        catalog.db.execute("UPDATE catalog_scan SET data = ? WHERE digest = ?",
                           (marshal.dumps([other, twice]), other_digest))
    (articles_dir / other[0]).write_text(front_matter(article_record(500)))  # its chunk changes
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.removed) == (1, 0)
    paths = {row[0] for row in catalog.db.execute("SELECT path FROM catalog")}
    assert str(articles_dir / twice[0]) in paths and len(paths) == 20


def test_names_that_are_not_utf8_are_skipped_with_a_warning(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (articles_dir / "good.txt").write_text(front_matter(article_record(1)))
    folder = os.fsencode(articles_dir) + b"/M\xe4rz"
    os.mkdir(folder)
    with open(folder + b"/inside.txt", "w") as handle:  # an ASCII name, in a latin-1 folder
        handle.write(front_matter(article_record(2)))
    with open(os.fsencode(articles_dir) + b"/b\xe4d.txt", "w") as handle:
        handle.write(front_matter(article_record(3)))
    catalog = open_catalog(tmp_path)
    report = catalog.sync(articles_dir, 1 << 20, 0)
    assert (report.parsed, report.files, report.problems) == (1, 1, [])
    assert [a.title for a in catalog.selected_articles()] == ["Article number 1"]
    assert [a.title for a in load_articles(articles_dir).articles] == ["Article number 1"]
    warned = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert any("M\\xe4rz" in line for line in warned), warned
    assert any("b\\xe4d.txt" in line for line in warned), warned


def test_files_after_an_empty_folder_are_loaded_in_bulk(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0).files == 0  # a share not mounted yet, say
    random_corpus(articles_dir, 60, 9)
    bulk: list[int] = []
    insert = Catalog._insert
    monkeypatch.setattr(Catalog, "_insert",
                        lambda self, rows: bulk.append(len(rows)) or insert(self, rows))
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 60
    assert bulk == [60]
    assert list(catalog.selected_articles()) == select(load_articles(articles_dir).articles, 0)


def test_incremental_feeds_equal_a_full_render_as_topics_grow_and_go(
    tmp_path: Path, articles_dir: Path
) -> None:
    """Unchanged feeds longer than their landing-page headlines, a changed one, and a topic
    whose last article goes: every file equals a full render, unchanged ones untouched."""
    from publisher import pipeline
    from publisher.config import load_config

    topics = ["AI"] * 12 + ["Space"] * 9 + ["Climate"]
    for index, topic in enumerate(topics, start=1):
        record = article_record(index, topics=[topic, "News"],
                                publishedDateTime=f"2025-01-{index:02d}T00:00:00Z")
        (articles_dir / f"{index:02d}.txt").write_text(front_matter(record))
    config_path = tmp_path / "config.toml"
    config_path.write_text('[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
                           "max_items = 8\n")
    config = load_config(config_path, environ={})

    def full_render() -> dict[str, bytes]:
        return render_feeds(select(load_articles(articles_dir).articles, 0), config.feeds)

    def on_disk() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in config.feeds.dir.iterdir()}

    pipeline.build(config)
    assert on_disk() == full_render()
    space = (config.feeds.dir / "space.rss.xml").stat().st_mtime_ns
    record = article_record(50, topics=["AI"], publishedDateTime="2025-02-01T00:00:00Z")
    (articles_dir / "50.txt").write_text(front_matter(record))
    written = pipeline.build(config).feeds
    assert written is not None and on_disk() == full_render()
    assert "space.rss.xml" not in {f.path.name for f in written.files if f.changed}
    assert (config.feeds.dir / "space.rss.xml").stat().st_mtime_ns == space
    (articles_dir / f"{len(topics):02d}.txt").unlink()  # the only "Climate" article
    pipeline.build(config)
    assert "climate.rss.xml" not in on_disk() and on_disk() == full_render()
    assert (config.feeds.dir / "space.rss.xml").stat().st_mtime_ns == space


def test_landing_page_of_unchanged_feeds_equals_a_full_render_with_few_items(
    tmp_path: Path, articles_dir: Path
) -> None:
    from publisher import pipeline
    from publisher.config import load_config

    for index, topic in enumerate(["AI", "AI", "AI", "Space", "Space", "Space"], start=1):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index,
                                                                               topics=[topic])))
    config_path = tmp_path / "config.toml"
    config_path.write_text('[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\nmax_items = 2\n')
    config = load_config(config_path, environ={})
    pipeline.build(config)
    (articles_dir / "7.txt").write_text(front_matter(article_record(7, topics=["AI"])))
    pipeline.build(config)  # "space" is unchanged: its landing-page part comes from memory
    expected = render_feeds(select(load_articles(articles_dir).articles, 0), config.feeds)
    assert (config.feeds.dir / "index.html").read_bytes() == expected["index.html"]


def test_an_emptied_folder_is_refused_unless_allowed(tmp_path: Path, articles_dir: Path) -> None:
    from publisher import pipeline
    from publisher.config import load_config
    from publisher.errors import ArticleError

    (articles_dir / "a.txt").write_text(front_matter(article_record(1)))
    config_path = tmp_path / "config.toml"
    config_path.write_text('[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n')
    pipeline.build(load_config(config_path, environ={}))
    (articles_dir / "a.txt").unlink()  # as an unmounted share looks
    with pytest.raises(ArticleError, match="is empty, but 1 article file was known"):
        pipeline.build(load_config(config_path, environ={}))
    assert "Article number 1" in (tmp_path / "feeds" / "all.rss.xml").read_text()
    allowed = load_config(config_path, environ={"PUBLISHER_ARTICLES_ALLOW_EMPTY": "true"})
    assert pipeline.build(allowed).corpus.selected == 0
    assert "Article number 1" not in (tmp_path / "feeds" / "all.rss.xml").read_text()


def _titles(catalog: Catalog) -> set[str]:
    return {article.title for article in catalog.selected_articles()}


def test_a_sync_of_the_watched_paths_looks_at_those_alone(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    """``paths`` (a watcher's report): new, changed and deleted files among them are synced;
    a change it does not name waits for the next full sync, which then finds nothing else."""
    for index in range(1, 4):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    new, unreported = articles_dir / "4.txt", articles_dir / "3.txt"
    new.write_text(front_matter(article_record(4)))
    unreported.write_text(front_matter(article_record(3, title="Changed unseen")))
    (articles_dir / "1.txt").unlink()
    report = catalog.sync(articles_dir, 1 << 20, 0, paths=[str(new), str(articles_dir / "1.txt")])
    assert (report.files, report.parsed, report.removed) == (3, 1, 1)
    assert _titles(catalog) == {"Article number 2", "Article number 3", "Article number 4"}
    full = catalog.sync(articles_dir, 1 << 20, 0)
    assert (full.files, full.parsed, full.removed) == (3, 1, 0)  # only the unreported one
    assert _titles(catalog) == {"Article number 2", "Changed unseen", "Article number 4"}
    assert catalog.sync(articles_dir, 1 << 20, 0, paths=[]).parsed == 0
    expected = select(load_articles(articles_dir).articles, 0)
    assert list(catalog.selected_articles()) == expected


def test_a_watched_path_a_full_scan_would_not_list_is_left_alone(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    """Hidden names, other suffixes, files outside the folder or under a link to a folder:
    what a full scan skips, a sync of paths skips too, so the two never disagree."""
    (articles_dir / "1.txt").write_text(front_matter(article_record(1)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (articles_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    (articles_dir / ".hidden").mkdir()
    skipped = [
        articles_dir / ".draft.txt", articles_dir / ".hidden" / "2.txt",
        articles_dir / "notes.rst", elsewhere / "3.txt", articles_dir / "linked" / "4.txt",
    ]
    for number, path in enumerate(skipped, 10):
        path.write_text(front_matter(article_record(number)))
    report = catalog.sync(articles_dir, 1 << 20, 0, paths=[str(path) for path in skipped])
    assert (report.files, report.parsed) == (1, 0)
    assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 0
    assert _titles(catalog) == {"Article number 1"}


def test_a_sync_of_paths_after_a_settings_change_looks_at_every_file(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    for index in range(1, 4):
        (articles_dir / f"{index}.txt").write_text(
            front_matter(article_record(index, quality=index * 100)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    assert len(_titles(catalog)) == 3
    assert catalog.sync(articles_dir, 1 << 20, 250, paths=[]).files == 3  # a new threshold
    assert _titles(catalog) == {"Article number 3"}
    assert catalog.sync(articles_dir, 1 << 19, 250, paths=[]).parsed == 3  # new limits


def test_an_empty_catalog_is_filled_whole_whatever_paths_say(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    for index in range(1, 4):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, 1 << 20, 0, paths=[]).parsed == 3


def test_a_sync_of_paths_that_would_forget_every_file_is_a_full_sync(
    open_catalog: CatalogOpener, tmp_path: Path, articles_dir: Path
) -> None:
    """An unmounted share looks empty: whether its files may be forgotten is the full
    sync's decision (``allow_empty``), whichever way the sync was asked for."""
    files = [articles_dir / f"{index}.txt" for index in (1, 2)]
    for index, path in enumerate(files, 1):
        path.write_text(front_matter(article_record(index)))
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    for path in files:
        path.unlink()
    with pytest.raises(ArticleError, match="is empty, but 2 article files were known"):
        catalog.sync(articles_dir, 1 << 20, 0, allow_empty=False, paths=[str(p) for p in files])
    assert catalog.selected_count() == 2
    report = catalog.sync(articles_dir, 1 << 20, 0, allow_empty=True, paths=[str(files[0])])
    assert (report.files, report.removed) == (1, 1)
