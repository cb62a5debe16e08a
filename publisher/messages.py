"""Render an article as a Telegram post. Pure functions: no I/O, no network, no Bot calls.

Telegram counts message lengths *after* parsing entities, in UTF-16 code units: a caption holds
1024 of them, a text message 4096. Every rendering here is built as plain text first, shortened
to fit (never inside a surrogate pair, a combining sequence or an HTML entity), and only then
escaped for ``parse_mode=HTML``. Escaping does not change the visible length, so a plain text
that fits guarantees an HTML text that fits.

Layout (blocks separated by a blank line, empty blocks left out)::

    <b>Title</b>

    Excerpt, shortened at a word boundary…

    TechCrunch · 6 Oct 2021
    #AI #ComputerVision
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher.errors import ConfigError
from publisher.models import Article, Related, normalise_url
from publisher.text import as_utc, is_web_url

CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
ELLIPSIS = "…"

MAX_RELATED_BUTTONS = 3
# Inline buttons show about one line; longer labels are cut by the client anyway.
BUTTON_LABEL_LIMIT = 40
PROVIDER_LABEL_LIMIT = 32
# Telegram links at most 256 characters of a hashtag.
HASHTAG_LIMIT = 256
# The footer (provider/date, hashtags, URL) takes at most this share of the limit, so the
# title and the excerpt always keep at least half of it.
FOOTER_MAX_SHARE = 0.5
# An excerpt cut shorter than this says nothing useful: leave it out instead.
MIN_EXCERPT = 24

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Characters worth keeping in a hashtag that Telegram would not link: spelled out instead,
# so "C++" and "C#" do not both collapse to "#C".
_HASHTAG_SPELLINGS = {"+": "Plus", "#": "Sharp"}
# Only after a word character: "C++" and "F#" are names, a leading "#" just marks a tag.
_SPELLED_RE = re.compile(r"(?<=\w)[+#]+")
_TAG_RE = re.compile(r"<[^>]*>")


@dataclass(frozen=True, slots=True)
class Button:
    text: str
    url: str


@dataclass(frozen=True, slots=True)
class Message:
    """One post, ready for the sender, with the fallbacks it may need.

    ``html`` is the caption when ``photo_url`` is set (sendPhoto), else the text (sendMessage).
    ``text_html`` is always the sendMessage rendering, for when the photo is refused.
    ``plain`` fits the same limit as ``html`` (caption or text), so it can replace it when
    Telegram cannot parse the entities; it ends with the article URL.
    """

    article_id: str
    photo_url: str | None
    html: str
    text_html: str
    plain: str
    buttons: tuple[tuple[Button, ...], ...]
    preview_url: str  # "" for no link preview (text messages)
    silent: bool = False  # disable_notification


@dataclass(frozen=True, slots=True)
class _Fitted:
    """The plain-text parts of one rendering, already shortened to fit its limit."""

    title: str
    excerpt: str
    footer: tuple[str, ...]

    def blocks(self) -> list[str]:
        return [block for block in (self.title, self.excerpt, "\n".join(self.footer)) if block]


# --- lengths -------------------------------------------------------------------------------


def telegram_length(text: str) -> int:
    """Length in UTF-16 code units, the unit of every Telegram limit."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def visible_length(html_text: str) -> int:
    """UTF-16 length of what Telegram shows for ``html_text``: tags removed, entities decoded."""
    return telegram_length(html.unescape(_TAG_RE.sub("", html_text)))


# --- shortening ----------------------------------------------------------------------------


def shorten(text: str, limit: int) -> str:
    """``text`` if it fits ``limit`` UTF-16 units, else its start cut at a word boundary + "…".

    The cut is made between grapheme clusters, so neither a surrogate pair nor a visible
    character (a flag, a ZWJ sequence, a letter with its marks) is ever split.
    A text without a usable word boundary (one huge word, a run of emoji) is cut mid-word.
    """
    if telegram_length(text) <= limit:
        return text
    if limit < telegram_length(ELLIPSIS):
        return ""
    end = _fitting_prefix_end(text, limit - telegram_length(ELLIPSIS))
    end = _word_boundary(text, end)
    head = text[:end].rstrip(" \n\t,;:-–—")  # no dangling separator before the ellipsis
    return f"{head}{ELLIPSIS}" if head else ELLIPSIS


def _fitting_prefix_end(text: str, units: int) -> int:
    """The largest index that ends a grapheme cluster such that ``text[:index]`` takes at
    most ``units`` UTF-16 units: a cut never splits what a reader sees as one character
    (a flag, a ZWJ family, a letter and its marks, an emoji and its skin tone)."""
    used = 0
    for cluster in _graphemes().finditer(text):
        used += telegram_length(cluster.group())
        if used > units:
            return cluster.start()
    return len(text)


