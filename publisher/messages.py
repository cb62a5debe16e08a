"""Render an article as a Telegram post. Pure functions: no I/O, no network, no Bot calls.

Telegram counts message lengths *after* parsing entities, in UTF-16 code units: a caption holds
1024 of them, a text message 4096. Every rendering here is built as plain text first, shortened
to fit (never inside a surrogate pair, a combining sequence or an HTML entity), and only then
escaped for ``parse_mode=HTML``. Escaping does not change the visible length, so a plain text
that fits guarantees an HTML text that fits.

The default layout (blocks separated by a blank line, empty blocks left out)::

    <b>Title</b>

    Excerpt, shortened at a word boundary…

    TechCrunch · 6 Oct 2021
    #AI #ComputerVision

is the default template (``templates.DEFAULT_TEMPLATE``), rendered from parts fitted one by
one. An operator's template (``telegram.template``) is rendered whole and measured: too long,
its excerpt is shortened until it fits; a caption that cannot fit even without the excerpt
goes as a text message; a text that cannot fit is a ``RenderError`` (the post fails).
"""

from __future__ import annotations

import functools
import html
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from publisher import telegram_html, templates
from publisher.errors import RenderError
from publisher.models import Article, Related, display_host, normalise_url
from publisher.settings import PostSettings
from publisher.text import as_utc, is_web_url

if TYPE_CHECKING:
    from publisher.config import Config

CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
ELLIPSIS = "…"

# Inline buttons show about one line; longer labels are cut by the client anyway.
BUTTON_LABEL_LIMIT = 40
PROVIDER_LABEL_LIMIT = 32
# A read button of the operator's own (telegram.read_button) may say more than "Read on X".
READ_LABEL_LIMIT = 64
# Telegram refuses an inline keyboard of more than 100 buttons.
MAX_BUTTONS = 100
# Telegram links at most 256 characters of a hashtag.
HASHTAG_LIMIT = 256
# The footer (provider/date, hashtags, URL) takes at most this share of the limit, so the
# title and the excerpt always keep at least half of it.
FOOTER_MAX_SHARE = 0.5
# An excerpt cut shorter than this says nothing useful: leave it out instead.
MIN_EXCERPT = 24

DEFAULT_SETTINGS = PostSettings()
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
class CallbackButton:
    """A button that sends ``data`` back to the bot (a callback query) when tapped: the
    followers' topic keyboard. Channel posts only ever have URL buttons."""

    text: str
    data: str  # at most 64 bytes (Telegram's limit)


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
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


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


def format_date(moment: datetime, timezone: str = "UTC", language: str = "en",
                date_format: str = "medium") -> str:
    """'6 Oct 2021' in ``timezone`` by default; Babel's rendering for other languages and
    formats (``templates.format_date``), whatever the process locale."""
    return templates.format_date(moment, timezone, language, date_format)


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


# --- buttons -------------------------------------------------------------------------------


def _related_items(article: Article) -> Iterator[Related]:
    """Related articles with a web URL, each page once and never the article's own."""
    seen = [article.url]
    for related in article.related:
        if not is_web_url(related.url) or any(_same_page(related.url, url) for url in seen):
            continue
        seen.append(related.url)
        yield related


def _related_buttons(article: Article, count: int, fallback: str) -> list[Button]:
    """Up to ``count`` buttons for related articles (see ``_related_items``)."""
    items = itertools.islice(_related_items(article), count)
    return [Button(shorten(item.title.strip(), BUTTON_LABEL_LIMIT) or fallback, item.url)
            for item in items]


def _related_provider(related: Related) -> str:
    provider = related.provider
    if provider is not None and (provider.name or provider.domain):
        return provider.name or display_host(provider.domain)
    return display_host(urlsplit(related.url).hostname or "")


# --- rendering -----------------------------------------------------------------------------


