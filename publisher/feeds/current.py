"""The stages run against the catalog: the feeds folder brought up to date with the least work.

What the writer left on disk is remembered in the ``feed_files`` table (one row per file
and place: how it was rendered, a digest of its members, its size), so that a build renders
only the feeds whose members or settings changed, and none at all when nothing did, as long
as every file is still there at the size it was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import stat
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from publisher import __version__
from publisher.catalog import Catalog, FeedFileRecord, FeedSelection
from publisher.config import Config
from publisher.feeds.plan import (
    channel_settings,
    feeds_holding,
    member_digests,
    paths_to_render,
    plan_selection,
)
from publisher.feeds.write import BuildResult, FeedFile, write_feeds
from publisher.names import FEED_SUFFIXES, PAGE_NAMES, feed_name

FEEDS_KEY = "feeds_digest"


def feeds_key(config: Config) -> str:
    """The place of the feeds folder: this host and the folder, since each host may have a
    disk of its own (instances sharing a PostgreSQL state)."""
    return f"{FEEDS_KEY}:{socket.gethostname()}:{config.feeds.dir.resolve()}"


def _follow_bot(config: Config) -> str:
    """The bot whose deep links the landing page shows per topic ("": none)."""
    followers = config.followers
    return followers.bot_username if followers.enabled else ""


def write_current_feeds(config: Config, catalog: Catalog) -> BuildResult | None:
    """Render and write the feeds whose entries changed; None when every file is current.

    One writer at a time per state (instances sharing a PostgreSQL state included); what
    was written is remembered per host and folder, since each host may have its own disk.
    """
    with catalog.db.exclusive("feeds"):
        return _write_current_feeds(config, catalog)


def _write_current_feeds(config: Config, catalog: Catalog) -> BuildResult | None:
    selection = catalog.feed_selection(config.feeds.max_items)
    # A new publisher version may render differently: its first build renders every feed.
    # The landing page's "Get it in Telegram" links too, when there are any.
    bot = _follow_bot(config)
    settings = _digest(__version__, repr(config.feeds), *([bot] if bot else []))
    place = feeds_key(config)
    remembered = catalog.feed_files(place)
    on_disk = _current_files(remembered, settings, config.feeds.dir)
    if len(on_disk) == len(remembered) and _all_current(on_disk, selection):
        if config.feeds.websub_hub:
            from publisher.websub import announce_changed

            announce_changed(None, config.feeds)  # retry what the hub has not accepted yet
        return None
    result, records = _render_and_write(config, catalog, selection, on_disk, settings)
    catalog.remember_feed_files(place, records)
    from publisher.websub import announce_changed

    announce_changed(result, config.feeds)
    return result


def _render_and_write(config: Config, catalog: Catalog, selection: FeedSelection,
                      on_disk: Mapping[str, FeedFileRecord], settings: str
                      ) -> tuple[BuildResult, list[FeedFileRecord]]:
    """Render the feeds that are not current on disk (and the pages), write them, and say
    what the folder now holds."""
    from publisher.feeds.render import render_plan  # feedgen and lxml: only when rendering
    from publisher.modified import modified_times
    from publisher.subscribe import HEADLINES

    channel = dataclasses.replace(channel_settings(config.feeds), follow_bot=_follow_bot(config))
    digests = member_digests(selection)
    unchanged = _unchanged_feeds(on_disk, digests)
    shown, moved = catalog.articles_as_selected(
        selection, paths_to_render(selection, unchanged, HEADLINES))
    # An article's source path is its catalog path (``Catalog.mark_planned`` relies on it too).
    articles = {article.source_path: article for article in shown}
    modified = modified_times(catalog.db, shown, datetime.now(UTC))
    rendering = render_plan(plan_selection(selection, articles, channel), channel, unchanged,
                            modified)
    result = write_feeds(rendering.rendered, config.feeds.dir, rendering.unchanged)
    # What another process changed after the selection was read was rendered as it is now,
    # not as digested: the feeds holding it, and the pages, are not remembered as current
    # (a later return to the digested records must not find them "unchanged").
    stale = feeds_holding(selection, moved)
    members = {slug: digest for slug, digest in digests.items()
               if slug in rendering.counts and slug not in stale}
    pages = "" if moved else selection.digest
    return result, _records(result.files, rendering.rendered, on_disk, settings, members, pages,
                            rendering.counts)


def _current_files(remembered: Mapping[str, FeedFileRecord], settings: str, folder: Path
                   ) -> dict[str, FeedFileRecord]:
    """The remembered files rendered with these settings and still on disk at their size."""
    return {name: record for name, record in remembered.items()
            if record.settings == settings and record.members
            and _size_on_disk(folder / name) == record.size}


def _size_on_disk(path: Path) -> int | None:
    """The size of the regular file at ``path`` (a link to one counts); None if there is none."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _all_current(on_disk: Mapping[str, FeedFileRecord], selection: FeedSelection) -> bool:
    """Every page is current for this very selection (so every feed it lists was written for
    it too), and so is every feed file (``on_disk``: every file remembered, each current)."""
    pages = [on_disk.get(name) for name in PAGE_NAMES]
    if not all(page is not None and page.members == selection.digest for page in pages):
        return False
    digests = member_digests(selection)
    feeds = [record for record in on_disk.values() if record.name not in PAGE_NAMES]
    return bool(feeds) and all(digests.get(record.slug) == record.members for record in feeds) \
        and all(_feed_on_disk(on_disk, slug) for slug in {record.slug for record in feeds})


def _feed_on_disk(on_disk: Mapping[str, FeedFileRecord], slug: str) -> bool:
    return all(feed_name(slug, kind) in on_disk for kind in FEED_SUFFIXES)


def _unchanged_feeds(on_disk: Mapping[str, FeedFileRecord], digests: Mapping[str, str]
                     ) -> dict[str, int]:
    """Slug -> entries of the feeds whose every file is on disk with these very members."""
    unchanged = {}
    for slug, digest in digests.items():
        records = [on_disk.get(feed_name(slug, kind)) for kind in FEED_SUFFIXES]
        counts = {r.entries for r in records if r is not None and r.members == digest}
        if None not in records and len(counts) == 1 and None not in counts:
            unchanged[slug] = int(counts.pop() or 0)
    return unchanged


def _records(files: Iterable[FeedFile], rendered: Mapping[str, bytes],
             on_disk: Mapping[str, FeedFileRecord], settings: str, members: Mapping[str, str],
             pages: str, counts: Mapping[str, int]) -> list[FeedFileRecord]:
    """The rows of the files now on disk: a feed rendered now or kept as it was (remembered
    only when its members are known), and the pages."""
    records = []
    for feed_file in files:
        name = feed_file.path.name
        if feed_file.is_feed:
            if feed_file.slug not in members:
                continue
            known, entries = members[feed_file.slug], counts[feed_file.slug]
        else:
            known, entries = pages, None
        if name in rendered:
            data = rendered[name]
            size, digest = len(data), hashlib.blake2b(data, digest_size=16).hexdigest()
        else:  # kept: as it was written
            size, digest = on_disk[name].size, on_disk[name].digest
        records.append(FeedFileRecord(name, feed_file.slug, settings, known, entries, size,
                                      digest))
    return records


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
