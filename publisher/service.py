"""``publisher run``: build and push on a schedule, and at once when article files change.

One process, one asyncio loop: APScheduler's ``AsyncIOScheduler`` triggers the interval (or
cron) jobs and a ``watchfiles`` watcher triggers a debounced build + push. Each job has its own
lock, so a build never overlaps a build and a push never overlaps a push, while a push that
waits out Telegram's pacing does not hold back the feeds. What APScheduler runs is only the
tick, which asks for a run (``_want``) and returns: a run that outlasts its interval is then
normal, never a "maximum number of running instances" warning, and a run cancelled at the
stop deadline is ours to account for, not an exception of APScheduler's job. The ledger,
not the job store, is the source of truth: jobs live in memory and a restart simply runs
both jobs once. Each job's run is one ``session.Session`` over the service's connections:
the service triggers it, the session syncs, writes the feeds, plans and pushes.

Signals: SIGTERM/SIGINT stop the triggers, let the send in flight finish and be recorded,
close the bot session and exit 0; a second one exits at once. SIGHUP reloads the config
(``state`` and ``server`` changes need a restart). Only a stop request ends the service: the
file watcher has a stop event of its own (watchfiles sets the event it is given when it is
cancelled, as a reload does), and the scheduler is paused, not shut down, until the work in
flight is over (shutting APScheduler's asyncio executor down cancels the jobs it runs).

``publisher push`` stops the same way (``publisher.stopping``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import watchfiles
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from publisher import alerts, hangup, pipeline
from publisher.catalog import Catalog
from publisher.config import Config, check_schedule, interval_seconds, load_config
from publisher.delivery import Sender
from publisher.errors import PublisherError
from publisher.errors import PushIncomplete as PushIncomplete
from publisher.loader import display_path, printable
from publisher.logs import event
from publisher.metrics import Metrics
from publisher.server import RunningServer, limits_from, start_server
from publisher.session import Session
from publisher.state import SQLStore, instance_lock, open_store, utc_now_iso
from publisher.stopping import STOP_DEADLINE_SECONDS
from publisher.timing import with_standard_weekdays
from publisher.updates import BotSender, CurrentSender, FollowersSide

log = logging.getLogger(__name__)

SENDER_CLOSE_SECONDS = 2.0
MAX_FAILURE_BACKOFF_SECONDS = 300.0
MAX_BACKOFF_BASE_SECONDS = 60.0
BUILD_FAILURES_ALERT = alerts.BUILD_FAILURES_ALERT  # failed builds in a row: an alert
WATCH_MAX_BATCH_SECONDS = 5.0  # a never-ending stream of changes still triggers this often
WATCH_RETRY_SECONDS = 5.0
TICK_SLACK_SECONDS = 0.5  # a tick this close to the end of a backoff runs the job
MAX_TICKS_SCANNED = 100_000  # bounds the search for the tick that ends a backoff
JOBS = ("build", "push")


def parse_schedule(value: str, key: str) -> BaseTrigger:
    """An interval spec -> ``IntervalTrigger``; anything else must be a crontab line (UTC).

    The value is checked by ``config.check_schedule``, as every config load does."""
    seconds = check_schedule(value, key)
    if seconds is not None:
        return IntervalTrigger(seconds=seconds)
    return CronTrigger.from_crontab(with_standard_weekdays(value), timezone="UTC")


@dataclasses.dataclass
class JobHealth:
    """Consecutive failures of one job, and when it may run again."""

    failures: int = 0
    last_error: str = ""
    not_before: float = 0.0  # time.time(): the job's ticks before this do nothing

    def succeeded(self) -> None:
        self.failures, self.last_error, self.not_before = 0, "", 0.0

    def failed(self, error: str, base_seconds: float) -> float:
        """Count a failure; returns the backoff before the job may run again."""
        self.failures += 1
        self.last_error = error
        delay = min(base_seconds * 2 ** (self.failures - 1), MAX_FAILURE_BACKOFF_SECONDS)
        self.not_before = time.time() + delay
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
    def __init__(self, config: Config,
                 sender_factory: Callable[[Config], Sender] | None = None) -> None:
        self.config = config
        self._sender_factory = sender_factory or pipeline.make_sender
        self._sender: Sender | None = None
        self._locks = {name: asyncio.Lock() for name in JOBS}
        self._busy: dict[str, asyncio.Task[Any]] = {}  # the task running each job
        self._wanted: dict[str, bool] = {}  # the watcher asked for one more run
        # The article files the watcher reported since the last sync began: the next sync
        # looks at those alone. None: at every file (at start, after a tick or a watcher
        # restart, when a sync failed: nothing says which files changed meanwhile).
        self._watched: set[str] | None = None
        self._runners: dict[str, asyncio.Task[None]] = {}
        # The catalog's writer connection is used from worker threads, one at a time.
        self._load_lock = asyncio.Lock()
        self._stop_sync = threading.Event()
        self._sync_future: asyncio.Future[pipeline.CorpusReport] | None = None
        self._catalog: Catalog | None = None
        # Set by request_stop only, and handed to no library: it ends the service.
        self._stopping = asyncio.Event()
        self._push_stop = asyncio.Event()  # every push's dispatcher stops on it
        self._store: SQLStore | None = None
        self._followers: FollowersSide | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_stop: asyncio.Event | None = None  # the running watcher's own
        self._reload_tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs
        self._notifier = SystemdNotifier()
        self._signals = 0
        self._reported_problems: set[Path] = set()
        self._reported_routes: set[str] = set()
        self._reported_notices: set[tuple[Path, str]] = set()  # (path, warning) logged
        self.metrics = Metrics()
        self.health = {name: JobHealth() for name in JOBS}

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; 0 after a clean stop."""
        pipeline.require_chat(self.config)
        self._sender = self._sender_factory(self.config)
        with instance_lock(self.config.state.url):
            self._store = open_store(self.config.state.url)
            writer = open_store(self.config.state.url, threaded=True)
            self._catalog = Catalog(writer.db)
            server: RunningServer | None = None
            try:
                self._followers = self._followers_side()
                server = self._start_http_server()
                self._start()
                if self._followers is not None:
                    self._followers.start()
                await self._run_until_stopped()
                return 0
            finally:
                if server is not None:
                    server.stop()  # no new connections; answers in flight finish meanwhile
                await self._shutdown()
                if server is not None:
                    await asyncio.to_thread(server.close)
                self._store.close()
                # The writer may still be in a worker thread's sync (it stops at its next
                # batch); close it only once that is over.
                if await self._sync_finished():
                    writer.close()
                event(log, logging.INFO, "stopped")

    def _start(self) -> None:
        self._install_signal_handlers()
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(),
                                           timezone="UTC")
        self._schedule_jobs()
        self._scheduler.start()
        self._start_watcher()
        self._notifier.notify("READY=1\nSTATUS=running")
        event(log, logging.INFO, "started", articles=self.config.articles.dir,
              feeds=self.config.feeds.dir, chat=self.config.telegram.chat_id,
              build=self.config.schedule.build, push=self.config.schedule.push,
              watch=self.config.schedule.watch)

    async def _run_until_stopped(self) -> None:
        """Wait for a stop signal, pinging the systemd watchdog while the loop is alive."""
        watchdog = self._notifier.watchdog_seconds
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), watchdog / 2 if watchdog else None)
            if watchdog and not self._stopping.is_set():
                self._notifier.notify("WATCHDOG=1")

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals > 1:
            event(log, logging.WARNING, "second_signal_exiting_now")
            os._exit(1)
        event(log, logging.INFO, "stopping")
        self._notifier.notify("STOPPING=1")
        self._push_stop.set()
        self._stopping.set()
        if self._watch_stop is not None:
            self._watch_stop.set()
        self._stop_sync.set()  # a long sync in a worker thread ends at its next batch

    def _followers_side(self) -> FollowersSide | None:
        """The bot's side (updates in, replies out) when followers are enabled."""
        if not self.config.followers.enabled:
            return None
        if not isinstance(self._sender, BotSender):
            event(log, logging.ERROR, "followers_unavailable",
                  reason="the sender cannot receive updates")
            return None
        assert self._store is not None

        def current() -> BotSender:  # a reload may replace the sender
            assert isinstance(self._sender, BotSender)
            return self._sender

        return FollowersSide(self.config.followers, self.config.state.url, self._store.db,
                             CurrentSender(current))

    async def _shutdown(self) -> None:
        if self._followers is not None:  # first: it uses the sender closed below
            await self._followers.close(STOP_DEADLINE_SECONDS / 2)
        # Paused, not shut down: shutting down APScheduler's asyncio executor cancels the
        # jobs it runs, the send in flight with them.
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
        await self._finish_work_in_flight()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)  # nothing of ours runs in it any more
        await self._stop_watcher()
        for task in self._runners.values():  # idle now: we hold the locks
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender.close(), SENDER_CLOSE_SECONDS)

    async def _sync_finished(self) -> bool:
        future = self._sync_future
        if future is None or future.done():
            return True
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(future), SENDER_CLOSE_SECONDS)
        return future.done()

    async def _finish_work_in_flight(self) -> None:
        """Let the job in flight end and record its send; past the deadline, cancel it.

        A send cancelled mid-request stays ``sending`` in the ledger and becomes
        ``uncertain`` at the next start: honest, and at most one per chat.
        """
        acquire_all = asyncio.gather(*(lock.acquire() for lock in self._locks.values()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acquire_all, STOP_DEADLINE_SECONDS)
            return
        event(log, logging.WARNING, "stop_deadline_passed", seconds=STOP_DEADLINE_SECONDS)
        for task in list(self._busy.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if hangup.take():  # asked for while starting: applied now that it can be
            event(log, logging.INFO, "reload_deferred", reason="SIGHUP during start-up")
            self._on_sighup()

    def _on_sighup(self) -> None:
        if not self._stopping.is_set():
            task = asyncio.get_running_loop().create_task(self.reload())
            self._reload_tasks.add(task)
            task.add_done_callback(self._reload_tasks.discard)

    async def reload(self) -> None:
        """SIGHUP: read the config file again; a bad file is logged and the old one kept."""
        try:
            new = self._read_new_config()
            sender = self._sender_factory(new) if new.telegram != self.config.telegram else None
        except PublisherError as exc:
            self.metrics.reload_failed()
            event(log, logging.ERROR, "reload_failed", error=str(exc))
            return
        async with self._locks["build"], self._locks["push"]:
            if self._stopping.is_set():  # a stop began while we waited: stay stopped
                return
            old, self.config = self.config, new
            if sender is not None:
                if self._sender is not None:
                    await self._sender.close()
                self._sender = sender
            for health in self.health.values():  # the new config may well have fixed it
                health.not_before = 0.0
            self._schedule_jobs()
            if new.articles.dir != old.articles.dir or new.schedule != old.schedule:
                await self._stop_watcher()
                self._start_watcher()
        self.metrics.reloaded()
        event(log, logging.INFO, "reloaded", config=self.config.path)

    def _read_new_config(self) -> Config:
        new = load_config(self.config.path)
        pipeline.require_chat(new)
        for name in JOBS:
            parse_schedule(getattr(new.schedule, name), f"schedule.{name}")
        fixed = [name for name in ("state", "server")
                 if getattr(new, name) != getattr(self.config, name)]
        if fixed:
            event(log, logging.WARNING, "reload_needs_restart", sections=",".join(fixed))
        return dataclasses.replace(new, state=self.config.state, server=self.config.server)

    # -- triggers ----------------------------------------------------------------------------

    def _schedule_jobs(self) -> None:
        """(Re)schedule both jobs from the config, each to run at once. Replacing a job does
        not touch a run of it in flight."""
        assert self._scheduler is not None
        for name in JOBS:
            spec = getattr(self.config.schedule, name)
            # A tick delayed by a busy loop still runs if late by less than one interval.
            grace = int(max(30, min(interval_seconds(spec) or 300, 3600)))
            self._scheduler.add_job(
                self._tick, parse_schedule(spec, f"schedule.{name}"), args=(name,), id=name,
                name=name, next_run_time=datetime.now(UTC), misfire_grace_time=grace,
                max_instances=1, coalesce=True, replace_existing=True,
            )

    async def _tick(self, name: str) -> None:
        """A scheduled tick: the job now, or once more after the run in flight (a coroutine,
        so that APScheduler runs it on the loop)."""
        self._want(name)

    def _start_watcher(self) -> None:
        self._watched = None  # what changed while no watcher ran is not known
        if self.config.schedule.watch:
            stop = asyncio.Event()
            self._watch_stop = stop
            self._watch_task = asyncio.create_task(self._watch(self.config.articles.dir, stop))

    async def _stop_watcher(self) -> None:
        task, stop = self._watch_task, self._watch_stop
        self._watch_task = self._watch_stop = None
        if stop is not None:
            stop.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, directory: Path, stop: asyncio.Event) -> None:
        """Build + push once per burst of article changes (quiet for ``debounce_seconds``).

        ``stop`` is this watcher's own: watchfiles sets it when the watcher is cancelled.
        """
        quiet_ms = max(int(self.config.schedule.debounce_seconds * 1000), 50)
        max_ms = max(int(WATCH_MAX_BATCH_SECONDS * 1000), quiet_ms)
        while not stop.is_set():
            if not directory.is_dir():
                await _wait_or_timeout(stop, WATCH_RETRY_SECONDS)
                continue
            try:
                async for changes in watchfiles.awatch(
                    directory, debounce=max_ms, step=quiet_ms, stop_event=stop,
                    watch_filter=_article_filter, recursive=True,
                ):
                    event(log, logging.INFO, "articles_changed", files=len(changes))
                    paths = [path for _, path in changes]
                    for name in JOBS:
                        self._want(name, paths)
            except (OSError, RuntimeError) as exc:
                # A watcher that dies (folder removed, inotify limits) falls back to the ticks.
                self._watched = None
                event(log, logging.WARNING, "watcher_error", error=str(exc))
                await _wait_or_timeout(stop, WATCH_RETRY_SECONDS)

    def _want(self, name: str, paths: Iterable[str] | None = None) -> None:
        """Run a job now, or once more after the run in flight; requests in between merge.
        ``paths``: the watcher's, which changed; any other run looks at every file."""
        if paths is None:
            self._watched = None
        elif self._watched is not None:
            self._watched.update(paths)
        self._wanted[name] = True
        runner = self._runners.get(name)
        if runner is None or runner.done():
            self._runners[name] = asyncio.create_task(self._run_wanted(name))

    async def _run_wanted(self, name: str) -> None:
        job = self.build_job if name == "build" else self.push_job
        while self._wanted.pop(name, False):
            await job()

    # -- jobs --------------------------------------------------------------------------------

    async def build_job(self) -> None:
        await self._guarded("build", self._build)

    async def push_job(self) -> None:
        await self._guarded("push", self._push)

    async def _guarded(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run one job under its lock; a failure is logged, counted and backed off."""
        health = self.health[name]
        if self._stopping.is_set() or time.time() < health.not_before:
            return
        async with self._locks[name]:
            if self._stopping.is_set():
                return
            task = asyncio.current_task()
            if task is not None:
                self._busy[name] = task
            try:
                await work()
            except Exception as exc:  # one job failing must never stop the service
                self._job_failed(name, exc)
                if name == "build":
                    await self._alert_failing_builds(health)
            else:
                health.succeeded()
                self.metrics.job_succeeded(name)
            finally:
                self._busy.pop(name, None)
        self._notifier.notify(f"STATUS={self.healthy()[1]}")

    def _job_failed(self, name: str, exc: Exception) -> None:
        health = self.health[name]
        error = str(exc) or type(exc).__name__
        spec = getattr(self.config.schedule, name)
        base = min(interval_seconds(spec) or MAX_BACKOFF_BASE_SECONDS, MAX_BACKOFF_BASE_SECONDS)
        if isinstance(exc, PushIncomplete) and not exc.back_off:
            base = 0.0
        delay = health.failed(error, base)
        retry_in = self._retry_in(name, health, delay)
        self.metrics.job_failed(name)
        # A traceback only for an unexpected error, and only once per streak.
        trace = health.failures == 1 and not isinstance(exc, PublisherError)
        event(log, logging.ERROR, f"{name}_failed", error=error, failures=health.failures,
              retry_in=round(retry_in, 1), exc_info=trace)

    async def _alert_failing_builds(self, health: JobHealth) -> None:
        """From ``BUILD_FAILURES_ALERT`` failed builds in a row, an alert (once an hour)."""
        sender, store = self._sender, self._store
        if (health.failures < BUILD_FAILURES_ALERT or not self.config.telegram.alert_chat
                or sender is None or store is None):
            return

        async def send_text(*args: Any, **kwargs: Any) -> int:
            await sender.start()
            return await sender.send_text(*args, **kwargs)

        await alerts.Alerter(store.db, send_text, self.config).send(
            [alerts.builds_failing(health.failures, health.last_error)])

    def _retry_in(self, name: str, health: JobHealth, delay: float) -> float:
        """Seconds until the job really runs again: its first tick once the backoff is over
        (the ticks before it do nothing), which ``not_before`` is moved to."""
        tick = self._first_tick_from(name, health.not_before - TICK_SLACK_SECONDS)
        if tick is None:
            return delay
        health.not_before = tick - TICK_SLACK_SECONDS
        return max(tick - time.time(), 0.0)

    def _first_tick_from(self, name: str, earliest: float) -> float | None:
        """The time of the job's first scheduled run at or after ``earliest``."""
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        fire = job.next_run_time if job is not None else None
        for _ in range(MAX_TICKS_SCANNED):
            if fire is None or fire.timestamp() >= earliest:
                return fire.timestamp() if fire is not None else None
            assert job is not None
            fire = job.trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        return None

    async def _build(self) -> None:
        assert self._store is not None
        started_at = utc_now_iso()
        try:
            summary = await self._build_feeds()
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            self._session().record("build", started_at, False, {"error": error})
            raise
        self._session().record("build", started_at, True, summary)
        if summary["written"]:
            event(log, logging.INFO, "feeds_written", **summary)

    def _session(self) -> Session:
        """This tick's session: the service's connections, config and sender as they are
        now (a reload may change the last two between ticks)."""
        assert self._store is not None and self._catalog is not None
        return Session(self.config, self._store, sender=self._sender, writer=self._catalog,
                       stop=self._push_stop)

    async def _build_feeds(self) -> dict[str, object]:
        corpus = await self._load()
        async with self._load_lock:
            result = await asyncio.to_thread(self._session().write_feeds)
        return {"files": corpus.files, "bad": len(corpus.problems), "selected": corpus.selected,
                "written": result.written if result is not None else 0}

    async def _load(self) -> pipeline.CorpusReport:
        async with self._load_lock:
            # From now on the watcher's reports are of changes this sync may not have seen.
            paths, self._watched = self._watched, set()
            # Shielded: a cancelled job must not abandon the thread while it holds the writer.
            self._sync_future = asyncio.ensure_future(asyncio.to_thread(
                self._session().sync, None, self._stop_sync, paths
            ))
            try:
                corpus = await asyncio.shield(self._sync_future)
            except BaseException:
                self._watched = None  # the paths it was given may not all be synced
                raise
        self.metrics.observe_load(corpus)
        problems = {problem.path: problem for problem in corpus.problems}
        for path in problems.keys() - self._reported_problems:
            event(log, logging.WARNING, "bad_article", file=display_path(path),
                  reason=printable(problems[path].reason))
        self._reported_problems = set(problems)
        routes = pipeline.route_warnings(self.config, corpus.topic_slugs)
        for warning in sorted(set(routes) - self._reported_routes):
            event(log, logging.WARNING, "route_unmatched", warning=warning)
        self._reported_routes = set(routes)
        notices = {(notice.path, notice.message) for notice in corpus.notices}
        for path, message in sorted(notices - self._reported_notices):
            event(log, logging.WARNING, "article_trimmed", file=display_path(path),
                  warning=printable(message))
        self._reported_notices = notices
        return corpus

    async def _push(self) -> None:
        assert self._store is not None and self._sender is not None
        corpus = await self._load()
        outcome = await self._session().push(corpus, dm_seconds=self._dm_seconds())
        self.metrics.observe_push(outcome.report)
        self.metrics.observe_ledger(outcome.open_posts)
        self._observe_followers(outcome)
        summary = outcome.summary()
        if summary["sent"] or summary["failed"] or summary["uncertain"] or summary["errors"]:
            event(log, logging.INFO, "push_done", **{k: v for k, v in summary.items() if v})
        if outcome.report.fatal or outcome.report.errors:
            errors = "; ".join(outcome.report.errors.values()) or outcome.report.fatal
            # Some chats fine, one refused: report it, but do not hold the others back.
            partial = not outcome.report.fatal and len(outcome.report.errors) < len(
                outcome.report.chats
            )
            raise PushIncomplete(errors, back_off=not partial)

    def _dm_seconds(self) -> float | None:
        """A tick's time for DMs to followers: a long fan-out goes on in the next ticks,
        each after its channel posts (the push lock keeps ticks from overlapping)."""
        from publisher.fanout import TICK_SECONDS

        return TICK_SECONDS if self.config.followers.enabled else None

    def _observe_followers(self, outcome: pipeline.PushOutcome) -> None:
        if not self.config.followers.enabled or self._store is None:
            return
        from publisher.fanout import dm_counts
        from publisher.followers import counts_by_topic

        self.metrics.observe_followers(counts_by_topic(self._store.db),
                                       dm_counts(self._store.db), outcome.dms)

    # -- health and metrics ------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        problems = [f"{name}: {h.last_error}" for name, h in self.health.items() if h.failures]
        return (not problems, "; ".join(problems) or "ok")

    def _start_http_server(self) -> RunningServer | None:
        if not self.config.server.listen:
            return None
        feeds_dir = self.config.feeds.dir if self.config.server.serve_feeds else None
        return start_server(
            self.config.server.listen, feeds_dir=feeds_dir, health=self.healthy,
            metrics=self.metrics.render, cache_seconds=interval_seconds(self.config.schedule.build),
            limits=limits_from(self.config.server),
            webhook=self._followers.endpoint if self._followers is not None else None,
        )


async def _wait_or_timeout(event_: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event_.wait(), seconds)


def _article_filter(change: watchfiles.Change, path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith((".txt", ".md")) and not name.startswith(".")


def run_service(config_path: Path | None) -> int:
    try:  # SIGHUP is held since the command started (``publisher.hangup``)
        config = load_config(config_path)
        return asyncio.run(Service(config).serve())
    finally:
        # The loop gave SIGHUP back to its default as it closed: a reload asked for while
        # the process exits must not turn a clean stop into status 129.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
