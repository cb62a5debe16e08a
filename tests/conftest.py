"""Shared fixtures: article files on disk, configs, the Bot API stand-in and PostgreSQL.

Plain helpers (article records, REPO, wait_for, ...) are in helpers.py."""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pgcluster
import pytest

# The shared helpers live in helpers.py; imported from conftest too, as before.
from helpers import REPO as REPO
from helpers import SEEDS as SEEDS
from helpers import ArticleWriter as ArticleWriter
from helpers import article_record as article_record
from helpers import front_matter as front_matter
from standin.fixtures import botapi, botapi_process  # noqa: F401 - fixtures

POSTGRES_URL_VARIABLE = "PUBLISHER_TEST_POSTGRES_URL"
# Out of os.environ at import, before any test runs: publisher refuses an unknown PUBLISHER_*
# variable, and a PUBLISHER_CONFIG or PUBLISHER_FEEDS_DIR of the developer's shell would
# change what the tests see. Neither CliRunner nor a publisher subprocess inherits them.
POSTGRES_URL = os.environ.get(POSTGRES_URL_VARIABLE, "")
for _variable in [name for name in os.environ if name.startswith("PUBLISHER_")]:
    del os.environ[_variable]


@pytest.fixture
def articles_dir(tmp_path: Path) -> Path:
    path = tmp_path / "articles"
    path.mkdir()
    return path


@pytest.fixture
def write_article(articles_dir: Path) -> ArticleWriter:
    def write(name: str, index: int = 1, **fields: Any) -> Path:
        path = articles_dir / name
        path.write_text(front_matter(article_record(index, **fields)), encoding="utf-8")
        return path

    return write


@pytest.fixture
def config_file(tmp_path: Path, articles_dir: Path) -> Callable[..., Path]:
    """Write a config.toml beside ``articles/``; extra TOML text is appended."""

    def write(extra: str = "") -> Path:
        path = tmp_path / "config.toml"
        path.write_text(
            '[articles]\ndir = "articles"\n[feeds]\ndir = "feeds"\n'
            'base_url = "https://feeds.example.org/"\n' + extra,
            encoding="utf-8",
        )
        return path

    return write


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Surface unclosed sockets and transports in the test that leaked them.

    What survives the collection is frozen (left out of later collections): each test's
    collection then looks only at the objects made since, not at every module and cache of
    the session, which cost a tenth of a second per test.
    """
    yield
    gc.collect()
    gc.freeze()


# -- PostgreSQL -------------------------------------------------------------------------------
# postgres_server: one server for the session, from PUBLISHER_TEST_POSTGRES_URL or a throwaway
# cluster (tests/pgcluster.py); without either, the tests that need it skip (fail in CI).
# postgres_url: a fresh schema per test; postgres_schema_factory: as many more as a test needs.


def _postgres_unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL not available: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def _with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    option = f"-csearch_path={schema}"
    others = [(key, value) for key, value in query if key != "options"]
    options = [value for key, value in query if key == "options"] + [option]
    query = [*others, ("options", " ".join(options))]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this session (database ``publisher_test``)."""
    try:
        import psycopg
    except ImportError:
        _postgres_unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    url = POSTGRES_URL
    if url:
        problem = None
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem = f"{POSTGRES_URL_VARIABLE}={_redacted(url)} is not reachable: {first_line}"
        if problem:  # outside the except: one message, no chained traceback
            _postgres_unavailable(problem)
        yield url
        return
    if pgcluster.find_bindir() is None:
        _postgres_unavailable(
            f"{POSTGRES_URL_VARIABLE} is not set and no PostgreSQL server binaries were found "
            f"(initdb on PATH or in {pgcluster.DEBIAN_ROOT}/*/bin)"
        )
    # Not pytest's tmp_path_factory: as root the server runs as the postgres user, which
    # cannot enter /tmp/pytest-of-root; a short path also keeps the unix socket's within limits.
    directory = Path(tempfile.mkdtemp(prefix="pgcluster-"))
    try:
        try:
            url = pgcluster.start_cluster(directory)
        except pgcluster.ClusterError as exc:
            problem = f"could not start a throwaway cluster: {exc}"
        else:
            problem = None
        if problem:
            _postgres_unavailable(problem)
        yield url
    finally:
        try:
            pgcluster.stop_cluster(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_schema_factory(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Make fresh, empty schemas: each call returns a URL whose connections use a new one."""
    import psycopg

    schemas: list[str] = []

    def make() -> str:
        schema = f"t_{secrets.token_hex(8)}"
        with psycopg.connect(postgres_server, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return _with_search_path(postgres_server, schema)

    yield make
    if not schemas:
        return
    # Errors leave a schema behind on a throwaway server, nothing worse.
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(postgres_server, autocommit=True, connect_timeout=5) as connection,
    ):
        # A connection left open in a transaction would block the drop: wait a little only.
        connection.execute("SET lock_timeout = '3s'")
        for schema in reversed(schemas):
            with contextlib.suppress(psycopg.Error):
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def postgres_url(postgres_schema_factory: Callable[[], str]) -> str:
    """A PostgreSQL URL whose connections use a fresh schema, dropped after the test."""
    return postgres_schema_factory()
