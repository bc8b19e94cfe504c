"""Blocks tasks without servers: block arithmetic (atd-mds's CLI cases, DST), configuration
errors, and whole runs on SQLite with callables from the project folder."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from sluicegate import block_requests, operations
from sluicegate.cli import main
from sluicegate.config import load_project
from sluicegate.exceptions import ConfigError, UsageError
from sluicegate.formats.jsonl import JsonlWriter, read_records
from sluicegate.secrets import encrypt, generate_key
from sluicegate.timeblocks import blocks_between, parse_time
from support import SLUICEGATE

UTC = dt.UTC
CENTRAL = "US/Central"

# A project module with the stages' callables. Calls are counted in a file, so a test sees
# them from a CLI process too; a block is empty or failing when its label says so.
ETL = """
import json, os
from pathlib import Path
from sluicegate.exceptions import DestinationUnavailable

CALLS = Path(__file__).with_name("calls.jsonl")
EMPTY = ("T03:00",)
FAILING = ("T05:00",)

def _note(what, block):
    with CALLS.open("a") as fh:
        fh.write(json.dumps({"call": what, "key": block.key_value, "block": block.label,
                             "start": block.start.isoformat(), "end": block.end.isoformat()}) + "\\n")

def trips(block, config):
    _note("extract", block)
    if any(e in block.label for e in EMPTY):
        return []
    if any(f in block.label for f in FAILING):
        raise OSError("provider timed out")
    base = int(block.start.timestamp() * 1000)
    return [{"trip_id": f"{block.key_value}-{base}-{i}", "duration": 60 * (i + 1), "end_time": base + i}
            for i in range(config.get("per_block", 3))]

def portal(block, records, config):
    _note("publish", block)
    flaky = Path(__file__).with_name("portal-fails")
    if flaky.exists() and int(flaky.read_text()) > 0:
        flaky.write_text(str(int(flaky.read_text()) - 1))
        raise DestinationUnavailable("portal answered 503")
    rows = list(records)
    return {"total": len(rows), "processed": len(rows), "errors": 0}
"""

TASK = """
kind = "blocks"
zone = "US/Central"
key = "provider"
keys = ["lime", "bird"]
max_attempts = 3
backoff = "0s"
[config]
per_block = 3
[extract]
callable = "etl:trips"
path = "{{stage}}/{{provider}}/{{block:%Y/%m/%d/%H%z}}/trips.jsonl"
{extract_extra}
[load]
table = "trips"
key = ["trip_id"]
create = {create}
columns = {{ trip_id = "text", duration = "int", end_time = "epoch_ms" }}
[publish]
callable = "etl:portal"
"""


def make_project(
    root: Path, *, extract_extra: str = "", create: str = "true", task: str | None = None
) -> Path:
    (root / "tasks" / "trips").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        '[source]\nurl = "sqlite:///data.db"\n[destination]\nurl = "out"\n[defaults]\nlease = "10m"\n'
    )
    (root / "etl.py").write_text(ETL)
    text = task if task is not None else TASK.format(extract_extra=extract_extra, create=create)
    (root / "tasks" / "trips" / "task.toml").write_text(textwrap.dedent(text))
    return root


def calls(root: Path, what: str | None = None) -> list[dict[str, Any]]:
    path = root / "calls.jsonl"
    found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c for c in found if what is None or c["call"] == what]


def blocks_cli(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``sluicegate blocks trips ARGS`` in this process, as a fresh process would import ``etl``."""
    sys.modules.pop("etl", None)
    sys.path[:] = [p for p in sys.path if not Path(p, "etl.py").exists()]  # other tests' projects
    return CliRunner().invoke(main, ["-C", str(root), "blocks", "trips", *args], env=env)


def ledger_rows(root: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(root / "data.db")
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sluicegate_blocks'").fetchone():
            return []  # refused before the ledger was made
        return conn.execute(
            "SELECT key_value, label, stage, status, attempts, records_total, records_errors, error "
            "FROM sluicegate_blocks ORDER BY block_start, key_value, position"
        ).fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- block arithmetic


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"time_max": "2020-1-1-1", "interval": 1}, 1),
        ({"time_max": "2020-1-1-1", "interval": 2}, 2),
        ({"time_max": "2020-1-1-1", "interval": 23}, 23),
        ({"time_max": "2019-1-2-1", "time_min": "2019-1-1-1", "interval": 5}, 24),  # interval ignored
    ],
)
def test_the_originals_cli_cases_give_as_many_blocks(
    tmp_path: Path, args: dict[str, Any], expected: int
) -> None:
    """atd-mds's test_mds_cli.py cases: interval N gives N hour-ending blocks; a range is (min, max]."""
    project = load_project(make_project(tmp_path))
    request, _ = block_requests.blocks_request(project, project.task("trips"), **args)
    blocks = blocks_between(request.time_min, request.time_max, grain="hour", zone=CENTRAL)
    assert len(blocks) == expected
    assert blocks[-1].local_end.replace(tzinfo=None) == dt.datetime.strptime(args["time_max"], "%Y-%m-%d-%H")


def test_a_range_creates_exactly_its_rows_and_a_dry_run_none(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    dry = blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert (
        "12 (block, stage) would run" in dry.output and "lime 2020-01-01T01:00-06:00 load (new)" in dry.output
    )
    assert ledger_rows(root) == [] and calls(root) == []  # nothing written, nothing called
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "2")
    assert result.exit_code == 0, result.output
    assert len(ledger_rows(root)) == 2 * 2 * 3  # blocks x providers x stages, nothing pre-filled


def test_fall_back_day_has_25_distinct_one_hour_blocks() -> None:
    low = parse_time("2020-11-1-0", CENTRAL, "time_min")
    high = parse_time("2020-11-2-0", CENTRAL, "time_max")
    blocks = blocks_between(low, high, grain="hour", zone=CENTRAL)
    assert len(blocks) == 25
    assert len({b.label for b in blocks}) == 25
    assert all(b.end - b.start == dt.timedelta(hours=1) for b in blocks)
    assert [b.start for b in blocks] == [low + dt.timedelta(hours=h) for h in range(25)]
    ones = [b.label for b in blocks if "T01:00" in b.label]
    assert ones == ["2020-11-01T01:00-05:00", "2020-11-01T01:00-06:00"]
    # both hours that start at 01:00 local (CDT, then CST) are blocks of their own
    starts = {b.start for b in blocks}
    assert {dt.datetime(2020, 11, 1, 6, tzinfo=UTC), dt.datetime(2020, 11, 1, 7, tzinfo=UTC)} <= starts


def test_spring_forward_day_has_23_blocks_and_none_is_empty() -> None:
    low = parse_time("2020-3-8-0", CENTRAL, "time_min")
    high = parse_time("2020-3-9-0", CENTRAL, "time_max")
    blocks = blocks_between(low, high, grain="hour", zone=CENTRAL)
    assert len(blocks) == 23
    assert all(b.end - b.start == dt.timedelta(hours=1) for b in blocks)
    assert len({b.label for b in blocks}) == 23
    assert "2020-03-08T02:00" not in " ".join(b.label for b in blocks)  # 02:00 does not exist that day


@pytest.mark.parametrize(
    ("zone", "low", "later", "high"),
    [
        (
            "Australia/Lord_Howe",
            "2024-04-06T22:00",
            "2024-04-07T03:00",
            "2024-04-07T06:00",
        ),  # DST ends: 30 min
        ("Asia/Kathmandu", "1985-12-31T20:00", "1986-01-01T02:00", "1986-01-01T04:00"),  # +05:30 to +05:45
    ],
)
def test_hour_blocks_tile_the_time_line_whatever_the_request_and_the_offset_change(
    zone: str, low: str, later: str, high: str
) -> None:
    """Every request gets the same hour blocks: each starts where the one before ends, at a
    whole local hour. Where the offset changed by other than whole hours, blocks were stepped by
    60 minutes from wherever a request began: a request across the change and one after it got
    grids 30 (or 15) minutes apart, and the same rows went into two blocks."""
    end = parse_time(high, zone, "time_max")
    across = blocks_between(parse_time(low, zone, "time_min"), end, grain="hour", zone=zone)
    after = blocks_between(parse_time(later, zone, "time_min"), end, grain="hour", zone=zone)
    assert all(a.end == b.start for a, b in itertools.pairwise(across))
    local = ZoneInfo(zone)
    assert {(b.start.astimezone(local).minute, b.end.astimezone(local).minute) for b in across} == {(0, 0)}
    assert after and {(b.start, b.end) for b in after} <= {(b.start, b.end) for b in across}


def test_day_blocks_are_local_days() -> None:
    low = parse_time("2020-11-01T00:00", CENTRAL, "time_min")
    high = parse_time("2020-11-03T00:00", CENTRAL, "time_max")
    days = blocks_between(low, high, grain="day", zone=CENTRAL)
    assert [d.label for d in days] == ["2020-11-01", "2020-11-02"]
    assert days[0].end - days[0].start == dt.timedelta(hours=25)


