"""ADBC's low-level PostgreSQL connection, as much of its DB-API as the Arrow read path uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

BATCH_BYTES = 1 << 20  # per record batch, ADBC's aim (its default 16 MiB): see .ahead


def open_arrow(url: str, session: Sequence[str]) -> Any:
    """An ADBC connection with the session settings the batch query expects (``session``)."""
    conn = _AdbcConnection(url)
    try:
        with conn.cursor() as cur:
            for setting in session:
                cur.execute(setting)  # autocommit: kept for the session
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

        cursor = _AdbcCursor(adbc.AdbcStatement(self._conn))
        try:
            yield cursor
        finally:
            cursor.close()

    def alive(self) -> bool:
        """Whether the connection still answers a query (after a failed one: lost or not)."""
        try:
            with self.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetch_record_batch().read_all()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Close the connection and its database handle."""
        try:
            self._conn.close()
        finally:
            self._db.close()


class _AdbcCursor:
    """One ADBC statement: ``execute`` a query, then read its result as Arrow record batches."""

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._reader: pa.RecordBatchReader | None = None

    def execute(self, query: str) -> None:
        """Run ``query``; its result is read with :meth:`fetch_record_batch`."""
        self._close_reader()
        self._statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        self._statement.set_sql_query(query)
        handle, _ = self._statement.execute_query()
        self._reader = pa.RecordBatchReader.from_stream(handle)  # the Arrow C stream interface

    def fetch_record_batch(self) -> pa.RecordBatchReader:
        """The result of the last query."""
        if self._reader is None:
            raise RuntimeError("fetch_record_batch() before execute()")
        return self._reader

    def cancel(self) -> None:
        """Ask the server to stop the running query (the rest of its rows are not wanted); its
        statement, a transaction of its own, then ends. Safe from another thread.

        A request that cannot reach the server (libpq sends it on a connection of its own) is
        no error of the query's: the connection's next query says whether the source is lost,
        as a loss, or, if it is not, waits for the rest of the rows first.
        """
        import adbc_driver_manager as adbc

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
