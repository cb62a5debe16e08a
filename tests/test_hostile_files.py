"""Hostile and messy article files through the commands, the catalog and the channel: every
one is a clear line (or a warning), costs what a file may cost, and loses nothing else."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest
from helpers import ArticleWriter, article_record, front_matter
from standin.server import DEFAULT_TOKEN, BotApiStandin, StandinProcess

from publisher import pipeline
from publisher import scan as scan_module
from publisher.catalog import Catalog, create_schema, stored_article
from publisher.config import Config, load_config
from publisher.db import Database, PostgresDatabase, SQLiteDatabase
from publisher.errors import ConfigError
from publisher.loader import Limits
from publisher.models import article_id
from publisher.state import open_store

CHAT = "@news"
PROMPTLY = 30  # seconds: a command that takes longer is hanging


@pytest.fixture(autouse=True)
def _files_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written just before a sync are racy and read again by every sync (see
    ``scan.RACY_NS``); here a file is read once per change, to count the parses."""
    monkeypatch.setattr(scan_module, "RACY_NS", 0)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, timeout=PROMPTLY,
        check=False,
    )


def write_config(tmp_path: Path, extra: str = "", state: str = "sqlite:///state/p.db") -> Path:
    path = tmp_path / "config.toml"
    (tmp_path / "state").mkdir(exist_ok=True)  # a missing state folder is an error
    path.write_text(
        '[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
        'base_url = "https://feeds.example.org/"\n'
        f'[state]\nurl = "{state}"\n' + extra,
        encoding="utf-8",
    )
    return path


def with_articles_keys(config: Path, keys: str) -> Path:
    """``config`` with more keys in its [articles] table."""
    text = config.read_text()
    config.write_text(text.replace('[articles]\ndir = "articles"\n',
                                   f'[articles]\ndir = "articles"\n{keys}', 1))
    return config


# -- a FIFO named like an article, and like the token file -----------------------------------


