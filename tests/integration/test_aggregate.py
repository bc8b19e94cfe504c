"""Aggregate tasks: the window, ticks and their claims, the ledger record, files.

Each test builds the airmax example project in a temporary folder and evaluates its
``current_air_quality`` task (the mean pm25 per city over ``[t - 3h, t)``) at chosen ticks, on
SQLite, PostgreSQL and MariaDB (the raw table, the table sink and the ledger in that database).
Configuration errors do not depend on the database and run on SQLite only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from airmax_support import AGGREGATE, add_raw, airmax_project, stamps, table
from sluicegate import engine, tables
from sluicegate.drivers import Context
from sluicegate.drivers import aggregate as agg
from sluicegate.drivers.aggregate_check import reads_window
from sluicegate.exceptions import ConfigError, LedgerError
from sluicegate.options import RunOptions
from sluicegate.schedules import due_tick
from support import SLUICEGATE, cli, load, read_csv

UTC = dt.UTC
T = dt.datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
YEAR = dt.datetime.now(UTC).year


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.pg),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "pg":
        return str(request.getfixturevalue("pg_url"))
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    return f"sqlite:///{tmp_path / 'airmax.db'}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'airmax.db'}"


def _evaluate(root: Path, tick: dt.datetime) -> agg.Evaluation:
    project = load(root)
    context = Context.open(project)
    try:
        task = project.tasks[AGGREGATE]
        assert isinstance(task, agg.Task)
        return agg.evaluate(context, task, tick)
    finally:
        context.close()


def _evaluations(root: Path) -> list[dict[str, object]]:
    project = load(root)
    context = Context.open(project)
    try:
        return context.ledger.aggregates.recent(AGGREGATE, limit=100)
    finally:
        context.close()


def test_the_window_is_bounded_on_both_sides_and_crosses_midnight(tmp_path: Path, url: str) -> None:
    """At 00:01 UTC the 3-hour window is [21:01, 00:01) of the day before: 22:30 counts, 21:00 and a
    row stamped at the tick or in the future do not (airmax had no upper bound, and its TIME-typed
    utc_time() put the window on the wrong day after midnight)."""
    root = airmax_project(tmp_path / "proj", url)
    tick = dt.datetime(2024, 3, 11, 0, 1, tzinfo=UTC)
    add_raw(url, [
        ("Gent", dt.datetime(2024, 3, 10, 22, 30, tzinfo=UTC), 10.0),  # in
        ("Gent", dt.datetime(2024, 3, 10, 21, 1, tzinfo=UTC), 20.0),  # in: the window's first instant
        ("Gent", dt.datetime(2024, 3, 11, 0, 0, 59, tzinfo=UTC), 30.0),  # in: a second before the tick
        ("Gent", dt.datetime(2024, 3, 10, 21, 0, 59, tzinfo=UTC), 1000.0),  # out: before the window
        ("Gent", dt.datetime(2024, 3, 11, 0, 1, tzinfo=UTC), 1000.0),  # out: the tick itself
        ("Gent", dt.datetime(2024, 3, 11, 6, 0, tzinfo=UTC), 1000.0),  # out: stamped in the future
        ("Genk", dt.datetime(2024, 3, 10, 23, 59, tzinfo=UTC), 5.0),  # in
    ])  # fmt: skip
    result = _evaluate(root, tick)
    assert (result.state, result.rows, result.error) == ("done", 2, None)
    assert (result.window_start, result.window_end) == (dt.datetime(2024, 3, 10, 21, 1, tzinfo=UTC), tick)
    rows = {r["city"]: r for r in table(url)}
    assert rows["Gent"]["num_measurements"] == 3 and rows["Gent"]["parameter_value"] == pytest.approx(20.0)
    assert rows["Genk"]["num_measurements"] == 1
    assert stamps(list(rows.values())) == {tick}  # t is stored in every row, as UTC


def test_a_later_evaluation_replaces_the_table_and_records_each_evaluation(tmp_path: Path, url: str) -> None:
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Leuven", T - dt.timedelta(hours=4), 2.0)])
    assert _evaluate(root, T).state == "done"
    assert [r["city"] for r in table(url)] == ["Gent"]
    later = T + dt.timedelta(hours=2, minutes=30)  # Gent's row has left the window; nothing is in it
    add_raw(url, [("Hasselt", later - dt.timedelta(minutes=5), 3.0)], prefix="n")
    assert _evaluate(root, later).rows == 1
    assert [r["city"] for r in table(url)] == ["Hasselt"] and stamps(table(url)) == {later}
    records = _evaluations(root)
    assert [(r["tick"], r["state"], r["rows"]) for r in records] == [(later, "done", 1), (T, "done", 1)]
    assert records[0]["window_start"] == later - dt.timedelta(hours=3)
    assert all(isinstance(r["seconds"], float) and r["error"] is None for r in records)


def test_a_tick_is_evaluated_once(tmp_path: Path, url: str) -> None:
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T).state == "done"
    again = _evaluate(root, T)
    assert again.state == "skipped" and again.rows == 0
    assert len(_evaluations(root)) == 1


def test_two_workers_never_evaluate_the_same_tick(tmp_path: Path, url: str) -> None:
    """Eight workers, each with its own connections, start the same tick at the same moment."""
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    barrier = threading.Barrier(8)
    states: list[str] = []

    def worker() -> None:
        project = load(root)
        context = Context.open(project)
        try:
            barrier.wait()
            states.append(agg.evaluate(context, project.tasks[AGGREGATE], T).state)  # type: ignore[arg-type]
        finally:
            context.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(states) == ["done"] + ["skipped"] * 7


def test_a_worker_killed_between_the_table_and_its_record_is_taken_over_after_its_lease(
    tmp_path: Path, url: str
) -> None:
    """The table is in another database than the ledger: SIGKILL after the table committed, before
    the evaluation was recorded. The tick stays claimed until its lease runs out; then the next run
    evaluates it again, replacing the table with the same evaluation, and records it done."""
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    root = airmax_project(tmp_path / "proj", url, ledger=ledger, every="1h", task_extra='lease = "1s"')
    add_raw(url, [("Gent", dt.datetime.now(UTC) - dt.timedelta(minutes=90), 1.0)])  # in the due tick's window
    env = {**os.environ, "SLUICEGATE_TESTING__FAULT": "after_aggregate_table_commit"}
    proc = subprocess.Popen([SLUICEGATE, "-C", str(root), "run", AGGREGATE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    marker, deadline = root / ".fault-after_aggregate_table_commit", time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its fault point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r["city"] for r in table(url)] == ["Gent"]
    [record] = _evaluations(root)
    assert (record["state"], record["attempts"]) == ("running", 1)
    assert engine.run(load(root), [AGGREGATE], RunOptions())[0].exported == 0  # its lease holds it
    time.sleep(1.2)
    assert engine.run(load(root), [AGGREGATE], RunOptions())[0].exported == 1
    [record] = _evaluations(root)
    assert (record["state"], record["attempts"], record["rows"]) == ("done", 2, 1)
    assert [r["city"] for r in table(url)] == ["Gent"] and stamps(table(url)) == {record["tick"]}


def test_missed_ticks_are_evaluated_once_on_restart(tmp_path: Path, url: str) -> None:
    """The worker was down for an hour (twelve 5-minute ticks): its next run evaluates only the latest."""
    root = airmax_project(tmp_path / "proj", url)
    now = dt.datetime.now(UTC)
    add_raw(url, [("Gent", now - dt.timedelta(hours=1), 1.0)])
    before = due_tick(load(root).tasks[AGGREGATE], now - dt.timedelta(hours=1))
    assert _evaluate(root, before).state == "done"
    summaries = engine.run(load(root), [AGGREGATE], RunOptions())
    assert summaries[0].ok and summaries[0].exported == 1
    ticks = [r["tick"] for r in _evaluations(root)]
    assert len(ticks) == 2 and ticks[1] == before
    assert ticks[0] == due_tick(load(root).tasks[AGGREGATE], dt.datetime.now(UTC))
    assert engine.run(load(root), [AGGREGATE], RunOptions())[0].exported == 0  # that tick is done
    assert len(_evaluations(root)) == 2


def test_a_cron_schedule_ticks_in_its_zone(tmp_path: Path, url: str) -> None:
    """schedule = "0 * * * *" in Asia/Kolkata (UTC+05:30) ticks at :30 UTC; a run evaluates the latest."""
    root = airmax_project(tmp_path / "proj", url)
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(
        toml.read_text().replace('every = "5m"', 'schedule = "0 * * * *"\nschedule_zone = "Asia/Kolkata"')
    )
    [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    [evaluation] = summary.aggregate
    tick = dt.datetime.fromisoformat(evaluation["tick"])
    assert (tick.minute, tick.second) == (30, 0) and dt.datetime.now(UTC) - tick < dt.timedelta(hours=1)
    assert evaluation["state"] == "done"


def test_a_daily_schedule_window_is_the_local_day_across_clock_changes(tmp_path: Path, url: str) -> None:
    """width = "1d" with a daily schedule in a zone is 24 hours: on the day the clocks go back the
    local day's first hour was in no window, and on the day they go forward the previous day's
    last hour was counted twice. width = "schedule" is the time since the schedule's last tick."""
    root = airmax_project(tmp_path / "proj", url)
    toml = root / "tasks" / AGGREGATE / "task.toml"
    text = toml.read_text().replace(
        'every = "5m"', 'schedule = "0 0 * * *"\nschedule_zone = "Europe/Brussels"'
    )
    toml.write_text(re.sub(r'width = "[^"]*"', 'width = "schedule"', text))
    utc = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    add_raw(url, [
        ("Gent", utc(2024, 10, 26, 21, 30), 1000.0),  # 26 Oct 23:30 local: the day before
        ("Gent", utc(2024, 10, 26, 22, 30), 10.0),  # 27 Oct 00:30 local: was in no window
        ("Gent", utc(2024, 10, 27, 22, 30), 20.0),  # 27 Oct 23:30 local (CET)
        ("Leuven", utc(2024, 3, 30, 22, 30), 30.0),  # 30 Mar 23:30 local: was counted on 31 Mar too
        ("Leuven", utc(2024, 3, 30, 23, 30), 40.0),  # 31 Mar 00:30 local
    ])  # fmt: skip
    spring = _evaluate(root, utc(2024, 3, 31, 22))  # 1 Apr 00:00 CEST: the 23-hour day before it
    assert (spring.window_start, spring.window_end) == (utc(2024, 3, 30, 23), utc(2024, 3, 31, 22))
    assert {r["city"]: r["num_measurements"] for r in table(url)} == {"Leuven": 1}
    fall = _evaluate(root, utc(2024, 10, 27, 23))  # 28 Oct 00:00 CET: the 25-hour day before it
    assert (fall.window_start, fall.window_end) == (utc(2024, 10, 26, 22), utc(2024, 10, 27, 23))
    assert {r["city"]: r["num_measurements"] for r in table(url)} == {"Gent": 2}


def test_a_daily_schedule_at_a_midnight_that_comes_twice_ticks_once_for_a_25_hour_day(
    tmp_path: Path, sqlite_url: str
) -> None:
    """America/Havana's midnight comes twice on 2024-11-03 (01:00 back to 00:00): "0 0 * * *" ticked
    at both, so with width = "schedule" the day was a 24-hour window and a 1-hour one, and the
    evaluation of 4 November 00:00 left out the repeated hour. It ticks once, at the first midnight,
    and the window of 4 November 00:00 is all of 3 November, 25 hours."""
    root = airmax_project(tmp_path / "proj", sqlite_url, width="schedule")
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(
        toml.read_text().replace('every = "5m"', 'schedule = "0 0 * * *"\nschedule_zone = "America/Havana"')
    )
    utc = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    add_raw(sqlite_url, [
        ("Habana", utc(2024, 11, 3, 3, 30), 1000.0),  # 2 Nov 23:30 local: the day before
        ("Habana", utc(2024, 11, 3, 4, 30), 10.0),  # 00:30 CDT, the first pass
        ("Habana", utc(2024, 11, 3, 5, 30), 20.0),  # 00:30 CST, the second pass
        ("Habana", utc(2024, 11, 4, 4, 30), 30.0),  # 3 Nov 23:30 CST
    ])  # fmt: skip
    task = load(root).tasks[AGGREGATE]
    nows = [utc(2024, 11, 3, 3) + dt.timedelta(minutes=30 * k) for k in range(2 * 28)]
    ticks = sorted({due_tick(task, now) for now in nows})
    assert ticks == [utc(2024, 11, 2, 4), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)]
    day = _evaluate(root, utc(2024, 11, 4, 5))
    assert (day.window_start, day.window_end) == (utc(2024, 11, 3, 4), utc(2024, 11, 4, 5))
    assert [(r["num_measurements"], r["parameter_value"]) for r in table(sqlite_url)] == [(3, 20.0)]


