"""The airmax data set: pm25 measurements of eight Belgian cities, into MariaDB, PostgreSQL or SQLite.

airmax's ``generate-test-data.py``, fixed. Each measurement: a city drawn from :data:`CITIES`
(with its real coordinates, where airmax wrote 0 and 1), country ``BE``, parameter ``pm25``
in ``µg/m³`` (airmax wrote ``so³``), a value ``exp(N(0, 1))``, sent now, measured a log-normal
lag earlier (``exp(N(1, 1))`` minutes, as airmax), and a message id that is unique (a UUID;
airmax's 10 random letters could repeat, and a repeat failed its whole batch).

* **steady** (``rate_per_min`` and ``duration_s``): batches of :data:`BATCH` rows, batch ``k``
  due ``k * BATCH / rate`` minutes after the start. The pause before each batch is what is left
  until it is due, so the time spent generating and inserting counts (airmax slept the whole
  interval after each batch, and fell behind its rate by the insert time).
* **bulk** (``rows``): ``rows`` measurements as if the steady generator had run at
  ``rate_per_min`` (default 100 a minute) until now: sent times spread evenly back from now.

The schema (``templates/airmax/schema/<database>.sql``, the example project's) is created if
missing. MariaDB/MySQL URLs (``mariadb://``, ``mysql://``) use MariaDB Connector/Python.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import tables
from .exceptions import UsageError

CITIES: dict[str, tuple[float, float]] = {
    "Genk": (50.965, 5.500),
    "Diepenbeek": (50.908, 5.418),
    "Leuven": (50.879, 4.701),
    "Antwerpen": (51.219, 4.402),
    "Hasselt": (50.930, 5.338),
    "Brussel": (50.847, 4.357),
    "Gent": (51.054, 3.717),
    "Landen": (50.753, 5.082),
}
COLUMNS = (
    "message_id", "message_send_time_utc", "measurement_time_utc", "country_code", "location", "city",
    "latitude", "longitude", "source_type", "source_name", "parameter_name", "parameter_value",
    "parameter_unit",
)  # fmt: skip
BATCH = 20  # rows per insert in steady mode, as airmax
BULK_BATCH = 5000
DEFAULT_RATE = 100.0  # measurements per minute, airmax's default


@dataclass(frozen=True, kw_only=True)
class AirmaxResult:
    """What :func:`generate` inserted."""

    rows: int
    seconds: float


def schema_sql(flavor: tables.Flavor) -> list[str]:
    """The statements of the example project's schema for ``flavor``."""
    text = resources.files(__package__).joinpath("templates", "airmax", "schema", f"{flavor}.sql")
    body = "\n".join(
        line for line in text.read_text(encoding="utf-8").splitlines() if not line.startswith("--")
    )
    return [s.strip() for s in body.split(";") if s.strip()]


def create_schema(url: str) -> None:
    """Create the ``raw`` and ``current_air_quality`` tables of the airmax example if missing."""
    target = tables.TableDb(url)
    try:
        for statement in schema_sql(target.flavor):
            target.execute(statement)
    finally:
        target.close()


def measurement(rng: random.Random, sent: dt.datetime) -> dict[str, Any]:
    """One measurement sent at ``sent``: a random city, a log-normal lag, a log-normal pm25 value."""
    city = rng.choice(list(CITIES))
    lat, lon = CITIES[city]
    lag = dt.timedelta(minutes=math.exp(rng.gauss(1.0, 1.0)))
    return {
        "message_id": uuid.uuid4().hex,  # from os.urandom: unique across runs and seeds
        "message_send_time_utc": sent,
        "measurement_time_utc": sent - lag,
        "country_code": "BE",
        "location": f"{city}-{rng.randint(1, 3)}",
        "city": city,
        "latitude": lat,
        "longitude": lon,
        "source_type": rng.choice(("government", "community")),
        "source_name": rng.choice(("IRCEL-CELINE", "VMM", "sensor.community")),
        "parameter_name": "pm25",
        "parameter_value": round(math.exp(rng.gauss(0.0, 1.0)), 4),
        "parameter_unit": "µg/m³",
    }


