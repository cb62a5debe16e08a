"""HTTP serving: ``publisher serve`` beside nginx, same run, same feeds folder.

Builds the feeds of a generated corpus, starts ``publisher serve`` and (where installed) nginx
on free loopback ports with a temporary configuration of its own (no root needed), and
measures ``/all.rss.xml``:

* throughput and latency at 50 concurrent clients with ``ab`` (a new connection per request,
  as a feed reader polling does) and ``wrk`` (keep-alive), for a plain, a gzip and a 304
  (``If-None-Match``) request: requests per second, p50 and p99;
* slowloris: 300 clients holding half-sent requests; the time a normal request takes
  meanwhile, and when the server cut the slow clients off;
* idle keep-alive connections: when the server closes them.

    python benchmarks/httpbench.py [--requests 5000] [--repeat 3] [--articles 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 50
SLOW_CLIENTS = 300
IDLE_CLIENTS = 20
PATH = "/all.rss.xml"
NGINX_CONF = """\
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ application/rss+xml xml; application/feed+json json; text/html html; }}
    gzip on;
    gzip_min_length 256;
    gzip_types application/rss+xml application/feed+json;
    gzip_vary on;
    keepalive_timeout 15s;
    client_header_timeout 10s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@dataclass
class Load:
    """One load-test result."""

    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    error: str = ""  # the run did not complete: why


@dataclass
class Results:
    load: dict[tuple[str, str, str], list[Load]] = field(default_factory=dict)
    extra: dict[tuple[str, str], str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_feeds(work: Path, articles: int) -> Path:
    corpus, feeds = work / "corpus", work / "feeds"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "generate.py"), "--count",
                    str(articles), "--seed", "1", "--out", str(corpus)], check=True,
                   stdout=subprocess.DEVNULL)
    (work / "config.toml").write_text(
        f'[feeds]\ndir = "{feeds}"\n[state]\nurl = "sqlite:///{work}/state.db"\n'
    )
    subprocess.run([sys.executable, "-m", "publisher", "build", "-q", "-c",
                    str(work / "config.toml"), "--articles", str(corpus)], check=True)
    return feeds


@contextlib.contextmanager
def publisher_serve(work: Path) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "publisher", "serve", "-c", str(work / "config.toml"),
         "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield line.split(" at ")[1].split()[0].rstrip("/")
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def nginx(work: Path, root: Path) -> Iterator[str | None]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                       else None)
    if binary is None:
        yield None
        return
    folder = work / "nginx"
    folder.mkdir(exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=folder, port=port, root=root))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)],
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def etag_of(url: str) -> str:
    return httpx.head(url + PATH, headers={"Accept-Encoding": "identity"}).headers["etag"]


def run_ab(url: str, requests: int, headers: list[str]) -> Load:
    # -r: a reset connection is counted as a failed request instead of ending the run.
    command = ["ab", "-q", "-r", "-n", str(requests), "-c", str(CONCURRENCY)]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run([*command, url + PATH], capture_output=True, text=True)
    output = done.stdout
    if done.returncode != 0 or "Requests per second" not in output:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Load(rps=0.0, p50_ms=0.0, p99_ms=0.0, failed=requests, error=reason)
    return Load(
        rps=_number(r"Requests per second:\s+([\d.]+)", output),
        p50_ms=_number(r"^\s+50%\s+(\d+)", output),
        p99_ms=_number(r"^\s+99%\s+(\d+)", output),
        failed=int(_number(r"Failed requests:\s+(\d+)", output)),
    )


def _number(pattern: str, output: str) -> float:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in:\n{output}")
    return float(match.group(1))


