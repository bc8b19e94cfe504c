"""Partitioned exports from MariaDB: location-days/s to csv.gz, ledger on MariaDB or on SQLite.

Starts a throwaway MariaDB the way the test fixture does (tests/plugins/mariadb_server.py),
loads hourly OpenAQ-like rows (``locations``, ``sensors``, ``measurements`` with a ``DATETIME(6)``
time and a ``TIMESTAMP(6)`` ingest time) from the SEQUENCE engine inside the server, then per
case and repeat: a fresh project (the task of tests/support.py, fixed zone UTC, explicit
capture), ``sluicegate backfill`` (marks every location-day), and ``sluicegate run`` in its own
process, timed from start to exit. Cases:

* ``ledger-mariadb``: the ledger in the source database (``sluicegate_*`` tables);
* ``ledger-mariadb-w2``: the same with ``run --workers 2`` (the defaults run 1 on MariaDB);
* ``ledger-sqlite``: the ledger in a SQLite file, the source on MariaDB;
* ``naive-mariadb``: the OpenAQ way on MariaDB (bench/naive_openaq.py's logic): one query per
  location-day (the task's days, not OpenAQ's time-ending ones, so the files match) on a pool
  of ``cpu_count + 4`` threads, one connection each, ``csv`` + ``gzip``
  in Python, one log upsert per file; no claims, leases or fsync (generous to it);
* ``pg``: the same rows in a PostgreSQL 15 started by the run (bench/run.py's ``PgServer``),
  source and ledger there, the same task and settings: MariaDB's figures beside PostgreSQL's;
* ``read-only``: the batch query's floor, every row streamed once with ``cursor(buffered=False)``.

Both servers are durable as configured: PostgreSQL with fsync on, MariaDB with
``innodb_flush_log_at_trx_commit = 1`` and the doublewrite buffer on.

    .venv/bin/python bench/mariadb_export.py                        # 1M rows, 3 repeats
    .venv/bin/python bench/mariadb_export.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
SLUICEGATE = str(Path(sys.executable).with_name("sluicegate"))
DB = "bench"
LOCATIONS = 300
# Durable commits, as PostgreSQL's fsync = on (the test fixture relaxes both for speed).
BENCH_SETTINGS = {
    "innodb-buffer-pool-size": "1G",
    "innodb-log-file-size": "512M",
    "innodb-flush-log-at-trx-commit": "1",
    "innodb-doublewrite": "1",
}
CASES = ("ledger-mariadb", "ledger-mariadb-w2", "ledger-sqlite", "naive-mariadb", "pg", "read-only")


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
    conn.execute(
        f"INSERT INTO sensors SELECT seq * 10, seq, 'pm25', 'µg/m³' FROM seq_1_to_{LOCATIONS}"
    ).close()
    conn.execute(
        f"INSERT INTO measurements SELECT 1 + seq % {LOCATIONS}, (1 + seq % {LOCATIONS}) * 10,"
        f" TIMESTAMPADD(HOUR, seq DIV {LOCATIONS}, '2024-01-01 00:00:00'),"
        " (seq * 7919 % 100000) / 100.0 + 0.25,"
        f" UTC_TIMESTAMP(6) FROM seq_0_to_{rows - 1}"
    ).close()
    conn.execute("ANALYZE TABLE measurements").fetchall()
    conn.close()
    return time.perf_counter() - started


def load_pg(url: str, rows: int) -> float:
    """The same rows as :func:`load`, in PostgreSQL; return the load seconds."""
    import psycopg

    from sluicegate.generate import create_schema

    create_schema(url)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO locations SELECT g, 'Site ' || g, 'UTC', 50.5, 4.25"
            f" FROM generate_series(1, {LOCATIONS}) g"
        )
        conn.execute(
            f"INSERT INTO sensors SELECT g * 10, g, 'pm25', 'µg/m³' FROM generate_series(1, {LOCATIONS}) g"
        )
        conn.execute(
            f"INSERT INTO measurements SELECT 1 + g % {LOCATIONS}, (1 + g % {LOCATIONS}) * 10,"
            f" timestamptz '2024-01-01 00:00:00+00' + (g / {LOCATIONS}) * interval '1 hour',"
            f" (g::bigint * 7919 % 100000) / 100.0 + 0.25, now() FROM generate_series(0, {rows - 1}) g"
        )
        conn.execute("VACUUM ANALYZE measurements")
    return time.perf_counter() - started


NAIVE_PENDING = "SELECT DISTINCT location_id, DATE(datetime) FROM measurements ORDER BY 1, 2"
NAIVE_LOG_DDL = (
    "CREATE TABLE IF NOT EXISTS naive_export_log (location_id INT NOT NULL, day DATE NOT NULL,"
    " path VARCHAR(255) NOT NULL, `rows` INT NOT NULL, exported_at TIMESTAMP(6) NOT NULL"
    " DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (location_id, day))"
)
NAIVE_LOG = (
    "INSERT INTO naive_export_log (location_id, day, path, `rows`) VALUES (?, ?, ?, ?)"
    " ON DUPLICATE KEY UPDATE path = VALUES(path), `rows` = VALUES(`rows`),"
    " exported_at = CURRENT_TIMESTAMP(6)"
)


def naive(url: str, out: Path, threads: int) -> tuple[float, int, int]:
    """The OpenAQ exporter's way on MariaDB (see bench/naive_openaq.py): one query per
    location-day (days start at midnight UTC, as the task's), a thread pool, csv + gzip in
    Python, a log upsert.
    Returns (seconds, partitions, rows)."""
    from sluicegate import mariadb_conn
    from support import OPENAQ_SELECT_MARIADB

    query = (
        f"SELECT * FROM ({OPENAQ_SELECT_MARIADB}) AS q WHERE q.location_id = ?"
        " AND q.datetime >= ? AND q.datetime < ? ORDER BY q.sensors_id, q.datetime"
    )
    local = threading.local()
    conns: list[Any] = []
    lock = threading.Lock()

    def export(location_id: int, day: dt.date) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = mariadb_conn.connect(url)
            with lock:
                conns.append(conn)
        start = dt.datetime.combine(day, dt.time())
        cur = conn.cursor()
        cur.execute(query, (location_id, start, start + dt.timedelta(days=1)))
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        cur.close()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(names)
        for row in rows:  # DATETIME is UTC here: written as ISO 8601 with its offset
            writer.writerow(
                [v.replace(tzinfo=dt.UTC).isoformat() if isinstance(v, dt.datetime) else v for v in row]
            )
        rel = f"records/csv.gz/locationid={location_id}/location-{location_id}-{day:%Y%m%d}.csv.gz"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(text.getvalue().encode(), compresslevel=6, mtime=0))
        conn.execute(NAIVE_LOG, (location_id, day, rel, len(rows))).close()
        return len(rows)

    started = time.perf_counter()
    setup = mariadb_conn.connect(url)
    setup.execute(NAIVE_LOG_DDL).close()
    setup.execute("TRUNCATE naive_export_log").close()
    pending = setup.execute(NAIVE_PENDING).fetchall()
    setup.close()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            rows = sum(pool.map(lambda p: export(*p), pending))
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
    return time.perf_counter() - started, len(pending), rows


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


def drop_pg_ledger(url: str) -> None:
    """Remove the ledger schema a previous pg case left."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sluicegate CASCADE")


