"""HTTP clients for the stage callables (``mds``, ``socrata``): one TLS context for the process.

Building an ``httpx.Client`` loads the system's CA bundle each time (tens of milliseconds);
a blocks run makes a client per block, so the context is built once and shared.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

import httpx


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The default TLS context (certificates verified), built once."""
    return ssl.create_default_context()


def client(*, timeout: float, headers: dict[str, str] | None = None, auth: Any = None) -> httpx.Client:
    """A client with the shared TLS context."""
    return httpx.Client(timeout=timeout, headers=headers, auth=auth, verify=tls_context())
