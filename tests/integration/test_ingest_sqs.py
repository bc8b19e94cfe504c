"""Ingest from SQS over HTTP (moto's server): SNS-wrapped messages, a duplicate, malformed ones,
and a batch redelivered after the worker was SIGKILLed between its commit and the delete.

Also ingest into PostgreSQL (ON CONFLICT, savepoints) and a run that drains the queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airmax_support import airmax_project
from plugins.s3 import S3Service
from sluicegate import engine, tables
from sluicegate.options import RunOptions
from support import SLUICEGATE, cli, load

TASK = "measurements"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.pg),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def sns_body(message_id: str, city: str, value: str) -> str:
    """An SNS notification as airmax's Lambda received it from its queue."""
    attributes = {
        "date_utc": "2024-03-10T11:58:00.000Z", "country": "BE", "location": f"{city}-1", "city": city,
        "latitude": "51.054", "longitude": "3.717", "sourceType": "government", "sourceName": "VMM",
        "parameter": "pm25", "unit": "µg/m³", "value": value,
    }  # fmt: skip
    return json.dumps({
        "Type": "Notification", "MessageId": message_id, "Message": "{}",
        "TopicArn": "arn:aws:sns:us-east-1:470049585876:NewFetchObject", "Timestamp": "2024-03-10T11:59:30.123Z",
        "MessageAttributes": {k: {"Type": "String", "Value": v} for k, v in attributes.items()},
    })  # fmt: skip


@pytest.fixture
def sqs(moto_s3: S3Service, aws_credentials: None) -> Any:
    """A boto3 SQS client of moto's server (which serves every AWS service, SQS too)."""
    import boto3

    client = boto3.session.Session().client("sqs", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture(params=BACKENDS)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "pg":
        return str(request.getfixturevalue("pg_url"))
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    return f"sqlite:///{tmp_path / 'airmax.db'}"


def _project(tmp_path: Path, source: str, sqs: Any, queue_url: str) -> Path:
    root = airmax_project(tmp_path / "proj", source)
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(
        toml.read_text() + f'\n[sqs]\nqueue_url = "{queue_url}"\nendpoint_url = "{sqs.meta.endpoint_url}"\n'
        'region = "us-east-1"\nwait = "1s"\nvisibility_timeout = "2s"\n'
    )
    return root


def _queue(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=f"openaq-{uuid.uuid4().hex[:12]}")["QueueUrl"])


def _send(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)


