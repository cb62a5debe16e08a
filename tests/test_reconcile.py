"""Uncertain sends resolved by themselves: after an ambiguous send, the candidate ids after the
chat's last known message are forwarded to ``telegram.audit_chat``, compared with what was
rendered and deleted again; found -> sent with its id, surely not posted -> sent again once,
anything else -> uncertain as without a look. End to end: the real TelegramSender, the strict
stand-in, a real state. No probe ever changes a message (``changed_messages``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import pipeline, reconcile
from publisher.config import Config, load_config
from publisher.errors import ConfigError
from publisher.state import open_store

CHAT = "@news"
AUDIT = "-4001"  # the operator's private group
ConfigMaker = Callable[..., Config]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in carries a request out before it answers: no need to wait 5 s for it
    (``test_missing_ids_are_looked_at_again_after_the_settle_time`` waits)."""
    monkeypatch.setattr(reconcile, "SETTLE_SECONDS", 0.0)


@pytest.fixture(autouse=True)
def probe_guard(botapi: BotApiStandin) -> Iterator[list[tuple[int, int]]]:
    """The guard of every test here: no message's content was changed by an edit (but the
    ones a test lists as its article's own edits), and the only messages deleted are the
    forwards in the audit chat."""
    allowed: list[tuple[int, int]] = []
    yield allowed
    assert [change for change in botapi.changed_messages if change not in allowed] == []
    assert all(record.forward_origin is not None and str(record.chat["id"]) == AUDIT
               for record in botapi.deleted)


@pytest.fixture
def state_url(request: pytest.FixtureRequest) -> str:
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite:///state/publisher.db"


@pytest.fixture
def make_config(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin,
                state_url: str) -> ConfigMaker:
    def make(**telegram: object) -> Config:
        settings: dict[str, object] = {
            "chat_id": CHAT, "audit_chat": AUDIT, "max_age_hours": 0, "max_per_run": 0,
            "per_chat_interval_seconds": 0.05, "timeout_seconds": 0.5, "max_wait_seconds": 5,
            "api_base_url": botapi.base_url, **telegram,
        }
        (tmp_path / "state").mkdir(exist_ok=True)
        lines = "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items())
        path = tmp_path / "config.toml"
        path.write_text(f'[articles]\ndir = "articles"\n[state]\nurl = "{state_url}"\n'
                        f"[telegram]\n{lines}", encoding="utf-8")
        return load_config(path, environ={})

    return make


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def states(config: Config) -> dict[str, tuple[str, int | None]]:
    """Per article title: its ledger state and message id."""
    store = open_store(config.state.url)
    try:
        rows = store.db.execute("SELECT title, state, message_id FROM deliveries")
        return {title: (state, message_id) for title, state, message_id in rows}
    finally:
        store.close()


def titles(api: BotApiStandin) -> list[str]:
    """The first line of each message in the channel, in id order."""
    return [record.visible_text.split("\n")[0]
            for record in sorted(api.sent_to(CHAT), key=lambda r: r.message_id)]


def calls(api: BotApiStandin, method: str) -> list[int]:
    """The statuses of every ``method`` request (0: the connection was dropped)."""
    return [request.status for request in api.requests if request.method == method]


def first_post(config: Config, write_article: ArticleWriter) -> None:
    """One post that went out: the chat's last known message id."""
    write_article("1.txt", 1)
    assert push(config).report.total("sent") == 1


def test_a_send_dropped_before_it_was_posted_is_sent_again_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject("drop", method="sendPhoto")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and outcome.report.total("resolved") == 1
    assert outcome.report.total("sent") == 1 and outcome.report.ok
    assert titles(botapi) == ["Article number 1", "Article number 2"]
    # Ids 2, 3, 4 are beyond the channel's newest message: conclusively not posted.
    assert calls(botapi, "forwardMessage") == [400] * reconcile.TAIL
    assert calls(botapi, "sendPhoto") == [200, 0, 200]
    assert states(config) == {"Article number 1": ("sent", 1), "Article number 2": ("sent", 2)}
    push(config)  # and never again
    assert len(botapi.sent_to(CHAT)) == 2


def test_missing_ids_are_looked_at_again_after_the_settle_time(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "SETTLE_SECONDS", 1.5)
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject("drop", method="sendPhoto")
    assert push(config).report.total("resolved") == 1
    # Ids 2-4 missing at once; "not posted" only once they are still missing 1.5 s on.
    assert calls(botapi, "forwardMessage") == [400] * (2 * reconcile.TAIL)
    forwards = [r.at for r in botapi.requests if r.method == "forwardMessage"]
    [dropped] = [r.at for r in botapi.requests if r.status == 0]
    assert forwards[-1] - dropped >= 1.4 > forwards[reconcile.TAIL - 1] - dropped
    assert titles(botapi) == ["Article number 1", "Article number 2"]


