"""``publisher preview FILE``: one article as a push would post it and as its feed entry.

Reads the file and the config only: no bot token, no state, nothing sent or written. The
messages come from ``messages.render_message`` and the destinations (and the too-old rule)
from ``dispatch.plan_deliveries``, the entry from the feed rendering itself, so what is
shown is what a push and a build would make of the file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from publisher.config import Config
from publisher.errors import ArticleError
from publisher.loader import Problem, load_file
from publisher.models import Article
from publisher.names import ALL_SLUG, feed_name
from publisher.selection import is_selected, topic_slug


def render_preview(config: Config, path: Path, now: datetime | None = None) -> str:
    """The preview text; a file that cannot be used is an ``ArticleError`` with its reason."""
    article = read_article(path, config.articles.max_file_bytes)
    sections = [
        _heading(article, path),
        _selection(article, path, config),
        _telegram(article, config, now or datetime.now(UTC)),
        _feeds(article, config),
    ]
    return "\n\n".join(sections)


def read_article(path: Path, max_file_bytes: int) -> Article:
    if not path.is_file():  # a FIFO would block the read; a folder is no article
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ArticleError(f"{path}: {what}")
    outcome = load_file(path, max_file_bytes)
    if isinstance(outcome, Problem):
        raise ArticleError(str(outcome))
    return outcome


def _heading(article: Article, path: Path) -> str:
    return f"{path}\n  title: {article.title}\n  id:    {article.id}\n  url:   {article.url}"


def _selection(article: Article, path: Path, config: Config) -> str:
    minimum = config.select.min_quality
    if not article.published:
        line = ("Not selected: `published` is not true, so it is in no feed and never posted "
                "(as it would look, below).")
    elif not is_selected(article, minimum):
        line = (f"Not selected: quality {article.quality} is below select.min_quality "
                f"({minimum}), so it is in no feed and never posted (as it would look, below).")
    else:
        line = f"Selected: published, quality {article.quality} >= select.min_quality {minimum}."
    folder = config.articles.dir
    if not path.resolve().is_relative_to(folder):
        line += f"\nNote: the file is not in articles.dir ({folder}): builds and pushes skip it."
    return line


def _telegram(article: Article, config: Config, now: datetime) -> str:
    from publisher.dispatch import plan_deliveries
    from publisher.messages import format_for_dry_run, render_message

    planned = plan_deliveries([article], config, now)
    if not planned:
        return "Telegram: no destination (set telegram.chat_id or [telegram.routes])."
    message = render_message(article, timezone=config.telegram.timezone)
    count = len(planned)
    parts = [f"Telegram: {count} destination{'' if count == 1 else 's'}"]
    for delivery in planned:
        text = format_for_dry_run(message, delivery.chat_id)
        if delivery.reason:  # too old: recorded as skipped, never posted
            text += f"\n  not posted: {delivery.reason}; a push records it as {delivery.state}"
        parts.append(text)
    return "\n".join(parts)


def _feeds(article: Article, config: Config) -> str:
    from publisher.feeds import render_feeds, safe_url

    if safe_url(article.url) is None:
        return "Feeds: none (the article has no http(s) link)."
    slugs = [ALL_SLUG, *dict.fromkeys(topic_slug(topic) for topic in article.topics)]
    urls = "\n".join(f"  {config.feeds.url_for(feed_name(slug, 'rss'))}" for slug in slugs)
    rendered = render_feeds([article], config.feeds)
    return f"Feeds ({len(slugs)}, and their Atom and JSON twins):\n{urls}\n" + _rss_item(
        rendered[feed_name(ALL_SLUG, "rss")]
    )


def _rss_item(rss: bytes) -> str:
    from lxml import etree

    channel = etree.fromstring(rss).find("channel")
    item = channel.find("item") if channel is not None else None
    if item is None:  # pragma: no cover - a feed of one article with a link has its item
        return ""
    etree.indent(item)
    return etree.tostring(item, encoding="unicode").rstrip() + "\n"
