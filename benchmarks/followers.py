"""Delivery to followers (``publisher/fanout.py``): a fan-out's pace, and its planning.

    python benchmarks/followers.py                          # (a) 10,000 at 25/s, ~7 min; (b)
    python benchmarks/followers.py --followers 2000         # (a) quicker: 80 s at 25/s
    python benchmarks/followers.py --skip send --plan-followers 100000 --postgres-url URL

(a) send: ``--followers`` followers all follow one topic; one new article in it. A real
``python -m publisher push`` (a child process) posts it to the channel, then DMs every
follower, through the stand-in Bot API in a process of its own with Telegram's limits on
(30 messages/s overall, one per second per private chat). Reported: seconds from the push's
start to the last DM, the DMs' span (first to last) against the ideal at
``followers.per_second`` ((N - 1) / rate), the child's CPU per DM and its peak RSS, and
checks: every follower got exactly one DM, no 429.

(b) plan: ``--plan-followers`` followers of one topic in a fresh SQLite state (and a
PostgreSQL one with ``--postgres-url``); the fan-out of one new article planned as a push
does: the follower count for the plan (``count_followers``), then its ledger rows written
(``record_fanout``: one ``INSERT ... SELECT``). Goal: under 2 s for 100,000.

Prints Markdown tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from standin.server import DEFAULT_TOKEN, StandinProcess  # noqa: E402

from publisher.fanout import FanOut, count_followers, record_fanout  # noqa: E402
from publisher.state import open_store  # noqa: E402

TOPIC = "Robotics"
SLUG = "robotics"
FIRST_CHAT = 100_000_000
ARTICLE = """---
title: "One new article for every follower"
excerpt: "Benchmark article."
publishedDateTime: "{published}"
webUrl: "https://news.example.com/articles/bench"
type: article
quality: 100
published: true
provider: {{name: Example News, domain: news.example.com}}
topics: ["{topic}"]
---
"""


def add_followers(url: str, count: int, since: float) -> None:
    """``count`` followers of ``SLUG``, written in bulk (the bot's side writes them one by
    one as people subscribe; what matters here is what is there at the fan-out)."""
    store = open_store(url)
    try:
        chats = [str(FIRST_CHAT + index) for index in range(count)]
        with store.db.transaction():
            store.db.executemany("INSERT INTO followers (chat_id, joined_at) VALUES (?, ?)",
                                 [(chat, since) for chat in chats])
            store.db.executemany(
                "INSERT INTO follower_topics (chat_id, slug, since) VALUES (?, ?, ?)",
                [(chat, SLUG, since) for chat in chats])
    finally:
        store.close()


def send_benchmark(followers: int, per_second: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="followers-bench-") as folder:
        root = Path(folder)
        (root / "articles").mkdir()
        (root / "state").mkdir()
        published = datetime.now(UTC).isoformat(timespec="seconds")
        (root / "articles" / "bench.txt").write_text(
            ARTICLE.format(published=published, topic=TOPIC), encoding="utf-8")
        url = f"sqlite:///{root}/state/publisher.db"
        add_followers(url, followers, time.time() - 60)
        with StandinProcess(DEFAULT_TOKEN) as api:
            config = root / "config.toml"
            config.write_text(
                f'[articles]\ndir = "articles"\n[state]\nurl = "{url}"\n'
                f'[telegram]\nchat_id = "@bench_channel"\napi_base_url = "{api.base_url}"\n'
                "max_age_hours = 0\n"
                f"[followers]\nenabled = true\nper_second = {per_second}\n", encoding="utf-8")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.time()
            push = subprocess.run(
                [sys.executable, "-m", "publisher", "push", "-c", str(config)], cwd=root,
                capture_output=True, text=True, check=False,
                env={**os.environ, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN})
            ended = time.time()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            messages = api.messages()
    dms = sorted(m["at"] for m in messages if int(m["chat_id"]) > 0)
    channel = [m["at"] for m in messages if int(m["chat_id"]) < 0]
    per_chat: dict[int, int] = {}
    for message in messages:
        if int(message["chat_id"]) > 0:
            per_chat[int(message["chat_id"])] = per_chat.get(int(message["chat_id"]), 0) + 1
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    span = dms[-1] - dms[0] if dms else 0.0
    ideal = (followers - 1) / per_second
    return {
        "followers": followers,
        "per_second": per_second,
        "exit": push.returncode,
        "push_line": next((line for line in push.stdout.splitlines()
                           if line.startswith("DMs to followers")), push.stderr[-300:]),
        "dms": len(dms),
        "each_once": len(per_chat) == followers and set(per_chat.values()) == {1},
        "channel_first": bool(channel) and bool(dms) and channel[0] <= dms[0],
        "seconds_to_last_dm": round(dms[-1] - started, 2) if dms else None,
        "push_seconds": round(ended - started, 2),
        "span_seconds": round(span, 2),
        "ideal_seconds": round(ideal, 2),
        "over_ideal_percent": round(100 * (span / ideal - 1), 2) if ideal else None,
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_dm": round(1000 * cpu / max(len(dms), 1), 3),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
    }


def plan_benchmark(url: str, followers: int) -> dict[str, Any]:
    since = time.time() - 60
    add_followers(url, followers, since)
    store = open_store(url)
    try:
        now = time.time()
        started = time.perf_counter()
        count = count_followers(store.db, [SLUG], now)
        counted = time.perf_counter()
        fanout = FanOut("bench-article", "One new article", "https://news.example.com/a",
                        datetime.now(UTC).isoformat(), (SLUG,), (TOPIC,), count, now)
        rows = record_fanout(store.db, fanout)
        written = time.perf_counter()
        again = record_fanout(store.db, fanout)  # a second instance's: nothing
    finally:
        store.close()
    return {"engine": url.split(":", 1)[0], "followers": followers, "rows": rows,
            "second_time_rows": again, "count_seconds": round(counted - started, 3),
            "write_seconds": round(written - counted, 3),
            "total_seconds": round(written - started, 3)}


def postgres_schema_url(base: str) -> str:
    """A fresh schema in ``base``'s database (as tests/conftest.py makes them)."""
    import secrets

    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=10_000)
    parser.add_argument("--per-second", type=float, default=25.0)
    parser.add_argument("--plan-followers", type=int, default=100_000)
    parser.add_argument("--postgres-url", default="")
    parser.add_argument("--skip", choices=["send", "plan"], action="append", default=[])
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if "send" not in args.skip:
        sent = results["send"] = send_benchmark(args.followers, args.per_second)
        print("| followers | rate /s | to last DM s | DM span s | ideal s | over ideal | "
              "CPU ms/DM | peak RSS MB | each once | channel first |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        print(f"| {sent['followers']:,} | {sent['per_second']:g} | {sent['seconds_to_last_dm']} "
              f"| {sent['span_seconds']} | {sent['ideal_seconds']} | "
              f"{sent['over_ideal_percent']}% | {sent['cpu_ms_per_dm']} | {sent['peak_rss_mb']} "
              f"| {sent['each_once']} | {sent['channel_first']} |")
        print(f"\npush: {sent['push_line']}\n")
    if "plan" not in args.skip:
        plans = []
        with tempfile.TemporaryDirectory(prefix="followers-plan-") as folder:
            plans.append(plan_benchmark(f"sqlite:///{folder}/state.db", args.plan_followers))
        if args.postgres_url:
            plans.append(plan_benchmark(postgres_schema_url(args.postgres_url),
                                        args.plan_followers))
        results["plan"] = plans
        print("| engine | followers | DM rows | count s | write s | total s | again |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for plan in plans:
            print(f"| {plan['engine']} | {plan['followers']:,} | {plan['rows']:,} | "
                  f"{plan['count_seconds']} | {plan['write_seconds']} | "
                  f"{plan['total_seconds']} | {plan['second_time_rows']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
