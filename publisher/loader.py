"""Loading: article files (YAML front matter) into clean, validated ``Article`` values.

The loader knows nothing of feeds or Telegram. A bad file never stops a load: it becomes a
``Problem`` with a one-line reason, and every other file still goes through. A file that is
used but not whole (more topics than ``Limits.max_topics``, a title cut to length) comes
with a one-line ``Notice``.

Files come from anyone who can write to the folder, so nothing in one may cost more than a
file of ``max_file_bytes`` would: only regular files are opened (``files``), YAML aliases
may not expand a record much beyond its own size, every list and text has a cap, and error
messages show values through a bounded preview.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from publisher.errors import ArticleError
from publisher.errors import FutureDate as FutureDate
from publisher.files import FileTooLarge, NotRegularFile, read_regular_file
from publisher.models import (
    Article,
    Image,
    Provider,
    Related,
    article_id,
    ascii_host,
    published_url,
)
from publisher.text import as_utc, without_xml_invalid

log = logging.getLogger(__name__)

ARTICLE_SUFFIXES = (".txt", ".md")
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
DEFAULT_MAX_TOPICS = 20
DEFAULT_MAX_RELATED = 10
REQUIRED_FIELDS = ("title", "webUrl", "publishedDateTime")
MAX_NUMBER = 2**53  # quality, heat and image sizes beyond this are nonsense (and overflow SQL)

# Field lengths, in characters after cleaning: longer texts are cut at a word (and reported).
MAX_TITLE_CHARS = 500
MAX_EXCERPT_CHARS = 5000
MAX_RELATED_EXCERPT_CHARS = 1000
MAX_NAME_CHARS = 200  # provider names, image titles, the record type
MAX_TOPIC_CHARS = 100
# A longer link (after encoding) is no link: the article's makes the file bad, others go.
MAX_URL_CHARS = 2048
MAX_IMAGES = 20  # per article; the first ones are kept
# A date later than this ahead of now would pin its article to the top of every feed.
FUTURE_TOLERANCE = timedelta(days=1)
# YAML aliases may expand a record to at most this many items and characters beyond twice
# the front matter's own length; more is an alias bomb ("billion laughs"), not an article.
ALIAS_EXPANSION_SLACK = 64 * 1024

# What libyaml refuses to read anywhere in a document (its reader accepts tab, line breaks,
# printable ASCII, NEL and everything from U+00A0 up but surrogates and U+FFFE/F).
_YAML_UNREADABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff"
                              "\ufffe\uffff]")
_ABSOLUTE_HTTP = re.compile(r"https?://", re.IGNORECASE)
_FRONT_MATTER_FENCE = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)


def display_path(path: Path | str) -> str:
    """A path as one line of output shows it: as it is, or quoted with escapes when it holds
    a newline, a control character, a terminal escape or anything else not printable."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)


def printable(text: str) -> str:
    """``text`` with whatever is not printable (a newline, ESC...) escaped, on one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@dataclass(frozen=True, slots=True)
class Problem:
    """A file that could not be used, and why, in one line. ``recheck_at``: the moment the
    same bytes may become usable (an article dated too far ahead, whose time comes)."""

    path: Path
    reason: str
    recheck_at: datetime | None = None
    parsed: bool = True  # False: refused before its content was read whole and parsed

    def __str__(self) -> str:
        return f"{display_path(self.path)}: {printable(self.reason)}"


@dataclass(frozen=True, slots=True)
class Notice:
    """A file that was used, but not whole (a cap, a cut), and what was left out."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{display_path(self.path)}: warning: {printable(self.message)}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one article file may hold. These are parse settings: rows parsed with other
    limits are parsed again."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_topics: int = DEFAULT_MAX_TOPICS
    max_related: int = DEFAULT_MAX_RELATED

    @classmethod
    def of(cls, value: Limits | int) -> Limits:
        """``value`` itself, or for a number, a file size cap with the default other limits."""
        return value if isinstance(value, Limits) else cls(max_file_bytes=value)

    @property
    def key(self) -> str:
        return f"{self.max_file_bytes}:{self.max_topics}:{self.max_related}"


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Loaded:
    """A file's article, and what was left out of it (one-line notes; empty when nothing)."""

    article: Article
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class LoadResult:
    articles: list[Article] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files_read: int = 0
    notices: list[Notice] = field(default_factory=list)


