"""Log lines: one per record, in the service's format, whoever logged it; secrets redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from standin.server import NGINX_502

from publisher import logs
from publisher.logs import (
    MAX_MESSAGE_CHARS,
    JsonFormatter,
    KeyValueFormatter,
    RedactingFilter,
    add_secret,
    event,
)

TOKEN = "123456:ABC-secret_token_value"


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    known = set(logs._secrets)
    yield
    logs._secrets.clear()
    logs._secrets.update(known)


class Capture(logging.Handler):
    """What a real handler of ours writes: the redaction filter, then a formatter."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.addFilter(RedactingFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def capture(name: str, formatter: logging.Formatter) -> tuple[logging.Logger, Capture]:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = Capture(formatter)
    logger.addHandler(handler)
    return logger, handler


def failing() -> None:
    raise ValueError(f"bad answer\nfrom https://api.telegram.org/bot{TOKEN}/getMe")


def test_structured_values_read_as_key_value_text() -> None:
    logger, handler = capture("publisher.test_values", KeyValueFormatter())
    event(logger, logging.INFO, "push_done", sent=2, watch=True, chats=["@a", "@b"],
          errors={"@news": "cannot post to @news: Forbidden", "@robots": "chat not found"})
    (line,) = handler.lines
    assert line.endswith(
        ' info push_done sent=2 watch=true chats=@a,@b '
        'errors.@news="cannot post to @news: Forbidden" errors.@robots="chat not found"'
    )
    assert "{" not in line and "'" not in line


def test_a_library_dump_is_one_cut_line_without_its_traceback() -> None:
    add_secret(TOKEN)
    logger, handler = capture("telegram.request.BaseRequest", KeyValueFormatter())
    try:
        failing()
    except ValueError:  # as python-telegram-bot logs an unreadable answer
        logger.exception('Can not load invalid JSON data: "%s"', NGINX_502.decode() * 20)
    (line,) = handler.lines
    assert "\n" not in line and "Traceback" not in line
    assert " error log logger=telegram.request.BaseRequest message=" in line
    message = json.loads(line.split(" message=", 1)[1].split(" exception=", 1)[0])
    assert len(message) == MAX_MESSAGE_CHARS and message.endswith("…")
    summary = line.split(" exception=", 1)[1]
    assert summary.startswith('"ValueError: bad answer from https://api.telegram.org/bot<redacted>')
    assert "test_logs.py:" in summary and "in failing" in summary
    assert TOKEN.partition(":")[2] not in line


def test_debug_adds_the_traceback_as_one_escaped_field() -> None:
    add_secret(TOKEN)
    logger, handler = capture("publisher.test_debug", KeyValueFormatter(tracebacks=True))
    event(logger, logging.ERROR, "push_failed", error="surprise", exc_info=False)
    try:
        failing()
    except ValueError:
        event(logger, logging.ERROR, "push_failed", error="surprise", exc_info=True)
    first, second = handler.lines
    assert "exception=" not in first
    assert "\n" not in second
    trace = json.loads(second.split(" traceback=", 1)[1])
    assert trace.startswith("Traceback (most recent call last):") and "in failing" in trace
    assert TOKEN.partition(":")[2] not in second


def test_json_lines_hold_the_same_fields() -> None:
    logger, handler = capture("httpx", JsonFormatter())
    logger.warning("first line\nsecond line")
    other, other_handler = capture("publisher.test_json", JsonFormatter())
    event(other, logging.INFO, "push_done", errors={"@news": "refused"}, sent=0)
    (line,) = handler.lines
    assert json.loads(line) | {"time": None} == {
        "time": None, "level": "warning", "event": "log", "logger": "httpx",
        "message": "first line second line",
    }
    (done,) = other_handler.lines
    assert json.loads(done)["errors"] == {"@news": "refused"}
