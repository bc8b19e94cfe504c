"""End-to-end exports on real SQLite files and a real PostgreSQL server, to real files."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from sluicegate import engine, operations
from sluicegate.db import MARIADB
from sluicegate.destination_id import MARKER
from sluicegate.destinations.local import LocalDestination
from sluicegate.engine import Exporter, RunOptions
from sluicegate.exceptions import ConfigError, DestinationUnavailable
from sluicegate.ledger import Ledger
from support import Db, cli, files, hours, load, read_csv, read_parquet, write_project

UTC = dt.UTC
KOLKATA = "Asia/Kolkata"
CHATHAM = "Pacific/Chatham"


# Sources whose ledger is a SQLite file beside the project instead of the source database.
LEDGER_ELSEWHERE: set[str] = set()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("mariadb-sqlite-ledger", marks=pytest.mark.mariadb),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A source database URL: a SQLite file, or a fresh PostgreSQL or MariaDB database.

    The ledger is in the source database, or for ``mariadb-sqlite-ledger`` in a SQLite file
    (the inbox and the triggers stay in MariaDB).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    url: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    if request.param == "mariadb-sqlite-ledger":
        LEDGER_ELSEWHERE.add(url)
    return url


def _setup(tmp_path: Path, url: str, **kwargs: Any) -> tuple[Path, Db]:
    if url in LEDGER_ELSEWHERE:
        kwargs.setdefault("ledger", f"sqlite:///{tmp_path / 'ledger.db'}")
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), **kwargs)
    db = Db(url)
    project = load(root)
    if project.tasks["openaq"].capture.mode == "trigger":
        operations.install(project)
    return root, db


def _expected(
    db: Db, location_id: int, zone: str, boundary: str = "start"
) -> dict[dt.date, list[tuple[str, float]]]:
    """Independently compute each local day's rows (datetime text, value) of a location."""
    tz = zoneinfo.ZoneInfo(zone)
    out: dict[dt.date, list[tuple[str, float]]] = {}
    for when, value in db.rows(
        "SELECT datetime, value FROM measurements WHERE location_id = %s", (location_id,)
    ):
        instant = when if isinstance(when, dt.datetime) else dt.datetime.fromisoformat(when)
        shifted = instant - dt.timedelta(microseconds=1) if boundary == "end" else instant
        day = shifted.astimezone(tz).date()
        out.setdefault(day, []).append((instant.astimezone(tz).isoformat(), float(value)))
    return {day: sorted(rows) for day, rows in out.items()}


def _file_for(out: Path, fmt: str, location_id: int, day: dt.date) -> Path:
    ext = fmt
    return (
        out
        / f"records/{fmt}/locationid={location_id}/year={day:%Y}/month={day:%m}/location-{location_id}-{day:%Y%m%d}.{ext}"
    )


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_csv_files_equal_database_rows(backend: str, tmp_path: Path, fmt: str) -> None:
    root, db = _setup(tmp_path, backend, fmt=fmt)
    db.location(1, KOLKATA)
    db.location(2, CHATHAM)
    start = dt.datetime(2024, 3, 1, tzinfo=UTC)
    db.insert(1, hours(start, 72))
    db.insert(2, hours(start, 72))
    [summary] = engine.run(load(root))
    out = tmp_path / "out"
    for loc, zone in ((1, KOLKATA), (2, CHATHAM)):
        expected = _expected(db, loc, zone)
        for day, rows in expected.items():
            content = read_csv(_file_for(out, fmt, loc, day))
            assert list(content[0]) == [
                "location_id",
                "sensors_id",
                "location",
                "datetime",
                "lat",
                "lon",
                "parameter",
                "units",
                "value",
            ]
            assert [(r["datetime"], float(r["value"])) for r in content] == rows
            assert {r["units"] for r in content} == {"µg/m³"}
            assert {r["location"] for r in content} == {f"Site {loc}-{loc * 10}"}
    assert (
        summary.exported
        == len(files(out))
        == sum(len(_expected(db, loc, z)) for loc, z in ((1, KOLKATA), (2, CHATHAM)))
    )
    assert summary.rows == 144 and summary.failed == 0


def test_parquet_has_real_types(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="parquet")
    db.location(1, KOLKATA)
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 48))
    [summary] = engine.run(load(root))
    assert summary.exported == 3 and summary.failed == 0
    table = read_parquet(_file_for(tmp_path / "out", "parquet", 1, dt.date(2024, 3, 2)))
    schema = table.schema
    assert str(schema.field("datetime").type) == "timestamp[us, tz=Asia/Kolkata]"
    assert str(schema.field("value").type) == "double"
    if backend.startswith("postgresql"):
        assert str(schema.field("location_id").type) == "int64"
        assert str(schema.field("parameter").type) == "string"
    expected = _expected(db, 1, KOLKATA)[dt.date(2024, 3, 2)]
    got = [
        (t.isoformat(), v)
        for t, v in zip(table.column("datetime").to_pylist(), table.column("value").to_pylist(), strict=True)
    ]
    assert got == expected


def test_late_data_reexports_exactly_the_changed_partition(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv.gz")
    for loc in (1, 2, 3):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 5, 1, tzinfo=UTC), 72))
    [first] = engine.run(load(root))
    assert first.exported == 9
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in files(out)}
    late = dt.datetime(2024, 5, 2, 12, 30, tzinfo=UTC)
    db.insert(2, [late], value=99.0)
    [second] = engine.run(load(root))
    assert (second.exported, second.unchanged, second.failed) == (1, 0, 0)
    changed = _file_for(out, "csv.gz", 2, dt.date(2024, 5, 2))
    assert changed.stat().st_mtime_ns != before[changed]
    assert any(float(r["value"]) == 99.0 for r in read_csv(changed))
    assert all(p.stat().st_mtime_ns == m for p, m in before.items() if p != changed)
    # An update and a delete are captured too.
    db.update_value(3, dt.datetime(2024, 5, 3, 1, tzinfo=UTC), 7.25)
    [third] = engine.run(load(root))
    assert third.exported == 1
    assert any(float(r["value"]) == 7.25 for r in read_csv(_file_for(out, "csv.gz", 3, dt.date(2024, 5, 3))))


