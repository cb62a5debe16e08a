"""Change detection: which article files are new, changed or gone since the catalog last looked.

Two ways to find out. A full scan (``Scan.of``) stats every article file under the folder,
cut into content-defined chunks (``scan_chunks``), and compares the chunks with those the
last completed scan stored (table ``catalog_scan``): only the files of chunks that differ
are compared one by one. ``changes_at`` looks only at the paths a file watcher reported.
Both compare with the keys (size, mtime, ctime, inode) the catalog's rows were parsed at.

A file changed within one tick of the file system's clock of a scan may be written again
without its key changing (a "racy" file, git's word): such a file is saved with a size of -1,
which no stat gives, so every later sync reads it again until it is older (``RACY_NS``).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import marshal
import operator
import os
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR
from typing import NamedTuple

from publisher.db import Database, rows_in, upsert
from publisher.loader import ARTICLE_SUFFIXES

log = logging.getLogger(__name__)

# size, mtime and ctime in ns, inode; all 0 when the file cannot be stat'ed. ctime moves on
# chmod and on copies that keep the mtime, so a file fixed that way is read again. A plain
# tuple, not a NamedTuple: a scan makes 100,000 of them in its hottest loop.
FileKey = tuple[int, int, int, int]
# An article file found by a scan: its path relative to the scanned folder, then its key.
# Plain tuples too: chunks of them are stored with ``marshal``, which knows no subclasses.
ScanEntry = tuple[str, int, int, int, int]
# A chunk of a scan ends after a file whose inode number is a multiple of this (a prime, so
# that inode numbers allocated in strides of a power of two still end chunks): ~60 files.
CHUNK_INODE_MODULUS = 61
UNSTATABLE: FileKey = (0, 0, 0, 0)

# A file changed this shortly before a scan may be written again after it was read, within
# the same tick of the file system's clock and at the same size: its key would not change.
# Local Linux file systems stamp in ticks of a few ms; FAT in 2 s steps, and network file
# systems with the server's clock.
RACY_NS = 2_000_000_000

FINGERPRINT_KEY = "catalog_scan_fingerprint"  # a hash of the folder and every chunk digest
# The folder the stored chunks are relative to; absent while a sync is under way (its rows
# may be ahead of the chunks) or when there are none.
SCAN_ROOT_KEY = "catalog_scan_root"
_SAVE_CHUNK = upsert("catalog_scan", ("digest", "data"), ("digest",))
_CTIME = operator.itemgetter(3)  # of a ScanEntry


def scan_schema(dialect: str) -> list[str]:
    """The stored scan's table: each chunk's entries (marshal), keyed by their digest."""
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    return [
        "CREATE TABLE IF NOT EXISTS catalog_scan "
        f"(digest {blob} PRIMARY KEY, data {blob} NOT NULL)",
    ]


class FileJob(NamedTuple):
    """A file to parse, and the key to save with its row."""

    path: str
    key: FileKey


@dataclass
class Changes:
    changed: list[FileJob]  # files to parse, sorted by path
    removed: list[str]  # paths that are gone, sorted
    cold: bool  # the catalog was empty


def key_text(key: FileKey) -> str:
    return " ".join(map(str, key))


def key_from_text(text: str) -> FileKey:
    size, mtime, ctime, inode = (int(part) for part in text.split())
    return (size, mtime, ctime, inode)


# -- listing ---------------------------------------------------------------------------------


@dataclass
class Listing:
    """What ``scan_chunks`` found: article files in chunks, and the folders that could not be
    opened or listed (relative, ending in a separator; "" is the scanned folder) with why:
    nothing is known of the files in those, not even that they are gone."""

    chunks: list[list[ScanEntry]]
    unreadable: dict[str, str] = field(default_factory=dict)


def scan_prefix(directory: Path | str) -> str:
    """What goes before a ``ScanEntry`` path to make the file's path."""
    folder = os.fspath(directory)
    return folder if folder.endswith(os.sep) else folder + os.sep


