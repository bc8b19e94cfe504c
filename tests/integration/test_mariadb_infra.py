"""The throwaway MariaDB of tests/plugins/mariadb_server.py, and the server behaviour sluicegate relies on."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import mariadb
import pytest

import plugins.mariadb_server as plugin
from plugins.mariadb_server import (
    MARIADB_PASSWORD,
    MariaDbServer,
    fresh_database,
    mariadb_binaries_or_unavailable,
    mariadb_connect,
)

TESTS_DIR = Path(__file__).resolve().parents[1]


def _one(conn: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
    cur = conn.cursor()
    cur.execute(query, params)
    row = cur.fetchone()
    cur.close()
    return row


# --------------------------------------------------------------------------- the fixtures


def test_mariadb_url_is_a_fresh_database(mariadb_url: str, mariadb_server: MariaDbServer) -> None:
    assert mariadb_url.startswith(
        f"mariadb://exporter:{MARIADB_PASSWORD}@127.0.0.1:{mariadb_server.port}/test_"
    )
    dbname = mariadb_url.rsplit("/", 1)[1]
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        assert _one(conn, "SELECT DATABASE(), CURRENT_USER()") == (dbname, "exporter@127.0.0.1")
        tables = _one(
            conn, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ?", (dbname,)
        )
        assert tables == (0,)
        version = _one(conn, "SELECT VERSION()")[0]
        assert "MariaDB" in version
        assert tuple(int(p) for p in version.split("-")[0].split(".")[:2]) >= (10, 6)


def test_mariadb_url_database_is_dropped_afterwards(mariadb_server: MariaDbServer) -> None:
    # What the fixture does, with a connection left inside a transaction (it holds a metadata lock).
    with fresh_database(mariadb_server) as url:
        dbname = url.rsplit("/", 1)[1]
        leftover = mariadb_connect(url, autocommit=False)
        leftover.cursor().execute("CREATE TABLE t (id INT PRIMARY KEY)")
        leftover.cursor().execute("INSERT INTO t VALUES (1)")
    with contextlib.closing(mariadb_connect(mariadb_server.url())) as conn:
        assert _one(
            conn, "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?", (dbname,)
        ) == (0,)
    with pytest.raises(mariadb.Error):  # killed by the teardown
        leftover.cursor().execute("SELECT 1")
    with contextlib.suppress(mariadb.Error):
        leftover.close()


def test_server_settings(mariadb_url: str) -> None:
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        row = _one(
            conn,
            "SELECT @@bind_address, @@skip_name_resolve, @@time_zone, @@system_time_zone,"
            " @@character_set_server, @@collation_server, @@innodb_flush_log_at_trx_commit",
        )
    assert row == ("127.0.0.1", 1, "+00:00", "UTC", "utf8mb4", "utf8mb4_unicode_ci", 2)


@pytest.mark.parametrize("password", ["", "wrong-password"])
def test_password_is_required(mariadb_url: str, password: str) -> None:
    with pytest.raises(mariadb.Error, match="Access denied") as excinfo:
        mariadb_connect(mariadb_url, password=password)
    assert excinfo.value.errno == 1045  # ER_ACCESS_DENIED_ERROR


def test_server_is_our_process_as_an_unprivileged_user(mariadb_server: MariaDbServer) -> None:
    pid_file = mariadb_server.base_dir / "mariadbd.pid"
    assert int(pid_file.read_text()) == mariadb_server.pid
    status = Path(f"/proc/{mariadb_server.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert uid == mariadb_server.data_dir.stat().st_uid
    assert mariadb_server.socket_path.is_socket()
    assert "ready for connections" in mariadb_server.log_path.read_text()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("stuck", [False, True])
def test_instance_stops_exactly_its_process_and_removes_its_folder(
    mariadb_server: MariaDbServer, stuck: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second server of our own; ``stuck``: SIGSTOPped, so only the SIGKILL after the grace ends it."""
    monkeypatch.setattr(plugin, "STOP_GRACE_S", 1.0)
    with plugin.MariaDbInstance(mariadb_binaries_or_unavailable(), plugin.default_run_as()) as instance:
        instance.initialise()
        server = instance.start()
        assert server.port != mariadb_server.port
        assert server.base_dir != mariadb_server.base_dir
        if stuck:
            os.kill(server.pid, signal.SIGSTOP)
        started = time.monotonic()
        instance.stop()
        assert not _process_exists(server.pid)
        assert (time.monotonic() - started >= 1.0) == stuck
        assert server.base_dir.exists()
    assert not server.base_dir.exists()
    assert _process_exists(mariadb_server.pid)  # the session's server is untouched
    with contextlib.closing(mariadb_connect(mariadb_server.url())) as conn:
        assert _one(conn, "SELECT 1") == (1,)


# --------------------------------------------------------------------------- server behaviour


