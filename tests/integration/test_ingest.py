"""Ingest tasks: message shapes, idempotence on the message id, malformed messages, the log.

What touches a database runs on SQLite, PostgreSQL and MariaDB (the table, its ingest log and
its parked messages live in that database).

The SQS path (moto's server over HTTP, a duplicate, a malformed message, a redelivery after a
SIGKILL) is in tests/integration/test_ingest_sqs.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airmax_support import airmax_project
from sluicegate import engine, messages, operations, tabledb, tables
from sluicegate.exceptions import ConfigError, DataError
from sluicegate.options import RunOptions
from support import SLUICEGATE, cli, load

TASK = "measurements"


def sns(message_id: str, **attributes: str) -> str:
    """An SQS body as airmax's Lambda received it: an SNS notification with message attributes."""
    return json.dumps({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:470049585876:NewFetchObject",
        "Message": "{}",
        "Timestamp": "2024-03-10T11:59:30.123Z",
        "MessageAttributes": {k: {"Type": "String", "Value": v} for k, v in attributes.items()},
    })  # fmt: skip


AIRMAX_ATTRIBUTES = {
    "date_utc": "2024-03-10T11:58:00.000Z", "country": "BE", "location": "Gent-1", "city": "Gent",
    "latitude": "51.054", "longitude": "3.717", "sourceType": "government", "sourceName": "VMM",
    "parameter": "pm25", "unit": "µg/m³", "value": "12.5",
}  # fmt: skip


def line(message_id: str, **fields: Any) -> str:
    body = {"id": message_id, "date_utc": "2024-03-10T11:00:00Z", "city": "Gent", "parameter": "pm25",
            "unit": "µg/m³", "value": 1.0, **fields}  # fmt: skip
    return json.dumps(body)


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pg", id="pg", marks=pytest.mark.pg),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
# Where ingest's log tables are, per database (the ledger schema on PostgreSQL, a prefix elsewhere).
LOG_TABLES = {
    "postgresql": "sluicegate.ingest_",
    "sqlite": "sluicegate_ingest_",
    "mariadb": "sluicegate_ingest_",
}


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "pg":
        return str(request.getfixturevalue("pg_url"))
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    return f"sqlite:///{tmp_path / 'airmax.db'}"


@pytest.fixture
def root(tmp_path: Path, url: str) -> Path:
    return airmax_project(tmp_path / "proj", url)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``{log}`` names the ingest log tables' prefix)."""
    db = tables.TableDb(url)
    try:
        return [tuple(r) for r in db.query(sql.replace("{log}", LOG_TABLES[db.flavor]))[1]]
    finally:
        db.close()


def _execute(url: str, sql: str) -> None:
    db = tables.TableDb(url)
    try:
        db.execute(sql)
    finally:
        db.close()


def _raw(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url, "SELECT message_id, city, parameter_value, measurement_time_utc FROM raw ORDER BY message_id"
    )


def _log(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url, "SELECT received, inserted, duplicates, malformed, message_ids FROM {log}batches ORDER BY id"
    )


def test_the_sns_notification_airmax_received_is_read_from_its_attributes() -> None:
    message = messages.parse(sns("5d1d0c2a-0000", **AIRMAX_ATTRIBUTES))
    assert message.error is None and message.id == "5d1d0c2a-0000"
    fields = message.fields
    assert fields is not None
    assert fields["city"] == "Gent" and fields["value"] == 12.5 and fields["latitude"] == 51.054
    assert fields["date_utc"].isoformat() == "2024-03-10T11:58:00+00:00"
    assert fields["sent_at"].isoformat() == "2024-03-10T11:59:30.123000+00:00"


def test_an_openaq_measurement_and_raw_sqs_attributes_are_read_too() -> None:
    openaq = {"id": "q1", "location": "Gent-1", "parameter": "pm25", "value": 3, "unit": "µg/m³",
              "date": {"utc": "2024-03-10T11:00:00.000Z", "local": "2024-03-10T12:00:00+01:00"},
              "coordinates": {"latitude": 51.0, "longitude": 3.7}, "country": "BE", "city": "Gent",
              "sourceName": "VMM", "sourceType": "government"}  # fmt: skip
    message = messages.parse(json.dumps(openaq))
    assert message.error is None and message.fields is not None
    assert (message.fields["longitude"], message.fields["date_utc"].hour) == (3.7, 11)
    raw = messages.parse(
        json.dumps({"date_utc": "2024-03-10T11:00:00Z", "parameter": "pm25", "unit": "µg/m³", "value": 1}),
        attributes={"city": {"DataType": "String", "StringValue": "Genk"}},
        fallback_id="sqs-id-1",
    )
    assert raw.error is None and raw.id == "sqs-id-1" and raw.fields and raw.fields["city"] == "Genk"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("not json", "body is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        (line("m1", value="twelve"), "message m1: value 'twelve' is not a number"),
        (line("m1", value="NaN"), "message m1: value 'NaN' is not a number"),
        (line("m1", date_utc="yesterday"), "message m1: date_utc 'yesterday' is not an ISO 8601 time"),
        (line("m1", city=None), "message m1: city is missing"),
        (line("m1", city={"name": "Gent"}), "message m1: city {'name': 'Gent'} is not a text"),
        (json.dumps({"city": "Gent"}), "(no id): id is missing"),
        (sns("s1", **{**AIRMAX_ATTRIBUTES, "value": "x"}), "message s1: value 'x' is not a number"),
        # hostile values that used to raise (OverflowError, UnicodeEncodeError) instead
        (line("m1").replace('"value": 1.0', '"value": 1' + "0" * 400), "is beyond the range of a number"),
        (line("m1", date_utc="0001-01-01T00:00:00+01:00"), "date_utc '0001-01-01T00:00:00+01:00' is outside"),
        (line("m1", date_utc="9999-12-31T23:30:00-01:00"), "is outside years 1 to 9999 in UTC"),
        (line("m1", city="X\ud800"), "message m1: city 'X\\ud800' is not valid Unicode text"),
        (line("\udcff"), "message \\udcff: id '\\udcff' is not valid Unicode text"),
        (line("m1", city="G\x00nt"), "message m1: city 'G\\x00nt' is not a text a database can store"),
        # what Python's float() takes and a JSON number is not; an id that is no id (True was "True")
        (line("m1", value="1_000"), "message m1: value '1_000' is not a number"),
        (line("m1", value=" 5 "), "message m1: value ' 5 ' is not a number"),
        (line("m1", value="Infinity"), "message m1: value 'Infinity' is not a number"),
        (line("m1", value="1\u0662"), "message m1: value '1\u0662' is not a number"),  # was 12.0
        (line("m1").replace('"id": "m1"', '"id": true'), "id true is not a message id"),
        # Python's spelling was shown: "latitude True is not a number"
        (line("m1", latitude=True), "message m1: latitude true is not a number"),
        (line("m1", value=False), "message m1: value false is not a number"),
        (line("m1", date_utc=True), "message m1: date_utc true is not an ISO 8601 time"),
        (line("m1").replace('"id": "m1"', '"id": 1.5'), "id 1.5 is not a message id"),
        # JSON numbers no float holds, and what JSON has not, named as written (1e400 was "inf")
        (line("m1").replace('"value": 1.0', '"value": 1e400'), "message m1: value 1e400 is beyond the range"),
        (
            line("m1").replace('"value": 1.0', '"value": -1E+999'),
            "message m1: value -1E+999 is beyond the range",
        ),
        (line("m1").replace('"value": 1.0', '"value": NaN'), "message m1: value NaN is not a number"),
        (
            line("m1").replace('"value": 1.0', '"value": -Infinity'),
            "message m1: value -Infinity is not a number",
        ),
        (line("m1").replace('"id": "m1"', '"id": 1e400'), "id 1e400 is not a message id"),  # not "1e400"
        # a whole number no float keeps: 9007199254740993 was stored as 9007199254740992, unsaid
        (
            line("m1").replace('"value": 1.0', '"value": 9007199254740993'),
            "message m1: value 9007199254740993 is a whole number with more significant digits than a"
            " number keeps",
        ),
        (
            sns("s1", **{**AIRMAX_ATTRIBUTES, "latitude": "100000000000000001"}),
            "message s1: latitude '100000000000000001' is a whole number with more significant digits",
        ),
        # JSON keeps the last: which reading the device sent is unknown
        (line("m1").replace('"value": 1.0', '"value": 1.0, "value": 2.0'), "body names field 'value' twice"),
        # in an SNS notification's Message: all its fields were dropped, the message stored without them
        (
            sns("s1", **{k: v for k, v in AIRMAX_ATTRIBUTES.items() if k != "location"}).replace(
                '"Message": "{}"', '"Message": "{\\"location\\": \\"A\\", \\"location\\": \\"B\\"}"'
            ),
            "message s1: Message names field 'location' twice",
        ),
    ],
)
def test_a_malformed_message_names_its_id_and_the_field(body: str, error: str) -> None:
    message = messages.parse(body)
    assert message.fields is None and message.error is not None and error in message.error
    assert messages.parse(body, where="batch.jsonl:7").error.startswith("batch.jsonl:7")  # type: ignore[union-attr]


