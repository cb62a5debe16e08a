"""Ledger work on a shared PostgreSQL state: claim throughput, pacing, taking over a dead claim.

    python benchmarks/claims.py                  # a throwaway cluster (tests/pgcluster.py)
    python benchmarks/claims.py --url postgresql://user@host/db --repeat 5

Several ``publisher run`` instances may share one PostgreSQL state (``publisher/state.py``).
This measures, with real processes (multiprocessing, spawn) each holding its own connection:

1. claims: ``--pairs`` pending pairs over ``--chats`` chats; every process loops over the chats
   round-robin, ``claim_next`` + ``mark_sent``, until a whole round finds nothing. Pairs/s,
   p50/p99 of each call, then checks: every pair ``sent`` once (``counts``, ``attempts``) and
   no pair claimed by two processes (the union of what each returned). With ``--instances``
   processes, with 1, and with 1 on SQLite for comparison.
2. pacing: ``--instances`` processes calling ``reserve_send`` on their own chat for
   ``--pacing-seconds``, never made to wait (a budget of 10⁹/min), and, for comparison, with
   Telegram's 20/min (the slots then run ahead; nobody sleeps for them); reservations/s.
3. takeover: a child claims 20 pairs with a ``--lease`` (and a 10 s) lease and is SIGKILLed; a
   survivor calling ``recover_interrupted`` every ``--poll`` seconds (the push interval of
   ``publisher run``) from a random phase reports when it got all 20 back as ``uncertain``.

Every run uses a fresh schema ``bench_<hex>`` (``options=-csearch_path=...`` in the URL, as
tests/conftest.py does), dropped at the end. Prints Markdown tables and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg

from publisher.db import is_postgres_url
from publisher.state import SENT, UNCERTAIN, NewDelivery, Pacing, SQLStore, open_store

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAKEOVER_PAIRS = 20
EXTRA_LEASE = 10.0
CLAIM_LEASE = 600.0  # the claims benchmark never lets a lease run out
TELEGRAM_PER_SECOND = 30.0  # messages per second per bot, all chats together
TELEGRAM_PER_CHANNEL_MINUTE = 20.0  # messages per minute in one channel
WAIT_SECONDS = 120.0  # for a child to report; a hung child fails the benchmark instead
BASE_TIME = datetime(2030, 1, 1, tzinfo=UTC)


# --- results --------------------------------------------------------------------------------


@dataclass
class ClaimResult:
    """What one claiming process did."""

    owner: str
    claimed: list[tuple[str, str]] = field(default_factory=list)
    claim_ms: list[float] = field(default_factory=list)
    mark_ms: list[float] = field(default_factory=list)
    empty_claims: int = 0
    started: float = 0.0  # time.monotonic(): one clock for every process on Linux
    finished: float = 0.0


@dataclass
class ClaimRun:
    engine: str
    processes: int
    pairs: int
    seconds: float
    pairs_per_second: float
    claim_p50_ms: float
    claim_p99_ms: float
    mark_p50_ms: float
    mark_p99_ms: float
    empty_claims: int
    per_process: list[int]
    problems: list[str]


@dataclass
class PacingResult:
    reservations: int = 0
    latency_ms: list[float] = field(default_factory=list)
    max_ahead_ms: float = 0.0  # the largest slot - now: how long it would have had to wait
    started: float = 0.0
    finished: float = 0.0


@dataclass
class PacingRun:
    setup: str
    processes: int
    reservations: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ahead_ms: float
    waits: bool


@dataclass
class TakeoverRun:
    lease: float
    poll: float
    seconds: float  # from SIGKILL to the poll that had recovered all the pairs
    after_lease: float  # from the end of the last lease to that poll
    polls: int
    uncertain: int
    problems: list[str]


# --- the server and its schemas ---------------------------------------------------------------


def load_pgcluster() -> ModuleType:
    """tests/pgcluster.py, imported by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pgcluster", REPO / "tests" / "pgcluster.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load tests/pgcluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """``url``, or the URL of a throwaway cluster started here and stopped at the end."""
    if url:
        yield url
        return
    pgcluster = load_pgcluster()
    directory = Path(tempfile.mkdtemp(prefix="pgbench-"))  # under /tmp: see pgcluster.py
    try:
        print(f"starting a throwaway PostgreSQL cluster in {directory} ...", file=sys.stderr,
              flush=True)
        yield pgcluster.start_cluster(directory)
    finally:
        try:
            pgcluster.stop_cluster(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    others = [(key, value) for key, value in query if key != "options"]
    options = [value for key, value in query if key == "options"] + [f"-csearch_path={schema}"]
    query = [*others, ("options", " ".join(options))]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


class Schemas:
    """Fresh schemas ``bench_<hex>`` on one server: one per measured run, all dropped at the end."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.created: list[str] = []

    def fresh(self) -> str:
        schema = f"bench_{secrets.token_hex(6)}"
        with psycopg.connect(self.server, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        self.created.append(schema)
        return with_search_path(self.server, schema)

    def drop_all(self) -> None:
        with psycopg.connect(self.server, autocommit=True, connect_timeout=5) as connection:
            connection.execute("SET lock_timeout = '5s'")
            for schema in reversed(self.created):
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.created.clear()

    def server_version(self) -> str:
        with psycopg.connect(self.server, autocommit=True) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


# --- seeding --------------------------------------------------------------------------------


def chat_names(chats: int) -> list[str]:
    return [f"@bench_chat_{index:02d}" for index in range(chats)]


def new_pairs(pairs: int, chats: list[str]) -> list[NewDelivery]:
    """``pairs`` pending pairs: each article goes to every chat, one article a minute."""
    rows = []
    for index in range(pairs):
        article = index // len(chats)
        published = (BASE_TIME + timedelta(minutes=article)).isoformat()
        rows.append(NewDelivery(f"article-{article:07d}", chats[index % len(chats)],
                                f"Story {article}", f"https://news.example.com/{article}",
                                published))
    return rows


def seed(url: str, pairs: int, chats: list[str]) -> None:
    store = open_store(url)
    try:
        inserted = store.add_deliveries(new_pairs(pairs, chats))
        if inserted != pairs:
            raise RuntimeError(f"seeded {inserted} pairs, expected {pairs}")
        if store.db.dialect == "postgresql":
            store.db.execute("ANALYZE deliveries")  # as autovacuum would soon after
    finally:
        store.close()


# --- child processes ------------------------------------------------------------------------


def child_main(target: Callable[..., Any], args: tuple[Any, ...], barrier: Barrier,
               results: Queue[Any]) -> None:
    """Open the store, wait for the others, run ``target(store, *args)``; its result (or the
    traceback) goes to ``results``. ``args[0]`` is the URL."""
    try:
        store = open_store(args[0])
    except BaseException:
        barrier.abort()
        results.put(traceback.format_exc())
        raise
    try:
        barrier.wait(WAIT_SECONDS)
        results.put(target(store, *args[1:]))
    except BaseException:
        results.put(traceback.format_exc())
        raise
    finally:
        store.close()


def run_children(ctx: SpawnContext, target: Callable[..., Any],
                 arguments: list[tuple[Any, ...]]) -> list[Any]:
    """One process per ``arguments`` entry, released together once all have connected."""
    barrier = ctx.Barrier(len(arguments))
    results: Queue[Any] = ctx.Queue()
    processes = [ctx.Process(target=child_main, args=(target, args, barrier, results))
                 for args in arguments]
    for process in processes:
        process.start()
    try:
        collected = [results.get(timeout=WAIT_SECONDS) for _ in processes]
    finally:
        for process in processes:
            process.join(WAIT_SECONDS)
            if process.is_alive():
                process.kill()
    failures = [item for item in collected if isinstance(item, str)]
    if failures:
        raise RuntimeError("a benchmark process failed:\n" + failures[0])
    return collected


# --- 1. claims ------------------------------------------------------------------------------


def claim_loop(store: SQLStore, chats: list[str], owner: str) -> ClaimResult:
    """claim_next + mark_sent round-robin over the chats until a whole round finds nothing."""
    result = ClaimResult(owner, started=time.monotonic())
    idle, turn = 0, 0
    while idle < len(chats):
        chat = chats[turn % len(chats)]
        turn += 1
        began = time.perf_counter()
        now = time.time()
        item = store.claim_next(chat, now, owner, now + CLAIM_LEASE)
        claimed = time.perf_counter()
        if item is None:
            idle += 1
            result.empty_claims += 1
            continue
        idle = 0
        store.mark_sent(item.article_id, chat, len(result.claimed) + 1, chat)
        result.mark_ms.append((time.perf_counter() - claimed) * 1000)
        result.claim_ms.append((claimed - began) * 1000)
        result.claimed.append((item.article_id, item.chat_id))
    result.finished = time.monotonic()
    return result


def measure_claims(ctx: SpawnContext, url: str, engine: str, processes: int, pairs: int,
                   chats: list[str]) -> ClaimRun:
    seed(url, pairs, chats)
    arguments = [(url, chats, f"bench-{engine}-{index}") for index in range(processes)]
    results: list[ClaimResult] = run_children(ctx, claim_loop, arguments)
    seconds = max(r.finished for r in results) - min(r.started for r in results)
    claim_ms = [ms for r in results for ms in r.claim_ms]
    mark_ms = [ms for r in results for ms in r.mark_ms]
    return ClaimRun(
        engine=engine, processes=processes, pairs=pairs, seconds=seconds,
        pairs_per_second=pairs / seconds,
        claim_p50_ms=percentile(claim_ms, 50), claim_p99_ms=percentile(claim_ms, 99),
        mark_p50_ms=percentile(mark_ms, 50), mark_p99_ms=percentile(mark_ms, 99),
        empty_claims=sum(r.empty_claims for r in results),
        per_process=[len(r.claimed) for r in results],
        problems=verify_claims(url, results, pairs, chats),
    )


def verify_claims(url: str, results: list[ClaimResult], pairs: int,
                  chats: list[str]) -> list[str]:
    """Every pair sent exactly once, claimed by exactly one process, by the one that said so."""
    problems = []
    claimed = Counter(pair for r in results for pair in r.claimed)
    twice = [pair for pair, count in claimed.items() if count > 1]
    if twice:
        problems.append(f"{len(twice)} pairs claimed more than once, e.g. {twice[:3]}")
    if len(claimed) != pairs:
        problems.append(f"{len(claimed)} distinct pairs claimed, expected {pairs}")
    store = open_store(url)
    try:
        expected = {chat: {SENT: pairs // len(chats) + (i < pairs % len(chats))}
                    for i, chat in enumerate(chats)}
        if (counts := store.counts()) != expected:
            problems.append(f"ledger counts {counts} != {expected}")
        retried = store.db.execute(
            "SELECT count(*) FROM deliveries WHERE attempts <> 1").fetchone()[0]
        if retried:
            problems.append(f"{retried} pairs with attempts <> 1 (claimed twice in the ledger)")
        owners = dict(store.db.execute(
            "SELECT claimed_by, count(*) FROM deliveries GROUP BY claimed_by").fetchall())
        said = {r.owner: len(r.claimed) for r in results if r.claimed}
        if owners != said:
            problems.append(f"claimed_by in the ledger {owners} != what processes said {said}")
    finally:
        store.close()
    return problems


# --- 2. pacing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacingSetup:
    label: str
    per_chat_per_minute: int
    waits: bool  # True: slots run ahead of now by design (nobody sleeps for them here)
    comparison: bool  # True: runs --baseline-repeat times, not --repeat


PACING_SETUPS = (
    PacingSetup("interval 0, budget 10⁹/min: never waits", 10**9, False, False),
    # A budget that is never reached makes each call read every reservation of the last
    # minute (LIMIT budget); Telegram's budget reads at most 20 rows, as in production.
    PacingSetup("interval 0, Telegram's 20/min: slots run ahead, not waited for", 20, True,
                True),
)


def pacing_loop(store: SQLStore, chat: str, seconds: float, budget: int) -> PacingResult:
    """reserve_send on one chat for ``seconds``, as fast as it answers."""
    pacing = Pacing(per_chat_interval=0.0, per_chat_per_minute=budget, global_interval=0.0,
                    max_wait=10.0**9)
    result = PacingResult(started=time.monotonic())
    deadline = result.started + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        now = time.time()
        slot = store.reserve_send(chat, now, pacing)
        result.latency_ms.append((time.perf_counter() - began) * 1000)
        if slot is None:
            raise RuntimeError(f"reserve_send refused a slot at {now} (never expected)")
        result.max_ahead_ms = max(result.max_ahead_ms, (slot - now) * 1000)
        result.reservations += 1
    result.finished = time.monotonic()
    return result


def measure_pacing(ctx: SpawnContext, url: str, setup: PacingSetup, processes: int,
                   seconds: float) -> PacingRun:
    open_store(url).close()  # the schema, before the processes race to create it
    chats = chat_names(processes)
    results: list[PacingResult] = run_children(
        ctx, pacing_loop, [(url, chat, seconds, setup.per_chat_per_minute) for chat in chats])
    total = sum(r.reservations for r in results)
    elapsed = max(r.finished for r in results) - min(r.started for r in results)
    latency = [ms for r in results for ms in r.latency_ms]
    return PacingRun(setup.label, processes, total, elapsed, total / elapsed,
                     percentile(latency, 50), percentile(latency, 99),
                     max(r.max_ahead_ms for r in results), setup.waits)


# --- 3. takeover ----------------------------------------------------------------------------


def hold_claims(url: str, lease: float, ready: Connection) -> None:
    """Claim every pair with a lease, say so, then hang until killed (a dead instance)."""
    store = open_store(url)
    chat = chat_names(1)[0]
    claimed, lease_until = 0, 0.0
    while True:
        now = time.time()
        if store.claim_next(chat, now, "doomed", now + lease) is None:
            break
        claimed, lease_until = claimed + 1, now + lease
    ready.send((claimed, lease_until))
    time.sleep(3600)


def survive(url: str, poll: float, expected: int, polling: Barrier,
            report: Queue[Any]) -> None:
    """A running instance: recover_interrupted every ``poll`` s, from a random phase, until it
    has taken over ``expected`` claims; reports when, and after how many polls."""
    try:
        store = open_store(url)
    except BaseException:
        polling.abort()
        raise
    try:
        polling.wait(WAIT_SECONDS)
        time.sleep(random.uniform(0, poll))
        recovered, polls = 0, 0
        while recovered < expected:
            polls += 1
            recovered += store.recover_interrupted((), time.time())
            if recovered < expected:
                time.sleep(poll)
        report.put((time.time(), polls, recovered))
    except BaseException:
        report.put(traceback.format_exc())
        raise
    finally:
        store.close()


@dataclass
class Trial:
    url: str
    lease: float
    survivor: BaseProcess
    holder: BaseProcess  # started once every survivor polls
    ready: Connection  # the holder's report: (pairs claimed, end of the last lease)
    report: Queue[Any]  # the survivor's
    lease_until: float = 0.0
    killed_at: float = 0.0


def prepare_trial(ctx: SpawnContext, url: str, lease: float, poll: float,
                  polling: Barrier) -> Trial:
    """Seed the pairs, start the survivor; the holder is made, not started."""
    store = open_store(url)
    try:
        store.add_deliveries(new_pairs(TAKEOVER_PAIRS, chat_names(1)))
    finally:
        store.close()
    report: Queue[Any] = ctx.Queue()
    ready, sender = ctx.Pipe(duplex=False)
    survivor = ctx.Process(target=survive, args=(url, poll, TAKEOVER_PAIRS, polling, report))
    holder = ctx.Process(target=hold_claims, args=(url, lease, sender))
    survivor.start()
    return Trial(url, lease, survivor, holder, ready, report)


def kill_when_claimed(trials: list[Trial]) -> None:
    """SIGKILL each holder the moment it reports its claims (a crash right after claiming)."""
    waiting = {trial.ready: trial for trial in trials}
    while waiting:
        ready = wait(list(waiting), timeout=WAIT_SECONDS)
        if not ready:
            raise RuntimeError("a holder never reported its claims")
        for connection in ready:
            trial = waiting.pop(cast(Connection, connection))
            held, trial.lease_until = trial.ready.recv()
            trial.killed_at = time.time()
            os.kill(trial.holder.pid or 0, signal.SIGKILL)
            if held != TAKEOVER_PAIRS:
                raise RuntimeError(f"the holder claimed {held} pairs, not {TAKEOVER_PAIRS}")


def measure_takeovers(ctx: SpawnContext, schemas: Schemas, leases: list[float], poll: float,
                      repeat: int) -> list[TakeoverRun]:
    """Every trial at once, each in its own schema: they mostly wait, and this saves a minute.
    The survivors are polling before the holders start claiming."""
    runs = [lease for lease in leases for _ in range(repeat)]
    polling = ctx.Barrier(len(runs) + 1)
    trials = [prepare_trial(ctx, schemas.fresh(), lease, poll, polling) for lease in runs]
    try:
        polling.wait(WAIT_SECONDS)
        for trial in trials:
            trial.holder.start()
        kill_when_claimed(trials)
        return [finish_trial(trial, poll) for trial in trials]
    finally:
        for process in (p for t in trials for p in (t.holder, t.survivor)):
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join(WAIT_SECONDS)


def finish_trial(trial: Trial, poll: float) -> TakeoverRun:
    outcome = trial.report.get(timeout=WAIT_SECONDS + trial.lease)
    if isinstance(outcome, str):
        raise RuntimeError("the survivor failed:\n" + outcome)
    recovered_at, polls, recovered = outcome
    problems = []
    if recovered != TAKEOVER_PAIRS:
        problems.append(f"recovered {recovered}, expected {TAKEOVER_PAIRS}")
    store = open_store(trial.url)
    try:
        counts = store.counts()
    finally:
        store.close()
    uncertain = sum(states.get(UNCERTAIN, 0) for states in counts.values())
    if counts != {chat_names(1)[0]: {UNCERTAIN: TAKEOVER_PAIRS}}:
        problems.append(f"ledger counts after the takeover: {counts}")
    if recovered_at < trial.lease_until:
        problems.append("recovered before the lease ran out")
    return TakeoverRun(trial.lease, poll, recovered_at - trial.killed_at,
                       recovered_at - trial.lease_until, polls, uncertain, problems)


# --- report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def median_of(runs: list[Any], name: str) -> float:
    return statistics.median(getattr(run, name) for run in runs)


def claims_markdown(groups: list[list[ClaimRun]]) -> str:
    lines = ["| engine | processes | pairs | pairs/s | × Telegram's 30/s | claim_next p50 / p99 ms "
             "| mark_sent p50 / p99 ms | empty claims | sent once, no duplicate | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for runs in groups:
        first, rate = runs[0], median_of(runs, "pairs_per_second")
        ok = "✓" if not any(r.problems for r in runs) else "✗ " + "; ".join(
            p for r in runs for p in r.problems)
        lines.append(
            f"| {first.engine} | {first.processes} | {first.pairs:,} | {rate:,.0f} "
            f"| {rate / TELEGRAM_PER_SECOND:.0f}× | {median_of(runs, 'claim_p50_ms'):.2f} / "
            f"{median_of(runs, 'claim_p99_ms'):.2f} | {median_of(runs, 'mark_p50_ms'):.2f} / "
            f"{median_of(runs, 'mark_p99_ms'):.2f} | {median_of(runs, 'empty_claims'):.0f} "
            f"| {ok} | {len(runs)} |")
    return "\n".join(lines)


def pacing_markdown(groups: list[list[PacingRun]]) -> str:
    lines = ["| reserve_send on its own chat | processes | reservations/s | × Telegram's 30/s "
             "| p50 / p99 ms | largest slot − now ms | runs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for runs in groups:
        rate = median_of(runs, "per_second")
        ahead = "(by design)" if runs[0].waits else f"{max(r.max_ahead_ms for r in runs):.1f}"
        lines.append(
            f"| {runs[0].setup} | {runs[0].processes} | {rate:,.0f} "
            f"| {rate / TELEGRAM_PER_SECOND:.0f}× | {median_of(runs, 'p50_ms'):.2f} / "
            f"{median_of(runs, 'p99_ms'):.2f} | {ahead} | {len(runs)} |")
    return "\n".join(lines)


def takeover_markdown(groups: list[list[TakeoverRun]]) -> str:
    lines = ["| lease s | poll s | kill → all 20 recovered s: median (min–max) | expected "
             "| lease end → recovered s: max | uncertain after | polls | ok | runs |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for runs in groups:
        first = runs[0]
        problems = [p for r in runs for p in r.problems]
        lines.append(
            f"| {first.lease:g} | {first.poll:g} | {median_of(runs, 'seconds'):.2f} "
            f"({min(r.seconds for r in runs):.2f}–{max(r.seconds for r in runs):.2f}) "
            f"| {first.lease:g}–{first.lease + first.poll:g} "
            f"| {max(r.after_lease for r in runs):.2f} "
            f"| {'/'.join(str(r.uncertain) for r in runs)} "
            f"| {'/'.join(str(r.polls) for r in runs)} "
            f"| {'✓' if not problems else '✗ ' + '; '.join(problems)} | {len(runs)} |")
    return "\n".join(lines)


def telegram_lines(claims: list[list[ClaimRun]], pacing: list[list[PacingRun]],
                   chats: int) -> str:
    shared = median_of(claims[0], "pairs_per_second")
    per_send_ms = median_of(claims[0], "claim_p50_ms") + median_of(claims[0], "mark_p50_ms")
    channel_rate = TELEGRAM_PER_CHANNEL_MINUTE / 60
    reserve = ", ".join(f"{median_of(runs, 'per_second'):,.0f}/s "
                        f"({median_of(runs, 'per_second') / TELEGRAM_PER_SECOND:.0f}×, "
                        f"budget {'20/min' if runs[0].waits else '10⁹/min'})" for runs in pacing)
    return "\n".join([
        f"Against Telegram's limits, ~{TELEGRAM_PER_SECOND:g} messages/s per bot and "
        f"{TELEGRAM_PER_CHANNEL_MINUTE:g}/min per channel "
        f"({chats} channels: {chats * channel_rate:.2f} messages/s):",
        "",
        f"* ledger work of one send (claim_next + mark_sent), {claims[0][0].processes} "
        f"instances: {shared:,.0f} pairs/s = {shared / TELEGRAM_PER_SECOND:.0f}× the bot-wide "
        f"limit, {shared / (chats * channel_rate):,.0f}× what {chats} channels may receive; "
        f"~{per_send_ms:.1f} ms of database time per send (p50s).",
        f"* pacing reservations (one per send, serialised bot-wide): {reserve} the bot-wide "
        "limit.",
    ])


def environment(server_version: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"commit": git_commit(), "python": platform.python_version(),
            "psycopg": psycopg.__version__, "postgresql": server_version,
            "cpus": os.cpu_count(), "repeat": args.repeat, "instances": args.instances,
            "baseline_repeat": args.baseline_repeat, "pairs": args.pairs, "chats": args.chats,
            "pacing_seconds": args.pacing_seconds, "lease": args.lease, "poll": args.poll,
            "server": "url" if args.url else "throwaway",
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def git_commit() -> str:
    """HEAD, with ``+dirty`` when the state code measured differs from it."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False)

    head = git("rev-parse", "--short=12", "HEAD").stdout.strip() or "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--", "publisher/state.py", "publisher/db.py")
    return head + ("+dirty" if dirty.returncode == 1 else "")


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL server (default: a throwaway cluster)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-repeat", type=int, default=1,
                        help="runs of the comparison rows: 1-process claims (~25 s each on "
                        "PostgreSQL), pacing with a 20/min budget")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=30_000)
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--pacing-seconds", type=float, default=3.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.url and not is_postgres_url(args.url):
        parser.error("--url must be a postgresql:// URL")
    return args