Progress = Callable[[int, int], None]


def load_articles(
    directory: Path, limits: Limits | int = DEFAULT_LIMITS, progress: Progress | None = None,
    now: datetime | None = None,
) -> LoadResult:
    """Load every article file under ``directory`` (no cache: the catalog is the cache).
    ``limits``: a ``Limits``, or just the file size cap."""
    if not directory.is_dir():
        raise ArticleError(f"articles folder not found: {display_path(directory)}")
    limits = Limits.of(limits)
    now = now or datetime.now(UTC)
    from publisher.scan import scan_chunks, scan_prefix  # (scan imports this module)

    listing = scan_chunks(directory)
    prefix = scan_prefix(directory)
    files = sorted((prefix + entry[0], entry[1:]) for chunk in listing.chunks for entry in chunk)
    result = LoadResult(files_read=len(files))
    result.problems.extend(
        Problem(Path(prefix + folder), f"cannot read this folder: {reason}")
        for folder, reason in sorted(listing.unreadable.items())
    )
    for index, (path, (size, *_)) in enumerate(files, 1):
        outcome = read_file(Path(path), limits, size=size, now=now)
        if isinstance(outcome, Problem):
            result.problems.append(outcome)
        else:
            result.articles.append(outcome.article)
            if outcome.notes:
                result.notices.append(Notice(Path(path), "; ".join(outcome.notes)))
        if progress is not None:
            progress(index, len(files))
    return result


# ---------------------------------------------------------------------------------------------
# File -> record


def load_file(path: Path, limits: Limits | int = DEFAULT_LIMITS, size: int | None = None,
              now: datetime | None = None) -> Article | Problem:
    """One file to an Article, or a Problem naming what is wrong with it. Never raises."""
    outcome = read_file(path, limits, size=size, now=now)
    return outcome if isinstance(outcome, Problem) else outcome.article


def read_file(path: Path, limits: Limits | int = DEFAULT_LIMITS, size: int | None = None,
              now: datetime | None = None) -> Loaded | Problem:
    """One file to its article and notes, or a Problem naming what is wrong with it; only
    a regular file is read (a FIFO or a device is a Problem, and never blocks). Never
    raises."""
    limits = Limits.of(limits)
    try:
        if size is not None and size > limits.max_file_bytes:  # known from the scan's stat
            raise FileTooLarge(size, limits.max_file_bytes)
        data = read_regular_file(path, limits.max_file_bytes)
    except FileTooLarge as exc:
        return Problem(path, _too_large(exc.size, exc.limit), parsed=False)
    except NotRegularFile as exc:
        return Problem(path, f"not a regular file ({exc.kind}): only regular files are read",
                       parsed=False)
    except OSError as exc:
        return Problem(path, f"cannot read: {exc.strerror or exc}", parsed=False)
    try:
        return parse_article(data, source_path=str(path), limits=limits, now=now)
    except FutureDate as exc:
        return Problem(path, str(exc), recheck_at=exc.valid_from)
    except ArticleError as exc:
        return Problem(path, str(exc))
    except RecursionError:
        return Problem(path, "malformed YAML: nested too deeply")


def _too_large(size: int, limit: int) -> str:
    return f"file too large ({size:,} bytes; the limit is {limit:,})"


def parse_article(data: bytes, source_path: str = "", limits: Limits | int = DEFAULT_LIMITS,
                  now: datetime | None = None) -> Loaded:
    """Bytes of an article file to its article and notes; raises ArticleError with a
    one-line reason."""
    text = _decode(data)
    if not text.strip():
        raise ArticleError("empty file")
    record, front_matter = _parse_yaml(_front_matter(text))
    if "*" in front_matter:  # no "*", no alias: nothing can expand
        _refuse_alias_bombs(record, front_matter)
    return build_article(record, source_path=source_path, limits=limits, now=now)


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


def _readable_by_yaml(front_matter: str) -> str:
    """The front matter with every character libyaml refuses repaired or removed, line by
    line (so YAML errors keep their line numbers): such a character is almost always the
    debris of mojibake, as U+009D in the cp1252 misreading of a closing quote (``â€\\x9d``),
    which ftfy turns back into what it was; the rest (a stray control character) goes."""
    lines = front_matter.split("\n")
    for index, line in enumerate(lines):
        if _YAML_UNREADABLE.search(line):
            repaired = _line_fixer()(line).replace("\n", " ")
            lines[index] = _YAML_UNREADABLE.sub("", repaired)
    return "\n".join(lines)


