"""``publisher run``: build and push on a schedule, and at once when article files change.

One process, one asyncio loop: APScheduler's ``AsyncIOScheduler`` triggers the interval (or
cron) jobs, a ``watchfiles`` watcher triggers a debounced build + push, and both go through
one lock so work never overlaps. The ledger, not the job store, is the source of truth: jobs
live in memory and a restart simply runs both jobs once.

Signals: SIGTERM/SIGINT stop the triggers, let the send in flight finish and be recorded,
close the bot session and exit 0; a second one exits at once. SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import watchfiles
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.delivery import Sender
from publisher.dispatch import Dispatcher
from publisher.errors import ConfigError, PublisherError
from publisher.loader import Loader
from publisher.logs import event
from publisher.metrics import Metrics
from publisher.state import InstanceLock, RunRecord, SQLiteStore, open_store, utc_now_iso

log = logging.getLogger(__name__)

STOP_DEADLINE_SECONDS = 8.0
MAX_FAILURE_BACKOFF_SECONDS = 900.0
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_schedule(value: str, key: str) -> BaseTrigger:
    """``"10m"``, ``"30s"``, ``"1h"`` or a number of seconds -> interval; else a crontab line."""
    match = _INTERVAL.match(value)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "").lower() or None]
        if seconds <= 0:
            raise ConfigError(f"config key {key} must be a positive interval, not {value!r}")
        return IntervalTrigger(seconds=seconds)
    try:
        return CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(
            f"config key {key} must be an interval like '10m' or a cron expression: {exc}"
        ) from None


def interval_seconds(value: str) -> float | None:
    match = _INTERVAL.match(value)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "").lower() or None]


@dataclass
class JobHealth:
    """Consecutive failures of one job, and when it may run again."""

    failures: int = 0
    last_ok_at: float | None = None
    last_error: str = ""
    not_before: float = 0.0

    def succeeded(self) -> None:
        self.failures, self.last_error, self.not_before = 0, "", 0.0
        self.last_ok_at = time.time()

    def failed(self, error: str, base_seconds: float) -> float:
        self.failures += 1
        self.last_error = error
        delay = min(base_seconds * 2 ** (self.failures - 1), MAX_FAILURE_BACKOFF_SECONDS)
        self.not_before = time.monotonic() + delay
        return delay


class SystemdNotifier:
    """sd_notify(3) over $NOTIFY_SOCKET; silent when not run by systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() else 0.0

    def notify(self, state: str) -> None:
        if not self._address:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto(state.encode(), self._address)


