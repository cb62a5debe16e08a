"""The feeds folder for readers, ``/healthz`` and ``/metrics``, over HTTP.

``FeedsApp`` is a small ASGI app; ``publisher.httpd`` runs it on uvicorn (httptools) with a
listen backlog, idle and header-read timeouts, a connection cap and file descriptors kept for
the service (see that module for why uvicorn, and what it adds to it).

Static files are served only from the feeds folder, only by exact file name (no traversal, no
listing, never through a link out of the folder), with the right Content-Type, an ETag from
the content, Last-Modified, 304 on ``If-None-Match``/``If-Modified-Since``, gzip when
``Accept-Encoding`` allows it, single byte ranges (206/416), Cache-Control and HEAD. Files are
served from memory: bytes, gzip bytes and headers are cached per name and made again when the
file's (inode, size, mtime) changes, so a request costs one ``lstat``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from publisher.config import ServerConfig
from publisher.errors import ConfigError
from publisher.httpd import ServerLimits, ServerThread, listen_socket
from publisher.logs import event

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".rss.xml": "application/rss+xml; charset=utf-8",
    ".atom.xml": "application/atom+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
    ".opml": "text/x-opml; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".xsl": "text/xsl; charset=utf-8",
}
HealthCheck = Callable[[], tuple[bool, str]]
Headers = list[tuple[bytes, bytes]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# A servable file name: no separators, no NUL, no leading dot (hidden and temporary files),
# at most NAME_MAX (255) bytes: a longer name cannot exist, and must not reach the kernel.
_SERVABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_QVALUE = re.compile(r"q\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)", re.IGNORECASE)
# At most 18 digits a number (no file is an exabyte): a longer one is a Range that cannot be
# parsed, so it is ignored (RFC 9110 14.2), and never reaches int(), which refuses numbers
# over 4,300 digits with a ValueError.
_RANGE_DIGITS = 18
_RANGE = re.compile(rf"[ \t]*bytes[ \t]*=[ \t]*(\d{{0,{_RANGE_DIGITS}}})[ \t]*-[ \t]*"
                    rf"(\d{{0,{_RANGE_DIGITS}}})[ \t]*", re.IGNORECASE | re.ASCII)
DEFAULT_CACHE_SECONDS = 300
GZIP_MIN_BYTES = 256
_TEXT = b"text/plain; charset=utf-8"
_NO_STORE = (b"cache-control", b"no-store")
_NOT_FOUND = b"not found\n"
_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
# RSS and Atom go to a browser as XML: Firefox downloads application/rss+xml and Chrome shows
# it as plain text, while both render application/xml through the feed's XSLT stylesheet.
_FEED_TYPES = (CONTENT_TYPES[".rss.xml"].encode(), CONTENT_TYPES[".atom.xml"].encode())
_FOR_BROWSERS = CONTENT_TYPES[".xml"].encode()
_FEED_MEDIA = ("application/rss+xml", "application/atom+xml")


def content_type_for(name: str) -> str | None:
    for suffix, content_type in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return None


def coding_weights(accept_encoding: str) -> dict[str, float]:
    """``Accept-Encoding`` (or ``Accept``) as {coding: q}; an element with a malformed q-value
    is ignored."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = element.split(";")
        name = coding.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params:
            if param.strip().lower().startswith("q"):
                match = _QVALUE.fullmatch(param.strip())
                q = float(match.group(1)) if match else -1.0
        if q >= 0:
            weights[name] = q
    return weights


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip: its own q-value (``gzip`` or ``x-gzip``), or
    else that of ``*``, above 0 and not below an explicit ``identity``'s.

    ``*;q=0, gzip`` accepts gzip; ``gzip;q=0`` and ``gzip;q=0, *`` refuse it.
    """
    weights = coding_weights(accept_encoding)
    q = weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0)))
    return q > 0 and q >= weights.get("identity", 0.0)


def http_date_seconds(value: str) -> float | None:
    """An HTTP-date as a timestamp; None for anything else (a huge year, garbage)."""
    try:
        parsed = parsedate_to_datetime(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` of a single ``bytes=`` range within ``size`` bytes.

    None: serve the whole file (no range, several ranges, another unit, a number of more than
    18 digits or anything else that is no single range: RFC 9110 lets a server ignore
    ``Range``). ``(size, size)`` stands for "not satisfiable" (416).
    """
    match = _RANGE.fullmatch(header)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        suffix = int(last)
        return (max(0, size - suffix), size - 1) if suffix > 0 and size > 0 else (size, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        return (size, size)
    return (start, min(int(last), size - 1) if last else size - 1)


@dataclass(frozen=True)
class CachedFile:
    """One file as served: its identity, bytes, gzip bytes and ready-made headers."""

    key: tuple[int, int, int]  # (inode, size, mtime_ns)
    data: bytes
    gzipped: bytes
    etag: str
    last_modified: str
    mtime: int
    plain: Headers  # 200 without Content-Encoding
    compressed: Headers  # 200 with gzip
    not_modified: Headers  # 304


def file_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileCache:
    """Served files by name, made again when a file's (inode, size, mtime) changes.

    Used from the server's event loop only; a file is read (and compressed) in a worker
    thread, once however many requests wait for it.
    """

    def __init__(self, root: Path, cache_control: bytes) -> None:
        self.root = root
        self._prefix = str(root) + os.sep
        self._cache_control = cache_control
        self._entries: dict[str, CachedFile] = {}
        self._loading: dict[str, asyncio.Future[CachedFile | None]] = {}

    async def get(self, name: str) -> CachedFile | None:
        path = self._prefix + name
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = self._inside(path)
                st = os.stat(path)
        except (OSError, ValueError):
            self._entries.pop(name, None)
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        entry = self._entries.get(name)
        if entry is not None and entry.key == file_key(st):
            return entry
        return await self._load(name, path)

    def _inside(self, path: str) -> str:
        """The target of a link when it is a file directly in the folder; else ``OSError``."""
        target = os.path.realpath(path)
        if os.path.dirname(target) != str(self.root):
            raise OSError(f"{path} links out of the folder")
        return target

    async def _load(self, name: str, path: str) -> CachedFile | None:
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._read, name, path))
            self._loading[name] = pending
            pending.add_done_callback(lambda _: self._loading.pop(name, None))
        entry = await asyncio.shield(pending)
        if entry is not None:
            self._entries[name] = entry
        return entry

    def _read(self, name: str, path: str) -> CachedFile | None:
        content_type = content_type_for(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone, or became a link, since the lstat
            return None
        try:
            with open(fd, "rb") as handle:
                st = os.fstat(fd)
                if content_type is None or not stat.S_ISREG(st.st_mode):
                    return None
                data = handle.read()
        except OSError as exc:  # an I/O error: a 404 now, and read again next time
            event(log, logging.WARNING, "http_read_failed", file=path,
                  error=exc.strerror or str(exc))
            return None
        return self._entry(file_key(st), data, content_type, int(st.st_mtime))

    def _entry(self, key: tuple[int, int, int], data: bytes, content_type: str,
               mtime: int) -> CachedFile:
        gzipped = gzip.compress(data, mtime=0)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        last_modified = formatdate(mtime, usegmt=True)
        vary = b"Accept, Accept-Encoding" if content_type.encode() in _FEED_TYPES else (
            b"Accept-Encoding")
        validators = [(b"etag", etag.encode()), (b"last-modified", last_modified.encode()),
                      (b"cache-control", self._cache_control), (b"vary", vary)]
        common = [(b"content-type", content_type.encode()), *validators,
                  (b"accept-ranges", b"bytes")]
        return CachedFile(
            key=key, data=data, gzipped=gzipped, etag=etag, last_modified=last_modified,
            mtime=mtime,
            plain=[*common, (b"content-length", str(len(data)).encode())],
            compressed=[*common, (b"content-encoding", b"gzip"),
                        (b"content-length", str(len(gzipped)).encode())],
            not_modified=validators,
        )


class Request:
    """The request headers the app reads, from an ASGI scope (repeated headers joined)."""

    __slots__ = ("accept", "accept_encoding", "if_modified_since", "if_none_match", "if_range",
                 "range")
    accept: str | None
    accept_encoding: str | None
    if_modified_since: str | None
    if_none_match: str | None
    if_range: str | None
    range: str | None

    def __init__(self, scope: dict[str, Any]) -> None:
        for attribute in self.__slots__:
            setattr(self, attribute, None)
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _READ_HEADERS:
                text = value.decode("latin-1")
                found[name] = f"{found[name]}, {text}" if name in found else text
        for name, text in found.items():
            setattr(self, _READ_HEADERS[name], text)


_READ_HEADERS = {
    b"accept": "accept", b"accept-encoding": "accept_encoding", b"if-none-match": "if_none_match",
    b"if-modified-since": "if_modified_since", b"range": "range", b"if-range": "if_range",
}


def not_modified(entry: CachedFile, request: Request) -> bool:
    """RFC 9110 13.2.2: ``If-None-Match`` (weak comparison) wins over ``If-Modified-Since``,
    which is ignored when it is not a valid date or lies in the future."""
    if request.if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in request.if_none_match.split(",")}
        return entry.etag in tags or "*" in tags
    if request.if_modified_since:
        since = http_date_seconds(request.if_modified_since)
        return since is not None and since <= time.time() and entry.mtime <= since
    return False


