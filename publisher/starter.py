"""``publisher init [DIR]``: a commented starter config and an empty articles folder.

The config is ``config.example.toml`` (package data, the very file the repository documents
every key in) with every setting commented out: it loads as the built-in defaults, shows each
key with its default, and follows the defaults of later versions until a line is uncommented.
Nothing that exists is ever overwritten.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from publisher.errors import InitError

CONFIG_NAME = "config.toml"
ARTICLES_NAME = "articles"
EXAMPLE_NAME = "config.example.toml"
STARTER_HEADER = """\
# Written by `publisher init`. Every setting below is commented out and shows its default:
# uncomment the ones you change. Set at least feeds.base_url (the public address of the
# feeds folder), feeds.title, and telegram.chat_id if you post to Telegram.
#
"""
_SETTING = re.compile(r"^[A-Za-z0-9_]+\s*=")
_CONTINUATION = re.compile(r"^\s+#")


@dataclass(frozen=True)
class Created:
    path: Path
    created: bool  # False: it existed and was left alone


def example_config() -> str:
    """The text of ``config.example.toml`` shipped with the package."""
    return resources.files("publisher").joinpath(EXAMPLE_NAME).read_text(encoding="utf-8")


def starter_config(example: str | None = None) -> str:
    """``example`` (default: the shipped one) with every setting commented out."""
    lines = []
    for line in (example_config() if example is None else example).splitlines():
        if _SETTING.match(line):
            line = "# " + line
        elif _CONTINUATION.match(line):
            line = "  " + line  # keeps a wrapped comment under the one it continues
        lines.append(line)
    return STARTER_HEADER + "\n".join(lines) + "\n"


def init_site(directory: Path) -> list[Created]:
    """Create ``directory`` (if needed), its ``config.toml`` and ``articles/``; keep what is
    there already."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InitError(f"cannot create {directory}: a file of that name exists") from None
    except OSError as exc:
        raise InitError(f"cannot create {directory}: {exc.strerror or exc}") from None
    return [_write_new(directory / CONFIG_NAME, starter_config()),
            _make_folder(directory / ARTICLES_NAME)]


def _write_new(path: Path, text: str) -> Created:
    """Write ``text`` to ``path`` unless something exists there (checked and created in one
    step, O_EXCL, so a file appearing meanwhile is not overwritten either)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        if not path.is_file():
            raise InitError(f"{path} exists and is not a file") from None
        return Created(path, created=False)
    except OSError as exc:
        raise InitError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()  # never leave half a config behind
        raise InitError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Created(path, created=True)


def _make_folder(path: Path) -> Created:
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise InitError(f"{path} exists and is not a folder") from None
        return Created(path, created=False)
    except OSError as exc:
        raise InitError(f"cannot create {path}: {exc.strerror or exc}") from None
    return Created(path, created=True)
