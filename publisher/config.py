"""Configuration: defaults, then the TOML file, then the environment, then flags.

Relative paths in the file are taken relative to the file's folder; without a file, relative
to the current directory. An unknown section or key is an error that names it.

Environment variables: ``PUBLISHER_<SECTION>_<KEY>`` (e.g. ``PUBLISHER_FEEDS_DIR``), plus
``TELEGRAM_BOT_TOKEN`` for the token, which never lives in the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from publisher.db import redact_url
from publisher.errors import ConfigError
from publisher.files import read_regular_file

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
TOKEN_FILE_MAX_BYTES = 64 * 1024  # a token is about 46 characters
OFFICIAL_API_BASE_URL = "https://api.telegram.org/bot"


@dataclass(frozen=True)
class ArticlesConfig:
    dir: Path = Path("articles")
    max_file_bytes: int = 1024 * 1024
    # Per article: more topics (each one a feed the article is written into) or related
    # items are left out, and the file is reported with a warning.
    max_topics: int = 20
    max_related: int = 10
    # An emptied folder (an unmounted share looks empty) is refused while articles are known,
    # rather than forgetting them all: their pending posts would be skipped, the feeds emptied.
    allow_empty: bool = False


@dataclass(frozen=True)
class SelectConfig:
    min_quality: int = 0


@dataclass(frozen=True)
class FeedsConfig:
    dir: Path = Path("feeds")
    base_url: str = "http://127.0.0.1:8080/"
    title: str = "Publisher"
    description: str = "Curated news, by topic."
    site_url: str = ""  # the channel <link>; defaults to base_url
    language: str = "en"
    max_items: int = 50
    ttl: int = 60  # minutes a reader may cache a feed
    websub_hub: str = ""

    @property
    def site(self) -> str:
        return self.site_url or self.base_url

    def url_for(self, file_name: str) -> str:
        return self.base_url.rstrip("/") + "/" + file_name


@dataclass(frozen=True)
class TelegramConfig:
    chat_id: str = ""
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    api_base_url: str = OFFICIAL_API_BASE_URL
    token_file: Path | None = None
    max_age_hours: float = 24.0
    max_per_run: int = 10
    per_chat_per_minute: int = 20
    per_chat_interval_seconds: float = 1.0
    global_per_second: float = 30.0
    max_wait_seconds: float = 120.0
    max_tries: int = 3
    on_uncertain: str = "hold"  # "hold" (at-most-once) or "resend" (at-least-once)
    timeout_seconds: float = 20.0
    timezone: str = "UTC"


@dataclass(frozen=True)
class StateConfig:
    url: str = "sqlite:///publisher.db"  # or postgresql://user@host/db (several instances)
    lease_seconds: float = 120.0  # a claim not settled by then is taken over (shared state)


@dataclass(frozen=True)
class ScheduleConfig:
    build: str = "10m"
    push: str = "1m"
    watch: bool = True
    debounce_seconds: float = 1.0


@dataclass(frozen=True)
class ServerConfig:
    listen: str = ""  # "host:port"; empty = off
    serve_feeds: bool = False


@dataclass(frozen=True)
class Config:
    articles: ArticlesConfig = field(default_factory=ArticlesConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    state: StateConfig = field(default_factory=StateConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    path: Path | None = None  # the file this came from, if any

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def read_token(self) -> str:
        """The bot token from the environment or ``telegram.token_file``; never from the file."""
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token and self.telegram.token_file is not None:
            token = _read_token_file(self.telegram.token_file)
        if not token:
            raise ConfigError(
                f"no bot token: set the environment variable {TOKEN_ENV} "
                "or telegram.token_file in the config"
            )
        return token

    def chats_for(self, topics: tuple[str, ...]) -> tuple[str, ...]:
        """Every distinct chat an article with these topics goes to, main chat first."""
        chats: list[str] = [self.telegram.chat_id] if self.telegram.chat_id else []
        for topic in topics:
            for chat in self.telegram.routes.get(topic, ()):
                if chat not in chats:
                    chats.append(chat)
        return tuple(chats)


def _read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file (a FIFO would block the read for ever), small,
    in UTF-8."""
    try:
        data = read_regular_file(path, TOKEN_FILE_MAX_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read telegram.token_file {path}: {exc.strerror or exc}"
        ) from None
    if len(data) > TOKEN_FILE_MAX_BYTES:
        raise ConfigError(f"telegram.token_file {path} is larger than "
                          f"{TOKEN_FILE_MAX_BYTES:,} bytes: not a token file")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"telegram.token_file {path} is not UTF-8 text") from None


