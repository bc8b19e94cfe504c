"""Local days that do not start at midnight, do not exist, or sit far from UTC: every reading at
a day's first and last instant lands in exactly one file, the one of its local day computed
here independently with zoneinfo, on every source."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest
from test_export import _file_for, _now_clear_of_midnight, _setup, backend  # noqa: F401

from sluicegate import engine
from support import files, load, read_csv

UTC = dt.UTC
EDGES = {
    "America/Santiago": [dt.date(2024, 4, 6), dt.date(2024, 4, 7), dt.date(2024, 9, 7), dt.date(2024, 9, 8)],
    "America/Havana": [dt.date(2024, 3, 9), dt.date(2024, 3, 10), dt.date(2024, 11, 2), dt.date(2024, 11, 3)],
    "Pacific/Apia": [dt.date(2011, 12, 29), dt.date(2011, 12, 30), dt.date(2011, 12, 31)],
    "Australia/Lord_Howe": [dt.date(2024, 4, 7), dt.date(2024, 10, 6)],
    "Asia/Kathmandu": [dt.date(2024, 6, 1)],
    "Pacific/Kiritimati": [dt.date(2024, 6, 1)],
    "Etc/GMT+12": [dt.date(2024, 6, 1)],
}


def _instants(zone: str, day: dt.date) -> list[dt.datetime]:
    """The first and last second of ``day`` in ``zone`` (none for a day the zone skips)."""
    tz = zoneinfo.ZoneInfo(zone)
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(UTC)
    return [] if end <= start else [start, end - dt.timedelta(seconds=1)]


@pytest.mark.parametrize("boundary", ["start", "end"])
def test_first_and_last_instants_of_odd_local_days_land_in_their_own_file(
    backend: str,  # noqa: F811
    tmp_path: Path,
    boundary: str,
) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv", boundary=boundary)
    expected: dict[Path, list[str]] = {}
    out = tmp_path / "out"
    for loc, (zone, days) in enumerate(EDGES.items(), start=1):
        db.location(loc, zone)
        tz = zoneinfo.ZoneInfo(zone)
        instants = sorted(
            {
                t + dt.timedelta(seconds=1 if boundary == "end" else 0)
                for d in days
                for t in _instants(zone, d)
            }
        )
        db.insert(loc, instants)
        for t in instants:
            day = (t - dt.timedelta(microseconds=1) if boundary == "end" else t).astimezone(tz).date()
            expected.setdefault(_file_for(out, "csv", loc, day), []).append(t.astimezone(tz).isoformat())
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary
    got = {p: sorted(r["datetime"] for r in read_csv(p)) for p in files(out)}
    assert got == {p: sorted(v) for p, v in expected.items()}


@pytest.mark.mariadb
@pytest.mark.parametrize("wall", ["America/Havana", "Australia/Lord_Howe"])
def test_wall_clock_datetimes_of_another_zone_land_in_their_own_file(
    tmp_path: Path, mariadb_url: str, wall: str
) -> None:
    """MariaDB DATETIMEs holding ``wall``'s wall clock (``datetime_zone``), partitions in each
    location's own zone: every reading read as its wall time's instant (the later one of a time
    the clocks pass twice) is in the file of that instant's local day, and in no other."""
    root, db = _setup(tmp_path, mariadb_url, fmt="csv")
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text().replace('boundary = "start"', f'boundary = "start"\ndatetime_zone = "{wall}"')
    )
    out, wz = tmp_path / "out", zoneinfo.ZoneInfo(wall)
    expected: dict[Path, list[str]] = {}
    for loc, (zone, days) in enumerate(EDGES.items(), start=1):
        db.location(loc, zone)
        tz = zoneinfo.ZoneInfo(zone)
        instants = sorted({t for d in days for t in _instants(zone, d)})
        walls = sorted({t.astimezone(wz).replace(tzinfo=None) for t in instants})
        db.insert(loc, [w.replace(tzinfo=UTC) for w in walls])  # stored as the naive wall clock
        for w in walls:
            t = w.replace(tzinfo=wz, fold=1).astimezone(UTC)
            expected.setdefault(_file_for(out, "csv", loc, t.astimezone(tz).date()), []).append(
                t.astimezone(tz).isoformat()
            )
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary
    got = {p: sorted(r["datetime"] for r in read_csv(p)) for p in files(out)}
    assert got == {p: sorted(v) for p, v in expected.items()}


