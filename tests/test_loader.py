"""The loader on real files: every bad-input class gets one clear line; good files go through."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers import SEEDS, ArticleWriter, article_record, front_matter
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher import loader as loader_module
from publisher import models as models_module
from publisher.files import FileTooLarge, NotRegularFile, read_regular_file
from publisher.loader import (
    MAX_EXCERPT_CHARS,
    MAX_IMAGES,
    MAX_NAME_CHARS,
    MAX_TITLE_CHARS,
    Limits,
    LoadResult,
    clean_text,
    load_articles,
    load_file,
    read_file,
)
from publisher.models import Article, article_id, published_url


def only_problem(directory: Path) -> str:
    result = load_articles(directory)
    assert result.articles == [] and len(result.problems) == 1
    line = str(result.problems[0])
    assert "\n" not in line
    return line


def test_seeds_load_cleanly() -> None:
    result = load_articles(SEEDS)
    assert result.files_read == 2 and result.problems == []
    by_title = {a.title: a for a in result.articles}
    techcrunch = by_title["European Parliament backs ban on remote biometric surveillance"]
    assert techcrunch.published and techcrunch.quality == 172
    assert techcrunch.published_at == datetime(2021, 10, 6, 11, 10, tzinfo=UTC)
    assert techcrunch.provider.name == "TechCrunch"
    # Mojibake in a related excerpt ("surveillanceâ€”") is repaired.
    assert "surveillance—a development" in techcrunch.related[1].excerpt
    assert all("â€" not in r.excerpt for r in techcrunch.related)


def test_secured_blob_is_never_carried(write_article: ArticleWriter, articles_dir: Path) -> None:
    write_article("a.txt")
    (article,) = load_articles(articles_dir).articles
    assert "secured" not in Article.__slots__
    assert "do-not-publish" not in repr(article)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"   \n\n", "empty file"),
        (b"title: no fences\n", "no front matter"),
        (b"---\ntitle: x\n", "front matter is not closed"),
        (b"---\ntitle: [unclosed\n---\n", "malformed YAML"),
        (b"---\n- a\n- b\n---\n", "must be a mapping of fields, not a list"),
        (b"---\njust a string\n---\n", "not a string"),
        (b"---\n---\n", "empty front matter"),
        (b"---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
         b"x: !!python/object/apply:os.system ['echo pwned']\n---\n", "malformed YAML"),
    ],
)
def test_structural_problems(articles_dir: Path, content: bytes, reason: str) -> None:
    (articles_dir / "bad.txt").write_bytes(content)
    line = only_problem(articles_dir)
    assert line.startswith(f"{articles_dir / 'bad.txt'}: ")
    assert reason in line


def test_python_tags_are_never_executed(articles_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (articles_dir / "evil.md").write_text(
        "---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        f"x: !!python/object/apply:os.system ['touch {marker}']\n---\n"
    )
    assert "malformed YAML" in only_problem(articles_dir)
    assert not marker.exists()


def test_malformed_yaml_names_the_line(articles_dir: Path) -> None:
    (articles_dir / "bad.txt").write_text("---\ntitle: ok\nexcerpt: \"unterminated\n---\n")
    line = only_problem(articles_dir)
    assert "line " in line and "column" in line


def test_not_utf8(articles_dir: Path) -> None:
    data = front_matter(article_record(title="Caf\u00e9")).encode("latin-1")
    (articles_dir / "latin1.txt").write_bytes(data)
    assert "not UTF-8 (byte 0xe9" in only_problem(articles_dir)


def test_utf8_bom_is_accepted(articles_dir: Path) -> None:
    data = b"\xef\xbb\xbf" + front_matter(article_record()).encode()
    (articles_dir / "bom.txt").write_bytes(data)
    assert len(load_articles(articles_dir).articles) == 1


@pytest.mark.parametrize("missing", ["title", "webUrl", "publishedDateTime"])
def test_missing_required_field(write_article: ArticleWriter, articles_dir: Path,
                                missing: str) -> None:
    write_article("a.txt", **{missing: None})
    assert f"missing required field {missing}" in only_problem(articles_dir)


def test_several_missing_fields_named_together(write_article: ArticleWriter,
                                               articles_dir: Path) -> None:
    write_article("a.txt", title=None, webUrl="  ")
    assert "missing required fields title, webUrl" in only_problem(articles_dir)


@pytest.mark.parametrize(
    "url", ["/relative/path", "ftp://example.com/a", "javascript:alert(1)", "https://", "e.com/a",
            "https://exa mple.com/"],
)
def test_web_url_must_be_absolute_http(write_article: ArticleWriter, articles_dir: Path,
                                       url: str) -> None:
    write_article("a.txt", webUrl=url)
    assert "webUrl is not an absolute http(s) URL" in only_problem(articles_dir)


@pytest.mark.parametrize("value", ["yesterday", "2021-13-45T00:00:00Z", "", 12])
def test_unparseable_date(write_article: ArticleWriter, articles_dir: Path, value: object) -> None:
    write_article("a.txt", publishedDateTime=value)
    line = only_problem(articles_dir)
    assert "publishedDateTime" in line


@pytest.mark.parametrize("value", ["high", [1], True])
def test_quality_not_a_number(write_article: ArticleWriter, articles_dir: Path,
                              value: object) -> None:
    write_article("a.txt", quality=value)
    assert "quality is not a number" in only_problem(articles_dir)


def test_quality_as_numeric_string_is_accepted(write_article: ArticleWriter,
                                               articles_dir: Path) -> None:
    write_article("a.txt", quality="42")
    assert load_articles(articles_dir).articles[0].quality == 42


def test_oversized_file(articles_dir: Path) -> None:
    record = article_record(excerpt="x" * 5000)
    (articles_dir / "big.txt").write_text(front_matter(record))
    result = load_articles(articles_dir, 1000)
    size = (articles_dir / "big.txt").stat().st_size
    assert [str(problem) for problem in result.problems] == [
        f"{articles_dir / 'big.txt'}: file too large ({size:,} bytes; the limit is 1,000)"]
    # Its size, whether the scan's stat knew it or only the read finds it out.
    assert str(read_file(articles_dir / "big.txt", 1000)) == str(result.problems[0])


def test_unreadable_file_is_reported(articles_dir: Path) -> None:
    (articles_dir / "dangling.txt").symlink_to(articles_dir / "missing-target.txt")
    line = only_problem(articles_dir)
    assert "cannot read" in line


def test_bad_files_do_not_stop_good_ones(write_article: ArticleWriter, articles_dir: Path) -> None:
    write_article("good1.txt", 1)
    (articles_dir / "bad.txt").write_text("nonsense")
    write_article("sub/good2.md", 2) if (articles_dir / "sub").mkdir() is None else None
    (articles_dir / "notes.json").write_text("{}")  # not an article file: ignored
    (articles_dir / ".hidden.txt").write_text("---\n---\n")  # hidden: ignored
    result = load_articles(articles_dir)
    assert result.files_read == 3
    assert sorted(a.title for a in result.articles) == ["Article number 1", "Article number 2"]
    assert [p.path.name for p in result.problems] == ["bad.txt"]


def test_normalisation(write_article: ArticleWriter, articles_dir: Path) -> None:
    write_article(
        "a.txt",
        title="  Caf\u00c3\u00a9   news\u0007 with\tspaces ",
        excerpt="Line one\n\n  line two \x0b",
        publishedDateTime="2021-05-01T10:00:00",
        webUrl="https://www.example.com/story",
        images=[
            {"url": "/img/relative.jpg", "width": 800, "height": 600},
            {"url": "//cdn.example.com/proto.jpg", "width": "640", "height": "480"},
            {"url": "javascript:alert(1)", "width": 800, "height": 600},
            {"url": "data:image/png;base64,AAAA"},
            "not a mapping",
        ],
        related=[
            {"title": "Rel one", "webUrl": "/other-story", "provider": {"name": "P"}},
            {"title": "No link"},
            {"title": "Bad link", "webUrl": "mailto:a@b.c"},
        ],
        topics=["AI", "AI", "  Robotics  ", 42, None],
    )
    (article,) = load_articles(articles_dir).articles
    assert article.title == "Café news with spaces"
    assert article.excerpt == "Line one line two"
    assert article.published_at == datetime(2021, 5, 1, 10, 0, tzinfo=UTC)
    assert [i.url for i in article.images] == [
        "https://www.example.com/img/relative.jpg",
        "https://cdn.example.com/proto.jpg",
    ]
    assert article.images[1].width == 640
    assert [(r.title, r.url) for r in article.related] == [
        ("Rel one", "https://www.example.com/other-story")
    ]
    assert article.topics == ("AI", "Robotics", "42")


def test_clean_text_removes_xml_invalid_characters_and_lone_surrogates() -> None:
    assert clean_text("a\x00b\ud800c\ufffe d\x1b[0m  e") == "abc d[0m e"
    assert clean_text("surveillance\u00e2\u20ac\u201d a") == "surveillance\u2014 a"
    assert clean_text(2024) == "2024" and clean_text(None) == "" and clean_text(["x"]) == ""


def test_zoned_dates_become_utc(write_article: ArticleWriter, articles_dir: Path) -> None:
    write_article("a.txt", publishedDateTime="2021-05-01T12:00:00+02:00")
    (article,) = load_articles(articles_dir).articles
    assert article.published_at == datetime(2021, 5, 1, 10, 0, tzinfo=UTC)


def test_missing_optional_fields_have_safe_defaults(articles_dir: Path) -> None:
    (articles_dir / "min.txt").write_text(
        "---\ntitle: Minimal\nwebUrl: https://e.com/m\npublishedDateTime: 2021-01-01\n---\n"
    )
    (article,) = load_articles(articles_dir).articles
    assert (article.published, article.quality, article.topics, article.images) == (
        False, 0, (), ()
    )
    assert article.provider_label == "e.com"


def test_article_id_is_stable_and_url_based(write_article: ArticleWriter,
                                            articles_dir: Path) -> None:
    first = write_article("a.txt", webUrl="https://E.com/x?utm_source=tw#frag")
    one = load_file(first)
    first.write_text(front_matter(article_record(title="Renamed", webUrl="https://e.com/x")))
    two = load_file(first)
    assert isinstance(one, Article) and isinstance(two, Article)
    assert one.id == two.id and one.id.startswith("urn:uuid:")


# -- hostile files: alias bombs ------------------------------------------------------------

BOMB_FIELDS = ["webUrl", "quality", "publishedDateTime", "heat", "published"]
# Loads a folder in a child process with at most this much address space, so that a
# regression (an alias tree expanded by repr) fails with MemoryError, not with the machine.
BOMB_ADDRESS_SPACE = 1536 * 1024 * 1024
BOMB_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
from publisher.loader import load_articles
warm = Path(sys.argv[2])
load_articles(warm)  # imports, caches and ftfy: what every load pays once
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = load_articles(Path(sys.argv[1]))
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
    "titles": [a.title for a in result.articles],
    "problems": {p.path.name: p.reason for p in result.problems},
}))
"""


