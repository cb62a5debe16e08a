"""The article model: frozen values, no I/O.

Every string in these objects is already clean: mojibake repaired, XML-invalid characters
removed, whitespace collapsed. Every URL is absolute http(s). The loader guarantees that;
everything downstream relies on it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

# Images smaller than this on their shorter side are icons or logos, not pictures.
MIN_IMAGE_SIDE = 200
# Wider or taller than this ratio: banners and strips that crop badly in readers and Telegram.
MAX_ASPECT_RATIO = 3.0

# Query parameters that only say who clicked where (campaigns, click ids of ad networks and
# mail tools): never published, and ignored when two links are compared. Names compare in
# lowercase; a ``TRACKING_PREFIXES`` start is enough.
TRACKING_PREFIXES = ("utm_",)
TRACKING_KEYS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "twclid", "ttclid",
    "yclid", "igshid", "li_fat_id", "mc_cid", "mc_eid", "_hsenc", "_hsmi", "__hstc", "__hssc",
    "__hsfp", "mkt_tok", "oly_anon_id", "oly_enc_id", "vero_id", "wickedid", "rb_clickid",
    "_openstat", "ref_src", "ref_url", "_ga", "_gl",
})


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
        """Who to credit, for people to read: the provider name, else its domain, else the
        article's host, a host in its Unicode form (``bücher.example``, see ``display_host``).
        Never for a URL: links keep the published, ASCII form."""
        return self.provider.name or display_host(
            self.provider.domain or urlsplit(self.url).hostname or "")


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
            if not is_tracking_parameter(key)
        ]
    )
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def article_id(url: str) -> str:
    """A stable, globally unique id for an article: a name-based UUID of its normalised URL."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, normalise_url(url))}"


def is_tracking_parameter(name: str) -> bool:
    """True for a query parameter that only tracks the click (see ``TRACKING_KEYS``)."""
    key = name.lower()
    return key.startswith(TRACKING_PREFIXES) or key in TRACKING_KEYS


# -- the published form of a link ------------------------------------------------------------

# What RFC 3986 allows unescaped in a path (pchar and "/") and in a query or fragment (also
# "?"), and the brackets every browser leaves as they are; "%" stays for the escapes already
# there. Anything else, non-ASCII above all, is percent-encoded as UTF-8.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%[]"
_QUERY_SAFE = _PATH_SAFE + "?"
# A character that quoting with those would change (checked first: most links have none).
_PATH_UNSAFE = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~%\[\]]")
_QUERY_UNSAFE = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~%\[\]?]")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NOT_IN_URL = re.compile("[\\s\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# A host name in ASCII (after IDNA): letters, digits, "-" and "_" (real hosts have them),
# labels joined by dots, perhaps a final dot. An IPv4 address is one of these too.
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
MAX_HOST_CHARS = 253
_DEFAULT_PORTS = {"http": 80, "https": 443}


def published_url(url: str) -> str | None:
    """The one form in which a link is published, or None when it is not an absolute
    http(s) URL with a real host.

    The scheme and host are lowercased, a non-ASCII host becomes IDNA (``xn--``), a default
    port and any ``user:password@`` go, an empty path becomes "/"; in the path, query and
    fragment, characters a URI cannot hold (non-ASCII, quotes, brackets...) are
    percent-encoded as UTF-8, existing escapes are kept; tracking parameters
    (``is_tracking_parameter``) leave the query, the other parameters stay as written.
    Applying it again changes nothing.
    """
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None:  # most links: nothing to change but perhaps an empty path
        scheme, host, path, query = plain.groups()
        if ascii_host(host) == host and not (query and _MAYBE_TRACKING.search(query)):
            return f"{scheme}://{host}{path or '/'}" + (f"?{query}" if query else "")
    return _published_url_parsed(url)


# A link already in its published form but perhaps for its empty path: lowercase http(s),
# an ASCII host in lowercase without port or credentials, a path and query of characters
# that need no escaping (and no "%"), no fragment.
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9._-]+)(/[A-Za-z0-9/:@!$&'()*+,;=._~\[\]-]*)?"
    r"(?:\?([A-Za-z0-9/:@!$&'()*+,;=._~\[\]?-]*))?"
)


def _published_url_parsed(url: str) -> str | None:
    """``published_url`` the long way: split, every part looked at."""
    if _NOT_IN_URL.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port, an unbalanced IPv6 bracket
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    host = _published_host(parts.netloc.rpartition("@")[2], parts.hostname or "")
    if host is None:
        return None
    authority = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _escaped(parts.path or "/", _PATH_SAFE, _PATH_UNSAFE)
    query = _without_tracking(parts.query)
    fragment = _escaped(parts.fragment, _QUERY_SAFE, _QUERY_UNSAFE)
    return (f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")
            + (f"#{fragment}" if fragment else ""))


def _published_host(host_and_port: str, hostname: str) -> str | None:
    """The host as published: an IPv6 literal in brackets, else an ASCII host name."""
    if host_and_port.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]"
        except ValueError:
            return None
    return ascii_host(unquote(hostname))


