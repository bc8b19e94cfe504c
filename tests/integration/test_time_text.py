"""Times of day and intervals are written as PostgreSQL's own text on every read path and format.

A ``time``, ``timetz`` or ``interval`` column is read as the server's text (``value::text``), so
a CSV field is what ``COPY (...) TO STDOUT (FORMAT csv)`` writes for it (``12:00:00+02``, not
Python's ``12:00:00+02:00``; ``12:00:00.1``, not ``12:00:00.100000``), with and without the ADBC
driver, and a partition re-exported by the other path has the same values.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from test_encoding import DAY, NOON, _export, _file, _project, _use_path

from support import cli

# (time, timetz, interval) as PostgreSQL input text: the ends of the day, the smallest fraction,
# a fraction with trailing zeros, the widest offsets, offsets with minutes and seconds.
ROWS = [
    ("24:00:00", "24:00:00+00", "0"),
    ("00:00:00", "00:00:00+14", "-1 day 02:03:04.5"),
    ("00:00:00.000001", "12:00:00-12", "1 mon 00:00:00.000001"),
    ("12:00:00.100000", "12:00:00.100000+05:45", "1 year -2 mons"),
    ("23:59:59.999999", "00:00:00.000001-00:17:30", "-00:00:00.1"),
    ("12:00:00.5", "12:00:00.5+05:30", "100 years 3 days"),
    (None, None, None),
]
SELECT = "SELECT k, t, a, b, a::time(0) AS c, d FROM tt"


@pytest.fixture
def copy_text(pg_url: str) -> list[list[str]]:
    """Table ``tt`` of ROWS, and PostgreSQL's COPY CSV fields of its value columns, row by row."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tt (k int, t timestamptz, a time, b timetz, d interval)")
        for i, (a, b, d) in enumerate(ROWS):
            conn.execute(
                "INSERT INTO tt VALUES (1, %s, %s::time, %s::timetz, %s::interval)",
                (NOON + dt.timedelta(minutes=i), a, b, d),
            )
        data = b""
        with conn.cursor() as cur, cur.copy(f"COPY ({SELECT} ORDER BY t) TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                data += bytes(chunk)
    return [row[2:] for row in csv.reader(io.StringIO(data.decode(), newline=""))]


def test_copy_writes_postgresqls_own_time_text(copy_text: list[list[str]]) -> None:
    """The expected text itself: offsets without ``:00``, fractions trimmed, ``time(0)`` rounded."""
    assert copy_text[3] == ["12:00:00.1", "12:00:00.1+05:45", "12:00:00", "10 mons"]
    assert copy_text[4] == ["23:59:59.999999", "00:00:00.000001-00:17:30", "24:00:00", "-00:00:00.1"]
    assert copy_text[0][:3] == ["24:00:00", "24:00:00+00", "24:00:00"]
    assert copy_text[1][1] == "00:00:00+14"


@pytest.mark.parametrize("path", ["arrow", "copy"])
@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_csv_time_text_is_copys_on_every_path(
    fmt: str,
    path: str,
    copy_text: list[list[str]],
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use_path(path, monkeypatch)
    root = _project(tmp_path, pg_url, SELECT, fmt)
    _export(root, (1, DAY))
    data = _file(root, 1, DAY, fmt).read_bytes()
    text = (gzip.decompress(data) if fmt == "csv.gz" else data).decode("utf-8")
    header, *rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    assert header == ["k", "t", "a", "b", "c", "d"]
    assert [row[2:] for row in rows] == copy_text


@pytest.mark.parametrize("path", ["arrow", "rows"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_hold_copys_time_text_as_strings(
    fmt: str,
    path: str,
    copy_text: list[list[str]],
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parquet has no type for a time with an offset or an interval, and ``time64`` would drop
    ``24:00:00``: the four are ``string`` columns of the server's text (NULL stays NULL)."""
    _use_path(path, monkeypatch)
    root = _project(tmp_path, pg_url, SELECT, fmt)
    _export(root, (1, DAY))
    file = _file(root, 1, DAY, fmt)
    if fmt == "parquet":
        table = pq.read_table(file)
        assert [str(table.schema.field(c).type) for c in "abcd"] == ["string"] * 4
        got = [list(r.values())[2:] for r in table.to_pylist()]
    else:
        got = [list(json.loads(line).values())[2:] for line in file.read_text().splitlines()]
    assert got == [[v if v != "" else None for v in row] for row in copy_text]


def _zone(hours: int, minutes: int = 0, seconds: int = 0) -> dt.timezone:
    return dt.timezone(dt.timedelta(hours=hours, minutes=minutes, seconds=seconds))


# Python times a blocks extract's callable may return: naive, aware, fractions, offsets of every form.
CALLABLE_TIMES = [
    dt.time(0, 0),
    dt.time(23, 59, 59, 999999),
    dt.time(0, 0, 0, 1),
    dt.time(12, 0, 0, 100000),
    dt.time(12, 0, tzinfo=_zone(14)),
    dt.time(12, 0, tzinfo=_zone(-12)),
    dt.time(12, 0, 0, 500000, tzinfo=_zone(5, 45)),
    dt.time(12, 0, tzinfo=_zone(0)),
    dt.time(0, 0, 0, 1, tzinfo=_zone(0, -17, -30)),
    dt.time(12, 0, tzinfo=_zone(-3, -30)),
]


def test_a_callables_times_in_json_lines_are_what_copy_writes_for_them(pg_url: str) -> None:
    """A blocks extract's records (dicts from a callable) wrote a ``dt.time`` as Python's
    ``isoformat()`` (``12:00:00+14:00``, ``12:00:00.100000``), while the same column read by a SQL
    extract is the server's text (``12:00:00+14``, ``12:00:00.1``): one time, two texts."""
    from sluicegate.formats.jsonl import JsonlWriter

    expected = []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for value in CALLABLE_TIMES:
            pg_type = "timetz" if value.tzinfo else "time"
            data = b""
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY (SELECT %s::{pg_type}) TO STDOUT (FORMAT csv)", [value]) as copy,
            ):
                for chunk in copy:
                    data += bytes(chunk)
            expected.append(data.decode().rstrip("\n"))
    out = io.BytesIO()
    writer = JsonlWriter(out, [], "UTC")
    writer.write([{"v": v} for v in CALLABLE_TIMES], "rows")
    writer.close()
    assert [json.loads(line)["v"] for line in out.getvalue().splitlines()] == expected


def test_a_callables_time_whose_offset_has_a_fraction_of_a_second_fails_by_value() -> None:
    """PostgreSQL's text has no such offset (``isoformat()`` wrote ``+00:00:00.500000``)."""
    from sluicegate.exceptions import DataError
    from sluicegate.formats.jsonl import JsonlWriter

    odd = dt.time(12, tzinfo=dt.timezone(dt.timedelta(microseconds=500000)))
    with pytest.raises(DataError, match=r"the time 12:00:00\+00:00:00.500000 has an offset with a fraction"):
        JsonlWriter(io.BytesIO(), [], None).write([{"v": odd}], "rows")


AGGREGATE_TIMES = {
    "a": ("'12:00:00.100000'::time", "time"),
    "b": ("'23:59:59.999999'::time", "time"),
    "c": ("'12:00:00+14'::timetz", "timetz"),
    "d": ("'12:00:00.5+05:45'::timetz", "timetz"),
    "e": ("'00:00:00.000001-00:17:30'::timetz", "timetz"),
    "f": ("'12:00:00-12'::timetz", "timetz"),
}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
def test_an_aggregates_time_and_timetz_are_copys_text_in_its_files(
    tmp_path: Path, pg_url: str, fmt: str
) -> None:
    """An aggregate's select is read as Python values and a time was written as ``str()`` of its
    ``dt.time``: ``12:00:00.100000``, ``12:00:00+14:00`` where COPY, and every partitioned read
    path, writes ``12:00:00.1``, ``12:00:00+14``."""
    from test_aggregate import T, _also_select, _evaluate

    from airmax_support import add_raw, airmax_project

    root = airmax_project(
        tmp_path / "proj",
        pg_url,
        width="1h",
        task_extra=f'path = "cur/{{t:%Y%m%d-%H%M}}.{{ext}}"\nformat = "{fmt}"',
    )
    _also_select(root, pg_url, **AGGREGATE_TIMES)
    add_raw(pg_url, [("Gent", T - dt.timedelta(minutes=30), 4.0)])
    result = _evaluate(root, T)
    assert (result.state, result.error) == ("done", None), result.error
    assert result.path is not None
    file = root / "exports" / result.path
    with psycopg.connect(pg_url, autocommit=True) as conn:
        exprs = ", ".join(expr for expr, _ in AGGREGATE_TIMES.values())
        data = b""
        with conn.cursor() as cur, cur.copy(f"COPY (SELECT {exprs}) TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                data += bytes(chunk)
    [expected] = csv.reader(io.StringIO(data.decode(), newline=""))
    if fmt == "parquet":
        [row] = pq.read_table(file).to_pylist()
    elif fmt == "jsonl":
        row = json.loads(file.read_text())
    else:
        raw = file.read_bytes()
        [row] = csv.DictReader(
            io.StringIO((gzip.decompress(raw) if fmt == "csv.gz" else raw).decode(), newline="")
        )
    assert [row[c] for c in AGGREGATE_TIMES] == expected


# MariaDB's TIME is a signed duration up to 838:59:59 (PostgreSQL has no such time): its file
# text is the server's own, as the mysql client and SELECT ... INTO OUTFILE write it, every digit
# of the column's fraction (12:00:00.500000 in a TIME(6)).
MARIADB_TIMES = [
    ("24:00:00", "00:00:00.000001", "24:00:00"),
    ("-838:59:59", "12:00:00.100000", "-838:59:59"),
    ("838:59:59", "-00:00:00.500000", "838:59:59"),
    ("00:00:00", "00:00:00.000000", "00:00:00"),  # TIME(0) of 00:00:00.5: truncated, as MariaDB stores it
]


@pytest.mark.mariadb
@pytest.mark.parametrize("kind", ["partitioned", "archive"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_mariadb_time_is_the_servers_text_in_every_format(
    mariadb_url: str, tmp_path: Path, fmt: str, kind: str
) -> None:
    from test_mariadb_source import _task_t

    from plugins.mariadb_server import mariadb_connect

    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE tm (id INT PRIMARY KEY, a TIME, b TIME(6), c TIME(0))")
        for i, (a, b, _) in enumerate(MARIADB_TIMES):
            cur.execute("INSERT INTO tm VALUES (?, ?, ?, ?)", (i, a, b, "00:00:00.5" if i == 3 else a))
        conn.commit()
    task = f'kind = "archive"\nformat = "{fmt}"\npath = "all.{{ext}}"\n' if kind == "archive" else ""
    select = "SELECT 1 AS g, id, a, b, c FROM tm" + (" ORDER BY id" if kind == "archive" else "")
    root = _task_t(tmp_path, mariadb_url, select, task or 'keys = ["g"]\npath = "{g}.{ext}"\n')
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('format = "csv"', f'format = "{fmt}"'))
    if kind == "partitioned":
        assert cli(root, "mark", "t", "g=1").returncode == 0
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    file = tmp_path / "out" / f"{'all' if kind == 'archive' else 1}.{fmt}"
    if fmt == "parquet":
        table = pq.read_table(file)
        assert [str(table.schema.field(c).type) for c in "abc"] == ["string"] * 3
        rows = [[r["a"], r["b"], r["c"]] for r in table.to_pylist()]
    elif fmt == "jsonl":
        rows = [[r["a"], r["b"], r["c"]] for r in map(json.loads, file.read_text().splitlines())]
    else:
        rows = [row[2:] for row in list(csv.reader(io.StringIO(file.read_text(), newline="")))[1:]]
    assert rows == [list(t) for t in MARIADB_TIMES]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_postgresql_archives_times_are_copys_text(
    fmt: str, copy_text: list[list[str]], pg_url: str, tmp_path: Path
) -> None:
    """An archive (snapshot) reads CSV with COPY and the other formats as rows: the same text."""
    root = _project(tmp_path, pg_url, SELECT + " ORDER BY t", fmt)
    (root / "tasks/typed/task.toml").write_text(f'kind = "archive"\nformat = "{fmt}"\npath = "all.{{ext}}"\n')
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    file = root / "out" / f"all.{fmt}"
    if fmt == "parquet":
        got = [[r[c] for c in "abcd"] for r in pq.read_table(file).to_pylist()]
        assert got == [[v if v != "" else None for v in row] for row in copy_text]
    elif fmt == "jsonl":
        got = [list(json.loads(line).values())[2:] for line in file.read_text().splitlines()]
        assert got == [[v if v != "" else None for v in row] for row in copy_text]
    else:
        assert [
            row[2:] for row in list(csv.reader(io.StringIO(file.read_text(), newline="")))[1:]
        ] == copy_text


@pytest.mark.parametrize(
    ("pg_type", "values"),
    [("time", ("12:00:00.1", "23:59:59.999999")), ("timetz", ("12:00:00.1+02", "13:00:00-00:17:30"))],
)
def test_backfill_marks_a_time_keys_partitions_as_the_triggers_do(
    pg_type: str, values: tuple[str, str], pg_url: str, tmp_path: Path
) -> None:
    """A partition key of type time or timetz: the triggers recorded it as PostgreSQL's text and
    its files were exported, while backfill (and scans), which read the keys as Python times, set
    every row aside ("of a type no key holds", naming tk=12:00:00.100000) and marked nothing."""
    root = _keyed_by_time(tmp_path, pg_url, pg_type, 'zone = "UTC"', CAPTURES["trigger"])
    assert cli(root, "install").returncode == 0
    _insert(pg_url, values)
    ran = cli(root, "run")
    assert ran.returncode == 0 and "2 exported" in ran.stdout, ran.stdout + ran.stderr
    exported = sorted(p.name for p in (root / "out").iterdir() if not p.name.startswith("_"))
    assert exported == sorted(values)
    backfilled = cli(root, "backfill", "x")
    assert backfilled.returncode == 0 and "marked 2 partition(s)" in backfilled.stdout, backfilled.stderr
    assert "no key holds" not in backfilled.stderr, backfilled.stderr
    again = cli(root, "run")
    assert again.returncode == 0 and "0 exported, 2 unchanged" in again.stdout, again.stdout + again.stderr
    assert sorted(p.name for p in (root / "out").iterdir() if not p.name.startswith("_")) == exported


CAPTURES = {
    "trigger": 'mode = "trigger"\ntable = "tk"\ntime = "t"',
    "scan": 'mode = "scan"\ntable = "tk"\ntime = "t"\ncursor = "at"',
    "explicit": 'mode = "explicit"',
}


def _keyed_by_time(tmp_path: Path, pg_url: str, pg_type: str, zone: str, capture: str) -> Path:
    """Table ``tk`` (``id``, the key ``tk`` of ``pg_type``, its time ``t``, the time ``at`` each
    row was written) and a project whose task ``x`` writes a file per key and day of ``zone``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE tk (id int PRIMARY KEY, tk {pg_type}, t timestamptz,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    root = tmp_path / "proj"
    (root / "tasks/x").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "out"\n[defaults]\nformat = "csv"\nbackoff = "0s"\n'
    )
    (root / "tasks/x/select.sql").write_text("SELECT id, tk, t FROM tk")
    (root / "tasks/x/task.toml").write_text(
        f'keys = ["tk"]\npath = "{{tk}}/{{day:%Y%m%d}}.{{ext}}"\n[time]\ncolumn = "t"\n{zone}\n[capture]\n{capture}\n'
    )
    return root


def _insert(pg_url: str, keys: Sequence[str], *, first: int = 1, t: str = "2024-01-01 10:00+00") -> None:
    """A row of table ``tk`` at ``t`` for each of ``keys``, their ids counted from ``first``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for i, key in enumerate(keys, first):
            conn.execute("INSERT INTO tk (id, tk, t) VALUES (%s, %s, %s)", (i, key, t))


def _rows_by_key(root: Path, files: str = "*/20240101.csv") -> dict[str, list[list[str]]]:
    """Each exported file's rows (id, tk), by the key its folder names."""
    return {
        file.parent.name: [row[:2] for row in list(csv.reader(io.StringIO(file.read_text(), newline="")))[1:]]
        for file in (root / "out").glob(files)
    }


# How a table's partitions are found: a backfill, a scan, or the triggers with zones from zone_sql.
FINDERS = {
    "backfill": ('zone = "UTC"', CAPTURES["explicit"]),
    "scan": ('zone = "UTC"', CAPTURES["scan"]),
    "zone_sql": ("zone_sql = \"SELECT DISTINCT tk, 'UTC' FROM tk\"", CAPTURES["trigger"]),
}


@pytest.mark.parametrize("finder", list(FINDERS))
@pytest.mark.parametrize(
    ("pg_type", "values"),
    [("time", ("24:00:00", "12:00:00.1")), ("timetz", ("24:00:00+00", "00:00:00.000001-00:17:30"))],
)
def test_a_time_key_python_cannot_hold_is_a_partition_like_any_other(
    finder: str, pg_type: str, values: tuple[str, str], pg_url: str, tmp_path: Path
) -> None:
    """24:00:00, which PostgreSQL takes and Python's time cannot hold: a backfill read the keys
    as Python times and failed ("can't parse time '24:00:00'", exit 1), as did every run of a
    scan, and no partition of the table was marked. zone_sql's keys were Python times too: with
    24:00:00 every run failed (exit 2), and with 12:00:00.1 on a TypeError traceback (exit 1)."""
    root = _keyed_by_time(tmp_path, pg_url, pg_type, *FINDERS[finder])
    if finder == "zone_sql":
        assert cli(root, "install").returncode == 0
    _insert(pg_url, values)
    if finder == "backfill":
        filled = cli(root, "backfill", "x")
        assert filled.returncode == 0 and "marked 2 partition(s)" in filled.stdout, (
            filled.stdout + filled.stderr
        )
    ran = cli(root, "run")
    assert ran.returncode == 0 and "x: 2 exported" in ran.stdout, ran.stdout + ran.stderr
    assert _rows_by_key(root) == {values[0]: [["1", values[0]]], values[1]: [["2", values[1]]]}
    status = cli(root, "status")
    assert status.returncode == 0 and "0 pending, 0 claimed, 2 exported" in status.stdout, status.stderr
    again = cli(root, "run")
    assert again.returncode == 0 and "x: 0 exported" in again.stdout, again.stdout + again.stderr
    _insert(pg_url, values[:1], first=3, t="2024-01-01 11:00+00")  # a late row of 24:00:00's day
    if finder == "backfill":
        assert cli(root, "backfill", "x").returncode == 0
    late = cli(root, "run")
    assert late.returncode == 0 and "x: 1 exported" in late.stdout, late.stdout + late.stderr
    assert _rows_by_key(root) == {
        values[0]: [["1", values[0]], ["3", values[0]]],
        values[1]: [["2", values[1]]],
    }


@pytest.mark.parametrize(
    ("pg_type", "values"),
    [("time", ("24:00:00", "12:00:00.1")), ("timetz", ("24:00:00+00", "12:00:00+02"))],
)
def test_an_incremental_tasks_time_entities_are_their_text(
    pg_type: str, values: tuple[str, str], pg_url: str, tmp_path: Path
) -> None:
    """An incremental task finds its entities with a query read through psycopg: an entity of
    24:00:00 failed every run ("can't parse time '24:00:00'", exit 2), and another was named by
    Python's text (12:00:00.100000, 12:00:00+02:00), not the text its file holds."""
    root = _keyed_by_time(tmp_path, pg_url, pg_type, 'zone = "UTC"', CAPTURES["explicit"])
    (root / "tasks/x/task.toml").write_text(
        'kind = "incremental"\nentity = "tk"\ncursor = "t"\nbootstrap = "beginning"\npath = "{tk}/{start:%Y}.{ext}"\n'
    )
    _insert(pg_url, values)
    ran = cli(root, "run")
    assert ran.returncode == 0 and "x: 2 exported" in ran.stdout, ran.stdout + ran.stderr
    assert all(f"entity={value}: 1 rows -> {value}/" in ran.stdout for value in values), ran.stdout
    assert _rows_by_key(root, "*/*.csv") == {values[0]: [["1", values[0]]], values[1]: [["2", values[1]]]}
    again = cli(root, "run")
    assert again.returncode == 0 and "x: 0 exported" in again.stdout, again.stdout + again.stderr
