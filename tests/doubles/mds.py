"""A double of mobility providers' MDS 0.4 ``/trips`` APIs: a real HTTP server on 127.0.0.1.

One :class:`MdsDouble` serves any number of providers, each under its own path prefix::

    GET /<provider>/trips?start_time=<ms>&end_time=<ms>[&page=<n>]

answering ``{"version": "0.4.1", "data": {"trips": [...]}, "links": {"next": <url or null>}}``.
``links.next`` is an absolute URL to follow verbatim; the last page has ``null``.

Times are unix milliseconds, as in MDS 0.4. A value below 100,000,000,000 (which in
milliseconds would be March 1973) is read as unix *seconds*, so clients written for
seconds work too. The window is half-open: a trip is served when
``start_time <= trip.end_time < end_time``, as the real APIs assign trips to blocks.

The data set is deterministic. A provider has ``trips_per_block`` trips in every UTC hour
block, generated from ``(provider, block start, index)`` alone, so a test computes the
trips a block should yield with :func:`generate_trips` or :meth:`MdsDouble.expected_trips`
without asking the server. Per block a test can change the number of trips, make the
block empty, make it always fail with 500, or make a page answer 503 (with
``Retry-After``) a given number of times before it succeeds.

A request's *block* is the UTC hour that contains its ``start_time``: failures and 503s
are keyed by it. (A window spanning several hours fails when any of them fails.)

Errors, with a JSON body ``{"error": <code>, "error_description": <sentence>}``:
400 bad or missing parameters, 401 missing or wrong bearer token (when the provider has
one), 404 unknown provider or path, 500 a failing block, 503 a flaky page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from ._http import HttpDouble, Recorded, Request, Response

HOUR_MS = 3_600_000
SECONDS_BELOW = 100_000_000_000
"""Query times below this are unix seconds, at or above it unix milliseconds."""
MDS_VERSION = "0.4.1"
MDS_CONTENT_TYPE = "application/vnd.mds.provider+json;version=0.4"

# Downtown Austin: the routes are plausible points, not a real street network.
_CENTRE_LON, _CENTRE_LAT = -97.7431, 30.2672
_FLEET_SIZE = 25
_NAMESPACE = uuid.UUID("5a1c6a7e-0d0b-4b8e-9a53-6d6f75626c65")

Block = dt.datetime | int
"""An hour block: an aware datetime on the hour, or its start in unix milliseconds."""
Trip = dict[str, Any]


def block_ms(block: Block) -> int:
    """Return the start of ``block`` in unix milliseconds; it must be on a whole UTC hour."""
    if isinstance(block, dt.datetime):
        if block.tzinfo is None or block.utcoffset() is None:
            raise ValueError(f"block {block!r} is a naive datetime; give it a time zone")
        ms = int(block.timestamp() * 1000)
    else:
        ms = block
    if ms % HOUR_MS:
        raise ValueError(f"block {block!r} does not start on a whole UTC hour")
    return ms


def provider_id(provider: str) -> str:
    """The provider's stable ``provider_id`` (a uuid derived from its name)."""
    return str(uuid.uuid5(_NAMESPACE, f"provider/{provider}"))


def make_trip(provider: str, block: Block, index: int) -> Trip:
    """Trip number ``index`` of ``provider``'s block: a pure function of its three arguments."""
    start_of_block = block_ms(block)
    rng = random.Random(f"{provider}/{start_of_block}/{index}")
    device = rng.randrange(_FLEET_SIZE)
    vehicle_type = rng.choice(("scooter", "scooter", "bicycle"))
    end_time = start_of_block + rng.randrange(HOUR_MS)
    duration_s = rng.randrange(60, 1800)
    start_time = end_time - duration_s * 1000
    start_point = _point(rng)
    end_point = _point(rng)
    return {
        "provider_id": provider_id(provider),
        "provider_name": provider,
        "device_id": str(uuid.uuid5(_NAMESPACE, f"device/{provider}/{device}")),
        "vehicle_id": f"{provider[:3].upper()}-{device:04d}",
        "vehicle_type": vehicle_type,
        "propulsion_type": ["electric"]
        if vehicle_type == "scooter"
        else [rng.choice(("human", "electric_assist"))],
        "trip_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "trip_duration": duration_s,
        "trip_distance": rng.randrange(100, 8000),
        "route": {
            "type": "FeatureCollection",
            "features": [_feature(start_point, start_time), _feature(end_point, end_time)],
        },
        "accuracy": rng.randrange(3, 30),
        "start_time": start_time,
        "end_time": end_time,
        "standard_cost": 100 + 15 * math.ceil(duration_s / 60),
        "actual_cost": 100 + 15 * math.ceil(duration_s / 60),
    }


