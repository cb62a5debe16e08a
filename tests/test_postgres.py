"""PostgreSQL state: the same ledger as SQLite, shared safely by several instances.

Everything here runs against a real PostgreSQL server (``postgres_url``: a fresh schema
per test). The behaviour shared with SQLite is also proven by test_push and test_catalog,
which run against both engines.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, ArticleWriter

from publisher.cli import cli
from publisher.config import load_config
from publisher.db import (
    Interrupted,
    PostgresDatabase,
    SQLiteDatabase,
    is_postgres_url,
    redact_url,
    url_passwords,
)
from publisher.errors import StateError
from publisher.pipeline import build
from publisher.state import (
    SCHEMA_VERSION,
    NewDelivery,
    Pacing,
    SQLStore,
    open_store,
)

CHATS = ("@one", "@two")


def plan(count: int, chats: tuple[str, ...] = CHATS) -> list[NewDelivery]:
    return [
        NewDelivery(f"a{index:04d}", chat, f"Title {index}", f"https://e.com/{index}",
                    f"2025-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}+00:00")
        for index in range(count) for chat in chats
    ]


def test_schema_is_created_once_with_its_version(postgres_url: str) -> None:
    first, second = open_store(postgres_url), open_store(postgres_url)  # migrations idempotent
    try:
        row = first.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert int(row[0]) == SCHEMA_VERSION
        assert first.add_deliveries(plan(3)) == 6
        assert second.add_deliveries(plan(3)) == 0  # known pairs are left alone
        assert second.counts() == {chat: {"pending": 3} for chat in CHATS}
    finally:
        first.close()
        second.close()


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    open_store(postgres_url).close()
    db = PostgresDatabase(postgres_url)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
               (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(StateError, match="newer than this publisher understands"):
        open_store(postgres_url)


def test_concurrent_claims_never_take_the_same_pair(postgres_url: str) -> None:
    setup = open_store(postgres_url)
    setup.add_deliveries(plan(150))
    setup.close()
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        store = open_store(postgres_url)
        try:
            for chat in CHATS * 200:
                item = store.claim_next(chat, time.time(), name, time.time() + 60)
                if item is not None:
                    assert item.claimed_by == name and item.state == "sending"
                    with lock:
                        claimed.append((item.article_id, item.chat_id))
        finally:
            store.close()

    threads = [threading.Thread(target=claimer, args=(f"i{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 300
    assert len(set(claimed)) == 300, "a pair was claimed twice"


def test_claims_take_the_oldest_due_pair_first(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        store.add_deliveries(plan(3, ("@one",)))
        store.mark_retry("a0000", "@one", "backing off", time.time() + 60)
        now = time.time()
        first = store.claim_next("@one", now, "me", now + 60)
        second = store.claim_next("@one", now, "me", now + 60)
        assert [first and first.article_id, second and second.article_id] == ["a0001", "a0002"]
        assert store.claim_next("@one", now, "me", now + 60) is None  # a0000 is not due yet
    finally:
        store.close()


def test_a_dead_instances_claim_is_taken_over_when_its_lease_ends(postgres_url: str) -> None:
    dead, survivor = open_store(postgres_url), open_store(postgres_url)
    try:
        dead.add_deliveries(plan(2))
        now = time.time()
        assert dead.claim_next("@one", now, "dead", now + 30) is not None
        assert dead.claim_next("@two", now, "dead", now + 30) is not None
        dead.close()  # killed: its claims stay in the ledger
        assert survivor.recover_interrupted((), now + 10) == 0  # leases still running
        assert survivor.recover_interrupted(("@two",), now + 31) == 2
        counts = survivor.counts()
        assert counts["@one"] == {"pending": 1, "uncertain": 1}  # may have left: held
        assert counts["@two"] == {"pending": 2}  # this chat is configured at-least-once
    finally:
        survivor.close()


def test_pacing_slots_hold_across_instances(postgres_url: str) -> None:
    pacing = Pacing(per_chat_interval=0.5, per_chat_per_minute=6, global_interval=0.1,
                    max_wait=300)
    now = time.time()
    slots: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        store = open_store(postgres_url)
        try:
            for _ in range(4):
                slot = store.reserve_send("@one", now, pacing)
                assert slot is not None
                with lock:
                    slots.append(slot)
        finally:
            store.close()

    threads = [threading.Thread(target=reserve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots.sort()
    assert len(slots) == 12
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert min(gaps) >= 0.5 - 1e-6  # the per-chat interval, whoever reserved
    for index in range(6, 12):  # never more than 6 in any 60 s
        assert slots[index] >= slots[index - 6] + 60 - 1e-6
    store = open_store(postgres_url)
    try:
        short = Pacing(0.5, 6, 0.1, max_wait=10)
        assert store.reserve_send("@one", now, short) is None  # too far away: deferred
    finally:
        store.close()


def test_advisory_locks_exclude_other_connections(postgres_url: str) -> None:
    holder, waiter = PostgresDatabase(postgres_url), PostgresDatabase(postgres_url)
    stop = threading.Event()
    try:
        with holder.exclusive("sync"):
            threading.Timer(0.3, stop.set).start()
            started = time.monotonic()
            with pytest.raises(Interrupted), waiter.exclusive("sync", stop):
                pass
            assert time.monotonic() - started >= 0.25
            with waiter.exclusive("feeds"):  # another name: not held
                pass
        with waiter.exclusive("sync"):  # released by the holder
            pass
    finally:
        holder.close()
        waiter.close()


def test_a_lost_connection_fails_one_statement_then_reconnects(postgres_url: str) -> None:
    store, admin = open_store(postgres_url), PostgresDatabase(postgres_url)
    try:
        store.add_deliveries(plan(1))
        pid = store.db.execute("SELECT pg_backend_pid()").fetchone()[0]
        admin.execute("SELECT pg_terminate_backend(?)", (pid,))
        time.sleep(0.2)
        with pytest.raises(StateError, match="state database"):
            store.counts()
        assert store.counts() == {chat: {"pending": 1} for chat in CHATS}
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize("url", [
    "postgresql://publisher:Sup3rS3cretPw@127.0.0.1:1/nowhere",
    "postgresql://publisher@127.0.0.1:1/nowhere?password=Sup3rS3cretPw&connect_timeout=5",
])
def test_the_password_in_the_url_never_shows(tmp_path: Path, url: str) -> None:
    assert "Sup3rS3cretPw" not in redact_url(url) and "***" in redact_url(url)
    (tmp_path / "articles").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[articles]\ndir = "articles"\n[state]\nurl = "{url}"\n')
    for command in (["build"], ["status"], ["resend", "--all"]):
        result = CliRunner().invoke(cli, [*command, "-c", str(config)])
        assert result.exit_code == 1, result.output
        assert "Sup3rS3cretPw" not in result.output
        assert "cannot connect to the state database postgresql://publisher" in result.output
        debug = CliRunner().invoke(cli, [*command, "-c", str(config), "--debug"])
        trace = "".join(traceback.format_exception(debug.exception))
        assert "cannot connect" in trace and "Sup3rS3cretPw" not in trace


def test_an_unknown_state_url_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[state]\nurl = "mysql://root:pw@db/x"\n')
    result = CliRunner().invoke(cli, ["build", "-c", str(config)])
    assert result.exit_code == 1
    assert "state.url must be sqlite:///PATH or postgresql://" in result.output
    assert "pw" not in result.output


def test_a_version_3_sqlite_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '3'), ('catalog_scan', 'x');
        CREATE TABLE deliveries (
            article_id TEXT NOT NULL, chat_id TEXT NOT NULL, state TEXT NOT NULL,
            title TEXT NOT NULL DEFAULT '', url TEXT NOT NULL DEFAULT '',
            published_at TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
            message_id INTEGER, sent_to TEXT, sent_at TEXT, reason TEXT NOT NULL DEFAULT '',
            next_attempt_at REAL NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, PRIMARY KEY (article_id, chat_id));
        INSERT INTO deliveries (article_id, chat_id, state, title, message_id, created_at,
            updated_at) VALUES ('a1', '@one', 'sent', 'Old post', 7, 'x', 'x'),
            ('a2', '@one', 'pending', 'Waiting', NULL, 'x', 'x');
        """
    )
    db.close()
    before = open_store(f"sqlite:///{path}", readonly=True)  # `publisher status` before any write
    try:
        assert [d.title for d in before.deliveries(["sent"])] == ["Old post"]
    finally:
        before.close()
    store = SQLStore(SQLiteDatabase(path))
    try:
        assert store.counts() == {"@one": {"pending": 1, "sent": 1}}
        now = time.time()
        claimed = store.claim_next("@one", now, "me", now + 60)
        assert claimed is not None and claimed.title == "Waiting"
        row = store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert row[0] == str(SCHEMA_VERSION)
        assert store.db.execute("SELECT count(*) FROM meta WHERE key='catalog_scan'"
                                ).fetchone()[0] == 0
    finally:
        store.close()


