"""The write stage: rendered bytes into the feeds folder, and nothing else there.

Each file is replaced atomically and only when its bytes change (a reader sees the old file
or the new one, never a part); feed files of our naming that a build no longer renders are
removed; a name that is not one of ours, or that would land outside the folder, is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from publisher.errors import FeedError
from publisher.names import ALL_SLUG, FEED_SUFFIXES, INDEX_NAME, OPML_NAME, STYLESHEET_NAME

FEED_NAME = re.compile(r"(?P<slug>[a-z0-9][a-z0-9-]*)(?P<suffix>\.rss\.xml|\.atom\.xml|\.json)")
# The files beside the feeds, as (slug, kind). "feeds" and "index" are reserved for topics
# (selection.RESERVED_SLUGS); "feed.xsl" cannot meet a topic's file names.
PAGES = {
    OPML_NAME: ("feeds", "opml"),
    INDEX_NAME: ("index", "html"),
    STYLESHEET_NAME: ("feed", "xsl"),
}
# A stale "<slug>.json" is removed only if it is a JSON Feed, and is never read whole.
_STALE_JSON_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FeedFile:
    path: Path
    kind: str  # "rss" | "atom" | "json" feeds; "opml" | "html" | "xsl" pages
    slug: str
    changed: bool

    @property
    def is_feed(self) -> bool:
        return self.kind in FEED_SUFFIXES


@dataclass(frozen=True)
class BuildResult:
    files: tuple[FeedFile, ...]
    removed: tuple[Path, ...]
    topics: int

    @property
    def written(self) -> int:
        return sum(1 for feed_file in self.files if feed_file.changed)

    @property
    def unchanged(self) -> int:
        return len(self.files) - self.written


def write_feeds(rendered: Mapping[str, bytes], out_dir: Path,
                unchanged: Iterable[str] = ()) -> BuildResult:
    """Write the changed files atomically and remove feed files no longer rendered.

    ``unchanged`` names files that were not rendered because their content is known to be
    current: they are kept (and counted as unchanged) as long as they exist.
    """
    root = _prepare_dir(out_dir)
    kept = {name for name in unchanged if name not in rendered}
    targets = [(name, *parse_feed_name(name), _inside(root, name)) for name in sorted(rendered)]
    files = [
        FeedFile(path, kind, slug, write_atomic(path, rendered[name]))
        for name, slug, kind, path in targets
    ]
    files += [
        FeedFile(path, kind, slug, False)
        for name in sorted(kept)
        for slug, kind in [parse_feed_name(name)]
        if (path := _inside(root, name)).is_file()
    ]
    removed = _remove_stale(root, keep=set(rendered) | kept)
    topics = len({feed.slug for feed in files if feed.is_feed and feed.slug != ALL_SLUG})
    return BuildResult(files=tuple(files), removed=removed, topics=topics)


def write_atomic(path: Path, data: bytes) -> bool:
    """Replace ``path`` with ``data`` unless it already holds exactly these bytes.

    A reader sees either the old or the new file, never a partial one; on failure the old
    file stays intact and the temporary file is removed. Returns True if it wrote.
    """
    if _holds(path, data):
        return False
    try:
        _replace(path, data)
    except OSError as exc:
        raise FeedError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return True


def parse_feed_name(name: str) -> tuple[str, str]:
    """The (slug, kind) of one of our file names; anything else is refused."""
    if name in PAGES:
        return PAGES[name]
    match = FEED_NAME.fullmatch(name)
    if match is None:
        raise FeedError(f"not a feed file name: {name!r}")
    kind = next(kind for kind, suffix in FEED_SUFFIXES.items() if suffix == match["suffix"])
    return match["slug"], kind


def _prepare_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir.resolve(strict=True)
    except OSError as exc:
        raise FeedError(f"cannot create feeds folder {out_dir}: {exc.strerror or exc}") from exc


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refusing anything that would land outside ``root``."""
    path = (root / name).resolve()
    if path.parent != root:
        raise FeedError(f"refusing to write {name!r} outside {root}")
    return path


def _holds(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:  # missing or unreadable: write it, and let the write report real trouble
        return False


def _replace(path: Path, data: bytes) -> None:
    import tempfile  # only when a file is written: a build with nothing changed never is

    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; feeds are served to anyone
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale(root: Path, keep: set[str]) -> tuple[Path, ...]:
    """Remove our feed files that were not rendered this time; never anything else."""
    removed = []
    for path in sorted(root.iterdir()):
        if path.name in keep or not _is_our_feed(path):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FeedError(f"cannot remove stale feed {path}: {exc.strerror or exc}") from exc
        removed.append(path)
    return tuple(removed)


def _is_our_feed(path: Path) -> bool:
    """A feed file name of ours; a ``.json`` one must also hold a JSON Feed."""
    if not FEED_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
        return False
    return not path.name.endswith(FEED_SUFFIXES["json"]) or _is_json_feed(path)


def _is_json_feed(path: Path) -> bool:
    from publisher.subscribe import JSON_FEED_VERSION  # only when a stale .json is met

    try:
        if path.stat().st_size > _STALE_JSON_MAX_BYTES:
            return False
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not ours
        return False
    return isinstance(document, dict) and document.get("version") == JSON_FEED_VERSION
