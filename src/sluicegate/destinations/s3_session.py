"""One boto3 session per credentials, region and ``AWS_*`` environment in a process.

A session keeps the S3 service model it loads, ~12 MiB: the exporters of ``run --workers N``
(one destination each) make their clients from one session instead of N. Each client keeps
its own configuration and connection pool.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import boto3

from ..specs import DestinationSettings

_SESSIONS: dict[tuple[Any, ...], boto3.session.Session] = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def shared_session(settings: DestinationSettings) -> Iterator[boto3.session.Session]:
    """The session for ``settings``, held under a lock while the caller makes its clients.

    A session is not thread-safe, so its clients are made one at a time. The key includes
    every ``AWS_*`` variable, which a session reads when it is made (profiles, config files,
    endpoints): a changed environment gets a new session.
    """
    region = settings.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (settings.access_key_id, settings.secret_access_key, region, aws_env)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = boto3.session.Session(
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                region_name=region,
            )
        yield session
