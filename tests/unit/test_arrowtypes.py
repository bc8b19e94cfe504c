"""cast_column: a zone change is a view with the same values as Arrow's cast; the rest is a cast."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sluicegate.arrowtypes import cast_column

MICROS = [1_730_548_800_000_000, None, 1_730_552_400_123_456, -1]


def test_a_zone_change_gives_the_values_of_arrows_cast_on_sliced_chunks() -> None:
    utc = pa.chunked_array(
        [pa.array(MICROS, pa.timestamp("us", tz="UTC")), pa.array(MICROS[:2], pa.timestamp("us", tz="UTC"))]
    )
    column = utc.slice(1, 4)  # an offset into the first chunk, and part of the second
    zoned = pa.timestamp("us", tz="America/St_Johns")
    viewed = cast_column(column, zoned)
    assert viewed.type == zoned
    assert viewed.equals(column.cast(zoned))
    assert viewed.to_pylist() == column.cast(zoned).to_pylist()


def test_other_differences_are_cast_and_a_value_that_does_not_fit_raises() -> None:
    ints = pa.chunked_array([pa.array([1, None, 3], pa.int32())])
    assert cast_column(ints, pa.int64()).equals(pa.chunked_array([pa.array([1, None, 3], pa.int64())]))
    zoned = pa.chunked_array([pa.array(MICROS, pa.timestamp("us", tz="UTC"))])
    with pytest.raises(pa.ArrowInvalid, match="lose data"):  # another unit is a cast, never a view
        cast_column(zoned, pa.timestamp("ms", tz="Asia/Tokyo"))
    with pytest.raises(pa.ArrowInvalid):
        cast_column(pa.chunked_array([pa.array(["1.5", "NaN"])]), pa.decimal128(6, 2))
