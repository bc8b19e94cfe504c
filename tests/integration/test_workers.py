"""Real worker processes on one PostgreSQL or MariaDB ledger: concurrency, SIGKILL, lease expiry."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sluicegate import capture, operations
from sluicegate.engine import Exporter
from sluicegate.exceptions import LedgerError
from sluicegate.ledger import Claim, ExportResult, Ledger
from sluicegate.ledger.claims import PathTaken
from sluicegate.partitions import restore_partition
from support import (
    SLUICEGATE,
    Db,
    assert_one_type_twin_parked,
    cli,
    files,
    hours,
    load,
    read_csv,
    typed_project,
    write_project,
)  # fmt: skip

UTC = dt.UTC


# A test of the ledger itself, on each database it may live in (``dialect``, see ``_url``).
EVERY_LEDGER = pytest.mark.parametrize(
    "dialect",
    ["sqlite", pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)],
)


@pytest.fixture(
    params=[pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL or MariaDB database, source and ledger at once."""
    url: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return url


def _url(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> str:
    """The database of a ``dialect`` parameter: a SQLite file, or a fresh server database."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    url: str = request.getfixturevalue("pg_url" if dialect == "pg" else "mariadb_url")
    return url


def _installed_csv_project(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> tuple[Any, Db]:
    """An installed csv project (zone UTC) on a ``dialect`` database (its tables made first), and
    that database."""
    url = _url(request, tmp_path, dialect)
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv", zone="UTC"
    )
    db = Db(url)
    project = load(root)
    operations.install(project)
    return project, db


def _table(url: str) -> str:
    """The ledger's partitions table: in the ledger schema on PostgreSQL, prefixed elsewhere."""
    return "sluicegate.partitions" if url.startswith("postgresql") else "sluicegate_partitions"


def _project(tmp_path: Path, url: str, locations: int, days: int, lease: str = "10m") -> tuple[Path, Db]:
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv.gz", lease=lease
    )
    db = Db(url)
    operations.install(load(root))
    for loc in range(1, locations + 1):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24 * days))
    return root, db


