"""Partitions of partitioned tasks: identity, time windows in the partition's own zone, paths.

A partition is identified by its key values in declared order, the time key last. The time
key is the *local* period: a date for ``grain = "day"`` and an aware local datetime for
``grain = "hour"`` (so the two 01:00 hours of a DST fall-back night stay apart). Its window
is computed with :mod:`zoneinfo`, so a 23- or 25-hour day is exactly as long as it really is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

from . import paths
from .exceptions import BadPartitionValue, ConfigError, UsageError
from .specs import TimeSpec

UTC = dt.UTC
BIN_SECONDS = 900  # every zone in use today has an offset that is a multiple of 15 minutes
_EPSILON = dt.timedelta(microseconds=1)
# The times whose partitions can be named and windowed in any zone: a local day, its window and
# the next midnight must stay within Python's years 1 to 9999 (capture sets aside changes outside).
EARLIEST = dt.datetime(1, 1, 3, tzinfo=UTC)
LATEST = dt.datetime(9999, 12, 29, tzinfo=UTC)


def in_range(value: dt.datetime, what: str) -> dt.datetime:
    """``value`` (naive: UTC) as an aware UTC time within EARLIEST..LATEST; raises UsageError
    naming ``what`` otherwise (a time near year 1 or 9999 whose offset takes it past them
    cannot be converted, named in a path, or windowed)."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise UsageError(
            f"{what} {value.isoformat()} is outside the times sluicegate can export "
            f"({EARLIEST.date().isoformat()} to {LATEST.date().isoformat()} UTC); give a time between them"
        )
    return utc


