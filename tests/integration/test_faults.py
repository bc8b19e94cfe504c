"""Errors on every read path, lost database connections, honest counts and the time budget.

Each test breaks a run the way an operator would (a select that fails for one partition's
rows, backends terminated mid-run, a server restarted, a tight ``--max-runtime``) and checks
what the documentation promises: the other partitions are exported, the bad ones are parked
or backed off with their error in ``status``, no claim is left behind, a summary is printed.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate import engine, operations
from sluicegate.exceptions import PermissionDenied
from sluicegate.ledger import Ledger
from sluicegate.partitions import make_partition
from support import SLUICEGATE, Db, files, hours, load, write_project

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)

# (read path, format): ADBC/Arrow for CSV and Parquet, server COPY for CSV, psycopg rows for Parquet.
READ_PATHS = [("adbc", "csv"), ("adbc", "parquet"), ("copy", "csv"), ("rows", "parquet")]


@pytest.fixture(params=READ_PATHS, ids=[f"{p}-{f}" for p, f in READ_PATHS])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The format to export; without ADBC for the COPY and rows paths."""
    path, fmt = request.param
    if path in ("copy", "rows"):
        from sluicegate.sources import arrow as arrow_source
        from sluicegate.sources import postgres as pg_source

        monkeypatch.setattr(arrow_source, "available", lambda: False)
        monkeypatch.setattr(pg_source, "arrow_available", lambda: False)
    return str(fmt)


def _project(tmp_path: Path, url: str, fmt: str, select: str, **kwargs: Any) -> Path:
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt=fmt, capture="explicit",
        zone="UTC", **kwargs,
    )  # fmt: skip
    (root / "tasks" / "openaq" / "select.sql").write_text(select)
    return root


def _fill(db: Db, locations: range, days: int = 2) -> None:
    for loc in locations:
        db.location(loc, "UTC")
        db.insert(loc, hours(DAY, 24 * days))


def _mark_all(root: Path, locations: range, days: int = 2) -> None:
    project = load(root)
    for loc in locations:
        for d in range(days):
            day = (DAY + dt.timedelta(days=d)).date().isoformat()
            operations.mark(project, "openaq", {"location_id": str(loc), "day": day})


DIVIDE = (
    "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, "
    "100 / (m.location_id - 3) AS ratio FROM measurements AS m"
)


# Division by zero in the server's words (see TIMED_OUT): "ERROR:  division by zero" in libpq's text.
DIVIDED = {"en": "division by zero", "de": "Division durch Null"}


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_a_select_failing_for_one_partition_parks_it_and_exports_the_rest(
    tmp_path: Path, pg_url: str, read_path: str, language: str
) -> None:
    """Division by zero in location 3's rows only: on every read path the batch is retried
    partition by partition, location 3 is parked with the database's error, the rest export.
    With German messages ADBC's error ("FEHLER:  Division durch Null", no SQLSTATE) was not
    told from an outage by its English "ERROR:": the whole batch was charged, "unavailable",
    and the error kept its severity word, which English's loses."""
    db = Db(pg_url)
    _fill(db, range(1, 6))
    db.speak(language)
    root = _project(tmp_path, pg_url, read_path, DIVIDE)
    _mark_all(root, range(1, 6))
    [summary] = engine.run(load(root), ["openaq"])
    assert (summary.exported, summary.failed, summary.task_errors) == (8, 2, []), summary.errors
    said = f": {DIVIDED[language]}"
    assert all(e.endswith(said) and "unavailable" not in e for e in summary.errors), summary.errors
    [status] = operations.status(load(root), ["openaq"])
    assert (status["failed"], status["claimed"], status["pending"], status["exported"]) == (2, 0, 0, 8)
    assert {json.loads(f["partition"])[0] for f in status["failures"]} == {3}
    assert len(files(tmp_path / "out")) == 8


