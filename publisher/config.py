"""Configuration: defaults, then the TOML file, then the environment, then flags.

Relative paths in the file are taken relative to the file's folder; without a file, relative
to the current directory. An unknown section or key is an error that names it.

Environment variables: ``PUBLISHER_<SECTION>_<KEY>`` (e.g. ``PUBLISHER_FEEDS_DIR``), plus
``TELEGRAM_BOT_TOKEN`` for the token, which never lives in the file. Any other ``PUBLISHER_*``
variable except ``PUBLISHER_CONFIG`` (the config file, see ``find_config``) is an error, like
an unknown key: a misspelt variable must not be ignored.

Which file: ``-c``, then ``PUBLISHER_CONFIG``, then ``publisher.toml`` or ``config.toml`` in
the current folder (``find_config``); without any, the built-in defaults, and the command
says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import stat
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
from publisher.files import FileTooLarge, read_regular_file
from publisher.forum import check_destination
from publisher.settings import PATH_SETTINGS, SETTING_NAMES, PostSettings, has_default_shape
from publisher.text import is_web_url
from publisher.timing import check_timing, with_standard_weekdays

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
CONFIG_ENV = "PUBLISHER_CONFIG"
ENV_PREFIX = "PUBLISHER_"
CONFIG_NAMES = ("publisher.toml", "config.toml")  # looked for in the current folder, in order
TOKEN_FILE_MAX_BYTES = 64 * 1024  # a token is about 46 characters
OFFICIAL_API_BASE_URL = "https://api.telegram.org/bot"
# A config file is a few kB; more is the wrong file (a log, a database, /dev/zero's kin).
MAX_CONFIG_BYTES = 1024 * 1024
# Numbers end up in SQLite columns, timers and HTTP headers: none holds more than 64 bits.
INT64_MAX = 2**63 - 1
MAX_INTERVAL_SECONDS = 366 * 86400  # a schedule step longer than a year is a typo
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_NEGATIVE_INTERVAL = re.compile(r"^\s*-\s*\d")
_UNIT_SECONDS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


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
    telegram_url: str = ""  # the Telegram channel, linked from the landing page and feed pages

    @property
    def site(self) -> str:
        return self.site_url or self.base_url

    def url_for(self, file_name: str) -> str:
        return self.base_url.rstrip("/") + "/" + file_name


@dataclass(frozen=True)
class TelegramConfig(PostSettings):
    """The ``[telegram]`` section: the defaults of every per-destination setting
    (``PostSettings``), the overrides per destination (``chats``), and the keys that hold for
    the whole bot."""

    chat_id: str = ""
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Per destination, the settings it overrides (coerced, paths resolved), as written.
    chats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    api_base_url: str = OFFICIAL_API_BASE_URL
    token_file: Path | None = None
    per_chat_per_minute: int = 20
    per_chat_interval_seconds: float = 1.0
    global_per_second: float = 30.0
    max_wait_seconds: float = 120.0
    max_tries: int = 3
    on_uncertain: str = "hold"  # "hold" (at-most-once) or "resend" (at-least-once)
    timeout_seconds: float = 20.0
    timezone: str = "UTC"
    alert_chat: str = ""  # the operator's chat for alerts (alerts.py); empty = none
    photo_upload: str = "fallback"  # "fallback", "always" or "never" (publisher.photos)
    fetch_private_addresses: bool = False  # image downloads may reach private networks
    edits: bool = True  # a post follows its article's changes (publisher.edits)
    edit_max_age_hours: float = 48.0  # older posts are left as they are; 0 = no limit
    on_retract: str = "delete"  # an unpublished post: "delete", "mark" or "keep" (retract.py)
    retract_template: str = ""  # what a marked post says; empty: "This article was withdrawn."
    # Uncertain sends resolved by forwarding candidate ids to ``audit_chat`` (reconcile.py).
    reconcile: bool = True
    audit_chat: str = ""  # the operator's private chat or group for those forwards; "" = none


PHOTO_UPLOADS = ("fallback", "always", "never")


@dataclass(frozen=True)
class FollowersConfig(PostSettings):
    """The ``[followers]`` section: the bot in private chats (``publisher.followers``). The
    message-shape and timing keys of ``PostSettings`` shape the posts followers get, as
    ``[telegram]``'s shape the channel's."""

    enabled: bool = False
    per_second: float = 25.0  # DMs per second overall; channel posts always go first
    max_subscribers: int = 0  # 0 = no limit
    welcome: str = ""  # a Jinja2 template for /start; empty = the built-in welcome
    webhook_url: str = ""  # empty = long polling (getUpdates)
    webhook_secret: str = field(default="", repr=False)  # X-Telegram-Bot-Api-Secret-Token
    bot_username: str = ""  # for t.me deep links on the landing page
    poll_timeout_seconds: int = 30  # getUpdates long-poll timeout
    command_interval_seconds: float = 1.0  # a follower's commands at most this often
    latest_interval_seconds: float = 10.0  # /latest at most this often per follower
    max_input_chars: int = 256  # longer input is answered with the help line, not parsed


WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
BOT_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")


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
    idle_timeout_seconds: float = 15.0  # a connection waiting for a request, or not reading
    header_timeout_seconds: float = 10.0  # from a request's first byte to its last header
    max_connections: int = 1024  # more wait in the listen backlog


@dataclass(frozen=True)
class Config:
    articles: ArticlesConfig = field(default_factory=ArticlesConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    state: StateConfig = field(default_factory=StateConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    followers: FollowersConfig = field(default_factory=FollowersConfig)
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
        """Every distinct chat an article with these topics goes to, main chat first.

        A route names its topic by name or slug, in any case: ``robotics``, ``Robotics``
        and "Robotics" all route the topic "Robotics" (the same slug, the same feed).
        """
        from publisher.selection import topic_slug

        chats: list[str] = [self.telegram.chat_id] if self.telegram.chat_id else []
        for topic in topics:
            for chat in self._routes_by_slug.get(topic_slug(topic), ()):
                if chat not in chats:
                    chats.append(chat)
        return tuple(chats)

    @functools.cached_property
    def _routes_by_slug(self) -> dict[str, tuple[str, ...]]:
        from publisher.selection import topic_slug

        by_slug: dict[str, tuple[str, ...]] = {}
        for route, chats in self.telegram.routes.items():
            slug = topic_slug(route)
            by_slug[slug] = tuple(dict.fromkeys((*by_slug.get(slug, ()), *chats)))
        return by_slug

    @functools.cached_property
    def follower_settings(self) -> PostSettings:
        """How posts to followers look and when they go: ``[followers]``'s shape keys."""
        followers = self.followers
        return PostSettings(**{name: getattr(followers, name) for name in SETTING_NAMES})

    def settings_for(self, destination: str) -> PostSettings:
        """The settings of one destination: ``[telegram]``'s, then its own overrides."""
        settings = self._settings.get(destination)
        return settings if settings is not None else self._settings[""]

    @functools.cached_property
    def _settings(self) -> dict[str, PostSettings]:
        telegram = self.telegram
        defaults = {name: getattr(telegram, name) for name in SETTING_NAMES}
        merged = {name: PostSettings(**(defaults | dict(overrides)))
                  for name, overrides in telegram.chats.items()}
        return {"": PostSettings(**defaults), **merged}

    @property
    def destinations(self) -> tuple[str, ...]:
        """Every distinct chat configured (the main one, then each route's), as written."""
        chats = [self.telegram.chat_id] if self.telegram.chat_id else []
        for route_chats in self.telegram.routes.values():
            chats.extend(route_chats)
        return tuple(dict.fromkeys(chats))