def test_a_text_field_keeps_a_huge_number_as_written() -> None:
    message = messages.parse(line("m1", value=2.5, country="X").replace('"country": "X"', '"country": 1e400'))
    assert message.error is None and message.fields is not None
    assert (message.fields["country"], message.fields["value"]) == ("1e400", 2.5)  # was "inf"


@pytest.mark.parametrize(
    ("written", "text"), [("1e5", "1e5"), ("1.10", "1.10"), ("true", "true"), ("-0.0", "-0.0"), ("12", "12")]
)
def test_a_text_field_keeps_a_number_or_a_boolean_as_written(written: str, text: str) -> None:
    """A JSON number in a text field was stored as Python wrote the float it was read as:
    ``1e5`` as ``100000.0``, ``1.10`` as ``1.1``; a JSON ``true`` as ``True``."""
    message = messages.parse(line("m1", country="X").replace('"country": "X"', f'"country": {written}'))
    assert message.error is None and message.fields is not None
    assert message.fields["country"] == text


@pytest.mark.parametrize(
    ("written", "number"),
    [("1e5", 100000.0), ("1.10", 1.1), ("9007199254740992", 2.0**53), ("1E-7", 1e-7), ('"12"', 12.0)],
)
def test_a_number_field_reads_each_number_a_float_keeps(written: str, number: float) -> None:
    message = messages.parse(line("m1").replace('"value": 1.0', f'"value": {written}'))
    assert message.error is None and message.fields is not None
    assert message.fields["value"] == number and type(message.fields["value"]) is float


def test_a_number_with_a_fraction_and_more_digits_than_a_float_keeps_is_its_nearest_float(
    tmp_path: Path, url: str
) -> None:
    """Many producers print a float with 17 significant digits (C's %.17g, PHP's
    serialize_precision = 17, Java): 0.10000000000000001 for 0.1, 50.858611111111111. Such a
    message was refused as having more digits than a float keeps, so every message of such a
    producer was lost; it is read as its nearest float, which a float column stores anyway.
    Only a whole number the float changes is refused (an id or a counter made another)."""
    lines = [
        line("j1", latitude=1.0).replace('"latitude": 1.0', '"latitude": 50.858611111111111')
        .replace('"value": 1.0', '"value": 0.10000000000000001'),
        line("t1", latitude="50.858611111111111", value="0.10000000000000001"),
        line("big").replace('"value": 1.0', '"value": 9007199254740993'),
        # a whole number a float holds exactly (2**60), and a 17-digit print of 1e23: kept
        line("w1").replace('"value": 1.0', '"value": 1152921504606846976'),
        line("w2").replace('"value": 1.0', '"value": 9.9999999999999992e+22'),
    ]  # fmt: skip
    flavor = tabledb.flavor_of(url)
    double = {"postgresql": "double precision", "sqlite": "REAL", "mariadb": "DOUBLE"}[flavor]
    summary = _ingest_readings(
        tmp_path, url, f"mid {ID_TYPES[flavor]} PRIMARY KEY, at {TIME_TYPES[flavor]} NOT NULL, "
        f"lat {double}, v {double}", {"mid": "id", "at": "date_utc", "lat": "latitude", "v": "value"}, lines,
    )  # fmt: skip
    assert (summary.inserted, summary.malformed_count) == (4, 1), summary.malformed
    [error] = [str(m["error"]) for m in summary.malformed]
    assert "message big: value 9007199254740993 is a whole number" in error, error
    assert _query(url, "SELECT mid, lat, v FROM readings ORDER BY mid") == [
        ("j1", 50.858611111111111, 0.1), ("t1", 50.858611111111111, 0.1),
        ("w1", None, float(2**60)), ("w2", None, 1e23),
    ]  # fmt: skip


def test_duplicates_and_redeliveries_leave_one_row_and_a_malformed_message_blocks_nothing(
    root: Path, tmp_path: Path, url: str
) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join([
        line("m1", value=1.0),
        line("m2", value=2.0),
        line("m1", value=99.0),  # a duplicate in the same batch: the first copy wins
        line("m3", value="lots"),  # malformed
        "",
        line("m4", value=4.0),
    ]) + "\n")  # fmt: skip
    first = operations.ingest(load(root), TASK, batch.open(), name="batch.jsonl")
    assert (first.received, first.inserted, first.duplicates, first.malformed_count) == (5, 3, 1, 1)
    assert first.malformed == [
        {"id": "m3", "error": "batch.jsonl:4: message m3: value 'lots' is not a number"}
    ]
    again = operations.ingest(load(root), TASK, batch.open(), name="batch.jsonl")  # redelivered
    assert (again.inserted, again.duplicates, again.malformed_count) == (0, 4, 1)
    assert [(r[0], r[2]) for r in _raw(url)] == [("m1", 1.0), ("m2", 2.0), ("m4", 4.0)]
    assert tables.parse_time(_raw(url)[0][3]) == dt.datetime(2024, 3, 10, 11, tzinfo=dt.UTC)
    assert [row[:4] for row in _log(url)] == [(5, 3, 1, 1), (5, 0, 4, 1)]
    assert json.loads(_log(url)[0][4]) == ["m1", "m2", "m1", "m3", "m4"]