@pytest.mark.parametrize(
    "zone,first",
    [
        ("Pacific/Apia", dt.date(2011, 12, 27)),  # skips 2011-12-30
        ("America/Santiago", dt.date(2024, 4, 4)),  # 2024-04-06 has 25 hours
        ("America/Santiago", dt.date(2024, 9, 5)),  # 2024-09-08 starts at 01:00
        ("America/Havana", dt.date(2024, 11, 1)),  # midnight twice on 2024-11-03
        ("Australia/Lord_Howe", dt.date(2024, 10, 4)),  # 30-minute DST
        ("Pacific/Kiritimati", dt.date(2024, 6, 1)),
        ("Etc/GMT+12", dt.date(2024, 6, 1)),
    ],
)
def test_day_blocks_tile_every_local_day_once(zone: str, first: dt.date) -> None:
    """Each day block is one local day, computed here with zoneinfo, with no gap or overlap: across
    Pacific/Apia's skipped 2011-12-30, the 29th was in no block and three blocks were labelled
    2011-12-31, two of them empty."""
    tz = ZoneInfo(zone)
    low = dt.datetime.combine(first, dt.time(), tzinfo=tz).astimezone(UTC)
    days = blocks_between(low, low + dt.timedelta(days=6), grain="day", zone=zone)
    assert days[0].start == low and all(a.end == b.start for a, b in itertools.pairwise(days))
    for block in days:
        assert block.start < block.end, block
        assert block.label == block.start.astimezone(tz).date().isoformat()
        assert (block.end - dt.timedelta(microseconds=1)).astimezone(tz).date() == block.start.astimezone(
            tz
        ).date()
        assert block.end.astimezone(tz).date() > block.start.astimezone(tz).date()
    assert len({b.label for b in days}) == len(days)


def test_times_parse_as_the_original_and_iso_and_bad_ones_say_how() -> None:
    assert parse_time("2020-1-1-1", CENTRAL, "x") == dt.datetime(2020, 1, 1, 7, tzinfo=UTC)
    assert parse_time("2020-01-01T01:00", CENTRAL, "x") == dt.datetime(2020, 1, 1, 7, tzinfo=UTC)
    assert parse_time("2020-01-01T01:00Z", CENTRAL, "x") == dt.datetime(2020, 1, 1, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match=r"time_max '2020/1/1' is not a time; use yyyy-mm-dd-hh"):
        parse_time("2020/1/1", CENTRAL, "time_max")


# --------------------------------------------------------------------------- configuration


