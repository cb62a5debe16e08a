"""The corpus catalog: a parse cache in the state database, and selection answered from it.

Each article file has one row keyed by its path, with the size, mtime and inode it had when
it was parsed. A sync finds the files whose key changed (``scan``: every file, or only the
paths a watcher reported), re-parses those (in worker processes when there are many), drops
rows of deleted files, and never serves a stale article: any change of size, mtime or inode
means a new parse.

Selection runs as SQL over the rows, with exactly the semantics of ``selection.select`` and
``selection.group_by_topic`` (the pure reference, which tests compare against), so a build
or a push holds in memory only the articles it is about to render or send, never the corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from publisher import codec
from publisher.db import Database, Interrupted, rows_in, upsert
from publisher.errors import ArticleError
from publisher.errors import SyncInterrupted as SyncInterrupted
from publisher.loader import (
    DEFAULT_LIMITS,
    Limits,
    Notice,
    Problem,
    display_path,
    read_file,
)
from publisher.models import Article, normalise_url
from publisher.scan import (
    ChangeFinder,
    Changes,
    FileJob,
    FileKey,
    Scan,
    key_text,
    scan_schema,
)
from publisher.selection import topic_slug

log = logging.getLogger(__name__)

# Below this many changed files, worker processes cost more than they save.
PARALLEL_MIN_FILES = 2000
BATCH_FILES = 500
COLD_COMMIT_FILES = 5000  # an empty catalog is filled in fewer, larger transactions

def catalog_schema(dialect: str) -> list[str]:
    """The catalog's tables, for ``dialect`` ("sqlite" or "postgresql")."""
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS catalog (
            path TEXT PRIMARY KEY,
            file_key TEXT NOT NULL,  -- "size mtime_ns ctime_ns inode" when parsed
            problem TEXT,
            article_id TEXT,  -- kept across parses of the path (see ``_kept_ids``)
            url_key TEXT,
            published BIGINT NOT NULL DEFAULT 0,
            quality BIGINT NOT NULL DEFAULT 0,
            published_us BIGINT NOT NULL DEFAULT 0,
            digest TEXT,
            data {blob},  -- the normalised article (``codec``: versioned, compressed)
            selected BIGINT NOT NULL DEFAULT 0,
            warning TEXT,  -- what the loader cut or left out of a usable file (one line)
            recheck_us BIGINT,  -- parse again from then on (a date that was too far ahead)
            revision BIGINT NOT NULL DEFAULT 0  -- of the last write of the row (``revision``)
        )""",
        "CREATE INDEX IF NOT EXISTS catalog_url ON catalog (url_key)",
        "CREATE INDEX IF NOT EXISTS catalog_article ON catalog (article_id)",
        "CREATE INDEX IF NOT EXISTS catalog_newest ON catalog (selected, published_us, article_id)",
        "CREATE INDEX IF NOT EXISTS catalog_problems ON catalog (path) WHERE problem IS NOT NULL",
        *_CHECKED_INDEXES,
        _REVISION_INDEX,
        """CREATE TABLE IF NOT EXISTS catalog_slugs (
            path TEXT NOT NULL,
            slug TEXT NOT NULL,
            selected BIGINT NOT NULL DEFAULT 0,
            published_us BIGINT NOT NULL,
            article_id TEXT NOT NULL,
            PRIMARY KEY (path, slug)
        )""",
        "CREATE INDEX IF NOT EXISTS catalog_slugs_newest "
        "ON catalog_slugs (slug, selected, published_us, article_id)",
        *scan_schema(dialect),  # the last completed scan (see ``scan``)
        FEED_FILES_TABLE,
    ]


# What the feeds' writer left on disk, one row per file, per host and folder (``place``:
# each host may have a disk of its own): how it was rendered and what it holds, so that a
# build renders only the feeds whose members changed (see ``publisher.feeds.current``).
FEED_FILES_TABLE = """CREATE TABLE IF NOT EXISTS feed_files (
    place TEXT NOT NULL,  -- "feeds_digest:<host>:<folder>"
    name TEXT NOT NULL,  -- the file's name in the folder
    slug TEXT NOT NULL,  -- its feed ("all", a topic), or the page's
    settings TEXT NOT NULL,  -- a digest of the version and feed settings it was rendered with
    members TEXT NOT NULL,  -- a digest of the records it shows; '' when not known current
    entries BIGINT,  -- a feed's number of entries (its landing-page count); NULL for pages
    size BIGINT NOT NULL,  -- its size in bytes as written
    digest TEXT NOT NULL,  -- of its bytes as written
    PRIMARY KEY (place, name)
)"""


def add_feed_files(db: Database) -> None:
    """Schema 8: the ``feed_files`` table replaces the JSON object each place kept in a
    ``feeds_digest:...`` meta row. That object was a cache: it goes, and the first build
    renders every feed once (bytes equal to those on disk are not written again)."""
    db.execute(FEED_FILES_TABLE)
    db.execute("DELETE FROM meta WHERE key LIKE 'feeds_digest:%'")


class FeedFileRecord(NamedTuple):
    """One row of ``feed_files`` (without its place)."""

    name: str
    slug: str
    settings: str
    members: str
    entries: int | None
    size: int
    digest: str


# The columns (and their indexes) added to the catalog by schema 7.
_CHECKED_COLUMNS = {"warning": "TEXT", "recheck_us": "BIGINT"}
_CHECKED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS catalog_warnings ON catalog (path) WHERE warning IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS catalog_recheck ON catalog (recheck_us) "
    "WHERE recheck_us IS NOT NULL",
)


_REVISION_INDEX = "CREATE INDEX IF NOT EXISTS catalog_revision ON catalog (revision)"
# The number of the last write transaction of the catalog: each one takes the next, and
# every row it writes (or selects, or unselects) is stamped with it, so that a reader can
# ask what changed since a revision it saw (the ledger's planned marks do).
REVISION_KEY = "catalog_revision"


# -- the catalog's migrations (``migrations.MIGRATIONS``) --------------------------------------
# The catalog is a cache: what a migration cannot carry over is parsed again.


def _catalog_columns(db: Database) -> set[str]:
    """The catalog table's columns; empty when there is none yet."""
    if db.dialect == "sqlite":
        return {row[1] for row in db.execute("PRAGMA table_info(catalog)")}
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'catalog'"
    )
    return {row[0] for row in rows}


