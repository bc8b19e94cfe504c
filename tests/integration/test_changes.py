"""The change feed: manifests under _manifests/, and ``sluicegate changes`` reading them back.

Real worker processes, real files, a real PostgreSQL ledger (and SQLite), real S3 over HTTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sluicegate import operations
from sluicegate.changes import Change, ChangeFeed, FeedRun
from sluicegate.cli import main
from sluicegate.destinations import open_destination
from sluicegate.destinations.local import LocalDestination
from support import SLUICEGATE, Db, cli, files, hours, load, write_project

UTC = dt.UTC
DAY0 = dt.datetime(2024, 1, 1, tzinfo=UTC)


def _project(tmp_path: Path, url: str, *, locations: int, days: int, **kwargs: Any) -> tuple[Path, Db]:
    root = write_project(
        tmp_path / "proj", source=url, destination=kwargs.pop("destination", str(tmp_path / "out")), **kwargs
    )
    db = Db(url)
    operations.install(load(root))
    for loc in range(1, locations + 1):
        db.location(loc, "UTC")
        db.insert(loc, hours(DAY0, 24 * days))
    return root, db


def _manifests(out: Path) -> list[dict[str, Any]]:
    """Every line of every manifest (each file parses whole: manifests are published atomically)."""
    lines = []
    for path in sorted((out / "_manifests").rglob("*.jsonl")) if (out / "_manifests").exists() else []:
        if ".sluicegate-" in path.name:
            continue
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _on_disk(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): _sha(p) for p in files(out)}


def _spawn(root: Path, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    if fault:
        env["SLUICEGATE_TESTING__FAULT"] = fault
    return subprocess.Popen(
        [SLUICEGATE, "-C", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _changes(root: Path, *args: str) -> list[dict[str, Any]]:
    proc = cli(root, "changes", *args, "--json", check=True)
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def test_changes_since_a_time_or_a_run_lists_exactly_what_changed(tmp_path: Path) -> None:
    root, db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=3, days=2)
    out = tmp_path / "out"
    first = cli(root, "run", "--json", check=True)
    assert json.loads(first.stdout)[0]["exported"] == 6
    lines = _manifests(out)
    assert {line["path"] for line in lines} == set(_on_disk(out))  # every file, in one run's manifests
    assert {line["sha256"] for line in lines} == set(_on_disk(out).values())
    assert all(line["action"] == "published" and line["task"] == "openaq" for line in lines)
    assert all(set(line) == set(Change.__dataclass_fields__) for line in lines)  # every field, no other
    assert all(line["keys"]["location_id"] == 1 for line in lines if "location-1-" in line["path"])
    assert all(line["version"] == 1 and line["rows"] == 24 for line in lines)
    run_id = lines[0]["run"]
    assert len({line["run"] for line in lines}) == 1
    since = dt.datetime.now(UTC)
    time.sleep(0.01)

    db.update_value(1, DAY0 + dt.timedelta(hours=3), 99.0)  # location 1, day 1: changed
    db.insert(2, [DAY0 + dt.timedelta(days=1, minutes=30)])  # location 2, day 2: changed
    db.conn.execute(
        "DELETE FROM measurements WHERE location_id = 3 AND datetime < ?",
        (db.ts(DAY0 + dt.timedelta(days=1)),),
    )
    cli(root, "run", "--json", check=True)

    disk = _on_disk(out)
    changed = {
        "records/csv/locationid=1/year=2024/month=01/location-1-20240101.csv": "published",
        "records/csv/locationid=2/year=2024/month=01/location-2-20240102.csv": "published",
        "records/csv/locationid=3/year=2024/month=01/location-3-20240101.csv": "deleted",
    }
    for since_arg in (since.isoformat(), run_id):
        entries = _changes(root, "--since", since_arg)
        assert {e["path"]: e["action"] for e in entries} == changed, since_arg
        for e in entries:
            if e["action"] == "published":
                assert disk[e["path"]] == e["sha256"] and e["version"] == 2
            else:
                assert e["path"] not in disk and e["sha256"] is None
    assert _changes(root, "openaq", "--since", run_id) == _changes(root, "--since", run_id)
    assert _changes(root, "--since", dt.datetime.now(UTC).isoformat()) == []
    # Since the beginning: the latest entry of every file, which is exactly what is on disk.
    entries = _changes(root, "--since", "2000-01-01")
    assert {e["path"]: e["sha256"] for e in entries if e["action"] == "published"} == disk
    # ... also from before year 1000, whose manifest folder name sorts after 2026's unless padded
    assert _changes(root, "--since", "0999-01-01T00:00:00Z") == entries
    text = cli(root, "changes", "--since", run_id, check=True).stdout
    assert "deleted" in text and "location-2-20240102.csv" in text


def test_a_consumer_that_remembers_its_last_entry_gets_exactly_the_later_entries(tmp_path: Path) -> None:
    """Two runs of the task overlap (two processes) and one run's lanes interleave (a helper's
    manifests numbered in a region of their own): a consumer that remembers the position of the
    last entry it saw (``<run>-<seq>``) gets every later entry once. With only a run id, the
    other run's manifests written before that run's last one, and the rest of that run, were
    skipped."""
    root, _db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=1, days=1)
    cli(root, "run", check=True)
    destination = open_destination(load(root).settings.destination)
    first, second = FeedRun(), FeedRun()
    feeds = [ChangeFeed(destination, task="openaq", run=run) for run in (first, *first.split(2), second)]
    got = _changes(root, "--since", "2000-01-01")
    written: list[str] = []
    for round_ in range(4):
        for n, feed in enumerate([*feeds, feeds[0], feeds[2]]):  # the runs and the lanes interleave
            written.append(f"gone/{round_}-{n}.csv")
            feed.deleted(written[-1], keys={"n": n})
            time.sleep(0.002)
        last = got[-1]
        got += _changes(root, "--since", f"{last['run']}-{last['seq']}")
    assert [e["path"] for e in got[len(got) - len(written) :]] == written
    assert len(got) == len(written) + 1  # the first run's file, then each written entry once
    refused = cli(root, "changes", "--since", f"{first.run}-999")
    assert refused.returncode == 2 and "no manifest" in refused.stderr, refused.stderr


def test_a_manifest_cut_short_or_deleted_while_changes_reads_is_named_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest cut short said it was "not a sluicegate manifest"; one deleted between the
    listing and its read (an expiry rule on _manifests/) said "does not exist; run the stage
    that writes it", a stage of a blocks task. Each now names the file and what to do, exit 1."""
    root, _db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=2, days=1)
    cli(root, "run", check=True)
    (manifest,) = (tmp_path / "out" / "_manifests").rglob("*.jsonl")
    body = manifest.read_bytes()
    for cut in (body[:-1], body[: len(body) // 2 + 7]):  # its last line whole but for its end; mid-line
        manifest.write_bytes(cut)
        proc = cli(root, "changes", "--since", "2000-01-01")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"sluicegate: error: {manifest} is damaged (cut short"), proc.stderr
        assert "restore it" in proc.stderr and len(proc.stderr.splitlines()) == 1
    manifest.write_bytes(body)
    listed = LocalDestination.list_files

    def listed_then_deleted(self: LocalDestination, prefix: str, start_after: str = "") -> list[str]:
        names = listed(self, prefix, start_after)
        manifest.unlink(missing_ok=True)
        return names

    monkeypatch.setattr(LocalDestination, "list_files", listed_then_deleted)
    result = CliRunner().invoke(main, ["-C", str(root), "changes", "--since", "2000-01-01"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.startswith(f"sluicegate: error: {manifest} was deleted while"), result.stderr
    assert "run the stage" not in result.stderr and len(result.stderr.splitlines()) == 1
    monkeypatch.undo()
    assert _changes(root, "--since", "2000-01-01") == []  # asked again: the deleted one is not listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "is neither a time"),
        (["--since", "0" * 32], "no manifest of that run"),
        (["nosuchtask", "--since", "2024-01-01"], "no task named 'nosuchtask'"),
        (["--since", "0001-01-01T00:00:00+01:00"], "outside the years 1 to 9999"),
    ],
)
def test_changes_refuses_a_bad_since_or_task_with_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root, _db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=1, days=1)
    cli(root, "run", check=True)
    proc = cli(root, "changes", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_feed_off_writes_no_manifest(tmp_path: Path) -> None:
    root, _db = _project(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=1, days=1, destination_extra="manifests = false"
    )
    cli(root, "run", check=True)
    assert len(files(tmp_path / "out")) == 1
    assert not (tmp_path / "out" / "_manifests").exists()
    proc = cli(root, "changes", "--since", "2024-01-01")
    assert proc.returncode == 2 and "manifests is false" in proc.stderr


def test_a_manifest_that_cannot_be_written_leaves_the_claims_uncommitted(tmp_path: Path) -> None:
    root, db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=2, days=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifests").write_text("in the way")  # the manifest's folder cannot be created
    proc = cli(root, "run", "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)[0]
    assert summary["exported"] == 0 and summary["failed"] == 2
    assert db.scalar("SELECT count(*) FROM sluicegate_partitions WHERE exported_version = 0") == 2
    (out / "_manifests").unlink()
    again = cli(root, "run", "--json", check=True)
    assert json.loads(again.stdout)[0]["exported"] == 2  # exported again, now with its manifest
    assert db.scalar("SELECT count(*) FROM sluicegate_partitions WHERE exported_version = 0") == 0
    assert {line["path"]: line["sha256"] for line in _manifests(out)} == _on_disk(out)


@pytest.mark.s3
def test_a_manifest_upload_refused_by_s3_leaves_the_claims_uncommitted(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str], fault_proxy: Callable[[str], Any]
) -> None:
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    extra = f'endpoint_url = "{proxy.url}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, db = _project(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=2, days=1,
        destination=f"s3://{bucket}/feed", destination_extra=extra,
    )  # fmt: skip
    proxy.fail(method="PUT", path_regex="/_manifests/", status=503, times=None)
    proc = cli(root, "run", "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)[0]
    assert summary["exported"] == 0 and summary["failed"] == 2, summary
    assert any(e.fault == "fail" for e in proxy.faulted)
    assert db.scalar("SELECT count(*) FROM sluicegate_partitions WHERE exported_version = 0") == 2
    proxy.clear()
    again = cli(root, "run", "--json", check=True)
    assert json.loads(again.stdout)[0]["exported"] == 2
    entries = _changes(root, "--since", "2000-01-01")
    assert sorted(e["path"] for e in entries) == sorted(
        f"records/csv/locationid={n}/year=2024/month=01/location-{n}-20240101.csv" for n in (1, 2)
    )


class _Folder:
    """The published files and manifest lines of a local destination."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def files(self) -> dict[str, str]:
        return _on_disk(self.out) if self.out.exists() else {}

    def manifest_lines(self) -> list[dict[str, Any]]:
        return _manifests(self.out)


class _Bucket:
    """The same, read from an S3 bucket over HTTP."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def _objects(self) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            keys += [str(o["Key"]) for o in page.get("Contents", [])]
        return keys

    def _body(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def files(self) -> dict[str, str]:
        return {
            key[len(self.prefix) :]: hashlib.sha256(self._body(key)).hexdigest()
            for key in self._objects()
            if not key[len(self.prefix) :].startswith(("_manifests/", "_sluicegate/"))
        }

    def manifest_lines(self) -> list[dict[str, Any]]:
        lines = []
        for key in sorted(k for k in self._objects() if k[len(self.prefix) :].startswith("_manifests/")):
            lines += [json.loads(line) for line in self._body(key).decode().splitlines()]
        return lines


FAULTS = ("mid_write", "before_place", "after_publish", "after_manifest")


def _kill_at(root: Path, fault: str) -> None:
    """Start a worker that stops at ``fault``, SIGKILL it there."""
    proc = _spawn(root, "run", "--batch-size", "3", fault=fault)
    marker = root / f".fault-{fault}"
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited before {fault}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{fault} not reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    marker.unlink()


def _check_feed(store: _Folder | _Bucket, db: Db, seen: set[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """After any crash: manifests name only files that were in place, and name every recorded file.

    ``seen`` collects every (path, sha256) found in place after each run; a run places a path
    at most once, so every file a manifest may name is among them.
    """
    lines = store.manifest_lines()  # each manifest parses whole: none is half written
    present = store.files()
    seen |= set(present.items())
    published = [(e["path"], e["sha256"], e["version"]) for e in lines if e["action"] == "published"]
    missing = {path for path, _, _ in published} - set(present)
    assert not missing, f"manifests name files that are not there: {sorted(missing)[:3]}"
    never = {(p, c) for p, c, _ in published} - seen
    assert not never, f"manifests name files that were never in place: {sorted(never)[:3]}"
    recorded = db.rows(
        "SELECT path, checksum, exported_version FROM sluicegate.partitions WHERE exported_version > 0"
    )
    unlisted = {(p, c, v) for p, c, v in recorded} - set(published)
    assert not unlisted, f"files recorded on the ledger but in no manifest: {sorted(unlisted)[:3]}"
    return published


@pytest.mark.pg
@pytest.mark.parametrize("where", ["folder", pytest.param("s3", marks=pytest.mark.s3)])
def test_chaos_manifests_name_every_recorded_file_and_only_files_in_place(
    tmp_path: Path, pg_url: str, where: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL at every fault point, round after round, with changes in between."""
    if where == "s3":
        endpoint, bucket, key, secret = request.getfixturevalue("seaweed_bucket")
        extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
        root, db = _project(
            tmp_path, pg_url, locations=6, days=3, lease="1s", extra_defaults="max_attempts = 100",
            destination=f"s3://{bucket}/feed", destination_extra=extra,
        )  # fmt: skip
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )
        store: _Folder | _Bucket = _Bucket(client, bucket, "feed/")
    else:
        root, db = _project(
            tmp_path, pg_url, locations=6, days=3, lease="1s", extra_defaults="max_attempts = 100"
        )
        store = _Folder(tmp_path / "out")
    rng = random.Random(13)
    seen: set[tuple[str, str]] = set()
    for round_ in range(8):  # each fault point twice
        for loc in rng.sample(range(1, 7), 3):  # change three location-days
            db.insert(
                loc, [DAY0 + dt.timedelta(days=rng.randrange(3), hours=rng.randrange(24), seconds=round_ + 1)]
            )
        _kill_at(root, FAULTS[round_ % len(FAULTS)])
        _check_feed(store, db, seen)
        time.sleep(1.1)  # the killed worker's leases expire
    final = cli(root, "run", "--json", check=True)
    assert json.loads(final.stdout)[0]["failed"] == 0
    published = _check_feed(store, db, seen)
    assert all(v == e for v, e in db.rows("SELECT version, exported_version FROM sluicegate.partitions"))
    # The latest entry of every file is exactly what is in place.
    latest = _changes(root, "--since", "2000-01-01")
    assert {e["path"]: e["sha256"] for e in latest if e["action"] == "published"} == store.files()
    assert len(store.files()) == 18
    # At-least-once: kills after the manifest and before the commit list a file twice.
    assert len(published) > len(set(published))


@pytest.mark.parametrize("fault", ["after_publish", "after_manifest"])
def test_a_file_placed_by_a_killed_worker_goes_when_its_partition_empties(tmp_path: Path, fault: str) -> None:
    """A worker killed after placing a partition's first file leaves it unrecorded; the rows are
    then deleted: the next export (no rows, no file on the ledger) deletes that file and says so."""
    root, db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=1, days=1, lease="1s")
    out = tmp_path / "out"
    since = dt.datetime.now(UTC).isoformat()
    _kill_at(root, fault)
    path = "records/csv/locationid=1/year=2024/month=01/location-1-20240101.csv"
    assert path in _on_disk(out)  # in place, not recorded
    db.conn.execute("DELETE FROM measurements WHERE location_id = 1")
    time.sleep(1.1)  # the killed worker's lease expires
    cli(root, "run", check=True)
    assert _on_disk(out) == {}  # no rows, no file
    assert db.scalar("SELECT count(*) FROM sluicegate_partitions WHERE path IS NOT NULL") == 0
    assert [(e["path"], e["action"]) for e in _changes(root, "--since", since)] == [(path, "deleted")]


def test_a_listed_file_deleted_by_a_killed_worker_is_listed_as_deleted(tmp_path: Path) -> None:
    """A killed worker placed and listed a partition's file without recording it; the rows go,
    and the worker exporting that (no rows) is killed after deleting the file, before its
    manifest: the next export lists the deletion, though no file is left to delete."""
    root, db = _project(tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=1, days=1, lease="1s")
    out = tmp_path / "out"
    since = dt.datetime.now(UTC).isoformat()
    _kill_at(root, "after_manifest")  # placed and listed, not recorded
    path = "records/csv/locationid=1/year=2024/month=01/location-1-20240101.csv"
    assert [(e["path"], e["action"]) for e in _changes(root, "--since", since)] == [(path, "published")]
    db.conn.execute("DELETE FROM measurements WHERE location_id = 1")
    time.sleep(1.1)
    _kill_at(root, "after_publish")  # deleted, not listed, not recorded
    assert _on_disk(out) == {}
    time.sleep(1.1)
    cli(root, "run", check=True)
    assert [(e["path"], e["action"]) for e in _changes(root, "--since", since)] == [(path, "deleted")]


@pytest.mark.s3
def test_changes_since_a_time_today_lists_todays_manifests_on_seaweedfs(
    tmp_path: Path, seaweed_bucket: tuple[str, str, str, str]
) -> None:
    """SeaweedFS skips a whole folder named by StartAfter ("_manifests/YYYY/MM/DD"): the
    manifests of the day of --since were never read, so every change since a time today was missed."""
    endpoint, bucket, key, secret = seaweed_bucket
    extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
    root, _db = _project(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", locations=2, days=1,
        destination=f"s3://{bucket}/feed", destination_extra=extra,
    )  # fmt: skip
    since = dt.datetime.now(UTC).isoformat()
    cli(root, "run", check=True)
    assert sorted(e["path"] for e in _changes(root, "--since", since)) == [
        f"records/csv/locationid={n}/year=2024/month=01/location-{n}-20240101.csv" for n in (1, 2)
    ]