def test_table_round_trips_rows(mariadb_url: str) -> None:
    rows = [
        (
            1,
            7,
            dt.datetime(2024, 2, 29, 23, 59, 59, 123456),
            Decimal("12345678901234.000001"),
            0.1,
            "pm25 µg/m³",
        ),
        (2, -1, dt.datetime(1000, 1, 1), Decimal("-0.000001"), -1e300, "fog 🌫 emoji"),
        (3, None, None, None, None, None),
    ]
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE m (id BIGINT PRIMARY KEY, sensor_id INT, datetime DATETIME(6),"
            " amount DECIMAL(20,6), value DOUBLE, parameter VARCHAR(64))"
        )
        cur.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", rows)
        cur.execute("SELECT * FROM m ORDER BY id")
        assert cur.fetchall() == rows


def test_skip_locked_splits_rows_between_two_connections(mariadb_url: str) -> None:
    claim = "SELECT id FROM jobs ORDER BY id LIMIT 2 FOR UPDATE SKIP LOCKED"
    with (
        contextlib.closing(mariadb_connect(mariadb_url)) as setup,
        contextlib.closing(mariadb_connect(mariadb_url, autocommit=False)) as first,
        contextlib.closing(mariadb_connect(mariadb_url, autocommit=False)) as second,
    ):
        setup.cursor().execute("CREATE TABLE jobs (id INT PRIMARY KEY) ENGINE=InnoDB")
        setup.cursor().executemany("INSERT INTO jobs VALUES (?)", [(i,) for i in range(1, 6)])
        a, b = first.cursor(), second.cursor()
        a.execute(claim)
        assert a.fetchall() == [(1,), (2,)]
        b.execute(claim)
        assert b.fetchall() == [(3,), (4,)]
        # The rows are really locked: without SKIP LOCKED the second one cannot have row 1.
        with pytest.raises(mariadb.Error, match="Lock wait timeout") as excinfo:
            b.execute("SELECT id FROM jobs WHERE id = 1 FOR UPDATE NOWAIT")
        assert excinfo.value.errno == 1205  # ER_LOCK_WAIT_TIMEOUT
        first.commit()
        second.rollback()
        b.execute(claim)
        assert b.fetchall() == [(1,), (2,)]


def _holder_id(conn: Any, name: str) -> int | None:
    return _one(conn, "SELECT IS_USED_LOCK(?)", (name,))[0]  # type: ignore[no-any-return]


def _wait_until_free(conn: Any, name: str, timeout: float = 10.0) -> None:
    """KILL returns before the victim's thread has let go of its locks: poll briefly."""
    deadline = time.monotonic() + timeout
    while _holder_id(conn, name) is not None:
        assert time.monotonic() < deadline, f"lock {name!r} still held after {timeout}s"
        time.sleep(0.02)


def test_get_lock_is_released_when_its_connection_is_killed(mariadb_url: str) -> None:
    name = f"sluicegate-test:{mariadb_url.rsplit('/', 1)[1]}"
    holder = mariadb_connect(mariadb_url)
    with contextlib.closing(mariadb_connect(mariadb_url)) as other:
        assert _one(holder, "SELECT GET_LOCK(?, 0)", (name,)) == (1,)
        holder_id = _one(holder, "SELECT CONNECTION_ID()")[0]
        assert _one(other, "SELECT GET_LOCK(?, 0)", (name,)) == (0,)
        assert _holder_id(other, name) == holder_id
        other.cursor().execute(f"KILL CONNECTION {int(holder_id)}")
        _wait_until_free(other, name)
        assert _one(other, "SELECT GET_LOCK(?, 0)", (name,)) == (1,)
        with pytest.raises(mariadb.Error):
            holder.cursor().execute("SELECT 1")
    with contextlib.suppress(mariadb.Error):
        holder.close()


