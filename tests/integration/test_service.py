"""The HTTP service over real HTTP: a `sluicegate serve` process, real requests, a real browser."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from test_archive import DELETE_PG, SELECT_PG, Agency

from sluicegate import operations
from sluicegate.config import load_project
from sluicegate.exceptions import LedgerError, SluicegateError
from sluicegate.ledger import Ledger, run_heartbeat
from sluicegate.options import RunOptions
from sluicegate.service.runs import Metrics, RunManager
from sluicegate.service.scheduler import Scheduler, latest_tick
from support import SLUICEGATE, Db, cli, files, hours, load, write_project

UTC = dt.UTC
TOKEN = "t0ken-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path, *args: str, token: str | None = TOKEN) -> None:
        self.port = _free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        if token:
            env["SLUICEGATE_API_TOKEN"] = token
        self.log = root / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), "serve", "--port", str(self.port), *args],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET with the API token (every route but /healthz needs one)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(url, headers=headers, **kwargs)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def wait_run(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run: dict[str, Any] = self.get(f"{self.url}/runs/{run_id}").json()
            if run["state"] != "running":
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish")


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pg_project(tmp_path: Path, pg_url: str) -> Iterator[tuple[Path, Db]]:
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), fmt="csv.gz")
    db = Db(pg_url)
    operations.install(load(root))
    for loc in range(1, 21):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 72))
    archive = root / "tasks" / "agency"
    archive.mkdir()
    (archive / "task.toml").write_text('kind = "archive"\n')
    (archive / "select.sql").write_text(SELECT_PG)
    (archive / "delete.sql").write_text(DELETE_PG)
    Agency(pg_url)
    yield root, db
    db.close()


def test_original_endpoints_and_auth(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    server = Server(root)
    try:
        listing = server.get(f"{server.url}/exports").json()
        assert [t["name"] for t in listing] == ["agency", "openaq"]
        agency = server.get(f"{server.url}/exports/agency").json()
        assert (
            agency["select_query"].startswith("SELECT * FROM agency")
            and "DELETE FROM agency" in agency["delete_query"]
        )
        missing = server.get(f"{server.url}/exports/nope")
        assert missing.status_code == 404 and missing.json() == {"detail": "Task not found"}
        assert httpx.post(f"{server.url}/exports").status_code == 401
        assert (
            httpx.post(f"{server.url}/exports", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert httpx.post(f"{server.url}/exports/nope", headers=AUTH).status_code == 404
        ok = httpx.post(f"{server.url}/exports/openaq", headers=AUTH).json()
        assert ok["status"] == "Ok" and server.wait_run(ok["run_id"])["state"] == "succeeded"
        # The run's manifests carry the id the service answered, so the change feed finds that run.
        manifests = [m.name for m in (root.parent / "out" / "_manifests").rglob("*.jsonl")]
        assert manifests and all(m.startswith(uuid.UUID(ok["run_id"]).hex) for m in manifests), manifests
        since = cli(root, "changes", "--since", ok["run_id"])
        assert since.returncode == 0 and "no changes since" in since.stderr, since.stderr
        everything = httpx.post(f"{server.url}/exports", headers=AUTH).json()
        run = server.wait_run(everything["run_id"])
        assert {s["task"] for s in run["summary"]} == {"agency", "openaq"}
        assert TOKEN not in server.log.read_text()
    finally:
        server.stop()


def test_runs_survive_a_restart_and_concurrent_posts_do_not_double_export(
    pg_project: tuple[Path, Db],
) -> None:
    root, _ = pg_project
    server = Server(root)
    try:
        posts = [httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={}) for _ in range(2)]
        assert [p.status_code for p in posts] == [202, 202]
        runs = [server.wait_run(p.json()["run_id"]) for p in posts]
    finally:
        server.stop()
    exported = sum(s["exported"] for r in runs for s in r["summary"])
    assert exported == 60 and sum(s["lost"] for r in runs for s in r["summary"]) == 0
    again = Server(root)  # another process: the runs are read from the ledger
    try:
        for r in runs:
            assert again.wait_run(r["id"])["state"] == "succeeded"
        listed = again.get(f"{again.url}/runs").json()
        assert {r["id"] for r in runs} <= {r["id"] for r in listed}
        page = again.get(
            f"{again.url}/tasks/openaq/partitions", params={"state": "exported", "limit": 25}
        ).json()
        assert len(page) == 25 and all(p["state"] == "exported" for p in page)
        rest = again.get(
            f"{again.url}/tasks/openaq/partitions", params={"state": "exported", "offset": 50}
        ).json()
        assert len(rest) == 10
        assert again.get(f"{again.url}/tasks/openaq/partitions", params={"state": "failed"}).json() == []
        task = again.get(f"{again.url}/tasks/openaq").json()
        assert task["counts"]["exported"] == 60
    finally:
        again.stop()


def test_a_run_whose_process_died_shows_as_abandoned(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    s = load(root).settings
    with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
        ledger.ensure_schema()
        alive, dead = (ledger.runs.start("openaq", tag=None, request={}) for _ in range(2))
        with run_heartbeat(ledger.url, ledger.schema, alive, every=0.05):
            # Both went silent ten minutes ago; only the one whose process still runs beats again.
            ledger.conn.execute(
                "UPDATE sluicegate.runs SET started_at = now() - interval '10 minutes', "
                "heartbeat_at = now() - interval '10 minutes'"
            )
            time.sleep(0.5)
            assert ledger.runs.get(alive)["state"] == "running"  # type: ignore[index]
        ledger.runs.finish(alive, [{"task": "openaq", "failed": 0}])
    server = Server(root)
    try:
        assert server.get(f"{server.url}/runs/{dead}").json()["state"] == "abandoned"
        assert server.get(f"{server.url}/runs/{alive}").json()["state"] == "succeeded"
    finally:
        server.stop()


def test_a_run_beats_again_once_the_ledger_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat thread ended at its first failed beat (the ledger restarted for longer than
    its reconnect budget, about 90 s): the run went on and finished, but meanwhile showed as
    abandoned, "its process died", for the rest of its life. A failed beat is retried on the next."""
    from sluicegate.ledger.runs import RunStore

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        run_id = ledger.runs.start("openaq", tag=None, request={})
    beats: list[str] = []
    real = RunStore.heartbeat

    def flaky(self: RunStore, rid: str) -> None:
        beats.append(rid)
        if len(beats) <= 2:  # the ledger is down
            raise LedgerError("ledger database x: connection failed: Connection refused; will retry")
        real(self, rid)

    monkeypatch.setattr(RunStore, "heartbeat", flaky)
    with run_heartbeat(url, "sluicegate", run_id, every=0.02):
        deadline = time.monotonic() + 10
        while len(beats) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(beats) >= 5, f"the heartbeat stopped after {len(beats)} beat(s)"


