"""The feeds server: content types, validators, 304, gzip, HEAD, 404s; and ``publisher serve``."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_feeds import make_article, make_config

from publisher.feeds import build_feeds
from publisher.server import FeedsApp, RunningServer, accepts_gzip, start_server

CACHE_SECONDS = 600


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """One server for the module (closing one takes up to its 0.5 s poll interval) over a
    freshly built feeds folder, and that folder. Tests that change a file use their own name.
    """
    tmp_path = tmp_path_factory.mktemp("served")
    feeds_dir = tmp_path / "feeds"
    server = start_server("127.0.0.1:0", feeds_dir=feeds_dir, cache_seconds=CACHE_SECONDS)
    try:
        config = make_config(tmp_path, base_url=server.url + "/")
        build_feeds([make_article(n, topics=("Robotics",)) for n in range(3)], config)
        yield server, feeds_dir
    finally:
        server.close()


@pytest.fixture
def client(served: tuple[RunningServer, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, headers={"Accept-Encoding": "identity"}) as http:
        yield http


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/all.rss.xml", "all.rss.xml", "application/rss+xml; charset=utf-8"),
        ("/robotics.atom.xml", "robotics.atom.xml", "application/atom+xml; charset=utf-8"),
        ("/robotics.json", "robotics.json", "application/feed+json; charset=utf-8"),
        ("/feeds.opml", "feeds.opml", "text/x-opml; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/feed.xsl", "feed.xsl", "text/xsl; charset=utf-8"),
        ("/", "index.html", "text/html; charset=utf-8"),
    ],
)
def test_serves_every_file_with_its_type_and_validators(
    served: tuple[RunningServer, Path], client: httpx.Client, path: str, name: str,
    content_type: str,
) -> None:
    data = (served[1] / name).read_bytes()
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["etag"].startswith('"') and len(response.headers["etag"]) > 10
    mtime = int((served[1] / name).stat().st_mtime)
    assert parsedate_to_datetime(response.headers["last-modified"]).timestamp() == mtime
    assert response.headers["cache-control"] == f"public, max-age={CACHE_SECONDS}"
    assert "content-encoding" not in response.headers


FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
          "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
FEEDPARSER = ("application/atom+xml,application/rdf+xml,application/rss+xml,"
              "application/x-netcdf,application/xml;q=0.9,text/xml;q=0.2,*/*;q=0.1")


@pytest.mark.parametrize(
    ("accept", "rss_type"),
    [
        (FIREFOX, "application/xml; charset=utf-8"),
        (CHROME, "application/xml; charset=utf-8"),
        (FEEDPARSER, "application/rss+xml; charset=utf-8"),
        ("*/*", "application/rss+xml; charset=utf-8"),
        ("text/html;q=0, */*", "application/rss+xml; charset=utf-8"),
        (None, "application/rss+xml; charset=utf-8"),
    ],
)
def test_a_browser_gets_feeds_as_xml_that_it_renders_with_the_stylesheet(
    client: httpx.Client, accept: str | None, rss_type: str
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    rss = client.get("/all.rss.xml", headers=headers)
    assert rss.headers["content-type"] == rss_type
    assert rss.headers["vary"] == "Accept, Accept-Encoding"
    assert b'<?xml-stylesheet type="text/xsl" href="feed.xsl"?>' in rss.content
    atom = client.get("/robotics.atom.xml", headers=headers)
    assert atom.headers["content-type"] == rss_type.replace("rss", "atom")
    # Only feeds depend on Accept: every other file is what it is.
    page = client.get("/feeds.opml", headers=headers)
    assert page.headers["content-type"] == "text/x-opml; charset=utf-8"
    assert page.headers["vary"] == "Accept-Encoding"


def test_conditional_requests_get_304_until_the_file_changes(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    path = served[1] / "copy.atom.xml"
    path.write_bytes((served[1] / "all.atom.xml").read_bytes())
    first = client.get("/copy.atom.xml")
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"other", W/{etag}'},
                    {"If-Modified-Since": last_modified}, {"If-None-Match": "*"}):
        again = client.get("/copy.atom.xml", headers=headers)
        assert again.status_code == 304, headers
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == f"public, max-age={CACHE_SECONDS}"
    earlier = formatdate(parsedate_to_datetime(last_modified).timestamp() - 60, usegmt=True)
    for headers in ({"If-None-Match": '"other"'}, {"If-Modified-Since": earlier},
                    {"If-None-Match": '"other"', "If-Modified-Since": last_modified},
                    {"If-Modified-Since": "not a date"}):
        assert client.get("/copy.atom.xml", headers=headers).status_code == 200, headers
    path.write_bytes(path.read_bytes().replace(b"Story 0", b"Story zero"))
    changed = client.get("/copy.atom.xml", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and b"Story zero" in changed.content
    assert changed.headers["etag"] != etag


def test_same_content_same_etag_across_servers(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    other = start_server("127.0.0.1:0", feeds_dir=served[1])
    try:
        with httpx.Client(base_url=other.url) as second:
            assert second.head("/all.rss.xml").headers["etag"] == (
                client.head("/all.rss.xml").headers["etag"]
            )
    finally:
        other.close()


def test_gzip_only_when_accepted(served: tuple[RunningServer, Path], client: httpx.Client) -> None:
    data = (served[1] / "all.rss.xml").read_bytes()
    with client.stream("GET", "/all.rss.xml", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept, Accept-Encoding"  # a feed: Accept too
    assert response.headers["content-length"] == str(len(raw))
    assert gzip.decompress(raw) == data
    refused = client.get("/all.rss.xml", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.content == data


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip", True), ("deflate, gzip;q=0.5", True), ("*", True), ("GZIP", True),
     ("gzip;q=0", False), ("gzip; q=0.000", False), ("deflate, br", False), ("", False)],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_head_has_the_headers_of_get_and_no_body(client: httpx.Client) -> None:
    get = client.get("/robotics.json")
    head = client.head("/robotics.json")
    assert head.status_code == 200 and head.content == b""
    for key in ("content-type", "content-length", "etag", "last-modified", "cache-control"):
        assert head.headers[key] == get.headers[key]
    assert client.head("/missing.json").status_code == 404


def raw_get(server: RunningServer, path: str) -> tuple[int, bytes]:
    host, port = server.address
    connection = http.client.HTTPConnection(str(host), port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


OUTSIDE = [
    "/../config.toml", "/%2e%2e/secret.json", "/..%2fsecret.json", "/feeds/../secret.json",
    "//secret.json", "/.hidden.json", "/notes.txt", "/secret.txt", "/missing.rss.xml",
    "/sub", "/sub/", "/sub/inner.json", "/dir.json", "/linked.json", "/%00.json",
    "/all.rss.xml%00", "/all.rss.xml/", "/all.rss.xml/..", "/%5c..%5csecret.json",
    "/..\\secret.json", "http://127.0.0.1/../secret.json",
    "/healthz", "/metrics",
]


def test_nothing_outside_the_folder_and_nothing_but_files(
    served: tuple[RunningServer, Path]
) -> None:
    feeds_dir = served[1]
    (feeds_dir.parent / "secret.json").write_text('{"secret": 1}')
    (feeds_dir.parent / "config.toml").write_text("secret")
    (feeds_dir / ".hidden.json").write_text("{}")
    (feeds_dir / "notes.txt").write_text("not served: unknown type")
    (feeds_dir / "sub").mkdir()
    (feeds_dir / "sub" / "inner.json").write_text("{}")
    (feeds_dir / "dir.json").mkdir()
    (feeds_dir / "linked.json").symlink_to(feeds_dir.parent / "secret.json")
    for path in OUTSIDE:
        status, body = raw_get(served[0], path)  # verbatim: no client-side normalisation
        assert (status, body) == (404, b"not found\n"), path


def test_a_file_appearing_later_is_served(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    assert client.get("/later.json").status_code == 404
    (served[1] / "later.json").write_text("{}")
    assert client.get("/later.json").content == b"{}"


# --- HTTP semantics beyond the basics -----------------------------------------------------------


def test_keep_alive_two_requests_on_one_connection(served: tuple[RunningServer, Path]) -> None:
    host, port = served[0].address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/all.rss.xml")
        first = connection.getresponse()
        first.read()
        local = connection.sock.getsockname()
        connection.request("HEAD", "/robotics.json")
        second = connection.getresponse()
        second.read()
        assert (first.status, second.status) == (200, 200)
        assert connection.sock is not None and connection.sock.getsockname() == local
        assert first.getheader("connection") is None
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(served: tuple[RunningServer, Path]) -> None:
    with socket.create_connection(served[0].address, timeout=5) as sock:
        sock.sendall(b"GET /robotics.json HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /missing.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.index(b"HTTP/1.1 200 OK") < answer.index(b"HTTP/1.1 404 Not Found")


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_single_byte_range_is_served_as_206(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    data = (served[1] / "all.rss.xml").read_bytes()
    size = len(data)
    assert client.get("/all.rss.xml").headers["accept-ranges"] == "bytes"
    for header, first, last in (("bytes=0-99", 0, 99), ("bytes=100-", 100, size - 1),
                                ("bytes=-10", size - 10, size - 1),
                                (f"bytes=10-{size * 2}", 10, size - 1)):
        part = client.get("/all.rss.xml", headers={"Range": header})
        assert part.status_code == 206, header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.content == data[first:last + 1]
        assert part.headers["content-length"] == str(last - first + 1)
        assert part.headers["etag"] == client.head("/all.rss.xml").headers["etag"]
    etag = client.head("/all.rss.xml").headers["etag"]
    assert client.get("/all.rss.xml", headers={"Range": "bytes=0-9", "If-Range": etag}
                      ).status_code == 206
    for headers in ({"Range": "bytes=0-9", "If-Range": '"stale"'},  # changed: the whole file
                    {"Range": "bytes=0-1, 5-6"},  # several ranges: ignored
                    {"Range": "lines=1-2"}, {"Range": "bytes=9-2"}, {"Range": "bytes=x-"}):
        whole = client.get("/all.rss.xml", headers=headers)
        assert (whole.status_code, whole.content) == (200, data), headers


def test_an_unsatisfiable_range_is_416(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    size = len((served[1] / "all.rss.xml").read_bytes())
    for header in (f"bytes={size}-", "bytes=-0"):
        refused = client.get("/all.rss.xml", headers={"Range": header})
        assert refused.status_code == 416, header
        assert refused.headers["content-range"] == f"bytes */{size}"


def test_a_range_of_the_gzip_representation(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    with client.stream("GET", "/all.rss.xml", headers={"Accept-Encoding": "gzip"}) as whole:
        compressed = b"".join(whole.iter_raw())
    with client.stream("GET", "/all.rss.xml", headers={"Accept-Encoding": "gzip",
                                                        "Range": "bytes=5-"}) as part:
        assert part.status_code == 206
        assert part.headers["content-encoding"] == "gzip"
        assert b"".join(part.iter_raw()) == compressed[5:]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("*;q=0, gzip", True), ("gzip;q=0, *", False), ("x-gzip", True), ("br, *;q=0.1", True),
     ("gzip;q=0.5, identity;q=1", False), ("identity;q=0.1, gzip;q=0.5", True),
     ("gzip;q=abc", False), ("gzip;q=2", False), ("gzip ; Q=0.8", True), (",,gzip", True)],
)
def test_accepts_gzip_q_values(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize("header", [
    "bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000,
    "bytes=" + "0" * 19 + "-9",  # 19 digits: more than the grammar takes, even if small
])
def test_a_range_with_a_huge_number_is_ignored_without_an_error(
    served: tuple[RunningServer, Path], client: httpx.Client, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, header: str,
) -> None:
    data = (served[1] / "all.rss.xml").read_bytes()
    response = client.get("/all.rss.xml", headers={"Range": header})
    assert (response.status_code, response.content) == (200, data)
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_range_of_18_digits_is_still_a_range(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    size = len((served[1] / "all.rss.xml").read_bytes())
    beyond = client.get("/all.rss.xml", headers={"Range": "bytes=" + "9" * 18 + "-"})
    assert beyond.status_code == 416
    whole = client.get("/all.rss.xml", headers={"Range": "bytes=0-" + "9" * 18})
    assert whole.status_code == 206
    assert whole.headers["content-range"] == f"bytes 0-{size - 1}/{size}"


async def asgi_get(app: FeedsApp, path: str, headers: list[tuple[bytes, bytes]],
                   method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight through the ASGI app: status, headers and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await app(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


# Header values as a client may send them: any byte but CR, LF and NUL (httptools refuses
# those), mostly near the grammars the app parses, so that the odd cases are reached.
_HEADER_BYTES = st.binary(max_size=60).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
_NEAR_GRAMMAR = st.lists(st.sampled_from([
    b"bytes=", b"bytes", b"=", b"-", b",", b";", b" ", b"\t", b"q=", b"q=0.5", b"q=1.000",
    b"Q", b"*", b"0", b"9", b"99999999999999999999", b"9" * 5000, b"gzip", b"x-gzip",
    b"identity", b"text/html", b"application/rss+xml", b"W/", b'"', b'"abc"', b"Mon, ",
    b"01 Jan ", b"1970 ", b"9999 ", b"00:00:00 ", b"GMT", b"+2359", b"-9999", b"\xff", b"\x85",
    b"\xa0", b"1e308", b"nan",
]), max_size=12).map(b"".join)
_DIGITS = st.one_of(st.text("0123456789", max_size=25),
                    st.integers(4200, 5000).map(lambda n: "9" * n))  # int() refuses > 4300
_RANGE_LIKE = st.builds(lambda unit, first, sep, last: f"{unit}{first}{sep}{last}".encode(),
                        st.sampled_from(["bytes=", "bytes = ", "BYTES=", "bytes=0-1,"]),
                        _DIGITS, st.sampled_from(["-", " - ", "", "--"]), _DIGITS)
_DATE_LIKE = st.builds(
    lambda day, year, zone: f"Mon, {day} Jan {year} 00:00:00 {zone}".encode(),
    _DIGITS, _DIGITS, st.sampled_from(["GMT", "+2359", "-2359", "+99999", "UT", ""]))
_VALUES = st.one_of(_HEADER_BYTES, _NEAR_GRAMMAR, _RANGE_LIKE, _DATE_LIKE)
_READ = [b"range", b"if-range", b"if-modified-since", b"if-none-match", b"accept-encoding",
         b"accept"]


@settings(max_examples=400, deadline=None)
@given(headers=st.lists(st.tuples(st.sampled_from(_READ), _VALUES), max_size=6),
       method=st.sampled_from(["GET", "HEAD"]),
       path=st.one_of(st.sampled_from(["/all.rss.xml", "/", "/robotics.json", "/feeds.opml"]),
                      st.text(max_size=40).map(lambda text: "/" + text)))
def test_no_header_value_makes_the_app_fail(
    served: tuple[RunningServer, Path], headers: list[tuple[bytes, bytes]], method: str,
    path: str,
) -> None:
    app = FeedsApp(feeds_dir=served[1], health=None, metrics=None, cache_seconds=60)
    status, sent, body = asyncio.run(asgi_get(app, path, headers, method))
    assert status in (200, 206, 304, 404, 416)
    if status == 304:  # (If-None-Match: * matches any file) no body, and no length needed
        assert body == b""
    elif method == "GET":
        assert int(sent[b"content-length"]) == len(body)
    if status == 206:
        first, last = map(int, sent[b"content-range"].split(b" ")[1].split(b"/")[0].split(b"-"))
        assert last - first + 1 == int(sent[b"content-length"])


def test_accept_encoding_q_values_over_http(
    served: tuple[RunningServer, Path], client: httpx.Client
) -> None:
    data = (served[1] / "all.rss.xml").read_bytes()
    wildcard = client.get("/all.rss.xml", headers={"Accept-Encoding": "*;q=0, gzip"})
    assert wildcard.headers["content-encoding"] == "gzip" and wildcard.content == data
    refused = client.get("/all.rss.xml", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers and refused.content == data


def test_if_modified_since_in_the_future_or_not_a_date_is_ignored(
    served: tuple[RunningServer, Path], client: httpx.Client, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    future = formatdate(time.time() + 86400, usegmt=True)
    for value in (future, "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
                  "Fri, 31 Dec 99999 23:59:59 GMT", "Mon, 99 Foo 2024 99:99:99 GMT"):
        response = client.get("/all.rss.xml", headers={"If-Modified-Since": value})
        assert response.status_code == 200, value
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_odd_names_are_404_without_a_traceback(
    served: tuple[RunningServer, Path], capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    feeds_dir = served[1]
    (feeds_dir / "loop.json").symlink_to("loop.json")
    (feeds_dir / "ping.json").symlink_to("pong.json")
    (feeds_dir / "pong.json").symlink_to("ping.json")
    for path in ("/" + "a" * 252 + ".json", "/" + "a" * 300, "/loop.json", "/ping.json",
                 "/" + "%C3%A9" * 200 + ".json"):
        assert raw_get(served[0], path) == (404, b"not found\n"), path[:20]
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_link_to_a_file_in_the_folder_is_served(served: tuple[RunningServer, Path]) -> None:
    feeds_dir = served[1]
    (feeds_dir / "latest.rss.xml").symlink_to("all.rss.xml")
    assert raw_get(served[0], "/latest.rss.xml") == (
        200, (feeds_dir / "all.rss.xml").read_bytes()
    )


def test_other_methods_are_405(served: tuple[RunningServer, Path]) -> None:
    with httpx.Client(base_url=served[0].url) as http:
        response = http.post("/all.rss.xml", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_a_client_aborting_mid_response_leaves_no_trace(
    served: tuple[RunningServer, Path], capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = served[1] / "big.json"
    big.write_bytes(os.urandom(8 * 1024 * 1024))  # far more than the socket buffers hold
    for _ in range(3):
        with socket.create_connection(served[0].address, timeout=5) as sock:
            sock.sendall(b"GET /big.json HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The server is fine, and forgets the aborted connections.
    assert raw_get(served[0], "/robotics.json")[0] == 200
    deadline = time.monotonic() + 5
    while served[0].open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served[0].open_connections == 0
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_listens_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = start_server("[::1]:0", health=lambda: (True, "ok"))
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(server.url + "/healthz").text == "ok\n"
    finally:
        server.close()


# --- publisher serve ---------------------------------------------------------------------------


def start_cli_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``publisher serve`` on a free port; returns the process and its URL."""
    config = tmp_path / "config.toml"
    config.write_text('[feeds]\ndir = "feeds"\n[schedule]\nbuild = "15m"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "serve", "-c", str(config), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("Serving "), line + process.stderr.read()  # type: ignore[union-attr]
    return process, line.split(" at ")[1].split()[0].rstrip("/")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_serves_the_feeds_folder_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    build_feeds([make_article()], make_config(tmp_path, base_url="http://127.0.0.1:8080/"))
    process, url = start_cli_server(tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url) as http:
            response = http.get("/")
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert response.content == (tmp_path / "feeds" / "index.html").read_bytes()
            rss = http.get("/all.rss.xml")
            assert rss.headers["cache-control"] == "public, max-age=900"
            assert http.get("/config.toml").status_code == 404
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert stdout.strip() == "Stopped."
    assert "Traceback" not in stderr


def test_cli_serve_warns_when_nothing_was_built(tmp_path: Path) -> None:
    process, url = start_cli_server(tmp_path, "--host", "127.0.0.1")
    try:
        with httpx.Client(base_url=url) as http:
            assert http.get("/").status_code == 404
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "does not exist yet; run publisher build" in stderr
    assert process.returncode == 0


def test_cli_serve_reports_a_busy_port(tmp_path: Path) -> None:
    busy = start_server("127.0.0.1:0")
    try:
        port = busy.url.rsplit(":", 1)[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "publisher", "serve", "--port", port],
            capture_output=True, text=True, timeout=20, cwd=tmp_path,
        )
    finally:
        busy.close()
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert time.monotonic() - started < 10
