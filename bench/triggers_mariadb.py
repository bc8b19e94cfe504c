"""What the capture triggers cost an ingest into MariaDB: a bulk load, 1,000-row batches, 20-row transactions.

    .venv/bin/python bench/triggers_mariadb.py                  # defaults below, 3 runs per case
    .venv/bin/python bench/triggers_mariadb.py --load-rows 1000000 --insert-rows 1000000 --repeat 5

The MariaDB counterpart of bench/triggers.py (issue 16: "on MariaDB once it is supported"),
with the same readings (300 locations x 3 sensors, hourly, in time order) into the
``measurements`` table of the tests (tests/support.py ``MARIADB_SCHEMA``: a ``DATETIME(6)``
time, primary key and two indexes), without and with the capture triggers ``sluicegate
install`` makes there. MariaDB has no statement triggers: each is a row trigger that appends
one inbox row per changed row, so the cost is per row however the rows arrive. Three ways:

* ``load``: one ``LOAD DATA INFILE`` of all rows (MariaDB's bulk load, its ``COPY``);
* ``insert1000``: ``executemany`` of a one-row ``INSERT`` in batches of 1,000 rows, one
  transaction per batch (MariaDB Connector/Python sends the batch with the bulk protocol);
* ``tx20``: the same with 20 rows per transaction (airmax's Lambda inserted 20 at a time).

The two variants alternate, ``--repeat`` times each, after a ``TRUNCATE``. Reported per case:
median rows/s and its ratio to the run without triggers, the CPU per row of the client and of
the server process (all of mariadbd's threads, from /proc), and the machine's other CPU. Every
run with triggers is checked: the inbox holds one row per row loaded, and exactly the rows'
(location, 15-minute bin) pairs. The server is the test fixture's ``MariaDbInstance`` with
durable commits (``innodb_flush_log_at_trx_commit = 1``, doublewrite on), as PostgreSQL's fsync.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from run import busy_cpu_seconds  # noqa: E402
from triggers import Row, backend_cpu, bins, own_cpu, publish, readings, summarize  # noqa: E402

from sluicegate import mariadb_conn, operations  # noqa: E402
from sluicegate.config import load_project  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UTC = dt.UTC
COLUMNS = "location_id, sensor_id, datetime, value, ingested_at"
INSERT = f"INSERT INTO measurements ({COLUMNS}) VALUES (?, ?, ?, ?, ?)"
DURABLE = {
    "innodb-flush-log-at-trx-commit": "1",
    "innodb-doublewrite": "1",
    "innodb-buffer-pool-size": "512M",
}


class Server:
    """A throwaway MariaDB (the tests' fixture code), its process id and its LOAD DATA folder."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        from plugins.mariadb_server import MARIADB_SETTINGS, MariaDbInstance, default_run_as, find_binaries

        binaries = find_binaries()
        self.instance = stack.enter_context(
            MariaDbInstance(binaries, default_run_as(), {**MARIADB_SETTINGS, **DURABLE})
        )
        self.instance.initialise()
        self.server = self.instance.start()
        self.version = binaries.version_text
        self.pid = int(self.instance.pid_path.read_text())
        self.files = self.instance.base_dir / "files"

    def stage(self, rows: Sequence[Row]) -> Path:
        """``rows`` as a tab-separated file the server may read (secure_file_priv)."""
        path = self.files / "rows.tsv"
        path.write_text("".join(f"{a}\t{b}\t{_naive(c)}\t{d}\t{_naive(e)}\n" for a, b, c, d, e in rows))
        self.instance._own(path)  # the fixture's helper: chown to the server's user
        return path


def _naive(at: dt.datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _params(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    return [
        (a, b, c.astimezone(UTC).replace(tzinfo=None), d, e.astimezone(UTC).replace(tzinfo=None))
        for a, b, c, d, e in rows
    ]


def load_file(conn: Any, server: Server, rows: Sequence[Row], staged: Path) -> None:
    conn.execute(f"LOAD DATA INFILE '{staged}' INTO TABLE measurements ({COLUMNS})").close()


def load_batches(conn: Any, rows: Sequence[tuple[Any, ...]], size: int) -> None:
    raw = conn.raw  # the mariadb connection under sluicegate's wrapper
    cur = raw.cursor()
    for at in range(0, len(rows), size):
        raw.begin()
        cur.executemany(INSERT, list(rows[at : at + size]))
        raw.commit()
    cur.close()


HOWS: dict[str, str] = {
    "load": "LOAD DATA INFILE of all rows, one statement",
    "insert1000": "executemany, 1,000 rows per transaction",
    "tx20": "executemany, 20 rows per transaction",
}


def set_triggers(url: str, root: Path, on: bool) -> None:
    """Install the task's capture triggers (``sluicegate install``), or drop them."""
    if on:
        operations.install(load_project(root, {}))
        return
    conn = mariadb_conn.connect(url)
    for name in [
        r[0] for r in conn.execute("SELECT trigger_name FROM information_schema.triggers").fetchall()
    ]:
        conn.execute(f"DROP TRIGGER IF EXISTS `{name}`").close()
    conn.close()


def one_run(url: str, server: Server, how: str, rows: Sequence[Row], triggers: bool) -> dict[str, float]:
    conn = mariadb_conn.connect(url)
    conn.execute("TRUNCATE measurements").close()
    conn.execute("DELETE FROM sluicegate_changes").close()
    staged = server.stage(rows) if how == "load" else None
    params = _params(rows) if how != "load" else []
    loader: Callable[[], None] = {
        "load": lambda: load_file(conn, server, rows, staged),  # type: ignore[arg-type]
        "insert1000": lambda: load_batches(conn, params, 1000),
        "tx20": lambda: load_batches(conn, params, 20),
    }[how]
    server0, client0, busy0 = backend_cpu(server.pid), own_cpu(), busy_cpu_seconds()
    started = time.perf_counter()
    loader()
    seconds = time.perf_counter() - started
    srv, client = backend_cpu(server.pid) - server0, own_cpu() - client0
    other = max(busy_cpu_seconds() - busy0 - srv - client, 0.0)
    loaded = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    recorded = conn.execute(
        "SELECT CAST(JSON_VALUE(`keys`, '$[0]') AS INTEGER), bin FROM sluicegate_changes"
    ).fetchall()
    conn.close()
    if loaded != len(rows):
        raise RuntimeError(f"{how}: loaded {loaded} rows, expected {len(rows)}")
    if not triggers and recorded:
        raise RuntimeError(f"{how}: {len(recorded)} inbox rows without triggers")
    if triggers and (len(recorded) != len(rows) or {(int(a), int(b)) for a, b in recorded} != bins(rows)):
        raise RuntimeError(f"{how}: the inbox's {len(recorded)} rows are not one per row, of the rows' bins")
    return {"seconds": seconds, "server": srv, "client": client, "other": other, "inbox": len(recorded)}


def case(url: str, server: Server, root: Path, how: str, count: int, repeat: int) -> dict[str, Any]:
    """Medians of ``repeat`` runs without and with triggers, alternating."""
    rows = readings(count)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(repeat):
        for triggers in (False, True):
            set_triggers(url, root, triggers)
            runs[triggers].append(one_run(url, server, how, rows, triggers))
    return summarize(how, count, runs)


@contextlib.contextmanager
def triggered_database() -> Iterator[tuple[Server, str, Path]]:
    """A throwaway MariaDB with the tests' measurement tables and a project whose task captures
    ``measurements`` by triggers (location-days, boundary "end"); stopped on exit."""
    from support import MARIADB_SCHEMA, write_project

    with contextlib.ExitStack() as stack:
        server = Server(stack)
        from plugins.mariadb_server import mariadb_connect

        with contextlib.closing(mariadb_connect(server.server.url())) as admin:
            admin.cursor().execute("CREATE DATABASE bench")
        url = server.server.url("bench")
        conn = mariadb_conn.connect(url)
        for statement in MARIADB_SCHEMA:
            conn.execute(statement).close()
        conn.close()
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluicegate-triggers-mariadb-")))
        root = write_project(
            base / "project", source=url, destination=str(base / "out"), boundary="end", zone="UTC"
        )
        set_triggers(url, root, True)  # creates the ledger tables and the inbox
        yield server, url, root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load-rows", type=int, default=1_000_000)
    parser.add_argument("--insert-rows", type=int, default=100_000)
    parser.add_argument("--tx20-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hows", default=",".join(HOWS), help=f"subset of: {', '.join(HOWS)}")
    args = parser.parse_args(argv)
    counts = {"load": args.load_rows, "insert1000": args.insert_rows, "tx20": args.tx20_rows}
    with triggered_database() as (server, url, root):
        results = [
            case(url, server, root, how, counts[how], args.repeat) for how in args.hows.split(",") if how
        ]
        version = server.version
    publish(f"Capture triggers on MariaDB {version}", args.repeat, results, HOWS, "triggers_mariadb.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