def stage(name: str, started: float) -> None:
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def run_claims(ctx: SpawnContext, schemas: Schemas, args: argparse.Namespace,
               workdir: Path) -> list[list[ClaimRun]]:
    chats = chat_names(args.chats)
    setups: list[tuple[str, int, int, Callable[[int], str]]] = [
        ("PostgreSQL", args.instances, args.repeat, lambda _: schemas.fresh()),
        ("PostgreSQL", 1, args.baseline_repeat, lambda _: schemas.fresh()),
        ("SQLite", 1, args.baseline_repeat,
         lambda run: f"sqlite:///{workdir / f'state-{run}.db'}"),
    ]
    groups = []
    for engine, processes, repeat, make_url in setups:
        started = time.perf_counter()
        groups.append([measure_claims(ctx, make_url(run), engine, processes, args.pairs, chats)
                       for run in range(repeat)])
        stage(f"claims, {engine}, {processes} process(es)", started)
    return groups


def measure(server: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    schemas = Schemas(server)
    workdir = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    try:
        meta = environment(schemas.server_version(), args)
        claims = run_claims(ctx, schemas, args, workdir)
        started = time.perf_counter()
        pacing = [[measure_pacing(ctx, schemas.fresh(), setup, args.instances,
                                  args.pacing_seconds)
                   for _ in range(args.baseline_repeat if setup.comparison else args.repeat)]
                  for setup in PACING_SETUPS]
        stage("pacing", started)
        started = time.perf_counter()
        leases = sorted({args.lease, EXTRA_LEASE})
        takeovers = measure_takeovers(ctx, schemas, leases, args.poll, args.repeat)
        stage("takeover", started)
    finally:
        schemas.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    by_lease = [[t for t in takeovers if t.lease == lease] for lease in leases]
    return {"environment": meta, "claims": claims, "pacing": pacing, "takeover": by_lease}


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    meta = results["environment"]
    return "\n\n".join([
        f"Code {meta['commit']}, Python {meta['python']}, psycopg {meta['psycopg']}, "
        f"PostgreSQL {meta['postgresql']} ({meta['server']} server), {meta['cpus']} CPUs, "
        f"{meta['date']}; medians of the runs in each row's last column.",
        f"Claims: {args.pairs:,} pending pairs over {args.chats} chats; each process "
        "round-robins claim_next + mark_sent until a whole round finds nothing.",
        claims_markdown(results["claims"]),
        f"Pacing: reserve_send as fast as it answers, each process on its own chat, "
        f"{args.pacing_seconds:g} s per run; global interval 0, max_wait 10⁹ s.",
        pacing_markdown(results["pacing"]),
        f"Takeover: {TAKEOVER_PAIRS} claims of a SIGKILLed process, recovered by a survivor "
        f"calling recover_interrupted every {args.poll:g} s (random phase).",
        takeover_markdown(results["takeover"]),
        telegram_lines(results["claims"], results["pacing"], args.chats),
    ])


def as_json(results: dict[str, Any]) -> str:
    def rows(items: list[Any]) -> list[Any]:
        return [rows(item) if isinstance(item, list) else asdict(item) for item in items]

    return json.dumps({"environment": results["environment"], "claims": rows(results["claims"]),
                       "pacing": rows(results["pacing"]), "takeover": rows(results["takeover"])})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with postgres_server(args.url) as server:
        results = measure(server, args)
    print(report(results, args))
    print(as_json(results))
    stage("total", started)
    failed = any(r.problems for group in results["claims"] for r in group) or any(
        r.problems for group in results["takeover"] for r in group)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