def test_park_keeps_each_malformed_message_once_with_its_reason(root: Path, tmp_path: Path, url: str) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(line("ok") + "\n" + line("bad", value="x") + "\n{\n")
    first = operations.ingest(load(root), TASK, batch.open(), name="in.jsonl")
    assert (first.inserted, first.malformed_count, first.parked, first.already_parked) == (1, 2, 2, 0)
    # ingested again: both are malformed again, but parked before, and the summary says so
    again = operations.ingest(load(root), TASK, batch.open(), name="in.jsonl")
    assert (again.inserted, again.malformed_count, again.parked, again.already_parked) == (0, 2, 0, 2)
    assert [m.get("parked_before") for m in first.malformed + again.malformed] == [None, None, True, True]
    said = cli(root, "ingest", TASK, str(batch))  # the CLI said "parked: ..." of them again
    assert said.returncode == 1 and said.stderr.count("sluicegate: parked before: ") == 2, said.stderr
    parked = _query(url, "SELECT message_id, error, body FROM {log}parked ORDER BY id")
    # "bad" once (a redelivered message is not parked again); the line without an id once per body
    assert [p[0] for p in parked] == ["bad", None]  # each error gives the line: the file's name and number
    assert parked[0][1].startswith("in.jsonl:2: message bad: value 'x'") and parked[1][1].startswith(
        "in.jsonl:3 is"
    )
    assert parked[0][2] == line("bad", value="x") and parked[1][2] == "{"
    other = tmp_path / "other.jsonl"
    other.write_text("}\n")  # another body without an id is parked
    assert operations.ingest(load(root), TASK, other.open(), name="other.jsonl").parked == 1
    status = {r["task"]: r for r in operations.status(load(root), [TASK])}[TASK]
    assert (status["received"], status["inserted"], status["malformed"], status["parked"]) == (10, 1, 7, 3)


def test_skip_parks_nothing(root: Path, tmp_path: Path, url: str) -> None:
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text().replace('malformed = "park"', 'malformed = "skip"'))
    batch = tmp_path / "b.jsonl"
    batch.write_text(line("bad", value="x") + "\n")
    assert operations.ingest(load(root), TASK, batch.open()).parked == 0
    assert _query(url, "SELECT count(*) FROM {log}parked") == [(0,)]


TIME_TYPES = {"postgresql": "timestamptz", "sqlite": "TEXT", "mariadb": "DATETIME(6)"}
ID_TYPES = {
    "postgresql": "VARCHAR(64)",
    "sqlite": "VARCHAR(64)",
    "mariadb": "VARCHAR(64) COLLATE utf8mb4_nopad_bin",
}


def test_a_row_the_database_refuses_is_reported_and_the_others_inserted(tmp_path: Path, url: str) -> None:
    """A value the table refuses (here a CHECK) fails only its message: the rest of the batch commits."""
    root = airmax_project(tmp_path / "proj", url)
    time_type = TIME_TYPES[tabledb.flavor_of(url)]
    id_type = ID_TYPES[tabledb.flavor_of(url)]
    _execute(url, f"CREATE TABLE readings (mid {id_type} PRIMARY KEY, at {time_type} NOT NULL, "
                  "v DOUBLE PRECISION CHECK (v >= 0))")  # fmt: skip
    (root / "tasks" / TASK / "task.toml").write_text(textwrap.dedent("""
        kind = "ingest"
        table = "readings"
        malformed = "park"
        [columns]
        mid = "id"
        at = "date_utc"
        v = "value"
    """))  # fmt: skip
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(line(f"m{i}", value=-1.0 if i == 2 else float(i)) for i in range(5)) + "\n")
    summary = operations.ingest(load(root), TASK, batch.open())
    assert (summary.inserted, summary.malformed_count) == (4, 1)
    assert summary.malformed[0]["id"] == "m2" and "readings refused its row" in str(
        summary.malformed[0]["error"]
    )
    assert [r[0] for r in _query(url, "SELECT mid FROM readings ORDER BY mid")] == ["m0", "m1", "m3", "m4"]
    assert _query(url, "SELECT received, inserted, malformed FROM {log}batches") == [(5, 4, 1)]
    # A refused copy of an id, then a good copy in the same batch: the good one is inserted (it
    # was counted a duplicate of the refused one and lost), and a third copy is a duplicate.
    again = tmp_path / "again.jsonl"
    again.write_text("\n".join([line("m9", value=-1.0), line("m9", value=9.0), line("m9", value=7.0),
                                 line("m8", value=8.0)]) + "\n")  # fmt: skip
    summary = operations.ingest(load(root), TASK, again.open())
    assert (summary.inserted, summary.duplicates, summary.malformed_count) == (2, 1, 1)
    assert _query(url, "SELECT mid, v FROM readings WHERE mid IN ('m8', 'm9') ORDER BY mid") == [
        ("m8", 8.0),
        ("m9", 9.0),
    ]


def test_a_missing_table_fails_the_batch_and_commits_nothing(root: Path, tmp_path: Path, url: str) -> None:
    _execute(url, "ALTER TABLE raw RENAME TO raw_old")
    batch = tmp_path / "b.jsonl"
    batch.write_text(line("m1") + "\n" + line("m2", value="x") + "\n")
    with pytest.raises(ConfigError, match=r"task\.toml table: .*raw"):  # named, exit 2, before any batch
        operations.ingest(load(root), TASK, batch.open())
    for log in ("batches", "parked"):  # no log row, no parked message (no log tables yet): it comes again
        with contextlib.suppress(DataError):
            assert _query(url, f"SELECT count(*) FROM {{log}}{log}") == [(0,)]
    result = cli(root, "ingest", TASK, str(batch))
    assert result.returncode == 2 and "task.toml table:" in result.stderr and "Traceback" not in result.stderr


