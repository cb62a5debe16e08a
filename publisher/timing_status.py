"""What ``publisher status`` says of quiet hours and digests: per destination, its timing
settings, and why its pending posts wait now (the plan's own rules, ``timing.timing_at``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from publisher.config import Config
from publisher.db import Database
from publisher.digest_ledger import has_table, recent_digests, waiting_since
from publisher.settings import PostSettings
from publisher.timing import timing_at


def describe_timing(settings: PostSettings) -> dict[str, Any]:
    """A destination's timing keys that are set (empty: every post at once, with sound)."""
    described: dict[str, Any] = {}
    if settings.quiet_hours:
        described["quiet_hours"] = settings.quiet_hours
        described["quiet_mode"] = settings.quiet_mode
    if settings.digest:
        described["digest"] = settings.digest
    if settings.silent:
        described["silent"] = True
    return described


def timing_text(described: dict[str, Any]) -> str:
    parts = []
    if "quiet_hours" in described:
        parts.append(f"quiet {described['quiet_hours']} ({described['quiet_mode']})")
    if "digest" in described:
        parts.append(f"digest {described['digest']}")
    if described.get("silent"):
        parts.append("silent")
    return ", ".join(parts)


def waiting_reason(db: Database, config: Config, chat_id: str, label: str, now: float) -> str:
    """Why a destination's due posts wait at ``now`` because of its timing; "" if not."""
    settings = config.settings_for(label)
    if not (settings.quiet_hours or settings.digest):
        return ""
    moment = datetime.fromtimestamp(now, UTC)
    since = waiting_since(db, chat_id) if settings.digest else None
    timing = timing_at(settings, config.telegram.timezone, moment, since)
    if timing.hold:
        return timing.hold
    if timing.digest and timing.window is None:
        return timing.waiting
    if timing.digest:
        return "the next push sends them in one digest"
    if timing.silent:
        return "the next push sends them, without notification (quiet hours)"
    return ""


def digests_document(db: Database, label_of: Any) -> list[dict[str, Any]]:
    """The latest digests: when, where, how many articles, and what became of them."""
    return [{"destination": label_of(record.chat_id), "chat_id": record.chat_id,
             "window": record.fire_at, "state": record.state, "articles": len(record.items),
             "message_id": record.message_id, "reason": record.reason}
            for record in recent_digests(db, 10)]


def alerts_document(db: Database) -> list[dict[str, Any]]:
    """When each alert cause was last sent to ``telegram.alert_chat``, newest first."""
    if not has_table(db, "alerts"):
        return []
    rows = db.execute("SELECT cause, sent_at FROM alerts ORDER BY sent_at DESC, cause LIMIT 20")
    return [{"cause": cause, "at": datetime.fromtimestamp(float(at), UTC).isoformat(
        timespec="seconds")} for cause, at in rows]


def preview_note(config: Config, label: str) -> str:
    """What ``publisher preview`` adds under a destination's message about its timing."""
    settings = config.settings_for(label)
    notes = []
    if settings.digest:
        notes.append(f"\n  goes in the destination's digest ({settings.digest}), not as this "
                     "post")
    if settings.quiet_hours:
        what = "held until they end" if settings.quiet_mode == "hold" else "sent silently"
        notes.append(f"\n  in quiet hours ({settings.quiet_hours}, {config.telegram.timezone}):"
                     f" {what}")
    return "".join(notes)
