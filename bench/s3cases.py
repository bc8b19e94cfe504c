"""bench/run.py's S3 cases: sluicegate to SeaweedFS on 127.0.0.1, the endpoint's PUT limit, and
the same through a proxy that adds 30 ms to every request (S3 from another region).

* ``sluicegate-s3-csv`` / ``sluicegate-s3-parquet``: ``sluicegate run`` of the location-day
  task to ``s3://<bucket>/<fresh prefix>`` on SeaweedFS (``weed mini``, signature auth,
  SHA-256 checksums on every PUT), default settings otherwise.
* ``s3-put-limit``: raw boto3 ``put_object`` calls with ``ChecksumSHA256``, one per file of the
  latest ``sluicegate-s3-csv`` run, same sizes (random bytes), from the best of 4 to 64
  threads (chosen by a short calibration before the timed run, reported in the notes).
* ``s3-put-limit-crt``: the same PUTs through awscrt's S3 client (signing and checksum header
  in C), 64 in flight: the endpoint's limit is the faster of the two.
* ``sluicegate-s3-csv-30ms``: ``sluicegate-s3-csv`` through ``bench/latency_proxy.py`` (its own
  process): every request reaches the store 30 ms after it was sent.

Every case checks the bucket: one object per exported partition, and their bytes add up.
SeaweedFS is started once per benchmark (:func:`start`) and stopped at its end.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from run import (  # noqa: E402
    SLUICEGATE,
    CaseFailed,
    Context,
    Run,
    _sluicegate_error,
    child_env,
    log,
    measure,
    reset_ledger,
    src_digest,
)
from soak import ACCESS_KEY, SECRET_KEY, Seaweed, s3_client  # noqa: E402

S3_CASES = (
    "sluicegate-s3-csv", "sluicegate-s3-parquet", "s3-put-limit", "s3-put-limit-crt", "sluicegate-s3-csv-30ms"
)  # fmt: skip
CRT_IN_FLIGHT = 64
LATENCY_S = 0.03
PUT_THREADS = (4, 8, 16, 32, 64)  # the put limit's calibration
CALIBRATION_FILES = 600  # PUTs per thread count when calibrating


@dataclass
class S3Bench:
    """The running SeaweedFS, the sizes of the latest sluicegate-s3-csv files, the proxy."""

    weed: Seaweed
    client: Any
    sizes: list[int] = field(default_factory=list)
    proxy: subprocess.Popen[str] | None = None  # bench/latency_proxy.py
    proxy_url: str = ""
    put_threads: int = 0  # the put limit's best thread count, once calibrated
    calibration: dict[int, float] = field(default_factory=dict)


def start(base: Path) -> S3Bench:
    """Start SeaweedFS (``weed mini``) on 127.0.0.1 for the S3 cases."""
    weed = Seaweed(base)
    weed.start()
    log(f"SeaweedFS S3 on {weed.endpoint}")
    return S3Bench(weed=weed, client=s3_client(weed.endpoint))


def stop(s3: S3Bench) -> None:
    if s3.proxy is not None:
        s3.proxy.terminate()
        s3.proxy.wait(timeout=30)
    s3.weed.stop()


def _fresh_bucket(s3: S3Bench) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.client.create_bucket(Bucket=bucket)
    return bucket


def _drop_bucket(s3: S3Bench, bucket: str) -> None:
    """Delete the bucket (SeaweedFS frees its volume), objects first."""
    paginator = s3.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.client.delete_bucket(Bucket=bucket)


def _object_sizes(s3: S3Bench, bucket: str) -> list[int]:
    """The sizes of the data objects (not the change feed's ``_manifests/`` nor the destination id
    under ``_sluicegate/``, under the URL's prefix)."""
    sizes: list[int] = []
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        contents = page.get("Contents", [])
        own = ("/_manifests/", "/_sluicegate/")
        sizes += [int(o["Size"]) for o in contents if not any(d in "/" + o["Key"] for d in own)]
    return sizes


def case_sluicegate_s3(ctx: Context, fmt: str, *, latency: float = 0.0) -> Run:
    s3: S3Bench = ctx.s3
    marked, mark_s = reset_ledger(ctx.proj, ctx.ds, "openaq", cap=ctx.cap, order=ctx.order)
    bucket = _fresh_bucket(s3)
    endpoint = s3.weed.endpoint
    if latency:
        if s3.proxy is None:
            upstream = endpoint.removeprefix("http://")
            s3.proxy = subprocess.Popen(
                [sys.executable, str(ROOT / "bench/latency_proxy.py"), upstream, str(latency)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert s3.proxy.stdout is not None
            s3.proxy_url = s3.proxy.stdout.readline().strip()
        endpoint = s3.proxy_url
    env = child_env(
        SLUICEGATE_DESTINATION__URL=f"s3://{bucket}/open-data",
        SLUICEGATE_DESTINATION__ENDPOINT_URL=endpoint,
        SLUICEGATE_DESTINATION__ACCESS_KEY_ID=ACCESS_KEY,
        SLUICEGATE_DESTINATION__SECRET_ACCESS_KEY=SECRET_KEY,
        SLUICEGATE_DEFAULTS__FORMAT=fmt,
    )
    try:
        try:
            run, stdout = measure([SLUICEGATE, "-C", str(ctx.proj), "run", "openaq", "--json"], env=env)
        except CaseFailed as exc:
            raise CaseFailed(_sluicegate_error(exc.stdout) or str(exc)) from None
        summary = json.loads(stdout)[0]
        if summary["failed"] or summary["errors"]:
            raise CaseFailed(f"{summary['failed']} failed: {summary['errors'][:3]}")
        run.partitions = summary["exported"] + summary["unchanged"]
        run.rows, run.bytes, run.engine_seconds = summary["rows"], summary["bytes"], summary["seconds"]
        run.extra = {
            "marked": marked,
            "mark_seconds": round(mark_s, 3),
            "capped": bool(ctx.cap),
            "src": src_digest(),
            "latency_ms": latency * 1000,
        }
        if run.partitions != marked:
            raise CaseFailed(f"exported {run.partitions} partitions but {marked} were marked")
        if not ctx.cap and run.rows != ctx.ds.select_rows:
            raise CaseFailed(f"exported {run.rows} rows, the select has {ctx.ds.select_rows}")
        sizes = _object_sizes(s3, bucket)
        if len(sizes) != run.partitions or sum(sizes) != run.bytes:
            raise CaseFailed(
                f"{len(sizes)} objects of {sum(sizes):,} bytes in the bucket, "
                f"expected {run.partitions} of {run.bytes:,}"
            )
        if fmt == "csv.gz" and not latency:
            s3.sizes = sizes
        return run
    finally:
        _drop_bucket(s3, bucket)


def _sizes_file(ctx: Context) -> Path:
    """The latest sluicegate-s3-csv run's object sizes, written where a PUT process reads them."""
    s3: S3Bench = ctx.s3
    if not s3.sizes:
        raise CaseFailed("needs the file sizes of a sluicegate-s3-csv run before it (list that case too)")
    path = ctx.base / "s3-put-sizes.json"
    path.write_text(json.dumps(s3.sizes))
    return path


def _timed_puts(s3: S3Bench, command: Callable[[str], list[str]], extra: dict[str, Any]) -> Run:
    """Run ``command(bucket)`` (a ``_put`` process) into a fresh bucket, timed; check the objects."""
    bucket = _fresh_bucket(s3)
    try:
        run, stdout = measure(command(bucket), env=child_env())
        sizes = _object_sizes(s3, bucket)
    finally:
        _drop_bucket(s3, bucket)
    info = json.loads(stdout)
    run.partitions, run.bytes, run.rows = info["files"], info["bytes"], None
    run.extra = {**extra, "puts_per_s": info["puts_per_s"]}
    if len(sizes) != len(s3.sizes) or sum(sizes) != sum(s3.sizes):
        raise CaseFailed(f"{len(sizes)} objects of {sum(sizes):,} bytes, expected {len(s3.sizes)}")
    return run


def case_put_limit(ctx: Context) -> Run:
    s3: S3Bench = ctx.s3
    sub = [sys.executable, __file__, "_put", s3.weed.endpoint, str(_sizes_file(ctx))]
    if not s3.put_threads:  # calibrate once: the thread count at which this endpoint is fastest
        bucket = _fresh_bucket(s3)
        try:
            for threads in PUT_THREADS:
                _run, stdout = measure([*sub, bucket, str(threads), str(CALIBRATION_FILES)], env=child_env())
                s3.calibration[threads] = round(json.loads(stdout)["puts_per_s"], 1)
        finally:
            _drop_bucket(s3, bucket)
        s3.put_threads = max(s3.calibration, key=lambda t: s3.calibration[t])
        log(f"s3-put-limit calibration (PUTs/s by threads): {s3.calibration}; using {s3.put_threads}")
    extra = {"threads": s3.put_threads, "calibration": s3.calibration}
    return _timed_puts(s3, lambda bucket: [*sub, bucket, str(s3.put_threads), "0"], extra)


def case_put_limit_crt(ctx: Context) -> Run:
    s3: S3Bench = ctx.s3
    sub = [sys.executable, __file__, "_put_crt", s3.weed.endpoint, str(_sizes_file(ctx))]
    return _timed_puts(s3, lambda bucket: [*sub, bucket, str(CRT_IN_FLIGHT)], {"in_flight": CRT_IN_FLIGHT})


CASES = {
    "sluicegate-s3-csv": lambda ctx: case_sluicegate_s3(ctx, "csv.gz"),
    "sluicegate-s3-parquet": lambda ctx: case_sluicegate_s3(ctx, "parquet"),
    "s3-put-limit": case_put_limit,
    "s3-put-limit-crt": case_put_limit_crt,
    "sluicegate-s3-csv-30ms": lambda ctx: case_sluicegate_s3(ctx, "csv.gz", latency=LATENCY_S),
}


# --------------------------------------------------------------------------- in the measured process


def _sub_put(endpoint: str, sizes_path: str, bucket: str, threads: str, limit: str) -> None:
    """PUT one object of each size (random bytes, ChecksumSHA256) from ``threads`` threads."""
    import boto3
    from botocore.config import Config

    sizes = json.loads(Path(sizes_path).read_text())
    if int(limit):
        sizes = sizes[: int(limit)]
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(max_pool_connections=int(threads) + 4, retries={"max_attempts": 3, "mode": "standard"}),
    )

    def put(index: int) -> None:
        body = os.urandom(sizes[index])
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        client.put_object(Bucket=bucket, Key=f"put/{index:07d}", Body=body, ChecksumSHA256=digest)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(int(threads)) as pool:
        list(pool.map(put, range(len(sizes))))
    seconds = time.perf_counter() - started
    print(json.dumps({"files": len(sizes), "bytes": sum(sizes), "puts_per_s": len(sizes) / seconds}))


def _sub_put_crt(endpoint: str, sizes_path: str, bucket: str, in_flight: str) -> None:
    """PUT one object of each size (random bytes, x-amz-checksum-sha256) through awscrt's S3
    client, ``in_flight`` requests at once, path-style as sluicegate sends them."""
    import threading
    import urllib.parse

    from awscrt import s3 as crt_s3
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import ClientBootstrap

    sizes = json.loads(Path(sizes_path).read_text())
    provider = AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET_KEY)
    client = crt_s3.S3Client(
        bootstrap=ClientBootstrap.get_or_create_static_default(),
        region="us-east-1",
        tls_mode=crt_s3.S3RequestTlsMode.DISABLED,
        signing_config=crt_s3.create_default_s3_signing_config(
            region="us-east-1", credential_provider=provider
        ),
        max_active_connections_override=int(in_flight) + 4,
    )
    host = urllib.parse.urlsplit(endpoint).netloc
    slots = threading.Semaphore(int(in_flight))
    failures: list[str] = []

    def done(error: Exception | None = None, **_: Any) -> None:
        if error is not None:
            failures.append(repr(error))
        slots.release()

    started = time.perf_counter()
    requests = []
    for index, size in enumerate(sizes):
        body = os.urandom(size)
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers = HttpHeaders(
            [("Host", host), ("Content-Length", str(size)), ("x-amz-checksum-sha256", digest)]
        )
        slots.acquire()
        requests.append(
            client.make_request(
                type=crt_s3.S3RequestType.DEFAULT,
                operation_name="PutObject",
                on_done=done,
                request=HttpRequest("PUT", f"/{bucket}/put/{index:07d}", headers, io.BytesIO(body)),
            )
        )
    for request in requests:
        request.finished_future.result()
    seconds = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} PUTs failed, first: {failures[0]}")
    print(json.dumps({"files": len(sizes), "bytes": sum(sizes), "puts_per_s": len(sizes) / seconds}))


if __name__ == "__main__":
    if sys.argv[1] == "_put":
        _sub_put(*sys.argv[2:])
    elif sys.argv[1] == "_put_crt":
        _sub_put_crt(*sys.argv[2:])
