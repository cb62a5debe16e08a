"""Configuration: defaults < file < environment < flags; unknown keys named."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest

from publisher.config import SECTIONS, find_config, load_config
from publisher.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_documents_every_key_with_its_default() -> None:
    example = load_config(REPO / "config.example.toml", environ={})
    defaults = load_config(None, environ={})
    text = (REPO / "config.example.toml").read_text()
    for name, cls in SECTIONS.items():
        for field in fields(cls):
            if field.name in ("routes", "chats"):
                assert f"[telegram.{field.name}" in text
                continue
            assert f"\n{field.name} = " in text, f"{name}.{field.name} is not documented"
            if field.name not in ("dir", "url"):  # paths resolve against different folders
                value = getattr(getattr(example, name), field.name)
                assert value == getattr(getattr(defaults, name), field.name), field.name


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[articles]\ndir = "in"\n[feeds]\ndir = "out"\n'
                           '[state]\nurl = "sqlite:///state/p.db"\n')
    (tmp_path / "sub" / "state").mkdir()
    config = load_config(path, environ={})
    assert config.articles.dir == tmp_path / "sub" / "in"
    assert config.feeds.dir == tmp_path / "sub" / "out"
    assert config.state.url == f"sqlite:///{tmp_path / 'sub' / 'state' / 'p.db'}"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key feeds\.titel \(did you mean "
                                          r"feeds\.title\?\)"):
        load_config(write(tmp_path, '[feeds]\ntitel = "x"\n'), environ={})


def test_unknown_environment_variable_is_named_with_the_closest_known_one() -> None:
    with pytest.raises(ConfigError, match=r"^unknown environment variable PUBLISHER_FEEDS_TITEL "
                                          r"\(did you mean PUBLISHER_FEEDS_TITLE\?\)$"):
        load_config(None, environ={"PUBLISHER_FEEDS_TITEL": "x"})
    with pytest.raises(ConfigError, match=r"^unknown environment variable PUBLISHER_XYZZY$"):
        load_config(None, environ={"PUBLISHER_XYZZY": "1"})
    with pytest.raises(ConfigError, match=r"did you mean PUBLISHER_CONFIG\?"):
        load_config(None, environ={"PUBLISHER_CONFIGS": "x.toml"})


def test_known_environment_variables_are_accepted() -> None:
    environ = {"PUBLISHER_CONFIG": "elsewhere.toml", "PUBLISHER_SCHEDULE_WATCH": "no",
               "PUBLISHER_FEEDS_TELEGRAM_URL": "https://t.me/news", "OTHER_PUBLISHER_X": "1"}
    config = load_config(None, environ=environ)
    assert config.schedule.watch is False and config.feeds.telegram_url == "https://t.me/news"


def test_the_test_suite_hands_no_publisher_variable_to_publisher() -> None:
    """conftest takes PUBLISHER_TEST_POSTGRES_URL (exported by .ci/run) out of os.environ,
    so no CliRunner run and no publisher subprocess sees it (or any other PUBLISHER_*)."""
    assert [name for name in os.environ if name.startswith("PUBLISHER_")] == []


def test_find_config_order(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    defaults = find_config(None, environ={}, cwd=here)
    assert defaults.path is None and "built-in defaults" in defaults.describe()
    (here / "config.toml").write_text("")
    found = find_config(None, environ={}, cwd=here)
    assert (found.path, found.origin, found.ignored) == (here / "config.toml",
                                                          "the current folder", ())
    (here / "publisher.toml").write_text("")
    both = find_config(None, environ={}, cwd=here)
    assert (both.path, both.ignored) == (here / "publisher.toml", (here / "config.toml",))
    assert both.describe() == (f"Using config {here / 'publisher.toml'} (found in the current "
                               f"folder). Ignored: {here / 'config.toml'}.")
    environ = {"PUBLISHER_CONFIG": "../env.toml"}
    from_env = find_config(None, environ=environ, cwd=here)
    assert (from_env.path, from_env.origin) == (here / "../env.toml", "PUBLISHER_CONFIG")
    explicit = find_config(Path("/etc/x.toml"), environ=environ, cwd=here)
    assert (explicit.path, explicit.origin) == (Path("/etc/x.toml"), "-c")


def test_a_dangling_link_in_the_current_folder_is_not_passed_over(tmp_path: Path) -> None:
    (tmp_path / "config.toml").symlink_to(tmp_path / "gone.toml")
    source = find_config(None, environ={}, cwd=tmp_path)
    assert source.path == tmp_path / "config.toml"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(source.path, environ={})


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config section \[feed\]"):
        load_config(write(tmp_path, '[feed]\ntitle = "x"\n'), environ={})


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"feeds\.max_items must be a number"):
        load_config(write(tmp_path, '[feeds]\nmax_items = "many"\n'), environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[feeds\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/config.toml", environ={})


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[feeds]\ntitle = "From file"\nmax_items = 5\n')
    assert load_config(None, environ={}).feeds.title == "Publisher"
    assert load_config(path, environ={}).feeds.title == "From file"
    env = {"PUBLISHER_FEEDS_TITLE": "From env", "PUBLISHER_FEEDS_MAX_ITEMS": "7"}
    config = load_config(path, environ=env)
    assert (config.feeds.title, config.feeds.max_items) == ("From env", 7)
    flagged = load_config(path, environ=env, overrides={"feeds.title": "From flag"})
    assert flagged.feeds.title == "From flag"


def test_routes_accept_a_chat_or_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[telegram]\nchat_id = -1001\n[telegram.routes]\n'
                           'Robotics = "@robots"\n"Computer Vision" = ["@cv", -1002, "@robots"]\n')
    config = load_config(path, environ={})
    assert config.telegram.chat_id == "-1001"
    assert config.chats_for(("Robotics", "Computer Vision", "Other")) == (
        "-1001", "@robots", "@cv", "-1002"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[feeds]\nbase_url = "ftp://x"\n', "feeds.base_url must be an http"),
        ('[telegram]\non_uncertain = "maybe"\n', "on_uncertain"),
        ('[telegram]\nmax_per_run = -1\n', "must not be negative"),
        ('[state]\nurl = "mysql://x"\n', "state.url"),
        ('[telegram.routes]\nAI = []\n', "telegram.routes.AI"),
        ('[telegram]\ntimezone = "Mars/Olympus"\n', "telegram.timezone"),
        ('[telegram]\nmax_age_hours = nan\n', "finite"),
        ('[telegram]\nmax_per_run = inf\n', "max_per_run must be a number"),
        ('[telegram]\nglobal_per_second = 0\n', "above 0"),
        ('[feeds]\nttl = -1\n', r"feeds\.ttl must not be negative"),
        ('[schedule]\ndebounce_seconds = -0.5\n', r"schedule\.debounce_seconds must not be"),
        ('[telegram]\nper_chat_interval_seconds = -1\n', "per_chat_interval_seconds must not"),
        ('[articles]\nmax_file_bytes = 0\n', r"articles\.max_file_bytes must be at least 1"),
        ('[feeds]\nmax_items = 9223372036854775808\n', r"feeds\.max_items is out of range"),
        ('[select]\nmin_quality = -9223372036854775809\n', r"select\.min_quality is out of"),
        ('[telegram]\nmax_per_run = 1e300\n', r"max_per_run is out of range \(beyond 64 bits"),
        ("[feeds]\nmax_items = " + "9" * 5000 + "\n", "out of range"),
        ('[schedule]\nbuild = "-10m"\n', r"schedule\.build must be a positive interval"),
        ('[schedule]\npush = "0s"\n', r"schedule\.push must be a positive interval"),
        ('[schedule]\npush = "every tuesday"\n', r"schedule\.push must be an interval"),
        ('[schedule]\nbuild = "400d"\n', r"schedule\.build must be a positive interval"),
        ('[feeds]\ntelegram_url = "tg://resolve?domain=news"\n', r"telegram_url must be an http"),
        ('[feeds]\ntelegram_url = "https://"\n', r"feeds\.telegram_url must be an http"),
        ('[state]\nurl = "sqlite:///:memory:"\n', r"state\.url must name a database file"),
        ('[state]\nurl = "sqlite:///p.db?mode=ro"\n', r"state\.url must be sqlite:///PATH with"),
        ('[state]\nurl = "sqlite:///"\n', r"state\.url names a folder"),
        ('[feeds]\ndir = "/"\n', r"feeds\.dir must be a folder of its own"),
        ('[articles]\ndir = "a"\n[feeds]\ndir = "a"\n', r"feeds\.dir .* must not be the art"),
        ('[articles]\ndir = "a"\n[feeds]\ndir = "a/f"\n', r"feeds\.dir .* must not be the a"),
        ('[articles]\ndir = "f/a"\n[feeds]\ndir = "f"\n', r"articles\.dir .* must not be in"),
        ("[a]\nb = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


def test_token_never_from_the_file_and_missing_token_is_clear(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key telegram\.token"):
        load_config(write(tmp_path, '[telegram]\ntoken = "123:abc"\n'), environ={})
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    config = load_config(None, environ={})
    with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN"):
        config.read_token()
    token_file = tmp_path / "token"
    token_file.write_text("123:from-file\n")
    path = write(tmp_path, f'[telegram]\ntoken_file = "{token_file}"\n')
    assert load_config(path, environ={}).read_token() == "123:from-file"


def test_environment_values_are_checked_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"feeds\.max_items is out of range"):
        load_config(None, environ={"PUBLISHER_FEEDS_MAX_ITEMS": "9223372036854775808"})
    with pytest.raises(ConfigError, match=r"schedule\.push"):
        load_config(None, environ={"PUBLISHER_SCHEDULE_PUSH": "-1m"})


def test_cron_lines_and_intervals_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[schedule]\nbuild = "*/10 * * * *"\npush = "90"\n'),
                         environ={})
    assert (config.schedule.build, config.schedule.push) == ("*/10 * * * *", "90")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[feeds]\ntitle = "caf\xe9"\n', r"is not UTF-8 text \(byte 0xe9 on line 2\)"),
        (b"# " + b"x" * (1024 * 1024) + b"\n", "is larger than 1024 KiB"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('\ufeff[feeds]\ntitle = "Café"\n'.encode())
    assert load_config(path, environ={}).feeds.title == "Café"


def test_not_a_regular_file(tmp_path: Path) -> None:
    # A FIFO: test_cli, in a subprocess with a timeout (here a regression would hang).
    for path, kind in ((tmp_path, "a folder"), (Path("/dev/zero"), "a device")):
        with pytest.raises(ConfigError, match=rf"config file {path} is not a regular file \({kind}"
                           ):
            load_config(path, environ={})


def test_a_destination_overrides_post_settings_of_its_own(tmp_path: Path) -> None:
    path = write(tmp_path, '[telegram]\nchat_id = "@main"\nlanguage = "de"\n'
                           'routes = { Robotics = "@robots" }\n'
                           '[telegram.chats."@robots"]\nsilent = true\nmax_per_run = 2\n'
                           'template_file = "robots.j2"\n')
    (tmp_path / "sub" / "robots.j2").write_text("<b>{{ title }}</b>", encoding="utf-8")
    config = load_config(path, environ={})
    main, robots = config.settings_for("@main"), config.settings_for("@robots")
    assert (main.language, main.silent, main.max_per_run) == ("de", False, 10)
    assert (robots.language, robots.silent, robots.max_per_run) == ("de", True, 2)
    assert robots.template_file == tmp_path / "sub" / "robots.j2"


@pytest.mark.parametrize(("table", "message"), [
    ('[telegram.chats."@nobody"]\nsilent = true\n',
     r'telegram\.chats\."@nobody": no route uses this destination'),
    ('[telegram.chats."@main"]\nsilnt = true\n',
     r'unknown config key telegram\.chats\."@main"\.silnt \(did you mean '
     r'telegram\.chats\."@main"\.silent\?\)'),
    ('[telegram.chats."@main"]\nrelated_buttons = -1\n',
     r'telegram\.chats\."@main"\.related_buttons must not be negative'),
    ('[telegram.chats."@main"]\nquiet_mode = "loud"\n',
     r"telegram\.chats\.\"@main\"\.quiet_mode must be 'silent' or 'hold'"),
])
def test_destination_settings_that_are_wrong_are_named(tmp_path: Path, table: str,
                                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f'[telegram]\nchat_id = "@main"\n{table}'), environ={})
