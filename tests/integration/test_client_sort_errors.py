"""Error paths of the client-sorted read (sources/client_sort.py): an SQL error mid-read, a time
no file can hold, the source lost while the batch is read, while an overrun is cancelled or
while the batch is read again sorted by the server. Each ends as the server-sorted path does:
the failing partitions parked with their error, a lost source waited for and the batch given
back (no attempt charged, max_attempts = 1 here), and the files those of a clean run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow.parquet as pq
import pytest
import test_client_sort
from test_client_sort import DAY, _table

from sluicegate import engine, operations
from sluicegate.options import RunOptions
from sluicegate.sources import arrow as arrow_source
from sluicegate.sources import client_sort
from sluicegate.sources.times import message
from support import files, load

if TYPE_CHECKING:
    from plugins.tcpproxy import TcpProxy

pytestmark = pytest.mark.pg
ROWS = 3_000
SELECT = "SELECT k, t, n, d, i, v, s FROM m"


def _project(root: Path, url: str, select: str = SELECT) -> Path:
    (root / "tasks" / "m").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{url}"\n[ledger]\nurl = "sqlite:///ledger.db"\n[destination]\nurl = "out"\n'
        '[defaults]\nformat = "parquet"\nbackoff = "0s"\nmax_attempts = 1\n'
    )
    (root / "tasks/m/select.sql").write_text(select)
    (root / "tasks/m/task.toml").write_text(
        'keys = ["k"]\npath = "{k}/{day:%Y%m%d}.{ext}"\norder_by = ["n"]\n'
        'primary_key = ["d", "i"]\n[time]\ncolumn = "t"\nzone = "UTC"\n'
    )
    project = load(root)
    for k in (1, 2, 3):
        operations.mark(project, "m", {"k": str(k), "day": DAY.isoformat()})
    return root


def _hashes(root: Path) -> dict[int, str]:
    out = root / "out"
    return {
        int(p.parent.name): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*.parquet")
        if ".sluicegate-" not in p.name
    }


def _run(root: Path) -> Any:
    [summary] = engine.run(load(root), options=RunOptions(batch_size=3))
    return summary


def _counts(root: Path) -> tuple[int, int, int, int]:
    [status] = operations.status(load(root), ["m"])
    return status["exported"], status["failed"], status["pending"], status["claimed"]


def _server_hashes(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, select: str = SELECT
) -> dict[int, str]:
    """The files of a clean run sorted by the server (``die`` disarmed meanwhile, if any)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        armed = conn.execute("SELECT to_regclass('armed') IS NOT NULL").fetchone() == (True,)
        if armed:
            conn.execute("SELECT setval('armed', 1, true)")
    with monkeypatch.context() as m:
        m.setattr(client_sort, "MIN_ROWS", 10**12)
        root = _project(tmp_path / "server", pg_url, select)
        summary = _run(root)
    assert (summary.exported, summary.failed) == (3, 0), summary.errors
    if armed:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT setval('armed', 1, false)")
    return _hashes(root)


def _die(pg_url: str, body: str) -> None:
    """``die(k int)``: ``body``, once (the sequence ``armed`` counts), for each row read."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE armed")
        conn.execute(f"CREATE FUNCTION die(k int) RETURNS int LANGUAGE plpgsql AS $$ {body} $$")


DIE_SELECT = "SELECT k, t, n, d, i, v, s, die(k) AS z FROM m"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every batch may be sorted on the client; each sort's outcome (True: sorted here)."""
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    return test_client_sort._counting(monkeypatch)