def generate_trips(provider: str, block: Block, count: int) -> list[Trip]:
    """The ``count`` trips of ``provider``'s block, ordered by ``end_time`` then ``trip_id``.

    Trip ``i`` does not depend on ``count``: a block with more trips is a superset.
    """
    trips = [make_trip(provider, block, index) for index in range(count)]
    return sorted(trips, key=lambda trip: (trip["end_time"], trip["trip_id"]))


def _point(rng: random.Random) -> tuple[float, float]:
    return (
        round(_CENTRE_LON + rng.uniform(-0.05, 0.05), 6),
        round(_CENTRE_LAT + rng.uniform(-0.05, 0.05), 6),
    )


def _feature(point: tuple[float, float], timestamp: int) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"timestamp": timestamp},
        "geometry": {"type": "Point", "coordinates": list(point)},
    }


def parse_time(raw: str | None) -> int | None:
    """A query time in unix ms (seconds are scaled up); None when it is missing or not an integer."""
    if raw is None or not raw.isdigit():
        return None
    value = int(raw)
    return value * 1000 if value < SECONDS_BELOW else value


@dataclasses.dataclass(frozen=True, kw_only=True)
class MdsProvider:
    """One provider's settings.

    ``token``: when set, every request must carry ``Authorization: Bearer <token>``.
    """

    name: str
    trips_per_block: int = 5
    page_size: int = 2
    token: str | None = None


def _error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status=status, body={"error": code, "error_description": description}, headers=headers or {}
    )


