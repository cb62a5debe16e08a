"""Telegram's HTML subset (``parse_mode=HTML``): what it accepts, checked before we send.

Telegram answers 400 "can't parse entities" for a tag it does not know, a ``<``, ``>`` or
``&`` that is not escaped, an entity other than ``&lt; &gt; &amp; &quot;`` and numeric ones,
or tags that do not nest. ``problems`` finds those in a text; ``static=True`` checks each tag
and character by itself (a template's own text, whose tags may open and close in different
branches), without asking that the tags balance. Links must be http(s): publisher publishes
no other kind.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

from publisher.text import is_web_url

TAGS = frozenset({
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "tg-spoiler", "span", "a",
    "tg-emoji", "code", "pre", "blockquote",
})
NAMED_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})
_SPECIAL = re.compile(r"[<&>]")
_ENTITY = re.compile(r"&(?:([a-zA-Z]+)|#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6}));")
_TAG = re.compile(r"<(/?)([^\s/>]*)([^>]*)>")
# Telegram's parser wants each attribute as a name, or name=value with the value quoted or a
# token of letters, digits, "." and "-": a quote a variable left inside a quoted value ends
# it early (a 400, or a link cut short). Attributes apart by spaces (stricter than Telegram),
# so that the pattern cannot backtrack through the ways of splitting one word.
_ATTRIBUTES_SYNTAX = re.compile(
    r"""(?:\s+[^\s=<>"'&]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9.\-]+(?=\s|$)))?)*\s*""")
_ATTRIBUTE = re.compile(r"""([a-zA-Z_:][-\w:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
# What a template's expression stands for in its static text (see templates.py): a private
# use character, which no template writes by itself.
PLACEHOLDER = "\ue000"


@dataclass(frozen=True, slots=True)
class Problem:
    offset: int  # index in the text of the tag or character at fault
    message: str


def problems(text: str, *, static: bool = False) -> Iterator[Problem]:
    """What Telegram would refuse in ``text``, in order."""
    stack: list[tuple[str, int]] = []
    position = 0
    while (special := _SPECIAL.search(text, position)) is not None:
        position = special.start()
        char = special.group()
        if char == "<":
            match = _TAG.match(text, position)
            if match is None:
                yield Problem(position, "'<' must be escaped as &lt;")
                position += 1
                continue
            yield from _tag(match, stack, static=static)
            position = match.end()
        elif char == "&":
            entity = _ENTITY.match(text, position)
            if entity is None or not _known_entity(entity):
                yield Problem(position, "'&' must be escaped as &amp;")
                position += 1
            else:
                position = entity.end()
        else:
            yield Problem(position, "'>' must be escaped as &gt;")
            position += 1
    if not static:
        for name, offset in reversed(stack):
            yield Problem(offset, f"tag <{name}> is not closed")


def first_problem(text: str) -> str | None:
    """The first thing Telegram would refuse in ``text`` (a rendered message), or None."""
    found = next(problems(text), None)
    return found.message if found is not None else None


def _known_entity(entity: re.Match[str]) -> bool:
    name, decimal, hexadecimal = entity.groups()
    if name is not None:
        return name in NAMED_ENTITIES
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    return 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF


def _tag(match: re.Match[str], stack: list[tuple[str, int]], *,
         static: bool) -> Iterator[Problem]:
    closing, raw_name, rest = match.group(1) == "/", match.group(2), match.group(3)
    name, offset = raw_name.lower(), match.start()
    if name not in TAGS:
        shown = raw_name.replace(PLACEHOLDER, "{{ ... }}")
        yield Problem(offset, f"unsupported tag <{'/' if closing else ''}{shown}>")
        return
    if closing:
        if static:
            return
        if not stack:
            yield Problem(offset, f"end tag </{name}> without a start tag")
        elif stack[-1][0] != name:
            yield Problem(offset, f"end tag </{name}> where </{stack[-1][0]}> was expected")
        else:
            stack.pop()
        return
    if _ATTRIBUTES_SYNTAX.fullmatch(rest.replace(PLACEHOLDER, "x")) is None:
        yield Problem(offset, f"tag <{name}>: attributes Telegram cannot parse (a quote "
                              "inside a quoted value?)")
        return
    problem = _attribute_problem(name, _attributes(rest))
    if problem:
        yield Problem(offset, problem)
    stack.append((name, offset))


def _attributes(text: str) -> dict[str, str]:
    return {match.group(1).lower(): next((v for v in match.groups()[1:] if v is not None), "")
            for match in _ATTRIBUTE.finditer(text)}


def _attribute_problem(name: str, attributes: dict[str, str]) -> str | None:
    if name == "a":
        href = attributes.get("href", "")
        if not href:
            return 'tag <a> needs an href="..."'
        # A link that starts with an expression is checked once rendered.
        literal = href.replace(PLACEHOLDER, "x")
        if not href.startswith(PLACEHOLDER) and not is_web_url(html.unescape(literal)):
            return f"link {literal!r} is not http(s)"
    if name == "span" and attributes.get("class") != "tg-spoiler":
        return 'tag <span> needs class="tg-spoiler"'
    emoji = attributes.get("emoji-id", "")
    if name == "tg-emoji" and not (emoji.isdigit() or PLACEHOLDER in emoji):
        return 'tag <tg-emoji> needs a numeric emoji-id="..."'
    return None
