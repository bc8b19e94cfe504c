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
import io
import sqlite3
import zoneinfo
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate import engine, operations
from sluicegate.sources import arrow as arrow_source
from sluicegate.sources import postgres as pg_source
from support import load

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


# --------------------------------------------------------------------------- PostgreSQL types

# name: (type, values as PostgreSQL input text, CSV text, Parquet type, Parquet values)


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
        import gzip

        records = list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode(), newline="")))
    assert [r[2] for r in records[1:]] == values


# --------------------------------------------------------------------------- units