def scan_chunks(directory: Path | str) -> Listing:
    """Every article file under ``directory``, in the file system's listing order, cut into
    chunks that end after a file whose inode number is a multiple of ``CHUNK_INODE_MODULUS``.

    The listing order stays the same while a folder is unchanged, and where a chunk ends
    depends only on its own files, so a new, changed or deleted file changes its own chunk
    and leaves the others as they were: a caller compares chunks, not every file. One
    ``stat`` per file, relative to the open folder, in a loop that does little else: at
    100,000 files this is the floor of every warm build. Symbolic links to folders are not
    followed (as ``os.walk``); links to files are. A file that cannot be stat'ed gets a key
    of zeros; a folder that cannot be opened or listed is in ``Listing.unreadable``.
    """
    chunks: list[list[ScanEntry]] = [[]]
    unreadable: dict[str, str] = {}
    root = scan_prefix(directory)
    if not root.isascii() and not _printable_name(root, "articles folder"):
        return Listing([], {"": "its name is not UTF-8"})
    pending = [""]
    with _no_cyclic_gc():  # 100,000 tuples of numbers cannot form a cycle
        while pending:
            relative = pending.pop()
            try:
                fd = os.open(root + relative, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _scan_folder(root, relative, fd, chunks, pending)
                finally:
                    os.close(fd)
            except OSError as exc:  # gone since its parent was listed, EACCES, EIO...
                unreadable[relative] = exc.strerror or type(exc).__name__
    return Listing([chunk for chunk in chunks if chunk], unreadable)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cycle collector paused: it would run ~150 times while a large scan allocates, to
    find nothing (~20-45 ms at 100,000 files); its next run untracks the lot in one pass.
    (Paused for the whole process, other threads too: for a fraction of a second, and
    only cyclic garbage waits.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scan_folder(root: str, relative: str, fd: int, chunks: list[list[ScanEntry]],
                 pending: list[str]) -> None:
    with os.scandir(fd) as listing:
        entries = list(listing)
    stat = os.stat
    modulus = CHUNK_INODE_MODULUS
    chunk = chunks[-1]
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        if not name.isascii() and not _printable_name(root + relative + name):
            continue  # (a folder too: every path below it would be unprintable)
        if not name.endswith(ARTICLE_SUFFIXES):
            if entry.is_dir(follow_symlinks=False):
                pending.append(relative + name + os.sep)
            continue
        try:
            info = stat(name, dir_fd=fd)
        except OSError:
            chunk.append((relative + name, 0, 0, 0, 0))
            continue
        if S_ISDIR(info.st_mode):  # a folder named like an article file
            if not entry.is_symlink():
                pending.append(relative + name + os.sep)
            continue
        inode = info.st_ino
        chunk.append((relative + name, info.st_size, info.st_mtime_ns, info.st_ctime_ns, inode))
        if not inode % modulus:
            chunk = []
            chunks.append(chunk)


def _printable_name(path: str, what: str = "article file or folder") -> bool:
    """Names that are not UTF-8 cannot be stored or reported: warn and leave them."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        log.warning("skipping an %s whose name is not UTF-8: %s", what, shown)
        return False
    return True


# -- a full scan -----------------------------------------------------------------------------


@dataclass
class Scan:
    """What a sync found on disk: the chunks of ``scan_chunks`` with their digests and a
    fingerprint of them all and of the folder, compared with what the last sync saved; and
    what this one saves: the same, but for racy files (``RACY_NS``)."""

    prefix: str
    chunks: list[list[ScanEntry]]
    digests: list[bytes]
    fingerprint: str
    saved: list[tuple[bytes, bytes]]  # (digest, marshalled entries) of each chunk
    saved_fingerprint: str
    racy_since: int  # a file whose ctime_ns is this or later is racy
    unreadable: dict[str, str]  # folders that could not be read (see ``Listing``)

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
                    [(entry[0], *saved_key(entry[1:], racy_since)) for entry in chunk]
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
        return sorted(FileJob(path, saved_key(key, self.racy_since)) for path, key in changed)

    def under_unreadable(self, paths: Iterable[str]) -> set[str]:
        """Those of ``paths`` in a folder this scan could not read."""
        folders = tuple(self.prefix + relative for relative in self.unreadable)
        return {path for path in paths if path.startswith(folders)} if folders else set()


def saved_key(key: FileKey, racy_since: int) -> FileKey:
    return (-1, key[1], key[2], key[3]) if key[2] >= racy_since else key


def _chunk_digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _scan_fingerprint(prefix: str, digests: list[bytes]) -> str:
    whole = hashlib.blake2b(prefix.encode("utf-8", "surrogateescape"), digest_size=16)
    whole.update(b"".join(digests))
    return whole.hexdigest()


# -- the comparison with what the catalog remembers ------------------------------------------


class ChangeFinder:
    """Compares what is on disk with the catalog's rows and the stored scan, in ``db``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def stored_digests(self, prefix: str) -> set[bytes] | None:
        """The chunk digests of the last completed scan of the folder at ``prefix``; None
        when there is none (a new state, another folder, or a sync that did not complete)."""
        if self._meta(SCAN_ROOT_KEY) != prefix:
            return None
        return {bytes(row[0]) for row in self._db.execute("SELECT digest FROM catalog_scan")}

    def is_unchanged(self, scan: Scan) -> bool:
        """Exactly the files (and keys) of the last completed sync."""
        return self._meta(FINGERPRINT_KEY) == scan.fingerprint

    def forget_scan(self) -> None:
        """Until a sync completes, the rows may be ahead of the stored scan: say so, and an
        interrupted sync is followed by a comparison with the rows."""
        self._db.execute("DELETE FROM meta WHERE key IN (?, ?)", (FINGERPRINT_KEY, SCAN_ROOT_KEY))

    def changes(self, scan: Scan, same_parsing: bool) -> tuple[Changes, set[bytes] | None]:
        """What changed since the last sync, and the stored chunk digests it was found with
        (None: compared with the rows, and the stored scan is to be replaced whole)."""
        stored = self.stored_digests(scan.prefix) if same_parsing else None
        changes = self._changes_in_chunks(scan, stored) if stored is not None else None
        if changes is None:  # no usable stored scan: compare with the rows themselves
            return self._changes_from_rows(scan, same_parsing), None
        return changes, stored

    def _changes_from_rows(self, scan: Scan, same_parsing: bool) -> Changes:
        """Every file compared with the catalog's rows (no usable stored scan)."""
        previous = {
            path: key_from_text(text)
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
        for (data,) in rows_in(self._db, "SELECT data FROM catalog_scan WHERE digest IN ({})",
                               gone):
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
        changed = now.items() - before.items()
        # A sync of watched paths since (``changes_at``) may have synced some already.
        known = self._known_keys(sorted({path for path, _ in changed} | removed))
        changed = {(path, key) for path, key in changed if known.get(path) != key}
        removed &= known.keys()
        # No stored chunk: the last sync found no file, and the catalog should be empty.
        cold = not stored and self._db.execute("SELECT 1 FROM catalog LIMIT 1").fetchone() is None
        return Changes(scan.to_parse(changed), sorted(removed), cold=cold)

    def save_scan(self, scan: Scan, stored: set[bytes] | None) -> None:
        """Store the chunks that are new and drop those that are gone (all of them when
        ``stored`` is None), then the folder and the fingerprint. While a folder cannot be
        read, no scan is kept: the next sync compares with the rows, which kept its files,
        so what was deleted from it meanwhile is seen once it can be read."""
        if scan.unreadable:
            self._db.execute("DELETE FROM catalog_scan")
            self.forget_scan()
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
        self._set_meta(SCAN_ROOT_KEY, scan.prefix)
        self._set_meta(FINGERPRINT_KEY, scan.saved_fingerprint)

    def due(self, now_us: int) -> dict[str, FileKey]:
        """Rows to parse again although their file did not change: their time has come."""
        rows = self._db.execute(
            "SELECT path, file_key FROM catalog WHERE recheck_us IS NOT NULL AND recheck_us <= ?",
            (now_us,),
        )
        return {path: key_from_text(text) for path, text in rows}

    def changes_at(self, directory: Path, paths: Collection[str]) -> Changes:
        """What changed among ``paths`` alone (those a watcher reported): each is looked at
        as a full scan would see it, and compared with its row. The stored scan is left as
        it is: a full scan later compares the chunks these files are in with their rows'
        keys again, and finds them as saved here."""
        prefix = scan_prefix(directory)
        racy_since = time.time_ns() - RACY_NS
        on_disk: dict[str, FileKey] = {}
        missing: set[str] = set()
        for path in sorted(_article_paths(prefix, paths)):
            try:
                key = _stat_as_scanned(prefix, path)
            except _Unknown:  # kept as it is, as a full scan keeps an unreadable folder's
                continue
            if key is None:
                missing.add(path)
            else:
                on_disk[path] = key
        known = self._known_keys(sorted(on_disk.keys() | missing))
        changed = sorted(
            FileJob(path, saved_key(key, racy_since)) for path, key in on_disk.items()
            if known.get(path) != key
        )
        return Changes(changed, sorted(missing & known.keys()), cold=False)

    def _known_keys(self, paths: list[str]) -> dict[str, FileKey]:
        rows = rows_in(self._db, "SELECT path, file_key FROM catalog WHERE path IN ({})", paths)
        return {path: key_from_text(text) for path, text in rows}

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(upsert("meta", ("key", "value"), ("key",)), (key, value))


def _article_paths(prefix: str, paths: Iterable[str]) -> Iterator[str]:
    """The catalog paths of those of ``paths`` that a full scan of the folder at ``prefix``
    would list: article files, under it, with no hidden name on the way (a relative path
    is taken as relative to the working folder, as the watcher reports)."""
    absolute = os.path.abspath(prefix) + os.sep
    for path in paths:
        full = os.path.abspath(path)
        if not full.startswith(absolute):
            continue
        relative = full[len(absolute):]
        parts = relative.split(os.sep)
        if any(part.startswith(".") for part in parts) or not parts[-1].endswith(ARTICLE_SUFFIXES):
            continue
        if not relative.isascii() and not _printable_name(prefix + relative):
            continue
        yield prefix + relative


class _Unknown(Exception):
    """Whether the file is there cannot be told now (a folder that cannot be searched)."""


def _stat_as_scanned(prefix: str, path: str) -> FileKey | None:
    """The key a full scan would list ``path`` with; None when a scan would not list it: it
    is gone, in a folder reached through a symbolic link (a scan follows none), or a folder
    itself. A file that cannot be stat'ed gets a key of zeros, as in a scan."""
    folder = prefix
    for part in path[len(prefix):].split(os.sep)[:-1]:
        folder += part
        try:  # (no separator at the end: lstat would follow a link then)
            if not S_ISDIR(os.lstat(folder).st_mode):  # a link to a folder, or no folder
                return None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _Unknown from exc
        folder += os.sep
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise _Unknown from exc
    except OSError:
        return UNSTATABLE
    if S_ISDIR(info.st_mode):
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
