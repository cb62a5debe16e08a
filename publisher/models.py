"""The article model: frozen values, no I/O.

Every string in these objects is already clean: mojibake repaired, XML-invalid characters
removed, whitespace collapsed. Every URL is absolute http(s). The loader guarantees that;
everything downstream relies on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Images smaller than this on their shorter side are icons or logos, not pictures.
MIN_IMAGE_SIDE = 200
# Wider or taller than this ratio: banners and strips that crop badly in readers and Telegram.
MAX_ASPECT_RATIO = 3.0

_TRACKING_PREFIXES = ("utm_",)
_TRACKING_KEYS = frozenset({"fbclid", "gclid", "mc_cid", "mc_eid"})


@dataclass(frozen=True, slots=True)
class Image:
    url: str
    width: int | None = None
    height: int | None = None
    title: str = ""

    @property
    def area(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def is_sensible(self) -> bool:
        """True for a picture worth showing: not an icon, not an extreme strip."""
        if self.width is None or self.height is None:
            return True  # unknown size: usable, but ranked below images of known size
        if min(self.width, self.height) < MIN_IMAGE_SIDE:
            return False
        ratio = max(self.width, self.height) / min(self.width, self.height)
        return ratio <= MAX_ASPECT_RATIO


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    domain: str = ""


@dataclass(frozen=True, slots=True)
class Related:
    title: str
    url: str
    excerpt: str = ""
    provider: Provider | None = None
    quality: int | None = None
    image: Image | None = None


@dataclass(frozen=True, slots=True)
class Article:
    """One curated article. ``id`` is stable across builds: it derives from the URL only."""

    id: str
    title: str
    url: str
    published_at: datetime  # always timezone-aware, UTC
    excerpt: str = ""
    provider: Provider = field(default_factory=lambda: Provider(name=""))
    topics: tuple[str, ...] = ()
    images: tuple[Image, ...] = ()
    related: tuple[Related, ...] = ()
    quality: int = 0
    heat: int = 0
    published: bool = False
    type: str = "article"
    amp_url: str = ""
    source_path: str = ""

    @property
    def best_image(self) -> Image | None:
        return best_image(self.images)

    @property
    def provider_label(self) -> str:
        """Who to credit: the provider name, else its domain, else the article's host."""
        return self.provider.name or self.provider.domain or (urlsplit(self.url).hostname or "")


def best_image(images: tuple[Image, ...] | list[Image]) -> Image | None:
    """The largest sensible image; images of unknown size come after any of known size."""
    candidates = [image for image in images if image.is_sensible()]
    if not candidates:
        return None
    return max(candidates, key=lambda image: (image.area > 0, image.area))


def normalise_url(url: str) -> str:
    """The form two URLs share when they name the same article.

    Lowercases scheme and host, drops default ports, the fragment and tracking parameters.
    The path keeps its case and trailing slash: servers treat those as different pages.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in {("http", 80), ("https", 443)} else (
        f"{host}:{port}"
    )
    query = urlencode(
        [
            (key, value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
            if not key.lower().startswith(_TRACKING_PREFIXES) and key.lower() not in _TRACKING_KEYS
        ]
    )
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def article_id(url: str) -> str:
    """A stable, globally unique id for an article: a name-based UUID of its normalised URL."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, normalise_url(url))}"
