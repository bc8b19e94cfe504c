"""The load stage of blocks tasks on PostgreSQL, SQLite and MariaDB: the table sink's modes.

A project module extracts three trips per hour block (no HTTP); the load writes them into a
table of each database: by key (a rerun after a crash leaves one row per trip, rows the
database refuses are counted and the others written) or replacing the table's rows. On
SQLite and PostgreSQL the table is in the ledger database, so the rows and the (block,
stage) record commit in one transaction; the MariaDB table is in another database (the
ledger is SQLite), so the record follows the rows' commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.tabledb import TableDb
from support import SLUICEGATE

ETL = """
def trips(block, config):
    base = int(block.start.timestamp() * 1000)
    return [{"trip_id": f"{block.key_value}-{base}-{i}", "duration": 60 * (i + 1), "end_time": base + i}
            for i in range(3)]
"""
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.pg),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
# A table the load does not create: the database refuses trips of 150 s or more.
TABLE = {
    "sqlite": "CREATE TABLE trips (trip_id TEXT PRIMARY KEY, duration INTEGER CHECK (duration < 150), "
    "end_time TEXT)",
    "postgresql": "CREATE TABLE trips (trip_id text PRIMARY KEY, duration bigint CHECK (duration < 150), "
    "end_time timestamptz)",
    "mariadb": "CREATE TABLE trips (trip_id VARCHAR(64) PRIMARY KEY, duration BIGINT CHECK (duration < 150), "
    "end_time DATETIME(6))",
}
ONE_BLOCK = ["--time-max", "2020-3-1-1"]


@pytest.fixture(params=BACKENDS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(source and ledger, the load's table): the same database but on MariaDB."""
    sqlite = f"sqlite:///{tmp_path / 'data.db'}"
    if request.param == "sqlite":
        return sqlite, sqlite
    if request.param == "pg":
        pg: str = request.getfixturevalue("pg_url")
        return pg, pg
    return sqlite, request.getfixturevalue("mariadb_url")


def project(
    root: Path, urls: tuple[str, str], *, mode: str = "upsert", create: bool = True, testing: str = ""
) -> Path:
    source, table = urls
    mode_line = "" if mode == "upsert" else f'mode = "{mode}"'  # upsert: the default, as before modes
    (root / "tasks" / "trips").mkdir(parents=True, exist_ok=True)
    (root / "etl.py").write_text(ETL)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{source}"\n[destination]\nurl = "out"\n'
        f'[defaults]\nlease = "3s"\nbackoff = "0s"\n{testing}'
    )
    (root / "tasks" / "trips" / "task.toml").write_text(
        textwrap.dedent(
            f"""
            kind = "blocks"
            zone = "UTC"
            key = "provider"
            keys = ["lime"]
            stages = ["extract", "load"]
            [extract]
            callable = "etl:trips"
            [load]
            url = "{table}"
            table = "trips"
            {mode_line}
            key = ["trip_id"]
            create = {str(create).lower()}
            columns = {{ trip_id = "text", duration = "int", end_time = "epoch_ms" }}
            """
        )
    )
    return root


def forget_etl() -> None:
    """Drop a project's ``etl`` module and folder from this process (other tests have their own)."""
    sys.modules.pop("etl", None)
    sys.path[:] = [p for p in sys.path if not Path(p, "etl.py").exists()]


@pytest.fixture(autouse=True)
def _own_etl() -> Iterator[None]:
    forget_etl()
    yield
    forget_etl()


def blocks(root: Path, *args: str) -> Any:
    forget_etl()
    result = CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *args])
    assert result.exit_code == 0, result.output
    return result


def rows(url: str) -> list[tuple[Any, ...]]:
    db = TableDb(url)
    try:
        return db.query("SELECT trip_id, duration FROM trips ORDER BY trip_id")[1]
    finally:
        db.close()


def load_row(source: str) -> tuple[Any, ...]:
    """The load's ledger row: status, attempts, records total, processed, errors, error."""
    db = TableDb(source)
    table = "sluicegate.blocks" if db.flavor == "postgresql" else "sluicegate_blocks"
    try:
        _, found = db.query(
            f"SELECT status, attempts, records_total, records_processed, records_errors, error FROM {table} "
            "WHERE stage = 'load'"
        )
    finally:
        db.close()
    [row] = found
    return tuple(row)