@pytest.mark.pg
def test_the_cli_prints_its_summary_and_exits_1_when_a_partition_fails(tmp_path: Path, pg_url: str) -> None:
    """Before, an ADBC error escaped as a Python traceback, without a summary, with every claim held."""
    db = Db(pg_url)
    _fill(db, range(1, 6))
    root = _project(tmp_path, pg_url, "csv.gz", DIVIDE)
    _mark_all(root, range(1, 6))
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(root), "run", "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [summary] = json.loads(proc.stdout)
    assert (summary["exported"], summary["failed"]) == (8, 2)
    assert db.scalar("SELECT count(*) FROM sluicegate.partitions WHERE claim_token IS NOT NULL") == 0


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_terminated_backends_mid_run_are_reconnected_and_nothing_stays_claimed(
    tmp_path: Path, pg_url: str, read_path: str, language: str
) -> None:
    """Every connection of the run (source, ledger, ADBC) is terminated while a batch is read:
    the run reconnects, the lost batch is retried, every partition ends exported, none claimed.
    With German messages ADBC's "FATAL:  Verbindung wird abgebrochen ..." was not seen as a lost
    connection (its English words were looked for): the batch was charged an attempt."""
    db = Db(pg_url)
    db.speak(language)
    db.conn.execute(
        "CREATE FUNCTION slow(loc int, t timestamptz) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF loc = 3 AND t = '2024-01-01T00:00:00Z' THEN PERFORM pg_sleep(1.5); END IF; RETURN 1; END $$"
    )
    _fill(db, range(1, 7))
    select = (
        "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, slow(m.location_id, m.datetime) AS s "
        "FROM measurements AS m"
    )
    # One exporter: with two, the other's batch may meet the terminations in its publish or
    # commit and record a failed attempt (retried in the same run) instead of a clean retry.
    # A batch charged an attempt would wait out its backoff: a lost connection charges none.
    root = _project(
        tmp_path, pg_url, read_path, select, backoff="1h", extra_defaults="batch_size = 4\nworkers = 1"
    )
    _mark_all(root, range(1, 7))
    killed: list[int] = []

    def killer() -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for _ in range(200):
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'PgSleep'"
                ).fetchall()
                if rows:
                    others = admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    ).fetchall()
                    for (pid,) in others:
                        if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                            killed.append(pid)
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
    assert killed, "the test never saw the slow batch query"
    assert summary.task_errors == []
    [status] = operations.status(load(root), ["openaq"])
    assert (status["claimed"], status["failed"], status["exported"]) == (0, 0, 12), status
    assert summary.failed == 0 and summary.exported == 12