@functools.cache
def _line_fixer() -> Callable[[str], str]:
    """ftfy for one raw line of YAML: mojibake repaired, nothing else that could change the
    syntax (no HTML unescaping, quotes left curly or straight, line breaks left alone)."""
    import ftfy

    config = ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False,
                                  fix_character_width=False, fix_line_breaks=False,
                                  explain=False)
    return functools.partial(ftfy.fix_text, config=config)


@functools.cache
def yaml_loader() -> tuple[Any, str]:
    """A loader built on PyYAML's libyaml ``CSafeLoader`` (its pure-Python SafeLoader if
    built without it), and its name; imported on the first parse, so a warm build with
    nothing to parse never pays for it.

    A scalar that cannot become the value its tag says (an unquoted ``2024-02-30``, a
    number of 5,000 digits, ``!!bool maybe``) stays the text it is, and the field's own
    check names it; the constructors would otherwise raise ValueError, KeyError and the
    like, without a position."""
    import yaml

    base, name = (
        (yaml.CSafeLoader, "libyaml") if hasattr(yaml, "CSafeLoader")
        else (yaml.SafeLoader, "pure-python")  # pragma: no cover - depends on the build
    )

    class ArticleLoader(base):  # type: ignore[misc, valid-type]
        pass

    for tag in ("bool", "int", "float", "timestamp", "null"):
        full_tag = f"tag:yaml.org,2002:{tag}"
        constructor = _text_when_invalid(base.yaml_constructors[full_tag])
        ArticleLoader.add_constructor(full_tag, constructor)
    return ArticleLoader, name


