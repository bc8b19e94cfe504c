"""An SQS queue that ingest tasks read: receive in batches, delete what was handled.

A received message stays invisible for ``visibility_timeout``; it is deleted only after its
batch committed (inserted, a duplicate, or a malformed message skipped or parked). A batch
that failed is not deleted, so SQS delivers it again when the timeout ends, and inserting it
again changes nothing (ingest is idempotent on the message id). boto3 is imported lazily.
"""

from __future__ import annotations

import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import validate
from .exceptions import ConfigError, SourceUnavailable
from .messages import Message, parse

log = logging.getLogger("sluicegate.sqs")
SQS_KEYS = frozenset({"queue_url", "region", "endpoint_url", "wait", "visibility_timeout"})
RECEIVE_MAX = 10  # SQS returns at most 10 messages per receive
MAX_VISIBILITY = 43200.0  # seconds: the longest visibility timeout SQS allows (12 hours)


@dataclass(frozen=True, kw_only=True)
class SqsSpec:
    """An ingest task's ``[sqs]``: the queue, where it is, how long to wait and to hide messages."""

    queue_url: str
    region: str | None = None
    endpoint_url: str | None = field(default=None)
    wait: float = 1.0  # long polling per receive; the queue counts as drained after an empty one
    visibility_timeout: float = 60.0


def load_sqs(raw: Any, where: str) -> SqsSpec:
    """Read ``[sqs]`` of an ingest task."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table, e.g. [sqs] then queue_url = "https://sqs..."')
    validate.reject_unknown(raw, SQS_KEYS, where)
    if not raw.get("queue_url"):
        raise ConfigError(f"{where} queue_url: missing; give the URL of the SQS queue")
    wait = validate.parse_duration(raw.get("wait", 1), where=f"{where} wait")
    if wait > 20:
        raise ConfigError(f"{where} wait: {wait:g} s is longer than SQS allows; use at most 20s")
    visibility = validate.parse_duration(
        raw.get("visibility_timeout", 60), where=f"{where} visibility_timeout"
    )
    if not visibility.is_integer() or visibility > MAX_VISIBILITY:  # SQS refused each receive: "will retry"
        raise ConfigError(
            f"{where} visibility_timeout: {raw['visibility_timeout']!r} is not whole seconds from 0 to 12h, "
            'which SQS allows; use e.g. "60s"'
        )
    region = _text(raw, "region", where)
    if region is not None and not _REGION.fullmatch(region):
        raise ConfigError(f'{where} region: {region!r} is not a region name; write one like "eu-west-1"')
    return SqsSpec(
        queue_url=_url(raw, "queue_url", where) or "",
        region=region,
        endpoint_url=_url(raw, "endpoint_url", where),
        wait=wait,
        visibility_timeout=visibility,
    )


_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # as botocore checks it


def _text(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} {key}: {value!r} is not text; write it in quotes")
    return value


def _url(raw: dict[str, Any], key: str, where: str) -> str | None:
    """An http(s) URL setting (boto3 raised "Invalid endpoint" with a traceback on others)."""
    value = _text(raw, key, where)
    if value is not None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{where} {key}: {value!r} is not an http(s) URL; write it whole, e.g. "
                '"https://sqs.eu-west-1.amazonaws.com/123456789012/measurements"'
            )
    return value


# AWS queue URLs name their region: https://sqs.eu-west-1.amazonaws.com/..., and the legacy
# https://eu-west-1.queue.amazonaws.com/... (https://queue.amazonaws.com/... is us-east-1)
_QUEUE_HOST = re.compile(
    r"(?:sqs\.(?P<new>[a-z0-9-]+)|(?P<old>[a-z0-9-]+)\.queue|queue)\.amazonaws\.com(?:\.cn)?"
)


def queue_region(spec: SqsSpec, default: str | None) -> str:
    """The region to ask the queue in: ``[sqs] region``, else the one its AWS URL names, else
    boto3's default (``AWS_DEFAULT_REGION``, ``~/.aws/config``), else us-east-1. A client of
    another region than the queue's is refused every receive, and us-east-1 was taken whatever
    the URL and the environment said."""
    if spec.region:
        return spec.region
    found = _QUEUE_HOST.fullmatch(urllib.parse.urlsplit(spec.queue_url).hostname or "")
    if found:
        return found["new"] or found["old"] or "us-east-1"
    return default or "us-east-1"


class SqsQueue:
    """Receives and deletes messages of one queue."""

    def __init__(self, spec: SqsSpec) -> None:
        import boto3

        self.spec = spec
        session = boto3.session.Session()
        self.client: Any = session.client(
            "sqs", region_name=queue_region(spec, session.region_name), endpoint_url=spec.endpoint_url
        )

    def _call(self, what: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, what)(QueueUrl=self.spec.queue_url, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise SourceUnavailable(f"SQS queue {self.spec.queue_url}: {exc}; will retry") from exc

    def receive(
        self,
        count: int,
        *,
        stop: Callable[[], bool] = lambda: False,
        left: Callable[[], float] = lambda: math.inf,
    ) -> list[Message]:
        """Up to ``count`` messages, each parsed (a malformed one carries its error).

        Collecting stops once half the visibility timeout has passed since the first messages
        came, leaving the other half for the commit and the delete: under a steady trickle the
        batch filled for longer than the timeout, and its first messages came back into it. It
        stops too when ``stop()`` (SIGTERM) or when the run's time is up (``left()`` seconds
        remain; a long poll is shortened to them): the batch filled on past Lambda's time limit.
        What was received by then is returned, to be committed; the rest stays in the queue. So
        it is when a receive fails after others succeeded (an error only when none did)."""
        batch: list[Message] = []
        deadline = math.inf
        while len(batch) < count and not stop():
            room = min(deadline - time.monotonic(), left())
            if room <= 0:
                break
            try:
                reply = self._call(
                    "receive_message",
                    MaxNumberOfMessages=min(RECEIVE_MAX, count - len(batch)),
                    WaitTimeSeconds=int(min(self.spec.wait, room)),
                    VisibilityTimeout=int(self.spec.visibility_timeout),
                    MessageAttributeNames=["All"],
                )
            except SourceUnavailable as exc:
                if not batch:
                    raise
                # The messages in hand are committed, not dropped: they would come back after
                # the visibility timeout with a higher receive count (a dead-letter queue's).
                log.warning("receiving more failed; ingesting the %d messages received: %s", len(batch), exc)
                break
            received = reply.get("Messages", [])
            if not received:
                break
            if not batch:
                deadline = time.monotonic() + self.spec.visibility_timeout / 2
            batch += [_message(m) for m in received]
        return batch

    def delete(self, messages: Sequence[Message]) -> None:
        """Delete handled messages; one that cannot be deleted comes back and is a duplicate then."""
        handles = [m.receipt for m in messages if m.receipt]
        for start in range(0, len(handles), RECEIVE_MAX):
            entries = [
                {"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles[start : start + RECEIVE_MAX])
            ]
            reply = self._call("delete_message_batch", Entries=entries)
            for failed in reply.get("Failed", []):
                log.warning(
                    "SQS queue %s: a handled message was not deleted: %s", self.spec.queue_url, failed
                )

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _message(received: dict[str, Any]) -> Message:
    """A received SQS message: its body parsed, its SQS attributes and id as fallbacks."""
    return parse(
        received.get("Body", ""),
        where=f"SQS message {received.get('MessageId')}",
        receipt=received.get("ReceiptHandle"),
        attributes=received.get("MessageAttributes") or {},
        fallback_id=received.get("MessageId"),
    )