class PartitionKeys(Protocol):
    """What these functions need of a partitioned task: its name, keys, time key and path."""

    @property
    def name(self) -> str: ...
    @property
    def keys(self) -> tuple[str, ...]: ...
    @property
    def time(self) -> TimeSpec | None: ...
    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def key_names(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One unit of work: key values, the zone, and the UTC window the time key spans."""

    task: str
    values: tuple[Any, ...]
    zone: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @property
    def pkey(self) -> str:
        """Canonical text identity, unique per task."""
        return canonical_key(self.values)


def canonical_key(values: Sequence[Any]) -> str:
    """Return the canonical JSON text for key ``values`` (dates as ISO strings)."""
    return json.dumps([_jsonable(v) for v in values], separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal | float):
        value = plain_key(value)
        return str(value) if isinstance(value, Decimal) else value
    return value


def plain_key(value: Any) -> Any:
    """A key value as partitions hold it, one value for numbers SQL calls equal: a whole number
    (7, 7.0, a ``numeric`` 7.00) is the int, another ``Decimal`` (PostgreSQL ``numeric``, a
    DECIMAL) the float that is exactly it, the way the trigger inbox's JSON gives it back. One
    that no float holds stays a ``Decimal``, which the fold sets aside: as a float it was rounded
    onto another key (0.1000000000000000001 onto 0.1) or onto no row at all, and the partition
    was recorded exported with no file."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:  # 7.0 and 7: one partition
        return int(value)
    if isinstance(value, Decimal) and value.is_finite():
        if value == value.to_integral_value() and abs(value) < 2**63:  # beyond: drivers bind no int
            return int(value)
        if Decimal(repr(float(value))) == value:
            return float(value)
    return value


def json_number(text: str) -> Any:
    """``json.loads``'s ``parse_float``: a JSON number with a fraction, as :func:`plain_key` gives it."""
    return plain_key(Decimal(text))


@lru_cache(maxsize=512)
def zone_of(name: str) -> zoneinfo.ZoneInfo:
    """Return the ZoneInfo for ``name`` or raise a terminal error naming it."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadPartitionValue(f"time zone {name!r} is not an IANA zone name; fix the zone data") from None


def period_of(instant: dt.datetime, time: TimeSpec, zone: str) -> dt.date | dt.datetime:
    """Return the local period (date or aware hour start) that ``instant`` belongs to.

    With ``boundary = "end"`` (OpenAQ's time-ending convention) an instant exactly on a
    boundary belongs to the period that ends there.
    """
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    if time.boundary == "end":
        instant = instant - _EPSILON
    local = instant.astimezone(zone_of(zone))
    if time.grain == "day":
        return local.date()
    return hour_of(instant, zone_of(zone))


def window_of(period: dt.date | dt.datetime, time: TimeSpec, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """Return the UTC ``(start, end)`` of a local period; DST-safe."""
    if time.grain == "day":
        return _day_window(period if not isinstance(period, dt.datetime) else period.date(), zone)
    tz = zone_of(zone)
    assert isinstance(period, dt.datetime)
    start_utc = period.astimezone(UTC)
    return start_utc, _next_hour(start_utc, tz)


@lru_cache(maxsize=4096)
def _day_window(day: dt.date, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """The UTC window of a local day: the same for a batch's locations in one zone, so made once
    (~4 µs a claim, bench/README.md)."""
    tz = zone_of(zone)
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


QUARTER = dt.timedelta(minutes=15)  # every zone's offset since 1980 is a whole number of quarter hours
_HOUR = dt.timedelta(hours=1)


def _whole_hour(instant: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
    """``instant`` as local time when the zone's clock reads a whole hour then."""
    local = instant.astimezone(tz)
    return local if local.minute == local.second == local.microsecond == 0 else None


def hour_of(instant: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The local hour ``instant`` is in: the last instant at or before it at which the zone's
    clock read a whole hour, as local time (its offset tells a fall-back night's hours apart).

    Usually the local time with minutes cut off. Where the clocks move by 30 or 45 minutes
    (Australia/Lord_Howe, Pacific/Chatham) an hour around the change lasts 30 to 105 minutes, and
    cutting the minutes off gave an hour whose window did not hold ``instant``: rows in no file.
    """
    local = instant.astimezone(tz)
    cut = local.replace(minute=0, second=0, microsecond=0)
    try:
        if (instant - 2 * _HOUR).astimezone(tz).utcoffset() == local.utcoffset():
            return cut  # no clock change in the last two hours
        utc = instant.astimezone(UTC)
        step = utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)
        for _ in range(12):
            if (found := _whole_hour(step, tz)) is not None:
                return found
            step -= QUARTER
    except OverflowError:  # at the ends of Python's years
        pass
    return cut  # an offset of local mean time, off the quarter hours


def _next_hour(start: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The UTC start of the local hour after the one starting at ``start`` (see :func:`hour_of`)."""
    try:
        if (start + _HOUR).astimezone(tz).utcoffset() == start.astimezone(tz).utcoffset():
            return start + _HOUR
        step = start + QUARTER
        for _ in range(12):
            if _whole_hour(step, tz) is not None:
                return step
            step += QUARTER
    except OverflowError:
        pass
    return start + _HOUR


def parse_period(text: str, time: TimeSpec, zone: str, *, strict: bool = False) -> dt.date | dt.datetime:
    """Parse a period written by a user (``strict``: a day is a date and nothing more, where
    ``2024-05-03T10:00`` or ``2024-05-03xyz`` marked the 3rd) or stored in the ledger."""
    try:
        if time.grain == "day":
            return dt.date.fromisoformat(text if strict else text[:10])
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{time.name}={text!r} is not a valid {time.grain}; use YYYY-MM-DD"
            + ("" if time.grain == "day" else "THH:00 (local time, optional offset)")
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone_of(zone))
    try:
        return hour_of(value.astimezone(UTC), zone_of(zone))  # the hour that holds it (see hour_of)
    except OverflowError:  # outside Python's years in UTC: exportable() says so
        return value.astimezone(zone_of(zone)).replace(minute=0, second=0, microsecond=0)


def exportable(period: dt.date | dt.datetime, time: TimeSpec) -> dt.date | dt.datetime:
    """``period`` (a user's), when its window fits in Python's years; a UsageError otherwise
    (``mark`` of 9999-12-31 was an OverflowError with a traceback)."""
    first, last = (EARLIEST, LATEST) if isinstance(period, dt.datetime) else (EARLIEST.date(), LATEST.date())
    if not first <= period <= last:
        raise UsageError(
            f"{time.name}={period.isoformat()!r} is outside the periods sluicegate can export "
            f"({EARLIEST.date().isoformat()} to {LATEST.date().isoformat()}); give a {time.grain} between"
        )
    return period


def make_partition(task: PartitionKeys, keys: Sequence[Any], period: Any, zone: str | None) -> Partition:
    """Build a :class:`Partition` from non-time key values and an optional local period."""
    if task.time is None:
        return Partition(task=task.name, values=tuple(keys))
    assert zone is not None
    start, end = window_of(period, task.time, zone)
    return Partition(task=task.name, values=(*keys, period), zone=zone, start=start, end=end)


def restore_partition(task: PartitionKeys, values: Sequence[Any], zone: str | None) -> Partition:
    """Rebuild a partition from ledger values (the time key stored as ISO text)."""
    if task.time is None:
        return Partition(task=task.name, values=tuple(values))
    assert zone is not None
    period = parse_period(str(values[-1]), task.time, zone)
    return make_partition(task, values[:-1], period, zone)


def superseded(
    task: PartitionKeys, values: Sequence[Any], part: Partition, start: dt.datetime, end: dt.datetime
) -> dict[str, Partition]:
    """The marks that retire a recorded hour (``values``, window ``start`` to ``end``) whose key
    names another hour in its zone now (``part``'s; reexport re-cuts its rows into that zone's
    hours): the hour itself, in the new zone, whose export then writes no rows and deletes its
    file (see :func:`file_of`), and the new zone's hour of the same wall clock, whose
    export replaces a file of the same name. None for a day, or an hour of the same key."""
    pkey = canonical_key(values)
    if task.time is None or task.time.grain != "hour" or part.pkey == pkey or part.zone is None:
        return {}
    old = Partition(task=task.name, values=tuple(values), zone=part.zone, start=start, end=end)
    twin = _wall_twin(task, values, part.zone)
    return {pkey: old, twin.pkey: twin}


def _wall_twin(task: PartitionKeys, values: Sequence[Any], zone: str) -> Partition:
    """The hour of ``zone`` whose clock reads as the stored hour ``values[-1]`` does."""
    assert task.time is not None
    wall = dt.datetime.fromisoformat(str(values[-1])).replace(tzinfo=None).isoformat()
    return make_partition(task, values[:-1], parse_period(wall, task.time, zone), zone)


def file_of(
    task: PartitionKeys, values: Sequence[Any], part: Partition, claim: Any
) -> tuple[Partition, str, Any]:
    """``(partition, path, previous path)`` of a ``claim`` (a ledger Claim) restored as ``part``.

    An hour retired by :func:`superseded` (its time key names another hour in its zone now; the
    other keys may just be in another order) gets an empty window, so its export writes no rows
    and deletes its file; it has no path when it has no file, or when the hour of its zone with
    the same wall clock is written there (that export replaces it)."""
    hour = task.time is not None and task.time.grain == "hour" and "T" in str(values[-1])  # a stored hour
    if not hour or part.zone is None or canonical_key(part.values[-1:]) == canonical_key(values[-1:]):
        path = render_path(task, part.values)
        # An earlier try that did not commit may have placed and listed a file there, unrecorded.
        return part, path, claim.prev_path or (path if claim.attempts else None)
    empty, recorded = dataclasses.replace(part, end=part.start), claim.prev_path
    if not recorded or render_path(task, _wall_twin(task, values, part.zone).values) == recorded:
        return empty, "", None
    return empty, recorded, recorded


def same_keys(task: PartitionKeys, keys: Mapping[str, Any], pkey: str, zone: str | None = None) -> None:
    """Raise BadPartitionValue when a partition was recorded with other keys than the task has
    now (a key added or removed since), or at another ``[time] grain`` (a day read as the hour
    at its midnight held that hour's rows only): it can no longer be restored or exported."""
    if set(keys) != set(task.key_names):
        raise BadPartitionValue(
            f"partition {pkey} was recorded with the keys {', '.join(keys)} and task {task.name!r} "
            f"now has {', '.join(task.key_names)}: it can no longer be exported"
        )
    if task.time is not None and (grain := _grain_of(keys[task.time.name])) != task.time.grain:
        start = dt.datetime.combine(dt.date.fromisoformat(str(keys[task.time.name])[:10]), dt.time())
        start, end = (d.replace(tzinfo=zone_of(zone or "UTC")) for d in (start, start + dt.timedelta(days=1)))
        end += dt.timedelta(seconds=1 if task.time.boundary == "end" else 0)  # a row at the end is in it
        raise BadPartitionValue(
            f"partition {pkey} was recorded as {'a day' if grain == 'day' else 'an hour'}, and task "
            f'{task.name!r} now has [time] grain = "{task.time.grain}": it can no longer be exported; run '
            f"'sluicegate backfill {task.name} --time-min {start.isoformat()} --time-max {end.isoformat()}'"
            f" to mark its rows' {task.time.grain}s"
        )


def recorded_alike(task: PartitionKeys, keys: Mapping[str, Any]) -> bool:
    """Whether a partition was recorded with the task's keys and ``[time] grain`` (see same_keys)."""
    return set(keys) == set(task.key_names) and (
        task.time is None or _grain_of(keys[task.time.name]) == task.time.grain
    )


def _grain_of(value: Any) -> str:
    """The grain a time key's stored value was recorded at: a date (10 characters) or an hour."""
    return "day" if len(str(value)) <= 10 else "hour"


def check_key_order(task: PartitionKeys, store: Any, where: str) -> None:
    """ConfigError when the ledger's first partitions name their keys in another order than ``keys``."""
    for pkey, named in store.key_samples(task, 20):
        ids = json.loads(pkey)
        values = [json.dumps(named.get(k)) for k in task.keys]
        moved = set(named) == set(task.key_names) and ids != [named[k] for k in task.key_names]
        if moved and len(set(values)) == len(values):  # distinct values tell each key's place
            order = [task.keys[values.index(json.dumps(v))] for v in ids[: len(task.keys)]]
            raise ConfigError(
                f"{where} keys: the ledger's partitions of task {task.name!r} name their keys in the"
                f" order {order}, not {list(task.keys)}; put keys back in that order (it makes a "
                "partition's id: in another order each change is a new partition of the same file)"
            )


def render_path(task: PartitionKeys, values: Sequence[Any]) -> str:
    """Render a partitioned task's path for partition ``values``; never a path outside the destination."""
    named: dict[str, Any] = dict(zip(task.key_names, values, strict=True))
    keys = tuple(named)
    named.update(format=task.format, ext=task.format, task=task.name)
    return paths.render(task.path, named, checked=keys)


def sample_values(task: PartitionKeys) -> tuple[Any, ...]:
    """Key values of a made-up partition, to try a path template with."""
    values: list[Any] = [1 for _ in task.keys]
    if task.time:
        values.append(
            dt.date(2024, 1, 31) if task.time.grain == "day" else dt.datetime(2024, 1, 31, 13, tzinfo=UTC)
        )
    return tuple(values)


# Key values tried in pairs: a template that cuts or indexes a key ({k[0]}, {k:.2}) names both
# values of a pair alike.
# Values that differ only at their end: a key cut by a format spec ({k:.8}, {k:.3e}) shows.
_KEY_PAIRS = ((1, 2), (10, 11), (123456789012, 123456789013), ("ab1", "ab2"), ("a", "b"),
              ("n" * 47 + "1", "n" * 47 + "2"))  # fmt: skip
_DST_ZONE = "America/New_York"  # for hours in zones read per partition: one with DST


def check_distinct_paths(task: PartitionKeys, where: str) -> None:
    """Raise ConfigError when the path template names two partitions alike.

    Tried: consecutive periods over 13 months (days, or hours around a DST change and every
    midnight), and pairs of values of each key. A template such as ``{k}/{day:%Y-%m}`` passed
    the check that every key is used, and then a month's partitions all wrote one file, each
    overwriting the last while the ledger recorded every one as exported.
    """
    base = _renderable_sample(task, where)
    for i, name in enumerate(task.key_names[: len(task.keys)]):
        for a, b in _KEY_PAIRS:
            paths_ = _try_render(task, base, i, (a, b))
            if paths_ is not None and paths_[0] == paths_[1]:
                raise ConfigError(
                    f"{where}: partitions with {name}={a!r} and {name}={b!r} would share the file "
                    f"{paths_[0]!r}; use the whole {{{name}}} in the template"
                )
    if task.time is None:
        return
    seen: dict[str, Any] = {}
    for period in _sample_periods(task.time):
        path = _try_render(task, base, len(base) - 1, (period,))
        if path is None:
            continue
        if path[0] in seen:
            raise ConfigError(
                f"{where}: the {task.time.name}s {_shown_period(seen[path[0]])} and {_shown_period(period)} "
                f"would share the file {path[0]!r}; name every {task.time.grain} apart, "
                + ("e.g. {day:%Y-%m-%d}" if task.time.grain == "day" else "e.g. {hour:%Y-%m-%dT%H%z}")
            )
        seen[path[0]] = period


def _renderable_sample(task: PartitionKeys, where: str) -> list[Any]:
    """Sample values the template renders: keys as integers, else as text (a key's type is the
    select's, unknown at load: ``{k:.6}`` takes only text, ``{k:04d}`` only integers)."""
    ints = list(sample_values(task))
    texts = ["x" if i < len(task.keys) else v for i, v in enumerate(ints)]
    try:
        render_path(task, ints)
        return ints
    except BadPartitionValue as exc:
        if _try_render(task, texts, 0, (texts[0],) if texts else ()) is not None:
            return texts
        raise ConfigError(f"{where}: {exc}") from None


def _try_render(
    task: PartitionKeys, base: list[Any], index: int, values: tuple[Any, ...]
) -> list[str] | None:
    """The paths of ``base`` with ``values[j]`` at ``index`` in turn; None if one cannot be rendered."""
    rendered = []
    for value in values:
        try:
            rendered.append(render_path(task, [*base[:index], value, *base[index + 1 :]]))
        except BadPartitionValue:
            return None
    return rendered


def _sample_periods(time: TimeSpec) -> list[Any]:
    first = dt.date(2023, 1, 1)
    # 13 months: consecutive days ({day:%Y-%m}), and the same days a year apart ({day:%m-%d}, %j).
    days = [first + dt.timedelta(days=n) for n in range(400)]
    if time.grain == "day":
        return days
    tz = zone_of(time.zone or _DST_ZONE)
    instants = {dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC) for day in days}
    # Every hour of the days around each change of offset in 2023, both 01:00 hours of a
    # fall-back night among them (stepped in UTC: local hours that differ only in their fold
    # compare equal).
    for day in days[:365]:
        before = dt.datetime.combine(day, dt.time(), tzinfo=tz)
        if before.utcoffset() != (before + dt.timedelta(days=1)).utcoffset():
            start = before.astimezone(UTC) - dt.timedelta(days=1)
            instants.update(start + dt.timedelta(hours=n) for n in range(72))
    return [instant.astimezone(tz) for instant in sorted(instants)]


def _shown_period(period: Any) -> str:
    return str(period.isoformat())
