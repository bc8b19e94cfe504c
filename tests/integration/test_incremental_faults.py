"""Errors on the incremental (watermark) task's read paths, as an operator breaks them: entity
discovery that fails (a statement timeout, a query error), one entity's window failing, a window
whose file cannot be published; each on real PostgreSQL and a real ``sluicegate`` process."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest

from sluicegate import operations
from support import SLUICEGATE, cli, kill_idle_while_reading, load, terminate_running

UTC = dt.UTC
NOW = dt.datetime.now(UTC)
SELECT = "SELECT record_id, study_id, uploaded_on, payload FROM records"


def _task(root: Path, name: str, select: str) -> None:
    folder = root / "tasks" / name
    folder.mkdir(parents=True)
    (folder / "task.toml").write_text(
        textwrap.dedent(
            """
            kind = "incremental"
            entity = "study_id"
            cursor = "uploaded_on"
            format = "csv"
            path = "{task}/{study_id}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.{ext}"
            zone = "UTC"
            bootstrap = "beginning"
            safety_margin = "0s"
            """
        )
    )
    (folder / "select.sql").write_text(select)


def _project(tmp_path: Path, pg_url: str, lease: str = "10m", studies: int = 2, **selects: str) -> Path:
    """Tasks by name and select; the records table holds studies s1, s2 ..., a day old."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[destination]\nurl = "{tmp_path / "out"}"\n'
        f'[defaults]\nlease = "{lease}"\nbackoff = "0s"\nmax_attempts = 2\n'
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE records (record_id serial PRIMARY KEY, study_id text NOT NULL, "
            "uploaded_on timestamptz NOT NULL, payload text)"
        )
        for study in (f"s{n}" for n in range(1, studies + 1)):
            conn.execute(
                "INSERT INTO records (study_id, uploaded_on, payload) VALUES (%s, %s, 'x')",
                (study, NOW - dt.timedelta(days=1)),
            )
    for name, select in selects.items():
        _task(root, name, select)
    return root


def _statement_timeout(pg_url: str, value: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"ALTER DATABASE {name} SET statement_timeout = '{value}'")


def _status(root: Path) -> dict[str, dict[str, object]]:
    return {s["task"]: s for s in operations.status(load(root))}


@pytest.mark.pg
def test_an_entity_discovery_that_times_out_names_its_task_and_select_and_is_retried(
    tmp_path: Path, pg_url: str
) -> None:
    """The query that finds a task's entities runs out of the database's statement_timeout: the
    run's one line said "database ...: canceling statement ...; will retry", naming neither the
    task nor the select.sql to make faster. The other task is exported, nothing is claimed or
    parked, and once the timeout is lifted the next run exports the entities."""
    slow = "SELECT record_id, study_id, uploaded_on, payload, pg_sleep(0.6)::text AS s FROM records"
    root = _project(tmp_path, pg_url, a_slow=slow, b_good=SELECT)
    _statement_timeout(pg_url, "1s")
    proc = cli(root, "run")
    assert proc.returncode == 1, proc.stderr
    [line] = [text.strip() for text in proc.stderr.splitlines()]
    select = root / "tasks" / "a_slow" / "select.sql"
    assert line.startswith(f"task error: task a_slow: finding its entities with {select} failed: database ")
    assert line.endswith(
        "canceling statement due to statement timeout (raise it or make the query faster); will retry"
    )
    status = _status(root)
    assert status["a_slow"]["task_error"] == line.removeprefix("task error: ")
    slow_status = status["a_slow"]
    assert (slow_status["entities"], slow_status["claimed"], slow_status["failed"]) == (0, 0, 0)
    assert (status["b_good"]["entities"], status["b_good"]["failed"]) == (2, 0)
    _statement_timeout(pg_url, "0")
    again = cli(root, "run", "--json")
    assert again.returncode == 0, again.stderr
    assert [s["exported"] for s in json.loads(again.stdout)] == [2, 0]
    assert "task_error" not in _status(root)["a_slow"]


@pytest.mark.pg
def test_an_entity_discovery_the_query_fails_names_its_select_and_exits_2(
    tmp_path: Path, pg_url: str
) -> None:
    """select.sql describes fine but fails on its rows (here a division by zero in its WHERE): the
    discovery's error was "database ... rejected a value: division by zero", exit 1, naming no task
    or file. It is select.sql's to fix: exit 2, as when select.sql does not run at all."""
    bad = (
        "SELECT record_id, study_id, uploaded_on, payload FROM records WHERE 1 / (record_id - record_id) = 0"
    )
    root = _project(tmp_path, pg_url, a_bad=bad, b_good=SELECT)
    proc = cli(root, "run", "--json")
    assert proc.returncode == 2, proc.stderr
    select = root / "tasks" / "a_bad" / "select.sql"
    [bad_run, good_run] = json.loads(proc.stdout)
    assert good_run["exported"] == 2
    [error] = bad_run["task_errors"]
    assert error.startswith(f"task a_bad: finding its entities with {select} failed: database ")
    assert error.endswith("division by zero; fix the query, or list the entities in task.toml"), error
    assert _status(root)["a_bad"]["task_error"] == error


@pytest.mark.pg
def test_an_entity_discovery_whose_connection_is_lost_names_its_task_and_is_retried(
    tmp_path: Path, pg_url: str
) -> None:
    """The source's backend is terminated while it finds the task's entities, and again when the
    query is run once more on a new connection: the error names the task and its select.sql and
    says it will retry; the next run exports."""
    slow = "SELECT record_id, study_id, uploaded_on, payload, pg_sleep(1.5)::text AS s FROM records"
    root = _project(tmp_path, pg_url, a_slow=slow)
    killer = threading.Thread(target=terminate_running, args=(pg_url, "SELECT DISTINCT%pg_sleep%"))
    killer.start()
    proc = cli(root, "run")
    killer.join()
    assert proc.returncode == 1, proc.stderr
    [line] = [text.strip() for text in proc.stderr.splitlines()]
    select = root / "tasks" / "a_slow" / "select.sql"
    assert line.startswith(f"task error: task a_slow: finding its entities with {select} failed: database ")
    assert line.endswith("is unavailable: terminating connection due to administrator command; will retry")
    assert (_status(root)["a_slow"]["claimed"], _status(root)["a_slow"]["failed"]) == (0, 0)
    assert cli(root, "run").returncode == 0


@pytest.mark.pg
def test_a_window_published_to_a_full_disk_says_to_free_space_and_is_redone(
    tmp_path: Path, pg_url: str
) -> None:
    """Entity s1's window reads fine but its file does not fit the destination's file system (a
    64 KiB tmpfs): its error said only "cannot publish ...: No space left on device". s2 is
    exported, s1's watermark stays, no temp file is left, and once there is space the next run
    writes s1's window to the path it failed at."""
    big = (
        "SELECT record_id, study_id, uploaded_on, "
        "CASE WHEN study_id = 's1' THEN repeat('x', 200000) ELSE payload END AS payload FROM records"
    )
    root = _project(tmp_path, pg_url, big=big)
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        proc = cli(root, "run", "--json")
        assert proc.returncode == 1, proc.stderr
        [summary] = json.loads(proc.stdout)
        [failed] = [e for e in summary["entities"] if e["entity"] == "s1"]
        path = out / "big" / "s1" / f"10000101T000000Z-{NOW:%Y%m%d}T000000Z.csv"
        assert failed["error"] == (
            f"cannot publish {path}: No space left on device; free space on the file system of {out},"
            " and the next run writes it again"
        )
        assert sorted(
            p.relative_to(out / "big").as_posix() for p in (out / "big").rglob("*") if p.is_file()
        ) == [f"s2/{path.name}"]
        marks = {w["entity"]: w for w in operations.watermarks(load(root), "big")}
        assert (
            marks["s1"]["watermark"].year == 1000 and marks["s2"]["watermark"].date() == NOW.date()
        )  # bootstrap, moved
        subprocess.run(["mount", "-o", "remount,size=4m", str(out)], check=True)
        assert cli(root, "run").returncode == 0
        assert path.stat().st_size > 200000
        assert _status(root)["big"]["failed"] == 0
    finally:
        subprocess.run(["umount", str(out)], check=True)


@pytest.mark.pg
def test_a_run_killed_between_publish_and_commit_is_redone_to_the_same_file_with_the_same_bytes(
    tmp_path: Path, pg_url: str
) -> None:
    """SIGKILL after the window's file is in place, before its watermark moves: the next run (the
    lease over) writes that window again to the same path, byte for byte, and moves the watermark."""
    root = _project(tmp_path, pg_url, lease="1s", studies=1, studies_task=SELECT)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [SLUICEGATE, "-C", str(root), "run"], env={**os.environ, "SLUICEGATE_TESTING__FAULT": "after_publish"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    fault = root / ".fault-after_publish"
    for _ in range(600):
        if fault.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    [placed] = [p for p in out.rglob("*.csv")]
    before = placed.read_bytes()
    [mark] = operations.watermarks(load(root), "studies_task")
    assert mark["watermark"] is None  # not moved
    time.sleep(1.2)  # the killed run's lease runs out
    assert cli(root, "run").returncode == 0
    assert [p for p in out.rglob("*.csv")] == [placed] and placed.read_bytes() == before
    [mark] = operations.watermarks(load(root), "studies_task")
    assert mark["watermark"].date() == NOW.date()


@pytest.mark.pg
def test_two_runs_of_one_task_at_once_export_each_entity_once(tmp_path: Path, pg_url: str) -> None:
    """Two processes run the same incremental task of twelve entities at once: each entity's
    window is in exactly one file, written by one of them, and every watermark moves."""
    root = _project(tmp_path, pg_url, studies=12, studies_task=SELECT)
    settings = root / "sluicegate.toml"
    settings.write_text(settings.read_text() + "batch_size = 1\n")
    procs = [subprocess.Popen([SLUICEGATE, "-C", str(root), "run", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        [summary] = json.loads(stdout)
        results.append(summary)
    exported = sorted(e["entity"] for r in results for e in r["entities"] if e.get("file"))
    assert exported == sorted(f"s{n}" for n in range(1, 13)), results
    assert len(list((tmp_path / "out").rglob("*.csv"))) == 12
    marks = operations.watermarks(load(root), "studies_task")
    assert len(marks) == 12 and all(m["watermark"].date() == NOW.date() for m in marks), marks


@pytest.mark.pg
def test_a_source_connection_lost_while_idle_is_opened_again_for_the_next_small_query(
    tmp_path: Path, pg_url: str
) -> None:
    """The source's connection is terminated while it is idle (a restart, an idle timeout, a
    network blip) as s1's window is read on the other one: both windows were exported, then the
    next small query on it (the late-commit cap, for the dead claims it looks for) failed the
    whole task with "database ... is unavailable ...; will retry", exit 1, and status said the
    last run failed. A lost connection is opened again, and the query run once more."""
    slow = "SELECT record_id, study_id, uploaded_on, payload, slow_for(study_id) AS r FROM records"
    root = _project(tmp_path, pg_url, slowed=slow)
    settings = root / "sluicegate.toml"
    settings.write_text(settings.read_text() + f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n')
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow_for(s text) RETURNS text IMMUTABLE LANGUAGE sql AS "
            "$$ SELECT CASE WHEN s = 's1' THEN pg_sleep(1.5)::text END $$"
        )
    killer = threading.Thread(target=kill_idle_while_reading, args=(pg_url, "SELECT DISTINCT%%"))
    killer.start()
    proc = cli(root, "run", "--json")
    killer.join()
    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)
    assert summary["exported"] == 2 and not summary["task_errors"], summary
    assert "task_error" not in _status(root)["slowed"]