def alias_bomb(field_name: str, levels: int = 9, width: int = 9) -> str:
    """A record whose ``field_name`` is a tree of aliases: ``width ** levels`` leaves (9**9:
    387 million), gigabytes once anything walks it, in about 500 bytes."""
    lines = [f"{field_name}:", "  - &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"  - &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return ("---\ntitle: Bomb\nwebUrl: https://e.com/bomb\npublishedDateTime: 2021-01-01\n"
            .replace(f"\n{field_name}: ", "\nunused: ") + "\n".join(lines) + "\n---\n")


def load_in_bounded_process(directory: Path, warm: Path) -> dict[str, Any]:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_ADDRESS_SPACE, BOMB_ADDRESS_SPACE))

    done = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(directory), str(warm)], capture_output=True,
        text=True, timeout=120, preexec_fn=limit_memory, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_alias_bombs_are_refused_quickly_in_bounded_memory(
    write_article: ArticleWriter, articles_dir: Path, tmp_path: Path
) -> None:
    write_article("good.txt")
    for name in BOMB_FIELDS:
        path = articles_dir / f"bomb-{name}.txt"
        path.write_text(alias_bomb(name))
        assert path.stat().st_size < 600
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "a.txt").write_text(front_matter(article_record(excerpt="Caf\u00c3\u00a9")))
    outcome = load_in_bounded_process(articles_dir, warm)
    assert outcome["titles"] == ["Article number 1"]
    assert sorted(outcome["problems"]) == sorted(f"bomb-{name}.txt" for name in BOMB_FIELDS)
    for name in BOMB_FIELDS:
        reason = outcome["problems"][f"bomb-{name}.txt"]
        assert reason.startswith(f"malformed YAML: aliases expand {name} beyond "), reason
        assert reason.endswith(" (line 5); not an article") and len(reason) < 200
    assert outcome["seconds"] < 5
    assert outcome["grew_kb"] < 20 * 1024  # bounded: not the gigabytes of the expansion


