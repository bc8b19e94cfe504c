"""Time blocks: the units of a blocks task, labelled in the task's zone, stored in UTC.

A block is a real UTC window of one hour (grain ``hour``) or one local day (grain ``day``).
Hour blocks are *hour-ending*, as City of Austin's atd-mds ETL named them: the block
``2020-01-01T01:00-06:00`` is the hour from 00:00 to 01:00 local time. A range asks for the
blocks whose end lies in ``(time_min, time_max]``.

Block boundaries are computed on the UTC time line and only labelled locally, so a fall-back
day has 25 hour blocks and a spring-forward day 23, each exactly one hour long. Two blocks
that end at the same local wall-clock time (the repeated hour) have distinct labels: the
label carries the UTC offset (``01:00-05:00`` and ``01:00-06:00``).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from zoneinfo import ZoneInfo

from .exceptions import ConfigError, UsageError

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
Grain = Literal["hour", "day"]
GRAINS: tuple[Grain, ...] = ("hour", "day")
FIRST_YEAR, LAST_YEAR = 2, 9998  # times a request may name
MAX_BLOCKS = 50_000  # per request and key: about 5.7 years of hours
# How far before a range blocks_between looks for the whole hour its first block starts at.
LOOK_BACK = dt.timedelta(hours=27)
# atd-mds's command-line times: yyyy-mm-dd-hh, local, not necessarily zero-padded.
_ATD_TIME = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})-(\d{1,2})$")


@dataclass(frozen=True, kw_only=True)
class Block:
    """One block: ``[start, end)`` in UTC, of a grain, labelled in ``zone``."""

    start: dt.datetime
    end: dt.datetime
    zone: str
    grain: Grain = "hour"

    @cached_property
    def local_start(self) -> dt.datetime:
        """The start in the block's zone."""
        return self.start.astimezone(ZoneInfo(self.zone))

    @cached_property
    def local_end(self) -> dt.datetime:
        """The end in the block's zone."""
        return self.end.astimezone(ZoneInfo(self.zone))

    @property
    def stamp(self) -> dt.datetime:
        """The local time that names the block: its end for hours (hour-ending), its start for days."""
        return self.local_end if self.grain == "hour" else self.local_start

    @property
    def label(self) -> str:
        """A distinct, readable name: ``2020-11-01T01:00-05:00`` (hour-ending) or ``2020-11-01`` (day)."""
        if self.grain == "day":
            return self.local_start.date().isoformat()
        return self.local_end.isoformat(timespec="minutes")

    def describe(self) -> dict[str, Any]:
        """The block as JSON-ready data."""
        return {
            "block": self.label,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "zone": self.zone,
        }


def blocks_between(time_min: dt.datetime, time_max: dt.datetime, *, grain: Grain, zone: str) -> list[Block]:
    """The blocks whose end lies in ``(time_min, time_max]``, oldest first.

    Raises UsageError when the range is reversed or holds more than MAX_BLOCKS blocks.
    """
    if time_max <= time_min:
        raise UsageError(
            f"the range ({time_min.isoformat()}, {time_max.isoformat()}] is empty; "
            "--time-min/time_min must be before --time-max/time_max"
        )
    tz = ZoneInfo(zone)
    if grain == "hour":  # each block starts at the whole hour before its end (see _hour_marks)
        marks = _hour_marks(time_min - LOOK_BACK, time_max, tz)
        pairs = [(start, end) for start, end in itertools.pairwise(marks) if end > time_min]
    else:
        pairs = [(_previous_midnight(end, tz), end) for end in _day_ends(time_min, time_max, tz)]
    out = []
    for start, end in pairs:
        out.append(Block(start=start, end=end, zone=zone, grain=grain))
        if len(out) > MAX_BLOCKS:
            raise UsageError(
                f"the range ({time_min.isoformat()}, {time_max.isoformat()}] holds more than "
                f"{MAX_BLOCKS:,} {grain} blocks; ask for a shorter range at a time"
            )
    return out


def check_over(blocks: list[Block], now: dt.datetime) -> None:
    """Raise UsageError when the last of ``blocks`` has not ended by ``now``: a block is run once,
    so its records stamped after the run (the rest of the current hour) would never be extracted."""
    if blocks and blocks[-1].end > now:
        last = blocks[-1]
        raise UsageError(
            f"the block {last.label} is not over yet (it ends at {last.end.isoformat()}, it is now "
            f"{now.isoformat(timespec='seconds')}), and a block done is not run again; give a "
            "--time-max/time_max that has passed"
        )


def settled(blocks: list[Block], now: dt.datetime, settle: float) -> list[Block]:
    """The blocks that ended ``settle`` seconds or more before ``now`` (records come late: MDS
    providers deliver trips hours after they end, a database commits a transaction later).

    Raises UsageError when the last block is not over (:func:`check_over`), or none has settled:
    the request would run nothing now.
    """
    check_over(blocks, now)
    wait = dt.timedelta(seconds=settle)
    ready = [b for b in blocks if b.end <= now - wait]
    if blocks and not ready:
        first = blocks[0]
        raise UsageError(
            f"no block of the range has settled: the first, {first.label}, ended at "
            f"{first.end.isoformat()}, less than the task's settle ({wait}) ago, so it runs from "
            f"{(first.end + wait).isoformat()}; ask again then, or for a range reaching further back "
            "(a larger --interval)"
        )
    return ready