class _Rendering:
    """One article in one destination's shape: its parts, its template variables, and the
    renderings that fit each limit."""

    def __init__(self, article: Article, shape: templates.Shape, timezone: str) -> None:
        settings = shape.settings
        self.article = article
        self.shape = shape
        image = article.best_image
        self.photo_url = image.url if image is not None and is_web_url(image.url) else None
        self.url = article.url if is_web_url(article.url) else ""
        self.title = article.title.strip()
        self.excerpt = article.excerpt.strip()
        self.provider = article.provider_label.strip()
        self.date = format_date(article.published_at, timezone, settings.language,
                                settings.date_format)
        self.published = as_utc(article.published_at).astimezone(ZoneInfo(timezone))
        self.tags = _hashtags(article.topics) if settings.hashtags else []
        self.related = list(_related_items(article))

    def variables(self, *, for_html: bool) -> dict[str, Any]:
        """The template's variables; links made safe for an attribute in HTML."""
        link: Callable[[str], str] = templates.attribute_safe if for_html else str
        return {
            "title": self.title,
            "excerpt": self.excerpt,
            "url": link(self.url),
            "provider": self.provider,
            "date": self.date,
            "published": self.published,
            "topics": list(self.article.topics),
            "hashtags": " ".join(self.tags),
            "quality": self.article.quality,
            "heat": self.article.heat,
            "image": link(self.photo_url) if self.photo_url else None,
            "related": [{"title": item.title.strip(), "url": link(item.url),
                         "provider": _related_provider(item)} for item in self.related],
        }

    # -- the body ----------------------------------------------------------------------------

    def html(self, limit: int) -> str | None:
        """The caption or text within ``limit`` UTF-16 units once parsed; None when even
        the rendering without the excerpt is longer."""
        variables = self.variables(for_html=True)
        if self.shape.builtin:
            variables |= self._fitted_variables(limit)
        body = self._shortened_to_fit(variables, limit)
        if body is not None and not self.shape.builtin:  # the built-in one cannot go wrong
            self._check(body)
        return body

    def _fitted_variables(self, limit: int) -> dict[str, Any]:
        """The default layout's parts, each fitted as before templates existed: the footer
        (provider and date, hashtags) within half the limit, then the title, the excerpt."""
        meta = self._meta_line()
        fitted = self.fitted(limit)
        kept_meta = meta in fitted.footer
        tag_line = next((line for line in fitted.footer if line != meta), "")
        return {
            "title": fitted.title,
            "excerpt": fitted.excerpt,
            "provider": self._short_provider() if kept_meta else "",
            "date": self.date if kept_meta else "",
            "hashtags": tag_line,
        }

    def fitted(self, limit: int, *, with_url: bool = False) -> _Fitted:
        read_line = f"Read: {self.url}" if with_url and self.url else ""
        footer = _footer(self._meta_line(), self.tags, read_line, int(limit * FOOTER_MAX_SHARE))
        return _fit(self.title, self.excerpt, footer, limit)

    def _short_provider(self) -> str:
        return shorten(self.provider, PROVIDER_LABEL_LIMIT * 2)

    def _meta_line(self) -> str:
        provider = self._short_provider()
        return f"{provider} · {self.date}" if provider else self.date

    def _shortened_to_fit(self, variables: dict[str, Any], limit: int) -> str | None:
        """The rendering, its excerpt shortened at a word boundary as much as it takes."""
        excerpt = str(variables["excerpt"])

        def rendered(text: str) -> str:
            return self._render({**variables, "excerpt": text})

        whole = rendered(excerpt)
        if visible_length(whole) <= limit:
            return whole
        best = rendered("")
        if visible_length(best) > limit:
            return None
        low, high = MIN_EXCERPT, telegram_length(excerpt) - 1  # the excerpt's budget, in units
        while low <= high:
            middle = (low + high) // 2
            candidate = rendered(shorten(excerpt, middle))
            if visible_length(candidate) <= limit:
                best, low = candidate, middle + 1
            else:
                high = middle - 1
        return best

    def _render(self, variables: dict[str, Any]) -> str:
        # Telegram drops the whitespace around a message: so is it measured.
        return templates.render(self.shape.body, variables, self.shape.body_key).strip()

    def _check(self, body: str) -> None:
        """Nothing Telegram would refuse leaves: a template's tags may only be unbalanced in
        a branch that the sample articles at start did not take."""
        key = self.shape.body_key
        problem = telegram_html.first_problem(body)
        if problem is not None:
            raise RenderError(f"{key}: renders HTML Telegram refuses: {problem}")
        if not html.unescape(_TAG_RE.sub("", body)).strip():
            raise RenderError(f"{key}: renders an empty message for this article")

    def plain(self, body: str, limit: int) -> str:
        """The plain-text fallback within ``limit``, ending with the article's link."""
        if self.shape.builtin:
            return "\n\n".join(self.fitted(limit, with_url=True).blocks())
        read_line = f"Read: {self.url}" if self.url else ""
        room = limit - telegram_length(read_line) - (2 if read_line else 0)
        text = shorten(html.unescape(_TAG_RE.sub("", body)).strip(), room)
        return "\n\n".join(part for part in (text, read_line) if part)

    # -- the buttons -------------------------------------------------------------------------

    def buttons(self) -> tuple[tuple[Button, ...], ...]:
        rows: list[tuple[Button, ...]] = []
        if self.url and self.shape.read_button is not None:
            rows.append((Button(self._read_label(), self.url),))
        count = min(self.shape.settings.related_buttons, MAX_BUTTONS - len(rows))
        related = _related_buttons(self.article, count, self.shape.related_fallback)
        rows.extend((button,) for button in related)
        return tuple(rows)

    def _read_label(self) -> str:
        shape = self.shape
        provider = shorten(self.provider, PROVIDER_LABEL_LIMIT)
        if not provider and shape.settings.read_button == templates.DEFAULT_READ_BUTTON:
            return shape.read_fallback
        assert shape.read_button is not None
        variables = self.variables(for_html=False) | {"provider": provider}
        label = " ".join(templates.render(shape.read_button, variables, shape.read_key).split())
        return shorten(label, READ_LABEL_LIMIT) or shape.read_fallback


