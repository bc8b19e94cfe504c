"""Trigger capture: a change is recorded exactly when its data commits (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate import capture, capture_triggers, db, operations
from sluicegate.ledger import Ledger
from sluicegate.partitions import zone_of
from sluicegate.sources import open_source
from support import SLUICEGATE, Db, cli, files, hours, load, read_csv, write_project

UTC = dt.UTC
DAY = dt.datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    url: str = request.getfixturevalue("mariadb_url" if request.param == "mariadb" else "pg_url")
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


# Irregular readings of three zones over four UTC days, with gaps: each location's UTC day is one
# run of bins on PostgreSQL; its local days (+05:45, and New York across the spring-forward night
# of 2024-03-10) must come out exactly, each once, none made up for the gaps.
SPREAD = {
    1: ("UTC", ["2024-03-08T00:00", "2024-03-08T23:45", "2024-03-10T12:00"]),
    2: ("Asia/Kathmandu", ["2024-03-08T18:14", "2024-03-08T18:15", "2024-03-09T03:00", "2024-03-11T18:15"]),
    3: ("America/New_York", ["2024-03-09T04:59", "2024-03-09T05:00", "2024-03-10T04:30", "2024-03-10T06:59",
                             "2024-03-10T07:00", "2024-03-11T03:59", "2024-03-11T04:00"]),
}  # fmt: skip


@pytest.mark.parametrize("boundary", ["start", "end"])
def test_one_statement_over_days_and_zones_marks_exactly_the_local_days_of_its_rows(
    backend: str, tmp_path: Path, boundary: str
) -> None:
    from zoneinfo import ZoneInfo

    root = write_project(
        tmp_path / "proj", source=backend, destination=str(tmp_path / "out"), boundary=boundary
    )
    db = Db(backend)
    operations.install(load(root))
    rows, want, runs = [], set(), set()
    for location, (zone, times) in SPREAD.items():
        db.location(location, zone)
        for text in times:
            at = dt.datetime.fromisoformat(text).replace(tzinfo=UTC)
            rows.append((location, location * 10, db.ts(at), 1.0, db.ts(at)))
            owner = at - dt.timedelta(microseconds=1) if boundary == "end" else at
            want.add(f'[{location},"{owner.astimezone(ZoneInfo(zone)).date().isoformat()}"]')
            runs.add((location, owner.date()))
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    insert = (
        f"INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) VALUES {values}"
    )
    db.conn.execute(insert.replace("%s", "?") if db.sqlite else insert, [v for row in rows for v in row])
    if db.sqlite:
        db.conn.commit()
    else:  # one statement: one run per location and UTC day, not a row per bin
        assert db.scalar("SELECT count(*) FROM sluicegate.change_runs") == len(runs) < len(rows)
        # a change as the triggers of version 10 recorded it, still folded after the upgrade
        db.conn.execute(
            "INSERT INTO sluicegate.changes (task, keys, bin) VALUES ('openaq', '[1]', '2024-03-12T06:00Z')"
        )
        want.add('[1,"2024-03-12"]')
    assert _absorbed(root) == dict.fromkeys(want, 1)
    db.close()


@pytest.mark.pg
def test_a_source_inbox_of_version_10_is_upgraded_by_the_first_run_with_the_ledger_elsewhere(
    tmp_path: Path, pg_url: str, pg_server: Any
) -> None:
    """With the ledger in another database, the inbox tables in the source are upgraded too."""
    import psycopg

    ledger_url = pg_url + "_ledger"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{ledger_url.rsplit("/", 1)[1]}"')
    try:
        root = write_project(
            tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), ledger=ledger_url
        )
        db = Db(pg_url)
        operations.install(load(root))
        db.location(1, "UTC")
        db.insert(1, hours(DAY + dt.timedelta(hours=1), 3))
        # The source's inbox as release 10 left it: no change_runs, its change as one bin in changes.
        db.conn.execute("DROP TABLE sluicegate.change_runs")
        db.conn.execute("UPDATE sluicegate.meta SET value = '10' WHERE key = 'schema_version'")
        db.conn.execute(
            "INSERT INTO sluicegate.changes (task, keys, bin) VALUES ('openaq', '[1]', %s)", (DAY,)
        )
        proc = cli(root, "run")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [exported] = [p for p in files(tmp_path / "out") if p.name.startswith("location-1-")]
        assert exported.name.endswith("20240501.csv") and len(read_csv(exported)) == 3
        assert db.scalar("SELECT value FROM sluicegate.meta WHERE key = 'schema_version'") == "12"
        assert db.scalar("SELECT count(*) FROM sluicegate.change_runs") == 0
        assert db.scalar("SELECT count(*) FROM sluicegate.changes") == 0
        db.close()
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{ledger_url.rsplit("/", 1)[1]}" WITH (FORCE)')


# Times no partition can have: PostgreSQL's infinities, and instants whose local day in the
# location's zone lies beyond year 9999 (+14:00) or before year 1 (-10:00).
OUT_OF_RANGE = {
    "infinity": ("UTC", "infinity"),
    "-infinity": ("UTC", "-infinity"),
    "year 10000 locally": ("Pacific/Kiritimati", "9999-12-31T23:30:00+00:00"),
    "year 0 locally": ("Pacific/Honolulu", "0001-01-01T00:10:00+00:00"),
}


_BACKEND_MARKS = {"sqlite": (), "pg": (pytest.mark.pg,), "mariadb": (pytest.mark.mariadb,)}


@pytest.mark.parametrize("how", ["trigger", "scan", "backfill"])
@pytest.mark.parametrize(
    ("backend", "bad"),
    [
        pytest.param(backend, bad, marks=marks, id=f"{backend}-{bad}")
        for backend, marks in _BACKEND_MARKS.items()
        for bad in OUT_OF_RANGE
        if backend == "pg" or "infinity" not in OUT_OF_RANGE[bad][1]  # only PostgreSQL has infinite times
    ],
    indirect=["backend"],
)
def test_a_row_at_a_time_no_partition_can_have_does_not_stop_the_others(
    backend: str, tmp_path: Path, bad: str, how: str
) -> None:
    """One row at 'infinity' (or whose local day is in year 10000) made every fold fail, every
    run, before anything was claimed: nothing of any location was exported again (an
    OverflowError with a traceback, or "timestamp too large"). Now its change is set aside with
    a warning naming the location, and the others are exported."""
    zone, text = OUT_OF_RANGE[bad]
    sqlite = backend.startswith("sqlite")
    root = write_project(
        tmp_path / "proj",
        source=backend,
        destination=str(tmp_path / "out"),
        capture="explicit" if how == "backfill" else how,
    )
    db = Db(backend)
    if how == "trigger":
        operations.install(load(root))
    db.location(1, "UTC")
    db.location(2, zone)
    db.insert(1, [DAY + dt.timedelta(hours=10)])
    at: Any = text.replace("+00:00", "Z") if sqlite else text  # strftime writes year 1 as "1"
    if db.mariadb:
        at = db.ts(dt.datetime.fromisoformat(text))
    db.conn.execute(_insert_sql(db), (2, 20, at, 1.0, db.ts(dt.datetime.now(UTC))))
    db.insert(1, [DAY + dt.timedelta(days=1, hours=10)])
    if how == "backfill":
        backfilled = cli(root, "backfill", "openaq")
        assert backfilled.returncode == 0, backfilled.stderr
        assert "1 row(s) at a time before 0001-01-03 or after 9999-12-29 UTC" in backfilled.stderr
    for attempt in (1, 2):  # the change is gone after the first run: the second is clean
        ran = cli(root, "run", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "Traceback" not in ran.stderr
        if attempt == 1 and how != "backfill":
            assert "a change to location_id=2 at a time" in ran.stderr, ran.stderr
            assert "has no partition and is not exported; fix the rows in the source" in ran.stderr
        elif how == "trigger":
            assert "location_id=2" not in ran.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in files(out)) == ["location-1-20240501.csv", "location-1-20240502.csv"]
    db.close()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)
def test_two_installs_at_once_both_succeed(backend: str, tmp_path: Path) -> None:
    """Two `sluicegate install` at the same moment (two deploy hosts): on PostgreSQL one of them
    failed, about half the time, with "tuple concurrently updated". Six rounds of two."""
    import os
    import subprocess

    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    db.location(1, "UTC")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    argv = [SLUICEGATE, "-C", str(root), "install"]
    for _ in range(6):
        procs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, out + err
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    assert _absorbed(root) == {'[1,"2024-05-01"]': 1}
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
@pytest.mark.parametrize("change", ["boundary", "time"])
def test_triggers_made_for_another_boundary_or_time_count_as_not_installed(
    backend: str, tmp_path: Path, change: str
) -> None:
    """Triggers installed before `[time] boundary = "end"` (or another `[capture] time`) kept
    binning rows the old way: a midnight reading marked the next day, so the day that holds it
    kept its old file, while `check` said all was well. They count as not installed now."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    db.location(1, "UTC")
    early = cli(root, "run")  # before install: it took nothing and said nothing, exit 0
    assert early.returncode == 0 and "are not installed on measurements" in early.stderr, early.stderr
    assert cli(root, "install").returncode == 0
    assert "not installed" not in cli(root, "check").stderr + cli(root, "run").stderr
    toml = root / "tasks" / "openaq" / "task.toml"
    before = toml.read_text()
    old, new = ('boundary = "start"', 'boundary = "end"')
    if change == "time":
        old, new = ('time = "datetime"', 'time = "ingested_at"')
    assert old in before
    toml.write_text(before.replace(old, new))
    checked = cli(root, "check")
    assert "capture triggers are not installed on measurements" in checked.stderr, checked.stderr
    assert "as the task is now set up" in cli(root, "run").stderr
    assert cli(root, "install").returncode == 0
    assert "not installed" not in cli(root, "check").stderr
    if change == "boundary":  # a reading at midnight is the day before's, as the task now says
        db.insert(1, [DAY])
        assert _absorbed(root) == {'[1,"2024-04-30"]': 1}
    db.close()


