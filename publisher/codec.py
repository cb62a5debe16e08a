"""The catalog's stored form of an ``Article``: a versioned blob.

Version 2 (``CODEC_VERSION``): one byte, the version, then the article as MessagePack
(msgspec; field names and types as ``models.Article`` declares them), zlib-compressed: a
third of the bytes to pass from the parsing workers and to write to the state. Older rows
decode as they were written: version 1 is the zlib-compressed JSON list of publishers up to
schema 7 (its first byte is zlib's 0x78, never a version number), version 0 that JSON
uncompressed, in a text column. A blob of a version this publisher does not know is a
``CodecError``; the catalog then parses the file again (``catalog.PARSING_KEY`` names the
codec version, so a sync after an upgrade re-encodes every row).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from datetime import datetime
from typing import Any

import msgspec

from publisher.errors import CodecError
from publisher.models import Article, Image, Provider, Related

CODEC_VERSION = 2
_VERSION_BYTE = bytes([CODEC_VERSION])
_ZLIB_FIRST_BYTE = 0x78  # of every zlib stream with the default window (version 1)
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Article)


class Encoded(msgspec.Struct, frozen=True):
    """An article as stored: the blob, and the digest of what it holds."""

    blob: bytes
    digest: str


def encode(article: Article) -> Encoded:
    payload = _ENCODER.encode(article)
    return Encoded(_VERSION_BYTE + zlib.compress(payload, 1), _digest(payload))


def digest_of(article: Article) -> str:
    """The digest ``encode`` gives ``article``: equal records, equal digests."""
    return _digest(_ENCODER.encode(article))


def decode(blob: bytes | memoryview | str) -> Article:
    """The article of a stored blob, whichever version wrote it."""
    if isinstance(blob, str):  # version 0
        return _from_json(blob)
    data = bytes(blob)
    if not data:
        raise CodecError("an empty stored article")
    try:
        if data[0] == CODEC_VERSION:
            return _DECODER.decode(zlib.decompress(data[1:]))
        if data[0] == _ZLIB_FIRST_BYTE:  # version 1
            return _from_json(zlib.decompress(data).decode("utf-8", "surrogatepass"))
    except (zlib.error, msgspec.DecodeError, ValueError, TypeError) as exc:
        raise CodecError(f"a stored article cannot be decoded: {exc}") from None
    raise CodecError(f"a stored article of an unknown version ({data[0]})")


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


# -- version 1 (and 0): the JSON list, read only --------------------------------------------


def _from_json(text: str) -> Article:
    (identifier, title, url, published_at, excerpt, provider, topics, images, related,
     quality, heat, published, kind, amp_url, source_path) = json.loads(text)
    return Article(
        id=identifier, title=title, url=url,
        published_at=datetime.fromisoformat(published_at), excerpt=excerpt,
        provider=Provider(*provider), topics=tuple(topics),
        images=tuple(Image(*fields) for fields in images),
        related=tuple(_related_from(fields) for fields in related),
        quality=quality, heat=heat, published=published, type=kind, amp_url=amp_url,
        source_path=source_path,
    )


def _related_from(fields: list[Any]) -> Related:
    title, url, excerpt, provider, quality, image = fields
    return Related(
        title=title, url=url, excerpt=excerpt,
        provider=Provider(*provider) if provider else None, quality=quality,
        image=Image(*image) if image else None,
    )