def _now_clear_of_midnight(*zones: str) -> dt.datetime:
    """The current instant, after waiting out the last seconds before a local midnight in ``zones``.

    Tests that compare "today" with what the exporter saw must not straddle a local midnight; the
    data's newest row is this instant (not the hour before it), so today always has a row.
    """
    while True:
        now = dt.datetime.now(UTC)
        to_midnight = min(
            (
                dt.datetime.combine(
                    now.astimezone(zoneinfo.ZoneInfo(z)).date(), dt.time(), zoneinfo.ZoneInfo(z)
                )
                + dt.timedelta(days=1)
                - now
            ).total_seconds()
            for z in zones
        )
        if to_midnight > 30:
            return now
        time.sleep(to_midnight + 0.5)


def test_incomplete_local_days_are_held_back(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv")
    zones = {1: CHATHAM, 2: KOLKATA, 3: "America/Chicago"}
    now = _now_clear_of_midnight(*zones.values())
    for loc, zone in zones.items():
        db.location(loc, zone)
        db.insert(loc, hours(now - dt.timedelta(hours=71), 72))
    [summary] = engine.run(load(root))
    out = tmp_path / "out"
    for loc, zone in zones.items():
        today = now.astimezone(zoneinfo.ZoneInfo(zone)).date()
        yesterday = today - dt.timedelta(days=1)
        assert not _file_for(out, "csv", loc, today).exists(), f"{zone}: today's local day was exported early"
        assert _file_for(out, "csv", loc, yesterday).exists(), f"{zone}: yesterday was not exported"
    [status] = operations.status(load(root))
    assert status["waiting"] == 3 and status["pending"] == 0 and summary.failed == 0


def test_settle_holds_back_recent_days(tmp_path: Path) -> None:
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 's.db'}", fmt="csv", settle="72h")
    now = _now_clear_of_midnight("UTC")
    db.location(1, "UTC")
    db.insert(1, hours(now - dt.timedelta(days=6), 24 * 6 + 1))
    [summary] = engine.run(load(root))
    # Rows on today-6 .. today. Days that ended at least 72 hours ago are complete:
    # today-6 .. today-4 (today-3 ended less than 72 hours ago); the other four wait.
    exported_days = sorted(p.name for p in files(tmp_path / "out"))
    assert summary.exported == len(exported_days) == 3
    assert operations.status(load(root))[0]["waiting"] == 4


def test_dst_days_in_brussels_have_23_and_25_hours(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv", zone="Europe/Brussels")
    db.location(1, "Europe/Brussels")
    db.insert(
        1,
        hours(dt.datetime(2024, 3, 29, 22, tzinfo=UTC), 72)
        + hours(dt.datetime(2024, 10, 25, 22, tzinfo=UTC), 72),
    )
    engine.run(load(root))
    out = tmp_path / "out"
    spring = read_csv(_file_for(out, "csv", 1, dt.date(2024, 3, 31)))
    autumn = read_csv(_file_for(out, "csv", 1, dt.date(2024, 10, 27)))
    assert len(spring) == 23 and len(autumn) == 25
    assert (
        spring[0]["datetime"] == "2024-03-31T00:00:00+01:00"
        and spring[-1]["datetime"] == "2024-03-31T23:00:00+02:00"
    )
    assert [r["datetime"] for r in autumn[2:4]] == ["2024-10-27T02:00:00+02:00", "2024-10-27T02:00:00+01:00"]


@pytest.mark.parametrize(
    "boundary,expected_day", [("start", dt.date(2024, 6, 2)), ("end", dt.date(2024, 6, 1))]
)
@pytest.mark.parametrize("fixed_zone", [False, True], ids=["zone_sql", "zone"])
def test_boundary_convention(
    backend: str, tmp_path: Path, boundary: str, expected_day: dt.date, fixed_zone: bool
) -> None:
    # With one fixed zone, PostgreSQL also joins daily partitions on the local date.
    root, db = _setup(tmp_path, backend, fmt="csv", boundary=boundary, zone=KOLKATA if fixed_zone else None)
    db.location(1, KOLKATA)
    midnight = dt.datetime(2024, 6, 2, tzinfo=zoneinfo.ZoneInfo(KOLKATA)).astimezone(UTC)
    db.insert(1, [midnight - dt.timedelta(seconds=1), midnight, midnight + dt.timedelta(seconds=1)])
    [summary] = engine.run(load(root))
    assert summary.rows == 3
    before, at, after = (
        f"2024-06-0{d}T{t}+05:30" for d, t in ((1, "23:59:59"), (2, "00:00:00"), (2, "00:00:01"))
    )
    by_day = {p.name: [r["datetime"] for r in read_csv(p)] for p in files(tmp_path / "out")}
    first, second = (
        _file_for(tmp_path / "out", "csv", 1, d).name for d in (dt.date(2024, 6, 1), dt.date(2024, 6, 2))
    )
    if boundary == "start":  # [start, end): midnight opens the new day
        assert by_day == {first: [before], second: [at, after]}
    else:  # (start, end]: midnight closes the day before
        assert by_day == {first: [before, at], second: [after]}
    assert at in by_day[_file_for(tmp_path / "out", "csv", 1, expected_day).name]


def test_duplicate_mark_skips_the_upload(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv.gz")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    engine.run(load(root))
    [path] = files(tmp_path / "out")
    before = (path.stat().st_mtime_ns, path.stat().st_ino)
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.unchanged) == (0, 1)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    # reexport forces a rewrite even though the bytes are equal.
    assert operations.reexport(load(root), "openaq", {"location_id": "1"}) == 1
    [forced] = engine.run(load(root))
    assert forced.exported == 1 and path.stat().st_ino != before[1]


def test_partition_changed_during_export_is_exported_again(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 2, 1, tzinfo=UTC), 24))
    other = Db(backend)
    calls = []

    with Exporter(load(root)) as exporter:
        publish = exporter.context.destination.publish

        def publish_then_ingest(staged: Any) -> None:
            publish(staged)
            if (
                not calls and staged.path != MARKER
            ):  # a late row commits after our snapshot, before our commit
                calls.append(1)
                other.insert(1, [dt.datetime(2024, 2, 1, 12, 30, tzinfo=UTC)], value=42.0)

        monkeypatch.setattr(exporter.context.destination, "publish", publish_then_ingest)
        # One exporter: a helper (workers "auto" is 2 on PostgreSQL) would publish unpatched.
        [first] = exporter.run_once(list(load(root).tasks.values()), RunOptions(workers=1))
    assert first.exported == 1
    [path] = files(tmp_path / "out")
    assert len(read_csv(path)) == 24
    assert operations.status(load(root))[0]["pending"] == 0  # not folded yet: the inbox holds it
    [second] = engine.run(load(root))
    assert second.exported == 1
    rows = read_csv(path)
    assert len(rows) == 25 and any(float(r["value"]) == 42.0 for r in rows)
    other.close()


