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

import hashlib
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from publisher.errors import ArticleError
from publisher.loader import Problem, iter_article_files, load_file
from publisher.models import Article, Image, Provider, Related, normalise_url
from publisher.selection import topic_slug

# Below this many changed files, worker processes cost more than they save.
PARALLEL_MIN_FILES = 2000
BATCH_FILES = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    problem TEXT,
    article_id TEXT,
    url_key TEXT,
    published INTEGER NOT NULL DEFAULT 0,
    quality INTEGER NOT NULL DEFAULT 0,
    published_us INTEGER NOT NULL DEFAULT 0,
    digest TEXT,
    data TEXT
);
CREATE INDEX IF NOT EXISTS catalog_selectable ON catalog (published, quality);
CREATE INDEX IF NOT EXISTS catalog_article ON catalog (article_id);
CREATE TABLE IF NOT EXISTS catalog_topics (
    path TEXT NOT NULL,
    position INTEGER NOT NULL,
    slug TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (path, position)
);
CREATE INDEX IF NOT EXISTS catalog_topics_slug ON catalog_topics (slug, path);
"""

# Published, good enough, and the newest record of its normalised URL (ties: later path).
_SELECTED = """
SELECT * FROM (
    SELECT path, article_id, published_us, data, digest,
           row_number() OVER (
               PARTITION BY url_key ORDER BY published_us DESC, path DESC
           ) AS copy
    FROM catalog
    WHERE problem IS NULL AND published = 1 AND quality >= :min_quality
) WHERE copy = 1
"""

# The newest :limit of every topic and of all: exactly what the feeds can show.
_FEED_ARTICLES = f"""
WITH selected AS ({_SELECTED}),
topic_rank AS (
    SELECT s.path,
           row_number() OVER (
               PARTITION BY t.slug ORDER BY s.published_us DESC, s.article_id DESC
           ) AS place
    FROM selected s JOIN (SELECT DISTINCT path, slug FROM catalog_topics) t ON t.path = s.path
),
overall AS (
    SELECT path FROM selected ORDER BY published_us DESC, article_id DESC LIMIT :limit
)
SELECT data, digest FROM selected
WHERE path IN (SELECT path FROM topic_rank WHERE place <= :limit UNION SELECT path FROM overall)
ORDER BY published_us DESC, article_id DESC
"""

Row = tuple[Any, ...]
Progress = Callable[[int, int], None]


@dataclass
class SyncReport:
    files: int = 0
    parsed: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.parsed or self.removed)


class Catalog:
    """The parse cache and corpus index, in the state database's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        """``db`` must hold the schema: the state store creates it, or ``create_schema``."""
        self._db = db

    # -- sync --------------------------------------------------------------------------------

    def sync(self, directory: Path, max_file_bytes: int, progress: Progress | None = None,
             workers: int | None = None) -> SyncReport:
        """Bring the catalog in line with the files under ``directory``."""
        if not directory.is_dir():
            raise ArticleError(f"articles folder not found: {directory}")
        on_disk = scan(directory)
        known = {
            row[0]: (row[1], row[2], row[3])
            for row in self._db.execute("SELECT path, size, mtime_ns, inode FROM catalog")
        }
        changed = [(path, key) for path, key in on_disk.items() if known.get(path) != key]
        removed = [path for path in known if path not in on_disk]
        report = SyncReport(files=len(on_disk), removed=len(removed))
        rows = parse_files(changed, max_file_bytes, workers=workers, progress=progress)
        self._store(rows, removed, report)
        report.problems = [
            Problem(Path(path), reason)
            for path, reason in self._db.execute(
                "SELECT path, problem FROM catalog WHERE problem IS NOT NULL ORDER BY path"
            )
        ]
        return report

    def _store(self, rows: Iterable[Row], removed: Sequence[str], report: SyncReport) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(removed), 500):
                chunk = [(path,) for path in removed[start : start + 500]]
                self._db.executemany("DELETE FROM catalog WHERE path=?", chunk)
                self._db.executemany("DELETE FROM catalog_topics WHERE path=?", chunk)
            for row in rows:
                self._upsert(row)
                report.parsed += 1
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _upsert(self, row: Row) -> None:
        *columns, topics = row
        self._db.execute(
            "INSERT OR REPLACE INTO catalog (path, size, mtime_ns, inode, problem, article_id, "
            "url_key, published, quality, published_us, digest, data) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            columns,
        )
        self._db.execute("DELETE FROM catalog_topics WHERE path=?", (columns[0],))
        self._db.executemany(
            "INSERT INTO catalog_topics (path, position, slug, name) VALUES (?,?,?,?)",
            [(columns[0], position, slug, name) for position, slug, name in topics],
        )

    # -- bookkeeping ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- selection ---------------------------------------------------------------------------

    def selected_count(self, min_quality: int) -> int:
        query = f"SELECT count(*) FROM ({_SELECTED})"
        return int(self._db.execute(query, {"min_quality": min_quality}).fetchone()[0])

    def topic_count(self, min_quality: int) -> int:
        query = (
            f"SELECT count(DISTINCT t.slug) FROM ({_SELECTED}) s "
            "JOIN catalog_topics t ON t.path = s.path"
        )
        return int(self._db.execute(query, {"min_quality": min_quality}).fetchone()[0])

    def feed_articles(self, min_quality: int, limit: int) -> tuple[list[Article], str]:
        """The articles the feeds show, newest first, and a digest of exactly those."""
        rows = self._db.execute(
            _FEED_ARTICLES, {"min_quality": min_quality, "limit": limit}
        ).fetchall()
        digest = hashlib.sha256("".join(row[1] for row in rows).encode()).hexdigest()
        return [article_from_json(row[0]) for row in rows], digest

    def selected_articles(self, min_quality: int) -> Iterator[Article]:
        """Every selected article, newest first (decoded one at a time)."""
        query = f"{_SELECTED} ORDER BY published_us DESC, article_id DESC"
        for row in self._db.execute(query, {"min_quality": min_quality}):
            yield article_from_json(row[3])

    def unplanned_articles(self, min_quality: int, planned: str) -> list[Article]:
        """Selected articles whose id appears in no row of ``planned`` (a table name)."""
        query = (
            f"SELECT data FROM ({_SELECTED}) s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {planned} d WHERE d.article_id = s.article_id) "
            "ORDER BY published_us, article_id"
        )
        return [article_from_json(row[0]) for row in self._db.execute(query, {
            "min_quality": min_quality})]

    def selected_article(self, article_id: str, min_quality: int) -> Article | None:
        """The selected record of ``article_id``, or None when it is no longer selected."""
        # The id is a function of the normalised URL, so its records are exactly the copies
        # that the selection's de-duplication compares.
        row = self._db.execute(
            "SELECT data FROM catalog WHERE article_id = ? AND problem IS NULL AND published = 1 "
            "AND quality >= ? ORDER BY published_us DESC, path DESC LIMIT 1",
            (article_id, min_quality),
        ).fetchone()
        return article_from_json(row[0]) if row else None


