"""The AWS Lambda handler, called in-process with the documented event shapes, against the test
PostgreSQL and SeaweedFS (a real S3 endpoint that checks signatures).

The events are copies of the examples in the AWS documentation: "Amazon EventBridge scheduled
event" (Lambda developer guide, "Using Lambda with EventBridge Scheduler / scheduled events")
and "Example Amazon SQS message event (standard queue)" (Lambda developer guide, "Using Lambda
with Amazon SQS"), with the bodies and ids replaced.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import hashlib
import io
import json
import sqlite3
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config

from sluicegate import aws_lambda, operations
from sluicegate.exceptions import ConfigError, UsageError
from sluicegate.generate import generate
from sluicegate.ledger import Ledger
from sluicegate.partitions import make_partition
from support import load, write_project

UTC = dt.UTC
ROOT = Path(__file__).resolve().parents[2]
# The end of the generated data: a UTC midnight two days ago, so every local day is complete.
END = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
T = dt.datetime(2024, 5, 10, tzinfo=UTC)

SCHEDULED_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2015-10-08T16:53:06Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule"],
    "detail": {},
}

SQS_RECORD: dict[str, Any] = {
    "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
    "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
    "body": "test",
    "attributes": {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1545082649183",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
    },
    "messageAttributes": {},
    "md5OfBody": "098f6bcd4621d373cade4e832627b4f6",
    "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
    "awsRegion": "us-east-2",
}


class Context:
    """The three things the handler reads from Lambda's context object, with a real clock."""

    def __init__(self, remaining_s: float, function_name: str = "sluicegate-export") -> None:
        self.deadline = time.monotonic() + remaining_s
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def sqs_event(*bodies: str, queue: str = "my-queue") -> dict[str, Any]:
    """An SQS event with one record per body, each with its own message id and MD5."""
    records = []
    for body in bodies:
        record = copy.deepcopy(SQS_RECORD)
        record.update(
            messageId=str(uuid.uuid4()),
            body=body,
            md5OfBody=hashlib.md5(body.encode()).hexdigest(),
            eventSourceARN=f"arn:aws:sqs:us-east-2:123456789012:{queue}",
        )
        records.append(record)
    return {"Records": records}


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON lines the handler wrote to stdout (one per run)."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def s3_keys(endpoint: str, bucket: str, key: str, secret: str) -> dict[str, bytes]:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if "_manifests/" in obj["Key"] or "_sluicegate/" in obj["Key"]:  # the feed, the destination's id
                continue
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.fixture
def lambda_env(
    tmp_path: Path, pg_url: str, seaweed_bucket: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A project in ``<tmp>/task-root/project`` (where the handler looks by default) that reads
    PostgreSQL and writes to SeaweedFS. The S3 credentials come from the environment, as the
    execution role's do in Lambda; the bucket URL comes from ``SLUICEGATE_DESTINATION__URL``."""
    endpoint, bucket, key, secret = seaweed_bucket
    task_root = tmp_path / "task-root"
    root = write_project(
        task_root / "project",
        source=pg_url,
        destination="s3://overridden-by-the-environment",
        fmt="csv",
        capture="explicit",
        destination_extra=f'endpoint_url = "{endpoint}"',
        extra_defaults="batch_size = 50",
    )
    studies = root / "tasks" / "studies"
    studies.mkdir()
    (studies / "select.sql").write_text("SELECT record_id, study_id, uploaded_on, payload FROM records")
    (studies / "task.toml").write_text(
        textwrap.dedent(
            """
            kind = "incremental"
            entity = "study_id"
            cursor = "uploaded_on"
            format = "csv"
            path = "studies/{study_id}/{type}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.{ext}"
            zone = "UTC"
            safety_margin = "0s"
            """
        )
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text NOT NULL, "
            "uploaded_on timestamptz NOT NULL, payload text)"
        )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(task_root))
    monkeypatch.setenv("SLUICEGATE_DESTINATION__URL", f"s3://{bucket}/exports")
    return {"root": root, "url": pg_url, "endpoint": endpoint, "bucket": bucket, "key": key, "secret": secret}


