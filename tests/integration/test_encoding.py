"""Every value is encoded the same way on every read path, and a partition's bytes are its own.

The read paths: SQLite rows (Python csv / pyarrow); PostgreSQL with the ADBC driver (Arrow
batches, CSV by Arrow's writer, Parquet by a cast); PostgreSQL without it (CSV by the server's
``COPY``, Parquet from psycopg rows). The PostgreSQL tests run each type on each path against
the same expected text and values, written out here, so the paths agree with each other
because they agree with the docs (docs/tasks.md, Formats).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import io
import json
import sqlite3
import struct
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from sluicegate import engine, operations
from sluicegate.formats import csv as csv_format
from sluicegate.formats.csv import CsvWriter
from sluicegate.options import RunOptions
from sluicegate.sources import Column, pg_query, times
from sluicegate.sources import adbc as adbc_source
from sluicegate.sources import arrow as arrow_source
from sluicegate.sources import postgres as pg_source
from support import HOSTILE_NAMES, Db, cli, files, load

UTC = dt.UTC
ST_JOHNS = "America/St_Johns"  # -03:30 / -02:30, and -03:30:52 (local mean time) before 1935
DAY = dt.date(2024, 11, 2)  # a whole day at -02:30 (clocks go back on 2024-11-03)
NOON = dt.datetime(2024, 11, 2, 12, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def _project(
    root: Path,
    source: str,
    select: str,
    fmt: str,
    *,
    zone: str = ST_JOHNS,
    extra: str = "",
    ledger: bool = True,
) -> Path:
    """A project with one task ``typed``: key ``k``, local days of ``t`` in ``zone``."""
    (root / "tasks" / "typed").mkdir(parents=True)
    ledger_line = 'url = "sqlite:///ledger.db"' if ledger else ""
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{source}"\n[ledger]\n{ledger_line}\n[destination]\nurl = "out"\n'
        f'[defaults]\nformat = "{fmt}"\nbackoff = "0s"\n'
    )
    (root / "tasks/typed/select.sql").write_text(select)
    (root / "tasks/typed/task.toml").write_text(
        f'keys = ["k"]\npath = "{{k}}/{{day:%Y%m%d}}.{{ext}}"\n{extra}[time]\ncolumn = "t"\nzone = "{zone}"\n'
    )
    return root


def _export(root: Path, *partitions: tuple[int, dt.date]) -> None:
    """Mark ``(k, day)`` partitions and export them in one run (one batch)."""
    project = load(root)
    for k, day in partitions:
        operations.mark(project, "typed", {"k": str(k), "day": day.isoformat()})
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary.errors
    assert summary.exported == len(partitions)


def _one_row_per_key(pg_url: str, keys: range, setting: str) -> None:
    """Table ``m (k, t)``: one row per key at NOON, in a database whose default ``setting``
    (``name = value``) differs from what a session would otherwise see."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        database = sql.Identifier(conn.info.dbname)
        conn.execute(sql.SQL("ALTER DATABASE {} SET " + setting).format(database))
        conn.execute("CREATE TABLE m (k int, t timestamptz)")
        conn.execute(
            "INSERT INTO m SELECT k, %s FROM generate_series(%s::int, %s::int) AS k",
            (NOON, keys.start, keys.stop - 1),
        )


def _mark(root: Path, keys: range) -> None:
    """Mark partition ``(k, DAY)`` of each key changed, in key order."""
    project = load(root)
    for k in keys:
        operations.mark(project, "typed", {"k": str(k), "day": DAY.isoformat()})


def _file(root: Path, k: int, day: dt.date, fmt: str) -> Path:
    return root / "out" / str(k) / f"{day:%Y%m%d}.{fmt}"


def _csv_rows(path: Path) -> list[list[str]]:
    """The records of a CSV file, header first, read by a strict RFC 4180 reader."""
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""), strict=True))


def _use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pick the PostgreSQL read path: "arrow" (ADBC) or "copy"/"rows" (no ADBC)."""
    if path == "arrow":
        assert arrow_source.available(), "the ADBC driver (the `fast` extra) is needed for the Arrow path"
        return
    monkeypatch.setattr(arrow_source, "available", lambda: False)
    monkeypatch.setattr(pg_source, "arrow_available", lambda: False)


def _single(value: str) -> float:
    """A float as PostgreSQL's ``real`` holds it, widened exactly to a double."""
    return float(struct.unpack("f", struct.pack("f", float(value)))[0])


def _local(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# --------------------------------------------------------------------------- PostgreSQL types

# name: (type, values as PostgreSQL input text, CSV text, Parquet type, Parquet values)
TYPES: dict[str, tuple[str, list[str | None], list[str], str, list[Any]]] = {
    "smallint": ("smallint", ["-32768", "0", "32767", None], ["-32768", "0", "32767", ""], "int64",
                 [-32768, 0, 32767, None]),
    "integer": ("integer", ["-2147483648", "2147483647", None], ["-2147483648", "2147483647", ""], "int64",
                [-2147483648, 2147483647, None]),
    "bigint": ("bigint", ["-9223372036854775808", "9223372036854775807", None],
               ["-9223372036854775808", "9223372036854775807", ""], "int64",
               [-9223372036854775808, 9223372036854775807, None]),
    "real": (
        "real",
        ["0.1", "1234567", "123456", "1e-05", "0.00015", "-0", "NaN", "Infinity", "-Infinity", "3.4028235e+38",
         "1.5e-07", None],
        ["0.1", "1.234567e+06", "123456", "1e-05", "0.00015", "-0", "NaN", "Infinity", "-Infinity",
         "3.4028235e+38", "1.5e-07", ""],
        "double",
        [_single(v) for v in ("0.1", "1234567", "123456", "1e-05", "0.00015", "-0", "NaN", "Infinity",
                              "-Infinity", "3.4028235e+38", "1.5e-07")] + [None],
    ),
    "double": (
        "double precision",
        ["0.1", "1e-05", "1.5e-06", "1e-07", "0.0001", "12345678901", "123456789012.5", "1e+15",
         "1000000000000000.5", "1.5e+300", "5e-324", "NaN", "Infinity", "-Infinity", "-0", "1e+16", "3",
         "-8.814e+21", None],
        # PostgreSQL's own text: an exponent below 1e-4 and from 1e15 on, and for -8.814e+21 (which
        # lies on the boundary between two doubles) one more digit than the shortest.
        ["0.1", "1e-05", "1.5e-06", "1e-07", "0.0001", "12345678901", "123456789012.5", "1e+15",
         "1.0000000000000005e+15", "1.5e+300", "5e-324", "NaN", "Infinity", "-Infinity", "-0", "1e+16", "3",
         "-8.814000000000001e+21", ""],
        "double",
        [float(v) for v in ("0.1", "1e-05", "1.5e-06", "1e-07", "0.0001", "12345678901", "123456789012.5",
                            "1e+15", "1000000000000000.5", "1.5e+300", "5e-324", "NaN", "Infinity",
                            "-Infinity", "-0", "1e+16", "3", "-8.814e+21")] + [None],
    ),
    "numeric_10_2": ("numeric(10, 2)", ["1.5", "-0.01", "0", None], ["1.50", "-0.01", "0.00", ""],
                     "decimal128(10, 2)",
                     [decimal.Decimal("1.50"), decimal.Decimal("-0.01"), decimal.Decimal("0.00"), None]),
    "numeric": (
        "numeric",
        ["0.0000001", "123456789012345678901234567890.123", "-1.10", "NaN", None],
        ["0.0000001", "123456789012345678901234567890.123", "-1.10", "NaN", ""],
        "string",
        ["0.0000001", "123456789012345678901234567890.123", "-1.10", "NaN", None],
    ),
    "text": (
        "text",
        ["plain", "a,b", 'quote"d', "line1\nline2", "line1\rline2", "crlf\r\n", "", "ünïcödé €", None],
        ["plain", "a,b", 'quote"d', "line1\nline2", "line1\rline2", "crlf\r\n", "", "ünïcödé €", ""],
        "string",
        ["plain", "a,b", 'quote"d', "line1\nline2", "line1\rline2", "crlf\r\n", "", "ünïcödé €", None],
    ),
    "varchar": ("varchar(20)", ["ab", "x y", None], ["ab", "x y", ""], "string", ["ab", "x y", None]),
    "char": ("char(5)", ["ab", None], ["ab   ", ""], "string", ["ab   ", None]),
    "timestamptz": (
        "timestamptz",
        # In the partition's window; with a fraction; outside it, at another offset (defect 9);
        # in 1890, at local mean time, an offset with seconds.
        ["2024-11-02 12:00:00+00", "2024-11-02 12:00:00.5+00", "2024-12-25 12:00:00+00", "1890-01-01 12:00:00+00",
         None],
        ["2024-11-02T09:30:00-02:30", "2024-11-02T09:30:00.500000-02:30", "2024-12-25T08:30:00-03:30",
         "1890-01-01T08:29:08-03:30:52", ""],
        f"timestamp[us, tz={ST_JOHNS}]",
        [_local(t) for t in ("2024-11-02T12:00:00+00:00", "2024-11-02T12:00:00.5+00:00",
                             "2024-12-25T12:00:00+00:00", "1890-01-01T12:00:00+00:00")] + [None],
    ),
    "timestamp": (
        "timestamp",
        ["2024-01-01 01:00:00", "2024-01-01 01:00:00.5", "1969-12-31 23:59:59.25", None],
        ["2024-01-01T01:00:00", "2024-01-01T01:00:00.500000", "1969-12-31T23:59:59.250000", ""],
        "timestamp[us]",
        [dt.datetime(2024, 1, 1, 1), dt.datetime(2024, 1, 1, 1, 0, 0, 500000),
         dt.datetime(1969, 12, 31, 23, 59, 59, 250000), None],
    ),
    "date": ("date", ["2024-05-03", "0001-01-01", None], ["2024-05-03", "0001-01-01", ""], "date32[day]",
             [dt.date(2024, 5, 3), dt.date(1, 1, 1), None]),
    "boolean": ("boolean", ["t", "f", None], ["true", "false", ""], "bool", [True, False, None]),
    "json": (
        "json",
        ['{"b": 1, "a": [1,2]}', "null", '"x,y"', None],
        ['{"b": 1, "a": [1,2]}', "null", '"x,y"', ""],
        "string",
        ['{"b": 1, "a": [1,2]}', "null", '"x,y"', None],
    ),
    "jsonb": (
        "jsonb",
        ['{"b": 1, "a": [1,2]}', "null", None],
        ['{"a": [1, 2], "b": 1}', "null", ""],
        "string",
        ['{"a": [1, 2], "b": 1}', "null", None],
    ),
    "uuid": (
        "uuid",
        ["A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", None],
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""],
        "string",
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None],
    ),
    "bytea": ("bytea", ["\\x00ff10", "\\x", None], ["\\x00ff10", "\\x", ""], "binary", [b"\x00\xff\x10", b"", None]),
}  # fmt: skip


