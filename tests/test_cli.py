"""The command line as a user runs it: exit codes, output, help, and the shipped sample."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from helpers import REPO, SEEDS, ArticleWriter

from publisher.cli import cli
from publisher.text import plural


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False, env={**environment, **(env or {})},
    )


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``: what a refused command must leave as it was."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_build_writes_feeds_reports_bad_files_and_exits_zero(
    tmp_path: Path, write_article: ArticleWriter, articles_dir: Path
) -> None:
    write_article("good.txt", 1, topics=["Computer Vision"])
    (articles_dir / "broken.txt").write_text("---\ntitle: [\n---\n")
    result = run("build", "--articles", str(articles_dir), "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{articles_dir / 'broken.txt'}: malformed YAML" in result.stderr
    assert "Read 2 files (1 bad, 2 parsed), selected 1 article in 1 topic;" in result.stdout
    assert str(tmp_path / "out") in result.stdout
    parsed = feedparser.parse((tmp_path / "out" / "computer-vision.rss.xml").read_bytes())
    assert not parsed.bozo and parsed.entries[0].title == "Article number 1"


def test_build_with_config_file_paths_relative_to_it(
    tmp_path: Path, write_article: ArticleWriter, config_file: object
) -> None:
    write_article("a.txt", 1)
    config = config_file()  # type: ignore[operator]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run("build", "-c", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "feeds" / "all.atom.xml").exists()
    assert not (elsewhere / "feeds").exists()


def test_check_is_a_linter(tmp_path: Path, write_article: ArticleWriter,
                           articles_dir: Path) -> None:
    write_article("good.txt", 1)
    clean = run("check", "--articles", str(articles_dir), cwd=tmp_path)
    assert clean.returncode == 0 and "1 file checked: 0 bad" in clean.stdout
    (articles_dir / "empty.md").write_text("")
    write_article("nourl.txt", 2, webUrl=None)
    dirty = run("check", "--articles", str(articles_dir), cwd=tmp_path)
    assert dirty.returncode == 1
    assert dirty.stdout.splitlines() == [
        f"{articles_dir / 'empty.md'}: empty file",
        f"{articles_dir / 'nourl.txt'}: missing required field webUrl",
    ]
    assert "3 files checked: 2 bad" in dirty.stderr


def test_library_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text('[feeds]\ntitel = "typo"\n')
    result = run("build", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "Error: unknown config key feeds.titel (did you mean feeds.title?)\n"
    missing = run("build", "--articles", "nowhere", "-q", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: articles folder not found")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("build", "--articles", "nowhere", "--debug", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("build", "--no-such-flag", cwd=tmp_path).returncode == 2
    assert run("frobnicate", cwd=tmp_path).returncode == 2
    assert run("resend", cwd=tmp_path).returncode == 2


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"publisher {command}" in result.output


def test_shipped_sample_feeds_are_current(tmp_path: Path) -> None:
    """feeds/ in the repository is exactly what `publisher build` makes of seeds/."""
    result = run("build", "--articles", str(SEEDS), "--output", str(tmp_path / "feeds"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "feeds").iterdir()}
    shipped = {p.name: p.read_bytes() for p in (REPO / "feeds").iterdir()}
    hint = "is stale: run `publisher build --articles seeds`"
    assert sorted(shipped) == sorted(fresh), f"feeds/ {hint}"
    for name, data in fresh.items():
        assert shipped[name] == data, f"feeds/{name} {hint}"


def test_rebuild_of_unchanged_corpus_rewrites_nothing(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    run("build", "--articles", str(SEEDS), "--output", str(out), cwd=tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = run("build", "--articles", str(SEEDS), "--output", str(out), cwd=tmp_path)
    assert "the feeds are current" in again.stdout and "0 parsed" in again.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


# --- which config file ----------------------------------------------------------------------

SITE_CONFIG = ('[articles]\ndir = "articles"\n[feeds]\ntitle = "{title}"\n'
               'base_url = "https://news.example.org/feeds/"\n')


def site(folder: Path, name: str = "config.toml", title: str = "My News") -> Path:
    """A config file in ``folder`` (created), for articles/ and feeds/ beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(SITE_CONFIG.format(title=title), encoding="utf-8")
    return path


