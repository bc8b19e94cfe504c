"""OpenAQ-like test data for SQLite and PostgreSQL: locations, sensors and measurements.

Used by the demo, the tests and the benchmark. Two modes:

* **bulk** (``rows=`` and/or ``days=``): one reading every ``interval_minutes`` for every
  sensor, ending at ``end`` (default: now, truncated to the interval), newest rows first, so
  that exactly ``rows`` rows are produced. A ``late_fraction`` of the rows arrive late
  (``ingested_at`` 1 to 4 days after ``datetime``, never after now) and are inserted after
  all the others; the rest arrive 5-9 minutes after ``datetime`` (never after now). So the
  insertion order is not chronological. On PostgreSQL the rows are generated server-side
  (``INSERT ... SELECT ... FROM generate_series``) with values drawn from
  ``hashint8extended``; into an empty table the indexes are dropped and rebuilt around the
  load (10M rows in about 50 s on 2 cores). On SQLite they are generated in Python and
  inserted with ``executemany`` in one transaction, in chunks of about a day, each chunk
  sensor by sensor (1M rows in about 12 s).
* **steady** (``rate_per_min=`` and ``duration_s=``): about ``rate_per_min`` rows a minute,
  in one small batch a second, with ``datetime`` = now (whole seconds) and
  ``ingested_at`` = now, plus a ``late_fraction`` of rows whose ``datetime`` lies 1 to 4 days
  in the past.

Everything is idempotent: the schema is created if missing, locations and sensors are
inserted with "ignore on conflict", and measurements have the primary key
``(sensor_id, datetime)``, so calling :func:`generate` again with the same parameters adds
nothing, and a later ``end`` adds only the newer rows. The returned row count counts only
rows that were actually inserted.

On SQLite, timestamps are TEXT in UTC, always exactly ``YYYY-MM-DDTHH:MM:SSZ``; on
PostgreSQL they are ``timestamptz``.

Values are deterministic for a given ``seed``: on SQLite a row's value depends only on
``(seed, sensor_id, datetime)``; on PostgreSQL likewise, through a different hash, so the two
databases hold different (but equally distributed) values.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .masking import mask_url, scrub

__all__ = [
    "MAX_LOCATIONS",
    "PARAMETERS",
    "SQLITE_TS_FORMAT",
    "TIMEZONES",
    "GenerateResult",
    "create_schema",
    "generate",
    "location_timezone",
]

# (time zone, approximate latitude, approximate longitude) of a city in that zone. Location
# ``n`` gets entry ``(n - 1) % len(TIMEZONES)``; lat/lon are jittered around the city.
_ZONES: tuple[tuple[str, float, float], ...] = (
    ("Asia/Kolkata", 22.57, 88.36),
    ("Australia/Adelaide", -34.93, 138.60),
    ("Pacific/Chatham", -43.95, -176.56),
    ("America/Chicago", 41.88, -87.63),
    ("Europe/Brussels", 50.85, 4.35),
    ("UTC", 51.48, 0.00),
    ("America/Los_Angeles", 34.05, -118.24),
    ("Pacific/Kiritimati", 1.87, -157.43),
    ("Asia/Tehran", 35.69, 51.39),
    ("Australia/Sydney", -33.87, 151.21),
    ("America/Sao_Paulo", -23.55, -46.63),
    ("Africa/Nairobi", -1.29, 36.82),
)
TIMEZONES: tuple[str, ...] = tuple(zone for zone, _, _ in _ZONES)
"""Time zones given to locations, in order (location 1 gets the first)."""

PARAMETERS: tuple[tuple[str, str], ...] = (
    ("pm25", "\u00b5g/m\u00b3"),
    ("pm10", "\u00b5g/m\u00b3"),
    ("o3", "ppm"),
)
"""``(parameter, units)`` of the sensors of each location; sensor ids are ``location_id*10 + 1..3``."""

SQLITE_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""strftime format of every timestamp stored in SQLite (UTC)."""

