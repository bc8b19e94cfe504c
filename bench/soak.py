"""Soak test: sluicegate workers under SIGKILL, SIGSTOP past their lease and a flapping S3 endpoint.

Run by hand, outside CI (it takes the minutes you give it plus about a minute):

    .venv/bin/python bench/soak.py --minutes 5 --workers 3 [--seed 1]

It starts its own PostgreSQL (as bench/run.py does) and SeaweedFS (``weed mini``, as
tests/conftest.py does), puts the fault proxy of tests/plugins/faultproxy.py in front of the S3
endpoint, and builds the OpenAQ example project with trigger capture, ``lease = "20s"`` and an
``s3://`` destination through the proxy. It loads 200,000 rows with ``sluicegate generate``
(triggers installed first, so the load itself is captured), then, for the given minutes:

* N worker processes run ``sluicegate run --every 5s``;
* a writer process inserts late rows into complete days and updates existing readings;
* a chaos loop, every 3-10 s, SIGKILLs a worker (and restarts it), SIGSTOPs one for longer
  than the lease (then SIGCONTs it), or breaks the proxy: 503/500 bursts, connections reset
  mid-body or before the answer, the endpoint down for a few seconds, or a few PUTs held
  for longer than the lease before they go through (a hung network call).

Then it stops the writer and the chaos, lets the workers finish (SIGTERM), re-queues parked
partitions (again while draining, up to 3 times: claims of killed workers expire then and count
as attempts), runs ``sluicegate run`` until nothing is pending, and checks every partition of
the ledger against the database and the bucket (see :func:`check`). It prints one summary
line and exits 1 if any file is wrong, partial, missing or stray, any version was lost, or the
change feed misses a committed file (every manifest must parse; every file the ledger records
must be listed in one with its SHA-256).
The temp folder (logs, project, data) is kept when the check fails, or with ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import boto3
import psycopg
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from run import PgServer, _free_ports, child_env, log  # noqa: E402

from plugins.faultproxy import FaultProxy  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SLUICEGATE = str(VENV_BIN / "sluicegate")
TEMPLATE = ROOT / "src/sluicegate/templates/openaq"
BUCKET = "soak"
PREFIX = "open-data"
ACCESS_KEY = "soak-access-key"
SECRET_KEY = "soak-secret-key-0123456789"
LEASE_S = 20
EVERY = "5s"
MAX_EXAMPLES = 3  # differing rows shown per mismatching file

PROJECT_TOML = """\
[source]
url = "{url}"

[ledger]
schema = "sluicegate"

[destination]
url = "s3://{bucket}/{prefix}"
endpoint_url = "{endpoint}"
access_key_id = "{access_key}"
secret_access_key = "{secret_key}"
region = "us-east-1"

[defaults]
format = "csv.gz"
lease = "{lease}s"
backoff = "1s"
max_attempts = 8
"""


# =========================================================================== SeaweedFS


class Seaweed:
    """``weed mini`` on 127.0.0.1 with signature auth, in ``base/weed`` (flags as in tests/conftest.py)."""

    PORT_FLAGS = (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    )  # fmt: skip

    def __init__(self, base: Path) -> None:
        self.base = base / "weed"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> None:
        weed = VENV_BIN / "weed"
        (self.base / "data").mkdir(parents=True)
        (self.base / "tmp").mkdir()
        config = {
            "identities": [
                {
                    "name": "soak",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.base / "s3.json").write_text(json.dumps(config))
        self.ports = dict(zip(self.PORT_FLAGS, _free_ports(len(self.PORT_FLAGS)), strict=True))
        command = [
            str(weed), "mini", f"-dir={self.base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={self.base / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-volume.preStopSeconds=0",
            "-volume.max=100", f"-filer.localSocket={self.base / 'filer.sock'}",
            f"-s3.localSocket={self.base / 's3.sock'}",
        ]  # fmt: skip
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")
        }
        env["TMPDIR"] = str(self.base / "tmp")
        with (self.base / "weed.log").open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=env,
            )
        client = s3_client(self.endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not start ({exc}); see {self.base / 'weed.log'}"
                    ) from exc
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGTERM takes ~12 s (filer shutdown); the data is thrown away anyway
            self.proc.wait(timeout=30)
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


# =========================================================================== processes


def sluicegate(proj: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one sluicegate command to completion (raises on a non-zero exit)."""
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(proj), *args], capture_output=True, text=True, env=child_env(), timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"sluicegate {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


