"""``publisher status``: what the ledger says, for an operator at a terminal or a script.

One document (``collect_status``), rendered as text or as JSON (``--json``): the last build
and push, every destination with its counts, the recent posts with their links, what waits
and why, the orphaned, uncertain and failed posts, and the commands that settle them.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from publisher import timing_status as timing
from publisher.config import Config
from publisher.db import folder_problem, sqlite_path
from publisher.destinations import (
    Destinations,
    is_chat_id,
    remembered_destinations,
    unmatched_names,
    waiting_for_unmatched,
)
from publisher.errors import StateError
from publisher.forum import thread_of, with_thread
from publisher.state import (
    FAILED,
    ORPHANED,
    SENT,
    STATES,
    UNCERTAIN,
    Delivery,
    SQLStore,
    open_store,
    state_exists,
)
from publisher.text import plural, sent_text

RECENT_POSTS = 10
LISTED = 20  # uncertain, orphaned, failed and backing-off posts listed (all are counted)


def render_status(config: Config, config_path: Path | None, *, as_json: bool = False) -> str:
    document = status_document(config, config_path)
    if as_json:
        return json.dumps(document, indent=2, ensure_ascii=False)
    return render_text(document)


def status_document(config: Config, config_path: Path | None) -> dict[str, Any]:
    if not state_exists(config.state.url):
        database = sqlite_path(config.state.url)
        problem = folder_problem(database)
        if problem:  # nothing pushed yet, and no push could record anything there either
            raise StateError(f"no state database {database} yet{problem}")
        return {"state": str(database), "empty": True}
    store = open_store(config.state.url, readonly=True)
    try:
        if store.empty:
            return {"state": store.description, "empty": True}
        return collect_status(store, config, config_path, time.time())
    finally:
        store.close()


def collect_status(store: SQLStore, config: Config, config_path: Path | None,
                   now: float) -> dict[str, Any]:
    """Everything ``publisher status`` shows, as JSON-ready values."""
    destinations = remembered_destinations(config, store)
    runs = store.last_runs()
    last_push = runs.get("push")
    uncertain = store.recent(UNCERTAIN, LISTED)
    counts = store.counts()
    config_flag = f" -c {config_path}" if config_path else ""
    return {
        "state": store.description,
        "empty": False,
        "runs": {
            kind: None if run is None else {
                "started_at": run.started_at, "finished_at": run.finished_at, "ok": run.ok,
                "summary": run.summary,
            }
            for kind, run in ((kind, runs.get(kind)) for kind in ("build", "push"))
        },
        "destinations": [
            {**item, **timing.describe_timing(config.settings_for(item["destination"]))}
            for item in _destinations(destinations, counts)],
        "digests": timing.digests_document(store.db, destinations.label),
        "alerts": timing.alerts_document(store.db),
        "recent": [_post(d, destinations) for d in store.recent(SENT, RECENT_POSTS)],
        "waiting": _waiting(store, destinations, last_push.summary if last_push else {}, now,
                            config),
        "unmatched": unmatched_names(store),
        "orphaned": [_post(d, destinations) for d in store.recent(ORPHANED, LISTED)],
        "uncertain": [_post(d, destinations) for d in uncertain],
        "failed": [_post(d, destinations) for d in store.recent(FAILED, LISTED)],
        "commands": {
            "ack": f"publisher ack{config_flag} --all",
            "resend": f"publisher resend{config_flag} --all",
        } if uncertain else {},
        **_followers(store, config),
    }


def _followers(store: SQLStore, config: Config) -> dict[str, Any]:
    """Followers per topic and the DM queue by state, when followers are enabled (counts
    only: who follows is not the operator's screen's business)."""
    from publisher.fanout import dm_counts
    from publisher.followers import counts_by_topic, follower_count

    if not config.followers.enabled:
        return {}
    return {"followers": {"total": follower_count(store.db),
                          "by_topic": counts_by_topic(store.db), "dms": dm_counts(store.db)}}


def _destinations(destinations: Destinations, counts: dict[str, dict[str, int]]
                  ) -> list[dict[str, Any]]:
    """Every destination, then every other chat of the ledger; rows kept under another
    spelling of a destination's name ("@OpNews" for "@opnews") are counted as its own."""
    configured = destinations.keys()
    merged = {key: dict(counts.get(key, {})) for key in configured}
    others = []
    for key in sorted(set(counts) - set(configured)):
        owner = destinations.owner(key)
        if owner is None:
            others.append(key)
            continue
        for state, number in counts[key].items():
            merged[owner.key][state] = merged[owner.key].get(state, 0) + number
    listed = []
    for key in configured + others:
        chat = destinations.chat(key)
        by_state = merged.get(key) or counts.get(key, {})
        listed.append({
            "destination": destinations.label(key),
            "chat_id": key if is_chat_id(key) else None,
            "configured": key in merged,
            "type": chat.type if chat else "",
            "title": chat.title if chat else "",
            "username": chat.username if chat else "",
            "topic": thread_of(key),  # a forum topic's thread id, else None
            # A topic's link is its chat's with the thread id after it.
            "link": with_thread(f"https://t.me/{chat.username}", thread_of(key))
            if chat and chat.username else "",
            "counts": {state: by_state[state] for state in STATES if by_state.get(state)},
        })
    return listed