SECTIONS: dict[str, type] = {
    "articles": ArticlesConfig,
    "select": SelectConfig,
    "feeds": FeedsConfig,
    "telegram": TelegramConfig,
    "state": StateConfig,
    "schedule": ScheduleConfig,
    "server": ServerConfig,
}
_PATH_KEYS = {("articles", "dir"), ("feeds", "dir"), ("telegram", "token_file")}


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration. ``overrides`` are flags, as ``{"section.key": value}``."""
    environ = os.environ if environ is None else environ
    file_path = Path(path).resolve() if path is not None else None
    raw = _read_toml(file_path) if file_path else {}
    base_dir = file_path.parent if file_path else Path.cwd()
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    _merge_file(raw, sections)
    _merge_environment(environ, sections)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            sections[section][key] = value
    built = {
        name: _build_section(name, SECTIONS[name], values, base_dir)
        for name, values in sections.items()
    }
    config = Config(**built, path=file_path)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _merge_file(raw: Mapping[str, Any], sections: dict[str, dict[str, Any]]) -> None:
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config key {name!r} must be a table [{name}]")
        known = _field_names(SECTIONS[name])
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"unknown config key {name}.{key}")
            sections[name][key] = value


def _merge_environment(environ: Mapping[str, str], sections: dict[str, dict[str, Any]]) -> None:
    for name, cls in SECTIONS.items():
        for key in _field_names(cls):
            variable = f"PUBLISHER_{name}_{key}".upper()
            if variable in environ:
                sections[name][key] = environ[variable]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build_section(name: str, cls: type, values: Mapping[str, Any], base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    section = cls(**{key: _coerce(f"{name}.{key}", hints[key], v) for key, v in values.items()})
    resolved: dict[str, Any] = {}
    for section_name, key in _PATH_KEYS:
        value = getattr(section, key) if section_name == name else None
        if value is not None:
            resolved[key] = (base_dir / value).resolve()
    if name == "state":
        resolved["url"] = _resolve_sqlite_url(section.url, base_dir)
    return dataclasses.replace(section, **resolved)


def _resolve_sqlite_url(url: str, base_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base_dir / url[len(prefix):]).resolve())
    return url


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or say what is wrong."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value in (None, ""):
            return None
        return _coerce(key, options[0], value)
    if hint is Path:
        return Path(_expect(key, value, str, "a path"))
    if hint is bool:
        return _coerce_bool(key, value)
    if hint is int:
        return _coerce_number(key, value, int)
    if hint is float:
        return float(_coerce_number(key, value, float))
    if hint is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # chat ids such as -1001234 written without quotes
        return _expect(key, value, str, "a string")
    if origin is Mapping or hint == Mapping[str, tuple[str, ...]]:
        return _coerce_routes(key, value)
    raise ConfigError(f"config key {key}: unsupported type")  # pragma: no cover


def _expect(key: str, value: Any, kind: type, label: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"config key {key} must be {label}, not {value!r}")
    return value


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"config key {key} must be true or false, not {value!r}")


def _coerce_number(key: str, value: Any, kind: type) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"config key {key} must be a number, not {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"config key {key} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"config key {key} must be a finite number, not {value!r}")
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"config key {key} must be a whole number, not {value!r}")
    return number


def _coerce_routes(key: str, value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key} must be a table of topic = chat(s)")
    routes: dict[str, tuple[str, ...]] = {}
    for topic, chats in value.items():
        items = chats if isinstance(chats, list) else [chats]
        if not items or not all(isinstance(c, str | int) and str(c).strip() for c in items):
            raise ConfigError(f"config key {key}.{topic} must be a chat id or a list of them")
        routes[topic] = tuple(str(c).strip() for c in items)
    return routes


def _validate(config: Config) -> None:
    feeds, telegram = config.feeds, config.telegram
    if feeds.max_items < 1:
        raise ConfigError("config key feeds.max_items must be at least 1")
    for key in ("max_file_bytes", "max_topics", "max_related"):
        if getattr(config.articles, key) < 1:
            raise ConfigError(f"config key articles.{key} must be at least 1")
    for key, url in (("feeds.base_url", feeds.base_url), ("feeds.site_url", feeds.site_url),
                     ("feeds.websub_hub", feeds.websub_hub),
                     ("telegram.api_base_url", telegram.api_base_url)):
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"config key {key} must be an http(s) URL, not {url!r}")
    if telegram.on_uncertain not in ("hold", "resend"):
        raise ConfigError(
            f"config key telegram.on_uncertain must be 'hold' or 'resend', "
            f"not {telegram.on_uncertain!r}"
        )
    for key in ("max_age_hours", "max_per_run", "max_wait_seconds"):
        if getattr(telegram, key) < 0:
            raise ConfigError(f"config key telegram.{key} must not be negative")
    try:
        ZoneInfo(telegram.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"config key telegram.timezone is not a known time zone: {telegram.timezone!r}"
        ) from None
    if telegram.global_per_second <= 0 or telegram.timeout_seconds <= 0:
        raise ConfigError(
            "config keys telegram.global_per_second and timeout_seconds must be above 0"
        )
    if telegram.per_chat_per_minute < 1 or telegram.max_tries < 1:
        raise ConfigError("config keys telegram.per_chat_per_minute and max_tries must be >= 1")
    _validate_state(config)


def _validate_state(config: Config) -> None:
    url = config.state.url
    scheme = urlsplit(url).scheme
    if not (url.startswith("sqlite:///") or scheme in ("postgresql", "postgres")):
        raise ConfigError(
            f"config key state.url must be sqlite:///PATH or postgresql://USER@HOST/DB, "
            f"not {redact_url(url)!r}"
        )
    # A claim must outlive the request it covers, or a slow send would be taken over.
    minimum = 3 * config.telegram.timeout_seconds
    if config.state.lease_seconds < minimum:
        raise ConfigError(
            f"config key state.lease_seconds ({config.state.lease_seconds:g}) must be at "
            f"least 3 x telegram.timeout_seconds ({minimum:g})"
        )
