"""What folding the trigger inbox costs after a large COPY: ``capture.absorb`` timed, and checked.

    .venv/bin/python bench/fold.py                 # 1M readings, 3 runs, ~2 min
    .venv/bin/python bench/fold.py --rows 200000 --repeat 5

Starts PostgreSQL 15 (bench/run.py's ``PgServer``), creates the OpenAQ example's tables and
triggers (``sluicegate install``), gives the 300 locations four zones (Asia/Kathmandu,
America/New_York, Europe/Brussels, UTC), then per run: empties the table and the ledger,
loads bench/triggers.py's readings with one ``COPY`` and times ``capture.absorb``, the fold
that every ``sluicegate run`` does before it claims. Each run checks that the ledger then holds
exactly the location-days of the rows (computed here with zoneinfo, boundary "end") and
reports the highest partition version: a partition marked in several chunks of the fold gets
one version per chunk. Runs on any sluicegate version with the same ``absorb`` signature, so
``PYTHONPATH=<worktree>/src`` measures an older one beside this one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import triggers  # noqa: E402
from run import log  # noqa: E402

from sluicegate import capture  # noqa: E402
from sluicegate.config import load_project  # noqa: E402
from sluicegate.ledger import Ledger  # noqa: E402
from sluicegate.sources import open_source  # noqa: E402

ZONES = ("UTC", "Asia/Kathmandu", "America/New_York", "Europe/Brussels")


def zone_of(location: int) -> str:
    return ZONES[location % len(ZONES)]


def location_days(rows: list[triggers.Row]) -> set[str]:
    """The partition keys of ``rows``: location and local day of t - 1 µs (boundary "end")."""
    out = set()
    for location, _, at, _, _ in rows:
        day = (at - dt.timedelta(microseconds=1)).astimezone(ZoneInfo(zone_of(location))).date()
        out.add(f'[{location},"{day.isoformat()}"]')
    return out


def one_run(url: str, task: Any, rows: list[triggers.Row], want: set[str]) -> tuple[float, float, int]:
    """Empty the table and the ledger, COPY ``rows``, fold: (seconds, client CPU seconds, top version)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE measurements")
        conn.execute("DELETE FROM sluicegate.partitions")
        triggers.load_copy(conn, rows)
    source = open_source(url)
    try:
        with Ledger(url) as ledger:
            started, cpu = time.perf_counter(), time.process_time()
            capture.absorb(task, ledger, ledger, source)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            marked = ledger.conn.execute("SELECT pkey, version FROM sluicegate.partitions").fetchall()
    finally:
        source.close()
    got = {str(pkey) for pkey, _ in marked}
    if got != want:
        raise RuntimeError(f"the fold marked {len(got)} partitions; the rows have {len(want)}")
    top = max(int(version) for _, version in marked)
    log(f"fold: {seconds:.2f} s, {cpu:.2f} s client CPU, {len(got):,} partitions, version {top}")
    return seconds, cpu, top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = triggers.readings(args.rows)
    want = location_days(rows)
    runs = []
    with triggers.triggered_database("fold") as (_, url, root):
        with psycopg.connect(url, autocommit=True) as conn:
            for location in range(1, triggers.LOCATIONS + 1):
                conn.execute(
                    "INSERT INTO locations (location_id, name, timezone) VALUES (%s, %s, %s)",
                    (location, f"site {location}", zone_of(location)),
                )
        task = load_project(root, {}).tasks["openaq"]
        for _ in range(args.repeat):
            runs.append(one_run(url, task, rows, want))
    print(
        f"fold of a {args.rows:,}-row COPY's inbox, median of {len(runs)}: "
        f"{statistics.median(r[0] for r in runs):.2f} s wall, {statistics.median(r[1] for r in runs):.2f} s "
        f"client CPU, {len(want):,} location-days, top version {max(r[2] for r in runs)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
