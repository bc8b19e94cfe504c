"""Incremental (watermark) exports: the Bridge Exporter's test plan, automated, on SQLite,
PostgreSQL and MariaDB (the ledger in the source database, or for MariaDB also in a SQLite file)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import signal
import sqlite3
import subprocess
import textwrap
import threading
import time
import uuid
import zoneinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from test_workers import _spawn, _wait_for

from sluicegate import engine, mariadb_conn, operations
from sluicegate.drivers import incremental
from sluicegate.engine import RunOptions
from sluicegate.export_request import ExportRequest, load_request
from sluicegate.ledger import SCHEMA_VERSION, Ledger
from support import SLUICEGATE, cli, files, is_mariadb, load, read_csv

UTC = dt.UTC
T = dt.datetime(2024, 5, 10, tzinfo=UTC)
# Sources whose ledger is a SQLite file beside the project instead of the source database.
LEDGER_ELSEWHERE: set[str] = set()
DOCUMENTED = (
    '{"endDateTime":"2016-10-04T23:59:59Z","startDateTime":"2016-10-03T23:59:59Z","exportType":"DAILY",'
    '"ignoreLastExportTime":"true","tag":"test exporter"}'
)


class Records:
    """The source table: records(record_id, study_id, uploaded_on, payload)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.conn: Any = sqlite3.connect(
                url[len("sqlite:///") :], isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE records (record_id INTEGER PRIMARY KEY, study_id TEXT NOT NULL, "
                "uploaded_on TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), payload TEXT)"
            )
        elif is_mariadb(url):
            self.conn = mariadb_conn.connect(url)
            self.conn.execute(
                "CREATE TABLE records (record_id INT AUTO_INCREMENT PRIMARY KEY, study_id VARCHAR(64) NOT NULL, "
                "uploaded_on DATETIME(6) NOT NULL DEFAULT UTC_TIMESTAMP(6), payload TEXT)"
            )
        else:
            self.conn = psycopg.connect(url, autocommit=True)
            self.conn.execute(
                "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text NOT NULL, "
                "uploaded_on timestamptz NOT NULL DEFAULT now(), payload text)"
            )

    def add(self, study: str, at: dt.datetime, payload: str = "x") -> None:
        value: Any = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if self.sqlite else at
        if is_mariadb(self.url):  # DATETIME: naive UTC
            value = at.astimezone(UTC).replace(tzinfo=None)
        p = "?" if self.sqlite else "%s"
        self.conn.execute(
            f"INSERT INTO records (study_id, uploaded_on, payload) VALUES ({p}, {p}, {p})",
            (study, value, payload),
        )


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("pg", marks=pytest.mark.pg),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("mariadb-sqlite-ledger", marks=pytest.mark.mariadb),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The source: a SQLite file, or a fresh PostgreSQL or MariaDB database.

    The ledger is in the source database, or for ``mariadb-sqlite-ledger`` in a SQLite file.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    value: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    if request.param == "mariadb-sqlite-ledger":
        LEDGER_ELSEWHERE.add(value)
    return value


WINDOWS_APART = "{study_id}/{type}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.{ext}"


def _project(
    tmp_path: Path,
    url: str,
    *,
    bootstrap: str = "yesterday",
    lease: str = "10m",
    margin: str = "0s",
    path: str = WINDOWS_APART,
) -> Path:
    root = tmp_path / "proj"
    (root / "tasks" / "studies").mkdir(parents=True)
    ledger = f'[ledger]\nurl = "sqlite:///{root / "ledger.db"}"\n' if url in LEDGER_ELSEWHERE else ""
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{url}"\n{ledger}[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nlease = "{lease}"\nbackoff = "0s"\nmax_attempts = 3\n'
    )
    (root / "tasks" / "studies" / "task.toml").write_text(
        textwrap.dedent(
            f"""
            kind = "incremental"
            entity = "study_id"
            cursor = "uploaded_on"
            format = "csv"
            path = "{path}"
            zone = "UTC"
            bootstrap = "{bootstrap}"
            safety_margin = "{margin}"
            """
        )
    )
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on, payload FROM records"
    )
    return root


def _run(root: Path, **request: Any) -> engine.TaskSummary:
    [summary] = engine.run(load(root), ["studies"], RunOptions(request=ExportRequest(**request)))
    return summary


def _marks(root: Path) -> dict[str, dt.datetime | None]:
    return {w["entity"]: w["watermark"] for w in operations.watermarks(load(root), "studies")}


def _payloads(tmp_path: Path) -> list[str]:
    return sorted(r["payload"] for p in files(tmp_path / "out") for r in read_csv(p))


# 1 and 10: daily uses the watermark when present, the bootstrap when absent; boundaries in exactly one file
def test_daily_bootstrap_then_watermark_and_boundaries(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(days=1, hours=12), "too-old")
    rec.add("s1", T - dt.timedelta(days=1), "at-bootstrap-start")
    rec.add("s1", T - dt.timedelta(seconds=1), "last-second")
    rec.add("s1", T, "at-end-boundary")
    rec.add("s1", T + dt.timedelta(hours=3), "next-day")
    first = _run(root, export_type="daily", end=T)
    assert _payloads(tmp_path) == ["at-bootstrap-start", "last-second"]
    assert _marks(root) == {"s1": T}
    [entry] = first.entities
    assert entry["start"] == (T - dt.timedelta(days=1)).isoformat() and entry["rows"] == 2
    _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert _payloads(tmp_path) == ["at-bootstrap-start", "at-end-boundary", "last-second", "next-day"]
    assert _marks(root) == {"s1": T + dt.timedelta(days=1)}
    names = sorted(p.name for p in files(tmp_path / "out"))
    assert names == ["20240509T000000Z-20240510T000000Z.csv", "20240510T000000Z-20240511T000000Z.csv"]


# 2: instant and hourly exports
def test_hourly_and_instant(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    now = dt.datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rec.add("s1", now - dt.timedelta(hours=30), "yesterday-ish")
    # Within this hour whatever the clock says (a fixed "a minute ago" is last hour at HH:00:30).
    rec.add("s1", hour + (now - hour) / 2, "a-minute-ago")
    hourly = _run(root, export_type="hourly", end=hour, entities=("s1",))
    assert hourly.entities[0]["end"] == hour.isoformat()
    assert _marks(root)["s1"] == hour
    instant = _run(root, export_type="instant", entities=("s1",))
    assert instant.entities[0]["start"] == hour.isoformat()
    assert "a-minute-ago" in _payloads(tmp_path)
    assert _marks(root)["s1"] is not None and _marks(root)["s1"] > hour  # type: ignore[operator]


def test_a_window_that_would_overwrite_an_earlier_windows_file_fails(url: str, tmp_path: Path) -> None:
    """``{start:%Y%m%d}`` names every window of a day alike: an hourly (or instant) window
    overwrote the day's earlier file, whose rows were then in no file while the watermark had
    passed them. The window now fails, recorded for redrive, and the file stays; a window that
    wrote no file in between does not hide the one before it."""
    root = _project(tmp_path, url, path="{study_id}/{start:%Y%m%d}.{ext}")
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=12), "a")
    rec.add("s1", T + dt.timedelta(minutes=30), "b")
    rec.add("s1", T + dt.timedelta(minutes=105), "c")
    assert _run(root, export_type="daily", end=T).exported == 1  # [T - 1 day, T): 20240509.csv
    assert _run(root, export_type="hourly", end=T + dt.timedelta(hours=1)).exported == 1  # 20240510.csv
    empty = _run(root, export_type="instant", end=T + dt.timedelta(minutes=90))  # no rows, no file
    assert (empty.exported, empty.rows, empty.failed) == (1, 0, 0), str(empty.entities) + str(empty)
    third = _run(root, export_type="instant", end=T + dt.timedelta(hours=2))
    assert (third.exported, third.failed) == (0, 1)
    assert "would overwrite s1/20240510.csv, the file of an earlier window" in third.errors[0]
    assert _payloads(tmp_path) == ["a", "b"]
    assert _marks(root) == {"s1": T + dt.timedelta(minutes=90)}  # c is still ahead of it


def _four_day_window(root: Path, url: str) -> dict[str, dt.datetime]:
    """One file for s1's window [T - 4 days, T), a row each day; return its first day's bounds."""
    rec = Records(url)
    for days in range(1, 5):
        rec.add("s1", T - dt.timedelta(days=days, hours=-1), f"d{days}")
    _run(root, export_type="daily", end=T - dt.timedelta(days=4))  # no rows: the watermark is set
    assert _run(root, export_type="daily", end=T).rows == 4
    return {"start": T - dt.timedelta(days=4), "end": T - dt.timedelta(days=3)}


def test_a_reexport_that_would_overwrite_a_longer_windows_file_is_refused(url: str, tmp_path: Path) -> None:
    """With windows named by their start only, re-exporting the first day of a four-day window
    replaced that window's file with one day's rows: three days were in no file, the watermark
    past them. Such a re-export is now refused before any work; to another folder it runs."""
    root = _project(tmp_path, url, path="{study_id}/{start:%Y%m%dT%H%M%SZ}.{ext}")
    day = _four_day_window(root, url)
    refused = _run(root, export_type="daily", ignore_watermark=True, **day)
    assert refused.config_error and (refused.exported, refused.rows) == (0, 0)  # exit 2
    assert "would overwrite" in refused.task_errors[0] and "s1/20240506T000000Z.csv" in refused.task_errors[0]
    assert _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]
    elsewhere = _run(root, export_type="daily", destination=str(tmp_path / "elsewhere"), **day)
    assert (elsewhere.rows, elsewhere.failed) == (1, 0)
    assert _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]


def test_a_reexport_does_not_replace_a_longer_windows_file_published_while_it_ran(
    url: str, tmp_path: Path
) -> None:
    """The overwrite check runs before a re-export reads: a regular run that published the
    four-day window's file under the same name meanwhile had it replaced by one day's rows (three
    days in no file, the watermark past them). The re-export's file now goes only where no file
    is: it fails (exit 1), recorded for redrive, and the four-day file stays."""
    root = _project(tmp_path, url, path="{study_id}/{start:%Y%m%dT%H%M%SZ}.{ext}")
    rec = Records(url)
    for days in range(1, 5):
        rec.add("s1", T - dt.timedelta(days=days, hours=-1), f"d{days}")
    _run(root, export_type="daily", end=T - dt.timedelta(days=4))  # no rows: the watermark is set
    day = [(T - dt.timedelta(days=d)).isoformat() for d in (4, 3)]
    fault = root / ".fault-before_place"
    reexport = _spawn(
        root, "run", "--type", "daily", "--ignore-watermark", "--time-min", day[0], "--time-max", day[1],
        "--json", env={"SLUICEGATE_TESTING__FAULT": "before_place"},
    )  # fmt: skip
    _wait_for(fault, reexport)  # its file is written, checked, not yet in place
    try:
        assert _run(root, export_type="daily", end=T).rows == 4
    finally:
        fault.unlink()
    out, err = reexport.communicate(timeout=60)
    assert reexport.returncode == 1, (out, err)
    [entry] = json.loads(out)[0]["entities"]
    assert "did not replace" in entry["error"] and "s1/20240506T000000Z.csv" in entry["error"], entry
    assert _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]
    assert [p.name for p in files(tmp_path / "out")] == ["20240506T000000Z.csv"]  # no temp file left
    [row] = operations.watermarks(load(root), "studies")
    assert row["failed_mode"] == "reexport" and "did not replace" in str(row["last_error"]), row


def test_a_reexport_a_fraction_of_a_second_short_is_refused(tmp_path: Path) -> None:
    """With windows named to the second, a re-export starting half a second into a window had
    the window's name, passed the check (a second apart gave another name) and replaced its
    file without the rows of that half second. A fractional bound is checked as its second too."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "early")
    rec.add("s1", T - dt.timedelta(days=1) + dt.timedelta(seconds=0.2), "at-0.2s")
    _run(root, export_type="daily", end=T)
    short = {"start": T - dt.timedelta(days=1) + dt.timedelta(seconds=0.5), "end": T}
    refused = _run(root, export_type="daily", ignore_watermark=True, **short)
    assert refused.config_error and "would overwrite" in refused.task_errors[0]
    assert _payloads(tmp_path) == ["at-0.2s", "early"]


def test_a_reexport_is_refused_when_the_path_names_the_time_of_day_but_not_the_date(
    url: str, tmp_path: Path
) -> None:
    """The check asked only whether a window a second longer or shorter had the same name: with
    the end named by its time of day (``{end:%H%M%S}``), the first day of a four-day window had
    that window's name, was not refused, and replaced its file (three days in no file)."""
    root = _project(tmp_path, url, path="{study_id}/{start:%Y%m%dT%H%M%SZ}-{end:%H%M%S}.{ext}")
    day = _four_day_window(root, url)
    refused = _run(root, export_type="daily", ignore_watermark=True, **day)
    assert refused.config_error and (refused.exported, refused.rows) == (0, 0)  # exit 2
    assert (
        "would overwrite" in refused.task_errors[0]
        and "s1/20240506T000000Z-000000.csv" in refused.task_errors[0]
    )
    assert _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]


def test_a_redriven_reexport_does_not_overwrite_a_longer_window_written_since(tmp_path: Path) -> None:
    """The overwrite check was made for `run` only: a re-export of one day that failed, redriven
    after a regular run had written the four-day window's file under the same name, replaced that
    file with the one day's rows (three days in no file, the watermark past them), exit 0. That
    window now fails in redrive (exit 1), its record kept, and the file stays."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url, path="{study_id}/{start:%Y%m%dT%H%M%SZ}.{ext}")
    rec = Records(url)
    for days in range(1, 5):
        rec.add("s1", T - dt.timedelta(days=days, hours=-1), f"d{days}")
    undecodable = (T - dt.timedelta(days=4, hours=-2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rec.conn.execute(
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', ?, CAST(X'FF' AS TEXT))",
        (undecodable,),
    )
    _run(root, export_type="daily", end=T - dt.timedelta(days=4))  # no rows: the watermark is set
    day = {"start": T - dt.timedelta(days=4), "end": T - dt.timedelta(days=3)}
    assert _run(root, export_type="daily", ignore_watermark=True, **day).failed == 1  # recorded for redrive
    rec.conn.execute("DELETE FROM records WHERE uploaded_on = ?", (undecodable,))
    assert _run(root, export_type="daily", end=T).rows == 4  # one file for [T - 4 days, T)
    redrive = cli(root, "redrive", "studies")
    assert redrive.returncode == 1, redrive.stdout + redrive.stderr
    assert "would overwrite" in redrive.stdout and "watermark forget studies s1" in redrive.stdout
    assert _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]
    [row] = operations.watermarks(load(root), "studies")
    assert (row["failed_mode"], row["failed_start"], row["watermark"]) == ("reexport", day["start"], T)
    assert cli(root, "watermark", "forget", "studies", "s1").returncode == 0
    assert cli(root, "redrive", "studies").returncode == 0 and _payloads(tmp_path) == ["d1", "d2", "d3", "d4"]


# 3 and 4: --ignore-watermark and the override destination never touch watermarks
def test_reexport_and_override_leave_watermarks(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    for h in range(48):
        rec.add("s1", T - dt.timedelta(days=2) + dt.timedelta(hours=h), f"r{h:02d}")
    _run(root, export_type="daily", end=T)
    before = _marks(root)
    again = _run(
        root,
        export_type="daily",
        start=T - dt.timedelta(days=2),
        end=T - dt.timedelta(days=1),
        ignore_watermark=True,
    )
    assert again.entities[0]["rows"] == 24 and _marks(root) == before
    other = tmp_path / "elsewhere"
    moved = _run(
        root,
        export_type="hourly",
        start=T - dt.timedelta(days=2),
        end=T,
        ignore_watermark=True,
        destination=str(other),
    )
    assert moved.entities[0]["rows"] == 48 and len(files(other)) == 1 and _marks(root) == before
    cli_run = cli(root, "run", "studies", "--destination", str(other / "cli"), "--json", check=True)
    assert json.loads(cli_run.stdout)[0]["entities"][0]["watermark_moved"] is False
    assert _marks(root) == before


# 5 and 7: failures keep the watermark; the next run redoes the failed window, then goes on to its end;
# redrive then exports nothing new
def test_failed_entity_keeps_its_watermark_and_redrive(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    for study in ("s1", "s2"):
        rec.add(study, T - dt.timedelta(hours=5), f"{study}-a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s2").write_text("a file where the folder of s2 must go")
    first = _run(root, export_type="daily", end=T)
    # s2 never exported: its watermark is pinned at the failed window's start (the bootstrap), not moved
    assert first.failed == 1 and _marks(root) == {"s1": T, "s2": T - dt.timedelta(days=1)}
    [status] = operations.status(load(root), ["studies"])
    assert status["failed"] == 1 and "s2" in status["failures"][0]["partition"]
    rec.add("s2", T + dt.timedelta(hours=2), "s2-b")
    (out / "s2").unlink()
    second = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    s2 = [(e["start"], e["end"], e["rows"]) for e in second.entities if e["entity"] == "s2"]
    days = [(T + dt.timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
    # the failed window again (its own file), then on to the run's end, in the same run
    assert s2 == [(days[0], days[1], 1), (days[1], days[2], 1)] and second.failed == 0
    assert _marks(root)["s2"] == T + dt.timedelta(days=1)
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["exported"] == 0 and all(e["rows"] == 0 for e in redrive["entities"])
    assert _payloads(tmp_path).count("s2-a") == 1


def test_redrive_retries_the_failed_window(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1").write_text("blocked")
    assert _run(root, export_type="daily", end=T).failed == 1
    (out / "s1").unlink()
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["entities"][0]["rows"] == 1 and redrive["entities"][0]["watermark_moved"] is True
    assert _marks(root) == {"s1": T} and operations.status(load(root), ["studies"])[0]["failed"] == 0


def test_redrive_says_so_when_another_export_holds_a_failed_entity(tmp_path: Path) -> None:
    """A failed entity that another run held was left out of redrive without a word: the summary
    listed nothing for it, exit 0, and the operator took it for redriven."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "s1-a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s1").write_text("blocked")
    assert _run(root, export_type="daily", end=T).failed == 1
    with Ledger(url) as ledger:
        [held] = ledger.watermarks.claim("studies", ["s1"], lease=600)
        redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
        assert [e["entity"] for e in redrive["entities"]] == ["s1"]
        assert "another export holds this entity" in redrive["entities"][0]["note"]
        ledger.watermarks.release(held.token)


