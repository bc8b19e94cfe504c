"""Blocks tasks against real components: the MDS and portal doubles (HTTP servers on 127.0.0.1),
a throwaway PostgreSQL for the loaded table and the ledger (or a throwaway MariaDB for the
ledger: claims, leases and fencing run on both), real CLI processes, SIGKILL."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import gzip
import json
import os
import re
import signal
import subprocess
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import psycopg
import pytest
from click.testing import CliRunner
from test_service import Server

from doubles import (
    Dataset,
    HttpDouble,
    MdsDouble,
    MdsProvider,
    PortalDouble,
    Request,
    Response,
    generate_trips,
)
from sluicegate import mariadb_conn, operations
from sluicegate.cli import main
from sluicegate.config import load_project
from sluicegate.drivers.blocks_stages import StageRecorder
from sluicegate.formats.jsonl import read_records
from sluicegate.ledger import Ledger, RangeQuery, StageResult
from sluicegate.options import TaskSummary
from sluicegate.secrets import encrypt, generate_key
from sluicegate.sources import Slice
from sluicegate.timeblocks import blocks_between
from sluicegate.work import Outcome, WorkUnit
from support import SLUICEGATE, is_mariadb

UTC = dt.UTC
H = dt.timedelta(hours=1)
# Blocks ending 01:00 .. 06:00 CST on 2020-03-01 start at 06:00 .. 11:00 UTC.
FIRST = dt.datetime(2020, 3, 1, 6, tzinfo=UTC)
RANGE = ["--time-max", "2020-3-1-6", "--interval", "6"]
COLUMNS = """
[load.columns]
trip_id = "text"
provider_name = "text"
trip_duration = "int"
end_time = "epoch_ms"
route = "json"
"""


@pytest.fixture
def mds() -> Iterator[MdsDouble]:
    with MdsDouble(["lime", "bird"], trips_per_block=5, page_size=2) as double:
        yield double


@pytest.fixture
def portal() -> Iterator[PortalDouble]:
    with PortalDouble() as double:
        yield double


@pytest.fixture(autouse=True)
def _socrata_metadata_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test reads a dataset's metadata afresh (a process keeps what it read)."""
    from sluicegate import socrata

    monkeypatch.setattr(socrata, "_IDENTIFIERS", {}, raising=False)


@pytest.fixture(params=["pg", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def ledger_url(request: pytest.FixtureRequest, pg_url: str) -> str:
    """The ledger: in the PostgreSQL source database, or in a MariaDB database (``[ledger] url``)."""
    if request.param == "pg":
        return pg_url
    url: str = request.getfixturevalue("mariadb_url")
    return url


def write(
    root: Path,
    url: str,
    mds: MdsDouble,
    portal: PortalDouble,
    *,
    keys: str | None = None,
    create: str = "true",
    lease: str = "10m",
    testing: str = "",
    extract_extra: str = "",
    extract_config: str = "",
    task_extra: str = "",
    publish_extra: str = "",
    ledger: str | None = None,
) -> Path:
    (root / "tasks" / "trips").mkdir(parents=True, exist_ok=True)
    ledger_table = f'[ledger]\nurl = "{ledger}"\n' if ledger and ledger != url else ""
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{url}"\n{ledger_table}[destination]\nurl = "{root / "out"}"\n'
        f'[defaults]\nlease = "{lease}"\nbackoff = "0s"\nmax_attempts = 3\n{testing}'
    )
    keys = keys or "".join(f'[keys.{p}]\nurl = "{mds.base_url(p)}"\n' for p in mds.providers)
    (root / "tasks" / "trips" / "task.toml").write_text(
        textwrap.dedent(
            f"""
            kind = "blocks"
            zone = "US/Central"
            key = "provider"
            {task_extra}
            {keys}
            [extract]
            callable = "sluicegate.mds:trips"
            path = "{{stage}}/{{provider}}/{{block:%Y/%m/%d/%H%z}}/trips.jsonl"
            {extract_extra}
            [extract.config]
            max_wait = 0
            {extract_config}
            [load]
            table = "trips"
            key = ["trip_id"]
            create = {create}
            {COLUMNS}
            [publish]
            callable = "sluicegate.socrata:upsert"
            [publish.config]
            url = "{portal.url}"
            dataset = "mds-trips"
            columns = ["trip_id", "provider_name", "trip_duration"]
            {publish_extra}
            """
        )
    )
    return root


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *args], env=env)


def ledger(url: str) -> dict[tuple[str, dt.datetime, str], tuple[Any, ...]]:
    """The blocks ledger's rows by (key value, block start, stage), on PostgreSQL or MariaDB."""
    columns = (
        "key_value, block_start, stage, status, attempts, records_total, records_errors, error, artifact"
    )
    if is_mariadb(url):  # block_start: UTC seconds
        conn = mariadb_conn.connect(url)
        try:
            found = conn.execute(f"SELECT {columns} FROM sluicegate_blocks").fetchall()
        finally:
            conn.close()
        return {(r[0], dt.datetime.fromtimestamp(r[1], UTC), r[2]): tuple(r[3:]) for r in found}
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {columns} FROM sluicegate.blocks").fetchall()
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]  # type: ignore[index]


