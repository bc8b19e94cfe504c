"""The fault proxy (``tests/plugins/faultproxy.py``) in front of a real SeaweedFS, driven by boto3.

Each fault is checked by its effect on the real store (an object stored or not, its bytes) and
on what boto3 sees, with boto3's own retries off so that every injected answer is visible.

The last tests record what the stores themselves do with checksums and conditional writes:
they assert the answers SeaweedFS 4.48 and moto give today, because the design of the object
fence depends on them (see each docstring).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import io
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from plugins.faultproxy import Exchange, FaultProxy

# Imported as a plugin, not directly: pytest must load it first to rewrite its assertions.

MiB = 1024 * 1024
STALE_ETAG = '"0123456789abcdef0123456789abcdef"'


def _client(endpoint: str, key: str, secret: str, **config: Any) -> Any:
    """Path-style boto3 client with its retries off; SDK checksums as boto3 does by default."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            **config,
        ),
    )


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _answer(call: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, error code or "OK") of one boto3 call."""
    try:
        response = call()
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]), str(exc.response["Error"]["Code"])
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), "OK"


def _exists(client: Any, bucket: str, key: str) -> bool:
    return _answer(lambda: client.head_object(Bucket=bucket, Key=key))[0] == 200


@dataclasses.dataclass
class Through:
    """A bucket on a real store, a proxy in front of it, and clients through the proxy and direct."""

    proxy: FaultProxy
    s3: Any  # through the proxy
    direct: Any
    bucket: str
    key: str
    secret: str

    def client(self, **config: Any) -> Any:
        """Another client through the proxy (e.g. with other checksum settings)."""
        return _client(self.proxy.url, self.key, self.secret, **config)

    def get(self, key: str) -> bytes:
        return bytes(self.direct.get_object(Bucket=self.bucket, Key=key)["Body"].read())


@pytest.fixture
def seaweed(seaweed_bucket: tuple[str, str, str, str], fault_proxy: Callable[[str], FaultProxy]) -> Through:
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    return Through(
        proxy, _client(proxy.url, key, secret), _client(endpoint, key, secret), bucket, key, secret
    )


@pytest.fixture(params=["seaweed", "moto"])
def store(
    request: pytest.FixtureRequest, fault_proxy: Callable[[str], FaultProxy]
) -> Iterator[tuple[str, Through]]:
    """The same setup on SeaweedFS and on moto's server."""
    service = request.getfixturevalue("seaweed_s3" if request.param == "seaweed" else "moto_s3")
    bucket = service.make_bucket()
    proxy = fault_proxy(service.endpoint_url)
    key, secret = service.access_key, service.secret_key
    through = Through(
        proxy,
        _client(proxy.url, key, secret),
        _client(service.endpoint_url, key, secret),
        bucket,
        key,
        secret,
    )
    yield str(request.param), through
    service.delete_bucket(bucket)


# --------------------------------------------------------------------------- pass-through