def range_applies(entry: CachedFile, request: Request) -> bool:
    """``If-Range``: the range only for the same file (strong ETag or exact date)."""
    if request.if_range is None:
        return True
    return request.if_range.strip() in (entry.etag, entry.last_modified)


Response = tuple[int, Headers, bytes]


class Webhook(Protocol):
    """A POST endpoint (``publisher.updates.WebhookEndpoint``: the followers' updates)."""

    path: str

    async def respond(self, scope: dict[str, Any], receive: Any) -> Response: ...


class FeedsApp:
    """The ASGI app: ``/healthz``, ``/metrics``, the feeds folder's files, and POSTs to the
    followers' webhook when there is one."""

    def __init__(self, *, feeds_dir: Path | None, health: HealthCheck | None,
                 metrics: Callable[[], bytes] | None, cache_seconds: int,
                 webhook: Webhook | None = None) -> None:
        self.webhook = webhook
        self.health = health
        self.metrics = metrics
        cache_control = f"public, max-age={cache_seconds}".encode()
        self.files = None if feeds_dir is None else FileCache(feeds_dir.resolve(), cache_control)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method in ("GET", "HEAD"):
            status, headers, body = await self._respond(scope)
        elif method == "POST" and self.webhook is not None and scope["path"] == self.webhook.path:
            status, headers, body = await self.webhook.respond(scope, receive)
        else:
            status, headers, body = _text(405, b"method not allowed\n",
                                          [(b"allow", b"GET, HEAD")])
        if log.isEnabledFor(logging.DEBUG):  # before sending: the client may act on it at once
            client = scope.get("client") or ("-",)
            event(log, logging.DEBUG, "http_request", client=client[0], method=method,
                  path=scope["path"], status=status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _respond(self, scope: dict[str, Any]) -> Response:
        path = scope["path"]
        if path == "/healthz" and self.health is not None:
            ok, detail = self.health()
            return _text(200 if ok else 503, (detail + "\n").encode())
        if path == "/metrics" and self.metrics is not None:
            return _text(200, self.metrics(), content_type=_METRICS)
        name = "index.html" if path == "/" else path[1:]
        entry = None
        if self.files is not None and _SERVABLE.fullmatch(name) and content_type_for(name):
            entry = await self.files.get(name)
        if entry is None:
            return _text(404, _NOT_FOUND)
        return file_response(entry, Request(scope), head=scope["method"] == "HEAD")


def file_response(entry: CachedFile, request: Request, *, head: bool) -> Response:
    if not_modified(entry, request):
        return 304, entry.not_modified, b""
    use_gzip = (request.accept_encoding is not None and len(entry.data) > GZIP_MIN_BYTES
                and accepts_gzip(request.accept_encoding))
    body, headers = (entry.gzipped, entry.compressed) if use_gzip else (entry.data, entry.plain)
    if request.accept is not None and is_browser(request.accept):
        headers = [(name, _FOR_BROWSERS if name == b"content-type" and value in _FEED_TYPES
                    else value) for name, value in headers]
    if request.range is not None and not head and range_applies(entry, request):
        span = byte_range(request.range, len(body))
        if span is not None:
            return range_response(body, headers, span)
    return 200, headers, body


def is_browser(accept: str) -> bool:
    """A page view, not a feed reader: ``text/html`` accepted, no feed type named (readers
    name theirs; browsers send ``text/html,application/xhtml+xml,application/xml;q=0.9...``)."""
    weights = coding_weights(accept.lower())
    return weights.get("text/html", 0) > 0 and not any(media in weights for media in _FEED_MEDIA)


def range_response(body: bytes, headers: Headers, span: tuple[int, int]) -> Response:
    first, last = span
    size = len(body)
    if first >= size:
        return 416, [(b"content-type", _TEXT), (b"content-range", f"bytes */{size}".encode()),
                     (b"content-length", b"0")], b""
    part = [(name, value) for name, value in headers if name != b"content-length"]
    part += [(b"content-range", f"bytes {first}-{last}/{size}".encode()),
             (b"content-length", str(last - first + 1).encode())]
    return 206, part, body[first:last + 1]


def _text(status: int, body: bytes, extra: Headers | None = None,
          content_type: bytes = _TEXT) -> Response:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               _NO_STORE, *(extra or [])]
    return status, headers, body


