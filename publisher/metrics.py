"""Prometheus metrics of a running service, in their own registry."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from publisher.loader import yaml_loader

OPEN_STATES = ("pending", "uncertain", "failed", "orphaned")
DM_STATES = ("pending", "sending", "sent", "uncertain", "failed", "skipped")

if TYPE_CHECKING:
    from publisher.dispatch import PushReport
    from publisher.fanout import DmReport
    from publisher.pipeline import CorpusReport


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._last_success: dict[str, float] = {}
        gauge = self._gauge
        self.loaded = gauge("publisher_articles_loaded", "Article files that loaded cleanly.")
        self.bad = gauge("publisher_articles_bad", "Article files rejected by the loader.")
        self.selected = gauge("publisher_articles_selected", "Articles selected for publishing.")
        self.messages = Counter(
            "publisher_messages", "Messages by chat and outcome.", ["chat", "outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "publisher_rate_limited", "429 answers from Telegram.", ["chat"],
            registry=self.registry,
        )
        self.posts = Gauge(
            "publisher_posts",
            "Posts still open in the ledger by destination (as configured; once no longer "
            "configured, its @username, or its numeric id if it has none) and state: "
            "pending, uncertain, failed, orphaned.",
            ["chat", "state"], registry=self.registry,
        )
        self._post_series: set[tuple[str, str]] = set()
        self.job_runs = Counter(
            "publisher_job_runs", "Job runs by job and result.", ["job", "result"],
            registry=self.registry,
        )
        since = Gauge(
            "publisher_seconds_since_last_success",
            "Seconds since the job last succeeded (-1: never).", ["job"], registry=self.registry,
        )
        for job in ("build", "push"):
            since.labels(job).set_function(functools.partial(self._seconds_since, job))
        info = Gauge("publisher_loader_info", "YAML loader in use.", ["loader"],
                     registry=self.registry)
        info.labels(yaml_loader()[1]).set(1)
        self.reload_failures = Counter(
            "publisher_reload_failures", "Config reloads (SIGHUP) refused; the old config ran on.",
            registry=self.registry,
        )
        self.config_reload_ok = gauge(
            "publisher_config_reload_ok", "0 after a refused config reload, else 1."
        )
        self.config_reload_ok.set(1)
        self.followers = Gauge("publisher_followers", "Followers by topic (slug).", ["topic"],
                               registry=self.registry)
        self.dm_queue = Gauge("publisher_dm_queue", "DMs to followers in the ledger by state.",
                              ["state"], registry=self.registry)
        self.dms = Counter("publisher_dm", "DMs to followers by outcome (sent, failed, "
                           "uncertain, skipped, removed: the follower blocked the bot, "
                           "rate_limited: 429 answers).", ["outcome"], registry=self.registry)
        self._topics: set[str] = set()

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, registry=self.registry)

    def _seconds_since(self, job: str) -> float:
        last = self._last_success.get(job)
        return -1.0 if last is None else time.time() - last

    def observe_load(self, corpus: CorpusReport) -> None:
        self.loaded.set(corpus.files - len(corpus.problems))
        self.bad.set(len(corpus.problems))
        self.selected.set(corpus.selected)

    def observe_push(self, report: PushReport) -> None:
        for chat, chat_report in report.chats.items():
            for outcome in ("sent", "failed", "uncertain", "skipped", "orphaned"):
                count = getattr(chat_report, outcome)
                if count:
                    self.messages.labels(chat, outcome).inc(count)
            if chat_report.rate_limited:
                self.rate_limited.labels(chat).inc(chat_report.rate_limited)

    def observe_ledger(self, open_posts: Mapping[str, Mapping[str, int]]) -> None:
        """The gauges of open posts, from the ledger after a push; a destination whose
        posts all settled reads 0 (its series stays, so an alert sees the drop)."""
        series = {(chat, state) for chat in open_posts for state in OPEN_STATES}
        for chat, state in series | self._post_series:
            self.posts.labels(chat, state).set(open_posts.get(chat, {}).get(state, 0))
        self._post_series |= series

    def observe_followers(self, by_topic: Mapping[str, int], queue: Mapping[str, int],
                          dms: DmReport | None) -> None:
        """Followers per topic and the DM queue from the state, and a push's DM outcomes;
        a topic nobody follows any more reads 0."""
        for topic in self._topics | set(by_topic):
            self.followers.labels(topic).set(by_topic.get(topic, 0))
        self._topics |= set(by_topic)
        for state in DM_STATES:
            self.dm_queue.labels(state).set(queue.get(state, 0))
        if dms is None:
            return
        for outcome in ("sent", "failed", "uncertain", "skipped", "removed", "rate_limited"):
            self.dms.labels(outcome).inc(getattr(dms, outcome))

    def job_succeeded(self, job: str) -> None:
        self._last_success[job] = time.time()
        self.job_runs.labels(job, "ok").inc()

    def job_failed(self, job: str) -> None:
        self.job_runs.labels(job, "error").inc()

    def reload_failed(self) -> None:
        self.reload_failures.inc()
        self.config_reload_ok.set(0)

    def reloaded(self) -> None:
        self.config_reload_ok.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
