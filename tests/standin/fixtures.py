"""Pytest fixtures for the Bot API stand-in (import them from conftest.py).

``botapi``: an in-process BotApiStandin with fast-but-real rate limits (20 ms per chat; the
tests' publishers pace at 60 ms, a margin that covers a busy machine's scheduling jitter:
the stand-in answers without Nagle's delay, so requests arrive as closely as they leave).
``botapi_process``: the stand-in as a separate process, recording to ``tmp_path/sent.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from standin.server import DEFAULT_TOKEN, BotApiStandin, StandinProcess

FAST_PER_CHAT_INTERVAL = 0.02
FAST_SLOW_SECONDS = 1.0


@pytest.fixture
def botapi() -> Iterator[BotApiStandin]:
    with BotApiStandin(
        DEFAULT_TOKEN,
        per_chat_interval=FAST_PER_CHAT_INTERVAL,
        slow_seconds=FAST_SLOW_SECONDS,
    ) as api:
        yield api


@pytest.fixture
def botapi_process(tmp_path: Path) -> Iterator[StandinProcess]:
    options = ["--per-chat-interval", str(FAST_PER_CHAT_INTERVAL)]
    options += ["--slow-seconds", str(FAST_SLOW_SECONDS)]
    with StandinProcess(
        DEFAULT_TOKEN, record_path=tmp_path / "sent.jsonl", extra_args=options
    ) as process:
        yield process