def _refused_before_any_message(
    root: Path, url: str, table: str, ids: list[str], why: str, *, columns: str = ""
) -> Path:
    """Point the task at ``table`` (``mid`` and ``at``, and ``columns``): check and ingest of a batch
    of ``ids`` exit 2 saying ``why``, and nothing is inserted. The batch file, to ingest again."""
    (root / "tasks" / TASK / "task.toml").write_text(
        f'kind = "ingest"\ntable = "{table}"\n[columns]\nmid = "id"\nat = "date_utc"\n{columns}'
    )
    batch = root.parent / "b.jsonl"
    batch.write_text("".join(line(i) + "\n" for i in ids))
    for command in (["check"], ["ingest", TASK, str(batch)]):
        result = cli(root, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert why in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert _query(url, f"SELECT count(*) FROM {table}") == [(0,)]
    return batch


def test_a_table_without_a_unique_index_on_the_id_is_refused_before_any_message(
    tmp_path: Path, url: str
) -> None:
    """check said ok; ingest then failed every batch (PostgreSQL, SQLite: no ON CONFLICT target),
    or inserted every redelivered copy of a message (MariaDB)."""
    root = airmax_project(tmp_path / "proj", url)
    time_type = TIME_TYPES[tabledb.flavor_of(url)]
    id_type = ID_TYPES[tabledb.flavor_of(url)]
    _execute(url, f"CREATE TABLE nouniq (mid {id_type}, at {time_type} NOT NULL, v DOUBLE PRECISION)")
    batch = _refused_before_any_message(
        root, url, "nouniq", ["m1", "m1"], "has no unique index on mid alone", columns='v = "value"\n'
    )
    _execute(url, "CREATE UNIQUE INDEX nouniq_mid_key ON nouniq (mid)")
    assert cli(root, "ingest", TASK, str(batch)).returncode == 0
    assert _query(url, "SELECT count(*) FROM nouniq") == [(1,)]


def test_a_table_column_that_needs_a_value_no_message_field_gives_is_refused_before_any_message(
    tmp_path: Path, url: str
) -> None:
    """A NOT NULL column without a default that [columns] does not map: check said ok, and the
    table refused every message's row, so each one was reported malformed and skipped (from SQS:
    deleted). A column with a default, or one the database numbers itself, needs no field."""
    root = airmax_project(tmp_path / "proj", url)
    flavor = tabledb.flavor_of(url)
    serial = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
              "mariadb": "BIGINT AUTO_INCREMENT PRIMARY KEY"}[flavor]  # fmt: skip
    _execute(
        url,
        f"CREATE TABLE stations (n {serial}, mid {ID_TYPES[flavor]} NOT NULL UNIQUE, "
        f"at {TIME_TYPES[flavor]} NOT NULL, station VARCHAR(20) NOT NULL, note VARCHAR(20) NOT NULL DEFAULT 'x')",
    )
    batch = _refused_before_any_message(
        root, url, "stations", ["m1", "m2"],
        "stations.station needs a value (NOT NULL, without a default) and [columns] maps no field to it",
    )  # fmt: skip
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text() + 'station = "location"\n')
    assert cli(root, "check").returncode == 0
    assert cli(root, "ingest", TASK, str(batch)).returncode == 1  # no location in these messages: NULL
    _execute(url, "ALTER TABLE stations DROP COLUMN station")
    toml.write_text(toml.read_text().replace('station = "location"\n', ""))
    assert cli(root, "ingest", TASK, str(batch)).returncode == 0
    assert _query(url, "SELECT count(*) FROM stations") == [(2,)]


@pytest.mark.parametrize(
    ("column_type", "field", "kind"),
    [("INTEGER", "date_utc", "number"), ("DATE", "value", "time"), ("DATE", "city", "time")],
)
def test_a_column_whose_type_holds_no_value_of_its_field_is_refused_before_any_message(
    tmp_path: Path, url: str, column_type: str, field: str, kind: str
) -> None:
    """A column changed to a type that cannot hold its field (a time into a number column): check
    said ok, and the table refused every message's row, each reported malformed and skipped (from
    SQS: deleted, so lost). SQLite stores any value in any column: a message goes in there."""
    root = airmax_project(tmp_path / "proj", url)
    flavor = tabledb.flavor_of(url)
    _execute(url, f"CREATE TABLE typed (mid {ID_TYPES[flavor]} NOT NULL UNIQUE, at {TIME_TYPES[flavor]}"
                  f" NOT NULL, x {column_type})")  # fmt: skip
    if flavor == "sqlite":
        (root / "tasks" / TASK / "task.toml").write_text(
            f'kind = "ingest"\ntable = "typed"\n[columns]\nmid = "id"\nat = "date_utc"\nx = "{field}"\n'
        )
        batch = tmp_path / "b.jsonl"
        batch.write_text(line("m1") + "\n")
        assert cli(root, "check").returncode == 0 and cli(root, "ingest", TASK, str(batch)).returncode == 0
        return
    why = f"typed.x is a {kind} column, which cannot hold {field}"
    _refused_before_any_message(root, url, "typed", ["m1", "m2"], why, columns=f'x = "{field}"\n')


def test_ids_that_differ_in_case_accents_or_trailing_spaces_are_different_messages(
    root: Path, tmp_path: Path, url: str
) -> None:
    """MariaDB's default collation took ABC for abc and cafe for café: the second was lost as a duplicate."""
    ids = ["abc", "ABC", "café", "cafe", "m1", "m1 ", "ß", "ss"]
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(line(i, value=float(n)) for n, i in enumerate(ids)) + "\n")
    summary = operations.ingest(load(root), TASK, batch.open())
    assert (summary.inserted, summary.duplicates) == (8, 0)
    assert sorted(r[0] for r in _raw(url)) == sorted(ids)


@pytest.mark.mariadb
def test_a_mariadb_id_column_that_folds_case_is_refused_before_any_message(
    tmp_path: Path, mariadb_url: str
) -> None:
    root = airmax_project(tmp_path / "proj", mariadb_url)
    _execute(mariadb_url, "CREATE TABLE folds (mid VARCHAR(64) PRIMARY KEY, at DATETIME(6) NOT NULL)")
    batch = _refused_before_any_message(
        root, mariadb_url, "folds", ["abc", "ABC"], "folds.mid compares message ids by utf8mb4_"
    )
    _execute(mariadb_url, "ALTER TABLE folds MODIFY mid VARCHAR(64) NOT NULL COLLATE utf8mb4_nopad_bin")
    assert cli(root, "ingest", TASK, str(batch)).returncode == 0
    assert _query(mariadb_url, "SELECT count(*) FROM folds") == [(2,)]


@pytest.mark.mariadb
def test_a_mariadb_server_without_strict_mode_truncates_nothing(tmp_path: Path, mariadb_url: str) -> None:
    """With sql_mode = '' (no STRICT_*) MariaDB cut a 256-character id to 255 (so two ids with one
    prefix were one message, the second lost as a duplicate), clamped a latitude of 1000 to
    99.999999 and cut country BEL to BE, with a warning and no error: each is now refused."""
    root = airmax_project(tmp_path / "proj", mariadb_url)
    admin = tables.TableDb(mariadb_url)
    mode = admin.query("SELECT @@GLOBAL.sql_mode")[1][0][0]
    admin.execute("SET GLOBAL sql_mode = ''")
    try:
        batch = tmp_path / "b.jsonl"
        lines = [
            line("a" * 255 + "x"),
            line("a" * 255 + "y"),
            line("lat", latitude=1000.0),
            line("cc", country="BEL"),
        ]
        batch.write_text("\n".join(lines) + "\n")
        summary = operations.ingest(load(root), TASK, batch.open())
    finally:
        admin.execute(f"SET GLOBAL sql_mode = '{mode}'")
        admin.close()
    assert (summary.inserted, summary.duplicates, summary.malformed_count) == (0, 0, 4), summary
    assert _raw(mariadb_url) == []


