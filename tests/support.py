"""Helpers shared by the tests: build real projects, databases and read exported files back."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq

from plugins.common import service_unavailable
from sluicegate.config import Project, load_project
from sluicegate.generate import create_schema

UTC = dt.UTC
SLUICEGATE = str(Path(sys.executable).with_name("sluicegate"))

OPENAQ_SELECT = """
SELECT m.location_id, m.sensor_id AS sensors_id, l.name || '-' || m.sensor_id AS location,
       m.datetime, l.lat, l.lon, s.parameter, s.units, m.value
FROM measurements AS m
JOIN sensors AS s ON s.sensor_id = m.sensor_id
JOIN locations AS l ON l.location_id = m.location_id
"""
# MariaDB's || is OR (unless sql_mode has PIPES_AS_CONCAT): the same select with CONCAT.
OPENAQ_SELECT_MARIADB = OPENAQ_SELECT.replace(
    "l.name || '-' || m.sensor_id", "CONCAT(l.name, '-', m.sensor_id)"
)
# MariaDB's tables: DATETIME for the data's time (taken as UTC) and TIMESTAMP for the ingest
# time, so both kinds of time column are read.
MARIADB_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS locations (location_id INT PRIMARY KEY, name TEXT NOT NULL,"
    " timezone VARCHAR(64) NOT NULL, lat DOUBLE, lon DOUBLE)",
    "CREATE TABLE IF NOT EXISTS sensors (sensor_id INT PRIMARY KEY, location_id INT NOT NULL,"
    " parameter VARCHAR(32) NOT NULL, units VARCHAR(32) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS measurements (location_id INT NOT NULL, sensor_id INT NOT NULL,"
    " datetime DATETIME(6) NOT NULL, value DOUBLE, ingested_at TIMESTAMP(6) NOT NULL,"
    " PRIMARY KEY (sensor_id, datetime), KEY measurements_location_datetime_idx (location_id, datetime),"
    " KEY measurements_ingested_at_idx (ingested_at))",
)

# Column names a driver or Python's %-formatting could take for placeholders, or that close a
# quoted identifier or look qualified, or that a batch query uses itself: a source must quote
# and escape each as one name, and never take one of them for its own.
HOSTILE_NAMES = [
    "pct%d",
    "100%",
    "a%%b",
    "%s",
    "%(k)s",
    "q?",
    "x:y",
    ":k",
    'say "hi"',
    "back`tick",
    "semi;--",
    "v.1",
    # the batch queries' own aliases
    "ord",
    "k0",
    "ws",
    "we",
    "zone",
    "day",
    "p",
    "q",
]


def is_mariadb(url: str) -> bool:
    """Whether ``url`` is a MariaDB/MySQL database."""
    return url.startswith(("mariadb://", "mysql://"))


def write_project(
    root: Path,
    *,
    source: str,
    destination: str,
    fmt: str = "csv",
    boundary: str = "start",
    settle: str = "0s",
    capture: str = "trigger",
    zone: str | None = None,
    lease: str = "10m",
    backoff: str = "0s",
    extra_defaults: str = "",
    destination_extra: str = "",
    ledger: str | None = None,
    task: str = "openaq",
) -> Path:
    """Write ``sluicegate.toml`` and one OpenAQ-style task; return the project root."""
    root.mkdir(parents=True, exist_ok=True)
    ledger_line = f'url = "{ledger}"' if ledger else ""
    (root / "sluicegate.toml").write_text(
        textwrap.dedent(
            f"""
            [source]
            url = "{source}"
            [ledger]
            {ledger_line}
            [destination]
            url = "{destination}"
            {destination_extra}
            [defaults]
            format = "{fmt}"
            lease = "{lease}"
            backoff = "{backoff}"
            {extra_defaults}
            """
        )
    )
    folder = root / "tasks" / task
    folder.mkdir(parents=True, exist_ok=True)
    zone_line = f'zone = "{zone}"' if zone else 'zone_sql = "SELECT location_id, timezone FROM locations"'
    capture_block = {
        "trigger": '[capture]\nmode = "trigger"\ntable = "measurements"\nkeys = { location_id = "location_id" }\ntime = "datetime"\n',
        "scan": '[capture]\nmode = "scan"\ntable = "measurements"\nkeys = { location_id = "location_id" }\n'
        'time = "datetime"\ncursor = "ingested_at"\noverlap = "1h"\n',
        "explicit": "",
    }[capture]
    (folder / "task.toml").write_text(
        textwrap.dedent(
            f"""
            keys = ["location_id"]
            path = "records/{{format}}/locationid={{location_id}}/year={{day:%Y}}/month={{day:%m}}/location-{{location_id}}-{{day:%Y%m%d}}.{{ext}}"
            order_by = ["sensors_id"]
            [time]
            column = "datetime"
            grain = "day"
            {zone_line}
            settle = "{settle}"
            boundary = "{boundary}"
            """
        )
        + capture_block
    )
    (folder / "select.sql").write_text(OPENAQ_SELECT_MARIADB if is_mariadb(source) else OPENAQ_SELECT)
    return root


def load(root: Path, env: dict[str, str] | None = None) -> Project:
    """Load a project with an explicit (usually empty) environment."""
    return load_project(root, env or {})


class Db:
    """A tiny writer for the measurement tables, on SQLite, PostgreSQL or MariaDB."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.mariadb = is_mariadb(url)
        if self.mariadb:
            from sluicegate import mariadb_conn

            self.conn: Any = mariadb_conn.connect(url)
            for statement in MARIADB_SCHEMA:
                self.conn.execute(statement).close()
            return
        create_schema(url)
        if self.sqlite:
            self.conn: Any = sqlite3.connect(
                url[len("sqlite:///") :], isolation_level=None, timeout=30, check_same_thread=False
            )
        else:
            self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def speak(self, language: str, *, server: bool = False) -> None:
        """Have PostgreSQL write its messages in ``language`` ("en" or "de", from the translations
        Debian's postgresql ships, in the de_DE.UTF-8 locale scripts/install-system-deps.sh
        generates) to the database's next sessions; ``server``: to every new session of the
        server, its refusal of one too (a database's setting comes after that), so only on a
        server of the test's own."""
        if language == "en":
            return  # the test servers' locale is C
        where = "SYSTEM" if server else f"DATABASE {self.scalar('SELECT current_database()')}"
        try:
            self.conn.execute(f"ALTER {where} SET lc_messages = 'de_DE.UTF-8'")
        except psycopg.errors.InvalidParameterValue:
            service_unavailable("the system has no de_DE.UTF-8 locale for PostgreSQL's German messages")
        if server:
            self.conn.execute("SELECT pg_reload_conf()")

    def _p(self, query: str) -> str:
        return query.replace("%s", "?") if self.sqlite else query

    def ts(self, value: dt.datetime) -> Any:
        if self.sqlite:
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.mariadb:  # DATETIME and TIMESTAMP (session in UTC) take naive UTC
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def location(self, location_id: int, timezone: str, name: str | None = None) -> None:
        self.conn.execute(
            self._p(
                "INSERT INTO locations (location_id, name, timezone, lat, lon) VALUES (%s, %s, %s, %s, %s)"
            ),
            (location_id, name or f"Site {location_id}", timezone, 50.5 + location_id / 100, 4.25),
        )
        self.conn.execute(
            self._p("INSERT INTO sensors (sensor_id, location_id, parameter, units) VALUES (%s, %s, %s, %s)"),
            (location_id * 10, location_id, "pm25", "µg/m³"),
        )

    def insert(self, location_id: int, times: Iterable[dt.datetime], value: float = 1.5) -> int:
        rows = [
            (location_id, location_id * 10, self.ts(t), value + i / 8, self.ts(dt.datetime.now(UTC)))
            for i, t in enumerate(times)
        ]
        q = self._p(
            "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) VALUES (%s, %s, %s, %s, %s)"
        )
        if self.sqlite:
            self.conn.execute("BEGIN")
            self.conn.executemany(q, rows)
            self.conn.execute("COMMIT")
        elif self.mariadb:
            cur = self.conn.cursor()
            cur.executemany(q, rows)
            cur.close()
        else:
            with self.conn.cursor() as cur:
                cur.executemany(q, rows)
        return len(rows)

    def update_value(self, location_id: int, at: dt.datetime, value: float) -> None:
        self.conn.execute(
            self._p("UPDATE measurements SET value = %s WHERE sensor_id = %s AND datetime = %s"),
            (value, location_id * 10, self.ts(at)),
        )

    def scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.rows(query, params)[0][0]

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = list(self.conn.execute(self._p(query), params).fetchall())
        if self.mariadb:  # DATETIME values are UTC
            rows = [
                tuple(v.replace(tzinfo=UTC) if isinstance(v, dt.datetime) else v for v in r) for r in rows
            ]
        return rows


