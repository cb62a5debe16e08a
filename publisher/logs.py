"""Logging: one event per line (``key=value`` or JSON), to stderr, with secrets redacted.

The redaction filter sits on the handler, so it sees records from every library (httpx logs
request URLs, python-telegram-bot logs its base URL, both with the token inside).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

_FIELDS = "publisher_fields"
_secrets: set[str] = set()


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
    for secret in sorted(secrets if secrets is not None else _secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def event(
    logger: logging.Logger, level: int, name: str, *, exc_info: bool = False, **fields: Any
) -> None:
    """Log ``name`` with structured fields: ``name key=value ...`` in text form."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", name, extra={_FIELDS: fields}, exc_info=exc_info)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = redact_text(record.getMessage())
            record.args = None
            fields = getattr(record, _FIELDS, None)
            if fields:
                setattr(record, _FIELDS, {k: _redact_value(v) for k, v in fields.items()})
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def _redact_value(value: Any) -> Any:
    return redact_text(value) if isinstance(value, str) else value


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [stamp, record.levelname.lower(), record.getMessage()]
        fields = getattr(record, _FIELDS, {}) or {}
        parts.extend(f"{key}={_format_value(value)}" for key, value in fields.items())
        if record.name and not record.name.startswith("publisher"):
            parts.append(f"logger={record.name}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        payload.update(getattr(record, _FIELDS, {}) or {})
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["traceback"] = record.exc_text
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(level: int = logging.INFO, fmt: str = "text") -> None:
    """Route every logger to stderr through the redaction filter; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL (which contains the bot token) at INFO.
    for noisy in ("httpx", "httpcore", "telegram", "apscheduler", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