def drop_catalog_before_file_keys(db: Database, version: int) -> None:
    """3: a catalog from before file keys and plans is dropped, and rebuilt by its schema."""
    columns = _catalog_columns(db)
    if columns and not {"file_key", "planned"} <= columns:
        for table in ("catalog", "catalog_slugs", "catalog_topics"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute("DELETE FROM meta WHERE key LIKE 'catalog%' OR key LIKE '%digest'")


def drop_scan_snapshot(db: Database, version: int) -> None:
    """5: the stored scan's old layout goes; the next sync compares the files with the rows
    once."""
    db.execute("DROP TABLE IF EXISTS catalog_snapshot")
    db.execute("DELETE FROM meta WHERE key = 'catalog_scan_fingerprint'")


def add_revisions(db: Database, version: int) -> None:
    """8: ``catalog.revision`` (rows of before are at revision 0)."""
    if _catalog_columns(db) and "revision" not in _catalog_columns(db):
        db.execute("ALTER TABLE catalog ADD COLUMN revision BIGINT NOT NULL DEFAULT 0")
        db.execute(_REVISION_INDEX)


def add_checked_columns(db: Database, version: int) -> None:
    """7: the columns newer than a stored catalog; its rows are parsed again anyway, as
    ``PARSER_VERSION`` changed with them."""
    present = _catalog_columns(db)
    if not present:
        return  # no catalog yet: ``catalog_schema`` creates it whole
    for column, kind in _CHECKED_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE catalog ADD COLUMN {column} {kind}")


# ``selected`` is materialised: 1 on the record that ``selection.select`` keeps for its
# normalised URL (published, quality >= the threshold, the newest; ties: the later path).
_PICK = (
    "SELECT path FROM catalog WHERE url_key = ? AND problem IS NULL AND published = 1 "
    "AND quality >= ? ORDER BY published_us DESC, path DESC LIMIT 1"
)
_TOPIC_NEWEST = (
    "SELECT path FROM catalog_slugs WHERE slug = ? AND selected = 1 "
    "ORDER BY published_us DESC, article_id DESC LIMIT ?"
)
_DISTINCT_SLUGS = (
    "WITH RECURSIVE slugs(slug) AS ("
    " SELECT min(slug) FROM catalog_slugs WHERE selected = 1"
    " UNION ALL"
    " SELECT (SELECT min(c.slug) FROM catalog_slugs c WHERE c.slug > slugs.slug"
    "         AND c.selected = 1)"
    " FROM slugs WHERE slugs.slug IS NOT NULL"
    ") SELECT slug FROM slugs"
)
_NEWEST = (
    "SELECT path FROM catalog WHERE selected = 1 ORDER BY published_us DESC, article_id DESC"
)
THRESHOLD_KEY = "catalog_min_quality"
PARSING_KEY = "catalog_parsing"  # what the rows were parsed with: limits, parser
BULK_LOAD_KEY = "catalog_bulk_load"  # an empty catalog is being filled: select all at the end
# Bump when the loader's output changes, so every file is parsed again.
# 3: published URLs normalised (IDNA, no credentials or tracking), caps and cuts with
# warnings, dates too far ahead refused, mojibake repaired before parsing.
PARSER_VERSION = "3"


Progress = Callable[[int, int], None]


@dataclass
class SyncReport:
    files: int = 0
    parsed: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # usable files with a warning


@dataclass
class FeedSelection:
    """The newest selected articles, overall and of every topic slug, as (path, digest of
    the record) newest first; every path of them once, newest first; a digest of them all."""

    newest: list[tuple[str, str]]
    topics: dict[str, list[tuple[str, str]]]
    paths: list[str]
    digest: str
    records: dict[str, str]  # path -> digest of its record, as read


@dataclass
class _SyncJob:
    """What one sync parses with, and how."""

    limits: Limits
    min_quality: int
    progress: Progress | None
    workers: int | None
    stop: threading.Event | None
    now: datetime


def _parsing(job: _SyncJob) -> str:
    """What rows parsed with these settings remember (``PARSING_KEY``)."""
    return f"{job.limits.key}:{PARSER_VERSION}:{codec.CODEC_VERSION}"


def _with_due(changes: Changes, due: dict[str, FileKey], kept: set[str]) -> list[FileJob]:
    """The changed files, plus the due rows that are not changed or removed anyway (nor
    ``kept``: in a folder that cannot be read now, they are kept as they are)."""
    listed = {job.path for job in changes.changed}.union(changes.removed)
    return sorted(changes.changed + [
        FileJob(path, key) for path, key in due.items() if path not in listed and path not in kept
    ])


class Catalog:
    """The parse cache and corpus index, in the state database's connection."""

    def __init__(self, db: Database) -> None:
        """``db`` must hold the schema: the state store creates it, or ``create_schema``."""
        self._db = db
        self._revision = 0  # of the write transaction under way

    @property
    def db(self) -> Database:
        return self._db

    # -- sync --------------------------------------------------------------------------------

    def sync(self, directory: Path, limits: Limits | int, min_quality: int,
             progress: Progress | None = None, workers: int | None = None,
             stop: threading.Event | None = None, allow_empty: bool = True,
             now: datetime | None = None, paths: Collection[str] | None = None) -> SyncReport:
        """Bring the catalog in line with the files under ``directory`` and the settings
        (``limits``: the loader's ``Limits``, or just its file size cap).

        Syncs are serialised across processes (a lock file beside the database), so two of
        them never interleave; readers are never blocked, and every state they can see is
        consistent: the threshold is applied first, parsed files are committed in batches,
        and removals come last with the scan they were based on, so an article present
        before and after a sync (a renamed file, say) is selected all along. ``stop`` ends a
        long sync between batches (``SyncInterrupted``); a later sync picks up from there.

        ``paths``: only these files changed since the last sync (a watcher's report; files
        and folders it does not name are taken as they were), so only they are looked at.
        When the settings changed, or the catalog is empty, every file is looked at anyway.

        A file refused for a date too far ahead (``now`` is when: the clock by default) is
        parsed again, unchanged, once its time comes: only such rows, found by an index.
        """
        if not directory.is_dir():
            raise ArticleError(f"articles folder not found: {display_path(directory)}")
        job = _SyncJob(Limits.of(limits), min_quality, progress, workers, stop,
                       now or datetime.now(UTC))
        try:
            with self._db.exclusive("sync", stop):
                if paths is not None and self._can_sync_paths(job):
                    report = self._sync_paths(directory, paths, job, allow_empty)
                    if report is not None:
                        return report
                return self._sync(directory, job, allow_empty)
        except Interrupted:
            raise SyncInterrupted("stopped while waiting for another sync") from None

    def _can_sync_paths(self, job: _SyncJob) -> bool:
        """Whether the rows are of these settings and complete, so that files no watcher
        reported are current."""
        return (self.get_meta(PARSING_KEY) == _parsing(job)
                and self.get_meta(THRESHOLD_KEY) == str(job.min_quality)
                and self.get_meta(BULK_LOAD_KEY) is None
                and self._db.execute("SELECT 1 FROM catalog LIMIT 1").fetchone() is not None)

    def _sync_paths(self, directory: Path, paths: Collection[str], job: _SyncJob,
                    allow_empty: bool) -> SyncReport | None:
        """The sync of ``paths`` alone; None when it would remove every row, which only a
        full sync may decide (``allow_empty``: an unmounted share looks empty)."""
        finder = ChangeFinder(self._db)
        changes = finder.changes_at(directory, paths)
        if changes.removed and not allow_empty:
            known = self._db.execute("SELECT count(*) FROM catalog").fetchone()[0]
            if known <= len(changes.removed):
                return None
        due = finder.due(to_microseconds(job.now))
        if due:
            changes.changed = _with_due(changes, due, set())
        report = SyncReport(removed=len(changes.removed))
        if changes.changed or changes.removed:
            self._parse_changed(changes, job, report)
            with self._transaction():
                self._remove(changes.removed, job.min_quality)
        report.files = self._db.execute("SELECT count(*) FROM catalog").fetchone()[0]
        return self._report(report)

    def _sync(self, directory: Path, job: _SyncJob, allow_empty: bool) -> SyncReport:
        min_quality = job.min_quality
        finder = ChangeFinder(self._db)
        scan = Scan.of(directory)
        if "" in scan.unreadable:
            raise ArticleError(
                f"cannot read the articles folder {display_path(directory)}: "
                f"{scan.unreadable['']}"
            )
        files = scan.files
        if not files and not scan.unreadable and not allow_empty:
            known = self._db.execute("SELECT count(*) FROM catalog").fetchone()[0]
            if known:
                raise ArticleError(
                    f"the articles folder {display_path(directory)} is empty, but {known} "
                    f"article {'file was' if known == 1 else 'files were'} known: not "
                    "forgetting them (an unmounted share looks empty); "
                    "set articles.allow_empty = true if they were removed on purpose"
                )
        parsing = _parsing(job)
        same_parsing = self.get_meta(PARSING_KEY) == parsing
        same_threshold = self.get_meta(THRESHOLD_KEY) == str(min_quality)
        due = finder.due(to_microseconds(job.now)) if same_parsing else {}
        if same_parsing and same_threshold and not due and finder.is_unchanged(scan):
            # Exactly the files (and keys) of the last completed sync: nothing to read.
            return self._report(SyncReport(files=files))
        changes, stored = finder.changes(scan, same_parsing)
        if scan.unreadable:
            changes.removed = _kept_under_unreadable_folders(scan, changes.removed)
        if due:
            changes.changed = _with_due(changes, due, scan.under_unreadable(due))
        unfinished_bulk_load = self.get_meta(BULK_LOAD_KEY) is not None
        if (not changes.changed and not changes.removed and same_threshold
                and not unfinished_bulk_load):
            # The same files, listed in another order: remember the new listing. (A bulk
            # load that died in its last transaction has every row and none selected yet:
            # it goes on to the end, where its rows are selected.)
            with self._transaction():
                finder.save_scan(scan, stored)
            return self._report(SyncReport(files=files))
        report = SyncReport(files=files, removed=len(changes.removed))
        with self._transaction():
            # Until this sync completes, the rows may be ahead of the stored scan. Rows
            # parsed with other settings are all parsed again, however far this sync gets.
            finder.forget_scan()
            if not same_parsing:
                self._db.execute("DELETE FROM meta WHERE key = ?", (PARSING_KEY,))
            if changes.cold:  # its rows are selected at the end, by whichever sync gets there
                self.set_meta(BULK_LOAD_KEY, "1")
                self.set_meta(PARSING_KEY, parsing)  # no row was parsed otherwise
            if not same_threshold:
                self._select_all(min_quality)
        self._parse_changed(changes, job, report)
        with self._transaction():
            self._remove(changes.removed, min_quality)
            if self.get_meta(BULK_LOAD_KEY) is not None:
                self._select_all(min_quality)
                self._db.execute("DELETE FROM meta WHERE key = ?", (BULK_LOAD_KEY,))
            self.set_meta(PARSING_KEY, parsing)
            finder.save_scan(scan, stored)
        return self._report(report)

    def _report(self, report: SyncReport) -> SyncReport:
        report.problems = self._problems()
        report.notices = self._notices()
        return report

    def _parse_changed(self, changes: Changes, job: _SyncJob, report: SyncReport) -> None:
        min_quality, stop = job.min_quality, job.stop
        batches = parse_files(changes.changed, job.limits, workers=job.workers,
                              progress=job.progress, now=job.now)
        # An empty catalog is filled in bulk and selected once at the end: no reader can
        # have seen any of it, so nothing it saw can change under it.
        if changes.cold:  # fewer, larger transactions
            batches = _regrouped(batches, COLD_COMMIT_FILES)
        for batch in batches:
            if stop is not None and stop.is_set():
                raise SyncInterrupted("stopped while reading article files")
            with self._transaction():
                if changes.cold:
                    self._insert(batch.rows)
                else:
                    self._add(batch.rows, min_quality)
            report.parsed += batch.parsed

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction, at the next revision (``REVISION_KEY``); in PostgreSQL also
        one catalog writer at a time, so revisions are committed in their order."""
        with self._db.transaction():
            self._db.lock_in_transaction("catalog")
            self._revision = self.revision() + 1
            self.set_meta(REVISION_KEY, str(self._revision))
            yield

    def revision(self) -> int:
        """The revision of the last committed write (0: none yet)."""
        return int(self.get_meta(REVISION_KEY) or 0)

    def _remove(self, paths: Sequence[str], min_quality: int) -> None:
        keys = self._url_keys(paths)
        for start in range(0, len(paths), 500):
            chunk = [(path,) for path in paths[start : start + 500]]
            self._db.executemany("DELETE FROM catalog WHERE path=?", chunk)
            self._db.executemany("DELETE FROM catalog_slugs WHERE path=?", chunk)
        for key in keys:
            self._select_one(key, min_quality)

    def _insert(self, rows: Sequence[CatalogRow]) -> None:
        """Rows of files the catalog has never seen, not yet selected."""
        revision = (self._revision,)
        self._db.executemany(_UPSERT_ROW, [row.columns() + revision for row in rows])
        self._db.executemany(
            "INSERT INTO catalog_slugs (path, slug, published_us, article_id) VALUES (?,?,?,?)",
            [(row.path, slug, row.published_us, row.article_id)
             for row in rows for slug in row.slugs],
        )

    def _add(self, rows: Sequence[CatalogRow], min_quality: int) -> None:
        before = self._previous([row.path for row in rows])
        keys = {was.url_key for was in before.values() if was.url_key is not None}
        known = self._ids_of_urls(
            [row.url_key for row in rows if row.path not in before and row.url_key is not None]
        )
        for row in rows:
            if row.path in before:
                kept = before[row.path].article_id
            else:
                kept = known.get(row.url_key) if row.url_key is not None else None
            self._upsert(_kept_ids(row, kept))
            if row.url_key is not None:
                keys.add(row.url_key)
        for key in keys:
            self._select_one(key, min_quality)

    def _previous(self, paths: Sequence[str]) -> dict[str, KnownRow]:
        """Path -> what the rows these paths have now say of their article."""
        rows = rows_in(self._db, "SELECT path, url_key, article_id FROM catalog "
                                 "WHERE path IN ({})", paths)
        return {path: KnownRow(key, identifier) for path, key, identifier in rows}

    def _ids_of_urls(self, url_keys: Sequence[str]) -> dict[str, str]:
        """url_key -> the article id of a row with that URL (the selected one first)."""
        # Each key's rows come in one query, in its order: the last row of a key wins, the
        # selected one, else the first path.
        return dict(rows_in(
            self._db, "SELECT url_key, article_id FROM catalog WHERE article_id IS NOT NULL "
            "AND url_key IN ({}) ORDER BY selected, path DESC", sorted(set(url_keys))))

    def _url_keys(self, paths: Sequence[str]) -> set[str]:
        return {was.url_key for was in self._previous(paths).values() if was.url_key is not None}

    def _problems(self) -> list[Problem]:
        rows = self._db.execute(
            "SELECT path, problem FROM catalog WHERE problem IS NOT NULL ORDER BY path"
        )
        return [Problem(Path(path), reason) for path, reason in rows]

    def _notices(self) -> list[Notice]:
        rows = self._db.execute(
            "SELECT path, warning FROM catalog WHERE warning IS NOT NULL ORDER BY path"
        )
        return [Notice(Path(path), warning) for path, warning in rows]

    def _upsert(self, row: CatalogRow) -> None:
        self._db.execute(_UPSERT_ROW, (*row.columns(), self._revision))
        self._db.execute("DELETE FROM catalog_slugs WHERE path=?", (row.path,))
        self._db.executemany(
            "INSERT INTO catalog_slugs (path, slug, published_us, article_id) VALUES (?,?,?,?)",
            [(row.path, slug, row.published_us, row.article_id) for slug in row.slugs],
        )

    def _select_one(self, url_key: str, min_quality: int) -> None:
        """Re-decide which record of one normalised URL is the selected one."""
        self._mark(f"url_key = ? AND path != coalesce(({_PICK}), '')",
                   (url_key, url_key, min_quality), 0)
        self._mark(f"path = ({_PICK})", (url_key, min_quality), 1)

    def _select_all(self, min_quality: int) -> None:
        self._db.execute("UPDATE catalog SET selected = 0, revision = ? WHERE selected = 1",
                         (self._revision,))
        self._db.execute(
            "UPDATE catalog SET selected = 1, revision = ? WHERE path IN (SELECT path FROM ("
            "  SELECT path, row_number() OVER ("
            "    PARTITION BY url_key ORDER BY published_us DESC, path DESC) AS copy"
            "  FROM catalog WHERE problem IS NULL AND published = 1 AND quality >= ?"
            ") AS ranked WHERE copy = 1)",
            (self._revision, min_quality),
        )
        self._db.execute(
            "UPDATE catalog_slugs SET selected = "
            "(SELECT selected FROM catalog c WHERE c.path = catalog_slugs.path)"
        )
        self.set_meta(THRESHOLD_KEY, str(min_quality))

    def _mark(self, where: str, params: tuple[Any, ...], value: int) -> None:
        paths = [
            row[0] for row in self._db.execute(
                f"SELECT path FROM catalog WHERE {where} AND selected != ?", (*params, value)
            )
        ]
        for path in paths:
            self._db.execute("UPDATE catalog SET selected = ?, revision = ? WHERE path = ?",
                             (value, self._revision, path))
            self._db.execute("UPDATE catalog_slugs SET selected = ? WHERE path = ?",
                             (value, path))

    # -- bookkeeping ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(upsert("meta", ("key", "value"), ("key",)), (key, value))

    # -- selection (answered from the materialised ``selected`` flag) -----------------------

    def selected_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM catalog WHERE selected = 1").fetchone()
        return int(row[0])

    def topic_slugs(self) -> list[str]:
        """The slugs with a selected article, in order: one index seek per slug (a plain
        DISTINCT would read every row of the table)."""
        rows = self._db.execute(_DISTINCT_SLUGS)
        return [row[0] for row in rows if row[0] is not None]

    def feed_articles(self, limit: int) -> tuple[list[Article], str]:
        """The articles the feeds show (the newest ``limit`` of every topic and of all),
        newest first, and a digest of exactly those records."""
        selection = self.feed_selection(limit)
        return self.articles_at(selection.paths), selection.digest

    def feed_selection(self, limit: int) -> FeedSelection:
        """What ``feed_articles`` returns, feed by feed, nothing decoded."""
        newest = [row[0] for row in self._db.execute(f"{_NEWEST} LIMIT ?", (limit,))]
        topics = {
            slug: [row[0] for row in self._db.execute(_TOPIC_NEWEST, (slug, limit))]
            for slug in self.topic_slugs()
        }
        rows = sorted(
            self._rows_at(list(set(newest).union(*topics.values())),
                          "published_us, article_id, digest"),
            key=lambda row: (row[1], row[2]), reverse=True,
        )
        digests = {row[0]: row[3] for row in rows}
        # A row another process removed between these queries is left out; the digest then
        # differs from the next build's, which renders again.
        return FeedSelection(
            newest=[(path, digests[path]) for path in newest if path in digests],
            topics={slug: [(path, digests[path]) for path in paths if path in digests]
                    for slug, paths in topics.items()},
            paths=[row[0] for row in rows],
            digest=hashlib.sha256("".join(row[3] for row in rows).encode()).hexdigest(),
            records=digests,
        )

    def articles_as_selected(self, selection: FeedSelection, paths: Sequence[str]
                             ) -> tuple[list[Article], set[str]]:
        """The articles at ``paths`` (some of ``selection.paths``), in that order, and the
        paths whose record another process changed or removed after ``selection`` was read:
        those articles are as they are now, not as ``selection`` digested them."""
        rows = {row[0]: (row[1], row[2]) for row in self._rows_at(paths, "digest, data")}
        articles = [stored_article(rows[path][1]) for path in paths if path in rows]
        moved = {
            path for path in paths
            if path not in rows or rows[path][0] != selection.records.get(path)
        }
        return articles, moved

    def articles_at(self, paths: Sequence[str]) -> list[Article]:
        """The articles of these catalog paths, in the given order."""
        data = {row[0]: row[1] for row in self._rows_at(paths, "data")}
        return [stored_article(data[path]) for path in paths if path in data]

    def _rows_at(self, paths: Sequence[str], columns: str) -> Iterator[tuple[Any, ...]]:
        yield from rows_in(self._db, f"SELECT path, {columns} FROM catalog WHERE path IN ({{}})",
                           paths)

    def selected_articles(self) -> Iterator[Article]:
        """Every selected article, newest first (decoded one at a time)."""
        query = "SELECT data FROM catalog WHERE selected = 1 ORDER BY published_us DESC, " \
                "article_id DESC"
        for row in self._db.execute(query):
            yield stored_article(row[0])

    def kept_ids(self) -> dict[str, str]:
        """Path -> the article id its file keeps (``_kept_ids``)."""
        rows = self._db.execute(
            "SELECT path, article_id FROM catalog WHERE article_id IS NOT NULL"
        )
        return {path: identifier for path, identifier in rows}

    def kept_id(self, path: str, url: str) -> tuple[str, str] | None:
        """The id a sync gives the article at ``path`` (``_kept_ids``), and the path it comes
        from: ``path`` itself when it keeps one, else a file with the same normalised URL;
        None when the catalog has neither (the id is then the URL's own)."""
        row = self._db.execute(
            "SELECT article_id FROM catalog WHERE path = ? AND article_id IS NOT NULL", (path,)
        ).fetchone()
        if row is not None:
            return row[0], path
        rows = self._db.execute(
            "SELECT article_id, path FROM catalog WHERE article_id IS NOT NULL AND url_key = ? "
            "ORDER BY selected, path DESC", (normalise_url(url),),
        ).fetchall()
        return (rows[-1][0], rows[-1][1]) if rows else None  # as ``_ids_of_urls`` picks

    def selected_article(self, article_id: str) -> Article | None:
        """The selected record of ``article_id``, or None when it is no longer selected."""
        row = self._db.execute(
            "SELECT data FROM catalog WHERE article_id = ? AND selected = 1", (article_id,)
        ).fetchone()
        return stored_article(row[0]) if row else None

    # -- for the feeds (``publisher.feeds``) ---------------------------------------------------

    def feed_files(self, place: str) -> dict[str, FeedFileRecord]:
        """The files the feeds' writer remembers at ``place``, by name."""
        rows = self._db.execute(
            "SELECT name, slug, settings, members, entries, size, digest FROM feed_files "
            "WHERE place = ?", (place,),
        )
        return {row[0]: FeedFileRecord(*row) for row in rows}

    def remember_feed_files(self, place: str, records: Iterable[FeedFileRecord]) -> None:
        """``records`` are now all the files at ``place``: the rows of others go."""
        with self._db.transaction():
            self._db.execute("DELETE FROM feed_files WHERE place = ?", (place,))
            self._db.executemany(
                "INSERT INTO feed_files (place, name, slug, settings, members, entries, size, "
                "digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(place, *record) for record in records],
            )


def _regrouped(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """The same rows in batches of at least ``size`` (the last one may be smaller)."""
    waiting: list[CatalogRow] = []
    parsed = 0
    for batch in batches:
        waiting.extend(batch.rows)
        parsed += batch.parsed
        if len(waiting) >= size:
            yield Batch(waiting, parsed)
            waiting, parsed = [], 0
    if waiting:
        yield Batch(waiting, parsed)


def create_schema(db: Database) -> None:
    for statement in catalog_schema(db.dialect):
        db.execute(statement)


def record_digest(article: Article) -> str:
    """The digest of the catalog record ``article`` was decoded from (column ``digest``)."""
    return codec.digest_of(article)


_UPSERT_ROW = upsert(
    "catalog",
    ("path", "file_key", "problem", "article_id", "url_key", "published", "quality",
     "published_us", "digest", "data", "warning", "recheck_us", "revision"),
    ("path",),
    # A new parse: selection is decided again. (The ledger's ``planned`` marks are by digest:
    # a changed record is unplanned, the same one read again is not planned twice.)
    also="selected = 0",
)


# -- files to rows -------------------------------------------------------------------------


def _kept_ids(row: CatalogRow, kept: str | None) -> CatalogRow:
    """``row`` as the article its path already was: the identity rule.

    A file that stays where it is holds the same article however its record changes, its
    ``webUrl`` included (a typo fixed): the ledger must not post it again, and its feed
    entry keeps its id. So a path keeps the id it had, in the row and in the article data;
    a bad parse in between keeps it too (the row remembers it). A new path takes the id of
    a row with the same normalised URL if there is one (a renamed file, whose old path
    still has its row while the new one is parsed), else the id of its URL
    (``models.article_id``): a renamed file with the same URL is the same article.
    """
    if kept is None or row.article_id == kept:
        return row
    if row.problem is not None or row.data is None:  # no article, but the id is remembered
        return row._replace(article_id=kept)
    article = dataclasses.replace(stored_article(row.data), id=kept)
    return _article_row(row.path, row.file_key, article, row.warning)


def _kept_under_unreadable_folders(scan: Scan, removed: list[str]) -> list[str]:
    """``removed`` without the files under folders the scan could not read (a failing disk,
    a permission, a folder renamed under the scan): only a listing that lacks a file says
    it is gone, and forgetting an article skips its pending posts for good."""
    for relative, reason in sorted(scan.unreadable.items()):
        log.warning("cannot read the article folder %s (%s): its articles are kept as they "
                    "were until it can be read", display_path(Path(scan.prefix + relative)), reason)
    folders = tuple(scan.prefix + relative for relative in scan.unreadable)
    return [path for path in removed if not path.startswith(folders)]


class KnownRow(NamedTuple):
    """What a catalog row says of the article at its path, for the identity rule."""

    url_key: str | None
    article_id: str | None


class CatalogRow(NamedTuple):
    """One file's row, as parsed: its columns in the catalog table, then its topic slugs."""

    path: str
    file_key: str  # ``scan.key_text`` of the key it was parsed at
    problem: str | None  # why the file is not usable; None for an article
    article_id: str | None
    url_key: str | None
    published: int
    quality: int
    published_us: int
    digest: str | None
    data: bytes | None  # ``codec``'s blob of the article
    warning: str | None  # what the loader cut or left out (one line)
    recheck_us: int | None  # parse again from then on (a date too far ahead)
    slugs: tuple[str, ...]

    def columns(self) -> tuple[Any, ...]:
        """The values of ``_UPSERT_ROW``'s columns."""
        return self[:-1]


class Batch(NamedTuple):
    """Rows of files, and how many of those files were parsed: a file refused before its
    content was read (a FIFO, too large, unreadable) has a row, but was not parsed."""

    rows: list[CatalogRow]
    parsed: int


def parse_files(jobs: Sequence[FileJob], limits: Limits | int = DEFAULT_LIMITS, *,
                workers: int | None = None, progress: Progress | None = None,
                now: datetime | None = None) -> Iterator[Batch]:
    """Rows for the given files in batches, parsed in worker processes when there are many;
    every file is judged against the same ``now``."""
    limits = Limits.of(limits)
    now = now or datetime.now(UTC)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    batches = [list(jobs[i : i + BATCH_FILES]) for i in range(0, len(jobs), BATCH_FILES)]
    done = 0
    if workers > 1 and len(jobs) >= PARALLEL_MIN_FILES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for parsed in pool.map(_parse_batch, batches, [limits] * len(batches),
                                   [now] * len(batches)):
                done += len(parsed.rows)
                if progress:
                    progress(done, len(jobs))
                yield parsed
        return
    for batch in batches:
        parsed = _parse_batch(batch, limits, now)
        done += len(parsed.rows)
        if progress:
            progress(done, len(jobs))
        yield parsed


def _parse_batch(batch: list[FileJob], limits: Limits, now: datetime) -> Batch:
    outcomes = [_row(path, key, limits, now) for path, key in batch]
    return Batch([row for row, _ in outcomes], sum(parsed for _, parsed in outcomes))


def _row(path: str, file_key: FileKey, limits: Limits, now: datetime
         ) -> tuple[CatalogRow, bool]:
    """The row of one file, and whether its content was parsed; any surprise becomes the
    file's problem."""
    key = key_text(file_key)
    try:
        outcome = read_file(Path(path), limits, size=file_key[0], now=now)
        if isinstance(outcome, Problem):
            recheck = outcome.recheck_at
            return _problem_row(path, key, outcome.reason,
                                to_microseconds(recheck) if recheck else None), outcome.parsed
        return _article_row(path, key, outcome.article, "; ".join(outcome.notes) or None), True
    except Exception as exc:  # never let one file stop the sync of all the others
        return _problem_row(path, key, f"unusable: {type(exc).__name__}: {exc}", None), True


def _problem_row(path: str, key: str, reason: str, recheck_us: int | None) -> CatalogRow:
    return CatalogRow(path, key, reason, None, None, 0, 0, 0, None, None, None, recheck_us, ())


def _article_row(path: str, key: str, article: Article, warning: str | None) -> CatalogRow:
    encoded = codec.encode(article)
    slugs = tuple(dict.fromkeys(topic_slug(name) for name in article.topics))
    return CatalogRow(
        path, key, None, article.id, normalise_url(article.url), int(article.published),
        article.quality, to_microseconds(article.published_at), encoded.digest, encoded.blob,
        warning, None, slugs,
    )


def to_microseconds(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def stored_article(data: bytes | memoryview | str) -> Article:
    """The article of a catalog row's ``data`` (``codec``: any version it wrote)."""
    return codec.decode(data)