@pytest.mark.pg
@pytest.mark.parametrize("zone", ["UTC", None])
def test_a_row_with_a_null_key_is_set_aside_and_stops_nothing(
    pg_url: str, tmp_path: Path, zone: str | None
) -> None:
    """A row whose capture key is NULL: with a fixed zone its change became partition
    [null, day], which the batch query (``q.k = p.k0``) never reads, and the ledger recorded it
    exported with no file and no word; with ``zone_sql`` the fold stopped the whole task, every
    run ("zone_sql returned no zone for location_id=None"). Now the change is set aside with a
    warning naming the key, and the other partitions are exported."""
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone=zone)
    db = Db(pg_url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.conn.execute("ALTER TABLE measurements ALTER COLUMN location_id DROP NOT NULL")
    db.conn.execute(_insert_sql(db), (None, 10, db.ts(DAY + dt.timedelta(hours=2)), 1.0, db.ts(DAY)))
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    for attempt in (1, 2):
        ran = cli(root, "run", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        [summary] = json.loads(ran.stdout)
        assert (summary["exported"], summary["failed"], summary["task_errors"]) == (2 - attempt, 0, [])
        warned = "a change to location_id=NULL with a NULL key has no partition and is not exported"
        assert (warned in ran.stderr) == (attempt == 1), ran.stderr
    assert "0 failed" in cli(root, "status").stdout
    assert [p.name for p in files(tmp_path / "out")] == ["location-1-20240501.csv"]
    db.close()


@pytest.mark.pg
def test_a_second_project_with_the_same_task_name_does_not_take_the_first_ones_triggers(
    pg_url: str, tmp_path: Path
) -> None:
    """Projects `a` and `b` (ledger schema sg_b) each with a task `openaq` on one table: installing
    `b` re-pointed `a`'s triggers at sg_b, and `a` saw no change again while `check` said ok."""
    a = write_project(tmp_path / "a", source=pg_url, destination=str(tmp_path / "out_a"))
    b = write_project(tmp_path / "b", source=pg_url, destination=str(tmp_path / "out_b"))
    toml = b / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[ledger]", '[ledger]\nschema = "sg_b"'))
    db = Db(pg_url)
    db.location(1, "UTC")
    assert cli(a, "install").returncode == 0
    refused = cli(b, "install")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "feed the ledger schema 'sluicegate' of another project" in refused.stderr
    assert "(or of this one, before its [ledger] schema was changed)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    assert _absorbed(a) == {'[1,"2024-05-01"]': 1}  # a still sees its changes
    ok, other = cli(a, "check"), cli(b, "check")
    assert "not installed" not in ok.stderr, ok.stderr
    assert "capture triggers are not installed on measurements" in other.stderr, other.stderr
    db.close()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)
def test_check_names_the_missing_triggers_of_a_task_whose_name_prefixes_another(
    backend: str, tmp_path: Path
) -> None:
    """`check` looked for `sluicegate_<task>_%`: the triggers of `openaq_2` (and `_` being a
    wildcard) hid that `openaq` had none."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    (root / "tasks" / "openaq_2").mkdir()
    for name in ("task.toml", "select.sql"):
        (root / "tasks" / "openaq_2" / name).write_text((root / "tasks" / "openaq" / name).read_text())
    db = Db(backend)
    db.location(1, "UTC")
    assert cli(root, "install", "openaq_2").returncode == 0
    check = cli(root, "check")
    assert "task openaq: capture triggers are not installed on measurements" in check.stderr, check.stderr
    assert "sluicegate_openaq_insert, sluicegate_openaq_update, sluicegate_openaq_delete" in check.stderr
    assert "task openaq_2: capture" not in check.stderr
    assert cli(root, "install", "openaq").returncode == 0
    assert "not installed" not in cli(root, "check").stderr
    db.close()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)
def test_the_longest_task_name_allowed_gets_three_working_triggers_and_a_longer_one_is_refused(
    backend: str, tmp_path: Path
) -> None:
    """A 61-character task name: PostgreSQL cut its three trigger names to one, so only the
    last (DELETE) stayed and inserts and updates were never seen."""
    longest = "t" * 45
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"), task=longest)
    db = Db(backend)
    db.location(1, "UTC")
    assert cli(root, "install").returncode == 0
    project = load(root)
    source = open_source(backend)
    try:
        found = capture_triggers.installed_triggers(
            project.tasks[longest],
            source,
            project.settings.ledger_schema,  # type: ignore[arg-type]
        )
    finally:
        source.close()
    assert found == sorted(f"sluicegate_{longest}_{op}" for op in ("insert", "update", "delete"))
    (root / "tasks" / longest).rename(root / "tasks" / (longest + "x"))
    refused = cli(root, "check")
    assert refused.returncode == 2
    assert f"the task name '{longest}x' has 46 characters" in refused.stderr, refused.stderr
    db.close()


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)],
    indirect=True,
)
def test_an_older_release_refuses_a_newer_ledger_and_never_lowers_its_version(
    backend: str, tmp_path: Path
) -> None:
    """A worker of an older release wrote its own schema version over a newer ledger's (`!=`),
    then ran on tables it did not know."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    if backend.startswith("sqlite"):  # the source database is there: status creates the ledger in it
        sqlite3.connect(db.sqlite_path(backend)).close()
    assert cli(root, "status").returncode == 0  # creates the ledger
    newer = "mariadb-5" if backend.startswith("mariadb") else "13"
    with Ledger(backend) as ledger:
        t, k = ledger.table_prefix, "`key`" if ledger.dialect is db.MARIADB else "key"
        bump = f"UPDATE {t}meta SET value = '{newer}' WHERE {k} = 'schema_version'"
        ledger.core.in_transaction(lambda cur: cur.execute(bump))
        refused = cli(root, "status")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert f"has schema version {newer}, newer than this sluicegate's" in refused.stderr
        # Two releases upgrading at once: the older one's statements run, and still keep the version.
        statements = [s for s in ledger.schema_store.q["ensure_schema"].split(";\n") if s.strip()]
        ledger.core.in_transaction(lambda cur: [cur.execute(s) for s in statements])
        assert ledger.schema_store.schema_version() == newer


def _values_by_file(out: Path) -> dict[str, list[str]]:
    return {p.name: sorted(r["value"] for r in read_csv(p)) for p in files(out)}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_location_whose_zone_changes_has_its_days_cut_in_the_new_zone(backend: str, tmp_path: Path) -> None:
    """`zone_sql` gives location 1 a new zone: a later change to a day already in the ledger kept
    the old zone's window, so a row outside it was in no file; and a new day's window overlapped
    an old one, so a row was in two files. Now a mark re-cuts the day in the key's current zone,
    and `reexport` re-cuts the days nothing changed."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "Asia/Kolkata")  # UTC+05:30
    db.location(2, "America/Chicago")  # UTC-05:00 in May
    db.insert(1, [DAY + dt.timedelta(hours=10)], value=1.0)  # Kolkata 2024-05-01
    db.insert(
        2, [DAY + dt.timedelta(hours=12), DAY + dt.timedelta(hours=20)], value=2.0
    )  # Chicago 2024-05-01
    assert cli(root, "run").returncode == 0
    db.conn.execute("UPDATE locations SET timezone = 'America/Chicago' WHERE location_id = 1")
    db.conn.execute("UPDATE locations SET timezone = 'Asia/Kolkata' WHERE location_id = 2")
    db.insert(1, [DAY + dt.timedelta(hours=20)], value=7.0)  # Chicago 2024-05-01, Kolkata 2024-05-02
    db.insert(2, [DAY + dt.timedelta(hours=26)], value=9.0)  # Kolkata 2024-05-02 from 2024-05-01 18:30Z
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    got = _values_by_file(tmp_path / "out")
    assert got["location-1-20240501.csv"] == ["1", "7"], got  # Chicago's day: 05:00Z to 05:00Z
    assert got["location-2-20240502.csv"] == ["2.125", "9"], got
    ran = cli(root, "reexport", "openaq", "location_id=2")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert cli(root, "run").returncode == 0
    got = _values_by_file(tmp_path / "out")
    assert got["location-2-20240501.csv"] == ["2"], got  # 20:00Z is in the 2024-05-02 file only
    db.close()


def _files_of_each_row(out: Path, location_id: int) -> dict[dt.datetime, list[str]]:
    seen: dict[dt.datetime, list[str]] = {}
    for path in files(out):
        for row in read_csv(path):
            if row["location_id"] == str(location_id):
                seen.setdefault(dt.datetime.fromisoformat(row["datetime"]), []).append(path.name)
    return seen


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_key_whose_zone_moved_under_exported_days_is_named_with_the_reexport_to_run(
    backend: str, tmp_path: Path
) -> None:
    """Location 1 moves from Europe/Brussels to America/Santiago after its days were exported, and
    a late reading re-cuts 2 June in Santiago: its file no longer holds 22:00 to 04:00 UTC, which
    the 1 June file (still cut in Brussels) never held, so six readings were in no file, and the
    run said nothing. Now the run names the key, both zones and the reexport that re-cuts it."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "Europe/Brussels")
    db.location(2, "Europe/Brussels")
    readings = hours(dt.datetime(2024, 6, 1, tzinfo=UTC), 72)
    db.insert(1, readings)
    db.insert(2, readings)
    ran = cli(root, "run")
    assert ran.returncode == 0 and "reexport" not in ran.stderr, ran.stdout + ran.stderr
    db.conn.execute("UPDATE locations SET timezone = 'America/Santiago' WHERE location_id = 1")
    db.insert(1, [dt.datetime(2024, 6, 2, 12, 30, tzinfo=UTC)], value=99.0)
    db.insert(2, [dt.datetime(2024, 6, 2, 12, 30, tzinfo=UTC)], value=99.0)
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    told = [line for line in ran.stderr.splitlines() if "reexport" in line]
    assert len(told) == 1, ran.stderr
    assert "location_id=1 now has the zone America/Santiago" in told[0] and "Europe/Brussels" in told[0]
    assert f"run 'sluicegate -C {root} reexport openaq location_id=1'" in told[0], told
    assert cli(root, "reexport", "openaq", "location_id=1").returncode == 0
    assert cli(root, "run").returncode == 0
    seen = _files_of_each_row(tmp_path / "out", 1)
    assert len(seen) == 73 and all(len(names) == 1 for names in seen.values()), seen
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_reexport_after_the_task_zone_changed_cuts_every_day_in_the_new_zone(
    backend: str, tmp_path: Path
) -> None:
    """The task's `zone` changed from UTC to Asia/Tokyo: `reexport` re-cut only `zone_sql` keys,
    so every file stayed cut in UTC days, and a later change re-cut its own day only, which left
    the hours between the two zones' midnights in two files or in none."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"), zone="UTC")
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=h) for h in (1, 20, 30)], value=1.0)  # UTC 05-01, 05-01, 05-02
    assert cli(root, "run").returncode == 0
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('zone = "UTC"', 'zone = "Asia/Tokyo"'))
    ran = cli(root, "reexport", "openaq")  # and Tokyo's 2024-05-03, which holds UTC's 2024-05-02 15:00Z on
    assert ran.returncode == 0 and "queued 3 partition(s)" in ran.stdout, ran.stdout + ran.stderr
    assert cli(root, "run").returncode == 0
    got = {p.name: sorted(r["datetime"] for r in read_csv(p)) for p in files(tmp_path / "out")}
    assert got == {  # Tokyo's 2024-05-02 runs from 2024-05-01T15:00Z to 2024-05-02T15:00Z
        "location-1-20240501.csv": ["2024-05-01T10:00:00+09:00"],
        "location-1-20240502.csv": ["2024-05-02T05:00:00+09:00", "2024-05-02T15:00:00+09:00"],
    }, got
    db.close()


def _one_day_exported(tmp_path: Path, backend: str) -> tuple[Path, Db]:
    """A project in UTC with its triggers installed, whose one reading (location 1, DAY) is exported."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"), zone="UTC")
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=1)], value=1.0)
    assert cli(root, "run").returncode == 0
    return root, db


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_renamed_time_key_keeps_exporting_the_days_recorded_under_its_old_name(
    backend: str, tmp_path: Path
) -> None:
    """`[time] name` changed from day to date: a day recorded before was read by its old name, so
    a later change to it failed every claim with "KeyError: 'date'" (never exported again), and
    `reexport` of a static-zone task raised a traceback. A key added since is refused by name."""
    root, db = _one_day_exported(tmp_path, backend)
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "day"\nname = "date"')
    toml.write_text(text.replace("{day:", "{date:"))
    db.insert(1, [DAY + dt.timedelta(hours=2)], value=2.0)
    ran = cli(root, "run")
    assert ran.returncode == 0 and "1 exported" in ran.stdout, ran.stdout + ran.stderr
    assert _values_by_file(tmp_path / "out") == {"location-1-20240501.csv": ["1", "2"]}
    again = cli(root, "reexport", "openaq", "date=2024-05-01")
    assert again.returncode == 0 and "queued 1 partition(s)" in again.stdout, again.stdout + again.stderr
    ran = cli(root, "run")
    assert ran.returncode == 0 and "1 exported" in ran.stdout, ran.stdout + ran.stderr
    added = toml.read_text().replace('keys = ["location_id"]', 'keys = ["location_id", "sensors_id"]')
    added = added.replace(
        '{ location_id = "location_id" }', '{ location_id = "location_id", sensors_id = "sensor_id" }'
    )
    toml.write_text(added.replace("location-{location_id}-", "location-{location_id}-{sensors_id}-"))
    skipped = cli(root, "reexport", "openaq")  # a day recorded with one key fewer cannot be exported
    assert skipped.returncode == 0 and "queued 0 partition(s)" in skipped.stdout, (
        skipped.stdout + skipped.stderr
    )
    db.close()


