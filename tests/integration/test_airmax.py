"""airmax end to end: its data set in each database, the example project through the CLI and serve."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import statistics
import time
from pathlib import Path

import httpx
import pytest
from test_service import AUTH, Server

from airmax_support import AGGREGATE, stamps, table
from sluicegate import generate_airmax, tables
from support import cli

UTC = dt.UTC
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


def _index_columns(db: tables.TableDb) -> set[str]:
    """The columns of raw that lead an index."""
    if db.flavor == "postgresql":
        return {r[0] for r in db.query("SELECT indexdef FROM pg_indexes WHERE tablename = 'raw'")[1]}
    if db.flavor == "mariadb":
        return {r[4] for r in db.query("SHOW INDEX FROM raw")[1] if r[3] == 1}
    return {r[0] for r in db.query("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'raw' AND sql IS NOT NULL")[1]}


def test_the_airmax_data_set_in_each_database(url: str) -> None:
    result = generate_airmax.generate(url, rows=3000, seed=7)
    assert result.rows == 3000
    db = tables.TableDb(url)
    try:
        _, rows = db.query(
            "SELECT message_id, city, parameter_name, parameter_value, message_send_time_utc, "
            "measurement_time_utc FROM raw"
        )
        assert len(rows) == 3000 and len({r[0] for r in rows}) == 3000  # unique message ids
        assert {r[1] for r in rows} == set(generate_airmax.CITIES) and {r[2] for r in rows} == {"pm25"}
        assert all(r[3] > 0 for r in rows)  # exp(N(0, 1))
        lags = [(tables.parse_time(r[4]) - tables.parse_time(r[5])).total_seconds() / 60 for r in rows]  # type: ignore[operator]
        assert min(lags) >= 0 and 2.0 < statistics.median(lags) < 3.6  # log-normal, median e minutes
        indexed = " ".join(_index_columns(db))
        assert "measurement_time_utc" in indexed  # the index airmax lacked
        big = 2**40  # far past airmax's mediumint (8,388,607 rows, about 58 days at 100 a minute)
        statement = f"INSERT INTO raw (id, message_id, measurement_time_utc) VALUES ({db.mark}, {db.mark}, {db.mark})"
        db.execute(statement, (big, "big", tables.time_value(db.flavor, dt.datetime.now(UTC))))
        assert db.query(f"SELECT id FROM raw WHERE message_id = {db.mark}", ("big",))[1] == [(big,)]
    finally:
        db.close()


def test_steady_generation_keeps_its_rate_whatever_the_insert_costs(url: str) -> None:
    """Each batch of 20 is due at a fixed time: with 0.5 s of extra work per batch, three batches at
    one a second end after 2.5 s (airmax slept the full interval after each batch: 3.5 s)."""

    def slow_clock() -> dt.datetime:
        time.sleep(0.5)
        return dt.datetime.now(UTC)

    generate_airmax.create_schema(url)  # outside the timing: the first batch is due at once
    result = generate_airmax.generate(url, rate_per_min=1200, duration_s=3, now=slow_clock)
    assert result.rows == 60
    assert 2.4 <= result.seconds < 3.0, result.seconds


@pytest.mark.parametrize("backend", [
    pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb),
])  # fmt: skip
def test_the_example_project_end_to_end(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    """Generate, check, ingest (one good message, one malformed), evaluate: source, ledger and table
    in one PostgreSQL or MariaDB database, as airmax had them in MariaDB."""
    db_url = str(request.getfixturevalue("pg_url" if backend == "pg" else "mariadb_url"))
    root = tmp_path / "airmax"
    cli(tmp_path, "init", str(root), "--example", "airmax", check=True)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('url = "sqlite:///airmax.db"', f'url = "{db_url}"'))
    cli(root, "generate", "--dataset", "airmax", "--db", db_url, "--rows", "5000", check=True)
    assert cli(root, "check").returncode == 0
    now = dt.datetime.now(UTC).replace(microsecond=0)
    lines = [
        {"id": "lambda-1", "date_utc": (now - dt.timedelta(minutes=1)).isoformat(), "city": "Landen",
         "parameter": "pm25", "unit": "µg/m³", "value": 1000.0},
        {"id": "lambda-2", "date_utc": "not a time", "city": "Landen", "parameter": "pm25", "unit": "µg/m³",
         "value": 1.0},
    ]  # fmt: skip
    ingested = cli(root, "ingest", "measurements", "-", input_text="\n".join(json.dumps(x) for x in lines))
    assert ingested.returncode == 1 and "1 inserted" in ingested.stdout and "lambda-2" in ingested.stderr
    ran = cli(root, "run", AGGREGATE, "--json")
    assert ran.returncode == 0, ran.stderr
    [summary] = json.loads(ran.stdout)
    [evaluation] = summary["aggregate"]
    assert evaluation["state"] == "done" and evaluation["rows"] == 8
    rows = table(db_url)
    assert len(rows) == 8 and len(stamps(rows)) == 1
    tick = dt.datetime.fromisoformat(evaluation["tick"])
    landen = next(r for r in rows if r["city"] == "Landen")
    # The row is exactly the mean of Landen's raw rows in [t - 3h, t), the ingested one included
    # when its time falls inside (the tick is the last 5-minute boundary, so it may not).
    start = tick - dt.timedelta(hours=3)
    db = tables.TableDb(db_url)
    _, raw = db.query(
        "SELECT measurement_time_utc, parameter_value FROM raw WHERE city = 'Landen'"
    )
    db.close()
    inside = [value for at, value in raw if start <= tables.parse_time(at) < tick]
    assert landen["num_measurements"] == len(inside)
    assert landen["parameter_value"] == pytest.approx(sum(inside) / len(inside))
    assert (1000.0 in inside) == (start <= now - dt.timedelta(minutes=1) < tick)
    status = json.loads(cli(root, "status", "--json", check=True).stdout)
    by_task = {s["task"]: s for s in status}
    assert by_task[AGGREGATE]["evaluations"] == 1 and by_task["measurements"]["parked"] == 1


@pytest.mark.pg
def test_serve_keeps_evaluating_the_aggregate(tmp_path: Path, pg_url: str) -> None:
    root = tmp_path / "airmax"
    cli(tmp_path, "init", str(root), "--example", "airmax", check=True)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('url = "sqlite:///airmax.db"', f'url = "{pg_url}"'))
    task = root / "tasks" / AGGREGATE / "task.toml"
    task.write_text(task.read_text().replace('every = "5m"', 'every = "2s"'))
    generate_airmax.generate(pg_url, rows=500)
    server = Server(root)
    try:
        deadline = time.monotonic() + 40
        seen: set[object] = set()
        while time.monotonic() < deadline and len(seen) < 2:
            seen |= stamps(table(pg_url))
            time.sleep(0.5)
        assert len(seen) >= 2, f"serve evaluated {len(seen)} tick(s)"
        counts = httpx.get(f"{server.url}/tasks/{AGGREGATE}", headers=AUTH).json()["counts"]
        assert counts["kind"] == "aggregate" and counts["evaluations"] >= 2 and counts["failed"] == 0
    finally:
        server.stop()


def test_generate_airmax_sends_rows_at_the_rate_given_and_refuses_a_rate_that_is_none(tmp_path: Path) -> None:
    """docs/cli.md: `--rows N` sends as if at `--rate` (default 100/min); the command refused
    `--rate` beside `--rows` ("--rate needs --duration"). A rate no clock keeps (inf/min, or one so
    slow that N rows reach back before the year 1) ended in a traceback (ZeroDivisionError,
    OverflowError), for the openaq data set's --rate too."""
    db = f"sqlite:///{tmp_path / 'airmax.db'}"
    done = cli(tmp_path, "generate", "--dataset", "airmax", "--db", db, "--rows", "5", "--rate", "1/min")
    assert done.returncode == 0, done.stderr
    sent = sorted(tables.parse_time(r["message_send_time_utc"]) for r in table(db, "raw", "id"))  # type: ignore[type-var]
    gaps = {b - a for a, b in itertools.pairwise(sent)}  # type: ignore[operator]
    assert gaps == {dt.timedelta(minutes=1)}, gaps
    for dataset, args in (
        ("airmax", ["--rate", "inf/min", "--duration", "1s"]),
        ("airmax", ["--rate", "nan/min", "--rows", "3"]),
        ("airmax", ["--rate", "1e-300/min", "--rows", "5"]),
        ("openaq", ["--rate", "inf/min", "--duration", "1s"]),
    ):
        refused = cli(tmp_path, "generate", "--dataset", dataset, "--db", db, *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, (args, refused.stderr)
        assert refused.stderr.startswith("sluicegate: error: ") and "rate" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    # --locations is the openaq data set's: airmax ran with its eight cities, saying nothing
    ignored = cli(tmp_path, "generate", "--dataset", "airmax", "--db", db, "--rows", "3", "--locations", "5")
    assert ignored.returncode == 2 and "--locations" in ignored.stderr, ignored.stderr


def test_steady_generation_at_a_rate_the_database_cannot_keep_ends_at_its_duration(tmp_path: Path) -> None:
    """The batches were counted from the rate (duration / interval), not timed: at a rate faster
    than the inserts, `--duration 1s` went on until every batch was in (at 10**9 a minute, some
    800,000 batches: for ever)."""
    db = f"sqlite:///{tmp_path / 'airmax.db'}"
    started = time.monotonic()
    done = cli(tmp_path, "generate", "--dataset", "airmax", "--db", db, "--rate", "1e9/min", "--duration",
               "1s", timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15
