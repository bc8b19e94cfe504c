# ruff: noqa: RUF001, E501
# (the report text uses typographic symbols on purpose; SQL and report lines read better whole)
"""sluicegate at scale: several worker processes on one PostgreSQL ledger, and a 1M-row ledger.

Part 1 (workers): loads ~100k location-days into a throwaway PostgreSQL, then for 1, 2, 4 and 8
worker processes (`sluicegate -C proj run openaq`, each its own process, all started at once)
exports all of them from a fresh ledger and reports partitions/s, claim and commit latency
percentiles (from the server's statement log, and pg_stat_statements), CPU (client, server,
rest of the machine) and the ledger's size. An audit trigger on the ledger table records every
claim and commit, and the run is checked: every partition claimed once and committed once at
its version, by the token that claimed it, no claim overlapping another, and every file on disk
with the checksum the ledger recorded.

Part 2 (claims on a big ledger): inserts 10k pending partitions, then 1M exported ones, straight
into `sluicegate.partitions`, and shows `EXPLAIN (ANALYZE, BUFFERS)` of the claim statement and
the latency of claiming (and committing) all 10k in batches of 500, at 10k and at 1.01M rows,
plus the case where other workers hold claims on the oldest pending rows.

    .venv/bin/python bench/scale.py                       # ~10 minutes on the 2-core bench machine
    .venv/bin/python bench/scale.py --workers 1,2 --rows 1000000 --locations 300   # smoke run

Results go to bench/results/scale-<timestamp>.md and .json (gitignored). See bench/README.md,
"Scale: workers on one ledger".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

from sluicegate.sql import queries

SCHEMA = "sluicegate"
Q = queries("postgresql", "partitions", f'"{SCHEMA}".', f'"{SCHEMA}"')
# Server-side measurement: every statement's duration in the log (parameters left out), and
# per-statement totals, buffers and WAL in pg_stat_statements.
SERVER_SETTINGS = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "all",
    "log_min_duration_statement": "0",
    "log_parameter_max_length": "0",
    "log_line_prefix": "'%m [%p] '",
    "track_wal_io_timing": "on",
}
AUDIT_SQL = """
CREATE SCHEMA IF NOT EXISTS scale_audit;
CREATE TABLE IF NOT EXISTS scale_audit.events (
    id bigint NOT NULL, old_token uuid, new_token uuid, old_exported bigint, new_exported bigint,
    version bigint, at timestamptz NOT NULL DEFAULT clock_timestamp(), pid int DEFAULT pg_backend_pid()
);
TRUNCATE scale_audit.events;
CREATE OR REPLACE FUNCTION scale_audit.log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scale_audit.events (id, old_token, new_token, old_exported, new_exported, version)
    SELECT n.id, o.claim_token, n.claim_token, o.exported_version, n.exported_version, n.version
    FROM new_rows AS n JOIN old_rows AS o USING (id)
    WHERE o.claim_token IS DISTINCT FROM n.claim_token OR o.exported_version <> n.exported_version;
    RETURN NULL;
END $$;
CREATE TRIGGER scale_audit AFTER UPDATE ON sluicegate.partitions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scale_audit.log();
"""
STATEMENTS = {  # how each ledger statement starts in the server log
    "claim": "WITH candidate AS (",
    "commit": "WITH done AS (",
    "renew": 'UPDATE "sluicegate".partitions SET lease_until',
}
_LOG_LINE = re.compile(
    r"^\S+ \S+ \S+ \[(\d+)\] LOG:  duration: ([\d.]+) ms  (parse|bind|execute|statement)[^:]*: (.*)$"
)


# =========================================================================== measuring


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5), 2),
        "p90": round(pct(values, 0.9), 2),
        "p99": round(pct(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def statement_latencies(log_text: str) -> dict[str, dict[str, list[float]]]:
    """Per ledger statement, the server time of each execution (parse + bind + execute) and of
    the transaction around it (plus the COMMIT that follows in the same backend: the WAL flush)."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"statement": [], "transaction": []})
    current: dict[int, tuple[str, float, str]] = {}  # pid -> (statement kind, ms so far, last phase)
    for line in log_text.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        pid, ms, phase, text = int(match.group(1)), float(match.group(2)), match.group(3), match.group(4)
        kind = next((k for k, head in STATEMENTS.items() if text.startswith(head)), None)
        previous = current.get(pid)
        # A new execution starts with parse, or with bind or execute after an execute (a prepared
        # statement is parsed once and then only bound and executed).
        same = (
            previous is not None
            and previous[0] == kind
            and phase != "parse"
            and not (previous[2] == "execute" and phase in ("bind", "execute"))
        )
        if kind is not None and same and previous is not None:
            current[pid] = (kind, previous[1] + ms, phase)
            continue
        if previous is not None:
            del current[pid]
            out[previous[0]]["statement"].append(previous[1])
            if kind is None and phase == "statement" and text.strip().upper() == "COMMIT":
                out[previous[0]]["transaction"].append(previous[1] + ms)
        if kind is not None:
            current[pid] = (kind, ms, phase)
    for kind, ms, _phase in current.values():
        out[kind]["statement"].append(ms)
    return out


