# ruff: noqa: RUF001
# (the report text uses typographic symbols on purpose)
"""sluicegate benchmark: sluicegate vs the naive OpenAQ exporter, the physical limits, and dlt.

One run starts a throwaway PostgreSQL server, loads OpenAQ-like data at each size, measures
every case in a fresh subprocess (so peak RSS is per case), repeats, and reports medians.
See bench/README.md for what each case measures.

    .venv/bin/python bench/run.py                      # 1M and 10M rows, 3 repeats
    .venv/bin/python bench/run.py --sizes 100000 --repeat 1
    .venv/bin/python bench/run.py --cases sluicegate-csv,copy-pigz --sizes 1000000

Results (Markdown table and raw JSON) go to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sluicegate.config import OVERRIDE_ENV_NAMES, OVERRIDE_ENV_PREFIXES

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SLUICEGATE = str(VENV_BIN / "sluicegate")
TEMPLATE = ROOT / "src/sluicegate/templates/openaq"
RESULTS = ROOT / "bench/results"
GNU_TIME = "/usr/bin/time"  # GNU time (Debian package "time")
PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "bench"
PG_SETTINGS = {
    # Defaults otherwise (fsync, synchronous_commit and full_page_writes stay on).
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}
ALL_CASES = (
    "sluicegate-csv",  # a
    "sluicegate-parquet",  # b
    "sluicegate-csv-w2",  # a, with run --workers 2
    "sluicegate-csv-w1",  # a, with run --workers 1 (the default before "auto")
    "sluicegate-csv-p2",  # a, as two processes of run --workers 1 started together
    "naive",  # c
    "copy-pigz",  # d
    "copy-pigz-sorted",  # d, in the order sluicegate writes (large-csv's ORDER BY)
    "arrow-parquet",  # e
    "arrow-parquet-sorted",  # e, in the order sluicegate writes (large-parquet's ORDER BY)
    "dlt",  # f
    "large-csv",  # g: sluicegate csv.gz, 3 partitions of N/3 rows
    "large-parquet",  # g: sluicegate parquet, 3 partitions of N/3 rows
    "daily-csv",  # g': sluicegate csv.gz, one partition per UTC day (all locations)
    "daily-parquet",  # g': sluicegate parquet, one partition per UTC day (all locations)
    "sluicegate-s3-csv",  # h: a, to S3 (SeaweedFS on 127.0.0.1; bench/s3cases.py)
    "sluicegate-s3-parquet",  # h: b, to S3
    "s3-put-limit",  # h: raw boto3 PUTs of the same sizes at the best thread count
    "s3-put-limit-crt",  # h: raw awscrt PUTs of the same sizes, 64 in flight
    "sluicegate-s3-csv-30ms",  # h: sluicegate-s3-csv, 30 ms added to every request
)
S3_CASES = ALL_CASES[-5:]
DESCRIPTIONS = {
    "sluicegate-csv": "sluicegate run (defaults: 2 workers on PostgreSQL) → csv.gz, a file per location-day",
    "sluicegate-parquet": "sluicegate run → Parquet, one file per location-day",
    "sluicegate-csv-w2": "sluicegate run --workers 2 → csv.gz, one file per location-day",
    "sluicegate-csv-w1": "sluicegate run --workers 1 → csv.gz, one file per location-day",
    "sluicegate-csv-p2": "two sluicegate run --workers 1 processes at once → csv.gz, a file per location-day",
    "naive": "naive OpenAQ: 1 query per location-day, csv+gzip, 6 threads",
    "copy-pigz": "limit: psql COPY (select) TO STDOUT csv, piped to pigz -6, one file",
    "copy-pigz-sorted": "the same COPY|pigz with ORDER BY parameter, sensors_id, datetime (as sluicegate)",
    "arrow-parquet": "limit: ADBC Arrow batches → ParquetWriter(zstd), one file",
    "arrow-parquet-sorted": "the same Arrow → Parquet, ORDER BY parameter, sensors_id, datetime",
    "dlt": "dlt sql_table(pyarrow) → filesystem parquet, one table",
    "large-csv": "sluicegate run → csv.gz, 3 partitions (keys=[parameter])",
    "large-parquet": "sluicegate run → Parquet, 3 partitions (keys=[parameter])",
    "daily-csv": "sluicegate run → csv.gz, 1 partition per UTC day (time key only)",
    "daily-parquet": "sluicegate run → Parquet, 1 partition per UTC day (time key only)",
    "sluicegate-s3-csv": "sluicegate run → csv.gz on S3 (SeaweedFS, 127.0.0.1), one object per location-day",
    "sluicegate-s3-parquet": "sluicegate run → Parquet on S3 (SeaweedFS), one object per location-day",
    "s3-put-limit": "limit: boto3 put_object (SHA-256) of the s3-csv files' sizes, best thread count",
    "s3-put-limit-crt": "limit: awscrt S3 PUTs (SHA-256) of the s3-csv files' sizes, 64 in flight",
    "sluicegate-s3-csv-30ms": "sluicegate-s3-csv through a proxy adding 30 ms to every request",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# =========================================================================== PostgreSQL


class PgServer:
    """A throwaway PostgreSQL cluster in ``base/pg``; stop() stops exactly this one."""

    def __init__(self, base: Path) -> None:
        self.base = base / "pg"
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.port = 0
        self.prefix: list[str] = []
        self.uid: int | None = None
        self.gid: int | None = None
        self.started = False
        if os.geteuid() == 0:  # initdb/pg_ctl refuse to run as root
            account = pwd.getpwnam("postgres")
            self.prefix = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
            self.uid, self.gid = account.pw_uid, account.pw_gid

    def _own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def _run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def version(self) -> str:
        return subprocess.run(
            [str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()

    def start(self) -> None:
        self.base.mkdir(parents=True)
        self.sock.mkdir(mode=0o700)
        for path in (self.base, self.sock):
            self._own(path)
        result = self._run(
            str(PG_BIN / "initdb"), f"--pgdata={self.data}", f"--username={PG_USER}",
            "--auth-local=trust", "--auth-host=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stdout}{result.stderr}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'bench.conf'\n")
        for _attempt in range(3):
            self.port = _free_port()
            settings = {
                **PG_SETTINGS,
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.sock}'",
            }
            conf_path = self.data / "bench.conf"
            conf_path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
            self._own(conf_path)
            self.started = True  # from here on, stop() must run
            result = self._run(
                str(PG_BIN / "pg_ctl"), "start", "--wait", "--timeout=60", f"--pgdata={self.data}",
                f"--log={self.logfile}",
            )  # fmt: skip
            if result.returncode == 0:
                return
            self.stop()
            text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            if "already in use" not in text and "could not bind" not in text:
                raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{text[-3000:]}")
        raise RuntimeError("could not find a free port for PostgreSQL")

    def stop(self) -> None:
        if not self.started or not (self.data / "postmaster.pid").exists():
            return
        for mode in ("fast", "immediate"):
            result = self._run(
                str(PG_BIN / "pg_ctl"),
                "stop",
                "--wait",
                "--timeout=60",
                f"--mode={mode}",
                f"--pgdata={self.data}",
            )
            if result.returncode == 0 or not (self.data / "postmaster.pid").exists():
                log(f"PostgreSQL on port {self.port} stopped ({mode})")
                return

    def cpu_seconds(self) -> float:
        """CPU used so far by the server: postmaster (with its reaped backends) plus live children."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        ticks = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # fields[1] = ppid, [11:15] = u/s/cu/cs time
            if int(entry.name) == pid:
                ticks += sum(int(x) for x in fields[11:15])
            elif int(fields[1]) == pid:
                ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"


