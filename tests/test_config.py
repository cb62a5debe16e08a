"""Configuration: defaults < file < environment < flags; unknown keys named."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from publisher.config import SECTIONS, load_config
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
            if field.name == "routes":
                assert "[telegram.routes]" in text
                continue
            assert f"\n{field.name} = " in text, f"{name}.{field.name} is not documented"
            if field.name not in ("dir", "url"):  # paths resolve against different folders
                value = getattr(getattr(example, name), field.name)
                assert value == getattr(getattr(defaults, name), field.name), field.name


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[articles]\ndir = "in"\n[feeds]\ndir = "out"\n'
                           '[state]\nurl = "sqlite:///state/p.db"\n')
    config = load_config(path, environ={})
    assert config.articles.dir == tmp_path / "sub" / "in"
    assert config.feeds.dir == tmp_path / "sub" / "out"
    assert config.state.url == f"sqlite:///{tmp_path / 'sub' / 'state' / 'p.db'}"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key feeds\.titel"):
        load_config(write(tmp_path, '[feeds]\ntitel = "x"\n'), environ={})


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
