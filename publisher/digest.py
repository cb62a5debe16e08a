"""A digest's text: the new articles of a destination in one message (Telegram HTML).

Rendered by ``digest_template`` (inline) or ``digest_template_file``, a Jinja2 template with
autoescape on, or by ``DEFAULT_DIGEST_TEMPLATE``. Its variables: ``items`` (each with
``title``, ``url``, ``provider``, ``quality``, ``heat``, ``published``), ``count`` (every
article of the digest), ``more`` (those not listed) and ``date`` (the digest's, local). The
items are best first (quality, then heat), at most ``digest_max_items``; when the text would
not fit Telegram's 4096 UTF-16 units, items are dropped from the end and counted in ``more``.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from publisher.errors import ConfigError
from publisher.messages import Message, shorten, visible_length
from publisher.models import Article
from publisher.settings import PostSettings

TEXT_LIMIT = 4096  # a text message, in UTF-16 units after entity parsing
TITLE_LIMIT = 300  # one item's title at most: a long one must not crowd the others out
DEFAULT_DIGEST_TEMPLATE = """\
<b>{{ count }} new {{ "article" if count == 1 else "articles" }}</b>
{%- for item in items %}
• <a href="{{ item.url }}">{{ item.title }}</a>
{%- if item.provider %} · {{ item.provider }}{% endif %}
{%- endfor %}
{%- if more %}
and {{ more }} more
{%- endif %}"""
# The tags Telegram's HTML mode accepts (https://core.telegram.org/bots/api#html-style).
ALLOWED_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a",
                          "code", "pre", "span", "tg-spoiler", "tg-emoji", "blockquote"})
_TAG = re.compile(r"</?\s*([A-Za-z][\w-]*)")
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
                  at: datetime) -> DigestText:
    """The digest of ``articles`` (at least one) for a destination with ``settings``."""
    template = digest_template(settings.digest_template, settings.digest_template_file)
    ordered = best_first(articles)
    listed = min(len(ordered), settings.digest_max_items)
    date = at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")
    while True:
        items = [_item(article) for article in ordered[:listed]]
        html = template.render(items=items, count=len(ordered), more=len(ordered) - listed,
                               date=date).strip()
        if visible_length(html) <= TEXT_LIMIT or listed == 0:
            return DigestText(html, listed, len(ordered))
        listed -= 1


def _item(article: Article) -> DigestItem:
    return DigestItem(shorten(article.title, TITLE_LIMIT), article.url,
                      article.provider_label, article.quality, article.heat,
                      article.published_at)


@functools.lru_cache(maxsize=64)
def digest_template(inline: str, file: Path | None) -> jinja2.Template:
    """The template of these settings, compiled once: the file's, else ``inline``'s, else
    the default. A ``ConfigError`` when it cannot be read or does not parse."""
    key = "digest_template_file" if file is not None else "digest_template"
    source = inline or DEFAULT_DIGEST_TEMPLATE
    if file is not None:
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"telegram.{key}: cannot read {file}: {exc}") from None
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"telegram.{key}: line {exc.lineno}: {exc.message}") from None


@functools.cache
def _environment() -> SandboxedEnvironment:
    # Sandboxed: a template is configuration, but it is still not code to run.
    return SandboxedEnvironment(autoescape=True, undefined=jinja2.StrictUndefined,
                                keep_trailing_newline=False)


def check_digest_template(settings: PostSettings, prefix: str) -> None:
    """Render the template of ``settings`` once with sample items: a template that does not
    parse, names an undefined variable or a tag Telegram refuses is a ``ConfigError``."""
    key = f"{prefix}.digest_template_file" if settings.digest_template_file else \
        f"{prefix}.digest_template"
    try:
        template = digest_template(settings.digest_template, settings.digest_template_file)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("telegram.", f"{prefix}.", 1)) from None
    sample = DigestItem("Title", "https://example.com/", "Provider", 1, 1,
                        datetime(2025, 1, 1).astimezone())
    try:
        html = template.render(items=[sample, sample], count=3, more=1, date="2025-01-01 08:00")
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    source = settings.digest_template or DEFAULT_DIGEST_TEMPLATE
    if settings.digest_template_file is not None:
        source = settings.digest_template_file.read_text(encoding="utf-8")
    for text, where in ((source, ""), (html, " of its output")):
        for match in _TAG.finditer(text):
            if match.group(1).lower() not in ALLOWED_TAGS:
                line = text.count("\n", 0, match.start()) + 1
                raise ConfigError(f"{key}: line {line}{where}: unsupported tag "
                                  f"<{match.group(1)}>")


def digest_message(window: str, articles: Sequence[Article], settings: PostSettings,
                   timezone: str) -> Message:
    """The digest of window ``window`` (ISO 8601) as a ``Message``, for ``push --dry-run``."""
    text = render_digest(articles, settings, timezone, datetime.fromisoformat(window))
    plain = html.unescape(_ANY_TAG.sub("", text.html))
    return Message(f"digest {window}", None, text.html, text.html, plain, (), "")
