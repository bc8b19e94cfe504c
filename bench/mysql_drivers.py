"""Which MySQL/MariaDB driver should sluicegate read with? Measure, do not guess.

Starts a throwaway MariaDB the way the test fixture does (tests/plugins/mariadb_server.py),
loads N OpenAQ-like rows, then reads all of them with each driver in a fresh process, round
robin, ``--repeat`` times, and reports the median rows/s and peak RSS per case. A second pass
reads one row of awkward types with each driver and reports what Python (or Arrow) got.

    make venv && .venv/bin/pip install pymysql mysqlclient mysql-connector-python connectorx
    .venv/bin/python bench/mysql_drivers.py                       # 1M rows, 3 runs per case
    .venv/bin/python bench/mysql_drivers.py --rows 100000 --repeat 1 --cases pymysql-ss

A case whose driver does not import is reported as not available. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
if TYPE_CHECKING:
    from plugins.mariadb_server import MariaDbServer

DB = "bench"
BATCH = 10_000
SELECT = "SELECT location_id, sensor_id, datetime, value, ingested_at, parameter FROM measurements"
# Added to the test server's settings: a buffer pool that holds the whole table (we measure
# drivers, not disks) and a redo log that takes the load without checkpoint stalls.
BENCH_SETTINGS = {"innodb-buffer-pool-size": "1G", "innodb-log-file-size": "512M"}

CASES: dict[str, tuple[str, str]] = {  # case -> (distribution, how it reads)
    "pymysql": ("pymysql", "Cursor: whole result buffered in the client, then fetchmany"),
    "pymysql-ss": ("pymysql", "SSCursor: streams, fetchmany"),
    "mysqlclient": ("mysqlclient", "MySQLdb Cursor: mysql_store_result, then fetchmany"),
    "mysqlclient-ss": ("mysqlclient", "MySQLdb SSCursor: mysql_use_result, fetchmany"),
    "mariadb": ("mariadb", "cursor() (buffered by default), fetchmany"),
    "mariadb-unbuffered": ("mariadb", "cursor(buffered=False): streams, fetchmany"),
    "mariadb-to-arrow": ("mariadb", "cursor(buffered=False), each fetchmany batch built into an Arrow batch"),
    "mysql-connector": ("mysql-connector-python", "C extension, cursor() (unbuffered), fetchmany"),
    "mysql-connector-pure": ("mysql-connector-python", "use_pure=True, cursor() (unbuffered), fetchmany"),
    "connectorx-arrow": ("connectorx", "read_sql(return_type='arrow'): one Arrow table"),
    "connectorx-stream": ("connectorx", f"read_sql(return_type='arrow_stream', batch_size={BATCH})"),
}


# --------------------------------------------------------------------------- the readers (child)


def _connect_args(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "user": "exporter", "password": "s3cr3t-pw", "database": DB}


def _dbapi_connection(case: str, port: int) -> tuple[Any, Any]:
    """(connection, cursor) of a DB-API driver, the cursor chosen by ``case``."""
    args = _connect_args(port)
    if case.startswith("pymysql"):
        import pymysql
        import pymysql.cursors

        conn = pymysql.connect(**args)
        return conn, conn.cursor(pymysql.cursors.SSCursor if case.endswith("-ss") else pymysql.cursors.Cursor)
    if case.startswith("mysqlclient"):
        import MySQLdb
        import MySQLdb.cursors

        conn = MySQLdb.connect(**args)
        return conn, conn.cursor(MySQLdb.cursors.SSCursor if case.endswith("-ss") else MySQLdb.cursors.Cursor)
    if case.startswith("mariadb"):
        import mariadb

        conn = mariadb.connect(**args)
        return conn, conn.cursor(buffered=case == "mariadb")
    if case.startswith("mysql-connector"):
        import mysql.connector

        use_pure = case.endswith("-pure")
        if not use_pure and not mysql.connector.HAVE_CEXT:
            import _mysql_connector  # noqa: F401 (raises the ImportError that says why)
        conn = mysql.connector.connect(**args, use_pure=use_pure)
        return conn, conn.cursor()
    raise ValueError(case)


def _dbapi_batches(case: str, port: int, query: str) -> Iterator[list[Any]]:
    conn, cur = _dbapi_connection(case, port)
    try:
        cur.execute(query)
        while batch := cur.fetchmany(BATCH):
            yield batch
        cur.close()
    finally:
        conn.close()


def _read_dbapi_to_arrow(case: str, port: int) -> dict[str, Any]:
    """What a Parquet writer fed by a DB-API driver pays: tuples -> columns -> Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema(
        [("location_id", pa.int32()), ("sensor_id", pa.int32()), ("datetime", pa.timestamp("us")),
         ("value", pa.float64()), ("ingested_at", pa.timestamp("us")), ("parameter", pa.string())]
    )  # fmt: skip
    rows = checksum = 0
    for batch in _dbapi_batches("mariadb-unbuffered", port, SELECT):
        columns = list(zip(*batch, strict=True))
        record_batch = pa.record_batch(
            [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
            schema=schema,
        )
        rows += record_batch.num_rows
        checksum += pc.sum(record_batch.column(1)).as_py()
    return {"rows": rows, "checksum": checksum, "first": [str(field.type) for field in schema]}


def _read_dbapi(case: str, port: int) -> dict[str, Any]:
    rows = checksum = 0
    first: Any = None
    for batch in _dbapi_batches(case, port, SELECT):
        first = first or batch[0]
        rows += len(batch)
        checksum += sum(row[1] for row in batch)  # touch every row, as a writer would
    return {"rows": rows, "checksum": checksum, "first": [type(v).__name__ for v in first]}


def _cx_url(port: int) -> str:
    return f"mysql://exporter:s3cr3t-pw@127.0.0.1:{port}/{DB}"


def _read_connectorx(case: str, port: int) -> dict[str, Any]:
    import connectorx as cx
    import pyarrow.compute as pc

    if case == "connectorx-arrow":
        table = cx.read_sql(_cx_url(port), SELECT, return_type="arrow")
        batches: Any = table.to_batches()
        schema = table.schema
    else:
        reader = cx.read_sql(_cx_url(port), SELECT, return_type="arrow_stream", batch_size=BATCH)
        batches, schema = reader, reader.schema
    rows = checksum = 0
    for batch in batches:
        rows += batch.num_rows
        checksum += pc.sum(batch.column(1)).as_py() or 0
    return {"rows": rows, "checksum": checksum, "first": [str(field.type) for field in schema]}


def child_read(case: str, port: int) -> dict[str, Any]:
    """Read every row once; seconds cover connect, query and the last row, not the import."""
    reader = _read_dbapi
    if case.startswith("connectorx"):
        reader = _read_connectorx
    elif case.endswith("-to-arrow"):
        reader = _read_dbapi_to_arrow
    _import_driver(case)
    started = time.perf_counter()
    result = reader(case, port)
    result["seconds"] = time.perf_counter() - started
    return result


MODULES = {  # distribution -> module
    "pymysql": "pymysql",
    "mysqlclient": "MySQLdb",
    "mariadb": "mariadb",
    "mysql-connector-python": "mysql.connector",
    "connectorx": "connectorx",
}


def _import_driver(case: str) -> None:
    __import__(MODULES[CASES[case][0]])


TYPES_SELECT = "SELECT dt6, ts6, dt0, d, dec20, ubig, dbl, txt, js, blb, nul, tm6 FROM types"


def child_types(case: str, port: int) -> dict[str, Any]:
    """What the driver returns for one row of awkward types (repr for DB-API, Arrow types else)."""
    _import_driver(case)
    names = TYPES_SELECT.split("SELECT ")[1].split(" FROM")[0].split(", ")
    if case.startswith("connectorx"):
        import connectorx as cx

        got = {}
        for name in names:  # one column at a time: a type it cannot convert fails the whole query
            try:
                column = cx.read_sql(_cx_url(port), f"SELECT {name} FROM types", return_type="arrow")[0]
            except BaseException as exc:  # a Rust panic is a BaseException; reported, this is a probe
                got[name] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            else:
                got[name] = f"{column.type}: {column[0].as_py()!r}"
        return got
    batch = next(_dbapi_batches(case, port, TYPES_SELECT))
    return {name: repr(value) for name, value in zip(names, batch[0], strict=True)}


# --------------------------------------------------------------------------- setup and runs (parent)


def load(server: MariaDbServer, rows: int) -> float:
    """Create and fill ``measurements`` (``rows`` rows) and ``types``; return the load seconds."""
    from plugins.mariadb_server import mariadb_connect  # the recommended driver, from the test extra

    conn = mariadb_connect(server.url())
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE {DB}")
    cur.execute(f"USE {DB}")
    cur.execute(
        "CREATE TABLE measurements (location_id INT NOT NULL, sensor_id INT NOT NULL,"
        " datetime DATETIME(6) NOT NULL, value DOUBLE NOT NULL, ingested_at DATETIME(6) NOT NULL,"
        " parameter VARCHAR(64) NOT NULL, PRIMARY KEY (sensor_id, datetime)) ENGINE=InnoDB"
    )
    started = time.perf_counter()
    # The SEQUENCE engine's seq_1_to_N generates the rows inside the server. One sensor per
    # (location, parameter slot); times one second (and a few µs) apart, so the key is unique.
    cur.execute(
        "INSERT INTO measurements SELECT"
        " 1 + seq % 300, (1 + seq % 300) * 10 + seq % 3,"
        " TIMESTAMPADD(MICROSECOND, seq * 1000003, '2024-01-01 00:00:00'),"
        " (seq * 7919 % 100000) / 100.0 + 0.25,"
        " TIMESTAMPADD(MICROSECOND, seq * 1000003 + 3600000000 + seq % 999983, '2024-01-01 00:00:00'),"
        " ELT(1 + seq % 4, 'pm25 µg/m³', 'pm10 µg/m³', 'o3 ppm', 'temperature °C')"
        f" FROM seq_0_to_{rows - 1}"
    )
    cur.execute("ANALYZE TABLE measurements")
    cur.fetchall()
    seconds = time.perf_counter() - started
    cur.execute(
        "CREATE TABLE types (dt6 DATETIME(6), ts6 TIMESTAMP(6) NULL, dt0 DATETIME, d DATE,"
        " dec20 DECIMAL(20,6), ubig BIGINT UNSIGNED, dbl DOUBLE, txt VARCHAR(20), js JSON,"
        " blb BLOB, nul INT, tm6 TIME(6))"
    )
    cur.execute(
        "INSERT INTO types VALUES ('2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.654321',"
        " '2024-02-29 23:59:59', '2024-02-29', 12345678901234.000001, 18446744073709551615,"
        " 0.1, 'µg/m³ 🌫', '{\"a\": 1}', x'00ff', NULL, '-838:59:59.000001')"
    )
    conn.close()
    return seconds


def sum_sensor_ids(rows: int) -> int:
    """sum(sensor_id) over the loaded rows, computed here: every reader must return it."""
    return sum((1 + seq % 300) * 10 + seq % 3 for seq in range(rows))


def _run_child(mode: str, case: str, port: int) -> tuple[dict[str, Any], int]:
    """Run one case in a fresh interpreter; (its JSON result, its peak RSS in KiB)."""
    cmd = [sys.executable, __file__, mode, case, str(port)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate()  # the child reports its own peak RSS (ru_maxrss at exit)
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        return {"error": last}, 0
    result = json.loads(out)
    return result, int(result.pop("maxrss_kib", 0))


def _available(case: str) -> str | None:
    dist = CASES[case][0]
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def measure(cases: list[str], port: int, repeat: int, rows: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {c: {"runs": [], "error": None} for c in cases}
    for round_no in range(1, repeat + 1):
        for case in cases:
            result, rss = _run_child("--child-read", case, port)
            if "error" in result:
                results[case]["error"] = result["error"]
                continue
            if result["rows"] != rows:
                results[case]["error"] = f"read {result['rows']} rows, expected {rows}"
            expected_sum = sum_sensor_ids(rows)
            if result["checksum"] != expected_sum:
                results[case]["error"] = f"sum(sensor_id) {result['checksum']}, expected {expected_sum}"
            results[case]["runs"].append({**result, "rss_kib": rss})
            print(f"round {round_no} {case:20} {rows / result['seconds']:>12,.0f} rows/s "
                  f"{rss / 1024:8.0f} MiB", flush=True)  # fmt: skip
    return results


def render(results: dict[str, dict[str, Any]], types: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"MariaDB {meta['server']}, {meta['rows']:,} rows, median of {meta['repeat']} "
        f"(load {meta['load_s']:.1f} s), Python {platform.python_version()}, {os.cpu_count()} cores.",
        "",
        "| case | version | how it reads | rows/s | peak RSS | Python types of a row |",
        "|---|---|---|---:|---:|---|",
    ]
    for case, res in results.items():
        ver = _available(case) or "not installed"
        runs = res["runs"]
        if res["error"] or not runs:
            lines.append(f"| `{case}` | {ver} | {CASES[case][1]} | - | - | failed: {res['error']} |")
            continue
        rate = statistics.median(meta["rows"] / r["seconds"] for r in runs)
        rss = statistics.median(r["rss_kib"] for r in runs) / 1024
        lines.append(f"| `{case}` | {ver} | {CASES[case][1]} | {rate:,.0f} | {rss:,.0f} MiB | "
                     f"{', '.join(runs[0]['first'])} |")  # fmt: skip
    lines += ["", "Types (`SELECT " + TYPES_SELECT.split("SELECT ")[1] + "`):", ""]
    for case, got in types.items():
        lines.append(f"* `{case}`: " + "; ".join(f"{k} = `{v}`" for k, v in got.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    # Imported here, not at the top: the readers run in children that should not load pytest.
    from plugins.mariadb_server import MARIADB_SETTINGS, MariaDbInstance, default_run_as, find_binaries

    binaries = find_binaries()
    settings = {**MARIADB_SETTINGS, **BENCH_SETTINGS}
    with MariaDbInstance(binaries, default_run_as(), settings) as instance:
        started = time.perf_counter()
        instance.initialise()
        server = instance.start()
        print(f"MariaDB {binaries.version_text} up in {time.perf_counter() - started:.2f} s "
              f"on port {server.port}, pid {server.pid}", flush=True)  # fmt: skip
        load_s = load(server, args.rows)
        print(f"loaded {args.rows:,} rows in {load_s:.1f} s", flush=True)
        types = {case: _run_child("--child-types", case, server.port)[0] for case in cases}
        results = measure(cases, server.port, args.repeat, args.rows)
    meta = {"server": binaries.version_text, "rows": args.rows, "repeat": args.repeat, "load_s": load_s}
    print()
    print(render(results, types, meta))
    print()
    print("command: " + shlex.join([".venv/bin/python", "bench/mysql_drivers.py", *sys.argv[1:]]))
    return 0


def _child(mode: str, case: str, port: str) -> int:
    import resource

    run: Callable[[str, int], dict[str, Any]] = child_read if mode == "--child-read" else child_types
    result = run(case, int(port))
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in {"--child-read", "--child-types"}:
        sys.exit(_child(*sys.argv[1:]))
    sys.exit(main())
