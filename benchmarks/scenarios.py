"""Benchmark workloads that run inside a fresh child process (``run.py`` starts them).

Each prints one JSON line on stdout: what it measured inside the process, plus ``hwm_mb``,
the process's own peak RSS (VmHWM). The parent also measures the whole process (wall time,
CPU, ru_maxrss through ``wait4``).

    python benchmarks/scenarios.py floor --corpus DIR
    python benchmarks/scenarios.py naive --corpus DIR --out FEEDS
    python benchmarks/scenarios.py inproc --config CONFIG --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

FRONT_MATTER = re.compile(rb"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*\r?$", re.S | re.M)
ARTICLE_SUFFIXES = (".txt", ".md")
EXTRA_PREFIX = "zzzz_bench_extra_"  # files the benchmark adds, and removes again
NAIVE_MAX_ITEMS = 50


def peak_rss_mb() -> float:
    """This process's high-water-mark resident set size, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def article_paths(corpus: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(corpus):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(ARTICLE_SUFFIXES) and not name.startswith("."):
                yield Path(root, name)


# --- 1. the floor: read + CSafeLoader, nothing else ---------------------------------------------


def floor(corpus: Path) -> dict[str, Any]:
    """Read every file and parse its front matter with libyaml; the least any build must do."""
    started = time.perf_counter()
    parsed = bad = 0
    for path in article_paths(corpus):
        match = FRONT_MATTER.match(path.read_bytes())
        try:
            record = yaml.load(match[1].decode(), Loader=yaml.CSafeLoader) if match else None
        except (yaml.YAMLError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            parsed += 1
        else:
            bad += 1
    return {"seconds": time.perf_counter() - started, "parsed": parsed, "bad": bad}


# --- 2. the naive baseline: yaml.safe_load + feedgen, no cache -----------------------------------


def naive_records(corpus: Path) -> list[dict[str, Any]]:
    """What a quick script does: safe_load each front matter, keep the published ones."""
    records = []
    for path in sorted(article_paths(corpus)):
        try:
            text = path.read_text(encoding="utf-8")
            record = yaml.safe_load(text.split("---", 2)[1])
        except (yaml.YAMLError, UnicodeDecodeError, IndexError):
            continue
        if isinstance(record, dict) and record.get("published") and record.get("title"):
            records.append(record)
    return records


def naive_date(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def naive_feed(name: str, records: list[dict[str, Any]], out: Path) -> None:
    from feedgen.feed import FeedGenerator

    fg = FeedGenerator()
    fg.id(f"https://feeds.example.org/{name}")
    fg.title(f"Publisher: {name}")
    fg.link(href="https://feeds.example.org/", rel="alternate")
    fg.description("Curated news, by topic.")
    newest = sorted(records, key=lambda r: naive_date(r.get("publishedDateTime")), reverse=True)
    for record in newest[:NAIVE_MAX_ITEMS]:
        entry = fg.add_entry(order="append")
        entry.id(str(record.get("webUrl")))
        entry.title(str(record["title"]))
        entry.link(href=str(record.get("webUrl")))
        entry.published(naive_date(record.get("publishedDateTime")))
        entry.description(str(record.get("excerpt") or ""))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "topic"
    fg.rss_file(str(out / f"{slug}.rss.xml"), pretty=True)
    fg.atom_file(str(out / f"{slug}.atom.xml"), pretty=True)


def naive(corpus: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    records = naive_records(corpus)
    by_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        for topic in record.get("topics") or []:
            by_topic[str(topic)].append(record)
    out.mkdir(parents=True, exist_ok=True)
    naive_feed("all", records, out)
    for topic, members in by_topic.items():
        naive_feed(topic, members, out)
    return {"seconds": time.perf_counter() - started, "selected": len(records),
            "topics": len(by_topic)}


# --- 3. in-process: one long-lived process, as `publisher run` is --------------------------


def extra_article(corpus: Path, index: int) -> Path:
    """A new, published, newest article: it changes the "all" feed and its topic feeds."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    path = corpus / f"{EXTRA_PREFIX}{os.getpid()}_{index:03d}.txt"
    path.write_text(
        "---\n"
        f'title: "Benchmark extra article {os.getpid()}-{index}"\n'
        'excerpt: "Added by the benchmark to measure an incremental build."\n'
        f"publishedDateTime: {now}\n"
        f'webUrl: "https://bench.example.org/{os.getpid()}/{index}/{time.time_ns()}"\n'
        "quality: 200\npublished: true\n"
        "provider:\n  name: Bench\n  domain: bench.example.org\n"
        'topics:\n  - "AI"\n  - "Robotics"\n'
        'images:\n  - url: "https://bench.example.org/pic.jpg"\n    width: 1200\n'
        "    height: 800\n---\n",
        encoding="utf-8",
    )
    return path


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def library_build(config_path: Path) -> tuple[Callable[[], object], str]:
    """``pipeline.build`` with one long-lived Loader if it takes one (as ``publisher run``
    keeps it), else plain ``pipeline.build`` (the catalog keeps its cache on disk)."""
    import inspect

    from publisher import pipeline
    from publisher.config import load_config

    config = load_config(config_path)
    if "loader" in inspect.signature(pipeline.build).parameters:
        from publisher.loader import Loader

        loader = Loader(config.articles.max_file_bytes)
        return lambda: pipeline.build(config, loader), "in-memory Loader"
    return lambda: pipeline.build(config), "pipeline.build (no loader parameter)"


def inproc(config_path: Path, repeat: int) -> dict[str, Any]:
    """Cold build, then warm builds and +1-file builds in this one process."""
    from publisher.config import load_config

    build, mode = library_build(config_path)
    corpus = load_config(config_path).articles.dir
    cold = timed(build)
    warm = [timed(build) for _ in range(repeat)]
    added: list[Path] = []
    plus_one = []
    try:
        for index in range(repeat):
            added.append(extra_article(corpus, index))
            plus_one.append(timed(build))
    finally:
        for path in added:
            path.unlink(missing_ok=True)
    return {"cold": cold, "warm": statistics.median(warm), "plus_one": statistics.median(plus_one),
            "warm_all": warm, "plus_one_all": plus_one, "mode": mode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One benchmark workload in this process.")
    parser.add_argument("scenario", choices=["floor", "naive", "inproc"])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.scenario == "floor":
        result = floor(args.corpus)
    elif args.scenario == "naive":
        result = naive(args.corpus, args.out)
    else:
        result = inproc(args.config, args.repeat)
    result["hwm_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