@functools.cache
def _graphemes() -> Any:
    r"""Extended grapheme clusters (Unicode's ``\X``), from ``regex``: the standard library's
    ``re`` has no ``\X``. Imported on the first cut, which most messages never need."""
    import regex

    return regex.compile(r"\X")


def _word_boundary(text: str, end: int) -> int:
    """Move ``end`` back to the last whitespace if it falls inside a word.

    Keeps the mid-word cut when the last whitespace would throw away more than half the text.
    """
    if end >= len(text) or text[end] in " \n\t":
        return end
    space = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end))
    return space if space >= end // 2 and space > 0 else end


# --- parts ---------------------------------------------------------------------------------


def hashtag(topic: str) -> str:
    """The Telegram hashtag for a topic, or "" when Telegram would not link one.

    Words are joined in CamelCase ("Computer Vision" -> "#ComputerVision"); characters other
    than letters, digits, marks and "_" are dropped, except "+" and "#", which are spelled out
    ("C++" -> "#CPlusPlus"). A tag without any letter ("2024") is dropped: Telegram does not
    link it.
    """
    topic = unicodedata.normalize("NFC", topic)
    topic = _SPELLED_RE.sub(lambda m: "".join(f" {_HASHTAG_SPELLINGS[c]} " for c in m[0]), topic)
    words = ("".join(c for c in word if _is_hashtag_char(c)) for word in topic.split())
    tag = "".join(word[:1].upper() + word[1:] for word in words)[:HASHTAG_LIMIT]
    if not any(unicodedata.category(char).startswith("L") for char in tag):
        return ""
    return f"#{tag}"


def _is_hashtag_char(char: str) -> bool:
    category = unicodedata.category(char)
    return char == "_" or category == "Nd" or category[0] in "LM"


def _hashtags(topics: Iterable[str]) -> list[str]:
    """Tags of the topics in order, without empty ones or case-insensitive duplicates."""
    seen: set[str] = set()
    tags: list[str] = []
    for topic in topics:
        tag = hashtag(topic)
        if tag and tag.casefold() not in seen:
            seen.add(tag.casefold())
            tags.append(tag)
    return tags


def format_date(moment: datetime, timezone: str = "UTC") -> str:
    """'6 Oct 2021' in ``timezone``; English month names whatever the process locale."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigError(f"unknown timezone {timezone!r}") from error
    local = as_utc(moment).astimezone(zone)
    return f"{local.day} {_MONTHS[local.month - 1]} {local.year}"


def _same_page(first: str, second: str) -> bool:
    try:
        return normalise_url(first) == normalise_url(second)
    except ValueError:
        return first == second


# --- layout --------------------------------------------------------------------------------


def _fit(title: str, excerpt: str, footer: tuple[str, ...], limit: int) -> _Fitted:
    """Shorten title and excerpt so that all blocks, joined by blank lines, fit ``limit``.

    The footer is already fitted (at most half the limit); the title comes next, the excerpt
    gets what is left.
    """
    separator = telegram_length("\n\n")
    footer_units = telegram_length("\n".join(footer))
    title = shorten(title, limit - footer_units - (separator if footer else 0))
    # The excerpt block sits between the title and the footer: one separator per neighbour.
    room = limit - footer_units - telegram_length(title) - separator * (bool(footer) + bool(title))
    fitted_excerpt = shorten(excerpt, room)
    if fitted_excerpt != excerpt and room < MIN_EXCERPT:
        fitted_excerpt = ""
    return _Fitted(title=title, excerpt=fitted_excerpt, footer=footer)


def _footer(meta: str, tags: list[str], read_line: str, budget: int) -> tuple[str, ...]:
    """Provider/date line, hashtags and the optional "Read: <url>" line within ``budget``.

    The provider/date line and the URL line are kept whole or left out; the hashtags take
    what room is left, whole tags only.
    """
    kept = _whole_lines((meta, read_line), budget)
    used = telegram_length("\n".join(kept))
    tag_line = _tag_line(tags, budget - used - (1 if kept else 0))
    lines = (meta if meta in kept else "", tag_line, read_line if read_line in kept else "")
    return tuple(line for line in lines if line)


def _whole_lines(lines: Iterable[str], budget: int) -> tuple[str, ...]:
    """Non-empty lines, in order, while they fit ``budget`` joined by newlines."""
    kept: list[str] = []
    used = -1  # the first line needs no newline before it
    for line in lines:
        cost = telegram_length(line) + 1
        if line and used + cost <= budget:
            kept.append(line)
            used += cost
    return tuple(kept)


def _tag_line(tags: list[str], budget: int) -> str:
    """As many whole hashtags as fit ``budget`` units, in topic order."""
    line = ""
    for tag in tags:
        candidate = f"{line} {tag}" if line else tag
        if telegram_length(candidate) <= budget:
            line = candidate
    return line


def _render_html(fitted: _Fitted) -> str:
    blocks: list[str] = []
    if fitted.title:
        blocks.append(f"<b>{_escape(fitted.title)}</b>")
    if fitted.excerpt:
        blocks.append(_escape(fitted.excerpt))
    if fitted.footer:
        blocks.append(_escape("\n".join(fitted.footer)))
    return "\n\n".join(blocks)


def _escape(text: str) -> str:
    """Escape for Telegram HTML: only &amp; &lt; &gt; are needed in text (quotes stay as is)."""
    return html.escape(text, quote=False)


# --- buttons -------------------------------------------------------------------------------


def _buttons(article: Article) -> tuple[tuple[Button, ...], ...]:
    rows: list[tuple[Button, ...]] = []
    if is_web_url(article.url):
        provider = shorten(article.provider_label.strip(), PROVIDER_LABEL_LIMIT)
        label = f"Read on {provider}" if provider else "Read the article"
        rows.append((Button(label, article.url),))
    rows.extend((button,) for button in _related_buttons(article))
    return tuple(rows)


def _related_buttons(article: Article) -> list[Button]:
    """Up to three buttons for related articles with a web URL other than the article's."""
    buttons: list[Button] = []
    seen = [article.url]
    for related in article.related:
        if len(buttons) == MAX_RELATED_BUTTONS:
            break
        if not is_web_url(related.url) or any(_same_page(related.url, url) for url in seen):
            continue
        seen.append(related.url)
        buttons.append(Button(_related_label(related), related.url))
    return buttons


