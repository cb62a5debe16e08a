"""Message templates: Jinja2 in Telegram's HTML mode, Babel dates, the default texts.

A template (``telegram.template`` or ``template_file``, per destination too) is compiled in a
sandboxed environment with autoescape (every variable is escaped for Telegram HTML; ``|safe``
and ``{% autoescape false %}`` are refused) and ``StrictUndefined`` (a misspelt variable is an
error, not an empty string). Its own tags are checked against Telegram's HTML subset before
it is used, so a bad template is a ``ConfigError`` naming its key and line at start, never a
400 at send time. ``messages.render_message`` fits the rendering into Telegram's limits.

``compile_template(source, key, variables=...)`` is the reusable entry point (the digest's
template uses it with its own variables).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import os
import traceback
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from publisher import telegram_html
from publisher.errors import ConfigError, RenderError
from publisher.files import FileTooLarge, read_regular_file
from publisher.settings import SHAPE_SETTINGS, PostSettings, has_default_shape
from publisher.text import as_utc

if TYPE_CHECKING:
    from publisher.config import Config

ARTICLE_VARIABLES = frozenset({
    "title", "excerpt", "url", "provider", "date", "published", "topics", "hashtags",
    "quality", "heat", "image", "related",
})
# Today's message, as a template: the title in bold, the excerpt, "provider · date" and the
# hashtags, blocks apart by a blank line. The built-in layout fits each part before it is
# rendered (messages.py), so a long title or many topics never crowd out the rest.
DEFAULT_TEMPLATE = (
    "{% if title %}<b>{{ title }}</b>\n\n{% endif %}"
    "{% if excerpt %}{{ excerpt }}\n\n{% endif %}"
    "{% if provider %}{{ provider }} · {% endif %}{{ date }}"
    "{% if hashtags %}\n{{ hashtags }}{% endif %}"
)
DEFAULT_READ_BUTTON = PostSettings().read_button
TEMPLATE_FILE_MAX_BYTES = 64 * 1024
DATE_FORMAT_NAMES = ("short", "medium", "long", "full")
# Babel's "medium" English date is "Oct 6, 2021"; publisher's posts have always said
# "6 Oct 2021". Other languages get Babel's own formats.
_LEGACY_PATTERNS = {("en", "medium"): "d MMM y"}
# Filters that would let a variable through unescaped, or make tags of it.
_UNSAFE_FILTERS = ("safe", "urlize", "xmlattr")

# The default texts of the buttons, by language (a locale's language: "de_AT" -> "de").
# "read_on" is a template, like telegram.read_button; the others are plain labels.
CATALOGUE: dict[str, dict[str, str]] = {
    "en": {"read_on": DEFAULT_READ_BUTTON, "read": "Read the article",
           "related": "Related article"},
    "de": {"read_on": "Weiterlesen bei {{ provider }}", "read": "Artikel lesen",
           "related": "Verwandter Artikel"},
    "fr": {"read_on": "Lire sur {{ provider }}", "read": "Lire l’article",
           "related": "Article lié"},
    "es": {"read_on": "Leer en {{ provider }}", "read": "Leer el artículo",
           "related": "Artículo relacionado"},
    "it": {"read_on": "Leggi su {{ provider }}", "read": "Leggi l’articolo",
           "related": "Articolo correlato"},
    "ru": {"read_on": "Читать на {{ provider }}", "read": "Читать статью",
           "related": "Похожая статья"},
    "fa": {"read_on": "خواندن در {{ provider }}", "read": "خواندن مقاله",
           "related": "مقاله مرتبط"},
    "ja": {"read_on": "{{ provider }}で読む", "read": "記事を読む", "related": "関連記事"},
}

# A digest's default texts by language: its header by Babel's plural category of the count
# ("one", "few", "many", "other"; "other" when the category has none), and "and N more".
DIGEST_TEXTS: dict[str, dict[str, str]] = {
    "en": {"one": "{n} new article", "other": "{n} new articles", "more": "and {n} more"},
    "de": {"one": "{n} neuer Artikel", "other": "{n} neue Artikel", "more": "und {n} weitere"},
    "fr": {"one": "{n} nouvel article", "other": "{n} nouveaux articles",
           "more": "et {n} de plus"},
    "es": {"one": "{n} artículo nuevo", "other": "{n} artículos nuevos", "more": "y {n} más"},
    "it": {"one": "{n} nuovo articolo", "other": "{n} nuovi articoli", "more": "e altri {n}"},
    "ru": {"one": "{n} новая статья", "few": "{n} новые статьи", "many": "{n} новых статей",
           "other": "{n} новой статьи", "more": "и ещё {n}"},
    "fa": {"other": "{n} مقالهٔ تازه", "more": "و {n} مورد دیگر"},
    "ja": {"other": "新着記事 {n} 件", "more": "ほか {n} 件"},
}


# --- the environment -----------------------------------------------------------------------


def _escape_value(value: Any) -> Any:
    """What ``{{ value }}`` prints: None as nothing, text escaped for Telegram (``&<>`` only:
    quotes stay as written, as in every post so far)."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=False))


