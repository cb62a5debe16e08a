"""The corpus catalog: a parse cache in the state database, and selection answered from it.

Each article file has one row keyed by its path, with the size, mtime and inode it had when
it was parsed. A sync stats every file and re-parses only those whose key changed (in worker
processes when there are many), drops rows of deleted files, and never serves a stale
article: any change of size, mtime or inode means a new parse.

Selection runs as SQL over the rows, with exactly the semantics of ``selection.select`` and
``selection.group_by_topic`` (the pure reference, which tests compare against), so a build
or a push holds in memory only the articles it is about to render or send, never the corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import marshal
import operator
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from publisher.db import Database, Interrupted, upsert
from publisher.errors import ArticleError
from publisher.errors import SyncInterrupted as SyncInterrupted
from publisher.loader import (
    DEFAULT_LIMITS,
    FileKey,
    Limits,
    Notice,
    Problem,
    ScanEntry,
    display_path,
    read_file,
    scan_chunks,
    scan_prefix,
)
from publisher.models import Article, Image, Provider, Related, normalise_url
from publisher.selection import topic_slug

log = logging.getLogger(__name__)

# Below this many changed files, worker processes cost more than they save.
PARALLEL_MIN_FILES = 2000
BATCH_FILES = 500
COLD_COMMIT_FILES = 5000  # an empty catalog is filled in fewer, larger transactions

def catalog_schema(dialect: str) -> list[str]:
    """The catalog's tables, for ``dialect`` ("sqlite" or "postgresql")."""
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    # The same predicate, spelled as each engine's planner recognises it for the index.
    unplanned = _unplanned_predicate(dialect)
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
            data {blob},  -- the normalised article: JSON, zlib-compressed
            selected BIGINT NOT NULL DEFAULT 0,
            planned TEXT,  -- the digest last planned into the ledger
            warning TEXT,  -- what the loader cut or left out of a usable file (one line)
            recheck_us BIGINT  -- parse again from then on (a date that was too far ahead)
        )""",
        "CREATE INDEX IF NOT EXISTS catalog_url ON catalog (url_key)",
        "CREATE INDEX IF NOT EXISTS catalog_article ON catalog (article_id)",
        "CREATE INDEX IF NOT EXISTS catalog_newest ON catalog (selected, published_us, article_id)",
        "CREATE INDEX IF NOT EXISTS catalog_problems ON catalog (path) WHERE problem IS NOT NULL",
        *_CHECKED_INDEXES,
        "CREATE INDEX IF NOT EXISTS catalog_unplanned ON catalog (published_us, article_id) "
        f"WHERE {unplanned}",
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
        # The last completed scan in chunks (see ``loader.scan_chunks``): each chunk's
        # entries (marshal), keyed by their digest.
        "CREATE TABLE IF NOT EXISTS catalog_scan "
        f"(digest {blob} PRIMARY KEY, data {blob} NOT NULL)",
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


# The columns (and their indexes) added to the catalog by schema 6, for ``upgrade_catalog``.
_CHECKED_COLUMNS = {"warning": "TEXT", "recheck_us": "BIGINT"}
_CHECKED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS catalog_warnings ON catalog (path) WHERE warning IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS catalog_recheck ON catalog (recheck_us) "
    "WHERE recheck_us IS NOT NULL",
)


def upgrade_catalog(db: Database) -> None:
    """Add the columns newer than a stored catalog (within the caller's transaction); its
    rows are parsed again anyway, as ``PARSER_VERSION`` changed with them."""
    if db.dialect == "sqlite":
        present = {row[1] for row in db.execute("PRAGMA table_info(catalog)")}
        if not present:
            return  # no catalog yet: ``catalog_schema`` creates it whole
        for column, kind in _CHECKED_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE catalog ADD COLUMN {column} {kind}")
    else:
        if db.execute("SELECT to_regclass('catalog')").fetchone()[0] is None:
            return
        for column, kind in _CHECKED_COLUMNS.items():
            db.execute(f"ALTER TABLE catalog ADD COLUMN IF NOT EXISTS {column} {kind}")


def _unplanned_predicate(dialect: str) -> str:
    distinct = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return f"selected = 1 AND planned {distinct} digest"


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
_SAVE_CHUNK = upsert("catalog_scan", ("digest", "data"), ("digest",))
FINGERPRINT_KEY = "catalog_scan_fingerprint"  # a hash of the folder and every chunk digest
# The folder the stored chunks are relative to; absent while a sync is under way (its rows
# may be ahead of the chunks) or when there are none.
SCAN_ROOT_KEY = "catalog_scan_root"
PARSING_KEY = "catalog_parsing"  # what the rows were parsed with: limits, parser
BULK_LOAD_KEY = "catalog_bulk_load"  # an empty catalog is being filled: select all at the end
# Bump when the loader's output changes, so every file is parsed again.
# 3: published URLs normalised (IDNA, no credentials or tracking), caps and cuts with
# warnings, dates too far ahead refused, mojibake repaired before parsing.
PARSER_VERSION = "3"
URL_KEY = 4  # a row's url_key column
WARNING = 10  # a row's warning column


Row = tuple[Any, ...]
Progress = Callable[[int, int], None]


@dataclass
class SyncReport:
    files: int = 0
    parsed: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # usable files with a warning


# A file changed this shortly before a scan may be written again after it was read, within
# the same tick of the file system's clock and at the same size: its key would not change.
# Such a "racy" file (git's word) is saved with a size of -1, which no stat gives, so every
# sync reads it again until it is older. Local Linux file systems stamp in ticks of a few
# ms; FAT in 2 s steps, and network file systems with the server's clock.
RACY_NS = 2_000_000_000
_CTIME = operator.itemgetter(3)  # of a ScanEntry


@dataclass
class Scan:
    """What a sync found on disk: the chunks of ``loader.scan_chunks`` with their digests
    and a fingerprint of them all and of the folder, compared with what the last sync
    saved; and what this one saves: the same, but for racy files (``RACY_NS``)."""

    prefix: str
    chunks: list[list[ScanEntry]]
    digests: list[bytes]
    fingerprint: str
    saved: list[tuple[bytes, bytes]]  # (digest, marshalled entries) of each chunk
    saved_fingerprint: str
    racy_since: int  # a file whose ctime_ns is this or later is racy
    unreadable: dict[str, str]  # folders that could not be read (see ``loader.Listing``)

    @classmethod
    def of(cls, directory: Path) -> Scan:
        racy_since = time.time_ns() - RACY_NS
        prefix = scan_prefix(directory)
        listing = scan_chunks(directory)
        digests: list[bytes] = []
        saved: list[tuple[bytes, bytes]] = []
        for chunk in listing.chunks:
            blob = marshal.dumps(chunk)
            digests.append(_chunk_digest(blob))
            if max(map(_CTIME, chunk)) >= racy_since:
                blob = marshal.dumps(
                    [(entry[0], *_saved_key(entry[1:], racy_since)) for entry in chunk]
                )
                saved.append((_chunk_digest(blob), blob))
            else:
                saved.append((digests[-1], blob))
        return cls(
            prefix, listing.chunks, digests, _scan_fingerprint(prefix, digests), saved,
            _scan_fingerprint(prefix, [digest for digest, _ in saved]), racy_since,
            listing.unreadable,
        )

    @property
    def files(self) -> int:
        return sum(map(len, self.chunks))

    def keys(self, chunks: Iterable[int]) -> dict[str, FileKey]:
        """Path -> key of the files in these chunks."""
        prefix = self.prefix
        return {prefix + entry[0]: entry[1:] for index in chunks for entry in self.chunks[index]}

    def to_parse(self, changed: Iterable[tuple[str, FileKey]]) -> list[FileJob]:
        """Changed files, sorted, with the keys to save for them."""
        return sorted((path, _saved_key(key, self.racy_since)) for path, key in changed)


def _saved_key(key: FileKey, racy_since: int) -> FileKey:
    return (-1, key[1], key[2], key[3]) if key[2] >= racy_since else key


def _chunk_digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _scan_fingerprint(prefix: str, digests: list[bytes]) -> str:
    whole = hashlib.blake2b(prefix.encode("utf-8", "surrogateescape"), digest_size=16)
    whole.update(b"".join(digests))
    return whole.hexdigest()


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


def _with_due(changes: Changes, due: dict[str, FileKey], scan: Scan) -> list[FileJob]:
    """The changed files, plus the due rows that are not changed or removed anyway (nor in
    a folder that cannot be read now: they are kept as they are, see ``Listing``)."""
    listed = {path for path, _ in changes.changed}.union(changes.removed)
    unreadable = tuple(scan.prefix + relative for relative in scan.unreadable)
    return sorted(changes.changed + [
        (path, key) for path, key in due.items()
        if path not in listed and not (unreadable and path.startswith(unreadable))
    ])


@dataclass
class Changes:
    changed: list[FileJob]  # files to parse, sorted by path
    removed: list[str]  # paths that are gone, sorted
    cold: bool  # the catalog was empty


class Catalog:
    """The parse cache and corpus index, in the state database's connection."""

    def __init__(self, db: Database) -> None:
        """``db`` must hold the schema: the state store creates it, or ``create_schema``."""
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    # -- sync --------------------------------------------------------------------------------

    def sync(self, directory: Path, limits: Limits | int, min_quality: int,
             progress: Progress | None = None, workers: int | None = None,
             stop: threading.Event | None = None, allow_empty: bool = True,
             now: datetime | None = None) -> SyncReport:
        """Bring the catalog in line with the files under ``directory`` and the settings
        (``limits``: the loader's ``Limits``, or just its file size cap).

        Syncs are serialised across processes (a lock file beside the database), so two of
        them never interleave; readers are never blocked, and every state they can see is
        consistent: the threshold is applied first, parsed files are committed in batches,
        and removals come last with the scan they were based on, so an article present
        before and after a sync (a renamed file, say) is selected all along. ``stop`` ends a
        long sync between batches (``SyncInterrupted``); a later sync picks up from there.

        A file refused for a date too far ahead (``now`` is when: the clock by default) is
        parsed again, unchanged, once its time comes: only such rows, found by an index.
        """
        if not directory.is_dir():
            raise ArticleError(f"articles folder not found: {display_path(directory)}")
        job = _SyncJob(Limits.of(limits), min_quality, progress, workers, stop,
                       now or datetime.now(UTC))
        try:
            with self._db.exclusive("sync", stop):
                return self._sync(directory, job, allow_empty)
        except Interrupted:
            raise SyncInterrupted("stopped while waiting for another sync") from None

    def _sync(self, directory: Path, job: _SyncJob, allow_empty: bool) -> SyncReport:
        min_quality = job.min_quality
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
        parsing = f"{job.limits.key}:{PARSER_VERSION}"
        same_parsing = self.get_meta(PARSING_KEY) == parsing
        same_threshold = self.get_meta(THRESHOLD_KEY) == str(min_quality)
        due = self._due(job.now) if same_parsing else {}
        if (same_parsing and same_threshold and not due
                and self.get_meta(FINGERPRINT_KEY) == scan.fingerprint):
            # Exactly the files (and keys) of the last completed sync: nothing to read.
            return self._report(SyncReport(files=files))
        stored = self._stored_digests(scan.prefix) if same_parsing else None
        changes = self._changes_in_chunks(scan, stored) if stored is not None else None
        if changes is None:  # no usable stored scan: compare with the rows themselves
            stored = None
            changes = self._changes_from_rows(scan, same_parsing)
        if scan.unreadable:
            changes.removed = _kept_under_unreadable_folders(scan, changes.removed)
        if due:
            changes.changed = _with_due(changes, due, scan)
        unfinished_bulk_load = self.get_meta(BULK_LOAD_KEY) is not None
        if (not changes.changed and not changes.removed and same_threshold
                and not unfinished_bulk_load):
            # The same files, listed in another order: remember the new listing. (A bulk
            # load that died in its last transaction has every row and none selected yet:
            # it goes on to the end, where its rows are selected.)
            with self._transaction():
                self._save_scan(scan, stored)
            return self._report(SyncReport(files=files))
        report = SyncReport(files=files, removed=len(changes.removed))
        with self._transaction():
            # Until this sync completes, the rows may be ahead of the stored scan: say so,
            # and an interrupted sync is followed by a comparison with the rows, which
            # parses only what it had not committed yet. Rows parsed with other settings
            # are all parsed again, however far this sync gets.
            stale = (FINGERPRINT_KEY, SCAN_ROOT_KEY) + (() if same_parsing else (PARSING_KEY,))
            self._db.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(stale))})",
                             stale)
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
            self._save_scan(scan, stored)
        return self._report(report)

    def _report(self, report: SyncReport) -> SyncReport:
        report.problems = self._problems()
        report.notices = self._notices()
        return report

    def _due(self, now: datetime) -> dict[str, FileKey]:
        """Rows to parse again although their file did not change: their time has come."""
        rows = self._db.execute(
            "SELECT path, file_key FROM catalog WHERE recheck_us IS NOT NULL AND recheck_us <= ?",
            (to_microseconds(now),),
        )
        return {path: _key_from_text(text) for path, text in rows}

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

    def _changes_from_rows(self, scan: Scan, same_parsing: bool) -> Changes:
        """Every file compared with the catalog's rows (no usable stored scan)."""
        previous = {
            path: _key_from_text(text)
            for path, text in self._db.execute("SELECT path, file_key FROM catalog")
        }
        on_disk = scan.keys(range(len(scan.chunks)))
        # Set differences run in C: at 100,000 files a Python loop would cost more.
        changed = on_disk.items() - previous.items() if same_parsing else on_disk.items()
        return Changes(scan.to_parse(changed), sorted(previous.keys() - on_disk.keys()),
                       cold=not previous)

    def _changes_in_chunks(self, scan: Scan, stored: set[bytes]) -> Changes | None:
        """The files of the chunks that are new, compared with those of the stored chunks
        that are gone: every other file is in a chunk that is exactly as it was. None when
        a stored chunk cannot be read."""
        fresh = [i for i, digest in enumerate(scan.digests) if digest not in stored]
        gone = list(stored.difference(scan.digests))
        before: dict[str, FileKey] = {}
        for start in range(0, len(gone), 500):
            chunk = gone[start : start + 500]
            rows = self._db.execute(
                f"SELECT data FROM catalog_scan WHERE digest IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for (data,) in rows:
                try:
                    before.update(
                        (scan.prefix + entry[0], tuple(entry[1:])) for entry in marshal.loads(data)
                    )
                except (EOFError, ValueError, TypeError, IndexError):
                    return None
        now = scan.keys(fresh)
        removed = before.keys() - now.keys()
        if removed:  # a listing made while the folder changed can hold a name twice
            removed -= scan.keys(range(len(scan.chunks))).keys()
        # No stored chunk: the last sync found no file, and the catalog should be empty.
        cold = not stored and self._db.execute("SELECT 1 FROM catalog LIMIT 1").fetchone() is None
        return Changes(scan.to_parse(now.items() - before.items()), sorted(removed), cold=cold)

    def _stored_digests(self, prefix: str) -> set[bytes] | None:
        """The chunk digests of the last completed scan of the folder at ``prefix``; None
        when there is none (a new state, another folder, or a sync that did not complete)."""
        if self.get_meta(SCAN_ROOT_KEY) != prefix:
            return None
        return {bytes(row[0]) for row in self._db.execute("SELECT digest FROM catalog_scan")}

    def _save_scan(self, scan: Scan, stored: set[bytes] | None) -> None:
        """Store the chunks that are new and drop those that are gone (all of them when
        ``stored`` is None), then the folder and the fingerprint. While a folder cannot be
        read, no scan is kept: the next sync compares with the rows, which kept its files,
        so what was deleted from it meanwhile is seen once it can be read."""
        if scan.unreadable:
            self._db.execute("DELETE FROM catalog_scan")
            self._db.execute("DELETE FROM meta WHERE key IN (?, ?)",
                             (SCAN_ROOT_KEY, FINGERPRINT_KEY))
            return
        if stored is None:
            self._db.execute("DELETE FROM catalog_scan")
            stored = set()
        saved = {digest for digest, _ in scan.saved}
        self._db.executemany("DELETE FROM catalog_scan WHERE digest = ?",
                             [(digest,) for digest in stored.difference(saved)])
        self._db.executemany(
            _SAVE_CHUNK, [(digest, blob) for digest, blob in scan.saved if digest not in stored]
        )
        self.set_meta(SCAN_ROOT_KEY, scan.prefix)
        self.set_meta(FINGERPRINT_KEY, scan.saved_fingerprint)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction; in PostgreSQL also one catalog writer at a time, so a sync
        and another instance's ``mark_planned`` never deadlock on rows in different orders."""
        with self._db.transaction():
            self._db.lock_in_transaction("catalog")
            yield

    def _remove(self, paths: Sequence[str], min_quality: int) -> None:
        keys = self._url_keys(paths)
        for start in range(0, len(paths), 500):
            chunk = [(path,) for path in paths[start : start + 500]]
            self._db.executemany("DELETE FROM catalog WHERE path=?", chunk)
            self._db.executemany("DELETE FROM catalog_slugs WHERE path=?", chunk)
        for key in keys:
            self._select_one(key, min_quality)

    def _insert(self, rows: Sequence[Row]) -> None:
        """Rows of files the catalog has never seen, not yet selected."""
        self._db.executemany(_UPSERT_ROW, [row[:-1] for row in rows])
        self._db.executemany(
            "INSERT INTO catalog_slugs (path, slug, published_us, article_id) VALUES (?,?,?,?)",
            [(row[0], slug, row[7], row[3]) for row in rows for slug in row[-1]],
        )

    def _add(self, rows: Sequence[Row], min_quality: int) -> None:
        before = self._previous([row[0] for row in rows])
        keys = {key for key, _ in before.values() if key is not None}  # the URLs they had
        known = self._ids_of_urls(
            [row[URL_KEY] for row in rows if row[0] not in before and row[URL_KEY] is not None]
        )
        for row in rows:
            kept = before[row[0]][1] if row[0] in before else known.get(row[URL_KEY])
            self._upsert(_kept_ids(row, kept))
            if row[URL_KEY] is not None:
                keys.add(row[URL_KEY])
        for key in keys:
            self._select_one(key, min_quality)

    def _previous(self, paths: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """Path -> (url_key, article_id) of the rows these paths have now."""
        found: dict[str, tuple[str | None, str | None]] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            rows = self._db.execute(
                f"SELECT path, url_key, article_id FROM catalog WHERE path IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update((path, (key, identifier)) for path, key, identifier in rows)
        return found

    def _ids_of_urls(self, url_keys: Sequence[str]) -> dict[str, str]:
        """url_key -> the article id of a row with that URL (the selected one first)."""
        found: dict[str, str] = {}
        unique = sorted(set(url_keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._db.execute(
                f"SELECT url_key, article_id FROM catalog WHERE article_id IS NOT NULL "
                f"AND url_key IN ({','.join('?' * len(chunk))}) ORDER BY selected, path DESC",
                chunk,
            )
            found.update(rows)  # the last row of a key wins: the selected one, else the first path
        return found

    def _url_keys(self, paths: Sequence[str]) -> set[str]:
        return {key for key, _ in self._previous(paths).values() if key is not None}

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

    def _upsert(self, row: Row) -> None:
        *columns, slugs = row
        path, article, published_us = columns[0], columns[3], columns[7]
        self._db.execute(_UPSERT_ROW, columns)
        self._db.execute("DELETE FROM catalog_slugs WHERE path=?", (path,))
        self._db.executemany(
            "INSERT INTO catalog_slugs (path, slug, published_us, article_id) VALUES (?,?,?,?)",
            [(path, slug, published_us, article) for slug in slugs],
        )

    def _select_one(self, url_key: str, min_quality: int) -> None:
        """Re-decide which record of one normalised URL is the selected one."""
        self._mark(f"url_key = ? AND path != coalesce(({_PICK}), '')",
                   (url_key, url_key, min_quality), 0)
        self._mark(f"path = ({_PICK})", (url_key, min_quality), 1)

    def _select_all(self, min_quality: int) -> None:
        self._db.execute("UPDATE catalog SET selected = 0 WHERE selected = 1")
        self._db.execute(
            "UPDATE catalog SET selected = 1 WHERE path IN (SELECT path FROM ("
            "  SELECT path, row_number() OVER ("
            "    PARTITION BY url_key ORDER BY published_us DESC, path DESC) AS copy"
            "  FROM catalog WHERE problem IS NULL AND published = 1 AND quality >= ?"
            ") AS ranked WHERE copy = 1)",
            (min_quality,),
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
            self._db.execute("UPDATE catalog SET selected = ? WHERE path = ?", (value, path))
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
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            yield from self._db.execute(
                f"SELECT path, {columns} FROM catalog WHERE path IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )

    def selected_articles(self) -> Iterator[Article]:
        """Every selected article, newest first (decoded one at a time)."""
        query = "SELECT data FROM catalog WHERE selected = 1 ORDER BY published_us DESC, " \
                "article_id DESC"
        for row in self._db.execute(query):
            yield stored_article(row[0])

    def unplanned_articles(self) -> list[Article]:
        """Selected articles whose current record has not been planned into the ledger."""
        hint = " INDEXED BY catalog_unplanned" if self._db.dialect == "sqlite" else ""
        query = (
            f"SELECT data FROM catalog{hint} WHERE {_unplanned_predicate(self._db.dialect)} "
            "ORDER BY published_us, article_id"
        )
        return [stored_article(row[0]) for row in self._db.execute(query)]

    def mark_planned(self, articles: Iterable[Article]) -> None:
        """Remember that these records (exactly these versions) are planned into the ledger."""
        rows = [
            (_digest(article_to_json(article)), article.source_path) for article in articles
        ]
        with self._transaction():
            self._db.executemany(
                "UPDATE catalog SET planned = digest WHERE digest = ? AND path = ? "
                "AND selected = 1", rows,
            )

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
    waiting: list[Row] = []
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


def _digest(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()[:16]


_UPSERT_ROW = upsert(
    "catalog",
    ("path", "file_key", "problem", "article_id", "url_key", "published", "quality",
     "published_us", "digest", "data", "warning", "recheck_us"),
    ("path",),
    # A new parse: selection is decided again. ``planned`` is kept: it is the digest of the
    # record last planned, so a changed record is unplanned and the same one read again
    # (a touched or racy file) is not planned twice.
    also="selected = 0",
)


# -- files to rows -------------------------------------------------------------------------


def _kept_ids(row: Row, kept: str | None) -> Row:
    """``row`` as the article its path already was: the identity rule.

    A file that stays where it is holds the same article however its record changes, its
    ``webUrl`` included (a typo fixed): the ledger must not post it again, and its feed
    entry keeps its id. So a path keeps the id it had, in the row and in the article data;
    a bad parse in between keeps it too (the row remembers it). A new path takes the id of
    a row with the same normalised URL if there is one (a renamed file, whose old path
    still has its row while the new one is parsed), else the id of its URL
    (``models.article_id``): a renamed file with the same URL is the same article.
    """
    if kept is None or row[3] == kept:
        return row
    if row[2] is not None:  # a problem row: no article, but the id is remembered
        return (*row[:3], kept, *row[4:])
    article = dataclasses.replace(stored_article(row[9]), id=kept)
    return _article_row(row[0], row[1], article, row[WARNING])


def _kept_under_unreadable_folders(scan: Scan, removed: list[str]) -> list[str]:
    """``removed`` without the files under folders the scan could not read (a failing disk,
    a permission, a folder renamed under the scan): only a listing that lacks a file says
    it is gone, and forgetting an article skips its pending posts for good."""
    for relative, reason in sorted(scan.unreadable.items()):
        log.warning("cannot read the article folder %s (%s): its articles are kept as they "
                    "were until it can be read", display_path(Path(scan.prefix + relative)), reason)
    folders = tuple(scan.prefix + relative for relative in scan.unreadable)
    return [path for path in removed if not path.startswith(folders)]


def key_text(key: FileKey) -> str:
    return " ".join(map(str, key))


def _key_from_text(text: str) -> FileKey:
    size, mtime, ctime, inode = (int(part) for part in text.split())
    return (size, mtime, ctime, inode)


FileJob = tuple[str, FileKey]


class Batch(NamedTuple):
    """Rows of files, and how many of those files were parsed: a file refused before its
    content was read (a FIFO, too large, unreadable) has a row, but was not parsed."""

    rows: list[Row]
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


def _row(path: str, file_key: FileKey, limits: Limits, now: datetime) -> tuple[Row, bool]:
    """(path, file_key, problem, article_id, url_key, published, quality, published_us,
    digest, data, warning, recheck_us, slugs) for one file, and whether its content was
    parsed; any surprise becomes the file's problem."""
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


def _problem_row(path: str, key: str, reason: str, recheck_us: int | None) -> Row:
    return (path, key, reason, None, None, 0, 0, 0, None, None, None, recheck_us, ())


def _article_row(path: str, key: str, article: Article, warning: str | None) -> Row:
    data = article_to_json(article)
    slugs = tuple(dict.fromkeys(topic_slug(name) for name in article.topics))
    # Compressed: a third of the bytes to pass from the workers and write to the state.
    packed = zlib.compress(data.encode("utf-8", "surrogatepass"), 1)
    return (
        path, key, None, article.id, normalise_url(article.url), int(article.published),
        article.quality, to_microseconds(article.published_at), _digest(data), packed,
        warning, None, slugs,
    )


def to_microseconds(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# -- Article <-> JSON -----------------------------------------------------------------------


def article_to_json(article: Article) -> str:
    return json.dumps(
        [
            article.id, article.title, article.url, article.published_at.isoformat(),
            article.excerpt, [article.provider.name, article.provider.domain],
            list(article.topics), [_image_fields(i) for i in article.images],
            [_related_fields(r) for r in article.related], article.quality, article.heat,
            article.published, article.type, article.amp_url, article.source_path,
        ],
        ensure_ascii=False, separators=(",", ":"),
    )


def stored_article(data: bytes | memoryview | str) -> Article:
    """The article of a catalog row's ``data`` (compressed JSON; plain in older rows)."""
    if isinstance(data, str):
        return article_from_json(data)
    return article_from_json(zlib.decompress(data).decode("utf-8", "surrogatepass"))


def article_from_json(text: str) -> Article:
    (identifier, title, url, published_at, excerpt, provider, topics, images, related,
     quality, heat, published, kind, amp_url, source_path) = json.loads(text)
    return Article(
        id=identifier, title=title, url=url,
        published_at=datetime.fromisoformat(published_at), excerpt=excerpt,
        provider=Provider(*provider), topics=tuple(topics),
        images=tuple(Image(*fields) for fields in images),
        related=tuple(_related_from(fields) for fields in related),
        quality=quality, heat=heat, published=published, type=kind, amp_url=amp_url,
        source_path=source_path,
    )


def _image_fields(image: Image) -> list[Any]:
    return [image.url, image.width, image.height, image.title]


def _related_fields(related: Related) -> list[Any]:
    provider = [related.provider.name, related.provider.domain] if related.provider else None
    image = _image_fields(related.image) if related.image else None
    return [related.title, related.url, related.excerpt, provider, related.quality, image]


def _related_from(fields: list[Any]) -> Related:
    title, url, excerpt, provider, quality, image = fields
    return Related(
        title=title, url=url, excerpt=excerpt,
        provider=Provider(*provider) if provider else None, quality=quality,
        image=Image(*image) if image else None,
    )
