"""Tests for the OpenAQ-like test-data generator (sluicegate.generate)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import zoneinfo
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate.generate import PARAMETERS, TIMEZONES, GenerateResult, create_schema, generate

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
END = datetime(2024, 5, 1, 12, tzinfo=UTC)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def _count(path: Path) -> int:
    return int(_query(path, "SELECT count(*) FROM measurements")[0][0])


# --------------------------------------------------------------------------- SQLite bulk


def test_rows_count_is_exact(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    result = generate(_url(db), rows=1234, locations=20, end=END)
    assert isinstance(result, GenerateResult)
    assert result.rows == 1234
    assert result.locations == 20
    assert _count(db) == 1234
    # 60 sensors: 20 full hours plus 34 rows of the oldest hour; newest reading at END.
    assert result.end == END
    assert result.start == END - timedelta(hours=20)
    assert _query(db, "SELECT min(datetime), max(datetime) FROM measurements")[0] == (
        "2024-04-30T16:00:00Z",
        "2024-05-01T12:00:00Z",
    )
    assert _query(db, "SELECT count(*) FROM measurements WHERE datetime = '2024-04-30T16:00:00Z'") == [(34,)]
    assert result.seconds >= 0


def test_locations_sensors_and_timezones(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    generate(_url(db), rows=100, locations=len(TIMEZONES) + 3, end=END)
    locations = _query(db, "SELECT location_id, name, timezone, lat, lon FROM locations ORDER BY location_id")
    assert len(locations) == len(TIMEZONES) + 3
    assert {row[2] for row in locations} == set(TIMEZONES)
    for zone in (
        "Asia/Kolkata",
        "Australia/Adelaide",
        "Pacific/Chatham",
        "America/Chicago",
        "Europe/Brussels",
        "UTC",
        "America/Los_Angeles",
        "Pacific/Kiritimati",
        "Asia/Tehran",
        "Australia/Sydney",
        "America/Sao_Paulo",
        "Africa/Nairobi",
    ):
        assert zone in TIMEZONES
    for location_id, name, zone, lat, lon in locations:
        assert name == f"Site {location_id}"
        assert zone == TIMEZONES[(location_id - 1) % len(TIMEZONES)]
        zoneinfo.ZoneInfo(zone)  # a real IANA zone
        assert -90 <= lat <= 90 and -180 <= lon <= 180
    sensors = _query(db, "SELECT sensor_id, location_id, parameter, units FROM sensors ORDER BY sensor_id")
    assert len(sensors) == 3 * len(locations)
    assert sensors[:3] == [(11, 1, "pm25", "µg/m³"), (12, 1, "pm10", "µg/m³"), (13, 1, "o3", "ppm")]
    assert [(p, u) for _, _, p, u in sensors[:3]] == list(PARAMETERS)
    assert all(sid == loc * 10 + (sid % 10) and 1 <= sid % 10 <= 3 for sid, loc, _, _ in sensors)


def test_timestamps_are_exact_utc_text(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    generate(_url(db), rows=3000, locations=10, end=END, interval_minutes=15)
    rows = _query(db, "SELECT datetime, ingested_at, typeof(datetime), typeof(ingested_at) FROM measurements")
    assert len(rows) == 3000
    for reading, ingested, t1, t2 in rows:
        assert (t1, t2) == ("text", "text")
        assert TS_RE.match(reading), reading
        assert TS_RE.match(ingested), ingested
        parsed = datetime.strptime(reading, "%Y-%m-%dT%H:%M:%SZ")
        assert parsed.minute % 15 == 0 and parsed.second == 0
        assert ingested >= reading  # same fixed-width format: text order is time order


def test_values_are_plausible(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    generate(_url(db), rows=9000, locations=30, end=END)
    stats = dict(
        (p, (lo, hi, n))
        for p, lo, hi, n in _query(
            db,
            "SELECT parameter, min(value), max(value), count(value) FROM measurements "
            "JOIN sensors USING (sensor_id) GROUP BY parameter",
        )
    )
    assert set(stats) == {"pm25", "pm10", "o3"}
    assert all(n == 3000 for _, _, n in stats.values())
    assert stats["pm25"][0] > 0 and stats["pm25"][1] < 300
    assert stats["o3"][0] > 0 and stats["o3"][1] < 0.2
    assert _query(
        db,
        "SELECT count(*) FROM measurements m JOIN sensors s USING (sensor_id) "
        "WHERE m.location_id != s.location_id",
    ) == [(0,)]


def test_late_rows_exist_and_arrive_last(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    generate(_url(db), rows=20_000, locations=50, end=END, late_fraction=0.05)
    late = _query(
        db,
        "SELECT count(*), min(julianday(ingested_at) - julianday(datetime)), "
        "max(julianday(ingested_at) - julianday(datetime)) FROM measurements "
        "WHERE julianday(ingested_at) - julianday(datetime) > 1",
    )[0]
    assert 0.03 * 20_000 < late[0] < 0.07 * 20_000
    assert late[2] <= 4
    on_time = _query(
        db,
        "SELECT min((julianday(ingested_at) - julianday(datetime)) * 86400), "
        "max((julianday(ingested_at) - julianday(datetime)) * 86400) FROM measurements "
        "WHERE julianday(ingested_at) - julianday(datetime) <= 1",
    )[0]
    assert on_time[0] >= 299 and on_time[1] <= 541
    # Insertion (rowid) order is not chronological, and the late rows come last.
    by_rowid = [r[0] for r in _query(db, "SELECT datetime FROM measurements ORDER BY rowid")]
    assert by_rowid != sorted(by_rowid)
    last = _query(
        db,
        "SELECT count(*) FROM (SELECT * FROM measurements ORDER BY rowid DESC LIMIT ?) "
        "WHERE julianday(ingested_at) - julianday(datetime) > 1",
        (late[0],),
    )
    assert last == [(late[0],)]


def test_no_late_rows_and_ingested_at_never_in_future(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    before = datetime.now(UTC).replace(microsecond=0)
    result = generate(_url(db), rows=2000, locations=10, late_fraction=0.0)  # end defaults to now
    after = datetime.now(UTC)
    assert result.end <= after and result.end > after - timedelta(hours=1, seconds=5)
    assert result.end.minute == 0 and result.end.second == 0
    late_sql = "SELECT count(*) FROM measurements WHERE julianday(ingested_at) - julianday(datetime) > 1"
    assert _query(db, late_sql) == [(0,)]
    (max_ingested,) = _query(db, "SELECT max(ingested_at) FROM measurements")[0]
    assert datetime.strptime(max_ingested, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= after
    assert max_ingested >= before.strftime("%Y-%m-%dT%H:00:00Z")


def test_rerun_is_idempotent_and_later_end_adds_rows(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    url = _url(db)
    first = generate(url, rows=5000, locations=25, end=END, seed=7)
    snapshot = _query(db, "SELECT * FROM measurements ORDER BY sensor_id, datetime")
    again = generate(url, rows=5000, locations=25, end=END, seed=7)
    assert (first.rows, again.rows) == (5000, 0)
    assert _query(db, "SELECT * FROM measurements ORDER BY sensor_id, datetime") == snapshot
    assert _query(db, "SELECT count(*) FROM locations") == [(25,)]
    assert _query(db, "SELECT count(*) FROM sensors") == [(75,)]
    later = generate(url, rows=5000, locations=25, end=END + timedelta(hours=2), seed=7)
    assert later.rows == 2 * 75  # only the two new hours are new
    assert _count(db) == 5000 + 150
    create_schema(url)  # idempotent too
    assert _count(db) == 5150


def test_same_seed_same_data_other_seed_other_values(tmp_path: Path) -> None:
    rows = []
    for name, seed in (("a.db", 1), ("b.db", 1), ("c.db", 2)):
        generate(_url(tmp_path / name), rows=600, locations=10, end=END, seed=seed)
        rows.append(_query(tmp_path / name, "SELECT * FROM measurements ORDER BY sensor_id, datetime"))
    assert rows[0] == rows[1]
    assert [r[:3] for r in rows[0]] == [r[:3] for r in rows[2]]
    assert [r[3] for r in rows[0]] != [r[3] for r in rows[2]]


def test_days_sets_the_span(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    result = generate(_url(db), days=2, locations=4, end=END, interval_minutes=30)
    assert result.rows == 2 * 48 * 12
    assert result.start == END - timedelta(days=2) + timedelta(minutes=30)
    capped = generate(_url(tmp_path / "c.db"), days=2, rows=100, locations=4, end=END)
    assert capped.rows == 100


def test_progress_reports_running_count(tmp_path: Path) -> None:
    seen: list[int] = []
    result = generate(_url(tmp_path / "g.db"), rows=120_000, locations=100, end=END, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == result.rows == 120_000
    assert len(seen) > 2


def test_relative_and_absolute_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert generate("sqlite:///sub/rel.db", rows=10, locations=2, end=END).rows == 10
    assert (tmp_path / "sub" / "rel.db").exists()
    absolute = tmp_path / "abs.db"
    assert str(absolute).startswith("/")
    assert generate(f"sqlite:///{absolute}", rows=10, locations=2, end=END).rows == 10  # sqlite:////abs
    assert _count(absolute) == 10


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:hunter2@db/x",
        "sqlite://relative.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "not a url",
        "postgresql://user:hunter2@host/db?bogus_option=1",
        "postgresql://user:hun%zzter2@host/db",
    ],
)
def test_bad_urls_raise_value_error_without_password(url: str) -> None:
    with pytest.raises(ValueError, match="database URL") as info:
        generate(url, rows=1)
    assert "hunter2" not in str(info.value) and "hun%zzter2" not in str(info.value)


def test_missing_sqlite_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        generate(_url(tmp_path / "nope" / "g.db"), rows=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"rows": -1},
        {"rows": 10, "locations": 0},
        {"rows": 10, "late_fraction": 1.5},
        {"rows": 10, "interval_minutes": 0},
        {"rate_per_min": 60},
        {"rate_per_min": 0, "duration_s": 1},
        {"duration_s": 1},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(_url(tmp_path / "g.db"), **kwargs)


# --------------------------------------------------------------------------- SQLite steady


def test_steady_mode(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    generate(_url(db), rows=1800, locations=20, end=END)
    started = datetime.now(UTC).replace(microsecond=0)
    result = generate(_url(db), rate_per_min=1200, duration_s=1.6, locations=20, late_fraction=0.25, seed=3)
    finished = datetime.now(UTC)
    assert result.rows == 32  # floor(1200 / 60 * 1.6); nothing collides
    assert 1.5 <= result.seconds < 5
    rows = _query(
        db,
        "SELECT sensor_id, datetime, ingested_at FROM measurements WHERE datetime > ? OR ingested_at >= ?",
        ("2024-05-02", started.strftime("%Y-%m-%dT%H:%M:%SZ")),
    )
    assert len(rows) == 32
    late = 0
    for _, reading, ingested in rows:
        assert TS_RE.match(reading) and TS_RE.match(ingested)
        ing = datetime.strptime(ingested, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        rd = datetime.strptime(reading, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert started <= ing <= finished
        assert rd <= ing
        if ing - rd > timedelta(days=1):
            late += 1
        else:
            assert rd == ing
    assert 0 < late < 32
    assert _count(db) == 1800 + 32


def test_steady_mode_rows_cap(tmp_path: Path) -> None:
    result = generate(_url(tmp_path / "g.db"), rate_per_min=6000, duration_s=30, rows=150, locations=5)
    assert result.rows == 150
    assert result.seconds < 10


# --------------------------------------------------------------------------- PostgreSQL (conftest pg_url)


def test_postgres_bulk_small_and_idempotent(pg_url: str) -> None:
    result = generate(pg_url, rows=2000, locations=12, end=END, interval_minutes=15)
    assert result.rows == 2000
    assert generate(pg_url, rows=2000, locations=12, end=END, interval_minutes=15).rows == 0
    with psycopg.connect(pg_url) as conn:
        count, lo, hi, late = conn.execute(
            "SELECT count(*), min(datetime), max(datetime), "
            "count(*) FILTER (WHERE ingested_at - datetime > interval '1 day') FROM measurements"
        ).fetchone() or (None, None, None, None)
        assert count == 2000
        assert hi == END
        assert lo == END - timedelta(minutes=15 * (2000 // 36))
        assert late is not None and late > 0
        zones = {r[0] for r in conn.execute("SELECT timezone FROM locations").fetchall()}
        assert zones == set(TIMEZONES)
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name::text, data_type::text FROM information_schema.columns "
                "WHERE table_name = 'measurements'"
            ).fetchall()
        )
        assert types["datetime"] == types["ingested_at"] == "timestamp with time zone"


def test_postgres_bulk_fast_load_rebuilds_indexes(pg_url: str) -> None:
    create_schema(pg_url)
    with psycopg.connect(pg_url) as conn:
        before = sorted(
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'measurements'"
            ).fetchall()
        )
    result = generate(pg_url, rows=150_000, locations=50, end=END)
    assert result.rows == 150_000
    with psycopg.connect(pg_url) as conn:
        after = sorted(
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'measurements'"
            ).fetchall()
        )
        assert after == before and len(after) == 3
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (150_000,)
    later = generate(pg_url, rows=150_000, locations=50, end=END + timedelta(hours=1))
    assert later.rows == 150  # the non-empty path: only the newest hour is new


def test_postgres_steady(pg_url: str) -> None:
    result = generate(pg_url, rate_per_min=1200, duration_s=1.2, locations=10, late_fraction=0.0)
    assert result.rows == 24
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM measurements WHERE datetime = ingested_at").fetchone()
        assert row == (24,)


@pytest.mark.parametrize(("rows", "locations"), [(2000, 12), (150_000, 50), (200_000, 40)])
def test_postgres_rows_are_stored_in_time_order_at_every_size(pg_url: str, rows: int, locations: int) -> None:
    """The physical order is the ingest order (time, then sensor; late rows last), whatever the
    planner would pick for the join, so benchmarks of unsorted reads compare alike at any size."""
    generate(pg_url, rows=rows, locations=locations, end=END, late_fraction=0.0)
    with psycopg.connect(pg_url) as conn:
        [(out_of_order,)] = conn.execute(
            """SELECT count(*) FILTER (WHERE (datetime, sensor_id) < (prev_t, prev_s)) FROM (
                   SELECT datetime, sensor_id, lag(datetime) OVER w AS prev_t, lag(sensor_id) OVER w AS prev_s
                   FROM measurements WINDOW w AS (ORDER BY ctid)) AS s"""
        ).fetchall()
    assert out_of_order == 0
