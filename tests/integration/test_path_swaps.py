"""Path template changes whose new paths are other partitions' old files, with a partition
parked on the way, on PostgreSQL and MariaDB ledgers, a folder and SeaweedFS: after every run,
each file the ledger records holds the rows of the partition that records it, and only those."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from sluicegate import operations
from support import SLUICEGATE, Db, cli, load, write_project

UTC = dt.UTC
D1, D2 = "2024-01-01", "2024-01-02"  # sites named as days: A (D1, D2) and B (D2, D1) swap files
A, B = {"site": D1, "day": D2}, {"site": D2, "day": D1}
FAILING = (
    "SELECT l.name AS site, m.datetime, CASE WHEN l.name = '{site}' THEN abs(-9223372036854775807 - 1)"
    " ELSE m.value END AS value FROM measurements m JOIN locations l USING (location_id)"
)
SELECT = "SELECT l.name AS site, m.datetime, m.value FROM measurements m JOIN locations l USING (location_id)"


@pytest.fixture(params=["pg", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return url


class Project:
    """A project of one task `bysite` (keys site and day) on a SQLite source, run by the CLI."""

    def __init__(
        self, tmp_path: Path, ledger: str, where: str, request: pytest.FixtureRequest, lease: str = "10m"
    ) -> None:
        url = f"sqlite:///{tmp_path / 's.db'}"
        self.s3: Any = None
        destination, extra = str(tmp_path / "out"), ""
        if where == "s3":
            endpoint, bucket, key, secret = request.getfixturevalue("seaweed_bucket")
            destination = f"s3://{bucket}/out"
            extra = f'endpoint_url = "{endpoint}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"'
            client = boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                region_name="us-east-1",
            )  # fmt: skip
            self.s3 = (client, bucket)
        self.out = tmp_path / "out"
        self.root = write_project(
            tmp_path / "proj", source=url, destination=destination, capture="explicit", ledger=ledger,
            destination_extra=extra, lease=lease,
        )  # fmt: skip
        folder = self.root / "tasks" / "bysite"
        folder.mkdir()
        (folder / "task.toml").write_text(
            'keys = ["site"]\npath = "{site}/{day}.csv"\nformat = "csv"\n[time]\ncolumn = "datetime"\n'
            'zone = "UTC"\n[columns]\nvalue = "float"\n'
        )
        (folder / "select.sql").write_text(SELECT)
        (self.root / "tasks" / "openaq").rename(tmp_path / "openaq-unused")
        db = Db(url)
        for loc, site in enumerate((D1, D2), 1):
            db.location(loc, "UTC", name=site)
            db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 5, tzinfo=UTC)])
        self.folder = folder

    def mark(self, *parts: dict[str, str]) -> None:
        for part in parts:
            cli(self.root, "mark", "bysite", *(f"{k}={v}" for k, v in part.items()), check=True)
            time.sleep(0.01)  # claimed in this order

    def run(self, *args: str, check: bool = True) -> dict[str, Any]:
        proc = cli(self.root, "run", "bysite", "--json", *args)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        [summary] = json.loads(proc.stdout)
        if check:
            self.check()
        return dict(summary)

    def kill_at(self, point: str, *args: str) -> float:
        """Run until the fault ``point``, then SIGKILL the worker; return when it died."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        env["SLUICEGATE_TESTING__FAULT"] = point
        proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(self.root), "run", "bysite", "--json", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        marker, deadline = self.root / f".fault-{point}", time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{marker} did not appear"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        marker.unlink()
        return time.monotonic()

    def template(self, path: str) -> None:
        toml = self.folder / "task.toml"
        toml.write_text(
            toml.read_text().replace('"{site}/{day}.csv"', path).replace('"{day}/{site}.csv"', path)
        )

    def fail(self, part: dict[str, str] | None) -> None:
        """Make every export of ``part``'s site fail for good (an SQL error), or none."""
        (self.folder / "select.sql").write_text(FAILING.format(site=part["site"]) if part else SELECT)

    def recorded(self) -> dict[str, tuple[str | None, str]]:
        project = load(self.root)
        rows = operations.list_partitions(project, project.tasks["bysite"], state=None, limit=100, offset=0)
        return {r["partition"]: (r["path"], r["state"]) for r in rows}

    def read(self, path: str) -> list[dict[str, str]]:
        if self.s3 is None:
            text = (self.out / path).read_text()
        else:
            client, bucket = self.s3
            text = client.get_object(Bucket=bucket, Key=f"out/{path}")["Body"].read().decode()
        return list(csv.DictReader(io.StringIO(text)))

    def check(self) -> None:
        """Every recorded file holds the rows of its partition, and no two partitions record one file;
        the change feed's latest entry of each path names the partition whose rows are there."""
        recorded = self.recorded()
        paths = [p for p, _ in recorded.values() if p]
        assert len(paths) == len(set(paths)), recorded
        for pkey, (path, _state) in recorded.items():
            if path:
                site, day = json.loads(pkey)
                got = {(r["site"], r["datetime"][:10]) for r in self.read(path)}
                assert got == {(site, day)}, (pkey, path, got, recorded)
        feed = cli(self.root, "changes", "--since", "2000-01-01T00:00:00", "--json", check=True)
        for entry in json.loads(feed.stdout):
            if entry["action"] == "published":
                got = {(r["site"], r["datetime"][:10]) for r in self.read(entry["path"])}
                assert got == {(entry["keys"]["site"], entry["keys"]["day"])}, (entry, got)


def _key(part: dict[str, str]) -> str:
    return json.dumps([part["site"], part["day"]], separators=(",", ":"))


