"""Arrow batches from PostgreSQL through ADBC (the ``fast`` extra), for Parquet output.

ADBC's PostgreSQL driver reads the result with binary ``COPY`` straight into Arrow memory,
which is several times faster than building Arrow arrays from Python rows. The query is
rendered with psycopg's client-side binding, so values are quoted by psycopg.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql


def available() -> bool:
    """True when the ADBC PostgreSQL driver is installed."""
    return importlib.util.find_spec("adbc_driver_postgresql") is not None


def open_arrow(url: str) -> Any:
    """An ADBC connection with the session settings the batch query expects."""
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(url)
    with conn.cursor() as cur:
        cur.execute("SET TimeZone TO 'UTC'")
        cur.execute("SET work_mem TO '64MB'")
    return conn


def read_arrow(
    aconn: Any, conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any]
) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(index, table)`` slices of the batch result, split on the ``ord`` column."""
    text = psycopg.ClientCursor(conn).mogrify(query, params)
    with aconn.cursor() as cur:
        cur.execute(text)
        reader = cur.fetch_record_batch()
        for batch in reader:
            yield from _split(batch)


def _split(batch: pa.RecordBatch) -> Iterator[tuple[int, pa.Table]]:
    if batch.num_rows == 0:
        return
    ords = batch.column(0)
    table = pa.Table.from_batches([batch]).drop_columns([batch.schema.names[0]])
    # Rows arrive ordered by ord: find the runs with run-end encoding.
    runs = pc.run_end_encode(ords)
    ends = runs.run_ends.to_pylist()
    values = runs.values.to_pylist()
    start = 0
    for end, value in zip(ends, values, strict=True):
        yield int(value), table.slice(start, end - start)
        start = end