# -- running it --------------------------------------------------------------------------------


def limits_from(config: ServerConfig) -> ServerLimits:
    return ServerLimits(idle_timeout=config.idle_timeout_seconds,
                        header_timeout=config.header_timeout_seconds,
                        max_connections=config.max_connections)


class RunningServer:
    """A started server: its URL, and ``stop``/``close``."""

    def __init__(self, thread: ServerThread) -> None:
        self._thread = thread
        self.address = thread.address
        self.max_connections = thread.max_connections

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        return self._thread.open_connections

    def stop(self) -> None:
        """Stop accepting connections; in-flight responses finish. Returns at once."""
        self._thread.stop()

    def close(self) -> None:
        """Stop, and wait until the server is gone (about two seconds at most)."""
        self._thread.close()


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``":8080"`` (loopback) or ``"8080"`` to a (host, port) pair."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"server.listen must be HOST:PORT, not {listen!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"server.listen port out of range: {listen!r}")
    return host, number


def start_server(listen: str, *, feeds_dir: Path | None = None, health: HealthCheck | None = None,
                 metrics: Callable[[], bytes] | None = None,
                 cache_seconds: float | None = None,
                 limits: ServerLimits | None = None,
                 webhook: Webhook | None = None) -> RunningServer:
    """Listen on ``listen`` and serve in a thread of its own; ``ConfigError`` for a bad
    ``listen``, ``ServerError`` when it cannot listen or start."""
    limits = limits or ServerLimits()
    host, port = parse_listen(listen)
    app = FeedsApp(feeds_dir=feeds_dir, health=health, metrics=metrics,
                   cache_seconds=int(cache_seconds or DEFAULT_CACHE_SECONDS), webhook=webhook)
    sock = listen_socket(host, port, limits.backlog)
    try:
        server = RunningServer(ServerThread(app, sock, limits))
    except BaseException:
        sock.close()
        raise
    event(log, logging.INFO, "http_listening", url=server.url,
          max_connections=server.max_connections)
    return server