# --- public entry points -------------------------------------------------------------------


def render_message(article: Article, settings: PostSettings | None = None, *,
                   timezone: str = "UTC", key: str = "telegram") -> Message:
    """The Telegram post for ``article`` in a destination's shape (``settings``; by default
    ``[telegram]``'s defaults): a photo with a caption if it has a usable image and the
    caption fits, else a text message. ``key``: where the settings are written, for errors.

    ``RenderError`` when the template fails on the article or cannot fit even a text message.
    """
    settings = settings or DEFAULT_SETTINGS
    rendering = _Rendering(article, templates.shape_for(settings, key), timezone)
    text_html = rendering.html(TEXT_LIMIT)
    if text_html is None:
        raise RenderError(f"{rendering.shape.body_key}: the message is longer than "
                          f"{TEXT_LIMIT} UTF-16 units even without the excerpt")
    photo_url = rendering.photo_url
    caption_html = rendering.html(CAPTION_LIMIT) if photo_url else text_html
    if caption_html is None:  # too long for a caption: the post goes as text
        photo_url, caption_html = None, text_html
    plain_limit = CAPTION_LIMIT if photo_url else TEXT_LIMIT
    return Message(
        article_id=article.id,
        photo_url=photo_url,
        html=caption_html,
        text_html=text_html,
        plain=rendering.plain(caption_html, plain_limit),
        buttons=rendering.buttons(),
        preview_url=rendering.url if settings.link_preview else "",
        silent=settings.silent,
    )


def render_for(article: Article, config: Config, destination: str) -> Message:
    """The post of ``article`` for ``destination`` as configured (``@channel``): its own
    settings (``Config.settings_for``), errors naming the keys where they are written."""
    return render_message(article, config.settings_for(destination),
                          timezone=config.telegram.timezone,
                          key=templates.key_prefix(config, destination))


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
    if message.silent:
        lines.append("  silent: without a notification")
    lines.append(f"  {body_name} ({visible_length(message.html)}/{limit} UTF-16 units, HTML):")
    lines.extend(f"    | {line}".rstrip() for line in message.html.split("\n"))
    if message.buttons:
        lines.append("  buttons:")
        lines.extend(
            f"    [{button.text}] -> {button.url}" for row in message.buttons for button in row
        )
    return "\n".join(lines)
