"""The command line as a user runs it: exit codes, output, help, and the shipped sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import feedparser
import pytest
from click.testing import CliRunner
from conftest import REPO, SEEDS, ArticleWriter

from publisher.cli import cli


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False, env=env,
    )


def test_build_writes_feeds_reports_bad_files_and_exits_zero(
    tmp_path: Path, write_article: ArticleWriter, articles_dir: Path
) -> None:
    write_article("good.txt", 1, topics=["Computer Vision"])
    (articles_dir / "broken.txt").write_text("---\ntitle: [\n---\n")
    result = run("build", "--articles", str(articles_dir), "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{articles_dir / 'broken.txt'}: malformed YAML" in result.stderr
    assert "Read 2 files (1 bad, 2 parsed), selected 1 articles in 1 topics" in result.stdout
    assert str(tmp_path / "out") in result.stdout
    parsed = feedparser.parse((tmp_path / "out" / "computer-vision.rss.xml").read_bytes())
    assert not parsed.bozo and parsed.entries[0].title == "Article number 1"


def test_build_with_config_file_paths_relative_to_it(
    tmp_path: Path, write_article: ArticleWriter, config_file: object
) -> None:
    write_article("a.txt", 1)
    config = config_file()  # type: ignore[operator]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run("build", "-c", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "feeds" / "all.atom.xml").exists()
    assert not (elsewhere / "feeds").exists()


def test_check_is_a_linter(tmp_path: Path, write_article: ArticleWriter,
                           articles_dir: Path) -> None:
    write_article("good.txt", 1)
    clean = run("check", "--articles", str(articles_dir), cwd=tmp_path)
    assert clean.returncode == 0 and "1 files checked: 0 bad" in clean.stdout
    (articles_dir / "empty.md").write_text("")
    write_article("nourl.txt", 2, webUrl=None)
    dirty = run("check", "--articles", str(articles_dir), cwd=tmp_path)
    assert dirty.returncode == 1
    assert dirty.stdout.splitlines() == [
        f"{articles_dir / 'empty.md'}: empty file",
        f"{articles_dir / 'nourl.txt'}: missing required field webUrl",
    ]
    assert "3 files checked: 2 bad" in dirty.stderr


def test_library_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[feeds]\ntitel = "typo"\n')
    result = run("build", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "Error: unknown config key feeds.titel\n"
    missing = run("build", "--articles", "nowhere", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: articles folder not found")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("build", "--articles", "nowhere", "--debug", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("build", "--no-such-flag", cwd=tmp_path).returncode == 2
    assert run("frobnicate", cwd=tmp_path).returncode == 2
    assert run("resend", cwd=tmp_path).returncode == 2


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"publisher {command}" in result.output


def test_shipped_sample_feeds_are_current(tmp_path: Path) -> None:
    """feeds/ in the repository is exactly what `publisher build` makes of seeds/."""
    result = run("build", "--articles", str(SEEDS), "--output", str(tmp_path / "feeds"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "feeds").iterdir()}
    shipped = {p.name: p.read_bytes() for p in (REPO / "feeds").iterdir()}
    hint = "is stale: run `publisher build --articles seeds`"
    assert sorted(shipped) == sorted(fresh), f"feeds/ {hint}"
    for name, data in fresh.items():
        assert shipped[name] == data, f"feeds/{name} {hint}"


def test_rebuild_of_unchanged_corpus_rewrites_nothing(tmp_path: Path) -> None:
    out = tmp_path / "feeds"
    run("build", "--articles", str(SEEDS), "--output", str(out), cwd=tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = run("build", "--articles", str(SEEDS), "--output", str(out), cwd=tmp_path)
    assert "the feeds are current" in again.stdout and "0 parsed" in again.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
