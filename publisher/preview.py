"""``publisher preview FILE``: one article as a push would post it and as its feed entry.

Reads the file and the config, and the state when there is one (read-only, never creating
it): no bot token, nothing sent or written. The state gives the id the file keeps (the
identity rule) and the destinations as last resolved. The messages come from
``messages.render_message`` and the destinations (and the too-old rule) from
``plan.plan_deliveries``, the entry from the feed rendering itself, so what is shown is
what a push and a build would make of the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from publisher.config import Config
from publisher.errors import ArticleError, PublisherError, RenderError
from publisher.loader import Problem, load_file
from publisher.models import Article
from publisher.names import ALL_SLUG, feed_name
from publisher.selection import is_selected, topic_slug

if TYPE_CHECKING:
    from publisher.catalog import Catalog
    from publisher.destinations import Destinations


@dataclass(frozen=True)
class Known:
    """What the state says of a file: the article as a push would see it, and how."""

    article: Article
    id_note: str
    destinations: Destinations


def render_preview(config: Config, path: Path, now: datetime | None = None) -> str:
    """The preview text; a file that cannot be used is an ``ArticleError`` with its reason."""
    known = from_state(read_article(path, config.articles.max_file_bytes), path, config)
    sections = [
        _heading(known, path),
        _selection(known.article, path, config),
        _telegram(known, config, now or datetime.now(UTC)),
        _feeds(known.article, config),
    ]
    return "\n\n".join(sections)


def from_state(article: Article, path: Path, config: Config) -> Known:
    """The article with the id the state's catalog gives its file, and the destinations as
    the state remembers them; without a state, its URL's id and the configured names."""
    from publisher.catalog import Catalog
    from publisher.destinations import remembered_destinations
    from publisher.state import open_store, state_exists

    own = "of its webUrl"
    if not state_exists(config.state.url):
        return Known(article, f"{own}; no state yet", remembered_destinations(config, None))
    try:
        store = open_store(config.state.url, readonly=True)
    except PublisherError as exc:
        return Known(article, f"{own}; the state could not be read: {exc}",
                     remembered_destinations(config, None))
    try:
        if store.empty:
            return Known(article, f"{own}; no state yet", remembered_destinations(config, None))
        destinations = remembered_destinations(config, store)
        kept = _kept_id(Catalog(store.db), path, article, config)
    finally:
        store.close()
    if kept is None:
        return Known(article, f"{own}: the state does not know this file", destinations)
    identifier, source = kept
    if source is not None:
        note = f"of {source}, which has the same URL, in the state"
    else:
        note = "kept by this file in the state, as its feed entry and the ledger"
        if identifier != article.id:
            note += f"; its webUrl alone would give {article.id}"
    return Known(dataclasses.replace(article, id=identifier), note, destinations)


def _kept_id(catalog: Catalog, path: Path, article: Article,
             config: Config) -> tuple[str, str | None] | None:
    """The catalog's id for the file, looked up by its path as a sync names it: (id, None)
    when the file keeps it, (id, the other file's path) when it is of a file with the same
    URL; None when the catalog has neither."""
    folder = config.articles.dir
    for candidate in dict.fromkeys((os.path.abspath(path), str(path.resolve()))):
        if Path(candidate).is_relative_to(folder):
            found = catalog.kept_id(candidate, article.url)
            if found is not None:
                return found[0], None if found[1] == candidate else found[1]
    found = catalog.kept_id("", article.url)  # a file outside the folder: by its URL only
    return (found[0], found[1]) if found is not None else None


def read_article(path: Path, max_file_bytes: int) -> Article:
    if not path.is_file():  # a FIFO would block the read; a folder is no article
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ArticleError(f"{path}: {what}")
    outcome = load_file(path, max_file_bytes)
    if isinstance(outcome, Problem):
        raise ArticleError(str(outcome))
    return outcome


def _heading(known: Known, path: Path) -> str:
    article = known.article
    return (f"{path}\n  title: {article.title}\n  id:    {article.id} ({known.id_note})\n"
            f"  url:   {article.url}")


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


def _telegram(known: Known, config: Config, now: datetime) -> str:
    from publisher.destinations import maybe_one_chat
    from publisher.messages import format_for_dry_run, render_for
    from publisher.plan import plan_deliveries
    from publisher.timing_status import preview_note

    article, destinations = known.article, known.destinations
    planned = plan_deliveries([article], config, now, destinations)
    if not planned:
        return "Telegram: no destination (set telegram.chat_id or [telegram.routes])."
    count = len(planned)
    parts = [f"Telegram: {count} destination{'' if count == 1 else 's'}"]
    for delivery in planned:
        label = destinations.label(delivery.chat_id)
        try:
            text = format_for_dry_run(render_for(article, config, label), label)
        except RenderError as exc:
            text = f"{label}: cannot be posted: {exc}; a push records it as failed"
        if delivery.reason:  # too old: recorded as skipped, never posted
            text += f"\n  not posted: {delivery.reason}; a push records it as {delivery.state}"
        text += preview_note(config, destinations.label(delivery.chat_id))
        parts.append(text)
    keys = set(destinations.keys_for(article.topics))
    parts += [f"Note: {note}." for note in maybe_one_chat(destinations, keys)]
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
