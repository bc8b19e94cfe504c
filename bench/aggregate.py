"""airmax benchmark: the aggregate with and without the index airmax lacked; ingest with and without triggers.

    .venv/bin/python bench/aggregate.py                         # 1M raw rows, 100k ingested rows
    .venv/bin/python bench/aggregate.py --rows 200000 --ingest 20000 --repeat 3 --ingest-repeat 1
    .venv/bin/python bench/aggregate.py --databases sqlite,pg

1. **Aggregate.** ``rows`` airmax measurements (``generate --dataset airmax``: 100 a minute,
   so 1M rows span about 7 days) in ``raw`` on SQLite, PostgreSQL 15 and MariaDB; the example's
   ``current_air_quality`` select over ``[t - 3h, t)``, timed with the index on
   ``measurement_time_utc`` and after dropping it (airmax's schema). "query" is the select
   alone; "evaluation" is the whole tick (claim, select, table replace, ledger record), with
   the table and the ledger in the source database.
2. **Ingest.** ``ingest`` measurements into an empty ``raw``, rows per second, without and with
   the capture triggers of a partitioned task over ``raw`` (keys ``city``, daily partitions):
   sluicegate's ingest (batches of 500: ON CONFLICT insert, log row, one transaction), batches
   of 20 in their own transaction (airmax's generator and Lambda), and on PostgreSQL COPY. The
   target: triggers cost at most 20 %.

Servers: PostgreSQL from bench/run.py's ``PgServer`` (defaults, fsync on), MariaDB from the test
fixture's ``MariaDbInstance`` with durable commits (``innodb_flush_log_at_trx_commit = 1``,
doublewrite on). Each started server is stopped at the end. The report goes to
stdout and bench/results/aggregate-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import shlex
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from sluicegate import generate_airmax, operations, tables  # noqa: E402
from sluicegate.config import load_project  # noqa: E402
from sluicegate.drivers import Context  # noqa: E402
from sluicegate.drivers import aggregate as agg  # noqa: E402
from sluicegate.ingest import Ingestor, IngestSummary  # noqa: E402
from sluicegate.ledger import Ledger  # noqa: E402
from sluicegate.messages import Message  # noqa: E402
from sluicegate.scaffold import init_project  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UTC = dt.UTC
CAPTURE_TASK = textwrap.dedent("""
    keys = ["city"]
    path = "{city}/{day:%Y%m%d}.{ext}"
    [time]
    column = "measurement_time_utc"
    grain = "day"
    zone = "UTC"
    [capture]
    mode = "trigger"
    table = "raw"
    keys = { city = "city" }
    time = "measurement_time_utc"
""")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def servers(base: Path, wanted: list[str]) -> Iterator[dict[str, str]]:
    """Database URLs by name; PostgreSQL and MariaDB started for the run and stopped after it."""
    urls = {"sqlite": f"sqlite:///{base / 'airmax.db'}"} if "sqlite" in wanted else {}
    base.chmod(0o755)  # the servers run as their own OS users when we are root
    with contextlib.ExitStack() as stack:
        if "pg" in wanted:
            from run import PG_USER, PgServer

            pg = PgServer(base)
            stack.callback(pg.stop)
            pg.start()
            import psycopg

            with psycopg.connect(
                f"postgresql://{PG_USER}@127.0.0.1:{pg.port}/postgres", autocommit=True
            ) as c:
                c.execute("CREATE DATABASE airmax")
            urls["pg"] = f"postgresql://{PG_USER}@127.0.0.1:{pg.port}/airmax"
            log(f"{pg.version()} on port {pg.port}")
        if "mariadb" in wanted:
            from plugins.mariadb_server import (
                MARIADB_SETTINGS,
                MariaDbInstance,
                default_run_as,
                find_binaries,
                mariadb_connect,
            )

            binaries = find_binaries()
            durable = {
                "innodb-flush-log-at-trx-commit": "1",
                "innodb-doublewrite": "1",
            }  # as PostgreSQL's fsync
            instance = stack.enter_context(
                MariaDbInstance(binaries, default_run_as(), {**MARIADB_SETTINGS, **durable})
            )
            instance.initialise()
            server = instance.start()
            with contextlib.closing(mariadb_connect(server.url())) as conn:
                conn.cursor().execute("CREATE DATABASE airmax")
            urls["mariadb"] = server.url("airmax")
            log(f"MariaDB {binaries.version_text} on port {server.port}")
        yield urls


def project(base: Path, name: str, url: str) -> Path:
    """The airmax example with ``url`` as its source (and the aggregate's table)."""
    root = base / f"project-{name}"
    init_project(root, example="airmax", force=True)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('url = "sqlite:///airmax.db"', f'url = "{url}"', 1))
    return root


