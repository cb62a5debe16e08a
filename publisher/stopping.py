"""Stopping on SIGTERM or SIGINT: the deadline ``run`` and ``push`` share, and ``push``'s stop.

The send in flight finishes and is recorded, and nothing more is sent; a send still hanging
after ``STOP_DEADLINE_SECONDS`` is abandoned (it stays ``sending`` in the ledger and becomes
``uncertain`` at the next start). A second signal exits at once, with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from publisher.config import Config
from publisher.logs import event

if TYPE_CHECKING:
    from publisher.pipeline import PushOutcome

log = logging.getLogger(__name__)

STOP_DEADLINE_SECONDS = 7.0  # systemd and the issue allow 10 s; leave room to close up
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class PushRun:
    """What ``push_once`` did: the outcome (None when a send hanging past the stop deadline
    was abandoned) and the signal that stopped it, if one did."""

    outcome: PushOutcome | None
    signal: int | None = None


async def push_once(config: Config, reedit_since: datetime | None = None) -> PushRun:
    """``publisher push``: one delivery pass, which SIGTERM or SIGINT stops like the service.

    The handlers are Python-level ones, not the event loop's, so that a signal counts (and a
    second one exits) even while a synchronous step, the corpus sync, holds the loop.
    """
    from publisher import pipeline

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop = asyncio.Event()
    received: list[int] = []

    def begin_stop() -> None:
        event(log, logging.WARNING, "stopping", signal=signal.Signals(received[0]).name)
        stop.set()
        loop.call_later(STOP_DEADLINE_SECONDS, task.cancel)

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            os._exit(1)
        loop.call_soon_threadsafe(begin_stop)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        outcome = await pipeline.push(config, stop=stop, reedit_since=reedit_since)
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        event(log, logging.WARNING, "stop_deadline_passed", seconds=STOP_DEADLINE_SECONDS)
        return PushRun(None, received[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return PushRun(outcome, received[0] if received else None)
