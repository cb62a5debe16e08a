"""The HTTP server under ``publisher.server``'s app: uvicorn and httptools, with hard limits.

Why uvicorn: it is the mature asyncio HTTP/1.1 server for ASGI apps (keep-alive, pipelining,
HEAD, ``Date``, graceful shutdown), its httptools protocol parses with llhttp (node.js's
parser), it runs on uvloop (libuv), and it runs inside an event loop we own, in this process,
so the app reads the service's health and metrics directly. The alternatives fit worse:
gunicorn (with whitenoise) forks workers that cannot see the service's state; waitress (a
thread per request) and hypercorn (h11) parse in pure Python; granian serves from its own
Rust runtime and worker processes. uvicorn lacks three
limits a public server needs, which this module adds through its extension points (a
protocol class and a ``Server`` subclass), not by patching:

* a header-read deadline: uvicorn's ``timeout_keep_alive`` only covers the wait *between*
  requests and any byte cancels it, so a client trickling a request line ("slowloris")
  holds its connection forever. ``GuardedProtocol`` closes a connection whose request head
  is not complete ``header_timeout`` after its first byte, one waiting for a request longer
  than ``idle_timeout`` (a fresh connection too), one that has not read any of its response
  for ``idle_timeout``, and bounds a request head to ``MAX_HEAD_BYTES`` (counted before
  httptools parses it: uvicorn has no head limit, and llhttp keeps a header whole in memory);
* a connection cap: uvicorn's ``limit_concurrency`` still accepts every connection (a file
  descriptor each) and answers 503. ``CappedListener`` stops accepting at the cap, so the
  kernel's listen backlog holds the rest and the process never runs out of descriptors;
* file descriptors for the service: ``connection_cap`` raises the soft ``RLIMIT_NOFILE``
  toward the hard limit and keeps ``FD_RESERVE`` descriptors out of the cap, so that no
  client can make a build or a push fail with "Too many open files".

Each server runs on its own event loop in its own thread: a build in a worker thread or a
push on the service's loop never delays a reader, and no request delays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.lifespan.off import LifespanOff
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from publisher.errors import ServerError
from publisher.logs import event

log = logging.getLogger("publisher.server")

LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
# Descriptors kept for the service itself (state databases, lock, watcher, Telegram's
# connections, feed files being written, worker processes' pipes), whatever clients do.
FD_RESERVE = 128
MAX_HEAD_BYTES = 32 * 1024  # request line and headers; a feed reader sends well under 1 KiB
CLOSE_SECONDS = 2.0  # in-flight responses may finish this long after a stop
LINGER_SECONDS = 2.0  # what a refused client still sends is read (and dropped) this long
ACCEPT_RETRY_SECONDS = 1.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
)
# A request head ends with an empty line: CRLF CRLF, or a bare LF where a parser allows it.
_HEAD_ENDS = (b"\n\n", b"\n\r\n")
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\ncontent-length: 23\r\nconnection: close\r\n\r\nrequest head too large\n"
)


@dataclass(frozen=True)
class ServerLimits:
    """How long and how many: the ``[server]`` keys of the same names."""

    idle_timeout: float = 15.0  # waiting for a request, or for a client to read its answer
    header_timeout: float = 10.0  # from a request's first byte to the end of its headers
    max_connections: int = 1024
    backlog: int = LISTEN_BACKLOG


def connection_cap(max_connections: int) -> int:
    """The connection cap that leaves ``FD_RESERVE`` descriptors free, raising the soft limit.

    The soft ``RLIMIT_NOFILE`` is raised only as far as the cap needs (and the hard limit
    allows): a process whose descriptors stay low keeps working with ``select()``-based code.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = _open_descriptors()
    wanted = in_use + FD_RESERVE + max_connections
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return max_connections
    cap = min(max_connections, soft - in_use - FD_RESERVE)
    if cap < 1:
        raise ServerError(
            f"the open files limit ({soft}, hard {hard}) leaves no file descriptors for HTTP "
            f"connections after the {in_use} in use and the service's {FD_RESERVE}; raise it "
            "(LimitNOFILE= in the systemd unit, ulimit -n)"
        )
    if cap < max_connections:
        event(log, logging.WARNING, "http_connections_capped", max_connections=cap,
              configured=max_connections, open_files_limit=soft)
    return cap


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a small process
        return 32