def test_a_claim_whose_lease_ran_out_is_taken_over_and_fenced(tmp_path: Path, url: str) -> None:
    """A worker that died mid-evaluation holds its tick only for the lease; after it, another worker
    evaluates the tick, and the first one, should it wake up, can record nothing."""
    root = airmax_project(tmp_path / "proj", url, task_extra='lease = "1s"')
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    project = load(root)
    context = Context.open(project)
    try:
        store = context.ledger.aggregates
        dead = str(uuid.uuid4())
        assert store.claim(AGGREGATE, T, (T - dt.timedelta(hours=3), T), token=dead, lease=1) == 1
        assert _evaluate(root, T).state == "skipped"  # the claim is alive
        time.sleep(1.2)
        taken = _evaluate(root, T)
        assert taken.state == "done"
        assert not store.finish(AGGREGATE, T, dead, rows=99, seconds=1.0)
        assert not store.renew(AGGREGATE, T, dead, lease=60)
        [record] = store.recent(AGGREGATE)
        assert (record["state"], record["rows"], record["attempts"]) == ("done", 1, 2)
    finally:
        context.close()


def test_a_failed_evaluation_is_recorded_and_retried(tmp_path: Path, url: str) -> None:
    root = airmax_project(tmp_path / "proj", url)
    db = tables.TableDb(url)
    db.execute("ALTER TABLE raw RENAME TO raw_elsewhere")  # the window's table is gone
    failed = _evaluate(root, T)
    assert failed.state == "failed" and failed.error is not None and "raw" in failed.error
    [record] = _evaluations(root)
    assert record["state"] == "failed" and "raw" in str(record["error"])
    db.execute("ALTER TABLE raw_elsewhere RENAME TO raw")
    db.close()
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T).state == "done"  # backoff is 0s in this project
    [record] = _evaluations(root)
    assert (record["state"], record["attempts"], record["error"]) == ("done", 2, None)


def test_a_released_tick_is_claimed_again_at_once_with_no_attempt_counted(tmp_path: Path, url: str) -> None:
    """The ledger's release of a tick whose select lost the source, on each database."""
    root = airmax_project(tmp_path / "proj", url)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('backoff = "0s"', 'backoff = "10m"'))
    context = Context.open(load(root))
    try:
        store, token = context.ledger.aggregates, str(uuid.uuid4())
        assert store.claim(AGGREGATE, T, (T - dt.timedelta(hours=3), T), token=token, lease=60) == 1
        store.release(AGGREGATE, T, token, error="source lost", seconds=0.5)
        again = str(uuid.uuid4())
        assert store.claim(AGGREGATE, T, (T - dt.timedelta(hours=3), T), token=again, lease=60) == 1
    finally:
        context.close()


def test_a_tick_given_back_shows_as_waiting_for_the_source_not_failed(tmp_path: Path, url: str) -> None:
    """A tick whose select lost the source is given back, no attempt counted; `status` showed it as
    `failed 1` (the ledger keeps it as a failed row with 0 attempts), though nothing failed: the
    next run evaluates it at once. It shows as waiting for the source now, with the source's error,
    until an evaluation of that or a later tick; a charged failure still counts as failed."""
    root = airmax_project(tmp_path / "proj", url)
    window = (T - dt.timedelta(hours=3), T)
    context = Context.open(load(root))
    try:
        store, token = context.ledger.aggregates, str(uuid.uuid4())
        store.claim(AGGREGATE, T, window, token=token, lease=60)
        store.release(AGGREGATE, T, token, error="database x is unavailable: gone", seconds=0.5)
        counts = store.status(AGGREGATE)
        shown = [counts[k] for k in ("failed", "waiting_for_source", "last_error", "source_error")]
        assert shown == [0, True, None, "database x is unavailable: gone"], counts
        [record] = store.recent(AGGREGATE)
        assert (record["state"], record["attempts"]) == ("lost", 0), record
        line = cli(root, "status", AGGREGATE, check=True).stdout
        assert "failed 0, waiting for source yes" in line, line
        assert "source error database x is unavailable: gone" in line, line
        later, again = T + dt.timedelta(minutes=5), str(uuid.uuid4())  # a later tick fails, charged
        store.claim(AGGREGATE, later, (later - dt.timedelta(hours=3), later), token=again, lease=60)
        store.fail(AGGREGATE, later, again, error="no such table: raw", seconds=0.1, delay=0)
        counts = store.status(AGGREGATE)
        shown = [counts[k] for k in ("failed", "waiting_for_source", "last_error", "source_error")]
        assert shown == [1, False, "no such table: raw", None], counts
    finally:
        context.close()


def _loses_the_source(root: Path, pg_url: str, function: str) -> dt.datetime:
    """Have the airmax aggregate's select call ``function`` (a plpgsql body of ``lose()``, run per
    row of the window) with a backoff of 10 minutes; one row in the window of the tick due now."""
    db = tables.TableDb(pg_url)
    db.execute("CREATE SEQUENCE armed")
    db.execute("GRANT ALL ON SEQUENCE armed TO PUBLIC")
    db.execute(f"CREATE FUNCTION lose() RETURNS int LANGUAGE plpgsql AS $$ BEGIN {function} RETURN 1; END $$")
    db.close()
    return _select_per_row(root, pg_url, "lose() = 1")


def _select_per_row(root: Path, url: str, condition: str) -> dt.datetime:
    """Have the airmax aggregate's select test ``condition`` on each row of the window, with a
    backoff of 10 minutes; one row in the window of the tick due now (its time returned)."""
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('backoff = "0s"', 'backoff = "10m"'))
    (root / "tasks" / AGGREGATE / "select.sql").write_text(
        "SELECT city, parameter_name, parameter_unit, avg(parameter_value) AS parameter_value,"
        f" count(*) AS num_measurements FROM in_window WHERE {condition}"
        " GROUP BY city, parameter_name, parameter_unit"
    )
    tick = due_tick(load(root).tasks[AGGREGATE], dt.datetime.now(UTC))
    assert tick is not None
    add_raw(url, [("Gent", tick - dt.timedelta(hours=1), 4.0)])  # in the window of the next tick too
    return tick