def test_check_names_the_triggers_a_scan_task_left_behind(tmp_path: Path) -> None:
    """`[capture] mode` changed from trigger to scan: the triggers stayed, recorded every write
    into an inbox that no run reads any more (it grew for good), and `check` said all was well."""
    backend = f"sqlite:///{tmp_path / 'source.db'}"
    root, db = _one_day_exported(tmp_path, backend)
    assert "capture triggers" not in cli(root, "check").stderr
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('mode = "trigger"', 'mode = "scan"\ncursor = "ingested_at"'))
    db.insert(1, [DAY + dt.timedelta(hours=2)], value=2.0)
    assert cli(root, "run").returncode == 0
    checked = cli(root, "check")
    assert (
        "task openaq: 1 change(s) recorded by capture triggers wait in the inbox, but its [capture] mode"
        in (checked.stderr)
    ), checked.stderr
    assert (
        "drop its triggers (sluicegate_openaq_insert, sluicegate_openaq_update, sluicegate_openaq_delete)"
        in (checked.stderr)
    )
    db.close()


def test_a_day_recorded_before_grain_became_hour_is_not_exported_as_its_first_hour(tmp_path: Path) -> None:
    """`[time] grain` changed from day to hour: a day marked before (pending) was read as the
    hour at its midnight, exported with that hour's rows only and recorded as done, so the rest
    of the day's changed rows were never exported; `reexport` queued every old day the same way."""
    backend = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(
        tmp_path / "proj", source=backend, destination=str(tmp_path / "out"), zone="UTC", capture="explicit"
    )
    db = Db(backend)
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=1)], value=1.0)
    db.insert(1, [DAY + dt.timedelta(hours=5)], value=2.0)
    assert cli(root, "mark", "openaq", "location_id=1", "day=2024-05-01").returncode == 0
    assert cli(root, "run").returncode == 0
    db.insert(1, [DAY], value=3.0)
    assert cli(root, "mark", "openaq", "location_id=1", "day=2024-05-01").returncode == 0  # pending
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "hour"').replace("{day:", "{hour:")
    toml.write_text(text.replace("{hour:%Y%m%d}", "{hour:%Y%m%dT%H%z}"))
    ran = cli(root, "run")
    assert ran.returncode == 1 and "0 exported" in ran.stdout, ran.stdout + ran.stderr
    assert "was recorded as a day, and task 'openaq' now has [time] grain = \"hour\"" in ran.stderr, (
        ran.stderr
    )
    assert (
        "backfill openaq --time-min 2024-05-01T00:00:00+00:00 --time-max 2024-05-02T00:00:00+00:00"
        in ran.stderr
    ), ran.stderr
    assert not list((tmp_path / "out").rglob("*T00+0000.csv"))  # no "hour" holding only midnight's row
    skipped = cli(root, "reexport", "openaq")  # the days recorded before cannot be exported as hours
    assert "queued 0 partition(s)" in skipped.stdout, skipped.stdout + skipped.stderr
    assert (
        cli(root, "backfill", "openaq", "--time-min", "2024-05-01", "--time-max", "2024-05-02").returncode
        == 0
    )
    hourly = cli(root, "run")  # the day stays parked (status names it); each of its hours is exported
    assert hourly.returncode == 0 and "3 exported" in hourly.stdout, hourly.stdout + hourly.stderr
    hours = {p.name: [r["value"] for r in read_csv(p)] for p in files(tmp_path / "out") if "T" in p.name}
    assert hours == {
        "location-1-20240501T00+0000.csv": ["3"],
        "location-1-20240501T01+0000.csv": ["1"],
        "location-1-20240501T05+0000.csv": ["2"],
    }, hours
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_key_without_a_zone_is_set_aside_and_stops_nothing(backend: str, tmp_path: Path) -> None:
    """A measurement of location 99, which `zone_sql` does not know (no foreign key stops it),
    or a location whose zone is not an IANA name: the fold raised, every run, and no other
    change of the task was exported. Now the change is set aside with a warning that says how
    to export it once the key has a zone, and the other changes go out."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "UTC")
    db.location(2, "Mars/Olympus")
    db.insert(99, [DAY + dt.timedelta(hours=3)])
    db.insert(2, [DAY + dt.timedelta(hours=4)])
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [p.name for p in files(tmp_path / "out")] == ["location-1-20240501.csv"]
    assert (
        "a change to location_id=99 (" in ran.stderr and "returned no zone for location_id=99" in ran.stderr
    )
    assert "'Mars/Olympus' is not an IANA zone name" in ran.stderr, ran.stderr
    hint = f"run 'sluicegate -C {root} backfill openaq --time-min 2024-04-30 --time-max 2024-05-03'"
    assert hint in ran.stderr, ran.stderr
    db.location(99, "UTC")
    db.conn.execute("UPDATE locations SET timezone = 'Europe/Paris' WHERE location_id = 2")
    assert (
        cli(root, "backfill", "openaq", "--time-min", "2024-04-30", "--time-max", "2024-05-03").returncode
        == 0
    )
    assert cli(root, "run").returncode == 0
    assert [p.name for p in files(tmp_path / "out")] == [
        "location-1-20240501.csv", "location-2-20240501.csv", "location-99-20240501.csv",
    ]  # fmt: skip
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_null_zone_is_named_null_and_its_key(backend: str, tmp_path: Path) -> None:
    """`zone_sql` gives location 2 a NULL zone: the run said "time zone 'None' is not an IANA zone
    name" (as if the data held the text 'None') and `check` named neither NULL nor the location.
    Now both say NULL and name the key; the other location's day is exported."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text().replace(
            "SELECT location_id, timezone FROM locations",
            "SELECT location_id, CASE WHEN location_id = 2 THEN NULL ELSE timezone END FROM locations",
        )
    )
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "UTC")
    db.location(2, "UTC+2")
    db.location(3, "Europe/Brussels")
    db.insert(2, [DAY + dt.timedelta(hours=4)])
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [p.name for p in files(tmp_path / "out")] == ["location-1-20240501.csv"]
    assert "'None'" not in ran.stderr and "returned NULL as the zone for location_id=2" in ran.stderr, (
        ran.stderr
    )
    db.conn.execute("UPDATE locations SET timezone = 'UTC+2' WHERE location_id = 3")
    checked = cli(root, "check")
    said = checked.stdout + checked.stderr
    assert "zone_sql: NULL (for the key [2]) is not an IANA time zone" in said, said
    assert "zone_sql: 'UTC+2' (for the key [3]) is not an IANA time zone" in said, said
    db.close()