def _load_location_days(root: Path, url: str, locations: int, days: int) -> int:
    """Generate hourly readings and mark every (location, local day) pending; return how many."""
    generate(url, locations=locations, days=days, end=END)
    task = load(root).tasks["openaq"]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT m.location_id, (m.datetime AT TIME ZONE l.timezone)::date, l.timezone "
            "FROM measurements AS m JOIN locations AS l USING (location_id)"
        ).fetchall()
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        ledger.partitions.mark([make_partition(task, (loc,), day, zone) for loc, day, zone in rows], task)
    return len(rows)


# ---------------------------------------------------------------------------- scheduled events


def test_scheduled_event_stops_before_the_time_limit_and_leaves_the_rest_pending(
    lambda_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 s left, a 2 s margin, far more location-days than fit: the handler returns before the
    5 s are up, what it exported is in S3 and committed, and the rest is pending (not claimed).
    (A 1 s margin of 4 s was overrun by 0.02 s once, on a machine running five test processes
    on its two cores: the margin is what pays for finishing the batch in hand and stopping.)"""
    root, url = lambda_env["root"], lambda_env["url"]
    total = _load_location_days(root, url, locations=100, days=30)
    monkeypatch.setenv("SLUICEGATE_LAMBDA_MARGIN", "2")
    event = copy.deepcopy(SCHEDULED_EVENT)
    event["detail"] = {"tasks": ["openaq"]}
    context = Context(remaining_s=5.0)
    started = time.monotonic()
    result = aws_lambda.handler(event, context)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"the handler took {elapsed:.2f} s of the 5 s the invocation had"
    assert context.get_remaining_time_in_millis() > 0
    [summary] = result["tasks"]
    assert result["ok"] is True and summary["failed"] == 0
    assert 0 < summary["exported"] < total
    [status] = operations.status(load(root), ["openaq"])
    assert status["claimed"] == 0 and status["pending"] == total - summary["exported"]
    objects = s3_keys(lambda_env["endpoint"], lambda_env["bucket"], lambda_env["key"], lambda_env["secret"])
    assert len(objects) == summary["exported"]
    [line] = log_lines(capsys)
    assert line["sluicegate"] == "scheduled" and line["request_id"] == context.aws_request_id
    assert line["function"] == "sluicegate-export" and line["tasks"] == ["openaq"]
    assert 2.5 < line["max_runtime_s"] <= 3.0 and line["summaries"][0]["exported"] == summary["exported"]
    # The next invocation (all tasks), with time to spare, exports exactly what was left.
    _records(url, [("s1", END - dt.timedelta(hours=1), "x")])
    rest = aws_lambda.handler(SCHEDULED_EVENT, Context(remaining_s=600.0))
    exported = {s["task"]: s["exported"] for s in rest["tasks"]}
    assert exported == {"openaq": total - summary["exported"], "studies": 1} and rest["ok"] is True, rest
    objects = s3_keys(lambda_env["endpoint"], lambda_env["bucket"], lambda_env["key"], lambda_env["secret"])
    assert len([k for k in objects if k.startswith("exports/records/")]) == total
    [status] = operations.status(load(root), ["openaq"])
    assert (status["pending"], status["exported"]) == (0, total)


def test_scheduled_event_with_too_little_time_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"had 2\.0 s left .* SLUICEGATE_LAMBDA_MARGIN=30 s; raise the"):
        aws_lambda.handler(SCHEDULED_EVENT, Context(remaining_s=2.0))
    [line] = log_lines(capsys)
    assert line["ok"] is False and "SLUICEGATE_LAMBDA_MARGIN" in line["error"]


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ({"task": "openaq"}, r"detail has 'task'; only \"tasks\""),
        ({"tasks": "openaq"}, r"\"tasks\" must be a list of task names, not 'openaq'"),
        ({"tasks": ""}, r"\"tasks\" must be a list of task names, not ''"),  # these ran every task
        ({"tasks": False}, r"\"tasks\" must be a list of task names, not False"),
        ({"tasks": {}}, r"\"tasks\" must be a list of task names, not \{\}"),
        ([], r"detail must be an object"),
    ],
)
def test_scheduled_event_with_a_bad_detail_is_refused(detail: Any, message: str, tmp_path: Path) -> None:
    event = {**SCHEDULED_EVENT, "detail": detail}
    with pytest.raises(UsageError, match=message):
        aws_lambda.handler(event, Context(remaining_s=600.0))


def test_scheduled_event_naming_a_task_twice_runs_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``detail.tasks: ["studies", "studies"]`` (and ``sluicegate run studies studies``) ran the
    task twice, with two summaries: a task named again is the same task, run once."""
    _constant_project(tmp_path, monkeypatch)
    event = {**SCHEDULED_EVENT, "detail": {"tasks": ["studies", "studies"]}}
    result = aws_lambda.handler(event, Context(remaining_s=600.0))
    assert [s["task"] for s in result["tasks"]] == ["studies"] and result["ok"] is True, result
    [line] = log_lines(capsys)
    assert [s["task"] for s in line["summaries"]] == ["studies"]
    project = load(tmp_path / "proj")
    assert [t.name for t in project.select(["studies", "studies"])] == ["studies"]


def test_scheduled_event_whose_only_task_could_not_run_fails_the_invocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task stopped by its own error (select.sql reads a table the source has not) returned ok
    false as a success: Lambda's Errors metric, its alarm and its retry never saw an invocation
    that did nothing. It fails, with the task's error, after the log line with the summary."""
    _constant_project(tmp_path, monkeypatch)
    (tmp_path / "proj" / "tasks" / "studies" / "select.sql").write_text(
        "SELECT study_id, uploaded_on FROM gone"
    )
    with pytest.raises(
        ConfigError, match=r"task studies: .*select\.sql: the query failed: .*gone.*fix the SQL"
    ):
        aws_lambda.handler(SCHEDULED_EVENT, Context(remaining_s=600.0))
    [line] = log_lines(capsys)
    assert line["ok"] is False and [s["task"] for s in line["summaries"]] == ["studies"], line
    assert "no such table: gone" in line["summaries"][0]["task_errors"][0]


def test_scheduled_event_naming_a_broken_task_runs_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``detail.tasks: ["studies", "broken"]`` with the folder of broken not loading failed the
    invocation before studies ran; with ``detail: {}`` it was reported and skipped. Named, too."""
    _constant_project(tmp_path, monkeypatch)
    (tmp_path / "proj" / "tasks" / "broken").mkdir()
    (tmp_path / "proj" / "tasks" / "broken" / "task.toml").write_text('kind = "nosuch"\n')
    event = {**SCHEDULED_EVENT, "detail": {"tasks": ["studies", "broken"]}}
    result = aws_lambda.handler(event, Context(remaining_s=600.0))
    assert result["ok"] is False and [s["task"] for s in result["tasks"]] == ["studies"], result
    assert result["tasks"][0]["ok"] is True and result["tasks"][0]["exported"] == 1, result
    [problem] = result["problems"]
    assert problem["task"] == "broken" and "kind" in problem["error"] and "nosuch" in problem["error"]
    [line] = log_lines(capsys)
    assert line["problems"] == result["problems"] and line["ok"] is False
    alone = {**SCHEDULED_EVENT, "detail": {"tasks": ["broken"]}}
    with pytest.raises(ConfigError, match="nosuch"):  # nothing else named: refused, as before
        aws_lambda.handler(alone, Context(remaining_s=600.0))


def test_unknown_event_and_bad_margin_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"does not know this event \(keys: hello\)"):
        aws_lambda.handler({"hello": "world"}, Context(remaining_s=600.0))
    monkeypatch.setenv("SLUICEGATE_LAMBDA_MARGIN", "half a minute")
    with pytest.raises(ConfigError, match=r"SLUICEGATE_LAMBDA_MARGIN='half a minute' is not a duration"):
        aws_lambda.handler(SCHEDULED_EVENT, Context(remaining_s=600.0))
    assert [aws_lambda.parse_margin(v) for v in (None, "", "45", "2.5s", "500ms", "1m")] == [
        30.0, 30.0, 45.0, 2.5, 0.5, 60.0,
    ]  # fmt: skip


# ---------------------------------------------------------------------------- SQS events


def _records(url: str, rows: list[tuple[str, dt.datetime, str]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO records (study_id, uploaded_on, payload) VALUES (%s, %s, %s)", rows)


def test_sqs_batch_with_a_poison_message_fails_only_that_record(
    lambda_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Three records: a daily request, a message with a field sluicegate does not support, and the
    Bridge Exporter's documented re-export message. Only the second comes back as a failure."""
    url = lambda_env["url"]
    _records(
        url,
        [
            ("s1", T - dt.timedelta(hours=5), "s1-yesterday"),
            ("s2", T - dt.timedelta(hours=3), "s2-yesterday"),
            ("s1", dt.datetime(2016, 10, 4, 12, tzinfo=UTC), "s1-2016"),
        ],
    )
    daily = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat()})
    poison = json.dumps(
        {"exportType": "DAILY", "endDateTime": T.isoformat(), "recordIdS3Override": "ids.txt"}
    )
    reexport = (
        '{"endDateTime":"2016-10-04T23:59:59Z","startDateTime":"2016-10-03T23:59:59Z","exportType":"DAILY",'
        '"ignoreLastExportTime":"true","tag":"test exporter"}'
    )
    event = sqs_event(daily, poison, reexport)
    result = aws_lambda.handler(event, Context(remaining_s=60.0))
    poison_id = event["Records"][1]["messageId"]
    assert result == {"batchItemFailures": [{"itemIdentifier": poison_id}]}
    objects = s3_keys(lambda_env["endpoint"], lambda_env["bucket"], lambda_env["key"], lambda_env["secret"])
    payloads = {
        k: sorted(row["payload"] for row in csv.DictReader(io.StringIO(v.decode())))
        for k, v in objects.items()
    }
    assert payloads == {
        "exports/studies/s1/daily/20240509T000000Z-20240510T000000Z.csv": ["s1-yesterday"],
        "exports/studies/s2/daily/20240509T000000Z-20240510T000000Z.csv": ["s2-yesterday"],
        "exports/studies/s1/daily/20161003T235959Z-20161004T235959Z.csv": ["s1-2016"],
    }
    marks = {w["entity"]: w["watermark"] for w in operations.watermarks(load(lambda_env["root"]), "studies")}
    assert marks == {"s1": T, "s2": T}  # the daily request moved them; the re-export did not
    lines = log_lines(capsys)
    assert [(x["message_id"], x["ok"]) for x in lines] == [
        (r["messageId"], r["messageId"] != poison_id) for r in event["Records"]
    ]
    assert lines[1]["malformed"] is True and "'recordIdS3Override' is not supported" in lines[1]["error"]
    # The re-export's window of s2 is empty: committed, no file.
    assert lines[0]["summary"]["rows"] == 2 and lines[2]["summary"]["rows"] == 1
    assert {x["task"] for x in lines} == {"studies"} and lines[0]["receive_count"] == "1"


