"""Zombie workers: a worker stopped (SIGSTOP) past its lease, then continued (SIGCONT), after
another worker exported a newer version, must not put its older file in place, and its commit
must change nothing. Real processes, a real ledger (SQLite and PostgreSQL), a real folder and
a real S3 endpoint (SeaweedFS, which honours conditional writes; and the same endpoint behind
a proxy that strips the conditions, which sluicegate must detect and still fence).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from sluicegate import operations
from support import SLUICEGATE, Db, cli, files, hours, load, write_project

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)
KEY = "records/csv.gz/locationid=1/year=2024/month=01/location-1-20240101.csv.gz"
NEW_VALUE = 99.25


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    value: str = request.getfixturevalue("pg_url")
    return value


def _project(tmp_path: Path, url: str, destination: str, extra: str = "") -> tuple[Path, Db]:
    root = write_project(
        tmp_path / "proj", source=url, destination=destination, fmt="csv.gz", lease="2s",
        destination_extra=extra,
    )  # fmt: skip
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(DAY, 24))
    return root, db


def _spawn(root: Path, fault: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    if fault:
        env["SLUICEGATE_TESTING__FAULT"] = fault
    return subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip


def _stall(root: Path, point: str) -> subprocess.Popen[str]:
    """A worker that reached ``point`` and was then stopped: a zombie in the making."""
    proc = _waiting_at(root, point)
    proc.send_signal(signal.SIGSTOP)
    return proc


def _waiting_at(root: Path, point: str) -> subprocess.Popen[str]:
    """A worker that reached ``point`` and waits there (alive: its leases are renewed)."""
    proc = _spawn(root, point)
    marker = root / f".fault-{point}"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{marker} did not appear"
        time.sleep(0.05)
    return proc


def _resume(proc: subprocess.Popen[str], root: Path, point: str) -> dict[str, Any]:
    """SIGCONT the zombie and let it finish; return its run summary."""
    (root / f".fault-{point}").unlink()
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    [summary] = json.loads(out)
    return dict(summary)


def _newer_version_exported_by_another_worker(root: Path, db: Db) -> dict[str, Any]:
    """While the zombie is stopped: a late change, the zombie's lease runs out, a second worker
    exports the newer version and commits it."""
    db.update_value(1, DAY + dt.timedelta(hours=5), NEW_VALUE)
    time.sleep(2.5)  # the zombie's 2 s lease expires
    second = _spawn(root)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    [summary] = json.loads(out)
    assert summary["exported"] == 1, summary
    return dict(summary)


def _values(data: bytes) -> set[str]:
    lines = gzip.decompress(data).decode().splitlines()
    column = lines[0].split(",").index("value")
    return {line.split(",")[column] for line in lines[1:]}


def _ledger_row(db: Db, url: str) -> tuple[Any, ...]:
    table = "sluicegate_partitions" if url.startswith("sqlite") else "sluicegate.partitions"
    return tuple(
        db.rows(f"SELECT version, exported_version, claim_token, checksum, etag, attempts FROM {table}")[0]
    )


def test_a_zombie_never_renames_its_older_file_over_the_newer_one(tmp_path: Path, source_url: str) -> None:
    out = tmp_path / "out"
    root, db = _project(tmp_path, source_url, str(out))
    zombie = _stall(root, "mid_write")  # it has read the old rows and is writing them
    _newer_version_exported_by_another_worker(root, db)
    [path] = files(out)
    newer = path.read_bytes()
    assert str(NEW_VALUE) in _values(newer)
    row = _ledger_row(db, source_url)
    summary = _resume(zombie, root, "mid_write")
    assert (summary["exported"], summary["lost"], summary["failed"]) == (0, 1, 0), summary
    assert path.read_bytes() == newer, "the zombie put its older file in place"
    assert _ledger_row(db, source_url) == row, "the zombie's commit changed the ledger"
    assert row[0] == row[1] and row[2] is None and row[3] == hashlib.sha256(newer).hexdigest()
    left = [
        p
        for p in out.rglob("*")
        if p.is_file() and not {"_manifests", "_sluicegate"} & set(p.relative_to(out).parts)
    ]
    assert left == [path], "temp files left behind"


def _claims(root: Path) -> tuple[int, int, float | None, str]:
    """``status``'s claimed partitions, those not renewed for over half the lease, when the last of
    their leases ends, and the text line."""
    [row] = json.loads(cli(root, "status", "--json", check=True).stdout)
    return row["claimed"], row["stale_claims"], row["stale_claims_end_in"], cli(root, "status", check=True).stdout


def test_status_tells_the_claims_of_a_stopped_worker_from_those_of_a_running_one(
    tmp_path: Path, source_url: str
) -> None:
    """A claim whose worker no longer renews it (stopped, or killed) is still "claimed" until its
    lease ends; status says so, and when it is taken over, and not of a live worker's claim."""
    root, _db = _project(tmp_path, source_url, str(tmp_path / "out"))
    (root / "sluicegate.toml").write_text((root / "sluicegate.toml").read_text().replace('"2s"', '"12s"'))
    worker = _waiting_at(root, "mid_write")
    time.sleep(7)  # past half the lease: a claim not renewed since it was made would be stale
    claimed, stale, _end, line = _claims(root)
    assert (claimed, stale) == (1, 0), line  # alive at its fault point, renewing every 4 s
    assert "stopped or died" not in line
    worker.send_signal(signal.SIGSTOP)
    time.sleep(6.5)  # its last renewal, at most 4 s ago when stopped, is now over 6 s old
    claimed, stale, end, line = _claims(root)
    assert (claimed, stale) == (1, 1), line
    assert end is not None and 0 <= end <= 5.6, end
    assert "1 of the claimed not renewed for over half the lease: their worker stopped or died" in line
    summary = _resume(worker, root, "mid_write")
    assert summary["exported"] + summary["lost"] == 1, summary
    claimed, stale, end, line = _claims(root)
    assert (claimed, stale, end) == (0, 0, None), line