def channel_title(feeds_dir: Path) -> str:
    parsed = feedparser.parse((feeds_dir / "all.rss.xml").read_bytes())
    assert not parsed.bozo
    return str(parsed.feed.title)


def test_build_without_c_uses_config_toml_of_the_current_folder_and_says_so(
    tmp_path: Path, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1)
    config = site(tmp_path)
    result = run("build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert channel_title(tmp_path / "feeds") == "My News"
    assert b"https://news.example.org/feeds/all.rss.xml" in (
        tmp_path / "feeds" / "all.rss.xml").read_bytes()
    assert result.stderr == f"Using config {config} (found in the current folder).\n"
    assert result.stdout.startswith("Read 1 file (0 bad, 1 parsed)")  # stdout: only the summary


def test_publisher_toml_comes_before_config_toml(tmp_path: Path,
                                                 write_article: ArticleWriter) -> None:
    write_article("a.txt", 1)
    site(tmp_path, "config.toml", title="Old")
    chosen = site(tmp_path, "publisher.toml", title="Chosen")
    result = run("build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert channel_title(tmp_path / "feeds") == "Chosen"
    assert result.stderr == (f"Using config {chosen} (found in the current folder). "
                             f"Ignored: {tmp_path / 'config.toml'}.\n")


def test_publisher_config_variable_comes_before_the_current_folder(
    tmp_path: Path, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1)
    site(tmp_path, title="Here")
    chosen = site(tmp_path / "etc", title="From the environment")
    (tmp_path / "etc" / "articles").symlink_to(tmp_path / "articles")
    result = run("build", cwd=tmp_path, env={"PUBLISHER_CONFIG": str(chosen)})
    assert result.returncode == 0, result.stderr
    assert channel_title(tmp_path / "etc" / "feeds") == "From the environment"
    assert not (tmp_path / "feeds").exists()
    assert result.stderr == f"Using config {chosen} (from PUBLISHER_CONFIG).\n"
    missing = run("build", cwd=tmp_path, env={"PUBLISHER_CONFIG": "nowhere.toml"})
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == (
        f"Error: config file not found: {tmp_path / 'nowhere.toml'}"
    )


def test_c_comes_first_and_is_named_only_with_v(tmp_path: Path,
                                                write_article: ArticleWriter) -> None:
    write_article("a.txt", 1)
    site(tmp_path, title="Here")
    named = site(tmp_path / "etc", title="Named")
    (tmp_path / "etc" / "articles").symlink_to(tmp_path / "articles")
    env = {"PUBLISHER_CONFIG": str(tmp_path / "config.toml")}
    quiet = run("build", "-c", str(named), cwd=tmp_path, env=env)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert channel_title(tmp_path / "etc" / "feeds") == "Named"
    verbose = run("build", "-c", str(named), "-v", cwd=tmp_path, env=env)
    assert f"Using config {named} (from -c)." in verbose.stderr


def test_without_any_config_it_says_the_defaults_are_used(tmp_path: Path,
                                                          write_article: ArticleWriter) -> None:
    write_article("a.txt", 1)
    result = run("build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "Using the built-in defaults: no -c, no PUBLISHER_CONFIG and no publisher.toml or "
        f"config.toml in {tmp_path}.\n"
    )
    assert channel_title(tmp_path / "feeds") == "Publisher"
    assert run("build", "-q", cwd=tmp_path).stderr == ""


def test_readme_quick_start_at_the_repository_root_uses_the_defaults(tmp_path: Path) -> None:
    """The root holds config.example.toml, never read by itself, and no config.toml."""
    assert not (REPO / "config.toml").exists() and not (REPO / "publisher.toml").exists()
    result = run("build", "--articles", "seeds", "--output", str(tmp_path / "feeds"), cwd=REPO,
                 env={"PUBLISHER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"})
    assert result.returncode == 0, result.stderr
    assert "Using the built-in defaults" in result.stderr
    assert "selected 1 article in 1 topic" in result.stdout


def test_run_logs_the_config_it_uses(tmp_path: Path) -> None:
    config = site(tmp_path)  # no chat: the service stops at once, after saying which config
    result = run("run", cwd=tmp_path)
    assert result.returncode == 1
    assert f"info config file={config} source=\"the current folder\"" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: no chat to post to: set telegram.chat_id in the config"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "{config}", "build"],
        ["-q", "-c", "{config}", "build"],
        ["-c", "{config}", "build", "-q"],
        ["-v", "build", "-c", "{config}"],
        ["--debug", "build", "-c", "{config}"],
    ],
)
def test_common_options_before_or_after_the_command(
    tmp_path: Path, write_article: ArticleWriter, args: list[str]
) -> None:
    write_article("a.txt", 1)
    config = site(tmp_path / "etc")
    (tmp_path / "etc" / "articles").symlink_to(tmp_path / "articles")
    result = run(*(arg.format(config=config) for arg in args), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert channel_title(tmp_path / "etc" / "feeds") == "My News"
    assert (result.stdout == "") == ("-q" in args)


def test_options_before_the_command_reach_it(tmp_path: Path) -> None:
    debug = run("--debug", "build", "--articles", "nowhere", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    quiet = run("-q", "build", "--articles", "nowhere", cwd=tmp_path)
    assert quiet.stderr.startswith("Error: articles folder not found")
    twice = run("-c", "a.toml", "build", "-c", "b.toml", cwd=tmp_path)
    assert twice.returncode == 2 and "-c given twice" in twice.stderr


# --- configuration that cannot be right -----------------------------------------------------


def test_an_unknown_publisher_variable_is_an_error_and_nothing_is_written(
    tmp_path: Path, write_article: ArticleWriter
) -> None:
    write_article("a.txt", 1)
    before = tree(tmp_path)
    result = run("build", "-q", cwd=tmp_path, env={"PUBLISHER_FEEDS_TITEL": "Typo"})
    assert result.returncode == 1
    assert result.stderr == ("Error: unknown environment variable PUBLISHER_FEEDS_TITEL "
                             "(did you mean PUBLISHER_FEEDS_TITLE?)\n")
    assert tree(tmp_path) == before


REFUSED = [
    ('[state]\nurl = "sqlite:///:memory:"\n', "state.url must name a database file"),
    ('[state]\nurl = "sqlite:///stat/publisher.db"\n', "state.url: the folder"),
    ('[state]\nurl = "sqlite:///publisher.db?mode=ro"\n', "state.url must be sqlite:///PATH"),
    ('[feeds]\ndir = "/"\n', "feeds.dir must be a folder of its own, not /"),
    ('[feeds]\ndir = "articles"\n', "feeds.dir"),
    ('[feeds]\ndir = "articles/feeds"\n', "feeds.dir"),
    ('[articles]\ndir = "feeds/articles"\n', "articles.dir"),
    ('[feeds]\nttl = -5\n', "feeds.ttl must not be negative"),
    ('[schedule]\ndebounce_seconds = -1\n', "schedule.debounce_seconds must not be negative"),
    ('[schedule]\nbuild = "-10m"\n', "schedule.build must be a positive interval"),
    ('[schedule]\npush = "*/5 * * *"\n', "schedule.push must be an interval"),
    ('[telegram]\nper_chat_interval_seconds = -1\n', "telegram.per_chat_interval_seconds"),
    ('[articles]\nmax_file_bytes = 0\n', "articles.max_file_bytes must be at least 1"),
    ('[feeds]\nmax_items = 18446744073709551616\n', "feeds.max_items is out of range"),
    ('[feeds]\ntelegram_url = "javascript:alert(1)"\n', "feeds.telegram_url must be an http"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_configuration_that_cannot_be_right_is_refused(
    tmp_path: Path, write_article: ArticleWriter, text: str, message: str
) -> None:
    write_article("a.txt", 1)
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    before = tree(tmp_path)
    result = CliRunner().invoke(cli, ["build", "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: config key {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "please report" not in result.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["non-UTF-8", "huge", "/dev/zero", "FIFO", "folder"])
def test_files_that_are_no_config_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.toml"
    if kind == "non-UTF-8":
        path.write_bytes(b'[feeds]\ntitle = "Caf\xe9"\n')
        expected = f"config file {path} is not UTF-8 text (byte 0xe9 on line 2)"
    elif kind == "huge":
        path.write_bytes(b"#" * (4 * 1024 * 1024))
        expected = f"config file {path} is larger than 1024 KiB"
    elif kind == "/dev/zero":
        path = Path("/dev/zero")
        expected = "config file /dev/zero is not a regular file (a device)"
    elif kind == "FIFO":
        os.mkfifo(path)  # nobody writes to it: reading it would wait for ever
        expected = f"config file {path} is not a regular file (a FIFO)"
    else:
        path.mkdir()
        expected = f"config file {path} is not a regular file (a folder)"
    before = tree(tmp_path)
    result = run("build", "-c", str(path), cwd=tmp_path, timeout=20)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {expected}"), result.stderr
    assert "Traceback" not in result.stderr and "please report" not in result.stderr
    assert tree(tmp_path) == before


def read_only(folder: Path, *args: str, cwd: Path,
              env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``publisher *args`` with ``folder`` read-only: by its mode, or (as root, whom modes do
    not stop) as a read-only bind mount in a user and mount namespace of its own."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return run(*args, cwd=cwd, env=env)
        finally:
            folder.chmod(0o755)
    unshare = shutil.which("unshare")
    probe = None if unshare is None else subprocess.run(
        [unshare, "-rm", "true"], capture_output=True, check=False, timeout=10
    )
    if probe is None or probe.returncode != 0:
        reason = "neither an unprivileged user nor unshare(1) with user namespaces"
        if os.environ.get("CI"):
            pytest.fail(f"cannot make a read-only folder: {reason}")
        pytest.skip(f"cannot make a read-only folder: {reason}")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", str(folder),
         sys.executable, "-m", "publisher", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
        env={**environment, **env},
    )


@pytest.mark.parametrize("existing", [True, False], ids=["with-ledger", "empty"])
@pytest.mark.parametrize("command", ["push", "run", "status"])
def test_a_read_only_state_folder_is_a_clear_error(
    tmp_path: Path, write_article: ArticleWriter, command: str, existing: bool
) -> None:
    write_article("a.txt", 1)
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "config.toml"
    config.write_text('[telegram]\nchat_id = "@news"\napi_base_url = "http://127.0.0.1:9/bot"\n'
                      '[state]\nurl = "sqlite:///state/publisher.db"\n', encoding="utf-8")
    if existing:
        assert run("build", "-c", str(config), cwd=tmp_path).returncode == 0
    before = tree(tmp_path)
    result = read_only(state, command, "-c", str(config), cwd=tmp_path,
                       env={"TELEGRAM_BOT_TOKEN": "123:secret"})
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: ") and f"the state folder {state} is read-only" in error
    assert "Traceback" not in result.stderr and "please report" not in result.stderr
    assert tree(tmp_path) == before


# --- publisher init -------------------------------------------------------------------------


def test_init_writes_a_starter_config_and_an_articles_folder(tmp_path: Path) -> None:
    from publisher.config import SECTIONS, load_config
    from publisher.starter import starter_config

    result = run("init", "site", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "site" / "config.toml"
    assert result.stdout.splitlines()[:2] == [f"Created {Path('site') / 'config.toml'}",
                                              f"Created {Path('site') / 'articles'}/"]
    assert "cd site" in result.stdout and "publisher build" in result.stdout
    assert (tmp_path / "site" / "articles").is_dir()
    assert list((tmp_path / "site" / "articles").iterdir()) == []
    text = config.read_text(encoding="utf-8")
    # Derived from the documented example: the two cannot drift apart.
    assert text == starter_config((REPO / "config.example.toml").read_text(encoding="utf-8"))
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        for field in cls.__dataclass_fields__:
            if field not in ("routes", "chats"):  # tables of their own
                assert f"\n# {field} = " in text, f"{name}.{field} is not in the starter config"
    loaded = load_config(config, environ={})
    assert loaded.feeds == load_config(None, environ={}).feeds.__class__(
        dir=tmp_path / "site" / "feeds")
    assert loaded.articles.dir == tmp_path / "site" / "articles"


def test_the_package_ships_the_example_config_itself() -> None:
    from publisher.starter import example_config

    assert example_config() == (REPO / "config.example.toml").read_text(encoding="utf-8")


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[feeds]\ntitle = "Mine"\n')
    result = run("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "Kept config.toml: it exists already", "Created articles/"
    ]
    assert "cd " not in result.stdout
    assert (tmp_path / "config.toml").read_text() == '[feeds]\ntitle = "Mine"\n'
    (tmp_path / "other").write_text("x")
    blocked = run("init", "other", cwd=tmp_path)  # a file where the folder would be
    assert blocked.returncode == 2 and "'other' is a file" in blocked.stderr
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "articles").write_text("x")
    half = run("init", "site", cwd=tmp_path)
    assert half.returncode == 1
    assert half.stderr == f"Error: {Path('site') / 'articles'} exists and is not a folder\n"
    assert (tmp_path / "site" / "config.toml").is_file()  # what could be made, was


def test_a_site_made_by_init_builds_as_it_is(tmp_path: Path) -> None:
    assert run("init", cwd=tmp_path).returncode == 0
    shutil.copy(SEEDS / sorted(p.name for p in SEEDS.iterdir())[0], tmp_path / "articles")
    result = run("build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config.toml"
    assert result.stderr == f"Using config {config} (found in the current folder).\n"
    assert (tmp_path / "feeds" / "index.html").is_file()


# --- publisher preview ----------------------------------------------------------------------

PreviewRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def preview(tmp_path: Path, config_file: Callable[..., Path]) -> PreviewRun:
    config = config_file('[telegram]\nchat_id = "@main"\nmax_age_hours = 0\n'
                         '[telegram.routes]\nRobotics = ["@robots", "@main"]\n'
                         '[select]\nmin_quality = 50\n'
                         '[state]\nurl = "sqlite:///not/here/publisher.db"\n')  # never opened

    def preview_file(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
        return subprocess.run(
            [sys.executable, "-m", "publisher", "preview", "-c", str(config), str(path), *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in env.items() if not k.startswith("PUBLISHER_")},
        )

    return preview_file


def test_preview_shows_the_messages_per_destination_and_the_feed_entry(
    tmp_path: Path, write_article: ArticleWriter, preview: PreviewRun
) -> None:
    path = write_article("robots.txt", 7, topics=["Robotics", "AI"], quality=80)
    before = tree(tmp_path)
    result = preview(path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{path}\n  title: Article number 7\n")
    assert "Selected: published, quality 80 >= select.min_quality 50." in out
    assert "Telegram: 2 destinations" in out
    assert "sendPhoto to @main (" in out and "sendPhoto to @robots (" in out
    assert "<b>Article number 7</b>" in out and "[Read on Example News] -> " in out
    for slug in ("all", "robotics", "ai"):
        assert f"  https://feeds.example.org/{slug}.rss.xml\n" in out
    item = out[out.index("<item"):]
    assert "<title>Article number 7</title>" in item
    assert "<link>https://news.example.com/articles/7</link>" in item
    assert tree(tmp_path) == before  # no state, no feeds, nothing


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"published": False}, "Not selected: `published` is not true"),
        ({"quality": 40}, "Not selected: quality 40 is below select.min_quality (50)"),
    ],
)
def test_preview_says_why_an_article_would_not_be_selected(
    write_article: ArticleWriter, preview: PreviewRun, fields: dict[str, object], reason: str
) -> None:
    result = preview(write_article("a.txt", 1, **fields))
    assert result.returncode == 0, result.stderr
    assert reason in result.stdout and "sendPhoto to @main" in result.stdout


def test_preview_says_when_an_article_is_too_old_to_post(
    tmp_path: Path, write_article: ArticleWriter, config_file: Callable[..., Path]
) -> None:
    config = config_file('[telegram]\nchat_id = "@main"\nmax_age_hours = 24\n')
    path = write_article("old.txt", 1)  # dated 2025-01-01
    result = run("preview", "-c", str(config), str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("not posted: older than telegram.max_age_hours (24 h); a push records it as "
            "skipped") in result.stdout


def test_preview_of_a_bad_file_is_its_one_line_reason(
    tmp_path: Path, write_article: ArticleWriter, preview: PreviewRun
) -> None:
    bad = write_article("bad.txt", 1, webUrl=None)
    result = preview(bad)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"Error: {bad}: missing required field webUrl\n"
    missing = preview(tmp_path / "nothing.txt")
    assert missing.stderr == f"Error: {tmp_path / 'nothing.txt'}: does not exist\n"


def test_preview_shows_the_id_the_file_keeps_after_its_url_is_fixed(
    tmp_path: Path, write_article: ArticleWriter, config_file: Callable[..., Path]
) -> None:
    from publisher.models import article_id

    config = config_file('[telegram]\nchat_id = "@main"\nmax_age_hours = 0\n')
    first = article_id("https://news.example.com/articles/1")
    fixed_url = "https://news.example.com/articles/1-fixed"
    path = write_article("typo.txt", 1)
    assert run("build", "-c", str(config), cwd=tmp_path).returncode == 0
    write_article("typo.txt", 1, webUrl=fixed_url)  # the typo fixed: the same article
    database = tmp_path / "publisher.db"
    before = database.read_bytes(), [name for name in tree(tmp_path) if "db-" not in name]
    kept = run("preview", "-c", str(config), str(path), cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert (f"  id:    {first} (kept by this file in the state, as its feed entry and the "
            f"ledger; its webUrl alone would give {article_id(fixed_url)})\n") in kept.stdout
    assert f"sendPhoto to @main ({first})" in kept.stdout
    assert f"<guid isPermaLink=\"false\">{first}</guid>" in kept.stdout
    # Read only (SQLite opens a WAL database's shared-memory file even so).
    assert (database.read_bytes(), [name for name in tree(tmp_path) if "db-" not in name]) == (
        before)
    assert run("build", "-c", str(config), cwd=tmp_path).returncode == 0
    (entry,) = feedparser.parse(tmp_path / "feeds" / "all.rss.xml").entries
    assert entry.id == first  # what the preview said
    renamed = path.rename(path.with_name("renamed.txt"))  # not seen by a build yet
    moved = run("preview", "-c", str(config), str(renamed), cwd=tmp_path)
    assert f"  id:    {first} (of {path}, which has the same URL, in the state)\n" in (
        moved.stdout)
    new = run("preview", "-c", str(config), str(write_article("new.txt", 2)), cwd=tmp_path)
    assert (f"  id:    {article_id('https://news.example.com/articles/2')} (of its webUrl: the "
            "state does not know this file)\n") in new.stdout


# --- plurals --------------------------------------------------------------------------------


def test_plural() -> None:
    assert [plural(n, "article") for n in (0, 1, 2)] == ["0 articles", "1 article", "2 articles"]


def test_counts_in_the_output_are_singular_for_one(
    tmp_path: Path, write_article: ArticleWriter, config_file: Callable[..., Path]
) -> None:
    write_article("a.txt", 1)
    config = config_file('[telegram]\nchat_id = "@main"\nmax_age_hours = 0\n')
    build = run("build", "-c", str(config), cwd=tmp_path)
    assert "Read 1 file (0 bad, 1 parsed), selected 1 article in 1 topic;" in build.stdout
    check = run("check", "-c", str(config), cwd=tmp_path)
    assert check.stdout.startswith("1 file checked: 0 bad, 1 selected for publishing.")
    dry = run("push", "-c", str(config), "--dry-run", cwd=tmp_path)
    assert dry.stdout.endswith("Dry run: 1 message would be sent; nothing was sent.\n")
    write_article("b.txt", 2, topics=["AI", "Robotics"])
    again = run("build", "-c", str(config), cwd=tmp_path)
    assert "Read 2 files (0 bad, " in again.stdout
    assert "parsed), selected 2 articles in 2 topics;" in again.stdout


@pytest.mark.parametrize("command", ["build", "push", "run", "status"])
def test_a_missing_state_folder_is_never_created(
    tmp_path: Path, write_article: ArticleWriter, command: str
) -> None:
    """A typo in the state folder would start a new, empty ledger: every article again."""
    write_article("a.txt", 1)
    config = tmp_path / "config.toml"
    config.write_text('[telegram]\nchat_id = "@news"\napi_base_url = "http://127.0.0.1:9/bot"\n'
                      '[state]\nurl = "sqlite:///stat/publisher.db"\n', encoding="utf-8")
    before = tree(tmp_path)
    result = run(command, "-c", str(config), cwd=tmp_path, env={"TELEGRAM_BOT_TOKEN": "1:x"})
    assert result.returncode == 1
    expected = (
        f"Error: no state database {tmp_path / 'stat' / 'publisher.db'} yet (the folder "
        if command == "status"
        else f"Error: config key state.url: the folder {tmp_path / 'stat'} does not exist"
    )
    assert result.stderr.splitlines()[-1].startswith(expected), result.stderr
    assert tree(tmp_path) == before