def test_bad_path_values_are_rejected_and_others_export(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv", capture="explicit"
    )
    task = root / "tasks" / "bysite"
    task.mkdir()
    (task / "task.toml").write_text(
        'keys = ["site"]\npath = "{site}/{day}.csv"\n[time]\ncolumn = "datetime"\nzone = "UTC"\n'
    )
    (task / "select.sql").write_text(
        "SELECT l.name AS site, m.datetime, m.value FROM measurements m JOIN locations l USING (location_id)"
    )
    db = Db(url)
    names = {1: "good", 2: "../evil", 3: "a/b", 4: "..", 5: "tab\there"}
    for loc, name in names.items():
        db.location(loc, "UTC", name=name)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    project = load(root)
    for name in names.values():
        operations.mark(project, "bysite", {"site": name, "day": "2024-01-01"})
    [summary] = engine.run(project, ["bysite"])
    assert (summary.exported, summary.failed) == (1, 4)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files(tmp_path / "out")] == [
        "good/2024-01-01.csv"
    ]
    assert not list(tmp_path.rglob("*evil*"))
    [status] = operations.status(project, ["bysite"])
    assert status["failed"] == 4
    assert all("cannot be used in a file path" in f["error"] for f in status["failures"])


def test_destination_refusing_writes_backs_off_then_parks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv", extra_defaults="max_attempts = 2", backoff="1h")
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    db.location(2, "UTC")
    out = tmp_path / "out"
    out.mkdir()
    (out / "records").write_text("a file where a folder must go")
    [first] = engine.run(load(root))
    assert first.failed == 1 and "cannot write" in first.errors[0]
    st = operations.status(load(root))[0]
    assert (st["failed"], st["retrying"]) == (0, 1)  # transient: back in the queue, with backoff
    [waiting] = engine.run(load(root))
    assert (waiting.exported, waiting.failed) == (0, 0)  # not due yet
    db.conn.execute("UPDATE sluicegate_partitions SET next_attempt_at = 0")  # an hour passes
    [second] = engine.run(load(root))
    assert second.failed == 1
    st = operations.status(load(root))[0]
    assert st["failed"] == 1 and st["failures"][0]["attempts"] == 2
    (out / "records").unlink()
    assert operations.reset_failed(load(root), "openaq") == 1
    [third] = engine.run(load(root))
    assert third.exported == 1 and operations.status(load(root))[0]["failed"] == 0


def test_scan_mode_catches_late_commits_within_the_overlap(backend: str, tmp_path: Path) -> None:
    root, db = _setup(tmp_path, backend, fmt="csv", capture="scan")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 4, 1, tzinfo=UTC), 48))
    [first] = engine.run(load(root))
    assert first.exported == 2
    # A row for an old day arrives; its ingested_at is recent, so the next scan sees it.
    db.insert(1, [dt.datetime(2024, 4, 1, 6, 30, tzinfo=UTC)], value=5.0)
    [second] = engine.run(load(root))
    # Both days were ingested within the overlap window, so both are looked at again;
    # only the changed one is rewritten, the other is recognised by its checksum.
    assert (second.marked, second.exported, second.unchanged) == (2, 1, 1)
    assert any(
        float(r["value"]) == 5.0 for r in read_csv(_file_for(tmp_path / "out", "csv", 1, dt.date(2024, 4, 1)))
    )


def test_max_runtime_releases_what_it_cannot_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv")
    for loc in range(1, 31):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    ticks = iter(range(10_000))
    monkeypatch.setattr(engine.time, "monotonic", lambda: float(next(ticks)))  # one second per look
    [summary] = engine.run(load(root), options=RunOptions(max_runtime=12))
    monkeypatch.undo()
    assert summary.exported >= 1 and summary.released >= 1
    assert summary.exported + summary.released == 30
    st = operations.status(load(root))[0]
    assert st["claimed"] == 0 and st["pending"] == summary.released
    [rest] = engine.run(load(root))
    assert rest.exported == summary.released