def test_sqs_failed_export_and_not_json_fail_their_records_only(
    lambda_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export that fails (an entity that cannot be a file name) and a body that is not JSON are
    both failures of their own record; the good request between them is exported."""
    monkeypatch.setenv("SLUICEGATE_TASK", "studies")
    _records(
        lambda_env["url"],
        [("a/b", T - dt.timedelta(hours=2), "slash"), ("s3", T - dt.timedelta(hours=1), "ok")],
    )
    failing = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat(), "studyWhitelist": ["a/b"]})
    good = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat(), "studyWhitelist": ["s3"]})
    event = sqs_event(failing, good, "this is not JSON")
    result = aws_lambda.handler(event, Context(remaining_s=60.0))
    ids = [r["messageId"] for r in event["Records"]]
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[0]}, {"itemIdentifier": ids[2]}]}
    objects = s3_keys(lambda_env["endpoint"], lambda_env["bucket"], lambda_env["key"], lambda_env["secret"])
    assert list(objects) == ["exports/studies/s3/daily/20240509T000000Z-20240510T000000Z.csv"]
    first, second, third = log_lines(capsys)
    assert first["summary"]["failed"] == 1 and "malformed" not in first
    assert second["ok"] is True and third["malformed"] is True and "not valid JSON" in third["error"]
    # The failed entity's watermark did not move, so a redelivery exports its window again.
    marks = {w["entity"]: w["watermark"] for w in operations.watermarks(load(lambda_env["root"]), "studies")}
    assert marks == {"s3": T, "a/b": T - dt.timedelta(days=1)}


def _constant_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-entity incremental project whose select is of constants, in an existing SQLite
    database, as the Lambda handler's project (SLUICEGATE_PROJECT)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = tmp_path / "proj"
    (root / "tasks" / "studies").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
    )
    (root / "tasks" / "studies" / "task.toml").write_text(
        'kind = "incremental"\nentity = "study_id"\ncursor = "uploaded_on"\nentities = ["s1"]\n'
        'path = "{study_id}/{start:%Y%m%d}.{ext}"\nformat = "csv"\n'
    )
    (root / "tasks" / "studies" / "select.sql").write_text(
        "SELECT 's1' AS study_id, '2024-05-09T01:00:00Z' AS uploaded_on"
    )
    sqlite3.connect(tmp_path / "source.db").close()
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))


def test_sqs_fifo_batch_stops_at_the_first_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a FIFO queue, the records after a failed one are not run and come back too, in order."""
    _constant_project(tmp_path, monkeypatch)
    good = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat()})
    event = sqs_event(good, "{}", good, queue="exports.fifo")
    result = aws_lambda.handler(event, Context(remaining_s=60.0))
    ids = [r["messageId"] for r in event["Records"]]
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[1]}, {"itemIdentifier": ids[2]}]}
    lines = log_lines(capsys)
    assert [x["ok"] for x in lines] == [True, False, False]
    assert "exportType" in lines[1]["error"] and "earlier message of this FIFO batch" in lines[2]["error"]