MAX_LOCATIONS = 400_000  # sensor_id must stay below 2**22 for the PostgreSQL hash key
_HASH_KEY_SHIFT = 4_194_304  # 2**22
_ON_TIME_DELAY_S = 300  # ingested 5 minutes after the reading ...
_ON_TIME_JITTER_S = 240  # ... plus 0-239 s
_LATE_MIN_S = 86_400  # late rows: 1 day ...
_LATE_SPAN_S = 3 * 86_400  # ... to 4 days after the reading
_SQLITE_CHUNK_ROWS = 50_000
_PG_CHUNK_ROWS = 1_000_000
_PG_FAST_LOAD_MIN_ROWS = 100_000  # below this, dropping and rebuilding indexes is not worth it
_STEADY_TICK_S = 1.0

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, kw_only=True)
class GenerateResult:
    """What one :func:`generate` call did.

    ``rows`` counts rows actually inserted (rows that already existed are not counted).
    ``start``/``end`` are the first and last reading times of the generated range in bulk
    mode, and the wall-clock start and end in steady mode (UTC, aware).
    """

    rows: int
    locations: int
    start: datetime
    end: datetime
    seconds: float


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
    """A parsed database URL."""

    kind: Literal["sqlite", "postgresql"]
    location: str  # SQLite file path, or a libpq connection URI
    display: str  # the URL without password, for messages


_PG_SCHEMES = ("postgresql", "postgres")