def audit(url: str) -> None:
    """Count every row the load writes into trips (inserts and updates)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trip_writes (trip_id text)")
        conn.execute(
            "CREATE FUNCTION note_write() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO trip_writes VALUES (NEW.trip_id); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER trips_audit AFTER INSERT OR UPDATE ON trips FOR EACH ROW EXECUTE FUNCTION note_write()"
        )


@pytest.mark.pg
def test_a_range_against_the_provider_api_completes_around_empty_flaky_and_failing_blocks(
    tmp_path: Path, pg_url: str, ledger_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    root = write(tmp_path, pg_url, mds, portal, ledger=ledger_url)
    mds.flake("lime", FIRST + 2 * H, 2, page=2)  # 503 twice on page 2, then fine
    mds.empty_block("bird", FIRST + 3 * H)
    mds.fail_block("lime", FIRST + 4 * H)  # always 500
    result = run(root, *RANGE, "--json")
    assert result.exit_code == 1, result.output  # one block failed; the rest completed
    rows = ledger(ledger_url)
    failed = rows[("lime", FIRST + 4 * H, "extract")]
    assert failed[:2] == ("failed", 3) and "HTTP 500" in failed[4]
    assert len(mds.requests("lime", FIRST + 4 * H)) == 3  # one per attempt, max_attempts 3
    assert rows[("lime", FIRST + 4 * H, "load")][0] == "pending"  # waits for its extract
    assert {rows[("bird", FIRST + 3 * H, s)][0] for s in ("extract", "load", "publish")} == {"no_data"}
    done = [k for k, v in rows.items() if v[0] == "done"]
    assert len(done) == (12 - 2) * 3
    assert rows[("lime", FIRST + 2 * H, "extract")][:3] == ("done", 0, 5)  # the 503s waited out in the call
    assert len(mds.requests("lime", FIRST + 2 * H, status=503)) == 2
    expected = {
        t["trip_id"]
        for p in ("lime", "bird")
        for h in range(6)
        if (p, h) not in (("bird", 3), ("lime", 4))
        for t in generate_trips(p, FIRST + h * H, 5)
    }
    with psycopg.connect(pg_url) as conn:
        loaded = {r[0] for r in conn.execute("SELECT trip_id FROM trips")}
    assert loaded == expected and len(expected) == 50
    assert {r["trip_id"] for r in portal.rows("mds-trips")} == expected
    assert set(portal.writes("mds-trips").values()) == {1}
    [status] = operations.status(load_project(root), ["trips"])
    assert status["failed"] == 1 and "HTTP 500" in status["failures"][0]["error"]
    assert status["failures"][0]["partition"] == "lime 2020-03-01T05:00-06:00 extract"
    project = load_project(root)
    page = operations.list_partitions(project, project.task("trips"), state="failed", limit=10, offset=0)
    assert [(p["stage"], p["block"], p["attempts"]) for p in page] == [
        ("extract", "2020-03-01T05:00-06:00", 3)
    ]
    dry = run(root, *RANGE, "--incomplete-only", "--dry-run")
    assert "2020-03-01T05:00-06:00 extract (incomplete)" in dry.output, dry.output
    mds.restore_block("lime", FIRST + 4 * H)
    again = run(root, *RANGE, "--incomplete-only")  # the parked extract, then its load and publish
    assert again.exit_code == 0, again.output
    redone = {s: v[:2] for (k, b, s), v in ledger(ledger_url).items() if (k, b) == ("lime", FIRST + 4 * H)}
    assert redone == {"extract": ("done", 0), "load": ("done", 0), "publish": ("done", 0)}


@pytest.mark.pg
def test_the_fall_back_day_fetches_25_distinct_hours_including_both_1_am_hours(
    tmp_path: Path, pg_url: str, portal: PortalDouble
) -> None:
    with MdsDouble(["lime"], trips_per_block=3, page_size=10) as mds:
        root = write(tmp_path, pg_url, mds, portal)
        result = run(root, "--time-min", "2020-11-1-0", "--time-max", "2020-11-2-0", "--stage", "extract")
        assert result.exit_code == 0, result.output
        starts = sorted(int(r.query["start_time"]) for r in mds.requests("lime"))
        spring = run(
            root, "--time-min", "2020-3-8-0", "--time-max", "2020-3-9-0", "--stage", "extract", "--json"
        )
    day_start = dt.datetime(2020, 11, 1, 5, tzinfo=UTC)  # local midnight, CDT
    assert starts == [int((day_start + h * H).timestamp() * 1000) for h in range(25)]
    files = sorted((tmp_path / "out" / "extract" / "lime" / "2020" / "11").rglob("trips.jsonl"))
    assert len(files) == 25
    one_am = [f for f in files if f.parent.name.startswith("01")]
    assert [f.parent.name for f in one_am] == ["01-0500", "01-0600"]
    for hour, block in ((6, one_am[0]), (7, one_am[1])):  # each holds its own UTC hour's trips
        trips = list(read_records(block.read_bytes()))
        assert trips == generate_trips("lime", dt.datetime(2020, 11, 1, hour - 1, tzinfo=UTC), 3)
    [summary] = json.loads(spring.output)
    assert len(summary["stages"]) == 23 and {s["status"] for s in summary["stages"]} == {"done"}
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM sluicegate.blocks WHERE block_end - block_start <> interval '1 hour'"
        ).fetchone() == (0,)


@pytest.mark.pg
def test_loading_a_block_twice_leaves_one_row_per_trip_and_rejected_rows_are_counted(
    tmp_path: Path, pg_url: str, ledger_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE trips (trip_id text PRIMARY KEY, provider_name text, "
            "trip_duration int CHECK (trip_duration < 900), end_time timestamptz, route jsonb)"
        )
    audit(pg_url)
    root = write(tmp_path, pg_url, mds, portal, ledger=ledger_url, create="false")
    args = ["--time-max", "2020-3-1-1", "--key", "provider=lime"]
    assert run(root, *args).exit_code == 0
    trips = generate_trips("lime", FIRST, 5)
    rejected = [t for t in trips if t["trip_duration"] >= 900]
    assert 0 < len(rejected) < 5  # the data set has both kinds in this block
    load = ledger(ledger_url)[("lime", FIRST, "load")]
    assert load[:4] == ("done", 0, 5, len(rejected))
    assert "trip_duration" in load[4] and "check constraint" in load[4]
    again = run(root, *args, "--force", "--stage", "load")
    assert again.exit_code == 0, again.output
    assert scalar(pg_url, "SELECT count(*) FROM trips") == 5 - len(rejected)
    assert scalar(pg_url, "SELECT count(DISTINCT trip_id) FROM trips") == 5 - len(rejected)
    assert scalar(pg_url, "SELECT count(*) FROM trip_writes") == 2 * (5 - len(rejected))
    assert len(mds.requests("lime")) == 3  # loading again read the artifact, not the API


@pytest.mark.pg
def test_a_failed_publish_is_retried_without_extracting_or_loading_again(
    tmp_path: Path, pg_url: str, ledger_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    root = write(tmp_path, pg_url, mds, portal, ledger=ledger_url)
    assert (
        run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime", "--stage", "extract").exit_code == 0
    )
    assert run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime", "--stage", "load").exit_code == 0
    audit(pg_url)  # the table exists now: count what the rest of the test writes
    api_calls = len(mds.requests())
    portal.fail_next(2, status=503)
    result = run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime", "--json")
    assert result.exit_code == 0, result.output
    assert (
        len(portal.upserts("mds-trips", status=503)) == 2
        and len(portal.upserts("mds-trips", status=200)) == 1
    )
    assert len(mds.requests()) == api_calls  # no new extract
    assert scalar(pg_url, "SELECT count(*) FROM trip_writes") == 0  # no new load
    publish = ledger(ledger_url)[("lime", FIRST, "publish")]
    assert publish[:3] == ("done", 2, 5)
    [summary] = json.loads(result.output)
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("publish", "failed")] * 2 + [
        ("publish", "done")
    ]


@pytest.mark.pg
def test_a_publish_to_a_dataset_without_a_row_identifier_is_refused_before_any_row_is_posted(
    tmp_path: Path, pg_url: str, mds: MdsDouble
) -> None:
    """A dataset without a row identifier appends: batch 1 of 3 was stored, batch 2 failed with a
    503, the retried publish posted all three again, and the dataset held 7 rows for 5 trips."""
    with PortalDouble({"mds-trips": Dataset(key=None)}) as portal:
        root = write(tmp_path, pg_url, mds, portal, publish_extra="batch = 2")
        portal.fail_next(1, status=503, after=1)
        result = run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime")
        assert portal.upserts() == [] and portal.rows("mds-trips") == []
    status, attempts, *_, error, _ = ledger(pg_url)[("lime", FIRST, "publish")]
    assert (status, attempts) == ("failed", 1), result.output
    assert "dataset mds-trips" in error and "has no row identifier" in error
    assert "set one (such as trip_id) in the dataset's settings" in error
    assert ledger(pg_url)[("lime", FIRST, "load")][0] == "done"


def _views(status: int, body: Any = None) -> Response:
    return Response(status=status, body=body if body is not None else {"code": "x", "error": True})


@pytest.mark.parametrize(
    ("views", "config", "error", "message"),
    [
        (_views(503), {}, "DestinationUnavailable", r"api/views/mds-trips\.json: HTTP 503; will retry"),
        (_views(401), {}, "TerminalError", "check app_token, username and password"),
        (_views(404), {}, "TerminalError", "nothing is there: check url and dataset.*set row_identifier"),
        (_views(200, {}), {}, "TerminalError", "without a dataset's metadata"),
        (
            _views(200, {"columns": [{"id": 7, "fieldName": "trip_id"}]}),
            {},
            "TerminalError",
            r"dataset mds-trips \(http://.*\) has no row identifier, so a retried post would add",
        ),
        (None, {"columns": ["provider_name"]}, "ConfigError", "leave out trip_id, the row identifier"),
        (None, {"row_identifier": "id"}, "ConfigError", "row_identifier 'id' is not the row identifier"),
        (None, {"row_identifier": ""}, "ConfigError", "row_identifier '' is not a field name"),
    ],
    ids=[
        "5xx",
        "auth",
        "404",
        "not-metadata",
        "no-row-identifier",
        "columns",
        "stated-other",
        "stated-empty",
    ],
)
def test_a_socrata_publish_posts_nothing_until_the_dataset_is_known_to_upsert(
    views: Response | None, config: dict[str, Any], error: str, message: str
) -> None:
    """Nothing checked that the dataset had a row identifier (without one a retried post appends
    its rows again), nor that ``columns`` kept it: the rows were posted all the same."""
    from sluicegate import exceptions, socrata

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    records = [{"trip_id": str(i), "provider_name": "lime"} for i in range(3)]
    counts = Response(status=200, body={"Rows Created": 3, "Rows Updated": 0, "Rows Deleted": 0, "Errors": 0})
    with _Answering(counts, views) as server:
        settings = {"url": server.url, "dataset": "mds-trips", **config}
        with pytest.raises(getattr(exceptions, error), match=message):
            socrata.upsert(block, iter(records), settings)  # type: ignore[arg-type]
        assert "POST" not in [r.request.method for r in server.records]


def _first_hour() -> Any:
    """The extract of provider ``p``'s first hour, as the trips task's stage sees it."""
    from sluicegate.timeblocks import Block, StageBlock

    return StageBlock(
        task="trips", stage="extract", key="provider", key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )  # fmt: skip


def test_a_portal_without_the_views_api_takes_the_stated_row_identifier() -> None:
    from sluicegate import socrata

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    with PortalDouble(views=False) as portal:
        config = {"url": portal.url, "dataset": "mds-trips", "row_identifier": "trip_id"}
        counts = socrata.upsert(block, iter([{"trip_id": "a"}]), config)  # type: ignore[arg-type]
        assert counts == {"total": 1, "processed": 1, "errors": 0}


def test_a_stated_row_identifier_is_not_kept_for_the_next_publish_to_the_dataset() -> None:
    """On a portal without the views API the field named in row_identifier was kept as the
    dataset's for the process's life: a publish without it (another task, a service whose config
    was edited) posted by that field instead of being refused, and a corrected row_identifier was
    refused as "not the row identifier", naming the old value, which the portal never said."""
    from sluicegate import socrata
    from sluicegate.exceptions import TerminalError

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    with PortalDouble(views=False) as portal:
        config = {"url": portal.url, "dataset": "mds-trips", "row_identifier": "trip_id"}
        socrata.upsert(block, iter([{"trip_id": "a"}]), config)  # type: ignore[arg-type]
        with pytest.raises(TerminalError, match="set row_identifier"):
            socrata.upsert(block, iter([{"trip_id": "b"}]), {**config, "row_identifier": None})  # type: ignore[arg-type]
        counts = socrata.upsert(block, iter([{"id": "c"}]), {**config, "row_identifier": "id"})  # type: ignore[arg-type]
        assert counts["total"] == 1 and len(portal.upserts()) == 2


ONE_KEYLESS = (
    "1 of the 2 records has no trip_id, the row identifier of dataset mds-trips, which the portal"
    " rejects: give every record a trip_id field, then rerun with --force"
)


def test_a_process_reads_a_datasets_metadata_once_but_not_a_refusal() -> None:
    """The metadata is read before the first post of a process, not before every block's; a
    dataset refused for want of a row identifier is read again (its settings may be fixed while
    a service runs). A record without the row identifier is one of the portal's Errors."""
    from sluicegate import socrata
    from sluicegate.exceptions import TerminalError

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    with PortalDouble({"mds-trips": Dataset(key=None)}) as portal:
        config = {"url": portal.url, "dataset": "mds-trips"}
        with pytest.raises(TerminalError, match="has no row identifier"):
            socrata.upsert(block, iter([{"trip_id": "a"}]), config)  # type: ignore[arg-type]
        portal.datasets["mds-trips"] = Dataset(key="trip_id")  # the operator sets one
        for _ in range(2):
            counts = socrata.upsert(block, iter([{"trip_id": "a"}, {"other": 1}]), config)  # type: ignore[arg-type]
            assert counts == {"total": 2, "processed": 1, "errors": 1, "messages": [ONE_KEYLESS]}
        views = [c for c in portal.calls if c.record.path.startswith("/api/views/")]
        assert len(views) == 2 and len(portal.upserts()) == 2 and len(portal.rows("mds-trips")) == 1