def test_orphan_temp_files_are_removed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv", lease="1s")
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    folder = tmp_path / "out/records/csv/locationid=1/year=2024/month=01"
    folder.mkdir(parents=True)
    orphan = folder / ".location-1-20240101.csv.sluicegate-deadbeef.tmp"
    orphan.write_text("partial")
    old = orphan.stat().st_mtime - 10
    os.utime(orphan, (old, old))
    engine.run(load(root))
    assert not orphan.exists()
    assert [p.name for p in folder.iterdir()] == ["location-1-20240101.csv"]


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_without_the_adbc_driver_files_hold_the_same_rows(
    tmp_path: Path, pg_url: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallbacks (COPY for CSV, psycopg rows for Parquet) give the same content as the Arrow path."""
    from sluicegate.sources import arrow as arrow_source
    from sluicegate.sources import postgres as pg_source

    # Without the ADBC driver both sides would be the fallback, compared with itself.
    assert arrow_source.available(), "the ADBC PostgreSQL driver (the fast extra) is not installed"
    contents = []
    for use_arrow in (True, False):
        if not use_arrow:
            monkeypatch.setattr(arrow_source, "available", lambda: False)
            monkeypatch.setattr(pg_source, "arrow_available", lambda: False)
        sub = tmp_path / ("arrow" if use_arrow else "fallback")
        root, db = _setup(sub, pg_url, fmt=fmt, zone="Europe/Brussels") if use_arrow else (None, None)
        if use_arrow:
            db.location(1, "Europe/Brussels")
            db.insert(1, hours(dt.datetime(2024, 3, 30, 22, tzinfo=UTC), 30))
        else:
            root = write_project(
                sub / "proj",
                source=pg_url,
                destination=str(sub / "out"),
                fmt=fmt,
                zone="Europe/Brussels",
                ledger=None,
                task="openaq",
            )
            toml = root / "sluicegate.toml"
            toml.write_text(toml.read_text().replace("[ledger]", '[ledger]\nschema = "fallback"'))
            operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-03-31"})
        [summary] = engine.run(load(root))
        assert summary.failed == 0, summary.errors
        path = _file_for(sub / "out", fmt, 1, dt.date(2024, 3, 31))
        if fmt == "parquet":
            table = read_parquet(path)
            contents.append((str(table.schema), table.to_pylist()))
        else:
            contents.append(read_csv(path))
    assert contents[0] == contents[1]
    assert len(contents[0]) == 23 or len(contents[0][1]) == 23


@pytest.mark.parametrize("sync", ["file", "batch"])
def test_both_sync_modes_publish_whole_files_in_place(tmp_path: Path, sync: str) -> None:
    """``[destination] sync``: per-file fsync, or one syncfs per group of files (Linux)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv.gz")
    env = {"SLUICEGATE_DESTINATION__SYNC": sync}
    with Exporter(load(root, env)) as exporter:
        assert getattr(exporter.context.destination, "sync_mode", None) == sync
    for loc in (1, 2):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 5, 1, tzinfo=UTC), 48))
    [first] = engine.run(load(root, env))
    out = tmp_path / "out"
    assert first.exported == 4 and len(files(out)) == 4
    for loc in (1, 2):
        for day, rows in _expected(db, loc, "UTC").items():
            got = [(r["datetime"], float(r["value"])) for r in read_csv(_file_for(out, "csv.gz", loc, day))]
            assert sorted(got) == rows
    # A late row rewrites one file in place (a new inode); emptying a partition removes its file.
    changed = _file_for(out, "csv.gz", 1, dt.date(2024, 5, 2))
    inode = changed.stat().st_ino
    db.insert(1, [dt.datetime(2024, 5, 2, 12, 30, tzinfo=UTC)], value=42.0)
    db.conn.execute(
        "DELETE FROM measurements WHERE location_id = 2 AND datetime < ?",
        (db.ts(dt.datetime(2024, 5, 2, tzinfo=UTC)),),
    )
    [second] = engine.run(load(root, env))
    assert second.exported == 2 and second.failed == 0
    assert changed.stat().st_ino != inode and any(float(r["value"]) == 42.0 for r in read_csv(changed))
    assert not _file_for(out, "csv.gz", 2, dt.date(2024, 5, 1)).exists()
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == [] and len(files(out)) == 3