def test_sqs_reexport_runs_while_another_export_holds_its_entity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entity claimed by a concurrent invocation: a re-export (an explicit window) takes no
    claim, so it is exported all the same and only then deleted; a request that moves watermarks
    exports nothing for the held entity and is deleted (the holder moves the watermark, and later
    runs catch up), as docs/deploying.md says."""
    _constant_project(tmp_path, monkeypatch)
    project = load(tmp_path / "proj")
    reexport = json.dumps(
        {"startDateTime": "2024-05-09T00:00:00Z", "endDateTime": "2024-05-10T00:00:00Z",
         "exportType": "DAILY", "ignoreLastExportTime": True}
    )  # fmt: skip
    daily = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat()})
    with operations.ledger_of(project) as ledger:
        ledger.watermarks.ensure("studies", ["s1"])
        [held] = ledger.watermarks.claim("studies", ["s1"], lease=600)  # the other invocation
        try:
            result = aws_lambda.handler(sqs_event(reexport, daily), Context(remaining_s=60.0))
        finally:
            ledger.watermarks.release(held.token)
    assert result == {"batchItemFailures": []}
    rows = (tmp_path / "out" / "s1" / "20240509.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("s1,2024-05-09T01:00:00")  # the re-export's file
    first, second = log_lines(capsys)
    assert first["ok"] is True and first["summary"]["rows"] == 1
    assert second["ok"] is True and second["summary"]["exported"] == 0
    [mark] = operations.watermarks(load(tmp_path / "proj"), "studies")
    assert mark["watermark"] != T  # the held request moved nothing


@pytest.mark.parametrize(
    "poison",
    [
        '{"exportType": "DAILY", "tag": ' + "1" * 5000 + "}",  # json.loads: ValueError, not a decode error
        "[" * 100_000 + "]" * 100_000,  # json.loads: RecursionError
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_sqs_a_body_json_cannot_hold_fails_only_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], poison: str
) -> None:
    """A body that json.loads refuses with another error than a decode error is malformed, like
    any other: the handler raised, so the whole batch came back, the good records too."""
    _constant_project(tmp_path, monkeypatch)
    good = json.dumps({"exportType": "DAILY", "endDateTime": T.isoformat()})
    event = sqs_event(good, poison)
    result = aws_lambda.handler(event, Context(remaining_s=60.0))
    ids = [r["messageId"] for r in event["Records"]]
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[1]}]}
    first, second = log_lines(capsys)
    assert first["ok"] is True and second["malformed"] is True
    assert "not JSON sluicegate can read" in second["error"]


def test_sqs_records_that_do_not_fit_in_the_time_left_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With less time left than the margin, no record is started: all are reported, none lost."""
    root = tmp_path / "proj"
    (root / "tasks" / "studies").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "sqlite:///{tmp_path / "s.db"}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
    )
    (root / "tasks" / "studies" / "task.toml").write_text(
        'kind = "incremental"\nentity = "e"\ncursor = "t"\npath = "{e}/{start:%Y%m%d}.{ext}"\n'
    )
    (root / "tasks" / "studies" / "select.sql").write_text("SELECT 'x' AS e, '2024-01-01T00:00:00Z' AS t")
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))
    monkeypatch.setenv("SLUICEGATE_LAMBDA_MARGIN", "30s")
    event = sqs_event('{"exportType": "DAILY", "endDateTime": "2024-05-10T00:00:00Z"}', "{}")
    result = aws_lambda.handler(event, Context(remaining_s=20.0))
    assert result == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    assert all("less than SLUICEGATE_LAMBDA_MARGIN=30 s left" in x["error"] for x in log_lines(capsys))
    assert not (tmp_path / "out").exists()


