"""A blocks task's schedule: each tick of `sluicegate serve`'s scheduler and each scheduled event of the
Lambda handler runs the blocks that ended since the newest block on the ledger, as a request.

They started runs without a request, which work only on the blocks already on the ledger: a blocks
task with ``schedule = "5 * * * *"`` never made a block, and each tick's run did nothing, silently.
The ledger is SQLite, PostgreSQL or MariaDB (its ``frontier`` query is one per dialect); the
scheduler is driven with the ticks it is given, as in test_service.py, and runs on a real RunManager.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from test_aws_lambda import SCHEDULED_EVENT, Context, log_lines

from sluicegate import aws_lambda, operations
from sluicegate.cli import main
from sluicegate.config import load_project
from sluicegate.exceptions import SluicegateError
from sluicegate.service.runs import Metrics, RunManager
from sluicegate.service.scheduler import Scheduler
from support import SLUICEGATE

UTC = dt.UTC
H = dt.timedelta(hours=1)
PAST = dt.datetime(2024, 6, 1, 10, 7, 30, tzinfo=UTC)  # a look 2.5 minutes after the 10:05 tick


@pytest.fixture(params=["sqlite", "pg", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def ledger_setting(request: pytest.FixtureRequest) -> str:
    """The project's ``[ledger]`` table: none (the SQLite source), PostgreSQL or MariaDB."""
    if request.param == "sqlite":
        return ""
    url = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return f'[ledger]\nurl = "{url}"\n'


def _project(root: Path, ledger: str, settle: str = "0s") -> Path:
    """Blocks task t: one record per hour block of key a, scheduled at 5 past every hour, in UTC."""
    (root / "tasks" / "t").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "sqlite:///blk.db"\n{ledger}[destination]\nurl = "{root / "out"}"\n'
    )
    (root / "hourly_records.py").write_text("def records(block, config):\n    return [{'id': block.label}]\n")
    (root / "tasks" / "t" / "task.toml").write_text(
        'kind = "blocks"\nzone = "UTC"\nkey = "provider"\nkeys = ["a"]\nstages = ["extract"]\n'
        f'schedule = "5 * * * *"\nsettle = "{settle}"\n'
        '[extract]\ncallable = "hourly_records:records"\npath = "{stage}/{provider}/{label}.jsonl"\n'
    )
    return root


def _written(root: Path) -> list[str]:
    """The blocks whose file is in the destination, oldest first."""
    folder = root / "out" / "extract" / "a"
    return sorted(p.name.removesuffix(".jsonl") for p in folder.iterdir()) if folder.exists() else []


def _hours(*ends: dt.datetime) -> list[str]:
    return [e.isoformat(timespec="minutes") for e in ends]