def _post(delivery: Delivery, destinations: Destinations) -> dict[str, Any]:
    chat = destinations.chat(delivery.chat_id)
    link = ""
    if chat is not None and chat.username and delivery.message_id:
        link = f"https://t.me/{chat.username}/{delivery.message_id}"
    return {
        "destination": destinations.label(delivery.chat_id),
        "chat_id": delivery.chat_id,
        "article_id": delivery.article_id,
        "title": delivery.title,
        "at": delivery.sent_at or delivery.updated_at,
        "message_id": delivery.message_id,
        "link": link,
        "reason": delivery.reason,
    }


def _waiting(store: SQLStore, destinations: Destinations, last_push: dict[str, Any],
             now: float, config: Config) -> list[dict[str, Any]]:
    """Per chat with pending posts: how many are due now and why they still wait, and the
    ones backing off after an error, until when. The reasons follow the push's rules."""
    errors = last_push.get("errors") or {}
    held = last_push.get("held") or {}
    unmatched = unmatched_names(store)
    backing_off: dict[str, list[Delivery]] = {}
    for delivery in store.backing_off(now, LISTED):
        backing_off.setdefault(delivery.chat_id, []).append(delivery)
    # Another spelling of a destination's name ("@OpNews" for "@opnews") waits as it does.
    pending: dict[str, tuple[int, int]] = {}
    for key, (due, later) in store.pending_by_chat(now).items():
        owner = destinations.owner(key)
        if owner is not None and owner.key != key:
            for delivery in backing_off.pop(key, []):
                backing_off.setdefault(owner.key, []).append(delivery)
            key = owner.key
        before = pending.get(key, (0, 0))
        pending[key] = (before[0] + due, before[1] + later)
    waiting = []
    for key, (due, later) in pending.items():
        label = destinations.label(key)
        owner = destinations.owner(key)
        if owner is None:
            why = _why_unconfigured(key, label, destinations)
        elif not owner.resolved:
            why = errors.get(label) or f"{label} is not resolved yet (the next push asks)"
        elif unmatched:
            why = errors.get(label) or (
                f"the next push sends them once Telegram confirms which chat it is, since "
                f"{waiting_for_unmatched(label, unmatched)} (what went out under either is "
                "not sent again)")
        else:
            why = (errors.get(label) or timing.waiting_reason(store.db, config, key, label, now)
                   or held.get(label) or "the next push sends them")
        waiting.append({
            "destination": label,
            "chat_id": key if is_chat_id(key) else None,
            "due_now": due,
            "backing_off": later,
            "why": why,
            "retries": [
                {**_post(d, destinations), "not_before": _iso(d.next_attempt_at)}
                for d in backing_off.get(key, [])
            ],
        })
    return waiting


def _why_unconfigured(key: str, label: str, destinations: Destinations) -> str:
    """Why pending posts of a chat that is no destination (as far as the state knows)
    wait: what the next push does with them."""
    unresolved = destinations.unresolved()
    if not is_chat_id(key):
        return (f"{label} is not matched to a chat yet (kept by an earlier version): the next "
                "push asks Telegram; if it is a destination's chat they go out there (once: "
                "what went out under either is not sent again), else they are orphaned")
    if unresolved:
        return (f"not configured under this id, but {', '.join(unresolved)} (not resolved "
                "yet) may be this chat: the next push asks Telegram, and orphans them if not")
    return "its destination is no longer configured: orphaned at the next push"


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


# -- text ------------------------------------------------------------------------------------


