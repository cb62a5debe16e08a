"""Small text rules shared by the commands, the status report and the loader's messages."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 post``, ``2 posts``, ``0 posts``; ``many`` for irregular nouns (``entries``)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"