def create_table(url: str) -> None:
    db = TableDb(url)
    try:
        db.execute(TABLE[db.flavor])
    finally:
        db.close()


def test_an_upsert_counts_the_rows_the_database_refuses_and_a_second_load_updates_the_others(
    tmp_path: Path, urls: tuple[str, str]
) -> None:
    create_table(urls[1])
    root = project(tmp_path, urls, create=False)
    blocks(root, *ONE_BLOCK)
    status, attempts, total, processed, errors, error = load_row(urls[0])
    assert (status, attempts, total, processed, errors) == ("done", 0, 3, 2, 1)
    assert "trip_id='lime-1583020800000-2'" in error and "duration" in error.lower()
    assert [r[1] for r in rows(urls[1])] == [60, 120]
    blocks(root, *ONE_BLOCK, "--force", "--stage", "load")
    assert load_row(urls[0])[:5] == ("done", 0, 3, 2, 1)
    assert [r[1] for r in rows(urls[1])] == [60, 120]  # updated in place, not twice


def test_a_replace_leaves_exactly_the_last_blocks_rows(tmp_path: Path, urls: tuple[str, str]) -> None:
    root = project(tmp_path, urls, mode="replace")
    blocks(root, "--time-max", "2020-3-1-2", "--interval", "2")  # oldest block first
    assert [r[0] for r in rows(urls[1])] == [f"lime-1583024400000-{i}" for i in range(3)]
    blocks(root, *ONE_BLOCK, "--force", "--stage", "load")
    assert [r[0] for r in rows(urls[1])] == [f"lime-1583020800000-{i}" for i in range(3)]


CASE_ETL = """
def trips(block, config):
    return [{"trip_id": t, "duration": d, "end_time": 0}
            for d, t in enumerate(["Trip-A", "trip-a", "trip-a ", "trip-\u00e1"], 1)]
"""


def test_a_created_table_keeps_ids_that_differ_only_by_case_accent_or_trailing_space_apart(
    tmp_path: Path, urls: tuple[str, str]
) -> None:
    """On MariaDB the created table's text key took the server's default collation, which takes
    ``Trip-A``, ``trip-a``, ``trip-a `` and ``trip-á`` for one id: the load counted four records
    processed and the table held one row."""
    root = project(tmp_path, urls)
    (root / "etl.py").write_text(CASE_ETL)
    blocks(root, *ONE_BLOCK)
    assert load_row(urls[0])[:5] == ("done", 0, 4, 4, 0)
    assert sorted(r[1] for r in rows(urls[1])) == [1, 2, 3, 4]
    blocks(root, *ONE_BLOCK, "--force", "--stage", "load")  # upserted again: still one row each
    assert sorted(r[1] for r in rows(urls[1])) == [1, 2, 3, 4]


def test_a_load_killed_after_its_commit_leaves_one_row_per_trip_and_a_rerun_completes_it(
    tmp_path: Path, urls: tuple[str, str]
) -> None:
    """SIGKILL once the rows are committed: in the ledger database the record committed with
    them; elsewhere it is missing, and the block's load runs again after the lease."""
    source, table = urls
    shared = source == table
    root = project(tmp_path, urls, testing='[testing]\nfault = "after_load_commit"\n')
    blocks(root, *ONE_BLOCK, "--stage", "extract")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    proc = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "blocks", "trips", *ONE_BLOCK],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    fault = root / ".fault-after_load_commit"
    deadline = time.monotonic() + 60
    while not fault.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach after_load_commit"
        time.sleep(0.05)
    os.kill(int(fault.read_text()), signal.SIGKILL)
    proc.wait(timeout=30)
    fault.unlink()
    assert load_row(source)[:2] == (("done", 0) if shared else ("running", 0))
    assert [r[1] for r in rows(table)] == [60, 120, 180]
    project(tmp_path, urls)  # no fault any more
    time.sleep(3.5)  # the dead run's lease
    blocks(root, *ONE_BLOCK)
    assert load_row(source)[:5] == ("done", 0 if shared else 1, 3, 3, 0)
    assert [r[1] for r in rows(table)] == [60, 120, 180]


