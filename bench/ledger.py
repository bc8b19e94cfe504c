"""The ledger's cost per partition: claim + commit, amortised, as the ledger grows (PostgreSQL).

    .venv/bin/python bench/ledger.py                           # 10k and 1M exported + 10k pending, ~3 min
    .venv/bin/python bench/ledger.py --exported 10000,100000 --pending 5000

For each size: a fresh ledger (``Ledger.ensure_schema``) holding ``exported`` partitions that
were exported long ago plus ``pending`` partitions marked an hour ago, inserted straight into
``sluicegate.partitions`` and vacuumed. Then ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim
statement, of the commit statement of one batch and of its ``paths_taken`` (all rolled back),
and the pending partitions drained as one worker does it, through the library:
``PartitionStore.take_over``, alone and with ``batch`` (dead claims: none here, as the run's loop
asks first) and ``PartitionStore.claim`` (``batch`` per claim, the default 500),
``PartitionStore.paths_taken`` of the batch's paths (the claim loop's check that no partition
takes another's file), then
``PartitionStore.commit`` of the whole batch with the driver's ``SharedFiles`` vet (the
``hold`` statement, the batch's files locked by ``lock_paths`` and looked up again by
``paths_taken``, then ``commit_held``, in one transaction, as the pipeline does after the files
are durable), until nothing is pending.
Reported: wall time and CPU (this process plus the ledger connection's backend, from /proc) per
partition, amortised over the drain, the median claim, paths_taken and commit times per batch,
and the machine's other CPU use (a noise indicator).
Every drain is checked: each pending partition committed once, at its version.

The server is bench/run.py's ``PgServer`` (PostgreSQL 15, defaults with fsync on: every claim
and every commit is a WAL flush), started in a temp folder and stopped at the end. The report
goes to stdout and bench/results/ledger-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import busy_cpu_seconds, log, throwaway_server  # noqa: E402

from sluicegate.drivers.partitioned_paths import SharedFiles  # noqa: E402
from sluicegate.ledger import ExportResult, Ledger  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UTC = dt.UTC
TASK = SimpleNamespace(name="openaq", time=None, key_names=("location_id", "day"))  # what claim() reads
LEASE = 600.0
INSERT_PENDING = """
INSERT INTO sluicegate.partitions (task, pkey, keys, zone, win_start, win_end, changed_at)
SELECT 'openaq', '[' || loc || ',"' || (date '2024-01-01' + n) || '"]',
       jsonb_build_object('location_id', loc, 'day', (date '2024-01-01' + n)::text), 'UTC',
       (date '2024-01-01' + n)::timestamptz, (date '2024-01-01' + n + 1)::timestamptz,
       now() - interval '1 hour' + n * interval '1 second'
FROM generate_series(1, %(locations)s) AS loc, generate_series(0, 99) AS n
"""
INSERT_EXPORTED = """
INSERT INTO sluicegate.partitions (task, pkey, keys, zone, win_start, win_end, version, exported_version,
                                   changed_at, path, rows, bytes, checksum, exported_at)
SELECT 'openaq', '[' || loc || ',"' || (date '2021-01-01' + n) || '"]',
       jsonb_build_object('location_id', loc, 'day', (date '2021-01-01' + n)::text), 'UTC',
       (date '2021-01-01' + n)::timestamptz, (date '2021-01-01' + n + 1)::timestamptz, 1, 1,
       now() - interval '30 days',
       'records/csv.gz/locationid=' || loc || '/location-' || loc || '-'
           || to_char(date '2021-01-01' + n, 'YYYYMMDD') || '.csv.gz',
       72, 1200, md5(loc || '/' || n) || md5(n || '/' || loc), now() - interval '29 days'