@pytest.mark.pg
def test_an_evaluation_that_loses_the_source_is_evaluated_again_not_charged(
    tmp_path: Path, pg_url: str
) -> None:
    """The select's connection is ended once (a terminated backend; a restart does the same): no
    fault of the tick. That was a failed evaluation, charged an attempt and backed off (doubling
    up to an hour) though the source was back at once. The run now gives the tick back, waits for
    the source and evaluates it: done, one attempt, no failure."""
    root = airmax_project(tmp_path / "proj", pg_url)
    _loses_the_source(
        root, pg_url, "IF NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " PERFORM pg_terminate_backend(pg_backend_pid()); END IF;"
    )  # fmt: skip
    [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    assert (summary.task_errors, summary.failed, summary.exported) == ([], 0, 1), summary.errors[:1]
    [done] = summary.aggregate
    assert (done["state"], done["rows"]) == ("done", 1), done
    [record] = [r for r in _evaluations(root) if r["tick"] == dt.datetime.fromisoformat(done["tick"])]
    assert (record["state"], record["attempts"], record["error"]) == ("done", 1, None), record
    assert [float(r["parameter_value"]) for r in table(pg_url)] == [4.0]


@pytest.mark.pg
def test_a_select_that_loses_the_source_each_time_is_charged_the_second_time(
    tmp_path: Path, pg_url: str
) -> None:
    """A select that ends its own connection every time (a query that crashes its backend) is
    given back once, then charged an attempt with backoff, as any failure: the run ends, not
    evaluating it again and again."""
    root = airmax_project(tmp_path / "proj", pg_url)
    _loses_the_source(root, pg_url, "PERFORM pg_terminate_backend(pg_backend_pid());")
    [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    assert (summary.task_errors, summary.failed, summary.exported) == ([], 1, 0), summary.task_errors
    [failed] = summary.aggregate
    assert failed["state"] == "failed" and "terminating connection" in failed["error"], failed
    [record] = [r for r in _evaluations(root) if r["tick"] == dt.datetime.fromisoformat(failed["tick"])]
    assert (record["state"], record["attempts"]) == ("failed", 1), record
    [second] = engine.run(load(root), [AGGREGATE], RunOptions())[0].aggregate
    # backed off: skipped (unless the clock crossed into the next tick between the two runs)
    assert second["state"] == "skipped" or second["tick"] != failed["tick"], second


@pytest.mark.pg
def test_a_source_away_longer_than_the_wait_stops_the_aggregate_with_its_tick_not_charged(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source (through a TCP relay; the ledger and the table reached directly) goes away while
    the select runs, for longer than the reconnect budget: the task stops with one error naming
    the source, the tick is given back without an attempt, and the next run evaluates it at once,
    not after a backoff."""
    from sluicegate import db as sg_db

    monkeypatch.setattr(sg_db, "RECONNECT_SECONDS", 1.0)
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    relayed = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    root = airmax_project(tmp_path / "proj", relayed, ledger=pg_url)
    _loses_the_source(root, pg_url, "IF NOT (SELECT is_called FROM armed) THEN PERFORM pg_sleep(2); END IF;")

    def cut() -> None:
        watch = tables.TableDb(pg_url)
        try:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            while watch.query(query)[1][0][0] == 0:
                time.sleep(0.01)
            watch.execute("SELECT nextval('armed')")
            proxy.down()
            time.sleep(4.0)
            proxy.up()
        finally:
            watch.close()

    thread = threading.Thread(target=cut)
    thread.start()
    try:
        [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    finally:
        thread.join()
    [error] = summary.task_errors
    assert "unavailable" in error and "no attempt counted" in error and str(proxy.port) in error, error
    assert summary.failed == 0, summary.errors[:1]
    [record] = _evaluations(root)
    assert (record["state"], record["attempts"]) == ("lost", 0), record
    status = cli(root, "status", AGGREGATE, check=True).stdout
    assert "failed 0, waiting for source yes" in status and str(proxy.port) in status, status
    [again] = engine.run(load(root), [AGGREGATE], RunOptions())
    assert (again.task_errors, again.failed, again.exported) == ([], 0, 1), (again.task_errors, again.errors)
    assert [float(r["parameter_value"]) for r in table(pg_url)] == [4.0]


@pytest.mark.pg
@pytest.mark.parametrize("when", ["connect", "write"])
def test_a_table_database_that_is_away_charges_the_tick_as_any_destination_outage(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Any, when: str
) -> None:
    """The table's database (through a TCP relay; the source and the ledger reached directly) is
    away when the evaluation connects to it, or ends its connection while the rows are written:
    as a partitioned task's destination outage (guarantees.md, Retries and parking), the tick is
    charged an attempt and retried after backoff; only a lost *source* gives a tick back. The run
    reports the failure naming the table's database, the task is not stopped, the table is kept."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    relayed = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    root = airmax_project(tmp_path / "proj", pg_url, destination_extra=f'url = "{relayed}"')
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('backoff = "0s"', 'backoff = "10m"'))
    tick = due_tick(load(root).tasks[AGGREGATE], dt.datetime.now(UTC))
    assert tick is not None
    add_raw(pg_url, [("Gent", tick - dt.timedelta(hours=1), 4.0)])
    if when == "connect":
        proxy.down()
    else:  # the sink's own session is ended by its first insert
        db = tables.TableDb(pg_url)
        db.execute(
            "CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
        )
        db.execute(f"CREATE TRIGGER lose BEFORE INSERT ON {AGGREGATE} FOR EACH ROW EXECUTE FUNCTION lose()")
        db.close()
    [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    assert (summary.task_errors, summary.failed, summary.exported) == ([], 1, 0), summary.task_errors
    [failed] = summary.aggregate
    assert failed["state"] == "failed" and str(proxy.port) in failed["error"], failed
    [record] = [r for r in _evaluations(root) if r["tick"] == dt.datetime.fromisoformat(failed["tick"])]
    assert (record["state"], record["attempts"]) == ("failed", 1), record
    [second] = engine.run(load(root), [AGGREGATE], RunOptions())[0].aggregate
    # backed off: skipped (unless the clock crossed into the next tick between the two runs)
    assert second["state"] == "skipped" or second["tick"] != failed["tick"], second
    assert table(pg_url) == []


@pytest.mark.pg
@pytest.mark.parametrize("mode", ["replace", "upsert"])
def test_a_table_another_session_holds_locked_fails_the_tick_within_the_lease(
    tmp_path: Path, pg_url: str, mode: str
) -> None:
    """A session holding the table (an ALTER TABLE or LOCK TABLE in a transaction left open) kept
    the evaluation waiting with no end, its claim running out and the next worker waiting too.
    The wait ends within half the lease: the tick fails naming the table and the lock, the table
    is kept, and the tick is evaluated again once the lock is gone."""
    key = 'key = ["city", "parameter_name", "parameter_unit"]' if mode == "upsert" else ""
    root = airmax_project(
        tmp_path / "proj", pg_url, task_extra='lease = "4s"', destination_extra=f'mode = "{mode}"\n{key}'
    )
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T - dt.timedelta(minutes=5)).state == "done"
    holder = tables.TableDb(pg_url)
    holder.conn.execute("BEGIN")
    holder.conn.execute(f"LOCK TABLE {AGGREGATE} IN ACCESS EXCLUSIVE MODE")
    results: list[agg.Evaluation] = []
    worker = threading.Thread(target=lambda: results.append(_evaluate(root, T)), daemon=True)
    try:
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the evaluation still waits for the lock after 30 s"
    finally:
        holder.conn.execute("ROLLBACK")
        holder.close()
        worker.join(30)
    [failed] = results
    assert failed.state == "failed" and "another session held a lock on it for 2 s" in str(failed.error)
    assert AGGREGATE in str(failed.error)
    assert _evaluations(root)[0]["error"] == failed.error
    assert stamps(table(pg_url)) == {T - dt.timedelta(minutes=5)}
    assert _evaluate(root, T).state == "done" and stamps(table(pg_url)) == {T}


@pytest.mark.parametrize("mode", ["replace", "upsert"])
@pytest.mark.parametrize(
    "flavor",
    [pytest.param("sqlite", id="sqlite"), pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb)],
)
def test_a_sqlite_or_mariadb_table_another_session_holds_fails_the_tick_within_the_lease(
    request: pytest.FixtureRequest, tmp_path: Path, flavor: str, mode: str
) -> None:
    """As on PostgreSQL, the table write waits for a lock at most half the lease. On SQLite it
    waited the connection's 60 s busy timeout for another process's write lock (a reviewer saw a
    4 s lease still waiting after 120 s); on MariaDB 60 s per statement (innodb_lock_wait_timeout,
    lock_wait_timeout), the claim running out meanwhile. The tick now fails within about half the
    lease naming the table and what holds it, and is evaluated again once the lock is gone."""
    sink = (
        str(request.getfixturevalue("mariadb_url"))
        if flavor == "mariadb"
        else f"sqlite:///{tmp_path / 'sink.db'}"
    )
    key = 'key = ["city", "parameter_name", "parameter_unit"]' if mode == "upsert" else ""
    source = f"sqlite:///{tmp_path / 'airmax.db'}"
    root = airmax_project(
        tmp_path / "proj",
        source,
        sink=sink,
        task_extra='lease = "4s"',
        destination_extra=f'mode = "{mode}"\n{key}',
    )
    add_raw(source, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T - dt.timedelta(minutes=5)).state == "done"
    holder = tables.TableDb(sink)
    if flavor == "sqlite":  # another process's writer left in BEGIN
        holder.conn.execute("BEGIN IMMEDIATE")
    else:  # an open transaction that locked the table's rows (and holds its metadata lock)
        holder.conn.execute("START TRANSACTION")
        holder.conn.execute(f"SELECT * FROM {AGGREGATE} FOR UPDATE").fetchall()
    results: list[agg.Evaluation] = []
    worker = threading.Thread(target=lambda: results.append(_evaluate(root, T)), daemon=True)
    try:
        started = time.monotonic()
        worker.start()
        worker.join(30)
        waited = time.monotonic() - started
        assert not worker.is_alive(), "the evaluation still waits for the lock after 30 s"
    finally:
        holder.conn.execute("ROLLBACK")
        holder.close()
        worker.join(90)
    [failed] = results
    held = "the database's write lock" if flavor == "sqlite" else "a lock on it"
    assert failed.state == "failed" and f"held {held} for 2 s" in str(failed.error), failed.error
    assert AGGREGATE in str(failed.error) and waited < 12, waited
    assert stamps(table(sink)) == {T - dt.timedelta(minutes=5)}
    assert _evaluate(root, T).state == "done" and stamps(table(sink)) == {T}


# per ledger database: the key of an upsert (MariaDB: replace writes the table in a copy, not in the
# ledger's transaction), a slow row, the ledger table, how a transaction starts, where to look
_LEDGER_HELD = {
    "pg": ("", "pg_sleep(1) IS NOT NULL", "sluicegate.aggregate_evaluations", "BEGIN", "pg_stat_activity"),
    "mariadb": (
        'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]',
        "SLEEP(1) = 0",
        "sluicegate_aggregate_evaluations",
        "START TRANSACTION",
        "information_schema.innodb_trx",
    ),
}


@pytest.mark.parametrize(
    "flavor", [pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def test_a_ledger_record_another_session_holds_names_the_ledger_table_and_the_tick(
    request: pytest.FixtureRequest, tmp_path: Path, flavor: str
) -> None:
    """The table is in the ledger database: its evaluation is recorded in the table's transaction,
    whose lock wait ends after half the lease. Another session holding the tick's ledger row (a
    FOR UPDATE in a transaction left open) failed the run with "ledger database ...: canceling
    statement due to lock timeout; will retry" (MariaDB: a bare "Lock wait timeout exceeded"),
    naming neither the row nor what to look for. The error names the ledger table and the tick;
    the table is kept, the tick waits for its lease."""
    url = str(request.getfixturevalue("pg_url" if flavor == "pg" else "mariadb_url"))
    key, slow, ledger_table, begin, look = _LEDGER_HELD[flavor]
    root = airmax_project(tmp_path / "proj", url, task_extra='lease = "4s"', destination_extra=key)
    tick = _select_per_row(root, url, slow)
    assert _evaluations(root) == []  # the ledger's tables made
    errors: list[BaseException] = []

    def evaluate() -> None:
        try:
            _evaluate(root, tick)
        except LedgerError as exc:
            errors.append(exc)

    worker = threading.Thread(target=evaluate, daemon=True)
    holder = tables.TableDb(url)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while not holder.query(f"SELECT 1 FROM {ledger_table} WHERE state = 'running'")[1]:
            assert time.monotonic() < deadline, "the tick was never claimed"
            time.sleep(0.02)
        holder.conn.execute(begin)
        holder.conn.execute(f"SELECT * FROM {ledger_table} FOR UPDATE").fetchall()
        started = time.monotonic()
        worker.join(30)
        waited = time.monotonic() - started
        assert not worker.is_alive(), "the evaluation still waits for the ledger row after 30 s"
    finally:
        holder.conn.execute("ROLLBACK")
        holder.close()
        worker.join(90)
    [error] = errors
    assert ledger_table in str(error) and tick.isoformat() in str(error), error
    assert look in str(error) and waited < 12, (waited, error)
    assert table(url) == []
    if flavor == "pg":
        assert _evaluations(root)[0]["state"] == "running"


@pytest.mark.pg
def test_a_select_that_overflows_fails_naming_select_sql_and_the_window(tmp_path: Path, pg_url: str) -> None:
    """avg of 1e308 and 1e308 overflows a PostgreSQL double precision: the tick failed with
    "database ... rejected a value", which read as the table refusing a row. The error names
    select.sql and the window, the table is kept, and the run reports the one failure."""
    root = airmax_project(tmp_path / "proj", pg_url)
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 1e308), ("Gent", T - dt.timedelta(hours=2), 1e308)])
    failed = _evaluate(root, T)
    assert failed.state == "failed", failed
    assert (
        f"select.sql failed on the window [{(T - dt.timedelta(hours=3)).isoformat()}, {T.isoformat()})"
        in str(failed.error)
    )
    assert "overflow" in str(failed.error) and _evaluations(root)[0]["error"] == failed.error
    assert table(pg_url) == []