def test_unknown_sync_mode_is_a_configuration_error(tmp_path: Path) -> None:
    root, _ = _setup(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(
        ConfigError, match=r"\[destination\] sync: 'fast' is not a sync mode; use auto, batch or file"
    ):
        load(root, {"SLUICEGATE_DESTINATION__SYNC": "fast"})


def test_a_failed_group_sync_leaves_later_files_queued(tmp_path: Path) -> None:
    """``sync = "batch"``: a commit group's failure must not touch files published for a later group."""
    dest = LocalDestination(str(tmp_path / "out"), sync="batch")
    staged = {}
    for name in ("a.csv", "b.csv"):
        staged[name] = dest.stage(name)
        staged[name].file.write(f"{name}\n".encode())
        dest.publish(staged[name])
    (tmp_path / "out" / "a.csv").mkdir()  # a's rename fails: a folder, not empty, holds its name
    (tmp_path / "out" / "a.csv" / "keep").write_text("x")
    with pytest.raises(DestinationUnavailable, match="cannot make files under"):
        dest.sync([staged["a.csv"]])
    assert not (tmp_path / "out" / "b.csv").exists()  # b belongs to a later commit: still queued
    dest.sync([staged["b.csv"]])
    assert (tmp_path / "out" / "b.csv").read_text() == "b.csv\n"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


def test_a_batch_sync_reaches_the_file_system_of_a_deleted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync = "batch"`` syncs a file system per folder involved: a deletion under a folder that
    is another mount (no rename there) must be made durable too, not only the root's."""
    from sluicegate.destinations import local

    dest = LocalDestination(str(tmp_path / "out"), sync="batch")
    gone = tmp_path / "out" / "other-mount" / "old.csv"
    gone.parent.mkdir(parents=True)
    gone.write_text("x\n")
    seen: list[list[str]] = []
    real = local._file_systems
    monkeypatch.setattr(local, "_file_systems", lambda folders: seen.append(folders) or real(folders))
    dest.delete("other-mount/old.csv")
    staged = dest.stage("kept.csv")
    staged.file.write(b"y\n")
    dest.publish(staged)
    dest.sync()
    assert not gone.exists() and (tmp_path / "out" / "kept.csv").read_text() == "y\n"
    assert [str(gone.parent) in folders for folders in seen] == [True]
    dest.sync()  # nothing new since: no second pass over the deleted file's folder
    assert len(seen) == 1


def test_a_declared_primary_key_orders_rows_instead_of_every_column(backend: str, tmp_path: Path) -> None:
    """With ``primary_key`` the rows are sorted by it alone; `check` rejects a key the select lacks."""
    root, db = _setup(tmp_path, backend, fmt="csv")
    task = root / "tasks" / "byparam"
    task.mkdir()
    (task / "select.sql").write_text((root / "tasks/openaq/select.sql").read_text())
    (task / "task.toml").write_text(
        'keys = ["parameter"]\npath = "{parameter}.{ext}"\nprimary_key = ["datetime", "sensors_id"]\n'
        '[capture]\nmode = "explicit"\n'
    )
    for loc in (1, 2, 3):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 5, 1, tzinfo=UTC), 4))
    assert cli(root, "mark", "byparam", "parameter=pm25").returncode == 0
    [summary] = engine.run(load(root), ["byparam"])
    assert summary.exported == 1 and summary.rows == 12
    rows = [(r["datetime"], int(r["sensors_id"])) for r in read_csv(tmp_path / "out" / "pm25.csv")]
    # Every column in select order would put all of location 1 first; the key interleaves them.
    assert rows == sorted(rows) and [s for _, s in rows[:3]] == [10, 20, 30]
    (task / "task.toml").write_text((task / "task.toml").read_text().replace('"sensors_id"]', '"sensor"]'))
    check = cli(root, "check")
    assert check.returncode == 2
    assert "primary_key: 'sensor' is not a column of select.sql's result" in check.stderr
    (task / "task.toml").write_text(
        (task / "task.toml").read_text().replace('["datetime", "sensor"]', '"datetime"')
    )
    bad = cli(root, "check")
    assert bad.returncode == 2 and "primary_key: use a list of column names" in bad.stderr


def test_text_with_commas_quotes_and_line_breaks_reads_back(tmp_path: Path, pg_url: str) -> None:
    """A batch whose text holds CR/LF cannot be split on line ends: each file still reads back whole."""
    root, db = _setup(tmp_path, pg_url, fmt="csv", zone="UTC")
    awkward = 'Quai "Nord", 3\r\nGent'
    db.location(1, "UTC", name=awkward)
    db.location(2, "UTC")
    for loc in (1, 2):
        db.insert(loc, hours(dt.datetime(2024, 5, 1, tzinfo=UTC), 24))
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0)
    for loc, name in ((1, awkward), (2, "Site 2")):
        rows = read_csv(_file_for(tmp_path / "out", "csv", loc, dt.date(2024, 5, 1)))
        assert len(rows) == 24 and {r["location"] for r in rows} == {f"{name}-{loc * 10}"}
        assert [float(r["value"]) for r in rows] == [1.5 + i / 8 for i in range(24)]


# A blocks task reading the source (blocks tasks do not read MariaDB sources yet).
BLOCKS_TASK = """kind = "blocks"
zone = "UTC"
key = "provider"
keys = ["lime"]
stages = ["extract", "publish"]
[extract]
time = "ended_at"
path = "{stage}/{provider}/{label}.jsonl"
[publish]
path = "csv/{provider}/{block:%Y%m%dT%H%M%z}.{ext}"
format = "csv"
columns = { ride = "int", provider = "text", ended_at = "timestamptz" }
"""


def _empty(cur: Any, prefix: str, mariadb: bool) -> None:
    """Empty a ledger as a restored empty backup is: no partitions, no task's destination."""
    quoted = "`key`" if mariadb else "key"  # a reserved word on MariaDB
    cur.execute(f"DELETE FROM {prefix}partitions")
    cur.execute(f"DELETE FROM {prefix}meta WHERE substr({quoted}, 1, 12) = 'destination:'")


def test_a_ledger_that_records_nothing_over_a_change_feed_is_refused(tmp_path: Path, backend: str) -> None:
    """An emptied ledger (and on PostgreSQL a mistyped [ledger] schema, which made a new one) over
    a destination holding manifests: the run exported everything again as new; now it refuses
    until RunOptions(new_ledger=True), after which the ledger is taken as it is."""
    root, db = _setup(tmp_path, backend)
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    assert engine.run(load(root))[0].exported == 2
    s = load(root).settings
    if s.ledger_url.startswith("postgresql"):
        toml = root / "sluicegate.toml"
        toml.write_text(toml.read_text().replace("[ledger]", '[ledger]\nschema = "sluicegat"'))
        with pytest.raises(ConfigError, match=r"\(schema sluicegat\) records no export"):
            engine.run(load(root))
        toml.write_text(toml.read_text().replace('schema = "sluicegat"', ""))
    with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:  # restored from an empty backup
        ledger.core.in_transaction(lambda cur: _empty(cur, ledger.core.prefix, ledger.dialect is MARIADB))
    with pytest.raises(ConfigError, match=f"destination {tmp_path / 'out'} already holds"):
        engine.run(load(root))
    assert engine.run(load(root), options=RunOptions(new_ledger=True))[0].failed == 0
    engine.run(load(root))


