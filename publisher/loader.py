"""Loading: article files (YAML front matter) into clean, validated ``Article`` values.

The loader knows nothing of feeds or Telegram. A bad file never stops a load: it becomes a
``Problem`` with a one-line reason, and every other file still goes through.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from stat import S_ISDIR
from typing import Any
from urllib.parse import urljoin, urlsplit

from publisher.errors import ArticleError
from publisher.models import Article, Image, Provider, Related, article_id

log = logging.getLogger(__name__)

ARTICLE_SUFFIXES = (".txt", ".md")
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
REQUIRED_FIELDS = ("title", "webUrl", "publishedDateTime")
MAX_NUMBER = 2**53  # quality, heat and image sizes beyond this are nonsense (and overflow SQL)

# Characters XML 1.0 forbids (C0 controls but tab/newline/return, lone surrogates, U+FFFE/F).
# Spelled as what is invalid (small ranges), not as the negation of what is valid: the
# same characters, and compiled in 1 ms instead of 7 on every start.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Whitespace (any kind) and XML-invalid characters never belong in a URL we publish.
_NOT_IN_URL = re.compile(r"\s|" + _XML_INVALID.pattern)
_ABSOLUTE_HTTP = re.compile(r"https?://", re.IGNORECASE)
_FRONT_MATTER_FENCE = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Problem:
    """A file that could not be used, and why, in one line."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(slots=True)
class LoadResult:
    articles: list[Article] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files_read: int = 0


# size, mtime and ctime in ns, inode; all 0 when the file cannot be stat'ed. ctime moves on
# chmod and on copies that keep the mtime, so a file fixed that way is read again.
FileKey = tuple[int, int, int, int]
Progress = Callable[[int, int], None]


def load_articles(
    directory: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, progress: Progress | None = None
) -> LoadResult:
    """Load every article file under ``directory`` (no cache: the catalog is the cache)."""
    if not directory.is_dir():
        raise ArticleError(f"articles folder not found: {directory}")
    listing = scan_chunks(directory)
    prefix = scan_prefix(directory)
    files = sorted((prefix + entry[0], entry[1:]) for chunk in listing.chunks for entry in chunk)
    result = LoadResult(files_read=len(files))
    result.problems.extend(
        Problem(Path(prefix + folder), f"cannot read this folder: {reason}")
        for folder, reason in sorted(listing.unreadable.items())
    )
    for index, (path, (size, *_)) in enumerate(files, 1):
        outcome = load_file(Path(path), max_file_bytes, size=size)
        if isinstance(outcome, Problem):
            result.problems.append(outcome)
        else:
            result.articles.append(outcome)
        if progress is not None:
            progress(index, len(files))
    return result


# An article file found by a scan: its path relative to the scanned folder, then its key
# (size, mtime_ns, ctime_ns, inode).
ScanEntry = tuple[str, int, int, int, int]
# A chunk of a scan ends after a file whose inode number is a multiple of this (a prime, so
# that inode numbers allocated in strides of a power of two still end chunks): ~60 files.
CHUNK_INODE_MODULUS = 61


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


def load_file(path: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, size: int | None = None
              ) -> Article | Problem:
    """One file to an Article, or a Problem naming what is wrong with it. Never raises."""
    try:
        if size is not None and size > max_file_bytes:
            raise ArticleError(_too_large(size, max_file_bytes))
        with path.open("rb") as handle:
            data = handle.read(max_file_bytes + 1)
        if len(data) > max_file_bytes:
            raise ArticleError(_too_large(len(data), max_file_bytes))
        return parse_article(data, source_path=str(path))
    except ArticleError as exc:
        return Problem(path, str(exc))
    except OSError as exc:
        return Problem(path, f"cannot read: {exc.strerror or exc}")
    except RecursionError:
        return Problem(path, "malformed YAML: nested too deeply")


def _too_large(size: int, limit: int) -> str:
    return f"file too large ({size:,} bytes; the limit is {limit:,})"


