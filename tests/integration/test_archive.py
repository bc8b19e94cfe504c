"""Archive tasks: export-then-delete as one unit, in the Common Knowledge layout, with crashes and concurrency."""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from test_workers import _spawn, _wait_for

from plugins.mariadb_server import fresh_database
from sluicegate import engine, mariadb_conn, operations
from sluicegate.config import Project
from sluicegate.destinations import local as local_destination
from sluicegate.drivers import archive
from sluicegate.formats import parquet as parquet_format
from sluicegate.ledger import Ledger
from sluicegate.ledger import archive as ledger_archive
from sluicegate.ledger.core import LedgerCore
from sluicegate.options import Budget, RunOptions, TaskSummary
from sluicegate.sources import sqlite as sqlite_source
from support import cli, files, is_mariadb, load

UTC = dt.UTC
SELECT_PG = """COPY (SELECT * FROM agency
      WHERE (base_id, updated_at) NOT IN (SELECT base_id, max(updated_at) FROM agency GROUP BY base_id)
      AND updated_at < %(export_boundary)s) TO stdout WITH csv HEADER;
"""
DELETE_PG = """DELETE FROM agency
      WHERE (base_id, updated_at) NOT IN (SELECT base_id, max(updated_at) FROM agency GROUP BY base_id)
      AND updated_at < %(export_boundary)s;
"""
# MariaDB: the same rows, by a join (superseded = older than its base's latest version). A
# single-table DELETE runs a subquery once per row before MariaDB 11.1, a multi-table one does not.
_SUPERSEDED_MARIADB = """agency AS a
      JOIN (SELECT base_id, max(updated_at) AS latest FROM agency GROUP BY base_id) AS m
        ON m.base_id = a.base_id AND a.updated_at < m.latest
      WHERE a.updated_at < %(export_boundary)s
"""
SELECT_MARIADB = f"SELECT a.* FROM {_SUPERSEDED_MARIADB}"
DELETE_MARIADB = f"DELETE a FROM {_SUPERSEDED_MARIADB}"
SELECT_SQLITE = """SELECT * FROM agency a
      WHERE EXISTS (SELECT 1 FROM agency b WHERE b.base_id = a.base_id AND b.updated_at > a.updated_at)
      AND a.updated_at < %(export_boundary)s
"""
DELETE_SQLITE = """DELETE FROM agency
      WHERE EXISTS (SELECT 1 FROM agency b WHERE b.base_id = agency.base_id AND b.updated_at > agency.updated_at)
      AND updated_at < %(export_boundary)s
"""


class Agency:
    """Append-only versioned rows, as in the Common Knowledge base (``create``: the table too)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.sqlite = url.startswith("sqlite")
        self.mariadb = is_mariadb(url)
        if self.sqlite:
            self.conn: Any = sqlite3.connect(
                url[len("sqlite:///") :], isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            table = (
                "CREATE TABLE agency (id INTEGER PRIMARY KEY, base_id INTEGER, updated_at TEXT, name TEXT)"
            )
        elif self.mariadb:  # DATETIME(6): naive UTC (the session is pinned to UTC)
            self.conn = mariadb_conn.connect(url)
            table = (
                "CREATE TABLE agency (id BIGINT AUTO_INCREMENT PRIMARY KEY, base_id INT,"
                " updated_at DATETIME(6), name TEXT)"
            )
        else:
            self.conn = psycopg.connect(url, autocommit=True)
            table = (
                "CREATE TABLE agency (id serial PRIMARY KEY, base_id int, updated_at timestamptz, name text)"
            )
        if create:
            self.conn.execute(table)
        self.inserted = 0
        self.added: list[int] = []  # the id of every row inserted through this object

    def version(self, base_id: int, at: dt.datetime, name: str) -> None:
        value: Any = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if self.sqlite else at
        if self.mariadb:
            value = at.astimezone(UTC).replace(tzinfo=None)
        p = "?" if self.sqlite else "%s"
        sql = f"INSERT INTO agency (base_id, updated_at, name) VALUES ({p}, {p}, {p})"
        if self.sqlite or self.mariadb:
            self.added.append(int(self.conn.execute(sql, (base_id, value, name)).lastrowid))
        else:
            self.added.append(
                int(self.conn.execute(sql + " RETURNING id", (base_id, value, name)).fetchone()[0])
            )
        self.inserted += 1

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM agency").fetchone()[0])

    def ids(self) -> set[int]:
        return {int(r[0]) for r in self.conn.execute("SELECT id FROM agency").fetchall()}


SERVERS = [pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(params=["sqlite", *SERVERS])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The source database, with the ledger in it: SQLite, PostgreSQL or MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    value: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return value


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL or MariaDB database, source and ledger at once."""
    value: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return value