def test_a_new_project_over_another_tools_manifests_folder_is_not_refused(tmp_path: Path) -> None:
    """The lost-ledger check took any file under _manifests/ for sluicegate's change feed: a new
    project whose destination held another tool's _manifests/ folder (or a stray .DS_Store) was
    refused as a lost ledger. The feed's reader skips such files; so does the check now, and a
    real manifest among them is still found."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    other = tmp_path / "out" / "_manifests"
    (other / "other-tool").mkdir(parents=True)
    (other / "other-tool" / "state.json").write_text("{}")
    (other / ".DS_Store").write_bytes(b"\0")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    assert engine.run(load(root))[0].exported == 2
    s = load(root).settings
    with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:  # restored from an empty backup
        ledger.core.in_transaction(lambda cur: _empty(cur, ledger.core.prefix, ledger.dialect is MARIADB))
    with pytest.raises(ConfigError, match="already holds sluicegate's change feed"):
        engine.run(load(root))


def test_a_run_to_another_destination_than_the_ledger_records_is_refused_until_moved(
    tmp_path: Path, backend: str
) -> None:
    """Two projects on one ledger (one task name, their own destinations) took each other's
    partitions: one's re-export was exported to the other's destination and lost unseen. Now the
    ledger records the id of each task's destination; a run to another one refuses (a dry run
    too) until RunOptions(move_destination=True). The same folder mounted at another path (a
    worker on another machine) is the same destination."""
    root, db = _setup(tmp_path, backend)
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    assert engine.run(load(root))[0].exported == 2
    toml = root / "sluicegate.toml"
    text = toml.read_text()
    (tmp_path / "mount").symlink_to(tmp_path / "out")
    toml.write_text(text.replace(str(tmp_path / "out"), str(tmp_path / "mount")))
    assert engine.run(load(root))[0].failed == 0  # the same destination under another path
    toml.write_text(text.replace(str(tmp_path / "out"), str(tmp_path / "moved")))
    for options in (RunOptions(), RunOptions(dry_run=True)):
        with pytest.raises(ConfigError) as refused:
            engine.run(load(root), options=options)
        message = str(refused.value)
        assert f"task openaq exports to the destination {tmp_path / 'out'}" in message
        assert f"not to {tmp_path / 'moved'} (which holds no _sluicegate/destination-id" in message
        assert "--move-destination" in message
    assert not (tmp_path / "moved").exists() or not any((tmp_path / "moved").iterdir())
    assert engine.run(load(root), options=RunOptions(move_destination=True))[0].failed == 0
    assert engine.run(load(root))[0].failed == 0  # moved on purpose once: later runs go on
    toml.write_text(text)
    with pytest.raises(ConfigError, match=f"exports to the destination {tmp_path / 'moved'}"):
        engine.run(load(root))


def test_check_says_which_tasks_their_first_run_binds_to_the_destination(tmp_path: Path) -> None:
    """check said nothing of a task whose destination the ledger does not record yet, so a mistyped
    [destination] url went unseen until a run bound it (then needing --move-destination). Now it
    says so, as information: exit 0, and no more once a run bound it."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    proc = cli(root, "check")
    assert proc.returncode == 0 and "ok: every task checked" in proc.stdout, proc.stdout + proc.stderr
    [note] = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert "task openaq is not bound to a destination yet" in note and str(tmp_path / "out") in note
    assert cli(root, "run").returncode == 0
    proc = cli(root, "check")
    assert proc.returncode == 0 and "not bound" not in proc.stderr, proc.stderr


def _bound(tmp_path: Path) -> tuple[Path, Path]:
    """A project (SQLite source and ledger, folder destination) after a first run bound its task
    to the destination; its root and the destination's id file."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    assert cli(root, "run").returncode == 0
    return root, tmp_path / "out" / MARKER


def test_check_reports_a_bound_destination_whose_id_file_is_gone(tmp_path: Path) -> None:
    """A destination whose _sluicegate/destination-id was deleted (a lifecycle rule, an operator who
    emptied it) while the ledger records its id: every run refused, and check said "ok". Now check
    exits 2 with one line naming the id file and what to do; a run refuses still."""
    root, marker = _bound(tmp_path)
    recorded = marker.read_text().strip()
    marker.unlink()
    assert cli(root, "run").returncode == 2
    proc = cli(root, "check")
    assert proc.returncode == 2 and "ok: every task" not in proc.stdout, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{marker} is missing" in line and recorded in line and "task openaq" in line, line
    assert "run --move-destination` once" in line, line
    assert not marker.exists()  # check writes no id
    marker.write_text("0123456789abcdef0123456789abcdef\n")  # another project's id
    proc = cli(root, "check")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"holds the id 0123456789abcdef0123456789abcdef, not {recorded}" in proc.stderr
    assert cli(root, "run", "--move-destination").returncode == 0
    proc = cli(root, "check")
    assert proc.returncode == 0 and "ok: every task checked" in proc.stdout, proc.stderr


@pytest.mark.parametrize("held", [b"", b"hello world\n", b"\xff\xfe\n"], ids=["empty", "text", "binary"])
def test_a_destination_id_file_holding_no_id_is_refused_naming_it(tmp_path: Path, held: bytes) -> None:
    """An emptied or overwritten _sluicegate/destination-id: an empty one was taken for an id (a new
    project bound it, and any other empty one matched it), text said "exports to the destination
    OUT, not to OUT", and bytes that are not ASCII only logged a warning and the run went on
    unchecked. Now each run exits 2 with one line naming the file and what to do."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 'source.db'}")
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    marker = tmp_path / "out" / MARKER
    for first in (True, False):  # a new project's first run, then a later one
        if not first:
            assert cli(root, "run").returncode == 0
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(held)
        proc = cli(root, "run")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{marker} holds no sluicegate destination id" in proc.stderr
        assert "--move-destination" in proc.stderr
        assert marker.read_bytes() == held
        marker.unlink()
    assert cli(root, "run", "--move-destination").returncode == 0
    assert cli(root, "run").returncode == 0


