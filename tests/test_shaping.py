"""Shaped posts on the strict stand-in Bot API: templates, languages, silence, previews.

The stand-in parses every caption and text as Telegram does (its HTML subset, 1024/4096
UTF-16 units after parsing) and records each request's parameters.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin

from publisher import pipeline
from publisher.config import Config, load_config
from publisher.state import FAILED, open_store

CHAT = "@news"
ConfigWriter = Callable[[str], Path]
GERMAN = """
language = "de"
date_format = "long"
template = '''
<b>{{ title }}</b>

{{ excerpt }}

<i>{{ provider }}</i>, {{ date }}'''
"""


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)


@pytest.fixture
def config_path(tmp_path: Path, articles_dir: Path, botapi: BotApiStandin) -> ConfigWriter:
    """Writes config.toml for the stand-in; ``telegram`` is more of the [telegram] table."""

    def write(telegram: str) -> Path:
        (tmp_path / "state").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(
            f'[articles]\ndir = "articles"\n[state]\nurl = "sqlite:///state/publisher.db"\n'
            f'[telegram]\nchat_id = "{CHAT}"\napi_base_url = "{botapi.base_url}"\n'
            "max_age_hours = 0\nper_chat_interval_seconds = 0.06\ntimeout_seconds = 0.5\n"
            f"{telegram}",
            encoding="utf-8",
        )
        return path

    return write


def push(config: Config) -> pipeline.PushOutcome:
    return asyncio.run(pipeline.push(config))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], cwd=cwd, capture_output=True, text=True,
        env={**environment, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN}, timeout=60, check=False,
    )


def test_a_german_channel(config_path: ConfigWriter, write_article: ArticleWriter,
                          botapi: BotApiStandin) -> None:
    write_article("a.txt", 1, title="Roboter lernen sehen", excerpt="Ein kurzer Auszug.")
    outcome = push(load_config(config_path(GERMAN), environ={}))
    assert outcome.report.ok and outcome.report.total("sent") == 1
    (record,) = botapi.sent_to(CHAT)
    assert record.method.lower() == "sendphoto"
    assert record.visible_text == ("Roboter lernen sehen\n\nEin kurzer Auszug.\n\n"
                                   "Example News, 1. Januar 2025")
    assert [entity["type"] for entity in record.entities] == ["bold", "italic"]
    assert record.reply_markup is not None
    assert record.reply_markup["inline_keyboard"][0][0] == {
        "text": "Weiterlesen bei Example News", "url": "https://news.example.com/articles/1"}


def test_each_destination_gets_its_own_shape(config_path: ConfigWriter,
                                             write_article: ArticleWriter,
                                             botapi: BotApiStandin, tmp_path: Path) -> None:
    write_article("a.txt", 1, topics=["AI", "Robotik"])
    path = config_path('routes = { Robotik = "@robotik" }\n'
                       '[telegram.chats."@robotik"]\nlanguage = "de"\nsilent = true\n'
                       'read_button = "Zum Artikel ({{ provider }})"\n')
    dry = run_cli("push", "-c", str(path), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    english, german = dry.stdout.split("sendPhoto to ")[1:]
    assert english.startswith(CHAT) and "Example News · 1 Jan 2025" in english
    assert "[Read on Example News]" in english and "silent" not in english
    assert german.startswith("@robotik") and "Example News · 01.01.2025" in german
    assert "[Zum Artikel (Example News)]" in german and "silent: without a notification" in german
    assert botapi.requests == []
    push(load_config(path, environ={}))
    (loud,), (quiet,) = botapi.sent_to(CHAT), botapi.sent_to("@robotik")
    assert "disable_notification" not in loud.params
    assert quiet.params["disable_notification"] is True
    assert quiet.visible_text.endswith("Example News · 01.01.2025\n#AI #Robotik")


def test_no_link_preview_on_a_text_message(config_path: ConfigWriter,
                                           write_article: ArticleWriter,
                                           botapi: BotApiStandin) -> None:
    write_article("a.txt", 1, images=[])
    push(load_config(config_path("link_preview = false\n"), environ={}))
    (record,) = botapi.sent_to(CHAT)
    assert record.method.lower() == "sendmessage"
    assert record.link_preview_options == {"is_disabled": True}


def test_a_long_template_keeps_the_caption_within_1024(config_path: ConfigWriter,
                                                       write_article: ArticleWriter,
                                                       botapi: BotApiStandin) -> None:
    words = " ".join(f"Wort{i}" for i in range(900))
    write_article("a.txt", 1, excerpt=words)
    preamble = "Täglich das Wichtigste aus Forschung und Technik. " * 12
    template = f"template = '''<b>{{{{ title }}}}</b>\n{preamble}\n{{{{ excerpt }}}}'''\n"
    outcome = push(load_config(config_path(template), environ={}))
    assert outcome.report.ok
    (record,) = botapi.sent_to(CHAT)
    assert record.method.lower() == "sendphoto"
    units = len(record.visible_text.encode("utf-16-le")) // 2
    assert 1000 < units <= 1024
    excerpt = record.visible_text.rsplit("\n", 1)[1]
    assert excerpt.endswith("…") and words.startswith(excerpt.removesuffix("…"))


def test_a_post_that_cannot_fit_fails_naming_the_template(config_path: ConfigWriter,
                                                          write_article: ArticleWriter,
                                                          botapi: BotApiStandin) -> None:
    write_article("a.txt", 1, topics=[f"Thema{i}" for i in range(20)],
                  title="Ein Titel " * 40)
    write_article("b.txt", 2, topics=["KI"])
    template = "template = '{{ title }}{% for t in topics %} {{ title }}{% endfor %}'\n"
    config = load_config(config_path(template), environ={})
    outcome = push(config)
    assert not outcome.report.ok and outcome.report.total("failed") == 1
    (sent,) = botapi.sent_to(CHAT)
    assert sent.visible_text == "Article number 2 Article number 2"
    store = open_store(config.state.url)
    try:
        (failed,) = store.deliveries([FAILED])
    finally:
        store.close()
    assert failed.reason.startswith("telegram.template: the message is longer than 4096")


@pytest.mark.parametrize(("template", "error"), [
    ("<b>{{ title }}</b>\n\n<div>{{ excerpt }}</div>",
     "Error: telegram.template: line 3: unsupported tag <div>"),
    ("{{ title }}\n{{ summary }}", "Error: telegram.template: line 2: undefined variable "
                                   "'summary'"),
    ("{% for t in topics %}\n{{ t }}\n", "Error: telegram.template: line 2: Unexpected end of "
                                         "template"),
])
def test_a_bad_template_stops_every_command_before_anything_is_sent(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path, template: str, error: str,
) -> None:
    write_article("a.txt", 1)
    path = config_path(f"template = '''{template}'''\n")
    for command in (("push",), ("push", "--dry-run"), ("check",), ("build",), ("status",)):
        result = run_cli(*command, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.splitlines()[0].startswith(error), (command, result.stderr)
    assert botapi.requests == []
    assert list((tmp_path / "state").iterdir()) == []
    assert not (tmp_path / "feeds").exists()


def test_preview_and_dry_run_show_each_destination_and_what_cannot_be_posted(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
    tmp_path: Path,
) -> None:
    path = write_article("a.txt", 1, topics=["AI", "Robotik", *(f"T{i}" for i in range(9))],
                         title="T " * 400)
    config = config_path('routes = { Robotik = "@robotik" }\n[telegram.chats."@robotik"]\n'
                         "template = '{{ title }}{% for t in topics %} {{ title }}{% endfor %}'\n"
                         'language = "ja"\n')
    preview = run_cli("preview", "-c", str(config), str(path), cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert "sendPhoto to @news" in preview.stdout
    assert ('@robotik: cannot be posted: telegram.chats."@robotik".template: the message is '
            "longer than 4096") in preview.stdout
    dry = run_cli("push", "-c", str(config), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "1 message would be sent" in dry.stdout
    assert 'Note: @robotik: ' in dry.stdout and "a push records it as failed" in dry.stdout
    assert botapi.requests == []


# --- no request Telegram would refuse leaves, whatever the template and the article ---------

RISKY = """template = '''
{%- if quality < 60 %}<b>{% endif %}{{ title }}
{% if heat > 90 %}<a href="{{ provider }}">{{ provider }}</a>{% endif %}
{{ excerpt }}'''
"""


def test_a_branch_only_some_articles_take_fails_them_and_the_others_go_out(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
) -> None:
    # The samples checked at start have quality 80 and heat 5: both branches pass that check.
    write_article("1.txt", 1, quality=50, heat=5)  # <b> never closed
    write_article("2.txt", 2, quality=95, heat=5, title="AT&T <3")  # fine
    write_article("3.txt", 3, quality=95, heat=95)  # an href that is not a link
    config = load_config(config_path(RISKY), environ={})
    outcome = push(config)
    assert outcome.report.total("failed") == 2 and outcome.report.total("sent") == 1
    (sent,) = botapi.sent_to(CHAT)
    assert sent.visible_text.startswith("AT&T <3\n")
    assert all(entry.status == 200 for entry in botapi.requests), botapi.requests
    store = open_store(config.state.url)
    try:
        reasons = sorted(d.reason for d in store.deliveries([FAILED]))
    finally:
        store.close()
    assert reasons[0].startswith("telegram.template: ") and "not http(s)" in reasons[0]
    assert reasons[1].startswith("telegram.template: ") and "<b> is not closed" in reasons[1]


@pytest.mark.parametrize(("excerpt", "unit"), [
    ("AT&T <b> & " * 300, "&"),  # &amp; &lt; &gt; are one unit each, five characters sent
    ("😀 🇩🇪 👩‍💻 " * 300, "😀"),  # two UTF-16 units a code point above U+FFFF
])
def test_entity_heavy_and_astral_texts_fill_a_caption_but_never_pass_1024(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
    excerpt: str, unit: str,
) -> None:
    write_article("1.txt", 1, excerpt=excerpt, title=excerpt[:200])
    template = "template = '<b>{{ title }}</b> {{ excerpt }} <i>{{ excerpt }}</i>'\n"
    outcome = push(load_config(config_path(template), environ={}))
    assert outcome.report.ok, outcome.report
    (record,) = botapi.sent_to(CHAT)  # the stand-in counts after entity parsing, as Telegram
    units = len(record.visible_text.encode("utf-16-le")) // 2
    assert record.method.lower() == "sendphoto" and 900 < units <= 1024
    assert unit in record.visible_text


def test_a_quote_a_variable_puts_inside_an_href_fails_that_post_before_telegram_sees_it(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
) -> None:
    write_article("1.txt", 1, title="Plain words")
    write_article("2.txt", 2, title='Say "hi" to robots')  # ends the href="..." too soon
    template = ("template = '<a href=\"https://search.example.com/?q={{ title }}\">"
                "{{ title }}</a>'\n")
    config = load_config(config_path(template), environ={})
    outcome = push(config)
    assert outcome.report.total("failed") == 1 and outcome.report.total("sent") == 1
    (sent,) = botapi.sent_to(CHAT)
    assert sent.entities[0]["url"] == "https://search.example.com/?q=Plain words"
    assert all(entry.status == 200 for entry in botapi.requests), botapi.requests
    store = open_store(config.state.url)
    try:
        (failed,) = store.deliveries([FAILED])
    finally:
        store.close()
    assert failed.reason.startswith("telegram.template: renders HTML Telegram refuses: tag <a>")


def test_a_caption_that_cannot_fit_even_without_its_excerpt_goes_as_a_text_message(
    config_path: ConfigWriter, write_article: ArticleWriter, botapi: BotApiStandin,
) -> None:
    write_article("1.txt", 1, title="A title of some length, " * 4,
                  topics=[f"Topic{i}" for i in range(15)])
    template = "template = '{{ title }}{% for t in topics %} {{ title }}{% endfor %}'\n"
    outcome = push(load_config(config_path(template), environ={}))
    assert outcome.report.ok
    (record,) = botapi.sent_to(CHAT)
    units = len(record.visible_text.encode("utf-16-le")) // 2
    assert record.method == "sendMessage" and 1024 < units <= 4096
