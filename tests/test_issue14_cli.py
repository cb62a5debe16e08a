"""Issue 14 as a user runs it: the ``publisher`` command against a config file, the stand-in
Bot API as a process of its own, real SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from helpers import ArticleWriter
from standin.server import DEFAULT_TOKEN, BotApiStandin, StandinProcess

FAST = 'per_chat_interval_seconds = 0.06\ntimeout_seconds = 2\nmax_wait_seconds = 5\n'


def publisher(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args, "-c", str(config)], cwd=config.parent,
        capture_output=True, text=True, timeout=60, check=False,
        env={**environment, "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN},
    )


def write_config(tmp_path: Path, api: StandinProcess, telegram: str, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[articles]\ndir = "articles"\n[state]\nurl = "sqlite:///state.db"\n'
        f'[telegram]\napi_base_url = "{api.base_url}"\nmax_age_hours = 0\nmax_per_run = 0\n'
        + FAST + telegram + extra, encoding="utf-8")
    return path


def hours_ago(hours: float) -> str:
    moment = datetime.now(UTC) - timedelta(hours=hours)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def status_json(config: Path) -> dict[str, Any]:
    result = publisher(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_push_and_status_say_a_digest_went_out_and_what_waits_for_the_next(
    tmp_path: Path, botapi_process: StandinProcess, write_article: ArticleWriter,
) -> None:
    config = write_config(tmp_path, botapi_process, 'chat_id = "@news"\n',
                          '[telegram.chats."@news"]\ndigest = "hourly"\nlanguage = "de"\n')
    for index in (1, 2, 3):
        write_article(f"{index}.txt", index, publishedDateTime=hours_ago(3 + index / 10))
    pushed = publisher(config, "push")
    assert pushed.returncode == 0, pushed.stderr
    assert "Sent 0 posts and 1 digest (3 articles); 0 failed," in pushed.stdout
    (digest,) = botapi_process.messages()
    assert digest["visible_text"].split("\n")[0] == "3 neue Artikel"

    status = publisher(config, "status")
    assert "sent 0 posts and 1 digest (3 articles)" in status.stdout, status.stdout
    assert "https://t.me/news, digest hourly): 3 sent" in status.stdout
    assert "Recent digests:" in status.stdout and "3 articles  sent" in status.stdout

    write_article("4.txt", 4, publishedDateTime=hours_ago(0))
    again = publisher(config, "push")
    assert "Sent 0 posts;" in again.stdout and "@news: digest: the next one at" in again.stdout
    status = publisher(config, "status")
    assert "@news: 1 post due now: digest: the next one at" in status.stdout, status.stdout
    document = status_json(config)
    (waiting,) = document["waiting"]
    assert waiting["due_now"] == 1 and waiting["why"].startswith("digest: the next one at")
    assert document["runs"]["push"]["summary"]["digests"] == 0
    (destination,) = document["destinations"]
    assert destination["digest"] == "hourly" and destination["counts"] == {
        "pending": 1, "sent": 3}


def around_now() -> tuple[str, str]:
    """Quiet hours from an hour ago to two hours ahead, and their end as status says it."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    return f"{start:%H:%M}-{end:%H:%M}", f"{end:%H:%M}"