@pytest.mark.parametrize("columns", [None, ["trip_id", "provider_name"]])
def test_a_socrata_block_whose_records_all_lack_the_row_identifier_says_so(columns: Any) -> None:
    """Records without the row identifier (a field named otherwise) are each one of the portal's
    Errors, which give no reason: the stage parked the block with "all 3 records were rejected:
    no reason given"."""
    from sluicegate import socrata
    from sluicegate.exceptions import DataError

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    records = [{"tripId": str(i), "provider_name": "lime"} for i in range(3)]
    with PortalDouble() as portal:
        config = {"url": portal.url, "dataset": "mds-trips", "batch": 2, "columns": columns}
        with pytest.raises(
            DataError, match="none of the 3 records has a trip_id, the row identifier of dataset"
        ):
            socrata.upsert(block, iter(records), config)  # type: ignore[arg-type]
        records[1]["trip_id"] = "t"
        counts = socrata.upsert(block, iter(records), config)  # type: ignore[arg-type]
        assert counts["messages"] == [
            "2 of the 3 records have no trip_id, the row identifier of dataset mds-trips, which the portal"
            " rejects: give every record a trip_id field, then rerun with --force"
        ]
        assert (counts["total"], counts["processed"], counts["errors"]) == (3, 1, 2)
        assert len(portal.rows("mds-trips")) == 1


@pytest.mark.parametrize("batch", [0, "0", -1, "x", 2.5])
def test_a_socrata_batch_that_is_not_a_positive_whole_number_is_refused_before_any_post(
    portal: PortalDouble, batch: object
) -> None:
    """`batch = 0` posted nothing and returned a total of 0: the publish stage recorded that the
    block had no data, and its records never reached the portal."""
    from sluicegate import socrata
    from sluicegate.exceptions import ConfigError

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    records = [{"trip_id": str(i)} for i in range(5)]
    config = {"url": portal.url, "dataset": "mds-trips"}
    with pytest.raises(
        ConfigError, match=r"sluicegate\.socrata:upsert for lime: batch: .* (too small|not a whole)"
    ):
        socrata.upsert(block, iter(records), {**config, "batch": batch})  # type: ignore[arg-type]
    assert portal.upserts() == []
    counts = socrata.upsert(block, iter(records), {**config, "batch": 2})  # type: ignore[arg-type]
    assert counts["total"] == 5 and [len(c.rows or []) for c in portal.upserts()] == [2, 2, 1]


TRIP_ID_METADATA = {"id": "d", "rowIdentifierColumnId": 7, "columns": [{"id": 7, "fieldName": "trip_id"}]}


class _Answering(HttpDouble):
    """A server that answers every request with one fixed response, and Socrata's metadata
    request (``/api/views/...``) with ``views`` (a dataset whose row identifier is trip_id)."""

    def __init__(self, response: Response, views: Response | None = None) -> None:
        super().__init__()
        self.response = response
        self.views = views or Response(status=200, body=TRIP_ID_METADATA)

    def handle(self, request: Request) -> Response:
        return self.views if request.path.startswith("/api/views/") else self.response


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (Response(status=200, body={}), "without upsert counts"),
        (Response(status=200, body={"message": "Accepted"}), "without upsert counts"),
        (Response(status=200, body={"Rows Created": None, "Errors": 0}), "without upsert counts"),
        (
            Response(status=301, body={"moved": True}, headers={"Location": "https://portal.test/"}),
            r"HTTP 301, a redirect to https://portal\.test/",
        ),
    ],
    ids=["empty", "not-soda", "count-null", "redirect"],
)
def test_a_socrata_answer_without_upsert_counts_is_not_taken_for_a_publish(
    response: Response, message: str
) -> None:
    """A portal (or a proxy before it) that answered 200 ``{}``, a JSON redirect, or counts of
    null: the first two returned ``processed`` 0 and the stage recorded the block published
    ("done") although no row was stored; the third parked it with a bare TypeError."""
    from sluicegate import socrata
    from sluicegate.exceptions import TerminalError

    block = type("Block", (), {"key_value": "lime", "task": "trips"})()
    records = [{"trip_id": str(i)} for i in range(3)]
    with _Answering(response) as server, pytest.raises(TerminalError, match=message) as caught:
        socrata.upsert(block, iter(records), {"url": server.url, "dataset": "mds-trips"})  # type: ignore[arg-type]
    assert "/resource/mds-trips.json" in str(caught.value)


class _Pager(HttpDouble):
    """An MDS /trips API whose page ``n`` (``?page=n``) serves ``pages(n)`` and always links to n + 1
    while ``pages(n + 1)`` is not None; it gives up with 500 after 60 requests (never hangs a test)."""

    def __init__(self, pages: Any) -> None:
        super().__init__()
        self.pages = pages

    def handle(self, request: Request) -> Response:
        if len(self.records) >= 150:
            return Response(status=500, body={"error_description": "the test's pager gave up"})
        page = int(request.query.get("page", "1"))
        following = f"{self.url}/p/trips?page={page + 1}" if self.pages(page + 1) is not None else None
        return Response(status=200, body={"data": {"trips": self.pages(page)}, "links": {"next": following}})


@pytest.mark.parametrize(
    ("pages", "expected"),
    [
        # offset paging while trips arrive: a trip served again on the next page is one trip
        (lambda n: {1: ["a", "b"], 2: ["b", "c"], 3: ["c"]}.get(n), ["a", "b", "c"]),
        # a provider that ignores ?page= and always links to the next one: the first page for ever
        (lambda n: ["a", "b"], "served no new trip"),
        # empty pages, each linking to another
        (lambda n: ["a"] if n == 1 else [], "served no new trip"),
        # a quiet night paged by the hour: many empty pages, then trips again, then the end
        (lambda n: {1: ["a"], 40: ["b"]}.get(n, []) if n <= 40 else None, ["a", "b"]),
        # trip ids that are numbers: the same, served twice, or the first page for ever
        (lambda n: {1: [1, 2], 2: [2, 3], 3: [3]}.get(n), [1, 2, 3]),
        (lambda n: [1, 2], "served no new trip"),
    ],
    ids=["duplicates", "page-ignored", "empty-for-ever", "quiet-night", "numbers", "numbers-for-ever"],
)
def test_mds_paging_that_serves_no_new_trip_ends_and_a_trip_served_twice_is_one(
    pages: Any, expected: Any
) -> None:
    """Pages whose links.next were all new URLs but which served the trips already served (or
    none) kept the extract reading for ever: no deadline or SIGTERM ended it (the pipeline
    checks them between chunks, and no chunk came), and its lease was renewed all along. A
    trip served on two pages was written twice into the block's artifact; and still was, and the
    paging never ended, where the provider's trip ids were numbers."""
    from sluicegate import mds
    from sluicegate.exceptions import TerminalError
    from sluicegate.timeblocks import Block, StageBlock

    block = Block(start=FIRST, end=FIRST + H, zone="UTC")
    stage_block = StageBlock(task="trips", stage="extract", key="provider", key_value="p", block=block)
    served = lambda n: None if pages(n) is None else [{"trip_id": t} for t in pages(n)]  # noqa: E731
    with _Pager(served) as server:
        config = {"url": f"{server.url}/p", "retries": 0}
        if isinstance(expected, list):
            assert [t["trip_id"] for t in mds.trips(stage_block, config)] == expected
        else:
            with pytest.raises(TerminalError, match=expected):
                list(mds.trips(stage_block, config))
            assert len(server.records) <= mds.IDLE_PAGES + 5


def test_mds_a_trip_served_again_changed_on_a_later_page_is_yielded_again_to_be_loaded_last() -> None:
    """A provider that corrected a trip between two pages (offset paging while trips change)
    served it again changed: only the first, stale copy was yielded, and loaded."""
    from sluicegate import mds

    block = _first_hour()
    trip = lambda t, d: {"trip_id": t, "trip_duration": d}  # noqa: E731
    pages = {1: [trip("a", 1), trip("b", 60)], 2: [trip("b", 60), trip("c", 3)], 3: [trip("b", 75)]}
    with _Pager(pages.get) as server:
        served = [(t["trip_id"], t["trip_duration"]) for t in mds.trips(block, {"url": f"{server.url}/p"})]
    assert served == [("a", 1), ("b", 60), ("c", 3), ("b", 75)]


@pytest.mark.parametrize(
    ("following", "expected"),
    [("/p/trips?page=2", ["a", "b"]), ("trips?page=2", ["a", "b"]), ("ftp://x/trips", "not an http")],
)
def test_an_mds_links_next_relative_to_its_page_is_followed_and_one_not_over_http_is_refused(
    following: str, expected: Any
) -> None:
    """A relative links.next was asked for as it stood: "missing an 'http://' or 'https://'
    protocol", a network error retried with backoff until the stage was parked, though the page
    it names is there; a link to ftp: was retried the same way."""
    from sluicegate import mds
    from sluicegate.exceptions import TerminalError

    block = _first_hour()

    class Relative(HttpDouble):
        def handle(self, request: Request) -> Response:
            if request.query.get("page") == "2":
                return Response(status=200, body={"data": {"trips": [{"trip_id": "b"}]}, "links": {}})
            return Response(
                status=200, body={"data": {"trips": [{"trip_id": "a"}]}, "links": {"next": following}}
            )

    with Relative() as server:
        config = {"url": f"{server.url}/p", "token": "s3cr3t", "retries": 0}
        if isinstance(expected, list):
            assert [t["trip_id"] for t in mds.trips(block, config)] == expected
        else:
            with pytest.raises(TerminalError, match=expected):
                list(mds.trips(block, config))


