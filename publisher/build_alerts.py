"""Builds that fail again and again, when ``publisher build`` runs from cron: each failed
build is recorded (as ``publisher serve`` records its own), and from
``alerts.BUILD_FAILURES_ALERT`` failed builds in a row ``telegram.alert_chat`` gets an alert,
at most one an hour (the cause ``builds``, shared with the service's)."""

from __future__ import annotations

import asyncio
from typing import Any

from publisher import alerts
from publisher.config import Config
from publisher.errors import PublisherError
from publisher.logs import redact_text
from publisher.state import Store

RUNS_LOOKED_AT = 100  # the runs table keeps as many of a kind


def failures_in_a_row(store: Store) -> int:
    """The builds that failed since the last one that did not."""
    rows = store.db.execute(
        "SELECT ok FROM runs WHERE kind='build' ORDER BY id DESC LIMIT ?", (RUNS_LOOKED_AT,))
    count = 0
    for (ok,) in rows:
        if ok:
            break
        count += 1
    return count


def alert_failing_builds(config: Config, store: Store, error: str) -> None:
    """An alert when this failed build makes enough in a row; never raises (an alert must
    not hide the build's own error)."""
    if not config.telegram.alert_chat.strip():
        return
    failures = failures_in_a_row(store)
    if failures < alerts.BUILD_FAILURES_ALERT:
        return
    from publisher.pipeline import make_sender

    try:
        sender = make_sender(config)
    except PublisherError:
        return  # no token: nothing to alert with
    asyncio.run(_send(config, store, sender, alerts.builds_failing(failures,
                                                                    redact_text(error))))


async def _send(config: Config, store: Store, sender: Any, alert: alerts.Alert) -> None:
    async def send_text(*args: Any, **kwargs: Any) -> int:
        await sender.start()
        result: int = await sender.send_text(*args, **kwargs)
        return result

    try:
        await alerts.Alerter(store.db, send_text, config).send([alert])
    finally:
        await sender.close()
