"""Logging: one event per line (``key=value`` or JSON), to stderr, with secrets redacted.

The redaction filter sits on the handler, so it sees records from every library (httpx logs
request URLs, python-telegram-bot logs its base URL, both with the token inside).

Every record is one line, whoever logged it: an ``event()`` is ``<time> <level> <name>
key=value...``; a library's (or any plain) log call becomes the event ``log`` with
``logger=`` and its ``message=``, cut to ``MAX_MESSAGE_CHARS`` unless debugging. Structured
values read as text: a mapping becomes ``key.subkey=value`` fields, a list ``a,b``. An
exception is a one-line ``exception=`` summary (type, message, where); the traceback itself
is added, as one escaped field, only at the debug level (``--debug``, ``-vv``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_FIELDS = "publisher_fields"
_EXCEPTION = "publisher_exception"  # (one-line summary, redacted traceback)
MAX_MESSAGE_CHARS = 300
_secrets: set[str] = set()
# An event's fields, or a report's summary: values of any type, printed, int()-ed or logged.
Fields = dict[str, Any]


def secret_variants(secret: str) -> list[str]:
    """The secret itself and, for a bot token ``id:key``, its key part alone."""
    if not secret:
        return []
    _, _, key = secret.partition(":")
    return [secret, key] if len(key) >= 8 else [secret]


def add_secret(secret: str) -> None:
    """Never let ``secret`` (or the key part of a bot token) reach a log line."""
    _secrets.update(secret_variants(secret))


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret replaced, in any letter case: python-telegram-bot lowercases
    an error's description (``str.capitalize``), a token in it included."""
    for secret in sorted(secrets if secrets is not None else _secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "<redacted>")
        if secret.lower() in text.lower():
            text = re.sub(re.escape(secret), "<redacted>", text, flags=re.IGNORECASE)
    return text


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log ``name`` with structured fields: ``name key=value ...`` in text form; the field
    ``exc_info=True`` adds the exception being handled.

    ``exc_info`` is read from ``fields`` rather than being a parameter of its own so that a
    ``**dict[str, object]`` of fields type-checks (mypy would match it against the bool)."""
    exc_info = bool(fields.pop("exc_info", False))
    if logger.isEnabledFor(level):
        logger.log(level, "%s", name, extra={_FIELDS: fields}, exc_info=exc_info)


class RedactingFilter(logging.Filter):
    """Redacts secrets, and turns an exception into its summary and traceback text (so no
    handler formats the raw exception, token and all, on its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            setattr(record, _EXCEPTION, _exception_texts(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if _secrets:
            record.msg = redact_text(record.getMessage())
            record.args = None
            fields = getattr(record, _FIELDS, None)
            if fields:
                setattr(record, _FIELDS, {k: _redact_value(v) for k, v in fields.items()})
        return True


def _exception_texts(exc_info: Any) -> tuple[str, str]:
    _, exc, tb = exc_info
    where = ""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        where = f" at {Path(last.filename).name}:{last.lineno} in {last.name}"
    message = " ".join(str(exc).split())
    summary = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return redact_text(_cut(summary) + where), redact_text(trace)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(str(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(value: Any) -> str:
    """A scalar or a list as readable text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_text(item) for item in value)
    return str(value)


def _quoted(text: str) -> str:
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _key(text: str) -> str:
    return "".join("_" if ch.isspace() or ch in '"=' else ch for ch in str(text)) or "_"


def _pairs(key: str, value: Any) -> list[str]:
    """``key=value``; a mapping gives one ``key.subkey=value`` per item."""
    if isinstance(value, dict):
        if not value:
            return [f"{key}={_quoted('')}"]
        return [pair for sub, item in value.items() for pair in _pairs(f"{key}.{_key(sub)}", item)]
    return [f"{key}={_quoted(_text(value))}"]


class _OneLineFormatter(logging.Formatter):
    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def name_and_fields(self, record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
        fields = getattr(record, _FIELDS, None)
        if fields is None:  # a plain log call, a library's most often
            message = _one_line(record.getMessage())
            if not self.tracebacks:
                message = _cut(message)
            return "log", {"logger": record.name, "message": message}
        fields = dict(fields)
        if record.name and not record.name.startswith("publisher"):
            fields["logger"] = record.name
        return record.getMessage(), fields

    def exception_fields(self, record: logging.LogRecord) -> dict[str, str]:
        texts = getattr(record, _EXCEPTION, None)
        if texts is None and record.exc_info and record.exc_info[1] is not None:
            texts = _exception_texts(record.exc_info)  # no filter on this handler
        if texts is None:
            return {}
        summary, trace = texts
        return {"exception": summary, "traceback": trace} if self.tracebacks else {
            "exception": summary}

    def timestamp(self, record: logging.LogRecord) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class KeyValueFormatter(_OneLineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        name, fields = self.name_and_fields(record)
        fields.update(self.exception_fields(record))
        parts = [self.timestamp(record), record.levelname.lower(), name]
        for key, value in fields.items():
            parts.extend(_pairs(_key(key), value))
        return redact_text(" ".join(parts))


class JsonFormatter(_OneLineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        name, fields = self.name_and_fields(record)
        payload: dict[str, Any] = {
            "time": self.timestamp(record),
            "level": record.levelname.lower(),
            "event": name,
            "logger": record.name,
        }
        payload.update(fields)
        payload.update(self.exception_fields(record))
        return redact_text(json.dumps(payload, ensure_ascii=False, default=str))


def configure_logging(level: int = logging.INFO, fmt: str = "text") -> None:
    """Route every logger to stderr through the redaction filter; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    tracebacks = level <= logging.DEBUG
    handler.setFormatter(JsonFormatter(tracebacks) if fmt == "json"
                         else KeyValueFormatter(tracebacks))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL (which contains the bot token) at INFO.
    for noisy in ("httpx", "httpcore", "telegram", "apscheduler", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