def test_redrive_sends_a_failed_override_reexport_to_its_own_destination(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=30), "old")
    rec.add("s1", T - dt.timedelta(hours=5), "new")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "s1").write_text("a file where the folder of s1 must go")
    failed = _run(
        root,
        export_type="daily",
        start=T - dt.timedelta(days=2),
        end=T,
        ignore_watermark=True,
        destination=str(other),
    )
    assert failed.failed == 1
    [row] = operations.watermarks(load(root), "studies")
    assert row["failed_mode"] == "reexport" and row["failed_destination"] == str(other)
    # A regular export of the same entity passes the failed window: the re-export is still owed.
    assert _run(root, export_type="daily", end=T).entities[0]["rows"] == 1
    [row] = operations.watermarks(load(root), "studies")
    assert row["failed_end"] == T and row["failed_destination"] == str(other)
    (other / "s1").unlink()
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["entities"][0]["rows"] == 2 and redrive["failed"] == 0
    [redriven] = files(other)  # the override destination, with the original window
    assert redriven.name == f"{(T - dt.timedelta(days=2)):%Y%m%dT%H%M%SZ}-{T:%Y%m%dT%H%M%SZ}.csv"
    assert len(files(tmp_path / "out")) == 1  # only the regular export went to the project's folder
    assert operations.watermarks(load(root), "studies")[0]["failed_end"] is None


def test_a_reexport_to_a_destination_that_is_down_is_recorded_and_a_bad_url_exits_2(tmp_path: Path) -> None:
    """`run --destination` to an FTP server that refuses, or to an unknown scheme, crashed with a
    traceback and recorded nothing for redrive."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "a")
    window = ["--time-min", (T - dt.timedelta(days=1)).isoformat(), "--time-max", T.isoformat()]
    down = cli(root, "run", "--destination", "ftp://bob:pw@127.0.0.1:1/x", *window)
    assert (
        down.returncode == 1
        and "Traceback" not in down.stderr
        and "Connection refused" in down.stdout + down.stderr
    )
    [row] = operations.watermarks(load(root), "studies")
    assert row["failed_mode"] == "reexport" and row["failed_destination"] == "ftp://bob:pw@127.0.0.1:1/x"
    # A destination that is gone for good: the owed re-export blocked every other one until now.
    again = cli(root, "run", "--destination", str(tmp_path / "elsewhere"), *window)
    assert again.returncode == 1 and "watermark forget studies s1" in again.stdout + again.stderr
    forgot = cli(root, "watermark", "forget", "studies", "s1")
    assert forgot.returncode == 0 and "ftp://bob:***@127.0.0.1:1/x" in forgot.stdout, forgot.stderr
    [row] = operations.watermarks(load(root), "studies")
    assert row["failed_mode"] is None and row["failed_end"] is None
    assert cli(root, "watermark", "forget", "studies", "s1").returncode == 2  # nothing owed now
    assert cli(root, "run", "--destination", str(tmp_path / "elsewhere"), *window).returncode == 0
    bad = cli(root, "run", "--destination", "nosuch://bucket/x", *window)
    assert bad.returncode == 2 and "Protocol not known: nosuch" in bad.stdout + bad.stderr
    empty = cli(root, "run", "--destination", "", *window)  # was a regular export, to the project's folder
    assert (
        empty.returncode == 2 and "the destination is empty" in empty.stderr and not files(tmp_path / "out")
    )


def test_a_reexport_to_an_s3_url_without_a_bucket_exits_2_and_owes_nothing(tmp_path: Path) -> None:
    """`--destination s3://` failed each entity with "will retry" (exit 1), and recorded a failed
    re-export to that URL, which then refused every other re-export of the entity."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "a")
    window = ["--time-min", (T - dt.timedelta(days=1)).isoformat(), "--time-max", T.isoformat()]
    for dest in ("s3://", "s3:///prefix"):
        bad = cli(root, "run", "--destination", dest, *window)
        assert bad.returncode == 2 and f"destination {dest}: names no bucket" in bad.stdout + bad.stderr
        assert "will retry" not in bad.stdout + bad.stderr
    assert all(row["failed_mode"] is None for row in operations.watermarks(load(root), "studies"))
    assert cli(root, "run", "--destination", str(tmp_path / "elsewhere"), *window).returncode == 0


def test_a_dry_run_lists_every_entity_though_one_cannot_be_in_a_path(tmp_path: Path) -> None:
    """One entity no path can hold (a/b) made the dry run list nothing and exit 1."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "a")
    rec.add("a/b", T - dt.timedelta(hours=5), "b")
    dry = cli(root, "run", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    [summary] = json.loads(dry.stdout)
    plan = {e["partition"]["entity"]: e for e in summary["plan"]}
    assert set(plan) == {"s1", "a/b"} and "path" in plan["s1"] and "holds a slash" in plan["a/b"]["error"]


@pytest.mark.parametrize(
    ("select", "message"),
    [
        (
            "SELECT record_id, study_id, uploaded_on AS uploadedon, payload FROM records",
            "cursor: 'uploaded_on'",
        ),
        ("SELECT record_id, study_id, uploaded_on, payload FROM", "select.sql: the query failed"),
    ],
)
def test_a_select_that_does_not_fit_exits_2_before_any_claim(
    tmp_path: Path, select: str, message: str
) -> None:
    """A misspelt cursor column failed a window per entity, counting attempts, exit 1; a syntax
    error exited 1 too. Both are the task's configuration: exit 2, no failure recorded."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "a")
    (root / "tasks" / "studies" / "select.sql").write_text(select)
    ran = cli(root, "run", "--type", "daily", "--entity", "s1")
    assert ran.returncode == 2 and message in ran.stdout + ran.stderr
    assert all(w["failed_end"] is None for w in operations.watermarks(load(root), "studies"))


def test_an_entity_another_export_holds_says_when_its_claim_is_free_again(url: str, tmp_path: Path) -> None:
    """After a request was killed, runs said "another export holds this entity" for a whole lease
    (10 minutes by default) without saying so."""
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=1), "a")
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure("studies", ["s1"])
        assert ledger.watermarks.claim("studies", ["s1"], lease=600)  # a worker that died
    held = _run(root, export_type="daily", end=T)
    assert (
        held.exported == 0 and "takes it over once its lease, 600 s, has run out" in held.entities[0]["note"]
    )


# 6: an end before the watermark exports nothing and moves nothing
def test_end_before_watermark_is_a_no_op(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=1), "a")
    _run(root, export_type="daily", end=T)
    late = _run(root, export_type="daily", end=T - dt.timedelta(days=1))
    assert late.exported == 0 and "not after the watermark" in late.entities[0]["note"]
    assert _marks(root) == {"s1": T} and len(files(tmp_path / "out")) == 1
    # The empty window gave its claim back: the next export is not told another export holds it.
    rec.add("s1", T + dt.timedelta(hours=1), "b")
    after = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert after.entities[0]["rows"] == 1 and _marks(root) == {"s1": T + dt.timedelta(days=1)}


