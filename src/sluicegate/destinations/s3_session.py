"""One boto3 session per credentials, region and ``AWS_*`` environment in a process; its clients' settings.

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
import botocore.exceptions
import botocore.handlers
import botocore.utils

from ..specs import DestinationSettings

SMALL_BODY = 1024 * 1024  # bytes up to which a body goes without "Expect: 100-continue"
# What no retry can cure: no credentials anywhere, half of them, or a profile that is not there.
NO_CREDENTIALS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ProfileNotFound,
)
CREDENTIALS_HINT = (
    "set access_key_id and secret_access_key under [destination],"
    " or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
)
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


def continue_only_for_large_bodies(client: Any) -> None:
    """Have ``client`` send ``Expect: 100-continue`` only with bodies above SMALL_BODY bytes.

    botocore sends it with every S3 body and then waits for the store's ``100 Continue``
    before the first byte: a round trip more per object, 30 ms more per PUT to another
    region, for a check (is the request refused before its body is sent?) that only pays off
    on large bodies.
    """
    standard = getattr(botocore.handlers, "add_expect_header", None)
    if standard is None:  # a botocore without it sends no Expect header at all
        return
    client.meta.events.unregister("before-call.s3", standard)

    def expect_large(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        body = params.get("body")
        if body is not None and (botocore.utils.determine_content_length(body) or 0) > SMALL_BODY:
            standard(model, params, **kwargs)

    client.meta.events.register("before-call.s3", expect_large)