def test_check_names_a_missing_column_of_the_load_table(tmp_path: Path, urls: tuple[str, str]) -> None:
    db = TableDb(urls[1])
    try:
        db.execute("CREATE TABLE trips (trip_id VARCHAR(64) PRIMARY KEY, duration BIGINT)")
    finally:
        db.close()
    root = project(tmp_path, urls, create=False)
    forget_etl()
    result = CliRunner().invoke(main, ["-C", str(root), "check"])
    assert result.exit_code == 2
    assert "[load] table trips has no column 'end_time'" in result.output


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_a_load_into_a_table_without_a_unique_key_on_its_key_fails_check_and_the_load(
    tmp_path: Path, urls: tuple[str, str], mode: str
) -> None:
    """MariaDB's ON DUPLICATE KEY matches only a unique key of the table: into a table with none,
    each load of a block (a --force, a rerun after a crash) added its rows again, recorded done,
    while check said ok; PostgreSQL and SQLite refused each row ("no unique or exclusion
    constraint matching the ON CONFLICT specification"), counted as records the database rejected."""
    db = TableDb(urls[1])
    try:
        db.execute(TABLE[db.flavor].replace(" PRIMARY KEY", ""))
    finally:
        db.close()
    root = project(tmp_path, urls, mode=mode, create=False)
    forget_etl()
    result = CliRunner().invoke(main, ["-C", str(root), "check"])
    assert result.exit_code == 2, result.output
    assert "[load] table trips in" in result.output and "has no unique index on trip_id" in result.output
    for _ in range(2):
        forget_etl()
        ran = CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *ONE_BLOCK, "--force"])
        assert ran.exit_code == 1, ran.output
        assert load_row(urls[0])[0] == "failed" and "has no unique index on trip_id" in load_row(urls[0])[5]
    assert rows(urls[1]) == []


FOLDING = {
    "sqlite": "CREATE TABLE trips (trip_id TEXT COLLATE NOCASE PRIMARY KEY, duration INTEGER, end_time TEXT)",
    "mariadb": "CREATE TABLE trips (trip_id VARCHAR(64) COLLATE utf8mb4_general_ci PRIMARY KEY,"
    " duration BIGINT, end_time DATETIME(6))",
}


@pytest.mark.parametrize("urls", [BACKENDS[0], BACKENDS[2]], indirect=True)
def test_check_names_a_load_key_whose_collation_folds_ids_together(tmp_path: Path, urls: tuple[str, str]) -> None:
    """A table whose key compares Trip-A and trip-a as one: each load overwrote one trip with the
    other, recorded as processed, and check said nothing."""
    db = TableDb(urls[1])
    try:
        db.execute(FOLDING[db.flavor])
    finally:
        db.close()
    root = project(tmp_path, urls, create=False)
    forget_etl()
    result = CliRunner().invoke(main, ["-C", str(root), "check"])
    assert result.exit_code == 2, result.output
    assert "[load] table trips compares trip_id by" in result.output
    assert "differ only in case, accents or trailing spaces" in result.output


RIDES = {
    "sqlite": "CREATE TABLE rides (ride INTEGER, provider TEXT, ended_at TEXT)",
    "pg": "CREATE TABLE rides (ride bigint, provider text, ended_at timestamptz)",
}
# A time no block holds besides NULL, and the select that leaves both kinds out.
ODD_TIME = {"sqlite": "20200301T003000Z", "pg": "infinity"}
TIMED_ONLY = {"sqlite": " WHERE julianday(ended_at) IS NOT NULL", "pg": " WHERE isfinite(ended_at)"}


def _rides_task(tmp_path: Path, backend: str, request: Any, *values: str) -> Path:
    """A project in ``tmp_path`` whose blocks task extracts the rides table (a row per VALUES
    tuple of each of ``values``, inserted one statement each); the task's folder."""
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'data.db'}",
        "pg": lambda: request.getfixturevalue("pg_url"),
    }[backend]()
    db = TableDb(url)
    try:
        db.execute(RIDES[backend])
        for rows in values:
            db.execute(f"INSERT INTO rides VALUES {rows}")
    finally:
        db.close()
    task = tmp_path / "tasks" / "trips"
    task.mkdir(parents=True)
    (tmp_path / "sluicegate.toml").write_text(f'[source]\nurl = "{url}"\n[destination]\nurl = "out"\n')
    (task / "task.toml").write_text(
        'kind = "blocks"\nzone = "UTC"\nkey = "provider"\nkeys = ["lime"]\nstages = ["extract"]\n'
        '[extract]\ntime = "ended_at"\npath = "{stage}/{provider}/{label}.jsonl"\n'
    )
    (task / "select.sql").write_text("SELECT ride, provider, ended_at FROM rides")
    return task


