"""Benchmark ``publisher build`` and ``publisher push`` against a floor and a naive baseline.

    python benchmarks/run.py --sizes 1000,10000,100000 --repeat 3 --workdir /tmp/bench

Generates missing corpora (``generate.py``), snapshots the code under test (``--code HEAD``:
``git archive`` of that commit, so concurrent edits in the work tree do not leak in; or
``--code worktree``), runs every scenario in a fresh process, and prints a Markdown table
(also written, with the raw samples, to ``<workdir>/results.md`` and ``results.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pushbench
import scenarios
from generate import generate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable


@dataclass
class Sample:
    """One process (or one in-process step): wall seconds, CPU seconds, peak RSS."""

    seconds: float
    cpu: float
    rss_mb: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    size: int
    scenario: str
    samples: list[Sample]
    note: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return max(s.rss_mb for s in self.samples)


@dataclass
class Bench:
    workdir: Path
    code: Path  # PYTHONPATH for the children ("" = the installed publisher)
    commit: str  # what is measured
    repeat: int
    large_size: int
    large_repeat: int
    rows: list[Row] = field(default_factory=list)

    def repeats(self, size: int) -> int:
        """Slow scenarios (naive, CLI builds, push) run fewer times on large corpora."""
        return self.large_repeat if size >= self.large_size else self.repeat

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **extra}
        if str(self.code):
            env["PYTHONPATH"] = str(self.code)
        return env


# --- processes ----------------------------------------------------------------------------------


def run_process(cmd: list[str], env: dict[str, str], cwd: Path,
                on_start: Callable[[int, float], None] | None = None) -> tuple[Sample, str]:
    """Run ``cmd`` to completion; wall time, CPU and ru_maxrss of exactly that process."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if on_start is not None:
        on_start(process.pid, started)
    tree = TreeSampler(process.pid)
    tree.start()
    stdout, stderr = _drain(process)
    tree.stop()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1) or "Traceback (most recent call last)" in stderr:
        raise RuntimeError(f"{' '.join(cmd)} exited with {process.returncode}:\n{stderr[-3000:]}")
    own_cpu = usage.ru_utime + usage.ru_stime
    sample = Sample(seconds, own_cpu + tree.descendants_cpu, max(usage.ru_maxrss / 1024,
                                                                   tree.peak_mb))
    sample.info = {"own_cpu": own_cpu, "own_rss_mb": usage.ru_maxrss / 1024,
                   "tree_peak_mb": tree.peak_mb, "descendants_cpu": tree.descendants_cpu}
    return sample, stdout


class TreeSampler(threading.Thread):
    """Polls /proc: peak of the summed RSS of a process and all its descendants, and the last
    seen CPU of each descendant (worker processes that ``wait4`` would not account for)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self._cpu: dict[int, float] = {}
        self._done = threading.Event()

    @property
    def descendants_cpu(self) -> float:
        return sum(cpu for pid, cpu in self._cpu.items() if pid != self.pid)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            total = 0.0
            for pid in _tree(self.pid):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += _rss_mb(pid)
                    self._cpu[pid] = pushbench.cpu_seconds(pid)
            self.peak_mb = max(self.peak_mb, total)


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _drain(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Both pipes to the end without deadlock, leaving the process for ``wait4`` to reap."""
    chunks: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=name, p=pipe: chunks.__setitem__(n, p.read()))
               for name, pipe in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return chunks["out"], chunks["err"]


def child_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def publisher_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "publisher", *args]


# --- setup --------------------------------------------------------------------------------------


def snapshot_code(workdir: Path, ref: str) -> tuple[Path, str]:
    """``git archive`` of ``ref`` (publisher/ and the stand-in), and its commit.

    The snapshot is byte-compiled, as ``pip install`` does: with PYTHONDONTWRITEBYTECODE set
    (some CI images and containers set it) every run would otherwise compile the package
    again, which no installed publisher does. ``worktree``: no snapshot (''), the installed
    publisher with uncommitted edits (byte-compiled in place the same way).
    """
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse",
                             "HEAD" if ref == "worktree" else ref],
                            check=True, capture_output=True, text=True).stdout.strip()
    if ref == "worktree":
        compile_package(REPO / "publisher")
        return Path(""), commit + "+worktree"
    target = workdir / f"code-{commit[:12]}"
    if not target.exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "publisher",
             *standin_paths(commit)], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
        staging.rename(target)
    compile_package(target / "publisher")
    return target, commit


# The stand-in Bot API and its spec, wherever a commit keeps them: the package tests/standin/
# now, tests/botapi_standin.py with tests/data/ before.
STANDIN_PATHS = ("tests/standin", "tests/botapi_standin.py", "tests/data")