@pytest.fixture
def ledger_pg_url(pg_server: Any) -> Iterator[str]:
    """A second fresh database on the test server, for a ledger apart from the source."""
    name = f"ledger_{time.time_ns()}"
    admin = pg_server.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_server.url(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def ledger_mariadb_url(mariadb_server: Any) -> Iterator[str]:
    """A second fresh database on the MariaDB test server, for a ledger apart from the source."""
    with fresh_database(mariadb_server) as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("pg+pg-ledger", marks=pytest.mark.pg),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("mariadb+mariadb-ledger", marks=pytest.mark.mariadb),
        "sqlite+sqlite-ledger",
    ]
)
def layout(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(source URL, ledger URL): one PostgreSQL or MariaDB database, or a ledger in another database."""
    if request.param == "sqlite+sqlite-ledger":
        return f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    server = request.param.partition("+")[0]
    source: str = request.getfixturevalue("pg_url" if server == "pg" else "mariadb_url")
    if "+" not in request.param:
        return source, source
    ledger: str = request.getfixturevalue(f"ledger_{server}_url")
    return source, ledger


def _project(
    tmp_path: Path,
    url: str,
    *,
    delete: bool = True,
    boundary: str = "midnight",
    lease: str = "10m",
    ledger: str | None = None,
) -> Path:
    root = tmp_path / "proj"
    task = root / "tasks" / "agency"
    task.mkdir(parents=True)
    ledger_section = f'[ledger]\nurl = "{ledger}"\n' if ledger else ""
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{url}"\n{ledger_section}[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nlease = "{lease}"\n'
    )
    (task / "task.toml").write_text(f'kind = "archive"\nboundary = "{boundary}"\n')
    pg = url.startswith("postgresql")
    select, delete_sql = (
        (SELECT_PG, DELETE_PG) if pg else (SELECT_MARIADB, DELETE_MARIADB) if is_mariadb(url)
        else (SELECT_SQLITE, DELETE_SQLITE)
    )  # fmt: skip
    (task / "select.sql").write_text(select)
    if delete:
        (task / "delete.sql").write_text(delete_sql)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))


def _archived_ids(tmp_path: Path) -> list[int]:
    return sorted(int(r["id"]) for p in files(tmp_path / "out") for r in _rows(p))


def _seed(agency: Agency, bases: int = 3, versions: int = 4, first: int = 0) -> None:
    start = dt.datetime.now(UTC) - dt.timedelta(days=3)
    for b in range(first, first + bases):
        for v in range(versions):
            agency.version(b, start + dt.timedelta(hours=v), f"base{b}-v{v}")


def account(out: Path, agency: Agency, inserted: Iterable[int], ledger_url: str) -> None:
    """Each row is in the table or in exactly one file; each finished run's file is as recorded."""
    inserted = set(inserted)
    archived = collections.Counter(int(r["id"]) for p in files(out) for r in _rows(p))
    table = agency.ids()
    twice = [i for i, n in archived.items() if n > 1]
    assert not twice, f"{len(twice)} rows are in two files or twice in one"
    assert not (lost := inserted - table - set(archived)), (
        f"{len(lost)} rows lost: in no file and not in the table"
    )
    assert not (both := table & set(archived)), f"{len(both)} rows are archived and still in the table"
    assert set(archived) | table == inserted
    rows_column = "`rows`" if is_mariadb(ledger_url) else "rows"  # a reserved word in MariaDB
    with Ledger(ledger_url) as ledger:
        runs = ledger.conn.execute(
            f"SELECT path, state, {rows_column}, checksum, deleted FROM {ledger.table_prefix}archive_runs"
        ).fetchall()
    for path, state, rows, checksum, deleted in runs:
        assert state == "done", f"the run of {path} is {state}"
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == checksum, f"{path} was overwritten after its run finished"
        assert rows == len(_rows(out / path)) and deleted in (rows, None)


def test_original_layout_archives_superseded_versions(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    agency = Agency(url)
    _seed(agency)
    before = dt.datetime.now(UTC).date()
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.rows, summary.failed) == (1, 9, 0)
    [path] = files(tmp_path / "out")
    days = {before, dt.datetime.now(UTC).date()}  # the run may straddle midnight UTC
    assert path.name in {f"agency-{day:%Y_%m_%d}-12_00_00_AM.csv.gz" for day in days}
    rows = _rows(path)
    assert list(rows[0]) == ["id", "base_id", "updated_at", "name"]
    assert sorted(r["name"] for r in rows) == sorted(f"base{b}-v{v}" for b in range(3) for v in range(3))
    assert agency.count() == 3 and summary.archive[0]["deleted"] == 9
    assert len(_archived_ids(tmp_path)) + agency.count() == agency.inserted


def test_status_names_the_last_runs_file_rows_and_deletion(url: str, tmp_path: Path) -> None:
    """``status`` of an archive task said ``agency: archive, unfinished False``: nothing of its runs."""
    root = _project(tmp_path, url)
    agency = Agency(url)
    assert operations.status(load(root))[0]["last_run"] == "none yet"
    _seed(agency)
    [summary] = engine.run(load(root))
    [row] = operations.status(load(root))
    [path] = files(tmp_path / "out")
    assert (row["file"], row["rows"], row["deleted"], row["unfinished"]) == (path.name, 9, 9, False), row
    assert row["last_run"] and row["last_run"] != "none yet" and summary.failed == 0
    line = cli(root, "status").stdout
    assert f"file {path.name}, rows 9, deleted 9, unfinished no" in line and "False" not in line, line


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles", "UTC"])
def test_a_sqlite_boundary_is_bound_in_utc(tmp_path: Path, zone: str) -> None:
    """On SQLite the boundary was bound as Python's default adapter wrote it, in the task's
    zone (2026-12-06 00:00:00+09:00): compared as text with UTC times, a Tokyo boundary
    archived and deleted the rows of the hours after it, and a Los Angeles one held back those
    before it. It is bound in UTC now, with the space: no row after the boundary is archived
    whichever of the two common forms it is stored in."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    with (root / "tasks" / "agency" / "task.toml").open("a") as fh:
        fh.write(f'zone = "{zone}"\n')
    local = dt.datetime.now(ZoneInfo(zone))
    boundary = dt.datetime.combine(local.date(), dt.time(), tzinfo=ZoneInfo(zone))
    agency = Agency(url)
    base = 0
    for minutes, name in [(-60, "before"), (60, "after"), (-1, "just-before"), (1, "just-after")]:
        for form in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d %H:%M:%S"):  # each row superseded by a later one
            base += 1
            for extra, label in [(0, f"{name} {form[8]}"), (0.5, "latest")]:
                at = (boundary + dt.timedelta(minutes=minutes + extra)).astimezone(UTC).strftime(form)
                agency.conn.execute(
                    "INSERT INTO agency (base_id, updated_at, name) VALUES (?, ?, ?)", (base, at, label)
                )
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary.errors
    archived = sorted(r["name"] for p in files(tmp_path / "out") for r in _rows(p))
    # Nothing after the boundary, in either form. Before it: SQLite's own form always; the
    # ...T...Z form when the boundary is a UTC midnight (text compares 'T' after ' ', so such
    # rows of the boundary's UTC date wait for the next run: never archived early).
    utc = ["before T", "just-before T"] if zone == "UTC" else []
    assert archived == sorted(["before  ", "just-before  ", *utc])
    assert agency.count() == 16 - len(archived)


def test_second_run_the_same_day_never_overwrites(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    agency = Agency(url)
    _seed(agency)
    engine.run(load(root))
    first = files(tmp_path / "out")[0]
    content = first.read_bytes()
    for b in range(3):
        agency.version(b, dt.datetime.now(UTC) - dt.timedelta(hours=1), f"base{b}-new")
    [second] = engine.run(load(root))
    assert second.rows == 3
    names = {p.name for p in files(tmp_path / "out")}
    assert names == {first.name, first.name.replace(".csv.gz", "-2.csv.gz")}
    assert first.read_bytes() == content
    assert len(_archived_ids(tmp_path)) + agency.count() == agency.inserted


def test_no_archive_task_takes_a_file_name_another_task_used(tmp_path: Path) -> None:
    """Names were only kept apart within a task, and "-2" went before the first dot: task
    "my.arch"'s second file of a day was "my-2.arch-<day>...", the first file of task
    "my-2.arch", and replaced it after its rows were deleted. Two tasks whose paths render
    alike overwrote each other the same way."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    (root / "tasks" / "agency").rename(root / "tasks" / "my.arch")
    shutil.copytree(root / "tasks" / "my.arch", root / "tasks" / "my-2.arch")
    agency = Agency(url)
    _seed(agency)
    engine.run(load(root), ["my-2.arch"])
    [first] = files(tmp_path / "out")
    content = first.read_bytes()
    engine.run(load(root), ["my.arch"])  # nothing left to archive: its file holds the header
    engine.run(load(root), ["my.arch"])
    names = sorted(p.name for p in files(tmp_path / "out"))
    day = first.name.removeprefix("my-2.arch-")
    assert names == sorted([first.name, f"my.arch-{day}", f"my.arch-{day}".replace(".csv.gz", "-2.csv.gz")])
    assert first.read_bytes() == content and len(_rows(first)) == 9
    for folder in ("my.arch", "my-2.arch"):  # paths that render alike, with no {task}
        with (root / "tasks" / folder / "task.toml").open("a") as toml:
            toml.write('path = "archive-{boundary:%Y%m%d}.{ext}"\n')
    engine.run(load(root))
    alike = {p.name for p in files(tmp_path / "out") if p.name.startswith("archive-")}
    [plain] = [n for n in alike if not n.endswith("-2.csv.gz")]
    assert alike == {plain, plain.replace(".csv.gz", "-2.csv.gz")}


def test_a_path_that_escapes_the_destination_skips_its_task_only(tmp_path: Path) -> None:
    """A path template rendering outside the destination stopped every command (check, run,
    run of another task, status) with exit 1, without naming the file."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    shutil.copytree(root / "tasks" / "agency", root / "tasks" / "bad")
    with (root / "tasks" / "bad" / "task.toml").open("a") as toml:
        toml.write('path = "../{task}-{run}.{ext}"\n')
    agency = Agency(url)
    _seed(agency)
    checked = cli(root, "check")
    assert checked.returncode == 2 and "tasks/bad/task.toml path: rendered path" in checked.stderr
    ran = cli(root, "run")
    assert ran.returncode == 2 and "task bad skipped" in ran.stderr
    assert len(files(tmp_path / "out")) == 1 and agency.count() == 3  # agency ran
    status = cli(root, "status")  # lists agency, and bad with its error (exit 2: a broken task)
    assert status.returncode == 2 and "agency:" in status.stdout and "bad: ERROR" in status.stdout


def test_each_archive_run_lists_its_file_in_the_change_feed(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    agency = Agency(url)
    _seed(agency)
    engine.run(load(root))
    for b in range(3):
        agency.version(b, dt.datetime.now(UTC) - dt.timedelta(hours=1), f"base{b}-new")
    engine.run(load(root))
    out = tmp_path / "out"
    lines = [
        json.loads(line)
        for p in sorted(out.glob("_manifests/**/*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    rows_column = "`rows`" if is_mariadb(url) else "rows"
    with Ledger(url) as ledger:
        runs = ledger.conn.execute(
            f"SELECT id, path, checksum, {rows_column} FROM {ledger.table_prefix}archive_runs"
        ).fetchall()
    assert len(runs) == 2
    assert sorted((e["version"], e["path"], e["sha256"], e["rows"], e["action"]) for e in lines) == sorted(
        (str(i), path, checksum, rows, "published") for i, path, checksum, rows in runs
    )
    assert {e["path"] for e in lines} == {p.relative_to(out).as_posix() for p in files(out)}


def test_a_run_with_no_rows_writes_the_header_it_records(url: str, tmp_path: Path) -> None:
    """A run whose select matches nothing writes a file with the header alone, as documented.
    It used to write no file and record the path all the same: the ledger named a file that
    was never published."""
    root = _project(tmp_path, url)
    agency = Agency(url)
    _seed(agency)
    engine.run(load(root))
    [empty] = engine.run(load(root))  # everything superseded was archived by the first run
    assert (empty.rows, empty.failed) == (0, 0), empty.errors
    out = tmp_path / "out"
    with Ledger(url) as ledger:
        paths = [r[0] for r in ledger.conn.execute(f"SELECT path FROM {ledger.table_prefix}archive_runs")]
    assert sorted(p.relative_to(out).as_posix() for p in files(out)) == sorted(paths) and len(paths) == 2
    second = next(p for p in files(out) if "-2." in p.name)
    header = gzip.decompress(second.read_bytes()).decode()
    assert header.count("\n") == 1 and header.startswith("id,")


def test_snapshot_without_delete_sql_keeps_rows(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url, delete=False, boundary="now")
    agency = Agency(url)
    _seed(agency)
    [summary] = engine.run(load(root))
    assert summary.rows == 9 and agency.count() == 12 and summary.archive[0]["deleted"] is None


def test_delete_that_removes_other_rows_is_rolled_back(tmp_path: Path, server_url: str) -> None:
    root = _project(tmp_path, server_url)
    good = (root / "tasks/agency/delete.sql").read_text()
    (root / "tasks/agency/delete.sql").write_text("DELETE FROM agency WHERE updated_at < %(export_boundary)s")
    agency = Agency(server_url)
    _seed(agency)
    [summary] = engine.run(load(root))
    assert summary.failed == 1 and "deleted 12 rows but the file holds 9" in summary.errors[0]
    assert agency.count() == 12
    # status said only "unfinished yes": the run's error was on no ledger row, until a run succeeds
    status = cli(root, "status").stdout
    assert "unfinished yes" in status and "last run failed: " in status
    assert "delete.sql deleted 12 rows but the file holds 9" in status.partition("last run failed: ")[2]
    (root / "tasks/agency/delete.sql").write_text(good)
    [again] = engine.run(load(root))
    assert again.failed == 0 and "last run failed" not in cli(root, "status").stdout


def _crash(root: Path, point: str) -> None:
    """Run in a real process, SIGKILLed at ``point``."""
    proc = _spawn(root, "run", env={"SLUICEGATE_TESTING__FAULT": point})
    _wait_for(root / f".fault-{point}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (root / f".fault-{point}").unlink()


@pytest.mark.parametrize("point", ["after_publish", "before_delete_commit"])
def test_crash_before_the_delete_committed_rewrites_the_same_file(
    tmp_path: Path, layout: tuple[str, str], point: str
) -> None:
    source, ledger = layout
    root = _project(tmp_path, source, ledger=ledger)
    agency = Agency(source)
    _seed(agency)
    _crash(root, point)
    [crashed] = files(tmp_path / "out")
    assert len(_rows(crashed)) == 9 and agency.count() == 12  # in a verified file and still in the database
    [status] = json.loads(cli(root, "status", "--json", check=True).stdout)
    assert status["kind"] == "archive" and status["unfinished"] is True
    assert status["unfinished_run"] in (f"exporting to {crashed.name}", f"published to {crashed.name}")
    _seed(agency, bases=1, first=10)  # 3 more superseded rows: the redo's file differs from the crashed one
    started = time.monotonic()
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    seconds = time.monotonic() - started
    assert files(tmp_path / "out") == [crashed]  # the same file, rewritten: no second file repeats its rows
    assert len(_rows(crashed)) == 12 and agency.count() == 4
    account(tmp_path / "out", agency, agency.added, ledger)
    assert summary["archive"][0]["recovered"] is True and summary["archive"][0]["deleted"] == 12
    assert seconds < 30  # the killed run's lock died with it: no waiting for it (60 s)


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("pg+pg-ledger", marks=pytest.mark.pg),
        pytest.param("mariadb+mariadb-ledger", marks=pytest.mark.mariadb),
        "sqlite+sqlite-ledger",
    ],
    indirect=True,
)
def test_crash_after_the_delete_committed_keeps_the_file(tmp_path: Path, layout: tuple[str, str]) -> None:
    source, ledger = layout
    root = _project(tmp_path, source, ledger=ledger)
    agency = Agency(source)
    _seed(agency)
    _crash(root, "after_delete_commit")  # the ledger never hears that the delete committed
    [first] = files(tmp_path / "out")
    content = first.read_bytes()
    assert len(_rows(first)) == 9 and agency.count() == 3
    _seed(agency, first=10)  # 9 new superseded rows: as many as the first file holds
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    recovered = summary["archive"][0]
    assert recovered["recovered"] is True and recovered["deleted"] == 9 and recovered["path"] == first.name
    assert first.read_bytes() == content and agency.count() == 15  # nothing rewritten, nothing deleted
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["archive"][0]["recovered"] is False and summary["archive"][0]["deleted"] == 9
    assert {p.name for p in files(tmp_path / "out")} == {
        first.name,
        first.name.replace(".csv.gz", "-2.csv.gz"),
    }
    assert first.read_bytes() == content
    account(tmp_path / "out", agency, agency.added, ledger)


def test_a_run_redone_after_the_format_changed_keeps_its_file_s_format(tmp_path: Path) -> None:
    """A csv.gz run crashed before its delete; format became Parquet before the next run. The
    redo wrote Parquet bytes under the recorded `.csv.gz` name: a file no reader could open as
    what its name says. It is redone in the format its name records; the next run in Parquet."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, source)
    agency = Agency(source)
    _seed(agency)
    _crash(root, "after_publish")
    [crashed] = files(tmp_path / "out")
    toml = root / "tasks" / "agency" / "task.toml"
    toml.write_text(toml.read_text() + 'format = "parquet"\n')
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["archive"][0]["recovered"] is True and summary["archive"][0]["deleted"] == 9
    assert files(tmp_path / "out") == [crashed] and len(_rows(crashed)) == 9  # gzip CSV, as named
    _seed(agency, bases=1, first=10)
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    [parquet] = [p for p in files(tmp_path / "out") if p.name.endswith(".parquet")]
    assert pq.read_table(parquet).num_rows == summary["archive"][0]["deleted"] == 3


def test_a_ledger_in_the_source_file_spelt_otherwise_is_the_shared_database(tmp_path: Path) -> None:
    """[ledger] url named the source's SQLite file another way (``/./``): taken for another
    database, the run wrote its witness and its ``done`` through a second connection to the file
    its own snapshot held locked, and waited on itself until it failed with "database is locked"."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, source, ledger=f"sqlite:///{tmp_path}/./source.db")
    agency = Agency(source)
    _seed(agency)
    assert load(root).settings.shared_database
    started = time.monotonic()
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["archive"][0]["deleted"] == 9 and agency.count() == 3
    assert time.monotonic() - started < 20
    assert _archived_ids(tmp_path) == sorted(set(agency.added) - agency.ids())


def test_a_run_without_witness_table_keeps_the_file_it_cannot_vouch_for(tmp_path: Path) -> None:
    """A run recorded by an older sluicegate (no witness table): its file is kept, the rows go to a new one."""
    source, ledger = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
    root = _project(tmp_path, source, ledger=ledger)
    agency = Agency(source)
    _seed(agency)
    _crash(root, "after_publish")
    [crashed] = files(tmp_path / "out")
    content = crashed.read_bytes()
    agency.conn.execute("DROP TABLE sluicegate_archive_commits")
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["archive"][0]["recovered"] is True and summary["archive"][0]["deleted"] == 9
    assert len(files(tmp_path / "out")) == 2 and crashed.read_bytes() == content
    assert agency.count() == 3  # the rows are in both files: repeated, never lost


def test_a_run_recovered_from_another_source_database_keeps_the_file_whose_rows_it_deleted(
    tmp_path: Path,
) -> None:
    """The delete committed, then the run died before its `done`; source.url now names another
    database, one with a witness table (archived by another project): the file is kept."""
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    root = _project(tmp_path, a, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    agency = Agency(a)
    _seed(agency)
    _crash(root, "after_delete_commit")
    [first] = files(tmp_path / "out")
    content = first.read_bytes()
    assert len(_rows(first)) == 9 and agency.count() == 3
    other = tmp_path / "other"
    other.mkdir()
    other_root = _project(other, b, ledger=f"sqlite:///{other / 'ledger.db'}")
    other_agency = Agency(b)
    _seed(other_agency)
    cli(other_root, "run", check=True)  # b.db has its own witness rows now
    _seed(other_agency, first=10)
    config = (root / "sluicegate.toml").read_text()
    (root / "sluicegate.toml").write_text(config.replace(a, b))
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["archive"][0]["recovered"] is True and summary["archive"][0]["path"] != first.name
    assert first.read_bytes() == content, "a file whose rows were deleted was written over"
    assert other_agency.count() == 6 and len(files(tmp_path / "out")) == 2


def test_a_second_run_waits_for_the_lock_then_fails_clearly(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, url)
    agency = Agency(url)
    _seed(agency)
    project = load(root)
    monkeypatch.setattr(ledger_archive, "LOCK_WAIT", 0.5)
    with Ledger(project.settings.ledger_url) as ledger:
        ledger.ensure_schema()
        with ledger.archive.hold("agency"):  # another run of the task, holding its lock
            started = time.monotonic()
            [summary] = engine.run(project)
            assert 0.5 <= time.monotonic() - started < 5
    assert summary.failed == 1 and summary.errors == [
        "another run of archive task agency is in progress (waited 0.5 s); run it again when that run has finished"
    ]
    assert agency.count() == 12 and not files(tmp_path / "out")
    [summary] = engine.run(project)  # the lock is free again
    assert summary.failed == 0 and summary.rows == 9 and agency.count() == 3


def test_concurrent_inserts_and_updates_lose_nothing(tmp_path: Path, server_url: str) -> None:
    root = _project(tmp_path, server_url, boundary="now")
    agency = Agency(server_url)
    _seed(agency, bases=20, versions=3)
    writer = Agency(server_url, create=False)
    concat = "CONCAT(name, '*')" if writer.mariadb else "name || '*'"
    stop = threading.Event()

    deadlocks: list[int] = []

    def ingest() -> None:
        i = 0
        while not stop.is_set():
            writer.version(i % 20, dt.datetime.now(UTC), f"live{i}")
            try:
                writer.conn.execute(
                    f"UPDATE agency SET name = {concat} WHERE id = (SELECT max(id) FROM agency)"
                )
            except Exception as exc:
                # MariaDB: the update's subquery share-locks rows the archive run locked and
                # then deletes; InnoDB rolls the update back (error 1213), as any writer must expect.
                if getattr(exc, "errno", None) != 1213:
                    raise
                deadlocks.append(i)
            i += 1

    thread = threading.Thread(target=ingest)
    thread.start()
    failures = 0
    try:
        for _ in range(6):
            [summary] = engine.run(load(root))
            failures += summary.failed  # a serialization failure is a safe, retried run
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    [final] = engine.run(load(root))
    archived = _archived_ids(tmp_path)
    assert archived and len(archived) == len(set(archived)), "a row was archived twice"
    assert set(archived).isdisjoint(agency.ids())
    assert len(archived) + agency.count() == agency.inserted + writer.inserted
    assert final.failed == 0 and failures < 6


def test_check_compiles_archive_queries_without_running_them(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    Agency(url)
    assert cli(root, "check").returncode == 0
    (root / "tasks/agency/delete.sql").write_text(
        "DELETE FROM nowhere WHERE updated_at < %(export_boundary)s"
    )
    result = cli(root, "check")
    assert result.returncode == 2 and "delete.sql: the query failed" in result.stderr


# The connection holding a MariaDB archive lock: the name sql/mariadb/archive.sql gives it.
# Ends the session that holds an archive task's lock (a PostgreSQL advisory lock).
PG_KILL_LOCK_HOLDER = (
    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
)
MARIADB_LOCK_HOLDER = """SELECT IS_USED_LOCK(CONCAT('sluicegate archive ', LEFT(SHA2(CONCAT_WS('/',
    DATABASE(), 'sluicegate archive sluicegate', 'agency'), 256), 40)))"""


def _archive_with(project: Project, fault: Callable[[str], None]) -> TaskSummary:
    """Run the ``agency`` archive task in this process, with ``fault`` called at each fault point."""
    with engine.Exporter(project) as exporter:
        context = dataclasses.replace(exporter.context, fault=fault)
        summary = TaskSummary(task="agency")
        archive.Driver(context).run(
            project.tasks["agency"], RunOptions(), summary=summary, budget=Budget(deadline=None), limit=None
        )
    return summary


def test_a_run_that_lost_its_lock_deletes_nothing(tmp_path: Path, server_url: str) -> None:
    root = _project(tmp_path, server_url)
    agency = Agency(server_url)
    _seed(agency)
    project = load(root)
    killed: list[int] = []

    def drop_lock(point: str) -> None:  # the lock's connection dies while the run is under way
        if point != "after_publish":
            return
        if agency.mariadb:
            [holder] = agency.conn.execute(MARIADB_LOCK_HOLDER).fetchone()
            agency.conn.execute(f"KILL CONNECTION {int(holder)}")
            killed.append(int(holder))
        else:
            agency.conn.execute(PG_KILL_LOCK_HOLDER)

    summary = _archive_with(project, drop_lock)
    assert summary.failed == 1
    assert re.fullmatch(r"lost the lock of archive task agency .*; nothing was deleted", summary.errors[0])
    assert agency.count() == 12
    assert len(killed) == agency.mariadb  # on MariaDB: one connection held the lock, and it was killed
    [summary] = engine.run(project)  # the next run redoes it into the same file
    assert summary.archive[0]["recovered"] is True and summary.archive[0]["deleted"] == 9
    assert len(files(tmp_path / "out")) == 1
    account(tmp_path / "out", agency, agency.added, server_url)


def test_an_update_during_the_run_is_never_deleted_unexported(tmp_path: Path, server_url: str) -> None:
    """A row updated after the read is not deleted with its old value in the file.

    PostgreSQL: the update commits and the delete fails (serialization). MariaDB, whose deletes
    read the latest rows, not the snapshot: the update waits for the run, then finds no row, or
    is chosen as a deadlock's victim and rolled back (the run holds share locks on what it read).
    """
    root = _project(tmp_path, server_url)
    agency = Agency(server_url)
    _seed(agency)
    project = load(root)
    writer = Agency(server_url, create=False)
    updated: list[int] = []
    threads: list[threading.Thread] = []

    def apply() -> None:
        try:
            cur = writer.conn.execute("UPDATE agency SET name = 'updated' WHERE name = 'base0-v0'")
        except Exception as exc:  # MariaDB may roll the waiting update back (1213): not applied
            if getattr(exc, "errno", None) != 1213:
                raise
            updated.append(0)
        else:
            updated.append(cur.rowcount)

    def update(point: str) -> None:  # the file is published; the delete is next
        if point == "after_publish":
            thread = threading.Thread(target=apply)
            thread.start()
            thread.join(timeout=1.0)  # MariaDB: it waits for the run's commit
            threads.append(thread)

    _archive_with(project, update)
    for thread in threads:
        thread.join()
    names = [str(r[0]) for r in agency.conn.execute("SELECT name FROM agency").fetchall()]
    names += [r["name"] for p in files(tmp_path / "out") for r in _rows(p)]
    assert updated in ([0], [1])
    assert ("updated" in names) == (updated == [1]), "a committed update was deleted without being archived"


def test_a_mariadb_task_lock_is_one_connections_per_database_and_task(
    mariadb_url: str, ledger_mariadb_url: str
) -> None:
    """GET_LOCK names are server-wide: the name holds the database, so two ledgers never share a lock."""
    key = {"scope": "sluicegate archive sluicegate", "task": "agency"}
    first, second, elsewhere = (LedgerCore(u) for u in (mariadb_url, mariadb_url, ledger_mariadb_url))
    try:
        one, two, other = (ledger_archive.ArchiveStore(c) for c in (first, second, elsewhere))
        assert one.lock(**key) and one.lock_held(**key)
        assert not two.lock(**key) and not two.lock_held(**key)  # the same task in the same database
        assert two.lock(scope=key["scope"], task="other") and other.lock(**key)
        first.conn.execute("SELECT RELEASE_ALL_LOCKS()").close()
        assert not one.lock_held(**key)  # released (as by a reconnect): no longer held
        assert two.lock(**key)
    finally:
        for core in (first, second, elsewhere):
            core.close()


def test_a_mariadb_source_role_without_delete_fails_closed(tmp_path: Path, mariadb_url: str) -> None:
    """The delete is checked (EXPLAIN) before anything is recorded or written."""
    agency = Agency(mariadb_url)
    _seed(agency)
    user = f"reader_{time.time_ns() % 10**9}"
    database = mariadb_url.rpartition("/")[2]
    agency.conn.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    try:
        agency.conn.execute(f"GRANT SELECT, CREATE ON `{database}`.* TO '{user}'@'%'")
        source = re.sub(r"//[^@]*@", f"//{user}:pw@", mariadb_url)
        root = _project(tmp_path, source, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
        proc = cli(root, "run", "agency")
    finally:
        agency.conn.execute(f"DROP USER '{user}'@'%'")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stdout + proc.stderr
    assert (
        "archive task agency: the source role may not run" in message and "DELETE command denied" in message
    )
    assert agency.count() == 12 and not files(tmp_path / "out")
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        assert ledger.conn.execute("SELECT count(*) FROM sluicegate_archive_runs").fetchone() == (0,)


def test_an_unexpected_error_before_the_delete_fails_the_run_and_deletes_nothing(
    tmp_path: Path, layout: tuple[str, str]
) -> None:
    """An error sluicegate does not know (a bug) between publish and delete is a failed run, never "done"."""
    source, ledger = layout
    root = _project(tmp_path, source, ledger=ledger)
    agency = Agency(source)
    _seed(agency)
    project = load(root)

    def bug(point: str) -> None:
        if point == "after_publish":
            raise RuntimeError("a bug")

    summary = _archive_with(project, bug)
    assert summary.failed == 1 and summary.errors == ["RuntimeError: a bug"]
    assert agency.count() == 12
    [summary] = engine.run(project)  # recovered: the same file, now deleted
    assert summary.archive[0]["recovered"] is True and summary.archive[0]["deleted"] == 9
    assert len(files(tmp_path / "out")) == 1
    account(tmp_path / "out", agency, agency.added, ledger)


def test_a_parquet_archive_of_a_mixed_column_gives_advice_an_archive_task_can_follow(tmp_path: Path) -> None:
    """The error advised task.toml [columns], which an archive task refuses as an unknown setting."""
    url = f"sqlite:///{tmp_path / 'src.db'}"
    with sqlite3.connect(tmp_path / "src.db") as conn:  # name without a type: SQLite keeps 5 and 'text' apart
        conn.execute("CREATE TABLE agency (id INTEGER PRIMARY KEY, base_id INTEGER, updated_at TEXT, name)")
    agency = Agency(url, create=False)
    t0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    agency.version(1, t0, "text")
    agency.version(1, t0 + dt.timedelta(hours=1), "newer")
    agency.conn.execute(
        "INSERT INTO agency (base_id, updated_at, name) VALUES (2, '2020-01-01T00:00:00Z', 5)"
    )
    agency.version(2, t0 + dt.timedelta(hours=1), "newer")
    root = _project(tmp_path, url)
    task = root / "tasks" / "agency"
    (task / "task.toml").write_text('kind = "archive"\nboundary = "midnight"\nformat = "parquet"\n')
    failed = cli(root, "run")
    assert failed.returncode == 1 and "CAST(name AS TEXT) AS name" in failed.stdout + failed.stderr
    select = (task / "select.sql").read_text()
    (task / "select.sql").write_text(select.replace("SELECT *", "SELECT a.id, a.base_id, a.updated_at,"
                                                    " CAST(a.name AS TEXT) AS name"))  # fmt: skip
    done = cli(root, "run")
    assert done.returncode == 0, done.stdout + done.stderr
    [archived] = files(tmp_path / "out")
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(archived).column("name").to_pylist()) == ["5", "text"]


def test_a_run_kept_waiting_for_the_naming_lock_says_what_it_waited_for(tmp_path: Path) -> None:
    from sluicegate.ledger.archive import NAMING_LOCK, ArchiveBusy

    url = f"sqlite:///{tmp_path / 'src.db'}"
    _seed(Agency(url))
    project = load(_project(tmp_path, url))
    settings = project.settings
    with Ledger(settings.ledger_url, schema=settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        with (
            Ledger(settings.ledger_url, schema=settings.ledger_schema) as other,
            ledger.archive.hold(NAMING_LOCK),
            pytest.raises(ArchiveBusy) as busy,
            other.archive.hold(NAMING_LOCK, wait=0.2),
        ):
            pass
    assert str(busy.value).startswith("another archive run is choosing its file name (waited 0.2 s)")


def test_a_run_chooses_its_file_name_under_the_naming_lock(tmp_path: Path) -> None:
    """Two tasks whose paths render alike, run side by side, both found a name free before either
    recorded it, and one file replaced the other after its rows were deleted."""
    import fcntl
    import os

    url = f"sqlite:///{tmp_path / 'src.db'}"
    agency = Agency(url)
    _seed(agency)
    root = _project(tmp_path, url)
    project = load(root)
    task_lock = f"{tmp_path / 'src.db'}.archive-agency.lock"
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        with ledger.archive.hold("(file names)"):  # archive.NAMING_LOCK
            proc = _spawn(root, "run", "--json")
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:  # until the run holds its task
                fd = os.open(task_lock, os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    break
                finally:
                    os.close(fd)
                time.sleep(0.05)
            time.sleep(0.5)
            # the run holds its task's lock, and names no file while another run is naming one
            assert proc.poll() is None and ledger.archive.unfinished("agency") is None
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)[0]["rows"] == 9 and len(files(tmp_path / "out")) == 1


def test_a_run_that_lost_its_lock_while_reading_never_replaces_the_next_runs_file(
    tmp_path: Path, server_url: str
) -> None:
    """The lock dies during the read; a second run redoes the run and deletes; the first one must
    not then put its older file (without the rows that arrived meanwhile) over the second's."""
    root = _project(tmp_path, server_url)
    agency = Agency(server_url)
    _seed(agency)
    project = load(root)
    second: list[TaskSummary] = []

    def lose_lock_then_let_another_run(point: str) -> None:
        if point != "mid_write" or second:
            return
        if agency.mariadb:
            [holder] = agency.conn.execute(MARIADB_LOCK_HOLDER).fetchone()
            agency.conn.execute(f"KILL CONNECTION {int(holder)}")
        else:
            agency.conn.execute(PG_KILL_LOCK_HOLDER)
        if not agency.mariadb:  # MariaDB: the first run's share locks keep writers and deleters out
            _seed(agency, bases=1, first=10)  # 3 more superseded rows, after the first run's snapshot
            second.extend(engine.run(load(root)))

    summary = _archive_with(project, lose_lock_then_let_another_run)
    assert summary.failed == 1 and agency.count() == (4 if second else 12)
    if second:
        assert second[0].archive[0]["recovered"] is True and second[0].archive[0]["deleted"] == 12
    engine.run(project)  # MariaDB: redoes the first run
    account(tmp_path / "out", agency, agency.added, server_url)


def _to_s3(root: Path, tmp_path: Path, endpoint: str, bucket: str) -> None:
    """Point the project's destination at ``s3://bucket/out`` on ``endpoint``."""
    config = (root / "sluicegate.toml").read_text()
    s3 = f'url = "s3://{bucket}/out"\nendpoint_url = "{endpoint}"'
    (root / "sluicegate.toml").write_text(config.replace(f'url = "{tmp_path / "out"}"', s3))


def _seeded_on_s3(tmp_path: Path, endpoint: str, bucket: str) -> tuple[Path, Agency]:
    """A SQLite project archiving to ``s3://bucket/out`` on ``endpoint``, its table seeded."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    _to_s3(root, tmp_path, endpoint, bucket)
    agency = Agency(url)
    _seed(agency)
    return root, agency


def _archived_on_s3(endpoint: str, bucket: str) -> set[int]:
    """The ids in the one archive object under ``out/`` (the change feed left out)."""
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    [key] = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
             if "_manifests" not in o["Key"] and "_sluicegate" not in o["Key"]]  # fmt: skip
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return {int(r["id"]) for r in csv.DictReader(io.StringIO(gzip.decompress(body).decode()))}


@pytest.mark.pg
def test_a_run_that_lost_its_lock_never_replaces_the_next_runs_object_on_s3(
    tmp_path: Path, pg_url: str, s3_bucket: tuple[str, str]
) -> None:
    """As above, on S3: the first run's upload must wait for its lock check, not go to the key at once."""
    endpoint, bucket = s3_bucket
    root = _project(tmp_path, pg_url)
    _to_s3(root, tmp_path, endpoint, bucket)
    agency = Agency(pg_url)
    _seed(agency)
    project = load(root)
    second: list[TaskSummary] = []

    def lose_lock_then_let_another_run(point: str) -> None:
        if point == "mid_write" and not second:
            agency.conn.execute(PG_KILL_LOCK_HOLDER)
            _seed(agency, bases=1, first=10)  # 3 more superseded rows, after the first run's snapshot
            second.extend(engine.run(load(root)))

    summary = _archive_with(project, lose_lock_then_let_another_run)
    assert summary.failed == 1 and second[0].archive[0]["deleted"] == 12 and agency.count() == 4
    archived = _archived_on_s3(endpoint, bucket)
    assert set(agency.added) - agency.ids() == archived, "rows were deleted that are in no object"


def test_a_redone_run_replaces_its_own_s3_object(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    """A run that published its object and deleted nothing is redone into the same key (fenced uploads)."""
    endpoint, bucket = s3_bucket
    root, agency = _seeded_on_s3(tmp_path, endpoint, bucket)
    (root / "tasks/agency/delete.sql").write_text("DELETE FROM agency WHERE updated_at < %(export_boundary)s")
    [failed] = engine.run(load(root))
    assert failed.failed == 1 and agency.count() == 12
    _seed(agency, bases=1, first=10)
    (root / "tasks/agency/delete.sql").write_text(DELETE_SQLITE)
    [summary] = engine.run(load(root))
    assert summary.failed == 0 and summary.archive[0]["recovered"] is True and agency.count() == 4
    archived = _archived_on_s3(endpoint, bucket)
    assert set(agency.added) - agency.ids() == archived and len(archived) == 12


def test_an_s3_object_replaced_by_one_of_the_same_size_before_the_verify_deletes_nothing(
    tmp_path: Path, s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer puts other bytes of the same size at the key between the upload and the
    verify: the verify must see it is not our object (its ETag), and nothing is deleted."""
    from sluicegate.destinations.s3 import S3Destination

    endpoint, bucket = s3_bucket
    root, agency = _seeded_on_s3(tmp_path, endpoint, bucket)
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    sync = S3Destination.sync

    def sync_then_overwrite(self: S3Destination, staged: Any = None) -> None:
        sync(self, staged)
        for one in staged or ():
            if one.path.startswith("_sluicegate/"):  # the destination's id, not an archive's object
                continue
            key = self.key(one.path)
            size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
            client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)  # a stranger's object

    monkeypatch.setattr(S3Destination, "sync", sync_then_overwrite)
    [summary] = engine.run(load(root))
    assert summary.failed == 1 and agency.count() == 12, "rows were deleted that are in no object"


@pytest.mark.mariadb
def test_a_file_name_longer_than_the_ledger_holds_is_refused_not_cut(
    tmp_path: Path, mariadb_url: str
) -> None:
    """A MariaDB server without strict mode cuts a too-long VARCHAR with a warning: the ledger then
    held another name than the file's, and a second task rendering the same name took it again."""
    root = _project(tmp_path, mariadb_url)
    long = "d" * 200
    for name in ("agency", "copy"):
        task = root / "tasks" / name
        if name != "agency":
            shutil.copytree(root / "tasks/agency", task)
        (task / "task.toml").write_text(
            f'kind = "archive"\npath = "{long}/{long}/{long}/{{boundary:%Y%m%d}}.{{ext}}"\n'
        )
    agency = Agency(mariadb_url)
    admin = mariadb_conn.connect(mariadb_url)
    [mode] = admin.execute("SELECT @@GLOBAL.sql_mode").fetchone()
    admin.execute("SET GLOBAL sql_mode = ''")  # a server as many older installations run it
    try:
        _seed(agency)
        [first] = engine.run(load(root), ["agency"])
        assert first.failed == 1 and "Data too long for column 'path'" in first.errors[0]
        assert agency.count() == 12 and not files(tmp_path / "out")  # refused before anything was written
        _seed(agency, first=10)
        engine.run(load(root), ["copy"])
    finally:
        admin.execute("SET GLOBAL sql_mode = %s", (mode,))
    archived = [int(r["id"]) for p in files(tmp_path / "out") for r in _rows(p)]
    assert not (lost := set(agency.added) - agency.ids() - set(archived)), f"rows lost: {sorted(lost)}"


def test_a_file_on_another_file_system_is_made_durable_before_the_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync = "batch"`` makes files durable with syncfs(2), which reaches one file system: a task
    folder that is a mount point or a symlink to another one must be synced too, before the delete."""
    elsewhere = Path("/dev/shm") / f"sluicegate-test-{time.time_ns()}"
    if not Path("/dev/shm").is_dir() or Path("/dev/shm").stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test folder")
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    (root / "tasks/agency/task.toml").write_text('kind = "archive"\npath = "{task}/{task}-{run}.{ext}"\n')
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/agency").symlink_to(elsewhere)
    real = local_destination._syncfs()
    if real is None:
        pytest.skip("needs Linux syncfs(2)")
    synced: list[int] = []

    def recording(fd: int) -> int:
        synced.append(os.fstat(fd).st_dev)
        return real(fd)

    monkeypatch.setattr(local_destination, "_syncfs", lambda: recording)
    agency = Agency(url)
    _seed(agency)
    try:
        [summary] = engine.run(load(root))
        assert summary.failed == 0 and agency.count() == 3
        assert synced.count(elsewhere.stat().st_dev) >= 2, "the file's bytes and its rename were never synced"
    finally:
        shutil.rmtree(elsewhere)


@pytest.mark.pg
@pytest.mark.parametrize("apart", [False, True], ids=["shared", "ledger-apart"])
def test_a_run_whose_lock_dies_right_after_its_last_check_never_replaces_the_next_runs_file(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, apart: bool
) -> None:
    """The lock dies just after the check before the file is placed, and a second run redoes the
    run and finishes: the first run's ledger row, or its witness row with the ledger apart (either
    locked before the file is placed), stops it."""
    ledger = request.getfixturevalue("ledger_pg_url") if apart else pg_url
    root = _project(tmp_path, pg_url, ledger=ledger if apart else None)
    agency = Agency(pg_url)
    _seed(agency)
    project = load(root)
    hold = ledger_archive.ArchiveStore.hold
    checks: list[int] = []
    second: list[TaskSummary] = []

    @contextlib.contextmanager
    def racing_hold(self: Any, task: str, **kwargs: Any) -> Iterator[Any]:
        with hold(self, task, **kwargs) as held:
            if task != "agency" or checks:  # the second run, and the naming lock, as they are
                yield held
                return

            def check() -> None:
                held()
                checks.append(1)
                if len(checks) == 2:  # the check before the file is placed has just passed
                    agency.conn.execute(PG_KILL_LOCK_HOLDER)
                    _seed(agency, bases=1, first=10)  # 3 more superseded rows, after the snapshot
                    second.extend(engine.run(load(root)))

            yield check

    monkeypatch.setattr(ledger_archive.ArchiveStore, "hold", racing_hold)
    [summary] = engine.run(project)
    assert summary.failed == 1 and second[0].archive[0]["deleted"] == 12 and agency.count() == 4
    account(tmp_path / "out", agency, agency.added, ledger)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize(
    "value", ["'infinity'::timestamptz", "'0044-03-15 BC'::date", "'infinity'::timestamp"]
)
def test_a_time_no_file_can_hold_fails_the_run_by_column_and_deletes_nothing(
    tmp_path: Path, pg_url: str, fmt: str, value: str
) -> None:
    """Parquet and JSON lines read an archive's rows with psycopg, which refused 'infinity' or a
    BC time with "database ... rejected a value: timestamp too large (after year 10K)", naming
    neither the column nor what to do (partitioned tasks name both). Now the run fails with the
    column's name and the cast to make in select.sql, and deletes nothing."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE held (id int, t timestamptz)")
        conn.execute("INSERT INTO held VALUES (1, now() - interval '2 days')")
    root = tmp_path / "proj"
    task = root / "tasks" / "held"
    task.mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
    )
    (task / "task.toml").write_text(f'kind = "archive"\nboundary = "midnight"\nformat = "{fmt}"\n')
    (task / "select.sql").write_text(
        f"SELECT id, t, {value} AS valid_to FROM held WHERE t < %(export_boundary)s"
    )
    (task / "delete.sql").write_text("DELETE FROM held WHERE t < %(export_boundary)s")
    result = cli(root, "run")
    assert result.returncode == 1
    assert "column 'valid_to' holds" in result.stdout + result.stderr
    assert "cast it in select.sql" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM held").fetchone() == (1,)


def _sqlite_archive(tmp_path: Path, name: str, values: list[Any]) -> tuple[Project, Path]:
    """A SQLite archive task writing Parquet, its table ``m (id, v)`` holding ``values`` (no
    affinity: each keeps its type), its select ordered by ``id`` and its delete of every row."""
    root = tmp_path / name
    task = root / "tasks" / "m"
    task.mkdir(parents=True)
    with sqlite3.connect(root / "src.db") as conn:
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, v)")
        conn.executemany("INSERT INTO m VALUES (?, ?)", enumerate(values))
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "sqlite:///{root / "src.db"}"\n[destination]\nurl = "{root / "out"}"\n'
    )
    (task / "task.toml").write_text('kind = "archive"\nformat = "parquet"\n')
    (task / "select.sql").write_text("SELECT id, v FROM m ORDER BY id")
    (task / "delete.sql").write_text("DELETE FROM m")
    return load(root), root