def test_a_misspelt_zone_is_one_warning_per_location_not_per_reading(tmp_path: Path) -> None:
    """Two days of hourly readings at a location whose zone is 'UTC+2': each reading logged its own
    warning (48 lines, with two different backfill hints), so a run over thousands of readings
    buried every other message. Now it is one warning per location and reason, its backfill
    hint spanning all the readings' days."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC+2")
    db.location(2, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=h) for h in range(48)])
    db.insert(2, [DAY + dt.timedelta(hours=1)])
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [p.name for p in files(tmp_path / "out")] == ["location-2-20240501.csv"]
    warned = [line for line in ran.stderr.splitlines() if "a change to location_id=1 (" in line]
    assert len(warned) == 1, ran.stderr
    assert "'UTC+2' is not an IANA zone name" in warned[0], warned
    assert "--time-min 2024-04-30 --time-max 2024-05-04'" in warned[0], warned
    db.close()


def _partitioned_project(pg_url: str, tmp_path: Path) -> tuple[Path, Db]:
    """A project whose task captures `pmeas`, a table partitioned by month with May 2024's partition."""
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('table = "measurements"', 'table = "pmeas"'))
    db = Db(pg_url)
    db.conn.execute(
        "CREATE TABLE pmeas (location_id int NOT NULL, datetime timestamptz NOT NULL, value float8)"
        " PARTITION BY RANGE (datetime)"
    )
    db.conn.execute(
        "CREATE TABLE pmeas_2024_05 PARTITION OF pmeas FOR VALUES FROM ('2024-05-01') TO ('2024-06-01')"
    )
    return root, db