def run_case(tmp: Path, urls: dict[str, str], case: str, rows: int) -> dict[str, Any]:
    """One measurement of ``case``."""
    url = urls["mariadb"]
    if case == "read-only":
        seconds, count = read_only(url)
        assert count == rows, (count, rows)
        return {"seconds": seconds, "rows_per_s": rows / seconds}
    if case == "naive-mariadb":
        threads = (os.cpu_count() or 1) + 4
        seconds, partitions, count = naive(url, tmp / f"naive-{time.monotonic_ns()}", threads)
        assert count == rows, (count, rows)
        return {"seconds": seconds, "exported": partitions, "location_days_per_s": partitions / seconds,
                "rows_per_s": rows / seconds, "threads": threads}  # fmt: skip
    if case == "pg":
        url = urls["pg"]
        drop_pg_ledger(url)
    else:
        drop_ledger(url)
    workers = ["--workers", "2"] if case.endswith("-w2") else []
    root = project(tmp, url, case.removesuffix("-w2"))
    marked_s, _ = sluicegate(root, "backfill", "openaq")
    seconds, out = sluicegate(root, "run", "--json", *workers)
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    from plugins.mariadb_server import MARIADB_SETTINGS, MariaDbInstance, default_run_as, find_binaries

    binaries = find_binaries()
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(
            MariaDbInstance(binaries, default_run_as(), {**MARIADB_SETTINGS, **BENCH_SETTINGS})
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluicegate-bench-")))
        instance.initialise()
        server = instance.start()
        from plugins.mariadb_server import mariadb_connect

        mariadb_connect(server.url()).cursor().execute(f"CREATE DATABASE {DB}")
        urls = {"mariadb": server.url(DB)}
        loaded = load(urls["mariadb"], args.rows)
        print(f"MariaDB {binaries.version_text}: loaded {args.rows:,} rows in {loaded:.1f} s")
        if "pg" in cases:
            import psycopg
            from run import PG_USER, PgServer

            tmp.chmod(0o755)  # PostgreSQL runs as its own OS user when we are root
            pg = PgServer(tmp)
            stack.callback(pg.stop)
            pg.start()
            with psycopg.connect(
                f"postgresql://{PG_USER}@127.0.0.1:{pg.port}/postgres", autocommit=True
            ) as c:
                c.execute(f"CREATE DATABASE {DB}")
            urls["pg"] = f"postgresql://{PG_USER}@127.0.0.1:{pg.port}/{DB}"
            print(f"{pg.version()}: loaded {args.rows:,} rows in {load_pg(urls['pg'], args.rows):.1f} s")
        for _ in range(args.repeat):  # round robin, so a burst of load hits every case alike
            for case in cases:
                results[case].append(run_case(tmp, urls, case, args.rows))
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