@pytest.mark.parametrize("overrun", [False, True], ids=["sorted-here", "read-again"])
def test_an_sql_error_mid_read_parks_its_partition_and_the_next_batches_keep_the_session(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, client: list[bool], overrun: bool
) -> None:
    """Division by zero in one row of k = 2, halfway through the unsorted read (or, with every
    batch overrunning what may be held, in the read again sorted by the server): k = 2 is parked
    with the database's error, k = 1 and 3 export, and the reads after the failed one still have
    the session's settings (the database's own defaults differ), its transaction rolled back."""
    if overrun:
        monkeypatch.setattr(client_sort, "HOLD_BYTES", 1024)
    _table(pg_url)
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {dbname} SET DateStyle TO 'SQL, DMY'")
        conn.execute(f"ALTER DATABASE {dbname} SET extra_float_digits TO 0")
    select = (
        "SELECT k, t, n, d, i, v, s, CASE WHEN k = 2 AND i = 1500 THEN 1 / (k - 2) END AS r,"
        " current_setting('DateStyle') || ' ' || current_setting('extra_float_digits')"
        " || ' ' || current_setting('TimeZone') AS z FROM m"
    )
    root = _project(tmp_path / "p", pg_url, select)
    summary = _run(root)
    assert (summary.exported, summary.failed) == (2, 1), summary.errors
    assert all("division by zero" in e for e in summary.errors), summary.errors
    assert _counts(root) == (2, 1, 0, 0)
    [status] = operations.status(load(root), ["m"])
    [failure] = status["failures"]
    assert json.loads(failure["partition"])[0] == 2, failure
    for k in (1, 3):
        table = pq.read_table(root / "out" / str(k) / "20241102.parquet")
        assert set(table.column("z").to_pylist()) == {"ISO, YMD 1 UTC"}, k
    # every read (the batch, then each partition) sorted here, or each one read again
    assert client and set(client) == {not overrun}, client


@pytest.mark.parametrize("sorted_by", ["server", "client"])
def test_a_time_no_file_can_hold_names_its_column_on_both_paths(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, sorted_by: str
) -> None:
    """``'infinity'`` in the date column d of one row of k = 2: the same error, naming d."""
    _table(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE m ADD COLUMN e timestamptz")
        conn.execute("UPDATE m SET e = t")
        conn.execute("UPDATE m SET d = 'infinity', e = 'infinity' WHERE k = 2 AND i = 1500")
    outcomes = test_client_sort._counting(monkeypatch)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0 if sorted_by == "client" else 10**12)
    root = _project(tmp_path / "p", pg_url, "SELECT k, t, n, d, i, v, s, e FROM m")
    summary = _run(root)
    assert (summary.exported, summary.failed) == (2, 1), summary.errors
    [error] = summary.errors
    assert error.endswith(message("d")), error
    assert _counts(root) == (2, 1, 0, 0)
    assert (sorted_by == "client") == bool(outcomes), outcomes


def test_a_read_whose_backend_is_terminated_is_given_back_and_read_again(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, client: list[bool]
) -> None:
    """The unsorted read loses its connection (pg_terminate_backend at a row of k = 2): the
    batch is given back uncharged (max_attempts = 1), read again, and its files are the
    server-sorted run's."""
    _table(pg_url)
    _die(
        pg_url,
        "BEGIN IF k = 2 AND NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN 1; END",
    )
    server = _server_hashes(tmp_path, pg_url, monkeypatch, DIE_SELECT)
    client.clear()
    root = _project(tmp_path / "client", pg_url, DIE_SELECT)
    summary = _run(root)
    assert (summary.exported, summary.failed, summary.task_errors) == (3, 0, []), summary.errors
    assert _counts(root) == (3, 0, 0, 0)
    assert client == [True], client
    assert _hashes(root) == server


def _proxied(pg_url: str, pg_server: Any, proxy: TcpProxy) -> str:
    return pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")


def _down_for(proxy: TcpProxy, seconds: float) -> threading.Thread:
    proxy.down()

    def up() -> None:
        time.sleep(seconds)
        proxy.up()

    thread = threading.Thread(target=up)
    thread.start()
    return thread