@pytest.mark.parametrize("backend", BACKENDS[:2])  # blocks read no MariaDB source
def test_check_counts_the_rows_no_block_holds(tmp_path: Path, backend: str, request: Any) -> None:
    """A NULL time (and SQLite text julianday() cannot read, PostgreSQL's infinity) puts a row in
    no block: every block is extracted and the row never is. check names the count (exit 2)."""
    values = "(1, 'lime', '2020-03-01 00:10:00'), (2, 'lime', NULL), (3, 'lime', NULL)"
    task = _rides_task(tmp_path, backend, request, values, f"(4, 'lime', '{ODD_TIME[backend]}')")
    select = (task / "select.sql").read_text()
    result = CliRunner().invoke(main, ["-C", str(tmp_path), "check"])
    assert result.exit_code == 2, result.output
    assert f"{task / 'select.sql'}: 2 row(s) have no ended_at (NULL), so no block holds them" in result.output
    assert (
        f"1 row(s) have a time in ended_at that no block can hold (such as '{ODD_TIME[backend]}')"
        in result.output
    )
    (task / "select.sql").write_text(select + TIMED_ONLY[backend])  # left out on purpose: no problem
    result = CliRunner().invoke(main, ["-C", str(tmp_path), "check"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_check_counts_the_rows_outside_the_years_blocks_reach(
    tmp_path: Path, backend: str, request: Any
) -> None:
    """A request reaches the years 2 to 9998 only, so a "forever" time such as 9999-12-31 (or one
    before the year 2) is in no block: never extracted, and check said ok."""
    values = "(1, 'lime', '2020-03-01 00:10:00'), (2, 'lime', '9999-12-31 00:00:00')"
    _rides_task(tmp_path, backend, request, values, "(3, 'lime', '0001-06-01 00:00:00')")
    result = CliRunner().invoke(main, ["-C", str(tmp_path), "check"])
    assert result.exit_code == 2, result.output
    assert "2 row(s) have a time in ended_at that no block can hold (such as '0001-06-01" in result.output
    assert "in the years 2 to 9998" in result.output


def test_a_parked_load_says_no_retry_and_a_removed_stage_is_no_longer_counted(tmp_path: Path) -> None:
    """A load parked after its last attempt was shown as "...; will retry" (nothing would), and
    once ``[load]`` was removed from the task its parked rows stayed "failed" in ``status`` for
    ever: nothing could clear them (``--stage load`` is refused). A removed stage's rows are kept
    on the ledger and left out of ``status``."""
    sqlite = f"sqlite:///{tmp_path / 'data.db'}"
    root = project(tmp_path / "p", (sqlite, "postgresql://nobody@127.0.0.1:1/none"))
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("max_attempts = 1\n")
    forget_etl()
    failed = CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *ONE_BLOCK])
    assert failed.exit_code == 1, failed.output
    shown = CliRunner().invoke(main, ["-C", str(root), "status", "--json"])
    [row] = json.loads(shown.output)
    assert row["failed"] == 1 and "load" in row["stages"], row
    [failure] = row["failures"]
    assert failure["error"] and not failure["error"].endswith("will retry"), failure
    toml = root / "tasks" / "trips" / "task.toml"
    text = toml.read_text()
    toml.write_text(text[: text.index("[load]")].replace('["extract", "load"]', '["extract"]'))
    [row] = json.loads(CliRunner().invoke(main, ["-C", str(root), "status", "--json"]).output)
    assert (row["failed"], row["failures"]) == (0, []) and "load" not in row["stages"], row


FLAKY_ETL = """
import pathlib

def trips(block, config):
    flag = pathlib.Path(__file__).with_name("failed-once")
    if not flag.exists():
        flag.write_text("x")
        raise ConnectionError("the provider hung up")
    base = int(block.start.timestamp() * 1000)
    return [{"trip_id": f"{block.key_value}-{base}-{i}", "duration": 60, "end_time": base + i} for i in range(2)]
"""


