"""A large batch sorted by Arrow on the client instead of by PostgreSQL, to the same order.

Files have stable bytes because a batch's rows come in a total order (``ORDER BY p.ord``, then
:func:`~sluicegate.sources.order_columns`). For a large partition that sort is the server's,
and nothing streams until it is done: at 1M rows the client waited ~0.66 s for the first row
(``bench/README.md``, "Large partitions"). Read unsorted, the rows start at once, and Arrow
sorts them on the client in less time than the server took. The order is the same only where
Arrow orders values as PostgreSQL does: integers, dates and timestamps (NULLs last, as
``ORDER BY`` ascending puts them); floats (NaN, -0), decimals (scale) and text (collations) stay
the server's to sort. A sort needs the whole batch in memory, so it is done for batches the
planner expects to hold at least :data:`MIN_ROWS` rows and at most :data:`BUDGET_BYTES` (with a
margin for its estimate), and a batch found to hold more than :data:`HOLD_BYTES` of Arrow data
while it is read (the estimate was still wrong) is stopped on the server and read again, sorted
there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import Column, ReadSpec, order_columns

# Kinds whose values Arrow's sort orders as PostgreSQL's ORDER BY does.
SORTABLE = frozenset({"int", "timestamptz", "timestamp", "date"})
MIN_ROWS = 100_000  # below this the server's sort takes a few ms: the stream is not held up
BUDGET_BYTES = 96 << 20  # at most this much data (the planner's rows x width x margin) is sorted here
# The planner's rows for a batch's join on its keys' values were a third of the true count
# (bench: 111,111 for 333,334): a 10M-row partition then passed for 3.3M rows, was read up to
# the hold limit, and read again.
ESTIMATE_MARGIN = 3
HOLD_BYTES = 96 << 20  # at most this much of a batch's Arrow data is held to be sorted
CHUNK_ROWS = 1 << 16  # sorted rows handed on at a time (the encoders' batches)


@dataclass(frozen=True)
class ClientSort:
    """The batch's query without ``ORDER BY``, and the columns (by place in its result, 0 being
    ``ord``) to sort its rows on. ``overran`` is called when the batch held more than
    ``budget``: the planner underestimates this task's batches, so the source stops trying."""

    query: Any
    params: list[Any]
    keys: tuple[int, ...]
    budget: int  # Arrow bytes held at most (HOLD_BYTES)
    overran: Callable[[], None]


def order_keys(spec: ReadSpec, columns: Sequence[Column]) -> tuple[int, ...] | None:
    """The places of the rows' order columns in a batch result (``ord``, then ``columns``), or
    None when one of them is of a kind Arrow may order otherwise than PostgreSQL."""
    places: dict[str, tuple[int, Column]] = {}
    for i, column in enumerate(columns):
        places.setdefault(column.name, (i + 1, column))
    keys = [0]
    for name in order_columns(spec, columns):
        place, column = places[name]
        if column.as_text or column.kind not in SORTABLE:
            return None
        keys.append(place)
    return tuple(keys)


def sorted_batches(
    batches: Iterable[pa.RecordBatch], keys: Sequence[int], budget: int
) -> Iterator[pa.RecordBatch] | None:
    """``batches`` (the whole result) sorted on ``keys``, or None when they hold more than
    ``budget`` bytes (they are not all read then)."""
    held: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        size += batch.nbytes
        if size > budget:
            return None
        held.append(batch)
    return _sorted(held, keys)


def _sorted(held: list[pa.RecordBatch], keys: Sequence[int]) -> Iterator[pa.RecordBatch]:
    if not held:
        return
    table = pa.Table.from_batches(held)
    del held[:]
    # By place: the select's columns may share a name with "ord" or with each other.
    renamed = table.rename_columns([f"c{i}" for i in range(table.num_columns)])
    # NULLs last, as ORDER BY's ascending order puts them: Arrow's default (named per key only
    # since pyarrow 25, so left to the default).
    order = pc.sort_indices(renamed, sort_keys=[(f"c{k}", "ascending") for k in keys])
    for start in range(0, len(order), CHUNK_ROWS):
        for batch in table.take(order.slice(start, CHUNK_ROWS)).to_batches():
            if batch.num_rows:
                yield batch
