"""``publisher status``: what the ledger says, for an operator at a terminal."""

from __future__ import annotations

from pathlib import Path

from publisher.config import Config
from publisher.db import folder_problem, sqlite_path
from publisher.errors import StateError
from publisher.state import FAILED, STATES, UNCERTAIN, SQLStore, open_store, state_exists


def render_status(config: Config, config_path: Path | None) -> str:
    if not state_exists(config.state.url):
        database = sqlite_path(config.state.url)
        problem = folder_problem(database)
        if problem:  # nothing pushed yet, and no push could record anything there either
            raise StateError(f"no state database {database} yet{problem}")
        return f"No state yet ({database}): nothing has been pushed."
    store = open_store(config.state.url, readonly=True)
    try:
        if store.empty:
            return f"No state yet ({store.description}): nothing has been pushed."
        return "\n".join(_sections(store, config_path))
    finally:
        store.close()


def _sections(store: SQLStore, config_path: Path | None) -> list[str]:
    lines = [f"State: {store.description}", ""]
    runs = store.last_runs()
    for kind in ("build", "push"):
        run = runs.get(kind)
        if run is None:
            lines.append(f"Last {kind}: never")
            continue
        outcome = "ok" if run.ok else "FAILED"
        details = ", ".join(
            f"{key} {value}" for key, value in run.summary.items() if key != "errors" and value
        )
        lines.append(f"Last {kind}: {run.finished_at} {outcome} ({details})")
        for chat, error in (run.summary.get("errors") or {}).items():
            lines.append(f"  error in {chat}: {error}")
    lines += ["", "Posts per chat:"]
    counts = store.counts()
    if not counts:
        lines.append("  none yet")
    for chat, by_state in counts.items():
        cells = ", ".join(f"{state} {by_state[state]}" for state in STATES if state in by_state)
        lines.append(f"  {chat}: {cells}")
    failed = store.deliveries([FAILED], limit=10)
    if failed:
        lines += ["", "Recent failures:"]
        lines += [f"  {d.updated_at} {d.chat_id} {d.title!r}: {d.reason}" for d in failed]
    uncertain = store.deliveries([UNCERTAIN], limit=50)
    if uncertain:
        config_flag = f" -c {config_path}" if config_path else ""
        lines += ["", "Uncertain (may or may not have been posted; check the channel):"]
        for d in uncertain:
            lines.append(f"  {d.chat_id} {d.article_id} {d.title!r} ({d.reason})")
        lines.append(
            f"  To post them again: publisher resend{config_flag} --all  "
            f"(or name article ids)"
        )
    return lines