def test_a_mariadb_server_in_oracle_mode_parks_a_malformed_message(tmp_path: Path, mariadb_url: str) -> None:
    """With sql_mode = 'ORACLE' BODY is a reserved word: every ingest failed creating its log
    tables with "You have an error in your SQL syntax ... near 'body LONGTEXT NOT NULL'"."""
    root = airmax_project(tmp_path / "proj", mariadb_url)
    admin = tables.TableDb(mariadb_url)
    mode = admin.query("SELECT @@GLOBAL.sql_mode")[1][0][0]
    admin.execute("SET GLOBAL sql_mode = 'ORACLE'")
    try:
        batch = tmp_path / "b.jsonl"
        batch.write_text(line("ok") + "\n" + line("bad", value="x") + "\n")
        summary = operations.ingest(load(root), TASK, batch.open())
        again = operations.ingest(load(root), TASK, batch.open())
    finally:
        admin.execute(f"SET GLOBAL sql_mode = '{mode}'")
        admin.close()
    assert (summary.inserted, summary.malformed_count, summary.parked) == (1, 1, 1), summary
    assert (again.inserted, again.duplicates, again.already_parked) == (0, 1, 1), again
    assert _query(mariadb_url, "SELECT message_id, body FROM {log}parked") == [
        ("bad", line("bad", value="x"))
    ]