def test_a_sqlite_parquet_archive_types_a_column_by_its_values_not_by_the_read_chunks(tmp_path: Path) -> None:
    """A SQLite archive's Parquet types each column from its values, read 5,000 rows at a time,
    and cast every later chunk to the first chunk's types: text '007' after 5,000 integers was
    written as the integer 7 (the run deleted the rows); a column NULL in the first 5,000 rows
    failed the run ("could not be written as Parquet null"), and a fraction after integers too,
    where one chunk of the same rows gives a double. Now text among numbers fails the run by
    column and deletes nothing, and the others are written as one chunk of them would be."""
    chunk = sqlite_source.CHUNK_ROWS
    project, root = _sqlite_archive(tmp_path, "text", [*range(chunk), "007"])
    [summary] = engine.run(project)
    assert summary.failed == 1 and not files(root / "out")
    assert "column 'v' holds int64 values and later string values" in summary.errors[0]
    with sqlite3.connect(root / "src.db") as conn:
        assert conn.execute("SELECT count(*) FROM m").fetchone() == (chunk + 1,)
    for name, values, typ in [
        ("nulls", [*[None] * chunk, 5], "int64"),
        ("fraction", [*range(chunk), 1.5], "double"),
        ("blob", [*[str(i) for i in range(chunk)], b"\xff"], "binary"),
    ]:
        project, root = _sqlite_archive(tmp_path, name, values)
        [summary] = engine.run(project)
        assert summary.failed == 0, summary.errors
        [written] = files(root / "out")
        table = pq.read_table(written)
        assert str(table.schema.field("v").type) == typ
        expected = [v.encode() if typ == "binary" and isinstance(v, str) else v for v in values]
        assert table.column("v").to_pylist() == expected


