"""Retractions: a posted article that now says ``published: false`` has its post deleted
(or marked, per ``telegram.on_retract``), once; a deleted file or a quality drop does not."""

from __future__ import annotations

import logging
import time

import pytest
from helpers import ArticleWriter
from standin.server import BotApiStandin
from test_edits import CHAT, ConfigMaker, make_config, push, state_of, state_url, token

from publisher.errors import ConfigError

__all__ = ["make_config", "state_url", "token"]  # fixtures shared with test_edits


def requests(api: BotApiStandin) -> list[str]:
    """The sends, edits and deletes asked for, a refused one as "method 400"."""
    return [r.method if r.status == 200 else f"{r.method} {r.status}" for r in api.requests
            if r.method.startswith(("send", "edit", "delete"))]


def test_an_unpublished_article_has_its_post_deleted_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    [posted] = botapi.sent_to(CHAT)
    write_article("1.txt", 1, published=False)
    outcome = push(config)
    assert outcome.report.total("retracted") == 1 and outcome.report.total("sent") == 0
    assert requests(botapi) == ["sendPhoto", "deleteMessage"]
    assert botapi.sent_to(CHAT) == []
    assert [record.message_id for record in botapi.deleted] == [posted.message_id]
    assert state_of(config) == ["retracted"]
    # A second push does nothing.
    assert push(config).report.total("retracted") == 0
    assert requests(botapi) == ["sendPhoto", "deleteMessage"]


def test_a_post_older_than_48_hours_is_marked_instead_and_logged(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    [posted] = botapi.sent_to(CHAT)
    botapi.set_message_date(CHAT, posted.message_id, time.time() - 49 * 3600)
    write_article("1.txt", 1, published=False)
    with caplog.at_level(logging.INFO):
        assert push(config).report.total("retracted") == 1
    assert requests(botapi) == ["sendPhoto", "deleteMessage 400", "editMessageCaption"]
    [marked] = botapi.sent_to(CHAT)
    assert marked.message_id == posted.message_id
    assert marked.visible_text == "This article was withdrawn."
    assert not marked.reply_markup or not marked.reply_markup.get("inline_keyboard")
    assert "retract_marked_instead" in caplog.text
    assert state_of(config) == ["retracted"]


def test_a_post_the_ledger_knows_is_old_is_marked_without_a_delete(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from publisher.state import open_store

    write_article("1.txt", 1, images=[])
    config = make_config()
    push(config)
    store = open_store(config.state.url)
    try:
        store.db.execute("UPDATE deliveries SET sent_at = '2020-01-01T00:00:00+00:00'")
    finally:
        store.close()
    write_article("1.txt", 1, images=[], published=False)
    with caplog.at_level(logging.INFO):
        push(config)
    assert requests(botapi) == ["sendMessage", "editMessageText"]
    assert botapi.sent_to(CHAT)[0].visible_text == "This article was withdrawn."
    [warning] = [r for r in caplog.records if r.getMessage() == "retract_marked_instead"]
    assert "older than 48 hours" in str(warning.__dict__)


def test_mark_mode_edits_the_post_to_the_template(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1, images=[])
    config = make_config(on_retract="mark",
                         retract_template="Withdrawn: {{ title }} ({{ provider }})")
    push(config)
    write_article("1.txt", 1, images=[], published=False)
    assert push(config).report.total("retracted") == 1
    assert requests(botapi) == ["sendMessage", "editMessageText"]
    [marked] = botapi.sent_to(CHAT)
    assert marked.visible_text == "Withdrawn: Article number 1 (Example News)"
    assert state_of(config) == ["retracted"]
    push(config)
    assert requests(botapi) == ["sendMessage", "editMessageText"]


def test_keep_mode_sends_nothing(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config(on_retract="keep")
    push(config)
    write_article("1.txt", 1, published=False)
    push(config)
    assert requests(botapi) == ["sendPhoto"]
    assert len(botapi.sent_to(CHAT)) == 1
    assert state_of(config) == ["sent"]


def test_a_deleted_file_or_a_quality_drop_is_not_a_retraction(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    write_article("2.txt", 2)
    config = make_config()
    push(config)
    (config.articles.dir / "1.txt").unlink()
    write_article("2.txt", 2, quality=1)
    push(config)
    assert requests(botapi) == ["sendPhoto", "sendPhoto"]
    assert len(botapi.sent_to(CHAT)) == 2
    assert state_of(config) == ["sent", "sent"]


def test_a_post_already_deleted_by_an_admin_is_gone(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    write_article("1.txt", 1)
    config = make_config()
    push(config)
    [posted] = botapi.sent_to(CHAT)
    botapi.delete_by_admin(CHAT, posted.message_id)
    write_article("1.txt", 1, published=False)
    assert push(config).report.total("gone") == 1
    assert state_of(config) == ["gone"]
    push(config)
    assert requests(botapi) == ["sendPhoto", "deleteMessage 400"]


def test_the_dry_run_shows_the_retraction(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from publisher.session import Session

    write_article("1.txt", 1)
    config = make_config()
    push(config)
    write_article("1.txt", 1, published=False)
    with Session.for_dry_run(config) as session:
        plan = session.dry_run()
    [article_id] = [line.split()[1] for line in plan.edits]
    assert plan.edits == [f"retract {article_id} in {CHAT}: unpublished (delete)"]
    assert "1 retraction" in str(plan.plan)
    assert requests(botapi) == ["sendPhoto"]
    assert state_of(config) == ["sent"]


def test_a_retracted_article_stays_out_of_the_feeds(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from publisher.session import Session

    write_article("1.txt", 1)
    write_article("2.txt", 2)
    config = make_config()
    push(config)
    write_article("1.txt", 1, published=False)
    push(config)
    with Session.for_dry_run(config) as session:
        articles, _ = session.catalog.feed_articles(10)
    assert [article.title for article in articles] == ["Article number 2"]


@pytest.mark.parametrize(("key", "value"), [("on_retract", "erase"),
                                            ("retract_template", "{{ secret }}")])
def test_bad_retract_settings_are_refused_at_start(
    make_config: ConfigMaker, key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"telegram.{key}"):
        make_config(**{key: value})


# -- the stand-in answers deleteMessage as Telegram does ---------------------------------------


def test_standin_delete_message_answers(botapi: BotApiStandin) -> None:
    import httpx

    botapi.add_chat(CHAT)
    url = f"{botapi.base_url}{botapi.token}"
    first = httpx.post(f"{url}/sendMessage", json={"chat_id": CHAT, "text": "a"}).json()
    second = httpx.post(f"{url}/sendMessage", json={"chat_id": CHAT, "text": "b"}).json()
    ids = [first["result"]["message_id"], second["result"]["message_id"]]
    answer = httpx.post(f"{url}/deleteMessage", json={"chat_id": CHAT, "message_id": ids[0]})
    assert answer.json() == {"ok": True, "result": True}
    again = httpx.post(f"{url}/deleteMessage", json={"chat_id": CHAT, "message_id": ids[0]})
    assert again.json()["description"] == "Bad Request: message to delete not found"
    botapi.set_message_date(CHAT, ids[1], time.time() - 48 * 3600 - 1)
    old = httpx.post(f"{url}/deleteMessage", json={"chat_id": CHAT, "message_id": ids[1]})
    assert old.json()["description"] == "Bad Request: message can't be deleted"
    assert [record.text for record in botapi.sent_to(CHAT)] == ["b"]
