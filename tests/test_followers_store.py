"""The followers' rows: topics from the moment of subscribing, the subscriber limit, /stop
forgets every row (ledger DMs included), the update offset; and the [followers] config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher import followers
from publisher.config import load_config
from publisher.db import Database
from publisher.errors import ConfigError
from publisher.state import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = (str(request.getfixturevalue("postgres_url")) if request.param == "postgresql"
           else f"sqlite:///{tmp_path}/state.db")
    store = open_store(url)
    try:
        yield store.db
    finally:
        store.close()


def test_subscribing_records_topics_from_now_on(db: Database) -> None:
    with db.transaction():
        assert followers.subscribe(db, "42", "robotics", now=100.0)
        assert not followers.subscribe(db, "42", "robotics", now=200.0)
        assert followers.subscribe(db, "42", "space", now=300.0)
        followers.subscribe(db, "7", "space", now=50.0)
    assert followers.topics_of(db, "42") == ("robotics", "space")
    assert followers.followers_of(db, ["space"], since_before=299.0) == ["7"]
    assert followers.followers_of(db, ["robotics", "space"], since_before=300.0) == ["42", "7"]
    assert followers.counts_by_topic(db) == {"robotics": 1, "space": 2}
    follower = followers.get_follower(db, "42")
    assert follower is not None and follower.joined_at == 100.0


def test_toggle_and_unsubscribe(db: Database) -> None:
    with db.transaction():
        assert followers.toggle(db, "42", "robotics", now=1.0) is True
        assert followers.toggle(db, "42", "robotics", now=2.0) is False
        followers.subscribe(db, "42", "a", now=3.0)
        followers.subscribe(db, "42", "b", now=3.0)
        assert followers.unsubscribe(db, "42", "a")
        assert not followers.unsubscribe(db, "42", "a")
        assert followers.unsubscribe_all(db, "42") == 1
    assert followers.topics_of(db, "42") == ()
    assert followers.is_follower(db, "42")  # no topics, still known until /stop


def test_max_subscribers_turns_a_newcomer_away(db: Database) -> None:
    with db.transaction():
        followers.subscribe(db, "1", "a", now=1.0, max_subscribers=2)
        followers.subscribe(db, "2", "a", now=1.0, max_subscribers=2)
        followers.subscribe(db, "1", "b", now=2.0, max_subscribers=2)  # not a newcomer
    with pytest.raises(followers.FollowerLimitReached), db.transaction():
        followers.subscribe(db, "3", "a", now=3.0, max_subscribers=2)
    assert followers.follower_count(db) == 2


def test_forget_deletes_every_row_about_the_follower(db: Database) -> None:
    with db.transaction():
        followers.subscribe(db, "42", "a", now=1.0)
        followers.subscribe(db, "43", "a", now=1.0)
        for chat in ("42", "43"):
            db.execute("INSERT INTO deliveries (article_id, chat_id, state, created_at, "
                       "updated_at) VALUES ('x', ?, 'sent', '', '')", (chat,))
        followers.forget(db, "42")
    for table in ("followers", "follower_topics", "deliveries"):
        rows = db.execute(f"SELECT chat_id FROM {table} ORDER BY chat_id").fetchall()
        assert [row[0] for row in rows] == ["43"], table


def test_offset_is_committed_with_the_effect(db: Database) -> None:
    assert followers.read_offset(db) == 0
    with db.transaction():
        followers.subscribe(db, "42", "a", now=1.0)
        followers.commit_offset(db, 1000)
    assert followers.read_offset(db) == 1001
    with pytest.raises(RuntimeError), db.transaction():
        followers.unsubscribe_all(db, "42")
        followers.commit_offset(db, 1001)
        raise RuntimeError("crash before the commit")
    assert followers.read_offset(db) == 1001
    assert followers.topics_of(db, "42") == ("a",)


def test_rate_limit_times(db: Database) -> None:
    assert followers.last_commands(db, "42") == (0.0, 0.0)
    with db.transaction():
        followers.join(db, "42", now=1.0)
        followers.touch_command(db, "42", 5.0)
        followers.touch_command(db, "42", 6.0, latest=True)
    assert followers.last_commands(db, "42") == (5.0, 6.0)


def _config(tmp_path: Path, followers_toml: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(f"[followers]\n{followers_toml}", encoding="utf-8")
    return load_config(path, environ={})


def test_followers_config_defaults_and_shape(tmp_path: Path) -> None:
    config = load_config(None, environ={})
    assert config.followers.enabled is False
    assert config.followers.per_second == 25.0
    configured = _config(tmp_path, 'enabled = true\nlanguage = "de"\nsilent = true\n')
    assert configured.follower_settings.language == "de"  # type: ignore[attr-defined]
    assert configured.follower_settings.silent is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(("toml", "message"), [
    ("per_second = 0", "followers.per_second must be above 0"),
    ("per_second = 31", "must not be above telegram.global_per_second"),
    ('webhook_url = "http://example.com/hook"\nwebhook_secret = "s"', "must be an https URL"),
    ('webhook_url = "https://example.com/hook"', "followers.webhook_secret must be set"),
    ('webhook_url = "https://example.com/hook"\nwebhook_secret = "a b"',
     "followers.webhook_secret must be set"),
    ('digest = "hourly"', "followers.digest"),
    ("max_subscribers = -1", "followers.max_subscribers must not be negative"),
    ('bot_username = "x"', "followers.bot_username"),
    ("colour = 1", "unknown config key followers.colour"),
    ('template = "{{ nope }}"', "followers"),
])
def test_followers_config_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _config(tmp_path, toml + "\n")


def test_webhook_secret_is_never_echoed(tmp_path: Path) -> None:
    secret = "Sup3r-secret_value"
    config = _config(tmp_path, f'webhook_url = "https://example.com/hook"\n'
                               f'webhook_secret = "{secret}"\n')
    assert secret not in repr(config)
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, f'webhook_url = "ftp://example.com"\nwebhook_secret = "{secret}"\n')
    assert secret not in str(caught.value)
