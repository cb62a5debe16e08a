"""The server's limits, on real sockets: header and idle timeouts, the connection cap, clients
that stop reading, oversized heads, and the open-files limit of ``publisher serve``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from publisher import httpd
from publisher.config import load_config
from publisher.errors import ConfigError
from publisher.httpd import FD_RESERVE, MAX_HEAD_BYTES, ServerLimits
from publisher.server import RunningServer, limits_from, start_server

SHORT = 0.5  # the timeouts of these tests' servers, in seconds
SLACK = 1.5  # how late a timeout may fire here: checks run every SHORT / 5, on a busy machine


@pytest.fixture
def feeds_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "feeds"
    folder.mkdir()
    (folder / "all.rss.xml").write_bytes(b"<rss>" + b"x" * 2000 + b"</rss>")
    (folder / "big.json").write_bytes(os.urandom(8 * 1024 * 1024))
    return folder


@pytest.fixture
def serve(feeds_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def serve(**limits: float) -> RunningServer:
        values = {"idle_timeout": SHORT, "header_timeout": SHORT, **limits}
        server = start_server("127.0.0.1:0", feeds_dir=feeds_dir,
                              limits=ServerLimits(**values))  # type: ignore[arg-type]
        started.append(server)
        return server

    yield serve
    for server in started:
        server.close()


def connect(server: RunningServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=SHORT + SLACK + 3)


def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock``, and what it sent before."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def get(server: RunningServer, path: str = "/all.rss.xml") -> httpx.Response:
    return httpx.get(server.url + path, timeout=3)


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_a_half_sent_request_is_cut_at_the_header_timeout(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(idle_timeout=30)  # not the idle timeout: the header timeout
    with connect(server) as slow, connect(server) as trickle:
        slow.sendall(b"GET /all.rss")
        trickle.sendall(b"GET /all.rss.xml HTTP/1.1\r\nX-Slow")
        started = time.monotonic()
        closed: dict[str, float] = {}
        while len(closed) < 2 and time.monotonic() < started + SHORT + SLACK:
            assert get(server).status_code == 200  # normal requests are answered meanwhile
            for name, sock in (("slow", slow), ("trickle", trickle)):
                if name not in closed and readable(sock):
                    closed[name] = time.monotonic() - started
            if "trickle" not in closed:
                trickle.send(b"w")  # a byte of a header name every 20 ms
            time.sleep(0.02)
        assert set(closed) == {"slow", "trickle"}
        assert min(closed.values()) >= SHORT - 0.05
        assert closed_after(slow)[1].startswith(b"HTTP/1.1 408 ")
        assert closed_after(trickle)[1].startswith(b"HTTP/1.1 408 ")
    wait_until(lambda: server.open_connections == 0, "the connections to go")


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(header_timeout=30)
    with connect(server) as sock:
        sock.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        while len(first) < 2000:
            first += sock.recv(65536)
        seconds, rest = closed_after(sock)
    assert rest == b""
    assert SHORT - 0.2 <= seconds < SHORT + SLACK


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(header_timeout=30)
    with connect(server) as sock:
        seconds, received = closed_after(sock)
    assert received == b""
    assert SHORT - 0.2 <= seconds < SHORT + SLACK


def test_the_default_idle_timeout_is_15_seconds() -> None:
    assert ServerLimits().idle_timeout == 15
    assert ServerLimits().header_timeout == 10


def test_a_client_that_stops_reading_is_dropped(
    serve: Callable[..., RunningServer], feeds_dir: Path,
) -> None:
    server = serve(header_timeout=30)
    size = (feeds_dir / "big.json").stat().st_size
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.json HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        wait_until(lambda: server.open_connections == 0, "the stalled connection to be dropped",
                   timeout=SHORT + SLACK + 2)
        _, received = closed_after(sock)  # what the buffers held, then the reset
    assert received.startswith(b"HTTP/1.1 200 ") and len(received) < size


def test_connections_above_the_cap_wait_in_the_backlog(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(idle_timeout=30, header_timeout=30, max_connections=5)
    idle = [connect(server) for _ in range(5)]
    try:
        wait_until(lambda: server.open_connections == 5, "five accepted connections")
        with connect(server) as extra:
            extra.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\n\r\n")
            extra.settimeout(0.5)
            with pytest.raises(TimeoutError):
                extra.recv(100)  # not accepted: the server holds no descriptor for it
            assert server.open_connections == 5
            idle.pop().close()
            extra.settimeout(5)
            assert extra.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_a_head_larger_than_the_limit_is_431(serve: Callable[..., RunningServer]) -> None:
    server = serve(header_timeout=5)
    with connect(server) as sock:
        sock.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(100):
                sock.sendall(b"X-Padding: " + b"p" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, received = closed_after(sock)
    assert received.startswith(b"HTTP/1.1 431 ")


def request_head(size: int) -> bytes:
    """A GET whose head (request line, headers, blank line) is exactly ``size`` bytes."""
    start, end = b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\nX-Padding: ", b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


def answer_to(server: RunningServer, *writes: bytes) -> bytes:
    """What the server answers (until it closes, or the first answer is whole) to ``writes``."""
    with connect(server) as sock:
        try:
            for data in writes:
                sock.sendall(data)
                time.sleep(0.05)  # a read each, on the server's side
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
    return received


@pytest.mark.parametrize("size", [MAX_HEAD_BYTES + 1, 33_000, 100_000])
@pytest.mark.parametrize("writes", [1, 2])
def test_a_head_over_the_limit_is_431_however_it_arrives(
    serve: Callable[..., RunningServer], size: int, writes: int,
) -> None:
    server = serve(header_timeout=5)
    head = request_head(size)
    parts = [head] if writes == 1 else [head[: size // 2], head[size // 2:]]
    assert answer_to(server, *parts).startswith(b"HTTP/1.1 431 ")
    assert get(server).status_code == 200  # the server is fine


@pytest.mark.parametrize("size", [30_000, MAX_HEAD_BYTES])
@pytest.mark.parametrize("writes", [1, 2])
def test_a_head_within_the_limit_is_answered(
    serve: Callable[..., RunningServer], size: int, writes: int,
) -> None:
    server = serve(header_timeout=5)
    head = request_head(size)
    parts = [head] if writes == 1 else [head[: size // 2], head[size // 2:]]
    assert answer_to(server, *parts).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_head_cut_inside_its_blank_line_is_measured_exactly(
    serve: Callable[..., RunningServer], cut: int,
) -> None:
    server = serve(header_timeout=5)
    for size, status in ((MAX_HEAD_BYTES, b"200"), (MAX_HEAD_BYTES + 1, b"431")):
        head = request_head(size)
        answer = answer_to(server, head[:-cut], head[-cut:])
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), (size, cut)


def test_a_client_still_sending_its_head_reads_its_431(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(header_timeout=5)
    with connect(server) as sock:
        sock.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        for _ in range(32):  # 2 MiB more, well after the server refused the head
            sock.sendall(b"p" * 65536)
        seconds, received = closed_after(sock)  # the server ends its side: EOF, no reset
    assert received.startswith(b"HTTP/1.1 431 ") and received.endswith(b"too large\n")
    assert seconds < httpd.LINGER_SECONDS + SLACK
    wait_until(lambda: server.open_connections == 0, "the connection to go")


def test_each_pipelined_head_is_held_to_the_limit(serve: Callable[..., RunningServer]) -> None:
    server = serve(header_timeout=5)
    small = request_head(200)
    # Many small heads in one write are no large head ...
    with connect(server) as sock:
        sock.sendall(small * 300)
        received = b""
        while received.count(b"HTTP/1.1 200 ") < 300 and (chunk := sock.recv(1 << 20)):
            received += chunk
    assert received.count(b"HTTP/1.1 200 ") == 300
    # ... and a large head behind small ones, in the same write, is one.
    answer = b""
    with connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(small * 3 + request_head(MAX_HEAD_BYTES + 1))
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 3 and b"HTTP/1.1 431 " in answer


def test_a_request_with_a_body_is_answered_then_closed(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(idle_timeout=30, header_timeout=30)
    with connect(server) as sock:
        # The body never comes: the connection is closed once the answer is out.
        sock.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        seconds, received = closed_after(sock)
    assert received.startswith(b"HTTP/1.1 200 ") and b"connection: close" in received
    assert seconds < 2


def test_closing_the_server_closes_idle_connections_at_once(
    serve: Callable[..., RunningServer],
) -> None:
    server = serve(idle_timeout=30, header_timeout=30)
    idle = [connect(server) for _ in range(20)]
    try:
        wait_until(lambda: server.open_connections == 20, "the idle connections")
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1.5
        assert all(closed_after(sock)[1] == b"" for sock in idle)
    finally:
        for sock in idle:
            sock.close()


# --- open files ---------------------------------------------------------------------------------

NOFILE_HOOK = """\
import os, resource
_limit = int(os.environ["TEST_NOFILE_LIMIT"])
resource.setrlimit(resource.RLIMIT_NOFILE, (_limit, _limit))
"""


def limited_env(tmp_path: Path, limit: int) -> dict[str, str]:
    """The environment of a child whose open-files limit (soft and hard) is ``limit``."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(NOFILE_HOOK)
    repo = Path(__file__).resolve().parent.parent
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(repo)]),
            "TEST_NOFILE_LIMIT": str(limit), "PYTHONWARNINGS": "error"}


