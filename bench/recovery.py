"""Crash recovery against normal work: the run that takes over dead claims, beside a normal run.

    .venv/bin/python bench/recovery.py                          # ~2,000 location-days, ~1-2 min
    .venv/bin/python bench/recovery.py --rows 300000 --repeat 3
    .venv/bin/python bench/recovery.py --src /path/to/other/src # measure another version's runs

One throwaway PostgreSQL 15 (bench/run.py's ``PgServer``), OpenAQ-like data (``--rows``,
bench/run.py's ``load``: at 150k rows ~2,100 location-days) and the OpenAQ template's project
(bench/run.py's ``make_project``, csv.gz to a local folder). Then, ``--repeat`` times, round-robin:

* **normal**: a fresh ledger with every location-day pending (bench/run.py's ``reset_ledger``),
  then ``sluicegate -C proj run openaq --json --workers W`` under the clock.
* **recovery**: the same fresh ledger, then every pending partition claimed through the ledger
  API (``PartitionStore.claim``, ``--batch`` partitions per claim, each under a batch token, as
  the workers of a SIGKILLed run held them: a claim commits its rows, so a dead worker's claims
  are these rows and nothing else), and every lease set to have ended a second ago (the
  ``lease`` of a run killed ten minutes before). Then the same ``run`` under the clock: it has
  nothing pending but the dead claims, and must take every one over and export it.

Every run must export every partition (``exported`` = partitions marked, one file each).
Reported: wall time, ms per partition, the CPU of the run's processes and of the server, and the
machine's other CPU during the run (a noise indicator: the bench machine is shared). The
measured runs import ``--src`` (PYTHONPATH) when given, so two versions can be compared on one
dataset; the harness itself (the dead claims included) uses this tree's sluicegate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run import (  # noqa: E402
    SLUICEGATE,
    PgServer,
    busy_cpu_seconds,
    child_env,
    dir_stats,
    load,
    locations_for,
    log,
    make_project,
    reset_ledger,
    throwaway_server,
)

TASK = "openaq"
LEASE = 600.0


def kill_claims(proj: Path, batch: int) -> int:
    """Claim every pending partition of the task in claims of ``batch`` (batch tokens), as the
    workers of a killed run held them, and end their leases; how many were claimed."""
    from sluicegate.config import load_project
    from sluicegate.ledger import Ledger

    project = load_project(proj, {})
    task = project.task(TASK)
    schema = project.settings.ledger_schema
    claimed = 0
    with Ledger(project.settings.ledger_url, schema=schema) as ledger:
        while got := ledger.partitions.claim(task, limit=batch, lease=LEASE, lone=False):
            claimed += len(got)
    with psycopg.connect(project.settings.ledger_url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {schema}.partitions SET lease_until = now() - interval '1 second'"
            " WHERE claim_token IS NOT NULL"
        )
        conn.execute(f"VACUUM ANALYZE {schema}.partitions")
    return claimed


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(
    pg: PgServer, proj: Path, out: Path, args: argparse.Namespace, expected: int
) -> dict[str, float]:
    """One measured ``sluicegate run`` of the task; checked to export ``expected`` partitions."""
    shutil.rmtree(out, ignore_errors=True)
    extra = {"SLUICEGATE_DESTINATION__URL": str(out), "SLUICEGATE_DEFAULTS__FORMAT": "csv.gz"}
    if args.src:
        extra["PYTHONPATH"] = str(Path(args.src).resolve())
    argv = [SLUICEGATE, "-C", str(proj), "run", TASK, "--json", "--workers", str(args.workers)]
    busy, client, server = busy_cpu_seconds(), _children_cpu(), pg.cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.run(argv, env=child_env(**extra), capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    client, server = _children_cpu() - client, pg.cpu_seconds() - server
    other = busy_cpu_seconds() - busy - client - server
    if proc.returncode != 0:
        raise RuntimeError(f"sluicegate run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    [summary] = json.loads(proc.stdout)
    files, _ = dir_stats(out)
    if summary["exported"] != expected or summary["failed"] or files != expected:
        raise RuntimeError(
            f"expected {expected} partitions exported, got {summary['exported']} ({summary['failed']}"
            f" failed, {files} files): {summary['errors'][:3]}"
        )
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "client_cpu_s": client, "server_cpu_s": server, "other_cpu_s": other}


def measure(args: argparse.Namespace, base: Path, pg: PgServer) -> dict[str, list[dict[str, float]]]:
    ds = load(pg, args.rows, args.locations or locations_for(args.rows))
    proj = make_project(base, ds)
    runs: dict[str, list[dict[str, float]]] = {"normal": [], "recovery": []}
    for i in range(args.repeat):
        for case in ("normal", "recovery"):
            marked, _ = reset_ledger(proj, ds, TASK)
            if case == "recovery" and (claimed := kill_claims(proj, args.batch)) != marked:
                raise RuntimeError(f"claimed {claimed} of {marked} partitions")
            with psycopg.connect(ds.url, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            run = timed_run(pg, proj, base / "out", args, marked)
            run["partitions"] = marked
            runs[case].append(run)
            log(f"{case} #{i + 1}: {marked:,} partitions in {run['seconds']:.2f} s")
    return runs


def render(runs: dict[str, list[dict[str, float]]], meta: dict[str, str]) -> str:
    lines = [
        f"# Crash recovery against normal work ({meta['when']})",
        "",
        f"`{meta['command']}`; {meta['pg']}; load average at the end {meta['load']}.",
        "",
        "| run | partitions | median s (best) | ms per partition | client CPU s | server CPU s"
        " | other CPU s (noise) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, got in runs.items():
        secs = [r["seconds"] for r in got]
        median = statistics.median(secs)
        cpu = " | ".join(
            f"{statistics.median(r[k] for r in got):.1f}"
            for k in ("client_cpu_s", "server_cpu_s", "other_cpu_s")
        )
        lines.append(
            f"| {case} | {int(got[0]['partitions']):,} | {median:.2f} ({min(secs):.2f}) |"
            f" {1000 * median / got[0]['partitions']:.1f} | {cpu} |"
        )
    normal, recovery = (statistics.median(r["seconds"] for r in runs[c]) for c in ("normal", "recovery"))
    lines += ["", f"recovery / normal: **{recovery / normal:.2f}x**"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=150_000, help="rows generated (150k: ~2,100 location-days)"
    )
    parser.add_argument("--locations", type=int, default=0, help="locations (default: bench/run.py's rule)")
    parser.add_argument("--batch", type=int, default=500, help="partitions per dead claim (a worker's batch)")
    parser.add_argument("--workers", type=int, default=1, help="run --workers of the measured runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case, round-robin")
    parser.add_argument("--src", help="a src/ folder the measured runs import instead (PYTHONPATH)")
    args = parser.parse_args(argv)
    with throwaway_server("sluicegate-recovery-bench-") as (base, pg):
        runs = measure(args, base, pg)
        version = pg.version()
    meta = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "pg": version,
        "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "command": " ".join(
            [".venv/bin/python bench/recovery.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    report = render(runs, meta)
    print(report)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"recovery-{meta['when'].replace(':', '')}.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