@pytest.fixture(scope="module")
def typed_db(pg_server: Any) -> Iterator[str]:
    """One database with a table ``typed_<name>(k, t, v)`` per entry of TYPES, rows a minute apart."""
    dbname = f"test_{uuid.uuid4().hex}"
    admin = pg_server.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url: str = pg_server.url(dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        for name, (pg_type, values, *_) in TYPES.items():
            table = sql.Identifier(f"typed_{name}")
            conn.execute(
                sql.SQL("CREATE TABLE {} (k int, t timestamptz, v {})").format(table, sql.SQL(pg_type))
            )
            for i, value in enumerate(values):
                conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (1, %s, %s::{})").format(table, sql.SQL(pg_type)),
                    (NOON + dt.timedelta(minutes=i), value),
                )
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.mark.parametrize("path", ["arrow", "copy"])
@pytest.mark.parametrize("name", list(TYPES))
def test_each_postgresql_type_has_one_csv_text_on_every_path(
    name: str, path: str, typed_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defects 3, 5, 9, 10: the CSV text of each type is the documented one with and without ADBC."""
    _use_path(path, monkeypatch)
    root = _project(tmp_path, typed_db, f"SELECT k, t, v FROM typed_{name}", "csv")
    _export(root, (1, DAY))
    header, *rows = _csv_rows(_file(root, 1, DAY, "csv"))
    assert header == ["k", "t", "v"]
    assert [row[2] for row in rows] == TYPES[name][2]


@pytest.mark.parametrize("path", ["arrow", "rows"])
@pytest.mark.parametrize("name", list(TYPES))
def test_each_postgresql_type_has_one_parquet_type_and_value_on_every_path(
    name: str, path: str, typed_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 5: the same Parquet schema and values with and without ADBC (reals widened exactly)."""
    _use_path(path, monkeypatch)
    root = _project(tmp_path, typed_db, f"SELECT k, t, v FROM typed_{name}", "parquet")
    _export(root, (1, DAY))
    table = pq.read_table(_file(root, 1, DAY, "parquet"))
    assert str(table.schema.field("v").type) == TYPES[name][3]
    assert str(table.schema.field("t").type) == f"timestamp[us, tz={ST_JOHNS}]"
    got, expected = table.column("v").to_pylist(), TYPES[name][4]
    if isinstance(expected[0], float):  # NaN and -0.0 compare by their repr
        got, expected = [repr(v) for v in got], [repr(v) for v in expected]
    assert got == expected


# --------------------------------------------------------------------------- batch independence, offsets


def test_a_partition_has_the_same_bytes_whatever_it_is_exported_with(tmp_path: Path, pg_url: str) -> None:
    """Defect 8: whole seconds stay whole when another partition of the batch has a fraction."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (k int, t timestamptz, u timestamp, v double precision)")
        for k, fraction in ((1, 0), (2, 250000)):
            for i in range(3):
                when = NOON + dt.timedelta(hours=i, microseconds=fraction)
                conn.execute("INSERT INTO m VALUES (%s, %s, %s, %s)", (k, when, when.replace(tzinfo=None), i))
    select = "SELECT k, t, u, v FROM m"
    together = _project(tmp_path / "together", pg_url, select, "csv")
    _export(together, (1, DAY), (2, DAY))
    alone = _project(tmp_path / "alone", pg_url, select, "csv")
    _export(alone, (1, DAY))
    data = _file(alone, 1, DAY, "csv").read_bytes()
    assert _file(together, 1, DAY, "csv").read_bytes() == data
    assert b'"2024-11-02T09:30:00-02:30","2024-11-02T12:00:00",0\n' in data
    assert b'"2024-11-02T09:30:00.250000-02:30","2024-11-02T12:00:00.250000",0\n' in (
        _file(together, 2, DAY, "csv").read_bytes()
    )


def test_parquet_partitions_of_one_batch_keep_their_zone_types_and_own_errors(
    tmp_path: Path, pg_url: str
) -> None:
    """The Arrow path casts a batch once per zone: each file still has its partition's zone and
    the task's types, its bytes are those it has when exported alone, and a value that does not
    fit its Parquet type fails that partition alone."""
    assert arrow_source.available(), "the ADBC driver (the `fast` extra) is needed for the Arrow path"
    zones = {1: ST_JOHNS, 2: "Asia/Tokyo", 3: "UTC"}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE zm (k int, t timestamptz, d numeric(6,2))")
        conn.execute("CREATE TABLE zm_zones (k int, zone text)")
        for k, zone in zones.items():
            conn.execute("INSERT INTO zm_zones VALUES (%s, %s)", (k, zone))
            for i in range(3):
                value = "NaN" if k == 3 and i == 1 else f"{k}.{i}5"
                conn.execute(
                    "INSERT INTO zm VALUES (%s, %s, %s::numeric)", (k, NOON + dt.timedelta(hours=i), value)
                )
    roots = {}
    for name in ("together", "alone"):
        root = roots[name] = _project(tmp_path / name, pg_url, "SELECT k, t, d FROM zm", "parquet")
        (root / "tasks/typed/task.toml").write_text(
            'keys = ["k"]\npath = "{k}/{day:%Y%m%d}.{ext}"\n'
            '[time]\ncolumn = "t"\nzone_sql = "SELECT k, zone FROM zm_zones"\n'
        )
    for k in (1, 2, 3):
        operations.mark(load(roots["together"]), "typed", {"k": str(k), "day": DAY.isoformat()})
    [summary] = engine.run(load(roots["together"]))
    assert (summary.exported, summary.failed) == (2, 1), summary.errors
    [error] = summary.errors
    assert error.startswith(
        "[3,\"2024-11-02\"]: column 'd' could not be written as Parquet decimal128(6, 2): "
    )
    assert "'NaN' is not a valid decimal128" in error and "cast it in select.sql" in error
    assert not _file(roots["together"], 3, DAY, "parquet").exists()
    for k in (1, 2):
        table = pq.read_table(_file(roots["together"], k, DAY, "parquet"))
        assert str(table.schema) == str(
            pa.schema([("k", pa.int64()), ("t", pa.timestamp("us", tz=zones[k])), ("d", pa.decimal128(6, 2))])
        )
        assert table.column("t").to_pylist() == [
            (NOON + dt.timedelta(hours=i)).astimezone(zoneinfo.ZoneInfo(zones[k])) for i in range(3)
        ]
        assert table.column("d").to_pylist() == [decimal.Decimal(f"{k}.{i}5") for i in range(3)]
    _export(roots["alone"], (2, DAY))
    assert (
        _file(roots["alone"], 2, DAY, "parquet").read_bytes()
        == _file(roots["together"], 2, DAY, "parquet").read_bytes()
    )


@pytest.mark.parametrize("path", ["arrow", "copy"])
def test_every_timestamptz_value_takes_its_own_offset(
    path: str, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 9: in a second timestamptz column reaching other seasons and centuries, and on the day clocks
    go back, each value is written with the offset of its own instant, not its partition's."""
    _use_path(path, monkeypatch)
    tz = zoneinfo.ZoneInfo(ST_JOHNS)
    change = dt.date(2024, 11, 3)  # 25 hours: clocks go back at 02:00 local (-02:30 -> -03:30)
    others = [  # around the change, at both ends of its 15-minute bin, and far away
        dt.datetime(2025, 11, 2, 5, 41, 14, tzinfo=UTC),  # 02:11:14-03:30, one year on
        dt.datetime(2024, 11, 3, 4, 29, 59, 999999, tzinfo=UTC),
        dt.datetime(2024, 11, 3, 4, 30, tzinfo=UTC),
        dt.datetime(2024, 3, 10, 5, 29, 59, tzinfo=UTC),
        dt.datetime(2024, 3, 10, 5, 30, tzinfo=UTC),
        dt.datetime(1890, 6, 1, tzinfo=UTC),
        dt.datetime(2100, 7, 1, tzinfo=UTC),
    ]
    times = {}
    for day in (DAY, change):
        start = dt.datetime.combine(day, dt.time(), tz).astimezone(UTC)
        times[day] = [start + dt.timedelta(minutes=7 * i) for i in range(23 * 60 // 7)]
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE m (k int, t timestamptz, other timestamptz)")
        for day in (DAY, change):
            cur.executemany(
                "INSERT INTO m VALUES (1, %s, %s)",
                [(t, others[i % len(others)]) for i, t in enumerate(times[day])],
            )
    root = _project(tmp_path, pg_url, "SELECT k, t, other FROM m", "csv")
    _export(root, (1, DAY), (1, change))
    for day in (DAY, change):
        rows = _csv_rows(_file(root, 1, day, "csv"))[1:]
        assert rows[0][2][:19] == "2025-11-02T02:11:14"
        assert rows[0][2][19:] == "-03:30"  # not the partition's -02:30
        assert [row[1] for row in rows] == [t.astimezone(tz).isoformat() for t in times[day]]
        expected = [others[i % len(others)].astimezone(tz).isoformat() for i in range(len(rows))]
        assert [row[2] for row in rows] == expected


# --------------------------------------------------------------------------- SQLite


def _sqlite(path: Path, rows: list[tuple[Any, ...]], columns: str = "k, t, v") -> str:
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE m ({columns})")
    conn.executemany(f"INSERT INTO m VALUES ({', '.join('?' * len(rows[0]))})", rows)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_sqlite_csv_quotes_every_line_break(tmp_path: Path, fmt: str) -> None:
    """Defect 3: a lone CR in a text value is quoted like LF and CRLF, so the record stays whole."""
    values = ["line1\rline2", "line1\nline2", "crlf\r\n", "plain"]
    url = _sqlite(tmp_path / "s.db", [(1, f"2024-11-02T12:0{i}:00Z", v) for i, v in enumerate(values)])
    root = _project(tmp_path / "proj", url, "SELECT k, t, v FROM m", fmt, ledger=False)
    _export(root, (1, DAY))
    path = _file(root, 1, DAY, fmt)
    if fmt == "csv":
        data = path.read_bytes()
        assert b',"line1\rline2"\n' in data and b',"line1\nline2"\n' in data and b",plain\n" in data
        records = _csv_rows(path)
    else:
        records = list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode(), newline="")))
    assert [r[2] for r in records[1:]] == values


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_sqlite_csv_tells_an_empty_string_from_null(tmp_path: Path, fmt: str) -> None:
    """An empty string is ``""`` and NULL an empty field, as on PostgreSQL; both were an empty
    field, so a reader could not tell "no value" from "an empty value"."""
    values = ["", None, "x", ""]
    rows = [(1, f"2024-11-02T12:0{i}:00Z", v, v) for i, v in enumerate(values)]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, v TEXT, n INTEGER")
    root = _project(tmp_path / "proj", url, "SELECT k, t, v, n FROM m", fmt, ledger=False)
    _export(root, (1, DAY))
    path = _file(root, 1, DAY, fmt)
    data = gzip.decompress(path.read_bytes()) if fmt == "csv.gz" else path.read_bytes()
    lines = data.decode().splitlines()[1:]
    assert [line.split(",", 2)[2] for line in lines] == ['"",""', ",", "x,x", '"",""']


