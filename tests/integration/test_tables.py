"""Table sinks on PostgreSQL, SQLite and MariaDB: readers never see an empty or mixed table.

The aggregate of the airmax example is evaluated 100 times in a row while another connection
counts the table's rows and evaluation times in a tight loop. PostgreSQL and SQLite replace in
one DELETE + INSERT transaction (the PostgreSQL reader runs in READ COMMITTED); MariaDB builds
a copy and swaps it in with RENAME TABLE (its source and ledger are SQLite until MariaDB is a
dialect). Upserts by key and the guard against an older evaluation run on each database too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from pathlib import Path

import pytest

from airmax_support import AGGREGATE, add_raw, airmax_project, stamps, table
from sluicegate import generate_airmax, tables
from sluicegate.drivers import Context
from sluicegate.drivers import aggregate as agg
from sluicegate.exceptions import ConfigError, DataError, DestinationUnavailable
from support import load

UTC = dt.UTC
T = dt.datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
CITIES = list(generate_airmax.CITIES)
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.pg),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=BACKENDS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(source, sink): the sink is None when the table lives in the source database."""
    sqlite = f"sqlite:///{tmp_path / 'airmax.db'}"
    if request.param == "sqlite":
        return sqlite, None
    if request.param == "pg":
        return request.getfixturevalue("pg_url"), None
    return sqlite, request.getfixturevalue("mariadb_url")


def test_readers_never_see_an_empty_or_mixed_table_during_100_evaluations(
    tmp_path: Path, urls: tuple[str, str | None]
) -> None:
    source, sink = urls
    root = airmax_project(tmp_path / "proj", source, sink=sink, width="1d")
    add_raw(
        source, [(city, T - dt.timedelta(minutes=10 * i + 1), float(i)) for city in CITIES for i in range(5)]
    )
    project = load(root)
    task = project.tasks[AGGREGATE]
    assert isinstance(task, agg.Task)
    context = Context.open(project)
    reader = tables.TableDb(sink or source)
    if reader.flavor == "postgresql":  # the default, said out loud: each statement sees one snapshot
        reader.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
    query = f"SELECT count(*), count(DISTINCT evaluation_time_utc), max(evaluation_time_utc) FROM {AGGREGATE}"
    seen: set[object] = set()
    bad: list[tuple[object, ...]] = []
    polls = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal polls
        while not done.is_set():
            _, [(rows, evaluations, latest)] = reader.query(query)
            polls += 1
            seen.add(latest)
            if (rows, evaluations) != (len(CITIES), 1):
                bad.append((rows, evaluations, latest))

    try:
        assert agg.evaluate(context, task, T).state == "done"  # the table's first contents
        thread = threading.Thread(target=poll)
        thread.start()
        try:
            results = [agg.evaluate(context, task, T + dt.timedelta(seconds=k)).state for k in range(1, 101)]
        finally:
            done.set()
            thread.join()
    finally:
        context.close()
        reader.close()
    assert results == ["done"] * 100
    assert bad == [], f"a reader saw {len(bad)} bad states, e.g. {bad[:3]}"
    assert polls > 100 and len(seen) >= 10, (polls, len(seen))  # it watched many evaluations go by
    final = table(sink or source)
    assert len(final) == len(CITIES) and stamps(final) == {T + dt.timedelta(seconds=100)}


def test_an_upsert_updates_rows_by_key_and_inserts_new_ones(urls: tuple[str, str | None]) -> None:
    source, sink = urls
    url = sink or source
    generate_airmax.create_schema(url)
    key = ("city", "parameter_name", "parameter_unit")
    target = tables.TableTarget(url=url, table=AGGREGATE, mode="upsert", key=key)
    columns = [*key, "parameter_value", "num_measurements", "evaluation_time_utc"]
    with tables.TableSink(target) as sink_:
        stamp = tables.time_value(sink_.db.flavor, T)
        sink_.write(columns, [("Gent", "pm25", "ug", 1.0, 1, stamp), ("Genk", "pm25", "ug", 2.0, 2, stamp)])
        sink_.write(
            columns, [("Gent", "pm25", "ug", 10.0, 10, stamp), ("Leuven", "pm25", "ug", 3.0, 3, stamp)]
        )
    rows = [(r["city"], r["parameter_value"], r["num_measurements"]) for r in table(url)]
    assert rows == [("Genk", 2.0, 2), ("Gent", 10.0, 10), ("Leuven", 3.0, 3)]


