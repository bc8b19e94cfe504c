"""HTTP test doubles: real servers on 127.0.0.1 that the time-block pipeline tests talk to.

- :class:`MdsDouble` (``doubles.mds``): mobility providers' MDS 0.4 ``/trips`` APIs with a
  deterministic data set and injectable failures.
- :class:`PortalDouble` (``doubles.portal``): a Socrata-like portal that upserts rows by key.

Both record every request. Use them as context managers::

    with MdsDouble(["lime"], trips_per_block=5, page_size=2) as mds, PortalDouble() as portal:
        ...
"""

from __future__ import annotations

from ._http import HttpDouble, Recorded, Request, Response
from .mds import HOUR_MS, MdsDouble, MdsProvider, block_ms, generate_trips, make_trip
from .portal import COLUMN_TYPES, Dataset, PortalCall, PortalDouble

__all__ = [
    "COLUMN_TYPES",
    "HOUR_MS",
    "Dataset",
    "HttpDouble",
    "MdsDouble",
    "MdsProvider",
    "PortalCall",
    "PortalDouble",
    "Recorded",
    "Request",
    "Response",
    "block_ms",
    "generate_trips",
    "make_trip",
]