def test_pass_through_put_get_head_and_multipart_on_one_connection(seaweed: Through) -> None:
    s3, bucket = seaweed.s3, seaweed.bucket
    body = b"location_id,day,value\n" + b"1,2024-01-01,1.5\n" * 5000
    put = s3.put_object(
        Bucket=bucket, Key="small.csv", Body=io.BytesIO(body), ChecksumSHA256=_sha256_b64(body)
    )
    assert put["ChecksumSHA256"] == _sha256_b64(body)
    assert s3.get_object(Bucket=bucket, Key="small.csv")["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="small.csv", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(body) and head["ChecksumSHA256"] == _sha256_b64(body)

    big = hashlib.sha256(b"seed").digest() * (12 * MiB // 32)  # 12 MiB: parts of 5, 5 and 2 MiB
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin", ChecksumAlgorithm="SHA256")
    parts = []
    for number, start in enumerate(range(0, len(big), 5 * MiB), start=1):
        chunk = big[start : start + 5 * MiB]
        part = s3.upload_part(
            Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number,
            Body=io.BytesIO(chunk), ChecksumSHA256=_sha256_b64(chunk),
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]})
    assert not _exists(seaweed.direct, bucket, "big.bin")  # invisible until completed
    s3.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert len(parts) == 3
    assert hashlib.sha256(seaweed.get("big.bin")).digest() == hashlib.sha256(big).digest()
    assert s3.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == 12 * MiB

    log = seaweed.proxy.log
    methods = ["PUT", "GET", "HEAD", "POST", "PUT", "PUT", "PUT", "POST", "HEAD"]
    assert [e.method for e in log] == methods
    assert all(e.forwarded and e.fault is None for e in log)
    assert [e.status for e in log] == [200] * len(methods)
    uploads = [e for e in log if e.method == "PUT"]
    assert all(e.header("expect") == "100-continue" for e in uploads)  # boto3 waits for our 100
    assert all(e.header("expect", forwarded=True) is None for e in uploads)
    assert sum(e.body_bytes for e in uploads) == len(body) + len(big)
    assert seaweed.proxy.connections == 1  # every request above on one kept-alive connection


def test_chunked_request_body_is_relayed(seaweed: Through) -> None:
    """A SigV4-signed PUT with ``Transfer-Encoding: chunked`` (boto3 itself sends Content-Length)."""
    body = b"".join(f"row {i}\n".encode() for i in range(20_000))
    url = f"{seaweed.proxy.url}/{seaweed.bucket}/chunked.txt"
    request = AWSRequest("PUT", url, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(seaweed.key, seaweed.secret), "s3", "us-east-1").add_auth(request)
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    headers["Transfer-Encoding"] = "chunked"
    conn = http.client.HTTPConnection("127.0.0.1", seaweed.proxy.port, timeout=30)
    try:
        pieces = iter([body[:70_000], body[70_000:]])  # the proxy reads pieces of 64 KiB
        conn.request(
            "PUT", f"/{seaweed.bucket}/chunked.txt", body=pieces, headers=headers, encode_chunked=True
        )
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"")
    finally:
        conn.close()
    assert seaweed.get("chunked.txt") == body
    [exchange] = seaweed.proxy.log
    assert exchange.header("transfer-encoding", forwarded=True) == "chunked"
    assert exchange.body_bytes == len(body)


# --------------------------------------------------------------------------- faults


def test_fail_answers_twice_then_passes(seaweed: Through) -> None:
    rule = seaweed.proxy.fail(method="PUT", path_regex=r"/slow\.csv$", status=503, times=2, code="SlowDown")
    body = b"a,b\n1,2\n"
    answers = [
        _answer(lambda: seaweed.s3.put_object(Bucket=seaweed.bucket, Key="slow.csv", Body=io.BytesIO(body)))
        for _ in range(3)
    ]
    assert answers == [(503, "SlowDown"), (503, "SlowDown"), (200, "OK")]
    assert seaweed.get("slow.csv") == body
    assert (rule.hits, rule.times) == (2, 0)
    assert [(e.method, e.status) for e in seaweed.proxy.faulted] == [("PUT", 503), ("PUT", 503)]
    assert [(e.forwarded, e.fault, e.status) for e in seaweed.proxy.log] == [
        (False, "fail", 503), (False, "fail", 503), (True, None, 200),
    ]  # fmt: skip
    # Another code on another method; a request the rule does not match passes.
    seaweed.proxy.fail(method="GET", status=500, code="InternalError")
    assert _answer(lambda: seaweed.s3.head_object(Bucket=seaweed.bucket, Key="slow.csv")) == (200, "OK")
    assert _answer(lambda: seaweed.s3.get_object(Bucket=seaweed.bucket, Key="slow.csv")) == (
        500,
        "InternalError",
    )


