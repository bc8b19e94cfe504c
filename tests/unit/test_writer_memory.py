"""What an open file's writer keeps in memory between writes.

An exporter keeps every file of a batch open (its writer referenced) until the batch's
commit: up to hundreds at once per exporter. A writer that kept a ``csv.writer`` kept its
128 KiB record buffer, 64 MiB per exporter for a batch of 500 location-days.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import gzip
import io
import tracemalloc

import pytest

from sluicegate.formats import open_writer
from sluicegate.sources import Column

COLUMNS = [
    Column(name="location_id", kind="int"),
    Column(name="datetime", kind="timestamptz"),
    Column(name="value", kind="float"),
    Column(name="note", kind="text"),
]
ROWS = [
    (7, dt.datetime(2024, 3, 1, hour, tzinfo=dt.UTC), hour * 1.5, "a,b" if hour % 2 else "line1\rline2")
    for hour in range(24)
]
OPEN_FILES = 200


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl"])
def test_an_open_writer_holds_little_more_than_its_rows(fmt: str) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        outs = [io.BytesIO() for _ in range(OPEN_FILES)]
        before = tracemalloc.get_traced_memory()[0]
        writers = [open_writer(fmt, out, COLUMNS, "Europe/Paris") for out in outs]
        for writer in writers:
            writer.write(ROWS, "rows")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_file = held / OPEN_FILES
    assert per_file < 16 * 1024, f"{per_file / 1024:.0f} KiB held per open {fmt} writer"
    for writer, out in zip(writers, outs, strict=True):
        writer.close()
        data = out.getvalue()
        text = gzip.decompress(data) if fmt == "csv.gz" else data
        assert text.count(b"\n") >= len(ROWS)
    if fmt != "jsonl":
        rows = list(csv.reader(io.StringIO(text.decode())))
        assert rows[0] == [c.name for c in COLUMNS]
        assert rows[1:] == [
            [
                str(r[0]),
                r[1].astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat(),
                repr(r[2]).removesuffix(".0"),
                r[3],
            ]
            for r in ROWS
        ]
