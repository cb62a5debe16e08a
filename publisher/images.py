"""Photos publisher downloads itself, when Telegram could not fetch an article's image URL.

An article file names the URL, so a download must never become a way to make the server
fetch its own network: every host is resolved first and each of its addresses checked
(loopback, private, link-local, multicast, reserved, unspecified, and the same inside
IPv4-mapped or NAT64 IPv6 addresses, are refused), redirects are followed by hand with each
hop checked, and the connection goes to the address that was checked (the URL's host stays in
the Host header and, for TLS, in SNI and the certificate check), so a second DNS answer
cannot switch it. ``allow_private`` (``telegram.fetch_private_addresses``) lifts the check.

The body is read up to ``MAX_PHOTO_BYTES`` and no further; what it is is decided by Pillow
opening its bytes (never the extension or the Content-Type). ``prepare_photo`` passes a JPEG
or PNG that Telegram takes as it is and converts anything else (WebP, GIF, oversized, odd
modes) to a JPEG within Telegram's photo limits.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import math
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from publisher.delivery import BadEncoding, BoundedBody
from publisher.errors import ImageUnavailable

if TYPE_CHECKING:  # Pillow is imported when a photo is prepared: most pushes never do
    from PIL import Image

MAX_PHOTO_BYTES = 10 * 1024 * 1024  # Telegram's limit of an uploaded photo, and of a download
MAX_SIDES = 10_000  # Telegram: width + height
MAX_RATIO = 20.0  # Telegram: the longer side at most 20 times the shorter
# Decoded pixels: a larger image is refused from its header, before it is decoded (a small
# file can announce a gigapixel image).
MAX_PIXELS = 50_000_000
MAX_REDIRECTS = 3
USER_AGENT = "publisher (image download for a Telegram post)"
ADDRESSES_TRIED = 3  # of a host's addresses, in the resolver's order, until one connects
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What Pillow may open: the formats of web images. Others (PSD, EPS via Ghostscript...) never.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
PASS_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P")}
JPEG_QUALITIES = (87, 75, 60)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REFUSED_KINDS = ("loopback", "private", "link_local", "multicast", "reserved", "unspecified")


@dataclass(frozen=True, slots=True)
class Photo:
    """An image ready for ``sendPhoto`` as an upload."""

    data: bytes
    filename: str  # "photo.jpg" or "photo.png": what the multipart part is called
    width: int
    height: int
    converted: str = ""  # how it was changed ("WEBP 1200x800 -> JPEG"); empty: as downloaded


def address_problem(address: IPAddress) -> str | None:
    """Why publisher must not connect to ``address`` ("loopback", "private"...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    for kind in _REFUSED_KINDS:
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "not global"


class ImageFetcher:
    """Downloads an image by URL, under the rules of this module's docstring.

    ``transport``: httpx's transport (tests); ``resolve``: a host name and port to its
    addresses (tests; by default the event loop's ``getaddrinfo``); ``verify``: httpx's TLS
    verification (tests: a test CA's context).
    """

    def __init__(self, *, allow_private: bool = False, timeout: float = 20.0,
                 max_bytes: int = MAX_PHOTO_BYTES,
                 transport: httpx.AsyncBaseTransport | None = None,
                 resolve: Resolver | None = None, verify: ssl.SSLContext | bool = True) -> None:
        self._allow_private = allow_private
        self._verify = verify
        self._resolve = resolve or resolve_host
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._transport = transport

    async def fetch(self, url: str) -> bytes:
        """The body at ``url`` (redirects followed); ``ImageUnavailable`` saying why not."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise ImageUnavailable(f"no complete image within {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ImageUnavailable(f"the image could not be downloaded: "
                                   f"{type(exc).__name__}: {exc}") from None

    async def _fetch(self, url: str) -> bytes:
        # No proxies from the environment: the connection must go to the checked address.
        async with httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False, trust_env=False,
            transport=self._transport, verify=self._verify,
        ) as client:
            target = _web_url(url)
            for _hop in range(MAX_REDIRECTS + 1):
                response = await self._request(client, target)
                try:
                    location = response.headers.get("Location")
                    if response.status_code not in REDIRECTS or not location:
                        return await self._body(response)
                finally:
                    await response.aclose()
                target = _redirected(target, location)
        raise ImageUnavailable(f"more than {MAX_REDIRECTS} redirects")

    async def _request(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Response:
        """The answer from the first of the host's checked addresses that connects."""
        addresses = await self._checked_addresses(url)
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as TLS names it
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*",
                   "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        for address in addresses[:-1]:
            request = client.build_request("GET", url.copy_with(host=str(address)),
                                           headers=headers, extensions=extensions)
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:  # e.g. an IPv6 address on a host without IPv6
                continue
        request = client.build_request("GET", url.copy_with(host=str(addresses[-1])),
                                       headers=headers, extensions=extensions)
        return await client.send(request, stream=True)

    async def _checked_addresses(self, url: httpx.URL) -> list[IPAddress]:
        """The addresses to connect to, at most ``ADDRESSES_TRIED``: every address the host
        resolves to must be allowed (one public and one private address: refused)."""
        host = url.raw_host.decode("ascii")
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = await self._resolve(host, url.port or (443 if url.scheme == "https"
                                                               else 80))
        if not self._allow_private:
            for address in addresses:
                problem = address_problem(address)
                if problem is not None:
                    raise ImageUnavailable(f"{url.host} is a {problem} address ({address}): "
                                           "not fetched (telegram.fetch_private_addresses)")
        return list(dict.fromkeys(addresses))[:ADDRESSES_TRIED]

    async def _body(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise ImageUnavailable(f"the image server answered {response.status_code}")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ImageUnavailable(self._too_large(f"{int(declared)} bytes announced"))
        try:
            body = BoundedBody(response.headers.get("Content-Encoding", ""), self._max_bytes)
            async for raw in response.aiter_raw():
                if not body.feed(raw):
                    raise ImageUnavailable(self._too_large("cut off"))
            body.finish()
        except BadEncoding as exc:
            raise ImageUnavailable(str(exc).replace("answer", "image")) from None
        return body.value()

    def _too_large(self, detail: str) -> str:
        return f"the image is larger than {self._max_bytes // (1024 * 1024)} MB ({detail})"


def _redirected(url: httpx.URL, location: str) -> httpx.URL:
    try:
        return _web_url(str(url.join(location)))
    except httpx.InvalidURL as exc:
        raise ImageUnavailable(f"a redirect to an unusable URL: {exc}") from None


def _web_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ImageUnavailable(f"not a usable URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ImageUnavailable("only http(s) images are downloaded")
    return parsed


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses of the host name ``host``."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageUnavailable(f"{host} cannot be resolved: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise ImageUnavailable(f"{host} has no address")
    return addresses


# -- the image ----------------------------------------------------------------------------------


def prepare_photo(data: bytes) -> Photo:
    """``data`` as Telegram takes a photo: as it is when it is a JPEG or PNG within the
    limits, else converted to a JPEG; ``ImageUnavailable`` when it is not a usable image."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                return _prepared(image, data)
        except ImageUnavailable:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageUnavailable("the image has too many pixels: too large to decode"
                                   ) from None
        except MemoryError:
            raise ImageUnavailable("the image is too large to decode") from None
        except Exception as exc:  # hostile bytes make Pillow's decoders raise anything
            # (OSError, SyntaxError, struct.error, IndexError...): none may stop a push
            raise ImageUnavailable(f"not a usable image: {_first_line(exc)}") from None


def _prepared(image: Image.Image, data: bytes) -> Photo:
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise ImageUnavailable(f"the image is {width}x{height} pixels: too large to decode")
    kind = str(image.format)
    if (kind in PASS_MODES and image.mode in PASS_MODES[kind] and _fits(width, height)
            and len(data) <= MAX_PHOTO_BYTES and not getattr(image, "is_animated", False)):
        image.load()  # the whole file decodes: a truncated one is refused here
        return Photo(data, "photo.png" if kind == "PNG" else "photo.jpg", width, height)
    jpeg, size = _as_jpeg(image)
    return Photo(jpeg, "photo.jpg", *size,
                 converted=f"{kind} {width}x{height} {image.mode} -> JPEG {size[0]}x{size[1]}")


def _fits(width: int, height: int) -> bool:
    return width + height <= MAX_SIDES and max(width, height) <= MAX_RATIO * min(width, height)


def _as_jpeg(image: Image.Image) -> tuple[bytes, tuple[int, int]]:
    """The first frame, upright, on white where transparent, padded to the aspect ratio,
    scaled to the sides' limit, as a JPEG under the size limit."""
    from PIL import Image, ImageOps

    image.seek(0)
    picture = _padded(_rgb(ImageOps.exif_transpose(image)))
    scale = min(1.0, MAX_SIDES / (picture.width + picture.height))
    while True:
        scaled = picture if scale >= 1.0 else picture.resize(
            (max(1, int(picture.width * scale)), max(1, int(picture.height * scale))),
            Image.Resampling.LANCZOS)
        for quality in JPEG_QUALITIES:
            out = io.BytesIO()
            scaled.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= MAX_PHOTO_BYTES:
                return out.getvalue(), scaled.size
        scale *= 0.7


def _rgb(image: Image.Image) -> Image.Image:
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit greys
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P"
                                               and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _padded(image: Image.Image) -> Image.Image:
    """A strip longer than ``MAX_RATIO`` times its width, on a white canvas that is not."""
    from PIL import Image

    width, height = image.size
    short = math.ceil(max(width, height) / MAX_RATIO)
    if min(width, height) >= short:
        return image
    size = (max(width, short), max(height, short))
    canvas = Image.new("RGB", size, "white")
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