def timed(step: Callable[[], Any], repeat: int) -> float:
    """The median seconds of ``repeat`` runs of ``step`` (after one warm-up run)."""
    step()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def drop_index(url: str) -> None:
    db = tables.TableDb(url)
    try:
        db.execute("DROP INDEX raw_measurement_time" + (" ON raw" if db.flavor == "mariadb" else ""))
    finally:
        db.close()


def aggregate_case(base: Path, name: str, url: str, rows: int, repeat: int) -> list[dict[str, Any]]:
    """Load ``rows``, then time the query (and the evaluation) with the index and without it."""
    started = time.perf_counter()
    generate_airmax.generate(url, rows=rows, seed=1)
    log(f"{name}: {rows:,} rows loaded in {time.perf_counter() - started:.1f} s")
    db = tables.TableDb(url)
    with contextlib.suppress(Exception):
        db.execute("ANALYZE" if db.flavor != "mariadb" else "ANALYZE TABLE raw")
    db.close()
    root = project(base, name, url)
    task = load_project(root, {}).tasks["current_air_quality"]
    assert isinstance(task, agg.Task)
    out = []
    tick = dt.datetime.now(UTC).replace(microsecond=0)
    ticks = iter(tick + dt.timedelta(seconds=s) for s in range(1, 10_000))  # each evaluation its own tick

    def evaluate(context: Context) -> None:
        result = agg.evaluate(context, task, next(ticks))
        assert result.state == "done", result

    for indexed in (True, False):
        if not indexed:
            drop_index(url)
        query = timed(lambda: agg.evaluation_rows(url, task, tick), repeat)
        with contextlib.closing(Context.open(load_project(root, {}))) as context:
            evaluation = timed(lambda: evaluate(context), repeat)
        out.append({"database": name, "index": indexed, "query": query, "evaluation": evaluation})
        log(f"{name}, index {indexed}: query {query * 1000:.1f} ms, evaluation {evaluation * 1000:.1f} ms")
    return out


def messages(count: int, seed: int) -> list[Message]:
    """``count`` readable messages with unique ids, as ingest receives them."""
    rng = random.Random(seed)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    out = []
    for i in range(count):
        m = generate_airmax.measurement(rng, now - dt.timedelta(seconds=count - i))
        fields = {
            "id": m["message_id"],
            "sent_at": m["message_send_time_utc"],
            "date_utc": m["measurement_time_utc"],
            "country": "BE",
            "location": m["location"],
            "city": m["city"],
            "latitude": m["latitude"],
            "longitude": m["longitude"],
            "sourceType": m["source_type"],
            "sourceName": m["source_name"],
            "parameter": "pm25",
            "unit": "µg/m³",
            "value": m["parameter_value"],
        }
        out.append(Message(id=m["message_id"], body="", fields=fields))
    return out


def reset(url: str, root: Path, triggers: bool) -> None:
    """An empty raw table, with or without the capture triggers."""
    db = tables.TableDb(url)
    try:
        db.execute("DROP TABLE IF EXISTS raw")
    finally:
        db.close()
    generate_airmax.create_schema(url)
    capture = root / "tasks" / "by_city"
    if triggers:
        capture.mkdir(exist_ok=True)
        (capture / "task.toml").write_text(CAPTURE_TASK)
        (capture / "select.sql").write_text("SELECT * FROM raw\n")
        operations.install(load_project(root, {}))
    elif capture.exists():
        for path in capture.iterdir():
            path.unlink()
        capture.rmdir()