def attribute_safe(url: str) -> Markup:
    """A link as a template variable: escaped for an attribute too (``href="{{ url }}"``)."""
    return Markup(html.escape(url, quote=True))


# A template is rendered for every post: "x" * 10**9 must not take the memory.
MAX_REPEAT = 10_000
MAX_EXPONENT = 64


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with repetition and powers bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent above {MAX_EXPONENT}")
        if operator == "*":
            counts = [side for side in (left, right) if isinstance(side, int)]
            sized = any(isinstance(side, str | list | tuple) for side in (left, right))
            if sized and counts and counts[0] > MAX_REPEAT:
                raise SecurityError(f"a repetition above {MAX_REPEAT:,} times")
        return super().call_binop(context, operator, left, right)


@functools.cache
def _environment(for_html: bool) -> ImmutableSandboxedEnvironment:
    environment = _Sandbox(
        autoescape=for_html,
        undefined=jinja2.StrictUndefined,
        finalize=_escape_value if for_html else _plain_value,
        keep_trailing_newline=False,
    )
    for name in _UNSAFE_FILTERS:
        environment.filters.pop(name, None)
    return environment


def _plain_value(value: Any) -> Any:
    return "" if value is None else value


# --- compiling -----------------------------------------------------------------------------


def compile_template(source: str, key: str, *,
                     variables: Collection[str] = ARTICLE_VARIABLES,
                     for_html: bool = True) -> jinja2.Template:
    """A template of Telegram HTML (``for_html``, else of plain text such as a button label),
    or a ``ConfigError`` "``key``: line N: what is wrong": a syntax error, a variable not
    in ``variables``, autoescape turned off, a tag or character Telegram refuses."""
    return _compiled(source, key, frozenset(variables), for_html)


@functools.lru_cache(maxsize=256)
def _compiled(source: str, key: str, variables: frozenset[str],
              for_html: bool) -> jinja2.Template:
    environment = _environment(for_html)
    try:
        tree = environment.parse(source)
        _check_tree(tree, key, variables)
        if for_html:
            _check_static_html(environment, source, key)
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{key}: line {exc.lineno}: {exc.message}") from None


def _check_tree(tree: nodes.Template, key: str, variables: frozenset[str]) -> None:
    for node in tree.find_all(nodes.EvalContextModifier):
        raise ConfigError(f"{key}: line {node.lineno}: autoescape cannot be turned off")
    from jinja2 import meta

    unknown = meta.find_undeclared_variables(tree) - variables
    if unknown:
        names = [node for node in tree.find_all(nodes.Name) if node.name in unknown]
        first = min(names, key=lambda node: node.lineno)
        known = ", ".join(sorted(variables))
        raise ConfigError(f"{key}: line {first.lineno}: undefined variable {first.name!r} "
                          f"(known: {known})")


def _check_static_html(environment: jinja2.Environment, source: str, key: str) -> None:
    """The template's own text, each expression standing for a placeholder word, checked tag
    by tag (tags may open and close in different branches: their nesting is checked on each
    rendering)."""
    pieces: list[tuple[int, int, str]] = []  # (offset in the text, line, text)
    offset = 0
    for line, kind, value in environment.lex(source):
        text = value if kind == "data" else (
            telegram_html.PLACEHOLDER if kind == "variable_begin" else "")
        if text:
            pieces.append((offset, line, text))
            offset += len(text)
    static = "".join(text for _, _, text in pieces)
    for problem in telegram_html.problems(static, static=True):
        raise ConfigError(f"{key}: line {_line_at(pieces, problem.offset)}: {problem.message}")


