"""Least privilege on PostgreSQL: roles with exactly the GRANTs `sluicegate grants` prints.

The database's owner (the test server's superuser) installs; the exporter role has only what
the printed script grants, after PUBLIC lost its default CONNECT and its USAGE on ``public``,
so every printed grant is needed and the run proves them sufficient.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sluicegate import db
from sluicegate.exceptions import PermissionDenied
from support import Db, cli, files, hours, read_csv, write_project

UTC = dt.UTC
PASSWORD = "grants-Secret-1"

# Changes waiting in the trigger inbox: runs, and single bins from triggers of before version 11.
INBOX_COUNT = "SELECT (SELECT count(*) FROM sluicegate.change_runs) + (SELECT count(*) FROM sluicegate.changes)"


class Roles:
    """Login roles made for one test, dropped with everything granted to them afterwards."""

    def __init__(self, server: Any, dbname: str) -> None:
        self.server, self.dbname = server, dbname
        self.names: list[str] = []

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.url(self.dbname), autocommit=True)

    def create(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), PASSWORD))
        self.names.append(name)
        return name

    def url(self, role: str) -> str:
        return f"postgresql://{role}:{PASSWORD}@{self.server.host}:{self.server.port}/{self.dbname}"

    def drop(self) -> None:
        with self.admin() as conn:
            for name in self.names:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def roles(pg_server: Any, pg_url: str) -> Iterator[Roles]:
    dbname = pg_url.rsplit("/", 1)[1]
    made = Roles(pg_server, dbname)
    with made.admin() as conn:  # no default privileges to lean on: every grant must be printed
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname)))
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    yield made
    made.drop()


def _project(tmp_path: Path, owner_url: str, exporter_url: str) -> Path:
    """One partitioned (trigger), one incremental and one archive task, over the exporter's URL."""
    Db(owner_url).close()  # the OpenAQ tables
    root = write_project(tmp_path / "proj", source=exporter_url, destination=str(tmp_path / "out"))
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text, uploaded_on timestamptz)"
        )
        conn.execute("CREATE TABLE agency (id serial PRIMARY KEY, updated_at timestamptz, name text)")
    studies = root / "tasks" / "studies"
    studies.mkdir()
    (studies / "task.toml").write_text(
        textwrap.dedent(
            """
            kind = "incremental"
            entity = "study_id"
            cursor = "uploaded_on"
            format = "csv"
            path = "studies/{study_id}/{start:%Y%m%d}-{end:%Y%m%d}.{ext}"
            bootstrap = "beginning"
            safety_margin = "0s"
            """
        )
    )
    (studies / "select.sql").write_text("SELECT record_id, study_id, uploaded_on FROM records")
    agency = root / "tasks" / "agency"
    agency.mkdir()
    (agency / "task.toml").write_text(
        'kind = "archive"\nformat = "csv"\npath = "agency/{task}-{run}.{ext}"\n'
    )
    (agency / "select.sql").write_text(
        "SELECT id, updated_at, name FROM agency WHERE updated_at < %(export_boundary)s"
    )
    (agency / "delete.sql").write_text("DELETE FROM agency WHERE updated_at < %(export_boundary)s")
    return root


def _as(url: str) -> dict[str, str]:
    return {"SLUICEGATE_SOURCE__URL": url}


def _setup(tmp_path: Path, roles: Roles, pg_url: str) -> tuple[Path, str]:
    """The project, installed by the owner, with data in every table; returns (root, exporter)."""
    exporter = roles.create("exporter")
    root = _project(tmp_path, pg_url, roles.url(exporter))
    cli(root, "install", env=_as(pg_url), check=True)  # the ledger and the triggers, as the owner
    two_days_ago = dt.datetime.combine(dt.date.today() - dt.timedelta(days=2), dt.time(), tzinfo=UTC)
    db = Db(pg_url)
    db.location(1, "UTC")
    db.insert(1, hours(two_days_ago, 24))
    db.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO records (study_id, uploaded_on) VALUES (%s, %s)",
                (f"s{i % 2}", two_days_ago + dt.timedelta(hours=i)),
            )
            conn.execute("INSERT INTO agency (updated_at, name) VALUES (%s, %s)", (two_days_ago, f"n{i}"))
    return root, exporter