def test_a_path_that_names_both_fall_back_hours_alike_is_refused(tmp_path: Path) -> None:
    """The ETL's own layout {Y}/{M}/{D}/{H} wrote both 01:00 hours of a fall-back day to one file."""
    task = TASK.format(extract_extra="", create="true").replace("%H%z", "%H")
    root = make_project(tmp_path, task=task)
    project = load_project(root)
    [problem] = project.problems
    assert "2020" not in problem.message  # a sample year's transition, named by its labels
    assert "would share the path" in problem.message and "-05:00" in problem.message
    result = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert result.exit_code == 2 and "would share the path" in result.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # a template coarser than the blocks, in a zone with no daylight saving time: never rendered
        ((("US/Central", "UTC"), ("%Y/%m/%d/%H%z", "%Y%m%d")), "would share the path"),
        ((("%Y/%m/%d/%H%z", "%Q"),), "would share the path"),
        # the fall-back hour in a zone that had daylight saving time until 2019 (not in 2024)
        ((("US/Central", "America/Sao_Paulo"), ("%Y/%m/%d/%H%z", "%Y/%m/%d/%H")), "repeated hour"),
        # a path that escapes the destination, in UTC: refused at load, not after the extract ran
        ((("US/Central", "UTC"), ('"{{stage}}/', '"../{{stage}}/')), "escapes the destination"),
        # a stage writing over another's file: the publish over the extract it reads
        (
            (
                (
                    'callable = "etl:portal"',
                    'path = "extract/{{provider}}/{{label}}.jsonl"\nformat = "jsonl"\ncolumns = {{ trip_id = "text" }}',
                ),
                (
                    "{{stage}}/{{provider}}/{{block:%Y/%m/%d/%H%z}}/trips.jsonl",
                    "extract/{{provider}}/{{label}}.jsonl",
                ),
            ),
            "names the same file as [extract] path",
        ),
    ],
)
def test_paths_that_would_overwrite_each_other_are_refused_at_load(
    tmp_path: Path, changes: tuple[tuple[str, str], ...], message: str
) -> None:
    """Found by probing: each of these ran with exit 0 and every block done, while one file
    replaced another's (or the run failed only after the extract)."""
    task = TASK
    for old, new in changes:
        assert old in task
        task = task.replace(old, new)
    root = make_project(tmp_path, task=task.format(extract_extra="", create="true"))
    result = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert result.exit_code == 2, result.output
    assert message in result.output and "task.toml" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('callable = "etl:trips"', 'callable = "etl:nope"'), "has no function 'nope'"),
        (('keys = ["lime", "bird"]', ""), "give the values of provider"),
        # an empty key value was told to "use a list of key values", which it was
        (('keys = ["lime", "bird"]', 'keys = ["lime", ""]'), 'keys: key value 2 is empty (""); remove it'),
        (('keys = ["lime", "bird"]', 'keys = { "" = { url = "x" } }'), '[keys.""] names an empty key value'),
        (('keys = ["lime", "bird"]', 'keys = ["lime", 1.5]'), "keys: 1.5 is not a key value; use text"),
        # a value given twice was run once but planned twice: --dry-run listed each block of it twice
        (
            ('keys = ["lime", "bird"]', 'keys = ["lime", "bird", "lime"]'),
            "keys: key value 3, 'lime', repeats",
        ),
        (('keys = ["lime", "bird"]', 'keys = [1, "1"]'), "keys: key value 2, '1', repeats key value 1"),
        # its blocks were made but never claimed: pending for ever, "nothing to run", exit 0
        (
            ('keys = ["lime", "bird"]', 'keys = ["lime", "x\\u0000y"]'),
            r"keys: the key value 'x\x00y' holds a NUL",
        ),
        (('keys = ["lime", "bird"]', 'keys = { "x\\u0000y" = {} }'), "holds a NUL character; remove it"),
        (('table = "trips"', 'table = "trips; drop"'), "is not a table name"),
        (('duration = "int"', 'duration = "integer"'), "'integer' is not a kind"),
        (("max_attempts = 3", "max_attemps = 3"), "max_attemps"),
        (("max_attempts = 3", 'settle = "soon"'), "settle: 'soon' is not a duration"),
        (
            ('table = "trips"', 'table = "trips"\nmode = "merge"'),
            "'merge' is not valid; use one of upsert, replace",
        ),
        (('key = ["trip_id"]', 'key = ["trip"]'), "key: name one or more of the declared columns"),
        (('key = ["trip_id"]', ""), 'mode = "upsert" needs the key columns'),
        (('table = "trips"', 'table = "trips"\nurl = "ftp://db/x"'), "is not a database URL"),
        # an empty or repeated stage list was reported as "unknown setting 'extract'"
        (('kind = "blocks"', 'kind = "blocks"\nstages = []'), "stages: use a list of stage names"),
        (('kind = "blocks"', 'kind = "blocks"\nstages = ["extract", "extract"]'), "may appear once"),
        # the stage named, and what would share a file (it said "two block fields' files")
        (
            ("{stage}/{provider}/{block", "{stage}/{block"),
            "[extract] path: the template does not use {provider}, so two key values' files would share",
        ),
    ],
)
def test_configuration_errors_name_the_setting(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    task = TASK.format(extract_extra="", create="true").replace(*change)
    root = make_project(tmp_path, task=task)
    result = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert result.exit_code == 2, result.output
    assert message in result.output and "task.toml" in result.output
    assert "Traceback" not in result.output


def test_unknown_stage_and_key_value_are_usage_errors(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    bad_stage = blocks_cli(root, "--time-max", "2020-1-1-1", "--stage", "sync_db")
    assert bad_stage.exit_code == 2 and "'sync_db' is not a stage of task trips" in bad_stage.output
    bad_key = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=jump")
    assert bad_key.exit_code == 2 and "provider 'jump' is not a key value" in bad_key.output
    no_max = blocks_cli(root)
    assert no_max.exit_code == 2 and "--time-max" in no_max.output


# --------------------------------------------------------------------------- runs on SQLite


def test_an_empty_block_is_no_data_and_the_range_goes_on_and_a_failing_one_is_parked(tmp_path: Path) -> None:
    """The original exit(0)-ed on an empty block and skipped the rest of the range. A block parked
    after its last attempt said it "will retry": no run takes it again without --incomplete-only."""
    root = make_project(tmp_path)
    result = blocks_cli(root, "--time-max", "2020-1-1-6", "--interval", "6", "--key", "provider=lime")
    assert result.exit_code == 1  # a block failed
    rows = {(r[1][11:16], r[2]): r for r in ledger_rows(root)}
    assert rows[("03:00", "extract")][3] == "no_data"
    assert rows[("03:00", "load")][3] == rows[("03:00", "publish")][3] == "no_data"
    assert all(rows[(f"0{h}:00", s)][3] == "done" for h in (4, 6) for s in ("extract", "load", "publish"))
    failed = rows[("05:00", "extract")]
    assert failed[3:5] == ("failed", 3) and "provider timed out" in failed[7]  # transient, max_attempts 3
    assert not failed[7].endswith("will retry"), failed[7]  # parked: it said "; will retry"
    assert len([c for c in calls(root, "extract") if c["block"].startswith("2020-01-01T05:00")]) == 3
    assert rows[("05:00", "load")][3] == "pending"  # waits for its extract
    status = operations.status(load_project(root), ["trips"])[0]
    assert status["failed"] == 1 and "provider timed out" in status["failures"][0]["error"]
    assert status["by_stage"]["extract"]["done"] == 4 and status["by_stage"]["extract"]["no_data"] == 1
    conn = sqlite3.connect(root / "data.db")
    assert conn.execute("SELECT count(*), count(DISTINCT trip_id) FROM trips").fetchone() == (12, 12)


def test_done_stages_do_not_run_again_until_forced_and_force_resets_them_first(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    args = ["--time-max", "2020-1-1-2", "--interval", "1", "--key", "provider=bird"]
    assert blocks_cli(root, *args).exit_code == 0
    assert len(calls(root)) == 2  # one extract, one publish
    assert blocks_cli(root, *args).exit_code == 0
    assert len(calls(root)) == 2  # done: nothing runs again
    forced = blocks_cli(root, *args, "--force", "--no-extract", "--json")
    assert forced.exit_code == 0, forced.output
    [summary] = json.loads(forced.output)
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("load", "done"), ("publish", "done")]
    assert [c["call"] for c in calls(root)] == ["extract", "publish", "publish"]  # extract not re-run
    conn = sqlite3.connect(root / "data.db")
    assert conn.execute("SELECT count(*) FROM trips").fetchone() == (3,)  # the upsert, twice, 3 rows


def test_force_leaves_a_block_alone_while_another_run_holds_a_later_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Forcing the extract of a block whose publish another run holds under a live lease would let
    that run commit the old artifact as done after the new extract: the block is left alone, with
    a warning, and forced once the other run is over."""
    root = make_project(tmp_path)
    args = ["--time-max", "2020-1-1-1", "--key", "provider=bird"]
    assert blocks_cli(root, *args).exit_code == 0
    conn = sqlite3.connect(root / "data.db")
    with conn:  # another run's live claim of the publish stage
        conn.execute(
            "UPDATE sluicegate_blocks SET status = 'running', lease_until = 9e9, claim_token = 'x' WHERE stage = 'publish'"
        )
    forced = blocks_cli(root, *args, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(calls(root, "extract")) == 1  # not re-extracted under the other run's publish
    assert "1 block(s) not forced: a stage from 'extract' on is running in another run" in caplog.text
    with conn:  # the other run ends
        conn.execute(
            "UPDATE sluicegate_blocks SET status = 'done', lease_until = NULL, claim_token = NULL WHERE stage = 'publish'"
        )
    assert blocks_cli(root, *args, "--force").exit_code == 0
    assert len(calls(root, "extract")) == 2 and [r[3] for r in ledger_rows(root)] == ["done"] * 3
    conn.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--time-min", "2020-3-2-1", "--time-max", "2020-3-1-1"],
            "is empty; --time-min/time_min must be before --time-max/time_max",
        ),
        (["--time-min", "1900-1-1-0", "--time-max", "2020-1-1-0"], "holds more than 50,000 hour blocks"),
        (
            ["--time-max", "9999-12-31-23"],
            "time_max '9999-12-31-23' is out of range; use a time between the years",
        ),
        (["--time-max", "0001-01-01-00"], "time_max '0001-01-01-00' is out of range"),
        (["--time-max", "0003-01-01-00", "--interval", "50000"], "reaches back before the year 2"),
    ],
)
@pytest.mark.parametrize("dry", [False, True])
def test_a_range_that_cannot_run_is_a_usage_error(
    tmp_path: Path, args: list[str], message: str, dry: bool
) -> None:
    """A reversed or too long range was a task error (exit 1, the dry run saying only "0 would
    run"); the years 1 and 9999 crashed with an OverflowError traceback. Exit 2, one sentence."""
    root = make_project(tmp_path)
    result = blocks_cli(root, *args, *(["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert calls(root) == []


HOSTILE_TASK = """
kind = "blocks"
zone = "UTC"
key = "provider"
keys = ["a"]
[extract]
callable = "hostile:records"
path = "{stage}/{provider}/{label}.jsonl"
[load]
table = "recs"
key = ["id"]
create = true
columns = { id = "text", v = "int", f = "float", ts = "epoch_ms" }
[publish]
path = "pub/{provider}/{label}.{ext}"
format = "csv"
columns = { id = "text", v = "int", f = "float" }
"""


@pytest.mark.parametrize(
    ("bad", "load_error", "publish_errors"),
    [
        (
            '{"id": "x", "v": 1, "f": 1, "ts": 1e20}',
            "ts: 1e+20 is not a time between the years 1 and 9999",
            0,
        ),
        (
            '{"id": "x", "v": 10**26, "f": 1, "ts": 1}',
            "v: 100000000000000000000000000 does not fit a 64-bit",
            1,
        ),
        ('{"id": "x", "v": 1, "f": "abc", "ts": 1}', "f: could not convert string to float: 'abc'", 1),
        ('{"id": "x", "v": 1, "f": float("nan"), "ts": 1}', "is not a finite number", 1),
        ('{"id": "x\\ud800", "v": 1, "f": 1, "ts": 1}', "is not valid Unicode text (a lone surrogate)", 1),
    ],
)
def test_one_record_that_does_not_fit_is_counted_and_the_others_are_loaded_and_published(
    tmp_path: Path, bad: str, load_error: str, publish_errors: int
) -> None:
    """One hostile record parked the whole block's load (OSError, OverflowError) or, counted by
    the load, failed its publish; a NaN float was stored as NULL with no error counted."""
    root = tmp_path / "proj"
    (root / "tasks" / "t").mkdir(parents=True)
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///blk.db"\n[destination]\nurl = "out"\n')
    (root / "hostile.py").write_text(
        f"def records(block, config):\n    return [{{'id': 'ok', 'v': 1, 'f': 1.5, 'ts': 1}}, {bad}]\n"
    )
    (root / "tasks" / "t" / "task.toml").write_text(HOSTILE_TASK)
    sys.modules.pop("hostile", None)
    sys.path[:] = [p for p in sys.path if not Path(p, "hostile.py").exists()]  # other cases' projects
    result = CliRunner().invoke(main, ["-C", str(root), "blocks", "t", "--time-max", "2020-3-1-1"])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(root / "blk.db")
    ledger = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT stage, status, records_total, records_errors, error FROM sluicegate_blocks"
        )
    }
    assert ledger["load"][:3] == ("done", 2, 1) and load_error in ledger["load"][3]
    assert ledger["publish"][:3] == ("done", 2, publish_errors)
    assert conn.execute("SELECT id, v, f FROM recs").fetchall() == [("ok", 1, 1.5)]
    [published] = (root / "out" / "pub" / "a").iterdir()
    assert published.read_text().splitlines() == ["id,v,f", "ok,1,1.5"] + ["x,1,1"] * (1 - publish_errors)
    conn.close()


def test_incomplete_only_takes_parked_stages_again(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    args = ["--time-max", "2020-1-1-5", "--interval", "1", "--key", "provider=lime"]
    assert blocks_cli(root, *args).exit_code == 1
    assert len(calls(root, "extract")) == 3
    assert blocks_cli(root, *args).exit_code == 0  # parked: a plain run leaves it
    assert len(calls(root, "extract")) == 3
    dry = blocks_cli(root, *args, "--incomplete-only", "--dry-run")
    assert "2020-01-01T05:00-06:00 extract (incomplete)" in dry.output
    (root / "etl.py").write_text(ETL.replace('FAILING = ("T05:00",)', "FAILING = ()"))
    assert blocks_cli(root, *args, "--incomplete-only").exit_code == 0
    assert [r[3] for r in ledger_rows(root)] == ["done", "done", "done"]


def test_a_key_value_removed_from_keys_is_left_on_the_ledger_and_not_worked_on(tmp_path: Path) -> None:
    """A provider dropped from ``keys`` kept being worked on: its pending stages were claimed by
    range runs and by ``sluicegate run`` (while ``--dry-run`` listed only the current keys), and
    ``--force`` and ``--incomplete-only`` took its stages again. Its rows now stay as they were,
    and ``status`` still shows them."""
    root = make_project(tmp_path)
    assert (
        blocks_cli(root, "--time-max", "2020-1-1-2", "--interval", "2", "--stage", "extract").exit_code == 0
    )
    assert (
        blocks_cli(root, "--time-max", "2020-1-1-5", "--interval", "1", "--key", "provider=bird").exit_code
        == 1
    )
    bird_calls = [c for c in calls(root) if c["key"] == "bird"]
    assert len(bird_calls) == 5  # the 01:00 and 02:00 extracts, the 05:00 one's three attempts (parked)
    bird_rows = [r for r in ledger_rows(root) if r[0] == "bird"]
    assert [r[3] for r in bird_rows] == ["done", "pending", "pending"] * 2 + ["failed", "pending", "pending"]
    task = root / "tasks" / "trips" / "task.toml"
    task.write_text(task.read_text().replace('keys = ["lime", "bird"]', 'keys = ["lime"]'))
    (root / "etl.py").write_text(
        ETL.replace('FAILING = ("T05:00",)', "FAILING = ()")
    )  # bird's would pass now

    runs = {
        "range": ["blocks", "trips", "--time-max", "2020-1-1-1", "--interval", "1"],
        "plain": ["run", "trips"],
        "force": ["blocks", "trips", "--time-max", "2020-1-1-2", "--interval", "1", "--force"],
        "incomplete": ["blocks", "trips", "--time-max", "2020-1-1-5", "--interval", "1", "--incomplete-only"],
    }
    for what, args in runs.items():
        sys.modules.pop("etl", None)
        result = CliRunner().invoke(main, ["-C", str(root), *args])
        assert result.exit_code == 0, (what, result.output)
        assert [c for c in calls(root) if c["key"] == "bird"] == bird_calls, what  # nothing for bird
    assert [r for r in ledger_rows(root) if r[0] == "bird"] == bird_rows  # its rows as they were
    lime = {(r[1][11:16], r[2]): r[3] for r in ledger_rows(root) if r[0] == "lime"}
    assert [lime[(hour, "publish")] for hour in ("01:00", "02:00", "05:00")] == ["done"] * 3
    status = operations.status(load_project(root), ["trips"])[0]
    assert status["by_stage"]["load"]["pending"] == 3 and status["failed"] == 1  # bird's, still shown
    bad = blocks_cli(root, "--time-max", "2020-1-1-2", "--key", "provider=bird")
    assert bad.exit_code == 2 and "provider 'bird' is not a key value of task trips" in bad.output


def test_a_failed_publish_is_retried_without_running_extract_or_load_again(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "portal-fails").write_text("2")
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=lime", "--json")
    assert result.exit_code == 0, result.output
    assert [c["call"] for c in calls(root)] == ["extract", "publish", "publish", "publish"]
    assert ledger_rows(root)[2][3:5] == ("done", 2)  # the publish row: done after 2 failed attempts


def test_load_counts_rows_the_database_rejects_and_keeps_the_others(tmp_path: Path) -> None:
    root = make_project(tmp_path, create="false")
    conn = sqlite3.connect(root / "data.db")
    conn.execute(
        "CREATE TABLE trips (trip_id TEXT PRIMARY KEY, duration INTEGER CHECK (duration < 150), end_time TEXT)"
    )
    conn.commit()
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=lime")
    assert result.exit_code == 0, result.output
    load = ledger_rows(root)[1]
    assert load[2:4] == ("load", "done")
    assert load[5:7] == (3, 1)  # 3 records, 1 rejected (duration 180)
    assert "CHECK constraint failed" in load[7]
    assert conn.execute("SELECT count(*) FROM trips").fetchone() == (2,)


def test_two_cli_processes_over_one_range_run_each_block_stage_once(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "etl.py").write_text(ETL.replace('FAILING = ("T05:00",)', "FAILING = ()"))
    args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-1-2-0", "--interval", "24"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    extracts = [(c["key"], c["block"]) for c in calls(root, "extract")]
    assert len(extracts) == len(set(extracts)) == 48
    assert len(calls(root, "publish")) == 46  # 2 empty blocks have nothing to publish
    assert {r[3] for r in ledger_rows(root)} == {"done", "no_data"}


def _lime_kills_its_worker(root: Path) -> None:
    """The extract of the key value lime SIGKILLs its own process (after noting the call)."""
    poison = 'def trips(block, config):\n    if block.key_value == "lime":\n        _note("extract", block)\n'
    poison += "        os.kill(os.getpid(), 9)\n"
    (root / "etl.py").write_text(
        ETL.replace(
            "def trips(block, config):\n",
            poison + "    return _trips(block, config)\n\ndef _trips(block, config):\n",
        )
    )


def test_a_block_whose_worker_is_killed_every_time_is_parked_after_max_attempts(tmp_path: Path) -> None:
    """A poison block that kills its process: each run dies holding it, the next takes it over
    when the lease ran out (an attempt); once max_attempts (3) are used up it is parked, not run
    again for ever, and the other key's block (in batches of its own) is done."""
    root = make_project(
        tmp_path,
        task=TASK.replace("max_attempts = 3", "max_attempts = 3\nbatch_size = 1").format(
            extract_extra="", create="true"
        ),
    )
    (root / "sluicegate.toml").write_text(
        (root / "sluicegate.toml").read_text().replace('lease = "10m"', 'lease = "1s"')
    )
    _lime_kills_its_worker(root)
    args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-1-1-1"]
    codes = []
    for _ in range(5):
        codes.append(subprocess.run(args, capture_output=True, timeout=120).returncode)
        time.sleep(1.2)  # the dead run's lease runs out
    assert codes[:3] == [-9, -9, -9] and codes[3] == 1, codes
    assert len(calls(root, "extract")) == 3 + 1  # lime killed 3 times (max_attempts), bird once
    rows = {(r[0], r[2]): r[3:5] for r in ledger_rows(root)}
    assert rows[("lime", "extract")] == ("failed", 3)
    assert rows[("bird", "publish")] == ("done", 0)
    status = CliRunner().invoke(main, ["-C", str(root), "status", "trips"])
    assert "leases expired" in status.output, status.output


def test_a_block_that_kills_its_worker_takes_down_no_other_block_of_its_batch(tmp_path: Path) -> None:
    """With batches of 50, the poison block (lime) died with bird's block in its batch; each run then
    took both over together (an attempt each) and died again, until both were parked, bird never
    run. A dead claim's rows are now taken over one at a time, counted only when the dead claim held
    them alone from the start: bird is done in the next run, without an attempt, lime's death in the
    batch is not counted (nor would the last block left of a batch be), its three alone are, and
    only lime is parked."""
    root = make_project(tmp_path)
    (root / "sluicegate.toml").write_text(
        (root / "sluicegate.toml").read_text().replace('lease = "10m"', 'lease = "1s"')
    )
    _lime_kills_its_worker(root)
    args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-1-1-1"]
    codes, after_second = [], {}
    for run in range(5):
        codes.append(subprocess.run(args, capture_output=True, timeout=120).returncode)
        if run == 1:
            after_second = {(r[0], r[2]): r[3:5] for r in ledger_rows(root)}
        time.sleep(1.2)  # the dead run's lease runs out
    assert codes == [-9, -9, -9, -9, 1], codes
    assert {s: after_second[("bird", s)] for s in ("extract", "load", "publish")} == {
        "extract": ("done", 0), "load": ("done", 0), "publish": ("done", 0),
    }  # fmt: skip
    rows = {(r[0], r[2]): r[3:5] for r in ledger_rows(root)}
    assert rows[("lime", "extract")] == ("failed", 3)
    assert rows[("bird", "publish")] == ("done", 0)


@pytest.mark.parametrize("stage", ["extract", "publish"])
def test_a_callable_that_calls_sys_exit_fails_its_block_and_the_others_go_on(
    tmp_path: Path, stage: str
) -> None:
    """A provider library that calls sys.exit() (as atd-mds's scripts did) escaped the stage: the
    run exited with its code and no message, every claim given back without an attempt, so each
    run died the same way and no block of the batch was ever done. It is a terminal error now."""
    root = make_project(tmp_path)
    fn = "def trips(block, config):\n" if stage == "extract" else "def portal(block, records, config):\n"
    exits = fn + '    if block.key_value == "lime":\n        raise SystemExit(3)\n'
    (root / "etl.py").write_text(ETL.replace(fn, exits))
    result = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert result.exit_code == 1, result.output
    rows = {(r[0], r[2]): (r[3], r[7]) for r in ledger_rows(root)}
    assert rows[("bird", "publish")] == ("done", None)
    status, error = rows[("lime", stage)]
    assert status == "failed" and "SystemExit: 3" in error, error


def test_reset_of_a_blocks_task_names_the_command_that_runs_its_parked_blocks(tmp_path: Path) -> None:
    """A blocks task's refusal said "partitioned only", then "partitioned and incremental tasks
    only", leaving the operator to find how a blocks task's parked blocks are run again."""
    root = make_project(tmp_path)
    result = CliRunner().invoke(main, ["-C", str(root), "reset", "trips", "--failed"])
    assert result.exit_code == 2, result.output
    assert "is a blocks task; run its parked blocks again with" in result.output
    assert (
        f"`sluicegate -C {root} blocks trips --time-min ... --time-max ... --incomplete-only`"
        in result.output
    )


def test_a_dry_run_says_a_stage_with_its_attempts_used_up_is_parked_and_run_lists_the_ledgers_work(
    tmp_path: Path,
) -> None:
    """A stage whose leases expired max_attempts times was listed as "lease expired" (its later
    stages too) though the run parks it unrun, and `sluicegate run --dry-run` listed nothing for a
    blocks task ("0 partition(s) would be exported") though `run` works on the ledger's blocks."""
    root = make_project(tmp_path)
    assert blocks_cli(root, "--time-max", "2020-1-1-2", "--interval", "2").exit_code == 0
    conn = sqlite3.connect(root / "data.db")
    first = "label LIKE '%T01:00%' AND key_value = "
    conn.execute(f"UPDATE sluicegate_blocks SET status = 'pending', attempts = 1 WHERE {first}'bird'")
    conn.execute(f"UPDATE sluicegate_blocks SET status = 'pending' WHERE {first}'lime'")
    conn.execute(  # its worker died holding it alone (a lone token: version 8), a third time
        "UPDATE sluicegate_blocks SET status = 'running', lease_until = 0, attempts = 2,"
        " claim_token = '00000000-0000-8000-8000-000000000000'"
        f" WHERE {first}'lime' AND stage = 'extract'"
    )
    conn.commit()
    conn.close()
    dry = blocks_cli(root, "--time-max", "2020-1-1-2", "--interval", "2", "--dry-run")
    for out in (dry.output, CliRunner().invoke(main, ["-C", str(root), "run", "--dry-run"]).output):
        assert "trips: 3 (block, stage) would run" in out, out
        assert "bird 2020-01-01T01:00-06:00 extract (retry)" in out
        assert (
            "lime 2020-01-01T01:00-06:00 extract (parked, not run: its 3 attempts are used up (leases"
            f" expired); then 'sluicegate -C {root} blocks trips --time-max 2020-01-01T07:00:00+00:00"
            " --incomplete-only'"
            " retries it)"
        ) in out
        assert "lime 2020-01-01T01:00-06:00 load" not in out and "lease expired)" not in out
    run = CliRunner().invoke(main, ["-C", str(root), "run"])
    assert run.exit_code == 1, run.output
    rows = {(r[0], r[1][11:16], r[2]): r[3:5] for r in ledger_rows(root)}
    assert rows[("lime", "01:00", "extract")] == ("failed", 3)
    assert rows[("bird", "01:00", "publish")] == ("done", 1)


@pytest.mark.parametrize("stage", ["extract", "publish"])
def test_a_second_signal_during_a_callable_stops_the_run_and_fails_no_block(
    tmp_path: Path, stage: str
) -> None:
    """SIGINT (or SIGTERM) twice stops a run at once: the handler raises SystemExit. Stage callables
    now catch SystemExit (a library's sys.exit()), so one that was running took the operator's
    "stop now" for its own failure: the block was parked ('SystemExit: 130') and the run went on."""
    root = make_project(tmp_path)
    fn = "def trips(block, config):\n" if stage == "extract" else "def portal(block, records, config):\n"
    slow = fn + '    if block.key_value == "lime":\n        Path(__file__).with_name("in-callable").touch()\n'
    slow += "        import time; time.sleep(30)\n"
    (root / "etl.py").write_text(ETL.replace(fn, slow))
    args = [SLUICEGATE, "-C", str(root), "blocks", "trips", "--time-max", "2020-1-1-1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = root / "in-callable"
    for _ in range(600):
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "SIGINT again: stopping now" in err, err
    rows = {(r[0], r[2]): r[3] for r in ledger_rows(root)}
    assert rows[("lime", stage)] != "failed", rows


# --------------------------------------------------------------------------- artifacts and secrets


def test_encrypted_artifacts_round_trip_and_need_the_key(tmp_path: Path) -> None:
    key = generate_key()
    root = make_project(tmp_path, extract_extra="encrypt = true")
    env = {"SLUICEGATE_FERNET_KEY": key}
    no_key = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert no_key.exit_code == 2 and "set SLUICEGATE_FERNET_KEY" in no_key.output
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=lime", env=env)
    assert result.exit_code == 0, result.output
    [artifact] = (root / "out").rglob("trips.jsonl")
    data = artifact.read_bytes()
    assert data.startswith(b"gAAAAA") and b"trip_id" not in data
    assert [r["duration"] for r in read_records(data, fernet_key=key)] == [60, 120, 180]


def test_a_callables_error_that_carries_its_url_credentials_is_masked(tmp_path: Path) -> None:
    """httpx's raise_for_status names the URL with its user:password and query: a stage's callable
    that let it through put the password in the ledger's error, status and the run's output."""
    root = make_project(tmp_path)
    raising = (
        "def portal(block, records, config):\n    import httpx\n"
        "    url = 'https://etl:hunter2@portal.example/api?token=s3cr3t'\n"
        "    httpx.Response(401, request=httpx.Request('POST', url)).raise_for_status()\n\n"
        "def _portal(block, records, config):\n"
    )
    (root / "etl.py").write_text(ETL.replace("def portal(block, records, config):\n", raising))
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=lime")
    assert result.exit_code == 1 and "HTTP 401" in result.output, result.output
    status = CliRunner().invoke(main, ["-C", str(root), "status", "trips", "--json"])
    shown = result.output + status.output + repr(ledger_rows(root))
    assert "hunter2" not in shown and "s3cr3t" not in shown
    assert "https://etl:***@portal.example/api?token=***" in shown


@pytest.mark.parametrize(
    ("first", "then", "message"),
    [
        ("encrypt = true", "encrypt = true", "set SLUICEGATE_FERNET_KEY to the key it was written with"),
        ("encrypt = true", "", "is encrypted; turn encrypt on again"),  # was: line 1 is not JSON
        ("", "encrypt = true", "is not encrypted (written before encrypt was on)"),  # was: another key
    ],
)
def test_an_artifact_read_with_another_key_or_encryption_says_what_to_do(
    tmp_path: Path, first: str, then: str, message: str
) -> None:
    """The key rotated, or [extract] encrypt turned off or on, between the extract and the load:
    the load is parked with a sentence naming the file and what to do, and the old key (or
    setting) with --incomplete-only takes it again."""
    old, new = generate_key(), generate_key()
    root = make_project(tmp_path, extract_extra=first)
    args = ("--time-max", "2020-1-1-1", "--key", "provider=lime")
    assert blocks_cli(root, *args, "--stage", "extract", env={"SLUICEGATE_FERNET_KEY": old}).exit_code == 0
    toml = root / "tasks" / "trips" / "task.toml"
    toml.write_text(TASK.format(extract_extra=then, create="true"))
    result = blocks_cli(root, *args, env={"SLUICEGATE_FERNET_KEY": new})
    assert result.exit_code == 1 and message in result.output, result.output
    assert "--force" in result.output and "Traceback" not in result.output
    toml.write_text(TASK.format(extract_extra=first, create="true"))
    again = blocks_cli(root, *args, "--incomplete-only", env={"SLUICEGATE_FERNET_KEY": old})
    assert again.exit_code == 0, again.output
    assert {r[3] for r in ledger_rows(root)} == {"done"}


def test_a_malformed_artifact_key_exits_2_naming_its_variable(tmp_path: Path) -> None:
    """cryptography 51 takes a key without its '=' padding: the key is checked at start-up,
    before any block is claimed, and the message names the variable it came from."""
    root = make_project(tmp_path, extract_extra="encrypt = true")
    unpadded = generate_key().rstrip("=")
    result = blocks_cli(root, "--time-max", "2020-1-1-1", env={"ATD_MDS_FERNET_KEY": unpadded})
    assert result.exit_code == 2 and "key in ATD_MDS_FERNET_KEY is not a Fernet key" in result.output
    assert not list(root.rglob("trips.jsonl"))


def test_jsonl_writes_records_and_rows(tmp_path: Path) -> None:
    import io

    from sluicegate.sources import Column

    out = io.BytesIO()
    writer = JsonlWriter(out, [Column(name="a", kind="int"), Column(name="t", kind="timestamptz")], "UTC")
    writer.write([(1, dt.datetime(2020, 1, 1, tzinfo=UTC))], "rows")
    writer.write([{"b": [1, 2]}], "rows")
    writer.close()
    assert out.getvalue() == b'{"a":1,"t":"2020-01-01T00:00:00+00:00"}\n{"b":[1,2]}\n'
    assert writer.rows == 2


def test_encrypted_config_values_work_and_a_wrong_key_is_one_clear_line(tmp_path: Path) -> None:
    key = generate_key()
    task = TASK.format(extract_extra="", create="true").replace(
        "per_block = 3", f'per_block = 3\nsecret = "{encrypt("s3cr3t-value", key)}"'
    )
    root = make_project(tmp_path, task=task)
    ok = blocks_cli(root, "--time-max", "2020-1-1-1", env={"ATD_MDS_FERNET_KEY": key})
    assert ok.exit_code == 0, ok.output
    wrong = blocks_cli(root, "--time-max", "2020-1-1-1", env={"SLUICEGATE_FERNET_KEY": generate_key()})
    assert wrong.exit_code == 2
    assert wrong.output.count("\n") == 1 and "config.secret could not be decrypted" in wrong.output
    missing = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert missing.exit_code == 2 and "is encrypted; set SLUICEGATE_FERNET_KEY" in missing.output


def test_a_key_value_with_a_newline_is_quoted_in_every_line_that_names_it(tmp_path: Path) -> None:
    """Messages naming a (block, stage) started with its key value as it was: one holding a newline
    split the run's error line, the status line and the dry-run line in two, and so did the list
    of known values and the setting a bad [keys.<value>] secret was reported under."""
    task = TASK.format(extract_extra="", create="true").replace(
        'keys = ["lime", "bird"]', 'keys = ["lime", "a\\nb"]'
    )
    root = make_project(tmp_path, task=task)
    quoted = "'a\\nb' 2020-01-01T01:00-06:00 extract"
    dry = blocks_cli(root, "--time-max", "2020-1-1-1", "--dry-run")
    assert f"  {quoted} (new)\n" in dry.output, dry.output
    run = blocks_cli(root, "--time-max", "2020-1-1-1")
    assert run.exit_code == 1
    assert f"  error: {quoted}: partition value provider='a\\nb' cannot be used" in run.output, run.output
    status = CliRunner().invoke(main, ["-C", str(root), "status"])
    assert f"  failed {quoted} after 1 attempt(s): partition value" in status.output, status.output
    unknown = blocks_cli(root, "--time-max", "2020-1-1-1", "--key", "provider=jump")
    assert unknown.exit_code == 2 and "known: lime, 'a\\nb'\n" in unknown.output, unknown.output
    for out in (dry.output, run.output, status.output, unknown.output):
        assert not any(line.startswith("b ") for line in out.splitlines()), out  # no line split
    table = task.replace(
        'keys = ["lime", "a\\nb"]', f'[keys."a\\nb"]\ntoken = "{encrypt("t", generate_key())}"'
    )
    (root / "tasks" / "trips" / "task.toml").write_text(textwrap.dedent(table))
    wrong = blocks_cli(root, "--time-max", "2020-1-1-1", env={"SLUICEGATE_FERNET_KEY": generate_key()})
    assert wrong.exit_code == 2 and wrong.output.count("\n") == 1, wrong.output
    assert "keys.'a\\nb'.token could not be decrypted" in wrong.output, wrong.output


def test_secret_commands_encrypt_and_decrypt(tmp_path: Path) -> None:
    key = generate_key()
    runner = CliRunner()
    token = runner.invoke(main, ["secret", "encrypt", "hunter2"], env={"SLUICEGATE_FERNET_KEY": key})
    assert token.exit_code == 0 and token.output.startswith("gAAAAA")
    plain = runner.invoke(main, ["secret", "decrypt", token.output.strip()], env={"ATD_MDS_FERNET_KEY": key})
    assert plain.output == "hunter2\n"
    wrong = runner.invoke(
        main, ["secret", "decrypt", token.output.strip()], env={"SLUICEGATE_FERNET_KEY": generate_key()}
    )
    assert wrong.exit_code == 2 and "could not be decrypted" in wrong.output and key not in wrong.output
    none = runner.invoke(main, ["secret", "encrypt", "x"], env={"SLUICEGATE_FERNET_KEY": ""})
    assert none.exit_code == 2 and "set SLUICEGATE_FERNET_KEY" in none.output


def test_status_and_partitions_show_blocks_per_stage(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    blocks_cli(root, "--time-max", "2020-1-1-5", "--interval", "3", "--key", "provider=lime")
    result = CliRunner().invoke(main, ["-C", str(root), "status"])
    assert "extract: 2 done, 1 no data, 1 failed" not in result.output  # 3 blocks: 03, 04, 05
    assert "extract: 1 done, 1 no data, 1 failed" in result.output, result.output
    assert "failed lime 2020-01-01T05:00-06:00 extract after 3 attempt(s)" in result.output
    project = load_project(root)
    page = operations.list_partitions(project, project.task("trips"), state="failed", limit=10, offset=0)
    assert [(p["stage"], p["block"], p["attempts"]) for p in page] == [
        ("extract", "2020-01-01T05:00-06:00", 3)
    ]


def test_config_error_before_anything_runs_is_exit_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_project(
            make_project(tmp_path, task='kind = "blocks"\n[extract]\npath = "{label}.jsonl"\n')
        ).task("trips")


SQL_TASK = """
kind = "blocks"
zone = "US/Central"
key = "provider"
keys_sql = "SELECT DISTINCT provider FROM rides"
stages = ["extract", "publish"]
[extract]
time = "ended_at"
path = "{stage}/{provider}/{label}.jsonl"
[publish]
path = "csv/{provider}/{block:%Y%m%dT%H%M%z}.{ext}"
format = "csv"
columns = { ride = "int", provider = "text", ended_at = "timestamptz" }
"""


RIDES_SELECT = "SELECT ride, provider, ended_at FROM rides"


def with_rides(
    root: Path, rides: list[tuple[int, str, str]], select: str = RIDES_SELECT
) -> sqlite3.Connection:
    """The SQL task's source: ``rides`` (ride, provider, ended_at) and its select.sql; the open connection."""
    conn = sqlite3.connect(root / "data.db")
    conn.execute("CREATE TABLE rides (ride INTEGER, provider TEXT, ended_at TEXT)")
    conn.executemany("INSERT INTO rides VALUES (?, ?, ?)", rides)
    conn.commit()
    (root / "tasks" / "trips" / "select.sql").write_text(select)
    return conn


def test_extract_from_sql_and_publish_to_a_csv_file(tmp_path: Path) -> None:
    """The built-in extract (select.sql cut by the key and time columns) and file publish."""
    root = make_project(tmp_path, task=SQL_TASK)
    rides = [(1, "lime", "2020-01-01T06:10:00Z"), (2, "lime", "2020-01-01T06:59:59Z"),
             (3, "lime", "2020-01-01T07:00:00Z"), (4, "bird", "2020-01-01T06:30:00Z")]  # fmt: skip
    with_rides(root, rides).close()
    result = blocks_cli(root, "--time-max", "2020-1-1-2", "--interval", "2")  # 06:00Z-08:00Z
    assert result.exit_code == 0, result.output
    out = root / "out"
    lime = list(read_records((out / "extract/lime/2020-01-01T01:00-06:00.jsonl").read_bytes()))
    assert [r["ride"] for r in lime] == [1, 2]  # [start, end): 07:00:00 is the next block's
    assert (out / "csv/lime/20200101T0100-0600.csv").read_text().splitlines()[1:] == [
        "1,lime,2020-01-01T00:10:00-06:00",
        "2,lime,2020-01-01T00:59:59-06:00",
    ]
    statuses = {(r[0], r[1], r[2]): r[3] for r in ledger_rows(root)}
    assert statuses[("bird", "2020-01-01T02:00-06:00", "extract")] == "no_data"
    assert statuses[("lime", "2020-01-01T02:00-06:00", "publish")] == "done"
    assert len(statuses) == 2 * 2 * 2  # keys from keys_sql, two blocks, two stages


@pytest.mark.parametrize("dry", [False, True])
def test_a_block_not_over_yet_is_refused_not_marked_done(tmp_path: Path, dry: bool) -> None:
    """The block of the current hour was extracted and recorded done: the rows stamped later in
    that hour were never extracted (no run takes a done block again without --force)."""
    root = make_project(
        tmp_path, task=SQL_TASK.replace("SELECT DISTINCT provider FROM rides", "SELECT 'lime'")
    )
    now = dt.datetime.now(UTC)
    with_rides(root, [(1, "lime", (now - dt.timedelta(seconds=1)).isoformat())]).close()
    hour_end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    result = blocks_cli(root, "--time-max", hour_end.isoformat(), *(["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    assert "is not over yet" in result.output and "Traceback" not in result.output
    assert ledger_rows(root) == [] and not (root / "out").exists()
    # a --time-max inside the hour asks for the blocks that ended before it: the last hour's
    result = blocks_cli(root, "--time-max", now.isoformat(), *(["--dry-run"] if dry else []))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("dry", [False, True])
def test_blocks_that_ended_less_than_settle_ago_are_left_out_and_run_later(
    tmp_path: Path, dry: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A block one second old was extracted and done: the trips a provider delivered later were
    never extracted. With settle, such blocks are left out (a warning) and the others run; a
    range with no settled block is refused, before any row is made."""
    root = make_project(tmp_path, task=TASK.format(extract_extra="", create="true").replace(
        "max_attempts = 3", 'max_attempts = 3\nsettle = "2h"'))  # fmt: skip
    etl = (root / "etl.py").read_text()  # no block empty or failing whatever the hour now
    (root / "etl.py").write_text(etl.replace('("T03:00",)', "()").replace('("T05:00",)', "()"))
    now = dt.datetime.now(UTC)
    if now.minute == 59 and now.second >= 30:  # the hour must not turn while the test runs
        time.sleep(61 - now.second)
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    flag = ["--dry-run"] if dry else []
    result = blocks_cli(root, "--time-max", hour.isoformat(), "--interval", "4", *flag)
    assert result.exit_code == 0, result.output
    settled = {(hour - dt.timedelta(hours=h)).isoformat() for h in (2, 3)}  # ended 2 h ago or more
    assert "2 block(s) from" in caplog.text and "left out: they ended less than settle" in caplog.text
    if dry:
        assert "12 (block, stage) would run" in result.output  # 2 blocks x 2 providers x 3 stages
        assert ledger_rows(root) == []
    else:
        assert {c["end"] for c in calls(root, "extract")} == settled and len(calls(root, "extract")) == 4
        assert len(ledger_rows(root)) == 2 * 2 * 3  # only the settled blocks have rows
    refused = blocks_cli(root, "--time-max", hour.isoformat(), "--interval", "1", *flag)
    assert refused.exit_code == 2, refused.output
    assert "no block of the range has settled" in refused.output and "Traceback" not in refused.output
    assert len(calls(root, "extract")) == (0 if dry else 4)


DUPS_TASK = """
kind = "blocks"
zone = "UTC"
[extract]
callable = "dups:trips"
path = "{stage}/{label}.jsonl"
[load]
table = "trips"
key = ["trip_id"]
mode = "MODE"
create = true
columns = { trip_id = "text", duration = "int" }
[publish]
path = "pub/{label}.csv"
format = "csv"
columns = { duration = "int" }
"""


@pytest.mark.parametrize("mode", ["upsert", "insert", "replace"])
def test_a_key_twice_in_a_block_is_published_as_loaded_and_counted_a_duplicate(
    tmp_path: Path, mode: str
) -> None:
    """The load kept the last record of a key (replace: the first) and counted both as
    processed; the publish file had both: file and table disagreed. Both have the last record
    per key now, and the other is counted a duplicate, not processed."""
    root = make_project(tmp_path, task=DUPS_TASK.replace("MODE", mode))
    (root / "dups.py").write_text(
        'def trips(block, config):\n    return [{"trip_id": "t", "duration": 0}, {"trip_id": "t", "duration": 99}]\n'
    )
    sys.modules.pop("dups", None)
    result = CliRunner().invoke(
        main, ["-C", str(root), "blocks", "trips", "--time-max", "2020-1-1-1", "--json"]
    )
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(root / "data.db")
    try:
        assert conn.execute("SELECT trip_id, duration FROM trips").fetchall() == [("t", 99)]
    finally:
        conn.close()
    assert (root / "out" / "pub" / "2020-01-01T01:00+00:00.csv").read_text().split() == ["duration", "99"]
    stages = {e["stage"]: e for e in json.loads(result.output)[0]["stages"]}
    for stage in ("load", "publish"):
        entry = stages[stage]
        assert (entry["records"], entry["processed"], entry["errors"], entry["duplicates"]) == (2, 1, 0, 1)
        assert "trip_id='t'" in entry["error"] and "the last is kept" in entry["error"]


@pytest.mark.parametrize("stage", ["load", "publish"])
def test_a_keyed_stage_does_not_hold_the_blocks_records(tmp_path: Path, stage: str) -> None:
    """A load or a publish of a task with a keyed load kept every record of the block as a dict
    to find the last per key: 637 MB of memory for a 74 MB artifact of 500,000 records. A first
    pass finds the last records' places, a second reads them: the records are never all held."""
    import tracemalloc

    root = make_project(tmp_path, task=DUPS_TASK.replace("MODE", "upsert").replace(
        "{ duration = \"int\" }", "{ duration = \"int\", pad = \"text\" }"))  # fmt: skip
    (root / "dups.py").write_text(
        "def trips(block, config):\n"
        "    return ({'trip_id': f't{i % 19999}', 'duration': i, 'pad': 'x' * 100} for i in range(20000))\n"
    )
    sys.modules.pop("dups", None)
    sys.path[:] = [p for p in sys.path if not Path(p, "dups.py").exists()]  # other tests' projects
    args = ["-C", str(root), "blocks", "trips", "--time-max", "2020-1-1-1"]
    assert CliRunner().invoke(main, [*args, "--stage", "extract"]).exit_code == 0
    if stage == "publish":
        assert CliRunner().invoke(main, [*args, "--stage", "load"]).exit_code == 0
    size = (root / "out" / "extract" / "2020-01-01T01:00+00:00.jsonl").stat().st_size
    tracemalloc.start()
    try:
        result = CliRunner().invoke(main, [*args, "--stage", stage, "--json"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)[0]["stages"]
    assert (entry["records"], entry["processed"], entry["duplicates"]) == (20000, 19999, 1)
    assert peak < 5 * size, f"{peak / size:.1f} times the artifact's {size} bytes held"


@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        ("timestamptz", "2024-01-01T00:00:00+00:00", "2024-01-01T01:00:00+01:00"),
        ("timestamptz", 1704067200, "2024-01-01T01:00:00+01:00"),
        ("float", 0.0, -0.0),
    ],
)
def test_records_of_one_key_value_however_written_are_one_key(kind: str, first: Any, second: Any) -> None:
    """A timestamptz key of one instant written with two offsets is one row of a PostgreSQL or
    MariaDB table (and 0.0, -0.0 one float key): the block's records were kept as two keys, so an
    insert kept the first and the publish file had both."""
    from sluicegate.records import Columns, KeptPerKey

    columns = Columns(columns=(("k", kind), ("v", "int")), key=("k",))
    last = KeptPerKey.of([{"k": first, "v": 1}, {"k": second, "v": 2}], columns)
    assert (last.numbers, last.duplicates) == ({2}, 1), last


def test_an_integer_key_from_an_expression_is_read_not_taken_for_no_data(tmp_path: Path) -> None:
    """keys_sql gives 1; select.sql's key is an expression (no integer affinity on SQLite), which
    compared 1 with the ledger's '1' as different: every block was "no data", never retried."""
    task = SQL_TASK.replace("SELECT DISTINCT provider FROM rides", "SELECT pid FROM prov").replace(
        'provider = "text"', 'provider = "int"'
    )
    root = make_project(tmp_path, task=task)
    conn = sqlite3.connect(root / "data.db")
    conn.execute("CREATE TABLE prov (pid INTEGER)")
    conn.execute("INSERT INTO prov VALUES (1)")
    conn.execute("CREATE TABLE rides (ride INTEGER, pid INTEGER, ended_at TEXT)")
    conn.execute("INSERT INTO rides VALUES (7, 1, '2020-01-01T06:10:00Z')")
    conn.commit()
    (root / "tasks" / "trips" / "select.sql").write_text(
        "SELECT ride, pid + 0 AS provider, ended_at FROM rides"
    )
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "1")  # 06:00Z-07:00Z
    assert result.exit_code == 0, result.output
    statuses = {(r[0], r[2]): r[3] for r in ledger_rows(root)}
    assert statuses == {("1", "extract"): "done", ("1", "publish"): "done"}
    [record] = read_records((root / "out/extract/1/2020-01-01T01:00-06:00.jsonl").read_bytes())
    assert record["ride"] == 7


def test_a_key_value_that_only_looks_like_an_integer_fails_its_own_blocks_not_the_run(tmp_path: Path) -> None:
    """``keys = ["1", "²", "--1"]`` with an integer key column: "²" is a digit to str.isdigit and
    "--1" stripped of its dashes is one, and int() refused both, so the run ended in a traceback
    with every block, key value 1's too, left pending. Neither is an integer: no row of the
    integer column has them (no data), and the others run."""
    task = SQL_TASK.replace(
        'keys_sql = "SELECT DISTINCT provider FROM rides"', 'keys = ["1", "\u00b2", "--1"]'
    )
    root = make_project(tmp_path, task=task.replace('provider = "text"', 'provider = "int"'))
    with_rides(root, [], select="SELECT ride, pid AS provider, ended_at FROM rides")
    conn = sqlite3.connect(root / "data.db")
    conn.execute("ALTER TABLE rides ADD COLUMN pid INTEGER")
    conn.execute("INSERT INTO rides VALUES (7, 'x', '2020-01-01T06:10:00Z', 1)")
    conn.commit()
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "1")
    assert result.exit_code == 0, (result.output, result.exception)
    statuses = {(r[0], r[2]): r[3] for r in ledger_rows(root)}
    assert statuses[("1", "publish")] == "done"
    assert {statuses[(k, "extract")] for k in ("\u00b2", "--1")} == {"no_data"}, statuses


def test_a_forced_rerun_that_finds_no_rows_removes_the_later_stages_files(tmp_path: Path) -> None:
    """The publish file of rows since deleted stayed in place (and on the ledger as the publish's
    artifact) while the ledger said "no data" for the block."""
    root = make_project(
        tmp_path, task=SQL_TASK.replace("SELECT DISTINCT provider FROM rides", "SELECT 'lime'")
    )
    conn = with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z")])
    assert blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "1").exit_code == 0
    published = root / "out/csv/lime/20200101T0100-0600.csv"
    assert published.exists() and "1,lime," in published.read_text()
    conn.execute("DELETE FROM rides")
    conn.commit()
    again = blocks_cli(
        root, "--time-max", "2020-1-1-1", "--interval", "1", "--key", "provider=lime", "--force"
    )
    assert again.exit_code == 0, again.output
    assert not published.exists() and not (root / "out/extract/lime/2020-01-01T01:00-06:00.jsonl").exists()
    artifacts = conn.execute("SELECT stage, status, artifact FROM sluicegate_blocks WHERE key_value = 'lime'")
    assert sorted(artifacts.fetchall()) == [("extract", "no_data", None), ("publish", "no_data", None)]


def test_a_key_value_keys_sql_no_longer_returns_is_not_worked_on(tmp_path: Path) -> None:
    """The same for ``keys_sql``: a provider whose rides are gone is no longer a key value, and
    its pending publish stayed claimable (a run published its file anyway)."""
    root = make_project(tmp_path, task=SQL_TASK)
    conn = with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z"), (2, "bird", "2020-01-01T06:20:00Z")])
    assert (
        blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "1", "--stage", "extract").exit_code == 0
    )
    conn.execute("DELETE FROM rides WHERE provider = 'bird'")
    conn.commit()
    for args in (["blocks", "trips", "--time-max", "2020-1-1-1", "--interval", "1"], ["run", "trips"]):
        result = CliRunner().invoke(main, ["-C", str(root), *args])
        assert result.exit_code == 0, result.output
    assert (root / "out/csv/lime/20200101T0100-0600.csv").exists()
    assert not (root / "out/csv/bird").exists()
    statuses = {(r[0], r[2]): r[3] for r in ledger_rows(root)}
    assert statuses == {("bird", "extract"): "done", ("bird", "publish"): "pending",
                        ("lime", "extract"): "done", ("lime", "publish"): "done"}  # fmt: skip


@pytest.mark.parametrize(
    ("select", "task_change", "message"),
    [
        ("SELECT ride, ended_at FROM rides", None, "key: 'provider' is not a column of select.sql's result"),
        (
            RIDES_SELECT,
            ('time = "ended_at"', 'time = "ended"'),
            "[extract] time: 'ended' is not a column of select.sql's result",
        ),
        (RIDES_SELECT, ("FROM rides", "FROM nosuch"), "keys_sql: "),
    ],
)
def test_a_select_or_key_query_that_cannot_work_stops_the_run_before_any_block(
    tmp_path: Path, select: str, task_change: tuple[str, str] | None, message: str
) -> None:
    """Each block failed with "no such column: q.provider" (an alias of ours, naming neither the
    file nor the setting), counting attempts; a broken keys_sql exited 1 naming only the database."""
    task = SQL_TASK if task_change is None else SQL_TASK.replace(*task_change)
    root = make_project(tmp_path, task=task)
    conn = with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z")], select)
    result = blocks_cli(root, "--time-max", "2020-1-1-1", "--interval", "1")
    assert result.exit_code == 2, result.output
    assert message in result.output and "task.toml" in result.output and "Traceback" not in result.output
    made = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sluicegate_blocks'").fetchone()[0]
    assert not made or all(r[4] == 0 for r in ledger_rows(root))  # no block was tried


@pytest.mark.parametrize("zone", ["Africa/Casablanca", "America/Sao_Paulo", "Australia/Lord_Howe", "UTC"])
def test_transition_days_are_every_day_the_offset_changes(zone: str) -> None:
    """Weeks whose ends share an offset are skipped: Casablanca changes twice within a month."""
    from sluicegate.timeblocks import transition_days

    tz = ZoneInfo(zone)
    for year in (2019, 2024):
        days = [dt.date(year, 1, 1) + dt.timedelta(days=n) for n in range(366)]
        every = [
            d for d in days if d.year == year and dt.datetime.combine(d, dt.time(), tzinfo=tz).utcoffset()
            != dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=tz).utcoffset()
        ]  # fmt: skip
        assert transition_days(zone, year) == every


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"next": "http://mds.test/p/trips?page=1"}, "a page it had served already"),
        (["http://mds.test/p/trips?page=1"], "which is not a URL"),
        ({"next": 7}, "which is not a URL"),
    ],
    ids=["loop", "links-a-list", "next-a-number"],
)
def test_mds_paging_that_loops_or_is_not_a_url_is_terminal(
    monkeypatch: pytest.MonkeyPatch, links: Any, message: str
) -> None:
    """A provider whose links.next led back to a page it had served kept the extract reading the
    same trips for ever (its lease renewed, so no other run could take the block)."""
    import httpx

    from sluicegate import httpclient, mds
    from sluicegate.exceptions import TerminalError
    from sluicegate.timeblocks import Block, StageBlock

    served = []

    def answer(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        if len(served) > 10:
            raise AssertionError("the extract follows links.next for ever")
        return httpx.Response(200, json={"data": {"trips": [{"trip_id": "t1"}]}, "links": links})

    monkeypatch.setattr(
        httpclient, "client", lambda **kw: httpx.Client(transport=httpx.MockTransport(answer), **kw)
    )
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    block = StageBlock(
        task="trips",
        stage="extract",
        key="provider",
        key_value="p",
        block=Block(start=start, end=start + dt.timedelta(hours=1), zone="UTC"),
    )
    with pytest.raises(TerminalError, match=message):
        list(mds.trips(block, {"url": "http://mds.test/p"}))
    assert len(served) <= 3


@pytest.mark.parametrize(
    ("setting", "units", "message"),
    [
        ("units", "seconds", "units 'seconds' is not a unit"),
        ("units", "S", "units 'S' is not a unit"),
        ("units", 1000, "units 1000 is not a unit"),
        ("retries", -1, "retries -1 is not a whole number of at least 0"),
        ("retries", 1.5, "retries 1.5 is not a whole number"),
        ("timeout", "30s", "timeout '30s' is not a number of seconds above 0"),
        ("timeout", 0, "timeout 0 is not a number of seconds above 0"),
        ("max_wait", None, "max_wait None is not a number of seconds"),
        # TOML's inf and nan: int() of them raised OverflowError/ValueError, naming no setting
        ("retries", float("inf"), "retries inf is not a whole number of at least 0"),
        ("retries", float("nan"), "retries nan is not a whole number of at least 0"),
        ("timeout", float("nan"), "timeout nan is not a number of seconds above 0"),
        ("timeout", float("inf"), "timeout inf is not a number of seconds above 0"),
        ("max_wait", float("nan"), "max_wait nan is not a number of seconds"),
    ],
)
def test_mds_settings_that_cannot_work_are_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, setting: str, units: Any, message: str
) -> None:
    """``units = "seconds"`` was read as milliseconds: the provider was asked for 1970, answered
    no trips, and every block of the range was recorded "no data", never fetched again.
    ``retries = -1`` parked every block with "AssertionError: unreachable"."""
    import httpx

    from sluicegate import httpclient, mds
    from sluicegate.timeblocks import Block, StageBlock

    served = []

    def answer(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return httpx.Response(200, json={"data": {"trips": []}})

    monkeypatch.setattr(
        httpclient, "client", lambda **kw: httpx.Client(transport=httpx.MockTransport(answer), **kw)
    )
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    block = Block(start=start, end=start + dt.timedelta(hours=1), zone="UTC")
    stage_block = StageBlock(task="trips", stage="extract", key="provider", key_value="p", block=block)
    with pytest.raises(ConfigError, match=re.escape(message)):
        list(mds.trips(stage_block, {"url": "http://mds.test/p", setting: units}))
    assert served == []


def test_an_mds_redirect_is_named_not_taken_for_a_page_that_is_not_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A provider that moved its API (301 to https, or to /trips/) parked every block with
    "answered with something that is not JSON": the client does not follow redirects (the token
    would go to the new address unasked), and the message sent the operator to the wrong cause."""
    import httpx

    from sluicegate import httpclient, mds
    from sluicegate.exceptions import TerminalError
    from sluicegate.timeblocks import Block, StageBlock

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            301, headers={"Location": "https://mds.test/v2/trips"}, text="<html>moved</html>"
        )

    monkeypatch.setattr(
        httpclient, "client", lambda **kw: httpx.Client(transport=httpx.MockTransport(answer), **kw)
    )
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    block = Block(start=start, end=start + dt.timedelta(hours=1), zone="UTC")
    stage_block = StageBlock(task="trips", stage="extract", key="provider", key_value="p", block=block)
    with pytest.raises(TerminalError, match=r"HTTP 301, a redirect to https://mds\.test/v2/trips; set url"):
        list(mds.trips(stage_block, {"url": "http://mds.test/p"}))


def test_an_extract_sql_key_is_refused_not_ignored(tmp_path: Path) -> None:
    """[extract] took ``sql`` and never read it: a query written there ran nowhere, silently.
    An extract from SQL reads select.sql (``time``), as docs/tasks.md says."""
    root = make_project(tmp_path, extract_extra='sql = "SELECT * FROM trips"')
    [problem] = load_project(root).problems
    assert "sql" in problem.message and "[extract]" in problem.message


@pytest.mark.parametrize(
    ("stage", "line", "message"),
    [
        ("load", "create = true", "[load]: a load by callable writes where it likes; remove create"),
        (
            "load",
            'columns = { trip_id = "text" }',
            "[load]: a load by callable writes where it likes; remove columns",
        ),
        ("load", 'mode = "replace"', "[load]: a load by callable writes where it likes; remove mode"),
        ("load", 'key = ["trip_id"]', "[load]: a load by callable writes where it likes; remove key"),
        (
            "load",
            'url = "sqlite:///other.db"',
            "[load]: a load by callable writes where it likes; remove url",
        ),
        ("publish", 'columns = { trip_id = "text" }', "[publish]: publish to a callable or to a file"),
    ],
)
def test_built_in_settings_of_a_stage_run_by_a_callable_are_refused(
    tmp_path: Path, stage: str, line: str, message: str
) -> None:
    """A stage with a ``callable`` replaces the built-in, whose settings then do nothing: a load
    by callable kept ``create = true`` or ``columns`` and no table was made or checked, with no
    word (only ``table``, and a publish's ``path`` and ``format``, were refused)."""
    task = """
    kind = "blocks"
    zone = "UTC"
    [extract]
    callable = "etl:trips"
    [load]
    callable = "etl:portal"
    [publish]
    callable = "etl:portal"
    """.replace(
        f'[{stage}]\n    callable = "etl:portal"\n', f'[{stage}]\n    callable = "etl:portal"\n    {line}\n'
    )
    assert line in task
    root = make_project(tmp_path, task=task)
    sys.modules.pop("etl", None)
    result = CliRunner().invoke(main, ["-C", str(root), "check"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "task.toml" in result.output, result.output