def ingest_rate(url: str, root: Path, batch: list[Message], how: str) -> float:
    """Rows per second of one way of ingesting ``batch`` into an empty raw table."""
    project_ = load_project(root, {})
    task = project_.tasks["measurements"]
    started = time.perf_counter()
    if how == "copy":
        db = tables.TableDb(url)
        columns = "message_id, measurement_time_utc, city, parameter_name, parameter_unit, parameter_value"
        with db.transaction() as cur, cur.copy(f"COPY raw ({columns}) FROM STDIN") as copy:
            for m in batch:
                f = m.fields or {}
                copy.write_row((f["id"], f["date_utc"], f["city"], "pm25", "µg/m³", f["value"]))
        db.close()
    else:
        size = 500 if how == "sluicegate" else 20
        with Ledger(url, schema=project_.settings.ledger_schema) as target:
            ingestor = Ingestor(task, target)  # type: ignore[arg-type]
            summary = IngestSummary()
            for start in range(0, len(batch), size):
                ingestor.ingest(batch[start : start + size], summary)
    return len(batch) / (time.perf_counter() - started)


def ingest_case(base: Path, name: str, url: str, count: int, repeat: int) -> list[dict[str, Any]]:
    """Rows per second of each way of ingesting, without and with triggers: the median of
    ``repeat`` runs, the two alternating so that a busy moment of the machine hits both."""
    root = project(base, f"ingest-{name}", url)
    batch = messages(count, seed=2)
    hows = ["sluicegate", "20-row"] + (["copy"] if name == "pg" else [])
    out = []
    for how in hows:
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeat):
            for triggers in (False, True):
                reset(url, root, triggers)
                rows = batch if how != "20-row" else batch[: count // 2]
                runs[triggers].append(ingest_rate(url, root, rows, how))
        rates = {triggers: statistics.median(values) for triggers, values in runs.items()}
        log(f"{name} {how}: {rates[False]:,.0f} rows/s without triggers, {rates[True]:,.0f} with")
        cost = 1 - rates[True] / rates[False]
        out.append({"database": name, "how": how, "without": rates[False], "with": rates[True], "cost": cost})
    return out


def render(aggregates: list[dict[str, Any]], ingests: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# airmax benchmark ({meta['when']})",
        "",
        f"{meta['rows']:,} raw rows at 100 a minute (a 3-hour window holds about 18,000 of them); "
        f"median of {meta['repeat']} runs.",
        "",
        "| database | index on measurement_time_utc | query ms | evaluation ms |",
        "|---|---|---:|---:|",
    ]
    for a in aggregates:
        ev = f"{a['evaluation'] * 1000:.1f}"
        index = "yes" if a["index"] else "no (airmax)"
        lines.append(f"| {a['database']} | {index} | {a['query'] * 1000:.1f} | {ev} |")
    lines += [
        "",
        f"Ingest of {meta['ingest']:,} messages into an empty raw (20-row transactions: half as many); "
        f"median of {meta['ingest_repeat']} runs.",
        "",
        "| database | how | rows/s without triggers | rows/s with triggers | cost |",
        "|---|---|---:|---:|---:|",
    ]
    for i in ingests:
        rates = f"{i['without']:,.0f} | {i['with']:,.0f}"
        lines.append(f"| {i['database']} | {i['how']} | {rates} | {i['cost'] * 100:.0f} % |")
    lines += ["", "command: " + shlex.join([".venv/bin/python", "bench/aggregate.py", *sys.argv[1:]])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ingest-repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,pg,mariadb")
    args = parser.parse_args(argv)
    wanted = [d for d in args.databases.split(",") if d]
    aggregates: list[dict[str, Any]] = []
    ingests: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sluicegate-airmax-bench-") as tmp,
        servers(Path(tmp), wanted) as urls,
    ):
        for name, url in urls.items():
            aggregates += aggregate_case(Path(tmp), name, url, args.rows, args.repeat)
        for name, url in urls.items():
            ingests += ingest_case(Path(tmp), name, url, args.ingest, args.ingest_repeat)
    meta = {
        "when": dt.datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "repeat": args.repeat,
        "ingest": args.ingest,
        "ingest_repeat": args.ingest_repeat,
    }
    report = render(aggregates, ingests, meta)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"aggregate-{meta['when'].replace(':', '')}.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
