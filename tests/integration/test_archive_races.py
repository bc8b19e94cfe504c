"""Two runs of one archive task at once, in real `sluicegate` processes, while rows arrive.

Each test ends with :func:`test_archive.account`: each row ever inserted is either still in
the table or in exactly one archive file, never both and never twice, and each finished
run's file still has the checksum the ledger recorded (no file was overwritten after its
rows were deleted).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from test_archive import SERVERS, Agency, _project, account
from test_service import AUTH, Server
from test_workers import _spawn

from sluicegate import mariadb_conn
from support import is_mariadb

BASES = 20_000  # 10 versions each: 200,000 rows per round, 180,000 of them superseded
VERSIONS = 10
ROUNDS = 3  # pairs of runs: on 138e3b9 about two pairs in three lost or repeated rows


class Writer(threading.Thread):
    """Inserts new versions of a round's bases while archive runs are under way (PostgreSQL, MariaDB)."""

    def __init__(self, url: str, ids: list[int]) -> None:
        super().__init__()
        self.mariadb = is_mariadb(url)
        self.conn: Any = mariadb_conn.connect(url) if self.mariadb else psycopg.connect(url, autocommit=True)
        self.ids = ids
        self.bases = range(0)
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if self.bases:
                base = self.bases[(i * 7919) % len(self.bases)]
                self.ids.append(self._insert(base))
                i += 1
                time.sleep(0.001)  # about 500 a second: enough to change every snapshot, and CPU left over
            else:
                time.sleep(0.01)

    def _insert(self, base: int) -> int:
        if self.mariadb:
            insert = "INSERT INTO agency (base_id, updated_at, name) VALUES (%s, NOW(6), 'live')"
            return int(self.conn.execute(insert, (base,)).lastrowid)
        row = self.conn.execute(
            "INSERT INTO agency (base_id, updated_at, name) VALUES (%s, now(), 'live') RETURNING id", (base,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.conn.close()


def _seed_round(agency: Agency, round_: int) -> list[int]:
    """200,000 versions of 20,000 new bases, all three days old: 180,000 are superseded."""
    first = round_ * BASES
    conn = agency.conn
    if agency.mariadb:  # seq_0_to_N: MariaDB's sequence engine
        conn.execute(
            f"""INSERT INTO agency (base_id, updated_at, name)
                SELECT %s + seq MOD %s, UTC_TIMESTAMP(6) - INTERVAL 3 DAY + INTERVAL (seq DIV %s) MINUTE, 'old'
                FROM seq_0_to_{BASES * VERSIONS - 1}""",
            (first, BASES, BASES),
        )
        ids = conn.execute(
            "SELECT id FROM agency WHERE base_id BETWEEN %s AND %s", (first, first + BASES - 1)
        ).fetchall()
        return [int(r[0]) for r in ids]
    rows = conn.execute(
        """INSERT INTO agency (base_id, updated_at, name)
           SELECT %(first)s + g %% %(bases)s, now() - interval '3 days' + (g / %(bases)s) * interval '1 minute', 'old'
           FROM generate_series(0, %(n)s - 1) AS g RETURNING id""",
        {"first": first, "bases": BASES, "n": BASES * VERSIONS},
    ).fetchall()
    return [int(r[0]) for r in rows]


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL or MariaDB database, source and ledger at once."""
    value: str = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return value


def test_two_cli_runs_at_once_lose_and_duplicate_nothing(tmp_path: Path, server_url: str) -> None:
    root = _project(tmp_path, server_url)
    agency = Agency(server_url)
    inserted: list[int] = []
    writer = Writer(server_url, inserted)
    writer.start()
    outcomes: list[tuple[int, str, str]] = []
    try:
        for round_ in range(ROUNDS):
            inserted += _seed_round(agency, round_)
            writer.bases = range(round_ * BASES, (round_ + 1) * BASES)
            procs = [_spawn(root, "run", "agency", "--json") for _ in range(2)]
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                outcomes.append((proc.returncode, out, err))
    finally:
        writer.finish()
    account(tmp_path / "out", agency, inserted, server_url)
    for code, out, err in outcomes:  # the second run waited for the first one, then ran
        assert code == 0, (out, err)
        [summary] = json.loads(out)
        assert summary["failed"] == 0 and summary["archive"][0]["recovered"] is False


def test_two_http_runs_at_once_lose_and_duplicate_nothing(tmp_path: Path, server_url: str) -> None:
    root = _project(tmp_path, server_url)
    agency = Agency(server_url)
    inserted: list[int] = []
    writer = Writer(server_url, inserted)
    writer.start()
    server = Server(root)
    try:
        inserted += _seed_round(agency, 0)
        writer.bases = range(BASES)
        posts = [httpx.post(f"{server.url}/exports/agency", headers=AUTH) for _ in range(2)]
        runs = [server.wait_run(post.json()["run_id"], timeout=120) for post in posts]
    finally:
        server.stop()
        writer.finish()
    account(tmp_path / "out", agency, inserted, server_url)
    assert [r["state"] for r in runs] == ["succeeded", "succeeded"], runs
