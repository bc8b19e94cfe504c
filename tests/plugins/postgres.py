"""A throwaway PostgreSQL server for the tests: ``pg_server`` (session) and ``pg_url`` (a fresh database).

The server starts lazily, from the machine's ``initdb``/``pg_ctl`` (as the ``postgres`` OS user
when the tests run as root), on 127.0.0.1 and a free port, and is stopped at the end of the
session. Without PostgreSQL binaries the tests that need it skip loudly, or fail under CI=true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from plugins.common import (
    START_ATTEMPTS,
    STARTUP_SECONDS,
    free_ports,
    log_excerpt,
    port_in_use,
    read_from,
    running_as_root,
    service_unavailable,
)

PG_USER = (
    "exporter"  # not "sluicegate": a role named like the ledger schema would see it first on its search_path
)
PG_PASSWORD = "s3cr3t-pw"
PG_MIN_MAJOR = 13
PG_OS_USER = "postgres"
PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "200",
    "max_prepared_transactions": "10",  # a test holds one open (two-phase commit)
    "password_encryption": "scram-sha-256",
    "log_connections": "on",
}


@dataclasses.dataclass(frozen=True)
class PgServer:
    """A running throwaway PostgreSQL cluster."""

    bindir: Path
    major_version: int
    base_dir: Path
    host: str
    port: int
    user: str
    password: str

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """Server log (``log_connections=on``); tests may grep it for leaked secrets."""
        return self.base_dir / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"


def _pg_major_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _pg_bindir_candidates() -> list[Path]:
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return list(dict.fromkeys(candidates))


def _find_pg_bindir() -> tuple[Path, int]:
    """Highest PostgreSQL >= PG_MIN_MAJOR with initdb, pg_ctl and postgres in one bindir."""
    found: list[tuple[int, Path]] = []
    for bindir in _pg_bindir_candidates():
        if not all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            continue
        major = _pg_major_version(bindir)
        if major is not None and major >= PG_MIN_MAJOR:
            found.append((major, bindir))
    if not found:
        service_unavailable(
            f"no PostgreSQL >= {PG_MIN_MAJOR} server binaries (initdb, pg_ctl, postgres) found in "
            "/usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH"
        )
    major, bindir = max(found)
    return bindir, major


@dataclasses.dataclass(frozen=True)
class _PgRunAs:
    """How to run initdb/pg_ctl: as root they must run as (and own files of) the `postgres` user."""

    prefix: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None


def _pg_run_as() -> _PgRunAs:
    if not running_as_root():
        return _PgRunAs()
    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        service_unavailable(f"running as root but there is no {PG_OS_USER!r} OS user to run PostgreSQL as")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        service_unavailable("running as root but `runuser` (util-linux) is not available")
    return _PgRunAs((runuser, "-u", PG_OS_USER, "--"), account.pw_uid, account.pw_gid)


class _PgCluster:
    """initdb / pg_ctl driver for one cluster in its own temp dir."""

    def __init__(self, bindir: Path, base_dir: Path, run_as: _PgRunAs) -> None:
        self.bindir = bindir
        self.base_dir = base_dir
        self.run_as = run_as
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "sock"
        self.log_path = base_dir / "server.log"

    def _own(self, path: Path) -> None:
        if self.run_as.uid is not None and self.run_as.gid is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def initdb(self) -> None:
        self._own(self.base_dir)
        self.socket_dir.mkdir(mode=0o700)
        self._own(self.socket_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            result = self._run(
                str(self.bindir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={PG_USER}",  # bootstrap superuser
                f"--pwfile={pwfile}",
                "--auth-local=trust",  # unix socket lives in a private 0700 dir
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            pytest.fail(
                f"initdb failed (rc={result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'sluicegate_test.conf'\n")

    def start(self, port: int) -> bool:
        """Start on ``port``; False if the port was taken, pytest.fail on any other error."""
        settings = {**PG_SETTINGS, "port": str(port), "unix_socket_directories": f"'{self.socket_dir}'"}
        conf = self.data_dir / "sluicegate_test.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        self._own(conf)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        result = self._run(
            str(self.bindir / "pg_ctl"), "start", "--wait", "--timeout=60",
            f"--pgdata={self.data_dir}", f"--log={self.log_path}",
        )  # fmt: skip
        if result.returncode == 0:
            return True
        self.stop()  # in case pg_ctl gave up waiting on a server that is still coming up
        if port_in_use(read_from(self.log_path, offset)):
            return False
        pytest.fail(
            f"PostgreSQL failed to start (pg_ctl rc={result.returncode}):\n{result.stdout}{result.stderr}\n"
            f"--- {self.log_path.name} ---\n{log_excerpt(self.log_path)}",
            pytrace=False,
        )

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        for mode in ("fast", "immediate"):
            result = self._run(
                str(self.bindir / "pg_ctl"), "stop", "--wait", "--timeout=30", f"--mode={mode}",
                f"--pgdata={self.data_dir}",
            )  # fmt: skip
            if result.returncode == 0 or not (self.data_dir / "postmaster.pid").exists():
                return

    def crash(self) -> None:
        """Stop at once (``-m immediate``: every backend killed, no checkpoint), as a crash would."""
        result = self._run(
            str(self.bindir / "pg_ctl"), "stop", "--wait", "--timeout=30", "--mode=immediate",
            f"--pgdata={self.data_dir}",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


def _init_and_start(cluster: _PgCluster) -> int:
    """Create ``cluster`` and start it on a free port, which it returns (a port taken meanwhile
    by another process is retried)."""
    cluster.initdb()
    for _ in range(START_ATTEMPTS):
        port = free_ports(1)[0]
        if cluster.start(port):
            return port
    pytest.fail(f"PostgreSQL could not bind a free port in {START_ATTEMPTS} attempts", pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Throwaway PostgreSQL cluster on 127.0.0.1:<free port>; password auth required over TCP."""
    bindir, major = _find_pg_bindir()
    run_as = _pg_run_as()
    started = time.perf_counter()
    # /tmp explicitly when root: the `postgres` user must be able to traverse the parent dir.
    base_dir = Path(tempfile.mkdtemp(prefix="sluicegate-pg-", dir="/tmp" if running_as_root() else None))
    cluster = _PgCluster(bindir, base_dir, run_as)
    try:
        port = _init_and_start(cluster)
        STARTUP_SECONDS[f"postgresql {major}"] = time.perf_counter() - started
        yield PgServer(bindir, major, base_dir, "127.0.0.1", port, PG_USER, PG_PASSWORD)
    finally:
        cluster.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture
def own_pg_server(pg_server: PgServer) -> Iterator[tuple[PgServer, _PgCluster]]:
    """A PostgreSQL cluster of the test's own (the session's binaries), which it may stop
    (``cluster.crash()``) and start again (``cluster.start(port)``); stopped and removed after.
    Its ``postgres`` database commits synchronously, so a commit survives ``crash()``."""
    base_dir = Path(tempfile.mkdtemp(prefix="sluicegate-own-pg-", dir="/tmp" if running_as_root() else None))
    cluster = _PgCluster(pg_server.bindir, base_dir, _pg_run_as())
    try:
        port = _init_and_start(cluster)
        server = dataclasses.replace(pg_server, base_dir=base_dir, port=port)
        with psycopg.connect(server.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute("ALTER DATABASE postgres SET synchronous_commit = on")  # commits survive crash()
        yield server, cluster
    finally:
        cluster.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_password() -> str:
    return PG_PASSWORD


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, empty database ``test_<uuid hex>``; dropped (WITH FORCE) afterwards."""
    dbname = f"test_{uuid.uuid4().hex}"
    admin_url = pg_server.url("postgres")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    yield pg_server.url(dbname)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