@pytest.mark.parametrize(
    ("status", "callable_", "advice"),
    [
        (401, "mds", "the server refused the credentials: check token, then rerun with --incomplete-only"),
        (403, "socrata", "check app_token, username and password, then rerun with --incomplete-only"),
        (404, "mds", "nothing is there: check url, the API root, then rerun"),
        (404, "socrata", "nothing is there: check url and dataset, then rerun"),
        (400, "mds", "fix what the server names, then rerun with --incomplete-only"),
    ],
)
def test_a_refusal_of_the_api_says_what_to_check(status: int, callable_: str, advice: str) -> None:
    """A token that expired mid-run parked the stage with "HTTP 401 (the token expired)": no word
    of the setting to fix, nor of how to run the parked block again."""
    from sluicegate import mds, socrata
    from sluicegate.exceptions import TerminalError
    from sluicegate.timeblocks import Block, StageBlock

    block = StageBlock(
        task="trips",
        stage="x",
        key="provider",
        key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )
    answer = Response(
        status=status, body={"error": "no", "error_description": "the token expired", "message": "no"}
    )
    with _Answering(answer) as server, pytest.raises(TerminalError, match=re.escape(advice)) as caught:
        if callable_ == "mds":
            list(mds.trips(block, {"url": f"{server.url}/p", "token": "s3cr3t"}))
        else:
            socrata.upsert(block, iter([{"a": 1}]), {"url": server.url, "dataset": "d", "password": "s3cr3t"})
    assert f"HTTP {status}" in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_an_mds_next_page_that_is_gone_is_retried_from_the_first_page_and_says_so() -> None:
    """A links.next answering 404 (a cursor that expired mid-block) parked the stage with "nothing
    is there: check url, the API root": url was right, and reading the block again would work."""
    from sluicegate import mds
    from sluicegate.exceptions import TransientError

    block = _first_hour()

    class Expiring(HttpDouble):
        def handle(self, request: Request) -> Response:
            if request.query.get("page") == "2":
                return Response(status=404, body={"error_description": "cursor expired"})
            body = {"data": {"trips": [{"trip_id": "a"}]}, "links": {"next": f"{self.url}/p/trips?page=2"}}
            return Response(status=200, body=body)

    with Expiring() as server, pytest.raises(TransientError) as caught:
        url = server.url
        list(mds.trips(block, {"url": f"{url}/p", "retries": 0}))
    assert str(caught.value) == (
        f"{url}/p/trips?page=2: HTTP 404 (cursor expired), though the page before linked to it"
        " (its cursor expired?): the block is read again from its first page; if it goes on, ask the"
        " provider to fix its paging; will retry"
    )


def test_an_mds_links_next_on_another_server_gets_no_token() -> None:
    """A links.next on another host (or http where url is https) was followed with the bearer
    token, which the client refuses to send on a redirect for that very reason."""
    from sluicegate import mds
    from sluicegate.exceptions import TerminalError

    block = _first_hour()
    last = Response(status=200, body={"data": {"trips": [{"trip_id": "b"}]}, "links": {"next": None}})
    with _Answering(last) as other:
        first = {"data": {"trips": [{"trip_id": "a"}]}, "links": {"next": f"{other.url}/p/trips?page=2"}}
        with _Answering(Response(status=200, body=first)) as server:
            with pytest.raises(TerminalError, match="on another server than url"):
                list(mds.trips(block, {"url": f"{server.url}/p", "token": "s3cr3t"}))
            assert [t["trip_id"] for t in mds.trips(block, {"url": f"{server.url}/p"})] == ["a", "b"]
        assert [r.headers.get("authorization") for r in other.records] == [None]