def test_a_folder_where_the_destination_id_file_belongs_is_refused_naming_it(tmp_path: Path) -> None:
    """A folder at _sluicegate/destination-id could not be read, which the check took for an
    outage: it logged a warning and every run went on unchecked. Now the run exits 2 naming it."""
    root, marker = _bound(tmp_path)
    marker.unlink()
    marker.mkdir()
    proc = cli(root, "run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{marker} is a folder, not a file" in proc.stderr
    assert marker.is_dir()


def test_a_destination_holding_another_id_at_the_same_url_is_refused_naming_both_ids(tmp_path: Path) -> None:
    """Another project's destination at the same URL (one bucket name on two endpoints, a folder
    restored from another project's copy) was refused with "exports to the destination OUT, not to
    OUT", which reads as no reason at all. Now the line names the file and both ids."""
    root, marker = _bound(tmp_path)
    recorded = marker.read_text().strip()
    marker.write_text("0123456789abcdef0123456789abcdef\n")  # the other project's
    proc = cli(root, "run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"(whose {MARKER} holds the id 0123456789abcdef0123456789abcdef, not {recorded})" in proc.stderr


def test_two_projects_first_runs_at_once_on_one_ledger_do_not_both_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two projects (staging, production: one source, one ledger, their own destinations) ran for
    the first time at once: both found no destination recorded, the ledger kept the first to
    bind, and the other ran anyway, taking partitions into its own destination (refused only at
    its next run). Now the run whose destination the ledger did not take refuses at once."""
    import threading

    from sluicegate.ledger.found import FoundStore

    url = f"sqlite:///{tmp_path / 'source.db'}"
    roots = [
        write_project(tmp_path / name, source=url, destination=str(tmp_path / f"out-{name}"))
        for name in ("staging", "production")
    ]
    db = Db(url)
    operations.install(load(roots[0]))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    both, destinations = threading.Barrier(2), FoundStore.destinations

    def looked(self: FoundStore) -> dict[str, str]:
        found = destinations(self)
        if not found:  # both projects look before either records its destination
            both.wait(timeout=10)
        return found

    monkeypatch.setattr(FoundStore, "destinations", looked)
    outcomes: dict[int, Any] = {}

    def first_run(i: int) -> None:
        try:
            outcomes[i] = engine.run(load(roots[i]))[0]
        except Exception as exc:  # the test reports it
            outcomes[i] = exc

    runs = [threading.Thread(target=first_run, args=(i,)) for i in range(2)]
    for r in runs:
        r.start()
    for r in runs:
        r.join()
    refused = [i for i, o in outcomes.items() if isinstance(o, ConfigError)]
    assert len(refused) == 1, outcomes
    assert "--move-destination" in str(outcomes[refused[0]])
    assert files(tmp_path / f"out-{('staging', 'production')[refused[0]]}") == []
    assert outcomes[1 - refused[0]].exported == 2


@pytest.mark.mariadb
def test_a_kind_not_on_mariadb_yet_exits_2_without_a_traceback(tmp_path: Path, mariadb_url: str) -> None:
    root, _db = _setup(tmp_path, mariadb_url)
    task = root / "tasks" / "old"
    task.mkdir()
    (task / "task.toml").write_text(BLOCKS_TASK)
    (task / "select.sql").write_text("SELECT 1 AS ride, 'lime' AS provider, NOW() AS ended_at")
    proc = cli(root, "run", "old")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "kind: 'blocks' is not supported on MariaDB/MySQL sources yet" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.mariadb
def test_check_install_status_and_backfill_on_mariadb(tmp_path: Path, mariadb_url: str) -> None:
    root, db = _setup(tmp_path, mariadb_url)
    db.location(1, KOLKATA)
    db.insert(1, hours(dt.datetime(2024, 3, 1, tzinfo=UTC), 30))
    checked = cli(root, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    status = cli(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["inbox"] == 30  # one inbox row per inserted row
    assert json.loads(status.stdout)[0]["stale_claims"] == 0  # MariaDB's stale_claims statement runs
    backfilled = cli(root, "backfill", "openaq")
    assert backfilled.returncode == 0, backfilled.stderr
    ran = cli(root, "run", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)[0]["exported"] == len(_expected(db, 1, KOLKATA)) == 2


@pytest.mark.mariadb
@pytest.mark.parametrize("how", ["trigger", "scan", "backfill"])
def test_datetime_holding_wall_clock_times_of_a_named_zone(
    tmp_path: Path, mariadb_url: str, how: str
) -> None:
    """``[time] datetime_zone``: the DATETIME values are Brussels wall-clock times. 23:30 on 10 March
    is 22:30 UTC and belongs to 10 March (read as UTC it would be 00:30 on the 11th, in the wrong
    file); 02:30 on 27 October, which the clocks pass twice, is the later one (+01:00). Each way
    of capturing (trigger, scan, backfill) marks the right days."""
    brussels = "Europe/Brussels"
    root, db = _setup(tmp_path, mariadb_url, zone=brussels, capture="explicit" if how == "backfill" else how)
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text().replace('boundary = "start"', f'boundary = "start"\ndatetime_zone = "{brussels}"')
    )
    db.location(1, brussels)
    wall = [
        dt.datetime(2024, 3, 10, 23, 30),
        dt.datetime(2024, 3, 11, 0, 30),
        dt.datetime(2024, 10, 27, 2, 30),
    ]
    db.insert(1, [w.replace(tzinfo=UTC) for w in wall])  # Db stores an aware time as its naive UTC text
    if how == "backfill":
        assert cli(root, "backfill", "openaq").returncode == 0
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (3, 0), summary
    out = tmp_path / "out"
    written = {
        day: [r["datetime"] for r in read_csv(_file_for(out, "csv", 1, day))]
        for day in (dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 10, 27))
    }
    assert written == {
        dt.date(2024, 3, 10): ["2024-03-10T23:30:00+01:00"],
        dt.date(2024, 3, 11): ["2024-03-11T00:30:00+01:00"],
        dt.date(2024, 10, 27): ["2024-10-27T02:30:00+01:00"],
    }
    assert len(files(out)) == 3


def test_backfill_on_sqlite_marks_the_rows_at_the_last_time(tmp_path: Path) -> None:
    """julianday(2026-12-02 19:00) reads back as 18:59:59.999987: the backfill's range ended 13 µs
    before its last rows, and the partitions holding only rows at that time were never marked."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 'source.db'}", capture="explicit", zone="UTC")
    db.location(1, "UTC")
    db.location(2, "UTC")
    db.insert(1, [dt.datetime(2026, 12, 1, 21, tzinfo=UTC)])
    db.insert(2, [dt.datetime(2026, 12, 2, 19, tzinfo=UTC)])
    assert "marked 2 partition(s)" in cli(root, "backfill", "openaq", check=True).stdout


def test_a_partition_parked_for_expired_leases_reports_the_attempts_it_had(tmp_path: Path) -> None:
    """Two leases expired (max_attempts 2): the next claim parks the partition unread with "gave
    up after 2 attempts", and `status` said "after 3 attempt(s)", counting the claim that gave up."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv", capture="explicit", extra_defaults="max_attempts = 2")
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    assert operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"}) == 1
    db.conn.execute("UPDATE sluicegate_partitions SET attempts = 2")  # as two expired leases leave it
    [summary] = engine.run(load(root))
    assert summary.failed == 1 and "gave up after 2 attempts, max_attempts being 2" in summary.errors[0]
    assert "leases expired as a worker died or timed out" in summary.errors[0], summary.errors
    assert "run 'sluicegate reset openaq --failed' to retry" in summary.errors[0], summary.errors
    [failure] = operations.status(load(root))[0]["failures"]
    assert failure["attempts"] == 2, failure
    assert files(tmp_path / "out") == []


def test_a_partition_parked_by_a_lowered_max_attempts_is_not_said_to_have_lost_leases(tmp_path: Path) -> None:
    """max_attempts lowered from 5 to 2 under a partition with 3 failed exports: the next claim
    parked it, and `status` blamed "leases expired: the exporting worker died", which none had."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root, db = _setup(tmp_path, url, fmt="csv", capture="explicit", extra_defaults="max_attempts = 2")
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    assert operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"}) == 1
    db.conn.execute("UPDATE sluicegate_partitions SET attempts = 3, last_error = 'source unreachable'")
    [summary] = engine.run(load(root))
    assert summary.failed == 1, summary
    [failure] = operations.status(load(root))[0]["failures"]
    assert "leases expired:" not in failure["error"], failure
    assert "gave up after 3 attempts, max_attempts being 2 (failed exports count, and" in failure["error"]
    assert failure["attempts"] == 3, failure


def test_sqlite_text_that_is_no_utf8_fails_its_partition_with_the_cast_that_reads_it(tmp_path: Path) -> None:
    """SQLite keeps any bytes in TEXT; Python's driver cannot read them as text, and the failure
    named the column and value but not what to do."""
    root, db = _setup(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    for loc in (1, 2):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 5, 1, tzinfo=dt.UTC), 2))
    db.conn.execute("UPDATE locations SET name = CAST(X'61FF62' AS TEXT) WHERE location_id = 1")
    assert cli(root, "backfill", "openaq").returncode == 0
    [summary] = engine.run(load(root), ["openaq"])
    assert (summary.exported, summary.failed) == (1, 1)  # the other location's day is exported
    [error] = summary.errors
    assert "Could not decode to UTF-8 column 'location'" in error
    assert "CAST(location AS BLOB) AS location" in error, error
    select = root / "tasks" / "openaq" / "select.sql"
    select.write_text(
        select.read_text().replace(
            "l.name || '-' || m.sensor_id AS location",
            "CAST(l.name || '-' || m.sensor_id AS BLOB) AS location",
        )
    )
    assert cli(root, "reset", "openaq", "--failed").returncode == 0
    [again] = engine.run(load(root), ["openaq"])
    assert (again.exported, again.failed) == (1, 0), again.as_dict()


