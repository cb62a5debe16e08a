"""A throwaway PostgreSQL cluster for tests and CI (standard library only).

    python tests/pgcluster.py start DIR [--port N]   # prints postgresql://publisher@127.0.0.1:PORT/publisher_test
    python tests/pgcluster.py url DIR                # the URL of the cluster running in DIR
    python tests/pgcluster.py stop DIR               # fast shutdown; nothing to do is not an error

``start`` runs initdb in ``DIR/data`` when there is no cluster yet (superuser ``publisher``,
trust authentication, UTF8), then starts the server on 127.0.0.1 only, on a free port (or
``--port``), with its unix socket in ``DIR/run``, its log in ``DIR/server.log`` and settings
that trade durability for speed (fsync, synchronous_commit and full_page_writes off). It
waits until the server accepts connections and creates the database ``publisher_test``.

Binaries: ``initdb``, ``pg_ctl`` and ``postgres`` from PATH, else the newest
``/usr/lib/postgresql/*/bin`` (Debian). They refuse to run as root, so as root they run as
the ``postgres`` system user (created when missing), which then owns DIR: choose a DIR that
user can reach (under /tmp, not under /root).

From Python: ``start_cluster(directory, port=None) -> url``, ``stop_cluster(directory)``,
``cluster_url(directory) -> url | None``, ``find_bindir() -> Path | None``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SUPERUSER = "publisher"
DATABASE = "publisher_test"
HOST = "127.0.0.1"
SYSTEM_USER = "postgres"  # who runs the server when we are root
SYSTEM_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
DEBIAN_ROOT = Path("/usr/lib/postgresql")
BINARIES = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT = 60  # seconds pg_ctl waits for the server
FREE_PORT_ATTEMPTS = 5  # a free port can be taken by someone else before the server binds it
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes, with its terminating NUL

SETTINGS = {
    "listen_addresses": HOST,
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "timezone": "UTC",
    "log_timezone": "UTC",
}
SETTINGS_MARK = "# -- pgcluster.py: throwaway test server --"


class ClusterError(RuntimeError):
    """The cluster could not be created, started, found or stopped."""


# -- binaries ---------------------------------------------------------------------------------


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: PATH first, else the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        # Resolved: PATH often holds symlinks, and the real folder also has psql.
        bindir = Path(found).resolve().parent
        if _complete(bindir):
            return bindir
    if DEBIAN_ROOT.is_dir():
        versions = sorted(
            (path for path in DEBIAN_ROOT.iterdir() if _version_key(path) != (-1,)),
            key=_version_key,
            reverse=True,
        )
        for version in versions:
            if _complete(version / "bin"):
                return version / "bin"
    return None


def _require_bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        raise ClusterError(
            "PostgreSQL server binaries not found: no initdb, pg_ctl and postgres on PATH "
            f"nor in {DEBIAN_ROOT}/*/bin (Debian: apt-get install postgresql)"
        )
    return bindir


def _psql(bindir: Path) -> str:
    candidate = bindir / "psql"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("psql")
    if found:
        return found
    raise ClusterError(f"psql not found in {bindir} nor on PATH")


# -- running as the right user ----------------------------------------------------------------


def _tool(name: str, *, required: bool = True) -> str:
    """A system tool, also looked for in the sbin folders a normal user's PATH may lack."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SYSTEM_PATH])
    found = shutil.which(name, path=path)
    if found is None and required:
        raise ClusterError(f"{name} not found")
    return found or ""


def _as_root() -> bool:
    return os.geteuid() == 0


