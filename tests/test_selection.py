"""Selection: pure functions over Articles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from publisher.models import Article, Image, article_id, best_image, normalise_url
from publisher.selection import RESERVED_SLUGS, group_by_topic, select, topic_slug

BASE = datetime(2030, 1, 1, tzinfo=UTC)


def make(n: int, *, url: str | None = None, quality: int = 100, published: bool = True,
         topics: tuple[str, ...] = ("AI",), hours: int = 0, path: str = "") -> Article:
    link = url or f"https://e.com/{n}"
    return Article(id=article_id(link), title=f"A{n}", url=link,
                   published_at=BASE + timedelta(hours=hours or n), quality=quality,
                   published=published, topics=topics, source_path=path or f"{n}.txt")


def test_threshold_is_inclusive() -> None:
    chosen = select([make(1, quality=49), make(2, quality=50), make(3, quality=51)], 50)
    assert [a.title for a in chosen] == ["A3", "A2"]


def test_unpublished_and_missing_published_are_left_out() -> None:
    assert select([make(1, published=False)], 0) == []


def test_duplicates_keep_the_newest_record() -> None:
    old = make(1, url="https://E.com/story?utm_source=x", hours=1)
    new = make(2, url="https://e.com/story", hours=5)
    chosen = select([new, old], 0)
    assert [a.title for a in chosen] == ["A2"]


def test_duplicate_that_is_unpublished_does_not_hide_the_published_one() -> None:
    published = make(1, url="https://e.com/s", hours=1)
    newer_draft = make(2, url="https://e.com/s", hours=9, published=False)
    assert [a.title for a in select([published, newer_draft], 0)] == ["A1"]


def test_newest_first_with_stable_ties() -> None:
    a, b = make(1, hours=3), make(2, hours=3)
    assert select([a, b], 0) == select([b, a], 0)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Künstliche Intelligenz", "kunstliche-intelligenz"),
        ("Computer Vision", "computer-vision"),
        ("AI Ethics & Policy", "ai-ethics-policy"),
        ("Tech/Science", "tech-science"),
        ("../../x", "x"),
        ("All", "topic-all"),
        ("C++", "c"),
    ],
)
def test_topic_slugs(name: str, slug: str) -> None:
    assert topic_slug(name) == slug


@given(st.text())
def test_any_topic_gives_a_safe_slug(name: str) -> None:
    slug = topic_slug(name)
    assert slug and "/" not in slug and ".." not in slug and slug not in RESERVED_SLUGS
    assert slug.isascii() and slug == slug.lower() and not slug.startswith("-")
    assert all(ch.isalnum() or ch == "-" for ch in slug)


def test_colliding_topics_share_one_feed_without_duplicates() -> None:
    one = make(1, topics=("Tech/Science", "Tech Science"))
    two = make(2, topics=("tech science",))
    topics = group_by_topic(select([one, two], 0))
    assert list(topics) == ["tech-science"]
    assert [a.title for a in topics["tech-science"].articles] == ["A2", "A1"]
    assert topics["tech-science"].name == "tech science"


def test_normalise_url() -> None:
    assert normalise_url("HTTPS://Example.COM:443/a/B/?utm_medium=x&id=1#top") == (
        "https://example.com/a/B/?id=1"
    )
    assert normalise_url("http://e.com") == "http://e.com/"


def test_best_image_prefers_large_sensible_images() -> None:
    icon = Image("https://e.com/icon.png", 50, 50)
    banner = Image("https://e.com/banner.jpg", 3000, 300)
    small = Image("https://e.com/small.jpg", 400, 300)
    large = Image("https://e.com/large.jpg", 1600, 900)
    unknown = Image("https://e.com/unknown.jpg")
    assert best_image([icon, banner, small, large, unknown]) == large
    assert best_image([icon, unknown]) == unknown
    assert best_image([icon, banner]) is None