def test_a_replace_with_an_older_stamp_is_refused(urls: tuple[str, str | None]) -> None:
    source, sink = urls
    url = sink or source
    generate_airmax.create_schema(url)
    target = tables.TableTarget(url=url, table=AGGREGATE)
    columns = ["city", "parameter_name", "parameter_unit", "parameter_value", "num_measurements",
               "evaluation_time_utc"]  # fmt: skip
    newer = T + dt.timedelta(minutes=5)
    with tables.TableSink(target) as sink_:
        flavor = sink_.db.flavor
        sink_.write(columns, [("Gent", "pm25", "ug", 1.0, 1, tables.time_value(flavor, newer))],
                    stamp=("evaluation_time_utc", newer))  # fmt: skip
        with pytest.raises(tables.Superseded, match="newer than"):
            sink_.write(columns, [("Genk", "pm25", "ug", 2.0, 2, tables.time_value(flavor, T))],
                        stamp=("evaluation_time_utc", T))  # fmt: skip
    assert [r["city"] for r in table(url)] == ["Gent"]


@pytest.mark.mariadb
def test_a_failed_swap_leaves_the_table_and_no_copy_behind(mariadb_url: str) -> None:
    """A row the copy refuses fails the write before the RENAME: the table keeps its rows."""
    generate_airmax.create_schema(mariadb_url)
    target = tables.TableTarget(url=mariadb_url, table=AGGREGATE)
    columns = ["city", "parameter_name", "parameter_unit", "parameter_value", "num_measurements",
               "evaluation_time_utc"]  # fmt: skip
    with tables.TableSink(target) as sink:
        sink.write(columns, [("Gent", "pm25", "ug", 1.0, 1, T.replace(tzinfo=None))])
        with pytest.raises(DataError):
            sink.write(columns, [("Genk", "pm25", "ug", 2.0, None, T.replace(tzinfo=None))])  # NOT NULL
        _, names = sink.db.query("SHOW TABLES")
    assert [r["city"] for r in table(mariadb_url)] == ["Gent"]
    assert sorted(n[0] for n in names) == [AGGREGATE, "raw"]


@pytest.mark.mariadb
def test_a_swap_another_writer_holds_gives_up_within_half_the_lease(mariadb_url: str) -> None:
    """Another writer of the table holding its GET_LOCK kept the swap waiting 60 s, whatever the
    claim's lease; it now waits half of it (whole seconds), names the table, and leaves the
    session's lock waits as they were for the connection's other uses."""
    generate_airmax.create_schema(mariadb_url)
    target = tables.TableTarget(url=mariadb_url, table=AGGREGATE)
    columns = ["city", "parameter_name", "parameter_unit", "parameter_value", "num_measurements",
               "evaluation_time_utc"]  # fmt: skip
    name = "sluicegate sink " + hashlib.sha1(AGGREGATE.encode()).hexdigest()[:32]
    holder = tables.TableDb(mariadb_url)
    assert holder.query("SELECT GET_LOCK(?, 0)", (name,))[1] == [(1,)]
    try:
        with tables.TableSink(target, lease=4) as sink:
            started = time.monotonic()
            with pytest.raises(DestinationUnavailable, match=f"{AGGREGATE} .*GET_LOCK.* for 2 s") as held:
                sink.write(columns, [("Gent", "pm25", "ug", 1.0, 1, T.replace(tzinfo=None))])
            waited = time.monotonic() - started
            _, [waits] = sink.db.query(
                "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.lock_wait_timeout"
            )
    finally:
        holder.close()
    assert 1.5 < waited < 10, (waited, held.value)
    assert tuple(int(w) for w in waits) == (60, 60)


def test_a_sqlite_sink_leaves_the_connections_busy_timeout_as_it_was(tmp_path: Path) -> None:
    """The write's busy timeout is bounded by half the lease; the connection's other uses (the
    table's columns, check's reads) wait the usual 60 s for another process's write lock."""
    url = f"sqlite:///{tmp_path / 'airmax.db'}"
    generate_airmax.create_schema(url)
    target = tables.TableTarget(url=url, table=AGGREGATE)
    columns = ["city", "parameter_name", "parameter_unit", "parameter_value", "num_measurements",
               "evaluation_time_utc"]  # fmt: skip
    with tables.TableSink(target, lease=4) as sink:
        sink.write(columns, [("Gent", "pm25", "ug", 1.0, 1, "2024-03-10T12:00:00Z")])
        assert sink.db.query("PRAGMA busy_timeout")[1] == [(60_000,)]