@pytest.mark.parametrize(
    ("backend", "id_type"),
    [
        pytest.param("sqlite", "TEXT COLLATE NOCASE", id="sqlite-nocase"),
        pytest.param("sqlite", "TEXT COLLATE RTRIM", id="sqlite-rtrim"),
        pytest.param("pg", "citext", id="pg-citext", marks=pytest.mark.pg),
        pytest.param("pg", 'text COLLATE "sg_ci"', id="pg-nondeterministic", marks=pytest.mark.pg),
    ],
)
def test_an_id_column_that_folds_case_is_refused_on_sqlite_and_postgresql(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, id_type: str
) -> None:
    """As on MariaDB: ON CONFLICT (mid) DO NOTHING took ABC for abc and dropped it as a duplicate."""
    url = str(request.getfixturevalue("pg_url")) if backend == "pg" else f"sqlite:///{tmp_path / 'a.db'}"
    root = airmax_project(tmp_path / "proj", url)
    if id_type == "citext":
        _execute(url, "CREATE EXTENSION IF NOT EXISTS citext")
    if "sg_ci" in id_type:
        _execute(
            url, "CREATE COLLATION sg_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
    _execute(url, f"CREATE TABLE folds (mid {id_type} NOT NULL UNIQUE, at TEXT NOT NULL)")
    _refused_before_any_message(
        root, url, "folds", ["abc", "ABC", "m1", "m1 "], "folds.mid compares message ids by "
    )


def test_a_byte_order_mark_before_the_first_line_is_not_a_malformed_message(tmp_path: Path) -> None:
    """A file saved with a UTF-8 BOM made its first line "not JSON"."""
    batch = tmp_path / "bom.jsonl"
    batch.write_bytes(b"\xef\xbb\xbf" + (line("m1") + "\n" + line("m2") + "\n").encode())
    from sluicegate.ingest import read_lines

    for lines in (batch.open("rb"), batch.open(encoding="utf-8")):
        assert [m.error for m in read_lines(lines, "bom.jsonl")] == [None, None]


def test_ingest_cli_reads_stdin_and_exits_1_after_reporting_malformed_messages(root: Path) -> None:
    good = cli(root, "ingest", TASK, "-", env={}, check=False, input_text=line("m1") + "\n")
    assert good.returncode == 0, good.stderr
    assert "1 messages received, 1 inserted, 0 duplicates, 0 malformed" in good.stdout
    bad = cli(root, "ingest", TASK, "-", input_text=line("m1") + "\n" + line("m9", value="x") + "\n")
    assert bad.returncode == 1
    assert "0 inserted, 1 duplicates, 1 malformed (parked)" in bad.stdout
    assert (
        "parked: stdin:2: message m9: value 'x' is not a number" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    none = cli(root, "ingest", TASK)
    assert none.returncode == 2 and "has no [sqs] queue" in none.stderr


def test_a_malformed_message_with_a_very_long_id_is_parked_once(root: Path, tmp_path: Path, url: str) -> None:
    """A hostile id (2,000 characters) must not fail the batch's transaction where the log is kept."""
    long_id = "x" * 2000
    batch = tmp_path / "long.jsonl"
    batch.write_text(line(long_id, value="x") + "\n" + line("ok") + "\n")
    for parked in (1, 0):  # the second time is a redelivery: parked once
        summary = operations.ingest(load(root), TASK, batch.open())
        assert (summary.malformed_count, summary.parked, summary.already_parked) == (1, parked, 1 - parked)
    assert [len(r[0]) for r in _query(url, "SELECT message_id FROM {log}parked")] == [2000]
    assert [r[0] for r in _raw(url)] == ["ok"]


def test_a_message_whose_id_no_index_holds_is_refused_alone(root: Path, tmp_path: Path, url: str) -> None:
    """PostgreSQL refuses an index entry over ~2.7 kB (SQLSTATE 54000, which psycopg calls an
    OperationalError): one random 9,000-character id failed its whole batch as "database
    unavailable; will retry", so an SQS batch came back forever. It is one malformed message, parked
    once (by its body: the parked messages' index cannot hold its id either); the others go in."""
    huge_id = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(141))[:9000]
    batch = tmp_path / "huge.jsonl"
    batch.write_text("\n".join([line("good-1"), line(huge_id), line("good-2")]) + "\n")
    for again in (False, True):
        with batch.open("rb") as lines:
            summary = operations.ingest(load(root), TASK, lines, name="huge.jsonl")
        assert (summary.received, summary.batches) == (3, 1)
        assert summary.parked == (0 if again else summary.malformed_count)
    ids = [r[0] for r in _raw(url)]
    assert {"good-1", "good-2"} <= set(ids)
    if huge_id not in ids:  # refused by PostgreSQL's index (SQLite holds it, MariaDB's VARCHAR does not)
        reported = summary.malformed[0]
        assert reported["id"] == huge_id and "refused its row" in str(reported["error"])
        assert [huge_id in r[0] for r in _query(url, "SELECT body FROM {log}parked")] == [True]


def test_a_time_with_a_fraction_of_a_second_is_stored_with_it(root: Path, tmp_path: Path, url: str) -> None:
    """Ingest keeps a message's microseconds (it used to cut them off without a word); a whole
    second stays as it was written before, so SQLite's text of existing rows does not change."""
    batch = tmp_path / "batch.jsonl"
    lines = [line("m1", date_utc="2024-03-10T11:00:00.900Z"), line("m2", date_utc="2024-03-10T11:00:01Z")]
    batch.write_text("\n".join(lines) + "\n")
    summary = operations.ingest(load(root), TASK, batch.open(), name="batch.jsonl")
    assert (summary.inserted, summary.malformed_count) == (2, 0)
    stored = [tables.parse_time(row[3]) for row in _raw(url)]
    assert stored == [
        dt.datetime(2024, 3, 10, 11, 0, 0, 900000, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 10, 11, 0, 1, tzinfo=dt.UTC),
    ]
    if url.startswith("sqlite"):
        assert [row[3] for row in _raw(url)] == ["2024-03-10T11:00:00.900000Z", "2024-03-10T11:00:01Z"]


def test_a_time_before_year_1000_is_stored_as_a_time_the_aggregate_reads(
    root: Path, tmp_path: Path, url: str
) -> None:
    """On SQLite a message dated 0999-06-01 was stored as '999-06-01T00:00:00Z' (strftime does not
    pad the year), which julianday() cannot read: every later evaluation of the aggregate over the
    table failed on that one row, though ingest had taken it as valid."""
    batch = tmp_path / "old.jsonl"
    batch.write_text(line("old", date_utc="0999-06-01T00:00:00Z") + "\n" + line("new") + "\n")
    summary = operations.ingest(load(root), TASK, batch.open(), name="old.jsonl")
    assert (summary.inserted, summary.malformed_count) == (2, 0)
    [result] = engine.run(load(root), ["current_air_quality"], RunOptions())[0].aggregate
    assert (result["state"], result["error"]) == ("done", None)
    stored = [tables.parse_time(row[3]) for row in _raw(url)]
    assert stored == [dt.datetime(2024, 3, 10, 11, tzinfo=dt.UTC), dt.datetime(999, 6, 1, tzinfo=dt.UTC)]
    if url.startswith("sqlite"):
        assert [row[3] for row in _raw(url)] == ["2024-03-10T11:00:00Z", "0999-06-01T00:00:00Z"]


HOSTILE = [
    pytest.param(
        line("big").replace('"value": 1.0', '"value": 1' + "0" * 400).encode(), "big", id="huge-int"
    ),
    pytest.param(line("old", date_utc="0001-01-01T00:00:00+01:00").encode(), "old", id="year-1-offset"),
    pytest.param(line("sur", city="X\ud800").encode(), "sur", id="lone-surrogate"),
    pytest.param(line("nul", city="X\u0000").encode(), "nul", id="nul-in-a-text"),  # PostgreSQL refuses it
    pytest.param(b"\x00" + line("nul-byte").encode(), None, id="nul-byte-not-json"),
    pytest.param(line("nonutf", city="Gent").encode().replace(b"Gent", b"G\xffnt"), "nonutf", id="not-utf8"),
]


@pytest.mark.parametrize(("hostile", "hostile_id"), HOSTILE)
def test_a_hostile_message_is_parked_and_the_rest_of_its_batch_inserted(
    root: Path, tmp_path: Path, url: str, hostile: bytes, hostile_id: str | None
) -> None:
    """A value that made Python itself fail (OverflowError, UnicodeEncodeError/DecodeError) is one
    malformed message like any other: it used to raise, losing the batch (an SQS one forever)."""
    batch = tmp_path / "hostile.jsonl"
    batch.write_bytes(line("good-1").encode() + b"\n" + hostile + b"\n" + line("good-2").encode() + b"\n")
    for parked in (1, 0):  # again: the good ones are duplicates, the hostile one was parked before
        with batch.open("rb") as lines:
            summary = operations.ingest(load(root), TASK, lines, name="hostile.jsonl")
        assert (summary.received, summary.malformed_count, summary.parked) == (3, 1, parked)
        assert summary.malformed[0]["id"] == hostile_id
    assert [r[0] for r in _raw(url)] == ["good-1", "good-2"]
    parked_rows = _query(url, "SELECT message_id, error, body FROM {log}parked")
    assert [r[0] for r in parked_rows] == [hostile_id]
    prefix = f"hostile.jsonl:2: message {hostile_id}: " if hostile_id else "hostile.jsonl:2 is not JSON"
    assert parked_rows[0][1].startswith(prefix)
    logged = _query(url, "SELECT received, inserted, malformed FROM {log}batches ORDER BY id")
    assert logged == [(3, 2, 1), (3, 0, 1)]


def test_ingest_cli_reports_a_line_that_is_not_utf8_and_exits_1(root: Path, tmp_path: Path, url: str) -> None:
    batch = tmp_path / "latin1.jsonl"
    batch.write_bytes(line("ok").encode() + b"\n" + b'{"city": "Li\xe8ge"}\n')
    proc = cli(root, "ingest", TASK, str(batch))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "1 inserted, 0 duplicates, 1 malformed (parked)" in proc.stdout
    assert f"parked: {batch}:2 is not UTF-8 text (byte 0xe8 at byte 13)" in proc.stderr
    assert [r[0] for r in _raw(url)] == ["ok"]
    assert _query(url, "SELECT message_id, body FROM {log}parked") == [(None, '{"city": "Li\\xe8ge"}')]


def test_two_ingests_of_one_file_at_once_park_each_message_without_an_id_once(
    root: Path, tmp_path: Path, url: str
) -> None:
    """`sluicegate ingest TASK FILE` twice at once (two hosts fed the same file, or a retry while the
    first still ran): each found a line without an id not parked yet, as neither saw the other's
    uncommitted row, and both kept it (PostgreSQL, MariaDB): the parked table held it twice, and
    each summary said it was parked now. Its body is its only key, which no index holds."""
    batch = tmp_path / "batch.jsonl"
    # no valid message: its row would make the second wait for the first's commit before parking
    batch.write_text("".join(f"not json {i}\n" for i in range(200)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    argv = [SLUICEGATE, "-C", str(root), "ingest", TASK, str(batch), "--json"]
    parked = 0
    for _ in range(2):
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]  # fmt: skip
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
            summary = json.loads(out)
            assert (summary["malformed_count"], summary["parked"] + summary["already_parked"]) == (200, 200)
            parked += summary["parked"]
    assert parked == 200  # each body parked once, by one of the four, and the others said "before"
    assert _query(url, "SELECT count(*), count(DISTINCT body) FROM {log}parked") == [(200, 200)]


def test_the_ingest_summary_says_what_was_parked_now_and_before(root: Path, tmp_path: Path) -> None:
    clean = cli(root, "ingest", TASK, "-", input_text=line("m1") + "\n")
    assert clean.returncode == 0 and "0 malformed (parked)" in clean.stdout  # park is set: not "(skipped)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line("m2", city=None) + "\nnotjson\n")
    first = cli(root, "ingest", TASK, str(bad), "--json")
    assert first.returncode == 1
    assert {k: json.loads(first.stdout)[k] for k in ("parked", "already_parked")} == {
        "parked": 2,
        "already_parked": 0,
    }
    again = cli(root, "ingest", TASK, str(bad))
    assert again.returncode == 1 and "2 malformed (0 parked, 2 parked before)" in again.stdout
    toml = root / "tasks" / TASK / "task.toml"
    toml.write_text(toml.read_text().replace('malformed = "park"', 'malformed = "skip"'))
    skipped = cli(root, "ingest", TASK, str(bad))
    assert "2 malformed (skipped)" in skipped.stdout and ":1: message m2: city is missing" in skipped.stderr


def test_run_of_an_ingest_task_without_a_queue_says_how_messages_get_in(root: Path) -> None:
    proc = cli(root, "run", TASK)
    assert proc.returncode == 0, proc.stderr
    assert "no [sqs] queue in" in proc.stdout and f"sluicegate ingest {TASK} FILE" in proc.stdout
    summary = json.loads(cli(root, "run", TASK, "--json").stdout)[0]
    assert "no [sqs] queue" in summary["ingest"]["note"] and summary["ingest"]["received"] == 0


@pytest.mark.pg
def test_a_batch_the_server_rolls_back_to_end_a_deadlock_is_run_again(tmp_path: Path, pg_url: str) -> None:
    """Two ingests of overlapping ids in another order (an `ingest FILE` while `serve` drains the
    queue) deadlock; the victim's batch committed nothing and is run again, not the end of the
    ingest with "database ... is unavailable: deadlock detected"."""
    root = airmax_project(tmp_path / "proj", pg_url)
    batch = tmp_path / "batch.jsonl"
    batch.write_text(line("a") + "\n" + line("z") + "\n")
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as other:
        other.execute("INSERT INTO raw (message_id, measurement_time_utc) VALUES ('z', now())")
        result: dict[str, Any] = {}

        def ingest() -> None:
            try:
                result["summary"] = operations.ingest(load(root), TASK, batch.open(), name="batch.jsonl")
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        worker = threading.Thread(target=ingest)
        worker.start()
        time.sleep(0.3)  # the ingest holds 'a' and waits for 'z'
        other.execute("INSERT INTO raw (message_id, measurement_time_utc) VALUES ('a', now())")
        other.rollback()  # the ingest, the deadlock's victim, may go on now
        worker.join(timeout=30)
    assert "error" not in result, result.get("error")
    assert (result["summary"].inserted, result["summary"].duplicates) == (2, 0)
    assert [r[0] for r in _raw(pg_url)] == ["a", "z"]


def test_a_message_whose_id_is_an_escaped_nul_is_not_taken_for_one_with_a_nul(
    root: Path, tmp_path: Path, url: str
) -> None:
    """An id holding a NUL is stored with the NUL written as the four characters ``\\x00``; a
    valid message whose id is those characters is still told apart from it, in either order."""
    batch = tmp_path / "ids.jsonl"
    for text, counts in ((line("a\\x00"), (1, 0)), (line("a\x00"), (0, 1)), (line("a\\x00"), (0, 0))):
        batch.write_text(text + "\n")
        summary = operations.ingest(load(root), TASK, batch.open("rb"), name="ids.jsonl")
        assert (summary.inserted, summary.malformed_count) == counts, (text, summary)
    assert [r[0] for r in _raw(url)] == ["a\\x00"]
    parked = _query(url, "SELECT message_id, error FROM {log}parked")
    assert len(parked) == 1 and "holds a NUL" in parked[0][1], parked


def _ingest_readings(
    tmp_path: Path, url: str, columns_sql: str, mapping: dict[str, str], lines: list[str]
) -> Any:
    """Ingest ``lines`` (an airmax project's) into a new table ``readings`` (``columns_sql``)
    whose columns ``mapping`` maps to fields; the summary."""
    root = airmax_project(tmp_path / "proj", url)
    _execute(url, f"CREATE TABLE readings ({columns_sql})")
    mapped = "".join(f'{column} = "{field}"\n' for column, field in mapping.items())
    (root / "tasks" / TASK / "task.toml").write_text(
        f'kind = "ingest"\ntable = "readings"\n[columns]\n{mapped}'
    )
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    return operations.ingest(load(root), TASK, batch.open())


@pytest.mark.parametrize("url", [BACKENDS[1], BACKENDS[2]], indirect=True)
def test_a_value_too_large_for_its_column_names_the_column_and_the_field(tmp_path: Path, url: str) -> None:
    """PostgreSQL's refusal named no column ("value too long for type character varying(8)",
    "numeric field overflow", "integer out of range"): with thirteen columns an operator could
    not tell which field of the message to fix. Each refused message now names its column and
    field (MariaDB's own message named the column, in its own words), and the others commit."""
    flavor = tabledb.flavor_of(url)
    summary = _ingest_readings(
        tmp_path, url,
        f"mid {ID_TYPES[flavor]} PRIMARY KEY, at {TIME_TYPES[flavor]} NOT NULL, "
        "town VARCHAR(8), v NUMERIC(6,2), n INTEGER, w NUMERIC(6,2)",
        {"mid": "id", "at": "date_utc", "town": "city", "v": "value", "n": "latitude", "w": "country"},
        [line("ok-1"), line("long", city="x" * 300), line("big", value=123456.0), line("huge", value=1e300),
         line("int", latitude=3e9), line("ok-2", city="Gent", value=9999.99, latitude=7), line("text", country="BE")],
    )  # fmt: skip
    assert (summary.inserted, summary.malformed_count) == (2, 5)
    errors = {m["id"]: str(m["error"]) for m in summary.malformed}
    assert errors["long"].startswith("message long: readings refused its row: column town (field city, 'xxx")
    assert errors["big"].startswith("message big: readings refused its row: column v (field value, 123456.0)")
    assert errors["huge"].startswith("message huge: readings refused its row: column v (field value, 1e+300)")
    assert errors["int"].startswith(
        "message int: readings refused its row: column n (field latitude, 3000000000.0)"
    )
    # MariaDB names a column `db`.`table`.`column` for a value it cannot read as the column's type
    assert errors["text"].startswith("message text: readings refused its row: column w (field country, 'BE')")
    assert all("\n" not in e for e in errors.values()), errors
    assert [r[0] for r in _query(url, "SELECT mid FROM readings ORDER BY mid")] == ["ok-1", "ok-2"]


@pytest.mark.parametrize("url", [BACKENDS[1]], indirect=True)
def test_a_time_goes_into_a_timestamp_column_as_utc_whatever_the_database_time_zone(
    tmp_path: Path, url: str
) -> None:
    """A PostgreSQL ``timestamp`` (without time zone) column got the wall-clock time of the
    database's TimeZone: with ``Europe/Brussels``, a measurement of 11:00Z was stored as 12:00,
    which every reader (aggregate, partitioned and incremental tasks) takes for 12:00 UTC. The
    ingest transaction works in UTC now, as sluicegate's other connections do."""
    _execute(url, f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET TimeZone TO 'Europe/Brussels'")
    summary = _ingest_readings(
        tmp_path, url, "mid text PRIMARY KEY, at timestamp NOT NULL, sent timestamptz",
        {"mid": "id", "at": "date_utc", "sent": "sent_at"},
        [line("m1", date_utc="2024-07-10T11:00:00Z", sent_at="2024-07-10T11:00:05+02:00")],
    )  # fmt: skip
    assert summary.inserted == 1
    assert _query(url, "SELECT mid, at, sent FROM readings") == [
        ("m1", dt.datetime(2024, 7, 10, 11, 0), dt.datetime(2024, 7, 10, 9, 0, 5, tzinfo=dt.UTC))
    ]


@pytest.mark.parametrize("url", [BACKENDS[1]], indirect=True)
def test_a_text_whose_excess_is_spaces_is_not_named_for_another_columns_refusal(
    tmp_path: Path, url: str
) -> None:
    """PostgreSQL stores a text longer than its varchar(n) when the excess is spaces only (cut to
    n), so such a field is no fault of its row: the refusal of the row's integer out of range was
    reported on the text's column, as the cast of the text cut it short, sending the operator to
    fix a field that was fine."""
    summary = _ingest_readings(
        tmp_path, url, "mid VARCHAR(64) PRIMARY KEY, at timestamptz NOT NULL, town VARCHAR(8), n INTEGER",
        {"mid": "id", "at": "date_utc", "town": "city", "n": "latitude"},
        [line("padded", city="Gent" + " " * 12), line("int", city="Gent" + " " * 12, latitude=3e9)],
    )  # fmt: skip
    assert (summary.inserted, summary.malformed_count) == (1, 1), summary.malformed
    [error] = [str(m["error"]) for m in summary.malformed]
    assert error.startswith(
        "message int: readings refused its row: column n (field latitude, 3000000000.0)"
    ), error


@pytest.mark.parametrize("url", [BACKENDS[1]], indirect=True)
def test_a_number_too_long_for_a_text_column_names_the_column_and_the_field(tmp_path: Path, url: str) -> None:
    """A number or a time mapped into a varchar(n) column is stored as its text, and refused
    when that text is longer than n ("value too long for type character varying(4)"): the probe
    compared the column's cast with the value itself, which no operator does for a number and a
    text, so the refusal named no column; each value is now compared as the text it is stored as."""
    summary = _ingest_readings(
        tmp_path, url, "mid VARCHAR(64) PRIMARY KEY, at VARCHAR(40) NOT NULL, lat VARCHAR(4), town VARCHAR(8)",
        {"mid": "id", "at": "date_utc", "lat": "latitude", "town": "city"},
        [line("ok", latitude=1.5), line("long", latitude=123456.5)],
    )  # fmt: skip
    assert (summary.inserted, summary.malformed_count) == (1, 1), summary.malformed
    [error] = [str(m["error"]) for m in summary.malformed]
    assert error.startswith(
        "message long: readings refused its row: column lat (field latitude, 123456.5)"
    ), error


def test_a_fraction_in_an_integer_column_is_refused_and_a_numeric_column_rounds_to_its_scale(
    tmp_path: Path, url: str
) -> None:
    """PostgreSQL and MariaDB store 2.5 in an integer column as 2 (or 3) without a word: a wrong
    message, not a precision choice, so it is refused naming the column and the field, and a
    later copy of its id that is whole is inserted. A numeric(p,s) column rounds to the s places
    its owner declared, as the database documents: 1.005 in a numeric(6,2) is stored rounded
    (it was refused, and with it every reading with a 7th decimal in a numeric(8,6) latitude).
    SQLite stores each number as it is sent, whatever the declared type: nothing is refused."""
    flavor = tabledb.flavor_of(url)
    summary = _ingest_readings(
        tmp_path, url,
        f"mid {ID_TYPES[flavor]} PRIMARY KEY, at {TIME_TYPES[flavor]} NOT NULL, n INTEGER, b BIGINT, "
        "d NUMERIC(6,2), t NUMERIC(8,3), g NUMERIC(8,6)",
        {"mid": "id", "at": "date_utc", "n": "latitude", "b": "longitude", "d": "value", "t": "country",
         "g": "location"},
        [line("ok", latitude=2.0, longitude=3e15, value=1.5, country="1.5"), line("text", latitude="12"),
         line("half", latitude=2.5), line("bhalf", longitude=-2.5), line("cents", value=1.126),
         line("t", country="1.0006", location="50.858611111"), line("half", latitude=7.0)],
    )  # fmt: skip
    stored = _query(url, "SELECT mid, n, b, d, t, g FROM readings ORDER BY mid")
    if flavor == "sqlite":
        assert (summary.inserted, summary.malformed_count) == (6, 0), summary.malformed
        assert [(r[0], r[1], r[2], r[3]) for r in stored if r[0] in ("half", "bhalf", "cents")] == [
            ("bhalf", None, -2.5, 1.0), ("cents", None, None, 1.126), ("half", 2.5, None, 1.0)
        ]  # fmt: skip
        return
    assert (summary.inserted, summary.malformed_count) == (5, 2), summary.malformed
    errors = {m["id"]: str(m["error"]) for m in summary.malformed}
    assert errors["half"].startswith(
        "message half: readings refused its row: column n (field latitude, 2.5): the column holds whole"
        " numbers only and would store the value rounded"
    ), errors
    assert errors["bhalf"].startswith(
        "message bhalf: readings refused its row: column b (field longitude, -2.5)"
    )
    dec = decimal.Decimal
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in stored] == [
        ("cents", None, None, dec("1.13"), None, None), ("half", 7, None, dec("1.00"), None, None),
        ("ok", 2, 3 * 10**15, dec("1.50"), dec("1.500"), None),
        ("t", None, None, dec("1.00"), dec("1.001"), dec("50.858611")), ("text", 12, None, dec("1.00"), None, None),
    ]  # fmt: skip


def test_sqlite_stores_each_number_as_sent_or_refuses_it_naming_the_column(tmp_path: Path) -> None:
    """SQLite turns a value into its column's affinity: a number into a TEXT column was stored
    with 15 digits (0.30000000000000004 as '0.3', 123456789.12345679 as '123456789.123457'), and
    a number's text into an INTEGER or REAL column as a float that is another number
    (12345678901234567890123 as 1.2345678901234568e+22). A number now goes into a text column
    as its shortest exact text (as PostgreSQL and MariaDB store it), and a text SQLite would turn
    into another number is refused, naming the column and the field."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    summary = _ingest_readings(
        tmp_path, url, "mid VARCHAR(64) PRIMARY KEY, at TEXT NOT NULL, x VARCHAR(40), n BIGINT, r REAL",
        {"mid": "id", "at": "date_utc", "x": "value", "n": "country", "r": "city"},
        [line("m1", value=0.30000000000000004, country="9007199254740993", city="2.5"),
         line("m2", value=123456789.12345679, country="1e5"), line("m3", value=-0.0),
         line("big", country="12345678901234567890123"), line("real", city="9007199254740993")],
    )  # fmt: skip
    assert (summary.inserted, summary.malformed_count) == (3, 2), summary.malformed
    errors = {m["id"]: str(m["error"]) for m in summary.malformed}
    assert errors["big"].startswith(
        "message big: readings refused its row: column n (field country, '12345678901234567890123'): SQLite"
        " would store this text as the number 1.2345678901234568e+22"
    ), errors
    assert errors["real"].startswith("message real: readings refused its row: column r (field city,"), errors
    assert _query(url, "SELECT mid, x, n, r FROM readings ORDER BY mid") == [
        ("m1", "0.30000000000000004", 9007199254740993, 2.5), ("m2", "123456789.12345679", 100000, "Gent"),
        ("m3", "-0.0", None, "Gent"),
    ]  # fmt: skip
