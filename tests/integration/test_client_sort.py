"""Large Parquet batches sorted by Arrow on the client (sources/client_sort.py) give the bytes the
server's ``ORDER BY`` gives: NULLs, negative numbers, times before 1970 and ties of the time
column ordered alike; order columns Arrow may order otherwise stay the server's to sort; a batch
larger than the planner said is read again, sorted by the server."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sluicegate import engine, operations
from sluicegate.options import RunOptions
from sluicegate.sources import Column, ReadSpec, client_sort
from sluicegate.sources import arrow as arrow_source
from support import load

DAY = dt.date(2024, 11, 2)
NOON = dt.datetime(2024, 11, 2, 12, tzinfo=dt.UTC)
ROWS = 3_000  # per key


def _table(pg_url: str, rows: int = ROWS) -> None:
    """``m``: per key, rows inserted in random order whose time repeats (ties broken by ``n``,
    NULL for some and negative for others, then ``d``, before 1970 for some, then ``i``)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE m (k int, t timestamptz, n bigint, d date, i int, v double precision, s text)"
        )
        conn.execute(
            "INSERT INTO m SELECT k, %s + (i %% 7) * interval '1 minute',"
            " CASE WHEN i %% 5 = 0 THEN NULL ELSE (i * 7919 %% 41) - 20 END,"
            " date '1969-12-25' + (i * 31 %% 17), i, (i * 7919 %% 1000) / 10.0, 'row ' || i"
            " FROM generate_series(1, 3) AS k, generate_series(1, %s) AS i ORDER BY random()",
            (NOON, rows),
        )
        conn.execute("ANALYZE m")


def _project(root: Path, pg_url: str, order_by: str, primary_key: str) -> Path:
    (root / "tasks" / "m").mkdir(parents=True)
    (root / "sluicegate.toml").write_text(
        f'[source]\nurl = "{pg_url}"\n[ledger]\nurl = "sqlite:///ledger.db"\n[destination]\nurl = "out"\n'
        '[defaults]\nformat = "parquet"\nbackoff = "0s"\n'
    )
    (root / "tasks/m/select.sql").write_text("SELECT k, t, n, d, i, v, s FROM m")
    (root / "tasks/m/task.toml").write_text(
        f'keys = ["k"]\npath = "{{k}}/{{day:%Y%m%d}}.{{ext}}"\norder_by = {order_by}\n'
        f'primary_key = {primary_key}\n[time]\ncolumn = "t"\nzone = "UTC"\n'
    )
    return root


def _export(root: Path, rows: int = ROWS) -> dict[int, str]:
    """Export the three partitions in one batch; each file's SHA-256."""
    project = load(root)
    for k in (1, 2, 3):
        operations.mark(project, "m", {"k": str(k), "day": DAY.isoformat()})
    [summary] = engine.run(load(root), options=RunOptions(batch_size=3))
    assert (summary.exported, summary.failed, summary.rows) == (3, 0, 3 * rows), summary.errors
    return {
        k: hashlib.sha256((root / "out" / str(k) / "20241102.parquet").read_bytes()).hexdigest()
        for k in (1, 2, 3)
    }


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each client sort's outcome (True: sorted here; False: too large, read again), recorded
    around the real function."""
    outcomes: list[bool] = []
    real = client_sort.sorted_batches

    def recorded(batches: Any, keys: Any, budget: int) -> Iterator[Any] | None:
        done = real(batches, keys, budget)
        outcomes.append(done is not None)
        return done

    monkeypatch.setattr(arrow_source, "sorted_batches", recorded)
    return outcomes


@pytest.mark.parametrize(
    ("order_by", "primary_key"),
    [('["n"]', '["d", "i"]'), ("[]", '["i"]'), ('["d"]', "[]")],
    ids=["nulls-and-negatives", "key-only", "every-column"],
)
def test_a_batch_sorted_on_the_client_gives_the_bytes_of_the_servers_sort(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, order_by: str, primary_key: str
) -> None:
    """The same partitions exported sorted by the server and by Arrow: the same files, byte for
    byte. (With every column in the order, a text column among them, the server sorts.)"""
    _table(pg_url)
    outcomes = _counting(monkeypatch)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 10**12)  # the server sorts
    server = _export(_project(tmp_path / "server", pg_url, order_by, primary_key))
    assert outcomes == []
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)  # any batch may be sorted here
    client = _export(_project(tmp_path / "client", pg_url, order_by, primary_key))
    assert client == server
    assert outcomes == ([] if primary_key == "[]" else [True])  # s (text) in the order: the server's


def test_a_batch_larger_than_the_planner_said_is_read_again_sorted_by_the_server(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows beyond what may be held (the estimate was wrong) are not all read into memory: the
    query is stopped on the server while it still sends rows (many 1 MiB batches), its aborted
    transaction rolled back, and the batch read again with the server's sort, to the same bytes."""
    rows = 60_000
    _table(pg_url, rows)
    outcomes = _counting(monkeypatch)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 10**12)
    server = _export(_project(tmp_path / "server", pg_url, '["n"]', '["d", "i"]'), rows)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    monkeypatch.setattr(client_sort, "HOLD_BYTES", 1024)
    again = _export(_project(tmp_path / "again", pg_url, '["n"]', '["d", "i"]'), rows)
    assert again == server
    assert outcomes == [False]


def test_a_task_whose_batch_overran_is_sorted_by_the_server_from_then_on(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner underestimates a task's batches alike (a join on a key's value, a day of a
    zone): after one batch overran, the task's next batches are sorted by the server, not each
    read to the limit and read again."""
    _table(pg_url)
    outcomes = _counting(monkeypatch)
    monkeypatch.setattr(client_sort, "MIN_ROWS", 0)
    monkeypatch.setattr(client_sort, "HOLD_BYTES", 1024)
    root = _project(tmp_path / "p", pg_url, '["n"]', '["d", "i"]')
    project = load(root)
    for k in (1, 2, 3):
        operations.mark(project, "m", {"k": str(k), "day": DAY.isoformat()})
    [summary] = engine.run(load(root), options=RunOptions(batch_size=1))
    assert (summary.exported, summary.failed) == (3, 0), summary.errors
    assert outcomes == [False]  # the first batch overran; the two after it were not tried


@pytest.mark.parametrize(
    ("kind", "as_text", "sorted_here"),
    [("int", False, True), ("timestamptz", False, True), ("timestamp", False, True), ("date", False, True),
     ("float", False, False), ("decimal", False, False), ("text", False, False), ("int", True, False)],
)  # fmt: skip
def test_only_order_columns_arrow_orders_as_postgresql_are_sorted_on_the_client(
    kind: str, as_text: bool, sorted_here: bool
) -> None:
    """Floats (NaN, -0), decimals (1.5 and 1.50), text (collations) and types read as text are
    ordered by the server; integers, dates and times may be ordered by Arrow."""
    columns = [Column(name="k", kind="int"), Column(name="x", kind=kind, as_text=as_text)]  # type: ignore[arg-type]
    spec = ReadSpec(select_sql="SELECT k, x FROM m", folder=Path("tasks/m"), keys=("k",), primary_key=("x",))
    assert (client_sort.order_keys(spec, columns) is not None) is sorted_here
