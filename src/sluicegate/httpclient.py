"""HTTP clients for the stage callables (``mds``, ``socrata``): one TLS context for the process.

Building an ``httpx.Client`` loads the system's CA bundle each time (tens of milliseconds);
a blocks run makes a client per block, so the context is built once and shared.
"""

from __future__ import annotations

import ssl
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