def test_sqs_with_a_broken_project_fails_the_invocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting that is wrong for every message fails the whole invocation (so Lambda counts an
    error and SQS keeps every message), instead of being blamed on each message."""
    root = write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path)
    )
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))
    with pytest.raises(
        ConfigError, match=r"the project has: none; in Lambda, name the task with .* SLUICEGATE_TASK"
    ):
        aws_lambda.handler(sqs_event("{}"), Context(remaining_s=60.0))
    [line] = log_lines(capsys)
    assert line["ok"] is False and "SLUICEGATE_TASK" in line["error"]
    monkeypatch.setenv("SLUICEGATE_TASK", "openaq")
    with pytest.raises(ConfigError, match="task 'openaq' is not an incremental task; in Lambda"):
        aws_lambda.handler(sqs_event("{}"), Context(remaining_s=60.0))


# ---------------------------------------------------------------------------- the IAM policy


def test_iam_policy_is_json_and_grants_what_the_handler_uses() -> None:
    policy = json.loads((ROOT / "deploy" / "lambda" / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert all(s["Effect"] == "Allow" and s["Action"] and s["Resource"] for s in statements.values())
    actions = {a for s in statements.values() for a in s["Action"]}
    for needed in (
        "s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:AbortMultipartUpload",
        "sqs:ReceiveMessage", "sqs:DeleteMessage",
        "sqs:GetQueueAttributes", "logs:CreateLogStream", "logs:PutLogEvents",
        "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:DescribeNetworkInterfaces",
    ):  # fmt: skip
        assert needed in actions, needed
    assert all(a.split(":")[0] in {"s3", "sqs", "logs", "ec2"} and "*" not in a for a in actions)
    objects = next(s for s in statements.values() if "s3:PutObject" in s["Action"])
    assert objects["Resource"] == ["arn:aws:s3:::EXAMPLE-BUCKET/EXAMPLE-PREFIX/*"]
    bucket = next(s for s in statements.values() if "s3:ListBucket" in s["Action"])
    assert bucket["Resource"] == ["arn:aws:s3:::EXAMPLE-BUCKET"]
