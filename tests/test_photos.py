"""Photos that arrive: a photo URL Telegram refuses is downloaded, converted when needed and
uploaded (``telegram.photo_upload``), never from the server's own network by default."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import ssl
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme
from helpers import ArticleWriter, image_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from standin.server import (
    DEFAULT_TOKEN,
    IMAGE_PROCESS_FAILED,
    PHOTO_INVALID_DIMENSIONS,
    PHOTO_REASONS,
    BotApiStandin,
)

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.delivery import PhotoRejected, TelegramSender
from publisher.errors import ConfigError, ImageUnavailable
from publisher.images import (
    MAX_PHOTO_BYTES,
    ImageFetcher,
    IPAddress,
    address_problem,
    prepare_photo,
)
from publisher.state import open_store

CHAT = "@news"
ConfigMaker = Callable[..., Config]
MB = 1024 * 1024


# -- a local image server -------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    location: str = ""
    chunked: bool = False  # no Content-Length: the body's size shows only as it is read


@dataclass
class ImageServer:
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, content_type: str = "image/jpeg", **kw: object
              ) -> str:
        self.routes[path] = Route(body, content_type, **kw)  # type: ignore[arg-type]
        return self.url(path)


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits.append(self.path)
            route = server.routes.get(self.path, Route(status=404))
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            if route.location:
                self.send_header("Location", route.location)
            if route.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client stopped reading (over the limit)
                self._write(route)

        def _write(self, route: Route) -> None:
            for start in range(0, len(route.body), 256 * 1024):
                piece = route.body[start:start + 256 * 1024]
                if route.chunked:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
            if route.chunked:
                self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def images() -> Iterator[ImageServer]:
    yield from _serve(None)


def _serve(tls: ssl.SSLContext | None) -> Iterator[ImageServer]:
    holder = ImageServer(0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    holder.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- configs and pushes -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin) -> ConfigMaker:
    """A config for the stand-in (SQLite unless ``state_url``); keywords are [telegram] keys."""

    def make(state_url: str = "sqlite:///state/publisher.db", extra: str = "",
             **telegram: object) -> Config:
        settings = {"chat_id": CHAT, "max_age_hours": 0, "max_per_run": 0,
                    "per_chat_interval_seconds": 0.06, "timeout_seconds": 5,
                    "api_base_url": botapi.base_url, **telegram}
        (tmp_path / "state").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n[telegram]\n'
            + "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items()) + extra,
            encoding="utf-8")
        return load_config(path, environ={})

    return make


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def with_image(write_article: ArticleWriter, index: int, url: str) -> None:
    write_article(f"a{index}.txt", index,
                  images=[{"url": url, "width": 1200, "height": 800}])


def photo_requests(botapi: BotApiStandin, url: str) -> int:
    """sendPhoto requests that named ``url`` (by URL, not as an upload)."""
    return sum(1 for r in botapi.requests
               if r.method.lower() == "sendphoto" and r.params.get("photo") == url)


def picture(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return str(image.format), image.size


# -- end to end: push against the stand-in ---------------------------------------------------


@pytest.mark.parametrize("reason", PHOTO_REASONS)
def test_a_refused_url_is_downloaded_and_uploaded(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer, caplog: pytest.LogCaptureFixture, reason: str,
) -> None:
    jpeg = image_bytes("JPEG", (1200, 800))
    url = images.serve("/1.jpg", jpeg)
    with_image(write_article, 1, url)
    botapi.refuse_photo(url, reason)
    with caplog.at_level(logging.INFO):
        outcome = push(make_config(fetch_private_addresses=True))
    assert outcome.report.ok and outcome.report.total("sent") == 1
    (record,) = botapi.messages
    assert record.method == "sendPhoto" and record.photo == "upload:photo.jpg"
    assert record.visible_text.startswith("Article number 1") and record.reply_markup
    (upload,) = botapi.uploads
    assert upload.data == jpeg  # a JPEG within the limits goes as it is
    assert images.hits == ["/1.jpg"] and photo_requests(botapi, url) == 1
    assert any("photo_uploaded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("kind", "size", "mode"), [
    ("WEBP", (800, 600), "RGB"),
    ("GIF", (640, 480), "P"),
    ("PNG", (8000, 2500), "RGB"),  # width + height above 10000
    ("PNG", (2100, 50), "RGBA"),  # an aspect ratio above 20, transparent
])
def test_other_images_are_converted_to_jpeg_within_the_limits(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer, kind: str, size: tuple[int, int], mode: str,
) -> None:
    url = images.serve("/picture", image_bytes(kind, size, mode), "image/jpeg")
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    outcome = push(make_config(fetch_private_addresses=True))
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.photo == "upload:photo.jpg"
    (upload,) = botapi.uploads
    form, (width, height) = picture(upload.data)
    assert form == "JPEG" and len(upload.data) <= MAX_PHOTO_BYTES
    assert width + height <= 10_000 and max(width, height) <= 20 * min(width, height)
    if sum(size) <= 10_000:
        assert max(width, height) == max(size)  # not scaled when it did not have to be
    else:
        assert abs(width / height - size[0] / size[1]) < 0.01  # scaled, not distorted


@pytest.mark.parametrize("route", [
    Route(b"<!doctype html><html><body>Not found, but 200</body></html>", "image/jpeg"),
    Route(b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"),
    Route(b"x" * (12 * MB), "image/jpeg"),  # announced by its Content-Length
    Route(b"x" * (12 * MB), "image/jpeg", chunked=True),  # read up to the limit only
    Route(status=404),
], ids=["html", "broken", "12mb", "12mb-chunked", "404"])
def test_what_cannot_be_uploaded_goes_as_text(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer, caplog: pytest.LogCaptureFixture, route: Route,
) -> None:
    images.routes["/a.jpg"] = route
    url = images.url("/a.jpg")
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    with caplog.at_level(logging.WARNING):
        outcome = push(make_config(fetch_private_addresses=True))
    assert outcome.report.ok and outcome.report.total("sent") == 1
    (record,) = botapi.messages
    assert record.method == "sendMessage" and record.visible_text.startswith("Article number 1")
    assert botapi.uploads == [] and images.hits == ["/a.jpg"]
    assert any("photo_not_uploaded" in r.getMessage() for r in caplog.records)


def test_redirects_are_followed(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    jpeg = image_bytes("JPEG")
    images.serve("/new.jpg", jpeg)
    url = images.serve("/old.jpg", b"", "text/html", status=302, location="/new.jpg")
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    assert push(make_config(fetch_private_addresses=True)).report.ok
    assert [upload.data for upload in botapi.uploads] == [jpeg]
    assert images.hits == ["/old.jpg", "/new.jpg"]


def test_a_private_address_is_never_fetched_by_default(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer, caplog: pytest.LogCaptureFixture,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    with caplog.at_level(logging.WARNING):
        outcome = push(make_config())
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.method == "sendMessage"
    assert images.hits == []  # not one request reached the server
    (reason,) = [r.publisher_fields["reason"] for r in caplog.records  # type: ignore[attr-defined]
                 if r.getMessage() == "photo_not_uploaded"]
    assert "loopback" in reason and "fetch_private_addresses" in reason


def test_always_uploads_without_trying_the_url(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.png", image_bytes("PNG"), "image/png")
    with_image(write_article, 1, url)
    outcome = push(make_config(photo_upload="always", fetch_private_addresses=True))
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.photo == "upload:photo.png"
    assert photo_requests(botapi, url) == 0 and images.hits == ["/1.png"]


def test_never_falls_back_to_text_as_before(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    outcome = push(make_config(photo_upload="never", fetch_private_addresses=True))
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.method == "sendMessage" and images.hits == []


def test_an_accepted_url_is_never_downloaded(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    outcome = push(make_config(fetch_private_addresses=True))
    assert outcome.report.ok
    (record,) = botapi.messages
    assert record.photo == url and images.hits == [] and botapi.uploads == []


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite:///state/publisher.db"


def test_a_refused_url_is_not_tried_by_url_again(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer, state_url: str,
) -> None:
    url = images.serve("/shared.jpg", image_bytes("JPEG"))
    config = make_config(state_url, fetch_private_addresses=True)
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    assert push(config).report.ok
    with_image(write_article, 2, url)  # the next push, another article with the same image
    assert push(config).report.ok
    assert [r.photo for r in botapi.messages] == ["upload:photo.jpg"] * 2
    assert photo_requests(botapi, url) == 1  # only the first, refused, try
    store = open_store(config.state.url)
    try:
        (row,) = store.db.execute(
            "SELECT value FROM meta WHERE key LIKE 'refused_photo:%'").fetchall()
    finally:
        store.close()
    remembered = json.loads(row[0])
    assert remembered["url"] == url and "wrong file identifier" in remembered["reason"].lower()


def test_one_upload_serves_every_chat(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    config = make_config(fetch_private_addresses=True,
                         extra='routes = { AI = ["@news", "@other"] }\n')
    assert push(config).report.ok
    first, second = botapi.messages
    assert first.chat_id != second.chat_id
    assert first.photo == "upload:photo.jpg"  # the bytes went once,
    assert second.photo and second.photo.startswith("AgACAgIAAxkBAAI")  # then its file id
    assert images.hits == ["/1.jpg"] and len(botapi.uploads) == 1
    assert photo_requests(botapi, url) == 1  # the other chat learnt of the refusal first


def test_an_uploaded_photo_goes_to_its_forum_topic(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    botapi.add_forum("@forum", -1002000000000, topics=[10])
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    assert push(make_config(chat_id="@forum/10", fetch_private_addresses=True)).report.ok
    (record,) = botapi.messages
    assert (record.photo, record.message_thread_id) == ("upload:photo.jpg", 10)


def test_a_silent_destination_gets_its_uploaded_photo_silently(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(url)
    assert push(make_config(fetch_private_addresses=True, silent=True)).report.ok
    (record,) = botapi.messages
    assert (record.photo, record.disable_notification) == ("upload:photo.jpg", True)


def test_a_refused_file_id_is_uploaded_again(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    images: ImageServer,
) -> None:
    url = images.serve("/1.jpg", image_bytes("JPEG"))
    with_image(write_article, 1, url)
    botapi.refuse_photo(lambda photo: photo == url or photo.startswith("AgAC"))
    config = make_config(fetch_private_addresses=True,
                         extra='routes = { AI = ["@news", "@other"] }\n')
    assert push(config).report.ok
    assert [r.photo for r in botapi.messages] == ["upload:photo.jpg"] * 2
    assert images.hits == ["/1.jpg"]  # the download is kept for the run


def test_the_photo_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="photo_upload must be one of fallback, always, never"):
        load_config(None, environ={"PUBLISHER_TELEGRAM_PHOTO_UPLOAD": "sometimes"})


# -- the fetcher: addresses, redirects, limits -----------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "224.0.0.1", "100.64.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
    "2002:7f00:1::",
])
def test_addresses_of_the_own_network_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


PUBLIC = ipaddress.ip_address("93.184.216.34")
NAMES: dict[str, list[IPAddress]] = {
    "images.example": [PUBLIC],
    "internal.example": [ipaddress.ip_address("10.0.0.7")],
    "mixed.example": [PUBLIC, ipaddress.ip_address("127.0.0.1")],
    "dual.example": [ipaddress.ip_address("2606:4700::1111"), PUBLIC],
}


async def fake_dns(host: str, port: int) -> list[IPAddress]:
    return NAMES[host]


class Answering(httpx.AsyncBaseTransport):
    """Answers each request with ``handler`` (httpx's MockTransport would read the body
    before the fetcher does)."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self._handler = handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self._handler(request)


