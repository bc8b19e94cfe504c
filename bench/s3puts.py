"""What one small PUT costs the store and the client, by how it is sent (issue 16's S3 limit).

    .venv/bin/python bench/s3puts.py                  # 14,000 PUTs per variant, 2 rounds, ~3 min
    .venv/bin/python bench/s3puts.py --puts 5000 --rounds 3

Starts SeaweedFS (``weed mini``, as bench/run.py's S3 cases do) and sends the same bodies
(1.5-4 KB, the size of a location-day's csv.gz) through awscrt's S3 client, 64 in flight, in
five variants, interleaved round by round:

* ``flat``: keys ``put/0000001``, no condition (what ``s3-put-limit-crt`` sends);
* ``nested``: sluicegate's keys for the OpenAQ layout (``.../locationid=N/year=Y/month=M/...``);
* ``nested-cond``: the same with ``If-None-Match: *``, as sluicegate's first upload of a
  partition is sent (its fencing);
* ``threads``: ``nested-cond`` through sluicegate's own ``CrtPuts.put``, each PUT waited for
  on one of 64 threads (what the pipeline does: a thread per upload in flight);
* ``callbacks``: the same requests completed from the CRT's callbacks, no thread per PUT.

For each it prints PUTs per second, the store's CPU per PUT (from /proc of the ``weed``
process) and the client's (this process's CPU while the variant runs). Every variant checks
that all its PUTs succeeded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from soak import ACCESS_KEY, SECRET_KEY, Seaweed, s3_client  # noqa: E402

IN_FLIGHT = 64
IF_NONE = {"IfNoneMatch": "*"}  # sluicegate's condition on a first upload
BODIES = 200  # distinct bodies, reused round-robin


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of every thread of ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def flat_key(index: int) -> str:
    return f"put/{index:07d}"


def nested_key(index: int) -> str:
    """A distinct location-day key in the OpenAQ template's layout (300 locations)."""
    location, day = index % 300, index // 300
    month, mday = day // 28 + 1, day % 28 + 1
    return (
        f"open-data/records/csv.gz/locationid={location}/year=2024/month={month:02d}/"
        f"location-{location}-2024{month:02d}{mday:02d}.csv.gz"
    )


