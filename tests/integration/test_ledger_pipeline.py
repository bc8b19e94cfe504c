"""A ledger transaction in PostgreSQL's pipeline mode (``LedgerCore.in_transaction(pipelined=True)``,
the partition commit) ends as a plain one does: committed whole, or rolled back whole with the
connection ready for the next statement, whichever statement failed and whenever it was read.

After an error the server skips everything sent up to the pipeline's end, so a ``ROLLBACK``
sent inside the pipeline would be skipped too and leave the connection in a failed
transaction: every later ledger statement of the run would then fail.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sluicegate.exceptions import LedgerError
from sluicegate.ledger.core import LedgerCore

pytestmark = pytest.mark.pg


@pytest.fixture
def core(pg_url: str) -> Iterator[tuple[LedgerCore, str]]:
    table = f"pipe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    ledger = LedgerCore(pg_url)
    try:
        yield ledger, table
    finally:
        ledger.conn.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")


def _ids(core: LedgerCore, table: str) -> list[int]:
    """The table's rows, read on the core's own connection (which must be usable)."""
    return [row[0] for row in core.conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def test_statements_before_and_after_a_fetch_commit_together(core: tuple[LedgerCore, str]) -> None:
    ledger, table = core

    def body(cur: Any) -> list[int]:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        seen = [row[0] for row in cur.execute(f"SELECT id FROM {table}").fetchall()]
        cur.execute(f"INSERT INTO {table} VALUES (2)")  # sent with the COMMIT, never fetched
        return seen

    assert ledger.in_transaction(body, pipelined=True) == [1]
    assert _ids(ledger, table) == [1, 2]


def test_an_error_raised_by_the_body_rolls_everything_back(core: tuple[LedgerCore, str]) -> None:
    ledger, table = core

    def body(cur: Any) -> None:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        cur.execute(f"SELECT id FROM {table}").fetchall()
        cur.execute(f"INSERT INTO {table} VALUES (2)")  # sent, not yet read
        raise RuntimeError("placing the files failed")

    with pytest.raises(RuntimeError, match="placing the files failed"):
        ledger.in_transaction(body, pipelined=True)
    assert _ids(ledger, table) == []
    assert ledger.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize("read", [False, True], ids=["unread", "read"])
def test_a_failed_statement_rolls_everything_back_and_the_connection_goes_on(
    core: tuple[LedgerCore, str], read: bool
) -> None:
    """A duplicate key in the last statement: unread, the error surfaces with the COMMIT;
    read, where the body reads it. Either way nothing is kept and the next statement runs."""
    ledger, table = core

    def body(cur: Any) -> None:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        cur.execute(f"SELECT id FROM {table}").fetchall()
        failing = cur.execute(f"INSERT INTO {table} VALUES (1) RETURNING id")
        if read:
            failing.fetchall()

    with pytest.raises(LedgerError, match="duplicate key value") as raised:
        ledger.in_transaction(body, pipelined=True)
    assert isinstance(raised.value.__cause__, psycopg.errors.UniqueViolation)
    assert ledger.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert _ids(ledger, table) == []
    ledger.in_transaction(lambda cur: cur.execute(f"INSERT INTO {table} VALUES (3)"), pipelined=True)
    assert _ids(ledger, table) == [3]


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_connection_killed_at_a_fetch_is_retried_without_psycopg_warnings(
    core: tuple[LedgerCore, str], where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server ends the connection while the body reads a result (the first, or the last
    before COMMIT): the transaction runs again on a new connection, once, and the operator reads
    sluicegate's one line 'ledger connection ... lost; reconnecting', not also psycopg's
    'error ignored terminating <psycopg.Pipeline [BAD] at 0x...>: consuming input failed: ...'
    of the pipeline it could not end (three lines on stderr at the default WARNING level)."""
    ledger, table = core
    tries: list[int] = []

    def body(cur: Any) -> int:
        tries.append(len(tries) + 1)
        kill = "SELECT pg_terminate_backend(pg_backend_pid())"
        if len(tries) == 1 and where == "first":
            cur.execute(kill).fetchall()
        cur.execute(f"INSERT INTO {table} VALUES (%s)", (len(tries),))
        if len(tries) == 1 and where == "last":
            cur.execute(kill).fetchall()
        return len(tries)

    with caplog.at_level(logging.WARNING):
        assert ledger.in_transaction(body, pipelined=True) == 2
    assert _ids(ledger, table) == [2]
    assert [r.name for r in caplog.records] == ["sluicegate.ledger"], [r.getMessage() for r in caplog.records]
