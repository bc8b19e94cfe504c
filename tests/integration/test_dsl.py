"""A Common Knowledge data-export deployment, unchanged: its DSL/Export folders and its environment.

The folders are the original's layout, verbatim (``COPY (...) TO stdout WITH csv HEADER``
selects and plain deletes); the service is started with DSL_PATH, DATABASE_URL, EXPORT_PATH
and a token only, from a folder with no sluicegate.toml.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from support import SLUICEGATE, cli, files

UTC = dt.UTC
TOKEN = "dsl-t0ken"
TABLES = ("agency", "source", "source_file")
SELECT = """COPY (SELECT * FROM {t}
      WHERE (base_id, updated_at) NOT IN (SELECT base_id, max(updated_at) FROM {t} GROUP BY base_id)
      AND updated_at < %(export_boundary)s) TO stdout WITH csv HEADER;
"""
DELETE = """DELETE FROM {t}
      WHERE (base_id, updated_at) NOT IN (SELECT base_id, max(updated_at) FROM {t} GROUP BY base_id)
      AND updated_at < %(export_boundary)s;
"""


def _dsl(tmp_path: Path, pg_url: str) -> Path:
    folder = tmp_path / "DSL" / "Export"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in TABLES:
            (folder / table).mkdir(parents=True)
            (folder / table / "select.sql").write_text(SELECT.format(t=table))
            (folder / table / "delete.sql").write_text(DELETE.format(t=table))
            conn.execute(
                f"CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), base_id int, "
                "name text, updated_at timestamptz, is_deleted boolean DEFAULT false)"
            )
            old = dt.datetime.now(UTC) - dt.timedelta(days=3)
            for base in range(1, 4):  # three versions each: two superseded and old, one latest
                for version in range(3):
                    conn.execute(
                        f"INSERT INTO {table} (base_id, name, updated_at) VALUES (%s, %s, %s)",
                        (base, f"{table}-{base}-v{version}", old + dt.timedelta(hours=version)),
                    )
    return folder


def _env(tmp_path: Path, dsl: Path, pg_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.update(DSL_PATH=str(dsl), DATABASE_URL=pg_url, EXPORT_PATH=str(tmp_path / "exported-data"))
    return env


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.pg
def test_the_original_folders_and_environment_serve_unchanged(tmp_path: Path, pg_url: str) -> None:
    dsl = _dsl(tmp_path, pg_url)
    env = {**_env(tmp_path, dsl, pg_url), "SLUICEGATE_API_TOKEN": TOKEN, "PORT": str(_free_port())}
    workdir = tmp_path / "empty"  # no sluicegate.toml anywhere
    workdir.mkdir()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [SLUICEGATE, "serve"], cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        _wait_up(url, proc, log)
        listing = httpx.get(f"{url}/exports", headers=auth).json()
        assert [t["name"] for t in listing] == list(TABLES)
        assert listing[0]["delete_query"].startswith("DELETE FROM agency")
        one = httpx.post(f"{url}/exports/agency", headers=auth)
        assert one.status_code == 200 and one.json()["status"] == "Ok"
        _wait_run(url, one.json()["run_id"], auth)
        everything = httpx.post(f"{url}/exports", headers=auth).json()
        _wait_run(url, everything["run_id"], auth)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = tmp_path / "exported-data"
    midnight = dt.datetime.now(UTC).strftime("%Y_%m_%d-12_00_00_AM")
    # agency ran twice: the second run found nothing left to archive and wrote its own file,
    # the header alone (as documented), under the next free name instead of overwriting the first.
    again = f"agency-{midnight}-2.csv.gz"
    assert sorted(p.name for p in files(out)) == sorted([again, *(f"{t}-{midnight}.csv.gz" for t in TABLES)])
    assert gzip.decompress((out / again).read_bytes()).decode().count("\n") == 1
    with psycopg.connect(pg_url) as conn:
        for table in TABLES:
            rows = _rows(out / f"{table}-{midnight}.csv.gz")
            assert sorted(r["name"] for r in rows) == sorted(
                f"{table}-{b}-v{v}" for b in (1, 2, 3) for v in (0, 1)
            )
            left = sorted(r[0] for r in conn.execute(f"SELECT name FROM {table}").fetchall())
            assert left == [f"{table}-{b}-v2" for b in (1, 2, 3)]  # only the latest versions stay


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"the service did not start: {log.read_text()}")


def _wait_run(url: str, run_id: str, auth: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = httpx.get(f"{url}/runs/{run_id}", headers=auth).json()
        if run["state"] != "running":
            assert run["state"] == "succeeded", run
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


@pytest.mark.pg
def test_run_and_status_work_on_a_dsl_folder_and_a_task_toml_refines_it(tmp_path: Path, pg_url: str) -> None:
    dsl = _dsl(tmp_path, pg_url)
    (dsl / "source" / "task.toml").write_text('kind = "archive"\nformat = "csv"\n')  # refines one task
    (dsl / "broken").mkdir()
    (dsl / "broken" / "select.sql").write_text("SELECT 1")
    env = _env(tmp_path, dsl, pg_url)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    done = cli(workdir, "run", "agency", "source", env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.suffixes[-1] for p in files(tmp_path / "exported-data")) == [".csv", ".gz"]
    tasks = cli(workdir, "tasks", env=env)
    assert "broken: ERROR" in tasks.stdout and "delete.sql is missing" in tasks.stdout
    assert tasks.returncode == 2 and "agency" in tasks.stdout  # the others are listed all the same
    status = cli(workdir, "status", env=env)
    assert status.returncode == 2 and "broken: ERROR" in status.stdout and "agency" in status.stdout


def test_a_folder_that_is_neither_a_project_nor_a_dsl_folder_says_what_to_do(tmp_path: Path) -> None:
    proc = cli(tmp_path, "status")
    assert proc.returncode == 2
    assert (
        "no sluicegate.toml" in proc.stderr and "DSL_PATH" in proc.stderr and "sluicegate init" in proc.stderr
    )
    missing_db = cli(tmp_path, "status", env={"DSL_PATH": str(tmp_path)})
    assert missing_db.returncode == 2 and "DATABASE_URL is not" in missing_db.stderr
