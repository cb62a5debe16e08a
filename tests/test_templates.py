"""Message templates: Jinja2 in Telegram HTML, Babel dates, default texts, fitting, errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_messages import (
    PHOTO,
    _long_texts,
    _texts,
    assert_telegram_html,
    make_article,
    visible_text,
)

from publisher.config import load_config
from publisher.errors import ConfigError, RenderError
from publisher.messages import (
    CAPTION_LIMIT,
    ELLIPSIS,
    TEXT_LIMIT,
    format_for_dry_run,
    render_for,
    render_message,
    telegram_length,
    visible_length,
)
from publisher.models import Provider, Related
from publisher.settings import PostSettings
from publisher.templates import DEFAULT_TEMPLATE, compile_template, format_date

RELATED = (Related("Another story", "https://ex.org/1", provider=Provider("Ex")),
           Related("A third one", "https://ex.org/2"))
GERMAN = PostSettings(
    template="<b>{{ title }}</b>\n\n{{ excerpt }}\n\n<i>{{ provider }}</i> · {{ date }}",
    language="de", date_format="long",
)


def write_config(tmp_path: Path, telegram: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[telegram]\nchat_id = "@news"\n{telegram}', encoding="utf-8")
    return path


def config_error(tmp_path: Path, telegram: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, telegram), environ={})
    return str(caught.value)


# --- the default template is today's message --------------------------------------------------


_short = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=100, deadline=None)
@given(title=_short, excerpt=_short, provider=_short,
       topics=st.lists(_short, max_size=4))
def test_the_default_template_written_out_renders_the_default_message(
    title: str, excerpt: str, provider: str, topics: list[str]
) -> None:
    article = make_article(title=title, excerpt=excerpt, provider=Provider(provider),
                           topics=tuple(topics))
    builtin = render_message(article)
    written = render_message(article, PostSettings(template=DEFAULT_TEMPLATE))
    assert written.html == builtin.html
    assert written.buttons == builtin.buttons


def test_the_defaults_keep_the_english_date_and_buttons() -> None:
    message = render_message(make_article(related=RELATED), PostSettings())
    assert "TechCrunch · 6 Oct 2021" in message.html
    assert message.buttons[0][0].text == "Read on TechCrunch"
    assert [row[0].text for row in message.buttons[1:]] == ["Another story", "A third one"]
    assert not message.silent


# --- languages and dates ------------------------------------------------------------------


def test_a_german_template_with_a_babel_date_and_the_translated_button() -> None:
    message = render_message(make_article(), GERMAN, timezone="Europe/Berlin")
    assert message.html == ("<b>Robots learn to see</b>\n\n"
                            "A short excerpt about machine vision.\n\n"
                            "<i>TechCrunch</i> · 6. Oktober 2021")
    assert message.buttons[0][0].text == "Weiterlesen bei TechCrunch"
    assert_telegram_html(message.html)


@pytest.mark.parametrize(("language", "date", "read"), [
    ("en", "6 Oct 2021", "Read on TechCrunch"),
    ("de", "06.10.2021", "Weiterlesen bei TechCrunch"),
    ("de_AT", "06.10.2021", "Weiterlesen bei TechCrunch"),
    ("fa", "6 اکتبر 2021", "خواندن در TechCrunch"),
    ("ja", "2021/10/06", "TechCrunchで読む"),
    ("en_US", "Oct 6, 2021", "Read on TechCrunch"),
])
def test_the_default_message_in_each_language(language: str, date: str, read: str) -> None:
    message = render_message(make_article(), PostSettings(language=language))
    assert f"TechCrunch · {date}\n" in message.html
    assert message.buttons[0][0].text == read


def test_default_labels_without_a_provider_or_a_title_are_translated() -> None:
    article = make_article(provider=Provider("   "),
                           related=(Related("", "https://ex.org/r"),))
    message = render_message(article, PostSettings(language="de"))
    assert [row[0].text for row in message.buttons] == ["Artikel lesen", "Verwandter Artikel"]


def test_date_patterns_and_time_zones() -> None:
    late = datetime(2021, 10, 6, 23, 30, tzinfo=UTC)
    assert format_date(late, "Asia/Tokyo", "de", "EEEE, d. MMMM y, HH:mm") == \
        "Donnerstag, 7. Oktober 2021, 08:30"
    assert format_date(late, "UTC", "en", "full") == "Wednesday, October 6, 2021"
    assert format_date(late) == "6 Oct 2021"


# --- the operator's template --------------------------------------------------------------


def test_every_variable_of_a_template() -> None:
    template = ("{{ title }}|{{ excerpt }}|{{ url }}|{{ provider }}|{{ date }}|"
                "{{ published.strftime('%H:%M') }}|{{ topics|join(',') }}|{{ hashtags }}|"
                "{{ quality }}|{{ heat }}|{{ image }}|"
                "{% for item in related %}{{ item.title }}>{{ item.url }}>{{ item.provider }};"
                "{% endfor %}")
    article = make_article(quality=91, heat=7, related=RELATED)
    with pytest.raises(ConfigError, match="'>' must be escaped"):
        compile_template(template, "telegram.template")
    message = render_message(article, PostSettings(template=template.replace(">", "&gt;")),
                             timezone="Asia/Tokyo")
    assert visible_text(message.html) == (
        "Robots learn to see|A short excerpt about machine vision.|https://example.com/a|"
        "TechCrunch|6 Oct 2021|20:10|AI,Computer Vision|#AI #ComputerVision|91|7|"
        "https://example.com/i.jpg|Another story>https://ex.org/1>Ex;"
        "A third one>https://ex.org/2>ex.org;"
    )


def test_variables_are_escaped_for_telegram_html_in_text_and_in_attributes() -> None:
    article = make_article(title='<b>"x" & y</b>', url='https://example.com/a?q="1"&r=<2>')
    settings = PostSettings(template='<a href="{{ url }}">{{ title }}</a> {{ excerpt }}')
    message = render_message(article, settings)
    assert message.html.startswith(
        '<a href="https://example.com/a?q=&quot;1&quot;&amp;r=&lt;2&gt;">'
        '&lt;b&gt;"x" &amp; y&lt;/b&gt;</a>'
    )
    assert_telegram_html(message.html)


def test_a_long_template_shortens_the_excerpt_to_fit_the_caption() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    template = "<b>{{ title }}</b>\n" + "Boilerplate. " * 60 + "\n{{ excerpt }}\n— {{ provider }}"
    message = render_message(make_article(excerpt=words), PostSettings(template=template))
    assert message.photo_url == PHOTO.url
    assert visible_length(message.html) <= CAPTION_LIMIT
    assert visible_length(message.html) > CAPTION_LIMIT - 30  # no more cut than needed
    excerpt = visible_text(message.html).split("\n")[2]
    assert excerpt.endswith(ELLIPSIS) and words.startswith(excerpt.removesuffix(ELLIPSIS))
    assert words[len(excerpt) - 1] == " "  # cut between two words
    assert message.html.endswith("— TechCrunch")
    assert visible_length(message.text_html) <= TEXT_LIMIT
    assert telegram_length(message.plain) <= CAPTION_LIMIT
    assert message.plain.endswith("Read: https://example.com/a")


def test_a_caption_that_cannot_fit_goes_as_a_text_message() -> None:
    template = "{{ title }}\n" + "x " * 600 + "\n{{ excerpt }}"
    message = render_message(make_article(), PostSettings(template=template))
    assert message.photo_url is None and message.html == message.text_html
    assert CAPTION_LIMIT < visible_length(message.html) <= TEXT_LIMIT
    assert "A short excerpt about machine vision." in message.html


def test_a_message_that_cannot_fit_even_as_text_names_the_template() -> None:
    settings = PostSettings(template="{{ title }} {% for t in topics %}{{ excerpt }}{% endfor %}"
                                     "{{ hashtags }}")
    article = make_article(topics=tuple(f"Topic{i}" for i in range(500)))
    with pytest.raises(RenderError, match=r"telegram\.template: the message is longer than 4096"):
        render_message(article, settings)


def test_a_branch_the_samples_missed_fails_the_post_not_telegram() -> None:
    settings = PostSettings(template="{% if quality > 90 %}<b>{% endif %}{{ title }}")
    render_message(make_article(quality=50), settings)
    with pytest.raises(RenderError, match="renders HTML Telegram refuses: tag <b> is not closed"):
        render_message(make_article(quality=95), settings)


def test_an_empty_rendering_fails() -> None:
    with pytest.raises(RenderError, match="renders an empty message"):
        render_message(make_article(excerpt=""), PostSettings(template="{{ excerpt }}"))


def test_buttons_hashtags_preview_and_silence_follow_the_settings() -> None:
    related = tuple(Related(f"Story {i}", f"https://ex.org/{i}") for i in range(6))
    article = make_article(related=related, images=())
    quiet = PostSettings(read_button="", related_buttons=5, hashtags=False,
                         link_preview=False, silent=True)
    message = render_message(article, quiet)
    assert [row[0].url for row in message.buttons] == [f"https://ex.org/{i}" for i in range(5)]
    assert "#AI" not in message.html and message.html.endswith("TechCrunch · 6 Oct 2021")
    assert message.preview_url == "" and message.silent
    assert message.plain.endswith("Read: https://example.com/a")
    dry_run = format_for_dry_run(message, "@news")
    assert "silent: without a notification" in dry_run and "link preview" not in dry_run
    none = render_message(article, PostSettings(related_buttons=0))
    assert none.buttons == ((none.buttons[0][0],),)


def test_a_read_button_of_its_own() -> None:
    settings = PostSettings(read_button="📰 {{ provider }} ({{ date }})  ")
    message = render_message(make_article(), settings)
    assert message.buttons[0][0].text == "📰 TechCrunch (6 Oct 2021)"
    long = PostSettings(read_button="{{ title }} " * 20)
    assert telegram_length(render_message(make_article(), long).buttons[0][0].text) <= 64


_TEMPLATES = [
    GERMAN.template,
    '<a href="{{ url }}">{{ title }}</a>\n<blockquote>{{ excerpt }}</blockquote>\n{{ hashtags }}',
    "{% for item in related %}<a href=\"{{ item.url }}\">{{ item.title }}</a> ({{ item.provider }})"
    "\n{% endfor %}<b>{{ title }}</b> {{ excerpt }} {% if image %}📷{% endif %}",
]


@settings(max_examples=150, deadline=None)
@given(template=st.sampled_from(_TEMPLATES), title=_texts | _long_texts,
       excerpt=_texts | _long_texts, topics=st.lists(_texts, max_size=30),
       related=st.lists(_texts | _long_texts, max_size=10), photo=st.booleans())
def test_any_article_in_any_template_is_a_valid_post_or_fails_clearly(
    template: str, title: str, excerpt: str, topics: list[str], related: list[str],
    photo: bool,
) -> None:
    article = make_article(
        title=title, excerpt=excerpt, topics=tuple(topics), images=(PHOTO,) if photo else (),
        related=tuple(Related(text, f"https://ex.org/{i}") for i, text in enumerate(related)),
    )
    try:
        message = render_message(article, PostSettings(template=template))
    except RenderError as exc:
        assert str(exc).startswith("telegram.template: ")
        return
    caption_limit = CAPTION_LIMIT if message.photo_url else TEXT_LIMIT
    for text, limit in ((message.html, caption_limit), (message.text_html, TEXT_LIMIT)):
        assert_telegram_html(text)
        assert 0 < visible_length(text) <= limit and visible_text(text).strip()
    assert 0 < telegram_length(message.plain) <= caption_limit


# --- errors at start ---------------------------------------------------------------------


@pytest.mark.parametrize(("template", "message"), [
    ("<b>{{ title }}</b>\n\n<div>{{ excerpt }}</div>",
     "telegram.template: line 3: unsupported tag <div>"),
    ("{{ title }}\n{{ titel }}", "telegram.template: line 2: undefined variable 'titel'"),
    ("{{ title }}\n{% if excerpt %}\n{{ excerpt }", "telegram.template: line 3: unexpected '}'"),
    ("{% for item in related %}{{ item.titel }}{% endfor %}",
     "telegram.template: line 1: 'dict object' has no attribute 'titel'"),
    ("{{ title|safe }}", "telegram.template: line 1: No filter named 'safe'"),
    ("{% autoescape false %}{{ title }}{% endautoescape %}",
     "telegram.template: line 1: autoescape cannot be turned off"),
    ("{{ title }} & more", "telegram.template: line 1: '&' must be escaped as &amp;"),
    ('\n<a href="javascript:alert(1)">x</a>',
     "telegram.template: line 2: link 'javascript:alert(1)' is not http(s)"),
    ("<span>{{ title }}</span>", 'telegram.template: line 1: tag <span> needs class="tg-spoiler"'),
    ("{% if image %}<b>{% endif %}{{ title }}",
     "telegram.template: renders HTML Telegram refuses: tag <b> is not closed"),
    ("{{ title }}\n{{ '=' * 10**9 }}",
     "telegram.template: line 2: a repetition above 10,000 times"),
    ("{{ title }}{{ 10 ** 100 ** 100 }}", "telegram.template: line 1: an exponent above 64"),
    ("{{ published.__class__ }}", "telegram.template: line 1: access to attribute '__class__'"),
])
def test_a_bad_template_is_a_config_error_naming_its_line(tmp_path: Path, template: str,
                                                          message: str) -> None:
    toml = template.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    assert config_error(tmp_path, f'template = "{toml}"\n').startswith(message)


def test_a_destination_template_is_named_by_its_own_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, 'routes = { AI = "@x" }\n[telegram.chats."@x"]\n'
                                   'template = "<p>{{ title }}</p>"\n')
    assert error == 'telegram.chats."@x".template: line 1: unsupported tag <p>'


@pytest.mark.parametrize(("telegram", "message"), [
    ('language = "klingon"\n', "telegram.language: unknown language 'klingon'"),
    ('read_button = "Read {{ titel }}"\n', "telegram.read_button: line 1: undefined variable"),
    ('template = "{{ title }}"\ntemplate_file = "t.j2"\n',
     "telegram.template and telegram.template_file: set one of them, not both"),
    ('template_file = "missing.j2"\n', "telegram.template_file ("),
])
def test_other_message_settings_that_are_wrong(tmp_path: Path, telegram: str,
                                               message: str) -> None:
    assert message in config_error(tmp_path, telegram)


def test_a_template_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "post.j2").write_text("<b>{{ title }}</b>\n{{ date }}\n", encoding="utf-8")
    config = load_config(write_config(tmp_path, 'template_file = "post.j2"\nlanguage = "de"\n'
                                                'date_format = "d. MMMM y"\n'), environ={})
    settings = config.settings_for("@news")
    assert render_message(make_article(), settings).html == \
        "<b>Robots learn to see</b>\n6. Oktober 2021"
    (tmp_path / "post.j2").write_text("<div>{{ title }}</div>\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"post\.j2\): line 1: unsupported tag <div>"):
        render_message(make_article(), settings)



def test_the_readme_example_is_a_working_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Shaping posts"):]
    example = section[section.index("```toml") + len("```toml"):]
    (tmp_path / "config.toml").write_text(example[:example.index("```")], encoding="utf-8")
    config = load_config(tmp_path / "config.toml", environ={})
    message = render_for(make_article(), config, "@robotik")
    assert message.html.endswith("<i>TechCrunch</i>, 6. Oktober 2021 #AI #ComputerVision")
    assert message.buttons[0][0].text == "Weiterlesen bei TechCrunch" and message.silent
    assert render_for(make_article(), config, "@news").html == render_message(make_article()).html


def test_a_keyboard_never_holds_more_buttons_than_telegram_takes() -> None:
    related = tuple(Related(f"Story {i}", f"https://ex.org/{i}") for i in range(150))
    message = render_message(make_article(related=related), PostSettings(related_buttons=500))
    assert len(message.buttons) == 100 and message.buttons[0][0].text == "Read on TechCrunch"


@pytest.mark.parametrize("title", ['Say "hi" to robots', 'x"' + "a" * 400 + '"', '"' * 300])
def test_a_quote_inside_an_href_fails_the_post_at_once(title: str) -> None:
    template = '<a href="https://search.example.com/?q={{ title }}">{{ title }}</a>'
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"tag <a>: attributes Telegram cannot parse"):
        render_message(make_article(title=title), PostSettings(template=template))
    assert time.monotonic() - started < 1.0  # the checker never backtracks through a word