def _line_at(pieces: list[tuple[int, int, str]], offset: int) -> int:
    for start, line, text in reversed(pieces):
        if start <= offset:
            return line + text[: offset - start].count("\n")
    return 1


# --- rendering -----------------------------------------------------------------------------


def render(template: jinja2.Template, context: Mapping[str, Any], key: str) -> str:
    """The template rendered; what goes wrong in it is a ``RenderError`` naming its line."""
    try:
        return template.render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"{key}: {_template_line(exc)}{exc.message or exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise RenderError(f"{key}: {_template_line(exc)}{type(exc).__name__}: {exc}") from None


def _template_line(exc: BaseException) -> str:
    """'line N: ' of the template's frame in the traceback (Jinja puts it there), or ''."""
    line = None
    for frame, number in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = number
    return f"line {line}: " if line is not None else ""


# --- dates ---------------------------------------------------------------------------------


def format_date(moment: datetime, timezone: str = "UTC", language: str = "en",
                date_format: str = "medium") -> str:
    """``moment`` in ``timezone`` as ``language`` writes it, with Babel: a format name
    (short, medium, long, full) or a CLDR pattern ("d MMMM y, HH:mm")."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigError(f"unknown timezone {timezone!r}") from error
    local = as_utc(moment).astimezone(zone)
    pattern = _LEGACY_PATTERNS.get((language, date_format), date_format)
    if pattern in DATE_FORMAT_NAMES:
        return _babel_date(local.date(), pattern, language)
    return _babel_datetime(local.replace(tzinfo=None), local.fold, timezone, pattern, language)


# Babel takes tens of microseconds a date; the articles of a push share a few days.
@functools.lru_cache(maxsize=1024)
def _babel_date(day: date, format_name: str, language: str) -> str:
    from babel import dates

    return dates.format_date(day, format_name, locale=language)


@functools.lru_cache(maxsize=1024)
def _babel_datetime(local: datetime, fold: int, timezone: str, pattern: str,
                    language: str) -> str:
    """``local``: the wall-clock time in ``timezone``, naive, and its ``fold`` (aware
    datetimes of different zones compare equal, and would share a cache entry)."""
    from babel import dates

    zone = ZoneInfo(timezone)
    moment = local.replace(tzinfo=zone, fold=fold)
    return dates.format_datetime(moment, pattern, tzinfo=zone, locale=language)


def check_language(language: str, key: str) -> None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(language)
    except (UnknownLocaleError, ValueError, TypeError):
        raise ConfigError(f"{key}: unknown language {language!r} (a locale such as "
                          "'en', 'de', 'fa' or 'pt_BR')") from None


def default_text(language: str, name: str) -> str:
    """A default text ("read_on", "read", "related") in ``language``, else in English."""
    base = language.replace("-", "_").split("_", 1)[0].lower()
    return CATALOGUE.get(base, CATALOGUE["en"])[name]


def digest_texts(language: str, count: int, more: int) -> tuple[str, str]:
    """A digest's default header ("3 new articles") and "and 7 more" ("" for none) in
    ``language``, else in English; the plural as Babel's rules for the language say."""
    from babel import Locale, UnknownLocaleError

    base = language.replace("-", "_").split("_", 1)[0].lower()
    texts = DIGEST_TEXTS.get(base, DIGEST_TEXTS["en"])
    try:
        category = Locale.parse(base if base in DIGEST_TEXTS else "en").plural_form(count)
    except (UnknownLocaleError, ValueError):
        category = "other"
    header = texts.get(category, texts["other"]).format(n=count)
    return header, texts["more"].format(n=more) if more else ""


# --- one destination's shape ---------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The compiled message settings of a destination (``PostSettings``)."""

    settings: PostSettings
    body: jinja2.Template
    body_key: str  # the config key of the template, for errors
    builtin: bool  # the default template: today's layout, fitted part by part
    read_button: jinja2.Template | None  # None: no read button
    read_key: str
    read_fallback: str  # the label when the read button renders empty
    related_fallback: str  # the label of a related article without a title