def streamed(data: bytes) -> AsyncIterator[bytes]:
    """A body as a transport gives it: not read yet (bytes content would be, at once)."""

    async def pieces() -> AsyncIterator[bytes]:
        yield data

    return pieces()


def fetcher(handler: Callable[[httpx.Request], httpx.Response]) -> ImageFetcher:
    return ImageFetcher(transport=Answering(handler), resolve=fake_dns, timeout=5)


def test_the_connection_goes_to_the_checked_address() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=streamed(b"image"))

    assert asyncio.run(fetcher(answer).fetch("https://images.example/a.jpg")) == b"image"
    (request,) = seen
    assert request.url.host == "93.184.216.34" and request.headers["Host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"
    assert request.headers["User-Agent"].startswith("publisher")


@pytest.fixture
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_images(test_ca: trustme.CA) -> Iterator[ImageServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("images.test").configure_cert(context)
    yield from _serve(context)


@pytest.mark.parametrize(("name", "fetched"), [("images.test", True), ("other.test", False)])
def test_tls_to_the_pinned_address_checks_the_host_name(
    tls_images: ImageServer, test_ca: trustme.CA, name: str, fetched: bool,
) -> None:
    """The connection goes to the checked address, and the certificate is still checked
    against the URL's host (SNI): pinning neither breaks TLS nor weakens it."""
    tls_images.serve("/a.jpg", b"image bytes")
    client_tls = ssl.create_default_context()
    test_ca.configure_trust(client_tls)

    async def loopback(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    fetch = ImageFetcher(allow_private=True, resolve=loopback, verify=client_tls, timeout=5)
    url = f"https://{name}:{tls_images.port}/a.jpg"
    if fetched:
        assert asyncio.run(fetch.fetch(url)) == b"image bytes"
        assert tls_images.hits == ["/a.jpg"]
    else:
        with pytest.raises(ImageUnavailable, match=r"(?i)certificate"):
            asyncio.run(fetch.fetch(url))
        assert tls_images.hits == []


@pytest.mark.parametrize("location", [
    "http://internal.example/secret", "http://127.0.0.1:8080/admin", "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
])
def test_a_redirect_to_the_own_network_is_refused(location: str) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": location})

    with pytest.raises(ImageUnavailable):
        asyncio.run(fetcher(answer).fetch("https://images.example/a.jpg"))
    assert seen == ["https://93.184.216.34/a.jpg"]  # the redirect was never followed


def test_the_next_checked_address_is_tried_when_one_does_not_connect() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "2606:4700::1111":
            raise httpx.ConnectError("no route to host", request=request)
        return httpx.Response(200, content=streamed(b"image"))

    assert asyncio.run(fetcher(answer).fetch("http://dual.example/a.jpg")) == b"image"
    assert seen == ["2606:4700::1111", "93.184.216.34"]


def test_a_host_with_one_private_address_is_refused() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("fetched")

    with pytest.raises(ImageUnavailable, match="loopback"):
        asyncio.run(fetcher(answer).fetch("http://mixed.example/a.jpg"))


def test_redirects_are_followed_a_few_times_only() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/final.jpg":
            return httpx.Response(200, content=streamed(b"image"))
        return httpx.Response(301, headers={"Location": f"{request.url.path}x"})

    with pytest.raises(ImageUnavailable, match="redirects"):
        asyncio.run(fetcher(answer).fetch("http://images.example/a"))
    assert seen == ["/a", "/ax", "/axx", "/axxx"]

    def once(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/final.jpg":
            return httpx.Response(200, content=streamed(b"image"))
        return httpx.Response(302, headers={"Location": "/final.jpg"})

    assert asyncio.run(fetcher(once).fetch("http://images.example/a")) == b"image"


def test_a_long_body_is_read_up_to_the_limit_only() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 100 * MB:
            sent += 64 * 1024
            yield b"x" * (64 * 1024)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    with pytest.raises(ImageUnavailable, match="larger than 10 MB"):
        asyncio.run(fetcher(answer).fetch("http://images.example/a.jpg"))
    assert MAX_PHOTO_BYTES < sent <= MAX_PHOTO_BYTES + 64 * 1024


def test_only_web_urls_are_fetched() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("fetched")

    for url in ("ftp://images.example/a.jpg", "file:///etc/passwd", "//images.example/a"):
        with pytest.raises(ImageUnavailable, match="http"):
            asyncio.run(fetcher(answer).fetch(url))


# -- the image: judged by its bytes, converted within Telegram's limits ----------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(
        b"\x00" * 4096)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("size", [(8000, 8000), (60_000, 60_000)])
def test_a_huge_image_is_refused_before_it_is_decoded(size: tuple[int, int]) -> None:
    with pytest.raises(ImageUnavailable, match="too large to decode"):
        prepare_photo(_png_header(*size))


def test_cmyk_and_16_bit_images_become_plain_jpegs() -> None:
    for data in (image_bytes("JPEG", (300, 200), "CMYK"), image_bytes("PNG", (300, 200), "I;16")):
        photo = prepare_photo(data)
        assert picture(photo.data) == ("JPEG", (300, 200)) and photo.converted


def test_an_animated_gif_becomes_its_first_frame() -> None:
    frames = [Image.new("RGB", (120, 80), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    photo = prepare_photo(out.getvalue())
    assert picture(photo.data) == ("JPEG", (120, 80))
    with Image.open(io.BytesIO(photo.data)) as image:
        red, _green, blue = image.convert("RGB").getpixel((60, 40))  # type: ignore[misc]
    assert red > 200 and blue < 60


SEED_IMAGES = [image_bytes(kind, (64, 48)) for kind in ("JPEG", "PNG", "WEBP", "GIF", "BMP")]


@settings(max_examples=150, deadline=None)
@given(seed=st.sampled_from(SEED_IMAGES), at=st.integers(0, 10_000),
       junk=st.binary(min_size=1, max_size=64), cut=st.booleans())
def test_damaged_images_are_refused_cleanly(seed: bytes, at: int, junk: bytes,
                                            cut: bool) -> None:
    """Whatever the bytes, a photo or an ``ImageUnavailable``: never another exception."""
    at %= len(seed)
    data = seed[:at] + junk if cut else seed[:at] + junk + seed[at + len(junk):]
    try:
        photo = prepare_photo(data)
    except ImageUnavailable:
        return
    assert picture(photo.data)[0] in ("JPEG", "PNG")


# -- the stand-in judges an upload by its bytes, as Telegram does ----------------------------


@pytest.mark.parametrize(("made", "reason"), [
    (lambda: b"<html>not an image</html>", IMAGE_PROCESS_FAILED),
    (lambda: image_bytes("PNG", (2100, 100)), PHOTO_INVALID_DIMENSIONS),  # ratio 21
    (lambda: image_bytes("PNG", (6000, 4001)), PHOTO_INVALID_DIMENSIONS),  # 10001 in total
    (lambda: image_bytes("BMP", (2100, 1700)), IMAGE_PROCESS_FAILED),  # 10.7 MB
], ids=["html", "ratio", "sides", "10.7mb"])
def test_the_standin_refuses_unusable_uploads(botapi: BotApiStandin,
                                              made: Callable[[], bytes], reason: str) -> None:
    data = made()

    async def upload() -> None:
        sender = TelegramSender(DEFAULT_TOKEN, botapi.base_url, 5.0)
        try:
            await sender.start()
            await sender.send_photo_file(CHAT, data, "photo.jpg", "caption", [])
        finally:
            await sender.close()

    with pytest.raises(PhotoRejected, match=f"(?i){reason}"):
        asyncio.run(upload())
    assert botapi.messages == [] and botapi.uploads == []
