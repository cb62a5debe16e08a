"""The stand-in's chat questions, as python-telegram-bot sees them: getChat, getChatMember."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from standin.server import DEFAULT_TOKEN, BotApiStandin, StandinProcess
from telegram import (
    Bot,
    ChatFullInfo,
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberRestricted,
)
from telegram.error import BadRequest, ChatMigrated

T = TypeVar("T")
BOT_ID = int(DEFAULT_TOKEN.split(":")[0])


@pytest.fixture
def api() -> Iterator[BotApiStandin]:
    with BotApiStandin(DEFAULT_TOKEN, rate_limits=False) as standin:
        yield standin


def with_bot(api: BotApiStandin, call: Callable[[Bot], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Bot(DEFAULT_TOKEN, base_url=api.base_url) as bot:
            return await call(bot)

    return asyncio.run(run())


def test_get_chat_answers_the_id_that_sends_get(api: BotApiStandin) -> None:
    chat = with_bot(api, lambda bot: bot.get_chat("@News_Channel"))
    assert isinstance(chat, ChatFullInfo)
    assert (chat.type, chat.username) == ("channel", "News_Channel")
    message = with_bot(api, lambda bot: bot.send_message("@news_channel", "hello"))
    assert message.chat.id == chat.id  # one channel, whichever name is used
    again = with_bot(api, lambda bot: bot.get_chat(chat.id))
    assert again.id == chat.id and again.username == "News_Channel"


def test_get_chat_of_a_known_id_and_of_groups(api: BotApiStandin) -> None:
    api.add_chat("@opnews", -1001000000000)
    api.add_chat(-123)  # once chats are added, only those exist
    by_name = with_bot(api, lambda bot: bot.get_chat("@opnews"))
    assert by_name.id == -1001000000000
    group = with_bot(api, lambda bot: bot.get_chat(-123))
    assert group.type == "group" and group.permissions is not None
    assert group.permissions.can_send_messages is True


def test_unknown_and_migrated_chats(api: BotApiStandin) -> None:
    api.unknown_chat("@gone_channel")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        with_bot(api, lambda bot: bot.get_chat("@gone_channel"))
    api.migrate_chat(-5, -1005)
    with pytest.raises(ChatMigrated) as migrated:
        with_bot(api, lambda bot: bot.get_chat(-5))
    assert migrated.value.new_chat_id == -1005


def test_only_listed_chats_exist_when_some_are_listed() -> None:
    with BotApiStandin(DEFAULT_TOKEN, known_chats=["@listed_one"]) as api:
        assert with_bot(api, lambda bot: bot.get_chat("@listed_one")).type == "channel"
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            with_bot(api, lambda bot: bot.get_chat("@other_one"))


def test_the_bot_administers_channels_and_is_a_member_of_groups(api: BotApiStandin) -> None:
    channel = with_bot(api, lambda bot: bot.get_chat_member("@news_channel", BOT_ID))
    assert isinstance(channel, ChatMemberAdministrator) and channel.can_post_messages
    group = with_bot(api, lambda bot: bot.get_chat_member(-123, BOT_ID))
    assert isinstance(group, ChatMemberMember)
    with pytest.raises(BadRequest, match=r"(?i)user not found"):
        with_bot(api, lambda bot: bot.get_chat_member("@news_channel", 42))


@pytest.mark.parametrize(
    ("status", "rights", "kind"),
    [
        ("member", {}, ChatMemberMember),
        ("left", {}, ChatMemberLeft),
        ("kicked", {}, ChatMemberBanned),
        ("restricted", {}, ChatMemberRestricted),
        ("administrator", {"can_post_messages": False}, ChatMemberAdministrator),
    ],
)
def test_tests_choose_the_bots_membership(api: BotApiStandin, status: str,
                                          rights: dict[str, bool], kind: type) -> None:
    api.set_member("@news_channel", status, **rights)
    member: Any = with_bot(api, lambda bot: bot.get_chat_member("@news_channel", BOT_ID))
    assert isinstance(member, kind) and member.status == status
    if status == "administrator":
        assert member.can_post_messages is False
    if status == "restricted":
        assert member.is_member and member.can_send_messages is False


def test_a_banned_bot_can_still_look_the_channel_up_but_not_post(api: BotApiStandin) -> None:
    api.forbid_chat("@news_channel")
    chat = with_bot(api, lambda bot: bot.get_chat("@news_channel"))
    member = with_bot(api, lambda bot: bot.get_chat_member(chat.id, BOT_ID))
    assert member.status == "kicked"
    api.forbid_chat("@news_channel", kicked=False)
    member = with_bot(api, lambda bot: bot.get_chat_member("@news_channel", BOT_ID))
    assert member.status == "left"
    api.allow_chat("@news_channel")
    member = with_bot(api, lambda bot: bot.get_chat_member(chat.id, BOT_ID))
    assert member.status == "administrator"


def test_faults_without_a_method_leave_the_questions_alone(api: BotApiStandin) -> None:
    api.inject("500", times=1)
    assert with_bot(api, lambda bot: bot.get_chat("@news_channel")).type == "channel"
    api.inject("500", times=1, method="getChat")
    with pytest.raises(Exception, match="Internal Server Error"):
        with_bot(api, lambda bot: bot.get_chat("@news_channel"))


def test_membership_through_the_control_endpoint(botapi_process: StandinProcess) -> None:
    botapi_process.control("set_member", {"chat": "@news_channel", "status": "member"})

    async def ask() -> Any:
        async with Bot(DEFAULT_TOKEN, base_url=botapi_process.base_url) as bot:
            return await bot.get_chat_member("@news_channel", BOT_ID)

    assert asyncio.run(ask()).status == "member"
