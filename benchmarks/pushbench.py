"""The push scenario: ``publisher push`` with exactly one new article in a large corpus.

The parent runs a Bot API stand-in (``tests/standin/server.py``) that, when a request arrives,
reads the child's CPU time from ``/proc/<pid>/stat``: that is the CPU spent before the first
request left (getMe) and before the first message left (sendPhoto/sendMessage).

The ledger is seeded first (in a child process, with the publisher's own loader and planner):
every selected article of the corpus is recorded as ``sent``, so the measured push has
exactly one new article, the file added just before it.

    python benchmarks/pushbench.py seed --config CONFIG   # used by run.py
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MESSAGE_METHODS = frozenset({"sendphoto", "sendmessage"})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SENT_LINE = re.compile(r"Sent (?P<sent>\d+) posts?;.* (?P<new>\d+) new pairs? in the ledger")
BENCH_TOKEN = "123456:ABC-bench_token"
BENCH_CHAT = "@bench_channel"
BENCH_CHAT_ID = -1001000000000  # what the stand-in answers for the first username it meets


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/<pid>/stat (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Probe:
    """First request and first message of the watched process: CPU and wall seconds."""

    pid: int = 0
    started: float = 0.0
    first_request: tuple[float, float] | None = None
    first_message: tuple[float, float] | None = None
    methods: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, pid: int, started: float) -> None:
        with self.lock:
            self.pid, self.started = pid, started
            self.first_request = self.first_message = None
            self.methods = []

    def seen(self, method: str) -> None:
        with self.lock:
            if not self.pid:
                return
            try:
                sample = (cpu_seconds(self.pid), time.perf_counter() - self.started)
            except OSError:
                return
            self.methods.append(method)
            if self.first_request is None:
                self.first_request = sample
            if self.first_message is None and method.lower() in MESSAGE_METHODS:
                self.first_message = sample


def probing_standin(tests_dir: Path, probe: Probe) -> Any:
    """A BotApiStandin (no rate limits) that reports each API call to ``probe``."""
    sys.path.insert(0, str(tests_dir))
    if (tests_dir / "standin").is_dir():
        from standin.server import BotApiStandin
    else:  # a snapshot of a commit from before the stand-in became a package
        from botapi_standin import BotApiStandin

    class ProbingStandin(BotApiStandin):
        def dispatch(self, http_method: str, path: str, content_type: str, body: bytes) -> Any:
            probe.seen(path.rstrip("/").rpartition("/")[2])
            return super().dispatch(http_method, path, content_type, body)

    return ProbingStandin(BENCH_TOKEN, rate_limits=False)


def push_config(run_dir: Path, corpus: Path, api_base_url: str) -> Path:
    path = run_dir / "push.toml"
    path.write_text(
        f'[articles]\ndir = "{corpus}"\n'
        f'[feeds]\ndir = "{run_dir / "feeds-push"}"\nbase_url = "https://feeds.example.org/"\n'
        f'[telegram]\nchat_id = "{BENCH_CHAT}"\napi_base_url = "{api_base_url}"\n'
        "max_age_hours = 0\nmax_per_run = 10\nper_chat_interval_seconds = 0.0\n"
        "max_wait_seconds = 5\n"
        f'[state]\nurl = "sqlite:///{run_dir / "push-state.db"}"\n',
        encoding="utf-8",
    )
    return path


def parse_summary(stdout: str) -> tuple[int, int]:
    """(sent, new in the ledger) from ``publisher push`` output; (-1, -1) if not found."""
    match = SENT_LINE.search(stdout)
    return (int(match["sent"]), int(match["new"])) if match else (-1, -1)


# --- child: seed the ledger ---------------------------------------------------------------------


def seed(config_path: Path) -> int:
    """Record every selected article of the corpus as already sent; returns the row count."""
    from publisher.config import load_config
    from publisher.destinations import remembered_destinations
    from publisher.dispatch import plan_deliveries
    from publisher.pipeline import load_and_select
    from publisher.state import ChatRecord, open_store, sqlite_path

    config = load_config(config_path)
    db = sqlite_path(config.state.url)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    loaded = load_and_select(config)
    store = open_store(config.state.url)
    try:
        # As a push left it: the channel resolved (the stand-in's id for the first username it
        # meets), every article planned under that id.
        channel = ChatRecord(str(BENCH_CHAT_ID), "channel", BENCH_CHAT[1:], BENCH_CHAT[1:])
        store.remember_chat(BENCH_CHAT, channel, [])
        destinations = remembered_destinations(config, store)
        store.add_deliveries(plan_deliveries(loaded.selected, config, datetime.now(UTC),
                                             destinations))
    finally:
        store.close()
    with sqlite3.connect(db) as connection:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return connection.execute(
            "UPDATE deliveries SET state='sent', message_id=rowid, sent_to=chat_id, sent_at=?, "
            "updated_at=? WHERE state='pending'",
            (now, now),
        ).rowcount


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Push benchmark helper (child side).")
    parser.add_argument("action", choices=["seed"])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    print(seed(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