def _row(flavor: tables.Flavor, m: dict[str, Any]) -> tuple[Any, ...]:
    times = ("message_send_time_utc", "measurement_time_utc")
    return tuple(tables.time_value(flavor, m[c], whole_seconds=True) if c in times else m[c] for c in COLUMNS)


def generate(
    url: str,
    *,
    rows: int | None = None,
    rate_per_min: float | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    now: Callable[[], dt.datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> AirmaxResult:
    """Insert airmax measurements into ``url``: ``rows`` in bulk, or ``rate_per_min`` for ``duration_s``."""
    if (rows is None) == (duration_s is None):
        raise UsageError("give either rows (bulk) or a rate per minute with a duration (steady)")
    rate = DEFAULT_RATE if rate_per_min is None else rate_per_min
    if not (rate > 0 and math.isfinite(rate)):
        raise UsageError(f"the rate {rate:g} per minute must be a number more than 0")
    clock = now or (lambda: dt.datetime.now(dt.UTC))
    create_schema(url)
    target = tables.TableDb(url)
    started = time.monotonic()
    try:
        insert = _inserter(target)
        rng = random.Random(seed)
        if rows is not None:
            count = _bulk(insert, target.flavor, rng, rows, rate, clock())
        else:
            assert duration_s is not None
            count = _steady(insert, target.flavor, rng, rate, duration_s, clock, sleep)
    finally:
        target.close()
    return AirmaxResult(rows=count, seconds=time.monotonic() - started)


def _inserter(target: tables.TableDb) -> Callable[[Sequence[tuple[Any, ...]]], None]:
    """Insert a batch in one transaction (COPY on PostgreSQL)."""
    rows = tables.Insert(flavor=target.flavor, table="raw", columns=COLUMNS)

    def insert(batch: Sequence[tuple[Any, ...]]) -> None:
        with target.transaction() as cur:
            if target.flavor == "postgresql":
                with cur.copy(f"COPY raw ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
            else:
                rows.run(cur, batch)

    return insert


def _bulk(
    insert: Callable[[Sequence[tuple[Any, ...]]], None],
    flavor: tables.Flavor,
    rng: random.Random,
    rows: int,
    rate: float,
    end: dt.datetime,
) -> int:
    """``rows`` measurements sent evenly at ``rate`` a minute, the last one at ``end``."""
    try:
        step = dt.timedelta(minutes=1 / rate)
        first = end - step * (rows - 1)
    except OverflowError:  # was a traceback
        raise UsageError(
            f"{rows:,} rows sent at {rate:g} a minute would reach back before the year 1; raise the rate"
            " or generate fewer rows"
        ) from None
    for start in range(0, rows, BULK_BATCH):
        batch = [
            _row(flavor, measurement(rng, first + step * i))
            for i in range(start, min(rows, start + BULK_BATCH))
        ]
        insert(batch)
    return rows


def _steady(
    insert: Callable[[Sequence[tuple[Any, ...]]], None],
    flavor: tables.Flavor,
    rng: random.Random,
    rate: float,
    duration_s: float,
    clock: Callable[[], dt.datetime],
    sleep: Callable[[float], None],
) -> int:
    """Batches of :data:`BATCH` at ``rate`` a minute for ``duration_s``; a pause ends when the next is due,
    and a batch not started within ``duration_s`` (the inserts are slower than the rate) is not made."""
    interval = BATCH * 60.0 / rate
    start = time.monotonic()
    count = 0
    for k in range(math.ceil(duration_s / interval)):
        due = start + k * interval
        pause = due - time.monotonic()
        if pause > 0:
            sleep(pause)
        elif time.monotonic() - start >= duration_s:  # behind a rate the database cannot keep: the
            break  # duration ends the run (counted, 10**9 a minute went on for ever)
        sent = clock()
        insert([_row(flavor, measurement(rng, sent)) for _ in range(BATCH)])
        count += BATCH
    return count
