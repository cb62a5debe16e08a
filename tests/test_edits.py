"""Posts that follow their article: a changed record edits its post in place
(editMessageCaption/Text/Media/ReplyMarkup), once, never because of a template change."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.state import SCHEMA_VERSION, open_store

CHAT = "@news"
ConfigMaker = Callable[..., Config]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite:///state/publisher.db"


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin,
                state_url: str) -> ConfigMaker:
    def make(extra: str = "", **telegram: object) -> Config:
        settings: dict[str, object] = {
            "chat_id": CHAT, "max_age_hours": 0, "max_per_run": 0,
            "per_chat_interval_seconds": 0.06, "timeout_seconds": 2, "max_wait_seconds": 5,
            "api_base_url": botapi.base_url, **telegram,
        }
        (tmp_path / "state").mkdir(exist_ok=True)
        lines = "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items())
        path = tmp_path / "config.toml"
        path.write_text(f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n'
                        f"[telegram]\n{lines}{extra}", encoding="utf-8")
        return load_config(path, environ={})

    return make


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def methods(api: BotApiStandin) -> list[str]:
    return [request.method for request in api.requests
            if request.method.startswith(("send", "edit")) and request.status == 200]


def state_of(config: Config, article_id: str | None = None) -> list[str]:
    store = open_store(config.state.url)
    try:
        rows = store.db.execute("SELECT state FROM deliveries ORDER BY article_id")
        return [row[0] for row in rows]
    finally:
        store.close()


def test_a_title_fix_edits_the_caption_once_and_posts_nothing_new(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    assert push(config).report.total("sent") == 1
    [posted] = botapi.sent_to(CHAT)
    write_article("1.txt", 1, title="Article number 1, corrected")
    outcome = push(config)
    assert outcome.report.total("edited") == 1 and outcome.report.total("sent") == 0
    assert methods(botapi) == ["sendPhoto", "editMessageCaption"]
    [edited] = botapi.sent_to(CHAT)
    assert edited.message_id == posted.message_id
    assert edited.visible_text.startswith("Article number 1, corrected")
    assert edited.photo == posted.photo
    # A second push edits nothing.
    assert push(config).report.total("edited") == 0
    assert methods(botapi) == ["sendPhoto", "editMessageCaption"]


def test_an_image_change_edits_the_media(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    new_image = [{"url": "https://img.example.com/other.jpg", "width": 1200, "height": 800}]
    write_article("1.txt", 1, images=new_image)
    assert push(config).report.total("edited") == 1
    assert methods(botapi) == ["sendPhoto", "editMessageMedia"]
    [edited] = botapi.sent_to(CHAT)
    assert edited.photo == "https://img.example.com/other.jpg"
    assert edited.visible_text.startswith("Article number 1")


def test_a_photo_post_whose_article_lost_its_image_keeps_its_photo(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    write_article("1.txt", 1, images=[], excerpt="A better excerpt.")
    assert push(config).report.total("edited") == 1
    assert methods(botapi) == ["sendPhoto", "editMessageCaption"]
    [edited] = botapi.sent_to(CHAT)
    assert edited.photo == "https://img.example.com/1.jpg"
    assert "A better excerpt." in edited.visible_text


def test_a_text_post_is_edited_as_text(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1, images=[])
    config = make_config()
    push(config)
    write_article("1.txt", 1, images=[], excerpt="Now with the right numbers.")
    assert push(config).report.total("edited") == 1
    assert methods(botapi) == ["sendMessage", "editMessageText"]
    assert "Now with the right numbers." in botapi.sent_to(CHAT)[0].visible_text


def test_only_the_buttons_changed_edits_the_reply_markup(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    related = [{"title": "Background", "webUrl": "https://other.example.net/background"}]
    write_article("1.txt", 1, related=related)
    outcome = push(config)
    assert outcome.report.total("edited") == 1
    assert methods(botapi) == ["sendPhoto", "editMessageReplyMarkup"]
    markup = botapi.sent_to(CHAT)[0].reply_markup
    assert "https://other.example.net/background" in str(markup)


def test_a_template_change_alone_edits_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    push(make_config())
    changed = make_config(template="<b>{{ title }}</b>")
    assert push(changed).report.total("edited") == 0
    # An unrelated change of the file (its quality) renders the same: nothing either.
    write_article("1.txt", 1, quality=99)
    assert push(make_config()).report.total("edited") == 0
    assert methods(botapi) == ["sendPhoto"]


def test_edits_off_or_posts_too_old_are_left_alone(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    state_url: str,
) -> None:
    write_article("1.txt", 1)
    write_article("2.txt", 2)
    config = make_config()
    push(config)
    store = open_store(config.state.url)
    try:  # article 2 was posted three days ago
        store.db.execute("UPDATE deliveries SET sent_at = '2020-01-01T00:00:00+00:00' "
                         "WHERE article_id = (SELECT article_id FROM deliveries "
                         "WHERE title = 'Article number 2')")
    finally:
        store.close()
    write_article("1.txt", 1, title="First, fixed")
    off = make_config(edits=False)
    assert push(off).report.total("edited") == 0
    write_article("1.txt", 1, title="First, fixed again")
    write_article("2.txt", 2, title="Second, fixed")
    assert push(config).report.total("edited") == 1  # only the recent one
    assert [r.visible_text.split("\n")[0] for r in botapi.edits] == ["First, fixed again"]
    write_article("2.txt", 2, title="Second, fixed twice")
    assert push(make_config(edit_max_age_hours=0)).report.total("edited") == 1


def test_not_modified_counts_as_done(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    before = _kept(config)
    write_article("1.txt", 1, title="Fixed")
    assert push(config).report.total("edited") == 1
    # As if another instance had edited it without the ledger hearing of it: the edit is
    # tried again and Telegram answers that the message already shows it.
    _restore(config, before)
    outcome = push(config)
    assert outcome.report.ok and outcome.report.total("edited") == 0
    assert [r.status for r in botapi.requests if r.method.startswith("edit")] == [200, 400]
    assert state_of(config) == ["sent"]
    assert _kept(config) != before  # recorded as done: not tried again
    push(config)
    assert len([r for r in botapi.requests if r.method.startswith("edit")]) == 2


def _kept(config: Config) -> tuple[str, str]:
    store = open_store(config.state.url)
    try:
        row = store.db.execute("SELECT rendered, article_digest FROM deliveries").fetchone()
        return str(row[0]), str(row[1])
    finally:
        store.close()


def _restore(config: Config, kept: tuple[str, str]) -> None:
    """The ledger's memory of the post as before, and its article to be planned again."""
    store = open_store(config.state.url)
    try:
        store.db.execute("UPDATE deliveries SET rendered = ?, article_digest = ?", kept)
        store.db.execute("DELETE FROM planned")
        store.db.execute("DELETE FROM meta WHERE key = 'planned_through'")
    finally:
        store.close()


