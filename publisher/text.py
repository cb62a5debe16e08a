"""Small text rules shared by the loader, the feeds, the messages and the commands.

One place for what every output must agree on: which characters XML 1.0 cannot hold, what
counts as a web (http or https) link, and how a moment becomes UTC. Light on purpose: it is
imported on every start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

# Characters XML 1.0 forbids (C0 controls but tab/newline/return, lone surrogates, U+FFFE/F;
# lxml refuses them). Spelled as what is invalid (small ranges), not as the negation of what
# is valid: the same characters, and compiled in 1 ms instead of 7 on every start.
XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
WEB_SCHEMES = frozenset({"http", "https"})


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 post``, ``2 posts``, ``0 posts``; ``many`` for irregular nouns (``entries``)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def sent_text(summary: Mapping[str, Any]) -> str:
    """ "3 posts", or with digests "3 posts and 1 digest (40 articles)": a digest's articles
    are ledger pairs sent, not posts."""
    digests = int(summary.get("digests") or 0)
    in_digests = int(summary.get("in_digests") or 0)
    text = plural(int(summary["sent"]) - in_digests, "post")
    if digests:
        text += f" and {plural(digests, 'digest')} ({plural(in_digests, 'article')})"
    return text


def without_xml_invalid(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold."""
    return XML_INVALID.sub("", text)


def xml_text(text: str) -> str:
    """Text safe for XML: invalid characters dropped, whitespace folded to single spaces."""
    return " ".join(without_xml_invalid(text).split())


def is_web_url(url: str) -> bool:
    """An absolute http(s) URL with a host (the shape only; ``models.published_url`` gives
    the one form a link is published in)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in WEB_SCHEMES and bool(parts.hostname)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return False


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a moment without a zone is taken as UTC already. May raise
    ``OverflowError`` for a moment near the ends of the calendar."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