def test_a_sqlite_parquet_archive_null_through_its_first_row_group_names_an_order_that_exports_it(
    tmp_path: Path,
) -> None:
    """A column NULL in every row of a SQLite archive's first Parquet row group (a column added
    to the table later) is written with no type, and a later value fails the run. The error
    advised a cast (CAST(v AS TEXT)), which leaves NULL untyped and failed the same way; it now
    names the order that puts the values first, and that order exports every row."""
    nulls = parquet_format.ROW_GROUP_ROWS + 2 * sqlite_source.CHUNK_ROWS  # "x": after the group
    project, root = _sqlite_archive(tmp_path, "late", [*[None] * nulls, "x"])
    [summary] = engine.run(project)
    assert summary.failed == 1 and not files(root / "out")
    assert "column 'v' is NULL in every row of the file's first row group" in summary.errors[0]
    assert "ORDER BY v IS NULL" in summary.errors[0]
    assert "CAST(v AS TEXT)" not in summary.errors[0]
    (root / "tasks/m/select.sql").write_text("SELECT id, v FROM m ORDER BY v IS NULL, id")
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary.errors
    [written] = files(root / "out")
    table = pq.read_table(written)
    assert str(table.schema.field("v").type) == "string"
    assert table.num_rows == nulls + 1 and table.column("v").to_pylist()[0] == "x"
