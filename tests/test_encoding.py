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
from pathlib import Path
from typing import Any

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