def test_sqlite_csv_writes_an_empty_timestamp_text_as_an_empty_string_not_null(tmp_path: Path) -> None:
    """A column declared ``timestamp`` in [columns] is written as SQLite stores its text: an empty
    string there was still an empty field, read as NULL, where every other column's is ``""``."""
    rows = [(1, "2024-11-02T12:00:00Z", "", None), (1, "2024-11-02T12:01:00Z", None, "")]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, c, d")
    extra = '[columns]\nc = "timestamp"\nd = "timestamp"\n'
    root = _project(tmp_path / "proj", url, "SELECT k, t, c, d FROM m", "csv", extra=extra, ledger=False)
    _export(root, (1, DAY))
    lines = _file(root, 1, DAY, "csv").read_bytes().decode().splitlines()[1:]
    assert [line.split(",", 2)[2] for line in lines] == ['"",', ',""']


def test_sqlite_parquet_files_of_a_task_share_one_schema(tmp_path: Path) -> None:
    """Defect 11: a column that is NULL in one partition keeps the task's type there, so the folder reads as one
    dataset; a column that is NULL everywhere is text."""
    rows = [(1, "2024-11-02T12:00:00Z", 1.5, "a", None), (2, "2024-11-02T12:00:00Z", None, None, None)]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, v, name, empty")
    root = _project(tmp_path / "proj", url, "SELECT k, t, v, name, empty FROM m", "parquet", ledger=False)
    _export(root, (1, DAY), (2, DAY))
    schemas = {str(pq.read_schema(_file(root, k, DAY, "parquet"))) for k in (1, 2)}
    assert len(schemas) == 1
    schema = pq.read_schema(_file(root, 2, DAY, "parquet"))
    assert [str(f.type) for f in schema] == [
        "int64",
        f"timestamp[us, tz={ST_JOHNS}]",
        "double",
        "string",
        "string",
    ]
    table = pads.dataset(root / "out", format="parquet").to_table()
    assert sorted(table.column("v").to_pylist(), key=str) == [1.5, None]