def _days_project(tmp_path: Path, pg_url: str, ledger_url: str) -> Path:
    """A project exporting a row a day for 60 days of 20 locations (1200 partitions) to
    ``tmp_path/out``, with its ledger at ``ledger_url`` and a lease of 3 s."""
    root = write_project(
        tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), ledger=ledger_url, lease="3s"
    )
    db = Db(pg_url)
    operations.install(load(root))
    for loc in range(1, 21):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 60, dt.timedelta(days=1)))
    db.close()
    return root


def _crash_and_stop(ledger_url: str, cluster: Any, proc: subprocess.Popen[Any], log: Path) -> float:
    """Once ``proc``'s run has exported a partition, crash the ledger's ``cluster``, let the run
    start reconnecting, and send it SIGTERM; when (``time.monotonic()``) it was sent."""
    deadline = time.monotonic() + 30
    while not _exported(ledger_url):  # the run is under way
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    cluster.crash()
    time.sleep(1)  # the run meets the dead connection and starts reconnecting
    stopped = time.monotonic()
    proc.terminate()
    return stopped


def _exported(ledger_url: str) -> int:
    with psycopg.connect(ledger_url, autocommit=True) as ledger:
        row = ledger.execute(
            "SELECT count(*) FROM sluicegate.partitions WHERE exported_version > 0"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_stop_while_the_ledger_is_down_takes_seconds_not_the_reconnect_budget(
    tmp_path: Path, pg_url: str, own_pg_server: tuple[Any, Any], command: str
) -> None:
    """SIGTERM while the ledger's PostgreSQL was down (stopped -m immediate under a run of 1200
    partitions): the run in hand sat in the ledger's reconnect loop (60 s, then 60 s again to
    record the task's error), which did not watch the stop request, and the service (or
    ``sluicegate run``) took about two minutes to exit. It stops in seconds now, its claims left
    to their lease as a crash leaves them; nothing is marked exported that is not in place."""
    ledger_pg, cluster = own_pg_server
    out = tmp_path / "out"
    root = _days_project(tmp_path, pg_url, ledger_pg.url())
    if command == "serve":
        server = Server(root)
        proc, log = server.proc, server.log
        answer = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={})
        assert answer.status_code == 202, answer.text
    else:
        log = tmp_path / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), "run"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
        )
    try:
        stopped = _crash_and_stop(ledger_pg.url(), cluster, proc, log)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=150)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The ledger steps left after the stop (the batch's commit, the release, the task's state)
    # share one 5 s grace: under Docker's 10 s stop timeout. Each waited its own 5 s before
    # (10-15 s), and 60 s each before that (~120 s).
    assert took < 10, f"{command} took {took:.1f} s to stop:\n{log.read_text()}"
    assert "Traceback" not in log.read_text()
    assert cluster.start(ledger_pg.port)
    with psycopg.connect(ledger_pg.url(), autocommit=True) as ledger:
        marked = ledger.execute(
            "SELECT path, checksum FROM sluicegate.partitions WHERE exported_version > 0"
        ).fetchall()
    assert 0 < len(marked) < 1200  # stopped mid-run
    for path, checksum in marked:  # nothing is marked exported that is not in place
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == checksum, path
    time.sleep(3)  # the stopped run's claims expire
    again = cli(root, "run", "--json", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    with psycopg.connect(ledger_pg.url(), autocommit=True) as ledger:
        done = ledger.execute("SELECT count(*) FROM sluicegate.partitions WHERE exported_version = version")
        assert done.fetchone() == (1200,)
    assert len(files(out)) == 1200  # each once


def test_a_stop_during_a_ledger_restart_still_commits_the_batch_in_hand(
    tmp_path: Path, pg_url: str, own_pg_server: tuple[Any, Any]
) -> None:
    """SIGTERM while the ledger's PostgreSQL restarts: the run gave up reconnecting at once, so
    the files of the batch in hand, already in place, were not committed, and their partitions
    waited for their lease to be exported again. The reconnect now goes on for a few seconds
    after the stop: a ledger back within them takes the commit, and no claim is left behind."""
    ledger_pg, cluster = own_pg_server
    root = _days_project(tmp_path, pg_url, ledger_pg.url())
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    run = [SLUICEGATE, "-C", str(root), "run", "--batch-size", "100"]
    proc = subprocess.Popen(run, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        stopped = _crash_and_stop(ledger_pg.url(), cluster, proc, log)
        assert cluster.start(ledger_pg.port)
        back = time.monotonic() - stopped
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert back < 4, f"the ledger took {back:.1f} s to start again: too slow for this test"
    # Was 1: a --workers helper starting while the ledger was down failed the task with its
    # connection error, though it had claimed nothing.
    assert proc.returncode == 143, log.read_text()
    with psycopg.connect(ledger_pg.url(), autocommit=True) as ledger:
        held = ledger.execute("SELECT count(*) FROM sluicegate.partitions WHERE claim_token IS NOT NULL")
        assert held.fetchone() == (0,), log.read_text()  # committed, or given back: none left to a lease
        marked = ledger.execute("SELECT path, checksum FROM sluicegate.partitions WHERE exported_version > 0")
        done = marked.fetchall()
    assert 0 < len(done) < 1200 and len(files(tmp_path / "out")) == len(done)  # each placed one committed
    for path, checksum in done:
        assert hashlib.sha256((tmp_path / "out" / path).read_bytes()).hexdigest() == checksum, path


def test_run_options_dry_run_and_reexport(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    server = Server(root)
    try:
        first = server.wait_run(
            httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={"limit": 5}).json()["run_id"]
        )
        assert first["summary"][0]["exported"] == 5
        body = {"reexport": True, "time_min": "2024-01-01T00:00:00Z", "time_max": "2024-01-02T00:00:00Z"}
        dry = server.wait_run(
            httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={"dry_run": True}).json()[
                "run_id"
            ]
        )
        assert len(dry["summary"][0]["plan"]) == 55
        done = server.get(f"{server.url}/tasks/openaq/partitions", params={"state": "exported"}).json()
        in_window = sum(p["keys"]["day"] == "2024-01-01" for p in done)
        re = server.wait_run(
            httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json=body).json()["run_id"]
        )
        assert re["summary"][0]["exported"] == 55 + in_window  # the pending ones, plus the re-queued window
        bad = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={"limit": 0})
        assert bad.status_code == 422 and bad.json()["detail"].startswith(
            "field 'limit' of the request body: Input should be greater than"
        )  # one sentence, as every other 422; the pydantic list is under "errors"
        assert [e["loc"] for e in bad.json()["errors"]] == [["body", "limit"]]
        # Both: the re-export was skipped and the dry run planned without it, saying nothing.
        both = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json={**body, "dry_run": True})
        assert both.status_code == 422, both.text
        assert "reexport and dry_run cannot be combined" in both.json()["detail"], both.text
        # Hostile bodies get 422 with a reason, not a 500 (nor a run that fails later):
        raw = {**AUTH, "Content-Type": "application/json"}
        hostile = ('{"limit": 1e400}', '{"limit": 100000000000000000000}', '{"tag": "\\ud800"}',
                   '{"tag": "x\\u0000"}', '{"entities": ["a\\nb"]}', '{"dryrun": true}')  # fmt: skip
        for body_text in hostile:  # a misspelt field ("dryrun") started a real run of everything
            answer = httpx.post(f"{server.url}/tasks/openaq/runs", headers=raw, content=body_text)
            assert answer.status_code == 422 and isinstance(answer.json()["detail"], str), body_text
        misspelt = httpx.post(f"{server.url}/tasks/openaq/runs", headers=raw, content=hostile[-1])
        assert (
            "field 'dryrun' of the request body: Extra inputs are not permitted" in misspelt.json()["detail"]
        )
        for extra in ({"entities": ["1"]}, {"export_type": "daily"}, {"tag": "nightly"}):  # were ignored
            ignored = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json=extra)
            assert ignored.status_code == 422, ignored.text
            assert "applies to incremental tasks, not partitioned task 'openaq'" in ignored.json()["detail"]
        twice = server.get(f"{server.url}/tasks/openaq/partitions?state=failed&state=exported")
        assert twice.status_code == 422, twice.text  # was the exported ones alone, a 200
        assert twice.json()["detail"] == "the query string names parameter 'state' twice; send each once"
        far = server.get(f"{server.url}/tasks/openaq/partitions", params={"offset": str(10**20)})
        assert far.status_code == 422 and far.json()["detail"].startswith(
            "field 'offset' of the query string"
        )
        # A time without an offset is UTC, as for the incremental tasks (it was a 500).
        naive = {"reexport": True, "time_min": "2024-01-01T00:00:00", "time_max": "2024-01-02T00:00:00"}
        again = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json=naive)
        assert again.status_code == 202, again.text
        listed = server.get(f"{server.url}/tasks/openaq/partitions", params={"limit": 1000}).json()
        day_one = sum(p["keys"]["day"] == "2024-01-01" for p in listed)
        assert (
            day_one > in_window
            and server.wait_run(again.json()["run_id"])["summary"][0]["exported"] == day_one
        )
    finally:
        server.stop()