@pytest.mark.pg
def test_two_processes_over_one_range_run_each_block_stage_once(
    tmp_path: Path, pg_url: str, ledger_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    # batch_size 1: many claims, to race
    root = write(tmp_path, pg_url, mds, portal, ledger=ledger_url, task_extra="batch_size = 1")
    args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-3-2-0", "--interval", "24"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    for provider in ("lime", "bird"):
        for h in range(24):
            block = dt.datetime(2020, 3, 1, 6, tzinfo=UTC) + h * H
            assert len(mds.requests(provider, block)) == mds.page_count(provider, block), (provider, h)
    writes = portal.writes("mds-trips")
    assert len(writes) == 2 * 24 * 5 and set(writes.values()) == {1}
    rows = ledger(ledger_url)
    assert len(rows) == 2 * 24 * 3
    assert {(v[0], v[1]) for v in rows.values()} == {("done", 0)}


@pytest.mark.pg
def test_a_sigkill_mid_stage_leaves_no_artifact_and_the_stage_is_reclaimed_after_its_lease(
    tmp_path: Path, pg_url: str, ledger_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    fault = '[testing]\nfault = "mid_write"\n'
    root = write(tmp_path, pg_url, mds, portal, ledger=ledger_url, lease="3s", testing=fault)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    args = [
        SLUICEGATE,
        "-C",
        str(root),
        "blocks",
        "trips",
        "--time-max",
        "2020-3-1-1",
        "--key",
        "provider=lime",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    fault = root / ".fault-mid_write"
    deadline = time.monotonic() + 60
    while not fault.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach mid_write"
        time.sleep(0.05)
    os.kill(int(fault.read_text()), signal.SIGKILL)
    proc.wait(timeout=30)
    fault.unlink()
    assert list((tmp_path / "out").rglob("trips.jsonl")) == []  # nothing visible under the real name
    assert ledger(ledger_url)[("lime", FIRST, "extract")][0] == "running"
    write(tmp_path, pg_url, mds, portal, ledger=ledger_url, lease="3s")  # no fault any more
    early = run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime", "--json")
    assert json.loads(early.output)[0]["stages"] == []  # still under the dead run's lease
    time.sleep(3.5)
    result = run(root, "--time-max", "2020-3-1-1", "--key", "provider=lime")
    assert result.exit_code == 0, result.output
    rows = ledger(ledger_url)
    assert rows[("lime", FIRST, "extract")][:3] == ("done", 1, 5)  # the expired lease counted an attempt
    assert rows[("lime", FIRST, "publish")][0] == "done"
    [artifact] = (tmp_path / "out").rglob("trips.jsonl")
    assert list(read_records(artifact.read_bytes())) == generate_trips("lime", FIRST, 5)


@pytest.mark.pg
def test_a_stage_whose_lease_ran_out_is_taken_over_and_the_late_worker_records_nothing(
    ledger_url: str,
) -> None:
    """Two workers on one ledger: a held stage is not claimed twice; once its lease ran out another
    worker takes its rows over, one at a time (an attempt only for a row the dead claim held alone
    from the start: not lime, the last one left of the batch, which was charged before), and the
    first one's commit, failure, renewal and release are fenced."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    stages = ["extract", "load", "publish"]
    with Ledger(ledger_url) as one, Ledger(ledger_url) as two:
        one.ensure_schema()
        assert one.blocks.ensure("trips", ["lime", "bird"], [block], stages) == 6

        def claim(led: Ledger, lease: float, *, taken: bool = False) -> list[Any]:
            return led.blocks.claim(
                where, stages=stages, zone="US/Central", grain="hour", limit=1 if taken else 10, lease=lease,
                taken=taken,
            )  # fmt: skip

        first = claim(one, 1)
        assert [(c.key_value, c.stage, c.attempts) for c in first] == [
            ("bird", "extract", 0),
            ("lime", "extract", 0),
        ]
        assert claim(two, 60) == []  # held (their later stages wait for them)
        assert one.blocks.renew(first[0].token, lease=1) == 2
        time.sleep(1.3)
        assert claim(two, 60) == []  # nothing pending: the dead claim's rows are taken over on their own
        second = [*claim(two, 60, taken=True), *claim(two, 60, taken=True)]
        assert claim(two, 60, taken=True) == []
        # one row at a time, neither counted: bird's death was lime's as much as its own, and lime's
        assert [(c.id, c.attempts) for c in second] == [(first[0].id, 0), (first[1].id, 0)]
        late = StageResult(claim=first[0], status="done", total=5, processed=5)
        assert not one.blocks.commit(late)
        assert not one.blocks.fail(first[1], error="late", terminal=True, max_attempts=3, backoff=0)
        assert one.blocks.renew(first[0].token, lease=60) == 0
        assert one.blocks.release(first[0].token) == 0
        assert two.blocks.commit(StageResult(claim=second[0], status="no_data"))
        assert two.blocks.commit(StageResult(claim=second[1], status="done", total=3, processed=3))
        rows = {(r["key_value"], r["stage"]): (r["status"], r["attempts"]) for r in one.blocks.rows(where)}
    assert rows == {
        ("bird", "extract"): ("no_data", 0),
        ("bird", "load"): ("no_data", 0),  # no data: the block's later stages have nothing to do
        ("bird", "publish"): ("no_data", 0),
        ("lime", "extract"): ("done", 0),
        ("lime", "load"): ("pending", 0),
        ("lime", "publish"): ("pending", 0),
    }


def test_a_claim_that_found_one_row_is_counted_when_its_worker_dies(ledger_url: str) -> None:
    """A claim of up to 50 rows that found one holds it alone from the start (a lone token): its
    worker's death is that row's, and taking it over counts an attempt, as after a claim of one."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    with Ledger(ledger_url) as led:
        led.ensure_schema()
        led.blocks.ensure("trips", ["lime"], [block], ["extract"])
        kwargs: dict[str, Any] = {"stages": ["extract"], "zone": "US/Central", "grain": "hour"}
        [dead] = led.blocks.claim(where, limit=50, lease=0.2, **kwargs)
        time.sleep(0.4)
        [taken] = led.blocks.claim(where, limit=1, lease=60, taken=True, **kwargs)
        assert (dead.attempts, taken.attempts) == (0, 1)
        assert led.blocks.commit(StageResult(claim=taken, status="done", total=1, processed=1))
        assert not led.blocks.commit(StageResult(claim=dead, status="done", total=1, processed=1))


def test_a_claim_run_again_after_a_rollback_keeps_the_token_its_rows_were_taken_under(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that found one row put it under a lone token, the server rolled the transaction
    back (a deadlock; a lost connection) and the claim ran again, finding two: the first try's
    lone token stayed, on the claims (PostgreSQL: none could commit) or on the rows (MariaDB: a
    death of the batch charged each)."""
    import uuid

    from sluicegate.exceptions import LedgerError

    blocks = blocks_between(FIRST, FIRST + 2 * H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + 2 * H)
    failed: list[str] = []
    sleep = time.sleep
    with Ledger(ledger_url) as led:
        led.ensure_schema()
        led.blocks.ensure("trips", ["lime"], blocks[:1], ["extract"])

        def rolled_back(*args: Any, **kwargs: Any) -> None:
            if not failed:
                failed.append("once")
                raise LedgerError("rolled back") from RuntimeError("deadlock detected")

        def meanwhile(seconds: float) -> None:  # the retry's pause: another block is asked for
            if failed == ["once"]:
                failed.append("ensured")
                led.blocks.ensure("trips", ["lime"], blocks[1:], ["extract"])
            sleep(seconds)

        store = led.blocks
        lone, claim_take = store.lone, store.claim_take
        monkeypatch.setattr(store, "lone", lambda *a, **k: (rolled_back(), lone(*a, **k)))
        monkeypatch.setattr(store, "claim_take", lambda *a, **k: (rolled_back(), claim_take(*a, **k)))
        monkeypatch.setattr(time, "sleep", meanwhile)
        claims = store.claim(where, stages=["extract"], zone="US/Central", grain="hour", limit=10, lease=60)
        monkeypatch.setattr(time, "sleep", sleep)
        assert failed == ["once", "ensured"] and len(claims) == 2
        assert uuid.UUID(claims[0].token).version == 4
        assert all(store.commit(StageResult(claim=c, status="done", total=1, processed=1)) for c in claims)


def test_a_stage_parked_for_its_expired_leases_counts_no_new_attempt(ledger_url: str) -> None:
    """Each take-over of an expired lease counts an attempt; the claim that finds them used up
    parks the stage without counting one more (fail's counted), on PostgreSQL and MariaDB."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    with Ledger(ledger_url) as led:
        led.ensure_schema()
        led.blocks.ensure("trips", ["lime"], [block], ["extract"])
        for attempts in range(3):  # a run that dies holding it, three times
            [claim] = led.blocks.claim(
                where,
                stages=["extract"],
                zone="US/Central",
                grain="hour",
                limit=1,
                lease=0.2,
                taken=attempts > 0,
            )
            assert claim.attempts == attempts
            time.sleep(0.4)
        [claim] = led.blocks.claim(
            where, stages=["extract"], zone="US/Central", grain="hour", limit=1, lease=60, taken=True
        )
        assert claim.attempts == 3
        assert led.blocks.fail(
            claim, error="gave up", terminal=True, max_attempts=3, backoff=0, counted=False
        )
        rows = led.blocks.rows(where)
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", 3)]


def test_a_late_worker_puts_no_file_in_place_over_the_new_owners(ledger_url: str) -> None:
    """A worker stalled past its lease while another re-extracted the block (with rows that arrived
    meanwhile) and committed: resumed, it renamed its older artifact over the newer one (its
    commit then lost), so the ledger's checksum named bytes no longer there. The files are now
    placed in the transaction that locks the rows still held."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    with Ledger(ledger_url) as one, Ledger(ledger_url) as two:
        one.ensure_schema()
        one.blocks.ensure("trips", ["lime"], [block], ["extract"])
        [late] = one.blocks.claim(
            where, stages=["extract"], zone="US/Central", grain="hour", limit=1, lease=1
        )
        time.sleep(1.3)
        [owner] = two.blocks.claim(
            where, stages=["extract"], zone="US/Central", grain="hour", limit=1, lease=60, taken=True
        )
        placed: list[tuple[str, int]] = []

        def commit(led: Ledger, held: Any, rows: int) -> list[bool]:
            unit = WorkUnit(
                key="lime", slice=Slice(), path="extract/lime.jsonl", token=held.token, handle=held
            )
            outcome = Outcome(
                unit=unit, path=unit.path, rows=rows, nbytes=rows, checksum=str(rows), published=True
            )
            recorder = StageRecorder(SimpleNamespace(stages=()), led.blocks, 60, TaskSummary(task="trips"))  # type: ignore[arg-type]
            return recorder.commit([outcome], lambda outs: placed.extend((o.path, o.rows) for o in outs))

        assert commit(two, owner, 4) == [True]
        assert commit(one, late, 3) == [False]
        rows = one.blocks.list_rows("trips", status=None, limit=10, offset=0)
    assert placed == [("extract/lime.jsonl", 4)]  # the late worker's 3 rows were never put in place
    assert [(r["status"], r["records_total"]) for r in rows] == [("done", 4)]


@pytest.mark.pg
def test_force_resets_no_block_with_a_stage_running_under_a_live_lease(ledger_url: str) -> None:
    """``--force`` from extract leaves alone a block whose load another worker holds (it would
    commit the old artifact as done over the new extract) and resets the others; ``busy`` counts
    the blocks left alone."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    where = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    stages = ["extract", "load", "publish"]
    with Ledger(ledger_url) as led:
        led.ensure_schema()
        led.blocks.ensure("trips", ["lime", "bird"], [block], stages)
        claim = led.blocks.claim(where, stages=stages, zone="US/Central", grain="hour", limit=10, lease=60)
        for c in claim:
            assert led.blocks.commit(StageResult(claim=c, status="done", total=1, processed=1))
        [load] = [c for c in led.blocks.claim(where, stages=["load"], zone="US/Central", grain="hour",
                                              limit=1, lease=60)]  # fmt: skip
        assert led.blocks.reset(where, position=0) == 3  # the other block's three stages
        assert led.blocks.busy(where, position=0) == 1
        rows = {(r["key_value"], r["stage"]): r["status"] for r in led.blocks.rows(where)}
        held = load.key_value
        other = "bird" if held == "lime" else "lime"
        assert rows == {
            (held, "extract"): "done",
            (held, "load"): "running",
            (held, "publish"): "pending",
            (other, "extract"): "pending",
            (other, "load"): "pending",
            (other, "publish"): "pending",
        }
        assert led.blocks.commit(StageResult(claim=load, status="done", total=1, processed=1))
        assert led.blocks.busy(where, position=0) == 0
        assert (
            led.blocks.reset(where, position=1) == 2
        )  # the held block's load and publish (the other waits on extract)


@pytest.mark.pg
def test_range_calls_see_only_the_key_values_the_task_has_now(ledger_url: str) -> None:
    """Claim, reset, busy, unpark and rows are about the key values given (those the task has now,
    matched exactly: a quote and a backslash too); the rows of a removed key value stay as they are."""
    [block] = blocks_between(FIRST, FIRST + H, grain="hour", zone="US/Central")
    odd = 'o"d\\d'
    everyone = RangeQuery(task="trips", key_values=None, time_min=FIRST, time_max=FIRST + H)
    now = RangeQuery(task="trips", key_values=("lime", odd), time_min=FIRST, time_max=FIRST + H)
    nobody = RangeQuery(task="trips", key_values=(), time_min=FIRST, time_max=FIRST + H)
    stages = ["extract", "load", "publish"]
    with Ledger(ledger_url) as led:
        led.ensure_schema()
        led.blocks.ensure("trips", ["lime", "bird", odd], [block], stages)

        def claim(where: RangeQuery) -> list[Any]:
            return led.blocks.claim(where, stages=stages, zone="US/Central", grain="hour", limit=10, lease=60)

        assert claim(nobody) == []
        held = claim(now)
        assert sorted(c.key_value for c in held) == ["lime", odd]
        [bird] = claim(everyone)  # as a run from before bird was removed would
        assert led.blocks.fail(bird, error="gone", terminal=True, max_attempts=3, backoff=0)
        assert led.blocks.unpark(now, stages=stages) == 0  # bird's parked extract is not the task's now
        assert led.blocks.busy(now, position=0) == 2 and led.blocks.busy(nobody, position=0) == 0
        assert {r["key_value"] for r in led.blocks.rows(now)} == {"lime", odd}
        assert {r["key_value"] for r in led.blocks.rows(everyone)} == {"lime", "bird", odd}
        for c in held:
            assert led.blocks.commit(StageResult(claim=c, status="done", total=1, processed=1))
        assert led.blocks.reset(now, position=0) == 6  # lime's and odd's stages, not bird's
        assert led.blocks.unpark(everyone, stages=stages) == 1  # bird's, when every key value is asked for
        statuses = {(r["key_value"], r["stage"]): r["status"] for r in led.blocks.rows(everyone)}
    assert statuses[("bird", "extract")] == "pending" and set(statuses.values()) == {"pending"}


@pytest.mark.pg
def test_fernet_config_works_a_wrong_key_exits_2_and_nothing_secret_is_logged(
    tmp_path: Path, pg_url: str, portal: PortalDouble
) -> None:
    token, key = "tok-Sekr1t-for-lime", generate_key()
    with MdsDouble([MdsProvider(name="lime", token=token, trips_per_block=3)]) as mds:
        keys = f'[keys.lime]\nurl = "{mds.base_url("lime")}"\ntoken = "{encrypt(token, key)}"\n'
        root = write(tmp_path, pg_url, mds, portal, keys=keys, extract_extra="encrypt = true")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        args = [SLUICEGATE, "-C", str(root), "-v", "blocks", "trips", "--time-max", "2020-3-1-1", "--json"]
        ok = subprocess.run(
            args, capture_output=True, text=True, env={**env, "ATD_MDS_FERNET_KEY": key}, timeout=120
        )
        assert ok.returncode == 0, ok.stderr
        assert "DEBUG" in ok.stderr  # the run did log at DEBUG
        for secret in (token, key):
            assert secret not in ok.stdout and secret not in ok.stderr
        assert all(r.headers.get("authorization") == f"Bearer {token}" for r in mds.requests("lime"))
        quiet = [a for a in args if a != "-v"]  # -v prints tracebacks by design
        wrong = subprocess.run(
            quiet,
            capture_output=True,
            text=True,
            env={**env, "SLUICEGATE_FERNET_KEY": generate_key()},
            timeout=120,
        )
    assert wrong.returncode == 2 and wrong.stdout == ""
    [line] = wrong.stderr.splitlines()
    assert line.startswith("sluicegate: error: ") and "keys.lime.token could not be decrypted" in line
    assert "Traceback" not in wrong.stderr and key not in wrong.stderr


def test_the_mds_example_runs_end_to_end_against_the_doubles(
    tmp_path: Path, mds: MdsDouble, portal: PortalDouble
) -> None:
    folder = tmp_path / "mds"
    init = CliRunner().invoke(main, ["init", str(folder), "--example", "mds"])
    assert init.exit_code == 0, init.output
    toml = folder / "tasks" / "trips" / "task.toml"
    toml.write_text(
        toml.read_text()
        .replace("http://127.0.0.1:8001", mds.url)
        .replace("http://127.0.0.1:8002", portal.url)
    )
    proc = subprocess.run(
        [SLUICEGATE, "-C", str(folder), "blocks", "trips", "--time-max", "2020-3-1-1", "--interval", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "extract 6 done; load 6 done; publish 6 done" in proc.stdout
    import sqlite3

    with sqlite3.connect(folder / "mds.db") as conn:
        assert conn.execute("SELECT count(*) FROM trips").fetchone() == (30,)
    assert len(portal.rows("mds-trips")) == 30
    status = subprocess.run(
        [SLUICEGATE, "-C", str(folder), "status"], capture_output=True, text=True, timeout=60
    )
    assert "trips: blocks, blocks 6, stages extract: 6 done; load: 6 done; publish: 6 done" in status.stdout
    assert collections.Counter(r.path.split("/")[1] for r in mds.requests()) == {"lime": 9, "bird": 9}
    server = Server(folder)
    try:
        page = server.get(
            f"{server.url}/tasks/trips/partitions", params={"state": "done", "limit": 100}
        ).json()
        assert len(page) == 18 and {p["stage"] for p in page} == {"extract", "load", "publish"}
        first = page[0]
        assert (first["block"], first["state"], first["rows"]) == ("2020-02-29T23:00-06:00", "done", 5)
        assert first["path"].startswith("extract/") and first["window_start"].startswith("2020-03-01T04:00")
        html = server.get(f"{server.url}/").text
        assert "extract: 6 done; load: 6 done; publish: 6 done" in html
    finally:
        server.stop()


@pytest.mark.pg
def test_a_late_worker_uploads_no_artifact_over_the_new_owners_on_s3(
    tmp_path: Path,
    pg_url: str,
    mds: MdsDouble,
    portal: PortalDouble,
    seaweed_bucket: tuple[str, str, str, str],
    fault_proxy: Any,
) -> None:
    """On S3 a stage's file was uploaded as soon as it was written, before the ledger transaction
    that checks the claim: a worker stalled past its lease, resumed after the new owner had
    extracted and committed the block, put its older artifact over the owner's. Its upload is now
    conditional (refused where an object is), and only a held claim overwrites."""
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    s3 = (
        f'url = "s3://{bucket}"\nendpoint_url = "{proxy.url}"\n'
        f'access_key_id = "{key}"\nsecret_access_key = "{secret}"'
    )

    def configure(testing: str = "") -> None:
        write(tmp_path, pg_url, mds, portal, lease="3s", testing=testing)
        toml = tmp_path / "sluicegate.toml"
        toml.write_text(toml.read_text().replace(f'url = "{tmp_path / "out"}"', s3))

    configure('[testing]\nfault = "mid_write"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    one_block = ["--time-max", "2020-3-1-1", "--key", "provider=lime"]
    late = subprocess.Popen(
        [SLUICEGATE, "-C", str(tmp_path), "blocks", "trips", *one_block],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    marker = tmp_path / ".fault-mid_write"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert late.poll() is None and time.monotonic() < deadline, late.communicate()
        time.sleep(0.05)
    late.send_signal(signal.SIGSTOP)
    configure()
    time.sleep(3.5)  # the stalled worker's lease runs out
    owner = run(tmp_path, *one_block)
    assert owner.exit_code == 0, owner.output
    marker.unlink()
    late.send_signal(signal.SIGCONT)
    late.communicate(timeout=120)
    artifact = [e for e in proxy.log if e.method == "PUT" and e.path.endswith("/trips.jsonl")]
    assert [e.status for e in artifact if e.status == 200] == [200], [(e.path, e.status) for e in artifact]


@pytest.mark.pg
def test_a_changed_artifact_is_uploaded_once_on_s3(
    tmp_path: Path, pg_url: str, mds: MdsDouble, portal: PortalDouble, s3_bucket: tuple[str, str],
    fault_proxy: Any,
) -> None:  # fmt: skip
    """The blocks ledger keeps no ETag, so a re-extracted block whose artifact changed was first
    uploaded on condition that no object was there (refused: its own earlier file is), then
    again in the commit: every changed artifact crossed the network twice. It goes once now."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(endpoint)
    write(tmp_path, pg_url, mds, portal)
    toml = tmp_path / "sluicegate.toml"
    s3 = f'url = "s3://{bucket}"\nendpoint_url = "{proxy.url}"'
    toml.write_text(toml.read_text().replace(f'url = "{tmp_path / "out"}"', s3))
    one_block = ["--time-max", "2020-3-1-1", "--key", "provider=lime", "--stage", "extract"]
    assert run(tmp_path, *one_block).exit_code == 0
    mds.set_trip_count("lime", FIRST, 7)
    proxy.clear_log()
    again = run(tmp_path, *one_block, "--force")
    assert again.exit_code == 0, again.output
    puts = [e for e in proxy.log if e.method == "PUT" and e.path.endswith("/trips.jsonl")]
    assert [e.status for e in puts] == [200], [(e.path, e.status) for e in puts]
    s3_client = boto3.client("s3", endpoint_url=endpoint)
    [obj] = s3_client.list_objects_v2(Bucket=bucket, Prefix="extract/")["Contents"]
    body = s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    assert len(list(read_records(body, where="trips.jsonl"))) == 7


class _Raw:
    """A raw HTTP server that answers each request with ``answer(wfile)`` (what the doubles cannot
    send: a body that drips, a broken encoding)."""

    def __init__(self, answer: Any) -> None:
        import socketserver

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.rfile.read(length)  # a body left unread: closing resets, losing the answer
                with contextlib.suppress(OSError):
                    answer(self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _drip(wfile: Any) -> None:
    """200 with a long body sent a byte every 0.1 s, for 15 s at most: never idle for a read timeout."""
    wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    wfile.flush()
    for _ in range(150):
        wfile.write(b" ")
        wfile.flush()
        time.sleep(0.1)


def _drip_headers(wfile: Any) -> None:
    """A status line, then a header sent a byte every 0.1 s for 15 s, then a 200's end."""
    wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    wfile.flush()
    for _ in range(150):
        wfile.write(b"a")
        wfile.flush()
        time.sleep(0.1)
    wfile.write(b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


@pytest.mark.parametrize("drip", [_drip, _drip_headers], ids=["body", "headers"])
@pytest.mark.parametrize("callable_", ["mds", "socrata"])
def test_an_answer_that_drips_for_longer_than_the_timeout_fails_as_transient(
    callable_: str, drip: Callable[[Any], None]
) -> None:
    """A server sending a byte a second is never idle for a whole timeout (which httpx counts per
    read): the request waited as long as the server kept sending, and the unit hung. The body's
    time was bounded first; the status line and headers waited on (15 s here, for ever at worst)."""
    from sluicegate import mds, socrata
    from sluicegate.exceptions import TransientError
    from sluicegate.timeblocks import Block, StageBlock

    block = StageBlock(
        task="trips", stage="x", key="provider", key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )  # fmt: skip
    started = time.monotonic()
    with _Raw(drip) as server, pytest.raises(TransientError) as caught:
        if callable_ == "mds":
            list(mds.trips(block, {"url": f"{server.url}/p?token=s3cr3t", "timeout": 0.5, "retries": 0}))
        else:
            config = {"url": server.url, "dataset": "d", "row_identifier": "a", "timeout": 0.5}
            socrata.upsert(block, iter([{"a": 1}]), config)
    assert time.monotonic() - started < 6
    assert re.fullmatch(
        rf"{re.escape(server.url)}/\S+: ReadTimeout: the answer did not arrive whole within 2 s \(4 times"
        r" the timeout\); will retry",
        str(caught.value),
    ), caught.value
    assert "s3cr3t" not in str(caught.value)


class _SlowPager(_Pager):
    """A _Pager that takes ``pause`` seconds (50 ms) a page."""

    def __init__(self, pages: Any, pause: float = 0.05) -> None:
        super().__init__(pages)
        self.pause = pause

    def handle(self, request: Request) -> Response:
        time.sleep(self.pause)
        return super().handle(request)


@pytest.mark.pg
def test_a_sigterm_stops_an_mds_extract_that_pages_new_trips_for_ever_between_pages(
    tmp_path: Path, pg_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    """A provider that served new trips on every page, linking to the next, kept the extract reading
    after SIGTERM (the pipeline checks between chunks of 1000 records, and the stop only between
    batches) until the provider gave up: the block failed, an attempt spent, instead of released."""
    with _SlowPager(lambda n: [{"trip_id": f"t{n}", "provider_name": "lime"}]) as server:
        keys = f'[keys.lime]\nurl = "{server.url}/p"\n'
        root = write(tmp_path, pg_url, mds, portal, keys=keys)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-3-1-1"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        while len(server.records) < 5:
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not page"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        pages = len(server.records)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert pages < 40, pages
    status, attempts, *_, error, artifact = ledger(pg_url)[("lime", FIRST, "extract")]
    assert (status, attempts, error, artifact) == ("pending", 0, None, None)
    assert list((tmp_path / "out").rglob("trips.jsonl")) == []


@pytest.mark.pg
def test_an_mds_extract_slower_than_its_lease_keeps_its_claim(
    tmp_path: Path, pg_url: str, mds: MdsDouble, portal: PortalDouble
) -> None:
    """A provider slow to page (429s waited out, slow pages) held an extract longer than its lease
    without 1000 records, the only point the lease was renewed at: another run took the block
    over as abandoned, paged the provider again, and charged the live run's block an attempt."""
    with _SlowPager(lambda n: [{"trip_id": f"t{n}"}] if n <= 40 else None, pause=0.2) as server:
        root = write(tmp_path, pg_url, mds, portal, keys=f'[keys.lime]\nurl = "{server.url}/p"\n', lease="1s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-3-1-1", "--no-load"]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        while len(server.records) < 10:  # 2 s into the 8 s extract, past its lease
            assert first.poll() is None and time.monotonic() < deadline, "the run did not page"
            time.sleep(0.02)
        second = subprocess.run(args, capture_output=True, env=env, timeout=60)
        _, err = first.communicate(timeout=60)
        asked = [r for r in server.records if "start_time" in r.query]
    assert first.returncode == 0 and second.returncode == 0, (err.decode(), second.stderr.decode())
    assert len(asked) == 1, "another run extracted the block again"
    status, attempts, total, *_ = ledger(pg_url)[("lime", FIRST, "extract")]
    assert (status, attempts, total) == ("done", 0, 40)


@pytest.mark.pg
def test_a_publish_slower_than_its_lease_keeps_its_claim(tmp_path: Path, pg_url: str) -> None:
    """A load or publish renewed its claims only before each block: one block's publish (a
    portal slow to answer) that outlasted the lease was taken over as abandoned by another run,
    published twice, and charged the live run's block an attempt."""
    (tmp_path / "tasks" / "trips").mkdir(parents=True)
    (tmp_path / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        '[defaults]\nlease = "1s"\nbackoff = "0s"\n'
    )
    published = tmp_path / "published.log"
    (tmp_path / "slow_feed.py").write_text(
        "import time\n"
        "def trips(block, config):\n    return [{'trip_id': 'a'}]\n"
        "def publish(block, records, config):\n"
        f"    with open({str(published)!r}, 'a') as log:\n        log.write(block.block.start.isoformat() + '\\n')\n"
        "    time.sleep(5)\n    return {'total': len(list(records))}\n"
    )
    (tmp_path / "tasks" / "trips" / "task.toml").write_text(
        'kind = "blocks"\nzone = "UTC"\nstages = ["extract", "publish"]\n'
        '[extract]\ncallable = "slow_feed:trips"\npath = "{stage}/{block:%Y%m%d%H}.jsonl"\n'
        '[publish]\ncallable = "slow_feed:publish"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    args = [SLUICEGATE, "-C", str(tmp_path), "blocks", "trips", "--time-max", "2020-3-1-1"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not published.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the run did not publish"
        time.sleep(0.02)
    time.sleep(1.5)  # past the lease, well inside the 5 s publish
    second = subprocess.run(args, capture_output=True, env=env, timeout=60)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (err.decode(), second.stderr.decode())
    assert len(published.read_text().splitlines()) == 1, "another run published the block again"
    [(status, attempts)] = [r[:2] for (_, _, stage), r in ledger(pg_url).items() if stage == "publish"]
    assert (status, attempts) == ("done", 0)


@pytest.mark.pg
def test_a_socrata_publish_whose_records_partly_lack_the_row_identifier_says_how_many(
    tmp_path: Path, pg_url: str, portal: PortalDouble
) -> None:
    """Records without the row identifier are each one of the portal's Errors, which give no reason:
    the publish was recorded done with 2 errors and no word of which records or why."""
    (tmp_path / "tasks" / "trips").mkdir(parents=True)
    (tmp_path / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
    )
    (tmp_path / "feed_partly_keyless.py").write_text(
        "def trips(block, config):\n    return [{'trip_id': 'a'}, {'tripId': 'b'}, {'other': 1}]\n"
    )
    (tmp_path / "tasks" / "trips" / "task.toml").write_text(
        'kind = "blocks"\nzone = "UTC"\nstages = ["extract", "publish"]\n'
        '[extract]\ncallable = "feed_partly_keyless:trips"\npath = "{stage}/{block:%Y%m%d%H}.jsonl"\n'
        f'[publish]\ncallable = "sluicegate.socrata:upsert"\n[publish.config]\nurl = "{portal.url}"\n'
        'dataset = "mds-trips"\n'
    )
    result = CliRunner().invoke(main, ["-C", str(tmp_path), "blocks", "trips", "--time-max", "2020-3-1-1"])
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT status, records_total, records_errors, error FROM sluicegate.blocks WHERE stage = 'publish'"
        ).fetchone()
    assert row is not None, (result.output, result.exception)
    assert row[:3] == ("done", 3, 2), result.output
    assert row[3] == (
        "2 of the 3 records have no trip_id, the row identifier of dataset mds-trips, which the portal"
        " rejects: give every record a trip_id field, then rerun with --force"
    )


class _Limited(HttpDouble):
    """An MDS /trips API that answers its first request 429 with ``Retry-After: <after()>``."""

    def __init__(self, after: Any) -> None:
        super().__init__()
        self.after = after

    def handle(self, request: Request) -> Response:
        if not self.records:
            return Response(status=429, body={"error": "slow down"}, headers={"Retry-After": self.after()})
        return Response(status=200, body={"data": {"trips": [{"trip_id": "a"}]}, "links": {"next": None}})


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_an_mds_429_waits_its_retry_after_in_seconds_or_as_a_date(form: str) -> None:
    """A Retry-After given as an HTTP date (as RFC 9110 allows) was taken for no Retry-After: the
    page was asked again after 1 s, then 2, 4 ..., and the retries ran out inside the provider's
    window."""
    import email.utils

    from sluicegate import mds

    block = _first_hour()
    later = lambda: dt.datetime.now(UTC) + dt.timedelta(seconds=4)  # noqa: E731
    after = (
        (lambda: "3") if form == "seconds" else (lambda: email.utils.format_datetime(later(), usegmt=True))
    )
    with _Limited(after) as server:
        assert [t["trip_id"] for t in mds.trips(block, {"url": f"{server.url}/p", "retries": 1})] == ["a"]
        first, second = server.records
    assert 2.5 <= second.at - first.at < 5


def test_an_mds_retry_after_that_is_no_number_of_seconds_is_waited_as_none() -> None:
    """``Retry-After: ²`` (a digit to str.isdigit, no number to float) raised a bare ValueError out
    of the page's retries, and the block was parked; it is waited as no Retry-After: 1 s."""
    from sluicegate import mds

    with _Limited(lambda: "\u00b2") as server:
        got = mds.trips(_first_hour(), {"url": f"{server.url}/p", "retries": 1})
        assert [t["trip_id"] for t in got] == ["a"]
        first, second = server.records
    assert 0.9 <= second.at - first.at < 2.5


def _truncated_gzip(wfile: Any) -> None:
    """200 with a gzip body cut short (its Content-Length says what was sent: no protocol error)."""
    page = {"data": {"trips": [{"trip_id": str(i)} for i in range(50)]}, "links": {"next": None}}
    body = gzip.compress(json.dumps(page).encode())[:-20]
    wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize("callable_", ["mds", "socrata"])
def test_a_gzip_answer_cut_short_is_a_transient_error(callable_: str) -> None:
    """A gzip body cut short (by a proxy, a dropped connection whose length was counted after the
    cut) decoded without error to part of the page: "not JSON", parked, though asking again works."""
    from sluicegate import mds, socrata
    from sluicegate.exceptions import TransientError
    from sluicegate.timeblocks import Block, StageBlock

    block = StageBlock(
        task="trips", stage="x", key="provider", key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )  # fmt: skip
    with _Raw(_truncated_gzip) as server, pytest.raises(TransientError) as caught:
        if callable_ == "mds":
            list(mds.trips(block, {"url": f"{server.url}/p", "retries": 0}))
        else:
            socrata.upsert(block, iter([{"a": 1}]), {"url": server.url, "dataset": "d"})
    assert re.fullmatch(
        rf"{re.escape(server.url)}/\S+: DecodingError: the gzip-encoded answer ends before its end; will retry",
        str(caught.value),
    ), caught.value


def _answer(kind: str, body: bytes) -> Any:
    """A raw answer: 200 with ``body`` as ``kind``, its Content-Length right."""

    def answer(wfile: Any) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        wfile.write(head.encode() + body)

    return answer


@pytest.mark.parametrize(
    ("kind", "body", "said"),
    [
        ("text/html; charset=utf-8", b"<html><body>Down for maintenance</body></html>", "text/html"),
        ("application/json", b'{"data": {"trips": [{"trip_id": "a"}, {"tri', "application/json"),
    ],
    ids=["html", "cut"],
)
def test_an_mds_page_that_is_not_json_says_what_came_and_is_retried(
    kind: str, body: bytes, said: str
) -> None:
    """A 200 with a maintenance page (HTML), or a JSON page cut where its Content-Length was, parked
    the stage at once with "answered with something that is not JSON": not what came, nor what to
    do, though asking again works."""
    from sluicegate import mds
    from sluicegate.exceptions import TransientError
    from sluicegate.timeblocks import Block, StageBlock

    block = StageBlock(
        task="trips", stage="x", key="provider", key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )  # fmt: skip
    with _Raw(_answer(kind, body)) as server, pytest.raises(TransientError) as caught:
        list(mds.trips(block, {"url": f"{server.url}/p", "retries": 0}))
    message = str(caught.value)
    assert message.startswith(f"{server.url}/p/trips answered HTTP 200 with {said} that is not JSON ("), (
        message
    )
    assert repr(body[:20].decode())[:-1] in message and "check url, the API root; will retry" in message


@pytest.mark.parametrize("number", ["1e999", "-Infinity", "NaN"])
def test_an_mds_trip_with_a_number_json_cannot_hold_names_the_page_and_the_number(number: str) -> None:
    """A trip whose route held 1e999 (read as inf) or NaN failed its block where the artifact was
    written: "a record cannot be written as JSON: Out of range float values are not JSON
    compliant", no word of the provider, the page or the number."""
    from sluicegate import mds
    from sluicegate.exceptions import TerminalError
    from sluicegate.timeblocks import Block, StageBlock

    block = StageBlock(
        task="trips", stage="x", key="provider", key_value="p",
        block=Block(start=FIRST, end=FIRST + H, zone="UTC"),
    )  # fmt: skip
    body = b'{"data": {"trips": [{"trip_id": "a", "route": {"c": [1.5, %s]}}]}}' % number.encode()
    with _Raw(_answer("application/json", body)) as server, pytest.raises(TerminalError) as caught:
        list(mds.trips(block, {"url": f"{server.url}/p", "retries": 0}))
    assert str(caught.value) == (
        f"{server.url}/p/trips answered with the number {number}, which JSON cannot hold (nor the block's"
        " artifact); ask the provider to fix it, then rerun with --incomplete-only"
    )


MiB = 2**20


def _page(size: int) -> bytes:
    """A JSON answer of ``size`` bytes: an MDS page of one trip, and the upsert counts and dataset
    metadata of a Socrata portal, padded with zeros (a gzip bomb: 1 MiB of it gzips to ~1 KiB)."""
    answer: dict[str, Any] = {
        "data": {"trips": [{"trip_id": "big"}]}, "links": {"next": None},
        "Rows Created": 1, "Errors": 0, "rowIdentifierColumnId": 1, "columns": [{"id": 1, "fieldName": "a"}],
    }  # fmt: skip
    answer["pad"] = ""
    answer["pad"] = "0" * (size - len(json.dumps(answer).encode()))
    return json.dumps(answer).encode()


def _sized(size: int, how: str, status: str = "200 OK") -> Any:
    """A raw answer of ``size`` bytes decoded: ``plain`` with its Content-Length, ``close`` without
    one (the body ends with the connection), else in that Content-Encoding (``gzip``, ``deflate``
    as a raw deflate stream, ``gzip, gzip`` a gzip bomb gzipped), its Content-Length the coded's."""
    body = _page(size)
    if "gzip" in how:
        body = gzip.compress(gzip.compress(body) if how == "gzip, gzip" else body)
    elif how == "deflate":
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = deflate.compress(body) + deflate.flush()
    length = "Connection: close" + ("" if how == "close" else f"\r\nContent-Length: {len(body)}")
    coding = "" if how in ("plain", "close") else f"Content-Encoding: {how}\r\n"
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{coding}{length}\r\n\r\n".encode()

    def answer(wfile: Any) -> None:
        wfile.write(head)
        wfile.write(body)  # apart: head + body would copy a large body in the test's memory

    return answer


def _too_large(url: str, fix: str, declared: int | None = None) -> str:
    said = f" (its Content-Length says {declared})" if declared is not None else ""
    return (
        f"{url} answered more than max_answer_bytes (1048576 bytes, 1 MiB) decoded{said}, more than"
        f" the worker is to hold in memory: {fix}, then rerun with --incomplete-only"
    )


MDS_FIX = (
    "ask the provider for smaller pages (a page size parameter, if its API has one) or raise"
    " max_answer_bytes in the stage's config"
)


@pytest.mark.pg
@pytest.mark.parametrize("how", ["plain", "close", "gzip"])
def test_an_mds_page_larger_than_max_answer_bytes_parks_its_block_and_the_others_run(
    tmp_path: Path, pg_url: str, mds: MdsDouble, portal: PortalDouble, how: str
) -> None:
    """A provider (or a proxy) answering a 3 GB page, or a gzip bomb, was read whole: the worker
    allocated until the kernel killed it, and so did every worker that took the block over."""
    with _Raw(_sized(MiB + 1, how)) as big:
        keys = f'[keys.lime]\nurl = "{mds.base_url("lime")}"\n[keys.big]\nurl = "{big.url}/big"\n'
        root = write(tmp_path, pg_url, mds, portal, keys=keys, extract_config="max_answer_bytes = 1048576")
        result = run(root, "--time-max", "2020-3-1-2", "--interval", "2")
    assert result.exit_code == 1, result.output
    rows = ledger(pg_url)
    for start in (FIRST, FIRST + H):
        status, attempts, *_, error, _ = rows[("big", start, "extract")]
        assert (status, attempts) == ("failed", 1), error
        assert error == _too_large(f"{big.url}/big/trips", MDS_FIX, MiB + 1 if how == "plain" else None)
        assert [rows[("lime", start, s)][0] for s in ("extract", "load", "publish")] == ["done"] * 3


@pytest.mark.parametrize("how", ["plain", "close", "gzip", "deflate", "gzip, gzip"])
def test_an_answer_of_max_answer_bytes_is_read_by_mds_and_socrata(how: str) -> None:
    """The cap is on what is held: an answer of exactly max_answer_bytes, decoded, is read whole."""
    from sluicegate import mds, socrata

    block = _first_hour()
    with _Raw(_sized(MiB, how)) as server:
        config = {"url": f"{server.url}/p", "retries": 0, "max_answer_bytes": MiB}
        assert [t["trip_id"] for t in mds.trips(block, config)] == ["big"]
        config = {"url": server.url, "dataset": "d", "max_answer_bytes": MiB}
        assert socrata.upsert(block, iter([{"a": 1}]), config) == {"total": 1, "processed": 1, "errors": 0}


@pytest.mark.parametrize("how", ["plain", "close", "gzip", "deflate", "gzip, gzip"])
def test_a_socrata_answer_larger_than_max_answer_bytes_is_terminal(how: str) -> None:
    """The portal's answers are a few hundred bytes: a large one is not the portal's, and was read whole."""
    from sluicegate import socrata
    from sluicegate.exceptions import TerminalError

    with _Raw(_sized(MiB + 1, how)) as server, pytest.raises(TerminalError) as caught:
        config = {"url": server.url, "dataset": "d", "max_answer_bytes": MiB}
        socrata.upsert(_first_hour(), iter([{"a": 1}]), config)
    fix = "check that url is the portal, or raise max_answer_bytes in the stage's config"
    declared = MiB + 1 if how == "plain" else None
    assert str(caught.value) == _too_large(f"{server.url}/api/views/d.json", fix, declared)


@pytest.mark.parametrize("status", ["503 Service Unavailable", "429 Too Many Requests", "502 Bad Gateway"])
@pytest.mark.parametrize("how", ["plain", "gzip"])
def test_an_error_answer_larger_than_max_answer_bytes_is_retried_not_parked(how: str, status: str) -> None:
    """A load balancer's or proxy's 503 (or 429, 502) page over max_answer_bytes parked the block,
    as if the provider's trips were too large, though the next try may get them: such an answer
    is transient for mds (the source) and socrata (the destination), its body not read."""
    from sluicegate import mds, socrata
    from sluicegate.exceptions import DestinationUnavailable, SourceUnavailable

    code = status.split()[0]
    with _Raw(_sized(MiB + 1, how, status)) as server:
        with pytest.raises(SourceUnavailable) as source:
            list(mds.trips(_first_hour(), {"url": f"{server.url}/p", "retries": 0, "max_answer_bytes": MiB}))
        with pytest.raises(DestinationUnavailable) as destination:
            socrata.upsert(
                _first_hour(), iter([{"a": 1}]), {"url": server.url, "dataset": "d", "max_answer_bytes": MiB}
            )
    said = f": HTTP {code}, its answer larger than max_answer_bytes (not read); will retry"
    assert str(source.value).endswith(said) and str(source.value).startswith(server.url), source.value
    assert str(destination.value) == f"{server.url}/api/views/d.json{said}", destination.value


@pytest.mark.parametrize("how", ["close", "gzip", "deflate", "gzip, gzip"])
def test_a_page_far_over_max_answer_bytes_is_refused_holding_about_max_answer_bytes(how: str) -> None:
    """Peak memory stays near the cap: a 64 MiB page (64 KiB gzipped, a bomb; or gzipped twice, ~1
    KiB, each coding inflated by httpx whole) with a 1 MiB cap."""
    import tracemalloc

    from sluicegate import mds
    from sluicegate.exceptions import TerminalError

    answer = _sized(64 * MiB, how)
    with _Raw(_sized(2048, how)) as server:  # what a process allocates once (the CA bundle, ~1 MiB)
        list(mds.trips(_first_hour(), {"url": f"{server.url}/p"}))
    with _Raw(answer) as server:
        tracemalloc.start()
        try:
            with pytest.raises(TerminalError, match="more than max_answer_bytes"):
                list(mds.trips(_first_hour(), {"url": f"{server.url}/p", "max_answer_bytes": MiB}))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 * MiB, f"{peak / MiB:.1f} MiB"  # the page read whole was 64 MiB, 128 at its join


@pytest.mark.parametrize("value", ["1MiB", 1023, 1.5, True])
def test_max_answer_bytes_that_is_not_a_whole_number_from_1024_is_refused(value: Any) -> None:
    from sluicegate import mds, socrata
    from sluicegate.exceptions import ConfigError

    block = _first_hour()
    with pytest.raises(ConfigError, match=r"^sluicegate.mds:trips for p: max_answer_bytes: "):
        list(mds.trips(block, {"url": "http://127.0.0.1:9/p", "max_answer_bytes": value}))
    config = {"url": "http://127.0.0.1:9", "dataset": "d", "max_answer_bytes": value}
    with pytest.raises(ConfigError, match=r"^sluicegate.socrata:upsert for p: max_answer_bytes: "):
        socrata.upsert(block, iter([{"a": 1}]), config)