def test_dry_run_shows_each_destinations_rendering_and_status_why_posts_wait(
    tmp_path: Path, botapi_process: StandinProcess, write_article: ArticleWriter,
) -> None:
    quiet, until = around_now()
    config = write_config(tmp_path, botapi_process, 'chat_id = "@news"\n', (
        '[telegram.routes]\nRobotics = ["@nachrichten", "@quiet"]\n'
        '[telegram.chats."@news"]\nmax_per_run = 1\n'
        '[telegram.chats."@nachrichten"]\nlanguage = "de"\ndate_format = "d. MMMM y"\n'
        f'template = "<b>{{{{ title }}}}</b>\\n{{{{ date }}}}"\nquiet_hours = "{quiet}"\n'
        f'[telegram.chats."@quiet"]\nquiet_hours = "{quiet}"\nquiet_mode = "hold"\n'))
    for index in (1, 2):
        write_article(f"{index}.txt", index, publishedDateTime=f"2025-03-0{index}T10:00:00Z",
                      topics=["AI", "Robotics"])
    dry = publisher(config, "push", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    news, german = dry.stdout.split("\n\n")[:2]
    assert news.startswith("sendPhoto to @news") and "| Example News · 1 Mar 2025" in news
    assert "[Read on Example News]" in news and "silent" not in news
    assert german.startswith("sendPhoto to @nachrichten") and "silent: without" in german
    assert "| 1. März 2025" in german and "[Weiterlesen bei Example News]" in german
    assert f"Note: @quiet: quiet hours until {until} (2 posts left)." in dry.stdout
    assert botapi_process.messages() == []

    pushed = publisher(config, "push")
    assert pushed.returncode == 0, pushed.stderr
    sent = {(m["chat"]["username"], m["disable_notification"]) for m in botapi_process.messages()}
    assert sent == {("news", False), ("nachrichten", True)}
    status = publisher(config, "status").stdout
    assert '@news: 1 post due now: telegram.chats."@news".max_per_run (1) reached' in status
    assert f"@quiet: 2 posts due now: quiet hours until {until}" in status
    assert f"quiet {quiet} (hold)): 2 pending" in status
    waiting = {w["destination"]: w["why"] for w in status_json(config)["waiting"]}
    assert waiting["@quiet"] == f"quiet hours until {until}"
    assert waiting["@news"].startswith('telegram.chats."@news".max_per_run (1) reached')


def readme_example(heading: str) -> str:
    """The first TOML example of a README section, as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    example = section[section.index("```toml") + len("```toml"):]
    return example[:example.index("```")]


def readme_config(tmp_path: Path, api_base_url: str, heading: str) -> Path:
    """The README's example with what any config needs beside it: where articles and the
    state are, and the stand-in's address."""
    example = readme_example(heading).replace(
        "[telegram]\n", f'[telegram]\napi_base_url = "{api_base_url}"\n{FAST}max_age_hours = 0\n',
        1)
    path = tmp_path / "config.toml"
    path.write_text('[articles]\ndir = "articles"\n[state]\nurl = "sqlite:///state.db"\n'
                    + example, encoding="utf-8")
    return path


def test_the_readme_forum_example_posts_in_each_topic_once(
    tmp_path: Path, botapi: BotApiStandin, write_article: ArticleWriter,
) -> None:
    botapi.add_chat("@news", -1001000000009)
    botapi.add_forum("@robolab", -1002000000001, topics=[12, 15])
    config = readme_config(tmp_path, botapi.base_url, "### Forum topics")
    write_article("1.txt", 1, topics=["Robotics"])
    write_article("2.txt", 2, topics=["Computer Vision"])
    pushed = publisher(config, "push")
    assert pushed.returncode == 0, pushed.stderr
    assert "Sent 5 posts;" in pushed.stdout
    threads = sorted(record.message_thread_id for record in botapi.sent_to("@robolab"))
    assert threads == [12, 12, 15] and len(botapi.sent_to("@news")) == 2
    assert "Sent 0 posts;" in publisher(config, "push").stdout


def test_the_readme_german_example_posts_in_german(
    tmp_path: Path, botapi: BotApiStandin, write_article: ArticleWriter,
) -> None:
    config = readme_config(tmp_path, botapi.base_url, "## Shaping posts")
    write_article("1.txt", 1, topics=["Robotik"], publishedDateTime="2021-10-06T11:10:00Z")
    pushed = publisher(config, "push")
    assert pushed.returncode == 0, pushed.stderr
    (german,) = botapi.sent_to("@robotik")
    assert german.visible_text.endswith("Example News, 6. Oktober 2021 #Robotik")
    assert german.disable_notification
    assert german.reply_markup is not None
    assert german.reply_markup["inline_keyboard"][0][0]["text"] == "Weiterlesen bei Example News"
    (english,) = botapi.sent_to("@news")
    assert "6 Oct 2021" in english.visible_text and not english.disable_notification


def test_builds_from_cron_failing_again_and_again_alert_the_operator_once(
    tmp_path: Path, botapi_process: StandinProcess, write_article: ArticleWriter,
) -> None:
    (tmp_path / "not-a-folder").touch()
    config = write_config(tmp_path, botapi_process, 'chat_id = "@news"\nalert_chat = "@opsdesk"\n',
                          '[feeds]\ndir = "not-a-folder/feeds"\n')
    write_article("1.txt", 1)
    for _ in range(2):
        assert publisher(config, "build").returncode == 1
    assert botapi_process.messages() == []  # two in a row: no alert yet
    failed = publisher(config, "build")
    assert failed.returncode == 1 and failed.stderr.startswith("Error: cannot create feeds")
    (alert,) = botapi_process.messages()
    assert alert["chat_id"] == "@opsdesk"
    assert alert["visible_text"].startswith("publisher: 3 builds in a row failed; the last: ")
    assert "not-a-folder" in alert["visible_text"]
    assert DEFAULT_TOKEN.split(":")[1] not in alert["visible_text"]
    assert publisher(config, "build").returncode == 1
    assert len(botapi_process.messages()) == 1  # the same cause within the hour
    assert "Last build: " in (status := publisher(config, "status").stdout)
    assert "FAILED (error cannot create feeds folder" in status


def test_the_readme_quiet_hours_and_digest_example_works_as_written(
    tmp_path: Path, botapi: BotApiStandin, write_article: ArticleWriter,
) -> None:
    config = readme_config(tmp_path, botapi.base_url, "### Quiet hours and digests")
    for index in (1, 2):
        write_article(f"{index}.txt", index, topics=["Robotics"],
                      publishedDateTime=hours_ago(48 + index))
    pushed = publisher(config, "push")
    assert pushed.returncode == 0, pushed.stderr
    berlin = datetime.now(ZoneInfo("Europe/Berlin"))
    if berlin.hour >= 23 or berlin.hour < 7:  # the example's quiet hours hold everything
        assert botapi.messages == [] and "quiet hours until 07:00" in pushed.stdout
        return
    assert "Sent 2 posts and 1 digest (2 articles);" in pushed.stdout
    assert len(botapi.sent_to("@opnews")) == 2
    (digest,) = botapi.sent_to("@robots")
    assert digest.visible_text.startswith("2 new articles\n• Article number")