@pytest.mark.pg
def test_writes_straight_into_a_partition_of_a_partitioned_table_are_captured(
    pg_url: str, tmp_path: Path
) -> None:
    """The capture table is declaratively partitioned. Statement triggers fire only on the
    table a statement names, so an INSERT into a partition (`pmeas_2024_05`) was never
    captured, and `install` and `check` said all was well. Row triggers on the partitioned
    table are cloned onto every partition, one created after `install` too."""
    root, db = _partitioned_project(pg_url, tmp_path)
    ran = cli(root, "install")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    db.conn.execute(
        "CREATE TABLE pmeas_2024_06 PARTITION OF pmeas FOR VALUES FROM ('2024-06-01') TO ('2024-07-01')"
    )
    db.conn.execute("INSERT INTO pmeas VALUES (1, '2024-05-01 01:00Z', 1), (4, '2024-05-03 01:00Z', 1)")
    db.conn.execute("INSERT INTO pmeas_2024_05 VALUES (2, '2024-05-02 01:00Z', 1)")
    db.conn.execute("INSERT INTO pmeas_2024_06 VALUES (3, '2024-06-01 01:00Z', 1)")
    db.conn.execute(
        "UPDATE pmeas SET datetime = '2024-06-05 01:00Z' WHERE location_id = 1"
    )  # moves partition
    db.conn.execute("DELETE FROM pmeas_2024_05 WHERE location_id = 4")
    assert sorted(_absorbed(root)) == [
        '[1,"2024-05-01"]', '[1,"2024-06-05"]', '[2,"2024-05-02"]', '[3,"2024-06-01"]', '[4,"2024-05-03"]',
    ]  # fmt: skip
    checked = cli(root, "check")
    assert "not installed" not in checked.stderr, checked.stderr
    # A statement trigger there, as an older release installed, is reported until installed again.
    db.conn.execute("DROP TRIGGER sluicegate_openaq_insert ON pmeas")
    db.conn.execute(
        "CREATE TRIGGER sluicegate_openaq_insert AFTER INSERT ON pmeas REFERENCING NEW TABLE AS"
        " sluicegate_new FOR EACH STATEMENT EXECUTE FUNCTION sluicegate.capture_openaq()"
    )
    checked = cli(root, "check")
    assert "capture triggers are not installed on pmeas (sluicegate_openaq_insert)" in checked.stderr
    assert cli(root, "install").returncode == 0
    assert "not installed" not in cli(root, "check").stderr
    db.close()


@pytest.mark.pg
def test_a_row_trigger_records_a_partition_and_bin_once_per_transaction_and_survives_a_rolled_back_savepoint(
    pg_url: str, tmp_path: Path
) -> None:
    """Row triggers (a partitioned table) remember the last (keys, bin) they recorded in the
    transaction and skip it when it comes again. A savepoint rolled back takes its inbox row
    away: the memory must go with it, or the next row of that location and hour records
    nothing and its day is never exported."""
    root, db = _partitioned_project(pg_url, tmp_path)
    assert cli(root, "install").returncode == 0
    with db.conn.transaction():  # three sensors of location 1 in one hour, then another hour
        for value in (1, 2, 3):
            db.conn.execute("INSERT INTO pmeas VALUES (1, '2024-05-01 01:00Z', %s)", (value,))
        db.conn.execute("INSERT INTO pmeas VALUES (1, '2024-05-01 02:00Z', 4)")
    assert db.rows("SELECT count(*) FROM sluicegate.change_runs") == [(2,)]
    with db.conn.transaction():
        with pytest.raises(psycopg.errors.RaiseException), db.conn.transaction():  # a savepoint
            db.conn.execute("INSERT INTO pmeas VALUES (2, '2024-05-02 01:00Z', 5)")
            db.conn.execute("DO $$ BEGIN RAISE EXCEPTION 'undo'; END $$")
        db.conn.execute("INSERT INTO pmeas VALUES (2, '2024-05-02 01:00Z', 6)")
    assert db.rows("SELECT count(*) FROM sluicegate.change_runs") == [(3,)]
    assert sorted(_absorbed(root)) == ['[1,"2024-05-01"]', '[2,"2024-05-02"]']
    db.close()


@pytest.mark.pg
def test_capture_triggers_row_makes_row_triggers_on_a_plain_table(pg_url: str, tmp_path: Path) -> None:
    """`[capture] triggers = "row"`: a table written one row per statement pays less for row
    triggers than for statement triggers with transition tables (bench/README.md). They skip
    the repeat of the last keys and bin, and `check` reports statement triggers left from
    before the setting as not installed."""
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    db = Db(pg_url)
    assert cli(root, "install").returncode == 0
    row_bit = "SELECT tgtype::int & 1 FROM pg_trigger WHERE tgname = 'sluicegate_openaq_insert'"
    assert db.rows(row_bit) == [(0,)]  # statement triggers by default
    toml.write_text(toml.read_text() + 'triggers = "row"\n')
    checked = cli(root, "check")
    assert "capture triggers are not installed on measurements" in checked.stderr
    assert cli(root, "install").returncode == 0
    assert db.rows(row_bit) == [(1,)]
    assert "not installed" not in cli(root, "check").stderr
    db.location(1, "UTC")
    with db.conn.transaction():
        for sensor in (1, 2, 3):
            db.conn.execute(
                "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at)"
                " VALUES (1, %s, '2024-05-01 10:00Z', 1, now())",
                (sensor,),
            )
    assert db.rows("SELECT count(*) FROM sluicegate.change_runs") == [(1,)]
    db.conn.execute(  # another transaction remembers nothing of the last one
        "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at)"
        " VALUES (1, 4, '2024-05-01 10:00Z', 1, now())"
    )
    assert db.rows("SELECT count(*) FROM sluicegate.change_runs") == [(2,)]
    assert sorted(_absorbed(root)) == ['[1,"2024-05-01"]']
    db.close()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('triggers = "rows"', "[capture] triggers: 'rows' is not valid; use one of statement, row"),
        ('triggers = "row"\nmode = "scan"', '[capture] triggers: only for mode = "trigger"'),
    ],
)
def test_a_wrong_capture_triggers_setting_is_refused(tmp_path: Path, line: str, message: str) -> None:
    root = write_project(
        tmp_path / "proj",
        source=f"sqlite:///{tmp_path / 's.db'}",
        destination=str(tmp_path / "out"),
        zone="UTC",
    )
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text()
    if "scan" in line:
        text = text.replace('mode = "trigger"\n', "").replace(
            "[capture]\n", '[capture]\ncursor = "ingested_at"\n'
        )
    toml.write_text(text + line + "\n")
    checked = cli(root, "check")
    assert checked.returncode == 2 and message in checked.stderr, checked.stderr


@pytest.mark.pg
def test_numeric_keys_are_exact_and_backfill_takes_them(pg_url: str, tmp_path: Path) -> None:
    """A `numeric` key went through the inbox's JSON as a float: 0.1000000000000000001 became
    0.1 (its row in no file) and 12345678901234567.891 a partition recorded exported with no
    file; `backfill` of any numeric key crashed ("Decimal is not JSON serializable"). Now a key
    is the int or float that is exactly it, one no float holds is set aside with a warning, and
    backfill marks exactly the partitions the triggers did."""
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="UTC")
    folder = root / "tasks" / "openaq"
    (folder / "task.toml").write_text(
        'keys = ["k"]\npath = "nk/{k}/{day:%Y-%m-%d}.{ext}"\n[time]\ncolumn = "t"\nzone = "UTC"\n'
        '[capture]\nmode = "trigger"\ntable = "nk"\ntime = "t"\n'
    )
    (folder / "select.sql").write_text("SELECT k, t, v FROM nk")
    db = Db(pg_url)
    db.conn.execute("CREATE TABLE nk (k numeric NOT NULL, t timestamptz NOT NULL, v float8)")
    assert cli(root, "install").returncode == 0
    db.conn.execute(
        "INSERT INTO nk VALUES (1.5, '2024-05-01 10:00Z', 1), (12345678901234567.891, '2024-05-01 10:00Z', 2),"
        " (0.1, '2024-05-01 10:00Z', 3), (0.1000000000000000001, '2024-05-01 11:00Z', 4),"
        " (7, '2024-05-01 11:00Z', 5), (7.00, '2024-05-01 12:00Z', 6)"
    )
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)[0]["exported"] == 3
    assert "a change to k=12345678901234567.891 with a number no float holds" in ran.stderr
    assert "a change to k=0.1000000000000000001 with a number no float holds" in ran.stderr
    got = {p.parent.name: sorted(r["v"] for r in read_csv(p)) for p in files(tmp_path / "out")}
    assert got == {"0.1": ["3"], "1.5": ["1"], "7": ["5", "6"]}, got
    pkeys = sorted(r[0] for r in db.rows("SELECT pkey FROM sluicegate.partitions"))
    assert pkeys == ['[0.1,"2024-05-01"]', '[1.5,"2024-05-01"]', '[7,"2024-05-01"]']
    backfilled = cli(root, "backfill", "openaq")
    assert backfilled.returncode == 0 and "Traceback" not in backfilled.stderr, backfilled.stderr
    assert sorted(r[0] for r in db.rows("SELECT pkey FROM sluicegate.partitions")) == pkeys
    [summary] = json.loads(cli(root, "run", "--json").stdout)
    assert (summary["exported"], summary["unchanged"]) == (0, 3)
    # `mark` reads a numeric key's value as the select holds it: 1.50 is the partition 1.5.
    assert cli(root, "mark", "openaq", "k=1.50", "day=2024-05-01").returncode == 0
    assert sorted(r[0] for r in db.rows("SELECT pkey FROM sluicegate.partitions")) == pkeys
    refused = cli(root, "mark", "openaq", "k=0.1000000000000000001", "day=2024-05-01")
    assert (
        refused.returncode == 2
        and "k=0.1000000000000000001 has more digits than a float holds" in refused.stderr
    )
    db.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True)
def test_a_failing_zone_query_keeps_the_changes_in_the_inbox(backend: str, tmp_path: Path) -> None:
    """Only a key without a zone is set aside: when the zone_sql query itself fails, the run
    stops (exit 2) and the captured changes wait in the inbox for the fixed query."""
    root = write_project(tmp_path / "proj", source=backend, destination=str(tmp_path / "out"))
    db = Db(backend)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=1)])
    toml = root / "tasks" / "openaq" / "task.toml"
    good = toml.read_text()
    toml.write_text(
        good.replace("SELECT location_id, timezone FROM locations", "SELECT location_id, tz FROM locations")
    )
    ran = cli(root, "run")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "zone_sql" in ran.stderr and "set aside" not in ran.stderr and "has no partition" not in ran.stderr
    toml.write_text(good)
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [p.name for p in files(tmp_path / "out")] == ["location-1-20240501.csv"]
    db.close()


def test_a_real_key_of_a_whole_number_is_one_partition_whichever_way_it_is_marked(tmp_path: Path) -> None:
    """SQL calls 7 and 7.0 equal, so they are one partition: a SQLite REAL key 7.0 came out of
    the inbox as 7 (once exact numbers were read) but out of backfill as 7.0, two partitions
    whose files both held every row of the key."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    folder = root / "tasks" / "openaq"
    (folder / "task.toml").write_text(
        'keys = ["k"]\npath = "r/{k}/{day:%Y-%m-%d}.{ext}"\n[time]\ncolumn = "t"\nzone = "UTC"\n'
        '[capture]\nmode = "trigger"\ntable = "r"\ntime = "t"\n'
    )
    (folder / "select.sql").write_text("SELECT k, t, v FROM r")
    db = Db(url)
    db.conn.execute("CREATE TABLE r (k REAL NOT NULL, t TEXT NOT NULL, v REAL)")
    assert cli(root, "install").returncode == 0
    db.conn.execute(
        "INSERT INTO r VALUES (7.0, '2024-05-01T10:00:00Z', 1), (2.5, '2024-05-01T11:00:00Z', 2),"
        " (1e19, '2024-05-01T12:00:00Z', 3)"  # a whole number past 64 bits stays a float
    )
    assert cli(root, "run").returncode == 0
    pkeys = sorted(r[0] for r in db.rows("SELECT pkey FROM sluicegate_partitions"))
    assert pkeys == ['[1e+19,"2024-05-01"]', '[2.5,"2024-05-01"]', '[7,"2024-05-01"]']
    assert cli(root, "backfill", "openaq").returncode == 0
    assert sorted(r[0] for r in db.rows("SELECT pkey FROM sluicegate_partitions")) == pkeys
    assert cli(root, "run").returncode == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files(tmp_path / "out")) == [
        "r/1e+19/2024-05-01.csv", "r/2.5/2024-05-01.csv", "r/7/2024-05-01.csv",
    ]  # fmt: skip
    db.close()


def test_reexport_after_the_task_zone_changed_covers_the_hours_the_old_day_held_past_the_new_midnight(
    tmp_path: Path,
) -> None:
    """UTC's 2024-05-01 held a row at 20:00Z, which is Tokyo's 2024-05-02: the re-cut exported
    Tokyo's 2024-05-01 alone, so that row was in no file while its day was recorded exported."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=h) for h in (1, 20)], value=1.0)
    assert cli(root, "run").returncode == 0
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('zone = "UTC"', 'zone = "Asia/Tokyo"'))
    ran = cli(root, "reexport", "openaq")
    assert ran.returncode == 0 and "queued 2 partition(s)" in ran.stdout, ran.stdout + ran.stderr
    assert cli(root, "run").returncode == 0
    got = {p.name: sorted(r["datetime"] for r in read_csv(p)) for p in files(tmp_path / "out")}
    assert got == {
        "location-1-20240501.csv": ["2024-05-01T10:00:00+09:00"],
        "location-1-20240502.csv": ["2024-05-02T05:00:00+09:00"],
    }, got
    db.close()


# Hours of zones read per key (zone_sql) must be named apart (their zone may have DST): no
# zone_sql case without %z, which the configuration refuses.
@pytest.mark.parametrize(
    ("zone", "name"),
    [
        *((z, n) for z in ("Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo")
          for n in ("{hour:%Y%m%dT%H%M%z}", "{hour:%Y%m%dT%H}")),
        ("zone_sql Asia/Kolkata", "{hour:%Y%m%dT%H%M%z}"),
    ],
)  # fmt: skip
def test_reexport_after_an_hour_zone_change_leaves_each_row_in_one_file(
    tmp_path: Path, zone: str, name: str
) -> None:
    """Hours cut in UTC and re-cut in another zone: the re-cut stored each hour under a new key
    (its offset is in the key) and the old key's partition was exported again too, so with
    Asia/Kolkata (+05:30) rows were in two files; with Asia/Tokyo the old files stayed and a later
    change wrote the same rows under the new key. The old hours' files are now deleted, unless
    the new zone's hour of the same wall clock has that file name (its export replaces it)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    keyed, zone = zone.startswith("zone_sql "), zone.removeprefix("zone_sql ")
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone=None if keyed else "UTC"
    )
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "hour"')
    toml.write_text(text.replace("{day:%Y%m%d}", name).replace("{day:", "{hour:"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    instants = [DAY + dt.timedelta(minutes=m) for m in (10, 40, 70, 300, 330, 590)]
    db.insert(1, instants, value=1.0)
    assert cli(root, "run").returncode == 0
    if keyed:
        db.conn.execute("UPDATE locations SET timezone = ? WHERE location_id = 1", (zone,))
    toml.write_text(toml.read_text().replace('zone = "UTC"', f'zone = "{zone}"'))
    ran = cli(root, "reexport", "openaq")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert cli(root, "run").returncode == 0
    got = {
        p.name: [dt.datetime.fromisoformat(r["datetime"]) for r in read_csv(p)]
        for p in files(tmp_path / "out")
    }
    every = sorted(t for rows in got.values() for t in rows)
    assert every == instants, got
    assert all(t.utcoffset() == instants[0].astimezone(zone_of(zone)).utcoffset() for t in every), got
    again = cli(root, "reexport", "openaq")  # a second re-cut finds nothing left to retire or add
    assert again.returncode == 0 and cli(root, "run").returncode == 0
    assert {
        p.name: [dt.datetime.fromisoformat(r["datetime"]) for r in read_csv(p)]
        for p in files(tmp_path / "out")
    } == got
    db.close()


def test_reexport_reads_a_key_value_as_mark_does(tmp_path: Path) -> None:
    """`reexport TASK k=1.50` queued nothing for the float key 1.5 (it compared text), while
    `mark` reads 1.50 as 1.5; a text key `7` is still not the integer 7."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    folder = root / "tasks" / "openaq"
    (folder / "task.toml").write_text(
        'keys = ["k", "s"]\npath = "nk/{k}/{s}/{day:%Y-%m-%d}.{ext}"\n[time]\ncolumn = "t"\nzone = "UTC"\n'
        '[capture]\nmode = "trigger"\ntable = "nk"\ntime = "t"\n'
    )
    (folder / "select.sql").write_text("SELECT k, s, t, v FROM nk")
    conn = sqlite3.connect(tmp_path / "source.db", isolation_level=None)
    conn.execute("CREATE TABLE nk (k REAL NOT NULL, s TEXT NOT NULL, t TEXT NOT NULL, v REAL)")
    assert cli(root, "install").returncode == 0
    conn.execute(
        "INSERT INTO nk VALUES (1.5, '7', '2024-05-01T10:00:00Z', 1), (2, '8', '2024-05-01T10:00:00Z', 2)"
    )
    assert cli(root, "run").returncode == 0
    for pairs, count in ((["k=1.50"], 1), (["k=1.5", "s=7"], 1), (["k=2.0"], 1), (["s=07"], 0), (["k=3"], 0)):
        ran = cli(root, "reexport", "openaq", *pairs)
        assert ran.returncode == 0 and f"queued {count} partition(s)" in ran.stdout, (
            pairs,
            ran.stdout + ran.stderr,
        )
    conn.close()


def test_a_change_after_the_keys_were_reordered_is_exported(tmp_path: Path) -> None:
    """keys = ["location_id", "sensors_id"] became ["sensors_id", "location_id"]: a partition
    recorded before has its values in the old order, and a claim whose restored key text differed
    from the recorded one was taken for a retired hour, exported with no rows: the change at
    07:00 was in no file while its day was recorded exported."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('keys = ["location_id"]', 'keys = ["location_id", "sensors_id"]')
    text = text.replace("location-{location_id}", "location-{location_id}-{sensors_id}")
    toml.write_text(
        text.replace(
            '{ location_id = "location_id" }', '{ location_id = "location_id", sensors_id = "sensor_id" }'
        )
    )
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=h) for h in (1, 5)], value=1.0)
    assert cli(root, "run").returncode == 0
    toml.write_text(
        toml.read_text().replace('["location_id", "sensors_id"]', '["sensors_id", "location_id"]')
    )
    db.insert(1, [DAY + dt.timedelta(hours=7)], value=1.0)
    assert cli(root, "run").returncode == 0
    got = {p.name: sorted(r["datetime"] for r in read_csv(p)) for p in files(tmp_path / "out")}
    assert got == {"location-1-10-20240501.csv": [f"2024-05-01T0{h}:00:00+00:00" for h in (1, 5, 7)]}, got
    db.close()


def test_a_dry_run_after_an_hour_zone_change_shows_no_file_for_a_retired_hour(tmp_path: Path) -> None:
    """An hour cut in UTC and retired by the re-cut in Asia/Tokyo writes no file (the Tokyo hour
    of the same wall clock replaces its file): `run --dry-run` listed it with the path of the
    Tokyo hour it restores as, another partition's file, so two partitions seemed to write one."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "hour"')
    toml.write_text(text.replace("{day:%Y%m%d}", "{hour:%Y%m%dT%H}").replace("{day:", "{hour:"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [DAY + dt.timedelta(hours=h) for h in (1, 10)], value=1.0)
    assert cli(root, "run").returncode == 0
    toml.write_text(toml.read_text().replace('zone = "UTC"', 'zone = "Asia/Tokyo"'))
    assert cli(root, "reexport", "openaq").returncode == 0
    dry = cli(root, "run", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    [summary] = json.loads(dry.stdout)
    paths = {e["partition"]["hour"]: e.get("path") for e in summary["plan"]}
    assert paths["2024-05-01T10:00:00+00:00"] is None, paths  # retired: Tokyo's 10:00 replaces its file
    shown = [p for p in paths.values() if p]
    assert len(shown) == len(set(shown)), paths
    assert cli(root, "run").returncode == 0
    written = {p.name for p in files(tmp_path / "out")}
    assert written <= {Path(p).name for p in shown}, (paths, written)  # an hour without rows has none
    db.close()