def hours(start: dt.datetime, count: int, step: dt.timedelta = dt.timedelta(hours=1)) -> list[dt.datetime]:
    """``count`` instants from ``start`` every ``step``."""
    return [start + i * step for i in range(count)]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV or CSV.gz file into dicts."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def read_parquet(path: Path) -> Any:
    """Read a Parquet file into a pyarrow Table."""
    return pq.read_table(path)


def files(folder: Path) -> list[Path]:
    """Every published file under ``folder`` (temp files and change-feed manifests excluded)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and ".sluicegate-" not in p.name
        and not {"_manifests", "_sluicegate"} & set(p.relative_to(folder).parts)
    )


def cli(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 120,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sluicegate`` command in a real process (``input_text`` on its stdin)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(root), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input_text,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sluicegate {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def typed_project(tmp_path: Path, batch_size: int, ledger: str | None = None) -> Path:
    """A task keyed on SQLite's untyped column k, its changes captured by a scan, over a table m
    holding k = 1 (row a) and k = '1' (row b) on one day: two partitions, [1,"2024-11-02"] and
    ["1","2024-11-02"], that both render the file 1/20241102.csv (``ledger``: another ledger URL)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), capture="explicit", ledger=ledger
    )
    task = root / "tasks" / "typed"
    task.mkdir()
    (task / "task.toml").write_text(
        f'keys = ["k"]\npath = "{{k}}/{{day:%Y%m%d}}.csv"\nformat = "csv"\nbatch_size = {batch_size}\n'
        '[time]\ncolumn = "t"\nzone = "UTC"\n'
        '[capture]\nmode = "scan"\ntable = "m"\nkeys = { k = "k" }\ntime = "t"\ncursor = "t"\n'
    )
    (task / "select.sql").write_text("SELECT k, t, v FROM m")
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        with conn:
            conn.execute("CREATE TABLE m (k, t TEXT, v)")
            conn.executemany(
                "INSERT INTO m VALUES (?, ?, ?)",
                [(1, "2024-11-02T10:00:00Z", "a"), ("1", "2024-11-02T11:00:00Z", "b")],
            )
    finally:
        conn.close()
    return root


