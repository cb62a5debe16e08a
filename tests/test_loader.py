"""The loader on real files: every bad-input class gets one clear line; good files go through."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SEEDS, ArticleWriter, article_record, front_matter

from publisher.loader import clean_text, load_articles, load_file
from publisher.models import Article


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
    result = load_articles(articles_dir, max_file_bytes=1000)
    assert len(result.problems) == 1 and "file too large" in str(result.problems[0])


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