def test_claim_counts_are_exact_under_contention(postgres_url: str) -> None:
    """Several claimers on one chat: each pair claimed once, in oldest-first waves."""
    setup = open_store(postgres_url)
    setup.add_deliveries(plan(60, ("@one",)))
    setup.close()
    owners: Counter[str] = Counter()
    lock = threading.Lock()

    def claimer(name: str) -> None:
        store = open_store(postgres_url)
        try:
            while (item := store.claim_next("@one", time.time(), name, time.time() + 60)):
                store.mark_sent(item.article_id, "@one", 1, "@one")
                with lock:
                    owners[name] += 1
        finally:
            store.close()

    threads = [threading.Thread(target=claimer, args=(f"i{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(owners.values()) == 60
    check = open_store(postgres_url)
    try:
        assert check.counts() == {"@one": {"sent": 60}}
    finally:
        check.close()


def test_the_two_host_example_config_is_valid() -> None:
    config = load_config(REPO / "deploy" / "two-hosts" / "config.toml", environ={})
    assert is_postgres_url(config.state.url) and "@" in config.state.url
    assert url_passwords(config.state.url) == []  # the password lives in PGPASSFILE


def test_status_of_a_fresh_database_says_so(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[state]\nurl = "{postgres_url}"\n')
    result = CliRunner().invoke(cli, ["status", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("No state yet (postgresql://")


def test_each_feeds_folder_is_kept_current_and_identical(
    postgres_url: str, tmp_path: Path, write_article: ArticleWriter
) -> None:
    """Two hosts on one state, each with its own feeds folder: both written, byte for byte."""
    for index in range(1, 6):
        write_article(f"{index}.txt", index, topics=["AI", "Space"])
    reports = {}
    for host in ("a", "b"):
        path = tmp_path / f"{host}.toml"
        path.write_text(f'[articles]\ndir = "articles"\n[feeds]\ndir = "feeds-{host}"\n'
                        f'[state]\nurl = "{postgres_url}"\n')
        reports[host] = build(load_config(path, environ={}))
    assert reports["a"].feeds is not None and reports["b"].feeds is not None
    files = sorted(p.name for p in (tmp_path / "feeds-a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "feeds-b").iterdir())
    assert "space.atom.xml" in files
    for name in files:
        assert (tmp_path / "feeds-a" / name).read_bytes() == (
            tmp_path / "feeds-b" / name).read_bytes(), name
    again = build(load_config(tmp_path / "a.toml", environ={}))
    assert again.feeds is None  # host a's folder is still current


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_chat_waiting_out_its_budget_never_holds_the_others_back(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (str(request.getfixturevalue("postgres_url")) if engine == "postgresql"
           else f"sqlite:///{tmp_path / 'state.db'}")
    store = open_store(url)
    try:
        pacing = Pacing(per_chat_interval=0.0, per_chat_per_minute=2, global_interval=0.5,
                        max_wait=300)
        now = time.time()
        first = [store.reserve_send("@busy", now, pacing) for _ in range(3)]
        assert first[2] is not None and first[2] >= now + 60  # its budget: a minute ahead
        other = store.reserve_send("@quiet", now, pacing)
        assert other is not None and other < now + 2  # a gap near now, not after @busy
        taken = sorted([*first, other])  # type: ignore[type-var]
        gaps = [later - earlier for earlier, later in itertools.pairwise(taken)]
        assert min(gaps) >= 0.5 - 1e-6  # the bot-wide rate still holds
    finally:
        store.close()


def test_an_outcome_after_a_lost_claim_never_undoes_the_takeover(postgres_url: str) -> None:
    slow, survivor = open_store(postgres_url), open_store(postgres_url)
    try:
        slow.add_deliveries(plan(1, ("@one",)))
        now = time.time()
        assert slow.claim_next("@one", now, "slow", now + 3) is not None
        assert survivor.recover_interrupted(("@one",), now + 4) == 1  # lease over: requeued
        taken = survivor.claim_next("@one", now + 4, "survivor", now + 60)
        assert taken is not None and taken.claimed_by == "survivor"
        # The slow instance's late answer (a 5xx) must not put the pair back to pending.
        assert slow.mark_retry("a0000", "@one", "502", now, owner="slow") is False
        assert slow.mark_uncertain("a0000", "@one", "timeout", owner="slow") is False
        assert survivor.counts() == {"@one": {"sending": 1}}
        assert survivor.mark_retry("a0000", "@one", "502", now, owner="survivor") is True
    finally:
        slow.close()
        survivor.close()
