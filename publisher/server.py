"""A small HTTP server: the feeds folder for readers, ``/healthz`` and ``/metrics``.

Static files are served only from the feeds folder, only by exact file name (no traversal,
no listing), with the right Content-Type, an ETag from the content, Last-Modified, 304 on
``If-None-Match``/``If-Modified-Since``, gzip when accepted, Cache-Control and HEAD.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import socket
import threading
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from publisher.errors import ConfigError
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
# A servable file name: no separators, no NUL, no leading dot (hidden and temporary files).
_SERVABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GZIP_REFUSED = re.compile(r"q\s*=\s*0(?:\.0*)?\s*$")
DEFAULT_CACHE_SECONDS = 300


def content_type_for(name: str) -> str | None:
    for suffix, content_type in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return None


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (``gzip;q=0`` refuses it)."""
    for coding in accept_encoding.split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            return not _GZIP_REFUSED.fullmatch(params.strip())
    return False


class _FileCache:
    """Bytes, gzip bytes and validators of served files, refreshed when a file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def get(self, path: Path) -> dict[str, Any] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._entries.get(path)
            if cached and cached[0] == key:
                return cached[1]
        try:
            data = path.read_bytes()
        except OSError:
            return None
        entry = {
            "data": data,
            "gzip": gzip.compress(data, mtime=0),
            "etag": '"' + hashlib.sha256(data).hexdigest()[:32] + '"',
            "mtime": int(stat.st_mtime),
        }
        with self._lock:
            self._entries[path] = (key, entry)
        return entry


class Handler(BaseHTTPRequestHandler):
    server: PublisherHTTPServer
    server_version = "publisher"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        event(log, logging.DEBUG, "http", client=self.client_address[0], line=format % args)

    def _respond(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/healthz" and self.server.health is not None:
            ok, detail = self.server.health()
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._send_bytes(status, (detail + "\n").encode(), "text/plain; charset=utf-8", head)
        elif path == "/metrics" and self.server.metrics is not None:
            self._send_bytes(HTTPStatus.OK, self.server.metrics(),
                             "text/plain; version=0.0.4; charset=utf-8", head)
        elif self.server.feeds_dir is not None:
            self._send_file(path, head)
        else:
            self._not_found(head)

    def _send_file(self, path: str, head: bool) -> None:
        name = "index.html" if path == "/" else path.removeprefix("/")
        content_type = content_type_for(name)
        file_path = self._servable(name)
        entry = None if file_path is None else self.server.files.get(file_path)
        if entry is None or content_type is None:
            self._not_found(head)
            return
        if self._not_modified(entry):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self._validators(entry)
            self.end_headers()
            return
        body = entry["data"]
        use_gzip = accepts_gzip(self.headers.get("Accept-Encoding", "")) and len(body) > 256
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self._validators(entry)
        self.send_header("Vary", "Accept-Encoding")
        if use_gzip:
            body = entry["gzip"]
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _servable(self, name: str) -> Path | None:
        """The file ``name`` directly inside the feeds folder, never through a link out of it."""
        root = self.server.feeds_dir
        if root is None or not _SERVABLE.fullmatch(name):
            return None
        path = (root / name).resolve()
        return path if path.parent == root and path.is_file() else None

    def _validators(self, entry: dict[str, Any]) -> None:
        self.send_header("ETag", entry["etag"])
        self.send_header("Last-Modified", formatdate(entry["mtime"], usegmt=True))
        self.send_header("Cache-Control", f"public, max-age={self.server.cache_seconds}")

    def _not_modified(self, entry: dict[str, Any]) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return entry["etag"] in tags or "*" in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since:
            try:
                since = parsedate_to_datetime(if_modified_since).timestamp()
            except (TypeError, ValueError):
                return False
            return entry["mtime"] <= since
        return False

    def _send_bytes(self, status: HTTPStatus, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _not_found(self, head: bool) -> None:
        self._send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head)


class PublisherHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, feeds_dir: Path | None,
                 health: HealthCheck | None, metrics: Callable[[], bytes] | None,
                 cache_seconds: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.feeds_dir = feeds_dir.resolve() if feeds_dir is not None else None
        self.health = health
        self.metrics = metrics
        self.cache_seconds = cache_seconds
        self.files = _FileCache()


class RunningServer:
    def __init__(self, httpd: PublisherHTTPServer) -> None:
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


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
                 cache_seconds: float | None = None) -> RunningServer:
    address = parse_listen(listen)
    try:
        httpd = PublisherHTTPServer(
            address, feeds_dir=feeds_dir, health=health, metrics=metrics,
            cache_seconds=int(cache_seconds or DEFAULT_CACHE_SECONDS),
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    server = RunningServer(httpd)
    event(log, logging.INFO, "http_listening", url=server.url)
    return server