def test_get_lock_is_released_when_its_client_process_dies(mariadb_url: str, tmp_path: Path) -> None:
    name = f"sluicegate-test:{mariadb_url.rsplit('/', 1)[1]}"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from plugins.mariadb_server import mariadb_connect
        conn = mariadb_connect({mariadb_url!r})
        cur = conn.cursor()
        cur.execute("SELECT GET_LOCK(?, 0)", ({name!r},))
        print(cur.fetchone()[0], flush=True)
        time.sleep(600)
        """
    )
    with (
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc,
        contextlib.closing(mariadb_connect(mariadb_url)) as other,
    ):
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "1"
            assert _one(other, "SELECT GET_LOCK(?, 0)", (name,)) == (0,)
            os.kill(proc.pid, signal.SIGKILL)  # a crashed worker: no COM_QUIT, just a closed socket
            proc.wait(timeout=10)
            _wait_until_free(other, name)
            assert _one(other, "SELECT GET_LOCK(?, 0)", (name,)) == (1,)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_session_time_zone_can_be_pinned(mariadb_url: str) -> None:
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        conn.cursor().execute("SET time_zone = '+05:30'")
        offset = _one(conn, "SELECT TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW()), @@session.time_zone")
        assert offset == (330, "+05:30")
        conn.cursor().execute("SET time_zone = '+00:00'")
        assert _one(conn, "SELECT TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW()), @@session.time_zone") == (
            0,
            "+00:00",
        )
        # Named zones need the time zone tables, which a fresh server (and many real ones) lack.
        with pytest.raises(mariadb.Error, match="Unknown or incorrect time zone") as excinfo:
            conn.cursor().execute("SET time_zone = 'Europe/Berlin'")
        assert excinfo.value.errno == 1298  # ER_UNKNOWN_TIME_ZONE
    with contextlib.closing(mariadb_connect(mariadb_url, init_command="SET time_zone = '+00:00'")) as conn:
        assert _one(conn, "SELECT @@session.time_zone") == ("+00:00",)


def test_datetime_is_wall_clock_and_timestamp_is_an_instant(mariadb_url: str) -> None:
    written = dt.datetime(2024, 3, 31, 2, 30, 0, 123456)
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, d DATETIME(6), ts TIMESTAMP(6) NULL, d0 DATETIME)")
        cur.execute("SET time_zone = '+02:00'")
        cur.execute("INSERT INTO t VALUES (1, ?, ?, ?)", (written, written, written))
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("SELECT d, ts, d0, UNIX_TIMESTAMP(ts) FROM t")
        d, ts, d0, epoch = cur.fetchone()
    assert d == written  # DATETIME stores the wall clock as given, whatever the session zone
    assert ts == written - dt.timedelta(hours=2)  # TIMESTAMP stored UTC, shown in the session zone
    assert epoch == Decimal("1711845000.123456")  # 2024-03-31T00:30:00.123456Z
    assert d0 == written.replace(microsecond=0)  # MariaDB truncates extra fractions (MySQL 8 rounds)


def test_timestamp_range_ends_in_2038_before_mariadb_11_5(
    mariadb_url: str, mariadb_server: MariaDbServer
) -> None:
    with contextlib.closing(mariadb_connect(mariadb_url)) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (ts TIMESTAMP(6) NULL, d DATETIME(6))")
        cur.execute("INSERT INTO t VALUES (NULL, '2038-01-19 03:14:08')")  # DATETIME: up to 9999
        if mariadb_server.version >= (11, 5):  # 64-bit TIMESTAMP: up to 2106-02-07
            cur.execute("INSERT INTO t VALUES ('2038-01-19 03:14:08', NULL)")
        else:
            # Strict mode: an error, not a silent zero. (The driver raises OperationalError here,
            # and its error classes do not derive from DatabaseError: classify by errno.)
            with pytest.raises(mariadb.Error, match="Incorrect datetime value") as excinfo:
                cur.execute("INSERT INTO t VALUES ('2038-01-19 03:14:08', NULL)")
            assert excinfo.value.errno == 1292  # ER_TRUNCATED_WRONG_VALUE


# --------------------------------------------------------------------------- missing binaries


def test_missing_binaries_fail_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    # Catch a skip too: escaping this test, it would turn the test into a skip, not a failure.
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as excinfo:
        mariadb_binaries_or_unavailable(str(tmp_path))
    assert excinfo.type is pytest.fail.Exception
    assert excinfo.match(r"no MariaDB server binaries .* \(CI=true")


def test_missing_binaries_skip_loudly_without_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="SERVICE UNAVAILABLE: no MariaDB server binaries"):
        mariadb_binaries_or_unavailable(str(tmp_path))


def test_too_old_server_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in [
        ("mariadbd", "mariadbd  Ver 10.5.27-MariaDB for Linux on x86_64"),
        ("mariadb-install-db", ""),
    ]:
        exe = tmp_path / name
        exe.write_text(f"#!/bin/sh\necho '{text}'\n")
        exe.chmod(0o755)
    monkeypatch.setenv("CI", "true")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as excinfo:
        mariadb_binaries_or_unavailable(str(tmp_path))
    assert excinfo.type is pytest.fail.Exception
    assert excinfo.match(r"is MariaDB 10\.5\.27; the tests need MariaDB >= 10\.6")


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_fixture_without_binaries_in_a_pytest_run(tmp_path: Path, ci: str, outcome: str) -> None:
    """End to end, in a separate pytest process whose PATH and sbin dirs hold no MariaDB."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    mariadb: x\n")
    (tmp_path / "conftest.py").write_text(
        "import plugins.mariadb_server as plugin\nplugin.SBIN_DIRS = ()\npytest_plugins = ['plugins.mariadb_server']\n"
    )
    (tmp_path / "test_needs_mariadb.py").write_text(
        "def test_it(mariadb_url):\n    raise AssertionError('the test body ran')\n"
    )
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "PYTHONPATH": str(TESTS_DIR), "CI": ci}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert outcome in output, output
    assert "no MariaDB server binaries" in output, output
    assert "the test body ran" not in output