def _sleeping_select(watch: tables.TableDb) -> list[int]:
    """The MariaDB connections running the aggregate's select (:func:`_sleeps_per_row`), once one
    is seen (none after 30 s)."""
    query = (
        "SELECT id FROM information_schema.processlist WHERE info LIKE '%in_window%SLEEP%'"
        " AND id <> CONNECTION_ID()"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if found := [int(pid) for (pid,) in watch.query(query)[1]]:
            return found
        time.sleep(0.02)
    return []


def _sleeps_per_row(root: Path, url: str) -> dt.datetime:
    """Have the airmax aggregate's select sleep 1 s per row of the window (MariaDB's SLEEP), with a
    backoff of 10 minutes; one row in the window of the tick due now."""
    return _select_per_row(root, url, "SLEEP(1) = 0")


@pytest.mark.mariadb
def test_a_mariadb_select_whose_connection_is_killed_is_evaluated_again_not_charged(
    tmp_path: Path, mariadb_url: str
) -> None:
    """The MariaDB source ends the select's connection once (KILL, as a restart or a network cut
    does): the tick is given back, the run reconnects and evaluates it, one attempt, no failure."""
    root = airmax_project(tmp_path / "proj", mariadb_url)
    _sleeps_per_row(root, mariadb_url)
    killed: list[int] = []

    def kill() -> None:
        watch = tables.TableDb(mariadb_url)
        try:
            for pid in _sleeping_select(watch):
                watch.execute(f"KILL CONNECTION {pid}")
                killed.append(pid)
        finally:
            watch.close()

    thread = threading.Thread(target=kill)
    thread.start()
    try:
        [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    finally:
        thread.join()
    assert killed, "the select was never seen running"
    assert (summary.task_errors, summary.failed, summary.exported) == ([], 0, 1), summary.errors[:1]
    [done] = summary.aggregate
    assert (done["state"], done["rows"]) == ("done", 1), done
    [record] = [r for r in _evaluations(root) if r["tick"] == dt.datetime.fromisoformat(done["tick"])]
    assert (record["state"], record["attempts"], record["error"]) == ("done", 1, None), record
    assert [float(r["parameter_value"]) for r in table(mariadb_url)] == [4.0]


@pytest.mark.mariadb
def test_a_mariadb_source_away_longer_than_the_wait_stops_the_aggregate_with_its_tick_not_charged(
    tmp_path: Path, mariadb_url: str, mariadb_server: Any, tcp_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MariaDB source (through a TCP relay; the ledger reached directly) goes away while the
    select runs, for longer than the reconnect budget: the task stops with one error naming the
    source, the tick is given back without an attempt and shows as waiting for the source, and the
    next run evaluates it at once, not after a backoff."""
    from sluicegate import db as sg_db

    monkeypatch.setattr(sg_db, "RECONNECT_SECONDS", 1.0)
    proxy = tcp_proxy(mariadb_server.host, mariadb_server.port)
    relayed = mariadb_url.replace(f":{mariadb_server.port}/", f":{proxy.port}/")
    root = airmax_project(tmp_path / "proj", relayed, ledger=mariadb_url)
    _sleeps_per_row(root, mariadb_url)
    cut: list[bool] = []

    def away() -> None:
        watch = tables.TableDb(mariadb_url)
        try:
            _sleeping_select(watch)
            proxy.down()
            cut.append(True)
            time.sleep(4.0)
            proxy.up()
        finally:
            watch.close()

    thread = threading.Thread(target=away)
    thread.start()
    try:
        [summary] = engine.run(load(root), [AGGREGATE], RunOptions())
    finally:
        thread.join()
    assert cut
    [error] = summary.task_errors
    assert "unavailable" in error and "no attempt counted" in error and str(proxy.port) in error, error
    assert summary.failed == 0, summary.errors[:1]
    [record] = _evaluations(root)
    assert (record["state"], record["attempts"]) == ("lost", 0), record
    status = cli(root, "status", AGGREGATE, check=True).stdout
    assert "failed 0, waiting for source yes" in status and str(proxy.port) in status, status
    [again] = engine.run(load(root), [AGGREGATE], RunOptions())
    assert (again.task_errors, again.failed, again.exported) == ([], 0, 1), (again.task_errors, again.errors)
    assert [float(r["parameter_value"]) for r in table(mariadb_url)] == [4.0]


def test_an_older_tick_never_replaces_a_newer_evaluation(tmp_path: Path, url: str) -> None:
    """A slow worker finishing tick t after another finished t + 5m keeps the newer rows."""
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    newer = T + dt.timedelta(minutes=5)
    assert _evaluate(root, newer).state == "done"
    older = _evaluate(root, T)
    assert older.state == "superseded" and "newer" in str(older.error)
    assert stamps(table(url)) == {newer}
    assert {r["tick"]: r["state"] for r in _evaluations(root)} == {newer: "done", T: "superseded"}


@pytest.mark.parametrize("mode", ["replace", "upsert"])
def test_a_slow_older_evaluation_yields_to_a_newer_one_done_while_it_ran(
    tmp_path: Path, url: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tick T's query is slow; tick T + 5m is evaluated and written meanwhile. T's result must not
    land over it, though the table holds no newer stamp to compare: replace, where T + 5m's
    result is empty, and upsert, where the stamps are per row."""
    extra = 'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]' if mode == "upsert" else ""
    root = airmax_project(tmp_path / "proj", url, destination_extra=extra)
    newer = T + dt.timedelta(minutes=5)
    add_raw(url, [("Gent", T - dt.timedelta(minutes=178), 1.0)])  # in T's window only
    if mode == "upsert":
        add_raw(url, [("Gent", T + dt.timedelta(minutes=1), 9.0)], prefix="n")  # in T + 5m's only
    query = agg.evaluation_rows

    def slow(url: str, task: agg.Task, tick: dt.datetime) -> tuple[list[str], list[tuple[object, ...]]]:
        found = query(url, task, tick)
        if tick == T:  # the newer tick, evaluated while this one's query ran
            monkeypatch.setattr(agg, "evaluation_rows", query)
            assert _evaluate(root, newer).state == "done"
        return found

    monkeypatch.setattr(agg, "evaluation_rows", slow)
    older = _evaluate(root, T)
    assert older.state == "superseded" and newer.isoformat() in str(older.error)
    rows = table(url)
    if mode == "upsert":
        assert [(r["city"], float(r["parameter_value"])) for r in rows] == [("Gent", 9.0)]
        assert stamps(rows) == {newer}
    else:
        assert rows == []
    assert {r["tick"]: r["state"] for r in _evaluations(root)} == {newer: "done", T: "superseded"}


def test_an_older_evaluation_yields_to_a_newer_tick_under_way(tmp_path: Path, url: str) -> None:
    """Another worker holds tick T + 5m (its write may be waiting for this one's table lock): T's
    rows are not written, so they cannot land after T + 5m's."""
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    newer = T + dt.timedelta(minutes=5)
    project = load(root)
    context = Context.open(project)
    try:
        task = project.tasks[AGGREGATE]
        assert isinstance(task, agg.Task)
        token = str(uuid.uuid4())
        assert (
            context.ledger.aggregates.claim(AGGREGATE, newer, task.window(newer), token=token, lease=60) == 1
        )
    finally:
        context.close()
    older = _evaluate(root, T)
    assert older.state == "superseded" and table(url) == []


def test_evaluations_older_than_keep_are_forgotten(tmp_path: Path, url: str) -> None:
    """One ledger row per tick adds up (105,000 a year at 5 minutes): a done evaluation forgets
    those of ticks more than ``keep`` before it."""
    root = airmax_project(tmp_path / "proj", url, task_extra='keep = "3h"')
    add_raw(url, [("Gent", T - dt.timedelta(hours=5), 1.0)])
    for hours in (4, 3, 1):
        assert _evaluate(root, T - dt.timedelta(hours=hours)).state in ("done", "superseded")
    assert len(_evaluations(root)) == 3
    assert _evaluate(root, T).state == "done"
    assert [r["tick"] for r in _evaluations(root)] == [
        T,
        T - dt.timedelta(hours=1),
        T - dt.timedelta(hours=3),
    ]


def test_a_sqlite_table_in_the_ledger_file_spelt_otherwise_is_written_with_the_record(tmp_path: Path) -> None:
    """The table's URL named the ledger's SQLite file another way ("/./", a symlinked folder): the
    evaluation took the file's write lock for the table, then waited on it for the ledger's record
    until "database is locked", on every tick. The same file is now one database, however spelt."""
    url = f"sqlite:///{tmp_path / 'airmax.db'}"
    root = airmax_project(tmp_path / "proj", url, sink=f"sqlite:///{tmp_path}/./airmax.db")
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    started = time.monotonic()
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None) and time.monotonic() - started < 10
    assert [r["city"] for r in table(url)] == ["Gent"] and _evaluations(root)[0]["state"] == "done"


def test_the_evaluation_can_also_be_written_as_a_file(tmp_path: Path, url: str) -> None:
    root = airmax_project(
        tmp_path / "proj", url, task_extra='path = "cur/{t:%Y%m%d-%H%M}.{ext}"\nformat = "csv"'
    )
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 4.0), ("Genk", T - dt.timedelta(hours=2), 2.0)])
    result = _evaluate(root, T)
    assert result.path == "cur/20240310-1200.csv"
    assert result.bytes == (root / "exports" / "cur" / "20240310-1200.csv").stat().st_size
    rows = read_csv(root / "exports" / "cur" / "20240310-1200.csv")
    assert [(r["city"], r["num_measurements"], r["evaluation_time_utc"]) for r in rows] == [
        ("Genk", "1", "2024-03-10T12:00:00+00:00"),
        ("Gent", "1", "2024-03-10T12:00:00+00:00"),
    ]
    assert _evaluations(root)[0]["path"] == "cur/20240310-1200.csv"


def test_the_parquet_files_of_an_aggregate_share_one_schema_when_a_column_is_null_in_one_evaluation(
    tmp_path: Path, url: str
) -> None:
    """An aggregate's file took each column's kind from the first non-NULL value of its own
    evaluation: a tick whose averages were all NULL (sensors that sent no value) wrote
    parameter_value as a Parquet string, the next tick's as a double, so the task's folder was
    no one dataset (a reader of both fails, or reads the doubles as text). A column NULL in every
    row now takes the kind of its type in the result (on SQLite, of the table's column)."""
    root = airmax_project(
        tmp_path / "proj",
        url,
        width="1h",
        task_extra='path = "cur/{t:%Y%m%d-%H%M}.{ext}"\nformat = "parquet"',
    )
    add_raw(url, [("Gent", T - dt.timedelta(minutes=30), None)], prefix="a")
    add_raw(url, [("Gent", T + dt.timedelta(minutes=30), 4.0)], prefix="b")
    schemas, values = [], []
    for tick in (T, T + dt.timedelta(hours=1)):
        result = _evaluate(root, tick)
        assert (result.state, result.error) == ("done", None)
        assert result.path is not None
        written = pq.read_table(root / "exports" / result.path)
        schemas.append(written.schema)
        values.append(written.column("parameter_value").to_pylist())
    assert schemas[0].equals(schemas[1]), (schemas[0], schemas[1])
    assert str(schemas[1].field("parameter_value").type) in ("double", "string")  # PostgreSQL numeric: text
    assert values[0] == [None] and [float(v) for v in values[1]] == [r["parameter_value"] for r in table(url)]


@pytest.mark.parametrize(
    "sink",
    [pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"],
)
def test_a_sqlite_sources_aggregate_files_share_one_schema_whatever_the_sinks_database(
    tmp_path: Path, sqlite_url: str, sink: str, request: pytest.FixtureRequest
) -> None:
    """A SQLite select's result has no types, so a column NULL in a whole evaluation took its
    kind from the table sink's column only when the table was in SQLite: in PostgreSQL (or
    MariaDB), a tick of NULL averages wrote parameter_value as a Parquet string and the next a
    double. The sink's column types tell it, whatever its database (SQLite: another file)."""
    sink_url = (
        f"sqlite:///{tmp_path / 'sink.db'}"
        if sink == "sqlite"
        else str(request.getfixturevalue(f"{sink}_url"))
    )
    root = airmax_project(
        tmp_path / "proj",
        sqlite_url,
        sink=sink_url,
        width="1h",
        task_extra='path = "cur/{t:%Y%m%d-%H%M}.{ext}"\nformat = "parquet"',
    )
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(minutes=30), None)], prefix="a")
    add_raw(sqlite_url, [("Gent", T + dt.timedelta(minutes=30), 4.5)], prefix="b")
    schemas = []
    for tick in (T, T + dt.timedelta(hours=1)):
        result = _evaluate(root, tick)
        assert (result.state, result.error) == ("done", None)
        assert result.path is not None
        schemas.append(pq.read_schema(root / "exports" / result.path))
    assert schemas[0].equals(schemas[1]), (schemas[0], schemas[1])
    assert str(schemas[0].field("parameter_value").type) == "double"


def test_a_sqlite_aggregates_boolean_and_numeric_columns_have_one_kind_in_every_file(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A SQLite table sink's BOOLEAN or NUMERIC(10,2) column has NUMERIC affinity, which told no
    kind: a tick where the select gave NULL wrote them as Parquet strings, the next int64 (0/1)
    and double, and a tick of whole amounts (SQLite gives 4.00 as 4) int64. A BOOLEAN column
    is an integer, as SQLite holds it, and a NUMERIC or DECIMAL one a double, in every file."""
    root = airmax_project(
        tmp_path / "proj",
        sqlite_url,
        width="1h",
        task_extra='path = "cur/{t:%Y%m%d-%H%M}.{ext}"\nformat = "parquet"',
    )
    select = root / "tasks" / AGGREGATE / "select.sql"
    more = ", CASE WHEN max(parameter_value) > 0 THEN 1 END AS flag, CAST(max(parameter_value) AS NUMERIC) AS amount"
    select.write_text(select.read_text().replace("AS num_measurements", "AS num_measurements" + more))
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("ALTER TABLE current_air_quality ADD COLUMN flag BOOLEAN")
        conn.execute("ALTER TABLE current_air_quality ADD COLUMN amount NUMERIC(10, 2)")
    conn.close()
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(minutes=30), None)], prefix="a")
    add_raw(sqlite_url, [("Gent", T + dt.timedelta(minutes=30), 4.0)], prefix="b")
    add_raw(sqlite_url, [("Gent", T + dt.timedelta(minutes=90), 4.5)], prefix="c")
    types = []
    for tick in (T, T + dt.timedelta(hours=1), T + dt.timedelta(hours=2)):
        result = _evaluate(root, tick)
        assert (result.state, result.error) == ("done", None)
        assert result.path is not None
        schema = pq.read_schema(root / "exports" / result.path)
        types.append((str(schema.field("flag").type), str(schema.field("amount").type)))
    assert types == [("int64", "double")] * 3


@pytest.mark.pg
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_an_aggregates_uuid_time_and_inet_columns_are_text_in_every_file(
    tmp_path: Path, pg_url: str, fmt: str
) -> None:
    """A PostgreSQL uuid, time or inet column NULL in a whole evaluation is text (its type is
    not one of the kinds the files hold), so a value of it is written as its text too: a tick
    with values wrote Parquet's extension<arrow.uuid> and time64 where a tick of NULLs wrote
    strings, so the task's files were no one dataset (an inet value failed the evaluation)."""
    root = airmax_project(
        tmp_path / "proj",
        pg_url,
        width="1h",
        task_extra=f'path = "cur/{{t:%Y%m%d-%H%M}}.{{ext}}"\nformat = "{fmt}"',
    )
    types = {"u": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"), "tm": ("time", "'12:00'"),
             "ip": ("inet", "'10.0.0.1/8'")}  # fmt: skip
    select = root / "tasks" / AGGREGATE / "select.sql"
    more = "".join(
        f", CASE WHEN max(parameter_value) > 0 THEN {v}::{t} END AS {c}" for c, (t, v) in types.items()
    )
    select.write_text(select.read_text().replace("AS num_measurements", "AS num_measurements" + more))
    sink = tables.TableDb(pg_url)
    with sink.transaction() as cur:
        for c, (t, _) in types.items():
            cur.execute(f"ALTER TABLE current_air_quality ADD COLUMN {c} {t}")
    sink.close()
    add_raw(pg_url, [("Gent", T - dt.timedelta(minutes=30), None)], prefix="a")
    add_raw(pg_url, [("Gent", T + dt.timedelta(minutes=30), 4.0)], prefix="b")
    written = []
    for tick in (T, T + dt.timedelta(hours=1)):
        result = _evaluate(root, tick)
        assert (result.state, result.error) == ("done", None), result.error
        assert result.path is not None
        written.append(root / "exports" / result.path)
    if fmt == "parquet":
        schemas = [pq.read_schema(p) for p in written]
        assert schemas[0].equals(schemas[1]), (schemas[0], schemas[1])
        assert [str(schemas[1].field(c).type) for c in types] == ["string"] * 3
        row = pq.read_table(written[1]).to_pylist()[0]
    else:
        row = json.loads(written[1].read_text())
    assert [row[c] for c in types] == ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "12:00:00", "10.0.0.1/8"]