def run_wrk(url: str, seconds: int, headers: list[str]) -> Load:
    command = ["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run([*command, url + PATH], capture_output=True, text=True)
    output = done.stdout
    if done.returncode != 0 or "Requests/sec" not in output:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Load(rps=0.0, p50_ms=0.0, p99_ms=0.0, failed=0, error=reason)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return Load(
        rps=_number(r"Requests/sec:\s+([\d.]+)", output),
        p50_ms=_wrk_ms(re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", output, re.M)),
        p99_ms=_wrk_ms(re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", output, re.M)),
        failed=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def _wrk_ms(match: re.Match[str] | None) -> float:
    assert match is not None
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def kinds(url: str) -> dict[str, list[str]]:
    return {
        "plain": [],
        "gzip": ["Accept-Encoding: gzip"],
        "304": [f"If-None-Match: {etag_of(url)}"],
    }


def measure_load(servers: dict[str, str], args: argparse.Namespace, results: Results) -> None:
    for _ in range(args.repeat):
        for name, url in servers.items():  # interleaved: both see the same machine load
            for kind, headers in kinds(url).items():
                results.load.setdefault((name, "ab", kind), []).append(
                    run_ab(url, args.requests, headers))
                if shutil.which("wrk"):
                    results.load.setdefault((name, "wrk", kind), []).append(
                        run_wrk(url, args.wrk_seconds, headers))


def slowloris(name: str, url: str, results: Results, wait_for_cut: float) -> None:
    """300 clients each send half a request, then a normal request is timed, 20 times."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection((host, int(port)), timeout=10)
            slow.append(sock)
            sock.sendall(b"GET /all.rss.xml HTTP/1.1\r\nHost: bench\r\n")  # never finished
        started = time.monotonic()
        times = []
        for _ in range(20):
            begin = time.monotonic()
            status = timed_get(host, int(port))
            times.append(time.monotonic() - begin)
            assert status == 200, status
        results.extra[(name, "normal request beside 300 slow clients (median / max)")] = (
            f"{statistics.median(times) * 1000:.1f} ms / {max(times) * 1000:.1f} ms")
        cut = seconds_until_closed(slow, started, wait_for_cut)
        results.extra[(name, "300 slow clients cut off after")] = cut
    finally:
        for sock in slow:
            sock.close()


def timed_get(host: str, port: int) -> int:
    """One request on a new connection, as a feed reader makes it."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", PATH, headers={"Accept-Encoding": "gzip"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def seconds_until_closed(socks: list[socket.socket], started: float, limit: float) -> str:
    """When the server closed the last of ``socks`` (reading what it sent first)."""
    last = None
    with selectors.DefaultSelector() as selector:  # epoll: no limit on descriptor numbers
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() - started < limit:
            for key, _ in selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    last = time.monotonic() - started
        pending = len(selector.get_map())
    if pending:
        return f"{pending} of {len(socks)} still open after {limit:.0f} s"
    return f"{last:.1f} s"


def idle_close(name: str, url: str, results: Results, limit: float) -> None:
    """Keep-alive connections after one request each: when does the server close them?"""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for _ in range(IDLE_CLIENTS):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"HEAD /all.rss.xml HTTP/1.1\r\nHost: bench\r\n\r\n")
        sock.recv(65536)
        socks.append(sock)
    try:
        started = time.monotonic()
        results.extra[(name, "idle keep-alive connections closed after")] = (
            seconds_until_closed(socks, started, limit))
    finally:
        for sock in socks:
            sock.close()


def report(results: Results, names: list[str]) -> str:
    lines = [f"| tool | request | {' | '.join(names)} |"
             + (" publisher / nginx |" if len(names) == 2 else ""),
             "|---|---|" + "---:|" * (len(names) + (1 if len(names) == 2 else 0))]
    for tool in ("ab", "wrk"):
        for kind in ("plain", "gzip", "304"):
            cells, rates = [], []
            for name in names:
                runs = results.load.get((name, tool, kind))
                if not runs:
                    cells.append("–")
                    continue
                aborted = [r.error for r in runs if r.error]
                runs = [r for r in runs if not r.error]
                if not runs:
                    cells.append(f"every run aborted ({aborted[0]})")
                    continue
                rps = statistics.median(r.rps for r in runs)
                rates.append(rps)
                cells.append(
                    f"{rps:,.0f} req/s, p50 {statistics.median(r.p50_ms for r in runs):.1f} ms,"
                    f" p99 {statistics.median(r.p99_ms for r in runs):.1f} ms"
                    + (f", {sum(r.failed for r in runs)} failed"
                       if any(r.failed for r in runs) else "")
                    + (f", {len(aborted)} runs aborted ({aborted[0]})" if aborted else ""))
            ratio = []
            if len(names) == 2:
                ratio = [f"{rates[0] / rates[1]:.0%}" if len(rates) == 2 else "–"]
            if cells.count("–") < len(cells):
                lines.append(f"| {tool} | {kind} | " + " | ".join(cells + ratio) + " |")
    lines.append("")
    lines.append(f"| scenario | {' | '.join(names)} |")
    lines.append("|---|" + "---|" * len(names))
    for scenario in dict.fromkeys(key[1] for key in results.extra):
        cells = [results.extra.get((name, scenario), "–") for name in names]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="ab requests per run")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each load (medians)")
    parser.add_argument("--articles", type=int, default=2000, help="generated corpus size")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    if not shutil.which("ab"):
        sys.exit("ab (apache2-utils) is needed")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="httpbench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # nginx's workers (nobody, when started as root) read the feeds
    feeds = build_feeds(work, args.articles)
    size = (feeds / "all.rss.xml").stat().st_size
    print(f"{PATH}: {size:,} bytes; {args.repeat} runs of ab -n {args.requests} "
          f"-c {CONCURRENCY} and wrk -t2 -c{CONCURRENCY} -d{args.wrk_seconds}s; medians")
    results = Results()
    with publisher_serve(work) as ours, nginx(work, feeds) as theirs:
        servers = {"publisher serve": ours, **({"nginx": theirs} if theirs else {})}
        measure_load(servers, args, results)
        for name, url in servers.items():
            slowloris(name, url, results, wait_for_cut=20)
        for name, url in servers.items():
            idle_close(name, url, results, limit=30)
    print(textwrap.dedent(report(results, list(servers))))


if __name__ == "__main__":
    main()
