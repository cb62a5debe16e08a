"""The throwaway PostgreSQL cluster (tests/pgcluster.py) and the fixtures built on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pgcluster
import pytest

SCRIPT = Path(pgcluster.__file__).resolve()
URL_PATTERN = r"postgresql://publisher@127\.0\.0\.1:(\d+)/publisher_test"


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL not available: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    return psycopg


def _schema_of(url: str) -> str:
    (options,) = parse_qs(urlsplit(url).query)["options"]
    match = re.fullmatch(r"-csearch_path=(t_[0-9a-f]{16})", options)
    assert match, url
    return match[1]


def test_postgres_url_is_a_fresh_schema_of_its_own(
    postgres_url: str, postgres_schema_factory: Callable[[], str]
) -> None:
    psycopg = _psycopg()
    schema = _schema_of(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert connection.execute("SELECT current_schema()").fetchone() == (schema,)
        connection.execute("CREATE TABLE marker (id integer)")
        connection.execute("INSERT INTO marker VALUES (1)")
        found = connection.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'marker'"
        ).fetchall()
        assert found == [(schema,)]

    other_url = postgres_schema_factory()
    other = _schema_of(other_url)
    assert other != schema
    with psycopg.connect(other_url, autocommit=True) as connection:
        assert connection.execute("SELECT current_schema()").fetchone() == (other,)
        assert connection.execute("SELECT to_regclass('marker')").fetchone() == (None,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            connection.execute("SELECT id FROM marker")

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert connection.execute("SELECT id FROM marker").fetchall() == [(1,)]


def _script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_script_starts_reports_and_stops_a_cluster() -> None:
    if pgcluster.find_bindir() is None:
        _unavailable("no initdb, pg_ctl and postgres on PATH or in /usr/lib/postgresql/*/bin")
    psycopg = _psycopg()
    # Not tmp_path: as root the server runs as the postgres user, which cannot enter it.
    directory = Path(tempfile.mkdtemp(prefix="pgcluster-"))
    try:
        started = _script("start", directory)
        assert started.returncode == 0, started.stderr
        assert re.fullmatch(URL_PATTERN + "\n", started.stdout), started.stdout
        url = started.stdout.strip()
        assert _script("url", directory).stdout == started.stdout
        assert _script("start", directory).stdout == started.stdout  # already running

        with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
            settings = connection.execute(
                "SELECT current_user, current_database(), current_setting('server_encoding'), "
                "current_setting('listen_addresses'), current_setting('fsync'), "
                "current_setting('synchronous_commit'), current_setting('full_page_writes'), "
                "current_setting('max_connections')"
            ).fetchone()
        assert settings == (
            "publisher", "publisher_test", "UTF8", "127.0.0.1", "off", "off", "off", "200"
        )

        assert _script("stop", directory).returncode == 0
        gone = _script("url", directory)
        assert (gone.returncode, gone.stdout) == (1, "")
        assert "no cluster runs in" in gone.stderr
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5).close()
        assert _script("stop", directory).returncode == 0  # nothing to stop is fine

        # The existing cluster starts again, on the port asked for.
        port = pgcluster._free_port()
        again = _script("start", directory, "--port", str(port))
        assert again.returncode == 0, again.stderr
        assert again.stdout == f"postgresql://publisher@127.0.0.1:{port}/publisher_test\n"
        assert _script("stop", directory).returncode == 0
    finally:
        pgcluster.stop_cluster(directory)
        shutil.rmtree(directory, ignore_errors=True)