def test_sqlite_times_within_one_millisecond_keep_their_order_whatever_the_insert_order(
    tmp_path: Path,
) -> None:
    """julianday() rounds to the millisecond, and the rows were ordered by it alone: times less
    than a millisecond apart came in the order SQLite read them, so the same rows inserted in
    another order gave another file (``.0002`` before ``.0001``). Now they come in their text's
    order (the times' order, in one form) whatever the insert order."""
    times = [
        "2024-11-02T12:00:00.000100Z",
        "2024-11-02T12:00:00.000150Z",
        "2024-11-02T12:00:00.000200Z",
        "2024-11-02T12:00:00.000999Z",
        "2024-11-02T12:00:01.000400Z",
        "2024-11-02T12:00:00.999600Z",
    ]
    files = []
    for i, order in enumerate((times, times[::-1])):
        url = _sqlite(tmp_path / f"s{i}.db", [(1, t, 5) for t in order])
        root = _project(tmp_path / f"p{i}", url, "SELECT k, t, v FROM m", "csv", zone="UTC", ledger=False)
        _export(root, (1, DAY))
        files.append(_file(root, 1, DAY, "csv").read_bytes())
    assert files[0] == files[1]
    assert [r[1] for r in _csv_rows(_file(root, 1, DAY, "csv"))[1:]] == [
        "2024-11-02T12:00:00.000100+00:00",
        "2024-11-02T12:00:00.000150+00:00",
        "2024-11-02T12:00:00.000200+00:00",
        "2024-11-02T12:00:00.000999+00:00",
        "2024-11-02T12:00:00.999600+00:00",
        "2024-11-02T12:00:01.000400+00:00",
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_sqlite_numbers_equal_only_as_numbers_have_one_order_whatever_the_insert_order(
    tmp_path: Path, fmt: str
) -> None:
    """A SQLite column without a type keeps 1 and 1.0, 0, 0.0 and -0.0 apart (as does an
    expression in select.sql), but they sort as ties, and came in the order SQLite read them:
    the same rows inserted in another order gave another file (JSON ``1`` and ``1.0``, CSV
    ``0`` and ``-0``). Now an integer comes before a real, and 0.0 before -0.0."""
    values = [1.0, 1, -0.0, 0.0, 0, 0.0]
    files = []
    for i, order in enumerate((values, values[::-1])):
        url = _sqlite(tmp_path / f"s{i}.db", [(1, "2024-11-02T12:00:00Z", v) for v in order])
        root = _project(tmp_path / f"p{i}", url, "SELECT k, t, v FROM m", fmt, zone="UTC", ledger=False)
        _export(root, (1, DAY))
        files.append(_file(root, 1, DAY, fmt).read_bytes())
    assert files[0] == files[1]
    if fmt == "jsonl":
        assert [json.loads(line)["v"] for line in files[0].splitlines()] == [0, 0.0, 0.0, -0.0, 1, 1.0]
        assert [line.split(b'"v":')[1] for line in files[0].splitlines()] == [
            b"0}", b"0.0}", b"0.0}", b"-0.0}", b"1}", b"1.0}"
        ]


def test_sqlite_columns_pin_kinds_and_blobs_are_hex_or_binary(tmp_path: Path) -> None:
    """Defect 11: ``[columns]`` fixes a kind the first value would get wrong; BLOBs are ``\\x`` hex in CSV and
    binary in Parquet; a boolean kind writes 0/1 as false/true."""
    rows = [
        (1, "2024-11-02T12:00:00Z", 2, b"\x00\xffA", 1),
        (1, "2024-11-02T12:01:00Z", 2.5, None, 0),
        # Text in a boolean column is no boolean: written as stored (it was "true", whatever it said).
        (1, "2024-11-02T12:02:00Z", 3, None, "false"),
        (1, "2024-11-02T12:03:00Z", 4, None, None),
    ]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, v, b, flag")
    pins = '[columns]\nv = "float"\nflag = "bool"\n'
    select = "SELECT k, t, v, b, flag FROM m"
    csv_root = _project(tmp_path / "csv", url, select, "csv", extra=pins)
    _export(csv_root, (1, DAY))
    assert _csv_rows(_file(csv_root, 1, DAY, "csv"))[1:] == [
        ["1", "2024-11-02T09:30:00-02:30", "2", "\\x00ff41", "true"],
        ["1", "2024-11-02T09:31:00-02:30", "2.5", "", "false"],
        ["1", "2024-11-02T09:32:00-02:30", "3", "", "false"],
        ["1", "2024-11-02T09:33:00-02:30", "4", "", ""],
    ]
    # Each project has a ledger of its own: three projects exporting task typed to three
    # destinations from one ledger would take each other's partitions (run refuses that).
    with sqlite3.connect(tmp_path / "s.db") as db:  # Parquet refuses the text: keep its rows boolean
        db.execute("DELETE FROM m WHERE flag = 'false'")
    pq_root = _project(tmp_path / "pq", url, select, "parquet", extra=pins)
    _export(pq_root, (1, DAY))
    table = pq.read_table(_file(pq_root, 1, DAY, "parquet"))
    assert [str(f.type) for f in table.schema][2:] == ["double", "binary", "bool"]
    assert table.column("b").to_pylist() == [b"\x00\xffA", None, None]
    assert table.column("flag").to_pylist() == [True, False, None]
    # Without the pin the first value (an integer) makes the column int64, and 2.5 does not fit.
    bare = _project(tmp_path / "bare", url, select, "parquet")
    operations.mark(load(bare), "typed", {"k": "1", "day": DAY.isoformat()})
    [summary] = engine.run(load(bare))
    assert summary.failed == 1
    assert "column 'v' (int) could not be encoded as Parquet" in summary.errors[0]
    assert "[columns]" in summary.errors[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
@pytest.mark.parametrize(
    ("value", "shown"), [(1700000000, "1700000000 (int)"), (b"\x00", "b'\\x00' (bytes)"), (2.5, "2.5 (float)")]
)
def test_sqlite_time_column_holding_no_time_fails_its_partition_by_name(
    tmp_path: Path, fmt: str, value: Any, shown: str
) -> None:
    """SQLite columns take any type. A number in a column of kind timestamptz was written into
    CSV as it was, and Parquet took it for microseconds since 1970 (1969-12-31 in the file);
    a BLOB became Python's ``b'\\x00'`` in CSV (JSON lines wrote the number, the BLOB as base64).
    Now that partition fails, naming the column and the value; the other is exported."""
    rows = [(1, "2024-11-02T12:00:00Z", value), (2, "2024-11-02T12:00:00Z", "2024-01-01T00:00:00Z")]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, u")
    root = _project(tmp_path / "p", url, "SELECT k, t, u FROM m", fmt, extra='[columns]\nu = "timestamptz"\n', ledger=False)
    project = load(root)
    for k in (1, 2):
        operations.mark(project, "typed", {"k": str(k), "day": DAY.isoformat()})
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (1, 1), summary.errors
    assert f"column 'u' holds {shown}, not a time; store times as ISO 8601 text" in summary.errors[0]
    assert summary.errors[0].startswith('[1,"2024-11-02"]')
    if fmt == "csv":
        assert _csv_rows(_file(root, 2, DAY, fmt))[1][2] == "2023-12-31T20:30:00-03:30"
    elif fmt == "jsonl":
        assert json.loads(_file(root, 2, DAY, fmt).read_text())["u"] == "2023-12-31T20:30:00-03:30"
    else:
        assert pq.read_table(_file(root, 2, DAY, fmt)).column("u").to_pylist() == [
            dt.datetime(2024, 1, 1, tzinfo=UTC).astimezone(zoneinfo.ZoneInfo(ST_JOHNS))
        ]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet", "jsonl"])
@pytest.mark.parametrize(("value", "shown"), [(19000, "19000 (int)"), (b"\x01", "b'\\x01' (bytes)")])
def test_sqlite_date_column_holding_no_date_fails_its_partition_by_name(
    tmp_path: Path, fmt: str, value: Any, shown: str
) -> None:
    """A number or BLOB in a column of kind date failed its partition in Parquet, but CSV wrote
    it as if it were a date's text (``19000``, ``\\x01``) in the date column, JSON lines as a
    number or base64. Now CSV and JSON lines fail that
    partition the same way, naming the column and the value; the other is exported. The error
    says what a date's text is and converts Unix seconds with ``date()``: the advice of a time's
    (``datetime(d, 'unixepoch')``) gave text Parquet's date refuses, and CSV wrote as stored."""
    rows = [(1, "2024-11-02T12:00:00Z", value), (2, "2024-11-02T12:00:00Z", "2024-01-01")]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, d")
    root = _project(
        tmp_path / "p", url, "SELECT k, t, d FROM m", fmt, extra='[columns]\nd = "date"\n', ledger=False
    )
    project = load(root)
    for k in (1, 2):
        operations.mark(project, "typed", {"k": str(k), "day": DAY.isoformat()})
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (1, 1), summary.errors
    # A date's advice: the time's (ISO 8601 with a time, datetime()) failed Parquet's date again.
    assert f"column 'd' holds {shown}, not a date; store dates as YYYY-MM-DD text" in summary.errors[0]
    assert "date(d, 'unixepoch')" in summary.errors[0]
    assert not _file(root, 1, DAY, fmt).exists() and _file(root, 2, DAY, fmt).exists()


def test_check_counts_sqlite_times_no_partition_reads(tmp_path: Path) -> None:
    """SQLite's julianday() cannot read an offset without a colon, ISO 8601's basic form or a
    lower-case t: such a row is in no partition's window and never exported (its capture logged
    a change 'at a NULL or zero time'), and ``check`` said every task was ok. Now it counts them."""
    rows = [
        (1, "2024-11-02T12:00:00Z", 1),
        (1, "2024-11-02T12:00:00+0100", 2),
        (1, "20241102T120000Z", 3),
        (1, "2024-11-02t12:00:00z", 4),
    ]
    url = _sqlite(tmp_path / "s.db", rows)
    root = _project(tmp_path / "p", url, "SELECT k, t, v FROM m", "csv")
    checked = cli(root, "check")
    assert checked.returncode == 2, checked.stderr
    assert (
        "select.sql: 3 row(s) have a t SQLite cannot read as a time (such as '2024-11-02T12:00:00+0100'),"
        " so they are in no window and never exported" in checked.stderr
    )
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("DELETE FROM m WHERE v > 1")
    assert cli(root, "check").returncode == 0


def test_check_counts_sqlite_rows_whose_key_is_a_blob(tmp_path: Path) -> None:
    """A BLOB key (a SQLite column takes any type) is of a type no partition key holds: capture
    and ``backfill`` set its rows aside with a warning, so they are never exported, and
    ``check`` said every task was ok. Now it counts them and names one (exit 2)."""
    rows = [(1, "2024-11-02T12:00:00Z", 1), (b"\x00\xff", "2024-11-02T12:00:00Z", 2)]
    url = _sqlite(tmp_path / "s.db", rows)
    root = _project(tmp_path / "p", url, "SELECT k, t, v FROM m", "csv")
    checked = cli(root, "check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert (
        "select.sql: 1 row(s) have a k that is a BLOB (such as X'00FF'), which no partition key holds,"
        " so they are never exported" in checked.stderr
    )
    advice = checked.stderr.split("for example ")[1].split(" (the other")[0]
    assert advice == "CASE WHEN typeof(k) = 'blob' THEN hex(k) ELSE k END AS k"
    (root / "tasks/typed/select.sql").write_text(f"SELECT {advice}, t, v FROM m")
    assert cli(root, "check").returncode == 0  # the advice, taken, leaves no key unexported


def test_columns_errors_name_the_file_the_key_and_the_choices(tmp_path: Path, pg_url: str) -> None:
    url = _sqlite(tmp_path / "s.db", [(1, "2024-11-02T12:00:00Z", 1)])
    root = _project(tmp_path / "a", url, "SELECT k, t, v FROM m", "csv", extra='[columns]\nv = "double"\n')
    toml = root / "tasks/typed/task.toml"
    proc = cli(root, "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"{toml} [columns] v: 'double' is not a column kind; use one of int, float, decimal, text, "
        "timestamptz, timestamp, date, bool, binary"
    ) in proc.stdout + proc.stderr
    toml.write_text(toml.read_text().replace('v = "double"', 'value = "float"'))
    problems = operations.check_project(load(root))
    assert f"{toml} [columns] value: the select has no such column; its columns: k, t, v" in problems
    toml.write_text(toml.read_text().replace('value = "float"', 't = "text"'))
    [problem] = load(root).problems
    assert f"{toml} [columns] t: the [time] column is always timestamptz" in problem.message
    pg_root = _project(
        tmp_path / "b", pg_url, "SELECT 1 AS k, now() AS t", "csv", extra='[columns]\nk = "int"\n'
    )
    assert any("only SQLite sources take column kinds" in p for p in operations.check_project(load(pg_root)))


# --------------------------------------------------------------------------- units


def test_float_text_is_postgresqls_spelling() -> None:
    """The rows path: PostgreSQL's exponent from 1e15 on (Python's repr switches at 1e16)."""
    from sluicegate.formats.csv import float_text

    cases = {
        3.0: "3",
        0.1: "0.1",
        1e-05: "1e-05",
        1e15: "1e+15",
        -1234567890123456.0: "-1.234567890123456e+15",
        1000000000000000.5: "1.0000000000000005e+15",
        1e16: "1e+16",
        float("nan"): "NaN",
        float("inf"): "Infinity",
        float("-inf"): "-Infinity",
        -0.0: "-0",
    }
    assert {value: float_text(value) for value in cases} == cases


def test_the_exact_line_encoder_gives_arrows_bytes() -> None:
    """The Arrow CSV path falls back to its own encoder when a float is spelled by the server: for every
    other column it must give exactly the bytes of Arrow's writer, so the fallback never shows in a file."""
    n = 2000
    table = pa.table(
        {
            "i": pa.array([i - 1000 if i % 9 else None for i in range(n)], pa.int16()),
            "big": pa.array([(i - 1000) * 10**15 for i in range(n)], pa.int64()),
            "f": pa.array([(i - 1000) / 7 if i % 11 else None for i in range(n)]),
            "f4": pa.array([i / 3 for i in range(n)], pa.float32()),
            "b": pa.array([None if i % 7 == 0 else i % 2 == 0 for i in range(n)]),
            "d": pa.array([dt.date(1, 1, 1) + dt.timedelta(days=i * 400) for i in range(n)]),
            "s": pa.array([["", None, 'a"b', "x,y", "l1\nl2", "c\rr", "ü €"][i % 7] for i in range(n)]),
        }
    )
    lines = arrow_source._encode_lines(table, [False] * table.num_columns)
    chunks = list(arrow_source._split_lines(lines, [500, n], [0, 1]))
    assert [c.rows for _, c in chunks] == [500, n - 500]
    assert b"".join(c.data for _, c in chunks) == arrow_source._encode(table)


@pytest.mark.parametrize("names", [("s",), ("s", "n")])
def test_the_row_encoder_gives_arrows_bytes_for_empty_strings_and_nulls(names: tuple[str, ...]) -> None:
    """SQLite's and MariaDB's rows are encoded by the csv module, PostgreSQL's by Arrow: an empty
    string, a NULL, and in a file of one column a NULL's empty line, are the same bytes in both."""
    values = ["", None, "x", "", None, 'a"b', "l1\r\nl2"]
    table = pa.table({name: pa.array(values, pa.string()) for name in names})
    out = io.BytesIO()
    writer = CsvWriter(out, [Column(name=name, kind="text") for name in names], None, None)
    writer.write([tuple(v for _ in names) for v in values], "rows")
    expected = arrow_source._encode(table)
    assert out.getvalue() == csv_format.header(names) + expected.replace(b'"x"', b"x")


def test_the_adbc_read_path_loads_neither_arrow_dataset_nor_its_libraries(pg_url: str) -> None:
    """ADBC's DB-API module imports ``pyarrow.dataset`` (Arrow's Parquet, S3, Substrait and Acero
    libraries, ~20 MiB resident): the exporter uses the low-level connection instead."""
    code = (
        "import sys\n"
        "from sluicegate.sources import adbc, arrow  # noqa: F401 - both modules of the read path\n"
        "from sluicegate.sources.postgres import SESSION\n"
        "conn = adbc.open_arrow(sys.argv[1], SESSION)\n"
        "with conn.cursor() as cur:\n"
        "    cur.execute('SELECT 1 AS one, now() AS at')\n"
        "    [batch] = list(cur.fetch_record_batch())\n"
        "conn.close()\n"
        "assert batch.num_rows == 1 and batch.schema.names == ['one', 'at'], batch\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pyarrow.dataset', 'pyarrow._s3fs'))),"
        " 'libarrow_s3' in maps)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, pg_url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False"]


def test_adbc_batches_stay_near_one_mebibyte_and_arrive_whole(pg_url: str) -> None:
    """A batch is read ahead while the last is encoded, so three are in memory per exporter:
    ADBC is asked for 1 MiB batches (its default, 16 MiB, cost 93 MiB of peak RSS on a large
    partition). Every row arrives once, in order, through the reading thread."""
    assert arrow_source.available(), "the ADBC driver (the `fast` extra) is needed for the Arrow path"
    conn = adbc_source.open_arrow(pg_url, pg_source.SESSION)
    query = sql.SQL("SELECT i, repeat('x', 40) AS pad FROM generate_series(1, %s) AS i")
    try:
        with psycopg.connect(pg_url) as pconn:
            batches = list(arrow_source._batches(conn, pconn, query, [200_000]))
    finally:
        conn.close()
    assert sum(b.num_rows for b in batches) == 200_000
    assert [v for b in batches for v in b.column(0).to_pylist()] == list(range(1, 200_001))
    assert len(batches) >= 5  # ~10 MiB of result
    assert max(b.nbytes for b in batches) <= 2 * adbc_source.BATCH_BYTES


def test_inlined_parameters_are_the_literals_psycopg_would_bind(pg_url: str) -> None:
    """The ADBC path binds a batch's parameters as literals itself, each distinct value once
    (pg_query.inline); the text must be exactly what psycopg's client-side binding gives, for
    repeated, equal-but-different (1 == True, 0.0 == -0.0, 1.5 == 1.50, one instant in two
    zones, the two 02:30 of a night when clocks go back) and hostile values."""
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    instant = dt.datetime(2024, 3, 31, 1, tzinfo=UTC)
    values: list[Any] = [
        0, 7, 7, -3, 2**63 - 1, 2**63, 2**70, True, 1, False, 0, None, 1.5, 0.0, -0.0,
        decimal.Decimal("1.5"), decimal.Decimal("1.50"), "it's", "it's", "100%", "%s", "back\\slash",
        "new\nline", "", "UTC", instant, instant.astimezone(paris), instant.replace(tzinfo=None), instant,
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris), dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris),
        dt.date(2024, 3, 31), uuid.UUID(int=5), [1, 2, 3], ["a'b", None], b"\x00\xff",
    ]
    params = values * 3  # a batch repeats its values
    query = sql.SQL("SELECT {} FROM (VALUES ({})) AS v WHERE 'a%%' LIKE 'a%%'").format(
        sql.SQL(", ").join(sql.SQL("%s") for _ in params[1:]), sql.SQL("%s")
    )
    with psycopg.connect(pg_url) as conn:
        expected = psycopg.ClientCursor(conn).mogrify(query, params)
        assert pg_query.inline(conn, query, params) == expected
        # A '%' that Python's formatting and psycopg's read differently: psycopg decides, as before.
        odd = sql.SQL("SELECT %s, {}").format(sql.Identifier("pct%d"))
        with pytest.raises(psycopg.ProgrammingError):
            psycopg.ClientCursor(conn).mogrify(odd, [1])
        with pytest.raises(psycopg.ProgrammingError):
            pg_query.inline(conn, odd, [1])


def test_a_failed_batch_leaves_its_session_settings_to_the_next(tmp_path: Path, pg_url: str) -> None:
    """An SQL error on the ADBC read path rolls back the read's transaction. The session
    settings the batch query expects (here IntervalStyle) must survive that rollback; they
    were undone with it, and later batches then read values as text in the database's own
    style."""
    _one_row_per_key(pg_url, range(3), "IntervalStyle = 'iso_8601'")
    # k = 1 divides by zero when its batch is read. It is claimed between k = 0 and k = 2 (in
    # either order), so one of them is read after it, on the same connection.
    select = "SELECT k, t, 1 / (k - 1) AS one, interval '90 minutes' AS span FROM m"
    root = _project(tmp_path, pg_url, select, "csv")
    _mark(root, range(3))
    proc = cli(root, "run", "--batch-size", "1", "--json")
    [summary] = json.loads(proc.stdout)
    assert (summary["exported"], summary["failed"]) == (2, 1), summary
    assert "division by zero" in summary["errors"][0]
    assert _csv_rows(_file(root, 0, DAY, "csv"))[1][-2:] == ["-1", "01:30:00"]
    assert _csv_rows(_file(root, 2, DAY, "csv"))[1][-2:] == ["1", "01:30:00"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_long_running_exporter_holds_no_transaction_open_on_the_source_between_passes(
    tmp_path: Path, pg_url: str, fmt: str
) -> None:
    """ADBC's connection did not autocommit: after a read, a long-running exporter (run --every,
    the service) sat "idle in transaction" with a lock on the table it read, so an ALTER TABLE
    on the source waited for it until its next error or its end (and every query behind the
    ALTER waited too). The read's transaction ends with the read now (it autocommits)."""
    _one_row_per_key(pg_url, range(1, 3), "DateStyle = 'ISO, YMD'")
    root = _project(tmp_path, pg_url, "SELECT k, t FROM m", fmt)
    _mark(root, range(1, 3))
    with engine.Exporter(load(root)) as exporter:
        [summary] = exporter.run_once(list(load(root).tasks.values()), RunOptions(workers=1))
        assert (summary.exported, summary.failed) == (2, 0), summary.errors
        with psycopg.connect(pg_url, autocommit=True) as admin:
            idle = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction'"
            ).fetchone()
            assert idle == (0,)
            admin.execute("SET lock_timeout TO '2s'")
            admin.execute("ALTER TABLE m ADD COLUMN added int")  # refused by the lock timeout before


@pytest.mark.parametrize("path", ["arrow", "copy", "rows"])
def test_batches_of_many_partitions_are_read_without_parallel_workers(
    tmp_path: Path, pg_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of more than PARALLEL_SLICES partitions is read with parallel workers off (a
    parallel plan doubled the server's CPU for 500 small partitions); a smaller one, on the
    same connection, with the database's own setting again."""
    _use_path(path, monkeypatch)
    _one_row_per_key(pg_url, range(1, 21), "max_parallel_workers_per_gather = 3")
    select = "SELECT k, t, current_setting('max_parallel_workers_per_gather') AS workers FROM m"
    root = _project(tmp_path, pg_url, select, "parquet" if path == "rows" else "csv")
    _mark(root, range(1, 21))
    big = pg_source.PARALLEL_SLICES + 2
    [summary] = engine.run(load(root), options=RunOptions(batch_size=big))
    assert (summary.exported, summary.failed) == (20, 0), summary.errors
    workers = {}
    for k in range(1, 21):
        if path == "rows":
            workers[k] = pq.read_table(_file(root, k, DAY, "parquet")).column("workers").to_pylist()[0]
        else:
            workers[k] = _csv_rows(_file(root, k, DAY, "csv"))[1][-1]
    # Claimed in key order: the first batch holds `big` partitions, the second the last two.
    assert sorted(workers.values()) == ["0"] * big + ["3"] * (20 - big), workers



# When the statement that read a row began: the partitions of one batch query share it (the
# rows path's cursor fetches up to 10,000 rows in one statement), and no others do.
READ_AT = "statement_timestamp() AS read_at"


def _rows_per_key(pg_url: str, keys: range, rows: int) -> None:
    """Table ``m (k, t, v)``: ``rows`` rows per key on DAY, in no particular order."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (k int, t timestamptz, v double precision)")
        conn.execute(
            "INSERT INTO m SELECT k, %s + i * interval '1 second', (i * 7919 %% 1000) / 10.0"
            " FROM generate_series(%s::int, %s::int) AS k, generate_series(1, %s) AS i ORDER BY random()",
            (NOON, keys.start, keys.stop - 1, rows),
        )
        conn.execute("ANALYZE m")


@pytest.mark.parametrize("path", ["arrow", "copy", "rows"])
def test_large_partitions_are_read_one_per_query_with_the_same_bytes(
    tmp_path: Path, pg_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the planner expects many rows per partition, a batch is read a partition per query
    (each its own, smaller sort); the files are the bytes a single batch query gives."""
    _use_path(path, monkeypatch)
    _rows_per_key(pg_url, range(1, 4), 2_000)
    fmt = "parquet" if path == "rows" else "csv"
    files = {}
    for split in (False, True):
        monkeypatch.setattr(pg_source, "SPLIT_ROWS", 0 if split else 10**12)
        monkeypatch.setattr(pg_source, "SPLIT_COST", 1e9)  # whatever the plans cost
        root = _project(tmp_path / str(split), pg_url, f"SELECT k, t, v, {READ_AT} FROM m", fmt)
        _mark(root, range(1, 4))
        [summary] = engine.run(load(root), options=RunOptions(batch_size=3))
        assert (summary.exported, summary.failed, summary.rows) == (3, 0, 6_000), summary.errors
        files[split] = [_file(root, k, DAY, fmt) for k in range(1, 4)]
    reads = {}
    for split, paths in files.items():
        if fmt == "csv":
            rows = [_csv_rows(path)[1:] for path in paths]
            reads[split] = {r[3] for part in rows for r in part}
            files[split] = [[r[:3] for r in part] for part in rows]
        else:
            tables = [pq.read_table(path) for path in paths]
            reads[split] = {v for table in tables for v in table.column("read_at").to_pylist()}
            files[split] = [table.drop_columns(["read_at"]) for table in tables]
    assert files[True] == files[False]  # the same rows, in the same order
    assert (len(reads[False]), len(reads[True])) == (1, 3)  # one query, then one per partition


def test_partitions_are_not_read_one_per_query_when_each_query_would_scan_the_table(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no index on the key, a query per partition would scan the whole table once per
    partition: the planner's costs say so, and the batch stays one query, however many rows
    each partition holds."""
    _rows_per_key(pg_url, range(1, 21), 500)
    monkeypatch.setattr(pg_source, "SPLIT_ROWS", 0)  # the costs alone decide
    root = _project(tmp_path, pg_url, f"SELECT k, t, v, {READ_AT} FROM m", "csv")
    _mark(root, range(1, 21))
    [summary] = engine.run(load(root), options=RunOptions(batch_size=20))
    assert (summary.exported, summary.failed) == (20, 0), summary.errors
    reads = {row[3] for k in range(1, 21) for row in _csv_rows(_file(root, k, DAY, "csv"))[1:]}
    assert len(reads) == 1  # one query read them all


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("arrow", "csv"), ("copy", "csv"), ("arrow", "parquet"), ("rows", "parquet"), ("sqlite", "csv"), ("sqlite", "parquet")],
)
def test_column_names_with_placeholder_and_quote_characters_are_read_on_every_path(
    tmp_path: Path, pg_url: str, path: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column named ``pct%d`` failed every partition on the ADBC and COPY paths (psycopg took
    the ``%`` inside the quoted identifier for a placeholder), ``v.1`` on SQLite and MariaDB
    (quoted as ``"v"."1"``). Each name comes back as the header, with its values."""
    hostile = ", ".join(
        f"k * {i} AS {sql.Identifier(name).as_string()}" for i, name in enumerate(HOSTILE_NAMES, start=2)
    )
    if path == "sqlite":
        url = _sqlite(tmp_path / "s.db", [(k, "2024-11-02T12:00:00Z") for k in (1, 2)], "k, t")
        root = _project(tmp_path / "proj", url, f"SELECT k, t, {hostile} FROM m", fmt, ledger=False)
        _export(root, (1, DAY), (2, DAY))
    else:
        _use_path(path, monkeypatch)
        _one_row_per_key(pg_url, range(1, 3), "DateStyle = 'ISO, MDY'")
        root = _project(tmp_path, pg_url, f"SELECT k, t, {hostile} FROM m", fmt)
        _mark(root, range(1, 3))
        [summary] = engine.run(load(root))
        assert (summary.exported, summary.failed) == (2, 0), summary.errors
    for k in (1, 2):
        expected = [k * i for i in range(2, 2 + len(HOSTILE_NAMES))]
        if fmt == "csv":
            header, row = _csv_rows(_file(root, k, DAY, "csv"))
            assert header[2:] == HOSTILE_NAMES
            assert row[2:] == [str(v) for v in expected]
        else:
            table = pq.read_table(_file(root, k, DAY, "parquet"))
            assert table.column_names[2:] == HOSTILE_NAMES
            assert [table.column(n).to_pylist() for n in HOSTILE_NAMES] == [[v] for v in expected]


def test_two_result_columns_of_one_name_are_a_config_error(tmp_path: Path, pg_url: str) -> None:
    """Two columns named v were accepted, then every partition failed on its read ("column
    reference v is ambiguous") and was retried each run. Now `run` and `check` refuse the task
    with one sentence naming select.sql and the column; nothing is claimed."""
    _one_row_per_key(pg_url, range(1, 3), "DateStyle = 'ISO, MDY'")
    root = _project(tmp_path, pg_url, "SELECT k, t, 1 AS v, k AS v FROM m", "csv")
    _mark(root, range(1, 3))
    for command in ("run", "check"):
        proc = cli(root, command)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        out = proc.stdout + proc.stderr
        assert "select.sql: the result has two columns named 'v'; give each its own name" in out
        assert "Traceback" not in out
    [status] = json.loads(cli(root, "status", "--json", check=True).stdout)
    assert (status["pending"], status["failed"], status["retrying"], status["failures"]) == (2, 0, 0, [])
    assert not files(root / "out")


# Times PostgreSQL holds and files cannot: beyond years 1 to 9999, and the infinities.
UNWRITABLE_TIMES = {
    "timestamptz infinity": "'infinity'::timestamptz",
    "timestamptz -infinity": "'-infinity'::timestamptz",
    "timestamptz year 20000": "'20000-01-01 00:00+00'::timestamptz",
    "timestamptz BC": "'0044-03-15 12:00+00 BC'::timestamptz",
    "timestamp infinity": "'infinity'::timestamp",
    "date infinity": "'infinity'::date",
    "date BC": "'0044-03-15 BC'::date",
}
# The last instant of year 9999, and the first of year 1, are still written (k = 2).
EDGE = "'9999-12-31 23:59:59+00'::timestamptz"
FIRST = "'0001-01-01 00:00:00'::timestamp"


@pytest.mark.parametrize(("path", "fmt"), [("arrow", "csv"), ("copy", "csv"), ("arrow", "parquet"), ("rows", "parquet")])
@pytest.mark.parametrize("case", list(UNWRITABLE_TIMES))
def test_a_time_no_file_can_hold_fails_its_partition_by_name_on_every_path(
    tmp_path: Path, pg_url: str, path: str, fmt: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'infinity' in a timestamptz column was written into CSV on the default (ADBC) path as
    Arrow's "<value out of range: ...>", BC times lost their era on the COPY path, a timestamp
    of infinity became an empty field there, and ADBC's Parquet held meaningless instants; all
    exported without an error. Now the partition fails with the column's name and what to do,
    and the other partition of the batch is exported, its edge-of-calendar times intact."""
    _use_path(path, monkeypatch)
    _one_row_per_key(pg_url, range(1, 3), "DateStyle = 'ISO, MDY'")
    bad = UNWRITABLE_TIMES[case]
    kind = bad.split("::")[1]
    select = (
        f"SELECT k, t, CASE WHEN k = 1 THEN {bad} ELSE {EDGE if kind == 'timestamptz' else FIRST}::{kind} END"
        ' AS "valid_to" FROM m'
    )
    root = _project(tmp_path, pg_url, select, fmt, zone="UTC")
    _mark(root, range(1, 3))
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (1, 1), summary.errors
    [error] = summary.errors
    assert error.startswith('[1,"2024-11-02"]: ')
    assert "column 'valid_to' holds" in error and "outside the years 1 to 9999 (or infinity)" in error
    assert "cast it in select.sql" in error
    assert not _file(root, 1, DAY, fmt).exists()
    edge = {
        ("timestamptz", "csv"): "9999-12-31T23:59:59+00:00",
        ("timestamptz", "parquet"): dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        ("timestamp", "csv"): "0001-01-01T00:00:00",
        ("timestamp", "parquet"): dt.datetime(1, 1, 1),
        ("date", "csv"): "0001-01-01",
        ("date", "parquet"): dt.date(1, 1, 1),
    }[(kind, fmt)]
    if fmt == "csv":
        assert _csv_rows(_file(root, 2, DAY, fmt))[1][2] == edge
    else:
        table = pq.read_table(_file(root, 2, DAY, fmt))
        value = table.column("valid_to").cast(pa.int64() if kind != "date" else pa.int32())[0].as_py()
        expected = edge - dt.datetime(1970, 1, 1, tzinfo=edge.tzinfo) if kind != "date" else edge - dt.date(1970, 1, 1)
        assert value == (expected // dt.timedelta(microseconds=1) if kind != "date" else expected.days)


@pytest.mark.parametrize("language", ["en", "de"])
@pytest.mark.parametrize(("path", "fmt"), [("copy", "csv"), ("rows", "parquet")])
def test_a_time_no_file_can_hold_is_named_in_sluicegates_words_whatever_the_servers_language(
    tmp_path: Path, pg_url: str, path: str, fmt: str, language: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On COPY and psycopg's rows the server checks the times: sluicegate's message rides in the
    error of a cast that fails, which quotes it, and is taken out of it. It was looked for after
    English's quote ("): a German server quotes »...«, so the partition's error was the server's,
    "database ... rejected a value: ungültige Eingabesyntax für Typ integer: »sluicegate: ...«"."""
    _use_path(path, monkeypatch)
    _one_row_per_key(pg_url, range(1, 2), "DateStyle = 'ISO, MDY'")
    Db(pg_url).speak(language)
    root = _project(
        tmp_path, pg_url, "SELECT k, t, 'infinity'::timestamptz AS valid_to FROM m", fmt, zone="UTC"
    )
    _mark(root, range(1, 2))
    [summary] = engine.run(load(root))
    [error] = summary.errors
    assert error == f'[1,"2024-11-02"]: {times.message("valid_to", "infinity")}', error


def test_a_time_in_year_10000_locally_is_refused_in_csv_and_kept_in_parquet(
    tmp_path: Path, pg_url: str
) -> None:
    """CSV and JSON lines hold local time: 9999-12-31 23:00 UTC is in year 10000 at +14:00 and
    cannot be written (JSON lines failed with a bare "OverflowError: date value out of range",
    naming no column); Parquet holds the instant, which is fine."""
    _one_row_per_key(pg_url, range(1, 2), "DateStyle = 'ISO, MDY'")
    select = "SELECT k, t, '9999-12-31 23:00+00'::timestamptz AS until FROM m"
    for fmt, failed in (("csv", 1), ("parquet", 0), ("jsonl", 1)):
        root = _project(tmp_path / fmt, pg_url, select, fmt, zone="Pacific/Kiritimati")
        project = load(root)
        operations.mark(project, "typed", {"k": "1", "day": "2024-11-03"})
        [summary] = engine.run(load(root))
        assert (summary.exported, summary.failed) == (1 - failed, failed), summary.errors
        if failed:
            assert "column 'until' holds a time outside the years 1 to 9999" in summary.errors[0]


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_sqlite_time_whose_instant_is_outside_years_1_to_9999_fails_in_parquet_by_name(
    tmp_path: Path, text: str
) -> None:
    """Parquet holds the UTC instant: SQLite text whose instant falls in year 10000 or year 0
    was written, and no reader could load the file back."""
    url = _sqlite(tmp_path / "s.db", [(1, "2024-11-02T12:00:00Z", text)], "k, t, until")
    pin = '[columns]\nuntil = "timestamptz"\n'
    root = _project(tmp_path / "p", url, "SELECT k, t, until FROM m", "parquet", extra=pin, ledger=False)
    operations.mark(load(root), "typed", {"k": "1", "day": DAY.isoformat()})
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (0, 1), summary.errors
    assert f"column 'until' holds {text!r} outside the years 1 to 9999" in summary.errors[0]
    assert not _file(root, 1, DAY, "parquet").exists()


def test_json_lines_from_sqlite_are_strict_json_with_times_in_the_zone(tmp_path: Path) -> None:
    """JSON lines wrote SQLite's text times as stored (no offset, not in the task's zone) and
    infinite floats as a bare ``Infinity``, which no strict JSON parser reads."""
    rows = [
        (1, "2024-11-02 12:00:00", float("inf"), 1),
        (1, "2024-11-02T14:00:00+01:00", float("nan"), 0),
        (1, "2024-11-02T14:30:00Z", float("-inf"), None),
    ]
    url = _sqlite(tmp_path / "s.db", rows, "k, t, v, flag")
    pins = '[columns]\nflag = "bool"\n'
    root = _project(tmp_path / "p", url, "SELECT k, t, v, flag FROM m", "jsonl", extra=pins, ledger=False)
    _export(root, (1, DAY))

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    lines = _file(root, 1, DAY, "jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert records == [
        {"k": 1, "t": "2024-11-02T09:30:00-02:30", "v": "Infinity", "flag": True},
        {"k": 1, "t": "2024-11-02T10:30:00-02:30", "v": None, "flag": False},  # SQLite stores NaN as NULL
        {"k": 1, "t": "2024-11-02T12:00:00-02:30", "v": "-Infinity", "flag": None},
    ]


@pytest.mark.parametrize("path", ["arrow", "copy"])
def test_inet_is_its_text_cast_on_every_path(tmp_path: Path, pg_url: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A type read as the server's text has one text on every path. COPY wrote ``inet`` with its
    output function (``10.0.0.1``, ``::1``), the Arrow path and Parquet its cast to text
    (``10.0.0.1/32``, ``::1/128``): one address, two spellings, by whether ADBC was installed."""
    _use_path(path, monkeypatch)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (k int, t timestamptz, a inet, c cidr)")
        conn.execute("INSERT INTO m VALUES (1, %s, '10.0.0.1', '10.0.0.0/8'), (1, %s, '::1', '::1/128')",
                     (NOON, NOON + dt.timedelta(minutes=1)))
    root = _project(tmp_path, pg_url, "SELECT k, t, a, c FROM m", "csv")
    _export(root, (1, DAY))
    assert [r[2:] for r in _csv_rows(_file(root, 1, DAY, "csv"))] == [
        ["a", "c"], ["10.0.0.1/32", "10.0.0.0/8"], ["::1/128", "::1/128"]
    ]


@pytest.mark.parametrize("path", ["arrow", "copy"])
def test_rows_equal_only_as_numbers_have_one_order_whatever_the_insert_order(
    tmp_path: Path, pg_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a primary key, rows are ordered by every column, so that the same rows give the
    same bytes. But -0 = 0 and 1.5 = 1.50 sort as ties while their text differs: their order was
    the order the server read them in, and the same rows written again gave another file."""
    _use_path(path, monkeypatch)
    rows = [(1, NOON, -0.0, decimal.Decimal("1.5")), (1, NOON, 0.0, decimal.Decimal("1.50")),
            (1, NOON, 0.0, decimal.Decimal("1.500"))]
    root = _project(tmp_path, pg_url, "SELECT k, t, f, n FROM m", "csv")
    files = []
    for order in (rows, rows[::-1]):
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS m")
            conn.execute("CREATE TABLE m (k int, t timestamptz, f float8, n numeric)")
            conn.cursor().executemany("INSERT INTO m VALUES (%s, %s, %s, %s)", order)
        _mark(root, range(1, 2))
        [summary] = engine.run(load(root))
        assert summary.exported + summary.unchanged == 1, summary.errors
        files.append(_file(root, 1, DAY, "csv").read_bytes())
    assert files[0] == files[1]
    assert summary.unchanged == 1  # not uploaded again
    assert [r[2:] for r in _csv_rows(_file(root, 1, DAY, "csv"))[1:]] == [["0", "1.50"], ["0", "1.500"], ["-0", "1.5"]]


def test_json_lines_write_a_real_with_its_own_digits_as_postgresql_does(typed_db: str, tmp_path: Path) -> None:
    """A ``real`` is read widened to a double (exactly, so Parquet gets the same value on every
    path), and JSON lines wrote that double's digits: 0.10000000149011612 where PostgreSQL's
    ``to_json`` and the CSV file say 0.1. Now it is the real's own shortest digits, as a number
    (NaN and the infinities as text, as for any float)."""
    root = _project(tmp_path, typed_db, "SELECT k, t, v FROM typed_real", "jsonl")
    _export(root, (1, DAY))
    lines = _file(root, 1, DAY, "jsonl").read_text().split("\n")[:-1]
    values = [line.split('"v":', 1)[1].removesuffix("}") for line in lines]
    with psycopg.connect(typed_db) as conn:
        expected = [r[0] for r in conn.execute("SELECT to_json(v)::text FROM typed_real ORDER BY t")]
    assert values == [
        e if e in ('"NaN"', '"Infinity"', '"-Infinity"') else float_json(e) for e in expected
    ]


def float_json(text: str | None) -> str:
    """PostgreSQL's JSON for a real (``to_json``; SQL NULL for NULL) as Python's json writes that number."""
    return "null" if text is None else json.dumps(float(text))


@pytest.mark.parametrize(("fmt", "path"), [("csv", "arrow"), ("csv", "copy"), ("parquet", "arrow"), ("parquet", "rows"), ("jsonl", "rows")])  # fmt: skip
def test_text_of_a_sql_ascii_database_is_text_on_every_path(
    pg_server: Any, tmp_path: Path, fmt: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg reads the text of a SQL_ASCII database (a client_encoding of SQL_ASCII) as bytes,
    so every text value went into Parquet without ADBC as "\\x" and hex, and into JSON lines as
    base64, silently; ADBC and COPY wrote the text. Sessions now ask for UTF-8 on every path."""
    _use_path(path, monkeypatch)
    dbname = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(dbname)
            )
        )
    url = pg_server.url(dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (k int, t timestamptz, v text)")
        conn.execute("INSERT INTO m VALUES (1, %s, 'plain'), (1, %s, NULL)", (NOON, NOON + dt.timedelta(minutes=1)))
    root = _project(tmp_path, url, "SELECT k, t, v FROM m", fmt)
    try:
        _export(root, (1, DAY))
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
    file = _file(root, 1, DAY, fmt)
    if fmt == "csv":
        values = [row[2] for row in _csv_rows(file)[1:]]
    elif fmt == "parquet":
        values = pq.read_table(file).column("v").to_pylist()
    else:
        values = [json.loads(line)["v"] for line in file.read_text().split("\n")[:-1]]
    assert values == ["plain", "" if fmt == "csv" else None]


@pytest.mark.parametrize("path", ["arrow", "rows"])
@pytest.mark.parametrize(
    ("pg_type", "values"), [("numeric(5, -2)", ["12300", "-100"]), ("numeric(3, 5)", ["0.00123", "-0.00001"])]
)
def test_a_numeric_whose_scale_parquet_cannot_declare_is_its_text(
    tmp_path: Path, pg_url: str, path: str, pg_type: str, values: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL 15 takes a negative scale, or one above the precision; a Parquet decimal takes
    neither, and every partition failed with "OSError: Scale must be a non-negative integer that
    does not exceed precision for Decimal logical type", naming no column. Such a column is now
    a string of PostgreSQL's text, as a numeric without a precision is."""
    _use_path(path, monkeypatch)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.info.server_version < 150000:
            pytest.skip("PostgreSQL 15 or later takes these scales")
        conn.execute(sql.SQL("CREATE TABLE m (k int, t timestamptz, v {})").format(sql.SQL(pg_type)))
        for i, value in enumerate([*values, None]):
            conn.execute("INSERT INTO m VALUES (1, %s, %s::numeric)", (NOON + dt.timedelta(minutes=i), value))
    root = _project(tmp_path, pg_url, "SELECT k, t, v FROM m", "parquet")
    _export(root, (1, DAY))
    table = pq.read_table(_file(root, 1, DAY, "parquet"))
    assert str(table.schema.field("v").type) == "string"
    assert table.column("v").to_pylist() == [*values, None]
