"""The source database lost mid-run (a restart, a network blip, terminated backends).

An outage of the source is no fault of the partitions being read: they must not be charged an
attempt, whatever ``backoff`` and ``max_attempts`` say. Here the source is reached through a
TCP relay (``TcpProxy.down``: every connection reset, new ones refused) and the ledger
directly, with ``backoff = "0s"`` and ``max_attempts = 1``, so a charged partition is parked
at once. A short outage: the run waits for the source and exports everything. A long one
(longer than the reconnect budget): the run stops with one error naming the source, and the
partitions it held are pending again, none parked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import test_faults

from sluicegate import db as sg_db
from sluicegate import engine, operations
from sluicegate.options import RunOptions
from support import Db, cli, hours, kill_idle_while_reading, load, terminate_running, write_project

if TYPE_CHECKING:
    from plugins.tcpproxy import TcpProxy

pytestmark = pytest.mark.pg
read_path = test_faults.read_path  # the fixture: each read path, ADBC and not

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)
LOCATIONS, DAYS = 40, 3
PARTITIONS = LOCATIONS * DAYS
SELECT = (
    "SELECT m.location_id, m.sensor_id AS sensors_id, m.datetime, m.value, slow(m.datetime) AS s"
    " FROM measurements AS m"
)


def _project(tmp_path: Path, pg_url: str, pg_server: Any, proxy: TcpProxy, fmt: str) -> Path:
    through = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    db = Db(pg_url)
    for loc in range(1, LOCATIONS + 1):
        db.location(loc, "UTC")
        db.insert(loc, hours(DAY, 24 * DAYS))
    db.conn.execute(  # each partition's first hour takes 50 ms: the run lasts past the outage
        "CREATE FUNCTION slow(t timestamptz) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF extract(hour FROM t) = 0 THEN PERFORM pg_sleep(0.05); END IF; RETURN 1; END $$"
    )
    db.close()
    root = write_project(
        tmp_path / "proj", source=through, ledger=pg_url, destination=str(tmp_path / "out"), fmt=fmt,
        capture="explicit", zone="UTC", backoff="0s", extra_defaults="batch_size = 10\nmax_attempts = 1\nworkers = 1",
    )  # fmt: skip
    (root / "tasks" / "openaq" / "select.sql").write_text(SELECT)
    project = load(root)
    for loc in range(1, LOCATIONS + 1):
        for d in range(DAYS):
            day = (DAY + dt.timedelta(days=d)).date().isoformat()
            operations.mark(project, "openaq", {"location_id": str(loc), "day": day})
    return root


def _select_through(pg_url: str, root: Path, body: str, *, armed: bool = False) -> None:
    """Create the PL/pgSQL function ``die(loc int)`` of ``body`` (with the sequence ``armed`` it may
    count with), and have select.sql call it for each row it reads, in place of ``slow``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if armed:
            conn.execute("CREATE SEQUENCE armed")
            conn.execute("GRANT ALL ON SEQUENCE armed TO PUBLIC")
        conn.execute(f"CREATE FUNCTION die(loc int) RETURNS int LANGUAGE plpgsql AS $$ {body} $$")
    select = SELECT.replace("slow(m.datetime) AS s", "die(m.location_id) AS s")  # on the rows read only
    (root / "tasks" / "openaq" / "select.sql").write_text(select)


def _outage(pg_url: str, proxy: TcpProxy, seconds: float) -> threading.Thread:
    """Cut the source off once the run is reading, for ``seconds``."""

    def cut() -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            while admin.execute(query).fetchone()[0] == 0:  # type: ignore[index]
                time.sleep(0.01)
        time.sleep(0.5)  # a few batches in
        proxy.down()
        time.sleep(seconds)
        proxy.up()

    thread = threading.Thread(target=cut)
    thread.start()
    return thread


def _counts(root: Path) -> tuple[int, int, int, int]:
    [status] = operations.status(load(root), ["openaq"])
    return status["exported"], status["failed"], status["pending"], status["claimed"]


