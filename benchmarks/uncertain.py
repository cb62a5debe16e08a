"""Uncertain sends resolved by themselves: N articles pushed to a channel whose sends are lost
in turn before they are posted ("drop") and after ("drop_after_record", "slow_after_record").

One push (``pipeline.push``, in this process) against the stand-in Bot API with a fault
script for successive sendPhoto calls, after one good post (the channel's last known message
id) and a note by another admin. Printed per mode, with reconciling (``telegram.audit_chat``
set) and without (as before):

* delivered exactly once: articles whose post is in the channel once;
* duplicates and missing: posts there twice or more, articles not there at all;
* uncertain left: ledger rows still ``uncertain`` (each waits for the operator);
* probes: forwardMessage calls to the audit chat, and copies left there undeleted;
* changed: messages an edit changed during the push (a probe must never);
* wall time of the push (each "drop" waits ``reconcile.SETTLE_SECONDS`` before its look).

    python benchmarks/uncertain.py [--articles 30] [--every 2] [--timeout 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

TOKEN = "123456:ABC-bench_token"
CHAT = "@bench_channel"
AUDIT = "-4001"
FAULTS = ("drop", "drop_after_record", "slow_after_record")
ARTICLE = """---
title: Benchmark article {index}
webUrl: https://news.example.com/articles/{index}
publishedDateTime: "2025-01-01T{hour:02d}:{minute:02d}:00Z"
quality: 100
published: true
images: [{{url: "https://img.example.com/{index}.jpg", width: 1200, height: 800}}]
---
"""


def fault_script(articles: int, every: int) -> list[str]:
    """The fault of each sendPhoto in turn: every ``every``-th send lost, the three kinds in
    turn; a resend is a send too (the script runs on)."""
    script = []
    kinds = iter(FAULTS * articles)
    for index in range(articles * 2):
        script.append(next(kinds) if index % every == every - 1 else "")
    return script


def write_articles(folder: Path, indexes: range) -> None:
    (folder / "articles").mkdir(exist_ok=True)
    for index in indexes:
        text = ARTICLE.format(index=index, hour=index // 60 % 24, minute=index % 60)
        (folder / "articles" / f"{index}.txt").write_text(text, encoding="utf-8")


def write_config(folder: Path, base_url: str, audit: str, timeout: float) -> Path:
    config = folder / "config.toml"
    config.write_text(
        '[articles]\ndir = "articles"\n[state]\nurl = "sqlite:///publisher.db"\n'
        f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "{base_url}"\nmax_age_hours = 0\n'
        f'max_per_run = 0\naudit_chat = "{audit}"\ntimeout_seconds = {timeout}\n'
        "per_chat_interval_seconds = 0.05\nper_chat_per_minute = 1000\n"
        "max_wait_seconds = 30\n", encoding="utf-8")
    return config


def measure(articles: int, every: int, timeout: float, audit: str) -> str:
    from standin.server import BotApiStandin

    from publisher import pipeline
    from publisher.config import load_config
    from publisher.state import open_store

    os.environ["TELEGRAM_BOT_TOKEN"] = TOKEN
    with BotApiStandin(TOKEN, per_chat_interval=0.02, per_chat_per_minute=1000,
                       slow_seconds=timeout + 1.0) as api, \
            tempfile.TemporaryDirectory(prefix="uncertain-") as workdir:
        folder = Path(workdir)
        config = load_config(write_config(folder, api.base_url, audit, timeout), environ={})
        write_articles(folder, range(1, 2))
        asyncio.run(pipeline.push(config))  # article 1: the chat's last known message id
        write_articles(folder, range(2, articles + 1))
        api.post_as_admin(CHAT, "A note from the editors")
        api.script_faults("sendPhoto", fault_script(articles - 1, every))
        started = time.perf_counter()
        asyncio.run(pipeline.push(config))
        seconds = time.perf_counter() - started
        shown = Counter(record.visible_text.split("\n")[0] for record in api.sent_to(CHAT))
        posts = [shown[f"Benchmark article {index}"] for index in range(1, articles + 1)]
        lost = sum(1 for request in api.requests
                   if request.method == "sendPhoto" and request.fault)
        store = open_store(config.state.url)
        try:
            uncertain = store.db.execute(
                "SELECT count(*) FROM deliveries WHERE state = 'uncertain'").fetchone()[0]
        finally:
            store.close()
        probes = sum(1 for request in api.requests if request.method == "forwardMessage")
        left = len(api.sent_to(AUDIT)) if audit else 0
    mode = "reconcile" if audit else "no audit chat"
    return (f"{mode:14} articles {articles}  sends lost {lost:3}  exactly once "
            f"{posts.count(1):3}  duplicates {sum(1 for n in posts if n > 1)}  missing "
            f"{posts.count(0):3}  uncertain left {uncertain:3}  probes {probes:3} "
            f"(left {left})  changed {len(api.changed_messages)}  wall {seconds:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--articles", type=int, default=30)
    parser.add_argument("--every", type=int, default=2, help="every n-th send is lost")
    parser.add_argument("--timeout", type=float, default=1.0, help="telegram.timeout_seconds")
    args = parser.parse_args()
    for audit in (AUDIT, ""):
        print(measure(args.articles, args.every, args.timeout, audit), flush=True)


if __name__ == "__main__":
    main()