def _parse_url(url: str) -> _Target:
    """Parse ``sqlite:///path`` or ``postgresql://...``; ValueError (password masked) otherwise."""
    display = mask_url(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(
            f"database URL {display!r} is not a URL; use sqlite:///path/to/file.db or "
            "postgresql://user:password@host:port/dbname"
        )
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise ValueError(
                f"database URL {display!r} is not supported: SQLite URLs have three slashes and a file "
                "path, e.g. sqlite:///data/demo.db (relative) or sqlite:////tmp/demo.db (absolute)"
            )
        path = rest[1:]
        if not path or path == ":memory:" or path.endswith("/"):
            raise ValueError(
                f"database URL {display!r} has no file path; use sqlite:///path/to/file.db "
                "(an in-memory database would vanish when the generator closes it)"
            )
        return _Target("sqlite", path, display)
    base_scheme = scheme.split("+", 1)[0]  # accept SQLAlchemy-style postgresql+psycopg://
    if base_scheme in _PG_SCHEMES:
        location = f"postgresql://{rest}"
        try:
            conninfo_to_dict(location)
        except psycopg.ProgrammingError as exc:
            detail = scrub(str(exc).strip(), url)
            raise ValueError(f"database URL {display!r} is not a valid PostgreSQL URL: {detail}") from None
        return _Target("postgresql", location, display)
    raise ValueError(
        f"database URL {display!r} is not supported; use sqlite:///path/to/file.db or "
        "postgresql://user:password@host:port/dbname"
    )


# --------------------------------------------------------------------------- schema

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS locations (
        location_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        timezone TEXT NOT NULL,
        lat REAL,
        lon REAL
    )""",
    """CREATE TABLE IF NOT EXISTS sensors (
        sensor_id INTEGER PRIMARY KEY,
        location_id INTEGER NOT NULL REFERENCES locations (location_id),
        parameter TEXT NOT NULL,
        units TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS measurements (
        location_id INTEGER NOT NULL,
        sensor_id INTEGER NOT NULL,
        datetime TEXT NOT NULL,
        value REAL,
        ingested_at TEXT NOT NULL,
        PRIMARY KEY (sensor_id, datetime)
    )""",
    "CREATE INDEX IF NOT EXISTS measurements_location_datetime_idx ON measurements (location_id, datetime)",
    "CREATE INDEX IF NOT EXISTS measurements_ingested_at_idx ON measurements (ingested_at)",
)

_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS locations (
        location_id integer PRIMARY KEY,
        name text NOT NULL,
        timezone text NOT NULL,
        lat double precision,
        lon double precision
    )""",
    """CREATE TABLE IF NOT EXISTS sensors (
        sensor_id integer PRIMARY KEY,
        location_id integer NOT NULL REFERENCES locations (location_id),
        parameter text NOT NULL,
        units text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS measurements (
        location_id integer NOT NULL,
        sensor_id integer NOT NULL,
        datetime timestamptz NOT NULL,
        value double precision,
        ingested_at timestamptz NOT NULL,
        PRIMARY KEY (sensor_id, datetime)
    )""",
    "CREATE INDEX IF NOT EXISTS measurements_location_datetime_idx ON measurements (location_id, datetime)",
    "CREATE INDEX IF NOT EXISTS measurements_ingested_at_idx ON measurements (ingested_at)",
)

# Serialises concurrent CREATE TABLE IF NOT EXISTS (which can otherwise fail with a
# unique violation in pg_type when two sessions race).
_PG_SCHEMA_LOCK = 0x51C3_6A7E


@contextlib.contextmanager
def _sqlite_connect(path: str, display: str) -> Iterator[sqlite3.Connection]:
    """Open (and finally close) a SQLite connection in autocommit mode, WAL journal."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise ValueError(f"database URL {display!r}: folder {str(parent)!r} does not exist")
    conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: random-order index inserts stay in memory
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _pg_connect(conninfo: str) -> Iterator[psycopg.Connection[Any]]:
    """Open (and finally close) a psycopg connection; synchronous_commit off for speed."""
    with psycopg.connect(conninfo, connect_timeout=30) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.commit()
        yield conn


def _sqlite_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SQLITE_SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _pg_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
        for statement in _PG_SCHEMA:
            conn.execute(statement)


def create_schema(url: str) -> None:
    """Create the ``locations``, ``sensors`` and ``measurements`` tables and indexes if missing."""
    target = _parse_url(url)
    if target.kind == "sqlite":
        with _sqlite_connect(target.location, target.display) as conn:
            _sqlite_schema(conn)
    else:
        with _pg_connect(target.location) as conn:
            _pg_schema(conn)


# --------------------------------------------------------------------------- locations and sensors


def location_timezone(location_id: int) -> str:
    """The IANA time zone of generated location ``location_id`` (cycles through TIMEZONES)."""
    return _ZONES[(location_id - 1) % len(_ZONES)][0]


@dataclass(frozen=True)
class _Location:
    location_id: int
    name: str
    timezone: str
    lat: float
    lon: float
    level: float  # typical pm25 in µg/m³


@dataclass(frozen=True)
class _Sensor:
    """A sensor and the constants of its value model.

    value = (level + amp * cos(2π (local_hour - peak) / 24)) * (noise_lo + noise_span * u),
    rounded to 1/scale, with local_hour = UTC hour of day + lon_hours and ``u`` uniform in [0, 1).
    """

    sensor_id: int
    location_id: int
    ordinal: int  # position in generation order, 0-based
    parameter: str
    units: str
    level: float
    amp: float
    peak: float
    lon_hours: float
    noise_lo: float
    noise_span: float
    scale: float


def _location(location_id: int) -> _Location:
    """Deterministic location ``location_id`` (independent of the seed, so re-runs agree)."""
    zone, lat0, lon0 = _ZONES[(location_id - 1) % len(_ZONES)]
    rng = random.Random(f"sluicegate-location-{location_id}")
    lat = round(max(-89.0, min(89.0, lat0 + rng.uniform(-1.5, 1.5))), 5)
    lon = lon0 + rng.uniform(-1.5, 1.5)
    lon = round((lon + 180.0) % 360.0 - 180.0, 5)
    level = round(rng.uniform(4.0, 60.0), 2)
    return _Location(location_id, f"Site {location_id}", zone, lat, lon, level)


def _sensors(locations: Sequence[_Location]) -> list[_Sensor]:
    sensors: list[_Sensor] = []
    for loc in locations:
        lon_hours = loc.lon / 15.0
        for index, (parameter, units) in enumerate(PARAMETERS, start=1):
            if parameter == "o3":
                level, amp, peak, lo, span, scale = 0.035, 0.02, 15.0, 0.7, 0.6, 1000.0
            else:
                level = loc.level * (1.0 if parameter == "pm25" else 1.7)
                amp, peak, lo, span, scale = level * 0.35, 8.0, 0.5, 1.0, 10.0
            sensors.append(
                _Sensor(
                    sensor_id=loc.location_id * 10 + index,
                    location_id=loc.location_id,
                    ordinal=len(sensors),
                    parameter=parameter,
                    units=units,
                    level=level,
                    amp=amp,
                    peak=peak,
                    lon_hours=lon_hours,
                    noise_lo=lo,
                    noise_span=span,
                    scale=scale,
                )
            )
    return sensors


def _value(sensor: _Sensor, epoch: int, u: float) -> float:
    hour = (epoch % 86_400) / 3600.0 + sensor.lon_hours
    base = sensor.level + sensor.amp * math.cos(2.0 * math.pi * (hour - sensor.peak) / 24.0)
    return round(base * (sensor.noise_lo + sensor.noise_span * u) * sensor.scale) / sensor.scale


def _sqlite_dimensions(
    conn: sqlite3.Connection, locs: Sequence[_Location], sensors: Sequence[_Sensor]
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR IGNORE INTO locations (location_id, name, timezone, lat, lon) VALUES (?, ?, ?, ?, ?)",
            [(loc.location_id, loc.name, loc.timezone, loc.lat, loc.lon) for loc in locs],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO sensors (sensor_id, location_id, parameter, units) VALUES (?, ?, ?, ?)",
            [(s.sensor_id, s.location_id, s.parameter, s.units) for s in sensors],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _pg_dimensions(
    conn: psycopg.Connection[Any], locs: Sequence[_Location], sensors: Sequence[_Sensor]
) -> None:
    with conn.transaction():
        conn.execute(
            """INSERT INTO locations (location_id, name, timezone, lat, lon)
               SELECT * FROM unnest(%s::int[], %s::text[], %s::text[], %s::float8[], %s::float8[])
               ON CONFLICT (location_id) DO NOTHING""",
            (
                [loc.location_id for loc in locs],
                [loc.name for loc in locs],
                [loc.timezone for loc in locs],
                [loc.lat for loc in locs],
                [loc.lon for loc in locs],
            ),
        )
        conn.execute(
            """INSERT INTO sensors (sensor_id, location_id, parameter, units)
               SELECT * FROM unnest(%s::int[], %s::int[], %s::text[], %s::text[])
               ON CONFLICT (sensor_id) DO NOTHING""",
            (
                [s.sensor_id for s in sensors],
                [s.location_id for s in sensors],
                [s.parameter for s in sensors],
                [s.units for s in sensors],
            ),
        )


# --------------------------------------------------------------------------- time helpers


def _utc_epoch(value: datetime) -> int:
    """Whole UTC seconds since the epoch; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return math.floor(value.timestamp())


def _from_epoch(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _sqlite_ts(epoch: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` for whole UTC seconds ``epoch``."""
    return time.strftime(SQLITE_TS_FORMAT, time.gmtime(epoch))


def _ingested_epoch(reading: int, late: bool, u_delay: float, now: int) -> int:
    """When a reading taken at ``reading`` arrives: minutes later, or 1-4 days if late; never after now."""
    if late:
        arrival = reading + _LATE_MIN_S + math.floor(u_delay * _LATE_SPAN_S)
    else:
        arrival = reading + _ON_TIME_DELAY_S + math.floor(u_delay * _ON_TIME_JITTER_S)
    return min(arrival, max(now, reading))


# --------------------------------------------------------------------------- bulk mode


@dataclass(frozen=True)
class _BulkPlan:
    """Readings at ``end - k * step`` for k in 0..full_slots-1 for all sensors, plus slot
    ``k = full_slots`` for the first ``remainder`` sensors (so the newest rows are kept)."""

    end: int  # epoch of the newest reading
    step: int  # seconds between readings
    full_slots: int
    remainder: int

    @property
    def slots(self) -> int:
        return self.full_slots + (1 if self.remainder else 0)

    @property
    def start(self) -> int:
        return self.end - max(self.slots - 1, 0) * self.step


def _bulk_plan(
    *,
    rows: int | None,
    days: int | None,
    n_sensors: int,
    end: datetime | None,
    interval_minutes: int,
    now: int,
) -> _BulkPlan:
    step = interval_minutes * 60
    end_epoch = _utc_epoch(end) if end is not None else now
    end_epoch -= end_epoch % step  # align to the interval in UTC
    if days is not None:
        slots = days * 86_400 // step
        total = slots * n_sensors if rows is None else min(rows, slots * n_sensors)
    else:
        assert rows is not None
        total = rows
    return _BulkPlan(end_epoch, step, total // n_sensors, total % n_sensors)


_SqliteRow = tuple[int, int, str, float, str]


class _SqliteTimestamps:
    """Formats epochs as ``YYYY-MM-DDTHH:MM:SSZ``, caching (readings and on-time arrivals repeat)."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, epoch: int) -> str:
        text = self._cache.get(epoch)
        if text is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            text = self._cache[epoch] = _sqlite_ts(epoch)
        return text


def _sqlite_chunk(
    plan: _BulkPlan,
    sensors: Sequence[_Sensor],
    slots: range,
    *,
    seed: int,
    late_fraction: float,
    now: int,
    ts: _SqliteTimestamps,
    late_rows: list[_SqliteRow],
) -> list[_SqliteRow]:
    """The on-time rows of ``slots`` grouped sensor by sensor (as if each station uploaded its
    batch); late rows are appended to ``late_rows`` instead.

    The random draws of a row depend only on ``(seed, reading time, sensor position)``.
    """
    per_sensor: list[list[_SqliteRow]] = [[] for _ in sensors]
    for k in slots:
        epoch = plan.end - k * plan.step
        reading = ts(epoch)
        draw = random.Random(f"{seed}:{epoch}").random
        count = len(sensors) if k < plan.full_slots else plan.remainder
        for sensor, bucket in zip(sensors[:count], per_sensor, strict=False):
            u_value, u_late, u_delay = draw(), draw(), draw()
            late = u_late < late_fraction
            row = (
                sensor.location_id,
                sensor.sensor_id,
                reading,
                _value(sensor, epoch, u_value),
                ts(_ingested_epoch(epoch, late, u_delay, now)),
            )
            (late_rows if late else bucket).append(row)
    return [row for bucket in per_sensor for row in bucket]


def _sqlite_bulk(
    conn: sqlite3.Connection,
    plan: _BulkPlan,
    sensors: Sequence[_Sensor],
    *,
    seed: int,
    late_fraction: float,
    now: int,
    progress: ProgressCallback | None,
) -> int:
    """Insert the planned rows in one transaction; return how many were new.

    Chunks of about 50,000 rows, oldest first, each sensor by sensor; then all late rows,
    shuffled. So the insertion order is neither chronological nor ``ingested_at`` order.
    """
    insert = (
        "INSERT OR IGNORE INTO measurements (location_id, sensor_id, datetime, value, ingested_at) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    slots_per_chunk = max(1, _SQLITE_CHUNK_ROWS // len(sensors))
    late_rows: list[_SqliteRow] = []
    ts = _SqliteTimestamps()
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted = 0  # rowcount, not total_changes: capture triggers' own inserts must not count
        for k_hi in range(plan.slots - 1, -1, -slots_per_chunk):
            slots = range(k_hi, max(k_hi - slots_per_chunk, -1), -1)
            batch = _sqlite_chunk(
                plan,
                sensors,
                slots,
                seed=seed,
                late_fraction=late_fraction,
                now=now,
                ts=ts,
                late_rows=late_rows,
            )
            inserted += conn.executemany(insert, batch).rowcount
            if progress is not None:
                progress(inserted)
        random.Random(f"{seed}:late").shuffle(late_rows)
        inserted += conn.executemany(insert, late_rows).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if progress is not None:
        progress(inserted)
    conn.execute("PRAGMA optimize")
    return inserted


def _pg_uniform(draw: int) -> str:
    """SQL for a uniform [0, 1) float from the row's hash key, independent per ``draw``."""
    return (
        f"((hashint8extended(g.ep * {_HASH_KEY_SHIFT} + s.sensor_id, %(seed)s * 4 + {draw})"
        " & 4503599627370495)::float8 / 4503599627370496.0)"
    )


# Rows go into the table in time order, all sensors of a reading time together, as an ingest
# writes them (late rows after the on-time ones). The ORDER BY makes that the physical order at
# every size: without it the planner put the sensors or the times on the outside of the join
# depending on their counts (sensor by sensor at 1M rows, time by time at 3M), and the unsorted
# benchmark limits (COPY | pigz) measured differently compressible data at different sizes.
_PG_BULK_SQL = f"""
INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at)
SELECT location_id, sensor_id, to_timestamp(ep),
       round((level + amp * cos(radians(15.0::float8 * (mod(ep, 86400)::float8 / 3600.0::float8
                                                        + lon_hours - peak))))
             * (noise_lo + noise_span * u_value) * scale) / scale,
       to_timestamp(LEAST(
           ep + CASE WHEN u_late < %(late_fraction)s
                     THEN {_LATE_MIN_S} + floor(u_delay * {_LATE_SPAN_S})::bigint
                     ELSE {_ON_TIME_DELAY_S} + floor(u_delay * {_ON_TIME_JITTER_S})::bigint END,
           GREATEST(%(now)s, ep)))
FROM (
    SELECT s.*, g.ep,
           {_pg_uniform(0)} AS u_value,
           {_pg_uniform(1)} AS u_late,
           {_pg_uniform(2)} AS u_delay
    FROM (SELECT k, %(end)s - k * %(step)s AS ep
          FROM generate_series(%(k_lo)s::bigint, %(k_hi)s::bigint) AS k) AS g
    CROSS JOIN unnest(%(sensor_id)s::int[], %(location_id)s::int[], %(ordinal)s::int[],
                      %(level)s::float8[], %(amp)s::float8[], %(peak)s::float8[], %(lon_hours)s::float8[],
                      %(noise_lo)s::float8[], %(noise_span)s::float8[], %(scale)s::float8[])
         AS s(sensor_id, location_id, ordinal, level, amp, peak, lon_hours, noise_lo, noise_span, scale)
    WHERE g.k < %(full_slots)s OR s.ordinal < %(remainder)s
) AS r
WHERE (u_late < %(late_fraction)s) = %(late_pass)s
ORDER BY ep, sensor_id
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class _PgIndexes:
    """Unique/primary-key constraints and plain indexes of ``measurements``, to drop and rebuild."""

    constraints: list[tuple[str, str]]  # (name, pg_get_constraintdef)
    indexes: list[tuple[str, str]]  # (regclass text, pg_get_indexdef)


def _pg_fast_load_indexes(conn: psycopg.Connection[Any]) -> _PgIndexes | None:
    """Inside a transaction: lock ``measurements``; if it is empty and no foreign key points at
    it, return its indexes (to drop before and rebuild after the load), else None."""
    conn.execute("LOCK TABLE measurements IN ACCESS EXCLUSIVE MODE")
    row = conn.execute(
        """SELECT NOT EXISTS (SELECT FROM measurements)
              AND NOT EXISTS (SELECT FROM pg_constraint WHERE confrelid = 'measurements'::regclass)"""
    ).fetchone()
    if row is None or not row[0]:
        return None
    constraints = conn.execute(
        """SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = 'measurements'::regclass AND contype IN ('p', 'u') ORDER BY conname"""
    ).fetchall()
    indexes = conn.execute(
        """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index AS i
           WHERE i.indrelid = 'measurements'::regclass
             AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
           ORDER BY 1"""
    ).fetchall()
    return _PgIndexes([(str(n), str(d)) for n, d in constraints], [(str(n), str(d)) for n, d in indexes])


def _pg_chunks(
    conn: psycopg.Connection[Any],
    plan: _BulkPlan,
    params: dict[str, Any],
    *,
    late_fraction: float,
    own_transactions: bool,
    progress: ProgressCallback | None,
) -> int:
    """Run the bulk INSERT over the plan in chunks: on-time rows oldest chunk first, then the
    late rows (in bigger chunks, as only ``late_fraction`` of each is inserted)."""
    slots_per_chunk = max(1, _PG_CHUNK_ROWS // len(params["sensor_id"]))
    inserted = 0
    for late_pass in [False, True] if late_fraction > 0 else [False]:
        per_chunk = slots_per_chunk
        if late_pass:
            per_chunk = max(1, int(slots_per_chunk / max(late_fraction, 0.01)))
        for k_hi in range(plan.slots - 1, -1, -per_chunk):
            k_lo = max(k_hi - per_chunk + 1, 0)
            with (
                conn.transaction() if own_transactions else contextlib.nullcontext(),
                conn.cursor() as cur,
            ):
                cur.execute(_PG_BULK_SQL, {**params, "k_lo": k_lo, "k_hi": k_hi, "late_pass": late_pass})
                inserted += max(cur.rowcount, 0)
            if progress is not None:
                progress(inserted)
    return inserted


def _pg_bulk(
    conn: psycopg.Connection[Any],
    plan: _BulkPlan,
    sensors: Sequence[_Sensor],
    *,
    seed: int,
    late_fraction: float,
    now: int,
    progress: ProgressCallback | None,
) -> int:
    """Generate the planned rows server-side; return how many were new.

    Into an empty ``measurements`` table (the benchmark case) everything is loaded in one
    transaction holding an exclusive lock, with the primary key and indexes dropped first and
    rebuilt at the end (several times faster than maintaining them row by row). Otherwise
    rows go in about a million per transaction, duplicates skipped by the primary key.
    """
    params: dict[str, Any] = {
        "seed": seed,
        "late_fraction": late_fraction,
        "now": now,
        "end": plan.end,
        "step": plan.step,
        "full_slots": plan.full_slots,
        "remainder": plan.remainder,
        "sensor_id": [s.sensor_id for s in sensors],
        "location_id": [s.location_id for s in sensors],
        "ordinal": [s.ordinal for s in sensors],
        "level": [s.level for s in sensors],
        "amp": [s.amp for s in sensors],
        "peak": [s.peak for s in sensors],
        "lon_hours": [s.lon_hours for s in sensors],
        "noise_lo": [s.noise_lo for s in sensors],
        "noise_span": [s.noise_span for s in sensors],
        "scale": [s.scale for s in sensors],
    }
    inserted: int | None = None
    if plan.full_slots * len(sensors) + plan.remainder >= _PG_FAST_LOAD_MIN_ROWS:
        inserted = _pg_fast_load(conn, plan, params, late_fraction=late_fraction, progress=progress)
    if inserted is None:
        inserted = _pg_chunks(
            conn, plan, params, late_fraction=late_fraction, own_transactions=True, progress=progress
        )
    conn.execute("ANALYZE locations, sensors, measurements")
    conn.commit()
    return inserted


def _pg_fast_load(
    conn: psycopg.Connection[Any],
    plan: _BulkPlan,
    params: dict[str, Any],
    *,
    late_fraction: float,
    progress: ProgressCallback | None,
) -> int | None:
    """Load an empty table in one transaction, keys and indexes dropped, then rebuilt; None if not empty."""
    with conn.transaction():
        saved = _pg_fast_load_indexes(conn)
        if saved is None:
            return None
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        conn.execute("SET LOCAL work_mem = '256MB'")  # each chunk's ORDER BY sorts in memory
        for name, _ in saved.constraints:
            conn.execute(sql.SQL("ALTER TABLE measurements DROP CONSTRAINT {}").format(sql.Identifier(name)))
        for qualified, _ in saved.indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(qualified)))
        inserted = _pg_chunks(
            conn, plan, params, late_fraction=late_fraction, own_transactions=False, progress=progress
        )
        for name, definition in saved.constraints:
            conn.execute(
                sql.SQL("ALTER TABLE measurements ADD CONSTRAINT {} {}").format(
                    sql.Identifier(name), sql.SQL(definition)
                )
            )
        for _, definition in saved.indexes:
            conn.execute(sql.SQL(definition))
        return inserted


# --------------------------------------------------------------------------- steady mode

_Row = tuple[int, int, int, float, int]  # location_id, sensor_id, datetime epoch, value, ingested_at epoch


class _SteadySource:
    """Produces steady-mode rows: round-robin over the sensors, datetime = now, some late.

    On-time readings are unique per sensor and second and never in the future.
    """

    def __init__(self, sensors: Sequence[_Sensor], *, seed: int, late_fraction: float) -> None:
        self._sensors = sensors
        self._rng = random.Random(f"{seed}:steady")
        self._late_fraction = late_fraction
        self._next = self._rng.randrange(len(sensors))
        self._last: dict[int, int] = {}

    def rows(self, count: int, now: int) -> list[_Row]:
        out: list[_Row] = []
        for _ in range(count):
            sensor = self._sensors[self._next]
            self._next = (self._next + 1) % len(self._sensors)
            u_value, u_late, u_delay = self._rng.random(), self._rng.random(), self._rng.random()
            if u_late < self._late_fraction:
                reading = now - _LATE_MIN_S - math.floor(u_delay * _LATE_SPAN_S)
            elif self._last.get(sensor.sensor_id, now - 1) < now:
                reading = self._last[sensor.sensor_id] = now
            else:
                # Faster than one reading per sensor and second: a second of the past hour
                # instead (never in the future; a rare duplicate is skipped by the primary key).
                reading = now - 1 - math.floor(u_delay * 3600)
            out.append((sensor.location_id, sensor.sensor_id, reading, _value(sensor, reading, u_value), now))
        return out


def _sqlite_insert_rows(conn: sqlite3.Connection, rows: Sequence[_Row]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted = conn.executemany(
            "INSERT OR IGNORE INTO measurements (location_id, sensor_id, datetime, value, ingested_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(loc, sid, _sqlite_ts(dt), value, _sqlite_ts(ing)) for loc, sid, dt, value, ing in rows],
        ).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return inserted


def _pg_insert_rows(conn: psycopg.Connection[Any], rows: Sequence[_Row]) -> int:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at)
               SELECT l, s, to_timestamp(d), v, to_timestamp(i)
               FROM unnest(%s::int[], %s::int[], %s::bigint[], %s::float8[], %s::bigint[]) AS r(l, s, d, v, i)
               ON CONFLICT DO NOTHING""",
            tuple(list(column) for column in zip(*rows, strict=True)),
        )
        return max(cur.rowcount, 0)


def _steady(
    insert: Callable[[Sequence[_Row]], int],
    source: _SteadySource,
    *,
    rate_per_min: float,
    duration_s: float,
    max_rows: int | None,
    progress: ProgressCallback | None,
) -> int:
    """Insert ``rate_per_min`` rows a minute, one batch per tick, for ``duration_s`` seconds."""
    started = time.monotonic()
    produced = 0
    inserted = 0
    tick = 0
    while True:
        elapsed = min(time.monotonic() - started, duration_s)
        due = math.floor(rate_per_min * elapsed / 60.0 + 1e-9) - produced
        if max_rows is not None:
            due = min(due, max_rows - produced)
        if due > 0:
            now = math.floor(time.time())
            inserted += insert(source.rows(due, now))
            produced += due
            if progress is not None:
                progress(inserted)
        if elapsed >= duration_s or (max_rows is not None and produced >= max_rows):
            return inserted
        tick += 1
        wake = started + min(tick * _STEADY_TICK_S, duration_s)
        time.sleep(max(0.0, wake - time.monotonic()))


# --------------------------------------------------------------------------- entry point


def _validate(
    *,
    rows: int | None,
    rate_per_min: float | None,
    duration_s: float | None,
    locations: int,
    days: int | None,
    late_fraction: float,
    interval_minutes: int,
) -> None:
    if not 1 <= locations <= MAX_LOCATIONS:
        raise ValueError(f"locations must be between 1 and {MAX_LOCATIONS}, got {locations}")
    if rows is not None and rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if days is not None and days < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    if not 0.0 <= late_fraction <= 1.0:
        raise ValueError(f"late_fraction must be between 0 and 1, got {late_fraction}")
    if interval_minutes < 1:
        raise ValueError(f"interval_minutes must be >= 1, got {interval_minutes}")
    if rate_per_min is not None:
        if not rate_per_min > 0:
            raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
        if duration_s is None and rows is None:
            raise ValueError("steady mode (rate_per_min=) needs duration_s= (or rows= to stop after)")
        if duration_s is not None and duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    elif duration_s is not None:
        raise ValueError("duration_s= is for steady mode; give rate_per_min= too")
    elif rows is None and days is None:
        raise ValueError("give rows= or days= (bulk mode) or rate_per_min= and duration_s= (steady mode)")


@dataclass(frozen=True)
class _Writer:
    """Where generated rows go: row batches (steady mode) or a planned bulk load."""

    insert: Callable[[Sequence[_Row]], int]
    bulk: Callable[..., int]


@contextlib.contextmanager
def _writer(target: _Target, locs: Sequence[Any], sensors: Sequence[_Sensor]) -> Iterator[_Writer]:
    """Connect to ``target``, create the schema, upsert locations and sensors; yield its writer."""
    if target.kind == "sqlite":
        with _sqlite_connect(target.location, target.display) as lite:
            _sqlite_schema(lite)
            _sqlite_dimensions(lite, locs, sensors)
            yield _Writer(functools.partial(_sqlite_insert_rows, lite), functools.partial(_sqlite_bulk, lite))
        return
    with _pg_connect(target.location) as pg:
        _pg_schema(pg)
        _pg_dimensions(pg, locs, sensors)
        yield _Writer(functools.partial(_pg_insert_rows, pg), functools.partial(_pg_bulk, pg))


def generate(
    url: str,
    *,
    rows: int | None = None,
    rate_per_min: float | None = None,
    duration_s: float | None = None,
    locations: int = 300,
    days: int | None = None,
    end: datetime | None = None,
    seed: int = 0,
    late_fraction: float = 0.02,
    interval_minutes: int = 60,
    progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Create the schema if missing, upsert ``locations`` locations (3 sensors each), add measurements.

    Bulk mode (``rate_per_min`` is None): the newest ``rows`` readings at ``interval_minutes``
    spacing ending at ``end`` (default now; aligned down to the interval in UTC; naive
    datetimes are UTC). ``days`` sets the span instead (``days * 24h / interval`` readings per
    sensor), still capped at ``rows`` if given.

    Steady mode (``rate_per_min`` given): about ``rate_per_min`` rows a minute, for
    ``duration_s`` seconds (and at most ``rows`` rows if given), datetime and ingested_at = now.

    ``progress`` is called with the running count of inserted rows after each batch.
    Raises ValueError for a bad URL (password masked) or bad arguments.
    """
    _validate(rows=rows, rate_per_min=rate_per_min, duration_s=duration_s, locations=locations, days=days,
              late_fraction=late_fraction, interval_minutes=interval_minutes)  # fmt: skip
    target = _parse_url(url)
    started = time.perf_counter()
    locs = [_location(i) for i in range(1, locations + 1)]
    sensors = _sensors(locs)
    now = math.floor(time.time())

    with _writer(target, locs, sensors) as writer:
        if rate_per_min is not None:
            source = _SteadySource(sensors, seed=seed, late_fraction=late_fraction)
            inserted = _steady(
                writer.insert,
                source,
                rate_per_min=rate_per_min,
                duration_s=duration_s if duration_s is not None else math.inf,
                max_rows=rows,
                progress=progress,
            )
            wall_end = _from_epoch(math.floor(time.time()))
            seconds = time.perf_counter() - started
            return GenerateResult(
                rows=inserted, locations=locations, start=_from_epoch(now), end=wall_end, seconds=seconds
            )
        plan = _bulk_plan(
            rows=rows, days=days, n_sensors=len(sensors), end=end, interval_minutes=interval_minutes, now=now
        )
        inserted = 0
        if plan.slots:
            inserted = writer.bulk(plan, sensors, seed=seed, late_fraction=late_fraction, now=now,
                                   progress=progress)  # fmt: skip
        return GenerateResult(rows=inserted, locations=locations, start=_from_epoch(plan.start),
                              end=_from_epoch(plan.end), seconds=time.perf_counter() - started)  # fmt: skip
