"""One registry of named migrations: states of every older schema upgrade in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import article_record, front_matter

from publisher.catalog import Catalog
from publisher.migrations import MIGRATIONS, SCHEMA_VERSION
from publisher.state import PlannedMarks, SQLStore, open_store


def test_the_registry_is_named_and_in_order() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    assert versions == sorted(versions)
    assert versions[-1] == SCHEMA_VERSION
    assert all(migration.name for migration in MIGRATIONS)


def _as_schema_7(store: SQLStore) -> None:
    """Turn a current state back into schema 7's layout: the planned marks in a column of
    the catalog (with its partial index), no ``planned`` table, no revisions."""
    db = store.db
    distinct = "IS DISTINCT FROM" if db.dialect == "postgresql" else "IS NOT"
    with db.transaction():
        db.execute("ALTER TABLE catalog ADD COLUMN planned TEXT")
        db.execute("UPDATE catalog SET planned = (SELECT digest FROM planned p "
                   "WHERE p.path = catalog.path)")
        db.execute("CREATE INDEX catalog_unplanned ON catalog (published_us, article_id) "
                   f"WHERE selected = 1 AND planned {distinct} digest")
        db.execute("DROP TABLE planned")
        db.execute("DROP INDEX catalog_revision")
        db.execute("ALTER TABLE catalog DROP COLUMN revision")
        db.execute("DELETE FROM meta WHERE key IN ('catalog_revision', 'planned_through')")
        db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_a_schema_7_state_keeps_its_planned_marks(
    state_url: str, articles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("publisher.scan.RACY_NS", 0)  # files written just now: read once
    for index in (1, 2, 3):
        (articles_dir / f"{index}.txt").write_text(front_matter(article_record(index)))
    store = open_store(state_url)
    catalog = Catalog(store.db)
    catalog.sync(articles_dir, 1 << 20, 0)
    marks = PlannedMarks(store.db)
    marks.mark_planned([a for a in marks.unplanned_articles() if a.title != "Article number 3"])
    _as_schema_7(store)
    store.close()

    store = open_store(state_url)
    try:
        assert store.version == SCHEMA_VERSION
        version = store.db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
        catalog = Catalog(store.db)
        assert "planned" not in _catalog_columns(store)
        marks = PlannedMarks(store.db)
        assert [a.title for a in marks.unplanned_articles()] == ["Article number 3"]
        assert catalog.sync(articles_dir, 1 << 20, 0).parsed == 0  # the rows carried over
        (articles_dir / "1.txt").write_text(
            front_matter(article_record(1, title="Article number 1, corrected")))
        catalog.sync(articles_dir, 1 << 20, 0)
        assert [a.title for a in marks.unplanned_articles()] == [
            "Article number 1, corrected", "Article number 3"]
    finally:
        store.close()
    again = open_store(state_url)  # current now: opened without a migration
    again.close()


def _catalog_columns(store: SQLStore) -> set[str]:
    cursor = store.db.execute("SELECT * FROM catalog LIMIT 0")
    return {column[0] for column in cursor.description}