class CappedListener:
    """Accepts connections while fewer than ``cap`` are open; the kernel's backlog holds the rest.

    Stands in for the ``asyncio.Server`` uvicorn would create (``close``, ``wait_closed``).
    """

    def __init__(self, sock: socket.socket, cap: int,
                 protocol_factory: Callable[[CappedListener], asyncio.Protocol]) -> None:
        self._sock = sock
        self._cap = cap
        self._factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self._accepting = False
        self._closed = False
        self._failing = False
        self._connecting: set[asyncio.Task[None]] = set()
        self.open = 0

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._accepting and not self._closed and self.open < self._cap:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self._sock.fileno())
            self._accepting = False

    def _accept_ready(self) -> None:
        while self.open < self._cap:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._failing = False
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                # Nagle's algorithm would hold a response's last segment for the client's
                # delayed ACK (40 ms); asyncio sets this only on sockets it made itself.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.open += 1
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)  # held: the loop keeps only weak references
            task.add_done_callback(self._connecting.discard)
        self._pause()

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (the limit lowered under us, say): pause, then try again.

        Logged once per streak of failures, so a full table does not flood the log.
        """
        if not self._failing:
            level = logging.WARNING if exc.errno in _OUT_OF_DESCRIPTORS else logging.ERROR
            event(log, level, "http_accept_failed", error=exc.strerror or str(exc),
                  retry_in=ACCEPT_RETRY_SECONDS)
        self._failing = True
        self._pause()
        self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)

    async def _connect(self, conn: socket.socket) -> None:
        made: list[asyncio.Protocol] = []  # once made, the protocol's connection_lost releases

        def protocol() -> asyncio.Protocol:
            made.append(self._factory(self))
            return made[0]

        try:
            await self._loop.connect_accepted_socket(protocol, sock=conn)
        except OSError:  # the client left before its transport was made
            conn.close()
            if not made:
                self.released()

    def released(self) -> None:
        """A connection closed (its protocol's ``connection_lost``)."""
        self.open -= 1
        self._resume()

    def close(self) -> None:
        self._closed = True
        self._pause()
        self._sock.close()

    async def wait_closed(self) -> None:
        return None


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, idle and write deadlines, a head
    size limit, quiet logging of clients' mistakes, and no keep-alive after a request body
    (only GET and HEAD are served: a trickled body must not hold the connection).
    """

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 listener: CappedListener, limits: ServerLimits,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = PROTOCOL_LOG  # type: ignore[assignment]
        self._listener = listener
        self._limits = limits
        self._head_started: float | None = None  # loop.time() of a request head's first byte
        self._head_bytes = 0  # of the request head being read, given to the parser so far
        self._tail = b""  # the last bytes of it: a blank line may begin there
        self._in_body = False  # the parser is inside a request's body
        self._refusal: bytes | None = None  # to answer once the answers in flight are out
        self._lingering_until: float | None = None  # loop.time() to close at, once refused
        self._idle_since = 0.0
        self._unsent = 0  # write buffer at the last check
        self._unsent_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._listener.released()

    def data_received(self, data: bytes) -> None:
        """Hand ``data`` to the parser a head at a time, each counted before it is parsed.

        Counted after parsing, a head that ends within one read would already have been
        parsed (and have cleared the count) however large it was; so the parser gets the
        bytes up to the first place a head can end (a blank line) only once they are known
        to fit in what is left of ``MAX_HEAD_BYTES``.
        """
        if self._refusal is not None or self._lingering_until is not None:
            return  # refused: the rest of what it sends is dropped
        start = 0
        while start < len(data) and not self.transport.is_closing():
            if self._in_body:  # a body is no head (and ends the connection after its answer)
                super().data_received(data[start:] if start else data)
                return
            end = self._head_end(data, start)
            if self._head_bytes + end - start > MAX_HEAD_BYTES:
                self._refuse(_HEAD_TOO_LARGE, "head_too_large")
                return
            piece = data if end - start == len(data) else data[start:end]
            self._head_bytes += len(piece)
            self._tail = (self._tail + piece[-2:])[-2:]
            start = end
            super().data_received(piece)  # on_headers_complete resets the count

    def _head_end(self, data: bytes, start: int) -> int:
        """Where to stop parsing ``data`` from ``start``: right after the first blank line
        (``\\n\\n`` or ``\\n\\r\\n``, also one begun in the bytes before), else at its end. Only
        the bytes that could still fit in the head are searched."""
        joined = self._tail + data[start:start + 2]
        for mark in _HEAD_ENDS:
            found = joined.find(mark)
            if 0 <= found < len(self._tail):
                return start + found + len(mark) - len(self._tail)
        limit = start + MAX_HEAD_BYTES - self._head_bytes + 1
        ends = [found + len(mark) for mark in _HEAD_ENDS
                if (found := data.find(mark, start, limit)) >= 0]
        return min(ends) if ends else len(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_started = None
        self._head_bytes, self._tail = 0, b""
        self._in_body = True  # until on_message_complete: at once for a request without one
        super().on_headers_complete()
        if self.cycle is not None and self._has_body():
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return True
        return False

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        last = not self.pipeline  # else super() starts the next pipelined request's answer
        super().on_response_complete()
        if self._refusal is not None and last and not self.transport.is_closing():
            self._answer_and_linger(self._refusal)  # the answers it came after are out

    def _unsupported_upgrade_warning(self) -> None:
        """An ``Upgrade`` request (WebSocket, h2c) is answered as plain HTTP, then closed."""
        event(log, logging.DEBUG, "http_upgrade_refused", client=self._client_host())
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        else:
            self.transport.close()

    def check_deadlines(self, now: float) -> None:
        """Close a connection past a deadline; the server calls this every few ticks."""
        if self.transport is None:
            return
        limits = self._limits
        # Checked even once closing: a close waits for the unsent answer to be read.
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0 or unsent != self._unsent:  # empty, read from, or a new answer
            self._unsent, self._unsent_since = unsent, now
        elif now - self._unsent_since > limits.idle_timeout:
            event(log, logging.DEBUG, "http_dropped", reason="not_reading",
                  client=self._client_host())
            self.reset()
            return
        if self._lingering_until is not None:
            if now > self._lingering_until:
                self.transport.close()
            return
        if self.transport.is_closing() or self._refusal is not None:
            return
        if self._head_started is not None and now - self._head_started > limits.header_timeout:
            self._refuse(_REQUEST_TIMEOUT, "header_timeout")
            return
        idle = self._head_started is None and (self.cycle is None or self.cycle.response_complete)
        if idle and unsent == 0 and now - self._idle_since > limits.idle_timeout:
            self.transport.close()

    def reset(self) -> None:
        """Abort with a TCP reset: the kernel drops the unsent answer instead of trickling it
        to a client that does not read (nginx's ``reset_timedout_connection``)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _refuse(self, response: bytes, reason: str) -> None:
        """Answer ``response`` and close, after the answers to requests pipelined before."""
        event(log, logging.DEBUG, "http_dropped", reason=reason, client=self._client_host())
        self._head_started = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._refusal = response  # sent by on_response_complete, in order
            return
        self._answer_and_linger(response)

    def _answer_and_linger(self, response: bytes) -> None:
        """Send ``response``, end our side, and drop what the client still sends for
        ``LINGER_SECONDS`` (or until it closes): closed at once with a request still
        arriving, the kernel would answer it with a reset, which can destroy the answer
        before the client reads it (nginx's lingering close)."""
        self._refusal = None
        self._lingering_until = self.loop.time() + LINGER_SECONDS
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _client_host(self) -> str:
        return self.client[0] if self.client else "-"


class _ProtocolLog:
    """What uvicorn's protocol and request cycle log goes through this.

    A client's mistake (a malformed request, an upgrade) is one DEBUG event, not a warning a
    client could repeat into the log; an error of the app stays an ERROR.
    """

    level = logging.WARNING  # uvicorn skips its per-connection TRACE lines above TRACE

    def warning(self, message: str, *args: Any, **_: Any) -> None:
        event(log, logging.DEBUG, "http_bad_request", reason=message % args if args else message)

    def error(self, message: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        text = (message % args if args else message).strip()
        event(log, logging.ERROR, "http_error", error=text, exc_info=exc_info is not None)

    def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.error(message, *args, **kwargs)

    def info(self, message: str, *args: Any, **_: Any) -> None:
        return None

    debug = info


PROTOCOL_LOG = _ProtocolLog()


class GuardedServer(uvicorn.Server):
    """uvicorn's server over our ``CappedListener``, checking connection deadlines each tick."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, limits: ServerLimits,
                 cap: int) -> None:
        super().__init__(config)
        self._sock = sock
        self._limits = limits
        self._cap = cap
        self._ticks_per_check = max(1, min(10, int(min(limits.idle_timeout,
                                                       limits.header_timeout) / 0.1 / 5)))
        self.ready = threading.Event()
        self.event_loop: asyncio.AbstractEventLoop | None = None

    async def run_until_exit(self) -> None:
        """Serve until ``should_exit``, then shut down within ``CLOSE_SECONDS``."""
        self.event_loop = asyncio.get_running_loop()
        self.event_loop.set_exception_handler(_loop_exception)
        self.config.load()
        self.lifespan = LifespanOff(self.config)
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
            for connection in list(self.server_state.connections):
                connection.reset()  # type: ignore[union-attr]  # still sending: a slow reader

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        def protocol(listener: CappedListener) -> asyncio.Protocol:
            return GuardedProtocol(self.config, self.server_state, self.lifespan.state,
                                   listener, self._limits)

        listener = CappedListener(self._sock, self._cap, protocol)
        listener.start()
        self.servers = [listener]  # type: ignore[list-item]
        self.started = True
        self.ready.set()

    async def on_tick(self, counter: int) -> bool:
        if counter % self._ticks_per_check == 0:
            now = asyncio.get_running_loop().time()
            for connection in list(self.server_state.connections):
                connection.check_deadlines(now)  # type: ignore[union-attr]
        return await super().on_tick(counter)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where installed (a quarter less CPU per request than asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop's wheels
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line, never a traceback: nothing a client does may print one."""
    error = context.get("exception")
    event(log, logging.ERROR, "http_loop_error", message=context.get("message", ""),
          error=f"{type(error).__name__}: {error}" if error else "")


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket; ``ServerError`` when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServerError(f"cannot listen on {_display(host, port)}: {exc.strerror or exc}"
                          ) from None
    return sock


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServerThread:
    """A ``GuardedServer`` on its own event loop in a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket, limits: ServerLimits) -> None:
        cap = connection_cap(limits.max_connections)
        # uvicorn's server narrates its start and stop, and a stop that had to cut off a slow
        # reader, which is no error; our own events say what matters.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        config = uvicorn.Config(
            app, http=GuardedProtocol, ws="none", lifespan="off", interface="asgi3",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            headers=[("server", "publisher")], backlog=limits.backlog,
            timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
            timeout_graceful_shutdown=CLOSE_SECONDS,  # type: ignore[arg-type]
        )
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.max_connections = cap
        self._server = GuardedServer(config, sock, limits, cap)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        if not self._server.ready.wait(10) or self._failure is not None:
            raise ServerError(f"the HTTP server did not start: {self._failure}")

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(self._server.run_until_exit())
        except BaseException as exc:  # reported by the constructor, or logged once
            self._failure = exc
            self._server.ready.set()
            if self._server.started:
                event(log, logging.ERROR, "http_server_failed", error=str(exc) or repr(exc))

    @property
    def open_connections(self) -> int:
        return len(self._server.server_state.connections)

    def stop(self) -> None:
        """Stop accepting and let in-flight responses finish; returns at once."""
        self._server.should_exit = True

    def close(self) -> None:
        """Stop, and wait (at most ``CLOSE_SECONDS`` and a little) until the server is gone."""
        self.stop()
        self._thread.join(CLOSE_SECONDS + 1.0)
