"""The ledger cannot record a batch (its rows stay locked past the lock timeout) while more
files are in flight: the run ends with the error in one line, nothing is recorded, no file is
in place unrecorded, and the next run exports every partition once.

(bench/soak.py found a related defect on S3: after such a LedgerError the run discarded the
batch's spools but left those files in the publishing queue, and a later flush tried to upload
a vanished spool: FileNotFoundError, a traceback. Pipeline.abandon fixes it; this test covers
the outcome on a local folder, where the same sequence does not reach a vanished spool.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate import operations
from support import SLUICEGATE, Db, files, hours, load, write_project

pytestmark = pytest.mark.pg

DAY = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
LOCATIONS, DAYS = 20, 16  # 320 location-days: more than the 256 files a run keeps in flight


def test_a_batch_the_ledger_cannot_record_abandons_every_file_in_flight(tmp_path: Path, pg_url: str) -> None:
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), lease="2s")
    db = Db(pg_url)
    operations.install(load(root))
    for location in range(1, LOCATIONS + 1):
        db.location(location, "UTC")
        db.insert(location, hours(DAY, 4 * DAYS, dt.timedelta(hours=6)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    worker = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, "SLUICEGATE_TESTING__FAULT": "before_place"},
    )  # fmt: skip
    marker = root / ".fault-before_place"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "the worker never reached its first flush"
        time.sleep(0.05)
    # Another session locks the first day's ledger rows, which are in the first flush (claims
    # take the oldest windows first): that flush cannot record; the later days' rows are free.
    with psycopg.connect(pg_url) as locker:
        locker.execute(
            "SELECT id FROM sluicegate.partitions WHERE win_start < %s FOR UPDATE",
            (DAY + dt.timedelta(days=1),),
        ).fetchall()
        marker.unlink()
        out, err = worker.communicate(timeout=120)
    assert worker.returncode == 1, out + err
    [failed_run] = json.loads(out)
    assert any("lock timeout" in e for e in failed_run["task_errors"]), failed_run
    # Nothing was recorded as exported or failed: the claims wait for their lease.
    assert failed_run["failed"] == 0 and failed_run["exported"] == 0, failed_run
    assert "Traceback" not in err, err
    assert "FileNotFoundError" not in err
    assert files(tmp_path / "out") == [], "a file was put in place without being recorded"
    time.sleep(2.5)  # the claims of the failed run expire
    second = subprocess.run(
        [SLUICEGATE, "-C", str(root), "run", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert second.returncode == 0, second.stderr
    [summary] = json.loads(second.stdout)
    assert summary["exported"] == LOCATIONS * DAYS and summary["failed"] == 0, summary
    assert len(files(tmp_path / "out")) == LOCATIONS * DAYS


def test_reexport_locks_partitions_in_the_order_marks_and_commits_do(tmp_path: Path, pg_url: str) -> None:
    """`reexport` updated its rows in the table's physical order, while marks and commits lock
    them in pkey order: with a worker holding one row and waiting for the next, the two deadlocked
    and PostgreSQL aborted one of them (the run's fold or commit, or the operator's command)."""
    from sluicegate.partitions import make_partition

    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="UTC")
    task = load(root).tasks["openaq"]
    days = [DAY.date(), (DAY + dt.timedelta(days=1)).date()]
    with operations.ledger_of(load(root)) as ledger:
        for day in reversed(days):  # the later day first: physical order is not pkey order
            ledger.partitions.mark([make_partition(task, [1], day, "UTC")], task)  # type: ignore[arg-type]
        table = f"{ledger.table_prefix}partitions"
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as on a large ledger: a sequential scan
        dbname = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f'ALTER DATABASE "{dbname}" SET enable_indexscan = off')
        conn.execute(f'ALTER DATABASE "{dbname}" SET enable_bitmapscan = off')
    with psycopg.connect(pg_url) as worker:  # a fold marking both days, in pkey order
        worker.execute(f"SELECT id FROM {table} WHERE pkey = %s FOR UPDATE", ['[1,"2024-01-01"]'])
        done: list[Any] = []
        operator = threading.Thread(target=lambda: done.append(operations.reexport(load(root), "openaq", {})))
        operator.start()
        time.sleep(1.5)  # the operator's reexport is waiting for a lock by now
        worker.execute("SET lock_timeout = '5s'")
        worker.execute(f"SELECT id FROM {table} WHERE pkey = %s FOR UPDATE", ['[1,"2024-01-02"]'])
        worker.commit()
        operator.join(timeout=30)
    assert done == [2]


def test_partitions_lock_in_the_order_marks_sort_them_under_any_collation(
    tmp_path: Path, pg_url: str
) -> None:
    """Marks lock partitions in Python's order of their pkeys (code points); hold, renew, release
    and reexport in the database's ``ORDER BY pkey``. Under a database collation such as en-US
    (the default of most managed PostgreSQL) "antwerp" sorts before "Gent", in Python after it:
    the two orders disagreed, and a mark and a commit of the same partitions could deadlock."""
    from sluicegate.partitions import make_partition

    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), zone="UTC")
    task = load(root).tasks["openaq"]
    names = ["antwerp", "Gent", "zwolle", "Brugge"]
    with operations.ledger_of(load(root)) as ledger:
        table = f"{ledger.table_prefix}partitions"
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as in a database created en-US
            conn.execute(f'ALTER TABLE {table} ALTER pkey TYPE text COLLATE "en-US-x-icu"')
            by_db = [
                r[0]
                for r in conn.execute(
                    'SELECT n FROM unnest(%s::text[]) AS u(n) ORDER BY n COLLATE "en-US-x-icu"', [names]
                )
            ]
        assert by_db != sorted(names)  # the premise: this collation disagrees with Python's order
        parts = [make_partition(task, [name], DAY.date(), "UTC") for name in names]  # type: ignore[arg-type]
        ledger.partitions.mark(parts, task)  # type: ignore[arg-type]
        listed = [keys["location_id"] for _, keys, _, _ in ledger.partitions.partition_keys(task)]  # type: ignore[arg-type]
    assert listed == sorted(names)  # reexport's lock order is the marks' order
