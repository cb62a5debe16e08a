"""What a broken Bot API or proxy costs one ``publisher push``: peak memory and wall time.

For each fault, a fresh folder with one article, the stand-in Bot API as a separate process
with the fault injected for the first send, and ``publisher push`` as a child process whose
peak RSS (``ru_maxrss`` of the waited-for child) and wall time are printed:

* ``huge_answer``: the message is posted, then a 200 answer of ``--huge-mb`` MB;
* ``huge_chunked``: the same, without a Content-Length (chunked);
* ``gzip_bomb``: the message is posted, then a 200 gzip answer of about 1 MB per GiB of
  ``--bomb-gb`` that it decodes to (a hostile proxy's, whatever was asked for);
* ``trickle_answer``: the message is posted, then the answer a byte at a time over
  ``--trickle-seconds`` (no read timeout ever fires);
* ``none``: a normal push, for comparison.

    python benchmarks/faults.py [--huge-mb 200] [--bomb-gb 1] [--trickle-seconds 60]
                                [--timeout 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "123456:ABC-bench_token"
CHAT = "@bench_channel"
ARTICLE = """---
title: A benchmark article
webUrl: https://news.example.com/articles/1
publishedDateTime: "2025-01-01T10:00:00Z"
quality: 100
published: true
images: [{url: "https://img.example.com/1.jpg", width: 1200, height: 800}]
---
"""


def run_push(folder: Path, base_url: str, timeout: float) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, the push's summary line) of one ``publisher push``."""
    (folder / "articles").mkdir()
    (folder / "articles" / "1.txt").write_text(ARTICLE, encoding="utf-8")
    config = folder / "config.toml"
    config.write_text(
        '[articles]\ndir = "articles"\n[state]\nurl = "sqlite:///publisher.db"\n'
        f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "{base_url}"\nmax_age_hours = 0\n'
        f"timeout_seconds = {timeout}\n", encoding="utf-8",
    )
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "publisher", "push", "-c", str(config)], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN},
    )
    out, _ = child.communicate()
    seconds = time.perf_counter() - started
    # The only child waited for so far in this process: its own peak (Linux: kilobytes).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peak_mb, seconds, out.strip().splitlines()[-1] if out.strip() else "(no output)"


def measure(fault: str, args: argparse.Namespace) -> None:
    """In a child of its own, so that RUSAGE_CHILDREN holds this fault's push only."""
    sys.path.insert(0, str(REPO / "tests"))
    from standin.server import StandinProcess

    options = ["--no-rate-limits", "--huge-bytes", str(args.huge_mb * 1024 * 1024),
               "--bomb-bytes", str(int(args.bomb_gb * 1024**3)),
               "--slow-seconds", str(args.trickle_seconds)]
    with StandinProcess(TOKEN, extra_args=options) as standin, \
            tempfile.TemporaryDirectory(prefix="faults-") as workdir:
        if fault != "none":
            standin.control("inject", {"fault": fault})
        peak, seconds, summary = run_push(Path(workdir), standin.base_url, args.timeout)
    print(f"{fault:15} peak RSS {peak:7.1f} MB  wall {seconds:6.2f} s  {summary}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--huge-mb", type=int, default=200)
    parser.add_argument("--bomb-gb", type=float, default=1.0)
    parser.add_argument("--trickle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=20.0, help="telegram.timeout_seconds")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        measure(args.only, args)
        return
    for fault in ("none", "huge_answer", "huge_chunked", "gzip_bomb", "trickle_answer"):
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", fault], check=True)


if __name__ == "__main__":
    main()