# 7: a worker killed mid-export: after the lease expires the same window is exported once, to the same file
def test_killed_export_is_redone_once(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url, lease="2s")
    rec = Records(url)
    for h in range(10):
        rec.add("s1", T - dt.timedelta(hours=h + 1), f"r{h}")
    req = tmp_path / "req.json"
    req.write_text('{"exportType": "DAILY", "endDateTime": "2024-05-10T00:00:00Z"}')
    proc = _spawn(root, "request", str(req), env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(root / ".fault-mid_write", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert files(tmp_path / "out") == [] and _marks(root) == {"s1": None}
    time.sleep(2.5)
    later = tmp_path / "later.json"
    later.write_text('{"exportType": "DAILY", "endDateTime": "2024-05-11T00:00:00Z"}')
    result = json.loads(cli(root, "request", str(later), "--json", check=True).stdout)[0]
    assert result["entities"][0]["end"] == T.isoformat()  # the interrupted window, redone as it was
    assert _payloads(tmp_path) == sorted(f"r{h}" for h in range(10))
    # then on to the request's end, in the same run (a window of its own)
    assert result["entities"][1]["start"] == T.isoformat() and result["entities"][1]["rows"] == 0
    assert _marks(root) == {"s1": T + dt.timedelta(days=1)}


def _killer(tmp_path: Path, pg_url: str) -> tuple[Path, Records]:
    """Five studies, s3's window killing the worker each time it is read (the OOM killer would:
    its select sleeps in pg_sleep, on which _run_until_killed_at_poison SIGKILLs the run)."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", lease="1s")
    with (root / "tasks" / "studies" / "task.toml").open("a") as toml:
        toml.write('entities = ["s1", "s2", "s3", "s4", "s5"]\n')
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on, payload, poison(study_id) AS p FROM records"
    )
    rec = Records(pg_url)
    rec.conn.execute(
        "CREATE FUNCTION poison(s text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF s = 's3' THEN PERFORM pg_sleep(60); END IF; RETURN 1; END $$"
    )
    for study in ("s1", "s2", "s3", "s4", "s5"):
        rec.add(study, T - dt.timedelta(hours=1), study)
    return root, rec


@pytest.mark.pg
def test_an_entity_that_kills_its_worker_takes_down_no_other_entity_of_its_run(
    pg_url: str, tmp_path: Path
) -> None:
    """Study s3's window kills the worker each time it is read (as the OOM killer would). The four
    other studies, claimed and read in its batch, died with it; each run after the lease took the
    five back together (an attempt each) and died again, so none was ever exported. A dead claim's
    windows are now taken over one at a time, each alone, the oldest death first: the four are
    exported, and only s3 keeps dying, counted an attempt for each death of its own."""
    from test_faults import _run_until_killed_at_poison

    root, _ = _killer(tmp_path, pg_url)
    for _ in range(4):
        assert _run_until_killed_at_poison(root, pg_url) == -9
        time.sleep(1.3)  # the dead run's lease runs out
    assert _payloads(tmp_path) == ["s1", "s2", "s4", "s5"]
    rows = {w["entity"]: w for w in operations.watermarks(load(root), "studies")}
    assert [e for e, w in sorted(rows.items()) if w["watermark"] is None] == ["s3"]
    assert rows["s3"]["pending_end"] is not None and rows["s3"]["attempts"] >= 2
    assert all(rows[e]["attempts"] == 0 for e in ("s1", "s2", "s4", "s5"))


@pytest.mark.pg
def _expire_claims(ledger: Ledger, *, attempts: int | None = None) -> None:
    """Make the leases of the watermark rows a claim holds run out, as when the run holding them
    died (their attempts set to ``attempts`` when given)."""
    pg = ledger.url.startswith("postgresql")
    past: Any = dt.datetime(2000, 1, 1, tzinfo=UTC) if pg else 946684800.0
    table = "sluicegate.watermarks" if pg else "sluicegate_watermarks"
    ph = "?" if ledger.url.startswith("sqlite") else "%s"
    sets = f"lease_until = {ph}" + ("" if attempts is None else f", attempts = {int(attempts)}")
    ledger.conn.execute(f"UPDATE {table} SET {sets} WHERE claim_token IS NOT NULL", (past,))


def test_an_entity_that_kills_its_worker_max_attempts_times_is_parked_until_reset(
    pg_url: str, tmp_path: Path
) -> None:
    """Study s3's window kills the worker each time it is read. A watermark had no parked state and
    plain runs ignored max_attempts: every run that reached s3 was SIGKILLed at its end, for good,
    and the project's later tasks never ran. Taken over with its attempts used up (3 lone deaths),
    s3 is now parked: its window recorded as failed, the run exits 1 and goes on (the later task
    runs); later runs skip it, status says what to do, and 'reset --failed' has it tried again."""
    from test_faults import _run_until_killed_at_poison

    root, rec = _killer(tmp_path, pg_url)
    later = root / "tasks" / "zlater"
    later.mkdir()
    toml = (root / "tasks" / "studies" / "task.toml").read_text()
    (later / "task.toml").write_text(
        toml.replace('entities = ["s1", "s2", "s3", "s4", "s5"]', 'entities = ["s1"]')
    )
    (later / "select.sql").write_text("SELECT record_id, study_id, uploaded_on, payload FROM records")
    (later / "task.toml").write_text((later / "task.toml").read_text().replace('path = "', 'path = "later/'))
    codes = []
    for _ in range(5):  # s3's lone deaths: runs 3, 4 and 5 (run 2 took it over with the others' dead claim)
        codes.append(_run_until_killed_at_poison(root, pg_url))
        time.sleep(1.3)  # the dead run's lease runs out
    assert codes == [-9, -9, -9, -9, 1]  # run 5 parks s3 (exit 1), and runs zlater
    assert (tmp_path / "out" / "later" / "s1").is_dir()
    rows = {w["entity"]: w for w in operations.watermarks(load(root), "studies")}
    assert rows["s3"]["watermark"] is not None and rows["s3"]["failed_end"] is not None
    assert "gave up after 3 attempts, max_attempts being 3" in rows["s3"]["last_error"]
    skipped = cli(root, "run", "studies", "--json")
    assert skipped.returncode == 1  # s3 is still owed, and not read: no SIGKILL
    [summary] = json.loads(skipped.stdout)
    assert "reset studies --failed' to retry" in summary["errors"][0] and "s3" in summary["errors"][0]
    assert "s3" not in _payloads(tmp_path)
    status = cli(root, "status", "studies")
    assert "failed s3 after 3 attempt(s)" in status.stdout
    assert "reset studies --failed' to retry" in status.stdout  # (with -C FOLDER)
    reset = cli(root, "reset", "studies", "--failed")
    assert reset.returncode == 0 and "re-queued 1 failed entity of studies" in reset.stdout
    assert _run_until_killed_at_poison(root, pg_url) == -9  # taken over again: it still kills
    time.sleep(1.3)
    rec.conn.execute("CREATE OR REPLACE FUNCTION poison(s text) RETURNS int LANGUAGE sql AS 'SELECT 1'")
    for _ in range(2):  # one more lone death (attempt 1), then a run with the killer fixed
        assert cli(root, "run", "studies").returncode == 0
    assert "s3" in _payloads(tmp_path)
    rows = {w["entity"]: w for w in operations.watermarks(load(root), "studies")}
    assert rows["s3"]["failed_end"] is None and rows["s3"]["attempts"] == 0


def _s1_died_alone_with_one_attempt_left(tmp_path: Path, url: str) -> tuple[Path, Records]:
    """A project whose entity s1 is held by a claim of it alone that died exporting its stored
    window, with one attempt left (max_attempts 3); s2 has a row too. The project's folder, and
    its source table."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "s1")
    rec.add("s2", T - dt.timedelta(hours=2), "s2")
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure("studies", ["s1"])
        [c] = ledger.watermarks.claim("studies", ["s1"], lease=600)
        ledger.watermarks.set_pending(c, T - dt.timedelta(days=1), T, "daily")
        _expire_claims(ledger, attempts=2)
    return root, rec


def test_an_entity_taken_over_with_its_attempts_used_up_is_parked(url: str, tmp_path: Path) -> None:
    """A run died holding s1 alone, its attempts at max_attempts - 1 (it killed its worker that
    often). The next run takes it over and parks it, unexported: its window recorded as failed (exit
    1), s2 exported. Runs then skip it, not taking its dead claim over; redrive gives up on it, and
    'sluicegate reset studies --failed' has the next run take it over again. (SQLite, PostgreSQL,
    MariaDB ledgers.)"""
    root, rec = _s1_died_alone_with_one_attempt_left(tmp_path, url)
    # A dry run listed s1's window as a redo to export: the run it previews parks s1 instead.
    [dry] = engine.run(load(root), ["studies"], RunOptions(request=ExportRequest(end=T), dry_run=True))
    assert [e["partition"]["entity"] for e in dry.plan] == ["s2"], dry.plan
    [note] = [n for n in dry.entities if n["entity"] == "s1"]
    assert "would be parked: gave up after 3 attempts, max_attempts being 3" in note["error"], note
    parked = _run(root, export_type="daily", end=T)
    assert parked.failed == 1 and "s1: gave up after 3 attempts, max_attempts being 3" in parked.errors[0]
    assert "run 'sluicegate reset studies --failed' to retry" in parked.errors[0]
    assert _payloads(tmp_path) == ["s2"]
    rows = {w["entity"]: w for w in operations.watermarks(load(root), "studies")}
    assert rows["s1"]["failed_end"] == T and rows["s1"]["held"] and not rows["s1"]["claimed"]
    rec.add("s1", T + dt.timedelta(hours=2), "s1-next")
    again = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert again.failed == 1 and "gave up after 3 attempts" in again.errors[0] and again.exported == 1
    assert _payloads(tmp_path) == ["s2"]  # s1 is skipped, not taken over
    [redriven] = engine.run(load(root), ["studies"], RunOptions(redrive=True))
    assert redriven.failed == 1 and "reset studies --failed" in redriven.errors[0]
    assert operations.reset_failed(load(root), "studies") == 1
    fixed = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert fixed.failed == 0 and _payloads(tmp_path) == ["s1", "s1-next", "s2"]
    assert {w["entity"]: w["failed_end"] for w in operations.watermarks(load(root), "studies")} == {
        "s1": None, "s2": None,
    }  # fmt: skip


def test_a_parked_entity_stays_parked_when_max_attempts_is_raised(url: str, tmp_path: Path) -> None:
    """s1 was parked (taken over with its 3 attempts used up). A parked entity was only "held by a
    dead claim with attempts >= max_attempts": raising max_attempts to 4 had the next run take s1
    over and export it (to 5: at 4, a fourth attempt counted for a death that never was, and
    parked again), which may kill the worker again before the later tasks run. It stays
    parked, as a failed partition does, until 'sluicegate reset studies --failed'."""
    root, _ = _s1_died_alone_with_one_attempt_left(tmp_path, url)
    assert _run(root, export_type="daily", end=T).failed == 1  # s1 parked
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("max_attempts = 3", "max_attempts = 5"))
    [dry] = engine.run(load(root), ["studies"], RunOptions(request=ExportRequest(end=T), dry_run=True))
    assert [n for n in dry.entities if n["entity"] == "s1" and "error" in n], dry.entities
    again = _run(root, export_type="daily", end=T)
    assert again.failed == 1 and "s1: gave up after 3 attempts" in again.errors[0], again.entities
    assert "reset studies --failed" in again.errors[0] and _payloads(tmp_path) == ["s2"]
    [redriven] = engine.run(load(root), ["studies"], RunOptions(redrive=True))
    assert redriven.failed == 1 and "reset studies --failed" in redriven.errors[0]
    assert _payloads(tmp_path) == ["s2"]
    assert operations.reset_failed(load(root), "studies") == 1
    fixed = _run(root, export_type="daily", end=T)
    assert fixed.failed == 0 and _payloads(tmp_path) == ["s1", "s2"]


def test_an_entity_another_run_parks_meanwhile_is_a_failure_not_held(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs raced for s1, held by a dead claim with one attempt left: this one noted it held
    (its claim refused), then the other took it over and parked it. This run then reported
    "another export holds this entity ... the next run takes it over once its lease has run out"
    and exited 0, though no run takes a parked entity over: it now says s1 is parked and how to
    reset it, a failure of the run as for the run that parked it."""
    root, _ = _s1_died_alone_with_one_attempt_left(tmp_path, url)
    project = load(root)
    real = incremental.watermarks.take_over_window

    def other_run_first(task: Any, request: Any, source: Any, wm: Any, entities: Any, **kw: Any) -> Any:
        with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as other:
            windows, notes, entity = real(task, request, source, other.watermarks, entities, **kw)
            assert entity == "s1" and not windows and "error" in notes[0], notes  # it parked s1
        return real(task, request, source, wm, entities, **kw)

    monkeypatch.setattr(incremental.watermarks, "take_over_window", other_run_first)
    raced = _run(root, export_type="daily", end=T)
    assert raced.failed == 1 and "s1: gave up after 3 attempts, max_attempts being 3" in raced.errors[0]
    assert "reset studies --failed' to retry" in raced.errors[0], raced.entities
    assert not [n for n in raced.entities if "another export holds" in str(n.get("note"))], raced.entities
    assert _payloads(tmp_path) == ["s2"]


def test_a_dry_run_forecasts_parking_only_the_entity_a_take_over_charges(url: str, tmp_path: Path) -> None:
    """A run died holding s1 and s2 together, each window stored, both at max_attempts - 1. The run
    takes them over one at a time, charging no attempt (nothing tells which one killed it): both
    are exported. A dry run said both would be parked; and the take-over charged the last one left
    of the dead batch (s2), as though its dead claim had held it alone, and parked it."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "s1")
    rec.add("s2", T - dt.timedelta(hours=2), "s2")
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure("studies", ["s1", "s2"])
        for c in ledger.watermarks.claim("studies", ["s1", "s2"], lease=600):  # the batch it killed
            ledger.watermarks.set_pending(c, T - dt.timedelta(days=1), T, "daily")
        _expire_claims(ledger, attempts=2)
    [dry] = engine.run(load(root), ["studies"], RunOptions(request=ExportRequest(end=T), dry_run=True))
    assert [e["partition"]["entity"] for e in dry.plan] == ["s1", "s2"], dry.plan
    assert [n["entity"] for n in dry.entities if "would be parked" in n.get("error", "")] == []
    ran = _run(root, export_type="daily", end=T)
    assert ran.failed == 0, ran.errors
    assert _payloads(tmp_path) == ["s1", "s2"]


def test_a_dead_claim_that_stored_no_window_counts_no_attempt(url: str, tmp_path: Path) -> None:
    """A run died holding s1 alone before it stored a window (it read none of s1's rows), with
    nothing to export for s1. Taking it over counted an attempt, and giving it back as "nothing
    to export" kept it: s1, at max_attempts - 1 from two deaths of its own, was parked by the next
    run (attempts used up) though no third worker ever died exporting it."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "s1")
    assert _run(root, export_type="daily", end=T).exported == 1
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.watermarks.claim("studies", ["s1"], lease=600)  # died before storing a window
        _expire_claims(ledger, attempts=2)
    empty = _run(root, export_type="daily", end=T)
    assert empty.failed == 0 and empty.exported == 0, empty.entities
    assert operations.watermarks(load(root), "studies")[0]["attempts"] == 2
    rec.add("s1", T + dt.timedelta(hours=2), "s1-next")
    later = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert later.failed == 0, later.errors
    assert _payloads(tmp_path) == ["s1", "s1-next"]


def test_an_entity_owing_a_failed_reexport_is_taken_over_after_its_batch_dies(
    url: str, tmp_path: Path
) -> None:
    """s1 owes a re-export redrive gave up on (its attempts, max_attempts of them, are the
    re-export's, which a commit keeps). A run died holding s1 and s2 in one batch (neither
    alone). s1 was never taken over again: its exports stopped, each run failing with "gave up
    ... leases expired as a worker died exporting it", though no worker died exporting it alone."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "s1")
    rec.add("s2", T - dt.timedelta(hours=2), "s2")
    project = load(root)
    ledger_url = project.settings.ledger_url
    with Ledger(ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        wm = ledger.watermarks
        wm.ensure("studies", ["s1", "s2"])
        for _ in range(3):  # the re-export failed, then twice more in redrive: given up
            wm.fail(
                "studies", "s1", token=None, error="boom", start=T - dt.timedelta(days=9),
                end=T - dt.timedelta(days=8), export_type="daily", mode="reexport", destination="/x",
            )  # fmt: skip
        wm.claim("studies", ["s1", "s2"], lease=600)  # the run that died, a batch of two
        _expire_claims(ledger)
    first = _run(root, export_type="daily", end=T)
    assert first.failed == 0, first.errors
    assert _payloads(tmp_path) == ["s1", "s2"]
    [s1] = [w for w in operations.watermarks(load(root), "studies") if w["entity"] == "s1"]
    assert s1["watermark"] == T and s1["failed_mode"] == "reexport" and s1["attempts"] == 3
    with Ledger(ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.watermarks.claim("studies", ["s1"], lease=600)  # a run that died holding s1 alone
        _expire_claims(ledger)
    rec.add("s1", T + dt.timedelta(hours=2), "s1-next")
    again = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert again.failed == 0 and _payloads(tmp_path) == ["s1", "s1-next", "s2"], again.errors
    [s1] = [w for w in operations.watermarks(load(root), "studies") if w["entity"] == "s1"]
    assert s1["attempts"] == 3  # the re-export's, which a death of the entity's own does not add to


def test_a_run_that_fails_to_start_gives_back_the_entity_it_took_over(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose every entity was held by a dead claim takes one over before it records its run
    on the ledger. When that failed (the ledger, a second SIGINT), the entity taken over was not
    given back, unlike the run's claimed ones: held for a whole lease, then taken over counted an
    attempt, as if it had killed its worker alone."""
    from sluicegate.exceptions import LedgerError
    from sluicegate.ledger.runs import RunStore

    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=2), "s1")
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure("studies", ["s1", "s2"])
        ledger.watermarks.claim("studies", ["s1", "s2"], lease=600)  # the run that died, a batch
        _expire_claims(ledger)

    def start(*args: Any, **kwargs: Any) -> str:
        raise LedgerError("the ledger went away")

    monkeypatch.setattr(RunStore, "start", start)
    with contextlib.suppress(LedgerError):  # or recorded as the task's failure
        _run(root, export_type="daily", end=T)
    rows = {w["entity"]: w for w in operations.watermarks(load(root), "studies")}
    assert not rows["s1"]["held"] and rows["s1"]["attempts"] == 0  # given back, nothing counted


def test_a_claim_run_again_after_a_rollback_keeps_the_token_its_rows_were_taken_under(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim of two entities that found one row put it under a lone token, the server rolled
    the transaction back (a deadlock, a lost connection) and the claim ran again, finding both:
    the first try's lone token stayed, on the claims (PostgreSQL, SQLite: none could commit) or on
    the rows (MariaDB: a death of the batch charged each)."""
    from sluicegate.exceptions import LedgerError

    project = load(_project(tmp_path, url))
    failed: list[str] = []
    sleep = time.sleep
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        wm = ledger.watermarks
        wm.ensure("studies", ["s1"])

        def rolled_back(*args: Any, **kwargs: Any) -> None:
            if not failed:
                failed.append("once")
                raise LedgerError("rolled back") from RuntimeError("deadlock detected")

        def meanwhile(seconds: float) -> None:  # the retry's pause: the other entity's row appears
            if failed == ["once"]:
                failed.append("ensured")
                wm.ensure("studies", ["s2"])
            sleep(seconds)

        lone, claim_take = wm.lone, wm.claim_take
        monkeypatch.setattr(wm, "lone", lambda *a, **k: (rolled_back(), lone(*a, **k)))
        monkeypatch.setattr(wm, "claim_take", lambda *a, **k: (rolled_back(), claim_take(*a, **k)))
        monkeypatch.setattr(time, "sleep", meanwhile)
        claims = wm.claim("studies", ["s1", "s2"], lease=600)
        monkeypatch.setattr(time, "sleep", sleep)
        assert failed == ["once", "ensured"] and len(claims) == 2
        assert uuid.UUID(claims[0].token).version == 4
        assert wm.release(claims[0].token) == 2  # both rows are under the claims' token


def test_a_dead_claims_entities_are_taken_over_one_at_a_time_counted_when_alone(
    url: str, tmp_path: Path
) -> None:
    """A run died holding three entities (one of them may have killed it): a claim takes none of
    them (it took them back together, an attempt each, to be read in one batch again); they are
    taken over one at a time, the oldest death first, each under a token of its own, none of them
    an attempt: nothing tells which one killed it, the last one left of it included. A take-over
    that dies in turn held its entity alone from the start: taking that over is an attempt."""
    project = load(_project(tmp_path, url))
    ledger_url = project.settings.ledger_url
    with Ledger(ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        wm = ledger.watermarks
        wm.ensure("studies", ["a", "b", "c", "d", "e"])
        dead = wm.claim("studies", ["a", "b", "c"], lease=600)
        for c in dead:  # their windows stored: it died reading them
            wm.set_pending(c, T - dt.timedelta(days=1), T, "daily")
        _expire_claims(ledger)
        [alive] = wm.claim("studies", ["d"], lease=600)
        assert [c.entity for c in wm.claim("studies", ["a", "b", "c", "d", "e"], lease=600)] == ["e"]
        none = wm.take_over("studies", ["d", "e"], lease=600, max_attempts=5)
        assert none == []  # held by a live claim, or by none
        taken = [wm.take_over("studies", list("abcde"), lease=600, max_attempts=5) for _ in range(4)]
        assert taken[3] == [] and alive.entity == "d"
        assert [(t.entity, t.attempts) for [t] in taken[:3]] == [("a", 0), ("b", 0), ("c", 0)]
        assert len({t.token for [t] in taken[:3]} | {dead[0].token}) == 4
        _expire_claims(ledger)  # the take-overs died too, each exporting its entity alone
        again = [wm.take_over("studies", list("abcde"), lease=600, max_attempts=5) for _ in range(3)]
    assert [(t.entity, t.attempts) for [t] in again] == [("a", 1), ("b", 1), ("c", 1)]


# 8: two identical requests at once: one exports, the other exports zero rows
def test_two_identical_requests_export_once(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    for i in range(200):
        rec.add("s1", T - dt.timedelta(minutes=i + 1), f"p{i}")
    req = tmp_path / "req.json"
    req.write_text('{"exportType": "DAILY", "endDateTime": "2024-05-10T00:00:00Z"}')
    procs = [_spawn(root, "request", str(req), "--json") for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out)[0])
    rows = sorted(sum(e["rows"] for e in r["entities"]) for r in results)
    assert rows == [0, 200]
    assert len(files(tmp_path / "out")) == 1


# 9: a row committed late with an old cursor is exported by a later run
def test_late_commit_with_old_cursor_is_not_lost(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early"]
    # A writer's transaction stays open across the next export. Its row's cursor comes from the
    # writer's clock (PostgreSQL: the transaction start), so it is older than that export's end.
    if url.startswith("sqlite"):
        writer: Any = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'late')")
    else:  # MariaDB: the row's cursor is the INSERT's UTC_TIMESTAMP(6), in the open transaction
        if is_mariadb(url):  # innodb_trx has whole seconds: begin after the first export's second
            time.sleep(1.1)
        writer = mariadb_conn.connect(url, autocommit=False) if is_mariadb(url) else psycopg.connect(url)
        writer.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'late')")
    time.sleep(0.3)
    exported_at = dt.datetime.now(UTC)
    during = _run(root, export_type="instant", entities=("s1",))
    assert "late" not in _payloads(tmp_path)
    if url.startswith("sqlite"):
        assert "write transaction is open" in during.entities[0]["note"]
        writer.execute("COMMIT")
    else:
        writer.commit()
        cursor = rec.conn.execute("SELECT uploaded_on FROM records WHERE payload = 'late'").fetchone()[0]
        cursor = cursor.replace(tzinfo=UTC) if cursor.tzinfo is None else cursor  # DATETIME: UTC
        # The row is older than the export, yet the export's window stopped before it.
        assert cursor < exported_at and dt.datetime.fromisoformat(during.entities[0]["end"]) <= cursor
    writer.close()
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early", "late"]


# A test on each database server (a fixture named "server": its URL through request.getfixturevalue).
ON_SERVERS = pytest.mark.parametrize(
    "server",
    [pytest.param("pg_url", marks=pytest.mark.pg), pytest.param("mariadb_url", marks=pytest.mark.mariadb)],
)


@ON_SERVERS
def test_a_source_clock_behind_the_hosts_puts_no_later_row_below_the_watermark(
    server: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instant window ended at this host's clock minus safety_margin. With the server's clock
    3 minutes behind (more than the margin, 0 s here), a row its DEFAULT now() stamped after the
    export, with no transaction open then, fell below the watermark and was never exported. The
    server's clock now caps the window too (MariaDB: its UTC_TIMESTAMP(6))."""
    source = request.getfixturevalue(server)
    root = _project(tmp_path, source, bootstrap="beginning", margin="0s")
    rec = Records(source)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=10), "early")

    class Ahead(dt.datetime):  # this host's clock, 3 minutes ahead of the server's
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Any:
            return dt.datetime.now(tz) + dt.timedelta(minutes=3)

    monkeypatch.setattr(incremental, "dt", SimpleNamespace(UTC=UTC, timedelta=dt.timedelta, datetime=Ahead))
    _run(root, export_type="instant", entities=("s1",))
    rec.conn.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'after')")  # the server's now
    # MariaDB shows a transaction's start in whole seconds (innodb_trx): one that another session
    # (this database holds the run's ledger too) has open in the second of the insert can cap the
    # window before the row (exported next time, not lost); that failed this test once in a CI run
    # under load. A second later, only the clock's cap is tested.
    time.sleep(1.1)
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["after", "early"]


@ON_SERVERS
def test_an_hourly_window_within_the_margin_of_its_end_waits_whole(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An hourly run within safety_margin after the hour (here a 2 h margin: always) is capped
    by the server's clock less the margin, for a transaction that begins after the run looked
    may stamp its rows that much earlier. 21e022e cut the window there, inside an hour (every
    later window shifted; a daily task's file named by its day stuck on it); d646adf then left
    the margin out and such rows fell below the watermark. The window now ends at the start of
    the hour holding that cap: whole hours, the last ones waiting for a later run."""
    source = request.getfixturevalue(server)
    root = _project(tmp_path, source, bootstrap="beginning", margin="2h")
    rec = Records(source)
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rec.add("s1", hour - dt.timedelta(hours=3, minutes=30), "whole-hour-before")
    rec.add("s1", hour - dt.timedelta(minutes=30), "within-the-margin")
    summary = _run(root, export_type="hourly", entities=("s1",))
    end = dt.datetime.fromisoformat(summary.entities[0]["end"])
    assert end == hour - dt.timedelta(hours=2) or (  # the hour turned while the test ran
        end == hour - dt.timedelta(hours=1) and dt.datetime.now(UTC) >= hour + dt.timedelta(hours=1)
    ), summary.entities
    assert _payloads(tmp_path) == ["whole-hour-before"]


@pytest.mark.pg
def test_a_run_just_after_its_end_waits_out_the_margin_rather_than_a_period(
    pg_url: str, tmp_path: Path
) -> None:
    """A run within safety_margin after its window's end (an hourly run at the hour) would end
    its window a whole hour earlier; when the wait is short (the margin, at most 2 minutes) it
    waits for the source's clock to pass end + margin instead, and exports up to the end."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="3s")
    rec = Records(pg_url)
    end = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    rec.add("s1", end - dt.timedelta(minutes=90), "before")
    rec.add("s1", end - dt.timedelta(seconds=2), "just-before-the-end")
    started = time.monotonic()
    summary = _run(root, export_type="hourly", end=end, entities=("s1",))
    assert summary.entities[0]["end"] == end.isoformat(), summary.entities
    assert _payloads(tmp_path) == ["before", "just-before-the-end"]
    assert 1.0 <= time.monotonic() - started < 30


@pytest.mark.pg
def test_a_run_whose_max_runtime_is_shorter_than_the_margin_wait_does_not_wait(
    pg_url: str, tmp_path: Path
) -> None:
    """The wait for the margin after the boundary ignored --max-runtime (a Lambda's time left):
    a run with 2 s left slept 8 s, past its budget, and a Lambda invoked at the hour with less
    time than the margin was killed asleep every hour, never exporting. With no room for the
    wait the run exports up to the period before, within its budget."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="10s")
    rec = Records(pg_url)
    end = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    rec.add("s1", end - dt.timedelta(hours=3), "long-before")
    started = time.monotonic()
    request = ExportRequest(export_type="hourly", end=end, entities=("s1",))
    [summary] = engine.run(load(root), ["studies"], RunOptions(request=request, max_runtime=2.0))
    assert time.monotonic() - started < 4, "slept past --max-runtime"
    assert summary.entities[0]["end"] < end.isoformat(), summary.entities
    assert _payloads(tmp_path) == ["long-before"]


@pytest.mark.pg
def test_a_signal_ends_the_margin_wait_at_once(pg_url: str, tmp_path: Path) -> None:
    """SIGTERM (systemd stopping a timer's run) during the wait for the margin after the hour
    was noted and then slept through: the run sat up to 2 minutes before it stopped. It now
    stops at once, claiming and exporting nothing, its exit code the signal's."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="40s")
    Records(pg_url).add("s1", T, "before")
    end = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    message = tmp_path / "request.json"
    message.write_text(
        json.dumps({"endDateTime": end.isoformat(), "exportType": "HOURLY", "studyWhitelist": ["s1"]})
    )
    proc = _spawn(root, "request", str(message))
    time.sleep(4)  # loaded, connected and waiting (a signal before the wait: no wait at all)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - signalled < 5, "slept out the margin after SIGTERM"
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert _marks(root) in ({}, {"s1": None}) and not files(tmp_path / "out")


@pytest.mark.pg
def test_a_dry_run_within_the_margin_shows_the_window_the_run_exports_after_its_wait(
    pg_url: str, tmp_path: Path
) -> None:
    """A dry run never waits for the margin, and so listed a window a whole period shorter than
    the run (which waits) exports. It now lists the run's window and says the run waits first."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="30s")
    Records(pg_url).add("s1", T, "before")
    end = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    request = ExportRequest(export_type="hourly", end=end, entities=("s1",))
    started = time.monotonic()
    [summary] = engine.run(load(root), ["studies"], RunOptions(request=request, dry_run=True))
    assert time.monotonic() - started < 10, "a dry run waited"
    assert [p["end"] for p in summary.plan] == [end.isoformat()], summary.plan
    assert "the run first waits" in summary.entities[0]["note"], summary.entities
    # with no room for the wait (--max-runtime), the run does not wait: nor does its plan
    short = RunOptions(request=request, dry_run=True, max_runtime=2.0)
    [summary] = engine.run(load(root), ["studies"], short)
    assert [p["end"] < end.isoformat() for p in summary.plan] == [True] and not summary.entities, summary


@pytest.mark.pg
def test_a_back_dated_cursor_in_an_open_transaction_is_not_lost(pg_url: str, tmp_path: Path) -> None:
    """A writer stamps its row 1 s before its own transaction began (a client clock, a batch
    time) and commits after an export that started 3 s into that transaction: the window end is
    capped at the transaction's start minus safety_margin (2 s), so the row falls in a later
    window. Capped at the transaction's start alone, the window would pass the row unseen."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="2s")
    rec = Records(pg_url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    writer = psycopg.connect(pg_url)
    writer.execute(
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', now() - interval '1 second', 'late')"
    )
    time.sleep(3)
    during = _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early"]
    writer.commit()
    writer.close()
    cursor = rec.conn.execute("SELECT uploaded_on FROM records WHERE payload = 'late'").fetchone()[0]
    assert dt.datetime.fromisoformat(during.entities[0]["end"]) <= cursor
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early", "late"]


@pytest.mark.pg
def test_a_sluicegate_writers_open_transaction_caps_the_window_too(pg_url: str, tmp_path: Path) -> None:
    """The late-commit cap left out every session named 'sluicegate', so a row that sluicegate's
    own ingest, table sink or blocks load was still committing (its cursor the transaction's
    start) fell behind the watermark and was never exported. Writers count now."""
    from sluicegate import tables

    root = _project(tmp_path, pg_url, bootstrap="beginning")
    rec = Records(pg_url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    writer = tables.TableDb(pg_url)  # the connection ingest and the table sinks write through
    writer.conn.execute("BEGIN")
    writer.conn.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'late')")
    time.sleep(0.3)
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early"]
    writer.conn.execute("COMMIT")
    writer.close()
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early", "late"]


@pytest.mark.pg
def test_a_long_running_exporters_own_arrow_session_holds_no_window_back(pg_url: str, tmp_path: Path) -> None:
    """ADBC's session (the Arrow read path) stays "idle in transaction" after a read, and it was not
    named 'sluicegate' as psycopg's is: the late-commit cap took it for a writer's open transaction,
    so a long-running exporter (run --every, the service) capped every later pass's windows at its
    first read, and rows stamped after that were never exported until a restart."""
    root = _project(tmp_path, pg_url, bootstrap="beginning", margin="1s")
    rec = Records(pg_url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    options = RunOptions(workers=1, request=ExportRequest(export_type="instant", entities=("s1",)))
    with engine.Exporter(load(root)) as exporter:
        task = load(root).tasks["studies"]
        [first] = exporter.run_once([task], options)
        assert _payloads(tmp_path) == ["early"], first.errors
        time.sleep(1.5)
        rec.add("s1", dt.datetime.now(UTC), "later")
        time.sleep(1.5)  # past safety_margin
        [second] = exporter.run_once([task], options)
    assert _payloads(tmp_path) == ["early", "later"], second.entities


@pytest.mark.pg
def test_a_prepared_transaction_holds_exports_back(pg_url: str, tmp_path: Path) -> None:
    """A prepared transaction (two-phase commit) is in no session, so the late-commit cap did
    not see it: an export passed its row, stamped at the transaction's start, and once it was
    committed the row was behind the watermark, in no file. Exports now wait for it."""
    root = _project(tmp_path, pg_url, bootstrap="beginning")
    rec = Records(pg_url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    writer = psycopg.connect(pg_url)
    writer.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'late')")
    writer.execute("PREPARE TRANSACTION 'sg-test'")
    writer.close()  # the transaction outlives its session
    try:
        time.sleep(0.3)
        during = _run(root, export_type="instant", entities=("s1",))
        assert _payloads(tmp_path) == [] and _marks(root).get("s1") is None
        assert "prepared transaction 'sg-test'" in during.entities[0]["note"]
        rec.conn.execute("COMMIT PREPARED 'sg-test'")
    finally:  # a database with a prepared transaction cannot be dropped
        if rec.conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = 'sg-test'").fetchone():
            rec.conn.execute("ROLLBACK PREPARED 'sg-test'")
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early", "late"]


@pytest.mark.mariadb
def test_a_prepared_xa_transaction_caps_the_window(mariadb_url: str, tmp_path: Path) -> None:
    """A prepared XA transaction whose session ended has no process list row, so the join
    that ties transactions to the source's database dropped it and the cap did not apply: its
    row, stamped inside it, fell behind the watermark once committed."""
    root = _project(tmp_path, mariadb_url, bootstrap="beginning")
    rec = Records(mariadb_url)
    rec.add("s1", dt.datetime.now(UTC) - dt.timedelta(minutes=5), "early")
    time.sleep(1.1)  # innodb_trx has whole seconds: begin after the first row's second
    writer = mariadb_conn.connect(mariadb_url)
    for statement in ("XA START 'sg-test'", "INSERT INTO records (study_id, payload) VALUES ('s1', 'late')"):
        writer.execute(statement)
    writer.execute("XA END 'sg-test'")
    writer.execute("XA PREPARE 'sg-test'")
    writer.close()  # the prepared transaction outlives its session
    try:
        time.sleep(0.3)
        _run(root, export_type="instant", entities=("s1",))
        assert _payloads(tmp_path) == ["early"]
        rec.conn.execute("XA COMMIT 'sg-test'")
    finally:  # never leave it prepared: it holds its locks
        if rec.conn.execute("XA RECOVER").fetchall():
            rec.conn.execute("XA ROLLBACK 'sg-test'")
    time.sleep(0.3)  # innodb_trx is a cache, refreshed at most every 0.1 s
    _run(root, export_type="instant", entities=("s1",))
    assert _payloads(tmp_path) == ["early", "late"]


# 11: the request message through the CLI
def test_documented_reexport_message_is_accepted(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", dt.datetime(2016, 10, 4, 12, tzinfo=UTC), "inside")
    rec.add("s1", dt.datetime(2016, 10, 5, 1, tzinfo=UTC), "outside")
    result = subprocess.run(
        [SLUICEGATE, "-C", str(root), "request", "-", "--json"],
        input=DOCUMENTED,
        capture_output=True,
        text=True,
        check=True,
    )
    [summary] = json.loads(result.stdout)
    assert summary["entities"][0]["rows"] == 1 and _payloads(tmp_path) == ["inside"]
    assert _marks(root) == {}  # a re-export never creates or moves a watermark
    req = load_request(DOCUMENTED)
    assert (req.ignore_watermark, req.tag, req.export_type) == (True, "test exporter", "daily")


@pytest.mark.parametrize(
    "message,error",
    [
        (
            '{"startDateTime":"2024-01-01T00:00:00Z","endDateTime":"2024-01-02T00:00:00Z","exportType":"DAILY"}',
            "startDateTime requires ignoreLastExportTime=true",
        ),
        (
            '{"startDateTime":"2024-01-01T00:00:00Z","ignoreLastExportTime":true}',
            "startDateTime requires endDateTime",
        ),
        (
            '{"startDateTime":"2024-01-02T00:00:00Z","endDateTime":"2024-01-02T00:00:00Z","ignoreLastExportTime":true}',
            "must be before endDateTime",
        ),
        ('{"exportType":"DAILY"}', "DAILY exports require endDateTime"),
        (
            '{"exportType":"HOURLY","endDateTime":"2024-01-02T00:00:00Z"}',
            "HOURLY exports require studyWhitelist",
        ),
        (
            '{"exportType":"INSTANT","studyWhitelist":["a"],"endDateTime":"2024-01-02T00:00:00Z"}',
            "INSTANT exports must not have endDateTime",
        ),
        ('{"exportType":"INSTANT"}', "INSTANT exports require studyWhitelist"),
        ('{"tag":"nothing else"}', "give exportType"),
        ('{"exportType":"WEEKLY","endDateTime":"2024-01-02T00:00:00Z"}', "is not valid"),
        ('{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","studyWhitelist":[]}', "non-empty list"),
        (
            '{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","ignoreLastExportTime":"maybe"}',
            "not true or false",
        ),
        (
            '{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","recordIdS3Override":"x"}',
            "is not supported",
        ),
        ('{"exportType":"DAILY","endDateTime":"yesterday"}', "is not an ISO 8601 date-time"),
        (
            '{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","tag":"\\ud800"}',
            "is not valid Unicode",
        ),
        ('{"exportType":"INSTANT","studyWhitelist":["\\ud800"]}', "is not valid Unicode text"),
        # A watermark moved past now: every row written later with a cursor before it was in no file.
        (
            '{"exportType":"DAILY","endDateTime":"2999-01-01T00:00:00Z"}',
            "is in the future (it is now",
        ),
        ('{"exportType":"DAILY","endDateTime":"9999-12-31T23:59:59-12:00"}', "outside the times sluicegate"),
        ('{"exportType":"DAILY","endDateTime":"0001-01-01T00:00:00+05:00"}', "outside the times sluicegate"),
        (
            '{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","studyWhitelist":[null]}',
            "null is not a study id",
        ),
        (
            '{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","studyWhitelist":[["a"]]}',
            '["a"] is not a study id',
        ),
        ('{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","tag":{"a":1}}', "is not a string"),
        ("not json", "not valid JSON"),
        (  # JSON keeps the last: the request was run as INSTANT without a word
            '{"exportType":"DAILY","exportType":"INSTANT","studyWhitelist":["a"]}',
            "the request names field 'exportType' twice; give each field once",
        ),
    ],
)
def test_invalid_requests_exit_2(tmp_path: Path, message: str, error: str) -> None:
    root = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    sqlite3.connect(tmp_path / "s.db").close()
    req = tmp_path / "req.json"
    req.write_text(message)
    result = cli(root, "request", str(req))
    assert result.returncode == 2 and error in result.stderr and "Traceback" not in result.stderr


RECORDS_SQLITE = "CREATE TABLE records (record_id INTEGER PRIMARY KEY, study_id {study_type}, uploaded_on TEXT, payload TEXT)"


def _sqlite(tmp_path: Path, *statements: str) -> None:
    """Run statements on the SQLite source `s.db` (values Records cannot write: raw text cursors...)."""
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_an_entity_column_of_mixed_types_is_refused_before_any_watermark_moves(tmp_path: Path) -> None:
    """A SQLite column without a type held 'a' and 5: entity 5 was read as the text '5', matched
    no row, was "exported" with 0 rows and its watermark passed the row. Now the run stops (exit
    2) naming the column and the cast that fixes it; with the cast both rows are exported."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type=""),  # no type: 'a' and 5 are kept apart
        "INSERT INTO records (study_id, uploaded_on, payload)"
        " VALUES ('a', '2024-05-01T00:00:00Z', 'TEXT-A'), (5, '2024-05-01T00:00:01Z', 'INT-5')",
    )
    refused = cli(root, "run", "--type", "instant")
    assert refused.returncode == 2 and "holds values of more than one type" in refused.stdout + refused.stderr
    assert _marks(root) == {} and files(tmp_path / "out") == []
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, CAST(study_id AS TEXT) AS study_id, uploaded_on, payload FROM records"
    )
    assert cli(root, "run", "--type", "instant").returncode == 0
    assert _payloads(tmp_path) == ["INT-5", "TEXT-A"]


def test_check_counts_sqlite_cursors_no_window_can_hold(tmp_path: Path) -> None:
    """ISO 8601 forms SQLite's julianday() cannot read (basic form, +0100) were in no window,
    silently; `check` now counts them and names one."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on) VALUES ('s1', '2024-05-01T00:00:00Z')",
    )
    assert cli(root, "check").returncode == 0
    _sqlite(
        tmp_path,
        "INSERT INTO records (study_id, uploaded_on) VALUES ('s1', '20240501T000000Z'), ('s1', NULL)",
    )
    checked = cli(root, "check")
    assert checked.returncode == 2
    assert (
        "1 row(s) have a uploaded_on SQLite cannot read as a time (such as '20240501T000000Z')"
        in checked.stderr
    )
    # a NULL cursor is in no window either, and no run said so
    assert "1 row(s) have a NULL uploaded_on, which no window holds" in checked.stderr
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT * FROM records WHERE uploaded_on IS NOT NULL"
    )
    assert "NULL" not in cli(root, "check").stderr


def test_a_sqlite_cursor_julianday_reads_but_python_does_not_fails_by_column_or_is_read(
    tmp_path: Path,
) -> None:
    """julianday() reads '2024-05-09 12:00:00z' (RFC 3339's lower-case z) and '2024-02-30' (as
    March 1), so their rows are in the window; writing them failed the window with "'...' is not
    an ISO 8601 timestamp", naming no column and no fix. The z is UTC; the impossible date fails
    its window naming the column, the value and what to do, and the watermark stays."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', '2024-05-09 12:00:00z', 'z')",
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s2', '2024-02-30 00:00:00', 'f')",
    )
    summary = _run(root, export_type="daily", end=T, entities=("s1", "s2"))
    assert _by_study(tmp_path) == {"s1": ["z"]}
    [error] = summary.errors
    assert "column 'uploaded_on' holds '2024-02-30 00:00:00', which is not an ISO 8601 time" in error
    assert "select.sql" in error
    assert _marks(root) == {"s1": T, "s2": dt.datetime(1000, 1, 1, tzinfo=UTC)}


def test_check_names_sqlite_cursors_of_impossible_dates_and_dates_among_times(tmp_path: Path) -> None:
    """julianday() reads '2024-02-30' as March 1 and hour 24 as the next midnight, so `check`
    passed them while every run failed their window. A date alone among times was passed too:
    a run judges the cursor by its first row, a time, so after a window ending at noon the rows
    dated that day were below the watermark, never exported. `check` now names both (exit 2)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', '2024-03-10 08:00:00', 'morning')",
    )
    assert cli(root, "check").returncode == 0
    _run(root, export_type="instant", entities=("s1",), end=dt.datetime(2024, 3, 10, 12, tzinfo=UTC))
    _sqlite(
        tmp_path,
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', '2024-03-10', 'dated that day')",
    )
    _run(root, export_type="instant", entities=("s1",), end=dt.datetime(2024, 3, 11, 12, tzinfo=UTC))
    assert _payloads(tmp_path) == ["morning"]  # what check must warn of: the date alone is lost
    checked = cli(root, "check")
    assert checked.returncode == 2
    assert (
        "1 row(s) have a uploaded_on that is a date alone (such as '2024-03-10') among times"
        in checked.stderr
    )
    _sqlite(
        tmp_path,
        "DELETE FROM records WHERE payload = 'dated that day'",
        "INSERT INTO records (study_id, uploaded_on) VALUES ('s1', '2024-02-30 10:00:00'), ('s1', '2024-03-10 24:00:00')",
    )
    checked = cli(root, "check")
    assert checked.returncode == 2 and "date alone" not in checked.stderr
    assert (
        "2 row(s) have a uploaded_on that is no time of the calendar (such as '2024-02-30 10:00:00')"
        in checked.stderr
    )


def test_an_integer_sqlite_cursor_is_refused_not_read_as_julian_days(tmp_path: Path) -> None:
    """SQLite's julianday() reads an integer as a Julian day number: 2460437 is 2024-05-01,
    Unix seconds are no day at all. Either way the rows' windows were not what the writer
    meant, `check` passed them, and a run exported nothing, exit 0. Both refuse now."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT").replace("uploaded_on TEXT", "uploaded_on INTEGER"),
        "INSERT INTO records (study_id, uploaded_on) VALUES ('s1', 2460437), ('s1', '2024-05-01T00:00:00Z')",
    )
    checked = cli(root, "check")
    assert checked.returncode == 2 and "1 row(s) have a uploaded_on SQLite cannot read" in checked.stderr
    assert "datetime(col, 'unixepoch')" in checked.stderr
    run = cli(root, "run")
    assert run.returncode == 2 and "the first row(s) have a uploaded_on SQLite cannot read" in run.stderr
    assert files(tmp_path / "out") == [] and operations.watermarks(load(root), "studies") == []


def test_an_entity_with_a_nul_fails_each_run_and_the_others_are_exported(tmp_path: Path) -> None:
    """An entity holding a NUL was never claimed (the ledger's JSON list ended it at the NUL):
    every run said another export held it, exit 0, and its rows were never exported."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload)"
        " VALUES ('a' || char(0) || 'b', '2024-05-01T00:00:00Z', 'NUL'), ('s1', '2024-05-01T00:00:00Z', 'OK')",
    )
    for _ in range(2):
        ran = cli(root, "run", "--type", "instant", "--json")
        assert ran.returncode == 1
        [summary] = json.loads(ran.stdout)
        assert summary["failed"] == 1 and "holds a NUL character" in json.dumps(summary["errors"])
    assert _payloads(tmp_path) == ["OK"]


def test_an_entity_with_a_newline_is_quoted_in_the_runs_error_line(tmp_path: Path) -> None:
    """The error line of a failed window began with the entity as it was: a newline in it split
    the line in two (the entity's own summary line was quoted already)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('x' || char(10) || 'y', '2024-05-01', 'NL')",
    )
    ran = cli(root, "run", "--type", "instant")
    assert ran.returncode == 1
    assert "  error: 'x\\ny': partition value study_id='x\\ny' cannot be used" in ran.stderr, ran.stderr
    assert not any(line.startswith("y") for line in ran.stderr.splitlines()), ran.stderr


def test_a_request_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    root = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    req = tmp_path / "req.json"
    req.write_bytes(b'{"exportType":"DAILY","endDateTime":"2024-01-02T00:00:00Z","tag":"\xff"}')
    result = cli(root, "request", str(req))
    assert result.returncode == 2 and "the request is not UTF-8 text (byte 0xff at byte 67)" in result.stderr


def test_watermark_delete_restarts_from_bootstrap(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "a")
    assert cli(root, "check").returncode == 0  # entity, cursor and the window path all check out
    _run(root, export_type="daily", end=T)
    assert cli(root, "watermark", "delete", "studies", "s1", check=True).returncode == 0
    assert _marks(root) == {}
    again = _run(root, export_type="daily", end=T)
    assert (
        again.entities[0]["start"] == (T - dt.timedelta(days=1)).isoformat()
        and again.entities[0]["rows"] == 1
    )
    assert cli(root, "watermark", "delete", "studies", "nope").returncode == 2
    listing = json.loads(cli(root, "watermark", "list", "studies", "--json", check=True).stdout)
    assert listing[0]["entity"] == "s1"


def test_watermark_list_shows_a_fixed_entity_without_a_watermark(tmp_path: Path) -> None:
    """A task.toml entity whose watermark was deleted (or never written) was left out of
    `watermark list`, so the operator could not see it would start from scratch. It is listed now,
    with no watermark (the bootstrap)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    with (root / "tasks" / "studies" / "task.toml").open("a") as toml:
        toml.write('entities = ["s1", "s2"]\n')
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=2), "a")
    rec.add("s2", T - dt.timedelta(hours=2), "b")
    _run(root, export_type="daily", end=T)
    assert cli(root, "watermark", "delete", "studies", "s2", check=True).returncode == 0
    listing = json.loads(cli(root, "watermark", "list", "studies", "--json", check=True).stdout)
    assert [(r["entity"], r["watermark"] is None) for r in listing] == [("s1", False), ("s2", True)]
    assert listing[1]["claimed"] is False and listing[1]["attempts"] == 0
    lines = cli(root, "watermark", "list", "studies", check=True).stdout.splitlines()
    assert "s2: watermark (none: bootstrap)" in lines, lines


def _indexes(rec: Records, url: str) -> set[str]:
    """The ledger's index names, without the SQLite table prefix."""
    if url.startswith("sqlite"):
        rows = rec.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        return {r[0].removeprefix("sluicegate_") for r in rows}
    rows = rec.conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'sluicegate'").fetchall()
    return {r[0] for r in rows}


def test_a_version_4_ledger_is_migrated_in_place(url: str, tmp_path: Path) -> None:
    """Opening a ledger made by the previous release adds what is new and keeps its rows."""
    if is_mariadb(url):
        pytest.skip("about upgrading a PostgreSQL or SQLite ledger made by release 4 (MariaDB's came later)")
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "a")
    first = _run(root, export_type="daily", end=T)
    prefix = "sluicegate_" if url.startswith("sqlite") else "sluicegate."
    added = (("watermarks", "failed_destination"), ("runs", "heartbeat_at"), ("partitions", "etag"))
    for table, column in added:  # the tables as release 4 made them
        rec.conn.execute(f"ALTER TABLE {prefix}{table} DROP COLUMN {column}")
        with pytest.raises(Exception, match=column):
            rec.conn.execute(f"SELECT {column} FROM {prefix}{table}")
    # the claim queue index as releases 4 and 5 made it (6 replaced it: it also orders by window)
    rec.conn.execute(f"DROP INDEX {prefix}partitions_queue_idx")
    old_index = "sluicegate_partitions_pending_idx" if url.startswith("sqlite") else "partitions_pending_idx"
    rec.conn.execute(f"CREATE INDEX {old_index} ON {prefix}partitions (task, changed_at, id)")
    assert _indexes(rec, url) >= {"partitions_pending_idx"}
    rec.conn.execute(f"DROP TABLE {prefix}task_errors")  # as releases before 7 made it: no such table
    rec.conn.execute(f"DROP INDEX {prefix}partitions_path_idx")  # as releases before 12 made it
    if not url.startswith("sqlite"):  # PostgreSQL's inbox of runs came with 11
        rec.conn.execute(f"DROP TABLE {prefix}change_runs")
    rec.conn.execute(f"UPDATE {prefix}meta SET value = '4' WHERE key = 'schema_version'")
    assert _marks(root) == {"s1": T}  # any command opens (and migrates) the ledger
    version = rec.conn.execute(f"SELECT value FROM {prefix}meta WHERE key = 'schema_version'").fetchone()
    assert version[0] == SCHEMA_VERSION == "12"
    assert rec.conn.execute(f"SELECT count(*) FROM {prefix}task_errors").fetchone()[0] == 0
    if not url.startswith("sqlite"):
        assert rec.conn.execute(f"SELECT count(*) FROM {prefix}change_runs").fetchone()[0] == 0
    indexes = _indexes(rec, url)
    assert "partitions_queue_idx" in indexes and "partitions_pending_idx" not in indexes
    assert "partitions_path_idx" in indexes
    for table, column in added:
        assert rec.conn.execute(f"SELECT count({column}) FROM {prefix}{table}").fetchone()[0] == 0
    assert first.run_id is not None
    assert len(rec.conn.execute(f"SELECT id FROM {prefix}runs").fetchall()) == 1  # the old run is kept
    assert _run(root, export_type="daily", end=T + dt.timedelta(days=1)).failed == 0


def test_a_long_window_export_renews_its_watermark_claim(url: str, tmp_path: Path) -> None:
    """While a window is being read, its watermark claim's lease is extended (like partitions')."""
    root = _project(tmp_path, url, lease="1s")
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "a")
    project = load(root)
    task = project.tasks["studies"]
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        wm = ledger.watermarks
        wm.ensure(task.name, ["s1"])
        [claim] = wm.claim(task.name, ["s1"], lease=1)
        assert wm.renew(claim.token, lease=600) == 1
        time.sleep(1.5)  # past the first lease: still held, so nobody else can claim it
        assert wm.claim(task.name, ["s1"], lease=1) == []
        assert [w["claimed"] for w in wm.entities(task.name)] == [True]
        assert wm.renew(str(uuid.uuid4()), lease=600) == 0  # another token renews nothing


@pytest.mark.mariadb
def test_a_watermark_renewal_skips_a_row_a_stuck_transaction_holds(mariadb_url: str, tmp_path: Path) -> None:
    """On MariaDB a watermark renewal was one UPDATE ... WHERE claim_token, which waited for a
    row lock where PostgreSQL's skips locked rows: one entity held by a stuck session stopped
    the renewal of every other entity of the claim for the lock wait timeout (60 s)."""
    project = load(_project(tmp_path, mariadb_url))
    task = project.tasks["studies"]
    done: list[int] = []
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.watermarks.ensure(task.name, ["s1", "s2", "s3"])
        claims = ledger.watermarks.claim(task.name, ["s1", "s2", "s3"], lease=600)
        with Ledger(project.settings.ledger_url) as stuck, stuck.watermarks.core.transaction() as cur:
            cur.execute("SELECT id FROM sluicegate_watermarks WHERE id = %s FOR UPDATE", (claims[1].id,))
            cur.fetchall()
            renewal = threading.Thread(
                target=lambda: done.append(ledger.watermarks.renew(claims[0].token, lease=900))
            )
            started = time.monotonic()
            renewal.start()
            renewal.join(timeout=20)
            waited = time.monotonic() - started
        renewal.join(timeout=90)
    assert done == [2] and waited < 10, (done, waited)


def test_a_watermark_claim_taken_over_after_its_lease_is_fenced(url: str, tmp_path: Path) -> None:
    """Two workers on one ledger: a held watermark is not claimed twice; once its lease ran out the
    other worker takes it over (alone; no attempt, as its dead claim held another entity too), the
    first one's commit, failure and release of it record nothing, and a commit never moves a
    watermark backwards."""
    project = load(_project(tmp_path, url))
    Records(url)  # the source table
    ledger_url, schema = project.settings.ledger_url, project.settings.ledger_schema
    day = dt.timedelta(days=1)
    with Ledger(ledger_url, schema=schema) as one, Ledger(ledger_url, schema=schema) as two:
        one.ensure_schema()
        one.watermarks.ensure("studies", ["s1", "s2"])
        first = one.watermarks.claim("studies", ["s1", "s2"], lease=1)
        assert [(c.entity, c.attempts) for c in first] == [("s1", 0), ("s2", 0)]
        assert two.watermarks.claim("studies", ["s1", "s2"], lease=60) == []
        time.sleep(1.3)
        assert two.watermarks.claim("studies", ["s1"], lease=60) == []  # a dead claim's: taken over
        [second] = two.watermarks.take_over("studies", ["s1"], lease=60, max_attempts=5)
        assert (second.entity, second.attempts) == ("s1", 0)  # not alone in its dead claim
        assert not one.watermarks.commit(first[0], end=T + 5 * day, rows=9, path="late")
        one.watermarks.fail(
            "studies", "s1", token=first[0].token, error="late", start=T - day, end=T,
            export_type="daily", mode="watermark",
        )  # fmt: skip
        assert one.watermarks.release(first[0].token) == 1  # s2, which nobody took over
        assert two.watermarks.commit(second, end=T, rows=2, path="p")
        [again] = two.watermarks.claim("studies", ["s1"], lease=60)
        assert two.watermarks.commit(again, end=T - day, rows=0, path=None)  # an older end
        marks = {w["entity"]: w for w in one.watermarks.entities("studies")}
    assert (marks["s1"]["watermark"], marks["s1"]["rows"], marks["s1"]["last_error"]) == (T, 0, None)
    assert marks["s1"]["failed_end"] is None and marks["s1"]["attempts"] == 0
    assert (marks["s2"]["watermark"], marks["s2"]["claimed"]) == (None, False)


def _by_study(tmp_path: Path) -> dict[str, list[str]]:
    """Each exported file's payloads, by the study folder it is in."""
    found: dict[str, list[str]] = {}
    for path in files(tmp_path / "out"):
        found.setdefault(path.relative_to(tmp_path / "out").parts[0], []).extend(
            r["payload"] for r in read_csv(path)
        )
    return found


def test_entities_named_in_text_are_read_as_text_and_redriven_so(url: str, tmp_path: Path) -> None:
    """Studies "007", "7" and "+7" of a text column are three entities. They used to be read as
    the integer 7: "007"'s and "+7"'s files got study 7's rows, theirs were never exported, and
    their watermarks moved; redrive of a failed "007" did the same."""
    root = _project(tmp_path, url)
    rec = Records(url)
    for study in ("007", "7", "+7"):
        rec.add(study, T - dt.timedelta(hours=5), f"row of {study}")
    first = _run(root, export_type="daily", end=T, entities=("007", "+7"))
    assert first.failed == 0
    assert _by_study(tmp_path) == {"007": ["row of 007"], "+7": ["row of +7"]}
    out = tmp_path / "out"
    rec.add("007", T + dt.timedelta(hours=5), "second row of 007")
    rec.add("7", T + dt.timedelta(hours=5), "second row of 7")
    (out / "007" / "daily").rename(out / "moved")
    (out / "007" / "daily").write_text("a file where a folder must go")
    assert _run(root, export_type="daily", end=T + dt.timedelta(days=1), entities=("007",)).failed == 1
    (out / "007" / "daily").unlink()
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["exported"] == 1, redrive
    assert _by_study(tmp_path)["007"] == ["second row of 007"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def test_an_integer_entity_column_takes_entities_written_as_its_integers(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On an integer entity column "7" names entity 7, and "007" or "+7" fail their window with
    a message (they would select entity 7's rows under another name); a text column's "123" works
    on PostgreSQL (it used to be sent as an integer: "operator does not exist: text = integer")."""
    url = f"sqlite:///{tmp_path / 'source.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    root = _project(tmp_path, url)
    select = root / "tasks" / "studies" / "select.sql"
    select.write_text(
        "SELECT record_id, CAST(study_id AS INTEGER) AS study_id, uploaded_on, payload FROM records"
    )
    rec = Records(url)
    rec.add("7", T - dt.timedelta(hours=5), "row of 7")
    rec.add("123", T - dt.timedelta(hours=5), "row of 123")
    summary = _run(root, export_type="daily", end=T, entities=("7", "007", "+7"))
    assert summary.failed == 2 and _by_study(tmp_path) == {"7": ["row of 7"]}
    assert any("'007' is not an integer" in e and "'7'" in e for e in summary.errors), summary.errors
    select.write_text("SELECT record_id, study_id, uploaded_on, payload FROM records")
    assert _run(root, export_type="daily", end=T, entities=("123",)).failed == 0
    assert _by_study(tmp_path)["123"] == ["row of 123"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def test_an_entity_named_in_text_is_read_as_the_columns_other_kinds_hold_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An entity named in text (--entity, a redo's second window, redrive) on a column of
    another kind than text or integer: on SQLite "1.5" matched no REAL 1.5, so its window
    exported no rows and the watermark passed them; on PostgreSQL a uuid (numeric, date) column
    failed every such window with "operator does not exist: uuid = text"."""
    url = f"sqlite:///{tmp_path / 'source.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("1.5", T - dt.timedelta(hours=5), "row of 1.5")
    rec.add("2.5", T - dt.timedelta(hours=5), "row of 2.5")
    sqlite_kind = "study_id * 1.0" if backend == "sqlite" else "study_id::numeric"
    (root / "tasks" / "studies" / "select.sql").write_text(
        f"SELECT record_id, {sqlite_kind} AS study_id, uploaded_on, payload FROM records"
    )
    summary = _run(root, export_type="daily", end=T, entities=("1.5", "1.50"))
    assert _by_study(tmp_path) == {"1.5": ["row of 1.5"]}, summary.entities
    assert summary.failed == 1 and "'1.50'" in summary.errors[0] and "'1.5'" in summary.errors[0]
    assert _marks(root) == {"1.5": T, "1.50": dt.datetime(2024, 5, 9, tzinfo=UTC)}
    if backend == "pg":
        (root / "tasks" / "studies" / "select.sql").write_text(
            "SELECT record_id, md5(study_id)::uuid AS study_id, uploaded_on, payload FROM records"
        )
        name = str(uuid.UUID(hashlib.md5(b"2.5").hexdigest()))
        assert _run(root, export_type="daily", end=T).failed == 0 and name in _by_study(tmp_path)
        rec.add("2.5", T + dt.timedelta(hours=5), "second row of 2.5")
        assert _run(root, export_type="daily", end=T + dt.timedelta(days=1), entities=(name,)).failed == 0
        assert _by_study(tmp_path)[name] == ["row of 2.5", "second row of 2.5"]
        # A type the server compares with text (name, citext): a name with no rows is as before.
        (root / "tasks" / "studies" / "select.sql").write_text(
            "SELECT record_id, study_id::name AS study_id, uploaded_on, payload FROM records"
        )
        assert _run(root, export_type="daily", end=T, entities=("no-rows-yet",)).failed == 0


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles"])
def test_a_date_cursor_window_ends_before_a_day_that_is_not_over(
    pg_url: str, tmp_path: Path, zone: str
) -> None:
    """A date cursor compares as its UTC midnight. An instant (or hourly, or a daily run in a zone
    behind UTC) window ends during a day, so it took the rows dated that day written so far and
    the watermark passed the day: its later rows were below it, never exported. The window now
    ends at the midnight of the day that is not over yet in the task's zone."""
    root = _project(tmp_path, pg_url, bootstrap="beginning")
    toml = root / "tasks" / "studies" / "task.toml"
    toml.write_text(toml.read_text().replace('zone = "UTC"', f'zone = "{zone}"'))
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, (uploaded_on AT TIME ZONE 'UTC')::date AS uploaded_on, payload FROM records"
    )
    rec = Records(pg_url)
    now = dt.datetime.now(UTC)
    today = dt.datetime.combine(now.astimezone(zoneinfo.ZoneInfo(zone)).date(), dt.time(), tzinfo=UTC)
    rec.add("s1", today - dt.timedelta(days=1), "yesterday")
    rec.add("s1", today, "today, early")
    for export_type in ("instant", "hourly", "daily"):
        summary = _run(root, export_type=export_type, entities=("s1",))
        assert summary.failed == 0, summary.errors
        assert _marks(root)["s1"] <= today, (export_type, summary.entities)  # type: ignore[operator]
    rec.add("s1", today, "today, later")
    assert _payloads(tmp_path) == ["yesterday"]
    owed = _run(
        root, ignore_watermark=True, start=today, end=today + dt.timedelta(days=1),
        destination=str(tmp_path / "owed"), entities=("s1",),
    )  # fmt: skip
    assert sorted(r["payload"] for p in files(tmp_path / "owed") for r in read_csv(p)) == [
        "today, early",
        "today, later",
    ], owed.entities


def test_a_sqlite_cursor_of_dates_as_text_waits_for_the_day_to_end(tmp_path: Path) -> None:
    """SQLite has no date type: a cursor written as date('now') (YYYY-MM-DD text) lost the rows
    dated today that came after an instant run, as a date column did on PostgreSQL."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', date('now', '-1 day'), 'yesterday')",
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', date('now'), 'today, early')",
    )
    summary = _run(root, export_type="instant", entities=("s1",))
    today = dt.datetime.combine(dt.datetime.now(UTC).date(), dt.time(), tzinfo=UTC)
    assert _marks(root) == {"s1": today}, summary.entities
    assert _payloads(tmp_path) == ["yesterday"]


def test_a_utc_date_cursor_waits_for_the_utc_day_in_a_zone_ahead_of_utc(tmp_path: Path) -> None:
    """The date cap took the end's day in the task's zone: east of UTC that day has begun while
    the UTC day (date('now'), CURRENT_DATE in a UTC session) is still being written, so a window
    ending at 20:00 UTC took the rows dated that UTC day so far and passed the rest."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    toml = root / "tasks" / "studies" / "task.toml"
    toml.write_text(toml.read_text().replace('zone = "UTC"', 'zone = "Asia/Tokyo"'))
    _sqlite(
        tmp_path,
        RECORDS_SQLITE.format(study_type="TEXT"),
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', '2024-03-09', 'the day before')",
        "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', '2024-03-10', 'that day, early')",
    )
    end = dt.datetime(2024, 3, 10, 20, tzinfo=UTC)  # 2024-03-11 05:00 in Tokyo; 2024-03-10 in UTC
    summary = _run(root, export_type="instant", entities=("s1",), end=end)
    assert _marks(root) == {"s1": dt.datetime(2024, 3, 10, tzinfo=UTC)}, summary.entities
    assert _payloads(tmp_path) == ["the day before"]


@pytest.mark.pg
def test_check_names_a_cursor_that_is_not_a_time(pg_url: str, tmp_path: Path) -> None:
    """A text cursor failed every run on PostgreSQL ("operator does not exist: text >=
    timestamptz") while ``check`` said the task was fine."""
    root = _project(tmp_path, pg_url)
    Records(pg_url)
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on::text AS uploaded_on, payload FROM records"
    )
    result = cli(root, "check")
    assert result.returncode == 2
    assert "cursor: column 'uploaded_on' is text, not a time" in result.stdout + result.stderr
    # A run said the same per entity, in the driver's words, exit 1; it now refuses before any claim.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO records (study_id, payload) VALUES ('s1', 'x')")
    run = cli(root, "run")
    assert run.returncode == 2 and "cursor: column 'uploaded_on' is text, not a time" in run.stderr, run
    assert "operator does not exist" not in run.stdout + run.stderr
    assert all(
        w["attempts"] == 0 and w["claim_token"] is None for w in operations.watermarks(load(root), "studies")
    )


@pytest.mark.pg
@pytest.mark.parametrize(
    ("study", "shown"),
    [
        ("to_json(study_id)", "json"),
        ("jsonb_build_object('id', study_id)", "jsonb"),
        ("ARRAY[study_id]", "text[]"),
        ("xmlelement(name s, study_id)", "xml"),  # these two passed check, and failed every run
        ("point(length(study_id), 0)", "point"),
    ],
)
def test_an_entity_column_of_json_or_an_array_is_refused(
    pg_url: str, tmp_path: Path, study: str, shown: str
) -> None:
    """An entity column of json cannot work (json has no '=': the entities' DISTINCT failed), and
    jsonb and array values come back as dicts and lists, which the entities' set took with a
    TypeError and a traceback. check and run refuse it, exit 2, and say to cast it to text."""
    root = _project(tmp_path, pg_url)
    Records(pg_url).add("s1", T - dt.timedelta(hours=2), "s1")
    (root / "tasks" / "studies" / "select.sql").write_text(
        f"SELECT record_id, {study} AS study_id, uploaded_on, payload FROM records"
    )
    wanted = f"task.toml entity: column 'study_id' is {shown}, "
    for args in (["check"], ["run", "--entity", "s1"], ["run"]):
        result = cli(root, *args)
        out = result.stdout + result.stderr
        assert result.returncode == 2 and wanted in out and "cast it to text in select.sql" in out, result
        assert "Traceback" not in out and "operator does not exist" not in out, result
    assert operations.watermarks(load(root), "studies") == []


@pytest.mark.pg
def test_the_cast_hint_quotes_an_entity_column_of_capitals(pg_url: str, tmp_path: Path) -> None:
    """The hint said ``StudyId::text AS StudyId``, which PostgreSQL reads as column studyid."""
    root = _project(tmp_path, pg_url)
    Records(pg_url).add("s1", T - dt.timedelta(hours=2), "s1")
    toml = root / "tasks" / "studies" / "task.toml"
    toml.write_text(
        toml.read_text().replace('entity = "study_id"', 'entity = "StudyId"').replace("study_id}", "StudyId}")
    )
    (root / "tasks" / "studies" / "select.sql").write_text(
        'SELECT record_id, to_json(study_id) AS "StudyId", uploaded_on, payload FROM records'
    )
    result = cli(root, "check")
    assert result.returncode == 2, result
    assert 'cast it to text in select.sql ("StudyId"::text AS "StudyId")' in result.stdout + result.stderr


def test_a_bootstrap_that_cannot_be_windowed_is_a_config_error(tmp_path: Path) -> None:
    """A bootstrap near year 1 whose offset takes it before it loaded, then failed at run time
    with an OverflowError traceback (exit 1) and left the entities claimed for a lease."""
    root = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", bootstrap="0001-01-01T00:00:00+01:00")
    Records(f"sqlite:///{tmp_path / 's.db'}").add("s1", T, "x")
    result = cli(root, "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bootstrap 0001-01-01T00:00:00+01:00 is outside the times sluicegate can export" in result.stderr


def test_an_unexpected_error_gives_the_claimed_entities_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error no driver expected (a bug, or an OverflowError as far-future times gave) used to
    leave every entity of the run claimed for a whole lease: the next run said "another export
    holds this entity" for ten minutes. They are given back at once now."""
    from sluicegate import watermarks

    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "a")

    def broken(*_: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(watermarks, "window_path", broken)
    with contextlib.suppress(RuntimeError):  # raised, or recorded as the task's error
        _run(root, export_type="daily", end=T)
    monkeypatch.undo()
    again = _run(root, export_type="daily", end=T)
    assert again.failed == 0 and _payloads(tmp_path) == ["a"], again.entities


def _feed_blocked(tmp_path: Path) -> Path:
    """Make the change feed unwritable: a window fails after its file was put in place."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    blocker = out / "_manifests"
    blocker.write_text("a file where the manifests folder must go")
    return blocker


def test_a_window_failing_after_its_file_is_placed_is_redone_to_that_file(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    blocker = _feed_blocked(tmp_path)
    first = _run(root, export_type="daily", end=T)
    assert (
        first.failed == 1 and len(files(tmp_path / "out")) == 1
    )  # the file was placed, then the feed failed
    [placed] = files(tmp_path / "out")
    rows = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}
    assert rows["s1"]["pending_end"] == T and rows["s1"]["failed_end"] == T
    blocker.unlink()
    rec.add("s1", T + dt.timedelta(hours=2), "s1-b")
    [dry] = json.loads(cli(root, "run", "--dry-run", "--json", check=True).stdout)
    assert dry["plan"][0]["reason"].startswith("redo:") and dry["plan"][0]["end"] == T.isoformat()
    second = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert second.failed == 0 and [e["rows"] for e in second.entities] == [1, 1]
    assert placed in files(tmp_path / "out") and len(files(tmp_path / "out")) == 2
    assert _payloads(tmp_path).count("s1-a") == 1 and _payloads(tmp_path).count("s1-b") == 1
    assert _marks(root) == {"s1": T + dt.timedelta(days=1)}
    row = operations.watermarks(load(root), "studies")[0]
    assert row["failed_end"] is None and row["pending_end"] is None


def test_a_failed_window_stays_pending_when_a_later_run_gives_its_claim_back(
    url: str, tmp_path: Path
) -> None:
    """A run that claimed the entity and gave it back unread (its --max-runtime ran out before the
    window, an error) used to clear the pending window: the next run widened the failed window,
    whose file was in place, into a file under another name, and its rows were in two files."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    blocker = _feed_blocked(tmp_path)
    assert _run(root, export_type="daily", end=T).failed == 1
    blocker.unlink()
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        [claim] = ledger.watermarks.claim("studies", ["s1"], lease=600)
        assert claim.pending_end == T
        ledger.watermarks.release(claim.token)  # as a run whose budget ran out before reading it
    rec.add("s1", T + dt.timedelta(hours=2), "s1-b")
    again = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert again.failed == 0 and [e["end"] for e in again.entities] == [
        T.isoformat(),
        (T + dt.timedelta(days=1)).isoformat(),
    ], again.entities
    assert _payloads(tmp_path) == ["s1-a", "s1-b"] and len(files(tmp_path / "out")) == 2


def test_a_redone_window_that_fails_again_is_not_tried_twice_in_one_run(url: str, tmp_path: Path) -> None:
    """The catch-up after a redone window used to claim the entity again even when the redo had
    failed: the same window was exported a second time in the run, and counted two attempts."""
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "s1-a")
    _feed_blocked(tmp_path)
    assert _run(root, export_type="daily", end=T).failed == 1
    again = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert again.failed == 1 and len(again.entities) == 1, again.entities
    [row] = operations.watermarks(load(root), "studies")
    assert (row["attempts"], row["pending_end"], row["failed_end"]) == (2, T, T)


def test_redrive_redoes_the_window_a_run_died_in_after_a_failure(url: str, tmp_path: Path) -> None:
    """A pending window (a run that died) wins over the recorded failure: its file may be in place."""
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "s1-a")
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        store = ledger.watermarks
        store.ensure("studies", ["s1"])
        [claim] = store.claim("studies", ["s1"], lease=600)
        day = T - dt.timedelta(days=1)
        store.fail("studies", "s1", token=claim.token, error="boom", start=day, end=T - dt.timedelta(hours=12),
                   export_type="daily", mode="watermark")  # fmt: skip
        [claim] = store.claim(
            "studies", ["s1"], lease=0.001
        )  # a ledger of an older version: pending cleared,
        store.set_pending(claim, day, T, "daily")  # then a wider window, and the run died
    time.sleep(0.01)
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    [entry] = redrive["entities"]
    assert (entry["start"], entry["end"], entry["rows"]) == (day.isoformat(), T.isoformat(), 1)
    assert _marks(root) == {"s1": T}


REEXPORT = {"start": T - dt.timedelta(days=1), "end": T, "ignore_watermark": True, "export_type": "daily"}


def _failed_reexport(tmp_path: Path, url: str) -> tuple[Path, Path]:
    """A project whose re-export of s1's day to ``other`` failed (a file where s1's folder goes)."""
    root = _project(tmp_path, url)
    Records(url).add("s1", T - dt.timedelta(hours=5), "s1-a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "s1").write_text("blocked")
    assert _run(root, **REEXPORT, destination=str(other)).failed == 1
    return root, other


def test_a_failed_reexport_stays_owed_through_a_failed_regular_window(url: str, tmp_path: Path) -> None:
    root, other = _failed_reexport(tmp_path, url)
    (tmp_path / "out").mkdir(exist_ok=True)  # the first run wrote the destination's id there
    (tmp_path / "out" / "s1").write_text("blocked")
    assert _run(root, export_type="daily", end=T).failed == 1  # a regular window fails too
    [row] = operations.watermarks(load(root), "studies")
    assert (row["failed_mode"], row["failed_destination"], row["pending_end"]) == ("reexport", str(other), T)
    # another re-export of the entity is refused while one is owed: the ledger keeps one
    refused = _run(root, **{**REEXPORT, "start": T - dt.timedelta(days=2)}, destination=str(other))
    assert refused.failed == 1 and "still owes a failed daily re-export" in refused.entities[0]["error"]
    (other / "s1").unlink()
    (tmp_path / "out" / "s1").unlink()
    assert _run(root, export_type="daily", end=T).failed == 0  # the regular window: clears nothing owed
    assert operations.watermarks(load(root), "studies")[0]["failed_mode"] == "reexport"
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["exported"] == 1 and len(files(other)) == 1 and "s1-a" in files(other)[0].read_text()
    assert operations.watermarks(load(root), "studies")[0]["failed_end"] is None


@pytest.mark.parametrize(
    "spelling", ["{}/", "file://{}", "file://localhost{}", "other"]
)  # one folder, written another way
def test_retrying_the_failed_reexport_itself_clears_it(
    url: str, tmp_path: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, other = _failed_reexport(tmp_path, url)
    (other / "s1").unlink()
    monkeypatch.chdir(tmp_path)  # "other": relative to the folder the command runs in
    retried = _run(root, **REEXPORT, destination=spelling.format(other))
    assert retried.failed == 0 and len(files(other)) == 1
    assert operations.watermarks(load(root), "studies")[0]["failed_end"] is None


def test_a_failing_reexport_leaves_a_regular_claim_alone(url: str, tmp_path: Path) -> None:
    root = _project(tmp_path, url)
    project = load(root)
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        store = ledger.watermarks
        store.ensure("studies", ["s1"])
        [claim] = store.claim("studies", ["s1"], lease=600)
        store.set_pending(claim, T - dt.timedelta(days=1), T, "daily")
        store.fail("studies", "s1", token=None, error="re-export failed", start=T - dt.timedelta(days=3),
                   end=T - dt.timedelta(days=2), export_type="daily", mode="reexport", destination="/x")  # fmt: skip
        assert store.commit(claim, end=T, rows=0, path=None)  # the regular export still holds its claim
        [row] = store.entities("studies")
    assert row["watermark"] == T and row["failed_mode"] == "reexport" and row["failed_destination"] == "/x"


def test_two_failed_reexports_at_once_keep_the_first_owed_and_tell_the_second(
    url: str, tmp_path: Path
) -> None:
    """The ledger holds one failed re-export per entity. Two re-exports of s1 that ran at once
    and both failed (neither saw the other's failure when it started) wrote over each other: the
    first was never redriven. Now the owed one is kept and the second's error says so; redriving
    clears only the re-export it exported."""
    from sluicegate.drivers.incremental import Recorder
    from sluicegate.exceptions import DestinationUnavailable
    from sluicegate.options import TaskSummary
    from sluicegate.sources import Slice
    from sluicegate.watermarks import Window
    from sluicegate.work import WorkUnit

    root = _project(tmp_path, url)
    project = load(root)

    def window(days: int, destination: str) -> Window:
        return Window(entity="s1", value="s1", start=T - dt.timedelta(days=days), export_type="daily",
                      end=T - dt.timedelta(days=days - 1), claim=None, mode="reexport", destination=destination)  # fmt: skip

    first, second, elsewhere = window(3, "/x"), window(2, "/x"), window(3, "/y")  # elsewhere: first's span
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        store = ledger.watermarks
        summary = TaskSummary(task="studies")
        recorder = Recorder(project.tasks["studies"], store, lease=600, summary=summary)  # type: ignore[arg-type]
        for window in (first, second, elsewhere, first):
            unit = WorkUnit(key="s1", slice=Slice(keys=("s1",)), path="p",
                            handle=window)  # fmt: skip
            recorder.fail(unit, DestinationUnavailable(f"{window.start:%d} to {window.destination} failed"))
        errors = [e["error"] for e in summary.entities]
        assert "not recorded" not in errors[0] and "not recorded" not in errors[3]  # the owed one, twice
        for error in errors[1:3]:
            assert "not recorded for redrive: 's1' already owes a failed re-export" in error
            assert "'sluicegate redrive studies'" in error
        [row] = store.entities("studies")
        assert (row["failed_start"], row["failed_end"], row["failed_destination"]) == (
            first.start,
            first.end,
            "/x",
        )
        assert row["attempts"] == 2 and row["last_error"] == f"{first.start:%d} to /x failed"
        store.clear_reexport("studies", second)  # not the owed one: nothing cleared
        store.clear_reexport("studies", elsewhere)
        assert store.entities("studies")[0]["failed_end"] == first.end
        store.clear_reexport("studies", first)
        assert store.entities("studies")[0]["failed_end"] is None


def test_bootstrap_beginning_exports_rows_from_before_1970(url: str, tmp_path: Path) -> None:
    """ "beginning" was 1970-01-01: a weather record of 1850 was in no window, and no run said so."""
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    rec.add("s1", dt.datetime(1850, 6, 1, tzinfo=UTC), "1850")
    rec.add("s1", dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), "1969")
    rec.add("s1", T - dt.timedelta(hours=1), "recent")
    done = _run(root, export_type="daily", end=T)
    assert done.failed == 0 and _payloads(tmp_path) == ["1850", "1969", "recent"]
    assert files(tmp_path / "out")[0].name.startswith("10000101T000000Z-")


def test_a_reexport_redrive_gave_up_on_is_retried_with_the_command_the_refusal_gives(
    url: str, tmp_path: Path
) -> None:
    """Once redrive gave up (max_attempts), every other re-export of the entity was refused with
    'run redrive first', which did nothing: the refusal now gives the retry that clears it."""
    import shlex

    root, other = _failed_reexport(tmp_path, url)
    for _ in range(3):
        cli(root, "redrive", "studies")
    again = cli(root, "redrive", "studies", "--json")
    assert again.returncode == 1  # the window is still owed: it exited 0, and a monitor saw nothing
    gave_up = json.loads(again.stdout)[0]["entities"][0]
    assert "gave up after 3 attempts" in gave_up["error"]
    (other / "s1").unlink()
    refused = _run(root, **{**REEXPORT, "start": T - dt.timedelta(days=2)}, destination=str(other))
    command = refused.entities[0]["error"].split("retry it with `")[1].split("`")[0]
    retried = cli(root, *shlex.split(command)[1:])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert len(files(other)) == 1 and operations.watermarks(load(root), "studies")[0]["failed_end"] is None


def test_a_run_out_of_time_leaves_no_window_to_redo_for_entities_it_did_not_reach(tmp_path: Path) -> None:
    """Every window was stored pending before the first batch: the entities of later batches kept
    a window they never read, and their next run wrote two files (the redo, then the rest)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    for study in ("s1", "s2"):
        rec.add(study, T - dt.timedelta(hours=5), f"{study}-a")
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write('batch_size = 1\n[testing]\nfault = "after_publish"\n')
    # A budget that a loaded machine's start-up and claim do not use up before s1 is placed.
    started = time.monotonic()
    proc = _spawn(root, "run", "--type", "instant", "--max-runtime", "6s", "--json")
    _wait_for(root / ".fault-after_publish", proc)
    time.sleep(max(0.0, started + 6.5 - time.monotonic()))  # it runs out while s1's file is placed
    (root / ".fault-after_publish").unlink()
    out, err = proc.communicate(timeout=60)
    rows = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}
    assert rows["s1"]["watermark"] is not None and rows["s1"]["pending_end"] is None, (out, err)
    assert rows["s2"]["watermark"] is None and rows["s2"]["pending_end"] is None, (out, err)


def test_a_run_that_stalled_past_its_lease_writes_no_file_for_an_entity_taken_over(tmp_path: Path) -> None:
    """Run A claims s1 and s2 (a batch each), and stalls while writing s1, past its lease. Run B
    takes both over: it redoes s1's stored window and exports s2 to its own end. A resumed wrote
    s2's window to its own end, another name: s2's row in two files (helper-44's probe). A now
    checks that it still holds a claim once the window is stored, and leaves s2 alone."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning", lease="2s")
    rec = Records(url)
    for study in ("s1", "s2"):
        rec.add(study, T - dt.timedelta(hours=5), f"{study}-a")
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("batch_size = 1\n")
    stalled = _spawn(
        root, "run", "--type", "instant", "--json", env={"SLUICEGATE_TESTING__FAULT": "mid_write"}
    )
    _wait_for(root / ".fault-mid_write", stalled)  # writing s1; s2 claimed, its window not stored
    stalled.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)  # its lease runs out (the lease keeper is stopped too)
        took_over = json.loads(cli(root, "run", "--type", "instant", "--json", check=True).stdout)[0]
        assert took_over["failed"] == 0
    finally:
        stalled.send_signal(signal.SIGCONT)
        (root / ".fault-mid_write").unlink()
    out, err = stalled.communicate(timeout=60)
    assert stalled.returncode == 0, (out, err)
    assert _payloads(tmp_path) == ["s1-a", "s2-a"], [p.name for p in files(tmp_path / "out")]  # each once
    assert json.loads(out)[0]["lost"] >= 1  # s2 (and s1, whose commit B made), not exported by A


def test_a_limit_for_an_incremental_run_is_refused_not_ignored(tmp_path: Path) -> None:
    """``run studies --limit 1`` exported every entity: the limit counts partitions, which an
    incremental task has none of, and it was dropped without a word. A run of every task of a
    project that has others still takes it (for them) and runs the incremental task whole."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    for study in ("s1", "s2", "s3"):
        rec.add(study, T, study)
    message = "--limit/limit 1 does not apply to incremental task 'studies'"
    for args in (("studies",), (), ("studies", "--dry-run")):
        refused = cli(root, "run", *args, "--limit", "1")
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    assert files(tmp_path / "out") == []
    blocks = root / "tasks" / "hours"
    blocks.mkdir()
    (blocks / "task.toml").write_text(
        'kind = "blocks"\nstages = ["extract"]\n[extract]\ncallable = "gen:records"\npath = "b/{label}.jsonl"\n'
    )
    (root / "gen.py").write_text("def records(block, config):\n    return [{'at': block.label}]\n")
    named = cli(root, "run", "studies", "hours", "--limit", "1")
    assert named.returncode == 2 and message in named.stderr, named.stderr
    every = cli(root, "run", "--limit", "1")
    assert every.returncode == 0, (every.stdout, every.stderr)
    assert sorted(p.parent.parent.name for p in files(tmp_path / "out")) == ["s1", "s2", "s3"]


def test_a_signal_stops_an_incremental_run_between_batches(tmp_path: Path) -> None:
    """A plain run told to stop exported every entity's window all the same (the driver never
    looked at the signal): a long catch-up went on after Ctrl-C. It now stops after the batch
    in hand: the later entities are given back, their watermarks unmoved, for the next run."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    for study in ("s1", "s2", "s3"):
        rec.add(study, T - dt.timedelta(hours=5), f"{study}-a")
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("batch_size = 1\n")
    fault = root / ".fault-mid_write"
    proc = _spawn(root, "run", "--type", "instant", "--json", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(fault, proc)  # writing the first entity's file
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    fault.unlink()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "finishing the batch in hand" in err, (out, err)
    rows = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}
    assert [e for e, r in sorted(rows.items()) if r["watermark"] is not None] == ["s1"], rows
    assert not any(r["claimed"] for r in rows.values()), rows
    assert _payloads(tmp_path) == ["s1-a"]
    _run(root, export_type="instant")
    assert _payloads(tmp_path) == ["s1-a", "s2-a", "s3-a"]