def assert_one_type_twin_parked(failure: dict[str, Any], out: Path) -> None:
    """Of typed_project's two partitions, ``failure`` (a status failure) is parked: the other's file
    is intact, and the error names both partitions, the file and the CAST to write."""
    kept = "a" if failure["partition"] == '["1","2024-11-02"]' else "b"
    [written] = files(out)
    assert [row["v"] for row in read_csv(written)] == [kept]  # the exported partition's file is intact
    error = failure["error"]
    assert '[1,"2024-11-02"]' in error and '["1","2024-11-02"]' in error and "'1/20241102.csv'" in error
    assert "differ only in type" in error and "CAST(k AS TEXT) AS k" in error, error


def terminate_running(pg_url: str, like: str, times: int = 2) -> None:
    """Terminate the backend running a query ``LIKE like``, ``times`` times (the source runs a
    small query once more on a new connection after losing one); waits up to 20 s for each."""
    sql = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s"
        " AND state = 'active' AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(400):
            time.sleep(0.05)
            times -= len(conn.execute(sql, (like,)).fetchall())
            if times <= 0:
                return


def kill_idle_while_reading(pg_url: str, not_like: str) -> None:
    """Once a query calling ``slow_for`` runs (one not ``LIKE not_like``, ``%%`` for a ``%``),
    terminate every idle connection to the database: the source's, lost while it is not used."""
    reading = (
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%slow_for%%'"
        f" AND query NOT LIKE '{not_like}' AND pid <> pg_backend_pid()"
    )
    idle = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state LIKE 'idle%%'"
        " AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(300):
            time.sleep(0.05)
            if conn.execute(reading).fetchall():
                assert conn.execute(idle).fetchall()
                return
