"""Helpers the tests share: where things are, article records and files, waiting.

Fixtures stay in conftest.py; this module holds plain functions and constants, imported as
``from helpers import ...`` (tests/ is on sys.path, as for conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"
WAIT_SECONDS = 30.0

ArticleWriter = Callable[..., Path]  # the write_article fixture: (name, index=1, **fields)


def article_record(index: int = 1, **fields: Any) -> dict[str, Any]:
    """A valid, published article record; ``fields`` override or (with None) remove keys."""
    record: dict[str, Any] = {
        "title": f"Article number {index}",
        "excerpt": f"Excerpt of article {index}.",
        "publishedDateTime": f"2025-01-01T{index % 24:02d}:{index % 60:02d}:00Z",
        "webUrl": f"https://news.example.com/articles/{index}",
        "type": "article",
        "quality": 100,
        "heat": 10,
        "published": True,
        "provider": {"name": "Example News", "domain": "news.example.com"},
        "topics": ["AI"],
        "images": [
            {"url": f"https://img.example.com/{index}.jpg", "width": 1200, "height": 800}
        ],
        "related": [],
        "secured": "c2VjcmV0IGJsb2I=;do-not-publish",
    }
    for key, value in fields.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def front_matter(record: dict[str, Any]) -> str:
    """An article file's text: ``record`` as YAML front matter."""
    return "---\n" + yaml.safe_dump(record, allow_unicode=True, sort_keys=False) + "---\n"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """``condition()``'s first true value, polled every 0.1 s; AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB",
                **save: Any) -> bytes:
    """A real image file's bytes (Pillow), e.g. ``image_bytes("WEBP", (800, 600))``."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, "red" if mode in ("RGB", "RGBA") else 128).save(out, kind, **save)
    return out.getvalue()