def test_a_dry_run_says_why_a_task_cannot_be_planned(tmp_path: Path) -> None:
    """A task error (here select.sql naming a column the table lacks) made `run --dry-run` print
    "0 partition(s) would be exported" and exit 2 with no word of why; it now prints the error."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T)
    (root / "tasks" / "studies" / "select.sql").write_text("SELECT no_such_column FROM records")
    dry = cli(root, "run", "--dry-run")
    assert dry.returncode == 2 and "no_such_column" in dry.stderr, (dry.stdout, dry.stderr)
    assert "Traceback" not in dry.stderr
    # an entity that cannot be exported was listed with a blank where its reason belongs
    rec.add("s\x002", T)
    (root / "tasks" / "studies" / "select.sql").write_text("SELECT * FROM records")
    dry = cli(root, "run", "--dry-run", "--type", "instant")
    assert "entity='s\\x002': error: entity" in dry.stdout, dry.stdout


def test_an_empty_source_table_is_nothing_to_export_yet_and_null_entities_a_config_error(
    tmp_path: Path,
) -> None:
    """A new project whose table has no rows yet exited 2 on every run ("returned no entities"),
    as if misconfigured, and status said its last run failed: a cron job alarmed until the first
    row came. It is now a note and exit 0. Rows whose entity is NULL in every one still exit 2."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    for args in (("run",), ("run", "--dry-run")):
        done = cli(root, *args)
        assert done.returncode == 0 and "returned no rows yet; nothing to export" in done.stdout, done
        assert "entity=" not in done.stdout and "Traceback" not in done.stderr
    assert "failed:" not in cli(root, "status", check=True).stdout
    rec.conn.execute("ALTER TABLE records ADD COLUMN owner TEXT")
    rec.add("s1", T)
    toml = root / "tasks" / "studies" / "task.toml"
    toml.write_text(
        toml.read_text().replace('entity = "study_id"', 'entity = "owner"').replace("study_id}", "owner}")
    )
    (root / "tasks" / "studies" / "select.sql").write_text("SELECT * FROM records")
    done = cli(root, "run")
    assert done.returncode == 2 and "owner is NULL in every row" in done.stderr, done


