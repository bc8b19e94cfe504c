"""A long, healthy export outlives its lease: its claims are renewed while it works, and a
second worker started meanwhile takes nothing. Real worker processes on a PostgreSQL source
whose select sleeps (``pg_sleep``) longer than the lease before it returns a row, for a
partitioned task and for an incremental task.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_workers import _spawn

from sluicegate import operations
from support import OPENAQ_SELECT, Db, files, hours, load, read_csv, write_project

pytestmark = pytest.mark.pg

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)
LEASE_S = 2.0
SLEEP_S = 3 * LEASE_S  # the select returns its first row after three leases
# A CTE with a volatile function is evaluated once, before the first row comes out.
PAUSE = f"WITH pause AS MATERIALIZED (SELECT pg_sleep({SLEEP_S})) "


def _sleeping(url: str, timeout: float = 60) -> None:
    """Wait until a backend of ``url``'s database sleeps in ``pg_sleep``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as probe:
        while not probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the slow select never started"
            time.sleep(0.05)


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    [summary] = json.loads(out)
    return dict(summary)


def _race(root: Path, url: str, *args: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Worker A starts the slow export; past its lease, worker B runs the same; both summaries."""
    started = time.monotonic()
    first = _spawn(root, *args, "--json")
    _sleeping(url)
    time.sleep(LEASE_S * 1.5)  # A's first lease has run out by now, unless it was renewed
    second = _finish(_spawn(root, *args, "--json"))
    return _finish(first), second, time.monotonic() - started


def test_a_slow_partitioned_export_keeps_its_claim(tmp_path: Path, pg_url: str) -> None:
    root = write_project(
        tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), capture="explicit",
        zone="UTC", lease=f"{LEASE_S:.0f}s",
    )  # fmt: skip
    (root / "tasks" / "openaq" / "select.sql").write_text(
        PAUSE + OPENAQ_SELECT.replace("FROM measurements AS m", "FROM pause, measurements AS m")
    )
    db = Db(pg_url)
    db.location(1, "UTC")
    db.insert(1, hours(DAY, 24))
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    first, second, seconds = _race(root, pg_url, "run")
    assert seconds > SLEEP_S
    assert (second["exported"], second["lost"]) == (0, 0), second
    assert (first["exported"], first["lost"], first["failed"]) == (1, 0, 0), first
    [path] = files(tmp_path / "out")
    assert len(read_csv(path)) == 24
    row = db.rows("SELECT version, exported_version, claim_token, attempts FROM sluicegate.partitions")
    assert row == [(1, 1, None, 0)], row


def test_a_slow_incremental_export_keeps_its_claim(tmp_path: Path, pg_url: str) -> None:
    root = tmp_path / "proj"
    (root / "tasks" / "studies").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nlease = "{LEASE_S:.0f}s"\nbackoff = "0s"\n'
    )
    (root / "tasks" / "studies" / "task.toml").write_text(
        textwrap.dedent(
            """
            kind = "incremental"
            entity = "study_id"
            cursor = "uploaded_on"
            format = "csv"
            path = "{study_id}/{type}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.{ext}"
            safety_margin = "0s"
            """
        )
    )
    (root / "tasks" / "studies" / "select.sql").write_text(
        PAUSE + "SELECT record_id, study_id, uploaded_on, payload FROM pause, records"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text NOT NULL, "
            "uploaded_on timestamptz NOT NULL, payload text)"
        )
        day = dt.datetime(2024, 5, 9, tzinfo=UTC)
        for h in range(10):
            conn.execute(
                "INSERT INTO records (study_id, uploaded_on, payload) VALUES ('s1', %s, %s)",
                (day + dt.timedelta(hours=h), f"r{h}"),
            )
    request = tmp_path / "req.json"
    request.write_text('{"exportType": "DAILY", "endDateTime": "2024-05-10T00:00:00Z"}')
    first, second, seconds = _race(root, pg_url, "request", str(request))
    assert seconds > SLEEP_S
    assert sum(e["rows"] for e in second["entities"] if "rows" in e) == 0, second
    assert [(e["rows"], e["watermark_moved"]) for e in first["entities"]] == [(10, True)], first
    [path] = files(tmp_path / "out")
    assert sorted(r["payload"] for r in read_csv(path)) == [f"r{h}" for h in range(10)]
    marks = {w["entity"]: w["watermark"] for w in operations.watermarks(load(root), "studies")}
    assert marks == {"s1": dt.datetime(2024, 5, 10, tzinfo=UTC)}