def _hourly_blocks_project(tmp_path: Path, settings: str = "") -> Path:
    """A project whose blocks task t extracts one record per hour of key a (its ``settings`` added)."""
    root = tmp_path / "proj"
    (root / "tasks" / "t").mkdir(parents=True)
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///blk.db"\n[destination]\nurl = "out"\n')
    (root / "gen.py").write_text("def records(block, config):\n    return [{'id': block.label}]\n")
    (root / "tasks" / "t" / "task.toml").write_text(
        'kind = "blocks"\nzone = "UTC"\nkey = "provider"\nkeys = ["a"]\nstages = ["extract"]\n'
        f'{settings}[extract]\ncallable = "gen:records"\npath = "{{stage}}/{{provider}}/{{label}}.jsonl"\n'
    )
    return root


def test_a_blocks_run_takes_its_time_range(tmp_path: Path) -> None:
    """POST /tasks/{blocks task}/runs ignored time_min and time_max (it ran only what the ledger
    already held): they are the range of blocks to run, as for `sluicegate blocks`; a range
    that cannot run, or times given to a task they do not apply to, is a 422."""
    root = _hourly_blocks_project(tmp_path)
    server = Server(root)
    try:
        body = {"time_min": "2020-03-01T00:00:00Z", "time_max": "2020-03-01T03:00:00Z"}
        started = httpx.post(f"{server.url}/tasks/t/runs", headers=AUTH, json=body)
        assert started.status_code == 202, started.text
        run = server.wait_run(started.json()["run_id"])
        assert [s["block"] for s in run["summary"][0]["stages"]] == [
            "2020-03-01T01:00+00:00", "2020-03-01T02:00+00:00", "2020-03-01T03:00+00:00",
        ]  # fmt: skip
        assert len(list((root / "out" / "extract" / "a").iterdir())) == 3
        for bad, reason in (
            ({"time_min": "2020-03-01T00:00:00Z"}, "time_min needs time_max"),
            ({"time_min": "2020-03-02T00:00:00Z", "time_max": "2020-03-01T00:00:00Z"}, "is empty"),
            # a future range was accepted (202), and the run then failed
            ({"time_min": "2099-03-01T00:00:00Z", "time_max": "2099-03-01T03:00:00Z"}, "is not over yet"),
            # reexport was dropped: the run ran what the ledger held and answered 202
            ({"reexport": True}, "reexport applies to partitioned tasks, not blocks task 't'"),
            # an incremental task's field was dropped: all key values ran, answered 202
            ({**body, "entities": ["b"]}, "entities applies to incremental tasks, not blocks task 't'"),
            ({**body, "tag": "nightly"}, "tag applies to incremental tasks, not blocks task 't'"),
        ):
            answer = httpx.post(f"{server.url}/tasks/t/runs", headers=AUTH, json=bad)
            assert answer.status_code == 422 and reason in answer.json()["detail"], answer.text
    finally:
        server.stop()


