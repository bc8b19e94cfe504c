"""Benchmark of a blocks task: a month of hour blocks for 3 providers, all three stages.

The MDS and portal doubles (tests/doubles, real HTTP servers on 127.0.0.1) run in this
process; ``sluicegate blocks`` runs as a subprocess against them: extract (the MDS API,
paged), load (an upsert into a table of the ledger's database), publish (the portal's
upsert). It reports blocks per second and where the time went: the sluicegate process's CPU
time (user + system), the time the doubles spent answering (summed per request, measured
around each double's handler), and the rest (waiting on the database, the file system,
and the loopback network).

    .venv/bin/python bench/blocks.py                          # 720 blocks x 3 providers, 100 trips
    .venv/bin/python bench/blocks.py --hours 48 --trips 100   # a quicker look
    .venv/bin/python bench/blocks.py --db postgresql://...     # ledger and trips table on PostgreSQL

Prints a Markdown table and writes the raw numbers to bench/results/blocks-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from doubles import MdsDouble, MdsProvider, PortalDouble  # noqa: E402

SLUICEGATE = str(Path(sys.executable).with_name("sluicegate"))
RESULTS = ROOT / "bench/results"
PROVIDERS = ("lime", "bird", "jump")
TASK = """
kind = "blocks"
zone = "US/Central"
key = "provider"
batch_size = {batch}
{keys}
[extract]
callable = "sluicegate.mds:trips"
path = "{{stage}}/{{provider}}/{{block:%Y/%m/%d/%H%z}}/trips.jsonl"
[load]
table = "trips"
key = ["trip_id"]
create = true
[load.columns]
trip_id = "text"
provider_name = "text"
device_id = "text"
vehicle_type = "text"
trip_duration = "int"
trip_distance = "int"
start_time = "epoch_ms"
end_time = "epoch_ms"
route = "json"
[publish]
callable = "sluicegate.socrata:upsert"
[publish.config]
url = "{portal}"
dataset = "mds-trips"
columns = ["trip_id", "provider_name", "vehicle_type", "trip_duration", "start_time", "end_time"]
"""


class Busy:
    """Sums the time a double's handler takes, across its server threads."""

    def __init__(self, double: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        handle = double.handle

        def timed(request: Any) -> Any:
            started = time.perf_counter()
            try:
                return handle(request)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1

        double.handle = timed


def project(root: Path, db: str, mds: MdsDouble, portal: PortalDouble, batch: int) -> Path:
    (root / "tasks" / "trips").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{db}"\n[destination]\nurl = "{root / "payloads"}"\n[defaults]\nbackoff = "0s"\n'
    )
    keys = "".join(f'[keys.{p}]\nurl = "{mds.base_url(p)}"\n' for p in PROVIDERS)
    (root / "tasks" / "trips" / "task.toml").write_text(
        TASK.format(batch=batch, keys=keys, portal=portal.url)
    )
    return root


def run(args: argparse.Namespace) -> dict[str, Any]:
    providers = [MdsProvider(name=p, trips_per_block=args.trips, page_size=args.page_size) for p in PROVIDERS]
    with MdsDouble(providers) as mds, PortalDouble() as portal, tempfile.TemporaryDirectory() as tmp:
        busy_mds, busy_portal = Busy(mds), Busy(portal)
        db = args.db or f"sqlite:///{Path(tmp) / 'mds.db'}"
        root = project(Path(tmp) / "proj", db, mds, portal, args.batch)
        start = dt.datetime(2020, 3, 1, 6, tzinfo=dt.UTC)  # local midnight; UTC times: exactly `hours` blocks
        end = start + dt.timedelta(hours=args.hours)
        command = [
            SLUICEGATE, "-C", str(root), "blocks", "trips",
            "--time-min", start.isoformat(), "--time-max", end.isoformat(), "--json",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"sluicegate blocks failed ({proc.returncode}): {proc.stderr[-2000:]}")
        [summary] = json.loads(proc.stdout)
        stages = summary["stages"]
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        blocks = sum(s["stage"] == "extract" for s in stages)
        return {
            "hours": args.hours,
            "providers": len(PROVIDERS),
            "trips_per_block": args.trips,
            "page_size": args.page_size,
            "batch_size": args.batch,
            "db": "sqlite" if not args.db else "postgresql",
            "blocks": blocks,
            "stage_runs": len(stages),
            "done": sum(s["status"] == "done" for s in stages),
            "trips": len(portal.rows("mds-trips")),
            "wall_s": round(wall, 2),
            "blocks_per_s": round(blocks / wall, 1),
            "sluicegate_cpu_s": round(cpu, 2),
            "mds_busy_s": round(busy_mds.seconds, 2),
            "mds_requests": busy_mds.calls,
            "portal_busy_s": round(busy_portal.seconds, 2),
            "portal_requests": busy_portal.calls,
        }


def report(r: dict[str, Any]) -> str:
    wall = r["wall_s"]
    doubles = r["mds_busy_s"] + r["portal_busy_s"]
    rest = max(wall - r["sluicegate_cpu_s"] - doubles, 0.0)
    rows = [
        (
            "blocks (hours x providers)",
            f"{r['blocks']:,} ({r['hours']} x {r['providers']}), {r['trips_per_block']} trips each",
        ),
        ("(block, stage) runs, done", f"{r['stage_runs']:,}, {r['done']:,}"),
        ("trips published", f"{r['trips']:,}"),
        ("wall time", f"{wall:.1f} s"),
        ("blocks per second (all three stages)", f"{r['blocks_per_s']:.1f}"),
        (
            "sluicegate process CPU (user + sys)",
            f"{r['sluicegate_cpu_s']:.1f} s ({r['sluicegate_cpu_s'] / wall:.0%} of wall)",
        ),
        (
            "MDS double answering",
            f"{r['mds_busy_s']:.1f} s over {r['mds_requests']:,} requests ({r['mds_busy_s'] / wall:.0%})",
        ),
        (
            "portal double answering",
            f"{r['portal_busy_s']:.1f} s over {r['portal_requests']:,} requests "
            f"({r['portal_busy_s'] / wall:.0%})",
        ),
        ("the rest (database, files, loopback)", f"{rest:.1f} s ({rest / wall:.0%})"),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=int, default=720, help="hour blocks per provider (default: a month)")
    parser.add_argument("--trips", type=int, default=100, help="trips per block")
    parser.add_argument("--page-size", type=int, default=50, help="trips per MDS page")
    parser.add_argument("--batch", type=int, default=50, help="the task's batch_size (claims per batch)")
    parser.add_argument("--db", help="database URL for the ledger and the trips table (default: SQLite)")
    args = parser.parse_args()
    result = run(args)
    print(report(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"blocks-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nraw numbers: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