def _read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file (a FIFO would block the read for ever), small,
    in UTF-8."""
    try:
        data = read_regular_file(path, TOKEN_FILE_MAX_BYTES)
    except FileTooLarge:
        raise ConfigError(f"telegram.token_file {path} is larger than "
                          f"{TOKEN_FILE_MAX_BYTES:,} bytes: not a token file") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read telegram.token_file {path}: {exc.strerror or exc}"
        ) from None
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
    "followers": FollowersConfig,
}
_PATH_KEYS = {("articles", "dir"), ("feeds", "dir"), ("telegram", "token_file")}
# The lowest value of each bounded number: a negative wait, size or count is always a typo.
_AT_LEAST: dict[tuple[str, str], int] = {
    ("articles", "max_file_bytes"): 1,
    ("articles", "max_topics"): 1,
    ("articles", "max_related"): 1,
    ("feeds", "max_items"): 1,
    ("feeds", "ttl"): 0,
    ("telegram", "max_age_hours"): 0,
    ("telegram", "max_per_run"): 0,
    ("telegram", "per_chat_per_minute"): 1,
    ("telegram", "per_chat_interval_seconds"): 0,
    ("telegram", "max_wait_seconds"): 0,
    ("telegram", "max_tries"): 1,
    ("telegram", "edit_max_age_hours"): 0,
    ("telegram", "related_buttons"): 0,
    ("telegram", "digest_max_items"): 1,
    ("schedule", "debounce_seconds"): 0,
    ("followers", "max_subscribers"): 0,
    ("followers", "poll_timeout_seconds"): 0,
    ("followers", "command_interval_seconds"): 0,
    ("followers", "latest_interval_seconds"): 0,
    ("followers", "max_input_chars"): 16,
}
_ABOVE_ZERO = (("telegram", "global_per_second"), ("telegram", "timeout_seconds"),
               ("followers", "per_second"))


@dataclass(frozen=True)
class ConfigSource:
    """Which config file a command uses, and how it was found."""

    path: Path | None  # None: the built-in defaults
    origin: str  # "-c", CONFIG_ENV, "the current folder", or "" for the defaults
    folder: Path  # the current folder, where a file was looked for
    ignored: tuple[Path, ...] = ()  # other candidates in the current folder, not used

    def describe(self) -> str:
        """One line for the operator (stderr), saying which file is used."""
        if self.path is None:
            names = " or ".join(CONFIG_NAMES)
            return (f"Using the built-in defaults: no -c, no {CONFIG_ENV} and no {names} "
                    f"in {self.folder}.")
        how = "found in the current folder" if self.origin == _HERE else f"from {self.origin}"
        line = f"Using config {self.path} ({how})."
        if self.ignored:
            line += " Ignored: " + ", ".join(str(path) for path in self.ignored) + "."
        return line


_HERE = "the current folder"


def find_config(explicit: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> ConfigSource:
    """The config file to use: ``-c``, then ``PUBLISHER_CONFIG``, then ``publisher.toml`` or
    ``config.toml`` in the current folder; none: the built-in defaults.

    Only names the file: a named file that is missing or unreadable is reported when loaded.
    """
    environ = os.environ if environ is None else environ
    folder = (cwd or Path.cwd()).absolute()
    if explicit is not None and str(explicit) != "":
        return ConfigSource(folder / Path(explicit), "-c", folder)
    from_environment = environ.get(CONFIG_ENV, "")
    if from_environment:
        return ConfigSource(folder / Path(from_environment), CONFIG_ENV, folder)
    # lexists: a dangling link is reported as a missing file, not quietly passed over.
    found = [folder / name for name in CONFIG_NAMES if os.path.lexists(folder / name)]
    if found:
        return ConfigSource(found[0], _HERE, folder, tuple(found[1:]))
    return ConfigSource(None, "", folder)


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration. ``overrides`` are flags, as ``{"section.key": value}``."""
    environ = os.environ if environ is None else environ
    file_path = Path(path).absolute() if path is not None else None
    raw = _read_toml(file_path) if file_path else {}
    file_path = file_path.resolve() if file_path else None
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
    text = _read_config_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits: far beyond 64 bits
        raise ConfigError(f"{path}: a number is out of range (beyond 64 bits): {exc}") from None


