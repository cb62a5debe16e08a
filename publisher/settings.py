"""Per-destination settings: how posts look and when they go, for one destination.

``[telegram]`` holds the defaults of every key here; ``[telegram.chats."<destination>"]``
overrides any of them for that destination only. ``Config.settings_for(destination)`` gives
the merged, validated value; nothing else reads these keys from ``TelegramConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PostSettings:
    # Which posts a push sends for this destination.
    max_age_hours: float = 24.0
    max_per_run: int = 10
    # Message shape (see messages.py): a Jinja2 template in Telegram's HTML mode.
    template: str = ""  # empty = the built-in default template
    template_file: Path | None = None  # relative to the config file
    read_button: str = "Read on {{ provider }}"  # empty = no read button
    related_buttons: int = 3  # 0 = none
    language: str = "en"  # a Babel locale
    date_format: str = "medium"  # a Babel format name or a pattern
    hashtags: bool = True
    link_preview: bool = True  # text messages only
    silent: bool = False  # disable_notification
    # Timing.
    quiet_hours: str = ""  # "23:00-07:00" in telegram.timezone; empty = none
    quiet_mode: str = "silent"  # "silent" or "hold"
    digest: str = ""  # "" = one post per article; "daily 08:00", "hourly" or a cron line
    digest_max_items: int = 10
    digest_template: str = ""  # empty = the built-in default digest template
    digest_template_file: Path | None = None  # relative to the config file


SETTING_NAMES: tuple[str, ...] = tuple(PostSettings.__dataclass_fields__)
PATH_SETTINGS = ("template_file", "digest_template_file")
# The message settings a template check at start covers (templates.check_config): when a
# destination leaves them all at their defaults, there is nothing to check.
SHAPE_SETTINGS = ("template", "template_file", "read_button", "language", "date_format",
                  "hashtags")


def has_default_shape(settings: PostSettings) -> bool:
    return all(getattr(settings, name) == getattr(_DEFAULTS, name) for name in SHAPE_SETTINGS)


_DEFAULTS = PostSettings()
