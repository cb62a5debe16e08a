"""Profile one cold ``pipeline.build`` (cProfile) and say where the time goes, by library.

    python benchmarks/profile_build.py --config CONFIG [--top 25] [--save build.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections import defaultdict
from pathlib import Path

# First match wins: (bucket, substring of the code's file name or of a built-in's name).
BUCKETS: list[tuple[str, str]] = [
    ("PyYAML / libyaml parse", "/yaml/"),
    ("ftfy (mojibake repair)", "/ftfy/"),
    ("slugify (topic slugs)", "/slugify/"),
    ("slugify (topic slugs)", "/text_unidecode/"),
    ("feedgen + lxml (feed XML)", "/feedgen/"),
    ("feedgen + lxml (feed XML)", "lxml"),
    ("urllib.parse (URLs)", "urllib/parse.py"),
    ("uuid (article ids)", "uuid.py"),
    ("sqlite", "sqlite3"),
    ("locale (feedgen RSS dates)", "locale.py"),
    ("datetime", "datetime"),
    ("regex", "re/"),
    ("regex", "method 'sub' of 're.Pattern'"),
    ("regex", "method 'search' of 're.Pattern'"),
    ("regex", "method 'match' of 're.Pattern'"),
    ("regex", "method 'fullmatch' of 're.Pattern'"),
    ("file I/O (stat, open, read, walk)", "posix"),
    ("file I/O (stat, open, read, walk)", "pathlib.py"),
    ("file I/O (stat, open, read, walk)", "os.py"),
    ("file I/O (stat, open, read, walk)", "_io"),
    ("file I/O (stat, open, read, walk)", "method 'read'"),
    ("publisher.loader (own code)", "publisher/loader.py"),
    ("publisher.selection (own code)", "publisher/selection.py"),
    ("publisher.models (own code)", "publisher/models.py"),
    ("publisher.feeds (own code)", "publisher/feeds/"),
    ("dataclasses / object creation", "<string>"),
]


def bucket(file_name: str, function: str) -> str:
    key = f"{file_name}:{function}"
    for name, needle in BUCKETS:
        if needle in key:
            return name
    return "other"


def by_bucket(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) summed per bucket."""
    totals: dict[str, float] = defaultdict(float)
    for (file_name, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        totals[bucket(file_name, function)] += row[2]
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile_build(config_path: Path) -> cProfile.Profile:
    from publisher.config import load_config
    from publisher.pipeline import build

    config = load_config(config_path)
    profiler = cProfile.Profile()
    profiler.enable()
    build(config)
    profiler.disable()
    return profiler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)
    profiler = profile_build(args.config)
    stats = pstats.Stats(profiler)
    if args.save:
        stats.dump_stats(args.save)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"total own time {total:.2f} s (under cProfile)\n")
    print("| where | s | share |\n|---|---:|---:|")
    for name, seconds in by_bucket(stats).items():
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    print()
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
