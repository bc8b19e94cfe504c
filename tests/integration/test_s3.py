"""Publishing to S3 over real HTTP: moto's server and SeaweedFS (which checks signatures and checksums)."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from sluicegate import changes, engine, operations
from sluicegate.destinations import open_destination
from sluicegate.exceptions import ConfigError, DestinationUnavailable, TerminalError
from sluicegate.options import RunOptions
from support import Db, cli, hours, load, write_project

UTC = dt.UTC
KEY = "records/csv.gz/locationid=1/year=2024/month=01/location-1-20240101.csv.gz"


def _client(endpoint: str, key: str = "testing", secret: str = "testing") -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def _rows(client: object, bucket: str, key: str) -> list[dict[str, str]]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(gzip.decompress(body).decode())))


def _project(tmp_path: Path, dest: str, extra: str, backoff: str = "0s") -> tuple[Path, Db]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj",
        source=url,
        destination=dest,
        fmt="csv.gz",
        destination_extra=extra,
        backoff=backoff,
    )
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 48))
    return root, db


def test_moto_publish_skip_unchanged_and_force(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    root, _db = _project(tmp_path, f"s3://{bucket}/open-data", f'endpoint_url = "{endpoint}"')
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0)
    client = _client(endpoint)
    head = client.head_object(Bucket=bucket, Key=f"open-data/{KEY}")  # type: ignore[attr-defined]
    assert len(_rows(client, bucket, f"open-data/{KEY}")) == 24
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [again] = engine.run(load(root))
    assert (again.exported, again.unchanged) == (0, 1)
    assert client.head_object(Bucket=bucket, Key=f"open-data/{KEY}")["ETag"] == head["ETag"]  # type: ignore[attr-defined]
    # The object was deleted behind our back: a re-mark notices and uploads it again.
    client.delete_object(Bucket=bucket, Key=f"open-data/{KEY}")  # type: ignore[attr-defined]
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [restored] = engine.run(load(root))
    assert restored.exported == 1 and len(_rows(client, bucket, f"open-data/{KEY}")) == 24


def test_a_run_on_a_lost_ledger_over_a_change_feed_on_s3_is_refused(
    tmp_path: Path, s3_bucket: tuple[str, str]
) -> None:
    """A deleted ledger file made the next run create a new, empty ledger and start the feed over
    without a word; now the run refuses until told --new-ledger (one listing of one manifest)."""
    endpoint, bucket = s3_bucket
    ledger = tmp_path / "ledger.db"
    root = write_project(
        tmp_path / "proj",
        source=f"sqlite:///{tmp_path / 's.db'}",
        destination=f"s3://{bucket}/feed",
        destination_extra=f'endpoint_url = "{endpoint}"',
        ledger=f"sqlite:///{ledger}",
    )
    db = Db(f"sqlite:///{tmp_path / 's.db'}")
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 48))
    assert engine.run(load(root))[0].exported == 2
    ledger.unlink()
    with pytest.raises(ConfigError) as refused:
        engine.run(load(root))
    assert f"ledger at sqlite:///{ledger} records no export" in str(refused.value)
    assert f"s3://{bucket}/feed already holds" in str(refused.value) and "--new-ledger" in str(refused.value)
    assert engine.run(load(root), options=RunOptions(new_ledger=True))[0].failed == 0
    engine.run(load(root))  # the new ledger, taken on purpose, is not refused again


def test_an_object_replaced_by_other_bytes_of_the_same_size_is_uploaded_again(
    tmp_path: Path, s3_bucket: tuple[str, str]
) -> None:
    """The unchanged-file skip compares the object's ETag with the ledger's, not only its size:
    an object someone overwrote with other bytes of the same length is put right by the next
    export of its partition, instead of being recorded as unchanged."""
    endpoint, bucket = s3_bucket
    root, _db = _project(tmp_path, f"s3://{bucket}/open-data", f'endpoint_url = "{endpoint}"')
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0)
    client = _client(endpoint)
    key = f"open-data/{KEY}"
    good = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * len(good))  # type: ignore[attr-defined]
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [again] = engine.run(load(root))
    assert (again.exported, again.unchanged, again.failed) == (1, 0, 0), again.errors
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == good  # type: ignore[attr-defined]
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [third] = engine.run(load(root))
    assert (third.exported, third.unchanged) == (0, 1)  # and the skip still works


def test_small_objects_are_uploaded_from_memory_without_a_temp_file(
    tmp_path: Path, s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file up to SPOOL_BYTES is uploaded from memory: with no usable temp folder at all,
    location-days still publish (a spool file per object cost more client CPU than the PUT)."""
    endpoint, bucket = s3_bucket
    root, _db = _project(tmp_path, f"s3://{bucket}/mem", f'endpoint_url = "{endpoint}"')
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0), summary.errors
    assert len(_rows(_client(endpoint), bucket, f"mem/{KEY}")) == 24
    assert not (tmp_path / "no-such-folder").exists()


def test_seaweed_checks_signatures_and_checksums(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, _db = _project(tmp_path, f"s3://{bucket}", extra)
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0)
    client = _client(endpoint, key, secret)
    assert len(_rows(client, bucket, KEY)) == 24
    objects = [  # the change feed's manifests aside
        o
        for o in client.list_objects_v2(Bucket=bucket)["Contents"]  # type: ignore[attr-defined]
        if not o["Key"].startswith(("_manifests/", "_sluicegate/"))  # the feed, the destination's id
    ]
    assert sorted(o["Key"] for o in objects)[0] == KEY and sum(o["Size"] for o in objects) == summary.bytes


