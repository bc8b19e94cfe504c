"""What MariaDB Connector/Python 1.1 reads wrongly, put right.

A ``DECIMAL`` of a scale above 30 (``DECIMAL(31,31)``) has a scale of 0 in the description: taken
as ``decimal128(32, 0)``, its Parquet column refused 0.5 ("Rescaling Decimal value would cause
data loss") and the partition failed. The result's metadata has its scale (``decimals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

UNSIGNED = 32  # column flag


def decimal_type(desc: Sequence[Any], decimals: int) -> tuple[int, int]:
    """A DECIMAL column's scale (its metadata's ``decimals``) and precision, from its length in
    the description, which counts the point and the sign."""
    length, scale, flags = int(desc[3]), int(decimals), int(desc[7])
    return scale, length - (1 if scale else 0) - (0 if flags & UNSIGNED else 1)