def test_reset_mid_body_stores_nothing(seaweed: Through) -> None:
    body = b"x" * (2 * MiB)
    rule = seaweed.proxy.reset(method="PUT", after_bytes=512 * 1024)
    with pytest.raises(BotoCoreError):
        seaweed.s3.put_object(
            Bucket=seaweed.bucket, Key="cut.bin", Body=io.BytesIO(body), ChecksumSHA256=_sha256_b64(body)
        )
    assert rule.hits == 1
    assert not _exists(seaweed.direct, seaweed.bucket, "cut.bin")
    [cut] = seaweed.proxy.log
    assert (cut.forwarded, cut.fault, cut.status) == (True, "reset", None)
    assert cut.body_bytes < len(body)  # the client was cut while still sending
    # The rule is used up: the retry goes through.
    seaweed.s3.put_object(Bucket=seaweed.bucket, Key="cut.bin", Body=io.BytesIO(body))
    assert seaweed.get("cut.bin") == body


def test_reset_before_answering_hides_a_stored_object(seaweed: Through) -> None:
    """``after_bytes=None``: the store did the write, the client only sees a dropped connection."""
    seaweed.proxy.reset(method="PUT")
    with pytest.raises(BotoCoreError):
        seaweed.s3.put_object(Bucket=seaweed.bucket, Key="ghost.txt", Body=io.BytesIO(b"stored anyway"))
    assert seaweed.get("ghost.txt") == b"stored anyway"
    [exchange] = seaweed.proxy.log
    assert (exchange.forwarded, exchange.fault, exchange.status) == (True, "reset", None)


def test_corrupted_body_is_rejected_by_seaweed_checksum(seaweed: Through) -> None:
    """SeaweedFS checks ``x-amz-checksum-sha256`` (and ``Content-MD5``) against the body it got."""
    body = b"0123456789" * 10_000
    seaweed.proxy.corrupt_body(method="PUT")
    answer = _answer(
        lambda: seaweed.s3.put_object(
            Bucket=seaweed.bucket, Key="c.csv", Body=io.BytesIO(body), ChecksumSHA256=_sha256_b64(body)
        )
    )
    assert answer == (400, "BadDigest")
    assert not _exists(seaweed.direct, seaweed.bucket, "c.csv")
    # Content-MD5 alone (no SDK checksum) is checked too.
    only_md5 = seaweed.client(request_checksum_calculation="when_required")
    seaweed.proxy.corrupt_body(method="PUT")
    answer = _answer(
        lambda: only_md5.put_object(
            Bucket=seaweed.bucket, Key="m.csv", Body=io.BytesIO(body), ContentMD5=_md5_b64(body)
        )
    )
    assert answer == (400, "BadDigest")
    assert not _exists(seaweed.direct, seaweed.bucket, "m.csv")
    assert [e.fault for e in seaweed.proxy.log] == ["corrupt", "corrupt"]


def test_seaweed_stores_a_corrupted_body_without_a_checksum_header(seaweed: Through) -> None:
    """Recorded behaviour: SeaweedFS 4.48 does NOT verify the SigV4 payload hash.

    Over plain http boto3 signs the body (``x-amz-content-sha256`` is its SHA-256), yet a
    body corrupted after signing is accepted and stored when the request carries no checksum
    header (``request_checksum_calculation="when_required"``, no ``Content-MD5``). So the
    signature protects nothing about the body: only ``x-amz-checksum-*`` / ``Content-MD5``
    do. sluicegate must keep sending ``ChecksumSHA256`` on every PUT and part.
    """
    body = b"0123456789" * 10_000
    bare = seaweed.client(request_checksum_calculation="when_required")
    seaweed.proxy.corrupt_body(method="PUT")
    assert _answer(lambda: bare.put_object(Bucket=seaweed.bucket, Key="bare.csv", Body=io.BytesIO(body))) == (
        200,
        "OK",
    )
    stored = seaweed.get("bare.csv")
    assert len(stored) == len(body) and stored != body
    assert sum(a != b for a, b in zip(stored, body, strict=True)) == 1  # the one flipped byte
    [exchange] = seaweed.proxy.log
    assert exchange.header("x-amz-content-sha256") == hashlib.sha256(body).hexdigest()


