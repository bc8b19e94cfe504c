"""Partitioned exports from MariaDB: location-days/s to csv.gz, ledger on MariaDB or on SQLite.

Starts a throwaway MariaDB the way the test fixture does (tests/plugins/mariadb_server.py),
loads hourly OpenAQ-like rows (``locations``, ``sensors``, ``measurements`` with a ``DATETIME(6)``
time and a ``TIMESTAMP(6)`` ingest time) from the SEQUENCE engine inside the server, then per
case and repeat: a fresh project (the task of tests/support.py, fixed zone UTC, explicit
capture), ``sluicegate backfill`` (marks every location-day), and ``sluicegate run`` in its own
process, timed from start to exit. Cases:

* ``ledger-mariadb``: the ledger in the source database (``sluicegate_*`` tables);
* ``ledger-sqlite``: the ledger in a SQLite file, the source on MariaDB;
* ``read-only``: the batch query's floor, every row streamed once with ``cursor(buffered=False)``.

    .venv/bin/python bench/mariadb_export.py                        # 1M rows, 3 repeats
    .venv/bin/python bench/mariadb_export.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SLUICEGATE = str(Path(sys.executable).with_name("sluicegate"))
DB = "bench"
LOCATIONS = 300
BENCH_SETTINGS = {"innodb-buffer-pool-size": "1G", "innodb-log-file-size": "512M"}
CASES = ("ledger-mariadb", "ledger-sqlite", "read-only")


def load(url: str, rows: int) -> float:
    """Create and fill the tables with ``rows`` hourly measurements; return the load seconds."""
    from sluicegate import mariadb_conn
    from support import MARIADB_SCHEMA

    conn = mariadb_conn.connect(url)
    for statement in MARIADB_SCHEMA:
        conn.execute(statement).close()
    started = time.perf_counter()
    conn.execute(
        f"INSERT INTO locations SELECT seq, CONCAT('Site ', seq), 'UTC', 50.5, 4.25 FROM seq_1_to_{LOCATIONS}"
    ).close()
    conn.execute(f"INSERT INTO sensors SELECT seq * 10, seq, 'pm25', 'µg/m³' FROM seq_1_to_{LOCATIONS}").close()
    conn.execute(
        f"INSERT INTO measurements SELECT 1 + seq % {LOCATIONS}, (1 + seq % {LOCATIONS}) * 10,"
        f" TIMESTAMPADD(HOUR, seq DIV {LOCATIONS}, '2024-01-01 00:00:00'), (seq * 7919 % 100000) / 100.0 + 0.25,"
        f" UTC_TIMESTAMP(6) FROM seq_0_to_{rows - 1}"
    ).close()
    conn.execute("ANALYZE TABLE measurements").fetchall()
    conn.close()
    return time.perf_counter() - started


def project(tmp: Path, url: str, case: str) -> Path:
    """A fresh project reading the tables at ``url``, its ledger per ``case``."""
    from support import write_project

    root = tmp / f"{case}-{time.monotonic_ns()}"
    ledger = f"sqlite:///{root / 'ledger.db'}" if case == "ledger-sqlite" else None
    return write_project(
        root, source=url, destination=str(root / "out"), fmt="csv.gz", capture="explicit", zone="UTC",
        ledger=ledger, extra_defaults="batch_size = 500",
    )  # fmt: skip


def drop_ledger(url: str) -> None:
    """Remove the ledger tables a previous ledger-mariadb case left in the source database."""
    from sluicegate import mariadb_conn

    conn = mariadb_conn.connect(url)
    for table in ("partitions", "changes", "scans", "schedule_ticks", "runs", "task_errors", "meta"):
        conn.execute(f"DROP TABLE IF EXISTS sluicegate_{table}").close()
    conn.close()


def sluicegate(root: Path, *args: str) -> tuple[float, str]:
    """Run the CLI; return its wall seconds and stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    started = time.perf_counter()
    proc = subprocess.run([SLUICEGATE, "-C", str(root), *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sluicegate {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def read_only(url: str) -> tuple[float, int]:
    """Stream every row of the task's select once: the floor under an export."""
    from sluicegate import mariadb_conn
    from support import OPENAQ_SELECT_MARIADB

    started = time.perf_counter()
    conn = mariadb_conn.connect(url)
    cur = conn.cursor(buffered=False)
    cur.execute(OPENAQ_SELECT_MARIADB)
    rows = 0
    while batch := cur.fetchmany(10_000):
        rows += len(batch)
    conn.close()
    return time.perf_counter() - started, rows


def run_case(tmp: Path, url: str, case: str, rows: int) -> dict[str, Any]:
    """One measurement of ``case``."""
    if case == "read-only":
        seconds, count = read_only(url)
        assert count == rows, (count, rows)
        return {"seconds": seconds, "rows_per_s": rows / seconds}
    drop_ledger(url)
    root = project(tmp, url, case)
    marked_s, _ = sluicegate(root, "backfill", "openaq")
    seconds, out = sluicegate(root, "run", "--json")
    [summary] = json.loads(out)
    assert summary["failed"] == 0 and summary["rows"] == rows, summary
    return {
        "seconds": seconds,
        "backfill_s": marked_s,
        "exported": summary["exported"],
        "location_days_per_s": summary["exported"] / seconds,
        "rows_per_s": rows / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    from plugins.mariadb_server import MARIADB_SETTINGS, MariaDbInstance, default_run_as, find_binaries

    binaries = find_binaries()
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with (
        MariaDbInstance(binaries, default_run_as(), {**MARIADB_SETTINGS, **BENCH_SETTINGS}) as instance,
        tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as tmp,
    ):
        instance.initialise()
        server = instance.start()
        from plugins.mariadb_server import mariadb_connect

        mariadb_connect(server.url()).cursor().execute(f"CREATE DATABASE {DB}")
        url = server.url(DB)
        print(f"MariaDB {binaries.version_text}: loaded {args.rows:,} rows in {load(url, args.rows):.1f} s")
        for _ in range(args.repeat):  # round robin, so a burst of load hits every case alike
            for case in cases:
                results[case].append(run_case(Path(tmp), url, case, args.rows))
                print(case, json.dumps(results[case][-1]), flush=True)
    print(f"\n| case | location-days | seconds (median of {args.repeat}) | location-days/s | rows/s |")
    print("|---|---:|---:|---:|---:|")
    for case, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        days = runs[0].get("exported")
        rate = f"{days / seconds:,.0f}" if days else "-"
        print(f"| `{case}` | {days or '-'} | {seconds:.2f} | {rate} | {args.rows / seconds:,.0f} |")
    print("\ncommand: " + shlex.join([".venv/bin/python", "bench/mariadb_export.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
