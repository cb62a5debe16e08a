"""Tests of the Telegram rendering: escaping, UTF-16 limits, hashtags, images and buttons."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.errors import ConfigError
from publisher.messages import (
    CAPTION_LIMIT,
    ELLIPSIS,
    TEXT_LIMIT,
    Button,
    Message,
    format_for_dry_run,
    hashtag,
    render_message,
    shorten,
    telegram_length,
    visible_length,
)
from publisher.models import Article, Image, Provider, Related

PHOTO = Image("https://example.com/i.jpg", 1024, 682)
WHEN = datetime(2021, 10, 6, 11, 10, tzinfo=UTC)


def make_article(**changes: object) -> Article:
    fields: dict[str, object] = {
        "id": "urn:uuid:1",
        "title": "Robots learn to see",
        "url": "https://example.com/a",
        "published_at": WHEN,
        "excerpt": "A short excerpt about machine vision.",
        "provider": Provider("TechCrunch", "techcrunch.com"),
        "topics": ("AI", "Computer Vision"),
        "images": (PHOTO,),
        "related": (),
    }
    fields.update(changes)
    return Article(**fields)  # type: ignore[arg-type]


# --- a tiny Telegram HTML checker ------------------------------------------------------------

_ALLOWED_TAG = re.compile(
    r"</?(?:b|strong|i|em|u|ins|s|strike|del|tg-spoiler|code|pre|blockquote)>"
    r'|<a href="[^"<>]*">|</a>'
)
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")


def assert_telegram_html(text: str) -> None:
    """Only allowed tags, properly nested; no raw '<' or '>'; every '&' starts an entity."""
    stack: list[str] = []
    for tag in _ALLOWED_TAG.findall(text):
        name = re.sub(r"[</>]|\s.*", "", tag)
        if tag.startswith("</"):
            assert stack and stack.pop() == name, f"unbalanced {tag} in {text!r}"
        else:
            stack.append(name)
    assert not stack, f"unclosed tags {stack} in {text!r}"
    rest = _ALLOWED_TAG.sub("", text)
    assert "<" not in rest and ">" not in rest, rest
    assert "&" not in _ENTITY.sub("", rest), rest


def visible_text(text: str) -> str:
    return html.unescape(_ALLOWED_TAG.sub("", text))


def assert_no_lone_surrogates(text: str) -> None:
    assert not any("\ud800" <= char <= "\udfff" for char in text)
    text.encode("utf-16")  # strict: fails on a split pair


# --- lengths and shortening ------------------------------------------------------------------


def test_lengths_are_utf16_units_after_parsing() -> None:
    assert telegram_length("abc") == 3
    assert telegram_length("😀") == 2
    assert telegram_length("é") == 1
    assert visible_length("<b>a &amp; b</b> &lt;😀&gt; &#x27;") == 12


def test_shorten_keeps_text_that_fits() -> None:
    assert shorten("two words", 9) == "two words"
    assert shorten("", 0) == ""


def test_shorten_cuts_at_a_word_boundary() -> None:
    assert shorten("alpha beta gamma delta", 14) == "alpha beta…"
    assert shorten("alpha beta gamma", 1) == ELLIPSIS
    assert shorten("alpha beta gamma", 0) == ""


def test_shorten_cuts_a_single_huge_word_mid_word() -> None:
    result = shorten("x" * 100, 10)
    assert result == "x" * 9 + ELLIPSIS


def test_shorten_counts_utf16_and_never_splits_a_pair() -> None:
    result = shorten("😀" * 10, 8)  # 7 units for text: only 3 whole emoji fit
    assert result == "😀" * 3 + ELLIPSIS
    assert telegram_length(result) <= 8


def test_shorten_keeps_zwj_sequences_and_combining_marks_whole() -> None:
    family = "👩\u200d👩\u200d👧"
    assert shorten(family * 3, 9) in {family + ELLIPSIS, ELLIPSIS}
    assert not shorten(family * 3, 9).startswith("👩\u200d…")
    accented = "e\u0301" * 10
    result = shorten(accented, 6)
    assert result == "e\u0301" * 2 + ELLIPSIS


# --- hashtags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("Computer Vision", "#ComputerVision"),
        ("AI Ethics & Policy", "#AIEthicsPolicy"),
        ("Künstliche Intelligenz", "#KünstlicheIntelligenz"),
        ("machine learning", "#MachineLearning"),
        ("C++", "#CPlusPlus"),
        ("C#", "#CSharp"),
        ("#AI", "#AI"),
        ("web_3 2.0", "#Web_320"),
        ("2024", ""),  # digits only: Telegram does not link it
        ("_42", ""),
        ("", ""),
        ("&&&", ""),
    ],
)
def test_hashtag(topic: str, expected: str) -> None:
    assert hashtag(topic) == expected


def test_hashtags_are_deduplicated_and_empty_ones_dropped() -> None:
    message = render_message(make_article(topics=("AI", "ai", "2024", "Computer Vision")))
    assert message.text_html.endswith("\n#AI #ComputerVision")


# --- content and escaping --------------------------------------------------------------------


def test_layout_of_a_caption() -> None:
    message = render_message(make_article())
    assert message.html == (
        "<b>Robots learn to see</b>\n\n"
        "A short excerpt about machine vision.\n\n"
        "TechCrunch · 6 Oct 2021\n"
        "#AI #ComputerVision"
    )
    assert message.text_html == message.html
    assert message.plain == visible_text(message.html) + "\nRead: https://example.com/a"
    assert message.preview_url == "https://example.com/a"
    assert message.article_id == "urn:uuid:1"


def test_title_is_escaped_and_shows_as_written() -> None:
    title = '<script>alert(1)</script> & "A"'
    message = render_message(make_article(title=title, excerpt="x < y && y > z"))
    assert "&lt;script&gt;" in message.html
    assert "&amp;" in message.html
    assert "<script>" not in message.html
    assert_telegram_html(message.html)
    first_line, _, rest = visible_text(message.html).partition("\n\n")
    assert first_line == title
    assert rest.startswith("x < y && y > z\n\n")
    assert message.plain.startswith(f"{title}\n\n")


def test_date_uses_the_timezone() -> None:
    late = datetime(2021, 10, 6, 23, 30, tzinfo=UTC)
    assert "6 Oct 2021" in render_message(make_article(published_at=late)).html
    tokyo = render_message(make_article(published_at=late), timezone="Asia/Tokyo")
    assert "TechCrunch · 7 Oct 2021" in tokyo.html


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        render_message(make_article(), timezone="Mars/Olympus")


def test_provider_falls_back_to_the_host() -> None:
    message = render_message(make_article(provider=Provider("")))
    assert "example.com · 6 Oct 2021" in message.html
    assert message.buttons[0][0].text == "Read on example.com"


@pytest.mark.parametrize(("article", "label"), [
    (make_article(provider=Provider("", "xn--bcher-kva.example")), "bücher.example"),
    (make_article(provider=Provider(""), url="https://xn--bcher-kva.example/a"),
     "bücher.example"),
    (make_article(provider=Provider("", "xn--r8jz45g.xn--zckzah:8080")), "例え.テスト:8080"),
    # Cyrillic letters passing for Latin ones, or mixed with them: shown as published.
    (make_article(provider=Provider("", "xn--80ak6aa92e.com")), "xn--80ak6aa92e.com"),
    (make_article(provider=Provider("", "xn--pple-43d.com")), "xn--pple-43d.com"),
    (make_article(provider=Provider("", "xn--80ak6aa92e.xn--p1ai")), "аррӏе.рф"),
])
def test_an_idna_host_is_labelled_in_unicode_and_linked_in_ascii(
    article: Article, label: str
) -> None:
    message = render_message(article)
    assert f"{label} · 6 Oct 2021" in message.html
    assert message.buttons[0][0] == Button(f"Read on {label}", article.url)
    assert article.url.isascii() and message.preview_url.isascii()
    assert label in message.plain and article.url in message.plain


# --- limits ----------------------------------------------------------------------------------


def test_long_excerpt_is_cut_at_a_word_boundary_to_fit_the_caption() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    assert len(words) > 5000
    message = render_message(make_article(excerpt=words))
    assert visible_length(message.html) <= CAPTION_LIMIT
    assert visible_length(message.text_html) <= TEXT_LIMIT
    assert telegram_length(message.plain) <= CAPTION_LIMIT
    excerpt = visible_text(message.html).split("\n\n")[1]
    assert excerpt.endswith(ELLIPSIS)
    kept = excerpt.removesuffix(ELLIPSIS)
    assert words.startswith(kept)
    assert words[len(kept)] == " "  # the cut fell between two words
    assert message.html.endswith("TechCrunch · 6 Oct 2021\n#AI #ComputerVision")


def test_text_message_uses_the_4096_limit() -> None:
    words = " ".join(f"word{i}" for i in range(2000))
    message = render_message(make_article(excerpt=words, images=()))
    assert message.photo_url is None
    assert CAPTION_LIMIT < visible_length(message.html) <= TEXT_LIMIT
    assert telegram_length(message.plain) <= TEXT_LIMIT
    assert message.plain.endswith("Read: https://example.com/a")


def test_astral_excerpt_is_counted_in_utf16_units() -> None:
    message = render_message(make_article(excerpt="😀" * 600))
    assert visible_length(message.html) <= CAPTION_LIMIT
    excerpt = visible_text(message.html).split("\n\n")[1]
    assert excerpt.endswith(ELLIPSIS)
    assert set(excerpt.removesuffix(ELLIPSIS)) == {"😀"}
    for text in (message.html, message.text_html, message.plain):
        assert_no_lone_surrogates(text)
    assert message.text_html.count("😀") == 600  # 1200 units fit a text message


def test_huge_title_is_shortened_too() -> None:
    message = render_message(make_article(title="headline " * 1000, excerpt="more " * 1000))
    assert visible_length(message.html) <= CAPTION_LIMIT
    assert visible_length(message.text_html) <= TEXT_LIMIT
    assert message.html.startswith("<b>headline headline")
    assert f"{ELLIPSIS}</b>" in message.html
    assert "6 Oct 2021" in message.html  # the footer survives


def test_many_topics_never_crowd_out_the_title() -> None:
    topics = tuple(f"Topic{i}" for i in range(500))
    message = render_message(make_article(topics=topics))
    assert visible_length(message.html) <= CAPTION_LIMIT
    assert message.html.startswith("<b>Robots learn to see</b>\n\nA short excerpt")


# --- images ----------------------------------------------------------------------------------


def test_article_with_a_picture_is_a_photo() -> None:
    message = render_message(make_article())
    assert message.photo_url == PHOTO.url


def test_article_without_image_is_a_text_message() -> None:
    message = render_message(make_article(images=()))
    assert message.photo_url is None
    assert message.html == message.text_html


def test_icon_only_image_is_not_used() -> None:
    icon = Image("https://example.com/favicon.png", 32, 32)
    assert render_message(make_article(images=(icon,))).photo_url is None


def test_best_image_is_chosen() -> None:
    small = Image("https://example.com/small.jpg", 400, 300)
    message = render_message(make_article(images=(small, PHOTO)))
    assert message.photo_url == PHOTO.url


def test_non_web_image_url_is_not_used() -> None:
    images = (Image("ftp://example.com/i.jpg", 1024, 682),)
    assert render_message(make_article(images=images)).photo_url is None


# --- buttons ---------------------------------------------------------------------------------


def test_read_button_and_at_most_three_related_buttons() -> None:
    related = tuple(
        Related(f"Story {i}: a rather long related headline that goes on", f"https://ex.org/{i}")
        for i in range(5)
    )
    message = render_message(make_article(related=related))
    assert message.buttons[0] == (Button("Read on TechCrunch", "https://example.com/a"),)
    rows = message.buttons[1:]
    assert [row[0].url for row in rows] == [
        "https://ex.org/0",
        "https://ex.org/1",
        "https://ex.org/2",
    ]
    for (button,) in rows:
        assert telegram_length(button.text) <= 40
        assert button.text.endswith(ELLIPSIS)
        assert button.text.startswith("Story ")


def test_related_buttons_skip_bad_urls_and_the_article_itself() -> None:
    related = (
        Related("Script", "javascript:alert(1)"),
        Related("Mail", "mailto:a@example.com"),
        Related("Same page", "https://EXAMPLE.com/a?utm_source=x"),
        Related("", "https://ex.org/untitled"),
        Related("Good", "https://ex.org/good"),
        Related("Good again", "https://ex.org/good#top"),
    )
    message = render_message(make_article(related=related))
    assert message.buttons[1:] == (
        (Button("Related article", "https://ex.org/untitled"),),
        (Button("Good", "https://ex.org/good"),),
    )


def test_button_texts_are_never_empty() -> None:
    message = render_message(make_article(related=(Related("   ", "https://ex.org/r"),)))
    assert all(button.text for row in message.buttons for button in row)


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_shows_method_target_body_and_buttons() -> None:
    related = (Related("Another story", "https://ex.org/1"),)
    output = format_for_dry_run(render_message(make_article(related=related)), "@channel")
    assert output.splitlines()[0] == "sendPhoto to @channel (urn:uuid:1)"
    assert "photo: https://example.com/i.jpg" in output
    assert "| <b>Robots learn to see</b>" in output
    assert "[Read on TechCrunch] -> https://example.com/a" in output
    assert "[Another story] -> https://ex.org/1" in output


def test_dry_run_of_a_text_message_shows_the_preview() -> None:
    output = format_for_dry_run(render_message(make_article(images=())), "-100123")
    assert output.startswith("sendMessage to -100123")
    assert "link preview: https://example.com/a" in output


# --- property --------------------------------------------------------------------------------

_texts = st.text(max_size=60)
_long_texts = st.builds(
    lambda piece, times: piece * times, st.text(min_size=1, max_size=12), st.integers(1, 700)
)


@st.composite
def articles(draw: st.DrawFn) -> Article:
    return make_article(
        title=draw(_texts | _long_texts),
        excerpt=draw(_texts | _long_texts),
        provider=Provider(draw(_texts | _long_texts), draw(_texts)),
        topics=tuple(draw(st.lists(_texts | _long_texts, max_size=8))),
        published_at=draw(st.datetimes(timezones=st.just(UTC))),
        images=draw(st.sampled_from([(), (PHOTO,)])),
        related=tuple(
            Related(title, "https://ex.org/r") for title in draw(st.lists(_texts, max_size=4))
        ),
    )


def _assert_message_is_valid(message: Message) -> None:
    caption_limit = CAPTION_LIMIT if message.photo_url else TEXT_LIMIT
    for text, limit in ((message.html, caption_limit), (message.text_html, TEXT_LIMIT)):
        assert_telegram_html(text)
        assert 0 < visible_length(text) <= limit
        assert visible_text(text).strip()
        assert_no_lone_surrogates(text)
    assert 0 < telegram_length(message.plain) <= caption_limit
    assert_no_lone_surrogates(message.plain)
    assert all(button.text.strip() for row in message.buttons for button in row)


@settings(max_examples=200, deadline=None)
@given(articles())
def test_any_article_renders_valid_html_within_the_limits(article: Article) -> None:
    _assert_message_is_valid(render_message(article))


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=300))
def test_shorten_always_fits_and_keeps_a_prefix(text: str, limit: int) -> None:
    result = shorten(text, limit)
    assert telegram_length(result) <= limit
    assert_no_lone_surrogates(result)
    if result != text and result:
        assert result.endswith(ELLIPSIS)
        assert text.startswith(result.removesuffix(ELLIPSIS))


def test_shorten_never_splits_a_flag_or_an_emoji_with_its_skin_tone() -> None:
    flags = "🇩🇪" * 10  # each flag: two regional indicators, four UTF-16 units
    result = shorten(flags, 7)
    assert result == "🇩🇪" + ELLIPSIS
    waving = "👋🏽" * 5  # an emoji and its skin-tone modifier: one visible character
    assert shorten(waving, 7) == "👋🏽" + ELLIPSIS
    keycap = "1\ufe0f\u20e3" * 5  # digit, variation selector, combining keycap
    assert shorten(keycap, 8) == "1\ufe0f\u20e3" * 2 + ELLIPSIS