def test_strip_conditional_headers_reaches_upstream(seaweed: Through) -> None:
    """Stripped conditions: SeaweedFS notices the broken signature, unless the proxy re-signs.

    SigV4 signs ``If-None-Match``, so removing it alone gets 403 ``SignatureDoesNotMatch``
    from a store that checks signatures. Re-signed, the store sees an unconditional PUT and
    overwrites: an endpoint that ignores conditional writes.
    """
    s3, bucket = seaweed.s3, seaweed.bucket
    s3.put_object(Bucket=bucket, Key="fenced.txt", Body=io.BytesIO(b"first"))

    def put(body: bytes) -> tuple[int, str]:
        return _answer(
            lambda: s3.put_object(Bucket=bucket, Key="fenced.txt", Body=io.BytesIO(body), IfNoneMatch="*")
        )

    assert put(b"second") == (412, "PreconditionFailed")  # honoured when the header arrives
    seaweed.proxy.strip_conditional_headers(True)
    assert put(b"second") == (403, "SignatureDoesNotMatch")
    seaweed.proxy.strip_conditional_headers(True, resign_secret=seaweed.secret)
    assert put(b"second") == (200, "OK")
    assert seaweed.get("fenced.txt") == b"second"
    stripped = seaweed.proxy.log[-1]
    assert stripped.header("if-none-match") == "*"
    assert stripped.header("if-none-match", forwarded=True) is None
    assert "if-none-match" in (stripped.header("authorization") or "")
    assert "if-none-match" not in (stripped.header("authorization", forwarded=True) or "")
    seaweed.proxy.strip_conditional_headers(False)
    assert put(b"third") == (412, "PreconditionFailed")
    # Other requests are untouched while stripping is on (their signature stays as it was).
    seaweed.proxy.strip_conditional_headers(True, resign_secret=seaweed.secret)
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=io.BytesIO(b"plain"))
    plain = seaweed.proxy.log[-1]
    assert plain.status == 200
    assert plain.header("authorization", forwarded=True) == plain.header("authorization")


def test_latency_adds_at_least_the_delay_to_every_request(seaweed: Through) -> None:
    s3, bucket = seaweed.s3, seaweed.bucket
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")

    def median_head_seconds() -> float:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            s3.head_object(Bucket=bucket, Key="k")
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    before = median_head_seconds()
    seaweed.proxy.latency(0.03)
    delayed = median_head_seconds()
    seaweed.proxy.latency(0)
    print(
        f"median HEAD through the proxy: {before * 1000:.1f} ms, with latency(0.03): {delayed * 1000:.1f} ms"
    )
    assert delayed >= 0.03
    assert sorted(e.seconds for e in seaweed.proxy.log[-20:])[0] >= 0.03


def test_delay_holds_only_the_matching_requests(seaweed: Through) -> None:
    s3, bucket = seaweed.s3, seaweed.bucket
    rule = seaweed.proxy.delay(method="PUT", path_regex=r"/late\.txt$", seconds=0.5, times=1)
    s3.put_object(Bucket=bucket, Key="other.txt", Body=io.BytesIO(b"x"))
    started = time.perf_counter()
    s3.put_object(Bucket=bucket, Key="late.txt", Body=io.BytesIO(b"late"))
    assert time.perf_counter() - started >= 0.5
    s3.put_object(Bucket=bucket, Key="late.txt", Body=io.BytesIO(b"again"))
    assert seaweed.get("late.txt") == b"again" and rule.hits == 1
    log = seaweed.proxy.log
    assert [e.fault for e in log] == [None, "delay", None]
    assert log[1].seconds >= 0.5 and all(e.status == 200 for e in log)


