"""S3 faults, injected by the fault proxy (``tests/plugins/faultproxy.py``) in front of SeaweedFS.

Two partitions: location 1's file (about 8 MB of CSV) goes as a real multipart upload (the
threshold is set to its minimum, 5 MiB: two parts), location 2's (about 1 MB) as one PUT.
Each test breaks one kind of request more often than it is retried (boto3: four attempts,
three retries with backoff; a single PUT first goes through the CRT, which tries it
CRT_RETRIES + 1 times before botocore sends it again), runs a real export, and checks that the partition was neither committed nor parked
but waits for its retry, with no object under its name (nothing partial, nothing damaged);
then the next run (backoff 0) exports it, and the store holds exactly one object per
partition, whose bytes are the ones the ledger recorded (SHA-256 and ETag), every version
committed, no multipart upload left behind. The endpoint that ignores conditional writes is
in ``test_zombies.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from sluicegate import engine, operations
from sluicegate.destinations.s3_crt import CRT_RETRIES
from support import Db, load, write_project

if TYPE_CHECKING:
    from plugins.faultproxy import Exchange, FaultProxy

UTC = dt.UTC
DAY = dt.datetime(2024, 1, 1, tzinfo=UTC)
MiB = 1024 * 1024
BIG_ROWS = 86_400  # one reading a second: ~8 MB of CSV, a two-part multipart upload
SMALL_ROWS = 12_000  # ~1 MB: one PUT


def key(location: int) -> str:
    return f"records/csv/locationid={location}/year=2024/month=01/location-{location}-20240101.csv"


def on_the_wire(name: str) -> str:
    """A regex for a key as it appears in a request path (boto3 escapes ``=``)."""
    return re.escape(name.replace("=", "%3D"))


BIG, SMALL = key(1), key(2)
PART_2 = on_the_wire(BIG) + r"\?.*partNumber=2"  # the second part's UploadPart (a PUT)
ONE_PUT = on_the_wire(SMALL) + "$"
BOTO_TRIES = 4  # botocore's attempts at one request ("standard" retries, max_attempts 3, plus the first)
PUT_TRIES = CRT_RETRIES + 1 + BOTO_TRIES  # a single PUT's attempts in one run: the CRT's, then botocore's


@dataclasses.dataclass
class Store:
    root: Path
    db: Db
    proxy: FaultProxy
    s3: Any  # straight to SeaweedFS, not through the proxy
    bucket: str

    def exists(self, name: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=name)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def ledger(self) -> dict[str, tuple[Any, ...]]:
        """Per partition (by the path its task renders): version, exported_version, claim_token,
        failed, checksum, etag, last_error."""
        rows = self.db.rows(
            "SELECT keys, version, exported_version, claim_token, failed, checksum, etag, last_error "
            "FROM sluicegate_partitions"
        )
        return {key(json.loads(r[0])["location_id"]): tuple(r[1:]) for r in rows}


@pytest.fixture
def store(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], fault_proxy: Callable[[str], FaultProxy]
) -> Store:
    endpoint, bucket, access, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    url = f"sqlite:///{tmp_path / 'source.db'}"
    extra = (
        f'endpoint_url = "{proxy.url}"\naccess_key_id = "{access}"\nsecret_access_key = "{secret}"\n'
        f"multipart_threshold = {5 * MiB}"
    )
    root = write_project(
        tmp_path / "proj", source=url, destination=f"s3://{bucket}", fmt="csv", capture="explicit",
        zone="UTC", destination_extra=extra, backoff="0s",
    )  # fmt: skip
    db = Db(url)
    for location, rows in ((1, BIG_ROWS), (2, SMALL_ROWS)):
        db.location(location, "UTC")
        db.insert(location, [DAY + dt.timedelta(seconds=s) for s in range(rows)])
        operations.mark(load(root), "openaq", {"location_id": str(location), "day": "2024-01-01"})
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1",
    )  # fmt: skip
    return Store(root, db, proxy, s3, bucket)


def _export(store: Store) -> engine.TaskSummary:
    [summary] = engine.run(load(store.root), ["openaq"])
    return summary


def _waits_for_retry(store: Store, name: str, error: str) -> None:
    """After a failed run: no object under ``name``; its partition neither committed nor parked."""
    assert not store.exists(name), f"{name}: an object was left by the failed upload"
    version, exported, token, failed, _, _, last_error = store.ledger()[name]
    assert (version, exported, token, bool(failed)) == (1, 0, None, False), store.ledger()[name]
    assert error in last_error and "will retry" in last_error, last_error


def _exactly_once(store: Store) -> None:
    """One object per partition, the bytes and ETag the ledger recorded, all committed, nothing left over."""
    listed = store.s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    assert sorted(o["Key"] for o in listed if not o["Key"].startswith(("_manifests/", "_sluicegate/"))) == [
        BIG,
        SMALL,
    ]
    ledger = store.ledger()
    for name, rows in ((BIG, BIG_ROWS), (SMALL, SMALL_ROWS)):
        got = store.s3.get_object(Bucket=store.bucket, Key=name)
        body = got["Body"].read()
        version, exported, token, failed, checksum, etag, _ = ledger[name]
        assert (version, exported, token, bool(failed)) == (1, 1, None, False), ledger[name]
        assert hashlib.sha256(body).hexdigest() == checksum, f"{name}: not the bytes the ledger recorded"
        assert got["ETag"] == etag
        assert body.count(b"\n") == rows + 1  # the header and every row
    assert store.s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert store.s3.head_object(Bucket=store.bucket, Key=BIG)["ContentLength"] > 5 * MiB


def _statuses(store: Store, pattern: str, method: str = "PUT") -> list[int | None]:
    return [e.status for e in store.proxy.log if e.method == method and re.search(pattern, e.path)]


@pytest.mark.parametrize(
    ("name", "pattern", "status", "code", "tries"),
    [(SMALL, ONE_PUT, 503, "SlowDown", PUT_TRIES), (BIG, PART_2, 500, "InternalError", BOTO_TRIES)],
    ids=["put-503-slowdown", "multipart-part-500"],
)
def test_throttling_and_server_errors_are_retried(
    store: Store, name: str, pattern: str, status: int, code: str, tries: int
) -> None:
    """One answer more than a run's attempts: they all fail the first run (transient: retried,
    not parked); in the second, one more fails and the next attempt goes through."""
    rule = store.proxy.fail(method="PUT", path_regex=pattern, status=status, code=code, times=tries + 1)
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    _waits_for_retry(store, name, code)
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    assert rule.hits == tries + 1 and _statuses(store, pattern) == [status] * (tries + 1) + [200]
    _exactly_once(store)


@pytest.mark.parametrize(
    ("name", "pattern", "after", "tries"),
    [(SMALL, ONE_PUT, 256 * 1024, PUT_TRIES), (BIG, PART_2, 1 * MiB, BOTO_TRIES)],
    ids=["put", "multipart-part"],
)
def test_a_connection_reset_mid_upload_leaves_no_object_and_is_retried(
    store: Store, name: str, pattern: str, after: int, tries: int
) -> None:
    rule = store.proxy.reset(method="PUT", path_regex=pattern, after_bytes=after, times=tries)
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    _waits_for_retry(store, name, "")
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    assert rule.hits == tries and _statuses(store, pattern) == [None] * tries + [200]
    _exactly_once(store)


def test_an_upload_aborted_under_a_live_worker_is_retried_not_parked(store: Store) -> None:
    """Another run's clean-up aborted a live worker's day-old multipart upload (it outlasted
    UPLOAD_STALE_AFTER): the next part's 404 NoSuchUpload parked a healthy partition. The next
    attempt starts a new upload."""
    rule = store.proxy.fail(method="PUT", path_regex=PART_2, status=404, code="NoSuchUpload", times=1)
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    _waits_for_retry(store, BIG, "NoSuchUpload")
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    assert rule.hits == 1 and _statuses(store, PART_2) == [404, 200]
    _exactly_once(store)


def test_a_single_put_damaged_on_the_way_is_sent_again_at_once(store: Store) -> None:
    """The CRT's PUT of location 2 arrives damaged: SeaweedFS answers 400 BadDigest (the SHA-256
    sent does not match the body it got), botocore sends the intact bytes again in the same
    run, and the CRT keeps the next PUTs (a damaged body is not a reason to give it up)."""
    rule = store.proxy.corrupt_body(method="PUT", path_regex=ONE_PUT, times=1)
    store.proxy.clear_log()
    first = _export(store)
    assert (first.exported, first.failed) == (2, 0), first
    puts = [e for e in store.proxy.log if e.method == "PUT" and re.search(ONE_PUT, e.path)]
    agents = [e.agent for e in puts]
    assert rule.hits == 1 and list(zip(_statuses(store, ONE_PUT), agents, strict=True)) == [
        (400, "CRTS3NativeClient"),
        (200, "Boto3"),
    ]
    _exactly_once(store)
    manifests = [e for e in store.proxy.log if e.method == "PUT" and "/_manifests/" in e.path]
    assert manifests and {e.agent for e in manifests} == {"CRTS3NativeClient"}


@pytest.mark.parametrize(("name", "pattern"), [(BIG, PART_2)], ids=["multipart-part"])
def test_a_body_damaged_on_the_way_is_rejected_and_sent_again(store: Store, name: str, pattern: str) -> None:
    """SeaweedFS answers 400 BadDigest (the SHA-256 sent does not match the body it got): a
    transient error, since the file on disk is intact; never an object, never committed."""
    rule = store.proxy.corrupt_body(method="PUT", path_regex=pattern, times=1)
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    _waits_for_retry(store, name, "BadDigest")
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    assert rule.hits == 1 and _statuses(store, pattern) == [400, 200]
    _exactly_once(store)


def test_a_put_whose_answer_echoes_the_checksum_is_recorded_without_a_head(store: Store) -> None:
    """SeaweedFS (like AWS) answers a PutObject with the SHA-256 it checked the body against:
    the store holds exactly these bytes, so the ETag of that answer is recorded and no HEAD is
    sent (the multipart case below still checks with a HEAD)."""
    store.proxy.clear_log()
    first = _export(store)
    assert (first.exported, first.failed) == (2, 0), first
    heads = [e for e in store.proxy.log if e.method == "HEAD" and re.search(on_the_wire(SMALL) + "$", e.path)]
    assert heads == []
    _exactly_once(store)


@pytest.mark.parametrize("in_memory", [True, False], ids=["small-body", "large-body"])
def test_a_small_object_is_sent_in_one_go_without_waiting_for_100_continue(
    store: Store, in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore sends every body with ``Expect: 100-continue`` and waits for the go-ahead (a
    round trip more per object); sluicegate keeps that for bodies above SMALL_BODY bytes."""
    from sluicegate.destinations import s3_crt, s3_session

    monkeypatch.setattr(s3_session, "SMALL_BODY", 2 * MiB if in_memory else 64 * 1024)  # SMALL is ~1 MB
    monkeypatch.setattr(s3_crt, "crt_puts", lambda *_: None)  # as with s3_client = "boto3"
    store.proxy.clear_log()
    first = _export(store)
    assert (first.exported, first.failed) == (2, 0), first
    [put] = [e for e in store.proxy.log if e.method == "PUT" and re.search(ONE_PUT, e.path)]
    assert put.status == 200 and put.body_bytes > 64 * 1024
    assert (put.header("Expect") is None) is in_memory, put.headers
    _exactly_once(store)