class MdsDouble(HttpDouble):
    """MDS ``/trips`` APIs of several providers, each under ``/<provider>``.

    :param providers: provider names (which get the keyword defaults below) or
        :class:`MdsProvider` objects with their own settings.
    :param trips_per_block: trips in each hour block of a provider given by name.
    :param page_size: trips per page for a provider given by name.
    :param token: bearer token required for a provider given by name (None: no check).
    """

    def __init__(
        self,
        providers: Iterable[str | MdsProvider] = ("lime",),
        *,
        trips_per_block: int = 5,
        page_size: int = 2,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.providers: dict[str, MdsProvider] = {}
        for item in providers:
            provider = (
                item
                if isinstance(item, MdsProvider)
                else MdsProvider(name=item, trips_per_block=trips_per_block, page_size=page_size, token=token)
            )
            if provider.page_size < 1:
                raise ValueError(f"provider {provider.name!r}: page_size must be at least 1")
            self.providers[provider.name] = provider
        self._counts: dict[tuple[str, int], int] = {}
        self._failing: dict[tuple[str, int], int] = {}
        self._flaky: dict[tuple[str, int, int], tuple[int, int]] = {}

    # ------------------------------------------------------------------ addresses

    def base_url(self, provider: str) -> str:
        """The provider's API root (what a provider config's ``mds_api_url`` would hold)."""
        self._provider(provider)
        return f"{self.url}/{provider}"

    def trips_url(self, provider: str) -> str:
        return f"{self.base_url(provider)}/trips"

    # ------------------------------------------------------------------ behaviours

    def set_trip_count(self, provider: str, block: Block, count: int) -> None:
        """Serve ``count`` trips in this block instead of the provider's ``trips_per_block``."""
        with self.lock:
            self._counts[(self._provider(provider).name, block_ms(block))] = count

    def empty_block(self, provider: str, block: Block) -> None:
        """Serve no trips in this block (one page, ``trips: []``, ``next: null``)."""
        self.set_trip_count(provider, block, 0)

    def fail_block(self, provider: str, block: Block, *, status: int = 500) -> None:
        """Answer every request for this block with ``status`` until :meth:`restore_block`."""
        with self.lock:
            self._failing[(self._provider(provider).name, block_ms(block))] = status

    def restore_block(self, provider: str, block: Block) -> None:
        """Undo :meth:`fail_block` and any pending 503s of this block."""
        key = (self._provider(provider).name, block_ms(block))
        with self.lock:
            self._failing.pop(key, None)
            for flaky in [flaky for flaky in self._flaky if flaky[:2] == key]:
                del self._flaky[flaky]

    def flake(self, provider: str, block: Block, times: int, *, page: int = 1, retry_after: int = 0) -> None:
        """Answer the block's ``page`` (1-based) with 503 ``times`` times, then normally.

        Each 503 carries ``Retry-After: <retry_after>`` (seconds).
        """
        with self.lock:
            self._flaky[(self._provider(provider).name, block_ms(block), page)] = (times, retry_after)

    def flakes_left(self, provider: str, block: Block, *, page: int = 1) -> int:
        """How many 503s the page still has to give."""
        with self.lock:
            return self._flaky.get((provider, block_ms(block), page), (0, 0))[0]

    # ------------------------------------------------------------------ expectations

    def trip_count(self, provider: str, block: Block) -> int:
        """How many trips the block holds now."""
        with self.lock:
            settings = self._provider(provider)
            return self._counts.get((settings.name, block_ms(block)), settings.trips_per_block)

    def expected_trips(self, provider: str, start: Block, end: dt.datetime | int | None = None) -> list[Trip]:
        """The trips a complete fetch of ``[start, end)`` yields, in the order served.

        Without ``end`` the window is the hour block ``start``. ``end`` (when given) is an
        aware datetime or unix ms and need not be on the hour.
        """
        start_ms = block_ms(start)
        if end is None:
            end_ms = start_ms + HOUR_MS
        elif isinstance(end, dt.datetime):
            end_ms = int(end.timestamp() * 1000)
        else:
            end_ms = end
        return self._window_trips(provider, start_ms, end_ms)

    def page_count(self, provider: str, block: Block) -> int:
        """How many pages a fetch of the whole hour block takes (at least 1)."""
        return max(1, math.ceil(self.trip_count(provider, block) / self._provider(provider).page_size))

    # ------------------------------------------------------------------ records

    def requests(
        self, provider: str | None = None, block: Block | None = None, *, status: int | None = None
    ) -> list[Recorded]:
        """Recorded requests, optionally only those of a provider, a block or an answer status.

        A request belongs to the block that contains its ``start_time``.
        """
        wanted_block = None if block is None else block_ms(block)
        selected = []
        for record in self.records:
            if provider is not None and record.path.split("/")[1:2] != [provider]:
                continue
            if status is not None and record.status != status:
                continue
            if wanted_block is not None:
                start = parse_time(record.query.get("start_time"))
                if start is None or start - start % HOUR_MS != wanted_block:
                    continue
            selected.append(record)
        return selected

    # ------------------------------------------------------------------ serving

    def handle(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        if (
            request.method != "GET"
            or len(parts) != 2
            or parts[1] != "trips"
            or parts[0] not in self.providers
        ):
            return _error(404, "not_found", f"no such endpoint: {request.method} {request.path}")
        settings = self.providers[parts[0]]
        if settings.token is not None and request.headers.get("authorization") != f"Bearer {settings.token}":
            return _error(
                401, "invalid_token", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )
        start, end = parse_time(request.query.get("start_time")), parse_time(request.query.get("end_time"))
        if start is None or end is None or end <= start:
            return _error(
                400,
                "bad_param",
                "start_time and end_time must be unix milliseconds with start_time < end_time",
            )
        page_raw = request.query.get("page", "1")
        if not page_raw.isdigit() or int(page_raw) < 1:
            return _error(400, "bad_param", "page must be a positive integer")
        return self._trips_page(request, settings, start, end, int(page_raw))

    def _trips_page(
        self, request: Request, settings: MdsProvider, start: int, end: int, page: int
    ) -> Response:
        first_block = start - start % HOUR_MS
        with self.lock:
            for block in range(first_block, end, HOUR_MS):
                if (settings.name, block) in self._failing:
                    status = self._failing[(settings.name, block)]
                    return _error(status, "internal_error", "the provider failed to read this block")
            times, retry_after = self._flaky.get((settings.name, first_block, page), (0, 0))
            if times > 0:
                self._flaky[(settings.name, first_block, page)] = (times - 1, retry_after)
                return _error(503, "unavailable", "try again later", {"Retry-After": str(retry_after)})
            trips = self._window_trips(settings.name, start, end)
        pages = max(1, math.ceil(len(trips) / settings.page_size))
        if page > pages:
            return _error(400, "bad_param", f"page {page} is past the last page ({pages})")
        next_url = None
        if page < pages:
            query = {name: request.query[name] for name in ("start_time", "end_time")} | {
                "page": str(page + 1)
            }
            next_url = f"{self.url}{request.path}?{urlencode(query)}"
        return Response(
            status=200,
            body={
                "version": MDS_VERSION,
                "data": {"trips": trips[(page - 1) * settings.page_size : page * settings.page_size]},
                "links": {"next": next_url},
            },
            content_type=MDS_CONTENT_TYPE,
        )

    def _window_trips(self, provider: str, start: int, end: int) -> list[Trip]:
        trips: list[Trip] = []
        for block in range(start - start % HOUR_MS, end, HOUR_MS):
            trips.extend(
                trip
                for trip in generate_trips(provider, block, self.trip_count(provider, block))
                if start <= trip["end_time"] < end
            )
        return trips

    def _provider(self, name: str) -> MdsProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise ValueError(
                f"unknown provider {name!r}; this double serves {sorted(self.providers)}"
            ) from None