@pytest.mark.parametrize(
    ("path", "fmt", "written"),
    [("cur/{t:%Y%m%d-%H%M}.csv", "parquet", ".csv"), ("cur/{t:%Y%m%d-%H%M}.parquet", "csv.gz", ".parquet")],
)
def test_a_file_path_naming_another_format_is_refused_at_load(
    tmp_path: Path, sqlite_url: str, path: str, fmt: str, written: str
) -> None:
    """The other kinds refused a path ending in another format's extension; an aggregate took
    `format = "parquet"` with a `.csv` path and wrote Parquet bytes under the CSV name."""
    root = airmax_project(tmp_path / "proj", sqlite_url, task_extra=f'path = "{path}"\nformat = "{fmt}"')
    for args in (("check",), ("run", AGGREGATE)):
        proc = cli(root, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        message = proc.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message, message
        assert str(root / "tasks" / AGGREGATE) in message and repr(path) in message, message
        assert f"ends in '{written}' but the format is '{fmt}'" in message, message
    assert not (root / "exports" / "cur").exists()


@pytest.mark.parametrize(
    ("timing", "path", "twins"),
    [('every = "5m"', "cur/{t:%H%M}.{ext}", "2024-01-15T00:00:00Z and 2024-01-16T00:00:00Z"),
     ('every = "5m"', "cur/{t:%Y%m%d%H}.{ext}", "2024-01-15T12:00:00Z and 2024-01-15T12:05:00Z"),
     ('every = "30s"', "cur/{t:%Y%m%d%H%M}.{ext}", "2024-01-15T12:00:00Z and 2024-01-15T12:00:30Z"),
     ('every = "5m"', "{task}/latest.{ext}", "2024-01-15T12:00:00Z and 2024-01-15T12:05:00Z"),
     ('schedule = "*/5 * * * *"', "cur/{t:%Y%m%d%H}.{ext}", "2024-01-15T12:00:00Z and 2024-01-15T12:05:00Z"),
     ('schedule = "0 6 * * *"\nschedule_zone = "Europe/Brussels"', "cur/{t:%m%d}.{ext}",
      "2024-01-15T05:00:00Z and 2025-01-15T05:00:00Z"),
     # an hour of "*" ticks at both midnights of Havana's 3 November: one UTC day, two ticks
     ('schedule = "0 */24 * * *"\nschedule_zone = "America/Havana"', "cur/{t:%Y%m%d}.{ext}",
      "2024-11-03T04:00:00Z and 2024-11-03T05:00:00Z"),
     # a fixed 02:30 ticks once the night it comes twice, so one file a UTC day
     ('schedule = "30 2 * * *"\nschedule_zone = "Europe/Brussels"', "cur/{t:%Y%m%d}.{ext}", None),
     # a schedule without a tick in 2024 (its years: 2025 on), or whose years end 60 ticks on
     ('schedule = "0 12 * * * 0 2025-2099"', "cur/{t:%H}.{ext}", "2025-01-01T12:00:00Z and 2025-01-02T12:00:00Z"),
     ('schedule = "0 */24 * * * 0 2025-2099"\nschedule_zone = "America/Havana"', "cur/{t:%Y%m%d}.{ext}",
      "2025-11-02T04:00:00Z and 2025-11-02T05:00:00Z"),
     ('schedule = "0 0 1 1 * 0 2020-2030"', "cur/{t:%m%d}.{ext}", "2024-01-01T00:00:00Z and 2025-01-01T00:00:00Z"),
     # the ISO week-year ends near new year, not at it: %Y with %V, %G with %m%d
     ('schedule = "0 0 * * 1"', "cur/{t:%Y/W%V}.{ext}", "2024-01-01T00:00:00Z and 2024-12-30T00:00:00Z"),
     ('every = "1d"', "cur/{t:%G%m%d}.{ext}", "2025-12-29T00:00:00Z and 2026-12-29T00:00:00Z"),
     ('schedule = "0 0 * * 1"', "cur/{t:%G/W%V}.{ext}", None),
     ('every = "1h"', "cur/{t:%Y%m%d%H}.{ext}", None),
     ('schedule = "0 6 * * *"\nschedule_zone = "Europe/Brussels"', "cur/{t:%Y%m%d}.{ext}", None),
     ('every = "5m"', "{task}/{t:%Y/%m/%d/%H%M%S}.{ext}", None)],
)  # fmt: skip
def test_a_file_path_that_names_two_ticks_alike_is_refused_at_load(
    tmp_path: Path, sqlite_url: str, timing: str, path: str, twins: str | None
) -> None:
    """path = "cur/{t:%H%M}.csv": each day's 12:00 evaluation replaced the day before's file, and
    the ledger and the manifests still named that file for both ticks (no history was kept)."""
    root = airmax_project(tmp_path / "proj", sqlite_url, task_extra=f'path = "{path}"')
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(toml.read_text().replace('every = "5m"', timing))
    if twins is None:
        assert AGGREGATE in load(root).tasks, load(root).problems
        return
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"names the ticks {twins} alike" in proc.stderr and repr(path) in proc.stderr, proc.stderr


def _also_select(root: Path, sink: str, **columns: tuple[str, str]) -> None:
    """Have the airmax aggregate select ``columns`` too (name: its SQL expression and the type of
    the table column that holds it), and add those columns to its table in ``sink``."""
    extra = "".join(f", {expr} AS {name}" for name, (expr, _) in columns.items())
    (root / "tasks" / AGGREGATE / "select.sql").write_text(
        "SELECT city, parameter_name, parameter_unit, avg(parameter_value) AS parameter_value,"
        f" count(*) AS num_measurements{extra} FROM in_window GROUP BY city, parameter_name, parameter_unit"
    )
    db = tables.TableDb(sink)
    for name, (_, kind) in columns.items():
        db.execute(f"ALTER TABLE {AGGREGATE} ADD COLUMN {name} {kind}")
    db.close()


# max() of a value as SQLite stores it in a NUMERIC column (one declared DECIMAL(10,2)): 4.00 as 4
_NUMERIC = (
    "max(CASE WHEN parameter_value = CAST(parameter_value AS INTEGER)"
    " THEN CAST(parameter_value AS INTEGER) ELSE parameter_value END)"
)


def test_a_sqlite_column_of_integers_and_reals_is_a_double_in_every_parquet_file(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SQLite gives a NUMERIC value (a column declared DECIMAL(10,2)) as an integer when it is
    whole: max() of 4.00 and of 4.5 was 4 for one city and 4.5 for the other. The file took the
    kind of the first value, int, and failed the evaluation on 4.5 (the table was not written
    either), and a tick whose values were all whole wrote an int64 column where the others had
    doubles. Numbers beside a real, or into a REAL column of a SQLite table, are doubles."""
    root = airmax_project(
        tmp_path / "proj",
        sqlite_url,
        width="1h",
        task_extra='path = "cur/{t:%Y%m%d-%H%M}.{ext}"\nformat = "parquet"',
    )
    _also_select(root, sqlite_url, top=(_NUMERIC, "REAL"))
    at = T - dt.timedelta(minutes=30)
    add_raw(sqlite_url, [("Genk", at, 4.0), ("Gent", at, 4.5), ("Genk", at + dt.timedelta(hours=1), 3.0)])
    files = []
    for tick in (T, T + dt.timedelta(hours=1)):
        result = _evaluate(root, tick)
        assert (result.state, result.error) == ("done", None)
        assert result.path is not None
        files.append(pq.read_table(root / "exports" / result.path))
        assert files[-1].column("top").to_pylist() == [r["top"] for r in table(sqlite_url)]
    assert [str(f.schema.field("top").type) for f in files] == ["double", "double"]


@pytest.mark.pg
def test_a_json_column_is_written_back_to_postgresql_and_into_the_file(tmp_path: Path, pg_url: str) -> None:
    """A select returning jsonb failed every evaluation: psycopg read it as a dict and could not
    send a dict back ("cannot adapt type 'dict'")."""
    root = airmax_project(
        tmp_path / "proj", pg_url, task_extra='path = "cur/{t:%Y%m%d%H%M}.{ext}"\nformat = "csv"'
    )
    _also_select(root, pg_url, extra=("jsonb_build_object('min', min(parameter_value))", "jsonb"))
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0), ("Gent", T - dt.timedelta(hours=2), 2.0)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None)
    assert [r["extra"] for r in table(pg_url)] == [{"min": 2.0}]
    assert [r["extra"] for r in read_csv(root / "exports" / "cur" / "202403101200.csv")] == ['{"min": 2}']


@pytest.mark.pg
def test_a_numeric_result_goes_into_a_sqlite_table(tmp_path: Path, pg_url: str) -> None:
    """round(avg(...)::numeric, 1) is a Decimal, which sqlite3 cannot bind: every evaluation into a
    SQLite table failed ("type 'decimal.Decimal' is not supported")."""
    sink = f"sqlite:///{tmp_path / 'sink.db'}"
    root = airmax_project(tmp_path / "proj", pg_url, sink=sink)
    (root / "tasks" / AGGREGATE / "select.sql").write_text(
        "SELECT city, parameter_name, parameter_unit, round(avg(parameter_value)::numeric, 1) AS parameter_value,"
        " count(*) AS num_measurements FROM in_window GROUP BY city, parameter_name, parameter_unit"
    )
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0), ("Gent", T - dt.timedelta(hours=2), 2.25)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None)
    assert [(r["parameter_value"], r["num_measurements"]) for r in table(sink)] == [(3.1, 2)]


@pytest.mark.pg
@pytest.mark.parametrize("sink_kind", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_an_array_and_a_uuid_from_postgresql_go_into_another_database_as_text(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str, sink_kind: str
) -> None:
    """An array went into MariaDB as Python's repr (['m0'], silently), and into SQLite not at all
    ("type 'list' is not supported"), as did a uuid."""
    sink = (
        f"sqlite:///{tmp_path / 'sink.db'}"
        if sink_kind == "sqlite"
        else request.getfixturevalue("mariadb_url")
    )
    root = airmax_project(tmp_path / "proj", pg_url, sink=sink)
    _also_select(
        root, sink,
        ids=("array_agg(message_id ORDER BY message_id)", "TEXT"),
        u=("'6ecd8c99-4036-403d-bf84-cf8400f67836'::uuid", "TEXT"),
    )  # fmt: skip
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0), ("Gent", T - dt.timedelta(hours=2), 2.0)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None)
    assert [(r["ids"], r["u"]) for r in table(sink)] == [
        ('["m0", "m1"]', "6ecd8c99-4036-403d-bf84-cf8400f67836")
    ]


@pytest.mark.pg
@pytest.mark.parametrize(
    ("expr", "kind", "said"),
    [("'NaN'::float8", "REAL", "holds NaN, which a SQLite table cannot store; make it NULL"),
     ("avg('NaN'::numeric)", "REAL", "holds NaN, which a SQLite table cannot store; make it NULL"),
     ("interval '1 day'", "TEXT", "holds a timedelta, which a SQLite table cannot store"),
     ("'10.0.0.1'::inet", "TEXT", "cannot store; cast it in select.sql: CAST(x AS text) AS x")],
)  # fmt: skip
def test_a_value_a_sqlite_table_cannot_hold_fails_by_column(
    tmp_path: Path, pg_url: str, expr: str, kind: str, said: str
) -> None:
    """A PostgreSQL NaN went into a SQLite table as NULL, silently (sqlite3 binds NaN so); an
    interval or an inet failed with "Error binding parameter 6", naming no column. Now the
    evaluation fails naming the column and what to write in select.sql; the table keeps its rows,
    and the evaluation's file is not written (it was, before the table refused the value)."""
    sink = f"sqlite:///{tmp_path / 'sink.db'}"
    extra = 'path = "cur/{t:%Y%m%d%H%M}.{ext}"\nformat = "csv"'
    root = airmax_project(tmp_path / "proj", pg_url, sink=sink, task_extra=extra)
    _also_select(root, sink, x=(expr, kind))
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert result.state == "failed" and result.error is not None
    assert "column 'x'" in result.error and said in result.error, result.error
    assert table(sink) == [] and _evaluations(root)[0]["state"] == "failed"
    assert not (root / "exports" / "cur").exists()


@pytest.mark.pg
@pytest.mark.mariadb
@pytest.mark.parametrize("value", ["NaN", "-Infinity"])
def test_a_float_a_mariadb_table_cannot_hold_fails_by_column(
    tmp_path: Path, pg_url: str, mariadb_url: str, value: str
) -> None:
    """A PostgreSQL NaN or infinity failed the evaluation with the driver's "Float value 'nan' is
    not supported.", naming no column, after the evaluation's file was written."""
    extra = 'path = "cur/{t:%Y%m%d%H%M}.{ext}"\nformat = "csv"'
    root = airmax_project(tmp_path / "proj", pg_url, sink=mariadb_url, task_extra=extra)
    _also_select(root, mariadb_url, x=(f"'{value}'::float8", "DOUBLE"))
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert result.state == "failed" and result.error is not None
    assert f"column 'x' holds {value}, which a MariaDB table cannot store" in result.error, result.error
    assert f"NULLIF(x, '{value}') AS x" in result.error and table(mariadb_url) == []
    assert not (root / "exports" / "cur").exists()


@pytest.mark.pg
@pytest.mark.parametrize(
    ("expr", "kind", "said"),
    [("'24:00'::time", "time", "holds the time '24:00:00'"),
     ("'infinity'::timestamptz", "timestamptz", "holds the timestamptz 'infinity'"),
     ("max('-infinity'::date)", "date", "holds the date '-infinity'"),
     ("ARRAY[[now(), now()], [now(), 'infinity']]", "timestamptz[]", "holds the timestamptz 'infinity'")],
)  # fmt: skip
def test_a_postgresql_time_python_cannot_hold_fails_by_column(
    tmp_path: Path, pg_url: str, expr: str, kind: str, said: str
) -> None:
    """time '24:00' and ±infinity failed the evaluation with psycopg's "can't parse time" or
    "timestamp too large", naming neither the column nor what to do."""
    root = airmax_project(tmp_path / "proj", pg_url)
    _also_select(root, pg_url, x=(expr, kind))
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert result.state == "failed" and result.error is not None
    assert f"column 'x' {said}" in result.error, result.error
    assert "CAST(x AS text) AS x" in result.error
    assert _evaluations(root)[0]["state"] == "failed"


def test_select_sql_with_its_own_with_clause_and_percent_signs(tmp_path: Path, url: str) -> None:
    root = airmax_project(tmp_path / "proj", url)
    (root / "tasks" / AGGREGATE / "select.sql").write_text(  # comments before WITH failed every tick
        "-- cities starting with G\n/* a block\n   comment */ "
        "WITH named AS (SELECT * FROM in_window WHERE city LIKE 'G%')\n"
        "SELECT city, parameter_name, parameter_unit, avg(parameter_value) AS parameter_value,\n"
        "       count(*) AS num_measurements FROM named GROUP BY city, parameter_name, parameter_unit\n"
    )
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Leuven", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T).rows == 1
    assert [r["city"] for r in table(url)] == ["Gent"]
    sql = agg.evaluation_sql(load(root).tasks[AGGREGATE], "postgresql")  # type: ignore[arg-type]
    assert sql.startswith(
        'WITH in_window AS (SELECT * FROM "raw" AS sluicegate_window WHERE sluicegate_window."measurement_time_utc" >= %s'
    )
    assert "LIKE 'G%%'" in sql and ",\nnamed AS" in sql


@pytest.mark.parametrize(
    ("task", "select", "message"),
    [
        ('kind = "aggregate"\nevery = "5m"\n[destination]\ntable = "t"', None, "[window]: missing"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\n[destination]\ntable = "t"',
         None, "[window] width: missing"),
        ('kind = "aggregate"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\ntable = "t"',
         None, 'give every = "5m"'),
        ('kind = "aggregate"\nevery = "5m"\nschedule = "*/5 * * * *"\n[window]\ntable = "raw"\ncolumn = "c"\n'
         'width = "3h"\n[destination]\ntable = "t"', None, "every or schedule, not both"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"\nmode = "upsert"', None, 'mode = "upsert" needs the key columns'),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"\nurl = "oracle://x/y"', None, "is not a database URL"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "SELECT city FROM raw GROUP BY city", "does not read in_window"),
        # in_window only in a comment or a string: each window aggregated the whole table
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "SELECT city FROM raw -- not in_window yet\nGROUP BY city", "does not read in_window"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "/* FROM in_window */ SELECT city FROM raw GROUP BY city", "does not read in_window"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "SELECT city, 'it''s in_window' AS note FROM raw GROUP BY city", "does not read in_window"),
        # in_window only as a name the select gives: the select read raw, the whole table
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "SELECT city, count(*) AS in_window FROM raw GROUP BY city", "does not read in_window"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n[destination]\n'
         'table = "t"', "SELECT in_window.city FROM raw AS in_window GROUP BY 1", "does not read in_window"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\nstep = 1\n'
         '[destination]\ntable = "t"', None, "unknown setting 'step'"),
        ('kind = "aggregate"\nevery = "5m"\nkeep = "1h"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n'
         '[destination]\ntable = "t"', None, "keep: '1h' is shorter than the window; keep at least '3h'"),
        # width = "schedule": a window is the gap between two ticks, and keep was not checked against it
        ('kind = "aggregate"\nschedule = "0 0 * * *"\nkeep = "1h"\n[window]\ntable = "raw"\ncolumn = "c"\n'
         'width = "schedule"\n[destination]\ntable = "t"', None,
         "keep: '1h' is shorter than the longest gap between two ticks of schedule '0 0 * * *' (a window with "
         'width = "schedule"); keep at least \'1d\''),
        ('kind = "aggregate"\nschedule = "0 0 * * *"\nschedule_zone = "Europe/Brussels"\nkeep = "1d"\n[window]\n'
         'table = "raw"\ncolumn = "c"\nwidth = "schedule"\n[destination]\ntable = "t"', None,
         "keep at least '25h'"),  # the day the clocks go back
        # fractions of a second: windows were reported from :58.5 but read from :58 (overlaps, gaps)
        ('kind = "aggregate"\nevery = "1.5s"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "3h"\n'
         '[destination]\ntable = "t"', None, "every: '1.5s' is not whole seconds"),
        ('kind = "aggregate"\nevery = "5m"\n[window]\ntable = "raw"\ncolumn = "c"\nwidth = "90.5s"\n'
         '[destination]\ntable = "t"', None, "[window] width: '90.5s' is not whole seconds"),
        # a file outside the destination: it failed only at the first evaluation
        ('kind = "aggregate"\nevery = "5m"\npath = "../{t:%Y%m%d%H%M}.csv"\n[window]\ntable = "raw"\n'
         'column = "c"\nwidth = "3h"\n[destination]\ntable = "t"', None, "path: rendered path"),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_setting(tmp_path: Path, sqlite_url: str, task: str, select: str | None,
                                               message: str) -> None:  # fmt: skip
    root = airmax_project(tmp_path / "proj", sqlite_url)
    folder = root / "tasks" / AGGREGATE
    (folder / "task.toml").write_text(task)
    if select is not None:
        (folder / "select.sql").write_text(select)
    project = load(root)
    assert AGGREGATE not in project.tasks
    with pytest.raises(ConfigError) as raised:
        project.task(AGGREGATE)
    assert message in str(raised.value) and str(folder) in str(raised.value)


@pytest.mark.parametrize(
    "select",
    ['SELECT city, count(*) AS "driver\'s count" FROM in_window GROUP BY city',
     'SELECT city AS "a--b" FROM in_window GROUP BY city',
     "SELECT city AS `it's` FROM in_window GROUP BY city"],
)  # fmt: skip
def test_a_quote_or_dashes_in_a_quoted_name_do_not_hide_in_window(
    tmp_path: Path, sqlite_url: str, select: str
) -> None:
    """A ' or -- inside a double-quoted (or backticked) name was read as the start of a string or
    a comment running to the end, so a select reading in_window was refused as not reading it."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    (root / "tasks" / AGGREGATE / "select.sql").write_text(select)
    project = load(root)
    assert AGGREGATE in project.tasks, project.problems


@pytest.mark.parametrize(
    ("source", "select"),
    [("mariadb://u:p@127.0.0.1:9/db", "SELECT 'it\\'s' AS note, count(*) AS n FROM in_window"),
     ("postgresql://u:p@127.0.0.1:9/db", "SELECT E'it\\'s' AS note, count(*) AS n FROM in_window"),
     (None, "SELECT 'C:\\' AS note, count(*) AS n FROM in_window WHERE 'a' = 'a'")],
)  # fmt: skip
def test_a_backslash_in_a_literal_does_not_hide_in_window(
    tmp_path: Path, sqlite_url: str, source: str | None, select: str
) -> None:
    """MariaDB reads \\' in a literal as a quote (PostgreSQL in E'...' only): the check ended the
    literal there, took the next ' for the start of another running to the end, and refused a
    select reading in_window as not reading it (it loaded before that check)."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    if source is not None:
        toml = root / "sluicegate.toml"
        toml.write_text(toml.read_text().replace(f'url = "{sqlite_url}"', f'url = "{source}"', 1))
    (root / "tasks" / AGGREGATE / "select.sql").write_text(select)
    project = load(root)
    assert AGGREGATE in project.tasks, project.problems


def test_a_broken_aggregate_task_exits_2_with_one_line(tmp_path: Path, sqlite_url: str) -> None:
    root = airmax_project(tmp_path / "proj", sqlite_url)
    (root / "tasks" / AGGREGATE / "select.sql").write_text("SELECT 1 AS one FROM raw")
    proc = cli(root, "run", AGGREGATE)
    assert proc.returncode == 2 and "does not read in_window" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_check_names_a_missing_table_column(tmp_path: Path, url: str) -> None:
    root = airmax_project(tmp_path / "proj", url)
    assert cli(root, "check").returncode == 0
    db = tables.TableDb(url)
    db.execute("ALTER TABLE current_air_quality DROP COLUMN num_measurements")
    db.close()
    proc = cli(root, "check")
    assert proc.returncode == 2 and "has no column num_measurements" in proc.stderr


def test_a_misspelt_window_column_fails_check_and_run_and_keeps_the_table(tmp_path: Path, url: str) -> None:
    """On SQLite "measurement_time" (no such column) read as a string: check said ok, and each
    evaluation found no row in its window and replaced the readers' table with nothing."""
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Leuven", T - dt.timedelta(hours=1), 2.0)])
    assert _evaluate(root, T).rows == 2 and len(table(url)) == 2
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(
        toml.read_text().replace('column = "measurement_time_utc"', 'column = "measurement_time"')
    )
    proc = cli(root, "check")
    assert proc.returncode == 2 and "measurement_time" in proc.stderr and "Traceback" not in proc.stderr
    failed = _evaluate(root, T + dt.timedelta(minutes=5))
    assert failed.state == "failed" and "measurement_time" in str(failed.error)
    assert len(table(url)) == 2  # the readers' table keeps the last good evaluation


def test_text_in_a_sqlite_number_column_fails_the_evaluation_instead_of_counting_as_zero(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SQLite's avg reads text it cannot read as a number as 0: 'abc' and 10.0 in a REAL column
    averaged to 5.0 in the readers' table, silently. The evaluation fails, naming the column and
    the value, and keeps the table; a text outside the window, or once made NULL, is no matter."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 10.0), ("Gent", T - dt.timedelta(hours=5), "x")])
    assert _evaluate(root, T).state == "done" and table(sqlite_url)[0]["parameter_value"] == 10.0
    later = T + dt.timedelta(minutes=5)
    add_raw(sqlite_url, [("Gent", later - dt.timedelta(minutes=1), "abc")], prefix="n")
    failed = _evaluate(root, later)
    assert failed.state == "failed" and "raw.parameter_value holds 'abc'" in str(failed.error)
    assert "UPDATE raw SET" in str(failed.error)
    assert [(r["parameter_value"], r["num_measurements"]) for r in table(sqlite_url)] == [(10.0, 1)]
    assert _evaluations(root)[0]["error"] == failed.error
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE raw SET parameter_value = NULL WHERE parameter_value = 'abc'")
    assert _evaluate(root, later + dt.timedelta(minutes=5)).state == "done"
    assert [(r["parameter_value"], r["num_measurements"]) for r in table(sqlite_url)] == [(10.0, 2)]


def test_a_sqlite_avg_past_the_largest_double_fails_naming_the_column_not_writing_infinity(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SQLite's avg of 1.7e308 and 1.7e308 sums past the largest double to Infinity, with no error
    (PostgreSQL fails the select, :func:`test_a_select_that_overflows_fails_naming_select_sql_and_the_window`):
    the readers' table held Infinity as Gent's mean. The evaluation fails naming the column and the
    window, and keeps the table; an infinite value in the window itself is averaged as it is."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    assert _evaluate(root, T).state == "done"
    later = T + dt.timedelta(minutes=5)
    add_raw(sqlite_url, [("Gent", later - dt.timedelta(minutes=2), 1.7e308),
                         ("Gent", later - dt.timedelta(minutes=1), 1.7e308)], prefix="n")  # fmt: skip
    failed = _evaluate(root, later)
    assert failed.state == "failed", failed
    assert "column 'parameter_value' is Infinity" in str(failed.error)
    assert f"[{(later - dt.timedelta(hours=3)).isoformat()}, {later.isoformat()})" in str(failed.error)
    assert [r["parameter_value"] for r in table(sqlite_url)] == [1.0]
    assert _evaluations(root)[0]["error"] == failed.error
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE raw SET parameter_value = 9e999 WHERE message_id = 'n0'")  # infinite itself
    assert _evaluate(root, later + dt.timedelta(minutes=5)).state == "done"
    assert [r["parameter_value"] for r in table(sqlite_url)] == [float("inf")]


def test_a_sqlite_select_returning_an_infinite_literal_is_evaluated(tmp_path: Path, sqlite_url: str) -> None:
    """Infinity that select.sql asks for in so many words (``9e999`` as "no upper limit") is no
    sum past the largest double: every evaluation failed, blaming an avg the window never overflowed."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    _also_select(root, sqlite_url, upper=("9e999", "REAL"), lower=("-1e400", "REAL"))
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None)
    assert [(r["upper"], r["lower"]) for r in table(sqlite_url)] == [(float("inf"), float("-inf"))]


def test_text_in_a_sqlite_number_column_skipped_as_the_error_advises_is_evaluated(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The error offers two ways out: make the text NULL, or skip it in select.sql with
    WHERE typeof(col) IN ('integer', 'real'). The second one failed again with the same error,
    for ever: the scan read the window table, not what select.sql reads of it."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    add_raw(
        sqlite_url,
        [("Gent", T - dt.timedelta(minutes=1), 10.0), ("Gent", T - dt.timedelta(minutes=2), "abc")],
    )
    failed = _evaluate(root, T)
    assert failed.state == "failed" and "raw.parameter_value holds 'abc'" in str(failed.error)
    advice = "WHERE typeof(\"parameter_value\") IN ('integer', 'real')"
    assert advice in str(failed.error)
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(select.read_text().replace("FROM in_window", f"FROM in_window {advice}"))
    assert _evaluate(root, T + dt.timedelta(minutes=5)).state == "done"
    assert [(r["parameter_value"], r["num_measurements"]) for r in table(sqlite_url)] == [(10.0, 1)]


def test_a_select_returning_the_evaluation_column_names_the_setting_to_change(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The column sluicegate adds must not be one the select returns: the default name is blamed
    on the select, a name set in task.toml on that setting (it said "set evaluation_column"
    either way, after "the query failed")."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text('evaluation_column = "city"\n' + toml.read_text())  # a top-level setting
    proc = cli(root, "check")
    assert proc.returncode == 2 and "query failed" not in proc.stderr, proc.stderr
    assert "task.toml evaluation_column: 'city' is a column select.sql returns" in proc.stderr
    toml.write_text(toml.read_text().replace('evaluation_column = "city"', ""))
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(select.read_text().replace("SELECT city,", "SELECT city, 0 AS evaluation_time_utc,"))
    proc = cli(root, "check")
    assert proc.returncode == 2 and "query failed" not in proc.stderr, proc.stderr
    assert "select.sql returns a column evaluation_time_utc, which sluicegate adds" in proc.stderr
    assert "with evaluation_column in task.toml" in proc.stderr
    failed = _evaluate(root, T)  # a run records the same sentence on the ledger
    assert failed.state == "failed" and "returns a column evaluation_time_utc" in str(failed.error)


def test_a_select_returning_the_evaluation_column_in_other_case_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SQLite reads "Evaluation_Time_UTC" and "evaluation_time_utc" as one column and took the first
    of the two an INSERT named: the table's evaluation time was the select's value, not the tick."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(select.read_text().replace("SELECT city,", "SELECT city, 0 AS Evaluation_Time_UTC,"))
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    failed = _evaluate(root, T)
    assert failed.state == "failed", stamps(table(sqlite_url))
    assert "returns a column Evaluation_Time_UTC, which sluicegate adds" in str(failed.error)


def test_a_select_returning_two_columns_of_one_name_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    """SELECT ..., count(*) AS num_measurements, 99 AS NUM_measurements: SQLite's INSERT took the first
    of the two and dropped the other, silently (and the file held both)."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(select.read_text().replace("SELECT city,", "SELECT city, 99 AS NUM_measurements,"))
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    failed = _evaluate(root, T)
    assert failed.state == "failed", table(sqlite_url)
    assert "returns two columns named num_measurements (in any case)" in str(failed.error), failed.error
    proc = cli(root, "check")
    assert proc.returncode == 2 and "two columns named num_measurements" in proc.stderr, proc.stderr


def test_an_upsert_key_the_select_does_not_return_fails_check_and_the_evaluation(
    tmp_path: Path, sqlite_url: str
) -> None:
    """key = ["city", ...] with a select that returns no city: check said ok, and each run ended in
    ValueError's traceback ("'city' is not in list") with the tick's claim left running."""
    upsert = 'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]'
    root = airmax_project(tmp_path / "proj", sqlite_url, destination_extra=upsert)
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(
        select.read_text().replace("SELECT city,", "SELECT").replace("GROUP BY city,", "GROUP BY")
    )
    add_raw(sqlite_url, [("Gent", T - dt.timedelta(hours=1), 1.0)])
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "[destination] key: city is not a column select.sql returns" in proc.stderr, proc.stderr
    failed = _evaluate(root, T)
    assert failed.state == "failed" and "key: city is not a column" in str(failed.error), failed.error
    assert _evaluations(root)[0]["state"] == "failed" and table(sqlite_url) == []


def test_an_upsert_row_with_a_null_key_fails_the_evaluation_instead_of_adding_it_again(
    tmp_path: Path, url: str
) -> None:
    """A NULL equals no other value, so ON CONFLICT (ON DUPLICATE KEY) never matched a group whose
    key column was NULL: each evaluation added its row again, beside the older ones."""
    upsert = 'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]'
    root = airmax_project(
        tmp_path / "proj", url, destination_extra=upsert, task_extra='path = "cur/{t:%Y%m%d%H%M}.{ext}"'
    )
    db = tables.TableDb(url)
    text = "varchar(100)" if db.flavor == "mariadb" else "text"
    time_type = {"sqlite": "text", "postgresql": "timestamptz", "mariadb": "datetime"}[db.flavor]
    db.execute("DROP TABLE current_air_quality")
    db.execute(
        f"CREATE TABLE current_air_quality (city {text}, parameter_name {text}, parameter_unit {text}, "
        f"parameter_value double precision, num_measurements bigint, evaluation_time_utc {time_type}, "
        "UNIQUE (city, parameter_name, parameter_unit))"
    )
    db.close()
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 4.0), (None, T - dt.timedelta(hours=2), 2.0)])  # type: ignore[list-item]
    for minutes in (0, 5):
        failed = _evaluate(root, T + dt.timedelta(minutes=minutes))
        assert failed.state == "failed", table(url)
        assert "key column city is NULL" in str(failed.error) and "COALESCE(city" in str(failed.error)
    assert table(url) == [] and not (root / "exports" / "cur").exists()  # no file either


def test_an_upsert_into_a_table_without_a_unique_key_on_its_key_fails_check_and_the_evaluation(
    tmp_path: Path, url: str
) -> None:
    """MariaDB's ON DUPLICATE KEY UPDATE updates only a row a unique key of the table matches: into
    a table with none, each evaluation added its rows again, beside the older ones, while check and
    every run said ok. PostgreSQL's and SQLite's ON CONFLICT refused each evaluation ("does not
    match any PRIMARY KEY or UNIQUE constraint"), while check said ok."""
    upsert = 'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]'
    root = airmax_project(tmp_path / "proj", url, destination_extra=upsert)
    db = tables.TableDb(url)
    text = "varchar(100)" if db.flavor == "mariadb" else "text"
    time_type = {"sqlite": "text", "postgresql": "timestamptz", "mariadb": "datetime"}[db.flavor]
    db.execute("DROP TABLE current_air_quality")
    db.execute(  # a unique key on city alone would not do on PostgreSQL and SQLite: ON CONFLICT names all three
        f"CREATE TABLE current_air_quality (city {text}, parameter_name {text}, parameter_unit {text}, "
        f"parameter_value double precision, num_measurements bigint, evaluation_time_utc {time_type})"
    )
    db.close()
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "has no unique index on city, parameter_name, parameter_unit" in proc.stderr, proc.stderr
    for minutes in (0, 5):
        failed = _evaluate(root, T + dt.timedelta(minutes=minutes))
        assert failed.state == "failed", table(url)
        assert "has no unique index on city, parameter_name, parameter_unit" in str(failed.error)
    assert table(url) == []


def test_a_run_limit_is_refused_for_the_kinds_it_does_not_count(tmp_path: Path, sqlite_url: str) -> None:
    """A limit counts partitions and blocks; an aggregate or ingest run took it and did as it would
    have without it. A run of every task, all of such kinds, is refused too."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    for args, kind, name in (
        ([AGGREGATE], "aggregate", AGGREGATE),
        (["measurements"], "ingest", "measurements"),
        ([], "", ""),
    ):
        proc = cli(root, "run", *args, "--limit", "1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"--limit/limit 1 does not apply to {kind} task {name!r}" in proc.stderr or not kind
        assert "does not apply to" in proc.stderr and "leave it out" in proc.stderr
    assert _evaluations(root) == []  # nothing ran


@pytest.mark.pg
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("column", "expr"),
    [("ids", "ARRAY[1, NULL]::int[]"), ("span", "interval '1 day -1 second'"), ("rec", "ROW(1, 'x')"),
     ("rng", "int4range(1, 5)")],
)  # fmt: skip
def test_a_value_the_file_cannot_hold_as_postgresql_writes_it_fails_by_column(
    tmp_path: Path, pg_url: str, fmt: str, column: str, expr: str
) -> None:
    """The evaluation's file was written from psycopg's Python values: an int[] as "[1, None]",
    interval '1 day -1 second' as "23:59:59", a record as "('1', 'x')", a range as "[1, 5)", all
    silently (PostgreSQL writes {1,NULL}, 1 day -00:00:01, (1,x), [1,5)); JSON lines failed
    naming no column. Now the evaluation fails, naming the column and the cast to make."""
    root = airmax_project(
        tmp_path / "proj", pg_url, task_extra=f'path = "cur/{{t:%Y%m%d%H%M}}.{{ext}}"\nformat = "{fmt}"'
    )
    _also_select(root, pg_url, **{column: (expr, "text")})
    add_raw(pg_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert result.state == "failed"
    assert result.error is not None and f"column {column!r}" in result.error
    assert f"CAST({column} AS text) AS {column}" in result.error
    assert not (root / "exports" / "cur").exists()


@pytest.fixture
def sql_ascii_url(pg_server: Any) -> Iterator[str]:
    """A fresh database whose encoding is SQL_ASCII (bytes as stored, no conversion)."""
    name = f"test_{uuid.uuid4().hex}"
    admin = tables.TableDb(pg_server.url("postgres"))
    admin.execute(
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    yield pg_server.url(name)
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


@pytest.mark.pg
def test_text_of_a_sql_ascii_database_is_read_and_written_as_text(tmp_path: Path, sql_ascii_url: str) -> None:
    """psycopg speaks a SQL_ASCII database's own client_encoding: it sent "µg/m³" as ASCII
    (UnicodeEncodeError: no row could be written) and read text back as bytes (the file held
    "\\x4765..." for "Gent"). The table connections now ask for UTF-8."""
    root = airmax_project(
        tmp_path / "proj", sql_ascii_url, task_extra='path = "cur/{t:%Y%m%d%H%M}.{ext}"\nformat = "csv"'
    )
    add_raw(sql_ascii_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None)
    [row] = read_csv(root / "exports" / "cur" / "202403101200.csv")
    assert (row["city"], row["parameter_unit"]) == ("Gent", "µg/m³")
    assert [(r["city"], r["parameter_unit"]) for r in table(sql_ascii_url)] == [("Gent", "µg/m³")]


@pytest.mark.mariadb
def test_a_mariadb_time_the_file_cannot_hold_names_a_cast_mariadb_takes(
    tmp_path: Path, mariadb_url: str
) -> None:
    """MariaDB's driver gives a TIME as a timedelta, which fails the file by column; the error
    said CAST(col AS text), a syntax error on MariaDB (its cast is CAST(col AS CHAR))."""
    root = airmax_project(
        tmp_path / "proj", mariadb_url, task_extra='path = "cur/{t:%Y%m%d%H%M}.{ext}"\nformat = "csv"'
    )
    _also_select(root, mariadb_url, span=("SEC_TO_TIME(3600)", "TEXT"))
    add_raw(mariadb_url, [("Gent", T - dt.timedelta(hours=1), 4.0)])
    result = _evaluate(root, T)
    assert result.state == "failed" and result.error is not None and "column 'span'" in result.error
    assert "CAST(span AS CHAR) AS span" in result.error, result.error


def test_a_sqlite_window_column_of_unix_seconds_fails_check_and_run_and_keeps_the_table(
    tmp_path: Path, sqlite_url: str
) -> None:
    """julianday(1710072000) is NULL: with Unix seconds in the window column no row was in any
    window, check said ok, and each evaluation replaced the readers' table with nothing."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    add_raw(
        sqlite_url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Leuven", T - dt.timedelta(hours=1), 2.0)]
    )
    db = tables.TableDb(sqlite_url)
    db.execute("ALTER TABLE raw ADD COLUMN measured INTEGER")
    db.execute("UPDATE raw SET measured = CAST(strftime('%s', measurement_time_utc) AS INTEGER)")
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(toml.read_text().replace('column = "measurement_time_utc"', 'column = "measured"'))
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "raw.measured holds 1710068400 (integer)" in proc.stderr and "'unixepoch'" in proc.stderr
    db.execute(
        "INSERT INTO current_air_quality (city, parameter_name, parameter_unit, parameter_value, num_measurements,"
        " evaluation_time_utc) VALUES ('Gent', 'pm25', 'ug/m3', 1.0, 1, '2024-03-10T11:55:00Z')"  # good rows, from before
    )
    failed = _evaluate(root, T)
    assert failed.state == "failed" and "raw.measured holds 1710068400 (integer)" in str(failed.error)
    assert len(table(sqlite_url)) == 1  # the readers' table keeps the last good evaluation
    fix = re.search(r"\((?:Unix seconds: )(UPDATE .*)\)$", str(failed.error))
    assert fix is not None
    db.execute(fix.group(1))  # the fix the message gives works
    db.close()
    assert cli(root, "check").returncode == 0
    assert _evaluate(root, T + dt.timedelta(minutes=5)).rows == 2


@pytest.mark.parametrize(
    ("flavor", "select", "reads"),
    [
        # passed as reading the window, and each window aggregated the whole table
        ("mariadb", "SELECT city FROM raw # in_window\nGROUP BY city", False),
        ("mariadb", 'SELECT city, "in_window" AS note FROM raw GROUP BY city', False),
        ("mariadb", "SELECT city, 'it\\'s in_window' AS note FROM raw GROUP BY city", False),
        ("postgresql", "SELECT city, $$ in_window $$ AS note FROM raw GROUP BY city", False),
        ("postgresql", "SELECT city, $q$ it's in_window $q$ AS note FROM raw GROUP BY city", False),
        ("sqlite", "SELECT city, count(*) AS in_window FROM raw GROUP BY city", False),
        ("postgresql", 'SELECT city, count(*) AS "in_window" FROM raw GROUP BY city', False),
        # what reads it still does, in each dialect
        ("postgresql", "SELECT a # b AS x FROM in_window", True),  # # is an operator there
        ("postgresql", "SELECT price$usd, cost$usd FROM in_window", True),  # $ inside names
        ("postgresql", 'SELECT count(*) FROM "in_window"', True),
        ("postgresql", "SELECT in_window.city FROM in_window GROUP BY 1", True),
        ("postgresql", "SELECT $$x$$ AS a, w.city FROM in_window AS w", True),
        ("mariadb", "SELECT 1--1 AS a FROM in_window", True),  # -- without a space is no comment
        ("mariadb", "SELECT '\\\\' AS a FROM in_window", True),  # a string of one backslash
        ("mariadb", "SELECT count(*) FROM `in_window`", True),
        ("sqlite", 'SELECT count(*) FROM "in_window" AS w', True),
        ("sqlite", "SELECT count(*) FROM stations JOIN in_window USING (city)", True),
    ],
)  # fmt: skip
def test_in_window_counts_only_as_code_of_the_source_dialect(
    flavor: tables.Flavor, select: str, reads: bool
) -> None:
    assert reads_window(select, flavor) is reads


@pytest.mark.pg
def test_a_postgresql_dollar_quoted_in_window_is_refused_at_load(tmp_path: Path, pg_url: str) -> None:
    root = airmax_project(tmp_path / "proj", pg_url)
    (root / "tasks" / AGGREGATE / "select.sql").write_text(
        "SELECT city, $$in_window$$ AS note FROM raw GROUP BY city"
    )
    with pytest.raises(ConfigError, match="does not read in_window"):
        load(root).task(AGGREGATE)


@pytest.mark.parametrize(
    ("schedule", "keep"),
    [
        ("0 0 1 * *", 31 * 86400.0),
        ("0 0 31 * *", 61 * 86400.0),
        ("0 0 29 2 *", 1461 * 86400.0),
        (f"0 0 1 1 * 0 2020-{YEAR + 1}", (dt.date(YEAR + 1, 1, 1) - dt.date(YEAR, 1, 1)).days * 86400.0),
    ],  # its years end: no traceback
)
def test_keep_covers_the_longest_window_of_a_schedule_by_default(
    tmp_path: Path, sqlite_url: str, schedule: str, keep: float
) -> None:
    """keep defaulted to 30 days, shorter than a monthly schedule's windows with width = "schedule"."""
    root = airmax_project(tmp_path / "proj", sqlite_url, width="schedule")
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(toml.read_text().replace('every = "5m"', f'schedule = "{schedule}"'))
    task = load(root).task(AGGREGATE)
    assert isinstance(task, agg.Task) and task.keep == keep
    toml.write_text(
        toml.read_text().replace(f'schedule = "{schedule}"', f'schedule = "{schedule}"\nkeep = "30d"')
    )
    with pytest.raises(ConfigError, match="keep: '30d' is shorter than the longest gap"):
        load(root).task(AGGREGATE)


def test_a_schedule_window_in_the_hour_a_fall_back_repeats_is_the_hour_before(
    tmp_path: Path, sqlite_url: str
) -> None:
    """width = "schedule" and "0 * * * *" in Europe/Brussels: the window of 02:00 CET (01:00 UTC) on
    the fall-back day started at that tick itself (croniter's previous tick of a microsecond
    before it), so it was empty, the hour before it was in no window and the table was emptied."""
    root = airmax_project(tmp_path / "proj", sqlite_url, width="schedule")
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(
        toml.read_text().replace('every = "5m"', 'schedule = "0 * * * *"\nschedule_zone = "Europe/Brussels"')
    )
    utc = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    add_raw(sqlite_url, [("Gent", utc(2024, 10, 27, 0, 30), 1.0), ("Gent", utc(2024, 10, 27, 1, 30), 2.0)])
    for hour in (0, 1, 2):  # 02:00 CEST, 02:00 CET, 03:00 CET
        tick = utc(2024, 10, 27, hour)
        result = _evaluate(root, tick)
        assert (result.window_start, result.window_end) == (tick - dt.timedelta(hours=1), tick)
        assert result.rows == (hour > 0)


def test_two_tasks_replacing_one_table_are_refused(tmp_path: Path, sqlite_url: str) -> None:
    """Two aggregate tasks writing one table, either in replace mode: each evaluation of one removed
    the other's rows, and readers saw the two results by turns."""
    root = airmax_project(tmp_path / "proj", sqlite_url)
    folder = root / "tasks" / AGGREGATE
    other = root / "tasks" / "hourly_air_quality"
    other.mkdir()
    (other / "select.sql").write_text((folder / "select.sql").read_text())
    toml = (folder / "task.toml").read_text()
    (other / "task.toml").write_text(
        toml.replace('width = "3h"', 'width = "1h"').replace(
            f'table = "{AGGREGATE}"', 'table = "Current_Air_Quality"'
        )
    )
    project = load(root)
    assert AGGREGATE not in project.tasks and "hourly_air_quality" not in project.tasks
    proc = cli(root, "run", AGGREGATE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"{folder / 'task.toml'} [destination]: task hourly_air_quality also writes table {AGGREGATE}"
        in proc.stderr
    )
    # both upserting: one table of two tasks' keys is meant
    for path, text in (
        (folder / "task.toml", toml),
        (other / "task.toml", (other / "task.toml").read_text()),
    ):
        path.write_text(text.replace("[destination]", '[destination]\nmode = "upsert"\nkey = ["city"]'))
    assert {AGGREGATE, "hourly_air_quality"} <= set(load(root).tasks)


@pytest.mark.mariadb
@pytest.mark.parametrize("kind", ["BIGINT", "DOUBLE"])
def test_a_mariadb_window_column_of_unix_seconds_fails_check_and_run_and_keeps_the_table(
    tmp_path: Path, mariadb_url: str, kind: str
) -> None:
    """MariaDB compares a number column with the window's DATETIME bounds as numbers (1710072000 <
    20240310120000): check said ok, and each evaluation found no row and emptied the table."""
    root = airmax_project(tmp_path / "proj", mariadb_url)
    add_raw(
        mariadb_url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Leuven", T - dt.timedelta(hours=1), 2.0)]
    )
    assert _evaluate(root, T).rows == 2
    db = tables.TableDb(mariadb_url)
    db.execute(f"ALTER TABLE raw ADD COLUMN measured {kind}")
    db.execute("UPDATE raw SET measured = UNIX_TIMESTAMP(measurement_time_utc)")
    db.close()
    toml = root / "tasks" / AGGREGATE / "task.toml"
    toml.write_text(toml.read_text().replace('column = "measurement_time_utc"', 'column = "measured"'))
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"raw.measured is a {kind} column, which MariaDB compares with the window's times as numbers"
        in proc.stderr
    )
    failed = _evaluate(root, T + dt.timedelta(minutes=5))
    assert failed.state == "failed" and f"raw.measured is a {kind} column" in str(failed.error)
    assert len(table(mariadb_url)) == 2  # the readers' table keeps the last good evaluation