def _hour_marks(time_min: dt.datetime, time_max: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
    """The instants in ``(time_min, time_max]`` at which the local clock shows a whole hour.

    Found on the wall clock, not stepped by 60 minutes on the UTC time line: where the zone's
    offset changes by other than whole hours (Lord Howe's 30-minute DST, Kathmandu in 1986),
    stepping from wherever a request began put its blocks on a grid 30 minutes off another
    request's, and the same rows went into two blocks. A block across such a change is 30 or
    90 minutes long; one across an ordinary DST change is an hour, as before.
    """
    wall = time_min.astimezone(tz).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    last = time_max.astimezone(tz).replace(tzinfo=None)
    marks: set[dt.datetime] = set()
    try:
        while wall <= last + HOUR and len(marks) <= MAX_BLOCKS + 64:  # + LOOK_BACK's
            for fold in (0, 1):  # a wall time the clocks pass twice is two instants
                instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
                shown = instant.astimezone(tz).replace(tzinfo=None)
                if shown == wall and time_min < instant <= time_max:  # not in a gap
                    marks.add(instant)
            wall += HOUR
    except OverflowError:  # past year 9999: no more hours
        pass
    return sorted(marks)


def _day_ends(time_min: dt.datetime, time_max: dt.datetime, tz: ZoneInfo) -> list[dt.datetime]:
    """Local midnights in ``(time_min, time_max]``, each once: a day the zone skipped
    (Pacific/Apia's 2011-12-30) has none, its midnight being the next day's."""
    day = time_min.astimezone(tz).date()
    ends: list[dt.datetime] = []
    while len(ends) <= MAX_BLOCKS:
        end = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)
        if end > time_max:
            break
        if end > time_min and end.astimezone(tz).date() == day:
            ends.append(end)
        day += dt.timedelta(days=1)
    return ends