def test_alias_bombs_in_pairs_are_measured_too(articles_dir: Path) -> None:
    """``!!pairs`` and ``!!omap`` build tuples: an alias tree inside them counts as well."""
    levels = ["  - l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"  - l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 8)]
    (articles_dir / "pairs.txt").write_text(
        "---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        "x: !!pairs\n" + "\n".join(levels) + "\n---\n"
    )
    assert "malformed YAML: aliases expand x beyond" in only_problem(articles_dir)


def test_a_value_that_contains_itself_is_refused(articles_dir: Path) -> None:
    (articles_dir / "loop.txt").write_text(
        "---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        "topics: &t [AI, *t]\n---\n"
    )
    assert only_problem(articles_dir).endswith(
        "malformed YAML: topics contains itself through an alias (line 5)"
    )


def test_modest_aliases_still_load(articles_dir: Path) -> None:
    (articles_dir / "a.txt").write_text(
        "---\ntitle: &t Shared title\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        "excerpt: &e Shared excerpt *with stars*\n"
        "related:\n  - {title: *t, excerpt: *e, webUrl: /b}\n  - {title: *t, webUrl: /c}\n---\n"
    )
    (article,) = load_articles(articles_dir).articles
    assert article.excerpt == "Shared excerpt *with stars*"
    assert [r.title for r in article.related] == ["Shared title", "Shared title"]