class Service:
    def __init__(self, config: Config, sender_factory: Callable[[Config], Sender] | None = None
                 ) -> None:
        self.config = config
        self._sender_factory = sender_factory or pipeline.make_sender
        self._sender: Sender | None = None
        self._sender_started = False
        self._loader = Loader(config.articles.max_file_bytes)
        self._work_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._dispatcher: Dispatcher | None = None
        self._store: SQLiteStore | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._notifier = SystemdNotifier()
        self.metrics = Metrics()
        self.health = {"build": JobHealth(), "push": JobHealth()}
        self._signals = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> int:
        pipeline.require_chat(self.config)
        self._sender = self._sender_factory(self.config)
        lock = InstanceLock(self.config.state.url)
        lock.acquire()
        self._store = open_store(self.config.state.url)
        server = self._start_http_server()
        try:
            self._install_signal_handlers()
            self._start_scheduler()
            self._start_watcher()
            self._notifier.notify("READY=1\nSTATUS=running")
            event(log, logging.INFO, "started", articles=self.config.articles.dir,
                  feeds=self.config.feeds.dir, chat=self.config.telegram.chat_id)
            await self._run_until_stopped()
            return 0
        finally:
            await self._shutdown()
            if server is not None:
                server.close()
            self._store.close()
            lock.release()
            event(log, logging.INFO, "stopped")

    async def _run_until_stopped(self) -> None:
        watchdog = self._notifier.watchdog_seconds
        while not self._stopping.is_set():
            timeout = watchdog / 2 if watchdog else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout)
            if watchdog:
                self._notifier.notify("WATCHDOG=1")

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals > 1:
            event(log, logging.WARNING, "second_signal_exiting_now")
            os._exit(1)
        event(log, logging.INFO, "stopping")
        self._notifier.notify("STOPPING=1")
        if self._dispatcher is not None:
            self._dispatcher.request_stop()
        self._stopping.set()

    async def _shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        # Let the send in flight finish and be recorded, within the deadline.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work_lock.acquire(), STOP_DEADLINE_SECONDS)
        if self._sender is not None and self._sender_started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender.close(), 2.0)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    async def reload(self) -> None:
        """SIGHUP: read the config file again; a bad file is logged and the old one kept."""
        try:
            new = load_config(self.config.path)
            pipeline.require_chat(new)
            for key in ("build", "push"):
                parse_schedule(getattr(new.schedule, key), f"schedule.{key}")
        except PublisherError as exc:
            event(log, logging.ERROR, "reload_failed", error=str(exc))
            return
        async with self._work_lock:
            old = self.config
            self.config = new
            if new.telegram != old.telegram and self._sender is not None:
                if self._sender_started:
                    await self._sender.close()
                self._sender, self._sender_started = self._sender_factory(new), False
            if new.articles != old.articles:
                self._loader = Loader(new.articles.max_file_bytes)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self._start_scheduler()
        if new.articles.dir != old.articles.dir or new.schedule != old.schedule:
            if self._watch_task is not None:
                self._watch_task.cancel()
            self._start_watcher()
        event(log, logging.INFO, "reloaded", config=self.config.path)

    # -- triggers ----------------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")
        options: dict[str, Any] = {"max_instances": 1, "coalesce": True}
        for name, job in (("build", self.build_job), ("push", self.push_job)):
            spec = getattr(self.config.schedule, name)
            seconds = interval_seconds(spec)
            grace = int(max(30, min(seconds or 300, 3600)))
            scheduler.add_job(
                job, parse_schedule(spec, f"schedule.{name}"), id=name, name=name,
                next_run_time=_utc_now(), misfire_grace_time=grace, **options,
            )
        scheduler.start()
        self._scheduler = scheduler

    def _start_watcher(self) -> None:
        if self.config.schedule.watch:
            self._watch_task = asyncio.create_task(self._watch(self.config.articles.dir))

    async def _watch(self, directory: Path) -> None:
        debounce_ms = int(self.config.schedule.debounce_seconds * 1000)
        while not self._stopping.is_set():
            if not directory.is_dir():
                await asyncio.sleep(5)
                continue
            try:
                async for _changes in watchfiles.awatch(
                    directory, debounce=debounce_ms, step=50, stop_event=self._stopping,
                    watch_filter=_article_filter, recursive=True,
                ):
                    event(log, logging.INFO, "articles_changed")
                    await self.build_job()
                    await self.push_job()
            except (OSError, RuntimeError) as exc:
                # A watcher that dies (folder removed, inotify limits) falls back to the ticks.
                event(log, logging.WARNING, "watcher_error", error=str(exc))
                await asyncio.sleep(5)

    # -- jobs --------------------------------------------------------------------------------

    async def build_job(self) -> None:
        await self._guarded("build", self._build)

    async def push_job(self) -> None:
        await self._guarded("push", self._push)

    async def _guarded(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        health = self.health[name]
        if self._stopping.is_set() or time.monotonic() < health.not_before:
            return
        async with self._work_lock:
            if self._stopping.is_set():
                return
            try:
                await work()
            except Exception as exc:  # one job failing must never stop the service
                base = min(interval_seconds(getattr(self.config.schedule, name)) or 60, 60)
                delay = health.failed(str(exc) or type(exc).__name__, base)
                self.metrics.job_failed(name)
                event(log, logging.ERROR, f"{name}_failed", error=str(exc) or type(exc).__name__,
                      failures=health.failures, retry_in=round(delay, 1),
                      exc_info=not isinstance(exc, PublisherError))
            else:
                health.succeeded()
                self.metrics.job_succeeded(name)

    async def _build(self) -> None:
        started_at = utc_now_iso()
        loaded = await asyncio.to_thread(pipeline.load_and_select, self.config, self._loader)
        self.metrics.observe_load(loaded)
        for problem in loaded.load.problems:
            if problem.path not in self.metrics.reported_problems:
                event(log, logging.WARNING, "bad_article", file=problem.path,
                      reason=problem.reason)
        self.metrics.reported_problems = {p.path for p in loaded.load.problems}
        result = await asyncio.to_thread(pipeline.build_feeds, loaded.selected, self.config.feeds)
        summary = {"files": loaded.load.files_read, "bad": len(loaded.load.problems),
                   "selected": len(loaded.selected), "written": result.written}
        assert self._store is not None
        self._store.record_run(RunRecord("build", started_at, utc_now_iso(), True, summary))
        if result.written:
            event(log, logging.INFO, "feeds_written", **summary)

    async def _push(self) -> None:
        assert self._store is not None and self._sender is not None
        loaded = await asyncio.to_thread(pipeline.load_and_select, self.config, self._loader)
        self.metrics.observe_load(loaded)
        self._sender_started = True  # the dispatcher starts it (idempotent) when needed
        self._dispatcher = Dispatcher(self._store, self._sender, self.config)
        try:
            outcome = await pipeline.deliver(self.config, self._store, self._dispatcher, loaded)
        finally:
            self._dispatcher = None
        self.metrics.observe_push(outcome.report)
        summary = outcome.summary()
        if summary["sent"] or summary["failed"] or summary["uncertain"] or summary["errors"]:
            event(log, logging.INFO, "push_done", **{k: v for k, v in summary.items() if v})
        if outcome.report.fatal or outcome.report.errors:
            raise PublisherError("; ".join(outcome.report.errors.values()) or outcome.report.fatal)

    # -- health and metrics ------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        problems = [f"{name}: {h.last_error}" for name, h in self.health.items() if h.failures]
        return (not problems, "; ".join(problems) or "ok")

    def _start_http_server(self) -> Any:
        if not self.config.server.listen:
            return None
        from publisher.server import start_server

        feeds_dir = self.config.feeds.dir if self.config.server.serve_feeds else None
        return start_server(
            self.config.server.listen, feeds_dir=feeds_dir, health=self.healthy,
            metrics=self.metrics.render, cache_seconds=interval_seconds(self.config.schedule.build),
        )


def _article_filter(change: watchfiles.Change, path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith((".txt", ".md")) and not name.startswith(".")


def _utc_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def run_service(config_path: Path | None) -> int:
    config = load_config(config_path)
    return asyncio.run(Service(config).serve())