def _text_when_invalid(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    import yaml

    def construct_or_text(loader: Any, node: Any) -> Any:
        try:
            return construct(loader, node)
        except yaml.YAMLError:
            raise
        except Exception:  # ValueError (day out of range, too many digits), KeyError...
            return loader.construct_scalar(node)

    return construct_or_text


def _parse_yaml(front_matter: str) -> tuple[Mapping[str, Any], str]:
    """The record, and the front matter it was read from: as it is, or when libyaml refused
    a character in it, repaired (``_readable_by_yaml``; rare, so only then is it looked
    for)."""
    try:
        return _parse_yaml_as_is(front_matter), front_matter
    except _Unreadable:
        repaired = _readable_by_yaml(front_matter)
        return _parse_yaml_as_is(repaired, repaired=True), repaired


class _Unreadable(Exception):
    """libyaml refused a character that ``_readable_by_yaml`` repairs or removes."""


def _parse_yaml_as_is(front_matter: str, repaired: bool = False) -> Mapping[str, Any]:
    import yaml

    loader, name = yaml_loader()
    try:
        record = yaml.load(front_matter, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        raise ArticleError(f"malformed YAML: {_describe_yaml_error(exc)}") from None
    except yaml.reader.ReaderError as exc:
        if not repaired and _YAML_UNREADABLE.match(chr(exc.character)):
            raise _Unreadable from None
        raise ArticleError(
            f"malformed YAML: {_one_line(exc.reason)} "
            f"(character #x{exc.character:04x}{_position(front_matter, exc.position, name)})"
        ) from None
    except yaml.YAMLError as exc:
        raise ArticleError(f"malformed YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise
    except Exception as exc:  # anything else a constructor raised: still this file's problem
        raise ArticleError(f"malformed YAML: {type(exc).__name__}: {_one_line(str(exc))}"
                           ) from None
    if record is None:
        raise ArticleError("empty front matter")
    if not isinstance(record, dict):
        raise ArticleError(
            f"front matter must be a mapping of fields, not a {_yaml_kind(record)}"
        )
    return record


# The front matter starts at the end of the file's first line (the opening "---"), so its
# line 0 is the file's line 1.
_FIRST_LINE = 1


def _describe_yaml_error(exc: Any) -> str:
    problem = exc.problem or exc.context or "invalid syntax"
    mark = exc.problem_mark or exc.context_mark
    where = (f" (line {mark.line + _FIRST_LINE}, column {mark.column + 1})"
             if mark is not None else "")
    return _one_line(problem) + where


def _position(front_matter: str, position: int, loader_name: str) -> str:
    """", line L, column C" of a reader error's position: libyaml counts bytes of the
    UTF-8 it was given, the pure-Python reader characters."""
    if loader_name == "libyaml":
        encoded = front_matter.encode("utf-8", "surrogatepass")[:position]
        before = encoded.decode("utf-8", "ignore")
    else:  # pragma: no cover - depends on the PyYAML build
        before = front_matter[:position]
    line = before.count("\n") + _FIRST_LINE
    column = len(before) - (before.rfind("\n") + 1) + 1
    return f", line {line}, column {column}"


def _refuse_alias_bombs(record: Mapping[str, Any], front_matter: str) -> None:
    """Raise unless the record, with every alias expanded, stays within twice the front
    matter's length plus ``ALIAS_EXPANSION_SLACK`` items and characters.

    The parser builds aliases as shared objects, so a file of 500 bytes can hold a value
    that is gigabytes once anything walks it (``repr``, a loop over a list). The walk
    here visits each object once (sizes are remembered by identity), so it costs what
    the file holds, not what it expands to; a value that contains itself is refused too.
    """
    budget = 2 * len(front_matter) + ALIAS_EXPANSION_SLACK
    sizes: dict[int, int] = {}
    total = 0
    for key, value in record.items():
        try:
            total += _expanded_size(key, sizes, budget - total)
            total += _expanded_size(value, sizes, budget - total)
        except _TooLarge:
            raise ArticleError(
                f"malformed YAML: aliases expand {_field_name(key)} beyond {budget:,} items "
                f"and characters{_line_of_field(front_matter, key)}; not an article"
            ) from None
        except _Recursive:
            raise ArticleError(
                f"malformed YAML: {_field_name(key)} contains itself through an alias"
                f"{_line_of_field(front_matter, key)}"
            ) from None


class _TooLarge(Exception):
    pass


class _Recursive(Exception):
    pass


def _expanded_size(value: Any, sizes: dict[int, int], budget: int) -> int:
    """Items plus characters of ``value`` with aliases expanded, remembered per container;
    ``_TooLarge`` as soon as it exceeds ``budget``."""
    if isinstance(value, str):
        size = 1 + len(value)
    elif isinstance(value, list | dict | tuple):  # tuples: the pairs of !!omap and !!pairs
        identity = id(value)
        known = sizes.get(identity)
        if known is not None:
            if known < 0:
                raise _Recursive
            size = known
        else:
            sizes[identity] = -1  # being measured: meeting it again inside is a cycle
            size = 1
            parts = (part for pair in value.items() for part in pair) if isinstance(
                value, dict) else value
            for part in parts:
                size += _expanded_size(part, sizes, budget - size)
                if size > budget:
                    raise _TooLarge
            sizes[identity] = size
    else:
        size = 1
    if size > budget:
        raise _TooLarge
    return size


def _field_name(key: Any) -> str:
    return key if isinstance(key, str) and key.isidentifier() else _preview(key)


def _line_of_field(front_matter: str, key: Any) -> str:
    if not isinstance(key, str):
        return ""
    found = re.search(rf"^{re.escape(key)}[ \t]*:", front_matter, re.MULTILINE)
    return f" (line {front_matter.count(chr(10), 0, found.start()) + _FIRST_LINE})" if found else ""


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Record -> Article


def build_article(record: Mapping[str, Any], source_path: str = "",
                  limits: Limits | int = DEFAULT_LIMITS, now: datetime | None = None
                  ) -> Loaded:
    """A parsed front-matter mapping to a clean Article and notes of what was cut or left
    out (``secured`` is never read). ``now``: an article dated more than
    ``FUTURE_TOLERANCE`` after it is refused (``FutureDate``)."""
    missing = [name for name in REQUIRED_FIELDS if _is_blank(record.get(name))]
    if missing:
        raise ArticleError("missing required field" + ("s " if len(missing) > 1 else " ")
                           + ", ".join(missing))
    fields = _FieldReader(Limits.of(limits))
    title = fields.text(record["title"], "title", MAX_TITLE_CHARS)
    if not title:
        raise ArticleError("title is empty after cleaning")
    url = _article_url(record["webUrl"])
    published_at = parse_datetime(record["publishedDateTime"], "publishedDateTime")
    _refuse_future(published_at, now or datetime.now(UTC))
    article = Article(
        id=article_id(url),
        title=title,
        url=url,
        published_at=published_at,
        excerpt=fields.text(record.get("excerpt"), "excerpt", MAX_EXCERPT_CHARS),
        provider=fields.provider(record.get("provider")),
        topics=fields.topics(record.get("topics")),
        images=fields.images(record.get("images"), base_url=url, limit=MAX_IMAGES),
        related=fields.related(record.get("related"), base_url=url),
        quality=_integer(record.get("quality"), "quality"),
        heat=_integer(record.get("heat"), "heat"),
        published=_boolean(record.get("published"), "published"),
        type=fields.text(record.get("type"), "type", MAX_NAME_CHARS) or "article",
        amp_url=fields.url(record.get("ampWebUrl"), "ampWebUrl", base_url=url) or "",
        source_path=source_path,
    )
    return Loaded(article, fields.notes())


def _refuse_future(published_at: datetime, now: datetime) -> None:
    if published_at > now + FUTURE_TOLERANCE:
        raise FutureDate(
            f"publishedDateTime {published_at.isoformat()} is more than a day ahead of now; "
            "the file is read again when its time comes",
            valid_from=published_at - FUTURE_TOLERANCE,
        )


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class _FieldReader:
    """Reads the optional fields of one record within its limits, and notes what it cut
    or left out, for one line of warning."""

    __slots__ = ("_cut", "_dropped", "_limits")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # What was left out, and what was cut -> how many times (a line stays short however
        # many related items had an over-long title).
        self._dropped: dict[str, int] = {}
        self._cut: dict[str, int] = {}

    def notes(self) -> tuple[str, ...]:
        cut = ", ".join(_counted(self._cut))
        return (*_counted(self._dropped), *((f"cut to length: {cut}",) if cut else ()))

    def text(self, value: Any, what: str, limit: int) -> str:
        text = _clean(value, limit)
        if len(text) > limit:
            _count(self._cut, f"{what} ({limit:,} characters)")
            return _shortened(text, limit)
        return text

    def url(self, value: Any, what: str, base_url: str | None = None) -> str | None:
        url = absolute_http_url(value, base_url=base_url, limit=None)
        if url is not None and len(url) > MAX_URL_CHARS:
            _count(self._dropped, f"dropped {what}: a link longer than {MAX_URL_CHARS:,} "
                                  "characters")
            return None
        return url

    def provider(self, value: Any) -> Provider:
        if isinstance(value, str):
            return Provider(name=self.text(value, "provider name", MAX_NAME_CHARS))
        if not isinstance(value, dict):
            return Provider(name="")
        return Provider(name=self.text(value.get("name"), "provider name", MAX_NAME_CHARS),
                        domain=_domain(value.get("domain")))

    def topics(self, value: Any) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        kept: dict[str, None] = {}
        others: set[str] = set()
        limit = self._limits.max_topics
        for item in items:
            if not isinstance(item, str | int | float):
                continue
            if len(kept) < limit:
                topic = self.text(item, "topic", MAX_TOPIC_CHARS)
                if topic:
                    kept[topic] = None
            elif (topic := _shortened(_clean(item, MAX_TOPIC_CHARS), MAX_TOPIC_CHARS)
                  ) and topic not in kept:
                others.add(topic)
        if others:
            _count(self._dropped, f"kept {limit:,} of {limit + len(others):,} topics "
                                  f"(articles.max_topics = {limit:,})")
        return tuple(kept)

    def images(self, value: Any, base_url: str, limit: int) -> tuple[Image, ...]:
        images: list[Image] = []
        items = _mappings(value)
        for item in items[:limit]:
            if image := self._image(item, base_url):
                images.append(image)
        if len(items) > limit:
            _count(self._dropped, f"kept the first {limit:,} of {len(items):,} images")
        return tuple(images)

    def _image(self, item: Mapping[str, Any], base_url: str) -> Image | None:
        url = self.url(item.get("url"), "an image", base_url=base_url)
        if url is None:
            return None
        return Image(
            url=url,
            width=_dimension(item.get("width")),
            height=_dimension(item.get("height")),
            title=self.text(item.get("title"), "image title", MAX_NAME_CHARS),
        )

    def related(self, value: Any, base_url: str) -> tuple[Related, ...]:
        related: list[Related] = []
        items = _mappings(value)
        limit = self._limits.max_related
        for index, item in enumerate(items):
            if len(related) == limit:
                _count(self._dropped, f"kept {limit:,} related articles, left "
                                      f"{len(items) - index:,} more "
                                      f"(articles.max_related = {limit:,})")
                break
            if entry := self._related_item(item, base_url):
                related.append(entry)
        return tuple(related)

    def _related_item(self, item: Mapping[str, Any], base_url: str) -> Related | None:
        url = self.url(item.get("webUrl"), "a related article", base_url=base_url)
        if url is None:
            return None
        title = self.text(item.get("title"), "related title", MAX_TITLE_CHARS)
        if not title:
            return None
        image = next(filter(None, (self._image(image, url)
                                   for image in _mappings(item.get("images")))), None)
        try:
            quality: int | None = _integer(item.get("quality"), "quality")
        except ArticleError:
            quality = None
        return Related(
            title=title,
            url=url,
            excerpt=self.text(item.get("excerpt"), "related excerpt", MAX_RELATED_EXCERPT_CHARS),
            provider=self.provider(item.get("provider")),
            quality=quality,
            image=image,
        )


def _count(notes: dict[str, int], note: str) -> None:
    notes[note] = notes.get(note, 0) + 1


def _counted(notes: dict[str, int]) -> list[str]:
    return [f"{note} ({count}x)" if count > 1 else note for note, count in notes.items()]


def clean_text(value: Any) -> str:
    """Plain text fit for XML and Telegram: mojibake repaired, controls removed, spaces folded."""
    return _clean(value, None)


def _clean(value: Any, limit: int | None) -> str:
    """``clean_text``; with a ``limit``, a text far longer is cut before the costly repair
    (so the result is still longer than the limit: the caller cuts it and says so)."""
    if value is None or isinstance(value, dict | list):
        return ""
    text = without_xml_invalid(value if isinstance(value, str) else str(value))
    if not text.isascii() or "&" in text:
        if limit is not None and len(text) > 3 * limit:
            text = " ".join(text.split())[: 3 * limit]  # mojibake repair only shortens more
        text = _fix_text(text)
    return " ".join(text.split())


def _shortened(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: cut at a space if one is near, with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


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
    url = absolute_http_url(value, limit=None)
    if url is None:
        raise ArticleError(f"webUrl is not an absolute http(s) URL: {_preview(value)}")
    if len(url) > MAX_URL_CHARS:
        raise ArticleError(f"webUrl is longer than {MAX_URL_CHARS:,} characters")
    return url


def absolute_http_url(value: Any, base_url: str | None = None,
                      limit: int | None = MAX_URL_CHARS) -> str | None:
    """The published form (``models.published_url``) of an absolute http(s) URL, resolving a
    relative one against ``base_url``; else None (also when longer than ``limit``)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url:
        return None
    if base_url is not None and not _ABSOLUTE_HTTP.match(url):
        try:
            url = urljoin(base_url, url)
        except ValueError:
            return None
    published = published_url(url)
    if published is None or (limit is not None and len(published) > limit):
        return None
    return published


_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 2
_PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxdict = _PREVIEW.maxset = 4
_PREVIEW.maxstring = _PREVIEW.maxother = 60
_PREVIEW.maxlong = 40


def _preview(value: Any, limit: int = 80) -> str:
    """A short repr of ``value``, bounded by construction: a few items of a few levels,
    the ends of long strings, whatever ``value`` expands to."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:60])
    text = _one_line(_PREVIEW.repr(value))
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
    try:
        return as_utc(moment)
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


def _domain(value: Any) -> str:
    """A provider's domain as an ASCII host (IDNA), perhaps with a port; else "" (a link is
    built from it: never from something that is not a host)."""
    text = clean_text(value).lower()
    host, colon, port = text.partition(":")
    if not host or (colon and not port.isdigit()):
        return ""
    ascii_name = ascii_host(host)
    return f"{ascii_name}{colon}{port}" if ascii_name else ""


def _dimension(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 < number <= MAX_NUMBER else None


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []
