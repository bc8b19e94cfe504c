"""The MariaDB source on a real server: pinned sessions, TIMESTAMP vs DATETIME, column kinds."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.mariadb_server import mariadb_connect
from sluicegate.exceptions import ConfigError
from sluicegate.ledger import Ledger
from sluicegate.ledger.core import SchemaStore
from sluicegate.sources import ReadSpec, Slice, open_source
from sluicegate.sources.mariadb import MariaDbSource
from support import HOSTILE_NAMES, cli, read_csv

pytestmark = pytest.mark.mariadb
UTC = dt.UTC


@pytest.fixture
def server_zone_ahead(mariadb_url: str) -> Iterator[None]:
    """The server's default zone is +05:30 for the test (new sessions start in it), then UTC again."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("SET GLOBAL time_zone = '+05:30'")
        try:
            yield
        finally:
            conn.cursor().execute("SET GLOBAL time_zone = '+00:00'")


def test_timestamp_is_an_instant_and_datetime_is_taken_as_utc(
    mariadb_url: str, server_zone_ahead: None, tmp_path: Path
) -> None:
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL, d DATETIME(6))")
        # Written by a session in the server's zone (+05:30): the TIMESTAMP is 04:30 UTC.
        cur.execute("INSERT INTO t VALUES (1, '2024-03-01 10:00:00', '2024-03-01 10:00:00')")
    source = open_source(mariadb_url)
    try:
        assert isinstance(source, MariaDbSource)
        assert source.execute("SELECT @@session.time_zone")[0][0] == "+00:00"
        [(ts, d)] = source.execute("SELECT ts, d FROM t")
        assert ts == dt.datetime(2024, 3, 1, 4, 30, tzinfo=UTC)
        assert d == dt.datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
        # The batch read compares both with UTC windows and returns aware UTC values.
        spec = ReadSpec(select_sql="SELECT id, ts, d FROM t", folder=tmp_path, time_column="ts")
        columns = source.describe(spec)
        assert [(c.name, c.kind) for c in columns] == [
            ("id", "int"),
            ("ts", "timestamptz"),
            ("d", "timestamptz"),
        ]
        window = Slice(
            start=dt.datetime(2024, 3, 1, 4, tzinfo=UTC), end=dt.datetime(2024, 3, 1, 5, tzinfo=UTC)
        )
        [(index, rows)] = list(source.read(spec, [window], columns, "rows"))
        assert (index, rows) == (0, [(1, ts, d)])
        later = Slice(
            start=dt.datetime(2024, 3, 1, 10, tzinfo=UTC), end=dt.datetime(2024, 3, 1, 11, tzinfo=UTC)
        )
        assert list(source.read(spec, [later], columns, "rows")) == []
    finally:
        source.close()


def test_datetime_zone_on_a_timestamp_time_column_is_refused(mariadb_url: str, tmp_path: Path) -> None:
    """A TIMESTAMP is an instant already: naming a wall-clock zone for it would shift every row."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP(6) NULL)")
    source = open_source(mariadb_url)
    try:
        spec = ReadSpec(
            select_sql="SELECT id, ts FROM t",
            folder=tmp_path,
            time_column="ts",
            datetime_zone="Europe/Brussels",
        )
        window = Slice(start=dt.datetime(2024, 3, 1, tzinfo=UTC), end=dt.datetime(2024, 3, 2, tzinfo=UTC))
        with pytest.raises(
            ConfigError, match=r"\[time\] datetime_zone: the time column ts is not a DATETIME"
        ):
            list(source.read(spec, [window], source.describe(spec), "rows"))
    finally:
        source.close()


def test_column_kinds_follow_the_result_types(mariadb_url: str, tmp_path: Path) -> None:
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute(
            "CREATE TABLE k (i BIGINT, f FLOAT, x DOUBLE, n DECIMAL(12,3), v VARCHAR(9), b VARBINARY(9),"
            " bl BLOB, tx TEXT, dy DATE, tm TIME, j JSON, e ENUM('a'), bt BIT(3))"
        )
    source = open_source(mariadb_url)
    try:
        columns = source.describe(
            ReadSpec(
                select_sql="SELECT k.*, CAST(n AS DECIMAL(5,0)) AS n0, CAST(7 AS UNSIGNED) + 0.5 AS nu FROM k",
                folder=tmp_path,
            )
        )
    finally:
        source.close()
    kinds = {c.name: (c.kind, c.as_text) for c in columns}
    assert kinds == {
        "i": ("int", False), "f": ("float", False), "x": ("float", False), "n": ("decimal", False),
        "v": ("text", False), "b": ("binary", False), "bl": ("binary", False), "tx": ("text", False),
        "dy": ("date", False), "tm": ("text", True), "j": ("text", True), "e": ("text", False),
        "bt": ("binary", False), "n0": ("decimal", False), "nu": ("decimal", False),
    }  # fmt: skip
    by_name = {c.name: c for c in columns}
    assert (by_name["n"].precision, by_name["n"].scale) == (12, 3) and by_name["f"].precision == 24
    assert (by_name["n0"].precision, by_name["n0"].scale) == (5, 0)
    assert (by_name["nu"].precision, by_name["nu"].scale) == (3, 1)


def _one_of_two_fails(root: Path, cities: tuple[str, str]) -> str:
    """Mark both cities' 2024-03-01 and run: one exports, the other fails; its error."""
    for city in cities:
        assert cli(root, "mark", "cities", f"city={city}", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    assert (summary["exported"], summary["failed"]) == (1, 1)
    [error] = summary["errors"]
    return str(error)


def _cities(tmp_path: Path, mariadb_url: str, select: str, task_extra: str = "", fmt: str = "csv") -> Path:
    """A project with one task ``cities``: key ``city``, UTC days of ``at``, ``fmt`` into tmp_path/out."""
    root = tmp_path / "proj"
    task = root / "tasks" / "cities"
    task.mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{mariadb_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nformat = "{fmt}"\nbackoff = "0s"\n'
    )
    (task / "task.toml").write_text(
        'keys = ["city"]\npath = "{city}/{day:%Y%m%d}.{ext}"\n[time]\ncolumn = "at"\n' + task_extra
    )
    (task / "select.sql").write_text(select)
    return root


def _readings(
    tmp_path: Path, mariadb_url: str, city: str, how: str, *, cursor: str = "at", install: bool = True
) -> Path:
    """Table ``readings (id, city <city>, at)`` and a ``cities`` task capturing it by ``how``:
    "trigger" (installed, unless not ``install``) or "scan" (on ``cursor``)."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute(
            f"CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city {city}, at DATETIME(6) NOT NULL)"
        )
    capture = f'[capture]\nmode = "{how}"\ntable = "readings"\ntime = "at"\n'
    capture += f'cursor = "{cursor}"\n' if how == "scan" else ""
    root = _cities(tmp_path, mariadb_url, "SELECT id, city, at FROM readings", capture)
    if how == "trigger" and install:
        assert cli(root, "install").returncode == 0
    return root


def _task_t(tmp_path: Path, mariadb_url: str, select: str, task_toml: str = "") -> Path:
    """A project with one task ``t`` reading ``select`` into CSV in tmp_path/out: partitioned by
    ``id`` (one file each) unless ``task_toml`` says otherwise."""
    root = tmp_path / "proj"
    task = root / "tasks" / "t"
    task.mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{mariadb_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        '[defaults]\nformat = "csv"\nbackoff = "0s"\n'
    )
    (task / "select.sql").write_text(select)
    (task / "task.toml").write_text(task_toml or 'keys = ["id"]\npath = "{id}.{ext}"\n')
    return root


def _ids_by_file(out: Path) -> dict[str, list[str]]:
    """Each published CSV's path under ``out`` and its rows' ids."""
    return {p.relative_to(out).as_posix(): [r["id"] for r in read_csv(p)] for p in out.rglob("*.csv")}


def test_keys_differing_only_in_case_or_trailing_spaces_are_separate_partitions(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Gent, gent and 'Gent ' are three cities to the data, though the column's collation (like
    MariaDB's default) ignores case and trailing spaces: three ledger rows, three files, each with
    its own row only (once, they were one ledger row, and each file read all three rows)."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city VARCHAR(32) CHARACTER SET utf8mb4"
            " COLLATE utf8mb4_general_ci NOT NULL, at DATETIME(6) NOT NULL, v DOUBLE)"
        )
    capture = '[capture]\nmode = "trigger"\ntable = "readings"\ntime = "at"\n'
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, v FROM readings", capture)
    assert cli(root, "install").returncode == 0
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at, v) VALUES (?, '2024-03-01 10:00:00', ?)",
            [("Gent", 1.0), ("gent", 2.0), ("Gent ", 3.0)],
        )
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = tmp_path / "out"
    assert {p.relative_to(out).as_posix(): read_csv(p) for p in out.rglob("*.csv")} == {
        "Gent/20240301.csv": [{"city": "Gent", "at": "2024-03-01T10:00:00+00:00", "v": "1"}],
        "gent/20240301.csv": [{"city": "gent", "at": "2024-03-01T10:00:00+00:00", "v": "2"}],
        "Gent /20240301.csv": [{"city": "Gent ", "at": "2024-03-01T10:00:00+00:00", "v": "3"}],
    }


@pytest.mark.parametrize("how", ["backfill", "scan"])
def test_a_backfill_or_scan_marks_keys_differing_only_in_case_or_trailing_spaces(
    mariadb_url: str, tmp_path: Path, how: str
) -> None:
    """As above, for the partitions a backfill or a scan finds: their SELECT DISTINCT compared the
    keys by the column's collation and returned Gent, gent and 'Gent ' as one city, so two of the
    three were never marked and their rows were in no file."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city VARCHAR(32) CHARACTER SET utf8mb4"
            " COLLATE utf8mb4_general_ci NOT NULL, at DATETIME(6) NOT NULL, v DOUBLE)"
        )
        cur.executemany(
            "INSERT INTO readings (city, at, v) VALUES (?, '2024-03-01 10:00:00', ?)",
            [("Gent", 1.0), ("gent", 2.0), ("Gent ", 3.0)],
        )
        conn.commit()
    capture = (
        '[capture]\nmode = "scan"\ntable = "readings"\ntime = "at"\ncursor = "at"\n' if how == "scan" else ""
    )
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, v FROM readings", capture)
    if how == "backfill":
        assert cli(root, "backfill", "cities").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = tmp_path / "out"
    assert {p.relative_to(out).as_posix(): [r["v"] for r in read_csv(p)] for p in out.rglob("*.csv")} == {
        "Gent/20240301.csv": ["1"], "gent/20240301.csv": ["2"], "Gent /20240301.csv": ["3"],
    }  # fmt: skip


def test_triggers_installed_for_another_boundary_are_reported_and_replaced(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Triggers installed before `[time] boundary = "end"` still bin a midnight reading into the
    next day: an update of it re-exported that day, and the day the row is in kept its old value,
    while `check` said all was well."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute(
            "CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city VARCHAR(32) NOT NULL,"
            " at DATETIME(6) NOT NULL, v DOUBLE)"
        )
    capture = '[capture]\nmode = "trigger"\ntable = "readings"\ntime = "at"\n'
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, v FROM readings", capture)
    assert cli(root, "install").returncode == 0
    toml = root / "tasks" / "cities" / "task.toml"
    toml.write_text(toml.read_text().replace("[time]\n", '[time]\nboundary = "end"\n'))
    checked = cli(root, "check")
    assert "capture triggers are not installed on readings" in checked.stderr, checked.stderr
    assert cli(root, "install").returncode == 0
    assert "not installed" not in cli(root, "check").stderr
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("INSERT INTO readings (city, at, v) VALUES ('Gent', '2024-03-02 00:00:00', 1)")
    assert cli(root, "run").returncode == 0
    assert read_csv(tmp_path / "out" / "Gent" / "20240301.csv") == [
        {"city": "Gent", "at": "2024-03-02T00:00:00+00:00", "v": "1"}
    ]


def _upgraded(cur: Any, table: str, column: str) -> tuple[str, str]:
    """The ledger's schema version, and the collation of one of its text columns."""
    cur.execute("SELECT value FROM sluicegate_meta WHERE `key` = 'schema_version'")
    [(version,)] = cur.fetchall()
    cur.execute(
        "SELECT collation_name FROM information_schema.columns WHERE table_schema = DATABASE()"
        " AND table_name = ? AND column_name = ?",
        (table, column),
    )
    [(collation,)] = cur.fetchall()
    return version, collation


def test_a_ledger_of_the_first_mariadb_release_is_upgraded_to_binary_text(mariadb_url: str) -> None:
    """mariadb-1 tables compared text without case; opening the ledger converts them, keeping rows."""
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "ALTER TABLE sluicegate_partitions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        )
        cur.execute(
            "INSERT INTO sluicegate_partitions (task, pkey, `keys`, changed_at) VALUES ('t', 'a', '{}', 0)"
        )
        cur.execute("UPDATE sluicegate_meta SET value = 'mariadb-1' WHERE `key` = 'schema_version'")
        conn.commit()
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        assert _upgraded(cur, "sluicegate_partitions", "pkey") == ("mariadb-4", "utf8mb4_bin")
        cur.execute(
            "INSERT INTO sluicegate_partitions (task, pkey, `keys`, changed_at) VALUES ('t', 'A', '{}', 0)"
        )
        cur.execute("SELECT pkey FROM sluicegate_partitions ORDER BY pkey")
        assert cur.fetchall() == [("A",), ("a",)]  # two rows now: case matters


def test_a_mariadb_2_ledger_keeps_entities_and_key_values_apart_by_trailing_spaces(mariadb_url: str) -> None:
    """mariadb-2 compared entities and blocks' key values as utf8mb4_bin, which is PAD SPACE:
    's1' and 's1 ' were one watermark row. Opening the ledger makes both columns NO PAD."""
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        for table, column, size in (("watermarks", "entity", 512), ("blocks", "key_value", 255)):
            cur.execute(
                f"ALTER TABLE sluicegate_{table} MODIFY {column} VARCHAR({size}) CHARACTER SET utf8mb4"
                " COLLATE utf8mb4_bin NOT NULL"
            )
        cur.execute("INSERT INTO sluicegate_watermarks (task, entity) VALUES ('t', 's1')")
        # before mariadb-4, no path index
        cur.execute("ALTER TABLE sluicegate_partitions DROP KEY sluicegate_partitions_path_idx")
        cur.execute("UPDATE sluicegate_meta SET value = 'mariadb-2' WHERE `key` = 'schema_version'")
        conn.commit()
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure("t", ["s1 ", "s1"])
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        assert _upgraded(cur, "sluicegate_watermarks", "entity") == ("mariadb-4", "utf8mb4_nopad_bin")
        assert _upgraded(cur, "sluicegate_blocks", "key_value") == ("mariadb-4", "utf8mb4_nopad_bin")
        cur.execute("SELECT entity FROM sluicegate_watermarks ORDER BY entity")
        assert cur.fetchall() == [("s1",), ("s1 ",)]  # two rows now: the space matters
        cur.execute("SHOW INDEX FROM sluicegate_partitions WHERE Key_name = 'sluicegate_partitions_path_idx'")
        assert [(row[4], row[7]) for row in cur.fetchall()] == [("task", None), ("path", 255)]


def test_two_workers_upgrading_a_mariadb_3_ledger_at_once_both_start(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mariadb-3 -> mariadb-4 adds the path index after asking whether it is missing: two workers
    started together (a deploy) both saw it missing, and the second ALTER failed with "Duplicate
    key name": that worker did not start. Both looked before either added it here."""
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("ALTER TABLE sluicegate_partitions DROP KEY sluicegate_partitions_path_idx")
        cur.execute("UPDATE sluicegate_meta SET value = 'mariadb-3' WHERE `key` = 'schema_version'")
        conn.commit()
    looked = threading.Barrier(2, timeout=20)
    missing = SchemaStore.path_index_missing

    def both_look_first(self: SchemaStore, cur: Any) -> bool:
        answer = missing(self, cur)
        looked.wait()
        return answer

    monkeypatch.setattr(SchemaStore, "path_index_missing", both_look_first)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with Ledger(mariadb_url) as ledger:
                ledger.ensure_schema()
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=start) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        assert _upgraded(conn.cursor(), "sluicegate_partitions", "pkey") == ("mariadb-4", "utf8mb4_bin")


def test_the_paths_a_batch_would_take_are_found_by_index_and_exactly(mariadb_url: str) -> None:
    """The claim loop's check that no partition takes another's file: utf8mb4_bin pads, so the
    index finds 'p/1.csv' for 'p/1.csv '; only the exact path counts."""
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
        rows = [(f"[{i}]", f"p/{i}.csv") for i in range(1, 201)]
        ledger.core.in_transaction(
            lambda cur: cur.executemany(
                "INSERT INTO sluicegate_partitions (task, pkey, `keys`, changed_at, path) VALUES ('t', ?, '{}', 0, ?)",
                rows,
            )
        )

        found = ledger.partitions.paths_taken("t", {"p/1.csv", "p/2.csv ", "p/3.csv", "p/none.csv"})
        none = (None, None, None)  # no bytes, checksum nor ETag recorded
        assert sorted(found) == [("p/1.csv", "[1]", None, True, *none), ("p/3.csv", "[3]", None, True, *none)]
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        statement = ledger.partitions.q["paths_taken"].replace("%(paths)s", "?").replace("%(task)s", "?")
        cur.execute("EXPLAIN " + statement, ('["p/1.csv", "p/3.csv"]', "t"))
        keys = {row[5] for row in cur.fetchall()}  # the key each table is read by
        assert "sluicegate_partitions_path_idx" in keys, keys


def test_the_inbox_of_the_release_before_the_mariadb_ledger_is_upgraded(mariadb_url: str) -> None:
    """97d6833 made only the trigger inbox, at schema version mariadb-inbox-1, in the default
    collation: it is an older ledger to upgrade (it was refused as "newer"), keeping its changes."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE sluicegate_meta (`key` VARCHAR(64) NOT NULL PRIMARY KEY, value VARCHAR(255) NOT NULL)"
        )
        cur.execute(
            "CREATE TABLE sluicegate_changes (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " task VARCHAR(255) NOT NULL, `keys` TEXT NOT NULL, bin BIGINT NULL,"
            " KEY sluicegate_changes_task_idx (task, id)) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci"
        )
        cur.execute("INSERT INTO sluicegate_meta VALUES ('schema_version', 'mariadb-inbox-1')")
        cur.execute("INSERT INTO sluicegate_changes (task, `keys`, bin) VALUES ('t', '[\"Gent\"]', 1)")
        conn.commit()
    with Ledger(mariadb_url) as ledger:
        ledger.ensure_schema()
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        assert _upgraded(cur, "sluicegate_changes", "keys") == ("mariadb-4", "utf8mb4_bin")
        cur.execute("SELECT task, `keys` FROM sluicegate_changes")
        assert cur.fetchall() == [("t", '["Gent"]')]
        cur.execute("SELECT count(*) FROM sluicegate_partitions")
        assert cur.fetchall() == [(0,)]


def test_column_names_with_placeholder_and_quote_characters_are_read(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Names the driver could take for placeholders (``?``, ``%s``), that close a quoted
    identifier (a backtick) or that look qualified (``v.1``) come back as the header."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32) NOT NULL, at DATETIME(6) NOT NULL, v INT)")
        cur.execute("INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', 3)")
        conn.commit()
    hostile = ", ".join(
        f"v * {i} AS `{name.replace('`', '``')}`" for i, name in enumerate(HOSTILE_NAMES, start=2)
    )
    root = _cities(tmp_path, mariadb_url, f"SELECT city, at, {hostile} FROM readings")
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    [row] = read_csv(tmp_path / "out" / "Gent" / "20240301.csv")
    assert list(row)[2:] == HOSTILE_NAMES
    assert list(row.values())[2:] == [str(3 * i) for i in range(2, 2 + len(HOSTILE_NAMES))]


def test_two_result_columns_of_one_name_are_a_config_error(mariadb_url: str, tmp_path: Path) -> None:
    """MariaDB refuses them itself in the describe's derived table: a config error, before any claim."""
    source = MariaDbSource(mariadb_url)
    try:
        spec = ReadSpec(select_sql="SELECT 1 AS v, 2 AS v", folder=tmp_path)
        with pytest.raises(
            ConfigError, match=r"select.sql: the query failed: Duplicate column name 'v'; fix the SQL"
        ):
            source.describe(spec)
    finally:
        source.close()


def test_a_value_the_driver_cannot_read_fails_its_partition_by_cause(
    mariadb_url: str, tmp_path: Path
) -> None:
    """A zero DATETIME (0000-00-00, allowed by a lax sql_mode) made MariaDB Connector/Python
    raise "year 0 is out of range", and the partition failed with that text alone. Now the error
    says what it is and what to do, and the other partition of the batch is exported (its YEAR of
    0000 is read as 0)."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(
            "CREATE TABLE readings (city VARCHAR(32) NOT NULL, at DATETIME(6) NOT NULL, y YEAR, d DATETIME)"
        )
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', 0, '2024-01-01'),"
            " ('Leuven', '2024-03-01 10:00:00', 2024, '0000-00-00 00:00:00')"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, y, d FROM readings")
    error = _one_of_two_fails(root, ("Gent", "Leuven"))
    assert error.startswith('["Leuven","2024-03-01"]: ')
    assert "MariaDB's driver could not read a value of this partition (year 0 is out of range)" in error
    assert "in one of the columns 'at', 'd', such as a zero date" in error  # it names none
    assert "such as a zero date (0000-00-00); convert the column in select.sql" in error
    assert read_csv(tmp_path / "out" / "Gent" / "20240301.csv") == [
        {"city": "Gent", "at": "2024-03-01T10:00:00+00:00", "y": "0", "d": "2024-01-01T00:00:00+00:00"}
    ]


def test_dates_with_a_zero_month_or_day_fail_their_partitions_by_cause_after_a_good_one(
    mariadb_url: str, tmp_path: Path
) -> None:
    """A DATE of 2024-00-15, 2024-02-00 or 2024-02-30 (a sql_mode with ALLOW_INVALID_DATES lets
    a table hold them): read alone after its batch failed, such a partition failed with the
    driver's bare "ValueError: month must be in 1..12", which names neither the column nor what
    to do (the driver left the error pending, raised after its fetch had returned)."""
    bad = {"Brugge": "2024-00-15", "Gent": "2024-02-00", "Hasselt": "2024-02-30", "Leuven": "2024-00-15"}
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        names = [f"d{i}" for i in range(len(bad))]
        cur.execute(
            "CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), "
            + ", ".join(f"{n} DATE" for n in names)
            + ")"
        )
        cur.execute("INSERT INTO readings (city, at) VALUES ('Aalst', '2024-03-01 10:00:00')")
        for name, (city, value) in zip(names, bad.items(), strict=True):
            cur.execute(
                f"INSERT INTO readings (city, at, {name}) VALUES (?, '2024-03-01 10:00:00', ?)", (city, value)
            )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, f"SELECT city, at, {', '.join(names)} FROM readings")
    for city in ("Aalst", *bad):
        assert cli(root, "mark", "cities", f"city={city}", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    [summary] = json.loads(ran.stdout)
    assert (summary["exported"], summary["failed"]) == (1, 4), ran.stdout + ran.stderr
    for error in summary["errors"]:
        assert "MariaDB's driver could not read a value of this partition (" in error, error
        assert error.count("MariaDB's driver") == 1, error  # not the batch's error inside its own
        assert "convert the column in select.sql" in error, error


@pytest.mark.parametrize("kind", ["partitioned", "archive"])
def test_a_zero_date_read_without_a_time_parameter_fails_and_is_not_written_as_null(
    mariadb_url: str, tmp_path: Path, kind: str
) -> None:
    """A task without [time], or an archive select without %(export_boundary)s, binds no time:
    the driver then read in the text protocol, where a zero date (0000-00-00, 2024-00-15) is
    NULL without a word. The files held an empty field, and the archive deleted the rows whose
    dates it had not exported."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute("CREATE TABLE readings (id INT PRIMARY KEY, d DATE, dt DATETIME)")
        cur.execute(
            "INSERT INTO readings VALUES (1, '0000-00-00', NULL), (2, '2024-00-15', NULL),"
            " (3, NULL, '0000-00-00 00:00:00'), (4, '2024-01-01', NULL)"
        )
        conn.commit()
    archive = 'kind = "archive"\nformat = "csv"\npath = "all.{ext}"\n'
    root = _task_t(
        tmp_path, mariadb_url, "SELECT id, d, dt FROM readings", archive if kind == "archive" else ""
    )
    if kind == "archive":
        (root / "tasks" / "t" / "delete.sql").write_text("DELETE FROM readings")
    else:
        for i in (1, 2, 3, 4):
            assert cli(root, "mark", "t", f"id={i}").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    errors = json.loads(ran.stdout)[0]["errors"]
    assert errors and all("MariaDB's driver could not read a value of this partition" in e for e in errors)
    assert all("in one of the columns 'd', 'dt', such as a zero date" in e for e in errors), errors
    if kind == "archive":
        assert not (tmp_path / "out" / "all.csv").exists()
        with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM readings")
            assert cur.fetchall() == [(4,)]
    else:
        assert len(errors) == 3
        assert [p.name for p in (tmp_path / "out").glob("*.csv")] == ["4.csv"]


def test_text_that_is_not_utf8_fails_naming_text_not_the_date_columns(
    mariadb_url: str, tmp_path: Path
) -> None:
    """A legacy utf8mb3 column may hold bytes that are no UTF-8 (a lone surrogate, ED A0 80): the
    driver cannot read them, and the partition's error blamed "a zero date" "in column 'dt'", whose
    values were fine, telling the operator to convert a column that was not the problem."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE notes (id INT PRIMARY KEY, dt DATETIME, note VARCHAR(10) CHARACTER SET utf8mb3)"
        )
        cur.execute("INSERT INTO notes VALUES (1, '2024-01-01 00:00:00', x'eda080')")
        conn.commit()
    root = _task_t(tmp_path, mariadb_url, "SELECT id, dt, note FROM notes")
    assert cli(root, "mark", "t", "id=1").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [error] = json.loads(ran.stdout)[0]["errors"]
    assert "zero date" not in error and "'dt'" not in error, error
    assert "not UTF-8" in error and "column 'note'" in error, error


def test_a_batch_of_more_keys_than_a_prepared_statement_takes_is_read_whole(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Rows are read in the binary protocol, whose statements take 65535 parameters at most: a
    task without [time] with a batch_size of 25000 keys failed every partition of the batch with
    "Prepared statement contains too many placeholders" (it was read in the text protocol before)."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE k (id INT PRIMARY KEY, v TEXT)")
        cur.executemany("INSERT INTO k VALUES (?, ?)", [(i, f"v{i}") for i in range(25000)])
        conn.commit()
    source = open_source(mariadb_url)
    try:
        spec = ReadSpec(select_sql="SELECT id, v FROM k", folder=tmp_path, keys=("id",))
        slices = [Slice(keys=(i,)) for i in reversed(range(25000))]
        read = list(source.read(spec, slices, source.describe(spec), "rows"))
    finally:
        source.close()
    assert [index for index, _ in read] == list(range(25000))
    assert all(rows == [(24999 - index, f"v{24999 - index}")] for index, rows in read)


def test_rows_equal_only_under_the_collation_have_one_order_whatever_the_insert_order(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Without a primary key, rows are ordered by every column, so that the same rows give the
    same bytes. A text column's default collation (utf8mb4_general_ci) ties gent, Gent, GENT and
    'gent ': their order was the order the server happened to read them in, and the same rows,
    written again in another order, gave another file (uploaded again as changed)."""
    words = ["gent", "Gent", "GENT", "gent ", "Gënt"]
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, w FROM readings")
    files = []
    for order in (words, words[::-1]):
        with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
            cur = conn.cursor()
            cur.execute(
                "CREATE OR REPLACE TABLE readings (city VARCHAR(32) NOT NULL, at DATETIME(6) NOT NULL,"
                " w VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL)"
            )
            cur.executemany(
                "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', ?)", [(w,) for w in order]
            )
            conn.commit()
        assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
        ran = cli(root, "run", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        files.append((tmp_path / "out" / "Gent" / "20240301.csv").read_bytes())
    assert files[0] == files[1]
    assert [row["w"] for row in read_csv(tmp_path / "out" / "Gent" / "20240301.csv")] == sorted(
        words, key=lambda w: (w.casefold().rstrip().replace("ë", "e"), w.encode())
    )


def test_an_empty_string_is_told_apart_from_null_in_csv(mariadb_url: str, tmp_path: Path) -> None:
    """An empty VARCHAR is ``""`` and NULL an empty field, as on PostgreSQL (both were an empty field)."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), note VARCHAR(8), b VARBINARY(4))"
        )
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', '', ''),"
            " ('Gent', '2024-03-01 10:01:00', NULL, NULL), ('Gent', '2024-03-01 10:02:00', 'x', 'x')"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, note, b FROM readings")
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = (tmp_path / "out" / "Gent" / "20240301.csv").read_text().splitlines()[1:]
    assert [line.split(",", 2)[2] for line in lines] == ['"",\\x', ",", "x,\\x78"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_decimals_are_written_as_mariadb_writes_them_never_with_an_exponent(
    mariadb_url: str, tmp_path: Path, fmt: str
) -> None:
    """A DECIMAL comes from the driver as a Python Decimal, whose str() takes an exponent for
    small values: 0.0000000001 in a DECIMAL(20,10) was written 1E-10, its zero 0E-10."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), d DECIMAL(20,10), e DECIMAL(12,0))"
        )
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', 0.0000000001, 100000000000),"
            " ('Gent', '2024-03-01 10:01:00', 0, 0), ('Gent', '2024-03-01 10:02:00', -0.0000001, -5)"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, d, e FROM readings")
    (root / "sluicegate.toml").write_text((root / "sluicegate.toml").read_text().replace('"csv"', f'"{fmt}"'))
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    path = tmp_path / "out" / "Gent" / f"20240301.{fmt}"
    if fmt == "csv":
        values = [(row["d"], row["e"]) for row in read_csv(path)]
    else:
        values = [(row["d"], row["e"]) for row in map(json.loads, path.read_text().splitlines())]
    assert values == [("0.0000000001", "100000000000"), ("0.0000000000", "0"), ("-0.0000001000", "-5")]


@pytest.mark.parametrize("task_extra", ["", 'primary_key = ["id"]\n'])
def test_an_error_in_the_middle_of_a_batch_fails_its_partition_and_not_the_process(
    mariadb_url: str, tmp_path: Path, task_extra: str
) -> None:
    """MariaDB Connector/Python does not raise an error the server sends in the middle of a
    streamed result: it returned a row of unset values, and reading it crashed the exporter
    (SIGSEGV, no ledger record, the same crash on every retry). With a primary key the error comes
    after the rows of the partitions before it; without one, before any row (the sort needs the
    value). Either way, the partition whose subquery returns two rows fails with the server's
    message, and the others are exported whole."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (id INT, city VARCHAR(32), at DATETIME(6))")
        cur.execute("CREATE TABLE names (city VARCHAR(32), name VARCHAR(32))")
        cur.executemany(
            "INSERT INTO readings VALUES (?, ?, '2024-03-01 10:00:00')",
            [(i, city) for city in ("Gent", "Leuven", "Namur") for i in range(2_000)],
        )
        cur.execute(
            "INSERT INTO names VALUES ('Gent', 'Ghent'), ('Leuven', 'Louvain'), ('Leuven', 'Löwen'), ('Namur', 'Namen')"
        )
        conn.commit()
    select = (
        "SELECT id, city, at, (SELECT name FROM names WHERE names.city = r.city) AS name FROM readings AS r"
    )
    root = _cities(tmp_path, mariadb_url, select)
    task = root / "tasks" / "cities" / "task.toml"
    task.write_text(task_extra + task.read_text())
    for city in ("Gent", "Leuven", "Namur"):
        assert cli(root, "mark", "cities", f"city={city}", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    assert (summary["exported"], summary["failed"]) == (2, 1), summary
    [error] = summary["errors"]
    assert error.startswith('["Leuven","2024-03-01"]: ') and error.endswith(
        "Subquery returns more than 1 row"
    )
    for city, name in (("Gent", "Ghent"), ("Namur", "Namen")):
        rows = read_csv(tmp_path / "out" / city / "20240301.csv")
        assert sorted(int(r["id"]) for r in rows) == list(range(2_000))
        assert {r["name"] for r in rows} == {name}


@contextlib.contextmanager
def _user_with_a_time_limit(mariadb_url: str, seconds: float) -> Iterator[str]:
    """``mariadb_url`` as a new user of its database whose statements run for at most ``seconds``
    (``MAX_STATEMENT_TIME``); the user is dropped on exit."""
    scheme, _, rest = mariadb_url.partition("://")
    host_db = rest.partition("@")[2]
    name = f"slow{uuid.uuid4().hex[:8]}"
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw' WITH MAX_STATEMENT_TIME {seconds}")
        cur.execute(f"GRANT ALL ON `{host_db.partition('/')[2]}`.* TO '{name}'@'%'")
    try:
        yield f"{scheme}://{name}:pw@{host_db}"
    finally:
        with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
            conn.cursor().execute(f"DROP USER '{name}'@'%'")


def test_a_max_statement_time_of_one_partition_is_retried_and_the_rest_of_its_batch_exports(
    mariadb_url: str, tmp_path: Path
) -> None:
    """MariaDB's ``max_statement_time`` (error 1969) cancels the reads of Leuven only, which
    sleep 0.4 s a row. It was a terminal error: Leuven was parked at its first attempt, with no
    hint, where PostgreSQL's ``statement_timeout`` is retried and says to raise the limit. Now
    both are a timeout: the batch is read one partition at a time, Gent and Namur export, and
    Leuven is retried."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (id INT, city VARCHAR(32), at DATETIME(6))")
        cur.executemany(
            "INSERT INTO readings VALUES (?, ?, '2024-03-01 10:00:00')",
            [(i, city) for city in ("Gent", "Leuven", "Namur") for i in range(4)],
        )
        conn.commit()
    select = "SELECT id, city, at, IF(city = 'Leuven', SLEEP(0.4), 0) AS s FROM readings"
    with _user_with_a_time_limit(mariadb_url, 1) as slow_url:
        root = _cities(tmp_path, slow_url, select)
        toml = root / "sluicegate.toml"  # retried on a later run, not at once until parked
        toml.write_text(toml.read_text().replace('backoff = "0s"', 'backoff = "1h"'))
        for city in ("Gent", "Leuven", "Namur"):
            assert cli(root, "mark", "cities", f"city={city}", "day=2024-03-01").returncode == 0
        ran = cli(root, "run", "--json")
        status = cli(root, "status", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    assert (summary["exported"], summary["failed"]) == (2, 1), summary
    [error] = summary["errors"]
    assert error.startswith('["Leuven","2024-03-01"]: ') and error.endswith(
        "(max_statement_time exceeded) (raise it or make the query faster); will retry"
    ), error
    [task] = json.loads(status.stdout)
    assert (task["exported"], task["retrying"], task["failed"]) == (2, 1, 0), task
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.csv")) == ["20240301.csv"] * 2


def test_a_query_killed_by_an_operator_is_retried_not_parked(mariadb_url: str, tmp_path: Path) -> None:
    """An operator ends the export's query with ``KILL QUERY`` (error 1317, "Query execution was
    interrupted"). That is no fault of the partition's rows, but the error was terminal: the
    partition was parked at its first attempt, and stayed so until someone ran ``retry``."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (id INT, city VARCHAR(32), at DATETIME(6))")
        cur.executemany(
            "INSERT INTO readings VALUES (?, 'Leuven', '2024-03-01 10:00:00')", [(i,) for i in range(4)]
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT id, city, at, SLEEP(5) AS s FROM readings")
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('backoff = "0s"', 'backoff = "1h"'))
    assert cli(root, "mark", "cities", "city=Leuven", "day=2024-03-01").returncode == 0
    killed: list[int] = []

    def kill_the_export() -> None:
        with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
            cur = conn.cursor()
            for _ in range(200):
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE '%SLEEP(5)%'"
                    " AND id <> CONNECTION_ID()"
                )
                if found := [row[0] for row in cur.fetchall()]:
                    cur.execute(f"KILL QUERY {int(found[0])}")
                    killed.append(found[0])
                    return
                threading.Event().wait(0.05)

    killer = threading.Thread(target=kill_the_export)
    killer.start()
    ran = cli(root, "run", "--json")
    killer.join()
    assert killed and ran.returncode == 1, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    [error] = summary["errors"]
    assert error.endswith("Query execution was interrupted; will retry"), error
    [task] = json.loads(cli(root, "status", "--json").stdout)
    assert (task["retrying"], task["failed"]) == (1, 0), task


def test_a_float_column_is_written_as_postgresql_writes_a_real(mariadb_url: str, tmp_path: Path) -> None:
    """A FLOAT is single precision (like PostgreSQL's ``real``): the docs write it with the digits
    of its single-precision value. The driver widens it to a double, and CSV took the double's
    digits: 0.1 was written 0.10000000149011612."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), f FLOAT, d DOUBLE)")
        cur.executemany(
            "INSERT INTO readings VALUES ('Gent', ?, ?, 0.1)",
            [
                (f"2024-03-01 10:0{i}:00", v)
                for i, v in enumerate([0.1, 1234567.0, 123456.0, 1e-05, -2.5, 3.4028234663852886e38, None])
            ],
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, f, d FROM readings")
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = read_csv(tmp_path / "out" / "Gent" / "20240301.csv")
    assert [r["f"] for r in rows] == ["0.1", "1.234567e+06", "123456", "1e-05", "-2.5", "3.4028235e+38", ""]
    assert {r["d"] for r in rows} == {"0.1"}


def test_a_value_parquet_cannot_hold_names_a_cast_mariadb_accepts(mariadb_url: str, tmp_path: Path) -> None:
    """A BIGINT UNSIGNED above 2^63 does not fit Parquet's int64: the partition fails naming the
    column and a cast. The cast it named, CAST(ub AS TEXT), is a syntax error on MariaDB."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), ub BIGINT UNSIGNED)")
        cur.execute("INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', 18446744073709551615)")
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, ub FROM readings", fmt="parquet")
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [error] = json.loads(ran.stdout)[0]["errors"]
    assert "column 'ub' (int) could not be encoded as Parquet" in error
    assert "CAST(ub AS TEXT) AS ub (AS CHAR on MariaDB;" in error
    (root / "tasks" / "cities" / "select.sql").write_text(
        "SELECT city, at, CAST(ub AS CHAR) AS ub FROM readings"
    )
    assert cli(root, "reexport", "cities", "city=Gent").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_rows_of_a_float_key_are_exported(mariadb_url: str, tmp_path: Path) -> None:
    """A FLOAT key comes from a scan as the digits of its single-precision value (0.1), and the
    batch compared the FLOAT column with that double: 0.1 and -3.3 were marked and "exported" as
    files without their rows. (A trigger is refused for a FLOAT key: see below.)"""
    root = _readings(tmp_path, mariadb_url, "FLOAT", "scan")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')", [(0.1,), (1.5,), (-3.3,)]
        )
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _ids_by_file(tmp_path / "out") == {
        "0.1/20240301.csv": ["1"], "1.5/20240301.csv": ["2"], "-3.3/20240301.csv": ["3"],
    }  # fmt: skip


def test_install_refuses_a_float_key_column_whose_values_a_trigger_records_inexactly(
    mariadb_url: str, tmp_path: Path
) -> None:
    """The trigger's JSON_ARRAY writes a FLOAT with 6 significant digits: 1.2345678 was recorded as
    1.23457, which matches no row, and its partition was marked exported with no rows."""
    root = _readings(tmp_path, mariadb_url, "FLOAT", "trigger", install=False)
    installed = cli(root, "install")
    assert installed.returncode == 2, installed.stdout + installed.stderr
    assert "[capture] keys.city: column 'city' of readings is FLOAT, which a capture trigger records" in (
        installed.stderr
    )


@pytest.mark.parametrize("kind", ["VARBINARY(8)", "BIT(3)", "BLOB"])
def test_install_refuses_a_bytes_key_column_that_would_fail_the_tables_writes(
    mariadb_url: str, tmp_path: Path, kind: str
) -> None:
    """The trigger's JSON_ARRAY of a VARBINARY key x'00ff' is no UTF-8 text: the inbox refused
    it and the application's INSERT failed ("Incorrect string value"); a BIT key was recorded as
    a control character, and every run failed with a JSONDecodeError traceback."""
    root = _readings(tmp_path, mariadb_url, kind, "trigger", install=False)
    installed = cli(root, "install")
    assert installed.returncode == 2, installed.stdout + installed.stderr
    assert f"[capture] keys.city: column 'city' of readings is {kind.split('(')[0]}, whose bytes" in (
        installed.stderr
    )
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        value = "b'101'" if kind.startswith("BIT") else "x'00ff'"
        conn.cursor().execute(f"INSERT INTO readings (city, at) VALUES ({value}, '2024-03-01 10:00:00')")
        conn.commit()


@pytest.mark.parametrize("how", ["scan", "backfill"])
def test_a_key_of_a_type_no_partition_key_holds_is_set_aside_not_a_traceback(
    mariadb_url: str, tmp_path: Path, how: str
) -> None:
    """A scan or a backfill reads a TIME key as a timedelta and a VARBINARY one as bytes, which a
    partition key (JSON) cannot hold: the run (or the backfill) died with a TypeError traceback,
    and the other keys' rows were never exported. Now the change is set aside with a warning."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute(
            "CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city VARCHAR(8), t TIME,"
            " b VARBINARY(8), at DATETIME(6) NOT NULL)"
        )
        conn.cursor().execute(
            "INSERT INTO readings (city, t, b, at) VALUES ('Gent', '-10:00:00', x'00ff', '2024-03-01 10:00:00')"
        )
        conn.commit()
    capture = (
        '[capture]\nmode = "scan"\ntable = "readings"\ntime = "at"\ncursor = "at"\n' if how == "scan" else ""
    )
    root = _cities(tmp_path, mariadb_url, "SELECT city, t, b, at FROM readings", capture)
    task = root / "tasks" / "cities" / "task.toml"
    task.write_text(
        task.read_text().replace('"city"]', '"city", "t", "b"]').replace("{city}/", "{city}/{t}/{b}/")
    )
    if how == "backfill":
        filled = cli(root, "backfill", "cities")
        assert filled.returncode == 0, filled.stdout + filled.stderr
        assert (
            "of a type no key holds has no partition and is not exported; use an integer or text key column"
            in filled.stderr
        )
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    if how == "scan":
        assert (
            "of a type no key holds has no partition and is not exported; use an integer or text key column"
            in ran.stderr
        )


def test_a_scan_cursor_that_holds_no_time_is_a_config_error_not_a_traceback(
    mariadb_url: str, tmp_path: Path
) -> None:
    """`[capture] cursor = "id"` (an AUTO_INCREMENT, which grows with every write too): the scan's
    max(id) was parsed as an ISO 8601 time and every run died with a ValueError traceback. And
    `check` passed it: the first run with a row in the table failed."""
    root = _readings(tmp_path, mariadb_url, "VARCHAR(8)", "scan", cursor="id")
    problem = "[capture] cursor: column 'id' of readings is int, not a time; name a column holding the time"
    checked = cli(root, "check")
    said = checked.stdout + checked.stderr
    assert checked.returncode == 2 and problem in said, said
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("INSERT INTO readings (city, at) VALUES ('Gent', '2024-03-01 10:00:00')")
        conn.commit()
    ran = cli(root, "run")
    assert "Traceback" not in ran.stderr and ran.returncode == 2, ran.stdout + ran.stderr
    assert problem in ran.stderr


def test_a_year_key_of_0000_from_the_trigger_is_exported_not_a_traceback(
    mariadb_url: str, tmp_path: Path
) -> None:
    """MariaDB's JSON_ARRAY writes a YEAR of 0 as the number 0000, which is no JSON: every run
    died in the fold with a JSONDecodeError traceback, and no change of the task was folded again."""
    root = _readings(tmp_path, mariadb_url, "YEAR", "trigger")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')", [(0,), (2024,)]
        )
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _ids_by_file(tmp_path / "out") == {
        "0/20240301.csv": ["1"], "2024/20240301.csv": ["2"],
    }  # fmt: skip


@pytest.mark.parametrize("how", ["trigger", "scan"])
def test_a_row_at_a_zero_date_is_set_aside_with_a_warning(mariadb_url: str, tmp_path: Path, how: str) -> None:
    """A lax sql_mode lets a DATETIME hold 2024-03-00, whose 15-minute bin MariaDB computes as
    NULL: a scan died with a TypeError traceback on every run (nothing of the task was marked
    again), and the trigger's change was dropped without a word."""
    root = _readings(tmp_path, mariadb_url, "VARCHAR(8)", how)
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(
            "INSERT INTO readings (city, at) VALUES ('Gent', '2024-03-00 10:00:00'), ('Namur', '2024-03-01 10:00:00')"
        )
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "a change to city=Gent at a NULL or zero time (0000-00-00) has no partition" in ran.stderr
    assert [r["id"] for r in read_csv(tmp_path / "out" / "Namur" / "20240301.csv")] == ["2"]


def test_a_backfill_counts_rows_at_a_zero_date_and_marks_the_others(mariadb_url: str, tmp_path: Path) -> None:
    """The backfill's min() and max() of the time column returned a DATETIME 2024-03-00 (a lax
    sql_mode lets it in), which MariaDB Connector/Python cannot read: the backfill died with a
    SystemError traceback and marked nothing."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (id INT AUTO_INCREMENT PRIMARY KEY, city VARCHAR(8), at DATETIME(6))"
        )
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(
            "INSERT INTO readings (city, at) VALUES ('Gent', '2024-03-00 10:00:00'), ('Namur', '2024-03-01 10:00:00')"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT id, city, at FROM readings")
    filled = cli(root, "backfill", "cities")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert "1 row(s) at a time before 0001-01-03 or after 9999-12-29 UTC (or infinity, a zero date)" in (
        filled.stderr
    )
    assert cli(root, "run").returncode == 0
    assert [r["id"] for r in read_csv(tmp_path / "out" / "Namur" / "20240301.csv")] == ["2"]


def test_a_float_key_is_one_partition_whoever_reads_it(mariadb_url: str, tmp_path: Path) -> None:
    """The driver reads a FLOAT as 0.1 in a query without parameters and as 0.10000000149011612 in
    one with them (a backfill's, a scan's after the first): the same rows were marked under both
    keys, and written twice, to 0.1/... by the first scan and to 0.10000000149011612/... by a backfill."""
    root = _readings(tmp_path, mariadb_url, "FLOAT", "scan")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')",
            [(0.1,), (-3.3,), (16777216.0,)],
        )
        conn.commit()
    assert cli(root, "backfill", "cities").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _ids_by_file(tmp_path / "out") == {
        "0.1/20240301.csv": ["1"], "-3.3/20240301.csv": ["2"], "16777216/20240301.csv": ["3"],
    }  # fmt: skip


def test_a_scan_reads_a_year_key_of_0000(mariadb_url: str, tmp_path: Path) -> None:
    """MariaDB Connector/Python cannot read a YEAR of 0000 sent by the text protocol (a query
    without parameters, such as a task's first scan): every run died with a SystemError traceback."""
    root = _readings(tmp_path, mariadb_url, "YEAR", "scan")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("INSERT INTO readings (city, at) VALUES (0, '2024-03-01 10:00:00')")
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [r["id"] for r in read_csv(tmp_path / "out" / "0" / "20240301.csv")] == ["1"]


@pytest.mark.parametrize("how", ["trigger", "scan"])
def test_a_key_longer_than_the_ledger_holds_is_set_aside_not_every_runs_failure(
    mariadb_url: str, tmp_path: Path, how: str
) -> None:
    """The MariaDB ledger's pkey is a VARCHAR(512): one change to a 600-character city failed the
    mark of every change with "Data too long for column 'pkey'", on every run, so no row of the
    task was exported again. Now that one change is set aside with a warning; `mark` refuses it."""
    root = _readings(tmp_path, mariadb_url, "VARCHAR(1000)", how)
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')", [("x" * 600,), ("Gent",)]
        )
        conn.commit()
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "is longer than the ledger's 512 characters; it is not marked or exported" in ran.stderr
    assert _ids_by_file(tmp_path / "out") == {"Gent/20240301.csv": ["2"]}
    marked = cli(root, "mark", "cities", f"city={'x' * 600}", "day=2024-03-01")
    assert marked.returncode == 2 and "Traceback" not in marked.stderr, marked.stdout + marked.stderr
    assert "is longer than the ledger's 512 characters; no partition can have it" in marked.stderr


def test_mark_of_a_bigint_unsigned_key_above_2_63_is_the_partition_capture_marks(
    mariadb_url: str, tmp_path: Path
) -> None:
    """`mark city=18446744073709551615` kept the value as text (beyond a signed 64-bit integer),
    a second partition beside the integer one the scan marks: with both pending, the run failed
    (exit 1) saying they would share a file, to be fixed by a path "using every key whole"."""
    root = _readings(tmp_path, mariadb_url, "BIGINT UNSIGNED", "scan")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')", [(2**64 - 1,), (2**64 - 2,)]
        )
        conn.commit()
    assert cli(root, "mark", "cities", f"city={2**64 - 1}", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)[0]["exported"] == 2
    assert _ids_by_file(tmp_path / "out") == {
        "18446744073709551615/20240301.csv": ["1"], "18446744073709551614/20240301.csv": ["2"],
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["TIME", "TIME(6)"])
@pytest.mark.parametrize("how", ["scan", "backfill"])
def test_a_time_key_is_the_partition_the_trigger_marks(
    mariadb_url: str, tmp_path: Path, kind: str, how: str
) -> None:
    """A trigger records a TIME key as its text (10:00:00, -10:00:00.000000 for a TIME(6)); a scan
    or backfill read it as a timedelta and set every row aside ("a change to city=-1 day, 14:00:00
    of a type no key holds"), so the rows a table held before the triggers were never exported."""
    root = _readings(tmp_path, mariadb_url, kind, "scan" if how == "scan" else "trigger", install=False)
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (city, at) VALUES (?, '2024-03-01 10:00:00')",
            [("10:00:00",), ("-10:00:00",), ("838:59:59",), ("00:00:01.5",)],
        )
        conn.commit()
    if how == "backfill":
        assert cli(root, "install").returncode == 0
        with contextlib.closing(mariadb_connect(mariadb_url)) as conn:  # the trigger marks 10:00:00 too
            conn.cursor().execute("UPDATE readings SET at = at WHERE id = 1")
            conn.cursor().execute("INSERT INTO readings VALUES (100, '10:00:00', '2024-03-01 11:00:00')")
            conn.commit()
        filled = cli(root, "backfill", "cities")
        assert filled.returncode == 0 and "no key holds" not in filled.stderr, filled.stdout + filled.stderr
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0 and "no key holds" not in ran.stderr, ran.stdout + ran.stderr
    fraction = ".000000" if kind == "TIME(6)" else ""
    assert _ids_by_file(tmp_path / "out") == {
        f"10:00:00{fraction}/20240301.csv": ["1"] + (["100"] if how == "backfill" else []),
        f"-10:00:00{fraction}/20240301.csv": ["2"],
        f"838:59:59{fraction}/20240301.csv": ["3"],
        ("00:00:01.500000" if fraction else "00:00:01") + "/20240301.csv": ["4"],
    }


def test_a_quote_escaped_with_a_backslash_is_refused_at_check_not_failed_per_partition(
    mariadb_url: str, tmp_path: Path
) -> None:
    """MariaDB takes 'don\\'t' as one string, MariaDB Connector/Python ends the string at the
    backslash's quote: the batch query's ? parameters after the select were hidden from it, and
    every partition failed with "You have an error in your SQL syntax", while check said ok."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6))")
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00'), ('don''t', '2024-03-01 11:00:00')"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at FROM readings WHERE city <> 'don\\'t'")
    checked = cli(root, "check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "select.sql: MariaDB Connector/Python misreads this query" in checked.stderr
    assert "write the quote doubled" in checked.stderr and "Traceback" not in checked.stderr
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    refused = cli(root, "run", "--json")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    [summary] = json.loads(refused.stdout)
    assert summary["config_error"] and "write the quote doubled" in summary["task_errors"][0]
    (root / "tasks" / "cities" / "select.sql").write_text(
        "SELECT city, at FROM readings WHERE city <> 'don''t'"
    )
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [r["city"] for r in read_csv(tmp_path / "out" / "Gent" / "20240301.csv")] == ["Gent"]


def test_a_column_named_with_a_quote_is_not_taken_for_an_escaped_quote(
    mariadb_url: str, tmp_path: Path
) -> None:
    """describe probed the select alone with a ? after it: a result column named `don't` (its quote
    also in the reads' projection and ORDER BY, where the driver's misreading evens out) ran in every
    read, but check and run refused it (exit 2) as "a quote escaped with a backslash"."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6))")
        cur.execute("INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00')")
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, 1 AS `don't` FROM readings")
    checked = cli(root, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [r["don't"] for r in read_csv(tmp_path / "out" / "Gent" / "20240301.csv")] == ["1"]


@pytest.mark.parametrize(
    "select",
    [
        "SELECT city, at FROM readings -- the city's readings\nWHERE 1",
        'SELECT city, at FROM readings WHERE city <> "x\'y"',
    ],
)
def test_a_quote_in_a_comment_or_the_other_quotes_string_is_refused_with_what_to_do(
    mariadb_url: str, tmp_path: Path, select: str
) -> None:
    """The driver also takes a quote in a comment, or in a "..." string, for the start of a string:
    check refused such a select saying only "write the quote doubled", which in "x'y" changes the
    value compared ("x''y") and in a comment is no answer."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6))")
    checked = cli(_cities(tmp_path, mariadb_url, select), "check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "in a comment" in checked.stderr and "of the other quote" in checked.stderr, checked.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_negative_tinyint_is_written_negative_and_is_its_own_partition(
    mariadb_url: str, tmp_path: Path, fmt: str
) -> None:
    """MariaDB Connector/Python reads a signed TINYINT (BOOLEAN, TINYINT(1)) of a result with
    parameters as its byte unsigned: the files held 255 where the table holds -1, and 128 for
    -128; a backfill marked a TINYINT key of -1 as 255, whose partition had no rows."""
    root = _readings(tmp_path, mariadb_url, "TINYINT", "scan")
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("ALTER TABLE readings ADD flag BOOLEAN, ADD t TINYINT(1), ADD u TINYINT UNSIGNED")
        cur.executemany(
            "INSERT INTO readings (city, at, flag, t, u) VALUES (?, '2024-03-01 10:00:00', ?, ?, ?)",
            [(-1, -1, -128, 255), (-1, 1, 127, 128), (7, None, 0, 0)],
        )
        conn.commit()
    (root / "tasks" / "cities" / "select.sql").write_text("SELECT id, city, at, flag, t, u FROM readings")
    (root / "sluicegate.toml").write_text((root / "sluicegate.toml").read_text().replace('"csv"', f'"{fmt}"'))
    assert cli(root, "backfill", "cities").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.glob(f"*/*.{fmt}")) == [
        f"-1/20240301.{fmt}", f"7/20240301.{fmt}",
    ]  # fmt: skip
    path = out / "-1" / f"20240301.{fmt}"
    if fmt == "csv":
        rows = [{k: r[k] for k in ("city", "flag", "t", "u")} for r in read_csv(path)]
        assert rows == [
            {"city": "-1", "flag": "-1", "t": "-128", "u": "255"},
            {"city": "-1", "flag": "1", "t": "127", "u": "128"},
        ]
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path, columns=["city", "flag", "t", "u"]).to_pylist()
    else:
        rows = [
            {k: r[k] for k in ("city", "flag", "t", "u")}
            for r in map(json.loads, path.read_text().splitlines())
        ]
    assert rows == [
        {"city": -1, "flag": -1, "t": -128, "u": 255},
        {"city": -1, "flag": 1, "t": 127, "u": 128},
    ]


def test_a_decimal_of_a_scale_above_30_is_its_parquet_decimal(mariadb_url: str, tmp_path: Path) -> None:
    """The driver's description gives a DECIMAL of a scale above 30 a scale of 0: DECIMAL(31,31)
    was taken as decimal128(32, 0), and its Parquet column refused 0.5 ("Rescaling Decimal value
    would cause data loss"), so the partition failed on every run."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), a DECIMAL(31,31),"
            " b DECIMAL(37,37) UNSIGNED, c DECIMAL(38,31), d DECIMAL(65,30))"
        )
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', 0.5, 0.0000000000000000000000000000000000001,"
            " -1234567.0000000000000000000000000000001, -12345678901234567890123456789012345.5)"
        )
        conn.commit()
    root = _cities(tmp_path, mariadb_url, "SELECT city, at, a, b, c, d FROM readings", fmt="parquet")
    assert cli(root, "mark", "cities", "city=Gent", "day=2024-03-01").returncode == 0
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "Gent" / "20240301.parquet", columns=["a", "b", "c", "d"])
    assert [f.type for f in table.schema] == [
        pa.decimal128(31, 31), pa.decimal128(37, 37), pa.decimal128(38, 31), pa.string(),
    ]  # fmt: skip
    assert table.to_pylist() == [
        {
            "a": decimal.Decimal("0.5000000000000000000000000000000"),
            "b": decimal.Decimal("0.0000000000000000000000000000000000001"),
            "c": decimal.Decimal("-1234567.0000000000000000000000000000001"),
            "d": "-12345678901234567890123456789012345.500000000000000000000000000000",
        }
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_time_a_file_cannot_hold_names_a_cast_mariadb_accepts(
    mariadb_url: str, tmp_path: Path, fmt: str
) -> None:
    """A DATETIME of 0001-01-01 01:00 is in year 0 in New York, which no file can hold: its
    partition fails (the other is exported), and the message named only PostgreSQL's remedies
    (isfinite(x), x::text), which are errors on MariaDB. The cast it names now works there."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE readings (city VARCHAR(32), at DATETIME(6), e DATETIME(6))")
        cur.execute(
            "INSERT INTO readings VALUES ('Gent', '2024-03-01 10:00:00', '0001-01-01 01:00:00'),"
            " ('Namur', '2024-03-01 10:00:00', '9999-12-31 23:59:59.999999')"
        )
        conn.commit()
    select = "SELECT city, at, e FROM readings"
    root = _cities(tmp_path, mariadb_url, select, 'zone = "America/New_York"\n', fmt=fmt)
    error = _one_of_two_fails(root, ("Gent", "Namur"))
    assert error.startswith('["Gent","2024-03-01"]: column \'e\' holds a time outside the years 1 to 9999')
    assert (
        "on MariaDB CASE WHEN x >= '0001-01-02' AND x < '9999-12-31' THEN x END, or CAST(x AS CHAR))" in error
    )
    for fix, value in (
        ("CASE WHEN e >= '0001-01-02' AND e < '9999-12-31' THEN e END", ""),
        ("CAST(e AS CHAR)", "0001-01-01 01:00:00.000000"),
    ):
        (root / "tasks" / "cities" / "select.sql").write_text(f"SELECT city, at, {fix} AS e FROM readings")
        assert cli(root, "reexport", "cities", "city=Gent").returncode == 0
        ran = cli(root, "run", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        path = tmp_path / "out" / "Gent" / f"20240301.{fmt}"
        if fmt == "csv":
            assert [r["e"] for r in read_csv(path)] == [value]
        else:
            assert [json.loads(line)["e"] for line in path.read_text().splitlines()] == [value or None]


INCREMENTAL = (
    'kind = "incremental"\nentity = "city"\ncursor = "at"\nzone = "UTC"\nbootstrap = "beginning"\n'
    'safety_margin = "0s"\npath = "{city}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.{ext}"\n'
)


@pytest.mark.parametrize("kind", ["partitioned", "incremental"])
def test_a_source_connection_killed_while_idle_is_opened_again_and_the_run_goes_on(
    mariadb_url: str, tmp_path: Path, kind: str
) -> None:
    """The source's connection is killed while idle (``KILL``; a restart, ``wait_timeout``, a
    network blip), here once the first file is published: on PostgreSQL the next small query
    failed the whole task (exit 1, status "last run failed"). On MariaDB every use pings the
    connection first and opens a new one, so both cities are exported and no task error is left."""
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("CREATE TABLE readings (id INT, city VARCHAR(32), at DATETIME(6))")
        conn.cursor().execute(
            "INSERT INTO readings VALUES (1, 'Gent', '2024-03-01 10:00:00'), (2, 'Leuven', '2024-03-01 11:00:00')"
        )
    root = _task_t(tmp_path, mariadb_url, "SELECT id, city, at FROM readings")
    task = root / "tasks" / "t" / "task.toml"
    task.write_text('keys = ["city"]\npath = "{city}/{day:%Y%m%d}.{ext}"\n[time]\ncolumn = "at"\n')
    if kind == "incremental":
        task.write_text(INCREMENTAL)
    settings = root / "sluicegate.toml"
    settings.write_text(
        settings.read_text().replace("[defaults]\n", "[defaults]\nbatch_size = 1\n")
        + f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n[testing]\nfault = "after_publish"\n'
    )  # the ledger elsewhere: the idle connections in the database are the source's
    for city in ("Gent", "Leuven") if kind == "partitioned" else ():
        assert cli(root, "mark", "t", f"city={city}", "day=2024-03-01").returncode == 0
    killed: list[int] = []
    killer = threading.Thread(target=_kill_idle_at, args=(root / ".fault-after_publish", mariadb_url, killed))
    killer.start()
    ran = cli(root, "run", "--json")
    killer.join()
    assert killed and ran.returncode == 0, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    assert (summary["exported"], summary["task_errors"]) == (2, []), summary
    [task_status] = json.loads(cli(root, "status", "--json").stdout)
    assert "task_error" not in task_status, task_status


def _kill_idle_at(marker: Path, mariadb_url: str, killed: list[int]) -> None:
    """Once the run pauses at ``marker``'s fault point, KILL the idle connections to the database
    (found by user, database and command 'Sleep'), then let the run go on."""
    for _ in range(600):
        threading.Event().wait(0.05)
        if marker.exists():
            with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
                cur = conn.cursor()
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE command = 'Sleep'"
                    " AND user = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AND db = DATABASE()"
                    " AND id <> CONNECTION_ID()"
                )
                for (found,) in cur.fetchall():
                    cur.execute(f"KILL {int(found)}")
                    killed.append(found)
            marker.unlink()
            return