def test_entities_that_differ_only_by_trailing_spaces(url: str, tmp_path: Path) -> None:
    """'s1' and 's1 ' are two entities, each with its file. A MariaDB source's DISTINCT (PAD
    SPACE) found only one, and the other's rows were in no file; a MariaDB ledger's entity column
    (utf8mb4_bin, PAD SPACE too) kept one watermark row for both, and the second was left with a
    note, "another export holds this entity", on every run."""
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "plain")
    rec.add("s1 ", T - dt.timedelta(hours=4), "spaced")
    summary = _run(root, export_type="daily", end=T)
    exported = {p.parent.parent.name: [r["payload"] for r in read_csv(p)] for p in files(tmp_path / "out")}
    assert exported == {"s1": ["plain"], "s1 ": ["spaced"]}, summary.entities
    assert set(_marks(root)) == {"s1", "s1 "}
    assert _run(root, export_type="daily", end=T + dt.timedelta(days=1)).failed == 0


def test_check_names_a_timestamp_cursor_in_a_database_of_another_zone(pg_url: str, tmp_path: Path) -> None:
    """A `timestamp` cursor is read as UTC; where the database's TimeZone is New York a writer's
    now() stores New York wall-clock times, five hours behind: an instant run's watermark passes
    such a row before it is written, and it is never exported. check said nothing."""
    root = _project(tmp_path, pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text, uploaded_on timestamp)"
        )
        conn.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(),"
            " 'America/New_York'); END $$"
        )
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on FROM records"
    )
    checked = cli(root, "check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "column 'uploaded_on' is a timestamp without time zone, read as UTC, but the database's" in (
        checked.stderr
    )
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on AT TIME ZONE 'America/New_York' AS uploaded_on FROM records"
    )
    assert cli(root, "check").returncode == 0  # the fix the message gives
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on AT TIME ZONE 'UTC' AS uploaded_on FROM records"
    )
    assert cli(root, "check").returncode == 0  # writers that store UTC say so the same way