def _apply(pg_url: str, script: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(script)


def _rows(pg_url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return list(conn.execute(query).fetchall())


def test_the_printed_grants_are_enough_for_every_kind(tmp_path: Path, roles: Roles, pg_url: str) -> None:
    root, exporter = _setup(tmp_path, roles, pg_url)
    script = cli(root, "grants", "--role", exporter, env=_as(pg_url), check=True).stdout
    assert "GRANT DELETE" not in script.replace("SELECT, DELETE", "")  # DELETE only with SELECT, on agency
    assert f'GRANT SELECT, DELETE ON TABLE "public"."agency" TO "{exporter}";' in script
    assert f'GRANT pg_read_all_stats TO "{exporter}";' in script
    _apply(pg_url, script)

    proc = cli(root, "run")  # as the exporter: the project's own URL
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    day = [p for p in files(out) if p.name.startswith("location-1-")]
    assert len(day) == 1 and len(read_csv(day[0])) == 24
    studies = files(out / "studies")
    assert sorted(p.parent.name for p in studies) == ["s0", "s1"]
    assert sum(len(read_csv(p)) for p in studies) == 5
    [archived] = files(out / "agency")
    assert len(read_csv(archived)) == 5
    assert _rows(pg_url, "SELECT count(*) FROM agency") == [(0,)]
    assert _rows(pg_url, INBOX_COUNT) == [(0,)]  # the inbox was folded


def test_a_run_by_the_granted_role_warns_once_that_the_two_projects_check_is_off(
    tmp_path: Path, roles: Roles, pg_url: str
) -> None:
    """The role `sluicegate grants` prints may not read the ledger's meta table, where each task's
    destination id is recorded: its runs skipped the check that no other project shares the ledger
    without a word. Now each run warns once, naming the id file, and goes on."""
    root, exporter = _setup(tmp_path, roles, pg_url)
    _apply(pg_url, cli(root, "grants", "--role", exporter, env=_as(pg_url), check=True).stdout)
    proc = cli(root, "run", "openaq")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "is off for this run" in line]
    assert len(warned) == 1, proc.stderr
    assert str(tmp_path / "out" / "_sluicegate" / "destination-id") in warned[0]
    assert "no other project shares this ledger" in warned[0]


def test_check_names_a_missing_pg_read_all_stats_that_would_lose_late_commits(
    tmp_path: Path, roles: Roles, pg_url: str
) -> None:
    """Without pg_read_all_stats the exporter sees no other role's open transaction, so the
    late-commit cap does not apply and a row such a transaction writes (DEFAULT now()) lands
    below a watermark that has moved past it. `check` said "ok"; it now names the grant."""
    root, exporter = _setup(tmp_path, roles, pg_url)
    _apply(pg_url, cli(root, "grants", "--role", exporter, env=_as(pg_url), check=True).stdout)
    _apply(pg_url, f'REVOKE pg_read_all_stats FROM "{exporter}"')
    cli(root, "run", "studies", "--type", "instant", check=True)
    with psycopg.connect(pg_url) as writer:  # the owner, another role: its transaction stays open
        writer.execute("INSERT INTO records (study_id, uploaded_on) VALUES ('s0', now())")
        time.sleep(0.2)
        cli(root, "run", "studies", "--type", "instant", check=True)
        writer.commit()
    cli(root, "run", "studies", "--type", "instant", check=True)
    exported = sum(len(read_csv(p)) for p in files(tmp_path / "out" / "studies"))
    assert exported == 5  # the late row is in no file: what check must warn about
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pg_read_all_stats" in proc.stdout + proc.stderr and f"sluicegate -C {root} grants" in proc.stdout + proc.stderr
    _apply(pg_url, f'GRANT pg_read_all_stats TO "{exporter}"')
    proc = cli(root, "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_archive_without_delete_fails_closed(tmp_path: Path, roles: Roles, pg_url: str) -> None:
    root, exporter = _setup(tmp_path, roles, pg_url)
    _apply(pg_url, cli(root, "grants", "agency", "--role", exporter, env=_as(pg_url), check=True).stdout)
    _apply(pg_url, f'REVOKE DELETE ON agency FROM "{exporter}"')

    proc = cli(root, "run", "agency")
    assert proc.returncode != 0
    assert not (tmp_path / "out").exists() or files(tmp_path / "out") == []
    assert "Traceback" not in proc.stderr
    message = proc.stdout + proc.stderr
    assert "delete.sql" in message and "DELETE" in message and f"sluicegate -C {root} grants agency" in message
    assert _rows(pg_url, "SELECT count(*) FROM agency") == [(5,)]
    assert _rows(pg_url, "SELECT count(*) FROM sluicegate.archive_runs") == [(0,)]
    [(error,)] = _rows(pg_url, "SELECT error FROM sluicegate.task_errors WHERE task = 'agency'")
    assert "delete.sql" in error and "permission denied" in error


def test_a_read_only_role_reads_status_and_changes_nothing(tmp_path: Path, roles: Roles, pg_url: str) -> None:
    root, _ = _setup(tmp_path, roles, pg_url)
    reader = roles.create("reader")
    _apply(pg_url, cli(root, "grants", "--read-only", "--role", reader, env=_as(pg_url), check=True).stdout)
    _apply(
        pg_url, f'GRANT USAGE ON SCHEMA public TO "{reader}"; GRANT SELECT ON locations TO "{reader}"'
    )  # zones
    as_reader = _as(roles.url(reader))
    cli(root, "run", "openaq", env=_as(pg_url), check=True)  # the owner exports: the ledger has partitions
    before = _rows(pg_url, "SELECT task, pkey, version FROM sluicegate.partitions ORDER BY 1, 2")
    assert before

    status = cli(root, "status", "--json", env=as_reader)
    assert status.returncode == 0, status.stderr
    rows = {row["task"]: row for row in json.loads(status.stdout)}
    assert set(rows) >= {"openaq", "studies", "agency"}
    assert rows["openaq"]["inbox"] == 0  # the trigger inbox is readable (None when it is not)
    day = (dt.date.today() - dt.timedelta(days=2)).isoformat()
    for args in (
        ("mark", "openaq", "location_id=1", f"day={day}"), ("reset", "openaq", "--failed"), ("reexport", "openaq"),
    ):  # fmt: skip
        proc = cli(root, *args, env=as_reader)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr
        assert "permission denied for table partitions" in proc.stderr
        assert f"sluicegate -C {root} grants" in proc.stderr
    assert _rows(pg_url, "SELECT task, pkey, version FROM sluicegate.partitions ORDER BY 1, 2") == before


def test_a_writer_with_only_insert_records_its_changes(tmp_path: Path, roles: Roles, pg_url: str) -> None:
    _setup(tmp_path, roles, pg_url)
    writer = roles.create("writer")
    dbname = pg_url.rsplit("/", 1)[1]
    _apply(pg_url, f'GRANT CONNECT ON DATABASE "{dbname}" TO "{writer}"')
    _apply(pg_url, f'GRANT USAGE ON SCHEMA public TO "{writer}"')
    _apply(pg_url, f'GRANT INSERT ON measurements TO "{writer}"')
    before = _rows(pg_url, "SELECT count(*) FROM sluicegate.change_runs")[0][0]

    # The trigger function runs as the ledger's owner under the writer's search_path: a writer
    # who may create objects puts on it a closer match for a function and an operator the
    # function's body calls. Named in pg_catalog, they are not taken.
    _apply(pg_url, f'CREATE SCHEMA hijack AUTHORIZATION "{writer}"')
    with psycopg.connect(roles.url(writer), autocommit=True) as conn:
        conn.execute("SET search_path = hijack, public")
        conn.execute(
            "CREATE FUNCTION hijack.jsonb_build_array(integer) RETURNS jsonb LANGUAGE sql"
            " AS $$ SELECT '[\"hijacked\"]'::jsonb $$"
        )
        conn.execute(
            "CREATE FUNCTION hijack.div(double precision, integer) RETURNS double precision LANGUAGE sql"
            " AS $$ SELECT 0::double precision $$"
        )
        conn.execute("CREATE OPERATOR hijack./ (leftarg = double precision, rightarg = integer, function = hijack.div)")
        assert conn.execute("SELECT 7::double precision / 7, jsonb_build_array(1)").fetchone() == (0, ["hijacked"])
        conn.execute(
            "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at)"
            " VALUES (1, 10, '2024-05-02T10:20Z', 2.5, now())"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM sluicegate.change_runs")  # the inbox is not the writer's
    assert _rows(pg_url, "SELECT count(*) FROM sluicegate.change_runs")[0][0] == before + 1
    recorded = _rows(pg_url, "SELECT keys, first_bin, last_bin FROM sluicegate.change_runs ORDER BY id DESC LIMIT 1")
    assert recorded == [([1], dt.datetime(2024, 5, 2, 10, 15, tzinfo=UTC), dt.datetime(2024, 5, 2, 10, 15, tzinfo=UTC))]


def test_a_role_without_connect_is_refused_at_once_not_retried(roles: Roles) -> None:
    stranger = roles.create("stranger")  # PUBLIC lost CONNECT: this role may not connect
    started = time.monotonic()
    for ledger in (False, True):
        with pytest.raises(PermissionDenied, match="sluicegate grants"):
            db.reconnect(roles.url(stranger), ledger=ledger, seconds=20)
    assert time.monotonic() - started < 5  # not the reconnect loop's 20 s each


def test_a_source_table_without_select_stops_the_task_with_the_fix(
    tmp_path: Path, roles: Roles, pg_url: str
) -> None:
    root, exporter = _setup(tmp_path, roles, pg_url)
    _apply(pg_url, cli(root, "grants", "openaq", "--role", exporter, env=_as(pg_url), check=True).stdout)
    _apply(pg_url, f'REVOKE SELECT ON sensors FROM "{exporter}"')

    proc = cli(root, "run", "openaq")
    assert proc.returncode == 1, proc.stderr  # a run-time failure, not "fix the SQL" (exit 2)
    assert "Traceback" not in proc.stderr and "fix the SQL" not in proc.stderr
    assert not (tmp_path / "out").exists() or files(tmp_path / "out") == []
    [(error, config)] = _rows(
        pg_url, "SELECT error, config FROM sluicegate.task_errors WHERE task = 'openaq'"
    )
    assert "permission denied for table sensors" in error and "sluicegate grants openaq" in error
    assert not config
    # Nothing was claimed or parked: once granted, the next run exports the partition.
    assert _rows(pg_url, "SELECT failed, claim_token FROM sluicegate.partitions") == [(False, None)]
    _apply(pg_url, f'GRANT SELECT ON sensors TO "{exporter}"')
    assert cli(root, "run", "openaq").returncode == 0
    assert len(files(tmp_path / "out")) == 1


@pytest.fixture
def ledger_db(pg_server: Any, roles: Roles) -> Iterator[str]:
    """A second database for the ledger (dropped before the roles are)."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _apply_by_database(server: Any, first: str, script: str) -> list[str]:
    """Run a script with psql ``\\connect`` lines, as the owner; return the databases in order."""
    done, database, chunk = [], first, []
    for line in [*script.splitlines(), "\\connect END"]:
        if line.startswith("\\connect "):
            with psycopg.connect(server.url(database), autocommit=True) as conn:
                conn.execute("\n".join(chunk))
            done.append(database)
            database, chunk = line.split(" ", 1)[1].strip('"'), []
        else:
            chunk.append(line)
    return done


def test_the_printed_grants_are_enough_with_the_ledger_elsewhere(
    tmp_path: Path, pg_server: Any, roles: Roles, pg_url: str, ledger_db: str
) -> None:
    exporter = roles.create("exporter")
    root = _project(tmp_path, pg_url, roles.url(exporter))
    for folder in (root / "tasks" / "agency").iterdir():  # archive: see the witness note in permissions.md
        folder.unlink()
    (root / "tasks" / "agency").rmdir()
    exporter_ledger = roles.url(exporter).rsplit("/", 1)[0] + f"/{ledger_db}"
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[ledger]\n", f'[ledger]\nurl = "{exporter_ledger}"\n'))
    owner = {**_as(pg_url), "SLUICEGATE_LEDGER__URL": pg_server.url(ledger_db)}
    cli(root, "install", env=owner, check=True)
    db = Db(pg_url)
    day = dt.datetime.combine(dt.date.today() - dt.timedelta(days=2), dt.time(), tzinfo=UTC)
    db.location(1, "UTC")
    db.insert(1, hours(day, 24))
    db.close()
    _apply(pg_url, "INSERT INTO records (study_id, uploaded_on) VALUES ('s0', now() - interval '2 days')")

    script = cli(root, "grants", "--role", exporter, env=owner, check=True).stdout
    databases = _apply_by_database(pg_server, ledger_db, script)
    assert ledger_db in databases and pg_url.rsplit("/", 1)[1] in databases

    proc = cli(root, "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len([p for p in files(tmp_path / "out") if p.name.startswith("location-1-")]) == 1
    assert len(files(tmp_path / "out" / "studies")) == 1
    assert _rows(pg_url, INBOX_COUNT) == [(0,)]