def create_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


# -- files to rows -------------------------------------------------------------------------


def scan(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every article file with its (size, mtime_ns, inode); unreadable ones get a zero key."""
    found: dict[str, tuple[int, int, int]] = {}
    for path in iter_article_files(directory):
        try:
            stat = path.stat()
        except OSError:
            found[str(path)] = (0, 0, 0)
            continue
        found[str(path)] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return found


FileJob = tuple[str, tuple[int, int, int]]


def parse_files(jobs: Sequence[FileJob], max_file_bytes: int, *, workers: int | None = None,
                progress: Progress | None = None) -> Iterator[Row]:
    """Rows for the given files, parsed in worker processes when there are many."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    batches = [list(jobs[i : i + BATCH_FILES]) for i in range(0, len(jobs), BATCH_FILES)]
    done = 0
    if workers > 1 and len(jobs) >= PARALLEL_MIN_FILES:
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for rows in pool.map(_parse_batch, batches, [max_file_bytes] * len(batches)):
                done += len(rows)
                if progress:
                    progress(done, len(jobs))
                yield from rows
        return
    for batch in batches:
        rows = _parse_batch(batch, max_file_bytes)
        done += len(rows)
        if progress:
            progress(done, len(jobs))
        yield from rows


def _parse_batch(batch: list[FileJob], max_file_bytes: int) -> list[Row]:
    return [_row(path, key, max_file_bytes) for path, key in batch]


def _row(path: str, key: tuple[int, int, int], max_file_bytes: int) -> Row:
    outcome = load_file(Path(path), max_file_bytes, size=key[0])
    if isinstance(outcome, Problem):
        return (path, *key, outcome.reason, None, None, 0, 0, 0, None, None, ())
    data = article_to_json(outcome)
    topics = tuple(
        (position, topic_slug(name), name) for position, name in enumerate(outcome.topics)
    )
    return (
        path, *key, None, outcome.id, normalise_url(outcome.url), int(outcome.published),
        outcome.quality, to_microseconds(outcome.published_at),
        hashlib.sha256(data.encode()).hexdigest()[:16], data, topics,
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