def _system_user() -> pwd.struct_passwd:
    """The ``postgres`` account, created as a system user when missing."""
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    _run(
        [_tool("useradd"), "--system", "--user-group", "--no-create-home",
         "--home-dir", "/var/lib/postgresql", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        what=f"creating the system user {SYSTEM_USER}",
    )
    return pwd.getpwnam(SYSTEM_USER)


def _as_server_user(command: Sequence[str]) -> list[str]:
    """``command`` as the user that may run the server: ourselves, or postgres when root."""
    if not _as_root():
        return list(command)
    if _tool("runuser", required=False):
        return [_tool("runuser"), "-u", SYSTEM_USER, "--", *command]
    if _tool("setpriv", required=False):
        return [_tool("setpriv"), f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
                "--init-groups", "--", *command]
    raise ClusterError(f"running as root, and neither runuser nor setpriv to become {SYSTEM_USER}")


def _environment() -> dict[str, str]:
    """Our environment without libpq's PG* variables, messages in English."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(command: Sequence[str], *, what: str, cwd: Path | None = None, input: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(command), cwd=cwd, env=_environment(), input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{what}: {exc}") from None
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip() or "no output")
        raise ClusterError(f"{what} failed (exit {result.returncode}): {output}")
    return result


# -- layout -----------------------------------------------------------------------------------


def _data(directory: Path) -> Path:
    return directory / "data"


def _sockets(directory: Path) -> Path:
    return directory / "run"


def _log(directory: Path) -> Path:
    return directory / "server.log"


def url_for(port: int) -> str:
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/{DATABASE}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _running_port(directory: Path) -> int | None:
    """The port of the server running in ``directory`` (from its postmaster.pid), or None."""
    try:
        lines = (_data(directory) / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file left by a crash
    except PermissionError:
        pass  # alive, someone else's
    return port


def cluster_url(directory: Path) -> str | None:
    """The URL of the cluster running in ``directory``, or None."""
    port = _running_port(Path(directory).absolute())
    return None if port is None else url_for(port)


# -- start and stop ---------------------------------------------------------------------------


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _check_path(directory: Path) -> None:
    sockets = _sockets(directory)
    if len(os.fsencode(sockets / ".s.PGSQL.65535")) > SOCKET_PATH_MAX:
        raise ClusterError(
            f"{directory} is too long a path for the server's unix socket "
            f"(at most {SOCKET_PATH_MAX - len('/run/.s.PGSQL.65535')} bytes): choose a shorter one"
        )
    if any(char in str(sockets) for char in ',"\n'):
        raise ClusterError(f"{directory}: a cluster folder must not contain a comma, \" or newline")


def _initdb(bindir: Path, directory: Path) -> None:
    sockets = _sockets(directory)
    sockets.mkdir(exist_ok=True)
    if _as_root():
        account = _system_user()
        for path in (directory, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        try:
            _run(_as_server_user([_tool("test"), "-w", str(directory), "-a", "-x", str(directory)]),
                 what="checking access", cwd=Path("/"))
        except ClusterError:
            raise ClusterError(
                f"{directory} is not reachable by the {SYSTEM_USER} user that runs the server "
                "when we are root (a parent folder is private?): choose a folder under /tmp"
            ) from None
    _run(
        _as_server_user([
            str(bindir / "initdb"), "--pgdata", str(_data(directory)), "--username", SUPERUSER,
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync",
        ]),
        what="initdb", cwd=directory,
    )
    settings = {**SETTINGS, "unix_socket_directories": str(sockets)}
    with open(_data(directory) / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\n{SETTINGS_MARK}\n")
        conf.writelines(f"{name} = {_quoted(value)}\n" for name, value in settings.items())


def _log_size(directory: Path) -> int:
    try:
        return _log(directory).stat().st_size
    except OSError:
        return 0


def _log_since(directory: Path, offset: int) -> str:
    try:
        with open(_log(directory), "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _start_server(bindir: Path, directory: Path, port: int) -> None:
    offset = _log_size(directory)
    command = _as_server_user([
        str(bindir / "pg_ctl"), "start", "--pgdata", str(_data(directory)),
        "--log", str(_log(directory)), "--wait", "--timeout", str(START_TIMEOUT), "--silent",
        "-o", f"-p {port}",
    ])
    try:
        _run(command, what=f"starting the server on port {port}", cwd=directory,
             timeout=START_TIMEOUT + 30)
    except ClusterError as exc:
        log = _log_since(directory, offset)
        raise ClusterError(f"{exc}\n{_log(directory)}:\n{log}" if log else str(exc)) from None


def _create_database(bindir: Path, port: int) -> None:
    # Over TCP on purpose: proves the URL we print works.
    sql = (
        f"SELECT 'CREATE DATABASE {DATABASE}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
    )
    _run(
        [_psql(bindir), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-f", "-",
         "-d", f"postgresql://{SUPERUSER}@{HOST}:{port}/postgres?connect_timeout=10"],
        what=f"creating the database {DATABASE}", input=sql, timeout=60,
    )


def start_cluster(directory: Path, port: int | None = None) -> str:
    """Create (if needed) and start the cluster in ``directory``; its URL, once it accepts
    connections. Already running: its URL (an error if it runs on another port than ``port``).
    """
    directory = Path(directory).absolute()
    bindir = _require_bindir()
    running = _running_port(directory)
    if running is not None:
        if port is not None and port != running:
            raise ClusterError(f"the cluster in {directory} already runs on port {running}")
        _create_database(bindir, running)
        return url_for(running)
    _check_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not (_data(directory) / "PG_VERSION").exists():
        _initdb(bindir, directory)
    attempts = 1 if port is not None else FREE_PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else _free_port()
        offset = _log_size(directory)
        try:
            _start_server(bindir, directory, chosen)
        except ClusterError:
            taken = "Address already in use" in _log_since(directory, offset)
            if taken and attempt < attempts:
                continue
            raise
        _create_database(bindir, chosen)
        return url_for(chosen)
    raise AssertionError("unreachable")


def stop_cluster(directory: Path) -> None:
    """Stop the cluster in ``directory`` (fast shutdown); nothing to do when none runs."""
    directory = Path(directory).absolute()
    if _running_port(directory) is None:
        return
    bindir = _require_bindir()
    _run(
        _as_server_user([
            str(bindir / "pg_ctl"), "stop", "--pgdata", str(_data(directory)),
            "--mode", "fast", "--wait", "--silent",
        ]),
        what="stopping the server", cwd=directory,
    )


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pgcluster.py", description="A throwaway PostgreSQL cluster for tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="create if needed, start, print the URL")
    start.add_argument("directory", type=Path)
    start.add_argument("--port", type=int, default=None, help="default: a free port")
    for name, text in (("stop", "stop the cluster"), ("url", "print the running cluster's URL")):
        commands.add_parser(name, help=text).add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            url = start_cluster(args.directory, args.port)
        elif args.command == "stop":
            stop_cluster(args.directory)
            return 0
        else:
            found = cluster_url(args.directory)
            if found is None:
                raise ClusterError(f"no cluster runs in {args.directory}")
            url = found
    except ClusterError as exc:
        print(f"pgcluster.py: error: {exc}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
