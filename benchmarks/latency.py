"""File-to-post and file-to-feed latency of ``publisher run``.

Starts the Bot API stand-in and ``publisher run`` on a temporary corpus of seed-shaped
article files (old enough to be skipped by Telegram, but in the feeds), then drops new
article files one at a time and measures how long each takes to become a channel post (the
stand-in's record time) and an entry of ``all.rss.xml``.

    python benchmarks/latency.py [--corpus 1000] [--drops 20] [--debounce 1.0]

Each drop is a change the watcher reports, so the run's sync looks at that file alone
(``Catalog.sync(paths=...)``): ``--corpus 100000`` measures the issue's target (a new file
in the feeds and the channel in under 2 s at 100,000 files).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from standin.server import DEFAULT_TOKEN, StandinProcess  # noqa: E402

SEED = next((REPO / "seeds").glob("*.txt"))
TIMEOUT = 60.0


def seed_record() -> dict[str, Any]:
    text = SEED.read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n", 2)[1])


def write_article(folder: Path, template: dict[str, Any], index: int, when: datetime) -> str:
    title = f"Benchmark article {index}"
    record = {
        **template, "title": title, "published": True, "quality": 100,
        "publishedDateTime": when.isoformat(),
        "webUrl": f"https://news.example.com/bench/{index}",
    }
    text = "---\n" + yaml.safe_dump(record, allow_unicode=True, sort_keys=False) + "---\n"
    # Written beside the folder, then renamed in: the watcher sees one whole file.
    temp = folder.parent / f".{index}.tmp"
    temp.write_text(text, encoding="utf-8")
    temp.rename(folder / f"{index:05d}.txt")
    return title


def write_config(root: Path, base_url: str, debounce: float) -> Path:
    path = root / "config.toml"
    path.write_text(
        '[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
        '[state]\nurl = "sqlite:///publisher.db"\n'
        f'[schedule]\nbuild = "10m"\npush = "10m"\ndebounce_seconds = {debounce}\n'
        f'[telegram]\nchat_id = "@bench"\napi_base_url = "{base_url}"\n'
        "max_age_hours = 24\nmax_per_run = 0\nper_chat_per_minute = 1000\n"
        "per_chat_interval_seconds = 0.05\n",
        encoding="utf-8",
    )
    return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def post_time(standin: StandinProcess, title: str) -> float | None:
    for message in standin.messages():
        if message["visible_text"].startswith(title + "\n"):
            return float(message["at"])
    return None


def feed_has(feed: Path, title: str) -> float | None:
    try:
        return time.time() if title in feed.read_text(encoding="utf-8") else None
    except OSError:
        return None


def ledger_size(root: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(root / "publisher.db")) as db:
            return db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    except sqlite3.Error:
        return 0


def summary(name: str, values: list[float]) -> str:
    # "inclusive": a p95 within the samples (the default extrapolates past the largest).
    p95 = (statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1
           else values[0])
    return (f"{name}: median {statistics.median(values):.3f} s, p95 {p95:.3f} s, "
            f"max {max(values):.3f} s (n={len(values)})")


def measure(root: Path, standin: StandinProcess, drops: int, pause: float
            ) -> tuple[list[float], list[float]]:
    template, feed = seed_record(), root / "feeds" / "all.rss.xml"
    to_post, to_feed = [], []
    for index in range(drops):
        started = time.time()
        title = write_article(root / "articles", template, 100_000 + index,
                              datetime.now(UTC))
        feed_at = wait_for(lambda t=title: feed_has(feed, t), f"{title} in the feed")
        posted_at = wait_for(lambda t=title: post_time(standin, t), f"{title} posted")
        to_feed.append(feed_at - started)
        to_post.append(posted_at - started)
        time.sleep(pause)
    return to_post, to_feed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=1000, help="files present at start")
    parser.add_argument("--drops", type=int, default=20, help="new files, one at a time")
    parser.add_argument("--debounce", type=float, default=1.0, help="schedule.debounce_seconds")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between drops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="publisher-bench-") as name:
        root = Path(name)
        (root / "articles").mkdir()
        template, old = seed_record(), datetime.now(UTC) - timedelta(days=3)
        for index in range(args.corpus):
            write_article(root / "articles", template, index, old - timedelta(minutes=index))
        options = ["--per-chat-interval", "0.05", "--per-chat-per-minute", "1000"]
        with StandinProcess(DEFAULT_TOKEN, extra_args=options) as standin:
            config = write_config(root, standin.base_url, args.debounce)
            env = {**os.environ, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN}
            with (root / "publisher.log").open("w") as log:
                service = subprocess.Popen(
                    [sys.executable, "-m", "publisher", "run", "-c", str(config)],
                    stdout=log, stderr=log, env=env,
                )
                # The start-up run parses the whole corpus first (a minute at 100,000 files).
                startup = max(TIMEOUT, args.corpus / 200)
                try:
                    wait_for(lambda: ledger_size(root) == args.corpus, "the start-up push",
                             startup)
                    wait_for(lambda: (root / "feeds" / "all.rss.xml").exists(), "the feeds",
                             startup)
                    to_post, to_feed = measure(root, standin, args.drops, args.pause)
                finally:
                    service.terminate()
                    service.wait(15)
    print(f"corpus {args.corpus} files, {args.drops} drops, debounce {args.debounce:g} s")
    print(summary("file -> post", to_post))
    print(summary("file -> feed", to_feed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