def _related_label(related: Related) -> str:
    return shorten(related.title.strip(), BUTTON_LABEL_LIMIT) or "Related article"


# --- public entry points -------------------------------------------------------------------


def render_message(article: Article, *, timezone: str = "UTC") -> Message:
    """The Telegram post for ``article``: photo with caption if it has a usable image."""
    image = article.best_image
    photo_url = image.url if image is not None and is_web_url(image.url) else None
    preview_url = article.url if is_web_url(article.url) else ""

    title = article.title.strip()
    excerpt = article.excerpt.strip()
    meta = _meta_line(article, timezone)
    tags = _hashtags(article.topics)

    def fitted(limit: int, *, with_url: bool = False) -> _Fitted:
        read_line = f"Read: {preview_url}" if with_url and preview_url else ""
        footer = _footer(meta, tags, read_line, int(limit * FOOTER_MAX_SHARE))
        return _fit(title, excerpt, footer, limit)

    text_html = _render_html(fitted(TEXT_LIMIT))
    caption_html = _render_html(fitted(CAPTION_LIMIT)) if photo_url else text_html
    plain_limit = CAPTION_LIMIT if photo_url else TEXT_LIMIT
    plain = "\n\n".join(fitted(plain_limit, with_url=True).blocks())
    return Message(
        article_id=article.id,
        photo_url=photo_url,
        html=caption_html,
        text_html=text_html,
        plain=plain,
        buttons=_buttons(article),
        preview_url=preview_url,
    )


def _meta_line(article: Article, timezone: str) -> str:
    provider = shorten(article.provider_label.strip(), PROVIDER_LABEL_LIMIT * 2)
    date = format_date(article.published_at, timezone)
    return f"{provider} · {date}" if provider else date


def format_for_dry_run(message: Message, chat_id: str) -> str:
    """What ``publisher push --dry-run`` prints for one message: method, target, body, buttons."""
    if message.photo_url:
        method, body_name, limit = "sendPhoto", "caption", CAPTION_LIMIT
    else:
        method, body_name, limit = "sendMessage", "text", TEXT_LIMIT
    lines = [f"{method} to {chat_id} ({message.article_id})"]
    if message.photo_url:
        lines.append(f"  photo: {message.photo_url}")
    elif message.preview_url:
        lines.append(f"  link preview: {message.preview_url}")
    lines.append(f"  {body_name} ({visible_length(message.html)}/{limit} UTF-16 units, HTML):")
    lines.extend(f"    | {line}".rstrip() for line in message.html.split("\n"))
    if message.buttons:
        lines.append("  buttons:")
        lines.extend(
            f"    [{button.text}] -> {button.url}" for row in message.buttons for button in row
        )
    return "\n".join(lines)