def render_text(document: dict[str, Any]) -> str:
    if document.get("empty"):
        return f"No state yet ({document['state']}): nothing has been pushed."
    lines = [f"State: {document['state']}", ""]
    lines += _runs_text(document["runs"])
    lines += ["", "Destinations:"]
    lines += [_destination_text(d) for d in document["destinations"]] or ["  none yet"]
    if document["recent"]:
        lines += ["", "Recent posts:"]
        lines += [_recent_text(post) for post in document["recent"]]
    if document["waiting"]:
        lines += ["", "Waiting:"]
        for wait in document["waiting"]:
            lines += _waiting_text(wait)
    if document.get("digests"):
        lines += ["", "Recent digests:"]
        lines += [f"  {d['window']}  {d['destination']}  {plural(d['articles'], 'article')}  "
                  f"{d['state']}" + (f": {d['reason']}" if d["reason"] else "")
                  for d in document["digests"]]
    if document.get("alerts"):
        lines += ["", "Recent alerts (telegram.alert_chat, at most one per cause an hour):"]
        lines += [f"  {a['at']}  {a['cause']}" for a in document["alerts"]]
    if document["orphaned"]:
        lines += ["", "Orphaned (never sent unless their destination is configured for them "
                      "again):"]
        lines += [f"  {p['destination']} {p['article_id']} {p['title']!r}"
                  for p in document["orphaned"]]
    if document["uncertain"]:
        lines += ["", "Uncertain (may or may not have been posted; look in the channel):"]
        lines += [f"  {p['destination']} {p['article_id']} {p['title']!r} ({p['reason']})"
                  for p in document["uncertain"]]
        commands = document["commands"]
        lines.append(f"  It is there:     {commands['ack']}  (or name article ids)")
        lines.append(f"  It is not there: {commands['resend']}  (or name article ids)")
    if document["failed"]:
        lines += ["", "Recent failures:"]
        lines += [f"  {p['at']} {p['destination']} {p['title']!r}: {p['reason']}"
                  for p in document["failed"]]
    if document.get("followers"):
        lines += ["", *_followers_text(document["followers"])]
    return "\n".join(lines)


def _followers_text(followers: dict[str, Any]) -> list[str]:
    lines = [f"Followers: {followers['total']:,}"]
    lines += [f"  {slug}: {count:,}" for slug, count in followers["by_topic"].items()]
    queue = followers["dms"]
    counts = ", ".join(f"{queue.get(state, 0):,} {state}"
                       for state in ("pending", "sent", "failed", "uncertain"))
    lines.append(f"DM queue: {counts}")
    return lines


def _runs_text(runs: dict[str, Any]) -> list[str]:
    lines = []
    for kind in ("build", "push"):
        run = runs.get(kind)
        if run is None:
            lines.append(f"Last {kind}: never")
            continue
        outcome = "ok" if run["ok"] else "FAILED"
        details = ", ".join(
            f"sent {sent_text(run['summary'])}" if key == "sent" and run["summary"].get("digests")
            else f"{key} {value}" for key, value in run["summary"].items()
            if value and not isinstance(value, dict) and key not in ("digests", "in_digests")
        )
        lines.append(f"Last {kind}: {run['finished_at']} {outcome} ({details})")
        for chat, error in (run["summary"].get("errors") or {}).items():
            lines.append(f"  error in {chat}: {error}")
    return lines


def _destination_text(destination: dict[str, Any]) -> str:
    described = []
    if destination["type"]:
        title = f' "{destination["title"]}"' if destination["title"] else ""
        described.append(f"{destination['type']}{title}")
    if destination["chat_id"] and destination["chat_id"] != destination["destination"]:
        described.append(destination["chat_id"])
    if destination["link"]:
        described.append(destination["link"])
    if not destination["configured"] and not destination["chat_id"]:
        described.append("not matched to a chat yet")
    elif not destination["configured"]:
        described.append("no longer configured")
    elif not destination["chat_id"]:
        described.append("not resolved yet")
    if timing.timing_text(destination):
        described.append(timing.timing_text(destination))
    about = f" ({', '.join(described)})" if described else ""
    counts = ", ".join(f"{number} {state}" for state, number in destination["counts"].items())
    return f"  {destination['destination']}{about}: {counts or 'no posts yet'}"


def _recent_text(post: dict[str, Any]) -> str:
    message = f"message {post['message_id']}" if post["message_id"] else "message id unknown"
    link = f"  {post['link']}" if post["link"] else ""
    return f"  {post['at']}  {post['destination']}  {post['title']!r}  {message}{link}"


def _waiting_text(wait: dict[str, Any]) -> list[str]:
    lines = []
    if wait["due_now"]:
        lines.append(f"  {wait['destination']}: {plural(wait['due_now'], 'post')} due now: "
                     f"{wait['why']}")
    if wait["backing_off"]:
        lines.append(f"  {wait['destination']}: {plural(wait['backing_off'], 'post')} "
                     "backing off after an error:")
        lines += [f"    {r['title']!r} not before {r['not_before']}: {r['reason']}"
                  for r in wait["retries"]]
    return lines