def standin_paths(commit: str) -> list[str]:
    """Those of ``STANDIN_PATHS`` that ``commit`` has."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", commit, "--",
                             *STANDIN_PATHS], check=True, capture_output=True, text=True).stdout
    return listed.split()


def compile_package(folder: Path) -> None:
    import compileall

    if not compileall.compile_dir(folder, quiet=1):
        raise RuntimeError(f"could not byte-compile {folder}")


def ensure_corpus(workdir: Path, size: int, seed: int) -> Path:
    corpus = workdir / f"corpus-{size}-seed{seed}"
    for stale in corpus.glob(f"{scenarios.EXTRA_PREFIX}*"):
        stale.unlink()
    if not corpus.exists():
        staging = corpus.with_name(corpus.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        print(f"generating {size} files in {corpus} ...", file=sys.stderr, flush=True)
        generate(size, seed, staging)
        staging.rename(corpus)
    return corpus


def build_config(run_dir: Path, corpus: Path, name: str) -> Path:
    path = run_dir / f"{name}.toml"
    path.write_text(
        f'[articles]\ndir = "{corpus}"\n'
        f'[feeds]\ndir = "{run_dir / ("feeds-" + name)}"\n'
        'base_url = "https://feeds.example.org/"\n'
        f'[state]\nurl = "sqlite:///{run_dir / (name + "-state.db")}"\n',
        encoding="utf-8",
    )
    return path


def forget_state(run_dir: Path, name: str) -> None:
    """Cold means cold: no feeds and no state database (a persistent parse cache lives there)."""
    shutil.rmtree(run_dir / f"feeds-{name}", ignore_errors=True)
    for path in run_dir.glob(f"{name}-state.db*"):
        path.unlink()


def warm_page_cache(corpus: Path) -> None:
    """Read the corpus once so every scenario starts with the same (warm) OS page cache."""
    for path in scenarios.article_paths(corpus):
        path.read_bytes()


# --- scenarios ----------------------------------------------------------------------------------


def measure_floor(bench: Bench, size: int, corpus: Path) -> Row:
    cmd = [PYTHON, str(HERE / "scenarios.py"), "floor", "--corpus", str(corpus)]
    samples = [_child_sample(bench, cmd) for _ in range(bench.repeat)]
    return Row(size, "floor: read + CSafeLoader parse", samples)


def measure_naive(bench: Bench, size: int, corpus: Path, run_dir: Path) -> Row:
    out = run_dir / "feeds-naive"
    cmd = [PYTHON, str(HERE / "scenarios.py"), "naive", "--corpus", str(corpus), "--out",
           str(out)]
    samples = []
    for _ in range(bench.repeats(size)):
        shutil.rmtree(out, ignore_errors=True)
        samples.append(_child_sample(bench, cmd))
    return Row(size, "naive: yaml.safe_load + feedgen, no cache", samples)


def _child_sample(bench: Bench, cmd: list[str]) -> Sample:
    sample, stdout = run_process(cmd, bench.env(), bench.workdir)
    sample.info = {**sample.info, **child_json(stdout)}
    return sample


def measure_cli_builds(bench: Bench, size: int, corpus: Path, run_dir: Path) -> list[Row]:
    """`publisher build` as a user runs it: a new process each time."""
    config = build_config(run_dir, corpus, "cli")
    cmd = publisher_cmd("build", "-q", "-c", str(config))
    count = bench.repeats(size)
    cold = []
    for _ in range(count):
        forget_state(run_dir, "cli")
        cold.append(run_process(cmd, bench.env(), bench.workdir)[0])
    warm = [run_process(cmd, bench.env(), bench.workdir)[0] for _ in range(count)]
    plus_one = []
    with _extra_files(corpus) as add:
        for index in range(count):
            add(index)
            plus_one.append(run_process(cmd, bench.env(), bench.workdir)[0])
    note = "new process: the in-memory cache is gone, so this is a cold load"
    return [
        Row(size, "`publisher build` cold (no feeds, no state db)", cold),
        Row(size, "`publisher build` warm, CLI (nothing changed)", warm, note),
        Row(size, "`publisher build` +1 file, CLI", plus_one, note),
    ]


@contextlib.contextmanager
def _extra_files(corpus: Path) -> Iterator[Callable[[int], Path]]:
    added: list[Path] = []
    try:
        yield lambda index: added.append(scenarios.extra_article(corpus, index)) or added[-1]
    finally:
        for path in added:
            path.unlink(missing_ok=True)


def measure_library(bench: Bench, size: int, corpus: Path, run_dir: Path) -> list[Row]:
    """One long-lived process building again and again, as `publisher run` does."""
    config = build_config(run_dir, corpus, "lib")
    forget_state(run_dir, "lib")
    cmd = [PYTHON, str(HERE / "scenarios.py"), "inproc", "--config", str(config), "--repeat",
           str(bench.repeat)]
    process, stdout = run_process(cmd, bench.env(), bench.workdir)
    result = child_json(stdout)
    rss = process.rss_mb

    def samples(values: list[float]) -> list[Sample]:
        return [Sample(value, float("nan"), rss) for value in values]

    note = f"in one process ({result['mode']}); peak RSS is the whole process's"
    return [
        Row(size, "library build cold (first call in the process)", samples([result["cold"]]),
            note),
        Row(size, "library build warm (same process, nothing changed)",
            samples(result["warm_all"]), note),
        Row(size, "library build +1 file (same process)", samples(result["plus_one_all"]), note),
    ]


def measure_push(bench: Bench, size: int, corpus: Path, run_dir: Path) -> list[Row]:
    """`publisher push` with exactly one new article; CPU until the first request leaves."""
    probe = pushbench.Probe()
    standin = pushbench.probing_standin(_tests_dir(bench), probe)
    with standin:
        config = pushbench.push_config(run_dir, corpus, standin.base_url)
        seed_cmd = [PYTHON, str(HERE / "pushbench.py"), "seed", "--config", str(config)]
        seeded = int(run_process(seed_cmd, bench.env(), bench.workdir)[1].strip())
        env = bench.env(TELEGRAM_BOT_TOKEN=pushbench.BENCH_TOKEN)
        cmd = publisher_cmd("push", "-c", str(config))
        _warm_up_push(cmd, env, bench.workdir)
        samples = []
        with _extra_files(corpus) as add:
            for index in range(bench.repeats(size)):
                add(index)
                sample, stdout = run_process(cmd, env, bench.workdir, on_start=probe.watch)
                samples.append(_push_sample(sample, stdout, probe, seeded))
    return [
        Row(size, "`publisher push`, 1 new article: to first sendPhoto",
            [Sample(s.info["wall_to_message"], s.info["cpu_to_message"], s.rss_mb, s.info)
             for s in samples], f"ledger seeded with {seeded} sent articles"),
        Row(size, "`publisher push`, 1 new article: whole process", samples),
    ]


def _warm_up_push(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    """One untimed push with nothing new: whatever a push caches (a parse cache, a "planned"
    mark) is in place, as in steady state. It must send nothing."""
    sent, new = pushbench.parse_summary(run_process(cmd, env, cwd)[1])
    if (sent, new) != (0, 0):
        raise RuntimeError(f"the warm-up push sent {sent} with {new} new; the seed is wrong")


def _push_sample(sample: Sample, stdout: str, probe: pushbench.Probe, seeded: int) -> Sample:
    sent, new = pushbench.parse_summary(stdout)
    if (sent, new) != (1, 1) or probe.first_message is None or probe.first_request is None:
        raise RuntimeError(f"push did not send exactly one new article: {stdout!r} "
                           f"{probe.methods}")
    sample.info = {
        **sample.info,
        "cpu_to_first_request": probe.first_request[0],
        "wall_to_first_request": probe.first_request[1],
        "cpu_to_message": probe.first_message[0],
        "wall_to_message": probe.first_message[1],
        "methods": list(probe.methods),
        "ledger_rows": seeded,
    }
    return sample


def _tests_dir(bench: Bench) -> Path:
    snapshot = bench.code / "tests"
    return snapshot if str(bench.code) and snapshot.is_dir() else REPO / "tests"


# --- report -------------------------------------------------------------------------------------


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}×" if base else "–"


def markdown(rows: list[Row]) -> str:
    lines = ["| files | scenario | median s | CPU s | peak RSS MB | × floor | × floor (CPU) "
             "| × naive | runs |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        floor = _base(rows, row.size, "floor")
        floor_cpu = _base(rows, row.size, "floor", cpu=True)
        naive = _base(rows, row.size, "naive")
        has_cpu = row.cpu == row.cpu  # NaN for steps inside one process
        cpu = f"{row.cpu:.2f}" if has_cpu else "–"
        lines.append(
            f"| {row.size:,} | {row.scenario} | {row.seconds:.3f} | {cpu} | {row.rss_mb:.0f} | "
            f"{ratio(row.seconds, floor)} | {ratio(row.cpu, floor_cpu) if has_cpu else '–'} | "
            f"{ratio(row.seconds, naive)} | {len(row.samples)} |"
        )
    return "\n".join(lines)


def push_markdown(rows: list[Row]) -> str:
    lines = ["| files | CPU s to getMe | CPU s to sendPhoto | wall s to sendPhoto | "
             "whole process s | peak RSS MB |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if not row.scenario.endswith("whole process"):
            continue
        info = [s.info for s in row.samples]
        lines.append(
            f"| {row.size:,} | {_median(info, 'cpu_to_first_request'):.2f} | "
            f"{_median(info, 'cpu_to_message'):.2f} | {_median(info, 'wall_to_message'):.2f} | "
            f"{row.seconds:.2f} | {row.rss_mb:.0f} |"
        )
    return "\n".join(lines)


def _median(infos: list[dict[str, Any]], key: str) -> float:
    return statistics.median(info[key] for info in infos)


def _base(rows: list[Row], size: int, prefix: str, cpu: bool = False) -> float | None:
    return next((r.cpu if cpu else r.seconds for r in rows
                 if r.size == size and r.scenario.startswith(prefix)), None)


def environment(bench: Bench, ref: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return {"code": ref, "commit": bench.commit, "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu": cpu, "repeat": bench.repeat,
            "large_size": bench.large_size, "large_repeat": bench.large_repeat,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def write_report(bench: Bench, meta: dict[str, Any]) -> str:
    text = "\n\n".join([
        f"Code {meta['code']} ({meta['commit'][:12]}), Python {meta['python']}, "
        f"{meta['cpus']} CPUs ({meta['cpu']}), {meta['date']}; medians of {meta['repeat']} runs "
        f"({meta['large_repeat']} for naive, CLI builds and push at ≥ {meta['large_size']:,} "
        "files); warm OS page cache.",
        markdown(bench.rows),
        "Push (one new article, ledger already holds the rest):",
        push_markdown(bench.rows),
    ])
    (bench.workdir / "results.md").write_text(text + "\n", encoding="utf-8")
    data = {"environment": meta, "rows": [
        {**asdict(row), "median_seconds": row.seconds, "median_cpu": row.cpu,
         "peak_rss_mb": row.rss_mb,
         "ratio_floor": _ratio_value(row, bench.rows, "floor"),
         "ratio_naive": _ratio_value(row, bench.rows, "naive")}
        for row in bench.rows]}
    (bench.workdir / "results.json").write_text(
        json.dumps(data, indent=2, default=str).replace("NaN", "null"), encoding="utf-8")
    return text


def _ratio_value(row: Row, rows: list[Row], prefix: str) -> float | None:
    base = _base(rows, row.size, prefix)
    return row.seconds / base if base else None


def rerender(workdir: Path) -> str:
    data = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
    meta = data["environment"]
    bench = Bench(workdir, Path(""), meta["commit"], meta["repeat"], meta["large_size"],
                  meta["large_repeat"])
    for row in data["rows"]:
        samples = [Sample(**{**s, "cpu": float("nan") if s["cpu"] is None else s["cpu"]})
                   for s in row["samples"]]
        bench.rows.append(Row(row["size"], row["scenario"], samples, row["note"]))
    return write_report(bench, meta)


# --- main ---------------------------------------------------------------------------------------


def run_size(bench: Bench, size: int, seed: int, skip: set[str]) -> None:
    corpus = ensure_corpus(bench.workdir, size, seed)
    run_dir = bench.workdir / f"run-{size}"
    run_dir.mkdir(parents=True, exist_ok=True)
    warm_page_cache(corpus)
    steps: list[tuple[str, Callable[[], Row | list[Row]]]] = [
        ("floor", lambda: measure_floor(bench, size, corpus)),
        ("naive", lambda: measure_naive(bench, size, corpus, run_dir)),
        ("cli", lambda: measure_cli_builds(bench, size, corpus, run_dir)),
        ("library", lambda: measure_library(bench, size, corpus, run_dir)),
        ("push", lambda: measure_push(bench, size, corpus, run_dir)),
    ]
    for name, step in steps:
        if name in skip:
            continue
        started = time.perf_counter()
        result = step()
        bench.rows.extend(result if isinstance(result, list) else [result])
        print(f"[{size:,}] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large-size", type=int, default=100_000,
                        help="from this corpus size on, slow scenarios use --large-repeat")
    parser.add_argument("--large-repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--code", default="HEAD",
                        help="git ref to snapshot and measure, or 'worktree'")
    parser.add_argument("--skip", default="", help="comma-separated: floor,naive,cli,library,push")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render <workdir>/results.json; measure nothing")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.report_only:
        print(rerender(workdir))
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir, *snapshot_code(workdir, args.code), args.repeat, args.large_size,
                  args.large_repeat)
    skip = {name for name in args.skip.split(",") if name}
    meta = environment(bench, args.code)
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(bench, size, args.seed, skip)
        write_report(bench, meta)  # partial results survive a crash at a larger size
    print(write_report(bench, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
