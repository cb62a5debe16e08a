"""Shared fixtures: article files on disk, configs, and the Bot API stand-in."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from standin_fixtures import botapi, botapi_process  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"

ArticleWriter = Callable[..., Path]


def article_record(index: int = 1, **fields: Any) -> dict[str, Any]:
    """A valid, published article record; ``fields`` override or (with None) remove keys."""
    record: dict[str, Any] = {
        "title": f"Article number {index}",
        "excerpt": f"Excerpt of article {index}.",
        "publishedDateTime": f"2030-01-01T{index % 24:02d}:{index % 60:02d}:00Z",
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
    return "---\n" + yaml.safe_dump(record, allow_unicode=True, sort_keys=False) + "---\n"


@pytest.fixture
def articles_dir(tmp_path: Path) -> Path:
    path = tmp_path / "articles"
    path.mkdir()
    return path


@pytest.fixture
def write_article(articles_dir: Path) -> ArticleWriter:
    def write(name: str, index: int = 1, **fields: Any) -> Path:
        path = articles_dir / name
        path.write_text(front_matter(article_record(index, **fields)), encoding="utf-8")
        return path

    return write


@pytest.fixture
def config_file(tmp_path: Path, articles_dir: Path) -> Callable[..., Path]:
    """Write a config.toml beside ``articles/``; extra TOML text is appended."""

    def write(extra: str = "") -> Path:
        path = tmp_path / "config.toml"
        path.write_text(
            '[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
            'base_url = "https://feeds.example.org/"\n' + extra,
            encoding="utf-8",
        )
        return path

    return write


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Surface unclosed sockets and transports in the test that leaked them."""
    yield
    gc.collect()
