"""The stand-in's forwardMessage, another admin's posts, the probe guard and fault scripts:
what ``test_reconcile`` relies on, each by itself through python-telegram-bot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from standin.server import DEFAULT_TOKEN, BotApiStandin
from telegram import Bot, Message, MessageOriginChannel
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError
from test_standin import with_bot

CHANNEL = "@news_channel"
AUDIT = -4001  # a private group of the operator's
PHOTO_URL = "https://example.org/pictures/lead.jpg"


@pytest.fixture
def api() -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False, slow_seconds=1.0) as standin:
        yield standin


def test_a_forward_copies_what_the_original_shows_and_names_its_origin(
    api: BotApiStandin
) -> None:
    async def post_and_forward(bot: Bot) -> tuple[int, Message]:
        posted = await bot.send_photo(CHANNEL, PHOTO_URL, caption='<a href="https://e.com/a">'
                                      "Title</a>\nExcerpt", parse_mode=ParseMode.HTML)
        copy = await bot.forward_message(AUDIT, CHANNEL, posted.message_id,
                                         disable_notification=True)
        return posted.message_id, copy

    message_id, copy = with_bot(api, post_and_forward)
    assert copy.chat.id == AUDIT and copy.message_id == 1  # the audit chat's own ids
    assert copy.caption == "Title\nExcerpt" and copy.photo
    assert [(e.type, e.url) for e in copy.caption_entities] == [("text_link", "https://e.com/a")]
    origin = copy.forward_origin
    assert isinstance(origin, MessageOriginChannel)
    assert origin.message_id == message_id and origin.chat.username == "news_channel"
    [record] = api.forwards
    assert record.disable_notification and record.reply_markup is None
    assert len(api.sent_to(CHANNEL)) == 1  # nothing new in the channel


def test_a_missing_id_is_not_found_and_a_refusing_target_is_forbidden(
    api: BotApiStandin
) -> None:
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "one"))
    with pytest.raises(BadRequest, match="Message to forward not found"):
        with_bot(api, lambda bot: bot.forward_message(AUDIT, CHANNEL, 2))  # beyond the newest
    api.delete_by_admin(CHANNEL, 1)
    with pytest.raises(BadRequest, match="Message to forward not found"):
        with_bot(api, lambda bot: bot.forward_message(AUDIT, CHANNEL, 1))  # deleted
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "two"))
    api.forbid_chat(AUDIT, kicked=False)
    with pytest.raises(Forbidden):
        with_bot(api, lambda bot: bot.forward_message(AUDIT, CHANNEL, 2))
    assert api.forwards == []


def test_another_admins_posts_take_ids_and_cannot_be_edited(api: BotApiStandin) -> None:
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "ours"))
    assert api.post_as_admin(CHANNEL, "theirs") == 2
    assert api.post_as_admin(CHANNEL, "a photo", photo=PHOTO_URL) == 3
    posted = with_bot(api, lambda bot: bot.send_message(CHANNEL, "ours again"))
    assert posted.message_id == 4
    copy = with_bot(api, lambda bot: bot.forward_message(AUDIT, CHANNEL, 3))
    assert copy.caption == "a photo" and copy.photo
    with pytest.raises(BadRequest, match="can't be edited"):
        with_bot(api, lambda bot: bot.edit_message_text("rewritten", CHANNEL, 2))
    assert api.changed_messages == []


def test_the_probe_guard_lists_every_message_an_edit_changed(api: BotApiStandin) -> None:
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "same"))
    with pytest.raises(BadRequest, match="not modified"):
        with_bot(api, lambda bot: bot.edit_message_text("same", CHANNEL, 1))
    assert api.changed_messages == []
    with_bot(api, lambda bot: bot.edit_message_text("changed", CHANNEL, 1))
    [(chat_id, message_id)] = api.changed_messages
    assert message_id == 1 and chat_id == api.sent_to(CHANNEL)[0].chat["id"]


def test_a_fault_script_takes_one_fault_per_call_in_order(api: BotApiStandin) -> None:
    api.script_faults("sendMessage", ["", "drop", ""])
    api.inject("500", method="sendMessage")  # queued: for the calls after the script
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "1"))
    with pytest.raises(NetworkError):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "2"))
    with_bot(api, lambda bot: bot.send_message(CHANNEL, "3"))
    with pytest.raises(NetworkError):
        with_bot(api, lambda bot: bot.send_message(CHANNEL, "4"))
    assert [r.text for r in api.messages] == ["1", "3"]
    with pytest.raises(ValueError, match="unknown fault"):
        api.script_faults("sendMessage", ["nope"])