def test_a_blocks_run_that_leaves_out_unsettled_blocks_says_so(tmp_path: Path) -> None:
    """With settle, a range's newest blocks are left out of the run: the 202 said only the run's id,
    so a caller could not tell that its request did less than asked (the warning was only in the
    service's log). The answer lists it, as the CLI warns."""
    root = _hourly_blocks_project(tmp_path, 'settle = "2h"\n')
    now = dt.datetime.now(dt.UTC)
    if now.minute == 59 and now.second >= 50:  # the hour must not turn between the two requests
        time.sleep(61 - now.second)
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    server = Server(root)
    try:
        body = {"time_min": (hour - dt.timedelta(hours=4)).isoformat(), "time_max": hour.isoformat()}
        started = httpx.post(f"{server.url}/tasks/t/runs", headers=AUTH, json=body)
        assert started.status_code == 202, started.text
        (warning,) = started.json()["warnings"]
        left = (hour - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M+00:00")
        assert f"2 block(s) from {left} on left out" in warning, warning
        run = server.wait_run(started.json()["run_id"])
        assert len(run["summary"][0]["stages"]) == 2  # the two settled blocks
        body["time_max"] = (hour - dt.timedelta(hours=2)).isoformat()  # settled blocks only
        settled = httpx.post(f"{server.url}/tasks/t/runs", headers=AUTH, json=body)
        assert settled.status_code == 202 and settled.json()["warnings"] == [], settled.text
        server.wait_run(settled.json()["run_id"])
    finally:
        server.stop()


def _studies_project(tmp_path: Path) -> Path:
    """A SQLite project with one incremental task, ``studies``, over two entities."""
    root = tmp_path / "proj"
    (root / "tasks" / "studies").mkdir(parents=True)
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///s.db"\n[destination]\nurl = "out"\n')
    (root / "tasks" / "studies" / "task.toml").write_text(
        'kind = "incremental"\nentity = "study_id"\ncursor = "at"\nbootstrap = "beginning"\n'
        'path = "{study_id}/{start:%Y%m%dT%H%M%S}.{ext}"\n'
    )
    (root / "tasks" / "studies" / "select.sql").write_text("SELECT study_id, at FROM records")
    with sqlite3.connect(root / "s.db") as conn:
        conn.execute("CREATE TABLE records (study_id TEXT, at TEXT)")
        conn.executemany("INSERT INTO records VALUES (?, '2024-01-01T00:00:00Z')", [("a",), ("b",)])
    conn.close()
    return root


def test_a_limit_for_an_incremental_task_is_a_422(tmp_path: Path) -> None:
    """POST /tasks/{incremental task}/runs with a limit started a run that exported every entity:
    the limit counts partitions and was dropped without a word. It is a 422 now, as
    ``run --limit`` exits 2; a run without it is started."""
    root = _studies_project(tmp_path)
    server = Server(root)
    try:
        refused = httpx.post(f"{server.url}/tasks/studies/runs", headers=AUTH, json={"limit": 1})
        assert refused.status_code == 422, refused.text
        assert "limit 1 does not apply to incremental task 'studies'" in refused.json()["detail"]
        assert server.get(f"{server.url}/runs").json() == []  # no run was started
        started = httpx.post(f"{server.url}/tasks/studies/runs", headers=AUTH, json={})
        assert started.status_code == 202, started.text
        assert server.wait_run(started.json()["run_id"])["state"] == "succeeded"
        assert sorted(p.name for p in (root / "out").iterdir() if not p.name.startswith("_")) == ["a", "b"]
    finally:
        server.stop()


def test_a_post_without_the_api_token_is_refused_whatever_its_body(tmp_path: Path) -> None:
    """FastAPI reads a body before the route's guard: a caller without a token got 422 about its
    body ("field '1' of the request body", the character offset named as a field), or 400 for
    bytes that are not UTF-8, instead of 401. A body that is not JSON is named as such."""
    server = Server(_studies_project(tmp_path))
    url, raw = f"{server.url}/tasks/studies/runs", {"Content-Type": "application/json"}
    try:
        for body in (b"{bad", b'{"tag": "\xff"}', b'{"limit": 0}'):
            for headers in (raw, {**raw, "Authorization": "Bearer wrong"}):
                answer = httpx.post(url, headers=headers, content=body)
                assert answer.status_code == 401, (body, answer.text)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
        bad = httpx.post(url, headers={**raw, **AUTH}, content=b"{bad")
        assert bad.status_code == 422 and bad.json()["detail"].startswith(
            "the request body is not JSON (Expecting property name enclosed in double quotes at character 1)"
        ), bad.text
        latin1 = httpx.post(url, headers={**raw, **AUTH}, content=b'{"tag": "\xff"}')  # a bare 400 before
        assert latin1.status_code == 422 and latin1.json()["detail"].startswith(
            "the request body is not UTF-8 JSON"
        )
        assert server.get(f"{server.url}/runs").json() == []  # no run was started
    finally:
        server.stop()


def test_a_json_body_sent_as_a_form_says_to_send_it_as_json(tmp_path: Path) -> None:
    """`curl -d '{"dry_run": true}'` sends Content-Type application/x-www-form-urlencoded; FastAPI
    read the body as bytes and answered "Input should be a valid dictionary", of a body that is one."""
    server = Server(_studies_project(tmp_path))
    url = f"{server.url}/tasks/studies/runs"
    try:
        for kind in ("application/x-www-form-urlencoded", "text/plain"):
            answer = httpx.post(url, headers={**AUTH, "Content-Type": kind}, content=b'{"dry_run": true}')
            assert answer.status_code == 422, answer.text
            assert answer.json()["detail"].startswith(
                f"the request body was sent as {kind}, not JSON; send it"
            ), answer.text
        assert server.get(f"{server.url}/runs").json() == []  # no run was started
        wrong = httpx.post(url, headers=AUTH, json=[])  # JSON, but not an object: named as before
        assert "Input should be a valid dictionary" in wrong.json()["detail"], wrong.text
    finally:
        server.stop()


def test_a_body_with_a_repeated_field_or_a_loose_value_starts_no_run(tmp_path: Path) -> None:
    """JSON keeps the last of a repeated key: ``{"dry_run": true, "dry_run": false}`` started a
    real run of a request that asked for a dry run first. And pydantic's lax mode read
    ``"dry_run": "yes"`` or ``"no"``, ``"limit": "2"`` or ``true`` as a bool or a number. Both are
    422 now, naming the field; no run is started."""
    server = Server(_studies_project(tmp_path))
    url, raw = f"{server.url}/tasks/studies/runs", {**AUTH, "Content-Type": "application/json"}
    try:
        repeated = httpx.post(url, headers=raw, content=b'{"dry_run": true, "dry_run": false}')
        assert repeated.status_code == 422, repeated.text
        assert repeated.json()["detail"].startswith(
            "the request body names field 'dry_run' twice; send each field once"
        ), repeated.text
        nested = httpx.post(url, headers=raw, content=b'{"entities": ["a"], "x": {"k": 1, "k": 2}}')
        assert nested.status_code == 422 and "'k' twice" in nested.json()["detail"], nested.text
        for body in ('{"dry_run": "yes"}', '{"dry_run": "no"}', '{"dry_run": 0}', '{"reexport": "true"}',
                     '{"ignore_watermark": 1}', '{"limit": "2"}', '{"limit": true}', '{"limit": 2.0}'):  # fmt: skip
            loose = httpx.post(url, headers=raw, content=body.encode())
            assert loose.status_code == 422, (body, loose.text)
            field = body.split('"')[1]
            assert loose.json()["detail"].startswith(f"field {field!r} of the request body: Input should be")
        # reexport was dropped for an incremental task: a run of the new rows only, answered 202
        again = httpx.post(url, headers=AUTH, json={"reexport": True})
        assert again.status_code == 422, again.text
        assert again.json()["detail"] == (
            "reexport applies to partitioned tasks, not incremental task 'studies' (send ignore_watermark"
            " with time_min and time_max to export a window again)"
        )
        # with dry_run too, the answer was dry_run's, whose remedy (no dry_run) fails as above
        dry = httpx.post(url, headers=AUTH, json={"reexport": True, "dry_run": True})
        assert dry.status_code == 422 and dry.json()["detail"] == again.json()["detail"], dry.text
        assert server.get(f"{server.url}/runs").json() == []  # no run was started
        # strict fields still read a time from its JSON text, and a dry run writes nothing
        window = b'"time_min": "2023-12-31T00:00:00Z", "time_max": "2024-01-02T00:00:00Z"'
        body = b'{"dry_run": true, "ignore_watermark": true, ' + window + b"}"
        started = httpx.post(url, headers=raw, content=body)
        assert started.status_code == 202, started.text
        assert server.wait_run(started.json()["run_id"])["state"] == "succeeded"
        assert not (tmp_path / "proj" / "out").exists() or not any((tmp_path / "proj" / "out").iterdir())
    finally:
        server.stop()


def test_a_missing_sqlite_source_fails_the_health_check_and_is_not_created(tmp_path: Path) -> None:
    """With a typo in [source] url, /healthz opened the path, which made a new, empty SQLite file:
    it answered "ok", and every run after it blamed select.sql for the missing table. The check
    fails now naming the file, and a run is refused the same way; no file is made."""
    root = _studies_project(tmp_path)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("s.db", "typo.db"))
    server = Server(root)
    try:
        health = server.get(f"{server.url}/healthz")
        assert health.status_code == 503, health.text
        assert health.json()["checks"]["source"].startswith(
            f"SQLite database {root / 'typo.db'} does not exist"
        )
        probe = httpx.head(f"{server.url}/healthz")  # an uptime monitor's probe was a 405
        assert (probe.status_code, probe.content) == (503, b""), probe.text
        refused = httpx.post(f"{server.url}/tasks/studies/runs", headers=AUTH, json={})
        assert refused.status_code == 500 and "typo.db does not exist" in refused.json()["detail"]
    finally:
        server.stop()
    assert not (root / "typo.db").exists()


def test_a_reexport_while_the_ledger_is_down_is_a_503_not_a_422(tmp_path: Path) -> None:
    """POST /tasks/{name}/runs with reexport queues the window on the ledger before the run starts;
    with the ledger out of reach that answered 422, a client error not to retry, of a message
    ending "will retry". It is a 503 now, as every other request the ledger outage stops."""
    sqlite3.connect(tmp_path / "s.db").close()
    root = write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "out"),
        ledger="postgresql://nobody@127.0.0.1:1/ledger",
    )  # fmt: skip
    server = Server(root)
    try:
        body = {"reexport": True, "time_min": "2024-01-01T00:00:00Z", "time_max": "2024-01-02T00:00:00Z"}
        answer = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json=body)
        assert answer.status_code == 503, answer.text
        assert "ledger database postgresql://nobody@127.0.0.1:1/ledger" in answer.json()["detail"]
    finally:
        server.stop()


@pytest.mark.pg
def test_a_ledger_role_without_privileges_is_a_500_not_a_503(
    tmp_path: Path, pg_server: Any, pg_url: str
) -> None:
    """A ledger role lacking its GRANTs is the deployment's error, not an outage to wait out:
    it answered 503 ("try again later") like a ledger out of reach."""
    import psycopg

    sqlite3.connect(tmp_path / "s.db").close()
    source = f"sqlite:///{tmp_path / 's.db'}"
    owner = write_project(tmp_path / "owner", source=source, destination=str(tmp_path / "out"), ledger=pg_url)
    with operations.ledger_of(load(owner)):  # the ledger's tables, made by their owner
        pass
    role, dbname = f"bare_{os.getpid()}", pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'bare'")
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
    bare = f"postgresql://{role}:bare@{pg_server.host}:{pg_server.port}/{dbname}"
    root = write_project(tmp_path / "proj", source=source, destination=str(tmp_path / "out"), ledger=bare)
    server = Server(root)
    try:
        body = {"reexport": True, "time_min": "2024-01-01T00:00:00Z", "time_max": "2024-01-02T00:00:00Z"}
        answer = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH, json=body)
        assert answer.status_code == 500, answer.text
        assert "sluicegate grants" in answer.json()["detail"], answer.text
    finally:
        server.stop()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_broken_task_folder_is_reported_and_others_work(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    (root / "tasks" / "broken").mkdir()
    (root / "tasks" / "broken" / "task.toml").write_text("kind = 'archive'\n")  # no select.sql
    server = Server(root)
    try:
        tasks = {t["name"]: t for t in server.get(f"{server.url}/tasks").json()}
        assert "select.sql not found" in tasks["broken"]["error"] and tasks["openaq"]["error"] is None
        assert [t["name"] for t in server.get(f"{server.url}/exports").json()] == ["agency", "openaq"]
        assert server.get(f"{server.url}/tasks/broken").json()["error"]
        for answer in (  # the Common Knowledge routes said "Task not found" of a broken task
            httpx.get(f"{server.url}/exports/broken", headers=AUTH),
            httpx.post(f"{server.url}/exports/broken", headers=AUTH),
        ):
            assert answer.status_code == 409 and "select.sql not found" in answer.json()["detail"]
        run = httpx.post(f"{server.url}/tasks/openaq/runs", headers=AUTH).json()
        assert server.wait_run(run["run_id"])["summary"][0]["exported"] == 60
        metrics = server.get(f"{server.url}/metrics").text
        assert (
            'sluicegate_task_broken{task="broken"} 1.0' in metrics and "sluicegate_ledger_up 1.0" in metrics
        )
        assert 'sluicegate_partitions{state="exported",task="openaq"} 60.0' in metrics
        assert 'sluicegate_exports_total{task="openaq"} 60.0' in metrics
        assert "sluicegate_run_duration_seconds_count" in metrics
        health = server.get(f"{server.url}/healthz").json()
        assert health == {"status": "ok", "checks": {"source": "ok", "ledger": "ok", "destination": "ok"}}
        assert httpx.head(f"{server.url}/healthz").status_code == 200
        assert server.get(f"{server.url}/openapi.json").json()["components"]["schemas"]["RunInfo"]
        # The ledger out of reach: the gauges say so (they used to vanish, silencing alerts), and
        # the routes answer with the reason (they gave a bare "Internal Server Error").
        toml = root / "sluicegate.toml"
        text = toml.read_text()
        assert "[ledger]\n" in text
        toml.write_text(text.replace("[ledger]\n", '[ledger]\nurl = "sqlite:////no-such-folder/ledger.db"\n'))
        assert "sluicegate_ledger_up 0.0" in server.get(f"{server.url}/metrics").text
        runs = server.get(f"{server.url}/runs")
        assert runs.status_code in (500, 503) and "no-such-folder" in runs.json()["detail"]
    finally:
        server.stop()


def test_refuses_to_start_without_a_token(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    result = subprocess.run(
        [SLUICEGATE, "-C", str(root), "serve", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2 and "SLUICEGATE_API_TOKEN is not set" in result.stderr
    # A token no client can send (headers are Latin-1) locked everyone out: refused at start.
    odd = subprocess.run(
        [SLUICEGATE, "-C", str(root), "serve", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        env={**env, "SLUICEGATE_API_TOKEN": "t\u00f8k"},
        timeout=30,
    )
    assert odd.returncode == 2 and "outside printable ASCII" in odd.stderr, odd.stderr
    server = Server(root, "--insecure-no-auth", token=None)
    try:
        assert "NO AUTHENTICATION" in server.log.read_text()
        assert httpx.post(f"{server.url}/exports/openaq").status_code == 200
    finally:
        server.stop()


def test_health_fails_when_the_destination_cannot_be_written(
    pg_project: tuple[Path, Db], tmp_path: Path
) -> None:
    root, _ = pg_project
    (tmp_path / "out").write_text("a file where the destination folder must go")
    server = Server(root)
    try:
        health = server.get(f"{server.url}/healthz")
        assert health.status_code == 503 and health.json()["checks"]["destination"] != "ok"
    finally:
        server.stop()


def test_one_scheduler_among_replicas_fires_a_tick(pg_project: tuple[Path, Db]) -> None:
    root, _ = pg_project
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text('schedule = "*/5 * * * *"\nschedule_zone = "Asia/Kolkata"\n' + toml.read_text())
    now = dt.datetime(2024, 6, 1, 10, 7, 30, tzinfo=UTC)
    assert latest_tick("*/5 * * * *", "Asia/Kolkata", now) == dt.datetime(2024, 6, 1, 10, 5, tzinfo=UTC)

    def loader() -> Any:
        return load_project(root, {})

    managers = [RunManager(loader, Metrics()) for _ in range(2)]
    replicas = [Scheduler(loader, m) for m in managers]
    fired = [replica.tick(now) for replica in replicas]
    assert sorted(len(f) for f in fired) == [0, 1]
    assert replicas[0].tick(now + dt.timedelta(minutes=1)) == []  # the same tick: nothing new
    later = [
        replica.tick(now + dt.timedelta(hours=3)) for replica in replicas
    ]  # hours missed: one run, not 36
    assert sorted(len(f) for f in later) == [0, 1]
    for m in managers:
        m.close()


def test_a_tick_whose_claim_failed_fires_on_the_next_look(pg_project: tuple[Path, Db]) -> None:
    """The scheduler marked a tick seen before claiming it on the ledger: when the claim failed (a
    ledger error at that moment) every later look skipped the tick, so a daily run was lost for the
    day. A tick is seen once it is claimed (or another replica has it) now; it fires on the next look."""
    root, db = pg_project
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text('schedule = "0 2 * * *"\n' + toml.read_text())
    now = dt.datetime(2024, 6, 1, 2, 0, 3, tzinfo=UTC)
    manager = RunManager(lambda: load_project(root, {}), Metrics())
    scheduler = Scheduler(lambda: load_project(root, {}), manager)
    try:
        db.conn.execute("ALTER TABLE sluicegate.schedule_ticks RENAME TO schedule_ticks_away")
        with contextlib.suppress(SluicegateError):  # the claim fails (the loop logs what tick raises)
            scheduler.tick(now)
        db.conn.execute("ALTER TABLE sluicegate.schedule_ticks_away RENAME TO schedule_ticks")
        assert len(scheduler.tick(now + dt.timedelta(seconds=5))) == 1  # it was never fired
        assert scheduler.tick(now + dt.timedelta(seconds=10)) == []  # once
    finally:
        manager.close()


def test_the_scheduler_says_why_a_look_failed_in_one_line_and_outlives_any_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the ledger down, the scheduler logged "scheduler tick failed" and a 15-line traceback
    every 5 seconds, the reason only at its end; and an error that is not sluicegate's (the tasks
    folder replaced while it was read: FileNotFoundError) ended its thread, so no schedule fired
    again until a restart, while /healthz said ok."""
    errors: list[Exception] = [
        LedgerError("ledger database postgresql://x/y: connection failed: Connection refused; will retry"),
        FileNotFoundError(2, "No such file or directory", "/srv/project/tasks"),
    ]
    looks = threading.Semaphore(0)

    def load() -> Any:
        looks.release()
        if errors:
            raise errors.pop(0)
        return SimpleNamespace(tasks={})

    scheduler = Scheduler(load, None, interval=0.01)
    with caplog.at_level(logging.INFO, logger="sluicegate.scheduler"):
        scheduler.start()
        try:
            assert all(looks.acquire(timeout=10) for _ in range(3)), "the scheduler stopped looking"
        finally:
            scheduler.stop()
    ledger, other = [r for r in caplog.records if r.name == "sluicegate.scheduler"][:2]
    # A traceback is exc_info, or exc_text once masking.ScrubFilter (installed by a CLI command
    # earlier in the process) scrubbed it.
    assert ledger.levelno == logging.WARNING and ledger.exc_info is None and not ledger.exc_text
    assert "Connection refused; will retry" in ledger.getMessage()
    assert (other.exc_info is not None or other.exc_text) and "No such file" in other.getMessage()


def test_a_crashed_runs_recorded_error_masks_the_database_password(
    pg_project: tuple[Path, Db], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error sluicegate does not know was recorded on the run (and served by GET /runs) as
    its text: a driver's message that repeats the password kept it."""
    from sluicegate import engine

    root, _db = pg_project
    password = pg_url.split("://")[1].split("@")[0].split(":")[1]

    def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f'password authentication failed: "{password}"')

    monkeypatch.setattr(engine.Exporter, "run_once", crash)
    env: dict[str, str] = {}
    manager = RunManager(lambda: load_project(root, env), Metrics(), workers=1)
    try:
        run_id = manager.start(["openaq"], RunOptions(), label="test")
        deadline = time.monotonic() + 30
        while (run := operations_run(root, env, run_id)) is None or run.get("finished_at") is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        manager.close()
    assert password not in repr(run) and "RuntimeError: password authentication failed" in repr(run)


def operations_run(root: Path, env: dict[str, str], run_id: str) -> dict[str, Any] | None:
    with Ledger(load_project(root, env).settings.ledger_url) as ledger:
        return ledger.runs.get(run_id)


@pytest.mark.skipif(shutil.which("chromium") is None and os.environ.get("CI") != "true", reason="no chromium")
def test_status_page_in_a_headless_browser(pg_project: tuple[Path, Db], tmp_path: Path) -> None:
    from PIL import Image

    root, _db = pg_project
    server = Server(root, "--insecure-no-auth", token=None)  # a browser sends no bearer token
    try:
        run = httpx.post(f"{server.url}/tasks/openaq/runs", json={"limit": 40}).json()
        server.wait_run(run["run_id"])
        shot = tmp_path / "page.png"
        chromium = shutil.which("chromium")
        assert chromium, "chromium is required under CI"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}",
                "--window-size=1000,1400",
                f"--screenshot={shot}",
                f"{server.url}/",
            ],
            capture_output=True,
            timeout=90,
            check=True,
        )
        image = Image.open(shot).convert("RGB")
        colours = {c for _, c in image.getcolors(maxcolors=1 << 20) or []}
        assert (0x2E, 0x7D, 0x32) in colours, "no exported (green) cells on the page"
        assert (0xF9, 0xA8, 0x25) in colours, "no pending (amber) cells on the page"
        html = server.get(f"{server.url}/").text
        assert html.count("class='exported'") == 40 and html.count("class='pending'") == 20
    finally:
        server.stop()
    assert files(Path(str(root).replace("proj", "out")))