@pytest.mark.parametrize("zone", ["utc", "Etc/Zulu", "GMT0", "+00:00"])
def test_check_takes_every_spelling_of_utc_for_utc(pg_url: str, tmp_path: Path, zone: str) -> None:
    """The zone was compared with a list of names, so a database whose TimeZone is UTC spelt
    otherwise ('utc', as postgresql.conf may have it, 'Etc/Zulu', 'GMT0', '+00:00') failed check
    (exit 2) for a timestamp cursor that is read right."""
    root = _project(tmp_path, pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text, uploaded_on timestamp)"
        )
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET TimeZone = '{zone}'")
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on FROM records"
    )
    problems = operations.check_project(load(root))
    assert not [p for p in problems if "timestamp without time zone" in p], problems


@pytest.mark.parametrize("fault", ["after_publish", "after_manifest"])
@pytest.mark.parametrize("found", [True, False], ids=["found", "gone"])
def test_a_window_file_placed_by_a_killed_run_goes_when_its_redo_has_no_rows(
    tmp_path: Path, fault: str, found: bool
) -> None:
    """A run killed after placing a window's file leaves it unrecorded (and unlisted before the
    manifest); the rows are deleted: the redo of that window (no rows) deleted nothing, so the
    file stayed in place for good, never listed or listed as published. With every row of the
    entity gone (the table empty), the entity was not found, and its window was never redone."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url, lease="1s")
    rec = Records(url)
    for h in range(3):
        rec.add("s1", T - dt.timedelta(hours=h + 1), f"r{h}")
    req = tmp_path / "req.json"
    req.write_text('{"exportType": "DAILY", "endDateTime": "2024-05-10T00:00:00Z"}')
    proc = _spawn(root, "request", str(req), env={"SLUICEGATE_TESTING__FAULT": fault})
    _wait_for(root / f".fault-{fault}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [placed] = files(tmp_path / "out")
    rec.conn.execute("DELETE FROM records")
    if found:
        rec.add("s1", T + dt.timedelta(hours=1), "later")  # s1 is still found, after the window
    time.sleep(1.1)  # the killed run's lease expires
    cli(root, "request", str(req), check=True)
    assert files(tmp_path / "out") == [], placed  # no rows, no file
    entries = json.loads(cli(root, "changes", "--since", "2000-01-01", "--json", check=True).stdout)
    path = placed.relative_to(tmp_path / "out").as_posix()
    assert [(e["path"], e["action"]) for e in entries] == [(path, "deleted")]


def _deleted(root: Path) -> list[tuple[str, str]]:
    entries = json.loads(cli(root, "changes", "--since", "2000-01-01", "--json", check=True).stdout)
    return [(e["path"], e["action"]) for e in entries]


@pytest.mark.parametrize(
    "case",
    [
        "entity-gone",
        "table-empty",
        pytest.param("numeric-entity-gone", marks=pytest.mark.pg),
        pytest.param("uuid-entity-gone", marks=pytest.mark.pg),
        pytest.param("inet-entity-gone", marks=pytest.mark.pg),
        pytest.param("enum-entity-gone", marks=pytest.mark.pg),
    ],
)
def test_a_failed_window_of_an_entity_gone_from_the_source_deletes_its_file(
    tmp_path: Path, case: str, request: pytest.FixtureRequest
) -> None:
    """A window that failed after its file was placed stays pending; when every row of its
    entity was deleted since, the entity was no longer found, so its window was never redone:
    the file of rows the source no longer has stayed published for good, unrecorded, unlisted.
    An entity column of numbers (not integers, not text) names the gone entity by the ledger's
    text, which no source value has: the redo failed ("matches no value ... or wait for its
    rows") on every run, its file left in place. A uuid column compared it as text: "operator does
    not exist: uuid = text" on every run, and so did every other type PostgreSQL's values are
    carried as text for (inet, an enum: "operator does not exist: inet = text")."""
    numeric, uuids = case == "numeric-entity-gone", case == "uuid-entity-gone"
    pg = case.split("-")[0] in ("numeric", "uuid", "inet", "enum")
    url = request.getfixturevalue("pg_url") if pg else f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    if pg:
        studies = {
            "numeric": "('1' || substr(study_id, 2))::numeric",
            "uuid": "uuid_in(md5(study_id)::cstring)",
            "inet": "('10.0.0.' || substr(study_id, 2))::inet",
            "enum": "study_id::study_kind",
        }
        rec.conn.execute("DROP TYPE IF EXISTS study_kind; CREATE TYPE study_kind AS ENUM ('s1', 's2')")
        (root / "tasks" / "studies" / "select.sql").write_text(
            f"SELECT record_id, {studies[case.split('-')[0]]} AS study_id, uploaded_on, payload FROM records"
        )
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    blocker = _feed_blocked(tmp_path)
    assert _run(root, export_type="daily", end=T).failed == 1
    [placed] = files(tmp_path / "out")
    blocker.unlink()
    rec.conn.execute("DELETE FROM records")
    if case != "table-empty":
        rec.add("s2", T + dt.timedelta(hours=1), "s2-a")
    again = _run(root, export_type="daily", end=T + dt.timedelta(days=1))
    assert again.failed == 0, again.entities
    assert placed not in files(tmp_path / "out")
    assert (placed.relative_to(tmp_path / "out").as_posix(), "deleted") in _deleted(root)
    name = "11" if numeric else str(uuid.UUID(hashlib.md5(b"s1").hexdigest())) if uuids else "s1"
    name = "10.0.0.1" if case == "inet-entity-gone" else name
    row = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}[name]
    assert row["pending_end"] is None and row["failed_end"] is None and row["watermark"] >= T


@pytest.mark.parametrize(
    "case", ["found", "entity-gone", "table-empty", pytest.param("uuid-entity-gone", marks=pytest.mark.pg)]
)
def test_a_reexported_window_whose_rows_were_deleted_deletes_its_file(
    tmp_path: Path, case: str, request: pytest.FixtureRequest
) -> None:
    """A re-export (--ignore-watermark) of a window whose rows were deleted had no rows and left
    the window's earlier file in place: rows the source no longer has, published under the
    window's own name, while a partition re-exported empty has its file deleted. A re-export of
    every entity left out those with no row left at all (not found in the source): their files
    stayed."""
    uuids = case == "uuid-entity-gone"
    url = request.getfixturevalue("pg_url") if uuids else f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    if uuids:  # the gone entity read from the ledger's text as a uuid, not compared as text
        (root / "tasks" / "studies" / "select.sql").write_text(
            "SELECT record_id, uuid_in(md5(study_id)::cstring) AS study_id, uploaded_on, payload FROM records"
        )
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    assert _run(root, export_type="daily", end=T).exported == 1
    [placed] = files(tmp_path / "out")
    rec.conn.execute("DELETE FROM records")
    if case != "table-empty":  # s1 still found, after the window; or only s2 is
        rec.add("s1" if case == "found" else "s2", T + dt.timedelta(hours=1), "later")
    again = _run(root, **REEXPORT)
    name = str(uuid.UUID(hashlib.md5(b"s1").hexdigest())) if uuids else "s1"
    [s1] = [e for e in again.entities if e["entity"] == name]
    assert again.failed == 0 and s1["rows"] == 0, again.entities
    assert files(tmp_path / "out") == []
    assert _deleted(root)[-1] == (placed.relative_to(tmp_path / "out").as_posix(), "deleted")
    assert _marks(root)[name] == T


def test_a_redriven_reexport_whose_rows_were_deleted_deletes_its_file(tmp_path: Path) -> None:
    """A re-export that failed after placing its file, redriven once its rows were deleted,
    left that file in place (no rows, nothing deleted) and cleared the owed re-export."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = _project(tmp_path, url)
    rec = Records(url)
    rec.add("s1", T - dt.timedelta(hours=5), "s1-a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "_manifests").write_text("blocked")
    assert _run(root, **REEXPORT, destination=str(other)).failed == 1
    [placed] = files(other)
    (other / "_manifests").unlink()
    rec.conn.execute("DELETE FROM records")
    rec.add("s1", T + dt.timedelta(hours=1), "later")
    redrive = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert redrive["failed"] == 0 and redrive["entities"][0]["rows"] == 0, redrive
    assert placed not in files(other)
    assert operations.watermarks(load(root), "studies")[0]["failed_end"] is None


@pytest.mark.pg
def test_a_window_whose_read_loses_the_source_is_read_again_not_charged(pg_url: str, tmp_path: Path) -> None:
    """A lost source is no window's fault: s3's read ends its connection once (a terminated
    backend; a restart does the same). That was charged an attempt, as any transient failure, and
    failed the windows of the batch not read yet with it. The run now waits for the source and reads the batch again one window at a time: all five
    export, nothing is charged, nothing stays claimed."""
    root = _project(tmp_path, pg_url, bootstrap="beginning")
    with (root / "tasks" / "studies" / "task.toml").open("a") as toml:
        toml.write('entities = ["s1", "s2", "s3", "s4", "s5"]\n')
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on, payload, die(study_id) AS p FROM records"
    )
    rec = Records(pg_url)
    rec.conn.execute("CREATE SEQUENCE armed")
    rec.conn.execute("GRANT ALL ON SEQUENCE armed TO PUBLIC")
    rec.conn.execute(
        "CREATE FUNCTION die(s text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN"
        " IF s = 's3' AND NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN 1; END $$"
    )
    for study in ("s1", "s2", "s3", "s4", "s5"):
        rec.add(study, T - dt.timedelta(hours=1), study)
    [summary] = engine.run(load(root), ["studies"])
    assert summary.task_errors == [] and summary.failed == 0, (summary.task_errors, summary.errors[:1])
    assert _payloads(tmp_path) == ["s1", "s2", "s3", "s4", "s5"]
    [status] = operations.status(load(root), ["studies"])
    assert (status["failed"], status["claimed"]) == (0, 0), status


@pytest.mark.pg
def test_a_source_away_longer_than_the_wait_stops_the_task_with_nothing_charged_nor_claimed(
    pg_url: str, pg_server: Any, tmp_path: Path, tcp_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source (through a TCP relay; the ledger reached directly) goes away while s3's window
    is read, for longer than the reconnect budget: the task stops with one error naming the
    source, and every window is given back without an attempt, none failed nor left claimed."""
    from sluicegate import db as sg_db

    monkeypatch.setattr(sg_db, "RECONNECT_SECONDS", 1.0)
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path, pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/"), bootstrap="beginning")
    with (root / "sluicegate.toml").open("a") as toml:
        toml.write(f'[ledger]\nurl = "{pg_url}"\n')
    with (root / "tasks" / "studies" / "task.toml").open("a") as toml:
        toml.write('entities = ["s1", "s2", "s3", "s4", "s5"]\n')
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT record_id, study_id, uploaded_on, payload, nap(study_id) AS p FROM records"
    )
    rec = Records(pg_url)
    rec.conn.execute(
        "CREATE FUNCTION nap(s text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN"
        " IF s = 's3' THEN PERFORM pg_sleep(2); END IF; RETURN 1; END $$"
    )
    for study in ("s1", "s2", "s3", "s4", "s5"):
        rec.add(study, T - dt.timedelta(hours=1), study)

    def cut() -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        while rec.conn.execute(query).fetchone()[0] == 0:
            time.sleep(0.01)
        proxy.down()
        time.sleep(4.0)
        proxy.up()

    thread = threading.Thread(target=cut)
    thread.start()
    try:
        [summary] = engine.run(load(root), ["studies"])
    finally:
        thread.join()
    [error] = summary.task_errors
    assert "unavailable" in error and "no attempt counted" in error, error
    assert summary.failed == 0, summary.errors[:1]
    [status] = operations.status(load(root), ["studies"])
    assert (status["failed"], status["claimed"]) == (0, 0), status


def _redrive_stopped_in_a_reexport(tmp_path: Path, reexported: tuple[str, ...]) -> tuple[Path, str]:
    """Re-exports of ``reexported`` to another destination and an ordinary run of s3 failed; a
    redrive (a batch an entity) is then stopped by SIGINT while it writes the first re-export.
    The project root and the stopped redrive's JSON."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = _project(tmp_path, url, bootstrap="beginning")
    rec = Records(url)
    for study in ("s1", "s2", "s3"):
        rec.add(study, T - dt.timedelta(hours=5), f"{study}-a")
    other, out = tmp_path / "elsewhere", tmp_path / "out"
    other.mkdir()
    out.mkdir()
    blocked = [other / e for e in reexported] + [out / "s3"]
    for path in blocked:
        path.write_text("a file where the entity's folder must go")
    day = {"start": T - dt.timedelta(days=1), "end": T}
    reexport = _run(root, ignore_watermark=True, destination=str(other), entities=reexported, **day)
    assert reexport.failed == len(reexported)
    assert _run(root, export_type="daily", end=T, entities=("s3",)).failed == 1
    for path in blocked:
        path.unlink()
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("batch_size = 1\n")
    fault = root / ".fault-mid_write"
    proc = _spawn(root, "redrive", "studies", "--json", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(fault, proc)  # writing s1's re-export, the first batch of the first destination
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    fault.unlink()
    out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out_text, err)
    return root, out_text


def test_a_redrive_told_to_stop_in_a_reexport_gives_back_the_entities_of_later_destinations(
    tmp_path: Path,
) -> None:
    """Redrive groups its windows by destination: failed re-exports to their own, then the failed
    watermark windows to the project's. Stopped between two batches of the first group, it gave
    back only that group's claims (none: a re-export claims nothing) and returned: the entity of
    the later group stayed claimed, and the next run or redrive reported it held by another export
    until its lease ran out. Every claim the run took and did not commit is given back now."""
    root, out_text = _redrive_stopped_in_a_reexport(tmp_path, ("s1", "s2"))
    rows = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}
    assert not any(r["claimed"] for r in rows.values()), rows  # s3 was still claimed
    assert json.loads(out_text)[0]["released"] == 1, out_text  # s3's claim, counted once
    again = json.loads(cli(root, "redrive", "studies", "--json", check=True).stdout)[0]
    assert again["failed"] == 0 and not any("held" in str(e.get("note", "")) for e in again["entities"])
    assert sorted(e["entity"] for e in again["entities"] if e["rows"]) == ["s2", "s3"], again["entities"]


def test_a_redrive_told_to_stop_in_its_last_reexport_exports_nothing_of_the_next_destination(
    tmp_path: Path,
) -> None:
    """Stopped while it wrote the last batch of one destination's group, a redrive still read and
    exported the first batch of the next group (the stop was checked only between two batches of
    one group; helper 133): now it stops there, and gives that group's claims back."""
    root, out_text = _redrive_stopped_in_a_reexport(tmp_path, ("s1",))
    rows = {r["entity"]: r for r in operations.watermarks(load(root), "studies")}
    # s3's failed window is still to redo (not exported by the stopped run), and not claimed
    assert rows["s3"]["pending_end"] is not None and not rows["s3"]["claimed"], rows
    assert json.loads(out_text)[0]["released"] == 1, out_text