@pytest.mark.parametrize("fault", ["drop_after_record", "slow_after_record"])
def test_a_send_posted_without_an_answer_is_found_and_not_sent_again(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin, fault: str,
    probe_guard: list[tuple[int, int]],
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject(fault, method="sendPhoto")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and outcome.report.total("resolved") == 1
    assert outcome.report.total("sent") == 1
    assert titles(botapi) == ["Article number 1", "Article number 2"]
    assert calls(botapi, "sendPhoto") == [200, 0 if fault == "drop_after_record" else 200]
    assert states(config)["Article number 2"] == ("sent", 2)
    assert botapi.changed_messages == []
    # Forwarded silently, as the channel's post, then deleted from the audit chat.
    [copy] = botapi.forwards
    assert copy.disable_notification and copy.forward_origin is not None
    assert copy.forward_origin["type"] == "channel" and copy.forward_origin["message_id"] == 2
    assert botapi.sent_to(AUDIT) == []
    # Its rendering was recorded as a send's is: the post follows its article.
    write_article("2.txt", 2, title="Article number 2, corrected")
    assert push(config).report.total("edited") == 1
    [edit] = botapi.edits
    assert calls(botapi, "editMessageCaption") == [200] and edit.message_id == 2
    probe_guard.append((edit.chat["id"], 2))  # the article's own edit, after the look


@pytest.mark.parametrize("fault", ["drop", "drop_after_record"])
def test_another_admins_posts_in_between(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin, fault: str
) -> None:
    config = make_config()
    first_post(config, write_article)
    botapi.post_as_admin(CHAT, "Breaking: an editor's note")
    botapi.post_as_admin(CHAT, "A word from the editors", photo="https://img.example.com/e.jpg")
    write_article("2.txt", 2, title="The second article")
    botapi.inject(fault, method="sendPhoto")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and outcome.report.total("resolved") == 1
    [(state, message_id)] = [value for title, value in states(config).items()
                             if title == "The second article"]
    assert state == "sent" and message_id == 4
    assert titles(botapi) == ["Article number 1", "Breaking: an editor's note",
                              "A word from the editors", "The second article"]
    # Both admin posts forwarded and deleted again; neither was touched.
    expected = 2 + (1 if fault == "drop_after_record" else reconcile.TAIL)
    assert len(calls(botapi, "forwardMessage")) == expected
    assert len(botapi.forwards) == expected - (0 if fault == "drop_after_record"
                                               else reconcile.TAIL)
    assert botapi.sent_to(AUDIT) == []


def test_without_an_audit_chat_it_stays_uncertain_as_before(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config(audit_chat="")
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject("drop", method="sendPhoto")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 1 and outcome.report.total("resolved") == 0
    assert calls(botapi, "forwardMessage") == []
    assert states(config)["Article number 2"] == ("uncertain", None)


def test_reconcile_false_leaves_it_uncertain_as_before(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config(reconcile=False)
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject("drop_after_record", method="sendPhoto")
    assert push(config).report.total("uncertain") == 1
    assert calls(botapi, "forwardMessage") == []
    assert states(config)["Article number 2"] == ("uncertain", None)
    push(config)  # held for the operator, not resent
    assert len(botapi.sent_to(CHAT)) == 2


def test_on_uncertain_resend_keeps_its_meaning_where_a_look_cannot_tell(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config(on_uncertain="resend")
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.forbid_chat(int(AUDIT))
    botapi.inject("drop_after_record", method="sendPhoto")
    assert push(config).report.total("sent") == 1
    assert len(botapi.sent_to(CHAT)) == 3  # at-least-once: the first one did arrive


def test_the_first_post_of_a_chat_cannot_be_looked_for(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    write_article("1.txt", 1)
    botapi.inject("drop", method="sendPhoto")
    assert push(config).report.total("uncertain") == 1  # no known earlier id: no look
    assert calls(botapi, "forwardMessage") == []


def test_an_audit_chat_that_refuses_leaves_it_uncertain_and_the_channel_goes_on(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    botapi.forbid_chat(int(AUDIT))
    botapi.inject("drop_after_record", method="sendPhoto")
    outcome = push(config)
    assert outcome.report.total("uncertain") == 1 and outcome.report.total("sent") == 1
    assert calls(botapi, "forwardMessage") == [403]
    found = states(config)
    assert found["Article number 2"] == ("uncertain", None)
    assert found["Article number 3"][0] == "sent"  # the channel was not silenced
    push(config)  # given up: not looked for again, not resent
    assert calls(botapi, "forwardMessage") == [403]
    assert len(botapi.sent_to(CHAT)) == 3
    store = open_store(config.state.url)
    try:
        [reason] = [row[0] for row in store.db.execute(
            "SELECT reason FROM deliveries WHERE state = 'uncertain'")]
    finally:
        store.close()
    assert "not resolved by a look: forwarding to -4001 refused" in reason


def test_a_look_that_cannot_be_made_now_holds_the_chat_then_resolves(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    botapi.inject("drop_after_record", method="sendPhoto")
    botapi.inject("500", method="forwardMessage")
    outcome = push(config)
    # One unresolved send in flight: the chat posts nothing more until it is resolved.
    assert outcome.report.held == {CHAT: "an uncertain send is looked for first "
                                          "(telegram.audit_chat)"}
    assert "Article number 3" not in titles(botapi)
    assert states(config)["Article number 2"] == ("uncertain", None)
    # The dry run says what the next push does first.
    from publisher.session import Session

    with Session.for_dry_run(config) as session:
        plan = session.dry_run()
    [line] = plan.edits
    assert line.startswith("resolve uncertain ") and line.endswith(
        f" in {CHAT} (via the audit chat {AUDIT}): Article number 2")
    assert "1 uncertain to resolve" in str(plan.plan)
    outcome = push(config)
    assert outcome.report.total("resolved") == 1 and outcome.report.total("sent") == 1
    assert titles(botapi) == ["Article number 1", "Article number 2", "Article number 3"]
    assert states(config)["Article number 2"] == ("sent", 2)


def test_a_send_found_not_posted_at_the_start_of_a_run_goes_out_in_that_run(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    botapi.inject("drop", method="sendPhoto")
    botapi.inject("500", method="forwardMessage")
    push(config)  # not posted, but the look could not be made: held
    assert titles(botapi) == ["Article number 1"]
    outcome = push(config)
    assert outcome.report.total("resolved") == 1 and outcome.report.total("sent") == 2
    assert titles(botapi) == ["Article number 1", "Article number 2", "Article number 3"]
    assert {state for state, _ in states(config).values()} == {"sent"}


def test_a_look_that_keeps_failing_is_given_up_and_never_silences_the_channel(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    botapi.inject("drop", method="sendPhoto")
    botapi.inject("500", method="forwardMessage", times=100)
    for _ in range(reconcile.MAX_PASSES):
        push(config)
    assert titles(botapi) == ["Article number 1", "Article number 3"]
    assert states(config)["Article number 2"] == ("uncertain", None)
    assert len(calls(botapi, "forwardMessage")) == reconcile.MAX_PASSES


def test_a_deleted_message_after_the_last_known_id_leaves_it_uncertain(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    botapi.inject("drop", method="sendPhoto")
    botapi.inject("500", method="forwardMessage")  # the first look cannot be made
    push(config)
    # Meanwhile an admin posts twice and deletes the first: id 2 is missing, 3 exists.
    # Id 2 may have been our post, deleted: sending it again could post what an admin
    # removed, so it stays uncertain.
    botapi.delete_by_admin(CHAT, botapi.post_as_admin(CHAT, "Oops"))
    botapi.post_as_admin(CHAT, "Better")
    outcome = push(config)
    assert outcome.report.total("resolved") == 0
    assert states(config)["Article number 2"] == ("uncertain", None)
    assert titles(botapi) == ["Article number 1", "Better"]


def test_a_crash_mid_send_is_looked_for_at_the_next_start(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    from publisher.delivery import TelegramSender
    from publisher.messages import render_for
    from publisher.state import NewDelivery

    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    [article] = [a for a in pipeline.load_and_select(config).selected
                 if a.title == "Article number 2"]
    message = render_for(article, config, CHAT)
    store = open_store(config.state.url)
    try:  # what a push does up to the send, then the send, then the process dies
        [key] = {row[0] for row in store.db.execute("SELECT chat_id FROM deliveries")}
        store.add_deliveries([NewDelivery(article.id, key, article.title, article.url,
                                          article.published_at.isoformat())])
        assert store.claim_next(key, time.time(), "crashed", time.time() - 1)
        reconcile.prepare(store.db, article.id, key, 1, message, article, time.time() - 10)
    finally:
        store.close()
    sender = TelegramSender(DEFAULT_TOKEN, botapi.base_url)

    async def send() -> int:
        try:
            assert message.photo_url
            return await sender.send_photo(key, message.photo_url, message.html,
                                           message.buttons)
        finally:
            await sender.close()

    assert asyncio.run(send()) == 2
    outcome = push(config)  # recovered as uncertain, then looked for first
    assert outcome.report.total("resolved") == 1 and outcome.report.total("sent") == 0
    assert states(config)["Article number 2"] == ("sent", 2)
    assert len(botapi.sent_to(CHAT)) == 2


def test_a_run_with_faults_interleaved_delivers_every_article_exactly_once(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    for index in range(2, 10):
        write_article(f"{index}.txt", index)
    botapi.post_as_admin(CHAT, "An editor's note")
    # Each sendPhoto in turn: the faults that lose a send before it is posted and after.
    botapi.script_faults("sendPhoto", ["drop", "", "drop_after_record", "slow_after_record",
                                       "", "drop", "drop_after_record", "", "drop", ""])
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and outcome.report.ok
    assert outcome.report.total("resolved") == 6
    expected = [f"Article number {index}" for index in range(1, 10)]
    assert sorted(title for title in titles(botapi) if title.startswith("Article")) \
        == sorted(expected)
    assert len(botapi.sent_to(CHAT)) == 10  # nine articles, once each, and the note
    assert {state for state, _ in states(config).values()} == {"sent"}
    ids = [message_id for _, message_id in states(config).values()]
    assert len(set(ids)) == 9
    assert botapi.sent_to(AUDIT) == []


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)
def test_postgresql_state(
    make_config: ConfigMaker, write_article: ArticleWriter, botapi: BotApiStandin
) -> None:
    config = make_config()
    first_post(config, write_article)
    write_article("2.txt", 2)
    write_article("3.txt", 3)
    botapi.script_faults("sendPhoto", ["drop", "", "slow_after_record"])
    outcome = push(config)
    assert outcome.report.total("uncertain") == 0 and outcome.report.total("resolved") == 2
    assert titles(botapi) == ["Article number 1", "Article number 2", "Article number 3"]


def test_the_audit_chat_must_be_a_chat(make_config: ConfigMaker) -> None:
    with pytest.raises(ConfigError, match=r"telegram\.audit_chat must be a chat"):
        make_config(audit_chat="-100123/4")
    with pytest.raises(ConfigError, match=r"telegram\.audit_chat must be a chat of the "):
        make_config(audit_chat="@NEWS")
    with pytest.raises(ConfigError, match=r"telegram\.reconcile"):
        make_config(reconcile="maybe")


def test_check_telegram_asks_about_the_audit_chat_too(
    make_config: ConfigMaker, botapi: BotApiStandin
) -> None:
    from publisher.delivery import TelegramSender
    from publisher.destinations import check_telegram

    config = make_config()
    sender = TelegramSender(DEFAULT_TOKEN, botapi.base_url)
    checks = asyncio.run(check_telegram(config, sender))
    assert [check.ok for check in checks] == [True, True, True]
    assert checks[-1].subject == f"{AUDIT} (telegram.audit_chat)"
    botapi.forbid_chat(int(AUDIT))
    checks = asyncio.run(check_telegram(config, TelegramSender(DEFAULT_TOKEN, botapi.base_url)))
    assert not checks[-1].ok


def test_what_counts_as_the_post() -> None:
    """The comparison by itself: the same text, links and photo; a message that shares the
    first line or a link is no verdict either way."""
    from publisher.edits import TEXT

    expected = reconcile.Expected(
        (reconcile.Form(True, "Title\nExcerpt", ("https://news.example.com",)),),
        {TEXT: "[]"}, "digest", "Title")
    same, like, other = reconcile.Likeness.SAME, reconcile.Likeness.LIKE, \
        reconcile.Likeness.OTHER
    assert reconcile.likeness("Title\nExcerpt ", True, ["HTTPS://News.example.com/"],
                              expected) is same
    assert reconcile.likeness("Title\nExcerpt", False, ["https://news.example.com"],
                              expected) is like  # no photo
    assert reconcile.likeness("Title\nOther", True, [], expected) is like
    assert reconcile.likeness("Else\nExcerpt", True, ["https://news.example.com/"],
                              expected) is like
    assert reconcile.likeness("Else\nExcerpt", True, [], expected) is other
    assert reconcile.visible_text(' <a href="https://e.com/?a=1&amp;b=2">T &amp; U</a>\n') \
        == "T & U"
    assert reconcile.link_urls('<a href="https://e.com/?a=1&amp;b=2">T</a>') \
        == ("https://e.com/?a=1&b=2",)
