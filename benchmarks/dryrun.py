"""``publisher push --dry-run`` against a real push's planning, on one corpus and one state.

The state is seeded as a push leaves it: every selected article planned into the ledger
under the channel's id, all sent but a backlog of ``--pending`` pairs (what pacing or
``telegram.max_per_run`` left), and one new file added after. Then, each in a fresh
process (``--repeat`` times, the median is printed):

* **push planning**: what a push does before its first send, Telegram aside: open the
  state, sync the catalog, make the plan (``Session.sync`` + ``Session.plan``);
* **dry run**: ``publisher push --dry-run`` as the CLI runs it (``Session.dry_run``: the same
  sync and plan, and the messages rendered);
* with ``--before COMMIT``: the dry run of that commit (``pipeline.dry_run``), run from a
  ``git archive`` snapshot, on a copy of the same state.

    python benchmarks/dryrun.py --files 10000 --workdir /tmp/dryrun-bench --before 5ba3d67
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHAT = "@bench_channel"
CHAT_ID = "-1001000000000"

# Timed from the first import: a push pays for its imports as a dry run does.
CHILD_PLAN = """
import sys, time
started = time.perf_counter()
from publisher.config import load_config
from publisher.session import Session
config = load_config(sys.argv[1])
with Session.opened(config) as session:
    session.sync()
    plan = session.plan()
print(time.perf_counter() - started, len(plan.actions))
"""
CHILD_DRY_RUN = """
import sys, time
started = time.perf_counter()
from publisher import pipeline
from publisher.config import load_config
config = load_config(sys.argv[1])
dry = pipeline.dry_run(config)
print(time.perf_counter() - started, len(dry.items))
"""


def write_config(folder: Path, corpus: Path, state: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[articles]\ndir = "{corpus}"\n'
        f'[feeds]\ndir = "{folder / "feeds"}"\nbase_url = "https://feeds.example.org/"\n'
        f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "http://127.0.0.1:9/bot"\n'
        "max_age_hours = 0\nmax_per_run = 10\n"
        f'[state]\nurl = "sqlite:///{state}"\n',
        encoding="utf-8",
    )
    return path


def seed(config_path: Path, pending: int) -> None:
    """The ledger as pushes leave it: everything planned, all sent but ``pending`` pairs."""
    from publisher.config import load_config
    from publisher.destinations import remembered_destinations
    from publisher.pipeline import ROUTING_KEY
    from publisher.session import Session
    from publisher.state import ChatRecord, sqlite_path

    config = load_config(config_path)
    database = sqlite_path(config.state.url)
    with Session.opened(config) as session:
        session.sync()
        session.store.remember_chat(CHAT, ChatRecord(CHAT_ID, "channel", CHAT[1:], CHAT[1:]),
                                    [])
        plan = session.plan()
        session.store.add_deliveries(plan.pairs)
        session.catalog.mark_planned(list(session.catalog.selected_articles()))
        routing = session._routing(remembered_destinations(config, session.store))
        session.catalog.set_meta(ROUTING_KEY, routing)  # as a push left it: no replan
    with sqlite3.connect(database) as connection:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        connection.execute(
            "UPDATE deliveries SET state='sent', message_id=rowid, sent_to=chat_id, "
            "sent_at=?, updated_at=? WHERE state='pending' AND rowid NOT IN "
            "(SELECT rowid FROM deliveries WHERE state='pending' "
            " ORDER BY published_at DESC LIMIT ?)",
            (stamp, stamp, pending),
        )


def add_new_file(corpus: Path) -> None:
    (corpus / "zz-new-article.txt").write_text(
        "---\ntitle: A new article for the dry run\nwebUrl: https://news.example.com/new\n"
        f"publishedDateTime: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
        "published: true\nquality: 250\ntopics: [AI]\n---\n",
        encoding="utf-8",
    )


def run_child(code: str, config: Path, pythonpath: Path | None) -> tuple[float, int]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # Not run from the repository: "-c" puts the current folder first on sys.path.
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                          text=True, env=env, check=True, cwd=config.parent)
    seconds, count = done.stdout.split()
    return float(seconds), int(count)


def measure(code: str, config: Path, repeat: int, pythonpath: Path | None = None,
            ) -> tuple[float, int]:
    samples = [run_child(code, config, pythonpath) for _ in range(repeat)]
    return statistics.median(s for s, _ in samples), samples[-1][1]


def snapshot(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "publisher"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compile_package(into / "publisher")
    return into


def compile_package(folder: Path) -> None:
    """Byte-compiled as ``pip install`` does (PYTHONDONTWRITEBYTECODE may be set)."""
    import compileall

    if not compileall.compile_dir(folder, quiet=1):
        raise RuntimeError(f"could not byte-compile {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--pending", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--before", help="also time this commit's dry run")
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    corpus = work / f"corpus-{args.files}"
    if not corpus.is_dir():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "generate.py"), "--count",
                        str(args.files), "--seed", "1", "--out", str(corpus)], check=True)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (corpus / "zz-new-article.txt").unlink(missing_ok=True)
    config = write_config(run, corpus, run / "state.db")
    compile_package(REPO / "publisher")
    started = time.perf_counter()
    seed(config, args.pending)
    add_new_file(corpus)
    run_child(CHILD_PLAN, config, None)  # the new file parsed once, as a push would
    print(f"seeded {args.files} files in {time.perf_counter() - started:.1f} s")
    results = {}
    plan_s, posts = measure(CHILD_PLAN, config, args.repeat)
    results["push planning"] = (plan_s, posts)
    dry_s, shown = measure(CHILD_DRY_RUN, config, args.repeat)
    results["dry run"] = (dry_s, shown)
    if args.before:
        with tempfile.TemporaryDirectory() as folder:
            code = snapshot(args.before, Path(folder))
            copy = run / "before"
            copy.mkdir()
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{run / 'state.db'}{suffix}")
                if source.exists():
                    shutil.copy(source, Path(f"{copy / 'state.db'}{suffix}"))
            before_config = write_config(copy, corpus, copy / "state.db")
            results[f"dry run at {args.before}"] = measure(CHILD_DRY_RUN, before_config,
                                                           args.repeat, code)
    (corpus / "zz-new-article.txt").unlink(missing_ok=True)
    print(f"{args.files} files, {args.pending} pairs pending + 1 new file, "
          f"median of {args.repeat} fresh processes:")
    for name, (seconds, count) in results.items():
        print(f"  {name:<28} {seconds:7.3f} s   {count} messages")
    print(f"  dry run / push planning      {dry_s / plan_s:7.2f}x")
    (work / "dryrun.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