def test_seaweed_multipart_upload(tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]) -> None:
    endpoint, bucket, key, secret = seaweed_bucket
    url = f"sqlite:///{tmp_path / 's.db'}"
    extra = (
        f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n'
        "multipart_threshold = 5242880"
    )
    root = write_project(
        tmp_path / "proj", source=url, destination=f"s3://{bucket}/big", fmt="csv", destination_extra=extra
    )
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 100_000, dt.timedelta(seconds=1)))
    [summary] = engine.run(load(root))
    assert summary.failed == 0 and summary.rows == 100_000
    client = _client(endpoint, key, secret)
    objects = [
        o
        for o in client.list_objects_v2(Bucket=bucket, Prefix="big/")["Contents"]  # type: ignore[attr-defined]
        if "/_manifests/" not in o["Key"] and "/_sluicegate/" not in o["Key"]
    ]
    assert sum(o["Size"] for o in objects) == summary.bytes
    assert max(o["Size"] for o in objects) > 5 * 1024 * 1024  # went through the multipart path
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # type: ignore[attr-defined]


def test_check_says_when_the_bucket_does_not_exist(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    """`check` said only "s3://.../.sluicegate-probe at ...: 404 Not Found" (HeadBucket's answer has no body)."""
    endpoint, bucket = s3_bucket
    root, _db = _project(tmp_path, f"s3://{bucket}-gone/exports", f'endpoint_url = "{endpoint}"')
    [problem] = operations.check_project(load(root))
    assert f"bucket '{bucket}-gone' does not exist" in problem and "[destination] url" in problem, problem


def test_a_run_into_a_missing_bucket_names_the_bucket_not_its_probe(
    tmp_path: Path, s3_bucket: tuple[str, str]
) -> None:
    """A run said "s3://b-gone/exports/.sluicegate-probe-... at ...: NoSuchBucket ...; check the
    bucket, credentials and permissions", naming a key the user never wrote."""
    endpoint, bucket = s3_bucket
    root, _db = _project(tmp_path, f"s3://{bucket}-gone/exports", f'endpoint_url = "{endpoint}"')
    proc = cli(root, "run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"bucket '{bucket}-gone' does not exist at {endpoint}; create it or fix the url" in line, line


@pytest.mark.parametrize("store", ["moto", "seaweed"])
def test_a_missing_bucket_is_not_taken_for_a_missing_object(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A HEAD's 404 has no body, so a bucket gone looked like an object gone: exists() said False,
    verify() "missing or not the object uploaded" (transient, retried), and 'sluicegate changes'
    that a manifest "was deleted while 'sluicegate changes' was reading the feed". On a HEAD's
    404 the bucket is now asked for (HeadBucket): gone, it is the bucket's terminal error."""
    from sluicegate.config import DestinationSettings
    from sluicegate.exceptions import DestinationUnavailable

    if store == "seaweed":
        endpoint, bucket, key, secret = request.getfixturevalue("seaweed_bucket")
    else:
        (endpoint, bucket), key, secret = request.getfixturevalue("s3_bucket"), None, None

    def dest(name: str) -> Any:
        settings = DestinationSettings(
            url=f"s3://{name}/feed", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
        )
        return open_destination(settings)

    there = dest(bucket)
    assert not there.exists("absent.csv")  # a missing object is still just missing (transient in verify)
    with pytest.raises(DestinationUnavailable, match="missing or not the object uploaded"):
        there.verify("absent.csv", 1, "x")
    gone = dest(f"{bucket}-gone")
    says = re.escape(f"bucket '{bucket}-gone' does not exist at {endpoint}; create it or fix the url")
    with pytest.raises(TerminalError, match=says):
        gone.exists("absent.csv")
    with pytest.raises(TerminalError, match=says):
        gone.verify("absent.csv", 1, "x")
    with pytest.raises(TerminalError, match=says):
        changes._read(gone, "_manifests/20240101T000000Z-run-1.jsonl")


def test_seaweed_wrong_secret_is_a_terminal_failure(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    endpoint, bucket, key, _ = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "not-the-secret"'
    root, _db = _project(tmp_path, f"s3://{bucket}", extra)
    [summary] = engine.run(load(root))
    assert summary.exported == 0 and summary.failed == 2
    [status] = operations.status(load(root))
    assert status["failed"] == 2
    assert "SignatureDoesNotMatch" in status["failures"][0]["error"]
    assert "not-the-secret" not in " ".join(summary.errors)


def test_check_fails_when_the_credentials_cannot_write_to_the_bucket(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], fault_proxy: Any
) -> None:
    """Read-only credentials (every PUT 403 AccessDenied) passed `check` ("ok", exit 0, a mere
    warning) though `check` says it tests that the destination can be written; `run` then failed."""
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    proxy.fail("PUT", None, status=403, times=None, code="AccessDenied")
    extra = f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, _db = _project(tmp_path, f"s3://{bucket}/exports", extra)
    check = cli(root, "check")
    assert check.returncode != 0, check.stdout + check.stderr
    assert "[destination] url" in check.stderr and "AccessDenied" in check.stderr, check.stderr


@pytest.mark.parametrize("code", ["ExpiredToken", "AuthorizationHeaderMalformed"])
def test_check_fails_when_every_put_is_refused_with_400(
    tmp_path: Path, s3_bucket: tuple[str, str], fault_proxy: Any, code: str
) -> None:
    """An expired session token or the wrong region (400 to every PUT) passed `check` (exit 0,
    with the false warning that the store ignores conditional writes): the probe took the 400
    to its conditional PUT for a store that does not understand the header, and the exporter
    kept that verdict for its life, so uploads waited for the ledger lock after the cure."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(endpoint)
    proxy.fail("PUT", None, status=400, times=None, code=code)
    root, _db = _project(tmp_path, f"s3://{bucket}/exports", f'endpoint_url = "{proxy.url}"')
    check = cli(root, "check")
    assert check.returncode != 0, check.stdout + check.stderr
    assert "[destination] url" in check.stderr and code in check.stderr, check.stderr
    assert "ignores conditional writes" not in check.stdout + check.stderr
    dest = open_destination(load(root).settings.destination)
    with pytest.raises(TerminalError, match=code):
        dest.check()
    proxy.clear()
    assert dest.conditional() and dest.warnings() == []  # once the token is renewed


def test_health_writes_nothing_to_the_bucket(
    tmp_path: Path, s3_bucket: tuple[str, str], fault_proxy: Any
) -> None:
    """/healthz (open to anyone, polled by every load balancer) asks whether the bucket is there;
    since `check` also probes writes, each poll PUT three probe objects and DELETEd one."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(endpoint)
    root, _db = _project(tmp_path, f"s3://{bucket}/exports", f'endpoint_url = "{proxy.url}"')
    assert operations.health(load(root))["destination"] == "ok"
    assert [e.method for e in proxy.log if e.method not in ("HEAD", "GET")] == []


def test_unreachable_endpoint_is_transient(tmp_path: Path) -> None:
    extra = 'endpoint_url = "http://127.0.0.1:9"\naccess_key_id = "k"\nsecret_access_key = "s"'
    root, _db = _project(tmp_path, "s3://nowhere", extra, backoff="1h")
    [summary] = engine.run(load(root))
    assert summary.failed == 2
    [status] = operations.status(load(root))
    assert status["failed"] == 0 and status["retrying"] == 2


def test_missing_credentials_are_a_terminal_failure_that_names_the_settings(
    tmp_path: Path, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key anywhere was "Unable to locate credentials; will retry", retried 5 times with backoff."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f'endpoint_url = "{moto_s3.endpoint_url}"'
    root, _db = _project(tmp_path, f"s3://{moto_s3.make_bucket()}", endpoint)
    [summary] = engine.run(load(root))
    assert summary.failed == 2
    [status] = operations.status(load(root))
    assert status["failed"] == 2 and status["retrying"] == 0, status
    assert all("access_key_id" in f["error"] and "retry" not in f["error"] for f in status["failures"])
    [problem] = operations.check_project(load(root))
    assert "access_key_id" in problem and "retry" not in problem, problem


def test_a_partition_parked_after_its_last_attempt_does_not_say_will_retry(tmp_path: Path) -> None:
    """Its error was shown as the transient one it got, "...; will retry", though nothing will."""
    extra = 'endpoint_url = "http://127.0.0.1:9"\naccess_key_id = "k"\nsecret_access_key = "s"'
    root, _db = _project(tmp_path, "s3://nowhere", extra)
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("max_attempts = 1\n")
    assert engine.run(load(root))[0].failed == 2
    [status] = operations.status(load(root))
    assert status["failed"] == 2 and len(status["failures"]) == 2, status
    assert all("127.0.0.1:9" in f["error"] and "retry" not in f["error"] for f in status["failures"]), status


pytestmark = pytest.mark.s3


def _left_by_a_dead_worker(dest: Any, path: str) -> None:
    """A multipart upload of ``dest`` at ``path`` that its worker never finished nor aborted
    (it lost the endpoint after the first part was sent, so its abort failed too)."""
    from botocore.exceptions import EndpointConnectionError

    def lost(**_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="http://gone")

    client = dest.client
    upload_part, abort = client.upload_part, client.abort_multipart_upload
    client.complete_multipart_upload = client.abort_multipart_upload = lost
    body = Path(tempfile.mkdtemp()) / "part"
    body.write_bytes(b"x" * 100)
    with pytest.raises(EndpointConnectionError):
        dest._multipart(str(body), dest.key(path), {})
    client.upload_part, client.abort_multipart_upload = upload_part, abort
    del client.complete_multipart_upload


def _own_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spools in a temp folder of this test's own: in the machine's shared one, another process's
    clean-up removed this test's dead spool first, or left one of its own for this test's to count
    (both seen in a CI run beside other sessions' tests)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def test_cleanup_aborts_abandoned_multipart_uploads(
    tmp_path: Path, s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    _own_temp_folder(tmp_path, monkeypatch)
    endpoint, bucket = s3_bucket
    client = _client(endpoint)
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours.csv.gz")  # type: ignore[attr-defined]
    # A sibling prefix that starts like ours ("open-data"): another tool's, not under our folder.
    client.create_multipart_upload(Bucket=bucket, Key="open-data-archive/backup.tar")  # type: ignore[attr-defined]
    spool = Path(tempfile.gettempdir()) / "sluicegate-deadbeef.part"  # a version without the pid
    live = Path(tempfile.gettempdir()) / f"sluicegate-{os.getpid()}-live.part"  # a live process's
    live.write_bytes(b"in use")
    os.utime(live, (0, 0))
    spool.write_bytes(b"partial")
    old = spool.stat().st_mtime - 3600
    os.utime(spool, (old, old))
    dest = open_destination(DestinationSettings(url=f"s3://{bucket}/open-data", endpoint_url=endpoint))
    _left_by_a_dead_worker(dest, "records/left-by-a-dead-worker.csv.gz")
    time.sleep(1.1)  # LastModified has whole seconds
    dest.upload_stale_after = 0  # type: ignore[attr-defined]
    assert dest.cleanup(older_than=0) == 2  # the upload under the prefix, the dead spool
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[attr-defined]
    assert sorted(u["Key"] for u in left) == ["elsewhere/not-ours.csv.gz", "open-data-archive/backup.tar"]
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []  # type: ignore[attr-defined]
    assert not spool.exists()
    assert live.exists(), "the spool of a live process was removed"
    live.unlink()


def test_cleanup_at_the_bucket_root_aborts_only_sluicegates_own_uploads(
    tmp_path: Path, s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no prefix (or one shared with other tools), clean-up aborted every day-old multipart
    upload in the bucket: other tools' uploads too, even under keys that look like an export's."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    _own_temp_folder(tmp_path, monkeypatch)
    endpoint, bucket = s3_bucket
    client: Any = _client(endpoint)
    theirs = ["backups/db.tar", "records/csv.gz/locationid=9/theirs.csv.gz", "x.csv.gz"]
    for name in theirs:
        client.create_multipart_upload(Bucket=bucket, Key=name)
    dest: Any = open_destination(DestinationSettings(url=f"s3://{bucket}", endpoint_url=endpoint))
    _left_by_a_dead_worker(dest, KEY)
    time.sleep(1.1)  # LastModified has whole seconds
    dest.upload_stale_after = 0
    assert dest.cleanup(older_than=0) == 1
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert sorted(u["Key"] for u in left) == theirs
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []  # its record is gone too


def test_a_cleanup_racing_another_runs_cleanup_goes_on(tmp_path: Path, s3_bucket: tuple[str, str]) -> None:
    """Two runs started at once both abort the stale uploads: the one whose abort found the
    upload gone (404 NoSuchUpload) raised, and stopped cleaning up (the rest stayed billed)."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    endpoint, bucket = s3_bucket
    client: Any = _client(endpoint)
    dest: Any = open_destination(DestinationSettings(url=f"s3://{bucket}/open-data", endpoint_url=endpoint))
    for name in ("a", "b"):
        _left_by_a_dead_worker(dest, f"{name}.csv.gz")
    time.sleep(1.1)
    dest.upload_stale_after = 0
    abort, get = dest.client.abort_multipart_upload, dest.client.get_object
    other: Any = open_destination(DestinationSettings(url=f"s3://{bucket}/open-data", endpoint_url=endpoint))
    other.upload_stale_after = 0

    def raced(**request: Any) -> Any:
        if request["Key"].endswith("a.csv.gz"):  # the other run got there first
            client.abort_multipart_upload(**request)
        return abort(**request)

    def raced_whole(**request: Any) -> Any:  # the other run cleaned up everything after our listing
        if request["Key"] == sorted_markers[-1]:
            other.cleanup(older_than=0)
        return get(**request)

    listed = client.list_objects_v2(Bucket=bucket, Prefix="open-data/").get("Contents", [])
    sorted_markers = sorted(o["Key"] for o in listed)
    dest.client.abort_multipart_upload = raced
    dest.client.get_object = raced_whole
    dest.cleanup(older_than=0)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_a_live_workers_multipart_upload_is_not_aborted_by_another_runs_cleanup(
    seaweed_bucket: tuple[str, str, str, str],
) -> None:
    """A large upload may outlast the lease (which its worker renews): only uploads started more
    than a day ago are abandoned."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    endpoint, bucket, key, secret = seaweed_bucket
    client = _client(endpoint, key, secret)
    settings = DestinationSettings(
        url=f"s3://{bucket}/open-data", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
    )
    _left_by_a_dead_worker(open_destination(settings), "in-progress.csv.gz")
    time.sleep(1.1)
    open_destination(settings).cleanup(older_than=0)
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[attr-defined]
    assert [u["Key"] for u in left] == ["open-data/in-progress.csv.gz"]


def test_cleanup_removes_probe_objects_a_killed_process_left(
    seaweed_bucket: tuple[str, str, str, str],
) -> None:
    """The conditional-write probe PUTs and DELETEs an empty object; a process killed (or cut off
    from the endpoint) in between leaves it behind. bench/soak.py found seven in a 30-minute run."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    endpoint, bucket, key, secret = seaweed_bucket
    client = _client(endpoint, key, secret)
    client.put_object(Bucket=bucket, Key="open-data/.sluicegate-probe-0123abcd", Body=b"")  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key="open-data/records/a.csv", Body=b"id\n")  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key="elsewhere/.sluicegate-probe-0123abcd", Body=b"")  # type: ignore[attr-defined]
    settings = DestinationSettings(
        url=f"s3://{bucket}/open-data", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
    )
    dest = open_destination(settings)
    assert dest.conditional()  # type: ignore[attr-defined]  its own probe is deleted as it goes
    time.sleep(1.1)  # LastModified has whole seconds
    dest.cleanup(older_than=1)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))  # type: ignore[attr-defined]
    assert keys == ["elsewhere/.sluicegate-probe-0123abcd", "open-data/records/a.csv"]


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("uploads", [3, 10])
def test_uploads_in_flight_is_how_many_uploads_run_at_once(
    tmp_path: Path,
    seaweed_bucket: tuple[str, str, str, str],
    fault_proxy: Any,
    uploads: int,
) -> None:
    """Each upload is held 0.3 s by a proxy (a slow, far store): the pipeline keeps exactly
    ``uploads_in_flight`` of them going at once, not its few publisher threads' worth."""
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    proxy.delay(method="PUT", path_regex=r"\.csv\.gz$", seconds=0.3, times=None)
    extra = (
        f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n'
        f"uploads_in_flight = {uploads}"
    )
    root, db = _project(tmp_path, f"s3://{bucket}", extra)
    db.insert(1, hours(dt.datetime(2024, 1, 3, tzinfo=UTC), 24 * 22))  # 24 location-days in all
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (24, 0), summary.errors
    puts = [e for e in proxy.log if e.method == "PUT" and e.path.endswith(".csv.gz") and e.status == 200]
    assert len(puts) == 24
    assert _most_at_once([(e.at, e.at + e.seconds) for e in puts]) == uploads
    # SeaweedFS echoes the SHA-256 it checked: no HEAD after each PUT (a round trip saved).
    assert [e.path for e in proxy.log if e.method == "HEAD"] == []


@pytest.mark.parametrize("value,says", [("0", "too small; use at least 1"), ("5000", "at most 1024")])
def test_a_bad_uploads_in_flight_is_a_config_error(tmp_path: Path, value: str, says: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    extra = f"uploads_in_flight = {value}"
    root = write_project(tmp_path / "proj", source=url, destination="s3://somewhere", destination_extra=extra)
    check = cli(root, "check")
    assert check.returncode == 2 and says in check.stderr, check.stderr
    assert "[destination] uploads_in_flight" in check.stderr and "Traceback" not in check.stderr
    via_env = cli(root, "status", env={"SLUICEGATE_DESTINATION__UPLOADS_IN_FLIGHT": "many"})
    assert via_env.returncode == 2 and "'many' is not a whole number" in via_env.stderr, via_env.stderr


def test_an_fsspec_destination_publishes_small_and_spooled_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec's ``put_file`` wants a path: a file kept in memory is written to the temp folder
    first, and every spool file is gone afterwards (here fsspec's own in-memory filesystem)."""
    import fsspec

    from sluicegate.destinations import SPOOL_BYTES

    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination="memory://sg-test/out", fmt="csv")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))  # a small day
    db.location(2, "UTC")  # a day of one reading a second: a spool past SPOOL_BYTES
    db.insert(2, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 86_400, dt.timedelta(seconds=1)))
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0), summary.errors
    fs = fsspec.filesystem("memory")
    sizes = sorted(
        fs.size(p) for p in fs.find("/sg-test/out") if "/_manifests/" not in p and "/_sluicegate/" not in p
    )
    assert len(sizes) == 2 and sizes[0] < SPOOL_BYTES < sizes[1] and sum(sizes) == summary.bytes
    assert list(spools.iterdir()) == []
    fs.rm("/sg-test", recursive=True)  # fsspec's memory filesystem lives as long as the process


def test_two_first_runs_at_once_on_an_fsspec_destination_agree_on_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec checks that no destination id is there, then writes one: two workers' first runs at
    once both wrote, the ledger recorded the first to bind and the destination kept the last
    written, so every later run exited 2 saying another project shares the ledger. Now a first
    run whose id the ledger did not take writes back the one it records."""
    import fsspec

    from sluicegate.destination_id import MARKER
    from sluicegate.destinations.fsspec import FsspecDestination

    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination="memory://sg-race/out", fmt="csv")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    both, exists = threading.Barrier(2), FsspecDestination.exists

    def checked(self: FsspecDestination, path: str, *args: Any) -> bool:
        if path == MARKER:  # both workers look before either writes
            with contextlib.suppress(threading.BrokenBarrierError):
                both.wait(timeout=5)
        return exists(self, path, *args)

    monkeypatch.setattr(FsspecDestination, "exists", checked)
    failed: list[BaseException] = []
    workers = [threading.Thread(target=lambda: _run_into(root, failed)) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert failed == []
        monkeypatch.setattr(FsspecDestination, "exists", exists)
        assert engine.run(load(root))[0].failed == 0  # not refused
    finally:
        fsspec.filesystem("memory").rm("/sg-race", recursive=True)


def _run_into(root: Path, failed: list[BaseException]) -> None:
    try:
        engine.run(load(root))
    except BaseException as exc:  # the test reports it
        failed.append(exc)


def test_an_fsspec_url_naming_the_stores_root_is_not_taken_for_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``memory://`` lost its "//" to the trailing-slash strip: fsspec read ``memory:`` as a
    relative local path, and the files went to a folder named "memory:" in the working directory."""
    import fsspec

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination="memory://", fmt="csv")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (1, 0), summary.errors
    assert not (tmp_path / "memory:").exists()
    fs = fsspec.filesystem("memory")
    try:
        name = "records/csv/locationid=1/year=2024/month=01/location-1-20240101.csv"
        assert fs.exists(f"/{name}")
        [change] = changes.list_changes(load(root), since="2000-01-01T00:00:00Z")
        assert change.path == name
    finally:
        for top in ("/records", "/_manifests", "/_sluicegate"):
            if fs.exists(top):
                fs.rm(top, recursive=True)


def _published(dest: Any, path: str, body: bytes, condition: str | None = None) -> Any:
    """Stage ``body`` for ``path`` and publish it the way the pipeline does; the Staged."""
    staged = dest.stage(path)
    staged.file.write(body)
    staged.condition = condition
    dest.publish(staged)
    return staged


def _agents(proxy: Any, method: str = "PUT") -> list[str]:
    return [e.agent for e in proxy.log if e.method == method]


@pytest.mark.parametrize("s3_client,agent", [("crt", "CRTS3NativeClient"), ("boto3", "Boto3")])
def test_small_puts_go_through_the_chosen_client(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], fault_proxy: Any, s3_client: str, agent: str
) -> None:
    """By default a location-day's PUT is signed and sent by the AWS Common Runtime (C, off the
    GIL; bench/README.md); ``s3_client = "boto3"`` keeps every request on botocore. Either way
    SeaweedFS checked the signature and the SHA-256, and no HEAD follows the PUT."""
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    extra = (
        f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n'
        f's3_client = "{s3_client}"'
    )
    root, _db = _project(tmp_path, f"s3://{bucket}/out", extra)
    [summary] = engine.run(load(root))
    assert (summary.exported, summary.failed) == (2, 0), summary.errors
    data_puts = [e for e in proxy.log if e.method == "PUT" and e.path.endswith(".csv.gz")]
    assert len(data_puts) == 2 and {e.status for e in data_puts} == {200}
    assert {e.agent for e in data_puts} == {agent}
    assert {e.header("x-amz-checksum-sha256") is not None for e in data_puts} == {True}
    assert [e.path for e in proxy.log if e.method == "HEAD"] == []
    assert len(_rows(_client(endpoint, key, secret), bucket, f"out/{KEY}")) == 24


def test_crt_puts_keys_with_any_characters_and_honours_conditions(
    seaweed_bucket: tuple[str, str, str, str], fault_proxy: Any
) -> None:
    """Keys with spaces, '+', '%', '=', '~', non-ASCII, "?", "#" and "&" arrive as written
    (the CRT signs the path exactly as it is sent); an object already there refuses
    ``If-None-Match: *`` and a stale ``If-Match``, which leaves the write to ``sync`` (the
    ledger's fenced overwrite), and the CRT stays in use after those refusals."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination

    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    dest = open_destination(
        DestinationSettings(
            url=f"s3://{bucket}/odd prefix",
            endpoint_url=proxy.url,
            access_key_id=key,
            secret_access_key=secret,
        )
    )
    client = _client(endpoint, key, secret)
    paths = ["a b/c+d%e=f~g.csv", "zoë/Łódź/日本.csv", "q?r#s&t.csv"]
    for number, path in enumerate(paths):
        staged = _published(dest, path, f"id\n{number}\n".encode(), condition="*")
        assert not staged.pending and staged.etag
        got = client.get_object(Bucket=bucket, Key=f"odd prefix/{path}")  # type: ignore[attr-defined]
        assert got["Body"].read() == f"id\n{number}\n".encode() and got["ETag"] == staged.etag
    assert set(_agents(proxy)) - {"Boto3"} == {"CRTS3NativeClient"}  # (the probe is botocore's)
    proxy.clear_log()
    refused = _published(dest, paths[0], b"id\nnew\n", condition="*")
    stale = _published(dest, paths[0], b"id\nnewer\n", condition='"0123456789abcdef0123456789abcdef"')
    assert refused.pending and stale.pending
    assert [e.status for e in proxy.log if e.method == "PUT"] == [412, 412]
    assert _agents(proxy) == ["CRTS3NativeClient", "CRTS3NativeClient"]
    assert client.get_object(Bucket=bucket, Key=f"odd prefix/{paths[0]}")["Body"].read() == b"id\n0\n"  # type: ignore[attr-defined]


def test_a_crt_put_that_fails_is_sent_again_through_botocore(
    seaweed_bucket: tuple[str, str, str, str], fault_proxy: Any
) -> None:
    """A 5xx is sent again by botocore and the CRT stays in use; an answer that would repeat
    (403 here) moves PUTs to botocore for the rest of the run: one wasted request, not one per
    file, and botocore's error reporting as before."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination
    from sluicegate.destinations.s3_crt import CRT_RETRIES

    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    dest = open_destination(
        DestinationSettings(
            url=f"s3://{bucket}", endpoint_url=proxy.url, access_key_id=key, secret_access_key=secret
        )
    )
    assert dest.conditional()  # type: ignore[attr-defined]
    proxy.clear_log()
    proxy.fail(method="PUT", path_regex=r"one\.csv$", status=503, times=CRT_RETRIES + 1)
    _published(dest, "one.csv", b"id\n1\n")
    puts = [e.status for e in proxy.log if e.method == "PUT"]
    assert list(zip(puts, _agents(proxy), strict=True)) == [(503, "CRTS3NativeClient")] * (
        CRT_RETRIES + 1
    ) + [(200, "Boto3")]
    proxy.clear_log()
    _published(dest, "two.csv", b"id\n2\n")
    assert _agents(proxy) == ["CRTS3NativeClient"]  # a 5xx does not give the CRT up
    proxy.clear_log()
    proxy.fail(method="PUT", path_regex=r"three\.csv$", status=403, times=1, code="AccessDenied")
    _published(dest, "three.csv", b"id\n3\n")
    _published(dest, "four.csv", b"id\n4\n")
    assert [
        (e.status, a)
        for e, a in zip([e for e in proxy.log if e.method == "PUT"], _agents(proxy), strict=True)
    ] == [
        (403, "CRTS3NativeClient"),
        (200, "Boto3"),
        (200, "Boto3"),
    ]
    client = _client(endpoint, key, secret)
    assert [
        client.get_object(Bucket=bucket, Key=f"{n}.csv")["Body"].read() for n in ("one", "three", "four")
    ] == [  # type: ignore[attr-defined]
        b"id\n1\n",
        b"id\n3\n",
        b"id\n4\n",
    ]


def test_a_bad_s3_client_is_a_config_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination="s3://somewhere", destination_extra='s3_client = "curl"'
    )
    check = cli(root, "check")
    assert check.returncode == 2, check.stderr
    assert "[destination] s3_client" in check.stderr and "use crt or boto3" in check.stderr
    assert "Traceback" not in check.stderr