@contextlib.contextmanager
def throwaway_server(prefix: str) -> Iterator[tuple[Path, PgServer]]:
    """A started :class:`PgServer` in a new temp folder (removed at the end), stopped at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the server runs as its own OS user when we are root
        pg = PgServer(base)
        try:
            pg.start()
            yield base, pg
        finally:
            pg.stop()


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every probe socket stays bound until all are chosen, so
    the kernel cannot hand out one port twice (it did, and a SeaweedFS start failed)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


# =========================================================================== measuring


@dataclass
class Run:
    """One measured subprocess."""

    seconds: float
    max_rss_mb: float
    cpu_s: float
    server_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    total_pss_mb: float = 0.0  # the peak of the case's processes' PSS added up (sampled, 10/s)
    rows: int | None = None
    partitions: int | None = None
    bytes: int | None = None
    engine_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CaseFailed(Exception):
    def __init__(self, message: str, stdout: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout


_SERVER: PgServer | None = None  # set by main(); measure() reports the server's CPU per case


def busy_cpu_seconds() -> float:
    """Machine-wide busy CPU time so far (all cores; /proc/stat minus idle and iowait)."""
    with contextlib.suppress(OSError, ValueError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group of a measured case (started with start_new_session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _profiled(argv: list[str]) -> list[str]:
    """``argv`` under py-spy when BENCH_PROFILE names a folder and the command is sluicegate.

    The profile (py-spy's raw format; every thread with native frames unless
    BENCH_PROFILE_OPTIONS says otherwise, e.g. ``--gil`` for the threads holding the GIL) of
    each run goes to ``$BENCH_PROFILE/<n>.raw``; a profiled run's figures are not comparable.
    """
    folder = os.environ.get("BENCH_PROFILE")
    if not folder or argv[0] != SLUICEGATE:
        return argv
    spy = os.environ.get("BENCH_PY_SPY") or shutil.which("py-spy") or "py-spy"
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"{time.time_ns()}.raw"
    options = os.environ.get("BENCH_PROFILE_OPTIONS", "--threads --native").split()
    return [spy, "record", "-r", "200", *options, "-f", "raw", "-o", str(out), "--", *argv]


class TreeMemory(threading.Thread):
    """Samples the memory of a process and all its descendants 10 times a second.

    GNU time gives the peak RSS of the largest process; a run of several processes (helper
    exporters) uses more. The sum of their PSS (proportional set size: a page shared by two
    processes, such as a library's code, counts half in each) is what they take together.
    """

    def __init__(self, root: int) -> None:
        super().__init__(name="bench-memory", daemon=True)
        self.root = root
        self.peak_pss_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            total = sum(_pss_kib(pid) for pid in _tree(self.root))
            self.peak_pss_kib = max(self.peak_pss_kib, total)


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def measure(
    cmd: list[str], *, env: dict[str, str] | None = None, shell: bool = False, timeout: float = 3600
) -> tuple[Run, str]:
    """Run ``cmd`` in a fresh process under GNU time: wall time, peak RSS and CPU of the case.

    Peak RSS comes from ``/usr/bin/time`` rather than from ``wait4`` in this process: on Linux a
    child's ``ru_maxrss`` includes the high-water mark of the parent's memory it was forked
    (vforked) from, so a big harness would inflate every case. GNU time is a tiny parent. For a
    shell pipeline it reports the largest process of the pipeline (not the sum).
    """
    fd, stats_name = tempfile.mkstemp(prefix="bench-time-")
    os.close(fd)
    stats_path = Path(stats_name)
    stdout_path = Path(tempfile.mkstemp(prefix="bench-out-")[1])
    stderr_path = Path(tempfile.mkstemp(prefix="bench-err-")[1])
    plain = cmd if not shell else ["bash", "-o", "pipefail", "-c", cmd[0]]
    argv = _profiled(plain)
    time.sleep(0.2)  # let the harness's own backends exit and be reaped before the CPU snapshot
    server_before = _SERVER.cpu_seconds() if _SERVER else 0.0
    busy_before = busy_cpu_seconds()
    try:
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            started = time.perf_counter()
            # Own session/process group, so an interrupt or timeout kills the case and all its children.
            proc = subprocess.Popen(
                [GNU_TIME, "-q", "-f", "%M %U %S", "-o", str(stats_path), *argv],
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
            memory = TreeMemory(proc.pid)
            memory.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CaseFailed(f"timed out after {timeout:.0f}s") from None
            except BaseException:
                _kill_group(proc)
                raise
            finally:
                memory.done.set()
                memory.join()
            seconds = time.perf_counter() - started
        stdout = stdout_path.read_text(errors="replace")
        if argv is not plain:  # py-spy writes its own lines to the same stdout
            stdout = "".join(x for x in stdout.splitlines(True) if not x.startswith("py-spy> "))
        if proc.returncode != 0:
            stderr = stderr_path.read_text(errors="replace")
            raise CaseFailed(f"exit {proc.returncode}: {(stderr or stdout).strip()[-1500:]}", stdout)
        fields = stats_path.read_text().split()[-3:]  # "%M %U %S" is the last line
        max_rss_kib, user_s, sys_s = int(fields[0]), float(fields[1]), float(fields[2])
        time.sleep(0.2)  # the case's backends exit and are reaped by the postmaster
        server_cpu = (_SERVER.cpu_seconds() - server_before) if _SERVER else 0.0
        # Everything else the machine did meanwhile (other users' jobs, the harness, kernel threads):
        # a noise indicator. Reaped-child accounting lags a little, so small negatives are clipped.
        other = max(0.0, busy_cpu_seconds() - busy_before - server_cpu - (user_s + sys_s))
        return Run(
            seconds=seconds,
            max_rss_mb=max_rss_kib / 1024,
            total_pss_mb=round(memory.peak_pss_kib / 1024, 1),
            cpu_s=user_s + sys_s,
            server_cpu_s=round(server_cpu, 2),
            other_cpu_s=round(other, 2),
        ), stdout
    finally:
        for path in (stats_path, stdout_path, stderr_path):
            path.unlink(missing_ok=True)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in OVERRIDE_ENV_NAMES and not k.startswith(OVERRIDE_ENV_PREFIXES)
    }
    env.update(extra)
    return env


def dir_stats(path: Path) -> tuple[int, int]:
    """Data files and their bytes under ``path`` (sluicegate's own folders are not data: the change
    feed's _manifests/, and _sluicegate/ with the destination's id)."""
    files = nbytes = 0
    for dirpath, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d not in ("_manifests", "_sluicegate")]
        for name in names:
            files += 1
            nbytes += os.path.getsize(os.path.join(dirpath, name))
    return files, nbytes


# =========================================================================== dataset and project


@dataclass
class Dataset:
    rows: int
    locations: int
    dbname: str
    url: str
    location_days: int = 0
    load_seconds: float = 0.0
    vacuum_seconds: float = 0.0
    select_rows: int = 0
    start: str = ""
    end: str = ""


def locations_for(rows: int) -> int:
    """300 locations at 1M rows (~46 days); more locations and more days as rows grow."""
    return max(10, round(300 * (rows / 1_000_000) ** 0.5))


def load(pg: PgServer, rows: int, locations: int) -> Dataset:
    from sluicegate.generate import generate

    dbname = f"bench_{rows}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
        conn.execute(f"CREATE DATABASE {dbname}")
    ds = Dataset(rows=rows, locations=locations, dbname=dbname, url=pg.url(dbname))
    # End two days ago (whole hours), so every local day of every zone is complete and claimable.
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    log(f"loading {rows:,} rows at {locations} locations into {dbname} ...")
    result = generate(ds.url, rows=rows, locations=locations, end=end)
    ds.load_seconds = result.seconds
    ds.start, ds.end = result.start.isoformat(), result.end.isoformat()
    if result.rows != rows:
        raise RuntimeError(f"generate inserted {result.rows} rows, expected {rows}")
    started = time.perf_counter()
    with psycopg.connect(ds.url, autocommit=True) as conn:
        # Set hint bits and the visibility map now, so the first measured read does not pay for it.
        conn.execute("VACUUM (FREEZE, ANALYZE) measurements")
        conn.execute("VACUUM ANALYZE locations")
        conn.execute("VACUUM ANALYZE sensors")
        select_sql = (TEMPLATE / "tasks/openaq/select.sql").read_text().strip().rstrip(";")
        conn.execute(f"CREATE OR REPLACE VIEW bench_openaq_rows AS {select_sql}")
        ds.select_rows = conn.execute("SELECT count(*) FROM bench_openaq_rows").fetchone()[0]
        ds.location_days = len(location_days(conn))
    ds.vacuum_seconds = time.perf_counter() - started
    log(
        f"loaded {rows:,} rows in {ds.load_seconds:.1f}s (+{ds.vacuum_seconds:.1f}s vacuum/analyze); "
        f"{ds.location_days:,} location-days"
    )
    return ds


LOCATION_DAYS_SQL = """
SELECT DISTINCT m.location_id,
       ((m.datetime - interval '1 microsecond') AT TIME ZONE l.timezone)::date AS day,
       l.timezone
FROM measurements AS m JOIN locations AS l USING (location_id)
"""
MARK_ORDERS = {
    # One mark per day, oldest first, all locations of a day together: how changes arrive from
    # steady ingest (and from a catch-up after downtime). Each claimed batch holds ~1-2 days x
    # many locations. (A single mark of everything claims the same way: oldest window first.)
    "day": "ORDER BY day, location_id",
    # One mark per location: a per-location backfill or reexport, one after the other. Each
    # batch holds many days of a few locations.
    "location": "ORDER BY location_id, day",
}


def location_days(conn: psycopg.Connection[Any], order: str = "day") -> list[tuple[int, dt.date, str]]:
    """Every distinct (location_id, local day, zone), in the order the ledger will be marked."""
    query = LOCATION_DAYS_SQL + MARK_ORDERS[order]
    return [tuple(r) for r in conn.execute(query).fetchall()]  # type: ignore[misc]


LARGE_TASK_TOML = """\
description = "bench: three large partitions, one per parameter, no time key"
keys = ["parameter"]
path = "large/{format}/parameter={parameter}.{ext}"
primary_key = ["sensors_id", "datetime"]
"""


DAILY_TASK_TOML = """\
description = "bench: one file per UTC day across all locations (time key only)"
path = "daily/{format}/{day:%Y%m%d}.{ext}"
primary_key = ["sensors_id", "datetime"]

[time]
column = "datetime"
grain = "day"
zone = "UTC"
boundary = "end"
"""


def make_project(base: Path, ds: Dataset) -> Path:
    """Copy the OpenAQ template; point it at the bench DB; explicit capture; add the 'large' task."""
    proj = base / f"proj_{ds.rows}"
    shutil.copytree(TEMPLATE, proj)
    toml = proj / "sluicegate.toml"
    text = toml.read_text()
    text, n = re.subn(r'(?m)^url = "sqlite:///measurements.db"$', f'url = "{ds.url}"', text, count=1)
    if n != 1:
        raise RuntimeError(f"could not set [source] url in {toml}")
    toml.write_text(text)
    task_toml = proj / "tasks/openaq/task.toml"
    text = task_toml.read_text()
    # Partitions are marked explicitly by the harness (see mark_all), so no triggers are needed.
    text = re.sub(r"(?ms)^\[capture\].*\Z", "", text).rstrip() + '\n\n[capture]\nmode = "explicit"\n'
    task_toml.write_text(text)
    large = proj / "tasks/large"
    large.mkdir()
    shutil.copy(proj / "tasks/openaq/select.sql", large / "select.sql")
    (large / "task.toml").write_text(LARGE_TASK_TOML)
    daily = proj / "tasks/daily"
    daily.mkdir()
    shutil.copy(proj / "tasks/openaq/select.sql", daily / "select.sql")
    (daily / "task.toml").write_text(DAILY_TASK_TOML)
    return proj


def task_partitions(conn: psycopg.Connection[Any], task: Any, order: str = "day") -> list[Any]:
    """Every partition of a bench task that has rows, in marking order."""
    from sluicegate.partitions import make_partition

    if task.name == "openaq":
        return [make_partition(task, (loc,), day, zone) for loc, day, zone in location_days(conn, order)]
    if task.name == "daily":
        days = conn.execute(
            "SELECT DISTINCT ((datetime - interval '1 microsecond') AT TIME ZONE 'UTC')::date AS day "
            "FROM measurements ORDER BY day"
        ).fetchall()
        return [make_partition(task, (), day, "UTC") for (day,) in days]
    keys = conn.execute("SELECT DISTINCT parameter FROM sensors ORDER BY 1").fetchall()
    return [make_partition(task, (k,), None, None) for (k,) in keys]


def reset_ledger(
    proj: Path, ds: Dataset, task_name: str, *, cap: int = 0, order: str = "day"
) -> tuple[int, float]:
    """Recreate the ledger from scratch and mark the task's partitions pending (the first ``cap`` if > 0).

    Returns (partitions marked, seconds). A fresh ledger per measured run makes every repeat
    start from the same state (no dead tuples from the previous run's claims and commits).
    """
    from sluicegate.config import load_project
    from sluicegate.ledger import Ledger

    started = time.perf_counter()
    project = load_project(proj, {})
    task = project.task(task_name)
    schema = project.settings.ledger_schema
    with psycopg.connect(ds.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        parts = task_partitions(conn, task, order)
    if cap:
        parts = parts[:cap]
    # One mark (one moment of change) per day or per location, as ingest or a backfill would.
    group = (lambda p: p.values[-1]) if order == "day" else (lambda p: p.values[0])
    with Ledger(project.settings.ledger_url, schema=schema) as ledger:
        ledger.ensure_schema()
        marked = sum(ledger.partitions.mark(list(g), task) for _, g in itertools.groupby(parts, key=group))
    with psycopg.connect(ds.url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}.partitions").format(sql.Identifier(schema)))
        conn.execute("CHECKPOINT")
    return marked, time.perf_counter() - started


# =========================================================================== cases


@dataclass
class Context:
    base: Path
    pg: PgServer
    ds: Dataset
    proj: Path
    dlt_status: str | None = None  # None = available, else the reason it is not
    cap: int = 0  # location-day cases: mark only the first ``cap`` location-days (0 = all)
    cap_days: int = 0  # daily cases: mark only the first ``cap_days`` days (0 = all)
    order: str = "day"
    s3: Any = None  # bench/s3cases.S3Bench while S3 cases run


def out_dir(ctx: Context, name: str) -> Path:
    path = ctx.base / "out" / f"{ctx.ds.rows}-{name}"
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def set_aside(ctx: Context, path: Path) -> None:
    """Move a case's output out of the way; ``clear_aside`` deletes it all after the size.

    Deleting 14k files right before the next case creates its 14k would measure ext4, not the
    exporter: without a journal (as on the bench VM) ext4 will not reuse an inode freed in the
    last minute or so, and allocating one scans past them. That took the client's kernel time
    from ~2 s to ~9.5 s per location-day run. A rename frees nothing.
    """
    if path.exists():
        aside = ctx.base / "aside"
        aside.mkdir(exist_ok=True)
        path.rename(aside / f"{path.name}-{time.time_ns()}")


def clear_aside(base: Path) -> None:
    shutil.rmtree(base / "aside", ignore_errors=True)


def checkpoint(ctx: Context) -> None:
    with psycopg.connect(ctx.ds.url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def case_sluicegate(ctx: Context, task: str, fmt: str, *args: str, processes: int = 1) -> Run:
    cap = {"openaq": ctx.cap, "daily": ctx.cap_days}.get(task, 0)
    marked, mark_s = reset_ledger(ctx.proj, ctx.ds, task, cap=cap, order=ctx.order)
    dest = out_dir(ctx, f"sluicegate-{task}-{fmt}")
    env = child_env(SLUICEGATE_DESTINATION__URL=str(dest), SLUICEGATE_DEFAULTS__FORMAT=fmt)
    argv = [SLUICEGATE, "-C", str(ctx.proj), "run", task, "--json", *args]
    try:
        if processes == 1:
            run, stdout = measure(argv, env=env)
            summary = json.loads(stdout)[0]
        else:
            run, summary = _measure_processes(ctx, argv, env, processes)
    except CaseFailed as exc:
        raise CaseFailed(_sluicegate_error(exc.stdout) or str(exc)) from None
    if summary["failed"] or summary["errors"]:
        raise CaseFailed(f"{summary['failed']} failed: {summary['errors'][:3]}")
    run.partitions = summary["exported"] + summary["unchanged"]
    run.rows = summary["rows"]
    run.bytes = summary["bytes"]
    run.engine_seconds = summary["seconds"]
    run.extra = {"marked": marked, "mark_seconds": round(mark_s, 3), "capped": bool(cap), "src": src_digest()}
    if run.partitions != marked:
        raise CaseFailed(f"exported {run.partitions} partitions but {marked} were marked")
    if not cap and run.rows != ctx.ds.select_rows:
        raise CaseFailed(f"exported {run.rows} rows, the select has {ctx.ds.select_rows}")
    files, _ = dir_stats(dest)
    if files != run.partitions:
        raise CaseFailed(f"{files} files in {dest}, expected {run.partitions}")
    set_aside(ctx, dest)
    return run


def _measure_processes(
    ctx: Context, argv: list[str], env: dict[str, str], processes: int
) -> tuple[Run, dict[str, Any]]:
    """``processes`` copies of ``argv`` started together (separate workers on one ledger), as one
    measured shell command; their JSON summaries added up (``seconds``: the longest)."""
    outs = [ctx.base / f"process-{i}.json" for i in range(processes)]
    cmd = " ".join(f"{shlex.join(argv)} > {shlex.quote(str(out))} & p{i}=$!;" for i, out in enumerate(outs))
    cmd += " " + " && ".join(f"wait $p{i}" for i in range(processes))
    run, _ = measure([cmd], shell=True, env=env)
    parts = [json.loads(out.read_text())[0] for out in outs]
    for out in outs:
        out.unlink()
    summary = dict(parts[0])
    for key in ("exported", "unchanged", "rows", "bytes", "failed"):
        summary[key] = sum(p[key] for p in parts)
    summary["errors"] = [e for p in parts for e in p["errors"]]
    summary["seconds"] = max(p["seconds"] for p in parts)
    return run, summary


def _sluicegate_error(stdout: str) -> str | None:
    """The first task error from ``run --json`` output, if any."""
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        errors = json.loads(stdout)[0]["errors"]
        if errors:
            return f"sluicegate: {errors[0]}"
    return None


def _select_sql() -> str:
    return (TEMPLATE / "tasks/openaq/select.sql").read_text().strip().rstrip(";")


# The total order sluicegate gives the 'large' task's rows: its key, then its primary key.
SORTED_ORDER = " ORDER BY parameter, sensors_id, datetime"


def case_copy_pigz(ctx: Context, order: str = "") -> Run:
    checkpoint(ctx)
    dest = out_dir(ctx, "copy-pigz")
    dest.mkdir()
    target = dest / "all.csv.gz"
    select = " ".join(line for line in _select_sql().splitlines() if not line.strip().startswith("--"))
    select += order
    pipeline = (
        f"psql -X -q -v ON_ERROR_STOP=1 {shlex.quote(ctx.ds.url)} "
        f"-c {shlex.quote(f'COPY ({select}) TO STDOUT (FORMAT csv, HEADER)')} "
        f"| pigz -6 -p {os.cpu_count() or 2} > {shlex.quote(str(target))}"
    )
    run, _ = measure([pipeline], shell=True, env=child_env())
    run.rows, run.partitions, run.bytes = ctx.ds.select_rows, 1, target.stat().st_size
    lines = int(
        subprocess.run(
            f"pigz -dc {shlex.quote(str(target))} | wc -l",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    if lines != ctx.ds.select_rows + 1:
        raise CaseFailed(f"COPY wrote {lines - 1} rows, the select has {ctx.ds.select_rows}")
    set_aside(ctx, dest)
    return run


def case_arrow_parquet(ctx: Context, order: str = "") -> Run:
    checkpoint(ctx)
    dest = out_dir(ctx, "arrow-parquet")
    dest.mkdir()
    target = dest / "all.parquet"
    run, stdout = measure(
        [sys.executable, __file__, "_case", "arrow-parquet", ctx.ds.url, str(target), order], env=child_env()
    )
    info = json.loads(stdout)
    run.rows, run.partitions, run.bytes = info["rows"], 1, target.stat().st_size
    if run.rows != ctx.ds.select_rows:
        raise CaseFailed(f"wrote {run.rows} rows, the select has {ctx.ds.select_rows}")
    set_aside(ctx, dest)
    return run


def case_naive(ctx: Context) -> Run:
    checkpoint(ctx)
    dest = out_dir(ctx, "naive")
    run, stdout = measure(
        [
            sys.executable,
            str(ROOT / "bench/naive_openaq.py"),
            "--url",
            ctx.ds.url,
            "--out",
            str(dest),
            "--threads",
            "6",
        ],
        env=child_env(),
    )
    info = json.loads(stdout)
    run.rows, run.partitions, run.bytes, run.engine_seconds = (
        info["rows"],
        info["partitions"],
        info["bytes"],
        info["seconds"],
    )
    if run.rows != ctx.ds.select_rows:
        raise CaseFailed(f"exported {run.rows} rows, the select has {ctx.ds.select_rows}")
    set_aside(ctx, dest)
    return run


def dlt_available() -> str | None:
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import dlt, sqlalchemy, psycopg2; "
                "from dlt.sources.sql_database import sql_table; print(dlt.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not available: {exc}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["import failed"])[-1]
        hint = "pip install 'dlt[sql_database,filesystem,parquet]' sqlalchemy psycopg2-binary"
        return f"not available: {last} ({hint})"
    return None


def case_dlt(ctx: Context) -> Run:
    if ctx.dlt_status is not None:
        raise CaseFailed(ctx.dlt_status)
    checkpoint(ctx)
    dest = out_dir(ctx, "dlt")
    dest.mkdir()
    work = ctx.base / "dlt-pipelines"
    shutil.rmtree(work, ignore_errors=True)
    env = child_env(RUNTIME__DLTHUB_TELEMETRY="false", DLT_DATA_DIR=str(ctx.base / "dlt-data"))
    run, stdout = measure(
        [sys.executable, __file__, "_case", "dlt", ctx.ds.url, str(dest), str(work)], env=env
    )
    info = json.loads(stdout)
    files, nbytes = dir_stats(dest)
    run.rows, run.partitions, run.bytes = info["rows"], files, nbytes
    run.extra = {"files": files, "version": info.get("version")}
    if run.rows != ctx.ds.select_rows:
        raise CaseFailed(f"dlt loaded {run.rows} rows, the select has {ctx.ds.select_rows}")
    set_aside(ctx, dest)
    shutil.rmtree(work, ignore_errors=True)
    return run


CASES: dict[str, Callable[[Context], Run]] = {
    "sluicegate-csv": lambda ctx: case_sluicegate(ctx, "openaq", "csv.gz"),
    "sluicegate-parquet": lambda ctx: case_sluicegate(ctx, "openaq", "parquet"),
    "sluicegate-csv-w2": lambda ctx: case_sluicegate(ctx, "openaq", "csv.gz", "--workers", "2"),
    "sluicegate-csv-w1": lambda ctx: case_sluicegate(ctx, "openaq", "csv.gz", "--workers", "1"),
    "sluicegate-csv-p2": lambda ctx: case_sluicegate(ctx, "openaq", "csv.gz", "--workers", "1", processes=2),
    "naive": case_naive,
    "copy-pigz": case_copy_pigz,
    "copy-pigz-sorted": lambda ctx: case_copy_pigz(ctx, SORTED_ORDER),
    "arrow-parquet": case_arrow_parquet,
    "arrow-parquet-sorted": lambda ctx: case_arrow_parquet(ctx, SORTED_ORDER),
    "dlt": case_dlt,
    "large-csv": lambda ctx: case_sluicegate(ctx, "large", "csv.gz"),
    "large-parquet": lambda ctx: case_sluicegate(ctx, "large", "parquet"),
    "daily-csv": lambda ctx: case_sluicegate(ctx, "daily", "csv.gz"),
    "daily-parquet": lambda ctx: case_sluicegate(ctx, "daily", "parquet"),
    **{name: (lambda ctx, name=name: _s3cases().CASES[name](ctx)) for name in S3_CASES},
}


def _s3cases() -> Any:
    import s3cases  # bench/s3cases.py (imports this module as "run")

    return s3cases


# --------------------------------------------------------------------------- in-subprocess cases


def _sub_arrow_parquet(url: str, target: str, order: str = "") -> None:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    rows = 0
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(_select_sql() + order)
        reader = cur.fetch_record_batch()
        with pq.ParquetWriter(target, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    print(json.dumps({"rows": rows}))


def _sub_dlt(url: str, dest: str, work: str) -> None:
    import dlt
    from dlt.sources.sql_database import sql_table

    credentials = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    resource = sql_table(
        credentials=credentials,
        table="bench_openaq_rows",
        backend="pyarrow",
        reflection_level="full_with_precision",
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_openaq",
        destination=dlt.destinations.filesystem(bucket_url=Path(dest).as_uri()),
        dataset_name="openaq",
        pipelines_dir=work,
    )
    info = pipeline.run(resource, loader_file_format="parquet", write_disposition="replace")
    info.raise_on_failed_jobs()
    counts = pipeline.last_trace.last_normalize_info.row_counts
    print(json.dumps({"rows": int(counts.get("bench_openaq_rows", 0)), "version": dlt.__version__}))


# =========================================================================== reporting


def summarize(runs: list[Run]) -> dict[str, Any]:
    med = statistics.median
    seconds = med(r.seconds for r in runs)
    rows = runs[0].rows or 0
    parts = runs[0].partitions or 0
    out: dict[str, Any] = {
        "n": len(runs),
        "seconds": round(seconds, 3),
        "seconds_all": [round(r.seconds, 3) for r in runs],
        "rows": rows,
        "partitions": parts,
        "bytes": runs[0].bytes,
        "rows_per_s": round(rows / seconds) if seconds else None,
        "partitions_per_s": round(parts / seconds, 1) if seconds else None,
        "max_rss_mb": round(max(r.max_rss_mb for r in runs), 1),
        "max_rss_mb_median": round(med(r.max_rss_mb for r in runs), 1),
        "total_pss_mb": round(max(r.total_pss_mb for r in runs), 1),
        "cpu_s": round(med(r.cpu_s for r in runs), 2),
        "server_cpu_s": round(med(r.server_cpu_s for r in runs), 2),
        "other_cpu_s": round(med(r.other_cpu_s for r in runs), 2),
        "best_seconds": round(min(r.seconds for r in runs), 3),
    }
    srcs = sorted({r.extra["src"] for r in runs if r.extra.get("src")})
    if srcs:
        out["src"] = srcs  # more than one: src/ changed between repeats of this case
    engine = [r.engine_seconds for r in runs if r.engine_seconds]
    if engine:
        es = med(engine)
        out["engine_seconds"] = round(es, 3)
        out["engine_rows_per_s"] = round(rows / es)
        out["engine_partitions_per_s"] = round(parts / es, 1)
    return out


def fmt_int(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    meta = results["meta"]
    lines.append(f"Run {meta['date']} on {meta['machine']}; `{meta['command']}`\n")
    lines.append(
        "| rows | case | what | files | median s (best) | files/s | rows/s | peak RSS MiB | Σ PSS MiB "
        "| client CPU s | server CPU s | other CPU s |"
    )
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in results["sizes"]:
        rows = size["dataset"]["rows"]
        for name in ALL_CASES:
            if name not in size["cases"]:
                continue
            case = size["cases"][name]
            label = f"{rows / 1e6:g}M"
            if "error" in case:
                error = re.sub(r"database postgresql://\S+: ", "", case["error"]).replace("|", "\\|")
                lines.append(f"| {label} | {name} | {DESCRIPTIONS[name]} | | | | {error} | | | | | |")
                continue
            s = case["summary"]
            what = DESCRIPTIONS[name] + (" **(capped, see notes)**" if case.get("capped") else "")
            if len(case["summary"].get("src", [])) > 1:
                what += " ‡"
            lines.append(
                f"| {label} | {name} | {what} | {fmt_int(s['partitions'])} "
                f"| {s['seconds']:.2f} ({s['best_seconds']:.2f}) "
                f"| {fmt_int(s['partitions_per_s'])} | {fmt_int(s['rows_per_s'])} | {s['max_rss_mb']:.0f} "
                f"| {s.get('total_pss_mb', 0):.0f} | {s['cpu_s']:.1f} | {s['server_cpu_s']:.1f} "
                f"| {s['other_cpu_s']:.1f} |"
            )
    lines.append("")
    lines.append(
        "| rows | load s (generate) | vacuum+analyze s | location-days | mark s (setup, not timed) |"
    )
    lines.append("|---:|---:|---:|---:|---:|")
    for size in results["sizes"]:
        ds = size["dataset"]
        mark = size["cases"].get("sluicegate-csv", {}).get("mark_seconds")
        lines.append(
            f"| {ds['rows'] / 1e6:g}M | {ds['load_seconds']:.1f} | {ds['vacuum_seconds']:.1f} "
            f"| {ds['location_days']:,} | {'–' if mark is None else f'{mark:.1f}'} |"
        )
    lines.append("")
    lines.append(
        f"Notes: medians of {meta['repeat']} runs ({meta['big_repeat']} above "
        f"{meta['slow_max_rows']:,} rows), "
        "each in a fresh process; files/s counts location-days for the "
        "per-location-day cases; wall time includes process start-up, ledger claims and commits (marking is "
        "setup, not timed); peak RSS (GNU time) is the max over runs of the largest process of the case; "
        "client CPU is user+sys of the case's processes, server CPU that of PostgreSQL during the case, "
        "other CPU the rest of "
        "the machine meanwhile (other jobs: a noise indicator; 2 cores in all). "
        f"Above {meta['slow_max_rows']:,} rows naive and dlt are skipped, the location-day cases export only "
        f"the first {meta['cap_partitions']:,} location-days (oldest first) and the daily cases only the "
        f"first {meta['cap_days']} days (**capped** rows). Location-days are marked in "
        f"{meta['mark_order']!r} order.\n"
    )
    lines.append(
        f"src/ hash at start: `{meta['versions'].get('src_sha256')}` (git {meta['versions'].get('git')}); "
        "‡ = src/ "
        "changed between the repeats of this case (others edit src/ concurrently), so its runs measured "
        "different code.\n"
    )
    lines.append("Targets:\n")
    for line in results["targets"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def _best(summary: dict[str, Any], what: str) -> float:
    """Rate of the fastest run (``what`` = "rows" or "partitions"), robust to one noisy repeat."""
    best = summary.get("best_seconds") or summary["seconds"]
    return float(summary[what] or 0) / best if best else 0.0


def targets(results: dict[str, Any]) -> list[str]:
    out = []

    def get(size: dict[str, Any], case: str) -> dict[str, Any] | None:
        c = size["cases"].get(case)
        return c["summary"] if c and "summary" in c else None

    for size in results["sizes"]:
        label = f"{size['dataset']['rows'] / 1e6:g}M rows"
        a = get(size, "sluicegate-csv")
        if a:
            ok = "MET" if a["partitions_per_s"] >= 2000 else "NOT MET"
            out.append(
                f"{label}: sluicegate csv.gz at defaults {a['partitions_per_s']:,.0f} location-days/s "
                f"(best run {_best(a, 'partitions'):,.0f}/s; issue 16's target ≥ 2,000: {ok}); engine-only "
                f"{a.get('engine_partitions_per_s', 0):,.0f}/s"
            )
        w = get(size, "sluicegate-csv-w2")
        if w:
            ok = "MET" if w["partitions_per_s"] >= 1000 else "NOT MET"
            out.append(
                f"{label}: sluicegate csv.gz with --workers 2 {w['partitions_per_s']:,.0f} location-days/s "
                f"(best run {_best(w, 'partitions'):,.0f}/s; target ≥ 1,000: {ok})"
            )
        b = get(size, "sluicegate-parquet")
        if b:
            out.append(
                f"{label}: sluicegate Parquet {b['partitions_per_s']:,.0f} location-days/s end to end "
                f"(best run {_best(b, 'partitions'):,.0f}/s)"
            )
        out += _round_two_targets(label, size)
        n = get(size, "naive")
        if a and n:
            out.append(
                f"{label}: sluicegate csv.gz ÷ naive OpenAQ (location-days/s) = "
                f"{a['partitions_per_s'] / n['partitions_per_s']:.2f}×"
            )
        # Issue 16: at least 0.9x of a limit in the same (sorted) order, 0.7x of an unsorted one.
        for big, limit, target_name, target in (
            ("large-csv", "copy-pigz", "COPY|pigz", 0.7),
            ("large-csv", "copy-pigz-sorted", "COPY|pigz in sluicegate's order", 0.9),
            ("large-parquet", "arrow-parquet", "Arrow→Parquet", 0.7),
            ("large-parquet", "arrow-parquet-sorted", "Arrow→Parquet in sluicegate's order", 0.9),
            ("daily-csv", "copy-pigz", "COPY|pigz", 0.7),
            ("daily-parquet", "arrow-parquet", "Arrow→Parquet", 0.7),
        ):
            g, lim = get(size, big), get(size, limit)
            error = re.sub(r"database postgresql://\S+: ", "", size["cases"].get(big, {}).get("error") or "")
            if error:
                out.append(f"{label}: {big} ÷ {target_name}: not measured, {big} {error}")
            if g and lim:
                ratio = g["rows_per_s"] / lim["rows_per_s"]
                best = _best(g, "rows") / _best(lim, "rows")
                ok = "MET" if ratio >= target else "NOT MET"
                out.append(
                    f"{label}: large partitions {big} {g['rows_per_s']:,} rows/s ÷ {target_name} "
                    f"{lim['rows_per_s']:,} rows/s = {ratio:.2f} (best runs: {best:.2f}; "
                    f"target ≥ {target}: {ok})"
                )
    sizes = results["sizes"]
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for case in (
            "sluicegate-csv",
            "sluicegate-parquet",
            "large-csv",
            "large-parquet",
            "daily-csv",
            "daily-parquet",
        ):
            a, b = get(lo, case), get(hi, case)
            if a and b:
                growth = b["max_rss_mb"] / a["max_rss_mb"]
                ok = "MET" if growth <= 1.15 else "NOT MET"
                out.append(
                    f"peak RSS {case}: {a['max_rss_mb']:.0f} MiB at {lo['dataset']['rows'] / 1e6:g}M → "
                    f"{b['max_rss_mb']:.0f} MiB at {hi['dataset']['rows'] / 1e6:g}M = {growth:.2f}× "
                    f"(target flat, ≤ 1.15×: {ok})"
                )
    return out


def _round_two_targets(label: str, size: dict[str, Any]) -> list[str]:
    """Issue 16's targets: Parquet ÷ csv.gz, peak RSS of the location-day cases, S3."""
    cases = size["cases"]
    get = {name: c["summary"] for name, c in cases.items() if "summary" in c}.get
    out = []
    a, b = get("sluicegate-csv"), get("sluicegate-parquet")
    if a and b:
        ratio = b["partitions_per_s"] / a["partitions_per_s"]
        best = _best(b, "partitions") / _best(a, "partitions")
        ok = "MET" if ratio >= 0.8 else "NOT MET"
        out.append(
            f"{label}: Parquet ÷ csv.gz (location-days/s) = {ratio:.2f}× "
            f"(best runs: {best:.2f}×; target ≥ 0.8: {ok})"
        )
    for case in ("sluicegate-csv", "sluicegate-csv-w2", "sluicegate-csv-w1", "sluicegate-csv-p2"):
        r = get(case)
        if r:
            ok = "MET" if r["max_rss_mb"] <= 150 else "NOT MET"
            out.append(
                f"{label}: peak RSS {case} {r['max_rss_mb']:.0f} MiB (largest process; target ≤ 150: {ok}), "
                f"all its processes' PSS together {r.get('total_pss_mb', 0):.0f} MiB"
            )
    # The endpoint's limit: the faster of raw boto3 PUTs (best thread count) and raw CRT PUTs.
    limits = [(n, get(n)) for n in ("s3-put-limit", "s3-put-limit-crt") if get(n)]
    put_name, put = max(limits, key=lambda one: one[1]["partitions_per_s"]) if limits else ("", None)
    far = get("sluicegate-s3-csv-30ms")
    threads = ((cases.get("s3-put-limit", {}).get("runs") or [{}])[0]).get("extra", {}).get("threads")
    how = f"{threads} threads" if put_name == "s3-put-limit" else "awscrt, 64 in flight"
    for name, got in (("csv.gz", get("sluicegate-s3-csv")), ("Parquet", get("sluicegate-s3-parquet"))):
        if got and put:
            ratio = got["partitions_per_s"] / put["partitions_per_s"]
            ok = "MET" if ratio >= 0.8 else "NOT MET"
            out.append(
                f"{label}: S3 {name} {got['partitions_per_s']:,.0f} location-days/s ÷ the endpoint's "
                f"PUT limit {put['partitions_per_s']:,.0f} files/s ({how}) = {ratio:.2f}× "
                f"(target ≥ 0.8: {ok})"
            )
        if got and a and name == "csv.gz":
            local = got["partitions_per_s"] / a["partitions_per_s"]
            out.append(f"{label}: S3 csv.gz ÷ local csv.gz = {local:.2f}×")
    if far:
        ok = "MET" if far["partitions_per_s"] >= 500 else "NOT MET"
        out.append(
            f"{label}: S3 csv.gz with 30 ms per request {far['partitions_per_s']:,.0f} location-days/s "
            f"(target ≥ 500: {ok})"
        )
    return out


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def src_digest() -> str:
    """A short hash of src/ as measured (others edit src/ concurrently; git HEAD is not enough)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def versions(pg: PgServer) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "postgresql": pg.version()}
    for name in ("sluicegate", "psycopg", "pyarrow", "adbc-driver-postgresql", "dlt", "sqlalchemy"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True
        ).stdout.strip()
        out["git"] = rev + (" (src/ modified)" if dirty else "")
    out["src_sha256"] = src_digest()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["pigz"] = (
            subprocess.run(["pigz", "--version"], capture_output=True, text=True).stderr.strip()
            or subprocess.run(["pigz", "--version"], capture_output=True, text=True).stdout.strip()
        )
    return out


# =========================================================================== main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sluicegate benchmark (see bench/README.md)")
    p.add_argument("--rows", type=int, help="a single size (same as --sizes N)")
    p.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; medians are reported")
    p.add_argument(
        "--big-repeat",
        type=int,
        default=2,
        help="runs per case at sizes above --slow-max-rows (keeps the default run near 25 minutes)",
    )
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"subset of: {', '.join(ALL_CASES)}")
    p.add_argument(
        "--slow-max-rows",
        type=int,
        default=1_000_000,
        help="run the slow peers (naive, dlt) only at sizes up to this many rows",
    )
    p.add_argument(
        "--cap-partitions",
        type=int,
        default=10_000,
        help="above --slow-max-rows, the per-location-day sluicegate cases mark and export only the "
        "first N location-days (oldest first); 0 = all",
    )
    p.add_argument(
        "--cap-days",
        type=int,
        default=14,
        help="above --slow-max-rows, the daily cases mark and export only the first N days; 0 = all",
    )
    p.add_argument(
        "--mark-order",
        choices=sorted(MARK_ORDERS),
        default="day",
        help="order in which location-days are marked, hence batched (default: day, i.e. steady ingest)",
    )
    p.add_argument("--locations", type=int, help="locations per size (default: 300 × sqrt(rows / 1M))")
    p.add_argument("--out", type=Path, help="results file stem (default bench/results/bench-<timestamp>)")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only re-render the Markdown of an earlier results .json (no measuring)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temp folder (and stop the server) at the end"
    )
    args = p.parse_args(argv)
    args.size_list = (
        [args.rows] if args.rows else [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    )
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.case_list) - set(ALL_CASES)
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def render(path: Path) -> int:
    """Re-render ``path`` (.json) to Markdown with the current report code."""
    results = json.loads(path.read_text())
    results["targets"] = targets(results)
    md = markdown(results)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path.with_suffix('.md')}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    command = " ".join(
        shlex.quote(a)
        for a in [
            os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
            "bench/run.py",
            *argv,
        ]
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = args.out or RESULTS / f"bench-{stamp}"
    stem = stem.with_suffix("") if stem.suffix in (".md", ".json") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    base = Path(tempfile.mkdtemp(prefix="sluicegate-bench-", dir="/tmp"))
    os.chmod(base, 0o755)  # the postgres user must traverse it
    pg = PgServer(base)
    s3 = None
    results: dict[str, Any] = {"sizes": []}
    started = time.perf_counter()
    try:
        pg.start()
        global _SERVER
        _SERVER = pg
        log(f"PostgreSQL started on 127.0.0.1:{pg.port} (data {pg.data}); command: {command}")
        results["meta"] = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "command": command,
            "repeat": args.repeat,
            "big_repeat": args.big_repeat,
            "mark_order": args.mark_order,
            "slow_max_rows": args.slow_max_rows,
            "cap_partitions": args.cap_partitions,
            "cap_days": args.cap_days,
            "pg_settings": PG_SETTINGS,
            "versions": versions(pg),
        }
        dlt_status = dlt_available() if "dlt" in args.case_list else None
        if set(args.case_list) & set(S3_CASES):
            s3 = _s3cases().start(base)
        for rows in args.size_list:
            ds = load(pg, rows, args.locations or locations_for(rows))
            ctx = Context(
                base=base,
                pg=pg,
                ds=ds,
                proj=make_project(base, ds),
                dlt_status=dlt_status,
                cap=args.cap_partitions if rows > args.slow_max_rows else 0,
                cap_days=args.cap_days if rows > args.slow_max_rows else 0,
                order=args.mark_order,
                s3=s3,
            )
            size: dict[str, Any] = {"dataset": asdict(ds), "cases": {}}
            results["sizes"].append(size)
            cases = [c for c in args.case_list if not (c in ("naive", "dlt") and rows > args.slow_max_rows)]
            for skipped in sorted(set(args.case_list) - set(cases)):
                size["cases"][skipped] = {
                    "error": f"skipped above {args.slow_max_rows:,} rows (--slow-max-rows)"
                }
            runs: dict[str, list[Run]] = {c: [] for c in cases}
            repeat = args.repeat if rows <= args.slow_max_rows else min(args.repeat, args.big_repeat)
            size["repeat"] = repeat
            for rep in range(repeat):  # round-robin, so slow drift affects every case alike
                for name in cases:
                    if "error" in size["cases"].get(name, {}):
                        continue
                    try:
                        run = CASES[name](ctx)
                    except CaseFailed as exc:
                        size["cases"][name] = {"error": f"failed: {str(exc).splitlines()[0][:300]}"}
                        log(f"{rows:,} {name} #{rep + 1}: FAILED {exc}")
                        continue
                    runs[name].append(run)
                    log(
                        f"{rows:,} {name} #{rep + 1}: {run.seconds:.2f}s, {run.partitions} files, "
                        f"{(run.rows or 0) / run.seconds:,.0f} rows/s, "
                        f"{(run.partitions or 0) / run.seconds:,.1f} files/s, "
                        f"peak RSS {run.max_rss_mb:.0f} MiB"
                    )
            for name, case_runs in runs.items():
                if case_runs and "error" not in size["cases"].get(name, {}):
                    entry: dict[str, Any] = {
                        "summary": summarize(case_runs),
                        "runs": [asdict(r) for r in case_runs],
                    }
                    entry["capped"] = any(r.extra.get("capped") for r in case_runs)
                    marks = [r.extra.get("mark_seconds") for r in case_runs if r.extra.get("mark_seconds")]
                    if marks:
                        entry["mark_seconds"] = statistics.median(marks)
                    size["cases"][name] = entry
            with psycopg.connect(pg.url(), autocommit=True) as conn:  # free the disk and page cache
                conn.execute(f"DROP DATABASE IF EXISTS {ds.dbname}")
            clear_aside(base)
    except KeyboardInterrupt:
        log("interrupted; stopping")
        raise
    finally:
        if s3 is not None:
            _s3cases().stop(s3)
        pg.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept {base}")
    results["meta"]["total_seconds"] = round(time.perf_counter() - started, 1)
    results["targets"] = targets(results)
    md = markdown(results)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"command: {command}")
    print(
        f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')} "
        f"in {results['meta']['total_seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("run", sys.modules[__name__])  # bench/s3cases.py imports it by that name
    if len(sys.argv) > 1 and sys.argv[1] == "_case":
        {"arrow-parquet": _sub_arrow_parquet, "dlt": _sub_dlt}[sys.argv[2]](*sys.argv[3:])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