def test_a_queued_run_is_alive_and_stopping_the_service_records_it_not_started(
    pg_project: tuple[Path, Db], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting for a free worker thread beats (it used to show as abandoned after two
    minutes of waiting, then flip to succeeded), and stopping the service records the runs that
    never started instead of running the whole queue first; the run in hand stops after its
    batch, and what it did not export stays pending."""
    import threading

    from sluicegate.engine import RunOptions
    from sluicegate.ledger import runs as ledger_runs

    root, _ = pg_project
    with (root / "sluicegate.toml").open("a") as fh:
        fh.write('\n[testing]\nfault = "mid_write"\n')
    monkeypatch.setattr(ledger_runs, "ABANDONED_AFTER", 1.0)
    manager = RunManager(lambda: load(root), Metrics(), workers=1, heartbeat=0.2)
    first = manager.start(["openaq"], RunOptions(batch_size=10, workers=1), label="openaq")
    marker = root / ".fault-mid_write"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    queued = manager.start(["openaq"], RunOptions(), label="openaq")
    time.sleep(2.0)  # twice ABANDONED_AFTER
    with Ledger(load(root).settings.ledger_url) as ledger:
        assert ledger.runs.get(queued)["state"] == "running"  # type: ignore[index]
    closer = threading.Thread(target=manager.close)
    closer.start()
    time.sleep(0.3)
    marker.unlink()
    closer.join(60)
    assert not closer.is_alive()
    with Ledger(load(root).settings.ledger_url) as ledger:
        done, waited = ledger.runs.get(first), ledger.runs.get(queued)
    assert done is not None and waited is not None
    assert done["state"] == "succeeded" and 0 < done["summary"][0]["exported"] < 60
    assert waited["state"] == "failed" and "stopped before this run started" in str(waited["summary"])
    [status] = operations.status(load(root), ["openaq"])
    assert status["pending"] == 60 - done["summary"][0]["exported"]


def test_runs_waiting_for_a_worker_share_one_ledger_connection(
    pg_project: tuple[Path, Db], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run waiting for a worker thread beat on a thread and a ledger connection of its own: a
    client posting runs faster than they finish held one PostgreSQL connection per waiting run, until
    the server's max_connections refused every run, and every other client of that database. The
    waiting runs beat together now, on one connection, and still show as running."""
    from sluicegate.engine import RunOptions
    from sluicegate.ledger import runs as ledger_runs

    root, db = pg_project
    with (root / "sluicegate.toml").open("a") as fh:
        fh.write('\n[testing]\nfault = "mid_write"\n')
    monkeypatch.setattr(ledger_runs, "ABANDONED_AFTER", 1.0)

    def connections() -> int:
        return int(db.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                   .fetchone()[0])  # fmt: skip

    manager = RunManager(lambda: load(root), Metrics(), workers=1, heartbeat=0.2)
    marker = root / ".fault-mid_write"
    try:
        manager.start(["openaq"], RunOptions(batch_size=10, workers=1), label="openaq")
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        time.sleep(0.5)
        before = connections()
        queued = [manager.start(["openaq"], RunOptions(), label="openaq") for _ in range(20)]
        time.sleep(2.0)  # twice ABANDONED_AFTER
        assert connections() - before <= 2, (before, connections())
        with Ledger(load(root).settings.ledger_url) as ledger:
            assert {ledger.runs.get(q)["state"] for q in queued} == {"running"}  # type: ignore[index]
    finally:
        marker.unlink(missing_ok=True)
        manager.close()


def test_a_body_over_the_limit_is_a_413_with_a_sentence(tmp_path: Path) -> None:
    """A body over [service] max_request_bytes was answered in plain text "Content Too Large" (with
    a Content-Length) or {"detail": "Content Too Large"} (chunked): not JSON for one, and neither said
    the limit or what to do. Both are JSON with one sentence now, and no run is started."""
    server = Server(_studies_project(tmp_path))
    url, raw = f"{server.url}/tasks/studies/runs", {**AUTH, "Content-Type": "application/json"}
    body = b'{"tag": "' + b"x" * (70 * 1024) + b'"}'
    try:
        for content in (body, iter([body[:40000], body[40000:]])):  # with a Content-Length, and chunked
            answer = httpx.post(url, headers=raw, content=content)
            assert answer.status_code == 413, answer.text
            assert answer.json()["detail"].startswith(
                "the request body is larger than [service] max_request_bytes (65536 bytes); send"
            ), answer.text
        anonymous = httpx.post(url, headers={"Content-Type": "application/json"}, content=body)
        assert anonymous.status_code == 401, anonymous.text  # the token is checked first
        assert server.get(f"{server.url}/runs").json() == []  # no run was started
    finally:
        server.stop()


def test_the_openapi_schema_builds_without_a_warning(tmp_path: Path) -> None:
    """HEAD /healthz as a second method of the GET route gave the schema a duplicate operation id:
    FastAPI warned in the service's log at the first GET /openapi.json."""
    from sluicegate.service.app import create_app

    root = write_project(tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination="out")
    app = create_app(root, {}, token="t", scheduler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema = app.openapi()
    assert list(schema["paths"]["/healthz"]) == ["get"]