@pytest.mark.parametrize(
    ("dest", "says"),
    [
        ("s3://", "names no bucket"),
        ("s3:///exports", "names no bucket"),
        ("s3://my bucket/exports", "names the bucket 'my bucket', which S3 does not allow"),
    ],
)
def test_an_s3_url_without_a_bucket_is_a_config_error(tmp_path: Path, dest: str, says: str) -> None:
    """Was accepted: every partition then failed with botocore's multi-line "Parameter validation
    failed", taken for an outage ("will retry") and retried with backoff until it was parked."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=dest)
    for command in ("check", "run"):
        result = cli(root, command)
        assert result.returncode == 2, result.stderr
        assert f"[destination] url: {dest!r} {says}; write s3://BUCKET" in result.stderr
        assert "Traceback" not in result.stderr and "will retry" not in result.stderr


@pytest.mark.parametrize("prefix", ["a//b", "/exports", "../x", "./x", "exports/./2024"])
def test_an_s3_prefix_with_an_empty_or_dot_segment_is_a_config_error(tmp_path: Path, prefix: str) -> None:
    """Was accepted: SeaweedFS stored "a//b/..." as "a/b/..." (so `changes`, which lists
    "a//b/_manifests/", found nothing, and clean-up never found the stale uploads and probes),
    and refused "../x/..." and "./x/..." keys with InvalidRequest, parking every partition."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    dest = f"s3://bucket/{prefix}/"
    root = write_project(tmp_path / "proj", source=url, destination=dest)
    for command in ("check", "run"):
        result = cli(root, command)
        assert result.returncode == 2, result.stderr
        assert f"[destination] url: {dest!r} has the prefix {prefix!r}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("written", "prefix", "says"),
    [
        ("exports\\n", "exports\n", "with a control character (a newline, a tab): remove it"),
        ("a\\tb", "a\tb", "with a control character (a newline, a tab): remove it"),
        ("p" * 901, None, "has a prefix of 901 bytes, which leaves too little of S3's 1,024-byte key limit"),
    ],
)
def test_an_s3_prefix_with_a_control_character_or_too_long_is_a_config_error(
    tmp_path: Path, written: str, prefix: str | None, says: str
) -> None:
    """Were accepted: a TOML escape that left a newline at the end of the prefix put every object
    under a key no tool shows right; a prefix of over ~950 bytes puts the change feed's manifests
    and the multipart records (~70 bytes more) over S3's 1,024-byte key limit."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=f"s3://bucket/{written}")
    for command in ("check", "run"):
        result = cli(root, command)
        assert result.returncode == 2, result.stderr
        if prefix is not None:
            assert f"has the prefix {prefix!r}, {says}" in result.stderr, result.stderr
        else:
            assert says in result.stderr and "use a prefix of 900 bytes or fewer" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "endpoint", ["localhost:9000", "http://127.0.0.1:99999", "ftp://store", "http://[::1"]
)
def test_an_endpoint_url_that_is_no_http_url_is_a_config_error(tmp_path: Path, endpoint: str) -> None:
    """Was accepted: "localhost:9000" (no scheme) and "http://[::1" ended `run` with botocore's
    "Invalid endpoint" traceback (exit 1); a port out of range failed every partition as a
    network error, "will retry", until it was parked."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    Db(url)  # the source is there: only the endpoint is wrong
    extra = f'endpoint_url = "{endpoint}"'
    root = write_project(tmp_path / "proj", source=url, destination="s3://bucket", destination_extra=extra)
    for command in ("check", "run"):
        result = cli(root, command)
        assert result.returncode == 2, result.stderr
        assert f"[destination] endpoint_url: {endpoint!r} is not an http(s) URL" in result.stderr
        assert "Traceback" not in result.stderr and "will retry" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("region = 5", "region: 5 is not a region name"),
        ('region = "us east 1"', "region: 'us east 1' is not a region name"),
        ("access_key_id = 5", "access_key_id is not text"),
        ("secret_access_key = 123456", "secret_access_key is not text"),
    ],
)
def test_a_region_or_key_that_boto3_refuses_is_a_config_error(
    tmp_path: Path, setting: str, says: str
) -> None:
    """Was accepted: boto3's TypeError, AssertionError or InvalidRegionError ended `check` and
    `run` with a traceback (exit 1). A credential's value is never shown."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    Db(url)
    root = write_project(tmp_path / "proj", source=url, destination="s3://bucket", destination_extra=setting)
    for command in ("check", "run"):
        result = cli(root, command)
        assert result.returncode == 2, result.stderr
        assert f"[destination] {says}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "123456" not in result.stderr


def test_exporters_of_a_process_make_their_clients_from_one_session(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A boto3 session holds ~12 MiB of loaded service model: ``run --workers 2`` makes both
    exporters' clients (each with its own connection pool) from one session per credentials,
    region and AWS_* environment, and both publish."""
    from sluicegate import options
    from sluicegate.destinations import s3, s3_session
    from sluicegate.specs import DestinationSettings

    endpoint, bucket, key, secret = seaweed_bucket
    s3_session._SESSIONS.clear()
    settings = DestinationSettings(
        url=f"s3://{bucket}/x", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
    )
    first, second = s3.S3Destination(settings), s3.S3Destination(settings)
    assert first.client is not second.client and len(s3_session._SESSIONS) == 1
    s3.S3Destination(DestinationSettings(url=settings.url, endpoint_url=endpoint, access_key_id=key))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")  # a session reads AWS_* when it is made
    s3.S3Destination(settings)
    assert len(s3_session._SESSIONS) == 3

    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, db = _project(tmp_path, f"s3://{bucket}/two", extra)
    db.location(2, "UTC")
    db.insert(2, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 48))
    [summary] = engine.run(load(root), options=options.RunOptions(workers=2))
    assert (summary.exported, summary.failed) == (4, 0), summary.errors
    assert len(s3_session._SESSIONS) == 3  # no new session: the run's exporters used the one made above
    assert len(_rows(_client(endpoint, key, secret), bucket, f"two/{KEY}")) == 24