def parse_article(data: bytes, source_path: str = "") -> Article:
    """Bytes of an article file to an Article; raises ArticleError with a one-line reason."""
    text = _decode(data)
    if not text.strip():
        raise ArticleError("empty file")
    front_matter = _front_matter(text)
    record = _parse_yaml(front_matter)
    return build_article(record, source_path=source_path)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArticleError(
            f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _front_matter(text: str) -> str:
    opening = _FRONT_MATTER_FENCE.match(text)
    if opening is None:
        raise ArticleError("no front matter: the file must start with a '---' line")
    closing = _FRONT_MATTER_END.search(text, opening.end())
    if closing is None:
        raise ArticleError("front matter is not closed: no second '---' line")
    return text[opening.end() : closing.start()]


@functools.cache
def yaml_loader() -> tuple[Any, str]:
    """PyYAML's libyaml ``CSafeLoader`` (its pure-Python SafeLoader if built without it),
    and its name; imported on the first parse, so a warm build with nothing to parse
    never pays for it."""
    import yaml

    if hasattr(yaml, "CSafeLoader"):
        return yaml.CSafeLoader, "libyaml"
    return yaml.SafeLoader, "pure-python"  # pragma: no cover - depends on the PyYAML build


def _parse_yaml(front_matter: str) -> Mapping[str, Any]:
    import yaml

    try:
        record = yaml.load(front_matter, Loader=yaml_loader()[0])
    except yaml.MarkedYAMLError as exc:
        raise ArticleError(f"malformed YAML: {_describe_yaml_error(exc)}") from None
    except yaml.YAMLError as exc:
        raise ArticleError(f"malformed YAML: {_one_line(str(exc))}") from None
    if record is None:
        raise ArticleError("empty front matter")
    if not isinstance(record, dict):
        raise ArticleError(
            f"front matter must be a mapping of fields, not a {_yaml_kind(record)}"
        )
    return record


def _describe_yaml_error(exc: Any) -> str:
    problem = exc.problem or exc.context or "invalid syntax"
    mark = exc.problem_mark or exc.context_mark
    # +2: the mark counts from 0 inside the front matter, which starts on the file's line 2.
    where = f" (line {mark.line + 2}, column {mark.column + 1})" if mark is not None else ""
    return _one_line(problem) + where


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Record -> Article


def build_article(record: Mapping[str, Any], source_path: str = "") -> Article:
    """A parsed front-matter mapping to a clean Article (``secured`` is never read)."""
    missing = [name for name in REQUIRED_FIELDS if _is_blank(record.get(name))]
    if missing:
        raise ArticleError("missing required field" + ("s " if len(missing) > 1 else " ")
                           + ", ".join(missing))
    title = clean_text(record["title"])
    if not title:
        raise ArticleError("title is empty after cleaning")
    url = _article_url(record["webUrl"])
    provider = _provider(record.get("provider"))
    return Article(
        id=article_id(url),
        title=title,
        url=url,
        published_at=parse_datetime(record["publishedDateTime"], "publishedDateTime"),
        excerpt=clean_text(record.get("excerpt")),
        provider=provider,
        topics=_topics(record.get("topics")),
        images=_images(record.get("images"), base_url=url),
        related=_related(record.get("related"), base_url=url),
        quality=_integer(record.get("quality"), "quality"),
        heat=_integer(record.get("heat"), "heat"),
        published=_boolean(record.get("published"), "published"),
        type=clean_text(record.get("type")) or "article",
        amp_url=absolute_http_url(record.get("ampWebUrl"), base_url=url) or "",
        source_path=source_path,
    )


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def clean_text(value: Any) -> str:
    """Plain text fit for XML and Telegram: mojibake repaired, controls removed, spaces folded."""
    if value is None or isinstance(value, dict | list):
        return ""
    text = _XML_INVALID.sub("", value if isinstance(value, str) else str(value))
    if not text.isascii() or "&" in text:
        text = _fix_text(text)
    return " ".join(text.split())


@functools.cache
def _text_fixer() -> Callable[[str], str]:
    """ftfy, imported on first use: a warm build parses nothing and need not load it."""
    import ftfy

    # Repair mojibake and HTML entities, keep the author's typography (curly quotes, widths).
    config = ftfy.TextFixerConfig(uncurl_quotes=False, fix_character_width=False)
    return functools.partial(ftfy.fix_text, config=config)


def _fix_text(text: str) -> str:
    return _text_fixer()(text)


def _article_url(value: Any) -> str:
    url = absolute_http_url(value)
    if url is None:
        raise ArticleError(f"webUrl is not an absolute http(s) URL: {_preview(value)}")
    return url


def absolute_http_url(value: Any, base_url: str | None = None) -> str | None:
    """An absolute http(s) URL, resolving a relative one against ``base_url``; else None."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or _NOT_IN_URL.search(url):
        return None
    if base_url is not None and not _ABSOLUTE_HTTP.match(url):
        url = urljoin(base_url, url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _preview(value: Any, limit: int = 80) -> str:
    text = _one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_datetime(value: Any, name: str) -> datetime:
    """ISO 8601 (or a YAML timestamp) to an aware UTC datetime; no zone means UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ArticleError(f"{name} is not an ISO 8601 date: {_preview(value)}") from None
    else:
        raise ArticleError(f"{name} is not an ISO 8601 date: {_preview(value)}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before the first representable day
        raise ArticleError(f"{name} is out of range: {_preview(value)}") from None


def _integer(value: Any, name: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ArticleError(f"{name} is not a number: {_preview(value)}")
    if isinstance(value, int):
        if abs(value) > MAX_NUMBER:
            raise ArticleError(f"{name} is not a usable number: {_preview(value)}")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArticleError(f"{name} is not a number: {_preview(value)}") from None
    if not math.isfinite(number) or abs(number) > MAX_NUMBER:
        raise ArticleError(f"{name} is not a usable number: {_preview(value)}")
    return round(number)


def _boolean(value: Any, name: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise ArticleError(f"{name} must be true or false, not {_preview(value)}")


def _provider(value: Any) -> Provider:
    if isinstance(value, str):
        return Provider(name=clean_text(value))
    if not isinstance(value, dict):
        return Provider(name="")
    domain = clean_text(value.get("domain")).lower()
    if domain and not re.fullmatch(r"[a-z0-9.-]+(?::\d+)?", domain):
        domain = ""  # never build a link from a domain that is not one
    return Provider(name=clean_text(value.get("name")), domain=domain)


def _topics(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    topics: list[str] = []
    for item in items:
        topic = clean_text(item) if isinstance(item, str | int | float) else ""
        if topic and topic not in topics:
            topics.append(topic)
    return tuple(topics)


def _images(value: Any, base_url: str) -> tuple[Image, ...]:
    return tuple(image for item in _mappings(value) if (image := _image(item, base_url)))


def _image(item: Mapping[str, Any], base_url: str) -> Image | None:
    url = absolute_http_url(item.get("url"), base_url=base_url)
    if url is None:
        return None
    return Image(
        url=url,
        width=_dimension(item.get("width")),
        height=_dimension(item.get("height")),
        title=clean_text(item.get("title")),
    )


def _dimension(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 < number <= MAX_NUMBER else None


def _related(value: Any, base_url: str) -> tuple[Related, ...]:
    related: list[Related] = []
    for item in _mappings(value):
        url = absolute_http_url(item.get("webUrl"), base_url=base_url)
        title = clean_text(item.get("title"))
        if url is None or not title:
            continue
        images = _images(item.get("images"), base_url=url)
        try:
            quality: int | None = _integer(item.get("quality"), "quality")
        except ArticleError:
            quality = None
        related.append(
            Related(
                title=title,
                url=url,
                excerpt=clean_text(item.get("excerpt")),
                provider=_provider(item.get("provider")),
                quality=quality,
                image=images[0] if images else None,
            )
        )
    return tuple(related)


def _mappings(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []
