"""A newcomer's first hour, run as a user runs it: the CLI in a subprocess, the service over HTTP.

One test per problem found when trying sluicegate as a new user (issue 15): rows that were
there before ``install`` (backfill), a task-level failure that ``status`` must show, typos in
settings, the trigger inbox in ``status`` and ``--dry-run``, a service that says what it does,
the demo's table and hints, and reads that need a token. The README's "your own database"
block is followed literally, against a real PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from support import SLUICEGATE, cli, files

UTC = dt.UTC
REPO = Path(__file__).resolve().parents[2]
TOKEN = "newcomer-t0ken"
READ_TOKEN = "dashboard-t0ken"


def _new_project(tmp_path: Path, rows: int = 20000) -> tuple[Path, Path]:
    """``init p`` then ``generate --db sqlite:///p/measurements.db``: rows before any trigger."""
    root = tmp_path / "p"
    cli(tmp_path, "init", str(root), check=True)
    db = root / "measurements.db"
    cli(tmp_path, "generate", "--db", f"sqlite:///{db}", "--rows", str(rows), check=True)
    return root, db


def _status(root: Path) -> dict[str, Any]:
    [row] = json.loads(cli(root, "status", "--json", check=True).stdout)
    return dict(row)


def _rows(db: Path) -> list[tuple[dt.datetime, tuple[int, dt.date]]]:
    """Each row's time and partition (location, local day by the example's time-ending rule)."""
    conn = sqlite3.connect(db)
    zones = dict(conn.execute("SELECT location_id, timezone FROM locations").fetchall())
    out = []
    for location, stamp in conn.execute("SELECT location_id, datetime FROM measurements"):
        at = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        day = (at - dt.timedelta(microseconds=1)).astimezone(ZoneInfo(zones[location])).date()
        out.append((at, (location, day)))
    conn.close()
    return out


def _partitions_of(
    db: Path, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> set[tuple[int, dt.date]]:
    """The partitions with rows (in ``[start, end)`` when given), computed from the rows."""
    return {p for at, p in _rows(db) if (start is None or at >= start) and (end is None or at < end)}


# 1. A trigger-mode project exported nothing and check said all was well.
def test_rows_before_install_are_reported_and_backfilled(tmp_path: Path) -> None:
    root, db = _new_project(tmp_path)
    check = cli(root, "check")
    assert check.returncode == 0, check.stderr
    assert "capture triggers are not installed" in check.stderr
    install = cli(root, "install", check=True)
    assert "20,000 row(s) were there before the triggers" in install.stdout
    assert "backfill openaq" in install.stdout
    again = cli(root, "check", check=True)
    assert "not installed" not in again.stderr
    # The hint names the project folder the check was given with -C, so it runs as printed from
    # anywhere (here: the test's folder, which holds no sluicegate.toml).
    hint = re.search(r"run '(sluicegate -C \S+ backfill openaq)'", again.stderr)
    assert hint, again.stderr
    assert shlex.split(hint[1])[1:3] == ["-C", str(root)]
    backfill = subprocess.run(
        [SLUICEGATE, *shlex.split(hint[1])[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert backfill.returncode == 0, backfill.stderr
    expected = _partitions_of(db)
    assert f"marked {len(expected):,} partition(s) of openaq" in backfill.stdout
    cli(root, "run", check=True)
    st = _status(root)
    assert st["exported"] + st["waiting"] == len(expected) and st["pending"] == 0
    assert len(files(root / "exports")) == st["exported"] > 0
    assert "warning" not in cli(root, "check", check=True).stderr


def test_backfill_of_a_misspelt_time_column_exits_2_naming_it(tmp_path: Path) -> None:
    """It failed with 'database ...: no such column: q.date_time' and exit 1, naming no setting."""
    root, _ = _new_project(tmp_path, rows=2000)
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text()
    assert 'column = "datetime"' in text
    toml.write_text(text.replace('column = "datetime"', 'column = "date_time"', 1))
    result = cli(root, "backfill", "openaq")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "[time] column: 'date_time' is not a column of select.sql's result" in result.stderr


def test_backfill_with_a_time_range_marks_only_that_range(tmp_path: Path) -> None:
    root, db = _new_project(tmp_path, rows=20000)
    cli(root, "install", check=True)
    first = min(at for at, _ in _rows(db))
    start, end = first + dt.timedelta(hours=3), first + dt.timedelta(hours=5)
    expected = _partitions_of(db, start, end)
    out = cli(
        root, "backfill", "openaq", "--time-min", start.isoformat(), "--time-max", end.isoformat(), check=True
    )
    assert f"marked {len(expected):,} partition(s)" in out.stdout
    st = _status(root)
    assert 0 < len(expected) == st["pending"] + st["waiting"] < len(_partitions_of(db))


def test_backfill_counts_a_local_day_across_two_weeks_of_rows_once(tmp_path: Path) -> None:
    """Backfill reads a week of rows per query: a local day cut by a week's edge was marked in
    both weeks and counted twice (51 partitions reported, 46 in the ledger)."""
    root, db = tmp_path / "p", tmp_path / "p" / "measurements.db"
    cli(tmp_path, "init", str(root), check=True)
    cli(tmp_path, "generate", "--db", f"sqlite:///{db}", "--rows", "3000", "--locations", "5", check=True)
    cli(root, "install", check=True)
    expected = _partitions_of(db)
    out = cli(root, "backfill", "openaq", check=True)
    st = _status(root)
    assert f"marked {len(expected):,} partition(s)" in out.stdout, (out.stdout, len(expected))
    assert st["pending"] + st["waiting"] == len(expected)


# 2. run reported a failure that status never showed; run and check disagreed on its kind.
def test_a_task_level_failure_is_on_the_ledger_until_a_run_succeeds(tmp_path: Path) -> None:
    root = tmp_path / "p"
    cli(tmp_path, "init", str(root), check=True)
    sqlite3.connect(root / "measurements.db").close()  # a database without the task's table
    check = cli(root, "check")
    run = cli(root, "run")
    assert check.returncode == run.returncode == 2, (check.stderr, run.stderr)
    assert "no such table: measurements" in run.stderr and "Traceback" not in run.stderr
    status = cli(root, "status", check=True).stdout
    assert "last run failed:" in status and "no such table: measurements" in status
    assert "no such table" in _status(root)["task_error"]
    cli(tmp_path, "generate", "--db", f"sqlite:///{root / 'measurements.db'}", "--rows", "2000", check=True)
    cli(root, "install", check=True)
    cli(root, "backfill", "openaq", check=True)
    cli(root, "run", check=True)
    assert "task_error" not in _status(root)
    assert "last run failed" not in cli(root, "status", check=True).stdout


# 3. Typos in sluicegate.toml and in SLUICEGATE_* variables were ignored.
@pytest.mark.parametrize(
    ("edit", "env", "message"),
    [
        (("[defaults]", "[default]"), {}, "unknown section 'default'; did you mean 'defaults'?"),
        (('schema = "sluicegate"', 'shcema = "sluicegate"'), {}, "[ledger]: unknown setting 'shcema'; did you mean 'schema'?"),
        ((), {"SLUICEGATE_DEFAULTS__BATCHSIZE": "9"}, "unknown setting 'batchsize'; did you mean 'batch_size'?"),
        ((), {"SLUICEGATE_API_TOKN": "x"}, "unknown variable 'SLUICEGATE_API_TOKN'; did you mean 'SLUICEGATE_API_TOKEN'?"),
    ],
)  # fmt: skip
def test_unknown_settings_are_errors_with_the_closest_name(
    tmp_path: Path, edit: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    root = tmp_path / "p"
    cli(tmp_path, "init", str(root), check=True)
    toml = root / "sluicegate.toml"
    if edit:
        toml.write_text(toml.read_text().replace(edit[0], edit[1]))
    for command in (["check"], ["run"], ["status"]):
        proc = cli(root, *command, env=env)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("sluicegate: error: ")


# 4. status and run --dry-run did not see the trigger inbox; the age counted waiting partitions.
def test_status_and_dry_run_see_the_inbox_and_the_age_means_pending(tmp_path: Path) -> None:
    root, db = _new_project(tmp_path, rows=3000)
    cli(root, "install", check=True)
    cli(root, "backfill", "openaq", check=True)
    cli(root, "run", check=True)
    settled = _status(root)
    assert settled["pending"] == 0 and settled["waiting"] > 0
    assert settled["oldest_pending_age"] is None, "nothing is pending: no pending age"
    assert "oldest pending" not in cli(root, "status", check=True).stdout
    conn = sqlite3.connect(db, isolation_level=None)
    location, zone = conn.execute("SELECT location_id, timezone FROM locations ORDER BY 1 LIMIT 1").fetchone()
    sensor = conn.execute("SELECT sensor_id FROM sensors WHERE location_id = ?", (location,)).fetchone()[0]
    late = dt.datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - dt.timedelta(days=20)
    conn.execute(
        "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) VALUES (?, ?, ?, ?, ?)",
        (location, sensor, late.strftime("%Y-%m-%dT%H:%M:%SZ"), 7.0, dt.datetime.now(UTC).isoformat()),
    )
    conn.close()
    st = _status(root)
    assert st["inbox"] == 1 and st["pending"] == 0
    assert "1 captured change(s) not yet folded in" in cli(root, "status", check=True).stdout
    [plan] = json.loads(cli(root, "run", "--dry-run", "--json", check=True).stdout)
    day = (late - dt.timedelta(microseconds=1)).astimezone(ZoneInfo(zone)).date().isoformat()
    assert [(e["partition"], e["reason"].startswith("captured change")) for e in plan["plan"]] == [
        ({"location_id": location, "day": day}, True)
    ]
    assert _status(root)["inbox"] == 1, "a dry run leaves the inbox alone"
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert summary["exported"] + summary["unchanged"] == 1
    assert _status(root)["inbox"] == 0


class Serve:
    """``sluicegate serve`` in a subprocess, its stderr kept in a file."""

    def __init__(
        self, root: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / f"serve-{self.port}-{time.monotonic_ns()}.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        full.update(env if env is not None else {"SLUICEGATE_API_TOKEN": TOKEN})
        self.proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), "serve", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env=full,
        )
        deadline = time.monotonic() + 30
        while "listening on" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def wait_run(self, run_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run: dict[str, Any] = httpx.get(f"{self.url}/runs/{run_id}", headers=_auth(TOKEN)).json()
            if run["state"] != "running":
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# 5. serve printed nothing, and a port in use exited 3 with uvicorn's message.
def test_serve_says_what_it_is_doing_and_a_busy_port_is_one_error_line(tmp_path: Path) -> None:
    root, _ = _new_project(tmp_path, rows=1000)
    server = Serve(root)
    try:
        first = server.text().splitlines()[0]
        assert f"listening on {server.url}" in first and "1 task(s): openaq" in first and "auth: on" in first
        busy = subprocess.run(
            [SLUICEGATE, "-C", str(root), "serve", "--port", str(server.port)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "SLUICEGATE_API_TOKEN": TOKEN},
        )  # fmt: skip
        assert busy.returncode == 2
        assert busy.stderr.splitlines() == [
            f"sluicegate: error: cannot listen on 127.0.0.1:{server.port}: Address already in use; "
            "stop what uses it or pick another --port"
        ]
        run_id = httpx.post(f"{server.url}/tasks/openaq/runs", headers=_auth(TOKEN), json={}).json()["run_id"]
        server.wait_run(run_id)
    finally:
        code = server.stop()
    text = server.text()
    assert f"run {run_id} started" in text and re.search(
        rf"run {run_id} finished in [\d.]+s: \d+ exported", text
    )
    assert text.rstrip().endswith("stopped") and code in (0, -signal.SIGTERM)


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    root, _ = _new_project(tmp_path, rows=1000)
    server = Serve(root, "--log-format", "json")
    try:
        run_id = httpx.post(f"{server.url}/tasks/openaq/runs", headers=_auth(TOKEN), json={}).json()["run_id"]
        server.wait_run(run_id)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.text().splitlines() if line.strip()]
    events = [r.get("event") for r in records]
    assert events[0] == "start" and events[-1] == "stop" and "run_finished" in events
    finished = next(r for r in records if r.get("event") == "run_finished")
    assert finished["run_id"] == run_id and finished["level"] == "info" and finished["failed"] == 0


# 7. Every GET was open; a 20 MB body was stored; an incremental run was listed twice.
def test_reads_need_a_token_bodies_are_limited_and_runs_are_listed_once(tmp_path: Path) -> None:
    root, _ = _new_project(tmp_path, rows=1000)
    _incremental_task(root)
    server = Serve(root, env={"SLUICEGATE_API_TOKEN": TOKEN, "SLUICEGATE_READ_TOKEN": READ_TOKEN})
    try:
        url = server.url
        reads = [
            "/exports",
            "/exports/openaq",
            "/runs",
            "/tasks",
            "/tasks/openaq",
            "/tasks/openaq/partitions",
            "/",
            "/metrics",
        ]
        for path in reads:
            assert httpx.get(url + path).status_code == 401, path
            assert httpx.get(url + path, headers=_auth("wrong")).status_code == 401, path
            assert httpx.get(url + path, headers=_auth(READ_TOKEN)).status_code == 200, path
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.post(f"{url}/tasks/openaq/runs", headers=_auth(READ_TOKEN), json={}).status_code == 403
        big = {"tag": "x" * (70 * 1024)}
        assert httpx.post(f"{url}/tasks/openaq/runs", headers=_auth(TOKEN), json=big).status_code == 413
        run_id = httpx.post(f"{url}/tasks/studies/runs", headers=_auth(TOKEN), json={}).json()["run_id"]
        assert server.wait_run(run_id)["state"] == "succeeded"
        listed = [r["id"] for r in httpx.get(f"{url}/runs", headers=_auth(READ_TOKEN)).json()]
        assert listed.count(run_id) == 1 and len(listed) == 1, listed
    finally:
        server.stop()


def _incremental_task(root: Path) -> None:
    folder = root / "tasks" / "studies"
    folder.mkdir()
    (folder / "task.toml").write_text(
        textwrap.dedent(
            """
            kind = "incremental"
            entity = "location_id"
            cursor = "ingested_at"
            format = "csv"
            path = "studies/{location_id}/{start:%Y%m%dT%H%M%SZ}.{ext}"
            zone = "UTC"
            """
        )
    )
    (folder / "select.sql").write_text("SELECT location_id, ingested_at, value FROM measurements")


def test_public_metrics_and_the_task_error_metric(tmp_path: Path) -> None:
    root = tmp_path / "p"
    cli(tmp_path, "init", str(root), check=True)
    sqlite3.connect(root / "measurements.db").close()  # no table yet: the task's query fails
    with (root / "sluicegate.toml").open("a") as fh:
        fh.write("\n[service]\npublic_metrics = true\n")
    assert cli(root, "run").returncode == 2
    server = Serve(root)
    try:
        metrics = httpx.get(f"{server.url}/metrics")
        assert metrics.status_code == 200
        assert 'sluicegate_task_error{task="openaq"} 1.0' in metrics.text
        assert 'sluicegate_oldest_pending_age_seconds{task="openaq"}' not in metrics.text
        assert 'sluicegate_stale_claims{task="openaq"} 0.0' in metrics.text  # no worker has died
        assert httpx.get(f"{server.url}/runs").status_code == 401
        assert "public" in server.text().splitlines()[0]
    finally:
        server.stop()


# 6. The demo table cut numbers when piped; its hints used a command not on PATH.
def test_demo_table_fits_80_columns_and_its_hints_run(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}  # the venv is not on PATH, as after a fresh clone
    demo = cli(tmp_path, "demo", str(tmp_path / "d"), "--rows", "5000", "--locations", "30", env=env)
    assert demo.returncode == 0, demo.stderr
    lines = demo.stdout.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└" and line]
    assert len(table) >= 5 and max(len(line) for line in table) <= 80 and "…" not in demo.stdout
    st = json.loads(cli(tmp_path / "d", "status", "--json", check=True).stdout)[0]
    [row] = [line for line in lines if line.startswith("│ openaq")]
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert (
        int(cells[1].replace(",", "")) == st["exported"] and int(cells[4].replace(",", "")) == st["waiting"]
    )
    hint = next(line.strip() for line in lines if line.strip().endswith(" status"))
    proc = subprocess.run(hint.split(), capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "openaq:" in proc.stdout, (hint, proc.stderr)


def test_a_mistyped_or_lost_ledger_over_exported_files_is_refused_until_new_ledger(tmp_path: Path) -> None:
    """A typo in [ledger] url (or a deleted ledger file) made run silently start a new, empty
    ledger over the folder of earlier exports and their change feed."""
    assert cli(tmp_path, "demo", str(tmp_path / "d"), "--rows", "2000", "--locations", "3").returncode == 0
    assert cli(tmp_path / "d", "run", check=True).returncode == 0  # the demo's own ledger: no refusal
    toml = tmp_path / "d" / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('schema = "sluicegate"', 'url = "sqlite:///ledgr.db"'))
    for args in (("run",), ("run", "--dry-run")):
        refused = cli(tmp_path / "d", *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"the ledger at sqlite:///{tmp_path / 'd' / 'ledgr.db'} records no export" in refused.stderr
        assert f"destination {tmp_path / 'd' / 'exports'} already holds" in refused.stderr
        assert "--new-ledger" in refused.stderr and str(toml) in refused.stderr
    assert cli(tmp_path / "d", "run", "--new-ledger", "--dry-run").returncode == 0
    assert cli(tmp_path / "d", "run").returncode == 2  # a dry run took nothing on
    assert cli(tmp_path / "d", "run", "--new-ledger").returncode == 0
    assert cli(tmp_path / "d", "run").returncode == 0  # taken on purpose once: later runs go on


def test_two_projects_on_one_ledger_do_not_take_each_others_exports(tmp_path: Path) -> None:
    """Two demo projects sharing one [ledger] url (each with its own source and destination) keyed
    their partitions by task name alone: B's run took A's re-export into B's folder, and A's
    re-export was lost without a word. Now B's run refuses, naming the task, both destinations,
    the ledger and what to do; A's re-export stays for A."""
    for name in ("a", "b"):
        assert (
            cli(tmp_path, "demo", str(tmp_path / name), "--rows", "2000", "--locations", "3").returncode == 0
        )
    shared = tmp_path / "a" / "measurements.db"  # A's ledger (its source database) is B's too
    toml = tmp_path / "b" / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('schema = "sluicegate"', f'url = "sqlite:///{shared}"'))
    cli(tmp_path / "a", "reexport", "openaq", "location_id=1", check=True)
    for args in (("run",), ("run", "--dry-run")):
        refused = cli(tmp_path / "b", *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "task openaq exports to the destination " + str(tmp_path / "a" / "exports") in refused.stderr
        assert f"not to {tmp_path / 'b' / 'exports'}" in refused.stderr
        assert f"sqlite:///{shared}" in refused.stderr and "--move-destination" in refused.stderr
    again = cli(tmp_path / "a", "run", "--dry-run", check=True)
    assert "location_id=1" in again.stdout, again.stdout
    assert cli(tmp_path / "a", "run", check=True).returncode == 0


def test_pyproject_licence_is_an_spdx_string() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"


# The README's "your own database" block, command by command, on a real PostgreSQL.
def test_readme_your_own_database_block(tmp_path: Path, pg_url: str) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Your own database", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert commands[0] == "S=.venv/bin/sluicegate" and commands[1].startswith("DB=")
    assert len([c for c in commands if c.startswith("$S")]) == 5
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the clone's venv
    cli(tmp_path, "generate", "--db", pg_url, "--rows", "20000", check=True)  # the user's existing data
    script = "\n".join(["set -e", "S=.venv/bin/sluicegate", f"DB='{pg_url}'", *commands[2:]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20,000 row(s) were there before the triggers" in proc.stdout
    exported = files(tmp_path / "mine" / "exports")
    st = _status(tmp_path / "mine")
    assert len(exported) == st["exported"] > 0 and st["pending"] == 0


@pytest.mark.parametrize("example", ["openaq", "airmax", "mds"])
def test_the_next_steps_init_prints_name_the_examples_own_tasks(tmp_path: Path, example: str) -> None:
    """`init --example mds` told the newcomer to `backfill mds`, a task the project does not have."""
    out = cli(tmp_path, "init", str(tmp_path / example), "--example", example, check=True).stdout
    named = re.findall(r" (?:backfill|blocks|ingest|run) ([a-z_]+)", out.split("next:")[1])
    assert named and all((tmp_path / example / "tasks" / task).is_dir() for task in named), (out, named)


def test_the_airmax_examples_next_steps_run_as_printed(tmp_path: Path) -> None:
    """The next steps said `ingest measurements messages.jsonl`, a file the example did not
    have: the newcomer's second command failed. The example ships one message of each shape."""
    root = tmp_path / "airmax"
    out = cli(tmp_path, "init", str(root), "--example", "airmax", check=True).stdout
    steps = [line.split("#")[0].split()[4:] for line in out.split("next:")[1].splitlines() if " -C " in line]
    steps = [[a for a in step if a not in ("--every", "30s")] for step in steps]
    assert [s[0] for s in steps] == ["generate", "check", "ingest", "run"], steps
    for step in steps:
        proc = cli(root, *step)
        assert proc.returncode == 0, (step, proc.stdout + proc.stderr)
        if step[0] == "ingest":
            assert "3 messages received, 3 inserted, 0 duplicates, 0 malformed" in proc.stdout


def test_files_saved_with_a_byte_order_mark_load_as_written(tmp_path: Path) -> None:
    """A sluicegate.toml or task.toml saved as Notepad's "UTF-8 with BOM" failed with "invalid
    TOML (Invalid statement (at line 1, column 1)); fix the syntax": nothing to see there."""
    from support import load

    root, _ = _new_project(tmp_path, rows=2000)
    task = root / "tasks" / "openaq"
    for path in (root / "sluicegate.toml", task / "task.toml", task / "select.sql"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    proc = cli(root, "check")
    assert proc.returncode == 0 and "ok: every task checked" in proc.stdout, proc.stdout + proc.stderr
    assert not load(root).tasks["openaq"].select_sql.startswith("\ufeff")


def test_the_airmax_next_steps_generate_into_the_source_init_was_given(tmp_path: Path) -> None:
    """`init --example airmax --source sqlite:///other.db` still said `generate --db
    sqlite:///<folder>/airmax.db`: the data went into a file the project does not read, and the
    next step, `check`, failed on a database without the table raw."""
    root = tmp_path / "airmax"
    out = cli(
        tmp_path, "init", str(root), "--example", "airmax", "--source", "sqlite:///other.db", check=True
    )
    lines = [line.split("#")[0] for line in out.stdout.split("next:")[1].splitlines() if " -C " in line]
    steps = [[a for a in shlex.split(line)[4:] if a not in ("--every", "30s")] for line in lines]
    assert [s[0] for s in steps] == ["generate", "check", "ingest", "run"], steps
    for step in steps:
        proc = cli(root, *step)
        assert proc.returncode == 0, (step, proc.stdout + proc.stderr)
    assert (root / "other.db").is_file() and not (root / "airmax.db").exists()
    out = cli(
        tmp_path, "init", str(tmp_path / "pg"), "--example", "airmax", "--source", "postgresql://me:pw@h/db"
    )
    assert "--db 'postgresql://me:***@h/db' --rows 50000  # your password for ***" in out.stdout, out.stdout


def test_init_overwrites_no_file_of_the_users_own_without_force(tmp_path: Path) -> None:
    """`init` checked only sluicegate.toml: in a folder with a select.sql of the user's own and no
    sluicegate.toml yet, it replaced that query with the example's, without a word."""
    root = tmp_path / "own"
    (root / "tasks" / "openaq").mkdir(parents=True)
    (root / "tasks" / "openaq" / "select.sql").write_text("SELECT 42 AS mine\n")
    proc = cli(tmp_path, "init", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{root / 'tasks' / 'openaq' / 'select.sql'} already exists" in proc.stderr, proc.stderr
    assert (root / "tasks" / "openaq" / "select.sql").read_text() == "SELECT 42 AS mine\n"
    assert not (root / "sluicegate.toml").exists()
    cli(tmp_path, "init", str(root), "--force", check=True)
    assert "SELECT 42" not in (root / "tasks" / "openaq" / "select.sql").read_text()


def test_demo_into_a_project_folder_leaves_the_project_alone_without_force(tmp_path: Path) -> None:
    """`demo FOLDER` checked only for FOLDER/measurements.db: into a project on PostgreSQL it
    replaced that project's sluicegate.toml (its [source] url) and select.sql without a word."""
    root = tmp_path / "pg"
    cli(tmp_path, "init", str(root), "--source", "postgresql://me@localhost/db", check=True)
    (root / "tasks" / "openaq" / "select.sql").write_text("-- my query\nSELECT 1 AS x\n")
    proc = cli(tmp_path, "demo", str(root), "--rows", "100", "--locations", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"{root / 'sluicegate.toml'} already exists" in proc.stderr, proc.stderr
    assert 'url = "postgresql://me@localhost/db"' in (root / "sluicegate.toml").read_text()
    assert (root / "tasks" / "openaq" / "select.sql").read_text().startswith("-- my query")
    assert not (root / "measurements.db").exists()


def test_demo_refusing_a_built_demo_names_the_folder_in_its_hint(tmp_path: Path) -> None:
    """`demo FOLDER` a second time said "use 'sluicegate run' in it": typed as said from where
    `demo` ran, that finds no project (docs/cli.md: a hint runs as printed from the same folder)."""
    folder = tmp_path / "d"
    demo = [SLUICEGATE, "demo", str(folder), "--rows", "100", "--locations", "2"]
    subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=120)
    proc = subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"'sluicegate -C {folder} run'" in proc.stderr, proc.stderr


def test_the_mds_next_steps_say_the_provider_urls_are_placeholders(tmp_path: Path) -> None:
    """`init --example mds` said "check ... the queries in mds/tasks" (it has none) and then
    `blocks trips ...`, which failed with "Connection refused" on 127.0.0.1:8001: nothing said
    that the providers' and the portal's URLs were placeholders to replace."""
    root = tmp_path / "mds"
    out = cli(tmp_path, "init", str(root), "--example", "mds", check=True).stdout
    first = out.split("next:")[1].splitlines()[1]
    assert f"MDS API url and token and the portal's url in {root / 'tasks' / 'trips' / 'task.toml'}" in first
    assert "queries" not in first and "placeholders" in first, first
