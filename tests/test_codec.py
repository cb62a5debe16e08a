"""The catalog's stored articles: versioned; older versions decode, unknown ones are refused."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SEEDS, article_record, front_matter

from publisher import codec
from publisher.catalog import PARSING_KEY, Catalog
from publisher.loader import load_articles
from publisher.models import Article
from publisher.state import open_store


def _version_1(article: Article) -> bytes:
    """What publishers up to schema 7 stored: a JSON list, zlib-compressed."""
    fields = [
        article.id, article.title, article.url, article.published_at.isoformat(),
        article.excerpt, [article.provider.name, article.provider.domain],
        list(article.topics), [[i.url, i.width, i.height, i.title] for i in article.images],
        [[r.title, r.url, r.excerpt,
          [r.provider.name, r.provider.domain] if r.provider else None, r.quality,
          [r.image.url, r.image.width, r.image.height, r.image.title] if r.image else None]
         for r in article.related],
        article.quality, article.heat, article.published, article.type, article.amp_url,
        article.source_path,
    ]
    return zlib.compress(json.dumps(fields, ensure_ascii=False).encode(), 1)


def test_the_blob_says_its_version_and_equal_records_have_equal_digests() -> None:
    article = load_articles(SEEDS).articles[0]
    encoded = codec.encode(article)
    assert encoded.blob[0] == codec.CODEC_VERSION
    assert encoded.digest == codec.digest_of(replace(article)) == codec.encode(article).digest
    assert codec.encode(replace(article, title="Another")).digest != encoded.digest


def test_older_versions_decode_as_they_were_written() -> None:
    for article in load_articles(SEEDS).articles:
        blob = _version_1(article)
        assert codec.decode(blob) == article
        assert codec.decode(zlib.decompress(blob).decode()) == article  # version 0: text


@pytest.mark.parametrize("blob", [b"", bytes([99]) + b"later", bytes([2]) + b"not zlib",
                                  bytes([2]) + zlib.compress(b"\xc1")])
def test_an_unknown_or_damaged_blob_is_a_codec_error(blob: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(blob)


def test_rows_of_an_older_codec_are_read_then_encoded_again_by_the_next_sync(
    tmp_path: Path, articles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("publisher.scan.RACY_NS", 0)
    for index in (1, 2):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        catalog = Catalog(store.db)
        catalog.sync(articles_dir, 1 << 20, 0)
        current = list(catalog.selected_articles())
        with store.db.transaction():  # as an older publisher left them
            for article in current:
                store.db.execute("UPDATE catalog SET data = ? WHERE path = ?",
                                 (_version_1(article), article.source_path))
            parsing = catalog.get_meta(PARSING_KEY) or ""
            catalog.set_meta(PARSING_KEY, parsing.rsplit(":", 1)[0])
        assert list(catalog.selected_articles()) == current  # readable before any sync
        assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 2
        blobs = [bytes(row[0]) for row in store.db.execute("SELECT data FROM catalog")]
        assert [blob[0] for blob in blobs] == [codec.CODEC_VERSION] * 2
        assert list(catalog.selected_articles()) == current
    finally:
        store.close()
