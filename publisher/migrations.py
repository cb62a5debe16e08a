"""The state database's schema versions: one registry of named migrations, for the ledger
(``state``) and the catalog (``catalog``, ``scan``) alike.

A state at version N is brought to the newest one by running, in order and in one
transaction (under the "schema" lock, so instances starting together migrate once), the
``upgrade`` of every migration whose version is above N; then every table and index of the
current schema is created where missing (``CREATE ... IF NOT EXISTS``), and the version is
stored. A new state (version 0) only gets the current schema. An upgrade function is given
the database and the version the state had; it alters what exists and leaves the creation of
new tables to the schemas. Adding a migration is one entry at the end of ``MIGRATIONS``
(its function beside the tables it changes); one version may take several.

(``state`` imports this module when it migrates, not before: this one imports it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from publisher.bot import bot_schema
from publisher.catalog import add_checked_columns as add_catalog_checked_columns
from publisher.catalog import (
    add_feed_files,
    add_revisions,
    catalog_schema,
    drop_catalog_before_file_keys,
    drop_scan_snapshot,
)
from publisher.db import Database
from publisher.digest_ledger import timing_schema
from publisher.edits import add_edit_columns
from publisher.fanout import fanout_schema
from publisher.followers import followers_schema
from publisher.modified import changes_schema
from publisher.reconcile import add_probes, reconcile_schema
from publisher.state import (
    add_claim_columns,
    allow_every_state,
    ledger_schema,
    move_planned_marks,
)


@dataclass(frozen=True)
class Migration:
    version: int  # the version a state has once this ran
    name: str  # what it changes, for a reader of this list and of the logs
    upgrade: Callable[[Database, int], None]  # (database, version it had), in the transaction


MIGRATIONS: tuple[Migration, ...] = (
    Migration(3, "catalog: rows keyed by file keys, with plans (older layouts rebuilt)",
              drop_catalog_before_file_keys),
    Migration(4, "ledger: claims with leases; the stored scan out of meta", add_claim_columns),
    Migration(5, "catalog: the stored scan in chunks, its own table", drop_scan_snapshot),
    Migration(6, "ledger: chats keyed by numeric id, the orphaned state", allow_every_state),
    Migration(7, "catalog: warnings and re-check times", add_catalog_checked_columns),
    Migration(8, "catalog: a revision per row, for readers of what changed", add_revisions),
    Migration(8, "ledger: planned marks in a table of their own", move_planned_marks),
    Migration(9, "feeds: what the writer left on disk in feed_files",
              lambda db, _version: add_feed_files(db)),
    Migration(10, "ledger: what each sent post was (kind, rendering), the gone state",
              add_edit_columns),
    Migration(11, "ledger: the retracted state", add_edit_columns),
    Migration(12, "ledger: probes of sends that may need a look (uncertain_probes)",
              add_probes),
    Migration(13, "followers: who follows which topics in private chats",
              lambda _db, _version: None),  # new tables only: the schema creates them
    Migration(14, "followers: groups answered once, the webhook's inbox of updates",
              lambda _db, _version: None),  # new tables only: the schema creates them
    Migration(15, "followers: each article's fan-out, the DM rows' index",
              lambda _db, _version: None),  # new tables only: the schema creates them
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def current_schema(dialect: str) -> list[str]:
    """Every table and index of the current version, each created only where missing."""
    return (ledger_schema(dialect) + catalog_schema(dialect) + timing_schema(dialect)
            + changes_schema(dialect) + reconcile_schema(dialect) + followers_schema(dialect)
            + bot_schema(dialect) + fanout_schema(dialect))


def upgrade(db: Database, version: int) -> list[str]:
    """Run the migrations newer than ``version`` (within the caller's transaction) and create
    what the current schema adds; the names of the migrations run."""
    ran = []
    if version > 0:
        for migration in MIGRATIONS:
            if migration.version > version:
                migration.upgrade(db, version)
                ran.append(migration.name)
    for statement in current_schema(db.dialect):
        db.execute(statement)
    return ran