def test_error_previews_are_bounded_by_construction() -> None:
    value: Any = ["x" * 10]
    for _ in range(7):  # 10**7 leaves: a full repr takes 170 MB and seconds (kept that
        value = [value] * 10  # small so that a regression fails here, not the machine)
    started = time.perf_counter()
    shown = loader_module._preview(value)
    assert len(shown) <= 80 and time.perf_counter() - started < 0.1
    assert len(loader_module._preview("y" * 10_000_000)) <= 80


# -- hostile files: not regular files --------------------------------------------------------


def load_within(directory: Path, seconds: float, unblock: Path) -> LoadResult:
    """``load_articles`` in a thread; if it is still running after ``seconds`` (blocked on
    the FIFO ``unblock``), a writer opens the FIFO so that the thread can end, and the test
    fails."""
    results: list[LoadResult] = []
    thread = threading.Thread(target=lambda: results.append(load_articles(directory)),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
        pytest.fail(f"loading blocked on the FIFO {unblock}")
    return results[0]


def test_fifos_devices_and_sockets_are_reported_and_skipped(
    write_article: ArticleWriter, articles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_article("good.txt")
    os.mkfifo(articles_dir / "pipe.txt")
    (articles_dir / "zero.txt").symlink_to("/dev/zero")
    monkeypatch.chdir(articles_dir)  # a relative name: socket paths are short
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("socket.md")
        result = load_within(articles_dir, 10, unblock=articles_dir / "pipe.txt")
    assert [a.title for a in result.articles] == ["Article number 1"]
    assert sorted(str(p) for p in result.problems) == [
        f"{articles_dir / 'pipe.txt'}: not a regular file (a FIFO): only regular files are read",
        f"{articles_dir / 'socket.md'}: not a regular file (a socket): only regular files "
        "are read",
        f"{articles_dir / 'zero.txt'}: not a regular file (a character device): only regular "
        "files are read",
    ]


def test_a_file_over_the_limit_is_refused_with_its_size(articles_dir: Path) -> None:
    path = articles_dir / "big.txt"
    path.write_bytes(front_matter(article_record()).encode() + b"x" * 5000)
    with pytest.raises(FileTooLarge) as refused:
        read_regular_file(path, 100)
    assert (refused.value.size, refused.value.limit) == (path.stat().st_size, 100)
    assert read_regular_file(path, 1 << 20) == path.read_bytes()
    assert read_regular_file(path, path.stat().st_size) == path.read_bytes()
    with pytest.raises(NotRegularFile, match="a folder"):
        read_regular_file(articles_dir, 100)


# -- hostile files: caps and cuts ------------------------------------------------------------


def test_topics_and_related_are_capped_and_reported(write_article: ArticleWriter,
                                                    articles_dir: Path) -> None:
    path = write_article(
        "a.txt",
        topics=[f"Topic {i}" for i in range(3000)] + ["Topic 1"],
        related=[{"title": f"R{i}", "webUrl": f"https://r.example.com/{i}"} for i in range(40)],
    )
    result = load_articles(articles_dir)
    (article,) = result.articles
    assert article.topics == tuple(f"Topic {i}" for i in range(20))
    assert [r.title for r in article.related] == [f"R{i}" for i in range(10)]
    (notice,) = result.notices
    assert str(notice) == (
        f"{path}: warning: kept 20 of 3,000 topics (articles.max_topics = 20); "
        "kept 10 related articles, left 30 more (articles.max_related = 10)"
    )
    capped = load_articles(articles_dir, Limits(max_topics=2, max_related=1))
    assert capped.articles[0].topics == ("Topic 0", "Topic 1")
    assert len(capped.articles[0].related) == 1


def test_over_long_fields_are_cut_at_a_word_and_reported(write_article: ArticleWriter,
                                                         articles_dir: Path) -> None:
    path = write_article(
        "a.txt", title="placeholder", excerpt="é" * 20_000, provider={"name": "P" * 1000},
        images=[{"url": f"https://i.example.com/{i}.jpg"} for i in range(30)]
        + [{"url": "https://i.example.com/" + "x" * 3000}],
        related=[{"title": "T" * 600, "webUrl": "https://r.example.com/" + "y" * 3000},
                 {"title": "Fine", "webUrl": "https://r.example.com/ok"},
                 {"title": "Long too", "webUrl": "https://r.example.com/" + "z" * 3000}],
    )
    # A 10 MB title, written as it is (the YAML emitter would take seconds for it).
    path.write_text(path.read_text().replace("title: placeholder", "title: " + "word " * 2_000_000))
    started = time.perf_counter()
    result = load_articles(articles_dir, 12 * 1024 * 1024)
    assert time.perf_counter() - started < 5
    (article,) = result.articles
    assert len(article.title) <= MAX_TITLE_CHARS and article.title.endswith("word…")
    assert article.excerpt == "é" * (MAX_EXCERPT_CHARS - 1) + "…"
    assert len(article.provider.name) == MAX_NAME_CHARS
    assert len(article.images) == MAX_IMAGES
    assert [r.title for r in article.related] == ["Fine"]
    (notice,) = result.notices
    assert notice.message == (
        "kept the first 20 of 31 images; dropped a related article: a link longer than 2,048 "
        "characters (2x); cut to length: title (500 characters), excerpt (5,000 characters), "
        "provider name (200 characters)"
    )


def test_an_over_long_web_url_makes_the_file_bad(write_article: ArticleWriter,
                                                 articles_dir: Path) -> None:
    write_article("a.txt", webUrl="https://e.com/" + "a" * 3000)
    assert "webUrl is longer than 2,048 characters" in only_problem(articles_dir)


# -- hostile files: dates and constructor errors --------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("publishedDateTime: 2024-02-30T00:00:00Z",
         "publishedDateTime is not an ISO 8601 date: '2024-02-30T00:00:00Z'"),
        ("publishedDateTime: 2024-02-30", "publishedDateTime is not an ISO 8601 date"),
        ("publishedDateTime: 0000-01-01", "publishedDateTime is not an ISO 8601 date"),
        ("publishedDateTime: !!timestamp soon", "publishedDateTime is not an ISO 8601 date"),
        ("quality: !!int abc", "quality is not a number: 'abc'"),
        ("quality: " + "9" * 5000, "quality is not a usable number: '99999"),
        ("heat: !!float warm", "heat is not a number: 'warm'"),
        ("published: !!bool maybe", "published must be true or false, not 'maybe'"),
        ("published: !!null nothing", None),
        ("x: !!binary 'a'", "malformed YAML: failed to decode base64 data"),
    ],
)
def test_every_constructor_error_is_a_bad_file_naming_it(articles_dir: Path, line: str,
                                                         reason: str | None) -> None:
    record = "title: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
    field_name = line.partition(":")[0]
    record = "".join(row + "\n" for row in record.splitlines()
                     if not row.startswith(field_name + ":"))
    (articles_dir / "a.txt").write_text(f"---\n{record}{line}\n---\n")
    result = load_articles(articles_dir)
    if reason is None:
        assert len(result.articles) == 1
        return
    problem = only_problem(articles_dir)
    assert problem.startswith(f"{articles_dir / 'a.txt'}: {reason}"), problem
    assert len(problem) < 300


