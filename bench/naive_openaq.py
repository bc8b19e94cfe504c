"""The naive OpenAQ-style exporter, for the benchmark: one query per location-day.

This mirrors how the OpenAQ open-data exporter worked: list the pending location-days, then
for each one run the export SELECT restricted to that location and its local day (OpenAQ's
time-ending window ``datetime > timezone(tz, day) AND datetime <= timezone(tz, day + 1)``),
fetch the rows into Python, write them with the ``csv`` module through ``gzip``, and record
the export in a log table. OpenAQ ran this on a thread pool of ``cpu_count + 4`` workers;
here it is a ``ThreadPoolExecutor`` (6 by default on the 2-core bench machine) with one
connection per thread.

Deliberately generous to the naive approach: files are not fsynced, and the "ledger" is a
single upsert per partition into a plain log table (no claims, no leases, no versions).

Run: ``python bench/naive_openaq.py --url postgresql://... --out DIR [--threads 6]``; prints
one JSON object ``{"partitions", "rows", "bytes", "seconds"}`` on stdout.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import json
import os
import threading
import time
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

DEFAULT_SELECT = (
    Path(__file__).resolve().parents[1] / "src/sluicegate/templates/openaq/tasks/openaq/select.sql"
)

PENDING_SQL = """
SELECT DISTINCT m.location_id,
       ((m.datetime - interval '1 microsecond') AT TIME ZONE l.timezone)::date AS day,
       l.timezone
FROM measurements AS m JOIN locations AS l USING (location_id)
ORDER BY 1, 2
"""

LOG_DDL = """
CREATE TABLE IF NOT EXISTS naive_export_log (
    location_id integer NOT NULL,
    day date NOT NULL,
    path text NOT NULL,
    rows integer NOT NULL,
    exported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, day)
)
"""

LOG_SQL = """
INSERT INTO naive_export_log (location_id, day, path, rows) VALUES (%s, %s, %s, %s)
ON CONFLICT (location_id, day) DO UPDATE SET path = EXCLUDED.path, rows = EXCLUDED.rows, exported_at = now()
"""


def partition_query(select_sql: str) -> str:
    """The per-partition query: the export select, one location, one local day (time-ending)."""
    return (
        f"SELECT * FROM ({select_sql}) AS q\n"
        "WHERE q.location_id = %(location_id)s\n"
        "  AND q.datetime > timezone(%(tz)s, %(day)s::timestamp)\n"
        "  AND q.datetime <= timezone(%(tz)s, (%(day)s::date + 1)::timestamp)\n"
        "ORDER BY q.sensors_id, q.datetime"
    )


class Exporter:
    """One connection per thread; each call exports one location-day."""

    def __init__(self, url: str, out: Path, select_sql: str, log: bool) -> None:
        self.url = url
        self.out = out
        self.query = partition_query(select_sql)
        self.log = log
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def conn(self) -> psycopg.Connection[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = psycopg.connect(self.url, autocommit=True, application_name="naive-openaq")
            conn.execute("SET TimeZone TO 'UTC'")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._conns:
            conn.close()

    def export(self, location_id: int, day: dt.date, tz: str) -> tuple[int, int]:
        conn = self.conn()
        with conn.cursor() as cur:
            cur.execute(self.query, {"location_id": location_id, "tz": tz, "day": day})
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall()
        zone = zoneinfo.ZoneInfo(tz)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(
                [v.astimezone(zone).isoformat() if isinstance(v, dt.datetime) else v for v in row]
            )
        rel = (
            f"records/csv.gz/locationid={location_id}/year={day:%Y}/month={day:%m}/"
            f"location-{location_id}-{day:%Y%m%d}.csv.gz"
        )
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(text.getvalue().encode("utf-8"), compresslevel=6, mtime=0)
        path.write_bytes(data)
        if self.log:
            conn.execute(LOG_SQL, (location_id, day, rel, len(rows)))
        return len(rows), len(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="postgresql://... of the OpenAQ-like database")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--threads", type=int, default=min(32, (os.cpu_count() or 1) + 4))
    parser.add_argument("--select", type=Path, default=DEFAULT_SELECT, help="the export select.sql")
    parser.add_argument(
        "--no-log", dest="log", action="store_false", help="skip the per-partition log upsert"
    )
    args = parser.parse_args(argv)

    select_sql = args.select.read_text(encoding="utf-8").strip().rstrip(";").strip() + "\n"
    started = time.perf_counter()
    with psycopg.connect(args.url, autocommit=True) as conn:
        if args.log:
            conn.execute(LOG_DDL)
            conn.execute("TRUNCATE naive_export_log")
        pending = conn.execute(PENDING_SQL).fetchall()
    exporter = Exporter(args.url, args.out, select_sql, args.log)
    rows = nbytes = 0
    try:
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            for n, size in pool.map(lambda p: exporter.export(*p), pending):
                rows += n
                nbytes += size
    finally:
        exporter.close()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "partitions": len(pending),
                "rows": rows,
                "bytes": nbytes,
                "seconds": round(seconds, 3),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