def _whole_hours(zone: str, lo: dt.datetime, hi: dt.datetime) -> list[dt.datetime]:
    """Every instant in [lo, hi] at which ``zone``'s clock reads a whole hour, minute by minute."""
    tz, at, out = zoneinfo.ZoneInfo(zone), lo.replace(second=0, microsecond=0), []
    while at <= hi:
        if at.astimezone(tz).minute == 0:
            out.append(at)
        at += dt.timedelta(minutes=1)
    return out


@pytest.mark.parametrize(
    "zone,around",
    [
        ("Australia/Lord_Howe", dt.datetime(2024, 4, 6, 15, tzinfo=UTC)),  # 02:00 +11 back to 01:30 +10:30
        ("Australia/Lord_Howe", dt.datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),  # 02:00 +10:30 on to 02:30 +11
        ("America/Havana", dt.datetime(2024, 11, 3, 5, tzinfo=UTC)),  # 01:00 -04 back to 00:00 -05
        ("Asia/Kathmandu", dt.datetime(2024, 6, 1, tzinfo=UTC)),
    ],
)
def test_hour_partitions_hold_each_reading_once_across_odd_clock_changes(
    backend: str,  # noqa: F811
    tmp_path: Path,
    zone: str,
    around: dt.datetime,
) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv", zone=zone)
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text()
        .replace('grain = "day"', 'grain = "hour"')
        .replace("-{day:%Y%m%d}", "-{hour:%Y%m%dT%H%M%z}")
        .replace("year={day:%Y}/month={day:%m}", "h")
    )
    db.location(1, zone)
    readings = [
        around + dt.timedelta(minutes=15 * i) + dt.timedelta(seconds=s)
        for i in range(-12, 12)
        for s in (0, 899)
    ]
    db.insert(1, readings)
    marks = _whole_hours(zone, around - dt.timedelta(hours=5), around + dt.timedelta(hours=5))
    tz, out = zoneinfo.ZoneInfo(zone), tmp_path / "out"
    expected: dict[str, list[str]] = {}
    for t in readings:
        start = max(m for m in marks if m <= t).astimezone(tz)
        expected.setdefault(f"location-1-{start:%Y%m%dT%H%M%z}.csv", []).append(t.astimezone(tz).isoformat())
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary
    got = {p.name: sorted(r["datetime"] for r in read_csv(p)) for p in files(out)}
    assert got == {name: sorted(v) for name, v in expected.items()}


def test_a_local_day_26_hours_apart_is_complete_in_its_own_zone(backend: str, tmp_path: Path) -> None:  # noqa: F811
    """Pacific/Kiritimati (+14) and Etc/GMT+12 (-12): yesterday in each zone is exported, today waits."""
    root, db = _setup(tmp_path, backend, fmt="csv")
    zones = {1: "Pacific/Kiritimati", 2: "Etc/GMT+12", 3: "Asia/Kathmandu"}
    now = _now_clear_of_midnight(*zones.values())
    for loc, zone in zones.items():
        db.location(loc, zone)
        db.insert(loc, [now - dt.timedelta(hours=h) for h in range(60)])
    [summary] = engine.run(load(root))
    assert summary.failed == 0, summary
    out = tmp_path / "out"
    for loc, zone in zones.items():
        today = now.astimezone(zoneinfo.ZoneInfo(zone)).date()
        assert not _file_for(out, "csv", loc, today).exists(), zone
        assert _file_for(out, "csv", loc, today - dt.timedelta(days=1)).exists(), zone