def test_a_relay_cut_while_the_unsorted_batch_is_read_gives_it_back(
    tmp_path: Path,
    pg_url: str,
    pg_server: Any,
    tcp_proxy: Callable[[str, int], TcpProxy],
    monkeypatch: pytest.MonkeyPatch,
    client: list[bool],
) -> None:
    """The network to the source is cut for 1.5 s while rows of the unsorted read stream (a row
    of k = 2 sleeps): the run waits, reads the batch again, and publishes the clean run's files."""
    _table(pg_url)
    _die(
        pg_url,
        "BEGIN IF k = 2 AND NOT (SELECT is_called FROM armed) THEN PERFORM nextval('armed');"
        " PERFORM pg_sleep(1); END IF; RETURN 1; END",
    )
    server = _server_hashes(tmp_path, pg_url, monkeypatch, DIE_SELECT)
    client.clear()
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    root = _project(tmp_path / "client", _proxied(pg_url, pg_server, proxy), DIE_SELECT)
    threads: list[threading.Thread] = []

    def cut() -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            while admin.execute(query).fetchone()[0] == 0:  # type: ignore[index]
                time.sleep(0.01)
        threads.append(_down_for(proxy, 1.5))

    watcher = threading.Thread(target=cut)
    watcher.start()
    try:
        summary = _run(root)
    finally:
        watcher.join()
        for thread in threads:
            thread.join()
    assert proxy.cut >= 1
    assert (summary.exported, summary.failed, summary.task_errors) == (3, 0, []), summary.errors
    assert _counts(root) == (3, 0, 0, 0)
    assert _hashes(root) == server