def test_a_stage_that_failed_then_succeeded_in_one_run_is_counted_once_as_done(tmp_path: Path) -> None:
    """The summary counted attempts: "extract 1 done, 1 failed" for a block whose extract failed
    once and was done by a retry in the same run, exit 0 (blocks.md: exit 1 when one failed)."""
    sqlite = f"sqlite:///{tmp_path / 'data.db'}"
    root = project(tmp_path / "p", (sqlite, sqlite))
    (root / "etl.py").write_text(FLAKY_ETL)
    result = blocks(root, *ONE_BLOCK, "--stage", "extract")
    assert "extract 1 done in" in result.output and "failed" not in result.output, result.output
    assert (root / "failed-once").exists()  # it did fail once


def test_a_load_into_a_table_another_session_holds_gives_up_within_its_lease(
    tmp_path: Path, pg_url: str
) -> None:
    """A session holding the load's table (a LOCK or an ALTER TABLE in a transaction left open)
    kept the load waiting 60 s per attempt, far past a 3 s lease: another run could take the
    block as dead meanwhile. The wait now ends at half the lease, the stage fails naming the
    lock (retried, then parked), and once the lock is gone the block loads."""
    import psycopg

    create_table(pg_url)
    root = project(tmp_path, (pg_url, pg_url), create=False)
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("LOCK TABLE trips IN ACCESS EXCLUSIVE MODE")
        forget_etl()
        started = time.monotonic()
        held = CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *ONE_BLOCK])
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert held.exit_code == 1, held.output
    status, *_, error = load_row(pg_url)
    assert status == "failed", error  # each of the run's attempts waited 1.5 s: parked after the 5th
    assert "another session held a lock on it for 1.5 s" in error, error
    assert waited < 30, waited  # not the 60 s a table sink waited by default, per attempt
    blocks(root, *ONE_BLOCK, "--incomplete-only")
    assert load_row(pg_url)[0] == "done"
    assert [r[1] for r in rows(pg_url)] == [60, 120]


@pytest.mark.parametrize(
    "flavor",
    [pytest.param("sqlite", id="sqlite"), pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb)],
)
def test_a_load_into_a_sqlite_or_mariadb_table_another_session_holds_gives_up_within_its_lease(
    request: pytest.FixtureRequest, tmp_path: Path, flavor: str
) -> None:
    """As on PostgreSQL, the load waits for a lock at most half the lease. On SQLite it waited the
    connection's 60 s busy timeout for another process's write lock, on MariaDB 60 s per statement
    (innodb_lock_wait_timeout), each attempt far past a 3 s lease. Each attempt now gives up
    within the lease, the stage fails naming the table and what holds it, and once the lock is
    gone the block loads."""
    source = f"sqlite:///{tmp_path / 'data.db'}"  # the ledger: not the held database
    table = (
        str(request.getfixturevalue("mariadb_url"))
        if flavor == "mariadb"
        else f"sqlite:///{tmp_path / 't.db'}"
    )
    create_table(table)
    root = project(tmp_path / "p", (source, table), create=False)
    holder = TableDb(table)
    if flavor == "sqlite":  # another process's writer left in BEGIN
        holder.conn.execute("BEGIN IMMEDIATE")
    else:  # an open transaction that locked the table's rows and gaps
        holder.conn.execute("START TRANSACTION")
        holder.conn.execute("SELECT * FROM trips FOR UPDATE").fetchall()
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.conn.execute("ROLLBACK")

    deadline = threading.Timer(40, release)  # the CLI runs in this thread (its signal handlers)
    try:
        deadline.start()
        forget_etl()
        started = time.monotonic()
        held = CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *ONE_BLOCK])
        waited = time.monotonic() - started
    finally:
        deadline.cancel()
        release()
        holder.close()
    assert held.exit_code == 1, held.output
    status, *_, error = load_row(source)
    assert status == "failed", error  # each of the run's attempts waited about 1.5 s: parked after the 5th
    wait = (
        "another process held the database's write lock for 1.5 s"
        if flavor == "sqlite"
        else "a lock on it for 1 s"
    )
    assert wait in error and "trips" in error, error
    assert waited < 30, waited  # not the 60 s a table sink waited by default, per attempt
    blocks(root, *ONE_BLOCK, "--incomplete-only")
    assert load_row(source)[0] == "done"
    assert [r[1] for r in rows(table)] == [60, 120]  # the third trip breaks the CHECK