@functools.lru_cache(maxsize=4096)  # a corpus links to few hosts, each many times
def ascii_host(name: str) -> str | None:
    """A host name in lowercase ASCII (IDNA for a non-ASCII one), or None if it is none."""
    host = name.lower()
    if not host.isascii():
        host = _idna(host) or ""
    if len(host) > MAX_HOST_CHARS or not _ASCII_HOST.fullmatch(host):
        return None
    return host


# Scripts a label may mix with Latin (UTS 39 "highly restrictive"): Japanese, Chinese and
# Korean names are written so. Any other mix (Latin with Cyrillic, say) can pass for a
# name it is not ("аpple"), and is shown as it is published, in ASCII.
_SCRIPT_MIXES = (frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
                 frozenset({"Latin", "Han", "Bopomofo"}), frozenset({"Latin", "Han", "Hangul"}))
_SCRIPTS = (
    "Latin", "Greek", "Cyrillic", "Armenian", "Hebrew", "Arabic", "Syriac", "Thaana", "Nko",
    "Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada",
    "Malayalam", "Sinhala", "Thai", "Lao", "Tibetan", "Myanmar", "Georgian", "Hangul",
    "Ethiopic", "Cherokee", "Canadian_Aboriginal", "Ogham", "Runic", "Khmer", "Mongolian",
    "Hiragana", "Katakana", "Bopomofo", "Han", "Yi", "Tifinagh", "Vai", "Coptic", "Glagolitic",
)


@functools.lru_cache(maxsize=4096)
def display_host(host: str) -> str:
    """A host as people read it, for labels: its IDNA (``xn--``) labels in Unicode
    (``xn--bcher-kva.example`` is ``bücher.example``; a port stays), when they decode and
    each label keeps to one script (or a CJK mix with Latin); else the host as it is."""
    if "xn--" not in host.lower():
        return host
    name, colon, port = host.partition(":")
    unicode_name = _unicode_host(name.lower())
    if unicode_name is None:
        return host
    labels = unicode_name.split(".")
    ascii_tld = labels[-1].isascii()
    if not all(_one_script(label) and not (ascii_tld and _passes_for_latin(label))
               for label in labels):
        return host
    return unicode_name + colon + port


def _unicode_host(name: str) -> str | None:
    """IDNA 2008 decoding (the ``idna`` library), else IDNA 2003 (Python's codec, as
    ``_idna`` encodes), else None."""
    import idna

    try:
        return str(idna.decode(name))
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return name.encode("ascii").decode("idna")
    except UnicodeError:
        return None


def _passes_for_latin(label: str) -> bool:
    """Only Cyrillic letters that look like Latin ones ("аррӏе"): under an ASCII top-level
    domain, a name made to pass for another (Chromium's rule); under .рф it is Russian."""
    letters = [char for char in label if char.isalpha()]
    return bool(letters) and all(char in _CYRILLIC_LIKE_LATIN for char in letters)


_CYRILLIC_LIKE_LATIN = frozenset("аысԁеԍһіюјӏорԗԛѕԝхуъьҽпгѵѡ")


def _one_script(label: str) -> bool:
    import regex

    found = {script for script in _SCRIPTS if regex.search(rf"\p{{sc={script}}}", label)}
    return len(found) <= 1 or any(found <= mix for mix in _SCRIPT_MIXES)


def _idna(host: str) -> str | None:
    """IDNA 2008 with UTS 46 mapping (the ``idna`` library), else IDNA 2003 (Python's codec,
    which still takes symbols that registries sold before 2008), else None."""
    import idna

    try:
        return str(idna.encode(host, uts46=True).decode("ascii"))
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _escaped(text: str, safe: str, unsafe: re.Pattern[str]) -> str:
    if unsafe.search(text) is None and ("%" not in text or not _STRAY_PERCENT.search(text)):
        return text  # the usual case, and already in its published form
    return quote(_STRAY_PERCENT.sub("%25", text), safe=safe)


# A query that may hold a tracking parameter: one of their names at the start of a
# parameter, or an escape or "+" that could spell one (both rare; then each is decoded).
_MAYBE_TRACKING = re.compile(
    "(?:^|&)(?:" + "|".join(map(re.escape, TRACKING_PREFIXES))
    + "|(?:" + "|".join(map(re.escape, sorted(TRACKING_KEYS))) + ")(?:[=&]|$))|[%+]",
    re.IGNORECASE,
)


def _without_tracking(query: str) -> str:
    """The query without tracking parameters; the others exactly as written (decoding and
    encoding them again could change what the server reads), escaped where they must be."""
    if not query:
        return ""
    if _MAYBE_TRACKING.search(query):
        query = "&".join(
            piece for piece in query.split("&")
            if not is_tracking_parameter(unquote_plus(piece.partition("=")[0]))
        )
    return _escaped(query, _QUERY_SAFE, _QUERY_UNSAFE)