def _read_config_text(path: Path) -> str:
    """The text of a regular file of at most ``MAX_CONFIG_BYTES``, in UTF-8.

    Opened without blocking, so that a FIFO is refused instead of waiting for a writer, and
    checked on the open descriptor, so that what is read is what was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigError(f"config file {path} is not a regular file ({_file_kind(mode)})")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        ) from None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((label for test, label in kinds if test(mode)), "not a file")


def _merge_file(raw: Mapping[str, Any], sections: dict[str, dict[str, Any]]) -> None:
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config key {name!r} must be a table [{name}]")
        known = _field_names(SECTIONS[name])
        for key, value in table.items():
            if key not in known:
                raise ConfigError(
                    f"unknown config key {name}.{key}"
                    + _did_you_mean(f"{name}.{key}", [f"{name}.{k}" for k in sorted(known)])
                )
            sections[name][key] = value


def environment_variables() -> dict[str, tuple[str, str]]:
    """Every ``PUBLISHER_<SECTION>_<KEY>`` variable, with the (section, key) it sets."""
    return {
        f"{ENV_PREFIX}{name}_{key}".upper(): (name, key)
        for name, cls in SECTIONS.items()
        for key in sorted(_field_names(cls))
    }


def _merge_environment(environ: Mapping[str, str], sections: dict[str, dict[str, Any]]) -> None:
    known = environment_variables()
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_ENV:
            continue
        if variable not in known:
            raise ConfigError(
                f"unknown environment variable {variable}"
                + _did_you_mean(variable, [*known, CONFIG_ENV])
            )
        name, key = known[variable]
        sections[name][key] = environ[variable]


def _did_you_mean(name: str, candidates: list[str]) -> str:
    """The closest candidate, compared without the prefix they all share (which would make
    any two names look alike)."""
    shared = len(os.path.commonprefix([name, *candidates]))  # noqa: RUF071 - characters
    tails = {candidate[shared:]: candidate for candidate in candidates}
    close = difflib.get_close_matches(name[shared:], list(tails), n=1, cutoff=0.6)
    return f" (did you mean {tails[close[0]]}?)" if close else ""


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
    if name in ("telegram", "followers"):
        for key in PATH_SETTINGS:
            if getattr(section, key) is not None:
                resolved[key] = (base_dir / getattr(section, key)).resolve()
        if name == "telegram":
            resolved["chats"] = _coerce_chats(section.chats, base_dir)
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
    if hint == Mapping[str, Mapping[str, Any]]:
        return _expect(key, value, dict, 'a table of "destination" = { settings }')
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
    if abs(number) > INT64_MAX:
        raise ConfigError(f"config key {key} is out of range (beyond 64 bits): {value!r}")
    return number


def _coerce_chats(chats: Mapping[str, Any], base_dir: Path) -> dict[str, dict[str, Any]]:
    """``[telegram.chats."<destination>"]`` tables: each key a ``PostSettings`` field,
    coerced to its type; paths relative to the config file."""
    hints = typing.get_type_hints(PostSettings)
    coerced: dict[str, dict[str, Any]] = {}
    for destination, table in chats.items():
        prefix = f'telegram.chats."{destination}"'
        _expect(prefix, table, dict, "a table of settings")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key {prefix}.{key}"
                    + _did_you_mean(key, list(SETTING_NAMES)).replace("did you mean ",
                                                                     f"did you mean {prefix}.")
                )
            values[key] = _coerce(f"{prefix}.{key}", hints[key], value)
            if key in PATH_SETTINGS and values[key] is not None:
                values[key] = (base_dir / values[key]).resolve()
        coerced[str(destination).strip()] = values
    return coerced


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


def _validate_retract(telegram: TelegramConfig) -> None:
    from publisher.retract import RETRACT_MODES, compile_retract_template

    if telegram.on_retract not in RETRACT_MODES:
        raise ConfigError(
            f"config key telegram.on_retract must be one of {', '.join(RETRACT_MODES)}, "
            f"not {telegram.on_retract!r}"
        )
    compile_retract_template(telegram.retract_template)


def _validate_audit_chat(config: Config) -> None:
    """``telegram.audit_chat`` is a whole chat ("@name" or a numeric id), never a forum topic
    and never a destination's chat: the forwards that resolve uncertain sends go there (a
    forward into the channel itself would be a new post in it)."""
    audit = config.telegram.audit_chat.strip()
    if audit and not _AUDIT_CHAT.match(audit):
        raise ConfigError(f"config key telegram.audit_chat must be a chat (\"@name\" or a "
                          f"numeric id), not {audit!r}")
    chats = {destination.strip().rpartition("/")[0].lower() if "/" in destination
             else destination.strip().lower() for destination in config.destinations}
    if audit and audit.lower() in chats:
        raise ConfigError(f"config key telegram.audit_chat must be a chat of the operator's, "
                          f"not a destination: {audit!r}")


_AUDIT_CHAT = re.compile(r"^(@[A-Za-z][A-Za-z0-9_]{3,31}|-?[0-9]{1,19})$")


def _validate(config: Config) -> None:
    _validate_numbers(config)
    feeds, telegram = config.feeds, config.telegram
    for key, url in (("feeds.base_url", feeds.base_url), ("feeds.site_url", feeds.site_url),
                     ("feeds.websub_hub", feeds.websub_hub),
                     ("feeds.telegram_url", feeds.telegram_url),
                     ("telegram.api_base_url", telegram.api_base_url)):
        if url and not is_web_url(url):
            raise ConfigError(f"config key {key} must be an http(s) URL, not {url!r}")
    if telegram.on_uncertain not in ("hold", "resend"):
        raise ConfigError(
            f"config key telegram.on_uncertain must be 'hold' or 'resend', "
            f"not {telegram.on_uncertain!r}"
        )
    if telegram.photo_upload not in PHOTO_UPLOADS:
        raise ConfigError(
            f"config key telegram.photo_upload must be one of {', '.join(PHOTO_UPLOADS)}, "
            f"not {telegram.photo_upload!r}"
        )
    _validate_retract(telegram)
    _validate_audit_chat(config)
    try:
        ZoneInfo(telegram.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"config key telegram.timezone is not a known time zone: {telegram.timezone!r}"
        ) from None
    for name in ("build", "push"):
        check_schedule(getattr(config.schedule, name), f"schedule.{name}")
    _validate_folders(config)
    _validate_state(config)
    _validate_server(config.server)
    _validate_destinations(config.telegram)
    _validate_chats(config)
    _validate_shapes(config)
    _validate_followers(config)


def _validate_followers(config: Config) -> None:
    followers = config.followers
    _validate_settings(followers, "followers")
    if not has_default_shape(config.follower_settings):
        from publisher.templates import check_settings

        check_settings(config.follower_settings, "followers", config.telegram.timezone)
    check_timing(followers, "followers", config.telegram.timezone)
    if followers.digest:
        raise ConfigError("config key followers.digest: followers get one message per "
                          "article; digests are for [telegram] destinations")
    if followers.per_second > config.telegram.global_per_second:
        raise ConfigError(
            f"config key followers.per_second ({followers.per_second:g}) must not be above "
            f"telegram.global_per_second ({config.telegram.global_per_second:g})")
    if followers.poll_timeout_seconds > 50:
        raise ConfigError("config key followers.poll_timeout_seconds must be at most 50 "
                          "(Telegram holds a long poll for at most about a minute)")
    if followers.bot_username and not BOT_USERNAME.match(followers.bot_username.lstrip("@")):
        raise ConfigError(f"config key followers.bot_username is not a Telegram username: "
                          f"{followers.bot_username!r}")
    _validate_webhook(followers)


def _validate_webhook(followers: FollowersConfig) -> None:
    """Telegram posts updates only to HTTPS; plain http is accepted for a loopback host (a
    local Bot API server, tests). The secret is never echoed."""
    url = followers.webhook_url
    if not url:
        return
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError(f"config key followers.webhook_url must be an https URL, not {url!r}")
    if not WEBHOOK_SECRET.match(followers.webhook_secret):
        raise ConfigError("config key followers.webhook_secret must be set with "
                          "followers.webhook_url: 1-256 characters of A-Z, a-z, 0-9, _ and -")


def _validate_shapes(config: Config) -> None:
    """Templates, read buttons, languages and date formats, tried on sample articles (every
    command loads the config here, ``check`` included: a bad template stops it before
    anything is sent)."""
    everyone = [config.settings_for(name) for name in ("", *config.telegram.chats)]
    if all(has_default_shape(settings) for settings in everyone):
        return  # nothing to check: no need to load Jinja and Babel on every start
    from publisher.templates import check_config

    check_config(config)


def _validate_destinations(telegram: TelegramConfig) -> None:
    """Every destination is a chat, or a chat and a forum topic ("@group/42")."""
    check_destination(telegram.chat_id, "telegram.chat_id")
    for topic, chats in telegram.routes.items():
        for chat in chats:
            check_destination(chat, f"telegram.routes.{topic}")
    for destination in telegram.chats:
        check_destination(destination, f'telegram.chats."{destination}"')


def _validate_chats(config: Config) -> None:
    """Every ``[telegram.chats]`` table names a destination a route uses, and its values
    are in range, as the same keys of ``[telegram]`` must be."""
    unused = [name for name in config.telegram.chats if name not in config.destinations]
    if unused:
        raise ConfigError(
            f'config key telegram.chats."{unused[0]}": no route uses this destination '
            f"(destinations: {', '.join(config.destinations) or 'none'})"
        )
    zone = config.telegram.timezone
    for destination in config.telegram.chats:
        prefix = f'telegram.chats."{destination}"'
        _validate_settings(config.settings_for(destination), prefix)
        check_timing(config.settings_for(destination), prefix, zone)
    _validate_settings(config.settings_for(""), "telegram")
    check_timing(config.settings_for(""), "telegram", zone)


def _validate_settings(settings: PostSettings, prefix: str) -> None:
    for (section, key), lowest in _AT_LEAST.items():
        if section == "telegram" and key in SETTING_NAMES and getattr(settings, key) < lowest:
            bound = "must not be negative" if lowest == 0 else f"must be at least {lowest}"
            raise ConfigError(f"config key {prefix}.{key} {bound}, not {getattr(settings, key)!r}")
    if settings.quiet_mode not in ("silent", "hold"):
        raise ConfigError(f"config key {prefix}.quiet_mode must be 'silent' or 'hold', "
                          f"not {settings.quiet_mode!r}")


def _validate_server(server: ServerConfig) -> None:
    for key in ("idle_timeout_seconds", "header_timeout_seconds"):
        if getattr(server, key) <= 0:
            raise ConfigError(f"config key server.{key} must be above 0")
    if server.max_connections < 1:
        raise ConfigError("config key server.max_connections must be at least 1")


def _validate_numbers(config: Config) -> None:
    for (section, key), lowest in _AT_LEAST.items():
        value = getattr(getattr(config, section), key)
        if value < lowest:
            bound = "must not be negative" if lowest == 0 else f"must be at least {lowest}"
            raise ConfigError(f"config key {section}.{key} {bound}, not {value!r}")
    for section, key in _ABOVE_ZERO:
        value = getattr(getattr(config, section), key)
        if value <= 0:
            raise ConfigError(f"config key {section}.{key} must be above 0, not {value!r}")


def interval_seconds(value: str) -> float | None:
    """Seconds of an interval spec (``"30s"``, ``"10m"``, ``"1h"``, ``"90"``); None for cron."""
    match = _INTERVAL.match(value)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "").lower()]


def check_schedule(value: str, key: str) -> float | None:
    """Check a ``[schedule]`` value: the seconds of an interval, or None for a valid cron line
    (five fields, UTC); anything else is a ``ConfigError`` naming ``key``."""
    seconds = interval_seconds(value)
    if seconds is not None:
        if not 0 < seconds <= MAX_INTERVAL_SECONDS:
            raise ConfigError(
                f"config key {key} must be a positive interval of at most 366 days, "
                f"not {value!r}"
            )
        return seconds
    if _NEGATIVE_INTERVAL.match(value):
        raise ConfigError(f"config key {key} must be a positive interval, not {value!r}")
    from apscheduler.triggers.cron import CronTrigger  # only for cron lines: a slow import

    try:
        CronTrigger.from_crontab(with_standard_weekdays(value), timezone="UTC")
    except ValueError as exc:
        raise ConfigError(
            f"config key {key} must be an interval like '10m' or a cron line like "
            f"'*/10 * * * *', not {value!r}: {exc}"
        ) from None
    return None


def _validate_folders(config: Config) -> None:
    """The feeds folder is publisher's own: never the root, never among the articles."""
    articles, feeds = config.articles.dir, config.feeds.dir
    if feeds == Path(feeds.anchor):
        raise ConfigError(f"config key feeds.dir must be a folder of its own, not {feeds}")
    if feeds.is_relative_to(articles):
        raise ConfigError(
            f"config key feeds.dir ({feeds}) must not be the articles folder or inside it "
            f"(articles.dir = {articles})"
        )
    if articles.is_relative_to(feeds):
        raise ConfigError(
            f"config key articles.dir ({articles}) must not be inside the feeds folder "
            f"(feeds.dir = {feeds}): the feeds folder is served to anyone"
        )


def _validate_state(config: Config) -> None:
    url = config.state.url
    scheme = urlsplit(url).scheme
    if url.startswith("sqlite:///"):
        _validate_sqlite_path(url[len("sqlite:///"):])
    elif scheme not in ("postgresql", "postgres"):
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


def _validate_sqlite_path(path: str) -> None:
    """A database file: the ledger must survive the process. (That its folder exists is
    checked when the state is opened: ``db.require_state_folder``; ``check``, ``preview`` and
    ``serve`` never open it.)"""
    if path == ":memory:":
        raise ConfigError(
            "config key state.url must name a database file, not 'sqlite:///:memory:': an "
            "in-memory ledger forgets what was posted, and every run would post it all again"
        )
    if "?" in path or "#" in path:
        raise ConfigError(
            f"config key state.url must be sqlite:///PATH without ?options or #fragment "
            f"(publisher opens the database itself), not {'sqlite:///' + path!r}"
        )
    if Path(path).is_dir():
        raise ConfigError(f"config key state.url names a folder, not a database file: {path}")