def test_an_invalid_date_in_a_field_that_is_not_read_is_harmless(write_article: ArticleWriter,
                                                                 articles_dir: Path) -> None:
    (articles_dir / "a.txt").write_text(
        "---\ntitle: T\nwebUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        "related:\n  - title: R\n    webUrl: /r\n    publishedDateTime: 2024-02-30T00:00:00Z\n"
        "---\n"
    )
    (article,) = load_articles(articles_dir).articles
    assert article.related[0].url == "https://e.com/r"


NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("published", "bad"),
    [
        ("9999-12-31T23:59:59Z", True),
        ("2025-01-02T00:00:01Z", True),  # a day and a second ahead
        ("2025-01-01T23:00:00Z", False),  # within a day: clocks and zones disagree that much
        ("2024-12-31T10:00:00-20:00", False),
    ],
)
def test_dates_more_than_a_day_ahead_are_bad_until_their_time(
    write_article: ArticleWriter, articles_dir: Path, published: str, bad: bool
) -> None:
    write_article("a.txt", publishedDateTime=published)
    result = load_articles(articles_dir, now=NOW)
    assert len(result.problems) == int(bad)
    if bad:
        (problem,) = result.problems
        assert "is more than a day ahead of now" in problem.reason
        assert problem.recheck_at == datetime.fromisoformat(published) - timedelta(days=1)
        later = load_articles(articles_dir, now=problem.recheck_at)
        assert later.problems == [] or published.startswith("9999")