@pytest.mark.mariadb
def test_swaps_of_two_long_table_names_with_one_prefix_never_mix(mariadb_url: str) -> None:
    """The copies were named after the table's first 52 characters: two tables that share them
    shared one copy, so one swap dropped the other's copy, or swapped its rows in."""
    prefix = "current_air_quality_per_city_parameter_and_unit_over_"
    names = [prefix + "hour", prefix + "day"]
    db = tables.TableDb(mariadb_url)
    for name in names:
        db.execute(f"CREATE TABLE {name} (task VARCHAR(8) NOT NULL, n INT NOT NULL)")
    db.close()
    errors: list[Exception] = []

    def writer(name: str, tag: str) -> None:
        with tables.TableSink(tables.TableTarget(url=mariadb_url, table=name)) as sink:
            for n in range(30):
                try:
                    sink.write(["task", "n"], [(tag, n)])
                except Exception as exc:  # any error here is the defect
                    errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(name, tag)) for name, tag in zip(names, "HD", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name, tag in zip(names, "HD", strict=True):
        assert [(r["task"], r["n"]) for r in table(mariadb_url, name, order="n")] == [(tag, 29)]


@pytest.mark.mariadb
@pytest.mark.parametrize("mode", ["replace", "upsert"])
def test_groups_that_differ_only_in_case_are_two_rows_in_the_mariadb_table(
    tmp_path: Path, mariadb_url: str, mode: str
) -> None:
    """The example's MariaDB table keyed its groups case-insensitively: Gent and GENT from a
    SQLite (or PostgreSQL) select failed every evaluation ("Duplicate entry"), or with upsert
    became one row with GENT's name and Gent's mean."""
    source = f"sqlite:///{tmp_path / 'airmax.db'}"
    extra = 'mode = "upsert"\nkey = ["city", "parameter_name", "parameter_unit"]' if mode == "upsert" else ""
    root = airmax_project(tmp_path / "proj", source, sink=mariadb_url, destination_extra=extra)
    add_raw(source, [("Gent", T - dt.timedelta(minutes=5), 1.0), ("GENT", T - dt.timedelta(minutes=6), 3.0),
                     ("Gent", T - dt.timedelta(minutes=7), 5.0)])  # fmt: skip
    project = load(root)
    context = Context.open(project)
    try:
        result = agg.evaluate(context, project.tasks[AGGREGATE], T)  # type: ignore[arg-type]
    finally:
        context.close()
    assert (result.state, result.error) == ("done", None)
    rows = table(mariadb_url, order="num_measurements")
    assert [(r["city"], r["parameter_value"], r["num_measurements"]) for r in rows] == [
        ("GENT", 3.0, 1),
        ("Gent", 3.0, 2),
    ]


@pytest.mark.mariadb
def test_an_upsert_into_a_table_unique_on_a_prefix_of_its_key_is_refused(mariadb_url: str) -> None:
    """A unique index on id(3) makes ON DUPLICATE KEY UPDATE take "abcdef" and "abcxyz" for one
    row: the second would overwrite the first, so such an index is no unique key of id."""
    db = tables.TableDb(mariadb_url)
    db.execute("CREATE TABLE t (id varchar(20), v int, UNIQUE KEY (id(3)))")
    db.close()
    target = tables.TableTarget(url=mariadb_url, table="t", mode="upsert", key=("id",))
    with tables.TableSink(target) as sink, pytest.raises(ConfigError, match="no unique index on id"):
        sink.write(["id", "v"], [("abcdef", 1), ("abcxyz", 2)])
    assert [r["id"] for r in table(mariadb_url, "t", order="id")] == []


@pytest.mark.pg
def test_a_deferrable_unique_constraint_is_no_key_of_an_upsert(pg_url: str) -> None:
    """PostgreSQL's ON CONFLICT takes no deferrable constraint (nor an index not valid) for its
    arbiter: each write failed while check said the table was keyed."""
    db = tables.TableDb(pg_url)
    db.execute("CREATE TABLE t (id text, v int, UNIQUE (id) DEFERRABLE)")
    db.close()
    target = tables.TableTarget(url=pg_url, table="t", mode="upsert", key=("id",))
    with tables.TableSink(target) as sink:
        assert tables.unkeyed(target, sink.db) is not None
        with pytest.raises(ConfigError, match="no unique index on id"):
            sink.write(["id", "v"], [("a", 1)])
