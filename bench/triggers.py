"""What the capture triggers cost an ingest into PostgreSQL: COPY, executemany batches, small transactions.

    .venv/bin/python bench/triggers.py                       # defaults below, 3 runs per case, ~4 min
    .venv/bin/python bench/triggers.py --copy-rows 1000000 --insert-rows 1000000 --tx20-rows 100000
    .venv/bin/python bench/triggers.py --hows tx20 --repeat 5
    .venv/bin/python bench/triggers.py --partitioned     # measurements partitioned by month
    .venv/bin/python bench/triggers.py --row-triggers    # [capture] triggers = "row" on the plain table

Loads OpenAQ-like readings (300 locations x 3 sensors, one reading per sensor per hour, in
time order, as an ingest receives them) into an empty ``measurements`` table (the schema of
``sluicegate generate``: primary key and two indexes), without and with the capture triggers
of the OpenAQ example (``sluicegate install``: location-days, boundary "end"), three ways:

* ``copy``: one ``COPY ... FROM STDIN`` of all rows (one statement, one transaction);
* ``insert1000``: ``executemany`` of a one-row ``INSERT`` in batches of 1,000 rows, one
  transaction per batch (psycopg sends one statement per row, in a pipeline);
* ``tx20``: the same with 20 rows per transaction (airmax's Lambda inserted 20 at a time).

The two variants alternate, ``--repeat`` times each, after a ``TRUNCATE`` and a
``CHECKPOINT``. Reported per case: the median rows/s and its ratio to the run without
triggers, and the median CPU per row of the client and of the server backend (from
/proc/<pid>/stat), whose ratio other jobs on a shared machine disturb far less than the wall
time; the machine's other CPU use during the run is printed as a noise indicator. Every run
with triggers is checked: for the COPY, the inbox must hold exactly one run per location and UTC
day of the rows, its first and last 15-minute bins; for the inserts (one row per statement),
exactly the rows' distinct (location, bin) pairs, each as a run of one bin.

With ``--partitioned`` the table is declaratively partitioned by month (the same columns,
key and indexes), where ``install`` makes row triggers: every run then records one inbox row
per row written, and is checked for exactly the rows' (location, bin) pairs.

The server is bench/run.py's ``PgServer`` (PostgreSQL 15, defaults with fsync on), started in a
temp folder and stopped at the end. The report goes to stdout and
bench/results/triggers-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import PgServer, busy_cpu_seconds, log  # noqa: E402

from sluicegate import operations  # noqa: E402
from sluicegate.config import load_project  # noqa: E402
from sluicegate.generate import create_schema  # noqa: E402
from sluicegate.scaffold import init_project  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UTC = dt.UTC
LOCATIONS, SENSORS_PER_LOCATION = 300, 3
COLUMNS = "location_id, sensor_id, datetime, value, ingested_at"
INSERT = f"INSERT INTO measurements ({COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
Row = tuple[int, int, dt.datetime, float, dt.datetime]


def readings(count: int, start: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=UTC)) -> list[Row]:
    """``count`` hourly readings in time order: every sensor's reading of an hour, then the next hour."""
    sensors = LOCATIONS * SENSORS_PER_LOCATION
    out: list[Row] = []
    for i in range(count):
        hour, sensor = divmod(i, sensors)
        at = start + dt.timedelta(hours=hour)
        out.append((sensor // SENSORS_PER_LOCATION + 1, sensor + 1, at, float(i % 97), at))
    return out


def load_copy(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    text = "".join(f"{a}\t{b}\t{c.isoformat()}\t{d}\t{e.isoformat()}\n" for a, b, c, d, e in rows).encode()
    with conn.cursor() as cur, cur.copy(f"COPY measurements ({COLUMNS}) FROM STDIN") as copy:
        for at in range(0, len(text), 1 << 20):
            copy.write(text[at : at + (1 << 20)])


def load_batches(conn: psycopg.Connection[Any], rows: Sequence[Row], size: int) -> None:
    for at in range(0, len(rows), size):
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(INSERT, rows[at : at + size])


HOWS: dict[str, tuple[str, Callable[[psycopg.Connection[Any], Sequence[Row]], None]]] = {
    "copy": ("COPY of all rows, one statement", load_copy),
    "insert1000": ("executemany, 1,000 rows per transaction", lambda c, r: load_batches(c, r, 1000)),
    "tx20": ("executemany, 20 rows per transaction", lambda c, r: load_batches(c, r, 20)),
}


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of one server backend so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def set_triggers(url: str, root: Path, on: bool) -> None:
    """Install the example's capture triggers (``sluicegate install``), or drop them."""
    if on:
        operations.install(load_project(root, {}))
        return
    with psycopg.connect(url, autocommit=True) as conn:
        for op in ("insert", "update", "delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS sluicegate_openaq_{op} ON measurements")


def bins(rows: Sequence[Row]) -> set[tuple[int, int]]:
    """Distinct (location, bin) pairs of ``rows``; a bin: Unix seconds, from t - 1 µs (boundary "end")."""
    return {(r[0], int((r[2] - dt.timedelta(microseconds=1)).timestamp()) // 900 * 900) for r in rows}


def expected_runs(rows: Sequence[Row]) -> set[tuple[int, int, int]]:
    """What one statement of ``rows`` records: per location and UTC day of its bins, the first and last."""
    runs: dict[tuple[int, int], tuple[int, int]] = {}
    for location, bin_start in bins(rows):
        first, last = runs.get((location, bin_start // 86400), (bin_start, bin_start))
        runs[(location, bin_start // 86400)] = (min(first, bin_start), max(last, bin_start))
    return {(location, first, last) for (location, _), (first, last) in runs.items()}


def partition_by_month(url: str) -> None:
    """Make ``measurements`` a table partitioned by month of ``datetime`` (2024), with the same
    columns, key and indexes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE measurements_p (LIKE measurements INCLUDING ALL) PARTITION BY RANGE (datetime)"
        )
        conn.execute("DROP TABLE measurements")
        conn.execute("ALTER TABLE measurements_p RENAME TO measurements")
        for month in range(1, 13):
            start, end = dt.date(2024, month, 1), dt.date(2024 + month // 12, month % 12 + 1, 1)
            conn.execute(
                f"CREATE TABLE measurements_{month:02d} PARTITION OF measurements"
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )


def one_run(
    url: str, how: str, rows: Sequence[Row], triggers: bool, per_row: bool = False
) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE measurements")
        conn.execute("DELETE FROM sluicegate.change_runs")
        conn.execute("CHECKPOINT")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        server0, client0, busy0 = backend_cpu(pid), own_cpu(), busy_cpu_seconds()
        started = time.perf_counter()
        HOWS[how][1](conn, rows)
        seconds = time.perf_counter() - started
        server, client = backend_cpu(pid) - server0, own_cpu() - client0
        other = max(busy_cpu_seconds() - busy0 - server - client, 0.0)
        loaded = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]  # type: ignore[index]
        recorded = conn.execute(
            "SELECT (keys->>0)::int, extract(epoch FROM first_bin)::bigint,"
            " extract(epoch FROM last_bin)::bigint FROM sluicegate.change_runs"
        ).fetchall()
    if loaded != len(rows):
        raise RuntimeError(f"{how}: loaded {loaded} rows, expected {len(rows)}")
    inbox = len(recorded)
    if not triggers:
        if inbox:
            raise RuntimeError(f"{how}: {inbox} inbox rows without triggers")
    elif how == "copy" and not per_row:  # one statement: exactly its runs
        want = expected_runs(rows)
        if inbox != len(want) or set(recorded) != want:
            raise RuntimeError(f"{how}: the inbox holds {inbox} runs, expected the {len(want)} of the rows")
    else:  # one row per statement (or row triggers): its bin, once or more
        pairs = {(location, first) for location, first, _ in recorded}
        if any(first != last for _, first, last in recorded) or pairs != bins(rows):
            raise RuntimeError(f"{how}: the inbox's {inbox} rows are not the rows' (location, bin) pairs")
    return {"seconds": seconds, "server": server, "client": client, "other": other, "inbox": inbox}


def case(url: str, root: Path, how: str, count: int, repeat: int, per_row: bool = False) -> dict[str, Any]:
    """Medians of ``repeat`` runs without and with triggers, alternating."""
    rows = readings(count)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(repeat):
        for triggers in (False, True):
            set_triggers(url, root, triggers)
            runs[triggers].append(one_run(url, how, rows, triggers, per_row))
    return summarize(how, count, runs)


def summarize(how: str, count: int, runs: dict[bool, list[dict[str, float]]]) -> dict[str, Any]:
    """The medians of the runs without (False) and with (True) triggers, and their ratios."""
    out: dict[str, Any] = {"how": how, "rows": count}
    for triggers, values in runs.items():
        side = "with" if triggers else "without"
        out[side] = {
            "rows_s": statistics.median(count / v["seconds"] for v in values),
            "server_us": statistics.median(v["server"] for v in values) / count * 1e6,
            "client_us": statistics.median(v["client"] for v in values) / count * 1e6,
            "cpu_us": statistics.median(v["server"] + v["client"] for v in values) / count * 1e6,
            "other_s": statistics.median(v["other"] for v in values),
            "inbox": int(statistics.median(v["inbox"] for v in values)),
        }
    out["ratio"] = out["with"]["rows_s"] / out["without"]["rows_s"]
    out["cpu_ratio"] = out["without"]["cpu_us"] / out["with"]["cpu_us"]
    log(
        f"{how}: {out['without']['rows_s']:,.0f} rows/s without triggers, {out['with']['rows_s']:,.0f} with "
        f"({out['ratio']:.2f}x; CPU {out['cpu_ratio']:.2f}x)"
    )
    return out


def publish(what: str, repeat: int, results: list[dict[str, Any]], labels: dict[str, str], script: str,
            argv: list[str] | None) -> None:  # fmt: skip
    """Print the report of ``results`` (``labels`` names each case; ``what`` was measured, with
    ``script`` and ``argv``) and keep it in bench/results/<script's name>-<time>.md."""
    when = dt.datetime.now(UTC).isoformat(timespec="minutes")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = " ".join([f".venv/bin/python bench/{script}", *(argv if argv is not None else sys.argv[1:])])
    report = table(
        f"{what}, {when}, median of {repeat} runs per variant, load average {load}:", results, labels, command
    )
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{Path(script).stem.replace('_', '-')}-{when.replace(':', '')}.md").write_text(report + "\n")


def table(title: str, results: list[dict[str, Any]], labels: dict[str, str], command: str) -> str:
    """The report: ``title``, a row per case (``labels`` names them), the command."""
    lines = [
        title,
        "",
        "| how | rows | rows/s without | rows/s with | ratio | CPU µs/row without (server + client) "
        "| CPU µs/row with (server + client) | CPU ratio | inbox rows | other CPU s (without, with) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        a, b = r["without"], r["with"]
        lines.append(
            f"| {labels[r['how']]} | {r['rows']:,} | {a['rows_s']:,.0f} | {b['rows_s']:,.0f} "
            f"| {r['ratio']:.2f} "
            f"| {a['server_us']:.1f} + {a['client_us']:.1f} | {b['server_us']:.1f} + {b['client_us']:.1f} "
            f"| {r['cpu_ratio']:.2f} | {b['inbox']:,} | {a['other_s']:.1f}, {b['other_s']:.1f} |"
        )
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


@contextlib.contextmanager
def triggered_database(
    name: str, partitioned: bool = False, row_triggers: bool = False
) -> Iterator[tuple[PgServer, str, Path]]:
    """A throwaway PostgreSQL holding database ``name`` with the tables of ``sluicegate generate``,
    and the OpenAQ example project (``root``) with its capture triggers installed; yields
    ``(server, url, root)`` and stops the server on exit."""
    with tempfile.TemporaryDirectory(prefix=f"sluicegate-{name}-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the server runs as its own OS user when we are root
        pg = PgServer(base)
        try:
            pg.start()
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            url = pg.url(name)
            create_schema(url)
            if partitioned:
                partition_by_month(url)
            root = base / "project"
            init_project(root, example="openaq", source_url=url)
            if row_triggers:
                toml = root / "tasks" / "openaq" / "task.toml"
                toml.write_text(toml.read_text() + 'triggers = "row"\n')  # [capture] is the last table
            set_triggers(url, root, True)  # creates the ledger schema and the inbox
            yield pg, url, root
        finally:
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--insert-rows", type=int, default=100_000)
    parser.add_argument("--tx20-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hows", default=",".join(HOWS), help=f"subset of: {', '.join(HOWS)}")
    parser.add_argument("--partitioned", action="store_true", help="measurements partitioned by month")
    parser.add_argument(
        "--row-triggers", action="store_true", help='[capture] triggers = "row" on the plain table'
    )
    args = parser.parse_args(argv)
    counts = {"copy": args.copy_rows, "insert1000": args.insert_rows, "tx20": args.tx20_rows}
    results = []
    per_row = args.partitioned or args.row_triggers
    with triggered_database("triggers", args.partitioned, args.row_triggers) as (pg, url, root):
        for how in (h for h in args.hows.split(",") if h):
            results.append(case(url, root, how, counts[how], args.repeat, per_row))
        version = pg.version()
    table_kind = (
        " (measurements partitioned by month: row triggers)"
        if args.partitioned
        else (' ([capture] triggers = "row")' if args.row_triggers else "")
    )
    labels = {how: label for how, (label, _) in HOWS.items()}
    publish(f"Capture triggers on PostgreSQL{table_kind}, {version}", args.repeat, results, labels,
            "triggers.py", argv)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