def test_a_post_deleted_by_an_admin_is_gone_and_never_touched_again(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    [posted] = botapi.sent_to(CHAT)
    botapi.delete_by_admin(CHAT, posted.message_id)
    write_article("1.txt", 1, title="Fixed")
    outcome = push(config)
    assert outcome.report.total("gone") == 1 and outcome.report.total("sent") == 0
    assert state_of(config) == ["gone"]
    write_article("1.txt", 1, title="Fixed again")
    push(config)
    edit_tries = [r for r in botapi.requests if r.method.startswith("edit")]
    assert len(edit_tries) == 1
    assert botapi.sent_to(CHAT) == []


def test_the_dry_run_shows_the_edit(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from publisher.session import Session

    write_article("1.txt", 1)
    config = make_config()
    push(config)
    write_article("1.txt", 1, title="Fixed")
    with Session.for_dry_run(config) as session:
        plan = session.dry_run()
    assert len(plan.edits) == 1
    assert plan.edits[0].endswith(f"in {CHAT}: title changed")
    assert plan.items == []
    assert methods(botapi) == ["sendPhoto"]


# -- the stand-in answers edits as Telegram does ---------------------------------------------


def test_standin_refuses_an_edit_of_someone_elses_message(botapi: BotApiStandin) -> None:
    import httpx

    botapi.add_chat(CHAT)
    other = botapi.post_as_other(CHAT, "an admin's post")
    answer = httpx.post(f"{botapi.base_url}{DEFAULT_TOKEN}/editMessageText",
                        json={"chat_id": CHAT, "message_id": other, "text": "changed"})
    assert answer.json()["description"] == "Bad Request: message can't be edited"
    missing = httpx.post(f"{botapi.base_url}{DEFAULT_TOKEN}/editMessageText",
                         json={"chat_id": CHAT, "message_id": other + 5, "text": "x"})
    assert missing.json()["description"] == "Bad Request: message to edit not found"
    assert [r.visible_text for r in botapi.sent_to(CHAT)] == ["an admin's post"]


# -- the ledger remembers what was sent: schema 10 ----------------------------------------------


def test_a_version_9_state_migrates_in_place_and_its_old_posts_are_never_edited(
    tmp_path: Path, make_config: ConfigMaker, write_article: ArticleWriter,
    botapi: BotApiStandin, state_url: str,
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    store = open_store(config.state.url)
    try:  # as a version 9 state had it: no rendering kept
        store.db.execute("UPDATE deliveries SET kind = NULL, rendered = NULL, "
                         "article_digest = NULL")
        store.db.execute("ALTER TABLE deliveries DROP COLUMN rendered")
        if store.db.dialect == "postgresql":  # a version 9 CHECK, without 'gone'
            states = "'pending','sending','sent','failed','uncertain','skipped','orphaned'"
            store.db.execute("ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check")
            store.db.execute("ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check "
                             f"CHECK (state IN ({states}))")
        store.db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    finally:
        store.close()
    write_article("1.txt", 1, title="Fixed")
    assert push(config).report.total("edited") == 0
    store = open_store(config.state.url)
    try:
        version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
        store.db.execute("UPDATE deliveries SET state = 'gone'")  # allowed now
    finally:
        store.close()
    if state_url.startswith("sqlite"):
        db = sqlite3.connect(tmp_path / "state" / "publisher.db")
        columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
        db.close()
        assert {"kind", "rendered", "article_digest"} <= columns


def test_reedit_applies_a_template_change_to_the_posts_within_since(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from datetime import UTC, datetime, timedelta

    write_article("1.txt", 1)
    write_article("2.txt", 2)
    push(make_config())
    store = open_store(make_config().state.url)
    try:  # article 2 went out two days ago
        store.db.execute("UPDATE deliveries SET sent_at = ? WHERE title = 'Article number 2'",
                         ((datetime.now(UTC) - timedelta(days=2)).isoformat(),))
    finally:
        store.close()
    changed = make_config(template="<b>{{ title }}</b> (new look)")
    assert push(changed).report.total("edited") == 0  # a plain push: nothing
    since = datetime.now(UTC) - timedelta(hours=24)
    outcome = asyncio.run(pipeline.push(changed, reedit_since=since))
    assert outcome.report.total("edited") == 1 and outcome.report.total("sent") == 0
    assert [r.visible_text for r in botapi.edits] == ["Article number 1 (new look)"]
    # Done: the same again edits nothing.
    assert asyncio.run(pipeline.push(changed, reedit_since=since)).report.total("edited") == 0


def test_push_reedit_since_on_the_command_line(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from publisher.cli import cli

    write_article("1.txt", 1)
    push(make_config())
    make_config(template="<b>{{ title }}</b> (new look)")
    config = str(tmp_path / "config.toml")
    runner = CliRunner()
    bad = runner.invoke(cli, ["push", "-c", config, "--reedit", "--since", "soon"])
    assert bad.exit_code == 2 and "--since" in bad.output
    result = runner.invoke(cli, ["push", "-c", config, "--reedit", "--since", "1h"])
    assert result.exit_code == 0, result.output
    assert "Edited 1 post." in result.output
    assert len(botapi.edits) == 1
    assert botapi.sent_to(CHAT)[0].visible_text == "Article number 1 (new look)"


def test_edits_go_after_the_new_posts_of_their_chat(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    write_article("1.txt", 1, title="Fixed")
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    outcome = push(config)
    assert outcome.report.total("sent") == 2 and outcome.report.total("edited") == 1
    assert methods(botapi) == ["sendPhoto", "sendPhoto", "sendPhoto", "editMessageCaption"]
    # Paced with them: at least the chat's interval apart.
    done = [r.at for r in botapi.requests if r.method in ("sendPhoto", "editMessageCaption")]
    assert done[-1] - done[-2] >= 0.01


def test_a_forum_topic_post_is_edited_in_its_chat(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    botapi.add_forum("@group", -1001234567890, topics=[42])
    write_article("1.txt", 1)
    config = make_config(chat_id="@group/42")
    first = push(config)
    assert first.report.ok, first.report.errors
    [posted] = botapi.sent_to("@group")
    assert posted.message_thread_id == 42
    write_article("1.txt", 1, title="Fixed")
    assert push(config).report.total("edited") == 1
    [edited] = botapi.sent_to("@group")
    assert edited.message_thread_id == 42 and edited.visible_text.startswith("Fixed")


def test_a_new_photo_telegram_refuses_keeps_the_old_one_and_edits_the_caption(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    botapi.refuse_photo("https://img.example.com/refused.jpg")
    refused = [{"url": "https://img.example.com/refused.jpg", "width": 1200, "height": 800}]
    write_article("1.txt", 1, images=refused, title="Fixed")
    assert push(config).report.total("edited") == 1
    assert [(r.method, r.status) for r in botapi.requests if r.method.startswith("edit")] == [
        ("editMessageMedia", 400), ("editMessageCaption", 200)]
    [edited] = botapi.sent_to(CHAT)
    assert edited.photo == "https://img.example.com/1.jpg"
    assert edited.visible_text.startswith("Fixed")


def test_an_edit_the_push_could_not_make_is_made_by_the_next(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    write_article("1.txt", 1, title="Fixed")
    botapi.set_down()  # Telegram unreachable for this push
    push(config)
    botapi.set_down(False)
    assert methods(botapi) == ["sendPhoto"]
    assert push(config).report.total("edited") == 1
    assert methods(botapi) == ["sendPhoto", "editMessageCaption"]
    assert push(config).report.total("edited") == 0