@dataclasses.dataclass
class Worker:
    """One ``sluicegate run --every`` process slot; restarted after a kill."""

    index: int
    proj: Path
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    stopped_until: float | None = None  # SIGSTOPped until this monotonic time
    log_path: Path | None = None

    def start(self) -> None:
        self.incarnation += 1
        self.log_path = path = self.logs / f"worker-{self.index}-{self.incarnation}.log"
        with path.open("wb") as out:
            self.proc = subprocess.Popen(
                [SLUICEGATE, "-C", str(self.proj), "run", "--every", EVERY, "--json"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                start_new_session=True,
            )  # fmt: skip
        self.stopped_until = None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_writer(url: str, rate: int, seed: int, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / "writer.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, __file__, "--writer", url, "--rate", str(rate), "--seed", str(seed)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def writer(url: str, rate: int, seed: int) -> int:
    """Until SIGTERM: each second, insert late rows into complete days and update some readings."""
    stop = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(f"{seed}:writer")
    inserted = updated = 0
    with psycopg.connect(url, autocommit=True) as conn:
        sensors = conn.execute("SELECT sensor_id, location_id FROM sensors ORDER BY sensor_id").fetchall()
        first, last = conn.execute("SELECT min(datetime), max(datetime) FROM measurements").fetchone()  # type: ignore[misc]
        # Every local day that ends before now - 30 h is complete in every zone (offsets are < 15 h).
        latest = min(last, dt.datetime.now(dt.UTC) - dt.timedelta(hours=30))
        span = (latest - first).total_seconds()
        while not stop:
            started = time.monotonic()
            with conn.transaction():
                for _ in range(max(1, rate // 60)):
                    sensor, location = rng.choice(sensors)
                    at = first + dt.timedelta(seconds=rng.randrange(int(span)))
                    inserted += conn.execute(
                        "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) "
                        "VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING",
                        (location, sensor, at, round(rng.uniform(0, 100), 2)),
                    ).rowcount
                for _ in range(max(1, rate // 120)):
                    sensor, _location = rng.choice(sensors)
                    at = first + dt.timedelta(seconds=rng.randrange(int(span)))
                    updated += conn.execute(
                        "UPDATE measurements SET value = value + 1 WHERE sensor_id = %s AND datetime = "
                        "(SELECT min(datetime) FROM measurements WHERE sensor_id = %s AND datetime >= %s)",
                        (sensor, sensor, at),
                    ).rowcount
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    print(json.dumps({"inserted": inserted, "updated": updated}), flush=True)
    return 0


# =========================================================================== chaos


@dataclasses.dataclass
class Chaos:
    """Random kills, stalls and proxy faults; counts what it did."""

    rng: random.Random
    proxy: FaultProxy
    workers: list[Worker]
    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    up_at: float | None = None  # the proxy is down until then
    resumes: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (Unix time, worker)

    def resume(self, worker: Worker) -> None:
        if worker.stopped_until is not None:
            worker.signal(signal.SIGCONT)
            worker.stopped_until = None
            self.resumes.append((time.time(), worker.index))

    def tick(self, now: float) -> None:
        """Resume stalled workers and the proxy when their time is up; restart exited workers."""
        for worker in self.workers:
            if worker.stopped_until is not None and now >= worker.stopped_until:
                self.resume(worker)
            if not worker.alive():
                self.counts["unexpected exits"] += 1
                assert worker.proc is not None and worker.log_path is not None
                tail = worker.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                log(
                    f"worker {worker.index} exited by itself (code {worker.proc.returncode}): "
                    + " | ".join(tail)
                )
                worker.start()
        if self.up_at is not None and now >= self.up_at:
            self.proxy.up()
            self.up_at = None

    def act(self, now: float) -> None:
        action = self.rng.choice(["kill", "stall", "proxy"])
        running = [w for w in self.workers if w.stopped_until is None]
        if action == "stall" and len(running) > 1:  # keep one worker running
            worker = self.rng.choice(running)
            worker.signal(signal.SIGSTOP)
            worker.stopped_until = now + LEASE_S + self.rng.uniform(2, 15)
            self.counts["stalls"] += 1
            log(f"chaos: SIGSTOP worker {worker.index} for {worker.stopped_until - now:.0f}s")
        elif action == "kill":
            worker = self.rng.choice(running)  # a stalled worker is left to wake up as a zombie
            worker.signal(signal.SIGKILL)
            assert worker.proc is not None
            worker.proc.wait()
            worker.start()
            self.counts["kills"] += 1
            log(f"chaos: SIGKILL worker {worker.index} (restarted)")
        else:
            self.fault(now)

    def fault(self, now: float) -> None:
        kind = self.rng.choice(
            ["503 burst", "500 burst", "reset mid-body", "reset before answer", "down", "hung PUT"]
        )
        if kind == "503 burst":
            self.proxy.fail(status=503, code="SlowDown", times=self.rng.randint(3, 15))
        elif kind == "500 burst":
            self.proxy.fail(status=500, code="InternalError", times=self.rng.randint(1, 5))
        elif kind == "reset mid-body":
            self.proxy.reset(
                method="PUT", after_bytes=self.rng.randint(0, 4096), times=self.rng.randint(1, 5)
            )
        elif kind == "reset before answer":
            self.proxy.reset(method="PUT", times=self.rng.randint(1, 3))
        elif kind == "hung PUT":  # lands after the lease expired: a zombie without SIGSTOP
            self.proxy.delay(
                method="PUT", seconds=LEASE_S + self.rng.uniform(2, 15), times=self.rng.randint(1, 3)
            )
        elif self.up_at is None:
            self.proxy.down()
            self.up_at = now + self.rng.uniform(0.5, 5)
        self.counts["faults"] += 1
        self.counts[f"fault: {kind}"] += 1
        log(f"chaos: proxy {kind}")


# =========================================================================== the check


@dataclasses.dataclass
class Report:
    partitions: int = 0
    versions: int = 0
    files_checked: int = 0
    mismatches: int = 0
    partial_files: int = 0
    missing_files: int = 0
    lost_versions: int = 0
    stray_objects: int = 0
    manifests: int = 0
    bad_manifests: int = 0
    unlisted_files: int = 0
    open_uploads: int = 0
    uncaptured_rows: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.mismatches or self.partial_files or self.missing_files or self.lost_versions
            or self.stray_objects or self.open_uploads or self.uncaptured_rows
            or self.bad_manifests or self.unlisted_files
        )  # fmt: skip


def _canonical(value: Any) -> str:
    """A comparable text for a database value or a CSV cell (numbers and times parsed first)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _cell(text: str, like: Any) -> str:
    """Parse a CSV cell as the type of the database value ``like``, then canonicalise it."""
    try:
        if isinstance(like, dt.datetime):
            return _canonical(dt.datetime.fromisoformat(text.replace(" ", "T")))
        if isinstance(like, float):
            return _canonical(float(text))
        if isinstance(like, int):
            return _canonical(int(text))
    except ValueError:
        return f"unparsable {text!r}"
    return text


@dataclasses.dataclass
class Evidence:
    """What the chaos did, to explain a wrong file: proxy faults per object key, and wake-ups."""

    faults: dict[str, list[str]]  # object key -> "PUT delay 31s at 12:00:35 -> 200", ...
    resumes: list[tuple[float, int]]  # (Unix time, worker) of every SIGCONT after a stall

    def explain(self, key: str, written: dt.datetime, committed: dt.datetime | None) -> str:
        when = written.timestamp()
        parts = [
            f"object written {_hms(when)}, ledger commit "
            + (_hms(committed.timestamp()) if committed else "none")
        ]
        if key in self.faults:
            parts.append("proxy faults on this key: " + "; ".join(self.faults[key]))
        woke = [f"worker {w} at {_hms(t)}" for t, w in self.resumes if -2 <= when - t <= 15]
        if woke:
            parts.append("SIGCONT shortly before the write: " + ", ".join(woke))
        if len(parts) == 1:
            parts.append("no fault or wake-up explains it")
        return "; ".join(parts)


def _hms(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))


@dataclasses.dataclass
class Checker:
    """Compares ledger partitions, database rows and objects (see :func:`check`)."""

    client: Any
    columns: list[str]
    evidence: Evidence
    report: Report = dataclasses.field(default_factory=Report)

    def partition(self, row: tuple[Any, ...], want: dict[Any, tuple[Any, ...]], objects: set[str]) -> None:
        pid, keys, version, exported, failed, path, rows, checksum, exported_at, _complete = row
        name = f"partition {pid} {json.dumps(keys)} (ledger version {version}, exported {exported})"
        key = f"{PREFIX}/{path}" if path else None
        if version != exported or failed:
            self.report.lost_versions += 1
            self.report.problems.append(f"LOST {name}: failed={failed}")
        if not want:
            if key:
                self.report.problems.append(f"NOTE {name}: no rows, but the ledger has path {path}")
            return
        if key is None or key not in objects:
            self.report.missing_files += 1
            self.report.problems.append(f"MISSING {name}: {len(want)} rows, no object at {key}")
            return
        self.report.files_checked += 1
        self.file(name, key, want, checksum, rows, exported_at)

    def file(
        self,
        name: str,
        key: str,
        want: dict[Any, tuple[Any, ...]],
        ledger_checksum: str | None,
        ledger_rows: int | None,
        exported_at: dt.datetime | None,
    ) -> None:
        """Check one object against the rows the select returns now."""
        response = self.client.get_object(Bucket=BUCKET, Key=key)
        body = response["Body"].read()
        try:
            reader = csv.reader(io.StringIO(gzip.decompress(body).decode("utf-8"), newline=""))
            header = next(reader)
            lines = list(reader)
        except (OSError, EOFError, UnicodeDecodeError, StopIteration, csv.Error) as exc:
            self.report.partial_files += 1
            self.report.problems.append(f"PARTIAL {name}: s3://{BUCKET}/{key} ({len(body)} bytes): {exc}")
            return
        columns = self.columns
        sample = next(iter(want.values()))
        got: dict[tuple[str, str], tuple[str, ...]] = {}
        duplicates = 0
        for line in lines:
            cells = dict(zip(header, line, strict=False))
            parsed = tuple(_cell(cells.get(c, ""), like) for c, like in zip(columns, sample, strict=True))
            row_key = (parsed[columns.index("sensors_id")], parsed[columns.index("datetime")])
            duplicates += row_key in got
            got[row_key] = parsed
        canon = {k: tuple(_canonical(v) for v in values) for k, values in want.items()}
        missing = sorted(set(canon) - set(got))
        extra = sorted(set(got) - set(canon))
        changed = sorted(k for k in set(canon) & set(got) if canon[k] != got[k])
        if header == columns and not (missing or extra or changed or duplicates):
            return
        self.report.mismatches += 1
        replaced = hashlib.sha256(body).hexdigest() != ledger_checksum
        details = [
            f"MISMATCH {name}: s3://{BUCKET}/{key}: "
            + ("NOT the file the ledger committed" if replaced else "the file the ledger committed")
            + f" (rows: ledger {ledger_rows}, file {len(lines)}, database {len(want)}); {len(missing)} rows"
            f" missing, {len(extra)} extra, {len(changed)} changed, {duplicates} duplicated"
            + ("" if header == columns else f"; header {header} != {columns}"),
            "    " + self.evidence.explain(key, response["LastModified"], exported_at),
        ]
        value = columns.index("value")
        details += [f"    missing {k}: database value {canon[k][value]}" for k in missing[:MAX_EXAMPLES]]
        details += [f"    extra   {k}: file value {got[k][value]}" for k in extra[:MAX_EXAMPLES]]
        details += [
            f"    changed {k}: file value {got[k][value]}, database value {canon[k][value]}"
            for k in changed[:MAX_EXAMPLES]
        ]
        self.report.problems.append("\n".join(details))


def check(url: str, proj: Path, endpoint: str, cutoff: dt.datetime, evidence: Evidence) -> Report:
    """Compare every ledger partition with the database and the bucket.

    For each partition whose day was complete at ``cutoff`` (when the drain ended):
    ``version`` must equal ``exported_version`` (else a version was lost); if it has rows,
    the object at its ledger ``path`` must exist, be a whole gzip file, and hold exactly the
    rows the task's select returns for its location and window now (compared row by row on
    every column). Objects in the bucket that no ledger row points at, and unfinished
    multipart uploads, are stray. Rows of the table that fall in no ledger partition were
    not captured. A wrong file is reported with its differing rows and the ``evidence``.
    """
    select = (proj / "tasks/openaq/select.sql").read_text().strip().rstrip(";")
    client = s3_client(endpoint)
    expected: dict[int, dict[Any, tuple[Any, ...]]] = defaultdict(dict)
    with psycopg.connect(url) as conn:
        ledger = conn.execute(
            "SELECT id, keys, version, exported_version, failed, path, rows, checksum, exported_at,"
            " win_end <= %s FROM sluicegate.partitions WHERE task = 'openaq' ORDER BY id",
            (cutoff,),
        ).fetchall()
        joined = f"""
            SELECT p.id AS _pid, q.* FROM sluicegate.partitions AS p
            JOIN ({select}) AS q ON q.location_id = (p.keys->>'location_id')::int
             AND q.datetime > p.win_start AND q.datetime <= p.win_end
            WHERE p.task = 'openaq'"""
        with conn.cursor(name="expected") as cur:
            cur.execute(joined)
            columns = [c.name for c in cur.description or []][1:]
            for pid, *values in cur:
                named = dict(zip(columns, values, strict=True))
                expected[pid][(str(named["sensors_id"]), _canonical(named["datetime"]))] = tuple(values)
        uncaptured = conn.execute(
            f"""SELECT count(*) FROM ({select}) AS q WHERE NOT EXISTS (
                SELECT 1 FROM sluicegate.partitions AS p WHERE p.task = 'openaq'
                AND (p.keys->>'location_id')::int = q.location_id
                AND q.datetime > p.win_start AND q.datetime <= p.win_end)"""
        ).fetchone()
    checker = Checker(client, columns, evidence)
    report = checker.report
    report.uncaptured_rows = int(uncaptured[0]) if uncaptured else -1
    objects = {
        o["Key"]: o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    report.open_uploads = len(client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
    referenced = {f"{PREFIX}/{row[5]}" for row in ledger if row[5]}
    for row in ledger:
        report.partitions += 1
        report.versions += row[2]
        if row[-1]:  # complete at the cutoff; today's partitions wait for their day to end
            checker.partition(row, expected.get(row[0], {}), set(objects))
    manifests = sorted(k for k in objects if k.startswith(f"{PREFIX}/_manifests/"))
    check_manifests(client, manifests, ledger, report)
    own = {k for k in objects if k.startswith(f"{PREFIX}/_sluicegate/")}  # the destination's id
    stray = sorted(set(objects) - referenced - set(manifests) - own)
    report.stray_objects = len(stray)
    report.problems += [f"STRAY object {k} ({objects[k]} bytes)" for k in stray[:20]]
    return report


def check_manifests(client: Any, keys: list[str], ledger: list[Any], report: Report) -> None:
    """The change feed: every manifest parses whole, and every file the ledger records as
    exported is listed in one, with its path and SHA-256 (a file may be listed more than once)."""
    listed: set[tuple[str, str]] = set()
    for key in keys:
        text = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        try:
            entries = [json.loads(line) for line in text.splitlines() if line]
        except ValueError:
            report.bad_manifests += 1
            report.problems.append(f"MANIFEST {key} does not parse")
            continue
        listed |= {(e["path"], e["sha256"]) for e in entries if e.get("action") == "published"}
    report.manifests = len(keys)
    unlisted = [row for row in ledger if row[5] and row[7] and (row[5], row[7]) not in listed]
    report.unlisted_files = len(unlisted)
    report.problems += [f"UNLISTED file {row[5]} (sha256 {row[7]}): in no manifest" for row in unlisted[:20]]


# =========================================================================== main


MAX_REQUEUES = 3  # parked partitions are re-queued at most this often while draining


def drain(proj: Path, url: str, deadline_s: float = 600) -> tuple[int, float, dt.datetime]:
    """``sluicegate run`` until no complete partition is pending or claimed.

    Returns the runs, the seconds, and a database time at which every partition complete by
    then was exported (taken just before the last ``status``).
    """
    started = time.monotonic()
    runs = requeues = 0
    while True:
        with psycopg.connect(url) as conn:
            cutoff = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        [status] = json.loads(sluicegate(proj, "status", "--json").stdout)
        if status["failed"] and requeues < MAX_REQUEUES:
            # Claims of workers killed before the drain expire during it and count as attempts,
            # so partitions near max_attempts are parked now: re-queue them, as an operator would.
            sluicegate(proj, "reset", "openaq", "--failed")
            requeues += 1
            continue
        if status["pending"] == 0 and status["claimed"] == 0:
            return runs, time.monotonic() - started, cutoff
        if time.monotonic() - started > deadline_s:
            raise RuntimeError(f"still pending after {deadline_s:.0f}s of draining: {status}")
        if status["pending"] == 0:
            time.sleep(2)  # claims of killed workers: wait for their lease to expire
            continue
        subprocess.run(
            [SLUICEGATE, "-C", str(proj), "run"],
            capture_output=True,
            env=child_env(),
            timeout=600,
            check=False,
        )
        runs += 1


def fault_notes(proxy: FaultProxy) -> dict[str, list[str]]:
    """Object key -> the proxy faults that hit a request for it ("PUT delay 31s at 12:00:35 -> 200")."""
    notes: dict[str, list[str]] = defaultdict(list)
    for e in proxy.faulted:
        key = urllib.parse.unquote(e.path.split("?", 1)[0]).removeprefix(f"/{BUCKET}/")
        held = f" {e.seconds:.0f}s" if e.fault == "delay" else ""
        status = f" -> {e.status}" if e.status else " -> cut"
        notes[key].append(
            f"{e.method} {e.fault}{held} at {time.strftime('%H:%M:%S', time.localtime(e.at))}{status}"
        )
    return notes


def tamper(endpoint: str, count: int, rng: random.Random) -> None:
    """Replace ``count`` published files behind sluicegate's back, to see the check catch them.

    Each loses its last row and gets a changed value in its first one: what a stale file
    written by a stalled worker looks like.
    """
    client = s3_client(endpoint)
    keys = sorted(
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
        if not o["Key"].startswith((f"{PREFIX}/_sluicegate/", f"{PREFIX}/_manifests/"))  # data files only
    )
    for key in rng.sample(keys, min(count, len(keys))):
        lines = gzip.decompress(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).splitlines(True)
        if len(lines) < 3:
            continue
        header, first, *rest = lines
        cells = first.rstrip(b"\r\n").split(b",")
        cells[-1] = b"-1.0"  # the value column comes last in the OpenAQ select
        body = b"".join([header, b",".join(cells) + b"\n", *rest[:-1]])
        client.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body, mtime=0))
        log(f"tampered with s3://{BUCKET}/{key}")


def worker_totals(logs: Path) -> Counter[str]:
    """Sum the run summaries (``--json``) the workers printed."""
    totals: Counter[str] = Counter()
    for path in logs.glob("worker-*.log"):
        text = path.read_text(errors="replace")
        for field in ("exported", "unchanged", "failed", "lost", "released"):
            totals[field] += sum(int(n) for n in re.findall(rf'^\s+"{field}": (\d+),?$', text, re.MULTILINE))
    return totals


def setup(base: Path, args: argparse.Namespace) -> tuple[PgServer, Seaweed, FaultProxy, str, Path]:
    pg = PgServer(base)
    pg.start()
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE soak")
    url = pg.url("soak")
    log(f"PostgreSQL on port {pg.port}")
    weed = Seaweed(base)
    weed.start()
    log(f"SeaweedFS S3 on {weed.endpoint}")
    proxy = FaultProxy(weed.endpoint, log_limit=2000).start()
    proxy.latency(args.latency)
    proj = base / "proj"
    shutil.copytree(TEMPLATE, proj)
    (proj / "sluicegate.toml").write_text(
        PROJECT_TOML.format(
            url=url,
            bucket=BUCKET,
            prefix=PREFIX,
            endpoint=proxy.url,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            lease=LEASE_S,
        )
    )
    from sluicegate.generate import create_schema

    create_schema(url)  # the tables, so that the triggers can be installed before the load
    sluicegate(proj, "install")
    out = sluicegate(proj, "generate", "--db", url, "--rows", str(args.rows), "--seed", str(args.seed))
    log(out.stdout.strip())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE measurements")
    return pg, weed, proxy, url, proj


def soak(base: Path, args: argparse.Namespace) -> int:
    started = time.monotonic()
    pg, weed, proxy, url, proj = setup(base, args)
    procs: list[subprocess.Popen[bytes]] = []
    workers: list[Worker] = []
    try:
        setup_s = time.monotonic() - started
        log(f"setup took {setup_s:.1f}s; soaking for {args.minutes} min with {args.workers} workers")
        logs = base / "logs"
        logs.mkdir()
        workers = [Worker(i, proj, logs) for i in range(1, args.workers + 1)]
        for worker in workers:
            worker.start()
        procs.append(start_writer(url, args.rate, args.seed, logs))
        chaos = Chaos(random.Random(args.seed), proxy, workers)
        end = time.monotonic() + args.minutes * 60
        next_action = time.monotonic() + chaos.rng.uniform(3, 10)
        while (now := time.monotonic()) < end:
            chaos.tick(now)
            if now >= next_action:
                chaos.act(now)
                next_action = now + chaos.rng.uniform(3, 10)
            time.sleep(0.2)

        log("stopping the chaos and the writer; workers finish their batch (SIGTERM)")
        injected = sum(1 for e in proxy.log if e.fault)  # (the last 2000 requests only)
        proxy.clear()
        for worker in workers:
            chaos.resume(worker)
            worker.signal(signal.SIGTERM)
        procs[0].send_signal(signal.SIGTERM)
        procs[0].wait(timeout=60)
        for worker in workers:
            assert worker.proc is not None
            try:
                worker.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                worker.signal(signal.SIGKILL)
                worker.proc.wait()
        writes = json.loads((logs / "writer.log").read_text().strip().splitlines()[-1])
        [status] = json.loads(sluicegate(proj, "status", "--json").stdout)
        parked = status["failed"]
        for failure in status["failures"][:5]:
            log(f"parked: {failure['partition']} after {failure['attempts']} attempts: {failure['error']}")
        sluicegate(proj, "reset", "openaq", "--failed")
        runs, drain_s, cutoff = drain(proj, url)
        log(f"drained in {runs} runs, {drain_s:.1f}s; checking every partition")
        if args.tamper:
            tamper(weed.endpoint, args.tamper, random.Random(args.seed))
        check_started = time.monotonic()
        report = check(url, proj, weed.endpoint, cutoff, Evidence(fault_notes(proxy), chaos.resumes))
        check_s = time.monotonic() - check_started
        for problem in report.problems:
            print(problem)
        totals = worker_totals(logs)
        counts = chaos.counts
        print(
            f"soak: {args.minutes:g} min, {args.workers} workers, seed {args.seed}: "
            f"kills={counts['kills']} stalls={counts['stalls']} faults={counts['faults']} "
            f"partitions={report.partitions} versions={report.versions} files_checked={report.files_checked} "
            f"mismatches={report.mismatches} partial_files={report.partial_files} "
            f"lost_versions={report.lost_versions} missing_files={report.missing_files} "
            f"stray_objects={report.stray_objects} manifests={report.manifests} "
            f"unlisted_files={report.unlisted_files} bad_manifests={report.bad_manifests} "
            f"open_uploads={report.open_uploads} "
            f"uncaptured_rows={report.uncaptured_rows} | parked={parked} fenced_commits={totals['lost']} "
            f"exports={totals['exported']} unchanged={totals['unchanged']} "
            f"failed_attempts={totals['failed']} "
            f"rows_inserted={writes['inserted']} rows_updated={writes['updated']} "
            f"unexpected_exits={counts['unexpected exits']} | setup {setup_s:.0f}s, drain {drain_s:.0f}s, "
            f"check {check_s:.0f}s"
        )
        log(
            "faults: "
            + ", ".join(f"{k[7:]} {v}" for k, v in sorted(counts.items()) if k.startswith("fault: "))
        )
        log(f"requests faulted among the last 2000 seen by the proxy: {injected}")
        return 0 if report.ok else 1
    finally:
        for worker in workers:
            worker.signal(signal.SIGCONT)
            worker.signal(signal.SIGKILL)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        proxy.stop()
        weed.stop()
        pg.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the chaos lasts (default 5)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the data, the writer and the chaos")
    parser.add_argument("--rows", type=int, default=200_000, help="rows loaded before the soak")
    parser.add_argument("--rate", type=int, default=600, help="rows a minute the writer inserts")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds the proxy adds per request")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder even if all is well")
    parser.add_argument(
        "--tamper",
        type=int,
        default=0,
        metavar="N",
        help="rewrite N files before the check (checks the check)",
    )
    parser.add_argument("--writer", metavar="URL", help=argparse.SUPPRESS)  # internal: the writer process
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.writer:
        return writer(args.writer, args.rate, args.seed)
    base = Path(tempfile.mkdtemp(prefix="sluicegate-soak-", dir="/tmp"))
    os.chmod(base, 0o755)  # PostgreSQL runs as `postgres` when we are root
    code = 2
    try:
        code = soak(base, args)
        return code
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept {base} (logs in {base / 'logs'})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
