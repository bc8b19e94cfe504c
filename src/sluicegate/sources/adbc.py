"""ADBC's low-level PostgreSQL connection, as much of its DB-API as the Arrow read path uses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from ..source_outage import connection_lost

BATCH_BYTES = 1 << 20  # per record batch, ADBC's aim (its default 16 MiB): see .ahead


def open_arrow(url: str, session: Sequence[str]) -> Any:
    """An ADBC connection with the session settings the batch query expects (``session``)."""
    conn = _AdbcConnection(url)
    try:
        with conn.cursor() as cur:
            for setting in session:
                cur.execute(setting)  # autocommit: kept for the session
            # The session's statement_timeout in ms (pg_settings: a number in any language); no
            # statement of sluicegate's changes it. See _AdbcCursor.
            cur.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'")
            [limit] = [v for batch in cur.fetch_record_batch() for v in batch.column(0).to_pylist()]
        conn.time_limit = int(limit) / 1000
    except BaseException:
        conn.close()
        raise
    return conn


class _AdbcConnection:
    """ADBC's low-level connection, as much of its DB-API one as sluicegate uses.

    ``adbc_driver_manager.dbapi`` imports ``pyarrow.dataset``, which loads Arrow's Parquet,
    S3, Substrait and Acero libraries: about 20 MiB of resident memory in every exporter that
    reads through ADBC, for a CSV export too. Unlike the DB-API connection, it autocommits:
    a read is one statement, and in a transaction of its own it costs no ``BEGIN`` and
    ``ROLLBACK`` round trips (two of a batch's four) and holds no transaction, snapshot or lock
    between reads. Ctrl-C during a query takes effect when the server answers (the DB-API's
    cancelling wrapper is private).
    """

    def __init__(self, url: str) -> None:
        import adbc_driver_manager as adbc
        import adbc_driver_postgresql

        self._db = adbc_driver_postgresql.connect(url)
        self.time_limit = 0.0  # the session's statement_timeout, in seconds (0: none)
        try:
            self._conn = adbc.AdbcConnection(self._db)
            self._conn.set_autocommit(True)
        except BaseException:
            self._db.close()
            raise

    @contextlib.contextmanager
    def cursor(self) -> Iterator[_AdbcCursor]:
        """A statement, closed after use."""
        import adbc_driver_manager as adbc

        cursor = _AdbcCursor(adbc.AdbcStatement(self._conn), self.time_limit)
        try:
            yield cursor
        finally:
            cursor.close()

    def alive(self) -> bool:
        """Whether the connection still answers a query (after a failed one: lost or not)."""
        try:
            with self.cursor() as cur:
                cur.execute("SELECT 1")
                list(cur.fetch_record_batch())
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Close the connection and its database handle."""
        try:
            self._conn.close()
        finally:
            self._db.close()


class TimedOut(OSError):
    """ADBC's error for a statement the server ended at the session's ``statement_timeout``, with
    the SQLSTATE (57014) its result stream does not carry (see :class:`_AdbcCursor`)."""

    sqlstate = "57014"


class _AdbcCursor:
    """One ADBC statement: ``execute`` a query, then read its result as Arrow record batches.

    ADBC's result stream reports a server's error as text alone (an ``OSError``, no SQLSTATE), in
    the server's language (``lc_messages``): "canceling statement due to statement timeout" in
    English, "storniere Anfrage wegen Zeitüberschreitung der Anfrage" in German. So a statement
    the server ended for the session's ``statement_timeout`` is told by time instead: its error
    came after it had run for at least that long (measured here, from before it was sent, so
    never shorter than the server's count), the connection was not lost, and this cursor did not
    cancel it itself (:meth:`cancel`). It is raised as :class:`TimedOut`, which carries 57014. An
    error of the query's own within a network round trip of the limit would pass for a timeout:
    its batch is read one partition at a time all the same, and the partition retried, not parked
    at once. (adbc_driver_manager's DB-API reader recovers the SQLSTATE, through private names.)
    """

    def __init__(self, statement: Any, time_limit: float = 0.0) -> None:
        self._statement = statement
        self._reader: pa.RecordBatchReader | None = None
        self._time_limit = time_limit
        self._started = 0.0
        self._cancelled = False  # by cancel(), since the last execute()

    def execute(self, query: str) -> None:
        """Run ``query``; its result is read with :meth:`fetch_record_batch`."""
        self._close_reader()
        self._statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        self._statement.set_sql_query(query)
        self._cancelled, self._started = False, time.monotonic()
        handle, _ = self._statement.execute_query()
        self._reader = pa.RecordBatchReader.from_stream(handle)  # the Arrow C stream interface

    def fetch_record_batch(self) -> Iterator[pa.RecordBatch]:
        """The record batches of the last query's result (its time limit: :class:`TimedOut`)."""
        if self._reader is None:
            raise RuntimeError("fetch_record_batch() before execute()")
        return self._batches(self._reader)

    def _batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except OSError as exc:
            if self._ran_out(exc):
                raise TimedOut(*exc.args) from exc
            raise

    def _ran_out(self, exc: OSError) -> bool:
        """Whether ``exc`` is the server ending the statement at the session's time limit (see the class)."""
        if self._cancelled or not self._time_limit or "[libpq]" not in str(exc):
            return False
        return time.monotonic() - self._started >= self._time_limit and not connection_lost(exc)

    def cancel(self) -> None:
        """Ask the server to stop the running query (the rest of its rows are not wanted); its
        statement, a transaction of its own, then ends. Safe from another thread.

        A request that cannot reach the server (libpq sends it on a connection of its own) is
        no error of the query's: the connection's next query says whether the source is lost,
        as a loss, or, if it is not, waits for the rest of the rows first.
        """
        import adbc_driver_manager as adbc

        self._cancelled = True  # its error, if read, is this cancel's (57014 too), not a timeout
        with contextlib.suppress(adbc.Error):
            self._statement.cancel()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        """Release the result and the statement."""
        try:
            self._close_reader()
        finally:
            self._statement.close()
