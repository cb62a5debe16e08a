"""A digest's text: the new articles of a destination in one message (Telegram HTML).

Rendered by ``digest_template`` (inline) or ``digest_template_file``, compiled and checked
as a post's template is (``templates.compile_template``: sandboxed, autoescaped, Telegram's
tags only), or by ``DEFAULT_DIGEST_TEMPLATE``. Its variables: ``items`` (each with
``title``, ``url``, ``provider``, ``quality``, ``heat``, ``published``), ``count`` (every
article of the digest), ``more`` (those not listed), ``date`` (the digest's window, as a
post's date: Babel, in the destination's ``language`` and ``date_format``), and the default
texts in that language (``templates.DIGEST_TEXTS``): ``header`` ("3 new articles", "3 neue
Artikel") and ``and_more`` ("and 7 more", "" when every item is listed). The
items are best first (quality, then heat), at most ``digest_max_items``; when the text would
not fit Telegram's 4096 UTF-16 units, items are dropped from the end and counted in ``more``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import jinja2

from publisher import telegram_html
from publisher.errors import ConfigError, RenderError
from publisher.files import FileTooLarge, read_regular_file
from publisher.messages import Message, shorten, visible_length
from publisher.models import Article
from publisher.settings import PostSettings
from publisher.templates import (
    TEMPLATE_FILE_MAX_BYTES,
    compile_template,
    digest_texts,
    format_date,
    render,
)

TEXT_LIMIT = 4096  # a text message, in UTF-16 units after entity parsing
TITLE_LIMIT = 300  # one item's title at most: a long one must not crowd the others out
DEFAULT_DIGEST_TEMPLATE = """\
<b>{{ header }}</b>
{%- for item in items %}
• <a href="{{ item.url }}">{{ item.title }}</a>
{%- if item.provider %} · {{ item.provider }}{% endif %}
{%- endfor %}
{%- if more %}
{{ and_more }}
{%- endif %}"""
DIGEST_VARIABLES = frozenset({"items", "count", "more", "date", "header", "and_more"})
_ANY_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class DigestItem:
    title: str
    url: str
    provider: str
    quality: int
    heat: int
    published: datetime


@dataclass(frozen=True)
class DigestText:
    html: str
    listed: int  # items shown; the rest of ``count`` is "and N more"
    count: int


def best_first(articles: Sequence[Article]) -> list[Article]:
    """Quality, then heat, then the newest first; the id breaks ties, so orders are stable."""
    ordered = sorted(articles, key=lambda a: a.id)
    return sorted(ordered, key=lambda a: (a.quality, a.heat, a.published_at), reverse=True)


def render_digest(articles: Sequence[Article], settings: PostSettings, timezone: str,
                  at: datetime, prefix: str = "telegram") -> DigestText:
    """The digest of ``articles`` (at least one) for a destination with ``settings``; a
    ``RenderError`` when its template fails on them, or its text cannot fit even empty."""
    template = digest_template(settings, prefix)
    key = f"{prefix}.digest_template"
    ordered = best_first(articles)
    listed = min(len(ordered), settings.digest_max_items)
    date = format_date(at, timezone, settings.language, settings.date_format)
    while True:
        items = [_item(article) for article in ordered[:listed]]
        more = len(ordered) - listed
        header, and_more = digest_texts(settings.language, len(ordered), more)
        text = render(template, {"items": items, "count": len(ordered), "more": more,
                                 "date": date, "header": header, "and_more": and_more},
                      key).strip()
        problem = telegram_html.first_problem(text)
        if problem:
            raise RenderError(f"{key}: its rendering is not Telegram's HTML: {problem}")
        if visible_length(text) <= TEXT_LIMIT:
            return DigestText(text, listed, len(ordered))
        if listed == 0:
            raise RenderError(f"{key}: the digest is longer than {TEXT_LIMIT} even with no "
                              "item listed")
        listed -= 1


def _item(article: Article) -> DigestItem:
    return DigestItem(shorten(article.title, TITLE_LIMIT), article.url,
                      article.provider_label, article.quality, article.heat,
                      article.published_at)


def digest_template(settings: PostSettings, prefix: str = "telegram") -> jinja2.Template:
    """The digest template of these settings, compiled once (``templates.compile_template``:
    the checks of a post's template, over the digest's variables): the file's, else the
    inline one, else the default."""
    source, key = _digest_source(settings, prefix)
    return compile_template(source or DEFAULT_DIGEST_TEMPLATE, key, variables=DIGEST_VARIABLES)


def _digest_source(settings: PostSettings, prefix: str) -> tuple[str, str]:
    """The template's text ("" for the default) and the key that names it in errors."""
    path = settings.digest_template_file
    if settings.digest_template and path is not None:
        raise ConfigError(f"{prefix}.digest_template and {prefix}.digest_template_file: set "
                          "one of them, not both")
    if path is None:
        return settings.digest_template, f"{prefix}.digest_template"
    key = f"{prefix}.digest_template_file ({path})"
    try:
        data = read_regular_file(path, TEMPLATE_FILE_MAX_BYTES)
        text = data.decode("utf-8")
    except FileTooLarge:
        raise ConfigError(f"{key}: larger than {TEMPLATE_FILE_MAX_BYTES:,} bytes") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(f"{key}: the file is empty")
    return text, key


def check_digest_template(settings: PostSettings, prefix: str, timezone: str = "UTC") -> None:
    """Compile the template of ``settings`` and render it once for sample items: one that
    does not parse, names an undefined variable or a tag Telegram refuses, or fails on the
    samples, is a ``ConfigError`` naming its key and line."""
    sample = Article("sample", "Title", "https://example.com/",
                     datetime(2025, 1, 1, tzinfo=UTC), quality=1, heat=1)
    try:
        render_digest([sample, sample, sample], replace(settings, digest_max_items=2),
                      timezone, datetime(2025, 1, 1, 8, tzinfo=UTC), prefix)
    except RenderError as exc:
        raise ConfigError(str(exc)) from None


def digest_message(window: str, articles: Sequence[Article], settings: PostSettings,
                   timezone: str) -> Message:
    """The digest of window ``window`` (ISO 8601) as a ``Message``, for ``push --dry-run``."""
    text = render_digest(articles, settings, timezone, datetime.fromisoformat(window))
    plain = html.unescape(_ANY_TAG.sub("", text.html))
    return Message(f"digest {window}", None, text.html, text.html, plain, (), "")