def _overrun(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> list[bool]:
    """Batches overrun what may be held (HOLD_BYTES 1 KiB); ``then`` runs once, at the first
    overrun, before the query is cancelled."""
    monkeypatch.setattr(client_sort, "HOLD_BYTES", 1024)
    outcomes: list[bool] = []
    real = client_sort.sorted_batches

    def recorded(batches: Any, keys: Any, budget: int) -> Iterator[Any] | None:
        done = real(batches, keys, budget)
        outcomes.append(done is not None)
        if done is None and outcomes.count(False) == 1:
            then()
        return done

    monkeypatch.setattr(arrow_source, "sorted_batches", recorded)
    return outcomes


def test_the_source_lost_while_an_overrun_is_cancelled_gives_the_batch_back(
    tmp_path: Path,
    pg_url: str,
    pg_server: Any,
    tcp_proxy: Callable[[str, int], TcpProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay is cut (1.5 s) just before an overrun's cancel: the cancel and the rollback
    cannot reach the source. The batch is given back uncharged and read again to the same bytes."""
    rows = 60_000
    _table(pg_url, rows)
    server = _server_hashes(tmp_path, pg_url, monkeypatch)
    proxy = tcp_proxy(pg_server.host, pg_server.port)
    threads: list[threading.Thread] = []
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    outcomes = _overrun(monkeypatch, lambda: threads.append(_down_for(proxy, 1.5)))
    root = _project(tmp_path / "client", _proxied(pg_url, pg_server, proxy))
    try:
        summary = _run(root)
    finally:
        for thread in threads:
            thread.join()
    assert proxy.cut >= 1 and outcomes[0] is False, outcomes
    assert (summary.exported, summary.failed, summary.task_errors) == (3, 0, []), summary.errors
    assert _counts(root) == (3, 0, 0, 0)
    assert _hashes(root) == server


def test_the_source_lost_while_an_overrun_batch_is_read_again_gives_it_back(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server-sorted read after an overrun loses its connection (its backend terminated at a
    row of k = 2): the batch is given back uncharged and read again to the same bytes."""
    rows = 60_000
    _table(pg_url, rows)
    _die(
        pg_url,
        "BEGIN IF k = 2 AND current_query() LIKE '%ORDER BY%' AND NOT (SELECT is_called FROM armed)"
        " THEN PERFORM nextval('armed'); PERFORM pg_terminate_backend(pg_backend_pid()); END IF;"
        " RETURN 1; END",
    )
    server = _server_hashes(tmp_path, pg_url, monkeypatch, DIE_SELECT)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    outcomes = _overrun(monkeypatch, lambda: None)
    root = _project(tmp_path / "client", pg_url, DIE_SELECT)
    summary = _run(root)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT is_called FROM armed").fetchone() == (True,)
    assert outcomes[:1] == [False], outcomes
    assert (summary.exported, summary.failed, summary.task_errors) == (3, 0, []), summary.errors
    assert _counts(root) == (3, 0, 0, 0)
    assert _hashes(root) == server


def _large(pg_url: str, root: Path) -> Path:
    """``m`` with 1.1M rows in each of the three partitions, in random order, narrow enough for
    the default hold (about 80 MiB of Arrow data) and with statistics on the batch query's local
    date, so the planner expects the 100,000 rows a client sort takes (it says about a
    ninth of the true count)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE m (k int, t timestamptz, i int)")
        conn.execute(
            "INSERT INTO m SELECT k, %s::timestamptz + (i * 86399.0 / 1100000) * interval '1 second', i"
            " FROM generate_series(1, 3) AS k, generate_series(1, 1100000) AS i ORDER BY random()",
            (DAY.isoformat(),),
        )
        conn.execute("CREATE STATISTICS m_day ON ((t AT TIME ZONE 'UTC')::date) FROM m")
        conn.execute("ANALYZE m")
    root = _project(root, pg_url, "SELECT k, t, i FROM m")
    task = root / "tasks/m/task.toml"
    task.write_text(
        task.read_text().replace('order_by = ["n"]', "order_by = []").replace('["d", "i"]', '["i"]')
    )
    return root


_LOW_THRESHOLD = (  # `sluicegate` with client_sort.MIN_ROWS = 0
    "from sluicegate.sources import client_sort; client_sort.MIN_ROWS = 0; from sluicegate.cli import main; main()"
)


def test_an_exporter_killed_while_it_holds_a_sorted_batch_exports_it_once_after_restart(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``sluicegate run`` (a batch sorted on the client) is SIGKILLed once it has sent the
    unsorted query and holds its rows. After its lease, the next run exports the three partitions
    once, to the bytes of a clean run. The default budgets apply; only the row threshold is
    lowered, as the planner's estimate for this batch (a tenth of its 3.3M rows, varying with
    ANALYZE's sample: 72k-122k seen) sits around the default 100,000."""
    outcomes = test_client_sort._counting(monkeypatch)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    clean = _large(pg_url, tmp_path / "clean")
    summary = _run(clean)
    assert (summary.exported, summary.failed) == (3, 0), summary.errors
    assert outcomes == [True], outcomes  # the default budgets let this batch be sorted on the client
    root = _project(tmp_path / "killed", pg_url)
    for name in ("select.sql", "task.toml"):
        (root / "tasks/m" / name).write_text((clean / "tasks/m" / name).read_text())
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("max_attempts = 1\n", 'max_attempts = 1\nlease = "2s"\n'))
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOW_THRESHOLD, "-C", str(root), "run", "--batch-size", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    held = (
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()"
        " AND query LIKE '%p.ord%' AND query NOT LIKE '%ORDER BY%'"  # the unsorted read, running or done
    )
    deadline = time.monotonic() + 60
    with psycopg.connect(pg_url, autocommit=True) as admin:
        while admin.execute(held).fetchone() == (0,):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never held an unsorted batch"
            time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _counts(root)[0] == 0  # killed before any partition was recorded exported
    time.sleep(2.5)  # the dead run's lease runs out
    summary = _run(root)
    assert (summary.exported, summary.failed, summary.task_errors) == (3, 0, []), summary.errors
    assert _counts(root) == (3, 0, 0, 0)
    assert sorted(p.relative_to(root / "out") for p in files(root / "out")) == [
        Path(f"{k}/20241102.parquet") for k in (1, 2, 3)
    ]
    assert _hashes(root) == _hashes(clean)