def test_a_short_source_outage_parks_nothing_and_the_run_goes_on(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy], read_path: str
) -> None:
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, read_path)
    thread = _outage(pg_url, proxy, 1.5)
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
    assert proxy.cut >= 1
    assert summary.task_errors == [], summary.task_errors
    assert (summary.failed, summary.exported) == (0, PARTITIONS), summary.errors[:1]
    assert _counts(root) == (PARTITIONS, 0, 0, 0)


def test_a_long_source_outage_stops_the_run_and_leaves_its_partitions_pending(
    tmp_path: Path,
    pg_url: str,
    pg_server: Any,
    tcp_proxy: Callable[[str, int], TcpProxy],
    read_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sg_db, "RECONNECT_SECONDS", 1.0)
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, read_path)
    thread = _outage(pg_url, proxy, 6.0)
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
    masked = sg_db.mask_url(pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/"))
    [error] = summary.task_errors
    assert masked in error and "unavailable" in error and "\n" not in error, error
    assert summary.failed == 0, summary
    exported, failed, pending, claimed = _counts(root)
    assert (failed, claimed) == (0, 0) and exported + pending == PARTITIONS and pending > 0


def test_a_query_that_ends_its_own_connection_is_charged_and_holds_no_one_up(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """A partition whose query ends its server process (here by pg_terminate_backend; a crash of
    an extension does the same) is no outage: given back and read again, it would stop every run
    for good. The second loss in a run is charged an attempt, so it is parked (max_attempts = 1)
    and the other partitions are exported in the same run."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    _select_through(
        pg_url,
        root,
        "BEGIN IF loc = 7 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN loc; END",
    )
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("batch_size = 10", "batch_size = 1"))
    [summary] = engine.run(load(root), ["openaq"])
    assert summary.task_errors == [], summary.task_errors
    assert (summary.failed, summary.exported) == (DAYS, PARTITIONS - DAYS), summary.errors[:1]
    assert _counts(root) == (PARTITIONS - DAYS, DAYS, 0, 0)


def test_a_second_loss_charges_only_the_partition_whose_own_read_ends_the_connection(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """As above, with batches of 10: the batch that loses its connection a second time was charged
    whole, so the partitions claimed with location 7's were parked beside them (max_attempts = 1).
    Its partitions are read one by one now: location 7's are charged, the others export."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    _select_through(
        pg_url,
        root,
        "BEGIN IF loc = 7 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN loc; END",
    )
    [summary] = engine.run(load(root), ["openaq"])
    assert summary.task_errors == [], summary.task_errors
    assert (summary.failed, summary.exported) == (DAYS, PARTITIONS - DAYS), summary.errors[:1]
    assert _counts(root) == (PARTITIONS - DAYS, DAYS, 0, 0)


def test_a_batch_given_back_in_an_outage_does_not_count_against_the_limit(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """`run --limit 60` through a short outage exports 60 partitions: the batch given back (and
    claimed again) is not counted twice, once as given back, once as exported."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    thread = _outage(pg_url, proxy, 1.5)
    try:
        [summary] = engine.run(load(root), ["openaq"], RunOptions(limit=60))
    finally:
        thread.join()
    assert proxy.cut >= 1 and summary.released > 0, summary
    assert summary.task_errors == [], summary.task_errors
    assert (summary.failed, summary.exported) == (0, 60), summary.errors[:1]
    assert _counts(root) == (60, 0, PARTITIONS - 60, 0)


def test_a_second_loss_while_a_failed_batch_is_read_unit_by_unit_leaves_no_claim_behind(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """The first batch loses its connection (location 1's first row ends it): all of it is given
    back. Read again, its query fails (a second location in one query raises), so each partition
    is read alone; location 7's ends its connection, a second loss for the batch. The rest of
    the batch is read one by one once the source is back: location 7's partitions are charged,
    those after them export, and none of them stays claimed until its lease ends."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    _select_through(
        pg_url,
        root,
        "DECLARE"
        " seen text := current_setting('x.first', true); st text := statement_timestamp()::text;"
        " BEGIN IF NOT (SELECT is_called FROM armed) THEN IF loc = 1 THEN PERFORM nextval('armed');"
        " PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN loc; END IF;"
        " IF seen IS NULL OR seen = '' OR split_part(seen, '|', 1) <> st THEN"
        " PERFORM set_config('x.first', st || '|' || loc, true);"
        " ELSIF split_part(seen, '|', 2) <> loc::text THEN RAISE EXCEPTION 'bad batch'; END IF;"
        " IF loc = 7 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN loc; END",
        armed=True,
    )
    toml = root / "sluicegate.toml"
    text = toml.read_text().replace("batch_size = 10", f"batch_size = {PARTITIONS}")
    toml.write_text(text.replace("max_attempts = 1", "max_attempts = 2"))
    [summary] = engine.run(load(root), ["openaq"])
    assert summary.task_errors == [], summary.task_errors
    assert _counts(root) == (PARTITIONS - DAYS, DAYS, 0, 0), summary.errors[:1]


def test_an_outage_that_starts_while_a_batch_is_read_again_parks_none_of_it(
    tmp_path: Path,
    pg_url: str,
    pg_server: Any,
    tcp_proxy: Callable[[str, int], TcpProxy],
    read_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first batch loses its connection once (location 1's first row ends it) and is read
    again; then the source goes away for longer than the reconnect budget. After the second loss
    the run waits for the source before it reads the batch again one partition at a time, and
    stops: it does not claim the batch again and again while the source is away, charging it each
    time until it is parked (max_attempts = 2, backoff 0 s), nor charges it at all.

    The read again waits for the cut, and the source stays away until the run has returned. With a
    fixed 3 s read and 6 s outage, a cut 3 s late fell on a later batch, after files were exported
    (the summary then showed only the stop's "server closed the connection" error), and a run 5 s
    late to reconnect found the source back and exported everything."""
    monkeypatch.setattr(sg_db, "RECONNECT_SECONDS", 1.0)
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, read_path)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE cut (yes boolean NOT NULL)")
        conn.execute("INSERT INTO cut VALUES (false)")
    _select_through(
        pg_url,
        root,
        "BEGIN"
        " IF loc = 1 AND NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " PERFORM pg_terminate_backend(pg_backend_pid());"
        " ELSIF loc = 1 AND (SELECT last_value FROM armed) = 1 THEN PERFORM nextval('armed');"
        " FOR i IN 1..1200 LOOP EXIT WHEN (SELECT yes FROM cut); PERFORM pg_sleep(0.05); END LOOP;"
        " END IF; RETURN loc; END",
        armed=True,
    )
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("max_attempts = 1", "max_attempts = 2"))
    ran = threading.Event()

    def cut() -> None:  # once the batch is read again, until the run is over
        with psycopg.connect(pg_url, autocommit=True) as admin:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                " AND datname = current_database()"
            )
            while admin.execute(query).fetchone()[0] == 0:  # type: ignore[index]
                if ran.wait(0.01):  # the run never read it again: the asserts below say what it did
                    return
            proxy.down()
            admin.execute("UPDATE cut SET yes = true")  # the read again ends (its client is gone)
        ran.wait()
        proxy.up()

    thread = threading.Thread(target=cut)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        ran.set()
        thread.join()
    exported, failed, pending, claimed = _counts(root)
    assert (exported, failed, pending, claimed) == (0, 0, PARTITIONS, 0), summary
    [error] = summary.task_errors
    assert "unavailable" in error and "no attempt counted" in error, error


def test_a_stop_during_a_source_outage_ends_the_run_at_once_with_nothing_charged(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """SIGTERM (the run's stop) while the run waited for a lost source: the wait went on for the
    reconnect's 5 s grace after a stop, which only helps a ledger commit, and then failed the task
    (exit 1, not 143). The run now ends at once, as after any batch; the batch given back waits."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    thread, stop = _outage(pg_url, proxy, 8.0), threading.Event()
    told: list[float] = []

    def stop_in_the_outage() -> None:
        while proxy.cut < 1:
            time.sleep(0.01)
        time.sleep(0.5)  # the run is waiting for the source
        told.append(time.monotonic())
        stop.set()

    stopper = threading.Thread(target=stop_in_the_outage)
    stopper.start()
    try:
        [summary] = engine.run(load(root), ["openaq"], stop=stop)
        took = time.monotonic() - told[0]
    finally:
        stopper.join()
        thread.join()
    assert summary.task_errors == [], summary.task_errors
    assert took < 3, f"the run took {took:.1f} s to stop"
    exported, failed, pending, claimed = _counts(root)
    assert (failed, claimed) == (0, 0) and exported + pending == PARTITIONS and pending > 0


def test_a_wait_for_a_lost_source_ends_at_the_runs_max_runtime(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """`run --max-runtime 3s` through a longer outage: the wait for the source went on for up to
    60 s past the limit. It ends at the run's deadline now, as any max-runtime end does: no
    error, the batch given back pending, nothing charged nor claimed."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    thread = _outage(pg_url, proxy, 8.0)
    try:
        started = time.monotonic()
        [summary] = engine.run(load(root), ["openaq"], RunOptions(max_runtime=3.0, started=started))
        took = time.monotonic() - started
    finally:
        thread.join()
    assert proxy.cut >= 1, summary
    assert summary.task_errors == [] and summary.failed == 0, summary
    # before: 13.6 s (the 8 s outage, then the rest of the run); the slack is for a loaded machine
    assert took < 7.0, f"the run took {took:.1f} s with a max_runtime of 3 s"
    exported, failed, pending, claimed = _counts(root)
    assert (failed, claimed) == (0, 0) and exported + pending == PARTITIONS and pending > 0


def test_a_reconnect_refused_after_a_second_loss_leaves_no_partition_claimed(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """A DBA's maintenance: location 7's read is ended once (its batch is claimed again), then
    CONNECT on the source database is revoked and the read ended again. The batch that lost the
    source a second time is kept claimed while the run waits for the source, to be read one
    partition at a time; the reconnect is refused (a missing privilege, not an outage) and the
    task stops with that error, but the batch was left claimed until its lease (nothing gave it
    back), so every run before then skipped it. It is pending again now, with no attempt."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    dbname, role = pg_url.rsplit("/", 1)[1], f"reader_{time.time_ns()}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    _select_through(pg_url, root, "BEGIN IF loc = 7 THEN PERFORM pg_sleep(5); END IF; RETURN loc; END")
    toml = root / "sluicegate.toml"
    through = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    reader = f"postgresql://{role}:pw@{pg_server.host}:{pg_server.port}/{dbname}"
    toml.write_text(toml.read_text().replace(f'url = "{through}"', f'url = "{reader}"', 1))
    assert reader in toml.read_text()

    def maintenance() -> None:  # end location 7's read twice, revoking CONNECT before the second
        query = f"SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND usename = '{role}'"
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for revoke in (False, True):
                while (row := admin.execute(query).fetchone()) is None:
                    time.sleep(0.01)
                if revoke:
                    admin.execute(f"REVOKE CONNECT ON DATABASE {dbname} FROM PUBLIC")
                admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                while admin.execute(query).fetchone() is not None:
                    time.sleep(0.01)

    thread = threading.Thread(target=maintenance)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"GRANT CONNECT ON DATABASE {dbname} TO PUBLIC")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    [error] = summary.task_errors
    assert "permission denied" in error, error
    counts = exported, failed, pending, claimed = _counts(root)
    assert (failed, claimed) == (0, 0) and exported + pending == PARTITIONS, counts


def test_a_failed_first_run_does_not_unbind_a_task_another_worker_exported_meanwhile(
    tmp_path: Path, pg_url: str, pg_server: Any, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """Two workers' first runs at once (cron on two hosts): the first binds the task to the
    destination and holds a batch; while it reads, the second exports every other partition. The
    first then fails its batch with no file written, and forgot the task's destination though
    the other had exported 110 files there: a run with a mistyped [destination] url was then let
    through, binding the task to the wrong place. The binding must stay (the unbinding was taken
    out again: it judged by one run's summary, and a safe one needs the ledger asked atomically)."""
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url, pg_server, proxy, "csv")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE broken (yes boolean NOT NULL)")
        conn.execute("INSERT INTO broken VALUES (false)")
    _select_through(
        pg_url,
        root,
        # The first read waits until the other worker has exported and broken the source (at
        # most a minute), not a fixed 3 s that a loaded machine's whole other run outlasted.
        "BEGIN IF NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " FOR i IN 1..1200 LOOP EXIT WHEN (SELECT yes FROM broken); PERFORM pg_sleep(0.05); END LOOP;"
        " END IF; IF (SELECT yes FROM broken) THEN RAISE EXCEPTION 'broken'; END IF; RETURN loc; END",
        armed=True,
    )

    def other_worker() -> None:  # runs while the first worker's first read waits
        with psycopg.connect(pg_url, autocommit=True) as admin:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            while admin.execute(query).fetchone()[0] == 0:  # type: ignore[index]
                time.sleep(0.01)
            other.append(cli(root, "run", "--json"))
            admin.execute("UPDATE broken SET yes = true")

    other: list[Any] = []
    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["openaq"])
    finally:
        thread.join()
    assert other[0].returncode == 0, other[0].stderr
    assert summary.exported == 0 and summary.failed == 10, summary.errors[:1]
    assert _counts(root) == (PARTITIONS - 10, 10, 0, 0)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace(str(tmp_path / "out"), str(tmp_path / "typo")))
    typo = cli(root, "run")
    assert typo.returncode == 2 and "--move-destination" in typo.stderr, typo.stderr


@contextlib.contextmanager
def _readings_project(root: Path, tmp_path: Path, pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The settings of a project at ``root`` over the table ``readings`` (one row, Gent's), a
    SQLite ledger, csv files in ``tmp_path / "out"``; and a connection to the source for the rest."""
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nformat = "csv"\nbackoff = "0s"\n[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n'
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (id int, city text, at timestamptz)")
        conn.execute("INSERT INTO readings VALUES (1, 'Gent', '2024-03-01 10:00Z')")
        yield conn


def test_a_source_connection_lost_while_idle_is_opened_again_to_describe_the_next_task(
    tmp_path: Path, pg_url: str
) -> None:
    """The source's connection is terminated while it is idle (a restart, an idle timeout, a
    network blip) as the first task's batch is read on ADBC's: that task exported, then the next
    task's describe (the column types of its select.sql) was the first query on the lost
    connection, and failed that task with "database ... is unavailable ...; will retry", exit 1,
    status saying the last run failed. The lost connection is opened again and the select run
    once more."""
    root = tmp_path / "proj"
    for name, extra in (("a_slow", ", slow_for(city) AS s"), ("b_next", "")):
        (root / "tasks" / name).mkdir(parents=True)
        (root / "tasks" / name / "task.toml").write_text(
            'keys = ["city"]\npath = "{city}/{day:%Y%m%d}.{ext}"\n[time]\ncolumn = "at"\n'
        )
        (root / "tasks" / name / "select.sql").write_text(f"SELECT id, city, at{extra} FROM readings")
    with _readings_project(root, tmp_path, pg_url) as conn:
        conn.execute(
            "CREATE FUNCTION slow_for(s text) RETURNS text LANGUAGE sql AS $$ SELECT pg_sleep(1.5)::text $$"
        )
    for task in ("a_slow", "b_next"):
        assert cli(root, "mark", task, "city=Gent", "day=2024-03-01").returncode == 0
    killer = threading.Thread(target=kill_idle_while_reading, args=(pg_url, "%%LIMIT 0"))
    killer.start()
    ran = cli(root, "run", "--json")
    killer.join()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [(s["task"], s["exported"], s["task_errors"]) for s in json.loads(ran.stdout)] == [
        ("a_slow", 1, []),
        ("b_next", 1, []),
    ]


@pytest.mark.parametrize("delete", [True, False], ids=["export-then-delete", "snapshot-only"])
def test_a_source_connection_lost_while_idle_is_opened_again_for_the_next_archive_snapshot(
    tmp_path: Path, pg_url: str, delete: bool
) -> None:
    """As above, with an archive task next. With a delete.sql, its EXPLAIN (a small query, run
    once more) comes first; without one, the snapshot's SET TRANSACTION was the first statement on
    the lost connection, and the run failed with "database ... is unavailable ...; will retry".
    The connection is opened again before the snapshot starts; the rows are archived (and deleted)
    once."""
    root = tmp_path / "proj"
    for name in ("a_slow", "b_archive"):
        (root / "tasks" / name).mkdir(parents=True)
    (root / "tasks" / "a_slow" / "task.toml").write_text(
        'keys = ["city"]\npath = "{city}/{day:%Y%m%d}.{ext}"\n[time]\ncolumn = "at"\n'
    )
    (root / "tasks" / "a_slow" / "select.sql").write_text(
        "SELECT id, city, at, slow_for(city) AS s FROM readings"
    )
    (root / "tasks" / "b_archive" / "task.toml").write_text('kind = "archive"\nboundary = "midnight"\n')
    (root / "tasks" / "b_archive" / "select.sql").write_text(
        "SELECT id, city, at FROM archived WHERE at < %(export_boundary)s ORDER BY id"
    )
    if delete:
        (root / "tasks" / "b_archive" / "delete.sql").write_text(
            "DELETE FROM archived WHERE at < %(export_boundary)s"
        )
    with _readings_project(root, tmp_path, pg_url) as conn:
        conn.execute("CREATE TABLE archived (id int, city text, at timestamptz)")
        conn.execute(
            "INSERT INTO archived VALUES (1, 'Gent', '2024-03-01 10:00Z'), (2, 'Brugge', '2024-03-02 10:00Z')"
        )
        conn.execute(
            "CREATE FUNCTION slow_for(s text) RETURNS text LANGUAGE sql AS $$ SELECT pg_sleep(1.5)::text $$"
        )
    assert cli(root, "mark", "a_slow", "city=Gent", "day=2024-03-01").returncode == 0
    killer = threading.Thread(target=kill_idle_while_reading, args=(pg_url, "%%LIMIT 0"))
    killer.start()
    ran = cli(root, "run", "--json")
    killer.join()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summaries = {s["task"]: (s["exported"], s["task_errors"], s["errors"]) for s in json.loads(ran.stdout)}
    assert summaries == {"a_slow": (1, [], []), "b_archive": (1, [], [])}, summaries
    [archived] = (tmp_path / "out").rglob("b_archive*")
    text = (
        gzip.decompress(archived.read_bytes()) if archived.name.endswith(".gz") else archived.read_bytes()
    ).decode()
    assert sorted(line.split(",")[0] for line in text.splitlines()[1:]) == ["1", "2"]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM archived").fetchone() == (0 if delete else 2,)


def test_a_describe_whose_connection_is_lost_twice_names_its_task_and_is_retried(
    tmp_path: Path, pg_url: str
) -> None:
    """The source's backend is terminated while it reads the column types of the task's
    select.sql, and again when it is run once more on a new connection: the task stops with an
    error naming it and its select.sql (it said only "database ... is unavailable"), which says
    it will retry; the next run exports."""
    root = tmp_path / "proj"
    (root / "tasks" / "planned").mkdir(parents=True)
    (root / "tasks" / "planned" / "task.toml").write_text(
        'keys = ["city"]\npath = "{city}/{day:%Y%m%d}.{ext}"\n[time]\ncolumn = "at"\n'
    )
    (root / "tasks" / "planned" / "select.sql").write_text(
        "SELECT id, city, at, slow_plan() AS s FROM readings"
    )
    with _readings_project(root, tmp_path, pg_url) as conn:
        conn.execute(  # immutable, no arguments: run as each query using it is planned, LIMIT 0 too
            "CREATE FUNCTION slow_plan() RETURNS text IMMUTABLE LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(1.5); RETURN 's'; END $$"
        )
    assert cli(root, "mark", "planned", "city=Gent", "day=2024-03-01").returncode == 0
    killer = threading.Thread(target=terminate_running, args=(pg_url, "%LIMIT 0"))  # the describe
    killer.start()
    ran = cli(root, "run", "--json")
    killer.join()
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [summary] = json.loads(ran.stdout)
    [error] = summary["task_errors"]
    assert error.startswith(
        f"task planned: reading the column types of {root / 'tasks' / 'planned' / 'select.sql'} failed:"
        " database postgresql://"
    ), error
    assert error.endswith("; will retry"), error
    assert cli(root, "run").returncode == 0
