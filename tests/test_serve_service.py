"""The HTTP server inside ``publisher run``: clients cannot take the service's file
descriptors, and the service's stop closes the server in time."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from helpers import ArticleWriter, wait_for
from standin.server import StandinProcess
from test_http_limits import limited_env
from test_service import (  # noqa: F401 - fixtures (publishers: start kills what it starts)
    STOP_LIMIT,
    Publisher,
    configure,
    feed,
    http_get,
    publishers,
    start,
    titles,
)

OPEN_FILES = 256  # soft and hard: the service, the server and every connection must fit
IDLE_CLIENTS = 300  # more connections than the limit allows descriptors


@contextlib.contextmanager
def idle_connections(url: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing, connecting in the background (a server with a
    short listen backlog makes the kernel retry some SYNs for seconds)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
            sockets.append(sock)
        wait_for(lambda: connected(sockets) == count, f"{count} connections to be established")
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def connected(sockets: list[socket.socket]) -> int:
    poll = select.poll()  # not select(): these descriptors may be numbered above 1024
    for sock in sockets:
        poll.register(sock, select.POLLOUT)
    return len(poll.poll(0))


def test_hundreds_of_idle_connections_do_not_fail_a_build_or_a_push(
    configure: Callable[..., Path], start: Callable[..., Publisher],  # noqa: F811
    write_article: ArticleWriter, botapi_process: StandinProcess, tmp_path: Path,
) -> None:
    write_article("1.txt", 1)
    configure()
    publisher = start(env=limited_env(tmp_path, OPEN_FILES))
    url = publisher.url()
    wait_for(lambda: len(titles(botapi_process)) == 1, "the first post")
    with idle_connections(url, IDLE_CLIENTS):
        time.sleep(0.5)  # let the server accept what it will
        for index in (2, 3):
            write_article(f"{index}.txt", index)
        wait_for(lambda: len(titles(botapi_process)) == 3, "the posts, despite the clients")
        wait_for(lambda: "Article number 3" in feed(tmp_path), "the feed, despite the clients")
    assert http_get(url + "/healthz") == (200, "ok\n")
    log = publisher.log()
    assert "Too many open files" not in log
    assert not publisher.events("build_failed") and not publisher.events("push_failed")
    assert publisher.events("http_connections_capped")
    assert publisher.stop() == 0


def test_the_stop_closes_the_server_with_clients_connected(
    configure: Callable[..., Path], start: Callable[..., Publisher],  # noqa: F811
    write_article: ArticleWriter, botapi_process: StandinProcess, tmp_path: Path,
) -> None:
    write_article("1.txt", 1)
    configure(schedule="1h")  # after the start-up runs, no job is in flight at the stop
    publisher = start()
    url = publisher.url()
    wait_for(lambda: len(titles(botapi_process)) == 1, "the first post")
    wait_for(lambda: publisher.events("feeds_written"), "the build to end")
    wait_for(lambda: publisher.events("push_done"), "the push to end")
    assert "Article number 1" in feed(tmp_path)
    with idle_connections(url, 50):
        started = time.monotonic()
        assert publisher.stop() == 0
        assert time.monotonic() - started < STOP_LIMIT
    assert "Traceback" not in publisher.log()
