"""Prometheus metrics of a running service, in their own registry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from publisher.loader import yaml_loader

if TYPE_CHECKING:
    from publisher.dispatch import PushReport
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
        self.job_runs = Counter(
            "publisher_job_runs", "Job runs by job and result.", ["job", "result"],
            registry=self.registry,
        )
        since = Gauge(
            "publisher_seconds_since_last_success",
            "Seconds since the job last succeeded (-1: never).", ["job"], registry=self.registry,
        )
        for job in ("build", "push"):
            since.labels(job).set_function(lambda job=job: self._seconds_since(job))
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
            for outcome in ("sent", "failed", "uncertain", "skipped"):
                count = getattr(chat_report, outcome)
                if count:
                    self.messages.labels(chat, outcome).inc(count)
            if chat_report.rate_limited:
                self.rate_limited.labels(chat).inc(chat_report.rate_limited)

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