@pytest.mark.pg
def test_a_server_restart_mid_run_commits_what_was_published(tmp_path: Path, pg_server: Any) -> None:
    """PostgreSQL restarted with -m immediate while the run is between batches: the run waits
    for the server, commits the files it had published and exports the rest, in the same run."""
    url = pg_server.url("postgres").rsplit("/", 1)[0] + "/restart_test"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS restart_test WITH (FORCE)")
        admin.execute("CREATE DATABASE restart_test")
        # The test server runs with synchronous_commit off: a crash would lose the last commits,
        # which is the server's doing, not sluicegate's. This database commits durably.
        admin.execute("ALTER DATABASE restart_test SET synchronous_commit = on")
    db = Db(url)
    db.conn.execute(
        "CREATE FUNCTION slow(loc int, t timestamptz) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF loc = 3 AND t = '2024-01-01T00:00:00Z' THEN PERFORM pg_sleep(1.0); END IF; RETURN 1; END $$"
    )
    _fill(db, range(1, 7))
    db.close()
    select = (
        "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, slow(m.location_id, m.datetime) AS s "
        "FROM measurements AS m"
    )
    root = _project(tmp_path, url, "csv", select, extra_defaults="batch_size = 4")
    _mark_all(root, range(1, 7))
    restarted = threading.Event()

    def restart() -> None:
        with psycopg.connect(url, autocommit=True) as probe:
            for _ in range(200):
                if probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                    "AND pid <> pg_backend_pid()"
                ).fetchone()[0]:
                    break
                time.sleep(0.05)
        subprocess.run(
            [*_runuser(), str(pg_server.bindir / "pg_ctl"), "restart", "-m", "immediate", "-w",
             f"--pgdata={pg_server.data_dir}", f"--log={pg_server.log_path}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
    assert restarted.is_set()
    assert summary.task_errors == [], summary.task_errors
    [status] = operations.status(load(root), ["openaq"])
    with psycopg.connect(url) as check:
        left = check.execute(
            "SELECT pkey, version, exported_version, claim_token, attempts, last_error "
            "FROM sluicegate.partitions WHERE version <> exported_version"
        ).fetchall()
    assert (status["claimed"], status["failed"], status["exported"]) == (0, 0, 12), (status, summary, left)
    assert len(files(tmp_path / "out")) == 12
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE restart_test WITH (FORCE)")


def _runuser() -> list[str]:
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]


@pytest.mark.pg
def test_a_partition_retried_within_a_run_is_counted_once(
    tmp_path: Path, pg_url: str, read_path: str
) -> None:
    """With no backoff, a partition whose read keeps failing with a transient error (SQLSTATE
    40001) is claimed again in the same run until it is parked: one failed partition, not four."""
    db = Db(pg_url)
    db.conn.execute(
        "CREATE FUNCTION flaky(loc int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF loc = 2 THEN RAISE EXCEPTION 'could not serialize access due to concurrent update' "
        "USING ERRCODE = '40001'; END IF; "
        "RETURN 1; END $$"
    )
    _fill(db, range(1, 4), days=1)
    select = "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, flaky(m.location_id) AS f FROM measurements AS m"
    root = _project(
        tmp_path, pg_url, read_path, select, backoff="0s", extra_defaults="max_attempts = 4\nbatch_size = 1"
    )
    _mark_all(root, range(1, 4), days=1)
    [summary] = engine.run(load(root), ["openaq"])
    assert (summary.exported, summary.failed, len(summary.errors)) == (2, 1, 1)
    [status] = operations.status(load(root), ["openaq"])
    assert status["failed"] == 1 and [f["attempts"] for f in status["failures"]] == [4]


def test_a_task_level_error_is_not_counted_as_a_failed_partition(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, "csv", "SELECT * FROM no_such_table")
    Db(url)
    [summary] = engine.run(load(root), ["openaq"])
    assert summary.failed == 0
    assert len(summary.task_errors) == 1 and "no_such_table" in summary.task_errors[0]
    assert not summary.ok


def test_max_runtime_ends_the_process_inside_its_budget(tmp_path: Path) -> None:
    """A run with more work than time ends before its budget, counted from the process start,
    having committed what it published and released the rest."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv.gz", capture="explicit",
        zone="UTC", extra_defaults="batch_size = 50",
    )  # fmt: skip
    db = Db(url)
    _fill(db, range(1, 101), days=60)  # 6,000 location-days: far more than fits in the budget
    task = load(root).tasks["openaq"]
    days = [(DAY + dt.timedelta(days=d)).date() for d in range(60)]
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        ledger.partitions.mark(
            [make_partition(task, (loc,), day, "UTC") for loc in range(1, 101) for day in days], task
        )
    budget = 3.0
    started = time.monotonic()
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(root), "run", "--max-runtime", f"{budget}s", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)
    assert elapsed < budget, f"the run took {elapsed:.2f} s of a {budget} s budget"
    assert 0 < summary["exported"] < 6000
    [status] = operations.status(load(root), ["openaq"])
    assert status["claimed"] == 0 and status["exported"] == summary["exported"]


def _run_until_killed_at_poison(root: Path, url: str) -> int:
    """One ``sluicegate run``, SIGKILLed (as the OOM killer would) once it reads the poison
    partition (its select sleeps in ``pg_sleep``); its exit code (-9 when killed)."""
    proc = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with psycopg.connect(url, autocommit=True) as admin:
        while proc.poll() is None:
            sleeping = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
            if pids := [pid for (pid,) in admin.execute(sleeping).fetchall()]:
                proc.kill()
                proc.wait()
                for pid in pids:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            time.sleep(0.05)
    proc.communicate()
    return proc.returncode


@pytest.mark.pg
@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_partition_that_kills_its_worker_takes_down_no_other_partition_of_its_batch(
    tmp_path: Path, pg_url: str, max_attempts: int
) -> None:
    """Location 3's first day kills the worker each time it is read. It died with the nine other
    partitions of its batch; each run then claimed the ten back together (an attempt each) and died
    again, until all ten were parked, nine never exported. A dead batch is now taken over together
    once more, uncounted (its second chance: an innocent crash recovers at batch speed), and when
    that dies too its partitions are taken over one at a time, counted only when alone in their
    dead claim: the nine are exported, only the poison is parked, after one more death than when
    every dead batch was taken over one partition at a time. With max_attempts = 1 the last of the
    nine taken over was parked too: it was counted as if it had died alone."""
    db = Db(pg_url)
    db.conn.execute(
        "CREATE FUNCTION poison(loc int, t timestamptz) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF loc = 3 AND t = '2024-01-01T00:00:00Z' THEN PERFORM pg_sleep(60); END IF; RETURN 1; END $$"
    )
    _fill(db, range(1, 6))
    select = (
        "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, poison(m.location_id, m.datetime)"
        " AS p FROM measurements AS m"
    )
    root = _project(
        tmp_path,
        pg_url,
        "csv",
        select,
        lease="1s",
        extra_defaults=f"max_attempts = {max_attempts}\nworkers = 1",
    )
    _mark_all(root, range(1, 6))
    codes, held = [], []
    held_now = "SELECT DISTINCT substr(claim_token::text, 15, 1), count(*) OVER (PARTITION BY claim_token)"
    held_now += " FROM sluicegate.partitions WHERE claim_token IS NOT NULL"
    for _ in range(7):
        codes.append(_run_until_killed_at_poison(root, pg_url))
        held.append(sorted(db.rows(held_now)))
        if codes[-1] != -9:
            break
        time.sleep(1.3)  # the dead run's lease runs out
    # the batch, then its second chance (one claim of the ten), then the poison alone until parked
    assert codes == [-9] * (2 + max_attempts) + [1], codes
    # then 4 exported one at a time before the poison, which died alone, 5 left after it
    assert held[:3] == [[("4", 10)], [("7", 10)], [("7", 5), ("8", 1)]], held
    [status] = operations.status(load(root), ["openaq"])
    assert (status["exported"], status["failed"], status["claimed"], status["pending"]) == (9, 1, 0, 0), (
        status
    )
    [failure] = status["failures"]
    assert json.loads(failure["partition"]) == [3, "2024-01-01"] and failure["attempts"] == max_attempts, (
        failure
    )
    assert len(files(tmp_path / "out")) == 9


@pytest.mark.pg
def test_a_partition_claimed_alone_while_a_batch_kills_the_worker_is_not_charged_for_its_death(
    tmp_path: Path, pg_url: str
) -> None:
    """A claim that found one partition (location 1) put it under a lone token, but the loop went
    on with its file in flight, uncommitted, and claimed the next batch (locations 2 and 3, marked
    meanwhile), whose poison (3) killed the worker. Taken over, location 1 was charged for that
    death as if it had died alone: with max_attempts = 1 the healthy partition was parked."""
    db = Db(pg_url)
    db.conn.execute(
        "CREATE FUNCTION gate(loc int, t timestamptz) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF loc = 1 AND t = '2024-01-01T00:00:00Z' THEN PERFORM pg_advisory_lock(4242);"
        " PERFORM pg_advisory_unlock(4242); END IF; "
        "IF loc = 3 AND t = '2024-01-01T00:00:00Z' THEN PERFORM pg_sleep(60); END IF; RETURN 1; END $$"
    )
    _fill(db, range(1, 4), days=1)
    select = (
        "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, gate(m.location_id, m.datetime)"
        " AS p FROM measurements AS m"
    )
    root = _project(
        tmp_path, pg_url, "csv", select, lease="1s", extra_defaults="max_attempts = 1\nworkers = 1"
    )
    _mark_all(root, range(1, 2), days=1)
    waiting = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = '{}'"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(4242)")
        proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        while not admin.execute(waiting.format("advisory")).fetchall():  # location 1 is being read
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        _mark_all(root, range(2, 4), days=1)
        admin.execute("SELECT pg_advisory_unlock(4242)")
        while not (pids := admin.execute(waiting.format("PgSleep")).fetchall()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        proc.communicate()
        for (pid,) in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    codes = []
    for _ in range(6):
        time.sleep(1.3)  # the dead run's lease runs out
        codes.append(_run_until_killed_at_poison(root, pg_url))
        if codes[-1] != -9:
            break
    [status] = operations.status(load(root), ["openaq"])
    assert (status["exported"], status["failed"]) == (2, 1), (codes, status)
    [failure] = status["failures"]
    assert json.loads(failure["partition"]) == [3, "2024-01-01"], failure


# A statement timeout's words in the language of the server's messages (lc_messages, see
# Db.speak). sluicegate tells a timeout by its SQLSTATE.
TIMED_OUT = {
    "en": "canceling statement due to statement timeout",
    "de": "storniere Anfrage wegen Zeitüberschreitung der Anfrage",
}


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_a_source_refusing_the_connection_for_want_of_connect_is_permission_denied(
    tmp_path: Path, own_pg_server: tuple[Any, Any], language: str
) -> None:
    """The source's role lacks CONNECT on its database. The server refuses the session before it
    has one, with a FATAL no driver gives a SQLSTATE for: its words stand for 42501. In German
    ("keine Berechtigung für Datenbank", in the server's own lc_messages: a database's setting
    comes too late) the refusal was taken for an outage ("...; will retry"), where English names
    the missing privilege and what to do."""
    server, _ = own_pg_server
    admin = server.url()
    db = Db(admin)
    db.speak(language, server=True)
    db.conn.execute("CREATE ROLE reader LOGIN PASSWORD 'pw'")
    _fill(db, range(1, 2), days=1)
    reader = admin.replace(f"//{server.user}:{server.password}@", "//reader:pw@")
    root = write_project(
        tmp_path / "proj", source=reader, ledger=admin, destination=str(tmp_path / "out"),
        capture="explicit", zone="UTC",
    )  # fmt: skip
    _mark_all(root, range(1, 2), days=1)
    db.conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
    with pytest.raises(PermissionDenied, match="the role lacks a privilege it needs") as refused:
        engine.run(load(root), ["openaq"])
    assert "reader:***@" in str(refused.value) and "will retry" not in str(refused.value)


def _one_slow_location(db: Db, locations: range, *, slow: int | None, language: str = "en") -> str:
    """Fill ``locations``, give the database a 1 s ``statement_timeout`` and messages in
    ``language``; return a select whose read of location ``slow`` (None: of every location)
    runs out of it (0.1 s a row)."""
    _fill(db, locations)
    db.speak(language)
    db.conn.execute(f"ALTER DATABASE {db.scalar('SELECT current_database()')} SET statement_timeout = '1s'")
    sleep = (
        "pg_sleep(0.1)::text"
        if slow is None
        else f"CASE WHEN m.location_id = {slow} THEN pg_sleep(0.1)::text END"
    )
    return f"SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, {sleep} AS s FROM measurements AS m"


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_a_statement_timeout_of_one_partition_is_read_alone_and_the_rest_of_its_batch_exports(
    tmp_path: Path, pg_url: str, read_path: str, language: str
) -> None:
    """The database's ``statement_timeout`` cancels the reads of location 3 only, in the second
    batch. A timeout is transient, and its whole batch was charged an attempt: location 4, read
    with it on every run, was parked with location 3 once its attempts were used up. Its batch is
    read one partition at a time, as for a terminal error: only location 3 is charged. Its error
    said "database ... is unavailable: canceling statement ...", an outage, not the query's limit.
    With German messages (lc_messages) the batch failed whole again: the timeout was told by its
    English words."""
    select = _one_slow_location(Db(pg_url), range(1, 6), slow=3, language=language)
    root = _project(
        tmp_path, pg_url, read_path, select, backoff="1h", extra_defaults="batch_size = 4\nmax_attempts = 2"
    )
    _mark_all(root, range(1, 6))
    [first] = engine.run(load(root), ["openaq"])
    assert (first.exported, first.failed) == (8, 2), first.errors
    assert all(e.startswith("[3,") for e in first.errors), first.errors
    said = f"{TIMED_OUT[language]} (raise it or make the query faster); will retry"
    assert all(e.endswith(said) and "unavailable" not in e for e in first.errors), first.errors
    [status] = operations.status(load(root), ["openaq"])
    assert (status["failed"], status["retrying"], status["claimed"], status["exported"]) == (0, 2, 0, 8)


@pytest.mark.pg
def test_a_batch_read_alone_after_a_statement_timeout_keeps_to_max_runtime(
    tmp_path: Path, pg_url: str
) -> None:
    """Every location runs out of the 1 s ``statement_timeout``: the batch, then each location
    read alone. The reads alone never reached the pipeline's deadline checks, so a batch of 500
    such partitions would take 500 timeouts whatever ``--max-runtime`` said. Now the rest of the
    batch is given back, without an attempt, once the budget is spent."""
    select = _one_slow_location(Db(pg_url), range(1, 7), slow=None)
    root = _project(tmp_path, pg_url, "csv", select, extra_defaults="batch_size = 12\nworkers = 1")
    _mark_all(root, range(1, 7))
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(root), "run", "--max-runtime", "3s", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    [summary] = json.loads(proc.stdout)
    [status] = operations.status(load(root), ["openaq"])
    assert summary["exported"] == 0 and status["claimed"] == 0
    assert 0 < summary["failed"] < 12, summary  # some read alone and charged, the rest given back
    assert (status["retrying"], status["pending"], status["failed"]) == (summary["failed"], 12, 0), status


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_a_run_told_to_stop_while_reading_a_batch_alone_gives_the_rest_back(
    tmp_path: Path, pg_url: str, language: str
) -> None:
    """SIGTERM while the partitions of a timed-out batch are read one at a time: the run read on
    through all 12, each running out of the 1 s ``statement_timeout`` and charged an attempt, as
    a stop let the batch in hand finish. Now the read in hand finishes and the rest of the batch
    goes back to pending, without an attempt. With German messages the batch was not read alone:
    all 12 were charged for its timeout."""
    select = _one_slow_location(Db(pg_url), range(1, 7), slow=None, language=language)
    root = _project(
        tmp_path, pg_url, "csv", select, backoff="1h", extra_defaults="batch_size = 12\nworkers = 1"
    )
    _mark_all(root, range(1, 7))
    proc = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)  # the batch has run out of its time, and the reads alone have begun
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # partitions failed in the run: 1 goes before 143
    [summary] = json.loads(out)
    [status] = operations.status(load(root), ["openaq"])
    assert summary["exported"] == 0 and status["claimed"] == 0, (summary, err)
    assert 0 < summary["failed"] <= 3, summary  # the reads alone before the stop and the one in hand
    # pending counts the retrying ones too
    assert (status["retrying"], status["pending"]) == (summary["failed"], 12), status


@pytest.mark.pg
def test_a_run_stopped_at_once_mid_read_on_a_german_server_records_no_timeout(
    tmp_path: Path, pg_url: str, pg_server: Any
) -> None:
    """A second SIGTERM mid-read stops the run at once: psycopg cancels the query (SQLSTATE 57014,
    as a statement timeout's, "storniere Anfrage wegen Benutzeraufforderung" in German) and the
    run exits. Now that 57014 is a timeout in any language, the run's own cancel must still be
    none: no partition charged, none parked, nothing said about a time limit."""
    db = Db(pg_url)
    _fill(db, range(1, 3), days=1)
    db.speak("de")
    select = (
        "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, pg_sleep(0.2)::text AS s"
        " FROM measurements AS m"
    )
    root = _project(tmp_path, pg_url, "jsonl", select)  # jsonl: psycopg's rows, whose cancel this is
    _mark_all(root, range(1, 3), days=1)
    logged = pg_server.log_path.stat().st_size
    proc = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while not db.conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
    ).fetchall():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    with pg_server.log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(logged)
        assert "storniere Anfrage wegen Benutzeraufforderung" in log.read()  # the cancel, in German
    [status] = operations.status(load(root), ["openaq"])
    counts = (status["pending"] + status["claimed"], status["retrying"], status["failed"], status["exported"])
    assert counts == (2, 0, 0, 0) and "raise it" not in err, (status, err)


@pytest.mark.pg
def test_a_partition_parked_on_its_last_transient_attempt_does_not_say_will_retry_in_the_run(
    tmp_path: Path, pg_url: str
) -> None:
    """A statement timeout on the last attempt parks the partition; the run's error line said
    "...; will retry", though nothing will (``status`` had dropped it already)."""
    select = _one_slow_location(Db(pg_url), range(1, 3), slow=2)
    root = _project(tmp_path, pg_url, "csv", select, extra_defaults="max_attempts = 1")
    _mark_all(root, range(1, 3))
    proc = subprocess.run([SLUICEGATE, "-C", str(root), "run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(
        line.endswith("statement timeout (raise it or make the query faster)") for line in lines
    )
    [status] = operations.status(load(root), ["openaq"])
    assert (status["failed"], status["exported"]) == (2, 2)