@pytest.mark.pg
@pytest.mark.parametrize("language", ["en", "de"])
def test_check_names_a_fixed_zone_the_postgresql_server_does_not_know(
    tmp_path: Path, pg_url: str, language: str
) -> None:
    """Python knows a zone (here Mars/Olympus, a copy of Europe/Brussels on its zone path, as
    Europe/Kyiv on a newer tzdata than the server's) that PostgreSQL, which cuts the days of a fixed
    zone and writes their times itself, does not: `check` said ok, and every partition then failed
    at the run. Now `check` names the zone and what to do. On a server writing German ("Zeitzone
    »Mars/Olympus« nicht erkannt") it said only that the zone could not be checked: the refusal
    was told by its English words ("time zone")."""
    import importlib.resources

    tzpath = tmp_path / "tz"
    (tzpath / "Mars").mkdir(parents=True)
    brussels = importlib.resources.files("tzdata.zoneinfo") / "Europe" / "Brussels"
    (tzpath / "Mars" / "Olympus").write_bytes(brussels.read_bytes())
    env = {"PYTHONTZPATH": str(tzpath)}
    root = write_project(
        tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="Mars/Olympus"
    )
    db = Db(pg_url)
    db.location(1, "UTC")
    db.speak(language)
    checked = cli(root, "check", env=env)
    said = checked.stdout + checked.stderr
    assert checked.returncode != 0, said
    assert "[time] zone: the PostgreSQL source does not know the zone 'Mars/Olympus'" in said, said