def _s3(endpoint: str, key: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


@pytest.mark.parametrize("point", ["mid_write", "before_place"])
def test_a_zombie_upload_never_replaces_the_newer_object(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], point: str
) -> None:
    """mid_write: the zombie uploads after the newer object exists (its If-None-Match/If-Match
    is refused by the store). before_place: the zombie's upload landed first; the second worker
    finds it, and, holding the claim, overwrites it; the zombie's commit then changes nothing."""
    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root, db = _project(tmp_path, url, f"s3://{bucket}", extra)
    client = _s3(endpoint, key, secret)
    zombie = _stall(root, point)
    _newer_version_exported_by_another_worker(root, db)
    newer = client.get_object(Bucket=bucket, Key=KEY)
    body = newer["Body"].read()
    assert str(NEW_VALUE) in _values(body)
    row = _ledger_row(db, url)
    assert row[4] == newer["ETag"], "the ledger records the object's ETag"
    summary = _resume(zombie, root, point)
    assert (summary["exported"], summary["lost"], summary["failed"]) == (0, 1, 0), summary
    after = client.get_object(Bucket=bucket, Key=KEY)
    assert after["Body"].read() == body and after["ETag"] == newer["ETag"]
    assert _ledger_row(db, url) == row


def test_an_endpoint_that_ignores_conditions_is_detected_and_still_fenced(
    tmp_path: Path,
    seaweed_bucket: tuple[str, str, str, str],
    fault_proxy: Callable[[str], Any],
) -> None:
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    proxy.strip_conditional_headers(True, resign_secret=secret)
    extra = f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root, db = _project(tmp_path, url, f"s3://{bucket}", extra)
    check = cli(root, "check")
    assert check.returncode == 0, check.stderr
    assert "ignores conditional writes" in check.stderr
    client = _s3(endpoint, key, secret)
    zombie = _stall(root, "mid_write")
    _newer_version_exported_by_another_worker(root, db)
    body = client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
    summary = _resume(zombie, root, "mid_write")
    assert (summary["exported"], summary["lost"]) == (0, 1), summary
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == body
    assert str(NEW_VALUE) in _values(body)


@pytest.mark.parametrize("status", [501, 400])
def test_an_endpoint_that_refuses_conditional_headers_is_detected_and_exports(
    tmp_path: Path,
    seaweed_bucket: tuple[str, str, str, str],
    fault_proxy: Callable[[str], Any],
    status: int,
) -> None:
    """A store that answers a conditional PUT with 501 NotImplemented (as AWS did before it had
    conditional writes) or 400, instead of ignoring the header: its first probe PUT failed as
    "NotImplemented; will retry", so every partition failed until parked."""
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    proxy.fail(
        "PUT", r"\.sluicegate-probe-", status=status, times=None, code="NotImplemented", conditional=True
    )
    extra = f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root, _db = _project(tmp_path, url, f"s3://{bucket}", extra)
    check = cli(root, "check")
    assert check.returncode == 0, check.stderr
    assert "ignores conditional writes" in check.stderr, check.stderr
    run = cli(root, "run", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    [summary] = json.loads(run.stdout)
    assert (summary["exported"], summary["failed"]) == (1, 0), summary
    assert _s3(endpoint, key, secret).get_object(Bucket=bucket, Key=KEY)["ContentLength"] > 0


def test_a_zombie_upload_never_lands_after_its_partition_was_emptied(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    """The zombie stalls before its first upload (If-None-Match: *); the rows are deleted and a
    second worker commits the partition with no file. The zombie's upload must not land then."""
    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root, db = _project(tmp_path, url, f"s3://{bucket}", extra)
    client = _s3(endpoint, key, secret)
    zombie = _stall(root, "mid_write")
    db.conn.execute("DELETE FROM measurements")
    time.sleep(2.5)  # the zombie's 2 s lease expires
    second = _spawn(root)
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    # The second worker committed the delete (version 2) with no file.
    assert db.rows("SELECT path, exported_version FROM sluicegate_partitions") == [(None, 2)]
    since = dt.datetime.now(UTC).isoformat()
    summary = _resume(zombie, root, "mid_write")
    assert summary["lost"] == 1, summary
    # Its upload landed (If-None-Match: * on a missing object): the zombie queued the partition
    # again, so a run deletes the object and lists the deletion: the zombie's own next claim (its
    # lone claim is committed, or lost, before it claims again), or else the next run.
    third = _spawn(root)
    _out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    listed = client.list_objects_v2(Bucket=bucket, Prefix="records/").get("Contents", [])
    assert listed == [], "the zombie's object stayed for a partition with no rows"
    assert db.rows("SELECT path, version = exported_version FROM sluicegate_partitions") == [(None, 1)]
    changes = json.loads(cli(root, "changes", "--since", since, "--json", check=True).stdout)
    assert [(c["path"], c["action"]) for c in changes] == [(KEY, "deleted")]