def test_check_and_build_return_promptly_past_a_fifo(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    write_article("good.txt")
    os.mkfifo(articles_dir / "x.txt")
    config = write_config(tmp_path)
    reason = f"{articles_dir / 'x.txt'}: not a regular file (a FIFO): only regular files are read"
    check = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert check.returncode == 1
    assert check.stdout.splitlines() == [reason]
    assert "2 files checked: 1 bad, 1 selected" in check.stderr
    build = run_cli("build", "-c", str(config), cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert build.stderr.splitlines() == [reason]
    assert "Article number 1" in (tmp_path / "feeds" / "all.rss.xml").read_text()


def test_build_counts_only_files_it_parsed(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    write_article("good.txt")
    for index in range(5):
        os.mkfifo(articles_dir / f"pipe{index}.txt")
    config = write_config(tmp_path)
    build = run_cli("build", "-c", str(config), cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert build.stdout.startswith("Read 6 files (5 bad, 1 parsed), selected 1 article")


def test_check_and_build_give_the_size_of_a_file_too_large(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    write_article("good.txt")
    big = articles_dir / "big.txt"
    big.write_bytes(front_matter(article_record(2)).encode() + b"x" * 10_000_000)
    size = big.stat().st_size
    line = f"{big}: file too large ({size:,} bytes; the limit is 1,048,576)"
    config = write_config(tmp_path)
    # Just written, the file is "racy" for the build's scan (RACY_NS): its size is not
    # trusted from the scan, and the read finds out (fstat) how large it is.
    build = run_cli("build", "-c", str(config), cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert build.stderr.splitlines() == [line]
    assert "(1 bad, 1 parsed)" in build.stdout
    check = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert check.stdout.splitlines() == [line]


def test_a_token_file_that_is_a_fifo_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    config = load_config(write_config(tmp_path, f'[telegram]\ntoken_file = "{fifo}"\n'),
                         environ={})
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(config.read_token())
        except ConfigError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the stuck reader go
        thread.join(10)
        pytest.fail("reading the token file blocked on the FIFO")
    (error,) = outcome
    assert str(error) == (
        f"cannot read telegram.token_file {fifo}: not a regular file (a FIFO)"
    )


def test_the_service_builds_posts_and_stops_past_a_fifo_and_warns_once(
    tmp_path: Path, write_article: ArticleWriter, articles_dir: Path,
    botapi_process: StandinProcess,
) -> None:
    write_article("good.txt", 1, topics=[f"Topic {i}" for i in range(25)])
    os.mkfifo(articles_dir / "x.txt")
    config = write_config(
        tmp_path,
        '[schedule]\nbuild = "1s"\npush = "1s"\nwatch = false\n'
        f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "{botapi_process.base_url}"\n'
        "max_age_hours = 0\n",
    )
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "publisher", "run", "-c", str(config)], cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN},
        )
        try:
            deadline = time.monotonic() + PROMPTLY
            while not botapi_process.messages() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(botapi_process.messages()) == 1, log_path.read_text()
            runs = build_runs(tmp_path)
            while build_runs(tmp_path) < runs + 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # two more builds: nothing new to say about the files
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = log_path.read_text().splitlines()
    assert len([line for line in lines if " bad_article " in line]) == 1
    (trimmed,) = [line for line in lines if " article_trimmed " in line]
    assert "kept 20 of 25 topics (articles.max_topics = 20)" in trimmed
    assert (tmp_path / "feeds" / "topic-24.rss.xml").exists() is False


def build_runs(tmp_path: Path) -> int:
    store = open_store(f"sqlite:///{tmp_path / 'state' / 'p.db'}", readonly=True)
    try:
        rows = store.db.execute("SELECT count(*) FROM runs WHERE kind = 'build'").fetchone()
        return int(rows[0])
    finally:
        store.close()


# -- topic and related caps -------------------------------------------------------------------


def test_output_no_longer_grows_with_the_square_of_the_topics(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    path = write_article("many.txt", 1, topics=[f"Topic {i}" for i in range(300)],
                         related=[{"title": f"R{i}", "webUrl": f"https://r.example.com/{i}"}
                                  for i in range(30)])
    write_article("plain.txt", 2)
    config = write_config(tmp_path)
    warning = (f"{path}: warning: kept 20 of 300 topics (articles.max_topics = 20); kept 10 "
               "related articles, left 20 more (articles.max_related = 10)")
    cold = pipeline.build(load_config(config, environ={}))
    assert cold.corpus.parsed == 2 and [str(n) for n in cold.corpus.notices] == [warning]
    feeds = tmp_path / "feeds"
    assert len(list(feeds.iterdir())) == (20 + 2) * 3 + 3  # 20 topics, AI, all; 3 pages
    warm = run_cli("build", "-c", str(config), cwd=tmp_path)  # nothing parsed, still said
    assert warm.returncode == 0, warm.stderr
    assert warm.stderr.splitlines() == [warning]
    assert "(0 bad, 1 with warnings, 0 parsed)" in warm.stdout
    check = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert (check.returncode, check.stdout.splitlines()) == (0, [
        warning, "2 files checked: 0 bad, 1 with warnings, 2 selected for publishing."
    ])

    with_articles_keys(config, "max_topics = 30\nmax_related = 40\n")
    again = run_cli("build", "-c", str(config), cwd=tmp_path)
    assert "2 parsed" in again.stdout  # the caps are parse settings
    assert len(list(feeds.iterdir())) == (30 + 2) * 3 + 3
    assert "kept 30 of 300 topics" in again.stderr and "related" not in again.stderr


@pytest.mark.parametrize(("key", "value"), [("max_topics", 0), ("max_related", -1)])
def test_caps_must_be_at_least_one(tmp_path: Path, key: str, value: int) -> None:
    config = with_articles_keys(write_config(tmp_path), f"{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"articles.{key} must be at least 1"):
        load_config(config, environ={})


# -- dates --------------------------------------------------------------------------------------


def test_an_unquoted_invalid_date_is_a_bad_file_for_check_and_dry_run(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    (articles_dir / "a.txt").write_text(
        "---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2024-02-30T00:00:00Z\n---\n"
    )
    write_article("z.txt", 2)
    config = write_config(tmp_path, f'[telegram]\nchat_id = "{CHAT}"\nmax_age_hours = 0\n')
    check = run_cli("check", "-c", str(config), cwd=tmp_path)
    assert check.returncode == 1, check.stderr
    assert check.stdout.splitlines() == [
        f"{articles_dir / 'a.txt'}: publishedDateTime is not an ISO 8601 date: "
        "'2024-02-30T00:00:00Z'"
    ]
    assert "2 files checked: 1 bad, 1 selected" in check.stderr
    dry = run_cli("push", "-c", str(config), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: 1 message would be sent" in dry.stdout


CatalogOpener = Callable[[Path], Catalog]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_catalog(request: pytest.FixtureRequest) -> Iterator[CatalogOpener]:
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


def test_a_file_dated_ahead_becomes_good_when_its_time_comes_without_changing(
    open_catalog: CatalogOpener, write_article: ArticleWriter, articles_dir: Path,
    tmp_path: Path,
) -> None:
    for index in range(1, 6):
        write_article(f"{index}.txt", index)  # dated 2025-01-01
    write_article("ahead.txt", 9, publishedDateTime="2025-01-10T12:00:00Z")
    catalog = open_catalog(tmp_path)
    now = datetime(2025, 1, 5, tzinfo=UTC)
    first = catalog.sync(articles_dir, 1 << 20, 0, now=now)
    assert (first.parsed, [p.path.name for p in first.problems]) == (6, ["ahead.txt"])
    assert "more than a day ahead of now" in first.problems[0].reason
    assert catalog.selected_count() == 5
    # Not yet: a warm sync reads nothing.
    assert catalog.sync(articles_dir, 1 << 20, 0, now=now + timedelta(days=4)).parsed == 0
    later = catalog.sync(articles_dir, 1 << 20, 0, now=datetime(2025, 1, 9, 12, tzinfo=UTC))
    assert (later.parsed, later.problems) == (1, [])  # that row only
    assert catalog.selected_count() == 6
    assert catalog.sync(articles_dir, 1 << 20, 0, now=datetime(2025, 2, 1, tzinfo=UTC)
                        ).parsed == 0


# -- the identity rule ---------------------------------------------------------------------


def row_of(catalog: Catalog, name: str, directory: Path) -> tuple[str, str]:
    identifier, data = catalog.db.execute(
        "SELECT article_id, data FROM catalog WHERE path = ?", (str(directory / name),)
    ).fetchone()
    return identifier, stored_article(data).id if data is not None else ""


def test_a_file_keeps_its_article_id_when_its_url_changes(
    open_catalog: CatalogOpener, write_article: ArticleWriter, articles_dir: Path,
    tmp_path: Path,
) -> None:
    typo = "https://news.example.com/artcles/1"
    fixed = "https://news.example.com/articles/1"
    write_article("a.txt", 1, webUrl=typo)
    catalog = open_catalog(tmp_path)
    catalog.sync(articles_dir, 1 << 20, 0)
    assert row_of(catalog, "a.txt", articles_dir) == (article_id(typo), article_id(typo))
    write_article("a.txt", 1, webUrl=fixed)
    catalog.sync(articles_dir, 1 << 20, 0)
    (article,) = catalog.selected_articles()
    assert (article.id, article.url) == (article_id(typo), fixed)
    # Broken for a while, then fixed: still the same article.
    (articles_dir / "a.txt").write_text("---\ntitle: [oops\n---\n")
    catalog.sync(articles_dir, 1 << 20, 0)
    assert catalog.selected_count() == 0
    write_article("a.txt", 1, webUrl=fixed, title="Final title")
    catalog.sync(articles_dir, 1 << 20, 0)
    (article,) = catalog.selected_articles()
    assert (article.id, article.title) == (article_id(typo), "Final title")
    # Renamed, same URL: the same article.
    (articles_dir / "a.txt").rename(articles_dir / "b.txt")
    catalog.sync(articles_dir, 1 << 20, 0)
    assert row_of(catalog, "b.txt", articles_dir) == (article_id(typo), article_id(typo))
    # A new file of another URL is another article.
    write_article("c.txt", 3)
    catalog.sync(articles_dir, 1 << 20, 0)
    ids = {article.url: article.id for article in catalog.selected_articles()}
    assert ids == {fixed: article_id(typo), "https://news.example.com/articles/3":
                   article_id("https://news.example.com/articles/3")}


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)


@pytest.fixture(params=["sqlite", "postgresql"])
def push_config(request: pytest.FixtureRequest, tmp_path: Path, botapi: BotApiStandin,
                token: None) -> Config:
    state = (request.getfixturevalue("postgres_url") if request.param == "postgresql"
             else "sqlite:///state/p.db")
    path = write_config(
        tmp_path,
        f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "{botapi.base_url}"\n'
        "max_age_hours = 0\nper_chat_interval_seconds = 0.06\ntimeout_seconds = 0.5\n",
        state=state,
    )
    return load_config(path, environ={})


def test_fixing_a_web_url_in_place_neither_posts_again_nor_changes_the_entry_id(
    push_config: Config, write_article: ArticleWriter, botapi: BotApiStandin, tmp_path: Path,
) -> None:
    typo = "https://news.example.com/artcles/1?utm_source=newsletter"
    fixed = "https://news.example.com/articles/1?utm_source=newsletter&fbclid=abc&page=2"
    write_article("a.txt", 1, webUrl=typo)
    assert asyncio.run(pipeline.push(push_config)).report.total("sent") == 1
    (record,) = botapi.messages
    button = record.reply_markup["inline_keyboard"][0][0]  # type: ignore[index]
    assert button["url"] == "https://news.example.com/artcles/1"  # no tracking
    pipeline.build(push_config)
    first = feedparser.parse((tmp_path / "feeds" / "all.atom.xml").read_bytes()).entries[0]

    write_article("a.txt", 1, webUrl=fixed)
    outcome = asyncio.run(pipeline.push(push_config))
    assert outcome.report.total("sent") == 0 and len(botapi.messages) == 1
    dry = pipeline.dry_run(push_config)
    assert dry.items == []  # the dry run sees the kept id too
    pipeline.build(push_config)
    entry = feedparser.parse((tmp_path / "feeds" / "all.atom.xml").read_bytes()).entries[0]
    assert entry.id == first.id == article_id(typo)
    assert entry.link == "https://news.example.com/articles/1?page=2"
    rss = (tmp_path / "feeds" / "all.rss.xml").read_text()
    assert "utm_source" not in rss and "fbclid" not in rss and "artcles" not in rss

    (tmp_path / "articles" / "a.txt").rename(tmp_path / "articles" / "renamed.txt")
    assert asyncio.run(pipeline.push(push_config)).report.total("sent") == 0


# -- links and names on their way out ---------------------------------------------------------


def test_feeds_publish_idn_hosts_and_no_credentials(
    write_article: ArticleWriter, tmp_path: Path
) -> None:
    write_article("a.txt", 1, webUrl="https://editor:hunter2@b\u00fccher.example/neu/caf\u00e9",
                  images=[{"url": "https://u:p@img.example.com/1.jpg", "width": 1200,
                           "height": 800}],
                  related=[{"title": "R", "webUrl": "https://me:pw@r.example.com/x"}])
    config = write_config(tmp_path)
    assert run_cli("build", "-c", str(config), cwd=tmp_path).returncode == 0
    for name in ("all.rss.xml", "all.atom.xml", "all.json"):
        data = (tmp_path / "feeds" / name).read_text()
        assert "hunter2" not in data and "u:p@" not in data and "pw@" not in data
        assert "b%C3%BCcher" not in data
    entry = feedparser.parse((tmp_path / "feeds" / "all.atom.xml").read_bytes()).entries[0]
    assert entry.link == "https://xn--bcher-kva.example/neu/caf%C3%A9"


def test_check_quotes_odd_file_names_so_each_problem_stays_one_line(
    articles_dir: Path, tmp_path: Path
) -> None:
    (articles_dir / "evil\nname\x1b]0;owned\x07.txt").write_text("nonsense")
    (articles_dir / "plain.txt").write_text(front_matter(article_record()))
    check = run_cli("check", "--articles", str(articles_dir), cwd=tmp_path)
    assert check.returncode == 1
    assert check.stdout.splitlines() == [
        f"'{articles_dir}/evil\\nname\\x1b]0;owned\\x07.txt': no front matter: the file "
        "must start with a '---' line"
    ]
    assert "\x1b" not in check.stdout + check.stderr


def test_limits_are_part_of_what_the_rows_were_parsed_with(
    open_catalog: CatalogOpener, write_article: ArticleWriter, articles_dir: Path,
    tmp_path: Path,
) -> None:
    write_article("a.txt", 1, topics=["A", "B", "C"])
    catalog = open_catalog(tmp_path)
    assert catalog.sync(articles_dir, Limits(max_topics=2), 0).parsed == 1
    assert catalog.topic_slugs() == ["a", "b"]
    assert [str(n) for n in catalog.sync(articles_dir, Limits(max_topics=2), 0).notices] == [
        f"{articles_dir / 'a.txt'}: warning: kept 2 of 3 topics (articles.max_topics = 2)"
    ]
    report = catalog.sync(articles_dir, Limits(max_topics=3), 0)
    assert (report.parsed, report.notices) == (1, [])
    assert catalog.topic_slugs() == ["a", "b", "c"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_a_version_5_state_is_upgraded_and_its_files_keep_their_ids(
    state_url: str, write_article: ArticleWriter, articles_dir: Path
) -> None:
    """Version 6 added catalog.warning and recheck_us, and parser version 3 reads every
    file again, with links in their published form: ids that came from the old form (an
    IDN host, say) stay those of their files."""
    from publisher.state import SCHEMA_VERSION

    write_article("a.txt", 1, webUrl="https://b\u00fccher.example/a",
                  topics=[f"T{i}" for i in range(30)])
    store = open_store(state_url)
    Catalog(store.db).sync(articles_dir, 1 << 20, 0)
    with store.db.transaction():
        for statement in (
            "DROP INDEX catalog_warnings", "DROP INDEX catalog_recheck",
            "ALTER TABLE catalog DROP COLUMN warning", "ALTER TABLE catalog DROP COLUMN recheck_us",
            "UPDATE catalog SET article_id = 'urn:uuid:of-the-old-form'",
            "UPDATE meta SET value = '5' WHERE key = 'schema_version'",
            "UPDATE meta SET value = '1048576:2' WHERE key = 'catalog_parsing'",
        ):
            store.db.execute(statement)
    store.close()
    store = open_store(state_url)
    try:
        catalog = Catalog(store.db)
        assert catalog.get_meta("schema_version") == str(SCHEMA_VERSION)
        report = catalog.sync(articles_dir, 1 << 20, 0)
        assert report.parsed == 1 and len(report.notices) == 1
        (article,) = catalog.selected_articles()
        assert (article.id, article.url) == ("urn:uuid:of-the-old-form",
                                             "https://xn--bcher-kva.example/a")
    finally:
        store.close()
