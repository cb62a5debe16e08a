"""The plan stage: which feeds exist, with which members, under which settings.

A feed is "all" (every selected article) or one topic slug. Its members come from one
place: the catalog's SQL selection (``Catalog.feed_selection``, newest first, at most
``feeds.max_items`` each) for a build, or ``selection.group_by_topic`` (the pure reference
the catalog's SQL is tested against) for articles given directly, as ``render_feeds`` takes
them. The plan only names them; it never regroups what the catalog chose.

Also here: a digest of each feed's members, by which the writer knows that a feed on disk
is still current without rendering it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from publisher.catalog import FeedSelection
from publisher.config import FeedsConfig
from publisher.errors import FeedError
from publisher.models import Article, published_url
from publisher.names import ALL_SLUG
from publisher.selection import group_by_topic, newest_first, topic_slug
from publisher.text import xml_text

ALL_NAME = "All articles"


def safe_url(url: str) -> str | None:
    """``url`` as an absolute http(s) URI fit for a feed, or None if it is anything else:
    the published form (``models.published_url``: an ASCII host, no credentials, no
    tracking parameters), which the loader already gave every article link."""
    return published_url(url.strip())


@dataclass(frozen=True, slots=True)
class Channel:
    """Feed-level settings shared by every feed, validated once."""

    title: str
    description: str
    language: str
    site: str
    ttl: int
    hub: str | None
    telegram: str  # the channel's URL, or ""
    config: FeedsConfig
    follow_bot: str = ""  # followers.bot_username: per topic a t.me deep link, or "" for none


@dataclass(frozen=True, slots=True)
class PlannedFeed:
    """One feed and its members, newest first (each article once)."""

    slug: str
    name: str  # "All articles" or the topic's name, for the landing page
    title: str
    articles: Sequence[Article]


def channel_settings(config: FeedsConfig) -> Channel:
    title = xml_text(config.title)
    if not title:
        raise FeedError("feeds.title must not be empty")
    site = safe_url(config.site)
    if site is None or safe_url(config.base_url) is None:
        raise FeedError(
            f"feeds.base_url and feeds.site_url must be http(s) URLs, "
            f"not {config.base_url!r} / {config.site_url!r}"
        )
    hub = safe_url(config.websub_hub) if config.websub_hub else None
    if config.websub_hub and hub is None:
        raise FeedError(f"feeds.websub_hub must be an http(s) URL, not {config.websub_hub!r}")
    telegram = safe_url(config.telegram_url) if config.telegram_url else ""
    if telegram is None:
        raise FeedError(f"feeds.telegram_url must be an http(s) URL, not {config.telegram_url!r}")
    return Channel(
        title=title,
        description=xml_text(config.description) or title,
        language=xml_text(config.language),
        site=site,
        ttl=config.ttl,
        hub=hub,
        telegram=telegram,
        config=config,
    )


def plan_articles(selected: Sequence[Article], channel: Channel) -> list[PlannedFeed]:
    """The feeds of articles given directly (newest first, as ``selection.select`` returns
    them): "all", then every topic slug in order."""
    feeds = [_all_feed(selected, channel)]
    for slug, topic in group_by_topic(selected).items():
        feeds.append(_topic_feed(slug, topic.name, topic.articles, channel))
    return feeds


def plan_selection(selection: FeedSelection, articles: Mapping[str, Article],
                   channel: Channel) -> list[PlannedFeed]:
    """The feeds of the catalog's selection: its members, of which ``articles`` (by catalog
    path) holds those to show; a member not in ``articles`` is left out."""
    feeds = [_all_feed(_present(selection.newest, articles), channel)]
    for slug in sorted(selection.topics):  # in Python: a PostgreSQL collation may differ
        members = _present(selection.topics[slug], articles)
        if members:
            feeds.append(_topic_feed(slug, _topic_name(slug, members[0]), members, channel))
    return feeds


def _present(members: Sequence[tuple[str, str]], articles: Mapping[str, Article]
             ) -> list[Article]:
    return [articles[path] for path, _ in members if path in articles]


def _all_feed(articles: Sequence[Article], channel: Channel) -> PlannedFeed:
    return PlannedFeed(ALL_SLUG, ALL_NAME, channel.title, _one_per_id(articles))


def _topic_feed(slug: str, name: str, articles: Sequence[Article],
                channel: Channel) -> PlannedFeed:
    name = xml_text(name) or slug
    return PlannedFeed(slug, name, f"{channel.title}: {name}", _one_per_id(articles))


def _one_per_id(articles: Sequence[Article]) -> Sequence[Article]:
    """Each entry id once (two records may keep one id, see the catalog's identity rule),
    newest first."""
    return newest_first({article.id: article for article in articles}.values())


def _topic_name(slug: str, newest: Article) -> str:
    """The topic's name as its newest article spells it: the first spelling seen for the
    slug, as ``selection.group_by_topic`` names it."""
    return next((name for name in newest.topics if topic_slug(name) == slug), slug)


# -- what each feed holds, as digests ---------------------------------------------------------


def selection_members(selection: FeedSelection) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(slug, members as (path, record digest) newest first) of "all" and every topic."""
    yield ALL_SLUG, selection.newest
    yield from selection.topics.items()


def member_digests(selection: FeedSelection) -> dict[str, str]:
    """Per feed, a digest of the records it may show, in order (the settings are compared on
    their own): equal digests, equal files."""
    digests = {}
    for slug, members in selection_members(selection):
        digest = hashlib.blake2b(slug.encode(), digest_size=16)
        for _, record in members:
            digest.update(record.encode())
        digests[slug] = digest.hexdigest()
    return digests


def feeds_holding(selection: FeedSelection, paths: set[str]) -> set[str]:
    """The feeds with a member at one of ``paths``."""
    if not paths:
        return set()
    return {slug for slug, members in selection_members(selection)
            if any(path in paths for path, _ in members)}


def paths_to_render(selection: FeedSelection, unchanged: Mapping[str, int],
                    headlines: int) -> list[str]:
    """Every member of a changed feed, the first ``headlines`` of an unchanged one (for the
    landing page); newest first."""
    wanted: set[str] = set()
    for slug, members in selection_members(selection):
        shown = members[:headlines] if slug in unchanged else members
        wanted.update(path for path, _ in shown)
    return [path for path in selection.paths if path in wanted]