def test_before_runs_its_action_ahead_of_the_matching_request(seaweed: Through) -> None:
    """The action changes the store (directly) before the request reaches it: the HEAD sees it."""
    s3, bucket = seaweed.s3, seaweed.bucket
    s3.put_object(Bucket=bucket, Key="k", Body=b"mine")
    seen: list[str] = []

    def swap(exchange: Exchange) -> None:
        seen.append(exchange.method)
        seaweed.direct.put_object(Bucket=bucket, Key="k", Body=b"someone else's")

    rule = seaweed.proxy.before(swap, method="HEAD", path_regex=r"/k$")
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == len(b"someone else's")
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == len(b"someone else's")
    assert (seen, rule.hits) == (["HEAD"], 1)
    assert [e.fault for e in seaweed.proxy.log] == [None, "before", None]


def test_down_refuses_connections_and_up_restores(seaweed: Through) -> None:
    s3, bucket, proxy = seaweed.s3, seaweed.bucket, seaweed.proxy
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    proxy.down()
    # The kept-alive connection is cut at its next request, then new connections are reset.
    with pytest.raises(BotoCoreError):
        s3.head_object(Bucket=bucket, Key="k")
    with pytest.raises(BotoCoreError):
        s3.head_object(Bucket=bucket, Key="k")

    def raw_request() -> bytes:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return raw.recv(1024)

    with pytest.raises(ConnectionResetError):  # at connect, send or receive
        raw_request()
    assert proxy.refused >= 2
    assert [e.fault for e in proxy.log if e.fault] == ["down"]
    proxy.up()
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 1


# --------------------------------------------------------------------------- what the stores do


def test_checksums_recorded(store: tuple[str, Through]) -> None:
    """Recorded: SeaweedFS 4.48 verifies every checksum it is sent; moto verifies none.

    SeaweedFS answers 400 ``BadDigest`` (its message always names Content-MD5) for a wrong
    ``x-amz-checksum-sha256``, ``-crc32``, ``Content-MD5`` and a wrong part checksum, stores
    nothing, and returns the stored SHA-256 on ``HEAD`` with ``ChecksumMode=ENABLED``. moto
    (server mode) stores the object in every case, returns no checksum on ``HEAD``, and so
    also stores a body corrupted in transit: integrity tests need SeaweedFS.
    """
    name, s = store
    body = b"measurement\n" * 4096
    wrong = [
        ("sha256", {"ChecksumSHA256": _sha256_b64(b"other")}),
        ("md5", {"ContentMD5": _md5_b64(b"other")}),
        ("crc32", {"ChecksumCRC32": "AAAAAA=="}),
    ]
    answers = {
        kind: _answer(lambda a=args, k=kind: s.direct.put_object(Bucket=s.bucket, Key=k, Body=body, **a))  # type: ignore[misc]
        for kind, args in wrong
    }
    stored = {kind: _exists(s.direct, s.bucket, kind) for kind, _ in wrong}
    s.direct.put_object(Bucket=s.bucket, Key="good", Body=body, ChecksumSHA256=_sha256_b64(body))
    head = s.direct.head_object(Bucket=s.bucket, Key="good", ChecksumMode="ENABLED")
    upload = s.direct.create_multipart_upload(Bucket=s.bucket, Key="mpu", ChecksumAlgorithm="SHA256")
    part = _answer(
        lambda: s.direct.upload_part(
            Bucket=s.bucket,
            Key="mpu",
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=body,
            ChecksumSHA256=_sha256_b64(b"other"),
        )
    )
    s.proxy.corrupt_body(method="PUT")
    in_transit = _answer(
        lambda: s.s3.put_object(
            Bucket=s.bucket, Key="flipped", Body=io.BytesIO(body), ChecksumSHA256=_sha256_b64(body)
        )
    )
    if name == "seaweed":
        assert answers == {kind: (400, "BadDigest") for kind, _ in wrong}
        assert stored == {kind: False for kind, _ in wrong}
        assert head["ChecksumSHA256"] == _sha256_b64(body)
        assert part == (400, "BadDigest")
        assert in_transit == (400, "BadDigest") and not _exists(s.direct, s.bucket, "flipped")
    else:
        assert answers == {kind: (200, "OK") for kind, _ in wrong}
        assert stored == {kind: True for kind, _ in wrong}
        assert "ChecksumSHA256" not in head
        assert part == (200, "OK")
        assert in_transit == (200, "OK") and s.get("flipped") != body