def _left(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _raw(url: str) -> list[tuple[Any, ...]]:
    db = tables.TableDb(url)
    try:
        return db.query("SELECT message_id, city, parameter_value FROM raw ORDER BY message_id")[1]
    finally:
        db.close()


def _log(url: str) -> list[tuple[Any, ...]]:
    db = tables.TableDb(url)
    name = "sluicegate.ingest_batches" if db.flavor == "postgresql" else "sluicegate_ingest_batches"
    try:
        return db.query(f"SELECT received, inserted, duplicates, malformed FROM {name} ORDER BY id")[1]
    finally:
        db.close()


MESSAGES = [
    sns_body("sns-1", "Gent", "12.5"),
    sns_body("sns-2", "Genk", "7"),
    sns_body("sns-1", "Gent", "12.5"),  # SNS delivered it twice: a second SQS message, the same id
    sns_body("sns-3", "Leuven", "not a number"),  # malformed
    "this is not JSON",  # malformed, no id of its own: known by its SQS message id
    sns_body("sns-4", "Hasselt", "3.25"),
]


def test_a_batch_redelivered_after_a_kill_leaves_one_row_per_message(
    tmp_path: Path, source: str, sqs: Any
) -> None:
    queue_url = _queue(sqs)
    _send(sqs, queue_url, MESSAGES)
    root = _project(tmp_path, source, sqs, queue_url)
    env = {**os.environ, "SLUICEGATE_TESTING__FAULT": "after_ingest_commit"}
    proc = subprocess.Popen([SLUICEGATE, "-C", str(root), "ingest", TASK], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    marker = root / ".fault-after_ingest_commit"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the ingest never reached its fault point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # committed, not yet deleted from the queue
    proc.wait()
    assert _raw(source) == [("sns-1", "Gent", 12.5), ("sns-2", "Genk", 7.0), ("sns-4", "Hasselt", 3.25)]
    assert _log(source) == [(6, 3, 1, 2)]
    assert _left(sqs, queue_url) == 6  # nothing was deleted
    time.sleep(2.5)  # the visibility timeout: SQS delivers the whole batch again
    again = cli(root, "ingest", TASK, "--json")
    assert again.returncode == 1, again.stderr  # malformed messages were reported
    summary = json.loads(again.stdout)
    assert (summary["received"], summary["inserted"], summary["duplicates"], summary["malformed_count"]) == (
        6,
        0,
        4,
        2,
    )
    assert "message sns-3: value 'not a number' is not a number" in again.stderr
    assert "is not JSON" in again.stderr
    assert _raw(source) == [("sns-1", "Gent", 12.5), ("sns-2", "Genk", 7.0), ("sns-4", "Hasselt", 3.25)]
    assert _log(source) == [(6, 3, 1, 2), (6, 0, 4, 2)]
    assert _left(sqs, queue_url) == 0  # handled, so deleted: malformed ones too (parked)
    status = {r["task"]: r for r in json.loads(cli(root, "status", "--json", check=True).stdout)}[TASK]
    assert (status["inserted"], status["parked"]) == (3, 2)  # each malformed message parked once


def test_run_drains_the_queue_in_batches(tmp_path: Path, source: str, sqs: Any) -> None:
    queue_url = _queue(sqs)
    _send(sqs, queue_url, [sns_body(f"m{i:03d}", "Gent", str(i)) for i in range(35)])
    root = _project(tmp_path, source, sqs, queue_url)
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text().replace("batch_size = 500", "batch_size = 12"))
    [summary] = engine.run(load(root), [TASK], RunOptions())
    assert summary.ok and summary.ingest is not None
    assert (summary.ingest["batches"], summary.ingest["inserted"], summary.rows) == (3, 35, 35)
    assert len(_raw(source)) == 35 and _left(sqs, queue_url) == 0
    [empty] = engine.run(load(root), [TASK], RunOptions())
    assert empty.ingest is not None and empty.ingest["received"] == 0


def test_a_receive_that_fails_mid_batch_keeps_the_messages_already_received(
    tmp_path: Path, sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 12 takes two receives (SQS gives at most 10 a call). The second failed (the
    queue out of reach): the 10 received were dropped, to come back after the visibility timeout
    with a higher receive count (into a dead-letter queue, with a low maxReceiveCount). They are
    now ingested, and the next receive goes on."""
    from sluicegate.exceptions import SourceUnavailable
    from sluicegate.sqs import SqsQueue

    source = f"sqlite:///{tmp_path / 'airmax.db'}"
    queue_url = _queue(sqs)
    _send(sqs, queue_url, [sns_body(f"m{i:03d}", "Gent", str(i)) for i in range(15)])
    root = _project(tmp_path, source, sqs, queue_url)
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text().replace("batch_size = 500", "batch_size = 12"))
    real, receives = SqsQueue._call, []

    def flaky(self: SqsQueue, what: str, **kwargs: Any) -> Any:
        if what == "receive_message":
            receives.append(what)
            if len(receives) == 2:
                raise SourceUnavailable(f"SQS queue {queue_url}: connection reset; will retry")
        return real(self, what, **kwargs)

    monkeypatch.setattr(SqsQueue, "_call", flaky)
    [summary] = engine.run(load(root), [TASK], RunOptions())
    assert summary.ingest is not None and summary.ingest["inserted"] == 15, summary.as_dict()
    assert len(_raw(source)) == 15 and _left(sqs, queue_url) == 0


def test_hostile_messages_are_parked_and_deleted_not_redelivered_forever(
    tmp_path: Path, source: str, sqs: Any
) -> None:
    """Values that made Python raise (a huge integer, a time before year 1 in UTC, a lone surrogate)
    used to fail the whole batch, which then came back after every visibility timeout."""
    queue_url = _queue(sqs)
    huge = sns_body("sns-big", "Gent", "1").replace('"Value": "1"', '"Value": 1' + "0" * 400)
    year_1 = sns_body("sns-old", "Gent", "1").replace("2024-03-10T11:58:00.000Z", "0001-01-01T00:00:00+01:00")
    surrogate = sns_body("sns-sur", "Gent", "1").replace('"Value": "Gent"', '"Value": "G\\ud800nt"')
    _send(sqs, queue_url, [huge, year_1, surrogate, sns_body("sns-ok", "Genk", "7")])
    root = _project(tmp_path, source, sqs, queue_url)
    proc = cli(root, "ingest", TASK, "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["received"], summary["inserted"], summary["malformed_count"], summary["parked"]) == (
        4,
        1,
        3,
        3,
    )
    assert sorted(str(m["id"]) for m in summary["malformed"]) == ["sns-big", "sns-old", "sns-sur"]
    assert _raw(source) == [("sns-ok", "Genk", 7.0)]
    assert _left(sqs, queue_url) == 0  # handled, so deleted


@pytest.mark.parametrize("source", [pytest.param("sqlite", id="sqlite")], indirect=True)
def test_a_trickle_of_messages_is_not_collected_past_the_visibility_timeout(
    tmp_path: Path, source: str, sqs: Any
) -> None:
    """A batch was collected until it held ``batch_size`` messages or a receive came back empty:
    under a steady trickle (a message every half second) that took longer than the visibility
    timeout, so its first messages were delivered again, into the same batch (counted as
    duplicates of themselves, their receive count going up each time: with a redrive policy a
    message went to the dead-letter queue unread). A batch is committed before its first
    messages' timeout ends now: each message is received once."""
    queue_url = _queue(sqs)
    root = _project(tmp_path, source, sqs, queue_url)  # wait 1s, visibility_timeout 2s, batch_size 500
    sending = subprocess.Popen(
        [sys.executable, "-c", TRICKLE, sqs.meta.endpoint_url, queue_url], env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 20
        while _left(sqs, queue_url) == 0 and time.monotonic() < deadline:  # the trickle has begun
            time.sleep(0.05)
        [summary] = engine.run(load(root), [TASK], RunOptions())
    finally:
        sending.wait(timeout=30)
    assert summary.ingest is not None
    assert summary.ingest["duplicates"] == 0, summary.ingest  # each message received once
    assert summary.ingest["batches"] > 1, summary.ingest
    assert len(_raw(source)) == summary.ingest["inserted"] == summary.ingest["received"]


TRICKLE = """
import sys, time, boto3
sqs = boto3.session.Session().client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1")
for i in range(16):
    sqs.send_message(QueueUrl=sys.argv[2], MessageBody='{"id": "t%02d", "date_utc": "2024-03-10T11:58:00Z", '
                     '"city": "Gent", "parameter": "pm25", "unit": "ug", "value": %d}' % (i, i))
    time.sleep(0.5)
"""


@pytest.mark.parametrize("end", ["max_runtime", "stop"])
@pytest.mark.parametrize("source", [pytest.param("sqlite", id="sqlite")], indirect=True)
def test_a_run_whose_time_ends_during_a_trickle_returns_and_keeps_what_it_received(
    tmp_path: Path, source: str, sqs: Any, end: str
) -> None:
    """The receive loop did not look at the run's budget or its stop (SIGTERM): with a
    visibility timeout of 60 s, a batch was collected for up to 30 s past ``--max-runtime``
    (past Lambda's margin, so the invocation timed out, again and again). Collecting ends when
    the run must stop now: the run returns within its time, what it received is inserted and
    deleted, and what it did not receive is still in the queue."""
    queue_url = _queue(sqs)
    root = _project(tmp_path, source, sqs, queue_url)
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text().replace('visibility_timeout = "2s"', 'visibility_timeout = "60s"'))
    sending = subprocess.Popen(
        [sys.executable, "-c", TRICKLE, sqs.meta.endpoint_url, queue_url], env={**os.environ}
    )
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)
    try:
        deadline = time.monotonic() + 20
        while _left(sqs, queue_url) == 0 and time.monotonic() < deadline:  # the trickle has begun
            time.sleep(0.05)
        project, options = load(root), RunOptions(max_runtime=2.0 if end == "max_runtime" else None)
        started = time.monotonic()
        if end == "stop":
            timer.start()
        [summary] = engine.run(project, [TASK], options, stop=stop)
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
        sending.wait(timeout=30)
    assert elapsed < 4.0, f"the run took {elapsed:.1f} s of its 2 s (the trickle lasts 8 s)"
    assert summary.ingest is not None and summary.ingest["duplicates"] == 0, summary.ingest
    received = summary.ingest["received"]
    assert 0 < received < 16 and len(_raw(source)) == summary.ingest["inserted"] == received
    assert _left(sqs, queue_url) == 16 - received  # nothing received is left hidden, nothing lost
