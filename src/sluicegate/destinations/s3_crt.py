"""Single ``PUT``s through the AWS Common Runtime's S3 client (``awscrt``), for small objects.

botocore spends ~1.3 ms of Python, under the GIL, on every ``put_object`` (events, request
building, SigV4 signing); on a location-day export that, not the store, capped S3 at about
the rate one core's worth of botocore allows. The CRT signs and sends the same request in C on
its own event-loop threads: ~0.4 ms of client CPU per PUT, measured side by side
(bench/README.md, "S3 through the AWS Common Runtime").

Only what :class:`~sluicegate.destinations.s3.S3Destination` needs is here: one ``PUT`` of a
body held in memory, with the SHA-256 the store must check and the ledger's condition
(``If-None-Match: *`` or ``If-Match``). The caller keeps everything else on botocore (HEAD,
multipart, listing, deletes) and sends a PUT again through botocore whenever this one fails
for any reason other than a refused condition: botocore's error codes, retries and region
redirects stay the single place where S3's failures are understood.
"""

from __future__ import annotations

import io
import os
import re
import urllib.parse
from typing import Any

from awscrt import s3 as crt_s3
from awscrt.auth import AwsCredentials, AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import ClientBootstrap, ClientTlsContext, TlsContextOptions

from ..specs import DestinationSettings

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")  # in an S3 error answer's XML body
PUT_TIMEOUT = 120.0  # seconds for one small PUT, retries included (botocore: 60 s per read)
CRT_RETRIES = 2  # the CRT's own retries of a 5xx or lost connection, before botocore sends it again
# botocore honours these and the CRT does not: with any of them set, PUTs stay on botocore.
UNSUPPORTED_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def crt_puts(settings: DestinationSettings, session: Any, endpoint: str, bucket: str) -> CrtPuts | None:
    """The CRT client for a destination's small PUTs, or None where they stay on botocore.

    ``endpoint`` is where botocore sends requests (the setting, ``AWS_ENDPOINT_URL_S3``, a
    profile, or AWS): the CRT must send them to the same place.
    """
    if any(os.environ.get(name) for name in UNSUPPORTED_ENV):
        return None
    credentials = session.get_credentials()
    aws = not settings.endpoint_url and urllib.parse.urlsplit(endpoint).netloc.endswith(".amazonaws.com")
    if credentials is None or not CrtPuts.usable(bucket, aws):
        return None  # botocore says what is missing, as it always did
    return CrtPuts(
        bucket=bucket,
        region=session.region_name,
        endpoint_url=endpoint,
        aws=aws,
        credentials=credentials,
        connections=settings.uploads_in_flight + 4,
        connect_timeout=10,
        ca_bundle=os.environ.get("AWS_CA_BUNDLE") or None,
    )


class PutFailed(Exception):
    """The PUT did not succeed: ``status`` is the HTTP status when the store answered (else 0),
    ``code`` the S3 error code of its answer (``BadDigest``, ``AccessDenied``, ...) if any."""

    def __init__(self, status: int, detail: str, code: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


class CrtPuts:
    """PUTs of small objects to one bucket, from any number of threads at once."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str,  # the one botocore resolved (settings, AWS_ENDPOINT_URL_S3, or AWS's)
        aws: bool,  # AWS itself (no endpoint of the user's): virtual-hosted style
        credentials: Any,  # botocore's Credentials (refreshable ones are asked again each time)
        connections: int,
        connect_timeout: float,
        ca_bundle: str | None = None,  # AWS_CA_BUNDLE, as botocore reads it: trusted for https
    ) -> None:
        self.bucket = bucket
        url = urllib.parse.urlsplit(endpoint_url)
        tls = url.scheme == "https"
        if aws:  # bucket.s3.<region>.amazonaws.com (or its FIPS/dual-stack twin); see usable()
            self.host = f"{bucket}.{url.netloc}"
            self.base = ""
        else:  # an S3-compatible store (or a proxy): path-style, as botocore sends
            self.host = url.netloc
            self.base = url.path.rstrip("/") + "/" + urllib.parse.quote(bucket, safe="")

        def current() -> AwsCredentials:
            frozen = credentials.get_frozen_credentials()
            return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

        provider = AwsCredentialsProvider.new_delegate(current)
        tls_options = None
        if tls and ca_bundle:
            context = TlsContextOptions()
            context.override_default_trust_store_from_path(None, ca_bundle)
            tls_options = ClientTlsContext(context).new_connection_options()
        self.client = crt_s3.S3Client(
            bootstrap=ClientBootstrap.get_or_create_static_default(),
            region=region,
            tls_mode=crt_s3.S3RequestTlsMode.ENABLED if tls else crt_s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            signing_config=crt_s3.create_default_s3_signing_config(
                region=region, credential_provider=provider
            ),
            max_active_connections_override=connections,
            connect_timeout_ms=int(connect_timeout * 1000),
            retry_config=crt_s3.S3RetryConfig(max_retries=CRT_RETRIES),
        )

    @staticmethod
    def usable(bucket: str, aws: bool) -> bool:
        """Whether a bucket's PUTs can go this way (AWS's virtual hosts need DNS-safe names)."""
        return not aws or "." not in bucket

    def put(self, key: str, body: bytes, sha256_b64: str, conditions: dict[str, str]) -> dict[str, str]:
        """PUT ``body`` at ``key``: the answer's headers (lower-case names); raise
        :class:`PutFailed` unless the store answered 2xx."""
        headers = [
            ("Host", self.host),
            ("Content-Length", str(len(body))),
            ("x-amz-checksum-sha256", sha256_b64),
        ]
        if "IfNoneMatch" in conditions:
            headers.append(("If-None-Match", conditions["IfNoneMatch"]))
        if "IfMatch" in conditions:
            headers.append(("If-Match", conditions["IfMatch"]))
        path = f"{self.base}/{urllib.parse.quote(key, safe='/~')}"
        request = HttpRequest("PUT", path, HttpHeaders(headers), io.BytesIO(body))
        answered: dict[str, Any] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            answered["status"] = status_code
            answered["headers"] = {name.lower(): value for name, value in headers}

        meta = self.client.make_request(
            type=crt_s3.S3RequestType.DEFAULT,
            operation_name="PutObject",
            request=request,
            on_headers=on_headers,
        )
        try:
            meta.finished_future.result(PUT_TIMEOUT)
        except crt_s3.S3ResponseError as exc:
            found = _CODE.search(exc.body or b"")
            code = found.group(1).decode(errors="replace") if found else ""
            raise PutFailed(
                int(exc.status_code or 0), f"HTTP {exc.status_code} {code}".strip(), code
            ) from exc
        except TimeoutError as exc:
            meta.cancel()
            raise PutFailed(0, f"no answer within {PUT_TIMEOUT:.0f} s") from exc
        except Exception as exc:  # the CRT's own errors (connection refused, reset, TLS, ...)
            raise PutFailed(0, str(exc) or type(exc).__name__) from exc
        status = int(answered.get("status", 0))
        if not 200 <= status < 300:
            raise PutFailed(status, f"HTTP {status}")
        answer: dict[str, str] = answered.get("headers", {})
        return answer
