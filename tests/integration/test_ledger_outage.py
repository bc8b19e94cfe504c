"""The ledger unreachable after the files were put in place and before the commit.

A real worker process exports through a TCP relay in front of PostgreSQL (the source and the
ledger), and pauses at the fault point ``after_publish``: its files are in place (renamed on
disk, uploaded to SeaweedFS), the ledger transaction that holds the claims is open, nothing
is committed. The test then cuts the database off (``TcpProxy.down``: every connection reset,
new ones refused) and lets the worker go on. Either the database comes back while the worker
waits for it, and the same run commits; or the worker dies meanwhile, and the next run, once
the lease has run out, exports the partition again to the same object: same bytes, one
object, and a change made during the outage is exported too (no version lost).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from test_workers import _spawn, _wait_for

from sluicegate import operations
from support import Db, hours, load, write_project

if TYPE_CHECKING:
    from plugins.tcpproxy import TcpProxy

pytestmark = pytest.mark.pg

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)
KEY = "records/csv.gz/locationid=1/year=2024/month=01/location-1-20240101.csv.gz"
NEW_VALUE = 77.125
POINT = "after_publish"


class Setup:
    """A project whose database is reached through ``proxy``; its destination folder or bucket."""

    def __init__(self, root: Path, db: Db, proxy: TcpProxy, out: Path | None, s3: Any, bucket: str) -> None:
        self.root, self.db, self.proxy, self.out, self.s3, self.bucket = root, db, proxy, out, s3, bucket

    def published(self) -> dict[str, bytes]:
        """Every published file or object, by its path."""
        if self.out is not None:
            return {
                str(p.relative_to(self.out)): p.read_bytes()
                for p in self.out.rglob("*")
                if p.is_file()
                and ".sluicegate-" not in p.name
                and not {"_manifests", "_sluicegate"} & set(p.relative_to(self.out).parts)
            }
        listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            o["Key"]: self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
            for o in listed
            if not o["Key"].startswith(("_manifests/", "_sluicegate/"))
        }

    def ledger(self) -> tuple[Any, ...]:
        [row] = self.db.rows(
            "SELECT version, exported_version, claim_token, failed, checksum, etag FROM sluicegate.partitions"
        )
        return tuple(row)


@pytest.fixture(params=["local", "s3"])
def setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pg_url: str,
    pg_server: Any,
    tcp_proxy: Callable[[str, int], TcpProxy],
) -> Setup:
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    through = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    s3: Any = None
    bucket, extra, out = "", "", None
    if request.param == "s3":
        endpoint, bucket, access, secret = request.getfixturevalue("seaweed_bucket")
        extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{access}"\nsecret_access_key = "{secret}"'
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
            region_name="us-east-1",
        )  # fmt: skip
        destination = f"s3://{bucket}"
    else:
        out = tmp_path / "out"
        destination = str(out)
    root = write_project(
        tmp_path / "proj", source=through, destination=destination, fmt="csv.gz", lease="2s",
        destination_extra=extra,
    )  # fmt: skip
    db = Db(pg_url)  # straight to the server, never cut off
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(DAY, 24))
    return Setup(root, db, proxy, out, s3, bucket)


def _cut_off_after_publish(setup: Setup) -> subprocess.Popen[str]:
    """A worker whose file is in place and whose commit is next, then the database cut off."""
    worker = _spawn(setup.root, "run", "--json", env={"SLUICEGATE_TESTING__FAULT": POINT})
    _wait_for(setup.root / f".fault-{POINT}", worker)
    assert list(setup.published()) == [KEY]  # in place ...
    assert (
        setup.ledger()[:3] == (1, 0, setup.ledger()[2]) and setup.ledger()[2] is not None
    )  # ... not committed
    setup.proxy.down()
    (setup.root / f".fault-{POINT}").unlink()  # the worker goes on: its commit meets a dead connection
    return worker


def _values(data: bytes) -> set[str]:
    lines = gzip.decompress(data).decode().splitlines()
    column = lines[0].split(",").index("value")
    return {line.split(",")[column] for line in lines[1:]}


def _committed(setup: Setup, version: int) -> bytes:
    """Exactly one file, the one the ledger records at ``version``; return its bytes."""
    files = setup.published()
    assert list(files) == [KEY]
    body = files[KEY]
    got_version, exported, token, failed, checksum, etag = setup.ledger()
    assert (got_version, exported, token, failed) == (version, version, None, False)
    assert checksum == hashlib.sha256(body).hexdigest()
    if setup.s3 is not None:
        assert etag == setup.s3.head_object(Bucket=setup.bucket, Key=KEY)["ETag"]
    return body


def test_the_same_run_commits_when_the_ledger_comes_back(setup: Setup) -> None:
    worker = _cut_off_after_publish(setup)
    placed = setup.published()[KEY]
    time.sleep(3)  # longer than the lease: nobody else could take the claim meanwhile
    assert worker.poll() is None, "the worker gave up instead of waiting for the ledger"
    assert setup.ledger()[1] == 0
    setup.proxy.up()
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, out + err
    [summary] = json.loads(out)
    assert (summary["exported"], summary["failed"], summary["lost"]) == (1, 0, 0), summary
    assert "reconnecting" in err
    assert setup.proxy.cut >= 1
    assert _committed(setup, 1) == placed
    again = _spawn(setup.root, "run", "--json")
    assert json.loads(again.communicate(timeout=120)[0])[0]["exported"] == 0  # nothing left to do


@pytest.mark.parametrize("late_change", [False, True], ids=["same-version", "changed-meanwhile"])
def test_the_next_run_exports_again_when_the_worker_died_meanwhile(setup: Setup, late_change: bool) -> None:
    worker = _cut_off_after_publish(setup)
    placed = setup.published()[KEY]
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    if late_change:  # straight to the database while the worker's path to it is cut
        setup.db.update_value(1, DAY + dt.timedelta(hours=7), NEW_VALUE)
    setup.proxy.up()
    assert setup.ledger()[1] == 0  # the commit never happened
    time.sleep(2.5)  # the dead worker's lease runs out
    rerun = _spawn(setup.root, "run", "--json")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    [summary] = json.loads(out)
    assert (summary["exported"], summary["failed"]) == (1, 0), summary
    body = _committed(setup, 2 if late_change else 1)
    if late_change:
        assert str(NEW_VALUE) in _values(body) and str(NEW_VALUE) not in _values(placed)
    else:
        assert body == placed  # the same bytes again, under the same name