def _previous_midnight(end: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The start of the local day that ends at ``end``: the day of the instant before it, so the
    day before a skipped one (Apia's 2011-12-29) ends at the 31st's midnight. Counted back from
    ``end``'s date, it was the skipped day, an empty block, and the 29th was in no block."""
    day = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)


def parse_time(text: str, zone: str, where: str) -> dt.datetime:
    """A command-line time as an aware UTC datetime.

    ``yyyy-mm-dd-hh`` (atd-mds's form; ``2020-1-1-1`` is fine) and ISO 8601 without an
    offset are local times in ``zone``; ISO 8601 with an offset is that instant. Raises
    UsageError naming ``where``.
    """
    tz = ZoneInfo(zone)
    match = _ATD_TIME.match(text.strip())
    try:
        if match:
            year, month, day, hour = (int(g) for g in match.groups())
            parsed = dt.datetime(year, month, day, hour, tzinfo=tz)
        else:
            parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise UsageError(
            f"{where} {text!r} is not a time; use yyyy-mm-dd-hh (hours in {zone}, e.g. 2020-1-1-1) "
            "or ISO 8601 (e.g. 2020-01-01T01:00-06:00)"
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    try:  # a day's blocks reach a day either side: keep clear of datetime's years 1 and 9999
        instant = parsed.astimezone(UTC)
        if not FIRST_YEAR <= instant.year <= LAST_YEAR:
            raise OverflowError
    except OverflowError:
        raise UsageError(
            f"{where} {text!r} is out of range; use a time between the years {FIRST_YEAR} and {LAST_YEAR}"
        ) from None
    return instant


def request_range(
    time_max: dt.datetime, *, time_min: dt.datetime | None = None, interval: int = 1
) -> tuple[dt.datetime, dt.datetime]:
    """``(time_min, time_max)``: ``time_min`` when given, else ``interval`` hours before ``time_max``."""
    if time_min is not None:
        return time_min, time_max
    if interval < 1:
        raise UsageError(f"interval {interval} must be at least 1 hour")
    try:
        time_min = time_max - interval * HOUR
        if time_min.year < FIRST_YEAR:
            raise OverflowError
    except OverflowError:
        raise UsageError(
            f"interval {interval} reaches back before the year {FIRST_YEAR}; ask for fewer hours"
        ) from None
    return time_min, time_max


def path_fields(*, task: str, stage: str, key: str | None, key_value: str, block: Block) -> dict[str, Any]:
    """The fields a blocks task's path template may use."""
    fields: dict[str, Any] = {
        "task": task,
        "stage": stage,
        "block": block.stamp,
        "start": block.local_start,
        "end": block.local_end,
        "label": block.label,
    }
    if key:
        fields[key] = key_value
    return fields


def transition_days(zone: str, year: int = 2024) -> list[dt.date]:
    """The local days of ``year`` on which ``zone`` changes its UTC offset (DST starts and ends)."""
    tz = ZoneInfo(zone)
    days = []
    # A week whose ends have one offset is skipped whole (zones change twice in a month, as
    # Africa/Casablanca around Ramadan, but not twice in a week).
    end = dt.date(year + 1, 1, 1)
    firsts = sorted({min(dt.date(year, 1, 1) + dt.timedelta(weeks=w), end) for w in range(54)})
    for first, next_first in itertools.pairwise(firsts):
        if _offset(first, tz) == _offset(next_first, tz):
            continue
        day = first
        while day < next_first:
            if _offset(day, tz) != _offset(day + dt.timedelta(days=1), tz):
                days.append(day)
            day += dt.timedelta(days=1)
    return days


# Days on which every template is rendered for two days of blocks: a plain stretch, a month's
# and a year's end, and every offset change of the zone in these years (zones changed their rules:
# America/Sao_Paulo had daylight saving time until 2019).
SAMPLE_DAYS = (dt.date(2024, 1, 15), dt.date(2024, 4, 30), dt.date(2023, 12, 31))
TRANSITION_YEARS = range(2000, 2031)


@functools.lru_cache(maxsize=32)
def _kinds_of_change(zone: str) -> tuple[dt.date, ...]:
    """The first day of each kind of offset change (offset before, offset after) of ``zone`` in
    TRANSITION_YEARS: a template that tells a change's blocks apart tells them apart every year,
    and a task is loaded by every command (rendering every change of 31 years took ~60 ms)."""
    tz = ZoneInfo(zone)
    first: dict[tuple[dt.timedelta | None, dt.timedelta | None], dt.date] = {}
    for year in TRANSITION_YEARS:
        for day in transition_days(zone, year):
            first.setdefault((_offset(day, tz), _offset(day + dt.timedelta(days=1), tz)), day)
    return tuple(first.values())


def _offset(day: dt.date, tz: ZoneInfo) -> dt.timedelta | None:
    """``tz``'s UTC offset at the start of local ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).utcoffset()


def check_distinct_paths(render: Any, *, zone: str, grain: Grain, where: str) -> None:
    """Raise ConfigError when ``render(block)`` gives two blocks the same path.

    ``render`` maps a :class:`Block` to its rendered path. atd-mds's layout
    ``{Y}/{M}/{D}/{H}`` named both 01:00 hours of a fall-back day alike, so one overwrote the other;
    a template coarser than the grain (``{block:%Y%m%d}`` for hours) names every block of a day alike.
    """
    tz = ZoneInfo(zone)
    changes = _kinds_of_change(zone)
    for day in [*SAMPLE_DAYS, *changes]:
        lo = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC) - dt.timedelta(hours=1)
        seen: dict[str, Block] = {}
        for block in blocks_between(lo, lo + dt.timedelta(days=2, hours=2), grain=grain, zone=zone):
            path = render(block)
            if path in seen:
                why = (
                    f" (the repeated hour when {zone} leaves daylight saving time); add the offset, "
                    "e.g. {block:%Y/%m/%d/%H%z}, or use {label}"
                    if day in changes
                    else f"; name each {grain} block apart, e.g. with {{label}}"
                )
                raise ConfigError(
                    f"{where}: blocks {seen[path].label} and {block.label} would share the path {path!r}{why}"
                )
            seen[path] = block


@dataclass(frozen=True, kw_only=True)
class BlockRequest:
    """What one ``sluicegate blocks`` asks for: a range, a key value, which stages, how.

    ``stages`` (None: all) and ``skip`` choose the stages that run; ``force`` re-runs done
    stages (their status reset first, and the later stages of their blocks with them);
    ``incomplete_only`` also takes the range's parked stages again. ``sweep`` (a scheduled tick's)
    makes the range's rows, then runs every due (block, stage) of the ledger, as ``sluicegate run``
    does: a retry, or a block given back or of a killed run, is before the next tick's range.
    """

    time_min: dt.datetime
    time_max: dt.datetime
    key_value: str | None = None
    stages: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    force: bool = False
    incomplete_only: bool = False
    sweep: bool = False


@dataclass(frozen=True, kw_only=True)
class StageBlock:
    """What a stage's callable is given about its block: ``fn(block, config)``.

    ``start`` and ``end`` are UTC (``[start, end)``); ``local_start``, ``local_end`` and
    ``label`` are in the task's zone; ``key_value`` is the block's key value (a provider).
    """

    task: str
    stage: str
    key: str | None
    key_value: str
    block: Block
    attempt: int = 0

    @property
    def start(self) -> dt.datetime:
        """The block's start, UTC."""
        return self.block.start

    @property
    def end(self) -> dt.datetime:
        """The block's end (exclusive), UTC."""
        return self.block.end

    @property
    def local_start(self) -> dt.datetime:
        """The start in the task's zone."""
        return self.block.local_start

    @property
    def local_end(self) -> dt.datetime:
        """The end in the task's zone."""
        return self.block.local_end

    @property
    def label(self) -> str:
        """The block's label (``2020-11-01T01:00-05:00``)."""
        return self.block.label
