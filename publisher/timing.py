"""When posts go: quiet hours and digest schedules, in ``telegram.timezone``.

``quiet_hours = "23:00-07:00"`` is a window of the local day (it may wrap past midnight);
``digest = "daily 08:00"``, ``"hourly"`` or a five-field cron line says when a digest
destination gets its digest. Both are parsed (and checked, naming the key) when the config
loads; the plan (``plan.make_plan``) asks them what holds at its ``now``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from publisher.errors import ConfigError
from publisher.settings import PostSettings

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

_CLOCK = r"([01]?\d|2[0-3]):([0-5]\d)"
_QUIET = re.compile(rf"^\s*{_CLOCK}\s*-\s*{_CLOCK}\s*$")
_DAILY = re.compile(rf"^\s*daily\s+{_CLOCK}\s*$", re.IGNORECASE)
# How far back the latest fire time of a cron line is looked for, nearest first (a few
# fire times to walk through each): four years hold every line, 29 February's too.
_LOOKBACKS = (timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=32),
              timedelta(days=367), timedelta(days=366 * 4 + 1))


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def contains(self, moment: datetime, zone: tzinfo) -> bool:
        """Whether ``moment`` (aware) falls in the window, read in ``zone``."""
        local = moment.astimezone(zone).time().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    @property
    def end_label(self) -> str:
        return self.end.strftime("%H:%M")


@functools.lru_cache(maxsize=256)
def parse_quiet_hours(value: str, key: str) -> QuietHours | None:
    """``"23:00-07:00"`` as a window; "" is none; anything else a ``ConfigError`` on ``key``."""
    if not value.strip():
        return None
    match = _QUIET.match(value)
    if not match:
        raise ConfigError(f'config key {key} must be a window like "23:00-07:00" '
                          f"(HH:MM-HH:MM, in telegram.timezone), not {value!r}")
    start = time(int(match.group(1)), int(match.group(2)))
    end = time(int(match.group(3)), int(match.group(4)))
    if start == end:
        raise ConfigError(f"config key {key} must not start and end at the same time: "
                          f"{value!r}")
    return QuietHours(start, end)


@dataclass(frozen=True)
class DigestSchedule:
    """When a destination's digests go out: the fire times of a cron line in a zone."""

    spec: str
    crontab: str
    timezone: str

    @functools.cached_property
    def _trigger(self) -> CronTrigger:
        from apscheduler.triggers.cron import CronTrigger

        return CronTrigger.from_crontab(self.crontab, timezone=ZoneInfo(self.timezone))

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment`` (aware)."""
        fire: datetime | None = self._trigger.get_next_fire_time(None, moment)
        if fire is not None and fire <= moment:
            fire = self._trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        return fire

    def latest_at(self, moment: datetime) -> datetime | None:
        """The latest fire time at or before ``moment``; None when none in four years."""
        for lookback in _LOOKBACKS:
            fire = self.next_after(moment - lookback)
            if fire is None or fire > moment:
                continue
            while True:
                later = self.next_after(fire)
                if later is None or later > moment:
                    return fire
                fire = later
        return None


@functools.lru_cache(maxsize=256)
def parse_digest(value: str, timezone: str, key: str) -> DigestSchedule | None:
    """``"daily 08:00"``, ``"hourly"`` or a cron line; "" is none (one post per article)."""
    spec = value.strip()
    if not spec:
        return None
    daily = _DAILY.match(spec)
    if daily:
        crontab = f"{int(daily.group(2))} {int(daily.group(1))} * * *"
    elif spec.lower() == "hourly":
        crontab = "0 * * * *"
    else:
        crontab = with_standard_weekdays(spec)
    from apscheduler.triggers.cron import CronTrigger  # a slow import: only when used

    try:
        CronTrigger.from_crontab(crontab, timezone=ZoneInfo(timezone))
    except ValueError as exc:
        raise ConfigError(f'config key {key} must be "daily HH:MM", "hourly" or a cron line '
                          f'like "0 8 * * *", not {value!r}: {exc}') from None
    return DigestSchedule(spec, crontab, timezone)


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def with_standard_weekdays(crontab: str) -> str:
    """``crontab`` with its day-of-week numbers as cron means them (0 or 7 Sunday, 1
    Monday), spelled as names: APScheduler's ``from_crontab`` reads 0 as Monday, which
    would send a "1-5" (Monday to Friday) digest from Tuesday to Saturday. A field it
    cannot read is left for APScheduler to refuse."""
    fields = crontab.split()
    if len(fields) != 5:
        return crontab
    try:
        fields[4] = _weekday_names(fields[4])
    except (ValueError, IndexError):
        return crontab
    return " ".join(fields)


def _weekday_names(field: str) -> str:
    names: list[str] = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if re.search("[A-Za-z?]", part) or (base == "*" and not step):
            names.append(part)  # names and "*" mean the same to both
            continue
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            first, last = (int(bound) for bound in base.split("-", 1))
        else:
            first = int(base)
            last = 6 if step else first
        if not 0 <= first <= last <= 7:
            raise ValueError(part)
        names += [_DAY_NAMES[day] for day in range(first, last + 1, int(step or 1))]
    return ",".join(dict.fromkeys(names))


def local_label(moment: datetime, zone: tzinfo, now: datetime) -> str:
    """``08:00`` for a moment later on ``now``'s local day, else ``2026-12-03 08:00``."""
    local = moment.astimezone(zone)
    if local.date() == now.astimezone(zone).date():
        return local.strftime("%H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def check_timing(settings: PostSettings, prefix: str, timezone: str) -> None:
    """The timing keys of one destination's settings, parsed as the plan will: a
    ``ConfigError`` naming the key (``prefix.quiet_hours``...) when one cannot be."""
    parse_quiet_hours(settings.quiet_hours, f"{prefix}.quiet_hours")
    if parse_digest(settings.digest, timezone, f"{prefix}.digest") is not None or (
            settings.digest_template or settings.digest_template_file):
        from publisher.digest import check_digest_template

        check_digest_template(settings, prefix, timezone)


@dataclass(frozen=True)
class ChatTiming:
    """What quiet hours and the digest schedule say of one destination at one moment."""

    hold: str = ""  # why nothing goes out now (quiet hours in "hold" mode), else ""
    silent: bool = False  # quiet hours in "silent" mode: notifications off
    digest: bool = False  # the destination gets digests, not one post per article
    window: datetime | None = None  # the digest due now (its fire time); None: none due
    waiting: str = ""  # a digest destination with none due: why its articles wait


def timing_at(settings: PostSettings, timezone: str, now: datetime,
              digest_since: datetime | None) -> ChatTiming:
    """The timing of a destination at ``now``. ``digest_since``: its last digest's fire
    time, else the publication of its oldest waiting article (None: nothing waits yet)."""
    zone = ZoneInfo(timezone)
    hold, silent = "", False
    quiet = parse_quiet_hours(settings.quiet_hours, "quiet_hours")
    if quiet is not None and quiet.contains(now, zone):
        if settings.quiet_mode == "hold":
            hold = f"quiet hours until {quiet.end_label}"
        else:
            silent = True
    schedule = parse_digest(settings.digest, timezone, "digest")
    if schedule is None:
        return ChatTiming(hold, silent)
    latest = schedule.latest_at(now)
    if latest is not None and digest_since is not None and latest > digest_since:
        return ChatTiming(hold, silent, True, latest)
    upcoming = schedule.next_after(now)
    when = local_label(upcoming, zone, now) if upcoming is not None else "never"
    return ChatTiming(hold, silent, True, None, f"digest: the next one at {when}")