class Variants:
    """The five ways of sending the same PUTs (see the module's docstring)."""

    def __init__(self, endpoint: str, seed: int = 1) -> None:
        from awscrt import s3 as crt_s3
        from awscrt.auth import AwsCredentialsProvider
        from awscrt.io import ClientBootstrap

        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ACCESS_KEY, SECRET_KEY
        import botocore.session

        from sluicegate.destinations.s3_crt import CrtPuts

        self.endpoint = endpoint
        self.host = urllib.parse.urlsplit(endpoint).netloc
        rng = random.Random(seed)
        self.bodies = [rng.randbytes(rng.randint(1500, 4000)) for _ in range(BODIES)]
        self.digests = [base64.b64encode(hashlib.sha256(b).digest()).decode() for b in self.bodies]
        self.crt = crt_s3.S3Client(
            bootstrap=ClientBootstrap.get_or_create_static_default(),
            region="us-east-1",
            tls_mode=crt_s3.S3RequestTlsMode.DISABLED,
            signing_config=crt_s3.create_default_s3_signing_config(
                region="us-east-1",
                credential_provider=AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET_KEY),
            ),
            max_active_connections_override=IN_FLIGHT + 4,
        )
        self.credentials = botocore.session.get_session().get_credentials()
        self.crt_puts_class = CrtPuts

    def _raw(self, bucket: str, count: int, key: Callable[[int], str], condition: bool) -> None:
        from awscrt import s3 as crt_s3

        slots = threading.Semaphore(IN_FLIGHT)
        failures: list[str] = []
        done_all = threading.Event()
        left = [count]
        lock = threading.Lock()

        def finished(error: Exception | None = None, status_code: int | None = None, **_: Any) -> None:
            if error is not None:
                failures.append(f"{status_code} {error!r}")
            slots.release()
            with lock:
                left[0] -= 1
                if not left[0]:
                    done_all.set()

        for index in range(count):
            slots.acquire()
            self.crt.make_request(
                type=crt_s3.S3RequestType.DEFAULT,
                operation_name="PutObject",
                on_done=finished,
                request=self._request(self.host, f"/{bucket}", key(index), index, condition),
            )
        done_all.wait()
        if failures:
            raise SystemExit(f"{len(failures)} PUTs failed, first: {failures[0]}")

    def flat(self, bucket: str, count: int) -> None:
        self._raw(bucket, count, flat_key, False)

    def nested(self, bucket: str, count: int) -> None:
        self._raw(bucket, count, nested_key, False)

    def nested_cond(self, bucket: str, count: int) -> None:
        self._raw(bucket, count, nested_key, True)

    def _puts(self, bucket: str) -> Any:
        return self.crt_puts_class(
            bucket=bucket,
            region="us-east-1",
            endpoint_url=self.endpoint,
            aws=False,
            credentials=self.credentials,
            connections=IN_FLIGHT + 4,
            connect_timeout=10,
        )

    def _body(self, index: int) -> tuple[bytes, str]:
        return self.bodies[index % BODIES], self.digests[index % BODIES]

    def _request(self, host: str, base: str, key: str, index: int, condition: bool) -> Any:
        """The PUT of body ``index`` at ``base``/``key``, with its SHA-256 (and ``If-None-Match: *``)."""
        from awscrt.http import HttpHeaders, HttpRequest

        body, digest = self._body(index)
        headers = [("Host", host), ("Content-Length", str(len(body))), ("x-amz-checksum-sha256", digest)]
        if condition:
            headers.append(("If-None-Match", "*"))
        path = f"{base}/{urllib.parse.quote(key, safe='/~')}"
        return HttpRequest("PUT", path, HttpHeaders(headers), io.BytesIO(body))

    def threads(self, bucket: str, count: int) -> None:
        puts = self._puts(bucket)
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(puts.put, nested_key(i), *self._body(i), IF_NONE) for i in range(count)]
            for future in futures:
                future.result()

    def callbacks(self, bucket: str, count: int) -> None:
        from awscrt import s3 as crt_s3

        puts = self._puts(bucket)
        slots = threading.Semaphore(IN_FLIGHT)
        outcomes: list[Future[int]] = []
        for index in range(count):
            outcome: Future[int] = Future()
            answered: dict[str, Any] = {}

            def on_headers(
                status_code: int, headers: Any, answered: dict[str, Any] = answered, **_: Any
            ) -> None:
                answered["status"] = status_code
                answered["etag"] = dict((n.lower(), v) for n, v in headers).get("etag")

            def on_done(
                error: Exception | None = None, answered: dict[str, Any] = answered,
                outcome: Future[int] = outcome, **_: Any,
            ) -> None:  # fmt: skip
                slots.release()
                if error is not None:
                    outcome.set_exception(error)
                else:
                    outcome.set_result(int(answered.get("status", 0)))

            slots.acquire()
            puts.client.make_request(
                type=crt_s3.S3RequestType.DEFAULT,
                operation_name="PutObject",
                on_headers=on_headers,
                on_done=on_done,
                request=self._request(puts.host, puts.base, nested_key(index), index, True),
            )
            outcomes.append(outcome)
        statuses = {outcome.result() for outcome in outcomes}
        if statuses != {200}:
            raise SystemExit(f"answers other than 200: {statuses}")


VARIANTS = ("flat", "nested", "nested_cond", "threads", "callbacks")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=14000, help="PUTs per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.puts > 300 * 28 * 12:
        parser.error("--puts: at most 100,800 (distinct nested keys)")
    base = Path(tempfile.mkdtemp(prefix="sluicegate-s3puts-", dir="/tmp"))
    weed = Seaweed(base)
    weed.start()
    try:
        assert weed.proc is not None
        client = s3_client(weed.endpoint)
        variants = Variants(weed.endpoint)
        print(f"{'variant':12s} {'PUTs/s':>7s} {'store ms/PUT':>12s} {'client ms/PUT':>13s}")
        for round_ in range(args.rounds):
            for name in VARIANTS:
                bucket = f"puts-{name.replace('_', '-')}-{round_}"
                client.create_bucket(Bucket=bucket)
                store0, client0 = process_cpu(weed.proc.pid), time.process_time()
                started = time.perf_counter()
                getattr(variants, name)(bucket, args.puts)
                seconds = time.perf_counter() - started
                store = process_cpu(weed.proc.pid) - store0
                own = time.process_time() - client0
                pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                count = sum(page.get("KeyCount", 0) for page in pages)
                if count != args.puts:
                    raise SystemExit(f"{name}: {count} objects in the bucket, expected {args.puts}")
                print(
                    f"{name:12s} {args.puts / seconds:7,.0f} {1000 * store / args.puts:12.3f} "
                    f"{1000 * own / args.puts:13.3f}",
                    flush=True,
                )
    finally:
        weed.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