def _exclusive(dest: Any, path: str, body: bytes) -> Any:
    """Publish and place ``body`` at ``path`` only where no object is (a re-export's file); the Staged."""
    staged = dest.stage(path)
    staged.file.write(body)
    staged.condition, staged.exclusive = "*", True
    dest.publish(staged)
    dest.sync([staged])
    return staged


@pytest.mark.parametrize("store", ["seaweed", "folder-file", "folder-batch", "fsspec"])
def test_an_exclusive_file_is_not_put_where_an_object_already_is(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """A re-export whose path may be a longer window's file is placed only where no object is:
    on S3 ``If-None-Match: *`` (then a HEAD in ``sync``), on disk a hard link that fails if the
    name is taken, elsewhere a check first. The object that is there stays, and no temp file is left."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination
    from sluicegate.destinations.local import LocalDestination

    if store == "seaweed":
        endpoint, bucket, key, secret = request.getfixturevalue("seaweed_bucket")
        settings = DestinationSettings(
            url=f"s3://{bucket}/x", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
        )
        dest: Any = open_destination(settings)
        assert dest.conditional()
    elif store == "fsspec":
        import fsspec

        dest = open_destination(DestinationSettings(url="memory://sg-exclusive/x"))
        request.addfinalizer(lambda: fsspec.filesystem("memory").rm("/sg-exclusive", recursive=True))
    else:
        dest = LocalDestination(str(tmp_path / "x"), sync=store.split("-")[1])
    first = _exclusive(dest, "s1/day.csv", b"first\n")
    assert not first.refused and dest.read("s1/day.csv") == b"first\n"
    again = _exclusive(dest, "s1/day.csv", b"second\n")
    assert again.refused and dest.read("s1/day.csv") == b"first\n"
    assert dest.list_files("s1/") == ["s1/day.csv"]
    if store.startswith("folder"):
        assert [p.name for p in (tmp_path / "x" / "s1").iterdir()] == ["day.csv"]


@pytest.mark.parametrize("store", ["seaweed", "folder-file", "fsspec"])
def test_a_destination_id_written_by_two_first_runs_at_once_is_the_first(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Two workers' first runs of one project both find no destination id and write one: an
    unconditional upload on S3 replaced the first, so the ledger recorded an id the destination
    no longer held and every later run refused. The second write keeps the first id."""
    from sluicegate.config import DestinationSettings
    from sluicegate.destination_id import MARKER, read_id, write_id
    from sluicegate.destinations.local import LocalDestination

    if store == "seaweed":
        endpoint, bucket, key, secret = request.getfixturevalue("seaweed_bucket")
        settings = DestinationSettings(
            url=f"s3://{bucket}/x", endpoint_url=endpoint, access_key_id=key, secret_access_key=secret
        )
        dest: Any = open_destination(settings)
    elif store == "fsspec":
        import fsspec

        dest = open_destination(DestinationSettings(url="memory://sg-dest-id/x"))
        request.addfinalizer(lambda: fsspec.filesystem("memory").rm("/sg-dest-id", recursive=True))
    else:
        dest = LocalDestination(str(tmp_path / "x"), sync=store.split("-")[1])
    assert read_id(dest) is None
    first = write_id(dest)
    assert len(first) == 32 and write_id(dest) == first == read_id(dest)
    assert dest.list_files(MARKER.split("/")[0] + "/") == [MARKER]


def test_an_fsspec_store_that_refuses_writes_fails_check() -> None:
    """fsspec's check only made the root folder, which an object store does without a request:
    a store that refuses every write passed, and each export failed after it."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from sluicegate.config import DestinationSettings
    from sluicegate.destinations import open_destination
    from sluicegate.exceptions import DestinationUnavailable

    class ReadOnly(MemoryFileSystem):  # type: ignore[misc]
        protocol = "sgreadonly"

        def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
            raise PermissionError(f"{path}: read-only")

    fsspec.register_implementation("sgreadonly", ReadOnly, clobber=True)
    with pytest.raises(DestinationUnavailable, match=r"^destination sgreadonly://ro/x is not writable"):
        open_destination(DestinationSettings(url="sgreadonly://ro/x")).check()
    writable = open_destination(DestinationSettings(url="memory://sg-check/x"))
    writable.check()  # and leaves no probe behind
    assert fsspec.filesystem("memory").ls("/sg-check/x") == []


def test_check_reports_a_bound_bucket_whose_destination_id_was_deleted(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    """A lifecycle rule or an operator emptying the bucket deleted _sluicegate/destination-id while
    the ledger records its id: every run refused, and check said "ok". Now check exits 2 naming
    the object and `run --move-destination`."""
    from sluicegate.destination_id import MARKER

    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, _db = _project(tmp_path, f"s3://{bucket}/exports", extra)
    assert cli(root, "run").returncode == 0
    _client(endpoint, key, secret).delete_object(Bucket=bucket, Key=f"exports/{MARKER}")  # type: ignore[attr-defined]
    assert cli(root, "run").returncode == 2
    check = cli(root, "check")
    assert check.returncode == 2 and check.stderr.count("\n") == 1, check.stdout + check.stderr
    assert f"s3://{bucket}/exports/{MARKER} is missing" in check.stderr, check.stderr
    assert "run --move-destination` once" in check.stderr
    assert cli(root, "run", "--move-destination").returncode == 0
    assert cli(root, "check").returncode == 0


def test_an_object_replaced_by_one_of_the_same_size_is_told_apart_without_a_recorded_etag(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    """A partition recorded without an ETag (a ledger written before ETags were recorded) was
    compared with the object at its path by size alone: another object of that size was taken for
    its file, so the unchanged-file skip left it published, and a path swap's holder kept a path
    holding a stranger's file. Now the recorded SHA-256 is compared (the store's, or the bytes')."""
    import hashlib

    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, db = _project(tmp_path, f"s3://{bucket}/open-data", extra)
    assert engine.run(load(root))[0].exported == 2
    client, path = _client(endpoint, key, secret), KEY
    good = client.get_object(Bucket=bucket, Key=f"open-data/{KEY}")["Body"].read()  # type: ignore[attr-defined]
    dest = open_destination(load(root).settings.destination)
    sha = hashlib.sha256(good).hexdigest()
    assert dest.exists(path, len(good), None, sha)
    client.put_object(Bucket=bucket, Key=f"open-data/{KEY}", Body=b"x" * len(good))  # type: ignore[attr-defined]
    assert not dest.exists(path, len(good), None, sha)  # what partitioned_paths._replaced asks
    assert dest.exists(path, len(good), None, hashlib.sha256(b"x" * len(good)).hexdigest())
    with pytest.raises(DestinationUnavailable, match="not the object uploaded"):
        dest.verify(path, len(good), sha)  # what an archive asks before it deletes rows
    dest.verify(path, len(good), hashlib.sha256(b"x" * len(good)).hexdigest())
    db.conn.execute("UPDATE sluicegate_partitions SET etag = NULL")
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    [again] = engine.run(load(root))
    assert (again.exported, again.unchanged, again.failed) == (1, 0, 0), again.errors
    assert client.get_object(Bucket=bucket, Key=f"open-data/{KEY}")["Body"].read() == good  # type: ignore[attr-defined]
    db.conn.execute("UPDATE sluicegate_partitions SET etag = NULL")
    operations.mark(load(root), "openaq", {"location_id": "1", "day": "2024-01-01"})
    assert engine.run(load(root))[0].unchanged == 1  # its own object is still told for its own