def test_serve_caps_connections_below_a_low_open_files_limit(tmp_path: Path) -> None:
    (tmp_path / "feeds").mkdir()
    (tmp_path / "config.toml").write_text('[feeds]\ndir = "feeds"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "serve", "-c", str(tmp_path / "config.toml"),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=limited_env(tmp_path, 256),
    )
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("Serving")
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    capped = re.search(r"http_connections_capped max_connections=(\d+)", stderr)
    assert capped, stderr
    assert 0 < int(capped.group(1)) <= 256 - FD_RESERVE
    assert process.returncode == 0


def test_serve_refuses_an_open_files_limit_that_leaves_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "publisher", "serve", "--port", "0"], cwd=tmp_path,
        capture_output=True, text=True, timeout=30, env=limited_env(tmp_path, FD_RESERVE),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: the open files limit (")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_responses_are_not_held_back_by_nagle(
    serve: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch, loop: str,
) -> None:
    """Without TCP_NODELAY a response's last segment waits for the client's delayed ACK."""
    if loop == "asyncio":  # the fallback where uvloop is not installed
        monkeypatch.setattr(httpd, "loop_factory", lambda: asyncio.new_event_loop)
    server = serve(idle_timeout=30, header_timeout=30)
    assert type(server._thread._server.event_loop).__module__.startswith(loop)  # type: ignore[attr-defined]
    with connect(server):
        wait_until(lambda: server.open_connections == 1, "the connection")
        (protocol,) = server._thread._server.server_state.connections  # type: ignore[attr-defined]
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("idle_timeout_seconds", 0),
                                            ("header_timeout_seconds", -1),
                                            ("max_connections", 0)])
def test_limits_must_be_positive(tmp_path: Path, key: str, value: int) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[server]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"server.{key}"):
        load_config(path)


def test_limits_from_the_config_and_the_environment() -> None:
    config = load_config(environ={"PUBLISHER_SERVER_IDLE_TIMEOUT_SECONDS": "2.5",
                                  "PUBLISHER_SERVER_MAX_CONNECTIONS": "64"})
    assert limits_from(config.server) == ServerLimits(idle_timeout=2.5, max_connections=64)
    assert limits_from(load_config(environ={}).server) == ServerLimits()


def test_serve_applies_the_server_keys(tmp_path: Path) -> None:
    (tmp_path / "feeds").mkdir()
    (tmp_path / "config.toml").write_text(
        f'[feeds]\ndir = "feeds"\n[server]\nidle_timeout_seconds = {SHORT}\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "serve", "-c", str(tmp_path / "config.toml"),
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" at ")[1].split()[0].rstrip("/")
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            seconds, _ = closed_after(sock)
        assert SHORT - 0.2 <= seconds < SHORT + SLACK
    finally:
        process.terminate()
        process.communicate(timeout=10)