WHERE = ["folder", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.mark.parametrize("where", WHERE)
def test_a_partition_parked_after_giving_its_file_up_names_no_file_then_reset_moves_it(
    tmp_path: Path, ledger_url: str, where: str, request: pytest.FixtureRequest
) -> None:
    """Key swap; B first takes A's old file (A is queued), then A fails for good: A's row named B's
    file and refused B's re-export of it. Then `reset --failed` (A's rows readable again) moves A."""
    p = Project(tmp_path, ledger_url, where, request)
    p.mark(A, B)
    assert p.run()["exported"] == 2
    p.template('"{day}/{site}.csv"')
    p.fail(A)
    p.mark(B, A)
    assert p.run("--limit", "1")["exported"] == 1  # B, into A's old file
    parked = p.run()
    assert (parked["exported"], parked["failed"]) == (0, 1), parked
    assert p.recorded()[_key(A)] == (None, "failed")
    cli(p.root, "reexport", "bysite", check=True)
    again = p.run()
    assert (again["exported"], again["failed"]) == (1, 1), again  # B; A's error is its own
    p.fail(None)
    cli(p.root, "reset", "bysite", "--failed", check=True)
    moved = p.run()
    assert (moved["exported"], moved["failed"]) == (1, 0), moved
    assert p.recorded() == {_key(A): (f"{D2}/{D1}.csv", "exported"), _key(B): (f"{D1}/{D2}.csv", "exported")}


@pytest.mark.parametrize("where", WHERE)
def test_a_partition_parked_before_the_template_change_and_a_swap_back(
    tmp_path: Path, ledger_url: str, where: str, request: pytest.FixtureRequest
) -> None:
    """A is parked under the old template; the swap then queues B into A's old file (refused:
    stale); after a reexport A fails first and B is refused again; then the template goes back."""
    p = Project(tmp_path, ledger_url, where, request)
    p.mark(A, B)
    assert p.run()["exported"] == 2
    p.fail(A)
    p.mark(A)
    assert p.run()["failed"] == 1  # A parked, its old file still its own
    p.template('"{day}/{site}.csv"')
    p.mark(B)
    stale = p.run()
    assert (stale["exported"], stale["failed"]) == (0, 1), stale  # B: A keeps its file until reexport
    cli(p.root, "reexport", "bysite", check=True)
    both = p.run()  # A's change is the older one: A fails first, and B keeps off its file again
    assert (both["exported"], both["failed"]) == (0, 2), both
    assert p.recorded()[_key(A)] == (f"{D1}/{D2}.csv", "failed")  # its own file still
    p.template('"{site}/{day}.csv"')  # back: A's path is its old one, B's its old one
    p.fail(None)
    cli(p.root, "reexport", "bysite", check=True)
    back = p.run()
    assert (back["exported"], back["failed"]) == (2, 0), back
    assert p.recorded() == {_key(A): (f"{D1}/{D2}.csv", "exported"), _key(B): (f"{D2}/{D1}.csv", "exported")}


@pytest.mark.parametrize("where", WHERE)
def test_a_swap_in_one_batch_with_one_partition_failing(
    tmp_path: Path, ledger_url: str, where: str, request: pytest.FixtureRequest
) -> None:
    """Both queued in one batch, A fails: B's commit sees A parked and keeps off its file."""
    p = Project(tmp_path, ledger_url, where, request)
    p.mark(A, B)
    assert p.run()["exported"] == 2
    p.template('"{day}/{site}.csv"')
    p.fail(A)
    cli(p.root, "reexport", "bysite", check=True)
    p.run()
    p.fail(None)
    cli(p.root, "reset", "bysite", "--failed", check=True)
    done = p.run()
    assert done["failed"] == 0, done
    assert p.recorded() == {_key(A): (f"{D2}/{D1}.csv", "exported"), _key(B): (f"{D1}/{D2}.csv", "exported")}


@pytest.mark.parametrize("where", WHERE)
def test_a_worker_killed_after_putting_a_file_in_a_parked_partitions_old_place_leaves_it_no_claim(
    tmp_path: Path, ledger_url: str, where: str, request: pytest.FixtureRequest
) -> None:
    """Key swap; B's worker puts B's file at A's old path (A queued) and is SIGKILLed before its
    commit; A, claimed before B's lease ends, fails for good, its row naming that path, which
    holds B's bytes. B was then refused as "stale" (A keeps its file) after every reexport: A's
    file is not there any more, so its claim to the path is void, and B takes it."""
    p = Project(tmp_path, ledger_url, where, request, lease="5s")
    p.mark(A, B)
    assert p.run()["exported"] == 2
    p.template('"{day}/{site}.csv"')
    p.fail(A)
    p.mark(B, A)
    killed = p.kill_at("after_publish", "--limit", "1")  # B's file at A's old path, unrecorded
    assert {(r["site"], r["datetime"][:10]) for r in p.read(f"{D1}/{D2}.csv")} == {(D2, D1)}
    parked = p.run(check=False)  # A only: B is still claimed by the dead worker
    assert (parked["exported"], parked["failed"]) == (0, 1), parked
    assert p.recorded()[_key(A)] == (f"{D1}/{D2}.csv", "failed")  # B's bytes are there
    time.sleep(max(0.0, killed + 5.5 - time.monotonic()))  # B's lease runs out
    taken = p.run(check=False)
    assert (taken["exported"], taken["failed"]) == (1, 0), taken  # B, taken over
    p.check()
    assert p.recorded() == {_key(A): (None, "failed"), _key(B): (f"{D1}/{D2}.csv", "exported")}
    p.fail(None)
    cli(p.root, "reset", "bysite", "--failed", check=True)
    moved = p.run()
    assert (moved["exported"], moved["failed"]) == (1, 0), moved
    assert p.recorded() == {_key(A): (f"{D2}/{D1}.csv", "exported"), _key(B): (f"{D1}/{D2}.csv", "exported")}