def _spawn(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    full.update(env or {})
    return subprocess.Popen(
        [SLUICEGATE, "-C", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def _ledger_rows(db: Db) -> list[tuple[int, int, bool, object]]:
    return db.rows(f"SELECT version, exported_version, failed, claim_token FROM {_table(db.url)}")


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_two_workers_export_every_partition_once(tmp_path: Path, server_url: str) -> None:
    root, db = _project(tmp_path, server_url, locations=80, days=4)
    project = load(root)
    with Exporter(project) as exporter:  # fold the captured changes first, so both workers find work
        assert (
            capture.absorb(
                project.tasks["openaq"],
                exporter.context.ledger,
                exporter.context.inbox,
                exporter.context.source,
            )
            == 320
        )
    first = _spawn(root, "run", "--batch-size", "2", "--json")
    second = _spawn(root, "run", "--batch-size", "2", "--json")
    summaries = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        summaries += json.loads(out)
    assert sum(s["exported"] for s in summaries) == 320
    assert sum(s["lost"] for s in summaries) == 0 and sum(s["failed"] for s in summaries) == 0
    assert all(s["exported"] > 0 for s in summaries), "both workers should have taken part"
    rows = _ledger_rows(db)
    assert len(rows) == 320 and all(v == e and not f and t is None for v, e, f, t in rows)
    assert len(files(tmp_path / "out")) == 320


def test_worker_killed_after_upload_before_commit(tmp_path: Path, server_url: str) -> None:
    # A lease long enough for the blocked run to start and claim on a loaded 2-core machine.
    root, db = _project(tmp_path, server_url, locations=3, days=2, lease="6s")
    proc = _spawn(root, "run", env={"SLUICEGATE_TESTING__FAULT": "after_publish"})
    _wait_for(root / ".fault-after_publish", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    published = files(tmp_path / "out")
    assert len(published) == 6
    for path in published:  # complete files only: every one decompresses and has its 24 rows
        assert len(read_csv(path)) == 24
    assert all(e == 0 and t is not None for _, e, _, t in _ledger_rows(db))  # claimed, not committed
    blocked = _spawn(root, "run", "--json")
    out, _ = blocked.communicate(timeout=60)
    assert json.loads(out)[0]["exported"] == 0  # the lease still holds
    time.sleep(6.5)
    again = _spawn(root, "run", "--json")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out)[0]["exported"] == 6
    assert all(v == e and t is None for v, e, _, t in _ledger_rows(db))


KILL_POINTS = ("mid_write", "before_place", "after_publish", "after_manifest", None)  # None: a timed kill


@pytest.mark.mariadb
def test_workers_killed_over_rounds_of_late_data_export_each_partition_once(
    tmp_path: Path, mariadb_url: str
) -> None:
    """Three workers at once on a MariaDB source and ledger, one of them SIGKILLed (at a fault
    point or after a random time) in each of several rounds, late rows inserted between rounds:
    in the end every partition is exported once at its latest version, its file holds exactly
    the source's rows, nothing stays claimed, and no file is in place that the ledger does not
    record."""
    rng = random.Random(75)
    root, db = _project(tmp_path, mariadb_url, locations=6, days=3, lease="2s")
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[defaults]", "[defaults]\nmax_attempts = 20"))
    day0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    for round_, point in enumerate(KILL_POINTS):
        if round_:  # late rows for a few complete days, between the hours already there
            for loc in rng.sample(range(1, 7), 3):
                start = day0 + dt.timedelta(days=rng.randrange(3), minutes=30 + round_)
                db.insert(loc, hours(start, 4), value=100.0 * round_)
        env = {"SLUICEGATE_TESTING__FAULT": point} if point else {}
        # One process: a helper process it started would pause at the fault point too, outlive
        # the kill (it stops after its batch, which the pause never ends) and hold its pipes.
        victim = _spawn(root, "run", "--batch-size", "2", "--workers", "1", env=env)
        if point:  # alone, it reaches the point with claims in hand; the others start beside it
            _wait_for(root / f".fault-{point}", victim)
        others = [_spawn(root, "run", "--batch-size", "2") for _ in range(2)]
        time.sleep(rng.uniform(0.2, 2.0))
        victim.kill()
        victim.communicate(timeout=60)
        (root / f".fault-{point}").unlink(missing_ok=True)
        for proc in others:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        time.sleep(2.2)  # the victim's claims expire
    final = _spawn(root, "run")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    rows = db.rows(f"SELECT pkey, version, exported_version, failed, claim_token, path FROM {_table(db.url)}")
    assert len(rows) == 18
    assert all(v == e and not f and t is None for _, v, e, f, t, _ in rows), rows
    out_dir = tmp_path / "out"
    assert sorted(out_dir / p for *_, p in rows) == files(out_dir)
    for pkey, *_, path in rows:
        loc, day = json.loads(pkey)
        start = dt.datetime.fromisoformat(day).replace(tzinfo=UTC)
        expected = db.rows(
            "SELECT value FROM measurements WHERE location_id = %s AND datetime >= %s AND datetime < %s",
            (loc, db.ts(start), db.ts(start + dt.timedelta(days=1))),
        )
        got = sorted(float(r["value"]) for r in read_csv(out_dir / path))
        assert got == sorted(float(v) for (v,) in expected), pkey


@pytest.mark.mariadb
@pytest.mark.parametrize("point", ["before_place", "after_publish"])
def test_connections_killed_mid_commit_on_mariadb_are_reconnected(
    tmp_path: Path, mariadb_url: str, point: str
) -> None:
    """KILL CONNECTION of every session of a run (source and ledger) while it records a batch:
    before the commit's transaction, or inside it with the files in place (after_publish). The
    run reconnects and commits (without placing again): every partition exported once, none
    claimed, every file recorded and complete."""
    from sluicegate import mariadb_conn

    root, _db = _project(tmp_path, mariadb_url, locations=3, days=2, lease="5s")
    proc = _spawn(root, "run", "--json", env={"SLUICEGATE_TESTING__FAULT": point})
    _wait_for(root / f".fault-{point}", proc)
    admin = mariadb_conn.connect(mariadb_url)
    sessions = admin.execute(
        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
    ).fetchall()
    for (session,) in sessions:
        admin.execute(f"KILL CONNECTION {int(session)}")
    (root / f".fault-{point}").unlink()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    if point == "after_publish":  # the commit's transaction was open on the killed session
        assert "lost; reconnecting" in err, err
    [summary] = json.loads(out)
    assert (summary["exported"], summary["lost"], summary["failed"]) == (6, 0, 0), summary
    rows = Db(mariadb_url).rows(
        f"SELECT version, exported_version, claim_token, path FROM {_table(mariadb_url)}"
    )
    assert all(v == e == 1 and t is None for v, e, t, _ in rows), rows
    assert sorted(tmp_path / "out" / p for *_, p in rows) == files(tmp_path / "out")
    assert all(len(read_csv(p)) == 24 for p in files(tmp_path / "out"))


def test_a_file_left_by_a_killed_worker_is_replaced_even_when_its_size_matches(tmp_path: Path) -> None:
    """Killed after its file was put in place: the file holds a value the ledger never recorded.
    The rows then go back to what was committed, so the next export has the ledger's SHA-256
    and the same size as the file in place; it must still replace that file, not call it
    unchanged (the published file said 2.5 for ever, the source and the ledger 1.5)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), lease="1s")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    at = dt.datetime(2024, 1, 1, tzinfo=UTC)
    db.insert(1, hours(at, 24))
    first = _spawn(root, "run")
    assert first.wait(timeout=60) == 0, first.communicate()
    [path] = files(tmp_path / "out")
    committed = path.read_bytes()
    db.update_value(1, at, 2.5)  # 1.5 -> 2.5: the same number of bytes
    proc = _spawn(root, "run", env={"SLUICEGATE_TESTING__FAULT": "after_publish"})
    _wait_for(root / ".fault-after_publish", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (root / ".fault-after_publish").unlink()
    left = path.read_bytes()
    assert left != committed and len(left) == len(committed)
    db.update_value(1, at, 1.5)  # back to the committed rows
    time.sleep(1.5)  # the killed worker's lease expires
    again = _spawn(root, "run", "--json")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out)[0]["exported"] == 1
    assert path.read_bytes() == committed
    assert read_csv(path)[0]["value"] == "1.5"


def test_worker_killed_mid_write_leaves_no_partial_file(tmp_path: Path, server_url: str) -> None:
    root, db = _project(tmp_path, server_url, locations=2, days=1, lease="2s")
    proc = _spawn(root, "run", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(root / ".fault-mid_write", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = tmp_path / "out"
    assert files(out) == []  # nothing under a final name
    # Small partitions are spooled in memory, so a kill mid-write may leave no temp file at all;
    # a large one leaves a temp file that the next worker removes.
    temps = (
        [p for p in out.rglob("*") if p.is_file() and "_sluicegate" not in p.parts] if out.exists() else []
    )
    assert all(".sluicegate-" in p.name for p in temps)
    time.sleep(2.5)
    again = _spawn(root, "run", "--json")
    stdout, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert json.loads(stdout)[0]["exported"] == 2
    assert [p for p in out.rglob("*") if p.is_file() and ".sluicegate-" in p.name] == []
    assert all(len(read_csv(p)) == 24 for p in files(out))
    assert all(v == e for v, e, _, _ in _ledger_rows(db))


def test_expired_leases_count_as_attempts_and_park(tmp_path: Path, server_url: str) -> None:
    root, _db = _project(tmp_path, server_url, locations=1, days=1, lease="1s")
    (root / "sluicegate.toml").write_text(
        (root / "sluicegate.toml").read_text().replace("[defaults]", "[defaults]\nmax_attempts = 2")
    )
    for _ in range(2):
        proc = _spawn(root, "run", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
        marker = root / ".fault-mid_write"
        _wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marker.unlink()
        time.sleep(1.5)
    final = _spawn(root, "run", "--json")
    out, _ = final.communicate(timeout=60)
    assert final.returncode == 1 and json.loads(out)[0]["failed"] == 1
    [status] = operations.status(load(root))
    assert status["failed"] == 1 and "leases expired as a worker died" in status["failures"][0]["error"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_every_loop_stops_on_signal(tmp_path: Path, server_url: str, signum: int) -> None:
    root, _db = _project(tmp_path, server_url, locations=2, days=1)
    proc = _spawn(root, "run", "--every", "1s", "--json")
    deadline = time.monotonic() + 60
    while len(files(tmp_path / "out")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "finishing the batch in hand" in err
    assert json.loads(out.split("\n]\n")[0] + "\n]")[0]["exported"] == 2


@EVERY_LEDGER
def test_batch_commit_is_fenced_per_partition(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """One commit for a batch records exactly the claims still held, at the version they read."""
    url = _url(request, tmp_path, dialect)
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    db = Db(url)
    project = load(root)
    operations.install(project)
    for loc in (1, 2, 3):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 3))
    task = project.tasks["openaq"]
    table = _table(url)

    def absorb() -> None:  # fold the trigger inbox into the ledger, as a run does first
        with Exporter(project) as ex:
            capture.absorb(task, ex.context.ledger, ex.context.inbox, ex.context.source)

    absorb()
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        claims = sorted(
            ledger.partitions.claim(task, limit=10, lease=600), key=lambda c: c.keys["location_id"]
        )
        assert [c.keys["location_id"] for c in claims] == [1, 2, 3]
        # Location 2's lease runs out and another worker takes it over.
        ph = "?" if dialect == "sqlite" else "%s"
        past = dt.datetime(2000, 1, 1, tzinfo=UTC)
        ledger.conn.execute(
            f"UPDATE {table} SET lease_until = {ph} WHERE id = {ph}",
            (past if dialect == "pg" else past.timestamp(), claims[1].id),
        )
        assert ledger.partitions.claim(task, limit=10, lease=600) == []  # dead claims: taken over
        assert ledger.partitions.take_over(task, lease=600) == []  # of a batch: not alone
        [taken] = ledger.partitions.take_over(task, lease=600, batch=10)
        assert taken.id == claims[1].id and taken.token != claims[1].token
        # Location 3 changes while it is being exported.
        db.insert(3, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
        absorb()
        results = [
            ExportResult(claim=c, path=f"f{c.id}", rows=3, nbytes=10, checksum=f"sum{c.id}", published=True)
            for c in claims
        ]
        assert ledger.partitions.commit(results) == [True, False, True]
    rows = {
        r[0]: r[1:]
        for r in db.rows(f"SELECT id, version, exported_version, claim_token IS NULL, path FROM {table}")
    }
    one, two, three = (tuple(rows[c.id]) for c in claims)
    assert one == (claims[0].version, claims[0].version, True, f"f{claims[0].id}")
    assert not two[2] and two[3] is None  # still held by the new owner, nothing recorded
    assert three[1] == claims[2].version < three[0] and three[2] and three[3] == f"f{claims[2].id}"


@EVERY_LEDGER
def test_a_dead_batch_is_taken_over_together_once_then_one_partition_at_a_time_counted_when_alone(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """A worker died holding three partitions (one of them may have killed it): a claim of pending
    work takes none of them, and neither does a take-over of single partitions; they are taken over
    together, once, under a second-chance token (its UUID's version digit 7), uncounted. They were
    taken over one at a time, so recovering from an innocent crash (a deploy, a reboot) was ~6x
    slower than exporting. When the second chance dies too, each is taken over alone, oldest change
    first, uncounted; a claim of one partition that dies, or a take-over alone, is counted."""
    project, db = _installed_csv_project(request, tmp_path, dialect)
    task = project.tasks["openaq"]
    for loc in (1, 2, 3, 4):
        db.location(loc, "UTC")
        operations.mark(project, "openaq", {"location_id": str(loc), "day": "2024-01-01"})
    table, ph = _table(db.url), "?" if dialect == "sqlite" else "%s"
    past = dt.datetime(2000, 1, 1, tzinfo=UTC)

    def die() -> None:  # every claim held now dies: its lease ends
        ledger.conn.execute(
            f"UPDATE {table} SET lease_until = {ph} WHERE claim_token IS NOT NULL",
            (past if dialect == "pg" else past.timestamp(),),
        )

    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        store = ledger.partitions
        dead = store.claim(task, limit=3, lease=600)
        die()
        [fresh] = store.claim(task, limit=10, lease=600)  # the pending one only
        alone = store.take_over(task, lease=600)
        second = store.take_over(task, lease=600, batch=10)
        die()  # the second chance dies, and the claim of one partition (fresh)
        batch_again = store.take_over(task, lease=600, batch=10)
        taken = [store.take_over(task, lease=600) for _ in range(5)]
        die()  # the take-overs alone die
        again = [store.take_over(task, lease=600) for _ in range(4)]
    assert str(fresh.keys["location_id"]) == "4" and alone == [] == batch_again == taken[4]
    assert [(c.id, c.attempts) for c in second] == [(c.id, 0) for c in dead]
    assert len({c.token for c in second}) == 1 and second[0].token[14] == "7" != dead[0].token[14]
    assert [(t.id, t.attempts) for [t] in taken[:4]] == [*((c.id, 0) for c in dead), (fresh.id, 1)]
    assert {t.token[14] for [t] in taken[:4]} == {"8"} and len({t.token for [t] in taken[:4]}) == 4
    assert sorted((t.id, t.attempts) for [t] in again) == sorted([*((c.id, 1) for c in dead), (fresh.id, 2)])


@EVERY_LEDGER
def test_workers_in_one_run_export_every_partition_once(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """``run --workers 3``: helper exporters in threads, each with its own claims, share the work."""
    url = _url(request, tmp_path, dialect)
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv.gz")
    db = Db(url)
    operations.install(load(root))
    for loc in range(1, 31):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24 * 3))
    proc = _spawn(root, "run", "--workers", "3", "--batch-size", "4", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    [summary] = json.loads(out)
    assert (summary["exported"], summary["failed"], summary["lost"]) == (90, 0, 0)
    assert summary["rows"] == 30 * 72
    table = _table(url)
    rows = db.rows(f"SELECT version, exported_version, claim_token FROM {table}")
    assert len(rows) == 90 and all(v == e and t is None for v, e, t in rows)
    assert len(files(tmp_path / "out")) == 90
    # A limit is shared out between the workers, not multiplied by them.
    db.insert(1, [dt.datetime(2024, 1, 1, 5, 30, tzinfo=UTC)])
    for loc in range(2, 12):
        db.insert(loc, [dt.datetime(2024, 1, 2, 5, 30, tzinfo=UTC)])
    for limit, exported in ((6, 6), (4, 4)):  # 4 among 3 workers: 2 + 1 + 1, not 2 each
        proc = _spawn(root, "run", "--workers", "3", "--limit", str(limit), "--json")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert json.loads(out)[0]["exported"] == exported
    assert len(db.rows(f"SELECT id FROM {table} WHERE version > exported_version")) == 1


@EVERY_LEDGER
def test_partitions_changed_together_are_claimed_oldest_window_first(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """A backfill marks every location-day at once: batches take whole days, not whole locations.

    Location-major batches (all days of a few locations) make the batch query compare every row
    with every window of its location; day-major batches compare it with one.
    """
    url = _url(request, tmp_path, dialect)
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    project = load(root)
    task = project.tasks["openaq"]
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        # One mark of every location-day, in key order (location-major), at one moment.
        parts = [
            restore_partition(task, [loc, f"2024-01-0{d}"], "UTC") for loc in (1, 2, 3, 4) for d in (1, 2, 3)
        ]
        assert ledger.partitions.mark(parts, task) == 12
        days = []
        while batch := ledger.partitions.claim(task, limit=4, lease=600):
            days.append({(c.keys["location_id"], c.keys["day"]) for c in batch})
    assert days == [{(loc, f"2024-01-0{d}") for loc in (1, 2, 3, 4)} for d in (1, 2, 3)]


@EVERY_LEDGER
def test_marks_and_failures_read_the_values_before_the_row_changes(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """A re-mark after an export moves the change time; a failure counts the attempts before it.

    (MariaDB's SET sees earlier assignments of the same statement: the order of its SQL matters.)
    """
    url = _url(request, tmp_path, dialect)
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    task = load(root).tasks["openaq"]
    part = restore_partition(task, [1, "2024-01-01"], "UTC")

    def row() -> tuple[float, int, bool, int, int]:
        [(changed, attempts, failed, version, exported)] = ledger.conn.execute(
            f"SELECT changed_at, attempts, failed, version, exported_version FROM {_table(url)}"
        ).fetchall()
        changed = changed.timestamp() if isinstance(changed, dt.datetime) else float(changed)
        return changed, int(attempts), bool(failed), int(version), int(exported)

    with Ledger(url) as ledger:
        ledger.ensure_schema()
        ledger.partitions.mark([part], task)
        [claim] = ledger.partitions.claim(task, limit=1, lease=600)
        result = ExportResult(claim=claim, path="f", rows=1, nbytes=1, checksum="c", published=True)
        assert ledger.partitions.commit([result]) == [True]
        first = row()
        time.sleep(0.05)
        ledger.partitions.mark([part], task)  # exported, then changed: the change time moves
        second = row()
        assert second[0] > first[0] and second[3:] == (2, 1)
        [claim] = ledger.partitions.claim(task, limit=1, lease=600)
        ledger.partitions.fail(claim, error="boom", terminal=False, max_attempts=2, backoff=0)
        assert row()[1:3] == (1, False)  # 0 attempts before this one: not parked yet
        [claim] = ledger.partitions.claim(task, limit=1, lease=600)
        ledger.partitions.fail(claim, error="boom", terminal=False, max_attempts=2, backoff=0)
        assert row()[1:3] == (2, True)
        ledger.partitions.mark([part], task)  # a new change unparks it and starts counting again
        assert row()[1:] == (0, False, 3, 1)


def _published(claims: Sequence[Claim]) -> list[ExportResult]:
    """A published one-row file ``f<id>`` for each claim, as an exporter reports it."""
    return [
        ExportResult(claim=c, path=f"f{c.id}", rows=1, nbytes=1, checksum="c", published=True) for c in claims
    ]


def _race_commits_and_marks(
    tmp_path: Path, url: str, *, claims_apart: bool
) -> tuple[dict[str, int], list[BaseException]]:
    """For 4 s, one thread claims and commits batches of 40 of 200 partitions (holding the locks
    while "placing" files, 5 ms), another marks all 200 again and again; return what each did and
    the errors that ended them. ``claims_apart``: claims and marks never run at the same time
    (commits and marks still do)."""
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    project = load(root)
    task = project.tasks["openaq"]
    days = range(1, 11)
    parts = [
        restore_partition(task, [loc, f"2024-01-{day:02d}"], "UTC") for loc in range(1, 21) for day in days
    ]

    def ledger() -> Ledger:
        return Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema)

    with ledger() as first:
        first.ensure_schema()
        first.partitions.mark(parts, task)
    stop, gate = threading.Event(), threading.Lock() if claims_apart else contextlib.nullcontext()
    errors: list[BaseException] = []
    done = {"commits": 0, "marks": 0}

    def place(held: Sequence[ExportResult]) -> Sequence[ExportResult]:
        time.sleep(0.005)  # the rows stay locked while the files are put in place
        return held

    def commit_loop(lg: Ledger) -> None:
        while not stop.is_set():
            with gate:
                claims = lg.partitions.claim(task, limit=40, lease=600)
            lg.partitions.commit(_published(claims), place)
            done["commits"] += bool(claims)

    def mark_loop(lg: Ledger) -> None:
        while not stop.is_set():
            with gate:
                lg.partitions.mark(list(reversed(parts)), task)
            done["marks"] += 1

    def run(loop: Callable[[Ledger], None]) -> None:
        try:
            with ledger() as lg:
                loop(lg)
        except BaseException as exc:  # returned to the test
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(loop,)) for loop in (commit_loop, mark_loop)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join(60)
    return done, errors


def _innodb_deadlocks(url: str) -> int:
    from sluicegate import mariadb_conn

    conn = mariadb_conn.connect(url)
    [(_, value)] = conn.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'").fetchall()
    conn.close()
    return int(value)


@pytest.mark.mariadb
def test_commits_and_marks_of_the_same_partitions_at_once_never_deadlock(
    tmp_path: Path, mariadb_url: str
) -> None:
    """A batch commit locks its rows by partition key in the order marks lock them: no deadlock."""
    before = _innodb_deadlocks(mariadb_url)
    done, errors = _race_commits_and_marks(tmp_path, mariadb_url, claims_apart=True)
    assert not errors, errors
    assert done["commits"] >= 10 and done["marks"] >= 10, done
    assert _innodb_deadlocks(mariadb_url) == before


@pytest.mark.mariadb
def _two_days_on_mariadb(tmp_path: Path, mariadb_url: str) -> tuple[Any, Callable[[], Ledger], list[Any]]:
    """A MariaDB project's openaq task, a way to open its ledger, and two days of location 1
    (the later first)."""
    root = write_project(tmp_path / "proj", source=mariadb_url, destination=str(tmp_path / "out"), fmt="csv")
    project = load(root)
    task = project.tasks["openaq"]
    days = [restore_partition(task, [1, day], "UTC") for day in ("2024-01-02", "2024-01-01")]

    def ledger() -> Ledger:
        return Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema)

    return task, ledger, days


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_renew_and_release_lock_partitions_in_the_order_marks_do(
    tmp_path: Path, mariadb_url: str, operation: str
) -> None:
    """On MariaDB renew and release were one UPDATE ... WHERE claim_token, which locked its rows
    in the claim_token index's order (by id), while marks and commits lock them in pkey order:
    a fold marking two claimed partitions and a lease renewal (or the end of a run giving its
    claims back) deadlocked, and InnoDB rolled the fold's transaction back."""
    task, ledger, (later, earlier) = _two_days_on_mariadb(tmp_path, mariadb_url)
    with ledger() as lg:
        lg.ensure_schema()
        for part in (later, earlier):  # the later day first: id order is not pkey order
            lg.partitions.mark([part], task)
        [claim, _] = lg.partitions.claim(task, limit=2, lease=600)
    before = _innodb_deadlocks(mariadb_url)
    done: list[int] = []
    with ledger() as marker, ledger() as other:
        if operation == "renew":
            act = threading.Thread(target=lambda: done.append(other.partitions.renew(claim.token, lease=600)))
        else:
            act = threading.Thread(target=lambda: done.append(other.partitions.release(claim.token)))
        with marker.partitions.core.transaction() as cur:  # a fold's marks, in pkey order
            marker.partitions.mark([earlier], task, cur=cur)
            act.start()
            time.sleep(1)  # the release waits for the first row by now (a renewal skipped it)
            marker.partitions.mark([later], task, cur=cur)
        act.join(timeout=30)
    # A renewal skips the row the fold holds (as on PostgreSQL); a release waits for it.
    assert done == ([1] if operation == "renew" else [2])
    assert _innodb_deadlocks(mariadb_url) == before


@pytest.mark.mariadb
def test_a_renewal_skips_a_partition_a_stuck_transaction_holds(tmp_path: Path, mariadb_url: str) -> None:
    """On MariaDB a renewal waited for a row lock, where PostgreSQL's skips locked rows: one
    partition held by a stuck session (or by a commit placing files) stopped the renewal of
    every other partition of the claim for the lock wait timeout (60 s), then it failed, and
    their leases ran out under a live worker."""
    root = write_project(tmp_path / "proj", source=mariadb_url, destination=str(tmp_path / "out"), fmt="csv")
    project = load(root)
    task = project.tasks["openaq"]
    parts = [restore_partition(task, [1, day], "UTC") for day in ("2024-01-01", "2024-01-02", "2024-01-03")]

    def ledger() -> Ledger:
        return Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema)

    with ledger() as lg:
        lg.ensure_schema()
        lg.partitions.mark(parts, task)
        claims = lg.partitions.claim(task, limit=3, lease=600)
    done: list[int] = []
    with ledger() as stuck, ledger() as other:
        renewal = threading.Thread(
            target=lambda: done.append(other.partitions.renew(claims[0].token, lease=900))
        )
        with stuck.partitions.core.transaction() as cur:
            cur.execute(f"SELECT id FROM {_table(mariadb_url)} WHERE id = %s FOR UPDATE", (claims[1].id,))
            cur.fetchall()
            started = time.monotonic()
            renewal.start()
            renewal.join(timeout=20)
            waited = time.monotonic() - started
        renewal.join(timeout=90)
    assert done == [2] and waited < 10, (done, waited)


@pytest.mark.mariadb
@pytest.mark.parametrize("operation", ["reset_failed", "requeue"])
def test_reset_failed_and_requeue_lock_partitions_in_the_order_marks_do(
    tmp_path: Path, mariadb_url: str, operation: str
) -> None:
    """On MariaDB ``reset --failed`` was one UPDATE ... WHERE task AND failed, which locked its
    rows in the queue index's order (oldest change first), and a requeue updated its rows in
    the order the pipeline lost them, while marks lock them in pkey order: a fold marking the
    same two partitions deadlocked with them, and InnoDB rolled one transaction back."""
    task, ledger, (later, earlier) = _two_days_on_mariadb(tmp_path, mariadb_url)
    with ledger() as lg:
        lg.ensure_schema()
        for part in (
            later,
            earlier,
        ):  # the later day changed first: neither id nor change order is pkey order
            lg.partitions.mark([part], task)
            time.sleep(0.01)
        claims = lg.partitions.claim(task, limit=2, lease=600)
        for claim in claims:
            assert lg.partitions.fail(claim, error="boom", terminal=True, max_attempts=3, backoff=1)
    lost = sorted(claims, key=lambda c: c.pkey, reverse=True)  # the later day first
    before = _innodb_deadlocks(mariadb_url)
    done: list[int] = []
    with ledger() as marker, ledger() as other:
        if operation == "reset_failed":
            act = threading.Thread(target=lambda: done.append(other.partitions.reset_failed(task)))
        else:
            act = threading.Thread(target=lambda: done.append(other.partitions.requeue(lost) or len(lost)))
        try:
            with marker.partitions.core.transaction() as cur:  # a fold's marks, in pkey order
                marker.partitions.mark([earlier], task, cur=cur)
                act.start()
                time.sleep(1)  # the operator's command (or the requeue) waits for the first row by now
                marker.partitions.mark([later], task, cur=cur)
        finally:
            act.join(timeout=30)
    assert _innodb_deadlocks(mariadb_url) == before
    # The fold's marks cleared the parking before the reset got the rows: nothing left to reset.
    assert done == ([0] if operation == "reset_failed" else [2])
    with ledger() as lg:  # one version from the first mark, one from the fold's, one from a requeue
        versions = lg.partitions.core.conn.execute(f"SELECT version FROM {_table(mariadb_url)}").fetchall()
    assert [v for (v,) in versions] == ([2, 2] if operation == "reset_failed" else [3, 3])
    with ledger() as lg:  # parked again, with no fold about: the reset takes both
        for claim in lg.partitions.claim(task, limit=2, lease=600):
            assert lg.partitions.fail(claim, error="boom", terminal=True, max_attempts=3, backoff=1)
        assert lg.partitions.reset_failed(task) == 2
        assert len(lg.partitions.claim(task, limit=2, lease=600)) == 2


def test_claims_commits_and_marks_at_once_end_no_worker(tmp_path: Path, server_url: str) -> None:
    """On MariaDB a claim's SKIP LOCKED scan can wait for a row a mark is changing, and InnoDB
    then rolls one of them back as a deadlock's victim: the ledger runs that transaction again,
    so neither the worker nor the ingest stops."""
    done, errors = _race_commits_and_marks(tmp_path, server_url, claims_apart=False)
    assert not errors, errors
    assert done["commits"] >= 10 and done["marks"] >= 10, done


@EVERY_LEDGER
def test_a_batch_commit_finds_partitions_whose_keys_are_not_ascii(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """The commit looks the batch's rows up by their keys' text: accents, symbols, emoji, quotes."""
    url = _url(request, tmp_path, dialect)
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    project = load(root)
    task = project.tasks["openaq"]
    names = ["Liège", "µg/m³", "Zürich 😀", 'quote " and \\ backslash', "Gent", "gent"]
    parts = [restore_partition(task, [name, "2024-01-01"], "UTC") for name in names]
    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        ledger.ensure_schema()
        ledger.partitions.mark(parts, task)
        claims = ledger.partitions.claim(task, limit=10, lease=600)
        assert sorted(c.keys["location_id"] for c in claims) == sorted(names)
        assert ledger.partitions.commit(_published(claims)) == [True] * len(names)
        assert ledger.partitions.claim(task, limit=10, lease=600) == []  # all exported


def _helper_at_fault(marker: Path, proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """The pid of ``proc``'s helper process once it, too, stopped at the fault point."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            pid = int(marker.read_text())
            if pid != proc.pid:
                assert _parent_of(pid) == proc.pid  # a child of the run
                assert "sluicegate.drivers.helpers" in Path(f"/proc/{pid}/cmdline").read_text()
                return pid
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no helper process reached the fault point: {proc.communicate()}")
        time.sleep(0.05)


@contextlib.contextmanager
def _stalled_with_helper(root: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``run --workers 2 --batch-size 3 ARGS`` with fault ``before_place``: the run and its helper
    process, once both wait at the fault (remove ``root/.fault-before_place`` to let them go on).
    Whatever is still alive at the end is killed."""
    proc = _spawn(
        root, "run", "--workers", "2", "--batch-size", "3", *args,
        env={"SLUICEGATE_TESTING__FAULT": "before_place"},
    )  # fmt: skip
    helper = 0
    try:
        helper = _helper_at_fault(root / ".fault-before_place", proc)
        yield proc, helper
    finally:
        proc.kill()
        if helper:
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper, signal.SIGKILL)


def _gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its parent was killed, so nobody reaps it yet
            return True
        time.sleep(0.05)
    return False


# 300 partitions in batches of 3: each exporter stops at the fault point once it has more than
# MAX_INFLIGHT // 2 (128) files in flight, so the run and its helper each hold ~130 claims there
# and ~40 partitions are still pending.
LOCATIONS, DAYS = 100, 3


@pytest.mark.pg
def test_a_killed_helper_process_is_reported_and_its_claims_expire(tmp_path: Path, pg_url: str) -> None:
    """``--workers 2``: the second exporter is a real process; SIGKILL it mid-batch, and the run
    finishes the rest, says what happened (exit 1), and the next run exports the helper's claims
    once their lease expires."""
    root, db = _project(tmp_path, pg_url, locations=LOCATIONS, days=DAYS, lease="3s")
    with _stalled_with_helper(root, "--json") as (proc, helper):
        os.kill(helper, signal.SIGKILL)
        (root / ".fault-before_place").unlink()  # the run itself goes on
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    [summary] = json.loads(out)
    [error] = summary["task_errors"]
    assert f"helper exporter (process {helper}) was killed by SIGKILL" in error
    stuck = [r for r in _ledger_rows(db) if r[3] is not None]
    assert stuck and all(e == 0 for _, e, _, _ in stuck)  # still claimed by the dead helper
    assert summary["exported"] + len(stuck) == LOCATIONS * DAYS, summary  # the run did all the rest
    time.sleep(3.5)
    again = _spawn(root, "run", "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert json.loads(out)[0]["exported"] == len(stuck)
    assert all(v == e and t is None for v, e, _, t in _ledger_rows(db))
    published = files(tmp_path / "out")
    assert len(published) == LOCATIONS * DAYS and all(len(read_csv(p)) == 24 for p in published)


@pytest.mark.pg
def test_a_helper_finishes_its_batch_and_stops_when_its_run_is_killed(tmp_path: Path, pg_url: str) -> None:
    """SIGKILL of the process that started a helper closes the helper's stdin: the helper
    commits what it has claimed, claims nothing more and exits, instead of running on alone."""
    root, db = _project(tmp_path, pg_url, locations=LOCATIONS, days=DAYS)
    with _stalled_with_helper(root) as (proc, helper):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (root / ".fault-before_place").unlink()  # the helper goes on with what it holds
        assert _gone(helper), "the helper kept running after its run was killed"
    rows = _ledger_rows(db)
    committed = sum(1 for v, e, _, t in rows if v == e and t is None)
    orphaned = sum(1 for _, e, _, t in rows if e == 0 and t is not None)  # the killed run's claims
    pending = sum(1 for _, e, _, t in rows if e == 0 and t is None)
    assert committed > 0 and orphaned > 0 and committed + orphaned + pending == LOCATIONS * DAYS
    assert pending > 0  # what nobody had claimed stays for the next run: the helper stopped
    assert len(files(tmp_path / "out")) == committed


@pytest.mark.pg
@pytest.mark.parametrize("batch,helpers", [(4, 0), (3, 1)])  # 11 left < 4 batches of 4; 12 left = 4 of 3
def test_a_helper_starts_only_when_enough_is_left_after_the_first_claim(
    tmp_path: Path, pg_url: str, batch: int, helpers: int
) -> None:
    """A helper process costs more to start than a few batches take: with fewer than
    HELPER_BATCHES batches per helper left after a full first claim, the run works alone."""
    from sluicegate.drivers.partitioned import HELPER_BATCHES

    assert HELPER_BATCHES == 4
    root, _db = _project(tmp_path, pg_url, locations=5, days=3)  # 15 partitions
    marker = root / ".fault-before_place"
    proc = _spawn(
        root, "run", "--workers", "2", "--batch-size", str(batch),
        env={"SLUICEGATE_TESTING__FAULT": "before_place"},
    )  # fmt: skip
    children: list[int] = []
    try:
        _wait_for(marker, proc)
        time.sleep(3)  # a helper, had one been started, would be running by now
        children = [
            pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
            if _parent_of(pid) == proc.pid
        ]  # fmt: skip
        assert len(children) == helpers, children
    finally:
        proc.kill()
        proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _parent_of(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


@pytest.mark.pg
def test_sigterm_during_every_stops_the_helpers_after_their_batch(tmp_path: Path, pg_url: str) -> None:
    """``run --every`` with a helper: SIGTERM to the run (only to it, as ``kill PID`` sends it)
    reaches the helper too. Both finish what they hold and stop; nothing stays claimed, and
    partitions nobody had claimed yet wait for the next run."""
    root, db = _project(tmp_path, pg_url, locations=100, days=10)  # 1,000 partitions
    with _stalled_with_helper(root, "--every", "1s", "--json") as (proc, helper):
        proc.send_signal(signal.SIGTERM)
        (root / ".fault-before_place").unlink()
        out, err = proc.communicate(timeout=120)
        assert _gone(helper), "the helper kept running after its run stopped"
    assert proc.returncode == 0, err
    assert "finishing the batch in hand" in err
    [summary] = json.loads(out.split("\n]\n")[0] + "\n]")
    rows = _ledger_rows(db)
    assert all(t is None for _, _, _, t in rows)  # every claim committed or given back
    committed = sum(1 for v, e, _, _ in rows if v == e)
    assert summary["exported"] == committed == len(files(tmp_path / "out")) > 0
    assert committed < 1000  # the helper stopped too, instead of exporting everything


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_plain_run_stopped_by_a_signal_finishes_its_batch_and_holds_nothing(
    tmp_path: Path, signum: int
) -> None:
    """Ctrl-C during ``run`` (without ``--every``) ended in click's "Aborted!", exit 1, with the
    batch's partitions claimed until their lease ran out (10 min): the next run passed them by.
    Now the batch in hand is finished and committed, nothing is left claimed, later batches
    wait for the next run, and the exit status says a signal stopped it."""
    root, _db = _project(tmp_path, f"sqlite:///{tmp_path / 'source.db'}", locations=6, days=1)
    with (root / "sluicegate.toml").open("a") as settings:
        settings.write("batch_size = 2\n")
    fault = root / ".fault-mid_write"
    proc = _spawn(root, "run", "--workers", "1", "--json", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(fault, proc)  # writing the first batch's first file
    proc.send_signal(signum)
    time.sleep(0.3)
    fault.unlink()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "finishing the batch in hand" in err and "Aborted" not in err
    assert json.loads(out)[0]["exported"] == 2, out
    [status] = operations.status(load(root))
    assert (status["claimed"], status["exported"], status["pending"]) == (0, 2, 4), status
    again = cli(root, "run")
    assert again.returncode == 0 and len(files(tmp_path / "out")) == 6, again.stderr


def test_a_second_signal_stops_a_run_at_once(tmp_path: Path) -> None:
    """A run asked to stop finishes its batch, which may take long: Ctrl-C again stops it now.
    Its claims are given back (they were held until their lease ran out, 10 minutes in which
    the next run passed the batch by), without an attempt."""
    root, _db = _project(tmp_path, f"sqlite:///{tmp_path / 'source.db'}", locations=2, days=1)
    fault = root / ".fault-mid_write"
    proc = _spawn(root, "run", "--workers", "1", env={"SLUICEGATE_TESTING__FAULT": "mid_write"})
    _wait_for(fault, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)  # the fault's pause never ended: only the signal did
    assert proc.returncode == 130 and "SIGINT again: stopping now" in err, err
    assert files(tmp_path / "out") == []
    [status] = operations.status(load(root))
    assert (status["claimed"], status["pending"], status["retrying"]) == (0, 2, 0), status
    again = cli(root, "run")
    assert again.returncode == 0 and len(files(tmp_path / "out")) == 2, again.stderr


@EVERY_LEDGER
def test_two_processes_never_write_partitions_whose_keys_differ_only_in_type_to_one_file(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """SQLite's untyped column holds 1 and '1': two partitions that render 1/20241102.csv. The
    check against the ledger's files was made before the file was put in place, so a worker
    paused there (or just slower) passed it while another exported the other partition; its
    file then replaced that one, and both were recorded exported: row a or b was in no file.
    The check is now made in the commit, under a lock of the path: the later one is parked."""
    ledger = None if dialect == "sqlite" else _url(request, tmp_path, dialect)
    root = typed_project(tmp_path, 1, ledger)
    paused = _spawn(
        root, "run", "typed", "--limit", "1", "--json", env={"SLUICEGATE_TESTING__FAULT": "before_place"}
    )
    marker = root / ".fault-before_place"
    _wait_for(marker, paused)  # its file is prepared, not yet in place nor recorded
    other = _spawn(root, "run", "typed", "--json")
    out, err = other.communicate(timeout=120)
    assert json.loads(out)[0]["exported"] == 1, out + err
    marker.unlink()
    out, err = paused.communicate(timeout=120)
    late = json.loads(out)[0]
    assert (late["exported"], late["failed"]) == (0, 1), out + err
    [status] = operations.status(load(root), ["typed"])
    assert (status["exported"], status["failed"]) == (1, 1), status
    [failure] = status["failures"]
    assert_one_type_twin_parked(failure, tmp_path / "out")


def _claimed_for_one_file(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str, partitions: int
) -> tuple[Any, Callable[[], Ledger], list[ExportResult]]:
    """The openaq task, how to open its ledger, and ``partitions`` of its partitions claimed
    together, each with a result for the file same.csv (as keys that differ only in type render
    one file), in the order of their keys."""
    url = _url(request, tmp_path, dialect)
    project = load(write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out")))
    task = project.tasks["openaq"]

    def ledger() -> Ledger:
        return Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema)

    with ledger() as lg:
        lg.ensure_schema()
        lg.partitions.mark(
            [restore_partition(task, [loc, "2024-01-01"], "UTC") for loc in range(1, partitions + 1)], task
        )
        claims = lg.partitions.claim(task, limit=partitions, lease=600)
    return (
        task,
        ledger,
        [
            ExportResult(claim=c, path="same.csv", rows=1, nbytes=1, checksum="c", published=True)
            for c in sorted(claims, key=lambda c: c.keys["location_id"])
        ],
    )


@pytest.mark.mariadb
def test_a_file_locked_past_the_wait_names_the_task_and_a_file_and_gives_the_batch_back(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """MariaDB's named lock of a file waits 10 s; past that the commit said only "another worker
    held a file this run was to put in place for 10 s": no task, no file, nothing on what next.
    And a partition without rows writes no file (its path None): first in the batch, the message
    then named the file "such as None"."""
    from sluicegate.drivers.partitioned_paths import SharedFiles
    from sluicegate.exceptions import LedgerError

    task, ledger, [mine, late, third] = _claimed_for_one_file(request, tmp_path, "mariadb", 3)
    entered, release = threading.Event(), threading.Event()

    def place(held: Sequence[ExportResult]) -> Sequence[ExportResult]:
        entered.set()
        assert release.wait(60)
        return held

    with ledger() as first, ledger() as second:
        early = threading.Thread(target=lambda: first.partitions.commit([mine], place, SharedFiles(task)))
        early.start()
        try:
            assert entered.wait(30)
            empty = dataclasses.replace(third, path=None, rows=0, nbytes=0, checksum=None)
            with pytest.raises(LedgerError) as raised:
                second.partitions.commit([empty, late], None, SharedFiles(task))
        finally:
            release.set()
            early.join(30)
    message = str(raised.value)
    assert "such as same.csv" in message and "None" not in message, message
    assert "task openaq" in message and "the next run exports them" in message, message


@EVERY_LEDGER
def test_a_commit_waits_for_another_commit_of_its_file_and_then_sees_it(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """Two workers commit two partitions that render one file, at once: the second waits for the
    first's lock of the file (its rows are not locked: another partition), then sees its path
    recorded and may refuse it. Without the lock both passed the check, and both files were placed."""
    _task, ledger, [mine, theirs] = _claimed_for_one_file(request, tmp_path, dialect, 2)
    entered, release = threading.Event(), threading.Event()
    seen: list[list[PathTaken]] = []

    def place(held: Sequence[ExportResult]) -> Sequence[ExportResult]:
        entered.set()  # the file is being put in place, its lock held
        assert release.wait(30)
        return held

    def vet(held: Sequence[ExportResult], taken: list[PathTaken]) -> Sequence[ExportResult]:
        seen.append(taken)
        return held if not taken else []

    with ledger() as first, ledger() as second:
        done: dict[str, list[bool]] = {}
        early = threading.Thread(
            target=lambda: done.update(early=first.partitions.commit([mine], place, vet))
        )
        early.start()
        assert entered.wait(30)
        late = threading.Thread(
            target=lambda: done.update(late=second.partitions.commit([theirs], None, vet))
        )
        late.start()
        time.sleep(0.5)
        assert len(seen) == 1, seen  # the late commit waits for the file's lock
        release.set()
        early.join(30)
        late.join(30)
    assert done == {"early": [True], "late": [False]}
    [[], [late_seen]] = seen
    assert late_seen[:4] == ("same.csv", mine.claim.pkey, "UTC", False)  # exported: not moving


@pytest.mark.parametrize(
    "dialect", [pytest.param("pg", marks=pytest.mark.pg), pytest.param("mariadb", marks=pytest.mark.mariadb)]
)
def test_a_commit_retried_on_a_new_connection_sees_a_commit_of_its_file_made_meanwhile(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str
) -> None:
    """The connection of a commit is lost once its file is in place: its lock of the file goes
    with it, and another worker commits another partition that renders that file (its file
    replaces ours). The retry on a new connection recorded ours as well, unchecked: both were
    exported to one file, which holds the other's rows only. It now checks again, and refuses."""
    _task, ledger, [mine, theirs] = _claimed_for_one_file(request, tmp_path, dialect, 2)

    def vet(held: Sequence[ExportResult], taken: list[PathTaken]) -> Sequence[ExportResult]:
        return [r for r in held if all(pkey == r.claim.pkey for _, pkey, *_ in taken)]

    pid = "SELECT pg_backend_pid()" if dialect == "pg" else "SELECT CONNECTION_ID()"
    kill = "SELECT pg_terminate_backend(%s)" if dialect == "pg" else "KILL CONNECTION %s"
    with ledger() as first, ledger() as second, ledger() as admin:
        [(session,)] = first.partitions.core.conn.execute(pid).fetchall()
        late: list[bool] = []

        def place(held: Sequence[ExportResult]) -> Sequence[ExportResult]:
            admin.partitions.core.conn.execute(kill % int(session))  # lost once the file is in place
            time.sleep(0.5)
            late.extend(second.partitions.commit([theirs], None, vet))  # its file replaces ours
            return held

        early = first.partitions.commit([mine], place, vet)
    assert late == [True]
    assert early == [False]  # not recorded: the file in place is the other partition's


@EVERY_LEDGER
def test_a_claim_run_again_after_a_deadlock_keeps_the_token_its_rows_were_taken_under(
    tmp_path: Path, request: pytest.FixtureRequest, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that found one partition put it under a lone token, then the server rolled the
    transaction back (a deadlock, which MariaDB's claim meets against a mark) and the claim ran
    again, finding three: the lone token of the first try stayed. PostgreSQL and SQLite took the
    three under the batch token but handed out claims of the lone one, so none could commit;
    MariaDB put the batch under the lone token, so each was charged an attempt when taken over."""
    project, db = _installed_csv_project(request, tmp_path, dialect)
    task = project.tasks["openaq"]
    for loc in (1, 2, 3):
        db.location(loc, "UTC")
    operations.mark(project, "openaq", {"location_id": "1", "day": "2024-01-01"})
    failed: list[str] = []
    sleep = time.sleep

    def deadlock(*args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append("once")
            raise LedgerError("rolled back") from RuntimeError("deadlock detected")

    def meanwhile(seconds: float) -> None:  # the retry's pause: two more partitions are marked
        if failed == ["once"]:
            failed.append("marked")
            for loc in ("2", "3"):
                operations.mark(project, "openaq", {"location_id": loc, "day": "2024-01-01"})
        sleep(seconds)

    with Ledger(project.settings.ledger_url, schema=project.settings.ledger_schema) as ledger:
        store = ledger.partitions
        lone, claim_take = store.lone, store.claim_take
        monkeypatch.setattr(store, "lone", lambda *a, **k: (deadlock(), lone(*a, **k)))
        monkeypatch.setattr(store, "claim_take", lambda *a, **k: (deadlock(), claim_take(*a, **k)))
        monkeypatch.setattr(time, "sleep", meanwhile)
        claims = store.claim(task, limit=10, lease=600)
        monkeypatch.setattr(time, "sleep", sleep)
    assert failed == ["once", "marked"] and len(claims) == 3
    stored = {str(t) for (t,) in db.rows(f"SELECT claim_token FROM {_table(db.url)}")}
    assert stored == {claims[0].token} and uuid.UUID(claims[0].token).version == 4