def stat_statements(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The top statements by total server time (pg_stat_statements)."""
    rows = conn.execute(
        # The batch queries inline their partitions' values (COPY takes no parameters), so each is
        # its own entry: statements are grouped by their start.
        """SELECT sum(calls), round(sum(total_exec_time)::numeric, 1)::float8,
                  round((sum(total_exec_time) / sum(calls))::numeric, 3)::float8,
                  round(max(max_exec_time)::numeric, 2)::float8, sum(rows), sum(shared_blks_hit),
                  sum(shared_blks_read), sum(wal_bytes)::float8, regexp_replace(left(query, 70), '\\s+', ' ', 'g') AS q
           FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           GROUP BY q ORDER BY sum(total_exec_time) DESC LIMIT 12"""
    ).fetchall()
    keys = ("calls", "total_ms", "mean_ms", "max_ms", "rows", "blks_hit", "blks_read", "wal_bytes", "query")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def wal_stats(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """WAL written and flushed since the last reset (pg_stat_wal, with track_wal_io_timing).

    An autocommit statement's commit (its WAL flush) happens after its execute message, so the
    statement log does not time it; the flushes are counted and timed here instead.
    """
    row = conn.execute(
        "SELECT wal_records, wal_bytes::float8, wal_write, wal_sync, wal_write_time, wal_sync_time FROM pg_stat_wal"
    ).fetchone()
    assert row is not None
    records, nbytes, writes, syncs, write_ms, sync_ms = row
    return {
        "records": records,
        "mib": round(nbytes / 1024 / 1024, 1),
        "writes": writes,
        "syncs": syncs,
        "sync_ms_total": round(sync_ms, 1),
        "sync_ms_mean": round(sync_ms / syncs, 2) if syncs else None,
        "write_ms_total": round(write_ms, 1),
    }


def ledger_size(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        """SELECT pg_total_relation_size('sluicegate.partitions'), pg_relation_size('sluicegate.partitions'),
                  pg_indexes_size('sluicegate.partitions'), n_live_tup, n_dead_tup
           FROM pg_stat_user_tables WHERE schemaname = 'sluicegate' AND relname = 'partitions'"""
    ).fetchone()
    assert row is not None
    indexes = dict(
        conn.execute(
            """SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes
               WHERE schemaname = 'sluicegate' AND relname = 'partitions' ORDER BY 1"""
        ).fetchall()
    )
    return {
        "total": row[0],
        "heap": row[1],
        "indexes": row[2],
        "live": row[3],
        "dead": row[4],
        "by_index": indexes,
    }


# =========================================================================== part 1: workers


def check_run(conn: psycopg.Connection[Any], dest: Path, total: int) -> dict[str, Any]:
    """Exactly once per version, no overlapping claims, files as recorded. Raises on a violation."""
    problems: list[str] = []
    ledger = conn.execute(
        """SELECT count(*), count(*) FILTER (WHERE exported_version = version AND version = 1),
                  count(*) FILTER (WHERE claim_token IS NOT NULL OR failed), count(DISTINCT path)
           FROM sluicegate.partitions"""
    ).fetchone()
    assert ledger is not None
    if not (ledger[0] == ledger[1] == ledger[3] == total and ledger[2] == 0):
        problems.append(
            f"ledger: {ledger[0]} rows, {ledger[1]} exported at version 1, {ledger[2]} held or failed, {ledger[3]} paths; expected {total}"
        )
    events = conn.execute(
        """SELECT
             count(*) FILTER (WHERE old_token IS NULL AND new_token IS NOT NULL),
             count(*) FILTER (WHERE old_token IS NOT NULL AND new_token IS NOT NULL),
             count(*) FILTER (WHERE new_exported > old_exported),
             count(*) FILTER (WHERE new_token IS NULL AND new_exported = old_exported)
           FROM scale_audit.events"""
    ).fetchone()
    assert events is not None
    claims, takeovers, commits, releases = events
    per_partition = conn.execute(
        """WITH c AS (SELECT id, new_token AS token, at FROM scale_audit.events WHERE old_token IS NULL AND new_token IS NOT NULL),
                d AS (SELECT id, old_token AS token, at, new_exported, version FROM scale_audit.events WHERE new_exported > old_exported)
           SELECT
             (SELECT count(*) FROM (SELECT id FROM c GROUP BY id HAVING count(*) <> 1) x),
             (SELECT count(*) FROM (SELECT id FROM d GROUP BY id HAVING count(*) <> 1) x),
             (SELECT count(*) FROM d LEFT JOIN c USING (id, token) WHERE c.id IS NULL OR c.at > d.at),
             (SELECT count(*) FROM d WHERE new_exported <> version)"""
    ).fetchone()
    assert per_partition is not None
    not_once, not_committed_once, foreign_commits, wrong_version = per_partition
    # Overlap: a claim of a partition while an earlier claim by another token was still open
    # (not yet committed or released).
    overlaps = conn.execute(
        """WITH c AS (SELECT id, new_token AS token, at FROM scale_audit.events WHERE new_token IS NOT NULL),
                e AS (SELECT id, old_token AS token, at FROM scale_audit.events WHERE old_token IS NOT NULL
                      AND new_token IS DISTINCT FROM old_token),
                spans AS (SELECT c.id, c.token, c.at AS claimed, min(e.at) AS ended
                          FROM c LEFT JOIN e ON e.id = c.id AND e.token = c.token AND e.at >= c.at
                          GROUP BY c.id, c.token, c.at)
           SELECT count(*) FROM spans a JOIN spans b ON a.id = b.id AND a.token <> b.token
             AND a.claimed < b.claimed AND (a.ended IS NULL OR a.ended > b.claimed)"""
    ).fetchone()
    assert overlaps is not None
    if claims != total or takeovers or commits != total or releases:
        problems.append(
            f"audit: {claims} claims, {takeovers} takeovers, {commits} commits, {releases} releases; expected {total} claims and commits"
        )
    if not_once or not_committed_once or foreign_commits or wrong_version or overlaps[0]:
        problems.append(
            f"audit: {not_once} partitions not claimed once, {not_committed_once} not committed once, "
            f"{foreign_commits} committed by a token that had not claimed them, {wrong_version} at another "
            f"version, {overlaps[0]} overlapping claims"
        )
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    mismatched = 0
    rows = conn.execute("SELECT path, checksum, bytes FROM sluicegate.partitions").fetchall()
    for path, checksum, nbytes in rows:
        data = (dest / path).read_bytes() if path in on_disk else b""
        if len(data) != nbytes or hashlib.sha256(data).hexdigest() != checksum:
            mismatched += 1
    if len(on_disk) != total or mismatched:
        problems.append(
            f"files: {len(on_disk)} on disk, {mismatched} missing or not matching the ledger's checksum"
        )
    if problems:
        raise RuntimeError("; ".join(problems))
    return {
        "claims": claims,
        "commits": commits,
        "takeovers": takeovers,
        "releases": releases,
        "overlaps": overlaps[0],
        "files": len(on_disk),
        "checksums_verified": len(rows),
    }


def workers_run(
    pg: bench.PgServer, ds: bench.Dataset, proj: Path, base: Path, workers: int
) -> dict[str, Any]:
    """Export everything with ``workers`` processes on a fresh ledger; measure and check."""
    marked, mark_s = bench.reset_ledger(proj, ds, "openaq")
    dest = base / "out" / f"w{workers}"
    dest.mkdir(parents=True)
    with psycopg.connect(ds.url, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)
        fresh = ledger_size(conn)
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("SELECT pg_stat_reset_shared('wal')")
    log_offset = pg.logfile.stat().st_size
    env = bench.child_env(SLUICEGATE_DESTINATION__URL=str(dest))
    time.sleep(0.5)
    server_before, busy_before = pg.cpu_seconds(), bench.busy_cpu_seconds()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [bench.SLUICEGATE, "-C", str(proj), "run", "openaq", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=3600) for p in procs]
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)
    server_cpu = pg.cpu_seconds() - server_before
    client_cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    other_cpu = max(0.0, bench.busy_cpu_seconds() - busy_before - server_cpu - client_cpu)
    summaries = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"a worker exited {proc.returncode}: {err.strip()[-1500:]}")
        summaries.append(json.loads(out)[0])
    exported = [s["exported"] for s in summaries]
    if sum(exported) != marked or any(s["failed"] for s in summaries):
        raise RuntimeError(
            f"workers exported {exported} (failed {[s['failed'] for s in summaries]}) of {marked}"
        )
    with pg.logfile.open("rb") as f:
        f.seek(log_offset)
        log_text = f.read().decode(errors="replace")
    latencies = statement_latencies(log_text)
    with psycopg.connect(ds.url, autocommit=True) as conn:
        top = stat_statements(conn)
        wal = wal_stats(conn)
        after = ledger_size(conn)
        checks = check_run(conn, dest, marked)
    bench.set_aside(bench.Context(base=base, pg=pg, ds=ds, proj=proj), dest)
    result = {
        "workers": workers,
        "partitions": marked,
        "seconds": round(seconds, 2),
        "partitions_per_s": round(marked / seconds, 1),
        "per_worker": exported,
        "rows": sum(s["rows"] for s in summaries),
        "client_cpu_s": round(client_cpu, 1),
        "server_cpu_s": round(server_cpu, 1),
        "other_cpu_s": round(other_cpu, 1),
        "cpu_busy": round((client_cpu + server_cpu) / (seconds * (os.cpu_count() or 1)), 2),
        "claim": {k: spread(v) for k, v in latencies["claim"].items()},
        "commit": {k: spread(v) for k, v in latencies["commit"].items()},
        "wal": wal,
        "ledger_fresh": fresh,
        "ledger_after": after,
        "mark_seconds": round(mark_s, 1),
        "checks": checks,
        "top_statements": top,
    }
    bench.log(
        f"{workers} worker(s): {marked:,} partitions in {seconds:.1f}s = {marked / seconds:,.0f}/s; "
        f"claim p50 {result['claim']['transaction'].get('p50')} ms, commit_held p50 {result['commit']['statement'].get('p50')} ms; checks ok"
    )
    return result


# =========================================================================== part 2: claims on a big ledger


INSERT_PENDING = """
INSERT INTO sluicegate.partitions (task, pkey, keys, zone, win_start, win_end, changed_at)
SELECT 'openaq', '["' || loc || '", "' || (date '2024-01-01' + n) || '"]',
       jsonb_build_object('location_id', loc, 'day', (date '2024-01-01' + n)::text), 'UTC',
       (date '2024-01-01' + n)::timestamptz, (date '2024-01-01' + n + 1)::timestamptz,
       now() - interval '1 hour' + n * interval '1 second'
FROM generate_series(1, %(locations)s) AS loc, generate_series(0, %(days)s - 1) AS n
"""
INSERT_EXPORTED = """
INSERT INTO sluicegate.partitions (task, pkey, keys, zone, win_start, win_end, version, exported_version,
                                   changed_at, path, rows, bytes, checksum, exported_at)
SELECT 'openaq', '["' || loc || '", "' || (date '2021-01-01' + n) || '"]',
       jsonb_build_object('location_id', loc, 'day', (date '2021-01-01' + n)::text), 'UTC',
       (date '2021-01-01' + n)::timestamptz, (date '2021-01-01' + n + 1)::timestamptz, 1, 1,
       now() - interval '30 days',
       'records/csv.gz/locationid=' || loc || '/location-' || loc || '-' || to_char(date '2021-01-01' + n, 'YYYYMMDD') || '.csv.gz',
       72, 1200, md5(loc || '/' || n) || md5(n || '/' || loc), now() - interval '29 days'
FROM generate_series(100001, 100000 + %(locations)s) AS loc, generate_series(0, %(days)s - 1) AS n
"""


def explain_claim(conn: psycopg.Connection[Any], limit: int) -> str:
    params = {"task": "openaq", "settle": 0.0, "limit": limit, "lease": 600.0, "token": uuid.uuid4()}
    with conn.transaction(force_rollback=True):
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + Q["claim"], params).fetchall()
    return "\n".join(r[0] for r in rows)


def explain_commit(conn: psycopg.Connection[Any], limit: int) -> str:
    """Claim one batch for real, EXPLAIN its commit_held after hold (rolled back), then commit it."""
    token = uuid.uuid4()
    params = {"task": "openaq", "settle": 0.0, "limit": limit, "lease": 600.0, "token": token}
    with conn.transaction():
        ids = [r[0] for r in conn.execute(Q["claim"], params).fetchall()]
    commit = _commit_params(ids, token)
    with conn.transaction(force_rollback=True):
        conn.execute(Q["hold"], commit).fetchall()
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + Q["commit_held"], commit).fetchall()
    with conn.transaction():
        conn.execute(Q["hold"], commit).fetchall()
        conn.execute(Q["commit_held"], commit)
    return "\n".join(r[0] for r in rows)


def _commit_params(ids: list[int], token: uuid.UUID) -> dict[str, Any]:
    """The parameters of hold and commit_held for a batch claimed under ``token``."""
    return {
        "ids": ids, "tokens": [token] * len(ids), "paths": [f"p/{i}.csv.gz" for i in ids],
        "rows": [72] * len(ids), "bytes": [1200] * len(ids), "checksums": ["0" * 64] * len(ids),
        "etags": [None] * len(ids),
    }  # fmt: skip


def drain(conn: psycopg.Connection[Any], limit: int) -> dict[str, Any]:
    """Claim and commit every pending partition in batches, as one worker would; time each."""
    claims, commits = [], []
    while True:
        token = uuid.uuid4()
        params = {"task": "openaq", "settle": 0.0, "limit": limit, "lease": 600.0, "token": token}
        started = time.perf_counter()
        with conn.transaction():
            rows = conn.execute(Q["claim"], params).fetchall()
        claims.append((time.perf_counter() - started) * 1000)
        if not rows:
            break
        ids = [r[0] for r in rows]
        started = time.perf_counter()
        with conn.transaction():  # as PartitionStore.commit does: lock the held rows, then record
            commit = _commit_params(ids, token)
            conn.execute(Q["hold"], commit).fetchall()
            done = conn.execute(Q["commit_held"], commit).fetchall()
        commits.append((time.perf_counter() - started) * 1000)
        if len(done) != len(ids):
            raise RuntimeError(f"committed {len(done)} of {len(ids)} claimed partitions")
    return {"batches": len(commits), "claim_ms": spread(claims[:-1]), "commit_ms": spread(commits)}


def claim_test(pg: bench.PgServer, pending: int, exported: int, limit: int) -> dict[str, Any]:
    """EXPLAIN and time the claim at ``pending`` ledger rows, then with ``exported`` more."""
    from sluicegate.ledger import Ledger

    url = pg.url("claim1m")
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS claim1m")
        conn.execute("CREATE DATABASE claim1m")
    with Ledger(url, schema=SCHEMA) as ledger:
        ledger.ensure_schema()
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET application_name = 'scale-claim'")

        def fill_pending() -> None:
            conn.execute("DELETE FROM sluicegate.partitions WHERE win_start >= '2024-01-01'")
            conn.execute(INSERT_PENDING, {"locations": pending // 100, "days": 100})
            conn.execute("VACUUM ANALYZE sluicegate.partitions")

        def stage(name: str) -> None:
            count = conn.execute("SELECT count(*) FROM sluicegate.partitions").fetchone()
            size = ledger_size(conn)
            plan = explain_claim(conn, limit)
            commit_plan = explain_commit(conn, limit)
            conn.execute("VACUUM sluicegate.partitions")  # the rolled-back row versions
            timing = drain(conn, limit)
            out[name] = {
                "ledger_rows": count[0] if count else 0,
                "size": size,
                "explain": plan,
                "explain_commit": commit_plan,
                **timing,
            }
            bench.log(
                f"claim at {out[name]['ledger_rows']:,} ledger rows: p50 {timing['claim_ms'].get('p50')} ms over {timing['batches']} batches"
            )

        fill_pending()
        stage("pending_only")
        started = time.perf_counter()
        conn.execute(INSERT_EXPORTED, {"locations": exported // 1000, "days": 1000})
        out["insert_exported_s"] = round(time.perf_counter() - started, 1)
        fill_pending()
        stage("with_exported")
        # Other workers hold claims (live leases) on the oldest pending rows: a claim must step over them.
        fill_pending()
        held = 8 * limit
        conn.execute(
            """UPDATE sluicegate.partitions SET claim_token = gen_random_uuid(), claimed_version = version,
                      lease_until = now() + interval '10 minutes'
               WHERE id IN (SELECT id FROM sluicegate.partitions WHERE version > exported_version
                            ORDER BY changed_at, win_start, id LIMIT %(held)s)""",
            {"held": held},
        )
        conn.execute("VACUUM ANALYZE sluicegate.partitions")
        out["with_held_claims"] = {"held": held, "explain": explain_claim(conn, limit)}
    return out


# =========================================================================== report


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f}"


def _ms(d: dict[str, Any]) -> str:
    return f"{d.get('p50')} / {d.get('p90')} / {d.get('p99')} / {d.get('max')}" if d else "–"


def _workers_md(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workers | partitions/s | seconds | exported per worker | client CPU s | server CPU s "
        "| other CPU s | CPU busy (client + server) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        per = ", ".join(f"{x:,}" for x in r["per_worker"])
        lines.append(
            f"| {r['workers']} | {r['partitions_per_s']:,.0f} | {r['seconds']} | {per} | {r['client_cpu_s']} "
            f"| {r['server_cpu_s']} | {r['other_cpu_s']} | {r['cpu_busy']:.0%} |"
        )
    lines += [
        "",
        "Latency in ms, p50 / p90 / p99 / max, server time from the statement log. *claim txn* is the claim "
        "statement plus its COMMIT (the WAL flush); `commit_held` runs in autocommit, so its column is the "
        "statement alone and its flush is in the WAL columns (every flush of the run, from pg_stat_wal).",
        "",
        "| workers | claims | claim txn | claim statement | commits | commit_held statement | WAL MiB "
        "| WAL flushes | flush mean ms |",
        "|---:|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for r in runs:
        claim, commit, wal = r["claim"], r["commit"], r["wal"]
        lines.append(
            f"| {r['workers']} | {claim.get('transaction', {}).get('n', 0)} | {_ms(claim.get('transaction', {}))} "
            f"| {_ms(claim.get('statement', {}))} | {commit.get('statement', {}).get('n', 0)} "
            f"| {_ms(commit.get('statement', {}))} | {wal['mib']} | {wal['syncs']:,} | {wal['sync_ms_mean']} |"
        )
    lines += [
        "",
        "| workers | ledger fresh, MiB (heap + indexes) | after the run | live / dead rows after | checks |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        f, a, k = r["ledger_fresh"], r["ledger_after"], r["checks"]
        lines.append(
            f"| {r['workers']} | {mib(f['total'])} ({mib(f['heap'])} + {mib(f['indexes'])}) "
            f"| {mib(a['total'])} ({mib(a['heap'])} + {mib(a['indexes'])}) | {a['live']:,} / {a['dead']:,} "
            f"| {k['claims']:,} claims, {k['commits']:,} commits, {k['takeovers']} takeovers, "
            f"{k['releases']} releases, {k['overlaps']} overlaps; {k['files']:,} files, "
            f"{k['checksums_verified']:,} checksums match |"
        )
    lines += ["", "Server time by statement (pg_stat_statements, largest total first):", ""]
    for r in runs:
        lines += [
            f"{r['workers']} worker(s):",
            "",
            "| calls | total ms | mean ms | max ms | blocks hit | blocks read | WAL bytes | statement |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for q in r["top_statements"][:8]:
            lines.append(
                f"| {q['calls']:,} | {q['total_ms']:,.0f} | {q['mean_ms']} | {q['max_ms']} | {q['blks_hit']:,} "
                f"| {q['blks_read']:,} | {int(q['wal_bytes']):,} | `{q['query']}` |"
            )
        lines.append("")
    return lines


def _claim_md(c: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name in ("pending_only", "with_exported"):
        s = c[name]
        lines += [
            f"Claim at {s['ledger_rows']:,} ledger rows (ledger {mib(s['size']['total'])} MiB): draining the "
            f"pending rows in {s['batches']} batches, claim (+ COMMIT) {_ms(s['claim_ms'])} ms, commit_held "
            f"(+ COMMIT) {_ms(s['commit_ms'])} ms, client-side. EXPLAIN (ANALYZE, BUFFERS) of the first claim:",
            "",
            "```text",
            s["explain"],
            "```",
            "",
            "EXPLAIN (ANALYZE, BUFFERS) of a commit_held of one batch:",
            "",
            "```text",
            s.get("explain_commit", ""),
            "```",
            "",
        ]
    h = c["with_held_claims"]
    lines += [
        f"With {h['held']:,} of the oldest pending rows held by other workers' live claims:",
        "",
        "```text",
        h["explain"],
        "```",
        "",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The report."""
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    lines = [
        f"# sluicegate scale run {results['started']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}; {versions}",
        "",
    ]
    if "dataset" in results:
        d = results["dataset"]
        lines += [
            f"Dataset: {d['rows']:,} rows, {d['locations']:,} locations, {d['location_days']:,} "
            f"location-days (load + vacuum {d['load_s']} s).",
            "",
        ]
    if results.get("workers"):
        lines += _workers_md(results["workers"])
    if results.get("claim"):
        lines += _claim_md(results["claim"])
    return "\n".join(lines)


# =========================================================================== main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=7_200_000, help="measurement rows (72 per location-day)")
    parser.add_argument("--locations", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4,8", help="worker process counts, comma-separated")
    parser.add_argument(
        "--claim-exported", type=int, default=1_000_000, help="exported rows in the claim test"
    )
    parser.add_argument("--claim-pending", type=int, default=10_000, help="pending rows in the claim test")
    parser.add_argument("--batch", type=int, default=500, help="claim batch size in the claim test")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-claim", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (server data, files)")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    base = Path(tempfile.mkdtemp(prefix="sluicegate-scale-", dir="/tmp"))
    os.chmod(base, 0o755)  # the postgres user must traverse it
    bench.PG_SETTINGS.update(SERVER_SETTINGS)
    pg = bench.PgServer(base)
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/scale.py", *argv]),
        "machine": bench.machine(),
    }
    try:
        pg.start()
        results["versions"] = bench.versions(pg)
        if not args.skip_workers:
            ds = bench.load(pg, args.rows, args.locations)
            with psycopg.connect(ds.url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            results["dataset"] = {
                "rows": ds.rows,
                "locations": ds.locations,
                "location_days": ds.location_days,
                "load_s": round(ds.load_seconds + ds.vacuum_seconds, 1),
            }
            proj = bench.make_project(base, ds)
            results["workers"] = [workers_run(pg, ds, proj, base, int(n)) for n in args.workers.split(",")]
        if not args.skip_claim:
            results["claim"] = claim_test(pg, args.claim_pending, args.claim_exported, args.batch)
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = bench.RESULTS / f"scale-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results)
    path.with_suffix(".md").write_text(md)
    print(md)
    bench.log(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
    sys.exit(130)
