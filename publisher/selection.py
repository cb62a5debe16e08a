"""Selection: which articles are published, and under which topics. Pure functions."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from publisher.models import Article, normalise_url

# Slugs that name files of our own; a topic with one of these names gets a prefix.
RESERVED_SLUGS = frozenset({"all", "index", "feeds"})
MAX_SLUG_LENGTH = 80


@dataclass(frozen=True, slots=True)
class Topic:
    """The articles of one feed. ``name`` is the first spelling seen for the slug."""

    slug: str
    name: str
    articles: tuple[Article, ...]


def is_selected(article: Article, min_quality: int) -> bool:
    return article.published and article.quality >= min_quality


def newest_first(articles: Iterable[Article]) -> list[Article]:
    """Newest first; ties broken by id so the order never depends on file-system order."""
    return sorted(articles, key=lambda a: (a.published_at, a.id), reverse=True)


def deduplicate(articles: Iterable[Article]) -> list[Article]:
    """One article per normalised URL: the newest record wins (then the later file name)."""
    best: dict[str, Article] = {}
    for article in articles:
        key = normalise_url(article.url)
        current = best.get(key)
        if current is None or _newer(article, current):
            best[key] = article
    return list(best.values())


def _newer(candidate: Article, current: Article) -> bool:
    return (candidate.published_at, candidate.source_path) > (
        current.published_at,
        current.source_path,
    )


def select(articles: Iterable[Article], min_quality: int) -> list[Article]:
    """Published articles of sufficient quality, deduplicated, newest first."""
    return newest_first(deduplicate(a for a in articles if is_selected(a, min_quality)))


@functools.lru_cache(maxsize=4096)  # a corpus has few topic names, each seen many times
def topic_slug(name: str) -> str:
    """A file-name-safe slug: lowercase ASCII words joined by ``-``; never empty, never a path.

    >>> topic_slug("Künstliche Intelligenz")
    'kunstliche-intelligenz'
    >>> topic_slug("AI Ethics & Policy")
    'ai-ethics-policy'
    """
    from slugify import slugify  # only when a file is parsed: warm builds never need it

    slug = slugify(name, max_length=MAX_SLUG_LENGTH, word_boundary=True, replacements=[["&", " "]])
    if not slug:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        slug = f"topic-{digest}"
    if slug in RESERVED_SLUGS:
        slug = f"topic-{slug}"
    return slug


def group_by_topic(articles: Iterable[Article]) -> dict[str, Topic]:
    """Topics by slug, each with its articles newest first; topics sorted by slug.

    Topics whose names collide on one slug share a feed; an article listed under both
    appears in it once.
    """
    names: dict[str, str] = {}
    members: dict[str, dict[str, Article]] = {}
    for article in articles:
        for name in article.topics:
            slug = topic_slug(name)
            names.setdefault(slug, name)
            members.setdefault(slug, {})[article.id] = article
    return {
        slug: Topic(slug, names[slug], tuple(newest_first(members[slug].values())))
        for slug in sorted(members)
    }