# -- hostile files: mojibake before parsing, errors with positions ------------------------


def test_c1_mojibake_is_repaired_before_parsing(articles_dir: Path) -> None:
    (articles_dir / "a.txt").write_text(
        "---\ntitle: \"Europe\u2019s \u00e2\u20ac\u0153third way\u00e2\u20ac\x9d\"\n"
        "webUrl: https://e.com/a\npublishedDateTime: 2021-01-01\n"
        "excerpt: \"bell\x07 and \x9d stray\"\n---\n",
        encoding="utf-8",
    )
    (article,) = load_articles(articles_dir).articles
    assert article.title == "Europe\u2019s \u201cthird way\u201d"
    assert article.excerpt == "bell and stray"


def test_repair_keeps_the_line_numbers_of_later_errors(articles_dir: Path) -> None:
    (articles_dir / "a.txt").write_text(
        "---\ntitle: \"third way\u00e2\u20ac\x9d\"\nwebUrl: https://e.com/a\n"
        "publishedDateTime: 2021-01-01\nexcerpt: [unclosed\n---\n",
        encoding="utf-8",
    )
    assert only_problem(articles_dir).endswith(
        "malformed YAML: did not find expected ',' or ']' (line 6, column 1)"
    )


@pytest.mark.parametrize(
    "front",
    [
        "title: [unclosed\n",
        "title: ok\n  bad: indent\n",
        "title: *undefined\n",
        "title: !!python/name:os.system x\n",
        "title: ok\ntitle2: \"\\q\"\n",
        "title: ok\n\tindented: by a tab\n",
        "title: 'unterminated\n",
        "? [a, b]\n: unhashable\n",
        "a: !!binary 'not base64 !'\n",
    ],
)
def test_every_yaml_error_names_line_and_column(articles_dir: Path, front: str) -> None:
    (articles_dir / "a.txt").write_text(f"---\n{front}...\n")
    line = only_problem(articles_dir)
    assert re.search(r"malformed YAML: .+ \(line \d+, column \d+\)$", line), line


def test_reader_errors_get_line_and_column_from_their_position() -> None:
    import yaml

    text = "\ntitle: ok\nexcerpt: \"caf\u00e9 \u00e2\x9d\"\n"  # as between the fences
    with pytest.raises(yaml.reader.ReaderError) as caught:
        yaml.load(text, Loader=loader_module.yaml_loader()[0])
    assert loader_module._position(text, caught.value.position, "libyaml") == (
        ", line 3, column 17"
    )


# -- links -----------------------------------------------------------------------------------