@pytest.mark.parametrize("name", [BIG], ids=["multipart"])
def test_an_object_replaced_between_upload_and_check_is_not_recorded(store: Store, name: str) -> None:
    """Someone overwrites the object (same size, one byte changed) just before sluicegate's
    HEAD after a multipart upload: the HEAD shows another ETag, the export is not committed,
    and the retry replaces the stranger (its conditional upload is refused, then it
    overwrites under the claim)."""
    strangers: list[bytes] = []

    def tamper(exchange: Exchange) -> None:
        body = bytearray(store.s3.get_object(Bucket=store.bucket, Key=name)["Body"].read())
        body[len(body) // 2] ^= 0x01
        store.s3.put_object(Bucket=store.bucket, Key=name, Body=io.BytesIO(bytes(body)))
        strangers.append(bytes(body))

    store.proxy.before(tamper, method="HEAD", path_regex=on_the_wire(name) + "$")
    first = _export(store)
    assert len(strangers) == 1
    assert (first.exported, first.failed) == (1, 1), first
    version, exported, _, failed, _, _, last_error = store.ledger()[name]
    assert (version, exported, bool(failed)) == (1, 0, False) and "replaced" in last_error, last_error
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    _exactly_once(store)
    assert store.s3.get_object(Bucket=store.bucket, Key=name)["Body"].read() != strangers[0]


def test_an_object_deleted_between_upload_and_check_is_retried_not_parked(store: Store) -> None:
    """Someone (a person, a lifecycle rule, another worker placing an emptied partition) deletes
    the object just before sluicegate's HEAD after a multipart upload: the HEAD's 404 parked the
    partition at once as "404 Not Found; check the bucket, credentials and permissions"."""
    store.proxy.before(
        lambda _: store.s3.delete_object(Bucket=store.bucket, Key=BIG),
        method="HEAD",
        path_regex=on_the_wire(BIG) + "$",
    )
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    _waits_for_retry(store, BIG, "deleted")
    second = _export(store)
    assert (second.exported, second.failed) == (1, 0), second
    _exactly_once(store)


def test_a_request_the_endpoint_does_not_implement_is_a_terminal_failure(store: Store) -> None:
    """A store that answers 501 NotImplemented (a header it does not support, such as the
    SHA-256 checksum) answers so every time: it was retried as a transient outage, run after run."""
    store.proxy.fail(method="PUT", path_regex=ONE_PUT, status=501, code="NotImplemented", times=None)
    first = _export(store)
    assert (first.exported, first.failed) == (1, 1), first
    assert not store.exists(SMALL)
    version, exported, token, failed, _, _, last_error = store.ledger()[SMALL]
    assert (version, exported, token, bool(failed)) == (1, 0, None, True), store.ledger()[SMALL]
    assert "will retry" not in last_error, last_error
    assert (
        store.proxy.url.split("//")[1] in last_error
        and "does not implement the PutObject request" in last_error
    )
    assert _statuses(store, ONE_PUT) == [501, 501]  # the CRT's and botocore's: neither retries a 501


def test_credentials_the_store_refuses_are_not_taken_for_another_projects_destination(store: Store) -> None:
    """A worker whose credentials the store refuses (expired, revoked: 403 on every request) read
    the destination's id as absent, and the run exited 2 saying another project may share the
    ledger and to run with --move-destination. Now the check is skipped with a warning and the
    partition fails on the credentials, recorded in the ledger, as before."""
    assert _export(store).exported == 2  # the first run records the destination
    store.db.insert(2, [DAY + dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=1)])
    operations.mark(load(store.root), "openaq", {"location_id": "2", "day": "2024-01-01"})
    store.proxy.fail(status=403, code="InvalidAccessKeyId", times=None)
    refused = _export(store)  # not a ConfigError
    assert (refused.exported, refused.failed) == (0, 1), refused
    assert "InvalidAccessKeyId" in store.ledger()[SMALL][6]
    store.proxy.clear()
    assert _export(store).failed == 0  # the destination's id read again: no refusal