class Looks:
    """A scheduler on a real RunManager over the project at ``root``, looked at with given times."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manager = RunManager(lambda: load_project(root, {}), Metrics())
        self.scheduler = Scheduler(lambda: load_project(root, {}), self.manager)

    def __call__(self, now: dt.datetime, settle: str | None = None) -> list[dict[str, Any]]:
        """One look at ``now`` (``settle`` set first); the runs it started, once finished."""
        if settle is not None:
            toml = self.root / "tasks" / "t" / "task.toml"
            toml.write_text(re.sub(r'settle = "[^"]*"', f'settle = "{settle}"', toml.read_text()))
        return [_finished(self.root, run_id) for run_id in self.scheduler.tick(now)]


@pytest.fixture
def scheduled(tmp_path: Path, ledger_setting: str) -> Iterator[Looks]:
    root = _project(tmp_path / "proj", ledger_setting)
    operations.install(load_project(root, {}))
    looks = Looks(root)
    try:
        yield looks
    finally:
        looks.manager.close()


def _finished(root: Path, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    with operations.ledger_of(load_project(root, {})) as ledger:
        while time.monotonic() < deadline:
            run = ledger.runs.get(run_id)
            if run is not None and run["state"] != "running":
                return run
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def _stages(run: dict[str, Any]) -> list[str]:
    [summary] = run["summary"]
    assert not summary.get("task_errors") and not summary.get("failed"), summary
    return [s["block"] for s in summary["stages"]]


def _clear_of_the_hours_turn() -> None:
    """Wait, if need be, until the clock is 30 s past the hour and a minute from the next: these
    tests take the hour from the real clock, with which settledness is judged, and look 10 or 20 s
    past it (at an hourly tick), which must not be in the future, nor the hour turn meanwhile."""
    if not 30 <= (into := time.time() % 3600) <= 3540:
        time.sleep((3630 - into) % 3600)


def test_a_scheduled_blocks_task_runs_the_last_hours_block_then_every_block_since(scheduled: Looks) -> None:
    """The first tick (nothing on the ledger) runs the hour that ended by it; a tick three hours
    later (the service down in between) runs the three blocks since the newest on the ledger."""
    [first] = scheduled(PAST)
    assert _stages(first) == _hours(dt.datetime(2024, 6, 1, 10, tzinfo=UTC))
    [later] = scheduled(PAST + 3 * H)
    assert _stages(later) == _hours(*(dt.datetime(2024, 6, 1, h, tzinfo=UTC) for h in (11, 12, 13)))
    assert _written(scheduled.root) == _hours(
        *(dt.datetime(2024, 6, 1, h, tzinfo=UTC) for h in range(10, 14))
    )
    assert scheduled(PAST + 3 * H + dt.timedelta(seconds=5)) == []  # the same tick: fired once


def test_a_tick_runs_the_blocks_an_earlier_one_left_out_as_unsettled_and_one_with_none_settled_is_no_error(
    scheduled: Looks, caplog: pytest.LogCaptureFixture
) -> None:
    """With settle, a tick leaves out the blocks that ended less than settle ago; a tick none of
    whose blocks has settled starts no run (it was a run of nothing, and would have been an error
    retried every look had it asked for them), and is fired all the same; a later tick runs them."""
    toml = scheduled.root / "tasks" / "t" / "task.toml"
    toml.write_text(toml.read_text().replace('schedule = "5 * * * *"', 'schedule = "0 * * * *"'))
    _clear_of_the_hours_turn()
    now = dt.datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)  # settled at 3h: blocks ending by hour - 3h
    [first] = scheduled(hour - 2 * H + dt.timedelta(seconds=10), settle="3h")
    assert _stages(first) == _hours(hour - 5 * H, hour - 4 * H, hour - 3 * H)  # hour - 2h left out
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert scheduled(hour - H + dt.timedelta(seconds=10)) == []
    quiet = [r for r in caplog.records if "has no block to run" in r.getMessage()]
    assert quiet and quiet[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert scheduled(hour - H + dt.timedelta(seconds=20)) == []  # fired: not looked at again
    [later] = scheduled(hour + dt.timedelta(seconds=10), settle="1h")
    assert _stages(later) == _hours(hour - 2 * H, hour - H)  # the one left out before, and the next
    assert _written(scheduled.root) == _hours(*(hour - n * H for n in range(5, 0, -1)))


def test_a_scheduled_event_runs_the_blocks_since_the_ledgers_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lambda's scheduled event ran a blocks task without a request: nothing, every time. It
    runs the blocks that ended by now since the newest on the ledger, and then, with none new, nothing."""
    _clear_of_the_hours_turn()
    root = _project(tmp_path / "task-root" / "project", "")
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ran = CliRunner().invoke(main, ["-C", str(root), "blocks", "t", "--time-max", (hour - 3 * H).isoformat()])
    assert ran.exit_code == 0, ran.output
    assert _written(root) == _hours(hour - 3 * H)
    event = copy.deepcopy(SCHEDULED_EVENT)
    event["detail"] = {"tasks": ["t"]}
    result = aws_lambda.handler(event, Context(remaining_s=600.0))
    assert result["ok"] is True and result["tasks"][0]["task"] == "t", result
    assert _written(root) == _hours(*(hour - n * H for n in range(3, -1, -1)))
    again = aws_lambda.handler(event, Context(remaining_s=600.0))
    assert again["ok"] is True and [t["task"] for t in again["tasks"]] == ["t"], again
    assert _written(root) == _hours(*(hour - n * H for n in range(3, -1, -1)))


def test_a_tick_after_years_down_asks_for_no_more_blocks_than_a_request_may_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From a frontier 10 years back, the range would hold more than 50,000 hour blocks, refused as
    too long at every tick: it is cut to its newest 49,000 hours, with a warning naming the rest."""
    from sluicegate import block_requests

    root = _project(tmp_path / "proj", "")
    ran = CliRunner().invoke(main, ["-C", str(root), "blocks", "t", "--time-max", "2016-01-01T01:00Z"])
    assert ran.exit_code == 0, ran.output
    project = load_project(root, {})
    tick = dt.datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    with operations.ledger_of(project) as ledger, caplog.at_level(logging.WARNING):
        request = block_requests.scheduled_request(project, project.task("t"), tick, ledger)
    assert request is not None and request.time_max == tick
    assert request.time_min == tick - dt.timedelta(hours=49_000)
    [capped] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "runs the blocks of its last 49000 hours only" in capped, capped
    assert " blocks t --time-min 2016-01-01T01:00:00+00:00 --time-max 2020-05-30T08:05:00+00:00'" in capped


def test_a_daily_tick_of_a_day_blocks_task_runs_the_day_before(tmp_path: Path) -> None:
    """With nothing on the ledger a tick reached back an hour: a day-grain task scheduled at 06:00
    held no midnight in it, made no block, and so never had a frontier to go on from."""
    root = _project(tmp_path / "proj", "")
    toml = root / "tasks" / "t" / "task.toml"
    toml.write_text(
        toml.read_text()
        .replace('schedule = "5 * * * *"', 'schedule = "0 6 * * *"\ngrain = "day"')
        .replace('zone = "UTC"', 'zone = "America/Chicago"')
    )
    operations.install(load_project(root, {}))
    looks = Looks(root)
    try:
        [first] = looks(dt.datetime(2024, 6, 1, 11, 0, 30, tzinfo=UTC))  # 06:00 in Chicago
        assert _stages(first) == ["2024-05-31"]
        [later] = looks(dt.datetime(2024, 6, 3, 11, 0, 30, tzinfo=UTC))
        assert _stages(later) == ["2024-06-01", "2024-06-02"]
    finally:
        looks.manager.close()


def test_a_tick_whose_keys_sql_fails_is_one_error_not_a_warning_every_look(
    scheduled: Looks, caplog: pytest.LogCaptureFixture
) -> None:
    """A keys_sql the source refuses (a table dropped) is no outage a look later fixes: the tick's
    request was asked for again, the query run again and a warning logged, every 5 s until the next
    tick, and every tick after. It is one error naming the query, and the tick counts as fired."""
    toml = scheduled.root / "tasks" / "t" / "task.toml"
    toml.write_text(toml.read_text().replace('keys = ["a"]', 'keys_sql = "SELECT provider FROM gone"'))
    with caplog.at_level(logging.WARNING):
        assert scheduled(PAST) == []
        assert scheduled(PAST + dt.timedelta(seconds=5)) == []
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.ERROR], caplog.text
    assert "keys_sql" in said[0].getMessage() and "gone" in said[0].getMessage(), caplog.text


# fails the block that ends at 10:00 once, as a provider down for a moment: retried with backoff
FAILS_ONCE = """from pathlib import Path
def records(block, config):
    flag = Path(config["folder"], "failed-once")
    if block.end.hour == 10 and not flag.exists():
        flag.write_text("")
        raise ConnectionError("the provider is down")
    return [{"id": block.label}]
"""

# hangs while the file "hang" is there: a run killed in the middle of a block
HANGS = """import time
from pathlib import Path
def records(block, config):
    while Path(config["folder"], "hang").exists():
        time.sleep(0.1)
    return [{"id": block.label}]
"""


def test_a_tick_retries_a_block_a_tick_before_failed_though_the_frontier_is_past_it(scheduled: Looks) -> None:
    """A stage that failed for a moment is retried with backoff by later runs; but a tick asked only for the
    blocks after the ledger's newest, and the failed block was before it from then on: never run again.
    A tick runs, after its own blocks' rows are made, what is due on the ledger, as `sluicegate run` does."""
    _callable(scheduled.root, "fails_once", FAILS_ONCE)
    toml = scheduled.root / "tasks" / "t" / "task.toml"
    toml.write_text(toml.read_text().replace('stages = ["extract"]', 'stages = ["extract"]\nbackoff = "1s"'))
    [first] = scheduled(PAST)
    [summary] = first["summary"]
    assert [(s["status"], s["error"]) for s in summary["stages"]] == [
        ("failed", "fails_once:records for a 2024-06-01T10:00+00:00 extract: ConnectionError: the provider is"
         " down; will retry")
    ]  # fmt: skip
    time.sleep(1.1)  # its backoff
    [later] = scheduled(PAST + H)  # its range is the block ending at 11:00
    both = _hours(dt.datetime(2024, 6, 1, 10, tzinfo=UTC), dt.datetime(2024, 6, 1, 11, tzinfo=UTC))
    assert _stages(later) == both and _written(scheduled.root) == both


def test_a_scheduled_event_runs_the_block_of_a_run_killed_in_its_middle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run SIGKILLed in the middle of a block leaves it claimed, and its block on the ledger: the next
    scheduled event asked for the blocks after it only, so the block stayed "running" (its lease long
    expired) for good. The next event takes it over, with the blocks since."""
    _clear_of_the_hours_turn()
    root = _project(tmp_path / "task-root" / "project", "")
    settings = root / "sluicegate.toml"
    settings.write_text(settings.read_text() + '[defaults]\nlease = "1s"\n')
    _callable(root, "hangs", HANGS)
    (root / "hang").write_text("")
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    args = [SLUICEGATE, "-C", str(root), "blocks", "t", "--time-max", (hour - 2 * H).isoformat()]
    killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_running(root, killed)
    finally:
        killed.kill()
        killed.wait()
    (root / "hang").unlink()
    time.sleep(1.5)  # its lease runs out
    event = copy.deepcopy(SCHEDULED_EVENT)
    event["detail"] = {"tasks": ["t"]}
    result = aws_lambda.handler(event, Context(remaining_s=600.0))
    assert result["ok"] is True, result
    assert _written(root) == _hours(hour - 2 * H, hour - H, hour)


def _callable(root: Path, module: str, text: str) -> None:
    """Task t's extract calls ``module:records`` (a name of its own: a module is imported once a process),
    given the project's folder as ``config["folder"]``."""
    (root / f"{module}.py").write_text(text)
    toml = root / "tasks" / "t" / "task.toml"
    text = toml.read_text().replace("hourly_records:records", f"{module}:records")
    toml.write_text(text + f'[config]\nfolder = "{root}"\n')


def _wait_running(root: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until a block of ``root``'s task t is running (claimed by ``proc``)."""
    deadline = time.monotonic() + 60
    with operations.ledger_of(load_project(root, {})) as ledger:
        while not ledger.blocks.list_rows("t", status="running", limit=1, offset=0):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not claim its block"
            time.sleep(0.05)


# sleeps in the insert of a block's rows (the ledger's second transaction of them): a run killed there
SLEEP_IN_ENSURE = """
CREATE FUNCTION sluicegate.slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(600); RETURN NEW; END $$;
CREATE TRIGGER slow_insert BEFORE INSERT ON sluicegate.blocks FOR EACH ROW
WHEN (NEW.block_start >= '2024-05-31T00:00Z') EXECUTE FUNCTION sluicegate.slow_insert();
"""


def test_a_run_killed_while_it_makes_its_blocks_rows_leaves_no_block_without_a_key_value(
    tmp_path: Path, pg_url: str
) -> None:
    """A range's rows are made in transactions of 2,000: the first of 700 hours of three key values ended in
    the middle of a block, with two of its key values. A run killed before the second committed left that
    block the ledger's newest, and the next tick asked for the blocks after it: its third key value's row
    was never made, nor its block exported. Each transaction makes whole blocks."""
    root = _project(tmp_path / "proj", f'[ledger]\nurl = "{pg_url}"\n')
    toml = root / "tasks" / "t" / "task.toml"
    toml.write_text(toml.read_text().replace('keys = ["a"]', 'keys = ["a", "b", "c"]'))
    _callable(root, "nothing_yet", "def records(block, config):\n    return []\n")
    operations.install(load_project(root, {}))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SLEEP_IN_ENSURE)
        first = dt.datetime(2024, 5, 3, tzinfo=UTC)
        args = ["blocks", "t", "--time-min", first.isoformat(), "--time-max", "2024-06-01T04:00Z"]
        killed = subprocess.Popen([SLUICEGATE, "-C", str(root), *args], stderr=subprocess.DEVNULL)
        sleeping = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        deadline = time.monotonic() + 60
        while not (pid := conn.execute(sleeping).fetchall()):
            assert killed.poll() is None and time.monotonic() < deadline, "the run made no rows"
            time.sleep(0.05)
        killed.kill()
        killed.wait()
        conn.execute("SELECT pg_terminate_backend(%s)", pid[0])  # its transaction rolled back
        conn.execute("DROP TRIGGER slow_insert ON sluicegate.blocks")
    looks = Looks(root)
    try:
        looks(PAST)  # from the ledger's newest block to 10:05
    finally:
        looks.manager.close()
    with operations.ledger_of(load_project(root, {})) as ledger:
        rows = ledger.blocks.list_rows("t", status=None, limit=5000, offset=0)
    ends = [first + n * H for n in range(1, 24 * 29 + 11)]  # to the block that ended at 10:00 on 1 June
    missing = {(k, e) for k in "abc" for e in ends} - {(r["key_value"], r["block_end"]) for r in rows}
    assert len(rows) == 3 * len(ends) and not missing, sorted(missing)


def test_a_tick_whose_request_is_refused_is_the_tasks_error_in_status_until_a_tick_runs(
    scheduled: Looks,
) -> None:
    """The refused tick was one log line only: `sluicegate status` (and the service's status page)
    said nothing of a task whose every tick was refused. It is the task's error on the ledger, as a
    failed run's is, until a tick's run succeeds."""
    ran = CliRunner().invoke(
        main, ["-C", str(scheduled.root), "blocks", "t", "--time-max", "2024-06-01T09:00Z"]
    )
    assert ran.exit_code == 0, ran.output
    toml = scheduled.root / "tasks" / "t" / "task.toml"
    good = toml.read_text()
    toml.write_text(good.replace('keys = ["a"]', 'keys_sql = "SELECT provider FROM gone"'))
    assert scheduled(PAST) == []
    [status] = operations.status(load_project(scheduled.root, {}))
    assert "keys_sql" in status["task_error"] and "gone" in status["task_error"], status
    toml.write_text(good)
    [later] = scheduled(PAST + H)
    assert _stages(later) == _hours(
        dt.datetime(2024, 6, 1, 10, tzinfo=UTC), dt.datetime(2024, 6, 1, 11, tzinfo=UTC)
    )
    [status] = operations.status(load_project(scheduled.root, {}))
    assert "task_error" not in status, status


def _refusing(root: Path, name: str, table: str) -> None:
    """Blocks task ``name``, task t's twin writing under ``name/``, whose keys_sql reads ``table``, a
    table the source has not: its scheduled request is refused before any run."""
    (root / "tasks" / name).mkdir()
    toml = (root / "tasks" / "t" / "task.toml").read_text()
    (root / "tasks" / name / "task.toml").write_text(
        toml.replace('keys = ["a"]', f'keys_sql = "SELECT provider FROM {table}"').replace(
            'path = "{stage}/', f'path = "{name}/{{stage}}/'
        )
    )


def _lambda_project(tmp_path: Path, ledger: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = _project(tmp_path / "task-root" / "project", ledger)
    operations.install(load_project(root, {}))
    monkeypatch.setenv("SLUICEGATE_PROJECT", str(root))
    return root


def test_a_scheduled_event_runs_the_other_tasks_when_one_blocks_request_is_refused(
    tmp_path: Path, ledger_setting: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One blocks task's request refused (its keys_sql reads a dropped table) failed the whole
    invocation: the requests of all blocks tasks were asked for before any ran, so task t's blocks
    were not run, and the refusal was in one log line only. Each task goes on its own: t runs, the
    refusal is that task's error in the result, the log line and on the ledger (status shows it),
    and the result says ok false."""
    _clear_of_the_hours_turn()
    root = _lambda_project(tmp_path, ledger_setting, monkeypatch)
    _refusing(root, "bad", "gone")
    hour = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    result = aws_lambda.handler(SCHEDULED_EVENT, Context(remaining_s=600.0))
    assert _written(root) == _hours(hour)  # t ran its block
    summaries = {s["task"]: s for s in result["tasks"]}
    assert result["ok"] is False and summaries["t"]["ok"] is True, result
    [refusal] = summaries["bad"]["task_errors"]
    assert "tasks/bad/task.toml keys_sql" in refusal and "gone" in refusal and "fix the query" in refusal
    [line] = log_lines(capsys)
    assert line["ok"] is False and [s["task"] for s in line["summaries"]] == ["bad", "t"], line
    assert line["summaries"][0]["task_errors"] == [refusal]
    statuses = {s["task"]: s for s in operations.status(load_project(root, {}))}
    assert refusal in statuses["bad"]["task_error"] and "task_error" not in statuses["t"], statuses


def test_a_scheduled_event_none_of_whose_tasks_ran_fails_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every task refused: the invocation fails, so Lambda counts an error (its alarm, its retry),
    and the error names each task's refusal, not only the first one's; the log line has them all."""
    root = _lambda_project(tmp_path, "", monkeypatch)
    _refusing(root, "bad", "gone")
    _refusing(root, "worse", "lost")
    event = copy.deepcopy(SCHEDULED_EVENT)
    event["detail"] = {"tasks": ["bad", "worse"]}
    with pytest.raises(SluicegateError, match=r"task bad: .*no such table: gone") as raised:
        aws_lambda.handler(event, Context(remaining_s=600.0))
    assert "task worse: " in str(raised.value) and "lost" in str(raised.value), raised.value
    [line] = log_lines(capsys)
    assert line["ok"] is False and [s["task"] for s in line["summaries"]] == ["bad", "worse"], line
    assert all(s["task_errors"] for s in line["summaries"]), line
    statuses = {s["task"]: s for s in operations.status(load_project(root, {}))}
    assert "lost" in statuses["worse"]["task_error"] and "gone" in statuses["bad"]["task_error"], statuses
