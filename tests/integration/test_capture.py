"""Trigger capture: a change is recorded exactly when its data commits (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from sluicegate import capture, operations
from sluicegate.ledger import Ledger
from sluicegate.sources import open_source
from support import Db, hours, load, write_project

UTC = dt.UTC
DAY = dt.datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def _setup(tmp_path: Path, url: str) -> tuple[Path, Db]:
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    return root, db


def _insert_sql(db: Db) -> str:
    q = "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) VALUES (%s, %s, %s, %s, %s)"
    return q.replace("%s", "?") if db.sqlite else q


def _rows(db: Db, start: dt.datetime, count: int) -> list[tuple[Any, ...]]:
    now = db.ts(dt.datetime.now(UTC))
    return [(1, 10, db.ts(t), 1.5, now) for t in hours(start, count)]


def _absorbed(root: Path) -> dict[str, int]:
    """Fold the inbox into the ledger; return each partition's version (its key text: version)."""
    project = load(root)
    task = project.tasks["openaq"]
    source = open_source(project.settings.source_url)
    try:
        with Ledger(project.settings.source_url, schema=project.settings.ledger_schema) as ledger:
            capture.absorb(task, ledger, ledger, source)  # type: ignore[arg-type]
            rows = ledger.conn.execute(
                f"SELECT pkey, version FROM {ledger.table_prefix}partitions WHERE task = 'openaq'"
            ).fetchall()
    finally:
        source.close()
    return {str(pkey): int(version) for pkey, version in rows}


def test_a_rolled_back_insert_records_nothing_and_a_committed_one_its_partition_once(
    backend: str, tmp_path: Path
) -> None:
    root, db = _setup(tmp_path, backend)
    q = _insert_sql(db)
    # Rows of one day, one statement per row, in a transaction that rolls back.
    db.conn.execute("BEGIN")
    db.conn.cursor().executemany(q, _rows(db, DAY + dt.timedelta(hours=1), 20))
    db.conn.execute("ROLLBACK")
    assert db.scalar("SELECT count(*) FROM measurements") == 0
    assert _absorbed(root) == {}
    # The same rows committed: their day is recorded once, whatever the statements per row.
    db.conn.execute("BEGIN")
    db.conn.cursor().executemany(q, _rows(db, DAY + dt.timedelta(hours=1), 20))
    db.conn.execute("COMMIT")
    assert _absorbed(root) == {'[1,"2024-05-01"]': 1}
    # Rows of another day in a savepoint that rolls back, beside a committed row of a third day.
    db.conn.execute("BEGIN")
    db.conn.cursor().executemany(q, _rows(db, DAY + dt.timedelta(days=2, hours=1), 1))
    db.conn.execute("SAVEPOINT s")
    db.conn.cursor().executemany(q, _rows(db, DAY + dt.timedelta(days=1, hours=1), 5))
    db.conn.execute("ROLLBACK TO SAVEPOINT s")
    db.conn.execute("COMMIT")
    assert _absorbed(root) == {'[1,"2024-05-01"]': 1, '[1,"2024-05-03"]': 1}
    db.close()