FROM generate_series(100001, 100000 + %(locations)s) AS loc, generate_series(0, 999) AS n
"""


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fill(url: str, exported: int, pending: int) -> int:
    """A ledger of ``exported`` exported and ``pending`` pending partitions; returns its row count."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sluicegate CASCADE")
    with Ledger(url) as ledger:
        ledger.ensure_schema()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(INSERT_EXPORTED, {"locations": exported // 1000})
        conn.execute(INSERT_PENDING, {"locations": pending // 100})
        conn.execute("VACUUM (FREEZE, ANALYZE) sluicegate.partitions")
        return int(conn.execute("SELECT count(*) FROM sluicegate.partitions").fetchone()[0])  # type: ignore[index]


def explain(ledger: Ledger, batch: int) -> tuple[str, ...]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim, of the commit of the batch it took, and of the
    paths_taken of its paths; all rolled back."""
    q = ledger.partitions.q
    token = uuid.uuid4()
    claim = {"task": "openaq", "settle": 0.0, "limit": batch, "lease": LEASE, "token": token}
    conn = ledger.conn
    with conn.transaction(force_rollback=True):
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + q["claim"], claim).fetchall()
        ids = [row[0] for row in conn.execute(q["claim"], {**claim, "token": uuid.uuid4()}).fetchall()]
        tokens = [
            t[0]
            for t in conn.execute("SELECT claim_token FROM sluicegate.partitions WHERE id = ANY(%s)", (ids,))
        ]
        commit = {
            "ids": ids, "tokens": tokens, "paths": [f"p/{i}.csv.gz" for i in ids], "rows": [72] * len(ids),
            "bytes": [1200] * len(ids), "checksums": ["0" * 64] * len(ids), "etags": [None] * len(ids),
        }  # fmt: skip
        commit_plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + q["commit_held"], commit
        ).fetchall()
        taken = {"task": "openaq", "paths": "{" + ",".join(f"p/{i}.csv.gz" for i in ids) + "}"}
        paths_plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + q["paths_taken"], taken
        ).fetchall()
    return tuple("\n".join(r[0] for r in p) for p in (plan, commit_plan, paths_plan))


def drain(ledger: Ledger, batch: int, pending: int) -> dict[str, Any]:
    """Claim and commit every pending partition, ``batch`` at a time, through the library."""
    pid = ledger.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    server0, client0, busy0 = backend_cpu(pid), own_cpu(), busy_cpu_seconds()
    claims_ms, paths_ms, commits_ms, done = [], [], [], 0
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        # As the run's loop: a dead claim's partition first, then dead batches (none here), then a
        # batch of pending ones.
        store = ledger.partitions
        dead = store.take_over(TASK, lease=LEASE) or store.take_over(TASK, lease=LEASE, batch=batch)  # type: ignore[arg-type]
        if dead:
            raise RuntimeError("a partition of a dead claim in a fresh ledger")
        claims = ledger.partitions.claim(TASK, limit=batch, lease=LEASE)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        if not claims:
            break
        if ledger.partitions.paths_taken(TASK.name, {f"p/{c.id}.csv.gz" for c in claims}):  # type: ignore[arg-type]
            raise RuntimeError("a pending partition's path is recorded for another partition")
        t15 = time.perf_counter()
        results = [
            ExportResult(
                claim=c, path=f"p/{c.id}.csv.gz", rows=72, nbytes=1200, checksum="0" * 64, published=True
            )
            for c in claims
        ]
        # As the pipeline: the batch's files locked and their paths looked up again in the commit.
        recorded = ledger.partitions.commit(results, None, SharedFiles(TASK))  # type: ignore[arg-type]
        t2 = time.perf_counter()
        if not all(recorded):
            raise RuntimeError(f"committed {sum(recorded)} of {len(results)} claimed partitions")
        claims_ms.append((t1 - t0) * 1000)
        paths_ms.append((t15 - t1) * 1000)
        commits_ms.append((t2 - t15) * 1000)
        done += len(claims)
    seconds = time.perf_counter() - started
    server, client = backend_cpu(pid) - server0, own_cpu() - client0
    other = max(busy_cpu_seconds() - busy0 - server - client, 0.0)
    left = ledger.conn.execute(
        "SELECT count(*) FILTER (WHERE version > exported_version),"
        " count(*) FILTER (WHERE claim_token IS NOT NULL) FROM sluicegate.partitions"
    ).fetchone()
    if done != pending or tuple(left) != (0, 0):
        raise RuntimeError(f"drained {done} of {pending}; left pending, claimed: {tuple(left)}")
    return {
        "partitions": done,
        "batches": len(claims_ms),
        "ms_per_partition": seconds / done * 1000,
        "client_us": client / done * 1e6,
        "server_us": server / done * 1e6,
        "claim_ms_p50": statistics.median(claims_ms),
        "paths_ms_p50": statistics.median(paths_ms),
        "commit_ms_p50": statistics.median(commits_ms),
        "other_s": other,
    }


def stage(url: str, exported: int, pending: int, batch: int, repeat: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        rows = fill(url, exported, pending)
        with Ledger(url) as ledger:
            plans = explain(ledger, batch)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM sluicegate.partitions")  # the rolled-back row versions
            runs.append(drain(ledger, batch, pending))
    best = min(runs, key=lambda r: r["ms_per_partition"])
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out.update(
        ledger_rows=rows, exported=exported, pending=pending, plans=plans, best_ms=best["ms_per_partition"]
    )
    log(
        f"ledger of {rows:,} rows: {out['ms_per_partition']:.3f} ms per partition (claim p50 "
        f"{out['claim_ms_p50']:.1f} ms, paths_taken p50 {out['paths_ms_p50']:.1f} ms, commit p50 "
        f"{out['commit_ms_p50']:.1f} ms per batch of {batch})"
    )
    return out


def _short(plan: str) -> str:
    """The plan with long literal arrays (ids, paths) shortened."""
    return re.sub(r"'\{[^'{}]{40,}\}'", lambda m: f"'{{... {m.group().count(',') + 1} values}}'", plan)


def render(stages: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Ledger claim + commit on PostgreSQL, {meta['when']}, {meta['pg']}, batches of {meta['batch']}, "
        f"median of {meta['repeat']} drains, load average {meta['load']}:",
        "",
        "| ledger rows (exported + pending) | ms per partition, median (best) | CPU µs per partition "
        "(server + client) | claim p50 ms per batch | paths_taken p50 ms per batch | commit p50 ms per batch "
        "| other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stages:
        lines.append(
            f"| {s['ledger_rows']:,} ({s['exported']:,} + {s['pending']:,}) "
            f"| {s['ms_per_partition']:.3f} ({s['best_ms']:.3f}) "
            f"| {s['server_us']:.0f} + {s['client_us']:.0f} "
            f"| {s['claim_ms_p50']:.1f} | {s['paths_ms_p50']:.1f} | {s['commit_ms_p50']:.1f} "
            f"| {s['other_s']:.1f} |"
        )
    for s in stages:
        lines += [
            "",
            f"Claim at {s['ledger_rows']:,} ledger rows:",
            "",
            "```text",
            _short(s["plans"][0]),
            "```",
        ]
        lines += [
            "",
            f"Commit of one batch at {s['ledger_rows']:,} ledger rows:",
            "",
            "```text",
            s["plans"][1],
            "```",
        ]
        lines += ["", f"paths_taken of one batch at {s['ledger_rows']:,} ledger rows:", "", "```text"]
        lines += [_short(s["plans"][2]), "```"]
    lines += ["", f"Command: `{meta['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exported", default="10000,1000000", help="exported partitions per stage")
    parser.add_argument("--pending", type=int, default=10_000, help="pending partitions (a multiple of 100)")
    parser.add_argument("--batch", type=int, default=500, help="partitions per claim (batch_size)")
    parser.add_argument("--repeat", type=int, default=3, help="drains per stage")
    args = parser.parse_args(argv)
    stages = []
    with throwaway_server("sluicegate-ledger-bench-") as (_, pg):
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE ledger")
        url = pg.url("ledger")
        for exported in (int(x) for x in args.exported.split(",") if x):
            stages.append(stage(url, exported, args.pending, args.batch, args.repeat))
        version = pg.version()
    meta = {
        "when": dt.datetime.now(UTC).isoformat(timespec="minutes"),
        "pg": version,
        "batch": args.batch,
        "repeat": args.repeat,
        "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "command": " ".join(
            [".venv/bin/python bench/ledger.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    report = render(stages, meta)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ledger-{meta['when'].replace(':', '')}.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