def test_a_select_failing_on_one_row_names_select_sql_and_the_window_and_says_no_retry_on_each_database(
    tmp_path: Path, url: str
) -> None:
    """An error of the select on one row of the window (SQLite's integer overflow, PostgreSQL's
    division by zero, MariaDB's subquery of two rows): on MariaDB it read "database ...: Subquery
    returns more than 1 row; will retry", naming neither select.sql nor the window, as though the
    server were away (the driver raises OperationalError for a query's own errors too)."""
    root = airmax_project(tmp_path / "proj", url)
    add_raw(url, [("Gent", T - dt.timedelta(hours=1), 1.0), ("Genk", T - dt.timedelta(hours=1), 2.0)])
    assert _evaluate(root, T).rows == 2
    fails = {
        "sqlite": "abs(-9223372036854775807 - 1)",
        "postgresql": "1 / (length(city) - 4)",
        "mariadb": "(SELECT 1 FROM (SELECT 1 UNION ALL SELECT 2) AS x WHERE city = 'Genk')",
    }[tables.TableDb(url).flavor]
    select = root / "tasks" / AGGREGATE / "select.sql"
    select.write_text(
        "SELECT city, parameter_name, parameter_unit, avg(parameter_value) AS parameter_value, "
        f"count(*) + CASE WHEN city = 'Genk' THEN {fails} ELSE 0 END AS num_measurements "
        "FROM in_window GROUP BY city, parameter_name, parameter_unit"
    )
    tick = T + dt.timedelta(minutes=5)
    failed = _evaluate(root, tick)
    assert failed.state == "failed" and failed.error is not None
    window = f"[{(tick - dt.timedelta(hours=3)).isoformat()}, {tick.isoformat()})"
    assert failed.error.startswith(f"{select} failed on the window {window}: "), failed.error
    assert "retry" not in failed.error
    assert len(table(url)) == 2 and stamps(table(url)) == {T}  # the readers' table keeps the last good one


def test_whole_numbers_no_double_holds_keep_an_integer_column_typed_as_a_double() -> None:
    """A SQLite select's whole numbers bound for a NUMERIC or REAL sink column are written as
    doubles (4.00 comes from SQLite as 4), but a SUM past 2**53 has no exact double: Arrow
    refused it and every tick of the evaluation failed, where the file was int64 and exact."""
    from sluicegate.drivers.aggregate_file import _kind

    assert _kind("total", [4, None, 7], typed="float") == "float"
    assert _kind("total", [4, 2**53 + 1], typed="float") == "int"
    assert _kind("total", [-(2**53) - 1], typed="float") == "int"
    assert _kind("total", [4, 4.5], typed="int") == "float"