def test_conditional_writes_recorded(store: tuple[str, Through]) -> None:
    """Recorded: both stores honour ``If-None-Match: *`` and ``If-Match`` on PutObject.

    PutObject: ``If-None-Match: *`` on an existing key and ``If-Match`` with a stale ETag are
    answered 412 ``PreconditionFailed`` and change nothing; a fresh key and the current ETag
    succeed. ``If-Match`` on a missing key: SeaweedFS 412, moto 404 ``NoSuchKey`` (AWS
    documents 404). CompleteMultipartUpload: both honour ``If-None-Match: *``; SeaweedFS
    honours a stale ``If-Match`` (412), **moto ignores it and overwrites** (200).
    """
    name, s = store
    c, bucket = s.direct, s.bucket
    c.put_object(Bucket=bucket, Key="k", Body=b"v1")
    etag = c.head_object(Bucket=bucket, Key="k")["ETag"]
    put: dict[str, tuple[int, str]] = {
        "if-none-match existing": _answer(
            lambda: c.put_object(Bucket=bucket, Key="k", Body=b"x", IfNoneMatch="*")
        ),
        "if-none-match fresh": _answer(
            lambda: c.put_object(Bucket=bucket, Key="new", Body=b"x", IfNoneMatch="*")
        ),
        "if-match stale": _answer(
            lambda: c.put_object(Bucket=bucket, Key="k", Body=b"x", IfMatch=STALE_ETAG)
        ),
        "if-match missing key": _answer(
            lambda: c.put_object(Bucket=bucket, Key="none", Body=b"x", IfMatch=etag)
        ),
    }
    assert s.get("k") == b"v1"
    put["if-match current"] = _answer(lambda: c.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag))
    assert s.get("k") == b"v2"

    def complete(key: str, **condition: str) -> tuple[int, str]:
        part_body = b"p" * (5 * MiB)
        upload = c.create_multipart_upload(Bucket=bucket, Key=key)
        part = c.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=part_body
        )
        parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        return _answer(
            lambda: c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload=parts, **condition
            )
        )

    mpu = {
        "if-none-match existing": complete("k", IfNoneMatch="*"),
        "if-none-match fresh": complete("mpu-new", IfNoneMatch="*"),
    }
    assert s.get("k") == b"v2"
    mpu["if-match stale"] = complete("k", IfMatch=STALE_ETAG)
    overwritten = c.head_object(Bucket=bucket, Key="k")["ContentLength"] == 5 * MiB

    assert put["if-none-match existing"] == (412, "PreconditionFailed")
    assert put["if-none-match fresh"] == (200, "OK")
    assert put["if-match stale"] == (412, "PreconditionFailed")
    assert put["if-match current"] == (200, "OK")
    assert mpu["if-none-match existing"] == (412, "PreconditionFailed")
    assert mpu["if-none-match fresh"] == (200, "OK")
    if name == "seaweed":
        assert put["if-match missing key"] == (412, "PreconditionFailed")
        assert mpu["if-match stale"] == (412, "PreconditionFailed") and not overwritten
    else:
        assert put["if-match missing key"] == (404, "NoSuchKey")
        assert mpu["if-match stale"] == (200, "OK") and overwritten