def shape_for(settings: PostSettings, prefix: str = "telegram") -> Shape:
    """The compiled shape of ``settings``; keys in errors start with ``prefix``."""
    file_stamp = _stamp(settings.template_file)
    return _shape(settings, prefix, file_stamp)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """Changes when the template file does: a shape is compiled again after an edit."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=64)
def _shape(settings: PostSettings, prefix: str, file_stamp: object) -> Shape:
    source, body_key = template_source(settings, prefix)
    read_source = settings.read_button
    if read_source == DEFAULT_READ_BUTTON:
        read_source = default_text(settings.language, "read_on")
    read_key = f"{prefix}.read_button"
    return Shape(
        settings=settings,
        body=compile_template(source or DEFAULT_TEMPLATE, body_key),
        body_key=body_key,
        builtin=not source,
        read_button=compile_template(read_source, read_key, for_html=False)
        if read_source.strip() else None,
        read_key=read_key,
        read_fallback=default_text(settings.language, "read"),
        related_fallback=default_text(settings.language, "related"),
    )


def template_source(settings: PostSettings, prefix: str) -> tuple[str, str]:
    """The template's text ("" for the default) and the key that names it in errors."""
    if settings.template and settings.template_file is not None:
        raise ConfigError(f"{prefix}.template and {prefix}.template_file: set one of them, "
                          "not both")
    if settings.template_file is None:
        return settings.template, f"{prefix}.template"
    path = settings.template_file
    key = f"{prefix}.template_file ({path})"
    try:
        data = read_regular_file(path, TEMPLATE_FILE_MAX_BYTES)
    except FileTooLarge:
        raise ConfigError(f"{key}: larger than {TEMPLATE_FILE_MAX_BYTES:,} bytes") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(f"{key}: the file is empty")
    return text, key


# --- checking a configuration --------------------------------------------------------------

def key_prefix(config: Config, destination: str) -> str:
    """Where a destination's message settings are written: its own table when it overrides
    one of them, else ``[telegram]``."""
    own = config.telegram.chats.get(destination, {})
    if any(name in own for name in SHAPE_SETTINGS):
        return f'telegram.chats."{destination}"'
    return "telegram"


def check_config(config: Config) -> None:
    """Every destination's template, read button, language and date format, rendered for
    sample articles: a ``ConfigError`` at start rather than a failed post."""
    check_settings(config.settings_for(""), "telegram", config.telegram.timezone)
    for destination in config.telegram.chats:
        prefix = key_prefix(config, destination)
        if prefix != "telegram":
            check_settings(config.settings_for(destination), prefix, config.telegram.timezone)


def check_settings(settings: PostSettings, prefix: str, timezone: str) -> None:
    if has_default_shape(settings):
        return  # the built-in shape, proven by the tests
    check_language(settings.language, f"{prefix}.language")
    try:
        format_date(datetime(2021, 10, 6, 11, 10, tzinfo=UTC), timezone, settings.language,
                    settings.date_format)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{prefix}.date_format: {settings.date_format!r} is not a date "
                          f"format (short, medium, long, full or a pattern): {exc}") from None
    from publisher.messages import render_message

    for article in sample_articles():
        try:
            render_message(article, settings, timezone=timezone, key=prefix)
        except RenderError as exc:
            raise ConfigError(str(exc)) from None


@functools.cache
def sample_articles() -> tuple[Any, ...]:
    """A full article and a bare one: a template is rendered for both at start, so that each
    branch of ``{% if image %}`` or ``{% for item in related %}`` is tried."""
    from publisher.models import Article, Image, Provider, Related

    full = Article(
        id="urn:uuid:00000000-0000-0000-0000-000000000000",
        title="A sample title",
        url="https://example.com/sample",
        published_at=datetime(2021, 10, 6, 11, 10, tzinfo=UTC),
        excerpt="A sample excerpt, a sentence or two long, as articles have.",
        provider=Provider("Example News", "example.com"),
        topics=("AI", "Computer Vision"),
        images=(Image("https://example.com/sample.jpg", 1200, 800),),
        related=(Related("A related story", "https://example.org/related",
                         provider=Provider("Other News")),),
        quality=80,
        heat=5,
        published=True,
    )
    bare = dataclasses.replace(full, excerpt="", provider=Provider(""), topics=(), images=(),
                               related=())
    return full, bare
