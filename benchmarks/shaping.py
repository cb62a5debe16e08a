"""What shaping posts costs: a post rendered in the built-in shape, in an operator's Jinja2
template with a Babel date in German, and a digest, per article of a generated corpus.

    python benchmarks/shaping.py --files 2000 [--repeat 5] [--workdir /tmp/shaping-bench]

Prints the median microseconds per post (or per digest of ``digest_max_items`` items) and
the share of posts that go as text messages in each shape.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from publisher.digest import render_digest  # noqa: E402
from publisher.loader import read_file  # noqa: E402
from publisher.messages import render_message  # noqa: E402
from publisher.models import Article  # noqa: E402
from publisher.settings import PostSettings  # noqa: E402

GERMAN_TEMPLATE = """<b>{{ title }}</b>

{{ excerpt }}

<i>{{ provider }}</i>, {{ date }} {{ hashtags }}
{% for item in related %}<a href="{{ item.url }}">{{ item.title }}</a>
{% endfor %}"""


def corpus_articles(workdir: Path, files: int) -> list[Article]:
    corpus = workdir / f"corpus-{files}"
    if not corpus.exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "generate.py"),
                        "--count", str(files), "--out", str(corpus)], check=True)
    loaded = (read_file(path) for path in sorted(corpus.glob("*.txt")))
    return [outcome.article for outcome in loaded if hasattr(outcome, "article")]


def median_us(action: Callable[[], object], count: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/shaping-bench"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    articles = corpus_articles(args.workdir, args.files)
    default = PostSettings()
    now = datetime.now(UTC)
    german = replace(default, template=GERMAN_TEMPLATE, language="de", date_format="long")
    render_message(articles[0], german)  # compile the template once, as a service does

    def render_all(settings: PostSettings) -> Callable[[], object]:
        return lambda: [render_message(article, settings) for article in articles]

    digests = [articles[start:start + 10] for start in range(0, len(articles) - 9, 10)]
    rows = [
        ("post, built-in shape", median_us(render_all(default), len(articles), args.repeat)),
        ("post, German Jinja2 template", median_us(render_all(german), len(articles),
                                                    args.repeat)),
        ("digest of 10 articles", median_us(
            lambda: [render_digest(chunk, default, "UTC", now) for chunk in digests],
            len(digests), args.repeat)),
    ]
    def texts(settings: PostSettings) -> float:
        return sum(render_message(article, settings).photo_url is None
                   for article in articles) / len(articles)

    print(f"{len(articles)} articles, median of {args.repeat}\n")
    print("| rendering | µs each |\n|---|---:|")
    for label, micros in rows:
        print(f"| {label} | {micros:,.0f} |")
    print(f"\nText messages (no usable image, or a caption that cannot fit): built-in "
          f"{texts(default):.1%}, German template {texts(german):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
