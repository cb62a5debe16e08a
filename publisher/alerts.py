"""Operator alerts: one short message to ``telegram.alert_chat`` when something needs a look.

Causes: a destination stops (403, chat not found), a post becomes ``uncertain``, builds fail
repeatedly. Each cause is alerted at most once per ``ALERT_INTERVAL_SECONDS``, remembered in
the state database (``alerts``), so restarts do not repeat it. An alert is plain text, cut
to ``MAX_ALERT_CHARS``, and names an article by its title at most; the bot token never
appears in one (every text passes through the redaction of the logs). Alerts are sent after
the deliveries of a push, each bounded in time, and one that fails is logged: an alert never
breaks or holds up a delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from publisher.config import Config
from publisher.db import Database, upsert
from publisher.digest_ledger import ensure_timing_tables
from publisher.errors import PublisherError
from publisher.logs import event, redact_text, secret_variants

log = logging.getLogger(__name__)

ALERT_INTERVAL_SECONDS = 3600.0
BUILD_FAILURES_ALERT = 3  # failed builds in a row that make an alert
MAX_ALERT_CHARS = 600
MAX_TITLE_CHARS = 120
ALERT_TIMEOUT_SECONDS = 10.0
STOPPING_ALERT_TIMEOUT_SECONDS = 1.0  # within a stop's deadline (stopping.py)


@dataclass(frozen=True)
class Alert:
    cause: str  # what is deduplicated: "stopped:<chat>", "uncertain:<chat>", "builds"
    text: str


def title_of(title: str) -> str:
    """An article's title as an alert may quote it: short, on one line."""
    line = " ".join(title.split())
    return line if len(line) <= MAX_TITLE_CHARS else line[: MAX_TITLE_CHARS - 1] + "…"


def stopped(chat_key: str, label: str, reason: str) -> Alert:
    reason = reason.removeprefix(f"cannot post to {label}: ")  # the alert names it already
    return Alert(f"stopped:{chat_key}",
                 f"publisher: {label} stopped: {reason}. Its posts wait until the bot can "
                 "post there again (publisher check --telegram says why).")


def uncertain(chat_key: str, label: str, count: int, reason: str, title: str = "") -> Alert:
    what = f'a post ("{title_of(title)}")' if count == 1 and title else \
        f"{count} posts" if count > 1 else "a post"
    return Alert(f"uncertain:{chat_key}",
                 f"publisher: {what} to {label} may or may not have gone out ({reason}). "
                 "Look in the chat, then publisher ack or publisher resend (publisher "
                 "status lists them).")


def builds_failing(failures: int, error: str) -> Alert:
    return Alert("builds", f"publisher: {failures} builds in a row failed; the last: {error}")


class Alerter:
    """Sends alerts through a started ``Sender``; ``send`` never raises."""

    def __init__(self, db: Database, send_text: Callable[..., Awaitable[int]], config: Config,
                 clock: Callable[[], float] = time.time, *,
                 timeout: float = ALERT_TIMEOUT_SECONDS) -> None:
        """``timeout``: the most one alert may take (a stopping push has little time)."""
        self._timeout = timeout
        self._db = db
        self._send_text = send_text
        self._config = config
        self._clock = clock

    async def send(self, alerts: Iterable[Alert]) -> int:
        """Send each new cause's alert (one per cause per hour); how many went out."""
        chat = self._config.telegram.alert_chat.strip()
        if not chat:
            return 0
        sent = 0
        for alert in {alert.cause: alert for alert in alerts}.values():
            try:
                if self._due(alert.cause):
                    await self._deliver(chat, alert)
                    sent += 1
            except Exception as exc:  # an alert must never break a delivery
                event(log, logging.WARNING, "alert_failed", cause=alert.cause,
                      reason=self._redact(f"{type(exc).__name__}: {exc}"))
        return sent

    def _due(self, cause: str) -> bool:
        """Whether ``cause`` may be alerted now; if so it is recorded first, so a send that
        fails half-way is not repeated within the hour either."""
        ensure_timing_tables(self._db)
        now = self._clock()
        with self._db.transaction():
            row = self._db.execute("SELECT sent_at FROM alerts WHERE cause=?",
                                   (cause,)).fetchone()
            if row is not None and now - float(row[0]) < ALERT_INTERVAL_SECONDS:
                event(log, logging.INFO, "alert_suppressed", cause=cause)
                return False
            self._db.execute(upsert("alerts", ("cause", "sent_at"), ("cause",)), (cause, now))
        return True

    async def _deliver(self, chat: str, alert: Alert) -> None:
        text = self._redact(alert.text)
        if len(text) > MAX_ALERT_CHARS:
            text = text[: MAX_ALERT_CHARS - 1] + "…"
        timeout = min(self._config.telegram.timeout_seconds, self._timeout)
        result = self._send_text(chat, text, html=False, buttons=(), preview_url=None)
        await asyncio.wait_for(result, timeout)
        event(log, logging.INFO, "alert_sent", cause=alert.cause)

    def _redact(self, text: str) -> str:
        try:
            token = self._config.read_token()
        except PublisherError:
            token = ""
        return redact_text(redact_text(text), secret_variants(token))
