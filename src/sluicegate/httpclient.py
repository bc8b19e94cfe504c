"""HTTP clients for the stage callables (``mds``, ``socrata``): one TLS context for the process.

Building an ``httpx.Client`` loads the system's CA bundle each time (tens of milliseconds);
a blocks run makes a client per block, so the context is built once and shared.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import zlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import httpx

from .masking import mask_url


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The default TLS context (certificates verified), built once."""
    return ssl.create_default_context()


def client(*, timeout: float, headers: dict[str, str] | None = None, auth: Any = None) -> httpx.Client:
    """A client with the shared TLS context."""
    return httpx.Client(timeout=timeout, headers=headers, auth=auth, verify=tls_context())


# A request's whole answer must arrive within this many times the client's timeout, which is per
# read: a server sending a few bytes a second, never idle for a whole timeout, held a unit for ever.
WHOLE_ANSWER = 4


def send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """``client.request(method, url, **kwargs)``, its body read whole within ``WHOLE_ANSWER`` times the
    client's read timeout of the request's start (else ``httpx.ReadTimeout``)."""
    limit = WHOLE_ANSWER * (client.timeout.read or 60.0)
    until = time.monotonic() + limit
    with client.stream(method, url, **kwargs) as response:
        message = f"the answer did not arrive whole within {limit:g} s ({WHOLE_ANSWER} times the timeout)"
        gzipped = response.headers.get("Content-Encoding", "").strip().lower() in ("gzip", "x-gzip")
        response.stream = _Until(response.stream, until, response.request, message, gzipped=gzipped)
        response.read()
    return response


class _Until(httpx.SyncByteStream):
    """A response body that fails once its time is up, between the chunks that arrive; and, gzipped,
    when it ends before the gzip stream does (httpx decodes a cut gzip body to part of the answer,
    without error: a page cut short by a proxy was "not JSON", parked, where asking again works)."""

    def __init__(
        self, inner: Any, until: float, request: httpx.Request, message: str, *, gzipped: bool
    ) -> None:
        self.inner, self.until, self.request, self.message = inner, until, request, message
        self.gzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self.started = False  # an empty body (a redirect's, a 429's) under gzip is no gzip stream

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            if time.monotonic() > self.until:
                raise httpx.ReadTimeout(self.message, request=self.request)
            data, self.started = chunk, self.started or bool(chunk)
            with contextlib.suppress(zlib.error):  # a corrupt body: httpx's decoder says so
                while data and self.gzip is not None and not self.gzip.eof:
                    self.gzip.decompress(data, 1 << 16)  # the output is httpx's to keep
                    data = self.gzip.unconsumed_tail
            yield chunk
        if self.gzip is not None and not self.gzip.eof and self.started:
            raise httpx.DecodingError("the gzip-encoded answer ends before its end", request=self.request)

    def close(self) -> None:
        self.inner.close()


def refused(status: int, credentials: str, address: str) -> str:
    """What to do about a 4xx answer: ``credentials`` and ``address`` name the settings to check.

    A token that expired mid-run parked the stage with "HTTP 401 (...)" and no word of the fix."""
    if status in (401, 403):
        return f"; the server refused the credentials: check {credentials}, then rerun with --incomplete-only"
    if status in (404, 410):
        return f"; nothing is there: check {address}, then rerun with --incomplete-only"
    return "; fix what the server names, then rerun with --incomplete-only"


def redirected(status: int, location: str | None, shown: str, fix: str) -> str:
    """Why a redirect is not followed (the credentials would go to an address nobody configured)."""
    return f"{shown} answered HTTP {status}, a redirect to {mask_url(location or '?')}; {fix}"