def test_every_published_link_is_normalised(write_article: ArticleWriter,
                                            articles_dir: Path) -> None:
    write_article(
        "a.txt",
        webUrl="https://editor:secret@B\u00fccher.example/Stra\u00dfe/caf%C3%A9?id=1&utm_source=tw"
               "&q=a%20b+c&fbclid=X&msclkid=Y#t\u00e9l",
        ampWebUrl="https://u:p@amp.example.com/a?gclid=1",
        images=[{"url": "//u:p@img.example.com/\u00e9.jpg?utm_medium=x&w=1", "width": 900,
                 "height": 600}],
        related=[{"title": "R", "webUrl": "https://root@\u4f8b\u3048.\u30c6\u30b9\u30c8/r?"
                                          "_hsenc=1&mc_cid=2&igshid=3"}],
        provider={"name": "P", "domain": "B\u00fccher.example"},
    )
    (article,) = load_articles(articles_dir).articles
    assert article.url == (
        "https://xn--bcher-kva.example/Stra%C3%9Fe/caf%C3%A9?id=1&q=a%20b+c#t%C3%A9l"
    )
    assert article.amp_url == "https://amp.example.com/a"
    assert article.images[0].url == "https://img.example.com/%C3%A9.jpg?w=1"
    assert article.related[0].url == "https://xn--r8jz45g.xn--zckzah/r"
    assert article.provider.domain == "xn--bcher-kva.example"
    assert "secret" not in repr(article) and "root@" not in repr(article)


@pytest.mark.parametrize(
    "url",
    [
        "https://news.example.com/articles/1?utm_campaign=a&utm_content=b",
        "https://news.example.com/articles/1?fbclid=1&gclid=2&dclid=3&msclkid=4&mc_cid=5",
        "https://news.example.com/articles/1?mc_eid=6&igshid=7&_hsenc=8&_hsmi=9&yclid=10",
        "https://news.example.com/articles/1?ref_src=twsrc&UTM_Source=x",
    ],
)
def test_tracking_parameters_leave_links_and_ids(url: str) -> None:
    assert published_url(url) == "https://news.example.com/articles/1"
    assert article_id(url) == article_id("https://news.example.com/articles/1")


@pytest.mark.parametrize(
    ("url", "expected"),
    [  # ids of publisher before the published form: they must not change
        ("https://news.example.com/articles/1", "urn:uuid:dd2efffd-2fe2-550b-85ae-b068103f1421"),
        ("https://www.theguardian.com/technology/2020/feb/05/x?page=2&b=%20c",
         "urn:uuid:28f31ba1-4b67-53a5-b1fc-0da1133014a5"),
        ("http://E.com:80/A/b/?x=1&utm_source=tw#frag",
         "urn:uuid:7b8618a8-d908-5125-82f8-c03544977f1b"),
        ("https://e.com/a?gclid=1&fbclid=2&id=7", "urn:uuid:c672a2d7-da34-5e1d-af77-afa335bc5a2a"),
    ],
)
def test_ids_of_links_without_new_tracking_parameters_do_not_change(url: str,
                                                                    expected: str) -> None:
    published = published_url(url)
    assert published is not None
    assert article_id(url) == article_id(published) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
       st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_the_published_form_is_ascii_and_stable(host: str, rest: str) -> None:
    published = published_url(f"https://{host}/{rest}")
    if published is not None:
        assert published.isascii() and published_url(published) == published
        assert urlsplit(published).hostname and "@" not in urlsplit(published).netloc


URL_PIECES = st.sampled_from(["a", "B", "0", ".", "-", "_", "~", "/", "?", "#", "&", "=", "%",
                               "%2F", "+", ":", "@", "[", "]", "!", "'", "*", ";", ",", "é",
                               " ", '"', "<", "\\", "utm_x=1", "&fbclid=2", "gclid", "..",
                               "xn--", "E.COM", ":443", ":8080", "u:p@", "bücher"])


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["http://", "https://", "HTTP://", "ftp://"]),
       st.lists(URL_PIECES, max_size=12).map("".join),
       st.lists(URL_PIECES, max_size=12).map("".join))
def test_the_quick_path_gives_what_the_long_way_gives(scheme: str, host: str,
                                                      rest: str) -> None:
    url = f"{scheme}{host}{rest}"
    assert published_url(url) == models_module._published_url_parsed(url)


def test_odd_file_names_are_quoted_on_their_one_line(articles_dir: Path) -> None:
    (articles_dir / "two\nlines\x1b[2J.txt").write_text("nonsense")
    (articles_dir / "fine name.txt").write_text("nonsense")
    lines = sorted(str(problem) for problem in load_articles(articles_dir).problems)
    assert lines == [
        f"'{articles_dir}/two\\nlines\\x1b[2J.txt': no front matter: the file must start "
        "with a '---' line",
        f"{articles_dir}/fine name.txt: no front matter: the file must start with a '---' line",
    ]
