"""Smoke tests for the test infrastructure itself (fixtures in conftest.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from plugins.postgres import PgServer
from plugins.s3 import S3Service


def test_pg_url_connects_and_is_fresh(pg_url: str, pg_password: str) -> None:
    assert pg_password in pg_url
    dbname = pg_url.rsplit("/", 1)[1]
    assert dbname.startswith("test_")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == (dbname,)
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (True,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)


def test_pg_server_settings(pg_server: PgServer, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        for name, expected in [
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("synchronous_commit", "off"),
            ("max_connections", "200"),
            ("password_encryption", "scram-sha-256"),
        ]:
            assert conn.execute(f"SHOW {name}").fetchone() == (expected,), name
    assert pg_server.major_version >= 13
    assert pg_server.log_path.exists()


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_pg_requires_password(
    pg_url: str, password: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # libpq would otherwise fall back to these
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    params = conninfo_to_dict(pg_url)
    params.pop("password")
    if password is not None:
        params["password"] = password
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(make_conninfo("", **params), connect_timeout=10)


def test_env_is_scrubbed() -> None:
    leaked = [
        name
        for name in os.environ
        if name.startswith(("SLUICEGATE_", "DATABASE_"))
        or name in {"LIMIT", "WRITE_FILE_LOCATION", "WRITE_FILE_FORMAT", "OPEN_DATA_BUCKET"}
        or name in {"LOCAL_SAVE_DIRECTORY", "LOG_LEVEL"}
    ]
    assert leaked == []


def test_moto_put_get(s3_bucket: tuple[str, str], moto_s3: S3Service) -> None:
    endpoint_url, bucket = s3_bucket
    assert endpoint_url == moto_s3.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    client = moto_s3.client()
    try:
        client.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello moto")
        body = client.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read()
    finally:
        client.close()
    assert body == b"hello moto"


def test_seaweed_put_get_with_sha256(
    seaweed_bucket: tuple[str, str, str, str], seaweed_s3: S3Service
) -> None:
    endpoint_url, bucket, key, secret = seaweed_bucket
    assert (endpoint_url, key, secret) == (
        seaweed_s3.endpoint_url,
        seaweed_s3.access_key,
        seaweed_s3.secret_key,
    )
    payload = uuid.uuid4().bytes * 1000
    client = seaweed_s3.client()
    try:
        client.put_object(Bucket=bucket, Key="dir/blob.bin", Body=payload, ChecksumAlgorithm="SHA256")
        response = client.get_object(Bucket=bucket, Key="dir/blob.bin", ChecksumMode="ENABLED")
        body = response["Body"].read()
    finally:
        client.close()
    assert body == payload


@pytest.mark.parametrize("bad", ["secret", "access_key"])
def test_seaweed_rejects_bad_credentials(
    seaweed_bucket: tuple[str, str, str, str], seaweed_s3: S3Service, bad: str
) -> None:
    _, bucket, _, _ = seaweed_bucket
    if bad == "secret":
        client = seaweed_s3.client(secret_key="not-the-secret")
        expected = "SignatureDoesNotMatch"
    else:
        client = seaweed_s3.client(access_key="NO-SUCH-KEY")
        expected = "InvalidAccessKeyId"
    try:
        with pytest.raises(ClientError) as excinfo:
            client.put_object(Bucket=bucket, Key="nope.txt", Body=b"x")
    finally:
        client.close()
    assert excinfo.value.response["Error"]["Code"] == expected
